//! The engine's decoder fuzz targets on stable: seeded pseudo-random inputs (raw and
//! structured, up to the real limits) through the same bodies `fuzz/` runs under
//! libFuzzer, so `cargo test` exercises every decoder even without a nightly toolchain.

use twophase_engine::fuzz_targets::{
    Scale, drive, engine_messages, engine_records, engine_snapshots, run_seeded, seed_inputs,
};

/// The seeds and `inputs` pseudo-random inputs at the real limits ([`Scale::Full`]), then as
/// many at the fuzz targets' everyday [`Scale::Small`] (microseconds each).
fn run(name: &str, target: fn(Scale, &[u8]), seed: u64, inputs: usize, max_len_bytes: usize) {
    run_seeded(name, seed_inputs(), |data| target(Scale::Full, data), seed, inputs, max_len_bytes);
    drive(|data| target(Scale::Small, data), seed ^ 0x5a11, inputs, max_len_bytes);
}

#[test]
fn engine_messages_random() {
    run("engine_messages", engine_messages, 0xe1, 6_000, 64 << 10);
}

#[test]
fn engine_records_random() {
    run("engine_records", engine_records, 0xe2, 6_000, 64 << 10);
}

#[test]
fn engine_snapshots_random() {
    run("engine_snapshots", engine_snapshots, 0xe3, 4_000, 64 << 10);
}
