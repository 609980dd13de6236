//! The participants (the engine's, on disks that sync at once: they do not crash here; the
//! engine sim covers theirs) and the one-shot clients (the engine sim's, each following
//! `NotLeader` answers and trying the next replica after a timeout).

use std::time::Duration;

use twophase_engine::ops::Outcome;
use twophase_engine::participant::{PartEffects, Participant, ParticipantConfig};
use twophase_engine::sim::workload::participant_id;
use twophase_engine::{
    ClientOrigin, Epoch, Lsn, PartRecord, ParticipantId, RejectReason, Reply, Submit, Time, ToCoordinator,
    ToParticipant,
};

use super::{Endpoint, EngineId, Event, World};

const CLIENT_TIMEOUT: Duration = Duration::from_millis(300);

#[derive(Default)]
pub(super) struct PartNode {
    pub engine: Option<Participant>,
    pub fx: PartEffects,
    /// Every record it wrote (all durable at once).
    pub log: Vec<(Lsn, PartRecord)>,
    /// The engine whose connection it holds.
    pub conn: Option<EngineId>,
    pub tick_at: Option<Time>,
}

impl World {
    pub(super) fn start_participant(&mut self, index: u16) {
        let mut config = ParticipantConfig::new(participant_id(index));
        config.inquiry_after = Duration::from_millis(50);
        config.inquiry_max = Duration::from_millis(500);
        config.hash_seed = self.config.sim.seed ^ (index as u64 + 1);
        let now = self.now;
        let node = &mut self.participants[index as usize];
        node.engine = Some(Participant::recover(config, None, Vec::new(), now, &mut node.fx));
        self.after_participant_step(index, None);
    }

    /// Its records are durable at once; its outputs go to `reply_to`; its timer is set.
    fn after_participant_step(&mut self, index: u16, reply_to: Option<EngineId>) {
        let node = &mut self.participants[index as usize];
        node.log.append(&mut node.fx.appends);
        let outputs: Vec<ToCoordinator> = node.fx.outputs.drain(..).map(|gated| gated.item).collect();
        let from = participant_id(index);
        if let Some(engine) = reply_to {
            for message in outputs {
                self.send(Endpoint::Other, Endpoint::Replica(engine.replica), || Event::ToCoordinator {
                    engine,
                    from,
                    message: message.clone(),
                });
            }
        }
        let node = &mut self.participants[index as usize];
        let Some(deadline) = node.engine.as_ref().and_then(Participant::next_deadline) else { return };
        if node.tick_at.is_some_and(|at| at <= deadline) {
            return;
        }
        let at = deadline.max(self.now);
        node.tick_at = Some(at);
        self.schedule(at, Event::ParticipantTick { participant: index });
    }

    pub(super) fn participant_tick(&mut self, index: u16) {
        let now = self.now;
        let node = &mut self.participants[index as usize];
        if node.tick_at != Some(now) {
            return;
        }
        node.tick_at = None;
        node.engine.as_mut().expect("participants stay up").on_tick(now, &mut node.fx);
        let conn = node.conn;
        self.after_participant_step(index, conn);
    }

    /// A message from an engine of `epoch`. One from an epoch below one the participant saw
    /// must change nothing (it may only vote no): a deposed leader's late prepare or commit.
    pub(super) fn participant_message(&mut self, index: u16, engine: EngineId, epoch: Epoch, message: ToParticipant) {
        let now = self.now;
        let node = &mut self.participants[index as usize];
        let participant = node.engine.as_mut().expect("participants stay up");
        let seen = participant.max_epoch();
        let acts = matches!(message, ToParticipant::Prepare { .. } | ToParticipant::Commit { .. });
        let txid = message.txid();
        let appended_before = node.fx.appends.len();
        if participant.on_message(now, epoch, message, &mut node.fx).is_err() {
            // Refused: the real driver closes the connection; nothing changed.
            return;
        }
        if acts && epoch < seen {
            let acted = node.fx.appends[appended_before..].iter().any(|(_, record)| {
                matches!(record, PartRecord::Prepared { txid: t, .. } | PartRecord::Committed { txid: t } if *t == txid)
            });
            if acted {
                self.violations.push(format!(
                    "stale epoch: p{} acted on {txid} from epoch {} after seeing epoch {}",
                    index + 1,
                    epoch.0,
                    seen.0
                ));
            }
        }
        self.after_participant_step(index, Some(engine));
    }

