//! Three-phase commit with real processes (`--protocol 3pc`): a coordinator killed by a
//! failpoint at a chosen step of one cross-participant transfer, and participants that
//! terminate it on their own, without the coordinator (which is not restarted), as Skeen's
//! termination protocol says: any pre-committed → commit, all uncertain → abort. Their
//! state is read through the admin `Dump`. And the demo's audit under `--protocol 3pc`.
//!
//! The transfer moves 10 from `a` on p1 to `b` on p2, both absent (0) before: "committed"
//! is a = -10 and b = 10, "aborted" is both absent. Waits poll with generous deadlines
//! (termination starts seconds after the coordinator falls silent, on a loaded machine).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Node, SHORT_DEMO, add, dump_ints, eventually, free_addr, run_demo};
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
