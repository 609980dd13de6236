//! `twophase cluster --coordinators 3`: three coordinators as one Raft group, each with its
//! own certificate; the launcher prints every coordinator's address and role and the leader,
//! and the `client.toml` it writes reaches that leader, whose transactions commit at the
//! participants (which accept whichever coordinator leads).

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};

use common::binary;

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
    let mut process = Command::new(binary())
        .args(["cluster", "--coordinators", "3", "--participants", "2", "--listen", "127.0.0.1:0", "--no-metrics"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting twophase cluster");
    let mut lines = BufReader::new(process.stdout.take().unwrap()).lines();
    let mut coordinators = Vec::new();
    let leader_line = loop {
        let line = lines.next().expect("cluster output ended early").expect("reading cluster output");
        if let Some(coordinator) = coordinator_line(&line) {
            coordinators.push(coordinator);
        } else if line.starts_with("leader: ") {
            break line;
        }
    };
    std::thread::spawn(move || for _ in lines {});

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

    // SAFETY: kill(2) on a child we spawned; no memory is involved.
    unsafe {
        libc::kill(process.id() as i32, libc::SIGTERM);
    }
    let status = process.wait().unwrap();
    assert!(status.success(), "cluster exited with {status}");
}
