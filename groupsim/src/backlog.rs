//! Back-pressure for a leader whose Raft proposal queue is full (`ProposeError::Busy`).
//!
//! The batches its engine numbered wait here, in order, and are proposed before anything
//! newer on the following turns; meanwhile the runtime feeds its engine no input (no client
//! request, no participant message, no timer), so the queue stops growing, and the outputs
//! waiting for those batches stay in the durability gate. The queue drains on its own as
//! the followers acknowledge; dropping the engine instead (what any other refusal does)
//! would throw away its state and every output it held for a condition that is only load.
//!
//! Invariant: batches reach Raft in the order the engine numbered their records (a
//! committed batch must start where the applied records end), so a held batch is never
//! overtaken.

use std::collections::VecDeque;

use twophase_replica::{ProposeError, RecordLog, Replica};

/// The batches a leader could not propose yet.
#[derive(Debug, Default)]
pub struct ProposalBacklog {
    batches: VecDeque<Vec<u8>>,
    /// Turns that ended with batches held (for the simulator's counts and the logs).
    busy_turns: u64,
}

impl ProposalBacklog {
    /// Nothing is held: the engine may take input.
    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }

    /// Batches held.
    pub fn len(&self) -> usize {
        self.batches.len()
    }

    /// Turns that ended with batches held, since this backlog was made.
    pub fn busy_turns(&self) -> u64 {
        self.busy_turns
    }

    /// Proposes the held batches, then `batches`, in order, until Raft's queue is full;
    /// what is left waits here for the next call. Any refusal other than a full queue is
    /// returned with everything held dropped: the engine's numbering then has a gap the
    /// log does not, and the runtime rebuilds the engine from the log.
    pub fn propose<L: RecordLog>(
        &mut self,
        replica: &mut Replica<L>,
        batches: Vec<Vec<u8>>,
    ) -> Result<(), ProposeError> {
        self.batches.extend(batches);
        while !self.batches.is_empty() {
            if replica.is_busy() && replica.is_leader() {
                self.busy_turns += 1;
                return Ok(());
            }
            let batch = self.batches.pop_front().expect("not empty");
            match replica.propose(batch) {
                Ok(_) => {}
                Err(ProposeError::Busy) => unreachable!("the queue had room a moment ago"),
                Err(refused) => {
                    self.batches.clear();
                    return Err(refused);
                }
            }
        }
        Ok(())
    }

    /// Drops what is held (the leadership ended: its successor rebuilds from the log).
    pub fn clear(&mut self) {
        self.batches.clear();
    }
}

#[cfg(test)]
mod tests {
    use twophase_replica::{Output, ReplicaConfig, WalStorage};

    use super::*;
    use crate::disk::SimDisk;

    const RECORD_BYTES_MAX: usize = 1 << 20;

    /// A group of one, leading, whose disk syncs only when the test says so.
    fn sole_leader(proposals_in_flight_max: u64) -> (Replica<SimDisk>, SimDisk) {
        let mut config = ReplicaConfig::new(1, vec![1]);
        config.election_randomized = false;
        config.proposals_in_flight_max = proposals_in_flight_max;
        let disk = SimDisk::new();
        let (records, next_lsn) = disk.read_back();
        let storage = WalStorage::recover(disk.clone(), next_lsn, &records, RECORD_BYTES_MAX, &config.voters).unwrap();
        let mut replica = Replica::on_storage(config, storage).unwrap();
        for _ in 0..1_000 {
            if replica.is_leader() {
                sync(&mut replica, &disk);
                return (replica, disk);
            }
            replica.tick();
            sync(&mut replica, &disk);
        }
        panic!("a group of one elects itself");
    }

    /// Makes everything written durable; returns the non-empty entries applied.
    fn sync(replica: &mut Replica<SimDisk>, disk: &SimDisk) -> Vec<Vec<u8>> {
        replica.poll().unwrap();
        disk.synced_upto(disk.last_lsn());
        replica.poll().unwrap();
        let mut outputs = Vec::new();
        replica.drain_outputs(&mut outputs);
        let applied = outputs.into_iter().filter_map(|output| match output {
            Output::Apply(entry) if !entry.data.is_empty() => Some(entry.data.to_vec()),
            _ => None,
        });
        applied.collect()
    }

    #[test]
    fn a_full_queue_holds_batches_and_proposes_them_in_order_once_it_drains() {
        let (mut replica, disk) = sole_leader(2);
        let mut backlog = ProposalBacklog::default();
        let batches: Vec<Vec<u8>> = (1..=7u8).map(|n| vec![n]).collect();
        backlog.propose(&mut replica, batches).unwrap();
        assert_eq!(backlog.len(), 5, "two proposed, the rest held");
        assert!(replica.is_busy() && replica.is_leader(), "still leading, nothing dropped");
        // A newer batch waits behind the held ones.
        backlog.propose(&mut replica, vec![vec![8]]).unwrap();
        assert_eq!(backlog.len(), 6);
        let mut applied = Vec::new();
        for _ in 0..100 {
            applied.extend(sync(&mut replica, &disk));
            backlog.propose(&mut replica, Vec::new()).unwrap();
            if backlog.is_empty() && !replica.is_busy() {
                applied.extend(sync(&mut replica, &disk));
                break;
            }
        }
        assert_eq!(applied, (1..=8u8).map(|n| vec![n]).collect::<Vec<_>>(), "every batch once, in order");
        assert!(backlog.busy_turns() >= 3, "{} turns held batches", backlog.busy_turns());
    }

    #[test]
    fn another_refusal_drops_what_is_held_and_is_returned() {
        let mut config = ReplicaConfig::new(1, vec![1, 2, 3]);
        config.election_randomized = false;
        let disk = SimDisk::new();
        let (records, next_lsn) = disk.read_back();
        let storage = WalStorage::recover(disk.clone(), next_lsn, &records, RECORD_BYTES_MAX, &config.voters).unwrap();
        let mut follower = Replica::on_storage(config, storage).unwrap();
        let mut backlog = ProposalBacklog::default();
        let refused = backlog.propose(&mut follower, vec![vec![1], vec![2]]).unwrap_err();
        assert!(matches!(refused, ProposeError::NotLeader { .. }), "{refused}");
        assert!(backlog.is_empty());
    }
}
