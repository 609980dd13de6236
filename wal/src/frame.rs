//! Record framing: `u32 length | u32 crc32c | u64 lsn | u8 kind | payload`, little-endian.
//!
//! `length` counts the bytes covered by the checksum (`lsn`, `kind` and `payload`, i.e.
//! `9 + payload.len()`), so a real record never has a zero length and a zero length can mark
//! the end of written data in a preallocated (zero-filled) segment.

use std::ops::Range;

/// Bytes before the payload: length, crc, lsn, kind.
pub(crate) const HEADER_LEN: usize = 17;
/// Bytes of a frame not covered by `length` (the length and crc fields themselves).
pub(crate) const PREFIX_LEN: usize = 8;
/// `length` of a record with an empty payload.
pub(crate) const MIN_LENGTH: u32 = 9;
/// Kind reserved for the wal's own group markers.
pub(crate) const MARKER_KIND: u8 = 0;
/// A group marker's payload is one `u64`: the durable LSN before its group.
pub(crate) const MARKER_FRAME_LEN: usize = HEADER_LEN + 8;
/// Payloads at least this large get their checksum computed before the queue lock is taken.
pub(crate) const PRECOMPUTE_CRC_FROM: usize = 4096;

/// Full size of a frame carrying `payload_len` bytes.
pub(crate) const fn frame_len(payload_len: usize) -> usize {
    HEADER_LEN + payload_len
}

fn lsn_kind(lsn: u64, kind: u8) -> [u8; 9] {
    let mut b = [0u8; 9];
    b[..8].copy_from_slice(&lsn.to_le_bytes());
    b[8] = kind;
    b
}

/// Checksum of a frame given the checksum of its payload alone.
pub(crate) fn frame_crc(lsn: u64, kind: u8, payload: &[u8], payload_crc: Option<u32>) -> u32 {
    let head = crc32c::crc32c(&lsn_kind(lsn, kind));
    match payload_crc {
        Some(p) => crc32c::crc32c_combine(head, p, payload.len()),
        None => crc32c::crc32c_append(head, payload),
    }
}

/// Appends one frame to `buf`. `payload_crc`, if given, must be `crc32c(payload)`.
pub(crate) fn encode_into(buf: &mut Vec<u8>, lsn: u64, kind: u8, payload: &[u8], payload_crc: Option<u32>) {
    let length = MIN_LENGTH + u32::try_from(payload.len()).expect("payload length checked");
    buf.reserve(frame_len(payload.len()));
    buf.extend_from_slice(&length.to_le_bytes());
    buf.extend_from_slice(&frame_crc(lsn, kind, payload, payload_crc).to_le_bytes());
    buf.extend_from_slice(&lsn_kind(lsn, kind));
    buf.extend_from_slice(payload);
}

/// Appends a group marker: its LSN field is the first LSN of the group (markers do not
/// consume LSNs) and its payload the durable LSN before the group (`first_lsn - 1`).
pub(crate) fn encode_marker(buf: &mut Vec<u8>, first_lsn: u64) {
    encode_into(buf, first_lsn, MARKER_KIND, &(first_lsn - 1).to_le_bytes(), None);
}

/// Total length of the (already validated) frame starting at `off` of an encoded buffer.
pub(crate) fn frame_len_at(buf: &[u8], off: usize) -> usize {
    PREFIX_LEN + read_u32(buf, off) as usize
}

/// LSN of the (already validated) frame starting at `off` of an encoded buffer.
pub(crate) fn lsn_at(buf: &[u8], off: usize) -> u64 {
    read_u64(buf, off + 8)
}

pub(crate) fn read_u32(buf: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(buf[off..off + 4].try_into().expect("4 bytes"))
}

pub(crate) fn read_u64(buf: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(buf[off..off + 8].try_into().expect("8 bytes"))
}

/// Outcome of decoding the bytes at one offset of a segment.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// A well-formed record (checksum verified).
    Record { lsn: u64, kind: u8, payload: Range<usize>, next: usize },
    /// A zero length, or too little room left for a length field: no more data here.
    End,
    /// Something that is neither a record nor the end of data.
    Bad(String),
}

/// Decodes the frame at `off`. `max_payload` bounds the length field before anything is
/// read past the header.
pub(crate) fn decode_at(buf: &[u8], off: usize, max_payload: u32) -> Decoded {
    let rest = buf.len().saturating_sub(off);
    if rest < 4 {
        return Decoded::End;
    }
    let length = read_u32(buf, off);
    if length == 0 {
        return Decoded::End;
    }
    if length < MIN_LENGTH {
        return Decoded::Bad(format!("length field {length} is below the minimum {MIN_LENGTH}"));
    }
    if length - MIN_LENGTH > max_payload {
        return Decoded::Bad(format!("length field {length} exceeds max_record_bytes ({max_payload}) + {MIN_LENGTH}"));
    }
    let total = PREFIX_LEN + length as usize;
    if total > rest {
        return Decoded::Bad(format!("record of {total} bytes runs past the end of the segment ({rest} bytes left)"));
    }
    let stored = read_u32(buf, off + 4);
    let computed = crc32c::crc32c(&buf[off + PREFIX_LEN..off + total]);
    if stored != computed {
        return Decoded::Bad(format!("checksum mismatch (stored {stored:#010x}, computed {computed:#010x})"));
    }
    Decoded::Record {
        lsn: read_u64(buf, off + 8),
        kind: buf[off + 16],
        payload: off + HEADER_LEN..off + total,
        next: off + total,
    }
}

