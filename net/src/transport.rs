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

use std::collections::{HashMap, VecDeque};
use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use crossbeam_channel::{Receiver, Sender};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use twophase_engine::ParticipantId;

use crate::frame::{
    ErrorCode, Frame, FrameDecoder, Hello, MAX_HELLO_FRAME_BYTES, NetLimits, ProtocolError, Role, Welcome,
};

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
    /// Accepted connections beyond this are refused with an `Overloaded` error.
    pub max_connections: usize,
    /// A connection whose unsent output grows beyond this is a slow reader: disconnected.
    pub max_outbound_bytes_per_conn: usize,
}

impl TransportConfig {
    /// A configuration with default limits, listening nowhere and accepting no role.
    pub fn new(me: Hello) -> TransportConfig {
        TransportConfig {
            listen: None,
            me,
            accept_roles: Vec::new(),
            directory: Vec::new(),
            limits: NetLimits::default(),
            max_connections: 4096,
            max_outbound_bytes_per_conn: 64 * 1024 * 1024,
        }
    }
}

/// What the transport hands the runtime, in batches.
#[derive(Debug)]
pub enum Inbound {
    /// A connecting side completed its handshake.
    Accepted { conn: ConnId, hello: Hello },
    /// An outbound peer connection completed its handshake.
    PeerUp { peer: PeerId, conn: ConnId, welcome: Welcome },
    /// A peer that was up lost its connection; the transport is reconnecting.
    PeerDown { peer: PeerId },
    /// A data frame (never Hello, Welcome or Error) on an accepted or peer connection.
    Frame { conn: ConnId, frame: Frame },
    /// An accepted connection that was reported is gone; sends to it are dropped.
    Closed { conn: ConnId },
}

enum Command {
    Send(ConnId, Bytes),
    SendMany(Vec<(ConnId, Bytes)>),
    AddPeer { peer: PeerId, addr: SocketAddr, expect_node: String },
    Close(ConnId),
    // Write out everything queued, then answer whether every open connection's output is
    // now in the kernel.
    Flush(Sender<bool>),
    Shutdown,
}

/// Commands queued to a spawned transport's thread; a caller that gets this far ahead of
/// the loop waits for it (the loop itself never waits on the network).
const COMMANDS_QUEUE_MAX: usize = 65_536;

/// Handle to a transport running on its own thread ([`spawn`]). Cheap to clone; every method
/// only queues a command (waiting only while [`COMMANDS_QUEUE_MAX`] are queued) and wakes
/// the loop, so it never blocks on the network.
#[derive(Clone)]
pub struct Transport {
    commands: Sender<Command>,
    waker: Arc<Waker>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Transport {
    /// Queues `frame` (one or more whole encoded frames, e.g. from a
    /// [`BatchWriter`](crate::BatchWriter)) for `conn`. Dropped if `conn` is gone.
    pub fn send(&self, conn: ConnId, frame: Bytes) {
        self.command(Command::Send(conn, frame));
    }

    /// Queues many sends with one wake-up.
    pub fn send_many(&self, frames: Vec<(ConnId, Bytes)>) {
        if !frames.is_empty() {
            self.command(Command::SendMany(frames));
        }
    }

    /// Keeps an outbound connection to `addr` up, reconnecting with backoff (50 ms doubling
    /// to 2 s). Each connection sends our `Hello` and must get a `Welcome` from
    /// `expect_node` in our cluster; then [`Inbound::PeerUp`] reports it.
    pub fn add_peer(&self, peer: PeerId, addr: SocketAddr, expect_node: String) {
        self.command(Command::AddPeer { peer, addr, expect_node });
    }

    /// Closes a connection after flushing what was queued for it. Closing a peer's
    /// connection also forgets the peer (no reconnect); `add_peer` again to restore it.
    pub fn close(&self, conn: ConnId) {
        self.command(Command::Close(conn));
    }

    /// Blocks until every frame queued before this call has been written to its socket
    /// (handed to the kernel, so it is sent even if this process dies next), or until
    /// `timeout` passes; returns which. Only for crash tests (failpoints): normal sends never
    /// wait for the network.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let (done_tx, done) = crossbeam_channel::bounded(1);
            self.command(Command::Flush(done_tx));
            match done.recv_deadline(deadline) {
                Ok(true) => return true,
                // A full socket buffer: the loop keeps writing as the peer reads; ask again.
                Ok(false) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
                Ok(false) | Err(_) => return false,
            }
        }
    }

    /// Stops the loop, closes every connection and waits for the thread to end.
    pub fn shutdown(self) {
        self.command(Command::Shutdown);
        let handle = self.thread.lock().map(|mut slot| slot.take()).unwrap_or(None);
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }

    fn command(&self, command: Command) {
        if self.commands.send(command).is_ok() {
            // A failed wake means the loop is gone; nothing left to tell it.
            let _ = self.waker.wake();
        }
    }
}

