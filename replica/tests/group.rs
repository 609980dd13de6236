//! Groups of 3 and 5 replicas with real wals in temporary directories, connected by an
//! in-memory network that a per-test seed shuffles (every round's messages are delivered in
//! a seeded random order). Durability is real: each round waits for every wal to be durable
//! up to the last record anything waits for before polling, so nothing depends on timing.

use std::collections::HashSet;
use std::path::PathBuf;

use bytes::Bytes;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use twophase_replica::{
    CommittedEntry, Output, ProposeError, Replica, ReplicaConfig, ReplicaError, SnapshotInstall, StateMachine, Ticket,
    TicketOutcome,
};
use twophase_wal::WalOptions;

/// The application: the sequence of batches applied, as the state to snapshot.
#[derive(Default, Debug, Clone, PartialEq, Eq)]
struct AppliedLog {
    batches: Vec<(u64, Bytes)>,
    restores: usize,
}

impl StateMachine for AppliedLog {
    fn apply(&mut self, entry: &CommittedEntry) {
        if let Some((last, _)) = self.batches.last() {
            assert!(entry.index > *last, "entry {} applied after {last}", entry.index);
        }
        self.batches.push((entry.index, entry.data.clone()));
    }

    fn snapshot(&self) -> Vec<u8> {
        let mut out = Vec::new();
        for (index, data) in &self.batches {
            out.extend_from_slice(&index.to_le_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
            out.extend_from_slice(data);
        }
        out
    }

    fn restore(&mut self, snapshot: &SnapshotInstall) {
        self.restores += 1;
        self.batches.clear();
        let mut rest = &snapshot.data[..];
        while !rest.is_empty() {
            let index = u64::from_le_bytes(rest[..8].try_into().unwrap());
            let len = u32::from_le_bytes(rest[8..12].try_into().unwrap()) as usize;
            self.batches.push((index, Bytes::copy_from_slice(&rest[12..12 + len])));
            rest = &rest[12 + len..];
        }
    }
}

struct Node {
    replica: Option<Replica>,
    dir: PathBuf,
    app: AppliedLog,
    config: ReplicaConfig,
}

struct Group {
    _root: tempfile::TempDir,
    nodes: Vec<Node>,
    in_flight: Vec<(u64, u64, Vec<u8>)>,
    /// Links cut both ways.
    cut: HashSet<(u64, u64)>,
    rng: ChaCha8Rng,
    wal_options: WalOptions,
    /// Every message sent, for the late-message test: (from, to, term, bytes).
    sent_log: Vec<(u64, u64, Vec<u8>)>,
    keep_sent_log: bool,
}

const ELECTION_TICKS: usize = 10;

impl Group {
    fn new(size: u64, seed: u64) -> Group {
        Group::with(size, seed, |_| {}, WalOptions::default())
    }

