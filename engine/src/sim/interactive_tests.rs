//! The simulator with interactive clients: runs pass, deadlocks happen and are resolved,
//! and planted bugs in the deadlock detector and the locks are caught.

use super::*;

fn deadlocks(report: &SimReport) -> usize {
    report.aborts_by_reason.get("deadlock").copied().unwrap_or(0)
}

#[test]
fn interactive_transfers_without_faults_pass_and_deadlock() {
    let mut seen_deadlocks = 0;
    for seed in 0..5 {
        let mut config = SimConfig::interactive(seed);
        config.faults = Faults::none();
        let report = run(&config);
        assert!(report.passed(), "{report}");
        // Set-up transactions that abort are retried and counted here too.
        assert!(report.transactions >= 300 + 200, "every transaction ends: {report}");
        assert!(!report.aborts_by_reason.contains_key("unavailable"), "no fault, no lost link: {report}");
        assert!(report.committed > 250, "most commit without faults: {report}");
        seen_deadlocks += deadlocks(&report);
    }
    assert!(seen_deadlocks > 0, "opposite-order transfers on hot accounts deadlock");
}

#[test]
fn interactive_transfers_with_faults_pass() {
    for seed in 0..20 {
        let report = run(&SimConfig::interactive(seed));
        assert!(report.passed(), "{report}");
    }
}

#[test]
fn the_quick_configuration_passes_and_replays_exactly() {
    for seed in 0..50 {
        let config = SimConfig::interactive_quick(seed);
        let report = run(&config);
        assert!(report.passed(), "{report}");
        if seed % 10 == 0 {
            let again = run(&config);
            assert_eq!((report.events, report.sim_time, report.faults), (again.events, again.sim_time, again.faults));
        }
    }
}

/// Runs interactive seeds from 0, at most `budget`, until one reports a violation starting
/// with one of `expect`.
fn first_caught(budget: u64, plant: impl Fn(&mut SimConfig), expect: &[&str]) -> Option<SimReport> {
    (0..budget).find_map(|seed| {
        let mut config = SimConfig::interactive(seed);
        config.transactions = 100;
        plant(&mut config);
        let report = run(&config);
        let caught = report.violations.iter().any(|v| expect.iter().any(|e| v.starts_with(e)));
        caught.then_some(report)
    })
}

fn assert_caught(name: &str, budget: u64, plant: impl Fn(&mut SimConfig), expect: &[&str]) {
    let report = first_caught(budget, plant, expect)
        .unwrap_or_else(|| panic!("planted bug '{name}' survived {budget} seeds (no {expect:?} violation)"));
    println!("planted bug '{name}' caught by seed {}: {:?}", report.seed, report.violations);
}

#[test]
fn planted_detector_that_never_fires_is_caught() {
    assert_caught(
        "the deadlock detector never fires",
        20,
        |c| c.bugs.detector.never_fires = true,
        &["deadlock: a cycle persisted past detection"],
    );
}

#[test]
fn planted_oldest_victim_is_caught() {
    assert_caught(
        "a deadlock aborts the oldest of its cycle",
        20,
        |c| c.bugs.detector.victim_oldest = true,
        &["deadlock: victim"],
    );
}

#[test]
fn planted_early_lock_release_is_caught_with_interactive_clients_only() {
    // Only the set-up is one-shot: the interactive transfers alone must show it.
    assert_caught(
        "locks (read locks among them) released at prepare",
        50,
        |c| {
            c.transactions = 0;
            c.clients = 1;
            c.bugs.participant.release_locks_at_prepare = true;
        },
        &["serializability", "bank", "conservation", "lost-update"],
    );
}

#[test]
fn planted_early_lock_timeout_is_caught() {
    assert_caught(
        "participants end lock waits at half the lock-wait timeout",
        20,
        |c| c.bugs.lock_timeout_early = Some(c.interactive.lock_wait_timeout / 2),
        &["lock-timeout"],
    );
}

/// The seed sweep for interactive workloads with faults (`SimConfig::interactive_quick`):
/// `SIM_SEEDS=0..100000 cargo test --release -p twophase-engine --lib sim::interactive_tests::sweep -- --ignored --nocapture`
#[test]
#[ignore]
fn sweep() {
    let range = std::env::var("SIM_SEEDS").unwrap_or_else(|_| "0..2000".into());
    let (start, end) = range.split_once("..").expect("SIM_SEEDS=START..END");
    let (start, end): (u64, u64) = (start.parse().expect("a start seed"), end.parse().expect("an end seed"));
    let started = std::time::Instant::now();
    let (mut committed, mut transactions, mut deadlocks, mut lock_timeouts, mut failed) = (0, 0, 0, 0, Vec::new());
    let mut faults = FaultCounts::default();
    for seed in start..end {
        let report = run(&SimConfig::interactive_quick(seed));
        committed += report.committed;
        transactions += report.transactions;
        deadlocks += deadlocks_of(&report);
        lock_timeouts += report.aborts_by_reason.get("lock_timeout").copied().unwrap_or(0);
        faults.add(&report.faults);
        if !report.passed() {
            println!("{report}");
            failed.push(seed);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let seeds = end - start;
    println!(
        "seeds {start}..{end}: {:.0} seeds/s ({seconds:.1} s), transactions={transactions} committed={committed} deadlocks={deadlocks} lock_timeouts={lock_timeouts} faults[{faults}] violating seeds={}",
        seeds as f64 / seconds,
        failed.len()
    );
    assert!(failed.is_empty(), "seeds with violations: {failed:?}");
}

fn deadlocks_of(report: &SimReport) -> usize {
    deadlocks(report)
}
