//! The coordinator's interactive transactions, driven with fake participant messages.

use bytes::Bytes;

use super::*;
use crate::message::Interactive;
use crate::ops::{Isolation, OpKind};

const P1: ParticipantId = ParticipantId(1);
const P2: ParticipantId = ParticipantId(2);
const C: ClientId = ClientId(42);
const IDENTITY: &str = "tester";
const ORIGIN: ClientOrigin<'static> = ClientOrigin { conn: 7, identity: IDENTITY };

fn fresh() -> (Coordinator, CoordEffects) {
    let mut config = CoordinatorConfig::new(vec![P1, P2]);
    config.interactive.open_max = 3;
    let mut fx = CoordEffects::default();
    let mut coordinator = Coordinator::recover(config, Vec::new(), Time::ZERO, &mut fx);
    coordinator.adopt_session(C, IDENTITY);
    fx.clear();
    (coordinator, fx)
}

fn key(text: &'static str) -> Bytes {
    Bytes::from_static(text.as_bytes())
}

fn get(participant: ParticipantId, k: &'static str) -> Op {
    Op { participant, key: key(k), kind: OpKind::Get }
}

fn put(participant: ParticipantId, k: &'static str) -> Op {
    Op { participant, key: key(k), kind: OpKind::Put(key("v")) }
}

fn ms(n: u64) -> Time {
    Time::from_nanos(n * 1_000_000)
}

fn replies(fx: &CoordEffects) -> Vec<Reply> {
    fx.outputs
        .iter()
        .filter_map(|g| match &g.item {
            CoordOutput::ToClient(reply) => Some(reply.clone()),
            _ => None,
        })
        .collect()
}

fn sent(fx: &CoordEffects) -> Vec<(ParticipantId, ToParticipant)> {
    fx.outputs
        .iter()
        .filter_map(|g| match &g.item {
            CoordOutput::ToParticipant(to, message) => Some((*to, message.clone())),
            _ => None,
        })
        .collect()
}

fn begin(coordinator: &mut Coordinator, now: Time, seq: Seq, idle_timeout_ms: u32) -> TxId {
    let mut fx = CoordEffects::default();
    let request = Interactive::Begin { client: C, seq, isolation: Isolation::Serializable, idle_timeout_ms };
    coordinator.on_interactive(now, ORIGIN, request, &mut fx);
    match replies(&fx).as_slice() {
        [Reply::Began { client, seq: answered, txid }] if *client == C && *answered == seq => *txid,
        other => panic!("expected Began, got {other:?}"),
    }
}

fn execute(coordinator: &mut Coordinator, now: Time, seq: Seq, txid: TxId, ops: Vec<Op>, fx: &mut CoordEffects) {
    coordinator.on_interactive(now, ORIGIN, Interactive::Execute { client: C, seq, txid, ops }, fx);
}

fn executed(coordinator: &mut Coordinator, from: ParticipantId, txid: TxId, reads: Vec<Read>, fx: &mut CoordEffects) {
    coordinator.on_message(Time::ZERO, from, ToCoordinator::Executed { txid, result: Ok(reads) }, fx);
}

fn aborted(reason: AbortReason, seq: Seq) -> Reply {
    Reply::Outcome { client: C, seq, outcome: Outcome::Aborted { reason } }
}

/// Runs `ops` in `txid` with every participant answering at once without reads.
fn execute_done(coordinator: &mut Coordinator, seq: Seq, txid: TxId, ops: Vec<Op>) {
    let mut fx = CoordEffects::default();
    let participants: Vec<ParticipantId> = ops.iter().map(|op| op.participant).collect();
    execute(coordinator, Time::ZERO, seq, txid, ops, &mut fx);
    for participant in participants {
        executed(coordinator, participant, txid, vec![], &mut fx);
    }
    assert_eq!(replies(&fx), vec![Reply::Executed { client: C, seq, reads: vec![] }]);
}

