//! The interactive bank workload: each transfer is an interactive transaction, as the
//! textbook bank application writes it — read both balances, check the funds, then debit,
//! credit and commit — through the blocking client's `Client::begin`.
//!
//! The client keeps one transaction open per connection, so the closed loop runs one
//! thread and one connection (and session) per transaction in flight: `connections ×
//! outstanding` of them, at most [`INTERACTIVE_THREADS_MAX`]. A transfer aborted as a
//! deadlock victim or by a lock-wait timeout is run again from its `BEGIN`, as an
//! application would, up to [`LoadOptions::attempts_max`] attempts; every aborted attempt is
//! counted by reason. Too little money is the application's own decision: it rolls back and
//! counts `insufficient_funds`. Latency runs from the first `BEGIN` of a transfer to its
//! final outcome (retries included: what the application's user waits).

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use twophase_engine::AbortReason;
use twophase_net::{Client, TxError};

use crate::load::{DRAIN_LIMIT, LoadOptions, MAX_LATENCY_US, Stopped, ThreadCtx, ThreadTotals};
use crate::scrape::{Scrape, quantile};
use crate::workload::Tx;

/// Load threads (and client connections, each with its own session) an interactive run may
/// open at most: the coordinator keeps at most 64 sessions per client identity (its
/// `sessions_per_identity_max`) and registering one more expires an idle one, which would
/// void the run. Every load connection presents the same identity.
pub const INTERACTIVE_THREADS_MAX: usize = 64;

/// See [`LoadOptions::attempts_max`].
pub const DEFAULT_ATTEMPTS_MAX: u32 = 10;

/// The abort label of a transfer the application rolled back for want of money.
pub const INSUFFICIENT_FUNDS: &str = "insufficient_funds";

/// Longest pause before a retry; each retry waits a random part of
/// `attempt × RETRY_BACKOFF_STEP`, at most this, so that the two sides of a deadlock do not
/// meet again at once.
const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(5);
const RETRY_BACKOFF_STEP: Duration = Duration::from_micros(500);

/// Which transactions the load runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WorkloadKind {
    /// Each transfer one `Submit` (the fast path).
    #[default]
    OneShot,
    /// Each transfer an interactive transaction (module documentation).
    Interactive,
    /// Each transfer a saga ([`Workload::saga_steps`](crate::Workload::saga_steps)): the
    /// debit with its compensating credit, then the credit; many in flight per connection.
    Saga,
}

impl WorkloadKind {
    pub fn label(self) -> &'static str {
        match self {
            WorkloadKind::OneShot => "one-shot",
            WorkloadKind::Interactive => "interactive",
            WorkloadKind::Saga => "saga",
        }
    }
}

/// What an interactive run's retries did (beyond commits and aborts by reason).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct InteractiveTotals {
    /// Transfers run again after a Deadlock or LockTimeout abort.
    pub retries: u64,
    /// Transfers given up after `attempts_max` attempts (their last abort is counted).
    pub gave_up: u64,
}

impl InteractiveTotals {
    pub(crate) fn add(&mut self, other: &InteractiveTotals) {
        self.retries += other.retries;
        self.gave_up += other.gave_up;
    }
}

/// The coordinator's deadlock and lock-wait figures over a run, read from its metrics.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DeadlockFigures {
    /// Wait-for cycles found (`twophase_deadlocks_total`).
    pub detected: u64,
    /// Of them, those whose detection latency was measured.
    pub timed: u64,
    /// Detection latency (`twophase_deadlock_detection_seconds`), microseconds,
    /// interpolated within the histogram's buckets; `max_us` exact.
    pub detection_p50_us: Option<f64>,
    pub detection_p90_us: Option<f64>,
    pub detection_p99_us: Option<f64>,
    pub detection_max_us: Option<f64>,
    /// Lock waits timed (`twophase_lock_wait_seconds`) and their percentiles, microseconds.
    pub lock_waits: u64,
    pub lock_wait_p50_us: Option<f64>,
    pub lock_wait_p99_us: Option<f64>,
}

impl DeadlockFigures {
    /// Reads them from a scrape of the coordinator (the counts since it started).
    pub fn from_scrape(scrape: &Scrape) -> DeadlockFigures {
        let detection = scrape.buckets("twophase_deadlock_detection_seconds", &[]);
        let lock_wait = scrape.buckets("twophase_lock_wait_seconds", &[]);
        let micros = |buckets: &[(f64, f64)], q: f64| quantile(buckets, q).map(|seconds| seconds * 1e6);
        let count = |buckets: &[(f64, f64)]| buckets.last().map_or(0, |&(_, count)| count as u64);
        let timed = count(&detection);
        DeadlockFigures {
            detected: scrape.sum("twophase_deadlocks_total", &[]) as u64,
            timed,
            detection_p50_us: micros(&detection, 0.5),
            detection_p90_us: micros(&detection, 0.9),
            detection_p99_us: micros(&detection, 0.99),
            detection_max_us: (timed > 0)
                .then(|| scrape.value("twophase_deadlock_detection_max_seconds", &[]))
                .flatten()
                .map(|seconds| seconds * 1e6),
            lock_waits: count(&lock_wait),
            lock_wait_p50_us: micros(&lock_wait, 0.5),
            lock_wait_p99_us: micros(&lock_wait, 0.99),
        }
    }
}

