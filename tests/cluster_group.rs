//! `twophase cluster --coordinators 3`: three coordinators as one Raft group, each with its
//! own certificate; the launcher prints every coordinator's address and role and the leader,
//! and the `client.toml` it writes reaches that leader, whose transactions commit at the
//! participants (which accept whichever coordinator leads). With metrics on, every member
//! prints its metrics address; the leader's counters match what a client saw, and every
//! member's Raft gauges say its role and term.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{CLUSTER, add, binary, certs_dir, security};
use twophase_bench::scrape::{self, Scrape};
use twophase_engine::Outcome;
use twophase_net::{Client, ClientOptions};

const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest the counters may take to reach what the client saw (nodes publish every 100 ms;
/// the machine running the tests may be busy compiling).
const SETTLE_WITHIN: Duration = Duration::from_secs(30);

/// `coordinator NAME listening on ADDR (ROLE...)` → (name, address, role word).
fn coordinator_line(line: &str) -> Option<(String, SocketAddr, String)> {
    let rest = line.strip_prefix("coordinator ")?;
    let (name, rest) = rest.split_once(" listening on ")?;
    let (addr, role) = rest.split_once(" (")?;
    let role = role.trim_end_matches(')').split(',').next()?.to_string();
    Some((name.to_string(), addr.parse().ok()?, role))
}

#[test]
fn a_cluster_of_three_coordinators_prints_its_leader_and_commits_through_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut process = start_group_cluster(dir.path(), false);
    let Printed { coordinators, leader_line, .. } = read_cluster_output(&mut process);

    let names: Vec<&str> = coordinators.iter().map(|(name, _, _)| name.as_str()).collect();
    assert_eq!(names, ["c1", "c2", "c3"]);
    let leaders: Vec<_> = coordinators.iter().filter(|(_, _, role)| role == "leader").collect();
    assert_eq!(leaders.len(), 1, "{coordinators:?}");
    let followers = coordinators.iter().filter(|(_, _, role)| role == "follower").count();
    assert_eq!(followers, 2, "{coordinators:?}");
    let (leader, leader_addr, _) = leaders[0];
    assert!(leader_line.contains(&format!("coordinator {leader} at {leader_addr}")), "{leader_line}");
    for name in ["c1", "c2", "c3"] {
        assert!(dir.path().join("certs").join(format!("coordinator-{name}.pem")).exists(), "no certificate of {name}");
    }

    let config = dir.path().join("client.toml");
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(written.contains(&leader_addr.to_string()), "client.toml does not name the leader:\n{written}");
    let tx = |args: &[&str]| Command::new(binary()).args(["tx", "--config"]).arg(&config).args(args).output().unwrap();
    let committed = tx(&["add", "p1:alice=100", "add", "p2:bob=100"]);
    assert!(committed.status.success(), "{}", String::from_utf8_lossy(&committed.stderr));
    let read = tx(&["get", "p1:alice", "get", "p2:bob"]);
    let out = String::from_utf8_lossy(&read.stdout);
    assert!(read.status.success() && out.matches("100").count() == 2, "{out}");

    stop_cleanly(process);
}

/// `twophase cluster --coordinators 3 --participants 2` in `dir`, metrics on or off, its
/// output piped for [`read_cluster_output`].
fn start_group_cluster(dir: &Path, metrics: bool) -> Child {
    let mut command = Command::new(binary());
    command.args(["cluster", "--coordinators", "3", "--participants", "2", "--listen", "127.0.0.1:0"]);
    if !metrics {
        command.arg("--no-metrics");
    }
    command
        .arg("--data-dir")
        .arg(dir)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting twophase cluster")
}

/// SIGTERM; the cluster must then exit cleanly.
fn stop_cleanly(mut process: Child) {
    // SAFETY: kill(2) on a child we spawned; no memory is involved.
    unsafe {
        libc::kill(process.id() as i32, libc::SIGTERM);
    }
    let status = process.wait().unwrap();
    assert!(status.success(), "cluster exited with {status}");
}

/// What `twophase cluster --coordinators 3` printed before `cluster running`.
struct Printed {
    coordinators: Vec<(String, SocketAddr, String)>,
    metrics: Vec<(String, SocketAddr)>,
    /// `leader: coordinator NAME at ADDR`.
    leader_line: String,
}

