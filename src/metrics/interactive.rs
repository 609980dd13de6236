//! The coordinator's interactive-transaction metrics: requests by kind, deadlock detection
//! latency and lock-wait time, measured by the runtime around the sans-IO engine.
//!
//! Detection latency: from the moment the reactor read the frame carrying the `WaitFor`
//! whose edge closed a cycle (the `now` of that batch, taken before the engine steps over
//! it) to the moment the victim's `Abort(Deadlock)` reply is handed to the transport. The
//! engine does not say which input produced an output, so the runtime looks at the
//! outputs that the step over one `WaitFor` added ([`InteractiveMetrics::wait_for_stepped`]):
//! a `Deadlock` abort among them is a detection (a later request of the victim hears
//! `Deadlock` again, from the engine's memory of ended transactions: those are not
//! detections, and are not timed).
//!
//! Lock-wait time, as the coordinator sees it: from a participant's first `WaitFor` with
//! holders for a waiter to that participant's answer to the waiting Execute (granted or
//! failed), a `WaitFor` saying it no longer waits, or the coordinator's `Abort` of the
//! waiter to that participant (a deadlock victim, say).
//!
//! Bounded: at most [`PENDING_DETECTIONS_MAX`] detections awaiting their reply and
//! [`WAITS_MAX`] timed waits (beyond, a wait is not timed; one older than
//! [`WAIT_FORGET_AFTER`] is dropped untimed).

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use twophase_engine::coordinator::{CoordEffects, CoordOutput};
use twophase_engine::message::Interactive;
use twophase_engine::{AbortReason, ClientId, Outcome, ParticipantId, Reply, Seq, Time, ToCoordinator, TxId};

use super::encode;
use super::histogram::LatencyHistogram;
use crate::node::Clock;

/// Detections whose victim's reply has not been handed to the transport yet (it is, in the
/// same engine step, unless the victim's client is not connected).
pub const PENDING_DETECTIONS_MAX: usize = 1024;
/// A pending detection is replied to in the very step that found it (the reply's LSN is
/// none) unless its client is gone: older than this, it is counted untimed.
pub const PENDING_FORGET_AFTER: Duration = Duration::from_secs(1);
/// Lock waits being timed at once.
pub const WAITS_MAX: usize = 16_384;
/// A timed wait with no end seen after this long is forgotten (its end was lost with a
/// connection, say); lock-wait timeouts are far shorter.
pub const WAIT_FORGET_AFTER: Duration = Duration::from_secs(120);

/// Upper bounds of the detection-latency buckets in seconds (`+Inf` implied): finer than
/// the node's other histograms, since a detection in the same step costs microseconds.
pub const DETECTION_BOUNDS_SECONDS: [f64; 16] =
    [5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 1.0];

const DETECTION_BUCKETS: usize = DETECTION_BOUNDS_SECONDS.len() + 1;

/// The request kinds, as the `kind` label of `twophase_interactive_requests_total`.
const REQUEST_KINDS: [&str; 4] = ["begin", "execute", "commit", "rollback"];

/// The engine thread's interactive metrics (plain fields, copied into the export).
pub struct InteractiveMetrics {
    clock: Clock,
    /// Detections by the victim's request, with the read time of the closing WaitFor.
    pending: HashMap<(ClientId, Seq), Time>,
    /// Lock waits being timed, by participant and waiter, with the first report's read time.
    waits: HashMap<(ParticipantId, TxId), Time>,
    export: InteractiveExport,
}

/// What the listener renders.
#[derive(Clone, Debug, Default)]
pub struct InteractiveExport {
    /// Requests by kind, in [`REQUEST_KINDS`] order.
    requests: [u64; 4],
    detection: DetectionHistogram,
    detection_max: Duration,
    /// Detections whose reply could not be timed (victim's client gone, or too many pending).
    detections_untimed: u64,
    lock_wait: LatencyHistogram,
}

impl fmt::Debug for InteractiveMetrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InteractiveMetrics")
            .field("pending", &self.pending.len())
            .field("waits", &self.waits.len())
            .field("export", &self.export)
            .finish()
    }
}

