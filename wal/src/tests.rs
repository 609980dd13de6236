//! Unit tests of the writer's failure handling, through a fault-injecting backend.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::io::faulty::Plan;
use crate::wal::open_inner;
use crate::{Lsn, WalError, WalOptions};

fn opts() -> WalOptions {
    WalOptions { segment_size_bytes: 1 << 20, ..WalOptions::default() }
}

/// A log opened with `Backend::Auto` and no fault plan runs on io_uring where the kernel
/// allows it; under `TWOPHASE_REQUIRE_IO_URING=1` (`.ci/run`) falling back to pwrite would
/// test another writer than the one meant, so it fails.
fn check_backend(wal: &crate::Wal) {
    let required = std::env::var("TWOPHASE_REQUIRE_IO_URING").is_ok_and(|v| !v.is_empty() && v != "0");
    if required {
        assert_eq!(wal.backend(), crate::BackendKind::IoUring, "TWOPHASE_REQUIRE_IO_URING is set, but Auto fell back");
    } else if wal.backend() != crate::BackendKind::IoUring {
        eprintln!("Auto fell back to {:?} here; TWOPHASE_REQUIRE_IO_URING=1 makes this a failure", wal.backend());
    }
}

#[test]
fn failed_write_reaches_every_caller_and_is_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let plan = Plan { fail_write_at: Some(1), errno: libc::EIO, ..Plan::default() };
    let writes = plan.writes.clone();
    let (wal, _) = open_inner(dir.path(), opts(), Some(plan)).unwrap();
    let a = wal.append(1, b"first").unwrap();
    wal.wait_durable(a).unwrap();
    let b = wal.append(1, b"second").unwrap();
    let err = wal.wait_durable(b).unwrap_err();
    assert!(matches!(err, WalError::Io { .. }), "{err}");
    assert!(err.to_string().contains("write of segment"), "{err}");
    assert!(wal.durable_lsn().is_err());
    assert!(wal.wait_durable(a).is_err(), "after a failure every waiter gets it");
    assert!(wal.append(1, b"third").is_err());
    assert!(wal.doorbell().try_recv().is_ok());
    assert!(wal.close().is_err());
    assert_eq!(writes.load(Ordering::SeqCst), 2, "no write after the failure");
}

#[test]
fn failed_fsync_is_never_retried_and_never_reported_durable() {
    let dir = tempfile::tempdir().unwrap();
    let plan = Plan { fail_sync_at: Some(0), errno: libc::EIO, ..Plan::default() };
    let syncs = plan.syncs.clone();
    let (wal, _) = open_inner(dir.path(), opts(), Some(plan)).unwrap();
    let a = wal.append(1, b"x").unwrap();
    assert!(wal.wait_durable(a).is_err());
    assert!(matches!(wal.durable_lsn(), Err(WalError::Io { .. })));
    let _ = wal.append(1, b"y");
    drop(wal);
    assert_eq!(syncs.load(Ordering::SeqCst), 1, "the failed fsync was retried");
}

#[test]
fn enospc_is_disk_full_and_wakes_blocked_appenders_and_waiters() {
    let dir = tempfile::tempdir().unwrap();
    let plan =
        Plan { fail_write_at: Some(0), errno: libc::ENOSPC, delay: Duration::from_millis(200), ..Plan::default() };
    let options = WalOptions { max_pending_bytes: 4096, ..opts() };
    let (wal, _) = open_inner(dir.path(), options, Some(plan)).unwrap();
    let wal = Arc::new(wal);
    let first = wal.append(1, &[7u8; 1000]).unwrap();
    let waiter = {
        let wal = wal.clone();
        std::thread::spawn(move || wal.wait_durable(first))
    };
    let appender = {
        let wal = wal.clone();
        std::thread::spawn(move || {
            // Fills max_pending_bytes and then blocks until the failure.
            loop {
                if let Err(e) = wal.append(1, &[9u8; 1000]) {
                    return e;
                }
            }
        })
    };
    let e1 = waiter.join().unwrap().unwrap_err();
    let e2 = appender.join().unwrap();
    assert!(e1.is_disk_full(), "{e1}");
    assert!(e2.is_disk_full(), "{e2}");
    assert!(wal.durable_lsn().unwrap_err().is_disk_full());
    assert!(wal.wait_durable(Lsn(1)).unwrap_err().is_disk_full());
}

