//! Server nodes: each state machine (None while crashed) with its disk, durability gate and
//! timer; syncs, releases of gated outputs, snapshots and checkpoints.

use rand::Rng;

use super::events::Event;
use super::{NodeId, SNAPSHOT_EVERY_MS, World};
use crate::coordinator::{CoordOutput, Coordinator};
use crate::effects::{DurabilityGate, Effects};
use crate::message::ToCoordinator;
use crate::participant::Participant;
use crate::record::{CoordRecord, LogRecord, PartRecord};
use crate::sim::disk::Disk;
use crate::types::{Lsn, Time};

const SYNC_US: (u64, u64) = (100, 1000);
/// Now and then a device stalls a sync for much longer (real virtual disks do, for
/// milliseconds): it lets a crash fall between records the protocol assumes are usually
/// durable in order, such as a coordinator's `Staged` record and the votes it overlaps.
const STALLED_SYNC_US: (u64, u64) = (3_000, 20_000);
const STALLED_SYNC_PERCENT: u32 = 3;
const RELEASE_US: (u64, u64) = (0, 100);

/// A server node: its state machine (None while crashed), log and gate.
pub(super) struct Node<E, R, O> {
    pub(super) engine: Option<E>,
    pub(super) disk: Disk<R>,
    pub(super) gate: DurabilityGate<O>,
    pub(super) fx: Effects<R, O>,
    pub(super) incarnation: u64,
    pub(super) sync_in_flight: bool,
    pub(super) tick_at: Option<Time>,
}

impl<E, R: LogRecord + Clone, O> Node<E, R, O> {
    pub(super) fn new() -> Self {
        Node {
            engine: None,
            disk: Disk::new(),
            gate: DurabilityGate::new(Lsn::NONE),
            fx: Effects::default(),
            incarnation: 0,
            sync_in_flight: false,
            tick_at: None,
        }
    }
}

pub(super) type CoordNode = Node<Coordinator, CoordRecord, CoordOutput>;
pub(super) type PartNode = Node<Participant, PartRecord, ToCoordinator>;

impl World {
    pub(super) fn start_node(&mut self, node: NodeId) {
        let now = self.now;
        match node {
            NodeId::Coordinator => {
                let config = self.coordinator_config();
                let log = self.coordinator.disk.read_back();
                let checkpoint = self.checkpoint.clone();
                self.pending_checkpoint = None;
                let node_state = &mut self.coordinator;
                node_state.gate = DurabilityGate::new(node_state.disk.durable_lsn());
                node_state.engine = Some(Coordinator::recover_from(config, checkpoint, log, now, &mut node_state.fx));
                self.links_at_coordinator_start();
            }
            NodeId::Participant(index) => {
                let config = self.participant_config(index);
                let snapshot = self.snapshots[index as usize].clone();
                self.pending_snapshots[index as usize] = None;
                let node_state = &mut self.participants[index as usize];
                let log = node_state.disk.read_back();
                node_state.gate = DurabilityGate::new(node_state.disk.durable_lsn());
                node_state.engine = Some(Participant::recover(config, snapshot, log, now, &mut node_state.fx));
            }
            NodeId::Client(_) => unreachable!("clients do not restart"),
        }
        if now > Time::ZERO {
            self.counts.restarts += 1;
        }
        self.after_step(node);
    }

    /// Drains a node's effects: appends go to its disk (starting a sync if none runs),
    /// outputs through its gate; then its next timer is scheduled.
    pub(super) fn after_step(&mut self, node: NodeId) {
        let mut released_coord = Vec::new();
        let mut released_part = Vec::new();
        match node {
            NodeId::Coordinator => drain(&mut self.coordinator, &mut released_coord),
            NodeId::Participant(index) => drain(&mut self.participants[index as usize], &mut released_part),
            NodeId::Client(_) => return,
        }
        self.send_coordinator_outputs(released_coord);
        self.send_participant_outputs(node, released_part);
        self.maybe_start_sync(node);
        self.schedule_tick(node);
    }

    pub(super) fn maybe_start_sync(&mut self, node: NodeId) {
        let (incarnation, upto) = {
            let (in_flight, disk_len, unsynced, incarnation) = match node {
                NodeId::Coordinator => node_sync_state(&self.coordinator),
                NodeId::Participant(index) => node_sync_state(&self.participants[index as usize]),
                NodeId::Client(_) => return,
            };
            if in_flight || !unsynced {
                return;
            }
            (incarnation, disk_len)
        };
        match node {
            NodeId::Coordinator => self.coordinator.sync_in_flight = true,
            NodeId::Participant(index) => self.participants[index as usize].sync_in_flight = true,
            NodeId::Client(_) => unreachable!(),
        }
        let stalled = self.rng.gen_range(0..100) < STALLED_SYNC_PERCENT;
        let at = self.after_us(if stalled { STALLED_SYNC_US } else { SYNC_US });
        self.schedule(at, Event::SyncDone { node, incarnation, upto });
    }

    pub(super) fn sync_done(&mut self, node: NodeId, incarnation: u64, upto: usize) {
        let durable = match node {
            NodeId::Coordinator => complete_sync(&mut self.coordinator, incarnation, upto),
            NodeId::Participant(index) => complete_sync(&mut self.participants[index as usize], incarnation, upto),
            NodeId::Client(_) => unreachable!(),
        };
        let Some(durable) = durable else { return };
        match node {
            NodeId::Participant(index) => self.install_snapshot_if_durable(index),
            NodeId::Coordinator => self.install_checkpoint_if_durable(),
            NodeId::Client(_) => {}
        }
        // Releasing is a separate step, so a crash can fall between sync and send.
        let at = self.after_us(RELEASE_US);
        self.schedule(at, Event::Release { node, incarnation, durable });
        self.maybe_start_sync(node);
    }

