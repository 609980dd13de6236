//! A micro measurement of what TLS costs the wire: one `Pipeline` keeps `--outstanding`
//! one-op transactions in flight against a fake coordinator (a spawned transport that commits
//! every submit), over insecure plaintext and then over mutual TLS, and prints transactions
//! per second for each. No engine, no log: only framing, the loop and the client library.
//!
//!     cargo run --release -p twophase-net --example tls_pipeline -- [seconds] [outstanding]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rcgen::string::Ia5String;
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType};
use twophase_engine::{Epoch, Op, OpKind, Outcome, ParticipantId, Reply};
use twophase_net::{
    BatchWriter, ClientOptions, Frame, Hello, Inbound, NetLimits, Pipeline, Role, Security, TlsMaterial, Transport,
    TransportConfig, spawn,
};

fn main() {
    let mut args = std::env::args().skip(1);
    let seconds: u64 = args.next().map_or(5, |arg| arg.parse().expect("seconds"));
    let outstanding: usize = args.next().map_or(4096, |arg| arg.parse().expect("outstanding"));
    let (server_tls, client_tls) = make_material();
    for (label, server, client) in [
        ("insecure plaintext", Security::InsecurePlaintext, Security::InsecurePlaintext),
        ("mutual TLS", server_tls, client_tls),
    ] {
        let (transport, addr) = start_coordinator(server);
        let committed = run(addr, client, Duration::from_secs(seconds), outstanding);
        println!(
            "{label:>20}: {:>9.0} tx/s ({committed} in {seconds} s, {outstanding} outstanding)",
            committed as f64 / seconds as f64
        );
        transport.shutdown();
    }
}

fn run(addr: SocketAddr, security: Security, duration: Duration, outstanding: usize) -> u64 {
    let options = ClientOptions { security, ..ClientOptions::default() };
    let mut pipeline = Pipeline::connect(addr, options).expect("connect");
    let op = Op {
        participant: ParticipantId(1),
        key: Bytes::from_static(b"acct/1"),
        kind: OpKind::Add { delta: 1, floor: 0 },
    };
    let end = Instant::now() + duration;
    let mut committed = 0;
    while Instant::now() < end {
        while pipeline.outstanding() < outstanding {
            pipeline.send(vec![op.clone()]).expect("send");
        }
        pipeline.flush().expect("flush");
        committed += pipeline.poll(Duration::from_millis(10)).expect("poll").len() as u64;
    }
    committed
}

fn start_coordinator(security: Security) -> (Transport, SocketAddr) {
    let me = Hello { role: Role::Coordinator, cluster: "local".into(), node: "c1".into(), epoch: Epoch(1) };
    let mut config = TransportConfig::new(me, security);
    config.listen = Some("127.0.0.1:0".parse().unwrap());
    config.accept_roles = vec![Role::Client];
    let (tx, rx) = crossbeam_channel::bounded(16);
    let (transport, addr) = spawn(config, tx).expect("spawn");
    let handle = transport.clone();
    std::thread::spawn(move || {
        let mut writer = BatchWriter::<Reply>::new(&NetLimits::default());
        for batch in rx {
            let mut out = Vec::new();
            for event in batch {
                if let Inbound::Frame { conn, frame: Frame::Submits(submits) } = event {
                    for submit in submits {
                        let outcome = Outcome::Committed { reads: vec![] };
                        writer.push(&Reply::Outcome { client: submit.client, seq: submit.seq, outcome }).unwrap();
                    }
                    out.push((conn, writer.take()));
                }
            }
            handle.send_many(out);
        }
    });
    (transport, addr)
}

/// A CA, the coordinator's material and a client's, all in memory.
fn make_material() -> (Security, Security) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_pem = ca_params.self_signed(&ca_key).unwrap().pem();
    let issuer = Issuer::new(ca_params, ca_key);
    let material = |role: &str, name: &str| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        let uri = Ia5String::try_from(format!("twophase://local/{role}/{name}")).unwrap();
        params.subject_alt_names.push(SanType::URI(uri));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params.signed_by(&key, &issuer).unwrap().pem();
        let tls = TlsMaterial::from_pem(ca_pem.as_bytes(), cert.as_bytes(), key.serialize_pem().as_bytes()).unwrap();
        Security::Tls(Arc::new(tls))
    };
    (material("coordinator", "c1"), material("client", "bench"))
}
