//! Partitions between the real processes of a replicated coordinator group (issue 18):
//! three coordinators and two participants on loopback, every link between them through a
//! fault-injecting proxy (`common/proxy.rs`): each member's `--peer` address of another
//! member, and its `--participant` address of each participant, is a proxy of its own, so
//! the test can cut, black-hole or hold every directed link.
//!
//! (a) A leader cut from the other two members (it still reaches the participants) decides
//! nothing more; the majority elects a leader that commits; the old leader steps down, its
//! prepare held back until the new leader served the participants is refused there as stale
//! (a No vote, never a prepared transaction), and after healing it follows the new leader.
//! (b) A follower that lost its whole data directory rejoins, catches up and later leads,
//! with every earlier commit at the participants and nothing left prepared.
//! (c) A participant holding a prepared transaction when the leader is killed (the other
//! participant's vote held back, so the leader could not decide) resolves it with the new
//! leader, whichever member that is: the new leader dials the participants, and the
//! participant's inquiry and the leader's own resolution both go over that connection.
//! (d) With `--raft-snapshot-every-entries 5`, a follower stopped while the leader compacts
//! its log far past it catches up from the leader's snapshot after its restart (it logs the
//! restore; `Status` shows its applied index reach the leader's commit index), and then
//! leads with every commit in place.
//! (e) A transaction submitted to a new leader before its connections to the participants
//! are up (they are held back) waits for them and commits: its Prepares are held until each
//! participant's first connection, not lost to wait out the prepare timeout.

mod common;
#[path = "common/proxy.rs"]
mod proxy;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{CLUSTER, Node, add, certs_dir, client_options, dump_ints, eventually, free_addr, make_cert};
use proxy::{Fault, Proxy};
use twophase_net::{Client, ClientOptions, Pipeline, ReplicaStatus};

const MEMBERS: [&str; 3] = ["c1", "c2", "c3"];
/// Generous: the machine running the tests may be busy compiling.
const WAIT: Duration = Duration::from_secs(30);
const BEFORE_PARTITION: i64 = 10;

/// One member's process, what it printed, and how to start it again.
struct Member {
    name: &'static str,
    addr: SocketAddr,
    args: Vec<String>,
    process: Option<Child>,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<String>>,
}

impl Member {
    /// The (term, epoch) of the last `leads term T with epoch E` line it printed.
    fn leads(&self) -> Option<(u64, u32)> {
        let lines = self.stdout.lock().unwrap();
        lines.iter().rev().find_map(|line| {
            let (term, epoch) = line.split_once(" leads term ")?.1.split_once(" with epoch ")?;
            Some((term.trim().parse().ok()?, epoch.trim().parse().ok()?))
        })
    }

    fn start(&mut self) {
        let mut command = Command::new(common::binary());
        command.args(&self.args).env_remove("TWOPHASE_FAILPOINT").env("RUST_LOG", "info");
        let mut process = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
        let (stdout, stderr) = (Arc::new(Mutex::new(Vec::new())), Arc::new(Mutex::new(String::new())));
        let (lines, out) = (stdout.clone(), process.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let (collected, err, name) = (stderr.clone(), process.stderr.take().unwrap(), self.name);
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[{name}] {line}");
                collected.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        (self.process, self.stdout, self.stderr) = (Some(process), stdout, stderr);
    }

    fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }

    fn running(&self) -> bool {
        self.process.is_some()
    }
}

impl Drop for Member {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The group, its participants, and a proxy on every directed link from a member.
struct Group {
    members: Vec<Member>,
    participants: Vec<Node>,
    /// Where each participant serves its metrics.
    metrics: Vec<SocketAddr>,
    /// (from member, to member or participant name) → the proxy `from` dials.
    links: HashMap<(&'static str, String), Proxy>,
    data_dir: PathBuf,
}

impl Group {
    fn start(dir: &Path) -> Group {
        Group::start_with(dir, &[])
    }

