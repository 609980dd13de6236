//! Client sessions and their exactly-once bookkeeping, the way Raft's client sessions work
//! (Ongaro's thesis, section 6.3): a client registers a session (a durable `Register`
//! record) bound to its connection's identity, numbers its requests 1, 2, 3… on it, and the
//! outcome of each recent request is kept so a retry gets it instead of a second execution.
//!
//! Sessions end only by rules both sides know, never by silent eviction: an identity keeps at
//! most `sessions_per_identity_max` sessions (registering one more expires its least
//! recently used idle session, and the `Register` record names it, so a replay expires the
//! same one), and the table holds at most `sessions_max` (registration is then refused). A
//! request on a session that does not exist gets `SessionExpired`, never an execution.
//!
//! Memory is bounded in bytes: per session at most `outcomes_per_session` outcomes and
//! `session_bytes_max` accounted bytes (the oldest decided outcomes go first; a retry of one
//! gets `SeqTooOld`), with stored outcomes copied into compact owned buffers, so no inbound
//! frame stays pinned by a read it carried. A transfer's outcome (committed, no reads) takes
//! no heap at all. An interactive transaction's intermediate answers (`Began`, `Executed`)
//! are kept the same way, so their retries are answered alike; they are never exported to a
//! checkpoint (a restart forgets open transactions).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;

use super::snapshot::SessionSnapshot;
use crate::codec::{Decode, Encode};
use crate::codec::{put_reads, read_reads};
use crate::hash::SeededState;
use crate::message::RegisterRefusal;
use crate::message::Reply;
use crate::ops::{Outcome, Read};
use crate::record::RECORD_LIMITS;
use crate::types::{ClientId, Lsn, Seq, TxId};

/// Longest identity a session may be bound to (a node name or certificate name).
pub const IDENTITY_BYTES_MAX: usize = 255;

/// What the coordinator knows of a `(client, seq)` asked by some identity.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Known {
    /// Never seen: execute it.
    New,
    /// Executing now as this transaction: the reply will come when it is decided.
    InFlight(TxId),
    /// Decided; the reply must wait for `after` to be durable.
    Done { outcome: Outcome, after: Lsn },
    /// Answered with an interactive step's reply (not an outcome); again after `after`.
    Answered { answer: Answer, after: Lsn },
    /// Below the window of outcomes kept for this session: the outcome is forgotten.
    TooOld,
    /// No such session (never registered, or expired).
    Expired,
    /// The session belongs to another identity.
    NotOwner,
}

/// An interactive request's answer that is not an outcome.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Answer {
    Began(TxId),
    Executed(Vec<Read>),
}

impl Answer {
    pub fn into_reply(self, client: ClientId, seq: Seq) -> Reply {
        match self {
            Answer::Began(txid) => Reply::Began { client, seq, txid },
            Answer::Executed(reads) => Reply::Executed { client, seq, reads },
        }
    }
}

/// An outcome as the table keeps it: owned, compact bytes (or nothing at all for the common
/// committed-without-reads case), decoded again only to answer a retry.
#[derive(Clone, Debug)]
enum StoredOutcome {
    CommittedWithoutGets,
    Encoded(Box<[u8]>),
    Began(TxId),
    /// An Executed answer's reads, encoded as a list.
    Executed(Box<[u8]>),
}

impl StoredOutcome {
    fn store(outcome: &Outcome) -> StoredOutcome {
        match outcome {
            Outcome::Committed { reads } if reads.is_empty() => StoredOutcome::CommittedWithoutGets,
            other => {
                let mut bytes = Vec::new();
                other.encode(&mut bytes);
                StoredOutcome::Encoded(bytes.into_boxed_slice())
            }
        }
    }

    fn store_answer(answer: &Answer) -> StoredOutcome {
        match answer {
            Answer::Began(txid) => StoredOutcome::Began(*txid),
            Answer::Executed(reads) => {
                let mut bytes = Vec::new();
                put_reads(&mut bytes, reads);
                StoredOutcome::Executed(bytes.into_boxed_slice())
            }
        }
    }

