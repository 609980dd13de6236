//! The export thread: takes finished spans off the bounded queue every [`EXPORT_INTERVAL`]
//! (sooner once a whole request is queued), writes them as OTLP protobuf ([`super::otlp`])
//! and posts them to the collector, up to [`EXPORT_BATCH_SPANS_MAX`] per request.
//!
//! Invariants: the threads that end spans never wait for this one (they `try_send`, and a
//! full queue drops); the thread wakes per interval or per whole request, never per span;
//! it keeps one request's buffers and reuses them. A failed export drops its spans; one
//! warning at most every [`WARN_INTERVAL`] gives the spans lost since the last (failed
//! requests and a full queue) and the last failure's error.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, select};

use super::otlp;
use super::span::{SpanRecord, SpanSink};

/// Spans waiting for export at most; beyond, new ones are dropped (never waited for).
pub(crate) const QUEUE_SPANS_MAX: usize = 8192;
/// Spans per export request at most: large, because each request costs this thread
/// (and a loaded 2-core machine) a fixed amount beyond its spans.
pub(crate) const EXPORT_BATCH_SPANS_MAX: usize = 2048;
/// How often the thread exports what is queued.
pub(crate) const EXPORT_INTERVAL: Duration = Duration::from_millis(500);
/// A failing collector or a full queue is reported at most this often.
const WARN_INTERVAL: Duration = Duration::from_secs(30);

/// Posts one export request's body; the error says why it was not taken.
pub(crate) type Post = Box<dyn FnMut(Bytes) -> Result<(), String> + Send>;

