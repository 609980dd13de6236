//! The executor: a bounded pool of connections and as many threads, between a caller that
//! must never block (the participant's engine thread) and blocking database drivers.
//!
//! The caller `submit`s requests with a tag; a full queue is refused at once (`Busy`), never
//! waited on. Each request runs on a pool thread and its completion comes back through a
//! bounded channel (`completions`), after which the optional wake-up callback runs (the node
//! installs its poll's waker there). A pool thread waits when that channel is full, which
//! pushes back on the database work, never on the caller.
//!
//! An open transaction owns a connection from `Begin` to `Prepare`/`Rollback` (a one-shot
//! one for its single `OneShot` request; to its decision where the database keeps a prepared
//! transaction on its session: MariaDB); at most
//! `connections_max - connections_reserved` are open at once, so decisions (`CommitPrepared`,
//! `RollbackPrepared`) and recovery always find a connection: a transaction that waits for a
//! lock held by a prepared one cannot starve the commit that releases it. One request at a
//! time per transaction (a second while one runs is refused). A failed operation rolls its
//! transaction back and ends it.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};

use crate::conn::{Connection, Connector, OneShot, OneShotFailure, session_name};
use crate::error::{DbError, Reason};
use crate::gid::Gid;
use crate::kv::{KvOp, KvOutcome};
use crate::sql::{Rows, SqlLimits, SqlValue};

/// How long `FenceSessions` waits for the previous incarnation's sessions to end.
const FENCE_WAIT: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug)]
pub struct PoolConfig {
    /// Connections (and pool threads) at most.
    pub connections_max: usize,
    /// Connections kept out of reach of open transactions, for decisions and recovery.
    pub connections_reserved: usize,
    /// Requests queued and not yet running.
    pub requests_max: usize,
    /// Completions the caller has not yet taken.
    pub completions_max: usize,
    pub sql: SqlLimits,
}

impl Default for PoolConfig {
    fn default() -> PoolConfig {
        PoolConfig {
            connections_max: 16,
            connections_reserved: 2,
            requests_max: 4096,
            completions_max: 4096,
            sql: SqlLimits::default(),
        }
    }
}

#[derive(Clone, PartialEq, Debug)]
pub enum Request {
    Begin(Gid),
    Kv(Gid, KvOp),
    Execute {
        gid: Gid,
        sql: String,
        params: Vec<SqlValue>,
    },
    Prepare(Gid),
    /// A one-shot transaction whole (`Connection::one_shot`): begin, the ops, prepare (or
    /// end, when it only reads and not `hold_reads`). Takes a connection as `Begin` does, and
    /// keeps it until the decision where the database keeps a prepared transaction on its
    /// session.
    OneShot {
        gid: Gid,
        ops: Vec<KvOp>,
        /// Prepare also when it only reads: the transaction has other participants, so its
        /// read locks must last until the decision.
        hold_reads: bool,
    },
    /// Rolls back an open (not yet prepared) transaction.
    Rollback(Gid),
    CommitPrepared(Gid),
    RollbackPrepared(Gid),
    /// Lists this participant's prepared transactions.
    Recover,
    /// Ends the sessions of this participant's previous incarnation and waits until they are
    /// gone (`Connection::fence_sessions`, under `conn::session_name`): the first request of
    /// a participant's start, before `Recover`, while no other session of its own exists.
    FenceSessions,
}

#[derive(Clone, PartialEq, Debug)]
pub enum Reply {
    Begun,
    Kv(KvOutcome),
    Rows(Rows),
    Prepared,
    /// A `OneShot` ran: each op's outcome, and whether it is prepared (else it only read and
    /// has ended).
    OneShot(OneShot),
    /// The database refused op `op` of a `OneShot` (a failed begin or prepare is an
    /// error); the transaction is rolled back.
    OneShotRefused {
        op: usize,
        error: DbError,
    },
    RolledBack,
    CommittedPrepared,
    RolledBackPrepared,
    Recovered(Vec<Gid>),
    /// How many sessions `FenceSessions` ended.
    Fenced(usize),
}

