//! Finding the node that serves: a client is configured with every node of a coordinator
//! group (or the one address of a single coordinator) and connects to whichever leads.
//!
//! [`Endpoints`] picks where the next connection goes: the leader a follower named in its
//! `NotLeader` first, then every configured address in turn. A refused or closed connection,
//! or a follower that knows no leader, moves on to the next address after a pause that
//! doubles from [`BACKOFF_FIRST`] to [`BACKOFF_MAX`]; following a newly named leader waits
//! for nothing. The search is bounded in time: once connections have failed (or been
//! redirected) for [`ClientOptions::failover_timeout`](crate::ClientOptions) without a
//! reply in between, [`ClientError::NoLeader`] ends it.

use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use crate::client::{ClientError, ClientOptions, Connection};
use crate::frame::{NotLeader, Role};

/// The first pause between two rounds of failed connections.
pub(crate) const BACKOFF_FIRST: Duration = Duration::from_millis(10);
/// The longest pause between two connection attempts: short against a group's election
/// (300–600 ms), so that a client finds the new leader within ~100 ms of its election
/// rather than up to 500 ms later (a round costs one connection attempt per member).
pub(crate) const BACKOFF_MAX: Duration = Duration::from_millis(100);

/// The configured nodes, the leader last heard of, and the failure streak.
#[derive(Debug)]
pub(crate) struct Endpoints {
    addrs: Vec<SocketAddr>,
    /// Named by a follower's `NotLeader`; tried first, once.
    hint: Option<SocketAddr>,
    /// A named leader that could not be reached since the last reply: followers that still
    /// name it (it died, they have not noticed yet) are treated as knowing no leader.
    unreachable_hint: Option<SocketAddr>,
    /// The index in `addrs` the next round starts at.
    next: usize,
    /// When connections started failing (no reply since), if they are.
    failing_since: Option<Instant>,
    backoff: Duration,
    /// The next connection waits `backoff` first: a follower knew no leader (an election
    /// is under way), so going round the members at once would only spin.
    pause: bool,
    /// Where the current connection goes, and how often that changed.
    current: Option<SocketAddr>,
    node_changes: u64,
}

impl Endpoints {
    pub(crate) fn new(addrs: Vec<SocketAddr>) -> Endpoints {
        assert!(!addrs.is_empty(), "a client needs at least one address");
        Endpoints {
            addrs,
            hint: None,
            unreachable_hint: None,
            next: 0,
            failing_since: None,
            backoff: BACKOFF_FIRST,
            pause: false,
            current: None,
            node_changes: 0,
        }
    }

    /// How many times the connection moved to another node than the one before: an
    /// interactive transaction lives on one node and must not follow a move.
    pub(crate) fn node_changes(&self) -> u64 {
        self.node_changes
    }

    /// The node the latest connection went to.
    pub(crate) fn current(&self) -> Option<SocketAddr> {
        self.current
    }

    /// A reply arrived: the node serves, the failure streak is over.
    pub(crate) fn served(&mut self) {
        self.failing_since = None;
        self.backoff = BACKOFF_FIRST;
        self.pause = false;
        self.unreachable_hint = None;
    }

    /// A follower turned us away: go to the leader it names next (a leader it does not
    /// know, or the node we were on, means waiting and trying the others).
    pub(crate) fn redirect(&mut self, not_leader: &NotLeader) {
        self.failing_since.get_or_insert_with(Instant::now);
        self.hint = not_leader
            .leader
            .as_ref()
            .map(|leader| leader.addr)
            .filter(|addr| Some(*addr) != self.current && Some(*addr) != self.unreachable_hint);
        self.pause = self.hint.is_none();
        tracing::debug!(term = not_leader.term, leader = ?self.hint, "following NotLeader");
    }

    /// Connects to the node that serves, as far as we know: the named leader, then each
    /// configured address, pausing between rounds, until one handshakes or the failover
    /// time is over. A failure no other node can fix (TLS, refusal) ends it at once. With
    /// one configured address (a single coordinator) a failed round returns its error as it
    /// is, for the caller's own retries, as before groups existed.
    pub(crate) fn connect(
        &mut self,
        options: &ClientOptions,
        identity: &str,
        role: Role,
    ) -> Result<Connection, ClientError> {
        let started = *self.failing_since.get_or_insert_with(Instant::now);
        let deadline = started + options.failover_timeout;
        if Instant::now() >= deadline {
            return Err(self.no_leader(started, "every node turned the client away".into()));
        }
        if std::mem::take(&mut self.pause) {
            self.sleep_until_retry(deadline);
        }
        loop {
            let mut last = None;
            if let Some(addr) = self.hint.take() {
                match self.try_one(addr, options, identity, role) {
                    Ok(conn) => return Ok(conn),
                    Err(err) => {
                        self.unreachable_hint = Some(addr);
                        last = Some(self.check(err)?);
                    }
                }
            }
            for _ in 0..self.addrs.len() {
                let addr = self.addrs[self.next % self.addrs.len()];
                self.next = (self.next + 1) % self.addrs.len();
                match self.try_one(addr, options, identity, role) {
                    Ok(conn) => return Ok(conn),
                    Err(err) => last = Some(self.check(err)?),
                }
                if self.hint.is_some() {
                    break; // a follower named the leader: go there first
                }
            }
            let last = last.expect("every round tries an address");
            if self.addrs.len() == 1 && self.hint.is_none() {
                return Err(last);
            }
            if Instant::now() >= deadline {
                return Err(self.no_leader(started, last.to_string()));
            }
            if self.hint.is_none() {
                self.sleep_until_retry(deadline);
            }
        }
    }

