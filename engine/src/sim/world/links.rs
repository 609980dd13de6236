//! Coordinator–participant links as connections, for runs with interactive clients. A TCP
//! connection never loses a message and goes on: a loss is the connection breaking, and
//! both ends hear it (the coordinator's `participant_unreachable`, the participant's
//! `on_coordinator_lost`), so an interactive transaction never waits for an answer that
//! was lost. Nothing passes a broken link until it reconnects (once any partition is over;
//! after a participant crash, at its restart). Nor do these links reorder (TCP does not),
//! and they never duplicate an `Execute` (see `never_duplicated`). One-shot-only runs keep
//! the lossy, reordering datagram model their protocol tolerates on its own (prepare
//! timeout, re-drive, inquiries).

use super::events::Event;
use super::network::Payload;
use super::{NodeId, World};
use crate::message::ToParticipant;
use crate::sim::workload::participant_id;
use crate::types::Time;

const RECONNECT_US: (u64, u64) = (1_000, 20_000);

impl World {
    pub(super) fn links_are_connections(&self) -> bool {
        self.config.interactive.clients > 0
    }

    /// The coordinator–participant link `from`–`to`, if it is one: the participant's index.
    pub(super) fn server_link(from: NodeId, to: NodeId) -> Option<u16> {
        match (from, to) {
            (NodeId::Coordinator, NodeId::Participant(p)) | (NodeId::Participant(p), NodeId::Coordinator) => Some(p),
            _ => None,
        }
    }

    pub(super) fn link_broken(&self, from: NodeId, to: NodeId) -> bool {
        Self::server_link(from, to).is_some_and(|p| self.broken_links.contains_key(&p))
    }

    /// A message to a participant that is down is lost with its connection.
    pub(super) fn to_a_down_participant(&self, to: NodeId) -> Option<u16> {
        let NodeId::Participant(index) = to else { return None };
        let down = self.participants[index as usize].engine.is_none();
        (down && self.links_are_connections()).then_some(index)
    }

    /// Whether the network must never duplicate `payload`. Over connections, an `Execute`:
    /// a participant runs a duplicated Execute twice (a second `Add` buffered into the same
    /// transaction), so the protocol relies on the transport's exactly-once delivery within
    /// a connection, which TCP gives. Every other message is still duplicated.
    pub(super) fn never_duplicated(&self, payload: &Payload) -> bool {
        let execute = matches!(payload, Payload::ToParticipant { message: ToParticipant::Execute { .. }, .. });
        execute && self.links_are_connections()
    }

    /// A message on the link to participant `index` was lost: the connection breaks.
    pub(super) fn break_link(&mut self, index: u16) {
        if !self.links_are_connections() || self.broken_links.contains_key(&index) {
            return;
        }
        self.link_breaks += 1;
        let break_id = self.link_breaks;
        self.broken_links.insert(index, break_id);
        let incarnation = self.coordinator.incarnation;
        self.schedule(self.now, Event::LinkBroken { participant: index, incarnation, break_id });
    }

    /// Both ends hear that the connection closed; it reconnects later.
    pub(super) fn link_broken_event(&mut self, index: u16, incarnation: u64, break_id: u64) {
        if incarnation != self.coordinator.incarnation || self.broken_links.get(&index) != Some(&break_id) {
            return; // The coordinator restarted since: every link is new.
        }
        let now = self.now;
        if let Some(engine) = self.coordinator.engine.as_mut() {
            engine.participant_unreachable(participant_id(index), &mut self.coordinator.fx);
            self.after_step(NodeId::Coordinator);
        }
        let node = &mut self.participants[index as usize];
        if let Some(engine) = node.engine.as_mut() {
            engine.on_coordinator_lost(now, &mut node.fx);
            self.after_step(NodeId::Participant(index));
        }
        let at = self.after_us(RECONNECT_US);
        self.schedule(at, Event::LinkRestored { participant: index, incarnation, break_id });
    }

    pub(super) fn link_restored_event(&mut self, index: u16, incarnation: u64, break_id: u64) {
        if incarnation != self.coordinator.incarnation || self.broken_links.get(&index) != Some(&break_id) {
            return;
        }
        let participant = NodeId::Participant(index);
        let down = self.participants[index as usize].engine.is_none();
        if down || self.partitioned(NodeId::Coordinator, participant) {
            let at = self.after_us(RECONNECT_US);
            return self.schedule(at, Event::LinkRestored { participant: index, incarnation, break_id });
        }
        self.broken_links.remove(&index);
        if let Some(engine) = self.coordinator.engine.as_mut() {
            engine.participant_reachable(participant_id(index));
        }
    }

    /// A (re)started coordinator has no connection to a participant that is down, nor over
    /// a link that has not reconnected yet.
    pub(super) fn links_at_coordinator_start(&mut self) {
        // At time zero every node starts in the same instant: all links come up.
        if !self.links_are_connections() || self.now == Time::ZERO {
            return;
        }
        for index in 0..self.config.participants {
            if self.participants[index as usize].engine.is_none() {
                self.break_link(index);
            }
        }
        let engine = self.coordinator.engine.as_mut().expect("started");
        for &index in self.broken_links.keys() {
            engine.participant_unreachable(participant_id(index), &mut self.coordinator.fx);
        }
    }

    /// A server crashed: its connections close. A coordinator's successor starts with
    /// fresh links; a participant's link reconnects once it is back.
    pub(super) fn connections_closed_by_crash(&mut self, node: NodeId) {
        if !self.links_are_connections() {
            return;
        }
        match node {
            NodeId::Coordinator => {
                self.broken_links.clear();
                let now = self.now;
                for index in 0..self.config.participants {
                    let node = &mut self.participants[index as usize];
                    if let Some(engine) = node.engine.as_mut() {
                        engine.on_coordinator_lost(now, &mut node.fx);
                        self.after_step(NodeId::Participant(index));
                    }
                }
            }
            NodeId::Participant(index) => self.break_link(index),
            NodeId::Client(_) => {}
        }
    }
}
