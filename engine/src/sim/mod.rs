//! The deterministic simulator: one coordinator, several participants and many clients
//! (one-shot and interactive), driven by one seed, with simulated time, a faulty network,
//! disks that lose unsynced writes and tear their tail, and crashes and restarts at any
//! step. After every run the [`checker`] verifies atomicity, durability, conservation, no
//! lost update, exactly-once, strict serializability of the committed history and
//! liveness; for interactive transactions also that every Begin ends, that deadlock victims
//! were the youngest of real cycles, that no reported cycle outlives detection and that no
//! lock timeout is early. The same seed always replays the same run.
//!
//! The simulator uses the very same state machines and durability gate as the servers;
//! only time, network and disk are simulated.

pub mod checker;
mod disk;
mod history;
mod interactive;
#[cfg(test)]
mod saga;
mod serial;
#[cfg(test)]
mod threepc;
pub mod workload;
mod world;

use std::fmt;
use std::time::Duration;

#[cfg(test)]
use crate::coordinator::{CoordinatorBugs, DetectorBugs};
#[cfg(test)]
use crate::participant::ParticipantBugs;

/// Relative weights of the transaction kinds clients issue.
#[derive(Clone, Copy, Debug)]
pub struct Mix {
    /// Bank transfer between accounts on two participants.
    pub transfer: u32,
    /// Increments of hot counters on two participants.
    pub increment: u32,
    /// Reads of accounts across participants.
    pub read_only: u32,
}

/// What can go wrong, and how often, during the fault window.
#[derive(Clone, Copy, Debug)]
pub struct Faults {
    /// Faults are injected during this much simulated time after set-up; then they stop.
    pub window: Duration,
    pub max_crashes: u32,
    pub max_partitions: u32,
    pub drop_probability: f64,
    pub duplicate_probability: f64,
    /// Chance that a message between coordinator and participant ignores the link's
    /// order (links are otherwise in order, like the TCP connections they model).
    pub reorder_probability: f64,
    /// Chance that a crash tears the last surviving unsynced record.
    pub torn_tail_probability: f64,
}

impl Faults {
    pub fn none() -> Faults {
        Faults {
            window: Duration::ZERO,
            max_crashes: 0,
            max_partitions: 0,
            drop_probability: 0.0,
            duplicate_probability: 0.0,
            reorder_probability: 0.0,
            torn_tail_probability: 0.0,
        }
    }
}

/// Bugs planted in the state machines, to prove the checker catches them.
#[cfg(test)]
#[derive(Clone, Copy, Debug, Default)]
pub struct PlantedBugs {
    pub coordinator: CoordinatorBugs,
    pub participant: ParticipantBugs,
    pub detector: DetectorBugs,
    /// Participants end lock waits after this, shorter than the configured lock-wait
    /// timeout the checker holds them to.
    pub lock_timeout_early: Option<Duration>,
}

#[derive(Clone, Debug)]
pub struct SimConfig {
    pub seed: u64,
    pub participants: u16,
    pub clients: u16,
    /// Client transactions to complete (set-up transactions not counted).
    pub transactions: usize,
    pub mix: Mix,
    pub accounts_per_participant: u32,
    pub initial_balance: i64,
    pub hot_keys: u32,
    pub faults: Faults,
    /// Interactive clients (Begin, Executes with think time, Commit or Rollback), beside
    /// the `clients` that send one-shot transactions.
    pub interactive: InteractiveMix,
    /// Once faults stop, everything must be decided within this much simulated time.
    pub liveness_bound: Duration,
    #[cfg(test)]
    pub bugs: PlantedBugs,
}

impl SimConfig {
    /// The standard run: 3 participants, 8 clients, 1,000 transactions, all fault kinds.
    pub fn standard(seed: u64) -> SimConfig {
        SimConfig {
            seed,
            participants: 3,
            clients: 8,
            transactions: 1000,
            mix: Mix { transfer: 6, increment: 3, read_only: 1 },
            accounts_per_participant: 16,
            initial_balance: 100,
            hot_keys: 4,
            faults: Faults {
                window: Duration::from_millis(1500),
                max_crashes: 6,
                max_partitions: 3,
                drop_probability: 0.02,
                duplicate_probability: 0.02,
                reorder_probability: 0.05,
                torn_tail_probability: 0.5,
            },
            liveness_bound: Duration::from_secs(30),
            interactive: InteractiveMix::none(),
            #[cfg(test)]
            bugs: PlantedBugs::default(),
        }
    }
}

