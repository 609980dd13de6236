//! `twophase demo` and `twophase bench`: the bank workload of `twophase-bench` against a
//! local cluster this process starts (demo) or against a running one (bench), followed by
//! the audit and the report. Exit status 0 only when the audit passed.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use clap::Args;
use twophase_bench::{Audit, Balances, BankLayout, LoadOptions, LoadResult, Report, audit, audit_with_baseline};
use twophase_net::{ClientOptions, Security, admin};

use crate::client_config::{ClientFile, resolve_coordinators};
use crate::cluster::{ClusterOptions, LocalCluster};
use crate::dbdemo::{Databases, ParticipantList};
use crate::security::{SecurityArgs, TlsFiles};
use crate::settle;

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
    /// Transactions in flight per connection (closed loop), or the cap on them (open loop)
    /// [default: 256; with `--workload interactive` 8, one thread and session each].
    #[arg(long)]
    outstanding: Option<usize>,
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
    /// `one-shot` (each transfer one request) or `interactive` (each transfer an
    /// interactive transaction: read both balances, check the funds, debit, credit, commit;
    /// one connection and session per transaction in flight, so --connections ×
    /// --outstanding is at most 64, the coordinator's sessions per client identity).
    #[arg(long, default_value = "one-shot", value_parser = parse_workload)]
    workload: twophase_bench::WorkloadKind,
    /// How each transfer is made atomic: `2pc`, one transaction committed by the
    /// coordinator's two-phase commit; `3pc`, one transaction under three-phase commit
    /// (demo: the cluster runs 3PC, one coordinator, built-in-store participants, one-shot
    /// transfers without reads; bench sends the same requests as for 2pc, the running
    /// cluster's own `--protocol` decides); `saga`, two steps (the debit with a
    /// compensating credit, then the credit), each a local transaction, compensated when
    /// the credit fails (no isolation between the steps; the audit runs once every saga
    /// ended).
    #[arg(long, value_enum, default_value_t = Protocol::TwoPc)]
    pub(crate) protocol: Protocol,
    /// Draw every account from the first N accounts (spread over the participants), to
    /// make transfers contend; with `--workload interactive` opposite-order pairs deadlock.
    #[arg(long, value_name = "N")]
    hot: Option<u64>,
    /// Interactive: attempts of one transfer at most (retries after Deadlock or LockTimeout).
    #[arg(long, default_value_t = twophase_bench::DEFAULT_ATTEMPTS_MAX)]
    attempts_max: u32,
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

impl WorkloadArgs {
    /// Refuses flags the workload cannot run, before any cluster is started or account
    /// made (the load checks everything again).
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        twophase_bench::check_run_shape(self.duration, self.connections, self.outstanding(), self.rate)?;
        twophase_bench::check_bank_size(self.accounts, self.initial_balance)?;
        self.spec().validate(self.accounts)?;
        match self.protocol {
            Protocol::TwoPc => {}
            Protocol::ThreePc => ensure!(
                self.workload == twophase_bench::WorkloadKind::OneShot && self.read_only_share == 0.0,
                "--protocol 3pc runs one-shot transfers without reads (no --workload interactive, no --read-only-share)"
            ),
            Protocol::Saga => {
                ensure!(
                    self.workload == twophase_bench::WorkloadKind::OneShot,
                    "--protocol saga runs each transfer as a saga: leave out --workload"
                );
                ensure!(self.read_only_share == 0.0, "sagas carry no reads: leave out --read-only-share");
            }
        }
        if self.workload == twophase_bench::WorkloadKind::Interactive {
            twophase_bench::check_interactive_shape(
                self.connections,
                self.outstanding(),
                self.rate.is_some(),
                self.read_only_share,
                self.attempts_max,
            )?;
        }
        Ok(())
    }

    /// The account choice and transfer mix these flags ask for.
    fn spec(&self) -> twophase_bench::WorkloadSpec {
        twophase_bench::WorkloadSpec {
            skew: self.skew,
            cross_share: self.cross_share,
            read_only_share: self.read_only_share,
            max_amount: self.max_amount,
            hot: self.hot,
        }
    }

    /// What the load sends: `--workload`, or sagas under `--protocol saga`.
    fn load_kind(&self) -> twophase_bench::WorkloadKind {
        match self.protocol {
            Protocol::TwoPc | Protocol::ThreePc => self.workload,
            Protocol::Saga => twophase_bench::WorkloadKind::Saga,
        }
    }

    /// `--outstanding`, or its default for the workload: an interactive transaction in
    /// flight takes a thread and a session of its own.
    fn outstanding(&self) -> usize {
        self.outstanding.unwrap_or(match self.workload {
            twophase_bench::WorkloadKind::OneShot | twophase_bench::WorkloadKind::Saga => DEFAULT_OUTSTANDING_ONE_SHOT,
            twophase_bench::WorkloadKind::Interactive => DEFAULT_OUTSTANDING_INTERACTIVE,
        })
    }
}

