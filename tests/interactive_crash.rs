//! Crashes while interactive transactions wait for locks, against real processes: a
//! participant killed with SIGKILL under waiters on it and on other participants, and the
//! coordinator killed under a mix of one-shot transfers and waiting interactive ones. In both,
//! no client hangs (each hears an outcome or an error within a bound), after the restart no
//! lock is held forever (a fresh transaction locks every key) and the total is conserved.
//! (tests/interactive.rs kills the coordinator under waiting interactive transactions alone.)

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use common::{NodeSet, add, eventually, get};
use twophase_engine::{AbortReason, ParticipantId};
use twophase_net::{Client, ClientOptions, TxError};

/// Long enough that waits end only by what the tests do (a crash, a grant).
const PARTICIPANT_FLAGS: &[&str] = &["--lock-wait-timeout", "30s"];

/// How long a client may take to hear how its transaction ended after a crash before it
/// counts as hanging.
const OUTCOME_BOUND: Duration = Duration::from_secs(15);

/// `keys` (participant, key) and their opening balances, written in one transaction.
fn open_accounts(client: &mut Client, keys: &[(u16, &str)], balance: i64) {
    let ops = keys.iter().map(|(participant, key)| add(*participant, key, balance, 0)).collect();
    assert!(client.submit(ops).unwrap().is_committed(), "opening the accounts");
}

/// A fresh serializable transaction that locks every key exclusively (adds 0) and reads it,
/// then commits: the sum of the balances, or `None` while a lock is still held or a node
/// still unreachable (a retryable abort).
fn lock_every_key(client: &mut Client, keys: &[(u16, &str)]) -> Option<i64> {
    let mut t = match client.begin() {
        Ok(t) => t,
        Err(TxError::Aborted(reason)) if reason.is_retryable() => return None,
        Err(err) => panic!("begin: {err}"),
    };
    let ops = keys.iter().flat_map(|(participant, key)| [add(*participant, key, 0, i64::MIN), get(*participant, key)]);
    let result = t.execute(ops.collect()).and_then(|reads| {
        let total = reads.iter().map(|read| i64::from_le_bytes(read.value.as_deref().unwrap().try_into().unwrap()));
        let total: i64 = total.sum();
        t.commit().map(|()| total)
    });
    match result {
        Ok(total) => Some(total),
        Err(TxError::Aborted(reason)) if reason.is_retryable() => None,
        Err(err) => panic!("a fresh transaction over every key failed: {err}"),
    }
}

/// Runs `work` on its own thread and returns a receiver of its result, so that the test
/// can bound how long it waits for it.
fn spawn_client<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> mpsc::Receiver<T> {
    let (sender, receiver) = mpsc::channel();
    thread::spawn(move || {
        let _ = sender.send(work());
    });
    receiver
}

fn within_bound<T>(what: &str, receiver: &mpsc::Receiver<T>, deadline: Instant) -> T {
    let left = deadline.saturating_duration_since(Instant::now());
    receiver.recv_timeout(left).unwrap_or_else(|_| panic!("{what} heard nothing within {OUTCOME_BOUND:?}: it hangs"))
}

/// An interactive transfer that waits: `first` (participant name, key, delta) is the
/// statement expected to wait for a lock; then `second`; then commit.
fn waiting_transfer(
    addr: std::net::SocketAddr,
    options: ClientOptions,
    first: (&'static str, &'static str, i64),
    second: (&'static str, &'static str, i64),
) -> mpsc::Receiver<Result<(), TxError>> {
    spawn_client(move || {
        let mut client = Client::connect(addr, options).unwrap();
        let mut t = client.begin()?;
        t.add(first.0, first.1, first.2)?;
        t.add(second.0, second.1, second.2)?;
        t.commit()
    })
}

fn assert_unavailable(what: &str, result: &Result<(), TxError>, participant: u16) {
    match result {
        Err(TxError::Aborted(AbortReason::Unavailable { participant: named })) => {
            assert_eq!(*named, ParticipantId(participant), "{what} names the lost participant")
        }
        other => panic!("{what}: expected Unavailable, got {other:?}"),
    }
}

const THREE_ACCOUNTS: [(u16, &str); 3] = [(1, "a"), (2, "b"), (3, "c")];

