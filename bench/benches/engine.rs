//! The sans-IO engine's cost per transaction on each side, and the lock table's cost per
//! key, all in memory (no log, no network). Criterion reports time per iteration; with
//! `Throughput::Elements` it also reports transactions per second or key locks per second.
//!
//! * `coordinator/transfer`: ns per committed transaction. One bank transfer over two
//!   participants: `on_submit`, a Yes vote from each, the log marked durable (the
//!   `DurabilityGate` releases the reply and both commits), an ack from each (the `End`
//!   record), marked durable again. 64 clients.
//! * `participant/transfer/<ops>`: ns per committed transaction on one participant:
//!   `Prepare` (lock, evaluate, log `Prepared`), durable (the Yes vote leaves), `Commit`
//!   (apply, unlock, log `Committed`), durable (the ack leaves). `1` op is one side of a
//!   transfer across participants, `2` ops a transfer between two accounts both held here.
//!   10,000 accounts of 1e9 preloaded through a snapshot, so no debit hits its floor.
//! * `locks/<mode>/<n>`: ns per batch of `n` keys, each locked then unlocked by one
//!   transaction (divide by `n` for one lock + unlock pair), in a table already holding
//!   10,000 other locks.
//!
//! A simulated clock advances 10 µs per transaction and timers run when due, as the node's
//! loop runs them. Before timing, each state machine runs enough transactions (untimed) to
//! reach its steady state: the coordinator's exactly-once window full (64 clients × 4,096
//! outcomes) and its prepare-timeout timers (2 s) cycling, the participant's inquiry timers
//! (1 s) cycling. Message construction happens outside the timed part (`iter_batched`);
//! everything the engine and the gate do is inside. Outcomes are checked after each
//! benchmark (all committed, nothing left over) and per transaction by a cheap check of what
//! the gate released.

use std::hint::black_box;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use twophase_engine::participant::{KvImage, LockMode, LockTable, ParticipantSnapshot, encode_int};
use twophase_engine::{
    ClientId, ClientOrigin, CoordEffects, CoordOutput, Coordinator, CoordinatorConfig, DurabilityGate, Effects, Epoch,
    Key, LocalOp, Lsn, Op, OpKind, Outcome, PartEffects, Participant, ParticipantConfig, ParticipantId, Reply, Submit,
    Time, ToCoordinator, ToParticipant, TxId, Vote,
};

const P1: ParticipantId = ParticipantId(1);
const P2: ParticipantId = ParticipantId(2);
const EPOCH: Epoch = Epoch(1);
const ACCOUNTS: u64 = 10_000;
const CLIENTS: u64 = 64;
const STEP: Duration = Duration::from_micros(10);
/// Untimed transactions before measuring: more than 64 × 4,096 outcomes and 2 s of timers.
const COORDINATOR_WARM_UP: u64 = 300_000;
/// Untimed transactions before measuring: more than 1 s of inquiry timers.
const PARTICIPANT_WARM_UP: u64 = 150_000;

fn account_keys() -> Vec<Key> {
    (0..ACCOUNTS).map(|n| Bytes::from(format!("acct/{}", 10_000 + n))).collect()
}

/// The two accounts of the `i`-th transfer: distinct, spread over the whole bank.
fn accounts(i: u64) -> (usize, usize) {
    let from = i.wrapping_mul(7_919) % ACCOUNTS;
    let to = (from + 1 + i % (ACCOUNTS - 1)) % ACCOUNTS;
    (from as usize, to as usize)
}

fn debit() -> OpKind {
    OpKind::Add { delta: -5, floor: 0 }
}

fn credit() -> OpKind {
    OpKind::Add { delta: 5, floor: i64::MIN }
}

/// What the node does with a step's effects, minus the log: note the LSNs appended and
/// push the outputs through the gate. Returns the last LSN appended (or `last`).
fn gate_effects<R, O>(fx: &mut Effects<R, O>, gate: &mut DurabilityGate<O>, released: &mut Vec<O>, last: Lsn) -> Lsn {
    let last = fx.appends.drain(..).last().map_or(last, |(lsn, _)| lsn);
    for output in fx.outputs.drain(..) {
        gate.push(output, released);
    }
    last
}

/// A coordinator with its driver's gate, committing transfers between P1 and P2.
struct CoordBench {
    coordinator: Coordinator,
    fx: CoordEffects,
    gate: DurabilityGate<CoordOutput>,
    released: Vec<CoordOutput>,
    now: Time,
    last_lsn: Lsn,
    transactions: u64,
    /// The sessions registered for clients 1..=CLIENTS.
    sessions: Vec<ClientId>,
}

/// The identity the benchmark's clients register under.
const ORIGIN: ClientOrigin<'static> = ClientOrigin { conn: 1, identity: "bench" };

