#![no_main]
//! `twophase_wal::fuzz_targets::wal_frames` under libFuzzer (the body's doc says what it
//! checks), with the capped allocator of `twophase_fuzz`.

use twophase_fuzz as _;

libfuzzer_sys::fuzz_target!(|data: &[u8]| twophase_wal::fuzz_targets::wal_frames(data));
