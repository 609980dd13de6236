#![no_main]
//! Every target body at the real limits (`Scale::Full`): values and records up to 16 MiB,
//! lists up to 65,535 items, as the stable harness runs them. The other targets build small
//! values (`Scale::Small`) so that they run at thousands of inputs a second; an input here
//! may cost milliseconds, so this target runs for fewer inputs (see docs/OPERATIONS.md,
//! "Fuzzing"). Input: `u8 body` (% 7, in the order below), then that body's input.

use twophase_engine::fuzz_targets::{Scale, engine_messages, engine_records, engine_snapshots};
use twophase_fuzz::scratch_dir;
use twophase_net::fuzz_targets::{net_frames, net_handshake};
use twophase_wal::fuzz_targets::{Scale as WalScale, wal_frames, wal_recovery};

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Some((&body, input)) = data.split_first() else { return };
    match body % 7 {
        0 => engine_messages(Scale::Full, input),
        1 => engine_records(Scale::Full, input),
        2 => engine_snapshots(Scale::Full, input),
        3 => net_frames(Scale::Full, input),
        4 => net_handshake(Scale::Full, input),
        5 => wal_frames(WalScale::Full, input),
        _ => wal_recovery(scratch_dir(), WalScale::Full, input),
    }
});
