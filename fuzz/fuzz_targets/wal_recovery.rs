#![no_main]
//! `twophase_wal::fuzz_targets::wal_recovery` under libFuzzer (the body's doc says what it
//! checks), with the capped allocator of `twophase_fuzz`. The segment files go into one
//! temporary directory for the whole run, on tmpfs (`/dev/shm`) where there is one:
//! recovery syncs what it cuts.

use std::sync::OnceLock;

use tempfile::TempDir;
use twophase_fuzz as _;

static DIR: OnceLock<TempDir> = OnceLock::new();

fn dir() -> &'static TempDir {
    DIR.get_or_init(|| {
        let shm = std::path::Path::new("/dev/shm");
        let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() };
        // libFuzzer leaves through exit(), which drops no static: remove the directory then.
        // SAFETY: registers a plain function with the C runtime.
        unsafe { atexit(remove_dir) };
        dir.expect("a temporary directory")
    })
}

extern "C" fn remove_dir() {
    if let Some(dir) = DIR.get() {
        let _ = std::fs::remove_dir_all(dir.path());
    }
}

unsafe extern "C" {
    fn atexit(callback: extern "C" fn()) -> i32;
}

libfuzzer_sys::fuzz_target!(|data: &[u8]| twophase_wal::fuzz_targets::wal_recovery(dir().path(), data));
