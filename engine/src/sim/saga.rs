//! A deterministic saga simulation: the real coordinator, model participants (a key-value
//! map of integers, prepares that may fail for a business reason or transiently, the
//! participant's stale-txid rule), a network that drops and reorders messages, a log whose
//! unsynced tail a crash loses, coordinator crashes and restarts, and a client that resends
//! every unanswered saga after each restart. One seed drives everything.
//!
//! The checker, from ground truth (the participants' applied history): every saga that was
//! answered ended either fully applied (`Committed`: every step's action applied once, no
//! compensation) or fully compensated (`Aborted`: the steps before the failed one applied
//! once and compensated once, in reverse order, the failed and later ones never applied);
//! every saga is answered once the faults stop; a resend never gets a different outcome.
//!
//! Each saga step `i` of saga `s` adds 1 to its own key `s/i` and its compensation adds -1,
//! so the applied history names exactly which action or compensation ran; a doomed step
//! debits an empty key with a floor of 0 (a business failure).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::coordinator::{ClientOrigin, CoordEffects, CoordOutput, Coordinator, CoordinatorConfig};
use crate::effects::DurabilityGate;
use crate::message::{Reply, SagaStep, SagaSubmit, ToCoordinator, ToParticipant};
use crate::ops::{AbortReason, LocalOp, Op, OpKind, Outcome, Vote};
use crate::record::CoordRecord;
use crate::types::{ClientId, Epoch, Lsn, ParticipantId, Seq, Time, TxId};

const CLIENT: ClientId = ClientId(7);
const IDENTITY: &str = "saga-sim";
const PARTICIPANTS: u16 = 3;

/// What one run is made of.
#[derive(Clone, Copy, Debug)]
pub struct SagaSimConfig {
    pub seed: u64,
    pub sagas: usize,
    /// Faults (drops, crashes, transient refusals) happen only before this much time.
    pub fault_window: Duration,
    pub drop_probability: f64,
    pub max_crashes: u32,
    pub transient_no_probability: f64,
    /// Plant the bug of compensating in forward order.
    pub compensate_forward: bool,
}

impl SagaSimConfig {
    pub fn quick(seed: u64) -> SagaSimConfig {
        SagaSimConfig {
            seed,
            sagas: 12,
            fault_window: Duration::from_secs(2),
            drop_probability: 0.05,
            max_crashes: 3,
            transient_no_probability: 0.15,
            compensate_forward: false,
        }
    }
}

/// One applied change at a participant: the saga's step, whether it was a compensation, and
/// the attempt's txid. Txids rise in the order the coordinator started the attempts, and an
/// attempt starts only once the one before it was decided, so they give the saga's order
/// (a participant may apply a commit after a later step's, on another participant).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Applied {
    txid: TxId,
    saga: usize,
    step: usize,
    compensation: bool,
}

#[derive(Default)]
struct ModelParticipant {
    max_epoch: Epoch,
    store: HashMap<Bytes, i64>,
    prepared: HashMap<TxId, Vec<LocalOp>>,
    max_txid_seen: TxId,
}

/// The result of one run.
#[derive(Debug, Default)]
pub struct SagaSimReport {
    pub completed: usize,
    pub compensated: usize,
    pub crashes: u32,
    pub violations: Vec<String>,
}

