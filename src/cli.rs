//! Command-line interface. Server flags may also come from a TOML file (`--config FILE`)
//! whose keys are the flags' long names with `_` for `-`; a flag given on the command line
//! wins over the file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use serde::Deserialize;

use crate::node::Storage;
use crate::node::coordinator::CoordinatorOptions;
use crate::node::participant::ParticipantOptions;
use crate::security::{SecurityArgs, SecurityKeys};
use crate::trace::TraceArgs;
use crate::{certs, chaos, cluster, inspect, loadgen, names, node, saga_cli, shell, status, top, tx};

#[derive(Parser)]
#[command(name = "twophase", version, about = "A batched, durable two-phase-commit transaction coordinator")]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a participant: one shard of the key-value store.
    Participant(ParticipantArgs),
    /// Run the coordinator that clients submit transactions to.
    Coordinator(CoordinatorArgs),
    /// Run a local cluster (1 coordinator or a group of them, N participants) as child processes until Ctrl-C.
    Cluster(ClusterArgs),
    /// Submit one transaction and print its outcome (exit status 1 when aborted).
    Tx(tx::TxArgs),
    /// Run one saga: --step OPS [--compensate OPS] ... (exit status 1 when compensated).
    Saga(saga_cli::SagaArgs),
    /// Print the records of a node's log.
    InspectLog(inspect::InspectArgs),
    /// Start a local cluster, run the bank workload, audit, report, stop.
    Demo(loadgen::DemoArgs),
    /// Run the bank workload against a running cluster, then audit and report.
    Bench(loadgen::BenchArgs),
    /// The demo with a random process killed (SIGKILL) and restarted every interval; audit.
    Chaos(chaos::ChaosArgs),
    /// Make a cluster's CA (or reuse the one in --dir) and certificates for its members.
    Certs(certs::CertsArgs),
    /// A live terminal view of a running cluster, from its nodes' metrics endpoints.
    Top(top::TopArgs),
    /// An interactive prompt: BEGIN, GET, PUT, ADD, DELETE, COMMIT, ROLLBACK against a coordinator.
    Shell(shell::ShellArgs),
    /// Each replica of a coordinator group: role, term, commit and applied index, lag.
    Status(status::StatusArgs),
}

