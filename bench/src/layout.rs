//! The bank's layout (which account lives where and under which key) and account setup.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use bytes::Bytes;
use twophase_engine::{Op, OpKind, Outcome, ParticipantId, Seq};
use twophase_net::{ClientOptions, Pipeline};

/// Prefix of every account key.
pub const ACCOUNT_PREFIX: &[u8] = b"acct/";

/// Longest account key: the prefix and the 20 digits of `u64::MAX`.
pub const MAX_ACCOUNT_KEY_BYTES: usize = ACCOUNT_PREFIX.len() + 20;

/// Ops per setup transaction: the most a server accepts by default (`max_ops_per_tx`).
pub const SETUP_OPS_PER_TX: usize = 256;

/// Setup transactions in flight at once.
const SETUP_PIPELINE_DEPTH: usize = 64;

/// Attempts at one setup transaction that aborts for a reason a retry may cure (a prepare
/// timeout while a participant's table grows, a conflict with another client).
const SETUP_ATTEMPTS_MAX: u32 = 10;

/// Up to this many accounts, a run precomputes every key into one buffer, so that a key in
/// a transaction is a slice of it (a reference count, no allocation, no formatting).
const KEY_TABLE_MAX_ACCOUNTS: u64 = 1 << 22;

/// The bank: `accounts` accounts, account `n` on `participants[n % len]` under the key
/// `acct/<n>` (decimal), each starting at `initial_balance`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BankLayout {
    pub accounts: u64,
    pub participants: Vec<(ParticipantId, String)>,
    pub initial_balance: i64,
}

/// Refuses a bank of `accounts` accounts of `initial_balance` that no run can hold: fewer
/// than 2 accounts, a negative balance, a total beyond an i64.
pub fn check_bank_size(accounts: u64, initial_balance: i64) -> anyhow::Result<()> {
    ensure!(accounts >= 2, "the bank needs at least 2 accounts, not {accounts}");
    ensure!(initial_balance >= 0, "the initial balance must not be negative ({initial_balance})");
    ensure!(
        (accounts as i128) * (initial_balance as i128) <= i64::MAX as i128,
        "{accounts} accounts of {initial_balance} overflow the bank's total"
    );
    Ok(())
}

impl BankLayout {
    /// Checks what every user of a layout relies on.
    pub fn validate(&self) -> anyhow::Result<()> {
        ensure!(!self.participants.is_empty(), "the bank layout names no participant");
        check_bank_size(self.accounts, self.initial_balance)
    }

    /// The index into `participants` of account `n`.
    pub fn participant_index(&self, account: u64) -> usize {
        (account % self.participants.len() as u64) as usize
    }

    /// The participant holding account `n`.
    pub fn participant_of(&self, account: u64) -> ParticipantId {
        self.participants[self.participant_index(account)].0
    }

    /// The key of account `n` (one small allocation; the load loop uses a [`KeyTable`]).
    pub fn key(&self, account: u64) -> Bytes {
        let mut buf = [0u8; MAX_ACCOUNT_KEY_BYTES];
        Bytes::copy_from_slice(write_account_key(account, &mut buf))
    }

    /// The account a key names, if it is an account key in canonical form (`acct/` and
    /// decimal digits without leading zeros). Whether it is below `accounts` is not checked.
    pub fn parse_key(key: &[u8]) -> Option<u64> {
        let digits = key.strip_prefix(ACCOUNT_PREFIX)?;
        if digits.is_empty() || digits.len() > 20 || (digits.len() > 1 && digits[0] == b'0') {
            return None;
        }
        let mut n: u64 = 0;
        for &d in digits {
            if !d.is_ascii_digit() {
                return None;
            }
            n = n.checked_mul(10)?.checked_add((d - b'0') as u64)?;
        }
        Some(n)
    }
}

/// Writes `acct/<n>` into `buf` and returns the written part. No allocation.
pub fn write_account_key(account: u64, buf: &mut [u8; MAX_ACCOUNT_KEY_BYTES]) -> &[u8] {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut n = account;
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let prefix = ACCOUNT_PREFIX.len();
    let len = prefix + digits.len() - at;
    buf[..prefix].copy_from_slice(ACCOUNT_PREFIX);
    buf[prefix..len].copy_from_slice(&digits[at..]);
    &buf[..len]
}

