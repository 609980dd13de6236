//! The `TraceContext` frame (kind 20): W3C trace context (`traceparent`) for sampled
//! transactions, sent just before the data frame whose messages it describes. Unsampled
//! traffic never carries one, so it costs nothing when tracing is off.
//!
//! Body: `u32 count | count × (u8 key tag | key | u8 length | traceparent bytes)`, key tag 0:
//! `u64 client | u64 seq` (client → coordinator, the submit it describes), 1: `u64 txid`
//! (coordinator → participant, the transaction of the following Prepare or Commit). The
//! traceparent is opaque here (ASCII, `00-<trace id>-<span id>-<flags>`, 55 bytes); the
//! runtime parses it and ignores an entry it cannot read.

use bytes::{BufMut, Bytes};
use twophase_engine::codec::{DecodeError, Reader};
use twophase_engine::{ClientId, Seq, TxId};

/// Longest traceparent accepted (the version-00 form is 55 bytes; later versions may append).
pub const MAX_TRACEPARENT_BYTES: usize = u8::MAX as usize;

/// `u8 tag | u64 txid | u8 length`: the smallest entry, to refuse impossible counts early.
const MIN_ENTRY_BYTES: usize = 10;

/// Which request or transaction a trace context belongs to.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum TraceKey {
    /// A client's request, towards the coordinator.
    Submit { client: ClientId, seq: Seq },
    /// A transaction, towards a participant.
    Tx(TxId),
}

/// One `(key, traceparent)` pair of a `TraceContext` frame.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct TraceEntry {
    pub key: TraceKey,
    pub traceparent: Bytes,
}

pub(super) fn encode(out: &mut Vec<u8>, entries: &[TraceEntry]) {
    out.put_u32_le(u32::try_from(entries.len()).expect("more than 2^32 trace entries"));
    for entry in entries {
        match entry.key {
            TraceKey::Submit { client, seq } => {
                out.put_u8(0);
                out.put_u64_le(client.0);
                out.put_u64_le(seq);
            }
            TraceKey::Tx(txid) => {
                out.put_u8(1);
                out.put_u64_le(txid.0);
            }
        }
        assert!(
            entry.traceparent.len() <= MAX_TRACEPARENT_BYTES,
            "traceparent longer than {MAX_TRACEPARENT_BYTES} bytes"
        );
        out.put_u8(entry.traceparent.len() as u8);
        out.put_slice(&entry.traceparent);
    }
}

/// Decodes the body; the count is checked against `max_entries` and the bytes left before
/// anything is allocated.
pub(super) fn decode(reader: &mut Reader, max_entries: u32) -> Result<Vec<TraceEntry>, DecodeError> {
    let count = reader.u32("trace entry count")?;
    if count > max_entries {
        return Err(reader.error(format!("{count} trace entries exceed the limit of {max_entries}")));
    }
    let count = count as usize;
    if count.saturating_mul(MIN_ENTRY_BYTES) > reader.remaining() {
        return Err(reader.error(format!("{count} trace entries cannot fit in {} bytes", reader.remaining())));
    }
    let mut entries = Vec::with_capacity(count);
    for _ in 0..count {
        let key = match reader.u8("trace key tag")? {
            0 => TraceKey::Submit { client: ClientId(reader.u64("client")?), seq: reader.u64("seq")? },
            1 => TraceKey::Tx(TxId(reader.u64("txid")?)),
            other => return Err(reader.error(format!("unknown trace key tag {other}"))),
        };
        let length = reader.u8("traceparent length")? as usize;
        let traceparent = reader.slice(length, "traceparent")?;
        entries.push(TraceEntry { key, traceparent });
    }
    Ok(entries)
}

/// One `TraceContext` frame, header included, appended to `out` (without building a
/// [`Frame`](super::Frame)).
pub fn encode_frame(out: &mut Vec<u8>, entries: &[TraceEntry]) {
    let start = out.len();
    out.put_u32_le(0);
    out.put_u8(super::PROTOCOL_VERSION);
    out.put_u8(super::FrameKind::TraceContext as u8);
    encode(out, entries);
    super::encode::patch_length(out, start);
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use twophase_engine::Epoch;

    use super::*;
    use crate::frame::{Frame, FrameDecoder, NetLimits};

    const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn entries() -> Vec<TraceEntry> {
        vec![
            TraceEntry {
                key: TraceKey::Submit { client: ClientId(3), seq: 9 },
                traceparent: Bytes::from_static(TRACEPARENT.as_bytes()),
            },
            TraceEntry {
                key: TraceKey::Tx(TxId::new(Epoch(1), 5)),
                traceparent: Bytes::from_static(TRACEPARENT.as_bytes()),
            },
        ]
    }

    fn decode_frame(bytes: &[u8], limits: NetLimits) -> Result<Option<Frame>, crate::ProtocolError> {
        FrameDecoder::new(limits).decode(&mut BytesMut::from(bytes))
    }

    #[test]
    fn the_direct_encoder_writes_what_the_frame_encoder_writes() {
        let mut direct = Vec::new();
        encode_frame(&mut direct, &entries());
        let mut via_frame = Vec::new();
        Frame::TraceContext(entries()).encode(&mut via_frame);
        assert_eq!(direct, via_frame);
        assert_eq!(decode_frame(&direct, NetLimits::default()).unwrap(), Some(Frame::TraceContext(entries())));
    }

    #[test]
    fn counts_beyond_the_batch_limit_or_the_bytes_left_are_refused() {
        let mut bytes = Vec::new();
        encode_frame(&mut bytes, &entries());
        let limits = NetLimits { max_batch: 1, ..NetLimits::default() };
        let err = decode_frame(&bytes, limits).unwrap_err();
        assert!(err.message.contains("exceed the limit of 1"), "{err}");

        // A count of a million in a frame with two entries' bytes.
        bytes[6..10].copy_from_slice(&1_000_000u32.to_le_bytes());
        let err = decode_frame(&bytes, NetLimits { max_batch: u32::MAX, ..NetLimits::default() }).unwrap_err();
        assert!(err.message.contains("cannot fit"), "{err}");
    }

    #[test]
    fn an_unknown_key_tag_or_a_short_traceparent_is_malformed() {
        let mut bytes = Vec::new();
        encode_frame(&mut bytes, &entries()[..1]);
        let mut unknown_tag = bytes.clone();
        unknown_tag[10] = 7;
        let err = decode_frame(&unknown_tag, NetLimits::default()).unwrap_err();
        assert!(err.message.contains("unknown trace key tag 7"), "{err}");

        let mut cut = bytes.clone();
        cut.truncate(cut.len() - 1);
        let length = (cut.len() - 4) as u32;
        cut[..4].copy_from_slice(&length.to_le_bytes());
        assert!(decode_frame(&cut, NetLimits::default()).is_err());
    }
}