    fn with(size: u64, seed: u64, tune: impl Fn(&mut ReplicaConfig), wal_options: WalOptions) -> Group {
        let root = tempfile::tempdir().unwrap();
        let voters: Vec<u64> = (1..=size).collect();
        let mut nodes = Vec::new();
        for &id in &voters {
            let mut config = ReplicaConfig::new(id, voters.clone());
            config.election_ticks = ELECTION_TICKS;
            tune(&mut config);
            let dir = root.path().join(format!("r{id}"));
            let replica = Replica::open(config.clone(), &dir, wal_options.clone()).unwrap();
            nodes.push(Node { replica: Some(replica), dir, app: AppliedLog::default(), config });
        }
        Group {
            _root: root,
            nodes,
            in_flight: Vec::new(),
            cut: HashSet::new(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            wal_options,
            sent_log: Vec::new(),
            keep_sent_log: false,
        }
    }

    fn node(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    fn replica(&mut self, id: u64) -> &mut Replica {
        self.node(id).replica.as_mut().expect("replica is down")
    }

    fn live_ids(&self) -> Vec<u64> {
        self.nodes.iter().filter(|n| n.replica.is_some()).map(|n| n.config.id).collect()
    }

    /// Waits for the node's wal to be durable up to its last urgent record, polls, takes its
    /// outputs: applies and snapshots go to its application, messages to the network.
    fn settle_node(&mut self, id: u64) {
        let node = self.node(id);
        let Some(replica) = node.replica.as_mut() else { return };
        let last = replica.storage().last_urgent_lsn();
        if last.0 > 0 {
            replica.wal().wait_durable(last).unwrap();
        }
        replica.poll().unwrap();
        let rest = replica.deliver(&mut node.app).unwrap();
        for output in rest {
            if let Output::Send { to, bytes } = output {
                if self.keep_sent_log {
                    self.sent_log.push((id, to, bytes.clone()));
                }
                self.in_flight.push((id, to, bytes));
            }
        }
    }

    /// Delivers the messages in flight in a seeded random order, dropping those on cut
    /// links or to a replica that is down; repeats until the network is quiet (bounded).
    fn deliver_all(&mut self) {
        for _ in 0..50 {
            for id in self.live_ids() {
                self.settle_node(id);
            }
            if self.in_flight.is_empty() {
                return;
            }
            let mut batch = std::mem::take(&mut self.in_flight);
            batch.shuffle(&mut self.rng);
            let mut touched = HashSet::new();
            for (from, to, bytes) in batch {
                if self.cut.contains(&(from, to)) {
                    continue;
                }
                let Some(replica) = self.node(to).replica.as_mut() else { continue };
                replica.step(&bytes).unwrap();
                touched.insert(to);
            }
        }
    }

    /// One tick everywhere, then the network until quiet.
    fn round(&mut self) {
        for id in self.live_ids() {
            self.replica(id).tick();
        }
        self.deliver_all();
    }

    fn rounds(&mut self, n: usize) {
        for _ in 0..n {
            self.round();
        }
    }

    /// Runs rounds until a leader that every live replica (not cut off) agrees on serves.
    fn elect(&mut self, rounds_max: usize) -> u64 {
        for _ in 0..rounds_max {
            self.round();
            if let Some(leader) = self.agreed_leader() {
                return leader;
            }
        }
        panic!("no leader within {rounds_max} rounds");
    }

    fn agreed_leader(&mut self) -> Option<u64> {
        let live = self.live_ids();
        let leaders: Vec<u64> = live.iter().copied().filter(|&id| self.replica(id).is_leader()).collect();
        let [leader] = leaders[..] else { return None };
        let term = self.replica(leader).term();
        let reachable: Vec<u64> = live.into_iter().filter(|&id| !self.cut.contains(&(leader, id))).collect();
        let agree =
            reachable.iter().all(|&id| self.replica(id).leader_id() == Some(leader) && self.replica(id).term() == term);
        agree.then_some(leader)
    }

    fn isolate(&mut self, id: u64) {
        for other in 1..=self.nodes.len() as u64 {
            if other != id {
                self.cut.insert((id, other));
                self.cut.insert((other, id));
            }
        }
    }

    fn heal(&mut self) {
        self.cut.clear();
    }

    fn kill(&mut self, id: u64) {
        self.node(id).replica = None;
        self.in_flight.retain(|(from, to, _)| *from != id && *to != id);
    }

    fn restart(&mut self, id: u64) {
        let wal_options = self.wal_options.clone();
        let node = self.node(id);
        assert!(node.replica.is_none());
        node.app = AppliedLog::default();
        node.replica = Some(Replica::open(node.config.clone(), &node.dir, wal_options).unwrap());
    }

    /// Proposes `count` batches of `records` records each at the leader; returns tickets.
    fn propose(&mut self, leader: u64, count: usize, tag: &str) -> Vec<(Ticket, Bytes)> {
        let mut tickets = Vec::new();
        for k in 0..count {
            let batch = Bytes::from(format!("{tag}-{k}").into_bytes());
            let ticket = self.replica(leader).propose(batch.to_vec()).unwrap();
            tickets.push((ticket, batch));
        }
        tickets
    }

    fn applied(&self, id: u64) -> &Vec<(u64, Bytes)> {
        &self.nodes[(id - 1) as usize].app.batches
    }
}

fn batches_of(applied: &[(u64, Bytes)]) -> Vec<Bytes> {
    applied.iter().map(|(_, b)| b.clone()).collect()
}

#[test]
fn a_group_of_three_elects_one_leader() {
    for seed in 0..4 {
        let mut group = Group::new(3, seed);
        let leader = group.elect(20 * ELECTION_TICKS);
        let term = group.replica(leader).term();
        for id in 1..=3 {
            assert_eq!(group.replica(id).leader_id(), Some(leader), "seed {seed}");
            assert_eq!(group.replica(id).term(), term, "seed {seed}");
            assert_eq!(group.replica(id).is_leader(), id == leader, "seed {seed}");
        }
    }
}

#[test]
fn a_group_of_five_elects_one_leader_and_commits_in_one_order() {
    let mut group = Group::new(5, 11);
    let leader = group.elect(20 * ELECTION_TICKS);
    let tickets = group.propose(leader, 40, "five");
    group.rounds(3);
    let expected: Vec<Bytes> = tickets.iter().map(|(_, b)| b.clone()).collect();
    for id in 1..=5 {
        assert_eq!(batches_of(group.applied(id)), expected, "replica {id}");
    }
    for (ticket, _) in tickets {
        assert_eq!(group.replica(leader).outcome(ticket), TicketOutcome::Committed);
    }
}

#[test]
fn proposals_commit_on_a_majority_and_apply_in_the_same_order_everywhere() {
    let mut group = Group::new(3, 7);
    let leader = group.elect(20 * ELECTION_TICKS);
    let follower_down = (1..=3).find(|&id| id != leader).unwrap();
    group.kill(follower_down);
    // Two of three: still a majority, so everything commits.
    let mut tickets = group.propose(leader, 30, "a");
    group.rounds(2);
    tickets.extend(group.propose(leader, 30, "b"));
    group.rounds(2);
    let expected: Vec<Bytes> = tickets.iter().map(|(_, b)| b.clone()).collect();
    for (ticket, _) in &tickets {
        assert_eq!(group.replica(leader).outcome(*ticket), TicketOutcome::Committed);
    }
    for id in group.live_ids() {
        assert_eq!(batches_of(group.applied(id)), expected, "replica {id}");
    }
    // The one that was down catches up from the log, in the same order.
    group.restart(follower_down);
    group.rounds(3);
    assert_eq!(batches_of(group.applied(follower_down)), expected);
}

#[test]
fn a_killed_leader_is_replaced_within_bounded_ticks_and_nothing_committed_is_lost() {
    // Every replica ticks in the same round here. With timeouts drawn at random (raft-rs
    // draws them from its thread's own generator, not from the seed) two followers often
    // draw the same one: both pre-vote in one round, grant each other's pre-vote (a higher
    // term), become candidates of one term, vote for themselves and split; a second equal
    // draw then outlasted the bound (10 failures in 200 runs of this test). A real group's
    // jitter breaks such ties; this one gets distinct, fixed timeouts instead, so the run is
    // a function of its seed and no vote can split.
    let distinct_timeouts = |config: &mut ReplicaConfig| {
        config.election_randomized = false;
        config.election_ticks = ELECTION_TICKS + config.id as usize;
    };
    for seed in 0..3 {
        let mut group = Group::with(3, 100 + seed, distinct_timeouts, WalOptions::default());
        let old = group.elect(20 * ELECTION_TICKS);
        let first = group.propose(old, 20, "before");
        group.rounds(2);
        let committed: Vec<Bytes> = batches_of(group.applied(old));
        assert_eq!(committed.len(), 20);
        group.kill(old);
        // The follower with the shorter timeout (at most ELECTION_TICKS + 3) campaigns
        // first; the other, still in its leader's lease, ignores that pre-vote, then times
        // out itself (a tick or two later) and wins the other's vote: three timeouts bound it.
        let new = group.elect(3 * ELECTION_TICKS);
        assert_ne!(new, old);
        let second = group.propose(new, 10, "after");
        group.rounds(2);
        let mut expected = committed.clone();
        expected.extend(second.iter().map(|(_, b)| b.clone()));
        for id in group.live_ids() {
            assert_eq!(batches_of(group.applied(id)), expected, "seed {seed}, replica {id}");
        }
        for (ticket, _) in first.iter().chain(&second) {
            assert_eq!(group.replica(new).outcome(*ticket), TicketOutcome::Committed);
        }
    }
}

#[test]
fn a_leader_cut_from_its_majority_commits_nothing_and_steps_down() {
    let mut group = Group::new(3, 21);
    let old = group.elect(20 * ELECTION_TICKS);
    group.propose(old, 5, "healthy");
    group.rounds(2);
    group.isolate(old);
    let stranded = group.propose(old, 5, "stranded");
    let applied_before = group.applied(old).len();
    // Check-quorum: within two election timeouts the isolated leader notices it lost its
    // majority and steps down.
    let mut stepped_down = false;
    for _ in 0..2 * ELECTION_TICKS + 1 {
        group.round();
        assert_eq!(group.applied(old).len(), applied_before, "a minority leader applied something");
        if !group.replica(old).is_leader() {
            stepped_down = true;
            break;
        }
    }
    assert!(stepped_down, "the isolated leader still leads");
    for (ticket, _) in &stranded {
        assert_ne!(group.replica(old).outcome(*ticket), TicketOutcome::Committed);
    }
    assert!(matches!(group.replica(old).propose(b"late".to_vec()), Err(ProposeError::NotLeader { .. })));
    // The majority side elects its own leader and commits.
    let majority: Vec<u64> = (1..=3).filter(|&id| id != old).collect();
    let mut new = None;
    for _ in 0..6 * ELECTION_TICKS {
        group.round();
        new = majority.iter().copied().find(|&id| group.replica(id).is_leader());
        if new.is_some() {
            break;
        }
    }
    let new = new.expect("the majority elected no leader");
    let fresh = group.propose(new, 3, "majority");
    group.rounds(2);
    // After healing the old leader follows, its stranded proposals are lost, and every
    // replica holds the same batches.
    group.heal();
    group.rounds(4 * ELECTION_TICKS);
    assert_eq!(group.replica(old).leader_id(), group.replica(new).leader_id());
    for (ticket, _) in &stranded {
        assert_eq!(group.replica(old).outcome(*ticket), TicketOutcome::Lost);
    }
    for (ticket, _) in &fresh {
        assert_eq!(group.replica(old).outcome(*ticket), TicketOutcome::Committed);
    }
    let reference = batches_of(group.applied(new));
    for id in 1..=3 {
        assert_eq!(batches_of(group.applied(id)), reference, "replica {id}");
        assert!(!reference.iter().any(|b| b.starts_with(b"stranded")));
    }
}

#[test]
fn a_restarted_group_recovers_hard_state_and_entries_from_its_wals() {
    let mut group = Group::new(3, 31);
    let leader = group.elect(20 * ELECTION_TICKS);
    let tickets = group.propose(leader, 25, "durable");
    group.rounds(2);
    let expected: Vec<Bytes> = tickets.iter().map(|(_, b)| b.clone()).collect();
    let before: Vec<(u64, u64, u64)> = (1..=3)
        .map(|id| {
            let r = group.replica(id);
            (r.term(), r.storage().hard_state().vote, r.last_index())
        })
        .collect();
    for id in 1..=3 {
        group.kill(id);
    }
    for id in 1..=3 {
        group.restart(id);
        let r = group.replica(id);
        let (term, vote, last_index) = before[(id - 1) as usize];
        assert_eq!(r.term(), term, "replica {id}");
        assert_eq!(r.storage().hard_state().vote, vote, "replica {id}");
        assert_eq!(r.last_index(), last_index, "replica {id}");
        assert!(!r.is_leader());
    }
    // A new election, after which every replica re-applies the recovered log in order.
    let leader = group.elect(20 * ELECTION_TICKS);
    group.rounds(2);
    assert!(group.replica(leader).term() > before[0].0);
    for id in 1..=3 {
        assert_eq!(batches_of(group.applied(id)), expected, "replica {id}");
    }
}

#[test]
fn a_replica_that_lost_its_directory_catches_up_by_snapshot() {
    let wal_options = WalOptions { segment_size_bytes: 4096, ..WalOptions::default() };
    let mut group = Group::with(3, 41, |c| c.snapshot_every_entries = 16, wal_options);
    let leader = group.elect(20 * ELECTION_TICKS);
    let mut expected = Vec::new();
    for round in 0..6 {
        let tickets = group.propose(leader, 10, &format!("r{round}"));
        expected.extend(tickets.into_iter().map(|(_, b)| b));
        group.rounds(2);
    }
    let victim = (1..=3).find(|&id| id != leader).unwrap();
    assert!(group.replica(leader).snapshot_index() > 0, "the leader took no snapshot");
    assert!(group.replica(leader).storage().cached_entries() < expected.len());
    let segments = |dir: &std::path::Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "wal"))
            .count()
    };
    let leader_dir = group.node(leader).dir.clone();
    group.kill(victim);
    let victim_dir = group.node(victim).dir.clone();
    std::fs::remove_dir_all(&victim_dir).unwrap();
    group.restart(victim);
    group.rounds(2);
    // Raft assumes a replica never loses what it acknowledged: the leader keeps the wiped
    // replica's old match index and would never look back. A new leader learns every
    // follower's log afresh, finds the victim's empty, and sends the snapshot.
    let third = (1..=3).find(|&id| id != leader && id != victim).unwrap();
    group.replica(leader).transfer_leadership(third);
    group.rounds(6);
    assert!(group.replica(third).is_leader());
    assert!(group.nodes[(victim - 1) as usize].app.restores >= 1, "no snapshot was installed");
    assert_eq!(batches_of(group.applied(victim)), expected);
    // Compaction dropped old wal segments on the leader: far fewer than the log's bytes need.
    assert!(segments(&leader_dir) < 10, "{} segments kept", segments(&leader_dir));
    // And the rebuilt replica restarts from its own snapshot and log.
    group.kill(victim);
    group.restart(victim);
    group.rounds(3);
    assert_eq!(batches_of(group.applied(victim)), expected);
}

