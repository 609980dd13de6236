//! Crash recovery with real processes: a failpoint (`TWOPHASE_FAILPOINT`) makes one node
//! SIGKILL itself at a chosen step of one cross-participant transaction; the test restarts
//! it at the same address with the same data and demands that
//! - the transaction ends the same way on every participant (both applied or neither,
//!   nothing left prepared), read through the admin `Dump` frame, and
//! - the client got the outcome, or learns it by retrying the same `(client, seq)` through a
//!   new connection (a new `Client` resuming the same session numbers its first request 1,
//!   like the one that was cut off). The session is registered before the failpoint is
//!   armed (a coordinator that is to die is restarted armed), so the armed process's log
//!   groups are those of the transaction alone, after its Epoch record.
//!
//! The transaction moves 10 from `a` on p1 to `b` on p2, both starting absent (0), so
//! "committed" is a = -10, b = 10 and "aborted" is both absent. Waits poll with generous
//! deadlines (a loaded 2-core machine); nothing sleeps to make a point.

mod common;

use std::time::{Duration, Instant};

use common::{Node, add, dump_ints, eventually};
use twophase_engine::{AbortReason, ClientId, Op, Outcome, ParticipantId};
use twophase_net::{Client, ClientError, ClientOptions};

/// Longest a failpoint may take to fire once its transaction is submitted, and a node to die.
const DIE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest the participants may take to agree after the restart.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Prepare timeout when a participant is expected to go silent: aborts come quickly.
const QUICK_ABORT: &str = "1000";
/// Prepare timeout when every vote is expected: never hit by a slow but healthy machine.
const PATIENT: &str = "10000";
/// The identity of the client whose transaction is interrupted; its session retries it.
const IDENTITY: &str = "failpoints-test";

fn transfer() -> Vec<Op> {
    vec![add(1, "a", -10, i64::MIN), add(2, "b", 10, i64::MIN)]
}

/// Which process a failpoint is armed in.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Victim {
    P1,
    Coordinator,
}

/// One participant's side of the transfer: its key's value and its transaction counts.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Side {
    value: Option<i64>,
    prepared: u32,
    in_doubt: u32,
}

impl Side {
    fn read(participant: &Node, key: &str) -> Side {
        let (values, (prepared, in_doubt)) = dump_ints(participant);
        Side { value: values.get(key).copied(), prepared, in_doubt }
    }

    /// Holds the transfer prepared (in doubt or not yet), nothing applied.
    fn is_prepared(&self) -> bool {
        self.value.is_none() && self.prepared == 1
    }
}

/// A coordinator and participants p1, p2, each its own process.
struct Nodes {
    _dir: tempfile::TempDir,
    p1: Node,
    p2: Node,
    c1: Node,
    /// The session of [`IDENTITY`], registered once everything is up.
    session: ClientId,
}

impl Nodes {
    /// Starts everything, registers the test's session, and arms `failpoint` in `victim`
    /// only (a coordinator is restarted armed, so the registration is no hit of it).
    fn start(victim: Victim, failpoint: &str, prepare_timeout_ms: &str) -> Nodes {
        let dir = tempfile::tempdir().unwrap();
        let armed = [("TWOPHASE_FAILPOINT", failpoint)];
        let env = |who: Victim| if who == victim { &armed[..] } else { &[][..] };
        let p1 = Node::participant("p1", dir.path(), env(Victim::P1));
        let p2 = Node::participant("p2", dir.path(), &[]);
        let mut c1 = Node::coordinator(dir.path(), &[&p1, &p2], &["--prepare-timeout-ms", prepare_timeout_ms], &[]);
        let session =
            Client::connect(c1.addr, options(&c1.data_dir, None, 10)).expect("registering a session").client_id();
        if victim == Victim::Coordinator {
            c1.stop();
            c1.restart(&armed);
        }
        Nodes { _dir: dir, p1, p2, c1, session }
    }

