//! twophase-bench: the load generator (bank workload), its audit and reports, and the
//! criterion benchmarks (in `benches/`).
//!
//! The bank: `accounts` accounts spread round-robin over the participants, account `n` under
//! `acct/<n>`. [`setup_accounts`] gives each its initial balance; [`run_load`] runs transfers
//! (debit with a floor of 0, credit) and optional read-only audits, closed loop or open loop
//! at a fixed rate, and tracks the balance change every acknowledged commit implies;
//! [`audit`] checks the participants' final balances ([`Balances`], filled entry by entry
//! as their dumps stream in) against that; [`Report`] prints a
//! summary and writes `report.json` and a self-contained `report.html`. [`sql_audit`] reads a
//! database participant's `accounts` table into the same [`Balances`] and checks its sums and
//! that nothing is left prepared there. [`scrape`] reads a
//! node's metrics endpoint (for `twophase top` and tests).
//!
//! Invariants:
//! - Expected balances come from acknowledged commits only, and a run ends only once every
//!   transaction it sent has an outcome (the client retries under the same `(client, seq)`,
//!   so nothing is executed twice); otherwise the run fails.
//! - Open loop measures latency from the intended send time: a cluster that falls behind
//!   shows it as latency (and, past the end, as a counted backlog), never as skipped sends.
//! - Memory is bounded whatever the duration and the state's size: fixed-size histograms,
//!   one timeline entry per second, one `i64` per account (the audit keeps a balance and a
//!   presence flag per account, never the participants' states).
//!
//! Must not: decide anything about the protocol (it is a client like any other) or depend on
//! the node runtime.

mod audit;
mod chaos_report;
mod interactive;
mod interactive_report;
mod layout;
mod load;
mod probe;
mod report;
pub mod scrape;
pub mod sql_audit;
mod svg;
mod workload;

pub use audit::{AUDIT_EXAMPLES, Audit, Balances, audit, audit_with_baseline};
pub use chaos_report::{ChaosReport, KillEvent, PhaseThroughput, RecoveryStats};
pub use interactive::{
    DEFAULT_ATTEMPTS_MAX, DeadlockFigures, INSUFFICIENT_FUNDS, INTERACTIVE_THREADS_MAX, InteractiveTotals,
    WorkloadKind, abort_groups, check_interactive_shape,
};
pub use interactive_report::InteractiveSection;
pub use layout::{
    ACCOUNT_PREFIX, BankLayout, KeyTable, MAX_ACCOUNT_KEY_BYTES, SETUP_OPS_PER_TX, check_bank_size, check_directory,
    setup_accounts, setup_accounts_where, write_account_key,
};
pub use load::{
    BACKLOG_LIMIT, DEFAULT_SEND_TICK, DRAIN_LIMIT, LoadOptions, LoadResult, LoadSettings, MAX_LATENCY_US,
    TimelinePoint, TracedTx, TxTracer, check_run_shape, format_us, read_rss, run_load,
};
pub use probe::{CommitFilter, LoadProbe, Seen};
pub use report::{LatencySummary, PercentilePoint, Report, RssSeries};
pub use workload::{AUDIT_READS, Tx, Workload, WorkloadSpec};
