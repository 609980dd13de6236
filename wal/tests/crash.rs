//! A child process appends and reports each durable LSN on stdout; it is SIGKILLed at a
//! random moment. After reopening, every record reported durable must be present and
//! intact. The child is this test binary re-executed with `WAL_CRASH_CHILD_DIR` set.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{kind_for, options, payload_for};

use rand::Rng;
use twophase_wal::{Backend, Lsn};

const CHILD_ENV: &str = "WAL_CRASH_CHILD_DIR";
const BACKEND_ENV: &str = "WAL_CRASH_CHILD_BACKEND";

fn crash_options(backend: Backend) -> twophase_wal::WalOptions {
    twophase_wal::WalOptions { segment_size_bytes: 64 << 10, ..options(backend) }
}

fn backend_from_env() -> Backend {
    match std::env::var(BACKEND_ENV).as_deref() {
        Ok("io_uring") => Backend::IoUring,
        _ => Backend::Portable,
    }
}

/// The child's body: runs only when re-executed by `kill_at_random_moments`.
#[test]
fn crash_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else { return };
    let (wal, rec) = twophase_wal::open(std::path::Path::new(&dir), crash_options(backend_from_env())).unwrap();
    println!("OPENED {}", rec.next_lsn);
    let mut rng = rand::thread_rng();
    let mut next = rec.next_lsn.0;
    loop {
        let n = rng.gen_range(1..64);
        let mut last = Lsn(0);
        for _ in 0..n {
            last = wal.append(kind_for(next), &payload_for(next)).unwrap();
            assert_eq!(last, Lsn(next));
            next += 1;
        }
        wal.wait_durable(last).unwrap();
        println!("DURABLE {}", last.0);
    }
}

/// The LSN of a "DURABLE n" line (the test harness may print its own text before it), or 0.
/// A line cut short by the kill does not parse and counts as 0: it was never reported.
fn parse_durable(line: &str) -> u64 {
    line.find("DURABLE ").and_then(|i| line[i + 8..].trim().parse().ok()).unwrap_or(0)
}

fn run_child(dir: &std::path::Path, backend: &str, kill_after: Duration) -> u64 {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["crash_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, dir)
        .env(BACKEND_ENV, backend)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Wait until the child has opened the log, then let it run for `kill_after`.
    let mut max_durable = 0u64;
    let start = Instant::now();
    let mut opened = false;
    while !opened {
        let line = rx.recv_timeout(Duration::from_secs(20)).expect("child did not open the log");
        opened = line.contains("OPENED ");
        assert!(start.elapsed() < Duration::from_secs(20));
    }
    let deadline = Instant::now() + kill_after;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(line) => {
                max_durable = max_durable.max(parse_durable(&line));
            }
            Err(mpsc::RecvTimeoutError::Timeout) => break,
            Err(mpsc::RecvTimeoutError::Disconnected) => panic!("child exited early"),
        }
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success());
    // Lines the child printed before it died count too: it reported them durable.
    reader.join().unwrap();
    for line in rx.try_iter() {
        max_durable = max_durable.max(parse_durable(&line));
    }
    max_durable
}

fn kill_at_random_moments(backend: Backend, name: &str) {
    let dir = tempfile::tempdir().unwrap();
    if backend == Backend::IoUring && common::open_or_skip(dir.path(), crash_options(backend)).is_none() {
        return;
    }
    let mut rng = rand::thread_rng();
    let mut total_reported = 0;
    for round in 0..4 {
        let kill_after = Duration::from_millis(rng.gen_range(30..400));
        let max_durable = run_child(dir.path(), name, kill_after);
        let (wal, rec) = twophase_wal::open(dir.path(), crash_options(backend)).unwrap();
        let last = rec.next_lsn.0 - 1;
        assert!(last >= max_durable, "round {round}: durable LSN {max_durable} reported but log ends at {last}");
        for (i, r) in rec.records.iter().enumerate() {
            let lsn = i as u64 + 1;
            assert_eq!(r.lsn, Lsn(lsn));
            assert_eq!(r.kind, kind_for(lsn), "round {round} lsn {lsn}");
            assert_eq!(&r.payload[..], &payload_for(lsn)[..], "round {round} lsn {lsn}");
        }
        eprintln!(
            "{name} round {round}: killed after {kill_after:?}, {max_durable} reported durable, {last} recovered, torn tail: {:?}",
            rec.truncated_tail
        );
        total_reported = max_durable;
        // Leave the log as the crash left it for the next child (drop without appends
        // writes at most a protective marker).
        drop(wal);
    }
    assert!(total_reported > 0, "the child never reported anything durable");
}

#[test]
fn sigkill_keeps_every_reported_record_portable() {
    kill_at_random_moments(Backend::Portable, "portable");
}

#[test]
fn sigkill_keeps_every_reported_record_io_uring() {
    kill_at_random_moments(Backend::IoUring, "io_uring");
}
