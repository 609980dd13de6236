//! Isolation levels and deadlock detection against real processes (a coordinator and its
//! participants, each its own process), driven through the Rust interactive client:
//! - lost update (two read-modify-write increments of one key, both reading before either
//!   writes) is impossible under serializable, read-committed and optimistic;
//! - write skew (two withdrawals checked against x + y ≥ 0 by the application) happens under
//!   read-committed and not under serializable or optimistic;
//! - serializable audits of every balance see the conserved total while one-shot and
//!   interactive transfers run;
//! - a 4-transaction wait-for cycle across 4 participants aborts exactly its youngest, and a
//!   4-long chain that is no cycle aborts nobody.
//!
//! Optimistic isolation: reads record versions, validated at prepare together with shared
//! locks held to the decision; a conflict aborts with `Conflict` instead of waiting.

mod common;

use std::sync::Barrier;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::{NodeSet, add, get};
use twophase_engine::ops::Isolation;
use twophase_engine::{AbortReason, Outcome, ParticipantId, TxId};
use twophase_net::{Client, Transaction, TxError};

/// Long enough that no wait in these tests ends by timeout on a loaded machine: waits end
/// with a grant or a deadlock abort.
const PARTICIPANT_FLAGS: &[&str] = &["--lock-wait-timeout", "10s"];

/// How a transaction ended: committed, or aborted with the coordinator's reason. Anything
/// else (a client error) fails the test.
fn ended(result: Result<(), TxError>) -> Result<(), AbortReason> {
    match result {
        Ok(()) => Ok(()),
        Err(TxError::Aborted(reason)) => Err(reason),
        Err(TxError::Client(err)) => panic!("client error: {err}"),
    }
}

fn int(value: &Option<bytes::Bytes>) -> Option<i64> {
    value.as_ref().map(|v| i64::from_le_bytes(v.as_ref().try_into().expect("8-byte integer")))
}

/// `x` on `p1` as a committed one-shot read sees it.
fn committed_x(client: &mut Client) -> Option<i64> {
    common::read_ints(client, &[(1, "x")])[0]
}

// ---- lost update ----

/// Two increments of `x` on p1 by read-modify-write (read x, then put x + 1) at
/// `isolation`, begun oldest first and interleaved so that both read before either writes.
/// Returns how each ended, older first, and their txids.
fn racing_increments(nodes: &NodeSet, isolation: Isolation) -> ([Result<(), AbortReason>; 2], [TxId; 2]) {
    race_two(nodes, isolation, |mut t, _, both_read| {
        let read = t.get_i64("p1", "x");
        // Reached even when the read failed, so that the other one never hangs.
        both_read.wait();
        let read = read?;
        t.put("p1", "x", (read.unwrap_or(0) + 1).to_le_bytes())?;
        t.commit()
    })
}

