//! Admin frames' bodies: what an admin connection asks for and the end of a dump.

/// What an admin connection asks for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AdminOp {
    /// A participant's whole key-value state: `DumpChunk` frames, then `DumpEnd`.
    Dump = 1,
    /// A coordinator's participants with their addresses: one `Topology` frame.
    Topology = 2,
    /// A coordinator's replication status, answered as a dump: one `DumpChunk` of
    /// [`ReplicaStatus`] entries (empty from a single coordinator), then `DumpEnd`.
    Status = 3,
}

/// Sent after the last `DumpChunk`: what the participant holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DumpEnd {
    pub keys: u64,
    pub prepared: u32,
    pub in_doubt: u32,
    /// Whether the participant fdatasyncs its log (false: it runs with `--unsafe-no-fsync`).
    pub fsync: bool,
}

/// One member of a coordinator group as a `Status` answer lists it: entry key = the
/// member's name, value = `u8 role | u64 term | u64 commit index | u64 applied index |
/// string address`. A node describes itself (role 1 or 2); the other members it lists with
/// role 0 and zeros, for the asker to query them.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ReplicaStatus {
    pub name: String,
    pub role: ReplicaRole,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
    /// Where it serves clients.
    pub address: String,
}

/// A member's role in a `Status` answer.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ReplicaRole {
    /// Another member: the answering node does not describe it.
    Unreported = 0,
    Follower = 1,
    Leader = 2,
}

impl ReplicaRole {
    pub fn name(self) -> &'static str {
        match self {
            ReplicaRole::Unreported => "unreported",
            ReplicaRole::Follower => "follower",
            ReplicaRole::Leader => "leader",
        }
    }
}

/// Longest member name or address in a `Status` entry.
pub const STATUS_TEXT_BYTES_MAX: usize = 255;

impl ReplicaStatus {
    /// The dump entry: key and value.
    pub fn to_entry(&self) -> (bytes::Bytes, bytes::Bytes) {
        use bytes::BufMut;
        let mut value = Vec::with_capacity(27 + 2 + self.address.len());
        value.put_u8(self.role as u8);
        value.put_u64_le(self.term);
        value.put_u64_le(self.commit_index);
        value.put_u64_le(self.applied_index);
        twophase_engine::codec::put_string(&mut value, &self.address);
        (bytes::Bytes::copy_from_slice(self.name.as_bytes()), bytes::Bytes::from(value))
    }

    /// Parses a dump entry, checking every length before reading it.
    pub fn from_entry(key: &[u8], value: &[u8]) -> Result<ReplicaStatus, String> {
        let name = std::str::from_utf8(key).map_err(|_| "a member name that is not UTF-8".to_string())?;
        if name.len() > STATUS_TEXT_BYTES_MAX {
            return Err(format!("a member name of {} bytes", name.len()));
        }
        let fixed = 1 + 3 * 8 + 2;
        if value.len() < fixed {
            return Err(format!("a status entry of {} bytes, below {fixed}", value.len()));
        }
        let role = match value[0] {
            0 => ReplicaRole::Unreported,
            1 => ReplicaRole::Follower,
            2 => ReplicaRole::Leader,
            other => return Err(format!("unknown replica role {other}")),
        };
        let u64_at = |at: usize| u64::from_le_bytes(value[at..at + 8].try_into().expect("8 bytes"));
        let address_len = u16::from_le_bytes([value[25], value[26]]) as usize;
        if address_len > STATUS_TEXT_BYTES_MAX || value.len() != fixed + address_len {
            return Err(format!("an address of {address_len} bytes in an entry of {}", value.len()));
        }
        let address =
            std::str::from_utf8(&value[fixed..]).map_err(|_| "an address that is not UTF-8".to_string())?.to_string();
        Ok(ReplicaStatus {
            name: name.to_string(),
            role,
            term: u64_at(1),
            commit_index: u64_at(9),
            applied_index: u64_at(17),
            address,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ReplicaStatus {
        ReplicaStatus {
            name: "c2".into(),
            role: ReplicaRole::Leader,
            term: 7,
            commit_index: 120,
            applied_index: 118,
            address: "127.0.0.1:7002".into(),
        }
    }

    #[test]
    fn a_status_entry_round_trips() {
        let (key, value) = sample().to_entry();
        assert_eq!(ReplicaStatus::from_entry(&key, &value), Ok(sample()));
    }

    #[test]
    fn bad_status_entries_are_refused_before_reading_past_them() {
        let (key, value) = sample().to_entry();
        assert!(ReplicaStatus::from_entry(&key, &value[..10]).unwrap_err().contains("below 27"));
        let mut bad_role = value.to_vec();
        bad_role[0] = 9;
        assert!(ReplicaStatus::from_entry(&key, &bad_role).unwrap_err().contains("unknown replica role 9"));
        let mut long_address = value.to_vec();
        long_address[25..27].copy_from_slice(&300u16.to_le_bytes());
        assert!(ReplicaStatus::from_entry(&key, &long_address).unwrap_err().contains("address of 300 bytes"));
        let mut trailing = value.to_vec();
        trailing.push(0);
        assert!(ReplicaStatus::from_entry(&key, &trailing).is_err());
        assert!(ReplicaStatus::from_entry(&[0xff], &value).unwrap_err().contains("not UTF-8"));
    }
}
