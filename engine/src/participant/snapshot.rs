//! A participant's snapshot: its whole state as of one LSN, so the log before it can be
//! truncated and a restart replays only the tail. Taken at a step boundary once that LSN is
//! durable (the driver's job), it covers every record up to and including `lsn`.
//!
//! Layout: `u64 lsn | u32 max_epoch | u64 max_txid_seen | u64 kv commits | u64 kv count |
//! (key, value, u64 version) × count | u32 prepared count |
//! (u64 txid | u16 count | write × count | u16 count | read key × count) × count`
//! (a prepared transaction's read keys are locked again on restore, as its writes are).
//! Format change (optimistic isolation): `kv commits` and each entry's `version` were added,
//! so a snapshot written before it does not decode (it fails with an error, loses nothing).

use std::sync::Arc;

use bytes::{BufMut, Bytes};

use crate::codec::{DecodeError, Encode, Reader, put_count, put_key, put_keys, put_value, read_keys, read_list};
use crate::ops::{Key, Value};
use crate::record::{RECORD_LIMITS, Write};
use crate::types::{Epoch, Lsn, TxId};

/// Bytes an image entry takes at least: key and value lengths, and the version.
const ENTRY_BYTES_MIN: u64 = 6 + 8;

/// The key-value state as the snapshot file holds it: the store's commit count and
/// `(key, value, version) × count`, sorted by key, in one buffer. A pair of `Bytes` per key
/// was 64 bytes of bookkeeping for a 20-byte account, and the store was held twice over
/// while a snapshot was written; this is the encoded size, once.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvImage {
    /// Write sets the store had applied (the version its next commit stamps is one more).
    commits: u64,
    count: u64,
    /// Valid entries only: built by `from_entries` or checked by `decode`.
    bytes: Bytes,
}

