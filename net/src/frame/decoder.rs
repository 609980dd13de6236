//! The streaming decoder: header checks before buffering, counts checked before allocating.

use bytes::{Bytes, BytesMut};
use twophase_engine::codec::Reader;
use twophase_engine::{Epoch, Limits};

use super::{
    AdminOp, BatchItem, DumpEnd, ErrorCode, ErrorFrame, Frame, FrameKind, HEADER_BYTES, Hello, NetLimits,
    PROTOCOL_VERSION, ProtocolError, Role, Welcome,
};

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
            FrameKind::Interactive => Frame::Interactive(self.read_batch(&mut reader)?),
            FrameKind::Sagas => Frame::Sagas(self.read_batch(&mut reader)?),
            FrameKind::ThreePc => Frame::ThreePc(self.read_batch(&mut reader)?),
            FrameKind::TraceContext => {
                Frame::TraceContext(super::trace_context::decode(&mut reader, self.limits.max_batch)?)
            }
            FrameKind::Raft => {
                let len = reader.remaining();
                Frame::Raft(reader.slice(len, "raft message")?)
            }
            FrameKind::NotLeader => Frame::NotLeader(super::not_leader::decode(&mut reader)?),
            FrameKind::AdminRequest => match reader.u8("admin op")? {
                1 => Frame::AdminRequest(AdminOp::Dump),
                2 => Frame::AdminRequest(AdminOp::Topology),
                3 => Frame::AdminRequest(AdminOp::Status),
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
