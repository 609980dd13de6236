//! `twophase tx`: one transaction from the shell.

use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use serde_json::json;
use twophase_engine::{OpKind, Outcome};
use twophase_net::{Client, ClientOptions};

use crate::opsyntax::{self, NamedOp};

#[derive(Args)]
pub struct TxArgs {
    /// The coordinator's address, HOST:PORT.
    #[arg(long, default_value = "127.0.0.1:7000")]
    coordinator: String,
    /// Cluster name.
    #[arg(long, default_value = "local")]
    cluster: String,
    /// Print the outcome as JSON.
    #[arg(long)]
    json: bool,
    /// Give up after this many milliseconds per attempt.
    #[arg(long, default_value_t = 10_000)]
    timeout_ms: u64,
    /// Operations: get P:KEY | put P:KEY=TEXT | del P:KEY | add P:KEY=DELTA[,floor=F]
    #[arg(required = true, num_args = 1.., allow_hyphen_values = true, value_name = "OP")]
    ops: Vec<String>,
}

/// Exit status: 0 committed, 1 aborted, 2 the transaction could not be run.
pub fn run(args: TxArgs) -> anyhow::Result<ExitCode> {
    let named = opsyntax::parse_ops(&args.ops)?;
    let options = ClientOptions {
        cluster: args.cluster.clone(),
        request_timeout: Duration::from_millis(args.timeout_ms),
        ..ClientOptions::default()
    };
    let mut client = Client::connect(args.coordinator.as_str(), options)
        .map_err(|err| anyhow::anyhow!("cannot reach the coordinator at {}: {err}", args.coordinator))?;
    let ops = opsyntax::resolve(named.clone(), client.directory().participants())?;
    let outcome = client.submit(ops).map_err(|err| anyhow::anyhow!("{err}"))?;
    if args.json {
        println!("{}", outcome_json(&named, &outcome));
    } else {
        print_outcome(&named, &outcome);
    }
    Ok(if outcome.is_committed() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn reads<'a>(named: &'a [NamedOp], outcome: &'a Outcome) -> Vec<(&'a NamedOp, Option<&'a [u8]>)> {
    let Outcome::Committed { reads } = outcome else { return Vec::new() };
    reads
        .iter()
        .filter_map(|read| named.get(read.index as usize).map(|op| (op, read.value.as_deref())))
        .filter(|(op, _)| matches!(op.kind, OpKind::Get))
        .collect()
}

fn print_outcome(named: &[NamedOp], outcome: &Outcome) {
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
