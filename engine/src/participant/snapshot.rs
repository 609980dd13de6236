//! A participant's snapshot: its whole state as of one LSN, so the log before it can be
//! truncated and a restart replays only the tail. Taken at a step boundary once that LSN is
//! durable (the driver's job), it covers every record up to and including `lsn`.
//!
//! Layout: `u64 lsn | u32 max_epoch | u64 max_txid_seen | u64 kv count | (key, value) × count |
//! u32 prepared count | (u64 txid | u16 count | write × count) × count`.

use bytes::{BufMut, Bytes};

use crate::codec::{DecodeError, Encode, Reader, put_count, put_key, put_value, read_list};
use crate::ops::{Key, Value};
use crate::record::{RECORD_LIMITS, Write};
use crate::types::{Epoch, Lsn, TxId};

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParticipantSnapshot {
    pub lsn: Lsn,
    pub max_epoch: Epoch,
    pub max_txid_seen: TxId,
    /// Sorted by key, so equal states give equal bytes.
    pub kv: Vec<(Key, Value)>,
    /// Prepared transactions without an outcome as of `lsn`, sorted by txid.
    pub prepared: Vec<(TxId, Vec<Write>)>,
}

impl ParticipantSnapshot {
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32 + self.kv.len() * 32);
        out.put_u64_le(self.lsn.0);
        out.put_u32_le(self.max_epoch.0);
        out.put_u64_le(self.max_txid_seen.0);
        out.put_u64_le(self.kv.len() as u64);
        for (key, value) in &self.kv {
            put_key(&mut out, key);
            put_value(&mut out, value);
        }
        out.put_u32_le(self.prepared.len() as u32);
        for (txid, writes) in &self.prepared {
            out.put_u64_le(txid.0);
            put_count(&mut out, writes.len());
            for write in writes {
                write.encode(&mut out);
            }
        }
        out
    }

    pub fn decode(bytes: Bytes) -> Result<ParticipantSnapshot, DecodeError> {
        let mut reader = Reader::new(bytes, RECORD_LIMITS);
        let lsn = Lsn(reader.u64("snapshot lsn")?);
        let max_epoch = Epoch(reader.u32("max epoch")?);
        let max_txid_seen = TxId(reader.u64("max txid")?);
        let entries = reader.u64("kv count")?;
        // Each entry takes at least 6 bytes: refuse impossible counts before allocating.
        if entries.saturating_mul(6) > reader.remaining() as u64 {
            return Err(reader.error(format!("{entries} entries cannot fit in {} bytes", reader.remaining())));
        }
        let mut kv = Vec::with_capacity(entries as usize);
        for _ in 0..entries {
            kv.push((reader.key()?, reader.value()?));
        }
        let prepared_count = reader.u32("prepared count")?;
        if (prepared_count as u64).saturating_mul(10) > reader.remaining() as u64 {
            return Err(reader.error(format!("{prepared_count} prepared cannot fit in {} bytes", reader.remaining())));
        }
        let mut prepared = Vec::with_capacity(prepared_count as usize);
        for _ in 0..prepared_count {
            let txid = TxId(reader.u64("prepared txid")?);
            prepared.push((txid, read_list(&mut reader, u16::MAX as usize, 3, "writes")?));
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
            kv: vec![(Bytes::from_static(b"a"), encode_int(5)), (Bytes::from_static(b"b"), Bytes::from_static(b"x"))],
            prepared: vec![(TxId::new(Epoch(3), 8), vec![Write { key: Bytes::from_static(b"c"), value: None }])],
        };
        let bytes = Bytes::from(snapshot.encode());
        assert_eq!(ParticipantSnapshot::decode(bytes.clone()).unwrap(), snapshot);
        for cut in 0..bytes.len() {
            assert!(ParticipantSnapshot::decode(bytes.slice(..cut)).is_err(), "prefix {cut}");
        }
        let mut huge = bytes.to_vec();
        huge[20..28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(ParticipantSnapshot::decode(Bytes::from(huge)).unwrap_err().reason.contains("cannot fit"));
    }
}
