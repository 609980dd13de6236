//! Sagas on the coordinator alone: the test plays the participants.

use std::time::Duration;

use bytes::Bytes;

use super::super::{ClientOrigin, CoordEffects, CoordOutput, Coordinator, CoordinatorConfig, CoordinatorSnapshot};
use crate::message::{Reply, SagaStep, SagaSubmit, ToCoordinator, ToParticipant};
use crate::ops::{AbortReason, LocalOp, Op, OpKind, Outcome, Vote};
use crate::record::{CoordRecord, LogRecord};
use crate::types::{ClientId, Lsn, ParticipantId, Seq, Time, TxId};

const P1: ParticipantId = ParticipantId(1);
const P2: ParticipantId = ParticipantId(2);
const C: ClientId = ClientId(42);
const IDENTITY: &str = "tester";
const ORIGIN: ClientOrigin<'static> = ClientOrigin { conn: 7, identity: IDENTITY };

fn config() -> CoordinatorConfig {
    let mut config = CoordinatorConfig::new(vec![P1, P2]);
    config.prepare_timeout = Duration::from_millis(10);
    config.redrive_initial = Duration::from_millis(5);
    config.redrive_max = Duration::from_millis(20);
    config.saga.retry_initial = Duration::from_millis(5);
    config.saga.retry_max = Duration::from_millis(20);
    config
}

/// A coordinator and the log it wrote (kept across "crashes").
struct Harness {
    coordinator: Coordinator,
    log: Vec<(Lsn, CoordRecord)>,
    fx: CoordEffects,
    now: Time,
    config: CoordinatorConfig,
}

impl Harness {
    fn new(config: CoordinatorConfig) -> Harness {
        let log = vec![(Lsn(1), CoordRecord::Register { client: C, identity: IDENTITY.into(), expired: None })];
        let mut fx = CoordEffects::default();
        let coordinator = Coordinator::recover(config.clone(), log.clone(), Time::ZERO, &mut fx);
        let mut harness = Harness { coordinator, log, fx: CoordEffects::default(), now: Time::ZERO, config };
        harness.absorb(fx);
        harness
    }

    /// Keeps what a step appended (as if durable at once) and its outputs.
    fn absorb(&mut self, mut fx: CoordEffects) {
        self.log.append(&mut fx.appends);
        self.fx.outputs.append(&mut fx.outputs);
    }

    fn saga(&mut self, seq: Seq, steps: Vec<SagaStep>) {
        let mut fx = CoordEffects::default();
        self.coordinator.on_saga(self.now, ORIGIN, SagaSubmit { client: C, seq, steps }, &mut fx);
        self.absorb(fx);
    }

    fn deliver(&mut self, from: ParticipantId, message: ToCoordinator) {
        let mut fx = CoordEffects::default();
        self.coordinator.on_message(self.now, from, message, &mut fx);
        self.absorb(fx);
    }

    fn tick(&mut self, by: Duration) {
        self.now = self.now + by;
        let mut fx = CoordEffects::default();
        self.coordinator.on_tick(self.now, &mut fx);
        self.absorb(fx);
    }

    /// Takes the outputs so far.
    fn take(&mut self) -> Vec<CoordOutput> {
        std::mem::take(&mut self.fx.outputs).into_iter().map(|gated| gated.item).collect()
    }

    /// Restarts from the log kept so far (less the last `lost` records, never durable).
    fn crash(&mut self, lost: usize) {
        self.log.truncate(self.log.len() - lost);
        let mut fx = CoordEffects::default();
        self.coordinator = Coordinator::recover(self.config.clone(), self.log.clone(), self.now, &mut fx);
        self.fx = CoordEffects::default();
        self.absorb(fx);
    }
}

fn add(participant: ParticipantId, key: &'static str, delta: i64) -> Op {
    Op { participant, key: Bytes::from_static(key.as_bytes()), kind: OpKind::Add { delta, floor: 0 } }
}

/// A step adding `delta` to `key` at `participant`, compensated by subtracting it.
fn step(participant: ParticipantId, key: &'static str, delta: i64) -> SagaStep {
    SagaStep { action: vec![add(participant, key, delta)], compensation: vec![add(participant, key, -delta)] }
}

/// The prepares in `outputs`: participant, txid, and the first op's key and delta.
fn prepares(outputs: &[CoordOutput]) -> Vec<(ParticipantId, TxId, String, i64)> {
    outputs
        .iter()
        .filter_map(|output| match output {
            CoordOutput::ToParticipant(to, ToParticipant::Prepare { txid, ops, sole }) => {
                assert!(sole, "a saga attempt has one participant");
                let LocalOp { key, kind, .. } = &ops[0];
                let OpKind::Add { delta, .. } = kind else { panic!("adds only") };
                Some((*to, *txid, String::from_utf8(key.to_vec()).unwrap(), *delta))
            }
            _ => None,
        })
        .collect()
}

