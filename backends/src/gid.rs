//! Global transaction ids: the name a transaction carries inside a database while it is
//! prepared there, so that recovery can map every prepared transaction back to the
//! coordinator's decision.
//!
//! Text form: `tp1:<participant>:<epoch>:<counter>`, the coordinator epoch and the txid's
//! counter in canonical decimal (the engine's txid is `epoch << 40 | counter`). Parsing accepts
//! only that exact form, so `parse(format(g)) == g` and `format(parse(s)) == s`: a gid in a
//! database that parses belongs to a participant of this format, one that does not is left
//! alone. The longest gid is 59 bytes, inside XA's 64-byte gtrid and PostgreSQL's 200 bytes.

use std::fmt;

const PREFIX: &str = "tp1";
/// Epochs live in the top 24 bits of the engine's 64-bit txid.
pub const EPOCH_MAX: u32 = (1 << 24) - 1;
pub const COUNTER_BITS: u32 = 40;
pub const COUNTER_MAX: u64 = (1 << COUNTER_BITS) - 1;
/// A participant name: 1 to 32 bytes of `[a-z0-9_-]`.
pub const PARTICIPANT_BYTES_MAX: usize = 32;
/// XA's gtrid limit; every gid fits it (PostgreSQL allows 200 bytes).
pub const GID_BYTES_MAX: usize = 64;

/// One transaction at one participant.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
pub struct Gid {
    participant: String,
    epoch: u32,
    counter: u64,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct GidError(pub String);

impl fmt::Display for GidError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "bad global transaction id: {}", self.0)
    }
}

impl std::error::Error for GidError {}

impl Gid {
    pub fn new(participant: &str, epoch: u32, counter: u64) -> Result<Gid, GidError> {
        check_participant(participant)?;
        if epoch > EPOCH_MAX {
            return Err(GidError(format!("epoch {epoch} above {EPOCH_MAX}")));
        }
        if counter > COUNTER_MAX {
            return Err(GidError(format!("txid counter {counter} above {COUNTER_MAX}")));
        }
        Ok(Gid { participant: participant.to_owned(), epoch, counter })
    }

    /// From the engine's 64-bit txid (`epoch << 40 | counter`).
    pub fn from_txid(participant: &str, txid: u64) -> Result<Gid, GidError> {
        Gid::new(participant, (txid >> COUNTER_BITS) as u32, txid & COUNTER_MAX)
    }

    pub fn participant(&self) -> &str {
        &self.participant
    }

    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    pub fn counter(&self) -> u64 {
        self.counter
    }

    /// The engine's 64-bit txid.
    pub fn txid(&self) -> u64 {
        ((self.epoch as u64) << COUNTER_BITS) | self.counter
    }

    /// The prefix every gid of `participant` starts with (for filtering recovery lists).
    pub fn prefix_of(participant: &str) -> String {
        format!("{PREFIX}:{participant}:")
    }

    pub fn parse(text: &str) -> Result<Gid, GidError> {
        let mut fields = text.split(':');
        let (Some(prefix), Some(participant), Some(epoch), Some(counter), None) =
            (fields.next(), fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return Err(GidError(format!("{text:?} is not tp1:<participant>:<epoch>:<counter>")));
        };
        if prefix != PREFIX {
            return Err(GidError(format!("{text:?} does not start with {PREFIX}:")));
        }
        let epoch = parse_canonical(epoch, "epoch")?;
        let counter = parse_canonical(counter, "counter")?;
        let epoch = u32::try_from(epoch).map_err(|_| GidError(format!("epoch {epoch} above {EPOCH_MAX}")))?;
        Gid::new(participant, epoch, counter)
    }
}

impl fmt::Display for Gid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{PREFIX}:{}:{}:{}", self.participant, self.epoch, self.counter)
    }
}

fn check_participant(name: &str) -> Result<(), GidError> {
    let allowed = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-';
    if name.is_empty() || name.len() > PARTICIPANT_BYTES_MAX || !name.bytes().all(allowed) {
        return Err(GidError(format!(
            "participant name {name:?} must be 1 to {PARTICIPANT_BYTES_MAX} bytes of [a-z0-9_-]"
        )));
    }
    Ok(())
}

/// Decimal digits without sign or leading zeros (so that exactly one text names a number).
fn parse_canonical(text: &str, what: &str) -> Result<u64, GidError> {
    let canonical =
        !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) && (text == "0" || !text.starts_with('0'));
    if !canonical {
        return Err(GidError(format!("{what} {text:?} is not a canonical decimal number")));
    }
    text.parse().map_err(|_| GidError(format!("{what} {text:?} is out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_exactly() {
        let gid = Gid::new("pg1", 7, 12345).unwrap();
        assert_eq!(gid.to_string(), "tp1:pg1:7:12345");
        assert_eq!(Gid::parse("tp1:pg1:7:12345").unwrap(), gid);
        let txid = (7u64 << 40) | 12345;
        assert_eq!(gid.txid(), txid);
        assert_eq!(Gid::from_txid("pg1", txid).unwrap(), gid);
    }

    #[test]
    fn longest_gid_fits_xa_gtrid() {
        let name = "a".repeat(PARTICIPANT_BYTES_MAX);
        let gid = Gid::new(&name, EPOCH_MAX, COUNTER_MAX).unwrap();
        let text = gid.to_string();
        assert!(text.len() <= GID_BYTES_MAX, "{} bytes: {text}", text.len());
        assert_eq!(Gid::parse(&text).unwrap(), gid);
    }

    #[test]
    fn refuses_every_non_canonical_form() {
        for bad in [
            "",
            "tp1:pg1:7",
            "tp1:pg1:7:1:2",
            "tp2:pg1:7:1",
            "tp1::7:1",
            "tp1:PG1:7:1",
            "tp1:pg 1:7:1",
            "tp1:pg1:07:1",
            "tp1:pg1:7:01",
            "tp1:pg1:+7:1",
            "tp1:pg1:-7:1",
            "tp1:pg1::1",
            "tp1:pg1:16777216:1",
            "tp1:pg1:1:1099511627776",
            "tp1:pg1:1:99999999999999999999999",
        ] {
            assert!(Gid::parse(bad).is_err(), "{bad:?} parsed");
        }
        assert!(Gid::new(&"a".repeat(PARTICIPANT_BYTES_MAX + 1), 0, 0).is_err());
    }

    #[test]
    fn zero_is_canonical() {
        assert_eq!(Gid::parse("tp1:p:0:0").unwrap(), Gid::new("p", 0, 0).unwrap());
    }

    #[test]
    fn prefix_separates_participants() {
        let gid = Gid::new("pg1", 1, 2).unwrap().to_string();
        assert!(gid.starts_with(&Gid::prefix_of("pg1")));
        assert!(!gid.starts_with(&Gid::prefix_of("pg")));
    }
}
