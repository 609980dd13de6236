//! The recovery scan: read every segment forward, verify checksums and LSN continuity, tell
//! a torn tail from corruption, truncate the torn tail.
//!
//! # Torn tail or corruption?
//!
//! Every write group starts with a wal-internal marker record (kind 0) whose LSN field is
//! the group's first LSN and whose payload is the durable LSN before the group (the writer
//! never starts a group before the previous one is synced, so this is always
//! `first_lsn - 1`). The scan stops at the first point `P` that is not a valid, consecutive
//! record (bad length, bad checksum, wrong LSN, an inconsistent marker, or the end of data
//! followed by a segment that does not continue the sequence). Let `E` be the LSN expected
//! at `P`. Then every byte after `P` — the rest of that segment and all later segments — is
//! searched, at every byte offset, for a valid marker whose "durable before" is `>= E`:
//!
//! * found: a group written *after* the one holding `P` exists, so that group could only
//!   have been started after the record at `P` had been synced and reported durable. The
//!   record at `P` is damaged durable data: `open` fails with [`WalError::Corrupt`] naming
//!   the segment, offset, expected LSN and reason.
//! * not found: `P` lies in the last write group, which may have been cut short by a crash
//!   (none of its records had been reported durable). It is a torn tail: the bytes from
//!   `P` on are zeroed and synced, later segments are deleted, and the log opens.
//!
//! Limit of the rule: damage inside the very last group of a log whose writer was killed is
//! indistinguishable from a torn write, so it is truncated. `close` (and `Drop`) write a
//! final marker to protect the last group of a cleanly closed log, and the first group
//! after `open` protects everything recovered.

use std::fs;
use std::path::Path;

use bytes::Bytes;

use crate::error::WalError;
use crate::frame::{self, Decoded, MARKER_KIND};
use crate::segment::{self, SegmentMeta};
use crate::{Lsn, RecoveredRecord, TornTail};

/// What the scan found (after torn-tail truncation).
#[derive(Debug)]
pub(crate) struct Scan {
    pub records: Vec<RecoveredRecord>,
    pub next_lsn: u64,
    pub torn: Option<TornTail>,
    /// Remaining segments, oldest first; the last one is where writing continues.
    pub segments: Vec<SegmentMeta>,
    /// Write offset inside the last segment.
    pub active_end: u64,
    /// True if the last valid thing in the log is a marker (or the log is empty): no record
    /// sits in an unprotected last group.
    pub protected: bool,
}

struct Stop {
    seg: usize,
    offset: usize,
    reason: String,
}

fn read_segment(meta: &SegmentMeta) -> Result<Vec<u8>, WalError> {
    fs::read(&meta.path).map_err(|e| WalError::io(format!("reading segment {}", meta.path.display()), e))
}

/// What a scan does about a torn tail or corruption.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// `open`: a torn tail is cut off, corruption is an error.
    Repair,
    /// `inspect`: nothing is written; both are reported with the records before them.
    ReadOnly,
}

/// Scans `dir` and truncates a torn tail. `max_payload` bounds record lengths.
pub(crate) fn recover(dir: &Path, max_payload: u32) -> Result<Scan, WalError> {
    let (scan, damage) = scan(dir, max_payload, Mode::Repair)?;
    assert!(damage.is_none(), "a repairing scan cuts a torn tail and fails on corruption: {damage:?}");
    Ok(scan)
}

/// Reads the log in `dir` without changing anything (no lock taken, no tail cut): every
/// record up to the first point that is not a valid, consecutive record, and what that point
/// is. For `twophase inspect-log` on a stopped node, whose log `open` may refuse.
pub fn inspect(dir: &Path, max_payload: u32) -> Result<Inspection, WalError> {
    let (scan, damage) = scan(dir, max_payload, Mode::ReadOnly)?;
    Ok(Inspection { records: scan.records, next_lsn: Lsn(scan.next_lsn), damage })
}

/// A log as [`inspect`] read it.
#[derive(Debug)]
pub struct Inspection {
    /// Every record before the damage (all of them when there is none), in LSN order.
    pub records: Vec<RecoveredRecord>,
    /// The LSN after the last of `records`.
    pub next_lsn: Lsn,
    pub damage: Option<Damage>,
}

