//! The PostgreSQL backend against a real throwaway server: prepare/commit, prepare/rollback,
//! a prepared transaction surviving `pg_ctl -m immediate`, the CHECK constraint, a deadlock
//! inside the database, parameterised SQL, one-shot transactions in one round trip. Fails when PostgreSQL is missing unless
//! TWOPHASE_SKIP_DB_TESTS=1.

mod common;

use common::*;
use twophase_backends::conn::session_name;
use twophase_backends::testserver::{PgServer, or_skip};
use twophase_backends::{
    Executor, KvOp, KvOutcome, OneShot, PgConnector, PoolConfig, Reason, Reply, Request, SqlValue,
};

fn executor(server: &PgServer) -> Executor {
    let connector = PgConnector::new(&server.dsn()).unwrap();
    Executor::start(connector, PARTICIPANT, PoolConfig { connections_max: 4, ..PoolConfig::default() }, None)
}

#[test]
fn prepare_then_commit_applies_and_recovery_sees_it_until_then() {
    let Some(server) = or_skip(PgServer::start()) else { return };
    assert_listens_on_its_socket_only(server.dir(), "PostgreSQL");
    let db = executor(&server);
    let tx = gid(1);
    ok(&db, Request::Begin(tx.clone()));
    ok(&db, Request::Kv(tx.clone(), add(1, 100)));
    ok(&db, Request::Kv(tx.clone(), KvOp::Put { key: key("greeting"), value: key("hello") }));
    assert_eq!(ok(&db, Request::Prepare(tx.clone())), Reply::Prepared);
    assert_eq!(recovered(&db), vec![tx.clone()]);
    assert_eq!(ok(&db, Request::CommitPrepared(tx.clone())), Reply::CommittedPrepared);
    assert_eq!(recovered(&db), vec![]);
    assert_eq!(balance(&db, 2, 1), Some(100));
    assert_eq!(read(&db, 3, &["greeting"]), vec![Some(key("hello"))]);
    let again = call(&db, Request::CommitPrepared(tx)).unwrap_err();
    assert_eq!(again.reason, Reason::UnknownTransaction, "{again}");
}

#[test]
fn prepare_then_rollback_leaves_nothing() {
    let Some(server) = or_skip(PgServer::start()) else { return };
    let db = executor(&server);
    let tx = gid(10);
    ok(&db, Request::Begin(tx.clone()));
    ok(&db, Request::Kv(tx.clone(), KvOp::Put { key: key("acct/2"), value: 50i64.to_le_bytes().to_vec().into() }));
    ok(&db, Request::Prepare(tx.clone()));
    assert_eq!(ok(&db, Request::RollbackPrepared(tx)), Reply::RolledBackPrepared);
    assert_eq!(recovered(&db), vec![]);
    assert_eq!(balance(&db, 11, 2), None);
}

#[test]
fn prepared_transaction_survives_an_immediate_shutdown() {
    let Some(mut server) = or_skip(PgServer::start()) else { return };
    let tx = gid(20);
    let db = executor(&server);
    ok(&db, Request::Begin(tx.clone()));
    ok(&db, Request::Kv(tx.clone(), add(3, 7)));
    ok(&db, Request::Prepare(tx.clone()));
    server.kill().unwrap();
    server.restart().unwrap();
    // The same pool carries on: a connection the restart closed is replaced, at worst after
    // one request that fails with ConnectionLost.
    match call(&db, Request::Recover) {
        Ok(Reply::Recovered(gids)) => assert_eq!(gids, vec![tx.clone()]),
        Err(e) if e.reason == Reason::ConnectionLost => assert_eq!(recovered(&db), vec![tx.clone()]),
        other => panic!("Recover after a restart answered {other:?}"),
    }
    ok(&db, Request::CommitPrepared(tx));
    assert_eq!(recovered(&db), vec![]);
    assert_eq!(balance(&db, 21, 3), Some(7));
}

