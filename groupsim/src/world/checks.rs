//! The end of a run: quiescence, and the checks on ground truth (the batches the replicas
//! committed, the participants' records, what clients heard).

use twophase_engine::ops::Outcome;
use twophase_engine::participant::Participant;
use twophase_engine::sim::checker;
use twophase_engine::{CoordRecord, Lsn};

use super::World;
use crate::GroupReport;
use crate::applied::decode_batch;

impl World {
    /// Every client has its outcomes, a leader's engine has nothing unfinished, and no
    /// participant holds anything prepared or locked.
    pub(super) fn is_quiescent(&self) -> bool {
        let leader_done = self.replicas.iter().any(|node| {
            node.leading.as_ref().is_some_and(|l| l.engine.unfinished() == 0 && l.engine.open_transactions() == 0)
        });
        leader_done
            && self.clients.iter().all(|c| c.is_done())
            && self.participants.iter().all(|p| {
                p.engine
                    .as_ref()
                    .is_some_and(|p| p.prepared() == 0 && p.locked_keys() == 0 && p.open_transactions() == 0)
            })
    }

    pub(super) fn describe_progress(&self) -> String {
        let clients_waiting = self.clients.iter().filter(|c| !c.is_done()).count();
        let replicas: Vec<String> = self
            .replicas
            .iter()
            .map(|node| match (&node.replica, &node.leading) {
                (None, _) => format!("r{} down", node.id),
                (Some(r), leading) => format!(
                    "r{} term={} leader={:?} applied={} engine={}",
                    node.id,
                    r.term(),
                    r.leader_id(),
                    r.applied().0,
                    leading.as_ref().map_or("none".to_string(), |l| format!("unfinished={}", l.engine.unfinished()))
                ),
            })
            .collect();
        let participants: Vec<String> = self
            .participants
            .iter()
            .enumerate()
            .filter_map(|(i, node)| node.engine.as_ref().map(|p| (i, p)))
            .map(|(i, p)| format!("p{} prepared={} locked={}", i + 1, p.prepared(), p.locked_keys()))
            .collect();
        format!("{clients_waiting} clients unfinished; {}; {}", replicas.join(", "), participants.join(", "))
    }

    /// The committed log as the coordinator's records, in order (the batches every replica
    /// agreed on, decoded).
    fn committed_records(&self) -> Vec<(Lsn, CoordRecord)> {
        let mut records = Vec::new();
        for data in self.committed.values() {
            let (first, batch) = decode_batch(data).expect("a committed batch decodes");
            records.extend(batch.into_iter().enumerate().map(|(k, record)| (Lsn(first.0 + k as u64), record)));
        }
        records
    }

    pub(super) fn finish(self) -> GroupReport {
        let mut violations = self.violations.clone();
        let coordinator_log = self.committed_records();
        let participant_logs: Vec<Vec<(Lsn, twophase_engine::PartRecord)>> =
            self.participants.iter().map(|p| p.log.clone()).collect();
        let live: Vec<Option<&Participant>> = self.participants.iter().map(|p| p.engine.as_ref()).collect();
        violations.extend(checker::check(&self.config.sim, &self.observed, &coordinator_log, &participant_logs, &live));
        let setup = self.config.sim.participants as usize;
        let committed = self.observed.outcomes.values().filter(|o| o.is_committed()).count();
        let aborted = self.observed.outcomes.values().filter(|o| matches!(o, Outcome::Aborted { .. })).count();
        GroupReport {
            seed: self.config.sim.seed,
            committed: committed.saturating_sub(setup),
            aborted,
            faults: self.counts,
            violations,
            events: self.events,
        }
    }
}