#[derive(Args)]
struct ParticipantArgs {
    /// TOML file with any of the flags below.
    #[arg(long)]
    config: Option<PathBuf>,
    /// This participant's name, e.g. p1 (the coordinator addresses it by this name).
    #[arg(long)]
    id: Option<String>,
    /// Address to listen on [default: 127.0.0.1:7101].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Directory for the log and snapshots.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Cluster name; peers of another cluster are refused [default: local].
    #[arg(long)]
    cluster: Option<String>,
    /// Snapshot the state every this many log records; 0 never [default: 1000000].
    #[arg(long)]
    snapshot_every: Option<u64>,
    /// While the log is busy, at most one group commit (one device flush) per this many
    /// microseconds; 0 never holds a group back [default: 1500].
    #[arg(long)]
    group_interval_us: Option<u64>,
    /// Do not fsync the log. Unsafe: only to measure what group commit hides.
    #[arg(long)]
    unsafe_no_fsync: bool,
    /// Pin the engine thread to this CPU core.
    #[arg(long)]
    pin_core: Option<usize>,
    /// An interactive transaction's statement waits at most this long for a lock before it
    /// aborts with LockTimeout, e.g. 500ms [default: 1s].
    #[arg(long, value_parser = humantime::parse_duration)]
    lock_wait_timeout: Option<Duration>,
    #[command(flatten)]
    security: SecurityArgs,
    #[command(flatten)]
    trace: TraceArgs,
    /// Serve Prometheus metrics over HTTP on this address (GET /metrics) [default: off].
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// Where the data lives: the built-in store, or a PostgreSQL / MariaDB database
    /// (`--dsn`) whose prepared transactions carry the coordinator's decisions.
    #[arg(long, value_enum, default_value = "kv")]
    backend: BackendArg,
    /// The database: `host=/run/pg port=5432 user=me dbname=bank` (postgres) or
    /// `mysql://user@127.0.0.1:3306/bank` (mariadb).
    #[arg(long)]
    dsn: Option<String>,
    /// Database connections at most; two are kept for decisions and recovery [default: 16].
    #[arg(long)]
    db_connections: Option<usize>,
    /// The atomic commit protocol; every node of a cluster must run the same one.
    #[arg(long, value_enum, default_value = "2pc")]
    protocol: cluster::Protocol,
    /// Under `--protocol 3pc`: another participant, NAME=HOST:PORT, that this one dials for
    /// the termination protocol; repeat for each.
    #[arg(long = "threepc-peer")]
    threepc_peers: Vec<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
enum BackendArg {
    Kv,
    Postgres,
    Mariadb,
}

/// The database a participant runs over, if not the built-in store.
fn backend_options(args: &ParticipantArgs) -> anyhow::Result<Option<node::backend::BackendOptions>> {
    use node::backend::{BackendKind, BackendOptions};
    let kind = match args.backend {
        BackendArg::Kv => {
            if args.dsn.is_some() || args.db_connections.is_some() {
                bail!("--dsn and --db-connections need --backend postgres or mariadb");
            }
            return Ok(None);
        }
        BackendArg::Postgres => BackendKind::Postgres,
        BackendArg::Mariadb => BackendKind::MariaDb,
    };
    let dsn = args.dsn.clone().context("--backend postgres|mariadb needs --dsn")?;
    Ok(Some(BackendOptions { kind, dsn, connections_max: args.db_connections.unwrap_or(16) }))
}

/// `--lock-wait-timeout` when neither the flag nor the config file sets it (TiKV's default).
const DEFAULT_LOCK_WAIT_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ParticipantFile {
    id: Option<String>,
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    cluster: Option<String>,
    snapshot_every: Option<u64>,
    group_interval_us: Option<u64>,
    unsafe_no_fsync: Option<bool>,
    pin_core: Option<usize>,
    /// A duration as the flag takes it, e.g. "1s".
    lock_wait_timeout: Option<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    insecure_plaintext: Option<bool>,
    metrics_listen: Option<SocketAddr>,
}

#[derive(Args)]
struct CoordinatorArgs {
    /// TOML file with any of the flags below (participants as a table NAME = "HOST:PORT").
    #[arg(long)]
    config: Option<PathBuf>,
    /// This coordinator's name [default: c1].
    #[arg(long)]
    id: Option<String>,
    /// Address clients connect to [default: 127.0.0.1:7000].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Directory for the log.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// A participant, NAME=HOST:PORT; repeat for each.
    #[arg(long = "participant")]
    participants: Vec<String>,
    /// Cluster name [default: local].
    #[arg(long)]
    cluster: Option<String>,
    /// Abort a transaction whose votes are not all in after this many milliseconds [default: 2000].
    #[arg(long)]
    prepare_timeout_ms: Option<u64>,
    /// Transactions in the prepare phase at most; beyond, clients get Busy [default: 200000].
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// Checkpoint and truncate the log every this many records; 0 never [default: 1000000].
    #[arg(long)]
    checkpoint_every: Option<u64>,
    /// While the log is busy, at most one group commit (one device flush) per this many
    /// microseconds, on slots half an interval after the participants'; 0 never holds a
    /// group back [default: 1500].
    #[arg(long)]
    group_interval_us: Option<u64>,
    /// Do not fsync the log. Unsafe: only to measure what group commit hides.
    #[arg(long)]
    unsafe_no_fsync: bool,
    /// Pin the engine thread to this CPU core.
    #[arg(long)]
    pin_core: Option<usize>,
    #[command(flatten)]
    security: SecurityArgs,
    #[command(flatten)]
    trace: TraceArgs,
    /// Serve Prometheus metrics over HTTP on this address (GET /metrics) [default: off].
    #[arg(long)]
    metrics_listen: Option<SocketAddr>,
    /// A member of this coordinator's replicated group, NAME=HOST:PORT; repeat for each,
    /// this coordinator included (its --listen address serves). None: a single coordinator.
    #[arg(long = "peer")]
    peers: Vec<String>,
    /// In a group: snapshot the replicated state and compact the Raft log every this many
    /// entries (a member that lags behind the compacted log catches up from the snapshot).
    #[arg(long, value_name = "ENTRIES", default_value_t = node::replicated::SNAPSHOT_EVERY_ENTRIES_DEFAULT,
          value_parser = clap::value_parser!(u64).range(1..))]
    raft_snapshot_every_entries: u64,
    /// The atomic commit protocol; every node of a cluster must run the same one.
    #[arg(long, value_enum, default_value = "2pc")]
    protocol: cluster::Protocol,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CoordinatorFile {
    id: Option<String>,
    listen: Option<SocketAddr>,
    data_dir: Option<PathBuf>,
    participants: Option<BTreeMap<String, String>>,
    cluster: Option<String>,
    prepare_timeout_ms: Option<u64>,
    max_in_flight: Option<usize>,
    checkpoint_every: Option<u64>,
    group_interval_us: Option<u64>,
    unsafe_no_fsync: Option<bool>,
    pin_core: Option<usize>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    insecure_plaintext: Option<bool>,
    metrics_listen: Option<SocketAddr>,
}

