//! Identifiers and simulated-or-real time, shared by every part of the protocol.

use std::fmt;
use std::ops::{Add, Sub};
use std::time::Duration;

/// Log sequence number. LSNs of one log are consecutive from 1; `Lsn::NONE` (0) means
/// "depends on no record" when it gates an output.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const NONE: Lsn = Lsn(0);

    pub fn next(self) -> Lsn {
        Lsn(self.0.checked_add(1).expect("LSN space exhausted"))
    }
}

/// A coordinator incarnation. Persisted in the coordinator's log and bumped on every start,
/// so transaction ids never repeat and participants can refuse a deposed coordinator.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct Epoch(pub u32);

impl Epoch {
    /// Epochs live in the top 24 bits of a [`TxId`].
    pub const MAX: Epoch = Epoch((1 << 24) - 1);
}

/// Transaction id: `epoch << 40 | counter`. Globally increasing across coordinator
/// restarts, which lets a participant refuse stale or duplicated prepares with one integer.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct TxId(pub u64);

impl TxId {
    pub const COUNTER_BITS: u32 = 40;
    pub const COUNTER_MAX: u64 = (1 << Self::COUNTER_BITS) - 1;

    pub fn new(epoch: Epoch, counter: u64) -> TxId {
        assert!(epoch <= Epoch::MAX, "epoch {epoch:?} out of range");
        assert!(counter <= Self::COUNTER_MAX, "txid counter {counter} out of range");
        TxId(((epoch.0 as u64) << Self::COUNTER_BITS) | counter)
    }

    pub fn epoch(self) -> Epoch {
        Epoch((self.0 >> Self::COUNTER_BITS) as u32)
    }

    pub fn counter(self) -> u64 {
        self.0 & Self::COUNTER_MAX
    }
}

impl fmt::Display for TxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "t{}.{}", self.epoch().0, self.counter())
    }
}

/// A participant (a shard of the key-value store, later a database), numbered by the
/// coordinator's configuration. Names such as `p1` live outside the engine.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct ParticipantId(pub u16);

impl fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}", self.0)
    }
}

/// A client session, assigned by the coordinator when the client registers (a value of its
/// txid space, so ids rise across restarts and are never handed out twice); with [`Seq`] it
/// names one request for exactly-once execution.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct ClientId(pub u64);

impl ClientId {
    /// Never assigned: marks a registration request.
    pub const NONE: ClientId = ClientId(0);
}

/// A client's request number. A retry reuses it; the coordinator never executes one
/// `(client, seq)` twice.
pub type Seq = u64;

/// A point in time, in nanoseconds from an origin the driver chooses (the simulator starts
/// at zero; the runtime measures from process start). The engine never reads a clock.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Default)]
pub struct Time(pub u64);

impl Time {
    pub const ZERO: Time = Time(0);

    pub fn from_nanos(nanos: u64) -> Time {
        Time(nanos)
    }

    pub fn as_nanos(self) -> u64 {
        self.0
    }

    /// Time elapsed since `earlier`, zero if `earlier` is later.
    pub fn since(self, earlier: Time) -> Duration {
        Duration::from_nanos(self.0.saturating_sub(earlier.0))
    }
}

impl Add<Duration> for Time {
    type Output = Time;
    fn add(self, rhs: Duration) -> Time {
        let nanos = u64::try_from(rhs.as_nanos()).unwrap_or(u64::MAX);
        Time(self.0.saturating_add(nanos))
    }
}

impl Sub<Time> for Time {
    type Output = Duration;
    fn sub(self, rhs: Time) -> Duration {
        self.since(rhs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn txid_packs_epoch_and_counter() {
        let txid = TxId::new(Epoch(7), 12345);
        assert_eq!(txid.epoch(), Epoch(7));
        assert_eq!(txid.counter(), 12345);
        assert!(TxId::new(Epoch(8), 0) > TxId::new(Epoch(7), TxId::COUNTER_MAX));
        assert_eq!(txid.to_string(), "t7.12345");
    }

    #[test]
    #[should_panic(expected = "out of range")]
    fn txid_counter_overflow_is_refused() {
        TxId::new(Epoch(1), TxId::COUNTER_MAX + 1);
    }

    #[test]
    fn time_arithmetic_saturates() {
        let t = Time(10) + Duration::from_nanos(5);
        assert_eq!(t, Time(15));
        assert_eq!(Time(3).since(Time(9)), Duration::ZERO);
        assert_eq!(Time(u64::MAX - 1) + Duration::from_secs(1), Time(u64::MAX));
    }
}
