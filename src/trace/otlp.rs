//! Finished spans as an OTLP `ExportTraceServiceRequest` (protobuf, the body of an
//! OTLP/HTTP export), written straight from the records into one reused buffer with prost's
//! wire-format primitives.
//!
//! The message layout is the OTLP protocol's (opentelemetry-proto's `trace.v1`,
//! `common.v1`, `resource.v1` and `collector.trace.v1`: the tests here decode what this
//! writes with that crate's types). Writing it directly rather than building those types
//! first is the point: they own a `String` or `Vec` per id, name and attribute, and
//! building, encoding and freeing them cost the export thread most of its time.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::BufMut;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};

use super::span::{Attribute, SpanRecord, Status, SyncEvent, Value};

/// `Span.SpanKind.SPAN_KIND_INTERNAL`.
const SPAN_KIND_INTERNAL: u64 = 1;
/// `SpanFlags`: the flags say whether the parent is remote, and it is.
const FLAGS_CONTEXT_HAS_IS_REMOTE: u32 = 0x100;
const FLAGS_CONTEXT_IS_REMOTE: u32 = 0x200;
/// `SpanFlags`: sampled (every span here is).
const FLAGS_SAMPLED: u32 = 0x01;
/// `Status.StatusCode`.
const STATUS_ERROR: u64 = 2;
/// The name of a log-sync event.
const SYNC_EVENT: &str = "log sync";

/// The `ResourceSpans.resource` of every request from this process: who sent the spans.
pub(crate) fn resource(service: &str, node: &str) -> Vec<u8> {
    let mut resource = Vec::new();
    for attribute in
        [Attribute::new("service.name", service.to_string()), Attribute::new("service.instance.id", node.to_string())]
    {
        put_key_value_field(&mut resource, 1, &attribute);
    }
    resource
}

/// The instrumentation scope every span is under: `InstrumentationScope { name }`.
const SCOPE: &[u8] = b"\x0a\x08twophase";

/// Writes into `request` (cleared first) the export request of `spans` from the process
/// whose [`resource`] is given. Every length is computed before its message is written, so
/// nothing written is moved; `span_lens` is scratch space for the spans' lengths.
pub(crate) fn encode_request(request: &mut Vec<u8>, span_lens: &mut Vec<usize>, resource: &[u8], spans: &[SpanRecord]) {
    request.clear();
    span_lens.clear();
    span_lens.extend(spans.iter().map(span_len));
    let scope_spans_len = field_len(1, SCOPE.len()) + span_lens.iter().map(|&len| field_len(2, len)).sum::<usize>();
    let resource_spans_len = field_len(1, resource.len()) + field_len(2, scope_spans_len);
    request.reserve(field_len(1, resource_spans_len));
    // ExportTraceServiceRequest.resource_spans
    put_len(request, 1, resource_spans_len);
    put_bytes(request, 1, resource);
    // ResourceSpans.scope_spans
    put_len(request, 2, scope_spans_len);
    put_bytes(request, 1, SCOPE);
    for (span, &len) in spans.iter().zip(span_lens.iter()) {
        let start = request.len();
        put_len(request, 2, len);
        let body = request.len();
        put_span(request, span);
        assert_eq!(request.len() - body, len, "span {} written as long as computed (from {start})", span.name);
    }
}

fn flags(span: &SpanRecord) -> u32 {
    let mut flags = FLAGS_SAMPLED | FLAGS_CONTEXT_HAS_IS_REMOTE;
    if let Some((_, true)) = span.parent {
        flags |= FLAGS_CONTEXT_IS_REMOTE;
    }
    flags
}

fn span_len(span: &SpanRecord) -> usize {
    field_len(1, 16)
        + field_len(2, 8)
        + span.parent.map_or(0, |_| field_len(4, 8))
        + field_len(5, span.name.len())
        + varint_field_len(6, SPAN_KIND_INTERNAL)
        + 2 * FIXED64_FIELD_LEN
        + span.attributes.iter().map(|attribute| field_len(9, key_value_len(attribute))).sum::<usize>()
        + span.events.iter().map(|event| field_len(11, sync_event_len(event))).sum::<usize>()
        + field_len(15, status_len(&span.status))
        + FLAGS_FIELD_LEN
}

