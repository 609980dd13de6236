//! `twophase demo --workload interactive --hot 10`: interactive transfers on a few hot
//! accounts deadlock; the coordinator detects it, the load retries, the audit passes. The
//! run keeps the workload's default connections and transactions in flight, so those
//! defaults are proven to run.

mod common;

use common::run_demo;

#[test]
fn a_hot_interactive_demo_detects_deadlocks_and_audits() {
    let run = run_demo(&["--workload", "interactive", "--hot", "10", "--duration", "4s", "--accounts", "1000"]);
    let (stdout, json) = (&run.stdout, &run.report);
    assert_eq!(json["settings"]["workload"], "interactive");
    assert_eq!(json["settings"]["outstanding"], 8, "the interactive default");
    assert!(json["committed"].as_u64().unwrap() > 0, "{json}");
    let deadlocks = &json["interactive"]["deadlocks"];
    assert!(deadlocks["detected"].as_u64().unwrap() >= 1, "no deadlock detected: {stdout}");
    assert!(deadlocks["timed"].as_u64().unwrap() >= 1, "no detection timed: {stdout}");
    assert!(deadlocks["detection_p50_us"].as_f64().unwrap() > 0.0, "{deadlocks}");
    // Only deadlock victims, lock-wait timeouts and the application's own funds check abort.
    let aborts = json["aborts_by_reason"].as_object().unwrap();
    for reason in aborts.keys() {
        assert!(
            ["deadlock", "lock_timeout", "insufficient_funds"].contains(&reason.as_str()),
            "abort {reason}: {stdout}"
        );
    }
    assert!(aborts.get("deadlock").and_then(|n| n.as_u64()).unwrap_or(0) >= 1, "{stdout}");
    assert!(stdout.contains("detection   p50 "), "{stdout}");
}
