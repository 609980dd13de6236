//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::Path;

use twophase_wal::{Backend, Recovery, Wal, WalError, WalOptions};

/// Options with a small segment size so that rotation happens in tests.
pub fn options(backend: Backend) -> WalOptions {
    WalOptions { backend, segment_size_bytes: 256 << 10, ..WalOptions::default() }
}

/// Set to 1 (by `.ci/run`, when the kernel allows io_uring) to make every io_uring variant
/// run for real: a skip becomes a failure, and so does `Backend::Auto` falling back.
pub const REQUIRE_IO_URING_ENV: &str = "TWOPHASE_REQUIRE_IO_URING";

/// Set to 1 (by `.ci/run`, where mounting a tmpfs works) to make `disk_full`'s tmpfs
/// variant run for real instead of falling back to a segment-creation failure.
pub const REQUIRE_TMPFS_ENV: &str = "TWOPHASE_REQUIRE_TMPFS";

/// Whether the flag `name` is set (to anything but empty or `0`).
pub fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|value| !value.is_empty() && value != "0")
}

pub fn io_uring_required() -> bool {
    env_flag(REQUIRE_IO_URING_ENV)
}

/// Opens the log; `None` (with a printed notice) if io_uring was asked for and the kernel
/// refuses it. Under [`REQUIRE_IO_URING_ENV`] that refusal fails the test instead.
pub fn open_or_skip(dir: &Path, options: WalOptions) -> Option<(Wal, Recovery)> {
    match twophase_wal::open(dir, options) {
        Ok(x) => Some(x),
        Err(WalError::Unsupported(why)) => {
            assert!(!io_uring_required(), "{REQUIRE_IO_URING_ENV} is set, but io_uring is refused: {why}");
            eprintln!("SKIPPED: io_uring unavailable here ({why}); {REQUIRE_IO_URING_ENV}=1 makes this a failure");
            None
        }
        Err(e) => panic!("open failed: {e}"),
    }
}

/// Deterministic payload of a record, so that a reader can check it knowing only its LSN.
pub fn payload_for(lsn: u64) -> Vec<u8> {
    let len = (lsn.wrapping_mul(2_654_435_761) % 700) as usize;
    (0..len).map(|i| (lsn as usize * 31 + i * 7) as u8).collect()
}

pub fn kind_for(lsn: u64) -> u8 {
    (lsn % 200) as u8 + 1
}

/// Runs a test body once per backend.
#[macro_export]
macro_rules! per_backend {
    ($($name:ident),* $(,)?) => {
        mod portable {
            $( #[test] fn $name() { super::$name(twophase_wal::Backend::Portable) } )*
        }
        mod io_uring {
            $( #[test] fn $name() { super::$name(twophase_wal::Backend::IoUring) } )*
        }
    };
}

/// Offsets of the frames (markers included) written at the start of a segment file.
pub fn frame_offsets(data: &[u8]) -> Vec<usize> {
    let mut offs = Vec::new();
    let mut o = 0;
    while o + 4 <= data.len() {
        let len = u32::from_le_bytes(data[o..o + 4].try_into().unwrap()) as usize;
        if len == 0 {
            break;
        }
        offs.push(o);
        o += 8 + len;
    }
    offs
}

/// Segment files of `dir`, oldest first.
pub fn segment_files(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    v.sort();
    v
}
