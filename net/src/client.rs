//! The client library: blocking `std::net`, no event loop.
//!
//! [`Client`] runs one transaction at a time and retries it until it has an outcome;
//! [`Pipeline`] keeps many transactions outstanding on one connection for load generation.
//! Each registers a session once, when it connects (the coordinator assigns the `ClientId`,
//! bound to the connection's identity: for now the Hello's node name, kept across
//! reconnects), and keeps a transaction's `(client, seq)` across every retry, resend and
//! reconnect, so the coordinator's session table turns a retry into the recorded outcome,
//! never a second execution. A session the coordinator no longer has is reported as
//! [`ClientError::SessionExpired`]: whether its requests ran is then unknown, and they never
//! run again.
//!
//! Hot path (the load generator drives ~100,000 transactions/s through a few pipelines):
//! submits are encoded straight into one reused buffer and written with one `write` per
//! flush; replies are read in 64 KiB chunks and decoded a whole frame at a time.
//!
//! Security ([`ClientOptions::security`]): with TLS the connection is a blocking
//! `rustls::StreamOwned` over the `TcpStream`, the server is verified against the cluster CA
//! under the name [`SERVER_NAME`](crate::SERVER_NAME), and the `Hello` claims the cluster and
//! name of the client's certificate (the server refuses any other claim).

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use twophase_engine::message::{SagaStep, SagaSubmit};
use twophase_engine::{
    ClientId, Epoch, Op, Outcome, ParticipantId, RegisterRefusal, RejectReason, Reply, Seq, Submit, TxId,
};

use crate::endpoints::Endpoints;
use crate::frame::{
    BatchItem, BatchWriter, ErrorCode, Frame, FrameDecoder, Hello, MessageTooLarge, NetLimits, NotLeader,
    ProtocolError, Role,
};
use crate::tls::Security;

#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// The cluster name the server must have (default `local`).
    pub cluster: String,
    /// A session to resume instead of registering one (requests number from 1 again: only
    /// for retrying the requests of a client that was cut off). It must have been registered
    /// under the same `identity`.
    pub client_id: Option<ClientId>,
    /// Under `InsecurePlaintext`: the name this client presents (the Hello's node name),
    /// which its sessions are bound to; `client-<random>` when `None`. Kept across
    /// reconnects. With TLS it is ignored: the identity is the name the certificate proves.
    pub identity: Option<String>,
    /// How long to wait for a reply (or, for a pipeline, for any progress) before the
    /// connection is presumed dead and the request resent on a new one.
    pub request_timeout: Duration,
    /// Pause before resending a request the coordinator turned away as `Busy`.
    pub busy_backoff: Duration,
    /// Sends of one request (client), or consecutive failed connections (pipeline), before
    /// giving up. Following a follower's `NotLeader` to the leader is not counted: that
    /// search is bounded by `failover_timeout`.
    pub max_attempts: u32,
    /// How long to look for a node that serves (a replicated group's leader, or a
    /// restarting coordinator) while every connection fails or is turned away, before
    /// giving up with [`ClientError::NoLeader`].
    pub failover_timeout: Duration,
    /// Mutual TLS with a certificate whose role the server accepts, or insecure plaintext
    /// (the default, which a TLS server refuses with `Unauthenticated`). With TLS the
    /// cluster and the name sent in `Hello` are the certificate's; `cluster` is not used.
    pub security: Security,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            cluster: "local".into(),
            client_id: None,
            identity: None,
            request_timeout: Duration::from_secs(5),
            busy_backoff: Duration::from_millis(10),
            max_attempts: 10,
            failover_timeout: Duration::from_secs(10),
            security: Security::InsecurePlaintext,
        }
    }
}

#[derive(Debug)]
pub enum ClientError {
    /// The server sent an `Error` frame (e.g. the handshake was refused).
    Refused {
        code: ErrorCode,
        message: String,
    },
    /// No participant of that name in the coordinator's directory.
    UnknownParticipant {
        name: String,
        known: Vec<String>,
    },
    /// No reply within the request timeout.
    Timeout {
        after: Duration,
    },
    Io(io::Error),
    /// The server sent bytes this client cannot decode or did not expect.
    Protocol(ProtocolError),
    /// The transaction is too large for any frame the server accepts.
    TooLarge(MessageTooLarge),
    /// The request breaks the coordinator's limits (its `Welcome`): a key or value too
    /// long, too many ops. Not sent: the coordinator would refuse the whole frame.
    Invalid {
        detail: String,
    },
    /// The coordinator no longer remembers this sequence number's outcome.
    SeqTooOld {
        seq: Seq,
    },
    /// The TLS handshake or a TLS record failed (e.g. the server's certificate is not signed
    /// by our CA); retrying does not help.
    Tls(String),
    /// The coordinator has no such session (it expired, or was never registered): whether
    /// the request ran before is unknown, and it never runs under this session.
    SessionExpired {
        client: ClientId,
        seq: Seq,
    },
    /// The session belongs to another identity than this connection's.
    NotSessionOwner {
        client: ClientId,
    },
    /// The coordinator refused to open a session.
    RegisterRefused {
        reason: RegisterRefusal,
    },
    /// A follower of a replicated coordinator group: not the leader (it names the leader
    /// when it knows it). The client follows it by itself; this surfaces only from
    /// connections opened without that (admin requests).
    NotLeader(NotLeader),
    /// No node of `addrs` served within the failover time: each was unreachable, closed
    /// the connection or was a follower without a leader.
    NoLeader {
        after: Duration,
        addrs: Vec<SocketAddr>,
        /// The last failure, as text.
        last: String,
    },
    /// An interactive transaction was open on one coordinator node and the connection
    /// moved to another (the leader died or stepped down): the transaction is over there
    /// (its locks go with the abandoned-transaction timeout) and was not run again here.
    /// If a commit was in flight, whether it committed is unknown.
    CoordinatorChanged {
        txid: TxId,
        from: Option<SocketAddr>,
        to: Option<SocketAddr>,
    },
    /// Every attempt failed; `last` is the last failure.
    GaveUp {
        attempts: u32,
        last: Box<ClientError>,
    },
}

