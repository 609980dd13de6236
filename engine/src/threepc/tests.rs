use super::*;
use crate::types::{Epoch, Lsn};

const P1: ParticipantId = ParticipantId(1);
const P2: ParticipantId = ParticipantId(2);
const P3: ParticipantId = ParticipantId(3);

fn timeouts() -> Timeouts {
    Timeouts::for_network(2, 1, 2)
}

fn coordinator() -> ThreePcCoordinator {
    ThreePcCoordinator::recover(Epoch(1), timeouts(), 100, Vec::new(), &mut CoordEffects3::default())
}

fn participant(id: ParticipantId) -> ThreePcParticipant {
    ThreePcParticipant::recover(id, timeouts(), 100, 100, Vec::new())
}

fn coord_sends(fx: &CoordEffects3) -> Vec<(Lsn, Peer, Message)> {
    fx.outputs
        .iter()
        .filter_map(|out| match &out.item {
            CoordOutput3::Send(Envelope { to, message }) => Some((out.after, *to, message.clone())),
            _ => None,
        })
        .collect()
}

fn part_sends(fx: &PartEffects3) -> Vec<(Lsn, Peer, Message)> {
    fx.outputs
        .iter()
        .filter_map(|out| match &out.item {
            PartOutput::Send(Envelope { to, message }) => Some((out.after, *to, message.clone())),
            _ => None,
        })
        .collect()
}

/// A participant that voted Yes on `txid` (a three-participant transaction).
fn uncertain(id: ParticipantId, txid: TxId) -> ThreePcParticipant {
    let mut p = participant(id);
    let mut fx = PartEffects3::default();
    let participants = vec![P1, P2, P3];
    p.on_message(Peer::Coordinator, Message::CanCommit { txid, participants, payload: vec![7] }, &mut fx);
    p.prepared(txid, true, &mut fx);
    p
}

#[test]
fn a_yes_vote_waits_for_the_uncertain_record() {
    let mut p = participant(P1);
    let mut fx = PartEffects3::default();
    let txid = TxId::new(Epoch(1), 1);
    p.on_message(Peer::Coordinator, Message::CanCommit { txid, participants: vec![P1, P2], payload: vec![9] }, &mut fx);
    assert_eq!(fx.outputs[0].item, PartOutput::Prepare { txid, payload: vec![9] });
    assert!(fx.appends.is_empty(), "nothing forced before the resource manager answers");
    fx.clear();
    p.prepared(txid, true, &mut fx);
    assert_eq!(fx.appends, vec![(Lsn(1), PartRecord3::Uncertain { txid, participants: vec![P1, P2] })]);
    assert_eq!(part_sends(&fx), vec![(Lsn(1), Peer::Coordinator, Message::Vote { txid, yes: true })]);
}

#[test]
fn a_bad_participant_list_gets_a_warning_and_no() {
    let mut p = participant(P1);
    let mut fx = PartEffects3::default();
    let txid = TxId::new(Epoch(1), 1);
    p.on_message(Peer::Coordinator, Message::CanCommit { txid, participants: vec![P2, P3], payload: vec![] }, &mut fx);
    assert!(matches!(fx.outputs[0].item, PartOutput::Warning(_)));
    assert_eq!(part_sends(&fx), vec![(Lsn::NONE, Peer::Coordinator, Message::Vote { txid, yes: false })]);
}

#[test]
fn the_coordinator_forces_precommit_then_decided_before_sending_them() {
    let mut c = coordinator();
    let mut fx = CoordEffects3::default();
    let txid = c.begin(vec![(P2, vec![2]), (P1, vec![1])], &mut fx).unwrap();
    let sent = coord_sends(&fx);
    assert_eq!(sent.len(), 2);
    assert!(fx.appends.is_empty(), "no record before the votes (presumed abort)");
    fx.clear();
    c.on_message(P1, Message::Vote { txid, yes: true }, &mut fx);
    assert!(fx.is_empty());
    c.on_message(P2, Message::Vote { txid, yes: true }, &mut fx);
    assert_eq!(fx.appends, vec![(Lsn(1), CoordRecord3::PreCommit { txid, participants: vec![P1, P2] })]);
    assert!(
        coord_sends(&fx).iter().all(|(after, _, m)| *after == Lsn(1) && *m == Message::PreCommit { txid, round: 0 })
    );
    fx.clear();
    c.on_message(P1, Message::PreCommitAck { txid, round: 0 }, &mut fx);
    c.on_message(P2, Message::PreCommitAck { txid, round: 0 }, &mut fx);
    assert_eq!(fx.appends, vec![(Lsn(2), CoordRecord3::Decided { txid, commit: true, participants: vec![P1, P2] })]);
    assert!(fx.outputs.iter().all(|out| out.after == Lsn(2)), "nothing about the commit leaves before it is durable");
    assert!(fx.outputs.iter().any(|out| out.item == CoordOutput3::Outcome { txid, committed: true }));
    fx.clear();
    c.on_message(P1, Message::DecisionAck { txid }, &mut fx);
    c.on_message(P2, Message::DecisionAck { txid }, &mut fx);
    assert_eq!(fx.appends, vec![(Lsn(3), CoordRecord3::End { txid })]);
    assert_eq!(c.in_flight(), 0);
}

