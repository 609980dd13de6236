//! A replicated coordinator's state machine: the coordinator records every committed Raft
//! entry carried, numbered in commit order, from which a new leader builds its engine.
//!
//! An entry is one batch of records from one leader's engine: `first LSN (u64) | count
//! (u32) | count × (kind u8 | length u32 | payload)`, little-endian. A leader builds its engine
//! only once it has applied everything committed before its term, so its engine numbers its
//! records right after the applied ones, and every committed batch starts exactly where the
//! applied records end (asserted).
//!
//! Memory stays bounded: past `fold_every_records` records (and for every Raft snapshot) the
//! records are folded into a [`CoordinatorSnapshot`], the same checkpoint a single
//! coordinator writes to disk.

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use twophase_engine::coordinator::{CoordEffects, Coordinator, CoordinatorConfig, CoordinatorSnapshot};
use twophase_engine::{CoordRecord, Epoch, LogRecord, Lsn, Time};

const BATCH_HEADER_BYTES: usize = 8 + 4;
const RECORD_HEADER_BYTES: usize = 1 + 4;

/// Builds one batch of records from a leader's engine, splitting it where a batch would
/// exceed `bytes_max` (each part proposed on its own, in order).
pub struct BatchEncoder {
    bytes_max: usize,
    current: Vec<u8>,
    count: u32,
    done: Vec<Vec<u8>>,
}

impl BatchEncoder {
    pub fn new(bytes_max: usize) -> BatchEncoder {
        assert!(bytes_max > BATCH_HEADER_BYTES + RECORD_HEADER_BYTES, "batch limit too small");
        BatchEncoder { bytes_max, current: Vec::new(), count: 0, done: Vec::new() }
    }

    /// Adds the record the engine numbered `lsn` (records come in LSN order). A record
    /// alone larger than a batch cannot be replicated: an error.
    pub fn push(&mut self, lsn: Lsn, record: &CoordRecord, payload: &mut Vec<u8>) -> anyhow::Result<()> {
        payload.clear();
        record.encode_payload(payload);
        let needed = RECORD_HEADER_BYTES + payload.len();
        ensure!(
            BATCH_HEADER_BYTES + needed <= self.bytes_max,
            "a {} byte record exceeds the {} byte batch limit",
            payload.len(),
            self.bytes_max
        );
        if self.count > 0 && self.current.len() + needed > self.bytes_max {
            self.finish_current();
        }
        if self.count == 0 {
            self.current.clear();
            self.current.extend_from_slice(&lsn.0.to_le_bytes());
            self.current.extend_from_slice(&0u32.to_le_bytes());
        }
        self.current.push(record.kind());
        self.current.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        self.current.extend_from_slice(payload);
        self.count += 1;
        Ok(())
    }

    fn finish_current(&mut self) {
        self.current[8..12].copy_from_slice(&self.count.to_le_bytes());
        self.done.push(std::mem::take(&mut self.current));
        self.count = 0;
    }

    /// The batches, in order; the encoder is empty again.
    pub fn take(&mut self) -> Vec<Vec<u8>> {
        if self.count > 0 {
            self.finish_current();
        }
        std::mem::take(&mut self.done)
    }
}

/// Decodes a batch: its first LSN and its records. A committed batch that does not decode
/// is corruption of the replicated log.
pub fn decode_batch(data: &[u8]) -> anyhow::Result<(Lsn, Vec<CoordRecord>)> {
    ensure!(data.len() >= BATCH_HEADER_BYTES, "batch of {} bytes is shorter than its header", data.len());
    let first = Lsn(u64::from_le_bytes(data[0..8].try_into().expect("8 bytes")));
    let count = u32::from_le_bytes(data[8..12].try_into().expect("4 bytes")) as usize;
    let mut rest = &data[BATCH_HEADER_BYTES..];
    ensure!(count <= rest.len() / RECORD_HEADER_BYTES, "batch claims {count} records in {} bytes", rest.len());
    let mut records = Vec::with_capacity(count);
    for index in 0..count {
        ensure!(rest.len() >= RECORD_HEADER_BYTES, "record {index} of the batch is cut short");
        let kind = rest[0];
        let len = u32::from_le_bytes(rest[1..5].try_into().expect("4 bytes")) as usize;
        rest = &rest[RECORD_HEADER_BYTES..];
        ensure!(len <= rest.len(), "record {index} claims {len} bytes, {} remain", rest.len());
        let payload = Bytes::copy_from_slice(&rest[..len]);
        rest = &rest[len..];
        let record = CoordRecord::decode(kind, payload).with_context(|| format!("record {index} of the batch"))?;
        records.push(record);
    }
    ensure!(rest.is_empty(), "{} bytes after the batch's records", rest.len());
    Ok((first, records))
}

