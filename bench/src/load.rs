//! Running the bank workload against a coordinator: closed or open loop, per-second
//! timeline, latency histograms, expected balance changes from acknowledged commits.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail, ensure};
use bytes::Bytes;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use hdrhistogram::Histogram;
use serde::Serialize;
use twophase_engine::message::SagaSubmit;
use twophase_engine::{Outcome, Seq};
use twophase_net::{Client, ClientOptions, Pipeline, PipelinedRequest};

use crate::interactive::{DeadlockFigures, InteractiveTotals, WorkloadKind};
use crate::layout::{BankLayout, KeyTable, check_directory, client_options};
use crate::probe::LoadProbe;
use crate::workload::{Tx, Workload, WorkloadSpec};

/// Highest latency the histograms track (longer ones are recorded as this): one hour.
pub const MAX_LATENCY_US: u64 = 3_600_000_000;

/// After the run's duration: how long outstanding transactions may take to finish.
pub const DRAIN_LIMIT: Duration = Duration::from_secs(30);

/// Open loop only: how long after the duration sends that fell behind the schedule are
/// still made (counted as `unsent_backlog` after that).
pub const BACKLOG_LIMIT: Duration = Duration::from_secs(15);

/// See [`LoadOptions::send_tick`].
pub const DEFAULT_SEND_TICK: Duration = Duration::from_millis(1);

/// Longest a connection thread waits for outcomes before looking at the clock again.
const POLL_SLICE: Duration = Duration::from_millis(5);

/// What to run.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Where each connection goes: one coordinator, or every member of a coordinator group
    /// (the connections find its leader and follow it when it changes, resending what is in
    /// flight under the same `(client, seq)`). Never empty.
    pub coordinators: Vec<SocketAddr>,
    pub cluster: String,
    pub layout: BankLayout,
    pub duration: Duration,
    /// Connections, one thread and one [`Pipeline`] each (default 4).
    pub connections: usize,
    /// Transactions in flight per connection (default 256). Also bounds the open loop: a
    /// connection at this bound sends late, and the delay shows up as latency.
    pub outstanding: usize,
    /// Open loop at this many transactions per second in total; `None`: closed loop.
    pub rate: Option<u64>,
    /// Open loop only: a connection sleeps until the next multiple of this (from the run's
    /// start), or until outcomes arrive, and sends every transaction due whenever it wakes,
    /// instead of waking for each one (default 1 ms; zero: wake for each). Latency still
    /// counts from each transaction's intended time, so the wait for the tick is in the
    /// figures. Why: the generator shares the
    /// machine with the cluster, and a wake-up per transaction (10,000 timer interrupts a
    /// second at 10,000 tx/s) is load that a real client population would not put on it;
    /// on the development VM it was enough to make the host steal CPU (docs/OPERATIONS.md).
    pub send_tick: Duration,
    /// Zipfian exponent of the account choice; `None`: uniform.
    pub skew: Option<f64>,
    /// Share of transfers between accounts on different participants (default 1.0).
    pub cross_share: f64,
    /// Share of read-only audit transactions (default 0).
    pub read_only_share: f64,
    /// Transfer amounts are uniform in `1..=max_amount` (default 10).
    pub max_amount: i64,
    /// One-shot transfers (the default) or interactive ones ([`WorkloadKind`]).
    pub workload: WorkloadKind,
    /// Draw every account from the first `hot` accounts (`None`: from all of them).
    pub hot: Option<u64>,
    /// Interactive only: attempts of one transfer at most (the first and its retries after
    /// a Deadlock or LockTimeout abort; default 10).
    pub attempts_max: u32,
    /// Show a live one-line progress display on stderr.
    pub progress: bool,
    pub seed: u64,
    /// Processes (label, pid) whose resident memory is sampled every second.
    pub sample_pids: Vec<(String, u32)>,
    /// How each connection's [`Pipeline`] reconnects and times out (default: the client
    /// library's defaults for `cluster`). Its `cluster` must be `cluster` and its
    /// `client_id` unset (every connection registers its own session).
    pub client: ClientOptions,
    /// A live view of the run for a harness that acts while it runs (e.g. the chaos run).
    pub probe: Option<Arc<LoadProbe>>,
    /// Roots the traces of the transactions it samples (`None`: no tracing, no cost).
    pub tracer: Option<Arc<dyn TxTracer>>,
}