fn only_prepare(outputs: &[CoordOutput]) -> (ParticipantId, TxId, String, i64) {
    let found = prepares(outputs);
    assert_eq!(found.len(), 1, "one prepare in {outputs:?}");
    found.into_iter().next().unwrap()
}

fn outcomes(outputs: &[CoordOutput]) -> Vec<Outcome> {
    outputs
        .iter()
        .filter_map(|output| match output {
            CoordOutput::ToClient(Reply::Outcome { client, seq: _, outcome }) if *client == C => Some(outcome.clone()),
            _ => None,
        })
        .collect()
}

fn yes() -> Vote {
    Vote::Yes { reads: vec![] }
}

/// Runs the pending prepare to a Yes and checks the commit goes to its participant.
fn commit_pending(h: &mut Harness) -> (ParticipantId, String, i64) {
    let (participant, txid, key, delta) = only_prepare(&h.take());
    h.deliver(participant, ToCoordinator::Vote { txid, vote: yes() });
    let outputs = h.fx.outputs.clone();
    assert!(
        outputs.iter().any(|g| g.item == CoordOutput::ToParticipant(participant, ToParticipant::Commit { txid })),
        "the attempt commits"
    );
    h.fx.outputs.retain(|g| !matches!(g.item, CoordOutput::ToParticipant(_, ToParticipant::Commit { .. })));
    h.deliver(participant, ToCoordinator::Ack { txid });
    (participant, key, delta)
}

fn overdraft(participant: ParticipantId) -> Vote {
    let reason = AbortReason::Constraint { participant, key: Bytes::from_static(b"c"), value: 0, delta: -1, floor: 0 };
    Vote::No { reason }
}

#[test]
fn every_step_applies_once_in_order_then_the_client_hears_committed_after_saga_end() {
    let mut h = Harness::new(config());
    h.saga(1, vec![step(P1, "a", -5), step(P2, "b", 5)]);
    assert_eq!(commit_pending(&mut h), (P1, "a".into(), -5));
    assert_eq!(commit_pending(&mut h), (P2, "b".into(), 5));
    let outputs = std::mem::take(&mut h.fx.outputs);
    let end = h.log.iter().find(|(_, r)| matches!(r, CoordRecord::SagaEnd { .. })).expect("SagaEnd logged").0;
    let reply = outputs.iter().find(|g| matches!(g.item, CoordOutput::ToClient(_))).expect("a reply");
    assert_eq!(reply.after, end, "the outcome waits for SagaEnd");
    assert_eq!(outcomes(std::slice::from_ref(&reply.item)), vec![Outcome::Committed { reads: vec![] }]);
    assert_eq!(h.coordinator.sagas_in_flight(), 0);
    assert_eq!(h.coordinator.saga_stats().completed, 1);
}

#[test]
fn a_failing_third_step_compensates_the_first_two_in_reverse_order() {
    let mut h = Harness::new(config());
    h.saga(1, vec![step(P1, "a", -5), step(P2, "b", 5), step(P1, "c", -1)]);
    commit_pending(&mut h);
    commit_pending(&mut h);
    let (participant, txid, key, _) = only_prepare(&h.take());
    assert_eq!((participant, key.as_str()), (P1, "c"));
    h.deliver(P1, ToCoordinator::Vote { txid, vote: overdraft(P1) });
    assert_eq!(commit_pending(&mut h), (P2, "b".into(), -5), "step 2's compensation first");
    assert_eq!(commit_pending(&mut h), (P1, "a".into(), 5), "then step 1's");
    let outputs = h.take();
    assert!(prepares(&outputs).is_empty(), "step 3 never applied: nothing to compensate there");
    assert!(
        matches!(&outcomes(&outputs)[..], [Outcome::Aborted { reason: AbortReason::Constraint { .. } }]),
        "{outputs:?}"
    );
    assert_eq!(h.coordinator.saga_stats().compensated, 1);
    // A retry of the request hears the same outcome and runs nothing.
    h.saga(1, vec![step(P1, "a", -5)]);
    let outputs = h.take();
    assert!(prepares(&outputs).is_empty());
    assert!(matches!(&outcomes(&outputs)[..], [Outcome::Aborted { .. }]));
}

