//! The participant's metrics: votes, decisions applied, prepared and in-doubt transactions,
//! how long a Yes vote waits for the decision (sampled, see [`super::sampler`]), the
//! coordinator's connection and the traffic to it.

use std::fmt;
use std::net::SocketAddr;

use prometheus_client::encoding::DescriptorEncoder;
use twophase_engine::participant::{ParticipantStats, ResourceManager};
use twophase_engine::{Lsn, Participant, Time, ToCoordinator, ToParticipant, Vote};
use twophase_net::Reactor;

use super::connections::ConnectionsExport;
use super::histogram::LatencyHistogram;
use super::log::{LogExport, LogMetrics};
use super::sampler::{Sampler, StepTime, sampled};
use super::{Export, NodeInfo, Publisher, Sources, encode};
use crate::node::Clock;

/// The participant's metrics hooks; all of them do nothing when metrics are off.
#[derive(Debug, Default)]
pub struct ParticipantMetrics(Option<Box<Live>>);

#[derive(Debug)]
struct Live {
    export: ParticipantExport,
    voted_yes: Sampler<u64>,
    /// The time of the current step's publish check and of the votes it releases.
    step: StepTime,
    log: LogMetrics,
    publisher: Publisher<ParticipantExport>,
}

#[derive(Clone, Debug, Default)]
struct ParticipantExport {
    stats: ParticipantStats,
    prepared: u64,
    in_doubt: u64,
    parked: u64,
    vote_wait: LatencyHistogram,
    coordinator_connected: bool,
    coordinator_connects: u64,
    frames_in: u64,
    frames_out: u64,
    bytes_out: u64,
    log: LogExport,
    connections: ConnectionsExport,
}

impl ParticipantMetrics {
    pub fn off() -> ParticipantMetrics {
        ParticipantMetrics(None)
    }

    /// Off without an address; otherwise starts the listener and prints
    /// `twophase participant NAME metrics on ADDR` (before the node's `listening on` line).
    /// `clock` is the engine's.
    pub fn serve(
        listen: Option<SocketAddr>,
        info: NodeInfo,
        sources: Sources,
        clock: Clock,
    ) -> anyhow::Result<ParticipantMetrics> {
        let Some(listen) = listen else { return Ok(ParticipantMetrics::off()) };
        let announce = info.announcement();
        let (metrics, addr) = ParticipantMetrics::start(listen, info, sources, clock)?;
        println!("{announce} {addr}");
        Ok(metrics)
    }

    /// Starts the listener on `listen`; returns the hooks and the bound address.
    pub fn start(
        listen: SocketAddr,
        info: NodeInfo,
        sources: Sources,
        clock: Clock,
    ) -> anyhow::Result<(ParticipantMetrics, SocketAddr)> {
        let export = ParticipantExport::default();
        let log = LogMetrics::default();
        let (publisher, addr) = super::start(listen, info, export.clone(), sources, log.groups_counter(), clock.now())?;
        let live = Live { export, voted_yes: Sampler::default(), step: StepTime::new(clock), log, publisher };
        Ok((ParticipantMetrics(Some(Box::new(live))), addr))
    }

    pub fn log(&mut self) -> Option<&mut LogMetrics> {
        self.0.as_mut().map(|live| &mut live.log)
    }

    pub fn coordinator_connected(&mut self, connected: bool) {
        let Some(live) = &mut self.0 else { return };
        live.export.coordinator_connects += u64::from(connected && !live.export.coordinator_connected);
        live.export.coordinator_connected = connected;
    }

    /// A frame of the coordinator's arrived.
    pub fn frame_in(&mut self) {
        let Some(live) = &mut self.0 else { return };
        live.export.frames_in += 1;
    }

    /// A message of the coordinator's, read at `read_at`, is about to be stepped.
    pub fn received(&mut self, read_at: Time, message: &ToParticipant) {
        let Some(live) = &mut self.0 else { return };
        if let ToParticipant::Commit { txid } | ToParticipant::Abort { txid } = message
            && sampled(txid.0)
            && let Some(elapsed) = live.voted_yes.finish(&txid.0, read_at)
        {
            live.export.vote_wait.observe(elapsed);
        }
    }