    /// The group with `extra` flags for every member.
    fn start_with(dir: &Path, extra: &[&str]) -> Group {
        let metrics: Vec<SocketAddr> = (0..2).map(|_| free_addr()).collect();
        let participants: Vec<Node> = ["p1", "p2"]
            .iter()
            .zip(&metrics)
            .map(|(name, metrics)| Node::participant_with(name, dir, &["--metrics-listen", &metrics.to_string()], &[]))
            .collect();
        let addrs: Vec<SocketAddr> = MEMBERS.iter().map(|_| free_addr()).collect();
        let mut links = HashMap::new();
        let mut members = Vec::new();
        for (index, name) in MEMBERS.iter().enumerate() {
            let mut args = vec!["coordinator".to_string(), "--id".into(), name.to_string()];
            args.extend(["--listen".to_string(), addrs[index].to_string(), "--data-dir".into()]);
            args.push(dir.join(name).display().to_string());
            args.extend(make_cert(&certs_dir(dir), CLUSTER, "coordinator", name));
            args.extend(extra.iter().map(|flag| flag.to_string()));
            for participant in &participants {
                let proxy = Proxy::start(participant.addr);
                args.extend(["--participant".to_string(), format!("{}={}", participant.name, proxy.addr())]);
                links.insert((*name, participant.name.clone()), proxy);
            }
            for (other, other_addr) in MEMBERS.iter().zip(&addrs) {
                let peer_addr = if other == name {
                    *other_addr
                } else {
                    let proxy = Proxy::start(*other_addr);
                    let addr = proxy.addr();
                    links.insert((*name, other.to_string()), proxy);
                    addr
                };
                args.extend(["--peer".to_string(), format!("{other}={peer_addr}")]);
            }
            let stdout = Arc::new(Mutex::new(Vec::new()));
            let stderr = Arc::new(Mutex::new(String::new()));
            let mut member = Member { name, addr: addrs[index], args, process: None, stdout, stderr };
            member.start();
            members.push(member);
        }
        Group { members, participants, metrics, links, data_dir: dir.to_path_buf() }
    }

    /// The running member that announced the highest term, with that term and epoch.
    fn leader(&self) -> Option<(usize, u64, u32)> {
        let announced = self.members.iter().enumerate().filter(|(_, m)| m.running());
        announced.filter_map(|(index, m)| m.leads().map(|(term, epoch)| (index, term, epoch))).max_by_key(|l| l.1)
    }

    /// Waits for a leader of a term above `after`.
    fn wait_leader(&self, after: u64) -> (usize, u64, u32) {
        eventually(&format!("a leader of a term after {after}"), WAIT, || self.leader().filter(|l| l.1 > after))
    }

    /// Every link between `member` and the other members, both ways.
    fn member_links(&self, member: &str) -> Vec<&Proxy> {
        let touches = |(from, to): &(&str, String)| {
            (*from == member && MEMBERS.contains(&to.as_str())) || (to == member && MEMBERS.contains(from))
        };
        self.links.iter().filter(|(key, _)| touches(key)).map(|(_, proxy)| proxy).collect()
    }

    fn options(&self) -> ClientOptions {
        ClientOptions { request_timeout: Duration::from_secs(5), max_attempts: 1, ..client_options(&self.data_dir) }
    }

    /// Connects to member `index`; `None` if it does not take the session.
    fn client(&self, index: usize) -> Option<Client> {
        Client::connect(self.members[index].addr, self.options()).ok()
    }

    /// A commit through whoever leads now (retried until one is acknowledged).
    fn commit_through_leader(&self, key: &str) {
        eventually("a commit through the leader", WAIT, || {
            let (leader, _, _) = self.leader()?;
            transfer(&mut self.client(leader)?, key).then_some(())
        });
    }

    /// Member `index`'s own row of its admin `Status` answer (`None` if it did not answer).
    fn own_status(&self, index: usize) -> Option<ReplicaStatus> {
        let member = &self.members[index];
        let rows = twophase_net::admin::status(member.addr, CLUSTER, &common::admin_security(&self.data_dir)).ok()?;
        rows.into_iter().find(|row| row.name == member.name)
    }

    /// Kills (and restarts) whoever leads until member `index` leads; commits through every
    /// leader on the way.
    fn elect(&mut self, index: usize) {
        let mut rounds = 0;
        let mut term = self.leader().map_or(0, |l| l.1);
        while self.leader().map(|l| l.0) != Some(index) {
            rounds += 1;
            assert!(rounds <= 20, "{} did not lead in 20 elections", self.members[index].name);
            let (current, current_term, _) = self.leader().unwrap();
            self.members[current].kill();
            let (next, next_term, _) = self.wait_leader(current_term.max(term));
            term = next_term;
            self.members[current].start();
            if next != index {
                self.commit_through_leader("a");
            }
        }
    }