/// Starts the client's span of the transactions it samples. The binary implements it over
/// OpenTelemetry; this crate only carries the W3C traceparent ahead of the request
/// ([`Pipeline::send_traced`]) and reports the outcome.
pub trait TxTracer: Send + Sync + fmt::Debug {
    /// Called for every transaction just before it is sent: `Some` (its span, started now)
    /// when this one is traced. Must be cheap when it is not.
    fn start(&self) -> Option<Box<dyn TracedTx>>;
}

/// A traced transaction's span at the client; dropped without [`finish`](Self::finish) (the
/// run failed first), it ends without an outcome.
pub trait TracedTx: Send {
    /// The W3C `traceparent` naming this span, sent ahead of the request.
    fn traceparent(&self) -> Bytes;
    /// Records the outcome and ends the span.
    fn finish(self: Box<Self>, outcome: &Outcome);
}

/// Refuses a run that cannot send anything: no duration, no connection, nothing in flight,
/// an open loop at rate 0.
pub fn check_run_shape(
    duration: Duration,
    connections: usize,
    outstanding: usize,
    rate: Option<u64>,
) -> anyhow::Result<()> {
    ensure!(!duration.is_zero(), "the run's duration must be positive");
    ensure!(connections >= 1, "at least one connection is needed");
    ensure!(outstanding >= 1, "at least one outstanding transaction per connection is needed");
    ensure!(rate != Some(0), "an open-loop rate must be positive");
    Ok(())
}

impl LoadOptions {
    /// The defaults: 10 s, 4 connections of 256 outstanding, closed loop, uniform, all
    /// transfers cross-participant, no read-only transactions, amounts 1..=10, no progress.
    pub fn new(coordinator: SocketAddr, cluster: impl Into<String>, layout: BankLayout) -> LoadOptions {
        let cluster = cluster.into();
        LoadOptions {
            coordinators: vec![coordinator],
            client: client_options(&cluster),
            cluster,
            layout,
            duration: Duration::from_secs(10),
            connections: 4,
            outstanding: 256,
            rate: None,
            send_tick: DEFAULT_SEND_TICK,
            skew: None,
            cross_share: 1.0,
            read_only_share: 0.0,
            max_amount: 10,
            workload: WorkloadKind::OneShot,
            hot: None,
            attempts_max: crate::interactive::DEFAULT_ATTEMPTS_MAX,
            progress: false,
            seed: 1,
            sample_pids: Vec::new(),
            probe: None,
            tracer: None,
        }
    }

    /// The coordinator addresses, comma-separated (as `--coordinator` takes them).
    pub fn coordinator_list(&self) -> String {
        self.coordinators.iter().map(SocketAddr::to_string).collect::<Vec<_>>().join(",")
    }

    fn validate(&self) -> anyhow::Result<()> {
        self.layout.validate()?;
        ensure!(!self.coordinators.is_empty(), "the run needs at least one coordinator address");
        check_run_shape(self.duration, self.connections, self.outstanding, self.rate)?;
        ensure!(
            self.client.cluster == self.cluster,
            "the client options name cluster '{}', the run '{}'",
            self.client.cluster,
            self.cluster
        );
        // Connections sharing an id would also share sequence numbers: not exactly-once.
        ensure!(self.client.client_id.is_none(), "every connection registers its own session; do not set one");
        match self.workload {
            WorkloadKind::OneShot => {}
            WorkloadKind::Interactive => crate::interactive::validate(self)?,
            WorkloadKind::Saga => {
                ensure!(self.read_only_share == 0.0, "sagas carry no reads: leave out --read-only-share");
                ensure!(self.tracer.is_none(), "the saga workload does not trace its sagas yet");
            }
        }
        Ok(())
    }

    fn spec(&self) -> WorkloadSpec {
        WorkloadSpec {
            skew: self.skew,
            cross_share: self.cross_share,
            read_only_share: self.read_only_share,
            max_amount: self.max_amount,
            hot: self.hot,
        }
    }

    /// Load threads: one per connection, or with interactive transactions (one open at a
    /// time per client connection) one per connection and outstanding transaction.
    pub(crate) fn threads(&self) -> usize {
        match self.workload {
            WorkloadKind::OneShot | WorkloadKind::Saga => self.connections,
            WorkloadKind::Interactive => self.connections * self.outstanding,
        }
    }

