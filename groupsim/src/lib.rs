//! `twophase-groupsim`: the replicated coordinator group's state machine, and a deterministic
//! simulator of the whole group (issue 18).
//!
//! # What it owns
//!
//! * [`applied`]: [`applied::AppliedState`] (the coordinator records every committed Raft
//!   entry carried, from which a new leader builds its engine) and [`applied::BatchEncoder`]
//!   (one engine step's records as one proposed batch). The binary's `src/node/replicated.rs`
//!   runs exactly these.
//! * [`run`]: one simulated run from a seed: N ∈ {3, 5} coordinator replicas (a
//!   `twophase_replica::Replica` over a simulated disk, an `AppliedState`, and on the leader
//!   an engine built by `AppliedState::leader_engine` with epoch ≥ term), the engine sim's
//!   participants and one-shot clients; a seeded network (delay, drop, duplicate, reorder,
//!   partitions that heal), crashes and restarts of any replica (losing what was not synced),
//!   failed and stalled syncs. It drives the replicas as the runtime does: each engine step's
//!   records are proposed as one batch, its outputs leave once that batch is committed and
//!   applied, a deposed leader drops its engine.
//! * The checks: the engine sim's checker (atomicity across participants, every outcome a
//!   client heard matches the committed log, exactly-once per (client, seq), nothing heard as
//!   committed lost after any failover, the bank's conservation, strict serializability), and
//!   the group's own: every replica applies the same batch at an index, participants never
//!   act on a prepare or commit from an epoch below one they saw, at most one engine per
//!   epoch, liveness once faults stop.
//!
//! # Invariants
//!
//! The same seed replays the same run: no clocks, threads, or randomness but the seeded
//! generator (replicas run with `election_randomized = false` and distinct seeded election
//! timeouts and tick phases).
//!
//! # What it must not do
//!
//! No files, sockets, threads or clocks: the simulator is sans-IO. It must not depend on the
//! binary, net or bench crates. Planted bugs ([`GroupBugs`]) are for its tests only; the
//! runtime never sets them.

pub mod applied;
pub mod backlog;
mod disk;
mod world;

use std::time::Duration;

use twophase_engine::sim::SimConfig;

/// What can go wrong in the group, and how often, during the fault window.
#[derive(Clone, Copy, Debug)]
pub struct GroupFaults {
    /// Faults are injected during this much simulated time after set-up; then they stop.
    pub window: Duration,
    pub max_crashes: u32,
    pub max_partitions: u32,
    pub drop_probability: f64,
    pub duplicate_probability: f64,
    /// Chance that a replica's sync fails: the log is broken, the replica stops (as the
    /// binary stops on a wal error) and restarts from what was synced.
    pub sync_failure_probability: f64,
    /// Chance that a sync stalls for milliseconds.
    pub sync_stall_probability: f64,
}

/// Bugs planted in the runtime's logic, to prove the checks catch them. The binary has no
/// such knobs: it does what the all-false default does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupBugs {
    /// Outputs leave once their batch is appended to the leader's log, not committed by a
    /// majority.
    pub release_on_append: bool,
    /// A new leader builds its engine at once, before applying what earlier terms committed.
    pub build_before_caught_up: bool,
    /// The leader's epoch ignores its term (one above the applied epochs only).
    pub epoch_not_from_term: bool,
}

/// One simulated run.
#[derive(Clone, Debug)]
pub struct GroupConfig {
    /// Coordinator replicas (3 or 5).
    pub replicas: u64,
    /// Participants, clients, transactions, the workload mix, the seed (its `faults` and
    /// `interactive` are not used: see `faults`).
    pub sim: SimConfig,
    pub faults: GroupFaults,
    /// Once faults stop, every client must have its outcomes within this much time.
    pub liveness_bound: Duration,
    pub bugs: GroupBugs,
    /// Each replica's `ReplicaConfig::proposals_in_flight_max`: small values make a leader
    /// meet a full proposal queue (`Busy`) often.
    pub proposals_in_flight_max: u64,
}

impl GroupConfig {
    /// A cheap run for sweeps: 2 participants, 3 clients, 24 transactions, every fault kind.
    pub fn quick(seed: u64, replicas: u64) -> GroupConfig {
        let mut sim = SimConfig::standard(seed);
        sim.participants = 2;
        sim.clients = 3;
        sim.transactions = 24;
        sim.accounts_per_participant = 4;
        sim.hot_keys = 2;
        GroupConfig {
            replicas,
            sim,
            faults: GroupFaults {
                window: Duration::from_millis(600),
                max_crashes: 3,
                max_partitions: 2,
                drop_probability: 0.03,
                duplicate_probability: 0.03,
                sync_failure_probability: 0.002,
                sync_stall_probability: 0.03,
            },
            liveness_bound: Duration::from_secs(20),
            bugs: GroupBugs::default(),
            proposals_in_flight_max: twophase_replica::ReplicaConfig::new(1, vec![1]).proposals_in_flight_max,
        }
    }
}

/// Faults injected during a run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupFaultCounts {
    pub crashes: u64,
    pub failed_syncs: u64,
    pub partitions: u64,
    pub dropped: u64,
    pub duplicated: u64,
    /// Unsynced records lost in crashes.
    pub lost_records: u64,
    /// Leader engines built (the first one and every failover).
    pub engines: u64,
    /// Turns a leader ended with batches held because Raft's proposal queue was full.
    pub busy_turns: u64,
}

/// The result of one run.
#[derive(Clone, Debug)]
pub struct GroupReport {
    pub seed: u64,
    pub committed: usize,
    pub aborted: usize,
    pub faults: GroupFaultCounts,
    pub violations: Vec<String>,
    pub events: u64,
}

impl GroupReport {
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Runs one simulation and checks it. An assertion that fails inside the state machines is
/// a violation of this seed.
pub fn run(config: &GroupConfig) -> GroupReport {
    assert!(matches!(config.replicas, 3 | 5), "a group of 3 or 5 replicas");
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| world::World::new(config.clone()).run()));
    outcome.unwrap_or_else(|panic| {
        let message = twophase_engine::sim::panic_message(panic.as_ref());
        GroupReport {
            seed: config.sim.seed,
            committed: 0,
            aborted: 0,
            faults: GroupFaultCounts::default(),
            violations: vec![format!("assertion: {message}")],
            events: 0,
        }
    })
}

#[cfg(test)]
mod tests;
