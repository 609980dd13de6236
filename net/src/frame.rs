//! Frames: `u32 length | u8 version | u8 kind | payload`, little-endian, where `length` counts
//! version, kind and payload. A data frame carries a batch of engine messages.
//!
//! [`FrameDecoder`] checks length, version and kind from the header before it buffers the
//! body, and every batch count against [`NetLimits::max_batch`] and the bytes that remain
//! before it allocates. [`BatchWriter`] is the hot-path encoder: it appends messages straight
//! into one buffer, patches length and count when a frame closes, and rolls over to a new
//! frame before the size or batch limit.

use std::fmt;
use std::marker::PhantomData;

use bytes::{BufMut, Bytes, BytesMut};
use twophase_engine::codec::{Decode, DecodeError, Encode, Reader, put_key, put_string, put_value};
use twophase_engine::{Epoch, Key, Limits, ParticipantId, Reply, Submit, ToCoordinator, ToParticipant, Value};

/// The protocol version this build speaks; every frame carries it.
pub const PROTOCOL_VERSION: u8 = 1;

/// `u32 length | u8 version | u8 kind`.
pub const HEADER_BYTES: usize = 6;

/// The largest possible `Hello` frame body plus header (two strings of up to 65,535 bytes).
/// Accepted connections decode against this limit until their handshake is done, so an
/// unauthenticated peer cannot make a server buffer a full-size data frame.
pub const MAX_HELLO_FRAME_BYTES: u32 = 2 + 1 + 2 * (2 + u16::MAX as u32) + 4;

/// Size and count limits of the network layer, plus the engine's request limits that the
/// message decoders enforce.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct NetLimits {
    /// Largest accepted `length` field (version + kind + payload).
    pub max_frame_bytes: u32,
    /// Largest number of messages in one data frame.
    pub max_batch: u32,
    pub engine: Limits,
}

impl Default for NetLimits {
    fn default() -> NetLimits {
        NetLimits { max_frame_bytes: 16 * 1024 * 1024, max_batch: 65_536, engine: Limits::default() }
    }
}

/// What a connecting side is.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Role {
    Client = 1,
    Coordinator = 2,
    Participant = 3,
    Admin = 4,
}

impl Role {
    pub fn from_u8(tag: u8) -> Option<Role> {
        Some(match tag {
            1 => Role::Client,
            2 => Role::Coordinator,
            3 => Role::Participant,
            4 => Role::Admin,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Client => "client",
            Role::Coordinator => "coordinator",
            Role::Participant => "participant",
            Role::Admin => "admin",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The frame kinds. Data kinds are 16..=31; 32 and up are reserved for admin requests: add
/// a variant here, in [`Frame`], in [`FrameDecoder`]'s body parser and in `Frame::encode`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum FrameKind {
    Hello = 1,
    Welcome = 2,
    Error = 3,
    Submits = 16,
    Replies = 17,
    ToParticipant = 18,
    ToCoordinator = 19,
    AdminRequest = 32,
    DumpChunk = 33,
    DumpEnd = 34,
    Topology = 35,
}

impl FrameKind {
    pub fn from_u8(tag: u8) -> Option<FrameKind> {
        Some(match tag {
            1 => FrameKind::Hello,
            2 => FrameKind::Welcome,
            3 => FrameKind::Error,
            16 => FrameKind::Submits,
            17 => FrameKind::Replies,
            18 => FrameKind::ToParticipant,
            19 => FrameKind::ToCoordinator,
            32 => FrameKind::AdminRequest,
            33 => FrameKind::DumpChunk,
            34 => FrameKind::DumpEnd,
            35 => FrameKind::Topology,
            _ => return None,
        })
    }

    /// Data frames are handed to the runtime; the others belong to the connection itself.
    pub fn is_data(self) -> bool {
        (self as u8) >= 16
    }
}

/// Error codes of an `Error` frame.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum ErrorCode {
    Malformed,
    UnsupportedVersion,
    FrameTooLarge,
    BatchTooLarge,
    HandshakeRefused,
    UnexpectedFrame,
    Overloaded,
    /// A code this build does not know (sent by a newer peer).
    Other(u16),
}

impl ErrorCode {
    pub fn code(self) -> u16 {
        match self {
            ErrorCode::Malformed => 1,
            ErrorCode::UnsupportedVersion => 2,
            ErrorCode::FrameTooLarge => 3,
            ErrorCode::BatchTooLarge => 4,
            ErrorCode::HandshakeRefused => 5,
            ErrorCode::UnexpectedFrame => 6,
            ErrorCode::Overloaded => 7,
            ErrorCode::Other(code) => code,
        }
    }

    pub fn from_code(code: u16) -> ErrorCode {
        match code {
            1 => ErrorCode::Malformed,
            2 => ErrorCode::UnsupportedVersion,
            3 => ErrorCode::FrameTooLarge,
            4 => ErrorCode::BatchTooLarge,
            5 => ErrorCode::HandshakeRefused,
            6 => ErrorCode::UnexpectedFrame,
            7 => ErrorCode::Overloaded,
            other => ErrorCode::Other(other),
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed frame",
            ErrorCode::UnsupportedVersion => "unsupported version",
            ErrorCode::FrameTooLarge => "frame too large",
            ErrorCode::BatchTooLarge => "batch too large",
            ErrorCode::HandshakeRefused => "handshake refused",
            ErrorCode::UnexpectedFrame => "unexpected frame",
            ErrorCode::Overloaded => "overloaded",
            ErrorCode::Other(_) => "unknown error",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.code())
    }
}

/// A protocol violation: what goes into the `Error` frame sent before closing.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ProtocolError {
        ProtocolError { code, message: message.into() }
    }

