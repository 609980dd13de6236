//! Shared helpers for tests that run real twophase processes on loopback.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

use bytes::Bytes;
use twophase_engine::{Op, OpKind, Outcome, ParticipantId};
use twophase_net::{Client, ClientOptions};

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_twophase")
}

/// A `twophase cluster` child process on ephemeral loopback ports.
pub struct Cluster {
    pub coordinator: SocketAddr,
    pub participants: Vec<(String, SocketAddr)>,
    pub data_dir: PathBuf,
    process: Child,
}

impl Cluster {
    pub fn start(participants: u16, data_dir: &Path) -> Cluster {
        let mut process = Command::new(binary())
            .args(["cluster", "--participants", &participants.to_string(), "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting twophase cluster");
        let mut lines = BufReader::new(process.stdout.take().unwrap()).lines();
        let mut cluster_participants = Vec::new();
        let coordinator = loop {
            let line = lines.next().expect("cluster output ended early").expect("reading cluster output");
            let addr = |line: &str| line.rsplit_once("listening on ").unwrap().1.parse::<SocketAddr>().unwrap();
            if let Some(rest) = line.strip_prefix("participant ") {
                cluster_participants.push((rest.split_whitespace().next().unwrap().to_string(), addr(&line)));
            } else if line.starts_with("coordinator ") {
                break addr(&line);
            }
        };
        std::thread::spawn(move || for _ in lines {});
        Cluster { coordinator, participants: cluster_participants, data_dir: data_dir.to_path_buf(), process }
    }

    /// Stops the cluster as Ctrl-C would (SIGTERM to the launcher, which stops its nodes).
    pub fn stop(mut self) {
        unsafe {
            libc::kill(self.process.id() as i32, libc::SIGTERM);
        }
        let status = self.process.wait().expect("waiting for the cluster");
        assert!(status.success(), "cluster exited with {status}");
    }

    pub fn client(&self) -> Client {
        let options = ClientOptions { request_timeout: Duration::from_secs(10), ..ClientOptions::default() };
        Client::connect(self.coordinator, options).expect("connecting to the coordinator")
    }

    /// Every server port: the coordinator's and each participant's.
    pub fn ports(&self) -> Vec<SocketAddr> {
        std::iter::once(self.coordinator).chain(self.participants.iter().map(|(_, addr)| *addr)).collect()
    }

    /// Runs `twophase tx` against this cluster.
    pub fn tx(&self, args: &[&str]) -> Output {
        Command::new(binary())
            .args(["tx", "--coordinator", &self.coordinator.to_string()])
            .args(args)
            .output()
            .expect("running twophase tx")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        unsafe {
            libc::kill(self.process.id() as i32, libc::SIGTERM);
        }
        let _ = self.process.wait();
    }
}

pub fn add(participant: u16, key: &str, delta: i64, floor: i64) -> Op {
    Op {
        participant: ParticipantId(participant),
        key: Bytes::from(key.to_string()),
        kind: OpKind::Add { delta, floor },
    }
}

pub fn get(participant: u16, key: &str) -> Op {
    Op { participant: ParticipantId(participant), key: Bytes::from(key.to_string()), kind: OpKind::Get }
}

/// Reads integer values through a read-only transaction.
pub fn read_ints(client: &mut Client, keys: &[(u16, &str)]) -> Vec<Option<i64>> {
    let ops = keys.iter().map(|(p, k)| get(*p, k)).collect();
    match client.submit(ops).expect("read transaction") {
        Outcome::Committed { reads } => reads
            .iter()
            .map(|read| read.value.as_ref().map(|v| i64::from_le_bytes(v.as_ref().try_into().expect("8-byte integer"))))
            .collect(),
        Outcome::Aborted { reason } => panic!("read aborted: {reason}"),
    }
}

pub fn committed(outcome: &Outcome) -> bool {
    outcome.is_committed()
}