fn put_span(buf: &mut Vec<u8>, span: &SpanRecord) {
    put_bytes(buf, 1, &span.trace_id.to_bytes());
    put_bytes(buf, 2, &span.span_id.to_bytes());
    if let Some((parent, _)) = span.parent {
        put_bytes(buf, 4, &parent.to_bytes());
    }
    put_bytes(buf, 5, span.name.as_bytes());
    put_varint(buf, 6, SPAN_KIND_INTERNAL);
    put_fixed64(buf, 7, unix_nanos(span.start));
    put_fixed64(buf, 8, unix_nanos(span.end));
    for attribute in &span.attributes {
        put_key_value_field(buf, 9, attribute);
    }
    for event in &span.events {
        put_len(buf, 11, sync_event_len(event));
        put_fixed64(buf, 1, unix_nanos(event.time));
        put_bytes(buf, 2, SYNC_EVENT.as_bytes());
        for attribute in sync_event_attributes(event).iter().flatten() {
            put_key_value_field(buf, 3, attribute);
        }
    }
    put_len(buf, 15, status_len(&span.status));
    if let Status::Error(description) = &span.status {
        put_bytes(buf, 2, description.as_bytes());
        put_varint(buf, 3, STATUS_ERROR);
    }
    encode_key(16, WireType::ThirtyTwoBit, buf);
    buf.put_u32_le(flags(span));
}

/// A log-sync event's attributes, built where they are written (nothing allocated).
fn sync_event_attributes(event: &SyncEvent) -> [Option<Attribute>; 4] {
    [
        Some(Attribute::new("twophase.record", event.record)),
        Some(Attribute::new("twophase.lsn", event.lsn as i64)),
        Some(Attribute::new("twophase.sync_us", event.sync_us)),
        event.writes.map(|writes| Attribute::new("twophase.writes", writes)),
    ]
}

fn sync_event_len(event: &SyncEvent) -> usize {
    FIXED64_FIELD_LEN
        + field_len(2, SYNC_EVENT.len())
        + sync_event_attributes(event)
            .iter()
            .flatten()
            .map(|attribute| field_len(3, key_value_len(attribute)))
            .sum::<usize>()
}

fn status_len(status: &Status) -> usize {
    match status {
        Status::Unset => 0,
        Status::Error(description) => field_len(2, description.len()) + varint_field_len(3, STATUS_ERROR),
    }
}

/// An attribute as a `KeyValue`, field `tag` of its message.
fn put_key_value_field(buf: &mut Vec<u8>, tag: u32, attribute: &Attribute) {
    put_len(buf, tag, key_value_len(attribute));
    put_bytes(buf, 1, attribute.key.as_bytes());
    put_len(buf, 2, any_value_len(&attribute.value));
    put_any_value(buf, &attribute.value);
}

fn key_value_len(attribute: &Attribute) -> usize {
    field_len(1, attribute.key.len()) + field_len(2, any_value_len(&attribute.value))
}

/// An `AnyValue`'s length: its one field, always written (a oneof has no default to leave
/// out).
fn any_value_len(value: &Value) -> usize {
    match value {
        Value::Int(number) => int_value_len(*number),
        Value::Text(text) => field_len(1, text.len()),
        Value::Ints(numbers) => field_len(5, int_array_len(numbers)),
    }
}

fn int_value_len(number: i64) -> usize {
    varint_field_len(3, number as u64)
}

fn put_any_value(buf: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Int(number) => put_varint(buf, 3, *number as u64),
        Value::Text(text) => put_bytes(buf, 1, text.as_bytes()),
        Value::Ints(numbers) => {
            put_len(buf, 5, int_array_len(numbers));
            for &number in numbers.iter() {
                put_len(buf, 1, int_value_len(number));
                put_varint(buf, 3, number as u64);
            }
        }
    }
}

