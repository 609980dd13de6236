//! The handshake: an accepted connection's `Hello` is checked against the server's cluster
//! and accepted roles and answered with `Welcome`; an outbound connection's `Welcome` must
//! come from the expected node of our cluster. Afterwards only data frames flow.

use std::time::Duration;

use super::conn::{State, mark_dirty};
use super::peer::BACKOFF_MIN;
use super::reactor::Reactor;
use super::{ConnId, Inbound};
use crate::frame::{ErrorCode, Frame, Hello, ProtocolError};

pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl Reactor {
    pub(super) fn on_frame(&mut self, id: ConnId, frame: Frame) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        match (conn.state, frame) {
            (_, Frame::Error(error)) => {
                tracing::warn!(conn = id, peer = ?conn.peer, "peer sent an error: {error}");
                self.drop_conn(id);
            }
            (State::AwaitHello, Frame::Hello(hello)) => match self.check_hello(&hello) {
                Ok(()) => {
                    let conn = self.conns.get_mut(&id).expect("conn");
                    conn.state = State::Open;
                    conn.reported = true;
                    conn.decoder.set_max_frame_bytes(self.config.limits.max_frame_bytes);
                    conn.out_bytes += self.welcome.len();
                    conn.out.push_back(self.welcome.clone());
                    mark_dirty(conn, id, &mut self.dirty);
                    tracing::debug!(conn = id, role = %hello.role, node = %hello.node, "handshake done");
                    self.batch.push(Inbound::Accepted { conn: id, hello });
                }
                Err(message) => {
                    tracing::warn!(conn = id, "handshake refused: {message}");
                    self.fail(id, ProtocolError::new(ErrorCode::HandshakeRefused, message));
                }
            },
            (State::AwaitWelcome, Frame::Welcome(welcome)) => {
                let peer_id = conn.peer.expect("outbound connection has a peer");
                let expect_node = self.peers.get(&peer_id).map(|peer| peer.expect_node.as_str()).unwrap_or("");
                let refusal = if welcome.cluster != self.config.me.cluster {
                    Some(format!("cluster '{}' does not match '{}'", welcome.cluster, self.config.me.cluster))
                } else if welcome.node != expect_node {
                    Some(format!("node '{}' is not the expected '{expect_node}'", welcome.node))
                } else {
                    None
                };
                if let Some(message) = refusal {
                    tracing::warn!(conn = id, peer = ?peer_id, "peer refused: {message}");
                    self.fail(id, ProtocolError::new(ErrorCode::HandshakeRefused, message));
                    return;
                }
                conn.state = State::Open;
                conn.reported = true;
                if let Some(peer) = self.peers.get_mut(&peer_id) {
                    peer.backoff = BACKOFF_MIN;
                }
                tracing::info!(conn = id, peer = ?peer_id, node = %welcome.node, "peer up");
                self.batch.push(Inbound::PeerUp { peer: peer_id, conn: id, welcome });
            }
            (State::Open, frame) if frame.kind().is_data() => self.batch.push(Inbound::Frame { conn: id, frame }),
            (state, frame) => {
                let expected = match state {
                    State::AwaitHello => "Hello as the first frame",
                    State::AwaitWelcome => "Welcome as the first frame",
                    _ => "a data frame",
                };
                let message = format!("expected {expected}, got {:?}", frame.kind());
                self.fail(id, ProtocolError::new(ErrorCode::UnexpectedFrame, message));
            }
        }
    }

    pub(super) fn check_hello(&self, hello: &Hello) -> Result<(), String> {
        let me = &self.config.me;
        if hello.cluster != me.cluster {
            return Err(format!("cluster '{}' does not match '{}'", hello.cluster, me.cluster));
        }
        if !self.config.accept_roles.contains(&hello.role) {
            return Err(format!("role {} not accepted by a {}", hello.role, me.role));
        }
        Ok(())
    }
}