#[derive(Args)]
struct ClusterArgs {
    /// Number of participants, named p1..pN.
    #[arg(long, default_value_t = 3)]
    participants: u16,
    /// Number of coordinators, named c1..cN: above 1 (odd, at most 7) they run as one Raft
    /// group and the leader serves.
    #[arg(long, default_value_t = 1)]
    coordinators: u16,
    /// Directory holding one data directory per node.
    #[arg(long)]
    data_dir: PathBuf,
    /// Address the coordinator (a group's c1) listens on (the other nodes take free ports).
    #[arg(long, default_value = "127.0.0.1:7000")]
    listen: SocketAddr,
    /// Cluster name.
    #[arg(long, default_value = "local")]
    cluster: String,
    /// Do not fsync the logs. Unsafe: only to measure what group commit hides.
    #[arg(long)]
    unsafe_no_fsync: bool,
    /// Every node's `--group-interval-us` [default: the nodes' own, 1500].
    #[arg(long)]
    group_interval_us: Option<u64>,
    /// Run every node and the printed client without TLS (otherwise a CA and every
    /// certificate are made in DATA_DIR/certs).
    #[arg(long)]
    insecure_plaintext: bool,
    /// Every node's tracing flags.
    #[command(flatten)]
    trace: TraceArgs,
    /// Do not serve metrics (by default every node serves them on a free loopback port).
    #[arg(long)]
    no_metrics: bool,
    /// The atomic commit protocol every node runs (3pc: one coordinator, built-in-store
    /// participants, no metrics or tracing yet).
    #[arg(long, value_enum, default_value = "2pc")]
    protocol: cluster::Protocol,
}

fn read_config<T: for<'de> Deserialize<'de> + Default>(path: Option<&Path>) -> anyhow::Result<T> {
    let Some(path) = path else { return Ok(T::default()) };
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("{} is not a valid config file", path.display()))
}

fn required<T>(value: Option<T>, flag: &str) -> anyhow::Result<T> {
    value.with_context(|| format!("--{flag} is required (on the command line or in --config)"))
}

fn storage(unsafe_no_fsync: bool, group_interval_us: Option<u64>) -> Storage {
    let defaults = Storage::default();
    Storage {
        unsafe_no_fsync,
        group_interval: group_interval_us.map_or(defaults.group_interval, Duration::from_micros),
        ..defaults
    }
}

