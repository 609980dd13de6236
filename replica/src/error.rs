//! What can go wrong in a replica, and which failures are fatal.

use std::fmt;

use twophase_wal::WalError;

/// A replica's error.
#[derive(Debug)]
pub enum ReplicaError {
    /// The wal failed (write, sync, open). Fatal: the replica must stop, as a single
    /// coordinator stops on a log error.
    Log(WalError),
    /// A wal record of this crate could not be decoded, or the records contradict each other
    /// (a gap in the entries). Fatal at open: the directory is damaged.
    Corrupt(String),
    /// A message from the wire was refused (too long, undecodable, not for us, from an unknown
    /// peer, a local message type). Not fatal: the message is dropped and nothing is lost.
    BadMessage(String),
    /// The configuration is unusable.
    Config(String),
    /// Raft itself refused (a storage error surfaced through it). Fatal.
    Raft(raft::Error),
}

impl fmt::Display for ReplicaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReplicaError::Log(e) => write!(f, "replica log: {e}"),
            ReplicaError::Corrupt(why) => write!(f, "replica log corrupt: {why}"),
            ReplicaError::BadMessage(why) => write!(f, "raft message refused: {why}"),
            ReplicaError::Config(why) => write!(f, "replica configuration: {why}"),
            ReplicaError::Raft(e) => write!(f, "raft: {e}"),
        }
    }
}

impl std::error::Error for ReplicaError {}

impl From<WalError> for ReplicaError {
    fn from(e: WalError) -> Self {
        ReplicaError::Log(e)
    }
}

impl ReplicaError {
    /// Whether the replica can go on serving after this error (only a refused message).
    pub fn is_fatal(&self) -> bool {
        !matches!(self, ReplicaError::BadMessage(_))
    }
}

/// Why a proposal was not accepted. Nothing was appended in any case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProposeError {
    /// This replica is not the leader; `leader_id` is the one it knows of, if any.
    NotLeader {
        /// The current leader's id, if known.
        leader_id: Option<u64>,
    },
    /// The batch is longer than `ReplicaConfig::batch_bytes_max`.
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// `ReplicaConfig::proposals_in_flight_max` proposals are appended but not committed yet:
    /// back-pressure, try again once some commit.
    Busy,
}

impl fmt::Display for ProposeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProposeError::NotLeader { leader_id: Some(id) } => write!(f, "not the leader (leader is {id})"),
            ProposeError::NotLeader { leader_id: None } => write!(f, "not the leader (no leader known)"),
            ProposeError::TooLarge { len, max } => write!(f, "batch of {len} bytes exceeds {max}"),
            ProposeError::Busy => write!(f, "too many proposals in flight"),
        }
    }
}

impl std::error::Error for ProposeError {}
