//! The invariant checker, run after every simulation. It judges from ground truth: the
//! records that became durable on each node's disk, what clients heard, and the final
//! state of each participant — never from the state machines' own opinion of themselves.
//!
//! Checked: atomicity, durability of acknowledged commits, exactly-once per `(client, seq)`,
//! conservation of the bank total, no lost update (every key equals its set-up value plus
//! every committed delta), and (by the world) liveness once faults stop.

use std::collections::{BTreeMap, BTreeSet};

use super::SimConfig;
use super::workload::{is_account, participant_id};
use crate::ops::{Key, Op, OpKind, Outcome};
use crate::participant::{Participant, decode_int};
use crate::record::{CoordRecord, PartRecord};
use crate::types::{ClientId, Lsn, ParticipantId, Seq, Time, TxId};

/// At most this many violations of one kind are reported (the first is what matters).
const MAX_REPORTED: usize = 10;

/// What the world saw happen outside the nodes.
#[derive(Debug, Default)]
pub(super) struct Observed {
    pub issued: BTreeMap<(ClientId, Seq), Vec<Op>>,
    /// The first outcome each client heard for each request.
    pub outcomes: BTreeMap<(ClientId, Seq), Outcome>,
    pub client_anomalies: Vec<String>,
    pub setup_done_at: Time,
}

struct Decision {
    request: (ClientId, Seq),
    participants: Vec<ParticipantId>,
}

#[derive(Default)]
struct ParticipantHistory {
    prepared: BTreeSet<TxId>,
    committed: BTreeSet<TxId>,
    aborted: BTreeSet<TxId>,
}

struct Violations {
    list: Vec<String>,
    per_kind: BTreeMap<&'static str, usize>,
}

impl Violations {
    fn report(&mut self, kind: &'static str, message: String) {
        let count = self.per_kind.entry(kind).or_default();
        *count += 1;
        if *count <= MAX_REPORTED {
            self.list.push(format!("{kind}: {message}"));
        }
    }
}

pub(super) fn check(
    config: &SimConfig,
    observed: &Observed,
    coordinator_log: &[(Lsn, CoordRecord)],
    participant_logs: &[Vec<(Lsn, PartRecord)>],
    live: &[Option<&Participant>],
) -> Vec<String> {
    let mut violations = Violations { list: Vec::new(), per_kind: BTreeMap::new() };
    for anomaly in &observed.client_anomalies {
        violations.report("exactly-once", anomaly.clone());
    }
    let decisions = committed_decisions(coordinator_log, &mut violations);
    let by_request = requests_committed(&decisions, &mut violations);
    let histories: Vec<ParticipantHistory> = participant_logs.iter().map(|log| history(log)).collect();
    check_atomicity(&decisions, &histories, &mut violations);
    check_client_outcomes(observed, &by_request, &mut violations);
    check_state(config, observed, &decisions, live, &mut violations);
    violations.list
}

fn committed_decisions(log: &[(Lsn, CoordRecord)], violations: &mut Violations) -> BTreeMap<TxId, Decision> {
    let mut decisions = BTreeMap::new();
    for (_, record) in log {
        if let CoordRecord::Commit { txid, client, seq, participants, .. } = record {
            let decision = Decision { request: (*client, *seq), participants: participants.clone() };
            if decisions.insert(*txid, decision).is_some() {
                violations.report("log", format!("two commit records for {txid}"));
            }
        }
    }
    decisions
}

fn requests_committed(
    decisions: &BTreeMap<TxId, Decision>,
    violations: &mut Violations,
) -> BTreeMap<(ClientId, Seq), TxId> {
    let mut by_request: BTreeMap<(ClientId, Seq), TxId> = BTreeMap::new();
    for (txid, decision) in decisions {
        if let Some(earlier) = by_request.insert(decision.request, *txid) {
            let (client, seq) = decision.request;
            violations.report(
                "exactly-once",
                format!("client {} seq {seq} committed twice, as {earlier} and {txid}", client.0),
            );
        }
    }
    by_request
}

fn history(log: &[(Lsn, PartRecord)]) -> ParticipantHistory {
    let mut history = ParticipantHistory::default();
    for (_, record) in log {
        match record {
            PartRecord::Prepared { txid, .. } => {
                history.prepared.insert(*txid);
            }
            PartRecord::Committed { txid } => {
                history.committed.insert(*txid);
            }
            PartRecord::Aborted { txid } => {
                history.aborted.insert(*txid);
            }
            PartRecord::Epoch { .. } => {}
        }
    }
    history
}