fn participant_options(args: ParticipantArgs) -> anyhow::Result<ParticipantOptions> {
    let file: ParticipantFile = read_config(args.config.as_deref())?;
    let name = required(args.id.or(file.id), "id")?;
    let file_lock_wait_timeout = file
        .lock_wait_timeout
        .as_deref()
        .map(|text| {
            humantime::parse_duration(text).with_context(|| format!("lock_wait_timeout {text:?} is not a duration"))
        })
        .transpose()?;
    let lock_wait_timeout = args.lock_wait_timeout.or(file_lock_wait_timeout).unwrap_or(DEFAULT_LOCK_WAIT_TIMEOUT);
    if lock_wait_timeout.is_zero() {
        bail!("--lock-wait-timeout must be above zero");
    }
    let keys =
        SecurityKeys { ca: file.ca, cert: file.cert, key: file.key, insecure_plaintext: file.insecure_plaintext };
    Ok(ParticipantOptions {
        id: names::participant_id(&name)?,
        name,
        listen: args.listen.or(file.listen).unwrap_or_else(|| "127.0.0.1:7101".parse().expect("address")),
        data_dir: required(args.data_dir.or(file.data_dir), "data-dir")?,
        cluster: args.cluster.or(file.cluster).unwrap_or_else(|| "local".into()),
        snapshot_every_records: args.snapshot_every.or(file.snapshot_every).unwrap_or(1_000_000),
        storage: storage(
            args.unsafe_no_fsync || file.unsafe_no_fsync.unwrap_or(false),
            args.group_interval_us.or(file.group_interval_us),
        ),
        pin_core: args.pin_core.or(file.pin_core),
        lock_wait_timeout,
        security: args.security.resolve(keys)?,
        trace: args.trace,
        metrics_listen: args.metrics_listen.or(file.metrics_listen),
    })
}

fn coordinator_options(args: CoordinatorArgs) -> anyhow::Result<CoordinatorOptions> {
    let file: CoordinatorFile = read_config(args.config.as_deref())?;
    let specs = if args.participants.is_empty() {
        file.participants.unwrap_or_default().into_iter().map(|(name, addr)| format!("{name}={addr}")).collect()
    } else {
        args.participants
    };
    let max_in_flight = args.max_in_flight.or(file.max_in_flight).unwrap_or(200_000);
    if max_in_flight == 0 {
        bail!("--max-in-flight must be at least 1");
    }
    let keys =
        SecurityKeys { ca: file.ca, cert: file.cert, key: file.key, insecure_plaintext: file.insecure_plaintext };
    Ok(CoordinatorOptions {
        id: args.id.or(file.id).unwrap_or_else(|| "c1".into()),
        listen: args.listen.or(file.listen).unwrap_or_else(|| "127.0.0.1:7000".parse().expect("address")),
        data_dir: required(args.data_dir.or(file.data_dir), "data-dir")?,
        cluster: args.cluster.or(file.cluster).unwrap_or_else(|| "local".into()),
        participants: names::parse_participants(&specs)?,
        prepare_timeout: Duration::from_millis(args.prepare_timeout_ms.or(file.prepare_timeout_ms).unwrap_or(2000)),
        max_in_flight,
        // On the participants' slots (phase zero): its `Staged` records are then durable
        // by the time the votes of the prepares sent with them come back.
        storage: storage(
            args.unsafe_no_fsync || file.unsafe_no_fsync.unwrap_or(false),
            args.group_interval_us.or(file.group_interval_us),
        ),
        pin_core: args.pin_core.or(file.pin_core),
        checkpoint_every_records: args.checkpoint_every.or(file.checkpoint_every).unwrap_or(1_000_000),
        security: args.security.resolve(keys)?,
        trace: args.trace,
        metrics_listen: args.metrics_listen.or(file.metrics_listen),
        group: parse_group(&args.peers)?,
    })
}

