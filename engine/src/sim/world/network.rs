//! Links between nodes: in order like TCP unless a fault reorders, drops or duplicates a
//! message (participant links only; client links die with the coordinator's incarnation).

use std::time::Duration;

use rand::Rng;

use super::events::Event;
use super::{NodeId, World};
use crate::coordinator::{ClientOrigin, CoordOutput, Coordinator};
use crate::message::{Interactive, Reply, Submit, ToCoordinator, ToParticipant};
use crate::ops::AbortReason;
use crate::sim::workload::participant_id;
use crate::types::{Epoch, ParticipantId, Time};

/// Simulated network latency, in microseconds.
const NET_DELAY_US: (u64, u64) = (20, 1500);

#[derive(Debug)]
pub(super) enum Payload {
    ToParticipant { epoch: Epoch, message: ToParticipant },
    ToCoordinator { from: ParticipantId, message: ToCoordinator },
    Submit(Submit),
    Interactive(Interactive),
    Reply(Reply),
}

impl Payload {
    pub(super) fn duplicate(&self) -> Payload {
        match self {
            Payload::ToParticipant { epoch, message } => {
                Payload::ToParticipant { epoch: *epoch, message: message.clone() }
            }
            Payload::ToCoordinator { from, message } => {
                Payload::ToCoordinator { from: *from, message: message.clone() }
            }
            Payload::Submit(submit) => Payload::Submit(submit.clone()),
            Payload::Interactive(request) => Payload::Interactive(request.clone()),
            Payload::Reply(reply) => Payload::Reply(reply.clone()),
        }
    }
}

impl World {
    pub(super) fn send_coordinator_outputs(&mut self, outputs: Vec<CoordOutput>) {
        let Some(epoch) = self.coordinator.engine.as_ref().map(Coordinator::epoch) else { return };
        for output in outputs {
            match output {
                CoordOutput::ToParticipant(to, message) => {
                    if let ToParticipant::Abort { txid } | ToParticipant::PrepareExecuted { txid, .. } = message {
                        self.observe_coordinator_ended(txid);
                    }
                    let to = NodeId::Participant(to.0 - 1);
                    self.send(NodeId::Coordinator, to, Payload::ToParticipant { epoch, message });
                }
                CoordOutput::ToClient(reply) => {
                    let Some((client, _)) = reply.request() else { continue };
                    let Some(&index) = self.client_of_session.get(&client) else { continue };
                    self.send(NodeId::Coordinator, NodeId::Client(index), Payload::Reply(reply));
                }
                CoordOutput::ToConnection { conn, reply } => {
                    let to = NodeId::Client(u16::try_from(conn).expect("a client index"));
                    self.send(NodeId::Coordinator, to, Payload::Reply(reply));
                }
                CoordOutput::Warning(_) => {}
            }
        }
    }

    pub(super) fn send_participant_outputs(&mut self, node: NodeId, outputs: Vec<ToCoordinator>) {
        let NodeId::Participant(index) = node else { return };
        for message in outputs {
            self.observe_participant_output(index, &message);
            self.send(node, NodeId::Coordinator, Payload::ToCoordinator { from: participant_id(index), message });
        }
    }

    pub(super) fn is_client_link(from: NodeId, to: NodeId) -> bool {
        matches!(from, NodeId::Client(_)) || matches!(to, NodeId::Client(_))
    }

    pub(super) fn partitioned(&self, a: NodeId, b: NodeId) -> bool {
        match self.isolated {
            Some((isolated, until)) if self.now < until => (a == isolated) != (b == isolated),
            _ => false,
        }
    }

