//! The bank audit: every account's balance must be exactly its initial balance plus the
//! effect of the acknowledged commits that touched it.

use serde::Serialize;

use crate::layout::BankLayout;
use crate::load::LoadResult;

/// Mismatches quoted by name in an audit.
pub const AUDIT_EXAMPLES: usize = 5;

/// The audit's verdict.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Audit {
    pub passed: bool,
    /// Sum of every account's expected balance.
    pub total_expected: i64,
    /// Sum of every account's balance as found.
    pub total_found: i64,
    /// Accounts whose balance is not the expected one (or is negative, or unreadable).
    pub mismatched_accounts: u64,
    /// The first few problems, each naming the account, its participant and the numbers.
    pub examples: Vec<String>,
    /// One paragraph: the verdict and what it means.
    pub detail: String,
}

/// Every account's balance as read from the participants' dumps, filled one entry at a
/// time as the dumps stream in: 9 bytes per account (balance, presence) whatever the size of
/// the states, and at most [`AUDIT_EXAMPLES`] problems quoted (all counted).
#[derive(Clone, Debug)]
pub struct Balances {
    layout: BankLayout,
    /// Per participant of the layout: whether its state was read.
    read: Vec<bool>,
    found: Vec<i64>,
    present: Vec<bool>,
    problems: Vec<String>,
    problem_count: u64,
}

impl Balances {
    /// No participant read yet: every account reads as 0 and absent.
    pub fn new(layout: &BankLayout) -> Balances {
        let accounts = usize::try_from(layout.accounts).expect("the accounts fit in memory");
        Balances {
            layout: layout.clone(),
            read: vec![false; layout.participants.len()],
            found: vec![0; accounts],
            present: vec![false; accounts],
            problems: Vec::new(),
            problem_count: 0,
        }
    }

    /// From whole states in memory (participant name, every key and value): small clusters
    /// and tests.
    pub fn from_states<'a>(
        layout: &BankLayout,
        states: impl IntoIterator<Item = (&'a str, &'a [(bytes::Bytes, bytes::Bytes)])>,
    ) -> Balances {
        let mut balances = Balances::new(layout);
        for (name, entries) in states {
            balances.mark_read(name);
            for (key, value) in entries {
                balances.take(name, key, value);
            }
        }
        balances
    }

    /// Records that participant `name`'s whole state is being (or was) read.
    pub fn mark_read(&mut self, name: &str) {
        if let Some(at) = self.layout.participants.iter().position(|(_, known)| known == name) {
            self.read[at] = true;
        }
    }

    /// Takes one entry of participant `from`'s state; keys that are not account keys are
    /// ignored, misplaced, unknown and unreadable account keys are problems.
    pub fn take(&mut self, from: &str, key: &[u8], value: &[u8]) {
        let Some(account) = BankLayout::parse_key(key) else { return };
        let layout = &self.layout;
        if account >= layout.accounts {
            let problem = format!(
                "acct/{account} on {from}: beyond the bank's {} accounts (left over from another run?)",
                layout.accounts
            );
            return self.problem(problem);
        }
        let home = layout.participant_index(account);
        if layout.participants[home].1 != from {
            let problem = format!("acct/{account} found on {from}, but it belongs on {}", layout.participants[home].1);
            return self.problem(problem);
        }
        match <[u8; 8]>::try_from(value) {
            Ok(bytes) => {
                self.found[account as usize] = i64::from_le_bytes(bytes);
                self.present[account as usize] = true;
            }
            Err(_) => self
                .problem(format!("acct/{account} on {from}: value of {} bytes is not an 8-byte integer", value.len())),
        }
    }

    /// Whether some participant holds `account`.
    pub fn is_present(&self, account: u64) -> bool {
        self.present.get(account as usize).copied().unwrap_or(false)
    }

    /// Problems so far, including a participant of the layout that was not read.
    fn problems(&self) -> (u64, Vec<String>) {
        let mut count = self.problem_count;
        let mut examples = self.problems.clone();
        for ((_, name), read) in self.layout.participants.iter().zip(&self.read) {
            if !read {
                count += 1;
                if examples.len() < AUDIT_EXAMPLES {
                    examples.push(format!("no state was read from participant {name}"));
                }
            }
        }
        (count, examples)
    }

    fn problem(&mut self, problem: String) {
        self.problem_count += 1;
        if self.problems.len() < AUDIT_EXAMPLES {
            self.problems.push(problem);
        }
    }
}