#[test]
fn begin_execute_commit_runs_the_one_shot_commit_path() {
    let (mut coordinator, _) = fresh();
    let mut fx = CoordEffects::default();
    let request = Interactive::Begin { client: C, seq: 1, isolation: Isolation::ReadCommitted, idle_timeout_ms: 0 };
    coordinator.on_interactive(Time::ZERO, ORIGIN, request, &mut fx);
    let [Reply::Began { txid, .. }] = replies(&fx)[..] else { panic!("{fx:?}") };
    assert_eq!(fx.outputs[0].after, Lsn(1), "a txid is usable once its epoch record is durable");
    assert!(fx.appends.is_empty(), "Begin logs nothing");

    fx.clear();
    execute(&mut coordinator, Time::ZERO, 2, txid, vec![get(P1, "a"), put(P2, "b"), get(P2, "c")], &mut fx);
    let expected = vec![
        (
            P1,
            ToParticipant::Execute {
                txid,
                isolation: Isolation::ReadCommitted,
                ops: vec![LocalOp { index: 0, key: key("a"), kind: OpKind::Get }],
            },
        ),
        (
            P2,
            ToParticipant::Execute {
                txid,
                isolation: Isolation::ReadCommitted,
                ops: vec![
                    LocalOp { index: 1, key: key("b"), kind: OpKind::Put(key("v")) },
                    LocalOp { index: 2, key: key("c"), kind: OpKind::Get },
                ],
            },
        ),
    ];
    assert_eq!(sent(&fx), expected);
    fx.clear();
    executed(&mut coordinator, P2, txid, vec![Read { index: 2, value: None }], &mut fx);
    assert!(replies(&fx).is_empty(), "P1 has not answered");
    executed(&mut coordinator, P1, txid, vec![Read { index: 0, value: Some(key("1")) }], &mut fx);
    let reads = vec![Read { index: 0, value: Some(key("1")) }, Read { index: 2, value: None }];
    assert_eq!(replies(&fx), vec![Reply::Executed { client: C, seq: 2, reads }]);

    fx.clear();
    coordinator.on_interactive(Time::ZERO, ORIGIN, Interactive::Commit { client: C, seq: 3, txid }, &mut fx);
    assert_eq!(
        sent(&fx),
        vec![
            (P1, ToParticipant::PrepareExecuted { txid, sole: false }),
            (P2, ToParticipant::PrepareExecuted { txid, sole: false }),
        ]
    );
    let staged = fx.appends.iter().find_map(|(lsn, record)| match record {
        CoordRecord::Staged { participants, gets, .. } => Some((*lsn, participants.clone(), gets.len())),
        _ => None,
    });
    let (staged_lsn, participants, gets) = staged.expect("the commit is staged");
    // P1 only read, but it holds its read locks prepared (not sole): its vote is part of the
    // commit, so it is staged too. The reads went back with the executes already.
    assert_eq!((participants, gets), (vec![P1, P2], 0));
    fx.clear();
    coordinator.on_message(Time::ZERO, P1, ToCoordinator::Vote { txid, vote: Vote::Yes { reads: vec![] } }, &mut fx);
    coordinator.on_message(Time::ZERO, P2, ToCoordinator::Vote { txid, vote: Vote::Yes { reads: vec![] } }, &mut fx);
    let committed = Reply::Outcome { client: C, seq: 3, outcome: Outcome::Committed { reads: vec![] } };
    assert_eq!(replies(&fx), vec![committed]);
    let gate = fx.outputs.iter().find(|g| matches!(g.item, CoordOutput::ToClient(_))).unwrap().after;
    assert_eq!(gate, staged_lsn, "committed once staged, as a one-shot");
    assert_eq!(sent(&fx), vec![(P1, ToParticipant::Commit { txid }), (P2, ToParticipant::Commit { txid })]);
    assert_eq!(coordinator.open_transactions(), 0);
    let stats = coordinator.stats().interactive;
    assert_eq!((stats.begun, stats.committed, stats.aborted), (1, 1, 0));
}

#[test]
fn a_failed_execute_aborts_everywhere_it_ran_and_later_requests_hear_why() {
    let (mut coordinator, _) = fresh();
    let txid = begin(&mut coordinator, Time::ZERO, 1, 0);
    execute_done(&mut coordinator, 2, txid, vec![put(P1, "a")]);
    let mut fx = CoordEffects::default();
    execute(&mut coordinator, Time::ZERO, 3, txid, vec![put(P2, "b")], &mut fx);
    fx.clear();
    let reason = AbortReason::LockTimeout { participant: P2, key: key("b") };
    coordinator.on_message(Time::ZERO, P2, ToCoordinator::Executed { txid, result: Err(reason.clone()) }, &mut fx);
    assert_eq!(replies(&fx), vec![aborted(reason.clone(), 3)]);
    assert_eq!(sent(&fx), vec![(P1, ToParticipant::Abort { txid }), (P2, ToParticipant::Abort { txid })]);
    fx.clear();
    coordinator.on_interactive(Time::ZERO, ORIGIN, Interactive::Commit { client: C, seq: 4, txid }, &mut fx);
    assert_eq!(replies(&fx), vec![aborted(reason, 4)], "the reason it ended is remembered");
    fx.clear();
    let never = TxId(txid.0 + 100);
    coordinator.on_interactive(Time::ZERO, ORIGIN, Interactive::Rollback { client: C, seq: 5, txid: never }, &mut fx);
    assert_eq!(replies(&fx), vec![aborted(AbortReason::NotActive, 5)]);
    assert!(sent(&fx).is_empty());
    let stats = coordinator.stats().interactive;
    assert_eq!((stats.aborted, stats.aborted_lock_timeout), (1, 1));
}

