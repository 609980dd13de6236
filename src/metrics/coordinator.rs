//! The coordinator's metrics: outcomes by abort reason, Busy rejections, in-flight
//! transactions, the end-to-end, prepare-round and commit-round latencies (sampled, see
//! [`super::sampler`]), per participant its connection and the traffic to it, and the
//! interactive transactions' requests, deadlock detection latency and lock waits
//! ([`super::interactive`]).

use std::fmt;
use std::net::SocketAddr;

use prometheus_client::encoding::DescriptorEncoder;
use twophase_engine::coordinator::{CoordEffects, CoordinatorStats};
use twophase_engine::message::Interactive;
use twophase_engine::{
    ClientId, Coordinator, Lsn, Outcome, ParticipantId, RejectReason, Reply, Seq, Time, ToCoordinator, ToParticipant,
};
use twophase_net::Reactor;

use super::connections::ConnectionsExport;
use super::histogram::LatencyHistogram;
use super::interactive::{InteractiveExport, InteractiveMetrics};
use super::log::{LogExport, LogMetrics};
use super::sampler::{Sampler, StepTime, sampled};
use super::{Export, NodeInfo, Publisher, Sources, encode};
use crate::node::Clock;

/// The coordinator's metrics hooks; all of them do nothing when metrics are off.
#[derive(Debug, Default)]
pub struct CoordinatorMetrics(Option<Box<Live>>);

#[derive(Debug)]
struct Live {
    export: CoordinatorExport,
    submitted: Sampler<(ClientId, Seq)>,
    prepares: Sampler<(ParticipantId, u64)>,
    commits: Sampler<(ParticipantId, u64)>,
    /// The time of the current step's publish check and of the outputs it releases.
    step: StepTime,
    interactive: InteractiveMetrics,
    log: LogMetrics,
    publisher: Publisher<CoordinatorExport>,
}

#[derive(Clone, Debug, Default)]
struct CoordinatorExport {
    stats: CoordinatorStats,
    in_flight: u64,
    preparing: u64,
    epoch: u64,
    /// Abort replies by reason (one entry per `AbortReason::label` seen: bounded by the enum).
    aborts: Vec<(&'static str, u64)>,
    rejected_seq_too_old: u64,
    transaction: LatencyHistogram,
    prepare_round: LatencyHistogram,
    commit_round: LatencyHistogram,
    participants: Vec<Peer>,
    clients: Traffic,
    log: LogExport,
    connections: ConnectionsExport,
    interactive: InteractiveExport,
    /// A replicated group member's Raft state; `None` for a single coordinator.
    group: Option<GroupStatus>,
}

/// A replicated group member's Raft state, as its `twophase_raft_*` gauges show it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupStatus {
    pub term: u64,
    /// This member leads the group (its engine decides).
    pub leader: bool,
    pub commit_index: u64,
    pub applied_index: u64,
}

#[derive(Clone, Debug, Default)]
struct Peer {
    id: ParticipantId,
    name: String,
    connected: bool,
    disconnects: u64,
    traffic: Traffic,
}

#[derive(Clone, Copy, Debug, Default)]
struct Traffic {
    frames_in: u64,
    frames_out: u64,
    bytes_out: u64,
}

impl CoordinatorMetrics {
    /// Metrics off: every hook is a no-op.
    pub fn off() -> CoordinatorMetrics {
        CoordinatorMetrics(None)
    }

    /// Off without an address; otherwise starts the listener and prints
    /// `twophase coordinator NAME metrics on ADDR` (before the node's `listening on` line).
    /// `clock` is the engine's: the `now` a batch is stepped at is its frames' read time.
    pub fn serve(
        listen: Option<SocketAddr>,
        info: NodeInfo,
        participants: &[(ParticipantId, String, String)],
        sources: Sources,
        clock: Clock,
    ) -> anyhow::Result<CoordinatorMetrics> {
        let Some(listen) = listen else { return Ok(CoordinatorMetrics::off()) };
        let announce = info.announcement();
        let (metrics, addr) = CoordinatorMetrics::start(listen, info, participants, sources, clock)?;
        println!("{announce} {addr}");
        Ok(metrics)
    }