/// Where a log's valid records end before its written data does.
#[derive(Debug)]
pub enum Damage {
    /// The last write group is cut short: `open` would cut it off (it was never durable).
    TornTail(TornTail),
    /// Damage to durable records ([`WalError::Corrupt`]): `open` refuses the log.
    Corrupt(WalError),
}

fn scan(dir: &Path, max_payload: u32, mode: Mode) -> Result<(Scan, Option<Damage>), WalError> {
    let mut segments = segment::list_segments(dir)?;
    let mut scan =
        Scan { records: Vec::new(), next_lsn: 1, torn: None, segments: Vec::new(), active_end: 0, protected: true };
    if segments.is_empty() {
        return Ok((scan, None));
    }
    let mut expected = segments[0].first_lsn;
    if expected == 0 {
        return Err(WalError::Corrupt {
            segment: segments[0].path.clone(),
            offset: 0,
            expected_lsn: Lsn(0),
            reason: "segment named LSN 0 (LSN 0 means none)".into(),
        });
    }
    let mut stop: Option<Stop> = None;
    // Bytes of the last segment read in full (kept for the tail search).
    let mut tail: Option<(usize, Vec<u8>)> = None;
    let mut end = 0usize;
    let mut protected = true;

    'segments: for i in 0..segments.len() {
        if segments[i].first_lsn != expected {
            // The previous segment ended cleanly (zero length / no room) but this one does
            // not continue the sequence: the previous one is where data went missing.
            stop = Some(Stop {
                seg: i - 1,
                offset: end,
                reason: format!(
                    "end of data, but the next segment {} starts at LSN {} instead",
                    segments[i].path.display(),
                    segments[i].first_lsn
                ),
            });
            break;
        }
        let data = read_segment(&segments[i])?;
        let mut off = 0usize;
        let mut found: Vec<(u64, u8, std::ops::Range<usize>)> = Vec::new();
        let mut stopped_here = None;
        loop {
            match frame::decode_at(&data, off, max_payload) {
                Decoded::End => break,
                Decoded::Bad(reason) => {
                    stopped_here = Some(reason);
                    break;
                }
                Decoded::Record { lsn, kind, payload, next } => {
                    if kind == MARKER_KIND {
                        let ok = payload.len() == 8
                            && lsn == expected
                            && frame::read_u64(&data, payload.start).checked_add(1) == Some(lsn);
                        if !ok {
                            stopped_here = Some(format!(
                                "inconsistent group marker (LSN field {lsn}, payload {} bytes)",
                                payload.len()
                            ));
                            break;
                        }
                        protected = true;
                    } else {
                        if lsn != expected {
                            stopped_here = Some(format!("record carries LSN {lsn}"));
                            break;
                        }
                        // A record at the last LSN there is leaves none for the next
                        // append: refuse to open (nothing is cut) rather than wrap to 0.
                        let Some(after) = expected.checked_add(1) else {
                            return Err(WalError::Corrupt {
                                segment: segments[i].path.clone(),
                                offset: off as u64,
                                expected_lsn: Lsn(expected),
                                reason: format!("record carries LSN {lsn}, the last there is: no LSN can follow it"),
                            });
                        };
                        found.push((lsn, kind, payload));
                        expected = after;
                        protected = false;
                    }
                    off = next;
                }
            }
        }
        end = off;
        // Keep only the written part in memory; payloads are slices of it.
        let is_last = i + 1 == segments.len();
        let kept = if stopped_here.is_some() || is_last {
            let kept = data[..off].to_vec();
            tail = Some((i, data));
            kept
        } else {
            let mut kept = data;
            kept.truncate(off);
            if kept.capacity() > 2 * kept.len() + 4096 {
                kept.shrink_to_fit();
            }
            kept
        };
        let kept = Bytes::from(kept);
        scan.records.extend(found.into_iter().map(|(lsn, kind, range)| RecoveredRecord {
            lsn: Lsn(lsn),
            kind,
            payload: kept.slice(range),
        }));
        if let Some(reason) = stopped_here {
            stop = Some(Stop { seg: i, offset: off, reason });
            break 'segments;
        }
    }
    let stop = stop.unwrap_or(Stop { seg: segments.len() - 1, offset: end, reason: "end of written data".into() });
    let tail_data = match tail {
        Some((seg, data)) if seg == stop.seg => data,
        // Stopped at a segment boundary: reload that segment's bytes for the tail search.
        _ => read_segment(&segments[stop.seg])?,
    };

    // Is anything after the stop point evidence that the stop point had been durable?
    let stop_path = segments[stop.seg].path.clone();
    let evidence = |data: &[u8], from: usize, until: usize| frame::find_durable_marker(data, from, until, expected);
    let tail_nonzero = frame::nonzero_end(&tail_data);
    let mut dropped = tail_nonzero.saturating_sub(stop.offset) as u64;
    let mut corruption = None;
    if tail_nonzero > stop.offset
        && let Some((at, durable)) = evidence(&tail_data, stop.offset + 1, tail_nonzero)
    {
        corruption = Some(corrupt(&stop_path, &stop, expected, &stop_path, at, durable));
    }
    for later in &segments[stop.seg + 1..] {
        if corruption.is_some() {
            break;
        }
        let data = read_segment(later)?;
        let nz = frame::nonzero_end(&data);
        if let Some((at, durable)) = evidence(&data, 0, nz) {
            corruption = Some(corrupt(&stop_path, &stop, expected, &later.path, at, durable));
            break;
        }
        dropped += nz as u64;
    }
    if let Some(corruption) = corruption {
        return match mode {
            Mode::Repair => Err(corruption),
            Mode::ReadOnly => {
                scan.next_lsn = expected;
                Ok((scan, Some(Damage::Corrupt(corruption))))
            }
        };
    }
    let cut = dropped > 0 || stop.seg + 1 < segments.len();
    if mode == Mode::ReadOnly {
        scan.next_lsn = expected;
        let torn = TornTail { segment: stop_path, offset: stop.offset as u64, bytes_dropped: dropped };
        return Ok((scan, cut.then_some(Damage::TornTail(torn))));
    }

    // A torn tail (or a clean end). Cut everything after the stop point.
    let removed: Vec<SegmentMeta> = segments.drain(stop.seg + 1..).collect();
    if tail_nonzero > stop.offset {
        segment::zero_range(&stop_path, stop.offset as u64, tail_nonzero as u64)?;
    }
    for seg in removed.iter().rev() {
        fs::remove_file(&seg.path)
            .map_err(|e| WalError::io(format!("removing torn segment {}", seg.path.display()), e))?;
    }
    if !removed.is_empty() {
        segment::sync_dir(dir)?;
    }
    if cut {
        tracing::warn!(
            segment = %stop_path.display(),
            offset = stop.offset,
            bytes_dropped = dropped,
            segments_removed = removed.len(),
            next_lsn = expected,
            reason = %stop.reason,
            "wal recovery truncated a torn tail"
        );
        scan.torn = Some(TornTail { segment: stop_path, offset: stop.offset as u64, bytes_dropped: dropped });
    }
    scan.next_lsn = expected;
    scan.segments = segments;
    scan.active_end = stop.offset as u64;
    scan.protected = protected;
    Ok((scan, None))
}

