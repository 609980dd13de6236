//! `twophase demo` and `twophase bench`: the bank workload of `twophase-bench` against a
//! local cluster this process starts (demo) or against a running one (bench), followed by
//! the audit and the report. Exit status 0 only when the audit passed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Args;
use twophase_bench::{Audit, BankLayout, LoadOptions, LoadResult, Report, audit, audit_with_baseline};
use twophase_net::admin;

use crate::cluster::{ClusterOptions, LocalCluster};
use crate::settle;

/// Participant states as the audit reads them: name, every key and value.
pub(crate) type States = Vec<(String, Vec<(Bytes, Bytes)>)>;

/// The workload flags `demo` and `bench` share.
#[derive(Args, Clone, Debug)]
pub struct WorkloadArgs {
    /// How long to send transactions (e.g. 10s, 2m).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) duration: Duration,
    /// Number of accounts, spread round-robin over the participants.
    #[arg(long, default_value_t = 100_000)]
    pub(crate) accounts: u64,
    /// Starting balance of every account.
    #[arg(long, default_value_t = 1_000)]
    pub(crate) initial_balance: i64,
    /// Client connections, one load thread each.
    #[arg(long, default_value_t = 4)]
    connections: usize,
    /// Transactions in flight per connection (closed loop), or the cap on them (open loop).
    #[arg(long, default_value_t = 256)]
    outstanding: usize,
    /// Open loop at this many transactions per second in total (default: closed loop).
    #[arg(long)]
    rate: Option<u64>,
    /// Open loop: send what is due on ticks this far apart (0: wake for every
    /// transaction); latency still counts from each transaction's intended send time.
    #[arg(long, default_value_t = twophase_bench::DEFAULT_SEND_TICK.as_micros() as u64)]
    send_tick_us: u64,
    /// Zipfian exponent of the account choice (default: uniform).
    #[arg(long)]
    skew: Option<f64>,
    /// Share of transfers between accounts on different participants.
    #[arg(long, default_value_t = 1.0)]
    cross_share: f64,
    /// Share of read-only audit transactions.
    #[arg(long, default_value_t = 0.0)]
    read_only_share: f64,
    /// Transfer amounts are drawn uniformly from 1..=MAX_AMOUNT.
    #[arg(long, default_value_t = 10)]
    max_amount: i64,
    /// Seed of the workload's random choices.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Directory to write report.json and report.html into.
    #[arg(long, default_value = "twophase-report")]
    pub(crate) report: PathBuf,
    /// No live progress line.
    #[arg(long)]
    quiet: bool,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    #[command(flatten)]
    workload: WorkloadArgs,
    /// Number of participants, named p1..pN.
    #[arg(long, default_value_t = 3)]
    participants: u16,
    /// Keep the cluster's data here instead of in a temporary directory that is removed.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Do not fsync the logs. UNSAFE, labelled as such in the report: only to measure what
    /// group commit hides.
    #[arg(long)]
    unsafe_no_fsync: bool,
    /// Every node's `--group-interval-us`: while a log is busy, at most one group commit
    /// per this many microseconds [default: the nodes' own, 1500].
    #[arg(long)]
    group_interval_us: Option<u64>,
    /// Do not serve metrics (by default every node serves them on a free loopback port).
    #[arg(long)]
    no_metrics: bool,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    workload: WorkloadArgs,
    /// The coordinator of the running cluster.
    #[arg(long)]
    coordinator: SocketAddr,
    /// Its cluster name.
    #[arg(long, default_value = "local")]
    cluster: String,
}

/// The cluster a run talks to, as the coordinator describes it.
pub(crate) struct Target {
    pub(crate) coordinator: SocketAddr,
    pub(crate) cluster: String,
    pub(crate) layout: BankLayout,
    /// Participant name and the address its dump is read from.
    pub(crate) participants: Vec<(String, SocketAddr)>,
}

impl Target {
    /// Asks the coordinator for its participants and lays the bank out over all of them.
    pub(crate) fn discover(coordinator: SocketAddr, cluster: &str, args: &WorkloadArgs) -> anyhow::Result<Target> {
        let topology = admin::topology(coordinator, cluster)
            .with_context(|| format!("asking the coordinator at {coordinator} for its participants"))?;
        if topology.is_empty() {
            bail!("the coordinator at {coordinator} has no participants");
        }
        let layout = BankLayout {
            accounts: args.accounts,
            participants: topology.iter().map(|(id, name, _)| (*id, name.clone())).collect(),
            initial_balance: args.initial_balance,
        };
        layout.validate()?;
        let participants = topology.into_iter().map(|(_, name, addr)| (name, addr)).collect();
        Ok(Target { coordinator, cluster: cluster.to_string(), layout, participants })
    }

    pub(crate) fn load_options(&self, args: &WorkloadArgs, sample_pids: Vec<(String, u32)>) -> LoadOptions {
        let mut options = LoadOptions::new(self.coordinator, self.cluster.clone(), self.layout.clone());
        options.duration = args.duration;
        options.connections = args.connections;
        options.outstanding = args.outstanding;
        options.rate = args.rate;
        options.send_tick = Duration::from_micros(args.send_tick_us);
        options.skew = args.skew;
        options.cross_share = args.cross_share;
        options.read_only_share = args.read_only_share;
        options.max_amount = args.max_amount;
        options.seed = args.seed;
        options.progress = !args.quiet;
        options.sample_pids = sample_pids;
        options
    }
}

