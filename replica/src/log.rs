//! The log interface the coordinator will use: a single coordinator keeps its local wal,
//! a replicated one goes through Raft, and the coordinator cannot tell the difference
//! beyond "decided" arriving later.

use twophase_wal::{Lsn, Wal, WalError};

use crate::error::ProposeError;
use crate::record_log::RecordLog;
use crate::replica::{Replica, Ticket, TicketOutcome};

/// Why an append was refused. Nothing was appended.
#[derive(Debug)]
pub enum AppendError {
    /// A replicated log refused (not the leader, too large, busy).
    Propose(ProposeError),
    /// The local wal failed: fatal.
    Log(WalError),
}

impl std::fmt::Display for AppendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppendError::Propose(e) => write!(f, "{e}"),
            AppendError::Log(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for AppendError {}

/// Where the coordinator's batches of records become decided: durable on the local disk
/// (one coordinator) or committed by a majority (a replicated group). An output that
/// depends on a batch is released only once [`DecisionLog::outcome`] of its ticket is
/// [`TicketOutcome::Committed`].
pub trait DecisionLog {
    /// Appends one batch of records (opaque bytes); its ticket orders it among the others.
    fn append(&mut self, batch: &[u8]) -> Result<Ticket, AppendError>;
    /// The highest ticket decided so far, every earlier one of the same term included.
    fn decided(&self) -> Ticket;
    /// Where one batch stands.
    fn outcome(&self, ticket: Ticket) -> TicketOutcome;
}

/// Wal record kind of a batch in a [`LocalLog`].
pub const KIND_LOCAL_BATCH: u8 = 1;

/// A single coordinator's log: the wal itself. A batch is decided once durable.
pub struct LocalLog {
    wal: Wal,
}

impl LocalLog {
    /// Wraps an open wal.
    pub fn new(wal: Wal) -> LocalLog {
        LocalLog { wal }
    }

    /// The wal (doorbell, `on_durable`, close).
    pub fn wal(&self) -> &Wal {
        &self.wal
    }

    /// Gives the wal back.
    pub fn into_wal(self) -> Wal {
        self.wal
    }

    fn durable(&self) -> Lsn {
        // A failed log decides nothing more; `append` reports the failure.
        self.wal.durable_lsn().unwrap_or(Lsn::NONE)
    }
}

impl DecisionLog for LocalLog {
    fn append(&mut self, batch: &[u8]) -> Result<Ticket, AppendError> {
        let lsn = self.wal.append(KIND_LOCAL_BATCH, batch).map_err(AppendError::Log)?;
        Ok(Ticket { term: 0, index: lsn.0 })
    }

    fn decided(&self) -> Ticket {
        Ticket { term: 0, index: self.durable().0 }
    }

    fn outcome(&self, ticket: Ticket) -> TicketOutcome {
        if ticket.index <= self.durable().0 { TicketOutcome::Committed } else { TicketOutcome::Pending }
    }
}

impl<L: RecordLog> DecisionLog for Replica<L> {
    fn append(&mut self, batch: &[u8]) -> Result<Ticket, AppendError> {
        self.propose(batch.to_vec()).map_err(AppendError::Propose)
    }

    fn decided(&self) -> Ticket {
        let (index, term) = self.applied();
        Ticket { term, index }
    }

    fn outcome(&self, ticket: Ticket) -> TicketOutcome {
        Replica::outcome(self, ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_log_decides_a_batch_once_durable() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = twophase_wal::open(dir.path(), Default::default()).unwrap();
        let mut log = LocalLog::new(wal);
        let first = log.append(b"records of group 1").unwrap();
        let second = log.append(b"records of group 2").unwrap();
        assert!(second > first);
        log.wal().wait_durable(Lsn(second.index)).unwrap();
        assert_eq!(log.outcome(first), TicketOutcome::Committed);
        assert_eq!(log.outcome(second), TicketOutcome::Committed);
        assert!(log.decided() >= second);
        let wal = log.into_wal();
        wal.close().unwrap();
        let (_, recovery) = twophase_wal::open(dir.path(), Default::default()).unwrap();
        let payloads: Vec<&[u8]> = recovery.records.iter().map(|r| &r.payload[..]).collect();
        assert_eq!(payloads, vec![&b"records of group 1"[..], &b"records of group 2"[..]]);
    }

    #[test]
    fn local_log_reports_a_batch_not_yet_durable_as_pending() {
        let dir = tempfile::tempdir().unwrap();
        let (wal, _) = twophase_wal::open(dir.path(), Default::default()).unwrap();
        let log = LocalLog::new(wal);
        assert_eq!(log.outcome(Ticket { term: 0, index: 1 }), TicketOutcome::Pending);
        assert_eq!(log.decided(), Ticket { term: 0, index: 0 });
    }
}