/// Everything the committed entries applied so far say, as a restarted coordinator would
/// read it from its log: a checkpoint and the records after it.
pub struct AppliedState {
    config: CoordinatorConfig,
    checkpoint: Option<CoordinatorSnapshot>,
    records: Vec<(Lsn, CoordRecord)>,
    last_lsn: Lsn,
    max_epoch: Epoch,
    fold_every_records: usize,
}

impl AppliedState {
    pub fn new(config: CoordinatorConfig, fold_every_records: usize) -> AppliedState {
        assert!(fold_every_records > 0, "fold_every_records must be non-zero");
        AppliedState {
            config,
            checkpoint: None,
            records: Vec::new(),
            last_lsn: Lsn::NONE,
            max_epoch: Epoch(0),
            fold_every_records,
        }
    }

    /// The last record applied.
    pub fn last_lsn(&self) -> Lsn {
        self.last_lsn
    }

    /// Applies one committed batch; returns the LSN of its last record.
    pub fn apply(&mut self, data: &[u8]) -> anyhow::Result<Lsn> {
        let (first, records) = decode_batch(data)?;
        assert_eq!(first, self.last_lsn.next(), "a committed batch does not start where the applied records end");
        for record in records {
            self.last_lsn = self.last_lsn.next();
            if let CoordRecord::Epoch { epoch } = record {
                self.max_epoch = self.max_epoch.max(epoch);
            }
            self.records.push((self.last_lsn, record));
        }
        if self.records.len() >= self.fold_every_records {
            self.fold();
        }
        Ok(self.last_lsn)
    }

    /// Folds the records into the checkpoint: what a coordinator recovered from them would
    /// checkpoint, minus the epoch that recovery starts (nobody leads with it).
    fn fold(&mut self) {
        if self.records.is_empty() {
            return;
        }
        let mut scratch = CoordEffects::default();
        let engine = Coordinator::recover_from(
            self.config.clone(),
            self.checkpoint.take(),
            self.records.drain(..),
            Time::ZERO,
            &mut scratch,
        );
        let mut checkpoint = engine.snapshot();
        checkpoint.lsn = self.last_lsn;
        checkpoint.max_epoch = self.max_epoch;
        self.checkpoint = Some(checkpoint);
    }

    /// The state as bytes, for a Raft snapshot at the last applied entry.
    pub fn snapshot(&mut self) -> Vec<u8> {
        self.fold();
        self.checkpoint.as_ref().map(CoordinatorSnapshot::encode).unwrap_or_default()
    }

    /// Replaces the state with a Raft snapshot's (empty: nothing applied yet).
    pub fn restore(&mut self, data: &Bytes) -> anyhow::Result<()> {
        self.records.clear();
        if data.is_empty() {
            self.checkpoint = None;
            self.last_lsn = Lsn::NONE;
            self.max_epoch = Epoch(0);
            return Ok(());
        }
        let checkpoint = CoordinatorSnapshot::decode(data.clone()).context("a Raft snapshot does not decode")?;
        if checkpoint.lsn == Lsn::NONE && !checkpoint.unfinished.is_empty() {
            bail!("a Raft snapshot holds transactions but covers no record");
        }
        self.last_lsn = checkpoint.lsn;
        self.max_epoch = checkpoint.max_epoch;
        self.checkpoint = Some(checkpoint);
        Ok(())
    }

