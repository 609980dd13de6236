//! Exactly-once bookkeeping: the outcome of each client's recent requests, bounded per
//! client and in the number of clients.

use std::collections::{HashMap, VecDeque};

use super::snapshot::SessionSnapshot;
use crate::hash::SeededState;
use crate::ops::Outcome;
use crate::types::{ClientId, Lsn, Seq, TxId};

/// What the coordinator knows of a `(client, seq)`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Known {
    /// Never seen: execute it.
    New,
    /// Executing now as this transaction: the reply will come when it is decided.
    InFlight(TxId),
    /// Decided; the reply must wait for `after` to be durable.
    Done { outcome: Outcome, after: Lsn },
    /// Below the window of outcomes kept for this client: the outcome is forgotten.
    TooOld,
}

#[derive(Clone, Debug)]
enum Entry {
    InFlight(TxId),
    Done { outcome: Outcome, after: Lsn },
}

#[derive(Debug, Default)]
struct Session {
    /// Requests with `seq < floor` were evicted from the window.
    floor: Seq,
    entries: Entries,
    in_flight: usize,
    last_used: u64,
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

#[derive(Debug)]
pub struct Sessions {
    by_client: HashMap<ClientId, Session, SeededState>,
    max_clients: usize,
    outcomes_per_client: usize,
    clock: u64,
}

impl Sessions {
    pub fn new(max_clients: usize, outcomes_per_client: usize, hash_seed: u64) -> Sessions {
        assert!(max_clients > 0 && outcomes_per_client > 0);
        Sessions {
            by_client: HashMap::with_hasher(SeededState::new(hash_seed)),
            max_clients,
            outcomes_per_client,
            clock: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.by_client.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_client.is_empty()
    }

    pub fn lookup(&mut self, client: ClientId, seq: Seq) -> Known {
        self.clock += 1;
        let Some(session) = self.by_client.get_mut(&client) else { return Known::New };
        session.last_used = self.clock;
        if seq < session.floor {
            return Known::TooOld;
        }
        match session.entries.get(seq) {
            None => Known::New,
            Some(Entry::InFlight(txid)) => Known::InFlight(*txid),
            Some(Entry::Done { outcome, after }) => Known::Done { outcome: outcome.clone(), after: *after },
        }
    }

    /// Records that `(client, seq)` now executes as `txid`.
    pub fn begin(&mut self, client: ClientId, seq: Seq, txid: TxId) -> Result<(), SessionsFull> {
        self.make_room_for(client)?;
        let clock = self.clock;
        let limit = self.outcomes_per_client;
        let session = self.by_client.entry(client).or_default();
        session.last_used = clock;
        if session.in_flight >= limit {
            return Err(SessionsFull);
        }
        let previous = session.entries.insert(seq, Entry::InFlight(txid));
        assert!(previous.is_none(), "begin of a known request {client:?}/{seq}");
        session.in_flight += 1;
        trim_window(session, limit);
        Ok(())
    }

    /// Records the outcome of `(client, seq)`. A request never begun (refused before it
    /// ran, or replayed from the log) is recorded too.
    pub fn finish(&mut self, client: ClientId, seq: Seq, outcome: Outcome, after: Lsn) {
        if self.make_room_for(client).is_err() {
            return; // Every session has work in flight: nothing can be evicted, forget this one.
        }
        let limit = self.outcomes_per_client;
        let session = self.by_client.entry(client).or_default();
        if seq < session.floor {
            return;
        }
        if let Some(Entry::InFlight(_)) = session.entries.insert(seq, Entry::Done { outcome, after }) {
            session.in_flight -= 1;
        }
        trim_window(session, limit);
    }

    /// The committed outcomes and window floors, for a checkpoint (sorted by client, seq).
    /// In-flight requests are left out: if the process dies they were never decided (a
    /// commit is recorded here in the same step that logs it).
    pub fn export(&self) -> Vec<SessionSnapshot> {
        let mut sessions: Vec<SessionSnapshot> = self
            .by_client
            .iter()
            .map(|(client, session)| SessionSnapshot {
                client: *client,
                floor: session.floor,
                committed: session
                    .entries
                    .iter()
                    .filter_map(|(seq, entry)| match entry {
                        Entry::Done { outcome: Outcome::Committed { reads }, .. } => Some((*seq, reads.clone())),
                        _ => None,
                    })
                    .collect(),
            })
            .filter(|session| session.floor > 0 || !session.committed.is_empty())
            .collect();
        sessions.sort_by_key(|session| session.client);
        sessions
    }

    /// Restores what [`export`](Self::export) produced (into an empty table).
    pub fn import(&mut self, sessions: Vec<SessionSnapshot>) {
        for snapshot in sessions {
            if self.make_room_for(snapshot.client).is_err() {
                return; // Cannot happen: nothing restored is in flight.
            }
            let limit = self.outcomes_per_client;
            let session = self.by_client.entry(snapshot.client).or_default();
            session.floor = session.floor.max(snapshot.floor);
            for (seq, reads) in snapshot.committed {
                if seq >= session.floor {
                    session
                        .entries
                        .insert(seq, Entry::Done { outcome: Outcome::Committed { reads }, after: Lsn::NONE });
                }
            }
            trim_window(session, limit);
        }
    }

    /// Evicts the least recently used idle sessions when a new client would exceed the bound.
    fn make_room_for(&mut self, client: ClientId) -> Result<(), SessionsFull> {
        if self.by_client.len() < self.max_clients || self.by_client.contains_key(&client) {
            return Ok(());
        }
        let mut idle: Vec<(u64, ClientId)> = self
            .by_client
            .iter()
            .filter(|(_, session)| session.in_flight == 0)
            .map(|(id, session)| (session.last_used, *id))
            .collect();
        if idle.is_empty() {
            return Err(SessionsFull);
        }
        // Evict a sixteenth at once so the scan is amortised over many new clients.
        let evict = (self.max_clients / 16).clamp(1, idle.len());
        idle.select_nth_unstable(evict - 1);
        for (_, id) in &idle[..evict] {
            self.by_client.remove(id);
        }
        Ok(())
    }
}

/// Drops the oldest decided outcomes beyond the per-client window.
fn trim_window(session: &mut Session, limit: usize) {
    while session.entries.len() > limit {
        let Some((oldest, entry)) = session.entries.oldest() else { break };
        if matches!(entry, Entry::InFlight(_)) {
            break; // Never forget a request still executing.
        }
        session.entries.pop_oldest();
        session.floor = oldest + 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ops::AbortReason;

    fn aborted() -> Outcome {
        Outcome::Aborted { reason: AbortReason::Invalid { detail: "x".into() } }
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
        let mut sessions = Sessions::new(4, 4, 0);
        let client = ClientId(1);
        assert_eq!(sessions.lookup(client, 1), Known::New);
        sessions.begin(client, 1, TxId(10)).unwrap();
        assert_eq!(sessions.lookup(client, 1), Known::InFlight(TxId(10)));
        sessions.finish(client, 1, aborted(), Lsn(3));
        assert_eq!(sessions.lookup(client, 1), Known::Done { outcome: aborted(), after: Lsn(3) });
    }

    #[test]
    fn the_window_per_client_is_bounded() {
        let mut sessions = Sessions::new(4, 2, 0);
        let client = ClientId(1);
        for seq in 1..=5 {
            sessions.begin(client, seq, TxId(seq)).unwrap();
            sessions.finish(client, seq, aborted(), Lsn::NONE);
        }
        assert_eq!(sessions.lookup(client, 3), Known::TooOld);
        assert!(matches!(sessions.lookup(client, 4), Known::Done { .. }));
        assert!(matches!(sessions.lookup(client, 5), Known::Done { .. }));
    }

    #[test]
    fn in_flight_requests_are_never_evicted() {
        let mut sessions = Sessions::new(2, 2, 0);
        sessions.begin(ClientId(1), 1, TxId(1)).unwrap();
        sessions.begin(ClientId(1), 2, TxId(2)).unwrap();
        assert_eq!(sessions.begin(ClientId(1), 3, TxId(3)), Err(SessionsFull));
        sessions.begin(ClientId(2), 1, TxId(4)).unwrap();
        assert_eq!(sessions.begin(ClientId(3), 1, TxId(5)), Err(SessionsFull), "both sessions busy");
        sessions.finish(ClientId(2), 1, aborted(), Lsn::NONE);
        sessions.begin(ClientId(3), 1, TxId(5)).unwrap();
        assert_eq!(sessions.len(), 2, "the idle session was evicted");
        assert_eq!(sessions.lookup(ClientId(1), 1), Known::InFlight(TxId(1)));
    }
}
