//! The three-phase-commit runtime (`--protocol 3pc`): the engine's sans-IO
//! `ThreePcCoordinator` and `ThreePcParticipant` driven by the same engine loop as 2PC
//! (`super::run`: one wal group commit per loop turn, outputs released once their LSN is
//! durable), over `ThreePc` frames (kind 25).
//!
//! Owns: the 3PC coordinator node (`coordinator`: clients' `Submit` frames in, `Replies`
//! out, each transaction one `ThreePcCoordinator::begin` with each participant's ops as its
//! payload), the 3PC participant node (`participant`: the built-in store as resource
//! manager through `store`, participant-to-participant links for the termination
//! protocol), the tick clock both run on ([`Ticker`]) and the coordinator's epoch file.
//!
//! Invariants: an output leaves only once the log is durable up to its LSN (the shared
//! loop); every 3PC wait is derived from one network bound ([`timeouts`]); a participant's
//! log alone rebuilds its store (no snapshot: the log replays whole).
//!
//! Must not: touch the 2PC path (`--protocol 2pc`, the default, runs `coordinator` and
//! `participant` of `super` unchanged).

pub mod coordinator;
pub mod participant;
mod store;

use std::path::Path;
use std::time::Duration;

use anyhow::Context;
use twophase_engine::Time;
use twophase_engine::threepc::Timeouts;

/// One engine tick.
pub const TICK: Duration = Duration::from_millis(10);

/// The network bound the timeouts assume, in ticks: a message between live nodes of one
/// machine or LAN arrives within 500 ms (generous: the nodes share a loaded 2-core VM and
/// a message may wait behind a log sync), at most one resend of it lost (a connection
/// that broke and came back), resent every 200 ms. Termination starts about 4.3 s after a
/// participant's vote if the coordinator falls silent.
const DELAY_TICKS_MAX: u64 = 50;
const DROPS_MAX: u64 = 1;
const RESEND_TICKS: u64 = 20;

/// The 3PC timeouts of every node of a cluster (they must agree).
pub fn timeouts() -> Timeouts {
    Timeouts::for_network(DELAY_TICKS_MAX, DROPS_MAX, RESEND_TICKS)
}

/// Transactions in flight at the coordinator, or undecided at a participant, at most.
pub const TXS_MAX: usize = 100_000;

/// Decided transactions a participant remembers to answer its peers.
pub const DECIDED_MAX: usize = 100_000;

/// Turns the process clock into whole ticks: each due tick is one `tick()` of the engine.
#[derive(Debug)]
pub struct Ticker {
    next: Time,
}

impl Ticker {
    pub fn new(now: Time) -> Ticker {
        Ticker { next: now + TICK }
    }

    pub fn next_deadline(&self) -> Time {
        self.next
    }

    /// How many ticks passed by `now` (all of them: a stalled loop catches up, because
    /// the timeouts measure time).
    pub fn due(&mut self, now: Time) -> u64 {
        let mut ticks = 0;
        while self.next <= now {
            self.next = self.next + TICK;
            ticks += 1;
        }
        ticks
    }
}

/// Reads the coordinator's last epoch from `DATA_DIR/threepc-epoch` (0 if absent), writes
/// the next one durably (temporary file, fsync, rename, fsync of the directory) and
/// returns it: txids never repeat across incarnations.
pub fn next_epoch(data_dir: &Path) -> anyhow::Result<u32> {
    let path = data_dir.join("threepc-epoch");
    let last = match std::fs::read_to_string(&path) {
        Ok(text) => text.trim().parse::<u32>().with_context(|| format!("{} is corrupt", path.display()))?,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => 0,
        Err(err) => return Err(err).with_context(|| format!("reading {}", path.display())),
    };
    let next = last.checked_add(1).context("the 3pc epoch is exhausted")?;
    let temporary = data_dir.join("threepc-epoch.tmp");
    let mut file = std::fs::File::create(&temporary).with_context(|| format!("creating {}", temporary.display()))?;
    std::io::Write::write_all(&mut file, format!("{next}\n").as_bytes())?;
    file.sync_all().with_context(|| format!("syncing {}", temporary.display()))?;
    std::fs::rename(&temporary, &path).with_context(|| format!("renaming to {}", path.display()))?;
    std::fs::File::open(data_dir)?.sync_all().with_context(|| format!("syncing {}", data_dir.display()))?;
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ticker_counts_every_tick_that_passed() {
        let start = Time(1_000);
        let mut ticker = Ticker::new(start);
        assert_eq!(ticker.due(start), 0);
        assert_eq!(ticker.due(start + TICK), 1);
        assert_eq!(ticker.due(start + TICK * 4 + Duration::from_millis(1)), 3);
        assert_eq!(ticker.next_deadline(), start + TICK * 5);
    }

    #[test]
    fn each_start_takes_a_higher_epoch() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(next_epoch(dir.path()).unwrap(), 1);
        assert_eq!(next_epoch(dir.path()).unwrap(), 2);
        std::fs::write(dir.path().join("threepc-epoch"), "x").unwrap();
        assert!(next_epoch(dir.path()).is_err());
    }
}
