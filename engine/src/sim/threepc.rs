//! A deterministic three-phase-commit simulation: the real 3PC coordinator and
//! participants ([`crate::threepc`]), logs whose unsynced tail a crash loses, the durability
//! gate, a network with delays and drops, crashes and restarts, and (partition mode)
//! partitions. One seed drives everything; time is ticks.
//!
//! Crash-only mode models the synchronous network 3PC assumes: a message arrives within
//! `delay_ticks_max`, and at most `drops_max` consecutive sends of one transaction's
//! messages on one link are lost; the nodes' timeouts come from those bounds
//! ([`Timeouts::for_network`]). There the checker asserts atomicity. Partition mode cuts
//! links for a while, breaking the bound: the two sides may decide differently (the
//! documented limitation), which the checker then reports as splits.
//!
//! The checker, from the durable logs of every incarnation and the released outputs:
//! atomicity (no transaction both committed and aborted anywhere), validity (a commit only
//! if every participant's resource manager said Yes), and counts the transactions left
//! undecided at a participant that is up at the end (blocked: 3PC blocks only when every
//! participant that could decide crashed).

use std::collections::{BTreeMap, BTreeSet, HashMap};

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::effects::DurabilityGate;
use crate::threepc::{
    CoordEffects3, CoordOutput3, CoordRecord3, Envelope, PartEffects3, PartOutput, PartRecord3, Peer,
    ThreePcCoordinator, ThreePcParticipant, Timeouts,
};
use crate::types::{Epoch, Lsn, ParticipantId, TxId};

const TXS_MAX: usize = 1000;
const DECIDED_MAX: usize = 1000;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultMode {
    CrashOnly,
    Partitions,
}

#[derive(Clone, Copy, Debug)]
pub struct ThreePcSimConfig {
    pub seed: u64,
    pub participants: u16,
    pub transactions: usize,
    /// A new transaction starts this often while the coordinator is up.
    pub begin_every_ticks: u64,
    /// Chance a resource manager says No.
    pub no_probability: f64,
    pub delay_ticks_max: u64,
    pub drop_probability: f64,
    /// Consecutive sends of one transaction's messages on one link that may be lost.
    pub drops_max: u64,
    pub resend_ticks: u64,
    pub mode: FaultMode,
    /// Faults happen only before this tick.
    pub fault_window_ticks: u64,
    /// Chance per tick of crashing a node (coordinator or participant).
    pub crash_probability: f64,
    pub max_crashes: u32,
    pub downtime_ticks_max: u64,
    /// Chance per tick (partition mode) of cutting the nodes in two.
    pub partition_probability: f64,
    pub partition_ticks_max: u64,
    /// The run ends this long after the fault window.
    pub quiet_ticks: u64,
}

impl ThreePcSimConfig {
    pub fn crash_only(seed: u64) -> ThreePcSimConfig {
        ThreePcSimConfig {
            seed,
            participants: 4,
            transactions: 24,
            begin_every_ticks: 7,
            no_probability: 0.1,
            delay_ticks_max: 3,
            drop_probability: 0.1,
            drops_max: 2,
            resend_ticks: 3,
            mode: FaultMode::CrashOnly,
            fault_window_ticks: 400,
            crash_probability: 0.02,
            max_crashes: 5,
            downtime_ticks_max: 150,
            partition_probability: 0.0,
            partition_ticks_max: 0,
            quiet_ticks: 3000,
        }
    }

    pub fn partitions(seed: u64) -> ThreePcSimConfig {
        ThreePcSimConfig {
            mode: FaultMode::Partitions,
            crash_probability: 0.0,
            partition_probability: 0.02,
            partition_ticks_max: 300,
            ..ThreePcSimConfig::crash_only(seed)
        }
    }

    fn timeouts(&self) -> Timeouts {
        Timeouts::for_network(self.delay_ticks_max, self.drops_max, self.resend_ticks)
    }
}

#[derive(Debug, Default)]
pub struct ThreePcSimReport {
    pub committed: usize,
    pub aborted: usize,
    /// Undecided at a participant that is up at the end.
    pub blocked: usize,
    pub crashes: u32,
    pub partitions: u32,
    pub dropped: u64,
    /// Transactions committed somewhere and aborted elsewhere, with who decided what.
    pub splits: Vec<Split>,
    /// Validity and internal failures (assertions in the state machines).
    pub violations: Vec<String>,
}