    /// The settings as they go into a report.
    pub fn settings(&self) -> LoadSettings {
        LoadSettings {
            coordinator: self.coordinator_list(),
            cluster: self.cluster.clone(),
            accounts: self.layout.accounts,
            participants: self.layout.participants.iter().map(|(_, name)| name.clone()).collect(),
            initial_balance: self.layout.initial_balance,
            duration_s: self.duration.as_secs_f64(),
            connections: self.connections,
            outstanding: self.outstanding,
            rate: self.rate,
            send_tick_us: self.rate.map(|_| u64::try_from(self.send_tick.as_micros()).unwrap_or(u64::MAX)),
            mode: if self.rate.is_some() { "open loop" } else { "closed loop" }.to_string(),
            skew: self.skew,
            cross_share: self.cross_share,
            read_only_share: self.read_only_share,
            max_amount: self.max_amount,
            workload: self.workload.label().to_string(),
            hot: self.hot,
            seed: self.seed,
            sampled_processes: self.sample_pids.iter().map(|(label, pid)| format!("{label} (pid {pid})")).collect(),
            tls: self.client.security.is_tls(),
        }
    }
}

/// The options of a run, echoed into its result and report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LoadSettings {
    pub coordinator: String,
    pub cluster: String,
    pub accounts: u64,
    pub participants: Vec<String>,
    pub initial_balance: i64,
    pub duration_s: f64,
    pub connections: usize,
    pub outstanding: usize,
    pub rate: Option<u64>,
    /// Open loop only: see [`LoadOptions::send_tick`].
    pub send_tick_us: Option<u64>,
    pub mode: String,
    pub skew: Option<f64>,
    pub cross_share: f64,
    pub read_only_share: f64,
    pub max_amount: i64,
    /// `one-shot` or `interactive`.
    pub workload: String,
    pub hot: Option<u64>,
    pub seed: u64,
    pub sampled_processes: Vec<String>,
    /// Whether the load's connections were mutual TLS (false: insecure plaintext).
    pub tls: bool,
}

/// One second of the run (by the time outcomes arrived; the last one may be partial).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct TimelinePoint {
    /// Seconds since the start.
    pub second: u64,
    /// Length of this second actually covered (1 except for the last point).
    pub span_s: f64,
    /// Committed transactions per second.
    pub tx_per_s: f64,
    pub commits: u64,
    pub aborts: u64,
    /// Latency of the transactions that finished in this second.
    pub p50_us: u64,
    pub p99_us: u64,
    /// Resident memory of each sampled process at the end of this second (None: not readable).
    pub rss_bytes: Vec<Option<u64>>,
}

/// Everything a run measured.
#[derive(Clone, Debug)]
pub struct LoadResult {
    /// Committed transactions (transfers and read-only audits).
    pub committed: u64,
    /// Of `committed`, the read-only audits.
    pub committed_read_only: u64,
    pub aborted: u64,
    /// Aborts by [`twophase_engine::AbortReason::label`].
    pub aborts_by_reason: BTreeMap<String, u64>,
    /// Latency from (intended) send to outcome of every finished transaction, microseconds.
    pub latency_us: Histogram<u64>,
    pub timeline: Vec<TimelinePoint>,
    /// Labels of the processes whose RSS is in the timeline, in order.
    pub rss_processes: Vec<String>,
    /// Per account, the sum of the acknowledged committed transfers' effects.
    pub expected_deltas: Vec<i64>,
    /// From the first send to the last outcome (drain included).
    pub elapsed: Duration,
    /// From the end of the duration to the last outcome.
    pub drain: Duration,
    /// Open loop: sends the schedule asked for that were never made (the cluster fell too
    /// far behind to catch up within 15 s after the duration). Always 0 in closed loop.
    pub unsent_backlog: u64,
    pub settings: LoadSettings,
    /// Interactive runs: what the application's retries did.
    pub interactive: Option<InteractiveTotals>,
    /// Interactive runs: the coordinator's deadlock and lock-wait figures, scraped from
    /// its metrics by the caller once the run is over (`None`: not scraped).
    pub deadlocks: Option<DeadlockFigures>,
}

impl LoadResult {
    /// Committed transactions per second over the whole run.
    pub fn throughput_tps(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 { self.committed as f64 / secs } else { 0.0 }
    }
}

/// One second of one connection.
pub(crate) struct Bucket {
    thread: usize,
    second: u64,
    pub(crate) commits: u64,
    pub(crate) aborts: u64,
    pub(crate) latency: Histogram<u64>,
}

pub(crate) fn second_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 2).expect("valid histogram bounds")
}

pub(crate) fn total_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

pub(crate) enum Message {
    Second(Bucket),
    Done { thread: usize },
}

