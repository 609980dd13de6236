//! A replicated coordinator group (`--peer`, issue 18) as real processes on loopback: three
//! coordinators and two participants.
//!
//! - A client configured with a follower's address only commits: it follows `NotLeader`
//!   (a `Pipeline`, and `twophase tx` given the followers as a comma list, too).
//! - `twophase status` (asked at a follower) shows one leader and two followers, their terms.
//! - Under a stream of requests from one client configured with every member, `kill -9` of
//!   the leader: the client carries on with the new leader, every request gets exactly one
//!   outcome (the participants hold exactly the acknowledged commits, so none ran twice and
//!   none was lost), and nothing stays prepared or in doubt.
//! - A saga on the group completes; one whose leader dies mid-way (a failpoint kills every
//!   member at the second Prepare it releases) is finished by the next leader, each step
//!   applied exactly once.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{CLUSTER, Node, add, certs_dir, client_options, dump_ints, eventually, free_addr, make_cert};
use twophase_engine::{Outcome, ParticipantId};
use twophase_net::{Client, ClientError, ClientOptions, Pipeline, TxError};

const MEMBERS: [&str; 3] = ["c1", "c2", "c3"];
const ACKNOWLEDGED_BEFORE_KILL: usize = 20;
/// Generous: the machine running the tests may be busy compiling.
const ELECTION_WAIT: Duration = Duration::from_secs(30);
/// Group starts tried before a test gives up (each on fresh ports).
const START_ATTEMPTS: u32 = 3;

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

fn start_member(
    dir: &Path,
    name: &'static str,
    addrs: &[SocketAddr],
    participants: &[Node],
    env: &[(&str, &str)],
) -> Member {
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
    command.env_remove("TWOPHASE_FAILPOINT").env("RUST_LOG", "info").envs(env.iter().copied());
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
    ClientOptions { request_timeout: Duration::from_secs(5), failover_timeout: ELECTION_WAIT, ..client_options(dir) }
}

/// Adds 1 to `a` at p1 and `b` at p2 through `client`: its outcome, or the client's error.
fn transfer(client: &mut Client) -> Result<Outcome, twophase_net::ClientError> {
    client.submit(vec![add(1, "a", 1, i64::MIN), add(2, "b", 1, i64::MIN)])
}

/// Three members and two participants, once a leader announced itself.
struct Group {
    dir: tempfile::TempDir,
    participants: Vec<Node>,
    members: Vec<Member>,
    addrs: Vec<SocketAddr>,
}

impl Group {
    fn start() -> Group {
        Group::start_with(&[])
    }

    /// Every member started with `env` set, once a leader announced itself and every member
    /// is still running. The ports come from `free_addr`, below the ephemeral range; should
    /// another program take one before its member binds it anyway, that member exits at once
    /// ("Address already in use") and the whole group starts again on fresh ports.
    fn start_with(env: &[(&str, &str)]) -> Group {
        for attempt in 1..=START_ATTEMPTS {
            let mut group = Group::start_once(env);
            eventually("a leader", ELECTION_WAIT, || leader(&group.members).map(|m| m.name));
            let exited: Vec<&str> = group
                .members
                .iter_mut()
                .filter_map(|m| m.process.try_wait().unwrap().is_some().then_some(m.name))
                .collect();
            if exited.is_empty() {
                return group;
            }
            eprintln!("{exited:?} exited at start (attempt {attempt} of {START_ATTEMPTS}); starting the group again");
        }
        panic!("the group did not start with every member running in {START_ATTEMPTS} attempts");
    }