impl fmt::Display for ClientError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientError::Refused { code, message } => write!(f, "refused by the server ({code}): {message}"),
            ClientError::UnknownParticipant { name, known } => {
                write!(f, "unknown participant '{name}'; the coordinator knows: {}", known.join(", "))
            }
            ClientError::Timeout { after } => write!(f, "no reply within {after:?}"),
            ClientError::Io(err) => write!(f, "I/O error: {err}"),
            ClientError::Protocol(err) => write!(f, "protocol error from the server: {err}"),
            ClientError::TooLarge(err) => write!(f, "transaction too large: {err}"),
            ClientError::Invalid { detail } => write!(f, "not sent, beyond the coordinator's limits: {detail}"),
            ClientError::Tls(message) => write!(f, "TLS failure: {message}"),
            ClientError::SeqTooOld { seq } => {
                write!(f, "the coordinator no longer remembers the outcome of request {seq}")
            }
            ClientError::SessionExpired { client, seq } => write!(
                f,
                "session {:#x} expired (request {seq} was not run now; whether it ran before is unknown)",
                client.0
            ),
            ClientError::NotSessionOwner { client } => {
                write!(f, "session {:#x} belongs to another identity than this connection's", client.0)
            }
            ClientError::RegisterRefused { reason } => write!(f, "the coordinator refused a session: {reason:?}"),
            ClientError::NotLeader(not_leader) => not_leader.fmt(f),
            ClientError::NoLeader { after, addrs, last } => {
                let addrs: Vec<String> = addrs.iter().map(SocketAddr::to_string).collect();
                write!(f, "no coordinator of {} served within {after:?}; last error: {last}", addrs.join(", "))
            }
            ClientError::CoordinatorChanged { txid, from, to } => write!(
                f,
                "transaction {txid} was open on coordinator {} and the connection moved to {}: it is \
                 over (not run again; if a commit was in flight, its outcome is unknown)",
                describe_addr(*from),
                describe_addr(*to)
            ),
            ClientError::GaveUp { attempts, last } => {
                write!(f, "gave up after {attempts} attempts; last error: {last}")
            }
        }
    }
}

impl std::error::Error for ClientError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ClientError::Io(err) => Some(err),
            ClientError::GaveUp { last, .. } => Some(last.as_ref()),
            _ => None,
        }
    }
}

impl From<io::Error> for ClientError {
    /// rustls reports its own failures as `io::Error`s wrapping a `rustls::Error`; those
    /// become [`ClientError::Tls`].
    fn from(err: io::Error) -> ClientError {
        match err.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            Some(tls) => ClientError::Tls(tls.to_string()),
            None => ClientError::Io(err),
        }
    }
}

impl From<ProtocolError> for ClientError {
    fn from(err: ProtocolError) -> ClientError {
        ClientError::Protocol(err)
    }
}

impl From<MessageTooLarge> for ClientError {
    fn from(err: MessageTooLarge) -> ClientError {
        ClientError::TooLarge(err)
    }
}

/// Refuses `ops` that the coordinator's decoder would refuse (`Limits::check_sizes` of its
/// `Welcome`), before they are encoded: the request is not sent.
pub(crate) fn check_sizes(limits: &NetLimits, ops: &[Op]) -> Result<(), ClientError> {
    limits.engine.check_sizes(ops).map_err(|detail| ClientError::Invalid { detail })
}

/// [`check_sizes`] of every step's action and compensation; what is wrong, in words.
pub(crate) fn check_saga_sizes(limits: &NetLimits, steps: &[SagaStep]) -> Result<(), String> {
    for (index, step) in steps.iter().enumerate() {
        limits.engine.check_sizes(&step.action).map_err(|detail| format!("step {index}: {detail}"))?;
        limits.engine.check_sizes(&step.compensation).map_err(|detail| format!("compensation {index}: {detail}"))?;
    }
    Ok(())
}

impl ClientError {
    /// Whether a new connection may fix it.
    pub(crate) fn is_transient(&self) -> bool {
        match self {
            ClientError::Io(_) | ClientError::Timeout { .. } | ClientError::NotLeader(_) => true,
            ClientError::Refused { code, .. } => *code == ErrorCode::Overloaded,
            _ => false,
        }
    }
}

fn describe_addr(addr: Option<SocketAddr>) -> String {
    addr.map_or_else(|| "(none)".to_string(), |addr| addr.to_string())
}

const READ_CHUNK: usize = 64 * 1024;

/// The byte stream under a connection.
pub(crate) enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Stream {
    fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(stream) => stream,
            Stream::Tls(tls) => &tls.sock,
        }
    }

    /// Whether rustls holds decrypted input already, readable without the socket.
    fn has_buffered_input(&mut self) -> bool {
        match self {
            Stream::Plain(_) => false,
            // An error is reported by the next read.
            Stream::Tls(tls) => {
                tls.conn.process_new_packets().map_or(true, |state| state.plaintext_bytes_to_read() > 0)
            }
        }
    }

    /// Writes all of `bytes` (and, with TLS, every record they make) to the socket.
    pub(crate) fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(stream) => stream.write_all(bytes),
            Stream::Tls(tls) => {
                tls.write_all(bytes)?;
                tls.flush()
            }
        }
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(stream) => stream.read(buf),
            Stream::Tls(tls) => tls.read(buf),
        }
    }
}

/// One handshaken connection to a coordinator.
pub(crate) struct Connection {
    pub(crate) stream: Stream,
    decoder: FrameDecoder,
    inbuf: BytesMut,
    scratch: Vec<u8>,
    server_limits: NetLimits,
    directory: Directory,
    /// A `NotLeader` decoded behind frames that were handed out first: the next read's error.
    not_leader: Option<NotLeader>,
}

impl Connection {
    pub(crate) fn open(
        addrs: &[SocketAddr],
        options: &ClientOptions,
        identity: &str,
        role: Role,
    ) -> Result<Connection, ClientError> {
        let mut last = None;
        for addr in addrs {
            match TcpStream::connect_timeout(addr, options.request_timeout) {
                Ok(stream) => return Connection::handshake(stream, options, identity, role),
                Err(err) => last = Some(err),
            }
        }
        Err(ClientError::Io(
            last.unwrap_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no address to connect to")),
        ))
    }

