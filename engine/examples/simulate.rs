//! Long-run entry point of the deterministic simulator.
//!
//! `cargo run --release -p twophase-engine --example simulate -- --seeds 0..100000`
//! runs every seed of the range on all cores, prints progress, and for any failing seed
//! its violations and the one command that replays it.

use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use clap::Parser;
use twophase_engine::sim::{self, FaultCounts, SimConfig};

#[derive(Parser)]
#[command(about = "Run the twophase deterministic simulator over a range of seeds")]
struct Args {
    /// Seed range, `START..END` (END excluded) or a single seed.
    #[arg(long, default_value = "0..500", value_parser = parse_range)]
    seeds: Range<u64>,
    /// Client transactions per seed.
    #[arg(long, default_value_t = 1000)]
    transactions: usize,
    /// Worker threads (default: available cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print every seed's report, not only failures.
    #[arg(long)]
    verbose: bool,
}

fn parse_range(text: &str) -> Result<Range<u64>, String> {
    let parse = |s: &str| s.trim().parse::<u64>().map_err(|e| format!("{s:?}: {e}"));
    match text.split_once("..") {
        Some((start, end)) => {
            let range = parse(start)?..parse(end)?;
            if range.is_empty() { Err(format!("empty seed range {text}")) } else { Ok(range) }
        }
        None => parse(text).map(|seed| seed..seed + 1),
    }
}

fn main() {
    let args = Args::parse();
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let next = AtomicU64::new(args.seeds.start);
    let totals = Mutex::new((0u64, 0u64, 0u64, FaultCounts::default()));
    let failures = Mutex::new(Vec::new());
    let started = Instant::now();
    let total_seeds = args.seeds.end - args.seeds.start;
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| {
                loop {
                    let seed = next.fetch_add(1, Ordering::Relaxed);
                    if seed >= args.seeds.end {
                        return;
                    }
                    let mut config = SimConfig::standard(seed);
                    config.transactions = args.transactions;
                    let report = sim::run(&config);
                    if args.verbose || !report.passed() {
                        println!("{report}");
                    }
                    if !report.passed() {
                        failures.lock().unwrap().push(seed);
                    }
                    let mut totals = totals.lock().unwrap();
                    totals.0 += 1;
                    totals.1 += report.transactions as u64;
                    totals.2 += report.committed as u64;
                    totals.3.add(&report.faults);
                    if totals.0 % 1000 == 0 {
                        let rate = totals.0 as f64 / started.elapsed().as_secs_f64();
                        eprintln!("{}/{total_seeds} seeds, {rate:.0} seeds/s", totals.0);
                    }
                }
            });
        }
    });
    let (seeds, transactions, committed, faults) = *totals.lock().unwrap();
    let elapsed = started.elapsed().as_secs_f64();
    let mut failures = failures.into_inner().unwrap();
    failures.sort();
    println!(
        "seeds={seeds} transactions={transactions} committed={committed} faults_injected={} [{faults}] violations={} elapsed={elapsed:.1}s seeds_per_s={:.1}",
        faults.total(),
        failures.len(),
        seeds as f64 / elapsed
    );
    for seed in &failures {
        println!(
            "FAILED seed {seed}: replay with `cargo run --release -p twophase-engine --example simulate -- --seeds {seed} --transactions {} --verbose`",
            args.transactions
        );
    }
    if !failures.is_empty() {
        std::process::exit(1);
    }
}
