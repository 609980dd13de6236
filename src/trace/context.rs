//! W3C trace context: the `traceparent` value (`00-<32 hex trace id>-<16 hex span id>-<2 hex
//! flags>`) that travels in `TraceContext` frames.

use bytes::Bytes;
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

/// Length of a version-00 traceparent.
const TRACEPARENT_BYTES: usize = 55;

/// `span`'s traceparent.
pub fn format(span: &SpanContext) -> Bytes {
    let mut text = [0u8; TRACEPARENT_BYTES];
    text[..3].copy_from_slice(b"00-");
    lower_hex_into(&mut text[3..35], &span.trace_id().to_bytes());
    text[35] = b'-';
    lower_hex_into(&mut text[36..52], &span.span_id().to_bytes());
    text[52] = b'-';
    lower_hex_into(&mut text[53..], &[span.trace_flags().to_u8()]);
    Bytes::copy_from_slice(&text)
}

/// `bytes` as lowercase hex digits into `out`, two per byte.
fn lower_hex_into(out: &mut [u8], bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    assert_eq!(out.len(), 2 * bytes.len());
    for (pair, byte) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = DIGITS[usize::from(byte >> 4)];
        pair[1] = DIGITS[usize::from(byte & 0xf)];
    }
}

/// The span context a traceparent names, or `None` when it is malformed or names no valid
/// span. A later version may append fields after the first four; they are ignored.
pub fn parse(traceparent: &[u8]) -> Option<SpanContext> {
    let text = std::str::from_utf8(traceparent).ok()?;
    let exact = text.len() == TRACEPARENT_BYTES;
    let extended = text.len() > TRACEPARENT_BYTES && text.as_bytes()[TRACEPARENT_BYTES] == b'-';
    if !(exact || (extended && !text.starts_with("00"))) {
        return None;
    }
    let mut fields = text[..TRACEPARENT_BYTES].split('-');
    let (version, trace_id, span_id, flags) = (fields.next()?, fields.next()?, fields.next()?, fields.next()?);
    if version.len() != 2 || version == "ff" || trace_id.len() != 32 || span_id.len() != 16 || flags.len() != 2 {
        return None;
    }
    let lower_hex = |field: &str| field.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    if ![version, trace_id, span_id, flags].into_iter().all(lower_hex) {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let context = SpanContext::new(
        TraceId::from_hex(trace_id).ok()?,
        SpanId::from_hex(span_id).ok()?,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn a_traceparent_round_trips() {
        let context = parse(EXAMPLE.as_bytes()).unwrap();
        assert!(context.is_sampled() && context.is_remote());
        assert_eq!(context.trace_id(), TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap());
        assert_eq!(&format(&context)[..], EXAMPLE.as_bytes());
    }

    #[test]
    fn malformed_or_invalid_traceparents_are_ignored() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert!(parse(bad.as_bytes()).is_none(), "{bad}");
        }
    }

    #[test]
    fn a_later_version_may_append_fields() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-whatever";
        let context = parse(later.as_bytes()).unwrap();
        assert!(!context.is_sampled());
    }
}