fn check_atomicity(
    decisions: &BTreeMap<TxId, Decision>,
    histories: &[ParticipantHistory],
    violations: &mut Violations,
) {
    for (index, history) in histories.iter().enumerate() {
        let participant = participant_id(index as u16);
        for txid in &history.committed {
            let decided_here = decisions.get(txid).is_some_and(|d| d.participants.contains(&participant));
            if !decided_here {
                violations.report(
                    "atomicity",
                    format!("{participant} committed {txid}, which the coordinator never committed there"),
                );
            }
            if !history.prepared.contains(txid) {
                violations
                    .report("atomicity", format!("{participant} committed {txid} without a durable Prepared record"));
            }
        }
        for txid in &history.aborted {
            if decisions.get(txid).is_some_and(|d| d.participants.contains(&participant)) {
                violations
                    .report("atomicity", format!("{participant} aborted {txid}, which the coordinator committed"));
            }
        }
    }
    for (txid, decision) in decisions {
        for participant in &decision.participants {
            let applied = histories.get(participant.0 as usize - 1).is_some_and(|h| h.committed.contains(txid));
            if !applied {
                violations.report(
                    "atomicity",
                    format!("{txid} committed by the coordinator but never applied on {participant}"),
                );
            }
        }
    }
}

fn writes_anything(ops: &[Op]) -> bool {
    ops.iter().any(|op| op.kind.is_write())
}

fn check_client_outcomes(
    observed: &Observed,
    by_request: &BTreeMap<(ClientId, Seq), TxId>,
    violations: &mut Violations,
) {
    for (request, outcome) in &observed.outcomes {
        let (client, seq) = *request;
        let ops = observed.issued.get(request).expect("an outcome for an issued request");
        let committed = by_request.contains_key(request);
        match outcome {
            Outcome::Committed { .. } if writes_anything(ops) && !committed => violations.report(
                "durability",
                format!("client {} seq {seq} heard Committed but no commit record is durable", client.0),
            ),
            Outcome::Aborted { reason } if committed => violations.report(
                "atomicity",
                format!("client {} seq {seq} heard Aborted ({reason}) but the transaction committed", client.0),
            ),
            Outcome::Committed { reads } => {
                for read in reads {
                    let op = &ops[read.index as usize];
                    if !matches!(op.kind, OpKind::Get) {
                        violations.report(
                            "reads",
                            format!("client {} seq {seq}: a read for a non-Get op {}", client.0, read.index),
                        );
                    } else if is_account(&op.key) && decode_int(read.value.as_deref()).is_none_or(|v| v < 0) {
                        violations.report(
                            "reads",
                            format!("client {} seq {seq}: read an invalid balance {:?}", client.0, read.value),
                        );
                    }
                }
            }
            Outcome::Aborted { .. } => {}
        }
    }
}

/// The state every participant must hold: set-up values plus every committed change,
/// applied in commit (txid) order.
fn expected_state(observed: &Observed, decisions: &BTreeMap<TxId, Decision>) -> BTreeMap<(ParticipantId, Key), i64> {
    let mut state: BTreeMap<(ParticipantId, Key), i64> = BTreeMap::new();
    for decision in decisions.values() {
        let Some(ops) = observed.issued.get(&decision.request) else { continue };
        for op in ops {
            let slot = (op.participant, op.key.clone());
            match &op.kind {
                OpKind::Put(value) => {
                    state.insert(slot, decode_int(Some(value)).expect("the workload puts integers"));
                }
                OpKind::Add { delta, .. } => *state.entry(slot).or_insert(0) += delta,
                OpKind::Delete => {
                    state.remove(&slot);
                }
                OpKind::Get => {}
            }
        }
    }
    state
}

fn check_state(
    config: &SimConfig,
    observed: &Observed,
    decisions: &BTreeMap<TxId, Decision>,
    live: &[Option<&Participant>],
    violations: &mut Violations,
) {
    let expected = expected_state(observed, decisions);
    let mut total = 0i64;
    for (index, participant) in live.iter().enumerate() {
        let Some(participant) = participant else { continue }; // Reported by liveness.
        let id = participant_id(index as u16);
        let mut seen = 0usize;
        for (key, value) in participant.kv().iter() {
            seen += 1;
            let actual = decode_int(Some(value));
            let want = expected.get(&(id, Key::copy_from_slice(key))).copied();
            let name = String::from_utf8_lossy(key);
            if actual != want {
                let kind = if is_account(key) { "bank" } else { "lost-update" };
                violations.report(kind, format!("{id} {name} holds {actual:?}, committed history says {want:?}"));
            }
            if is_account(key) {
                let balance = actual.unwrap_or(0);
                total += balance;
                if balance < 0 {
                    violations.report("bank", format!("{id} {name} is overdrawn: {balance}"));
                }
            }
        }
        let expected_here = expected.keys().filter(|(p, _)| *p == id).count();
        if seen != expected_here {
            violations.report("lost-update", format!("{id} holds {seen} keys, committed history says {expected_here}"));
        }
    }
    let all_live = live.iter().all(Option::is_some);
    let initial_total =
        config.initial_balance * i64::from(config.accounts_per_participant) * i64::from(config.participants);
    if all_live && total != initial_total {
        violations.report("conservation", format!("bank total is {total}, it must stay {initial_total}"));
    }
}
