//! A span as the hot threads build it: its ids, times, attributes, log-sync events and status
//! in one plain record, handed whole to the export thread's bounded queue when it ends.
//!
//! The record allocates nothing in the usual case: a span's few attributes and events sit
//! inline ([`ATTRIBUTES_INLINE`], [`EVENTS_INLINE`]), their keys and most values are
//! `&'static str` or integers, and span ids come from a per-thread generator. What would
//! allocate (an abort's detail, the participants' list) is rare or once per transaction.
//! Why: every allocation here is made on an engine thread and freed on the export thread,
//! and at saturation each microsecond on that path costs more than its share
//! (docs/TRACE_COST.md). The record becomes OTLP protobuf on the export thread
//! ([`super::otlp`]).

use std::borrow::Cow;
use std::cell::Cell;
use std::sync::Arc;
use std::time::SystemTime;

use crossbeam_channel::{Sender, TrySendError};
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use smallvec::SmallVec;

/// Attributes a span holds without allocating: as many as the most a span carries on the
/// committed path (the coordinator's `submit`: client, seq, txid, participants, outcome).
pub(crate) const ATTRIBUTES_INLINE: usize = 5;
/// Log-sync events a span holds without allocating: the coordinator's `decision` waits for
/// two records (Staged, then Commit).
pub(crate) const EVENTS_INLINE: usize = 2;

/// An attribute's value: the kinds twophase's spans use.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Int(i64),
    /// Static nearly always (a label); owned for an abort's detail.
    Text(Cow<'static, str>),
    /// A list (the participants'), kept as built: no shrinking copy.
    Ints(Vec<i64>),
}

impl From<i64> for Value {
    fn from(number: i64) -> Value {
        Value::Int(number)
    }
}

impl From<&'static str> for Value {
    fn from(text: &'static str) -> Value {
        Value::Text(Cow::Borrowed(text))
    }
}

impl From<String> for Value {
    fn from(text: String) -> Value {
        Value::Text(Cow::Owned(text))
    }
}

impl From<Vec<i64>> for Value {
    fn from(numbers: Vec<i64>) -> Value {
        Value::Ints(numbers)
    }
}

/// One attribute: its key (always `twophase.` something, or a resource's) and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Attribute {
    pub key: &'static str,
    pub value: Value,
}

impl Attribute {
    pub fn new(key: &'static str, value: impl Into<Value>) -> Attribute {
        Attribute { key, value: value.into() }
    }
}

/// A span's attributes, inline up to [`ATTRIBUTES_INLINE`].
pub type Attributes = SmallVec<[Attribute; ATTRIBUTES_INLINE]>;

/// A span's status: unset, or an error and why.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum Status {
    #[default]
    Unset,
    Error(Cow<'static, str>),
}

impl Status {
    pub fn error(description: impl Into<Cow<'static, str>>) -> Status {
        Status::Error(description.into())
    }
}

/// The `log sync` event: a record the span waited for became durable.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SyncEvent {
    /// When the record became durable.
    pub(crate) time: SystemTime,
    /// The record's kind (`Prepared`, `Staged`, `Commit`, `Abort`).
    pub(crate) record: &'static str,
    pub(crate) lsn: u64,
    /// From the append until durable.
    pub(crate) sync_us: i64,
    /// A participant's Prepared record: the writes it holds.
    pub(crate) writes: Option<i64>,
}

impl SyncEvent {
    /// The event of a record appended at `appended` and durable at `durable`.
    pub(crate) fn new(
        record: &'static str,
        lsn: twophase_engine::Lsn,
        appended: SystemTime,
        durable: SystemTime,
        writes: Option<usize>,
    ) -> SyncEvent {
        let sync_us = durable.duration_since(appended).unwrap_or_default().as_micros();
        SyncEvent {
            time: durable,
            record,
            lsn: lsn.0,
            sync_us: i64::try_from(sync_us).unwrap_or(i64::MAX),
            writes: writes.map(|writes| writes as i64),
        }
    }
}