    /// What a retry hears.
    fn known(&self, after: Lsn) -> Known {
        match self {
            StoredOutcome::Began(txid) => Known::Answered { answer: Answer::Began(*txid), after },
            StoredOutcome::Executed(bytes) => {
                let mut reader = crate::codec::Reader::new(Bytes::copy_from_slice(bytes), RECORD_LIMITS);
                let reads = read_reads(&mut reader).expect("stored reads decode: the table encoded them");
                Known::Answered { answer: Answer::Executed(reads), after }
            }
            outcome => Known::Done { outcome: outcome.load(), after },
        }
    }

    fn load(&self) -> Outcome {
        match self {
            StoredOutcome::CommittedWithoutGets => Outcome::Committed { reads: Vec::new() },
            StoredOutcome::Encoded(bytes) => Outcome::decode_all(Bytes::copy_from_slice(bytes), RECORD_LIMITS)
                .expect("a stored outcome decodes: the table encoded it"),
            StoredOutcome::Began(_) | StoredOutcome::Executed(_) => unreachable!("not an outcome"),
        }
    }

    fn heap_bytes(&self) -> usize {
        match self {
            StoredOutcome::CommittedWithoutGets | StoredOutcome::Began(_) => 0,
            StoredOutcome::Encoded(bytes) | StoredOutcome::Executed(bytes) => bytes.len(),
        }
    }

    fn is_committed(&self) -> bool {
        match self {
            StoredOutcome::CommittedWithoutGets => true,
            StoredOutcome::Encoded(bytes) => bytes.first() != Some(&1), // Outcome tag 1 is Aborted.
            StoredOutcome::Began(_) | StoredOutcome::Executed(_) => false,
        }
    }
}

#[derive(Clone, Debug)]
enum Entry {
    InFlight(TxId),
    Done { outcome: StoredOutcome, after: Lsn },
}

impl Entry {
    fn heap_bytes(&self) -> usize {
        match self {
            Entry::InFlight(_) => 0,
            Entry::Done { outcome, .. } => outcome.heap_bytes(),
        }
    }
}

/// Bytes one window slot costs besides its outcome's heap bytes.
const ENTRY_BYTES: usize = std::mem::size_of::<(Seq, Entry)>();
/// Bytes a session costs besides its window (the map slot, the struct, the identity list).
const SESSION_BYTES: usize = std::mem::size_of::<(ClientId, Session)>() + 2 * std::mem::size_of::<ClientId>();

#[derive(Debug)]
struct Session {
    identity: Arc<str>,
    /// Requests with `seq < floor` were dropped from the window.
    floor: Seq,
    entries: Entries,
    in_flight: usize,
    last_used: u64,
    /// Heap bytes of the stored outcomes.
    outcome_bytes: usize,
}

impl Session {
    fn new(identity: Arc<str>, clock: u64) -> Session {
        Session { identity, floor: 0, entries: Entries::default(), in_flight: 0, last_used: clock, outcome_bytes: 0 }
    }

    fn accounted_bytes(&self) -> usize {
        SESSION_BYTES + self.identity.len() + self.entries.len() * ENTRY_BYTES + self.outcome_bytes
    }
}

/// A client's requests by seq, sorted, in one contiguous ring. A client numbers its
/// requests 1, 2, 3…, so a seq is nearly always found at the position its distance from
/// the newest gives, and a new one goes at the back: no tree to walk (a `BTreeMap` here was
/// 10% of the coordinator's time at 100 k tx/s). Gaps and out-of-order seqs still work,
/// through a binary search.
#[derive(Debug, Default)]
struct Entries(VecDeque<(Seq, Entry)>);

impl Entries {
    fn len(&self) -> usize {
        self.0.len()
    }

    /// Where `seq` is (`Ok`) or would go (`Err`).
    fn position(&self, seq: Seq) -> Result<usize, usize> {
        let Some(&(newest, _)) = self.0.back() else { return Err(0) };
        if seq > newest {
            return Err(self.0.len());
        }
        let from_back = newest - seq;
        if let Some(guess) = usize::try_from(from_back).ok().and_then(|d| (self.0.len() - 1).checked_sub(d))
            && self.0[guess].0 == seq
        {
            return Ok(guess);
        }
        self.0.binary_search_by_key(&seq, |(s, _)| *s)
    }