#[test]
fn late_messages_from_an_old_term_are_ignored() {
    let mut group = Group::new(3, 51);
    group.keep_sent_log = true;
    let old = group.elect(20 * ELECTION_TICKS);
    group.propose(old, 3, "x");
    group.rounds(2);
    let old_term = group.replica(old).term();
    let stale: Vec<(u64, u64, Vec<u8>)> = group.sent_log.clone();
    assert!(!stale.is_empty());
    group.keep_sent_log = false;
    group.kill(old);
    let new = group.elect(4 * ELECTION_TICKS);
    let new_term = group.replica(new).term();
    assert!(new_term > old_term);
    group.propose(new, 2, "y");
    group.rounds(2);
    let survivors: Vec<u64> = group.live_ids();
    let snapshot: Vec<(u64, Option<u64>, u64, usize)> = survivors
        .iter()
        .map(|&id| {
            let r = group.replica(id);
            (r.term(), r.leader_id(), r.commit_index(), group.applied(id).len())
        })
        .collect();
    // Replay every message of the old term to the survivors it was meant for.
    for (_, to, bytes) in &stale {
        if let Some(replica) = group.node(*to).replica.as_mut() {
            replica.step(bytes).unwrap();
        }
    }
    group.deliver_all();
    for (k, &id) in survivors.iter().enumerate() {
        let r = group.replica(id);
        assert_eq!((r.term(), r.leader_id(), r.commit_index()), (snapshot[k].0, snapshot[k].1, snapshot[k].2));
        assert_eq!(group.applied(id).len(), snapshot[k].3);
    }
}

