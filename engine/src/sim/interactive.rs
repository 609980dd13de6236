//! What interactive clients ask: bank transfers the textbook way (read both balances, check
//! the funds, then write), one statement per Execute with think time between them, on a few
//! hot accounts, half of them in the opposite order so that they deadlock; some abandoned
//! half-way until their idle timeout rolls them back.

use std::time::Duration;

use rand::Rng;

use super::SimConfig;
use super::workload::{account_key, participant_id};
use crate::ops::{Isolation, Op, OpKind, Read};
use crate::participant::decode_int;
use crate::types::{Seq, Time, TxId};

/// The interactive part of a run.
#[derive(Clone, Copy, Debug)]
pub struct InteractiveMix {
    /// Interactive clients (beside the one-shot `SimConfig::clients`).
    pub clients: u16,
    /// Interactive transactions to end, over all interactive clients.
    pub transactions: usize,
    /// Transfers pick their accounts among the first this many of each participant.
    pub hot_accounts: u32,
    /// Think time between a statement's answer and the next statement, in microseconds.
    pub think_us: (u64, u64),
    /// Percent of transactions their client abandons after the first read.
    pub abandon_percent: u32,
    /// Percent of transactions run read-committed (the rest serializable).
    pub read_committed_percent: u32,
    /// The idle timeout each Begin asks for.
    pub idle_timeout_ms: u32,
    /// The participants' lock-wait timeout.
    pub lock_wait_timeout: Duration,
}

impl InteractiveMix {
    pub fn none() -> InteractiveMix {
        InteractiveMix { clients: 0, transactions: 0, ..InteractiveMix::standard(0, 0) }
    }

    pub fn standard(clients: u16, transactions: usize) -> InteractiveMix {
        InteractiveMix {
            clients,
            transactions,
            hot_accounts: 3,
            think_us: (50, 3000),
            abandon_percent: 5,
            read_committed_percent: 25,
            idle_timeout_ms: 100,
            lock_wait_timeout: Duration::from_millis(60),
        }
    }
}

/// The isolation level of a new transaction: `read_committed_percent` read-committed, a
/// third of the rest optimistic (reads validated at prepare: serialisable, so it enters the
/// history whole, like `Serializable`; see [`Conversation::history_ops`]), the others
/// serializable. One draw either way, so the rest of a seed's choices do not move.
fn choose_isolation(mix: &InteractiveMix, rng: &mut impl Rng) -> Isolation {
    let roll = rng.gen_range(0..100);
    let optimistic_below = mix.read_committed_percent + (100 - mix.read_committed_percent.min(100)) / 3;
    if roll < mix.read_committed_percent {
        Isolation::ReadCommitted
    } else if roll < optimistic_below {
        Isolation::Optimistic
    } else {
        Isolation::Serializable
    }
}

/// Where a transaction is in its script.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Stage {
    Begin,
    ReadFirst,
    ReadSecond,
    WriteFirst,
    WriteSecond,
    Commit,
    /// The funds are short: roll back.
    Rollback,
    /// The client went silent after its first read; it asks (Rollback) once its idle
    /// timeout has surely passed, and must hear that the transaction ended.
    Abandoned,
}

/// An account: participant index and account number.
pub(super) type Account = (u16, u32);

/// One interactive transaction of a client, from Begin to its end.
#[derive(Debug)]
pub(super) struct Conversation {
    pub isolation: Isolation,
    pub abandon: bool,
    /// Debited account, credited account, amount; `debit_first`: which is read and written first.
    pub from: Account,
    pub to: Account,
    pub amount: i64,
    pub debit_first: bool,
    pub stage: Stage,
    pub began_at: Time,
    pub txid: Option<TxId>,
    /// The request in flight (retried with the same seq until answered).
    pub seq: Option<Seq>,
    /// Every op answered so far, in order, and their reads (indexed into `ops`).
    pub ops: Vec<Op>,
    pub reads: Vec<Read>,
    /// The ops of the Execute in flight.
    pub executing: Vec<Op>,
}

