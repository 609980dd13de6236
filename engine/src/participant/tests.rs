use super::*;
use crate::effects::Gated;
use crate::ops::OpKind;
use bytes::Bytes;

const ME: ParticipantId = ParticipantId(1);
const EPOCH: Epoch = Epoch(1);

fn fresh() -> Participant {
    fresh_with(ParticipantConfig::new(ME))
}

fn fresh_with(config: ParticipantConfig) -> Participant {
    let mut fx = PartEffects::default();
    let participant = Participant::recover(config, None, Vec::new(), Time::ZERO, &mut fx);
    assert!(fx.is_empty());
    participant
}

/// A participant where no prepare may wait for a lock: conflicts are refused at once.
fn no_waiting() -> Participant {
    let mut config = ParticipantConfig::new(ME);
    config.max_parked = 0;
    fresh_with(config)
}

fn txid(counter: u64) -> TxId {
    TxId::new(EPOCH, counter)
}

fn key(text: &'static str) -> Key {
    Bytes::from_static(text.as_bytes())
}

fn prepare(counter: u64, ops: Vec<(&'static str, OpKind)>) -> ToParticipant {
    let ops =
        ops.into_iter().enumerate().map(|(i, (k, kind))| LocalOp { index: i as u16, key: key(k), kind }).collect();
    ToParticipant::Prepare { txid: txid(counter), ops, sole: true }
}

fn add(delta: i64) -> OpKind {
    OpKind::Add { delta, floor: 0 }
}

fn vote_of(fx: &PartEffects) -> (Lsn, Vote) {
    match &fx.outputs[..] {
        [Gated { after, item: ToCoordinator::Vote { vote, .. } }] => (*after, vote.clone()),
        other => panic!("expected one vote, got {other:?}"),
    }
}

#[test]
fn prepare_logs_then_votes_yes_and_commit_applies_then_acks() {
    let mut participant = fresh();
    let mut fx = PartEffects::default();
    participant.on_message(Time::ZERO, EPOCH, prepare(1, vec![("a", add(7)), ("a", OpKind::Get)]), &mut fx).unwrap();
    let (after, vote) = vote_of(&fx);
    assert_eq!(vote, Vote::Yes { reads: vec![Read { index: 1, value: Some(encode_int(7)) }] });
    let prepared_lsn = fx.appends.iter().find(|(_, r)| matches!(r, PartRecord::Prepared { .. })).unwrap().0;
    assert_eq!(after, prepared_lsn, "the vote waits for the Prepared record");
    assert_eq!(participant.kv().get(b"a"), None, "nothing applied before the decision");
    fx.clear();
    participant.on_message(Time::ZERO, EPOCH, ToParticipant::Commit { txid: txid(1) }, &mut fx).unwrap();
    assert_eq!(fx.appends.len(), 1);
    let (committed_lsn, record) = &fx.appends[0];
    assert_eq!(record, &PartRecord::Committed { txid: txid(1) });
    assert_eq!(fx.outputs, vec![Gated { after: *committed_lsn, item: ToCoordinator::Ack { txid: txid(1) } }]);
    assert_eq!(decode_int(participant.kv().get(b"a")), Some(7));
    assert_eq!(participant.locked_keys(), 0);
}

#[test]
fn conflicts_constraints_and_read_only_votes() {
    let mut participant = no_waiting();
    let mut fx = PartEffects::default();
    participant.on_message(Time::ZERO, EPOCH, prepare(1, vec![("a", add(5))]), &mut fx).unwrap();
    fx.clear();
    participant.on_message(Time::ZERO, EPOCH, prepare(2, vec![("a", OpKind::Get)]), &mut fx).unwrap();
    assert_eq!(
        vote_of(&fx),
        (Lsn::NONE, Vote::No { reason: AbortReason::Conflict { participant: ME, key: key("a") } })
    );
    fx.clear();
    participant.on_message(Time::ZERO, EPOCH, prepare(3, vec![("b", add(-1))]), &mut fx).unwrap();
    assert!(matches!(vote_of(&fx).1, Vote::No { reason: AbortReason::Constraint { value: 0, delta: -1, .. } }));
    assert!(fx.appends.is_empty(), "a No vote logs nothing");
    fx.clear();
    participant.on_message(Time::ZERO, EPOCH, prepare(4, vec![("b", OpKind::Get)]), &mut fx).unwrap();
    assert_eq!(vote_of(&fx), (Lsn::NONE, Vote::ReadOnly { reads: vec![Read { index: 0, value: None }] }));
    assert_eq!(participant.locked_keys(), 1, "only the prepared transaction holds a lock");
}

#[test]
fn duplicated_and_stale_prepares_never_run_twice() {
    let mut participant = fresh();
    let mut fx = PartEffects::default();
    participant.on_message(Time::ZERO, EPOCH, prepare(5, vec![("a", add(1))]), &mut fx).unwrap();
    let first = vote_of(&fx);
    fx.clear();
    participant.on_message(Time::ZERO, EPOCH, prepare(5, vec![("a", add(1))]), &mut fx).unwrap();
    assert_eq!(vote_of(&fx), first, "a duplicate repeats the vote");
    assert!(fx.appends.is_empty());
    participant.on_message(Time::ZERO, EPOCH, ToParticipant::Commit { txid: txid(5) }, &mut fx).unwrap();
    fx.clear();
    participant.on_message(Time::ZERO, EPOCH, prepare(5, vec![("a", add(1))]), &mut fx).unwrap();
    assert_eq!(vote_of(&fx).1, Vote::No { reason: AbortReason::Stale { participant: ME } });
    fx.clear();
    participant.on_message(Time::ZERO, EPOCH, prepare(4, vec![("z", add(1))]), &mut fx).unwrap();
    assert_eq!(vote_of(&fx).1, Vote::No { reason: AbortReason::Stale { participant: ME } }, "older than one seen");
    assert_eq!(decode_int(participant.kv().get(b"a")), Some(1));
}

#[test]
fn a_deposed_epoch_is_refused_and_a_new_one_is_logged() {
    let mut participant = fresh();
    let mut fx = PartEffects::default();
    participant
        .on_message(Time::ZERO, Epoch(3), ToParticipant::Abort { txid: TxId::new(Epoch(3), 1) }, &mut fx)
        .unwrap();
    assert_eq!(fx.appends[0].1, PartRecord::Epoch { epoch: Epoch(3) });
    fx.clear();
    let ToParticipant::Prepare { ops, .. } = prepare(9, vec![("a", add(1))]) else { unreachable!() };
    let deposed = ToParticipant::Prepare { txid: TxId::new(Epoch(2), 9), ops, sole: true };
    participant.on_message(Time::ZERO, Epoch(2), deposed, &mut fx).unwrap();
    assert_eq!(vote_of(&fx).1, Vote::No { reason: AbortReason::Stale { participant: ME } });
    assert_eq!(participant.locked_keys(), 0);
}

#[test]
fn a_commit_for_an_unknown_transaction_is_acked_once_the_log_is_durable() {
    let mut participant = fresh();
    let mut fx = PartEffects::default();
    participant.on_message(Time::ZERO, EPOCH, prepare(1, vec![("a", add(1))]), &mut fx).unwrap();
    participant.on_message(Time::ZERO, EPOCH, ToParticipant::Commit { txid: txid(1) }, &mut fx).unwrap();
    let last = fx.appends.last().unwrap().0;
    fx.clear();
    participant.on_message(Time::ZERO, EPOCH, ToParticipant::Commit { txid: txid(1) }, &mut fx).unwrap();
    assert_eq!(fx.outputs, vec![Gated { after: last, item: ToCoordinator::Ack { txid: txid(1) } }]);
    assert_eq!(decode_int(participant.kv().get(b"a")), Some(1), "applied once");
}

#[test]
fn after_a_restart_prepared_work_is_in_doubt_locked_and_asked_about() {
    let writes = vec![Write { key: key("a"), value: Some(encode_int(3)) }];
    let log = vec![
        (Lsn(1), PartRecord::Prepared { txid: txid(1), writes: writes.clone().into(), read_keys: vec![] }),
        (Lsn(2), PartRecord::Committed { txid: txid(1) }),
        (
            Lsn(3),
            PartRecord::Prepared {
                txid: txid(2),
                writes: vec![Write { key: key("b"), value: None }].into(),
                read_keys: vec![],
            },
        ),
        (
            Lsn(4),
            PartRecord::Prepared {
                txid: txid(3),
                writes: vec![Write { key: key("c"), value: None }].into(),
                read_keys: vec![],
            },
        ),
        (Lsn(5), PartRecord::Aborted { txid: txid(3) }),
    ];
    let mut fx = PartEffects::default();
    let mut participant = Participant::recover(ParticipantConfig::new(ME), None, log, Time::ZERO, &mut fx);
    assert_eq!(decode_int(participant.kv().get(b"a")), Some(3));
    assert_eq!(participant.in_doubt(), 1);
    assert_eq!(fx.outputs, vec![Gated { after: Lsn::NONE, item: ToCoordinator::Inquiry { txid: txid(2) } }]);
    fx.clear();
    participant.on_message(Time::ZERO, EPOCH, prepare(9, vec![("b", OpKind::Get)]), &mut fx).unwrap();
    assert_eq!(vote_of(&fx).1, Vote::No { reason: AbortReason::InDoubt { participant: ME, key: key("b") } });
    fx.clear();
    // It keeps asking, with backoff, until answered.
    let first_retry = participant.next_deadline().unwrap();
    participant.on_tick(first_retry, &mut fx);
    assert_eq!(fx.outputs.len(), 1);
    fx.clear();
    participant.on_message(first_retry, EPOCH, ToParticipant::Abort { txid: txid(2) }, &mut fx).unwrap();
    assert_eq!(fx.appends[0].1, PartRecord::Aborted { txid: txid(2) });
    assert_eq!((participant.prepared(), participant.locked_keys()), (0, 0));
    assert_eq!(participant.next_deadline().map(|_| ()), Some(()), "a stale timer may remain");
    fx.clear();
    participant.on_tick(Time(u64::MAX), &mut fx);
    assert!(fx.is_empty(), "stale timers do nothing");
}

#[test]
fn a_participant_whose_coordinator_is_silent_keeps_its_locks_asks_with_backoff_and_answers_in_doubt() {
    let mut participant = no_waiting();
    let mut fx = PartEffects::default();
    participant.on_message(Time::ZERO, EPOCH, prepare(1, vec![("a", add(5))]), &mut fx).unwrap();
    fx.clear();
    // Before its first unanswered question the holder is just a lock holder.
    participant.on_message(Time::ZERO, EPOCH, prepare(2, vec![("a", OpKind::Get)]), &mut fx).unwrap();
    assert_eq!(vote_of(&fx).1, Vote::No { reason: AbortReason::Conflict { participant: ME, key: key("a") } });
    fx.clear();

    // Nobody answers: it asks again and again, backing off from 1 s to at most 5 s.
    let mut asked_at = Vec::new();
    while asked_at.len() < 6 {
        let now = participant.next_deadline().expect("an inquiry is always scheduled");
        participant.on_tick(now, &mut fx);
        for output in fx.outputs.drain(..) {
            assert_eq!(output, Gated { after: Lsn::NONE, item: ToCoordinator::Inquiry { txid: txid(1) } });
            asked_at.push(now);
        }
    }
    let seconds: Vec<u64> = asked_at.iter().map(|at| at.as_nanos() / 1_000_000_000).collect();
    assert_eq!(seconds, vec![1, 2, 4, 8, 13, 18]);
    assert_eq!((participant.prepared(), participant.in_doubt(), participant.locked_keys()), (1, 1, 1));
    assert!(fx.appends.is_empty(), "asking logs nothing and decides nothing");

    // Reads and writes of the key are refused as in doubt, never served stale.
    let now = *asked_at.last().unwrap();
    for (counter, op) in [(3, OpKind::Get), (4, add(1))] {
        participant.on_message(now, EPOCH, prepare(counter, vec![("a", op)]), &mut fx).unwrap();
        let reason = AbortReason::InDoubt { participant: ME, key: key("a") };
        assert_eq!(vote_of(&fx).1, Vote::No { reason: reason.clone() });
        assert!(reason.is_retryable());
        fx.clear();
    }

    // The coordinator is back (restarted: a new epoch): it is asked at once, not in 5 s.
    participant.on_coordinator_connected(now, Epoch(2), &mut fx);
    assert_eq!(fx.outputs, vec![Gated { after: Lsn::NONE, item: ToCoordinator::Inquiry { txid: txid(1) } }]);
    fx.clear();
    participant.on_message(now, Epoch(2), ToParticipant::Commit { txid: txid(1) }, &mut fx).unwrap();
    assert_eq!(decode_int(participant.kv().get(b"a")), Some(5));
    assert_eq!((participant.prepared(), participant.locked_keys()), (0, 0));
    fx.clear();
    let next = ToParticipant::Prepare {
        txid: TxId::new(Epoch(2), 1),
        ops: vec![LocalOp { index: 0, key: key("a"), kind: add(1) }],
        sole: true,
    };
    participant.on_message(now, Epoch(2), next, &mut fx).unwrap();
    assert!(matches!(vote_of(&fx).1, Vote::Yes { .. }), "the key is usable again");
}

#[test]
fn a_restarted_coordinator_is_asked_at_once_about_older_epochs_only() {
    let mut participant = fresh();
    let mut fx = PartEffects::default();
    participant.on_message(Time::ZERO, EPOCH, prepare(1, vec![("a", add(5))]), &mut fx).unwrap();
    fx.clear();
    // The same coordinator reconnecting has nothing in doubt to be asked about yet.
    participant.on_coordinator_connected(Time::ZERO, EPOCH, &mut fx);
    assert!(fx.is_empty(), "{fx:?}");
    // A new epoch means the old coordinator restarted before deciding: ask now.
    participant.on_coordinator_connected(Time::ZERO, Epoch(2), &mut fx);
    assert_eq!(fx.outputs, vec![Gated { after: Lsn::NONE, item: ToCoordinator::Inquiry { txid: txid(1) } }]);
    assert_eq!(participant.in_doubt(), 1);
}

#[test]
fn a_query_from_a_restarted_coordinator_is_answered_once_its_epoch_is_durable_and_fences_the_old_one() {
    let mut participant = fresh();
    let mut fx = PartEffects::default();
    participant.on_message(Time::ZERO, EPOCH, prepare(1, vec![("a", add(5))]), &mut fx).unwrap();
    fx.clear();
    let answers = |participant: &mut Participant, counter, fx: &mut PartEffects| {
        participant.on_message(Time::ZERO, Epoch(2), ToParticipant::Query { txid: txid(counter) }, fx).unwrap();
        let vote = fx.outputs.iter().find_map(|g| match &g.item {
            ToCoordinator::Vote { txid: asked, vote } if *asked == txid(counter) => Some((g.after, vote.clone())),
            _ => None,
        });
        vote.expect("an answer")
    };
    // Prepared here: Yes, gated on the record of the new epoch (logged in the same step).
    let (after, vote) = answers(&mut participant, 1, &mut fx);
    let epoch_lsn = fx.appends.iter().find(|(_, r)| *r == PartRecord::Epoch { epoch: Epoch(2) }).expect("logged").0;
    assert_eq!(after, epoch_lsn);
    assert!(matches!(vote, Vote::Yes { .. }), "{vote:?}");
    fx.clear();
    // Never prepared here (its prepare is still on the way): No ...
    let (_, vote) = answers(&mut participant, 2, &mut fx);
    assert_eq!(vote, Vote::No { reason: AbortReason::Stale { participant: ME } });
    fx.clear();
    // ... and the old epoch's prepare, arriving late, is refused rather than run.
    participant.on_message(Time::ZERO, EPOCH, prepare(2, vec![("b", add(1))]), &mut fx).unwrap();
    assert!(matches!(vote_of(&fx).1, Vote::No { reason: AbortReason::Stale { .. } }));
    assert_eq!(participant.prepared(), 1, "only the one prepared before");
}

#[test]
fn a_prepare_behind_an_older_prepared_holder_waits_for_its_decision_instead_of_aborting() {
    let mut participant = fresh();
    let mut fx = PartEffects::default();
    participant.on_message(Time::ZERO, EPOCH, prepare(1, vec![("a", add(5))]), &mut fx).unwrap();
    fx.clear();
    // The client heard t1 committed and sent t2 on the same key; t2 overtook t1's Commit.
    participant.on_message(Time::ZERO, EPOCH, prepare(2, vec![("a", add(1))]), &mut fx).unwrap();
    assert!(fx.outputs.is_empty(), "no vote while it waits: {fx:?}");
    assert_eq!(participant.parked(), 1);
    participant.on_message(Time::ZERO, EPOCH, ToParticipant::Commit { txid: txid(1) }, &mut fx).unwrap();
    let vote = fx.outputs.iter().find_map(|g| match &g.item {
        ToCoordinator::Vote { txid: voted, vote } if *voted == txid(2) => Some(vote.clone()),
        _ => None,
    });
    assert!(matches!(vote, Some(Vote::Yes { .. })), "t2 runs once t1 is decided: {vote:?}");
    assert_eq!((participant.parked(), participant.prepared()), (0, 1));
    assert_eq!(participant.stats().waited, 1);
    // Its abort (say the coordinator's prepare timeout) while waiting just forgets it.
    fx.clear();
    participant.on_message(Time::ZERO, EPOCH, prepare(3, vec![("a", add(1))]), &mut fx).unwrap();
    assert_eq!(participant.parked(), 1);
    participant.on_message(Time::ZERO, EPOCH, ToParticipant::Abort { txid: txid(3) }, &mut fx).unwrap();
    assert_eq!(participant.parked(), 0);
    participant.on_message(Time::ZERO, EPOCH, ToParticipant::Commit { txid: txid(2) }, &mut fx).unwrap();
    assert_eq!(decode_int(participant.kv().get(b"a")), Some(6));
    assert!(fx.outputs.iter().all(|g| g.item.txid() != txid(3)), "the aborted waiter never votes");
}

#[test]
fn frames_whose_epoch_or_txids_do_not_fit_are_refused_without_a_trace() {
    let mut participant = fresh();
    let mut fx = PartEffects::default();
    participant.on_message(Time::ZERO, EPOCH, prepare(1, vec![("a", add(1))]), &mut fx).unwrap();
    let seen = participant.snapshot();
    fx.clear();
    let forged = [
        // A prepare whose txid is of another epoch than its frame.
        (Epoch(2), prepare(2, vec![("a", add(1))])),
        // A txid of a later epoch than the frame's.
        (EPOCH, ToParticipant::Commit { txid: TxId::new(Epoch(5), 1) }),
        // An epoch absurdly far ahead: it would fence out the real coordinator.
        (Epoch::MAX, ToParticipant::Prepare { txid: TxId::new(Epoch::MAX, 1), ops: vec![], sole: true }),
        (Epoch(EPOCH_AHEAD_MAX + 2), ToParticipant::Abort { txid: txid(1) }),
        // A txid counter absurdly far ahead of the highest seen.
        (EPOCH, ToParticipant::Prepare { txid: TxId::new(EPOCH, TxId::COUNTER_MAX), ops: vec![], sole: true }),
    ];
    for (epoch, message) in forged {
        assert!(participant.check_frame(epoch, std::slice::from_ref(&message)).is_err(), "{message:?}");
        let refused = participant.on_message(Time::ZERO, epoch, message, &mut fx).unwrap_err();
        assert!(!refused.0.is_empty());
        assert!(fx.is_empty(), "nothing logged or sent for a refused message");
    }
    let after = participant.snapshot();
    assert_eq!((after.max_epoch, after.max_txid_seen, after.lsn), (seen.max_epoch, seen.max_txid_seen, seen.lsn));
    // The real coordinator goes on: its next prepare, and a later epoch within the bound.
    participant.on_message(Time::ZERO, EPOCH, prepare(2, vec![("b", add(1))]), &mut fx).unwrap();
    assert!(matches!(vote_of(&fx).1, Vote::Yes { .. }));
    fx.clear();
    let next = Epoch(EPOCH.0 + 1);
    let commit_of_older = ToParticipant::Commit { txid: txid(1) };
    assert!(participant.check_frame(next, &[commit_of_older]).is_ok(), "a new epoch finishes older transactions");
    let prepare = ToParticipant::Prepare { txid: TxId::new(next, 1), ops: vec![], sole: true };
    assert!(participant.check_frame(next, &[prepare]).is_ok());
}
