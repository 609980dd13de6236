//! Outbound peer links: each peer's address and expected node, its connection if any, and
//! reconnect with exponential backoff.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use super::conn::State;
use super::reactor::Reactor;
use super::{ConnId, Inbound, PeerId};

pub(super) const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Redials of a peer that is down come at least this often: a restarted participant is
/// typically listening again within a second (its log replayed), and every moment it
/// waits for the next redial past that is time its transactions abort as `unavailable`
/// (at 500 ms, the wait was a quarter of a second on average). One connect at a time is
/// outstanding per peer, so a dead peer costs ten refused connects a second at most.
const BACKOFF_MAX: Duration = Duration::from_millis(100);

pub(super) struct Peer {
    pub(super) addr: SocketAddr,
    pub(super) expect_node: String,
    pub(super) conn: Option<ConnId>,
    pub(super) backoff: Duration,
    pub(super) next_attempt: Option<Instant>,
}

impl Reactor {
    /// Keeps an outbound connection to `addr` up; see [`Transport::add_peer`].
    pub fn add_peer(&mut self, peer: PeerId, addr: SocketAddr, expect_node: String) {
        let fresh = Peer { addr, expect_node, conn: None, backoff: BACKOFF_MIN, next_attempt: None };
        if let Some(old) = self.peers.insert(peer, fresh)
            && let Some(conn) = old.conn
        {
            self.drop_conn(conn);
        }
        self.connect_peer(peer);
    }

    /// Reports a connection's loss and schedules a peer's reconnect.
    pub(super) fn lost(&mut self, id: ConnId, peer: Option<PeerId>, reported: bool) {
        match peer {
            Some(peer_id) => {
                if reported {
                    tracing::info!(peer = ?peer_id, "peer down");
                    self.batch.push(Inbound::PeerDown { peer: peer_id });
                }
                if let Some(peer) = self.peers.get_mut(&peer_id)
                    && peer.conn == Some(id)
                {
                    peer.conn = None;
                    peer.next_attempt = Some(Instant::now() + peer.backoff);
                    peer.backoff = (peer.backoff * 2).min(BACKOFF_MAX);
                }
            }
            None if reported => self.batch.push(Inbound::Closed { conn: id }),
            None => {}
        }
    }

    pub(super) fn connect_peer(&mut self, peer_id: PeerId) {
        let Some(peer) = self.peers.get_mut(&peer_id) else { return };
        peer.next_attempt = None;
        let addr = peer.addr;
        let result =
            TcpStream::connect(addr).and_then(|stream| self.new_conn(stream, State::Connecting, Some(peer_id)));
        let peer = self.peers.get_mut(&peer_id).expect("peer");
        match result {
            Ok(id) => peer.conn = Some(id),
            Err(err) => {
                tracing::debug!(peer = ?peer_id, %addr, "connect failed: {err}");
                peer.next_attempt = Some(Instant::now() + peer.backoff);
                peer.backoff = (peer.backoff * 2).min(BACKOFF_MAX);
            }
        }
    }
}
