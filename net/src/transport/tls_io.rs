//! TLS on a connection of the loop: rustls is sans-IO, so the loop moves the bytes. Reads go
//! socket → `read_tls` → `process_new_packets` → plaintext appended to the connection's
//! input buffer (the frame decoder never sees a byte before the peer's certificate passed);
//! writes move the queued frame bytes, whole batches at a time, into `writer()` (up to
//! [`TLS_BUFFER_BYTES`] buffered inside rustls) and `write_tls` them to the socket.
//!
//! When the handshake completes, the peer's identity comes from its end-entity certificate:
//! a server runs the full client chain check here (see `crate::tls`) and refuses with
//! `Unauthenticated`; a dialling side takes the server's identity (rustls already verified
//! its chain and name) and compares it with the `Welcome`.

use std::collections::VecDeque;
use std::io::{self, BufRead, IoSlice, Write};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use mio::net::TcpStream;

use super::ConnId;
use super::conn::{MAX_IOVECS, State, consume_queued, mark_dirty, queued_slices};
use super::reactor::Reactor;
use crate::frame::{ErrorCode, ProtocolError};
use crate::tls::{Security, TlsMaterial, authenticated_identity};

/// Encrypted output rustls may hold per connection beyond the queued frames. Large enough
/// that one `write_tls` hands the kernel up to a megabyte (64 records of 16 KiB), small
/// against the per-connection outbound bound.
pub(super) const TLS_BUFFER_BYTES: usize = 1024 * 1024;

/// The first byte of every TLS record that opens a connection (a handshake record).
const TLS_HANDSHAKE_RECORD: u8 = 0x16;
/// The major version byte that follows it in every TLS record header.
const TLS_MAJOR_VERSION: u8 = 0x03;

/// What feeding received bytes to rustls gave.
pub(super) enum TlsInput {
    /// Consumed; any plaintext is in the input buffer.
    Fed,
    /// The peer sent close_notify: it sends nothing more.
    PeerClosed,
    /// An accepted peer does not speak TLS at all (a plaintext client dialled a TLS server).
    NotTls,
    /// A TLS failure (bad record, alert from the peer, handshake failure).
    Failed(String),
}

/// Whether the first bytes of a connection can be a TLS record header. A twophase frame
/// starts with a little-endian length: a Hello's second byte is 0, never 3.
fn looks_like_tls(first: &[u8]) -> bool {
    first.first() == Some(&TLS_HANDSHAKE_RECORD) && first.get(1).is_none_or(|&byte| byte == TLS_MAJOR_VERSION)
}

/// Feeds `bytes` (just read from the socket) to `tls`, appending what they decrypt to
/// `inbuf`. `first_input`: nothing was received on this connection before.
pub(super) fn feed(
    tls: &mut rustls::Connection,
    mut bytes: &[u8],
    first_input: bool,
    inbuf: &mut BytesMut,
) -> TlsInput {
    if first_input && tls.is_handshaking() && !looks_like_tls(bytes) {
        return match tls {
            rustls::Connection::Server(_) => TlsInput::NotTls,
            rustls::Connection::Client(_) => {
                TlsInput::Failed("the server answered in plaintext (is it running with --insecure-plaintext?)".into())
            }
        };
    }
    while !bytes.is_empty() {
        match tls.read_tls(&mut bytes) {
            // Only after close_notify: whatever follows it is discarded.
            Ok(0) => return TlsInput::PeerClosed,
            Ok(_) => {}
            Err(err) => return TlsInput::Failed(err.to_string()),
        }
        let state = match tls.process_new_packets() {
            Ok(state) => state,
            Err(err) => return TlsInput::Failed(err.to_string()),
        };
        if let Err(err) = take_plaintext(tls, state.plaintext_bytes_to_read(), inbuf) {
            return TlsInput::Failed(err.to_string());
        }
        if state.peer_has_closed() {
            return TlsInput::PeerClosed;
        }
    }
    TlsInput::Fed
}

/// Appends the `plaintext` bytes rustls decrypted to `inbuf`, straight from rustls' buffers
/// (no zero-filled staging area).
fn take_plaintext(tls: &mut rustls::Connection, mut plaintext: usize, inbuf: &mut BytesMut) -> io::Result<()> {
    inbuf.reserve(plaintext);
    let mut reader = tls.reader();
    while plaintext > 0 {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "rustls announced more plaintext than it held"));
        }
        let taken = chunk.len().min(plaintext);
        inbuf.extend_from_slice(&chunk[..taken]);
        reader.consume(taken);
        plaintext -= taken;
    }
    Ok(())
}