    /// The `Error` frame that reports this violation to the peer.
    pub fn to_frame(&self) -> Frame {
        Frame::Error(ErrorFrame { code: self.code, message: self.message.clone() })
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code.name(), self.message)
    }
}

impl std::error::Error for ProtocolError {}

impl From<DecodeError> for ProtocolError {
    fn from(err: DecodeError) -> ProtocolError {
        ProtocolError::new(ErrorCode::Malformed, err.to_string())
    }
}

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

/// What an admin connection asks for.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum AdminOp {
    /// A participant's whole key-value state: `DumpChunk` frames, then `DumpEnd`.
    Dump = 1,
    /// A coordinator's participants with their addresses: one `Topology` frame.
    Topology = 2,
}

/// Sent after the last `DumpChunk`: what the participant holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct DumpEnd {
    pub keys: u64,
    pub prepared: u32,
    pub in_doubt: u32,
    /// Whether the participant fdatasyncs its log (false: it runs with `--unsafe-no-fsync`).
    pub fsync: bool,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Frame {
    Hello(Hello),
    Welcome(Welcome),
    Error(ErrorFrame),
    Submits(Vec<Submit>),
    Replies(Vec<Reply>),
    ToParticipant {
        epoch: Epoch,
        messages: Vec<ToParticipant>,
    },
    ToCoordinator(Vec<ToCoordinator>),
    AdminRequest(AdminOp),
    /// Key-value pairs of a dump: `u32 count | (key, value) × count`.
    DumpChunk(Vec<(Key, Value)>),
    DumpEnd(DumpEnd),
    /// `u16 count | (u16 id, string name, string address) × count`.
    Topology(Vec<(ParticipantId, String, String)>),
}

impl Frame {
    pub fn kind(&self) -> FrameKind {
        match self {
            Frame::Hello(_) => FrameKind::Hello,
            Frame::Welcome(_) => FrameKind::Welcome,
            Frame::Error(_) => FrameKind::Error,
            Frame::Submits(_) => FrameKind::Submits,
            Frame::Replies(_) => FrameKind::Replies,
            Frame::ToParticipant { .. } => FrameKind::ToParticipant,
            Frame::ToCoordinator(_) => FrameKind::ToCoordinator,
            Frame::AdminRequest(_) => FrameKind::AdminRequest,
            Frame::DumpChunk(_) => FrameKind::DumpChunk,
            Frame::DumpEnd(_) => FrameKind::DumpEnd,
            Frame::Topology(_) => FrameKind::Topology,
        }
    }

