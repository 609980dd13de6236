//! Simulated clients and the transactions they issue: set-up of the bank accounts, bank
//! transfers across participants, increments of hot counters and read-only mixes.

use std::collections::BTreeMap;

use bytes::Bytes;
use rand::Rng;

use super::SimConfig;
use crate::ops::{Op, OpKind, Outcome};
use crate::participant::encode_int;
use crate::types::{ClientId, ParticipantId, Seq};

pub fn participant_id(index: u16) -> ParticipantId {
    ParticipantId(index + 1)
}

pub fn account_key(participant: u16, account: u32) -> Bytes {
    Bytes::from(format!("acct/{participant}/{account}"))
}

pub(super) fn hot_key(hot: u32) -> Bytes {
    Bytes::from(format!("hot/{hot}"))
}

pub(super) fn is_account(key: &[u8]) -> bool {
    key.starts_with(b"acct/")
}

/// The set-up transactions: one per participant, creating its accounts.
pub fn setup_transactions(config: &SimConfig) -> Vec<Vec<Op>> {
    (0..config.participants)
        .map(|p| {
            (0..config.accounts_per_participant)
                .map(|a| Op {
                    participant: participant_id(p),
                    key: account_key(p, a),
                    kind: OpKind::Put(encode_int(config.initial_balance)),
                })
                .collect()
        })
        .collect()
}

fn two_participants(config: &SimConfig, rng: &mut impl Rng) -> (u16, u16) {
    let a = rng.gen_range(0..config.participants);
    if config.participants == 1 {
        return (a, a);
    }
    let b = (a + rng.gen_range(1..config.participants)) % config.participants;
    (a, b)
}

/// A random transaction of the configured mix.
pub fn random_transaction(config: &SimConfig, rng: &mut impl Rng) -> Vec<Op> {
    let mix = config.mix;
    let roll = rng.gen_range(0..mix.transfer + mix.increment + mix.read_only);
    let accounts = config.accounts_per_participant;
    if roll < mix.transfer {
        let (from, to) = two_participants(config, rng);
        let amount = rng.gen_range(1..=config.initial_balance.max(2) / 2);
        let mut ops = vec![
            Op {
                participant: participant_id(from),
                key: account_key(from, rng.gen_range(0..accounts)),
                kind: OpKind::Add { delta: -amount, floor: 0 },
            },
            Op {
                participant: participant_id(to),
                key: account_key(to, rng.gen_range(0..accounts)),
                kind: OpKind::Add { delta: amount, floor: i64::MIN },
            },
        ];
        // A third of the transfers also read a hot counter somewhere: reads of a transaction
        // that writes, which a restarted coordinator must bring back (or say it cannot).
        if rng.gen_range(0..3) == 0 {
            let p = rng.gen_range(0..config.participants);
            let hot = rng.gen_range(0..config.hot_keys);
            ops.push(Op { participant: participant_id(p), key: hot_key(hot), kind: OpKind::Get });
        }
        ops
    } else if roll < mix.transfer + mix.increment {
        let (a, b) = two_participants(config, rng);
        let hot = rng.gen_range(0..config.hot_keys);
        [a, b]
            .into_iter()
            .map(|p| Op {
                participant: participant_id(p),
                key: hot_key(hot),
                kind: OpKind::Add { delta: 1, floor: i64::MIN },
            })
            .collect()
    } else {
        (0..3)
            .map(|_| {
                let p = rng.gen_range(0..config.participants);
                Op {
                    participant: participant_id(p),
                    key: account_key(p, rng.gen_range(0..accounts)),
                    kind: OpKind::Get,
                }
            })
            .collect()
    }
}

/// The request a client is waiting on.
#[derive(Debug)]
pub struct Pending {
    pub seq: Seq,
    pub ops: Vec<Op>,
    pub is_setup: bool,
}

#[derive(Debug)]
pub struct Client {
    /// The identity its connection presents (one per simulated client).
    pub identity: String,
    /// The session the coordinator assigned; None until registered.
    pub session: Option<ClientId>,
    /// Registrations sent so far: the next registration's nonce.
    pub registrations: u64,
    next_seq: Seq,
    /// Client transactions still to complete.
    pub remaining: usize,
    /// Set-up transactions still to commit (client 0 only).
    pub setup: Vec<Vec<Op>>,
    pub pending: Option<Pending>,
    /// Wake-ups carry this token; a newer one makes older wake-ups stale.
    pub wake_token: u64,
    /// The first outcome heard for each request.
    pub outcomes: BTreeMap<Seq, Outcome>,
    /// An interactive client runs conversations instead of one-shot requests.
    pub interactive: bool,
    pub(super) conversation: Option<super::interactive::Conversation>,
}

impl Client {
    pub fn new(index: u16, remaining: usize) -> Client {
        Client {
            identity: format!("sim-client-{index}"),
            session: None,
            registrations: 0,
            next_seq: 1,
            remaining,
            setup: Vec::new(),
            pending: None,
            wake_token: 0,
            outcomes: BTreeMap::new(),
            interactive: false,
            conversation: None,
        }
    }

    pub fn is_done(&self) -> bool {
        self.pending.is_none() && self.conversation.is_none() && self.remaining == 0 && self.setup.is_empty()
    }

    /// The sequence number of this client's next request.
    pub(super) fn take_seq(&mut self) -> Seq {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// Starts the next request, if any: set-up first.
    pub fn start_next(&mut self, config: &SimConfig, rng: &mut impl Rng) -> Option<&Pending> {
        assert!(self.pending.is_none());
        let (ops, is_setup) = if let Some(ops) = self.setup.last() {
            (ops.clone(), true)
        } else if self.remaining > 0 {
            (random_transaction(config, rng), false)
        } else {
            return None;
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending = Some(Pending { seq, ops, is_setup });
        self.pending.as_ref()
    }

    /// Records the outcome of the pending request. Returns whether set-up just finished.
    pub fn complete(&mut self, outcome: &Outcome) -> bool {
        let pending = self.pending.take().expect("a pending request");
        if pending.is_setup {
            if outcome.is_committed() {
                self.setup.pop();
                return self.setup.is_empty();
            }
            return false; // Retried as a new request.
        }
        self.remaining -= 1;
        false
    }
}
