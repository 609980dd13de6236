//! Reports of a run: a human summary on stdout, `report.json` and a self-contained
//! `report.html` with inline SVG charts (no scripts, fonts or anything fetched).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Context;
use serde::Serialize;

use crate::audit::Audit;
use crate::chaos_report::ChaosReport;
use crate::interactive_report::InteractiveSection;
use crate::load::{LoadResult, LoadSettings, TimelinePoint, format_us};
use crate::svg::{Axis, Marker, Series, line_chart, marked_line_chart};

/// Nines-axis positions of the labelled percentiles: `-log10(1 - p)`.
const NINES: [(f64, &str); 5] =
    [(std::f64::consts::LOG10_2, "50"), (1.0, "90"), (2.0, "99"), (3.0, "99.9"), (4.0, "99.99")];

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub p9999: u64,
    pub max: u64,
}

/// One point of the latency-by-percentile curve.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PercentilePoint {
    pub percentile: f64,
    pub latency_us: u64,
}

/// Resident memory of one process, one sample per timeline second.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RssSeries {
    pub process: String,
    pub bytes: Vec<Option<u64>>,
}

/// A run's report. Its fields are what `report.json` holds.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Report {
    pub title: String,
    pub cluster: String,
    /// Whether the cluster fsyncs its logs. `false` means the numbers are not durable commits.
    pub fsync: bool,
    pub durability: String,
    /// How the load's connections were secured; starts with `INSECURE PLAINTEXT` when not.
    pub transport: String,
    pub mode: String,
    pub throughput_tps: f64,
    pub committed: u64,
    pub committed_read_only: u64,
    pub aborted: u64,
    pub abort_share: f64,
    pub aborts_by_reason: BTreeMap<String, u64>,
    pub latency_us: LatencySummary,
    pub latency_percentiles: Vec<PercentilePoint>,
    /// `null` when no audit ran.
    pub audit: Option<Audit>,
    pub duration_s: f64,
    pub elapsed_s: f64,
    pub drain_s: f64,
    pub connections: usize,
    pub outstanding: usize,
    pub rate: Option<u64>,
    pub accounts: u64,
    pub participants: Vec<String>,
    pub unsent_backlog: u64,
    pub settings: LoadSettings,
    pub timeline: Vec<TimelinePoint>,
    pub rss_bytes: Vec<RssSeries>,
    /// Only in a chaos run's report (absent from the JSON otherwise).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chaos: Option<ChaosReport>,
    /// Only in an interactive run's report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interactive: Option<InteractiveSection>,
}