/// An `ArrayValue` of integers: each element an `AnyValue` in field 1.
fn int_array_len(numbers: &[i64]) -> usize {
    numbers.iter().map(|&number| field_len(1, int_value_len(number))).sum()
}

/// A field's key (tags below 16 take one byte, up to 2047 two).
fn key_len(tag: u32) -> usize {
    encoded_len_varint(u64::from(tag << 3))
}

/// A length-delimited field of `len` bytes, whole.
fn field_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

fn varint_field_len(tag: u32, value: u64) -> usize {
    key_len(tag) + encoded_len_varint(value)
}

/// A fixed64 field below tag 16: key and 8 bytes.
const FIXED64_FIELD_LEN: usize = 9;
/// `Span.flags` (fixed32, tag 16): two bytes of key and 4.
const FLAGS_FIELD_LEN: usize = 6;

/// The key and length of a length-delimited field whose `len` bytes follow.
fn put_len(buf: &mut Vec<u8>, tag: u32, len: usize) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

fn put_bytes(buf: &mut Vec<u8>, tag: u32, bytes: &[u8]) {
    put_len(buf, tag, bytes.len());
    buf.put_slice(bytes);
}

fn put_varint(buf: &mut Vec<u8>, tag: u32, value: u64) {
    encode_key(tag, WireType::Varint, buf);
    encode_varint(value, buf);
}

