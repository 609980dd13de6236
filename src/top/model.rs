//! What `twophase top` shows, computed from two successive scrapes of every node: rates
//! and latency percentiles over the interval between them (over the node's whole life on
//! the first refresh).

use std::net::SocketAddr;
use std::time::Instant;

use twophase_bench::scrape::{self, Scrape};

/// One refresh: every node's scrape (or why it failed) and when it was taken.
#[derive(Clone, Debug)]
pub struct Round {
    pub at: Instant,
    /// `(node name, metrics address, scrape)`; the coordinator first.
    pub nodes: Vec<(String, SocketAddr, Result<Scrape, String>)>,
}

/// Latency percentiles in seconds (`None`: nothing observed in the interval).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Percentiles {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct CoordinatorView {
    pub reachable: bool,
    /// Per second over the interval; `None` on the first refresh.
    pub committed_per_s: Option<f64>,
    pub aborted_per_s: Option<f64>,
    pub busy_per_s: Option<f64>,
    pub committed_total: f64,
    pub in_flight: f64,
    pub epoch: f64,
    pub transaction: Percentiles,
    pub prepare_round: Percentiles,
    pub commit_round: Percentiles,
    /// Abort reasons with their rate (or total on the first refresh), largest first.
    pub aborts: Vec<(String, f64)>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeView {
    pub name: String,
    pub role: String,
    pub addr: String,
    /// Why its endpoint did not answer, if it did not.
    pub error: Option<String>,
    /// For a participant: whether the coordinator holds a connection to it.
    pub linked: Option<bool>,
    pub in_doubt: Option<f64>,
    pub prepared: Option<f64>,
    pub log_sync: Percentiles,
    /// The writer's write + fdatasync of one group.
    pub fsync: Percentiles,
    /// Records per durable group over the interval.
    pub group_records: Option<f64>,
    pub records_per_s: Option<f64>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct View {
    pub coordinator: CoordinatorView,
    pub nodes: Vec<NodeView>,
    /// Seconds between the two scrapes the rates come from.
    pub interval_s: Option<f64>,
}

/// Builds the view of `current`, with rates against `previous` when there is one.
pub fn build(previous: Option<&Round>, current: &Round) -> View {
    let interval_s = previous.map(|prev| current.at.duration_since(prev.at).as_secs_f64()).filter(|s| *s > 0.0);
    let earlier =
        |name: &str| previous?.nodes.iter().find(|(n, _, _)| n == name).and_then(|(_, _, scrape)| scrape.as_ref().ok());
    let mut view = View { interval_s, ..View::default() };
    let coordinator = current.nodes.first().and_then(|(name, _, scrape)| Some((name, scrape.as_ref().ok()?)));
    if let Some((name, now)) = coordinator {
        view.coordinator = coordinator_view(earlier(name), now, interval_s);
    }
    for (name, addr, scrape) in &current.nodes {
        let mut node = NodeView { name: name.clone(), addr: addr.to_string(), ..NodeView::default() };
        match scrape {
            Ok(now) => fill_node(&mut node, earlier(name), now, interval_s),
            Err(err) => node.error = Some(err.clone()),
        }
        if let Some((_, coordinator)) = coordinator
            && node.role != "coordinator"
        {
            let linked = coordinator.value("twophase_participant_connected", &[("participant", name)]);
            node.linked = linked.map(|value| value > 0.0);
        }
        view.nodes.push(node);
    }
    view
}

fn coordinator_view(before: Option<&Scrape>, now: &Scrape, interval_s: Option<f64>) -> CoordinatorView {
    let change = |name: &str, labels: &[(&str, &str)]| rate(before, now, interval_s, name, labels);
    let mut aborts: Vec<(String, f64)> = now
        .find("twophase_aborts_total", &[])
        .filter_map(|sample| {
            let reason = sample.label("reason")?;
            let value = match interval_s {
                Some(_) => change("twophase_aborts_total", &[("reason", reason)])?,
                None => sample.value,
            };
            (value > 0.0).then(|| (reason.to_string(), value))
        })
        .collect();
    aborts.sort_by(|a, b| b.1.total_cmp(&a.1));
    CoordinatorView {
        reachable: true,
        committed_per_s: change("twophase_transactions_total", &[("outcome", "committed")]),
        aborted_per_s: change("twophase_transactions_total", &[("outcome", "aborted")]),
        busy_per_s: change("twophase_rejections_total", &[("reason", "busy")]),
        committed_total: now.sum("twophase_transactions_total", &[("outcome", "committed")]),
        in_flight: now.sum("twophase_transactions_in_flight", &[]),
        epoch: now.sum("twophase_coordinator_epoch", &[]),
        transaction: percentiles(before, now, "twophase_transaction_seconds"),
        prepare_round: percentiles(before, now, "twophase_prepare_round_seconds"),
        commit_round: percentiles(before, now, "twophase_commit_round_seconds"),
        aborts,
    }
}

fn fill_node(node: &mut NodeView, before: Option<&Scrape>, now: &Scrape, interval_s: Option<f64>) {
    node.role = now.samples.first().and_then(|s| s.label("role")).unwrap_or("?").to_string();
    if node.role == "participant" {
        node.in_doubt = now.value("twophase_transactions_in_doubt", &[]);
        node.prepared = now.value("twophase_transactions_prepared", &[]);
    }
    node.log_sync = percentiles(before, now, "twophase_log_sync_seconds");
    node.fsync = percentiles(before, now, "twophase_log_fsync_seconds");
    node.records_per_s = rate(before, now, interval_s, "twophase_log_records_total", &[]);
    let delta = |name: &str| now.sum(name, &[]) - before.map_or(0.0, |b| b.sum(name, &[]));
    let groups = delta("twophase_log_groups_total");
    node.group_records = (groups > 0.0).then(|| delta("twophase_log_records_total") / groups);
}

/// Change per second of a counter between the scrapes; `None` without an earlier scrape.
fn rate(
    before: Option<&Scrape>,
    now: &Scrape,
    interval_s: Option<f64>,
    name: &str,
    labels: &[(&str, &str)],
) -> Option<f64> {
    let (before, interval_s) = (before?, interval_s?);
    // A restarted node starts from zero: count from there rather than going negative.
    let change = (now.sum(name, labels) - before.sum(name, labels)).max(0.0);
    Some(change / interval_s)
}

/// p50 and p99 of the observations between the scrapes (of all of them without an earlier one).
fn percentiles(before: Option<&Scrape>, now: &Scrape, family: &str) -> Percentiles {
    let mut buckets = now.buckets(family, &[]);
    if let Some(before) = before {
        let old = before.buckets(family, &[]);
        if old.len() == buckets.len() && old.iter().zip(&buckets).all(|(o, n)| o.1 <= n.1) {
            for (bucket, old) in buckets.iter_mut().zip(old) {
                bucket.1 -= old.1;
            }
        }
    }
    Percentiles { p50: scrape::quantile(&buckets, 0.5), p99: scrape::quantile(&buckets, 0.99) }
}