fn read_cluster_output(process: &mut Child) -> Printed {
    let mut lines = BufReader::new(process.stdout.take().unwrap()).lines();
    let mut printed = Printed { coordinators: Vec::new(), metrics: Vec::new(), leader_line: String::new() };
    loop {
        let line = lines.next().expect("cluster output ended early").expect("reading cluster output");
        if let Some(coordinator) = coordinator_line(&line) {
            printed.coordinators.push(coordinator);
        } else if line.starts_with("leader: ") {
            printed.leader_line = line;
        } else if let Some(rest) = line.strip_prefix("metrics of ") {
            let (name, url) = rest.split_once(" on ").expect("metrics line: NAME on URL");
            let addr = url.trim_start_matches("http://").trim_end_matches("/metrics");
            printed.metrics.push((name.to_string(), addr.parse().expect("metrics address")));
        } else if line.starts_with("cluster running") {
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    printed
}

/// Scrapes `addr` until `ready` holds or [`SETTLE_WITHIN`] passes; returns the last scrape.
fn scrape_until(addr: SocketAddr, ready: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + SETTLE_WITHIN;
    loop {
        let text = scrape::fetch_text(addr, SCRAPE_TIMEOUT).expect("scraping");
        let scrape =
            scrape::parse(&text).unwrap_or_else(|err| panic!("the exposition does not parse: {err:#}\n{text}"));
        if ready(&scrape) || Instant::now() > deadline {
            return scrape;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn every_member_serves_metrics_the_leaders_match_what_the_client_saw() {
    let dir = tempfile::tempdir().unwrap();
    let mut process = start_group_cluster(dir.path(), true);
    let printed = read_cluster_output(&mut process);
    let names: Vec<&str> = printed.metrics.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["p1", "p2", "c1", "c2", "c3"], "every node prints its metrics address");
    let metrics_of = |name: &str| printed.metrics.iter().find(|(n, _)| n == name).unwrap().1;
    let (leader, leader_addr, _) = printed.coordinators.iter().find(|(_, _, role)| role == "leader").unwrap();

    // The client certificate `twophase cluster` made for its own clients.
    let options = ClientOptions {
        request_timeout: Duration::from_secs(10),
        security: security(&certs_dir(dir.path()), CLUSTER, "client", "local-client"),
        ..ClientOptions::default()
    };
    let mut client = Client::connect(*leader_addr, options).expect("connecting to the leader");
    let (mut committed, mut constraint) = (0u64, 0u64);
    assert!(client.submit(vec![add(1, "alice", 100, i64::MIN), add(2, "bob", 100, i64::MIN)]).unwrap().is_committed());
    committed += 1;
    for round in 0..20 {
        // Every fourth transfer asks for more than alice holds (100, less 1 per other round).
        let amount = if round % 4 == 3 { 1_000_000 } else { 1 };
        match client.submit(vec![add(1, "alice", -amount, 0), add(2, "bob", amount, i64::MIN)]).unwrap() {
            Outcome::Committed { .. } | Outcome::CommittedReadsUnavailable => committed += 1,
            Outcome::Aborted { reason } if reason.label() == "constraint" => constraint += 1,
            Outcome::Aborted { reason } => panic!("unexpected abort: {reason}"),
        }
    }
    assert_eq!((committed, constraint), (16, 5));

    let decided = |s: &Scrape, outcome: &str| s.value("twophase_transactions_total", &[("outcome", outcome)]);
    let refused = |s: &Scrape| s.value("twophase_aborts_total", &[("reason", "constraint")]);
    // The leader publishes a snapshot now and then: wait for one taken after the last reply
    // (a constraint abort), not just after the last commit.
    let at_leader = scrape_until(metrics_of(leader), |s| {
        decided(s, "committed") == Some(committed as f64) && refused(s) == Some(constraint as f64)
    });
    assert_eq!(decided(&at_leader, "committed"), Some(committed as f64), "the leader counts what the client saw");
    assert_eq!(refused(&at_leader), Some(constraint as f64));
    assert_eq!(at_leader.value("twophase_raft_leader", &[("node", leader.as_str())]), Some(1.0));
    let term = at_leader.value("twophase_raft_term", &[]).expect("the leader's raft term");
    assert!(term >= 1.0, "term {term}");
    let leader_commit = at_leader.value("twophase_raft_commit_index", &[]).unwrap();
    assert!(leader_commit >= committed as f64, "a batch per commit at least: {leader_commit}");
    for (name, _, role) in printed.coordinators.iter().filter(|(_, _, role)| role == "follower") {
        let at_follower = scrape_until(metrics_of(name), |s| {
            s.value("twophase_raft_applied_index", &[]).is_some_and(|applied| applied >= leader_commit)
        });
        assert_eq!(at_follower.value("twophase_raft_leader", &[]), Some(0.0), "{name} is a {role}");
        assert_eq!(at_follower.value("twophase_raft_term", &[]), Some(term), "{name} is in the leader's term");
        let applied = at_follower.value("twophase_raft_applied_index", &[]).unwrap();
        assert!(applied >= leader_commit, "{name} applied {applied} of {leader_commit}");
        assert_eq!(at_follower.value("twophase_participant_connected", &[("participant", "p1")]), Some(0.0));
    }

    stop_cleanly(process);
}
