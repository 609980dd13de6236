//! Frames: `u32 length | u8 version | u8 kind | payload`, little-endian, where `length` counts
//! version, kind and payload. A data frame carries a batch of engine messages.
//!
//! [`FrameDecoder`] checks length, version and kind from the header before it buffers the
//! body, and every batch count against [`NetLimits::max_batch`] and the bytes that remain
//! before it allocates. [`BatchWriter`] is the hot-path encoder: it appends messages straight
//! into one buffer, patches length and count when a frame closes, and rolls over to a new
//! frame before the size or batch limit.

mod admin;
mod batch_writer;
mod decoder;
mod encode;
mod error;
mod handshake;
mod kind;
mod not_leader;
#[cfg(test)]
pub(crate) mod tests;
mod threepc;
mod trace_context;

use twophase_engine::Limits;

pub use admin::{AdminOp, DumpEnd, ReplicaRole, ReplicaStatus, STATUS_TEXT_BYTES_MAX};
pub use batch_writer::{BatchWriter, MessageTooLarge};
pub use decoder::FrameDecoder;
pub use encode::{BatchItem, Frame};
pub use error::{ErrorCode, ProtocolError};
pub use handshake::{ErrorFrame, Hello, Welcome};
pub use kind::{FrameKind, Role};
pub use not_leader::{LEADER_ADDRESS_BYTES_MAX, LEADER_NAME_BYTES_MAX, LeaderHint, NotLeader};
pub use threepc::ThreePcItem;
pub use trace_context::{MAX_TRACEPARENT_BYTES, TraceEntry, TraceKey, encode_frame as encode_trace_context};

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
