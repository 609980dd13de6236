//! Helpers shared by the database tests: a blocking call through the executor, gids, values.

#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use twophase_backends::{Completion, DbError, Executor, Gid, KvOp, KvOutcome, Reply, Request};

pub const PARTICIPANT: &str = "db1";

pub fn gid(counter: u64) -> Gid {
    Gid::new(PARTICIPANT, 1, counter).unwrap()
}

/// Submits one request and waits for its completion (tests may block; the engine may not).
pub fn call(executor: &Executor, request: Request) -> Result<Reply, DbError> {
    executor.submit(7, request).expect("queue has room");
    let Completion { tag, result } =
        executor.completions().recv_timeout(Duration::from_secs(120)).expect("a completion within 2 minutes");
    assert_eq!(tag, 7);
    result
}

pub fn ok(executor: &Executor, request: Request) -> Reply {
    let shown = format!("{request:?}");
    call(executor, request).unwrap_or_else(|e| panic!("{shown} failed: {e}"))
}

pub fn key(text: &str) -> Bytes {
    Bytes::copy_from_slice(text.as_bytes())
}

pub fn add(account: u64, delta: i64) -> KvOp {
    KvOp::Add { key: key(&format!("acct/{account}")), delta, floor: 0 }
}

/// Reads keys in a transaction of its own (rolled back after).
pub fn read(executor: &Executor, counter: u64, keys: &[&str]) -> Vec<Option<Bytes>> {
    let gid = gid(counter);
    ok(executor, Request::Begin(gid.clone()));
    let values = keys
        .iter()
        .map(|k| match ok(executor, Request::Kv(gid.clone(), KvOp::Get { key: key(k) })) {
            Reply::Kv(KvOutcome::Read(value)) => value,
            other => panic!("a Get answered {other:?}"),
        })
        .collect();
    ok(executor, Request::Rollback(gid));
    values
}

pub fn balance(executor: &Executor, counter: u64, account: u64) -> Option<i64> {
    read(executor, counter, &[&format!("acct/{account}")])[0]
        .as_ref()
        .map(|v| i64::from_le_bytes(v[..].try_into().expect("8 bytes")))
}

pub fn recovered(executor: &Executor) -> Vec<Gid> {
    match ok(executor, Request::Recover) {
        Reply::Recovered(mut gids) => {
            gids.sort_by_key(Gid::txid);
            gids
        }
        other => panic!("Recover answered {other:?}"),
    }
}
