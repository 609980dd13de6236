//! OpenTelemetry traces of sampled transactions, across the client, the coordinator and the
//! participants.
//!
//! Owns: the `--trace-sample` / `--otlp-endpoint` / `--otlp-ca` flags ([`TraceArgs`]), the
//! exporter ([`Exporter`]): spans as plain records ([`span`]) that end into a bounded queue,
//! and a thread of its own ([`export`]) that writes them as OTLP/HTTP protobuf ([`otlp`])
//! and posts them, over HTTPS trusting the system's roots and `--otlp-ca` when the endpoint
//! says so, at idle priority with its HTTP client's thread ([`idle`]); the W3C
//! `traceparent` encoding ([`context`]), and one tracer per role ([`coordinator`],
//! [`participant`]) that derives spans from what the runtime already sees: frames in, the
//! engine's appends and outputs, the log's durable LSN, the outputs released. A log sync is
//! an event ("log sync": record, LSN, `sync_us`) on the span that waited for it, not a span
//! of its own: fewer spans per traced transaction, and the wait is still on its timeline.
//!
//! Invariants: the engine thread never waits on tracing (ending a span is a `try_send` into
//! the bounded queue); with `--trace-sample 0` a node holds no tracer (`None`) and allocates
//! nothing per transaction; with it on, an unsampled transaction costs one countdown at
//! the coordinator and, in every hook, a miss in a presence filter (no hashing, no
//! allocation); every map here is bounded (oldest entries go first); unsampled
//! transactions put nothing new on the wire.
//!
//! Must not: reach into the engine (it stays sans-IO and unaware of tracing) or decide
//! anything about the protocol.

mod bounded;
pub mod client;
pub mod context;
pub mod coordinator;
mod export;
mod idle;
mod otlp;
pub mod participant;
mod span;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use clap::Args;
use opentelemetry::trace::SpanContext;
pub(crate) use span::SyncEvent;
pub use span::{Attribute, Attributes, Span, Status};

/// Where spans go unless `--otlp-endpoint` says otherwise: a collector on this machine.
pub const DEFAULT_OTLP_ENDPOINT: &str = "http://127.0.0.1:4318/v1/traces";
/// Longest one export request may take.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest a stopping process waits for its last spans to leave.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);
/// Transactions traced at once per process at most (their open spans); the oldest is
/// dropped (its spans end) to make room.
pub(crate) const TRACED_TXS_MAX: usize = 16_384;

/// The tracing flags every node, the load generator and `twophase tx` take.
#[derive(Args, Clone, Debug, Default, PartialEq)]
pub struct TraceArgs {
    /// Share of transactions traced with OpenTelemetry, 0.0–1.0; 0 turns tracing off. On a
    /// participant any rate above 0 turns it on: which transactions are traced is decided
    /// where they start (the client or the coordinator) [default: 0].
    #[arg(long, value_name = "RATE", value_parser = parse_rate)]
    pub trace_sample: Option<f64>,
    /// OTLP/HTTP (protobuf) endpoint spans are sent to, http:// or https://; a URL without a
    /// path gets `/v1/traces` [default: http://127.0.0.1:4318/v1/traces].
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// PEM file of CA certificates an https:// endpoint may chain to, trusted besides the
    /// system's root certificates (a collector with a private CA).
    #[arg(long, value_name = "FILE")]
    pub otlp_ca: Option<PathBuf>,
}

impl TraceArgs {
    pub fn sample_rate(&self) -> f64 {
        self.trace_sample.unwrap_or(0.0)
    }

    pub fn endpoint(&self) -> String {
        let Some(url) = &self.otlp_endpoint else { return DEFAULT_OTLP_ENDPOINT.to_string() };
        let after_scheme = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
        if after_scheme.trim_end_matches('/').contains('/') {
            url.clone()
        } else {
            format!("{}/v1/traces", url.trim_end_matches('/'))
        }
    }