    /// Starts the listener on `listen`; returns the hooks and the bound address.
    pub fn start(
        listen: SocketAddr,
        info: NodeInfo,
        participants: &[(ParticipantId, String, String)],
        sources: Sources,
        clock: Clock,
    ) -> anyhow::Result<(CoordinatorMetrics, SocketAddr)> {
        let export = CoordinatorExport {
            participants: participants
                .iter()
                .map(|(id, name, _)| Peer { id: *id, name: name.clone(), ..Peer::default() })
                .collect(),
            ..CoordinatorExport::default()
        };
        let log = LogMetrics::default();
        let (publisher, addr) = super::start(listen, info, export.clone(), sources, log.groups_counter(), clock.now())?;
        let live = Live {
            export,
            submitted: Sampler::default(),
            prepares: Sampler::default(),
            commits: Sampler::default(),
            step: StepTime::new(clock),
            interactive: InteractiveMetrics::new(clock),
            log,
            publisher,
        };
        Ok((CoordinatorMetrics(Some(Box::new(live))), addr))
    }

    pub fn log(&mut self) -> Option<&mut LogMetrics> {
        self.0.as_mut().map(|live| &mut live.log)
    }

    /// A request read at `read_at` is about to be stepped.
    pub fn submitted(&mut self, read_at: Time, client: ClientId, seq: Seq) {
        let Some(live) = &mut self.0 else { return };
        if sampled(seq) {
            live.submitted.start((client, seq), read_at);
        }
    }

    /// A frame arrived from participant `from` (or from a client when `None`).
    pub fn frame_in(&mut self, from: Option<ParticipantId>) {
        let Some(live) = &mut self.0 else { return };
        live.traffic(from).frames_in += 1;
    }

    /// A frame of `bytes` was handed to the network for participant `to` (or a client).
    pub fn frame_out(&mut self, to: Option<ParticipantId>, bytes: usize) {
        let Some(live) = &mut self.0 else { return };
        let traffic = live.traffic(to);
        traffic.frames_out += 1;
        traffic.bytes_out += bytes as u64;
    }

    /// An interactive request arrived from a client.
    pub fn interactive_request(&mut self, request: &Interactive) {
        let Some(live) = &mut self.0 else { return };
        live.interactive.request(request);
    }

    /// A message released by this step is about to go to participant `to`.
    pub fn sent(&mut self, to: ParticipantId, message: &ToParticipant) {
        let Some(live) = &mut self.0 else { return };
        match message {
            ToParticipant::Abort { txid } => live.interactive.aborted_at(to, *txid),
            ToParticipant::Prepare { txid, .. } if sampled(txid.0) => {
                live.prepares.start((to, txid.0), live.step.now());
            }
            ToParticipant::Commit { txid } if sampled(txid.0) => live.commits.start((to, txid.0), live.step.now()),
            _ => {}
        }
    }

    /// A participant message read at `read_at`, before the engine steps over it; pass what
    /// it returns to [`Self::stepped`] once the engine has.
    pub fn received(
        &mut self,
        read_at: Time,
        from: ParticipantId,
        message: &ToCoordinator,
        fx: &CoordEffects,
    ) -> Option<usize> {
        let Some(live) = &mut self.0 else { return None };
        let wait_for_outputs = live.interactive.received(read_at, from, message, fx);
        match message {
            ToCoordinator::Vote { txid, .. } if sampled(txid.0) => {
                if let Some(elapsed) = live.prepares.finish(&(from, txid.0), read_at) {
                    live.export.prepare_round.observe(elapsed);
                }
            }
            ToCoordinator::Ack { txid } if sampled(txid.0) => {
                if let Some(elapsed) = live.commits.finish(&(from, txid.0), read_at) {
                    live.export.commit_round.observe(elapsed);
                }
            }
            _ => {}
        }
        wait_for_outputs
    }

    /// After the engine stepped over a participant message: what [`Self::received`]
    /// returned for it marks a `WaitFor`, whose step's `Deadlock` aborts are detections.
    pub fn stepped(&mut self, read_at: Time, wait_for_outputs: Option<usize>, fx: &CoordEffects) {
        let (Some(live), Some(outputs_from)) = (&mut self.0, wait_for_outputs) else { return };
        live.interactive.wait_for_stepped(read_at, outputs_from, fx);
    }

    /// A reply released by this step is about to go to its client.
    pub fn replied(&mut self, reply: &Reply) {
        let Some(live) = &mut self.0 else { return };
        match reply {
            Reply::Outcome { outcome: Outcome::Aborted { reason }, .. } => live.count_abort(reason.label()),
            Reply::Rejected { reason: RejectReason::SeqTooOld, .. } => live.export.rejected_seq_too_old += 1,
            _ => {}
        }
        live.interactive.replied(reply);
        if let Some((client, seq)) = reply.request()
            && sampled(seq)
            && let Some(elapsed) = live.submitted.finish(&(client, seq), live.step.now())
        {
            live.export.transaction.observe(elapsed);
        }
    }

    pub fn participant_up(&mut self, participant: ParticipantId) {
        if let Some(peer) = self.0.as_mut().and_then(|live| live.peer(participant)) {
            peer.connected = true;
        }
    }

