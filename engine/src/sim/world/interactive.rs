//! The simulated interactive clients: after registering a session (as the one-shot clients
//! do, `clients`), each runs its conversations one at a time: Begin, one Execute per
//! statement with think time between the answer and the next, then Commit or Rollback; an
//! abandoned one goes silent and asks only once its idle timeout must have passed. Every
//! request is retried under its `(client, seq)` until answered, like the client library.
//!
//! What the client observed enters the checker's `Observed` under the request that ended
//! the transaction (for a commit, the request its `Commit` record names): all its ops and
//! the reads its Executes brought back, so the committed history holds it like a one-shot.

use std::time::Duration;

use super::events::Event;
use super::network::Payload;
use super::{NodeId, World};
use crate::message::{Interactive, RejectReason, Reply};
use crate::ops::{AbortReason, Outcome};
use crate::sim::SimConfig;
use crate::sim::interactive::{Conversation, Stage};
use crate::sim::workload::Client;
use crate::types::{ClientId, Seq, TxId};

/// As for one-shot requests: a request unanswered this long is sent again.
const CLIENT_TIMEOUT: Duration = Duration::from_millis(400);

/// The interactive clients, numbered after the one-shot ones.
pub(super) fn interactive_clients(config: &SimConfig) -> Vec<Client> {
    let mix = &config.interactive;
    let count = mix.clients as usize;
    (0..count)
        .map(|i| {
            let index = config.clients + i as u16;
            let share = mix.transactions / count + usize::from(i < mix.transactions % count);
            let mut client = Client::new(index, share);
            client.interactive = true;
            client
        })
        .collect()
}

impl World {
    /// A registered interactive client wakes: the request in flight timed out (send it
    /// again), or its think time is over (send the next one).
    pub(super) fn interactive_wake(&mut self, index: u16) {
        let client = &mut self.clients[index as usize];
        if client.conversation.is_none() {
            if client.remaining == 0 {
                return;
            }
            client.conversation = Some(Conversation::new(&self.config, self.now, &mut self.rng));
        }
        let retried = client.conversation.as_ref().and_then(|conversation| conversation.seq);
        let seq = match retried {
            Some(seq) => seq,
            None => {
                let seq = client.take_seq();
                let conversation = client.conversation.as_mut().expect("set above");
                conversation.seq = Some(seq);
                conversation.executing = conversation.stage_ops();
                seq
            }
        };
        self.send_interactive(index, seq);
    }

    fn send_interactive(&mut self, index: u16, seq: Seq) {
        let client = &mut self.clients[index as usize];
        let session = client.session.expect("registered");
        let conversation = client.conversation.as_ref().expect("a conversation");
        let txid = conversation.txid;
        let request = match conversation.stage {
            Stage::Begin => Interactive::Begin {
                client: session,
                seq,
                isolation: conversation.isolation,
                idle_timeout_ms: self.config.interactive.idle_timeout_ms,
            },
            Stage::ReadFirst | Stage::ReadSecond | Stage::WriteFirst | Stage::WriteSecond => Interactive::Execute {
                client: session,
                seq,
                txid: txid.expect("begun"),
                ops: conversation.executing.clone(),
            },
            Stage::Commit => Interactive::Commit { client: session, seq, txid: txid.expect("begun") },
            Stage::Rollback | Stage::Abandoned => {
                Interactive::Rollback { client: session, seq, txid: txid.expect("begun") }
            }
        };
        client.wake_token += 1;
        let token = client.wake_token;
        self.schedule(self.now + CLIENT_TIMEOUT, Event::ClientWake { client: index, token });
        self.send(NodeId::Client(index), NodeId::Coordinator, Payload::Interactive(request));
    }