/// How the load makes each transfer atomic (`--protocol`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Protocol {
    /// One transaction, two-phase commit.
    #[value(name = "2pc")]
    TwoPc,
    /// One transaction, three-phase commit (the cluster's protocol).
    #[value(name = "3pc")]
    ThreePc,
    /// A saga of two steps with a compensation (the cluster runs 2PC for each step).
    Saga,
}

impl Protocol {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Protocol::TwoPc => "2pc",
            Protocol::ThreePc => "3pc",
            Protocol::Saga => "saga",
        }
    }

    /// The protocol the demo's cluster runs: sagas are a client's way of using 2PC.
    fn cluster_protocol(self) -> crate::cluster::Protocol {
        match self {
            Protocol::TwoPc | Protocol::Saga => crate::cluster::Protocol::TwoPc,
            Protocol::ThreePc => crate::cluster::Protocol::ThreePc,
        }
    }
}

/// `--outstanding` by default: one-shot transactions pipeline on their connection.
const DEFAULT_OUTSTANDING_ONE_SHOT: usize = 256;
/// `--outstanding` by default with `--workload interactive`: 4 connections × 8 = 32
/// transactions in flight, within the coordinator's 64 sessions per identity.
const DEFAULT_OUTSTANDING_INTERACTIVE: usize = 8;

#[derive(Args, Debug)]
pub struct DemoArgs {
    #[command(flatten)]
    workload: WorkloadArgs,
    /// Participants, named p1..pN: a count of built-in-store participants (`3`), or a comma
    /// list of kinds, `kv` (the built-in store), `pg` (a throwaway PostgreSQL server) and
    /// `mariadb` (a throwaway MariaDB server), e.g. `pg,mariadb,kv`. Database participants
    /// are audited with SQL straight from their databases.
    #[arg(long, default_value = "3", value_parser = crate::dbdemo::parse_participants)]
    participants: crate::dbdemo::ParticipantList,
    /// Number of coordinators: above 1 (odd, at most 7) a Raft group, the load goes to its
    /// leader.
    #[arg(long, default_value_t = 1)]
    coordinators: u16,
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
    /// Run the cluster and the load without TLS (otherwise a CA and every certificate are
    /// made in the data directory); the report says so.
    #[arg(long)]
    insecure_plaintext: bool,
    /// Every node's tracing flags (the cluster's spans of sampled transactions).
    #[command(flatten)]
    trace: crate::trace::TraceArgs,
    /// Do not serve metrics (by default every node serves them on a free loopback port).
    #[arg(long)]
    no_metrics: bool,
}

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(flatten)]
    workload: WorkloadArgs,
    /// Client config file with any of coordinator, cluster, ca, cert, key, admin_cert,
    /// admin_key (e.g. the client.toml that `twophase cluster` writes); flags win over it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The coordinator of the running cluster; for a replicated group, every member (repeat
    /// the flag or give a comma list): the load finds the leader and follows it.
    #[arg(long, value_name = "ADDR")]
    coordinator: Vec<String>,
    /// Its cluster name [default: local].
    #[arg(long)]
    cluster: Option<String>,
    #[command(flatten)]
    security: SecurityArgs,
    /// An admin certificate (PEM, signed by the same CA as --cert) for reading the
    /// participants' state before and after the load (the audit).
    #[arg(long, value_name = "FILE")]
    admin_cert: Option<PathBuf>,
    /// The admin certificate's private key (PEM).
    #[arg(long, value_name = "FILE")]
    admin_key: Option<PathBuf>,
    /// Trace a share of the load's transactions: the load generator roots their traces
    /// (a `transaction` span) and sends their context ahead of each; the nodes continue them
    /// if they run with tracing on.
    #[command(flatten)]
    trace: crate::trace::TraceArgs,
}