impl CoordBench {
    fn new() -> CoordBench {
        let mut fx = CoordEffects::default();
        let coordinator = Coordinator::recover(CoordinatorConfig::new(vec![P1, P2]), Vec::new(), Time::ZERO, &mut fx);
        let mut bench = CoordBench {
            coordinator,
            fx,
            gate: DurabilityGate::new(Lsn::NONE),
            released: Vec::new(),
            now: Time::ZERO,
            last_lsn: Lsn::NONE,
            transactions: 0,
            sessions: Vec::new(),
        };
        bench.make_durable(); // The epoch record.
        assert!(bench.released.is_empty());
        for nonce in 0..CLIENTS {
            bench.coordinator.on_submit(bench.now, ORIGIN, Submit::register(nonce), &mut bench.fx);
            bench.make_durable();
            let Some(CoordOutput::ToConnection { reply: Reply::Registered { client, .. }, .. }) = bench.released.pop()
            else {
                panic!("a registered session")
            };
            bench.sessions.push(client);
        }
        bench
    }

    fn make_durable(&mut self) {
        self.last_lsn = gate_effects(&mut self.fx, &mut self.gate, &mut self.released, self.last_lsn);
        self.gate.advance(self.last_lsn, &mut self.released);
    }

    fn vote_yes(&mut self, from: ParticipantId, txid: TxId) {
        let message = ToCoordinator::Vote { txid, vote: Vote::Yes { reads: Vec::new() } };
        self.coordinator.on_message(self.now, from, message, &mut self.fx);
    }

    fn ack(&mut self, from: ParticipantId, txid: TxId) {
        self.coordinator.on_message(self.now, from, ToCoordinator::Ack { txid }, &mut self.fx);
    }

    fn tick(&mut self) {
        self.now = self.now + STEP;
        if self.coordinator.next_deadline().is_some_and(|deadline| deadline <= self.now) {
            self.coordinator.on_tick(self.now, &mut self.fx);
        }
    }

    /// One transfer from submit to `End`. Releases 2 prepares, the reply and 2 commits.
    fn transfer(&mut self, mut submit: Submit) {
        self.tick();
        submit.client = self.sessions[(submit.client.0 - 1) as usize];
        self.coordinator.on_submit(self.now, ORIGIN, submit, &mut self.fx);
        let txid = prepared_txid(&self.fx);
        self.make_durable();
        self.vote_yes(P1, txid);
        self.vote_yes(P2, txid);
        self.make_durable();
        self.ack(P1, txid);
        self.ack(P2, txid);
        self.make_durable();
        assert_eq!(self.released.len(), 5, "two prepares, the reply, two commits");
        assert!(self.released.iter().any(is_committed_reply), "the client hears Committed");
        self.released.clear();
        self.transactions += 1;
    }

    fn check_all_committed(&self) {
        let stats = self.coordinator.stats();
        assert_eq!((stats.committed, stats.aborted, stats.rejected_busy), (self.transactions, 0, 0));
        assert_eq!(self.coordinator.unfinished(), 0);
    }
}

fn prepared_txid(fx: &CoordEffects) -> TxId {
    let prepare = fx.outputs.iter().find_map(|gated| match &gated.item {
        CoordOutput::ToParticipant(_, ToParticipant::Prepare { txid, .. }) => Some(*txid),
        _ => None,
    });
    prepare.expect("the submit sent prepares")
}

fn is_committed_reply(output: &CoordOutput) -> bool {
    matches!(output, CoordOutput::ToClient(Reply::Outcome { outcome: Outcome::Committed { .. }, .. }))
}

fn transfer_submit(keys: &[Key], i: u64) -> Submit {
    let (from, to) = accounts(i);
    let ops = vec![
        Op { participant: P1, key: keys[from].clone(), kind: debit() },
        Op { participant: P2, key: keys[to].clone(), kind: credit() },
    ];
    Submit { client: ClientId(1 + i % CLIENTS), seq: 1 + i / CLIENTS, ops }
}

fn coordinator(c: &mut Criterion) {
    let keys = account_keys();
    let mut group = c.benchmark_group("coordinator");
    group.throughput(Throughput::Elements(1));
    let mut bench = CoordBench::new();
    let mut next = 0u64;
    while next < COORDINATOR_WARM_UP {
        next += 1;
        bench.transfer(transfer_submit(&keys, next));
    }
    group.bench_function("transfer", |b| {
        b.iter_batched(
            || {
                next += 1;
                transfer_submit(&keys, next)
            },
            |submit| bench.transfer(black_box(submit)),
            BatchSize::SmallInput,
        )
    });
    bench.check_all_committed();
    group.finish();
}

/// A participant with its driver's gate, preloaded with every account.
struct PartBench {
    participant: Participant,
    fx: PartEffects,
    gate: DurabilityGate<ToCoordinator>,
    released: Vec<ToCoordinator>,
    now: Time,
    last_lsn: Lsn,
    transactions: u64,
}

impl PartBench {
    fn new(keys: &[Key]) -> PartBench {
        let balance = encode_int(1_000_000_000);
        let kv = KvImage::from_pairs(keys.iter().map(|key| (key.as_ref(), balance.as_ref())));
        let snapshot =
            ParticipantSnapshot { lsn: Lsn::NONE, max_epoch: EPOCH, max_txid_seen: TxId(0), kv, prepared: Vec::new() };
        let mut fx = PartEffects::default();
        let participant =
            Participant::recover(ParticipantConfig::new(P1), Some(snapshot), Vec::new(), Time::ZERO, &mut fx);
        assert!(fx.is_empty());
        PartBench {
            participant,
            fx,
            gate: DurabilityGate::new(Lsn::NONE),
            released: Vec::new(),
            now: Time::ZERO,
            last_lsn: Lsn::NONE,
            transactions: 0,
        }
    }

