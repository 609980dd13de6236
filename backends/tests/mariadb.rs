//! The MariaDB backend against a real throwaway server: XA prepare/commit and
//! prepare/rollback, the CHECK constraint, a deadlock inside InnoDB, parameterised SQL, and a
//! prepared transaction surviving SIGKILL of mariadbd. Fails when MariaDB is missing unless
//! TWOPHASE_SKIP_DB_TESTS=1 (`.ci/run` installs it).

mod common;

use common::*;
use twophase_backends::conn::session_name;
use twophase_backends::testserver::{MariaServer, or_skip};
use twophase_backends::{
    Executor, KvOp, KvOutcome, MariaConnector, OneShot, PoolConfig, Reason, Reply, Request, SqlValue,
};

fn executor(server: &MariaServer) -> Executor {
    let connector = MariaConnector::from_opts(server.opts());
    Executor::start(connector, PARTICIPANT, PoolConfig { connections_max: 4, ..PoolConfig::default() }, None)
}

/// One server for the scenarios that do not crash it (installing one takes seconds).
#[test]
fn xa_transactions_commit_roll_back_and_map_errors() {
    let Some(server) = or_skip(MariaServer::start()) else { return };
    let dir = server.socket().parent().expect("the socket sits in the server's directory").to_path_buf();
    assert_listens_on_its_socket_only(&dir, "MariaDB");
    let db = executor(&server);
    prepare_then_commit(&db);
    prepare_then_rollback(&db);
    overdraft_fails_with_the_constraint_reason(&db);
    deadlock_gets_the_deadlock_reason(&db);
    parameterised_sql_returns_rows(&db);
    one_shot_transactions_run_in_one_round_trip_and_fail_like_the_steps(&db);
    // Through the URL form as well.
    let by_url = MariaConnector::new(&server.url()).unwrap();
    let db = Executor::start(
        by_url,
        PARTICIPANT,
        PoolConfig { connections_max: 2, connections_reserved: 1, ..PoolConfig::default() },
        None,
    );
    assert_eq!(balance(&db, 900, 1), Some(100));
}

fn prepare_then_commit(db: &Executor) {
    let tx = gid(1);
    ok(db, Request::Begin(tx.clone()));
    ok(db, Request::Kv(tx.clone(), add(1, 100)));
    ok(db, Request::Kv(tx.clone(), KvOp::Put { key: key("greeting"), value: key("hello") }));
    assert_eq!(ok(db, Request::Prepare(tx.clone())), Reply::Prepared);
    assert_eq!(recovered(db), vec![tx.clone()]);
    assert_eq!(ok(db, Request::CommitPrepared(tx.clone())), Reply::CommittedPrepared);
    assert_eq!(recovered(db), vec![]);
    assert_eq!(balance(db, 2, 1), Some(100));
    assert_eq!(read(db, 3, &["greeting"]), vec![Some(key("hello"))]);
    let again = call(db, Request::CommitPrepared(tx)).unwrap_err();
    assert_eq!(again.reason, Reason::UnknownTransaction, "{again}");
}

fn prepare_then_rollback(db: &Executor) {
    let tx = gid(10);
    ok(db, Request::Begin(tx.clone()));
    ok(db, Request::Kv(tx.clone(), KvOp::Put { key: key("acct/2"), value: 50i64.to_le_bytes().to_vec().into() }));
    ok(db, Request::Prepare(tx.clone()));
    assert_eq!(ok(db, Request::RollbackPrepared(tx)), Reply::RolledBackPrepared);
    assert_eq!(recovered(db), vec![]);
    assert_eq!(balance(db, 11, 2), None);
}

fn overdraft_fails_with_the_constraint_reason(db: &Executor) {
    let tx = gid(31);
    ok(db, Request::Begin(tx.clone()));
    let err = call(db, Request::Kv(tx.clone(), add(1, -101))).unwrap_err();
    assert_eq!(err.reason, Reason::Constraint, "{err}");
    assert!(err.detail.contains("4025"), "{err}");
    assert_eq!(call(db, Request::Prepare(tx)).unwrap_err().reason, Reason::InvalidRequest);
    let tx = gid(32);
    ok(db, Request::Begin(tx.clone()));
    assert_eq!(call(db, Request::Kv(tx, add(99, -1))).unwrap_err().reason, Reason::Constraint);
    assert_eq!(balance(db, 33, 1), Some(100));
}

