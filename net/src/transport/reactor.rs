//! The event loop: [`Reactor`] owns the poll, the listener, every connection and peer, and
//! runs one round per [`Reactor::turn`] (write queued output, poll, accept, read, timers).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};

use super::conn::{Conn, State};
use super::handshake::HANDSHAKE_TIMEOUT;
use super::peer::Peer;
use super::stats::ConnCounters;
use super::{ConnId, Inbound, PeerId, TransportConfig};
use crate::frame::{ErrorCode, Frame, FrameDecoder, MAX_HELLO_FRAME_BYTES, ProtocolError, Welcome};
use crate::tls::Security;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONN: ConnId = 2;
/// Bytes read per `read` call.
const READ_CHUNK: usize = 64 * 1024;
/// Refused connections that may linger beyond `max_connections` before new ones are dropped
/// without an error frame.
const REFUSED_SLACK: usize = 64;

/// The transport's state machine over `mio`, driven by whoever calls [`Reactor::turn`]: the
/// node's engine thread (no hand-off between a network thread and the engine: on a 2-core
/// VM each hand-off is a wake-up worth tens of microseconds), or the thread [`spawn`]
/// starts. Sends only queue bytes; the next `turn` (or [`Reactor::write_out`]) writes them.
pub struct Reactor {
    pub(super) poll: Poll,
    pub(super) events: Events,
    pub(super) waker: Arc<Waker>,
    pub(super) listener: Option<TcpListener>,
    pub(super) config: TransportConfig,
    pub(super) welcome: Bytes,
    pub(super) hello: Bytes,
    pub(super) conns: HashMap<ConnId, Conn>,
    pub(super) peers: HashMap<PeerId, Peer>,
    pub(super) next_conn: ConnId,
    pub(super) batch: Vec<Inbound>,
    pub(super) dirty: Vec<ConnId>,
    pub(super) read_pending: Vec<ConnId>,
    pub(super) handshake_deadlines: VecDeque<(Instant, ConnId)>,
    pub(super) linger_deadlines: VecDeque<(Instant, ConnId)>,
    pub(super) scratch: Vec<u8>,
    /// The counts of every connection dropped so far.
    pub(super) closed_counters: ConnCounters,
}

impl Reactor {
    /// Binds the listener (if any). Returns the reactor and the bound address.
    pub fn new(config: TransportConfig) -> io::Result<(Reactor, SocketAddr)> {
        if let Security::Tls(material) = &config.security
            && !material.identity().matches(&config.me)
        {
            let me = &config.me;
            let message = format!(
                "this node is {} '{}' of cluster '{}' but its certificate names {}",
                me.role,
                me.node,
                me.cluster,
                material.identity()
            );
            return Err(io::Error::new(io::ErrorKind::InvalidInput, message));
        }
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (listener, bound) = match config.listen {
            Some(addr) => {
                let mut listener = TcpListener::bind(addr)?;
                let bound = listener.local_addr()?;
                poll.registry().register(&mut listener, LISTENER, Interest::READABLE)?;
                (Some(listener), bound)
            }
            None => (None, SocketAddr::from(([0, 0, 0, 0], 0))),
        };
        let welcome = Frame::Welcome(Welcome {
            role: config.me.role,
            cluster: config.me.cluster.clone(),
            node: config.me.node.clone(),
            directory: config.directory.clone(),
            limits: config.limits,
        })
        .to_bytes();
        let hello = Frame::Hello(config.me.clone()).to_bytes();
        let reactor = Reactor {
            poll,
            events: Events::with_capacity(1024),
            waker,
            listener,
            config,
            welcome,
            hello,
            conns: HashMap::new(),
            peers: HashMap::new(),
            next_conn: FIRST_CONN,
            batch: Vec::new(),
            dirty: Vec::new(),
            read_pending: Vec::new(),
            handshake_deadlines: VecDeque::new(),
            linger_deadlines: VecDeque::new(),
            scratch: vec![0; READ_CHUNK],
            closed_counters: ConnCounters::default(),
        };
        Ok((reactor, bound))
    }

    /// Wakes a `turn` blocked in another thread (e.g. when the log made records durable).
    pub fn waker(&self) -> Arc<Waker> {
        self.waker.clone()
    }

