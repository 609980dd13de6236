#![no_main]
//! `twophase_wal::fuzz_targets::wal_recovery` at `Scale::Small` under libFuzzer (the body's
//! doc says what it checks), with the capped allocator of `twophase_fuzz`. The segment files
//! go into `twophase_fuzz::scratch_dir()`, on tmpfs where there is one.

use twophase_fuzz::scratch_dir;
use twophase_wal::fuzz_targets::Scale;

libfuzzer_sys::fuzz_target!(|data: &[u8]| twophase_wal::fuzz_targets::wal_recovery(scratch_dir(), Scale::Small, data));