impl SagaSimReport {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

struct Sim {
    config: SagaSimConfig,
    coord_config: CoordinatorConfig,
    rng: ChaCha8Rng,
    now: Time,
    coordinator: Coordinator,
    /// Every record appended; those above `gate.durable()` are lost by a crash.
    log: Vec<(Lsn, CoordRecord)>,
    gate: DurabilityGate<CoordOutput>,
    /// With the sending coordinator's epoch: a participant ignores an older epoch's
    /// messages once it has seen a newer one, as a real participant refuses them as stale.
    to_participants: VecDeque<(ParticipantId, Epoch, ToParticipant)>,
    to_coordinator: VecDeque<(ParticipantId, ToCoordinator)>,
    participants: Vec<ModelParticipant>,
    /// Ground truth: every change applied, in order.
    applied: Vec<Applied>,
    /// Which saga step a key belongs to.
    key_owner: HashMap<Bytes, (usize, usize)>,
    requests: Vec<SagaSubmit>,
    outcomes: BTreeMap<Seq, Outcome>,
    crashes: u32,
    violations: Vec<String>,
}

fn key_of(saga: usize, step: usize) -> Bytes {
    Bytes::from(format!("{saga}/{step}"))
}

impl Sim {
    fn new(config: SagaSimConfig) -> Sim {
        let mut rng = ChaCha8Rng::seed_from_u64(config.seed);
        let ids: Vec<ParticipantId> = (1..=PARTICIPANTS).map(ParticipantId).collect();
        let mut coord_config = CoordinatorConfig::new(ids);
        coord_config.prepare_timeout = Duration::from_millis(50);
        coord_config.redrive_initial = Duration::from_millis(20);
        coord_config.redrive_max = Duration::from_millis(100);
        coord_config.saga.retry_initial = Duration::from_millis(10);
        coord_config.saga.retry_max = Duration::from_millis(100);
        coord_config.saga_bugs.compensate_forward = config.compensate_forward;
        coord_config.hash_seed = config.seed;
        let log = vec![(Lsn(1), CoordRecord::Register { client: CLIENT, identity: IDENTITY.into(), expired: None })];
        let mut fx = CoordEffects::default();
        let coordinator = Coordinator::recover(coord_config.clone(), log.clone(), Time::ZERO, &mut fx);
        let mut key_owner = HashMap::new();
        let mut requests = Vec::new();
        for saga in 0..config.sagas {
            let steps_count = rng.gen_range(1..=4);
            let doomed = rng.gen_bool(0.4).then(|| rng.gen_range(0..steps_count));
            let steps = (0..steps_count)
                .map(|step| {
                    let participant = ParticipantId(rng.gen_range(1..=PARTICIPANTS));
                    let key = key_of(saga, step);
                    key_owner.insert(key.clone(), (saga, step));
                    let (delta, floor) = if doomed == Some(step) { (-1, 0) } else { (1, i64::MIN) };
                    let op = |delta, floor| Op { participant, key: key.clone(), kind: OpKind::Add { delta, floor } };
                    let compensation = if step + 1 == steps_count { vec![] } else { vec![op(-delta, i64::MIN)] };
                    SagaStep { action: vec![op(delta, floor)], compensation }
                })
                .collect();
            requests.push(SagaSubmit { client: CLIENT, seq: saga as Seq + 1, steps });
        }
        let mut sim = Sim {
            config,
            coord_config,
            rng,
            now: Time::ZERO,
            coordinator,
            log,
            gate: DurabilityGate::new(Lsn(1)),
            to_participants: VecDeque::new(),
            to_coordinator: VecDeque::new(),
            participants: (0..PARTICIPANTS).map(|_| ModelParticipant::default()).collect(),
            applied: Vec::new(),
            key_owner,
            requests,
            outcomes: BTreeMap::new(),
            crashes: 0,
            violations: Vec::new(),
        };
        sim.absorb(fx);
        sim
    }

    fn faulty(&self) -> bool {
        self.now < Time::ZERO + self.config.fault_window
    }

    /// Takes a coordinator step's appends and outputs; syncs the log most of the time.
    fn absorb(&mut self, mut fx: CoordEffects) {
        self.log.append(&mut fx.appends);
        let mut released = Vec::new();
        for output in fx.outputs.drain(..) {
            self.gate.push(output, &mut released);
        }
        if !self.faulty() || self.rng.gen_bool(0.7) {
            let last = self.log.last().map_or(Lsn::NONE, |(lsn, _)| *lsn);
            self.gate.advance(last, &mut released);
        }
        for output in released {
            self.route(output);
        }
    }

