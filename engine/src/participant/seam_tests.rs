//! The resource-manager seam with a resource manager that prepares asynchronously (as a
//! PostgreSQL backend running `PREPARE TRANSACTION` on its own pool would).

use super::*;
use crate::effects::Gated;
use crate::ops::OpKind;
use bytes::Bytes;
use std::sync::Arc;

const ME: ParticipantId = ParticipantId(1);
const EPOCH: Epoch = Epoch(1);

/// The built-in store, but every one-shot prepare is answered later by the test; with
/// `DURABLE` its prepares count as durable in the resource (`PREPARE_DURABLE`).
#[derive(Debug)]
struct Deferred<const DURABLE: bool = false> {
    inner: KvResource,
    done: Vec<(TxId, PrepareResult<KvPrepared>)>,
}

impl<const DURABLE: bool> ResourceManager for Deferred<DURABLE> {
    type Prepared = KvPrepared;
    const PREPARE_DURABLE: bool = DURABLE;

    fn prepare(&mut self, txid: TxId, ops: Vec<LocalOp>, sole: bool) -> Prepare<KvPrepared> {
        match self.inner.prepare(txid, ops, sole) {
            Prepare::Done(result) => {
                self.done.push((txid, result));
                Prepare::Pending
            }
            other => other,
        }
    }
    fn execute(&mut self, txid: TxId, isolation: Isolation, ops: Vec<LocalOp>) -> Execution {
        self.inner.execute(txid, isolation, ops)
    }
    fn prepare_open(&mut self, txid: TxId, sole: bool) -> Option<PrepareResult<KvPrepared>> {
        self.inner.prepare_open(txid, sole)
    }
    fn rollback(&mut self, txid: TxId) {
        self.inner.rollback(txid)
    }
    fn pop_event(&mut self) -> Option<RmEvent> {
        self.inner.pop_event()
    }
    fn writes(prepared: &KvPrepared) -> Arc<[Write]> {
        KvResource::writes(prepared)
    }
    fn read_keys(prepared: &KvPrepared) -> Vec<Key> {
        KvResource::read_keys(prepared)
    }
    fn commit(&mut self, txid: TxId, prepared: KvPrepared) {
        self.inner.commit(txid, prepared)
    }
    fn abort(&mut self, txid: TxId, prepared: KvPrepared) {
        self.inner.abort(txid, prepared)
    }
    fn recovered(&mut self, txid: TxId, writes: Arc<[Write]>, read_keys: Vec<Key>) -> KvPrepared {
        self.inner.recovered(txid, writes, read_keys)
    }
    fn relock(&mut self, txid: TxId, prepared: &mut KvPrepared) {
        self.inner.relock(txid, prepared)
    }
    fn image(&self) -> KvImage {
        self.inner.image()
    }
    fn restore(&mut self, image: &KvImage) {
        self.inner.restore(image)
    }
    fn release_locks(&mut self, txid: TxId, prepared: &mut KvPrepared) {
        self.inner.release_locks(txid, prepared)
    }
    fn release_read_locks(&mut self, txid: TxId, prepared: &mut KvPrepared) {
        self.inner.release_read_locks(txid, prepared)
    }
}

fn deferred<const DURABLE: bool>() -> Participant<Deferred<DURABLE>> {
    let config = ParticipantConfig::new(ME);
    let rm = Deferred { inner: KvResource::new(ME, 0, KvLimits::default()), done: Vec::new() };
    let mut fx = PartEffects::default();
    Participant::recover_with(rm, config, None, Vec::new(), Time::ZERO, &mut fx)
}

fn prepared_logged(fx: &PartEffects) -> Option<Lsn> {
    fx.appends.iter().find(|(_, record)| matches!(record, PartRecord::Prepared { .. })).map(|(lsn, _)| *lsn)
}

fn prepare(counter: u64, value: i64) -> ToParticipant {
    let ops = vec![LocalOp { index: 0, key: Bytes::from_static(b"a"), kind: OpKind::Put(encode_int(value)) }];
    ToParticipant::Prepare { txid: TxId::new(EPOCH, counter), ops, sole: true }
}