fn deadlock_gets_the_deadlock_reason(db: &Executor) {
    let setup = gid(40);
    ok(db, Request::Begin(setup.clone()));
    ok(db, Request::Kv(setup.clone(), add(5, 100)));
    ok(db, Request::Kv(setup.clone(), add(6, 100)));
    ok(db, Request::Prepare(setup.clone()));
    ok(db, Request::CommitPrepared(setup));

    let (a, b) = (gid(41), gid(42));
    ok(db, Request::Begin(a.clone()));
    ok(db, Request::Begin(b.clone()));
    ok(db, Request::Kv(a.clone(), add(5, -1)));
    ok(db, Request::Kv(b.clone(), add(6, -1)));
    db.submit(1, Request::Kv(a.clone(), add(6, -1))).unwrap();
    db.submit(2, Request::Kv(b.clone(), add(5, -1))).unwrap();
    let first = db.completions().recv().unwrap();
    let second = db.completions().recv().unwrap();
    let (victim, survivor) = if first.result.is_err() { (first, second) } else { (second, first) };
    let err = victim.result.unwrap_err();
    assert_eq!(err.reason, Reason::DeadlockDetected, "{err}");
    assert!(survivor.result.is_ok(), "{survivor:?}");
    let winner = if survivor.tag == 1 { a } else { b };
    ok(db, Request::Prepare(winner.clone()));
    ok(db, Request::CommitPrepared(winner));
    assert_eq!(balance(db, 43, 5).unwrap() + balance(db, 44, 6).unwrap(), 198);
}

fn parameterised_sql_returns_rows(db: &Executor) {
    let tx = gid(50);
    ok(db, Request::Begin(tx.clone()));
    let sql = "SELECT id, balance, CAST('x' AS CHAR) AS label, k FROM accounts LEFT JOIN kv ON k = ? WHERE id = ?";
    let Reply::Rows(rows) = ok(
        db,
        Request::Execute {
            gid: tx.clone(),
            sql: sql.into(),
            params: vec![SqlValue::Bytes(key("greeting")), SqlValue::Int(1)],
        },
    ) else {
        panic!("no rows")
    };
    assert_eq!(rows.columns, ["id", "balance", "label", "k"]);
    assert_eq!(
        rows.rows,
        vec![vec![SqlValue::Int(1), SqlValue::Int(100), SqlValue::Text("x".into()), SqlValue::Bytes(key("greeting"))]]
    );
    let err = call(db, Request::Execute { gid: tx.clone(), sql: "SELECT ?".into(), params: vec![] }).unwrap_err();
    assert_eq!(err.reason, Reason::InvalidRequest, "{err}");
    assert_eq!(call(db, Request::Rollback(tx)).unwrap_err().reason, Reason::InvalidRequest, "already ended");
}