pub use interactive::InteractiveMix;

impl SimConfig {
    /// The standard run with interactive clients beside the one-shot ones: 4 interactive
    /// clients running 200 bank transfers on 3 hot accounts per participant.
    pub fn interactive(seed: u64) -> SimConfig {
        let mut config = SimConfig::standard(seed);
        config.transactions = 300;
        config.interactive = InteractiveMix::standard(4, 200);
        config
    }

    /// A cheap run for sweeps over many seeds: 2 one-shot and 3 interactive clients, 40
    /// transactions in all, every fault kind in a shorter window.
    pub fn interactive_quick(seed: u64) -> SimConfig {
        let mut config = SimConfig::standard(seed);
        config.clients = 2;
        config.transactions = 16;
        config.accounts_per_participant = 4;
        config.faults.window = Duration::from_millis(300);
        config.faults.max_crashes = 2;
        config.faults.max_partitions = 1;
        config.interactive = InteractiveMix::standard(3, 24);
        config.interactive.hot_accounts = 2;
        config
    }
}

/// Faults injected during a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    pub crashes: u64,
    pub restarts: u64,
    pub partitions: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub torn_tails: u64,
    /// Unsynced log records lost in crashes.
    pub lost_records: u64,
}

impl FaultCounts {
    pub fn total(&self) -> u64 {
        self.crashes + self.partitions + self.dropped + self.duplicated + self.reordered + self.torn_tails
    }

    pub fn add(&mut self, other: &FaultCounts) {
        self.crashes += other.crashes;
        self.restarts += other.restarts;
        self.partitions += other.partitions;
        self.dropped += other.dropped;
        self.duplicated += other.duplicated;
        self.reordered += other.reordered;
        self.torn_tails += other.torn_tails;
        self.lost_records += other.lost_records;
    }
}

impl fmt::Display for FaultCounts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "crashes={} restarts={} partitions={} dropped={} duplicated={} reordered={} torn_tails={} lost_unsynced_records={}",
            self.crashes,
            self.restarts,
            self.partitions,
            self.dropped,
            self.duplicated,
            self.reordered,
            self.torn_tails,
            self.lost_records
        )
    }
}

/// The result of one simulated run.
#[derive(Clone, Debug)]
pub struct SimReport {
    pub seed: u64,
    /// Client transactions that reached an outcome.
    pub transactions: usize,
    pub committed: usize,
    pub aborted: usize,
    /// Aborts heard by clients, by reason label.
    pub aborts_by_reason: std::collections::BTreeMap<&'static str, usize>,
    pub faults: FaultCounts,
    pub violations: Vec<String>,
    pub sim_time: Duration,
    pub events: u64,
}

impl SimReport {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

impl fmt::Display for SimReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "seed {}: transactions={} committed={} aborted={} {:?} sim_time={:?} events={} faults[{}] violations={}",
            self.seed,
            self.transactions,
            self.committed,
            self.aborted,
            self.aborts_by_reason,
            self.sim_time,
            self.events,
            self.faults,
            self.violations.len()
        )?;
        for violation in &self.violations {
            write!(f, "\n  violation: {violation}")?;
        }
        Ok(())
    }
}

/// The message of a caught panic: what a failed assertion said (every simulator reports one
/// as a violation of its seed).
pub fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "a panic without a message".into())
}

/// Runs one simulation and checks it. An assertion that fails inside the state machines
/// (an invariant they check themselves) is reported as a violation of this seed.
pub fn run(config: &SimConfig) -> SimReport {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| world::World::new(config.clone()).run()));
    outcome.unwrap_or_else(|panic| {
        let message = panic_message(panic.as_ref());
        SimReport {
            seed: config.seed,
            transactions: 0,
            committed: 0,
            aborted: 0,
            aborts_by_reason: Default::default(),
            faults: FaultCounts::default(),
            violations: vec![format!("assertion: {message}")],
            sim_time: Duration::ZERO,
            events: 0,
        }
    })
}

#[cfg(test)]
mod interactive_tests;
#[cfg(test)]
mod tests;