fn corrupt(path: &Path, stop: &Stop, expected: u64, evidence_path: &Path, at: usize, durable: u64) -> WalError {
    WalError::Corrupt {
        segment: path.to_path_buf(),
        offset: stop.offset as u64,
        expected_lsn: Lsn(expected),
        reason: format!(
            "{}; this record had been durable: a later write group (marker at {} offset {at}) \
             records LSN {durable} as durable before it",
            stop.reason,
            evidence_path.display()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{encode_into, encode_marker};
    use crate::segment::segment_file_name;

    /// Writes a segment file of `size` bytes holding `groups` (each a list of payloads)
    /// starting at LSN `first`. Returns the offsets of every frame (markers included).
    fn write_segment(dir: &Path, first: u64, groups: &[&[&[u8]]], size: usize) -> Vec<usize> {
        let mut buf = Vec::new();
        let mut offs = Vec::new();
        let mut lsn = first;
        for g in groups {
            offs.push(buf.len());
            encode_marker(&mut buf, lsn);
            for p in *g {
                offs.push(buf.len());
                encode_into(&mut buf, lsn, 1, p, None);
                lsn += 1;
            }
        }
        buf.resize(size, 0);
        fs::write(dir.join(segment_file_name(first)), &buf).unwrap();
        offs
    }

    fn lsns(s: &Scan) -> Vec<u64> {
        s.records.iter().map(|r| r.lsn.0).collect()
    }

    /// XORs byte `at` of the segment starting at LSN `first` with `mask`; returns its path.
    fn flip(dir: &Path, first: u64, at: usize, mask: u8) -> std::path::PathBuf {
        let path = dir.join(segment_file_name(first));
        let mut data = fs::read(&path).unwrap();
        data[at] ^= mask;
        fs::write(&path, &data).unwrap();
        path
    }

    #[test]
    fn empty_dir() {
        let d = tempfile::tempdir().unwrap();
        let s = recover(d.path(), 1000).unwrap();
        assert_eq!((s.next_lsn, s.records.len(), s.segments.len()), (1, 0, 0));
    }

    #[test]
    fn clean_multi_segment_scan() {
        let d = tempfile::tempdir().unwrap();
        write_segment(d.path(), 1, &[&[b"a", b"b"], &[b"c"]], 4096);
        write_segment(d.path(), 4, &[&[b"d"]], 4096);
        let s = recover(d.path(), 1000).unwrap();
        assert_eq!(lsns(&s), vec![1, 2, 3, 4]);
        assert_eq!(&s.records[3].payload[..], b"d");
        assert_eq!(s.next_lsn, 5);
        assert!(s.torn.is_none());
        assert!(!s.protected);
        assert_eq!(s.segments.len(), 2);
        assert_eq!(s.active_end, (25 + 18) as u64);
    }

    #[test]
    fn torn_last_group_is_truncated() {
        let d = tempfile::tempdir().unwrap();
        let offs = write_segment(d.path(), 1, &[&[b"aaaa", b"bbbb"], &[b"cccc", b"dddd"]], 4096);
        // Garble record 4 (the last group's second record).
        flip(d.path(), 1, offs[5] + 18, 0xff);
        let s = recover(d.path(), 1000).unwrap();
        assert_eq!(lsns(&s), vec![1, 2, 3]);
        let torn = s.torn.unwrap();
        assert_eq!(torn.offset, offs[5] as u64);
        assert_eq!(torn.bytes_dropped, 21);
        // The tail is zeroed on disk: a second recovery is clean.
        let s2 = recover(d.path(), 1000).unwrap();
        assert_eq!(lsns(&s2), vec![1, 2, 3]);
        assert!(s2.torn.is_none());
    }

    #[test]
    fn bad_record_before_a_later_group_is_corruption() {
        let d = tempfile::tempdir().unwrap();
        let offs = write_segment(d.path(), 1, &[&[b"aaaa", b"bbbb"], &[b"cccc"]], 4096);
        let path = flip(d.path(), 1, offs[1] + 17, 0x01); // record 1's payload
        match recover(d.path(), 1000) {
            Err(WalError::Corrupt { segment, offset, expected_lsn, reason }) => {
                assert_eq!(segment, path);
                assert_eq!(offset, offs[1] as u64);
                assert_eq!(expected_lsn, Lsn(1));
                assert!(reason.contains("checksum"), "{reason}");
            }
            other => panic!("expected corruption, got {other:?}"),
        }
    }

    /// Every file of `dir` and its bytes.
    fn files(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
        let mut files: Vec<_> = fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        files.into_iter().map(|path| (path.clone(), fs::read(&path).unwrap())).collect()
    }

    #[test]
    fn inspecting_a_torn_tail_reports_it_and_changes_nothing() {
        let d = tempfile::tempdir().unwrap();
        let offs = write_segment(d.path(), 1, &[&[b"aaaa", b"bbbb"], &[b"cccc", b"dddd"]], 4096);
        let path = flip(d.path(), 1, offs[5] + 18, 0xff);
        let before = files(d.path());
        let inspection = inspect(d.path(), 1000).unwrap();
        assert_eq!(inspection.records.iter().map(|r| r.lsn.0).collect::<Vec<_>>(), vec![1, 2, 3]);
        assert_eq!(inspection.next_lsn, Lsn(4));
        match inspection.damage {
            Some(Damage::TornTail(torn)) => assert_eq!((torn.segment, torn.offset), (path, offs[5] as u64)),
            other => panic!("expected a torn tail, got {other:?}"),
        }
        assert_eq!(files(d.path()), before, "inspecting wrote nothing");
        // Opening cuts what inspecting only reported.
        assert_eq!(lsns(&recover(d.path(), 1000).unwrap()), vec![1, 2, 3]);
        assert_ne!(files(d.path()), before);
    }

    #[test]
    fn inspecting_corruption_gives_the_records_before_it_where_open_fails() {
        let d = tempfile::tempdir().unwrap();
        let offs = write_segment(d.path(), 1, &[&[b"aaaa", b"bbbb"], &[b"cccc"]], 4096);
        flip(d.path(), 1, offs[2] + 17, 0x01); // record 2's payload; the group after it makes it durable
        let before = files(d.path());
        let inspection = inspect(d.path(), 1000).unwrap();
        assert_eq!(inspection.records.iter().map(|r| r.lsn.0).collect::<Vec<_>>(), vec![1]);
        assert_eq!(inspection.next_lsn, Lsn(2));
        match inspection.damage {
            Some(Damage::Corrupt(WalError::Corrupt { offset, expected_lsn, reason, .. })) => {
                assert_eq!((offset, expected_lsn), (offs[2] as u64, Lsn(2)));
                assert!(reason.contains("checksum") && reason.contains("had been durable"), "{reason}");
            }
            other => panic!("expected corruption, got {other:?}"),
        }
        assert!(matches!(recover(d.path(), 1000), Err(WalError::Corrupt { .. })));
        assert_eq!(files(d.path()), before, "neither inspecting nor a refused open wrote anything");
    }

    #[test]
    fn zeroed_length_in_the_middle_is_corruption() {
        let d = tempfile::tempdir().unwrap();
        let offs = write_segment(d.path(), 1, &[&[b"aaaa"], &[b"bbbb"], &[b"cccc"]], 4096);
        let path = d.path().join(segment_file_name(1));
        let mut data = fs::read(&path).unwrap();
        data[offs[3]..offs[3] + 4].fill(0); // record 2 looks like the end of data
        fs::write(&path, &data).unwrap();
        let err = recover(d.path(), 1000).unwrap_err();
        assert!(matches!(err, WalError::Corrupt { offset, expected_lsn: Lsn(2), .. } if offset == offs[3] as u64));
    }

    #[test]
    fn missing_segment_is_corruption_when_later_groups_exist() {
        let d = tempfile::tempdir().unwrap();
        write_segment(d.path(), 1, &[&[b"a"]], 4096);
        write_segment(d.path(), 5, &[&[b"e"]], 4096);
        let err = recover(d.path(), 1000).unwrap_err();
        assert!(
            matches!(err, WalError::Corrupt { expected_lsn: Lsn(2), ref reason, .. } if reason.contains("next segment")),
            "{err}"
        );
    }

    #[test]
    fn torn_group_spanning_segments_removes_later_segment() {
        let d = tempfile::tempdir().unwrap();
        // Group 2 starts in segment 1 and continues in segment 3, whose records are torn.
        let mut buf = Vec::new();
        encode_marker(&mut buf, 1);
        encode_into(&mut buf, 1, 1, b"one", None);
        encode_marker(&mut buf, 2);
        encode_into(&mut buf, 2, 1, b"two", None);
        buf.resize(4096, 0);
        fs::write(d.path().join(segment_file_name(1)), &buf).unwrap();
        let mut b2 = Vec::new();
        encode_into(&mut b2, 3, 1, b"three", None);
        b2[20] ^= 1;
        b2.resize(4096, 0);
        fs::write(d.path().join(segment_file_name(3)), &b2).unwrap();
        let s = recover(d.path(), 1000).unwrap();
        assert_eq!(lsns(&s), vec![1, 2]);
        assert_eq!(s.next_lsn, 3);
        assert_eq!(s.segments.len(), 2, "segment 3 is kept (it continues the sequence), zeroed");
        assert_eq!(s.active_end, 0);
        assert!(s.torn.is_some());
    }

    #[test]
    fn unrelated_later_segment_without_marker_is_torn() {
        let d = tempfile::tempdir().unwrap();
        write_segment(d.path(), 1, &[&[b"a", b"b"]], 4096);
        // A later segment whose name skips LSN 3 and holds no marker proving durability.
        let mut b = Vec::new();
        encode_into(&mut b, 9, 1, b"x", None);
        b.resize(4096, 0);
        fs::write(d.path().join(segment_file_name(9)), &b).unwrap();
        let s = recover(d.path(), 1000).unwrap();
        assert_eq!(lsns(&s), vec![1, 2]);
        assert_eq!(s.segments.len(), 1);
        assert!(!d.path().join(segment_file_name(9)).exists());
    }
}