    /// One round: writes what was queued, waits for readiness at most `timeout` (`None`:
    /// until something happens or a connection timer is due; zero while input is left
    /// unread from the previous round), accepts, reads and decodes, runs connection timers,
    /// and appends what happened to `inbound`. Reads at most `READ_BUDGET` bytes per
    /// connection per round, so a caller that handles `inbound` before the next round
    /// pushes back on senders through TCP.
    pub fn turn(&mut self, timeout: Option<Duration>, inbound: &mut Vec<Inbound>) -> io::Result<()> {
        self.flush_dirty();
        let timeout = if self.read_pending.is_empty() {
            let timers = self.next_deadline().map(|deadline| deadline.saturating_duration_since(Instant::now()));
            match (timeout, timers) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            }
        } else {
            Some(Duration::ZERO)
        };
        let mut events = std::mem::replace(&mut self.events, Events::with_capacity(0));
        let polled = self.poll.poll(&mut events, timeout);
        if let Err(err) = polled
            && err.kind() != io::ErrorKind::Interrupted
        {
            self.events = events;
            return Err(err);
        }
        for event in events.iter() {
            match event.token() {
                LISTENER => self.accept_all(),
                WAKER => {}
                Token(token) => {
                    let id = token as ConnId;
                    if event.is_writable() || event.is_error() {
                        self.on_writable(id);
                    }
                    if event.is_readable() || event.is_read_closed() || event.is_error() {
                        self.read_conn(id, event.is_read_closed() || event.is_error());
                    }
                }
            }
        }
        self.events = events;
        for id in std::mem::take(&mut self.read_pending) {
            // No edge left to report an end of stream seen last round: read to `WouldBlock`.
            self.read_conn(id, true);
        }
        self.flush_dirty();
        self.timers();
        inbound.append(&mut self.batch);
        Ok(())
    }

    /// Queues `frame` (one or more whole encoded frames) for `conn`; dropped if `conn` is
    /// gone. Written by the next `turn`.
    pub fn send(&mut self, conn: ConnId, frame: Bytes) {
        self.queue(conn, frame);
    }

    pub fn send_many(&mut self, frames: Vec<(ConnId, Bytes)>) {
        for (conn, frame) in frames {
            self.queue(conn, frame);
        }
    }

    /// Closes a connection after flushing what was queued for it; see [`Transport::close`].
    pub fn close(&mut self, conn: ConnId) {
        if let Some(c) = self.conns.get_mut(&conn) {
            if let Some(peer) = c.peer {
                // Closing a peer's connection stops reconnecting to it.
                self.peers.remove(&peer);
            }
            self.close_after_flush(conn);
        }
    }

    /// Writes what it can now, also to connections still waiting to be writable; true when
    /// every open connection's output is in the kernel.
    pub fn write_out(&mut self) -> bool {
        self.flush_dirty();
        let pending: Vec<ConnId> = self.conns.iter().filter(|(_, conn)| conn.has_output()).map(|(id, _)| *id).collect();
        for id in pending {
            self.flush_conn(id);
        }
        self.conns.values().filter(|conn| conn.state == State::Open).all(|conn| !conn.has_output())
    }

    /// Blocks until [`Reactor::write_out`] succeeds or `timeout` passes; returns which.
    /// Only for crash tests (failpoints): normal sends never wait for the network.
    pub fn flush(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.write_out() {
            if Instant::now() >= deadline {
                return false;
            }
            // A full socket buffer: the peer reads as we wait.
            std::thread::sleep(Duration::from_millis(1));
        }
        true
    }

    fn next_deadline(&self) -> Option<Instant> {
        let queues = [self.handshake_deadlines.front(), self.linger_deadlines.front()];
        let peers = self.peers.values().filter_map(|peer| peer.next_attempt);
        queues.into_iter().flatten().map(|(deadline, _)| *deadline).chain(peers).min()
    }

    pub(super) fn new_conn(&mut self, mut stream: TcpStream, state: State, peer: Option<PeerId>) -> io::Result<ConnId> {
        let tls = self.new_tls(state == State::AwaitHello)?;
        let id = self.next_conn;
        self.next_conn += 1;
        self.poll.registry().register(&mut stream, Token(id as usize), Interest::READABLE | Interest::WRITABLE)?;
        let mut decoder = FrameDecoder::new(self.config.limits);
        if state == State::AwaitHello {
            decoder.set_max_frame_bytes(self.config.limits.max_frame_bytes.min(MAX_HELLO_FRAME_BYTES));
        }
        self.conns.insert(
            id,
            Conn {
                stream,
                state,
                peer,
                reported: false,
                decoder,
                inbuf: BytesMut::new(),
                out: VecDeque::new(),
                out_bytes: 0,
                dirty: false,
                write_shut: false,
                tls,
                awaiting_first_input: true,
                close_notify_sent: false,
                identity: None,
                counters: ConnCounters::default(),
                refusal: None,
            },
        );
        self.handshake_deadlines.push_back((Instant::now() + HANDSHAKE_TIMEOUT, id));
        Ok(id)
    }

    fn accept_all(&mut self) {
        loop {
            let Some(listener) = &self.listener else { return };
            let (stream, addr) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => {
                    // E.g. out of file descriptors: keep serving the connections we have.
                    tracing::warn!("accept failed: {err}");
                    return;
                }
            };
            let open = self.conns.len();
            if open >= self.config.max_connections + REFUSED_SLACK {
                tracing::warn!(%addr, "dropping connection: {open} connections open");
                continue;
            }
            let _ = stream.set_nodelay(true);
            let id = match self.new_conn(stream, State::AwaitHello, None) {
                Ok(id) => id,
                Err(err) => {
                    tracing::warn!(%addr, "cannot register connection: {err}");
                    continue;
                }
            };
            tracing::debug!(conn = id, %addr, "accepted");
            if open >= self.config.max_connections {
                let message = format!("server is at its limit of {} connections", self.config.max_connections);
                self.refuse_accepted(id, ProtocolError::new(ErrorCode::Overloaded, message));
            }
        }
    }

    fn timers(&mut self) {
        let now = Instant::now();
        while let Some(&(deadline, id)) = self.handshake_deadlines.front() {
            if deadline > now {
                break;
            }
            self.handshake_deadlines.pop_front();
            match self.conns.get(&id).map(|conn| conn.state) {
                Some(State::Connecting) => self.drop_conn(id),
                Some(State::AwaitHello | State::AwaitWelcome) => {
                    let message = format!("no handshake within {} s", HANDSHAKE_TIMEOUT.as_secs());
                    self.fail(id, ProtocolError::new(ErrorCode::UnexpectedFrame, message));
                }
                _ => {}
            }
        }
        while let Some(&(deadline, id)) = self.linger_deadlines.front() {
            if deadline > now {
                break;
            }
            self.linger_deadlines.pop_front();
            self.drop_conn(id);
        }
        let due: Vec<PeerId> = self
            .peers
            .iter()
            .filter(|(_, peer)| peer.conn.is_none() && peer.next_attempt.is_some_and(|at| at <= now))
            .map(|(id, _)| *id)
            .collect();
        for peer in due {
            self.connect_peer(peer);
        }
    }
}
