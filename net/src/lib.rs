//! twophase-net: the wire protocol of twophase and the code that moves it over TCP.
//!
//! Owns:
//! - the frame codec ([`frame`]): `u32 length | u8 version | u8 kind | payload`, each data
//!   frame a batch of engine messages; [`FrameDecoder`] (streaming) and [`BatchWriter`]
//!   (hot-path encoder that rolls over to a new frame before the limits);
//! - the handshake (`Hello` → `Welcome`, or `Error` and close) and the limits it announces
//!   ([`NetLimits`]);
//! - the TCP transport for servers and their peer links ([`transport`]): one `mio` event-loop
//!   thread per process, batches in and out over crossbeam channels, reconnect with backoff;
//! - the blocking client library ([`client`]): [`Client`] (one transaction at a time, retries
//!   under the same `(client, seq)`) and [`Pipeline`] (many outstanding on one connection),
//!   each registering one coordinator session when it connects and keeping it across
//!   reconnects.
//!
//! The byte-by-byte layout is documented in `docs/PROTOCOL.md`; a unit test checks the
//! document's worked example against this code.
//!
//! Invariants:
//! - Limits are checked before allocating: a frame's length, version and kind from its
//!   header before its body is buffered; batch counts against `max_batch` and against the
//!   bytes left before a vector is reserved; keys, values and op lists by the engine's
//!   `Reader` likewise. Decoded keys and values are zero-copy slices of the frame.
//! - Malformed input from the network is an error, never a panic: the transport answers it
//!   with an `Error` frame, closes that connection and keeps serving every other one.
//! - Buffers are bounded: inbound by the frame limit and a per-poll read budget, outbound by
//!   `max_outbound_bytes_per_conn` (a slower reader is disconnected), the inbound channel by
//!   its capacity (the loop blocks, which pushes back through TCP).
//!
//! Must not: make protocol decisions (it never interprets a transaction, vote or outcome;
//! deduplication, busy replies and epochs belong to the engine and the runtime), depend on
//! the wal or the node runtime, or block the engine thread (sending is a channel push).

pub mod admin;
pub mod client;
pub mod frame;
pub mod transport;

#[cfg(test)]
mod doc_example;

pub use client::{Client, ClientError, ClientOptions, Directory, Pipeline};
pub use frame::{
    AdminOp, BatchItem, BatchWriter, DumpEnd, ErrorCode, ErrorFrame, Frame, FrameDecoder, FrameKind, HEADER_BYTES,
    Hello, MAX_HELLO_FRAME_BYTES, MessageTooLarge, NetLimits, PROTOCOL_VERSION, ProtocolError, Role, Welcome,
};
pub use transport::{ConnId, Inbound, PeerId, Reactor, Transport, TransportConfig, spawn};