    fn route(&mut self, output: CoordOutput) {
        match output {
            CoordOutput::ToParticipant(to, message) => {
                self.to_participants.push_back((to, self.coordinator.epoch(), message));
            }
            CoordOutput::ToClient(Reply::Outcome { seq, outcome, .. }) => self.heard(seq, outcome),
            CoordOutput::ToClient(Reply::Rejected { .. }) => {} // Busy: the client resends later.
            CoordOutput::ToClient(other) | CoordOutput::ToConnection { reply: other, .. } => {
                self.violations.push(format!("unexpected reply {other:?}"));
            }
            CoordOutput::Warning(_) => {}
        }
    }

    fn heard(&mut self, seq: Seq, outcome: Outcome) {
        match self.outcomes.get(&seq) {
            Some(earlier) if *earlier != outcome => {
                self.violations.push(format!("saga {seq}: heard {earlier:?}, then {outcome:?}"));
            }
            Some(_) => {}
            None => {
                self.outcomes.insert(seq, outcome);
            }
        }
    }

    fn submit(&mut self, index: usize) {
        let request = self.requests[index].clone();
        let mut fx = CoordEffects::default();
        let origin = ClientOrigin { conn: 1, identity: IDENTITY };
        self.coordinator.on_saga(self.now, origin, request, &mut fx);
        self.absorb(fx);
    }

    fn crash(&mut self) {
        self.crashes += 1;
        let durable = self.gate.durable();
        self.log.retain(|(lsn, _)| *lsn <= durable);
        let mut fx = CoordEffects::default();
        self.coordinator = Coordinator::recover(self.coord_config.clone(), self.log.clone(), self.now, &mut fx);
        self.gate = DurabilityGate::new(durable);
        self.to_coordinator.clear(); // Connections to the dead process are gone.
        self.absorb(fx);
        // The client reconnects and resends every saga it has no answer for.
        for index in 0..self.requests.len() {
            if !self.outcomes.contains_key(&self.requests[index].seq) {
                self.submit(index);
            }
        }
    }

    fn participant_step(&mut self, to: ParticipantId, epoch: Epoch, message: ToParticipant) {
        let transient = self.faulty() && self.rng.gen_bool(self.config.transient_no_probability);
        let at = usize::from(to.0 - 1);
        if epoch < self.participants[at].max_epoch {
            return; // From a coordinator incarnation that has been replaced: stale.
        }
        self.participants[at].max_epoch = epoch;
        let reply = match message {
            ToParticipant::Prepare { txid, ops, .. } => Some(self.prepare(at, txid, ops, transient)),
            ToParticipant::Commit { txid } => {
                if let Some(ops) = self.participants[at].prepared.remove(&txid) {
                    for op in ops {
                        let OpKind::Add { delta, .. } = op.kind else { unreachable!("adds only") };
                        *self.participants[at].store.entry(op.key.clone()).or_insert(0) += delta;
                        let (saga, step) = self.key_owner[&op.key];
                        let compensation = delta < 0 && !self.doomed(saga, step);
                        self.applied.push(Applied { txid, saga, step, compensation });
                    }
                }
                Some(ToCoordinator::Ack { txid })
            }
            ToParticipant::Abort { txid } => {
                self.participants[at].prepared.remove(&txid);
                None
            }
            ToParticipant::Query { txid } => Some(match self.participants[at].prepared.contains_key(&txid) {
                true => ToCoordinator::Vote { txid, vote: Vote::Yes { reads: vec![] } },
                false => {
                    ToCoordinator::Vote { txid, vote: Vote::No { reason: AbortReason::Stale { participant: to } } }
                }
            }),
            other => {
                self.violations.push(format!("a saga sent {other:?}"));
                None
            }
        };
        if let Some(reply) = reply {
            self.to_coordinator.push_back((to, reply));
        }
    }

