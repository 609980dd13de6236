//! `twophase top`: a live terminal view of a cluster, read from its nodes' metrics
//! endpoints (the coordinator's and, given with `--metrics`, the participants').
//!
//! Owns: scraping every endpoint once per `--interval` on this thread, the view computed
//! from two successive scrapes ([`model`]) and its drawing ([`view`], ratatui on crossterm).
//! Must not: talk to the nodes in any way but their metrics endpoints.

mod model;
mod view;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyModifiers};

use model::Round;

/// Longest one endpoint may take to answer.
const SCRAPE_TIMEOUT: Duration = Duration::from_millis(500);

#[derive(Args, Debug)]
pub struct TopArgs {
    /// The coordinator's metrics address, HOST:PORT (`cluster`, `demo` and `chaos` print it).
    #[arg(long)]
    coordinator: SocketAddr,
    /// The participants' metrics addresses, NAME=HOST:PORT, comma-separated.
    #[arg(long, value_delimiter = ',')]
    metrics: Vec<String>,
    /// Refresh every this long.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    interval: Duration,
}

/// `(name, address)` of every endpoint, the coordinator first.
fn endpoints(args: &TopArgs) -> anyhow::Result<Vec<(String, SocketAddr)>> {
    let mut endpoints = vec![("c1".to_string(), args.coordinator)];
    for spec in &args.metrics {
        let (name, addr) =
            spec.split_once('=').with_context(|| format!("--metrics {spec:?}: expected NAME=HOST:PORT"))?;
        let addr = addr.parse().with_context(|| format!("--metrics {spec:?}: {addr:?} is not HOST:PORT"))?;
        endpoints.push((name.to_string(), addr));
    }
    Ok(endpoints)
}

fn scrape_all(endpoints: &[(String, SocketAddr)]) -> Round {
    let nodes = endpoints
        .iter()
        .map(|(name, addr)| {
            let scrape = twophase_bench::scrape::fetch(*addr, SCRAPE_TIMEOUT).map_err(|err| format!("{err:#}"));
            (name.clone(), *addr, scrape)
        })
        .collect();
    Round { at: Instant::now(), nodes }
}

pub fn run(args: TopArgs) -> anyhow::Result<ExitCode> {
    if args.interval < Duration::from_millis(100) {
        bail!("--interval must be at least 100ms");
    }
    let endpoints = endpoints(&args)?;
    let title = format!(" twophase top: coordinator metrics {} every {:?} ", args.coordinator, args.interval);
    let mut terminal = ratatui::init();
    let result = watch(&mut terminal, &endpoints, args.interval, &title);
    ratatui::restore();
    result.map(|()| ExitCode::SUCCESS)
}

