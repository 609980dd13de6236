//! The bank workload: transfers between two accounts and read-only audits.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Zipf};
use twophase_engine::message::SagaStep;
use twophase_engine::{Op, OpKind};

use crate::layout::{BankLayout, KeyTable};

/// Accounts read by one read-only audit transaction.
pub const AUDIT_READS: usize = 4;

/// Tries to draw a second account with the wanted placement before falling back to a
/// computed one (only reached under extreme skew).
const PLACEMENT_TRIES: usize = 32;

/// One transaction of the workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tx {
    /// Move `amount` from `from` (never below 0) to `to`.
    Transfer { from: u64, to: u64, amount: i64 },
    /// Read a few accounts.
    Audit { accounts: [u64; AUDIT_READS] },
}

/// Knobs of the workload.
#[derive(Clone, Debug)]
pub struct WorkloadSpec {
    pub skew: Option<f64>,
    pub cross_share: f64,
    pub read_only_share: f64,
    pub max_amount: i64,
    /// Draw every account from the first `hot` accounts (uniformly; spread round-robin
    /// over the participants like all accounts), to make transfers contend.
    pub hot: Option<u64>,
}

impl WorkloadSpec {
    /// Refuses a spec no bank of `accounts` accounts can run; returns the zipfian account
    /// choice when the spec is skewed (`None`: uniform, or `--hot`).
    pub fn validate(&self, accounts: u64) -> anyhow::Result<Option<Zipf<f64>>> {
        anyhow::ensure!(
            self.max_amount >= 1,
            "the largest transfer amount must be at least 1, not {}",
            self.max_amount
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.cross_share),
            "the cross-participant share must be within 0..=1, not {}",
            self.cross_share
        );
        anyhow::ensure!(
            (0.0..=1.0).contains(&self.read_only_share),
            "the read-only share must be within 0..=1, not {}",
            self.read_only_share
        );
        if let Some(hot) = self.hot {
            anyhow::ensure!(
                (2..=accounts).contains(&hot),
                "--hot must be between 2 and the number of accounts ({accounts}), not {hot}"
            );
            anyhow::ensure!(self.skew.is_none(), "--hot and --skew are two ways to choose accounts: give one");
        }
        match self.skew {
            Some(exponent) if exponent.is_finite() && exponent > 0.0 => Zipf::new(accounts, exponent)
                .map(Some)
                .map_err(|err| anyhow::anyhow!("zipfian exponent {exponent}: {err}")),
            Some(exponent) => anyhow::bail!("the zipfian exponent must be a positive number, not {exponent}"),
            None => Ok(None),
        }
    }
}

/// Draws transactions; one per load thread, each with its own seed.
pub struct Workload {
    layout: BankLayout,
    keys: KeyTable,
    spec: WorkloadSpec,
    zipf: Option<Zipf<f64>>,
    rng: ChaCha8Rng,
}

impl Workload {
    pub fn new(layout: &BankLayout, keys: KeyTable, spec: WorkloadSpec, seed: u64) -> anyhow::Result<Workload> {
        layout.validate()?;
        let zipf = spec.validate(layout.accounts)?;
        // A table of its own: keys are slices of one buffer, and every slice taken or dropped
        // touches that buffer's reference count; shared by all load threads, that one cache
        // line would bounce between cores on every transaction.
        let keys = KeyTable::new(keys.accounts());
        Ok(Workload { layout: layout.clone(), keys, spec, zipf, rng: ChaCha8Rng::seed_from_u64(seed) })
    }

    fn account(&mut self) -> u64 {
        if let Some(hot) = self.spec.hot {
            return self.rng.gen_range(0..hot);
        }
        match &self.zipf {
            // Rank 1 is account 0, so the hottest accounts are spread over every participant.
            // Ranks are 1..=accounts as whole-valued floats.
            Some(zipf) => (zipf.sample(&mut self.rng) as u64).clamp(1, self.layout.accounts) - 1,
            None => self.rng.gen_range(0..self.layout.accounts),
        }
    }