    fn doomed(&self, saga: usize, step: usize) -> bool {
        matches!(self.requests[saga].steps[step].action[0].kind, OpKind::Add { floor: 0, .. })
    }

    fn prepare(&mut self, at: usize, txid: TxId, ops: Vec<LocalOp>, transient: bool) -> ToCoordinator {
        let participant = ParticipantId(at as u16 + 1);
        let model = &mut self.participants[at];
        if txid <= model.max_txid_seen {
            return ToCoordinator::Vote { txid, vote: Vote::No { reason: AbortReason::Stale { participant } } };
        }
        model.max_txid_seen = txid;
        if transient {
            let reason = AbortReason::ParticipantBusy { participant };
            return ToCoordinator::Vote { txid, vote: Vote::No { reason } };
        }
        for op in &ops {
            let OpKind::Add { delta, floor } = op.kind else { unreachable!("adds only") };
            let value = model.store.get(&op.key).copied().unwrap_or(0);
            if value + delta < floor {
                let reason = AbortReason::Constraint { participant, key: op.key.clone(), value, delta, floor };
                return ToCoordinator::Vote { txid, vote: Vote::No { reason } };
            }
        }
        model.prepared.insert(txid, ops);
        ToCoordinator::Vote { txid, vote: Vote::Yes { reads: vec![] } }
    }

    fn run(mut self) -> SagaSimReport {
        for index in 0..self.requests.len() {
            self.submit(index);
        }
        let end = Time::ZERO + self.config.fault_window + Duration::from_secs(60);
        // Until every saga is answered, then until the network is quiet (a participant may
        // apply a commit after the client heard the outcome).
        while self.now < end && (self.outcomes.len() < self.requests.len() || !self.quiet()) {
            let faulty = self.faulty();
            if faulty && self.crashes < self.config.max_crashes && self.rng.gen_bool(0.003) {
                self.crash();
                continue;
            }
            let pending = self.to_participants.len() + self.to_coordinator.len();
            if pending == 0 || self.rng.gen_bool(0.1) {
                self.now = self.now + Duration::from_millis(self.rng.gen_range(1..=10));
                let mut fx = CoordEffects::default();
                self.coordinator.on_tick(self.now, &mut fx);
                self.absorb(fx);
                continue;
            }
            let drop = faulty && self.rng.gen_bool(self.config.drop_probability);
            let to_participant = self.rng.gen_range(0..pending) < self.to_participants.len();
            if to_participant {
                let at = self.rng.gen_range(0..self.to_participants.len()); // Any order.
                let (to, epoch, message) = self.to_participants.remove(at).expect("in range");
                if !drop {
                    self.participant_step(to, epoch, message);
                }
            } else {
                let at = self.rng.gen_range(0..self.to_coordinator.len());
                let (from, message) = self.to_coordinator.remove(at).expect("in range");
                if !drop {
                    let mut fx = CoordEffects::default();
                    self.coordinator.on_message(self.now, from, message, &mut fx);
                    self.absorb(fx);
                }
            }
        }
        self.check()
    }

    /// Nothing in flight and no commit left to apply.
    fn quiet(&self) -> bool {
        self.to_participants.is_empty()
            && self.to_coordinator.is_empty()
            && self.coordinator.unfinished() == 0
            && self.coordinator.sagas_in_flight() == 0
    }