    /// `a` on p1 and `b` on p2 with each participant's (prepared, in doubt) counts.
    fn state(&self) -> (Side, Side) {
        (Side::read(&self.p1, "a"), Side::read(&self.p2, "b"))
    }

    /// Waits until neither participant holds the transaction prepared and returns whether it
    /// committed; panics at once if they decided it differently.
    fn settled(&self) -> bool {
        eventually("both participants to finish the transaction", SETTLE_TIMEOUT, || {
            let (p1, p2) = self.state();
            if p1.prepared + p2.prepared > 0 {
                return None;
            }
            match (p1.value, p2.value) {
                (Some(-10), Some(10)) => Some(true),
                (None, None) => Some(false),
                other => panic!("the participants disagree: (a, b) = {other:?}"),
            }
        })
    }

    /// Stops every node cleanly: a restarted node must also shut down well.
    fn stop(mut self) {
        for node in [&mut self.c1, &mut self.p1, &mut self.p2] {
            node.stop();
        }
    }
}

/// Options of a client of [`IDENTITY`] resuming `session` (a new one when None).
fn options(data_dir: &std::path::Path, session: Option<ClientId>, attempts: u32) -> ClientOptions {
    ClientOptions {
        client_id: session,
        identity: Some(IDENTITY.into()),
        request_timeout: Duration::from_secs(20),
        busy_backoff: Duration::from_millis(50),
        max_attempts: attempts,
        ..common::client_options(data_dir)
    }
}

/// Submits `ops` as request 1 of the session on a new connection.
fn submit_ops(nodes: &Nodes, ops: Vec<Op>, attempts: u32) -> Result<Outcome, ClientError> {
    Client::connect(nodes.c1.addr, options(&nodes.c1.data_dir, Some(nodes.session), attempts))?.submit(ops)
}

/// Submits the transfer as request 1 of the session on a new connection.
fn submit(nodes: &Nodes, attempts: u32) -> Result<Outcome, ClientError> {
    submit_ops(nodes, transfer(), attempts)
}

/// Submits `ops` in the background, trying once: the coordinator is about to die.
fn submit_once_in_background_ops(nodes: &Nodes, ops: Vec<Op>) -> std::thread::JoinHandle<Result<Outcome, ClientError>> {
    let (addr, options) = (nodes.c1.addr, options(&nodes.c1.data_dir, Some(nodes.session), 1));
    std::thread::spawn(move || Client::connect(addr, options)?.submit(ops))
}

/// Submits the transfer in the background, trying once: the coordinator is about to die.
fn submit_once_in_background(nodes: &Nodes) -> std::thread::JoinHandle<Result<Outcome, ClientError>> {
    submit_once_in_background_ops(nodes, transfer())
}

/// The retry of request 1 of the session after a restart: the outcome, the same on every ask.
fn retry(nodes: &Nodes) -> Outcome {
    retry_ops(nodes, transfer())
}

fn retry_ops(nodes: &Nodes, ops: Vec<Op>) -> Outcome {
    let outcome = submit_ops(nodes, ops.clone(), 10).expect("the retry gets an outcome");
    let again = submit_ops(nodes, ops, 10).expect("a second retry gets an outcome");
    assert_eq!(again, outcome, "the coordinator answers a retried (client, seq) with one outcome");
    outcome
}