    fn start_once(env: &[(&str, &str)]) -> Group {
        let dir = tempfile::tempdir().unwrap();
        let participants = vec![Node::participant("p1", dir.path(), &[]), Node::participant("p2", dir.path(), &[])];
        let addrs: Vec<SocketAddr> = MEMBERS.iter().map(|_| free_addr()).collect();
        let members = MEMBERS.iter().map(|name| start_member(dir.path(), name, &addrs, &participants, env)).collect();
        Group { dir, participants, members, addrs }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn leader(&self) -> &Member {
        leader(&self.members).expect("a leader")
    }

    fn follower(&self) -> &Member {
        let leader = self.leader().name;
        self.members.iter().find(|m| m.name != leader).unwrap()
    }

    /// Waits until nothing is prepared or in doubt and returns `(a at p1, b at p2)`.
    fn settled_counts(&self) -> (i64, i64) {
        eventually("the participants to settle", ELECTION_WAIT, || {
            let (p1, p1_open) = dump_ints(&self.participants[0]);
            let (p2, p2_open) = dump_ints(&self.participants[1]);
            let counts = (p1.get("a").copied().unwrap_or(0), p2.get("b").copied().unwrap_or(0));
            (p1_open == (0, 0) && p2_open == (0, 0)).then_some(counts)
        })
    }

    fn status(&self, addr: SocketAddr) -> (Option<i32>, String) {
        status(self.path(), addr)
    }

    /// Restarts (same data directory and address, no environment) every member whose
    /// process has exited; returns how many.
    fn restart_the_dead(&mut self) -> usize {
        let mut restarted = 0;
        for index in 0..self.members.len() {
            if self.members[index].process.try_wait().unwrap().is_none() {
                continue;
            }
            let name = self.members[index].name;
            eprintln!("[test] {name} died; restarting it");
            self.members[index] = start_member(self.dir.path(), name, &self.addrs, &self.participants, &[]);
            restarted += 1;
        }
        restarted
    }

    /// Every integer of p1 and p2 once nothing is prepared or in doubt, by "p/key".
    fn settled_store(&self) -> std::collections::BTreeMap<String, i64> {
        eventually("the participants to settle", ELECTION_WAIT, || {
            let (p1, p1_open) = dump_ints(&self.participants[0]);
            let (p2, p2_open) = dump_ints(&self.participants[1]);
            let store = p1.into_iter().map(|(k, v)| (format!("p1/{k}"), v));
            let store = store.chain(p2.into_iter().map(|(k, v)| (format!("p2/{k}"), v))).collect();
            (p1_open == (0, 0) && p2_open == (0, 0)).then_some(store)
        })
    }
}

/// A three-step saga: alice -10 at p1, bob +10 at p2, carol +1 at p1 (the first two with
/// compensations).
fn run_saga(client: &mut Client) -> Result<Outcome, twophase_net::SagaError> {
    let (p1, p2) = (ParticipantId(1), ParticipantId(2));
    client
        .saga()
        .step(p1, vec![add(1, "alice", -10, i64::MIN)])
        .compensate(p1, vec![add(1, "alice", 10, i64::MIN)])
        .step(p2, vec![add(2, "bob", 10, i64::MIN)])
        .compensate(p2, vec![add(2, "bob", -10, i64::MIN)])
        .step(p1, vec![add(1, "carol", 1, i64::MIN)])
        .run()
}

fn store_of(entries: &[(&str, i64)]) -> std::collections::BTreeMap<String, i64> {
    entries.iter().map(|(key, value)| (key.to_string(), *value)).collect()
}

#[test]
fn a_saga_on_the_group_completes() {
    let group = Group::start();
    let every_member: Vec<SocketAddr> = group.members.iter().map(|m| m.addr).collect();
    let mut client = Client::connect(&every_member[..], options(group.path())).unwrap();
    assert_eq!(run_saga(&mut client).unwrap(), Outcome::Committed { reads: vec![] });
    assert_eq!(group.settled_store(), store_of(&[("p1/alice", -10), ("p1/carol", 1), ("p2/bob", 10)]));
}

#[test]
fn a_saga_whose_leader_dies_mid_way_is_finished_by_the_next_leader_each_step_once() {
    // The first leader releases the first step's Prepare, then the second step's, and dies
    // (its first step committed). A later leader armed alike may die too: every member that
    // dies is restarted without the failpoint, so the group always regains a majority.
    let mut group = Group::start_with(&[("TWOPHASE_FAILPOINT", "coordinator-prepare-sent@2")]);
    let every_member: Vec<SocketAddr> = group.members.iter().map(|m| m.addr).collect();
    let mut client = Client::connect(&every_member[..], options(group.path())).unwrap();
    let running = std::thread::spawn(move || run_saga(&mut client).map_err(|err| err.to_string()));
    let mut deaths = 0;
    let deadline = std::time::Instant::now() + 3 * ELECTION_WAIT;
    while !running.is_finished() {
        assert!(std::time::Instant::now() < deadline, "the saga did not end");
        deaths += group.restart_the_dead();
        std::thread::sleep(Duration::from_millis(20));
    }
    deaths += group.restart_the_dead();
    let outcome = running.join().unwrap().expect("the client's retries hear the resumed saga's outcome");
    assert!(deaths >= 1, "the first leader did not die mid-saga");
    // Completed, or compensated if a step kept failing: either way each step (and each
    // compensation) applied once.
    eprintln!("saga: {outcome:?} after {deaths} member deaths");
    let store = group.settled_store();
    let value = |key: &str| store.get(key).copied().unwrap_or(0);
    let values = (value("p1/alice"), value("p2/bob"), value("p1/carol"));
    match outcome {
        Outcome::Committed { .. } => assert_eq!(values, (-10, 10, 1), "{store:?}"),
        Outcome::Aborted { .. } => assert_eq!(values, (0, 0, 0), "compensated: {store:?}"),
        other => panic!("unexpected outcome {other:?}"),
    }
}

/// `twophase status --coordinator ADDR` with an admin certificate of `dir`: exit code and
/// stdout.
fn status(dir: &Path, addr: SocketAddr) -> (Option<i32>, String) {
    let output = Command::new(common::binary())
        .args(["status", "--coordinator", &addr.to_string(), "--cluster", CLUSTER])
        .args(make_cert(&certs_dir(dir), CLUSTER, "admin", "tester"))
        .output()
        .unwrap();
    (output.status.code(), String::from_utf8_lossy(&output.stdout).into_owned())
}

#[test]
fn status_of_a_single_coordinator_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let participant = Node::participant("p1", dir.path(), &[]);
    let coordinator = Node::coordinator(dir.path(), &[&participant], &[], &[]);
    assert_eq!(status(dir.path(), coordinator.addr), (Some(0), "single coordinator\n".to_string()));
}

