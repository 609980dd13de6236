//! Failpoints: named places in the node where a test can make this process die by SIGKILL,
//! so that crash recovery is exercised by real processes, real files and real sockets.
//!
//! Always compiled in; armed only by `TWOPHASE_FAILPOINT=<name>` or `<name>@<n>` (fire on
//! the n-th hit, default the first), read once by [`init`] at start-up. An unknown name
//! stops the process before it serves anything. When an armed failpoint fires the process
//! prints `failpoint <name> fired: killing this process` on stderr and sends itself SIGKILL:
//! no destructor, flush or log close runs after it, exactly as if the machine's operator
//! had used `kill -9` at that instant.
//!
//! Invariant: unarmed, a failpoint costs one load of a static (`OnceLock::get`) and a
//! compare; nothing is counted or locked.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that arms a failpoint.
pub const ENV: &str = "TWOPHASE_FAILPOINT";

/// Every failpoint. Where each fires is documented on its variant and in
/// docs/ARCHITECTURE.md; a hit is counted where the variant says.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Failpoint {
    /// Coordinator: Prepare messages were written to the participants' sockets; no vote
    /// has been counted. Hit per Prepare message released.
    CoordinatorPrepareSent,
    /// Coordinator: a Commit record was handed to the log, which may not have written it
    /// yet. Hit per Commit record appended.
    CoordinatorCommitAppended,
    /// Coordinator: the Commit record is durable and no Commit message of that
    /// transaction has been handed to the network (the client's reply, gated on the earlier
    /// Staged record, usually has). Hit per Commit message released.
    CoordinatorCommitDurable,
    /// Coordinator: one Commit message has been written to its participant's socket and the
    /// transaction's other Commit messages have not. Hit per Commit message released.
    CoordinatorCommitSentPartial,
    /// Participant: the Prepared record is durable and the Yes vote has not been handed to
    /// the network. Hit per Yes vote released.
    ParticipantPreparedDurable,
    /// Participant: the Yes vote has been written to the coordinator's socket; the decision
    /// has not arrived. Hit per Yes vote released.
    ParticipantVoteSent,
    /// Participant: the commit is applied and its Committed record durable; the ack has not
    /// been handed to the network. Hit per ack released.
    ParticipantCommittedApplied,
    /// Either role: the log's writer has written only part of a group of records (no sync)
    /// when it kills the process. Hit per group of records written since the log opened.
    WalMidGroup,
    /// 3PC coordinator: every participant voted Yes and the PreCommit record was handed to
    /// the log; no PreCommit message has left. Hit per PreCommit record appended.
    ThreePcVotesIn,
    /// 3PC coordinator: every participant acknowledged PreCommit and the commit decision
    /// was handed to the log; no DoCommit has left. Hit per commit decision appended.
    ThreePcPreCommitAcked,
}

impl Failpoint {
    pub const ALL: [Failpoint; 10] = [
        Failpoint::CoordinatorPrepareSent,
        Failpoint::CoordinatorCommitAppended,
        Failpoint::CoordinatorCommitDurable,
        Failpoint::CoordinatorCommitSentPartial,
        Failpoint::ParticipantPreparedDurable,
        Failpoint::ParticipantVoteSent,
        Failpoint::ParticipantCommittedApplied,
        Failpoint::WalMidGroup,
        Failpoint::ThreePcVotesIn,
        Failpoint::ThreePcPreCommitAcked,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Failpoint::CoordinatorPrepareSent => "coordinator-prepare-sent",
            Failpoint::CoordinatorCommitAppended => "coordinator-commit-appended",
            Failpoint::CoordinatorCommitDurable => "coordinator-commit-durable",
            Failpoint::CoordinatorCommitSentPartial => "coordinator-commit-sent-partial",
            Failpoint::ParticipantPreparedDurable => "participant-prepared-durable",
            Failpoint::ParticipantVoteSent => "participant-vote-sent",
            Failpoint::ParticipantCommittedApplied => "participant-committed-applied",
            Failpoint::WalMidGroup => "wal-mid-group",
            Failpoint::ThreePcVotesIn => "threepc-votes-in",
            Failpoint::ThreePcPreCommitAcked => "threepc-precommit-acked",
        }
    }
}

/// The armed failpoint and how often it has been hit.
#[derive(Debug)]
struct Armed {
    point: Failpoint,
    /// Fires on this hit (1-based).
    nth: u64,
    hits: AtomicU64,
}

impl Armed {
    /// Counts one hit; true on exactly the n-th.
    fn count_hit(&self) -> bool {
        self.hits.fetch_add(1, Ordering::Relaxed) + 1 == self.nth
    }
}

