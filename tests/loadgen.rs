//! `twophase demo` and `twophase bench` as a user runs them: real processes, a real audit.

mod common;

use std::process::Command;

use common::{Cluster, SHORT_DEMO, binary, run_demo};

fn report(dir: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("report.json")).expect("report.json written");
    serde_json::from_str(&text).expect("report.json is JSON")
}

#[test]
fn a_short_demo_commits_transfers_audits_and_writes_both_reports() {
    let run = run_demo(SHORT_DEMO);
    let (stdout, json, dir) = (&run.stdout, &run.report, &run.dir);
    assert!(json["committed"].as_u64().unwrap() > 100, "{json}");
    assert!(json["throughput_tps"].as_f64().unwrap() > 0.0);
    assert_eq!(json["audit"]["passed"], true);
    assert_eq!(json["fsync"], true);
    assert_eq!(json["settings"]["tls"], true, "the demo runs over mutual TLS by default");
    assert!(stdout.contains("transport   mutual TLS"), "{stdout}");
    for field in ["p50", "p90", "p99", "p999", "max"] {
        assert!(json["latency_us"][field].as_u64().unwrap() > 0, "latency_us.{field}");
    }
    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("</html>"), "a self-contained page with charts");
    // The nodes' messages went to files next to the report, not to the terminal.
    for node in ["c1", "p1", "p2", "p3"] {
        assert!(dir.path().join("logs").join(format!("{node}.log")).is_file(), "{node}.log written");
    }
    assert!(stdout.contains("logs        "), "the summary says where the logs are: {stdout}");
}

#[test]
fn flags_no_run_can_use_are_refused_before_anything_starts() {
    for (command, flags, error) in [
        ("demo", &["--accounts", "1"][..], "the bank needs at least 2 accounts, not 1"),
        ("demo", &["--cross-share", "2"], "the cross-participant share must be within 0..=1, not 2"),
        ("demo", &["--connections", "0"], "at least one connection is needed"),
        ("demo", &["--skew=-1"], "the zipfian exponent must be a positive number, not -1"),
        ("chaos", &["--max-amount", "0"], "the largest transfer amount must be at least 1, not 0"),
        ("bench", &["--hot", "5", "--skew", "1"], "--hot and --skew are two ways to choose accounts: give one"),
    ] {
        let out = Command::new(binary()).arg(command).args(flags).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{command} {flags:?}: {stderr}");
        assert!(stderr.contains(error), "{command} {flags:?}: {stderr}");
        // Refused by the flags alone: no cluster was started, no coordinator asked.
        assert!(!stderr.contains("starting") && !stderr.contains("coordinator at"), "{command} {flags:?}: {stderr}");
    }
}

#[test]
fn an_unsafe_demo_says_so_in_its_report() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(binary())
        .args(["demo", "--duration", "1s", "--accounts", "500", "--connections", "1", "--quiet", "--unsafe-no-fsync"])
        .arg("--insecure-plaintext")
        .arg("--report")
        .arg(dir.path())
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("UNSAFE: fsync OFF"), "{stdout}");
    assert!(stdout.contains("!!! INSECURE PLAINTEXT"), "{stdout}");
    let json = report(dir.path());
    assert_eq!(json["fsync"], false);
    assert_eq!(json["settings"]["tls"], false);
}

#[test]
fn bench_against_a_running_cluster_audits_against_the_balances_before() {
    let data = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(2, data.path());
    // Another client's money already in one account: the audit must account for it.
    let seeded = cluster.tx(&["add", "p1:acct/0=5000"]);
    assert!(seeded.status.success(), "{}", String::from_utf8_lossy(&seeded.stdout));
    let run = |reports: &std::path::Path| {
        Command::new(binary())
            .args(["bench", "--config"])
            .arg(cluster.client_config())
            .args(["--duration", "1s", "--accounts", "300", "--connections", "2", "--outstanding", "8", "--quiet"])
            .arg("--report")
            .arg(reports)
            .env("RUST_LOG", "warn")
            .output()
            .unwrap()
    };
    let reports = tempfile::tempdir().unwrap();
    for _ in 0..2 {
        let out = run(reports.path());
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "bench failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
        assert_eq!(report(reports.path())["audit"]["passed"], true, "{stdout}");
    }
    cluster.stop();
}
