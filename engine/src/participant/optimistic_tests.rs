//! Optimistic transactions at one participant: reads take no lock and record versions,
//! prepare validates them without waiting; the anomalies it forbids; versions in snapshots.

use super::interactive_tests::{
    EPOCH, ME, SER, abort, commit, deliver, execute, executed_ok, fresh, key, load, put, t, value,
};
use super::*;
use crate::ops::OpKind;

const OPT: Isolation = Isolation::Optimistic;

fn add(delta: i64) -> OpKind {
    OpKind::Add { delta, floor: 0 }
}

/// Prepares the open transaction `counter`; `sole`: its only participant.
fn vote(p: &mut Participant, counter: u64, sole: bool) -> Vote {
    match &deliver(p, Time::ZERO, ToParticipant::PrepareExecuted { txid: t(counter), sole })[..] {
        [ToCoordinator::Vote { vote, .. }] => vote.clone(),
        other => panic!("expected one vote, got {other:?}"),
    }
}

fn conflict_on(k: &'static str) -> Vote {
    Vote::No { reason: AbortReason::Conflict { participant: ME, key: key(k) } }
}

fn yes() -> Vote {
    Vote::Yes { reads: vec![] }
}

fn no_wait_reports(out: &[ToCoordinator]) {
    assert!(!out.iter().any(|m| matches!(m, ToCoordinator::WaitFor { .. })), "optimistic never waits: {out:?}");
}

#[test]
fn reads_take_no_lock_writes_are_buffered_and_a_read_sees_its_own_write() {
    let mut p = fresh();
    load(&mut p, 1, vec![("a", put(10))]);
    let out = execute(&mut p, 2, OPT, vec![("a", OpKind::Get), ("b", put(7)), ("b", OpKind::Get), ("a", add(1))]);
    assert_eq!(out, vec![executed_ok(2, &[(0, Some(10)), (2, Some(7))])]);
    assert_eq!(execute(&mut p, 2, OPT, vec![("a", OpKind::Get)]), vec![executed_ok(2, &[(0, Some(11))])]);
    assert_eq!(p.locked_keys(), 0, "an open optimistic transaction holds no lock");
    assert_eq!((value(&p, "a"), value(&p, "b")), (Some(10), None), "writes wait for the commit");
    assert_eq!(vote(&mut p, 2, true), yes());
    assert_eq!(p.locked_keys(), 2, "prepared: its write locks are held until the decision");
    commit(&mut p, 2);
    assert_eq!((value(&p, "a"), value(&p, "b"), p.locked_keys()), (Some(11), Some(7), 0));
}

#[test]
fn lost_update_is_impossible_the_second_read_modify_write_conflicts_before_or_after_the_first_commits() {
    for first_commits_before_second_prepares in [false, true] {
        let mut p = fresh();
        load(&mut p, 1, vec![("a", put(10))]);
        for counter in [2, 3] {
            assert_eq!(
                execute(&mut p, counter, OPT, vec![("a", OpKind::Get)]),
                vec![executed_ok(counter, &[(0, Some(10))])]
            );
            assert_eq!(execute(&mut p, counter, OPT, vec![("a", put(11))]), vec![executed_ok(counter, &[])]);
        }
        assert_eq!(vote(&mut p, 2, true), yes());
        if first_commits_before_second_prepares {
            commit(&mut p, 2);
        }
        assert_eq!(vote(&mut p, 3, true), conflict_on("a"), "its read of a is stale or locked for writing");
        assert_eq!((p.open_transactions(), p.locked_keys() > 0), (0, !first_commits_before_second_prepares));
        commit(&mut p, 2);
        assert_eq!(value(&p, "a"), Some(11), "exactly one increment applied");
        assert_eq!(p.locked_keys(), 0, "the loser holds nothing");
    }
}

#[test]
fn an_add_reads_too_so_racing_optimistic_adds_cannot_both_commit() {
    let mut p = fresh();
    load(&mut p, 1, vec![("a", put(10))]);
    assert_eq!(execute(&mut p, 2, OPT, vec![("a", add(1))]), vec![executed_ok(2, &[])]);
    assert_eq!(execute(&mut p, 3, OPT, vec![("a", add(1))]), vec![executed_ok(3, &[])]);
    assert_eq!(vote(&mut p, 2, true), yes());
    commit(&mut p, 2);
    assert_eq!(vote(&mut p, 3, true), conflict_on("a"));
    assert_eq!(value(&p, "a"), Some(11));
}

