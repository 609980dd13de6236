//! Append / recover round trips, rotation, truncation, doorbell, concurrency, backpressure.
//! Every test runs on both backends.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{kind_for, open_or_skip, options, payload_for, segment_files};
use twophase_wal::{Backend, BackendKind, Lsn, SyncMode, WalOptions};

fn round_trip(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some((wal, rec)) = open_or_skip(dir.path(), options(backend)) else { return };
    assert!(rec.records.is_empty());
    assert_eq!(rec.next_lsn, Lsn(1));
    assert_eq!(wal.durable_lsn().unwrap(), Lsn(0));
    let expected_kind = match backend {
        Backend::Portable => BackendKind::Portable,
        _ => BackendKind::IoUring,
    };
    assert_eq!(wal.backend(), expected_kind);
    let mut last = Lsn(0);
    for lsn in 1..=1000u64 {
        last = wal.append(kind_for(lsn), &payload_for(lsn)).unwrap();
        assert_eq!(last, Lsn(lsn));
        if lsn % 97 == 0 {
            wal.wait_durable(last).unwrap();
        }
    }
    wal.wait_durable(last).unwrap();
    assert!(wal.durable_lsn().unwrap() >= last);
    wal.close().unwrap();

    let (wal, rec) = twophase_wal::open(dir.path(), options(backend)).unwrap();
    assert!(rec.truncated_tail.is_none());
    assert_eq!(rec.next_lsn, Lsn(1001));
    assert_eq!(rec.records.len(), 1000);
    for (i, r) in rec.records.iter().enumerate() {
        let lsn = i as u64 + 1;
        assert_eq!(r.lsn, Lsn(lsn));
        assert_eq!(r.kind, kind_for(lsn));
        assert_eq!(&r.payload[..], &payload_for(lsn)[..]);
    }
    assert_eq!(wal.durable_lsn().unwrap(), Lsn(1000));
    // Continue, then drop without close (Drop drains and syncs).
    for lsn in 1001..=1100 {
        assert_eq!(wal.append(kind_for(lsn), &payload_for(lsn)).unwrap(), Lsn(lsn));
    }
    drop(wal);
    let (wal, rec) = twophase_wal::open(dir.path(), options(backend)).unwrap();
    assert_eq!(rec.records.len(), 1100);
    assert_eq!(&rec.records[1099].payload[..], &payload_for(1100)[..]);
    wal.close().unwrap();
}

fn rotation_and_truncation(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions { segment_size_bytes: 8192, ..options(backend) };
    let Some((wal, _)) = open_or_skip(dir.path(), opts.clone()) else { return };
    for lsn in 1..=600u64 {
        wal.append(kind_for(lsn), &payload_for(lsn)[..payload_for(lsn).len().min(300)]).unwrap();
        if lsn % 50 == 0 {
            wal.wait_durable(Lsn(lsn)).unwrap();
        }
    }
    wal.wait_durable(Lsn(600)).unwrap();
    let before = segment_files(dir.path());
    assert!(before.len() > 5, "rotation should have made many segments: {before:?}");
    for f in &before {
        assert_eq!(std::fs::metadata(f).unwrap().len(), 8192, "segments are preallocated");
    }

    wal.truncate_before(Lsn(300)).unwrap();
    let after = segment_files(dir.path());
    assert!(after.len() < before.len());
    let first_kept: u64 = after[0].file_stem().unwrap().to_str().unwrap().parse().unwrap();
    assert!(first_kept <= 300, "a segment holding LSN >= 300 was deleted");
    let second: u64 = after[1].file_stem().unwrap().to_str().unwrap().parse().unwrap();
    assert!(second > 300, "segment {first_kept} held only LSNs < 300 and should be gone");
    // Truncating everything keeps the active segment.
    wal.truncate_before(Lsn(u64::MAX)).unwrap();
    let last = segment_files(dir.path());
    assert_eq!(last.len(), 1);
    assert_eq!(&last[0], before.last().unwrap());
    for lsn in 601..=700u64 {
        wal.append(1, &payload_for(lsn)[..payload_for(lsn).len().min(300)]).unwrap();
    }
    wal.close().unwrap();

    let (wal, rec) = twophase_wal::open(dir.path(), opts).unwrap();
    let first_lsn = rec.records[0].lsn.0;
    assert_eq!(last[0].file_stem().unwrap().to_str().unwrap().parse::<u64>().unwrap(), first_lsn);
    for (i, r) in rec.records.iter().enumerate() {
        assert_eq!(r.lsn.0, first_lsn + i as u64);
    }
    assert_eq!(rec.next_lsn, Lsn(701));
    wal.close().unwrap();
}

