//! Metrics as an operator scrapes them: a `twophase cluster` (metrics on by default), some
//! transactions, then every node's endpoint read and checked against what the client saw.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{CLUSTER, add, binary, certs_dir, security};
use twophase_bench::scrape::Scrape;
use twophase_engine::Outcome;
use twophase_net::{Client, ClientOptions};

/// Longest the counters may take to reach what the client saw: nodes publish every 100 ms,
/// and participants apply commits after the client hears (a loaded machine is slow).
const SETTLE_WITHIN: Duration = Duration::from_secs(30);

struct MetricsCluster {
    coordinator: SocketAddr,
    /// Every node's name and metrics address.
    metrics: Vec<(String, SocketAddr)>,
    process: Child,
}

impl MetricsCluster {
    fn start(data_dir: &std::path::Path) -> MetricsCluster {
        let mut process = Command::new(binary())
            .args(["cluster", "--participants", "2", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting twophase cluster");
        let mut lines = BufReader::new(process.stdout.take().unwrap()).lines();
        let (mut coordinator, mut metrics) = (None, Vec::new());
        loop {
            let line = lines.next().expect("cluster output ended early").expect("reading cluster output");
            if line.starts_with("coordinator c1 listening on ") {
                coordinator = line.rsplit_once(' ').and_then(|(_, addr)| addr.parse().ok());
            } else if let Some(rest) = line.strip_prefix("metrics of ") {
                let (name, url) = rest.split_once(" on ").expect("metrics line: NAME on URL");
                let addr = url.trim_start_matches("http://").trim_end_matches("/metrics");
                metrics.push((name.to_string(), addr.parse().expect("metrics address")));
            } else if line.starts_with("cluster running") {
                break;
            }
        }
        std::thread::spawn(move || for _ in lines {});
        MetricsCluster { coordinator: coordinator.expect("the coordinator's address"), metrics, process }
    }

    fn scrape_until(&self, node: &str, ready: impl Fn(&Scrape) -> bool) -> Scrape {
        common::scrape_until(node, self.metrics_addr(node), SETTLE_WITHIN, ready)
    }

    fn metrics_addr(&self, node: &str) -> SocketAddr {
        let (_, addr) = self.metrics.iter().find(|(name, _)| name == node).expect("a metrics line for every node");
        *addr
    }
}

impl Drop for MetricsCluster {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.process.id() as i32, libc::SIGTERM);
        }
        let _ = self.process.wait();
    }
}

/// Runs transfers between p1 and p2, some of which overdraw (abort: constraint). Returns
/// (committed, aborted by constraint).
fn run_transactions(coordinator: SocketAddr, data_dir: &std::path::Path) -> (u64, u64) {
    // The client certificate `twophase cluster` made for its own clients.
    let options = ClientOptions {
        request_timeout: Duration::from_secs(10),
        security: security(&certs_dir(data_dir), CLUSTER, "client", "local-client"),
        ..ClientOptions::default()
    };
    let mut client = Client::connect(coordinator, options).expect("connecting to the coordinator");
    let (mut committed, mut constraint) = (0, 0);
    let outcome = client.submit(vec![add(1, "alice", 100, i64::MIN), add(2, "bob", 100, i64::MIN)]).unwrap();
    assert!(outcome.is_committed());
    committed += 1;
    for round in 0..60 {
        // Every fourth transfer asks for more than alice holds.
        let amount = if round % 4 == 3 { 1_000_000 } else { 1 };
        let ops = vec![add(1, "alice", -amount, 0), add(2, "bob", amount, i64::MIN)];
        match client.submit(ops).expect("a transfer") {
            Outcome::Committed { .. } | Outcome::CommittedReadsUnavailable => committed += 1,
            Outcome::Aborted { reason } if reason.label() == "constraint" => constraint += 1,
            Outcome::Aborted { reason } => panic!("unexpected abort: {reason}"),
        }
    }
    (committed, constraint)
}