/// Starts the transport on its own thread (see [`Reactor`] for driving it from the caller's
/// thread instead). Returns its handle and the bound listen address (useful with port 0);
/// `0.0.0.0:0` when `config.listen` is `None`.
pub fn spawn(config: TransportConfig, inbound: Sender<Vec<Inbound>>) -> io::Result<(Transport, SocketAddr)> {
    let (mut reactor, bound) = Reactor::new(config)?;
    let waker = reactor.waker();
    let (commands_tx, commands) = crossbeam_channel::bounded(COMMANDS_QUEUE_MAX);
    let thread = std::thread::Builder::new().name("net".into()).spawn(move || {
        let mut batch = Vec::new();
        loop {
            if let Flow::Stop = drain_commands(&mut reactor, &commands) {
                return;
            }
            if let Err(err) = reactor.turn(None, &mut batch) {
                tracing::error!("transport poll failed, stopping: {err}");
                return;
            }
            if !batch.is_empty() && inbound.send(std::mem::take(&mut batch)).is_err() {
                tracing::info!("transport stopping: the runtime dropped its inbound channel");
                return;
            }
        }
    })?;
    Ok((Transport { commands: commands_tx, waker, thread: Arc::new(Mutex::new(Some(thread))) }, bound))
}

fn drain_commands(reactor: &mut Reactor, commands: &Receiver<Command>) -> Flow {
    loop {
        match commands.try_recv() {
            Ok(Command::Send(conn, frame)) => reactor.send(conn, frame),
            Ok(Command::SendMany(frames)) => reactor.send_many(frames),
            Ok(Command::AddPeer { peer, addr, expect_node }) => reactor.add_peer(peer, addr, expect_node),
            Ok(Command::Close(conn)) => reactor.close(conn),
            Ok(Command::Flush(done)) => {
                let _ = done.send(reactor.write_out());
            }
            Ok(Command::Shutdown) => return Flow::Stop,
            Err(crossbeam_channel::TryRecvError::Empty) => return Flow::Continue,
            Err(crossbeam_channel::TryRecvError::Disconnected) => {
                tracing::info!("transport stopping: every handle was dropped");
                return Flow::Stop;
            }
        }
    }
}

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST_CONN: ConnId = 2;
/// Bytes read per `read` call.
const READ_CHUNK: usize = 64 * 1024;
/// Bytes read from one connection per loop iteration before the others get a turn.
const READ_BUDGET: usize = 1024 * 1024;
/// Slices per vectored write.
const MAX_IOVECS: usize = 64;
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a connection closed for a protocol error keeps discarding input so that the peer
/// reads the error frame rather than a reset.
const LINGER: Duration = Duration::from_secs(1);
/// Refused connections that may linger beyond `max_connections` before new ones are dropped
/// without an error frame.
const REFUSED_SLACK: usize = 64;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum State {
    /// Accepted; the first frame must be a Hello.
    AwaitHello,
    /// Outbound; TCP connect in progress.
    Connecting,
    /// Outbound; Hello sent, waiting for Welcome.
    AwaitWelcome,
    /// Handshake done: data frames flow.
    Open,
    /// An error frame is queued: flush it, shut the write side, discard input until EOF.
    Closing,
}

struct Conn {
    stream: TcpStream,
    state: State,
    peer: Option<PeerId>,
    /// Accepted/PeerUp was reported, so Closed/PeerDown is owed.
    reported: bool,
    decoder: FrameDecoder,
    inbuf: BytesMut,
    out: VecDeque<Bytes>,
    out_bytes: usize,
    dirty: bool,
    write_shut: bool,
}

struct Peer {
    addr: SocketAddr,
    expect_node: String,
    conn: Option<ConnId>,
    backoff: Duration,
    next_attempt: Option<Instant>,
}