/// The restarted node reported cutting a torn tail. Its stderr is read by another thread
/// than the `listening on` line that ended its restart, so the line may lag: wait for it.
fn expect_torn_tail(node: &Node) {
    let seen = std::time::Instant::now() + Duration::from_secs(10);
    while !node.stderr().contains("cut a torn log tail") {
        assert!(std::time::Instant::now() < seen, "the restarted {} found no torn tail:\n{}", node.name, node.stderr());
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Aborted because p1 never voted: by the prepare timeout, or at once when the coordinator
/// saw p1's connection drop first (whichever comes first).
fn is_abort_for_silent_p1(outcome: &Outcome) -> bool {
    matches!(
        outcome,
        Outcome::Aborted { reason: AbortReason::Timeout { participant } | AbortReason::Unavailable { participant } }
            if *participant == ParticipantId(1)
    )
}

/// The coordinator dies at a failpoint of its own; it is restarted; returns how the
/// participants settled and the retried outcome. What the client heard before the crash,
/// if anything, must be how it settled.
fn kill_coordinator_and_restart(nodes: &mut Nodes) -> (bool, Outcome) {
    let first = submit_once_in_background(nodes);
    nodes.c1.expect_killed(DIE_TIMEOUT);
    let first = first.join().unwrap();
    nodes.c1.restart(&[]);
    let committed = nodes.settled();
    expect_heard_as_settled(&first, committed);
    (committed, retry(nodes))
}

/// A client that heard an outcome before the coordinator died heard the one that holds.
/// (It hears `Committed` as soon as the `Staged` record and both `Prepared` records are
/// durable, which may be before the `Commit` record is.)
fn expect_heard_as_settled(first: &Result<Outcome, ClientError>, committed: bool) {
    if let Ok(outcome) = first {
        assert_eq!(outcome.is_committed(), committed, "the client heard {outcome:?} before the crash");
    }
}

#[test]
fn coordinator_dies_while_preparing_and_the_restart_settles_it_one_way() {
    let mut nodes = Nodes::start(Victim::Coordinator, "coordinator-prepare-sent", PATIENT);
    let first = submit_once_in_background(&nodes);
    nodes.c1.expect_killed(DIE_TIMEOUT);
    assert!(first.join().unwrap().is_err(), "nobody could have decided");
    // Both voted Yes to a dead coordinator: prepared, undecided, nothing applied.
    let (p1, p2) = eventually("both participants to prepare", DIE_TIMEOUT, || {
        Some(nodes.state()).filter(|(p1, p2)| p1.prepared + p2.prepared == 2)
    });
    assert_eq!((p1.value, p2.value), (None, None), "nothing applied before a decision");
    nodes.c1.restart(&[]);
    // If the Staged record reached the file before the kill, the restart asks both
    // participants, finds them prepared and commits; if not, presumed abort. Either way
    // one ending, and the retry reports it (or, after an abort, runs afresh and reports that).
    let committed = nodes.settled();
    eprintln!("the Staged record {} the kill", if committed { "survived" } else { "did not survive" });
    let outcome = retry(&nodes);
    if committed {
        assert_eq!(outcome, Outcome::Committed { reads: vec![] }, "the resolved commit is the outcome");
    }
    assert_eq!(nodes.settled(), outcome.is_committed(), "the retry's outcome is what the participants hold");
    nodes.stop();
}

#[test]
fn coordinator_dies_after_its_commit_record_is_durable_and_the_commit_completes_after_restart() {
    let mut nodes = Nodes::start(Victim::Coordinator, "coordinator-commit-durable", PATIENT);
    let first = submit_once_in_background(&nodes);
    nodes.c1.expect_killed(DIE_TIMEOUT);
    let first = first.join().unwrap();
    // Both votes were in, so both are prepared; no Commit left before the crash.
    let (p1, p2) = nodes.state();
    assert!(p1.is_prepared() && p2.is_prepared(), "{p1:?} {p2:?}");
    nodes.c1.restart(&[]);
    assert!(nodes.settled(), "the durable Commit record is re-driven after the restart");
    expect_heard_as_settled(&first, true);
    assert_eq!(retry(&nodes), Outcome::Committed { reads: vec![] }, "the retry learns the commit");
    assert!(nodes.settled(), "learning the outcome did not run the transfer again");
    nodes.stop();
}

#[test]
fn participant_dies_while_prepared_and_commits_on_restart_once_the_coordinator_says_so() {
    let mut nodes = Nodes::start(Victim::P1, "participant-vote-sent", PATIENT);
    // Both Yes votes arrived, so the coordinator commits and tells the client at once.
    let outcome = submit(&nodes, 1).expect("the coordinator stays up");
    assert!(outcome.is_committed(), "{outcome:?}");
    nodes.p1.expect_killed(DIE_TIMEOUT);
    let (b, _) = eventually("p2 to apply the commit", SETTLE_TIMEOUT, || {
        let (values, counts) = dump_ints(&nodes.p2);
        (counts.0 == 0).then(|| (values.get("b").copied(), counts))
    });
    assert_eq!(b, Some(10));
    nodes.p1.restart(&[]);
    // p1 recovers the transaction in doubt, holds its lock and asks; the coordinator (or
    // its re-drive) says Commit.
    assert!(nodes.settled(), "p1 commits after its restart");
    assert_eq!(retry(&nodes), outcome);
    nodes.stop();
}

#[test]
fn participant_dies_before_voting_and_the_transaction_aborts() {
    let mut nodes = Nodes::start(Victim::P1, "participant-prepared-durable", QUICK_ABORT);
    let outcome = submit(&nodes, 1).expect("the coordinator stays up");
    assert!(is_abort_for_silent_p1(&outcome), "p1 never voted, so the transaction aborts: {outcome:?}");
    nodes.p1.expect_killed(DIE_TIMEOUT);
    nodes.p1.restart(&[]);
    // p1's Prepared record is durable: it comes back in doubt and the coordinator, which
    // decided abort and logged nothing, answers its inquiry with Abort.
    assert!(!nodes.settled());
    assert_eq!(retry(&nodes), outcome, "the coordinator remembers the abort it told the client");
    nodes.stop();
}

#[test]
fn coordinator_dies_between_appending_and_syncing_its_commit_record_and_the_ending_is_consistent() {
    let mut nodes = Nodes::start(Victim::Coordinator, "coordinator-commit-appended", PATIENT);
    let (committed, outcome) = kill_coordinator_and_restart(&mut nodes);
    // Whether the writer thread got the record to the file before the kill is a race the
    // failpoint does not decide; either ending is correct as long as it is one ending.
    eprintln!("the Commit record {} the kill", if committed { "survived" } else { "did not survive" });
    if committed {
        assert_eq!(outcome, Outcome::Committed { reads: vec![] }, "a surviving Commit record is the outcome");
    } else {
        assert_eq!(nodes.settled(), outcome.is_committed(), "the retry re-ran the aborted transfer");
    }
    nodes.stop();
}

#[test]
fn coordinator_dies_after_sending_commit_to_one_participant_and_the_other_commits_after_restart() {
    let mut nodes = Nodes::start(Victim::Coordinator, "coordinator-commit-sent-partial", PATIENT);
    let first = submit_once_in_background(&nodes);
    nodes.c1.expect_killed(DIE_TIMEOUT);
    expect_heard_as_settled(&first.join().unwrap(), true);
    // Exactly one participant got its Commit before the crash.
    let applied = eventually("one participant to apply the Commit it got", SETTLE_TIMEOUT, || match nodes.state() {
        (Side { value: Some(-10), prepared: 0, .. }, p2) if p2.is_prepared() => Some("p1"),
        (p1, Side { value: Some(10), prepared: 0, .. }) if p1.is_prepared() => Some("p2"),
        (p1, p2) if p1.is_prepared() && p2.is_prepared() => None,
        other => panic!("unexpected state {other:?}"),
    });
    eprintln!("{applied} got the Commit before the coordinator died");
    nodes.c1.restart(&[]);
    assert!(nodes.settled(), "the other participant commits once the coordinator is back");
    assert_eq!(retry(&nodes), Outcome::Committed { reads: vec![] });
    nodes.stop();
}

#[test]
fn participant_dies_after_applying_a_commit_before_acking_and_stays_committed() {
    let mut nodes = Nodes::start(Victim::P1, "participant-committed-applied", PATIENT);
    let outcome = submit(&nodes, 1).expect("the coordinator stays up");
    assert!(outcome.is_committed(), "{outcome:?}");
    nodes.p1.expect_killed(DIE_TIMEOUT);
    nodes.p1.restart(&[]);
    // Replaying its log re-applies the commit; the coordinator's re-driven Commit is acked.
    assert!(nodes.settled());
    assert_eq!(retry(&nodes), outcome);
    nodes.stop();
}

#[test]
fn coordinator_dies_in_the_middle_of_writing_its_staged_record_and_the_transaction_aborts() {
    // Group 1 of the coordinator's log is its Epoch record, written at start; group 2 is the
    // transfer's Staged record, cut in half.
    let mut nodes = Nodes::start(Victim::Coordinator, "wal-mid-group@2", PATIENT);
    let (committed, outcome) = kill_coordinator_and_restart(&mut nodes);
    expect_torn_tail(&nodes.c1);
    // Settled before the retry: the torn Staged record is no record at all, so nobody
    // heard Committed and the restart presumes abort.
    assert!(!committed, "a transaction whose Staged record is torn must not commit");
    assert_eq!(nodes.settled(), outcome.is_committed(), "the retry re-ran the aborted transfer");
    nodes.stop();
}

#[test]
fn coordinator_dies_in_the_middle_of_writing_its_commit_record_and_the_restart_commits() {
    // Group 2 is the durable Staged record; group 3 is the Commit record, cut in half.
    let mut nodes = Nodes::start(Victim::Coordinator, "wal-mid-group@3", PATIENT);
    let (committed, outcome) = kill_coordinator_and_restart(&mut nodes);
    expect_torn_tail(&nodes.c1);
    // Both participants were prepared and the Staged record durable: the transaction was
    // committed before its Commit record (the client may have heard so), and the restart
    // finds that out by asking them.
    assert!(committed, "a durable Staged record with both participants prepared is a commit");
    assert_eq!(outcome, Outcome::Committed { reads: vec![] });
    nodes.stop();
}

#[test]
fn participant_dies_in_the_middle_of_writing_its_prepared_record_and_the_transaction_aborts() {
    // p1's first group of records holds the transfer's Prepared (and the coordinator's epoch).
    let mut nodes = Nodes::start(Victim::P1, "wal-mid-group@1", QUICK_ABORT);
    let outcome = submit(&nodes, 1).expect("the coordinator stays up");
    assert!(is_abort_for_silent_p1(&outcome), "{outcome:?}");
    nodes.p1.expect_killed(DIE_TIMEOUT);
    nodes.p1.restart(&[]);
    expect_torn_tail(&nodes.p1);
    assert!(!nodes.settled());
    assert_eq!(retry(&nodes), outcome);
    nodes.stop();
}

#[test]
fn in_doubt_participants_keep_their_locks_until_the_coordinator_returns_then_the_keys_are_usable() {
    let mut nodes = Nodes::start(Victim::Coordinator, "coordinator-prepare-sent", PATIENT);
    let first = submit_once_in_background(&nodes);
    nodes.c1.expect_killed(DIE_TIMEOUT);
    assert!(first.join().unwrap().is_err());
    // Each has asked the dead coordinator at least once (in doubt) and decided nothing alone.
    let state = eventually("both participants to be in doubt", SETTLE_TIMEOUT, || {
        Some(nodes.state()).filter(|(p1, p2)| p1.in_doubt + p2.in_doubt == 2)
    });
    let in_doubt = Side { value: None, prepared: 1, in_doubt: 1 };
    assert_eq!(state, (in_doubt, in_doubt), "in doubt, locked, nothing applied");
    let restarted = Instant::now();
    nodes.c1.restart(&[]);
    // Committed if the Staged record reached the file before the kill, aborted if not.
    let committed = nodes.settled();
    eprintln!("resolved {:?} after the coordinator's restart began (committed: {committed})", restarted.elapsed());
    // The locks are gone: a new transaction on the same keys commits.
    let mut client = Client::connect(nodes.c1.addr, common::client_options(&nodes.c1.data_dir)).unwrap();
    assert!(client.submit(transfer()).unwrap().is_committed(), "the keys are usable again");
    // Applied once the Commit record is durable, which may be just after the client heard.
    let moved = if committed { 20 } else { 10 };
    eventually("the new transfer to be applied", SETTLE_TIMEOUT, || {
        let (p1, p2) = nodes.state();
        ((p1.value, p2.value) == (Some(-moved), Some(moved))).then_some(())
    });
    nodes.stop();
}

#[test]
fn an_unknown_failpoint_stops_the_process_before_it_serves() {
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(common::binary())
        .args(["participant", "--id", "p1", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("p1"))
        .env("TWOPHASE_FAILPOINT", "coordinator-commit-sent")
        .output()
        .expect("running twophase");
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("unknown failpoint \"coordinator-commit-sent\""), "{stderr}");
    assert!(stderr.contains("valid names: coordinator-prepare-sent, coordinator-commit-appended"), "{stderr}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("listening"), "it must not serve");
    assert!(!dir.path().join("p1").exists(), "it must not touch its data directory");
}

#[test]
fn coordinator_dies_between_staged_and_commit_and_the_retry_gets_the_reads() {
    // Hit 1 is the set-up transaction's one prepare; hit 2 the first of the transfer's.
    let mut nodes = Nodes::start(Victim::Coordinator, "coordinator-prepare-sent@2", PATIENT);
    let mut setup = Client::connect(nodes.c1.addr, options(&nodes.c1.data_dir, None, 10)).unwrap();
    assert!(setup.submit(vec![add(1, "c", 42, i64::MIN)]).unwrap().is_committed());
    // Applied (its Commit may follow the client's answer), so the transfer prepares at once.
    eventually("p1 to apply the set-up", SETTLE_TIMEOUT, || {
        let (values, (prepared, _)) = dump_ints(&nodes.p1);
        (values.get("c") == Some(&42) && prepared == 0).then_some(())
    });
    // The transfer also reads c on p1, which has writes here, so stays prepared and keeps
    // what it read.
    let mut ops = transfer();
    ops.push(common::get(1, "c"));
    let first = submit_once_in_background_ops(&nodes, ops.clone());
    nodes.c1.expect_killed(DIE_TIMEOUT);
    assert!(first.join().unwrap().is_err(), "nobody could have decided");
    eventually("both participants to prepare", DIE_TIMEOUT, || {
        Some(nodes.state()).filter(|(p1, p2)| p1.prepared + p2.prepared == 2)
    });
    nodes.c1.restart(&[]);
    // Committed if the Staged record reached the file before the kill (resolved from the
    // participants, with p1's read, which p1 still holds); aborted if not, and the retry
    // then runs it afresh.
    let committed = nodes.settled();
    eprintln!("the Staged record {} the kill", if committed { "survived" } else { "did not survive" });
    let outcome = retry_ops(&nodes, ops);
    let read_c = twophase_engine::Read { index: 2, value: Some(bytes::Bytes::copy_from_slice(&42i64.to_le_bytes())) };
    match &outcome {
        Outcome::Committed { reads } => assert_eq!(reads, &vec![read_c], "the read survives the restart"),
        Outcome::Aborted { reason } => assert!(!committed, "told aborted ({reason}) but it committed"),
        Outcome::CommittedReadsUnavailable => panic!("p1 kept its read, so the resolution must bring it back"),
    }
    assert_eq!(nodes.settled(), outcome.is_committed(), "the retry's outcome is what the participants hold");
    nodes.stop();
}
