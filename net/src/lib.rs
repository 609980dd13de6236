//! twophase-net: the wire protocol of twophase and the code that moves it over TCP.
//!
//! Owns:
//! - the frame codec ([`frame`]): `u32 length | u8 version | u8 kind | payload`, each data
//!   frame a batch of engine messages; [`FrameDecoder`] (streaming) and [`BatchWriter`]
//!   (hot-path encoder that rolls over to a new frame before the limits); the
//!   `TraceContext` frame (W3C `traceparent` per request or transaction, opaque here: the
//!   runtime parses it);
//! - the handshake (`Hello` → `Welcome`, or `Error` and close) and the limits it announces
//!   ([`NetLimits`]);
//! - identity on every connection ([`tls`]): mutual TLS (rustls, `ring` provider, TLS 1.3)
//!   with the cluster CA ([`TlsMaterial`], [`Security`]), and the [`PeerIdentity`] a
//!   certificate names in its `twophase://<cluster>/<role>/<name>` URI SAN, handed to the
//!   runtime with each accepted connection;
//! - the TCP transport for servers and their peer links ([`transport`]): one `mio` event-loop
//!   thread per process, batches in and out over crossbeam channels, reconnect with backoff;
//! - the blocking client library ([`client`]): [`Client`] (one transaction at a time, retries
//!   under the same `(client, seq)`) and [`Pipeline`] (many outstanding on one connection),
//!   each registering one coordinator session when it connects and keeping it across
//!   reconnects; interactive transactions on a [`Client`] ([`interactive`]: `begin`,
//!   statements, `commit`), each request an `Interactive` frame (kind 21) under the
//!   session's next `(client, seq)`; sagas on a [`Client`] ([`saga`]: `saga().step(..)
//!   .compensate(..).run()`), each one `SagaSubmit` in a `Sagas` frame (kind 24);
//! - finding the leader of a replicated coordinator group (`endpoints`): a client lists
//!   every member, follows a follower's `NotLeader` frame (kind 23) and moves to the next
//!   member when a connection fails, within a bounded failover time;
//! - admin requests ([`admin`]): a coordinator's topology and replication status, and a
//!   participant's dump consumed chunk by chunk as it streams ([`admin::dump_each`]).
//! - free ports for processes started later ([`ports`]), below the ephemeral range;
//! - `fuzz_targets` (hidden): the decoder fuzz bodies shared by `fuzz/` and the stable
//!   random-input harness.
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
//! - With TLS, no byte of a connection reaches the frame decoder before the peer's
//!   certificate passed the full chain check, and a `Hello` is accepted only when it claims
//!   exactly the certificate's cluster, role and name and that role may connect
//!   (`Unauthenticated` / `Forbidden` otherwise; refusals never name the server's cluster).
//!   On an accepted connection each role sends only its own data frame kinds.
//! - Buffers are bounded: inbound by the frame limit and a per-poll read budget, outbound by
//!   `max_outbound_bytes_per_conn` (a slower reader is disconnected), the inbound channel by
//!   its capacity (the loop blocks, which pushes back through TCP).
//!
//! Must not: fall back to plaintext on its own (a [`TransportConfig`] names its
//! [`Security`]), make protocol decisions (it never interprets a transaction, vote or outcome;
//! deduplication, busy replies and epochs belong to the engine and the runtime), depend on
//! the wal or the node runtime, or block the engine thread (sending is a channel push).

pub mod admin;
pub mod client;
mod endpoints;
pub mod frame;
#[doc(hidden)]
pub mod fuzz_targets;
pub mod interactive;
pub mod ports;
pub mod saga;
pub mod tls;
pub mod transport;

#[cfg(test)]
mod doc_example;

pub use client::{Client, ClientError, ClientOptions, Directory, Pipeline, PipelinedRequest};
pub use frame::{
    AdminOp, BatchItem, BatchWriter, DumpEnd, ErrorCode, ErrorFrame, Frame, FrameDecoder, FrameKind, HEADER_BYTES,
    Hello, LEADER_NAME_BYTES_MAX, LeaderHint, MAX_HELLO_FRAME_BYTES, MAX_TRACEPARENT_BYTES, MessageTooLarge, NetLimits,
    NotLeader, PROTOCOL_VERSION, ProtocolError, ReplicaRole, ReplicaStatus, Role, ThreePcItem, TraceEntry, TraceKey,
    Welcome, encode_trace_context,
};
pub use interactive::{MAX_IDLE_TIMEOUT, Transaction, TxError};
pub use saga::{Saga, SagaError};
pub use tls::{PeerIdentity, SERVER_NAME, Security, TlsMaterial};
pub use transport::{ConnId, Inbound, PeerId, Reactor, Transport, TransportConfig, spawn};
/// SQL statements' parameters and results ([`Transaction::sql`]).
pub use twophase_engine::{Rows, SqlValue};
