//! After a run's load (demo, bench, chaos): wait until no participant holds a prepared or
//! in-doubt transaction (every decision delivered, every restarted participant's doubts
//! resolved), then hand over the states the audit reads.
//!
//! Why: the coordinator acknowledges a commit once its Commit record is durable, before the
//! participants apply it, and a participant that was down learns its decisions only by
//! asking after its restart. Reading earlier would audit a state still on its way.
//! Must not: retry forever (a transaction stuck prepared is exactly what the run looks for).

use std::time::{Duration, Instant};

use twophase_bench::Balances;
use twophase_net::admin;

use crate::loadgen::Target;

/// Longest to wait for every prepared transaction to be resolved.
pub const SETTLE_LIMIT: Duration = Duration::from_secs(30);

const POLL: Duration = Duration::from_millis(100);

/// The participants' balances once settled (or as last read).
pub struct Settled {
    pub balances: Balances,
    pub fsync: bool,
    /// From the call until nothing was prepared anywhere; `None`: not within the limit.
    pub after: Option<Duration>,
    /// What was still unresolved (or unreadable) when the limit passed.
    pub left: Vec<String>,
}

/// Reads every participant's state until none holds a prepared or in-doubt transaction, at
/// most [`SETTLE_LIMIT`]. Fails only when some participant could not be read at all by then.
pub fn wait(target: &Target) -> anyhow::Result<Settled> {
    let begin = Instant::now();
    loop {
        let read = read_all(target);
        let settled = read.as_ref().is_ok_and(|(_, _, left)| left.is_empty());
        if settled || begin.elapsed() >= SETTLE_LIMIT {
            let (balances, fsync, left) = read?;
            let after = settled.then(|| begin.elapsed());
            return Ok(Settled { balances, fsync, after, left });
        }
        std::thread::sleep(POLL);
    }
}

/// Every participant's balances (streamed: nothing but the balances is kept), whether all
/// fsync, and which still hold prepared transactions. A participant that applied a commit
/// while its dump streamed refuses it; that counts as not settled yet.
fn read_all(target: &Target) -> anyhow::Result<(Balances, bool, Vec<String>)> {
    let mut balances = Balances::new(&target.layout);
    let mut fsync = true;
    let mut left = Vec::new();
    for (name, addr) in &target.participants {
        balances.mark_read(name);
        let end = admin::dump_each(addr, &target.cluster, &target.admin, |key, value| balances.take(name, key, value))
            .map_err(|err| anyhow::anyhow!("reading the state of participant {name} at {addr}: {err}"))?;
        fsync &= end.fsync;
        if end.prepared > 0 || end.in_doubt > 0 {
            left.push(format!("{name}: {} prepared, {} in doubt", end.prepared, end.in_doubt));
        }
    }
    Ok((balances, fsync, left))
}
