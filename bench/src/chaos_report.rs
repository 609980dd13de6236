//! The chaos section of a report (`twophase chaos`): every kill and restart, the time to
//! recover from each, and throughput before, during and after the kills.
//!
//! This module only holds and renders what the chaos harness measured; it measures nothing
//! and decides nothing (the harness says what counts as a violation). Times are seconds
//! since the load started, the origin of the report's timeline.

use std::fmt::Write as _;

use serde::Serialize;

use crate::report::esc;
use crate::svg::Marker;

/// Colours of kill markers: the coordinator's kills stand out from the participants'.
const COORDINATOR_COLOR: &str = "#8250df";
const PARTICIPANT_COLOR: &str = "#d1242f";

/// What a chaos run did and measured.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ChaosReport {
    /// Interval between scheduled kills.
    pub kill_every_s: f64,
    /// Kills were scheduled at every multiple of `kill_every_s` below this.
    pub kill_window_s: f64,
    /// Seed of the choice of victims.
    pub seed: u64,
    /// What "time to recover" means, in words.
    pub recovery_definition: String,
    pub kills: Vec<KillEvent>,
    /// Killed processes that were started again and printed their `listening on` line.
    pub restarts: u64,
    pub failed_restarts: u64,
    /// Over the kills the load recovered from; `None` when there were none.
    pub recovery_s: Option<RecoveryStats>,
    pub phases: Vec<PhaseThroughput>,
    /// After the load: how long until no participant held a prepared transaction.
    pub settled_after_s: Option<f64>,
    /// Everything that went wrong besides the audit (empty when nothing did).
    pub violations: Vec<String>,
}

/// One SIGKILL and what followed it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KillEvent {
    pub process: String,
    pub pid: u32,
    pub at_s: f64,
    /// The restarted process's pid, if it started.
    pub restarted_pid: Option<u32>,
    /// From the kill until the restarted process printed its `listening on` line.
    pub listening_after_s: Option<f64>,
    /// From the kill until recovered (see [`ChaosReport::recovery_definition`]).
    pub recovered_after_s: Option<f64>,
    /// Why it did not restart or recover, if it did not.
    pub error: Option<String>,
}

/// Recovery times over the recovered kills, seconds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RecoveryStats {
    pub count: u64,
    pub min: f64,
    pub median: f64,
    pub mean: f64,
    pub max: f64,
}

impl RecoveryStats {
    /// `None` for no samples.
    pub fn of(samples: &[f64]) -> Option<RecoveryStats> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median = if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 };
        Some(RecoveryStats {
            count: n as u64,
            min: sorted[0],
            median,
            mean: sorted.iter().sum::<f64>() / n as f64,
            max: sorted[n - 1],
        })
    }
}

/// Commits acknowledged within one phase of the run.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PhaseThroughput {
    /// `before kills`, `during kills` or `after kills`.
    pub phase: String,
    /// What the phase's bounds are, in words.
    pub bounds: String,
    pub from_s: f64,
    pub to_s: f64,
    pub committed: u64,
    pub tx_per_s: f64,
}

impl PhaseThroughput {
    pub fn new(phase: &str, bounds: &str, from_s: f64, to_s: f64, committed: u64) -> PhaseThroughput {
        let span = to_s - from_s;
        PhaseThroughput {
            phase: phase.to_string(),
            bounds: bounds.to_string(),
            from_s,
            to_s,
            committed,
            tx_per_s: if span > 0.0 { committed as f64 / span } else { 0.0 },
        }
    }
}

impl ChaosReport {
    /// No violations (the audit is judged separately).
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The kills as chart markers: a line at the kill, shaded until recovered.
    pub fn markers(&self) -> Vec<Marker> {
        self.kills
            .iter()
            .map(|kill| Marker {
                x: kill.at_s,
                until: kill.recovered_after_s.map(|after| kill.at_s + after),
                label: kill.process.clone(),
                color: if kill.process.starts_with('p') { PARTICIPANT_COLOR } else { COORDINATOR_COLOR }.to_string(),
            })
            .collect()
    }

    /// Says what the marks on the charts over time are.
    pub fn chart_caption(&self) -> String {
        format!(
            "<p class=\"neutral\">Dashed lines: the {} kills (purple: the coordinator, red: a participant), \
             each labelled with its victim and shaded until the load recovered from it.</p>\n",
            self.kills.len()
        )
    }

