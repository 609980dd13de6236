//! The coordinator's spans of a sampled transaction, derived from what its runtime sees:
//!
//! - `submit`: from the request's arrival until its reply leaves (the root, or a child of
//!   the client's span when the client sent a trace context);
//! - `prepare` per participant: from its Prepare leaving until its vote arrives, or until
//!   the transaction aborted without it (vote `none`, an error status with the reason);
//! - `decision`: from the engine's decision until the client's reply has left (it waits for
//!   the Staged or Abort record) and the decision's record (Commit or Abort) is durable;
//!   its `log sync` events give each record's (Staged, Commit, Abort) LSN and sync time;
//! - `commit` per participant: from its Commit leaving until its ack arrives.
//!
//! The participants' spans are children of `prepare` and `commit`: their contexts travel in
//! a `TraceContext` frame just before the data frame that carries the Prepare or Commit.
//!
//! Cost: which transactions that start here are traced is a countdown (a geometric gap drawn
//! per traced one); every hook asks the bounded maps, whose presence filter answers "not
//! traced" for nearly every other transaction without hashing.

use std::collections::VecDeque;
use std::time::SystemTime;

use bytes::Bytes;
use opentelemetry::trace::SpanContext;
use smallvec::smallvec;
use twophase_engine::coordinator::{CoordEffects, CoordOutput};
use twophase_engine::{
    AbortReason, ClientId, CoordRecord, Lsn, Outcome, ParticipantId, Reply, Seq, Submit, ToCoordinator, ToParticipant,
    TxId, Vote,
};
use twophase_net::{TraceEntry, TraceKey, encode_trace_context};

use super::bounded::BoundedMap;
use super::{Attribute, Attributes, Exporter, Span, Status, SyncEvent, TRACED_TXS_MAX, context, pop_durable};

/// Client contexts waiting for their request at most (a client sends one just before it).
const WAITING_CONTEXTS_MAX: usize = 4096;

/// A sampled request between `before_submit` and `after_submit`.
pub struct PendingSubmit {
    client: ClientId,
    seq: Seq,
    parent: Option<SpanContext>,
    start: SystemTime,
    outputs_before: usize,
}

struct TracedTx {
    client: ClientId,
    seq: Seq,
    /// The context of the `submit` span: every other span of the transaction is its child.
    root: SpanContext,
    submit: Option<Span>,
    prepares: Vec<(ParticipantId, Span)>,
    decision: Option<Span>,
    /// Records that became durable before `decision` opened; it gets their events.
    synced: Vec<SyncEvent>,
    /// The decision's record (Commit or Abort) is appended, not yet durable.
    decision_record_pending: bool,
    /// The client's reply has left.
    replied: bool,
    commits: Vec<(ParticipantId, Span)>,
    /// A Commit record was appended: the transaction ends with its End record.
    committing: bool,
}

/// A traced transaction's record waiting to become durable.
struct PendingSync {
    lsn: Lsn,
    txid: TxId,
    record: &'static str,
    appended: SystemTime,
}

pub struct CoordinatorTrace {
    waiting: BoundedMap<(ClientId, Seq), SpanContext>,
    /// Boxed: an entry is a pointer, so the map stays small enough for the cache while its
    /// spans (about 1 KB a transaction) move only when they end.
    txs: BoundedMap<TxId, Box<TracedTx>>,
    by_request: BoundedMap<(ClientId, Seq), TxId>,
    /// Records of traced transactions not yet durable, in LSN order.
    syncs: VecDeque<PendingSync>,
    /// Transactions starting here to leave untraced before the next traced one.
    until_sampled: u64,
    /// Last, so that it is dropped last: the spans still open when the node stops end into
    /// its queue first, and its drop sends them.
    exporter: Exporter,
}

impl CoordinatorTrace {
    pub fn new(exporter: Exporter) -> CoordinatorTrace {
        let until_sampled = exporter.next_sample_gap();
        CoordinatorTrace {
            waiting: BoundedMap::new(WAITING_CONTEXTS_MAX),
            txs: BoundedMap::new(TRACED_TXS_MAX),
            by_request: BoundedMap::new(TRACED_TXS_MAX),
            syncs: VecDeque::new(),
            until_sampled,
            exporter,
        }
    }

    /// The exporter back, for a replicated group member whose leadership ended: the
    /// spans of that leadership's transactions end here (into the exporter's queue, as the
    /// rest of `self` is dropped); the exporter serves the next one.
    pub fn into_exporter(self) -> Exporter {
        self.exporter
    }