#[test]
fn overdraft_fails_with_the_constraint_reason_and_ends_the_transaction() {
    let Some(server) = or_skip(PgServer::start()) else { return };
    let db = executor(&server);
    let setup = gid(30);
    ok(&db, Request::Begin(setup.clone()));
    ok(&db, Request::Kv(setup.clone(), add(4, 10)));
    ok(&db, Request::Prepare(setup.clone()));
    ok(&db, Request::CommitPrepared(setup));

    let tx = gid(31);
    ok(&db, Request::Begin(tx.clone()));
    let err = call(&db, Request::Kv(tx.clone(), add(4, -11))).unwrap_err();
    assert_eq!(err.reason, Reason::Constraint, "{err}");
    assert!(err.detail.contains("23514"), "{err}");
    let err = call(&db, Request::Prepare(tx)).unwrap_err();
    assert_eq!(err.reason, Reason::InvalidRequest, "{err}");
    // A debit to exactly zero is fine; a new account cannot start negative.
    let tx = gid(32);
    ok(&db, Request::Begin(tx.clone()));
    ok(&db, Request::Kv(tx.clone(), add(4, -10)));
    assert_eq!(call(&db, Request::Kv(tx.clone(), add(99, -1))).unwrap_err().reason, Reason::Constraint);
    assert_eq!(balance(&db, 33, 4), Some(10));
}

#[test]
fn deadlock_inside_the_database_gets_the_deadlock_reason() {
    let Some(server) = or_skip(PgServer::start()) else { return };
    let db = executor(&server);
    let setup = gid(40);
    ok(&db, Request::Begin(setup.clone()));
    ok(&db, Request::Kv(setup.clone(), add(5, 100)));
    ok(&db, Request::Kv(setup.clone(), add(6, 100)));
    ok(&db, Request::Prepare(setup.clone()));
    ok(&db, Request::CommitPrepared(setup));

    let (a, b) = (gid(41), gid(42));
    ok(&db, Request::Begin(a.clone()));
    ok(&db, Request::Begin(b.clone()));
    ok(&db, Request::Kv(a.clone(), add(5, -1)));
    ok(&db, Request::Kv(b.clone(), add(6, -1)));
    // Each now waits for the other's row: one of them is chosen as the victim.
    db.submit(1, Request::Kv(a.clone(), add(6, -1))).unwrap();
    db.submit(2, Request::Kv(b.clone(), add(5, -1))).unwrap();
    let first = db.completions().recv().unwrap();
    let second = db.completions().recv().unwrap();
    let (victim, survivor) = if first.result.is_err() { (first, second) } else { (second, first) };
    let err = victim.result.unwrap_err();
    assert_eq!(err.reason, Reason::DeadlockDetected, "{err}");
    assert!(survivor.result.is_ok(), "{survivor:?}");
    let winner = if survivor.tag == 1 { a } else { b };
    ok(&db, Request::Prepare(winner.clone()));
    ok(&db, Request::CommitPrepared(winner));
    let total = balance(&db, 43, 5).unwrap() + balance(&db, 44, 6).unwrap();
    assert_eq!(total, 198, "the survivor's two debits and nothing of the victim's");
}

#[test]
fn parameterised_sql_returns_typed_rows() {
    let Some(server) = or_skip(PgServer::start()) else { return };
    let db = executor(&server);
    let tx = gid(50);
    ok(&db, Request::Begin(tx.clone()));
    ok(&db, Request::Kv(tx.clone(), add(8, 80)));
    let query =
        |sql: &str, params: Vec<SqlValue>| call(&db, Request::Execute { gid: tx.clone(), sql: sql.into(), params });
    let Reply::Rows(rows) = query(
        "SELECT id, balance, 'x'::text AS label, NULL::bytea AS nothing FROM accounts WHERE id = $1",
        vec![SqlValue::Int(8)],
    )
    .unwrap() else {
        panic!("no rows")
    };
    assert_eq!(rows.columns, ["id", "balance", "label", "nothing"]);
    assert_eq!(rows.rows, vec![vec![SqlValue::Int(8), SqlValue::Int(80), SqlValue::Text("x".into()), SqlValue::Null]]);
    let Reply::Rows(updated) =
        query("UPDATE accounts SET balance = balance + $2 WHERE id = $1", vec![SqlValue::Int(8), SqlValue::Int(1)])
            .unwrap()
    else {
        panic!("no result")
    };
    assert_eq!(updated.affected, 1);
    let err = query("SELECT $1::int4", vec![SqlValue::Int(1 << 40)]).unwrap_err();
    assert_eq!(err.reason, Reason::InvalidRequest, "{err}");
    // The failed statement ended the transaction.
    assert_eq!(call(&db, Request::Prepare(tx)).unwrap_err().reason, Reason::InvalidRequest);

    let tx = gid(51);
    ok(&db, Request::Begin(tx.clone()));
    let err =
        call(&db, Request::Execute { gid: tx.clone(), sql: "SELECT $1::bigint".into(), params: vec![] }).unwrap_err();
    assert_eq!(err.reason, Reason::InvalidRequest, "{err}");
    let err = call(&db, Request::Kv(tx, add(8, 1))).unwrap_err();
    assert_eq!(err.reason, Reason::InvalidRequest, "a wrong statement ends its transaction too: {err}");
}