/// What one connection counted.
pub(crate) struct ThreadTotals {
    pub(crate) committed: u64,
    pub(crate) committed_read_only: u64,
    pub(crate) aborted: u64,
    pub(crate) aborts_by_reason: HashMap<&'static str, u64>,
    pub(crate) latency: Histogram<u64>,
    pub(crate) unsent_backlog: u64,
    pub(crate) last_outcome: Instant,
    pub(crate) interactive: InteractiveTotals,
}

impl ThreadTotals {
    pub(crate) fn new(start: Instant) -> ThreadTotals {
        ThreadTotals {
            committed: 0,
            committed_read_only: 0,
            aborted: 0,
            aborts_by_reason: HashMap::new(),
            latency: total_histogram(),
            unsent_backlog: 0,
            last_outcome: start,
            interactive: InteractiveTotals::default(),
        }
    }
}

/// A load thread's link to the coordinator.
enum Link {
    /// One-shot transactions, many in flight.
    Pipeline(Pipeline),
    /// Sagas, many in flight.
    Sagas(Pipeline<SagaSubmit>),
    /// Interactive transactions, one open at a time.
    Client(Client),
}

pub(crate) struct ThreadCtx {
    pub(crate) index: usize,
    pub(crate) options: Arc<LoadOptions>,
    pub(crate) workload: Workload,
    pub(crate) deltas: Arc<[AtomicI64]>,
    pub(crate) start: Instant,
    pub(crate) stop: Arc<AtomicBool>,
    pub(crate) reports: Sender<Message>,
}

impl ThreadCtx {
    /// Sends the buckets of every second before `now` and starts the current one.
    pub(crate) fn roll_buckets(&self, bucket: &mut Bucket, now: Instant) {
        let second = now.saturating_duration_since(self.start).as_secs();
        while bucket.second < second {
            let next = Bucket {
                thread: self.index,
                second: bucket.second + 1,
                commits: 0,
                aborts: 0,
                latency: second_histogram(),
            };
            let full = std::mem::replace(bucket, next);
            let _ = self.reports.send(Message::Second(full));
        }
    }

    pub(crate) fn first_bucket(&self) -> Bucket {
        Bucket { thread: self.index, second: 0, commits: 0, aborts: 0, latency: second_histogram() }
    }
}

struct Flight {
    intended: Instant,
    tx: Tx,
    /// The client's span, when this transaction is traced.
    trace: Option<Box<dyn TracedTx>>,
}

/// Sends a drawn transaction on a pipeline: its sequence number and, when traced, its span.
type SendTx<R> =
    fn(&mut Pipeline<R>, &Workload, &Tx, Option<&dyn TxTracer>) -> anyhow::Result<(Seq, Option<Box<dyn TracedTx>>)>;

/// Sends `tx` as one `Submit`, with a trace context when the tracer samples it.
fn send(
    pipeline: &mut Pipeline,
    workload: &Workload,
    tx: &Tx,
    tracer: Option<&dyn TxTracer>,
) -> anyhow::Result<(Seq, Option<Box<dyn TracedTx>>)> {
    let ops = workload.ops(tx);
    match tracer.and_then(TxTracer::start) {
        Some(span) => Ok((pipeline.send_traced(ops, span.traceparent())?, Some(span))),
        None => Ok((pipeline.send(ops)?, None)),
    }
}

/// Sends transfer `tx` as a saga (never traced: `validate` refuses a tracer with sagas).
fn send_saga(
    pipeline: &mut Pipeline<SagaSubmit>,
    workload: &Workload,
    tx: &Tx,
    _tracer: Option<&dyn TxTracer>,
) -> anyhow::Result<(Seq, Option<Box<dyn TracedTx>>)> {
    Ok((pipeline.send_saga(workload.saga_steps(tx))?, None))
}

/// Per-second reports queued from the load threads to the collector.
const REPORTS_QUEUE_MAX: usize = 4096;

