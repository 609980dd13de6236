//! `twophase demo --protocol saga`: every transfer a saga (the debit with a compensating
//! credit, then the credit). With small balances many debits overdraw: those sagas end
//! `Aborted` (constraint) with nothing applied, the rest apply both steps, and the audit,
//! run once every saga has ended, finds each account where the outcomes say.

mod common;

use std::process::Command;

use common::binary;

#[test]
fn a_saga_demo_with_overdrafts_passes_its_audit() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(binary())
        .args(["demo", "--protocol", "saga", "--duration", "3s", "--accounts", "300"])
        .args(["--initial-balance", "5", "--max-amount", "10", "--hot", "40", "--quiet"])
        .arg("--report")
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("audit       PASSED"), "{stdout}");
    let text = std::fs::read_to_string(dir.path().join("report.json")).expect("report.json written");
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(json["settings"]["workload"], "saga");
    assert!(stdout.contains("workload    saga transfers, closed loop"), "{stdout}");
    assert!(json["committed"].as_u64().unwrap() > 0, "{json}");
    let aborts = json["aborts_by_reason"].as_object().unwrap();
    assert!(aborts.get("constraint").and_then(|n| n.as_u64()).unwrap_or(0) >= 1, "no overdraft: {stdout}");
}

#[test]
fn a_saga_demo_refuses_flags_it_cannot_honour() {
    let out = Command::new(binary())
        .args(["demo", "--protocol", "saga", "--read-only-share", "0.1", "--duration", "1s"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sagas carry no reads"));
}