    /// Whether a transaction without a caller's context is traced: the countdown.
    fn sample_root(&mut self) -> bool {
        if self.until_sampled > 0 {
            self.until_sampled -= 1;
            return false;
        }
        self.until_sampled = self.exporter.next_sample_gap();
        true
    }

    /// A client's `TraceContext` frame: contexts for the requests that follow it.
    pub fn on_trace_context(&mut self, entries: Vec<TraceEntry>) {
        for entry in entries {
            let TraceKey::Submit { client, seq } = entry.key else { continue };
            if let Some(parent) = context::parse(&entry.traceparent) {
                self.waiting.insert((client, seq), parent);
            }
        }
    }

    /// Decides whether `submit` is traced: the client's sampled flag when it sent a
    /// context, the sampling rate otherwise.
    pub fn before_submit(&mut self, submit: &Submit, fx: &CoordEffects) -> Option<PendingSubmit> {
        let parent = if self.waiting.is_empty() { None } else { self.waiting.remove(&(submit.client, submit.seq)) };
        let sampled = match &parent {
            Some(parent) => parent.is_sampled(),
            None => self.sample_root(),
        };
        sampled.then(|| PendingSubmit {
            client: submit.client,
            seq: submit.seq,
            parent,
            start: SystemTime::now(),
            outputs_before: fx.outputs.len(),
        })
    }

    /// After the engine took the request: its first Prepare names the transaction; a reply
    /// at once (rejected, invalid, a retry of a finished request) is a one-span trace.
    pub fn after_submit(&mut self, pending: PendingSubmit, fx: &CoordEffects) {
        let mut txid = None;
        let mut participant_ids = Vec::new();
        let mut reply = None;
        for output in &fx.outputs[pending.outputs_before..] {
            match &output.item {
                CoordOutput::ToParticipant(to, ToParticipant::Prepare { txid: id, .. }) => {
                    txid = Some(*id);
                    participant_ids.push(i64::from(to.0));
                }
                CoordOutput::ToClient(r) if r.request() == Some((pending.client, pending.seq)) => reply = Some(r),
                _ => {}
            }
        }
        let mut attributes: Attributes = smallvec![
            Attribute::new("twophase.client", pending.client.0 as i64),
            Attribute::new("twophase.seq", pending.seq as i64),
        ];
        let Some(txid) = txid else {
            // A retry of a request in flight gets no span: the first attempt has one.
            let Some(reply) = reply else { return };
            let mut span = self.exporter.span("submit", pending.parent.as_ref(), Some(pending.start), attributes);
            set_reply(&mut span, reply);
            return;
        };
        attributes.push(Attribute::new("twophase.txid", txid.0 as i64));
        let participants = participant_ids.len();
        attributes.push(Attribute::new("twophase.participants", participant_ids));
        let submit = self.exporter.span("submit", pending.parent.as_ref(), Some(pending.start), attributes);
        let tx = Box::new(TracedTx {
            client: pending.client,
            seq: pending.seq,
            root: submit.span_context(),
            submit: Some(submit),
            prepares: Vec::with_capacity(participants),
            decision: None,
            synced: Vec::new(),
            decision_record_pending: false,
            replied: false,
            commits: Vec::with_capacity(participants),
            committing: false,
        });
        if let Some((_, evicted)) = self.txs.insert(txid, tx) {
            self.by_request.remove(&(evicted.client, evicted.seq));
        }
        self.by_request.insert((pending.client, pending.seq), txid);
    }

    /// A participant's message, before the engine takes it: a vote ends that participant's
    /// `prepare`, an ack its `commit`. Inlined: an untraced one is a filter miss.
    #[inline]
    pub fn on_message(&mut self, from: ParticipantId, message: &ToCoordinator) {
        if self.txs.is_empty() {
            return;
        }
        let Some(tx) = self.txs.get_mut(&message.txid()) else { return };
        match message {
            ToCoordinator::Vote { vote, .. } => {
                if let Some(mut span) = take_for(&mut tx.prepares, from) {
                    set_vote(&mut span, vote);
                }
            }
            ToCoordinator::Ack { .. } => drop(take_for(&mut tx.commits, from)),
            ToCoordinator::Inquiry { .. } | ToCoordinator::Executed { .. } | ToCoordinator::WaitFor { .. } => {}
        }
    }

