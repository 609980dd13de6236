//! OpenTelemetry traces of sampled transactions, across the client, the coordinator and the
//! participants.
//!
//! Owns: the `--trace-sample` / `--otlp-endpoint` flags ([`TraceArgs`]), the exporter
//! ([`Exporter`]: OTLP over HTTP/protobuf from the SDK's batch span processor, a thread of
//! its own behind a bounded queue that drops spans when full), the W3C `traceparent`
//! encoding ([`context`]), and one tracer per role ([`coordinator`], [`participant`]) that
//! derives spans from what the runtime already sees: frames in, the engine's appends and
//! outputs, the log's durable LSN, the outputs released.
//!
//! Invariants: the engine thread never waits on tracing (ending a span is a `try_send` into
//! the bounded queue); with `--trace-sample 0` a node holds no tracer (`None`) and allocates
//! nothing per transaction; every map here is bounded (oldest entries go first); unsampled
//! transactions put nothing new on the wire.
//!
//! Must not: reach into the engine (it stays sans-IO and unaware of tracing) or decide
//! anything about the protocol.

mod bounded;
pub mod context;
pub mod coordinator;
pub mod participant;

use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use clap::Args;
use opentelemetry::trace::{SpanContext, SpanKind, TraceContextExt, Tracer as _, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, Span};

/// Where spans go unless `--otlp-endpoint` says otherwise: a collector on this machine.
pub const DEFAULT_OTLP_ENDPOINT: &str = "http://127.0.0.1:4318/v1/traces";
/// Spans waiting for export at most; beyond, new ones are dropped (never waited for).
const QUEUE_SPANS_MAX: usize = 8192;
/// Spans per export request at most.
const EXPORT_BATCH_SPANS_MAX: usize = 512;
/// How often the batch thread exports what is queued.
const EXPORT_INTERVAL: Duration = Duration::from_millis(500);
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
    /// OTLP/HTTP (protobuf) endpoint spans are sent to; a URL without a path gets
    /// `/v1/traces` [default: http://127.0.0.1:4318/v1/traces].
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
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
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    sample_rate: f64,
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
        if !endpoint.starts_with("http://") && !endpoint.starts_with("https://") {
            bail!("--otlp-endpoint {endpoint} is not an http:// or https:// URL");
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint.clone())
            .with_timeout(EXPORT_TIMEOUT)
            .build()
            .with_context(|| format!("building the OTLP exporter for {endpoint}"))?;
        let batch = BatchConfigBuilder::default()
            .with_max_queue_size(QUEUE_SPANS_MAX)
            .with_max_export_batch_size(EXPORT_BATCH_SPANS_MAX)
            .with_scheduled_delay(EXPORT_INTERVAL)
            .build();
        let processor = BatchSpanProcessor::builder(exporter).with_batch_config(batch).build();
        let resource = Resource::builder()
            .with_service_name(service.to_string())
            .with_attribute(KeyValue::new("service.instance.id", node.to_string()))
            .build();
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::AlwaysOn)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("twophase");
        tracing::info!(sample_rate, %endpoint, "tracing sampled transactions");
        Ok(Some(Exporter { provider, tracer, sample_rate }))
    }

    /// Whether a transaction that starts here (no caller's context) is traced.
    pub fn sample_root(&self) -> bool {
        self.sample_rate >= 1.0 || rand::random::<f64>() < self.sample_rate
    }

    /// Starts span `name` as a child of `parent` (a root when `None`), at `start` if given.
    pub fn span(
        &self,
        name: &'static str,
        parent: Option<&SpanContext>,
        start: Option<SystemTime>,
        attributes: Vec<KeyValue>,
    ) -> Span {
        let context = match parent {
            Some(parent) => Context::new().with_remote_span_context(parent.clone()),
            None => Context::new(),
        };
        let mut builder = self.tracer.span_builder(name).with_kind(SpanKind::Internal).with_attributes(attributes);
        if let Some(start) = start {
            builder = builder.with_start_time(start);
        }
        builder.start_with_context(&self.tracer, &context)
    }
}

impl Drop for Exporter {
    fn drop(&mut self) {
        if let Err(err) = self.provider.shutdown_with_timeout(SHUTDOWN_WAIT) {
            tracing::warn!("sending the last spans: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let args = |url: &str| TraceArgs { trace_sample: Some(1.0), otlp_endpoint: Some(url.to_string()) };
        assert_eq!(TraceArgs::default().endpoint(), DEFAULT_OTLP_ENDPOINT);
        assert_eq!(args("http://collector:4318").endpoint(), "http://collector:4318/v1/traces");
        assert_eq!(args("http://collector:4318/").endpoint(), "http://collector:4318/v1/traces");
        assert_eq!(args("http://collector:4318/custom/path").endpoint(), "http://collector:4318/custom/path");
    }

    #[test]
    fn flags_pass_through_to_child_processes_unchanged() {
        assert!(TraceArgs::default().to_args().is_empty());
        let args = TraceArgs { trace_sample: Some(0.25), otlp_endpoint: Some("http://h:1".into()) };
        assert_eq!(args.to_args(), ["--trace-sample", "0.25", "--otlp-endpoint", "http://h:1"]);
    }

    #[test]
    fn no_exporter_is_built_at_rate_zero() {
        assert!(Exporter::start(&TraceArgs::default(), "twophase-test", "t1").unwrap().is_none());
        let off = TraceArgs { trace_sample: Some(0.0), otlp_endpoint: Some("http://127.0.0.1:9".into()) };
        assert!(Exporter::start(&off, "twophase-test", "t1").unwrap().is_none());
    }
}
