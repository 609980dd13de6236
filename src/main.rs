//! `twophase`: the coordinator and participant servers, a local cluster launcher, a
//! certificate maker, a one-shot transaction client and a log inspector. Every connection
//! is mutual TLS unless a command is told `--insecure-plaintext`. See `twophase --help`.

mod certs;
mod chaos;
mod cli;
mod client_config;
mod cluster;
mod dbdemo;
mod failpoint;
mod inspect;
mod loadgen;
mod metrics;
mod names;
mod node;
mod opsyntax;
mod saga_cli;
mod security;
mod settle;
mod shell;
mod status;
mod top;
mod trace;
mod tx;

use std::process::ExitCode;

use clap::Parser;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    init_tracing();
    let cli = cli::Cli::parse();
    // An unknown failpoint is a typo in a test or a chaos script: refuse rather than run
    // without the crash it asked for.
    if let Err(err) = failpoint::init() {
        eprintln!("error: {err}");
        return ExitCode::from(2);
    }
    match cli::run(cli) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::from(2)
        }
    }
}

/// Logs go to stderr; `RUST_LOG` filters them (default: info).
fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi)
        .init();
}
