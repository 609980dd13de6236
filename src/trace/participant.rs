//! A participant's spans of a sampled transaction, children of the coordinator's spans whose
//! contexts arrive in `TraceContext` frames just before the Prepare or Commit:
//!
//! - `prepare`: from the Prepare's arrival until its vote leaves: a No or ReadOnly vote at
//!   once, a Yes once the Prepared record is durable (a `log sync` event then gives its LSN,
//!   writes and sync time) or, over a database, when the Yes leaves (the database's PREPARE
//!   holds the transaction; the participant's record rides with a later group and is not
//!   waited for); a prepare parked behind an older holder includes the wait; an Abort that
//!   comes first ends it with `outcome` aborted and no vote;
//! - `commit`: from the Commit's arrival until its ack leaves (the Committed record durable).

use std::collections::VecDeque;
use std::time::SystemTime;

use opentelemetry::trace::SpanContext;
use smallvec::smallvec;
use twophase_engine::participant::PartEffects;
use twophase_engine::{Lsn, PartRecord, ToCoordinator, ToParticipant, TxId, Vote};
use twophase_net::{TraceEntry, TraceKey};

use super::bounded::BoundedMap;
use super::{Attribute, Exporter, Span, SyncEvent, TRACED_TXS_MAX, context, pop_durable};

struct TracedTx {
    prepare: Option<Span>,
    commit: Option<Span>,
}

/// A traced transaction's Prepared record waiting to become durable.
struct PendingSync {
    lsn: Lsn,
    txid: TxId,
    writes: usize,
    appended: SystemTime,
}

pub struct ParticipantTrace {
    /// Contexts for the Prepare or Commit that follows them.
    waiting: BoundedMap<TxId, SpanContext>,
    /// Boxed, as the coordinator's: the map's entries stay pointers.
    txs: BoundedMap<TxId, Box<TracedTx>>,
    /// Prepared records of traced transactions not yet durable, in LSN order.
    syncs: VecDeque<PendingSync>,
    /// Last, so that it is dropped last: the spans still open when the node stops end into
    /// its queue first, and its drop sends them.
    exporter: Exporter,
}

