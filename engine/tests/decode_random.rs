//! The engine's decoder fuzz targets on stable: seeded pseudo-random inputs (raw and
//! structured, up to the real limits) through the same bodies `fuzz/` runs under
//! libFuzzer, so `cargo test` exercises every decoder even without a nightly toolchain.

use twophase_engine::fuzz_targets::{engine_messages, engine_records, engine_snapshots, run_seeded, seed_inputs};

fn run(name: &str, target: fn(&[u8]), seed: u64, inputs: usize, max_len_bytes: usize) {
    run_seeded(name, seed_inputs(), target, seed, inputs, max_len_bytes);
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
