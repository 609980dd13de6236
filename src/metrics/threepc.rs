//! The metrics of a `--protocol 3pc` node, coordinator or participant: transactions by
//! outcome (and, at the coordinator, aborts by reason and end-to-end latency, one
//! transaction in 8 timed as the 2PC coordinator's), those in flight or undecided, split
//! decisions a participant heard of, and what every node serves (the log, connections,
//! start and recovery). Names and labels are the 2PC nodes' where they mean the same, so a
//! dashboard or `twophase top` reads both.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;

use prometheus_client::encoding::DescriptorEncoder;
use twophase_engine::{ClientId, Lsn, Outcome, Seq};
use twophase_net::Reactor;

use super::connections::ConnectionsExport;
use super::histogram::LatencyHistogram;
use super::log::{LogExport, LogMetrics};
use super::sampler::{Sampler, sampled};
use super::{Export, NodeInfo, Publisher, Sources, encode};
use crate::node::Clock;

/// A 3PC node's metrics hooks; all of them do nothing when metrics are off.
#[derive(Debug, Default)]
pub struct ThreePcMetrics(Option<Box<Live>>);

#[derive(Debug)]
struct Live {
    export: ThreePcExport,
    log: LogMetrics,
    publisher: Publisher<ThreePcExport>,
    /// The engine's: read once a step, and for each timed request, only while metrics are
    /// on.
    clock: Clock,
    /// When each timed request arrived (bounded: see [`Sampler`]).
    submitted: Sampler<(ClientId, Seq)>,
}

#[derive(Clone, Debug, Default)]
struct ThreePcExport {
    /// The coordinator's epoch (this incarnation's: one more at every start); `None` at a
    /// participant. The coordinator also serves in flight and aborts by reason, a
    /// participant undecided and split decisions.
    epoch: Option<u32>,
    committed: u64,
    aborted: u64,
    /// The coordinator's aborts by reason label (a bounded set: `AbortReason::label`).
    aborts: BTreeMap<&'static str, u64>,
    /// The coordinator's transactions in flight, or a participant's undecided ones.
    open: u64,
    split_decisions: u64,
    /// The coordinator's timed requests, from arrival until their reply is handed on.
    transaction: LatencyHistogram,
    log: LogExport,
    connections: ConnectionsExport,
}

impl ThreePcMetrics {
    /// Off without an address; otherwise starts the listener and prints `twophase ROLE
    /// NAME metrics on ADDR` (before the node's `listening on` line). `epoch` is the
    /// coordinator's (`None` at a participant), `clock` the engine's.
    pub fn serve(
        listen: Option<SocketAddr>,
        info: NodeInfo,
        epoch: Option<u32>,
        sources: Sources,
        clock: Clock,
    ) -> anyhow::Result<Self> {
        let Some(listen) = listen else { return Ok(ThreePcMetrics(None)) };
        let announce = info.announcement();
        let export = ThreePcExport { epoch, ..ThreePcExport::default() };
        let log = LogMetrics::default();
        let (publisher, addr) = super::start(listen, info, export.clone(), sources, log.groups_counter(), clock.now())?;
        println!("{announce} {addr}");
        let live = Live { export, log, publisher, clock, submitted: Sampler::default() };
        Ok(ThreePcMetrics(Some(Box::new(live))))
    }

    pub fn log(&mut self) -> Option<&mut LogMetrics> {
        self.0.as_mut().map(|live| &mut live.log)
    }

    /// A client's request arrived at the coordinator (one in 8 is timed).
    pub fn submitted(&mut self, client: ClientId, seq: Seq) {
        let Some(live) = &mut self.0 else { return };
        if sampled(seq) {
            live.submitted.start((client, seq), live.clock.now());
        }
    }

    /// The coordinator answered `client`'s request `seq` with `outcome`.
    pub fn replied(&mut self, client: ClientId, seq: Seq, outcome: &Outcome) {
        let Some(live) = &mut self.0 else { return };
        if sampled(seq)
            && let Some(elapsed) = live.submitted.finish(&(client, seq), live.clock.now())
        {
            live.export.transaction.observe(elapsed);
        }
        match outcome {
            Outcome::Committed { .. } | Outcome::CommittedReadsUnavailable => live.export.committed += 1,
            Outcome::Aborted { reason } => {
                live.export.aborted += 1;
                *live.export.aborts.entry(reason.label()).or_default() += 1;
            }
        }
    }

    /// A participant applied its decision (`commit` or abort) to its store.
    pub fn applied(&mut self, commit: bool) {
        let Some(live) = &mut self.0 else { return };
        if commit {
            live.export.committed += 1;
        } else {
            live.export.aborted += 1;
        }
    }

    /// A participant heard a peer decide otherwise than it did.
    pub fn split_decision(&mut self) {
        let Some(live) = &mut self.0 else { return };
        live.export.split_decisions += 1;
    }

    /// Called after every step: publishes the counters every [`super::PUBLISH_EVERY`], with
    /// `open` (in flight at the coordinator, undecided at a participant) and the transport's
    /// per-connection counters.
    pub fn after_step(&mut self, open: usize, durable: Lsn, transport: &Reactor) {
        let Some(live) = &mut self.0 else { return };
        live.log.durable(durable);
        let now = live.clock.now();
        if !live.publisher.due(now) {
            return;
        }
        live.export.open = open as u64;
        live.export.connections.update(transport);
        live.export.log = live.log.export();
        let export = &live.export;
        live.publisher.publish(now, || export.clone());
    }
}

impl Export for ThreePcExport {
    fn encode(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        let help = if self.epoch.is_some() {
            "Transactions this coordinator answered, by outcome"
        } else {
            "Transactions whose decision this participant applied, by outcome"
        };
        let outcomes = [("committed", self.committed), ("aborted", self.aborted)];
        encode::counters(e, "twophase_transactions", help, "outcome", outcomes)?;
        if let Some(epoch) = self.epoch {
            let aborts = self.aborts.iter().map(|(reason, count)| (*reason, *count));
            encode::counters(e, "twophase_aborts", "Aborted transactions by reason", "reason", aborts)?;
            encode::gauge(
                e,
                "twophase_transactions_in_flight",
                "Transactions begun, not yet decided",
                self.open as f64,
            )?;
            let help = "This coordinator incarnation's epoch (one more at every start)";
            encode::gauge(e, "twophase_coordinator_epoch", help, f64::from(epoch))?;
            let help = "From a submission's arrival until its reply is handed on; one transaction in 8 is timed";
            encode::histogram(e, "twophase_transaction_seconds", help, &self.transaction)?;
        } else {
            let help = "Transactions this participant voted on and has not decided";
            encode::gauge(e, "twophase_transactions_undecided", help, self.open as f64)?;
            let help = "Decisions of a peer that differed from this participant's (a broken network bound)";
            encode::counter(e, "twophase_split_decisions", help, self.split_decisions)?;
        }
        self.connections.encode(e)?;
        self.log.encode(e)
    }
}