    fn check(mut self) -> SagaSimReport {
        let mut report = SagaSimReport { crashes: self.crashes, ..SagaSimReport::default() };
        for (saga, request) in self.requests.iter().enumerate() {
            let Some(outcome) = self.outcomes.get(&request.seq) else {
                self.violations.push(format!("saga {saga} never answered after the faults stopped"));
                continue;
            };
            let mut of_saga: Vec<Applied> = self.applied.iter().copied().filter(|a| a.saga == saga).collect();
            of_saga.sort_by_key(|a| a.txid);
            let actions: Vec<usize> = of_saga.iter().filter(|a| !a.compensation).map(|a| a.step).collect();
            let compensations: Vec<usize> = of_saga.iter().filter(|a| a.compensation).map(|a| a.step).collect();
            let steps = request.steps.len();
            match outcome {
                Outcome::Committed { .. } => {
                    report.completed += 1;
                    if actions != (0..steps).collect::<Vec<_>>() || !compensations.is_empty() {
                        self.violations.push(format!(
                            "saga {saga} completed but applied actions {actions:?} and compensations {compensations:?}"
                        ));
                    }
                }
                Outcome::Aborted { .. } => {
                    report.compensated += 1;
                    let failed = actions.len();
                    let expected_compensations: Vec<usize> =
                        (0..failed).rev().filter(|&step| !request.steps[step].compensation.is_empty()).collect();
                    if actions != (0..failed).collect::<Vec<_>>()
                        || compensations != expected_compensations
                        || failed >= steps
                    {
                        self.violations.push(format!(
                            "saga {saga} compensated but applied actions {actions:?} and compensations \
                             {compensations:?} (expected {expected_compensations:?} in that order)"
                        ));
                    }
                    // Compensations come after every action.
                    let last_action = of_saga.iter().rposition(|a| !a.compensation);
                    let first_compensation = of_saga.iter().position(|a| a.compensation);
                    if let (Some(action), Some(compensation)) = (last_action, first_compensation)
                        && compensation < action
                    {
                        self.violations.push(format!("saga {saga} compensated before its last action"));
                    }
                }
                Outcome::CommittedReadsUnavailable => self.violations.push(format!("saga {saga}: reads unavailable")),
            }
        }
        report.violations = self.violations;
        report
    }
}

pub fn run(config: SagaSimConfig) -> SagaSimReport {
    Sim::new(config).run()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_hundred_seeds_pass() {
        let (mut completed, mut compensated, mut crashes) = (0, 0, 0);
        for seed in 0..200 {
            let report = run(SagaSimConfig::quick(seed));
            assert!(report.passed(), "seed {seed}: {:?}", report.violations);
            (completed, compensated, crashes) =
                (completed + report.completed, compensated + report.compensated, crashes + report.crashes);
        }
        assert!(completed > 0 && compensated > 0 && crashes > 0, "{completed} {compensated} {crashes}");
    }

    #[test]
    fn the_planted_forward_compensation_order_is_caught() {
        let caught = (0..200).any(|seed| {
            let config = SagaSimConfig { compensate_forward: true, ..SagaSimConfig::quick(seed) };
            run(config).violations.iter().any(|v| v.contains("compensated but"))
        });
        assert!(caught, "forward-order compensations went unnoticed");
    }

    /// `SIM_SEEDS=0..10000 cargo test --release -p twophase-engine --lib sim::saga::tests::sweep -- --ignored --nocapture`
    #[test]
    #[ignore]
    fn sweep() {
        let range = std::env::var("SIM_SEEDS").unwrap_or_else(|_| "0..2000".into());
        let (start, end) = range.split_once("..").expect("SIM_SEEDS=START..END");
        let (start, end): (u64, u64) = (start.parse().expect("a start seed"), end.parse().expect("an end seed"));
        let (mut completed, mut compensated, mut crashes, mut failed) = (0, 0, 0, Vec::new());
        for seed in start..end {
            let report = run(SagaSimConfig::quick(seed));
            (completed, compensated, crashes) =
                (completed + report.completed, compensated + report.compensated, crashes + report.crashes);
            if !report.passed() {
                println!("seed {seed}: {:?}", report.violations);
                failed.push(seed);
            }
        }
        println!(
            "saga sweep {start}..{end}: {completed} completed, {compensated} compensated, {crashes} crashes, {} failed",
            failed.len()
        );
        assert!(failed.is_empty(), "failing seeds: {failed:?}");
    }
}
