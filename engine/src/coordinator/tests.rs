use super::*;
use crate::effects::Gated;
use crate::ops::OpKind;
use bytes::Bytes;

const P1: ParticipantId = ParticipantId(1);
const P2: ParticipantId = ParticipantId(2);
const C: ClientId = ClientId(42);
const IDENTITY: &str = "tester";
const ORIGIN: ClientOrigin<'static> = ClientOrigin { conn: 7, identity: IDENTITY };

/// The `Register` record that opened session `C`.
fn register_c() -> CoordRecord {
    CoordRecord::Register { client: C, identity: IDENTITY.into(), expired: None }
}

fn config() -> CoordinatorConfig {
    let mut config = CoordinatorConfig::new(vec![P1, P2]);
    config.prepare_timeout = Duration::from_millis(10);
    config.redrive_initial = Duration::from_millis(5);
    config.redrive_max = Duration::from_millis(20);
    config
}

fn fresh() -> (Coordinator, CoordEffects) {
    let mut fx = CoordEffects::default();
    let mut coordinator = Coordinator::recover(config(), Vec::new(), Time::ZERO, &mut fx);
    coordinator.adopt_session(C, IDENTITY);
    (coordinator, fx)
}

fn transfer(seq: Seq) -> Submit {
    let op = |participant, key: &'static str, delta| Op {
        participant,
        key: Bytes::from_static(key.as_bytes()),
        kind: OpKind::Add { delta, floor: 0 },
    };
    Submit { client: C, seq, ops: vec![op(P1, "a", -5), op(P2, "b", 5)] }
}

fn prepared_txid(fx: &CoordEffects) -> TxId {
    fx.outputs
        .iter()
        .find_map(|g| match &g.item {
            CoordOutput::ToParticipant(_, ToParticipant::Prepare { txid, .. }) => Some(*txid),
            _ => None,
        })
        .expect("a prepare was sent")
}

fn yes() -> Vote {
    Vote::Yes { reads: vec![] }
}

#[test]
fn a_fresh_coordinator_logs_its_epoch_and_gates_prepares_on_it() {
    let (mut coordinator, mut fx) = fresh();
    assert_eq!(fx.appends, vec![(Lsn(1), CoordRecord::Epoch { epoch: Epoch(1) })]);
    fx.clear();
    coordinator.on_submit(Time::ZERO, ORIGIN, transfer(1), &mut fx);
    assert_eq!(fx.outputs.len(), 2);
    assert!(fx.outputs.iter().all(|g| g.after == Lsn(1)), "prepares wait for the epoch record");
    assert_eq!(prepared_txid(&fx).epoch(), Epoch(1));
}

/// The LSN of the `Staged` record `fx` holds.
fn staged_lsn(fx: &CoordEffects) -> Lsn {
    fx.appends.iter().find(|(_, r)| matches!(r, CoordRecord::Staged { .. })).expect("a staged record").0
}

fn reply_gates(fx: &CoordEffects) -> Vec<Lsn> {
    fx.outputs.iter().filter(|g| matches!(g.item, CoordOutput::ToClient(_))).map(|g| g.after).collect()
}

#[test]
fn a_transaction_is_staged_alongside_its_prepares() {
    let (mut coordinator, mut fx) = fresh();
    fx.clear();
    coordinator.on_submit(Time::ZERO, ORIGIN, transfer(1), &mut fx);
    let txid = prepared_txid(&fx);
    assert_eq!(
        fx.appends,
        vec![(Lsn(2), CoordRecord::Staged { txid, client: C, seq: 1, participants: vec![P1, P2], gets: vec![] })]
    );
    assert!(fx.outputs.iter().all(|g| g.after == Lsn(1)), "prepares wait for the epoch only, not for staging");
}

#[test]
fn every_participant_of_a_writing_transaction_is_staged_and_reads_alone_stage_nothing() {
    let (mut coordinator, mut fx) = fresh();
    fx.clear();
    let mut mixed = transfer(1);
    mixed.ops[0].kind = OpKind::Get;
    coordinator.on_submit(Time::ZERO, ORIGIN, mixed, &mut fx);
    let txid = prepared_txid(&fx);
    let gets = vec![GetAt { index: 0, participant: P1 }];
    // P1 only reads, but it holds its read locks prepared until the decision: its vote is
    // part of the commit, so a restart must ask it too.
    assert_eq!(
        fx.appends,
        vec![(Lsn(2), CoordRecord::Staged { txid, client: C, seq: 1, participants: vec![P1, P2], gets })]
    );
    fx.clear();
    coordinator.on_submit(Time::ZERO, ORIGIN, reads(2), &mut fx);
    assert!(fx.appends.is_empty(), "a read-only request logs nothing");
}

fn reads(seq: Seq) -> Submit {
    let mut submit = transfer(seq);
    for op in &mut submit.ops {
        op.kind = OpKind::Get;
    }
    submit
}