    /// The engine of a leader whose epoch is at least `epoch_floor`, built from everything
    /// applied: it resolves what its predecessors left undecided as a restarted coordinator
    /// does (its epoch record and those inquiries and re-driven commits are in `fx`).
    pub fn leader_engine(&self, epoch_floor: Epoch, now: Time, fx: &mut CoordEffects) -> Coordinator {
        Coordinator::recover_as_leader(
            self.config.clone(),
            self.checkpoint.clone(),
            self.records.iter().cloned(),
            epoch_floor,
            now,
            fx,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use twophase_engine::ParticipantId;

    fn config() -> CoordinatorConfig {
        CoordinatorConfig::new(vec![ParticipantId(1)])
    }

    /// The records `engine` appended, encoded as batches of at most `bytes_max`.
    fn batches_of(fx: &mut CoordEffects, bytes_max: usize) -> Vec<Vec<u8>> {
        let mut encoder = BatchEncoder::new(bytes_max);
        let mut payload = Vec::new();
        for (lsn, record) in fx.appends.drain(..) {
            encoder.push(lsn, &record, &mut payload).unwrap();
        }
        encoder.take()
    }

    #[test]
    fn a_batch_round_trips_and_damage_is_refused() {
        let mut fx = CoordEffects::default();
        let _ = Coordinator::recover(config(), Vec::new(), Time::ZERO, &mut fx);
        let expected: Vec<CoordRecord> = fx.appends.iter().map(|(_, record)| record.clone()).collect();
        let batches = batches_of(&mut fx, 1 << 20);
        assert_eq!(batches.len(), 1);
        let (first, records) = decode_batch(&batches[0]).unwrap();
        assert_eq!((first, records), (Lsn(1), expected));
        for cut in 0..batches[0].len() {
            assert!(decode_batch(&batches[0][..cut]).is_err(), "a batch cut at {cut} decoded");
        }
        let mut inflated = batches[0].clone();
        inflated[8..12].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(decode_batch(&inflated).is_err(), "a count beyond the bytes is refused before allocating");
    }

    #[test]
    fn records_split_into_batches_within_the_limit_and_apply_in_order() {
        let mut state = AppliedState::new(config(), 1_000);
        let mut encoder = BatchEncoder::new(64);
        let mut payload = Vec::new();
        for n in 1..=20u32 {
            encoder.push(Lsn(n as u64), &CoordRecord::Epoch { epoch: Epoch(n) }, &mut payload).unwrap();
        }
        let batches = encoder.take();
        assert!(batches.len() > 1 && batches.iter().all(|batch| batch.len() <= 64));
        for batch in &batches {
            state.apply(batch).unwrap();
        }
        assert_eq!(state.last_lsn(), Lsn(20));
        let mut fx = CoordEffects::default();
        let engine = state.leader_engine(Epoch(5), Time::ZERO, &mut fx);
        assert_eq!(engine.epoch(), Epoch(21), "above every applied epoch");
        assert_eq!(fx.appends, vec![(Lsn(21), CoordRecord::Epoch { epoch: Epoch(21) })]);
    }

    #[test]
    fn folding_and_snapshots_keep_what_a_new_leader_needs() {
        // A leader's first batch (its epoch), then a term-derived second leader.
        let mut leader_fx = CoordEffects::default();
        let _ = Coordinator::recover_as_leader(config(), None, Vec::new(), Epoch(4), Time::ZERO, &mut leader_fx);
        let mut state = AppliedState::new(config(), 1);
        for batch in batches_of(&mut leader_fx, 1 << 20) {
            state.apply(&batch).unwrap();
        }
        assert!(state.records.is_empty(), "folded at once with fold_every_records = 1");
        let bytes = state.snapshot();
        let mut restored = AppliedState::new(config(), 1_000);
        restored.restore(&Bytes::from(bytes)).unwrap();
        assert_eq!(restored.last_lsn(), Lsn(1));
        let mut fx = CoordEffects::default();
        let engine = restored.leader_engine(Epoch(2), Time::ZERO, &mut fx);
        assert_eq!(engine.epoch(), Epoch(5), "the folded epoch 4 still fences");
        assert_eq!(fx.appends[0].0, Lsn(2), "numbering continues after the snapshot");
    }

    #[test]
    #[should_panic(expected = "does not start where the applied records end")]
    fn a_batch_out_of_sequence_is_an_invariant_violation() {
        let mut state = AppliedState::new(config(), 1_000);
        let mut encoder = BatchEncoder::new(1 << 10);
        encoder.push(Lsn(7), &CoordRecord::Epoch { epoch: Epoch(1) }, &mut Vec::new()).unwrap();
        let _ = state.apply(&encoder.take()[0]);
    }
}