fn put_fixed64(buf: &mut Vec<u8>, tag: u32, value: u64) {
    encode_key(tag, WireType::SixtyFourBit, buf);
    buf.put_u64_le(value);
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH).map_or(0, |since| u64::try_from(since.as_nanos()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use opentelemetry::trace::{SpanId, TraceId};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
    use opentelemetry_proto::tonic::trace::v1::status::StatusCode;
    use prost::Message;

    use super::*;

    fn record(name: &'static str, parent: Option<(SpanId, bool)>) -> SpanRecord {
        let start = UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        SpanRecord {
            trace_id: TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            span_id: SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            parent,
            name,
            start,
            end: start + Duration::from_micros(1500),
            attributes: Default::default(),
            events: Default::default(),
            status: Status::Unset,
        }
    }

    fn decode(spans: &[SpanRecord]) -> ExportTraceServiceRequest {
        let mut request = vec![0xff]; // cleared first
        encode_request(&mut request, &mut Vec::new(), &resource("twophase-coordinator", "c1"), spans);
        ExportTraceServiceRequest::decode(&request[..]).expect("valid OTLP protobuf")
    }

    fn any(value: any_value::Value) -> Option<AnyValue> {
        Some(AnyValue { value: Some(value) })
    }

    #[test]
    fn what_is_written_decodes_as_the_same_spans_with_their_resource_and_scope() {
        let mut submit = record("submit", None);
        submit.attributes = [
            Attribute::new("twophase.txid", 42),
            Attribute::new("twophase.outcome", "committed"),
            Attribute::new("twophase.participants", vec![1, -2]),
            Attribute::new("twophase.lsn", i64::MIN),
            Attribute::new("twophase.detail", String::from("x").repeat(300)),
        ]
        .into_iter()
        .collect();
        let mut prepare = record("prepare", Some((SpanId::from_hex("0102030405060708").unwrap(), true)));
        prepare.events.push(SyncEvent {
            time: prepare.start + Duration::from_micros(900),
            record: "Prepared",
            lsn: 0,
            sync_us: 900,
            writes: Some(2),
        });
        prepare.events.push(SyncEvent { writes: None, ..prepare.events[0].clone() });
        prepare.status = Status::error("no vote: timeout");
        let request = decode(&[submit, prepare]);

        assert_eq!(request.resource_spans.len(), 1);
        let resource_spans = &request.resource_spans[0];
        let resource = resource_spans.resource.as_ref().unwrap();
        let names: Vec<_> = resource.attributes.iter().map(|kv| (kv.key.as_str(), kv.value.clone())).collect();
        assert_eq!(
            names,
            [
                ("service.name", any(any_value::Value::StringValue("twophase-coordinator".into()))),
                ("service.instance.id", any(any_value::Value::StringValue("c1".into())))
            ]
        );
        assert_eq!(resource_spans.scope_spans.len(), 1);
        assert_eq!(resource_spans.scope_spans[0].scope.as_ref().unwrap().name, "twophase");
        let spans = &resource_spans.scope_spans[0].spans;
        assert_eq!(spans.len(), 2);

        let submit = &spans[0];
        assert_eq!(submit.name, "submit");
        assert_eq!(submit.trace_id, TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap().to_bytes());
        assert_eq!(submit.span_id, SpanId::from_hex("00f067aa0ba902b7").unwrap().to_bytes());
        assert!(submit.parent_span_id.is_empty(), "a root names no parent");
        assert_eq!(submit.flags, 0x101, "sampled, parent known not to be remote");
        assert_eq!(submit.kind, SPAN_KIND_INTERNAL as i32);
        assert_eq!(submit.start_time_unix_nano, 1_700_000_000_123_456_789);
        assert_eq!(submit.end_time_unix_nano - submit.start_time_unix_nano, 1_500_000);
        let attributes: Vec<_> = submit.attributes.iter().map(|kv| (kv.key.as_str(), kv.value.clone())).collect();
        let list = |values: Vec<i64>| {
            let values = values.into_iter().filter_map(|v| any(any_value::Value::IntValue(v))).collect();
            any_value::Value::ArrayValue(opentelemetry_proto::tonic::common::v1::ArrayValue { values })
        };
        assert_eq!(
            attributes,
            [
                ("twophase.txid", any(any_value::Value::IntValue(42))),
                ("twophase.outcome", any(any_value::Value::StringValue("committed".into()))),
                ("twophase.participants", any(list(vec![1, -2]))),
                ("twophase.lsn", any(any_value::Value::IntValue(i64::MIN))),
                ("twophase.detail", any(any_value::Value::StringValue("x".repeat(300)))),
            ]
        );
        assert_eq!(submit.status.as_ref().unwrap().code, StatusCode::Unset as i32);

        let prepare = &spans[1];
        assert_eq!(prepare.parent_span_id, [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(prepare.flags, 0x301, "sampled, parent remote");
        assert_eq!(prepare.events.len(), 2);
        let event = &prepare.events[0];
        assert_eq!((event.name.as_str(), event.time_unix_nano), ("log sync", 1_700_000_000_124_356_789));
        let attributes: Vec<_> = event.attributes.iter().map(|kv| (kv.key.as_str(), kv.value.clone())).collect();
        assert_eq!(
            attributes,
            [
                ("twophase.record", any(any_value::Value::StringValue("Prepared".into()))),
                ("twophase.lsn", any(any_value::Value::IntValue(0))), // a zero is still written
                ("twophase.sync_us", any(any_value::Value::IntValue(900))),
                ("twophase.writes", any(any_value::Value::IntValue(2))),
            ]
        );
        assert_eq!(prepare.events[1].attributes.len(), 3, "no writes, no attribute");
        let status = prepare.status.as_ref().unwrap();
        assert_eq!((status.code, status.message.as_str()), (StatusCode::Error as i32, "no vote: timeout"));
    }

    #[test]
    fn a_request_of_many_spans_decodes_whole() {
        let spans: Vec<SpanRecord> = (0..2048).map(|_| record("commit", None)).collect();
        let request = decode(&spans);
        assert_eq!(request.resource_spans[0].scope_spans[0].spans.len(), 2048);
        assert!(decode(&[]).resource_spans[0].scope_spans[0].spans.is_empty());
    }
}