/// Account keys for a run: precomputed into one shared buffer for banks of up to 4 Mi
/// accounts (a key is then a zero-copy slice), formatted on demand beyond that.
#[derive(Clone, Debug)]
pub struct KeyTable {
    accounts: u64,
    buf: Bytes,
    /// `ends[n]`: the end of account `n`'s key in `buf` (it starts at `ends[n - 1]`, or 0).
    ends: Vec<u32>,
}

impl KeyTable {
    pub fn new(accounts: u64) -> KeyTable {
        if accounts > KEY_TABLE_MAX_ACCOUNTS {
            return KeyTable { accounts, buf: Bytes::new(), ends: Vec::new() };
        }
        let mut buf = Vec::with_capacity(accounts as usize * 12);
        let mut ends = Vec::with_capacity(accounts as usize);
        let mut scratch = [0u8; MAX_ACCOUNT_KEY_BYTES];
        for n in 0..accounts {
            buf.extend_from_slice(write_account_key(n, &mut scratch));
            ends.push(buf.len() as u32);
        }
        KeyTable { accounts, buf: Bytes::from(buf), ends }
    }

    pub fn accounts(&self) -> u64 {
        self.accounts
    }

    /// The key of account `n` (< `accounts`).
    pub fn key(&self, account: u64) -> Bytes {
        debug_assert!(account < self.accounts);
        if self.ends.is_empty() {
            let mut scratch = [0u8; MAX_ACCOUNT_KEY_BYTES];
            return Bytes::copy_from_slice(write_account_key(account, &mut scratch));
        }
        let n = account as usize;
        let start = if n == 0 { 0 } else { self.ends[n - 1] as usize };
        self.buf.slice(start..self.ends[n] as usize)
    }
}

/// Checks that the coordinator's participant directory has every participant of the layout
/// under the same id and name.
pub fn check_directory(directory: &[(ParticipantId, String)], layout: &BankLayout) -> anyhow::Result<()> {
    for (id, name) in &layout.participants {
        match directory.iter().find(|(_, known)| known == name) {
            Some((known_id, _)) if known_id == id => {}
            Some((known_id, _)) => {
                bail!("participant '{name}' is {known_id} on the coordinator, but the bank layout says {id}")
            }
            None => bail!(
                "participant '{name}' is unknown to the coordinator, which knows: {}",
                directory.iter().map(|(id, name)| format!("{name} ({id})")).collect::<Vec<_>>().join(", ")
            ),
        }
    }
    Ok(())
}

/// Client options for the bench's connections.
pub(crate) fn client_options(cluster: &str) -> ClientOptions {
    ClientOptions { cluster: cluster.to_string(), ..ClientOptions::default() }
}

/// Gives every account `layout.initial_balance` with `Add` ops (a missing key counts as 0,
/// so on a fresh cluster this creates the accounts): [`SETUP_OPS_PER_TX`] accounts of one
/// participant per transaction (so each commits on one participant alone), up to
/// `SETUP_PIPELINE_DEPTH` transactions in flight over one connection. A transaction that
/// aborts for a retryable reason is sent again under a new seq (an abort had no effect), at
/// most `SETUP_ATTEMPTS_MAX` times; any other abort fails the setup, naming its reason.
///
/// On a cluster that already holds the accounts this adds the initial balance again; the
/// audit then needs the balances from before (see [`crate::audit_with_baseline`]).
///
/// `client` says how to connect (its cluster and security; the bench's own timeouts apply).
pub fn setup_accounts(coordinator: SocketAddr, client: &ClientOptions, layout: &BankLayout) -> anyhow::Result<()> {
    setup_accounts_where(coordinator, client, layout, |_| true)
}