fn doorbell_rings(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some((wal, _)) = open_or_skip(dir.path(), options(backend)) else { return };
    let bell = wal.doorbell();
    let lsn = wal.append(1, b"ding").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        crossbeam_channel::select! {
            recv(bell) -> r => r.unwrap(),
            default(deadline - std::time::Instant::now()) => panic!("doorbell never rang"),
        }
        if wal.durable_lsn().unwrap() >= lsn {
            break;
        }
    }
    wal.close().unwrap();
}

fn concurrent_appenders(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let Some((wal, _)) = open_or_skip(dir.path(), options(backend)) else { return };
    let wal = Arc::new(wal);
    let threads: Vec<_> = (0..4u8)
        .map(|t| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for i in 0..1500u32 {
                    let mut p = vec![t];
                    p.extend_from_slice(&i.to_le_bytes());
                    let lsn = wal.append(t + 1, &p).unwrap();
                    if i % 100 == 99 {
                        wal.wait_durable(lsn).unwrap();
                    }
                    mine.push((lsn, p));
                }
                mine
            })
        })
        .collect();
    let mut all: Vec<(Lsn, Vec<u8>)> = threads.into_iter().flat_map(|h| h.join().unwrap()).collect();
    all.sort();
    for (i, (lsn, _)) in all.iter().enumerate() {
        assert_eq!(lsn.0, i as u64 + 1, "LSNs must be unique and consecutive");
    }
    Arc::into_inner(wal).unwrap().close().unwrap();
    let (wal, rec) = twophase_wal::open(dir.path(), options(backend)).unwrap();
    assert_eq!(rec.records.len(), all.len());
    for (r, (lsn, p)) in rec.records.iter().zip(&all) {
        assert_eq!((r.lsn, &r.payload[..]), (*lsn, &p[..]));
    }
    wal.close().unwrap();
}

fn backpressure_and_large_records(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions { max_pending_bytes: 2048, segment_size_bytes: 16 << 20, ..options(backend) };
    let Some((wal, _)) = open_or_skip(dir.path(), opts.clone()) else { return };
    for i in 0..3000u32 {
        wal.append(1, &i.to_le_bytes().repeat(25)).unwrap();
    }
    // Larger than max_pending_bytes (accepted alone), larger than a 4 MiB group.
    let big: Vec<u8> = (0..5_000_000u32).map(|i| (i % 251) as u8).collect();
    let lsn = wal.append(2, &big).unwrap();
    let small = wal.append(3, b"after").unwrap();
    wal.wait_durable(small).unwrap();
    wal.close().unwrap();
    let (wal, rec) = twophase_wal::open(dir.path(), opts).unwrap();
    assert_eq!(rec.records.len(), 3002);
    assert_eq!(rec.records[lsn.0 as usize - 1].payload.len(), big.len());
    assert_eq!(&rec.records[lsn.0 as usize - 1].payload[..], &big[..]);
    assert_eq!(&rec.records[1234].payload[..], &1234u32.to_le_bytes().repeat(25)[..]);
    wal.close().unwrap();
}

fn unsafe_no_sync_mode_round_trips(backend: Backend) {
    let dir = tempfile::tempdir().unwrap();
    let opts = WalOptions { sync: SyncMode::None, ..options(backend) };
    let Some((wal, _)) = open_or_skip(dir.path(), opts.clone()) else { return };
    let mut last = Lsn(0);
    for lsn in 1..=200 {
        last = wal.append(kind_for(lsn), &payload_for(lsn)).unwrap();
    }
    wal.wait_durable(last).unwrap();
    wal.close().unwrap();
    let (wal, rec) = twophase_wal::open(dir.path(), opts).unwrap();
    assert_eq!(rec.records.len(), 200);
    wal.close().unwrap();
}

per_backend!(
    round_trip,
    rotation_and_truncation,
    doorbell_rings,
    concurrent_appenders,
    backpressure_and_large_records,
    unsafe_no_sync_mode_round_trips,
);
