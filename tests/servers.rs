//! The servers as real processes: transfers, constraints, concurrency, bad input and restarts.

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpStream};
use std::time::Duration;

use common::{Cluster, add, eventually, get, read_ints};
use twophase_engine::{AbortReason, Op, OpKind, Outcome, ParticipantId};
use twophase_net::{ClientError, ErrorCode, Frame, Pipeline, SagaError, TxError};

#[test]
fn a_transfer_across_three_participants_commits_and_an_overdraft_aborts() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(3, dir.path());
    let mut client = cluster.client();
    let setup = vec![add(1, "alice", 100, 0), add(2, "bob", 100, 0), add(3, "carol", 100, 0)];
    assert!(client.submit(setup).unwrap().is_committed());

    let transfer = vec![add(1, "alice", -30, 0), add(2, "bob", 10, i64::MIN), add(3, "carol", 20, i64::MIN)];
    assert!(client.submit(transfer).unwrap().is_committed());
    let keys = [(1, "alice"), (2, "bob"), (3, "carol")];
    assert_eq!(read_ints(&mut client, &keys), vec![Some(70), Some(110), Some(120)]);

    let overdraft = vec![add(1, "alice", -1000, 0), add(2, "bob", 1000, i64::MIN)];
    match client.submit(overdraft).unwrap() {
        Outcome::Aborted { reason: AbortReason::Constraint { participant, key, value, delta, floor } } => {
            assert_eq!((participant, &key[..], value, delta, floor), (ParticipantId(1), &b"alice"[..], 70, -1000, 0));
        }
        other => panic!("expected a constraint abort, got {other:?}"),
    }
    assert_eq!(read_ints(&mut client, &keys), vec![Some(70), Some(110), Some(120)], "the abort changed nothing");

    // The same through the command line, human and JSON.
    let out = cluster.tx(&["add", "p1:alice=-5,floor=0", "add", "p3:carol=5"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "committed");
    let out = cluster.tx(&["add", "p1:alice=-500,floor=0", "add", "p2:bob=500"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stdout).starts_with("aborted: constraint: key \"alice\" on p1 is 65"),
        "{out:?}"
    );
    let out = cluster.tx(&["--json", "get", "p1:alice", "get", "p3:carol"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["outcome"], "committed");
    assert_eq!(json["reads"][0]["integer"], 65);
    assert_eq!(json["reads"][1]["integer"], 125);
    cluster.stop();
}

#[test]
fn concurrent_increments_of_one_key_are_never_lost() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(2, dir.path());
    let committed: u64 = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    let mut client = cluster.client();
                    let mut committed = 0u64;
                    for _ in 0..150 {
                        let ops = vec![add(1, "counter", 1, i64::MIN), add(2, "counter", 1, i64::MIN)];
                        if client.submit(ops).unwrap().is_committed() {
                            committed += 1;
                        }
                    }
                    committed
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    assert!(committed > 0, "no increment committed at all");
    let mut client = cluster.client();
    let values = read_ints(&mut client, &[(1, "counter"), (2, "counter")]);
    assert_eq!(values, vec![Some(committed as i64), Some(committed as i64)], "every committed increment counts, once");
    cluster.stop();
}

/// Sends `bytes`, then reads until the server closes; returns what it sent back.
fn exchange(addr: std::net::SocketAddr, bytes: &[u8], close_write: bool) -> Vec<u8> {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    stream.write_all(bytes).unwrap();
    if close_write {
        stream.shutdown(Shutdown::Write).unwrap();
    }
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("the server closes the connection");
    answer
}

/// An Error frame: `u32 length | u8 version 1 | u8 kind 3 | u16 code | string`.
fn error_code(answer: &[u8]) -> u16 {
    assert!(answer.len() >= 8, "expected an error frame, got {answer:?}");
    assert_eq!((answer[4], answer[5]), (1, 3), "not an error frame: {answer:?}");
    u16::from_le_bytes([answer[6], answer[7]])
}

