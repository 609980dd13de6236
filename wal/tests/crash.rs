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

const MID_GROUP_ENV: &str = "WAL_MID_GROUP_CHILD_DIR";

/// The child of `a_crash_in_the_middle_of_a_group_leaves_a_torn_tail`: two records made
/// durable one group each, then a third whose group the test hook cuts and SIGKILLs.
#[test]
fn mid_group_child() {
    let Some(dir) = std::env::var_os(MID_GROUP_ENV) else { return };
    let options = twophase_wal::WalOptions { crash_mid_group_after: Some(2), ..crash_options(backend_from_env()) };
    let (wal, _) = twophase_wal::open(std::path::Path::new(&dir), options).unwrap();
    for lsn in 1..=3 {
        assert_eq!(wal.append(kind_for(lsn), &payload_for(lsn)).unwrap(), Lsn(lsn));
        wal.wait_durable(Lsn(lsn)).unwrap();
        println!("DURABLE {lsn}");
    }
    unreachable!("the third group should have killed this process");
}

fn crash_in_the_middle_of_a_group(backend: Backend, name: &str) {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    if backend == Backend::IoUring && common::open_or_skip(dir.path(), crash_options(backend)).is_none() {
        return;
    }
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["mid_group_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(MID_GROUP_ENV, dir.path())
        .env(BACKEND_ENV, name)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.signal(), Some(libc::SIGKILL), "{}\n{stderr}", out.status);
    assert!(stderr.contains("of the group of LSNs 3..=3"), "{stderr}");
    let reported: u64 = String::from_utf8_lossy(&out.stdout).lines().map(parse_durable).max().unwrap_or(0);
    assert_eq!(reported, 2, "the third record was never durable");
    let (_wal, rec) = twophase_wal::open(dir.path(), crash_options(backend)).unwrap();
    let lsns: Vec<u64> = rec.records.iter().map(|r| r.lsn.0).collect();
    assert_eq!(lsns, vec![1, 2], "the two whole groups survive, the cut one is gone");
    assert_eq!(&rec.records[1].payload[..], &payload_for(2)[..]);
    let torn = rec.truncated_tail.expect("the half-written group is a torn tail");
    assert!(torn.bytes_dropped > 0, "{torn:?}");
}

#[test]
fn a_crash_in_the_middle_of_a_group_leaves_a_torn_tail_portable() {
    crash_in_the_middle_of_a_group(Backend::Portable, "portable");
}

#[test]
fn a_crash_in_the_middle_of_a_group_leaves_a_torn_tail_io_uring() {
    crash_in_the_middle_of_a_group(Backend::IoUring, "io_uring");
}