impl Report {
    pub fn new(result: &LoadResult, audit: Option<&Audit>, fsync: bool, cluster_description: String) -> Report {
        let h = &result.latency_us;
        let q = |quantile: f64| if h.is_empty() { 0 } else { h.value_at_quantile(quantile) };
        let latency_us = LatencySummary {
            count: h.len(),
            min: if h.is_empty() { 0 } else { h.min() },
            mean: if h.is_empty() { 0.0 } else { h.mean() },
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            p9999: q(0.9999),
            max: if h.is_empty() { 0 } else { h.max() },
        };
        // The curve up to the percentile the sample count supports (at most 99.999).
        let top = if h.len() > 1 { (h.len() as f64).log10().clamp(1.0, 5.0) } else { 0.0 };
        let mut latency_percentiles = Vec::new();
        if !h.is_empty() {
            let steps = (top / 0.05).ceil() as usize;
            for i in 0..=steps {
                let x = (i as f64 * 0.05).min(top);
                let quantile = 1.0 - 10f64.powf(-x);
                latency_percentiles.push(PercentilePoint { percentile: quantile * 100.0, latency_us: q(quantile) });
            }
        }
        let settings = result.settings.clone();
        let finished = result.committed + result.aborted;
        let rss_bytes = result
            .rss_processes
            .iter()
            .enumerate()
            .map(|(i, process)| RssSeries {
                process: process.clone(),
                bytes: result.timeline.iter().map(|p| p.rss_bytes.get(i).copied().flatten()).collect(),
            })
            .collect();
        Report {
            title: format!("twophase bank workload — {cluster_description}"),
            cluster: cluster_description,
            fsync,
            durability: if fsync {
                "fsync on: every commit was durable (fdatasync'd) before it was acknowledged".to_string()
            } else {
                "UNSAFE: fsync OFF (--unsafe-no-fsync): acknowledged commits were NOT durable; \
                 these numbers are not comparable with durable ones"
                    .to_string()
            },
            transport: if settings.tls {
                "mutual TLS: every connection authenticated by the cluster's CA".to_string()
            } else {
                "INSECURE PLAINTEXT (--insecure-plaintext): connections were neither encrypted nor \
                 authenticated"
                    .to_string()
            },
            mode: match settings.rate {
                Some(rate) => {
                    let ticks = match settings.send_tick_us {
                        Some(tick_us) if tick_us > 0 => format!(", sent on {tick_us} µs ticks"),
                        _ => String::new(),
                    };
                    format!("open loop at {rate} tx/s{ticks} (latency from the intended send time)")
                }
                None => "closed loop".to_string(),
            },
            throughput_tps: result.throughput_tps(),
            committed: result.committed,
            committed_read_only: result.committed_read_only,
            aborted: result.aborted,
            abort_share: if finished > 0 { result.aborted as f64 / finished as f64 } else { 0.0 },
            aborts_by_reason: result.aborts_by_reason.clone(),
            latency_us,
            latency_percentiles,
            audit: audit.cloned(),
            duration_s: settings.duration_s,
            elapsed_s: result.elapsed.as_secs_f64(),
            drain_s: result.drain.as_secs_f64(),
            connections: settings.connections,
            outstanding: settings.outstanding,
            rate: settings.rate,
            accounts: settings.accounts,
            participants: settings.participants.clone(),
            unsent_backlog: result.unsent_backlog,
            timeline: result.timeline.clone(),
            rss_bytes,
            settings,
            chaos: None,
            interactive: InteractiveSection::of(result),
        }
    }

    /// Adds a chaos run's section: its summary, its tables, and its kills marked on the
    /// charts over time.
    pub fn with_chaos(mut self, chaos: ChaosReport) -> Report {
        self.chaos = Some(chaos);
        self
    }