impl KvImage {
    /// An image of `pairs` at version 0 (a store that never committed, e.g. a test's).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a [u8], &'a [u8])>) -> KvImage {
        KvImage::from_entries(0, pairs.into_iter().map(|(key, value)| (key, value, 0)))
    }

    /// Encodes `entries` (key, value, version; in any order) sorted by key, so equal states
    /// give equal bytes. Keys and values must be within the record limits (everything stored
    /// came through them), and no version above `commits`.
    pub fn from_entries<'a>(commits: u64, entries: impl IntoIterator<Item = (&'a [u8], &'a [u8], u64)>) -> KvImage {
        let mut entries: Vec<(&[u8], &[u8], u64)> = entries.into_iter().collect();
        entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let len = entries.iter().map(|(key, value, _)| ENTRY_BYTES_MIN as usize + key.len() + value.len()).sum();
        let mut out = Vec::with_capacity(len);
        for (key, value, version) in &entries {
            // Checked here, where a bad entry comes from, not when the image is read back.
            assert!(key.len() <= RECORD_LIMITS.max_key_bytes, "a stored key of {} bytes", key.len());
            assert!(value.len() <= RECORD_LIMITS.max_value_bytes, "a stored value of {} bytes", value.len());
            assert!(*version <= commits, "a stored version {version} above the commit count {commits}");
            put_key(&mut out, key);
            put_value(&mut out, value);
            out.put_u64_le(*version);
        }
        debug_assert_eq!(out.len(), len);
        KvImage { commits, count: entries.len() as u64, bytes: Bytes::from(out) }
    }

    /// Write sets the store had applied when the image was taken.
    pub fn commits(&self) -> u64 {
        self.commits
    }

    pub fn len(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The pairs in key order, as slices of the image.
    pub fn iter(&self) -> impl Iterator<Item = (Key, Value)> + '_ {
        self.entries().map(|(key, value, _)| (key, value))
    }

    /// The entries (key, value, version) in key order, as slices of the image.
    pub fn entries(&self) -> impl Iterator<Item = (Key, Value, u64)> + '_ {
        let mut reader = Reader::new(self.bytes.clone(), RECORD_LIMITS);
        (0..self.count).map(move |_| {
            let key = reader.key().expect("an image holds valid entries");
            let value = reader.value().expect("an image holds valid entries");
            (key, value, reader.u64("version").expect("an image holds valid entries"))
        })
    }

    /// Reads the commit count and `count` entries at the reader's position, checking each.
    fn decode(whole: &Bytes, reader: &mut Reader) -> Result<KvImage, DecodeError> {
        let commits = reader.u64("kv commits")?;
        let count = reader.u64("kv count")?;
        // Refuse impossible counts before reading on.
        if count.saturating_mul(ENTRY_BYTES_MIN) > reader.remaining() as u64 {
            return Err(reader.error(format!("{count} entries cannot fit in {} bytes", reader.remaining())));
        }
        let start = whole.len() - reader.remaining();
        for _ in 0..count {
            reader.key()?;
            reader.value()?;
            let version = reader.u64("version")?;
            if version > commits {
                return Err(reader.error(format!("version {version} above the commit count {commits}")));
            }
        }
        let end = whole.len() - reader.remaining();
        Ok(KvImage { commits, count, bytes: whole.slice(start..end) })
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParticipantSnapshot {
    pub lsn: Lsn,
    pub max_epoch: Epoch,
    pub max_txid_seen: TxId,
    pub kv: KvImage,
    /// Prepared transactions without an outcome as of `lsn`, sorted by txid: each one's
    /// writes (shared with the prepared entry, as its `Prepared` record's are) and the keys
    /// it holds shared.
    pub prepared: Vec<(TxId, Arc<[Write]>, Vec<Key>)>,
}

impl ParticipantSnapshot {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(40 + self.kv.bytes.len());
        out.put_u64_le(self.lsn.0);
        out.put_u32_le(self.max_epoch.0);
        out.put_u64_le(self.max_txid_seen.0);
        out.put_u64_le(self.kv.commits);
        out.put_u64_le(self.kv.count);
        out.put_slice(&self.kv.bytes);
        out.put_u32_le(self.prepared.len() as u32);
        for (txid, writes, read_keys) in &self.prepared {
            out.put_u64_le(txid.0);
            put_count(&mut out, writes.len());
            for write in writes.iter() {
                write.encode(&mut out);
            }
            put_keys(&mut out, read_keys);
        }
        out
    }

    pub fn decode(bytes: Bytes) -> Result<ParticipantSnapshot, DecodeError> {
        let mut reader = Reader::new(bytes.clone(), RECORD_LIMITS);
        let lsn = Lsn(reader.u64("snapshot lsn")?);
        let max_epoch = Epoch(reader.u32("max epoch")?);
        let max_txid_seen = TxId(reader.u64("max txid")?);
        let kv = KvImage::decode(&bytes, &mut reader)?;
        let prepared_count = reader.u32("prepared count")?;
        if (prepared_count as u64).saturating_mul(12) > reader.remaining() as u64 {
            return Err(reader.error(format!("{prepared_count} prepared cannot fit in {} bytes", reader.remaining())));
        }
        let mut prepared = Vec::with_capacity(prepared_count as usize);
        for _ in 0..prepared_count {
            let txid = TxId(reader.u64("prepared txid")?);
            let writes: Vec<Write> = read_list(&mut reader, u16::MAX as usize, 3, "writes")?;
            prepared.push((txid, writes.into(), read_keys(&mut reader, u16::MAX as usize, "read keys")?));
        }
        reader.finish()?;
        Ok(ParticipantSnapshot { lsn, max_epoch, max_txid_seen, kv, prepared })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::participant::encode_int;

    #[test]
    fn snapshots_round_trip_and_refuse_damage() {
        let snapshot = ParticipantSnapshot {
            lsn: Lsn(77),
            max_epoch: Epoch(3),
            max_txid_seen: TxId::new(Epoch(3), 9),
            kv: KvImage::from_entries(9, [(&b"b"[..], &b"x"[..], 9), (&b"a"[..], &encode_int(5)[..], 4)]),
            prepared: vec![
                (TxId::new(Epoch(3), 8), vec![Write { key: Bytes::from_static(b"c"), value: None }].into(), vec![]),
                (TxId::new(Epoch(3), 9), Arc::from([]), vec![Bytes::from_static(b"d")]),
            ],
        };
        let bytes = Bytes::from(snapshot.encode());
        let decoded = ParticipantSnapshot::decode(bytes.clone()).unwrap();
        assert_eq!(decoded, snapshot);
        let entries: Vec<(Key, Value, u64)> = decoded.kv.entries().collect();
        assert_eq!(
            entries,
            vec![(Bytes::from_static(b"a"), encode_int(5), 4), (Bytes::from_static(b"b"), Bytes::from_static(b"x"), 9)]
        );
        assert_eq!(decoded.kv.commits(), 9);
        for cut in 0..bytes.len() {
            assert!(ParticipantSnapshot::decode(bytes.slice(..cut)).is_err(), "prefix {cut}");
        }
        let mut huge = bytes.to_vec();
        huge[28..36].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(ParticipantSnapshot::decode(Bytes::from(huge)).unwrap_err().reason.contains("cannot fit"));
        let mut low_commits = bytes.to_vec();
        low_commits[20..28].copy_from_slice(&8u64.to_le_bytes());
        let err = ParticipantSnapshot::decode(Bytes::from(low_commits)).unwrap_err();
        assert!(err.reason.contains("above the commit count"), "{err:?}");
    }
}