#[test]
fn one_shot_transactions_run_in_one_query_and_fail_like_the_steps() {
    let Some(server) = or_skip(PgServer::start()) else { return };
    let db = executor(&server);
    let one_shot = |counter, ops: Vec<KvOp>| Request::OneShot { gid: gid(counter), ops, hold_reads: false };
    let value = |v: i64| bytes::Bytes::copy_from_slice(&v.to_le_bytes());
    // Writes of every kind, a new account among them: prepared under its gid.
    let writes = vec![
        add(1, 100),
        add(2, 5),
        KvOp::Put { key: key("acct/3"), value: value(9) },
        KvOp::Put { key: key("note"), value: key("it's \\ 'quoted'") },
        KvOp::Delete { key: key("absent") },
    ];
    let done = ok(&db, one_shot(40, writes));
    assert_eq!(done, Reply::OneShot(OneShot { outcomes: vec![KvOutcome::Written; 5], prepared: true }));
    assert_eq!(recovered(&db), vec![gid(40)]);
    ok(&db, Request::CommitPrepared(gid(40)));

    // Reads only: answered from the rows, nothing left prepared.
    let reads = vec![
        KvOp::Get { key: key("acct/1") },
        KvOp::Get { key: key("acct/77") },
        KvOp::Get { key: key("note") },
        KvOp::Get { key: key("missing") },
    ];
    let read = ok(&db, one_shot(41, reads));
    let expected = vec![
        KvOutcome::Read(Some(value(100))),
        KvOutcome::Read(None),
        KvOutcome::Read(Some(key("it's \\ 'quoted'"))),
        KvOutcome::Read(None),
    ];
    assert_eq!(read, Reply::OneShot(OneShot { outcomes: expected, prepared: false }));
    assert_eq!(recovered(&db), vec![]);

    // An overdraft in the second op: that op is named, nothing prepared or changed.
    match ok(&db, one_shot(42, vec![add(1, 10), add(2, -6), add(3, 1)])) {
        Reply::OneShotRefused { op: 1, error } => assert_eq!(error.reason, Reason::Constraint, "{error}"),
        other => panic!("an overdraft answered {other:?}"),
    }
    assert_eq!(recovered(&db), vec![]);
    assert_eq!(balance(&db, 43, 1), Some(100));
    assert_eq!(balance(&db, 44, 2), Some(5));

    // A floor above 0 is checked on the balance (the call-by-call path).
    let floored = KvOp::Add { key: key("acct/1"), delta: -50, floor: 60 };
    match ok(&db, one_shot(45, vec![floored])) {
        Reply::OneShotRefused { op: 0, error } => assert_eq!(error.reason, Reason::Constraint, "{error}"),
        other => panic!("a floor answered {other:?}"),
    }
    // The gid is taken: PREPARE fails, nothing is left open on the connection.
    ok(&db, one_shot(46, vec![add(5, 1)]));
    assert_eq!(call(&db, one_shot(46, vec![add(6, 1)])).unwrap_err().reason, Reason::Other);
    ok(&db, Request::RollbackPrepared(gid(46)));
    assert_eq!(balance(&db, 47, 6), None);
}

#[test]
fn a_fence_ends_the_previous_incarnations_sessions_and_keeps_what_prepared() {
    let Some(server) = or_skip(PgServer::start()) else { return };
    let named = || {
        let connector = PgConnector::new(&server.dsn()).unwrap().with_session_name(&session_name(PARTICIPANT));
        // Room for the open transaction and two prepared ones (MariaDB keeps those on their
        // sessions) besides the two connections reserved for decisions.
        Executor::start(connector, PARTICIPANT, PoolConfig { connections_max: 6, ..PoolConfig::default() }, None)
    };
    let (old, new, plain) = (named(), named(), executor(&server));
    fence_ends_the_previous_incarnations_sessions(&old, &new, &plain);
}