impl InteractiveMetrics {
    pub fn new(clock: Clock) -> InteractiveMetrics {
        InteractiveMetrics {
            clock,
            pending: HashMap::new(),
            waits: HashMap::new(),
            export: InteractiveExport::default(),
        }
    }

    pub fn request(&mut self, request: &Interactive) {
        let kind = match request {
            Interactive::Begin { .. } => 0,
            Interactive::Execute { .. } => 1,
            Interactive::Commit { .. } => 2,
            Interactive::Rollback { .. } => 3,
        };
        self.export.requests[kind] += 1;
    }

    /// A participant message arrived (read at `read_at`), before the engine steps over it:
    /// starts or ends a lock wait's timing. Returns where the step's outputs begin when the
    /// message is a `WaitFor` (pass it to [`Self::wait_for_stepped`]).
    pub fn received(
        &mut self,
        read_at: Time,
        from: ParticipantId,
        message: &ToCoordinator,
        fx: &CoordEffects,
    ) -> Option<usize> {
        match message {
            ToCoordinator::WaitFor { waiter, holders, .. } if holders.is_empty() => {
                self.end_wait(from, *waiter, read_at);
                Some(fx.outputs.len())
            }
            ToCoordinator::WaitFor { waiter, .. } => {
                self.start_wait(from, *waiter, read_at);
                Some(fx.outputs.len())
            }
            ToCoordinator::Executed { txid, .. } => {
                self.end_wait(from, *txid, read_at);
                None
            }
            _ => None,
        }
    }

    /// After the engine stepped over a `WaitFor` read at `read_at`: a `Deadlock` abort among
    /// the outputs the step added (from `outputs_from` on) is a detection that WaitFor made.
    pub fn wait_for_stepped(&mut self, read_at: Time, outputs_from: usize, fx: &CoordEffects) {
        for gated in fx.outputs.iter().skip(outputs_from) {
            let CoordOutput::ToClient(Reply::Outcome { client, seq, outcome }) = &gated.item else { continue };
            if !matches!(outcome, Outcome::Aborted { reason: AbortReason::Deadlock { .. } }) {
                continue;
            }
            if self.pending.len() >= PENDING_DETECTIONS_MAX {
                self.export.detections_untimed += 1;
                continue;
            }
            self.pending.insert((*client, *seq), read_at);
        }
    }

    /// A reply is being handed to the transport: the end of a detection it answers.
    pub fn replied(&mut self, reply: &Reply) {
        if self.pending.is_empty() {
            return;
        }
        let Reply::Outcome { client, seq, outcome: Outcome::Aborted { reason: AbortReason::Deadlock { .. } } } = reply
        else {
            return;
        };
        if let Some(read_at) = self.pending.remove(&(*client, *seq)) {
            let latency = self.clock.now().since(read_at);
            self.export.detection.observe(latency);
            self.export.detection_max = self.export.detection_max.max(latency);
        }
    }

    /// The coordinator sends `Abort` of `txid` to `to`: any wait of it there is over.
    pub fn aborted_at(&mut self, to: ParticipantId, txid: TxId) {
        if !self.waits.is_empty() {
            let now = self.clock.now();
            self.end_wait(to, txid, now);
        }
    }

    /// For a publish: a detection pending longer than [`PENDING_FORGET_AFTER`] was not
    /// replied to in its step (the victim's client was not connected) and is counted
    /// untimed; long-lost waits are forgotten.
    pub fn export(&mut self) -> InteractiveExport {
        let now = self.clock.now();
        self.export_at(now)
    }

    fn export_at(&mut self, now: Time) -> InteractiveExport {
        let before = self.pending.len();
        self.pending.retain(|_, read_at| now.since(*read_at) < PENDING_FORGET_AFTER);
        self.export.detections_untimed += (before - self.pending.len()) as u64;
        self.waits.retain(|_, began| now.since(*began) < WAIT_FORGET_AFTER);
        self.export.clone()
    }

    fn start_wait(&mut self, from: ParticipantId, waiter: TxId, read_at: Time) {
        // A WaitFor replacing an earlier one of the same wait keeps the first start.
        if self.waits.len() < WAITS_MAX || self.waits.contains_key(&(from, waiter)) {
            self.waits.entry((from, waiter)).or_insert(read_at);
        }
    }

