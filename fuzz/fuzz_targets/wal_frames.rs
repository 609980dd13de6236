#![no_main]
//! `twophase_wal::fuzz_targets::wal_frames` at `Scale::Small` under libFuzzer (the body's doc says what it
//! checks), with the capped allocator of `twophase_fuzz`.

use twophase_fuzz as _;
use twophase_wal::fuzz_targets::Scale;

libfuzzer_sys::fuzz_target!(|data: &[u8]| twophase_wal::fuzz_targets::wal_frames(Scale::Small, data));