#[test]
fn missing_votes_abort_unlogged_and_missing_acks_commit() {
    let mut c = coordinator();
    let mut fx = CoordEffects3::default();
    let t1 = c.begin(vec![(P1, vec![]), (P2, vec![])], &mut fx).unwrap();
    c.on_message(P1, Message::Vote { txid: t1, yes: true }, &mut fx);
    fx.clear();
    for _ in 0..timeouts().votes_ticks {
        c.tick(&mut fx);
    }
    assert!(fx.appends.is_empty(), "an abort before PreCommit is presumed");
    assert!(fx.outputs.iter().any(|out| out.item == CoordOutput3::Outcome { txid: t1, committed: false }));
    let t2 = c.begin(vec![(P1, vec![]), (P2, vec![])], &mut fx).unwrap();
    c.on_message(P1, Message::Vote { txid: t2, yes: true }, &mut fx);
    c.on_message(P2, Message::Vote { txid: t2, yes: true }, &mut fx);
    c.on_message(P1, Message::PreCommitAck { txid: t2, round: 0 }, &mut fx);
    fx.clear();
    for _ in 0..timeouts().acks_ticks {
        c.tick(&mut fx);
    }
    assert_eq!(c.decision(t2), Some(true), "the silent participant crashed; it learns on recovery");
    let unknown = TxId::new(Epoch(1), 99);
    fx.clear();
    c.on_message(P1, Message::DecisionReq { txid: unknown }, &mut fx);
    assert_eq!(
        coord_sends(&fx),
        vec![(Lsn::NONE, Peer::Participant(P1), Message::Decision { txid: unknown, commit: false })]
    );
}

#[test]
fn a_restarted_coordinator_asks_rather_than_decides_after_precommit() {
    let txid = TxId::new(Epoch(1), 5);
    let records = vec![(Lsn(1), CoordRecord3::PreCommit { txid, participants: vec![P1, P2] })];
    let mut fx = CoordEffects3::default();
    let mut c = ThreePcCoordinator::recover(Epoch(2), timeouts(), 10, records, &mut fx);
    assert!(coord_sends(&fx).iter().all(|(_, _, m)| *m == Message::DecisionReq { txid }));
    for _ in 0..1000 {
        c.tick(&mut fx);
    }
    assert_eq!(c.decision(txid), None, "never decides alone");
    fx.clear();
    c.on_message(P2, Message::Decision { txid, commit: false }, &mut fx);
    assert_eq!(c.decision(txid), Some(false));
    assert!(matches!(fx.appends[..], [(_, CoordRecord3::Decided { commit: false, .. })]));
}

#[test]
fn the_backup_precommits_the_uncertain_when_one_is_precommitted() {
    let txid = TxId::new(Epoch(1), 1);
    let mut p1 = uncertain(P1, txid);
    let mut fx = PartEffects3::default();
    p1.on_message(Peer::Participant(P3), Message::Elect { txid, round: 1 }, &mut fx);
    let asked: Vec<Peer> = part_sends(&fx).into_iter().map(|(_, to, _)| to).collect();
    assert_eq!(asked, vec![Peer::Participant(P2), Peer::Participant(P3)]);
    fx.clear();
    let report = |state| Message::StateReport { txid, round: 1, state };
    p1.on_message(Peer::Participant(P2), report(ReportedState::PreCommitted), &mut fx);
    p1.on_message(Peer::Participant(P3), report(ReportedState::Uncertain), &mut fx);
    assert!(p1.is_precommitted(txid));
    assert!(matches!(fx.appends[..], [(_, PartRecord3::PreCommitted { .. })]));
    let lsn = fx.appends[0].0;
    assert_eq!(part_sends(&fx), vec![(lsn, Peer::Participant(P3), Message::PreCommit { txid, round: 1 })]);
    fx.clear();
    p1.on_message(Peer::Participant(P3), Message::PreCommitAck { txid, round: 1 }, &mut fx);
    assert_eq!(p1.decision(txid), Some(true));
    assert!(fx.outputs.iter().any(|out| out.item == PartOutput::Apply { txid, commit: true }));
}