/// What an interactive run refuses: an open loop, read-only audits, too many threads,
/// tracing.
pub(crate) fn validate(options: &LoadOptions) -> anyhow::Result<()> {
    check_interactive_shape(
        options.connections,
        options.outstanding,
        options.rate.is_some(),
        options.read_only_share,
        options.attempts_max,
    )?;
    ensure!(options.tracer.is_none(), "the interactive workload does not trace its transactions yet");
    Ok(())
}

/// The flags an interactive run needs, checkable before a cluster is started or accounts
/// are made: closed loop, transfers only, at least one attempt, and at most
/// [`INTERACTIVE_THREADS_MAX`] transactions in flight.
pub fn check_interactive_shape(
    connections: usize,
    outstanding: usize,
    open_loop: bool,
    read_only_share: f64,
    attempts_max: u32,
) -> anyhow::Result<()> {
    ensure!(!open_loop, "the interactive workload runs closed loop only: leave out --rate");
    ensure!(read_only_share == 0.0, "the interactive workload runs transfers only: leave out --read-only-share");
    ensure!(attempts_max >= 1, "a transfer needs at least one attempt (--attempts-max)");
    let threads = connections.saturating_mul(outstanding);
    ensure!(
        threads <= INTERACTIVE_THREADS_MAX,
        "the interactive workload runs one connection, session and thread per transaction in \
         flight (--connections × --outstanding = {threads}); the coordinator keeps at most \
         {INTERACTIVE_THREADS_MAX} sessions per client identity, so at most {INTERACTIVE_THREADS_MAX}"
    );
    Ok(())
}

/// How one attempt of a transfer ended without an abort from the cluster.
enum Attempt {
    Committed,
    /// The application saw too little money and rolled back.
    InsufficientFunds,
}

