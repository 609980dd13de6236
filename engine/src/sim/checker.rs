//! The invariant checker, run after every simulation. It judges from ground truth: the
//! records that became durable on each node's disk, what clients heard, and the final
//! state of each participant — never from the state machines' own opinion of themselves.
//!
//! Checked: atomicity, durability of acknowledged commits, exactly-once per `(client, seq)`,
//! conservation of the bank total, no lost update (every key equals its set-up value plus
//! every committed delta), reads (a committed outcome carries exactly one read per `Get`,
//! each absent or a value a committed transaction wrote to that key there), the explicit "reads unavailable" outcome only for a
//! transaction with `Get`s that a restarted coordinator resolved, strict serializability of
//! the committed history ([`super::history`] builds it, [`super::serial`] checks it: no cycle
//! of ww, wr, rw and real-time edges), that every interactive Begin ended, what the world saw
//! of deadlocks and lock timeouts as they happened (`Observed::violations`), and (by the
//! world) liveness once faults stop.

use std::collections::{BTreeMap, BTreeSet};

use super::SimConfig;
use super::history;
use super::serial;
use super::workload::{is_account, participant_id};
use crate::ops::Read;
use crate::ops::{Key, Op, OpKind, Outcome, Value};
use crate::participant::{Participant, decode_int};
use crate::record::{CoordRecord, PartRecord};
use crate::types::{ClientId, Epoch, Lsn, ParticipantId, Seq, Time, TxId};

/// At most this many violations of one kind are reported (the first is what matters).
const MAX_REPORTED: usize = 10;

