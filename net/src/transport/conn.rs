//! Per-connection state and IO: reading into the decoder, queueing and writing output
//! (bounded per connection), failing with an `Error` frame, closing and lingering.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use mio::net::TcpStream;

use super::reactor::Reactor;
use super::{ConnId, Inbound, PeerId};
use crate::frame::{ErrorCode, FrameDecoder, ProtocolError};

/// Bytes read from one connection per loop iteration before the others get a turn.
const READ_BUDGET: usize = 1024 * 1024;
/// Slices per vectored write.
const MAX_IOVECS: usize = 64;
/// How long a connection closed for a protocol error keeps discarding input so that the peer
/// reads the error frame rather than a reset.
pub(super) const LINGER: Duration = Duration::from_secs(1);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum State {
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

pub(super) struct Conn {
    pub(super) stream: TcpStream,
    pub(super) state: State,
    pub(super) peer: Option<PeerId>,
    /// Accepted/PeerUp was reported, so Closed/PeerDown is owed.
    pub(super) reported: bool,
    pub(super) decoder: FrameDecoder,
    pub(super) inbuf: BytesMut,
    pub(super) out: VecDeque<Bytes>,
    pub(super) out_bytes: usize,
    pub(super) dirty: bool,
    pub(super) write_shut: bool,
}

impl Reactor {
    pub(super) fn on_writable(&mut self, id: ConnId) {
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
    pub(super) fn read_conn(&mut self, id: ConnId, read_to_block: bool) {
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

    pub(super) fn decode_frames(&mut self, id: ConnId) {
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

    /// Sends an error frame and closes the connection once it is flushed.
    pub(super) fn fail(&mut self, id: ConnId, error: ProtocolError) {
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
    pub(super) fn drop_conn(&mut self, id: ConnId) {
        let Some(mut conn) = self.conns.remove(&id) else { return };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        if conn.state != State::Closing {
            self.lost(id, conn.peer, conn.reported);
        }
    }

    pub(super) fn flush_conn(&mut self, id: ConnId) {
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

    pub(super) fn flush_dirty(&mut self) {
        for id in std::mem::take(&mut self.dirty) {
            self.flush_conn(id);
        }
    }

    pub(super) fn close_after_flush(&mut self, id: ConnId) {
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

    pub(super) fn queue(&mut self, id: ConnId, frame: Bytes) {
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
}

pub(super) fn mark_dirty(conn: &mut Conn, id: ConnId, dirty: &mut Vec<ConnId>) {
    if !conn.dirty {
        conn.dirty = true;
        dirty.push(id);
    }
}