#[test]
fn garbage_on_every_port_gets_an_error_and_a_close_and_others_are_still_served() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(3, dir.path());
    let mut wrong_version = vec![12, 0, 0, 0, 9, 1];
    wrong_version.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("random garbage", b"GET / HTTP/1.1\r\nHost: twophase\r\n\r\n".to_vec(), false),
        ("a truncated frame", vec![100, 0, 0, 0, 1, 1, 1, 0], true),
        ("an oversized length", vec![0xff, 0xff, 0xff, 0xff, 1, 1], false),
        ("a wrong protocol version", wrong_version, false),
    ];
    let certs = common::certs_dir(dir.path());
    let admin = (certs.join("admin-local-admin.pem"), certs.join("admin-local-admin.key"));
    for port in cluster.ports() {
        // Plaintext on a TLS port: refused in a plaintext Error frame before anything is parsed.
        let answer = exchange(port, b"GET / HTTP/1.1\r\nHost: twophase\r\n\r\n", false);
        assert_eq!(error_code(&answer), ErrorCode::Unauthenticated.code(), "plaintext to {port}");
        // Inside an authenticated TLS connection the garbage reaches the frame decoder.
        for (name, bytes, close_write) in &cases {
            let mut stream = common::tls_connect(port, &certs.join("ca.pem"), Some(&admin));
            let _ = stream.write_all(bytes).and_then(|()| stream.flush());
            if *close_write {
                stream.conn.send_close_notify();
                let _ = stream.flush();
                let _ = stream.sock.shutdown(Shutdown::Write);
            }
            match &common::read_frames(&mut stream, |_| false)[..] {
                [Frame::Error(error)] => {
                    assert!((1..=7).contains(&error.code.code()), "{name} to {port}: {error}");
                }
                other => panic!("{name} to {port}: expected one Error frame, got {other:?}"),
            }
        }
    }
    let mut client = cluster.client();
    assert!(client.submit(vec![add(1, "x", 1, i64::MIN), add(3, "y", 1, i64::MIN)]).unwrap().is_committed());
    cluster.stop();
}

#[test]
fn an_unknown_participant_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(2, dir.path());
    let mut client = cluster.client();
    let op = Op { participant: ParticipantId(9), key: bytes::Bytes::from_static(b"k"), kind: OpKind::Get };
    match client.submit(vec![op]).unwrap() {
        Outcome::Aborted { reason } => {
            assert_eq!(reason.to_string(), "unknown participant: p9 is not configured on this coordinator")
        }
        other => panic!("expected an abort, got {other:?}"),
    }
    let out = cluster.tx(&["get", "p7:k"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown participant \"p7\"; this coordinator knows: p1, p2"),
        "{out:?}"
    );
    cluster.stop();
}

#[test]
fn a_request_beyond_the_coordinators_limits_is_refused_before_it_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(2, dir.path());
    let long_key = "k".repeat(70_000); // Beyond the wire's 16-bit key length, too.
    let op_with_key =
        |key: &str| Op { participant: ParticipantId(1), key: key.as_bytes().to_vec().into(), kind: OpKind::Get };
    let big_value = || Op {
        participant: ParticipantId(2),
        key: bytes::Bytes::from_static(b"v"),
        kind: OpKind::Put(vec![0u8; 40_000].into()),
    };
    let refused =
        |err: &ClientError, what: &str| matches!(err, ClientError::Invalid { .. }) && err.to_string().contains(what);

    // Each client keeps its connection and goes on: nothing reached the coordinator.
    let mut client = cluster.client();
    let err = client.submit(vec![op_with_key(&long_key)]).unwrap_err();
    assert!(refused(&err, "op 0: key of 70000 bytes exceeds the limit of 1024"), "{err}");
    let err = client.submit(vec![add(1, "a", 1, 0), big_value()]).unwrap_err();
    assert!(refused(&err, "op 1: value of 40000 bytes exceeds the limit of 32768"), "{err}");
    assert!(client.submit(vec![add(1, "a", 1, 0)]).unwrap().is_committed());

    let mut pipeline = Pipeline::connect(cluster.ports()[0], cluster.client_options()).unwrap();
    let err = pipeline.send(vec![op_with_key(&"k".repeat(1025))]).unwrap_err();
    assert!(refused(&err, "key of 1025 bytes"), "{err}");
    let seq = pipeline.send(vec![add(1, "a", 1, 0)]).unwrap();
    pipeline.flush().unwrap();
    let outcomes = eventually_outcomes(&mut pipeline, 1);
    assert_eq!(outcomes.len(), 1);
    assert!(outcomes[0].0 == seq && outcomes[0].1.is_committed(), "{outcomes:?}");

    let mut tx = client.begin().unwrap();
    let err = tx.execute(vec![op_with_key(&long_key)]).unwrap_err();
    assert!(matches!(&err, TxError::Client(inner) if refused(inner, "key of 70000 bytes")), "{err}");
    assert_eq!(tx.execute(vec![get(1, "a")]).unwrap().len(), 1, "the transaction stays open");
    tx.commit().unwrap();

    let err = client.saga().step(ParticipantId(2), vec![big_value()]).run().unwrap_err();
    assert!(matches!(&err, SagaError::Invalid(detail) if detail.contains("step 0: op 0: value of 40000")), "{err}");

    let out = cluster.tx(&["add", &format!("p1:{long_key}=1")]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("not sent, beyond the coordinator's limits") && !stderr.contains("panicked"), "{stderr}");
    assert_eq!(read_ints(&mut client, &[(1, "a")]), vec![Some(2)]);
    cluster.stop();
}

