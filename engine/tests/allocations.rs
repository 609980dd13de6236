//! How often the one-shot path allocates, counted (not timed): a global allocator counts
//! the calls made on this test's thread while a participant prepares and commits thousands
//! of single-key transfer halves, or a coordinator runs thousands of two-participant
//! transfers, in steady state, each step's log records encoded and dropped as the driver
//! does. Allocation is dear on this path (a microsecond of CPU costs more than that in
//! throughput at saturation), so a change that adds one per transaction should be a
//! decision, not an accident: these budgets say so.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::Bytes;
use twophase_engine::{
    ClientId, ClientOrigin, CoordEffects, CoordOutput, CoordRecord, Coordinator, CoordinatorConfig, Epoch, LocalOp,
    LogRecord, Lsn, Op, OpKind, PartEffects, Participant, ParticipantConfig, ParticipantId, Submit, Time,
    ToCoordinator, ToParticipant, TxId, Vote,
};

/// Allocations per prepared-and-committed transaction at most at a participant: exactly
/// what it makes (5; 7 while the `Prepared` record copied the write set).
const PARTICIPANT_ALLOCATIONS_PER_TRANSACTION_MAX: u64 = 5;
/// Allocations per transaction at most at the coordinator (submit, two votes, two acks):
/// exactly what it makes (5; 6 while it split a request's ops into a heap vector).
const COORDINATOR_ALLOCATIONS_PER_TRANSACTION_MAX: u64 = 5;
/// Allocations a whole counted run may make beyond its budget per transaction: the
/// amortized growth of tables and queues (2 at the participant, 4 at the coordinator when
/// measured). One allocation more per transaction is 20,000 more, far above it.
const GROWTH_ALLOCATIONS_MAX: u64 = 64;

const EPOCH: Epoch = Epoch(1);
const ACCOUNTS: u64 = 1_000;
const WARM_UP_TRANSACTIONS: u64 = 5_000;
const COUNTED_TRANSACTIONS: u64 = 20_000;
const P1: ParticipantId = ParticipantId(1);
const P2: ParticipantId = ParticipantId(2);
const CLIENT: ClientId = ClientId(1);
const IDENTITY: &str = "bank";
const ORIGIN: ClientOrigin<'static> = ClientOrigin { conn: 1, identity: IDENTITY };

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

struct Counting;

