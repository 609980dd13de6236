//! Proposals per second through a 3-replica group in one process: real wals (fdatasync per
//! group) in temporary directories, messages handed over in memory. One iteration proposes
//! `PROPOSALS_PER_ITERATION` batches on the leader at once and drives the group until the
//! leader has applied them all: the figure is pipelined throughput, each batch carrying
//! 1 or 256 records of 64 bytes.
//!
//! `cargo bench -p twophase-replica --bench propose` (about 25 s).

use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use twophase_replica::{Output, Replica, ReplicaConfig};
use twophase_wal::WalOptions;

const PROPOSALS_PER_ITERATION: usize = 64;
const RECORD_BYTES: usize = 64;

struct Group {
    _root: tempfile::TempDir,
    replicas: Vec<Replica>,
    in_flight: Vec<(u64, Vec<u8>)>,
    outputs: Vec<Output>,
}

impl Group {
    fn new() -> Group {
        let root = tempfile::tempdir().unwrap();
        let voters = vec![1, 2, 3];
        let replicas = voters
            .iter()
            .map(|&id| {
                let mut config = ReplicaConfig::new(id, voters.clone());
                config.snapshot_every_entries = u64::MAX / 2;
                Replica::open(config, &root.path().join(format!("r{id}")), WalOptions::default()).unwrap()
            })
            .collect();
        let mut group = Group { _root: root, replicas, in_flight: Vec::new(), outputs: Vec::new() };
        while !group.replicas.iter().any(Replica::is_leader) {
            for r in &mut group.replicas {
                r.tick();
            }
            group.drive();
        }
        group
    }

    fn leader(&mut self) -> &mut Replica {
        self.replicas.iter_mut().find(|r| r.is_leader()).unwrap()
    }

    /// Settles every replica (durable, polled) and delivers messages until quiet.
    fn drive(&mut self) {
        loop {
            for r in &mut self.replicas {
                let last = r.storage().last_urgent_lsn();
                if last.0 > 0 {
                    r.wal().wait_durable(last).unwrap();
                }
                r.poll().unwrap();
                r.drain_outputs(&mut self.outputs);
                for output in self.outputs.drain(..) {
                    if let Output::Send { to, bytes } = output {
                        self.in_flight.push((to, bytes));
                    }
                }
            }
            if self.in_flight.is_empty() {
                return;
            }
            for (to, bytes) in self.in_flight.drain(..) {
                self.replicas[(to - 1) as usize].step(&bytes).unwrap();
            }
        }
    }
}

fn bench_propose(c: &mut Criterion) {
    let mut bench_group = c.benchmark_group("replica_propose_3");
    bench_group.sample_size(10).measurement_time(Duration::from_secs(10)).warm_up_time(Duration::from_secs(1));
    for records in [1usize, 256] {
        let batch = vec![0xA5u8; records * RECORD_BYTES];
        let mut group = Group::new();
        bench_group.throughput(Throughput::Elements(PROPOSALS_PER_ITERATION as u64));
        bench_group.bench_function(format!("batch_of_{records}_records"), |b| {
            b.iter(|| {
                let leader = group.leader();
                let mut last = None;
                for _ in 0..PROPOSALS_PER_ITERATION {
                    last = Some(leader.propose(batch.clone()).unwrap());
                }
                let target = last.unwrap().index;
                while group.leader().applied().0 < target {
                    group.drive();
                }
            })
        });
    }
    bench_group.finish();
}

criterion_group!(benches, bench_propose);
criterion_main!(benches);