    /// The same flags for a child process (the local cluster's nodes).
    pub fn to_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(rate) = self.trace_sample {
            args.extend(["--trace-sample".to_string(), rate.to_string()]);
        }
        if let Some(url) = &self.otlp_endpoint {
            args.extend(["--otlp-endpoint".to_string(), url.clone()]);
        }
        if let Some(ca) = &self.otlp_ca {
            args.extend(["--otlp-ca".to_string(), ca.display().to_string()]);
        }
        args
    }
}

fn parse_rate(text: &str) -> Result<f64, String> {
    let rate: f64 = text.parse().map_err(|_| format!("{text} is not a number"))?;
    if !(0.0..=1.0).contains(&rate) {
        return Err(format!("{rate} is not between 0.0 and 1.0"));
    }
    Ok(rate)
}

/// A process's span exporter and the sampling rate of the transactions it starts. Dropping
/// it sends the spans still queued (waiting at most [`SHUTDOWN_WAIT`]).
pub struct Exporter {
    sink: std::sync::Arc<span::SpanSink>,
    thread: export::ExportThread,
    sample_rate: f64,
    /// The export thread and the HTTP client's, at idle priority ([`idle`]).
    idle_threads: Vec<libc::pid_t>,
}

impl Exporter {
    /// `None` when the rate is 0 (tracing off). `service` names the kind of process
    /// (`twophase-coordinator`), `node` this one (`c1`).
    pub fn start(args: &TraceArgs, service: &str, node: &str) -> anyhow::Result<Option<Exporter>> {
        let sample_rate = args.sample_rate();
        if sample_rate <= 0.0 {
            return Ok(None);
        }
        let endpoint = args.endpoint();
        // Checked here: a bad URL or CA file would otherwise fail every export.
        let https = endpoint.starts_with("https://");
        if !https && !endpoint.starts_with("http://") {
            bail!("--otlp-endpoint {endpoint} is not an http:// or https:// URL");
        }
        let extra_roots = match &args.otlp_ca {
            Some(_) if !https => bail!("--otlp-ca is for an https:// endpoint, not {endpoint}"),
            Some(path) => read_ca_file(path)?,
            None => Vec::new(),
        };
        let resource = otlp::resource(service, node);
        // Built where their threads start at idle priority: see `idle`.
        let (started, idle_threads) = idle::build_at_idle_priority(|| {
            let post = export::http_post(http_client(extra_roots)?, endpoint.clone());
            anyhow::Ok(export::start(resource, post))
        });
        let (sink, thread) = started?;
        tracing::info!(sample_rate, %endpoint, "tracing sampled transactions");
        Ok(Some(Exporter { sink, thread, sample_rate, idle_threads }))
    }

    /// Whether a transaction that starts here (no caller's context) is traced.
    pub fn sample_root(&self) -> bool {
        self.sample_rate >= 1.0 || rand::random::<f64>() < self.sample_rate
    }

    /// How many transactions that start here to skip before the next traced one: a
    /// geometric draw, so that counting down decides each transaction at the sampling rate
    /// without a random number per transaction.
    pub fn next_sample_gap(&self) -> u64 {
        geometric_gap(self.sample_rate, rand::random::<f64>())
    }

    /// Starts span `name` as a child of `parent` (a root when `None`), at `start` if given.
    pub fn span(
        &self,
        name: &'static str,
        parent: Option<&SpanContext>,
        start: Option<SystemTime>,
        attributes: Attributes,
    ) -> Span {
        Span::start(&self.sink, name, parent, start, attributes)
    }
}

/// Failures before the first success of trials that succeed with probability `rate`, from a
/// uniform draw `uniform` in [0, 1).
fn geometric_gap(rate: f64, uniform: f64) -> u64 {
    if rate >= 1.0 {
        return 0;
    }
    if rate <= 0.0 {
        return u64::MAX;
    }
    // 1 - uniform is in (0, 1]: its logarithm is finite and not positive.
    let gap = ((1.0 - uniform).ln() / (1.0 - rate).ln()).floor();
    if gap >= u64::MAX as f64 { u64::MAX } else { gap as u64 }
}

