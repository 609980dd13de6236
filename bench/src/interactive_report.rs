//! The interactive run's section of the report: aborts by the reasons an application
//! acts on, its retries, and the coordinator's deadlock detection and lock-wait figures.

use std::collections::BTreeMap;
use std::fmt::Write;

use serde::Serialize;

use crate::interactive::{DeadlockFigures, abort_groups};
use crate::load::{LoadResult, format_us};
use crate::report::esc;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct InteractiveSection {
    /// Aborted attempts: deadlock, lock timeout, insufficient funds, other.
    pub aborts: BTreeMap<&'static str, u64>,
    /// Transfers run again after a Deadlock or LockTimeout abort.
    pub retries: u64,
    /// Transfers given up after their last attempt.
    pub gave_up: u64,
    /// The coordinator's figures (`None`: its metrics were not scraped).
    pub deadlocks: Option<DeadlockFigures>,
}

impl InteractiveSection {
    /// `None` for a one-shot run.
    pub fn of(result: &LoadResult) -> Option<InteractiveSection> {
        let totals = result.interactive?;
        Some(InteractiveSection {
            aborts: abort_groups(&result.aborts_by_reason).into_iter().collect(),
            retries: totals.retries,
            gave_up: totals.gave_up,
            deadlocks: result.deadlocks.clone(),
        })
    }

    fn rows(&self) -> Vec<(&'static str, String)> {
        let aborts: Vec<String> = ["deadlock", "lock timeout", "insufficient funds", "other"]
            .iter()
            .map(|group| format!("{group} {}", self.aborts.get(group).copied().unwrap_or(0)))
            .collect();
        let mut rows = vec![
            ("aborts", aborts.join(", ")),
            ("retries", format!("{} transfers run again, {} given up", self.retries, self.gave_up)),
        ];
        let micros = |value: Option<f64>| value.map_or("-".to_string(), |us| format_us(us.round() as u64));
        match &self.deadlocks {
            None => rows.push(("deadlocks", "the coordinator's metrics were not read".to_string())),
            Some(d) => {
                rows.push(("deadlocks", format!("{} detected ({} timed)", d.detected, d.timed)));
                rows.push((
                    "detection",
                    format!(
                        "p50 {}  p90 {}  p99 {}  max {}  (WaitFor read to victim's abort sent)",
                        micros(d.detection_p50_us),
                        micros(d.detection_p90_us),
                        micros(d.detection_p99_us),
                        micros(d.detection_max_us)
                    ),
                ));
                rows.push((
                    "lock waits",
                    format!(
                        "{} timed, p50 {}  p99 {}",
                        d.lock_waits,
                        micros(d.lock_wait_p50_us),
                        micros(d.lock_wait_p99_us)
                    ),
                ));
            }
        }
        rows
    }

    /// Lines of the terminal summary, aligned with the others.
    pub fn summary(&self, out: &mut String) {
        for (name, value) in self.rows() {
            let _ = writeln!(out, "{name:<11} {value}");
        }
    }

    pub fn html(&self, h: &mut String) {
        h.push_str("<h2>Interactive transactions</h2>\n<table>");
        for (name, value) in self.rows() {
            let _ = write!(h, "<tr><th>{}</th><td>{}</td></tr>", esc(name), esc(&value));
        }
        h.push_str("</table>\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_names_every_figure() {
        let section = InteractiveSection {
            aborts: [("deadlock", 4), ("lock timeout", 1), ("insufficient funds", 0), ("other", 0)]
                .into_iter()
                .collect(),
            retries: 5,
            gave_up: 0,
            deadlocks: Some(DeadlockFigures {
                detected: 4,
                timed: 4,
                detection_p50_us: Some(40.0),
                detection_p90_us: Some(90.0),
                detection_p99_us: Some(99.0),
                detection_max_us: Some(1500.0),
                lock_waits: 9,
                lock_wait_p50_us: Some(2000.0),
                lock_wait_p99_us: None,
            }),
        };
        let mut out = String::new();
        section.summary(&mut out);
        assert!(out.contains("deadlock 4, lock timeout 1, insufficient funds 0, other 0"), "{out}");
        assert!(out.contains("4 detected (4 timed)"), "{out}");
        assert!(out.contains("p50 40µs  p90 90µs  p99 99µs  max 1.50ms"), "{out}");
        assert!(out.contains("9 timed, p50 2.00ms  p99 -"), "{out}");
        let mut html = String::new();
        section.html(&mut html);
        assert!(html.contains("<h2>Interactive transactions</h2>"));
    }
}