fn count() {
    // `try_with`: a thread being torn down may still free (and so allocate) after its
    // thread-locals are gone.
    let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// Runs `transaction` (numbered from 1; it returns the allocations it counted) for the
/// warm-up, whose counts are dropped while tables grow to their working size, then sums
/// the counts of the next `COUNTED_TRANSACTIONS`.
fn count_in_steady_state(mut transaction: impl FnMut(u64) -> u64) -> u64 {
    for number in 1..=WARM_UP_TRANSACTIONS {
        transaction(number);
    }
    let first = WARM_UP_TRANSACTIONS + 1;
    (first..first + COUNTED_TRANSACTIONS).map(transaction).sum()
}

/// Fails when `counted` allocations over the counted run exceed `per_transaction_max` per
/// transaction plus the tables' growth.
fn assert_within_budget(whose: &str, counted: u64, per_transaction_max: u64) {
    let per_transaction = counted as f64 / COUNTED_TRANSACTIONS as f64;
    println!(
        "{whose} one-shot path: {counted} allocations in {COUNTED_TRANSACTIONS} transactions ({per_transaction:.4} each)"
    );
    assert!(counted > 0, "the counting allocator counted nothing: the test measures nothing");
    assert!(
        counted <= per_transaction_max * COUNTED_TRANSACTIONS + GROWTH_ALLOCATIONS_MAX,
        "{whose} one-shot transaction allocates {per_transaction:.4} times, above the budget of \
         {per_transaction_max}: if the new allocation is wanted, raise the budget and say why"
    );
}

/// One side of a cross-participant transfer: an `Add` on one account, as the coordinator
/// sends it (not sole; the participant copies the key out of its frame either way).
fn transfer_half(counter: u64) -> ToParticipant {
    let key = Bytes::copy_from_slice(format!("account-{:06}", counter % ACCOUNTS).as_bytes());
    let op = LocalOp { index: 0, key, kind: OpKind::Add { delta: 1, floor: i64::MIN } };
    ToParticipant::Prepare { txid: TxId::new(EPOCH, counter), ops: vec![op], sole: false }
}

/// Runs one message and does with the step's effects what the driver does: encodes each
/// record into a reused buffer, then drops records and outputs.
fn step(participant: &mut Participant, message: ToParticipant, fx: &mut PartEffects, payload: &mut Vec<u8>) {
    participant.on_message(Time::ZERO, EPOCH, message, fx).expect("a valid message");
    for (_, record) in fx.appends.drain(..) {
        payload.clear();
        record.encode_payload(payload);
    }
    fx.outputs.clear();
}

/// Allocations on this thread while `counter`'s transfer half is prepared and committed,
/// not counting the building of the messages themselves (the network decoder's work).
fn prepare_and_commit(participant: &mut Participant, counter: u64, fx: &mut PartEffects, payload: &mut Vec<u8>) -> u64 {
    let prepare = transfer_half(counter);
    let commit = ToParticipant::Commit { txid: TxId::new(EPOCH, counter) };
    let before = allocations();
    step(participant, prepare, fx, payload);
    step(participant, commit, fx, payload);
    allocations() - before
}

#[test]
fn a_participants_one_shot_transaction_allocates_within_its_budget() {
    let mut fx = PartEffects::default();
    let mut participant = Participant::recover(ParticipantConfig::new(P1), None, Vec::new(), Time::ZERO, &mut fx);
    let mut payload = Vec::with_capacity(4096);
    let counted = count_in_steady_state(|counter| prepare_and_commit(&mut participant, counter, &mut fx, &mut payload));
    let stats = participant.stats();
    let transactions = WARM_UP_TRANSACTIONS + COUNTED_TRANSACTIONS;
    assert_eq!((stats.prepared, stats.committed), (transactions, transactions), "every transfer half committed");
    assert_within_budget("a participant's", counted, PARTICIPANT_ALLOCATIONS_PER_TRANSACTION_MAX);
}

/// A coordinator of `P1` and `P2` whose log holds one session, `CLIENT`'s.
fn coordinator_with_a_session(fx: &mut CoordEffects) -> Coordinator {
    let register = CoordRecord::Register { client: CLIENT, identity: IDENTITY.into(), expired: None };
    Coordinator::recover(CoordinatorConfig::new(vec![P1, P2]), [(Lsn(1), register)], Time::ZERO, fx)
}

/// A transfer between an account on each participant, as the client sends it.
fn transfer(seq: u64) -> Submit {
    let key = |participant: ParticipantId| {
        Bytes::copy_from_slice(format!("{participant:?}-account-{:06}", seq % ACCOUNTS).as_bytes())
    };
    let op =
        |participant, delta| Op { participant, key: key(participant), kind: OpKind::Add { delta, floor: i64::MIN } };
    Submit { client: CLIENT, seq, ops: vec![op(P1, -1), op(P2, 1)] }
}

/// What the driver does with a coordinator step's effects: encodes its records, drops them
/// and the outputs; returns the txid of the Prepare it sent, if any.
fn drain(fx: &mut CoordEffects, payload: &mut Vec<u8>) -> Option<TxId> {
    for (_, record) in fx.appends.drain(..) {
        payload.clear();
        record.encode_payload(payload);
    }
    let txid = fx.outputs.iter().find_map(|output| match &output.item {
        CoordOutput::ToParticipant(_, ToParticipant::Prepare { txid, .. }) => Some(*txid),
        _ => None,
    });
    fx.outputs.clear();
    txid
}

/// Allocations on this thread while transfer `seq` runs through the coordinator: submitted,
/// voted Yes by both participants, acknowledged by both (the votes and acks built outside
/// the count, as the network decoder would).
fn submit_vote_and_ack(coordinator: &mut Coordinator, seq: u64, fx: &mut CoordEffects, payload: &mut Vec<u8>) -> u64 {
    let submit = transfer(seq);
    let before = allocations();
    coordinator.on_submit(Time::ZERO, ORIGIN, submit, fx);
    let txid = drain(fx, payload).expect("the transfer was prepared");
    let mut counted = allocations() - before;
    let votes = [P1, P2].map(|from| (from, ToCoordinator::Vote { txid, vote: Vote::Yes { reads: Vec::new() } }));
    let acks = [P1, P2].map(|from| (from, ToCoordinator::Ack { txid }));
    let before = allocations();
    for (from, message) in votes.into_iter().chain(acks) {
        coordinator.on_message(Time::ZERO, from, message, fx);
        drain(fx, payload);
    }
    counted += allocations() - before;
    counted
}

#[test]
fn a_coordinators_one_shot_transaction_allocates_within_its_budget() {
    let mut fx = CoordEffects::default();
    let mut coordinator = coordinator_with_a_session(&mut fx);
    let mut payload = Vec::with_capacity(4096);
    drain(&mut fx, &mut payload);
    let counted = count_in_steady_state(|seq| submit_vote_and_ack(&mut coordinator, seq, &mut fx, &mut payload));
    let stats = coordinator.stats();
    assert_eq!(
        (stats.committed, stats.aborted),
        (WARM_UP_TRANSACTIONS + COUNTED_TRANSACTIONS, 0),
        "every transfer committed"
    );
    assert_within_budget("a coordinator's", counted, COORDINATOR_ALLOCATIONS_PER_TRANSACTION_MAX);
}