/// The result of one submitted request, under the caller's tag.
#[derive(Clone, PartialEq, Debug)]
pub struct Completion {
    pub tag: u64,
    pub result: Result<Reply, DbError>,
}

pub type Wake = Arc<dyn Fn() + Send + Sync>;

pub struct Executor {
    requests: Option<Sender<(u64, Request)>>,
    completions: Receiver<Completion>,
    threads: Vec<JoinHandle<()>>,
}

impl Executor {
    /// Starts the pool threads; connections open on demand.
    pub fn start<C: Connector>(connector: C, participant: &str, config: PoolConfig, wake: Option<Wake>) -> Executor {
        assert!(config.connections_max > config.connections_reserved, "no connection left for transactions");
        assert!(config.requests_max > 0 && config.completions_max > 0, "queues need room");
        let (request_tx, request_rx) = bounded(config.requests_max);
        let (completion_tx, completion_rx) = bounded(config.completions_max);
        let shared = Arc::new(Shared {
            connector,
            participant: participant.to_owned(),
            config,
            state: Mutex::new(PoolState { idle: Vec::new(), connections: 0, open: HashMap::new() }),
            schema_ready: Mutex::new(false),
            released: Condvar::new(),
        });
        let threads = (0..config.connections_max)
            .map(|index| {
                let (shared, requests, completions, wake) =
                    (shared.clone(), request_rx.clone(), completion_tx.clone(), wake.clone());
                std::thread::Builder::new()
                    .name(format!("db-pool-{index}"))
                    .spawn(move || serve(&shared, &requests, &completions, wake.as_deref()))
                    .expect("spawn a database pool thread")
            })
            .collect();
        Executor { requests: Some(request_tx), completions: completion_rx, threads }
    }

    /// Queues a request without waiting; a full queue is refused with `Reason::Busy`.
    pub fn submit(&self, tag: u64, request: Request) -> Result<(), DbError> {
        let requests = self.requests.as_ref().expect("executor running");
        requests.try_send((tag, request)).map_err(|e| match e {
            TrySendError::Full(_) => DbError::new(Reason::Busy, "the database request queue is full"),
            TrySendError::Disconnected(_) => DbError::new(Reason::ConnectionLost, "the database pool has stopped"),
        })
    }

    /// Where completions arrive (take them with `try_recv` on the engine thread).
    pub fn completions(&self) -> &Receiver<Completion> {
        &self.completions
    }
}

impl Drop for Executor {
    /// Stops taking requests, lets the running ones finish (draining their completions so no
    /// thread waits on a full channel) and joins the threads. Open transactions' connections
    /// close, which rolls them back; prepared ones stay prepared in the database.
    fn drop(&mut self) {
        self.requests = None;
        while !self.threads.iter().all(JoinHandle::is_finished) {
            let _ = self.completions.recv_timeout(Duration::from_millis(10));
        }
        for thread in self.threads.drain(..) {
            thread.join().expect("a database pool thread panicked");
        }
    }
}

struct Shared<C: Connector> {
    connector: C,
    participant: String,
    config: PoolConfig,
    state: Mutex<PoolState<C::Conn>>,
    /// Whether the tables exist (made by the first connection: concurrent `CREATE TABLE IF
    /// NOT EXISTS` can fail in PostgreSQL).
    schema_ready: Mutex<bool>,
    /// Signalled when a connection goes back to the pool or is closed.
    released: Condvar,
}

struct PoolState<T> {
    idle: Vec<T>,
    /// Connections that exist: idle, owned by an open transaction, or serving a request.
    connections: usize,
    open: HashMap<Gid, OpenTx<T>>,
}

enum OpenTx<T> {
    /// Waiting for the transaction's next request.
    Ready(T),
    /// A request of the transaction is running (or its `Begin` is connecting).
    Running,
    /// Prepared on a connection that stays with it until the decision.
    Prepared(T),
}

fn serve<C: Connector>(
    shared: &Shared<C>,
    requests: &Receiver<(u64, Request)>,
    completions: &Sender<Completion>,
    wake: Option<&(dyn Fn() + Send + Sync)>,
) {
    while let Ok((tag, request)) = requests.recv() {
        let result = shared.run(request);
        if completions.send(Completion { tag, result }).is_err() {
            return;
        }
        if let Some(wake) = wake {
            wake();
        }
    }
}