    fn end_wait(&mut self, from: ParticipantId, waiter: TxId, at: Time) {
        if let Some(began) = self.waits.remove(&(from, waiter)) {
            self.export.lock_wait.observe(at.since(began));
        }
    }
}

impl InteractiveExport {
    pub fn encode(&self, e: &mut DescriptorEncoder, deadlocks_detected: u64) -> fmt::Result {
        encode::counters(
            e,
            "twophase_interactive_requests",
            "Interactive requests received from clients, by kind",
            "kind",
            REQUEST_KINDS.iter().copied().zip(self.requests),
        )?;
        encode::counter(
            e,
            "twophase_deadlocks",
            "Wait-for cycles the coordinator found (each aborted its youngest transaction with Deadlock)",
            deadlocks_detected,
        )?;
        self.detection.encode(
            e,
            "twophase_deadlock_detection_seconds",
            "From reading the WaitFor frame whose edge closed a cycle to handing the victim's Deadlock abort to the transport",
        )?;
        encode::gauge(
            e,
            "twophase_deadlock_detection_max_seconds",
            "The longest deadlock detection latency since start",
            self.detection_max.as_secs_f64(),
        )?;
        encode::counter(
            e,
            "twophase_deadlock_detections_untimed",
            "Detections whose victim's reply could not be timed (its client was not connected)",
            self.detections_untimed,
        )?;
        encode::histogram(
            e,
            "twophase_lock_wait_seconds",
            "Interactive lock waits as the coordinator sees them: from a participant's first WaitFor of a waiter to its answer, a no-longer-waiting WaitFor, or the waiter's Abort",
            &self.lock_wait,
        )
    }
}

/// A latency histogram with [`DETECTION_BOUNDS_SECONDS`].
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct DetectionHistogram {
    /// Per bucket (not cumulative); the last is `+Inf`.
    counts: [u64; DETECTION_BUCKETS],
    sum_seconds: f64,
}

impl DetectionHistogram {
    fn observe(&mut self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket =
            DETECTION_BOUNDS_SECONDS.iter().position(|&bound| seconds <= bound).unwrap_or(DETECTION_BUCKETS - 1);
        self.counts[bucket] += 1;
        self.sum_seconds += seconds;
    }

