//! Group-commit throughput and latency, on both backends, against a raw
//! `pwrite + fdatasync` baseline measured in the same run.
//!
//! * `append_to_durable/<backend>/<n>`: append `n` records of 100 bytes, then
//!   `wait_durable` of the last one. Throughput is in durable records per second; with
//!   `n = 1` the time per iteration is the single-record append-to-durable latency.
//! * `raw_write_fdatasync_100B`: one 100-byte `pwrite` into a preallocated file followed by
//!   `fdatasync`, the floor for single-record latency.
//! * `raw_tokio_uring_write_sync_data_100B`: the same through tokio-uring (`write_all_at`
//!   then `sync_data` in one `block_on`), the floor for the io_uring backend (io_uring
//!   hands the fsync to a kernel worker thread, which costs a little latency).
//!
//! * After the criterion runs, an interleaved comparison of single-record latency: one
//!   operation of each variant (raw std, raw tokio-uring, wal portable, wal io_uring) in
//!   turn, 1,000 times, so that disk-latency drift (other tenants) hits all variants alike;
//!   medians and the wal/raw ratios are printed.
//!
//! The log lives in a temporary directory under `WAL_BENCH_DIR` (default: the system temp
//! dir). Point it at the real disk, not a tmpfs.

use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group};
use twophase_wal::{Backend, Lsn, WalOptions};

const RECORD: usize = 100;

fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("WAL_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    }
}

fn raw_baseline(c: &mut Criterion) {
    let dir = bench_dir();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.path().join("raw"))
        .unwrap();
    let size: u64 = 64 << 20;
    // SAFETY: plain syscall on a valid descriptor.
    assert_eq!(unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, size as libc::off_t) }, 0);
    file.sync_all().unwrap();
    let rec = [0x5au8; RECORD];
    let mut off = 0u64;
    c.bench_function("raw_write_fdatasync_100B", |b| {
        b.iter(|| {
            file.write_all_at(&rec, off).unwrap();
            file.sync_data().unwrap();
            off = (off + RECORD as u64) % (size - RECORD as u64);
        })
    });
}

fn raw_tokio_uring_baseline(c: &mut Criterion) {
    let dir = bench_dir();
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(dir.path().join("raw-uring"))
        .unwrap();
    let size: u64 = 64 << 20;
    // SAFETY: plain syscall on a valid descriptor.
    assert_eq!(unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, size as libc::off_t) }, 0);
    file.sync_all().unwrap();
    let Ok(rt) = tokio_uring::Runtime::new(&tokio_uring::builder()) else {
        eprintln!("skipping raw tokio-uring baseline: io_uring unavailable");
        return;
    };
    let file = tokio_uring::fs::File::from_std(file);
    let mut buf = Some(vec![0x5au8; RECORD]);
    let mut off = 0u64;
    c.bench_function("raw_tokio_uring_write_sync_data_100B", |b| {
        b.iter(|| {
            let rec = buf.take().unwrap();
            let rec = rt.block_on(async {
                let (r, rec) = file.write_all_at(rec, off).await;
                r.unwrap();
                file.sync_data().await.unwrap();
                rec
            });
            buf = Some(rec);
            off = (off + RECORD as u64) % (size - RECORD as u64);
        })
    });
}

fn append_to_durable(c: &mut Criterion) {
    let payload = [0xa5u8; RECORD];
    let mut group = c.benchmark_group("append_to_durable");
    for (name, backend) in [("io_uring", Backend::IoUring), ("portable", Backend::Portable)] {
        let dir = bench_dir();
        let (wal, _) = match twophase_wal::open(dir.path(), WalOptions { backend, ..WalOptions::default() }) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("skipping {name}: {e}");
                continue;
            }
        };
        for n in [1u64, 16, 256, 4096] {
            group.throughput(Throughput::Elements(n));
            group.bench_with_input(BenchmarkId::new(name, n), &n, |b, &n| {
                b.iter_custom(|iters| {
                    let mut total = Duration::ZERO;
                    for _ in 0..iters {
                        let start = Instant::now();
                        let mut last = Lsn(0);
                        for _ in 0..n {
                            last = wal.append(1, &payload).unwrap();
                        }
                        wal.wait_durable(last).unwrap();
                        total += start.elapsed();
                        // Keep the disk footprint bounded (outside the timed region).
                        wal.truncate_before(last).unwrap();
                    }
                    total
                })
            });
        }
        wal.close().unwrap();
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(Duration::from_secs(1));
    targets = raw_baseline, raw_tokio_uring_baseline, append_to_durable
}
struct Raw {
    file: std::fs::File,
    off: u64,
}