    /// A reply to an interactive client (already checked to be about its session).
    pub(super) fn interactive_reply(&mut self, index: u16, session: ClientId, reply: Reply) {
        let client = &mut self.clients[index as usize];
        let current = client.conversation.as_ref().and_then(|c| c.seq);
        let Some((_, seq)) = reply.request() else { return };
        if current != Some(seq) {
            return; // A late duplicate of an answered request.
        }
        match reply {
            Reply::Rejected { reason: RejectReason::Busy, .. } => {
                client.wake_token += 1;
                let token = client.wake_token;
                let at = self.after_us((1000, 5000));
                self.schedule(at, Event::ClientWake { client: index, token });
            }
            Reply::Rejected { reason, .. } => {
                let anomaly = format!("interactive client {} seq {seq}: rejected ({reason:?})", session.0);
                self.observed.client_anomalies.push(anomaly);
            }
            Reply::Registered { .. } | Reply::RegisterRefused { .. } => {}
            Reply::Began { txid, .. } => {
                let conversation = client.conversation.as_mut().expect("current");
                if conversation.stage != Stage::Begin {
                    let anomaly = format!("interactive client {} seq {seq}: Began answers a statement", session.0);
                    return self.observed.client_anomalies.push(anomaly);
                }
                conversation.txid = Some(txid);
                self.observed.begun.insert(txid, (session, self.now));
                self.advance(index);
            }
            Reply::Executed { reads, .. } => {
                let conversation = client.conversation.as_mut().expect("current");
                if conversation.executing.is_empty() {
                    let anomaly = format!("interactive client {} seq {seq}: Executed answers no Execute", session.0);
                    return self.observed.client_anomalies.push(anomaly);
                }
                conversation.executed(reads);
                self.advance(index);
            }
            Reply::Outcome { outcome, .. } => self.conversation_ended(index, session, seq, outcome),
        }
    }

    /// The current request was answered: think, then go on (an abandoned transaction waits
    /// well past its idle timeout).
    fn advance(&mut self, index: u16) {
        let think_us = self.config.interactive.think_us;
        let idle_us = u64::from(self.config.interactive.idle_timeout_ms) * 1000;
        let client = &mut self.clients[index as usize];
        let conversation = client.conversation.as_mut().expect("current");
        conversation.seq = None;
        conversation.stage = conversation.next_stage();
        let pause = if conversation.stage == Stage::Abandoned { (idle_us * 2, idle_us * 3) } else { think_us };
        client.wake_token += 1;
        let token = client.wake_token;
        let at = self.after_us(pause);
        self.schedule(at, Event::ClientWake { client: index, token });
    }

    /// The transaction ended with `outcome` (heard for request `seq`): what the client saw
    /// goes to the checker, and the client starts its next one.
    fn conversation_ended(&mut self, index: u16, session: ClientId, seq: Seq, outcome: Outcome) {
        let client = &mut self.clients[index as usize];
        let conversation = client.conversation.take().expect("current");
        client.remaining -= 1;
        client.outcomes.insert(seq, outcome.clone());
        client.wake_token += 1;
        let token = client.wake_token;
        let now = self.now;
        if let Some(txid) = conversation.txid {
            self.observed.ended.insert(txid);
        }
        if conversation.stage == Stage::Begin {
            // Begin is answered Began or refused; an outcome for it is wrong.
            let anomaly = format!("interactive client {} seq {seq}: Begin answered {outcome:?}", session.0);
            self.observed.client_anomalies.push(anomaly);
        }
        if let (Outcome::Aborted { reason: AbortReason::Deadlock { cycle } }, Some(txid)) =
            (&outcome, conversation.txid)
        {
            self.check_deadlock_victim(txid, cycle);
        }
        let (ops, reads) = conversation.history_ops();
        let outcome = match outcome {
            // The reads came back with each Execute; the commit's outcome carries none.
            Outcome::Committed { reads: none } if none.is_empty() => Outcome::Committed { reads },
            Outcome::Committed { .. } => {
                let anomaly = format!("interactive client {} seq {seq}: a Commit's outcome carries reads", session.0);
                self.observed.client_anomalies.push(anomaly);
                outcome
            }
            other => other,
        };
        let key = (session, seq);
        self.observed.issued.insert(key, ops);
        self.observed.submitted_at.insert(key, conversation.began_at);
        self.observed.outcomes.insert(key, outcome);
        self.observed.heard_at.insert(key, now);
        let at = self.after_us((0, 200));
        self.schedule(at, Event::ClientWake { client: index, token });
    }

    /// A deadlock victim's client heard the cycle: the victim is in it, is its youngest,
    /// and the participants' waits formed that cycle at some moment.
    fn check_deadlock_victim(&mut self, victim: TxId, cycle: &[TxId]) {
        self.waits.deadlocks += 1;
        let youngest = cycle.iter().max().copied();
        if !cycle.contains(&victim) || youngest != Some(victim) {
            let message = format!("victim {victim} of cycle {cycle:?} is not its youngest member");
            return self.observed.violations.push(("deadlock", message));
        }
        if !self.waits.cycle_existed(cycle, self.now) {
            let message =
                format!("victim {victim} aborted for cycle {cycle:?}, which the participants' waits never formed");
            self.observed.violations.push(("deadlock", message));
        }
    }
}
