//! The kill loop of a chaos run: at every multiple of the interval, SIGKILL one process of
//! the local cluster, restart it with the same arguments and address, and wait until the
//! load shows it serving again. Victims come in rounds: each round is every process once, in
//! an order the seeded RNG shuffles, so any run of `N + 1` kills hits the coordinator too
//! (independent draws left it out of a whole 60-second run for some seeds).
//!
//! Invariants: at most one process is down or recovering at a time (a kill waits for the
//! previous one's recovery), so every recovery time belongs to exactly one kill; after a kill
//! the cluster did not recover from, nothing more is killed; the log holds at most one entry
//! per scheduled kill.
//!
//! Must not: touch the load (it only reads the probe) or judge the audit.

use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use twophase_bench::{BankLayout, CommitFilter, LoadProbe, Seen};

use crate::cluster::{CoordinatorRole, LocalCluster, Restarted};

/// Longest a kill may take to recover (see [`Kill::recovered`]) before the run is failed.
pub const RECOVERY_LIMIT: Duration = Duration::from_secs(30);

/// How often the probe is asked whether the load recovered.
const POLL: Duration = Duration::from_millis(2);

/// When and whom to kill.
#[derive(Clone, Debug)]
pub struct Schedule {
    pub every: Duration,
    /// Kills are due at every multiple of `every` below this (measured from the load's start).
    pub window: Duration,
    pub seed: u64,
}

/// What a victim was when it was killed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum VictimRole {
    /// The group's leader (the member that announced the highest term among the running).
    Leader,
    /// A member of a coordinator group that did not lead.
    Follower,
    /// The one coordinator of a cluster without a group.
    Coordinator,
    Participant,
}

impl VictimRole {
    pub fn label(self) -> &'static str {
        match self {
            VictimRole::Leader => "leader",
            VictimRole::Follower => "follower",
            VictimRole::Coordinator => "coordinator",
            VictimRole::Participant => "participant",
        }
    }
}

/// One SIGKILL and what followed.
#[derive(Clone, Debug)]
pub struct Kill {
    pub process: String,
    pub role: VictimRole,
    /// The group's leader (name, announced term) right before the kill; `None` without a
    /// group or while none led. A leader that differs at the next kill means the leadership
    /// moved in between.
    pub leader: Option<(String, u64)>,
    /// Its pid before the kill (0 if the kill itself failed).
    pub pid: u32,
    /// Right before the SIGKILL.
    pub at: Instant,
    pub restarted: Option<Restarted>,
    /// The first commit that proves it serves again, seen by the load generator after the
    /// restarted process printed its `listening on` line: for a participant, a committed
    /// transaction that touched it and was first sent after the kill (so the restarted
    /// process voted for it); for the coordinator, any commit (only the new one is there to
    /// decide it).
    pub recovered: Option<Seen>,
    pub error: Option<String>,
}

/// What the kill loop did.
#[derive(Debug, Default)]
pub struct KillLog {
    pub kills: Vec<Kill>,
    /// When the first kill happened and how many commits the load had seen by then.
    pub first_kill: Option<(Instant, u64)>,
}

/// Runs the schedule from `start` (the load's start) until the window closes, a kill does
/// not recover, or `load_running` turns false.
pub fn run(
    cluster: &mut LocalCluster,
    layout: &BankLayout,
    probe: &LoadProbe,
    start: Instant,
    schedule: &Schedule,
    load_running: impl Fn() -> bool,
) -> KillLog {
    let mut victims = Victims::new(cluster.names(), schedule.seed);
    let mut log = KillLog::default();
    let mut slot = 1u32;
    loop {
        let due = start + schedule.every * slot;
        if due >= start + schedule.window || !sleep_until(due, &load_running) {
            break;
        }
        let victim = victims.next();
        if log.first_kill.is_none() {
            log.first_kill = Some((Instant::now(), probe.committed()));
        }
        let kill = kill_and_recover(cluster, layout, probe, &victim, &load_running);
        report(&kill, start, probe.committed());
        let recovered = kill.recovered.is_some();
        log.kills.push(kill);
        if !recovered {
            break; // Another kill would pile a second outage onto one that has not healed.
        }
        slot = next_slot(slot, start.elapsed(), schedule.every);
    }
    log
}

/// Seeded rounds of victims (see the module documentation).
struct Victims {
    names: Vec<String>,
    round: Vec<String>,
    rng: StdRng,
}

impl Victims {
    fn new(names: Vec<String>, seed: u64) -> Victims {
        Victims { round: Vec::with_capacity(names.len()), names, rng: StdRng::seed_from_u64(seed) }
    }

    fn next(&mut self) -> String {
        if self.round.is_empty() {
            self.round.extend(self.names.iter().cloned());
            self.round.shuffle(&mut self.rng);
        }
        self.round.pop().expect("a cluster has at least one node")
    }
}

/// The slot after `slot`, or if the recovery ran past it, the first one still ahead:
/// slots missed while a kill recovered are skipped, not made up for with kills in a row.
fn next_slot(slot: u32, elapsed: Duration, every: Duration) -> u32 {
    let passed = elapsed.as_nanos() / every.as_nanos().max(1);
    (slot + 1).max(u32::try_from(passed + 1).unwrap_or(u32::MAX))
}

