//! The comparison baseline of issue 19: transfers across two PostgreSQL instances done by a
//! plain client, the way an application would without a coordinator. Each transfer is
//! `BEGIN; UPDATE ... ; PREPARE TRANSACTION` on the first instance, the same on the second,
//! then `COMMIT PREPARED` on both, one statement after another; N client threads, each with
//! its own connection to each instance, for D seconds. Prints throughput and the latency
//! percentiles (hdrhistogram, microseconds).
//!
//!     cargo run --release -p twophase-backends --example pg_2pc_baseline -- --clients 16 --duration 10s
//!
//! Without `--dsn-a`/`--dsn-b` it starts two throwaway servers (fsync on) and stops them after.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use hdrhistogram::Histogram;
use postgres::{Client, NoTls};
use twophase_backends::Gid;
use twophase_backends::testserver::PgServer;

#[derive(Parser)]
struct Args {
    /// Client threads, each one transfer at a time.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Accounts on each instance.
    #[arg(long, default_value_t = 1000)]
    accounts: i64,
    /// The first instance (libpq string); both or neither.
    #[arg(long)]
    dsn_a: Option<String>,
    #[arg(long)]
    dsn_b: Option<String>,
}

const START_BALANCE: i64 = 1_000_000;

fn main() -> Result<()> {
    let args = Args::parse();
    let mut servers = Vec::new();
    let (dsn_a, dsn_b) = match (&args.dsn_a, &args.dsn_b) {
        (Some(a), Some(b)) => (a.clone(), b.clone()),
        (None, None) => {
            servers.push(PgServer::start()?);
            servers.push(PgServer::start()?);
            (servers[0].dsn(), servers[1].dsn())
        }
        _ => bail!("give both --dsn-a and --dsn-b, or neither"),
    };
    for dsn in [&dsn_a, &dsn_b] {
        setup(dsn, args.accounts)?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let workers: Vec<_> = (0..args.clients)
        .map(|index| {
            let (dsn_a, dsn_b, stop) = (dsn_a.clone(), dsn_b.clone(), stop.clone());
            let accounts = args.accounts;
            std::thread::spawn(move || client(index as u64, &dsn_a, &dsn_b, accounts, &stop))
        })
        .collect();
    std::thread::sleep(args.duration);
    stop.store(true, Ordering::Relaxed);
    let mut latency_us = Histogram::<u64>::new(3)?;
    let mut failed = 0;
    for worker in workers {
        let (histogram, failures) = worker.join().expect("client thread panicked")?;
        latency_us.add(histogram)?;
        failed += failures;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total = audit(&dsn_a, args.accounts)? + audit(&dsn_b, args.accounts)?;
    if total != 2 * args.accounts * START_BALANCE {
        bail!("money not conserved: {total} across both instances");
    }
    println!(
        "pg_2pc_baseline: {} clients, {:.1} s: {} transfers, {:.0} transfers/s, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {} failed",
        args.clients,
        elapsed,
        latency_us.len(),
        latency_us.len() as f64 / elapsed,
        latency_us.value_at_quantile(0.50) as f64 / 1000.0,
        latency_us.value_at_quantile(0.99) as f64 / 1000.0,
        latency_us.max() as f64 / 1000.0,
        failed,
    );
    Ok(())
}

fn setup(dsn: &str, accounts: i64) -> Result<()> {
    let mut db = Client::connect(dsn, NoTls).context("connect")?;
    db.batch_execute(
        "DROP TABLE IF EXISTS accounts; \
         CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0))",
    )?;
    db.execute(
        "INSERT INTO accounts SELECT id, $2::bigint FROM generate_series(0, $1::bigint - 1) AS id",
        &[&accounts, &START_BALANCE],
    )?;
    Ok(())
}

/// Nothing is left prepared; returns the instance's sum of balances (the caller checks that
/// money is conserved across both).
fn audit(dsn: &str, accounts: i64) -> Result<i64> {
    let mut db = Client::connect(dsn, NoTls)?;
    let prepared: i64 = db.query_one("SELECT count(*) FROM pg_prepared_xacts", &[])?.get(0);
    if prepared != 0 {
        bail!("{prepared} transactions left prepared");
    }
    let rows: i64 = db.query_one("SELECT count(*) FROM accounts", &[])?.get(0);
    if rows != accounts {
        bail!("{rows} accounts instead of {accounts}");
    }
    Ok(db.query_one("SELECT sum(balance)::bigint FROM accounts", &[])?.get(0))
}

/// One client: transfers until told to stop. Returns its latencies and failed transfers.
fn client(index: u64, dsn_a: &str, dsn_b: &str, accounts: i64, stop: &AtomicBool) -> Result<(Histogram<u64>, u64)> {
    let mut a = Client::connect(dsn_a, NoTls)?;
    let mut b = Client::connect(dsn_b, NoTls)?;
    let debit = a.prepare("UPDATE accounts SET balance = balance - 1 WHERE id = $1")?;
    let credit = b.prepare("UPDATE accounts SET balance = balance + 1 WHERE id = $1")?;
    let mut latency_us = Histogram::<u64>::new(3)?;
    let mut rng = index.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let (mut counter, mut failed) = (0u64, 0u64);
    while !stop.load(Ordering::Relaxed) {
        counter += 1;
        let gid = Gid::new("baseline", 1, (index << 32) | counter)?.to_string();
        let (from, to) = (next_account(&mut rng, accounts), next_account(&mut rng, accounts));
        let began = Instant::now();
        let prepared = (|| -> Result<(), postgres::Error> {
            a.batch_execute("BEGIN")?;
            a.execute(&debit, &[&from])?;
            a.batch_execute(&format!("PREPARE TRANSACTION '{gid}'"))?;
            b.batch_execute("BEGIN")?;
            b.execute(&credit, &[&to])?;
            b.batch_execute(&format!("PREPARE TRANSACTION '{gid}'"))
        })();
        match prepared {
            Ok(()) => {
                a.batch_execute(&format!("COMMIT PREPARED '{gid}'"))?;
                b.batch_execute(&format!("COMMIT PREPARED '{gid}'"))?;
                latency_us.record(began.elapsed().as_micros() as u64)?;
            }
            Err(error) => {
                failed += 1;
                eprintln!("transfer {gid} failed: {error}");
                for db in [&mut a, &mut b] {
                    let _ = db.batch_execute("ROLLBACK");
                    let _ = db.batch_execute(&format!("ROLLBACK PREPARED '{gid}'"));
                }
            }
        }
    }
    Ok((latency_us, failed))
}

/// xorshift64: no dependency for a uniform account pick.
fn next_account(state: &mut u64, accounts: i64) -> i64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    (*state % accounts as u64) as i64
}