impl<C: Connector> Shared<C> {
    fn lock(&self) -> MutexGuard<'_, PoolState<C::Conn>> {
        self.state.lock().expect("database pool state poisoned")
    }

    fn run(&self, request: Request) -> Result<Reply, DbError> {
        if let Some(gid) = request_gid(&request)
            && gid.participant() != self.participant
        {
            return Err(DbError::invalid(format!("gid {gid} is not of participant {}", self.participant)));
        }
        match request {
            Request::Begin(gid) => self.begin(gid),
            Request::OneShot { gid, ops, hold_reads } => self.one_shot(gid, &ops, hold_reads),
            Request::Kv(gid, op) => self.in_transaction(&gid, |c| c.kv(&op).map(Reply::Kv)),
            Request::Execute { gid, sql, params } => {
                let limits = self.config.sql;
                self.in_transaction(&gid, |c| c.execute(&sql, &params, &limits).map(Reply::Rows))
            }
            Request::Prepare(gid) => self.prepare(&gid),
            Request::Rollback(gid) => self.end_transaction(&gid, |c| c.rollback(&gid).map(|()| Reply::RolledBack)),
            Request::CommitPrepared(gid) => {
                self.decide(&gid, |c| c.commit_prepared(&gid).map(|()| Reply::CommittedPrepared))
            }
            Request::RollbackPrepared(gid) => {
                self.decide(&gid, |c| c.rollback_prepared(&gid).map(|()| Reply::RolledBackPrepared))
            }
            Request::Recover => self.with_connection(|c| c.recover(&self.participant).map(Reply::Recovered)),
            Request::FenceSessions => {
                let session = session_name(&self.participant);
                self.with_connection(|c| c.fence_sessions(&session, FENCE_WAIT).map(Reply::Fenced))
            }
        }
    }

    /// A connection for the new transaction `gid`, which counts as open (running) from now.
    fn open_transaction(&self, gid: &Gid) -> Result<C::Conn, DbError> {
        {
            let mut state = self.lock();
            let open_max = self.config.connections_max - self.config.connections_reserved;
            if state.open.contains_key(gid) {
                return Err(DbError::invalid(format!("transaction {gid} is already open")));
            }
            if state.open.len() >= open_max {
                return Err(DbError::new(Reason::Busy, format!("{open_max} transactions are open already")));
            }
            state.open.insert(gid.clone(), OpenTx::Running);
        }
        self.acquire().inspect_err(|_| {
            self.lock().open.remove(gid);
        })
    }

    fn one_shot(&self, gid: Gid, ops: &[KvOp], hold_reads: bool) -> Result<Reply, DbError> {
        let mut conn = self.open_transaction(&gid)?;
        let result = conn.one_shot(&gid, ops, hold_reads);
        match &result {
            Ok(done) if done.prepared && !conn.prepare_detaches() => {
                self.lock().open.insert(gid, OpenTx::Prepared(conn));
            }
            _ => {
                self.lock().open.remove(&gid);
                self.release(conn);
            }
        }
        match result {
            Ok(done) => Ok(Reply::OneShot(done)),
            Err(OneShotFailure { op: Some(op), error }) if error.reason != Reason::ConnectionLost => {
                Ok(Reply::OneShotRefused { op, error })
            }
            Err(OneShotFailure { error, .. }) => Err(error),
        }
    }

    fn begin(&self, gid: Gid) -> Result<Reply, DbError> {
        let mut conn = self.open_transaction(&gid)?;
        match conn.begin(&gid) {
            Ok(()) => {
                self.lock().open.insert(gid, OpenTx::Ready(conn));
                Ok(Reply::Begun)
            }
            Err(error) => {
                self.lock().open.remove(&gid);
                self.release(conn);
                Err(error)
            }
        }
    }

    /// Runs `op` on the transaction's connection; a failure rolls the transaction back.
    fn in_transaction(
        &self,
        gid: &Gid,
        op: impl FnOnce(&mut C::Conn) -> Result<Reply, DbError>,
    ) -> Result<Reply, DbError> {
        let mut conn = self.take_open(gid)?;
        match op(&mut conn) {
            Ok(reply) => {
                self.lock().open.insert(gid.clone(), OpenTx::Ready(conn));
                Ok(reply)
            }
            Err(error) => {
                let _ = conn.rollback(gid);
                self.lock().open.remove(gid);
                self.release(conn);
                Err(error)
            }
        }
    }

    fn prepare(&self, gid: &Gid) -> Result<Reply, DbError> {
        let mut conn = self.take_open(gid)?;
        match conn.prepare(gid) {
            Ok(()) if !conn.prepare_detaches() => {
                self.lock().open.insert(gid.clone(), OpenTx::Prepared(conn));
                Ok(Reply::Prepared)
            }
            result => {
                if result.is_err() && !conn.is_broken() {
                    // A refused PREPARE leaves the transaction open (PostgreSQL) or idle
                    // (MariaDB): end it.
                    let _ = conn.rollback(gid);
                }
                self.lock().open.remove(gid);
                self.release(conn);
                result.map(|()| Reply::Prepared)
            }
        }
    }

    /// Commits or rolls back a prepared transaction: on the connection that holds it, if
    /// one does, else on any (after a restart, or when that connection broke).
    fn decide(&self, gid: &Gid, op: impl FnOnce(&mut C::Conn) -> Result<Reply, DbError>) -> Result<Reply, DbError> {
        let held = {
            let mut state = self.lock();
            match state.open.remove(gid) {
                Some(OpenTx::Prepared(conn)) => {
                    state.open.insert(gid.clone(), OpenTx::Running);
                    Some(conn)
                }
                Some(other) => {
                    state.open.insert(gid.clone(), other);
                    return Err(DbError::invalid(format!("transaction {gid} is open, not prepared")));
                }
                None => None,
            }
        };
        let Some(mut conn) = held else {
            return self.with_connection(op);
        };
        let result = op(&mut conn);
        self.lock().open.remove(gid);
        self.release(conn);
        result
    }

    /// Runs the transaction's last request (`Rollback`) and frees its connection.
    fn end_transaction(
        &self,
        gid: &Gid,
        op: impl FnOnce(&mut C::Conn) -> Result<Reply, DbError>,
    ) -> Result<Reply, DbError> {
        let mut conn = self.take_open(gid)?;
        let result = op(&mut conn);
        self.lock().open.remove(gid);
        self.release(conn);
        result
    }

    fn take_open(&self, gid: &Gid) -> Result<C::Conn, DbError> {
        let mut state = self.lock();
        match state.open.insert(gid.clone(), OpenTx::Running) {
            Some(OpenTx::Ready(conn)) => Ok(conn),
            Some(OpenTx::Running) => Err(DbError::invalid(format!("transaction {gid} has a request running"))),
            Some(OpenTx::Prepared(conn)) => {
                state.open.insert(gid.clone(), OpenTx::Prepared(conn));
                Err(DbError::invalid(format!("transaction {gid} is prepared already")))
            }
            None => {
                state.open.remove(gid);
                Err(DbError::invalid(format!("no open transaction {gid}")))
            }
        }
    }

    fn with_connection(&self, op: impl FnOnce(&mut C::Conn) -> Result<Reply, DbError>) -> Result<Reply, DbError> {
        let mut conn = self.acquire()?;
        let result = op(&mut conn);
        self.release(conn);
        result
    }

    /// An idle connection, a new one while under `connections_max`, or waits for one.
    fn acquire(&self) -> Result<C::Conn, DbError> {
        let mut state = self.lock();
        loop {
            while let Some(conn) = state.idle.pop() {
                if !conn.is_broken() {
                    return Ok(conn);
                }
                // Closed while idle (the server restarted): replace it.
                state.connections -= 1;
            }
            if state.connections < self.config.connections_max {
                state.connections += 1;
                drop(state);
                return self.connect().inspect_err(|_| {
                    self.lock().connections -= 1;
                    self.released.notify_one();
                });
            }
            state = self.released.wait(state).expect("database pool state poisoned");
        }
    }

    fn connect(&self) -> Result<C::Conn, DbError> {
        let mut conn = self.connector.connect()?;
        let mut schema_ready = self.schema_ready.lock().expect("schema flag poisoned");
        if !*schema_ready {
            conn.ensure_schema()?;
            *schema_ready = true;
        }
        Ok(conn)
    }

    fn release(&self, conn: C::Conn) {
        let mut state = self.lock();
        if conn.is_broken() {
            state.connections -= 1;
        } else {
            state.idle.push(conn);
        }
        drop(state);
        self.released.notify_one();
    }
}