#[test]
fn bad_executes_end_the_transaction_with_a_reason() {
    let (mut coordinator, _) = fresh();
    let txid = begin(&mut coordinator, Time::ZERO, 1, 0);
    execute_done(&mut coordinator, 2, txid, vec![put(P1, "a")]);
    let mut fx = CoordEffects::default();
    execute(&mut coordinator, Time::ZERO, 3, txid, vec![put(ParticipantId(9), "x")], &mut fx);
    let reason = AbortReason::UnknownParticipant { participant: ParticipantId(9) };
    assert_eq!(replies(&fx), vec![aborted(reason, 3)]);
    assert_eq!(sent(&fx), vec![(P1, ToParticipant::Abort { txid })]);

    // A second Execute while one runs is a client bug: both requests hear it ended.
    let txid = begin(&mut coordinator, Time::ZERO, 4, 0);
    fx.clear();
    execute(&mut coordinator, Time::ZERO, 5, txid, vec![put(P1, "a")], &mut fx);
    execute(&mut coordinator, Time::ZERO, 6, txid, vec![put(P1, "b")], &mut fx);
    let answered: Vec<Seq> = replies(&fx).iter().filter_map(|r| r.request()).map(|(_, seq)| seq).collect();
    assert_eq!(answered, vec![5, 6]);
    assert!(replies(&fx).iter().all(|r| matches!(
        r,
        Reply::Outcome { outcome: Outcome::Aborted { reason: AbortReason::Invalid { .. } }, .. }
    )));
    // A Get whose read does not come back, or a read for no Get, is the participant's bug.
    let txid = begin(&mut coordinator, Time::ZERO, 7, 0);
    fx.clear();
    execute(&mut coordinator, Time::ZERO, 8, txid, vec![put(P1, "a")], &mut fx);
    executed(&mut coordinator, P1, txid, vec![Read { index: 0, value: None }], &mut fx);
    assert!(matches!(
        replies(&fx)[..],
        [Reply::Outcome { seq: 8, outcome: Outcome::Aborted { reason: AbortReason::BadVote { .. } }, .. }]
    ));
}

#[test]
fn opposite_waits_across_two_participants_abort_the_younger_and_the_older_goes_on() {
    let (mut coordinator, _) = fresh();
    let older = begin(&mut coordinator, Time::ZERO, 1, 0);
    let younger = begin(&mut coordinator, Time::ZERO, 2, 0);
    assert!(younger > older);
    execute_done(&mut coordinator, 3, older, vec![put(P1, "a")]);
    execute_done(&mut coordinator, 4, younger, vec![put(P2, "b")]);
    let mut fx = CoordEffects::default();
    execute(&mut coordinator, Time::ZERO, 5, older, vec![put(P2, "b")], &mut fx);
    execute(&mut coordinator, Time::ZERO, 6, younger, vec![put(P1, "a")], &mut fx);
    fx.clear();
    let wait = |waiter, k, holder| ToCoordinator::WaitFor { waiter, key: key(k), holders: vec![holder] };
    coordinator.on_message(ms(1), P2, wait(older, "b", younger), &mut fx);
    assert!(fx.outputs.is_empty(), "one wait is no deadlock");
    coordinator.on_message(ms(2), P1, wait(younger, "a", older), &mut fx);
    let deadlock = AbortReason::Deadlock { cycle: vec![younger, older] };
    assert_eq!(replies(&fx), vec![aborted(deadlock.clone(), 6)]);
    assert_eq!(
        sent(&fx),
        vec![(P2, ToParticipant::Abort { txid: younger }), (P1, ToParticipant::Abort { txid: younger })]
    );
    let stats = coordinator.stats().interactive;
    assert_eq!((stats.deadlocks_detected, stats.aborted_deadlock, stats.lock_waits_reported), (1, 1, 2));

    // The older one gets its lock once the victim's abort releases it, and commits.
    fx.clear();
    executed(&mut coordinator, P2, older, vec![], &mut fx);
    assert_eq!(replies(&fx), vec![Reply::Executed { client: C, seq: 5, reads: vec![] }]);
    coordinator.on_interactive(Time::ZERO, ORIGIN, Interactive::Commit { client: C, seq: 7, txid: older }, &mut fx);
    assert_eq!(coordinator.open_transactions(), 0);
    // The victim's late answer is told to let go; a request on it hears Deadlock.
    fx.clear();
    executed(&mut coordinator, P1, younger, vec![], &mut fx);
    assert_eq!(sent(&fx), vec![(P1, ToParticipant::Abort { txid: younger })]);
    coordinator.on_interactive(Time::ZERO, ORIGIN, Interactive::Commit { client: C, seq: 8, txid: younger }, &mut fx);
    assert_eq!(replies(&fx), vec![aborted(deadlock, 8)]);
}

