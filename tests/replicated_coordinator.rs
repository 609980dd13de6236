//! A replicated coordinator group (`--peer`, issue 18) as real processes on loopback: three
//! coordinators and two participants. Transactions committed through the leader are
//! acknowledged; after `kill -9` of the leader another member leads, commits through it,
//! every acknowledged transaction is committed at the participants and nothing stays
//! prepared or in doubt.

mod common;

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{CLUSTER, Node, add, certs_dir, client_options, dump_ints, eventually, make_cert};
use twophase_net::{Client, ClientOptions};

const MEMBERS: [&str; 3] = ["c1", "c2", "c3"];
const ACKNOWLEDGED_BEFORE_KILL: i64 = 20;
/// Generous: the machine running the tests may be busy compiling.
const ELECTION_WAIT: Duration = Duration::from_secs(30);

/// One member's process and every line it printed on stdout.
struct Member {
    name: &'static str,
    addr: SocketAddr,
    process: Child,
    stdout: Arc<Mutex<Vec<String>>>,
}

impl Member {
    /// The term of the last `leads term T` line it printed, if any.
    fn led_term(&self) -> Option<u64> {
        let lines = self.stdout.lock().unwrap();
        lines.iter().rev().find_map(|line| {
            let rest = line.split_once(" leads term ")?.1;
            rest.split_whitespace().next()?.parse().ok()
        })
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Free loopback ports for the members (the `--peer` list must name them all up front).
fn free_addrs(count: usize) -> Vec<SocketAddr> {
    let listeners: Vec<TcpListener> = (0..count).map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    listeners.iter().map(|listener| listener.local_addr().unwrap()).collect()
}

fn start_member(dir: &Path, name: &'static str, addrs: &[SocketAddr], participants: &[Node]) -> Member {
    let addr = addrs[MEMBERS.iter().position(|m| *m == name).unwrap()];
    let mut command = Command::new(common::binary());
    command.args(["coordinator", "--id", name, "--listen", &addr.to_string(), "--data-dir"]);
    command.arg(dir.join(name));
    command.args(make_cert(&certs_dir(dir), CLUSTER, "coordinator", name));
    for participant in participants {
        command.args(["--participant", &format!("{}={}", participant.name, participant.addr)]);
    }
    for (member, member_addr) in MEMBERS.iter().zip(addrs) {
        command.args(["--peer", &format!("{member}={member_addr}")]);
    }
    command.env_remove("TWOPHASE_FAILPOINT").env("RUST_LOG", "info");
    let mut process = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let stdout = Arc::new(Mutex::new(Vec::new()));
    let (lines, out) = (stdout.clone(), process.stdout.take().unwrap());
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            lines.lock().unwrap().push(line);
        }
    });
    let err = process.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            eprintln!("[{name}] {line}");
        }
    });
    Member { name, addr, process, stdout }
}

/// The member that leads the highest term any live member announced.
fn leader(members: &[Member]) -> Option<&Member> {
    members.iter().filter_map(|m| m.led_term().map(|term| (term, m))).max_by_key(|(term, _)| *term).map(|(_, m)| m)
}

fn options(dir: &Path) -> ClientOptions {
    ClientOptions { request_timeout: Duration::from_secs(10), max_attempts: 1, ..client_options(dir) }
}

/// Adds 1 to `a` at p1 and `b` at p2 through `client`; whether it was acknowledged committed.
fn transfer(client: &mut Client) -> bool {
    client.submit(vec![add(1, "a", 1, i64::MIN), add(2, "b", 1, i64::MIN)]).is_ok_and(|outcome| outcome.is_committed())
}

#[test]
fn the_group_commits_through_its_leader_and_a_new_leader_finishes_after_a_kill() {
    let dir = tempfile::tempdir().unwrap();
    let participants = vec![Node::participant("p1", dir.path(), &[]), Node::participant("p2", dir.path(), &[])];
    let addrs = free_addrs(MEMBERS.len());
    let mut members: Vec<Member> =
        MEMBERS.iter().map(|name| start_member(dir.path(), name, &addrs, &participants)).collect();

    // (a) Through the leader, every transaction is acknowledged committed.
    let first = eventually("a leader", ELECTION_WAIT, || leader(&members).map(|m| (m.name, m.addr)));
    let mut client =
        eventually("a session at the leader", ELECTION_WAIT, || Client::connect(first.1, options(dir.path())).ok());
    for n in 0..ACKNOWLEDGED_BEFORE_KILL {
        assert!(transfer(&mut client), "transaction {n} through leader {} was not acknowledged committed", first.0);
    }
    drop(client);

    // A follower serves no client.
    let follower = members.iter().find(|m| m.name != first.0).unwrap();
    let refused = Client::connect(follower.addr, options(dir.path())).ok().map(|mut c| transfer(&mut c));
    assert_ne!(refused, Some(true), "follower {} committed a transaction", follower.name);

    // (b) kill -9 the leader: another member leads a later term and commits.
    let index = members.iter().position(|m| m.name == first.0).unwrap();
    let killed = members.remove(index);
    let killed_term = killed.led_term().unwrap();
    drop(killed);
    let second = eventually("a new leader", ELECTION_WAIT, || {
        leader(&members).filter(|m| m.led_term() > Some(killed_term)).map(|m| (m.name, m.addr))
    });
    assert_ne!(second.0, first.0);
    eventually("a commit through the new leader", ELECTION_WAIT, || {
        let mut client = Client::connect(second.1, options(dir.path())).ok()?;
        transfer(&mut client).then_some(())
    });

    // Every acknowledged transaction is committed at both participants, nothing stays
    // prepared or in doubt. (A transaction whose ack was lost may have committed too.)
    eventually("the participants to settle", ELECTION_WAIT, || {
        let (p1, p1_open) = dump_ints(&participants[0]);
        let (p2, p2_open) = dump_ints(&participants[1]);
        let settled = p1_open == (0, 0) && p2_open == (0, 0);
        let (a, b) = (p1.get("a").copied().unwrap_or(0), p2.get("b").copied().unwrap_or(0));
        (settled && a == b && a > ACKNOWLEDGED_BEFORE_KILL).then_some(())
    });
}