/// `twophase demo`.
pub fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    let temp;
    let data_dir = match &args.data_dir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::Builder::new()
                .prefix("twophase-demo-")
                .tempdir()
                .context("creating a temporary directory")?;
            temp.path().to_path_buf()
        }
    };
    let cluster_options = ClusterOptions {
        participants: args.participants,
        data_dir: data_dir.clone(),
        listen: "127.0.0.1:0".parse().expect("address"),
        cluster: "demo".into(),
        unsafe_no_fsync: args.unsafe_no_fsync,
        group_interval_us: args.group_interval_us,
        metrics: !args.no_metrics,
        log_dir: Some(logs_dir(&args.workload.report)),
    };
    eprintln!("starting 1 coordinator and {} participants in {}", args.participants, data_dir.display());
    let mut cluster = LocalCluster::start(&cluster_options)?;
    announce_metrics(&cluster);
    let target = Target::discover(cluster.coordinator, "demo", &args.workload)?;
    eprintln!("creating {} accounts of {}", args.workload.accounts, args.workload.initial_balance);
    twophase_bench::setup_accounts(target.coordinator, &target.cluster, &target.layout)?;
    let mut pids = cluster.pids();
    pids.push(("loadgen".into(), std::process::id()));
    let result = twophase_bench::run_load(&target.load_options(&args.workload, pids))?;
    if let Some(exit) = cluster.exited() {
        bail!("{exit} during the run; the audit cannot be trusted");
    }
    let (states, fsync) = settled_states(&target)?;
    let verdict = audit(&target.layout, &result, &states);
    let description = format!(
        "demo: local cluster, 1 coordinator + {} participants, {} accounts",
        args.participants, args.workload.accounts
    );
    let passed = finish(&result, verdict, fsync, description, &args.workload.report)?;
    cluster.stop();
    print_logs_line(&args.workload.report);
    Ok(exit_code(passed))
}

/// Where a run that starts its own cluster (demo, chaos) puts the nodes' log files: next
/// to its report, so they outlive a temporary data directory.
pub(crate) fn logs_dir(report: &Path) -> PathBuf {
    report.join("logs")
}

/// Tells where each node serves metrics and how to watch the cluster live.
pub(crate) fn announce_metrics(cluster: &LocalCluster) {
    for (name, addr) in cluster.metrics() {
        eprintln!("metrics of {name} on http://{addr}/metrics");
    }
    if let Some(top) = cluster.top_command() {
        eprintln!("watch it live: {top}");
    }
}

pub(crate) fn print_logs_line(report: &Path) {
    println!("logs        {}/ (one NAME.log per node)", logs_dir(report).display());
}

/// `twophase bench`: the same workload against a running cluster. Accounts that do not
/// exist yet are created first (with the initial balance); the audit compares against the balances read right before
/// the load, so nothing else may write to the accounts during the run.
pub fn bench(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let target = Target::discover(args.coordinator, &args.cluster, &args.workload)?;
    let (mut before, _) = settled_states(&target)?;
    let present = present_accounts(&target.layout, &before);
    let missing = present.iter().filter(|held| !**held).count();
    if missing > 0 {
        eprintln!("creating {missing} accounts of {}", args.workload.initial_balance);
        let wanted = |account: u64| !present[account as usize];
        twophase_bench::setup_accounts_where(target.coordinator, &target.cluster, &target.layout, wanted)?;
        before = settled_states(&target)?.0;
    }
    let result = twophase_bench::run_load(&target.load_options(&args.workload, Vec::new()))?;
    let (after, fsync) = settled_states(&target)?;
    let verdict = audit_with_baseline(&target.layout, &result, &before, &after);
    let description = format!(
        "bench: coordinator {} (cluster '{}'), {} participants, {} accounts",
        args.coordinator,
        args.cluster,
        target.participants.len(),
        args.workload.accounts
    );
    let passed = finish(&result, verdict, fsync, description, &args.workload.report)?;
    Ok(exit_code(passed))
}

/// The participants' states once every acknowledged commit has reached them (the
/// coordinator acknowledges once its Staged record and every participant's Prepared record
/// are durable, before the participants apply it); a run whose transactions stay prepared
/// fails.
fn settled_states(target: &Target) -> anyhow::Result<(States, bool)> {
    let settled = settle::wait(target)?;
    if !settled.left.is_empty() {
        bail!("still unresolved {:?} after the load: {}", settle::SETTLE_LIMIT, settled.left.join("; "));
    }
    Ok((settled.states, settled.fsync))
}

/// Which of the layout's accounts some participant already holds.
fn present_accounts(layout: &BankLayout, states: &States) -> Vec<bool> {
    let mut present = vec![false; layout.accounts as usize];
    for (_, entries) in states {
        for (key, _) in entries {
            if let Some(account) = BankLayout::parse_key(key).filter(|&n| n < layout.accounts) {
                present[account as usize] = true;
            }
        }
    }
    present
}

/// Prints the report, writes it, and says whether the audit passed.
fn finish(result: &LoadResult, verdict: Audit, fsync: bool, description: String, dir: &Path) -> anyhow::Result<bool> {
    let passed = verdict.passed;
    let report = Report::new(result, Some(&verdict), fsync, description);
    report.print_summary();
    report.write(dir)?;
    println!("report      {}/report.json, {}/report.html", dir.display(), dir.display());
    Ok(passed)
}

pub(crate) fn exit_code(audit_passed: bool) -> ExitCode {
    if audit_passed { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}