    pub(crate) fn handshake(
        stream: TcpStream,
        options: &ClientOptions,
        identity: &str,
        role: Role,
    ) -> Result<Connection, ClientError> {
        stream.set_nodelay(true)?;
        let (stream, cluster, node) = match &options.security {
            Security::InsecurePlaintext => (Stream::Plain(stream), options.cluster.clone(), identity.to_string()),
            Security::Tls(material) => {
                // rustls reads whole records; a server that stops mid-record must not hang us,
                // nor one that trickles the handshake a byte at a time: one deadline for all.
                stream.set_read_timeout(Some(options.request_timeout))?;
                stream.set_write_timeout(Some(options.request_timeout))?;
                let mut tls = rustls::StreamOwned::new(material.connect()?, stream);
                complete_tls_handshake(&mut tls, options.request_timeout)?;
                tls.sock.set_read_timeout(Some(options.request_timeout))?;
                let identity = material.identity();
                (Stream::Tls(Box::new(tls)), identity.cluster.clone(), identity.name.clone())
            }
        };
        let mut conn = Connection {
            stream,
            decoder: FrameDecoder::new(NetLimits::default()),
            inbuf: BytesMut::with_capacity(READ_CHUNK),
            scratch: vec![0; READ_CHUNK],
            server_limits: NetLimits::default(),
            directory: Directory::default(),
            not_leader: None,
        };
        let hello = Hello { role, cluster: cluster.clone(), node, epoch: Epoch(0) };
        conn.stream.send(&Frame::Hello(hello).to_bytes())?;
        let deadline = Instant::now() + options.request_timeout;
        let mut frames = Vec::new();
        loop {
            conn.read_frames(deadline, &mut frames)?;
            // A NotLeader behind the Welcome stays in `conn` for the first request's read.
            if let Some(frame) = frames.drain(..).next() {
                return match frame {
                    Frame::Welcome(welcome) => {
                        if welcome.cluster != cluster {
                            return Err(ClientError::Protocol(ProtocolError::new(
                                ErrorCode::HandshakeRefused,
                                format!("server is in cluster '{}', not '{cluster}'", welcome.cluster),
                            )));
                        }
                        conn.server_limits = welcome.limits;
                        conn.directory = Directory { participants: welcome.directory };
                        Ok(conn)
                    }
                    Frame::Error(error) => Err(ClientError::Refused { code: error.code, message: error.message }),
                    other => Err(ClientError::Protocol(ProtocolError::new(
                        ErrorCode::UnexpectedFrame,
                        format!("expected Welcome, got {:?}", other.kind()),
                    ))),
                };
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout { after: options.request_timeout });
            }
        }
    }

    /// One read (waiting at most until `deadline`), then every whole frame decoded from what
    /// has arrived. Returns with no frames on timeout; an EOF is an error.
    ///
    /// A follower's `NotLeader` is returned as [`ClientError::NotLeader`] (after the frames
    /// decoded before it, by the next call), so every request loop follows it alike.
    pub(crate) fn read_frames(&mut self, deadline: Instant, frames: &mut Vec<Frame>) -> Result<(), ClientError> {
        if let Some(not_leader) = self.not_leader.take() {
            return Err(ClientError::NotLeader(not_leader));
        }
        let before = frames.len();
        self.decode_buffered(frames)?;
        if frames.len() > before {
            return Ok(());
        }
        if !self.stream.has_buffered_input()
            && !wait_readable(self.stream.tcp(), deadline.saturating_duration_since(Instant::now()))?
        {
            return Ok(());
        }
        match self.stream.read(&mut self.scratch) {
            Ok(0) => return Err(ClientError::Io(io::Error::new(io::ErrorKind::UnexpectedEof, "server closed"))),
            Ok(n) => self.inbuf.extend_from_slice(&self.scratch[..n]),
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) =>
            {
                return Ok(());
            }
            Err(err) => return Err(err.into()),
        }
        self.decode_buffered(frames)
    }

    /// Every whole frame buffered, up to a `NotLeader`: that one is an error now when no
    /// frame came before it, or at the next read.
    fn decode_buffered(&mut self, frames: &mut Vec<Frame>) -> Result<(), ClientError> {
        let before = frames.len();
        while let Some(frame) = self.decoder.decode(&mut self.inbuf)? {
            match frame {
                Frame::NotLeader(not_leader) if frames.len() == before => {
                    return Err(ClientError::NotLeader(not_leader));
                }
                Frame::NotLeader(not_leader) => {
                    self.not_leader = Some(not_leader);
                    return Ok(());
                }
                frame => frames.push(frame),
            }
        }
        Ok(())
    }
}

/// Drives the client's TLS handshake to its end within `timeout` in all. rustls's own
/// `complete_io` reads until the handshake is done with only a per-read timeout, so a
/// server sending its flight a byte at a time could hold the client as long as it liked.
fn complete_tls_handshake(
    tls: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    timeout: Duration,
) -> Result<(), ClientError> {
    let deadline = Instant::now() + timeout;
    loop {
        while tls.conn.wants_write() {
            tls.conn.write_tls(&mut tls.sock).map_err(tls_handshake_error)?;
        }
        if !tls.conn.is_handshaking() {
            return Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ClientError::Timeout { after: timeout });
        }
        tls.sock.set_read_timeout(Some(left))?;
        match tls.conn.read_tls(&mut tls.sock) {
            Ok(0) => {
                let eof = io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed during the TLS handshake");
                return Err(ClientError::Io(eof));
            }
            Ok(_) => {
                if let Err(err) = tls.conn.process_new_packets() {
                    // Best effort: the alert rustls queued tells the server why.
                    let _ = tls.conn.write_tls(&mut tls.sock);
                    return Err(tls_handshake_error(io::Error::new(io::ErrorKind::InvalidData, err)));
                }
            }
            Err(err) if matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(ClientError::Timeout { after: timeout });
            }
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(tls_handshake_error(err)),
        }
    }
}