#[test]
fn all_yes_commits_once_staged_then_ends_after_every_ack() {
    let (mut coordinator, mut fx) = fresh();
    coordinator.on_submit(Time::ZERO, ORIGIN, transfer(1), &mut fx);
    let txid = prepared_txid(&fx);
    let staged = staged_lsn(&fx);
    fx.clear();
    coordinator.on_message(Time::ZERO, P1, ToCoordinator::Vote { txid, vote: yes() }, &mut fx);
    assert!(fx.is_empty(), "one vote decides nothing");
    coordinator.on_message(Time::ZERO, P2, ToCoordinator::Vote { txid, vote: yes() }, &mut fx);
    let (lsn, record) = &fx.appends[0];
    assert!(matches!(record, CoordRecord::Commit { participants, .. } if participants == &vec![P1, P2]));
    assert_eq!(fx.outputs.len(), 3, "reply and two commits");
    assert_eq!(reply_gates(&fx), vec![staged], "the client hears it once the staged record is durable");
    let commits = fx.outputs.iter().filter(|g| matches!(g.item, CoordOutput::ToParticipant(..)));
    assert!(commits.map(|g| g.after).all(|after| after == *lsn), "no Commit before the commit record is durable");
    fx.clear();
    coordinator.on_message(Time::ZERO, P1, ToCoordinator::Ack { txid }, &mut fx);
    assert!(fx.appends.is_empty());
    coordinator.on_message(Time::ZERO, P2, ToCoordinator::Ack { txid }, &mut fx);
    assert_eq!(fx.appends[0].1, CoordRecord::End { txid });
    assert_eq!(coordinator.unfinished(), 0);
}

#[test]
fn a_no_vote_tells_the_others_at_once_and_the_client_once_the_abort_is_logged() {
    let (mut coordinator, mut fx) = fresh();
    coordinator.on_submit(Time::ZERO, ORIGIN, transfer(1), &mut fx);
    let txid = prepared_txid(&fx);
    fx.clear();
    let reason = AbortReason::Conflict { participant: P1, key: Bytes::from_static(b"a") };
    coordinator.on_message(
        Time::ZERO,
        P1,
        ToCoordinator::Vote { txid, vote: Vote::No { reason: reason.clone() } },
        &mut fx,
    );
    let [(abort_lsn, CoordRecord::Abort { txid: logged })] = fx.appends[..] else { panic!("{:?}", fx.appends) };
    assert_eq!(logged, txid);
    let items: Vec<_> = fx.outputs.iter().map(|g| (g.after, g.item.clone())).collect();
    assert!(items.contains(&(Lsn::NONE, CoordOutput::ToParticipant(P2, ToParticipant::Abort { txid }))));
    assert!(items.contains(&(
        abort_lsn,
        CoordOutput::ToClient(Reply::Outcome { client: C, seq: 1, outcome: Outcome::Aborted { reason } })
    )));
    assert_eq!(coordinator.unfinished(), 0);
}

#[test]
fn read_only_everywhere_commits_without_a_record() {
    let (mut coordinator, mut fx) = fresh();
    coordinator.on_submit(Time::ZERO, ORIGIN, reads(1), &mut fx);
    let txid = prepared_txid(&fx);
    fx.clear();
    let read = |index| Vote::ReadOnly { reads: vec![Read { index, value: None }] };
    coordinator.on_message(Time::ZERO, P2, ToCoordinator::Vote { txid, vote: read(1) }, &mut fx);
    coordinator.on_message(Time::ZERO, P1, ToCoordinator::Vote { txid, vote: read(0) }, &mut fx);
    assert!(fx.appends.is_empty());
    let reads = vec![Read { index: 0, value: None }, Read { index: 1, value: None }];
    assert_eq!(
        fx.outputs,
        vec![Gated {
            after: Lsn::NONE,
            item: CoordOutput::ToClient(Reply::Outcome { client: C, seq: 1, outcome: Outcome::Committed { reads } })
        }]
    );
}

#[test]
fn a_silent_participant_times_out_the_prepare() {
    let (mut coordinator, mut fx) = fresh();
    coordinator.on_submit(Time::ZERO, ORIGIN, transfer(1), &mut fx);
    let txid = prepared_txid(&fx);
    coordinator.on_message(Time::ZERO, P1, ToCoordinator::Vote { txid, vote: yes() }, &mut fx);
    fx.clear();
    coordinator.on_tick(Time(1), &mut fx);
    assert!(fx.is_empty(), "not yet");
    let deadline = coordinator.next_deadline().unwrap();
    coordinator.on_tick(deadline, &mut fx);
    let timeout = Outcome::Aborted { reason: AbortReason::Timeout { participant: P2 } };
    assert!(
        fx.outputs
            .iter()
            .any(|g| g.item == CoordOutput::ToClient(Reply::Outcome { client: C, seq: 1, outcome: timeout.clone() }))
    );
    assert!(fx.outputs.iter().any(|g| g.item == CoordOutput::ToParticipant(P1, ToParticipant::Abort { txid })));
}