    /// Appends this frame, header included. Batches are written as one frame whatever their
    /// size; use [`BatchWriter`] to respect a peer's limits.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.put_u32_le(0);
        out.put_u8(PROTOCOL_VERSION);
        out.put_u8(self.kind() as u8);
        match self {
            Frame::Hello(hello) => {
                out.put_u8(hello.role as u8);
                put_string(out, &hello.cluster);
                put_string(out, &hello.node);
                out.put_u32_le(hello.epoch.0);
            }
            Frame::Welcome(welcome) => {
                out.put_u8(welcome.role as u8);
                put_string(out, &welcome.cluster);
                put_string(out, &welcome.node);
                let count = welcome.directory.len().min(u16::MAX as usize);
                out.put_u16_le(count as u16);
                for (id, name) in &welcome.directory[..count] {
                    out.put_u16_le(id.0);
                    put_string(out, name);
                }
                let limits = &welcome.limits;
                out.put_u32_le(limits.max_frame_bytes);
                out.put_u32_le(limits.max_batch);
                out.put_u16_le(saturate_u16(limits.engine.max_ops_per_tx));
                out.put_u16_le(saturate_u16(limits.engine.max_key_bytes));
                out.put_u32_le(u32::try_from(limits.engine.max_value_bytes).unwrap_or(u32::MAX));
            }
            Frame::Error(error) => {
                out.put_u16_le(error.code.code());
                put_string(out, &error.message);
            }
            Frame::Submits(items) => put_batch(out, items),
            Frame::Replies(items) => put_batch(out, items),
            Frame::ToParticipant { epoch, messages } => {
                out.put_u32_le(epoch.0);
                put_batch(out, messages);
            }
            Frame::ToCoordinator(items) => put_batch(out, items),
            Frame::AdminRequest(op) => out.put_u8(*op as u8),
            Frame::DumpChunk(entries) => {
                out.put_u32_le(u32::try_from(entries.len()).expect("chunk of more than 2^32 entries"));
                for (key, value) in entries {
                    put_key(out, key);
                    put_value(out, value);
                }
            }
            Frame::DumpEnd(end) => {
                out.put_u64_le(end.keys);
                out.put_u32_le(end.prepared);
                out.put_u32_le(end.in_doubt);
                out.put_u8(u8::from(end.fsync));
            }
            Frame::Topology(participants) => {
                let count = participants.len().min(u16::MAX as usize);
                out.put_u16_le(count as u16);
                for (id, name, addr) in &participants[..count] {
                    out.put_u16_le(id.0);
                    put_string(out, name);
                    put_string(out, addr);
                }
            }
        }
        patch_length(out, start);
    }

    pub fn to_bytes(&self) -> Bytes {
        let mut out = Vec::new();
        self.encode(&mut out);
        Bytes::from(out)
    }
}

fn saturate_u16(value: usize) -> u16 {
    u16::try_from(value).unwrap_or(u16::MAX)
}

fn put_batch<T: Encode>(out: &mut Vec<u8>, items: &[T]) {
    out.put_u32_le(u32::try_from(items.len()).expect("batch of more than 2^32 messages"));
    for item in items {
        item.encode(out);
    }
}

fn patch_length(out: &mut [u8], start: usize) {
    let length = u32::try_from(out.len() - start - 4).expect("frame longer than 4 GiB");
    out[start..start + 4].copy_from_slice(&length.to_le_bytes());
}

/// A message type that travels batched in a data frame.
pub trait BatchItem: Encode + Decode {
    const KIND: FrameKind;
    /// The smallest encoding of one item, to refuse impossible counts before allocating.
    const MIN_BYTES: usize;
}

impl BatchItem for Submit {
    const KIND: FrameKind = FrameKind::Submits;
    /// `u64 client | u64 seq | u16 op count`.
    const MIN_BYTES: usize = 18;
}

impl BatchItem for Reply {
    const KIND: FrameKind = FrameKind::Replies;
    /// `u8 tag | u64 client | u64 seq | u8 reason` (Rejected).
    const MIN_BYTES: usize = 18;
}

impl BatchItem for ToParticipant {
    const KIND: FrameKind = FrameKind::ToParticipant;
    /// `u8 tag | u64 txid` (Commit, Abort).
    const MIN_BYTES: usize = 9;
}

impl BatchItem for ToCoordinator {
    const KIND: FrameKind = FrameKind::ToCoordinator;
    /// `u8 tag | u64 txid` (Ack, Inquiry).
    const MIN_BYTES: usize = 9;
}

/// Streaming frame decoder: feed it the bytes read so far, take out whole frames.
#[derive(Clone, Debug)]
pub struct FrameDecoder {
    limits: NetLimits,
}

impl FrameDecoder {
    pub fn new(limits: NetLimits) -> FrameDecoder {
        FrameDecoder { limits }
    }

    pub fn limits(&self) -> NetLimits {
        self.limits
    }

    /// Lowers or raises the largest accepted frame (e.g. once a handshake is done).
    pub fn set_max_frame_bytes(&mut self, max_frame_bytes: u32) {
        self.limits.max_frame_bytes = max_frame_bytes;
    }

    /// Takes one whole frame off the front of `buf`, or returns `Ok(None)` when more bytes
    /// are needed. Length, version and kind are checked as soon as their header bytes are
    /// there, before the body is buffered; after an error the stream is unusable.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, ProtocolError> {
        let Some(total) = self.check_header(buf)? else {
            return Ok(None);
        };
        if buf.len() < total {
            // Bounded by max_frame_bytes, which was checked above.
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        let frame = buf.split_to(total).freeze();
        let kind = FrameKind::from_u8(frame[5]).expect("kind checked");
        self.parse_body(kind, frame.slice(HEADER_BYTES..)).map(Some)
    }