#[test]
fn records_before_a_failure_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let plan = Plan { fail_write_at: Some(2), errno: libc::EIO, ..Plan::default() };
    let (wal, _) = open_inner(dir.path(), opts(), Some(plan)).unwrap();
    for i in 0..2u8 {
        let l = wal.append(1, &[i]).unwrap();
        wal.wait_durable(l).unwrap();
    }
    let l = wal.append(1, b"lost").unwrap();
    assert!(wal.wait_durable(l).is_err());
    drop(wal);
    let (wal, rec) = crate::open(dir.path(), opts()).unwrap();
    check_backend(&wal);
    let payloads: Vec<&[u8]> = rec.records.iter().map(|r| &r.payload[..]).collect();
    assert_eq!(payloads, vec![&[0u8][..], &[1u8][..]]);
    assert_eq!(rec.next_lsn, Lsn(3));
    wal.close().unwrap();
}

#[test]
fn argument_errors() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) =
        crate::open(dir.path(), WalOptions { backend: crate::Backend::Portable, max_record_bytes: 10, ..opts() })
            .unwrap();
    assert!(matches!(wal.append(0, b""), Err(WalError::ReservedKind)));
    assert!(matches!(wal.append(1, &[0; 11]), Err(WalError::RecordTooLarge { len: 11, max: 10 })));
    assert!(matches!(wal.wait_durable(Lsn(5)), Err(WalError::NotAppended { .. })));
    wal.wait_durable(Lsn(0)).unwrap();
    assert!(matches!(crate::open(dir.path(), opts()), Err(WalError::Locked { .. })));
    wal.close().unwrap();
    assert!(matches!(
        crate::open(dir.path(), WalOptions { segment_size_bytes: 100, ..opts() }),
        Err(WalError::InvalidOptions(_))
    ));
}

#[test]
fn a_lazy_record_waits_for_company_and_rides_with_the_next_urgent_one() {
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions { lazy_sync_within: Duration::from_secs(3600), ..opts() };
    let plan = Plan::default();
    let syncs = plan.syncs.clone();
    let (wal, _) = open_inner(dir.path(), options, Some(plan)).unwrap();
    let lazy = wal.append_lazy(1, b"end").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    assert!(wal.durable_lsn().unwrap() < lazy, "a lazy record was synced on its own");
    assert_eq!(syncs.load(Ordering::SeqCst), 0);
    let urgent = wal.append(1, b"commit").unwrap();
    wal.wait_durable(urgent).unwrap();
    assert!(wal.durable_lsn().unwrap() >= lazy);
    assert_eq!(syncs.load(Ordering::SeqCst), 1, "both records in one group, one sync");
}

#[test]
fn a_lone_lazy_record_is_synced_within_its_bound_and_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions { lazy_sync_within: Duration::from_millis(5), ..opts() };
    let (wal, _) = open_inner(dir.path(), options.clone(), None).unwrap();
    check_backend(&wal);
    let lazy = wal.append_lazy(1, b"ack").unwrap();
    wal.wait_durable(lazy).unwrap();
    // A crash, not a close: the record must be on disk because of its bound alone.
    wal.simulate_crash();
    let options = WalOptions { lazy_sync_within: Duration::from_secs(3600), ..options };
    let (wal, recovery) = open_inner(dir.path(), options.clone(), None).unwrap();
    assert_eq!(recovery.records.len(), 1);
    wal.append_lazy(1, b"left for close").unwrap();
    wal.close().unwrap();
    let (_, recovery) = open_inner(dir.path(), options, None).unwrap();
    assert_eq!(recovery.records.len(), 2, "close syncs lazy records too");
    assert_eq!(recovery.records[1].lsn, Lsn(2));
}
