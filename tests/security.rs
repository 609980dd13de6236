//! Identity on every connection, with real processes: a participant and a coordinator
//! started with certificates refuse every peer that is not what the cluster allows — with
//! an `Error` frame naming why — and whatever such a peer sends after its `Hello` never
//! reaches the node's state; a coordinator connection that opens and closes does not stall
//! the participant's answers.

mod common;

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::{CLUSTER, Node, add, certs_dir, dump_ints, make_cert, read_frames, tls_connect as connect};
use twophase_engine::{Epoch, LocalOp, OpKind, ToParticipant, TxId};
use twophase_net::{Client, ErrorCode, Frame, Hello, Role};

/// A certificate and its key.
type Identity = (PathBuf, PathBuf);

/// The files `make_cert` wrote for `role`/`name` in `dir`.
fn identity(dir: &Path, cluster: &str, role: &str, name: &str) -> Identity {
    make_cert(dir, cluster, role, name);
    (dir.join(format!("{role}-{name}.pem")), dir.join(format!("{role}-{name}.key")))
}

/// Sends `hello` and, right behind it, `then` (what an intruder would do next), and returns
/// the server's one answer: the code and message of its `Error` frame.
fn refused(
    addr: SocketAddr,
    ca: &Path,
    client: Option<&Identity>,
    hello: Hello,
    then: &[Frame],
) -> (ErrorCode, String) {
    let mut stream = connect(addr, ca, client);
    let mut bytes = Frame::Hello(hello).to_bytes().to_vec();
    for frame in then {
        frame.encode(&mut bytes);
    }
    // The server may close before all of it is read: its answer is what counts.
    let _ = stream.write_all(&bytes).and_then(|()| stream.flush());
    match &read_frames(&mut stream, |_| false)[..] {
        [Frame::Error(error)] => (error.code, error.message.clone()),
        other => panic!("expected one Error frame from {addr}, got {other:?}"),
    }
}

fn hello(role: Role, cluster: &str, node: &str, epoch: Epoch) -> Hello {
    Hello { role, cluster: cluster.into(), node: node.into(), epoch }
}

/// What an intruder sends a participant after its `Hello`: a prepare from the highest epoch
/// with the highest txid, which would depose the real coordinator and make every one of its
/// prepares stale if it were ever processed.
fn intruder_prepare() -> Frame {
    let op = LocalOp { index: 0, key: Bytes::from_static(b"stolen"), kind: OpKind::Put(Bytes::from_static(b"x")) };
    let prepare = ToParticipant::Prepare { txid: TxId::new(Epoch::MAX, TxId::COUNTER_MAX), ops: vec![op], sole: true };
    Frame::ToParticipant { epoch: Epoch::MAX, messages: vec![prepare] }
}