/// What the export thread receives: a finished span (always sampled).
#[derive(Debug)]
pub(crate) struct SpanRecord {
    pub(crate) trace_id: TraceId,
    pub(crate) span_id: SpanId,
    /// The parent's id and whether it came from another process.
    pub(crate) parent: Option<(SpanId, bool)>,
    pub(crate) name: &'static str,
    pub(crate) start: SystemTime,
    pub(crate) end: SystemTime,
    pub(crate) attributes: Attributes,
    pub(crate) events: SmallVec<[SyncEvent; EVENTS_INLINE]>,
    pub(crate) status: Status,
}

/// Where ended spans go, and what is told when they cannot.
#[derive(Debug)]
pub(crate) struct SpanSink {
    pub(crate) queue: Sender<SpanRecord>,
    /// Told when the queue holds a whole export request, so the thread need not wait for
    /// its interval.
    pub(crate) full_batch: Sender<()>,
    pub(crate) batch_spans: usize,
    pub(crate) dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

impl SpanSink {
    /// Never waits: a full queue (the collector slow or away) drops the span and counts it.
    fn send(&self, record: SpanRecord) {
        match self.queue.try_send(record) {
            Ok(()) => {
                // At least, not exactly: spans may end on several threads at once. A wake-up
                // already pending makes this a failed `try_send`.
                if self.queue.len() >= self.batch_spans {
                    let _ = self.full_batch.try_send(());
                }
            }
            Err(TrySendError::Full(_)) => {
                self.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            // The exporter has stopped: the process is ending.
            Err(TrySendError::Disconnected(_)) => {}
        }
    }
}

/// An open span. Dropping it ends it (now), as [`end`](Span::end) does.
#[derive(Debug)]
pub struct Span {
    record: Option<SpanRecord>,
    /// Shared, not cloned per span: one reference count, not one per channel handle.
    sink: Arc<SpanSink>,
}

impl Span {
    pub(crate) fn start(
        sink: &Arc<SpanSink>,
        name: &'static str,
        parent: Option<&SpanContext>,
        start: Option<SystemTime>,
        attributes: Attributes,
    ) -> Span {
        let trace_id = match parent {
            Some(parent) => parent.trace_id(),
            None => TraceId::from_bytes(((u128::from(nonzero_id()) << 64) | u128::from(next_id())).to_be_bytes()),
        };
        let start = start.unwrap_or_else(SystemTime::now);
        let record = SpanRecord {
            trace_id,
            span_id: SpanId::from_bytes(nonzero_id().to_be_bytes()),
            parent: parent.map(|parent| (parent.span_id(), parent.is_remote())),
            name,
            start,
            end: start,
            attributes,
            events: SmallVec::new(),
            status: Status::Unset,
        };
        Span { record: Some(record), sink: sink.clone() }
    }

    /// This span's context, to parent others by (in this process or, as a traceparent,
    /// in another).
    pub fn span_context(&self) -> SpanContext {
        let record = self.record();
        SpanContext::new(record.trace_id, record.span_id, TraceFlags::SAMPLED, false, TraceState::NONE)
    }

    pub fn set_attribute(&mut self, attribute: Attribute) {
        self.record_mut().attributes.push(attribute);
    }

    pub fn set_status(&mut self, status: Status) {
        self.record_mut().status = status;
    }

    pub(crate) fn add_sync_event(&mut self, event: SyncEvent) {
        self.record_mut().events.push(event);
    }

    pub fn end(mut self) {
        self.finish();
    }

    fn finish(&mut self) {
        if let Some(mut record) = self.record.take() {
            record.end = SystemTime::now();
            self.sink.send(record);
        }
    }

    fn record(&self) -> &SpanRecord {
        self.record.as_ref().expect("an open span holds its record until it ends")
    }