    pub(super) fn participant_connected(&mut self, index: u16, engine: EngineId, epoch: Epoch) {
        if self.leading_mut(engine).is_none() {
            return; // That engine is gone: its dial never completed.
        }
        let now = self.now;
        let node = &mut self.participants[index as usize];
        node.conn = Some(engine);
        node.engine.as_mut().expect("up").on_coordinator_connected(now, epoch, &mut node.fx);
        self.after_participant_step(index, Some(engine));
    }

    pub(super) fn participant_lost(&mut self, index: u16, engine: EngineId) {
        let now = self.now;
        let node = &mut self.participants[index as usize];
        if node.conn != Some(engine) {
            return;
        }
        node.conn = None;
        node.engine.as_mut().expect("up").on_coordinator_lost(now, &mut node.fx);
        self.after_participant_step(index, None);
    }

    pub(super) fn coordinator_message(&mut self, engine: EngineId, from: ParticipantId, message: ToCoordinator) {
        let now = self.now;
        if self.leading_mut(engine).is_some() && self.replicas[(engine.replica - 1) as usize].backlogged() {
            // No input while batches are held: the message waits a tick (the runtime holds
            // its inbound events alike).
            let at = now + Duration::from_micros(super::TICK_US);
            return self.schedule(at, Event::ToCoordinator { engine, from, message });
        }
        let Some(leading) = self.leading_mut(engine) else { return };
        leading.engine.on_message(now, from, message, &mut leading.fx);
        self.step_replica(engine.replica);
    }

    // ---- clients -------------------------------------------------------------------------

    pub(super) fn client_wake(&mut self, index: u16, token: u64) {
        let client = &mut self.clients[index as usize];
        if client.wake_token != token {
            return; // Superseded.
        }
        let retry = client.pending.is_some() || (client.session.is_none() && client.registrations > 0);
        let redirected = std::mem::take(&mut self.client_redirected[index as usize]);
        if retry && !redirected {
            // No answer in time: the replica it asked may be down or cut off.
            let target = &mut self.client_target[index as usize];
            *target = *target % self.config.replicas + 1;
        }
        let client = &mut self.clients[index as usize];
        if client.session.is_none() {
            // A fresh nonce each time: a late answer to an earlier attempt is ignored.
            client.registrations += 1;
            let submit = Submit::register(client.registrations);
            return self.client_send(index, submit);
        }
        if client.pending.is_none() && client.start_next(&self.config.sim, &mut self.rng).is_none() {
            return;
        }
        let client = &self.clients[index as usize];
        let session = client.session.expect("registered");
        let pending = client.pending.as_ref().expect("a pending request");
        let submit = Submit { client: session, seq: pending.seq, ops: pending.ops.clone() };
        self.observed.issued.entry((session, pending.seq)).or_insert_with(|| pending.ops.clone());
        self.observed.submitted_at.entry((session, pending.seq)).or_insert(self.now);
        self.client_send(index, submit);
    }

    /// Sends to the replica it believes leads, and arms the retry timeout.
    fn client_send(&mut self, index: u16, submit: Submit) {
        let client = &mut self.clients[index as usize];
        client.wake_token += 1;
        let token = client.wake_token;
        self.schedule(self.now + CLIENT_TIMEOUT, Event::ClientWake { client: index, token });
        let replica = self.client_target[index as usize];
        self.send(Endpoint::Other, Endpoint::Replica(replica), || Event::Submit {
            replica,
            client: index,
            submit: submit.clone(),
        });
    }

