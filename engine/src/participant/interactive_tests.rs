//! Interactive transactions at one participant: waiting locks, wait reports, timeouts and
//! the anomalies each isolation level allows or forbids.

use super::*;
use crate::effects::Gated;
use crate::ops::OpKind;
use bytes::Bytes;

pub(super) const ME: ParticipantId = ParticipantId(1);
pub(super) const EPOCH: Epoch = Epoch(1);
pub(super) const SER: Isolation = Isolation::Serializable;
const RC: Isolation = Isolation::ReadCommitted;

pub(super) fn t(counter: u64) -> TxId {
    TxId::new(EPOCH, counter)
}

pub(super) fn key(text: &'static str) -> Key {
    Bytes::from_static(text.as_bytes())
}

pub(super) fn fresh() -> Participant {
    let mut fx = PartEffects::default();
    Participant::recover(ParticipantConfig::new(ME), None, Vec::new(), Time::ZERO, &mut fx)
}

pub(super) fn local_ops(ops: Vec<(&'static str, OpKind)>) -> Vec<LocalOp> {
    ops.into_iter().enumerate().map(|(i, (k, kind))| LocalOp { index: i as u16, key: key(k), kind }).collect()
}

pub(super) fn put(value: i64) -> OpKind {
    OpKind::Put(encode_int(value))
}

/// Delivers `message` at `now` and returns what it sent.
pub(super) fn deliver(p: &mut Participant, now: Time, message: ToParticipant) -> Vec<ToCoordinator> {
    let mut fx = PartEffects::default();
    p.on_message(now, EPOCH, message, &mut fx).unwrap();
    fx.outputs.into_iter().map(|g| g.item).collect()
}

pub(super) fn execute(
    p: &mut Participant,
    counter: u64,
    isolation: Isolation,
    ops: Vec<(&'static str, OpKind)>,
) -> Vec<ToCoordinator> {
    deliver(p, Time::ZERO, ToParticipant::Execute { txid: t(counter), isolation, ops: local_ops(ops) })
}

/// `reads`: (op index, value read) per Get.
pub(super) fn executed_ok(counter: u64, reads: &[(u16, Option<i64>)]) -> ToCoordinator {
    let reads = reads.iter().map(|(index, v)| Read { index: *index, value: v.map(encode_int) }).collect();
    ToCoordinator::Executed { txid: t(counter), result: Ok(reads) }
}

fn wait_for(waiter: u64, k: &'static str, holders: &[u64]) -> ToCoordinator {
    ToCoordinator::WaitFor { waiter: t(waiter), key: key(k), holders: holders.iter().map(|c| t(*c)).collect() }
}

fn vote(p: &mut Participant, counter: u64) -> Vote {
    match &deliver(p, Time::ZERO, ToParticipant::PrepareExecuted { txid: t(counter), sole: true })[..] {
        [ToCoordinator::Vote { vote, .. }] => vote.clone(),
        other => panic!("expected one vote, got {other:?}"),
    }
}

pub(super) fn commit(p: &mut Participant, counter: u64) -> Vec<ToCoordinator> {
    let mut out = deliver(p, Time::ZERO, ToParticipant::Commit { txid: t(counter) });
    out.retain(|m| !matches!(m, ToCoordinator::Ack { .. }));
    out
}

pub(super) fn abort(p: &mut Participant, counter: u64) -> Vec<ToCoordinator> {
    deliver(p, Time::ZERO, ToParticipant::Abort { txid: t(counter) })
}

/// Commits `values` through a one-shot transaction `counter`.
pub(super) fn load(p: &mut Participant, counter: u64, values: Vec<(&'static str, OpKind)>) {
    let out = deliver(p, Time::ZERO, ToParticipant::Prepare { txid: t(counter), ops: local_ops(values), sole: true });
    assert!(matches!(out[..], [ToCoordinator::Vote { vote: Vote::Yes { .. }, .. }]), "{out:?}");
    deliver(p, Time::ZERO, ToParticipant::Commit { txid: t(counter) });
}

pub(super) fn value(p: &Participant, k: &str) -> Option<i64> {
    p.kv().get(k.as_bytes()).map(|v| decode_int(Some(v)).unwrap())
}

#[test]
fn executes_buffer_writes_see_their_own_and_commit_applies_them_after_a_gated_yes() {
    let mut p = fresh();
    let out = execute(&mut p, 1, SER, vec![("a", put(5)), ("a", OpKind::Get)]);
    assert_eq!(out, vec![executed_ok(1, &[(1, Some(5))])]);
    let out = execute(&mut p, 1, SER, vec![("a", OpKind::Add { delta: 2, floor: 0 }), ("a", OpKind::Get)]);
    assert_eq!(out, vec![executed_ok(1, &[(1, Some(7))])]);
    assert_eq!(value(&p, "a"), None, "nothing reaches the store before the commit");
    let mut fx = PartEffects::default();
    p.on_message(Time::ZERO, EPOCH, ToParticipant::PrepareExecuted { txid: t(1), sole: true }, &mut fx).unwrap();
    let (lsn, record) = &fx.appends[0];
    assert_eq!(
        record,
        &PartRecord::Prepared {
            txid: t(1),
            writes: vec![Write { key: key("a"), value: Some(encode_int(7)) }].into(),
            read_keys: vec![]
        }
    );
    assert_eq!(
        fx.outputs,
        vec![Gated { after: *lsn, item: ToCoordinator::Vote { txid: t(1), vote: Vote::Yes { reads: vec![] } } }]
    );
    assert_eq!((p.open_transactions(), p.prepared()), (0, 1));
    commit(&mut p, 1);
    assert_eq!(value(&p, "a"), Some(7));
    assert_eq!(p.locked_keys(), 0);
}

#[test]
fn a_read_only_transaction_votes_read_only_and_releases_its_read_locks() {
    let mut p = fresh();
    assert_eq!(execute(&mut p, 1, SER, vec![("a", OpKind::Get)]), vec![executed_ok(1, &[(0, None)])]);
    assert_eq!(p.locked_keys(), 1, "serializable reads lock");
    assert_eq!(vote(&mut p, 1), Vote::ReadOnly { reads: vec![] });
    assert_eq!((p.locked_keys(), p.open_transactions(), p.prepared()), (0, 0, 0));
}

#[test]
fn conflicting_executes_wait_in_fifo_order_and_report_their_waits_as_they_start_change_and_end() {
    let mut p = fresh();
    assert_eq!(execute(&mut p, 1, SER, vec![("a", put(1))]), vec![executed_ok(1, &[])]);
    // t2 reads a (shared) behind t1's exclusive lock; t3 writes it behind both.
    assert_eq!(execute(&mut p, 2, SER, vec![("a", OpKind::Get)]), vec![wait_for(2, "a", &[1])]);
    assert_eq!(execute(&mut p, 3, SER, vec![("a", put(3))]), vec![wait_for(3, "a", &[1, 2])]);
    // t4 only reads: shared with t2, but it queues behind t3's exclusive request (FIFO).
    assert_eq!(execute(&mut p, 4, SER, vec![("a", OpKind::Get)]), vec![wait_for(4, "a", &[1, 3])]);
    assert_eq!(p.stats().lock_waits, 3);
    // t1 rolls back: t2 is granted and reads the committed (absent) value; t3 now waits for
    // t2 alone, t4 for t3 alone.
    let out = abort(&mut p, 1);
    assert_eq!(
        out,
        vec![wait_for(3, "a", &[2]), wait_for(4, "a", &[3]), wait_for(2, "a", &[]), executed_ok(2, &[(0, None)])]
    );
    let out = abort(&mut p, 2);
    assert_eq!(out, vec![wait_for(3, "a", &[]), executed_ok(3, &[])], "t4 still waits for t3: not reported again");
    assert_eq!(vote(&mut p, 3), Vote::Yes { reads: vec![] });
    let out = commit(&mut p, 3);
    assert_eq!(out, vec![wait_for(4, "a", &[]), executed_ok(4, &[(0, Some(3))])], "t4 reads t3's committed write");
    assert_eq!(p.stats().executes, 4);
}

#[test]
fn a_lock_wait_longer_than_the_timeout_fails_the_waiter_and_rolls_it_back() {
    let mut p = fresh();
    execute(&mut p, 1, SER, vec![("a", put(1))]);
    execute(&mut p, 2, SER, vec![("b", put(2))]);
    let now = Time::ZERO + Duration::from_millis(300);
    let out = deliver(
        &mut p,
        now,
        ToParticipant::Execute { txid: t(2), isolation: SER, ops: local_ops(vec![("a", put(2))]) },
    );
    assert_eq!(out, vec![wait_for(2, "a", &[1])]);
    let mut fx = PartEffects::default();
    p.on_tick(now + Duration::from_millis(999), &mut fx);
    assert!(fx.is_empty(), "not yet: {fx:?}");
    p.on_tick(now + Duration::from_secs(1), &mut fx);
    let out: Vec<ToCoordinator> = fx.outputs.into_iter().map(|g| g.item).collect();
    let timeout = AbortReason::LockTimeout { participant: ME, key: key("a") };
    assert_eq!(out, vec![ToCoordinator::Executed { txid: t(2), result: Err(timeout) }, wait_for(2, "a", &[])]);
    assert_eq!(
        (p.open_transactions(), p.locked_keys(), p.stats().lock_timeouts),
        (1, 1, 1),
        "t2's lock on b is released"
    );
    // The rolled-back transaction cannot be continued or prepared.
    let err = ToCoordinator::Executed { txid: t(2), result: Err(AbortReason::NotActive) };
    assert_eq!(execute(&mut p, 2, SER, vec![("c", put(1))]), vec![err]);
    assert_eq!(vote(&mut p, 2), Vote::No { reason: AbortReason::NotActive });
}

#[test]
fn an_open_transaction_idle_past_its_limit_is_rolled_back_here() {
    let mut p = fresh();
    execute(&mut p, 1, SER, vec![("a", put(1))]);
    let later = Time::ZERO + Duration::from_secs(50);
    deliver(&mut p, later, ToParticipant::Execute { txid: t(1), isolation: SER, ops: local_ops(vec![("b", put(1))]) });
    let mut fx = PartEffects::default();
    p.on_tick(Time::ZERO + Duration::from_secs(70), &mut fx);
    assert_eq!(p.open_transactions(), 1, "active 50 s ago: not idle for 70 s yet");
    p.on_tick(later + Duration::from_secs(70), &mut fx);
    assert_eq!((p.open_transactions(), p.locked_keys()), (0, 0));
    assert!(fx.is_empty(), "nothing to tell: it had no request in progress");
}

#[test]
fn read_committed_reads_take_no_lock_and_see_committed_values_only() {
    let mut p = fresh();
    load(&mut p, 1, vec![("a", put(10))]);
    // t2 writes a (uncommitted); t3 reads it at read committed: the committed 10, at once.
    execute(&mut p, 2, SER, vec![("a", put(20))]);
    assert_eq!(execute(&mut p, 3, RC, vec![("a", OpKind::Get)]), vec![executed_ok(3, &[(0, Some(10))])]);
    assert_eq!(p.locked_keys(), 1, "t3 holds no lock");
    // Once t2 is prepared its decision is pending: a read waits for it, never reads around it.
    assert!(matches!(vote(&mut p, 2), Vote::Yes { .. }));
    assert_eq!(execute(&mut p, 3, RC, vec![("a", OpKind::Get)]), vec![wait_for(3, "a", &[2])]);
    assert_eq!(commit(&mut p, 2), vec![wait_for(3, "a", &[]), executed_ok(3, &[(0, Some(20))])]);
    // And a writer never waits for a read-committed reader.
    assert_eq!(execute(&mut p, 4, SER, vec![("a", put(30))]), vec![executed_ok(4, &[])]);
}

#[test]
fn write_skew_happens_under_read_committed() {
    let mut p = fresh();
    load(&mut p, 1, vec![("a", put(1)), ("b", put(1))]);
    // Invariant a + b >= 1: each doctor checks the other is on call, then leaves.
    for (tx, mine) in [(2, "a"), (3, "b")] {
        assert_eq!(execute(&mut p, tx, RC, vec![("a", OpKind::Get), ("b", OpKind::Get)]).len(), 1);
        assert_eq!(execute(&mut p, tx, RC, vec![(mine, put(0))]), vec![executed_ok(tx, &[])]);
    }
    for tx in [2, 3] {
        assert!(matches!(vote(&mut p, tx), Vote::Yes { .. }));
        commit(&mut p, tx);
    }
    assert_eq!((value(&p, "a"), value(&p, "b")), (Some(0), Some(0)), "both committed: the anomaly");
}

#[test]
fn write_skew_is_impossible_under_serializable_the_writers_deadlock() {
    let mut p = fresh();
    load(&mut p, 1, vec![("a", put(1)), ("b", put(1))]);
    for tx in [2, 3] {
        assert_eq!(execute(&mut p, tx, SER, vec![("a", OpKind::Get), ("b", OpKind::Get)]).len(), 1);
    }
    // Each waits for the other's read lock: a cycle the coordinator's detector sees.
    assert_eq!(execute(&mut p, 2, SER, vec![("a", put(0))]), vec![wait_for(2, "a", &[3])]);
    assert_eq!(execute(&mut p, 3, SER, vec![("b", put(0))]), vec![wait_for(3, "b", &[2])]);
    // The detector aborts the younger; the older goes on and commits, alone.
    let out = abort(&mut p, 3);
    assert_eq!(out, vec![wait_for(3, "b", &[]), wait_for(2, "a", &[]), executed_ok(2, &[])]);
    assert!(matches!(vote(&mut p, 2), Vote::Yes { .. }));
    commit(&mut p, 2);
    assert_eq!((value(&p, "a"), value(&p, "b")), (Some(0), Some(1)));
}

#[test]
fn lost_update_is_impossible_under_serializable() {
    let mut p = fresh();
    load(&mut p, 1, vec![("a", put(10))]);
    for tx in [2, 3] {
        assert_eq!(execute(&mut p, tx, SER, vec![("a", OpKind::Get)]), vec![executed_ok(tx, &[(0, Some(10))])]);
    }
    // Both write 11 from the 10 they read: each waits for the other's read lock.
    assert_eq!(execute(&mut p, 2, SER, vec![("a", put(11))]), vec![wait_for(2, "a", &[3])]);
    assert_eq!(execute(&mut p, 3, SER, vec![("a", put(11))]), vec![wait_for(3, "a", &[2])]);
    abort(&mut p, 3);
    assert!(matches!(vote(&mut p, 2), Vote::Yes { .. }));
    commit(&mut p, 2);
    assert_eq!(value(&p, "a"), Some(11), "one increment, and the other transaction aborted");
}

#[test]
fn lost_update_is_impossible_under_read_committed() {
    let mut p = fresh();
    load(&mut p, 1, vec![("a", put(10))]);
    for tx in [2, 3] {
        assert_eq!(execute(&mut p, tx, RC, vec![("a", OpKind::Get)]), vec![executed_ok(tx, &[(0, Some(10))])]);
    }
    assert_eq!(execute(&mut p, 2, RC, vec![("a", put(11))]), vec![executed_ok(2, &[])]);
    // t3's write waits for t2's exclusive lock ...
    assert_eq!(execute(&mut p, 3, RC, vec![("a", put(11))]), vec![wait_for(3, "a", &[2])]);
    assert!(matches!(vote(&mut p, 2), Vote::Yes { .. }));
    // ... and once t2 committed, the value t3 read is no longer the committed one: Conflict.
    let conflict = AbortReason::Conflict { participant: ME, key: key("a") };
    let out = commit(&mut p, 2);
    assert_eq!(out, vec![wait_for(3, "a", &[]), ToCoordinator::Executed { txid: t(3), result: Err(conflict) }]);
    assert_eq!((value(&p, "a"), p.open_transactions(), p.locked_keys()), (Some(11), 0, 0));
    // Increments evaluated at the participant never lose an update: the second waits, then adds.
    for tx in [4, 5] {
        execute(&mut p, tx, RC, vec![("a", OpKind::Add { delta: 1, floor: 0 })]);
    }
    assert!(matches!(vote(&mut p, 4), Vote::Yes { .. }));
    assert_eq!(commit(&mut p, 4), vec![wait_for(5, "a", &[]), executed_ok(5, &[])]);
    assert!(matches!(vote(&mut p, 5), Vote::Yes { .. }));
    commit(&mut p, 5);
    assert_eq!(value(&p, "a"), Some(13));
}

#[test]
fn one_shot_prepares_never_wait_for_an_interactive_holder_and_interactive_ones_wait_for_a_prepared_one_shot() {
    let mut p = fresh();
    execute(&mut p, 2, SER, vec![("a", put(1))]);
    let out = deliver(
        &mut p,
        Time::ZERO,
        ToParticipant::Prepare { txid: t(3), ops: local_ops(vec![("a", put(2))]), sole: true },
    );
    let conflict = AbortReason::Conflict { participant: ME, key: key("a") };
    assert_eq!(out, vec![ToCoordinator::Vote { txid: t(3), vote: Vote::No { reason: conflict } }]);
    // A one-shot prepared on b: an interactive write to b waits for its decision.
    let out = deliver(
        &mut p,
        Time::ZERO,
        ToParticipant::Prepare { txid: t(4), ops: local_ops(vec![("b", put(4))]), sole: true },
    );
    assert!(matches!(out[..], [ToCoordinator::Vote { vote: Vote::Yes { .. }, .. }]));
    assert_eq!(execute(&mut p, 2, SER, vec![("b", OpKind::Add { delta: 1, floor: 0 })]), vec![wait_for(2, "b", &[4])]);
    assert_eq!(commit(&mut p, 4), vec![wait_for(2, "b", &[]), executed_ok(2, &[])]);
    assert!(matches!(vote(&mut p, 2), Vote::Yes { .. }));
    commit(&mut p, 2);
    assert_eq!((value(&p, "a"), value(&p, "b")), (Some(1), Some(5)));
}

#[test]
fn a_lost_coordinator_or_a_new_epoch_rolls_open_transactions_back() {
    let mut p = fresh();
    execute(&mut p, 1, SER, vec![("a", put(1))]);
    execute(&mut p, 2, SER, vec![("a", put(2))]);
    let mut fx = PartEffects::default();
    p.on_coordinator_lost(Time::ZERO, &mut fx);
    assert_eq!((p.open_transactions(), p.locked_keys(), p.stats().rolled_back), (0, 0, 2));
    let out = deliver(
        &mut p,
        Time::ZERO,
        ToParticipant::Prepare { txid: t(3), ops: local_ops(vec![("a", put(3))]), sole: true },
    );
    assert!(matches!(out[..], [ToCoordinator::Vote { vote: Vote::Yes { .. }, .. }]), "the key is free: {out:?}");
    commit(&mut p, 3);
    // An open transaction of epoch 1 is released when epoch 2 arrives.
    execute(&mut p, 4, SER, vec![("b", put(4))]);
    let mut fx = PartEffects::default();
    let next =
        ToParticipant::Execute { txid: TxId::new(Epoch(2), 1), isolation: SER, ops: local_ops(vec![("b", put(5))]) };
    p.on_message(Time::ZERO, Epoch(2), next, &mut fx).unwrap();
    let reply = ToCoordinator::Executed { txid: TxId::new(Epoch(2), 1), result: Ok(vec![]) };
    assert_eq!(fx.outputs.into_iter().map(|g| g.item).collect::<Vec<_>>(), vec![reply]);
    assert_eq!(p.open_transactions(), 1);
}

#[test]
fn open_transactions_are_bounded() {
    let mut config = ParticipantConfig::new(ME);
    config.max_active = 1;
    let mut fx = PartEffects::default();
    let mut p = Participant::recover(config, None, Vec::new(), Time::ZERO, &mut fx);
    execute(&mut p, 1, SER, vec![("a", put(1))]);
    let busy = ToCoordinator::Executed { txid: t(2), result: Err(AbortReason::ParticipantBusy { participant: ME }) };
    assert_eq!(execute(&mut p, 2, SER, vec![("b", put(1))]), vec![busy]);
    assert_eq!(p.open_transactions(), 1);
}

#[test]
fn a_failing_execute_rolls_back_and_wakes_its_waiters() {
    let mut p = fresh();
    execute(&mut p, 1, SER, vec![("a", put(1))]);
    assert_eq!(execute(&mut p, 2, SER, vec![("a", OpKind::Get)]), vec![wait_for(2, "a", &[1])]);
    let out = execute(&mut p, 1, SER, vec![("b", OpKind::Add { delta: -1, floor: 0 })]);
    assert!(matches!(&out[0], ToCoordinator::Executed { result: Err(AbortReason::Constraint { .. }), .. }), "{out:?}");
    assert_eq!(out[1..], [wait_for(2, "a", &[]), executed_ok(2, &[(0, None)])]);
}
