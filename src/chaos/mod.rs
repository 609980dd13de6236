//! `twophase chaos`: the demo's cluster and bank workload, with a random process of the
//! cluster killed (SIGKILL) and restarted at every interval; then the demo's audit.
//!
//! Owns the run's order: start the cluster, create the accounts, start the load (on its own
//! thread, with a client that reconnects and resends under the same `(client, seq)` for as
//! long as a restart can take), run the kill loop ([`monkey`]) while the load runs, let the
//! load run on without kills for `--settle`, wait until no participant holds a prepared
//! transaction ([`settle`]), audit, report ([`summary`]).
//!
//! Invariants: the exit status is 0 only when the audit passed and there was no violation
//! (every killed process restarted on its address, every kill was recovered from, no process
//! exited on its own, nothing stayed prepared). Must not: hide a server failure by retrying
//! it away — a restart is attempted once, a recovery waited for a bounded time.

mod monkey;
mod summary;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, ensure};
use clap::Args;
use twophase_bench::{LoadProbe, LoadResult, Report, audit};
use twophase_net::ClientOptions;

use crate::cluster::{ClusterOptions, LocalCluster};
use crate::loadgen::{
    Target, WorkloadArgs, announce_leader, announce_metrics, coordinators_phrase, exit_code, logs_dir, print_logs_line,
};
use crate::settle;
use monkey::{KillLog, Schedule};

/// How long a load connection keeps reconnecting to a coordinator that is down: longer than
/// any restart may take (a restart that takes longer fails the run anyway).
const RECONNECT_FOR: Duration = Duration::from_secs(60);
/// Pause between reconnection attempts (the client's `busy_backoff`).
const RECONNECT_PAUSE: Duration = Duration::from_millis(10);
/// A load connection without any reply for this long is presumed dead and replaced.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Args, Debug)]
#[command(mut_arg("duration", |arg| arg
    .default_value("60s")
    .help("How long to kill processes (e.g. 60s, 10m); the load then runs --settle longer without kills")))]
#[command(mut_arg("report", |arg| arg.default_value("twophase-chaos-report")))]
#[command(mut_arg("quiet", |arg| arg.help("No effect: chaos prints one line per kill instead of a live progress line")))]
#[command(mut_arg("seed", |arg| arg.help("Seed of the workload's random choices and of the choice of victims")))]
pub struct ChaosArgs {
    #[command(flatten)]
    workload: WorkloadArgs,
    /// Participants, named p1..pN: a count of built-in-store participants, or a comma list
    /// of kinds (`kv`, `pg`, `mariadb`, e.g. `pg,mariadb,kv`); database participants are
    /// killed and restarted like the others (their servers are not) and audited with SQL.
    #[arg(long, default_value = "3", value_parser = crate::dbdemo::parse_participants)]
    participants: crate::dbdemo::ParticipantList,
    /// Number of coordinators: above 1 (odd, at most 7) a Raft group whose leaders and
    /// followers are killed like every other process; the load follows the leader.
    #[arg(long, default_value_t = 1)]
    coordinators: u16,
    /// Kill a process every this long (the first one this long after the load starts).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    kill_every: Duration,
    /// After the last kill window: this much more load without kills ("after" throughput).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// Keep the cluster's data here instead of in a temporary directory that is removed.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Run the cluster and the load without TLS (otherwise a CA and every certificate are
    /// made in the data directory); the report says so.
    #[arg(long)]
    insecure_plaintext: bool,
    /// Do not serve metrics (by default every node serves them on a free loopback port).
    #[arg(long)]
    no_metrics: bool,
    /// Trace a share of the load's transactions: the load generator roots their traces and
    /// the nodes, run with the same flags, continue them. The coordinator also roots that
    /// share of the requests that come without a context, so about twice RATE is traced.
    #[command(flatten)]
    trace: crate::trace::TraceArgs,
}

type LoadThread = JoinHandle<anyhow::Result<LoadResult>>;