#[test]
fn retries_attach_to_the_running_request_and_then_get_its_outcome() {
    let (mut coordinator, mut fx) = fresh();
    coordinator.on_submit(Time::ZERO, ORIGIN, transfer(1), &mut fx);
    let txid = prepared_txid(&fx);
    fx.clear();
    coordinator.on_submit(Time::ZERO, ORIGIN, transfer(1), &mut fx);
    assert!(fx.is_empty(), "a retry of a running request starts nothing");
    coordinator.on_message(Time::ZERO, P1, ToCoordinator::Vote { txid, vote: yes() }, &mut fx);
    coordinator.on_message(Time::ZERO, P2, ToCoordinator::Vote { txid, vote: yes() }, &mut fx);
    let [staged] = reply_gates(&fx)[..] else { panic!("one reply") };
    fx.clear();
    coordinator.on_submit(Time::ZERO, ORIGIN, transfer(1), &mut fx);
    assert_eq!(
        fx.outputs,
        vec![Gated {
            after: staged,
            item: CoordOutput::ToClient(Reply::Outcome {
                client: C,
                seq: 1,
                outcome: Outcome::Committed { reads: vec![] }
            })
        }]
    );
}

#[test]
fn bad_requests_abort_with_a_reason_and_overload_gets_busy() {
    let (mut coordinator, mut fx) = fresh();
    let unknown = Submit {
        client: C,
        seq: 1,
        ops: vec![Op { participant: ParticipantId(9), key: Bytes::from_static(b"k"), kind: OpKind::Get }],
    };
    coordinator.on_submit(Time::ZERO, ORIGIN, unknown, &mut fx);
    coordinator.on_submit(Time::ZERO, ORIGIN, Submit { client: C, seq: 2, ops: vec![] }, &mut fx);
    let outcomes: Vec<String> = fx
        .outputs
        .iter()
        .map(|g| match &g.item {
            CoordOutput::ToClient(Reply::Outcome { outcome: Outcome::Aborted { reason }, .. }) => reason.to_string(),
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert!(outcomes[0].starts_with("unknown participant: p9"), "{outcomes:?}");
    assert!(outcomes[1].contains("at least one operation"), "{outcomes:?}");

    let mut config = config();
    config.max_preparing = 1;
    let mut fx = CoordEffects::default();
    let mut coordinator = Coordinator::recover(config, Vec::new(), Time::ZERO, &mut fx);
    coordinator.adopt_session(C, IDENTITY);
    coordinator.on_submit(Time::ZERO, ORIGIN, transfer(1), &mut fx);
    fx.clear();
    coordinator.on_submit(Time::ZERO, ORIGIN, transfer(2), &mut fx);
    assert_eq!(
        fx.outputs[0].item,
        CoordOutput::ToClient(Reply::Rejected { client: C, seq: 2, reason: RejectReason::Busy })
    );
}

#[test]
fn restart_redrives_unfinished_commits_and_remembers_outcomes() {
    let txid = TxId::new(Epoch(1), 1);
    let commit =
        CoordRecord::Commit { txid, client: C, seq: 1, participants: vec![P1, P2], reads: vec![], reads_lost: false };
    let ended = TxId::new(Epoch(1), 2);
    let log = vec![
        (Lsn(1), CoordRecord::Epoch { epoch: Epoch(1) }),
        (Lsn(2), register_c()),
        (Lsn(3), commit),
        (
            Lsn(4),
            CoordRecord::Commit {
                txid: ended,
                client: C,
                seq: 2,
                participants: vec![P1],
                reads: vec![],
                reads_lost: false,
            },
        ),
        (Lsn(5), CoordRecord::End { txid: ended }),
    ];
    let mut fx = CoordEffects::default();
    let mut coordinator = Coordinator::recover(config(), log, Time::ZERO, &mut fx);
    assert_eq!(coordinator.epoch(), Epoch(2));
    assert_eq!(fx.appends, vec![(Lsn(6), CoordRecord::Epoch { epoch: Epoch(2) })]);
    let redriven: Vec<_> = fx.outputs.iter().map(|g| (g.after, g.item.clone())).collect();
    assert_eq!(
        redriven,
        vec![
            (Lsn(3), CoordOutput::ToParticipant(P1, ToParticipant::Commit { txid })),
            (Lsn(3), CoordOutput::ToParticipant(P2, ToParticipant::Commit { txid })),
        ]
    );
    fx.clear();
    // A retry after the restart gets the logged outcome, not a second execution.
    coordinator.on_submit(Time::ZERO, ORIGIN, transfer(2), &mut fx);
    assert!(
        matches!(&fx.outputs[0].item, CoordOutput::ToClient(Reply::Outcome { seq: 2, outcome, .. }) if outcome.is_committed())
    );
    fx.clear();
    // In doubt about something never committed: abort. About the unfinished commit: commit.
    let unknown = TxId::new(Epoch(1), 3);
    coordinator.on_message(Time::ZERO, P1, ToCoordinator::Inquiry { txid: unknown }, &mut fx);
    coordinator.on_message(Time::ZERO, P1, ToCoordinator::Inquiry { txid }, &mut fx);
    let answers: Vec<_> = fx.outputs.iter().map(|g| g.item.clone()).collect();
    assert_eq!(
        answers,
        vec![
            CoordOutput::ToParticipant(P1, ToParticipant::Abort { txid: unknown }),
            CoordOutput::ToParticipant(P1, ToParticipant::Commit { txid }),
        ]
    );
}

#[test]
fn unacknowledged_commits_are_resent_with_backoff() {
    let (mut coordinator, mut fx) = fresh();
    coordinator.on_submit(Time::ZERO, ORIGIN, transfer(1), &mut fx);
    let txid = prepared_txid(&fx);
    coordinator.on_message(Time::ZERO, P1, ToCoordinator::Vote { txid, vote: yes() }, &mut fx);
    coordinator.on_message(Time::ZERO, P2, ToCoordinator::Vote { txid, vote: yes() }, &mut fx);
    coordinator.on_message(Time::ZERO, P1, ToCoordinator::Ack { txid }, &mut fx);
    let mut resends = Vec::new();
    for _ in 0..4 {
        fx.clear();
        let at = coordinator.next_deadline().unwrap();
        coordinator.on_tick(at, &mut fx);
        let sent: Vec<_> = fx.outputs.iter().map(|g| g.item.clone()).collect();
        if !sent.is_empty() {
            assert_eq!(
                sent,
                vec![CoordOutput::ToParticipant(P2, ToParticipant::Commit { txid })],
                "only the silent one"
            );
            resends.push(at);
        }
    }
    let gaps: Vec<u64> = resends.windows(2).map(|w| w[1].0 - w[0].0).collect();
    assert!(gaps.windows(2).all(|w| w[1] >= w[0]), "backoff grows: {gaps:?}");
    assert!(gaps.iter().all(|g| *g <= Duration::from_millis(20).as_nanos() as u64), "capped: {gaps:?}");
}

/// Commits `seq` all the way (both Yes, durable); acks from `acked` only.
fn commit_one(coordinator: &mut Coordinator, seq: Seq, acked: &[ParticipantId]) -> TxId {
    commit_one_into(coordinator, seq, acked, &mut CoordEffects::default())
}

fn commit_one_into(coordinator: &mut Coordinator, seq: Seq, acked: &[ParticipantId], fx: &mut CoordEffects) -> TxId {
    coordinator.on_submit(Time::ZERO, ORIGIN, transfer(seq), fx);
    let txid = prepared_txid(fx);
    for participant in [P1, P2] {
        coordinator.on_message(Time::ZERO, participant, ToCoordinator::Vote { txid, vote: yes() }, fx);
    }
    for &participant in acked {
        coordinator.on_message(Time::ZERO, participant, ToCoordinator::Ack { txid }, fx);
    }
    txid
}

#[test]
fn a_checkpoint_plus_the_log_after_it_recovers_what_the_whole_log_does() {
    let (mut coordinator, _) = fresh();
    let unacked = commit_one(&mut coordinator, 1, &[P1]);
    commit_one(&mut coordinator, 2, &[P1, P2]);
    let mut step = CoordEffects::default();
    coordinator.on_submit(Time::ZERO, ORIGIN, transfer(3), &mut step); // Still preparing: staged, undecided.
    let preparing = prepared_txid(&step);
    let checkpoint = coordinator.snapshot();
    assert_eq!(checkpoint.lsn, coordinator.last_lsn());
    let kept: Vec<&CoordRecord> = checkpoint.unfinished.iter().map(|(_, record)| record).collect();
    assert_eq!(
        kept,
        vec![
            &CoordRecord::Commit {
                txid: unacked,
                client: C,
                seq: 1,
                participants: vec![P1, P2],
                reads: vec![],
                reads_lost: false
            },
            &CoordRecord::Staged { txid: preparing, client: C, seq: 3, participants: vec![P1, P2], gets: vec![] },
        ],
        "the commit still waiting for an ack and the undecided staged transaction"
    );
    let mut step = CoordEffects::default();
    let after = commit_one_into(&mut coordinator, 4, &[], &mut step);
    assert_eq!(coordinator.last_lsn(), Lsn(checkpoint.lsn.0 + 2), "Staged and Commit after the checkpoint");
    let log_after = step.appends.clone();
    let mut fx = CoordEffects::default();
    let mut recovered = Coordinator::recover_from(config(), Some(checkpoint.clone()), log_after, Time::ZERO, &mut fx);
    assert_eq!(recovered.epoch(), Epoch(2), "a new epoch after the checkpoint's");
    assert_eq!(recovered.unfinished(), 3, "the checkpoint's unacked commit and staged one, and the commit after");
    assert!(
        fx.outputs.iter().any(|g| g.item == CoordOutput::ToParticipant(P1, ToParticipant::Query { txid: preparing })),
        "the staged transaction is resolved"
    );
    let redriven: Vec<TxId> = fx
        .outputs
        .iter()
        .filter_map(|g| match g.item {
            CoordOutput::ToParticipant(_, ToParticipant::Commit { txid }) => Some(txid),
            _ => None,
        })
        .collect();
    assert!(redriven.contains(&unacked) && redriven.contains(&after), "{redriven:?}");
    // Retries of committed requests get their outcome instead of a second execution.
    for seq in [1, 2, 4] {
        let mut fx = CoordEffects::default();
        recovered.on_submit(Time::ZERO, ORIGIN, transfer(seq), &mut fx);
        assert!(
            matches!(&fx.outputs[..], [Gated { item: CoordOutput::ToClient(Reply::Outcome { outcome, .. }), .. }] if outcome.is_committed()),
            "seq {seq}: {:?}",
            fx.outputs
        );
    }
    // Records the checkpoint covers may still be in the log: they are skipped.
    let mut fx = CoordEffects::default();
    let stale = vec![(Lsn(2), CoordRecord::End { txid: unacked })];
    let recovered = Coordinator::recover_from(config(), Some(checkpoint), stale, Time::ZERO, &mut fx);
    assert_eq!(recovered.unfinished(), 2, "a covered End record does not finish a commit the checkpoint holds");
}

#[test]
fn losing_a_participant_aborts_what_waits_for_its_vote_at_once_and_refuses_new_work_until_back() {
    let (mut coordinator, _) = fresh();
    let mut fx = CoordEffects::default();
    coordinator.on_submit(Time::ZERO, ORIGIN, transfer(1), &mut fx);
    let txid = prepared_txid(&fx);
    coordinator.on_message(Time::ZERO, P1, ToCoordinator::Vote { txid, vote: yes() }, &mut fx);
    fx.clear();
    coordinator.participant_unreachable(P2, &mut fx);
    let unavailable = AbortReason::Unavailable { participant: P2 };
    let outputs: Vec<_> = fx.outputs.iter().map(|g| (g.after, g.item.clone())).collect();
    let abort_lsn = fx.appends[0].0;
    assert_eq!(fx.appends, vec![(abort_lsn, CoordRecord::Abort { txid })]);
    assert_eq!(
        outputs,
        vec![
            (Lsn::NONE, CoordOutput::ToParticipant(P1, ToParticipant::Abort { txid })),
            (Lsn::NONE, CoordOutput::ToParticipant(P2, ToParticipant::Abort { txid })),
            (
                abort_lsn,
                CoordOutput::ToClient(Reply::Outcome {
                    client: C,
                    seq: 1,
                    outcome: Outcome::Aborted { reason: unavailable.clone() }
                })
            ),
        ],
        "P1 may have prepared and P2's vote may be lost: a restart must find the abort"
    );
    fx.clear();
    coordinator.on_submit(Time::ZERO, ORIGIN, transfer(2), &mut fx);
    assert!(
        matches!(&fx.outputs[..], [Gated { item: CoordOutput::ToClient(Reply::Outcome { outcome: Outcome::Aborted { reason }, .. }), .. }] if *reason == unavailable),
        "{:?}",
        fx.outputs
    );
    fx.clear();
    coordinator.participant_reachable(P2);
    coordinator.on_submit(Time::ZERO, ORIGIN, transfer(3), &mut fx);
    assert_eq!(fx.outputs.len(), 2, "prepares to both participants again");
}

fn staged(txid: TxId, seq: Seq) -> CoordRecord {
    CoordRecord::Staged { txid, client: C, seq, participants: vec![P1, P2], gets: vec![] }
}

fn queries(fx: &CoordEffects) -> Vec<(ParticipantId, TxId)> {
    fx.outputs
        .iter()
        .filter_map(|g| match g.item {
            CoordOutput::ToParticipant(to, ToParticipant::Query { txid }) => Some((to, txid)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_restart_resolves_staged_transactions_from_their_participants() {
    let t = |counter| TxId::new(Epoch(1), counter);
    let log = vec![
        (Lsn(1), CoordRecord::Epoch { epoch: Epoch(1) }),
        (Lsn(2), register_c()),
        (Lsn(3), staged(t(1), 1)),
        (Lsn(4), staged(t(2), 2)),
        (Lsn(5), staged(t(3), 3)),
        (Lsn(6), CoordRecord::Abort { txid: t(3) }),
    ];
    let mut fx = CoordEffects::default();
    let mut coordinator = Coordinator::recover(config(), log, Time::ZERO, &mut fx);
    let epoch_lsn = Lsn(7);
    assert_eq!(queries(&fx), vec![(P1, t(1)), (P2, t(1)), (P1, t(2)), (P2, t(2))], "not the aborted one");
    assert!(fx.outputs.iter().all(|g| g.after == epoch_lsn), "asked once the new epoch is durable");
    fx.clear();
    coordinator.on_submit(Time::ZERO, ORIGIN, transfer(1), &mut fx);
    assert!(fx.is_empty(), "a retry waits for the resolution instead of running again");

    // All prepared: commit (the client may have heard so already).
    coordinator.on_message(Time::ZERO, P1, ToCoordinator::Vote { txid: t(1), vote: yes() }, &mut fx);
    coordinator.on_message(Time::ZERO, P2, ToCoordinator::Vote { txid: t(1), vote: yes() }, &mut fx);
    assert!(matches!(fx.appends[..], [(_, CoordRecord::Commit { txid, .. })] if txid == t(1)));
    assert!(fx.outputs.iter().any(|g| g.item == CoordOutput::ToParticipant(P2, ToParticipant::Commit { txid: t(1) })));
    assert!(fx.outputs.iter().any(
        |g| matches!(&g.item, CoordOutput::ToClient(Reply::Outcome { seq: 1, outcome, .. }) if outcome.is_committed())
    ));
    fx.clear();

    // One not prepared: no client can have heard Committed; abort, logged before the client hears.
    coordinator.on_message(Time::ZERO, P1, ToCoordinator::Vote { txid: t(2), vote: yes() }, &mut fx);
    let stale = AbortReason::Stale { participant: P2 };
    coordinator.on_message(
        Time::ZERO,
        P2,
        ToCoordinator::Vote { txid: t(2), vote: Vote::No { reason: stale } },
        &mut fx,
    );
    let [(abort_lsn, CoordRecord::Abort { txid })] = fx.appends[..] else { panic!("{:?}", fx.appends) };
    assert_eq!(txid, t(2));
    assert!(fx.outputs.iter().any(|g| g.item == CoordOutput::ToParticipant(P1, ToParticipant::Abort { txid: t(2) })));
    assert_eq!(reply_gates(&fx), vec![abort_lsn]);
    assert_eq!(coordinator.unfinished(), 1, "the commit awaiting its acks");
}

#[test]
fn a_resolution_never_times_out_into_an_abort_and_asks_again_whoever_is_silent() {
    let txid = TxId::new(Epoch(1), 1);
    let log = vec![(Lsn(1), CoordRecord::Epoch { epoch: Epoch(1) }), (Lsn(2), register_c()), (Lsn(3), staged(txid, 1))];
    let mut fx = CoordEffects::default();
    let mut coordinator = Coordinator::recover(config(), log, Time::ZERO, &mut fx);
    coordinator.on_message(Time::ZERO, P1, ToCoordinator::Vote { txid, vote: yes() }, &mut fx);
    let mut now = Time::ZERO;
    for _ in 0..6 {
        fx.clear();
        now = coordinator.next_deadline().expect("a query is pending");
        coordinator.on_tick(now, &mut fx);
        assert!(fx.appends.is_empty(), "no decision without every answer");
        assert!(queries(&fx).iter().all(|&(to, _)| to == P2), "only the silent one: {:?}", fx.outputs);
    }
    assert!(now >= Time::ZERO + config().prepare_timeout, "past any prepare timeout");
    fx.clear();
    // A participant that asks about it is asked back at once.
    coordinator.on_message(now, P2, ToCoordinator::Inquiry { txid }, &mut fx);
    assert_eq!(queries(&fx), vec![(P2, txid)]);
    assert_eq!(coordinator.unfinished(), 1);
}

/// What went to the connection a request came in on.
fn to_conn(fx: &CoordEffects) -> Vec<(Lsn, u64, Reply)> {
    fx.outputs
        .iter()
        .filter_map(|g| match &g.item {
            CoordOutput::ToConnection { conn, reply } => Some((g.after, *conn, reply.clone())),
            _ => None,
        })
        .collect()
}

/// Registers a session for `identity` and returns its id (checking the answer's gate).
fn register(coordinator: &mut Coordinator, identity: &str, fx: &mut CoordEffects) -> ClientId {
    fx.clear();
    let origin = ClientOrigin { conn: 3, identity };
    coordinator.on_submit(Time::ZERO, origin, Submit::register(77), fx);
    let [(lsn, CoordRecord::Register { client, identity: logged, .. })] = &fx.appends[..] else {
        panic!("one Register record: {:?}", fx.appends)
    };
    assert_eq!(logged, identity);
    assert_eq!(to_conn(fx), vec![(*lsn, 3, Reply::Registered { nonce: 77, client: *client })], "once durable");
    *client
}

fn submit_on(client: ClientId, seq: Seq) -> Submit {
    Submit { client, ..transfer(seq) }
}

#[test]
fn sessions_are_registered_durably_and_belong_to_their_identity() {
    let (mut coordinator, mut fx) = fresh();
    let mine = register(&mut coordinator, "alice", &mut fx);
    let other = register(&mut coordinator, "alice", &mut fx);
    assert!(mine != other && mine != ClientId::NONE, "ids are never reused");
    fx.clear();
    let mallory = ClientOrigin { conn: 9, identity: "mallory" };
    coordinator.on_submit(Time::ZERO, mallory, submit_on(mine, 1), &mut fx);
    assert_eq!(
        to_conn(&fx),
        vec![(Lsn::NONE, 9, Reply::Rejected { client: mine, seq: 1, reason: RejectReason::NotSessionOwner })],
        "another identity may not spend the session's seqs"
    );
    assert!(fx.appends.is_empty());
    fx.clear();
    let unknown = ClientId(mine.0 + 1000);
    coordinator.on_submit(Time::ZERO, ClientOrigin { conn: 4, identity: "alice" }, submit_on(unknown, 1), &mut fx);
    assert_eq!(
        to_conn(&fx),
        vec![(
            coordinator.last_lsn(),
            4,
            Reply::Rejected { client: unknown, seq: 1, reason: RejectReason::SessionExpired }
        )]
    );
    assert!(coordinator.session_owner_is(mine, "alice") && !coordinator.session_owner_is(mine, "mallory"));
}

#[test]
fn an_identity_past_its_bound_expires_its_oldest_idle_session_and_a_retry_there_never_runs_again() {
    let mut config = config();
    config.sessions.sessions_per_identity_max = 3;
    config.sessions.sessions_max = 8;
    let mut fx = CoordEffects::default();
    let mut coordinator = Coordinator::recover(config.clone(), Vec::new(), Time::ZERO, &mut fx);
    let mut log = fx.appends.clone();
    let early = register(&mut coordinator, "bob", &mut fx);
    log.extend(fx.appends.clone());
    fx.clear();
    let origin = ClientOrigin { conn: 3, identity: "bob" };
    coordinator.on_submit(Time::ZERO, origin, submit_on(early, 1), &mut fx);
    let txid = prepared_txid(&fx);
    coordinator.on_message(Time::ZERO, P1, ToCoordinator::Vote { txid, vote: yes() }, &mut fx);
    coordinator.on_message(Time::ZERO, P2, ToCoordinator::Vote { txid, vote: yes() }, &mut fx);
    log.extend(fx.appends.clone());
    // Far more sessions than the identity may hold.
    let mut expired = Vec::new();
    for _ in 0..20 {
        register(&mut coordinator, "bob", &mut fx);
        if let [(_, CoordRecord::Register { expired: Some(gone), .. })] = &fx.appends[..] {
            expired.push(*gone);
        }
        log.extend(fx.appends.clone());
    }
    assert_eq!(expired[0], early, "the least recently used idle session goes first");
    assert_eq!(coordinator.sessions().sessions_of("bob"), 3);
    fx.clear();
    coordinator.on_submit(Time::ZERO, origin, submit_on(early, 1), &mut fx);
    assert!(fx.appends.is_empty(), "nothing runs again");
    assert_eq!(to_conn(&fx)[0].2, Reply::Rejected { client: early, seq: 1, reason: RejectReason::SessionExpired });
    // A replay expires exactly the same sessions.
    let mut fx = CoordEffects::default();
    let mut replayed = Coordinator::recover(config, log, Time::ZERO, &mut fx);
    assert_eq!(replayed.sessions().export(), coordinator.sessions().export());
    fx.clear();
    replayed.on_submit(Time::ZERO, origin, submit_on(early, 1), &mut fx);
    assert!(fx.outputs.iter().all(|g| !matches!(g.item, CoordOutput::ToParticipant(..))), "{:?}", fx.outputs);
}

#[test]
fn a_full_table_refuses_registration_with_a_reason() {
    let mut config = config();
    config.sessions.sessions_max = 1;
    let mut fx = CoordEffects::default();
    let mut coordinator = Coordinator::recover(config, Vec::new(), Time::ZERO, &mut fx);
    register(&mut coordinator, "a", &mut fx);
    fx.clear();
    coordinator.on_submit(Time::ZERO, ClientOrigin { conn: 5, identity: "b" }, Submit::register(1), &mut fx);
    assert!(fx.appends.is_empty(), "a refusal records nothing");
    assert_eq!(
        to_conn(&fx),
        vec![(Lsn::NONE, 5, Reply::RegisterRefused { nonce: 1, reason: crate::message::RegisterRefusal::TableFull })]
    );
}

fn reply_outcome(fx: &CoordEffects) -> Outcome {
    fx.outputs
        .iter()
        .find_map(|g| match &g.item {
            CoordOutput::ToClient(Reply::Outcome { outcome, .. }) => Some(outcome.clone()),
            _ => None,
        })
        .expect("an outcome")
}

/// A transfer that also reads `c` on P1 (op 2).
fn transfer_and_read(seq: Seq) -> Submit {
    let mut submit = transfer(seq);
    submit.ops.push(Op { participant: P1, key: Bytes::from_static(b"c"), kind: OpKind::Get });
    submit
}

fn value(text: &'static str) -> Option<Bytes> {
    Some(Bytes::from_static(text.as_bytes()))
}

#[test]
fn votes_whose_reads_do_not_match_the_transaction_count_as_no() {
    let bad_reads: Vec<Vec<Read>> = vec![
        vec![],                                                                  // one missing
        vec![Read { index: 0, value: None }],                                    // op 0 is an Add
        vec![Read { index: 2, value: None }, Read { index: 2, value: None }],    // twice
        vec![Read { index: 2, value: Some(Bytes::from(vec![0u8; 33 * 1024])) }], // too big
        vec![Read { index: 9, value: None }],                                    // out of range
    ];
    for reads in bad_reads {
        let (mut coordinator, mut fx) = fresh();
        coordinator.on_submit(Time::ZERO, ORIGIN, transfer_and_read(1), &mut fx);
        let txid = prepared_txid(&fx);
        fx.clear();
        coordinator.on_message(Time::ZERO, P1, ToCoordinator::Vote { txid, vote: Vote::Yes { reads } }, &mut fx);
        let Outcome::Aborted { reason: AbortReason::BadVote { participant, detail } } = reply_outcome(&fx) else {
            panic!("{:?}", fx.outputs)
        };
        assert_eq!(participant, P1, "{detail}");
        assert!(fx.outputs.iter().any(|g| matches!(&g.item, CoordOutput::Warning(w) if w.contains(&detail))));
        assert!(fx.appends.iter().any(|(_, r)| matches!(r, CoordRecord::Abort { .. })));
        assert_eq!(coordinator.stats().bad_votes, 1);
    }
    // The matching vote commits with its read.
    let (mut coordinator, mut fx) = fresh();
    coordinator.on_submit(Time::ZERO, ORIGIN, transfer_and_read(1), &mut fx);
    let txid = prepared_txid(&fx);
    let read = Read { index: 2, value: value("v") };
    coordinator.on_message(
        Time::ZERO,
        P1,
        ToCoordinator::Vote { txid, vote: Vote::Yes { reads: vec![read.clone()] } },
        &mut fx,
    );
    coordinator.on_message(Time::ZERO, P2, ToCoordinator::Vote { txid, vote: yes() }, &mut fx);
    assert_eq!(reply_outcome(&fx), Outcome::Committed { reads: vec![read] });
}

#[test]
fn reads_too_large_for_a_reply_abort_the_transaction() {
    let mut config = config();
    config.max_outcome_bytes = 16;
    let mut fx = CoordEffects::default();
    let mut coordinator = Coordinator::recover(config, Vec::new(), Time::ZERO, &mut fx);
    coordinator.adopt_session(C, IDENTITY);
    coordinator.on_submit(Time::ZERO, ORIGIN, transfer_and_read(1), &mut fx);
    let txid = prepared_txid(&fx);
    let reads = vec![Read { index: 2, value: value("a value of more than sixteen bytes") }];
    coordinator.on_message(Time::ZERO, P1, ToCoordinator::Vote { txid, vote: Vote::Yes { reads } }, &mut fx);
    coordinator.on_message(Time::ZERO, P2, ToCoordinator::Vote { txid, vote: yes() }, &mut fx);
    assert!(
        matches!(reply_outcome(&fx), Outcome::Aborted { reason: AbortReason::Invalid { detail } } if detail.contains("reply"))
    );
}

/// A log holding one staged transfer of `C` with `gets`, undecided.
fn staged_log(gets: Vec<GetAt>) -> (TxId, Vec<(Lsn, CoordRecord)>) {
    let txid = TxId::new(Epoch(1), 1);
    let staged = CoordRecord::Staged { txid, client: C, seq: 1, participants: vec![P1, P2], gets };
    (txid, vec![(Lsn(1), CoordRecord::Epoch { epoch: Epoch(1) }), (Lsn(2), register_c()), (Lsn(3), staged)])
}

fn resolve_with(gets: Vec<GetAt>, p1_reads: Vec<Read>) -> (Outcome, CoordRecord) {
    let (txid, log) = staged_log(gets);
    let mut fx = CoordEffects::default();
    let mut coordinator = Coordinator::recover(config(), log, Time::ZERO, &mut fx);
    fx.clear();
    coordinator.on_message(Time::ZERO, P1, ToCoordinator::Vote { txid, vote: Vote::Yes { reads: p1_reads } }, &mut fx);
    coordinator.on_message(Time::ZERO, P2, ToCoordinator::Vote { txid, vote: yes() }, &mut fx);
    let commit = fx.appends.iter().find(|(_, r)| matches!(r, CoordRecord::Commit { .. })).expect("committed").1.clone();
    let outcome = reply_outcome(&fx);
    // A retry hears the same, also after another restart.
    fx.clear();
    coordinator.on_submit(Time::ZERO, ORIGIN, transfer(1), &mut fx);
    assert_eq!(reply_outcome(&fx), outcome);
    (outcome, commit)
}

#[test]
fn a_restart_resolving_a_staged_transaction_brings_back_its_reads_or_says_they_are_lost() {
    let get = GetAt { index: 2, participant: P1 };
    let read = Read { index: 2, value: value("v") };
    // The prepared participant still holds the read: the client gets it.
    let (outcome, _) = resolve_with(vec![get], vec![read.clone()]);
    assert_eq!(outcome, Outcome::Committed { reads: vec![read] });
    // It restarted too and lost it: committed, explicitly without reads.
    let (outcome, commit) = resolve_with(vec![get], vec![]);
    assert_eq!(outcome, Outcome::CommittedReadsUnavailable);
    assert!(matches!(commit, CoordRecord::Commit { reads_lost: true, .. }));
    // The Get was at a read-only participant, which holds nothing: lost as well.
    let (outcome, _) = resolve_with(vec![GetAt { index: 2, participant: ParticipantId(3) }], vec![]);
    assert_eq!(outcome, Outcome::CommittedReadsUnavailable);
    // Without Gets there is nothing to lose.
    let (outcome, _) = resolve_with(vec![], vec![]);
    assert_eq!(outcome, Outcome::Committed { reads: vec![] });
}

#[test]
fn a_commit_logged_without_its_reads_is_answered_so_after_a_restart() {
    let txid = TxId::new(Epoch(1), 1);
    let commit =
        CoordRecord::Commit { txid, client: C, seq: 1, participants: vec![P1], reads: vec![], reads_lost: true };
    let log = vec![(Lsn(1), CoordRecord::Epoch { epoch: Epoch(1) }), (Lsn(2), register_c()), (Lsn(3), commit)];
    let mut fx = CoordEffects::default();
    let mut coordinator = Coordinator::recover(config(), log, Time::ZERO, &mut fx);
    fx.clear();
    coordinator.on_submit(Time::ZERO, ORIGIN, transfer(1), &mut fx);
    assert_eq!(reply_outcome(&fx), Outcome::CommittedReadsUnavailable);
    let checkpoint = coordinator.snapshot();
    let mut restored = Coordinator::recover_from(config(), Some(checkpoint), Vec::new(), Time::ZERO, &mut fx);
    fx.clear();
    restored.on_submit(Time::ZERO, ORIGIN, transfer(1), &mut fx);
    assert_eq!(reply_outcome(&fx), Outcome::CommittedReadsUnavailable);
}