    /// The summary lines for stdout.
    pub fn summary(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "chaos       {} kills (every {:.1} s, seed {}), {} restarts, {} failed restarts",
            self.kills.len(),
            self.kill_every_s,
            self.seed,
            self.restarts,
            self.failed_restarts
        );
        match &self.recovery_s {
            Some(r) => {
                let _ = writeln!(
                    out,
                    "recovery    {} of {} kills: min {:.3} s  median {:.3} s  mean {:.3} s  max {:.3} s",
                    r.count,
                    self.kills.len(),
                    r.min,
                    r.median,
                    r.mean,
                    r.max
                );
            }
            None => {
                let _ = writeln!(out, "recovery    no kill recovered");
            }
        }
        for phase in &self.phases {
            let _ = writeln!(
                out,
                "{:<11} {:.0} tx/s ({} commits, {:.1}..{:.1} s)",
                phase.phase, phase.tx_per_s, phase.committed, phase.from_s, phase.to_s
            );
        }
        if let Some(settled) = self.settled_after_s {
            let _ = writeln!(out, "settled     no prepared transaction left {settled:.3} s after the load");
        }
        if self.violations.is_empty() {
            let _ = writeln!(out, "chaos       PASSED: every killed process restarted and the load recovered");
        } else {
            let _ = writeln!(out, "chaos       FAILED: {} violations", self.violations.len());
            for violation in &self.violations {
                let _ = writeln!(out, "            - {violation}");
            }
        }
    }

    /// The HTML section: verdict, phases and every kill.
    pub fn html(&self, h: &mut String) {
        h.push_str("<h2>Chaos</h2>\n");
        if self.violations.is_empty() {
            h.push_str("<p class=\"safe\">Every killed process restarted and the load recovered.</p>\n");
        } else {
            h.push_str("<p class=\"unsafe\">Chaos violations:<ul>");
            for violation in &self.violations {
                let _ = write!(h, "<li>{}</li>", esc(violation));
            }
            h.push_str("</ul></p>\n");
        }
        let recovery = self.recovery_s.as_ref().map_or("none recovered".to_string(), |r| {
            format!(
                "min {:.3} s, median {:.3} s, mean {:.3} s, max {:.3} s ({} kills)",
                r.min, r.median, r.mean, r.max, r.count
            )
        });
        let rows = [
            (
                "Kills",
                format!(
                    "{} (scheduled every {:.1} s below {:.1} s; seed {})",
                    self.kills.len(),
                    self.kill_every_s,
                    self.kill_window_s,
                    self.seed
                ),
            ),
            ("Restarts", format!("{} ({} failed)", self.restarts, self.failed_restarts)),
            ("Time to recover", recovery),
            ("Recovery means", self.recovery_definition.clone()),
            (
                "Settled",
                self.settled_after_s.map_or("not reached".to_string(), |s| {
                    format!("no prepared transaction on any participant {s:.3} s after the load")
                }),
            ),
        ];
        h.push_str("<table>");
        for (name, value) in rows {
            let _ = write!(h, "<tr><th>{}</th><td>{}</td></tr>", esc(name), esc(&value));
        }
        h.push_str(
            "</table>\n<h3>Throughput by phase</h3>\n<table><tr><th>phase</th><th>from (s)</th><th>to (s)</th>\
                    <th>committed</th><th>tx/s</th><th>bounds</th></tr>",
        );
        for p in &self.phases {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{:.2}</td><td>{:.2}</td><td>{}</td><td>{:.0}</td><td>{}</td></tr>",
                esc(&p.phase),
                p.from_s,
                p.to_s,
                p.committed,
                p.tx_per_s,
                esc(&p.bounds)
            );
        }
        h.push_str(
            "</table>\n<h3>Kills</h3>\n<table><tr><th>#</th><th>at (s)</th><th>process</th><th>pid</th>\
                    <th>new pid</th><th>listening after (s)</th><th>recovered after (s)</th><th>problem</th></tr>",
        );
        let opt = |v: Option<f64>| v.map_or("—".to_string(), |v| format!("{v:.3}"));
        for (i, k) in self.kills.iter().enumerate() {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{:.2}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                i + 1,
                k.at_s,
                esc(&k.process),
                k.pid,
                k.restarted_pid.map_or("—".to_string(), |p| p.to_string()),
                opt(k.listening_after_s),
                opt(k.recovered_after_s),
                esc(k.error.as_deref().unwrap_or(""))
            );
        }
        h.push_str("</table>\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::tests::{layout, result};
    use crate::report::Report;

    fn chaos() -> ChaosReport {
        let kill = |process: &str, at_s: f64, recovered: Option<f64>| KillEvent {
            process: process.to_string(),
            pid: 10,
            at_s,
            restarted_pid: Some(11),
            listening_after_s: Some(0.1),
            recovered_after_s: recovered,
            error: recovered.is_none().then(|| "no commit within 30 s".to_string()),
        };
        ChaosReport {
            kill_every_s: 1.0,
            kill_window_s: 3.0,
            seed: 7,
            recovery_definition: "kill until listening and a commit".into(),
            kills: vec![kill("p1", 1.0, Some(0.5)), kill("c1", 2.0, None)],
            restarts: 2,
            failed_restarts: 0,
            recovery_s: RecoveryStats::of(&[0.5]),
            phases: vec![PhaseThroughput::new("before kills", "start to first kill", 0.0, 1.0, 1000)],
            settled_after_s: Some(0.2),
            violations: vec!["c1: the load saw no commit within 30 s of its restart".into()],
        }
    }

    #[test]
    fn recovery_stats_take_the_median_of_sorted_samples() {
        let r = RecoveryStats::of(&[3.0, 1.0, 2.0, 10.0]).unwrap();
        assert_eq!((r.count, r.min, r.median, r.mean, r.max), (4, 1.0, 2.5, 4.0, 10.0));
        assert!(RecoveryStats::of(&[]).is_none());
    }

    #[test]
    fn the_chaos_section_appears_only_when_present() {
        let l = layout();
        let plain = Report::new(&result(&l, vec![0; 10]), None, true, "demo".into());
        let json = serde_json::to_value(&plain).unwrap();
        assert!(json.get("chaos").is_none(), "a demo's report.json is unchanged");
        assert!(!plain.html().contains("<h2>Chaos</h2>") && !plain.summary().contains("chaos"));

        let report = plain.with_chaos(chaos());
        let json = serde_json::to_value(&report).unwrap();
        assert_eq!(json["chaos"]["kills"].as_array().unwrap().len(), 2);
        assert_eq!(json["chaos"]["kills"][0]["recovered_after_s"], 0.5);
        let summary = report.summary();
        assert!(summary.contains("chaos       2 kills"), "{summary}");
        assert!(summary.contains("FAILED: 1 violations"), "{summary}");
        let html = report.html();
        assert!(html.contains("<h2>Chaos</h2>") && html.contains("no commit within 30 s"));
        assert!(html.contains("stroke-dasharray"), "kills are marked on the throughput chart");
        assert!(html.contains(">c1</text>") && html.contains(">p1</text>"));
    }
}
