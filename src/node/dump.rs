//! A participant's answer to the admin `Dump`: its key-value state streamed in bounded
//! `DumpChunk` frames, then a `DumpEnd` with its counts.
//!
//! Owns: the dumps in progress (at most [`MAX_DUMPS`]) and their cursors.
//!
//! Invariants:
//! - Bounded memory: a dump adds at most [`CHUNKS_PER_BURST`] frames of about
//!   [`CHUNK_BYTES`] to the outbound queue, and only once everything the node had queued on
//!   every connection is in the kernel (`Reactor::write_out`): a slow reader slows its dump,
//!   it never makes the participant buffer the whole state.
//! - No copy of the store: the cursor is a position in the store's own iteration order,
//!   which stays the same as long as the store does not change.
//! - Consistent or refused: the store changes only when a `Committed` record is appended;
//!   a dump during which one was appended ends with `Error` (code 7, overloaded, "dump
//!   again") instead of `DumpEnd`, so a reader never takes a torn state for a whole one. A
//!   dump is meant to be taken once the load settled (the audit waits for `prepared == 0`).
//!
//! Must not: block the engine thread or hold a borrow of the store across steps.

use std::time::Duration;

use bytes::Bytes;
use twophase_engine::participant::Participant;
use twophase_engine::{PartRecord, Time};
use twophase_net::{ConnId, DumpEnd, ErrorCode, Frame, ProtocolError, Reactor};

use super::Clock;

/// A `DumpChunk` frame is closed once its entries take this many bytes (far below the
/// 16 MiB frame limit; one entry more than this at most).
pub const CHUNK_BYTES: usize = 1 << 20;

/// Chunks produced for one dump each time the output has drained.
pub const CHUNKS_PER_BURST: usize = 4;

/// Dumps streaming at once; another `Dump` request is refused (overloaded) meanwhile.
pub const MAX_DUMPS: usize = 4;

/// While a dump waits for its output to drain, the engine loop looks again this often.
const DRAIN_POLL: Duration = Duration::from_millis(1);

/// Encoded size of an entry besides its bytes: `u16` key length and `u32` value length.
const ENTRY_OVERHEAD_BYTES: usize = 6;

/// The dumps in progress and what they need to notice a change of the store.
pub struct DumpStreams {
    streams: Vec<Stream>,
    /// `Committed` records appended since the participant started.
    commits: u64,
    clock: Clock,
}

struct Stream {
    conn: ConnId,
    /// Entries sent so far: the position in the store's iteration order to resume at.
    sent: u64,
    /// `commits` when the first burst was produced; any other value means the store changed.
    commits_at_start: u64,
    /// Whether the first burst was produced (a change before it does not matter).
    started: bool,
}

/// What producing one burst of a dump came to.
enum Burst {
    More,
    Done,
}

impl DumpStreams {
    pub fn new(clock: Clock) -> DumpStreams {
        DumpStreams { streams: Vec::new(), commits: 0, clock }
    }

    /// Begins a dump for `conn`; its first chunks leave with the next [`DumpStreams::pump`].
    pub fn start(&mut self, transport: &mut Reactor, conn: ConnId) {
        if self.streams.iter().any(|stream| stream.conn == conn) {
            refuse(transport, conn, ErrorCode::UnexpectedFrame, "a Dump is already streaming on this connection");
            self.forget(conn);
        } else if self.streams.len() >= MAX_DUMPS {
            let message = format!("{MAX_DUMPS} dumps are streaming already; dump again later");
            refuse(transport, conn, ErrorCode::Overloaded, &message);
        } else {
            self.streams.push(Stream { conn, sent: 0, commits_at_start: self.commits, started: false });
        }
    }

    /// Drops the dump of a connection that closed.
    pub fn forget(&mut self, conn: ConnId) {
        self.streams.retain(|stream| stream.conn != conn);
    }

    /// Notes a record handed to the log: a `Committed` one changes the store.
    pub fn on_record(&mut self, record: &PartRecord) {
        if matches!(record, PartRecord::Committed { .. }) {
            self.commits += 1;
        }
    }

    /// While a dump streams, when the engine loop should look at its output again.
    pub fn next_deadline(&self) -> Option<Time> {
        (!self.streams.is_empty()).then(|| self.clock.now() + DRAIN_POLL)
    }

    /// Once the node's output has drained, queues the next burst of every dump in progress
    /// (or its end, or its refusal when the store changed).
    pub fn pump(&mut self, engine: &Participant, transport: &mut Reactor, fsync: bool) {
        if self.streams.is_empty() || !transport.write_out() {
            return;
        }
        let commits = self.commits;
        self.streams.retain_mut(|stream| {
            if !stream.started {
                stream.started = true;
                stream.commits_at_start = commits;
            }
            if stream.commits_at_start != commits {
                let changed = commits - stream.commits_at_start;
                let message = format!(
                    "the state changed while the dump streamed ({changed} commits applied); dump again once no \
                     transaction runs"
                );
                refuse(transport, stream.conn, ErrorCode::Overloaded, &message);
                return false;
            }
            let mut frames = Vec::with_capacity(CHUNKS_PER_BURST * (CHUNK_BYTES + 64 * 1024));
            let burst = next_burst(engine, stream, fsync, &mut frames);
            transport.send(stream.conn, Bytes::from(frames));
            matches!(burst, Burst::More)
        });
    }
}

/// Encodes into `frames` up to [`CHUNKS_PER_BURST`] chunks of `stream`'s dump from where it
/// stopped, and the `DumpEnd` if the store's end was reached.
fn next_burst(engine: &Participant, stream: &mut Stream, fsync: bool, frames: &mut Vec<u8>) -> Burst {
    let kv = engine.kv();
    // Positions are stable while the store is unchanged, which the caller checked.
    let mut entries = kv.iter().skip(usize::try_from(stream.sent).expect("a position fits in memory"));
    for _ in 0..CHUNKS_PER_BURST {
        let mut chunk = Vec::new();
        let mut chunk_bytes = 0;
        for (key, value) in entries.by_ref() {
            chunk_bytes += key.len() + value.len() + ENTRY_OVERHEAD_BYTES;
            chunk.push((Bytes::copy_from_slice(key), Bytes::copy_from_slice(value)));
            if chunk_bytes >= CHUNK_BYTES {
                break;
            }
        }
        let full = chunk_bytes >= CHUNK_BYTES;
        stream.sent += chunk.len() as u64;
        if !chunk.is_empty() {
            Frame::DumpChunk(chunk).encode(frames);
        }
        if !full {
            assert_eq!(stream.sent, kv.len() as u64, "an unchanged store yields every key exactly once");
            let end = DumpEnd {
                keys: stream.sent,
                prepared: saturate_u32(engine.prepared()),
                in_doubt: saturate_u32(engine.in_doubt()),
                fsync,
            };
            Frame::DumpEnd(end).encode(frames);
            return Burst::Done;
        }
    }
    Burst::More
}

fn saturate_u32(count: usize) -> u32 {
    u32::try_from(count).unwrap_or(u32::MAX)
}

/// Sends `Error` with `code` and closes the connection after it.
fn refuse(transport: &mut Reactor, conn: ConnId, code: ErrorCode, message: &str) {
    tracing::warn!(conn, "refusing a dump: {message}");
    transport.send(conn, ProtocolError::new(code, message.to_string()).to_frame().to_bytes());
    transport.close(conn);
}