/// Moves queued frame bytes into `tls` and its records into the socket until the queue is
/// empty or the socket is full; counts the bytes written in `bytes_written`. `Err`: the
/// connection is broken.
pub(super) fn write_through(
    tls: &mut rustls::Connection,
    stream: &mut TcpStream,
    out: &mut VecDeque<Bytes>,
    out_bytes: &mut usize,
    bytes_written: &mut u64,
) -> Result<(), String> {
    loop {
        while !out.is_empty() {
            // All queued frames in one vectored write: rustls cuts their concatenation into
            // full 16 KiB records (one per frame otherwise: an AEAD call, a record header and
            // an allocation each). Accepts as much as fits under the buffer limit (nothing
            // while it is full).
            let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
            let count = queued_slices(out, &mut slices);
            let accepted = tls.writer().write_vectored(&slices[..count]).map_err(|err| err.to_string())?;
            if accepted == 0 {
                break;
            }
            consume_queued(out, out_bytes, accepted);
        }
        if !tls.wants_write() {
            return Ok(());
        }
        match tls.write_tls(stream) {
            Ok(0) => return Err("write returned 0".into()),
            Ok(written) => *bytes_written += written as u64,
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(err) if err.kind() == io::ErrorKind::Interrupted => {}
            Err(err) => return Err(err.to_string()),
        }
    }
}

impl Reactor {
    pub(super) fn tls_material(&self) -> Option<Arc<TlsMaterial>> {
        match &self.config.security {
            Security::Tls(material) => Some(material.clone()),
            Security::InsecurePlaintext => None,
        }
    }

    /// A new TLS session for a socket: server side when accepted, client side when dialled.
    pub(super) fn new_tls(&self, accepted: bool) -> io::Result<Option<rustls::Connection>> {
        let Some(material) = self.tls_material() else { return Ok(None) };
        let mut tls: rustls::Connection = if accepted { material.accept()?.into() } else { material.connect()?.into() };
        tls.set_buffer_limit(Some(TLS_BUFFER_BYTES));
        Ok(Some(tls))
    }

    /// After input on a TLS connection: schedules the records rustls wants to send (its
    /// handshake answers) and, the moment the handshake completes, establishes the peer's
    /// identity or refuses it. Returns whether the connection may decode its input.
    pub(super) fn after_tls_input(&mut self, id: ConnId) -> bool {
        let Some(material) = self.tls_material() else { return true };
        let Some(conn) = self.conns.get_mut(&id) else { return false };
        let Some(tls) = conn.tls.as_ref() else { return true };
        let (wants_write, handshaking) = (tls.wants_write(), tls.is_handshaking());
        if wants_write {
            mark_dirty(conn, id, &mut self.dirty);
        }
        if handshaking {
            return false;
        }
        if let Some(refusal) = conn.refusal.take() {
            // Refused while the handshake ran (over the connection limit): now it can be told.
            self.fail(id, refusal);
            return false;
        }
        if conn.identity.is_some() || conn.state == State::Closing {
            return true;
        }
        let certificates = conn.tls.as_ref().and_then(|tls| tls.peer_certificates());
        let outcome = if conn.peer.is_none() {
            material.verify_client_chain(certificates).and_then(|identity| {
                if identity.cluster == self.config.me.cluster {
                    Ok(identity)
                } else {
                    // Never name the server's cluster to a stranger.
                    Err(format!("a certificate of cluster '{}' is not accepted here", identity.cluster))
                }
            })
        } else {
            // rustls verified the server's chain and name during the handshake.
            match certificates.and_then(|chain| chain.first()) {
                Some(end_entity) => authenticated_identity(end_entity),
                None => Err("the server presented no certificate".into()),
            }
        };
        match outcome {
            Ok(identity) => {
                tracing::debug!(conn = id, peer = %identity, "TLS handshake done");
                conn.identity = Some(identity);
                true
            }
            Err(message) if conn.peer.is_none() => {
                tracing::warn!(conn = id, "TLS client refused: {message}");
                self.fail(id, ProtocolError::new(ErrorCode::Unauthenticated, message));
                false
            }
            Err(message) => {
                tracing::warn!(conn = id, peer = ?conn.peer, "peer's certificate refused: {message}");
                self.drop_conn(id);
                false
            }
        }
    }
}