    /// Validates whatever header bytes are present; returns the whole frame's size once the
    /// full header is there.
    fn check_header(&self, buf: &[u8]) -> Result<Option<usize>, ProtocolError> {
        if buf.len() < 4 {
            return Ok(None);
        }
        let length = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes"));
        if length > self.limits.max_frame_bytes {
            return Err(ProtocolError::new(
                ErrorCode::FrameTooLarge,
                format!("frame of {length} bytes exceeds the limit of {}", self.limits.max_frame_bytes),
            ));
        }
        if length < 2 {
            return Err(ProtocolError::new(
                ErrorCode::Malformed,
                format!("frame length {length} is too short for version and kind"),
            ));
        }
        if buf.len() < 5 {
            return Ok(None);
        }
        if buf[4] != PROTOCOL_VERSION {
            return Err(ProtocolError::new(
                ErrorCode::UnsupportedVersion,
                format!("unsupported protocol version {}; this server speaks {PROTOCOL_VERSION}", buf[4]),
            ));
        }
        if buf.len() < HEADER_BYTES {
            return Ok(None);
        }
        if FrameKind::from_u8(buf[5]).is_none() {
            return Err(ProtocolError::new(ErrorCode::Malformed, format!("unknown frame kind {}", buf[5])));
        }
        Ok(Some(4 + length as usize))
    }

    fn parse_body(&self, kind: FrameKind, body: Bytes) -> Result<Frame, ProtocolError> {
        let mut reader = Reader::new(body, self.limits.engine);
        let frame = match kind {
            FrameKind::Hello => {
                let tag = reader.u8("role")?;
                let role = Role::from_u8(tag).ok_or_else(|| reader.error(format!("unknown role {tag}")))?;
                Frame::Hello(Hello {
                    role,
                    cluster: reader.string("cluster name")?,
                    node: reader.string("node name")?,
                    epoch: Epoch(reader.u32("epoch")?),
                })
            }
            FrameKind::Welcome => {
                let tag = reader.u8("role")?;
                let role = Role::from_u8(tag).ok_or_else(|| reader.error(format!("unknown role {tag}")))?;
                let cluster = reader.string("cluster name")?;
                let node = reader.string("node name")?;
                let count = reader.count(u16::MAX as usize, 4, "directory entries")?;
                let mut directory = Vec::with_capacity(count);
                for _ in 0..count {
                    directory.push((reader.participant()?, reader.string("participant name")?));
                }
                let max_frame_bytes = reader.u32("max frame bytes")?;
                let max_batch = reader.u32("max batch")?;
                let engine = Limits {
                    max_ops_per_tx: reader.u16("max ops per transaction")? as usize,
                    max_key_bytes: reader.u16("max key bytes")? as usize,
                    max_value_bytes: reader.u32("max value bytes")? as usize,
                };
                Frame::Welcome(Welcome {
                    role,
                    cluster,
                    node,
                    directory,
                    limits: NetLimits { max_frame_bytes, max_batch, engine },
                })
            }
            FrameKind::Error => Frame::Error(ErrorFrame {
                code: ErrorCode::from_code(reader.u16("error code")?),
                message: reader.string("error message")?,
            }),
            FrameKind::Submits => Frame::Submits(self.read_batch(&mut reader)?),
            FrameKind::Replies => Frame::Replies(self.read_batch(&mut reader)?),
            FrameKind::ToParticipant => {
                let epoch = Epoch(reader.u32("epoch")?);
                Frame::ToParticipant { epoch, messages: self.read_batch(&mut reader)? }
            }
            FrameKind::ToCoordinator => Frame::ToCoordinator(self.read_batch(&mut reader)?),
            FrameKind::AdminRequest => match reader.u8("admin op")? {
                1 => Frame::AdminRequest(AdminOp::Dump),
                2 => Frame::AdminRequest(AdminOp::Topology),
                other => return Err(reader.error(format!("unknown admin op {other}")).into()),
            },
            FrameKind::DumpChunk => {
                let count = reader.u32("dump entry count")? as usize;
                // Each entry takes at least 6 bytes (two length prefixes).
                if count.saturating_mul(6) > reader.remaining() {
                    return Err(reader
                        .error(format!("{count} entries cannot fit in {} bytes", reader.remaining()))
                        .into());
                }
                let mut entries = Vec::with_capacity(count);
                for _ in 0..count {
                    entries.push((reader.key()?, reader.value()?));
                }
                Frame::DumpChunk(entries)
            }
            FrameKind::DumpEnd => Frame::DumpEnd(DumpEnd {
                keys: reader.u64("key count")?,
                prepared: reader.u32("prepared count")?,
                in_doubt: reader.u32("in-doubt count")?,
                fsync: match reader.u8("fsync flag")? {
                    0 => false,
                    1 => true,
                    other => {
                        return Err(ProtocolError::new(
                            ErrorCode::Malformed,
                            format!("fsync flag {other} is not 0 or 1"),
                        ));
                    }
                },
            }),
            FrameKind::Topology => {
                let count = reader.count(u16::MAX as usize, 6, "participants")?;
                let mut participants = Vec::with_capacity(count);
                for _ in 0..count {
                    participants.push((reader.participant()?, reader.string("name")?, reader.string("address")?));
                }
                Frame::Topology(participants)
            }
        };
        reader.finish()?;
        Ok(frame)
    }

