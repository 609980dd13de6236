//! The load's fixed address in front of a coordinator group during a chaos run: every
//! connection accepted here is forwarded, bytes unchanged (TLS end to end), to the member
//! that leads when it arrives ([`LeaderLookup`]). The load's clients reconnect after their
//! leader dies; their new connections reach its successor.
//!
//! A stand-in until the client library follows `NotLeader` replies across the members
//! itself; then the load connects to the members directly and this goes.
//!
//! Invariants: a connection is forwarded to a leader or closed; it never waits for one longer
//! than [`LEADER_WAIT`]. Must not: read or change what it forwards.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::cluster::LeaderLookup;

/// Longest a new connection waits for some member to lead (an election after a kill).
const LEADER_WAIT: Duration = Duration::from_secs(30);
/// How often the accept loop looks for a stop, and a waiting connection for a leader.
const POLL: Duration = Duration::from_millis(5);
const CHUNK_BYTES: usize = 64 << 10;

pub struct Forwarder {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Forwarder {
    /// Listens on a free loopback port and forwards to whoever leads.
    pub fn start(lookup: LeaderLookup) -> anyhow::Result<Forwarder> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the load's forwarder")?;
        listener.set_nonblocking(true).context("a non-blocking forwarder")?;
        let addr = listener.local_addr().context("the forwarder's address")?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        std::thread::Builder::new()
            .name("chaos-forward".into())
            .spawn(move || accept_loop(listener, lookup, stopping))
            .context("starting the forwarder")?;
        Ok(Forwarder { addr, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn accept_loop(listener: TcpListener, lookup: LeaderLookup, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((client, _)) => {
                let lookup = lookup.clone();
                std::thread::spawn(move || forward(client, &lookup));
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock => std::thread::sleep(POLL),
            Err(err) => {
                tracing::warn!("the load's forwarder could not accept: {err}");
                std::thread::sleep(POLL);
            }
        }
    }
}

/// Connects `client` to the leader (waiting for one) and pumps both ways until either
/// side closes; then closes both.
fn forward(client: TcpStream, lookup: &LeaderLookup) {
    let Some(server) = dial_leader(lookup) else {
        tracing::warn!("no coordinator led within {LEADER_WAIT:?}; closing a load connection");
        return;
    };
    let streams = client.set_nonblocking(false).and_then(|()| {
        client.set_nodelay(true)?;
        server.set_nodelay(true)?;
        Ok((client.try_clone()?, server.try_clone()?))
    });
    let Ok((client_in, server_in)) = streams else { return };
    std::thread::spawn(move || pump(server_in, client_in));
    pump(client, server);
}

fn dial_leader(lookup: &LeaderLookup) -> Option<TcpStream> {
    let deadline = Instant::now() + LEADER_WAIT;
    while Instant::now() < deadline {
        if let Some(leader) = lookup.leader_addr()
            && let Ok(stream) = TcpStream::connect_timeout(&leader, Duration::from_secs(1))
        {
            return Some(stream);
        }
        std::thread::sleep(POLL);
    }
    None
}

fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buf = vec![0u8; CHUNK_BYTES];
    loop {
        match from.read(&mut buf) {
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Ok(0) | Err(_) => break,
            Ok(read) => {
                if to.write_all(&buf[..read]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}