    fn no_leader(&self, started: Instant, last: String) -> ClientError {
        ClientError::NoLeader { after: started.elapsed(), addrs: self.addrs.clone(), last }
    }

    /// Waits the current backoff (never past `deadline`) and doubles it.
    fn sleep_until_retry(&mut self, deadline: Instant) {
        std::thread::sleep(self.backoff.min(deadline.saturating_duration_since(Instant::now())));
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    /// One connection and handshake.
    fn try_one(
        &mut self,
        addr: SocketAddr,
        options: &ClientOptions,
        identity: &str,
        role: Role,
    ) -> Result<Connection, ClientError> {
        let stream = TcpStream::connect_timeout(&addr, options.request_timeout)?;
        let conn = Connection::handshake(stream, options, identity, role)?;
        if self.current != Some(addr) {
            if self.current.is_some() {
                self.node_changes += 1;
            }
            self.current = Some(addr);
        }
        Ok(conn)
    }

    /// A failed attempt: remembered when another node may do better, returned otherwise.
    fn check(&mut self, err: ClientError) -> Result<ClientError, ClientError> {
        match err {
            ClientError::NotLeader(not_leader) => {
                self.redirect(&not_leader);
                Ok(ClientError::NotLeader(not_leader))
            }
            err if err.is_transient() => Ok(err),
            err => Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;

    use bytes::BytesMut;

    use super::*;
    use crate::frame::{Frame, FrameDecoder, LeaderHint, NetLimits, Welcome};

    /// A port nothing listens on (bound, then closed).
    fn dead_addr() -> SocketAddr {
        TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
    }

    /// A server that welcomes `connections` clients (plaintext) and then holds each open.
    fn welcoming_server(connections: usize) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let mut held = Vec::new();
            for _ in 0..connections {
                let (mut stream, _) = listener.accept().unwrap();
                let mut decoder = FrameDecoder::new(NetLimits::default());
                let mut buf = BytesMut::new();
                let hello = loop {
                    let mut chunk = [0u8; 1024];
                    let n = stream.read(&mut chunk).unwrap();
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(Frame::Hello(hello)) = decoder.decode(&mut buf).unwrap() {
                        break hello;
                    }
                };
                let welcome = Welcome {
                    role: Role::Coordinator,
                    cluster: hello.cluster,
                    node: "c9".into(),
                    directory: Vec::new(),
                    limits: NetLimits::default(),
                };
                stream.write_all(&Frame::Welcome(welcome).to_bytes()).unwrap();
                held.push(stream);
            }
        });
        addr
    }

    fn options(failover_timeout: Duration) -> ClientOptions {
        ClientOptions { request_timeout: Duration::from_secs(5), failover_timeout, ..ClientOptions::default() }
    }

    #[test]
    fn a_single_unreachable_address_fails_at_once_with_its_own_error() {
        let mut endpoints = Endpoints::new(vec![dead_addr()]);
        let err = endpoints.connect(&options(Duration::from_secs(3600)), "me", Role::Client).err().unwrap();
        assert!(matches!(err, ClientError::Io(_)), "{err}");
    }

    #[test]
    fn no_reachable_node_ends_with_no_leader_naming_every_address() {
        let addrs = vec![dead_addr(), dead_addr()];
        let mut endpoints = Endpoints::new(addrs.clone());
        let err = endpoints.connect(&options(Duration::from_millis(100)), "me", Role::Client).err().unwrap();
        match &err {
            ClientError::NoLeader { addrs: tried, last, .. } => {
                assert_eq!(tried, &addrs);
                assert!(!last.is_empty());
            }
            other => panic!("expected NoLeader, got {other}"),
        }
        assert!(err.to_string().contains(&addrs[1].to_string()), "{err}");
        assert_eq!(endpoints.current(), None);
    }

    #[test]
    fn a_dead_listed_node_is_skipped_for_the_next() {
        let live = welcoming_server(1);
        let mut endpoints = Endpoints::new(vec![dead_addr(), live]);
        endpoints.connect(&options(Duration::from_secs(10)), "me", Role::Client).unwrap();
        assert_eq!((endpoints.current(), endpoints.node_changes()), (Some(live), 0));
    }

    #[test]
    fn a_named_leader_is_tried_first_even_when_not_listed_and_counts_as_a_move() {
        let (listed, leader) = (welcoming_server(3), welcoming_server(1));
        let mut endpoints = Endpoints::new(vec![listed]);
        let options = options(Duration::from_secs(10));
        endpoints.connect(&options, "me", Role::Client).unwrap();
        assert_eq!(endpoints.current(), Some(listed));
        endpoints.redirect(&NotLeader { term: 2, leader: Some(LeaderHint { name: "c9".into(), addr: leader }) });
        endpoints.connect(&options, "me", Role::Client).unwrap();
        assert_eq!((endpoints.current(), endpoints.node_changes()), (Some(leader), 1));
        // A follower naming a leader that could not be reached is not followed again.
        let dead = dead_addr();
        let mut stale = Endpoints::new(vec![listed]);
        stale.redirect(&NotLeader { term: 2, leader: Some(LeaderHint { name: "c8".into(), addr: dead }) });
        stale.connect(&options, "me", Role::Client).unwrap();
        stale.redirect(&NotLeader { term: 2, leader: Some(LeaderHint { name: "c8".into(), addr: dead }) });
        assert_eq!((stale.hint, stale.pause), (None, true));
        // A follower naming the node we are on (stale) or no leader: round the list again.
        endpoints.redirect(&NotLeader { term: 3, leader: Some(LeaderHint { name: "c9".into(), addr: leader }) });
        endpoints.connect(&options, "me", Role::Client).unwrap();
        assert_eq!((endpoints.current(), endpoints.node_changes()), (Some(listed), 2));
    }
}