/// The client the load connections use: one that outlasts a coordinator restart.
fn client_options(target: &Target) -> ClientOptions {
    ClientOptions {
        cluster: target.cluster.clone(),
        security: target.client.clone(),
        client_id: None,
        identity: None,
        request_timeout: REQUEST_TIMEOUT,
        busy_backoff: RECONNECT_PAUSE,
        max_attempts: (RECONNECT_FOR.as_millis() / RECONNECT_PAUSE.as_millis()) as u32,
        failover_timeout: RECONNECT_FOR,
    }
}

/// `twophase chaos`.
pub fn run(args: ChaosArgs) -> anyhow::Result<ExitCode> {
    ensure!(!args.kill_every.is_zero(), "--kill-every must be positive");
    args.workload.check()?;
    // Declared before the cluster so that the cluster stops before its directory goes.
    let (_temp, data_dir) = data_dir(&args)?;
    let databases = crate::dbdemo::Databases::start(&args.participants)?;
    let cluster_options = ClusterOptions {
        participants: args.participants.count(),
        coordinators: args.coordinators,
        data_dir: data_dir.clone(),
        listen: "127.0.0.1:0".parse().expect("address"),
        cluster: "chaos".into(),
        unsafe_no_fsync: false,
        group_interval_us: None,
        plaintext: args.insecure_plaintext,
        trace: args.trace.clone(),
        metrics: !args.no_metrics,
        log_dir: Some(logs_dir(&args.workload.report)),
        database_participants: databases.participant_flags(),
        protocol: crate::cluster::Protocol::TwoPc,
    };
    crate::cluster::check_coordinators(args.coordinators)?;
    let coordinators = coordinators_phrase(args.coordinators);
    let participants = crate::loadgen::participants_phrase(&args.participants);
    eprintln!("starting {coordinators} and {participants} participants in {}", data_dir.display());
    let mut cluster = LocalCluster::start(&cluster_options)?;
    announce_metrics(&cluster);
    announce_leader(&cluster);
    let identities = (cluster.client.load("the chaos run's load")?, cluster.admin.load("the chaos run's audit")?);
    // A group's leader changes with the kills: the load's connections know every member and
    // follow the leader themselves (NotLeader, or a member that died), resending what is in
    // flight under the same (client, seq).
    let target = Target::discover(&cluster.coordinator_addrs(), "chaos", identities, &args.workload)?;
    eprintln!("creating {} accounts of {}", args.workload.accounts, args.workload.initial_balance);
    databases.setup_accounts(&target)?;

    let schedule = Schedule { every: args.kill_every, window: args.workload.duration, seed: args.workload.seed };
    let (load, probe, sends_for) = start_load(&args, &target)?;
    let Some(start) = wait_started(&probe, &load) else {
        return Err(join(load).err().unwrap_or_else(|| anyhow!("the load ended before it started")));
    };
    eprintln!(
        "load started; a SIGKILL every {:?} for {:?}, then {:?} without",
        args.kill_every, args.workload.duration, args.settle
    );
    let log = monkey::run(&mut cluster, &target.layout, &probe, start, &schedule, || !load.is_finished());
    let leader_after_kills = monkey::leader(&cluster);
    wait_until(start + sends_for, &load);
    let sends_end = (Instant::now(), probe.committed());
    let result = join(load).map_err(|err| err.context(kill_summary(&log)))?;

    let mut violations = Vec::new();
    for (_, exited) in cluster.take_exited() {
        violations.push(format!("{exited} without being killed"));
    }
    restart_leftovers(&mut cluster, &mut violations);
    let mut settled = settle::wait(&target.without(&databases.names()))?;
    let sql_audits = databases.audit(&target.layout, &result, &mut settled.balances)?;
    if !settled.left.is_empty() {
        let left = settled.left.join("; ");
        violations.push(format!("still unresolved {:?} after the load: {left}", settle::SETTLE_LIMIT));
    }
    let verdict = audit(&target.layout, &result, &settled.balances);
    let measured = summary::Measured { start, sends_end, settled_after: settled.after, violations };
    let chaos = summary::build(&schedule, &log, measured);
    let mut passed = verdict.passed && chaos.passed();
    write_report(&args, &result, verdict, settled.fsync, chaos)?;
    for line in summary::by_role(&log, leader_after_kills) {
        println!("{line}");
    }
    for sql_audit in &sql_audits {
        println!("{}", sql_audit.summary());
        passed &= sql_audit.passed;
    }
    cluster.stop();
    drop(databases);
    print_logs_line(&args.workload.report);
    Ok(exit_code(passed))
}