/// Runs the bank workload for `options.duration`, then stops sending and waits for every
/// outstanding transaction's outcome (at most 30 s), so that the expected balance changes
/// are exact. Fails if any connection fails or the drain cannot finish.
pub fn run_load(options: &LoadOptions) -> anyhow::Result<LoadResult> {
    options.validate()?;
    let options = Arc::new(options.clone());
    let keys = KeyTable::new(options.layout.accounts);
    let deltas: Arc<[AtomicI64]> = (0..options.layout.accounts).map(|_| AtomicI64::new(0)).collect();
    let stop = Arc::new(AtomicBool::new(false));
    // One message per thread per second (plus one at the end): the collector drains it at
    // once, so the bound only matters if it stalls, and then the load threads wait for it.
    let (tx, rx) = crossbeam_channel::bounded(REPORTS_QUEUE_MAX);
    let threads = options.threads();
    let mut workloads = Vec::with_capacity(threads);
    for index in 0..threads {
        let seed = options.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(index as u64);
        workloads.push(Workload::new(&options.layout, keys.clone(), options.spec(), seed)?);
    }
    // Connect every connection before the clock starts: the open loop's first sends are due
    // at once, and connection set-up is the generator's delay, not the cluster's latency.
    let mut links = Vec::with_capacity(threads);
    for _ in 0..threads {
        links.push(connect(&options)?);
    }
    let start = Instant::now();
    if let Some(probe) = &options.probe {
        probe.mark_started(start);
    }
    let mut handles = Vec::with_capacity(threads);
    for (index, (workload, link)) in workloads.into_iter().zip(links).enumerate() {
        let ctx = ThreadCtx {
            index,
            options: options.clone(),
            workload,
            deltas: deltas.clone(),
            start,
            stop: stop.clone(),
            reports: tx.clone(),
        };
        let handle = std::thread::Builder::new()
            .name(format!("bench-conn-{index}"))
            .spawn(move || {
                let reports = ctx.reports.clone();
                let stop = ctx.stop.clone();
                let result = match link {
                    Link::Pipeline(pipeline) => run_connection(ctx, pipeline, send),
                    Link::Sagas(pipeline) => run_connection(ctx, pipeline, send_saga),
                    Link::Client(client) => crate::interactive::run_client(ctx, client),
                };
                if result.is_err() {
                    stop.store(true, Ordering::SeqCst);
                }
                let _ = reports.send(Message::Done { thread: index });
                result
            })
            .context("spawning a load thread")?;
        handles.push(handle);
    }
    drop(tx);
    let collected = collect(&options, start, &rx);
    let mut totals = Vec::with_capacity(handles.len());
    let mut first_error: Option<anyhow::Error> = None;
    for (index, handle) in handles.into_iter().enumerate() {
        match handle.join() {
            Ok(Ok(t)) => totals.push(t),
            Ok(Err(err)) => {
                if first_error.is_none() && !err.is::<Stopped>() {
                    first_error = Some(err.context(format!("connection {index}")));
                }
            }
            Err(_) => {
                first_error.get_or_insert_with(|| anyhow!("load thread {index} panicked"));
            }
        }
    }
    if let Some(err) = first_error {
        return Err(err);
    }
    let (mut timeline, rss) = collected;
    let last_outcome = totals.iter().map(|t| t.last_outcome).max().unwrap_or(start);
    let elapsed = last_outcome.saturating_duration_since(start);
    let mut result = LoadResult {
        committed: 0,
        committed_read_only: 0,
        aborted: 0,
        aborts_by_reason: BTreeMap::new(),
        latency_us: total_histogram(),
        timeline: Vec::new(),
        rss_processes: options.sample_pids.iter().map(|(label, _)| label.clone()).collect(),
        expected_deltas: deltas.iter().map(|d| d.load(Ordering::SeqCst)).collect(),
        elapsed,
        drain: elapsed.saturating_sub(options.duration),
        unsent_backlog: 0,
        settings: options.settings(),
        interactive: (options.workload == WorkloadKind::Interactive).then(InteractiveTotals::default),
        deadlocks: None,
    };
    for t in totals {
        result.committed += t.committed;
        result.committed_read_only += t.committed_read_only;
        result.aborted += t.aborted;
        result.unsent_backlog += t.unsent_backlog;
        for (label, count) in t.aborts_by_reason {
            *result.aborts_by_reason.entry(label.to_string()).or_default() += count;
        }
        result.latency_us.add(&t.latency).expect("same histogram bounds");
        if let Some(interactive) = &mut result.interactive {
            interactive.add(&t.interactive);
        }
    }
    let elapsed_s = elapsed.as_secs_f64();
    for point in &mut timeline {
        point.span_s = (elapsed_s - point.second as f64).clamp(0.001, 1.0);
        point.tx_per_s = point.commits as f64 / point.span_s;
        point.rss_bytes = rss.get(&point.second).cloned().unwrap_or_else(|| vec![None; options.sample_pids.len()]);
    }
    result.timeline = timeline;
    Ok(result)
}

