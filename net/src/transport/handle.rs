//! The spawned transport: a [`Reactor`] on a thread of its own, driven by commands from
//! cloneable [`Transport`] handles over a bounded channel plus a `mio` waker.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use mio::Waker;

use super::{ConnId, Inbound, PeerId, Reactor, TransportConfig};

enum Command {
    Send(ConnId, Bytes),
    SendMany(Vec<(ConnId, Bytes)>),
    AddPeer { peer: PeerId, addr: SocketAddr, expect_node: String },
    Close(ConnId),
    // Write out everything queued, then answer whether every open connection's output is
    // now in the kernel.
    Flush(Sender<bool>),
    Shutdown,
}

/// Commands queued to a spawned transport's thread; a caller that gets this far ahead of
/// the loop waits for it (the loop itself never waits on the network).
const COMMANDS_QUEUE_MAX: usize = 65_536;

/// Handle to a transport running on its own thread ([`spawn`]). Cheap to clone; every method
/// only queues a command (waiting only while [`COMMANDS_QUEUE_MAX`] are queued) and wakes
/// the loop, so it never blocks on the network.
#[derive(Clone)]
pub struct Transport {
    commands: Sender<Command>,
    waker: Arc<Waker>,
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Transport {
    /// Queues `frame` (one or more whole encoded frames, e.g. from a
    /// [`BatchWriter`](crate::BatchWriter)) for `conn`. Dropped if `conn` is gone.
    pub fn send(&self, conn: ConnId, frame: Bytes) {
        self.command(Command::Send(conn, frame));
    }

    /// Queues many sends with one wake-up.
    pub fn send_many(&self, frames: Vec<(ConnId, Bytes)>) {
        if !frames.is_empty() {
            self.command(Command::SendMany(frames));
        }
    }

    /// Keeps an outbound connection to `addr` up, reconnecting with backoff (50 ms doubling
    /// to 100 ms). Each connection sends our `Hello` and must get a `Welcome` from
    /// `expect_node` in our cluster; then [`Inbound::PeerUp`] reports it.
    pub fn add_peer(&self, peer: PeerId, addr: SocketAddr, expect_node: String) {
        self.command(Command::AddPeer { peer, addr, expect_node });
    }

    /// Closes a connection after flushing what was queued for it. Closing a peer's
    /// connection also forgets the peer (no reconnect); `add_peer` again to restore it.
    pub fn close(&self, conn: ConnId) {
        self.command(Command::Close(conn));
    }

    /// Blocks until every frame queued before this call has been written to its socket
    /// (handed to the kernel, so it is sent even if this process dies next), or until
    /// `timeout` passes; returns which. Only for crash tests (failpoints): normal sends never
    /// wait for the network.
    pub fn flush(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let (done_tx, done) = crossbeam_channel::bounded(1);
            self.command(Command::Flush(done_tx));
            match done.recv_deadline(deadline) {
                Ok(true) => return true,
                // A full socket buffer: the loop keeps writing as the peer reads; ask again.
                Ok(false) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
                Ok(false) | Err(_) => return false,
            }
        }
    }

    /// Stops the loop, closes every connection and waits for the thread to end.
    pub fn shutdown(self) {
        self.command(Command::Shutdown);
        let handle = self.thread.lock().map(|mut slot| slot.take()).unwrap_or(None);
        if let Some(handle) = handle {
            let _ = handle.join();
        }
    }

    fn command(&self, command: Command) {
        if self.commands.send(command).is_ok() {
            // A failed wake means the loop is gone; nothing left to tell it.
            let _ = self.waker.wake();
        }
    }
}

/// Starts the transport on its own thread (see [`Reactor`] for driving it from the caller's
/// thread instead). Returns its handle and the bound listen address (useful with port 0);
/// `0.0.0.0:0` when `config.listen` is `None`.
pub fn spawn(config: TransportConfig, inbound: Sender<Vec<Inbound>>) -> io::Result<(Transport, SocketAddr)> {
    let (mut reactor, bound) = Reactor::new(config)?;
    let waker = reactor.waker();
    let (commands_tx, commands) = crossbeam_channel::bounded(COMMANDS_QUEUE_MAX);
    let thread = std::thread::Builder::new().name("net".into()).spawn(move || {
        let mut batch = Vec::new();
        loop {
            if let Flow::Stop = drain_commands(&mut reactor, &commands) {
                return;
            }
            if let Err(err) = reactor.turn(None, &mut batch) {
                tracing::error!("transport poll failed, stopping: {err}");
                return;
            }
            if !batch.is_empty() && inbound.send(std::mem::take(&mut batch)).is_err() {
                tracing::info!("transport stopping: the runtime dropped its inbound channel");
                return;
            }
        }
    })?;
    Ok((Transport { commands: commands_tx, waker, thread: Arc::new(Mutex::new(Some(thread))) }, bound))
}

fn drain_commands(reactor: &mut Reactor, commands: &Receiver<Command>) -> Flow {
    loop {
        match commands.try_recv() {
            Ok(Command::Send(conn, frame)) => reactor.send(conn, frame),
            Ok(Command::SendMany(frames)) => reactor.send_many(frames),
            Ok(Command::AddPeer { peer, addr, expect_node }) => reactor.add_peer(peer, addr, expect_node),
            Ok(Command::Close(conn)) => reactor.close(conn),
            Ok(Command::Flush(done)) => {
                let _ = done.send(reactor.write_out());
            }
            Ok(Command::Shutdown) => return Flow::Stop,
            Err(crossbeam_channel::TryRecvError::Empty) => return Flow::Continue,
            Err(crossbeam_channel::TryRecvError::Disconnected) => {
                tracing::info!("transport stopping: every handle was dropped");
                return Flow::Stop;
            }
        }
    }
}

enum Flow {
    Continue,
    Stop,
}
