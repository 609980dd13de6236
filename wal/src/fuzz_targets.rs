//! Fuzz target bodies for the log's readers: record framing (`frame::decode_at`, the marker
//! search, the end-of-data scan) and the recovery scan over whole segment files. Shared by
//! the cargo-fuzz crate (`fuzz/`) and the stable harness (`wal/tests/decode_random.rs`).
//!
//! Properties checked, besides never panicking: a record that decodes re-encodes to exactly
//! its bytes; valid groups decode back whole; a marker the search reports is a valid marker;
//! recovery of any directory either fails with an error or yields consecutive LSNs from the
//! first segment's name, and a second recovery of what the first left finds the same
//! records and nothing more to cut; recovery of undamaged groups loses nothing.
//!
//! Not part of the API: hidden from the docs, free to change with the fuzz crate.

use std::fs;
use std::path::Path;

use crate::frame::{self, Decoded, MARKER_KIND};
use crate::recovery::{self, Scan};
use crate::segment::segment_file_name;

/// Records as `(lsn, kind, payload)`.
type Records = Vec<(u64, u8, Vec<u8>)>;

/// How large the structured modes' payloads get: small for the everyday fuzz targets (an
/// input runs in microseconds), up to the payload limit itself (16 MiB) for the `limits`
/// target and the stable harness.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Scale {
    /// Payloads up to [`SMALL_PAYLOAD_BYTES_MAX`] (and the 64-byte limit itself).
    Small,
    /// Payloads up to the limit the selector picked.
    Full,
}

/// The largest payload [`Scale::Small`] builds: larger ones cost milliseconds to fill,
/// checksum and compare. The larger limits are still hit by length fields the mutations set.
pub const SMALL_PAYLOAD_BYTES_MAX: u32 = 4096;

