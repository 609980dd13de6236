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
        let result = TcpStream::connect(addr)
            .and_then(|stream| refuse_self_connect(stream, addr))
            .and_then(|stream| self.new_conn(stream, State::Connecting, Some(peer_id)));
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

/// Refuses a connection to itself. A peer whose port lies in the kernel's ephemeral range
/// is redialed while it is down; the kernel may pick that very port as the dial's source,
/// and TCP's simultaneous open then connects the socket to itself. That socket holds the
/// port, so the peer, restarting, cannot bind it ("Address already in use"). The source is
/// bound when `connect` returns, so the check needs no wait for the handshake.
fn refuse_self_connect(stream: TcpStream, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let local = stream.local_addr()?;
    if local == addr {
        let message = format!("connected to itself at {local}: the peer is down and its port is ephemeral");
        return Err(std::io::Error::new(std::io::ErrorKind::AddrInUse, message));
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use std::os::fd::FromRawFd;

    use super::*;

    /// A socket bound to a loopback port and connected to that same port: what the kernel
    /// makes when it picks a down peer's ephemeral port as a dial's source.
    fn self_connected() -> (std::net::TcpStream, SocketAddr) {
        // SAFETY: plain socket calls on a descriptor this function owns; the sockaddr is a
        // local, correctly sized sockaddr_in.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let stream = std::net::TcpStream::from_raw_fd(fd);
            let mut sin: libc::sockaddr_in = std::mem::zeroed();
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let sa = |sin: &libc::sockaddr_in| sin as *const libc::sockaddr_in as *const libc::sockaddr;
            assert_eq!(libc::bind(fd, sa(&sin), len), 0, "bind: {}", std::io::Error::last_os_error());
            let addr = stream.local_addr().unwrap();
            sin.sin_port = addr.port().to_be();
            assert_eq!(libc::connect(fd, sa(&sin), len), 0, "connect: {}", std::io::Error::last_os_error());
            (stream, addr)
        }
    }

    #[test]
    fn a_dial_that_reached_itself_is_refused_and_a_real_one_is_kept() {
        let (stream, addr) = self_connected();
        assert_eq!(stream.peer_addr().unwrap(), addr, "the socket is connected to itself");
        let err = refuse_self_connect(TcpStream::from_std(stream), addr).expect_err("refused");
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        assert!(err.to_string().contains("connected to itself"), "{err}");

        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let peer = listener.local_addr().unwrap();
        let real = std::net::TcpStream::connect(peer).unwrap();
        refuse_self_connect(TcpStream::from_std(real), peer).expect("a connection to another socket is kept");
    }
}
