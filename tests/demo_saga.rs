//! `twophase demo --protocol saga`: every transfer a saga (the debit with a compensating
//! credit, then the credit). With small balances many debits overdraw: those sagas end
//! `Aborted` (constraint) with nothing applied, the rest apply both steps, and the audit,
//! run once every saga has ended, finds each account where the outcomes say.

mod common;

use std::process::Command;

use common::{binary, run_demo};

#[test]
fn a_saga_demo_with_overdrafts_passes_its_audit() {
    let run = run_demo(&[
        "--protocol",
        "saga",
        "--duration",
        "3s",
        "--accounts",
        "300",
        "--initial-balance",
        "5",
        "--max-amount",
        "10",
        "--hot",
        "40",
    ]);
    let (stdout, json) = (&run.stdout, &run.report);
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
