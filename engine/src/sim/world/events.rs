//! The event queue: what happens next, in simulated time (ties in scheduling order).

use std::cmp::{Ordering, Reverse};
use std::time::Duration;

use rand::Rng;

use super::network::Payload;
use super::{NodeId, World};
use crate::types::{Lsn, Time};

#[derive(Debug)]
pub(super) enum Event {
    /// `incarnation` of the connection's server end when sent (client links only).
    Deliver {
        to: NodeId,
        from: NodeId,
        incarnation: u64,
        payload: Payload,
    },
    SyncDone {
        node: NodeId,
        incarnation: u64,
        upto: usize,
    },
    Release {
        node: NodeId,
        incarnation: u64,
        durable: Lsn,
    },
    Tick {
        node: NodeId,
        incarnation: u64,
    },
    Crash {
        node: NodeId,
    },
    Restart {
        node: NodeId,
    },
    Partition {
        isolated: NodeId,
        duration: Duration,
    },
    /// The coordinator–participant connection broke (see `links`).
    /// `break_id` names the break: a later break of the same link makes these stale.
    LinkBroken {
        participant: u16,
        incarnation: u64,
        break_id: u64,
    },
    LinkRestored {
        participant: u16,
        incarnation: u64,
        break_id: u64,
    },
    ClientWake {
        client: u16,
        token: u64,
    },
    /// A participant snapshots its state (kept once its LSN is durable) and truncates its log.
    Snapshot {
        participant: u16,
    },
    /// The coordinator checkpoints (kept once its LSN is durable) and truncates its log.
    Checkpoint,
}

pub(super) struct Scheduled {
    pub(super) at: Time,
    pub(super) order: u64,
    pub(super) event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.order) == (other.at, other.order)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.at, self.order).cmp(&(other.at, other.order))
    }
}

impl World {
    pub(super) fn schedule(&mut self, at: Time, event: Event) {
        self.next_order += 1;
        self.queue.push(Reverse(Scheduled { at, order: self.next_order, event }));
    }

    pub(super) fn after_us(&mut self, (low, high): (u64, u64)) -> Time {
        self.now + Duration::from_micros(self.rng.gen_range(low..=high))
    }
}
