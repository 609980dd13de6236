//! A fault-injecting TCP proxy for tests that run real processes: one [`Proxy`] per
//! directed link (a process dials the proxy instead of its peer), whose fault the test
//! changes at any time.
//!
//! Faults: [`Fault::Pass`] forwards bytes as they come; [`Fault::Delay`] forwards each chunk
//! that long after it was read (order kept); [`Fault::Hold`] keeps what it reads until the
//! fault is set to anything else, then delivers it (late messages, in order, even from a
//! sender that closed meanwhile; `set(Fault::Pass)` releases, `heal` would drop them);
//! [`Fault::BlackHole`] keeps every connection
//! open and accepts new ones but drops every byte either way (a partition TCP does not
//! notice); [`Fault::Cut`] closes every connection and closes new ones at once (a partition
//! the endpoints see). Bytes dropped by a black hole stay dropped after healing: the
//! stream carried over it is garbled from then on, as on a real link that lost data, so a
//! test that heals a black hole also cuts the link (`heal` does both) to make the endpoints
//! reconnect.
//!
//! Must not: outlive the test (its threads stop when the `Proxy` drops) or buffer without
//! bound (each direction holds at most `CHUNKS_MAX` chunks, then stops reading).

#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// What the link does to the bytes it carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    Pass,
    Delay(Duration),
    Hold,
    BlackHole,
    Cut,
}

/// Chunks in flight per direction of a connection (delayed ones included).
const CHUNKS_MAX: usize = 1024;
const CHUNK_BYTES: usize = 64 << 10;
/// How often blocked threads look at the fault and the stop flag.
const POLL: Duration = Duration::from_millis(20);

struct Shared {
    upstream: SocketAddr,
    fault: Mutex<Fault>,
    stop: AtomicBool,
    /// Every live connection's two sockets, to close them on `Cut`; a connection leaves
    /// when both its directions ended (its sockets are then closed, not kept open here).
    live: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
    /// The next connection's key in `live`.
    next_conn: AtomicU64,
    /// Bytes forwarded to either side, and dropped by a black hole.
    forwarded_bytes: AtomicU64,
    dropped_bytes: AtomicU64,
}

/// One directed link: connections to [`addr`](Self::addr) are forwarded to the upstream.
pub struct Proxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
}

impl Proxy {
    /// A proxy on a free loopback port in front of `upstream` (which need not listen yet).
    pub fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("binding the proxy");
        listener.set_nonblocking(true).expect("a non-blocking listener");
        let addr = listener.local_addr().expect("the proxy's address");
        let shared = Arc::new(Shared {
            upstream,
            fault: Mutex::new(Fault::Pass),
            stop: AtomicBool::new(false),
            live: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            forwarded_bytes: AtomicU64::new(0),
            dropped_bytes: AtomicU64::new(0),
        });
        let accepting = shared.clone();
        thread::spawn(move || accept_loop(listener, accepting));
        Proxy { addr, shared }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn set(&self, fault: Fault) {
        *self.shared.fault.lock().unwrap() = fault;
        if fault == Fault::Cut {
            self.shared.close_all();
        }
    }

    /// Back to [`Fault::Pass`], closing the connections first so none carries a stream a
    /// black hole garbled.
    pub fn heal(&self) {
        self.set(Fault::Cut);
        self.set(Fault::Pass);
    }

    pub fn fault(&self) -> Fault {
        self.shared.fault()
    }

    /// Bytes forwarded so far (both directions).
    pub fn forwarded_bytes(&self) -> u64 {
        self.shared.forwarded_bytes.load(Ordering::Relaxed)
    }

    /// Bytes a black hole swallowed so far.
    pub fn dropped_bytes(&self) -> u64 {
        self.shared.dropped_bytes.load(Ordering::Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.close_all();
    }
}

impl Shared {
    fn fault(&self) -> Fault {
        *self.fault.lock().unwrap()
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }

    fn close_all(&self) {
        for (_, (a, b)) in self.live.lock().unwrap().drain() {
            let _ = a.shutdown(Shutdown::Both);
            let _ = b.shutdown(Shutdown::Both);
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    while !shared.stopped() {
        match listener.accept() {
            Ok((client, _)) => {
                if shared.fault() == Fault::Cut {
                    drop(client);
                    continue;
                }
                if let Err(err) = connect_pair(client, &shared) {
                    eprintln!("[proxy to {}] {err}", shared.upstream);
                }
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock => thread::sleep(POLL),
            Err(err) => {
                eprintln!("[proxy to {}] accept failed: {err}", shared.upstream);
                thread::sleep(POLL);
            }
        }
    }
}

/// Dials the upstream for an accepted connection and starts its two directions.
fn connect_pair(client: TcpStream, shared: &Arc<Shared>) -> std::io::Result<()> {
    client.set_nonblocking(false)?;
    let server = TcpStream::connect_timeout(&shared.upstream, Duration::from_secs(1))?;
    for stream in [&client, &server] {
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(POLL))?;
    }
    let conn = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    shared.live.lock().unwrap().insert(conn, (client.try_clone()?, server.try_clone()?));
    let ended = Arc::new(Ended { shared: shared.clone(), conn });
    start_direction(client.try_clone()?, server.try_clone()?, shared.clone(), ended.clone());
    start_direction(server, client, shared.clone(), ended);
    Ok(())
}

/// Shared by both directions' writers: dropped with the last of them, it takes the
/// connection out of `live`.
struct Ended {
    shared: Arc<Shared>,
    conn: u64,
}

impl Drop for Ended {
    fn drop(&mut self) {
        self.shared.live.lock().unwrap().remove(&self.conn);
    }
}

/// `from` → `to`: a reader that applies the fault and a writer that sends when due.
fn start_direction(from: TcpStream, to: TcpStream, shared: Arc<Shared>, ended: Arc<Ended>) {
    let (chunks, due) = sync_channel::<(Due, Vec<u8>)>(CHUNKS_MAX);
    let reading = shared.clone();
    thread::spawn(move || read_side(from, chunks, reading));
    thread::spawn(move || {
        write_side(to, due, shared);
        drop(ended);
    });
}

/// When a chunk may go: at an instant, or once the link no longer holds.
enum Due {
    At(Instant),
    Released,
}

fn read_side(mut from: TcpStream, chunks: SyncSender<(Due, Vec<u8>)>, shared: Arc<Shared>) {
    let mut buf = vec![0u8; CHUNK_BYTES];
    while !shared.stopped() {
        let read = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(read) => read,
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => break,
        };
        let due = match shared.fault() {
            Fault::Pass => Due::At(Instant::now()),
            Fault::Delay(delay) => Due::At(Instant::now() + delay),
            Fault::Hold => Due::Released,
            Fault::BlackHole => {
                shared.dropped_bytes.fetch_add(read as u64, Ordering::Relaxed);
                continue;
            }
            Fault::Cut => break,
        };
        if chunks.send((due, buf[..read].to_vec())).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
}

fn write_side(mut to: TcpStream, due: Receiver<(Due, Vec<u8>)>, shared: Arc<Shared>) {
    while let Ok((when, bytes)) = due.recv() {
        match when {
            Due::At(at) => {
                if let Some(wait) = at.checked_duration_since(Instant::now()) {
                    thread::sleep(wait);
                }
            }
            Due::Released => {
                while shared.fault() == Fault::Hold && !shared.stopped() {
                    thread::sleep(POLL);
                }
            }
        }
        if shared.stopped() || to.write_all(&bytes).is_err() {
            break;
        }
        shared.forwarded_bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
    }
    let _ = to.shutdown(Shutdown::Both);
}