#[test]
fn a_blind_write_depends_on_nothing_read_and_validates_against_a_newer_commit() {
    let mut p = fresh();
    load(&mut p, 1, vec![("a", put(10))]);
    assert_eq!(execute(&mut p, 2, OPT, vec![("a", put(5)), ("a", OpKind::Get)]), vec![executed_ok(2, &[(1, Some(5))])]);
    load(&mut p, 3, vec![("a", put(20))]);
    assert_eq!(vote(&mut p, 2, true), yes(), "it read only its own write");
    commit(&mut p, 2);
    assert_eq!(value(&p, "a"), Some(5));
}

#[test]
fn a_read_only_transaction_whose_read_was_overwritten_aborts_at_validation() {
    let mut p = fresh();
    load(&mut p, 1, vec![("a", put(10)), ("b", put(1))]);
    assert_eq!(execute(&mut p, 2, OPT, vec![("a", OpKind::Get), ("b", OpKind::Get)]).len(), 1);
    load(&mut p, 3, vec![("a", put(10))]);
    assert_eq!(vote(&mut p, 2, true), conflict_on("a"), "the same value, rewritten: a newer version");
    // Unchanged reads validate, and a sole read-only transaction keeps nothing.
    assert_eq!(execute(&mut p, 4, OPT, vec![("a", OpKind::Get)]).len(), 1);
    assert_eq!(vote(&mut p, 4, true), Vote::ReadOnly { reads: vec![] });
    assert_eq!((p.locked_keys(), p.prepared(), p.open_transactions()), (0, 0, 0));
}

#[test]
fn a_read_only_transaction_conflicts_with_a_prepared_writer_of_what_it_read() {
    let mut p = fresh();
    load(&mut p, 1, vec![("a", put(10))]);
    assert_eq!(execute(&mut p, 2, OPT, vec![("a", OpKind::Get)]).len(), 1);
    let prepare = ToParticipant::Prepare {
        txid: t(3),
        ops: super::interactive_tests::local_ops(vec![("a", put(1))]),
        sole: true,
    };
    deliver(&mut p, Time::ZERO, prepare);
    assert_eq!(vote(&mut p, 2, true), conflict_on("a"), "its decision may already be Commit");
    commit(&mut p, 3);
    assert_eq!(value(&p, "a"), Some(1));
}

#[test]
fn a_key_read_again_after_a_commit_changed_it_fails_the_execute_at_once() {
    let mut p = fresh();
    load(&mut p, 1, vec![("a", put(10))]);
    assert_eq!(execute(&mut p, 2, OPT, vec![("a", OpKind::Get)]), vec![executed_ok(2, &[(0, Some(10))])]);
    load(&mut p, 3, vec![("a", put(20))]);
    let out = execute(&mut p, 2, OPT, vec![("a", OpKind::Get)]);
    let conflict = AbortReason::Conflict { participant: ME, key: key("a") };
    assert_eq!(out, vec![ToCoordinator::Executed { txid: t(2), result: Err(conflict) }]);
    assert_eq!(p.open_transactions(), 0, "rolled back here");
    assert_eq!(vote(&mut p, 2, true), Vote::No { reason: AbortReason::NotActive });
}

#[test]
fn write_skew_is_impossible_the_second_writer_finds_the_first_holding_its_reads() {
    let mut p = fresh();
    load(&mut p, 1, vec![("x", put(50)), ("y", put(50))]);
    for counter in [2, 3] {
        let out = execute(&mut p, counter, OPT, vec![("x", OpKind::Get), ("y", OpKind::Get)]);
        assert_eq!(out, vec![executed_ok(counter, &[(0, Some(50)), (1, Some(50))])]);
    }
    assert_eq!(execute(&mut p, 2, OPT, vec![("x", put(-10))]).len(), 1);
    assert_eq!(execute(&mut p, 3, OPT, vec![("y", put(-10))]).len(), 1);
    assert_eq!(vote(&mut p, 2, true), yes());
    // t2 holds x exclusively and y shared until its decision: t3's write of y conflicts.
    assert_eq!(vote(&mut p, 3, true), conflict_on("y"));
    commit(&mut p, 2);
    assert_eq!((value(&p, "x"), value(&p, "y")), (Some(-10), Some(50)), "x + y = 40 ≥ 0 holds");
}