#[test]
fn a_wait_reported_after_its_execute_was_answered_never_makes_a_deadlock() {
    let (mut coordinator, _) = fresh();
    let first = begin(&mut coordinator, Time::ZERO, 1, 0);
    let second = begin(&mut coordinator, Time::ZERO, 2, 0);
    let mut fx = CoordEffects::default();
    execute(&mut coordinator, Time::ZERO, 3, first, vec![put(P1, "a")], &mut fx);
    coordinator.on_message(
        Time::ZERO,
        P1,
        ToCoordinator::WaitFor { waiter: first, key: key("a"), holders: vec![second] },
        &mut fx,
    );
    executed(&mut coordinator, P1, first, vec![], &mut fx); // Granted: no longer waits.
    // A late copy of the wait, then the second waits for the first: no cycle.
    coordinator.on_message(
        Time::ZERO,
        P1,
        ToCoordinator::WaitFor { waiter: first, key: key("a"), holders: vec![second] },
        &mut fx,
    );
    execute(&mut coordinator, Time::ZERO, 4, second, vec![put(P2, "b")], &mut fx);
    coordinator.on_message(
        Time::ZERO,
        P2,
        ToCoordinator::WaitFor { waiter: second, key: key("b"), holders: vec![first] },
        &mut fx,
    );
    assert_eq!(coordinator.stats().interactive.deadlocks_detected, 0);
    assert_eq!(coordinator.open_transactions(), 2);
    assert!(!replies(&fx).iter().any(|r| matches!(r, Reply::Outcome { .. })));
}

#[test]
fn an_idle_transaction_is_rolled_back_after_its_timeout_and_a_running_one_is_not_idle() {
    let (mut coordinator, _) = fresh();
    let txid = begin(&mut coordinator, Time::ZERO, 1, 100);
    let mut fx = CoordEffects::default();
    execute(&mut coordinator, ms(60), 2, txid, vec![put(P1, "a")], &mut fx);
    coordinator.on_tick(ms(100), &mut fx);
    coordinator.on_tick(ms(200), &mut fx);
    assert_eq!(coordinator.open_transactions(), 1, "its Execute is still running");
    coordinator.on_message(ms(220), P1, ToCoordinator::Executed { txid, result: Ok(vec![]) }, &mut fx);
    fx.clear();
    // The answer at 220 ms is its last activity: rolled back once idle 100 ms after it.
    while let Some(deadline) = coordinator.next_deadline().filter(|&d| d <= ms(600)) {
        coordinator.on_tick(deadline, &mut fx);
        if coordinator.open_transactions() == 0 {
            assert!(deadline >= ms(320), "rolled back at {deadline:?}, before it was idle 100 ms");
            break;
        }
    }
    assert_eq!(coordinator.open_transactions(), 0);
    assert_eq!(sent(&fx), vec![(P1, ToParticipant::Abort { txid })]);
    assert!(replies(&fx).is_empty(), "no request was waiting");
    fx.clear();
    execute(&mut coordinator, ms(500), 3, txid, vec![get(P1, "a")], &mut fx);
    assert_eq!(replies(&fx), vec![aborted(AbortReason::IdleTimeout, 3)]);
    assert_eq!(coordinator.stats().interactive.aborted_idle_timeout, 1);
}