fn request_gid(request: &Request) -> Option<&Gid> {
    match request {
        Request::Begin(gid)
        | Request::OneShot { gid, .. }
        | Request::Kv(gid, _)
        | Request::Execute { gid, .. }
        | Request::Prepare(gid)
        | Request::Rollback(gid)
        | Request::CommitPrepared(gid)
        | Request::RollbackPrepared(gid) => Some(gid),
        Request::Recover | Request::FenceSessions => None,
    }
}

#[cfg(test)]
mod tests {
    //! The pool's rules on an in-memory connection (the databases themselves are tested in
    //! backends/tests against real servers).

    use std::sync::atomic::{AtomicUsize, Ordering};

    use bytes::Bytes;

    use super::*;

    #[derive(Default)]
    struct Log {
        connects: AtomicUsize,
        rollbacks: AtomicUsize,
        /// (what, connection id)
        calls: Mutex<Vec<(&'static str, usize)>>,
    }

    struct FakeConnector {
        log: Arc<Log>,
        detaches: bool,
        /// `Recover` waits for a token here (to hold pool threads busy).
        gate: Option<Receiver<()>>,
    }

    struct FakeConn {
        id: usize,
        log: Arc<Log>,
        detaches: bool,
        broken: bool,
        gate: Option<Receiver<()>>,
    }