    /// The next transaction.
    pub fn next_tx(&mut self) -> Tx {
        if self.spec.read_only_share > 0.0 && self.rng.r#gen::<f64>() < self.spec.read_only_share {
            let mut accounts = [0u64; AUDIT_READS];
            for slot in &mut accounts {
                *slot = self.account();
            }
            return Tx::Audit { accounts };
        }
        let from = self.account();
        let parts = self.layout.participants.len() as u64;
        let cross = parts > 1 && self.spec.cross_share > 0.0 && self.rng.r#gen::<f64>() < self.spec.cross_share;
        let wanted = |to: u64| to != from && ((to % parts != from % parts) == cross);
        let mut to = None;
        for _ in 0..PLACEMENT_TRIES {
            let candidate = self.account();
            if wanted(candidate) {
                to = Some(candidate);
                break;
            }
        }
        let to = to.unwrap_or_else(|| self.fallback_partner(from, cross));
        let amount = self.rng.gen_range(1..=self.spec.max_amount);
        Tx::Transfer { from, to, amount }
    }

    /// A partner for `from` with the wanted placement, found by stepping through accounts.
    fn fallback_partner(&mut self, from: u64, cross: bool) -> u64 {
        let n = self.layout.accounts;
        let parts = self.layout.participants.len() as u64;
        let start = self.rng.gen_range(0..n);
        for i in 0..n.min(4 * parts + 4) {
            let to = (start + i) % n;
            if to != from && ((to % parts != from % parts) == cross) {
                return to;
            }
        }
        // Every other account is placed the other way (tiny banks): any other account.
        (from + 1) % n
    }

    /// The operations of `tx`.
    pub fn ops(&self, tx: &Tx) -> Vec<Op> {
        match *tx {
            Tx::Transfer { from, to, amount } => vec![
                Op {
                    participant: self.layout.participant_of(from),
                    key: self.keys.key(from),
                    kind: OpKind::Add { delta: -amount, floor: 0 },
                },
                Op {
                    participant: self.layout.participant_of(to),
                    key: self.keys.key(to),
                    kind: OpKind::Add { delta: amount, floor: i64::MIN },
                },
            ],
            Tx::Audit { accounts } => accounts
                .iter()
                .map(|&n| Op { participant: self.layout.participant_of(n), key: self.keys.key(n), kind: OpKind::Get })
                .collect(),
        }
    }

    /// A transfer as a saga: the debit (never below 0) with a compensating credit, then the
    /// credit, which needs no compensation (it is the last step). A transfer within one
    /// participant is one step, as atomic there as a one-shot transaction. An overdraft
    /// fails the first step, so nothing is compensated; the saga answers `Committed` only
    /// when both steps applied, so the audit's expected balances follow the outcomes.
    ///
    /// Panics on a read-only audit: sagas carry no reads (the load refuses
    /// `read_only_share > 0` with sagas).
    pub fn saga_steps(&self, tx: &Tx) -> Vec<SagaStep> {
        let Tx::Transfer { from, amount, .. } = *tx else {
            panic!("a saga workload draws transfers only, not {tx:?}");
        };
        let [debit, credit] = <[Op; 2]>::try_from(self.ops(tx)).expect("a transfer is two ops");
        if debit.participant == credit.participant {
            return vec![SagaStep { action: vec![debit, credit], compensation: Vec::new() }];
        }
        let refund = Op {
            participant: debit.participant,
            key: self.keys.key(from),
            kind: OpKind::Add { delta: amount, floor: i64::MIN },
        };
        vec![
            SagaStep { action: vec![debit], compensation: vec![refund] },
            SagaStep { action: vec![credit], compensation: Vec::new() },
        ]
    }
}

#[cfg(test)]
mod tests {
    use twophase_engine::ParticipantId;

    use super::*;

    fn layout(accounts: u64, parts: usize) -> BankLayout {
        crate::layout::test_layout(accounts, parts, 100)
    }

    fn spec(skew: Option<f64>, cross_share: f64, read_only_share: f64) -> WorkloadSpec {
        WorkloadSpec { skew, cross_share, read_only_share, max_amount: 10, hot: None }
    }

