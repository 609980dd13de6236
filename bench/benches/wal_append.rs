//! The log append path as the node's engine thread pays it, on the default backend
//! (`Backend::Auto`: io_uring, or pwrite where io_uring is refused), with 100- and 200-byte
//! records (a transfer's `Commit` or `Prepared` record is of that order).
//!
//! * `wal_append/enqueue/<bytes>`: ns per record for `Wal::append` alone (frame, checksum,
//!   queue; the group-commit thread writes concurrently). Records are appended in runs of
//!   up to 65,536, far below the pending-bytes bound, so `append` never blocks; between runs,
//!   outside the timed part, the log is drained and old segments deleted.
//! * `wal_append/durable/<bytes>/<n>`: µs per group of `n` records (1 or 256): append them,
//!   then `wait_durable` of the last, i.e. the latency from append to durable with one
//!   `fdatasync` per group. Divide by `n` for the amortised cost per record.
//!
//! Throughput is in records per second. The full group-commit study (both backends, raw
//! write + fdatasync baselines, larger groups) is `wal/benches/group_commit.rs`.
//!
//! The log lives in a temporary directory under `WAL_BENCH_DIR` (default: the system temp
//! dir); point it at the disk the node would use, not a tmpfs.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use twophase_wal::{Lsn, Wal, WalOptions};

const RECORD_BYTES: [usize; 2] = [100, 200];
const GROUPS: [u64; 2] = [1, 256];
/// Records appended between two untimed drains: 13 MB of 200-byte records at most, well
/// under the default 64 MiB pending-bytes bound.
const RUN: u64 = 65_536;
const KIND: u8 = 1;

fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("WAL_BENCH_DIR") {
        Some(dir) => tempfile::tempdir_in(dir).expect("temporary directory in WAL_BENCH_DIR"),
        None => tempfile::tempdir().expect("temporary directory"),
    }
}

/// A fresh log on the default backend, as the node opens it.
fn open_wal(dir: &tempfile::TempDir) -> Wal {
    let (wal, recovery) = twophase_wal::open(dir.path(), WalOptions::default()).expect("opening the log");
    assert!(recovery.records.is_empty());
    eprintln!("wal backend: {:?}", wal.backend());
    wal
}

/// Waits until everything appended is durable, then deletes the segments before it.
fn drain(wal: &Wal, last: Lsn) {
    wal.wait_durable(last).expect("the log failed");
    wal.truncate_before(last).expect("truncating the log");
}

/// Appends `count` records and returns the last LSN.
fn append_run(wal: &Wal, payload: &[u8], count: u64) -> Lsn {
    let mut last = Lsn::NONE;
    for _ in 0..count {
        last = wal.append(KIND, black_box(payload)).expect("append");
    }
    last
}

/// Time spent in `append` alone for `iters` records.
fn time_enqueue(wal: &Wal, payload: &[u8], iters: u64) -> Duration {
    let mut timed = Duration::ZERO;
    let mut left = iters;
    while left > 0 {
        let count = left.min(RUN);
        let start = Instant::now();
        let last = append_run(wal, payload, count);
        timed += start.elapsed();
        drain(wal, last);
        left -= count;
    }
    timed
}

/// Time from the first append to the last record durable, for `iters` groups of `n`.
fn time_durable(wal: &Wal, payload: &[u8], n: u64, iters: u64) -> Duration {
    let mut timed = Duration::ZERO;
    for _ in 0..iters {
        let start = Instant::now();
        let last = append_run(wal, payload, n);
        wal.wait_durable(last).expect("the log failed");
        timed += start.elapsed();
        wal.truncate_before(last).expect("truncating the log");
    }
    timed
}

fn enqueue(c: &mut Criterion) {
    let dir = bench_dir();
    let wal = open_wal(&dir);
    let mut group = c.benchmark_group("wal_append/enqueue");
    group.throughput(Throughput::Elements(1));
    for bytes in RECORD_BYTES {
        let payload = vec![0xa5u8; bytes];
        group.bench_function(BenchmarkId::from_parameter(bytes), |b| {
            b.iter_custom(|iters| time_enqueue(&wal, &payload, iters))
        });
    }
    group.finish();
    wal.close().expect("closing the log");
}

fn durable(c: &mut Criterion) {
    let dir = bench_dir();
    let wal = open_wal(&dir);
    let mut group = c.benchmark_group("wal_append/durable");
    for bytes in RECORD_BYTES {
        let payload = vec![0x5au8; bytes];
        for n in GROUPS {
            group.throughput(Throughput::Elements(n));
            group.bench_function(BenchmarkId::new(bytes.to_string(), n), |b| {
                b.iter_custom(|iters| time_durable(&wal, &payload, n, iters))
            });
        }
    }
    group.finish();
    wal.close().expect("closing the log");
}

/// Short runs, and no plots: rendering them takes several seconds per benchmark on a small
/// machine, more than measuring. Estimates are still printed and saved under target/criterion.
fn config() -> Criterion {
    Criterion::default().warm_up_time(Duration::from_millis(500)).without_plots()
}

criterion_group! {
    name = enqueue_benches;
    // Every timed second appends a gigabyte or more, which the writer then syncs: keep it short.
    config = config().measurement_time(Duration::from_secs(1)).sample_size(20);
    targets = enqueue
}
criterion_group! {
    name = durable_benches;
    // Each iteration waits for an fdatasync (a fraction of a millisecond or more).
    config = config().measurement_time(Duration::from_secs(2)).sample_size(20);
    targets = durable
}
criterion_main!(enqueue_benches, durable_benches);
