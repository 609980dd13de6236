//! Interactive transactions against real processes (a coordinator and two participants):
//! statements across participants, a distributed deadlock and its victim, the lock-wait
//! timeout, abandoned transactions, a coordinator killed while transactions wait, and the
//! `twophase shell`.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Barrier;
use std::time::Duration;

use common::{Cluster, NodeSet, add, eventually, read_ints};
use twophase_engine::ops::Isolation;
use twophase_engine::{AbortReason, ParticipantId, TxId};
use twophase_net::{Client, ClientOptions, TxError};

fn aborted(result: Result<(), TxError>) -> AbortReason {
    match result {
        Err(TxError::Aborted(reason)) => reason,
        other => panic!("expected an abort, got {other:?}"),
    }
}

#[test]
fn a_transfer_reads_decides_and_writes_across_two_participants() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(2, dir.path());
    let mut client = cluster.client();
    assert!(client.submit(vec![add(1, "acct/1", 100, 0), add(2, "acct/2", 10, 0)]).unwrap().is_committed());

    let mut t = client.begin().unwrap();
    let balance = t.get_i64("p1", "acct/1").unwrap();
    assert_eq!(balance, Some(100));
    t.add_with_floor("p1", "acct/1", -30, 0).unwrap();
    assert_eq!(t.get_i64("p1", "acct/1").unwrap(), Some(70), "a statement sees the transaction's own writes");
    t.add("p2", "acct/2", 30).unwrap();
    t.put("p2", "note", "moved 30").unwrap();
    let reads = t.execute(vec![common::get(1, "acct/1"), common::get(2, "acct/2"), common::get(2, "missing")]).unwrap();
    let values: Vec<_> = reads.iter().map(|read| (read.index, read.value.as_ref().map(|v| v.len()))).collect();
    assert_eq!(values, vec![(0, Some(8)), (1, Some(8)), (2, None)], "reads indexed by op position");
    t.commit().unwrap();
    assert_eq!(read_ints(&mut client, &[(1, "acct/1"), (2, "acct/2")]), vec![Some(70), Some(40)]);

    // A rolled-back transaction changes nothing; a failed statement ends its transaction.
    let mut t = client.begin_with(Isolation::ReadCommitted, Some(Duration::from_secs(5))).unwrap();
    t.add("p1", "acct/1", 1000).unwrap();
    t.rollback().unwrap();
    let mut t = client.begin().unwrap();
    let overdraft = t.add_with_floor("p1", "acct/1", -1000, 0);
    assert!(matches!(aborted(overdraft), AbortReason::Constraint { value: 70, .. }));
    assert!(matches!(aborted(t.add("p2", "acct/2", 1)), AbortReason::Constraint { .. }), "the transaction is over");
    assert!(matches!(aborted(t.commit()), AbortReason::Constraint { .. }));
    assert_eq!(read_ints(&mut client, &[(1, "acct/1"), (2, "acct/2")]), vec![Some(70), Some(40)]);

    // The built-in store runs no SQL: the statement ends the transaction, whose earlier
    // write is rolled back.
    let mut t = client.begin().unwrap();
    t.add("p1", "acct/1", 5).unwrap();
    match t.sql("p2", "SELECT 1", &[]) {
        Err(TxError::Aborted(AbortReason::Invalid { detail })) => {
            assert!(detail.contains("participant p2 does not run SQL"), "{detail}")
        }
        other => panic!("a key-value participant must refuse SQL, got {other:?}"),
    }
    drop(t);
    assert_eq!(read_ints(&mut client, &[(1, "acct/1"), (2, "acct/2")]), vec![Some(70), Some(40)]);
    cluster.stop();
}

#[test]
fn opposite_order_transfers_deadlock_and_the_younger_is_the_victim() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(2, dir.path());
    let mut setup = cluster.client();
    assert!(setup.submit(vec![add(1, "x", 100, 0), add(2, "y", 100, 0)]).unwrap().is_committed());

    let (mut first, mut second) = (cluster.client(), cluster.client());
    let mut older = first.begin().unwrap();
    let mut younger = second.begin().unwrap();
    let (older_id, younger_id) = (older.txid(), younger.txid());
    assert!(older_id < younger_id, "txids grow with begin order");
    let both_hold_one = Barrier::new(2);
    let (older_result, younger_result) = std::thread::scope(|scope| {
        let older_run = scope.spawn(|| {
            older.add("p1", "x", -10).unwrap();
            both_hold_one.wait();
            older.add("p2", "y", 10)?;
            older.commit()
        });
        let younger_run = scope.spawn(|| {
            younger.add("p2", "y", -20).unwrap();
            both_hold_one.wait();
            younger.add("p1", "x", 20)?;
            younger.commit()
        });
        (older_run.join().unwrap(), younger_run.join().unwrap())
    });
    older_result.expect("the older transaction commits once the victim's locks are gone");
    match aborted(younger_result) {
        AbortReason::Deadlock { cycle } => {
            assert_eq!(cycle.first(), Some(&younger_id), "the victim is named first");
            let mut members: Vec<TxId> = cycle.clone();
            members.sort();
            assert_eq!(members, vec![older_id, younger_id], "the cycle is exactly the two transactions");
        }
        other => panic!("expected Deadlock, got {other:?}"),
    }
    assert_eq!(read_ints(&mut setup, &[(1, "x"), (2, "y")]), vec![Some(90), Some(110)], "only the older applied");
    cluster.stop();
}