/// The oldest of `pending` (queued in LSN order) if the log is now durable up to it.
pub(crate) fn pop_durable<T>(
    pending: &mut VecDeque<T>,
    durable: twophase_engine::Lsn,
    lsn: impl Fn(&T) -> twophase_engine::Lsn,
) -> Option<T> {
    if pending.front().is_some_and(|oldest| lsn(oldest) <= durable) { pending.pop_front() } else { None }
}

/// The CA certificates of `--otlp-ca`: at least one, every one parsed.
fn read_ca_file(path: &std::path::Path) -> anyhow::Result<Vec<reqwest::Certificate>> {
    let pem = std::fs::read(path).with_context(|| format!("--otlp-ca: reading {}", path.display()))?;
    let certificates = reqwest::Certificate::from_pem_bundle(&pem)
        .with_context(|| format!("--otlp-ca: {} is not a PEM certificate bundle", path.display()))?;
    if certificates.is_empty() {
        bail!("--otlp-ca: {} holds no PEM certificate", path.display());
    }
    Ok(certificates)
}

/// The HTTP client the export thread posts with (reqwest's blocking client, which starts
/// a thread of its own), over TLS for an https:// endpoint, trusting the system's roots
/// and `extra_roots`.
fn http_client(extra_roots: Vec<reqwest::Certificate>) -> anyhow::Result<reqwest::blocking::Client> {
    let mut client = reqwest::blocking::Client::builder().timeout(EXPORT_TIMEOUT);
    for root in extra_roots {
        client = client.add_root_certificate(root);
    }
    client.build().context("building the OTLP exporter's HTTP client")
}

impl Drop for Exporter {
    fn drop(&mut self) {
        // The last spans leave now, not when a CPU happens to be idle.
        idle::restore_normal_priority(&self.idle_threads);
        if !self.thread.stop(SHUTDOWN_WAIT) {
            tracing::warn!("sending the last spans: not done after {SHUTDOWN_WAIT:?}");
        }
    }
}

/// An exporter that keeps the names of the spans it sends, for tests of the span hooks.
#[cfg(test)]
pub(crate) mod test_support {
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;

    use super::{Exporter, export, otlp};

