//! Crashes (losing unsynced records, maybe tearing the last) and restarts, and partitions,
//! scheduled at random within the fault window.

use std::time::Duration;

use rand::Rng;
use rand_chacha::ChaCha8Rng;

use super::events::Event;
use super::nodes::Node;
use super::{NodeId, World};
use crate::effects::DurabilityGate;
use crate::record::LogRecord;
use crate::sim::disk::CrashLoss;
use crate::types::Lsn;

const DOWNTIME_MS: (u64, u64) = (1, 300);

impl World {
    pub(super) fn crash(&mut self, node: NodeId) {
        let torn_probability = self.config.faults.torn_tail_probability;
        let loss = match node {
            NodeId::Coordinator => crash_node(&mut self.coordinator, &mut self.rng, torn_probability),
            NodeId::Participant(index) => {
                crash_node(&mut self.participants[index as usize], &mut self.rng, torn_probability)
            }
            NodeId::Client(_) => unreachable!("clients do not crash"),
        };
        let Some(loss) = loss else { return }; // Already down.
        match node {
            NodeId::Coordinator => self.observe_coordinator_restart(),
            _ => self.observe_participant_crash(node),
        }
        self.connections_closed_by_crash(node);
        self.counts.crashes += 1;
        self.counts.lost_records += loss.lost;
        self.counts.torn_tails += u64::from(loss.torn);
        let downtime = Duration::from_millis(self.rng.gen_range(DOWNTIME_MS.0..=DOWNTIME_MS.1));
        self.schedule(self.now + downtime, Event::Restart { node });
    }

    pub(super) fn random_server(&mut self) -> NodeId {
        let pick = self.rng.gen_range(0..=self.config.participants);
        if pick == 0 { NodeId::Coordinator } else { NodeId::Participant(pick - 1) }
    }
}

fn crash_node<E, R: LogRecord + Clone, O>(
    node: &mut Node<E, R, O>,
    rng: &mut ChaCha8Rng,
    torn_probability: f64,
) -> Option<CrashLoss> {
    node.engine.as_ref()?;
    node.engine = None;
    node.incarnation += 1;
    node.sync_in_flight = false;
    node.tick_at = None;
    node.fx.clear();
    node.gate = DurabilityGate::new(Lsn::NONE);
    Some(node.disk.crash(rng, torn_probability))
}
