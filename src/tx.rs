//! `twophase tx`: one transaction from the shell.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde_json::json;
use twophase_engine::{Op, OpKind, Outcome};
use twophase_net::{Client, ClientOptions};

use crate::client_config::{ClientFile, resolve_coordinators};
use crate::opsyntax::{self, NamedOp};
use crate::security::SecurityArgs;
use crate::trace::{Attribute, Exporter, Status, TraceArgs, context};

/// Where and how a client command connects: the flags `tx` and `shell` share.
#[derive(Args)]
pub struct ConnectArgs {
    /// Client config file with any of coordinator, cluster, ca, cert, key (e.g. the
    /// client.toml that `twophase cluster` writes); flags win over it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// The coordinator's address, HOST:PORT [default: 127.0.0.1:7000]. For a replicated
    /// group, every member: repeat the flag or give a comma list (one reachable member is
    /// enough; the client finds the leader and follows it).
    #[arg(long, value_name = "ADDR")]
    coordinator: Vec<String>,
    /// Cluster name [default: local].
    #[arg(long)]
    cluster: Option<String>,
    #[command(flatten)]
    security: SecurityArgs,
    /// Give up after this many milliseconds per attempt.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
}

impl ConnectArgs {
    /// Connects to the coordinator (flags first, then the config file, then the defaults)
    /// and registers a session.
    pub fn connect(self) -> anyhow::Result<Client> {
        let file = ClientFile::read(self.config.as_deref())?;
        let coordinator = match (self.coordinator.is_empty(), &file.coordinator) {
            (false, _) => self.coordinator.join(","),
            (true, Some(from_file)) => from_file.clone(),
            (true, None) => "127.0.0.1:7000".into(),
        };
        let addrs = resolve_coordinators(&[coordinator.as_str()])?;
        let cluster = self.cluster.or(file.cluster.clone()).unwrap_or_else(|| "local".into());
        let security = self.security.resolve(file.security())?.load("this client")?;
        let options = ClientOptions {
            cluster,
            request_timeout: Duration::from_millis(self.timeout_ms),
            security,
            ..ClientOptions::default()
        };
        Client::connect(&addrs[..], options)
            .map_err(|err| anyhow::anyhow!("cannot reach the coordinator at {coordinator}: {err}"))
    }
}

#[derive(Args)]
pub struct TxArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
    /// Trace this transaction (with that probability) as the root of the coordinator's and
    /// participants' spans.
    #[command(flatten)]
    trace: TraceArgs,
    /// Operations: get P:KEY | put P:KEY=TEXT | del P:KEY | add P:KEY=DELTA[,floor=F]
    #[arg(required = true, num_args = 1.., allow_hyphen_values = true, value_name = "OP")]
    ops: Vec<String>,
}

/// Exit status: 0 committed, 1 aborted, 2 the transaction could not be run.
pub fn run(args: TxArgs) -> anyhow::Result<ExitCode> {
    let named = opsyntax::parse_ops(&args.ops)?;
    let mut client = args.connect.connect()?;
    let ops = opsyntax::resolve(named.clone(), client.directory().participants())?;
    let outcome = submit(&mut client, ops, &args.trace)?;
    if args.json {
        println!("{}", outcome_json(&named, &outcome));
    } else {
        print_outcome(&named, &outcome);
    }
    Ok(if outcome.is_committed() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Submits `ops`, as a traced `transaction` span (the root of the cluster's spans) when
/// sampled; the exporter sends the span before this returns.
fn submit(client: &mut Client, ops: Vec<Op>, trace: &TraceArgs) -> anyhow::Result<Outcome> {
    let exporter = Exporter::start(trace, "twophase-client", &format!("client-{:016x}", client.client_id().0))?;
    let Some(exporter) = exporter.filter(Exporter::sample_root) else {
        return client.submit(ops).map_err(|err| anyhow::anyhow!("{err}"));
    };
    let attributes = [Attribute::new("twophase.client", client.client_id().0 as i64)].into_iter().collect();
    let mut span = exporter.span("transaction", None, None, attributes);
    let result = client.submit_traced(ops, context::format(&span.span_context()));
    match &result {
        Ok(Outcome::Committed { .. }) => span.set_attribute(Attribute::new("twophase.outcome", "committed")),
        Ok(Outcome::CommittedReadsUnavailable) => {
            span.set_attribute(Attribute::new("twophase.outcome", "committed_reads_unavailable"))
        }
        Ok(Outcome::Aborted { reason }) => {
            span.set_attribute(Attribute::new("twophase.outcome", "aborted"));
            span.set_attribute(Attribute::new("twophase.abort_reason", reason.label()));
        }
        Err(err) => span.set_status(Status::error(err.to_string())),
    }
    span.end();
    result.map_err(|err| anyhow::anyhow!("{err}"))
}

fn reads<'a>(named: &'a [NamedOp], outcome: &'a Outcome) -> Vec<(&'a NamedOp, Option<&'a [u8]>)> {
    let Outcome::Committed { reads } = outcome else { return Vec::new() };
    reads
        .iter()
        .filter_map(|read| named.get(read.index as usize).map(|op| (op, read.value.as_deref())))
        .filter(|(op, _)| matches!(op.kind, OpKind::Get))
        .collect()
}

pub fn print_outcome(named: &[NamedOp], outcome: &Outcome) {
    match outcome {
        Outcome::Committed { .. } => {
            println!("committed");
            for (op, value) in reads(named, outcome) {
                let shown = value.map_or_else(|| "(absent)".to_string(), opsyntax::show_value);
                println!("  {}:{} = {shown}", op.participant, op.key);
            }
        }
        Outcome::Aborted { reason } => println!("aborted: {reason}"),
        Outcome::CommittedReadsUnavailable => {
            println!("committed (the values read are unavailable: a restarted coordinator resolved it)")
        }
    }
}

fn outcome_json(named: &[NamedOp], outcome: &Outcome) -> serde_json::Value {
    match outcome {
        Outcome::Committed { .. } => {
            let reads: Vec<serde_json::Value> = reads(named, outcome)
                .into_iter()
                .map(|(op, value)| {
                    let integer = value.and_then(|v| <[u8; 8]>::try_from(v).ok()).map(i64::from_le_bytes);
                    json!({
                        "participant": op.participant,
                        "key": op.key,
                        "value": value.map(opsyntax::show_value),
                        "integer": integer,
                    })
                })
                .collect();
            json!({ "outcome": "committed", "reads": reads })
        }
        Outcome::Aborted { reason } => {
            json!({ "outcome": "aborted", "reason": reason.label(), "detail": reason.to_string() })
        }
        Outcome::CommittedReadsUnavailable => json!({ "outcome": "committed", "reads_unavailable": true }),
    }
}