    #[test]
    fn hot_transfers_stay_within_the_hot_accounts_in_both_orders() {
        let l = layout(1000, 3);
        let hot_spec = WorkloadSpec { hot: Some(10), ..spec(None, 1.0, 0.0) };
        let mut w = Workload::new(&l, KeyTable::new(1000), hot_spec, 4).unwrap();
        let mut pairs = std::collections::HashSet::new();
        for _ in 0..5000 {
            let Tx::Transfer { from, to, .. } = w.next_tx() else { panic!("no audits asked for") };
            assert!(from < 10 && to < 10, "{from} -> {to}");
            assert_ne!(from % 3, to % 3, "on different participants");
            pairs.insert((from, to));
        }
        assert!(pairs.contains(&(0, 1)) && pairs.contains(&(1, 0)), "opposite orders are both drawn");
        for bad in [0, 1, 1001] {
            let bad_spec = WorkloadSpec { hot: Some(bad), ..spec(None, 1.0, 0.0) };
            let err = Workload::new(&l, KeyTable::new(1000), bad_spec, 4).err().unwrap();
            assert!(err.to_string().contains("--hot"), "{err}");
        }
    }

    #[test]
    fn transfers_respect_placement_and_amounts() {
        for skew in [None, Some(0.99), Some(3.0)] {
            for (cross_share, want_cross) in [(1.0, true), (0.0, false)] {
                let l = layout(1000, 3);
                let mut w = Workload::new(&l, KeyTable::new(1000), spec(skew, cross_share, 0.0), 1).unwrap();
                for _ in 0..5000 {
                    let Tx::Transfer { from, to, amount } = w.next_tx() else { panic!("no audits asked for") };
                    assert_ne!(from, to);
                    assert!(from < 1000 && to < 1000);
                    assert!((1..=10).contains(&amount));
                    assert_eq!(from % 3 != to % 3, want_cross, "{from} -> {to}, skew {skew:?}");
                }
            }
        }
    }

    #[test]
    fn transfer_ops_debit_with_floor_and_credit() {
        let l = layout(10, 2);
        let w = Workload::new(&l, KeyTable::new(10), spec(None, 1.0, 0.0), 1).unwrap();
        let ops = w.ops(&Tx::Transfer { from: 3, to: 4, amount: 7 });
        assert_eq!(ops[0].participant, ParticipantId(2));
        assert_eq!(&ops[0].key[..], b"acct/3");
        assert_eq!(ops[0].kind, OpKind::Add { delta: -7, floor: 0 });
        assert_eq!(ops[1].participant, ParticipantId(1));
        assert_eq!(ops[1].kind, OpKind::Add { delta: 7, floor: i64::MIN });
    }

    #[test]
    fn skew_concentrates_on_the_first_accounts_and_bad_exponents_are_refused() {
        let l = layout(1000, 2);
        let mut w = Workload::new(&l, KeyTable::new(1000), spec(Some(1.2), 1.0, 0.0), 5).unwrap();
        let mut hits = vec![0u32; 1000];
        for _ in 0..20_000 {
            hits[w.account() as usize] += 1;
        }
        assert!(hits[0] > 20 * hits[500].max(1), "rank 1 drawn {} times, rank 501 {} times", hits[0], hits[500]);
        assert!(hits[0] > hits[1] && hits[1] > hits[9], "{:?}", &hits[..10]);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let err = Workload::new(&l, KeyTable::new(1000), spec(Some(bad), 1.0, 0.0), 5).err().unwrap();
            assert!(err.to_string().contains("zipfian exponent"), "{err}");
        }
    }

    #[test]
    fn read_only_share_is_honoured() {
        let l = layout(100, 2);
        let mut w = Workload::new(&l, KeyTable::new(100), spec(None, 1.0, 0.25), 9).unwrap();
        let audits = (0..20_000).filter(|_| matches!(w.next_tx(), Tx::Audit { .. })).count();
        assert!((4500..5500).contains(&audits), "{audits} audits of 20000");
        let ops = w.ops(&Tx::Audit { accounts: [1, 2, 3, 4] });
        assert!(ops.iter().all(|op| op.kind == OpKind::Get));
    }

    #[test]
    fn single_participant_banks_only_transfer_locally() {
        let l = layout(2, 1);
        let mut w = Workload::new(&l, KeyTable::new(2), spec(Some(2.0), 1.0, 0.0), 3).unwrap();
        for _ in 0..100 {
            let Tx::Transfer { from, to, .. } = w.next_tx() else { panic!() };
            assert_ne!(from, to);
        }
    }
}