#[test]
fn a_client_of_a_follower_commits_and_status_shows_the_group() {
    let group = Group::start();
    let follower = group.follower();

    // (a) Configured with the follower's address only, the client finds the leader.
    let mut client = Client::connect(follower.addr, options(group.path())).unwrap();
    for n in 0..5 {
        let outcome = transfer(&mut client).unwrap_or_else(|err| panic!("transaction {n}: {err}"));
        assert!(outcome.is_committed(), "transaction {n} via follower {}: {outcome:?}", follower.name);
    }
    assert_eq!(client.coordinator(), Some(group.leader().addr), "the client did not move to the leader");
    drop(client);
    // A pipeline configured with the follower only: its outstanding transactions commit.
    let mut pipeline = Pipeline::connect(follower.addr, options(group.path())).unwrap();
    for _ in 0..10 {
        pipeline.send(vec![add(1, "a", 1, i64::MIN), add(2, "b", 1, i64::MIN)]).unwrap();
    }
    let mut outcomes = Vec::new();
    while outcomes.len() < 10 {
        outcomes.extend(pipeline.poll(Duration::from_secs(1)).unwrap());
    }
    assert!(outcomes.iter().all(|(_, outcome)| outcome.is_committed()), "{outcomes:?}");
    drop(pipeline);
    // `twophase tx` given the followers only, as a comma list, finds the leader too.
    let followers: Vec<String> =
        group.members.iter().filter(|m| m.name != group.leader().name).map(|m| m.addr.to_string()).collect();
    let output = Command::new(common::binary())
        .args(["tx", "--coordinator", &followers.join(","), "--cluster", CLUSTER])
        .args(make_cert(&certs_dir(group.path()), CLUSTER, "client", "tester"))
        .args(["add", "p1:a=1", "add", "p2:b=1"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(0), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(group.settled_counts(), (16, 16));

    // (c) `twophase status`, asked at the follower: one leader and two followers, each
    // with the leader's term (the group is idle: nobody campaigns).
    let term = group.leader().led_term().unwrap();
    let (code, table) = eventually("a status with every member caught up", ELECTION_WAIT, || {
        let (code, table) = group.status(follower.addr);
        let rows = table.lines().skip(1).filter(|line| line.split_whitespace().nth(3) == Some(&term.to_string()));
        (rows.count() == MEMBERS.len()).then_some((code, table))
    });
    assert_eq!(code, Some(0), "{table}");
    let rows: Vec<Vec<&str>> = table.lines().skip(1).map(|line| line.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), MEMBERS.len(), "{table}");
    for row in &rows {
        let member = group.members.iter().find(|m| m.name == row[0]).unwrap();
        let role = if member.name == group.leader().name { "leader" } else { "follower" };
        assert_eq!(
            (row[1], row[2], row[3]),
            (member.addr.to_string().as_str(), role, term.to_string().as_str()),
            "{table}"
        );
    }
    assert_eq!(rows.iter().filter(|row| row[2] == "follower").count(), 2, "{table}");
}

#[test]
fn a_client_carries_on_with_the_new_leader_after_a_kill_with_one_outcome_per_request() {
    let mut group = Group::start();
    let every_member: Vec<SocketAddr> = group.members.iter().map(|m| m.addr).collect();
    let mut client = Client::connect(&every_member[..], options(group.path())).unwrap();
    let first = (group.leader().name, group.leader().led_term().unwrap());

    // (b) One client streams transfers on a thread, one at a time, while the leader dies.
    let stop = Arc::new(AtomicBool::new(false));
    let acknowledged = Arc::new(Mutex::new(Vec::new()));
    let streamer = {
        let (stop, acknowledged) = (stop.clone(), acknowledged.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let outcome = transfer(&mut client);
                acknowledged.lock().unwrap().push(outcome.map_err(|err| err.to_string()));
            }
            client
        })
    };
    eventually("commits before the kill", ELECTION_WAIT, || {
        (acknowledged.lock().unwrap().len() >= ACKNOWLEDGED_BEFORE_KILL).then_some(())
    });
    let index = group.members.iter().position(|m| m.name == first.0).unwrap();
    drop(group.members.remove(index));
    let second = eventually("a new leader", ELECTION_WAIT, || {
        leader(&group.members).filter(|m| m.led_term() > Some(first.1)).map(|m| m.name)
    });
    assert_ne!(second, first.0);
    let at_kill = acknowledged.lock().unwrap().len();
    eventually("commits through the new leader", ELECTION_WAIT, || {
        let outcomes = acknowledged.lock().unwrap();
        let after = outcomes[at_kill..].iter().filter(|o| o.as_ref().is_ok_and(Outcome::is_committed)).count();
        (after >= ACKNOWLEDGED_BEFORE_KILL).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    let client = streamer.join().unwrap();
    let new_leader = group.members.iter().find(|m| m.name == second).unwrap();
    assert_eq!(client.coordinator(), Some(new_leader.addr), "the client is not on the new leader");

    // Every request had exactly one outcome: no error, and the participants hold exactly
    // the acknowledged commits (a request run twice would add 2, a lost commit 0).
    let outcomes = acknowledged.lock().unwrap();
    let errors: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(errors.is_empty(), "requests without an outcome: {errors:?}");
    let committed = outcomes.iter().filter(|o| o.as_ref().is_ok_and(Outcome::is_committed)).count() as i64;
    eprintln!(
        "{} requests, {committed} committed; {at_kill} before the kill of {}, then {second} led",
        outcomes.len(),
        first.0
    );
    assert_eq!(group.settled_counts(), (committed, committed), "{} requests, {committed} committed", outcomes.len());
}

#[test]
fn an_interactive_transaction_open_on_a_killed_leader_ends_with_a_clear_error() {
    let mut group = Group::start();
    let every_member: Vec<SocketAddr> = group.members.iter().map(|m| m.addr).collect();
    let mut client = Client::connect(&every_member[..], options(group.path())).unwrap();
    let first = (group.leader().name, group.leader().led_term().unwrap());
    let mut transaction = client.begin().unwrap();
    transaction.add("p1", "a", 1).unwrap();

    let index = group.members.iter().position(|m| m.name == first.0).unwrap();
    drop(group.members.remove(index));
    let err = transaction.add("p2", "b", 1).unwrap_err();
    let message = err.to_string();
    assert!(
        matches!(&err, TxError::Client(ClientError::CoordinatorChanged { .. })),
        "expected CoordinatorChanged, got {message}"
    );
    assert!(message.contains("was open on coordinator") && message.contains("not run again"), "{message}");
    assert!(err.transaction_is_over(), "{message}");
    drop(transaction);

    // The client itself carries on with the new leader; the transaction left nothing.
    eventually("a new leader", ELECTION_WAIT, || {
        leader(&group.members).filter(|m| m.led_term() > Some(first.1)).map(|m| m.name)
    });
    let outcome = transfer(&mut client).unwrap();
    assert!(outcome.is_committed(), "{outcome:?}");
    assert_eq!(group.settled_counts(), (1, 1));
}

#[test]
fn a_pipeline_resends_its_outstanding_transactions_to_the_new_leader_after_a_kill() {
    let mut group = Group::start();
    let every_member: Vec<SocketAddr> = group.members.iter().map(|m| m.addr).collect();
    let mut pipeline = Pipeline::connect(&every_member[..], options(group.path())).unwrap();
    let first = (group.leader().name, group.leader().led_term().unwrap());

    // Keeps 8 transfers outstanding on a thread while the leader dies.
    let stop = Arc::new(AtomicBool::new(false));
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let streamer = {
        let (stop, outcomes) = (stop.clone(), outcomes.clone());
        std::thread::spawn(move || -> Result<(usize, Pipeline), String> {
            let mut sent = 0;
            while !stop.load(Ordering::Relaxed) || pipeline.outstanding() > 0 {
                while !stop.load(Ordering::Relaxed) && pipeline.outstanding() < 8 {
                    pipeline
                        .send(vec![add(1, "a", 1, i64::MIN), add(2, "b", 1, i64::MIN)])
                        .map_err(|e| e.to_string())?;
                    sent += 1;
                }
                let answered = pipeline.poll(Duration::from_millis(50)).map_err(|e| e.to_string())?;
                outcomes.lock().unwrap().extend(answered);
            }
            Ok((sent, pipeline))
        })
    };
    eventually("commits before the kill", ELECTION_WAIT, || {
        (outcomes.lock().unwrap().len() >= ACKNOWLEDGED_BEFORE_KILL).then_some(())
    });
    let index = group.members.iter().position(|m| m.name == first.0).unwrap();
    drop(group.members.remove(index));
    eventually("a new leader", ELECTION_WAIT, || {
        leader(&group.members).filter(|m| m.led_term() > Some(first.1)).map(|m| m.name)
    });
    let at_kill = outcomes.lock().unwrap().len();
    eventually("commits through the new leader", ELECTION_WAIT, || {
        (outcomes.lock().unwrap().len() >= at_kill + ACKNOWLEDGED_BEFORE_KILL).then_some(())
    });
    stop.store(true, Ordering::Relaxed);
    let (sent, pipeline) = streamer.join().unwrap().expect("the pipeline failed");
    let new_leader = leader(&group.members).unwrap();
    assert_eq!(pipeline.coordinator(), Some(new_leader.addr), "the pipeline is not on the new leader");

    // One outcome per transaction sent, and the participants hold exactly the commits.
    let outcomes = outcomes.lock().unwrap();
    let mut seqs: Vec<u64> = outcomes.iter().map(|(seq, _)| *seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=sent as u64).collect::<Vec<_>>(), "each seq answered exactly once");
    let committed = outcomes.iter().filter(|(_, outcome)| outcome.is_committed()).count() as i64;
    eprintln!("pipeline: {sent} sent, {committed} committed across the kill of {}", first.0);
    assert_eq!(group.settled_counts(), (committed, committed));
}