/// A connection stopped because another one failed (not an error of its own).
#[derive(Debug)]
pub(crate) struct Stopped;

impl std::fmt::Display for Stopped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stopped because another connection failed")
    }
}

impl std::error::Error for Stopped {}

impl Stopped {
    pub(crate) fn error() -> anyhow::Error {
        Stopped.into()
    }
}

/// A second being merged from every connection's reports.
struct Pending {
    reports: usize,
    commits: u64,
    aborts: u64,
    latency: Histogram<u64>,
}

/// The main thread's part: merges the connections' per-second reports into the timeline
/// (a second is final once every running connection reported it), samples RSS each
/// second, drives the progress line. Returns the timeline (RSS filled in by the caller)
/// and the RSS samples by second.
#[allow(clippy::type_complexity)]
fn collect(
    options: &LoadOptions,
    start: Instant,
    rx: &Receiver<Message>,
) -> (Vec<TimelinePoint>, BTreeMap<u64, Vec<Option<u64>>>) {
    let threads = options.threads();
    let progress = options.progress.then(|| {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(indicatif::ProgressStyle::with_template("{spinner} {msg}").expect("valid template"));
        bar.set_message("connecting…");
        bar
    });
    let mut done = vec![false; threads];
    let mut reported: Vec<Option<u64>> = vec![None; threads];
    let mut pending: BTreeMap<u64, Pending> = BTreeMap::new();
    let mut timeline: Vec<TimelinePoint> = Vec::new();
    let mut rss: BTreeMap<u64, Vec<Option<u64>>> = BTreeMap::new();
    let mut next_sample = 1u64;
    let (mut committed, mut aborted) = (0u64, 0u64);
    loop {
        let tick = start + Duration::from_secs(next_sample);
        let message = rx.recv_timeout(tick.saturating_duration_since(Instant::now()));
        if Instant::now() >= tick {
            if !options.sample_pids.is_empty() {
                rss.insert(next_sample - 1, options.sample_pids.iter().map(|(_, pid)| read_rss(*pid)).collect());
            }
            next_sample = start.elapsed().as_secs() + 1;
        }
        match message {
            Ok(Message::Second(bucket)) => {
                reported[bucket.thread] = Some(bucket.second);
                let entry = pending.entry(bucket.second).or_insert_with(|| Pending {
                    reports: 0,
                    commits: 0,
                    aborts: 0,
                    latency: second_histogram(),
                });
                entry.reports += 1;
                entry.commits += bucket.commits;
                entry.aborts += bucket.aborts;
                entry.latency.add(&bucket.latency).expect("same histogram bounds");
            }
            Ok(Message::Done { thread }) => done[thread] = true,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => break,
        }
        // Finalise every second that each connection has reported (or will never report).
        while let Some((&second, _)) = pending.first_key_value() {
            let complete = (0..threads).all(|t| done[t] || reported[t].is_some_and(|r| r >= second));
            if !complete {
                break;
            }
            let p = pending.pop_first().expect("present").1;
            committed += p.commits;
            aborted += p.aborts;
            let point = TimelinePoint {
                second,
                span_s: 1.0,
                tx_per_s: p.commits as f64,
                commits: p.commits,
                aborts: p.aborts,
                p50_us: p.latency.value_at_quantile(0.5),
                p99_us: p.latency.value_at_quantile(0.99),
                rss_bytes: Vec::new(),
            };
            if let Some(bar) = &progress {
                bar.set_message(format!(
                    "{:>4}s  {:>9} tx/s  committed {:>10}  aborted {:>8}  p50 {}  p99 {}",
                    second + 1,
                    point.commits,
                    committed,
                    aborted,
                    format_us(point.p50_us),
                    format_us(point.p99_us),
                ));
                bar.tick();
            }
            // Seconds in which nothing finished anywhere are absent from `pending`.
            for missing in timeline.last().map_or(0, |last| last.second + 1)..second {
                timeline.push(TimelinePoint {
                    second: missing,
                    span_s: 1.0,
                    tx_per_s: 0.0,
                    commits: 0,
                    aborts: 0,
                    p50_us: 0,
                    p99_us: 0,
                    rss_bytes: Vec::new(),
                });
            }
            timeline.push(point);
        }
    }
    if let Some(bar) = progress {
        bar.finish();
    }
    (timeline, rss)
}