/// A failed TLS handshake, with a hint when the server does not speak TLS at all.
fn tls_handshake_error(err: io::Error) -> ClientError {
    match ClientError::from(err) {
        ClientError::Tls(message) if message.contains("corrupt message") => {
            ClientError::Tls(format!("{message} (is the server running with --insecure-plaintext?)"))
        }
        other => other,
    }
}

pub(crate) fn resolve(addr: impl ToSocketAddrs) -> Result<Vec<SocketAddr>, ClientError> {
    let addrs: Vec<SocketAddr> = addr.to_socket_addrs()?.collect();
    if addrs.is_empty() {
        return Err(ClientError::Io(io::Error::new(io::ErrorKind::InvalidInput, "address resolved to nothing")));
    }
    Ok(addrs)
}

/// The identity a client presents: the configured one, or a fresh random name.
fn pick_identity(options: &ClientOptions) -> String {
    options.identity.clone().unwrap_or_else(|| format!("client-{:016x}", rand::random::<u64>()))
}

/// The session to use on a fresh connection: the one to resume, or a new one registered now
/// (once per `Client` or `Pipeline`; reconnects keep it).
fn open_session(conn: &mut Connection, options: &ClientOptions) -> Result<ClientId, ClientError> {
    if let Some(client) = options.client_id {
        return Ok(client);
    }
    let nonce: u64 = rand::random();
    let mut writer = BatchWriter::<Submit>::new(&conn.server_limits);
    writer.push(&Submit::register(nonce))?;
    conn.stream.send(writer.finish())?;
    let deadline = Instant::now() + options.request_timeout;
    let mut frames = Vec::new();
    loop {
        conn.read_frames(deadline, &mut frames)?;
        for frame in frames.drain(..) {
            match frame {
                Frame::Replies(replies) => {
                    for reply in replies {
                        match reply {
                            Reply::Registered { nonce: answered, client } if answered == nonce => return Ok(client),
                            Reply::RegisterRefused { nonce: answered, reason } if answered == nonce => {
                                return Err(ClientError::RegisterRefused { reason });
                            }
                            _ => {} // Not ours.
                        }
                    }
                }
                Frame::Error(error) => return Err(ClientError::Refused { code: error.code, message: error.message }),
                other => {
                    return Err(ClientError::Protocol(ProtocolError::new(
                        ErrorCode::UnexpectedFrame,
                        format!("expected Replies, got {:?}", other.kind()),
                    )));
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(ClientError::Timeout { after: options.request_timeout });
        }
    }
}

/// Connects to the node that serves and opens (or resumes) the session there, following
/// `NotLeader` answers to the registration.
fn connect_with_session(
    endpoints: &mut Endpoints,
    options: &ClientOptions,
    identity: &str,
) -> Result<(Connection, ClientId), ClientError> {
    loop {
        let mut conn = endpoints.connect(options, identity, Role::Client)?;
        match open_session(&mut conn, options) {
            Ok(client) => {
                endpoints.served();
                return Ok((conn, client));
            }
            Err(ClientError::NotLeader(not_leader)) => endpoints.redirect(&not_leader),
            Err(err) => return Err(err),
        }
    }
}

/// A reply's error for the client, if it is a refusal of `(client, seq)` no retry can fix.
fn refusal(reply: &Reply) -> Option<ClientError> {
    match reply {
        Reply::Rejected { seq, reason: RejectReason::SeqTooOld, .. } => Some(ClientError::SeqTooOld { seq: *seq }),
        Reply::Rejected { client, seq, reason: RejectReason::SessionExpired } => {
            Some(ClientError::SessionExpired { client: *client, seq: *seq })
        }
        Reply::Rejected { client, reason: RejectReason::NotSessionOwner, .. } => {
            Some(ClientError::NotSessionOwner { client: *client })
        }
        _ => None,
    }
}

/// The error for a reply of another kind than the request asks for.
pub(crate) fn unexpected_reply(reply: &Reply) -> ClientError {
    ClientError::Protocol(ProtocolError::new(ErrorCode::UnexpectedFrame, format!("unexpected reply {reply:?}")))
}

/// The participants the coordinator announced in its `Welcome`, by id and name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Directory {
    participants: Vec<(ParticipantId, String)>,
}

impl Directory {
    pub fn participants(&self) -> &[(ParticipantId, String)] {
        &self.participants
    }

    /// The id of the participant called `name`.
    pub fn participant(&self, name: &str) -> Option<ParticipantId> {
        self.participants.iter().find(|(_, known)| known == name).map(|(id, _)| *id)
    }

    /// Like [`participant`](Self::participant), with an error naming the known participants.
    pub fn require_participant(&self, name: &str) -> Result<ParticipantId, ClientError> {
        self.participant(name).ok_or_else(|| ClientError::UnknownParticipant {
            name: name.to_string(),
            known: self.participants.iter().map(|(_, known)| known.clone()).collect(),
        })
    }
}

/// A blocking client: one transaction at a time, retried until it has an outcome.
pub struct Client {
    endpoints: Endpoints,
    options: ClientOptions,
    identity: String,
    client: ClientId,
    last_seq: Seq,
    conn: Option<Connection>,
    directory: Directory,
    writer: BatchWriter<Submit>,
    /// The frame of the request in flight, sent again on every attempt.
    request: Vec<u8>,
    /// The coordinator's limits, as of the first handshake.
    pub(crate) server_limits: NetLimits,
    frames: Vec<Frame>,
    /// A `TraceContext` frame sent before the request on every attempt (empty: none).
    trace_frame: Vec<u8>,
}

impl Client {
    /// Connects and handshakes as a client, learns the participant directory and limits, and
    /// registers a session (or resumes `options.client_id`).
    ///
    /// `addr` may name several nodes (`&[SocketAddr]`, e.g. every member of a replicated
    /// coordinator group; one reachable member is enough): the client connects to the
    /// leader, following a follower's `NotLeader`, and moves to the new leader when its node
    /// dies, resending the request in flight under the same `(client, seq)`.
    pub fn connect(addr: impl ToSocketAddrs, options: ClientOptions) -> Result<Client, ClientError> {
        let mut endpoints = Endpoints::new(resolve(addr)?);
        let identity = pick_identity(&options);
        let (conn, client) = connect_with_session(&mut endpoints, &options, &identity)?;
        Ok(Client {
            endpoints,
            identity,
            client,
            last_seq: 0,
            directory: conn.directory.clone(),
            writer: BatchWriter::new(&conn.server_limits),
            request: Vec::new(),
            server_limits: conn.server_limits,
            conn: Some(conn),
            options,
            frames: Vec::new(),
            trace_frame: Vec::new(),
        })
    }

    pub fn client_id(&self) -> ClientId {
        self.client
    }

    /// How many times the connection moved to another coordinator node.
    pub(crate) fn node_changes(&self) -> u64 {
        self.endpoints.node_changes()
    }

    /// The coordinator node the latest connection went to (the leader, in a group).
    pub fn coordinator(&self) -> Option<SocketAddr> {
        self.endpoints.current()
    }

    /// The identity this client's connections present.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The coordinator's participants, as of the latest handshake.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// [`submit`](Self::submit) with a W3C `traceparent` (at most
    /// [`MAX_TRACEPARENT_BYTES`](crate::MAX_TRACEPARENT_BYTES)) sent in a `TraceContext`
    /// frame just before the request on every attempt, so the coordinator's spans of this
    /// transaction become children of the caller's span.
    pub fn submit_traced(&mut self, ops: Vec<Op>, traceparent: bytes::Bytes) -> Result<Outcome, ClientError> {
        check_traceparent(&traceparent)?;
        let key = crate::TraceKey::Submit { client: self.client, seq: self.last_seq + 1 };
        crate::encode_trace_context(&mut self.trace_frame, &[crate::TraceEntry { key, traceparent }]);
        let result = self.submit(ops);
        self.trace_frame.clear();
        result
    }

    /// Runs one transaction under the next sequence number. `Busy` → waits `busy_backoff`
    /// and resends; an I/O error or timeout → reconnects and resends; always the same
    /// `(client, seq)`. Gives up after `max_attempts` sends.
    pub fn submit(&mut self, ops: Vec<Op>) -> Result<Outcome, ClientError> {
        check_sizes(&self.server_limits, &ops)?;
        let seq = self.next_seq();
        self.writer.clear();
        self.writer.push(&Submit { client: self.client, seq, ops })?;
        let mut request = std::mem::take(&mut self.request);
        request.clear();
        request.extend_from_slice(self.writer.finish());
        self.writer.clear();
        let reply = self.exchange(seq, &request, None);
        self.request = request;
        match reply? {
            Reply::Outcome { outcome, .. } => Ok(outcome),
            other => Err(unexpected_reply(&other)),
        }
    }

    /// The sequence number of the next request (each is used once, retries keep theirs).
    pub(crate) fn next_seq(&mut self) -> Seq {
        self.last_seq += 1;
        self.last_seq
    }

    /// Sends `request` (whole frames of one request numbered `seq`) until the coordinator
    /// answers it with anything but `Busy`, and returns that reply. `Busy` → waits
    /// `busy_backoff` and resends; an I/O error or timeout → reconnects and resends; always
    /// the same `(client, seq)`. Gives up after `max_attempts` sends.
    ///
    /// `pinned` (an interactive transaction's node, by [`node_changes`](Self::node_changes)):
    /// once the connection moved to another node, fail with
    /// [`ClientError::CoordinatorChanged`] instead of sending there.
    pub(crate) fn exchange(
        &mut self,
        seq: Seq,
        request: &[u8],
        pinned: Option<(TxId, u64, Option<SocketAddr>)>,
    ) -> Result<Reply, ClientError> {
        let mut last: Option<ClientError> = None;
        let mut attempt = 1;
        while attempt <= self.options.max_attempts {
            if attempt > 1 {
                tracing::debug!(client = self.client.0, seq, attempt, "retrying: {}", last.as_ref().expect("failure"));
            }
            match self.attempt(seq, request, pinned) {
                Ok(Some(reply)) => return Ok(reply),
                Err(ClientError::NotLeader(not_leader)) => {
                    // Not an attempt: the search for the leader is bounded by its own time.
                    self.conn = None;
                    self.endpoints.redirect(&not_leader);
                    last = Some(ClientError::NotLeader(not_leader));
                    continue;
                }
                Ok(None) => {
                    last = Some(ClientError::Refused {
                        code: ErrorCode::Overloaded,
                        message: format!("request {seq} turned away as busy"),
                    });
                    std::thread::sleep(self.options.busy_backoff);
                }
                Err(err) if err.is_transient() => {
                    self.conn = None;
                    last = Some(err);
                    std::thread::sleep(self.options.busy_backoff);
                }
                Err(err) => {
                    self.conn = None;
                    return Err(err);
                }
            }
            attempt += 1;
        }
        Err(ClientError::GaveUp {
            attempts: self.options.max_attempts,
            last: Box::new(last.unwrap_or(ClientError::Timeout { after: self.options.request_timeout })),
        })
    }

    /// Writes `request` on the current connection, if there is one, without waiting for the
    /// reply (which a later request skips as not its own): for best-effort requests only.
    pub(crate) fn send_without_reply(&mut self, request: &[u8]) {
        if let Some(conn) = self.conn.as_mut()
            && let Err(err) = conn.stream.send(request)
        {
            tracing::debug!(client = self.client.0, "a best-effort request was not sent: {err}");
            self.conn = None;
        }
    }

    /// One send and wait: `Ok(None)` means Busy.
    fn attempt(
        &mut self,
        seq: Seq,
        request: &[u8],
        pinned: Option<(TxId, u64, Option<SocketAddr>)>,
    ) -> Result<Option<Reply>, ClientError> {
        if self.conn.is_none() {
            let conn = self.endpoints.connect(&self.options, &self.identity, Role::Client)?;
            self.directory = conn.directory.clone();
            self.conn = Some(conn);
        }
        if let Some((txid, node, from)) = pinned
            && self.endpoints.node_changes() != node
        {
            return Err(ClientError::CoordinatorChanged { txid, from, to: self.endpoints.current() });
        }
        let conn = self.conn.as_mut().expect("connected");
        if !self.trace_frame.is_empty() {
            conn.stream.send(&self.trace_frame)?;
        }
        conn.stream.send(request)?;
        let deadline = Instant::now() + self.options.request_timeout;
        loop {
            conn.read_frames(deadline, &mut self.frames)?;
            for frame in self.frames.drain(..) {
                match frame {
                    Frame::Replies(replies) => {
                        for reply in replies {
                            if reply.request() != Some((self.client, seq)) {
                                continue; // a late answer to an earlier attempt
                            }
                            self.endpoints.served();
                            if let Some(err) = refusal(&reply) {
                                return Err(err);
                            }
                            return match reply {
                                Reply::Rejected { reason: RejectReason::Busy, .. } => Ok(None),
                                other => Ok(Some(other)),
                            };
                        }
                    }
                    Frame::Error(error) => {
                        return Err(ClientError::Refused { code: error.code, message: error.message });
                    }
                    other => {
                        return Err(ClientError::Protocol(ProtocolError::new(
                            ErrorCode::UnexpectedFrame,
                            format!("expected Replies, got {:?}", other.kind()),
                        )));
                    }
                }
            }
            if Instant::now() >= deadline {
                return Err(ClientError::Timeout { after: self.options.request_timeout });
            }
        }
    }
}

/// Waits at most `wait` for `stream` to have input (or an error or EOF to report); false on
/// timeout. Why not a socket read timeout: `SO_RCVTIMEO` counts in jiffies (4 ms on a HZ=250
/// kernel), so an open-loop sender waiting for its next send time would oversleep by up to
/// that much and report the delay as server latency; `ppoll` sleeps on an hrtimer.
fn wait_readable(stream: &TcpStream, wait: Duration) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let mut pollfd = libc::pollfd { fd: stream.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    let timeout = libc::timespec {
        tv_sec: libc::time_t::try_from(wait.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_nsec: libc::c_long::from(wait.subsec_nanos() as i32),
    };
    // SAFETY: one valid pollfd, a valid timespec, no signal mask; nothing is retained.
    let ready = unsafe { libc::ppoll(&mut pollfd, 1, &timeout, std::ptr::null()) };
    match ready {
        0 => Ok(false),
        n if n > 0 => Ok(true),
        _ => {
            let err = io::Error::last_os_error();
            if err.kind() == io::ErrorKind::Interrupted { Ok(false) } else { Err(err) }
        }
    }
}

/// A traceparent must fit a `TraceContext` entry's one-byte length.
fn check_traceparent(traceparent: &[u8]) -> Result<(), ClientError> {
    if traceparent.len() > crate::MAX_TRACEPARENT_BYTES {
        let message = format!("a traceparent of {} bytes is longer than the frame allows", traceparent.len());
        return Err(ClientError::Protocol(ProtocolError::new(ErrorCode::Malformed, message)));
    }
    Ok(())
}

/// `u8 tag | u64 client | u64 seq | u8 length | traceparent`: the largest submit entry.
const TRACE_ENTRY_BYTES_MAX: usize = 1 + 16 + 1 + crate::MAX_TRACEPARENT_BYTES;

/// `TraceContext` frames carrying `entries` (as many as the server's limits need), appended
/// to `out`.
fn encode_trace_frames(out: &mut Vec<u8>, entries: &[crate::TraceEntry], limits: &NetLimits) {
    // Frame header (length, version, kind) and the entry count.
    let room_bytes = (limits.max_frame_bytes as usize).saturating_sub(2 + 4);
    let per_frame = (room_bytes / TRACE_ENTRY_BYTES_MAX).min(limits.max_batch as usize).max(1);
    for chunk in entries.chunks(per_frame) {
        crate::encode_trace_context(out, chunk);
    }
}

/// Many transactions outstanding on one connection. [`send`](Self::send) buffers,
/// [`flush`](Self::flush) writes every buffered submit in as few frames as the server's
/// limits allow with one write, [`poll`](Self::poll) collects outcomes.
/// [`send_traced`](Self::send_traced) sends a request's trace context ahead of it (in a
/// `TraceContext` frame of the same write, and again with every resend).
///
/// The requests are one-shot transactions (`Submit`, the default) or sagas
/// (`Pipeline<SagaSubmit>`, opened with [`connect_sagas`](Pipeline::connect_sagas)): both
/// are answered by one outcome under their `(client, seq)`.
pub struct Pipeline<R: PipelinedRequest = Submit> {
    endpoints: Endpoints,
    options: ClientOptions,
    identity: String,
    client: ClientId,
    last_seq: Seq,
    conn: Option<Connection>,
    directory: Directory,
    /// The coordinator's limits (its `Welcome`), which every request is checked against.
    server_limits: NetLimits,
    writer: BatchWriter<R>,
    outstanding: HashMap<Seq, R>,
    /// Busy requests and when to resend them (in order: the backoff is constant).
    busy: VecDeque<(Instant, Seq)>,
    frames: Vec<Frame>,
    last_progress: Instant,
    deferred: Option<ClientError>,
    /// Traceparents of the outstanding traced requests (a subset of `outstanding`).
    traced: HashMap<Seq, bytes::Bytes>,
    /// Trace contexts of the buffered submits, sent before them by the next flush.
    trace_entries: Vec<crate::TraceEntry>,
    /// Where a flush with trace contexts puts its frames and the submits', for one write.
    traced_out: Vec<u8>,
}

/// Buffered submits beyond this many bytes are flushed by `send` itself.
const PIPELINE_AUTO_FLUSH_BYTES: usize = 1024 * 1024;

/// A request a [`Pipeline`] can keep outstanding: sent in batches, resent as it is under its
/// `(client, seq)` until its one outcome arrives.
pub trait PipelinedRequest: BatchItem + Clone {}

impl PipelinedRequest for Submit {}
impl PipelinedRequest for SagaSubmit {}

impl Pipeline<Submit> {
    /// Connects, handshakes and registers a session (or resumes `options.client_id`).
    /// `addr` may name several nodes of a coordinator group, as for [`Client::connect`]: the
    /// pipeline follows the leader and resends every outstanding transaction (same seqs)
    /// when it moves.
    pub fn connect(addr: impl ToSocketAddrs, options: ClientOptions) -> Result<Pipeline, ClientError> {
        Pipeline::open(addr, options)
    }

    /// Buffers a transaction under the next sequence number and returns that number.
    pub fn send(&mut self, ops: Vec<Op>) -> Result<Seq, ClientError> {
        check_sizes(&self.server_limits, &ops)?;
        self.send_request(|client, seq| Submit { client, seq, ops })
    }

    /// [`send`](Self::send) with a W3C `traceparent` (at most
    /// [`MAX_TRACEPARENT_BYTES`](crate::MAX_TRACEPARENT_BYTES)) sent in a `TraceContext`
    /// frame just before the request, on every send and resend, so the coordinator's spans
    /// of this transaction become children of the caller's span. Untraced requests put
    /// nothing more on the wire.
    pub fn send_traced(&mut self, ops: Vec<Op>, traceparent: bytes::Bytes) -> Result<Seq, ClientError> {
        check_traceparent(&traceparent)?;
        let seq = self.last_seq + 1;
        let key = crate::TraceKey::Submit { client: self.client, seq };
        // Queued first: a send that fills the buffer flushes it at once, context first.
        self.trace_entries.push(crate::TraceEntry { key, traceparent: traceparent.clone() });
        let result = self.send(ops);
        if self.outstanding.contains_key(&seq) {
            self.traced.insert(seq, traceparent);
        } else {
            self.trace_entries.retain(|entry| entry.key != key);
        }
        result
    }
}

impl Pipeline<SagaSubmit> {
    /// [`Pipeline::connect`] for a pipeline of sagas: many outstanding on one connection,
    /// each answered once it completed or was compensated (see [`crate::saga`]).
    pub fn connect_sagas(
        addr: impl ToSocketAddrs,
        options: ClientOptions,
    ) -> Result<Pipeline<SagaSubmit>, ClientError> {
        Pipeline::open(addr, options)
    }

    /// Buffers a saga under the next sequence number and returns that number. The
    /// coordinator checks the steps (limits, participants) and answers a malformed saga with
    /// `Aborted`.
    pub fn send_saga(&mut self, steps: Vec<SagaStep>) -> Result<Seq, ClientError> {
        check_saga_sizes(&self.server_limits, &steps).map_err(|detail| ClientError::Invalid { detail })?;
        self.send_request(|client, seq| SagaSubmit { client, seq, steps })
    }
}

impl<R: PipelinedRequest> Pipeline<R> {
    fn open(addr: impl ToSocketAddrs, options: ClientOptions) -> Result<Pipeline<R>, ClientError> {
        let mut endpoints = Endpoints::new(resolve(addr)?);
        let identity = pick_identity(&options);
        let (conn, client) = connect_with_session(&mut endpoints, &options, &identity)?;
        Ok(Pipeline {
            endpoints,
            identity,
            client,
            last_seq: 0,
            directory: conn.directory.clone(),
            server_limits: conn.server_limits,
            writer: BatchWriter::new(&conn.server_limits),
            conn: Some(conn),
            options,
            outstanding: HashMap::new(),
            busy: VecDeque::new(),
            frames: Vec::new(),
            last_progress: Instant::now(),
            deferred: None,
            traced: HashMap::new(),
            trace_entries: Vec::new(),
            traced_out: Vec::new(),
        })
    }

    /// The coordinator node the latest connection went to (the leader, in a group).
    pub fn coordinator(&self) -> Option<SocketAddr> {
        self.endpoints.current()
    }

    /// The identity this pipeline's connections present.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn client_id(&self) -> ClientId {
        self.client
    }

    /// The coordinator's participants, as of the latest handshake.
    pub fn directory(&self) -> &Directory {
        &self.directory
    }

    /// Transactions sent (or buffered) without an outcome yet.
    pub fn outstanding(&self) -> usize {
        self.outstanding.len()
    }

    /// Buffers the request `make` builds under the next sequence number and returns that
    /// number.
    fn send_request(&mut self, make: impl FnOnce(ClientId, Seq) -> R) -> Result<Seq, ClientError> {
        let seq = self.last_seq + 1;
        let request = make(self.client, seq);
        self.writer.push(&request)?;
        self.last_seq = seq;
        if self.outstanding.is_empty() {
            self.last_progress = Instant::now();
        }
        self.outstanding.insert(seq, request);
        if self.writer.len_bytes() >= PIPELINE_AUTO_FLUSH_BYTES {
            self.flush()?;
        }
        Ok(seq)
    }

    /// Queues the trace context of outstanding request `seq` (if traced) for a resend.
    fn queue_trace_context(&mut self, seq: Seq) {
        if let Some(traceparent) = self.traced.get(&seq) {
            let key = crate::TraceKey::Submit { client: self.client, seq };
            self.trace_entries.push(crate::TraceEntry { key, traceparent: traceparent.clone() });
        }
    }

    /// The request `seq` has its answer: it is no longer outstanding.
    fn finished(&mut self, seq: Seq) {
        self.outstanding.remove(&seq);
        if !self.traced.is_empty() {
            self.traced.remove(&seq);
        }
    }

    /// Writes everything buffered. On a broken connection, reconnects and resends every
    /// outstanding transaction (same seqs).
    pub fn flush(&mut self) -> Result<(), ClientError> {
        if self.writer.is_empty() {
            return Ok(());
        }
        let result = match self.conn.as_mut() {
            Some(conn) => write_buffered(conn, &mut self.writer, &mut self.trace_entries, &mut self.traced_out),
            None => Err(ClientError::Io(io::Error::new(io::ErrorKind::NotConnected, "not connected"))),
        };
        self.writer.clear();
        self.trace_entries.clear();
        match result {
            Ok(()) => Ok(()),
            Err(err) => self.reconnect(err),
        }
    }

    /// Waits up to `timeout` for outcomes and returns those that arrived (possibly none).
    /// Busy replies are resent automatically after `busy_backoff` under the same seq; a
    /// connection without progress for `request_timeout` is replaced and every outstanding
    /// transaction resent.
    pub fn poll(&mut self, timeout: Duration) -> Result<Vec<(Seq, Outcome)>, ClientError> {
        if let Some(err) = self.deferred.take() {
            return Err(err);
        }
        self.flush()?;
        let deadline = Instant::now() + timeout;
        let mut results = Vec::new();
        loop {
            self.resend_busy()?;
            if self.outstanding.is_empty() {
                return Ok(results);
            }
            let mut wake = deadline.min(self.last_progress + self.options.request_timeout);
            if let Some(&(due, _)) = self.busy.front() {
                wake = wake.min(due);
            }
            let read = match self.conn.as_mut() {
                Some(conn) => conn.read_frames(wake, &mut self.frames),
                None => Err(ClientError::Io(io::Error::new(io::ErrorKind::NotConnected, "not connected"))),
            };
            if let Err(err) = read {
                self.frames.clear();
                self.reconnect(err)?;
                continue;
            }
            if !self.frames.is_empty() {
                self.last_progress = Instant::now();
                self.endpoints.served();
            }
            let mut failure = None;
            let mut frames = std::mem::take(&mut self.frames);
            for frame in frames.drain(..) {
                match frame {
                    Frame::Replies(replies) => {
                        for reply in replies {
                            self.on_reply(reply, &mut results);
                        }
                    }
                    Frame::Error(error) => {
                        failure.get_or_insert(ClientError::Refused { code: error.code, message: error.message });
                    }
                    other => {
                        failure.get_or_insert(ClientError::Protocol(ProtocolError::new(
                            ErrorCode::UnexpectedFrame,
                            format!("expected Replies, got {:?}", other.kind()),
                        )));
                    }
                }
            }
            self.frames = frames;
            if let Some(err) = failure {
                if let Err(err) = self.reconnect(err) {
                    if results.is_empty() {
                        return Err(err);
                    }
                    self.deferred = Some(err);
                    return Ok(results);
                }
                continue;
            }
            if let Some(err) = self.deferred.take() {
                if results.is_empty() {
                    return Err(err);
                }
                self.deferred = Some(err);
                return Ok(results);
            }
            let now = Instant::now();
            if !results.is_empty() || now >= deadline {
                return Ok(results);
            }
            if self.busy.is_empty() && now >= self.last_progress + self.options.request_timeout {
                let after = self.options.request_timeout;
                self.reconnect(ClientError::Timeout { after })?;
            }
        }
    }

    fn on_reply(&mut self, reply: Reply, results: &mut Vec<(Seq, Outcome)>) {
        let Some((client, seq)) = reply.request() else { return };
        if client != self.client || !self.outstanding.contains_key(&seq) {
            return; // not ours, or answered already (a resend's duplicate answer)
        }
        if let Some(err) = refusal(&reply) {
            self.finished(seq);
            self.deferred.get_or_insert(err);
            return;
        }
        match reply {
            Reply::Outcome { outcome, .. } => {
                self.finished(seq);
                results.push((seq, outcome));
            }
            _ => self.busy.push_back((Instant::now() + self.options.busy_backoff, seq)),
        }
    }

    fn resend_busy(&mut self) -> Result<(), ClientError> {
        let now = Instant::now();
        while let Some(&(due, seq)) = self.busy.front() {
            if due > now {
                break;
            }
            self.busy.pop_front();
            if let Some(submit) = self.outstanding.get(&seq) {
                self.writer.push(submit)?;
                self.queue_trace_context(seq);
            }
        }
        self.flush()
    }

    /// Replaces a failed connection and resends every outstanding transaction; fails after
    /// `max_attempts` consecutive failed connections or on an error a reconnect cannot fix.
    fn reconnect(&mut self, cause: ClientError) -> Result<(), ClientError> {
        self.conn = None;
        if !cause.is_transient() {
            return Err(cause);
        }
        if let ClientError::NotLeader(not_leader) = &cause {
            self.endpoints.redirect(not_leader);
        }
        tracing::debug!(client = self.client.0, outstanding = self.outstanding.len(), "reconnecting: {cause}");
        let mut last = cause;
        for attempt in 1..=self.options.max_attempts {
            if attempt > 1 {
                std::thread::sleep(self.options.busy_backoff);
            }
            match self.endpoints.connect(&self.options, &self.identity, Role::Client) {
                Ok(mut conn) => {
                    self.directory = conn.directory.clone();
                    self.server_limits = conn.server_limits;
                    self.writer = BatchWriter::new(&conn.server_limits);
                    self.busy.clear();
                    self.trace_entries.clear();
                    let mut seqs: Vec<Seq> = self.outstanding.keys().copied().collect();
                    seqs.sort_unstable();
                    for seq in seqs {
                        self.writer.push(&self.outstanding[&seq])?;
                        self.queue_trace_context(seq);
                    }
                    let written =
                        write_buffered(&mut conn, &mut self.writer, &mut self.trace_entries, &mut self.traced_out);
                    self.writer.clear();
                    self.trace_entries.clear();
                    match written {
                        Ok(()) => {
                            self.conn = Some(conn);
                            self.last_progress = Instant::now();
                            return Ok(());
                        }
                        Err(err) => last = err,
                    }
                }
                Err(err) if err.is_transient() => last = err,
                Err(err) => return Err(err),
            }
        }
        Err(ClientError::GaveUp { attempts: self.options.max_attempts, last: Box::new(last) })
    }
}

/// Writes the buffered submits in one write, preceded by `TraceContext` frames for the
/// traced ones among them (the common, untraced case writes the submits' buffer as it is).
fn write_buffered<R: BatchItem>(
    conn: &mut Connection,
    writer: &mut BatchWriter<R>,
    trace_entries: &mut Vec<crate::TraceEntry>,
    out: &mut Vec<u8>,
) -> Result<(), ClientError> {
    if trace_entries.is_empty() {
        return conn.stream.send(writer.finish()).map_err(ClientError::from);
    }
    out.clear();
    encode_trace_frames(out, trace_entries, &conn.server_limits);
    out.extend_from_slice(writer.finish());
    trace_entries.clear();
    let result = conn.stream.send(out).map_err(ClientError::from);
    out.clear();
    result
}