    /// A step's appends and outputs, before they are logged and gated.
    pub fn observe(&mut self, fx: &CoordEffects) {
        if self.txs.is_empty() {
            return;
        }
        for (lsn, record) in &fx.appends {
            self.on_append(*lsn, record);
        }
        for output in &fx.outputs {
            if let CoordOutput::ToClient(reply @ Reply::Outcome { client, seq, .. }) = &output.item {
                self.on_decided(*client, *seq, reply);
            }
        }
    }

    fn on_append(&mut self, lsn: Lsn, record: &CoordRecord) {
        let (txid, name) = match record {
            CoordRecord::Staged { txid, .. } => (*txid, "Staged"),
            CoordRecord::Commit { txid, .. } => (*txid, "Commit"),
            CoordRecord::Abort { txid } => (*txid, "Abort"),
            CoordRecord::End { txid } => {
                // Every participant acknowledged (or none had anything to commit).
                self.txs.remove(txid);
                return;
            }
            // Sagas are not traced (their attempts are, as transactions without a client).
            CoordRecord::Epoch { .. }
            | CoordRecord::Register { .. }
            | CoordRecord::SagaBegin { .. }
            | CoordRecord::SagaAttempt { .. }
            | CoordRecord::SagaStepDone { .. }
            | CoordRecord::SagaCompensate { .. }
            | CoordRecord::SagaEnd { .. } => return,
        };
        let Some(tx) = self.txs.get_mut(&txid) else { return };
        match record {
            CoordRecord::Commit { .. } => {
                tx.committing = true;
                tx.decision_record_pending = true;
            }
            CoordRecord::Abort { .. } => tx.decision_record_pending = true,
            _ => {}
        }
        if self.syncs.len() >= TRACED_TXS_MAX {
            self.syncs.pop_front();
        }
        self.syncs.push_back(PendingSync { lsn, txid, record: name, appended: SystemTime::now() });
    }

    fn on_decided(&mut self, client: ClientId, seq: Seq, reply: &Reply) {
        let Some(txid) = self.by_request.get_mut(&(client, seq)).copied() else { return };
        let Some(tx) = self.txs.get_mut(&txid) else { return };
        if tx.decision.is_some() {
            return;
        }
        let mut decision = self.exporter.span("decision", Some(&tx.root), None, Attributes::new());
        set_reply(&mut decision, reply);
        for sync in tx.synced.drain(..) {
            decision.add_sync_event(sync);
        }
        tx.decision = Some(decision);
    }

    /// The log is durable up to `durable`: each traced record now durable becomes a `log
    /// sync` event (on `decision`, or kept until it opens); a decision whose reply has left
    /// ends once its record is durable.
    pub fn after_step(&mut self, durable: Lsn) {
        let mut now = None;
        while let Some(pending) = pop_durable(&mut self.syncs, durable, |pending| pending.lsn) {
            let now = *now.get_or_insert_with(SystemTime::now);
            let Some(tx) = self.txs.get_mut(&pending.txid) else { continue };
            let sync = SyncEvent::new(pending.record, pending.lsn, pending.appended, now, None);
            if matches!(pending.record, "Commit" | "Abort") {
                tx.decision_record_pending = false;
            }
            match &mut tx.decision {
                Some(decision) => decision.add_sync_event(sync),
                None => tx.synced.push(sync),
            }
            if tx.replied && !tx.decision_record_pending {
                tx.decision = None;
            }
        }
    }

    /// Outputs about to leave: Prepares and Commits of traced transactions open their
    /// per-participant spans, whose contexts are returned as `TraceContext` frames to send
    /// to each participant before the data frame; a reply ends `decision` and `submit`.
    pub fn released(&mut self, released: &[CoordOutput]) -> Vec<(ParticipantId, Bytes)> {
        if self.txs.is_empty() {
            return Vec::new();
        }
        let mut entries: Vec<(ParticipantId, TraceEntry)> = Vec::new();
        for output in released {
            match output {
                CoordOutput::ToParticipant(
                    to,
                    message @ (ToParticipant::Prepare { .. } | ToParticipant::Commit { .. }),
                ) => {
                    let txid = message.txid();
                    let Some(tx) = self.txs.get_mut(&txid) else { continue };
                    let is_prepare = matches!(message, ToParticipant::Prepare { .. });
                    let name = if is_prepare { "prepare" } else { "commit" };
                    // The txid is on `submit`, their parent: one attribute less to export.
                    let attributes = smallvec![Attribute::new("twophase.participant", i64::from(to.0))];
                    let span = self.exporter.span(name, Some(&tx.root), None, attributes);
                    let traceparent = context::format(&span.span_context());
                    let open = if is_prepare { &mut tx.prepares } else { &mut tx.commits };
                    open.push((*to, span));
                    entries.push((*to, TraceEntry { key: TraceKey::Tx(txid), traceparent }));
                }
                CoordOutput::ToClient(reply @ Reply::Outcome { client, seq, .. }) => {
                    self.on_replied(*client, *seq, reply)
                }
                _ => {}
            }
        }
        frames_per_participant(entries)
    }

