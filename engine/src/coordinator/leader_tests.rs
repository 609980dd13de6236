//! A replicated group's leader: its epoch derives from its Raft term.

use super::*;

const P1: ParticipantId = ParticipantId(1);

fn leader(log: Vec<(Lsn, CoordRecord)>, epoch_floor: Epoch) -> (Coordinator, CoordEffects) {
    let mut fx = CoordEffects::default();
    let config = CoordinatorConfig::new(vec![P1]);
    let coordinator = Coordinator::recover_as_leader(config, None, log, epoch_floor, Time::ZERO, &mut fx);
    (coordinator, fx)
}

#[test]
fn a_leader_takes_its_term_as_epoch_when_the_log_names_only_smaller_ones() {
    let log = vec![(Lsn(1), CoordRecord::Epoch { epoch: Epoch(3) })];
    let (coordinator, fx) = leader(log, Epoch(9));
    assert_eq!(coordinator.epoch(), Epoch(9));
    assert_eq!(fx.appends, vec![(Lsn(2), CoordRecord::Epoch { epoch: Epoch(9) })]);
}

#[test]
fn a_leader_stays_above_every_committed_epoch_even_within_one_term() {
    // Rebuilt twice in term 9 (its engine was dropped once): the second epoch is still new.
    let log = vec![(Lsn(1), CoordRecord::Epoch { epoch: Epoch(9) })];
    let (coordinator, _) = leader(log, Epoch(9));
    assert_eq!(coordinator.epoch(), Epoch(10));
}