impl ParticipantTrace {
    pub fn new(exporter: Exporter) -> ParticipantTrace {
        ParticipantTrace {
            waiting: BoundedMap::new(TRACED_TXS_MAX),
            txs: BoundedMap::new(TRACED_TXS_MAX),
            syncs: VecDeque::new(),
            exporter,
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

    /// A message from the coordinator, before the engine takes it. A traced Prepare or
    /// Commit follows its context in the same read, so for nearly every other one `waiting`
    /// is empty or misses in its presence filter: an untraced message costs that check,
    /// inlined here.
    #[inline]
    pub fn on_message(&mut self, message: &ToParticipant) {
        match message {
            ToParticipant::Prepare { txid, .. } | ToParticipant::Commit { txid } if !self.waiting.may_hold(txid) => {}
            ToParticipant::Abort { txid } if !self.txs.may_hold(txid) => {}
            // Interactive requests are not traced here.
            ToParticipant::Query { .. } | ToParticipant::Execute { .. } | ToParticipant::PrepareExecuted { .. } => {}
            _ => self.on_traced_message(message),
        }
    }

    #[inline(never)]
    fn on_traced_message(&mut self, message: &ToParticipant) {
        let txid = message.txid();
        match message {
            ToParticipant::Prepare { ops, .. } => {
                let Some(parent) = self.waiting.remove(&txid) else { return };
                let attributes = smallvec![
                    Attribute::new("twophase.txid", txid.0 as i64),
                    Attribute::new("twophase.ops", ops.len() as i64),
                ];
                let span = self.exporter.span("prepare", Some(&parent), None, attributes);
                let tx = Box::new(TracedTx { prepare: Some(span), commit: None });
                self.txs.insert(txid, tx);
            }
            ToParticipant::Commit { .. } => {
                let Some(parent) = self.waiting.remove(&txid) else { return };
                let span = self.exporter.span(
                    "commit",
                    Some(&parent),
                    None,
                    smallvec![Attribute::new("twophase.txid", txid.0 as i64)],
                );
                match self.txs.get_mut(&txid) {
                    Some(tx) => tx.commit = Some(span),
                    None => drop(self.txs.insert(txid, Box::new(TracedTx { prepare: None, commit: Some(span) }))),
                }
            }
            ToParticipant::Abort { .. } => {
                if let Some(mut tx) = self.txs.remove(&txid)
                    && let Some(prepare) = &mut tx.prepare
                {
                    prepare.set_attribute(Attribute::new("twophase.outcome", "aborted"));
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
            if let PartRecord::Prepared { txid, writes, .. } = record {
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
        // Only a `prepare` still open waits for its sync (its vote is set then).
        if self.txs.get_mut(&txid).is_none_or(|tx| tx.prepare.is_none()) {
            return;
        }
        if self.syncs.len() >= TRACED_TXS_MAX {
            self.syncs.pop_front();
        }
        self.syncs.push_back(PendingSync { lsn, txid, writes, appended: SystemTime::now() });
    }

    /// A No or ReadOnly vote: nothing more happens here for this transaction.
    fn on_refused_or_read_only(&mut self, txid: TxId, vote: &Vote) {
        let Some(mut tx) = self.txs.remove(&txid) else { return };
        let Some(prepare) = &mut tx.prepare else { return };
        match vote {
            Vote::No { reason } => {
                prepare.set_attribute(Attribute::new("twophase.vote", "no"));
                prepare.set_attribute(Attribute::new("twophase.abort_reason", reason.label()));
                prepare.set_attribute(Attribute::new("twophase.abort_detail", reason.to_string()));
            }
            _ => prepare.set_attribute(Attribute::new("twophase.vote", "read-only")),
        }
    }

    /// The log is durable up to `durable`: a traced Prepared record now durable is a `log
    /// sync` event on its `prepare`, which ends with vote yes (the Yes leaves in this step;
    /// not before: an Abort that overtakes the sync ends the span with no vote).
    pub fn after_step(&mut self, durable: Lsn) {
        let mut now = None;
        while let Some(pending) = pop_durable(&mut self.syncs, durable, |pending| pending.lsn) {
            let now = *now.get_or_insert_with(SystemTime::now);
            let Some(tx) = self.txs.get_mut(&pending.txid) else { continue };
            let Some(mut prepare) = tx.prepare.take() else { continue };
            prepare.add_sync_event(SyncEvent::new(
                "Prepared",
                pending.lsn,
                pending.appended,
                now,
                Some(pending.writes),
            ));
            prepare.set_attribute(Attribute::new("twophase.vote", "yes"));
        }
    }

    /// Messages about to leave: an ack ends the transaction's `commit` and its trace here;
    /// a Yes ends a `prepare` still open (a database participant's: its vote does not wait
    /// for the participant's own log, see the module's doc).
    pub fn released(&mut self, released: &[ToCoordinator]) {
        if self.txs.is_empty() {
            return;
        }
        for message in released {
            match message {
                ToCoordinator::Ack { txid } if self.txs.get_mut(txid).is_some_and(|tx| tx.commit.is_some()) => {
                    self.txs.remove(txid);
                }
                ToCoordinator::Vote { txid, vote: Vote::Yes { .. } } => {
                    if let Some(mut prepare) = self.txs.get_mut(txid).and_then(|tx| tx.prepare.take()) {
                        prepare.set_attribute(Attribute::new("twophase.vote", "yes"));
                    }
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use twophase_engine::Epoch;

    use super::*;
    use crate::trace::test_support::recording_exporter;

    #[test]
    fn a_span_still_open_when_the_node_stops_is_sent() {
        let (exporter, names) = recording_exporter();
        let mut trace = ParticipantTrace::new(exporter);
        let txid = TxId::new(Epoch(1), 7);
        let traceparent = Bytes::from_static(b"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        trace.on_trace_context(vec![TraceEntry { key: TraceKey::Tx(txid), traceparent }]);
        trace.on_message(&ToParticipant::Prepare { txid, ops: Vec::new(), sole: false });
        assert!(names.lock().unwrap().is_empty(), "the prepare is still open");
        drop(trace);
        assert_eq!(*names.lock().unwrap(), ["prepare"]);
    }
}