/// The transport's state machine over `mio`, driven by whoever calls [`Reactor::turn`]: the
/// node's engine thread (no hand-off between a network thread and the engine: on a 2-core
/// VM each hand-off is a wake-up worth tens of microseconds), or the thread [`spawn`]
/// starts. Sends only queue bytes; the next `turn` (or [`Reactor::write_out`]) writes them.
pub struct Reactor {
    poll: Poll,
    events: Events,
    waker: Arc<Waker>,
    listener: Option<TcpListener>,
    config: TransportConfig,
    welcome: Bytes,
    hello: Bytes,
    conns: HashMap<ConnId, Conn>,
    peers: HashMap<PeerId, Peer>,
    next_conn: ConnId,
    batch: Vec<Inbound>,
    dirty: Vec<ConnId>,
    read_pending: Vec<ConnId>,
    handshake_deadlines: VecDeque<(Instant, ConnId)>,
    linger_deadlines: VecDeque<(Instant, ConnId)>,
    scratch: Vec<u8>,
}

enum Flow {
    Continue,
    Stop,
}

impl Reactor {
    /// Binds the listener (if any). Returns the reactor and the bound address.
    pub fn new(config: TransportConfig) -> io::Result<(Reactor, SocketAddr)> {
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
        let pending: Vec<ConnId> =
            self.conns.iter().filter(|(_, conn)| !conn.out.is_empty()).map(|(id, _)| *id).collect();
        for id in pending {
            self.flush_conn(id);
        }
        self.conns.values().filter(|conn| conn.state == State::Open).all(|conn| conn.out.is_empty())
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

    fn new_conn(&mut self, mut stream: TcpStream, state: State, peer: Option<PeerId>) -> io::Result<ConnId> {
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
                self.fail(id, ProtocolError::new(ErrorCode::Overloaded, message));
            }
        }
    }

    fn on_writable(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        if conn.state == State::Connecting {
            let status = match conn.stream.take_error() {
                Ok(Some(err)) | Err(err) => Err(err),
                Ok(None) => match conn.stream.peer_addr() {
                    Ok(_) => Ok(true),
                    Err(err) if err.kind() == io::ErrorKind::NotConnected => Ok(false),
                    Err(err) => Err(err),
                },
            };
            match status {
                Ok(false) => return,
                Ok(true) => {
                    let _ = conn.stream.set_nodelay(true);
                    conn.state = State::AwaitWelcome;
                    conn.out_bytes += self.hello.len();
                    conn.out.push_back(self.hello.clone());
                }
                Err(err) => {
                    tracing::debug!(conn = id, "connect failed: {err}");
                    self.drop_conn(id);
                    return;
                }
            }
        }
        self.flush_conn(id);
    }

    /// Reads what `id` has, up to the budget. A read shorter than the buffer drained the
    /// socket, and data arriving later raises a new edge, so the loop stops there instead
    /// of paying one more system call for `WouldBlock` (as tokio does). Not when the peer
    /// may have closed or the edge was consumed earlier (`read_to_block`): an end of stream
    /// already signalled raises no further edge.
    fn read_conn(&mut self, id: ConnId, read_to_block: bool) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        if conn.state == State::Connecting {
            return;
        }
        let mut budget = READ_BUDGET;
        let mut lost = None;
        loop {
            match conn.stream.read(&mut self.scratch) {
                Ok(0) => {
                    lost = Some("closed by peer".to_string());
                    break;
                }
                Ok(n) => {
                    if conn.state != State::Closing {
                        conn.inbuf.extend_from_slice(&self.scratch[..n]);
                    }
                    budget = budget.saturating_sub(n);
                    if budget == 0 {
                        self.read_pending.push(id);
                        break;
                    }
                    if n < self.scratch.len() && !read_to_block {
                        break;
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    lost = Some(err.to_string());
                    break;
                }
            }
        }
        // Frames that arrived before an EOF still count.
        self.decode_frames(id);
        let Some(reason) = lost else { return };
        let Some(conn) = self.conns.get(&id) else { return };
        if conn.state != State::Closing && !conn.inbuf.is_empty() {
            // The peer may still read: tell it its last frame was cut short.
            let message = format!("connection closed in the middle of a frame ({} bytes buffered)", conn.inbuf.len());
            self.fail(id, ProtocolError::new(ErrorCode::Malformed, message));
            if self.conns.get(&id).is_some_and(|conn| !conn.out.is_empty()) {
                return; // the linger deadline closes it
            }
        }
        tracing::debug!(conn = id, "connection lost: {reason}");
        self.drop_conn(id);
    }

    fn decode_frames(&mut self, id: ConnId) {
        loop {
            let Some(conn) = self.conns.get_mut(&id) else { return };
            if conn.state == State::Closing {
                return;
            }
            match conn.decoder.decode(&mut conn.inbuf) {
                Ok(Some(frame)) => self.on_frame(id, frame),
                Ok(None) => return,
                Err(err) => {
                    tracing::warn!(conn = id, "protocol error: {err}");
                    self.fail(id, err);
                    return;
                }
            }
        }
    }

    fn on_frame(&mut self, id: ConnId, frame: Frame) {
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

    fn check_hello(&self, hello: &Hello) -> Result<(), String> {
        let me = &self.config.me;
        if hello.cluster != me.cluster {
            return Err(format!("cluster '{}' does not match '{}'", hello.cluster, me.cluster));
        }
        if !self.config.accept_roles.contains(&hello.role) {
            return Err(format!("role {} not accepted by a {}", hello.role, me.role));
        }
        Ok(())
    }

    /// Sends an error frame and closes the connection once it is flushed.
    fn fail(&mut self, id: ConnId, error: ProtocolError) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        if conn.state == State::Closing {
            return;
        }
        conn.state = State::Closing;
        conn.inbuf = BytesMut::new();
        let frame = error.to_frame().to_bytes();
        conn.out_bytes += frame.len();
        conn.out.push_back(frame);
        let (peer, reported) = (conn.peer, conn.reported);
        self.linger_deadlines.push_back((Instant::now() + LINGER, id));
        self.lost(id, peer, reported);
        self.flush_conn(id);
    }

    /// Removes a connection at once.
    fn drop_conn(&mut self, id: ConnId) {
        let Some(mut conn) = self.conns.remove(&id) else { return };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        if conn.state != State::Closing {
            self.lost(id, conn.peer, conn.reported);
        }
    }

    /// Reports a connection's loss and schedules a peer's reconnect.
    fn lost(&mut self, id: ConnId, peer: Option<PeerId>, reported: bool) {
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

    fn flush_conn(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        conn.dirty = false;
        if conn.state == State::Connecting {
            return;
        }
        let mut failed = None;
        while !conn.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let mut count = 0;
            for (slot, chunk) in slices.iter_mut().zip(conn.out.iter()) {
                *slot = IoSlice::new(chunk);
                count += 1;
            }
            match conn.stream.write_vectored(&slices[..count]) {
                Ok(0) => {
                    failed = Some("write returned 0".to_string());
                    break;
                }
                Ok(mut written) => {
                    conn.out_bytes -= written;
                    while written > 0 {
                        let front = conn.out.front_mut().expect("written bytes were queued");
                        if front.len() <= written {
                            written -= front.len();
                            conn.out.pop_front();
                        } else {
                            front.advance(written);
                            written = 0;
                        }
                    }
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    failed = Some(err.to_string());
                    break;
                }
            }
        }
        if failed.is_none() && conn.state == State::Closing && conn.out.is_empty() && !conn.write_shut {
            conn.write_shut = true;
            let _ = conn.stream.shutdown(Shutdown::Write);
        }
        if let Some(reason) = failed {
            tracing::debug!(conn = id, "write failed: {reason}");
            self.drop_conn(id);
        }
    }

    fn flush_dirty(&mut self) {
        for id in std::mem::take(&mut self.dirty) {
            self.flush_conn(id);
        }
    }

    fn close_after_flush(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        if conn.state == State::Closing {
            return;
        }
        conn.state = State::Closing;
        let (peer, reported) = (conn.peer, conn.reported);
        self.linger_deadlines.push_back((Instant::now() + LINGER, id));
        if let Some(peer) = peer
            && reported
        {
            self.batch.push(Inbound::PeerDown { peer });
        } else if reported {
            self.batch.push(Inbound::Closed { conn: id });
        }
        self.flush_conn(id);
    }

    fn queue(&mut self, id: ConnId, frame: Bytes) {
        let Some(conn) = self.conns.get_mut(&id) else {
            tracing::trace!(conn = id, "dropping frame for a closed connection");
            return;
        };
        if conn.state != State::Open || frame.is_empty() {
            return;
        }
        conn.out_bytes += frame.len();
        conn.out.push_back(frame);
        if conn.out_bytes > self.config.max_outbound_bytes_per_conn {
            tracing::warn!(
                conn = id,
                "disconnecting a slow reader: {} bytes unsent exceed the limit of {}",
                conn.out_bytes,
                self.config.max_outbound_bytes_per_conn
            );
            self.drop_conn(id);
            return;
        }
        mark_dirty(conn, id, &mut self.dirty);
    }

    fn connect_peer(&mut self, peer_id: PeerId) {
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

fn mark_dirty(conn: &mut Conn, id: ConnId, dirty: &mut Vec<ConnId>) {
    if !conn.dirty {
        conn.dirty = true;
        dirty.push(id);
    }
}