    /// Samples every transaction; posts nowhere, keeping each sent span's name.
    pub(crate) fn recording_exporter() -> (Exporter, Arc<Mutex<Vec<String>>>) {
        let names = Arc::new(Mutex::new(Vec::new()));
        let kept = names.clone();
        let post: export::Post = Box::new(move |body: Bytes| {
            let request = ExportTraceServiceRequest::decode(body).map_err(|err| err.to_string())?;
            let spans = request.resource_spans.iter().flat_map(|r| &r.scope_spans).flat_map(|s| &s.spans);
            kept.lock().unwrap().extend(spans.map(|span| span.name.clone()));
            Ok(())
        });
        let (sink, thread) = export::start(otlp::resource("twophase-test", "t1"), post);
        (Exporter { sink, thread, sample_rate: 1.0, idle_threads: Vec::new() }, names)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_records_up_to_the_durable_lsn_are_popped_oldest_first() {
        use twophase_engine::Lsn;
        let mut pending: VecDeque<u64> = [3, 5, 9].into();
        let popped: Vec<u64> = std::iter::from_fn(|| pop_durable(&mut pending, Lsn(5), |&lsn| Lsn(lsn))).collect();
        assert_eq!(popped, [3, 5]);
        assert_eq!(pending, [9], "a record past the durable LSN stays queued");
        assert_eq!(pop_durable(&mut pending, Lsn(8), |&lsn| Lsn(lsn)), None);
    }

    #[test]
    fn rates_outside_zero_to_one_are_refused() {
        assert_eq!(parse_rate("0.01"), Ok(0.01));
        assert_eq!(parse_rate("1"), Ok(1.0));
        assert!(parse_rate("1.5").unwrap_err().contains("not between"));
        assert!(parse_rate("-0.1").is_err());
        assert!(parse_rate("often").unwrap_err().contains("not a number"));
    }

    #[test]
    fn an_endpoint_without_a_path_gets_the_traces_path() {
        let args =
            |url: &str| TraceArgs { trace_sample: Some(1.0), otlp_endpoint: Some(url.to_string()), otlp_ca: None };
        assert_eq!(TraceArgs::default().endpoint(), DEFAULT_OTLP_ENDPOINT);
        assert_eq!(args("http://collector:4318").endpoint(), "http://collector:4318/v1/traces");
        assert_eq!(args("http://collector:4318/").endpoint(), "http://collector:4318/v1/traces");
        assert_eq!(args("http://collector:4318/custom/path").endpoint(), "http://collector:4318/custom/path");
    }

    #[test]
    fn flags_pass_through_to_child_processes_unchanged() {
        assert!(TraceArgs::default().to_args().is_empty());
        let args = TraceArgs {
            trace_sample: Some(0.25),
            otlp_endpoint: Some("https://h:1".into()),
            otlp_ca: Some("/etc/collector-ca.pem".into()),
        };
        let expected =
            ["--trace-sample", "0.25", "--otlp-endpoint", "https://h:1", "--otlp-ca", "/etc/collector-ca.pem"];
        assert_eq!(args.to_args(), expected);
    }

    #[test]
    fn sample_gaps_are_geometric() {
        assert_eq!(geometric_gap(1.0, 0.7), 0, "rate 1 traces every transaction");
        assert_eq!(geometric_gap(0.0, 0.7), u64::MAX);
        assert_eq!(geometric_gap(0.01, 0.0), 0, "the smallest draw traces the next one");
        // P(gap >= k) = (1 - rate)^k: the median gap at 1% is ln 0.5 / ln 0.99 = 68.97.
        assert_eq!(geometric_gap(0.01, 0.5), 68);
        assert!(geometric_gap(0.01, 0.999_999) > 1000);
        // Counting down over many draws traces about the rate's share.
        let mut traced = 0u64;
        let mut until_traced = 0u64;
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..200_000 {
            if until_traced == 0 {
                traced += 1;
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                until_traced = geometric_gap(0.01, (state >> 11) as f64 / (1u64 << 53) as f64);
            } else {
                until_traced -= 1;
            }
        }
        // Mean 2000, standard deviation ~44: eight of them either side.
        assert!((1650..=2350).contains(&traced), "{traced} of 200000 traced at 1%");
    }

    #[test]
    fn no_exporter_is_built_at_rate_zero() {
        assert!(Exporter::start(&TraceArgs::default(), "twophase-test", "t1").unwrap().is_none());
        let off =
            TraceArgs { trace_sample: Some(0.0), otlp_endpoint: Some("http://127.0.0.1:9".into()), otlp_ca: None };
        assert!(Exporter::start(&off, "twophase-test", "t1").unwrap().is_none());
    }

    #[test]
    fn endpoints_must_be_http_or_https_and_a_ca_file_must_hold_certificates() {
        let at = |url: &str, ca: Option<&std::path::Path>| TraceArgs {
            trace_sample: Some(0.5),
            otlp_endpoint: Some(url.to_string()),
            otlp_ca: ca.map(std::path::Path::to_path_buf),
        };
        let refused = |args: TraceArgs| Exporter::start(&args, "twophase-test", "t1").err().unwrap().to_string();
        assert!(refused(at("collector:4318", None)).contains("not an http:// or https:// URL"));
        assert!(Exporter::start(&at("http://127.0.0.1:9", None), "twophase-test", "t1").unwrap().is_some());
        assert!(Exporter::start(&at("https://127.0.0.1:9", None), "twophase-test", "t1").unwrap().is_some());

        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate").unwrap();
        let ca = refused(at("http://127.0.0.1:9", Some(&garbage)));
        assert!(ca.contains("--otlp-ca is for an https:// endpoint"), "{ca}");
        let ca = refused(at("https://127.0.0.1:9", Some(&missing)));
        assert!(ca.contains("reading") && ca.contains("missing.pem"), "{ca}");
        let ca = refused(at("https://127.0.0.1:9", Some(&garbage)));
        assert!(ca.contains("holds no PEM certificate") || ca.contains("not a PEM"), "{ca}");
    }
}