/// A transaction decided both ways.
#[derive(Debug, Clone)]
pub struct Split {
    pub txid: TxId,
    pub committed_at: Vec<ParticipantId>,
    pub aborted_at: Vec<ParticipantId>,
    /// Those of `committed_at` / `aborted_at` whose log holds a PreCommitted record.
    pub precommitted_committers: Vec<ParticipantId>,
    pub precommitted_aborters: Vec<ParticipantId>,
}

struct Log<R> {
    records: Vec<(Lsn, R)>,
    durable: Lsn,
}

impl<R: Clone> Log<R> {
    fn new() -> Log<R> {
        Log { records: Vec::new(), durable: Lsn::NONE }
    }

    fn append(&mut self, appends: Vec<(Lsn, R)>) {
        for (lsn, record) in appends {
            let expected = self.records.last().map_or(Lsn(1), |(last, _)| last.next());
            assert_eq!(lsn, expected, "LSNs are consecutive");
            self.records.push((lsn, record));
        }
    }

    fn sync(&mut self) -> Lsn {
        self.durable = self.records.last().map_or(Lsn::NONE, |(lsn, _)| *lsn);
        self.durable
    }

    /// A crash: the unsynced tail is lost.
    fn crash(&mut self) {
        let durable = self.durable;
        self.records.retain(|(lsn, _)| *lsn <= durable);
    }
}

struct CoordNode {
    machine: Option<ThreePcCoordinator>,
    log: Log<CoordRecord3>,
    gate: DurabilityGate<CoordOutput3>,
    epoch: u32,
    up_at: u64,
}

struct PartNode {
    id: ParticipantId,
    machine: Option<ThreePcParticipant>,
    log: Log<PartRecord3>,
    gate: DurabilityGate<PartOutput>,
    up_at: u64,
}

/// The nodes, the network and the ground truth; a test may script it tick by tick.
pub struct Cluster {
    config: ThreePcSimConfig,
    timeouts: Timeouts,
    rng: ChaCha8Rng,
    pub now: u64,
    coordinator: CoordNode,
    participants: Vec<PartNode>,
    /// (deliver at, send order) → message.
    network: BTreeMap<(u64, u64), (Peer, Envelope)>,
    sent: u64,
    consecutive_drops: HashMap<(Peer, Peer, TxId), u64>,
    /// Nodes on the far side of the current cut (partition mode), until its end.
    cut: Option<(BTreeSet<Peer>, u64)>,
    /// Resource managers' answers to give at the next tick.
    prepares: Vec<(ParticipantId, TxId, bool)>,
    /// Ground truth: each transaction's participants, and every Yes.
    pub txs: BTreeMap<TxId, Vec<ParticipantId>>,
    yes: BTreeSet<(TxId, ParticipantId)>,
    applied: BTreeMap<(TxId, ParticipantId), bool>,
    outcomes: BTreeMap<TxId, bool>,
    pub report: ThreePcSimReport,
}

impl Cluster {
    pub fn new(config: ThreePcSimConfig) -> Cluster {
        let timeouts = config.timeouts();
        let mut fx = CoordEffects3::default();
        let coordinator = ThreePcCoordinator::recover(Epoch(1), timeouts, TXS_MAX, Vec::new(), &mut fx);
        let participants = (1..=config.participants)
            .map(|id| {
                let id = ParticipantId(id);
                let machine = ThreePcParticipant::recover(id, timeouts, TXS_MAX, DECIDED_MAX, Vec::new());
                PartNode { id, machine: Some(machine), log: Log::new(), gate: DurabilityGate::new(Lsn::NONE), up_at: 0 }
            })
            .collect();
        Cluster {
            config,
            timeouts,
            rng: ChaCha8Rng::seed_from_u64(config.seed),
            now: 0,
            coordinator: CoordNode {
                machine: Some(coordinator),
                log: Log::new(),
                gate: DurabilityGate::new(Lsn::NONE),
                epoch: 1,
                up_at: 0,
            },
            participants,
            network: BTreeMap::new(),
            sent: 0,
            consecutive_drops: HashMap::new(),
            cut: None,
            prepares: Vec::new(),
            txs: BTreeMap::new(),
            yes: BTreeSet::new(),
            applied: BTreeMap::new(),
            outcomes: BTreeMap::new(),
            report: ThreePcSimReport::default(),
        }
    }

    pub fn participant(&self, id: ParticipantId) -> Option<&ThreePcParticipant> {
        self.participants[usize::from(id.0) - 1].machine.as_ref()
    }

    pub fn coordinator(&self) -> Option<&ThreePcCoordinator> {
        self.coordinator.machine.as_ref()
    }