    /// A request reaches a replica: its engine runs it, or it answers `NotLeader`.
    pub(super) fn submit(&mut self, replica: u64, client: u16, submit: Submit) {
        let now = self.now;
        let identity = self.clients[client as usize].identity.clone();
        let node = &mut self.replicas[(replica - 1) as usize];
        if node.leading.is_some() && node.backlogged() {
            let at = now + Duration::from_micros(super::TICK_US);
            return self.schedule(at, Event::Submit { replica, client, submit });
        }
        let node = &mut self.replicas[(replica - 1) as usize];
        let Some(leading) = node.leading.as_mut() else {
            let leader = node.replica.as_ref().and_then(|r| r.leader_id());
            if node.replica.is_some() {
                self.send(Endpoint::Replica(replica), Endpoint::Other, || Event::NotLeader { client, leader });
            }
            return;
        };
        let origin = ClientOrigin { conn: client as u64, identity: &identity };
        leading.engine.on_submit(now, origin, submit, &mut leading.fx);
        self.step_replica(replica);
    }

    pub(super) fn not_leader(&mut self, index: u16, leader: Option<u64>) {
        let target = &mut self.client_target[index as usize];
        *target = leader.unwrap_or(*target % self.config.replicas + 1);
        // Ask there soon (the same request, to the named leader).
        self.client_redirected[index as usize] = true;
        let client = &mut self.clients[index as usize];
        client.wake_token += 1;
        let token = client.wake_token;
        let at = self.after_us((1_000, 5_000));
        self.schedule(at, Event::ClientWake { client: index, token });
    }

    pub(super) fn client_reply(&mut self, index: u16, reply: Reply) {
        let client = &mut self.clients[index as usize];
        let current = client.pending.as_ref().map(|p| p.seq);
        let Some(session) = client.session else {
            if let Reply::Registered { nonce, client: session } = reply
                && nonce == client.registrations
            {
                client.session = Some(session);
                self.client_of_session.insert(session, index);
                client.wake_token += 1;
                let token = client.wake_token;
                self.schedule(self.now, Event::ClientWake { client: index, token });
            }
            return;
        };
        match reply {
            Reply::Rejected { seq, reason: RejectReason::Busy, .. } if current == Some(seq) => {
                client.wake_token += 1;
                let token = client.wake_token;
                let at = self.after_us((1_000, 5_000));
                self.schedule(at, Event::ClientWake { client: index, token });
            }
            Reply::Rejected { seq, reason, .. } if reason != RejectReason::Busy => {
                let anomaly = format!("client {} seq {seq}: rejected ({reason:?})", session.0);
                self.observed.client_anomalies.push(anomaly);
            }
            Reply::Outcome { seq, outcome, .. } => self.client_outcome(index, session, seq, outcome, current),
            _ => {}
        }
    }

    fn client_outcome(
        &mut self,
        index: u16,
        session: twophase_engine::ClientId,
        seq: u64,
        outcome: Outcome,
        current: Option<u64>,
    ) {
        let client = &mut self.clients[index as usize];
        match client.outcomes.get(&seq) {
            Some(first) if !same_outcome(first, &outcome) => {
                let anomaly = format!("client {} seq {seq}: heard {first:?} and later {outcome:?}", session.0);
                self.observed.client_anomalies.push(anomaly);
            }
            Some(_) => {}
            None => {
                client.outcomes.insert(seq, outcome.clone());
                self.observed.outcomes.insert((session, seq), outcome.clone());
                self.observed.heard_at.insert((session, seq), self.now);
            }
        }
        if current != Some(seq) {
            return; // A late duplicate of an answered request.
        }
        let setup_finished = client.complete(&outcome);
        client.wake_token += 1;
        let token = client.wake_token;
        let at = self.after_us((0, 200));
        self.schedule(at, Event::ClientWake { client: index, token });
        if setup_finished {
            self.begin_main_phase();
        }
    }
}

fn same_outcome(first: &Outcome, later: &Outcome) -> bool {
    match (first, later) {
        (Outcome::Committed { reads: a }, Outcome::Committed { reads: b }) => a == b,
        (Outcome::Committed { .. }, Outcome::CommittedReadsUnavailable) => true,
        (Outcome::CommittedReadsUnavailable, Outcome::CommittedReadsUnavailable) => true,
        (Outcome::Aborted { .. }, Outcome::Aborted { .. }) => true,
        _ => false,
    }
}
