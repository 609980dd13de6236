//! Three-phase commit with real processes (`--protocol 3pc`): a coordinator killed by a
//! failpoint at a chosen step of one cross-participant transfer, and participants that
//! terminate it on their own, without the coordinator (which is not restarted), as Skeen's
//! termination protocol says: any pre-committed → commit, all uncertain → abort. Their
//! state is read through the admin `Dump`. And the demo's audit under `--protocol 3pc`, and
//! every node's metrics.
//!
//! The transfer moves 10 from `a` on p1 to `b` on p2, both absent (0) before: "committed"
//! is a = -10 and b = 10, "aborted" is both absent. Waits poll with generous deadlines
//! (termination starts seconds after the coordinator falls silent, on a loaded machine).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Node, SHORT_DEMO, add, dump_ints, eventually, free_addr, run_demo};
use twophase_bench::scrape::Scrape;
use twophase_net::Client;

/// Longest a failpoint may take to fire once its transaction is submitted.
const DIE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest the participants may take to terminate on their own.
const TERMINATE_TIMEOUT: Duration = Duration::from_secs(60);

/// Two 3PC participants that know each other, and a 3PC coordinator armed with `failpoint`.
fn start(dir: &std::path::Path, failpoint: &str) -> (Node, Node, Node) {
    let (addr1, addr2) = (free_addr(), free_addr());
    let peer = |name: &str, addr: SocketAddr| format!("{name}={addr}");
    let (peer1, peer2) = (peer("p1", addr1), peer("p2", addr2));
    let p1 = Node::participant_at("p1", dir, addr1, &["--protocol", "3pc", "--threepc-peer", &peer2]);
    let p2 = Node::participant_at("p2", dir, addr2, &["--protocol", "3pc", "--threepc-peer", &peer1]);
    let c1 = Node::coordinator(dir, &[&p1, &p2], &["--protocol", "3pc"], &[("TWOPHASE_FAILPOINT", failpoint)]);
    (p1, p2, c1)
}

/// Submits the transfer; the coordinator dies on the way, so no outcome comes back.
fn submit_transfer(c1: &Node) {
    let mut client = Client::connect(c1.addr, common::client_options(&c1.data_dir)).expect("registering");
    let outcome = client.submit(vec![add(1, "a", -10, i64::MIN), add(2, "b", 10, i64::MIN)]);
    assert!(outcome.is_err(), "the coordinator died before any outcome, yet the client heard {outcome:?}");
}

/// A participant's value of `key` once it holds nothing undecided.
fn settled(participant: &Node, key: &str) -> Option<Option<i64>> {
    let (values, (prepared, _)) = dump_ints(participant);
    (prepared == 0).then(|| values.get(key).copied())
}

#[test]
fn coordinator_killed_after_every_precommit_ack_the_participants_commit_on_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let (p1, p2, mut c1) = start(dir.path(), "threepc-precommit-acked");
    submit_transfer(&c1);
    c1.expect_killed(DIE_TIMEOUT);
    // Both acknowledged PreCommit: whichever backup runs the termination finds a
    // pre-committed participant and commits.
    let a = eventually("p1 to terminate", TERMINATE_TIMEOUT, || settled(&p1, "a"));
    let b = eventually("p2 to terminate", TERMINATE_TIMEOUT, || settled(&p2, "b"));
    assert_eq!((a, b), (Some(-10), Some(10)), "the transfer committed on both participants");
}

#[test]
fn coordinator_killed_before_any_precommit_the_participants_abort_on_their_own() {
    let dir = tempfile::tempdir().unwrap();
    let (p1, p2, mut c1) = start(dir.path(), "threepc-votes-in");
    submit_transfer(&c1);
    c1.expect_killed(DIE_TIMEOUT);
    // Both voted Yes and neither heard PreCommit: every state is uncertain, so abort.
    let a = eventually("p1 to terminate", TERMINATE_TIMEOUT, || settled(&p1, "a"));
    let b = eventually("p2 to terminate", TERMINATE_TIMEOUT, || settled(&p2, "b"));
    assert_eq!((a, b), (None, None), "the transfer aborted on both participants");
}

#[test]
fn a_short_3pc_demo_commits_transfers_and_passes_its_audit() {
    let run = run_demo(&[&["--protocol", "3pc"], SHORT_DEMO].concat());
    assert!(run.report["committed"].as_u64().unwrap() > 100, "{}", run.report);
}