/// What `bench` connects to and as whom, from its flags and `--config`.
struct BenchTarget {
    coordinators: Vec<SocketAddr>,
    cluster: String,
    client: TlsFiles,
    admin: TlsFiles,
}

impl BenchArgs {
    fn target(&self) -> anyhow::Result<BenchTarget> {
        let file = ClientFile::read(self.config.as_deref())?;
        let coordinators = match (self.coordinator.is_empty(), &file.coordinator) {
            (false, _) => resolve_coordinators(&self.coordinator)?,
            (true, Some(addrs)) => resolve_coordinators(&[addrs]).context("the coordinator in --config")?,
            (true, None) => bail!("--coordinator is required (on the command line or in --config)"),
        };
        let cluster = self.cluster.clone().or(file.cluster.clone()).unwrap_or_else(|| "local".into());
        let client = self.security.clone().resolve(file.security())?;
        let admin_flags =
            SecurityArgs { cert: self.admin_cert.clone(), key: self.admin_key.clone(), ..self.security.clone() };
        let admin =
            admin_flags.resolve(file.admin_security()).context("the admin certificate (--admin-cert, --admin-key)")?;
        Ok(BenchTarget { coordinators, cluster, client, admin })
    }
}

/// The cluster a run talks to, as the coordinator describes it.
pub(crate) struct Target {
    /// The coordinator that described the cluster (in a group, any member; the accounts'
    /// setup connects there and follows its NotLeader).
    pub(crate) coordinator: SocketAddr,
    /// Where the load connects: the one coordinator, or every member of the group (its
    /// connections find the leader and follow it when it changes).
    pub(crate) coordinators: Vec<SocketAddr>,
    pub(crate) cluster: String,
    pub(crate) layout: BankLayout,
    /// Participant name and the address its dump is read from.
    pub(crate) participants: Vec<(String, SocketAddr)>,
    /// What the load's client connections present.
    pub(crate) client: Security,
    /// What the topology and state reads (admin connections) present.
    pub(crate) admin: Security,
}

impl Target {
    /// Asks the coordinators in turn (every member of a group knows the participants) for
    /// the participants and lays the bank out over all of them.
    pub(crate) fn discover(
        coordinators: &[SocketAddr],
        cluster: &str,
        (client, admin): (Security, Security),
        args: &WorkloadArgs,
    ) -> anyhow::Result<Target> {
        let (coordinator, topology) = first_topology(coordinators, cluster, &admin)?;
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
        Ok(Target {
            coordinator,
            coordinators: coordinators.to_vec(),
            cluster: cluster.to_string(),
            layout,
            participants,
            client,
            admin,
        })
    }

    /// The same cluster with `names` left out of the participants read by admin dumps (the
    /// database participants, which are read with SQL instead).
    pub(crate) fn without(&self, names: &[String]) -> Target {
        Target {
            coordinator: self.coordinator,
            coordinators: self.coordinators.clone(),
            cluster: self.cluster.clone(),
            layout: self.layout.clone(),
            participants: self.participants.iter().filter(|(name, _)| !names.contains(name)).cloned().collect(),
            client: self.client.clone(),
            admin: self.admin.clone(),
        }
    }

    /// How the run's client connections connect (its cluster, its certificate).
    pub(crate) fn client_options(&self) -> ClientOptions {
        ClientOptions { cluster: self.cluster.clone(), security: self.client.clone(), ..ClientOptions::default() }
    }

    pub(crate) fn load_options(&self, args: &WorkloadArgs, sample_pids: Vec<(String, u32)>) -> LoadOptions {
        let mut options = LoadOptions::new(self.coordinator, self.cluster.clone(), self.layout.clone());
        options.coordinators = self.coordinators.clone();
        options.client.security = self.client.clone();
        options.duration = args.duration;
        options.connections = args.connections;
        options.outstanding = args.outstanding();
        options.rate = args.rate;
        options.send_tick = Duration::from_micros(args.send_tick_us);
        options.skew = args.skew;
        options.cross_share = args.cross_share;
        options.read_only_share = args.read_only_share;
        options.max_amount = args.max_amount;
        options.workload = args.load_kind();
        options.hot = args.hot;
        options.attempts_max = args.attempts_max;
        options.seed = args.seed;
        options.progress = !args.quiet;
        options.sample_pids = sample_pids;
        options
    }
}

/// A coordinator's participants: id, name and the address it reaches each at.
type Topology = Vec<(twophase_engine::ParticipantId, String, SocketAddr)>;