#[test]
fn a_retry_of_every_request_gets_the_same_reply_without_running_again() {
    let (mut coordinator, _) = fresh();
    let txid = begin(&mut coordinator, Time::ZERO, 1, 0);
    assert_eq!(begin(&mut coordinator, Time::ZERO, 1, 0), txid, "Begin retried");
    assert_eq!(coordinator.open_transactions(), 1);

    let mut fx = CoordEffects::default();
    execute(&mut coordinator, Time::ZERO, 2, txid, vec![get(P1, "a")], &mut fx);
    fx.clear();
    execute(&mut coordinator, Time::ZERO, 2, txid, vec![get(P1, "a")], &mut fx);
    assert!(fx.outputs.is_empty(), "a retry of a running Execute waits for its answer");
    executed(&mut coordinator, P1, txid, vec![Read { index: 0, value: Some(key("x")) }], &mut fx);
    execute(&mut coordinator, Time::ZERO, 2, txid, vec![get(P1, "a")], &mut fx);
    let answer = Reply::Executed { client: C, seq: 2, reads: vec![Read { index: 0, value: Some(key("x")) }] };
    assert_eq!(replies(&fx), vec![answer.clone(), answer]);
    assert!(sent(&fx).is_empty(), "never sent again");

    fx.clear();
    coordinator.on_interactive(Time::ZERO, ORIGIN, Interactive::Commit { client: C, seq: 3, txid }, &mut fx);
    coordinator.on_message(
        Time::ZERO,
        P1,
        ToCoordinator::Vote { txid, vote: Vote::ReadOnly { reads: vec![] } },
        &mut fx,
    );
    coordinator.on_interactive(Time::ZERO, ORIGIN, Interactive::Commit { client: C, seq: 3, txid }, &mut fx);
    let committed = Reply::Outcome { client: C, seq: 3, outcome: Outcome::Committed { reads: vec![] } };
    assert_eq!(replies(&fx), vec![committed.clone(), committed]);
    assert_eq!(sent(&fx).len(), 1, "one PrepareExecuted");

    let other = begin(&mut coordinator, Time::ZERO, 4, 0);
    fx.clear();
    for _ in 0..2 {
        coordinator.on_interactive(
            Time::ZERO,
            ORIGIN,
            Interactive::Rollback { client: C, seq: 5, txid: other },
            &mut fx,
        );
    }
    assert_eq!(replies(&fx), vec![aborted(AbortReason::RolledBack, 5), aborted(AbortReason::RolledBack, 5)]);
    assert_eq!(coordinator.stats().interactive.rolled_back, 1);
}

#[test]
fn open_transactions_are_bounded_and_a_lost_participant_ends_those_that_touched_it() {
    let (mut coordinator, _) = fresh();
    let touches_p1 = begin(&mut coordinator, Time::ZERO, 1, 0);
    let touches_p2 = begin(&mut coordinator, Time::ZERO, 2, 0);
    let _idle = begin(&mut coordinator, Time::ZERO, 3, 0);
    let mut fx = CoordEffects::default();
    let request = Interactive::Begin { client: C, seq: 4, isolation: Isolation::Serializable, idle_timeout_ms: 0 };
    coordinator.on_interactive(Time::ZERO, ORIGIN, request, &mut fx);
    assert_eq!(replies(&fx), vec![Reply::Rejected { client: C, seq: 4, reason: RejectReason::Busy }]);

    execute_done(&mut coordinator, 5, touches_p1, vec![put(P1, "a")]);
    fx.clear();
    execute(&mut coordinator, Time::ZERO, 6, touches_p2, vec![put(P2, "b")], &mut fx);
    fx.clear();
    coordinator.participant_unreachable(P2, &mut fx);
    let unavailable = AbortReason::Unavailable { participant: P2 };
    assert_eq!(replies(&fx), vec![aborted(unavailable, 6)]);
    assert_eq!(sent(&fx), vec![(P2, ToParticipant::Abort { txid: touches_p2 })]);
    assert_eq!(coordinator.open_transactions(), 2);
    fx.clear();
    execute(&mut coordinator, Time::ZERO, 7, touches_p1, vec![put(P2, "c")], &mut fx);
    assert_eq!(replies(&fx), vec![aborted(AbortReason::Unavailable { participant: P2 }, 7)]);
    assert_eq!(sent(&fx), vec![(P1, ToParticipant::Abort { txid: touches_p1 })]);
}
