//! The bank audit: every account's balance must be exactly its initial balance plus the
//! effect of the acknowledged commits that touched it.

use bytes::Bytes;
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

/// Audits the bank after a run on a cluster whose accounts were created by
/// [`crate::setup_accounts`] (each at `initial_balance`) right before it: passes iff every
/// account's balance equals `initial_balance` plus its expected delta and none is negative.
/// That covers conservation (the deltas sum to zero), durability (every acknowledged commit
/// applied on every participant it touched) and atomicity (nothing half applied).
///
/// `states` holds, per participant name, every key and value it holds; keys that are not
/// account keys are ignored.
pub fn audit(layout: &BankLayout, result: &LoadResult, states: &[(String, Vec<(Bytes, Bytes)>)]) -> Audit {
    let baseline = vec![layout.initial_balance; usize::try_from(layout.accounts).unwrap_or(0)];
    audit_balances(layout, &baseline, &result.expected_deltas, states)
}

/// Like [`audit`], with the balances as they were right before the run (read from `before`,
/// the participants' states then) instead of `initial_balance`: for a cluster that already
/// held accounts.
pub fn audit_with_baseline(
    layout: &BankLayout,
    result: &LoadResult,
    before: &[(String, Vec<(Bytes, Bytes)>)],
    after: &[(String, Vec<(Bytes, Bytes)>)],
) -> Audit {
    let mut problems = Vec::new();
    let baseline = read_balances(layout, before, &mut problems);
    if !problems.is_empty() {
        return Audit {
            passed: false,
            total_expected: 0,
            total_found: 0,
            mismatched_accounts: 0,
            examples: problems.into_iter().take(AUDIT_EXAMPLES).collect(),
            detail: "the balances before the run could not be read".to_string(),
        };
    }
    audit_balances(layout, &baseline, &result.expected_deltas, after)
}

/// Balances of every account as found in `states` (0 when absent); problems (misplaced,
/// unreadable or unknown account keys, missing participants) go to `problems`.
fn read_balances(
    layout: &BankLayout,
    states: &[(String, Vec<(Bytes, Bytes)>)],
    problems: &mut Vec<String>,
) -> Vec<i64> {
    let mut found = vec![0i64; usize::try_from(layout.accounts).unwrap_or(0)];
    for (_, name) in &layout.participants {
        if !states.iter().any(|(state_name, _)| state_name == name) {
            problems.push(format!("no state was read from participant {name}"));
        }
    }
    for (name, kvs) in states {
        let here = layout.participants.iter().position(|(_, known)| known == name);
        for (key, value) in kvs {
            let Some(account) = BankLayout::parse_key(key) else { continue };
            if account >= layout.accounts {
                problems.push(format!(
                    "acct/{account} on {name}: beyond the bank's {} accounts (left over from another run?)",
                    layout.accounts
                ));
                continue;
            }
            let home = &layout.participants[layout.participant_index(account)].1;
            if here != Some(layout.participant_index(account)) {
                problems.push(format!("acct/{account} found on {name}, but it belongs on {home}"));
                continue;
            }
            match <[u8; 8]>::try_from(&value[..]) {
                Ok(bytes) => found[account as usize] = i64::from_le_bytes(bytes),
                Err(_) => problems
                    .push(format!("acct/{account} on {name}: value of {} bytes is not an 8-byte integer", value.len())),
            }
        }
    }
    found
}

fn audit_balances(
    layout: &BankLayout,
    baseline: &[i64],
    deltas: &[i64],
    states: &[(String, Vec<(Bytes, Bytes)>)],
) -> Audit {
    let mut problems = Vec::new();
    if deltas.len() as u64 != layout.accounts || baseline.len() as u64 != layout.accounts {
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
    let found = read_balances(layout, states, &mut problems);
    let placement_problems = problems.len();
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

    fn deltas() -> Vec<i64> {
        vec![-30, 30, 5, -5, 0, 0, 100, -100, 7, -7]
    }

    fn consistent(layout: &BankLayout) -> Vec<Option<i64>> {
        deltas().iter().map(|d| Some(layout.initial_balance + d)).collect()
    }

    #[test]
    fn passes_on_a_consistent_state() {
        let l = layout();
        let a = audit(&l, &result(&l, deltas()), &states(&l, &consistent(&l)));
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
        let a = audit(&l, &result(&l, deltas()), &states(&l, &balances));
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
        let a = audit(&l, &result(&l, deltas()), &states(&l, &balances));
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
        let a = audit(&l, &result(&l, d), &states(&l, &balances));
        assert!(!a.passed);
        assert!(a.examples[0].contains("negative"), "{:?}", a.examples);
    }

    #[test]
    fn misplaced_and_missing_states_fail() {
        let l = layout();
        let mut s = states(&l, &consistent(&l));
        let moved = s[1].1.pop().unwrap();
        s[0].1.push(moved);
        let a = audit(&l, &result(&l, deltas()), &s);
        assert!(!a.passed);
        assert!(a.examples.iter().any(|e| e.contains("found on p1, but it belongs on p2")), "{:?}", a.examples);
        let a = audit(&l, &result(&l, deltas()), &s[..1]);
        assert!(a.examples.iter().any(|e| e.contains("no state was read from participant p2")), "{:?}", a.examples);
    }

    #[test]
    fn baseline_audit_uses_the_balances_before() {
        let l = layout();
        let before: Vec<Option<i64>> = (0..10).map(|n| Some(500 + n)).collect();
        let after: Vec<Option<i64>> = before.iter().zip(deltas()).map(|(b, d)| Some(b.unwrap() + d)).collect();
        let a = audit_with_baseline(&l, &result(&l, deltas()), &states(&l, &before), &states(&l, &after));
        assert!(a.passed, "{a:?}");
        assert!(!audit(&l, &result(&l, deltas()), &states(&l, &after)).passed);
    }
}