#[test]
fn bad_messages_are_refused_and_change_nothing() {
    let mut group = Group::new(3, 61);
    let leader = group.elect(20 * ELECTION_TICKS);
    let term = group.replica(leader).term();
    let garbage: &[&[u8]] = &[b"", b"\xff\xff\xff\xff", &[0x08; 64]];
    for bytes in garbage {
        if let Err(e) = group.replica(leader).step(bytes) {
            assert!(matches!(e, ReplicaError::BadMessage(_)), "{e}");
            assert!(!e.is_fatal());
        }
    }
    let too_long = vec![0u8; 17 << 20];
    assert!(matches!(group.replica(leader).step(&too_long), Err(ReplicaError::BadMessage(_))));
    group.rounds(2);
    assert!(group.replica(leader).is_leader());
    assert_eq!(group.replica(leader).term(), term);
    let tickets = group.propose(leader, 2, "still");
    group.rounds(2);
    assert_eq!(group.replica(leader).outcome(tickets[1].0), TicketOutcome::Committed);
}

#[test]
fn a_message_claiming_another_sender_than_its_link_is_refused() {
    let mut group = Group::new(3, 67);
    let leader = group.elect(20 * ELECTION_TICKS);
    group.in_flight.clear();
    // Heartbeats leave within a heartbeat interval.
    for _ in 0..ELECTION_TICKS {
        group.replica(leader).tick();
        group.settle_node(leader);
    }
    let (from, to, bytes) =
        group.in_flight.iter().find(|(from, _, _)| *from == leader).cloned().expect("the leader sends heartbeats");
    let impostor = group.live_ids().into_iter().find(|id| *id != from && *id != to).expect("a third replica");
    let refused = group.replica(to).step_from(impostor, &bytes);
    assert!(matches!(refused, Err(ReplicaError::BadMessage(_))), "{refused:?}");
    group.replica(to).step_from(from, &bytes).unwrap();
}
