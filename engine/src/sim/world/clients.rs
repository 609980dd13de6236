//! The simulated clients: each submits its requests one at a time and retries each (same
//! `(client, seq)`) until it has an outcome.

use std::time::Duration;

use rand::Rng;

use super::events::Event;
use super::network::Payload;
use super::{NodeId, World};
use crate::message::{RejectReason, Reply, Submit};

const CLIENT_TIMEOUT: Duration = Duration::from_millis(400);

impl World {
    pub(super) fn client_wake(&mut self, index: u16, token: u64) {
        let client = &mut self.clients[index as usize];
        if client.wake_token != token {
            return; // Superseded.
        }
        if client.pending.is_none() && client.start_next(&self.config, &mut self.rng).is_none() {
            return;
        }
        self.submit_pending(index);
    }

    /// Sends (or re-sends) the pending request and arms its retry timeout.
    pub(super) fn submit_pending(&mut self, index: u16) {
        let client = &mut self.clients[index as usize];
        let pending = client.pending.as_ref().expect("a pending request");
        let submit = Submit { client: client.id, seq: pending.seq, ops: pending.ops.clone() };
        self.observed.issued.entry((client.id, pending.seq)).or_insert_with(|| pending.ops.clone());
        client.wake_token += 1;
        let token = client.wake_token;
        self.schedule(self.now + CLIENT_TIMEOUT, Event::ClientWake { client: index, token });
        self.send(NodeId::Client(index), NodeId::Coordinator, Payload::Submit(submit));
    }

    pub(super) fn client_reply(&mut self, index: u16, reply: Reply) {
        let client = &mut self.clients[index as usize];
        let current = client.pending.as_ref().map(|p| p.seq);
        match reply {
            Reply::Rejected { seq, reason: RejectReason::Busy, .. } if current == Some(seq) => {
                client.wake_token += 1;
                let token = client.wake_token;
                let at = self.after_us((1000, 5000));
                self.schedule(at, Event::ClientWake { client: index, token });
            }
            Reply::Rejected { seq, reason, .. } => {
                if reason == RejectReason::SeqTooOld {
                    self.observed
                        .client_anomalies
                        .push(format!("client {} seq {seq}: rejected as too old", client.id.0));
                }
            }
            Reply::Outcome { seq, outcome, .. } => {
                let key = (client.id, seq);
                match client.outcomes.get(&seq) {
                    Some(first) if first.is_committed() != outcome.is_committed() => {
                        self.observed
                            .client_anomalies
                            .push(format!("client {} seq {seq}: heard {first:?} and later {outcome:?}", client.id.0));
                    }
                    Some(_) => {}
                    None => {
                        client.outcomes.insert(seq, outcome.clone());
                        self.observed.outcomes.insert(key, outcome.clone());
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

    /// Set-up is committed: start the other clients and schedule the faults.
    pub(super) fn begin_main_phase(&mut self) {
        self.setup_done = true;
        self.observed.setup_done_at = self.now;
        let faults = self.config.faults;
        self.faults_until = self.now + faults.window;
        for index in 1..self.config.clients {
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
