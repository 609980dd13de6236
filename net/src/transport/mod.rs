//! The server and peer transport: one `mio` event loop per process owns every socket, driven
//! either by the node's engine thread ([`Reactor`]) or by a thread of its own ([`spawn`]).
//!
//! Why one loop: the target machine has two cores, and every thread hand-off is a wake-up
//! worth tens of microseconds on its VM. One readiness loop serves any number of connections
//! with no socket shared across threads (no locks on the hot path), and it batches
//! naturally: everything decoded from every readable socket in one poll is one
//! `Vec<Inbound>`, and every frame queued since the last poll goes out with one vectored
//! write per connection.
//!
//! Flow control: a [`Reactor`] reads at most `READ_BUDGET` bytes per connection per turn and
//! its driver handles a turn's input before the next, which pushes back on senders through
//! TCP (a spawned transport blocks on its bounded inbound channel instead). Sends only queue
//! bytes, never block; each connection's outbound buffer is bounded by
//! `max_outbound_bytes_per_conn` and a reader that falls further behind is disconnected.
//!
//! Protocol violations (malformed or oversized frames, bad batches, a refused handshake) get
//! an `Error` frame; the connection then stops reading, flushes, shuts its write side and
//! lingers briefly discarding input so the peer reads the error before it sees the close.
//!
//! Each connection counts the bytes and frames it moves in plain fields (the loop owns them);
//! [`Reactor::connection_stats`] reads them for metrics (`stats`).

mod conn;
mod handle;
mod handshake;
mod peer;
mod reactor;
mod stats;
mod tls_io;

use std::net::SocketAddr;

use twophase_engine::ParticipantId;

use crate::frame::{Frame, Hello, NetLimits, Role, Welcome};
use crate::tls::{PeerIdentity, Security};

pub use handle::{Transport, spawn};
pub use reactor::Reactor;
pub use stats::{ConnCounters, ConnStats};

/// A connection, unique for the life of the transport.
pub type ConnId = u64;

/// A peer this process keeps an outbound connection to (chosen by the caller of
/// [`Transport::add_peer`]).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct PeerId(pub u64);

pub struct TransportConfig {
    /// Where to accept connections; `None` for a process that only connects out.
    pub listen: Option<SocketAddr>,
    /// This process: the role, cluster, node name and epoch it presents in `Hello`, and the
    /// role, cluster and node name it answers with in `Welcome`.
    pub me: Hello,
    /// Roles accepted from connecting sides.
    pub accept_roles: Vec<Role>,
    /// The participant directory sent in `Welcome` (a coordinator fills it for clients).
    pub directory: Vec<(ParticipantId, String)>,
    pub limits: NetLimits,
    /// Accepted connections beyond this are refused with an `Overloaded` error (under TLS,
    /// once the handshake completed: nothing reaches the peer before).
    pub max_connections: usize,
    /// A connection whose unsent output grows beyond this is a slow reader: disconnected.
    pub max_outbound_bytes_per_conn: usize,
    /// Mutual TLS (the certificate must name `me`) or insecure plaintext, for accepted and
    /// dialled connections alike.
    pub security: Security,
}

impl TransportConfig {
    /// A configuration with default limits, listening nowhere and accepting no role. No
    /// default security: a server never falls back to plaintext by omission.
    pub fn new(me: Hello, security: Security) -> TransportConfig {
        TransportConfig {
            listen: None,
            me,
            accept_roles: Vec::new(),
            directory: Vec::new(),
            limits: NetLimits::default(),
            max_connections: 4096,
            max_outbound_bytes_per_conn: 64 * 1024 * 1024,
            security,
        }
    }
}

/// What the transport hands the runtime, in batches.
#[derive(Debug)]
pub enum Inbound {
    /// A connecting side completed its handshake. `identity`: who it is — proved by its
    /// certificate with TLS (`authenticated`), the `Hello`'s claim on plaintext.
    Accepted { conn: ConnId, hello: Hello, identity: PeerIdentity },
    /// An outbound peer connection completed its handshake.
    PeerUp { peer: PeerId, conn: ConnId, welcome: Welcome },
    /// A peer that was up lost its connection; the transport is reconnecting.
    PeerDown { peer: PeerId },
    /// A data frame (never Hello, Welcome or Error) on an accepted or peer connection.
    Frame { conn: ConnId, frame: Frame },
    /// An accepted connection that was reported is gone; sends to it are dropped.
    Closed { conn: ConnId },
}
