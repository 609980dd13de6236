//! [`Frame`], every frame decoded into owned values, and its encoder; [`BatchItem`], the
//! engine messages that travel batched in data frames.

use bytes::{BufMut, Bytes};
use twophase_engine::codec::{Decode, Encode, put_key, put_string, put_value};
use twophase_engine::message::{Interactive, SagaSubmit};
use twophase_engine::{Epoch, Key, ParticipantId, Reply, Submit, ToCoordinator, ToParticipant, Value};

use super::{AdminOp, DumpEnd, ErrorFrame, FrameKind, Hello, NotLeader, PROTOCOL_VERSION, TraceEntry, Welcome};

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
    /// `(key, traceparent)` pairs for the data frame that follows (see `trace_context`).
    TraceContext(Vec<TraceEntry>),
    /// A client's interactive-transaction requests.
    Interactive(Vec<Interactive>),
    /// One encoded Raft message between coordinator replicas: the whole payload, its size
    /// bounded by the frame limit.
    Raft(Bytes),
    /// A follower's answer to a client: the leader it knows, if any.
    NotLeader(NotLeader),
    /// A client's saga requests.
    Sagas(Vec<SagaSubmit>),
    /// Three-phase-commit messages (`threepc`).
    ThreePc(Vec<super::ThreePcItem>),
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
            Frame::TraceContext(_) => FrameKind::TraceContext,
            Frame::Interactive(_) => FrameKind::Interactive,
            Frame::Raft(_) => FrameKind::Raft,
            Frame::NotLeader(_) => FrameKind::NotLeader,
            Frame::Sagas(_) => FrameKind::Sagas,
            Frame::ThreePc(_) => FrameKind::ThreePc,
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
            Frame::TraceContext(entries) => super::trace_context::encode(out, entries),
            Frame::Interactive(items) => put_batch(out, items),
            Frame::Raft(message) => out.put_slice(message),
            Frame::NotLeader(not_leader) => super::not_leader::encode(out, not_leader),
            Frame::Sagas(items) => put_batch(out, items),
            Frame::ThreePc(items) => put_batch(out, items),
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

pub(super) fn patch_length(out: &mut [u8], start: usize) {
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

impl BatchItem for Interactive {
    const KIND: FrameKind = FrameKind::Interactive;
    /// `u8 tag | u64 client | u64 seq | u8 isolation | u32 idle timeout` (Begin).
    const MIN_BYTES: usize = 22;
}

impl BatchItem for SagaSubmit {
    const KIND: FrameKind = FrameKind::Sagas;
    /// `u64 client | u64 seq | u16 step count`.
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