/// `--data-dir`, or a temporary directory (removed when the returned guard drops).
fn data_dir(args: &ChaosArgs) -> anyhow::Result<(Option<tempfile::TempDir>, PathBuf)> {
    if let Some(dir) = &args.data_dir {
        return Ok((None, dir.clone()));
    }
    let temp =
        tempfile::Builder::new().prefix("twophase-chaos-").tempdir().context("creating a temporary directory")?;
    let path = temp.path().to_path_buf();
    Ok((Some(temp), path))
}

/// Starts the load on its own thread; returns it, its probe, and how long it sends.
fn start_load(args: &ChaosArgs, target: &Target) -> anyhow::Result<(LoadThread, Arc<LoadProbe>, Duration)> {
    let probe = Arc::new(LoadProbe::new());
    // Node pids change at every restart, so only this process's memory is sampled.
    let mut options = target.load_options(&args.workload, vec![("loadgen".into(), std::process::id())]);
    options.duration = args.workload.duration + args.settle;
    options.client = client_options(target);
    options.probe = Some(probe.clone());
    options.tracer = crate::loadgen::load_tracer(&args.trace, "chaos")?;
    // The kill loop's one line per kill is the progress display: a live progress line
    // redrawn underneath would garble it.
    options.progress = false;
    let sends_for = options.duration;
    let load = std::thread::Builder::new()
        .name("chaos-load".into())
        .spawn(move || twophase_bench::run_load(&options))
        .context("starting the load thread")?;
    Ok((load, probe, sends_for))
}

/// The load's start, once it has started; `None` if it ended first.
fn wait_started(probe: &LoadProbe, load: &LoadThread) -> Option<Instant> {
    loop {
        if let Some(start) = probe.started() {
            return Some(start);
        }
        if load.is_finished() {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn wait_until(due: Instant, load: &LoadThread) {
    while Instant::now() < due && !load.is_finished() {
        std::thread::sleep(due.saturating_duration_since(Instant::now()).min(Duration::from_millis(50)));
    }
}

fn join(load: LoadThread) -> anyhow::Result<LoadResult> {
    load.join().map_err(|_| anyhow!("the load thread panicked"))?
}

/// A process whose restart failed, or that exited on its own, is down: start it once more so
/// that the audit can read it (what put it down stays a violation either way).
fn restart_leftovers(cluster: &mut LocalCluster, violations: &mut Vec<String>) {
    for name in cluster.down() {
        if let Err(err) = cluster.restart(&name) {
            violations.push(format!("{name} could not be restarted after the run either: {err:#}"));
        }
    }
}

/// The kills so far, for an error message when the load failed.
fn kill_summary(log: &KillLog) -> String {
    let kills: Vec<String> = log.kills.iter().map(|kill| kill.process.clone()).collect();
    format!("the load failed after {} kills ({})", kills.len(), kills.join(", "))
}

fn write_report(
    args: &ChaosArgs,
    result: &LoadResult,
    verdict: twophase_bench::Audit,
    fsync: bool,
    chaos: twophase_bench::ChaosReport,
) -> anyhow::Result<()> {
    let description = format!(
        "chaos: local cluster, {} + {} participants, {} accounts, a SIGKILL every {:?}",
        coordinators_phrase(args.coordinators),
        crate::loadgen::participants_phrase(&args.participants),
        args.workload.accounts,
        args.kill_every
    );
    let report = Report::new(result, Some(&verdict), fsync, description).with_chaos(chaos);
    report.print_summary();
    let dir = &args.workload.report;
    report.write(dir)?;
    println!("report      {}/report.json, {}/report.html", dir.display(), dir.display());
    Ok(())
}