/// A latency in human units.
pub fn format_us(us: u64) -> String {
    if us >= 1_000_000 {
        format!("{:.2}s", us as f64 / 1e6)
    } else if us >= 1_000 {
        format!("{:.2}ms", us as f64 / 1e3)
    } else {
        format!("{us}µs")
    }
}

/// Resident memory of a process from `/proc/PID/status`, in bytes.
pub fn read_rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_vm_rss(&status)
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let mut fields = line["VmRSS:".len()..].split_whitespace();
    let value: u64 = fields.next()?.parse().ok()?;
    let unit = match fields.next() {
        Some("kB") | Some("KB") | Some("kb") => 1024,
        Some("mB") | Some("MB") => 1024 * 1024,
        None | Some("B") => 1,
        Some(_) => return None,
    };
    Some(value * unit)
}

/// One connection to the coordinator whose directory matches the bank's layout.
fn connect(options: &LoadOptions) -> anyhow::Result<Link> {
    let addrs = &options.coordinators[..];
    let context = || format!("connecting to the coordinator at {}", options.coordinator_list());
    let link = match options.workload {
        WorkloadKind::OneShot => {
            Link::Pipeline(Pipeline::connect(addrs, options.client.clone()).with_context(context)?)
        }
        WorkloadKind::Interactive => {
            Link::Client(Client::connect(addrs, options.client.clone()).with_context(context)?)
        }
        WorkloadKind::Saga => {
            Link::Sagas(Pipeline::connect_sagas(addrs, options.client.clone()).with_context(context)?)
        }
    };
    let directory = match &link {
        Link::Pipeline(pipeline) => pipeline.directory(),
        Link::Sagas(pipeline) => pipeline.directory(),
        Link::Client(client) => client.directory(),
    };
    check_directory(directory.participants(), &options.layout)?;
    Ok(link)
}

fn run_connection<R: PipelinedRequest>(
    mut ctx: ThreadCtx,
    mut pipeline: Pipeline<R>,
    send: SendTx<R>,
) -> anyhow::Result<ThreadTotals> {
    let options = ctx.options.clone();
    let tracer = options.tracer.as_deref();
    let cap = options.outstanding;
    let end = ctx.start + options.duration;
    let drain_deadline = end + DRAIN_LIMIT;
    let backlog_deadline = end + BACKLOG_LIMIT;
    // Open loop: this connection's share of the schedule, offset so connections interleave.
    let schedule = options.rate.map(|rate| {
        let interval = Duration::from_secs_f64(options.connections as f64 / rate as f64);
        let offset = interval.mul_f64(ctx.index as f64 / options.connections as f64);
        (interval, ctx.start + offset)
    });
    let mut next_intended = schedule.map(|(_, first)| first);
    let mut flights: HashMap<Seq, Flight> = HashMap::with_capacity(cap * 2);
    let mut totals = ThreadTotals::new(ctx.start);
    let mut bucket = ctx.first_bucket();
    loop {
        if ctx.stop.load(Ordering::Relaxed) {
            return Err(Stopped.into());
        }
        let now = Instant::now();
        // Send.
        match (&schedule, &mut next_intended) {
            (None, _) => {
                if now < end {
                    while flights.len() < cap {
                        let tx = ctx.workload.next_tx();
                        let (seq, trace) = send(&mut pipeline, &ctx.workload, &tx, tracer)?;
                        flights.insert(seq, Flight { intended: now, tx, trace });
                    }
                }
            }
            (Some((interval, _)), Some(next)) => {
                while *next < end && *next <= now && flights.len() < cap && now < backlog_deadline {
                    let tx = ctx.workload.next_tx();
                    let (seq, trace) = send(&mut pipeline, &ctx.workload, &tx, tracer)?;
                    flights.insert(seq, Flight { intended: *next, tx, trace });
                    *next += *interval;
                }
            }
            (Some(_), None) => unreachable!("an open loop has a schedule"),
        }
        pipeline.flush()?;
        let schedule_done = match (&schedule, next_intended) {
            (Some((interval, _)), Some(next)) => {
                if next < end && now >= backlog_deadline {
                    // Count the sends that will never be made, then stop the schedule.
                    let left = end.saturating_duration_since(next).as_secs_f64() / interval.as_secs_f64();
                    totals.unsent_backlog = left.ceil() as u64;
                    next_intended = Some(end);
                }
                next_intended.is_some_and(|next| next >= end)
            }
            _ => now >= end,
        };
        if schedule_done && flights.is_empty() {
            break;
        }
        if now >= drain_deadline {
            bail!(
                "{} transactions still had no outcome {:?} after the end of the run; \
                 the expected balances are unknown, so the run is void",
                flights.len(),
                DRAIN_LIMIT
            );
        }
        // Wait for outcomes, or for the next scheduled send.
        let mut wait = POLL_SLICE;
        if let Some(next) = next_intended
            && next < end
            && flights.len() < cap
        {
            let wake = next_send_tick(ctx.start, next, options.send_tick);
            wait = wait.min(wake.saturating_duration_since(now));
        }
        let outcomes = if flights.is_empty() {
            if !wait.is_zero() {
                std::thread::sleep(wait);
            }
            Vec::new()
        } else {
            pipeline.poll(wait)?
        };
        let now = Instant::now();
        ctx.roll_buckets(&mut bucket, now);
        if !outcomes.is_empty() {
            totals.last_outcome = now;
        }
        for (seq, outcome) in outcomes {
            let Some(flight) = flights.remove(&seq) else { continue };
            let micros = now.saturating_duration_since(flight.intended).as_micros().max(1);
            let micros = u64::try_from(micros).unwrap_or(u64::MAX).min(MAX_LATENCY_US);
            totals.latency.saturating_record(micros);
            bucket.latency.saturating_record(micros);
            if let Some(trace) = flight.trace {
                trace.finish(&outcome);
            }
            match outcome {
                // A transfer has no reads to lose; an audit that lost its reads still committed.
                Outcome::Committed { .. } | Outcome::CommittedReadsUnavailable => {
                    totals.committed += 1;
                    bucket.commits += 1;
                    if let Some(probe) = &options.probe {
                        probe.on_commit(now, flight.intended, &flight.tx, &options.layout);
                    }
                    match flight.tx {
                        Tx::Transfer { from, to, amount } => {
                            ctx.deltas[from as usize].fetch_sub(amount, Ordering::Relaxed);
                            ctx.deltas[to as usize].fetch_add(amount, Ordering::Relaxed);
                        }
                        Tx::Audit { .. } => totals.committed_read_only += 1,
                    }
                }
                Outcome::Aborted { reason } => {
                    totals.aborted += 1;
                    bucket.aborts += 1;
                    *totals.aborts_by_reason.entry(reason.label()).or_default() += 1;
                }
            }
        }
    }
    let _ = ctx.reports.send(Message::Second(bucket));
    Ok(totals)
}

