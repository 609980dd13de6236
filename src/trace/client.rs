//! The load generator's spans: for each transaction it samples, one `transaction` span (the
//! root of the trace) from just before the request is sent until its outcome arrives. Its
//! context travels ahead of the request (`Pipeline::send_traced`), so the coordinator's
//! `submit` becomes its child and the nodes continue the trace.

use std::fmt;

use bytes::Bytes;
use twophase_bench::{TracedTx, TxTracer};
use twophase_engine::Outcome;

use super::{Attribute, Attributes, Exporter, Span, Status, context};

/// Samples the load generator's transactions at the exporter's rate.
pub struct LoadTracer {
    exporter: Exporter,
}

impl LoadTracer {
    pub fn new(exporter: Exporter) -> LoadTracer {
        LoadTracer { exporter }
    }
}

impl fmt::Debug for LoadTracer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadTracer").field("sample_rate", &self.exporter.sample_rate).finish()
    }
}

impl TxTracer for LoadTracer {
    fn start(&self) -> Option<Box<dyn TracedTx>> {
        if !self.exporter.sample_root() {
            return None;
        }
        Some(Box::new(ClientSpan(self.exporter.span("transaction", None, None, Attributes::new()))))
    }
}

struct ClientSpan(Span);

impl TracedTx for ClientSpan {
    fn traceparent(&self) -> Bytes {
        context::format(&self.0.span_context())
    }

    fn finish(mut self: Box<Self>, outcome: &Outcome) {
        set_outcome(&mut self.0, outcome);
        self.0.end();
    }
}

/// The outcome as the coordinator's `submit` span names it.
pub fn set_outcome(span: &mut Span, outcome: &Outcome) {
    match outcome {
        Outcome::Committed { .. } => span.set_attribute(Attribute::new("twophase.outcome", "committed")),
        Outcome::CommittedReadsUnavailable => {
            span.set_attribute(Attribute::new("twophase.outcome", "committed_reads_unavailable"))
        }
        Outcome::Aborted { reason } => {
            span.set_attribute(Attribute::new("twophase.outcome", "aborted"));
            span.set_attribute(Attribute::new("twophase.abort_reason", reason.label()));
            span.set_status(Status::error(reason.label()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::trace::TraceArgs;

    fn tracer(rate: f64) -> LoadTracer {
        // Nothing listens on port 9: the spans are dropped by the exporter, not by us.
        let args =
            TraceArgs { trace_sample: Some(rate), otlp_endpoint: Some("http://127.0.0.1:9".into()), otlp_ca: None };
        LoadTracer::new(Exporter::start(&args, "twophase-test", "t1").unwrap().expect("tracing on"))
    }

    #[test]
    fn every_transaction_is_traced_at_rate_one_with_a_sampled_root_context() {
        let tracer = tracer(1.0);
        for _ in 0..10 {
            let span = tracer.start().expect("sampled");
            let parsed = context::parse(&span.traceparent()).expect("a valid traceparent");
            assert!(parsed.is_sampled());
            span.finish(&Outcome::Committed { reads: Vec::new() });
        }
    }

    #[test]
    fn a_small_rate_traces_about_that_share() {
        let tracer = tracer(0.01);
        let traced = (0..100_000).filter(|_| tracer.start().is_some()).count();
        // Binomial(100000, 0.01): mean 1000, standard deviation ~31.5; 8 sigmas either side.
        assert!((750..=1250).contains(&traced), "{traced} of 100000 traced at 1%");
    }
}