#[test]
fn inspect_log_reads_a_corrupt_log_up_to_the_damage_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(2, dir.path());
    let mut client = cluster.client();
    for amount in 1..=3 {
        assert!(client.submit(vec![add(1, "a", amount, 0), add(2, "b", amount, 0)]).unwrap().is_committed());
    }
    drop(client);
    cluster.stop();
    let p1 = dir.path().join("p1");
    let inspect_dir = |dir: &std::path::Path| {
        std::process::Command::new(common::binary()).arg("inspect-log").arg(dir).output().unwrap()
    };
    let inspect = || inspect_dir(&p1);
    let clean = inspect();
    assert!(clean.status.success(), "{clean:?}");
    assert!(String::from_utf8_lossy(&clean.stdout).contains("PREPARED"), "{clean:?}");
    // The log directory itself is taken for its data directory; any other is refused.
    let of_wal = inspect_dir(&p1.join("wal"));
    assert!(of_wal.status.success() && of_wal.stdout == clean.stdout, "{of_wal:?}");
    let elsewhere = inspect_dir(dir.path());
    let refusal = String::from_utf8_lossy(&elsewhere.stderr);
    assert!(!elsewhere.status.success() && refusal.contains("give a node's data directory"), "{refusal}");

    // The first record's first payload byte (after the group's marker, 25 bytes, and the
    // record's header, 17): later groups make it durable, so this is corruption.
    let segment = std::fs::read_dir(p1.join("wal"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .find(|path| path.extension().is_some_and(|ext| ext == "wal"))
        .unwrap();
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[25 + 17] ^= 0xff;
    std::fs::write(&segment, &bytes).unwrap();
    let out = inspect();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{stdout}\n{stderr}");
    assert!(stdout.starts_with("# 0 records") && stdout.contains("# the records above"), "{stdout}");
    assert!(stderr.contains("wal corruption") && stderr.contains("had been durable"), "{stderr}");
    assert_eq!(std::fs::read(&segment).unwrap(), bytes, "inspecting changed the segment");
}

/// Polls `pipeline` until `count` outcomes arrived (at most 10 s).
fn eventually_outcomes(pipeline: &mut Pipeline, count: usize) -> Vec<(u64, Outcome)> {
    let mut outcomes = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while outcomes.len() < count && std::time::Instant::now() < deadline {
        outcomes.extend(pipeline.poll(Duration::from_millis(100)).unwrap());
    }
    outcomes
}

/// `twophase cluster` restarts at most this many times a minute a node that dies.
const RESTARTS_MAX: usize = 5;

#[test]
fn the_cluster_restarts_a_killed_participant_and_stops_when_one_keeps_dying() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster = Cluster::start(2, dir.path());
    let run = |cluster: &Cluster, args: &[&str]| {
        let out = cluster.tx(args);
        (out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    assert_eq!(run(&cluster, &["add", "p1:alice=100", "add", "p2:bob=100"]).0, Some(0));

    let mut pid = cluster.node_pid("p1").expect("p1 runs as a child of the launcher");
    sigkill(pid);
    let killed = pid;
    pid = eventually("p1 restarted", Duration::from_secs(30), || cluster.node_pid("p1").filter(|new| *new != killed));
    // Back with its data: a read through it sees what was committed before the kill (a
    // read is safe to repeat while the coordinator reconnects), and a transfer commits.
    eventually("a read through the restarted p1", Duration::from_secs(30), || {
        let (code, out) = run(&cluster, &["get", "p1:alice"]);
        (code == Some(0)).then(|| assert!(out.contains("100"), "{out}"))
    });
    assert_eq!(run(&cluster, &["add", "p1:alice=-30,floor=0", "add", "p2:bob=30"]).0, Some(0));
    let (_, out) = run(&cluster, &["get", "p1:alice", "get", "p2:bob"]);
    assert!(out.contains("70") && out.contains("130"), "{out}");

    // It has been restarted once; the next deaths are restarted up to the budget, then one
    // more stops the cluster with a failing status rather than restarting it forever.
    let p1 = cluster.participants[0].1;
    for _ in 1..RESTARTS_MAX {
        sigkill(pid);
        let killed = pid;
        pid = eventually("p1 restarted again", Duration::from_secs(30), || {
            cluster.node_pid("p1").filter(|new| *new != killed)
        });
        eventually("p1 listening again", Duration::from_secs(30), || TcpStream::connect(p1).ok());
    }
    assert!(cluster.wait_exit(Duration::from_millis(200)).is_none(), "the cluster stopped within its budget");
    sigkill(pid);
    let status = cluster.wait_exit(Duration::from_secs(30)).expect("the cluster stops when p1 keeps dying");
    assert!(!status.success(), "a cluster stopped by a node that kept dying must fail: {status}");
}

fn sigkill(pid: u32) {
    // SAFETY: kill(2) on a process of the test's cluster; no memory is involved.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0, "SIGKILL {pid}");
}

#[test]
fn stopping_and_restarting_every_process_keeps_every_committed_balance() {
    let dir = tempfile::tempdir().unwrap();
    let keys = [(1, "a"), (2, "b"), (3, "c")];
    let expected = {
        let cluster = Cluster::start(3, dir.path());
        let mut client = cluster.client();
        assert!(
            client
                .submit(vec![add(1, "a", 1000, 0), add(2, "b", 1000, 0), add(3, "c", 1000, 0)])
                .unwrap()
                .is_committed()
        );
        for i in 0..50 {
            let (from, to) = [(1u16, 2u16), (2, 3), (3, 1)][i % 3];
            let ops = vec![add(from, keys[from as usize - 1].1, -7, 0), add(to, keys[to as usize - 1].1, 7, i64::MIN)];
            assert!(client.submit(ops).unwrap().is_committed());
        }
        let expected = read_ints(&mut client, &keys);
        cluster.stop();
        expected
    };
    assert_eq!(expected.iter().map(|v| v.unwrap()).sum::<i64>(), 3000);
    let cluster = Cluster::start(3, dir.path());
    let mut client = cluster.client();
    assert_eq!(read_ints(&mut client, &keys), expected, "every committed balance survives the restart");
    cluster.stop();
}

#[test]
fn operators_can_list_participants_and_dump_their_state() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(2, dir.path());
    let mut client = cluster.client();
    assert!(client.submit(vec![add(1, "a", 5, 0), add(2, "b", 7, 0)]).unwrap().is_committed());
    let topology = twophase_net::admin::topology(cluster.coordinator, "local", &cluster.admin_security()).unwrap();
    let names: Vec<&str> = topology.iter().map(|(_, name, _)| name.as_str()).collect();
    assert_eq!(names, vec!["p1", "p2"]);
    assert_eq!(topology[1].2, cluster.participants[1].1);
    // A dump reads the store as it is: the client hears Committed before the participants
    // apply (they do once the coordinator's Commit record is durable), so wait for that.
    let (entries, end) = eventually("p2 to apply the commit", Duration::from_secs(10), || {
        let (entries, end) = twophase_net::admin::dump(topology[1].2, "local", &cluster.admin_security()).unwrap();
        (end.prepared == 0).then_some((entries, end))
    });
    assert_eq!(entries, vec![(bytes::Bytes::from_static(b"b"), bytes::Bytes::copy_from_slice(&7i64.to_le_bytes()))]);
    assert_eq!((end.keys, end.prepared, end.in_doubt), (1, 0, 0));
    cluster.stop();
}
