//! Turns what a chaos run measured (the kill log, commit counts at the phase boundaries, the
//! settling) into the report's chaos section and its list of violations.
//!
//! Phases, by the load generator's commit count taken at each boundary: before = from the
//! load's start to the first kill; during = from the first kill to the last kill's recovery;
//! after = from that recovery to the end of sending. A run whose last kill did not recover
//! has no after phase: its during phase runs to the end of sending.

use std::time::{Duration, Instant};

use twophase_bench::{ChaosReport, KillEvent, PhaseThroughput, RecoveryStats};

use super::monkey::{KillLog, Schedule, VictimRole};

/// Said in the report, so that nobody has to guess what the recovery times mean.
pub const RECOVERY_DEFINITION: &str = "from the SIGKILL until both (a) the restarted process printed its \
`listening on` line and (b) after that the load generator received a commit proving it serves again: for a \
participant, a committed transaction that touched it and was first sent after the kill (so the restarted \
process voted for it); for the coordinator, any commit (only the restarted one can decide it). Measured on \
the chaos process's monotonic clock; a commit counts when a load thread receives it (its poll slice is 5 ms).";

/// What the run measured besides the kill log.
pub struct Measured {
    /// The load's start: time zero of the report.
    pub start: Instant,
    /// When the load stopped sending, and the commit count then.
    pub sends_end: (Instant, u64),
    pub settled_after: Option<Duration>,
    /// Problems found outside the kill log (unexpected exits, unsettled participants).
    pub violations: Vec<String>,
}

pub fn build(schedule: &Schedule, log: &KillLog, measured: Measured) -> ChaosReport {
    let since = |t: Instant| t.saturating_duration_since(measured.start).as_secs_f64();
    let after = |from: Instant, to: Instant| to.saturating_duration_since(from).as_secs_f64();
    let kills: Vec<KillEvent> = log
        .kills
        .iter()
        .map(|kill| KillEvent {
            process: kill.process.clone(),
            pid: kill.pid,
            at_s: since(kill.at),
            restarted_pid: kill.restarted.map(|r| r.pid),
            listening_after_s: kill.restarted.map(|r| after(kill.at, r.listening)),
            recovered_after_s: kill.recovered.map(|seen| after(kill.at, seen.at)),
            error: kill.error.clone(),
        })
        .collect();
    let mut violations: Vec<String> = log
        .kills
        .iter()
        .filter_map(|kill| {
            Some(format!("{} killed at {:.2} s: {}", kill.process, since(kill.at), kill.error.as_ref()?))
        })
        .collect();
    violations.extend(measured.violations);
    let samples: Vec<f64> = kills.iter().filter_map(|kill| kill.recovered_after_s).collect();
    let restarts = log.kills.iter().filter(|kill| kill.restarted.is_some()).count() as u64;
    ChaosReport {
        kill_every_s: schedule.every.as_secs_f64(),
        kill_window_s: schedule.window.as_secs_f64(),
        seed: schedule.seed,
        recovery_definition: RECOVERY_DEFINITION.to_string(),
        restarts,
        failed_restarts: log.kills.iter().filter(|kill| kill.pid != 0 && kill.restarted.is_none()).count() as u64,
        recovery_s: RecoveryStats::of(&samples),
        phases: phases(log, measured.start, measured.sends_end),
        settled_after_s: measured.settled_after.map(|d| d.as_secs_f64()),
        kills,
        violations,
    }
}

fn phases(log: &KillLog, start: Instant, sends_end: (Instant, u64)) -> Vec<PhaseThroughput> {
    let since = |t: Instant| t.saturating_duration_since(start).as_secs_f64();
    let (end_at, end_count) = sends_end;
    let Some((first_at, first_count)) = log.first_kill else {
        return vec![PhaseThroughput::new(
            "no kills",
            "the whole run (nothing was killed)",
            0.0,
            since(end_at),
            end_count,
        )];
    };
    let mut phases =
        vec![PhaseThroughput::new("before kills", "load start to first kill", 0.0, since(first_at), first_count)];
    match log.kills.last().and_then(|kill| kill.recovered) {
        Some(last) => {
            phases.push(PhaseThroughput::new(
                "during kills",
                "first kill to the last kill's recovery",
                since(first_at),
                since(last.at),
                last.committed.saturating_sub(first_count),
            ));
            phases.push(PhaseThroughput::new(
                "after kills",
                "last recovery to the end of sending",
                since(last.at),
                since(end_at),
                end_count.saturating_sub(last.committed),
            ));
        }
        None => phases.push(PhaseThroughput::new(
            "during kills",
            "first kill to the end of sending (the last kill did not recover)",
            since(first_at),
            since(end_at),
            end_count.saturating_sub(first_count),
        )),
    }
    phases
}