    pub fn participant_ids(&self) -> Vec<ParticipantId> {
        self.participants.iter().map(|node| node.id).collect()
    }

    /// Begins a transaction on `participants` at the coordinator (if it is up).
    pub fn begin(&mut self, participants: &[ParticipantId]) -> Option<TxId> {
        let machine = self.coordinator.machine.as_mut()?;
        let mut fx = CoordEffects3::default();
        let work = participants.iter().map(|p| (*p, Vec::new())).collect();
        let txid = machine.begin(work, &mut fx).ok()?;
        let mut sorted = participants.to_vec();
        sorted.sort_unstable();
        self.txs.insert(txid, sorted);
        self.coord_effects(fx);
        Some(txid)
    }

    /// One tick: resource managers answer, messages due arrive, every node ticks, logs
    /// sync and gated outputs leave.
    pub fn step(&mut self) {
        self.now += 1;
        for (id, txid, yes) in std::mem::take(&mut self.prepares) {
            let node = &mut self.participants[usize::from(id.0) - 1];
            let Some(machine) = node.machine.as_mut() else { continue };
            let mut fx = PartEffects3::default();
            machine.prepared(txid, yes, &mut fx);
            if yes {
                self.yes.insert((txid, id));
            }
            self.part_effects(id, fx);
        }
        while let Some(entry) = self.network.first_entry() {
            if entry.key().0 > self.now {
                break;
            }
            let (from, envelope) = entry.remove();
            self.deliver(from, envelope);
        }
        if let Some(machine) = self.coordinator.machine.as_mut() {
            let mut fx = CoordEffects3::default();
            machine.tick(&mut fx);
            self.coord_effects(fx);
        }
        for index in 0..self.participants.len() {
            let id = self.participants[index].id;
            if let Some(machine) = self.participants[index].machine.as_mut() {
                let mut fx = PartEffects3::default();
                machine.tick(&mut fx);
                self.part_effects(id, fx);
            }
        }
        self.sync_all();
    }

    fn deliver(&mut self, from: Peer, envelope: Envelope) {
        let Envelope { to, message } = envelope;
        match to {
            Peer::Coordinator => {
                let Some(machine) = self.coordinator.machine.as_mut() else { return };
                let Peer::Participant(from) = from else { return };
                let mut fx = CoordEffects3::default();
                machine.on_message(from, message, &mut fx);
                self.coord_effects(fx);
            }
            Peer::Participant(id) => {
                let Some(machine) = self.participants[usize::from(id.0) - 1].machine.as_mut() else { return };
                let mut fx = PartEffects3::default();
                machine.on_message(from, message, &mut fx);
                self.part_effects(id, fx);
            }
        }
    }

    fn coord_effects(&mut self, fx: CoordEffects3) {
        self.coordinator.log.append(fx.appends);
        let mut released = Vec::new();
        for output in fx.outputs {
            self.coordinator.gate.push(output, &mut released);
        }
        self.coord_released(released);
    }

    fn part_effects(&mut self, id: ParticipantId, fx: PartEffects3) {
        let node = &mut self.participants[usize::from(id.0) - 1];
        node.log.append(fx.appends);
        let mut released = Vec::new();
        for output in fx.outputs {
            node.gate.push(output, &mut released);
        }
        self.part_released(id, released);
    }

    fn coord_released(&mut self, released: Vec<CoordOutput3>) {
        for output in released {
            match output {
                CoordOutput3::Send(envelope) => self.send(Peer::Coordinator, envelope),
                CoordOutput3::Outcome { txid, committed } => {
                    let earlier = self.outcomes.insert(txid, committed);
                    if earlier.is_some_and(|earlier| earlier != committed) {
                        self.report.violations.push(format!("{txid}: client told {earlier:?}, then {committed}"));
                    }
                }
                CoordOutput3::Warning(_) => {}
            }
        }
    }

    fn part_released(&mut self, id: ParticipantId, released: Vec<PartOutput>) {
        for output in released {
            match output {
                PartOutput::Send(envelope) => self.send(Peer::Participant(id), envelope),
                PartOutput::Prepare { txid, .. } => {
                    let yes = !self.rng.gen_bool(self.config.no_probability);
                    self.prepares.push((id, txid, yes));
                }
                PartOutput::Apply { txid, commit } => {
                    // Applied twice is a bug unless both are aborts (a roll-back repeated).
                    let earlier = self.applied.insert((txid, id), commit);
                    if earlier.is_some_and(|earlier| earlier != commit || commit) {
                        self.report.violations.push(format!("{txid}: {id} applied {earlier:?}, then {commit}"));
                    }
                }
                PartOutput::SplitDecision { .. } | PartOutput::Warning(_) => {}
            }
        }
    }