/// The first of `coordinators` that names the participants, and its answer; the last
/// error when none does.
fn first_topology(
    coordinators: &[SocketAddr],
    cluster: &str,
    admin: &Security,
) -> anyhow::Result<(SocketAddr, Topology)> {
    let mut last = None;
    for &coordinator in coordinators {
        match admin::topology(coordinator, cluster, admin) {
            Ok(topology) => return Ok((coordinator, topology)),
            Err(err) => {
                last = Some(
                    anyhow::Error::new(err)
                        .context(format!("asking the coordinator at {coordinator} for its participants")),
                )
            }
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("no coordinator address given")))
}

/// `twophase demo`.
pub fn demo(args: DemoArgs) -> anyhow::Result<ExitCode> {
    args.workload.check()?;
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
    let databases = Databases::start(&args.participants)?;
    let cluster_options = ClusterOptions {
        participants: args.participants.count(),
        coordinators: args.coordinators,
        data_dir: data_dir.clone(),
        listen: "127.0.0.1:0".parse().expect("address"),
        cluster: "demo".into(),
        unsafe_no_fsync: args.unsafe_no_fsync,
        group_interval_us: args.group_interval_us,
        plaintext: args.insecure_plaintext,
        trace: args.trace.clone(),
        metrics: !args.no_metrics,
        log_dir: Some(logs_dir(&args.workload.report)),
        database_participants: databases.participant_flags(),
        protocol: args.workload.protocol.cluster_protocol(),
    };
    crate::cluster::check_coordinators(args.coordinators)?;
    crate::cluster::check_protocol(&cluster_options)?;
    let coordinators = coordinators_phrase(args.coordinators);
    eprintln!(
        "starting {coordinators} and {} participants in {}",
        participants_phrase(&args.participants),
        data_dir.display()
    );
    let mut cluster = LocalCluster::start(&cluster_options)?;
    announce_metrics(&cluster);
    announce_leader(&cluster);
    let identities = (cluster.client.load("the demo's load")?, cluster.admin.load("the demo's audit")?);
    let target = Target::discover(&cluster.coordinator_addrs(), "demo", identities, &args.workload)?;
    eprintln!("creating {} accounts of {}", args.workload.accounts, args.workload.initial_balance);
    let setup_began = Instant::now();
    databases.setup_accounts(&target)?;
    eprintln!("created {} accounts in {:.1} s", args.workload.accounts, setup_began.elapsed().as_secs_f64());
    let mut pids = cluster.pids();
    pids.push(("loadgen".into(), std::process::id()));
    let mut result = twophase_bench::run_load(&target.load_options(&args.workload, pids))?;
    result.deadlocks = coordinator_deadlock_figures(&result, &cluster);
    if let Some(exit) = cluster.exited() {
        bail!("{exit} during the run; the audit cannot be trusted");
    }
    let audit_began = Instant::now();
    let (mut balances, fsync) = settled_balances(&target.without(&databases.names()))?;
    let sql_audits = databases.audit(&target.layout, &result, &mut balances)?;
    let verdict = audit(&target.layout, &result, &balances);
    eprintln!("read and audited {} accounts in {:.1} s", args.workload.accounts, audit_began.elapsed().as_secs_f64());
    let description = format!(
        "demo: local cluster ({}), {coordinators} + {} participants, {} accounts",
        args.workload.protocol.name(),
        participants_phrase(&args.participants),
        args.workload.accounts
    );
    let mut passed = finish(&result, verdict, fsync, description, &args.workload.report)?;
    for sql_audit in &sql_audits {
        println!("{}", sql_audit.summary());
        passed &= sql_audit.passed;
    }
    cluster.stop();
    drop(databases);
    print_logs_line(&args.workload.report);
    Ok(exit_code(passed))
}

/// "1 coordinator", or "N coordinators (a Raft group)".
pub(crate) fn coordinators_phrase(coordinators: u16) -> String {
    match coordinators {
        1 => "1 coordinator".to_string(),
        n => format!("{n} coordinators (a Raft group)"),
    }
}

/// In a group: which coordinator leads when the load starts (the load finds it itself).
pub(crate) fn announce_leader(cluster: &LocalCluster) {
    if cluster.coordinators.len() < 2 {
        return;
    }
    for (name, addr, role) in cluster.coordinator_roles() {
        if let crate::cluster::CoordinatorRole::Leader(leads) = role {
            eprintln!(
                "coordinator {name} at {addr} leads term {} (epoch {}); the load follows the leader",
                leads.term, leads.epoch
            );
        }
    }
}

