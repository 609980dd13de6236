//! Per-connection state and IO: reading into the decoder, queueing and writing output
//! (bounded per connection), failing with an `Error` frame, closing and lingering.

use std::collections::VecDeque;
use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use mio::net::TcpStream;

use super::reactor::Reactor;
use super::stats::{self, ConnCounters};
use super::tls_io::{self, TlsInput};
use super::{ConnId, Inbound, PeerId};
use crate::frame::{ErrorCode, FrameDecoder, ProtocolError};
use crate::tls::PeerIdentity;

/// Bytes read from one connection per loop iteration before the others get a turn.
const READ_BUDGET: usize = 1024 * 1024;
/// Slices per vectored write.
pub(super) const MAX_IOVECS: usize = 64;
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
    /// The TLS session (server side when accepted, client side when dialled); `None` on an
    /// insecure plaintext transport.
    pub(super) tls: Option<rustls::Connection>,
    /// Nothing was received yet (a TLS server tells a plaintext client from the first bytes).
    pub(super) awaiting_first_input: bool,
    pub(super) close_notify_sent: bool,
    /// Who the peer is. TLS: from its certificate, set the moment the TLS handshake
    /// completes (before any frame is decoded). Plaintext: the accepted `Hello`'s claim.
    pub(super) identity: Option<PeerIdentity>,
    /// Bytes and frames in and out (see `stats`).
    pub(super) counters: ConnCounters,
    /// An accepted TLS connection refused while its handshake runs (the server is at its
    /// connection limit): the error is sent, encrypted, once the handshake completes, since
    /// nothing else could reach the peer. The handshake deadline bounds the wait.
    pub(super) refusal: Option<ProtocolError>,
}

impl Conn {
    /// Output not yet handed to the kernel: queued frames or encrypted records.
    pub(super) fn has_output(&self) -> bool {
        !self.out.is_empty() || self.tls.as_ref().is_some_and(|tls| tls.wants_write())
    }