impl Conversation {
    pub(super) fn new(config: &SimConfig, now: Time, rng: &mut impl Rng) -> Conversation {
        let mix = &config.interactive;
        let hot = mix.hot_accounts.clamp(1, config.accounts_per_participant);
        let pick =
            |rng: &mut dyn rand::RngCore| (rng.gen_range(0..config.participants), rng.gen_range(0..hot)) as Account;
        let from = pick(rng);
        let mut to = pick(rng);
        while to == from && (config.participants > 1 || hot > 1) {
            to = pick(rng);
        }
        Conversation {
            isolation: choose_isolation(mix, rng),
            abandon: rng.gen_range(0..100) < mix.abandon_percent,
            from,
            to,
            amount: rng.gen_range(1..=config.initial_balance.max(2) / 2),
            debit_first: rng.gen_bool(0.5),
            stage: Stage::Begin,
            began_at: now,
            txid: None,
            seq: None,
            ops: Vec::new(),
            reads: Vec::new(),
            executing: Vec::new(),
        }
    }

    fn first(&self) -> Account {
        if self.debit_first { self.from } else { self.to }
    }

    fn second(&self) -> Account {
        if self.debit_first { self.to } else { self.from }
    }

    fn get(account: Account) -> Op {
        Op { participant: participant_id(account.0), key: account_key(account.0, account.1), kind: OpKind::Get }
    }

    fn add(&self, account: Account) -> Op {
        let delta = if account == self.from { -self.amount } else { self.amount };
        let floor = if account == self.from { 0 } else { i64::MIN };
        Op {
            participant: participant_id(account.0),
            key: account_key(account.0, account.1),
            kind: OpKind::Add { delta, floor },
        }
    }

    /// The balance of `account` this transaction read (None: not read, or absent).
    fn balance_read(&self, account: Account) -> Option<i64> {
        let key = account_key(account.0, account.1);
        self.reads.iter().find_map(|read| {
            let op = &self.ops[read.index as usize];
            (op.key == key && op.participant == participant_id(account.0))
                .then(|| decode_int(read.value.as_deref()))
                .flatten()
        })
    }

    /// The stage after the current one has been answered.
    pub(super) fn next_stage(&self) -> Stage {
        match self.stage {
            Stage::Begin => Stage::ReadFirst,
            Stage::ReadFirst if self.abandon => Stage::Abandoned,
            Stage::ReadFirst => Stage::ReadSecond,
            Stage::ReadSecond if self.balance_read(self.from).is_none_or(|b| b < self.amount) => Stage::Rollback,
            Stage::ReadSecond => Stage::WriteFirst,
            Stage::WriteFirst => Stage::WriteSecond,
            Stage::WriteSecond => Stage::Commit,
            Stage::Commit | Stage::Rollback | Stage::Abandoned => unreachable!("a final stage has no next"),
        }
    }

    /// The ops the current stage executes (empty for stages that do not Execute).
    pub(super) fn stage_ops(&self) -> Vec<Op> {
        match self.stage {
            Stage::ReadFirst => vec![Conversation::get(self.first())],
            Stage::ReadSecond => vec![Conversation::get(self.second())],
            Stage::WriteFirst => vec![self.add(self.first())],
            Stage::WriteSecond => vec![self.add(self.second())],
            _ => Vec::new(),
        }
    }

    /// The running Execute was answered with `reads` (indexed within it).
    pub(super) fn executed(&mut self, reads: Vec<Read>) {
        let offset = u16::try_from(self.ops.len()).expect("a short script");
        self.reads.extend(reads.into_iter().map(|read| Read { index: read.index + offset, value: read.value }));
        self.ops.append(&mut self.executing);
    }

    /// The ops and reads the serializability history takes. A read-committed transaction's
    /// reads are not serialisable by design (its Gets take no lasting lock): only its writes
    /// enter (their `Add`s read under an exclusive lock held to the decision).
    pub(super) fn history_ops(&self) -> (Vec<Op>, Vec<Read>) {
        match self.isolation {
            Isolation::ReadCommitted => {
                (self.ops.iter().filter(|op| op.kind.is_write()).cloned().collect(), Vec::new())
            }
            Isolation::Serializable | Isolation::Optimistic => (self.ops.clone(), self.reads.clone()),
        }
    }
}