    fn get(&self, seq: Seq) -> Option<&Entry> {
        self.position(seq).ok().map(|at| &self.0[at].1)
    }

    /// Stores `entry` for `seq`; returns the one it replaced.
    fn insert(&mut self, seq: Seq, entry: Entry) -> Option<Entry> {
        match self.position(seq) {
            Ok(at) => Some(std::mem::replace(&mut self.0[at].1, entry)),
            Err(at) => {
                self.0.insert(at, (seq, entry));
                None
            }
        }
    }

    fn oldest(&self) -> Option<(Seq, &Entry)> {
        self.0.front().map(|(seq, entry)| (*seq, entry))
    }

    fn pop_oldest(&mut self) {
        self.0.pop_front();
    }

    fn iter(&self) -> impl Iterator<Item = (&Seq, &Entry)> {
        self.0.iter().map(|(seq, entry)| (seq, entry))
    }
}

/// Why a new request cannot be recorded right now.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SessionsFull;

/// The table's bounds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct SessionLimits {
    pub sessions_max: usize,
    pub sessions_per_identity_max: usize,
    /// Decided outcomes kept per session (and requests in flight at once).
    pub outcomes_per_session: usize,
    /// Accounted bytes per session beyond which its oldest decided outcomes are dropped
    /// (requests in flight hold no outcome bytes). An outcome larger than this on its own is
    /// dropped at once: its first reply still leaves, a retry gets `SeqTooOld`.
    pub session_bytes_max: usize,
}

impl SessionLimits {
    /// The most the table accounts for: every session at its budget.
    pub fn table_bytes_max(&self) -> usize {
        self.sessions_max.saturating_mul(self.session_bytes_max)
    }
}

#[derive(Debug)]
pub struct Sessions {
    by_client: HashMap<ClientId, Session, SeededState>,
    by_identity: HashMap<Arc<str>, Vec<ClientId>, SeededState>,
    limits: SessionLimits,
    clock: u64,
}