#[test]
fn a_read_only_part_of_a_wider_transaction_holds_its_reads_shared_until_the_decision() {
    let mut p = fresh();
    load(&mut p, 1, vec![("x", put(50))]);
    assert_eq!(execute(&mut p, 2, OPT, vec![("x", OpKind::Get)]).len(), 1);
    assert_eq!(execute(&mut p, 3, OPT, vec![("x", OpKind::Get), ("x", put(0))]).len(), 1);
    let mut fx = PartEffects::default();
    p.on_message(Time::ZERO, EPOCH, ToParticipant::PrepareExecuted { txid: t(2), sole: false }, &mut fx).unwrap();
    let record = PartRecord::Prepared { txid: t(2), writes: vec![].into(), read_keys: vec![key("x")] };
    assert_eq!(
        fx.appends.iter().map(|(_, r)| r.clone()).collect::<Vec<_>>(),
        vec![record],
        "logged, relocked on restart"
    );
    assert_eq!(vote(&mut p, 3, true), conflict_on("x"), "x is held shared by the prepared reader");
    abort(&mut p, 2);
    assert_eq!((p.locked_keys(), value(&p, "x")), (0, Some(50)));
}

#[test]
fn optimistic_never_waits_not_even_behind_an_open_serializable_writer() {
    let mut p = fresh();
    load(&mut p, 1, vec![("a", put(10))]);
    assert_eq!(execute(&mut p, 2, SER, vec![("a", put(99))]), vec![executed_ok(2, &[])]);
    let out = execute(&mut p, 3, OPT, vec![("a", OpKind::Get), ("a", add(1))]);
    assert_eq!(out, vec![executed_ok(3, &[(0, Some(10))])], "the committed value, at once");
    let out = deliver(&mut p, Time::ZERO, ToParticipant::PrepareExecuted { txid: t(3), sole: true });
    no_wait_reports(&out);
    assert_eq!(out, vec![ToCoordinator::Vote { txid: t(3), vote: conflict_on("a") }]);
    assert_eq!(p.stats().lock_waits, 0);
    assert_eq!(vote(&mut p, 2, true), yes(), "the serializable writer is untouched");
}

#[test]
fn a_prepare_does_not_overtake_a_queued_lock_request() {
    let mut p = fresh();
    load(&mut p, 1, vec![("a", put(10))]);
    assert_eq!(execute(&mut p, 2, SER, vec![("a", OpKind::Get)]).len(), 1);
    let out = execute(&mut p, 3, SER, vec![("a", put(1))]);
    assert!(matches!(out[..], [ToCoordinator::WaitFor { .. }]), "t3 queues behind t2's shared lock: {out:?}");
    assert_eq!(execute(&mut p, 4, OPT, vec![("a", OpKind::Get)]).len(), 1);
    let out = deliver(&mut p, Time::ZERO, ToParticipant::PrepareExecuted { txid: t(4), sole: false });
    assert_eq!(out, vec![ToCoordinator::Vote { txid: t(4), vote: conflict_on("a") }], "a shared lock would starve t3");
    assert_eq!(p.locked_keys(), 1, "only t2's lock");
}

#[test]
fn versions_survive_a_snapshot_and_restore_and_keep_validating_after_it() {
    let mut p = fresh();
    load(&mut p, 1, vec![("a", put(1)), ("b", put(2))]);
    load(&mut p, 2, vec![("a", put(3)), ("c", put(4))]);
    load(&mut p, 3, vec![("c", OpKind::Delete)]);
    let snapshot = p.snapshot();
    let decoded = ParticipantSnapshot::decode(bytes::Bytes::from(snapshot.encode())).unwrap();
    let mut fx = PartEffects::default();
    let mut restored = Participant::recover(ParticipantConfig::new(ME), Some(decoded), Vec::new(), Time::ZERO, &mut fx);
    let entries = |p: &Participant| {
        let mut all: Vec<(Vec<u8>, Vec<u8>, u64)> =
            p.kv().entries().map(|(k, v, n)| (k.to_vec(), v.to_vec(), n)).collect();
        all.sort();
        (all, p.kv().commits())
    };
    assert_eq!(entries(&restored), entries(&p));
    assert_eq!((restored.kv().version(b"a"), restored.kv().version(b"b"), restored.kv().commits()), (2, 1, 3));
    // The next commit stamps the next version in both, and reads validate as they would have.
    for q in [&mut p, &mut restored] {
        assert_eq!(execute(q, 4, OPT, vec![("a", OpKind::Get), ("b", OpKind::Get)]).len(), 1);
        load(q, 5, vec![("b", put(9))]);
        assert_eq!(vote(q, 4, true), conflict_on("b"));
    }
    assert_eq!(entries(&restored), entries(&p));
}