    fn read_batch<T: BatchItem>(&self, reader: &mut Reader) -> Result<Vec<T>, ProtocolError> {
        let count = reader.u32("batch count")?;
        if count > self.limits.max_batch {
            return Err(ProtocolError::new(
                ErrorCode::BatchTooLarge,
                format!("batch of {count} messages exceeds the limit of {}", self.limits.max_batch),
            ));
        }
        let count = count as usize;
        if count.saturating_mul(T::MIN_BYTES) > reader.remaining() {
            return Err(ProtocolError::new(
                ErrorCode::Malformed,
                format!("batch of {count} messages cannot fit in the {} bytes left in the frame", reader.remaining()),
            ));
        }
        let mut items = Vec::with_capacity(count);
        for _ in 0..count {
            items.push(T::decode(reader)?);
        }
        Ok(items)
    }
}

/// A message too large to fit in any frame the peer accepts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct MessageTooLarge {
    pub bytes: usize,
    pub max_frame_bytes: u32,
}

impl fmt::Display for MessageTooLarge {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "a message of {} bytes cannot fit in a frame of at most {} bytes", self.bytes, self.max_frame_bytes)
    }
}

impl std::error::Error for MessageTooLarge {}

/// Hot-path batch encoder. Appends encoded messages of one kind into a single buffer; when
/// the open frame would pass `max_frame_bytes` or `max_batch` it closes it (patching length
/// and count) and opens the next, so one buffer holds any number of whole frames back to
/// back, ready for one write.
pub struct BatchWriter<T: BatchItem> {
    buf: Vec<u8>,
    /// Start of the open frame, if one is open.
    open: Option<usize>,
    count: u32,
    frames: usize,
    messages: usize,
    epoch: Epoch,
    max_frame_bytes: usize,
    max_batch: u32,
    scratch: Vec<u8>,
    _items: PhantomData<fn(T)>,
}

impl<T: BatchItem> BatchWriter<T> {
    /// A writer that respects `limits` (the receiver's).
    pub fn new(limits: &NetLimits) -> BatchWriter<T> {
        BatchWriter {
            buf: Vec::new(),
            open: None,
            count: 0,
            frames: 0,
            messages: 0,
            epoch: Epoch(0),
            max_frame_bytes: limits.max_frame_bytes.max(16) as usize,
            max_batch: limits.max_batch.max(1),
            scratch: Vec::new(),
            _items: PhantomData,
        }
    }

    /// Sets the epoch written into `ToParticipant` frame headers opened from now on.
    pub fn set_epoch(&mut self, epoch: Epoch) {
        if self.open.is_some() && epoch != self.epoch {
            self.close();
        }
        self.epoch = epoch;
    }

    fn header_bytes() -> usize {
        HEADER_BYTES + if T::KIND == FrameKind::ToParticipant { 8 } else { 4 }
    }

    fn open_frame(&mut self) {
        let start = self.buf.len();
        self.buf.put_u32_le(0);
        self.buf.put_u8(PROTOCOL_VERSION);
        self.buf.put_u8(T::KIND as u8);
        if T::KIND == FrameKind::ToParticipant {
            self.buf.put_u32_le(self.epoch.0);
        }
        self.buf.put_u32_le(0);
        self.open = Some(start);
        self.count = 0;
    }

    /// Closes the open frame, if any: patches its length and count.
    pub fn close(&mut self) {
        if let Some(start) = self.open.take() {
            let count_at = start + Self::header_bytes() - 4;
            self.buf[count_at..count_at + 4].copy_from_slice(&self.count.to_le_bytes());
            patch_length(&mut self.buf, start);
            self.frames += 1;
        }
    }