#[test]
fn every_node_serves_metrics_that_match_what_the_client_saw() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = MetricsCluster::start(dir.path());
    let names: Vec<&str> = cluster.metrics.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["p1", "p2", "c1"], "every node prints its metrics address");
    let (committed, constraint) = run_transactions(cluster.coordinator, dir.path());
    assert_eq!((committed, constraint), (46, 15));

    let decided = |s: &Scrape, outcome: &str| s.value("twophase_transactions_total", &[("outcome", outcome)]);
    let c1 = cluster.scrape_until("c1", |s| {
        decided(s, "committed") == Some(committed as f64)
            && s.value("twophase_transactions_in_flight", &[]) == Some(0.0)
    });
    assert_eq!(decided(&c1, "committed"), Some(committed as f64), "the coordinator counts what the client saw");
    assert_eq!(decided(&c1, "aborted"), Some(constraint as f64));
    assert_eq!(c1.value("twophase_aborts_total", &[("reason", "constraint")]), Some(constraint as f64));
    assert_eq!(c1.value("twophase_transactions_in_flight", &[]), Some(0.0), "every commit was acknowledged");
    assert_eq!(c1.value("twophase_rejections_total", &[("reason", "busy")]), Some(0.0));
    assert_eq!(c1.value("twophase_coordinator_epoch", &[]), Some(1.0), "a first start");
    for participant in ["p1", "p2"] {
        assert_eq!(c1.value("twophase_participant_connected", &[("participant", participant)]), Some(1.0));
        let frames_out = c1.value("twophase_net_frames_out_total", &[("peer", participant)]).unwrap();
        assert!(frames_out >= 1.0 && c1.value("twophase_net_bytes_out_total", &[("peer", participant)]) > Some(0.0));
    }
    let replies = c1.value("twophase_net_frames_out_total", &[("peer", "clients")]).unwrap();
    assert!(replies >= (committed + constraint) as f64 / 2.0, "replies went out: {replies}");
    // One transaction at a time, so every sampled transaction's rounds completed.
    let transactions = committed + constraint;
    let timed = c1.value("twophase_transaction_seconds_count", &[]).unwrap();
    assert!(timed >= (transactions / 8 - 1) as f64 && timed <= transactions as f64, "{timed} timed");
    let histograms = [
        "twophase_transaction_seconds",
        "twophase_prepare_round_seconds",
        "twophase_log_sync_seconds",
        "twophase_log_fsync_seconds",
        "twophase_log_group_records",
    ];
    for histogram in histograms {
        check_histogram(&c1, histogram);
    }
    // Every transaction's Staged record is appended and synced: the log saw them all.
    assert!(c1.value("twophase_log_records_total", &[]) >= Some(transactions as f64));
    assert!(c1.value("twophase_log_groups_total", &[]) > Some(0.0));
    for family in ["twophase_start_time_seconds", "twophase_recovery_seconds", "twophase_snapshots"] {
        assert!(c1.declares(family), "c1 declares {family}");
    }
    assert!(c1.find("twophase_transactions_total", &[("node", "c1"), ("role", "coordinator")]).count() == 2);
    for participant in ["p1", "p2"] {
        // A committed transaction's vote left each participant before the client heard the
        // outcome and sent the next one, so it is a frame of its own. An aborted one's is not:
        // the client hears the other participant's No first, and this vote may share a frame
        // with the next transaction's.
        let (frames_in, _) = check_connection_counters(&c1, participant, "participant");
        assert!(frames_in >= committed as f64, "c1 decoded {frames_in} frames from {participant}");
    }
    // The client's connection may be closed by now: then its counts are in `peer="closed"`.
    let sent_frames = |peer: &str, peer_role: &str| {
        c1.value("twophase_connection_sent_frames_total", &[("peer", peer), ("peer_role", peer_role)])
    };
    let closed = sent_frames("closed", "closed").expect("the closed connections' series is always served");
    let replies = sent_frames("local-client", "client").unwrap_or(0.0) + closed;
    assert!(replies >= transactions as f64, "c1 queued {replies} frames for its client");

    let mut scraped = vec![c1];
    for participant in ["p1", "p2"] {
        // Each transfer touched both participants: each voted on every one.
        // Until its last vote is counted too: the last transfer is an overdraft, refused
        // after the last commit, and a node publishes its counters every 100 ms.
        let voted = |s: &Scrape| {
            let votes = |vote: &str| s.value("twophase_votes_total", &[("vote", vote)]).unwrap_or(0.0);
            votes("yes") + votes("no") == transactions as f64
        };
        let p = cluster.scrape_until(participant, |s| decided(s, "committed") == Some(committed as f64) && voted(s));
        assert_eq!(decided(&p, "committed"), Some(committed as f64), "{participant} applied every commit");
        let yes = p.value("twophase_votes_total", &[("vote", "yes")]).unwrap();
        let no = p.value("twophase_votes_total", &[("vote", "no")]).unwrap();
        assert_eq!(yes + no, transactions as f64, "{participant} voted once per transaction");
        assert_eq!(yes, committed as f64 + decided(&p, "aborted").unwrap(), "every Yes was decided");
        assert_eq!(p.value("twophase_transactions_in_doubt", &[]), Some(0.0));
        assert_eq!(p.value("twophase_transactions_prepared", &[]), Some(0.0));
        assert_eq!(p.value("twophase_coordinator_connected", &[]), Some(1.0));
        assert!(p.value("twophase_log_records_total", &[]) >= Some(committed as f64));
        check_histogram(&p, "twophase_vote_wait_seconds");
        check_histogram(&p, "twophase_log_sync_seconds");
        check_histogram(&p, "twophase_log_fsync_seconds");
        check_histogram(&p, "twophase_log_group_records");
        // As at c1: each committed transaction's vote is a frame of its own; an aborted
        // one's may leave late and share a frame with the next transaction's vote.
        let (_, frames_out) = check_connection_counters(&p, "c1", "coordinator");
        assert!(frames_out >= committed as f64, "{participant} queued {frames_out} frames for c1");
        assert!(p.find("twophase_votes_total", &[("node", participant), ("role", "participant")]).count() == 3);
        scraped.push(p);
    }
    every_dashboard_metric_exists(&scraped);
}

