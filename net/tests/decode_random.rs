//! The wire's decoder fuzz targets on stable: seeded pseudo-random inputs (raw and
//! structured, up to the real frame limits) through the same bodies `fuzz/` runs under
//! libFuzzer, so `cargo test` exercises the frame decoder and the handshake either way.

use twophase_engine::fuzz_targets::drive;
use twophase_net::fuzz_targets::{net_frames, net_handshake, seed_inputs};

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
fn net_frames_random() {
    run("net_frames", net_frames, 0xf1, 3_000, 64 << 10);
}

#[test]
fn net_handshake_random() {
    run("net_handshake", net_handshake, 0xf2, 3_000, 64 << 10);
}
