//! Damage on disk: a flipped byte in durable data fails `open` precisely; a torn last
//! record is truncated and the log opens. Both backends.

mod common;

use common::{frame_offsets, open_or_skip, options, payload_for, segment_files};
use twophase_wal::{Backend, Lsn, WalError};

/// Writes 200 records in 20 synced groups into one segment and returns its path.
fn write_log(dir: &std::path::Path, backend: Backend, close: bool) -> Option<std::path::PathBuf> {
    let (wal, _) = open_or_skip(dir, options(backend))?;
    for lsn in 1..=200u64 {
        wal.append(1, &payload_for(lsn)).unwrap();
        if lsn % 10 == 0 {
            wal.wait_durable(Lsn(lsn)).unwrap();
        }
    }
    if close {
        wal.close().unwrap();
    } else {
        let p = wal.simulate_crash();
        assert_eq!(p.durable_lsn, Lsn(200));
    }
    let files = segment_files(dir);
    assert_eq!(files.len(), 1);
    Some(files[0].clone())
}

/// Offset of the frame of record `lsn` (skipping markers).
fn record_offset(data: &[u8], lsn: u64) -> usize {
    *frame_offsets(data)
        .iter()
        .find(|&&o| data[o + 16] != 0 && u64::from_le_bytes(data[o + 8..o + 16].try_into().unwrap()) == lsn)
        .unwrap()
}

fn flipped_byte_in_the_middle_fails_open_precisely(backend: Backend) {
    for (what, delta) in [("payload", 20usize), ("length", 1), ("lsn", 9)] {
        let dir = tempfile::tempdir().unwrap();
        let Some(seg) = write_log(dir.path(), backend, true) else { return };
        let mut data = std::fs::read(&seg).unwrap();
        let at = record_offset(&data, 101);
        assert!(payload_for(101).len() > 20);
        data[at + delta] ^= 0x10;
        std::fs::write(&seg, &data).unwrap();
        match twophase_wal::open(dir.path(), options(backend)) {
            Err(WalError::Corrupt { segment, offset, expected_lsn, reason }) => {
                assert_eq!(segment, seg, "{what}");
                assert_eq!(offset, at as u64, "{what}");
                assert_eq!(expected_lsn, Lsn(101), "{what}");
                let msg = format!("{}", WalError::Corrupt { segment: segment.clone(), offset, expected_lsn, reason });
                assert!(msg.contains(&seg.display().to_string()) && msg.contains(&format!("offset {at}")), "{msg}");
            }
            Err(other) => panic!("{what}: expected corruption, got {other}"),
            Ok((_, rec)) => panic!("{what}: opened, torn tail {:?}", rec.truncated_tail),
        }
    }
}

fn torn_last_record_is_truncated(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some(seg) = write_log(dir.path(), backend, false) else { return };
    let mut data = std::fs::read(&seg).unwrap();
    let at = record_offset(&data, 200);
    let end = at + 17 + payload_for(200).len();
    // The last few bytes of the last record never reached the disk.
    data[end - 5..end].fill(0);
    std::fs::write(&seg, &data).unwrap();
    let (wal, rec) = twophase_wal::open(dir.path(), options(backend)).unwrap();
    assert_eq!(rec.next_lsn, Lsn(200));
    assert_eq!(rec.records.len(), 199);
    let torn = rec.truncated_tail.expect("torn tail reported");
    assert_eq!((torn.segment.clone(), torn.offset), (seg.clone(), at as u64));
    assert!(torn.bytes_dropped > 0);
    // The log goes on from there.
    let lsn = wal.append(1, b"again").unwrap();
    assert_eq!(lsn, Lsn(200));
    wal.close().unwrap();
    let (wal, rec) = twophase_wal::open(dir.path(), options(backend)).unwrap();
    assert!(rec.truncated_tail.is_none());
    assert_eq!(&rec.records[199].payload[..], b"again");
    wal.close().unwrap();
}

fn damage_to_last_record_of_a_closed_log_is_corruption(backend: Backend) {
    // close() writes a final marker: the last group is then known durable.
    let dir = tempfile::tempdir().unwrap();
    let Some(seg) = write_log(dir.path(), backend, true) else { return };
    let mut data = std::fs::read(&seg).unwrap();
    let at = record_offset(&data, 200);
    data[at + 18] ^= 1;
    std::fs::write(&seg, &data).unwrap();
    let err = match twophase_wal::open(dir.path(), options(backend)) {
        Ok((_, rec)) => panic!("opened; torn tail {:?}", rec.truncated_tail),
        Err(e) => e,
    };
    assert!(matches!(&err, WalError::Corrupt { offset, expected_lsn: Lsn(200), .. } if *offset == at as u64), "{err}");
}

per_backend!(
    flipped_byte_in_the_middle_fails_open_precisely,
    torn_last_record_is_truncated,
    damage_to_last_record_of_a_closed_log_is_corruption,
);