/// Looks for a valid group marker starting anywhere in `buf[from..until]` whose "durable
/// before" LSN is at least `min_durable`. Returns its offset and that LSN.
///
/// Used after a bad record to decide whether the bad record had been reported durable.
pub(crate) fn find_durable_marker(buf: &[u8], from: usize, until: usize, min_durable: u64) -> Option<(usize, u64)> {
    let marker_length = (MARKER_FRAME_LEN - PREFIX_LEN) as u32;
    if buf.len() < MARKER_FRAME_LEN {
        return None;
    }
    let last = (buf.len() - MARKER_FRAME_LEN).min(until);
    let mut o = from;
    while o <= last {
        // Cheap pre-filter: the length byte pattern and the kind byte.
        if buf[o] == marker_length as u8
            && buf[o + 1] == 0
            && buf[o + 2] == 0
            && buf[o + 3] == 0
            && buf[o + 16] == MARKER_KIND
            && let Decoded::Record { lsn, kind: MARKER_KIND, payload, .. } = decode_at(buf, o, 8)
            && payload.len() == 8
        {
            let durable_before = read_u64(buf, payload.start);
            if durable_before.checked_add(1) == Some(lsn) && durable_before >= min_durable {
                return Some((o, durable_before));
            }
        }
        o += 1;
    }
    None
}

/// Index one past the last non-zero byte of `buf`, or 0 if it is all zeros.
pub(crate) fn nonzero_end(buf: &[u8]) -> usize {
    let mut end = buf.len();
    // Skip zero words quickly, then bytes.
    while end >= 8 && buf[end - 8..end] == [0u8; 8] {
        end -= 8;
    }
    while end > 0 && buf[end - 1] == 0 {
        end -= 1;
    }
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(lsn: u64, kind: u8, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        encode_into(&mut b, lsn, kind, payload, None);
        b
    }

    #[test]
    fn layout_is_exact() {
        let b = one(0x0102_0304_0506_0708, 7, b"abc");
        assert_eq!(b.len(), 20);
        assert_eq!(&b[0..4], &12u32.to_le_bytes());
        assert_eq!(&b[8..16], &0x0102_0304_0506_0708u64.to_le_bytes());
        assert_eq!(b[16], 7);
        assert_eq!(&b[17..], b"abc");
        let crc = crc32c::crc32c(&b[8..]);
        assert_eq!(&b[4..8], &crc.to_le_bytes());
    }

    #[test]
    fn round_trip_and_precomputed_crc() {
        let payload: Vec<u8> = (0..10_000u32).map(|i| (i * 31) as u8).collect();
        let mut a = Vec::new();
        encode_into(&mut a, 42, 3, &payload, None);
        let mut b = Vec::new();
        encode_into(&mut b, 42, 3, &payload, Some(crc32c::crc32c(&payload)));
        assert_eq!(a, b);
        match decode_at(&a, 0, 1 << 20) {
            Decoded::Record { lsn, kind, payload: p, next } => {
                assert_eq!((lsn, kind, next), (42, 3, a.len()));
                assert_eq!(&a[p], &payload[..]);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(frame_len_at(&a, 0), a.len());
        assert_eq!(lsn_at(&a, 0), 42);
    }

    #[test]
    fn empty_payload_is_not_end() {
        let b = one(1, 1, b"");
        assert!(matches!(decode_at(&b, 0, 0), Decoded::Record { next: 17, .. }));
    }

    #[test]
    fn end_and_bad_cases() {
        assert_eq!(decode_at(&[0u8; 64], 0, 100), Decoded::End);
        assert_eq!(decode_at(&[1u8, 2, 3], 0, 100), Decoded::End);
        let mut b = one(5, 1, b"hello");
        b.extend_from_slice(&[0u8; 8]);
        // Flip a payload byte.
        let mut c = b.clone();
        c[18] ^= 0x40;
        assert!(matches!(decode_at(&c, 0, 100), Decoded::Bad(r) if r.contains("checksum")));
        // Length too large for max_payload: rejected before reading.
        assert!(matches!(decode_at(&b, 0, 2), Decoded::Bad(r) if r.contains("max_record_bytes")));
        // Length past the end of the buffer.
        let mut d = b.clone();
        d[0..4].copy_from_slice(&1000u32.to_le_bytes());
        assert!(matches!(decode_at(&d, 0, 5000), Decoded::Bad(r) if r.contains("past the end")));
        let mut e = b.clone();
        e[0..4].copy_from_slice(&3u32.to_le_bytes());
        assert!(matches!(decode_at(&e, 0, 5000), Decoded::Bad(r) if r.contains("minimum")));
    }

    #[test]
    fn markers_are_found_by_resync() {
        let mut b = vec![0xAAu8; 37];
        let at = b.len();
        encode_marker(&mut b, 10);
        b.extend_from_slice(&[0x55; 11]);
        let n = b.len();
        assert_eq!(find_durable_marker(&b, 0, n, 9), Some((at, 9)));
        assert_eq!(find_durable_marker(&b, 0, n, 10), None);
        assert_eq!(find_durable_marker(&b, at + 1, n, 0), None);
        assert_eq!(find_durable_marker(&b, 0, at - 1, 0), None);
        // A marker whose payload ends in zero bytes is still found when the search is
        // limited to the non-zero extent.
        let mut z = vec![1u8; 5];
        encode_marker(&mut z, 2);
        z.resize(100, 0);
        assert_eq!(find_durable_marker(&z, 0, nonzero_end(&z), 1), Some((5, 1)));
        let mut c = b.clone();
        c[at + 20] ^= 1;
        assert_eq!(find_durable_marker(&c, 0, n, 0), None);
    }

    #[test]
    fn nonzero_end_works() {
        assert_eq!(nonzero_end(&[0u8; 100]), 0);
        let mut b = vec![0u8; 100];
        b[3] = 1;
        assert_eq!(nonzero_end(&b), 4);
        b[99] = 1;
        assert_eq!(nonzero_end(&b), 100);
    }
}