/// When a connection whose next send is intended at `next` wakes to send: the first
/// multiple of `tick` after `start` that is not before `next` (`next` itself when `tick`
/// is zero).
fn next_send_tick(start: Instant, next: Instant, tick: Duration) -> Instant {
    let tick_ns = tick.as_nanos();
    if tick_ns == 0 {
        return next;
    }
    let ticks = next.saturating_duration_since(start).as_nanos().div_ceil(tick_ns);
    let wake = start + Duration::from_nanos(u64::try_from(ticks * tick_ns).unwrap_or(u64::MAX));
    debug_assert!(wake >= next && wake < next + tick);
    wake
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_loop_sends_wake_on_the_next_tick() {
        let start = Instant::now();
        let ms = Duration::from_millis;
        let us = Duration::from_micros;
        let tick = ms(1);
        assert_eq!(next_send_tick(start, start, tick), start, "on a tick: that tick");
        assert_eq!(next_send_tick(start, start + us(1), tick), start + ms(1));
        assert_eq!(next_send_tick(start, start + us(999), tick), start + ms(1));
        assert_eq!(next_send_tick(start, start + ms(1), tick), start + ms(1));
        assert_eq!(next_send_tick(start, start + us(1001), tick), start + ms(2));
        assert_eq!(next_send_tick(start, start + us(250), Duration::ZERO), start + us(250), "no tick");
    }

    #[test]
    fn vm_rss_is_parsed_in_bytes() {
        let status = "Name:\tcat\nVmPeak:\t  9000 kB\nVmRSS:\t    1234 kB\nThreads:\t1\n";
        assert_eq!(parse_vm_rss(status), Some(1234 * 1024));
        assert_eq!(parse_vm_rss("Name:\tx\n"), None);
        assert!(read_rss(std::process::id()).is_some_and(|bytes| bytes > 0));
    }

    #[test]
    fn latencies_print_in_human_units() {
        assert_eq!(format_us(850), "850µs");
        assert_eq!(format_us(1500), "1.50ms");
        assert_eq!(format_us(2_500_000), "2.50s");
    }
}