    /// A message released by this step is about to go to the coordinator.
    pub fn sent(&mut self, message: &ToCoordinator) {
        let Some(live) = &mut self.0 else { return };
        if let ToCoordinator::Vote { txid, vote: Vote::Yes { .. } } = message
            && sampled(txid.0)
        {
            live.voted_yes.start(txid.0, live.step.now());
        }
    }

    /// A frame of `bytes` was handed to the network for the coordinator.
    pub fn frame_out(&mut self, bytes: usize) {
        let Some(live) = &mut self.0 else { return };
        live.export.frames_out += 1;
        live.export.bytes_out += bytes as u64;
    }

    /// Called after every step, before its outputs are routed: starts the step's time (the
    /// one clock read of the step) and publishes the counters, the transport's
    /// per-connection ones included, every [`super::PUBLISH_EVERY`].
    pub fn after_step<R: ResourceManager>(&mut self, engine: &Participant<R>, durable: Lsn, transport: &Reactor) {
        let Some(live) = &mut self.0 else { return };
        let now = live.step.restart();
        live.log.durable(durable);
        if !live.publisher.due(now) {
            return;
        }
        live.export.connections.update(transport);
        live.export.stats = engine.stats();
        live.export.prepared = engine.prepared() as u64;
        live.export.in_doubt = engine.in_doubt() as u64;
        live.export.parked = engine.parked() as u64;
        live.export.log = live.log.export();
        let export = &live.export;
        live.publisher.publish(now, || export.clone());
    }
}

impl Export for ParticipantExport {
    fn encode(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        let stats = &self.stats;
        encode::counters(
            e,
            "twophase_transactions",
            "Prepared transactions this participant finished, by outcome",
            "outcome",
            [("committed", stats.committed), ("aborted", stats.aborted)],
        )?;
        encode::counters(
            e,
            "twophase_votes",
            "Votes sent to the coordinator",
            "vote",
            [("yes", stats.prepared), ("no", stats.voted_no), ("read_only", stats.read_only)],
        )?;
        encode::counter(
            e,
            "twophase_prepares_waited",
            "Prepares that waited for an older prepared transaction's decision",
            stats.waited,
        )?;
        encode::counter(
            e,
            "twophase_inquiries",
            "Questions sent to the coordinator about in-doubt transactions",
            stats.inquiries,
        )?;
        encode::gauge(
            e,
            "twophase_transactions_prepared",
            "Prepared transactions awaiting a decision",
            self.prepared as f64,
        )?;
        encode::gauge(
            e,
            "twophase_transactions_in_doubt",
            "Prepared transactions whose decision this participant is asking for",
            self.in_doubt as f64,
        )?;
        encode::gauge(
            e,
            "twophase_prepares_parked",
            "Prepares waiting for an older prepared transaction's decision",
            self.parked as f64,
        )?;
        encode::histogram(
            e,
            "twophase_vote_wait_seconds",
            "From a Yes vote handed to the network until the decision arrives; one transaction in 8 is timed",
            &self.vote_wait,
        )?;
        encode::gauge(
            e,
            "twophase_coordinator_connected",
            "1 while a coordinator is connected",
            f64::from(u8::from(self.coordinator_connected)),
        )?;
        encode::counter(
            e,
            "twophase_coordinator_connects",
            "Coordinator connections accepted",
            self.coordinator_connects,
        )?;
        let peer = "coordinator";
        encode::counters(e, "twophase_net_frames_in", "Frames received, by peer", "peer", [(peer, self.frames_in)])?;
        encode::counters(
            e,
            "twophase_net_frames_out",
            "Frames handed to the network, by peer",
            "peer",
            [(peer, self.frames_out)],
        )?;
        encode::counters(
            e,
            "twophase_net_bytes_out",
            "Bytes handed to the network, by peer",
            "peer",
            [(peer, self.bytes_out)],
        )?;
        self.connections.encode(e)?;
        self.log.encode(e)
    }
}
