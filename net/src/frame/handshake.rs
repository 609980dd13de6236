//! The handshake frames' bodies: `Hello` (connecting side), `Welcome` (server) and `Error`.

use std::fmt;

use twophase_engine::{Epoch, ParticipantId};

use super::{ErrorCode, NetLimits, Role};

/// First frame from the connecting side.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Hello {
    pub role: Role,
    pub cluster: String,
    pub node: String,
    /// The coordinator's epoch; 0 from every other role.
    pub epoch: Epoch,
}

/// The server's answer to an accepted `Hello`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Welcome {
    pub role: Role,
    pub cluster: String,
    pub node: String,
    /// Participant ids and names (a coordinator fills this for clients; others send none).
    pub directory: Vec<(ParticipantId, String)>,
    /// The server's limits; the connecting side must stay within them.
    pub limits: NetLimits,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ErrorFrame {
    pub code: ErrorCode,
    pub message: String,
}

impl fmt::Display for ErrorFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}