/// Every 3PC node serves metrics (`--metrics-listen`) that count what the client saw: ten
/// transfers committed, one refused (an overdraft) aborted; the coordinator timed one in 8.
#[test]
fn every_3pc_node_serves_metrics_that_match_what_the_client_saw() {
    let dir = tempfile::tempdir().unwrap();
    let (addr1, addr2) = (free_addr(), free_addr());
    let metrics: Vec<(&str, SocketAddr)> = vec![("p1", free_addr()), ("p2", free_addr()), ("c1", free_addr())];
    let listen: Vec<String> = metrics.iter().map(|(_, addr)| addr.to_string()).collect();
    let (peer1, peer2) = (format!("p1={addr1}"), format!("p2={addr2}"));
    fn participant_flags<'a>(peer: &'a str, listen: &'a str) -> [&'a str; 6] {
        ["--protocol", "3pc", "--threepc-peer", peer, "--metrics-listen", listen]
    }
    let p1 = Node::participant_at("p1", dir.path(), addr1, &participant_flags(&peer2, &listen[0]));
    let p2 = Node::participant_at("p2", dir.path(), addr2, &participant_flags(&peer1, &listen[1]));
    let c1 = Node::coordinator(dir.path(), &[&p1, &p2], &["--protocol", "3pc", "--metrics-listen", &listen[2]], &[]);

    let mut client = Client::connect(c1.addr, common::client_options(&c1.data_dir)).expect("registering");
    // A 3PC participant locks without waiting and releases a decided transaction's locks
    // once its Decided record is durable: each committed transfer takes keys of its own,
    // so none is refused for a lock the last one still holds.
    let transfer = |client: &mut Client, from: &str, to: &str, amount: i64| {
        client.submit(vec![add(1, from, -amount, 0), add(2, to, amount, i64::MIN)]).expect("an outcome")
    };
    assert!(client.submit(vec![add(1, "a", 100, 0), add(2, "b", 0, i64::MIN)]).unwrap().is_committed());
    // Refused by the floor, or by the funding's lock if p1 has not released it yet.
    assert!(!transfer(&mut client, "a", "b", 1_000).is_committed(), "an overdraft aborts");
    for round in 0..9 {
        let (from, to) = (format!("from{round}"), format!("to{round}"));
        let outcome = transfer(&mut client, &from, &to, -1);
        assert!(outcome.is_committed(), "{outcome:?}");
    }
    let committed = 10.0;

    let decided = |s: &Scrape, outcome: &str| s.value("twophase_transactions_total", &[("outcome", outcome)]);
    let within = Duration::from_secs(30);
    // Until every count is there: the gauges are published every 100 ms, so a scrape may
    // show the last commit before the transaction has left the coordinator's books.
    let c1_scrape = common::scrape_until("c1", metrics[2].1, within, |s| {
        decided(s, "committed") == Some(committed) && s.value("twophase_transactions_in_flight", &[]) == Some(0.0)
    });
    assert_eq!(decided(&c1_scrape, "committed"), Some(committed), "the coordinator counts what the client saw");
    assert_eq!(decided(&c1_scrape, "aborted"), Some(1.0));
    let aborts: f64 = c1_scrape.find("twophase_aborts_total", &[]).map(|sample| sample.value).sum();
    assert_eq!(aborts, 1.0, "one abort, by its reason");
    assert_eq!(c1_scrape.value("twophase_transactions_in_flight", &[]), Some(0.0));
    assert_eq!(c1_scrape.value("twophase_coordinator_epoch", &[]), Some(1.0), "a first start");
    assert!(c1_scrape.value("twophase_log_records_total", &[]) >= Some(11.0), "c1 logs every transaction");
    // Eleven requests, one after another: one or two of them timed from arrival to reply.
    let timed = c1_scrape.value("twophase_transaction_seconds_count", &[]).unwrap();
    assert!((1.0..=2.0).contains(&timed), "{timed} of 11 requests timed");
    assert!(c1_scrape.value("twophase_transaction_seconds_sum", &[]) > Some(0.0));
    for (name, addr) in &metrics[..2] {
        let scraped = common::scrape_until(name, *addr, within, |s| {
            decided(s, "committed") == Some(committed) && s.value("twophase_transactions_undecided", &[]) == Some(0.0)
        });
        assert_eq!(decided(&scraped, "committed"), Some(committed), "{name} applied every commit");
        assert!(decided(&scraped, "aborted") <= Some(1.0), "{name} aborted at most the overdraft");
        assert_eq!(scraped.value("twophase_transactions_undecided", &[]), Some(0.0), "{name}");
        assert_eq!(scraped.value("twophase_split_decisions_total", &[]), Some(0.0), "{name}");
        assert!(scraped.value("twophase_log_records_total", &[]) > Some(0.0), "{name} logs");
    }
}