    pub fn participant_down(&mut self, participant: ParticipantId) {
        if let Some(peer) = self.0.as_mut().and_then(|live| live.peer(participant)) {
            peer.connected = false;
            peer.disconnects += 1;
        }
    }

    /// A replicated group member's Raft state, published with the rest (call it every loop
    /// turn: it only copies four numbers).
    pub fn group(&mut self, status: GroupStatus) {
        let Some(live) = &mut self.0 else { return };
        live.export.group = Some(status);
    }

    /// A group member that does not lead steps no engine, so [`Self::after_step`] is not
    /// called: this publishes every [`super::PUBLISH_EVERY`] instead. Nothing is in flight
    /// and no participant is connected here; the transaction counters keep what this
    /// member's last leadership counted (a new leadership counts from zero, as a restarted
    /// coordinator does).
    pub fn after_following_turn(&mut self) {
        let Some(live) = &mut self.0 else { return };
        let now = live.step.restart();
        if !live.publisher.due(now) {
            return;
        }
        live.export.in_flight = 0;
        live.export.preparing = 0;
        for peer in &mut live.export.participants {
            peer.connected = false;
        }
        let export = &live.export;
        live.publisher.publish(now, || export.clone());
    }

    /// Called after every step, before its outputs are routed: starts the step's time (the
    /// one clock read of the step) and publishes the counters, the transport's
    /// per-connection ones included, every [`super::PUBLISH_EVERY`].
    pub fn after_step(&mut self, engine: &Coordinator, durable: Lsn, transport: &Reactor) {
        let Some(live) = &mut self.0 else { return };
        let now = live.step.restart();
        live.log.durable(durable);
        if !live.publisher.due(now) {
            return;
        }
        live.export.connections.update(transport);
        live.export.stats = engine.stats();
        live.export.in_flight = engine.unfinished() as u64;
        live.export.preparing = engine.preparing() as u64;
        live.export.epoch = u64::from(engine.epoch().0);
        live.export.log = live.log.export();
        live.export.interactive = live.interactive.export();
        let export = &live.export;
        live.publisher.publish(now, || export.clone());
    }
}

impl Live {
    fn peer(&mut self, id: ParticipantId) -> Option<&mut Peer> {
        self.export.participants.iter_mut().find(|peer| peer.id == id)
    }

    fn traffic(&mut self, peer: Option<ParticipantId>) -> &mut Traffic {
        match peer.and_then(|id| self.export.participants.iter().position(|p| p.id == id)) {
            Some(at) => &mut self.export.participants[at].traffic,
            None => &mut self.export.clients,
        }
    }

    fn count_abort(&mut self, reason: &'static str) {
        match self.export.aborts.iter_mut().find(|(label, _)| *label == reason) {
            Some((_, count)) => *count += 1,
            None => self.export.aborts.push((reason, 1)),
        }
    }
}

impl Export for CoordinatorExport {
    fn encode(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        let stats = &self.stats;
        encode::counters(
            e,
            "twophase_transactions",
            "Transactions the coordinator decided, by outcome",
            "outcome",
            [("committed", stats.committed), ("aborted", stats.aborted)],
        )?;
        let aborts = self.aborts.iter().map(|(reason, count)| (*reason, *count));
        encode::counters(e, "twophase_aborts", "Abort replies sent to clients, by reason", "reason", aborts)?;
        encode::counters(
            e,
            "twophase_rejections",
            "Submissions refused without running (busy: too many in flight; seq_too_old: outside the exactly-once window)",
            "reason",
            [("busy", stats.rejected_busy), ("seq_too_old", self.rejected_seq_too_old)],
        )?;
        encode::counter(
            e,
            "twophase_commit_redrives",
            "Commit messages sent again to participants that had not acknowledged",
            stats.redrives,
        )?;
        encode::gauge(
            e,
            "twophase_transactions_in_flight",
            "Transactions not yet forgotten (preparing, or committed and awaiting acks)",
            self.in_flight as f64,
        )?;
        encode::gauge(
            e,
            "twophase_transactions_preparing",
            "Transactions in the prepare phase (Busy beyond --max-in-flight)",
            self.preparing as f64,
        )?;
        encode::gauge(
            e,
            "twophase_coordinator_epoch",
            "The coordinator's epoch: it rises by one at every start",
            self.epoch as f64,
        )?;
        let sampled_note = "; one transaction in 8 is timed";
        encode::histogram(
            e,
            "twophase_transaction_seconds",
            &format!("From a submission's arrival until its reply leaves the coordinator{sampled_note}"),
            &self.transaction,
        )?;
        encode::histogram(
            e,
            "twophase_prepare_round_seconds",
            &format!("From a Prepare handed to the network until that participant's vote arrives{sampled_note}"),
            &self.prepare_round,
        )?;
        encode::histogram(
            e,
            "twophase_commit_round_seconds",
            &format!("From a Commit handed to the network until that participant's ack arrives{sampled_note}"),
            &self.commit_round,
        )?;
        let names = || self.participants.iter().map(|peer| peer.name.as_str());
        let connected = names().zip(self.participants.iter().map(|peer| f64::from(u8::from(peer.connected))));
        encode::gauges(
            e,
            "twophase_participant_connected",
            "1 while the coordinator holds a connection to the participant",
            "participant",
            connected,
        )?;
        let disconnects = names().zip(self.participants.iter().map(|peer| peer.disconnects));
        encode::counters(
            e,
            "twophase_participant_disconnects",
            "Connections to the participant that were lost",
            "participant",
            disconnects,
        )?;
        self.encode_interactive(e)?;
        self.encode_group(e)?;
        self.encode_traffic(e)?;
        self.connections.encode(e)?;
        self.log.encode(e)
    }
}