    impl Connector for FakeConnector {
        type Conn = FakeConn;
        fn connect(&self) -> Result<FakeConn, DbError> {
            let id = self.log.connects.fetch_add(1, Ordering::SeqCst);
            Ok(FakeConn { id, log: self.log.clone(), detaches: self.detaches, broken: false, gate: self.gate.clone() })
        }
    }

    impl FakeConn {
        fn note(&self, what: &'static str) {
            self.log.calls.lock().unwrap().push((what, self.id));
        }
    }

    impl Connection for FakeConn {
        fn ensure_schema(&mut self) -> Result<(), DbError> {
            Ok(())
        }
        fn begin(&mut self, _: &Gid) -> Result<(), DbError> {
            Ok(())
        }
        fn kv(&mut self, op: &KvOp) -> Result<KvOutcome, DbError> {
            match &op.key()[..] {
                b"fail" => Err(DbError::new(Reason::Constraint, "refused")),
                b"lose" => {
                    self.broken = true;
                    Err(DbError::new(Reason::ConnectionLost, "gone"))
                }
                _ => Ok(KvOutcome::Written),
            }
        }
        fn execute(&mut self, _: &str, _: &[SqlValue], _: &SqlLimits) -> Result<Rows, DbError> {
            Ok(Rows::default())
        }
        fn prepare(&mut self, _: &Gid) -> Result<(), DbError> {
            self.note("prepare");
            Ok(())
        }
        fn prepare_detaches(&self) -> bool {
            self.detaches
        }
        fn rollback(&mut self, _: &Gid) -> Result<(), DbError> {
            self.log.rollbacks.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
        fn commit_prepared(&mut self, _: &Gid) -> Result<(), DbError> {
            self.note("commit");
            Ok(())
        }
        fn rollback_prepared(&mut self, _: &Gid) -> Result<(), DbError> {
            Ok(())
        }
        fn recover(&mut self, _: &str) -> Result<Vec<Gid>, DbError> {
            if let Some(gate) = &self.gate {
                gate.recv().unwrap();
            }
            Ok(vec![])
        }
        fn is_broken(&self) -> bool {
            self.broken
        }
        fn fence_sessions(&mut self, _: &str, _: Duration) -> Result<usize, DbError> {
            Ok(0)
        }
    }