    /// Takes bytes just read from the socket: plaintext straight into the input buffer,
    /// TLS records through rustls.
    fn take_input(&mut self, bytes: &[u8]) -> TlsInput {
        let first_input = std::mem::replace(&mut self.awaiting_first_input, false);
        match self.tls.as_mut() {
            None => {
                self.inbuf.extend_from_slice(bytes);
                TlsInput::Fed
            }
            Some(tls) => {
                let input = tls_io::feed(tls, bytes, first_input, &mut self.inbuf);
                if let TlsInput::Failed(_) = input {
                    // Best effort: the alert rustls queued tells the peer why.
                    let _ = tls.write_tls(&mut self.stream);
                }
                input
            }
        }
    }
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
                    conn.counters.frames_out += 1;
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
        let mut not_tls = false;
        loop {
            match conn.stream.read(&mut self.scratch) {
                Ok(0) => {
                    lost = Some("closed by peer".to_string());
                    break;
                }
                Ok(n) => {
                    conn.counters.bytes_in += n as u64;
                    if conn.state != State::Closing {
                        match conn.take_input(&self.scratch[..n]) {
                            TlsInput::Fed => {}
                            TlsInput::PeerClosed => {
                                lost = Some("closed by peer (TLS close_notify)".to_string());
                                break;
                            }
                            TlsInput::NotTls => {
                                not_tls = true;
                                break;
                            }
                            TlsInput::Failed(reason) => {
                                // Certificates that do not verify end here: operators must see it.
                                tracing::warn!(conn = id, peer = ?conn.peer, "TLS failure: {reason}");
                                lost = Some(format!("TLS: {reason}"));
                                break;
                            }
                        }
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
        if not_tls {
            return self.refuse_plaintext_client(id);
        }
        // Frames that arrived before an EOF still count (once the peer's certificate passed).
        if self.after_tls_input(id) {
            self.decode_frames(id);
        }
        let Some(reason) = lost else { return };
        let Some(conn) = self.conns.get(&id) else { return };
        if conn.state != State::Closing && !conn.inbuf.is_empty() {
            // The peer may still read: tell it its last frame was cut short.
            let message = format!("connection closed in the middle of a frame ({} bytes buffered)", conn.inbuf.len());
            self.fail(id, ProtocolError::new(ErrorCode::Malformed, message));
            if self.conns.get(&id).is_some_and(Conn::has_output) {
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
                Ok(Some(frame)) => {
                    conn.counters.frames_in += 1;
                    self.on_frame(id, frame);
                }
                Ok(None) => return,
                Err(err) => {
                    tracing::warn!(conn = id, "protocol error: {err}");
                    self.fail(id, err);
                    return;
                }
            }
        }
    }

    /// A plaintext client dialled this TLS server: it is told so in plaintext, since it
    /// cannot read anything else.
    fn refuse_plaintext_client(&mut self, id: ConnId) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        conn.tls = None;
        conn.inbuf.clear();
        tracing::warn!(conn = id, "refusing a plaintext connection: this server requires TLS");
        let message = "this server requires TLS with a client certificate signed by the cluster's CA";
        self.fail(id, ProtocolError::new(ErrorCode::Unauthenticated, message));
    }

    /// Refuses an accepted connection with `error`: at once on plaintext; under TLS once the
    /// handshake completes (see [`Conn::refusal`]), so the peer learns why rather than
    /// seeing a bare close.
    pub(super) fn refuse_accepted(&mut self, id: ConnId, error: ProtocolError) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        if conn.tls.as_ref().is_some_and(|tls| tls.is_handshaking()) {
            conn.refusal = Some(error);
            return;
        }
        self.fail(id, error);
    }

    /// Sends an error frame and closes the connection once it is flushed.
    pub(super) fn fail(&mut self, id: ConnId, error: ProtocolError) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        if conn.state == State::Closing {
            return;
        }
        if conn.tls.as_ref().is_some_and(|tls| tls.is_handshaking()) {
            // No frame can reach a peer before the TLS handshake completes.
            tracing::debug!(conn = id, "closing during the TLS handshake: {error}");
            return self.drop_conn(id);
        }
        conn.state = State::Closing;
        conn.inbuf = BytesMut::new();
        let frame = error.to_frame().to_bytes();
        conn.counters.frames_out += 1;
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
        self.closed_counters.add(&conn.counters);
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
        if let Some(tls) = conn.tls.as_mut() {
            let mut written = tls_io::write_through(
                tls,
                &mut conn.stream,
                &mut conn.out,
                &mut conn.out_bytes,
                &mut conn.counters.bytes_out,
            );
            if written.is_ok() && conn.state == State::Closing && conn.out.is_empty() && !conn.close_notify_sent {
                conn.close_notify_sent = true;
                tls.send_close_notify();
                written = tls_io::write_through(
                    tls,
                    &mut conn.stream,
                    &mut conn.out,
                    &mut conn.out_bytes,
                    &mut conn.counters.bytes_out,
                );
            }
            return self.after_write(id, written.err());
        }
        let mut failed = None;
        while !conn.out.is_empty() {
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let count = queued_slices(&conn.out, &mut slices);
            match conn.stream.write_vectored(&slices[..count]) {
                Ok(0) => {
                    failed = Some("write returned 0".to_string());
                    break;
                }
                Ok(written) => {
                    conn.counters.bytes_out += written as u64;
                    consume_queued(&mut conn.out, &mut conn.out_bytes, written);
                }
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
                Err(err) => {
                    failed = Some(err.to_string());
                    break;
                }
            }
        }
        self.after_write(id, failed);
    }

    /// Once a closing connection's output is all in the kernel, shuts its write side; a
    /// failed write drops the connection.
    fn after_write(&mut self, id: ConnId, failed: Option<String>) {
        let Some(conn) = self.conns.get_mut(&id) else { return };
        if failed.is_none() && conn.state == State::Closing && !conn.has_output() && !conn.write_shut {
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
        conn.counters.frames_out += stats::frames_in(&frame);
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

/// Points `slices` at the front of the output queue; returns how many it filled.
pub(super) fn queued_slices<'a>(out: &'a VecDeque<Bytes>, slices: &mut [IoSlice<'a>]) -> usize {
    let mut count = 0;
    for (slot, chunk) in slices.iter_mut().zip(out.iter()) {
        *slot = IoSlice::new(chunk);
        count += 1;
    }
    count
}

/// Drops the first `written` bytes of the output queue (they were handed on).
pub(super) fn consume_queued(out: &mut VecDeque<Bytes>, out_bytes: &mut usize, mut written: usize) {
    *out_bytes -= written;
    while written > 0 {
        let front = out.front_mut().expect("written bytes were queued");
        if front.len() <= written {
            written -= front.len();
            out.pop_front();
        } else {
            front.advance(written);
            written = 0;
        }
    }
}

pub(super) fn mark_dirty(conn: &mut Conn, id: ConnId, dirty: &mut Vec<ConnId>) {
    if !conn.dirty {
        conn.dirty = true;
        dirty.push(id);
    }
}
