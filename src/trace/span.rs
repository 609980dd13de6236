//! A span as the hot threads build it: its ids, times, attributes, events and status in one
//! plain record, handed whole to the export thread's bounded queue when it ends.
//!
//! This is the part of OpenTelemetry's SDK span that twophase uses (the API's ids,
//! `KeyValue` and `Status`), without the SDK's tracer, context, sampler and processor
//! chain: starting a span draws its id and takes the attributes given, ending it is one
//! `try_send`. The record becomes OTLP protobuf on the export thread ([`super::otlp`]).

use std::time::SystemTime;

use crossbeam_channel::{Sender, TrySendError};
use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanContext, SpanId, Status, TraceFlags, TraceId, TraceState};

/// What the export thread receives: a finished span.
#[derive(Debug)]
pub(crate) struct SpanRecord {
    pub(crate) context: SpanContext,
    /// The parent's id and whether it came from another process.
    pub(crate) parent: Option<(SpanId, bool)>,
    pub(crate) name: &'static str,
    pub(crate) start: SystemTime,
    pub(crate) end: SystemTime,
    pub(crate) attributes: Vec<KeyValue>,
    pub(crate) events: Vec<Event>,
    pub(crate) status: Status,
}

#[derive(Debug)]
pub(crate) struct Event {
    pub(crate) name: &'static str,
    pub(crate) time: SystemTime,
    pub(crate) attributes: Vec<KeyValue>,
}

/// Where ended spans go, and what is told when they cannot.
#[derive(Clone, Debug)]
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
    sink: SpanSink,
}

impl Span {
    pub(crate) fn start(
        sink: &SpanSink,
        name: &'static str,
        parent: Option<&SpanContext>,
        start: Option<SystemTime>,
        attributes: Vec<KeyValue>,
    ) -> Span {
        let trace_id = match parent {
            Some(parent) => parent.trace_id(),
            None => TraceId::from_bytes(nonzero_random::<u128>().to_be_bytes()),
        };
        let span_id = SpanId::from_bytes(nonzero_random::<u64>().to_be_bytes());
        let context = SpanContext::new(trace_id, span_id, TraceFlags::SAMPLED, false, TraceState::NONE);
        let start = start.unwrap_or_else(SystemTime::now);
        let record = SpanRecord {
            context,
            parent: parent.map(|parent| (parent.span_id(), parent.is_remote())),
            name,
            start,
            end: start,
            attributes,
            events: Vec::new(),
            status: Status::Unset,
        };
        Span { record: Some(record), sink: sink.clone() }
    }

    pub fn span_context(&self) -> &SpanContext {
        &self.record().context
    }

    pub fn set_attribute(&mut self, attribute: KeyValue) {
        self.record_mut().attributes.push(attribute);
    }

    pub fn set_status(&mut self, status: Status) {
        self.record_mut().status = status;
    }

    pub fn add_event_with_timestamp(&mut self, name: &'static str, time: SystemTime, attributes: Vec<KeyValue>) {
        self.record_mut().events.push(Event { name, time, attributes });
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

/// A random id other than zero (the invalid id).
fn nonzero_random<T: PartialEq + Default>() -> T
where
    rand::distributions::Standard: rand::distributions::Distribution<T>,
{
    loop {
        let id: T = rand::random();
        if id != T::default() {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sink(capacity: usize) -> (SpanSink, crossbeam_channel::Receiver<SpanRecord>, crossbeam_channel::Receiver<()>) {
        let (queue, spans) = crossbeam_channel::bounded(capacity);
        let (full_batch, full) = crossbeam_channel::bounded(1);
        let sink = SpanSink { queue, full_batch, batch_spans: 2, dropped: Default::default() };
        (sink, spans, full)
    }

    #[test]
    fn a_child_shares_its_parents_trace_and_names_it_and_ending_queues_the_record() {
        let (sink, spans, _) = sink(8);
        let root = Span::start(&sink, "submit", None, None, vec![KeyValue::new("twophase.seq", 7)]);
        let mut child = Span::start(&sink, "prepare", Some(root.span_context()), None, Vec::new());
        assert!(root.span_context().is_valid() && root.span_context().is_sampled());
        assert_eq!(child.span_context().trace_id(), root.span_context().trace_id());
        assert_ne!(child.span_context().span_id(), root.span_context().span_id());
        child.set_attribute(KeyValue::new("twophase.vote", "yes"));
        child.set_status(Status::error("no vote"));
        assert!(spans.is_empty(), "nothing is queued before a span ends");
        drop(child);
        root.end();
        let child = spans.try_recv().unwrap();
        let root = spans.try_recv().unwrap();
        assert_eq!(child.parent, Some((root.context.span_id(), false)));
        assert_eq!(root.parent, None);
        assert_eq!(child.attributes, vec![KeyValue::new("twophase.vote", "yes")]);
        assert_eq!(child.status, Status::error("no vote"));
        assert!(child.end >= child.start);
    }

    #[test]
    fn a_full_queue_drops_and_counts_and_a_whole_batch_is_announced_once() {
        let (sink, spans, full) = sink(2);
        for _ in 0..3 {
            Span::start(&sink, "commit", None, None, Vec::new()).end();
        }
        assert_eq!(spans.len(), 2);
        assert_eq!(sink.dropped.load(std::sync::atomic::Ordering::Relaxed), 1);
        assert_eq!(full.len(), 1, "the batch size was reached: one wake-up pending, however many spans followed");
    }
}