    pub(super) fn release(&mut self, node: NodeId, incarnation: u64, durable: Lsn) {
        match node {
            NodeId::Coordinator => {
                let mut released = Vec::new();
                if self.coordinator.incarnation != incarnation || self.coordinator.engine.is_none() {
                    return;
                }
                self.coordinator.gate.advance(durable, &mut released);
                self.send_coordinator_outputs(released);
            }
            NodeId::Participant(index) => {
                let mut released = Vec::new();
                let node_state = &mut self.participants[index as usize];
                if node_state.incarnation != incarnation || node_state.engine.is_none() {
                    return;
                }
                node_state.gate.advance(durable, &mut released);
                self.send_participant_outputs(node, released);
            }
            NodeId::Client(_) => unreachable!(),
        }
    }

    pub(super) fn take_snapshot(&mut self, index: u16) {
        let next = self.after_us((SNAPSHOT_EVERY_MS.0 * 1000, SNAPSHOT_EVERY_MS.1 * 1000));
        self.schedule(next, Event::Snapshot { participant: index });
        let Some(engine) = self.participants[index as usize].engine.as_ref() else { return };
        self.pending_snapshots[index as usize] = Some(engine.snapshot());
        self.install_snapshot_if_durable(index);
    }

    /// A snapshot is kept only once every record it covers is durable; then the log before
    /// a random point it covers is truncated (recovery must skip what remains covered).
    pub(super) fn install_snapshot_if_durable(&mut self, index: u16) {
        let i = index as usize;
        let durable = self.participants[i].disk.durable_lsn();
        let Some(snapshot) = self.pending_snapshots[i].take_if(|s| s.lsn <= durable) else { return };
        let cut = Lsn(self.rng.gen_range(0..=snapshot.lsn.0 + 1));
        self.snapshots[i] = Some(snapshot);
        self.participants[i].disk.truncate_before(cut);
    }

    pub(super) fn take_checkpoint(&mut self) {
        let next = self.after_us((SNAPSHOT_EVERY_MS.0 * 1000, SNAPSHOT_EVERY_MS.1 * 1000));
        self.schedule(next, Event::Checkpoint);
        let Some(engine) = self.coordinator.engine.as_ref() else { return };
        self.pending_checkpoint = Some(engine.snapshot());
        self.install_checkpoint_if_durable();
    }

    /// As for participants: kept once durable, then the log before a random point it covers
    /// is truncated.
    pub(super) fn install_checkpoint_if_durable(&mut self) {
        let durable = self.coordinator.disk.durable_lsn();
        let Some(checkpoint) = self.pending_checkpoint.take_if(|c| c.lsn <= durable) else { return };
        let cut = Lsn(self.rng.gen_range(0..=checkpoint.lsn.0 + 1));
        self.checkpoint = Some(checkpoint);
        self.coordinator.disk.truncate_before(cut);
    }

    pub(super) fn schedule_tick(&mut self, node: NodeId) {
        let (deadline, tick_at, incarnation) = match node {
            NodeId::Coordinator => {
                let n = &self.coordinator;
                (n.engine.as_ref().and_then(Coordinator::next_deadline), n.tick_at, n.incarnation)
            }
            NodeId::Participant(index) => {
                let n = &self.participants[index as usize];
                (n.engine.as_ref().and_then(Participant::next_deadline), n.tick_at, n.incarnation)
            }
            NodeId::Client(_) => return,
        };
        let Some(deadline) = deadline else { return };
        if tick_at.is_some_and(|at| at <= deadline) {
            return;
        }
        let at = deadline.max(self.now);
        match node {
            NodeId::Coordinator => self.coordinator.tick_at = Some(at),
            NodeId::Participant(index) => self.participants[index as usize].tick_at = Some(at),
            NodeId::Client(_) => unreachable!(),
        }
        self.schedule(at, Event::Tick { node, incarnation });
    }

    pub(super) fn tick(&mut self, node: NodeId, incarnation: u64) {
        let now = self.now;
        match node {
            NodeId::Coordinator => {
                let n = &mut self.coordinator;
                if n.incarnation != incarnation || n.tick_at != Some(now) {
                    return;
                }
                n.tick_at = None;
                let Some(engine) = n.engine.as_mut() else { return };
                engine.on_tick(now, &mut n.fx);
            }
            NodeId::Participant(index) => {
                let n = &mut self.participants[index as usize];
                if n.incarnation != incarnation || n.tick_at != Some(now) {
                    return;
                }
                n.tick_at = None;
                let Some(engine) = n.engine.as_mut() else { return };
                engine.on_tick(now, &mut n.fx);
            }
            NodeId::Client(_) => unreachable!(),
        }
        self.after_step(node);
    }
}

fn drain<E, R: LogRecord + Clone, O>(node: &mut Node<E, R, O>, released: &mut Vec<O>) {
    for (lsn, record) in node.fx.appends.drain(..) {
        node.disk.write(lsn, record);
    }
    for output in node.fx.outputs.drain(..) {
        node.gate.push(output, released);
    }
}

fn node_sync_state<E, R: LogRecord + Clone, O>(node: &Node<E, R, O>) -> (bool, usize, bool, u64) {
    (node.sync_in_flight || node.engine.is_none(), node.disk.len(), node.disk.has_unsynced(), node.incarnation)
}

fn complete_sync<E, R: LogRecord + Clone, O>(node: &mut Node<E, R, O>, incarnation: u64, upto: usize) -> Option<Lsn> {
    if node.incarnation != incarnation || node.engine.is_none() {
        return None;
    }
    node.sync_in_flight = false;
    Some(node.disk.synced_upto(upto))
}