/// `XA START; statements; XA END; XA PREPARE` in one round trip, answering as the
/// call-by-call path does: the same outcomes, the same op named when one is refused.
fn one_shot_transactions_run_in_one_round_trip_and_fail_like_the_steps(db: &Executor) {
    let one_shot = |counter, ops: Vec<KvOp>| Request::OneShot { gid: gid(counter), ops, hold_reads: false };
    let value = |v: i64| bytes::Bytes::copy_from_slice(&v.to_le_bytes());
    // Writes of every kind, a new account among them: prepared under its gid.
    let writes = vec![
        add(101, 100),
        add(102, 5),
        add(101, -30),
        KvOp::Put { key: key("acct/103"), value: value(9) },
        KvOp::Put { key: key("note"), value: key("it's \\ 'quoted'") },
        KvOp::Delete { key: key("absent") },
    ];
    let done = ok(db, one_shot(60, writes));
    assert_eq!(done, Reply::OneShot(OneShot { outcomes: vec![KvOutcome::Written; 6], prepared: true }));
    assert_eq!(recovered(db), vec![gid(60)]);
    ok(db, Request::CommitPrepared(gid(60)));
    assert_eq!(balance(db, 61, 101), Some(70));

    // Reads only: answered from the rows, nothing left prepared.
    let reads = vec![
        KvOp::Get { key: key("acct/101") },
        KvOp::Get { key: key("acct/177") },
        KvOp::Get { key: key("note") },
        KvOp::Get { key: key("missing") },
    ];
    let read = ok(db, one_shot(62, reads.clone()));
    let expected = vec![
        KvOutcome::Read(Some(value(70))),
        KvOutcome::Read(None),
        KvOutcome::Read(Some(key("it's \\ 'quoted'"))),
        KvOutcome::Read(None),
    ];
    assert_eq!(read, Reply::OneShot(OneShot { outcomes: expected.clone(), prepared: false }));
    assert_eq!(recovered(db), vec![]);
    // Holding its reads (other participants): prepared, same answers.
    let held = ok(db, Request::OneShot { gid: gid(63), ops: reads, hold_reads: true });
    assert_eq!(held, Reply::OneShot(OneShot { outcomes: expected, prepared: true }));
    ok(db, Request::RollbackPrepared(gid(63)));

    // An overdraft in the second op: that op is named, nothing prepared or changed.
    match ok(db, one_shot(64, vec![add(101, 10), add(102, -6), add(103, 1)])) {
        Reply::OneShotRefused { op: 1, error } => assert_eq!(error.reason, Reason::Constraint, "{error}"),
        other => panic!("an overdraft answered {other:?}"),
    }
    // A debit of a missing account (its batch UPDATE changes no row) is refused as the
    // steps refuse it, after the batch's prepared branch is rolled back.
    match ok(db, one_shot(65, vec![add(101, 1), add(199, -1)])) {
        Reply::OneShotRefused { op: 1, error } => assert_eq!(error.reason, Reason::Constraint, "{error}"),
        other => panic!("a debit of a missing account answered {other:?}"),
    }
    assert_eq!(recovered(db), vec![]);
    assert_eq!(balance(db, 66, 101), Some(70));
    assert_eq!(balance(db, 67, 102), Some(5));
    assert_eq!(balance(db, 68, 199), None);

    // A floor above 0 is checked on the balance (the call-by-call path).
    let floored = KvOp::Add { key: key("acct/101"), delta: -50, floor: 60 };
    match ok(db, one_shot(69, vec![floored])) {
        Reply::OneShotRefused { op: 0, error } => assert_eq!(error.reason, Reason::Constraint, "{error}"),
        other => panic!("a floor answered {other:?}"),
    }
    // The gid is taken: XA START fails, nothing is left open on the connection.
    ok(db, one_shot(70, vec![add(105, 1)]));
    assert!(call(db, one_shot(70, vec![add(106, 1)])).is_err());
    ok(db, Request::RollbackPrepared(gid(70)));
    assert_eq!(balance(db, 71, 106), None);
    assert_eq!(recovered(db), vec![]);
}

#[test]
fn prepared_xa_transaction_survives_sigkill_of_mariadbd() {
    let Some(mut server) = or_skip(MariaServer::start()) else { return };
    let tx = gid(20);
    {
        let db = executor(&server);
        ok(&db, Request::Begin(tx.clone()));
        ok(&db, Request::Kv(tx.clone(), add(3, 7)));
        ok(&db, Request::Prepare(tx.clone()));
        server.kill().unwrap();
    }
    server.restart().unwrap();
    let db = executor(&server);
    assert_eq!(recovered(&db), vec![tx.clone()]);
    ok(&db, Request::CommitPrepared(tx));
    assert_eq!(recovered(&db), vec![]);
    assert_eq!(balance(&db, 21, 3), Some(7));
}

#[test]
fn a_fence_ends_the_previous_incarnations_sessions_and_keeps_what_prepared() {
    let Some(server) = or_skip(MariaServer::start()) else { return };
    let named = || {
        let connector = MariaConnector::from_opts(server.opts()).with_session_name(&session_name(PARTICIPANT));
        // Room for the open transaction and two prepared ones (MariaDB keeps those on their
        // sessions) besides the two connections reserved for decisions.
        Executor::start(connector, PARTICIPANT, PoolConfig { connections_max: 6, ..PoolConfig::default() }, None)
    };
    let (old, new, plain) = (named(), named(), executor(&server));
    fence_ends_the_previous_incarnations_sessions(&old, &new, &plain);
}