    fn pool(detaches: bool, config: PoolConfig) -> (Executor, Arc<Log>) {
        let log = Arc::new(Log::default());
        let connector = FakeConnector { log: log.clone(), detaches, gate: None };
        (Executor::start(connector, "p1", config, None), log)
    }

    fn small() -> PoolConfig {
        PoolConfig { connections_max: 3, connections_reserved: 1, ..PoolConfig::default() }
    }

    fn call(executor: &Executor, request: Request) -> Result<Reply, DbError> {
        executor.submit(0, request).unwrap();
        executor.completions().recv().unwrap().result
    }

    fn gid(counter: u64) -> Gid {
        Gid::new("p1", 1, counter).unwrap()
    }

    fn put(key: &'static str) -> KvOp {
        KvOp::Put { key: Bytes::from_static(key.as_bytes()), value: Bytes::new() }
    }

    #[test]
    fn open_transactions_leave_the_reserved_connections_to_decisions() {
        let (db, _) = pool(true, small());
        call(&db, Request::Begin(gid(1))).unwrap();
        call(&db, Request::Begin(gid(2))).unwrap();
        assert_eq!(call(&db, Request::Begin(gid(3))).unwrap_err().reason, Reason::Busy);
        assert_eq!(call(&db, Request::CommitPrepared(gid(9))).unwrap(), Reply::CommittedPrepared);
        call(&db, Request::Prepare(gid(1))).unwrap();
        call(&db, Request::Begin(gid(3))).unwrap();
    }