static ARMED: OnceLock<Option<Armed>> = OnceLock::new();

/// Parses `<name>` or `<name>@<n>`; the error names every valid failpoint.
fn parse(spec: &str) -> Result<Armed, String> {
    let (name, nth) = match spec.split_once('@') {
        Some((name, n)) => match n.parse::<u64>() {
            Ok(n) if n >= 1 => (name, n),
            _ => return Err(format!("{ENV}={spec:?}: the hit after '@' must be a whole number from 1")),
        },
        None => (spec, 1),
    };
    let Some(point) = Failpoint::ALL.into_iter().find(|point| point.name() == name) else {
        let names: Vec<&str> = Failpoint::ALL.iter().map(|point| point.name()).collect();
        return Err(format!("{ENV}={spec:?}: unknown failpoint {name:?}; valid names: {}", names.join(", ")));
    };
    Ok(Armed { point, nth, hits: AtomicU64::new(0) })
}

/// Reads `TWOPHASE_FAILPOINT` once. Call before serving; an error must stop the process.
pub fn init() -> Result<(), String> {
    let armed = match std::env::var(ENV) {
        Ok(spec) if !spec.is_empty() => Some(parse(&spec)?),
        Ok(_) | Err(std::env::VarError::NotPresent) => None,
        Err(std::env::VarError::NotUnicode(_)) => return Err(format!("{ENV} is not valid UTF-8")),
    };
    if let Some(armed) = &armed {
        tracing::warn!(
            failpoint = armed.point.name(),
            hit = armed.nth,
            "failpoint armed: this process will kill itself"
        );
    }
    let _ = ARMED.set(armed);
    Ok(())
}

fn armed(point: Failpoint) -> Option<&'static Armed> {
    match ARMED.get() {
        Some(Some(armed)) if armed.point == point => Some(armed),
        _ => None,
    }
}

/// Counts a hit of `point`; true on exactly the hit it is armed for. The caller then does
/// what must happen before the crash (e.g. flush a socket) and calls [`fire`].
pub fn reached(point: Failpoint) -> bool {
    armed(point).is_some_and(Armed::count_hit)
}

/// Counts a hit of `point` and kills the process if it is the armed one.
pub fn hit(point: Failpoint) {
    if reached(point) {
        fire(point);
    }
}

/// Announces the failpoint on stderr (unbuffered) and kills this process with SIGKILL.
pub fn fire(point: Failpoint) -> ! {
    // One write, so that the line is whole even in a pipe shared with the log.
    let line = format!("failpoint {} fired: killing this process\n", point.name());
    let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
    // SAFETY: kill(2) and pause(2) on our own process; no memory is involved.
    unsafe {
        libc::kill(libc::getpid(), libc::SIGKILL);
        // SIGKILL cannot be blocked or handled: nothing after this line runs, but the
        // compiler cannot know that, and no other thread must run on meanwhile.
        loop {
            libc::pause();
        }
    }
}

/// For the log: `Some(k)` when `wal-mid-group@k+1` is armed, i.e. the log writes `k` groups
/// whole and kills the process in the middle of the next one.
pub fn wal_crash_mid_group_after() -> Option<u64> {
    armed(Failpoint::WalMidGroup).map(|armed| armed.nth - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_hit_counts_parse() {
        let armed = parse("coordinator-commit-durable").unwrap();
        assert_eq!((armed.point, armed.nth), (Failpoint::CoordinatorCommitDurable, 1));
        let armed = parse("wal-mid-group@3").unwrap();
        assert_eq!((armed.point, armed.nth), (Failpoint::WalMidGroup, 3));
        for point in Failpoint::ALL {
            assert_eq!(parse(point.name()).unwrap().point, point, "every name parses back");
        }
    }

    #[test]
    fn unknown_names_and_bad_counts_are_refused_with_the_valid_names() {
        let err = parse("coordinator-commit").unwrap_err();
        assert!(err.contains("unknown failpoint \"coordinator-commit\""), "{err}");
        assert!(err.contains("coordinator-commit-durable") && err.contains("wal-mid-group"), "{err}");
        assert!(parse("wal-mid-group@0").unwrap_err().contains("whole number from 1"));
        assert!(parse("wal-mid-group@x").is_err());
    }

    #[test]
    fn the_armed_point_is_reached_on_its_nth_hit_only() {
        let armed = parse("participant-vote-sent@2").unwrap();
        assert_eq!([armed.count_hit(), armed.count_hit(), armed.count_hit()], [false, true, false]);
        // Nothing is armed in the test process, so no point is ever reached.
        assert!(!super::reached(Failpoint::ParticipantVoteSent));
    }
}