/// What the world saw happen outside the nodes.
#[derive(Debug, Default)]
pub struct Observed {
    pub issued: BTreeMap<(ClientId, Seq), Vec<Op>>,
    /// When each request was first sent.
    pub submitted_at: BTreeMap<(ClientId, Seq), Time>,
    /// The first outcome each client heard for each request.
    pub outcomes: BTreeMap<(ClientId, Seq), Outcome>,
    /// When its client heard that first outcome.
    pub heard_at: BTreeMap<(ClientId, Seq), Time>,
    pub client_anomalies: Vec<String>,
    pub setup_done_at: Time,
    /// Interactive transactions whose client heard `Began`: txid → session, when.
    pub begun: BTreeMap<TxId, (ClientId, Time)>,
    /// Interactive transactions whose client heard how they ended.
    pub ended: BTreeSet<TxId>,
    /// Violations the world saw as they happened (deadlock victims and cycles, lock-wait
    /// timeouts: judged against the participants' waits, see `world::waits`), by kind.
    pub violations: Vec<(&'static str, String)>,
}

struct Decision {
    request: (ClientId, Seq),
    participants: Vec<ParticipantId>,
    /// Logged as committed without its reads.
    reads_lost: bool,
    /// Logged by a later incarnation than the one that started it (resolved after a restart).
    resolved: bool,
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

pub fn check(
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
    for (kind, message) in &observed.violations {
        violations.report(kind, message.clone());
    }
    check_every_begin_ends(observed, &mut violations);
    let decisions = committed_decisions(coordinator_log, &mut violations);
    let by_request = requests_committed(&decisions, &mut violations);
    let histories: Vec<ParticipantHistory> = participant_logs.iter().map(|log| history(log)).collect();
    check_atomicity(&decisions, &histories, &mut violations);
    let versions = key_versions(&decisions, participant_logs);
    check_client_outcomes(observed, &by_request, &decisions, &versions, &mut violations);
    check_state(config, observed, &decisions, live, &mut violations);
    let history = history::build(observed, &by_request, participant_logs);
    for anomaly in serial::check(&history) {
        violations.report(anomaly.kind, anomaly.message);
    }
    violations.list
}

/// No transaction waits forever: every interactive transaction a client began ended
/// (committed, aborted for a named reason, rolled back, timed out) and its client heard so.
fn check_every_begin_ends(observed: &Observed, violations: &mut Violations) {
    for (txid, (client, at)) in &observed.begun {
        if !observed.ended.contains(txid) {
            violations.report("liveness", format!("client {} began {txid} at {at:?} and never heard it end", client.0));
        }
    }
}

fn committed_decisions(log: &[(Lsn, CoordRecord)], violations: &mut Violations) -> BTreeMap<TxId, Decision> {
    let mut decisions = BTreeMap::new();
    let mut epoch = Epoch(0);
    for (_, record) in log {
        match record {
            CoordRecord::Epoch { epoch: started } => epoch = *started,
            CoordRecord::Commit { txid, client, seq, participants, reads_lost, .. } => {
                let decision = Decision {
                    request: (*client, *seq),
                    participants: participants.clone(),
                    reads_lost: *reads_lost,
                    resolved: txid.epoch() < epoch,
                };
                if decisions.insert(*txid, decision).is_some() {
                    violations.report("log", format!("two commit records for {txid}"));
                }
            }
            _ => {}
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

/// Every value each key was given by a committed transaction, at each participant: the
/// final values its durable `Prepared` record holds. Which of them a read sees depends on
/// when it ran (the order writes to one key apply in is the order their locks were granted,
/// which waits can make differ from txid order), but it must see one of them.
type Versions = BTreeMap<(ParticipantId, Key), BTreeSet<Option<Value>>>;

fn key_versions(decisions: &BTreeMap<TxId, Decision>, participant_logs: &[Vec<(Lsn, PartRecord)>]) -> Versions {
    let mut versions: Versions = BTreeMap::new();
    for (index, log) in participant_logs.iter().enumerate() {
        let participant = participant_id(index as u16);
        for (_, record) in log {
            let PartRecord::Prepared { txid, writes, .. } = record else { continue };
            if !decisions.get(txid).is_some_and(|d| d.participants.contains(&participant)) {
                continue;
            }
            for write in writes.iter() {
                versions.entry((participant, write.key.clone())).or_default().insert(write.value.clone());
            }
        }
    }
    versions
}

fn check_client_outcomes(
    observed: &Observed,
    by_request: &BTreeMap<(ClientId, Seq), TxId>,
    decisions: &BTreeMap<TxId, Decision>,
    versions: &Versions,
    violations: &mut Violations,
) {
    for (request, outcome) in &observed.outcomes {
        let (client, seq) = *request;
        let ops = observed.issued.get(request).expect("an outcome for an issued request");
        let txid = by_request.get(request).copied();
        let committed = txid.is_some();
        let has_gets = ops.iter().any(|op| matches!(op.kind, OpKind::Get));
        match outcome {
            Outcome::Committed { .. } | Outcome::CommittedReadsUnavailable if writes_anything(ops) && !committed => {
                violations.report(
                    "durability",
                    format!("client {} seq {seq} heard Committed but no commit record is durable", client.0),
                )
            }
            Outcome::Aborted { reason } if committed => violations.report(
                "atomicity",
                format!("client {} seq {seq} heard Aborted ({reason}) but the transaction committed", client.0),
            ),
            Outcome::Committed { reads } => {
                check_reads(request, ops, reads, versions, violations);
            }
            Outcome::CommittedReadsUnavailable => {
                let allowed =
                    has_gets && txid.is_some_and(|txid| decisions[&txid].resolved && decisions[&txid].reads_lost);
                if !allowed {
                    violations.report(
                        "reads",
                        format!(
                            "client {} seq {seq}: heard \"committed, reads unavailable\" for a transaction {}",
                            client.0,
                            if has_gets {
                                "no restarted coordinator resolved without its reads"
                            } else {
                                "without Gets"
                            }
                        ),
                    );
                }
            }
            Outcome::Aborted { .. } => {}
        }
    }
}

/// One read per `Get`, in op order, each absent or a value a committed transaction wrote to
/// that key at that participant.
fn check_reads(
    request: &(ClientId, Seq),
    ops: &[Op],
    reads: &[Read],
    versions: &Versions,
    violations: &mut Violations,
) {
    let (client, seq) = *request;
    let gets: Vec<u16> =
        ops.iter().enumerate().filter(|(_, op)| matches!(op.kind, OpKind::Get)).map(|(i, _)| i as u16).collect();
    let indexes: Vec<u16> = reads.iter().map(|read| read.index).collect();
    if indexes != gets {
        return violations.report(
            "reads",
            format!("client {} seq {seq}: reads for ops {indexes:?}, but its Gets are ops {gets:?}", client.0),
        );
    }
    for read in reads {
        let op = &ops[read.index as usize];
        let value = read.value.as_ref().map(|bytes| decode_int(Some(bytes)));
        let written = versions.get(&(op.participant, op.key.clone()));
        // Absent is what every key held before its first write.
        let consistent = read.value.is_none() || written.is_some_and(|values| values.contains(&read.value));
        if !consistent || (is_account(&op.key) && value.is_some_and(|v| v.is_none_or(|v| v < 0))) {
            violations.report(
                "reads",
                format!(
                    "client {} seq {seq}: op {} read {value:?} from {} {}, which the serial order of committed writes never gives it there",
                    client.0,
                    read.index,
                    op.participant,
                    String::from_utf8_lossy(&op.key)
                ),
            );
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
                OpKind::Sql(_) => panic!("the simulator's workloads run no SQL statement"),
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