    /// Appends one message, opening a new frame first when needed.
    pub fn push(&mut self, item: &T) -> Result<(), MessageTooLarge> {
        if self.open.is_none() || self.count >= self.max_batch {
            self.close();
            self.open_frame();
        }
        let start = self.open.expect("open frame");
        let item_start = self.buf.len();
        item.encode(&mut self.buf);
        if self.buf.len() - start - 4 <= self.max_frame_bytes {
            self.count += 1;
            self.messages += 1;
            return Ok(());
        }
        // Too big for the open frame: move the item into a fresh one (rare path).
        let item_bytes = self.buf.len() - item_start;
        if Self::header_bytes() - 4 + item_bytes > self.max_frame_bytes {
            self.buf.truncate(item_start);
            if self.count == 0 {
                self.buf.truncate(start);
                self.open = None;
            }
            return Err(MessageTooLarge { bytes: item_bytes, max_frame_bytes: self.max_frame_bytes as u32 });
        }
        self.scratch.clear();
        self.scratch.extend_from_slice(&self.buf[item_start..]);
        self.buf.truncate(item_start);
        self.close();
        self.open_frame();
        self.buf.extend_from_slice(&self.scratch);
        self.count = 1;
        self.messages += 1;
        Ok(())
    }

    /// Messages written since the last take or clear.
    pub fn messages(&self) -> usize {
        self.messages
    }

    pub fn is_empty(&self) -> bool {
        self.messages == 0
    }

    /// Frames closed since the last take or clear.
    pub fn frames(&self) -> usize {
        self.frames
    }

    /// Bytes written so far (frames, open one included).
    pub fn len_bytes(&self) -> usize {
        self.buf.len()
    }

