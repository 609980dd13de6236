//! `Backend::Auto` falls back to pwrite + fdatasync where the kernel refuses io_uring. Under
//! `TWOPHASE_REQUIRE_IO_URING=1` (set by `.ci/run` where the kernel allows io_uring) that
//! fallback is a failure: CI must test the backend production uses.

mod common;

use twophase_wal::{Backend, BackendKind};

#[test]
fn auto_uses_io_uring_where_it_is_required() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = twophase_wal::open(dir.path(), common::options(Backend::Auto)).unwrap();
    let picked = wal.backend();
    if common::io_uring_required() {
        assert_eq!(picked, BackendKind::IoUring, "{} is set, but Auto fell back", common::REQUIRE_IO_URING_ENV);
    } else if picked != BackendKind::IoUring {
        eprintln!("Auto fell back to {picked:?} here; {}=1 makes this a failure", common::REQUIRE_IO_URING_ENV);
    }
    let lsn = wal.append(1, b"either way a record is durable").unwrap();
    wal.wait_durable(lsn).unwrap();
    wal.close().unwrap();
    let (_, recovery) = twophase_wal::open(dir.path(), common::options(Backend::Auto)).unwrap();
    assert_eq!(recovery.records.len(), 1);
}