/// `twophase inspect-log` of a stopped node: every record of its log, decoded.
fn inspect_log(dir: &Path) -> String {
    let out = Command::new(common::binary()).arg("inspect-log").arg(dir).output().unwrap();
    assert!(out.status.success(), "inspect-log: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn transfer(amount: i64) -> Vec<twophase_engine::Op> {
    vec![add(1, "a", -amount, i64::MIN), add(2, "b", amount, i64::MIN)]
}

#[test]
fn peers_without_the_right_certificate_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certs_dir(dir.path());
    let mut p1 = Node::participant("p1", dir.path(), &[]);
    let mut p2 = Node::participant("p2", dir.path(), &[]);
    let mut c1 = Node::coordinator(dir.path(), &[&p1, &p2], &[], &[]);
    let mut client = Client::connect(c1.addr, common::client_options(dir.path())).unwrap();
    for amount in 1..=3 {
        assert!(client.submit(transfer(amount)).unwrap().is_committed());
    }
    drop(client);
    let settled = common::eventually("p1 to apply every commit", Duration::from_secs(20), || {
        let (values, counts) = dump_ints(&p1);
        (counts == (0, 0) && values.get("a") == Some(&-6)).then_some((values, counts))
    });
    let ca = certs.join("ca.pem");

    // The coordinator's port: only clients and admins of the cluster.
    let participant_cert = identity(&certs, CLUSTER, "participant", "p1");
    let cases: Vec<(&str, Option<&Identity>, Hello, ErrorCode)> = vec![
        ("no certificate", None, hello(Role::Client, CLUSTER, "anyone", Epoch(0)), ErrorCode::Unauthenticated),
        (
            "a participant certificate",
            Some(&participant_cert),
            hello(Role::Participant, CLUSTER, "p1", Epoch(0)),
            ErrorCode::Forbidden,
        ),
    ];
    for (what, cert, hello, code) in cases {
        let (got, message) = refused(c1.addr, &ca, cert, hello, &[]);
        assert_eq!(got, code, "coordinator, {what}: {message}");
    }

    // Nothing may happen on p1 from now on but the intruders: stop the coordinator, take p1's
    // log as it is, and start p1 again.
    c1.stop();
    p1.stop();
    let log_before = inspect_log(&dir.path().join("p1"));
    p1.restart(&[]);

    let other_ca = tempfile::tempdir().unwrap();
    let foreign = identity(other_ca.path(), CLUSTER, "coordinator", "c1");
    let other_cluster = identity(&certs, "elsewhere", "coordinator", "c-elsewhere");
    let mallory = identity(&certs, CLUSTER, "client", "mallory");
    let coordinator = identity(&certs, CLUSTER, "coordinator", "c1");
    let high = Epoch(Epoch::MAX.0);
    let cases: Vec<(&str, Option<&Identity>, Hello, ErrorCode)> = vec![
        ("no certificate", None, hello(Role::Coordinator, CLUSTER, "c1", high), ErrorCode::Unauthenticated),
        (
            "a certificate of another CA",
            Some(&foreign),
            hello(Role::Coordinator, CLUSTER, "c1", high),
            ErrorCode::Unauthenticated,
        ),
        (
            "a certificate of another cluster",
            Some(&other_cluster),
            hello(Role::Coordinator, "elsewhere", "c-elsewhere", high),
            ErrorCode::Unauthenticated,
        ),
        (
            "a client certificate claiming coordinator",
            Some(&mallory),
            hello(Role::Coordinator, CLUSTER, "mallory", high),
            ErrorCode::Forbidden,
        ),
        (
            "a client certificate claiming admin",
            Some(&mallory),
            hello(Role::Admin, CLUSTER, "mallory", Epoch(0)),
            ErrorCode::Forbidden,
        ),
        (
            "a client certificate as a client",
            Some(&mallory),
            hello(Role::Client, CLUSTER, "mallory", Epoch(0)),
            ErrorCode::Forbidden,
        ),
        (
            "a coordinator certificate claiming another name",
            Some(&coordinator),
            hello(Role::Coordinator, CLUSTER, "c2", high),
            ErrorCode::Forbidden,
        ),
    ];
    for (what, cert, hello, code) in cases {
        let (got, message) = refused(p1.addr, &ca, cert, hello, &[intruder_prepare()]);
        assert_eq!(got, code, "participant, {what}: {message}");
        // A peer that proved no membership learns nothing of the cluster's name.
        if code == ErrorCode::Unauthenticated {
            assert!(!message.contains(CLUSTER), "participant, {what}: the refusal names the cluster: {message}");
        }
    }

    // p1 still serves its admin, with the very same state, and logged nothing.
    assert_eq!(dump_ints(&p1), settled, "a refused peer changed p1's state");
    p1.stop();
    assert_eq!(inspect_log(&dir.path().join("p1")), log_before, "a refused peer made p1 log something");

    // Its epoch and highest txid are unchanged: the real coordinator's prepares still commit.
    p1.restart(&[]);
    c1.restart(&[]);
    let mut client = Client::connect(c1.addr, common::client_options(dir.path())).unwrap();
    assert!(client.submit(transfer(4)).unwrap().is_committed(), "the real coordinator was deposed");
    for node in [&mut c1, &mut p1, &mut p2] {
        node.stop();
    }
}

#[test]
fn a_coordinator_connection_that_opens_and_closes_does_not_stall_commits() {
    let dir = tempfile::tempdir().unwrap();
    let certs = certs_dir(dir.path());
    let mut p1 = Node::participant("p1", dir.path(), &[]);
    let mut p2 = Node::participant("p2", dir.path(), &[]);
    let mut c1 = Node::coordinator(dir.path(), &[&p1, &p2], &[], &[]);
    let mut client = Client::connect(c1.addr, common::client_options(dir.path())).unwrap();
    assert!(client.submit(transfer(1)).unwrap().is_committed());

    // Another coordinator of the cluster connects to p1, claiming a higher epoch, is
    // welcomed, and goes away without a word.
    let c2 = identity(&certs, CLUSTER, "coordinator", "c2");
    let mut stream = connect(p1.addr, &certs.join("ca.pem"), Some(&c2));
    stream.write_all(&Frame::Hello(hello(Role::Coordinator, CLUSTER, "c2", Epoch(1000))).to_bytes()).unwrap();
    stream.flush().unwrap();
    let answer = read_frames(&mut stream, |frames| !frames.is_empty());
    assert!(matches!(answer[..], [Frame::Welcome(_)]), "expected a Welcome, got {answer:?}");
    drop(stream);
    // An admin round trip on p1: it has seen the close by the time it answers.
    dump_ints(&p1);

    // p1 answers the coordinator it serves: every transfer commits (none waits for a
    // prepare timeout because p1's vote went nowhere).
    for amount in 2..=21 {
        let outcome = client.submit(transfer(amount)).unwrap();
        assert!(outcome.is_committed(), "transfer {amount} after the intruder left: {outcome:?}");
    }
    for node in [&mut c1, &mut p1, &mut p2] {
        node.stop();
    }
}