/// Audits the bank after a run on a cluster whose accounts were created by
/// [`crate::setup_accounts`] (each at `initial_balance`) right before it: passes iff every
/// account's balance equals `initial_balance` plus its expected delta and none is negative.
/// That covers conservation (the deltas sum to zero), durability (every acknowledged commit
/// applied on every participant it touched) and atomicity (nothing half applied).
///
/// `found` holds the balances read from every participant once the run settled.
pub fn audit(layout: &BankLayout, result: &LoadResult, found: &Balances) -> Audit {
    let baseline = vec![layout.initial_balance; usize::try_from(layout.accounts).unwrap_or(0)];
    audit_balances(layout, &baseline, &result.expected_deltas, found)
}

/// Like [`audit`], with the balances as they were right before the run (`before`) instead
/// of `initial_balance`: for a cluster that already held accounts.
pub fn audit_with_baseline(layout: &BankLayout, result: &LoadResult, before: &Balances, after: &Balances) -> Audit {
    let (count, examples) = before.problems();
    if count > 0 {
        return Audit {
            passed: false,
            total_expected: 0,
            total_found: 0,
            mismatched_accounts: 0,
            examples,
            detail: "the balances before the run could not be read".to_string(),
        };
    }
    audit_balances(layout, &before.found, &result.expected_deltas, after)
}

