//! Snapshots and checkpoints with real processes: a coordinator that checkpoints and
//! participants that snapshot every few records restart from those files plus the log after
//! them, keep every balance, and still answer a retried request with its committed outcome
//! (exactly-once survives the records the checkpoint replaced).

mod common;

use std::time::Duration;

use common::{Node, add, dump_ints, eventually};
use twophase_engine::{ClientId, Outcome};
use twophase_net::{Client, ClientOptions};

/// The identity the client's session is bound to; a later client resumes it.
const IDENTITY: &str = "checkpoints-test";
const EVERY: &str = "40";
const TRANSFERS: i64 = 150;

/// A client of [`IDENTITY`]: a new session, or `session` resumed.
fn client(coordinator: &Node, session: Option<ClientId>) -> Client {
    let options = ClientOptions {
        client_id: session,
        identity: Some(IDENTITY.into()),
        request_timeout: Duration::from_secs(20),
        ..common::client_options(&coordinator.data_dir)
    };
    Client::connect(coordinator.addr, options).expect("connecting to the coordinator")
}

fn balances(p1: &Node, p2: &Node) -> (Option<i64>, Option<i64>) {
    (dump_ints(p1).0.get("a").copied(), dump_ints(p2).0.get("b").copied())
}

#[test]
fn nodes_restart_from_their_snapshots_and_keep_balances_and_outcomes() {
    let dir = tempfile::tempdir().unwrap();
    let snapshot_flags = ["--snapshot-every", EVERY];
    let mut p1 = Node::participant("p1", dir.path(), &[]);
    let mut p2 = Node::participant("p2", dir.path(), &[]);
    // Restart the participants with the snapshot interval (Node::participant takes no flags).
    for node in [&mut p1, &mut p2] {
        node.stop();
        node.restart_with(&snapshot_flags, &[]);
    }
    let mut coordinator = Node::coordinator(dir.path(), &[&p1, &p2], &["--checkpoint-every", EVERY], &[]);

    let mut first = client(&coordinator, None);
    let session = first.client_id();
    for seq in 1..=TRANSFERS {
        let outcome = first.submit(vec![add(1, "a", 1, i64::MIN), add(2, "b", 1, i64::MIN)]).unwrap();
        assert!(outcome.is_committed(), "transfer {seq}: {outcome:?}");
    }
    for (node, file) in [(&coordinator, "c1/checkpoint.bin"), (&p1, "p1/snapshot.bin"), (&p2, "p2/snapshot.bin")] {
        eventually(&format!("{} writes {file}", node.name), Duration::from_secs(20), || {
            dir.path().join(file).exists().then_some(())
        });
    }

    for node in [&mut coordinator, &mut p1, &mut p2] {
        node.stop();
    }
    p1.restart(&[]);
    p2.restart(&[]);
    coordinator.restart(&[]);
    // Every commit survives the restart; the last ones may be applied only once the
    // restarted coordinator re-drives (or resolves) them, so wait for that.
    let all = (Some(TRANSFERS), Some(TRANSFERS));
    eventually("every commit to be applied after the restart", Duration::from_secs(20), || {
        (balances(&p1, &p2) == all).then_some(())
    });

    // The same client again: its first request is seq 1, committed long before the last
    // checkpoint. It must get that outcome back, not run a second time.
    let mut again = client(&coordinator, Some(session));
    let outcome = again.submit(vec![add(1, "a", 1, i64::MIN), add(2, "b", 1, i64::MIN)]).unwrap();
    assert!(matches!(outcome, Outcome::Committed { .. }), "{outcome:?}");
    assert_eq!(balances(&p1, &p2), (Some(TRANSFERS), Some(TRANSFERS)), "a retry never executes twice");
    for node in [&mut coordinator, &mut p1, &mut p2] {
        node.stop();
    }
}
