//! A participant's spans of a sampled transaction, children of the coordinator's spans whose
//! contexts arrive in `TraceContext` frames just before the Prepare or Commit:
//!
//! - `prepare`: from the Prepare's arrival until it is decided here (locks taken and the
//!   operations evaluated: the Prepared record is appended, or a No / ReadOnly vote is
//!   emitted); a prepare parked behind an older holder includes the wait;
//! - `log sync` (`Prepared`): from the append until durable (then the Yes leaves);
//! - `commit`: from the Commit's arrival until its ack leaves (the Committed record durable).

use std::collections::VecDeque;

use opentelemetry::KeyValue;
use opentelemetry::trace::{Span as _, SpanContext};
use opentelemetry_sdk::trace::Span;
use twophase_engine::participant::PartEffects;
use twophase_engine::{Lsn, PartRecord, ToCoordinator, ToParticipant, TxId, Vote};
use twophase_net::{TraceEntry, TraceKey};

use super::bounded::BoundedMap;
use super::{Exporter, TRACED_TXS_MAX, context};

struct TracedTx {
    /// The coordinator's span this participant's spans are children of (its `prepare`,
    /// then its `commit`).
    parent: Option<SpanContext>,
    prepare: Option<Span>,
    commit: Option<Span>,
}

pub struct ParticipantTrace {
    exporter: Exporter,
    /// Contexts for the Prepare or Commit that follows them.
    waiting: BoundedMap<TxId, SpanContext>,
    txs: BoundedMap<TxId, TracedTx>,
    /// Open `log sync` spans in LSN order.
    syncs: VecDeque<(Lsn, Span)>,
}

impl ParticipantTrace {
    pub fn new(exporter: Exporter) -> ParticipantTrace {
        ParticipantTrace {
            exporter,
            waiting: BoundedMap::new(TRACED_TXS_MAX),
            txs: BoundedMap::new(TRACED_TXS_MAX),
            syncs: VecDeque::new(),
        }
    }

    /// The coordinator's `TraceContext` frame.
    pub fn on_trace_context(&mut self, entries: Vec<TraceEntry>) {
        for entry in entries {
            let TraceKey::Tx(txid) = entry.key else { continue };
            if let Some(parent) = context::parse(&entry.traceparent).filter(SpanContext::is_sampled) {
                self.waiting.insert(txid, parent);
            }
        }
    }

    /// A message from the coordinator, before the engine takes it.
    pub fn on_message(&mut self, message: &ToParticipant) {
        if self.waiting.is_empty() && self.txs.is_empty() {
            return;
        }
        let txid = message.txid();
        match message {
            ToParticipant::Prepare { ops, .. } => {
                let Some(parent) = self.waiting.remove(&txid) else { return };
                let attributes = vec![
                    KeyValue::new("twophase.txid", txid.0 as i64),
                    KeyValue::new("twophase.ops", ops.len() as i64),
                ];
                let span = self.exporter.span("prepare", Some(&parent), None, attributes);
                let tx = TracedTx { parent: Some(parent), prepare: Some(span), commit: None };
                self.txs.insert(txid, tx);
            }
            ToParticipant::Commit { .. } => {
                let Some(parent) = self.waiting.remove(&txid) else { return };
                let span = self.exporter.span(
                    "commit",
                    Some(&parent),
                    None,
                    vec![KeyValue::new("twophase.txid", txid.0 as i64)],
                );
                match self.txs.get_mut(&txid) {
                    Some(tx) => tx.commit = Some(span),
                    None => drop(
                        self.txs.insert(txid, TracedTx { parent: Some(parent), prepare: None, commit: Some(span) }),
                    ),
                }
            }
            ToParticipant::Abort { .. } => {
                if let Some(mut tx) = self.txs.remove(&txid)
                    && let Some(prepare) = &mut tx.prepare
                {
                    prepare.set_attribute(KeyValue::new("twophase.outcome", "aborted"));
                }
            }
            ToParticipant::Query { .. } | ToParticipant::Execute { .. } | ToParticipant::PrepareExecuted { .. } => {}
        }
    }

    /// A step's appends and outputs, before they are logged and gated.
    pub fn observe(&mut self, fx: &PartEffects) {
        if self.txs.is_empty() {
            return;
        }
        for (lsn, record) in &fx.appends {
            if let PartRecord::Prepared { txid, writes } = record {
                self.on_prepared(*lsn, *txid, writes.len());
            }
        }
        for output in &fx.outputs {
            if let ToCoordinator::Vote { txid, vote } = &output.item
                && !matches!(vote, Vote::Yes { .. })
            {
                self.on_refused_or_read_only(*txid, vote);
            }
        }
    }

    fn on_prepared(&mut self, lsn: Lsn, txid: TxId, writes: usize) {
        let Some(tx) = self.txs.get_mut(&txid) else { return };
        if let Some(mut prepare) = tx.prepare.take() {
            prepare.set_attribute(KeyValue::new("twophase.vote", "yes"));
        }
        let attributes = vec![
            KeyValue::new("twophase.record", "Prepared"),
            KeyValue::new("twophase.lsn", lsn.0 as i64),
            KeyValue::new("twophase.writes", writes as i64),
        ];
        let span = self.exporter.span("log sync", tx.parent.as_ref(), None, attributes);
        if self.syncs.len() >= TRACED_TXS_MAX {
            self.syncs.pop_front();
        }
        self.syncs.push_back((lsn, span));
    }

    /// A No or ReadOnly vote: nothing more happens here for this transaction.
    fn on_refused_or_read_only(&mut self, txid: TxId, vote: &Vote) {
        let Some(mut tx) = self.txs.remove(&txid) else { return };
        let Some(prepare) = &mut tx.prepare else { return };
        match vote {
            Vote::No { reason } => {
                prepare.set_attribute(KeyValue::new("twophase.vote", "no"));
                prepare.set_attribute(KeyValue::new("twophase.abort_reason", reason.label()));
                prepare.set_attribute(KeyValue::new("twophase.abort_detail", reason.to_string()));
            }
            _ => prepare.set_attribute(KeyValue::new("twophase.vote", "read-only")),
        }
    }

    /// The log is durable up to `durable`: its `log sync` spans end.
    pub fn after_step(&mut self, durable: Lsn) {
        while self.syncs.front().is_some_and(|(lsn, _)| *lsn <= durable) {
            self.syncs.pop_front();
        }
    }

    /// Messages about to leave: an ack ends the transaction's `commit` and its trace here.
    pub fn released(&mut self, released: &[ToCoordinator]) {
        if self.txs.is_empty() {
            return;
        }
        for message in released {
            if let ToCoordinator::Ack { txid } = message
                && self.txs.get_mut(txid).is_some_and(|tx| tx.commit.is_some())
            {
                self.txs.remove(txid);
            }
        }
    }
}