fn watch(
    terminal: &mut ratatui::DefaultTerminal,
    endpoints: &[(String, SocketAddr)],
    interval: Duration,
    title: &str,
) -> anyhow::Result<()> {
    let mut previous: Option<Round> = None;
    loop {
        let round = scrape_all(endpoints);
        let view = model::build(previous.as_ref(), &round);
        terminal.draw(|frame| view::draw(frame, &view, title)).context("drawing")?;
        previous = Some(round);
        let next = Instant::now() + interval;
        while let Some(wait) = next.checked_duration_since(Instant::now()) {
            if event::poll(wait).context("reading the terminal")?
                && let Event::Key(key) = event::read().context("reading the terminal")?
            {
                let ctrl_c = key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
                if matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) || ctrl_c {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use ratatui::Terminal;
    use ratatui::backend::TestBackend;
    use twophase_bench::scrape;

    use super::model::{self, Round};
    use super::view;

    fn coordinator(committed: u64, busy_bucket: u64, sync_ms: u64) -> String {
        format!(
            "twophase_transactions_total{{node=\"c1\",role=\"coordinator\",outcome=\"committed\"}} {committed}\n\
             twophase_transactions_total{{node=\"c1\",role=\"coordinator\",outcome=\"aborted\"}} 10\n\
             twophase_aborts_total{{node=\"c1\",role=\"coordinator\",reason=\"conflict\"}} 10\n\
             twophase_rejections_total{{node=\"c1\",role=\"coordinator\",reason=\"busy\"}} 0\n\
             twophase_transactions_in_flight{{node=\"c1\",role=\"coordinator\"}} 17\n\
             twophase_coordinator_epoch{{node=\"c1\",role=\"coordinator\"}} 2\n\
             twophase_participant_connected{{node=\"c1\",role=\"coordinator\",participant=\"p1\"}} 1\n\
             twophase_participant_connected{{node=\"c1\",role=\"coordinator\",participant=\"p2\"}} 0\n\
             twophase_transaction_seconds_bucket{{node=\"c1\",role=\"coordinator\",le=\"0.001\"}} 0\n\
             twophase_transaction_seconds_bucket{{node=\"c1\",role=\"coordinator\",le=\"0.002\"}} {busy_bucket}\n\
             twophase_transaction_seconds_bucket{{node=\"c1\",role=\"coordinator\",le=\"+Inf\"}} {busy_bucket}\n\
             twophase_log_records_total{{node=\"c1\",role=\"coordinator\"}} {committed}\n\
             twophase_log_groups_total{{node=\"c1\",role=\"coordinator\"}} {}\n\
             twophase_log_sync_seconds_bucket{{node=\"c1\",role=\"coordinator\",le=\"0.001\"}} 0\n\
             twophase_log_sync_seconds_bucket{{node=\"c1\",role=\"coordinator\",le=\"0.002\"}} {sync_ms}\n\
             twophase_log_sync_seconds_bucket{{node=\"c1\",role=\"coordinator\",le=\"+Inf\"}} {sync_ms}\n\
             twophase_log_fsync_seconds_bucket{{node=\"c1\",role=\"coordinator\",le=\"0.0005\"}} {busy_bucket}\n\
             twophase_log_fsync_seconds_bucket{{node=\"c1\",role=\"coordinator\",le=\"+Inf\"}} {busy_bucket}\n\
             # EOF\n",
            committed / 50
        )
    }

    fn participant(in_doubt: u64) -> String {
        format!(
            "twophase_transactions_in_doubt{{node=\"p1\",role=\"participant\"}} {in_doubt}\n\
             twophase_transactions_prepared{{node=\"p1\",role=\"participant\"}} 5\n\
             twophase_log_records_total{{node=\"p1\",role=\"participant\"}} 100\n\
             # EOF\n"
        )
    }

    fn round(at: std::time::Instant, committed: u64, in_doubt: u64) -> Round {
        let addr = |port: u16| std::net::SocketAddr::from(([127, 0, 0, 1], port));
        Round {
            at,
            nodes: vec![
                ("c1".into(), addr(9000), Ok(scrape::parse(&coordinator(committed, committed / 10, 40)).unwrap())),
                ("p1".into(), addr(9001), Ok(scrape::parse(&participant(in_doubt)).unwrap())),
                ("p2".into(), addr(9002), Err("connection refused".into())),
            ],
        }
    }

    #[test]
    fn two_scrapes_give_rates_and_percentiles_of_the_interval() {
        let start = std::time::Instant::now();
        let first = round(start, 10_000, 0);
        let second = round(start + std::time::Duration::from_secs(2), 14_000, 3);
        let view = model::build(Some(&first), &second);
        assert_eq!(view.coordinator.committed_per_s, Some(2000.0));
        assert_eq!(view.coordinator.aborted_per_s, Some(0.0));
        assert_eq!(view.coordinator.in_flight, 17.0);
        // 400 observations in the interval, all in (1, 2] ms: the median is half-way.
        assert_eq!(view.coordinator.transaction.p50, Some(0.0015));
        let p1 = &view.nodes[1];
        assert_eq!((p1.in_doubt, p1.linked, p1.error.as_deref()), (Some(3.0), Some(true), None));
        let p2 = &view.nodes[2];
        assert_eq!((p2.linked, p2.error.as_deref()), (Some(false), Some("connection refused")));
        assert_eq!(view.nodes[0].group_records, Some(50.0), "4000 records in 80 groups");

        let mut terminal = Terminal::new(TestBackend::new(110, 16)).unwrap();
        terminal.draw(|frame| view::draw(frame, &view, " top ")).unwrap();
        let screen: String = terminal
            .backend()
            .buffer()
            .content()
            .chunks(110)
            .map(|row| row.iter().map(|cell| cell.symbol()).collect::<String>() + "\n")
            .collect();
        let c1_row = screen.lines().find(|line| line.contains("c1 ")).expect("a row for c1");
        assert!(c1_row.contains("coordinator") && c1_row.contains("495 µs"), "fsync p99 of c1: {c1_row}");
        let expected = [
            "2000 commits/s",
            "in flight   17",
            "p50   1.50 ms",
            "coordinator epoch 2",
            "DOWN",
            "lost",
            "p2 127.0.0.1:9002: connection refused",
        ];
        for expected in expected {
            assert!(screen.contains(expected), "{expected:?} missing from\n{screen}");
        }
        let p1_row = screen.lines().find(|line| line.contains("p1 ")).expect("a row for p1");
        assert!(p1_row.contains("participant") && p1_row.contains(" up ") && p1_row.contains(" 3 "), "{p1_row}");
    }

    #[test]
    fn the_first_refresh_shows_totals_without_rates() {
        let view = model::build(None, &round(std::time::Instant::now(), 500, 0));
        assert_eq!(view.coordinator.committed_per_s, None);
        assert_eq!(view.coordinator.committed_total, 500.0);
        assert_eq!(view.coordinator.aborts, vec![("conflict".to_string(), 10.0)]);
    }
}