impl Sessions {
    pub fn new(limits: SessionLimits, hash_seed: u64) -> Sessions {
        assert!(limits.sessions_max > 0 && limits.sessions_per_identity_max > 0 && limits.outcomes_per_session > 0);
        Sessions {
            by_client: HashMap::with_hasher(SeededState::new(hash_seed)),
            by_identity: HashMap::with_hasher(SeededState::new(hash_seed ^ 0x5e55)),
            limits,
            clock: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.by_client.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_client.is_empty()
    }

    /// The bytes the table accounts for now (see [`SessionLimits`]); O(sessions).
    pub fn accounted_bytes(&self) -> usize {
        self.by_client.values().map(Session::accounted_bytes).sum()
    }

    /// Sessions bound to `identity`.
    pub fn sessions_of(&self, identity: &str) -> usize {
        self.by_identity.get(identity).map_or(0, Vec::len)
    }

    /// Whether `client` is a session of `identity`.
    pub fn owner_is(&self, client: ClientId, identity: &str) -> bool {
        self.by_client.get(&client).is_some_and(|session| &*session.identity == identity)
    }

    /// Decides whether `identity` may open one more session, and which of its sessions that
    /// expires: its least recently used idle one once it holds its maximum.
    pub fn plan_registration(&self, identity: &str) -> Result<Option<ClientId>, RegisterRefusal> {
        if identity.len() > IDENTITY_BYTES_MAX {
            return Err(RegisterRefusal::BadIdentity);
        }
        let own = self.by_identity.get(identity).map_or(&[][..], Vec::as_slice);
        if own.len() >= self.limits.sessions_per_identity_max {
            let idle_lru = own
                .iter()
                .map(|client| (&self.by_client[client], *client))
                .filter(|(session, _)| session.in_flight == 0)
                .min_by_key(|(session, client)| (session.last_used, *client));
            return match idle_lru {
                Some((_, client)) => Ok(Some(client)),
                None => Err(RegisterRefusal::IdentityBusy),
            };
        }
        if self.by_client.len() >= self.limits.sessions_max {
            return Err(RegisterRefusal::TableFull);
        }
        Ok(None)
    }

    /// Opens session `client` for `identity`, first expiring `expired` (as planned, or as a
    /// replayed `Register` record says).
    pub fn register(&mut self, client: ClientId, identity: &str, expired: Option<ClientId>) {
        if let Some(expired) = expired {
            self.expire(expired);
        }
        assert!(client != ClientId::NONE, "session id 0 marks registrations");
        self.clock += 1;
        let identity: Arc<str> = match self.by_identity.get_key_value(identity) {
            Some((shared, _)) => shared.clone(),
            None => Arc::from(identity),
        };
        let previous = self.by_client.insert(client, Session::new(identity.clone(), self.clock));
        assert!(previous.is_none(), "session {client:?} registered twice");
        self.by_identity.entry(identity).or_default().push(client);
    }

    fn expire(&mut self, client: ClientId) {
        let Some(session) = self.by_client.remove(&client) else { return };
        assert!(session.in_flight == 0, "expired session {client:?} had requests in flight");
        if let Some(list) = self.by_identity.get_mut(&*session.identity) {
            list.retain(|&c| c != client);
            if list.is_empty() {
                self.by_identity.remove(&*session.identity);
            }
        }
    }

    pub fn lookup(&mut self, client: ClientId, identity: &str, seq: Seq) -> Known {
        self.clock += 1;
        let Some(session) = self.by_client.get_mut(&client) else { return Known::Expired };
        if &*session.identity != identity {
            return Known::NotOwner;
        }
        session.last_used = self.clock;
        if seq < session.floor {
            return Known::TooOld;
        }
        match session.entries.get(seq) {
            None => Known::New,
            Some(Entry::InFlight(txid)) => Known::InFlight(*txid),
            Some(Entry::Done { outcome, after }) => outcome.known(*after),
        }
    }

    /// Whether `(client, seq)` is on an existing session and unknown there (whoever asks).
    pub fn is_new(&self, client: ClientId, seq: Seq) -> bool {
        self.by_client.get(&client).is_some_and(|session| seq >= session.floor && session.entries.get(seq).is_none())
    }

    /// Records that `(client, seq)` of an existing session now executes as `txid`.
    pub fn begin(&mut self, client: ClientId, seq: Seq, txid: TxId) -> Result<(), SessionsFull> {
        let limits = self.limits;
        let Some(session) = self.by_client.get_mut(&client) else { return Err(SessionsFull) };
        if session.in_flight >= limits.outcomes_per_session {
            return Err(SessionsFull);
        }
        let previous = session.entries.insert(seq, Entry::InFlight(txid));
        assert!(previous.is_none(), "begin of a known request {client:?}/{seq}");
        session.in_flight += 1;
        trim_window(session, &limits);
        Ok(())
    }

    /// Records the outcome of `(client, seq)`. A request never begun (refused before it
    /// ran, or replayed from the log) is recorded too; one of a session that does not exist
    /// (expired meanwhile) is not.
    pub fn finish(&mut self, client: ClientId, seq: Seq, outcome: &Outcome, after: Lsn) {
        self.store(client, seq, StoredOutcome::store(outcome), after);
    }

    /// Records the answer of interactive request `(client, seq)`, as [`finish`](Self::finish)
    /// records an outcome.
    pub fn answer(&mut self, client: ClientId, seq: Seq, answer: &Answer, after: Lsn) {
        self.store(client, seq, StoredOutcome::store_answer(answer), after);
    }

    fn store(&mut self, client: ClientId, seq: Seq, stored: StoredOutcome, after: Lsn) {
        let limits = self.limits;
        let Some(session) = self.by_client.get_mut(&client) else { return };
        if seq < session.floor {
            return;
        }
        session.outcome_bytes += stored.heap_bytes();
        match session.entries.insert(seq, Entry::Done { outcome: stored, after }) {
            Some(Entry::InFlight(_)) => session.in_flight -= 1,
            Some(done) => session.outcome_bytes -= done.heap_bytes(),
            None => {}
        }
        trim_window(session, &limits);
    }

    /// Every session with its committed outcomes and window floor, for a checkpoint (sorted by
    /// client, seq). In-flight requests and aborts are left out: if the process dies the
    /// former were never decided (a commit is recorded here in the same step that logs it),
    /// and an abort had no effect, so running its retry is safe.
    pub fn export(&self) -> Vec<SessionSnapshot> {
        let mut sessions: Vec<SessionSnapshot> = self
            .by_client
            .iter()
            .map(|(client, session)| SessionSnapshot {
                client: *client,
                identity: session.identity.to_string(),
                floor: session.floor,
                committed: session
                    .entries
                    .iter()
                    .filter_map(|(seq, entry)| match entry {
                        Entry::Done { outcome, .. } if outcome.is_committed() => Some((*seq, outcome.load())),
                        _ => None,
                    })
                    .collect(),
            })
            .collect();
        sessions.sort_by_key(|session| session.client);
        sessions
    }

    /// Restores what [`export`](Self::export) produced (into an empty table).
    pub fn import(&mut self, sessions: Vec<SessionSnapshot>) {
        for snapshot in sessions {
            if self.by_client.contains_key(&snapshot.client) || snapshot.client == ClientId::NONE {
                continue; // Cannot happen in a checkpoint this code wrote.
            }
            self.register(snapshot.client, &snapshot.identity, None);
            let session = self.by_client.get_mut(&snapshot.client).expect("just registered");
            session.floor = snapshot.floor;
            for (seq, outcome) in snapshot.committed {
                if seq >= snapshot.floor {
                    self.finish(snapshot.client, seq, &outcome, Lsn::NONE);
                }
            }
        }
    }
}

/// Drops the oldest decided outcomes beyond the session's window or byte budget (never a
/// request still executing).
fn trim_window(session: &mut Session, limits: &SessionLimits) {
    loop {
        let over_count = session.entries.len() > limits.outcomes_per_session;
        let over_bytes = session.accounted_bytes() > limits.session_bytes_max;
        if !over_count && !over_bytes {
            break;
        }
        let Some((oldest, entry)) = session.entries.oldest() else { break };
        if matches!(entry, Entry::InFlight(_)) {
            break;
        }
        session.outcome_bytes -= entry.heap_bytes();
        session.entries.pop_oldest();
        session.floor = oldest + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::{AbortReason, Read};

    fn aborted() -> Outcome {
        Outcome::Aborted { reason: AbortReason::Invalid { detail: "x".into() } }
    }

    fn limits(sessions_max: usize, per_identity: usize, outcomes: usize) -> SessionLimits {
        SessionLimits {
            sessions_max,
            sessions_per_identity_max: per_identity,
            outcomes_per_session: outcomes,
            session_bytes_max: 1 << 20,
        }
    }

    fn table(sessions_max: usize, per_identity: usize, outcomes: usize) -> Sessions {
        Sessions::new(limits(sessions_max, per_identity, outcomes), 0)
    }

    /// Registers as the coordinator does: plan, then apply.
    fn open(sessions: &mut Sessions, client: u64, identity: &str) -> Result<Option<ClientId>, RegisterRefusal> {
        let expired = sessions.plan_registration(identity)?;
        sessions.register(ClientId(client), identity, expired);
        Ok(expired)
    }

    proptest::proptest! {
        /// Inserts at mostly rising seqs (with gaps, repeats and stragglers) and evictions of
        /// the oldest give what a sorted map gives.
        #[test]
        fn entries_behave_as_a_sorted_map(
            steps in proptest::collection::vec((0u8..10, 0u64..6), 1..300),
        ) {
            let mut entries = Entries::default();
            let mut model = std::collections::BTreeMap::new();
            let mut next: Seq = 1;
            for (kind, jump) in steps {
                match kind {
                    0 => {
                        let oldest = entries.oldest().map(|(seq, _)| seq);
                        proptest::prop_assert_eq!(oldest, model.keys().next().copied());
                        entries.pop_oldest();
                        model.pop_first();
                    }
                    1..=2 => {
                        // An older seq: a retry or a gap being filled.
                        let seq = next.saturating_sub(jump * 3);
                        let entry = Entry::InFlight(TxId(seq));
                        proptest::prop_assert_eq!(entries.insert(seq, entry).is_some(), model.insert(seq, seq).is_some());
                    }
                    _ => {
                        next += jump.max(1) - 1 + u64::from(jump == 5) * 40;
                        let entry = Entry::InFlight(TxId(next));
                        proptest::prop_assert_eq!(entries.insert(next, entry).is_some(), model.insert(next, next).is_some());
                        next += 1;
                    }
                }
                proptest::prop_assert_eq!(entries.len(), model.len());
            }
            let listed: Vec<Seq> = entries.iter().map(|(seq, _)| *seq).collect();
            proptest::prop_assert_eq!(listed, model.keys().copied().collect::<Vec<_>>());
            for seq in 0..next + 2 {
                let found = entries.get(seq).map(|entry| matches!(entry, Entry::InFlight(txid) if txid.0 == seq));
                proptest::prop_assert_eq!(found, model.get(&seq).map(|_| true), "seq {}", seq);
            }
        }
    }

    #[test]
    fn a_request_is_new_then_in_flight_then_done() {
        let mut sessions = table(4, 4, 4);
        open(&mut sessions, 1, "a").unwrap();
        let client = ClientId(1);
        assert_eq!(sessions.lookup(client, "a", 1), Known::New);
        sessions.begin(client, 1, TxId(10)).unwrap();
        assert_eq!(sessions.lookup(client, "a", 1), Known::InFlight(TxId(10)));
        sessions.finish(client, 1, &aborted(), Lsn(3));
        assert_eq!(sessions.lookup(client, "a", 1), Known::Done { outcome: aborted(), after: Lsn(3) });
    }

    #[test]
    fn unknown_sessions_and_other_identities_are_refused() {
        let mut sessions = table(4, 4, 4);
        open(&mut sessions, 1, "a").unwrap();
        assert_eq!(sessions.lookup(ClientId(2), "a", 1), Known::Expired);
        assert_eq!(sessions.lookup(ClientId(1), "b", 1), Known::NotOwner);
        assert!(sessions.owner_is(ClientId(1), "a") && !sessions.owner_is(ClientId(1), "b"));
        assert_eq!(sessions.begin(ClientId(2), 1, TxId(1)), Err(SessionsFull));
        sessions.finish(ClientId(2), 1, &aborted(), Lsn::NONE);
        assert_eq!(sessions.len(), 1, "an outcome never creates a session");
    }

    #[test]
    fn the_window_per_session_is_bounded() {
        let mut sessions = table(4, 4, 2);
        open(&mut sessions, 1, "a").unwrap();
        let client = ClientId(1);
        for seq in 1..=5 {
            sessions.begin(client, seq, TxId(seq)).unwrap();
            sessions.finish(client, seq, &aborted(), Lsn::NONE);
        }
        assert_eq!(sessions.lookup(client, "a", 3), Known::TooOld);
        assert!(matches!(sessions.lookup(client, "a", 4), Known::Done { .. }));
        assert!(matches!(sessions.lookup(client, "a", 5), Known::Done { .. }));
    }

    #[test]
    fn stored_reads_are_compact_copies_bounded_in_bytes() {
        let mut sessions = Sessions::new(SessionLimits { session_bytes_max: 4096, ..limits(4, 4, 100) }, 0);
        open(&mut sessions, 1, "a").unwrap();
        let frame = Bytes::from(vec![7u8; 64 * 1024]); // A big inbound frame...
        let reads = vec![Read { index: 0, value: Some(frame.slice(0..1000)) }]; // ...and a read out of it.
        let outcome = Outcome::Committed { reads };
        for seq in 1..=20 {
            sessions.finish(ClientId(1), seq, &outcome, Lsn::NONE);
        }
        assert!(sessions.accounted_bytes() <= 4096, "{} bytes", sessions.accounted_bytes());
        assert_eq!(sessions.lookup(ClientId(1), "a", 20), Known::Done { outcome: outcome.clone(), after: Lsn::NONE });
        assert_eq!(sessions.lookup(ClientId(1), "a", 1), Known::TooOld);
        drop(outcome);
        assert!(frame.is_unique(), "the table keeps no slice of the inbound frame");
    }

    #[test]
    fn in_flight_requests_are_bounded_per_session() {
        let mut sessions = table(2, 2, 2);
        open(&mut sessions, 1, "a").unwrap();
        sessions.begin(ClientId(1), 1, TxId(1)).unwrap();
        sessions.begin(ClientId(1), 2, TxId(2)).unwrap();
        assert_eq!(sessions.begin(ClientId(1), 3, TxId(3)), Err(SessionsFull));
    }

    #[test]
    fn an_identity_beyond_its_bound_expires_its_least_recently_used_idle_session() {
        let mut sessions = table(10, 2, 4);
        assert_eq!(open(&mut sessions, 1, "a"), Ok(None));
        assert_eq!(open(&mut sessions, 2, "a"), Ok(None));
        sessions.begin(ClientId(1), 1, TxId(1)).unwrap(); // 1 is busy and most recent.
        assert_eq!(open(&mut sessions, 3, "a"), Ok(Some(ClientId(2))));
        assert_eq!(sessions.lookup(ClientId(2), "a", 1), Known::Expired);
        assert_eq!(sessions.sessions_of("a"), 2);
        // Both left are now busy: a further registration is refused, nothing expires.
        sessions.begin(ClientId(3), 1, TxId(2)).unwrap();
        assert_eq!(sessions.plan_registration("a"), Err(RegisterRefusal::IdentityBusy));
        // Another identity is not affected.
        assert_eq!(open(&mut sessions, 4, "b"), Ok(None));
    }

    #[test]
    fn a_full_table_refuses_registration() {
        let mut sessions = table(2, 2, 4);
        open(&mut sessions, 1, "a").unwrap();
        open(&mut sessions, 2, "b").unwrap();
        assert_eq!(sessions.plan_registration("c"), Err(RegisterRefusal::TableFull));
        assert_eq!(sessions.plan_registration(&"x".repeat(300)), Err(RegisterRefusal::BadIdentity));
        // An identity at its own bound still rotates within it.
        let mut sessions = table(2, 1, 4);
        open(&mut sessions, 1, "a").unwrap();
        open(&mut sessions, 2, "b").unwrap();
        assert_eq!(open(&mut sessions, 3, "a"), Ok(Some(ClientId(1))));
    }

    #[test]
    fn export_and_import_keep_sessions_floors_and_committed_outcomes() {
        let mut sessions = table(4, 4, 2);
        open(&mut sessions, 1, "a").unwrap();
        open(&mut sessions, 2, "b").unwrap();
        let with_reads = Outcome::Committed { reads: vec![Read { index: 1, value: None }] };
        for seq in 1..=3 {
            sessions.finish(ClientId(1), seq, &with_reads, Lsn::NONE);
        }
        sessions.finish(ClientId(1), 4, &Outcome::CommittedReadsUnavailable, Lsn::NONE);
        let exported = sessions.export();
        assert_eq!(exported.len(), 2, "a session without outcomes survives too");
        let mut restored = table(4, 4, 2);
        restored.import(exported.clone());
        assert_eq!(restored.export(), exported);
        assert_eq!(restored.lookup(ClientId(1), "a", 2), Known::TooOld);
        assert_eq!(
            restored.lookup(ClientId(1), "a", 4).clone(),
            Known::Done { outcome: Outcome::CommittedReadsUnavailable, after: Lsn::NONE }
        );
        assert_eq!(restored.lookup(ClientId(2), "b", 1), Known::New);
        assert_eq!(restored.lookup(ClientId(2), "a", 1), Known::NotOwner);
    }
}