impl CoordinatorExport {
    /// A replicated group member's Raft state (nothing for a single coordinator).
    fn encode_group(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        let Some(group) = &self.group else { return Ok(()) };
        encode::gauge(e, "twophase_raft_term", "The Raft term this group member is in", group.term as f64)?;
        encode::gauge(
            e,
            "twophase_raft_leader",
            "1 while this group member leads (its engine decides), 0 while it follows",
            f64::from(u8::from(group.leader)),
        )?;
        encode::gauge(
            e,
            "twophase_raft_commit_index",
            "The last Raft entry this member knows a majority holds",
            group.commit_index as f64,
        )?;
        encode::gauge(
            e,
            "twophase_raft_applied_index",
            "The last Raft entry this member applied to its state",
            group.applied_index as f64,
        )
    }

    /// Interactive transactions by outcome, then requests, deadlocks and lock waits.
    fn encode_interactive(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        let stats = &self.stats.interactive;
        encode::counters(
            e,
            "twophase_interactive_transactions",
            "Interactive transactions that ended, by outcome (aborts by reason)",
            "outcome",
            [
                ("committed", stats.committed),
                ("deadlock", stats.aborted_deadlock),
                ("lock_timeout", stats.aborted_lock_timeout),
                ("idle_timeout", stats.aborted_idle_timeout),
                ("rolled_back", stats.rolled_back),
                ("other", stats.aborted_other),
            ],
        )?;
        encode::counter(
            e,
            "twophase_lock_waits_reported",
            "WaitFor reports with holders (an interactive lock wait began or changed)",
            stats.lock_waits_reported,
        )?;
        self.interactive.encode(e, stats.deadlocks_detected)
    }