/// Every `twophase_...` name the Grafana dashboard's queries use is a sample some node serves.
fn every_dashboard_metric_exists(scraped: &[Scrape]) {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/grafana/twophase.json");
    let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().into_iter().flatten() {
            exprs.push(target["expr"].as_str().expect("a PromQL expression").to_string());
        }
    }
    assert!(exprs.len() >= 10, "the dashboard has its queries: {}", exprs.len());
    let served = |name: &str| scraped.iter().any(|scrape| scrape.samples.iter().any(|sample| sample.name == name));
    let mut names = 0;
    for expr in &exprs {
        for (at, _) in expr.match_indices("twophase_") {
            let name: String =
                expr[at..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
            assert!(served(&name), "the dashboard queries {name}, which no node serves ({expr})");
            names += 1;
        }
    }
    assert!(names >= exprs.len(), "every query names a metric");
}

/// The traffic `scrape`'s node counted on its connections to `peer`: bytes and frames both
/// ways, and never fewer bytes than frame headers. Returns (frames received, frames sent).
fn check_connection_counters(scrape: &Scrape, peer: &str, peer_role: &str) -> (f64, f64) {
    let labels = [("peer", peer), ("peer_role", peer_role)];
    let count = |family: &str| {
        let value = scrape.value(family, &labels).unwrap_or_else(|| panic!("{family} of {peer} is served"));
        assert!(value > 0.0, "{family} of {peer} counted traffic");
        value
    };
    let bytes_in = count("twophase_connection_received_bytes_total");
    let bytes_out = count("twophase_connection_sent_bytes_total");
    let frames_in = count("twophase_connection_received_frames_total");
    let frames_out = count("twophase_connection_sent_frames_total");
    let header_bytes = twophase_net::HEADER_BYTES as f64;
    assert!(frames_in * header_bytes <= bytes_in, "{peer}: {frames_in} frames in {bytes_in} bytes");
    assert!(frames_out * header_bytes <= bytes_out, "{peer}: {frames_out} frames in {bytes_out} bytes");
    (frames_in, frames_out)
}

/// A histogram's `_count` equals its `+Inf` bucket, its buckets never decrease, and it has
/// observations.
fn check_histogram(scrape: &Scrape, family: &str) {
    let buckets = scrape.buckets(family, &[]);
    let count = scrape.value(&format!("{family}_count"), &[]).expect("a _count");
    assert!(count > 0.0, "{family} observed something");
    assert_eq!(buckets.last(), Some(&(f64::INFINITY, count)), "{family}: +Inf bucket = count");
    assert!(buckets.windows(2).all(|pair| pair[0].1 <= pair[1].1), "{family}: cumulative buckets");
    assert!(scrape.value(&format!("{family}_sum"), &[]) > Some(0.0));
}