#[test]
fn a_restart_mid_saga_resolves_the_undecided_attempt_and_finishes() {
    let mut h = Harness::new(config());
    h.saga(1, vec![step(P1, "a", -5), step(P2, "b", 5), step(P1, "c", 1)]);
    commit_pending(&mut h);
    let (participant, txid, _, _) = only_prepare(&h.fx.outputs.iter().map(|g| g.item.clone()).collect::<Vec<_>>());
    assert_eq!(participant, P2);
    // P2 prepared and voted, but the coordinator died before counting it.
    h.crash(0);
    let outputs = h.take();
    assert!(prepares(&outputs).is_empty(), "the undecided attempt is not run again");
    assert!(outputs.contains(&CoordOutput::ToParticipant(P2, ToParticipant::Query { txid })), "{outputs:?}");
    h.deliver(P2, ToCoordinator::Vote { txid, vote: yes() });
    h.deliver(P2, ToCoordinator::Ack { txid });
    let (participant, key, _) = commit_pending(&mut h);
    assert_eq!((participant, key.as_str()), (P1, "c"), "the saga carries on with step 3");
    assert_eq!(outcomes(&h.take()), vec![Outcome::Committed { reads: vec![] }]);
    // After another restart the outcome is known: a retry is answered, nothing runs.
    h.crash(0);
    h.take();
    h.saga(1, vec![step(P1, "a", -5)]);
    let outputs = h.take();
    assert!(prepares(&outputs).is_empty());
    assert_eq!(outcomes(&outputs), vec![Outcome::Committed { reads: vec![] }]);
}

#[test]
fn an_attempt_whose_records_were_lost_is_retried_with_a_new_txid() {
    let mut h = Harness::new(config());
    h.saga(1, vec![step(P1, "a", -5), step(P2, "b", 5)]);
    commit_pending(&mut h);
    let (_, lost, _, _) = only_prepare(&h.take());
    // Its SagaAttempt record and all after it never reached the disk (nor did its prepare
    // leave: it waited for that record).
    let attempt = h.log.iter().rposition(|(_, r)| matches!(r, CoordRecord::SagaAttempt { .. })).unwrap();
    h.crash(h.log.len() - attempt);
    let (participant, txid, key, _) = only_prepare(&h.take());
    assert_eq!((participant, key.as_str()), (P2, "b"));
    assert!(txid > lost, "a new attempt, a new txid");
    h.deliver(P2, ToCoordinator::Vote { txid, vote: yes() });
    assert_eq!(outcomes(&h.take()), vec![Outcome::Committed { reads: vec![] }]);
}

#[test]
fn a_restart_while_compensating_carries_on_compensating() {
    let mut h = Harness::new(config());
    h.saga(1, vec![step(P1, "a", -5), step(P2, "b", 5), step(P1, "c", -1)]);
    commit_pending(&mut h);
    commit_pending(&mut h);
    let (_, txid, _, _) = only_prepare(&h.take());
    h.deliver(P1, ToCoordinator::Vote { txid, vote: overdraft(P1) });
    assert_eq!(commit_pending(&mut h), (P2, "b".into(), -5));
    h.take();
    // The attempt of step 0's compensation (the next one) was lost, with all after it.
    let attempt = h.log.iter().rposition(|(_, r)| matches!(r, CoordRecord::SagaAttempt { .. })).unwrap();
    h.crash(h.log.len() - attempt);
    assert_eq!(commit_pending(&mut h), (P1, "a".into(), 5));
    assert!(matches!(&outcomes(&h.take())[..], [Outcome::Aborted { reason: AbortReason::Constraint { .. } }]));
}

#[test]
fn a_compensation_that_fails_transiently_is_retried_and_applied_once() {
    let mut h = Harness::new(config());
    h.saga(1, vec![step(P1, "a", -5), step(P2, "b", 5)]);
    commit_pending(&mut h);
    let (_, txid, _, _) = only_prepare(&h.take());
    h.deliver(P2, ToCoordinator::Vote { txid, vote: overdraft(P2) });
    // Step 1's compensation meets a lock conflict, twice.
    for _ in 0..2 {
        let (participant, txid, key, delta) = only_prepare(&h.take());
        assert_eq!((participant, key.as_str(), delta), (P1, "a", 5));
        let reason = AbortReason::Conflict { participant: P1, key: Bytes::from_static(b"a") };
        h.deliver(P1, ToCoordinator::Vote { txid, vote: Vote::No { reason } });
        assert!(prepares(&h.fx.outputs.iter().map(|g| g.item.clone()).collect::<Vec<_>>()).is_empty());
        h.tick(Duration::from_millis(50));
    }
    assert_eq!(commit_pending(&mut h), (P1, "a".into(), 5));
    let outputs = h.take();
    assert!(prepares(&outputs).is_empty(), "applied once: no further attempt");
    assert_eq!(outcomes(&outputs).len(), 1);
    let committed_compensations =
        h.log.iter().filter(|(_, r)| matches!(r, CoordRecord::SagaStepDone { compensating: true, .. })).count();
    assert_eq!(committed_compensations, 1);
    assert_eq!(h.coordinator.saga_stats().retries, 2);
}

