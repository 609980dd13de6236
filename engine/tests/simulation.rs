//! The simulator's acceptance run: 1,000 seeds (at least 500 are required) of 1,000 transactions each, with
//! crashes, partitions, lost, duplicated and reordered messages and torn log tails.
//! `TWOPHASE_SIM_SEEDS=START..END` picks another range (the default is 0..1000).

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use twophase_engine::sim::{self, FaultCounts, SimConfig};

const TRANSACTIONS_PER_SEED: usize = 1000;

fn seed_range() -> std::ops::Range<u64> {
    let Ok(text) = std::env::var("TWOPHASE_SIM_SEEDS") else { return 0..1000 };
    let (start, end) = text.split_once("..").expect("TWOPHASE_SIM_SEEDS=START..END");
    start.parse().expect("start seed")..end.parse().expect("end seed")
}

#[test]
fn simulated_runs_with_faults_keep_every_invariant() {
    let seeds = seed_range();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let next = AtomicU64::new(seeds.start);
    let failures = Mutex::new(Vec::new());
    let totals = Mutex::new((0u64, 0u64, 0u64, FaultCounts::default()));
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= seeds.end {
                        return;
                    }
                    let mut config = SimConfig::standard(seed);
                    config.transactions = TRANSACTIONS_PER_SEED;
                    let report = sim::run(&config);
                    let mut totals = totals.lock().unwrap();
                    totals.0 += 1;
                    totals.1 += report.transactions as u64;
                    totals.2 += report.committed as u64;
                    totals.3.add(&report.faults);
                    if !report.passed() {
                        failures.lock().unwrap().push(report);
                    }
                }
            });
        }
    });
    let (runs, transactions, committed, faults) = *totals.lock().unwrap();
    let failures = failures.into_inner().unwrap();
    println!(
        "simulator: seeds={runs} ({seeds:?}) transactions={transactions} committed={committed} \
         faults_injected={} [{faults}] violations={} elapsed={:.1}s",
        faults.total(),
        failures.iter().map(|r| r.violations.len()).sum::<usize>(),
        started.elapsed().as_secs_f64()
    );
    for report in &failures {
        println!("{report}");
        println!(
            "replay: cargo run --release -p twophase-engine --example simulate -- --seeds {} --transactions {TRANSACTIONS_PER_SEED} --verbose",
            report.seed
        );
    }
    assert!(failures.is_empty(), "{} of {runs} seeds violated an invariant (see above)", failures.len());
    assert_eq!(runs, seeds.end - seeds.start);
    assert_eq!(transactions, runs * TRANSACTIONS_PER_SEED as u64, "every transaction reached an outcome");
    assert!(faults.crashes > 0 && faults.dropped > 0 && faults.duplicated > 0 && faults.partitions > 0);
    assert!(faults.torn_tails > 0 && faults.lost_records > 0, "crashes must hit unsynced tails: {faults}");
}