/// `3` for a count of built-in-store participants, `3 (pg,mariadb,kv)` for a list with databases.
pub(crate) fn participants_phrase(list: &ParticipantList) -> String {
    if list.has_databases() { format!("{} ({list})", list.count()) } else { list.count().to_string() }
}

fn parse_workload(text: &str) -> Result<twophase_bench::WorkloadKind, String> {
    match text {
        "one-shot" => Ok(twophase_bench::WorkloadKind::OneShot),
        "interactive" => Ok(twophase_bench::WorkloadKind::Interactive),
        other => Err(format!("unknown workload {other:?}: one-shot or interactive")),
    }
}

/// An interactive run's deadlock and lock-wait figures, scraped from the coordinator's
/// metrics (`None` for one-shot runs or without metrics; a failed scrape is said, not fatal).
fn coordinator_deadlock_figures(
    result: &LoadResult,
    cluster: &LocalCluster,
) -> Option<twophase_bench::DeadlockFigures> {
    result.interactive?;
    let metrics = cluster.metrics();
    let (_, addr) = metrics.iter().find(|(name, _)| name == "c1")?;
    // Past one publish interval, so the last detections are in the copy the listener serves.
    std::thread::sleep(Duration::from_millis(250));
    match twophase_bench::scrape::fetch(*addr, Duration::from_secs(5)) {
        Ok(scrape) => Some(twophase_bench::DeadlockFigures::from_scrape(&scrape)),
        Err(err) => {
            eprintln!("could not read the coordinator's metrics at {addr}: {err:#}");
            None
        }
    }
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
    args.workload.check()?;
    let bench = args.target()?;
    let identities = (bench.client.load("the bench's load")?, bench.admin.load("the bench's audit")?);
    let target = Target::discover(&bench.coordinators, &bench.cluster, identities, &args.workload)?;
    let (mut before, _) = settled_balances(&target)?;
    let missing = (0..target.layout.accounts).filter(|&account| !before.is_present(account)).count();
    if missing > 0 {
        eprintln!("creating {missing} accounts of {}", args.workload.initial_balance);
        let wanted = |account: u64| !before.is_present(account);
        twophase_bench::setup_accounts_where(target.coordinator, &target.client_options(), &target.layout, wanted)?;
        before = settled_balances(&target)?.0;
    }
    let mut options = target.load_options(&args.workload, Vec::new());
    options.tracer = load_tracer(&args.trace, "bench")?;
    let result = twophase_bench::run_load(&options)?;
    drop(options); // the tracer's last spans leave now, before the audit
    let (after, fsync) = settled_balances(&target)?;
    let verdict = audit_with_baseline(&target.layout, &result, &before, &after);
    let description = format!(
        "bench: coordinator {} (cluster '{}'), {} participants, {} accounts",
        bench.coordinators.iter().map(SocketAddr::to_string).collect::<Vec<_>>().join(","),
        bench.cluster,
        target.participants.len(),
        args.workload.accounts
    );
    let passed = finish(&result, verdict, fsync, description, &args.workload.report)?;
    Ok(exit_code(passed))
}

/// The load generator's tracer (`None` with tracing off): it samples the load's
/// transactions and roots their traces (service `twophase-loadgen`, instance `run`).
pub(crate) fn load_tracer(
    args: &crate::trace::TraceArgs,
    run: &str,
) -> anyhow::Result<Option<std::sync::Arc<dyn twophase_bench::TxTracer>>> {
    let exporter = crate::trace::Exporter::start(args, "twophase-loadgen", run)?;
    Ok(exporter.map(|exporter| {
        std::sync::Arc::new(crate::trace::client::LoadTracer::new(exporter))
            as std::sync::Arc<dyn twophase_bench::TxTracer>
    }))
}

/// The participants' balances once every acknowledged commit has reached them (the
/// coordinator acknowledges once its Staged record and every participant's Prepared record
/// are durable, before the participants apply it); a run whose transactions stay prepared
/// fails.
fn settled_balances(target: &Target) -> anyhow::Result<(Balances, bool)> {
    let settled = settle::wait(target)?;
    if !settled.left.is_empty() {
        bail!("still unresolved {:?} after the load: {}", settle::SETTLE_LIMIT, settled.left.join("; "));
    }
    Ok((settled.balances, settled.fsync))
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
