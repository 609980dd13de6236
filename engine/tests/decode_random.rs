//! The engine's decoder fuzz targets on stable: seeded pseudo-random inputs (raw and
//! structured, up to the real limits) through the same bodies `fuzz/` runs under
//! libFuzzer, so `cargo test` exercises every decoder even without a nightly toolchain.

use twophase_engine::fuzz_targets::{drive, engine_messages, engine_records, engine_snapshots, seed_inputs};

/// Runs the valid seeds first (each must survive its target), then `inputs` random ones.
fn run(name: &str, target: fn(&[u8]), seed: u64, inputs: usize, max_len_bytes: usize) {
    for (i, (_, input)) in seed_inputs().into_iter().filter(|(of, _)| *of == name).enumerate() {
        target(&input);
        // `TWOPHASE_FUZZ_SEEDS_DIR=$PWD/fuzz/corpus cargo test --test decode_random`
        // regenerates the fuzz crate's committed seeds from these.
        if let Some(dir) = std::env::var_os("TWOPHASE_FUZZ_SEEDS_DIR") {
            let dir = std::path::Path::new(&dir).join(name);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join(format!("seed-{i}")), &input).unwrap();
        }
    }
    drive(target, seed, inputs, max_len_bytes);
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
