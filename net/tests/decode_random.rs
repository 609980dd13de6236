//! The wire's decoder fuzz targets on stable: seeded pseudo-random inputs (raw and
//! structured, up to the real frame limits) through the same bodies `fuzz/` runs under
//! libFuzzer, so `cargo test` exercises the frame decoder and the handshake either way.

use twophase_engine::fuzz_targets::{Scale, drive, run_seeded};
use twophase_net::fuzz_targets::{net_frames, net_handshake, seed_inputs};

/// The seeds and `inputs` pseudo-random inputs at the real limits ([`Scale::Full`]), then as
/// many at the fuzz targets' everyday [`Scale::Small`] (microseconds each).
fn run(name: &str, target: fn(Scale, &[u8]), seed: u64, inputs: usize, max_len_bytes: usize) {
    run_seeded(name, seed_inputs(), |data| target(Scale::Full, data), seed, inputs, max_len_bytes);
    drive(|data| target(Scale::Small, data), seed ^ 0x5a11, inputs, max_len_bytes);
}

#[test]
fn net_frames_random() {
    run("net_frames", net_frames, 0xf1, 3_000, 64 << 10);
}

#[test]
fn net_handshake_random() {
    run("net_handshake", net_handshake, 0xf2, 3_000, 64 << 10);
}