    /// Waits until neither participant holds a prepared or in-doubt transaction; their
    /// integer values then.
    fn settled(&self) -> [std::collections::BTreeMap<String, i64>; 2] {
        eventually("the participants to settle", WAIT, || {
            let (p1, p1_open) = dump_ints(&self.participants[0]);
            let (p2, p2_open) = dump_ints(&self.participants[1]);
            (p1_open == (0, 0) && p2_open == (0, 0)).then_some([p1, p2])
        })
    }
}

/// Adds 1 to `key` at p1 and at p2; whether it was acknowledged committed.
fn transfer(client: &mut Client, key: &str) -> bool {
    client.submit(vec![add(1, key, 1, i64::MIN), add(2, key, 1, i64::MIN)]).is_ok_and(|outcome| outcome.is_committed())
}

/// Where a client given only member `index` ends up serving a transaction: the member itself
/// if it leads, or the address its `NotLeader` named (None if the probe was not served).
fn served_by(group: &Group, index: usize) -> Option<SocketAddr> {
    let mut client = Client::connect(group.members[index].addr, group.options()).ok()?;
    client.submit(vec![add(1, "probe", 1, i64::MIN)]).ok()?;
    client.coordinator()
}

/// A participant's count of No votes, from its metrics endpoint.
fn no_votes(metrics: SocketAddr) -> u64 {
    let mut stream = TcpStream::connect(metrics).expect("the participant's metrics endpoint");
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    stream.read_to_string(&mut text).unwrap();
    let line = text
        .lines()
        .find(|line| line.starts_with("twophase_votes") && line.contains("vote=\"no\""))
        .unwrap_or_else(|| panic!("no twophase_votes{{vote=\"no\"}} in the metrics:\n{text}"));
    line.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64
}

#[test]
fn a_leader_cut_from_its_group_decides_nothing_and_follows_after_healing() {
    let dir = tempfile::tempdir().unwrap();
    let group = Group::start(dir.path());
    let (old, old_term, old_epoch) = group.wait_leader(0);
    let old_name = group.members[old].name;
    let mut client = eventually("a session at the leader", WAIT, || group.client(old));
    for n in 0..BEFORE_PARTITION {
        assert!(transfer(&mut client, "a"), "transaction {n} through leader {old_name} was not acknowledged");
    }
    let no_votes_before = no_votes(group.metrics[0]);

    // Cut the leader from the other members (black hole: nothing tells it); hold what it
    // sends p1 from now on, to deliver it once a new leader served p1.
    for link in group.member_links(old_name) {
        link.set(Fault::BlackHole);
    }
    let held = &group.links[&(old_name, "p1".to_string())];
    held.set(Fault::Hold);
    assert!(!transfer(&mut client, "z"), "the cut-off leader {old_name} acknowledged a commit");
    drop(client);

    // The majority elects a leader of a later term, fenced above the old epoch, that commits.
    let (new, new_term, new_epoch) = group.wait_leader(old_term);
    let new_name = group.members[new].name;
    assert_ne!(new, old, "the cut-off member led again");
    assert!(new_epoch > old_epoch, "new leader {new_name} has epoch {new_epoch}, not above {old_epoch}");
    group.commit_through_leader("a");
    eventually("the cut-off leader to step down", WAIT, || {
        group.members[old].stderr.lock().unwrap().contains("no longer leading").then_some(())
    });

    // Its prepare of z, released only now, reaches p1 after the new epoch did: refused as
    // stale, with a No vote, and never prepared.
    held.set(Fault::Pass);
    eventually("p1 to vote No on the stale prepare", WAIT, || {
        (no_votes(group.metrics[0]) > no_votes_before).then_some(())
    });

    // Healed, the old leader follows: it sends its clients to the new leader (NotLeader) and
    // announced no term of its own since.
    for link in group.member_links(old_name) {
        link.heal();
    }
    // (The address a NotLeader names is the leader's `--peer` address, here its proxy.)
    let old_addr = group.members[old].addr;
    eventually("the old leader to send clients on", WAIT, || {
        served_by(&group, old).is_some_and(|addr| addr != old_addr).then_some(())
    });
    assert_eq!(group.members[old].leads(), Some((old_term, old_epoch)), "{old_name} announced a later term");
    assert_eq!(group.leader().map(|l| (l.0, l.1)), Some((new, new_term)));

    let [p1, p2] = group.settled();
    assert_eq!(p1.get("z"), None, "p1 applied the cut-off leader's transaction");
    assert_eq!(p2.get("z"), None, "p2 applied the cut-off leader's transaction");
    let (a1, a2) = (p1.get("a").copied().unwrap_or(0), p2.get("a").copied().unwrap_or(0));
    assert_eq!(a1, a2, "a transaction applied at one participant only");
    assert!(a1 > BEFORE_PARTITION, "p1 holds {a1}: a commit through the new leader is missing");
}

#[test]
fn a_follower_that_lost_its_data_rejoins_catches_up_and_leads_with_every_commit() {
    let dir = tempfile::tempdir().unwrap();
    let mut group = Group::start(dir.path());
    let (leader, _, _) = group.wait_leader(0);
    let mut client = eventually("a session at the leader", WAIT, || group.client(leader));
    for n in 0..BEFORE_PARTITION {
        assert!(transfer(&mut client, "a"), "transaction {n} was not acknowledged");
    }
    drop(client);

    // A follower loses its whole data directory, and comes back empty under its name.
    let lost = (0..MEMBERS.len()).find(|index| *index != leader).unwrap();
    let lost_name = group.members[lost].name;
    group.members[lost].kill();
    std::fs::remove_dir_all(dir.path().join(lost_name)).unwrap();
    group.commit_through_leader("a");
    group.members[lost].start();
    group.commit_through_leader("a");

    // Kill whoever leads (and restart it) until the member that lost its data leads: the
    // others then vote for it, which they do only once it holds every committed entry.
    group.elect(lost);
    eventually("a commit through the member that lost its data", WAIT, || {
        transfer(&mut group.client(lost)?, "a").then_some(())
    });

    let [p1, p2] = group.settled();
    let (a1, a2) = (p1.get("a").copied().unwrap_or(0), p2.get("a").copied().unwrap_or(0));
    assert_eq!(a1, a2, "a transaction applied at one participant only");
    assert!(a1 >= BEFORE_PARTITION + 3, "p1 holds {a1}: an acknowledged commit is missing");
    assert!(dir.path().join(lost_name).join("raft").exists(), "{lost_name} rebuilt no replicated log");
}

#[test]
fn a_participant_prepared_when_the_leader_dies_resolves_with_the_new_leader() {
    let dir = tempfile::tempdir().unwrap();
    // The leader must not abort on its own while p2's vote is held back.
    let mut group = Group::start_with(dir.path(), &["--prepare-timeout-ms", "600000"]);
    let (old, old_term, _) = group.wait_leader(0);
    let old_name = group.members[old].name;
    let mut client = eventually("a session at the leader", WAIT, || group.client(old));
    assert!(transfer(&mut client, "a"), "the first transaction was not acknowledged");
    drop(client);

    // Hold everything between the leader and p2: p1 votes Yes and holds the transaction
    // prepared, the leader waits for p2's vote.
    group.links[&(old_name, "p2".to_string())].set(Fault::Hold);
    let mut pipeline = Pipeline::connect(group.members[old].addr, group.options()).expect("a pipeline at the leader");
    pipeline.send(vec![add(1, "doubt", 1, i64::MIN), add(2, "doubt", 1, i64::MIN)]).unwrap();
    pipeline.flush().unwrap();
    eventually("p1 to hold the transaction prepared", WAIT, || {
        let (_, (prepared, in_doubt)) = dump_ints(&group.participants[0]);
        (prepared + in_doubt > 0).then_some(())
    });
    // The client goes away (no resend elsewhere), and the leader dies undecided.
    drop(pipeline);
    group.members[old].kill();

    let (new, _, _) = group.wait_leader(old_term);
    assert_ne!(new, old, "the killed member leads");
    let [p1, p2] = group.settled();
    // p2 never voted (it never saw the prepare): the only right decision is abort.
    assert_eq!((p1.get("doubt"), p2.get("doubt")), (None, None), "the undecided transaction was applied");
    assert_eq!(p1.get("a"), Some(&1), "the first commit is missing at p1");
    group.commit_through_leader("a");
}

#[test]
fn a_follower_behind_the_compacted_log_catches_up_by_snapshot_and_then_leads() {
    const TRANSACTIONS: i64 = 40;
    let dir = tempfile::tempdir().unwrap();
    let mut group = Group::start_with(dir.path(), &["--raft-snapshot-every-entries", "5"]);
    let (leader, _, _) = group.wait_leader(0);
    let behind = (0..MEMBERS.len()).find(|index| *index != leader).unwrap();
    let behind_name = group.members[behind].name;
    group.members[behind].kill();

    // Each acknowledged transaction is at least one entry: the leader snapshots and compacts
    // its log several times past the stopped follower's last entry.
    let mut client = eventually("a session at the leader", WAIT, || group.client(leader));
    for n in 0..TRANSACTIONS {
        assert!(transfer(&mut client, "a"), "transaction {n} was not acknowledged");
    }
    drop(client);
    let leader_commit = group.own_status(leader).expect("the leader's status").commit_index;
    assert!(leader_commit > 2 * 5, "the leader's log holds only {leader_commit} entries");

    group.members[behind].start();
    eventually("the restarted follower to restore the leader's snapshot", WAIT, || {
        group.members[behind].stderr.lock().unwrap().contains("restored the leader's raft snapshot").then_some(())
    });
    let caught_up = eventually("the restarted follower to apply up to the leader's commit", WAIT, || {
        group.own_status(behind).filter(|row| row.applied_index >= leader_commit)
    });
    assert_eq!(caught_up.role, twophase_net::ReplicaRole::Follower, "{behind_name} is not a follower");

    // It then leads, and serves with every commit made while it was down in place.
    group.elect(behind);
    eventually("a commit through the member that caught up by snapshot", WAIT, || {
        transfer(&mut group.client(behind)?, "a").then_some(())
    });
    let [p1, p2] = group.settled();
    let (a1, a2) = (p1.get("a").copied().unwrap_or(0), p2.get("a").copied().unwrap_or(0));
    assert_eq!(a1, a2, "a transaction applied at one participant only");
    assert!(a1 > TRANSACTIONS, "p1 holds {a1}: an acknowledged commit is missing");
}

#[test]
fn a_transaction_submitted_before_a_new_leader_reached_its_participants_waits_for_them() {
    let dir = tempfile::tempdir().unwrap();
    // Long enough that only holding the Prepare, never its timeout, can decide in time.
    let mut group = Group::start_with(dir.path(), &["--prepare-timeout-ms", "10000"]);
    let (old, old_term, _) = group.wait_leader(0);
    let old_name = group.members[old].name;
    group.commit_through_leader("a");

    // Whoever leads next dials the participants through held links: its connections
    // complete only when they are released.
    let to_participants: Vec<&Proxy> = (group.links.iter())
        .filter(|((from, to), _)| *from != old_name && !MEMBERS.contains(&to.as_str()))
        .map(|(_, proxy)| proxy)
        .collect();
    for link in &to_participants {
        link.set(Fault::Hold);
    }
    group.members[old].kill();
    let (new, _, _) = group.wait_leader(old_term);

    // A transaction reaches the new leader before its participants are connected.
    let mut pipeline = eventually("a pipeline at the new leader", WAIT, || {
        Pipeline::connect(group.members[new].addr, group.options()).ok()
    });
    pipeline.send(vec![add(1, "early", 1, i64::MIN), add(2, "early", 1, i64::MIN)]).unwrap();
    pipeline.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    for link in &to_participants {
        link.set(Fault::Pass);
    }
    let outcomes = eventually("the early transaction's outcome", WAIT, || {
        let outcomes = pipeline.poll(Duration::from_millis(100)).expect("polling the new leader");
        (!outcomes.is_empty()).then_some(outcomes)
    });
    assert!(outcomes[0].1.is_committed(), "the early transaction was not committed: {:?}", outcomes[0].1);
    let [p1, p2] = group.settled();
    assert_eq!((p1.get("early"), p2.get("early")), (Some(&1), Some(&1)), "the early transaction is not applied");
}