/// Sleeps until `due`; false if the load stopped meanwhile.
fn sleep_until(due: Instant, load_running: &impl Fn() -> bool) -> bool {
    while Instant::now() < due {
        if !load_running() {
            return false;
        }
        std::thread::sleep(due.saturating_duration_since(Instant::now()).min(Duration::from_millis(50)));
    }
    load_running()
}

fn kill_and_recover(
    cluster: &mut LocalCluster,
    layout: &BankLayout,
    probe: &LoadProbe,
    victim: &str,
    load_running: &impl Fn() -> bool,
) -> Kill {
    let (role, leader) = role_and_leader(cluster, victim);
    let at = Instant::now();
    let mut kill =
        Kill { process: victim.to_string(), role, leader, pid: 0, at, restarted: None, recovered: None, error: None };
    match cluster.kill(victim) {
        Ok(pid) => kill.pid = pid,
        Err(err) => {
            kill.error = Some(format!("could not kill it: {err:#}"));
            return kill;
        }
    }
    let restarted = match cluster.restart(victim) {
        Ok(restarted) => restarted,
        Err(err) => {
            kill.error = Some(format!("did not restart: {err:#}"));
            return kill;
        }
    };
    kill.restarted = Some(restarted);
    let filter = match layout.participants.iter().position(|(_, name)| name == victim) {
        Some(participant) => CommitFilter::Touching { participant, sent_since: at },
        None => CommitFilter::Any,
    };
    probe.watch(restarted.listening, filter);
    let deadline = at + RECOVERY_LIMIT;
    kill.recovered = loop {
        if let Some(seen) = probe.seen() {
            break Some(seen);
        }
        if Instant::now() >= deadline {
            kill.error = Some(format!("the load saw no commit proving recovery within {RECOVERY_LIMIT:?}"));
            break None;
        }
        if !load_running() {
            kill.error = Some("the load ended before it recovered".to_string());
            break None;
        }
        std::thread::sleep(POLL);
    };
    probe.clear();
    kill
}

/// The group's leader and the term it announced (`None` without a group or a leader).
pub fn leader(cluster: &LocalCluster) -> Option<(String, u64)> {
    cluster.coordinator_roles().into_iter().find_map(|(name, _, role)| match role {
        CoordinatorRole::Leader(leads) => Some((name, leads.term)),
        _ => None,
    })
}

/// What `victim` is, and the group's leader (with its term), as last announced.
fn role_and_leader(cluster: &LocalCluster, victim: &str) -> (VictimRole, Option<(String, u64)>) {
    let roles = cluster.coordinator_roles();
    let leader = leader(cluster);
    let role = match roles.iter().find(|(name, _, _)| name == victim).map(|(_, _, role)| role) {
        None => VictimRole::Participant,
        Some(_) if roles.len() == 1 => VictimRole::Coordinator,
        Some(CoordinatorRole::Leader(_)) => VictimRole::Leader,
        Some(_) => VictimRole::Follower,
    };
    (role, leader)
}

/// One line per kill on stderr: the run's progress display.
fn report(kill: &Kill, start: Instant, committed: u64) {
    let at = kill.at.saturating_duration_since(start).as_secs_f64();
    let after = |t: Instant| t.saturating_duration_since(kill.at).as_secs_f64();
    let mut line = format!("chaos: {at:7.2} s  SIGKILL {} ({}, pid {})", kill.process, kill.role.label(), kill.pid);
    if let Some(restarted) = &kill.restarted {
        line += &format!("; listening again after {:.3} s (pid {})", after(restarted.listening), restarted.pid);
    }
    if let Some(seen) = &kill.recovered {
        line += &format!("; recovered after {:.3} s", after(seen.at));
    }
    if let Some(error) = &kill.error {
        line += &format!("; {error}");
    }
    eprintln!("{line}; {committed} commits so far");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_missed_during_a_recovery_are_skipped() {
        let every = Duration::from_secs(5);
        assert_eq!(next_slot(1, Duration::from_millis(7_000), every), 2, "recovered before slot 2");
        assert_eq!(next_slot(1, Duration::from_millis(10_000), every), 3, "slot 2 is now: skipped");
        assert_eq!(next_slot(2, Duration::from_millis(23_000), every), 5);
    }

    #[test]
    fn every_round_of_victims_kills_each_process_once_in_a_seeded_order() {
        let names: Vec<String> = ["p1", "p2", "p3", "c1"].map(String::from).to_vec();
        let draw = |seed| {
            let mut victims = Victims::new(names.clone(), seed);
            (0..12).map(|_| victims.next()).collect::<Vec<_>>()
        };
        let kills = draw(1);
        for round in kills.chunks(4) {
            let mut sorted = round.to_vec();
            sorted.sort();
            assert_eq!(sorted, ["c1", "p1", "p2", "p3"], "{kills:?}");
        }
        assert_eq!(draw(1), kills, "the same seed, the same victims");
        assert_ne!(draw(2), kills);
    }
}