    /// Frames and bytes per peer: one label value per participant, `clients` for the rest.
    fn encode_traffic(&self, e: &mut DescriptorEncoder) -> fmt::Result {
        let peers = || {
            self.participants
                .iter()
                .map(|peer| (peer.name.as_str(), peer.traffic))
                .chain(std::iter::once(("clients", self.clients)))
        };
        encode::counters(
            e,
            "twophase_net_frames_in",
            "Frames received, by peer",
            "peer",
            peers().map(|(p, t)| (p, t.frames_in)),
        )?;
        encode::counters(
            e,
            "twophase_net_frames_out",
            "Frames handed to the network, by peer",
            "peer",
            peers().map(|(p, t)| (p, t.frames_out)),
        )?;
        encode::counters(
            e,
            "twophase_net_bytes_out",
            "Bytes handed to the network, by peer",
            "peer",
            peers().map(|(p, t)| (p, t.bytes_out)),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use twophase_engine::coordinator::CoordEffects;
    use twophase_engine::{AbortReason, CoordinatorConfig, Time};

    use super::*;

    #[test]
    fn replies_and_links_show_in_the_scrape_once_published() {
        let participants =
            [(ParticipantId(1), "p1".to_string(), String::new()), (ParticipantId(2), "p2".into(), "".into())];
        let info = NodeInfo { node: "c1".into(), role: "coordinator", recovery: Duration::ZERO, recovered_records: 0 };
        let sources = Sources { snapshots: Default::default(), wal: Default::default() };
        let (mut metrics, addr) =
            CoordinatorMetrics::start("127.0.0.1:0".parse().unwrap(), info, &participants, sources, Clock::new())
                .unwrap();
        let abort = |reason| Reply::Outcome { client: ClientId(7), seq: 3, outcome: Outcome::Aborted { reason } };
        metrics.replied(&abort(AbortReason::Conflict { participant: ParticipantId(1), key: Default::default() }));
        metrics.replied(&abort(AbortReason::Conflict { participant: ParticipantId(2), key: Default::default() }));
        metrics.replied(&abort(AbortReason::Timeout { participant: ParticipantId(2) }));
        metrics.participant_up(ParticipantId(1));
        metrics.participant_up(ParticipantId(2));
        metrics.participant_down(ParticipantId(2));
        metrics.frame_out(Some(ParticipantId(1)), 100);
        metrics.frame_out(None, 40);

        let scrape = || twophase_bench::scrape::fetch(addr, Duration::from_secs(5)).unwrap();
        assert_eq!(scrape().value("twophase_aborts_total", &[("reason", "conflict")]), None, "not published yet");
        let mut fx = CoordEffects::default();
        let engine = Coordinator::recover(
            CoordinatorConfig::new(vec![ParticipantId(1), ParticipantId(2)]),
            [],
            Time(0),
            &mut fx,
        );
        let live = metrics.0.as_mut().unwrap();
        live.publisher.last = None; // as if the interval had passed
        metrics.after_step(&engine, Lsn::NONE, &idle_transport());

        let scrape = scrape();
        assert_eq!(scrape.value("twophase_aborts_total", &[("reason", "conflict"), ("node", "c1")]), Some(2.0));
        assert_eq!(scrape.value("twophase_aborts_total", &[("reason", "timeout")]), Some(1.0));
        assert_eq!(scrape.value("twophase_participant_connected", &[("participant", "p1")]), Some(1.0));
        assert_eq!(scrape.value("twophase_participant_connected", &[("participant", "p2")]), Some(0.0));
        assert_eq!(scrape.value("twophase_participant_disconnects_total", &[("participant", "p2")]), Some(1.0));
        assert_eq!(scrape.value("twophase_net_bytes_out_total", &[("peer", "p1")]), Some(100.0));
        assert_eq!(scrape.value("twophase_net_bytes_out_total", &[("peer", "clients")]), Some(40.0));
        assert_eq!(scrape.value("twophase_coordinator_epoch", &[]), Some(1.0));
    }

    #[test]
    fn a_group_member_shows_its_raft_state_and_a_follower_publishes_without_steps() {
        let participants = [(ParticipantId(1), "p1".to_string(), String::new())];
        let info = NodeInfo { node: "c2".into(), role: "coordinator", recovery: Duration::ZERO, recovered_records: 0 };
        let sources = Sources { snapshots: Default::default(), wal: Default::default() };
        let (mut metrics, addr) =
            CoordinatorMetrics::start("127.0.0.1:0".parse().unwrap(), info, &participants, sources, Clock::new())
                .unwrap();
        let scrape = || twophase_bench::scrape::fetch(addr, Duration::from_secs(5)).unwrap();
        assert_eq!(scrape().value("twophase_raft_term", &[]), None, "a single coordinator has no raft gauges");

        metrics.participant_up(ParticipantId(1));
        metrics.group(GroupStatus { term: 7, leader: false, commit_index: 40, applied_index: 38 });
        metrics.0.as_mut().unwrap().publisher.last = None;
        metrics.after_following_turn();

        let scrape = scrape();
        assert_eq!(scrape.value("twophase_raft_term", &[("node", "c2")]), Some(7.0));
        assert_eq!(scrape.value("twophase_raft_leader", &[]), Some(0.0));
        assert_eq!(scrape.value("twophase_raft_commit_index", &[]), Some(40.0));
        assert_eq!(scrape.value("twophase_raft_applied_index", &[]), Some(38.0));
        assert_eq!(
            scrape.value("twophase_participant_connected", &[("participant", "p1")]),
            Some(0.0),
            "a follower holds no participant connection"
        );
    }

    /// A reactor with no connections, listening nowhere.
    fn idle_transport() -> Reactor {
        let me = twophase_net::Hello {
            role: twophase_net::Role::Coordinator,
            cluster: "test".into(),
            node: "c1".into(),
            epoch: Default::default(),
        };
        let config = twophase_net::TransportConfig::new(me, twophase_net::Security::InsecurePlaintext);
        Reactor::new(config).unwrap().0
    }

    #[test]
    fn hooks_do_nothing_when_off() {
        let mut metrics = CoordinatorMetrics::off();
        metrics.submitted(Time(0), ClientId(1), 8);
        metrics.participant_down(ParticipantId(1));
        assert!(metrics.log().is_none() && metrics.0.is_none());
    }
}