    #[test]
    fn a_failed_operation_rolls_back_and_ends_its_transaction() {
        let (db, log) = pool(true, small());
        call(&db, Request::Begin(gid(1))).unwrap();
        call(&db, Request::Kv(gid(1), put("ok"))).unwrap();
        assert_eq!(call(&db, Request::Kv(gid(1), put("fail"))).unwrap_err().reason, Reason::Constraint);
        assert_eq!(log.rollbacks.load(Ordering::SeqCst), 1);
        assert_eq!(call(&db, Request::Prepare(gid(1))).unwrap_err().reason, Reason::InvalidRequest);
        // The connection went back to the pool: no new one for the next transaction.
        call(&db, Request::Begin(gid(2))).unwrap();
        assert_eq!(log.connects.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_broken_connection_is_dropped_and_replaced() {
        let (db, log) = pool(true, small());
        call(&db, Request::Begin(gid(1))).unwrap();
        assert_eq!(call(&db, Request::Kv(gid(1), put("lose"))).unwrap_err().reason, Reason::ConnectionLost);
        call(&db, Request::Begin(gid(2))).unwrap();
        assert_eq!(log.connects.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_prepared_transaction_stays_on_its_connection_where_prepare_does_not_detach() {
        let (db, log) = pool(false, small());
        call(&db, Request::Begin(gid(1))).unwrap();
        call(&db, Request::Prepare(gid(1))).unwrap();
        call(&db, Request::Begin(gid(2))).unwrap();
        // Both held (one prepared, one open): no third transaction until a decision.
        assert_eq!(call(&db, Request::Begin(gid(3))).unwrap_err().reason, Reason::Busy);
        assert_eq!(call(&db, Request::Kv(gid(1), put("x"))).unwrap_err().reason, Reason::InvalidRequest);
        call(&db, Request::CommitPrepared(gid(1))).unwrap();
        let calls = log.calls.lock().unwrap().clone();
        assert_eq!(calls, vec![("prepare", 0), ("commit", 0)], "decided on the connection that prepared");
        call(&db, Request::Begin(gid(3))).unwrap();
    }

    fn get(key: &'static str) -> KvOp {
        KvOp::Get { key: Bytes::from_static(key.as_bytes()) }
    }

    fn one_shot(counter: u64, ops: Vec<KvOp>) -> Request {
        Request::OneShot { gid: gid(counter), ops, hold_reads: false }
    }

    #[test]
    fn a_one_shot_prepares_what_writes_ends_what_reads_and_names_the_refused_op() {
        let (db, log) = pool(true, small());
        let done = call(&db, one_shot(1, vec![get("a"), put("b")])).unwrap();
        assert_eq!(done, Reply::OneShot(OneShot { outcomes: vec![KvOutcome::Written; 2], prepared: true }));
        assert_eq!(log.calls.lock().unwrap().clone(), vec![("prepare", 0)]);
        let read = call(&db, one_shot(2, vec![get("a")])).unwrap();
        assert_eq!(read, Reply::OneShot(OneShot { outcomes: vec![KvOutcome::Written], prepared: false }));
        assert_eq!(log.rollbacks.load(Ordering::SeqCst), 1, "a read-only one-shot ends with a rollback");
        match call(&db, one_shot(3, vec![put("a"), put("fail"), put("c")])).unwrap() {
            Reply::OneShotRefused { op: 1, error } => assert_eq!(error.reason, Reason::Constraint),
            other => panic!("{other:?}"),
        }
        assert_eq!(log.rollbacks.load(Ordering::SeqCst), 2);
        assert_eq!(log.calls.lock().unwrap().len(), 1, "the refused one did not prepare");
        // Every connection went back to the pool (PostgreSQL's prepare detaches).
        assert_eq!(log.connects.load(Ordering::SeqCst), 1);
        assert_eq!(call(&db, one_shot(4, vec![put("lose")])).unwrap_err().reason, Reason::ConnectionLost);
    }

    #[test]
    fn a_one_shot_prepared_on_a_session_keeps_its_connection_until_the_decision() {
        let (db, log) = pool(false, small());
        call(&db, one_shot(1, vec![put("a")])).unwrap();
        call(&db, one_shot(2, vec![put("b")])).unwrap();
        assert_eq!(call(&db, one_shot(3, vec![put("c")])).unwrap_err().reason, Reason::Busy);
        call(&db, Request::CommitPrepared(gid(1))).unwrap();
        call(&db, one_shot(3, vec![put("c")])).unwrap();
        let calls = log.calls.lock().unwrap().clone();
        assert_eq!(calls[..3], [("prepare", 0), ("prepare", 1), ("commit", 0)], "decided where it prepared");
    }

    #[test]
    fn requests_for_another_participant_or_unknown_transactions_are_refused() {
        let (db, _) = pool(true, small());
        let other = Gid::new("p2", 1, 1).unwrap();
        assert_eq!(call(&db, Request::Begin(other)).unwrap_err().reason, Reason::InvalidRequest);
        assert_eq!(call(&db, Request::Kv(gid(5), put("x"))).unwrap_err().reason, Reason::InvalidRequest);
        call(&db, Request::Begin(gid(6))).unwrap();
        assert_eq!(call(&db, Request::Begin(gid(6))).unwrap_err().reason, Reason::InvalidRequest);
    }

    #[test]
    fn submit_refuses_at_once_when_the_queue_is_full() {
        let (gate_tx, gate_rx) = bounded(8);
        let log = Arc::new(Log::default());
        let connector = FakeConnector { log, detaches: true, gate: Some(gate_rx) };
        let config = PoolConfig { connections_max: 2, connections_reserved: 1, requests_max: 1, ..small() };
        let db = Executor::start(connector, "p1", config, None);
        // Two threads each take a Recover and wait at the gate; then one more fits the queue.
        let submit_when_room = |tag| loop {
            match db.submit(tag, Request::Recover) {
                Ok(()) => return,
                Err(e) if e.reason == Reason::Busy => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        };
        for tag in 1..=3 {
            submit_when_room(tag);
        }
        assert_eq!(db.submit(4, Request::Recover).unwrap_err().reason, Reason::Busy);
        for _ in 0..3 {
            gate_tx.send(()).unwrap();
        }
        let mut tags: Vec<u64> = (0..3).map(|_| db.completions().recv().unwrap().tag).collect();
        tags.sort();
        assert_eq!(tags, [1, 2, 3]);
    }
}
