//! The handshake: an accepted connection's `Hello` is checked against the server's cluster
//! and accepted roles and answered with `Welcome`; an outbound connection's `Welcome` must
//! come from the expected node of our cluster. Afterwards only data frames flow, and only
//! the kinds the connecting side's role may send ([`may_send`]).
//!
//! With TLS the certificate decides: the `Hello` must claim exactly the certificate's
//! cluster, role and name, and the certificate's role must be one the server accepts
//! (`Forbidden` otherwise); a dialled server's `Welcome` must match its certificate. On an
//! insecure plaintext transport the `Hello`'s claim is taken as is (`HandshakeRefused`).

use std::time::Duration;

use super::conn::{State, mark_dirty};
use super::peer::BACKOFF_MIN;
use super::reactor::Reactor;
use super::{ConnId, Inbound};
use crate::frame::{ErrorCode, Frame, FrameKind, Hello, ProtocolError, Role, Welcome};
use crate::tls::PeerIdentity;

pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

impl Reactor {
    pub(super) fn on_frame(&mut self, id: ConnId, frame: Frame) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        match (conn.state, frame) {
            (_, Frame::Error(error)) => {
                tracing::warn!(conn = id, peer = ?conn.peer, "peer sent an error: {error}");
                self.drop_conn(id);
            }
            (State::AwaitHello, Frame::Hello(hello)) => {
                let certified = self.conns.get(&id).and_then(|conn| conn.identity.clone());
                self.on_hello(id, hello, certified.as_ref());
            }
            (State::AwaitWelcome, Frame::Welcome(welcome)) => {
                let peer_id = conn.peer.expect("outbound connection has a peer");
                let expect_node = self.peers.get(&peer_id).map(|peer| peer.expect_node.as_str()).unwrap_or("");
                let refusal = if let Some(mismatch) = certificate_mismatch(conn.identity.as_ref(), &welcome) {
                    Some(mismatch)
                } else if welcome.cluster != self.config.me.cluster {
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
                if conn.identity.is_none() {
                    // Plaintext: the Welcome's claim names the peer (for its traffic counts).
                    conn.identity = Some(PeerIdentity {
                        cluster: welcome.cluster.clone(),
                        role: welcome.role,
                        name: welcome.node.clone(),
                        authenticated: false,
                    });
                }
                if let Some(peer) = self.peers.get_mut(&peer_id) {
                    peer.backoff = BACKOFF_MIN;
                }
                tracing::info!(conn = id, peer = ?peer_id, node = %welcome.node, "peer up");
                self.batch.push(Inbound::PeerUp { peer: peer_id, conn: id, welcome });
            }
            (State::Open, frame) if frame.kind().is_data() => {
                let role = conn.identity.as_ref().map(|identity| identity.role);
                match role {
                    // Accepted: the role's identity decides what it may send.
                    Some(role) if conn.peer.is_none() && !may_send(role, frame.kind()) => {
                        let message = format!("a {role} may not send {:?} frames", frame.kind());
                        tracing::warn!(conn = id, "{message}; closing the connection");
                        self.fail(id, ProtocolError::new(ErrorCode::UnexpectedFrame, message));
                    }
                    _ => self.batch.push(Inbound::Frame { conn: id, frame }),
                }
            }
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

    /// Accepts or refuses the `Hello` of accepted connection `id`.
    fn on_hello(&mut self, id: ConnId, hello: Hello, certified: Option<&PeerIdentity>) {
        match self.check_hello(&hello, certified) {
            Ok(identity) => {
                let conn = self.conns.get_mut(&id).expect("conn");
                conn.identity = Some(identity.clone());
                conn.state = State::Open;
                conn.reported = true;
                conn.decoder.set_max_frame_bytes(self.config.limits.max_frame_bytes);
                conn.counters.frames_out += 1;
                conn.out_bytes += self.welcome.len();
                conn.out.push_back(self.welcome.clone());
                mark_dirty(conn, id, &mut self.dirty);
                tracing::debug!(conn = id, role = %hello.role, node = %hello.node, "handshake done");
                self.batch.push(Inbound::Accepted { conn: id, hello, identity });
            }
            Err(error) => {
                tracing::warn!(conn = id, "handshake refused: {error}");
                self.fail(id, error);
            }
        }
    }

    /// Decides an accepted `Hello`. `certified`: the identity the peer's certificate
    /// proved (TLS), `None` on a plaintext transport.
    fn check_hello(&self, hello: &Hello, certified: Option<&PeerIdentity>) -> Result<PeerIdentity, ProtocolError> {
        let me = &self.config.me;
        let Some(identity) = certified else {
            assert!(!self.config.security.is_tls(), "a TLS connection decoded a Hello before its certificate passed");
            if hello.cluster != me.cluster {
                let message = format!("cluster '{}' does not match '{}'", hello.cluster, me.cluster);
                return Err(ProtocolError::new(ErrorCode::HandshakeRefused, message));
            }
            if !self.config.accept_roles.contains(&hello.role) {
                let message = format!("role {} not accepted by a {}", hello.role, me.role);
                return Err(ProtocolError::new(ErrorCode::HandshakeRefused, message));
            }
            return Ok(PeerIdentity::claimed(hello));
        };
        if !identity.matches(hello) {
            let message = format!(
                "the Hello claims {} '{}' of cluster '{}' but the certificate names {identity}",
                hello.role, hello.node, hello.cluster
            );
            return Err(ProtocolError::new(ErrorCode::Forbidden, message));
        }
        if !self.config.accept_roles.contains(&identity.role) {
            let message = format!("role {} not accepted by a {}", identity.role, me.role);
            return Err(ProtocolError::new(ErrorCode::Forbidden, message));
        }
        Ok(identity.clone())
    }
}

/// Whether a connecting side of `role` may send data frames of `kind` on an accepted
/// connection: clients submit, run interactive transactions and sagas, admins ask, coordinators
/// prepare and decide, participants vote and acknowledge; clients and coordinators may
/// precede their data with the trace context of sampled transactions; coordinators of a
/// replicated group exchange Raft messages; under three-phase commit the coordinator and
/// participants (among themselves too) exchange `ThreePc` frames.
pub(super) fn may_send(role: Role, kind: FrameKind) -> bool {
    matches!(
        (role, kind),
        (Role::Client, FrameKind::Submits | FrameKind::Interactive | FrameKind::Sagas | FrameKind::TraceContext)
            | (Role::Admin, FrameKind::AdminRequest)
            | (Role::Coordinator, FrameKind::ToParticipant | FrameKind::TraceContext | FrameKind::Raft)
            | (Role::Participant, FrameKind::ToCoordinator)
            | (Role::Coordinator | Role::Participant, FrameKind::ThreePc)
    )
}

/// With TLS, a dialled server's `Welcome` must claim what its certificate names.
fn certificate_mismatch(certified: Option<&PeerIdentity>, welcome: &Welcome) -> Option<String> {
    let identity = certified?;
    let claimed = (welcome.cluster.as_str(), welcome.role, welcome.node.as_str());
    (claimed != (identity.cluster.as_str(), identity.role, identity.name.as_str())).then(|| {
        format!(
            "the Welcome claims {} '{}' of cluster '{}' but the certificate names {identity}",
            welcome.role, welcome.node, welcome.cluster
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clients_may_send_interactive_requests() {
        assert!(may_send(Role::Client, FrameKind::Interactive));
        assert!(may_send(Role::Client, FrameKind::Submits));
        assert!(may_send(Role::Client, FrameKind::Sagas));
        for role in [Role::Admin, Role::Coordinator, Role::Participant] {
            assert!(!may_send(role, FrameKind::Interactive), "{role} may not send Interactive frames");
            assert!(!may_send(role, FrameKind::Sagas), "{role} may not send Sagas frames");
        }
        assert!(!may_send(Role::Client, FrameKind::ToCoordinator));
        assert!(!may_send(Role::Client, FrameKind::Replies));
    }

    #[test]
    fn only_coordinators_and_participants_may_send_three_phase_commit_frames() {
        assert!(may_send(Role::Coordinator, FrameKind::ThreePc));
        assert!(may_send(Role::Participant, FrameKind::ThreePc));
        for role in [Role::Client, Role::Admin] {
            assert!(!may_send(role, FrameKind::ThreePc), "{role} may not send ThreePc frames");
        }
    }

    #[test]
    fn only_coordinators_may_send_raft_messages() {
        assert!(may_send(Role::Coordinator, FrameKind::Raft));
        for role in [Role::Client, Role::Admin, Role::Participant] {
            assert!(!may_send(role, FrameKind::Raft), "{role} may not send Raft frames");
        }
    }
}