/// Reads the fuzzer's bytes as numbers, zeros once they run out.
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&first, rest)) => {
                self.data = rest;
                first
            }
            None => 0,
        }
    }

    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(std::array::from_fn(|_| self.u8()))
    }

    fn take(&mut self, len: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(len.min(self.data.len()));
        self.data = rest;
        head
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// The payload limit to decode with: tiny, the 1 MiB of small configurations, or the
/// default 16 MiB.
fn max_payload_for(selector: u8) -> u32 {
    match selector % 3 {
        0 => 64,
        1 => 1 << 20,
        _ => 16 << 20,
    }
}

/// Valid write groups from `input`: each a marker and 0..=7 records with consecutive LSNs
/// from `first_lsn`; payload sizes up to `max_payload` (sometimes exactly it) at `scale`.
/// Returns the bytes and the `(lsn, kind, payload)` of every record.
fn gen_groups(input: &mut Input, first_lsn: u64, max_payload: u32, scale: Scale) -> (Vec<u8>, Records) {
    let largest = match scale {
        Scale::Small => max_payload.min(SMALL_PAYLOAD_BYTES_MAX),
        Scale::Full => max_payload,
    } as usize;
    let mut bytes = Vec::new();
    let mut records = Vec::new();
    let mut lsn = Some(first_lsn);
    for _ in 0..input.u8() % 5 {
        // The last LSN there is (`u64::MAX`) may be used, but there is none after it.
        let Some(group_lsn) = lsn else { break };
        frame::encode_marker(&mut bytes, group_lsn);
        for _ in 0..input.u8() % 8 {
            let Some(this) = lsn else { break };
            let kind = input.u8().max(1);
            let len = match input.u8() {
                255 => largest,
                size => (size as usize * 7).min(largest),
            };
            let fill = input.u8();
            let mut payload = input.take(len).to_vec();
            payload.resize(len, fill);
            frame::encode_into(&mut bytes, this, kind, &payload, None);
            records.push((this, kind, payload));
            lsn = this.checked_add(1);
        }
    }
    (bytes, records)
}

/// Up to four mutations chosen by `input`: flipped bits, overwritten bytes, zeroed ranges,
/// cuts, and length fields set to boundary values.
fn mutate(input: &mut Input, bytes: &mut Vec<u8>) {
    for _ in 0..input.u8() % 5 {
        let at = if bytes.is_empty() { 0 } else { input.u16() as usize % (bytes.len() + 1) };
        match input.u8() % 5 {
            0 if at < bytes.len() => bytes[at] ^= 1 << (input.u8() % 8),
            1 if at < bytes.len() => bytes[at] = input.u8(),
            2 => {
                let end = (at + input.u8() as usize).min(bytes.len());
                bytes[at..end].fill(0);
            }
            3 => bytes.truncate(at),
            4 if at + 4 <= bytes.len() => {
                let value = [0u32, 1, 8, 9, 17, 65, 1 << 20, (16 << 20) + 9, u32::MAX][input.u8() as usize % 9];
                bytes[at..at + 4].copy_from_slice(&value.to_le_bytes());
            }
            _ => {}
        }
    }
}

/// Scans `buf` from offset 0 as recovery does, checking each record, then the marker
/// search and the end-of-data scan. Returns the records decoded before the first
/// non-record.
fn scan_frames(buf: &[u8], max_payload: u32, min_durable: u64) -> Records {
    let mut off = 0;
    let mut records = Vec::new();
    while let Decoded::Record { lsn, kind, payload, next } = frame::decode_at(buf, off, max_payload) {
        assert!(next > off && payload.end == next && payload.len() as u64 <= u64::from(max_payload));
        let mut again = Vec::new();
        frame::encode_into(&mut again, lsn, kind, &buf[payload.clone()], None);
        assert_eq!(&again[..], &buf[off..next], "a decoded record re-encodes differently");
        assert_eq!(frame::frame_len_at(buf, off), next - off);
        records.push((lsn, kind, buf[payload].to_vec()));
        off = next;
    }
    let end = frame::nonzero_end(buf);
    assert!(buf[end..].iter().all(|&b| b == 0) && (end == 0 || buf[end - 1] != 0));
    if let Some((at, durable)) = frame::find_durable_marker(buf, 0, end, min_durable) {
        let Decoded::Record { lsn, kind: MARKER_KIND, payload, .. } = frame::decode_at(buf, at, 8) else {
            panic!("the marker search reported a non-marker at {at}");
        };
        assert_eq!(frame::read_u64(buf, payload.start), durable);
        assert!(durable >= min_durable && durable.checked_add(1) == Some(lsn));
    }
    records
}

/// Record framing. Input: `u8 selector` (bit 7: structured; selector % 3 picks the payload
/// limit), `u64 min_durable` for the marker search, then the segment bytes (raw) or the
/// generator's bytes (structured, at `scale`: valid groups, checked, then mutated).
pub fn wal_frames(scale: Scale, data: &[u8]) {
    let mut input = Input { data };
    let selector = input.u8();
    let max_payload = max_payload_for(selector);
    let min_durable = input.u64();
    let bytes = if selector & 0x80 != 0 {
        let first_lsn = input.u64().max(1);
        let (mut bytes, records) = gen_groups(&mut input, first_lsn, max_payload, scale);
        let decoded: Vec<_> = scan_frames(&bytes, max_payload, min_durable)
            .into_iter()
            .filter(|(_, kind, _)| *kind != MARKER_KIND)
            .collect();
        assert_eq!(decoded, records, "valid groups decoded differently");
        mutate(&mut input, &mut bytes);
        bytes
    } else {
        input.rest().to_vec()
    };
    scan_frames(&bytes, max_payload, min_durable);
}

/// What recovery found, comparable across two runs.
fn summary(scan: &Scan) -> (Records, u64) {
    let records = scan.records.iter().map(|r| (r.lsn.0, r.kind, r.payload.to_vec())).collect();
    (records, scan.next_lsn)
}

/// The recovery scan over up to three segment files written into `dir` (emptied first; a
/// fresh temporary directory from the caller, on tmpfs where there is one). Input:
/// `u8 selector` (bit 7: structured; selector % 3 picks the payload limit), then per
/// segment `u64 name` (structured: a `u8` not divisible by 4 continues the LSNs, else a
/// `u64` name follows) and its
/// bytes (raw: `u16 length | bytes`; structured, at `scale`: valid groups, then mutated).
pub fn wal_recovery(dir: &Path, scale: Scale, data: &[u8]) {
    for entry in fs::read_dir(dir).expect("the fuzz directory") {
        fs::remove_file(entry.expect("a directory entry").path()).expect("emptying the fuzz directory");
    }
    let mut input = Input { data };
    let selector = input.u8();
    let structured = selector & 0x80 != 0;
    let max_payload = max_payload_for(selector);
    let segments = input.u8() % 3 + 1;
    let mut next_lsn = 1u64;
    let mut expected = Vec::new();
    let mut intact = true;
    let mut names = Vec::new();
    for _ in 0..segments {
        let name = if structured && !input.u8().is_multiple_of(4) { next_lsn } else { input.u64() };
        if names.contains(&name) {
            continue;
        }
        names.push(name);
        let mut bytes = if structured {
            let (bytes, records) = gen_groups(&mut input, name.max(1), max_payload, scale);
            intact &= name == next_lsn;
            next_lsn = records.last().map_or(name, |(lsn, _, _)| lsn.saturating_add(1));
            expected.extend(records);
            bytes
        } else {
            let len = input.u16() as usize;
            input.take(len).to_vec()
        };
        let before = bytes.clone();
        if structured {
            mutate(&mut input, &mut bytes);
            intact &= bytes == before;
        }
        let padding = input.u8() as usize * 16;
        bytes.resize(bytes.len() + padding, 0);
        fs::write(dir.join(segment_file_name(name)), &bytes).expect("writing a fuzz segment");
    }
    let Ok(first) = recovery::recover(dir, max_payload) else {
        assert!(!(structured && intact && names.first() == Some(&1)), "recovery refused an intact log");
        return;
    };
    let (records, next) = summary(&first);
    let start = records.first().map_or(next, |(lsn, _, _)| *lsn);
    for (i, (lsn, _, _)) in records.iter().enumerate() {
        assert_eq!(Some(*lsn), start.checked_add(i as u64), "recovered LSNs are not consecutive");
    }
    if structured && intact && names.first() == Some(&1) {
        assert_eq!(records, expected, "recovery of an intact log lost or changed records");
        assert!(first.torn.is_none(), "recovery of an intact log cut a tail");
    }
    let second = recovery::recover(dir, max_payload).expect("a recovered log no longer opens");
    assert_eq!(summary(&second), (records, next), "a second recovery found something else");
    assert!(second.torn.is_none(), "a second recovery cut more: {:?}", second.torn);
}

/// Raw-mode seeds: a segment of two groups for `wal_frames`, and the same as one segment
/// named 1 for `wal_recovery`.
pub fn seed_inputs() -> Vec<(&'static str, Vec<u8>)> {
    let mut groups = Vec::new();
    frame::encode_marker(&mut groups, 1);
    frame::encode_into(&mut groups, 1, 17, b"prepared", None);
    frame::encode_into(&mut groups, 2, 18, &[9; 8], None);
    frame::encode_marker(&mut groups, 3);
    frame::encode_into(&mut groups, 3, 2, &[1; 40], None);
    let mut frames = vec![1];
    frames.extend_from_slice(&0u64.to_le_bytes());
    frames.extend_from_slice(&groups);
    let mut recovery = vec![1, 0];
    recovery.extend_from_slice(&1u64.to_le_bytes());
    recovery.extend_from_slice(&(groups.len() as u16).to_le_bytes());
    recovery.extend_from_slice(&groups);
    recovery.push(4);
    vec![("wal_frames", frames), ("wal_recovery", recovery)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_seeds_hold_three_records() {
        for (target, input) in seed_inputs() {
            let dir = tempfile::tempdir().unwrap();
            if target == "wal_frames" {
                let records = scan_frames(&input[9..], max_payload_for(input[0]), 0);
                assert_eq!(records.iter().filter(|(_, kind, _)| *kind != MARKER_KIND).count(), 3);
                wal_frames(Scale::Full, &input);
            } else {
                wal_recovery(dir.path(), Scale::Full, &input);
                let scan = recovery::recover(dir.path(), max_payload_for(input[0])).unwrap();
                assert_eq!((scan.records.len(), scan.next_lsn), (3, 4));
            }
        }
    }

    #[test]
    fn a_segment_named_the_last_lsn_is_refused_not_overflowed() {
        let dir = tempfile::tempdir().unwrap();
        let mut bytes = Vec::new();
        frame::encode_marker(&mut bytes, u64::MAX);
        frame::encode_into(&mut bytes, u64::MAX, 1, b"last", None);
        fs::write(dir.path().join(segment_file_name(u64::MAX)), &bytes).unwrap();
        match recovery::recover(dir.path(), 64) {
            Err(crate::WalError::Corrupt { offset: 25, expected_lsn: crate::Lsn(u64::MAX), reason, .. }) => {
                assert!(reason.contains("no LSN can follow"), "{reason}");
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
        let on_disk = fs::read(dir.path().join(segment_file_name(u64::MAX))).unwrap();
        assert_eq!(on_disk, bytes, "nothing is cut");
    }
}
