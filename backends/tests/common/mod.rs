//! Helpers shared by the database tests: a blocking call through the executor, gids, values.

#![allow(dead_code)]

use std::time::Duration;

use bytes::Bytes;
use twophase_backends::{Completion, DbError, Executor, Gid, KvOp, KvOutcome, Reason, Reply, Request};

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

/// The fence a restarted participant runs before its recovery scan, on one database.
/// `old` and `new` are two incarnations' pools under the same session name, `plain` a pool
/// under none. `old` leaves a transaction open on a row (as a killed participant's one-shot
/// waiting on a lock would), one prepared writer and one prepared reader; `new`'s fence ends
/// its sessions: the open one is rolled back (its row lock is gone), both prepared ones
/// survive and `new` decides them (a read-only branch too), and `plain` is untouched.
pub fn fence_ends_the_previous_incarnations_sessions(old: &Executor, new: &Executor, plain: &Executor) {
    let committed = |db: &Executor, counter: u64, op: KvOp| {
        match ok(db, Request::OneShot { gid: gid(counter), ops: vec![op], hold_reads: false }) {
            Reply::OneShot(done) => assert!(done.prepared),
            other => panic!("{other:?}"),
        }
        ok(db, Request::CommitPrepared(gid(counter)));
    };
    committed(plain, 200, add(7, 5));
    // acct/5 exists, so the open transaction's update locks its row only (an update of a
    // missing row takes an InnoDB gap lock that would block the insert of acct/6 below).
    committed(plain, 199, add(5, 1));
    ok(old, Request::Begin(gid(201)));
    ok(old, Request::Kv(gid(201), add(5, 10)));
    match ok(old, Request::OneShot { gid: gid(202), ops: vec![add(6, 3)], hold_reads: false }) {
        Reply::OneShot(done) => assert!(done.prepared, "a write prepares"),
        other => panic!("{other:?}"),
    }
    let read = KvOp::Get { key: key("acct/7") };
    match ok(old, Request::OneShot { gid: gid(203), ops: vec![read], hold_reads: true }) {
        Reply::OneShot(done) => {
            assert!(done.prepared, "a read that must hold its locks prepares");
            assert_eq!(done.outcomes, vec![KvOutcome::Read(Some(Bytes::copy_from_slice(&5i64.to_le_bytes())))]);
        }
        other => panic!("{other:?}"),
    }

    match ok(new, Request::FenceSessions) {
        Reply::Fenced(ended) => assert!(ended >= 1, "the open transaction's session at least"),
        other => panic!("FenceSessions answered {other:?}"),
    }
    let gone = call(old, Request::Kv(gid(201), add(5, 1))).unwrap_err();
    assert_eq!(gone.reason, Reason::ConnectionLost, "the old session was ended: {gone}");
    assert_eq!(recovered(new), vec![gid(202), gid(203)], "prepared before the fence, so in the scan");
    ok(new, Request::CommitPrepared(gid(202)));
    ok(new, Request::CommitPrepared(gid(203)));
    assert_eq!(recovered(new), vec![]);
    // The open transaction was rolled back with its session: its row is free and unchanged.
    assert_eq!(balance(plain, 204, 5), Some(1));
    assert_eq!(balance(plain, 205, 6), Some(3));
    committed(plain, 206, add(7, 1));
    assert_eq!(balance(plain, 207, 7), Some(6));
}

/// The servers' processes (those whose command line names a path under `dir`) and the TCP
/// sockets in LISTEN state among their open files: a throwaway server listens on its unix
/// socket only. Returns how many processes matched, and the inodes of their TCP listeners.
pub fn tcp_listeners_under(dir: &std::path::Path) -> (usize, Vec<u64>) {
    let dir = dir.to_string_lossy().into_owned();
    let listening: std::collections::HashSet<u64> = ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(table).ok())
        .flat_map(|text| text.lines().skip(1).map(str::to_owned).collect::<Vec<_>>())
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // st 0A is LISTEN; the inode is the tenth field.
            (fields.get(3) == Some(&"0A")).then(|| fields.get(9)?.parse().ok()).flatten()
        })
        .collect();
    let (mut processes, mut listeners) = (0, Vec::new());
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if !String::from_utf8_lossy(&cmdline).contains(&dir) {
            continue;
        }
        processes += 1;
        for fd in std::fs::read_dir(entry.path().join("fd")).into_iter().flatten().flatten() {
            let target = std::fs::read_link(fd.path()).unwrap_or_default();
            let inode =
                target.to_string_lossy().strip_prefix("socket:[").and_then(|rest| rest.strip_suffix(']')?.parse().ok());
            listeners.extend(inode.filter(|inode| listening.contains(inode)));
        }
    }
    (processes, listeners)
}

/// The server under `dir` runs and listens on no TCP port ([`tcp_listeners_under`]).
pub fn assert_listens_on_its_socket_only(dir: &std::path::Path, server: &str) {
    let (processes, listeners) = tcp_listeners_under(dir);
    assert!(processes > 0, "no process of {server} names {}", dir.display());
    assert!(listeners.is_empty(), "{server} listens on TCP (socket inodes {listeners:?})");
}
