//! A replica's configuration.

use crate::error::ReplicaError;

/// How a replica runs. Times are in ticks: the driver calls [`crate::Replica::tick`] every
/// `tick_ms` of its own choosing (10 ms on a LAN).
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// This replica's id (non-zero, one of `voters`).
    pub id: u64,
    /// Every replica of the group, this one included; the same list on every replica.
    /// Membership is fixed (no configuration changes yet).
    pub voters: Vec<u64>,
    /// A follower that hears no leader for a random time in
    /// `[election_ticks, 2 * election_ticks)` campaigns (default 10: 100–200 ms at 10 ms).
    pub election_ticks: usize,
    /// Whether the election timeout is drawn at random in `[election_ticks, 2 *
    /// election_ticks)` (default true, raft-rs draws it from the thread's own generator).
    /// False makes it exactly `election_ticks`: deterministic, for the group simulator and
    /// tests, which give replicas distinct timeouts or seeded tick phases to break ties.
    pub election_randomized: bool,
    /// A leader sends heartbeats every this many ticks (default 2).
    pub heartbeat_ticks: usize,
    /// Largest batch [`crate::Replica::propose`] accepts (default 4 MiB).
    pub batch_bytes_max: usize,
    /// Proposals appended but not yet committed beyond which `propose` answers `Busy`
    /// (default 4096): bounds the leader's uncommitted log.
    pub proposals_in_flight_max: u64,
    /// Largest message accepted from a peer (default 16 MiB + 64 KiB: one full append).
    pub message_bytes_max: usize,
    /// Bytes of entries in one append message (default 1 MiB).
    pub append_bytes_max: u64,
    /// Append messages in flight to one follower (default 256).
    pub appends_in_flight_max: usize,
    /// Entries applied since the last snapshot after which the replica asks the application
    /// for a snapshot ([`crate::Output::SnapshotDue`]) (default 100,000).
    pub snapshot_every_entries: u64,
}

impl ReplicaConfig {
    /// The defaults for replica `id` of the group `voters`.
    pub fn new(id: u64, voters: Vec<u64>) -> ReplicaConfig {
        ReplicaConfig {
            id,
            voters,
            election_ticks: 10,
            election_randomized: true,
            heartbeat_ticks: 2,
            batch_bytes_max: 4 << 20,
            proposals_in_flight_max: 4096,
            message_bytes_max: (16 << 20) + (64 << 10),
            append_bytes_max: 1 << 20,
            appends_in_flight_max: 256,
            snapshot_every_entries: 100_000,
        }
    }

    /// Checks what raft-rs would refuse or what would make no sense, naming the field.
    pub fn validate(&self) -> Result<(), ReplicaError> {
        let fail = |why: &str| Err(ReplicaError::Config(why.to_string()));
        if self.id == 0 {
            return fail("id 0 is reserved (raft-rs's \"none\")");
        }
        if !self.voters.contains(&self.id) {
            return fail("voters must include this replica's id");
        }
        let mut sorted = self.voters.clone();
        sorted.sort_unstable();
        sorted.dedup();
        if sorted.len() != self.voters.len() || sorted.contains(&0) {
            return fail("voters must be distinct non-zero ids");
        }
        if self.heartbeat_ticks == 0 || self.election_ticks <= self.heartbeat_ticks {
            return fail("election_ticks must exceed heartbeat_ticks, which must be non-zero");
        }
        if self.batch_bytes_max == 0 || self.proposals_in_flight_max == 0 || self.snapshot_every_entries == 0 {
            return fail("batch_bytes_max, proposals_in_flight_max and snapshot_every_entries must be non-zero");
        }
        Ok(())
    }

    pub(crate) fn raft_config(&self, applied: u64) -> raft::Config {
        raft::Config {
            id: self.id,
            election_tick: self.election_ticks,
            // raft-rs draws from [min, max): a range of one value is no draw at all.
            max_election_tick: if self.election_randomized { 0 } else { self.election_ticks + 1 },
            heartbeat_tick: self.heartbeat_ticks,
            applied,
            max_size_per_msg: self.append_bytes_max,
            max_inflight_msgs: self.appends_in_flight_max,
            // A leader that has not heard from a majority for an election timeout steps
            // down (so a partitioned minority stops deciding), and a replica campaigns only
            // after a pre-vote showed it could win (a rejoining one does not depose a
            // healthy leader by raising the term).
            check_quorum: true,
            pre_vote: true,
            ..raft::Config::default()
        }
    }
}