/// The request buffer, shared with the HTTP client while it sends: taken back afterwards,
/// so the next request is written into pages already mapped.
struct Shared(Arc<Vec<u8>>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The sink that spans end into and the exporter that takes them off its queue, sharing the
/// queue, the count of spans a full queue dropped, and the wake-up for a whole request (its
/// receiving end returned for the exporter's thread).
fn connected(resource: Vec<u8>, post: Post) -> (SpanSink, Exports, Receiver<()>) {
    let (queue, spans) = crossbeam_channel::bounded(QUEUE_SPANS_MAX);
    let (full_batch, wake) = crossbeam_channel::bounded(1);
    let dropped = Arc::new(AtomicU64::new(0));
    let sink = SpanSink { queue, full_batch, batch_spans: EXPORT_BATCH_SPANS_MAX, dropped: dropped.clone() };
    let exports = Exports {
        spans,
        resource,
        post,
        dropped,
        batch: Vec::new(),
        span_lens: Vec::new(),
        body: Vec::new(),
        warned: None,
    };
    (sink, exports, wake)
}

/// The running export thread. [`stop`](ExportThread::stop) sends what is queued and ends it.
pub(crate) struct ExportThread {
    stop: Option<Sender<()>>,
    done: Receiver<()>,
    handle: Option<JoinHandle<()>>,
}

/// Starts the thread (it inherits the caller's scheduling policy) and returns the sink that
/// spans end into. `resource` is [`otlp::resource`] of this process.
pub(crate) fn start(resource: Vec<u8>, post: Post) -> (Arc<SpanSink>, ExportThread) {
    let (sink, mut exporter, wake) = connected(resource, post);
    let (stop, stopped) = crossbeam_channel::bounded(0);
    let (done_sender, done) = crossbeam_channel::bounded::<()>(0);
    let handle = std::thread::Builder::new()
        .name("span-export".into())
        .spawn(move || {
            exporter.run(&wake, &stopped);
            drop(done_sender);
        })
        .expect("starting the span export thread");
    (Arc::new(sink), ExportThread { stop: Some(stop), done, handle: Some(handle) })
}

impl ExportThread {
    /// Sends the spans queued so far and ends the thread, waiting at most `wait`; whether
    /// it finished in time.
    pub(crate) fn stop(&mut self, wait: Duration) -> bool {
        drop(self.stop.take());
        match self.done.recv_timeout(wait) {
            Err(RecvTimeoutError::Disconnected) | Ok(()) => {
                if let Some(handle) = self.handle.take() {
                    let _ = handle.join();
                }
                true
            }
            // Still posting (a collector that does not answer): left to the process's end.
            Err(RecvTimeoutError::Timeout) => false,
        }
    }
}

struct Exports {
    spans: Receiver<SpanRecord>,
    resource: Vec<u8>,
    post: Post,
    dropped: Arc<AtomicU64>,
    batch: Vec<SpanRecord>,
    span_lens: Vec<usize>,
    body: Vec<u8>,
    /// When lost spans were last reported (the count since is kept by `run`).
    warned: Option<Instant>,
}

impl Exports {
    fn run(&mut self, wake: &Receiver<()>, stop: &Receiver<()>) {
        let mut lost = Lost::default();
        loop {
            let stopping = select! {
                recv(stop) -> _ => true,
                recv(wake) -> _ => false,
                default(EXPORT_INTERVAL) => false,
            };
            self.export_queued(&mut lost);
            lost.queue_full += self.dropped.swap(0, Ordering::Relaxed);
            // A stopping node says what it lost since the last warning, however recent.
            if lost.any() && (stopping || self.warned.is_none_or(|at| at.elapsed() >= WARN_INTERVAL)) {
                lost.warn();
                self.warned = Some(Instant::now());
                lost = Lost::default();
            }
            if stopping {
                return;
            }
        }
    }

    /// Posts everything queued, a request per [`EXPORT_BATCH_SPANS_MAX`] spans, and counts
    /// the spans of requests that failed in `lost`.
    fn export_queued(&mut self, lost: &mut Lost) {
        loop {
            self.batch.clear();
            self.batch.extend(self.spans.try_iter().take(EXPORT_BATCH_SPANS_MAX));
            if self.batch.is_empty() {
                return;
            }
            otlp::encode_request(&mut self.body, &mut self.span_lens, &self.resource, &self.batch);
            let shared = Arc::new(std::mem::take(&mut self.body));
            let posted = (self.post)(Bytes::from_owner(Shared(shared.clone())));
            // The client has let go of the body once the request is answered, as a rule.
            self.body = Arc::try_unwrap(shared).unwrap_or_default();
            if let Err(err) = posted {
                lost.failed_posts += self.batch.len() as u64;
                lost.last_error = Some(err);
            }
        }
    }
}

/// Spans lost since the last warning, and why: one warning says both.
#[derive(Default)]
struct Lost {
    /// Spans of requests the collector did not take.
    failed_posts: u64,
    /// The last such request's error.
    last_error: Option<String>,
    /// Spans dropped because the queue was full.
    queue_full: u64,
}

impl Lost {
    fn any(&self) -> bool {
        self.failed_posts + self.queue_full > 0
    }

    fn warn(&self) {
        let Lost { failed_posts, last_error, queue_full } = self;
        let spans = failed_posts + queue_full;
        match (last_error, queue_full) {
            (Some(err), 0) => tracing::warn!(spans, "spans lost: the collector failed: {err}"),
            (Some(err), _) => tracing::warn!(
                spans,
                failed_posts,
                queue_full,
                "spans lost: the collector failed ({err}) and the export queue was full"
            ),
            (None, _) => tracing::warn!(spans, "spans lost: the export queue was full"),
        }
    }
}

/// Posts over HTTP(S) with `client` to `endpoint`, as OTLP/HTTP wants it.
pub(crate) fn http_post(client: reqwest::blocking::Client, endpoint: String) -> Post {
    Box::new(move |body: Bytes| {
        let response = client
            .post(&endpoint)
            .header(reqwest::header::CONTENT_TYPE, "application/x-protobuf")
            .body(body)
            .send()
            .map_err(|err| format!("posting to {endpoint}: {err}"))?;
        let status = response.status();
        if status.is_success() { Ok(()) } else { Err(format!("{endpoint} answered {status}")) }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;

    use super::*;
    use crate::trace::span::Span;

    /// A post that keeps the span counts of the requests it is given.
    fn recording() -> (Post, Arc<Mutex<Vec<usize>>>) {
        let requests = Arc::new(Mutex::new(Vec::new()));
        let kept = requests.clone();
        let post: Post = Box::new(move |body: Bytes| {
            let request = ExportTraceServiceRequest::decode(body).map_err(|err| err.to_string())?;
            kept.lock().unwrap().push(request.resource_spans[0].scope_spans[0].spans.len());
            Ok(())
        });
        (post, requests)
    }

    #[test]
    fn stopping_sends_what_is_queued_in_requests_of_at_most_the_batch_size() {
        let (post, requests) = recording();
        let (sink, mut thread) = start(otlp::resource("twophase-test", "t1"), post);
        let spans = EXPORT_BATCH_SPANS_MAX + 10;
        for _ in 0..spans {
            Span::start(&sink, "commit", None, None, Default::default()).end();
        }
        assert!(thread.stop(Duration::from_secs(30)));
        let requests = requests.lock().unwrap();
        assert_eq!(requests.iter().sum::<usize>(), spans, "{requests:?}");
        assert!(requests.iter().all(|&n| n <= EXPORT_BATCH_SPANS_MAX), "{requests:?}");
        // The thread is gone: a span ending now is dropped without a word.
        Span::start(&sink, "commit", None, None, Default::default()).end();
    }

    #[test]
    fn a_failing_collector_loses_its_spans_and_the_thread_goes_on() {
        let calls = Arc::new(AtomicU64::new(0));
        let counted = calls.clone();
        let post: Post = Box::new(move |_: Bytes| {
            counted.fetch_add(1, Ordering::Relaxed);
            Err("refused".to_string())
        });
        let (sink, mut thread) = start(otlp::resource("twophase-test", "t1"), post);
        Span::start(&sink, "submit", None, None, Default::default()).end();
        assert!(thread.stop(Duration::from_secs(30)));
        assert_eq!(calls.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_failed_request_counts_its_spans_and_keeps_its_error_for_the_one_warning() {
        let refuse: Post = Box::new(|_: Bytes| Err("refused".to_string()));
        let (sink, mut exports, _wake) = connected(otlp::resource("twophase-test", "t1"), refuse);
        let sink = Arc::new(sink);
        for _ in 0..3 {
            Span::start(&sink, "commit", None, None, Default::default()).end();
        }
        let mut lost = Lost::default();
        exports.export_queued(&mut lost);
        assert!(lost.any());
        assert_eq!((lost.failed_posts, lost.last_error.as_deref(), lost.queue_full), (3, Some("refused"), 0));
    }
}
