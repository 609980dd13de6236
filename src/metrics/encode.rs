//! Small helpers over prometheus-client's encoder for values read from a snapshot (the
//! `Const*` metrics): one descriptor, then one sample per label value.

use std::fmt;

use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

use super::histogram::LatencyHistogram;

/// A counter; the encoder appends `_total` to `name`.
pub fn counter(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: u64) -> fmt::Result {
    let metric = ConstCounter::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// A counter with one label: one sample per `(label value, count)`.
pub fn counters<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, u64)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (label_value, value) in values {
        ConstCounter::new(value).encode(metric.encode_family(&[(label, label_value)])?)?;
    }
    Ok(())
}

pub fn gauge(encoder: &mut DescriptorEncoder, name: &str, help: &str, value: f64) -> fmt::Result {
    let metric = ConstGauge::new(value);
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

/// A gauge with one label: one sample per `(label value, value)`.
pub fn gauges<'a>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    label: &str,
    values: impl IntoIterator<Item = (&'a str, f64)>,
) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (label_value, value) in values {
        ConstGauge::new(value).encode(metric.encode_family(&[(label, label_value)])?)?;
    }
    Ok(())
}

/// A histogram read from the wal (its buckets are per-bucket counts, `+Inf` last).
pub fn wal_histogram(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    histogram: &twophase_wal::WalHistogram,
) -> fmt::Result {
    let buckets: Vec<(f64, u64)> = histogram
        .buckets
        .iter()
        .map(|&(bound, count)| (if bound.is_finite() { bound } else { f64::MAX }, count))
        .collect();
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    metric.encode_histogram::<NoLabelSet>(histogram.sum, histogram.count, &buckets, None)
}

/// A histogram in seconds (`name` should end in `_seconds`).
pub fn histogram(encoder: &mut DescriptorEncoder, name: &str, help: &str, histogram: &LatencyHistogram) -> fmt::Result {
    let mut metric = encoder.encode_descriptor(name, help, None, MetricType::Histogram)?;
    metric.encode_histogram::<NoLabelSet>(histogram.sum_seconds(), histogram.count(), &histogram.buckets(), None)
}