#[test]
fn a_forward_step_failing_transiently_is_retried_then_compensates_after_its_attempts() {
    let mut config = config();
    config.saga.step_attempts_max = 2;
    let mut h = Harness::new(config);
    h.saga(1, vec![step(P1, "a", -5), step(P2, "b", 5)]);
    commit_pending(&mut h);
    for attempt in 0..2 {
        if attempt > 0 {
            h.tick(Duration::from_millis(50)); // The retry's backoff.
        }
        let (_, txid, _, _) = only_prepare(&h.take());
        let busy = Vote::No { reason: AbortReason::ParticipantBusy { participant: P2 } };
        h.deliver(P2, ToCoordinator::Vote { txid, vote: busy });
    }
    assert_eq!(commit_pending(&mut h), (P1, "a".into(), 5), "compensated after the second busy answer");
    assert!(matches!(&outcomes(&h.take())[..], [Outcome::Aborted { reason: AbortReason::ParticipantBusy { .. } }]));
}

#[test]
fn a_checkpoint_mid_saga_carries_the_saga_over() {
    let mut h = Harness::new(config());
    h.saga(1, vec![step(P1, "a", -5), step(P2, "b", 5), step(P1, "c", -1)]);
    commit_pending(&mut h);
    commit_pending(&mut h);
    let (_, txid, _, _) = only_prepare(&h.take());
    h.deliver(P1, ToCoordinator::Vote { txid, vote: overdraft(P1) });
    let snapshot = CoordinatorSnapshot::decode(Bytes::from(h.coordinator.snapshot().encode())).unwrap();
    let mut fx = CoordEffects::default();
    let config = h.config.clone();
    h.coordinator = Coordinator::recover_from(config, Some(snapshot), Vec::new(), h.now, &mut fx);
    h.fx = CoordEffects::default();
    h.absorb(fx);
    // The compensation of step 2 was pending (undecided, staged): it is resolved first.
    let outputs = h.take();
    let query = outputs
        .iter()
        .find_map(|o| match o {
            CoordOutput::ToParticipant(P2, ToParticipant::Query { txid }) => Some(*txid),
            _ => None,
        })
        .expect("the staged compensation is resolved");
    h.deliver(P2, ToCoordinator::Vote { txid: query, vote: yes() });
    assert_eq!(commit_pending(&mut h), (P1, "a".into(), 5));
    assert!(matches!(&outcomes(&h.take())[..], [Outcome::Aborted { .. }]));
}

#[test]
fn invalid_sagas_are_refused_before_anything_runs() {
    let mut h = Harness::new(config());
    let mut two_participants = step(P1, "a", 1);
    two_participants.compensation = vec![add(P2, "a", -1)];
    let unknown = step(ParticipantId(9), "a", 1);
    let too_many = vec![step(P1, "a", 1); 17];
    for (seq, steps) in [(1, vec![]), (2, vec![two_participants]), (3, vec![unknown]), (4, too_many)] {
        h.saga(seq, steps);
        let outputs = h.take();
        assert!(prepares(&outputs).is_empty());
        assert!(matches!(&outcomes(&outputs)[..], [Outcome::Aborted { .. }]), "seq {seq}: {outputs:?}");
    }
    assert!(h.log.iter().all(|(_, r)| !matches!(r, CoordRecord::SagaBegin { .. })), "nothing logged");
}

#[test]
fn the_planted_forward_compensation_order_is_visible() {
    let mut config = config();
    config.saga_bugs.compensate_forward = true;
    let mut h = Harness::new(config);
    h.saga(1, vec![step(P1, "a", -5), step(P2, "b", 5), step(P1, "c", -1)]);
    commit_pending(&mut h);
    commit_pending(&mut h);
    let (_, txid, _, _) = only_prepare(&h.take());
    h.deliver(P1, ToCoordinator::Vote { txid, vote: overdraft(P1) });
    assert_eq!(commit_pending(&mut h), (P1, "a".into(), 5), "the bug compensates step 1 first");
}

#[test]
fn saga_records_are_urgent_except_step_done() {
    let saga = TxId(1 << 40 | 3);
    assert!(CoordRecord::SagaEnd { saga }.urgent());
    assert!(!CoordRecord::SagaStepDone { saga, step: 0, compensating: false }.urgent());
}