    /// The summary as text (what [`print_summary`](Self::print_summary) prints).
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let l = &self.latency_us;
        let _ = writeln!(out, "{}", self.title);
        if self.fsync {
            let _ = writeln!(out, "durability  {}", self.durability);
        } else {
            let _ = writeln!(out, "!!! {} !!!", self.durability);
        }
        if self.settings.tls {
            let _ = writeln!(out, "transport   {}", self.transport);
        } else {
            let _ = writeln!(out, "!!! {} !!!", self.transport);
        }
        // One-shot transfers are the default and go unnamed; the others say what they are.
        let kind = match self.settings.workload.as_str() {
            "one-shot" => String::new(),
            other => format!("{other} transfers, "),
        };
        let _ = writeln!(
            out,
            "workload    {kind}{}, {} connections x {} outstanding, {:.1} s, {} accounts on {} participants ({})",
            self.mode,
            self.connections,
            self.outstanding,
            self.duration_s,
            self.accounts,
            self.participants.len(),
            self.participants.join(", ")
        );
        let _ = writeln!(
            out,
            "committed   {} ({} read-only)   throughput {:.0} tx/s over {:.2} s (drain {:.3} s)",
            self.committed, self.committed_read_only, self.throughput_tps, self.elapsed_s, self.drain_s
        );
        let reasons = if self.aborts_by_reason.is_empty() {
            String::new()
        } else {
            let list: Vec<String> = self.aborts_by_reason.iter().map(|(r, n)| format!("{r} {n}")).collect();
            format!(": {}", list.join(", "))
        };
        let _ = writeln!(out, "aborted     {} ({:.2}%){reasons}", self.aborted, self.abort_share * 100.0);
        let _ = writeln!(
            out,
            "latency     p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
            format_us(l.p50),
            format_us(l.p90),
            format_us(l.p99),
            format_us(l.p999),
            format_us(l.max),
            l.count
        );
        if let Some(interactive) = &self.interactive {
            interactive.summary(&mut out);
        }
        if self.unsent_backlog > 0 {
            let _ = writeln!(
                out,
                "BACKLOG     {} scheduled sends were never made: the cluster could not keep up with the rate",
                self.unsent_backlog
            );
        }
        match &self.audit {
            None => {
                let _ = writeln!(out, "audit       not run");
            }
            Some(audit) => {
                let _ = writeln!(out, "audit       {}", audit.detail);
                for example in &audit.examples {
                    let _ = writeln!(out, "            - {example}");
                }
            }
        }
        if let Some(chaos) = &self.chaos {
            chaos.summary(&mut out);
        }
        out
    }

    pub fn print_summary(&self) {
        print!("{}", self.summary());
    }

    /// Writes `report.json` and `report.html` into `dir` (created if needed).
    pub fn write(&self, dir: &Path) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let json = serde_json::to_string_pretty(self).context("encoding the report")?;
        let path = dir.join("report.json");
        std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
        let path = dir.join("report.html");
        std::fs::write(&path, self.html()).with_context(|| format!("writing {}", path.display()))?;
        Ok(())
    }

    /// The report as one self-contained HTML page.
    pub fn html(&self) -> String {
        let mut h = String::with_capacity(64 * 1024);
        let _ = write!(
            h,
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title>\n<style>{}</style></head><body>\n",
            esc(&self.title),
            CSS
        );
        let _ = writeln!(h, "<h1>{}</h1>", esc(&self.title));
        if self.fsync {
            let _ = writeln!(h, "<p class=\"safe\">{}</p>", esc(&self.durability));
        } else {
            let _ = writeln!(h, "<p class=\"unsafe\">&#9888; {}</p>", esc(&self.durability));
        }
        if !self.settings.tls {
            let _ = writeln!(h, "<p class=\"unsafe\">&#9888; {}</p>", esc(&self.transport));
        }
        match &self.audit {
            None => {
                let _ = writeln!(h, "<p class=\"neutral\">Audit: not run.</p>");
            }
            Some(audit) => {
                let class = if audit.passed { "safe" } else { "unsafe" };
                let _ = write!(h, "<p class=\"{class}\">Audit: {}", esc(&audit.detail));
                if !audit.examples.is_empty() {
                    h.push_str("<ul>");
                    for example in &audit.examples {
                        let _ = write!(h, "<li>{}</li>", esc(example));
                    }
                    h.push_str("</ul>");
                }
                h.push_str("</p>\n");
            }
        }
        self.html_summary(&mut h);
        if let Some(interactive) = &self.interactive {
            interactive.html(&mut h);
        }
        if let Some(chaos) = &self.chaos {
            chaos.html(&mut h);
        }
        self.html_settings(&mut h);
        h.push_str("<h2>Throughput</h2>\n");
        if let Some(chaos) = &self.chaos {
            h.push_str(&chaos.chart_caption());
        }
        h.push_str(&self.throughput_chart());
        h.push_str("<h2>Latency by percentile</h2>\n");
        h.push_str(&self.percentile_chart());
        h.push_str("<h2>Latency over time</h2>\n");
        h.push_str(&self.latency_timeline_chart());
        h.push_str("<h2>Resident memory</h2>\n");
        h.push_str(&self.rss_chart());
        h.push_str("</body></html>\n");
        h
    }

    fn html_summary(&self, h: &mut String) {
        let l = &self.latency_us;
        let reasons = if self.aborts_by_reason.is_empty() {
            "none".to_string()
        } else {
            self.aborts_by_reason.iter().map(|(r, n)| format!("{r}: {n}")).collect::<Vec<_>>().join(", ")
        };
        let rows = [
            ("Throughput", format!("{:.0} committed tx/s", self.throughput_tps)),
            ("Committed", format!("{} ({} read-only)", self.committed, self.committed_read_only)),
            ("Aborted", format!("{} ({:.2}%)", self.aborted, self.abort_share * 100.0)),
            ("Aborts by reason", reasons),
            ("Latency p50", format_us(l.p50)),
            ("Latency p90", format_us(l.p90)),
            ("Latency p99", format_us(l.p99)),
            ("Latency p99.9", format_us(l.p999)),
            ("Latency p99.99", format_us(l.p9999)),
            ("Latency max", format_us(l.max)),
            ("Elapsed", format!("{:.2} s (drain {:.3} s)", self.elapsed_s, self.drain_s)),
            ("Unsent open-loop backlog", self.unsent_backlog.to_string()),
        ];
        h.push_str("<h2>Summary</h2>\n<table>");
        for (name, value) in rows {
            let _ = write!(h, "<tr><th>{}</th><td>{}</td></tr>", esc(name), esc(&value));
        }
        h.push_str("</table>\n");
    }

    fn html_settings(&self, h: &mut String) {
        let s = &self.settings;
        let opt = |v: Option<f64>| v.map_or("none (uniform)".to_string(), |v| v.to_string());
        let rows = [
            ("Cluster", self.cluster.clone()),
            ("Durability", if self.fsync { "fsync on".to_string() } else { "UNSAFE: fsync off".to_string() }),
            ("Transport", self.transport.clone()),
            ("Coordinator", format!("{} (cluster name '{}')", s.coordinator, s.cluster)),
            ("Mode", self.mode.clone()),
            ("Workload", s.workload.clone()),
            ("Hot accounts", s.hot.map_or("none (all accounts)".to_string(), |hot| hot.to_string())),
            ("Duration", format!("{:.1} s", s.duration_s)),
            ("Connections", s.connections.to_string()),
            ("Outstanding per connection", s.outstanding.to_string()),
            ("Accounts", format!("{} (initial balance {})", s.accounts, s.initial_balance)),
            ("Participants", s.participants.join(", ")),
            ("Skew (zipf exponent)", opt(s.skew)),
            ("Cross-participant share", s.cross_share.to_string()),
            ("Read-only share", s.read_only_share.to_string()),
            ("Transfer amounts", format!("1..={}", s.max_amount)),
            ("Seed", s.seed.to_string()),
            (
                "Sampled processes",
                if s.sampled_processes.is_empty() { "none".into() } else { s.sampled_processes.join(", ") },
            ),
        ];
        h.push_str("<h2>Settings</h2>\n<table>");
        for (name, value) in rows {
            let _ = write!(h, "<tr><th>{}</th><td>{}</td></tr>", esc(name), esc(&value));
        }
        h.push_str("</table>\n");
    }

    fn seconds_axis(&self) -> Axis {
        let end = self.timeline.last().map_or(1.0, |p| p.second as f64 + p.span_s).max(1.0);
        Axis::linear("time since start (s)", 0.0, end)
    }

    fn throughput_chart(&self) -> String {
        let commits: Vec<(f64, f64)> = self.timeline.iter().map(|p| (p.second as f64 + p.span_s, p.tx_per_s)).collect();
        let aborts: Vec<(f64, f64)> =
            self.timeline.iter().map(|p| (p.second as f64 + p.span_s, p.aborts as f64 / p.span_s)).collect();
        let top = commits.iter().chain(&aborts).map(|p| p.1).fold(0.0, f64::max).max(1.0);
        let y = Axis::linear("transactions per second", 0.0, top * 1.05);
        marked_line_chart(
            "throughput-chart",
            "Committed and aborted transactions per second",
            &self.seconds_axis(),
            &y,
            &[Series::new("committed tx/s", "#1f6feb", commits), Series::new("aborted tx/s", "#d1242f", aborts)],
            &self.markers(),
        )
    }

    fn percentile_chart(&self) -> String {
        let points: Vec<(f64, f64)> = self
            .latency_percentiles
            .iter()
            .map(|p| (-(1.0 - p.percentile / 100.0).max(1e-9).log10(), (p.latency_us.max(1) as f64).log10()))
            .collect();
        let x_max = points.last().map_or(4.0, |p| p.0).max(1.0);
        let mut x = Axis::linear("percentile (log scale of nines)", 0.0, x_max);
        x.ticks = NINES
            .iter()
            .filter(|(pos, _)| *pos <= x_max + 1e-9)
            .map(|(pos, label)| (*pos, label.to_string()))
            .collect();
        let y = log_latency_axis(points.iter().map(|p| p.1));
        line_chart("percentile-chart", "Latency by percentile", &x, &y, &[Series::new("latency", "#8250df", points)])
    }

    fn latency_timeline_chart(&self) -> String {
        let at = |p: &TimelinePoint, v: u64| (p.second as f64 + p.span_s, (v.max(1) as f64).log10());
        let p50: Vec<(f64, f64)> =
            self.timeline.iter().filter(|p| p.commits + p.aborts > 0).map(|p| at(p, p.p50_us)).collect();
        let p99: Vec<(f64, f64)> =
            self.timeline.iter().filter(|p| p.commits + p.aborts > 0).map(|p| at(p, p.p99_us)).collect();
        let y = log_latency_axis(p50.iter().chain(&p99).map(|p| p.1));
        marked_line_chart(
            "latency-timeline-chart",
            "Latency per second (p50 and p99)",
            &self.seconds_axis(),
            &y,
            &[Series::new("p50", "#1a7f37", p50), Series::new("p99", "#bc4c00", p99)],
            &self.markers(),
        )
    }

    /// Moments to mark on the charts over time: a chaos run's kills, shaded until recovered.
    fn markers(&self) -> Vec<Marker> {
        self.chaos.as_ref().map_or_else(Vec::new, ChaosReport::markers)
    }

    fn rss_chart(&self) -> String {
        const COLORS: [&str; 6] = ["#1f6feb", "#d1242f", "#1a7f37", "#8250df", "#bc4c00", "#57606a"];
        let mib = 1024.0 * 1024.0;
        let series: Vec<Series> = self
            .rss_bytes
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let points = self
                    .timeline
                    .iter()
                    .zip(&s.bytes)
                    .filter_map(|(p, b)| b.map(|b| (p.second as f64 + p.span_s, b as f64 / mib)))
                    .collect();
                Series::new(&s.process, COLORS[i % COLORS.len()], points)
            })
            .collect();
        if series.iter().all(|s| s.points.is_empty()) {
            return "<p class=\"neutral\">No process memory was sampled.</p>\n".to_string();
        }
        let top = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).fold(0.0, f64::max).max(1.0);
        let y = Axis::linear("resident memory (MiB)", 0.0, top * 1.1);
        line_chart("rss-chart", "Resident memory (VmRSS) per process", &self.seconds_axis(), &y, &series)
    }
}