    fn encode(&self, e: &mut DescriptorEncoder, name: &str, help: &str) -> fmt::Result {
        let buckets: Vec<(f64, u64)> = (0..DETECTION_BUCKETS)
            .map(|at| (DETECTION_BOUNDS_SECONDS.get(at).copied().unwrap_or(f64::MAX), self.counts[at]))
            .collect();
        let count = self.counts.iter().sum();
        let mut metric = e.encode_descriptor(name, help, None, MetricType::Histogram)?;
        metric.encode_histogram::<NoLabelSet>(self.sum_seconds, count, &buckets, None)
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use twophase_engine::Gated;
    use twophase_engine::Lsn;

    use super::*;

    fn deadlock_reply(client: u64, seq: Seq) -> Reply {
        let reason = AbortReason::Deadlock { cycle: vec![TxId(2), TxId(1)] };
        Reply::Outcome { client: ClientId(client), seq, outcome: Outcome::Aborted { reason } }
    }

    fn wait_for(waiter: u64, holders: &[u64]) -> ToCoordinator {
        ToCoordinator::WaitFor {
            waiter: TxId(waiter),
            key: Bytes::from_static(b"k"),
            holders: holders.iter().map(|&h| TxId(h)).collect(),
        }
    }

    #[test]
    fn only_a_deadlock_abort_that_the_wait_for_step_added_is_timed() {
        let mut metrics = InteractiveMetrics::new(Clock::new());
        let mut fx = CoordEffects::default();
        // An earlier output of the same batch: a Deadlock reply heard again by a late request.
        fx.outputs.push(Gated { after: Lsn::NONE, item: CoordOutput::ToClient(deadlock_reply(9, 1)) });
        let from = metrics.received(Time(0), ParticipantId(1), &wait_for(2, &[1]), &fx).expect("a WaitFor");
        fx.outputs.push(Gated { after: Lsn::NONE, item: CoordOutput::ToClient(deadlock_reply(7, 4)) });
        metrics.wait_for_stepped(Time(0), from, &fx);
        assert_eq!(metrics.pending.len(), 1);
        metrics.replied(&deadlock_reply(9, 1));
        assert_eq!(metrics.export.detection.counts.iter().sum::<u64>(), 0, "not a detection");
        metrics.replied(&deadlock_reply(7, 4));
        assert_eq!(metrics.export.detection.counts.iter().sum::<u64>(), 1);
        assert!(metrics.pending.is_empty());
        let export = metrics.export();
        assert_eq!(export.detections_untimed, 0);
    }

    #[test]
    fn a_detection_whose_reply_never_leaves_is_counted_untimed() {
        let mut metrics = InteractiveMetrics::new(Clock::new());
        let mut fx = CoordEffects::default();
        let from = metrics.received(Time(0), ParticipantId(1), &wait_for(2, &[1]), &fx).unwrap();
        fx.outputs.push(Gated { after: Lsn::NONE, item: CoordOutput::ToClient(deadlock_reply(7, 4)) });
        metrics.wait_for_stepped(Time(0), from, &fx);
        assert_eq!(metrics.export().detections_untimed, 0, "its reply may still leave in this step");
        assert_eq!(metrics.export_at(Time(0) + PENDING_FORGET_AFTER).detections_untimed, 1);
        assert!(metrics.pending.is_empty());
    }

    #[test]
    fn a_lock_wait_runs_from_its_first_report_to_the_answer() {
        let mut metrics = InteractiveMetrics::new(Clock::new());
        let fx = CoordEffects::default();
        let ms = |n: u64| Time(n * 1_000_000);
        metrics.received(ms(1), ParticipantId(1), &wait_for(5, &[3]), &fx);
        metrics.received(ms(2), ParticipantId(1), &wait_for(5, &[4]), &fx); // the same wait, new holders
        let executed = ToCoordinator::Executed { txid: TxId(5), result: Ok(Vec::new()) };
        metrics.received(ms(4), ParticipantId(2), &executed, &fx); // another participant's answer
        assert_eq!(metrics.export.lock_wait.count(), 0);
        metrics.received(ms(4), ParticipantId(1), &executed, &fx);
        assert_eq!(metrics.export.lock_wait.count(), 1);
        assert!((metrics.export.lock_wait.sum_seconds() - 0.003).abs() < 1e-9);
        // A wait ended by the waiter's abort, and one by a no-longer-waiting report.
        metrics.received(ms(5), ParticipantId(2), &wait_for(6, &[1]), &fx);
        metrics.aborted_at(ParticipantId(2), TxId(6));
        metrics.received(ms(5), ParticipantId(3), &wait_for(8, &[1]), &fx);
        metrics.received(ms(6), ParticipantId(3), &wait_for(8, &[]), &fx);
        assert_eq!(metrics.export.lock_wait.count(), 3);
        assert!(metrics.waits.is_empty());
    }

    #[test]
    fn requests_are_counted_by_kind() {
        let mut metrics = InteractiveMetrics::new(Clock::new());
        let client = ClientId(1);
        metrics.request(&Interactive::Commit { client, seq: 1, txid: TxId(1) });
        metrics.request(&Interactive::Commit { client, seq: 2, txid: TxId(1) });
        metrics.request(&Interactive::Rollback { client, seq: 3, txid: TxId(1) });
        assert_eq!(metrics.export.requests, [0, 0, 2, 1]);
    }

    #[test]
    fn detection_buckets_hold_microseconds() {
        let mut histogram = DetectionHistogram::default();
        histogram.observe(Duration::from_micros(5));
        histogram.observe(Duration::from_micros(30));
        histogram.observe(Duration::from_secs(3));
        assert_eq!(histogram.counts[0], 1);
        assert_eq!(histogram.counts[3], 1, "30 µs is within (25, 50] µs");
        assert_eq!(histogram.counts[DETECTION_BUCKETS - 1], 1);
    }
}