    fn send(&mut self, from: Peer, envelope: Envelope) {
        let to = envelope.to;
        if self.is_cut(from, to) {
            self.report.dropped += 1;
            return;
        }
        let link = (from, to, envelope.message.txid());
        let drops = self.consecutive_drops.entry(link).or_insert(0);
        let faulty = self.now < self.config.fault_window_ticks;
        if faulty && *drops < self.config.drops_max && self.rng.gen_bool(self.config.drop_probability) {
            *drops += 1;
            self.report.dropped += 1;
            return;
        }
        *drops = 0;
        let at = self.now + self.rng.gen_range(1..=self.config.delay_ticks_max);
        self.sent += 1;
        self.network.insert((at, self.sent), (from, envelope));
    }

    fn is_cut(&self, from: Peer, to: Peer) -> bool {
        match &self.cut {
            Some((side, until)) if self.now < *until => side.contains(&from) != side.contains(&to),
            _ => false,
        }
    }

    fn sync_all(&mut self) {
        let durable = self.coordinator.log.sync();
        let mut released = Vec::new();
        self.coordinator.gate.advance(durable, &mut released);
        self.coord_released(released);
        for index in 0..self.participants.len() {
            let node = &mut self.participants[index];
            let durable = node.log.sync();
            let mut released = Vec::new();
            node.gate.advance(durable, &mut released);
            let id = node.id;
            self.part_released(id, released);
        }
    }

    /// Crashes the coordinator: its unsynced records and held outputs are lost.
    pub fn crash_coordinator(&mut self) {
        self.coordinator.machine = None;
        self.coordinator.log.crash();
        self.coordinator.gate = DurabilityGate::new(self.coordinator.log.durable);
        self.report.crashes += 1;
    }

    pub fn restart_coordinator(&mut self) {
        self.coordinator.epoch += 1;
        let records = self.coordinator.log.records.clone();
        let mut fx = CoordEffects3::default();
        let epoch = Epoch(self.coordinator.epoch);
        let machine = ThreePcCoordinator::recover(epoch, self.timeouts, TXS_MAX, records, &mut fx);
        self.coordinator.machine = Some(machine);
        self.coord_effects(fx);
    }

    pub fn crash_participant(&mut self, id: ParticipantId) {
        let node = &mut self.participants[usize::from(id.0) - 1];
        node.machine = None;
        node.log.crash();
        node.gate = DurabilityGate::new(node.log.durable);
        self.prepares.retain(|(p, _, _)| *p != id);
        self.report.crashes += 1;
    }

    pub fn restart_participant(&mut self, id: ParticipantId) {
        let node = &mut self.participants[usize::from(id.0) - 1];
        let records = node.log.records.clone();
        node.machine = Some(ThreePcParticipant::recover(id, self.timeouts, TXS_MAX, DECIDED_MAX, records));
    }

    /// The decision in `id`'s durable log for `txid`.
    pub fn logged_decision(&self, id: ParticipantId, txid: TxId) -> Option<bool> {
        self.participants[usize::from(id.0) - 1].log.records.iter().find_map(|(_, record)| match record {
            PartRecord3::Decided { txid: t, commit } if *t == txid => Some(*commit),
            _ => None,
        })
    }

    fn logged_precommit(&self, id: ParticipantId, txid: TxId) -> bool {
        let records = &self.participants[usize::from(id.0) - 1].log.records;
        records.iter().any(|(_, record)| matches!(record, PartRecord3::PreCommitted { txid: t } if *t == txid))
    }

    pub fn coordinator_logged_decision(&self, txid: TxId) -> Option<bool> {
        self.coordinator.log.records.iter().find_map(|(_, record)| match record {
            CoordRecord3::Decided { txid: t, commit, .. } if *t == txid => Some(*commit),
            _ => None,
        })
    }

