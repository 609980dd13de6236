//! Throwaway PostgreSQL and MariaDB servers for trying database participants by hand: starts
//! one of each (temporary directories, unix sockets only, fsync on), prints the `--dsn` of
//! each, and stops and deletes them when stdin closes (Ctrl-D) or after `--for`.
//!
//!     cargo run -p twophase-backends --example db_servers -- --for 30m

use std::io::Read;
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use twophase_backends::testserver::{MariaServer, PgServer};

#[derive(Parser)]
struct Args {
    /// How long to keep the servers at most.
    #[arg(long = "for", default_value = "1h", value_parser = humantime::parse_duration)]
    keep_for: Duration,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let pg = PgServer::start()?;
    let maria = MariaServer::start()?;
    println!("postgres dsn: {}", pg.dsn());
    println!("mariadb dsn: {}", maria.url());
    println!("stopping on end of input (Ctrl-D) or after {:?}", args.keep_for);
    let (closed_tx, closed_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = std::io::stdin().read_to_end(&mut Vec::new());
        let _ = closed_tx.send(());
    });
    let _ = closed_rx.recv_timeout(args.keep_for);
    drop((pg, maria));
    println!("servers stopped");
    Ok(())
}