/// `--peer NAME=HOST:PORT` flags: the members of a replicated coordinator group.
fn parse_group(specs: &[String]) -> anyhow::Result<Vec<(String, String)>> {
    specs
        .iter()
        .map(|spec| match spec.split_once('=') {
            Some((name, addr)) if !name.is_empty() && !addr.is_empty() => Ok((name.to_string(), addr.to_string())),
            _ => bail!("--peer {spec}: expected NAME=HOST:PORT"),
        })
        .collect()
}

pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Participant(args) if args.protocol == cluster::Protocol::ThreePc => {
            if args.backend != BackendArg::Kv {
                bail!("--protocol 3pc runs over the built-in store only (--backend kv)");
            }
            let peers = node::threepc::participant::parse_peers(&args.threepc_peers)?;
            node::threepc::participant::serve(
                participant_options(args)?,
                node::threepc::participant::PeerOptions { peers },
            )?
        }
        Command::Participant(args) => {
            if !args.threepc_peers.is_empty() {
                bail!("--threepc-peer is for --protocol 3pc");
            }
            match backend_options(&args)? {
                None => node::participant::serve(participant_options(args)?)?,
                Some(backend) => node::backend::serve(participant_options(args)?, backend)?,
            }
        }
        Command::Coordinator(args) if args.protocol == cluster::Protocol::ThreePc => {
            if !args.peers.is_empty() {
                bail!("--protocol 3pc runs one coordinator (no --peer group)");
            }
            node::threepc::coordinator::serve(coordinator_options(args)?)?
        }
        Command::Coordinator(args) => {
            let group_options =
                node::replicated::GroupOptions { snapshot_every_entries: args.raft_snapshot_every_entries };
            let options = coordinator_options(args)?;
            if options.group.is_empty() {
                node::coordinator::serve(options)?
            } else {
                node::replicated::serve(options, group_options)?
            }
        }
        Command::Cluster(args) => {
            let options = cluster::ClusterOptions {
                participants: args.participants,
                coordinators: args.coordinators,
                data_dir: args.data_dir,
                listen: args.listen,
                cluster: args.cluster,
                unsafe_no_fsync: args.unsafe_no_fsync,
                group_interval_us: args.group_interval_us,
                plaintext: args.insecure_plaintext,
                trace: args.trace,
                metrics: !args.no_metrics,
                log_dir: None,
                database_participants: Vec::new(),
                protocol: args.protocol,
            };
            return cluster::run_until_stopped(options);
        }
        Command::Tx(args) => return tx::run(args),
        Command::Saga(args) => return saga_cli::run(args),
        Command::InspectLog(args) => inspect::run(args)?,
        Command::Demo(args) => return loadgen::demo(args),
        Command::Bench(args) => return loadgen::bench(args),
        Command::Chaos(args) => return chaos::run(args),
        Command::Certs(args) => certs::run(args)?,
        Command::Top(args) => return top::run(args),
        Command::Shell(args) => return shell::run(args),
        Command::Status(args) => return status::run(args),
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::security::TlsFiles;

    #[test]
    fn a_config_file_fills_what_flags_leave_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:7555\"\ndata_dir = \"/tmp/x\"\nprepare_timeout_ms = 50\n[participants]\np1 = \"127.0.0.1:1\"\np2 = \"127.0.0.1:2\"\n",
        )
        .unwrap();
        let cli = Cli::parse_from([
            "twophase",
            "coordinator",
            "--config",
            path.to_str().unwrap(),
            "--id",
            "c9",
            "--insecure-plaintext",
        ]);
        let Command::Coordinator(args) = cli.command else { panic!() };
        let options = coordinator_options(args).unwrap();
        assert_eq!(options.id, "c9");
        assert_eq!(options.listen.port(), 7555);
        assert_eq!(options.prepare_timeout, Duration::from_millis(50));
        assert_eq!(options.participants.len(), 2);

        std::fs::write(&path, "listen = 5\n").unwrap();
        let cli = Cli::parse_from(["twophase", "participant", "--config", path.to_str().unwrap()]);
        let Command::Participant(args) = cli.command else { panic!() };
        let err = format!("{:#}", participant_options(args).err().unwrap());
        assert!(err.contains("not a valid config file"), "{err}");
    }

    #[test]
    fn the_coordinator_slots_are_the_participants_slots() {
        let coordinator = |extra: &[&str]| {
            let base = [
                "twophase",
                "coordinator",
                "--data-dir",
                "/tmp/c",
                "--participant",
                "p1=127.0.0.1:1",
                "--insecure-plaintext",
            ];
            let cli = Cli::parse_from(base.iter().chain(extra));
            let Command::Coordinator(args) = cli.command else { panic!() };
            let storage = coordinator_options(args).unwrap().storage;
            (storage.group_interval, storage.group_phase)
        };
        let participant = || {
            let cli = Cli::parse_from([
                "twophase",
                "participant",
                "--id",
                "p1",
                "--data-dir",
                "/tmp/p",
                "--insecure-plaintext",
            ]);
            let Command::Participant(args) = cli.command else { panic!() };
            let storage = participant_options(args).unwrap().storage;
            (storage.group_interval, storage.group_phase)
        };
        let us = Duration::from_micros;
        assert_eq!(participant(), (us(1500), Duration::ZERO));
        assert_eq!(coordinator(&[]), (us(1500), Duration::ZERO));
        assert_eq!(coordinator(&["--group-interval-us", "2000"]), (us(2000), Duration::ZERO));
    }

    #[test]
    fn the_raft_snapshot_interval_defaults_and_refuses_zero() {
        let parse = |extra: &[&str]| {
            let base = ["twophase", "coordinator", "--data-dir", "/tmp/c", "--peer", "c1=127.0.0.1:1"];
            Cli::try_parse_from(base.iter().chain(extra)).map(|cli| match cli.command {
                Command::Coordinator(args) => args.raft_snapshot_every_entries,
                _ => panic!("not a coordinator"),
            })
        };
        assert_eq!(parse(&[]).unwrap(), node::replicated::SNAPSHOT_EVERY_ENTRIES_DEFAULT);
        assert_eq!(parse(&["--raft-snapshot-every-entries", "50"]).unwrap(), 50);
        assert!(parse(&["--raft-snapshot-every-entries", "0"]).is_err());
    }

    #[test]
    fn missing_required_flags_are_named() {
        let cli = Cli::parse_from(["twophase", "participant", "--id", "p1"]);
        let Command::Participant(args) = cli.command else { panic!() };
        assert!(participant_options(args).err().unwrap().to_string().contains("--data-dir is required"));
    }

    #[test]
    fn a_server_without_certificates_or_plaintext_refuses_to_start() {
        let cli = Cli::parse_from(["twophase", "participant", "--id", "p1", "--data-dir", "/tmp/p"]);
        let Command::Participant(args) = cli.command else { panic!() };
        let err = participant_options(args).err().unwrap().to_string();
        assert!(err.contains("no TLS certificate given"), "{err}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "data_dir = \"/tmp/c\"\nparticipants = { p1 = \"127.0.0.1:1\" }\nca = \"/x/ca.pem\"\ncert = \"/x/c1.pem\"\nkey = \"/x/c1.key\"\n").unwrap();
        let cli = Cli::parse_from(["twophase", "coordinator", "--config", path.to_str().unwrap()]);
        let Command::Coordinator(args) = cli.command else { panic!() };
        let security = coordinator_options(args).unwrap().security;
        let expected = TlsFiles::Tls { ca: "/x/ca.pem".into(), cert: "/x/c1.pem".into(), key: "/x/c1.key".into() };
        assert_eq!(security, expected);
    }
}