/// Like [`setup_accounts`], for the accounts `wanted` names only (e.g. those a running
/// cluster does not hold yet).
pub fn setup_accounts_where(
    coordinator: SocketAddr,
    client: &ClientOptions,
    layout: &BankLayout,
    wanted: impl Fn(u64) -> bool,
) -> anyhow::Result<()> {
    layout.validate()?;
    if layout.initial_balance == 0 {
        return Ok(()); // Every account already reads as 0.
    }
    let cluster = &client.cluster;
    let options = ClientOptions { security: client.security.clone(), ..client_options(cluster) };
    let mut pipeline = Pipeline::connect(coordinator, options)
        .with_context(|| format!("connecting to the coordinator at {coordinator} (cluster '{cluster}')"))?;
    check_directory(pipeline.directory().participants(), layout)?;
    let keys = KeyTable::new(layout.accounts);
    let mut batches = SetupBatches::new(layout);
    let mut retries: Vec<SetupBatch> = Vec::new();
    let mut in_flight: Vec<(Seq, SetupBatch)> = Vec::with_capacity(SETUP_PIPELINE_DEPTH);
    let mut last_progress = Instant::now();
    let stall_limit = Duration::from_secs(60);
    loop {
        while in_flight.len() < SETUP_PIPELINE_DEPTH {
            let Some(batch) = retries.pop().or_else(|| batches.next()) else { break };
            let ops: Vec<Op> = batch
                .accounts(layout)
                .filter(|&n| wanted(n))
                .map(|n| Op {
                    participant: layout.participant_of(n),
                    key: keys.key(n),
                    kind: OpKind::Add { delta: layout.initial_balance, floor: i64::MIN },
                })
                .collect();
            if ops.is_empty() {
                continue;
            }
            let seq = pipeline.send(ops).context("sending an account-setup transaction")?;
            in_flight.push((seq, batch));
        }
        if in_flight.is_empty() {
            return Ok(());
        }
        pipeline.flush().context("sending account-setup transactions")?;
        let outcomes = pipeline.poll(Duration::from_millis(50)).context("waiting for account-setup outcomes")?;
        if !outcomes.is_empty() {
            last_progress = Instant::now();
        } else if last_progress.elapsed() > stall_limit {
            bail!("account setup made no progress for {stall_limit:?} ({} transactions outstanding)", in_flight.len());
        }
        for (seq, outcome) in outcomes {
            let Some(at) = in_flight.iter().position(|(s, _)| *s == seq) else { continue };
            let (_, mut batch) = in_flight.swap_remove(at);
            let Outcome::Aborted { reason } = outcome else { continue };
            batch.attempts += 1;
            if !reason.is_retryable() || batch.attempts >= SETUP_ATTEMPTS_MAX {
                bail!(
                    "account setup aborted for {} (attempt {}): {reason} (is another load running against this \
                     cluster?)",
                    batch.describe(layout),
                    batch.attempts
                );
            }
            retries.push(batch);
        }
    }
}

/// One setup transaction: up to [`SETUP_OPS_PER_TX`] accounts of one participant, `first`,
/// `first + P`, `first + 2P`, … (P participants).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct SetupBatch {
    first: u64,
    attempts: u32,
}

impl SetupBatch {
    fn accounts(&self, layout: &BankLayout) -> impl Iterator<Item = u64> {
        let step = layout.participants.len() as u64;
        (0..SETUP_OPS_PER_TX as u64).map(move |k| self.first + k * step).take_while(move |&n| n < layout.accounts)
    }

    fn describe(&self, layout: &BankLayout) -> String {
        let last = self.accounts(layout).last().unwrap_or(self.first);
        let step = layout.participants.len();
        format!("accounts {}, {}, …, {last} (every {step}th)", self.first, self.first + step as u64)
    }
}

/// Every account exactly once: blocks of [`SETUP_OPS_PER_TX`] × P accounts, one batch per
/// participant each.
struct SetupBatches {
    /// The next batch's first account.
    next: u64,
    accounts: u64,
    participants: u64,
}

impl SetupBatches {
    fn new(layout: &BankLayout) -> SetupBatches {
        SetupBatches { next: 0, accounts: layout.accounts, participants: layout.participants.len() as u64 }
    }
}

impl Iterator for SetupBatches {
    type Item = SetupBatch;

    fn next(&mut self) -> Option<SetupBatch> {
        if self.next >= self.accounts {
            return None;
        }
        let batch = SetupBatch { first: self.next, attempts: 0 };
        // After the last participant's batch of a block, jump to the next block.
        let block = SETUP_OPS_PER_TX as u64 * self.participants;
        self.next = if (self.next + 1).is_multiple_of(self.participants) {
            self.next + 1 + block - self.participants
        } else {
            self.next + 1
        };
        Some(batch)
    }
}