#[test]
fn a_stalled_holder_makes_a_waiter_time_out_and_an_abandoned_transaction_is_rolled_back() {
    let nodes = NodeSet::start(2, &["--lock-wait-timeout", "300ms"]);
    let mut holder_client = nodes.client();
    let mut waiter_client = nodes.client();

    // The holder takes the lock and stalls (its client sends nothing more).
    let mut holder = holder_client.begin().unwrap();
    holder.add("p1", "k", 5).unwrap();
    let mut waiter = waiter_client.begin().unwrap();
    match aborted(waiter.add("p1", "k", 1)) {
        AbortReason::LockTimeout { participant, key } => {
            assert_eq!((participant, &key[..]), (ParticipantId(1), &b"k"[..]));
        }
        other => panic!("expected LockTimeout, got {other:?}"),
    }
    assert!(
        TxError::Aborted(AbortReason::LockTimeout { participant: ParticipantId(1), key: "k".into() }).is_retryable()
    );
    drop(waiter);
    holder.commit().expect("the holder is untouched by the waiter's timeout");

    // Abandoned: the client vanishes without commit, rollback or the drop's rollback.
    let mut abandoned_client = nodes.client();
    let mut abandoned = abandoned_client.begin_with(Isolation::Serializable, Some(Duration::from_millis(500))).unwrap();
    abandoned.add("p1", "k", 1000).unwrap();
    std::mem::forget(abandoned);
    drop(abandoned_client);
    // Its lock is released by the idle timeout: a later writer gets through (retrying a
    // lock-wait timeout while the idle timeout has not fired yet).
    let mut client = nodes.client();
    eventually("the abandoned transaction's lock to be released", Duration::from_secs(20), || {
        let mut t = client.begin().unwrap();
        match t.add("p1", "k", 1) {
            Ok(()) => {
                t.commit().unwrap();
                Some(())
            }
            Err(TxError::Aborted(AbortReason::LockTimeout { .. })) => None,
            Err(other) => panic!("unexpected {other}"),
        }
    });
    assert_eq!(read_ints(&mut client, &[(1, "k")]), vec![Some(6)], "the abandoned add was rolled back");

    // A dropped Transaction rolls back at once (best effort), long before its idle timeout.
    let mut t = client.begin_with(Isolation::Serializable, Some(Duration::from_secs(60))).unwrap();
    t.add("p1", "k", 1000).unwrap();
    drop(t);
    let mut t = client.begin().unwrap();
    t.add("p1", "k", 1).expect("the dropped transaction's lock is gone within the lock-wait timeout");
    t.commit().unwrap();
    assert_eq!(read_ints(&mut client, &[(1, "k")]), vec![Some(7)]);
}

#[test]
fn killing_the_coordinator_while_transactions_wait_releases_every_lock() {
    let mut nodes = NodeSet::start(2, &["--lock-wait-timeout", "30s"]);
    let mut holder_client = nodes.client();
    let mut holder = holder_client.begin().unwrap();
    holder.add("p1", "a", 1).unwrap();
    holder.add("p2", "b", 1).unwrap();
    let waiting_options = ClientOptions { max_attempts: 1, ..nodes.options() };
    let addr = nodes.coordinator.addr;
    let waiter = std::thread::spawn(move || {
        let mut client = Client::connect(addr, waiting_options).unwrap();
        let mut t = client.begin().unwrap();
        // Waits for the holder's lock until the coordinator dies under it.
        let result = t.add("p1", "a", 100);
        std::mem::forget(t);
        result
    });
    // Let the waiter's Execute reach p1 and queue behind the holder.
    std::thread::sleep(Duration::from_millis(300));
    nodes.coordinator.kill();
    let waited = waiter.join().unwrap();
    assert!(matches!(waited, Err(TxError::Client(_))), "the waiter hears its connection fail: {waited:?}");
    std::mem::forget(holder);
    drop(holder_client);

    // Participants rolled both open transactions back when the coordinator's connection
    // closed: a one-shot write of both keys (which never waits) commits after the restart.
    nodes.coordinator.restart(&[]);
    let mut client = nodes.client();
    eventually(
        "a one-shot write of the keys the dead coordinator's transactions held",
        Duration::from_secs(20),
        || client.submit(vec![add(1, "a", 10, 0), add(2, "b", 10, 0)]).unwrap().is_committed().then_some(()),
    );
    assert_eq!(read_ints(&mut client, &[(1, "a"), (2, "b")]), vec![Some(10), Some(10)], "nothing of theirs applied");
    for participant in &nodes.participants {
        let (_, (prepared, in_doubt)) = common::dump_ints(participant);
        assert_eq!((prepared, in_doubt), (0, 0), "{} holds nothing", participant.name);
    }
}

#[test]
fn the_shell_runs_a_transaction_and_reports_aborts() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(2, dir.path());
    let script = "\
put p1 greeting hello there
BEGIN serializable
ADD p1 acct/1 40
ADD p2 acct/2 2
GET p1 acct/1
GET p1 greeting
COMMIT
begin
add p1 acct/1 -100 0
get p1 acct/1
ROLLBACK
frob
GET p2 acct/2
";
    let mut shell = Command::new(common::binary())
        .args(["shell", "--config"])
        .arg(cluster.client_config())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    shell.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let out = shell.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    let expected = [
        "committed",
        "began transaction",
        "p1 acct/1 = 40",
        "p1 greeting = \"hello there\"",
        "committed",
        "transaction aborted: constraint: key \"acct/1\" on p1 is 40",
        "the transaction is over",
        "no transaction is open",
        "error: unknown statement \"frob\"",
        "p2:acct/2 = 2",
    ];
    let mut rest: &str = &stdout;
    for line in expected {
        let at = rest.find(line).unwrap_or_else(|| panic!("{line:?} missing (in order) from:\n{stdout}"));
        rest = &rest[at + line.len()..];
    }
    cluster.stop();
}