/// A log10 latency axis with decade ticks in human units (values are log10 of µs).
fn log_latency_axis(values: impl Iterator<Item = f64>) -> Axis {
    let (mut lo, mut hi) = (f64::MAX, f64::MIN);
    for v in values {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if lo > hi {
        (lo, hi) = (0.0, 3.0);
    }
    let (lo, hi) = (lo.floor().max(0.0), hi.ceil().max(lo.floor() + 1.0));
    let mut axis = Axis::linear("latency (log scale)", lo, hi);
    axis.ticks = (lo as i32..=hi as i32).map(|d| (d as f64, format_us(10u64.pow(d as u32)))).collect();
    axis
}

/// Escapes text for HTML.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const CSS: &str = "body{font-family:system-ui,-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;margin:24px auto;\
max-width:1100px;color:#1f2328;padding:0 16px}h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #d0d7de}\
table{border-collapse:collapse;margin:8px 0}th,td{border:1px solid #d0d7de;padding:4px 10px;text-align:left;font-size:14px}\
th{background:#f6f8fa;font-weight:600}.safe{background:#dafbe1;border:1px solid #1a7f37;padding:8px 12px;border-radius:6px}\
.unsafe{background:#ffebe9;border:2px solid #d1242f;padding:8px 12px;border-radius:6px;font-weight:700;color:#a40e26}\
.neutral{background:#f6f8fa;border:1px solid #d0d7de;padding:8px 12px;border-radius:6px}svg{display:block;margin:8px 0}\
ul{margin:4px 0 0 0;font-weight:400}";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::tests::{layout, result};

    #[test]
    fn a_plaintext_run_says_so_in_capitals_and_a_tls_run_names_its_transport() {
        let l = layout();
        let mut plaintext = result(&l, vec![0; 10]);
        plaintext.settings.tls = false;
        let report = Report::new(&plaintext, None, true, "demo".into());
        assert!(report.summary().contains("!!! INSECURE PLAINTEXT"), "{}", report.summary());
        assert!(report.html().contains("<p class=\"unsafe\">&#9888; INSECURE PLAINTEXT"));
        assert!(serde_json::to_value(&report).unwrap()["settings"]["tls"] == false);

        let mut tls = result(&l, vec![0; 10]);
        tls.settings.tls = true;
        let report = Report::new(&tls, None, true, "demo".into());
        assert!(report.summary().contains("transport   mutual TLS"), "{}", report.summary());
        assert!(!report.summary().contains("PLAINTEXT") && !report.html().contains("PLAINTEXT"));
    }
}
