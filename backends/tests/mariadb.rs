//! The MariaDB backend against a real throwaway server: XA prepare/commit and
//! prepare/rollback, the CHECK constraint, a deadlock inside InnoDB, parameterised SQL, and a
//! prepared transaction surviving SIGKILL of mariadbd. Fails when MariaDB is missing unless
//! TWOPHASE_SKIP_DB_TESTS=1 (`.ci/run` installs it).

mod common;

use common::*;
use twophase_backends::conn::session_name;
use twophase_backends::testserver::{MariaServer, or_skip};
use twophase_backends::{Executor, KvOp, MariaConnector, PoolConfig, Reason, Reply, Request, SqlValue};

fn executor(server: &MariaServer) -> Executor {
    let connector = MariaConnector::from_opts(server.opts());
    Executor::start(connector, PARTICIPANT, PoolConfig { connections_max: 4, ..PoolConfig::default() }, None)
}

/// One server for the scenarios that do not crash it (installing one takes seconds).
#[test]
fn xa_transactions_commit_roll_back_and_map_errors() {
    let Some(server) = or_skip(MariaServer::start()) else { return };
    let db = executor(&server);
    prepare_then_commit(&db);
    prepare_then_rollback(&db);
    overdraft_fails_with_the_constraint_reason(&db);
    deadlock_gets_the_deadlock_reason(&db);
    parameterised_sql_returns_rows(&db);
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