    /// Random faults for this tick.
    fn inject_faults(&mut self) {
        if self.now >= self.config.fault_window_ticks {
            return;
        }
        let nodes = usize::from(self.config.participants) + 1;
        if self.report.crashes < self.config.max_crashes && self.rng.gen_bool(self.config.crash_probability) {
            let victim = self.rng.gen_range(0..nodes);
            let downtime = self.rng.gen_range(1..=self.config.downtime_ticks_max);
            if victim == 0 && self.coordinator.machine.is_some() {
                self.crash_coordinator();
                self.coordinator.up_at = self.now + downtime;
            } else if victim > 0 && self.participants[victim - 1].machine.is_some() {
                self.crash_participant(self.participants[victim - 1].id);
                self.participants[victim - 1].up_at = self.now + downtime;
            }
        }
        let uncut = self.cut.as_ref().is_none_or(|(_, until)| *until <= self.now);
        let partitions = self.config.mode == FaultMode::Partitions;
        if partitions && uncut && self.rng.gen_bool(self.config.partition_probability) {
            let mut side = BTreeSet::new();
            while side.is_empty() || side.len() == nodes {
                side = (0..nodes).filter(|_| self.rng.gen_bool(0.5)).map(peer_of).collect();
            }
            let until = self.now + self.rng.gen_range(1..=self.config.partition_ticks_max);
            self.cut = Some((side, until));
            self.report.partitions += 1;
        }
    }

    fn restart_due(&mut self) {
        if self.coordinator.machine.is_none() && self.coordinator.up_at <= self.now {
            self.restart_coordinator();
        }
        for index in 0..self.participants.len() {
            if self.participants[index].machine.is_none() && self.participants[index].up_at <= self.now {
                self.restart_participant(self.participants[index].id);
            }
        }
    }

    /// The workload with random faults, then a quiet period, then the check.
    pub fn run(mut self) -> ThreePcSimReport {
        let end = self.config.fault_window_ticks + self.config.quiet_ticks;
        let ids = self.participant_ids();
        while self.now < end {
            let started = self.txs.len();
            if started < self.config.transactions && self.now.is_multiple_of(self.config.begin_every_ticks) {
                let count = self.rng.gen_range(2..=ids.len());
                let mut chosen = ids.clone();
                while chosen.len() > count {
                    let at = self.rng.gen_range(0..chosen.len());
                    chosen.remove(at);
                }
                self.begin(&chosen);
            }
            self.inject_faults();
            self.restart_due();
            self.step();
        }
        self.check();
        self.report
    }

    /// Atomicity, validity, and what is left undecided.
    pub fn check(&mut self) {
        for (&txid, participants) in &self.txs {
            let mut committed_at = Vec::new();
            let mut aborted_at = Vec::new();
            for &p in participants {
                match self.logged_decision(p, txid) {
                    Some(true) => committed_at.push(p),
                    Some(false) => aborted_at.push(p),
                    None => {}
                }
            }
            let blocked = participants.iter().any(|&p| {
                self.logged_decision(p, txid).is_none()
                    && self.participant(p).is_some_and(|m| m.decision(txid).is_none() && self.yes.contains(&(txid, p)))
            });
            if blocked {
                self.report.blocked += 1;
            }
            let coordinator = self.coordinator_logged_decision(txid).or(self.outcomes.get(&txid).copied());
            let committed = !committed_at.is_empty() || coordinator == Some(true);
            let aborted = !aborted_at.is_empty() || coordinator == Some(false);
            if committed {
                for &p in participants {
                    if !self.yes.contains(&(txid, p)) {
                        self.report.violations.push(format!("{txid}: committed without {p}'s Yes"));
                    }
                }
            }
            if committed && aborted {
                let precommitted_committers =
                    committed_at.iter().copied().filter(|p| self.logged_precommit(*p, txid)).collect();
                let precommitted_aborters =
                    aborted_at.iter().copied().filter(|p| self.logged_precommit(*p, txid)).collect();
                self.report.splits.push(Split {
                    txid,
                    committed_at,
                    aborted_at,
                    precommitted_committers,
                    precommitted_aborters,
                });
            } else if committed {
                self.report.committed += 1;
            } else if aborted {
                self.report.aborted += 1;
            }
        }
    }
}

fn peer_of(index: usize) -> Peer {
    if index == 0 { Peer::Coordinator } else { Peer::Participant(ParticipantId(index as u16)) }
}

/// Runs one simulation; an assertion inside the state machines is reported as a
/// violation of this seed.
pub fn run(config: ThreePcSimConfig) -> ThreePcSimReport {
    let outcome = std::panic::catch_unwind(|| Cluster::new(config).run());
    outcome.unwrap_or_else(|panic| {
        let message = super::panic_message(panic.as_ref());
        ThreePcSimReport { violations: vec![format!("assertion: {message}")], ..ThreePcSimReport::default() }
    })
}

#[cfg(test)]
#[path = "threepc_tests.rs"]
mod tests;