    fn make_durable(&mut self) {
        self.last_lsn = gate_effects(&mut self.fx, &mut self.gate, &mut self.released, self.last_lsn);
        self.gate.advance(self.last_lsn, &mut self.released);
    }

    fn receive(&mut self, message: ToParticipant) {
        self.participant.on_message(self.now, EPOCH, message, &mut self.fx).expect("a well-formed message");
    }

    fn tick(&mut self) {
        self.now = self.now + STEP;
        if self.participant.next_deadline().is_some_and(|deadline| deadline <= self.now) {
            self.participant.on_tick(self.now, &mut self.fx);
        }
    }

    /// One transaction from prepare to the ack. Releases the Yes vote and the ack.
    fn transfer(&mut self, prepare: ToParticipant) {
        self.tick();
        let txid = prepare.txid();
        self.receive(prepare);
        self.make_durable();
        self.receive(ToParticipant::Commit { txid });
        self.make_durable();
        assert!(
            matches!(
                self.released.as_slice(),
                [ToCoordinator::Vote { vote: Vote::Yes { .. }, .. }, ToCoordinator::Ack { .. }]
            ),
            "a Yes vote then an ack"
        );
        self.released.clear();
        self.transactions += 1;
    }

    fn check_all_committed(&self) {
        let stats = self.participant.stats();
        assert_eq!((stats.committed, stats.voted_no, stats.aborted), (self.transactions, 0, 0));
        assert_eq!((self.participant.prepared(), self.participant.locked_keys()), (0, 0));
    }
}

/// The `i`-th transfer's prepare at this participant: the debit alone, or both ops.
fn transfer_prepare(keys: &[Key], i: u64, ops: usize) -> ToParticipant {
    let (from, to) = accounts(i);
    let mut local = vec![LocalOp { index: 0, key: keys[from].clone(), kind: debit() }];
    if ops == 2 {
        local.push(LocalOp { index: 1, key: keys[to].clone(), kind: credit() });
    }
    // Both accounts here: its only participant; the debit alone: one of two.
    ToParticipant::Prepare { txid: TxId::new(EPOCH, i), ops: local, sole: ops == 2 }
}

fn participant(c: &mut Criterion) {
    let keys = account_keys();
    let mut group = c.benchmark_group("participant/transfer");
    group.throughput(Throughput::Elements(1));
    for ops in [1, 2] {
        let mut bench = PartBench::new(&keys);
        let mut next = 0u64;
        while next < PARTICIPANT_WARM_UP {
            next += 1;
            bench.transfer(transfer_prepare(&keys, next, ops));
        }
        group.bench_function(BenchmarkId::from_parameter(ops), |b| {
            b.iter_batched(
                || {
                    next += 1;
                    transfer_prepare(&keys, next, ops)
                },
                |prepare| bench.transfer(black_box(prepare)),
                BatchSize::SmallInput,
            )
        });
        bench.check_all_committed();
    }
    group.finish();
}

/// Locks every key for `txid` (each must be granted), then releases them.
fn lock_unlock(table: &mut LockTable, keys: &[Key], txid: TxId, mode: LockMode) {
    for key in keys {
        assert_eq!(table.try_lock(black_box(key), txid, mode), Ok(true));
    }
    for key in keys {
        table.unlock(black_box(key), txid);
    }
}

fn locks(c: &mut Criterion) {
    let mut table = LockTable::new(0);
    for n in 0..ACCOUNTS {
        let held = Bytes::from(format!("held/{n}"));
        table.try_lock(&held, TxId(1), LockMode::Exclusive).expect("free");
    }
    let keys = account_keys();
    let (mut txid, mut start) = (TxId(1), 0usize);
    let mut group = c.benchmark_group("locks");
    for (name, mode) in [("exclusive", LockMode::Exclusive), ("shared", LockMode::Shared)] {
        for n in [2usize, 64] {
            group.throughput(Throughput::Elements(n as u64));
            group.bench_function(BenchmarkId::new(name, n), |b| {
                b.iter(|| {
                    // Each transaction takes the next run of keys, cycling through the bank.
                    txid = TxId(txid.0 + 1);
                    start = if start + 2 * n > keys.len() { 0 } else { start + n };
                    lock_unlock(&mut table, &keys[start..start + n], txid, mode);
                })
            });
        }
    }
    group.finish();
    assert_eq!(table.len(), ACCOUNTS as usize, "only the background locks remain");
}

/// Short runs, and no plots: rendering them takes several seconds per benchmark on a small
/// machine, more than measuring. Estimates are still printed and saved under target/criterion.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(50)
        .without_plots()
}

criterion_group! {
    name = benches;
    config = config();
    targets = coordinator, participant, locks
}
criterion_main!(benches);