    fn on_replied(&mut self, client: ClientId, seq: Seq, reply: &Reply) {
        let Some(txid) = self.by_request.remove(&(client, seq)) else { return };
        let Some(tx) = self.txs.get_mut(&txid) else { return };
        tx.replied = true;
        if !tx.decision_record_pending {
            tx.decision = None;
        }
        if let Some(mut submit) = tx.submit.take() {
            set_reply(&mut submit, reply);
        }
        if !tx.committing {
            // Aborted, or read only everywhere: nothing follows the reply. A participant
            // that never voted (down, cut off, too slow) ends its `prepare` saying so.
            if let Some(mut tx) = self.txs.remove(&txid) {
                for (_, span) in &mut tx.prepares {
                    set_unanswered(span, reply);
                }
            }
        }
    }
}

/// A `prepare` that ends without its participant's vote: the transaction was decided
/// (aborted) first, and the span's status says why.
fn set_unanswered(span: &mut Span, reply: &Reply) {
    span.set_attribute(Attribute::new("twophase.vote", "none"));
    let why = match reply {
        Reply::Outcome { outcome: Outcome::Aborted { reason }, .. } => reason.label(),
        _ => "decided without this vote",
    };
    span.set_status(Status::error(format!("no vote: {why}")));
}

/// Removes and returns the span of `participant` (dropping a span ends it).
fn take_for(spans: &mut Vec<(ParticipantId, Span)>, participant: ParticipantId) -> Option<Span> {
    let at = spans.iter().position(|(p, _)| *p == participant)?;
    Some(spans.swap_remove(at).1)
}

fn frames_per_participant(mut entries: Vec<(ParticipantId, TraceEntry)>) -> Vec<(ParticipantId, Bytes)> {
    entries.sort_by_key(|(participant, _)| *participant);
    let mut frames = Vec::new();
    for group in entries.chunk_by(|a, b| a.0 == b.0) {
        let batch: Vec<TraceEntry> = group.iter().map(|(_, entry)| entry.clone()).collect();
        let mut bytes = Vec::new();
        encode_trace_context(&mut bytes, &batch);
        frames.push((group[0].0, Bytes::from(bytes)));
    }
    frames
}

fn set_vote(span: &mut Span, vote: &Vote) {
    let (label, reason) = match vote {
        Vote::Yes { .. } => ("yes", None),
        Vote::ReadOnly { .. } => ("read-only", None),
        Vote::No { reason } => ("no", Some(reason)),
    };
    span.set_attribute(Attribute::new("twophase.vote", label));
    if let Some(reason) = reason {
        set_abort_reason(span, reason);
    }
}

fn set_reply(span: &mut Span, reply: &Reply) {
    match reply {
        Reply::Outcome { outcome: Outcome::Committed { .. }, .. } => {
            span.set_attribute(Attribute::new("twophase.outcome", "committed"));
        }
        Reply::Outcome { outcome: Outcome::CommittedReadsUnavailable, .. } => {
            span.set_attribute(Attribute::new("twophase.outcome", "committed_reads_unavailable"));
        }
        Reply::Outcome { outcome: Outcome::Aborted { reason }, .. } => {
            span.set_attribute(Attribute::new("twophase.outcome", "aborted"));
            set_abort_reason(span, reason);
        }
        Reply::Rejected { reason, .. } => {
            span.set_attribute(Attribute::new("twophase.outcome", "rejected"));
            span.set_attribute(Attribute::new("twophase.reject_reason", format!("{reason:?}")));
        }
        // Registrations are not transactions: no span waits for them.
        // Interactive steps before the outcome: the span ends with the transaction's outcome.
        Reply::Registered { .. } | Reply::RegisterRefused { .. } | Reply::Began { .. } | Reply::Executed { .. } => {}
    }
}

fn set_abort_reason(span: &mut Span, reason: &AbortReason) {
    span.set_attribute(Attribute::new("twophase.abort_reason", reason.label()));
    span.set_attribute(Attribute::new("twophase.abort_detail", reason.to_string()));
    span.set_status(Status::error(reason.label()));
}
