//! The admin `Dump` of a participant whose state is far larger than what a server queues for
//! one connection (64 MiB): streamed in bounded chunks as the reader drains them, and refused
//! rather than torn when a commit lands while it streams.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{Cluster, eventually};
use twophase_engine::{Op, OpKind};
use twophase_net::{ClientError, ErrorCode, admin};

/// 2,400 values of 32 KiB: about 79 MB on participant p1.
const KEYS: usize = 2_400;
const VALUE_BYTES: usize = 32 * 1024;
const KEYS_PER_TX: usize = 8;

fn value(n: usize) -> Bytes {
    Bytes::from(vec![(n % 251) as u8; VALUE_BYTES])
}

fn key(n: usize) -> String {
    format!("big/{n}")
}

fn fill_p1(cluster: &Cluster) {
    let mut client = cluster.client();
    for first in (0..KEYS).step_by(KEYS_PER_TX) {
        let ops = (first..(first + KEYS_PER_TX).min(KEYS))
            .map(|n| Op {
                participant: twophase_engine::ParticipantId(1),
                key: key(n).into(),
                kind: OpKind::Put(value(n)),
            })
            .collect();
        assert!(client.submit(ops).unwrap().is_committed());
    }
}

#[test]
fn a_state_beyond_the_outbound_bound_streams_whole_and_a_commit_meanwhile_refuses_the_dump() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = Cluster::start(1, dir.path());
    fill_p1(&cluster);
    let p1 = cluster.participants[0].1;
    let admin_security = cluster.admin_security();

    // Whole: every key once with its value, the count matching DumpEnd, nothing prepared.
    let (seen, end) = eventually("p1 to apply every commit", Duration::from_secs(20), || {
        let mut seen = vec![0u32; KEYS];
        let mut bytes = 0usize;
        let end = admin::dump_each(p1, "local", &admin_security, |k, v| {
            let n: usize = std::str::from_utf8(k).unwrap().strip_prefix("big/").unwrap().parse().unwrap();
            assert_eq!(v, &value(n)[..], "the value of {}", key(n));
            seen[n] += 1;
            bytes += k.len() + v.len();
        })
        .ok()?;
        assert!(bytes > 64 << 20, "the state must exceed the 64 MiB outbound bound, not {bytes} bytes");
        (end.prepared == 0).then_some((seen, end))
    });
    assert!(seen.iter().all(|&times| times == 1), "every key exactly once");
    assert_eq!(end.keys, KEYS as u64);

    // A commit while the dump streams: the reader stops after its first entry and commits a
    // transaction on p1; the participant cannot have sent the ~79 MB meanwhile, so the dump
    // must end with Error 7 instead of DumpEnd.
    let mut writer = cluster.client();
    let mut committed = false;
    let result = admin::dump_each(p1, "local", &admin_security, |_, _| {
        if !committed {
            committed = true;
            let put =
                Op { participant: twophase_engine::ParticipantId(1), key: "other".into(), kind: OpKind::Put(value(1)) };
            assert!(writer.submit(vec![put]).unwrap().is_committed());
            // The client hears Committed before p1 applies it: wait for p1's Committed record.
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    match result {
        Err(ClientError::Refused { code: ErrorCode::Overloaded, message }) => {
            assert!(message.contains("the state changed while the dump streamed"), "{message}")
        }
        other => panic!("a dump across a commit must be refused, got {other:?}"),
    }
    // The participant keeps serving: a dump now is whole again.
    let end = admin::dump_each(p1, "local", &admin_security, |_, _| {}).unwrap();
    assert_eq!(end.keys, KEYS as u64 + 1);
    cluster.stop();
}