#[test]
fn the_backup_aborts_when_all_are_uncertain_and_recovered_ones_do_not_count() {
    let txid = TxId::new(Epoch(1), 1);
    let mut p1 = uncertain(P1, txid);
    let mut fx = PartEffects3::default();
    p1.on_message(Peer::Participant(P2), Message::Elect { txid, round: 1 }, &mut fx);
    let report = |state| Message::StateReport { txid, round: 1, state };
    p1.on_message(Peer::Participant(P2), report(ReportedState::Uncertain), &mut fx);
    p1.on_message(Peer::Participant(P3), report(ReportedState::Recovering), &mut fx);
    assert_eq!(p1.decision(txid), Some(false));
}

#[test]
fn a_recovered_participant_reports_recovering_and_asks_everyone() {
    let txid = TxId::new(Epoch(1), 1);
    let records = vec![
        (Lsn(1), PartRecord3::Uncertain { txid, participants: vec![P1, P2, P3] }),
        (Lsn(2), PartRecord3::PreCommitted { txid }),
    ];
    let mut p2 = ThreePcParticipant::recover(P2, timeouts(), 10, 10, records);
    assert!(p2.is_precommitted(txid));
    let mut fx = PartEffects3::default();
    p2.on_message(Peer::Participant(P1), Message::StateReq { txid, round: 1 }, &mut fx);
    assert_eq!(
        part_sends(&fx),
        vec![(
            Lsn::NONE,
            Peer::Participant(P1),
            Message::StateReport { txid, round: 1, state: ReportedState::Recovering }
        )]
    );
    fx.clear();
    p2.tick(&mut fx);
    let asked: Vec<Peer> = part_sends(&fx).into_iter().map(|(_, to, _)| to).collect();
    assert_eq!(asked, vec![Peer::Participant(P1), Peer::Participant(P3), Peer::Coordinator]);
    fx.clear();
    p2.on_message(Peer::Participant(P3), Message::Decision { txid, commit: true }, &mut fx);
    assert_eq!(p2.decision(txid), Some(true));
}

#[test]
fn an_older_rounds_precommit_is_ignored_and_a_contrary_decision_is_reported() {
    let txid = TxId::new(Epoch(1), 1);
    let mut p3 = uncertain(P3, txid);
    let mut fx = PartEffects3::default();
    p3.on_message(Peer::Participant(P2), Message::StateReq { txid, round: 2 }, &mut fx);
    fx.clear();
    p3.on_message(Peer::Participant(P1), Message::PreCommit { txid, round: 1 }, &mut fx);
    assert!(fx.is_empty() && !p3.is_precommitted(txid), "round 1 is superseded by round 2");
    p3.on_message(Peer::Participant(P2), Message::Decision { txid, commit: false }, &mut fx);
    fx.clear();
    p3.on_message(Peer::Participant(P1), Message::Decision { txid, commit: true }, &mut fx);
    assert_eq!(p3.decision(txid), Some(false));
    assert_eq!(
        fx.outputs[0].item,
        PartOutput::SplitDecision { txid, ours: false, heard: true, from: Peer::Participant(P1) }
    );
}

#[test]
fn an_unvoted_participant_asked_by_a_backup_aborts_for_good() {
    let txid = TxId::new(Epoch(1), 1);
    let mut p2 = participant(P2);
    let mut fx = PartEffects3::default();
    p2.on_message(Peer::Participant(P1), Message::StateReq { txid, round: 1 }, &mut fx);
    assert_eq!(p2.decision(txid), Some(false));
    fx.clear();
    let participants = vec![P1, P2];
    p2.on_message(Peer::Coordinator, Message::CanCommit { txid, participants, payload: vec![] }, &mut fx);
    assert_eq!(part_sends(&fx)[0].2, Message::Vote { txid, yes: false });
}

#[test]
fn begin_refuses_bad_participant_lists_and_oversized_payloads() {
    let mut c = coordinator();
    let mut fx = CoordEffects3::default();
    assert!(matches!(c.begin(vec![], &mut fx), Err(BeginError::Participants(_))));
    assert!(matches!(c.begin(vec![(P1, vec![]), (P1, vec![])], &mut fx), Err(BeginError::Participants(_))));
    let big = vec![0; PAYLOAD_BYTES_MAX + 1];
    assert_eq!(c.begin(vec![(P1, big)], &mut fx), Err(BeginError::Payload(PAYLOAD_BYTES_MAX + 1)));
    assert!(fx.is_empty() && c.in_flight() == 0, "nothing started");
}
