//! `twophase demo` at 10,000,000 accounts: account setup, a short load and the audit, which
//! reads every participant's 3.3 million keys through the streamed admin `Dump` (far beyond
//! the 64 MiB a participant may queue for one connection).
//!
//! About two minutes with a release build on the 2-core development VM, and 2-3 GB of memory
//! in all, so it is not part of the default suite:
//!
//!     cargo test --release --test ten_million -- --ignored --nocapture

mod common;

use std::process::Command;
use std::time::Instant;

use common::binary;

const ACCOUNTS: u64 = 10_000_000;

#[test]
#[ignore = "takes minutes and gigabytes: cargo test --release --test ten_million -- --ignored"]
fn a_demo_of_ten_million_accounts_sets_up_runs_and_passes_its_audit() {
    let dir = tempfile::tempdir().unwrap();
    let begin = Instant::now();
    let out = Command::new(binary())
        .args(["demo", "--accounts", &ACCOUNTS.to_string(), "--duration", "5s", "--quiet"])
        .arg("--report")
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed: {stdout}\n{stderr}");
    let passed = format!("audit       PASSED: all {ACCOUNTS} accounts hold exactly");
    assert!(stdout.contains(&passed), "{stdout}");
    let text = std::fs::read_to_string(dir.path().join("report.json")).expect("report.json written");
    let json: serde_json::Value = serde_json::from_str(&text).expect("report.json is JSON");
    assert_eq!(json["audit"]["passed"], true);
    assert!(json["committed"].as_u64().unwrap() > 0, "{json}");
    // For the record (not asserted: the VM's speed varies): the whole run and the demo's own
    // timing lines.
    eprintln!("demo of {ACCOUNTS} accounts took {:?} in all", begin.elapsed());
    for line in stderr.lines().filter(|line| line.contains("accounts")) {
        eprintln!("{line}");
    }
}
