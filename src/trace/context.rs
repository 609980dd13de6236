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
/// span. A later version may append fields after the first four; they are ignored. Read
/// byte by byte (a participant parses one per traced Prepare and Commit).
pub fn parse(traceparent: &[u8]) -> Option<SpanContext> {
    let exact = traceparent.len() == TRACEPARENT_BYTES;
    let extended = traceparent.len() > TRACEPARENT_BYTES && traceparent[TRACEPARENT_BYTES] == b'-';
    if !(exact || (extended && !traceparent.starts_with(b"00"))) {
        return None;
    }
    if [traceparent[2], traceparent[35], traceparent[52]] != [b'-'; 3] {
        return None;
    }
    let version = lower_hex_value(&traceparent[..2])?;
    if version == 0xff {
        return None;
    }
    let trace_id_high = lower_hex_value(&traceparent[3..19])?;
    let trace_id_low = lower_hex_value(&traceparent[19..35])?;
    let span_id = lower_hex_value(&traceparent[36..52])?;
    let flags = lower_hex_value(&traceparent[53..55])?;
    let context = SpanContext::new(
        TraceId::from(u128::from(trace_id_high) << 64 | u128::from(trace_id_low)),
        SpanId::from(span_id),
        TraceFlags::new(flags as u8),
        true,
        TraceState::default(),
    );
    context.is_valid().then_some(context)
}

/// Each byte's value as a lowercase hex digit, or [`NOT_HEX`].
const HEX_DIGIT_VALUES: [u8; 256] = {
    let mut values = [NOT_HEX; 256];
    let mut digit = 0;
    while digit < 16 {
        values[b"0123456789abcdef"[digit] as usize] = digit as u8;
        digit += 1;
    }
    values
};
const NOT_HEX: u8 = 0xff;

/// The number that lowercase hex `digits` (at most 16) spell, or `None` if any is not one.
/// Without a branch per digit: a non-digit's value has its high bits set, and they are
/// checked once at the end.
fn lower_hex_value(digits: &[u8]) -> Option<u64> {
    assert!(digits.len() <= 16, "{} hex digits do not fit in 64 bits", digits.len());
    let mut value = 0u64;
    let mut seen = 0u8;
    for &digit in digits {
        let nibble = HEX_DIGIT_VALUES[usize::from(digit)];
        seen |= nibble;
        value = value << 4 | u64::from(nibble & 0x0f);
    }
    (seen & 0xf0 == 0).then_some(value)
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
            "00-4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        ] {
            assert!(parse(bad.as_bytes()).is_none(), "{bad}");
        }
        let mut not_ascii = EXAMPLE.as_bytes().to_vec();
        not_ascii[10] = 0xc3;
        assert!(parse(&not_ascii).is_none());
    }

    #[test]
    fn a_later_version_may_append_fields() {
        let later = "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-whatever";
        let context = parse(later.as_bytes()).unwrap();
        assert!(!context.is_sampled());
    }
}
