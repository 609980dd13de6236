//! The simulated clients: each registers a session (again after a timeout or a refusal),
//! then submits its requests one at a time and retries each (same `(client, seq)`) until it
//! has an outcome. A session survives coordinator restarts, as with the real client library.

use std::time::Duration;

use rand::Rng;

use super::events::Event;
use super::network::Payload;
use super::{NodeId, World};
use crate::message::{RejectReason, Reply, Submit};
use crate::ops::Outcome;

const CLIENT_TIMEOUT: Duration = Duration::from_millis(400);

impl World {
    pub(super) fn client_wake(&mut self, index: u16, token: u64) {
        let client = &mut self.clients[index as usize];
        if client.wake_token != token {
            return; // Superseded.
        }
        if client.session.is_none() {
            return self.register(index);
        }
        if client.interactive {
            return self.interactive_wake(index);
        }
        if client.pending.is_none() && client.start_next(&self.config, &mut self.rng).is_none() {
            return;
        }
        self.submit_pending(index);
    }

    /// Sends a registration (a fresh nonce each time) and arms its retry timeout.
    fn register(&mut self, index: u16) {
        let client = &mut self.clients[index as usize];
        client.registrations += 1;
        let submit = Submit::register(client.registrations);
        client.wake_token += 1;
        let token = client.wake_token;
        self.schedule(self.now + CLIENT_TIMEOUT, Event::ClientWake { client: index, token });
        self.send(NodeId::Client(index), NodeId::Coordinator, Payload::Submit(submit));
    }

    /// Sends (or re-sends) the pending request and arms its retry timeout.
    pub(super) fn submit_pending(&mut self, index: u16) {
        let client = &mut self.clients[index as usize];
        let session = client.session.expect("registered");
        let pending = client.pending.as_ref().expect("a pending request");
        let submit = Submit { client: session, seq: pending.seq, ops: pending.ops.clone() };
        self.observed.issued.entry((session, pending.seq)).or_insert_with(|| pending.ops.clone());
        self.observed.submitted_at.entry((session, pending.seq)).or_insert(self.now);
        client.wake_token += 1;
        let token = client.wake_token;
        self.schedule(self.now + CLIENT_TIMEOUT, Event::ClientWake { client: index, token });
        self.send(NodeId::Client(index), NodeId::Coordinator, Payload::Submit(submit));
    }

    pub(super) fn client_reply(&mut self, index: u16, reply: Reply) {
        let client = &mut self.clients[index as usize];
        let current = client.pending.as_ref().map(|p| p.seq);
        let Some(session) = client.session else {
            return self.registration_reply(index, reply);
        };
        if reply.request().is_some_and(|(client, _)| client != session) {
            let client = &self.clients[index as usize];
            let anomaly = format!("{} heard a reply about another session: {reply:?}", client.identity);
            return self.observed.client_anomalies.push(anomaly);
        }
        if client.interactive {
            return self.interactive_reply(index, session, reply);
        }
        match reply {
            Reply::Rejected { seq, reason: RejectReason::Busy, .. } if current == Some(seq) => {
                client.wake_token += 1;
                let token = client.wake_token;
                let at = self.after_us((1000, 5000));
                self.schedule(at, Event::ClientWake { client: index, token });
            }
            Reply::Rejected { seq, reason, .. } => {
                if reason != RejectReason::Busy {
                    // Each simulated client keeps its one session and a window far larger
                    // than its one request in flight: none of these may ever happen.
                    let anomaly = format!("client {} seq {seq}: rejected ({reason:?})", session.0);
                    self.observed.client_anomalies.push(anomaly);
                }
            }
            Reply::Registered { .. } | Reply::RegisterRefused { .. } => {} // A late answer to a retried registration.
            Reply::Began { seq, .. } | Reply::Executed { seq, .. } => {
                // Simulated clients send one-shot requests only.
                let anomaly = format!("client {} seq {seq}: interactive reply to a one-shot request", session.0);
                self.observed.client_anomalies.push(anomaly);
            }
            Reply::Outcome { seq, outcome, .. } => {
                let key = (session, seq);
                match client.outcomes.get(&seq) {
                    Some(first) if !same_outcome(first, &outcome) => {
                        self.observed
                            .client_anomalies
                            .push(format!("client {} seq {seq}: heard {first:?} and later {outcome:?}", session.0));
                    }
                    Some(_) => {}
                    None => {
                        client.outcomes.insert(seq, outcome.clone());
                        self.observed.outcomes.insert(key, outcome.clone());
                        self.observed.heard_at.insert(key, self.now);
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
    }

    /// The answer to a registration: the session to use from now on, or a refusal (retried
    /// after a pause).
    fn registration_reply(&mut self, index: u16, reply: Reply) {
        let client = &mut self.clients[index as usize];
        match reply {
            Reply::Registered { nonce, client: session } if nonce == client.registrations => {
                client.session = Some(session);
                self.client_of_session.insert(session, index);
                client.wake_token += 1;
                let token = client.wake_token;
                self.schedule(self.now, Event::ClientWake { client: index, token });
            }
            Reply::RegisterRefused { nonce, reason } if nonce == client.registrations => {
                let anomaly = format!("{}: registration refused ({reason:?})", client.identity);
                self.observed.client_anomalies.push(anomaly);
            }
            _ => {} // An answer to an earlier attempt.
        }
    }

    /// Set-up is committed: start the other clients and schedule the faults.
    pub(super) fn begin_main_phase(&mut self) {
        self.setup_done = true;
        self.observed.setup_done_at = self.now;
        let faults = self.config.faults;
        self.faults_until = self.now + faults.window;
        for index in 1..self.clients.len() as u16 {
            let token = self.clients[index as usize].wake_token;
            let at = self.after_us((0, 500));
            self.schedule(at, Event::ClientWake { client: index, token });
        }
        let window_us = faults.window.as_micros() as u64;
        if window_us == 0 {
            return;
        }
        let crashes = self.rng.gen_range(0..=faults.max_crashes);
        for _ in 0..crashes {
            let node = self.random_server();
            let at = self.after_us((0, window_us));
            self.schedule(at, Event::Crash { node });
        }
        let partitions = self.rng.gen_range(0..=faults.max_partitions);
        for _ in 0..partitions {
            let isolated = self.random_server();
            let duration = Duration::from_millis(self.rng.gen_range(10..=300));
            let at = self.after_us((0, window_us));
            self.schedule(at, Event::Partition { isolated, duration });
        }
    }
}

/// Two answers to one request agree: the same decision, and a commit's reads are the same
/// unless one of them is the explicit "reads unavailable" (a retry after a restart that
/// lost the reads may hear that after the first answer carried them, never the reverse).
fn same_outcome(first: &Outcome, later: &Outcome) -> bool {
    match (first, later) {
        (Outcome::Committed { reads: a }, Outcome::Committed { reads: b }) => a == b,
        (Outcome::Committed { .. }, Outcome::CommittedReadsUnavailable) => true,
        (Outcome::CommittedReadsUnavailable, Outcome::CommittedReadsUnavailable) => true,
        (Outcome::Aborted { .. }, Outcome::Aborted { .. }) => true,
        _ => false,
    }
}