/// Accounts a (p1), b (p2), c (p3). A holder H has moved 10 from a to b (holds both, not
/// committed). Waiting: W1 for a (on p1, the one killed), W2 for b (on p2, held by H), W3
/// holding c and waiting for a. p1 is killed: H, W1 and W3 touched it and end
/// `Unavailable`; W2 never touched p1 and, once H is rolled back, goes on (commits, or waits
/// for W3's lock on c until W3 is rolled back too). p1 restarts: every key can be locked, the
/// total is 300.
#[test]
fn killing_a_participant_under_waiting_transactions_ends_every_wait_and_keeps_the_total() {
    let mut nodes = NodeSet::start(3, PARTICIPANT_FLAGS);
    let mut setup = nodes.client();
    open_accounts(&mut setup, &THREE_ACCOUNTS, 100);

    let mut holder_client = nodes.client();
    let mut holder = holder_client.begin().unwrap();
    holder.add("p1", "a", -10).unwrap();
    holder.add("p2", "b", 10).unwrap();
    let (addr, options) = (nodes.coordinator.addr, nodes.options());
    let w3_holds_c = {
        // W3 takes c before the others could queue for it.
        let (held, holds) = mpsc::channel();
        let options = options.clone();
        let receiver = spawn_client(move || {
            let mut client = Client::connect(addr, options).unwrap();
            let mut t = client.begin()?;
            t.add("p3", "c", -3)?;
            held.send(()).unwrap();
            t.add("p1", "a", 3)?;
            t.commit()
        });
        holds.recv_timeout(OUTCOME_BOUND).expect("W3 locks c");
        receiver
    };
    let w1 = waiting_transfer(addr, options.clone(), ("p1", "a", -5), ("p3", "c", 5));
    let w2 = waiting_transfer(addr, options, ("p2", "b", -7), ("p3", "c", 7));
    // Let the waits reach their participants and queue (if one arrives after the kill it
    // hears Unavailable at once: the assertions hold either way).
    thread::sleep(Duration::from_millis(500));

    nodes.participants[0].kill();
    let deadline = Instant::now() + OUTCOME_BOUND;
    assert_unavailable("W1, waiting on p1", &within_bound("W1", &w1, deadline), 1);
    assert_unavailable("W3, waiting on p1 and holding c", &within_bound("W3", &w3_holds_c, deadline), 1);
    match within_bound("W2", &w2, deadline) {
        Ok(()) => {}
        Err(TxError::Aborted(reason)) if reason.is_retryable() => {}
        other => panic!("W2, waiting on p2 for a transaction that touched p1: {other:?}"),
    }
    match holder.commit() {
        Err(TxError::Aborted(AbortReason::Unavailable { participant: ParticipantId(1) })) => {}
        other => panic!("the holder touched p1: expected Unavailable, got {other:?}"),
    }
    drop(holder_client);

    nodes.participants[0].restart(&[]);
    let mut client = nodes.client();
    let total = eventually("a fresh transaction to lock every key", Duration::from_secs(20), || {
        lock_every_key(&mut client, &THREE_ACCOUNTS)
    });
    assert_eq!(total, 300, "the total is conserved");
    assert_every_participant_settles(&nodes);
}

const SIX_ACCOUNTS: [(u16, &str); 6] = [(1, "a"), (2, "b"), (1, "c"), (2, "d"), (1, "e"), (2, "f")];

/// One-shot transfers between c..f (on p1 and p2) run on two clients while H holds a (p1)
/// and b (p2) and W1, W2 wait for them; the coordinator is killed. Every client hears an
/// outcome or an error within the bound; after the coordinator's restart, every key can be
/// locked (nothing in doubt or left locked at a participant) and the total is conserved.
#[test]
fn killing_the_coordinator_under_one_shot_and_waiting_interactive_transactions_keeps_the_total() {
    let mut nodes = NodeSet::start(2, PARTICIPANT_FLAGS);
    let mut setup = nodes.client();
    open_accounts(&mut setup, &SIX_ACCOUNTS, 100);
    drop(setup);
    // One send per request: a client whose coordinator died hears it, instead of retrying.
    let (addr, options) = (nodes.coordinator.addr, ClientOptions { max_attempts: 1, ..nodes.options() });

    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let one_shot: Vec<_> = [("c", "d"), ("f", "e")]
        .into_iter()
        .map(|(from, to)| {
            let (options, stop) = (options.clone(), stop.clone());
            spawn_client(move || {
                let mut client = Client::connect(addr, options).unwrap();
                let participant = |key: &str| SIX_ACCOUNTS.iter().find(|(_, k)| *k == key).unwrap().0;
                let mut committed = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let ops = vec![add(participant(from), from, -1, 0), add(participant(to), to, 1, 0)];
                    match client.submit(ops) {
                        Ok(outcome) => committed += u64::from(outcome.is_committed()),
                        Err(_) => return committed, // The coordinator is gone.
                    }
                }
                committed
            })
        })
        .collect();

    let mut holder_client = Client::connect(addr, options.clone()).unwrap();
    let mut holder = holder_client.begin().unwrap();
    holder.add("p1", "a", -10).unwrap();
    holder.add("p2", "b", 10).unwrap();
    let w1 = waiting_transfer(addr, options.clone(), ("p1", "a", -5), ("p2", "d", 5));
    let w2 = waiting_transfer(addr, options, ("p2", "b", -7), ("p1", "c", 7));
    thread::sleep(Duration::from_millis(500));

    nodes.coordinator.kill();
    let deadline = Instant::now() + OUTCOME_BOUND;
    for (name, waiter) in [("W1", &w1), ("W2", &w2)] {
        match within_bound(name, waiter, deadline) {
            Err(TxError::Client(_)) => {}
            other => panic!("{name} waited on a lock when the coordinator died: {other:?}"),
        }
    }
    let committed: u64 = one_shot.iter().map(|run| within_bound("a one-shot client", run, deadline)).sum();
    assert!(committed > 0, "the one-shot transfers ran before the crash");
    stop.store(true, Ordering::Relaxed);
    std::mem::forget(holder);
    drop(holder_client);

    nodes.coordinator.restart(&[]);
    let mut client = nodes.client();
    let total = eventually("a fresh transaction to lock every key", Duration::from_secs(20), || {
        lock_every_key(&mut client, &SIX_ACCOUNTS)
    });
    assert_eq!(total, 600, "the total is conserved");
    assert_every_participant_settles(&nodes);
}

/// Every participant ends with nothing prepared and nothing in doubt. Eventually: the
/// client hears Committed once the decision is durable, and the Commit reaches the
/// participants a moment later, so a dump right after may still see the last lock check
/// prepared.
fn assert_every_participant_settles(nodes: &NodeSet) {
    for participant in &nodes.participants {
        eventually(&format!("{} to hold nothing", participant.name), Duration::from_secs(20), || {
            let (_, held) = common::dump_ints(participant);
            (held == (0, 0)).then_some(())
        });
    }
}
