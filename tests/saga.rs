//! Sagas against real processes: a saga that completes, one whose third step fails and whose
//! first two steps are compensated (checked in the participants' stores by admin dump), the
//! `twophase saga` command, and a coordinator killed (SIGKILL, by failpoint) mid-saga whose
//! restart finishes the saga with every step applied exactly once.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::thread;
use std::time::Duration;

use bytes::Bytes;
use common::{Cluster, Node, dump_ints, eventually};
use twophase_engine::{AbortReason, Op, OpKind, Outcome, ParticipantId};
use twophase_net::{Client, ClientOptions};

const SETTLE: Duration = Duration::from_secs(30);

fn add(key: &str, delta: i64, floor: i64) -> Op {
    // The saga builder sets each op's participant to its step's.
    Op { participant: ParticipantId(0), key: Bytes::from(key.to_string()), kind: OpKind::Add { delta, floor } }
}

/// Every integer of every participant, by "participant/key".
fn store(participants: &[&Node]) -> BTreeMap<String, i64> {
    participants
        .iter()
        .flat_map(|node| dump_ints(node).0.into_iter().map(move |(key, value)| (format!("{}/{key}", node.name), value)))
        .collect()
}

fn expect_store(participants: &[&Node], expected: &[(&str, i64)]) {
    let expected: BTreeMap<String, i64> = expected.iter().map(|(k, v)| (k.to_string(), *v)).collect();
    eventually("the store to hold the saga's effects", SETTLE, || (store(participants) == expected).then_some(()));
}

struct Set {
    coordinator: Node,
    p1: Node,
    p2: Node,
    _dir: tempfile::TempDir,
}

impl Set {
    fn start(coordinator_env: &[(&str, &str)]) -> Set {
        let dir = tempfile::tempdir().unwrap();
        let p1 = Node::participant("p1", dir.path(), &[]);
        let p2 = Node::participant("p2", dir.path(), &[]);
        let coordinator = Node::coordinator(dir.path(), &[&p1, &p2], &[], coordinator_env);
        Set { coordinator, p1, p2, _dir: dir }
    }

    fn options(&self) -> ClientOptions {
        ClientOptions {
            request_timeout: Duration::from_secs(5),
            busy_backoff: Duration::from_millis(200),
            max_attempts: 100,
            ..common::client_options(&self.coordinator.data_dir)
        }
    }

    fn client(&self) -> Client {
        Client::connect(self.coordinator.addr, self.options()).expect("connecting to the coordinator")
    }

    fn stop(mut self) {
        self.coordinator.stop();
        self.p1.stop();
        self.p2.stop();
    }
}

fn ids(client: &Client) -> (ParticipantId, ParticipantId) {
    let directory = client.directory();
    (directory.require_participant("p1").unwrap(), directory.require_participant("p2").unwrap())
}

#[test]
fn a_saga_completes_and_a_failing_third_step_compensates_the_first_two() {
    let set = Set::start(&[]);
    let mut client = set.client();
    let (p1, p2) = ids(&client);
    let outcome = client
        .saga()
        .step(p1, vec![add("alice", 100, i64::MIN)])
        .compensate(p1, vec![add("alice", -100, i64::MIN)])
        .step(p2, vec![add("bob", 5, i64::MIN)])
        .run()
        .unwrap();
    assert_eq!(outcome, Outcome::Committed { reads: vec![] });
    expect_store(&[&set.p1, &set.p2], &[("p1/alice", 100), ("p2/bob", 5)]);

    let outcome = client
        .saga()
        .step(p1, vec![add("alice", -30, 0)])
        .compensate(p1, vec![add("alice", 30, i64::MIN)])
        .step(p2, vec![add("bob", 30, i64::MIN)])
        .compensate(p2, vec![add("bob", -30, i64::MIN)])
        .step(p1, vec![add("carol", -1, 0)]) // Overdraft: carol has nothing.
        .run()
        .unwrap();
    assert!(
        matches!(&outcome, Outcome::Aborted { reason: AbortReason::Constraint { participant, .. } } if *participant == p1),
        "{outcome:?}"
    );
    // Both earlier steps applied and were undone; the failed one never applied. (carol
    // stays absent: the failed step wrote nothing.)
    expect_store(&[&set.p1, &set.p2], &[("p1/alice", 100), ("p2/bob", 5)]);
    set.stop();
}

#[test]
fn the_saga_command_runs_steps_and_reports_compensation_by_exit_status() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(2, dir.path());
    let saga = |args: &[&str]| {
        Command::new(common::binary())
            .args(["saga", "--config"])
            .arg(cluster.client_config())
            .args(args)
            .output()
            .expect("running twophase saga")
    };
    let done = saga(&["--step", "add p1:a=10", "--compensate", "add p1:a=-10", "--step", "add p2:b=10"]);
    assert!(done.status.success(), "{done:?}");
    assert!(String::from_utf8_lossy(&done.stdout).contains("completed"), "{done:?}");
    let failed =
        saga(&["--step", "add p1:a=-5,floor=0", "--compensate", "add p1:a=5", "--step", "add p2:c=-1,floor=0"]);
    assert_eq!(failed.status.code(), Some(1), "{failed:?}");
    assert!(String::from_utf8_lossy(&failed.stdout).contains("compensated"), "{failed:?}");
    let misplaced = saga(&["--compensate", "add p1:a=5", "--step", "add p1:a=-5"]);
    assert_eq!(misplaced.status.code(), Some(2), "{misplaced:?}");
    let mut client = cluster.client();
    let reads = common::read_ints(&mut client, &[(1, "a"), (2, "b")]);
    assert_eq!(reads, vec![Some(10), Some(10)], "the compensated saga left a as it was");
    cluster.stop();
}

#[test]
fn a_coordinator_killed_mid_saga_finishes_it_after_its_restart_each_step_once() {
    // The second prepare released is the second step's: the first step has committed.
    let mut set = Set::start(&[("TWOPHASE_FAILPOINT", "coordinator-prepare-sent@2")]);
    let addr = set.coordinator.addr;
    let options = set.options();
    let running = thread::spawn(move || {
        let mut client = Client::connect(addr, options).expect("connecting");
        let (p1, p2) = ids(&client);
        client
            .saga()
            .step(p1, vec![add("alice", -10, i64::MIN)])
            .compensate(p1, vec![add("alice", 10, i64::MIN)])
            .step(p2, vec![add("bob", 10, i64::MIN)])
            .compensate(p2, vec![add("bob", -10, i64::MIN)])
            .step(p1, vec![add("carol", 1, i64::MIN)])
            .run()
    });
    set.coordinator.expect_killed(SETTLE);
    set.coordinator.restart(&[]);
    let outcome = running.join().unwrap().expect("the client's retry hears the resumed saga's outcome");
    assert_eq!(outcome, Outcome::Committed { reads: vec![] });
    expect_store(&[&set.p1, &set.p2], &[("p1/alice", -10), ("p1/carol", 1), ("p2/bob", 10)]);
    set.stop();
}
