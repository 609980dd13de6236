//! `twophase inspect-log DIR`: the records of a node's log, decoded, for operators.

use std::path::PathBuf;

use clap::Args;
use twophase_engine::AnyRecord;

use crate::node::{self, Storage};

#[derive(Args)]
pub struct InspectArgs {
    /// A node's data directory (the one given to --data-dir).
    dir: PathBuf,
    /// Print at most this many records (the newest are dropped).
    #[arg(long)]
    limit: Option<usize>,
}

/// Opens the log as a restart would (a torn tail is cut), so only a stopped node's
/// directory can be inspected; a running node holds its lock and is refused.
pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    if !args.dir.join("wal").is_dir() {
        anyhow::bail!("{} holds no twophase log (no wal/ directory)", args.dir.display());
    }
    let (_lock, wal, recovery) = node::open_storage(&args.dir, &Storage::default())?;
    let total = recovery.records.len();
    println!("# {} records, next LSN {}", total, recovery.next_lsn);
    for record in recovery.records.iter().take(args.limit.unwrap_or(usize::MAX)) {
        match AnyRecord::decode(record.kind, record.payload.clone()) {
            Ok(decoded) => println!("{:>10}  {decoded}", record.lsn),
            Err(err) => println!("{:>10}  CORRUPT kind={} ({err})", record.lsn, record.kind),
        }
    }
    wal.close()?;
    Ok(())
}
