//! A failing disk surfaces as an error to every waiter, never as a hang or a silent
//! success. A tiny tmpfs is mounted and filled; `DiskFull` must reach appenders, waiters
//! and `durable_lsn`. If mounting is not permitted, the test says so on stderr and checks a
//! segment-creation failure instead (it does not silently pass). `WAL_TEST_NO_TMPFS=1`
//! forces that fallback; `TWOPHASE_REQUIRE_TMPFS=1` (set by `.ci/run` where a tmpfs mount
//! works) makes falling back a failure.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use common::{open_or_skip, options};
use twophase_wal::{Backend, Lsn, WalError, WalOptions};

struct Mount(std::path::PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn mount_tmpfs(dir: &Path) -> Result<Mount, String> {
    if std::env::var_os("WAL_TEST_NO_TMPFS").is_some() {
        return Err("WAL_TEST_NO_TMPFS is set".into());
    }
    let out = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(dir)
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(Mount(dir.to_path_buf()))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

fn small(backend: Backend) -> WalOptions {
    WalOptions { segment_size_bytes: 64 << 10, max_pending_bytes: 16 << 10, ..options(backend) }
}

/// Appends (never waiting itself) until the log fails, with one waiter thread per record.
/// Returns the error `append` got and every waiter's (LSN, outcome).
#[allow(clippy::type_complexity)]
fn fill_until_failure(wal: &Arc<twophase_wal::Wal>) -> (WalError, Vec<(u64, Result<(), WalError>)>) {
    let mut waiters = Vec::new();
    let mut err = None;
    for i in 0u64..100_000 {
        match wal.append(1, &[i as u8; 1000]) {
            Ok(lsn) => {
                let w = wal.clone();
                waiters.push((lsn.0, std::thread::spawn(move || w.wait_durable(lsn))));
            }
            Err(e) => {
                err = Some(e);
                break;
            }
        }
    }
    let err = err.expect("the disk never filled up");
    let outcomes = waiters.into_iter().map(|(l, h)| (l, h.join().unwrap())).collect();
    (err, outcomes)
}

/// The variants run one at a time. Each spawns `mount`/`umount`, and a child forked while
/// the other variant holds its log open inherits that log's flock'd `LOCK` until it execs,
/// so the other's reopen could find the directory locked (seen as a rare `Locked` failure).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn disk_full_reaches_every_waiter(backend: Backend) {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("wal");
    std::fs::create_dir(&dir).unwrap();
    match mount_tmpfs(&dir) {
        Ok(mount) => {
            let Some((wal, _)) = open_or_skip(&dir, small(backend)) else { return };
            let wal = Arc::new(wal);
            let (err, outcomes) = fill_until_failure(&wal);
            assert!(err.is_disk_full(), "expected DiskFull, got {err}");
            // From then on every caller gets it, at once.
            assert!(wal.durable_lsn().unwrap_err().is_disk_full());
            assert!(wal.wait_durable(Lsn(1)).unwrap_err().is_disk_full());
            assert!(wal.append(1, b"more").unwrap_err().is_disk_full());
            assert!(wal.doorbell().recv_timeout(Duration::from_secs(5)).is_ok());
            let wal = Arc::into_inner(wal).unwrap();
            assert!(wal.close().unwrap_err().is_disk_full());
            // What is really on disk decides who was right: a waiter told "durable" must
            // find its record there; every other waiter must have been told DiskFull.
            let (wal, rec) = twophase_wal::open(&dir, small(backend)).unwrap();
            let on_disk = rec.next_lsn.0 - 1;
            for r in &rec.records {
                assert_eq!(&r.payload[..], &[(r.lsn.0 - 1) as u8; 1000][..]);
            }
            let mut told_full = 0;
            for (lsn, outcome) in &outcomes {
                match outcome {
                    Ok(()) => assert!(*lsn <= on_disk, "LSN {lsn} reported durable but lost"),
                    Err(e) => {
                        assert!(e.is_disk_full(), "waiter on {lsn}: {e}");
                        told_full += 1;
                    }
                }
            }
            assert!(on_disk > 0, "nothing became durable before the disk filled");
            assert!(told_full > 0, "no waiter was told about the full disk");
            eprintln!(
                "{backend:?}: {} records appended, {on_disk} durable, {told_full} waiters got DiskFull",
                outcomes.len()
            );
            drop(wal);
            drop(mount);
        }
        Err(why) => {
            let required = common::REQUIRE_TMPFS_ENV;
            assert!(!common::env_flag(required), "{required} is set, but the tmpfs variant cannot run: {why}");
            eprintln!("tmpfs variant SKIPPED ({why}); checking a segment-creation failure instead");
            let Some((wal, _)) = open_or_skip(&dir, small(backend)) else { return };
            // Occupy every name the next segment could get, so that rotation fails.
            let wal = Arc::new(wal);
            let mut lsn = Lsn(0);
            for i in 0..40u64 {
                lsn = wal.append(1, &[i as u8; 1000]).unwrap();
            }
            wal.wait_durable(lsn).unwrap();
            for next in lsn.0 + 1..lsn.0 + 300 {
                std::fs::create_dir_all(dir.join(format!("{next:020}.wal"))).unwrap();
            }
            let mut err = None;
            for i in 0..200u64 {
                match wal.append(1, &[i as u8; 1000]).and_then(|l| wal.wait_durable(l)) {
                    Ok(()) => continue,
                    Err(e) => {
                        err = Some(e);
                        break;
                    }
                }
            }
            assert!(err.is_some(), "segment creation failure was not reported");
            assert!(wal.durable_lsn().is_err());
        }
    }
}

per_backend!(disk_full_reaches_every_waiter);
