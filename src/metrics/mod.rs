//! Prometheus metrics of a node (`--metrics-listen ADDR`), served over HTTP/1.1 by a thread
//! of their own.
//!
//! Owns: the engine thread's counters and latency histograms ([`CoordinatorMetrics`],
//! [`ParticipantMetrics`], [`ThreePcMetrics`], [`LogMetrics`]), a copy of the transport's
//! per-connection traffic counters (`connections`), the snapshot of them published every
//! [`PUBLISH_EVERY`], and the listener that renders that snapshot (OpenMetrics text through
//! `prometheus-client`) on each scrape.
//!
//! Invariants: the engine thread never blocks on metrics: it updates plain fields it owns
//! and publishes with `try_lock` (a scrape in progress only delays the next publish); when
//! metrics are off every hook is one branch on an empty `Option`. Every label set is bounded
//! (participants of the configuration, abort reasons, peer roles, open connections), and so is every map of
//! timed requests ([`sampler`]).
//! Must not: change what the engine decides or when an output leaves.

mod connections;
mod coordinator;
pub mod encode;
pub mod histogram;
mod http;
mod interactive;
mod log;
mod participant;
pub mod sampler;
mod threepc;

use std::fmt;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;
use twophase_engine::Time;

pub use coordinator::{CoordinatorMetrics, GroupStatus};
pub use log::LogMetrics;
pub use participant::ParticipantMetrics;
pub use threepc::ThreePcMetrics;

use crate::node::snapshot::SnapshotStats;

/// How often the engine thread publishes its counters for the listener.
pub const PUBLISH_EVERY: Duration = Duration::from_millis(100);

/// What every node says about itself, fixed at start.
#[derive(Clone, Debug)]
pub struct NodeInfo {
    /// `node` label: the node's name (c1, p1, ...).
    pub node: String,
    /// `role` label: coordinator or participant.
    pub role: &'static str,
    /// How long opening the log and rebuilding the state took.
    pub recovery: Duration,
    /// Log records replayed at start (after the snapshot).
    pub recovered_records: u64,
}

impl NodeInfo {
    /// The start of the line a node prints with its metrics address (`cluster` reads it).
    fn announcement(&self) -> String {
        format!("twophase {} {} metrics on", self.role, self.node)
    }
}

/// What other threads of the node count themselves, read at each scrape.
#[derive(Clone, Debug)]
pub struct Sources {
    pub snapshots: Arc<SnapshotStats>,
    pub wal: Arc<twophase_wal::WalStats>,
}

impl Sources {
    /// For a node that writes no snapshots (a 3PC node: its log replays whole).
    pub fn without_snapshots(wal: &twophase_wal::Wal) -> Sources {
        Sources { snapshots: Arc::new(SnapshotStats::default()), wal: wal.stats() }
    }
}

/// The engine thread's side of publishing: a copy of its export every [`PUBLISH_EVERY`].
#[derive(Debug)]
struct Publisher<E> {
    shared: Arc<Mutex<E>>,
    /// When the last copy was published (`None`: due at once).
    last: Option<Time>,
}

impl<E> Publisher<E> {
    fn due(&self, now: Time) -> bool {
        self.last.is_none_or(|last| now.since(last) >= PUBLISH_EVERY)
    }

    /// Publishes unless a scrape holds the snapshot right now (then the next step will).
    fn publish(&mut self, now: Time, export: impl FnOnce() -> E) {
        if let Ok(mut shared) = self.shared.try_lock() {
            *shared = export();
            self.last = Some(now);
        }
    }
}

/// A role's snapshot, rendered by the listener.
trait Export: Clone + fmt::Debug + Send + 'static {
    fn encode(&self, encoder: &mut DescriptorEncoder) -> fmt::Result;
}

/// Renders the latest published snapshot plus what other threads count themselves.
#[derive(Debug)]
struct NodeCollector<E> {
    published: Arc<Mutex<E>>,
    snapshots: Arc<SnapshotStats>,
    groups: Arc<std::sync::atomic::AtomicU64>,
    wal: Arc<twophase_wal::WalStats>,
    info: NodeInfo,
    started_unix_s: f64,
}

impl<E: Export> Collector for NodeCollector<E> {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        // Copy out and release at once: the engine thread's try_lock must not wait long.
        let export = self.published.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        export.encode(&mut encoder)?;
        self.snapshots.encode(&mut encoder)?;
        encode::gauge(
            &mut encoder,
            "twophase_start_time_seconds",
            "When this process started (Unix time)",
            self.started_unix_s,
        )?;
        encode::gauge(
            &mut encoder,
            "twophase_recovery_seconds",
            "How long this process took to open its log and rebuild its state at start",
            self.info.recovery.as_secs_f64(),
        )?;
        encode::gauge(
            &mut encoder,
            "twophase_recovered_records",
            "Log records replayed at start (after the snapshot or checkpoint)",
            self.info.recovered_records as f64,
        )?;
        encode::wal_histogram(
            &mut encoder,
            "twophase_log_fsync_seconds",
            "How long the log's writer took to write and fdatasync one group",
            &self.wal.sync_seconds(),
        )?;
        encode::wal_histogram(
            &mut encoder,
            "twophase_log_group_records",
            "Records per group the log's writer wrote",
            &self.wal.group_records(),
        )?;
        let groups = self.groups.load(std::sync::atomic::Ordering::Relaxed);
        encode::counter(
            &mut encoder,
            "twophase_log_groups",
            "Groups made durable (one write and one fdatasync each); records / groups is the group size",
            groups,
        )
    }
}

/// Starts the listener on `listen` for a node whose engine thread publishes `initial`'s
/// successors; returns the publisher and the bound address (printed by the node).
fn start<E: Export>(
    listen: SocketAddr,
    info: NodeInfo,
    initial: E,
    sources: Sources,
    groups: Arc<std::sync::atomic::AtomicU64>,
    now: Time,
) -> anyhow::Result<(Publisher<E>, SocketAddr)> {
    let Sources { snapshots, wal } = sources;
    let published = Arc::new(Mutex::new(initial));
    let labels = [("node".into(), info.node.clone().into()), ("role".into(), info.role.into())];
    let mut registry = Registry::with_labels(labels.into_iter());
    let started_unix_s = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64());
    let collector = NodeCollector { published: published.clone(), snapshots, groups, wal, info, started_unix_s };
    registry.register_collector(Box::new(collector));
    let addr = http::spawn(listen, registry)?;
    Ok((Publisher { shared: published, last: Some(now) }, addr))
}