    /// Closes the open frame and returns every frame written, back to back; the writer
    /// starts afresh with a new buffer of the same capacity.
    pub fn take(&mut self) -> Bytes {
        self.close();
        let capacity = self.buf.capacity();
        self.messages = 0;
        self.frames = 0;
        Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(capacity)))
    }

    /// Closes the open frame and lends the frames written; call [`clear`](Self::clear) once
    /// they are sent, which keeps the buffer for reuse.
    pub fn finish(&mut self) -> &[u8] {
        self.close();
        &self.buf
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.open = None;
        self.count = 0;
        self.messages = 0;
        self.frames = 0;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use twophase_engine::{AbortReason, ClientId, LocalOp, Op, OpKind, Outcome, Read, RejectReason, TxId, Vote};

    pub fn key(text: &str) -> Bytes {
        Bytes::copy_from_slice(text.as_bytes())
    }

    pub fn sample_frames() -> Vec<Frame> {
        let txid = TxId::new(Epoch(2), 41);
        vec![
            Frame::Hello(Hello {
                role: Role::Coordinator,
                cluster: "local".into(),
                node: "c1".into(),
                epoch: Epoch(2),
            }),
            Frame::Welcome(Welcome {
                role: Role::Coordinator,
                cluster: "local".into(),
                node: "c1".into(),
                directory: vec![(ParticipantId(1), "p1".into()), (ParticipantId(2), "p2".into())],
                limits: NetLimits::default(),
            }),
            Frame::Error(ErrorFrame { code: ErrorCode::BatchTooLarge, message: "too many".into() }),
            Frame::Error(ErrorFrame { code: ErrorCode::Other(99), message: String::new() }),
            Frame::Submits(vec![
                Submit {
                    client: ClientId(7),
                    seq: 1,
                    ops: vec![
                        Op { participant: ParticipantId(1), key: key("a"), kind: OpKind::Add { delta: -5, floor: 0 } },
                        Op { participant: ParticipantId(2), key: key("b"), kind: OpKind::Put(key("v")) },
                    ],
                },
                Submit { client: ClientId(7), seq: 2, ops: vec![] },
            ]),
            Frame::Submits(vec![]),
            Frame::Replies(vec![
                Reply::Outcome {
                    client: ClientId(7),
                    seq: 1,
                    outcome: Outcome::Committed { reads: vec![Read { index: 0, value: Some(key("x")) }] },
                },
                Reply::Outcome {
                    client: ClientId(7),
                    seq: 2,
                    outcome: Outcome::Aborted {
                        reason: AbortReason::Conflict { participant: ParticipantId(1), key: key("a") },
                    },
                },
                Reply::Rejected { client: ClientId(7), seq: 3, reason: RejectReason::Busy },
            ]),
            Frame::ToParticipant {
                epoch: Epoch(2),
                messages: vec![
                    ToParticipant::Prepare {
                        txid,
                        ops: vec![LocalOp { index: 0, key: key("a"), kind: OpKind::Delete }],
                    },
                    ToParticipant::Commit { txid },
                    ToParticipant::Abort { txid },
                ],
            },
            Frame::ToCoordinator(vec![
                ToCoordinator::Vote { txid, vote: Vote::Yes { reads: vec![] } },
                ToCoordinator::Vote {
                    txid,
                    vote: Vote::No { reason: AbortReason::Stale { participant: ParticipantId(3) } },
                },
                ToCoordinator::Ack { txid },
                ToCoordinator::Inquiry { txid },
            ]),
        ]
    }

    fn decode_one(bytes: &[u8], limits: NetLimits) -> Result<Option<Frame>, ProtocolError> {
        FrameDecoder::new(limits).decode(&mut BytesMut::from(bytes))
    }

    #[test]
    fn every_frame_kind_round_trips_and_prefixes_wait() {
        for frame in sample_frames() {
            let bytes = frame.to_bytes();
            assert_eq!(bytes.len(), 4 + u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize);
            let mut buf = BytesMut::from(&bytes[..]);
            let decoded = FrameDecoder::new(NetLimits::default()).decode(&mut buf).unwrap().unwrap();
            assert_eq!(decoded, frame);
            assert!(buf.is_empty());
            for cut in 0..bytes.len() {
                assert_eq!(decode_one(&bytes[..cut], NetLimits::default()), Ok(None), "{frame:?} prefix {cut}");
            }
        }
    }

    #[test]
    fn decoder_fed_byte_by_byte_yields_every_frame() {
        let frames = sample_frames();
        let stream: Vec<u8> = frames.iter().flat_map(|frame| frame.to_bytes().to_vec()).collect();
        let mut decoder = FrameDecoder::new(NetLimits::default());
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        for byte in stream {
            buf.extend_from_slice(&[byte]);
            while let Some(frame) = decoder.decode(&mut buf).unwrap() {
                decoded.push(frame);
            }
        }
        assert_eq!(decoded, frames);
    }

    #[test]
    fn decoded_keys_are_slices_of_the_frame() {
        let frame = &sample_frames()[4];
        let bytes = frame.to_bytes();
        let mut buf = BytesMut::from(&bytes[..]);
        let base = buf.as_ptr() as usize;
        let Some(Frame::Submits(submits)) = FrameDecoder::new(NetLimits::default()).decode(&mut buf).unwrap() else {
            panic!("not submits")
        };
        let key_at = submits[0].ops[0].key.as_ptr() as usize;
        assert!(key_at > base && key_at < base + bytes.len(), "key was copied");
    }

    #[test]
    fn oversized_length_is_refused_from_four_bytes_without_allocating() {
        let mut buf = BytesMut::from(&u32::MAX.to_le_bytes()[..]);
        let capacity = buf.capacity();
        let err = FrameDecoder::new(NetLimits::default()).decode(&mut buf).unwrap_err();
        assert_eq!(err.code, ErrorCode::FrameTooLarge);
        assert!(err.message.contains("4294967295 bytes exceeds the limit of 16777216"), "{err}");
        assert_eq!(buf.capacity(), capacity);

        let limits = NetLimits { max_frame_bytes: 100, ..NetLimits::default() };
        let mut big = Frame::Error(ErrorFrame { code: ErrorCode::Malformed, message: "x".repeat(200) }).to_bytes();
        let err = decode_one(&big.split_to(4), limits).unwrap_err();
        assert_eq!(err.code, ErrorCode::FrameTooLarge);

        assert_eq!(decode_one(&[1, 0, 0, 0], NetLimits::default()).unwrap_err().code, ErrorCode::Malformed);
    }

    #[test]
    fn wrong_version_and_unknown_kind_are_refused_from_the_header() {
        let err = decode_one(&[10, 0, 0, 0, 9], NetLimits::default()).unwrap_err();
        assert_eq!(err.code, ErrorCode::UnsupportedVersion);
        assert_eq!(err.message, "unsupported protocol version 9; this server speaks 1");
        let err = decode_one(&[10, 0, 0, 0, 1, 99], NetLimits::default()).unwrap_err();
        assert_eq!(err.code, ErrorCode::Malformed);
        assert!(err.message.contains("unknown frame kind 99"));
    }

    #[test]
    fn batch_counts_are_checked_before_allocating() {
        let limits = NetLimits { max_batch: 2, ..NetLimits::default() };
        let three = Frame::ToCoordinator(vec![ToCoordinator::Ack { txid: TxId(1) }; 3]).to_bytes();
        assert_eq!(decode_one(&three, limits).unwrap_err().code, ErrorCode::BatchTooLarge);
        assert!(decode_one(&three, NetLimits::default()).is_ok());

        // A count of 60,000 acks in a 10-byte payload is refused before reserving 60,000 slots.
        let mut lying = Vec::new();
        lying.put_u32_le(2 + 4 + 9);
        lying.put_u8(PROTOCOL_VERSION);
        lying.put_u8(FrameKind::ToCoordinator as u8);
        lying.put_u32_le(60_000);
        ToCoordinator::Ack { txid: TxId(1) }.encode(&mut lying);
        let err = decode_one(&lying, NetLimits::default()).unwrap_err();
        assert_eq!(err.code, ErrorCode::Malformed);
        assert!(err.message.contains("cannot fit"), "{err}");

        // Trailing bytes inside a frame are malformed.
        let mut trailing = Frame::Submits(vec![]).to_bytes().to_vec();
        trailing.push(0);
        trailing[0] += 1;
        assert!(decode_one(&trailing, NetLimits::default()).unwrap_err().message.contains("trailing"));
    }

    fn decode_all(bytes: &[u8]) -> Vec<Frame> {
        let mut buf = BytesMut::from(bytes);
        let mut decoder = FrameDecoder::new(NetLimits::default());
        let mut frames = Vec::new();
        while let Some(frame) = decoder.decode(&mut buf).unwrap() {
            frames.push(frame);
        }
        assert!(buf.is_empty());
        frames
    }

    #[test]
    fn batch_writer_rolls_over_on_count_and_size() {
        let acks: Vec<ToCoordinator> = (0..10).map(|i| ToCoordinator::Ack { txid: TxId(i) }).collect();
        let limits = NetLimits { max_batch: 4, ..NetLimits::default() };
        let mut writer = BatchWriter::<ToCoordinator>::new(&limits);
        for ack in &acks {
            writer.push(ack).unwrap();
        }
        assert_eq!(writer.messages(), 10);
        let frames = decode_all(&writer.take());
        assert_eq!(frames.len(), 3);
        let flat: Vec<ToCoordinator> =
            frames.into_iter().flat_map(|f| if let Frame::ToCoordinator(m) = f { m } else { panic!() }).collect();
        assert_eq!(flat, acks);
        assert!(writer.is_empty());

        // 2 + 4 (count) + 3 × 9 bytes fit in 33; the fourth message rolls over.
        let limits = NetLimits { max_frame_bytes: 33, ..NetLimits::default() };
        let mut writer = BatchWriter::<ToParticipant>::new(&limits);
        writer.set_epoch(Epoch(5));
        let commits: Vec<ToParticipant> = (0..7).map(|i| ToParticipant::Commit { txid: TxId(i) }).collect();
        for commit in &commits {
            writer.push(commit).unwrap();
        }
        let bytes = writer.finish().to_vec();
        writer.clear();
        let frames = decode_all(&bytes);
        assert!(frames.len() > 2);
        let mut flat = Vec::new();
        for frame in frames {
            let Frame::ToParticipant { epoch, messages } = frame else { panic!() };
            assert_eq!(epoch, Epoch(5));
            let encoded = Frame::ToParticipant { epoch, messages: messages.clone() }.to_bytes();
            assert!(encoded.len() - 4 <= 33);
            flat.extend(messages);
        }
        assert_eq!(flat, commits);

        // A message bigger than any frame is refused and leaves the writer usable.
        let limits = NetLimits { max_frame_bytes: 50, ..NetLimits::default() };
        let mut writer = BatchWriter::<Submit>::new(&limits);
        let small = Submit { client: ClientId(1), seq: 1, ops: vec![] };
        writer.push(&small).unwrap();
        let big = Submit {
            client: ClientId(1),
            seq: 2,
            ops: vec![Op { participant: ParticipantId(1), key: key(&"k".repeat(50)), kind: OpKind::Get }],
        };
        let err = writer.push(&big).unwrap_err();
        assert_eq!(err.max_frame_bytes, 50);
        writer.push(&small).unwrap();
        assert_eq!(decode_all(&writer.take()), vec![Frame::Submits(vec![small.clone(), small])]);
    }

    proptest::proptest! {
        #[test]
        fn garbage_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let mut buf = BytesMut::from(&data[..]);
            let mut decoder = FrameDecoder::new(NetLimits::default());
            while let Ok(Some(_)) = decoder.decode(&mut buf) {}
        }

        #[test]
        fn garbage_behind_a_valid_header_never_panics(
            kind in proptest::sample::select(vec![1u8, 2, 3, 16, 17, 18, 19]),
            body in proptest::collection::vec(proptest::num::u8::ANY, 0..256),
        ) {
            let mut data = Vec::new();
            data.put_u32_le(2 + body.len() as u32);
            data.put_u8(PROTOCOL_VERSION);
            data.put_u8(kind);
            data.extend_from_slice(&body);
            let _ = decode_one(&data, NetLimits::default());
        }

        #[test]
        fn mutated_frames_never_panic(index in 0usize..9, flips in proptest::collection::vec((0usize..512, proptest::num::u8::ANY), 1..4)) {
            let mut data = sample_frames()[index].to_bytes().to_vec();
            for (at, byte) in flips {
                let at = at % data.len();
                data[at] = byte;
            }
            let _ = decode_one(&data, NetLimits::default());
        }
    }
}