    pub(super) fn send(&mut self, from: NodeId, to: NodeId, payload: Payload) {
        let faulty = self.faults_active();
        if self.link_broken(from, to) {
            return;
        }
        if let Some(participant) = self.to_a_down_participant(to) {
            return self.break_link(participant);
        }
        if self.partitioned(from, to) || (faulty && self.rng.gen_bool(self.config.faults.drop_probability)) {
            self.counts.dropped += 1;
            if let Some(participant) = Self::server_link(from, to) {
                self.break_link(participant);
            }
            return;
        }
        let incarnation = self.coordinator.incarnation;
        if !Self::is_client_link(from, to) && faulty {
            if self.rng.gen_bool(self.config.faults.duplicate_probability) && !self.never_duplicated(&payload) {
                self.counts.duplicated += 1;
                let at = self.after_us(NET_DELAY_US);
                self.schedule(at, Event::Deliver { to, from, incarnation, payload: payload.duplicate() });
            }
            if self.rng.gen_bool(self.config.faults.reorder_probability) && !self.links_are_connections() {
                self.counts.reordered += 1;
                let at = self.after_us((NET_DELAY_US.0, NET_DELAY_US.1 * 4));
                self.schedule(at, Event::Deliver { to, from, incarnation, payload });
                return;
            }
        }
        // Links are connections: in order unless a fault above says otherwise.
        let earliest = self.link_clock.get(&(from, to)).copied().unwrap_or(Time::ZERO);
        let at = self.after_us(NET_DELAY_US).max(earliest + Duration::from_nanos(1));
        self.link_clock.insert((from, to), at);
        self.schedule(at, Event::Deliver { to, from, incarnation, payload });
    }

    pub(super) fn deliver(&mut self, to: NodeId, from: NodeId, incarnation: u64, payload: Payload) {
        if self.partitioned(from, to) {
            self.counts.dropped += 1;
            if let Some(participant) = Self::server_link(from, to) {
                self.break_link(participant);
            }
            return;
        }
        if Self::is_client_link(from, to) && incarnation != self.coordinator.incarnation {
            return; // The connection died with the coordinator.
        }
        if let Some(participant) = self.to_a_down_participant(to) {
            return self.break_link(participant);
        }
        let now = self.now;
        match (to, payload) {
            (NodeId::Participant(index), Payload::ToParticipant { epoch, message }) => {
                let n = &mut self.participants[index as usize];
                let Some(engine) = n.engine.as_mut() else { return };
                let aborted = match message {
                    ToParticipant::Abort { txid } => Some(txid),
                    _ => None,
                };
                if let Err(refused) = engine.on_message(now, epoch, message, &mut n.fx) {
                    unreachable!("the simulated coordinator sent a message a participant refuses: {refused}");
                }
                if let Some(txid) = aborted {
                    self.observe_abort_delivered(index, txid);
                }
            }
            (NodeId::Coordinator, Payload::ToCoordinator { from, message }) => {
                if self.coordinator.engine.is_none() {
                    return;
                }
                let waiter = match &message {
                    ToCoordinator::WaitFor { waiter, holders, .. } => {
                        self.observe_wait_for_delivered(from.0 - 1, *waiter, holders);
                        Some(*waiter)
                    }
                    ToCoordinator::Executed { txid, result: Err(AbortReason::LockTimeout { .. }) } => {
                        self.observe_lock_timeout_delivered(from.0 - 1, *txid);
                        None
                    }
                    _ => None,
                };
                let n = &mut self.coordinator;
                let engine = n.engine.as_mut().expect("checked above");
                engine.on_message(now, from, message, &mut n.fx);
                self.after_step(to);
                if let Some(waiter) = waiter {
                    self.check_no_cycle_persists(waiter);
                }
                return;
            }
            (NodeId::Coordinator, Payload::Interactive(request)) => {
                let NodeId::Client(index) = from else { unreachable!("interactive requests come from clients") };
                let n = &mut self.coordinator;
                let Some(engine) = n.engine.as_mut() else { return };
                let origin = ClientOrigin { conn: u64::from(index), identity: &self.clients[index as usize].identity };
                engine.on_interactive(now, origin, request, &mut n.fx);
            }
            (NodeId::Coordinator, Payload::Submit(submit)) => {
                let NodeId::Client(index) = from else { unreachable!("submits come from clients") };
                let n = &mut self.coordinator;
                let Some(engine) = n.engine.as_mut() else { return };
                let origin = ClientOrigin { conn: u64::from(index), identity: &self.clients[index as usize].identity };
                engine.on_submit(now, origin, submit, &mut n.fx);
            }
            (NodeId::Client(index), Payload::Reply(reply)) => return self.client_reply(index, reply),
            (to, payload) => unreachable!("{payload:?} misrouted to {to:?}"),
        }
        self.after_step(to);
    }
}
