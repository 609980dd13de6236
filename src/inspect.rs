//! `twophase inspect-log DIR`: the records of a node's log, decoded, for operators.

use std::path::{Path, PathBuf};

use clap::Args;
use twophase_engine::AnyRecord;

use twophase_wal::{Damage, WalOptions};

#[derive(Args)]
pub struct InspectArgs {
    /// A node's data directory (the one given to --data-dir), or the wal/ directory in it.
    dir: PathBuf,
    /// Print at most this many records (the newest are dropped).
    #[arg(long)]
    limit: Option<usize>,
}

/// Reads the log without changing it: no torn tail is cut, no marker written, so what an
/// operator sees is what the crash left. A log `open` refuses (damage to durable records)
/// is printed up to the damage, which is then described, and the exit status is not 0. A
/// running node (it holds the directory's lock) is refused: its log changes as it is read.
pub fn run(args: InspectArgs) -> anyhow::Result<()> {
    let (data_dir, wal_dir) = locate(&args.dir)?;
    refuse_a_running_node(data_dir)?;
    let inspection = twophase_wal::inspect(&wal_dir, WalOptions::default().max_record_bytes)?;
    println!("# {} records, next LSN {}", inspection.records.len(), inspection.next_lsn);
    for record in inspection.records.iter().take(args.limit.unwrap_or(usize::MAX)) {
        match AnyRecord::decode(record.kind, record.payload.clone()) {
            Ok(decoded) => println!("{:>10}  {decoded}", record.lsn),
            Err(err) => println!("{:>10}  CORRUPT kind={} ({err})", record.lsn, record.kind),
        }
    }
    match inspection.damage {
        None => Ok(()),
        Some(Damage::TornTail(torn)) => {
            println!(
                "# torn tail: {} bytes from offset {} of {} were never durable (a restart cuts them off)",
                torn.bytes_dropped,
                torn.offset,
                torn.segment.display()
            );
            Ok(())
        }
        Some(Damage::Corrupt(err)) => {
            println!("# the records above are all that precede the damage");
            anyhow::bail!("{err}; the node refuses to start on this log (docs/OPERATIONS.md, \"A log is corrupt\")")
        }
    }
}

/// The data directory and its log directory, from either.
fn locate(dir: &Path) -> anyhow::Result<(&Path, PathBuf)> {
    if dir.join("wal").is_dir() {
        return Ok((dir, dir.join("wal")));
    }
    if dir.is_dir()
        && dir.file_name().is_some_and(|name| name == "wal")
        && let Some(data_dir) = dir.parent()
    {
        return Ok((data_dir, dir.to_path_buf()));
    }
    anyhow::bail!(
        "{} holds no twophase log: give a node's data directory (the one given to --data-dir, which holds wal/)",
        dir.display()
    )
}

/// Fails when a process holds `dir`'s lock (opened, never created: the directory may be a
/// read-only copy).
fn refuse_a_running_node(dir: &Path) -> anyhow::Result<()> {
    let Ok(lock) = std::fs::File::open(dir.join("LOCK")) else { return Ok(()) };
    if lock.try_lock_shared().is_err() {
        anyhow::bail!("{} is in use by a running twophase process: stop it first", dir.display());
    }
    Ok(())
}