fn audit_balances(layout: &BankLayout, baseline: &[i64], deltas: &[i64], balances: &Balances) -> Audit {
    let mut problems = Vec::new();
    if deltas.len() as u64 != layout.accounts
        || baseline.len() as u64 != layout.accounts
        || balances.found.len() as u64 != layout.accounts
    {
        problems.push(format!(
            "the run tracked {} accounts, the layout has {}: this result is not from this bank",
            deltas.len(),
            layout.accounts
        ));
        return Audit {
            passed: false,
            total_expected: 0,
            total_found: 0,
            mismatched_accounts: 0,
            examples: problems,
            detail: "audit impossible: layout and result disagree".to_string(),
        };
    }
    let found = &balances.found;
    let (placement_problems, problems) = balances.problems();
    let mut total_expected: i128 = 0;
    let mut total_found: i128 = 0;
    let mut delta_sum: i128 = 0;
    let mut mismatched = 0u64;
    let mut negative = 0u64;
    let mut examples: Vec<String> = problems.iter().take(AUDIT_EXAMPLES).cloned().collect();
    for account in 0..layout.accounts as usize {
        let expected = baseline[account] as i128 + deltas[account] as i128;
        let got = found[account] as i128;
        total_expected += expected;
        total_found += got;
        delta_sum += deltas[account] as i128;
        let wrong = got != expected;
        if got < 0 {
            negative += 1;
        }
        if wrong || got < 0 {
            mismatched += 1;
            if examples.len() < AUDIT_EXAMPLES {
                let home = &layout.participants[layout.participant_index(account as u64)].1;
                let sign = if deltas[account] >= 0 { "+" } else { "" };
                let mut line = format!(
                    "acct/{account} on {home}: expected {expected} (start {} {sign}{} from acknowledged commits), found {got}",
                    baseline[account], deltas[account]
                );
                if wrong {
                    line.push_str(&format!(" (off by {})", got - expected));
                }
                if got < 0 {
                    line.push_str(" — negative balance");
                }
                examples.push(line);
            }
        }
    }
    let clamp = |v: i128| v.clamp(i64::MIN as i128, i64::MAX as i128) as i64;
    let conserved = total_found == total_expected && delta_sum == 0;
    let passed = placement_problems == 0 && mismatched == 0 && conserved;
    let detail = if passed {
        format!(
            "PASSED: all {} accounts hold exactly their starting balance plus the effect of every acknowledged \
             commit; total {} conserved; no negative balance",
            layout.accounts, total_found
        )
    } else {
        let mut parts = Vec::new();
        if mismatched > 0 {
            parts.push(format!("{mismatched} of {} accounts do not hold their expected balance", layout.accounts));
        }
        if negative > 0 {
            parts.push(format!("{negative} accounts are negative"));
        }
        if total_found != total_expected {
            parts.push(format!(
                "the total is {total_found}, expected {total_expected} ({:+})",
                total_found - total_expected
            ));
        }
        if delta_sum != 0 {
            parts.push(format!("the acknowledged transfers do not sum to zero ({delta_sum:+}): a bench bug"));
        }
        if placement_problems > 0 {
            parts.push(format!("{placement_problems} account keys are misplaced, unknown or unreadable"));
        }
        format!("FAILED: {}", parts.join("; "))
    };
    Audit {
        passed,
        total_expected: clamp(total_expected),
        total_found: clamp(total_found),
        mismatched_accounts: mismatched,
        examples,
        detail,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use bytes::Bytes;

    use twophase_engine::ParticipantId;

    use super::*;
    use crate::load::{LoadOptions, LoadResult, TimelinePoint};

    pub(crate) fn layout() -> BankLayout {
        BankLayout {
            accounts: 10,
            participants: vec![(ParticipantId(1), "p1".into()), (ParticipantId(2), "p2".into())],
            initial_balance: 100,
        }
    }

    pub(crate) fn result(layout: &BankLayout, deltas: Vec<i64>) -> LoadResult {
        let options = LoadOptions::new("127.0.0.1:7300".parse().unwrap(), "local", layout.clone());
        let mut latency = hdrhistogram::Histogram::new_with_bounds(1, crate::load::MAX_LATENCY_US, 3).unwrap();
        for us in [100u64, 200, 300, 400, 500, 1000, 2000, 5000, 10_000, 50_000] {
            latency.record(us).unwrap();
        }
        let timeline = (0..3)
            .map(|second| TimelinePoint {
                second,
                span_s: 1.0,
                tx_per_s: 1000.0 + second as f64,
                commits: 1000 + second,
                aborts: 5,
                p50_us: 400,
                p99_us: 9000,
                rss_bytes: vec![Some((50 + second) << 20), None],
            })
            .collect();
        LoadResult {
            committed: 3003,
            committed_read_only: 0,
            aborted: 15,
            aborts_by_reason: BTreeMap::from([("conflict".to_string(), 10), ("constraint".to_string(), 5)]),
            latency_us: latency,
            timeline,
            rss_processes: vec!["coordinator".into(), "p1".into()],
            expected_deltas: deltas,
            elapsed: Duration::from_secs(3),
            drain: Duration::from_millis(3),
            unsent_backlog: 0,
            settings: options.settings(),
            interactive: None,
            deadlocks: None,
        }
    }

    /// The participants' states for the given balances (None: key absent).
    pub(crate) fn states(layout: &BankLayout, balances: &[Option<i64>]) -> Vec<(String, Vec<(Bytes, Bytes)>)> {
        let mut states: Vec<(String, Vec<(Bytes, Bytes)>)> =
            layout.participants.iter().map(|(_, name)| (name.clone(), Vec::new())).collect();
        for (account, balance) in balances.iter().enumerate() {
            if let Some(balance) = balance {
                let at = layout.participant_index(account as u64);
                states[at].1.push((layout.key(account as u64), Bytes::copy_from_slice(&balance.to_le_bytes())));
            }
        }
        states[0].1.push((Bytes::from_static(b"other"), Bytes::from_static(b"x")));
        states
    }

    /// The balances the audit reads from `states`.
    pub(crate) fn found(layout: &BankLayout, states: &[(String, Vec<(Bytes, Bytes)>)]) -> Balances {
        Balances::from_states(layout, states.iter().map(|(name, entries)| (name.as_str(), &entries[..])))
    }

    fn deltas() -> Vec<i64> {
        vec![-30, 30, 5, -5, 0, 0, 100, -100, 7, -7]
    }

    fn consistent(layout: &BankLayout) -> Vec<Option<i64>> {
        deltas().iter().map(|d| Some(layout.initial_balance + d)).collect()
    }

    #[test]
    fn passes_on_a_consistent_state() {
        let l = layout();
        let a = audit(&l, &result(&l, deltas()), &found(&l, &states(&l, &consistent(&l))));
        assert!(a.passed, "{a:?}");
        assert_eq!(a.total_expected, 1000);
        assert_eq!(a.total_found, 1000);
        assert_eq!(a.mismatched_accounts, 0);
        assert!(a.examples.is_empty());
        assert!(a.detail.starts_with("PASSED"));
    }

    #[test]
    fn one_account_off_is_named_precisely() {
        let l = layout();
        let mut balances = consistent(&l);
        // A commit applied on the debit side only: acct/6 lost nothing, but acct/7 got 100
        // less... i.e. a half-applied transfer. Here: acct/3 is 10 short and acct/2 10 over.
        balances[3] = Some(l.initial_balance - 5 - 10);
        balances[2] = Some(l.initial_balance + 5 + 10);
        let a = audit(&l, &result(&l, deltas()), &found(&l, &states(&l, &balances)));
        assert!(!a.passed);
        assert_eq!(a.mismatched_accounts, 2);
        assert_eq!(a.total_found, a.total_expected, "conserved, yet wrong");
        assert_eq!(
            a.examples[0],
            "acct/2 on p1: expected 105 (start 100 +5 from acknowledged commits), found 115 (off by 10)"
        );
        assert_eq!(
            a.examples[1],
            "acct/3 on p2: expected 95 (start 100 -5 from acknowledged commits), found 85 (off by -10)"
        );
        assert!(a.detail.contains("2 of 10 accounts"), "{}", a.detail);
    }

    #[test]
    fn a_wrong_total_fails() {
        let l = layout();
        let mut balances = consistent(&l);
        balances[9] = None; // A lost account: reads as 0.
        let a = audit(&l, &result(&l, deltas()), &found(&l, &states(&l, &balances)));
        assert!(!a.passed);
        assert_eq!(a.total_expected, 1000);
        assert_eq!(a.total_found, 1000 - 93);
        assert!(a.detail.contains("the total is 907, expected 1000 (-93)"), "{}", a.detail);
        assert!(a.examples[0].starts_with("acct/9 on p2: expected 93"), "{:?}", a.examples);
    }

    #[test]
    fn negative_balances_fail_even_when_expected() {
        let l = layout();
        let mut d = deltas();
        d[0] = -200;
        d[1] = 200;
        let balances: Vec<Option<i64>> = d.iter().map(|d| Some(l.initial_balance + d)).collect();
        let a = audit(&l, &result(&l, d), &found(&l, &states(&l, &balances)));
        assert!(!a.passed);
        assert!(a.examples[0].contains("negative"), "{:?}", a.examples);
    }

    #[test]
    fn misplaced_and_missing_states_fail() {
        let l = layout();
        let mut s = states(&l, &consistent(&l));
        let moved = s[1].1.pop().unwrap();
        s[0].1.push(moved);
        let a = audit(&l, &result(&l, deltas()), &found(&l, &s));
        assert!(!a.passed);
        assert!(a.examples.iter().any(|e| e.contains("found on p1, but it belongs on p2")), "{:?}", a.examples);
        let a = audit(&l, &result(&l, deltas()), &found(&l, &s[..1]));
        assert!(a.examples.iter().any(|e| e.contains("no state was read from participant p2")), "{:?}", a.examples);
    }

    #[test]
    fn problems_are_all_counted_but_only_a_few_quoted() {
        let l = layout();
        let mut s = states(&l, &consistent(&l));
        // Every account of p2 also shows up on p1, where it does not belong.
        let strays: Vec<_> = s[1].1.clone();
        s[0].1.extend(strays);
        let a = audit(&l, &result(&l, deltas()), &found(&l, &s));
        assert!(!a.passed);
        assert_eq!(a.examples.len(), AUDIT_EXAMPLES, "{:?}", a.examples);
        assert!(a.detail.contains("5 account keys are misplaced"), "{}", a.detail);
        let mut balances = found(&l, &states(&l, &consistent(&l)));
        for n in 0..1000u64 {
            balances.take("p1", format!("acct/{}", 1000 + n).as_bytes(), &[0; 8]);
        }
        let a = audit(&l, &result(&l, deltas()), &balances);
        assert_eq!(a.examples.len(), AUDIT_EXAMPLES);
        assert!(a.detail.contains("1000 account keys are misplaced"), "{}", a.detail);
        assert!(balances.is_present(9) && !balances.is_present(10));
    }

    #[test]
    fn baseline_audit_uses_the_balances_before() {
        let l = layout();
        let before: Vec<Option<i64>> = (0..10).map(|n| Some(500 + n)).collect();
        let after: Vec<Option<i64>> = before.iter().zip(deltas()).map(|(b, d)| Some(b.unwrap() + d)).collect();
        let a = audit_with_baseline(
            &l,
            &result(&l, deltas()),
            &found(&l, &states(&l, &before)),
            &found(&l, &states(&l, &after)),
        );
        assert!(a.passed, "{a:?}");
        assert!(!audit(&l, &result(&l, deltas()), &found(&l, &states(&l, &after))).passed);
    }
}