    fn record_mut(&mut self) -> &mut SpanRecord {
        self.record.as_mut().expect("an open span holds its record until it ends")
    }
}

impl Drop for Span {
    fn drop(&mut self) {
        self.finish();
    }
}

thread_local! {
    /// The state of this thread's id generator, seeded at random once per thread.
    static ID_STATE: Cell<u64> = Cell::new(rand::random());
}

/// The next id of this thread's generator (splitmix64: every state gives a distinct,
/// well-mixed output). Ids need to be unique and unguessable enough to keep traces apart,
/// not secret: a per-thread generator seeded at random gives that without the cost of the
/// thread's cryptographic generator per span.
fn next_id() -> u64 {
    ID_STATE.with(|state| {
        let next = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
        state.set(next);
        let mut mixed = (next ^ (next >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        mixed = (mixed ^ (mixed >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        mixed ^ (mixed >> 31)
    })
}

/// An id other than zero (the invalid id).
fn nonzero_id() -> u64 {
    loop {
        let id = next_id();
        if id != 0 {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(
        capacity: usize,
    ) -> (Arc<SpanSink>, crossbeam_channel::Receiver<SpanRecord>, crossbeam_channel::Receiver<()>) {
        let (queue, spans) = crossbeam_channel::bounded(capacity);
        let (full_batch, full) = crossbeam_channel::bounded(1);
        let sink = SpanSink { queue, full_batch, batch_spans: 2, dropped: Default::default() };
        (Arc::new(sink), spans, full)
    }

    #[test]
    fn a_child_shares_its_parents_trace_and_names_it_and_ending_queues_the_record() {
        let (sink, spans, _) = sink(8);
        let root = Span::start(&sink, "submit", None, None, [Attribute::new("twophase.seq", 7)].into_iter().collect());
        let mut child = Span::start(&sink, "prepare", Some(&root.span_context()), None, Attributes::new());
        assert!(root.span_context().is_valid() && root.span_context().is_sampled());
        assert_eq!(child.span_context().trace_id(), root.span_context().trace_id());
        assert_ne!(child.span_context().span_id(), root.span_context().span_id());
        child.set_attribute(Attribute::new("twophase.vote", "yes"));
        child.set_status(Status::error("no vote"));
        assert!(spans.is_empty(), "nothing is queued before a span ends");
        drop(child);
        root.end();
        let child = spans.try_recv().unwrap();
        let root = spans.try_recv().unwrap();
        assert_eq!(child.parent, Some((root.span_id, false)));
        assert_eq!(root.parent, None);
        assert_eq!(child.attributes.as_slice(), [Attribute::new("twophase.vote", "yes")]);
        assert_eq!(child.status, Status::error("no vote"));
        assert!(child.end >= child.start);
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_a_whole_batch_is_announced_once() {
        let (sink, spans, full) = sink(2);
        for _ in 0..3 {
            Span::start(&sink, "commit", None, None, Attributes::new()).end();
        }
        assert_eq!(spans.len(), 2);
        assert_eq!(sink.dropped.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(full.len(), 1, "the batch size was reached: one wake-up pending, however many spans followed");
    }

    #[test]
    fn ids_are_nonzero_and_distinct_and_roots_get_distinct_traces() {
        let ids: std::collections::HashSet<u64> = (0..100_000).map(|_| nonzero_id()).collect();
        assert_eq!(ids.len(), 100_000);
        assert!(!ids.contains(&0));
        let (sink, _spans, _) = sink(8);
        let a = Span::start(&sink, "transaction", None, None, Attributes::new());
        let b = Span::start(&sink, "transaction", None, None, Attributes::new());
        assert_ne!(a.span_context().trace_id(), b.span_context().trace_id());
        assert!(a.span_context().is_valid());
    }

    #[test]
    fn the_committed_paths_attributes_and_events_stay_inline() {
        let (sink, spans, _) = sink(8);
        let attributes: Attributes =
            (0..ATTRIBUTES_INLINE).map(|at| Attribute::new("twophase.seq", at as i64)).collect();
        let mut span = Span::start(&sink, "submit", None, None, attributes);
        let event = SyncEvent { time: SystemTime::now(), record: "Staged", lsn: 1, sync_us: 5, writes: None };
        for _ in 0..EVENTS_INLINE {
            span.add_sync_event(event.clone());
        }
        span.end();
        let record = spans.try_recv().unwrap();
        assert!(!record.attributes.spilled() && !record.events.spilled());
    }
}