/// One load thread of an interactive run: transfers one after the other until the
/// duration is over, each retried after a Deadlock or LockTimeout abort.
pub(crate) fn run_client(mut ctx: ThreadCtx, mut client: Client) -> anyhow::Result<ThreadTotals> {
    let options = ctx.options.clone();
    let end = ctx.start + options.duration;
    let give_up_retrying = end + DRAIN_LIMIT / 2;
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed ^ (ctx.index as u64).wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut totals = ThreadTotals::new(ctx.start);
    let mut bucket = ctx.first_bucket();
    while Instant::now() < end {
        if ctx.stop.load(Ordering::Relaxed) {
            return Err(Stopped::error());
        }
        let Tx::Transfer { from, to, amount } = ctx.workload.next_tx() else {
            unreachable!("an interactive run draws no read-only audits (validated)")
        };
        let began = Instant::now();
        let mut attempt = 1;
        let committed = loop {
            let result = transfer(&mut client, &options, from, to, amount);
            let now = Instant::now();
            ctx.roll_buckets(&mut bucket, now);
            let (reason, retryable) = match result {
                Ok(Attempt::Committed) => break true,
                Ok(Attempt::InsufficientFunds) => (INSUFFICIENT_FUNDS, false),
                Err(TxError::Aborted(reason)) => {
                    let retryable = matches!(reason, AbortReason::Deadlock { .. } | AbortReason::LockTimeout { .. });
                    (reason.label(), retryable)
                }
                Err(TxError::Client(err)) => {
                    // A commit whose answer was not heard may have committed: the expected
                    // balances would be unknown, so the run is void.
                    return Err(err).with_context(|| {
                        format!("interactive transfer {from} -> {to}: its outcome is unknown, the run is void")
                    });
                }
            };
            totals.aborted += 1;
            bucket.aborts += 1;
            *totals.aborts_by_reason.entry(reason).or_default() += 1;
            if !retryable {
                break false;
            }
            if attempt >= options.attempts_max || now >= give_up_retrying {
                totals.interactive.gave_up += 1;
                break false;
            }
            totals.interactive.retries += 1;
            let backoff = (RETRY_BACKOFF_STEP * attempt).min(RETRY_BACKOFF_MAX);
            std::thread::sleep(backoff.mul_f64(rng.r#gen::<f64>()));
            attempt += 1;
        };
        let now = Instant::now();
        totals.last_outcome = now;
        let micros = u64::try_from(now.saturating_duration_since(began).as_micros().max(1)).unwrap_or(u64::MAX);
        totals.latency.saturating_record(micros.min(MAX_LATENCY_US));
        bucket.latency.saturating_record(micros.min(MAX_LATENCY_US));
        if committed {
            totals.committed += 1;
            bucket.commits += 1;
            ctx.deltas[from as usize].fetch_sub(amount, Ordering::Relaxed);
            ctx.deltas[to as usize].fetch_add(amount, Ordering::Relaxed);
        }
    }
    let _ = ctx.reports.send(crate::load::Message::Second(bucket));
    Ok(totals)
}

/// One attempt of the textbook transfer: read both balances, check the funds, debit,
/// credit, commit.
fn transfer(client: &mut Client, options: &LoadOptions, from: u64, to: u64, amount: i64) -> Result<Attempt, TxError> {
    let layout = &options.layout;
    let (from_at, to_at) = (participant_name(options, from), participant_name(options, to));
    let (from_key, to_key) = (layout.key(from), layout.key(to));
    let mut tx = client.begin()?;
    let balance = tx.get_i64(from_at, &from_key)?.unwrap_or(0);
    let _credited_balance = tx.get_i64(to_at, &to_key)?.unwrap_or(0);
    if balance < amount {
        tx.rollback()?;
        return Ok(Attempt::InsufficientFunds);
    }
    // The floor only guards the invariant: the read lock already keeps the balance.
    tx.add_with_floor(from_at, &from_key, -amount, 0)?;
    tx.add(to_at, &to_key, amount)?;
    tx.commit()?;
    Ok(Attempt::Committed)
}

fn participant_name(options: &LoadOptions, account: u64) -> &str {
    &options.layout.participants[options.layout.participant_index(account)].1
}

/// Aborts by the reasons an interactive report shows: deadlock, lock timeout, insufficient
/// funds, and everything else together.
pub fn abort_groups(aborts_by_reason: &BTreeMap<String, u64>) -> [(&'static str, u64); 4] {
    let get = |label: &str| aborts_by_reason.get(label).copied().unwrap_or(0);
    let known = ["deadlock", "lock_timeout", INSUFFICIENT_FUNDS];
    let other = aborts_by_reason.iter().filter(|(label, _)| !known.contains(&label.as_str())).map(|(_, n)| n).sum();
    [
        ("deadlock", get("deadlock")),
        ("lock timeout", get("lock_timeout")),
        ("insufficient funds", get(INSUFFICIENT_FUNDS)),
        ("other", other),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_come_from_the_coordinators_histograms() {
        let text = "# TYPE twophase_deadlocks counter\n\
            twophase_deadlocks_total{node=\"c1\"} 3\n\
            # TYPE twophase_deadlock_detection_seconds histogram\n\
            twophase_deadlock_detection_seconds_bucket{le=\"0.00001\"} 0\n\
            twophase_deadlock_detection_seconds_bucket{le=\"0.0001\"} 2\n\
            twophase_deadlock_detection_seconds_bucket{le=\"0.001\"} 3\n\
            twophase_deadlock_detection_seconds_bucket{le=\"+Inf\"} 3\n\
            twophase_deadlock_detection_seconds_sum 0.0005\n\
            twophase_deadlock_detection_seconds_count 3\n\
            twophase_deadlock_detection_max_seconds 0.0004\n\
            # TYPE twophase_lock_wait_seconds histogram\n\
            twophase_lock_wait_seconds_bucket{le=\"0.001\"} 0\n\
            twophase_lock_wait_seconds_bucket{le=\"+Inf\"} 0\n";
        let figures = DeadlockFigures::from_scrape(&crate::scrape::parse(text).unwrap());
        assert_eq!(figures.detected, 3);
        assert_eq!(figures.timed, 3);
        let p50 = figures.detection_p50_us.unwrap();
        assert!((p50 - 77.5).abs() < 1e-6, "rank 1.5 of 2 in (10, 100] µs: {p50}");
        assert!((figures.detection_max_us.unwrap() - 400.0).abs() < 1e-6);
        assert_eq!(figures.lock_waits, 0);
        assert_eq!(figures.lock_wait_p50_us, None, "no lock wait, no percentile");
    }

    #[test]
    fn an_interactive_run_is_closed_loop_transfers_within_the_session_limit() {
        assert!(check_interactive_shape(4, 8, false, 0.0, 10).is_ok());
        assert!(check_interactive_shape(8, 8, false, 0.0, 1).is_ok(), "exactly the limit");
        let too_many = check_interactive_shape(4, 256, false, 0.0, 10).unwrap_err().to_string();
        assert!(too_many.contains("= 1024") && too_many.contains("at most 64"), "{too_many}");
        assert!(check_interactive_shape(4, 8, true, 0.0, 10).unwrap_err().to_string().contains("--rate"));
        assert!(check_interactive_shape(4, 8, false, 0.1, 10).unwrap_err().to_string().contains("--read-only-share"));
        assert!(check_interactive_shape(4, 8, false, 0.0, 0).unwrap_err().to_string().contains("--attempts-max"));
    }

    #[test]
    fn aborts_are_grouped_as_the_report_shows_them() {
        let aborts: BTreeMap<String, u64> =
            [("deadlock", 5), ("lock_timeout", 2), ("insufficient_funds", 1), ("timeout", 3), ("unavailable", 1)]
                .into_iter()
                .map(|(label, n)| (label.to_string(), n))
                .collect();
        assert_eq!(
            abort_groups(&aborts),
            [("deadlock", 5), ("lock timeout", 2), ("insufficient funds", 1), ("other", 4)]
        );
    }
}
