#![no_main]
//! `twophase_engine::fuzz_targets::engine_records` at `Scale::Small` under libFuzzer (the body's doc says what it
//! checks), with the capped allocator of `twophase_fuzz`.

use twophase_engine::fuzz_targets::Scale;
use twophase_fuzz as _;

libfuzzer_sys::fuzz_target!(|data: &[u8]| twophase_engine::fuzz_targets::engine_records(Scale::Small, data));
