//! The log's reader fuzz targets on stable: seeded pseudo-random inputs (raw and
//! structured) through the same bodies `fuzz/` runs under libFuzzer, so `cargo test`
//! exercises record framing and the recovery scan either way. (The wal does not depend
//! on the engine, so its input loop is this file's own.)

use rand::{Rng, RngCore, SeedableRng};
use twophase_wal::fuzz_targets::{Scale, seed_inputs, wal_frames, wal_recovery};

/// The valid seeds first, then `inputs` pseudo-random ones (mostly short, one in ten up to
/// `max_len_bytes`), each once structured (selector bit 7 set) and once raw.
fn drive(name: &str, target: &mut dyn FnMut(&[u8]), seed: u64, inputs: usize, max_len_bytes: usize) {
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
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut input = Vec::new();
    for _ in 0..inputs {
        let len = match rng.gen_range(0..10) {
            0..=5 => rng.gen_range(1..64),
            6..=8 => rng.gen_range(1..4096),
            _ => rng.gen_range(1..=max_len_bytes),
        };
        input.resize(len, 0);
        rng.fill_bytes(&mut input);
        input[0] |= 0x80;
        target(&input);
        input[0] &= 0x7f;
        target(&input);
    }
}

#[test]
fn wal_frames_random() {
    drive("wal_frames", &mut |data| wal_frames(Scale::Full, data), 0xa1, 3_000, 256 << 10);
    drive("wal_frames", &mut |data| wal_frames(Scale::Small, data), 0xa3, 3_000, 256 << 10);
}

#[test]
fn wal_recovery_random() {
    // On tmpfs where there is one: recovery syncs what it cuts, which a disk makes slow.
    let shm = std::path::Path::new("/dev/shm");
    let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.unwrap();
    drive("wal_recovery", &mut |data| wal_recovery(dir.path(), Scale::Full, data), 0xa2, 1_000, 64 << 10);
    drive("wal_recovery", &mut |data| wal_recovery(dir.path(), Scale::Small, data), 0xa4, 1_000, 64 << 10);
}