/// Begins two transactions at `isolation`, oldest first, on clients of their own, and runs
/// `run(transaction, index, both_read)` for each (index 0 the older) on a thread of its
/// own; `run` waits on `both_read` once its reads are done, so both read before either
/// writes. Returns how each ended, older first, and their txids.
fn race_two<F>(nodes: &NodeSet, isolation: Isolation, run: F) -> ([Result<(), AbortReason>; 2], [TxId; 2])
where
    F: Fn(Transaction<'_>, usize, &Barrier) -> Result<(), TxError> + Sync,
{
    let (mut first, mut second) = (nodes.client(), nodes.client());
    let older = first.begin_with(isolation, None).unwrap();
    let younger = second.begin_with(isolation, None).unwrap();
    let txids = [older.txid(), younger.txid()];
    let both_read = Barrier::new(2);
    let ends = thread::scope(|scope| {
        let runs = [(older, 0), (younger, 1)].map(|(t, index)| {
            let (both_read, run) = (&both_read, &run);
            scope.spawn(move || run(t, index, both_read))
        });
        runs.map(|run| ended(run.join().unwrap()))
    });
    (ends, txids)
}

/// Runs the read-modify-write increment alone, retrying retryable aborts; panics on any
/// other abort.
fn increment_until_committed(client: &mut Client, isolation: Isolation) {
    for _ in 0..20 {
        let mut t = client.begin_with(isolation, None).unwrap();
        let result = t
            .get_i64("p1", "x")
            .and_then(|read| t.put("p1", "x", (read.unwrap_or(0) + 1).to_le_bytes()))
            .and_then(|()| t.commit());
        match ended(result) {
            Ok(()) => return,
            Err(reason) if reason.is_retryable() => continue,
            Err(reason) => panic!("the retried increment aborted: {reason}"),
        }
    }
    panic!("the retried increment never committed");
}

/// The loser of a race must name the conflict on x at p1.
fn assert_conflict_on_x(reason: &AbortReason) {
    match reason {
        AbortReason::Conflict { participant, key } => {
            assert_eq!((*participant, &key[..]), (ParticipantId(1), &b"x"[..]), "the conflict names x on p1");
        }
        other => panic!("expected Conflict, got {other:?}"),
    }
}

#[test]
fn serializable_forbids_lost_update_the_younger_deadlocks_and_its_retry_lands() {
    let nodes = NodeSet::start(2, PARTICIPANT_FLAGS);
    let ([older, younger], [older_id, younger_id]) = racing_increments(&nodes, Isolation::Serializable);
    // Both hold a shared lock on x; each write waits for the other's: a cycle.
    older.expect("the older increment commits once the victim is gone");
    match younger {
        Err(AbortReason::Deadlock { cycle }) => {
            let mut members = cycle.clone();
            members.sort();
            assert_eq!((cycle[0], members), (younger_id, vec![older_id, younger_id]), "victim first, both named");
        }
        other => panic!("expected the younger to deadlock, got {other:?}"),
    }
    let mut client = nodes.client();
    assert_eq!(committed_x(&mut client), Some(1), "only the committed increment applied");
    increment_until_committed(&mut client, Isolation::Serializable);
    assert_eq!(committed_x(&mut client), Some(2), "every committed increment counted");
}

#[test]
fn read_committed_forbids_lost_update_the_second_writer_conflicts() {
    lost_update_loser_conflicts_and_its_retry_lands(Isolation::ReadCommitted);
}

/// The exact interleaving: T1 reads x = 0, T2 reads x = 0, T1 writes x = 1 (exclusive
/// lock), T2 writes x = 1 (queues behind T1's lock), T1 commits, T2's write is granted and
/// finds the committed value changed since its read: `Conflict`, not a lost update.
#[test]
fn read_committed_a_writer_queued_behind_an_uncommitted_write_conflicts_at_its_grant() {
    let nodes = NodeSet::start(2, PARTICIPANT_FLAGS);
    let (mut first, mut second) = (nodes.client(), nodes.client());
    let mut t1 = first.begin_with(Isolation::ReadCommitted, None).unwrap();
    let mut t2 = second.begin_with(Isolation::ReadCommitted, None).unwrap();
    assert_eq!(t1.get_i64("p1", "x").unwrap(), None);
    assert_eq!(t2.get_i64("p1", "x").unwrap(), None);
    t1.put("p1", "x", 1i64.to_le_bytes()).unwrap();
    let t2_write = thread::scope(|scope| {
        let queued = scope.spawn(|| ended(t2.put("p1", "x", 1i64.to_le_bytes())));
        // Let T2's write reach p1 and queue (the outcome is the same if it arrives later:
        // then it finds the changed value at once).
        thread::sleep(Duration::from_millis(300));
        assert!(!queued.is_finished(), "T2's write waits for T1's exclusive lock");
        t1.commit().expect("T1 commits");
        queued.join().unwrap()
    });
    assert_conflict_on_x(&t2_write.expect_err("T2's write of a value it read before T1's commit"));
    assert!(matches!(ended(t2.commit()), Err(AbortReason::Conflict { .. })), "T2 is over");
    assert_eq!(committed_x(&mut first), Some(1));
}

#[test]
fn optimistic_forbids_lost_update_the_loser_conflicts_and_its_retry_lands() {
    lost_update_loser_conflicts_and_its_retry_lands(Isolation::Optimistic);
}

/// Two racing increments of x under `isolation`: exactly one commits, the other aborts
/// with `Conflict` on x, and its retry lands, so every committed increment counts.
fn lost_update_loser_conflicts_and_its_retry_lands(isolation: Isolation) {
    let nodes = NodeSet::start(2, PARTICIPANT_FLAGS);
    let (ends, _) = racing_increments(&nodes, isolation);
    let losers: Vec<&AbortReason> = ends.iter().filter_map(|end| end.as_ref().err()).collect();
    assert_eq!(losers.len(), 1, "exactly one of the two commits: {ends:?}");
    assert_conflict_on_x(losers[0]);
    let mut client = nodes.client();
    assert_eq!(committed_x(&mut client), Some(1));
    increment_until_committed(&mut client, isolation);
    assert_eq!(committed_x(&mut client), Some(2), "every committed increment counted");
}

// ---- write skew ----

const WITHDRAWAL: i64 = 60;

/// Accounts x (p1) and y (p2) hold 50 each; T1 withdraws 60 from x, T2 60 from y, each
/// after reading both and checking x + y - 60 ≥ 0, both reading before either writes.
fn racing_withdrawals(isolation: Isolation) -> Withdrawals {
    let nodes = NodeSet::start(2, PARTICIPANT_FLAGS);
    let mut setup = nodes.client();
    assert!(setup.submit(vec![add(1, "x", 50, 0), add(2, "y", 50, 0)]).unwrap().is_committed());
    let (ends, txids) = race_two(&nodes, isolation, |mut t, own, both_read| {
        let reads = t.execute(vec![get(1, "x"), get(2, "y")]);
        both_read.wait();
        let balances: Vec<i64> = reads?.iter().map(|read| int(&read.value).unwrap()).collect();
        let total: i64 = balances.iter().sum();
        assert!(total - WITHDRAWAL >= 0, "the application's check passes on the values read");
        let (participant, key) = [("p1", "x"), ("p2", "y")][own];
        t.put(participant, key, (balances[own] - WITHDRAWAL).to_le_bytes())?;
        t.commit()
    });
    let values = common::read_ints(&mut setup, &[(1, "x"), (2, "y")]);
    Withdrawals { ends, txids, balances: (values[0].unwrap(), values[1].unwrap()), nodes }
}

/// How two racing withdrawals ended.
struct Withdrawals {
    /// Older first.
    ends: [Result<(), AbortReason>; 2],
    txids: [TxId; 2],
    /// The committed (x, y) afterwards.
    balances: (i64, i64),
    nodes: NodeSet,
}

#[test]
fn read_committed_allows_write_skew() {
    let Withdrawals { ends, balances: (x, y), .. } = racing_withdrawals(Isolation::ReadCommitted);
    assert!(ends.iter().all(Result::is_ok), "both withdrawals commit under read-committed: {ends:?}");
    assert_eq!((x, y), (-10, -10), "x + y = -20 breaks the constraint each checked: write skew");
}

#[test]
fn serializable_forbids_write_skew() {
    let Withdrawals { ends, txids: [older_id, younger_id], balances: (x, y), nodes } =
        racing_withdrawals(Isolation::Serializable);
    // Each holds a shared lock on both accounts; each write waits for the other's.
    ends[0].as_ref().expect("the older withdrawal commits");
    match &ends[1] {
        Err(AbortReason::Deadlock { cycle }) => assert_eq!(cycle.first(), Some(&younger_id), "{older_id} survives"),
        other => panic!("expected the younger to deadlock, got {other:?}"),
    }
    assert_eq!((x, y), (-10, 50));
    // Its retry sees the withdrawal and the application refuses it.
    let mut client = nodes.client();
    let mut t = client.begin().unwrap();
    let reads = t.execute(vec![get(1, "x"), get(2, "y")]).unwrap();
    let total: i64 = reads.iter().map(|read| int(&read.value).unwrap()).sum();
    assert!(total - WITHDRAWAL < 0, "the retry's check fails: {total}");
    t.rollback().unwrap();
}

#[test]
fn optimistic_forbids_write_skew() {
    let Withdrawals { ends, balances: (x, y), .. } = racing_withdrawals(Isolation::Optimistic);
    let committed = ends.iter().filter(|end| end.is_ok()).count();
    assert_eq!(committed, 1, "exactly one withdrawal commits: {ends:?}");
    let loser = ends.iter().find_map(|end| end.as_ref().err()).unwrap();
    assert!(matches!(loser, AbortReason::Conflict { .. }), "the loser's read was invalidated: {loser:?}");
    assert!(x + y >= 0, "the constraint holds: x = {x}, y = {y}");
}

// ---- audits ----

const ACCOUNTS: usize = 9;
const OPENING_BALANCE: i64 = 1000;
const AUDIT_RUN: Duration = Duration::from_secs(4);

/// Account `index` and its participant (1-based): spread round-robin over three.
fn account(index: usize) -> (u16, String) {
    ((index % 3) as u16 + 1, format!("acct/{index}"))
}

fn participant_name(participant: u16) -> String {
    format!("p{participant}")
}

/// A small deterministic generator (xorshift), enough to pick accounts and amounts.
struct Picks(u64);

impl Picks {
    fn next(&mut self, below: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % below
    }

    fn two_accounts(&mut self) -> (usize, usize) {
        let from = self.next(ACCOUNTS as u64) as usize;
        let to = (from + 1 + self.next(ACCOUNTS as u64 - 1) as usize) % ACCOUNTS;
        (from, to)
    }
}

/// One-shot transfers until `stop`; returns how many committed.
fn one_shot_transfers(mut client: Client, seed: u64, stop: &AtomicBool) -> u64 {
    let (mut picks, mut committed) = (Picks(seed), 0);
    while !stop.load(Ordering::Relaxed) {
        let (from, to) = picks.two_accounts();
        let amount = picks.next(50) as i64 + 1;
        let ((p_from, k_from), (p_to, k_to)) = (account(from), account(to));
        let outcome = client.submit(vec![add(p_from, &k_from, -amount, 0), add(p_to, &k_to, amount, 0)]).unwrap();
        committed += u64::from(outcome.is_committed());
    }
    committed
}

/// Interactive transfers (read both balances, check the funds, then write) until `stop`;
/// returns how many committed. Retryable aborts (deadlocks, conflicts) are skipped.
fn interactive_transfers(mut client: Client, seed: u64, stop: &AtomicBool) -> u64 {
    let (mut picks, mut committed) = (Picks(seed), 0);
    while !stop.load(Ordering::Relaxed) {
        let (from, to) = picks.two_accounts();
        let amount = picks.next(50) as i64 + 1;
        let ((p_from, k_from), (p_to, k_to)) = (account(from), account(to));
        let (n_from, n_to) = (participant_name(p_from), participant_name(p_to));
        let mut t = client.begin().unwrap();
        let result = (|| {
            let balance = t.get_i64(&n_from, &k_from)?.unwrap();
            t.get_i64(&n_to, &k_to)?;
            if balance >= amount {
                t.add(&n_from, &k_from, -amount)?;
                t.add(&n_to, &k_to, amount)?;
            }
            Ok::<(), TxError>(())
        })();
        let result = result.and_then(|()| t.commit());
        match ended(result) {
            Ok(()) => committed += 1,
            Err(reason) => assert!(reason.is_retryable(), "a transfer aborted with {reason}"),
        }
    }
    committed
}

/// What the audits saw: how many committed, how many of those saw another total.
#[derive(Default)]
struct AuditCounts {
    committed: AtomicU64,
    torn: AtomicU64,
    aborted: AtomicU64,
}

/// An interactive serializable audit: one statement per participant (so transfers can run
/// between them), then commit. The sum of a committed audit.
fn interactive_audit(client: &mut Client) -> Result<i64, AbortReason> {
    let mut t: Transaction<'_> = client.begin().unwrap();
    let mut total = 0;
    for participant in 1..=3u16 {
        let ops = (0..ACCOUNTS).map(account).filter(|(p, _)| *p == participant).map(|(p, key)| get(p, &key)).collect();
        match t.execute(ops) {
            Ok(reads) => total += reads.iter().map(|read| int(&read.value).unwrap()).sum::<i64>(),
            Err(err) => return ended(Err(err)).map(|()| 0),
        }
    }
    ended(t.commit()).map(|()| total)
}

/// A one-shot read-only audit of every account (one transaction, three participants).
fn one_shot_audit(client: &mut Client) -> Result<i64, AbortReason> {
    let ops = (0..ACCOUNTS).map(account).map(|(p, key)| get(p, &key)).collect();
    match client.submit(ops).unwrap() {
        Outcome::Committed { reads } => Ok(reads.iter().map(|read| int(&read.value).unwrap()).sum()),
        Outcome::Aborted { reason } => Err(reason),
        Outcome::CommittedReadsUnavailable => panic!("no restart here"),
    }
}

fn join_all(runs: Vec<thread::ScopedJoinHandle<'_, u64>>) -> u64 {
    runs.into_iter().map(|run| run.join().unwrap()).sum()
}

/// Runs two one-shot and two interactive transfer loops and two `audit` loops for
/// `AUDIT_RUN` over 9 accounts on 3 participants; returns the audit counts.
fn audits_during_transfers(audit: fn(&mut Client) -> Result<i64, AbortReason>) -> AuditCounts {
    let nodes = NodeSet::start(3, PARTICIPANT_FLAGS);
    let mut setup = nodes.client();
    let opening = (0..ACCOUNTS).map(account).map(|(p, key)| add(p, &key, OPENING_BALANCE, 0)).collect();
    assert!(setup.submit(opening).unwrap().is_committed());
    let expected = OPENING_BALANCE * ACCOUNTS as i64;
    let (stop, counts) = (AtomicBool::new(false), AuditCounts::default());
    let transfers = thread::scope(|scope| {
        let (stop, counts, nodes) = (&stop, &counts, &nodes);
        let one_shot: Vec<_> =
            (1..=2).map(|seed| scope.spawn(move || one_shot_transfers(nodes.client(), seed, stop))).collect();
        let interactive: Vec<_> =
            (3..=4).map(|seed| scope.spawn(move || interactive_transfers(nodes.client(), seed, stop))).collect();
        for _ in 0..2 {
            scope.spawn(move || {
                let mut client = nodes.client();
                while !stop.load(Ordering::Relaxed) {
                    match audit(&mut client) {
                        Ok(total) => {
                            counts.committed.fetch_add(1, Ordering::Relaxed);
                            if total != expected {
                                eprintln!("torn audit: total {total}, expected {expected}");
                                counts.torn.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(reason) => {
                            assert!(reason.is_retryable(), "an audit aborted with {reason}");
                            counts.aborted.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            });
        }
        let started = Instant::now();
        while started.elapsed() < AUDIT_RUN {
            thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
        (join_all(one_shot), join_all(interactive))
    });
    let final_total: i64 =
        (0..ACCOUNTS).map(account).map(|(p, key)| common::read_ints(&mut setup, &[(p, &key)])[0].unwrap()).sum();
    assert_eq!(final_total, expected, "the transfers conserve the total");
    let (committed, torn, aborted) = (
        counts.committed.load(Ordering::Relaxed),
        counts.torn.load(Ordering::Relaxed),
        counts.aborted.load(Ordering::Relaxed),
    );
    eprintln!(
        "audits: {committed} committed ({torn} torn), {aborted} aborted; transfers committed: {} one-shot, {} interactive",
        transfers.0, transfers.1
    );
    assert!(transfers.0 > 0 && transfers.1 > 0, "transfers of both kinds ran: {transfers:?}");
    assert!(committed >= 20, "enough audits committed to show a torn read: {committed}");
    counts
}

#[test]
fn interactive_serializable_audits_see_the_conserved_total_while_transfers_run() {
    let counts = audits_during_transfers(interactive_audit);
    let (committed, torn) = (counts.committed.load(Ordering::Relaxed), counts.torn.load(Ordering::Relaxed));
    assert_eq!(torn, 0, "{torn} of {committed} committed interactive audits saw another total");
}

/// A one-shot read-only audit spans three participants, so none of them may release its
/// read locks at its vote (the read-only optimisation is kept for a sole participant only):
/// each votes Yes holding them, durably, until the coordinator releases it, and no transfer
/// can commit between its reads at two participants (ARCHITECTURE.md, "Read-only optimisation").
#[test]
fn one_shot_read_only_audits_see_the_conserved_total_while_transfers_run() {
    let counts = audits_during_transfers(one_shot_audit);
    let (committed, torn) = (counts.committed.load(Ordering::Relaxed), counts.torn.load(Ordering::Relaxed));
    assert_eq!(torn, 0, "{torn} of {committed} committed one-shot audits saw another total");
}

// ---- deadlocks across 4 participants ----

/// Four serializable transactions T1..T4, begun in that order (T4 youngest), each holding
/// `k{i}` on `p{i}` (written `10 * i`).
fn four_holders(clients: &mut [Client]) -> Vec<Transaction<'_>> {
    clients
        .iter_mut()
        .enumerate()
        .map(|(index, client)| {
            let mut t = client.begin().unwrap();
            let i = index + 1;
            t.put(&format!("p{i}"), format!("k{i}"), (10 * i as i64).to_le_bytes()).unwrap();
            t
        })
        .collect()
}

#[test]
fn a_four_participant_cycle_aborts_exactly_its_youngest_and_the_others_commit() {
    let nodes = NodeSet::start(4, PARTICIPANT_FLAGS);
    let mut clients: Vec<Client> = (0..4).map(|_| nodes.client()).collect();
    let holders = four_holders(&mut clients);
    let txids: Vec<TxId> = holders.iter().map(Transaction::txid).collect();
    assert!(txids.windows(2).all(|pair| pair[0] < pair[1]), "txids grow with begin order");
    // T{i} requests k{i+1} (T4 requests k1): T1 → T2 → T3 → T4 → T1.
    let ends: Vec<Result<(), AbortReason>> = thread::scope(|scope| {
        let runs: Vec<_> = holders
            .into_iter()
            .enumerate()
            .map(|(index, mut t)| {
                let next = (index + 1) % 4 + 1;
                scope.spawn(move || ended(t.get(&format!("p{next}"), format!("k{next}")).and_then(|_| t.commit())))
            })
            .collect();
        runs.into_iter().map(|run| run.join().unwrap()).collect()
    });
    for (index, end) in ends[..3].iter().enumerate() {
        assert!(end.is_ok(), "T{} commits once the victim's lock is gone: {end:?}", index + 1);
    }
    match &ends[3] {
        Err(AbortReason::Deadlock { cycle }) => {
            assert_eq!(cycle.first(), Some(&txids[3]), "the youngest is the victim, named first");
            let mut members = cycle.clone();
            members.sort();
            assert_eq!(members, txids, "the cycle names all four");
        }
        other => panic!("expected T4 to deadlock, got {other:?}"),
    }
    let mut client = nodes.client();
    let values = common::read_ints(&mut client, &[(1, "k1"), (2, "k2"), (3, "k3"), (4, "k4")]);
    assert_eq!(values, vec![Some(10), Some(20), Some(30), None], "T4's write is gone, the others' stay");
}

/// T1 holds k1; T{i} (i = 2..4) holds k{i} and waits to read k{i-1}, then writes
/// k{i} = k{i-1} + 1. Nothing is aborted, and once T1 commits each commits in turn, each
/// having read its predecessor's committed value: k1..k4 = 10, 11, 12, 13.
#[test]
fn a_four_participant_chain_that_is_no_cycle_aborts_nobody_and_commits_in_order() {
    let nodes = NodeSet::start(4, PARTICIPANT_FLAGS);
    let mut clients: Vec<Client> = (0..4).map(|_| nodes.client()).collect();
    let mut holders = four_holders(&mut clients);
    let head = holders.remove(0);
    let ends: Vec<Result<(), AbortReason>> = thread::scope(|scope| {
        let runs: Vec<_> = holders
            .into_iter()
            .enumerate()
            .map(|(index, mut t)| {
                let (own, previous) = (index + 2, index + 1);
                scope.spawn(move || {
                    let result = t.get_i64(&format!("p{previous}"), format!("k{previous}")).and_then(|read| {
                        let read = read.expect("the predecessor's committed write");
                        t.put(&format!("p{own}"), format!("k{own}"), (read + 1).to_le_bytes())
                    });
                    ended(result.and_then(|()| t.commit()))
                })
            })
            .collect();
        // Let the three waits form the chain T4 → T3 → T2 → T1 before its head ends.
        thread::sleep(Duration::from_millis(500));
        assert!(runs.iter().all(|run| !run.is_finished()), "the chain waits for its head");
        ended(head.commit()).expect("the head commits");
        runs.into_iter().map(|run| run.join().unwrap()).collect()
    });
    assert!(ends.iter().all(Result::is_ok), "nobody in a chain is aborted: {ends:?}");
    let mut client = nodes.client();
    let values = common::read_ints(&mut client, &[(1, "k1"), (2, "k2"), (3, "k3"), (4, "k4")]);
    assert_eq!(values, vec![Some(10), Some(11), Some(12), Some(13)], "each read its predecessor's commit");
}