#[test]
fn an_asynchronous_prepare_logs_and_votes_when_it_completes() {
    let mut p = deferred::<false>();
    let mut fx = PartEffects::default();
    p.on_message(Time::ZERO, EPOCH, prepare(1, 5), &mut fx).unwrap();
    p.on_message(Time::ZERO, EPOCH, prepare(1, 5), &mut fx).unwrap();
    assert!(fx.outputs.is_empty(), "no vote while it runs, a duplicate is silent: {fx:?}");
    assert_eq!(prepared_logged(&fx), None);
    let (txid, result) = p.rm.done.pop().expect("under way");
    p.on_prepare_done(Time::ZERO, txid, result, &mut fx);
    let lsn = prepared_logged(&fx).expect("logged once done");
    assert_eq!(
        fx.outputs,
        vec![Gated { after: lsn, item: ToCoordinator::Vote { txid, vote: Vote::Yes { reads: vec![] } } }]
    );
    fx.clear();
    p.on_message(Time::ZERO, EPOCH, ToParticipant::Commit { txid }, &mut fx).unwrap();
    assert_eq!(decode_int(p.resource_manager().inner.kv().get(b"a")), Some(5));
}

#[test]
fn an_asynchronous_prepare_aborted_while_it_runs_is_rolled_back_when_it_completes() {
    let mut p = deferred::<false>();
    let mut fx = PartEffects::default();
    p.on_message(Time::ZERO, EPOCH, prepare(1, 5), &mut fx).unwrap();
    let txid = TxId::new(EPOCH, 1);
    p.on_message(Time::ZERO, EPOCH, ToParticipant::Abort { txid }, &mut fx).unwrap();
    fx.clear();
    let (_, result) = p.rm.done.pop().expect("under way");
    assert_eq!(p.resource_manager().inner.locked_keys(), 1);
    p.on_prepare_done(Time::ZERO, txid, result, &mut fx);
    assert!(fx.is_empty(), "no vote, no record: {fx:?}");
    assert_eq!((p.prepared(), p.resource_manager().inner.locked_keys()), (0, 0));
}

#[test]
fn a_prepare_durable_in_the_resource_votes_after_the_epoch_record_not_its_own() {
    let mut p = deferred::<true>();
    let mut fx = PartEffects::default();
    p.on_message(Time::ZERO, EPOCH, prepare(1, 5), &mut fx).unwrap();
    let epoch_lsn = fx
        .appends
        .iter()
        .find(|(_, record)| matches!(record, PartRecord::Epoch { epoch: EPOCH }))
        .map(|(lsn, _)| *lsn)
        .expect("the new epoch is logged");
    let (txid, result) = p.rm.done.pop().expect("under way");
    p.on_prepare_done(Time::ZERO, txid, result, &mut fx);
    let prepared_lsn = prepared_logged(&fx).expect("still logged, for recovery");
    assert!(prepared_lsn > epoch_lsn);
    let yes = ToCoordinator::Vote { txid, vote: Vote::Yes { reads: vec![] } };
    assert_eq!(fx.outputs, vec![Gated { after: epoch_lsn, item: yes.clone() }]);

    // The next prepare of the same epoch logs no epoch: its Yes waits for the same record.
    p.on_message(Time::ZERO, EPOCH, ToParticipant::Commit { txid }, &mut fx).unwrap();
    fx.clear();
    p.on_message(Time::ZERO, EPOCH, prepare(2, 6), &mut fx).unwrap();
    let (txid, result) = p.rm.done.pop().expect("under way");
    p.on_prepare_done(Time::ZERO, txid, result, &mut fx);
    assert!(prepared_logged(&fx).is_some());
    let yes = ToCoordinator::Vote { txid, vote: Vote::Yes { reads: vec![] } };
    assert_eq!(fx.outputs, vec![Gated { after: epoch_lsn, item: yes }]);
}
