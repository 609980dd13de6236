//! Property test: random append / sync / crash / reopen / truncate sequences against a model.
//! A crash stops the writer abruptly (`simulate_crash`) and then forges a torn tail after
//! the last durable byte: nothing, random garbage, or a cut (and maybe damaged) copy of the
//! group that was in flight. After every reopen: every durable record is present and
//! intact, and what was recovered is a prefix of what was appended.

mod common;

use common::options;
use proptest::prelude::*;
use std::os::unix::fs::FileExt;
use twophase_wal::{Backend, Lsn, Wal, WalOptions};

#[derive(Debug, Clone)]
enum Tear {
    None,
    Garbage { len: usize, seed: u64 },
    Partial { records: usize, cut: f64, flip: Option<f64> },
}

#[derive(Debug, Clone)]
enum Op {
    Append { kind: u8, len: usize },
    Sync,
    Crash(Tear),
    Reopen,
    Truncate { frac: f64 },
}

fn op() -> impl Strategy<Value = Op> {
    let tear = prop_oneof![
        Just(Tear::None),
        (1usize..300, any::<u64>()).prop_map(|(len, seed)| Tear::Garbage { len, seed }),
        (1usize..6, 0.0f64..1.0, prop::option::of(0.0f64..1.0)).prop_map(|(records, cut, flip)| Tear::Partial {
            records,
            cut,
            flip
        }),
    ];
    prop_oneof![
        10 => (1u8..=255, 0usize..600).prop_map(|(kind, len)| Op::Append { kind, len }),
        3 => Just(Op::Sync),
        2 => tear.prop_map(Op::Crash),
        1 => Just(Op::Reopen),
        1 => (0.0f64..1.0).prop_map(|frac| Op::Truncate { frac }),
    ]
}

fn payload(lsn: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (lsn as usize).wrapping_mul(131).wrapping_add(i) as u8).collect()
}

struct Model {
    /// (kind, payload) of LSN i+1.
    records: Vec<(u8, Vec<u8>)>,
    /// Highest LSN known durable.
    durable: u64,
    /// Records `>= keep_from` must survive truncation.
    keep_from: u64,
}

fn wal_options(backend: Backend) -> WalOptions {
    WalOptions { segment_size_bytes: 4096, ..options(backend) }
}

fn reopen(dir: &std::path::Path, backend: Backend, m: &mut Model, crashed_at: Option<u64>) -> Wal {
    let (wal, rec) = twophase_wal::open(dir, wal_options(backend)).unwrap();
    let last = rec.next_lsn.0 - 1;
    if std::env::var_os("MODEL_DEBUG").is_some() {
        eprintln!(
            "reopen: durable {} appended {} recovered {last} torn {:?}",
            m.durable,
            m.records.len(),
            rec.truncated_tail.as_ref().map(|t| t.bytes_dropped)
        );
    }
    assert!(last >= m.durable, "durable LSN {} lost (log ends at {last})", m.durable);
    assert!(last as usize <= m.records.len(), "recovered more than was appended");
    if crashed_at.is_none() {
        assert_eq!(last as usize, m.records.len(), "a clean close lost records");
    }
    if let Some(first) = rec.records.first() {
        assert!(first.lsn.0 <= m.keep_from.max(1), "records >= {} were deleted", m.keep_from);
    }
    for (i, r) in rec.records.iter().enumerate() {
        if i > 0 {
            assert_eq!(r.lsn.0, rec.records[i - 1].lsn.0 + 1);
        }
        let (kind, p) = &m.records[r.lsn.0 as usize - 1];
        assert_eq!((r.kind, &r.payload[..]), (*kind, &p[..]), "LSN {} differs", r.lsn);
    }
    m.records.truncate(last as usize);
    m.durable = last;
    wal
}

fn tear(point: &twophase_wal::CrashPoint, m: &Model, t: &Tear) {
    let file = std::fs::OpenOptions::new().write(true).open(&point.segment).unwrap();
    let room = file.metadata().unwrap().len().saturating_sub(point.offset) as usize;
    let mut bytes = match t {
        Tear::None => return,
        Tear::Garbage { len, seed } => {
            let mut x = *seed | 1;
            (0..*len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect::<Vec<u8>>()
        }
        Tear::Partial { records, cut, flip } => {
            // The in-flight group: a marker and the next unsynced records, cut short.
            let first = point.durable_lsn.0 + 1;
            let mut b = Vec::new();
            twophase_wal::testing::encode_marker(&mut b, first);
            for lsn in first..first + *records as u64 {
                if let Some((kind, p)) = m.records.get(lsn as usize - 1) {
                    twophase_wal::testing::encode_frame(&mut b, lsn, *kind, p);
                }
            }
            b.truncate(((b.len() as f64) * cut) as usize + 1);
            if let Some(f) = flip {
                let i = (((b.len() as f64) * f) as usize).min(b.len() - 1);
                b[i] ^= 0x5a;
            }
            b
        }
    };
    bytes.truncate(room);
    file.write_all_at(&bytes, point.offset).unwrap();
}

fn run(backend: Backend, ops: &[Op]) {
    let dir = tempfile::tempdir().unwrap();
    let Some((wal, _)) = common::open_or_skip(dir.path(), wal_options(backend)) else { return };
    let mut wal = Some(wal);
    let mut m = Model { records: Vec::new(), durable: 0, keep_from: 0 };
    for op in ops {
        let w = wal.take().unwrap();
        match op {
            Op::Append { kind, len } => {
                let lsn = m.records.len() as u64 + 1;
                let p = payload(lsn, *len);
                assert_eq!(w.append(*kind, &p).unwrap(), Lsn(lsn));
                m.records.push((*kind, p));
                wal = Some(w);
            }
            Op::Sync => {
                let last = m.records.len() as u64;
                w.wait_durable(Lsn(last)).unwrap();
                m.durable = last;
                wal = Some(w);
            }
            Op::Crash(t) => {
                let point = w.simulate_crash();
                assert!(point.durable_lsn.0 >= m.durable);
                m.durable = point.durable_lsn.0;
                tear(&point, &m, t);
                wal = Some(reopen(dir.path(), backend, &mut m, Some(point.durable_lsn.0)));
            }
            Op::Reopen => {
                w.close().unwrap();
                m.durable = m.records.len() as u64;
                wal = Some(reopen(dir.path(), backend, &mut m, None));
            }
            Op::Truncate { frac } => {
                let t = (m.durable as f64 * frac) as u64;
                w.truncate_before(Lsn(t)).unwrap();
                m.keep_from = m.keep_from.max(t);
                wal = Some(w);
            }
        }
    }
    let w = wal.take().unwrap();
    w.close().unwrap();
    m.durable = m.records.len() as u64;
    reopen(dir.path(), backend, &mut m, None).close().unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn model_portable(ops in prop::collection::vec(op(), 1..60)) {
        run(Backend::Portable, &ops);
    }

    #[test]
    fn model_io_uring(ops in prop::collection::vec(op(), 1..60)) {
        run(Backend::IoUring, &ops);
    }
}