/// One line per victim role: kills, recoveries (min / median / max) and, for a group's
/// followers, how many were followed by a change of leader before the next kill (or the
/// end: `leader_at_end`) — a follower kill should never depose a healthy leader.
pub fn by_role(log: &KillLog, leader_at_end: Option<(String, u64)>) -> Vec<String> {
    let mut roles: Vec<VictimRole> = log.kills.iter().map(|kill| kill.role).collect();
    roles.sort();
    roles.dedup();
    let mut lines = Vec::new();
    for role in roles {
        let kills: Vec<usize> = (0..log.kills.len()).filter(|&i| log.kills[i].role == role).collect();
        let mut recovered: Vec<f64> = kills
            .iter()
            .filter_map(|&i| {
                let kill = &log.kills[i];
                Some(kill.recovered?.at.saturating_duration_since(kill.at).as_secs_f64())
            })
            .collect();
        recovered.sort_by(f64::total_cmp);
        let mut line = format!("kills of a {:<11} {:3}", role.label(), kills.len());
        if let (Some(min), Some(max)) = (recovered.first(), recovered.last()) {
            let median = recovered[recovered.len() / 2];
            line += &format!(
                "   recovered {} of them: min {min:.3} s  median {median:.3} s  max {max:.3} s",
                recovered.len()
            );
        }
        if role == VictimRole::Follower {
            let moved = kills.iter().filter(|&&i| leader_moved_after(log, i, &leader_at_end)).count();
            line += &format!("   leader changed before the next kill: {moved}");
        }
        lines.push(line);
    }
    lines
}

/// Whether the leader announced before kill `index` differs from the one before the next
/// kill (or at the end).
fn leader_moved_after(log: &KillLog, index: usize, leader_at_end: &Option<(String, u64)>) -> bool {
    let next = log.kills.get(index + 1).map_or(leader_at_end, |kill| &kill.leader);
    log.kills[index].leader.is_some() && &log.kills[index].leader != next
}

#[cfg(test)]
mod tests {
    use twophase_bench::Seen;

    use super::*;
    use crate::chaos::monkey::Kill;
    use crate::cluster::Restarted;

    fn kill(start: Instant, at_ms: u64, recovered: Option<(u64, u64)>) -> Kill {
        let t = |ms| start + Duration::from_millis(ms);
        Kill {
            process: "p2".into(),
            role: VictimRole::Participant,
            leader: None,
            pid: 42,
            at: t(at_ms),
            restarted: Some(Restarted { pid: 43, listening: t(at_ms + 100) }),
            recovered: recovered.map(|(ms, committed)| Seen { at: t(ms), committed }),
            error: recovered.is_none().then(|| "no commit".to_string()),
        }
    }

    #[test]
    fn phases_split_at_the_first_kill_and_the_last_recovery() {
        let start = Instant::now();
        let schedule = Schedule { every: Duration::from_secs(1), window: Duration::from_secs(3), seed: 1 };
        let log = KillLog {
            kills: vec![kill(start, 1000, Some((1500, 1200))), kill(start, 2000, Some((3000, 1800)))],
            first_kill: Some((start + Duration::from_secs(1), 1000)),
        };
        let measured = Measured {
            start,
            sends_end: (start + Duration::from_secs(5), 3800),
            settled_after: Some(Duration::from_millis(20)),
            violations: Vec::new(),
        };
        let report = build(&schedule, &log, measured);
        assert!(report.passed());
        let tps: Vec<(String, f64)> = report.phases.iter().map(|p| (p.phase.clone(), p.tx_per_s)).collect();
        assert_eq!(
            tps,
            [
                ("before kills".to_string(), 1000.0),
                ("during kills".to_string(), 400.0),
                ("after kills".to_string(), 1000.0)
            ]
        );
        assert_eq!(report.kills[1].recovered_after_s, Some(1.0));
        assert_eq!(report.kills[1].listening_after_s, Some(0.1));
        assert_eq!(report.recovery_s.as_ref().unwrap().max, 1.0);
        assert_eq!(report.restarts, 2);
    }

    #[test]
    fn a_kill_without_recovery_is_a_violation_and_ends_the_during_phase_at_the_end() {
        let start = Instant::now();
        let schedule = Schedule { every: Duration::from_secs(1), window: Duration::from_secs(3), seed: 1 };
        let log =
            KillLog { kills: vec![kill(start, 1000, None)], first_kill: Some((start + Duration::from_secs(1), 10)) };
        let measured = Measured {
            start,
            sends_end: (start + Duration::from_secs(2), 10),
            settled_after: None,
            violations: vec![],
        };
        let report = build(&schedule, &log, measured);
        assert!(!report.passed());
        assert!(report.violations[0].starts_with("p2 killed at 1.00 s: no commit"), "{:?}", report.violations);
        assert_eq!(report.phases.len(), 2);
        assert_eq!(report.phases[1].to_s, 2.0);
    }

    #[test]
    fn follower_kills_count_the_leader_changes_that_followed_them() {
        let start = Instant::now();
        let member = |name: &str, role, leader: (&str, u64), at_ms| Kill {
            process: name.into(),
            role,
            leader: Some((leader.0.into(), leader.1)),
            ..kill(start, at_ms, Some((at_ms + 300, 1)))
        };
        let log = KillLog {
            kills: vec![
                member("c2", VictimRole::Follower, ("c1", 1), 1000),
                member("c3", VictimRole::Follower, ("c1", 1), 2000),
                member("c1", VictimRole::Leader, ("c1", 2), 3000),
                member("c2", VictimRole::Follower, ("c3", 3), 4000),
            ],
            first_kill: Some((start + Duration::from_secs(1), 10)),
        };
        let lines = by_role(&log, Some(("c3".into(), 3)));
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(lines[0].starts_with("kills of a leader") && lines[0].contains("median 0.300 s"), "{lines:?}");
        // The second follower kill was followed by c1's re-election in term 2: one change.
        assert!(lines[1].starts_with("kills of a follower") && lines[1].ends_with("next kill: 1"), "{lines:?}");
    }
}