impl Raw {
    fn new(dir: &std::path::Path, name: &str) -> Raw {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.join(name))
            .unwrap();
        // SAFETY: plain syscall on a valid descriptor.
        assert_eq!(unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, 64 << 20) }, 0);
        file.sync_all().unwrap();
        Raw { file, off: 0 }
    }

    fn next_off(&mut self) -> u64 {
        let o = self.off;
        self.off = (self.off + RECORD as u64) % ((64 << 20) - RECORD as u64);
        o
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Interleaved single-record latency: raw vs wal, both backends.
fn interleaved_latency() {
    let dir = bench_dir();
    let mut raw = Raw::new(dir.path(), "raw");
    let mut raw_u = Raw::new(dir.path(), "raw-uring");
    let rt = tokio_uring::Runtime::new(&tokio_uring::builder()).ok();
    let uring_file = rt.as_ref().map(|_| tokio_uring::fs::File::from_std(raw_u.file.try_clone().unwrap()));
    let open = |sub: &str, backend| {
        let d = dir.path().join(sub);
        twophase_wal::open(&d, WalOptions { backend, ..WalOptions::default() }).ok().map(|(w, _)| w)
    };
    let wal_p = open("p", Backend::Portable).unwrap();
    let wal_u = open("u", Backend::IoUring);
    let payload = [0xa5u8; RECORD];
    let rec = vec![0x5au8; RECORD];
    let mut lat: [Vec<f64>; 4] = Default::default();
    // One operation of each variant in turn, so that all see the same disk conditions.
    for _ in 0..1000 {
        for (v, samples) in lat.iter_mut().enumerate() {
            let t = Instant::now();
            match v {
                0 => {
                    let o = raw.next_off();
                    raw.file.write_all_at(&rec, o).unwrap();
                    raw.file.sync_data().unwrap();
                }
                1 => {
                    let (Some(rt), Some(f)) = (&rt, &uring_file) else { continue };
                    let o = raw_u.next_off();
                    rt.block_on(async {
                        let (r, _) = f.write_all_at(rec.clone(), o).await;
                        r.unwrap();
                        f.sync_data().await.unwrap();
                    });
                }
                2 => {
                    let l = wal_p.append(1, &payload).unwrap();
                    wal_p.wait_durable(l).unwrap();
                }
                _ => {
                    let Some(w) = &wal_u else { continue };
                    let l = w.append(1, &payload).unwrap();
                    w.wait_durable(l).unwrap();
                }
            }
            samples.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }
    let names = ["raw pwrite+fdatasync", "raw tokio-uring write+sync_data", "wal portable", "wal io_uring"];
    let med: Vec<f64> = lat.iter_mut().map(|v| if v.is_empty() { f64::NAN } else { median(v) }).collect();
    println!("\ninterleaved single-record latency (median of {} ops each):", lat[0].len());
    for (n, m) in names.iter().zip(&med) {
        println!("  {n:<34} {m:8.1} us");
    }
    println!("  wal portable / raw pwrite          {:8.2}x", med[2] / med[0]);
    println!("  wal io_uring / raw pwrite          {:8.2}x", med[3] / med[0]);
    println!("  wal io_uring / raw tokio-uring     {:8.2}x", med[3] / med[1]);
    wal_p.close().unwrap();
    if let Some(w) = wal_u {
        w.close().unwrap();
    }
}

fn main() {
    benches();
    if std::env::args().any(|a| a == "--bench") {
        interleaved_latency();
    }
    Criterion::default().configure_from_args().final_summary();
}
