//! Traffic per connection: bytes and frames in and out, counted by the loop in plain fields
//! of the connection (the loop owns them: no atomics), read through
//! [`Reactor::connection_stats`] by whoever publishes metrics.
//!
//! Bytes are what crossed the socket (TLS record overhead and handshakes included); frames
//! are whole twophase frames decoded (in) or queued for sending (out). A closed
//! connection's counts are folded into [`Reactor::closed_connections`], so totals never
//! go backwards while the series of open connections stay bounded by the connection limit.

use super::reactor::Reactor;
use crate::frame::Role;

/// Counts of one connection (or of all closed ones).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct ConnCounters {
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub frames_in: u64,
    pub frames_out: u64,
}

impl ConnCounters {
    /// Adds `other` to these counts.
    pub fn add(&mut self, other: &ConnCounters) {
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        self.frames_in += other.frames_in;
        self.frames_out += other.frames_out;
    }
}

/// One open connection's counts and who is on its other end.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct ConnStats<'a> {
    /// The peer's node (or client) name: from its certificate with TLS, its `Hello` or
    /// `Welcome` on plaintext; `None` until the handshake named it.
    pub peer: Option<&'a str>,
    /// The peer's role, known when `peer` is.
    pub role: Option<Role>,
    pub counters: ConnCounters,
}

impl Reactor {
    /// The counts of every open connection (unordered; several may name the same peer).
    pub fn connection_stats(&self) -> impl Iterator<Item = ConnStats<'_>> + '_ {
        self.conns.values().map(|conn| ConnStats {
            peer: conn.identity.as_ref().map(|identity| identity.name.as_str()),
            role: conn.identity.as_ref().map(|identity| identity.role),
            counters: conn.counters,
        })
    }

    /// The counts of every connection closed so far, summed.
    pub fn closed_connections(&self) -> ConnCounters {
        self.closed_counters
    }
}

/// How many whole frames `bytes` (one or more encoded frames, as queued) holds: each starts
/// with its little-endian length (of what follows the length field).
pub(super) fn frames_in(bytes: &[u8]) -> u64 {
    let mut frames = 0;
    let mut rest = bytes;
    while let Some(length) = rest.get(..4) {
        let length = u32::from_le_bytes(length.try_into().expect("4 bytes")) as usize;
        frames += 1;
        rest = rest.get(4 + length..).unwrap_or_default();
    }
    frames
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::{ErrorCode, ProtocolError};

    #[test]
    fn counts_every_frame_of_a_queued_batch() {
        let one = ProtocolError::new(ErrorCode::Malformed, "x").to_frame().to_bytes();
        let two = ProtocolError::new(ErrorCode::Overloaded, "a longer message").to_frame().to_bytes();
        assert_eq!(frames_in(&one), 1);
        let mut batch = one.to_vec();
        batch.extend_from_slice(&two);
        batch.extend_from_slice(&one);
        assert_eq!(frames_in(&batch), 3);
        assert_eq!(frames_in(&[]), 0);
    }

    #[test]
    fn counters_add_up() {
        let mut total = ConnCounters { bytes_in: 1, bytes_out: 2, frames_in: 3, frames_out: 4 };
        total.add(&ConnCounters { bytes_in: 10, bytes_out: 20, frames_in: 30, frames_out: 40 });
        assert_eq!(total, ConnCounters { bytes_in: 11, bytes_out: 22, frames_in: 33, frames_out: 44 });
    }
}