/// A bank over participants p1..pN (ids 1..N), for tests.
#[cfg(test)]
pub(crate) fn test_layout(accounts: u64, parts: usize, initial_balance: i64) -> BankLayout {
    BankLayout {
        accounts,
        participants: (1..=parts).map(|i| (ParticipantId(i as u16), format!("p{i}"))).collect(),
        initial_balance,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(accounts: u64, parts: usize) -> BankLayout {
        test_layout(accounts, parts, 1000)
    }

    #[test]
    fn keys_are_decimal_after_the_prefix() {
        let mut buf = [0u8; MAX_ACCOUNT_KEY_BYTES];
        assert_eq!(write_account_key(0, &mut buf), b"acct/0");
        assert_eq!(write_account_key(7, &mut buf), b"acct/7");
        assert_eq!(write_account_key(1234567, &mut buf), b"acct/1234567");
        assert_eq!(write_account_key(u64::MAX, &mut buf), b"acct/18446744073709551615");
        let l = layout(100, 3);
        assert_eq!(&l.key(42)[..], b"acct/42");
    }

    #[test]
    fn key_table_matches_formatting_and_parses_back() {
        let table = KeyTable::new(1001);
        let l = layout(1001, 3);
        for n in [0u64, 1, 9, 10, 99, 100, 999, 1000] {
            assert_eq!(table.key(n), l.key(n));
            assert_eq!(BankLayout::parse_key(&table.key(n)), Some(n));
        }
        assert_eq!(BankLayout::parse_key(b"acct/007"), None);
        assert_eq!(BankLayout::parse_key(b"acct/"), None);
        assert_eq!(BankLayout::parse_key(b"acct/1x"), None);
        assert_eq!(BankLayout::parse_key(b"other/1"), None);
        assert_eq!(BankLayout::parse_key(b"acct/99999999999999999999"), None);
    }

    #[test]
    fn accounts_are_spread_round_robin() {
        let l = layout(10, 3);
        assert_eq!(l.participant_of(0), ParticipantId(1));
        assert_eq!(l.participant_of(1), ParticipantId(2));
        assert_eq!(l.participant_of(2), ParticipantId(3));
        assert_eq!(l.participant_of(3), ParticipantId(1));
        assert_eq!(l.participant_index(9), 0);
    }

    #[test]
    fn directory_must_match_the_layout() {
        let l = layout(10, 2);
        let good = vec![(ParticipantId(1), "p1".to_string()), (ParticipantId(2), "p2".to_string())];
        check_directory(&good, &l).unwrap();
        let swapped = vec![(ParticipantId(2), "p1".to_string()), (ParticipantId(1), "p2".to_string())];
        assert!(check_directory(&swapped, &l).unwrap_err().to_string().contains("'p1' is p2"));
        let missing = vec![(ParticipantId(1), "p1".to_string())];
        assert!(check_directory(&missing, &l).unwrap_err().to_string().contains("'p2' is unknown"));
    }

    #[test]
    fn setup_batches_cover_every_account_once_one_participant_each() {
        for (accounts, parts) in [(2u64, 1usize), (10, 3), (2000, 3), (SETUP_OPS_PER_TX as u64 * 3 + 1, 3), (777, 4)] {
            let l = layout(accounts, parts);
            let mut seen = vec![0u32; accounts as usize];
            for batch in SetupBatches::new(&l) {
                let members: Vec<u64> = batch.accounts(&l).collect();
                assert!(!members.is_empty() && members.len() <= SETUP_OPS_PER_TX, "{batch:?}");
                let home = l.participant_index(batch.first);
                assert!(members.iter().all(|&n| l.participant_index(n) == home), "{batch:?} spans participants");
                for n in members {
                    seen[n as usize] += 1;
                }
            }
            assert!(seen.iter().all(|&times| times == 1), "{accounts} accounts over {parts}: {seen:?}");
        }
    }

    #[test]
    fn layouts_are_validated() {
        assert!(layout(1, 2).validate().is_err());
        assert!(layout(10, 0).validate().is_err());
        assert!(BankLayout { initial_balance: i64::MAX, ..layout(10, 2) }.validate().is_err());
        layout(10, 2).validate().unwrap();
    }
}
