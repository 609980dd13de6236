//! Shared helpers for tests that run real twophase processes on loopback.

#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use twophase_engine::{Op, OpKind, Outcome, ParticipantId};
use twophase_net::{Client, ClientOptions, Frame, FrameDecoder, NetLimits, Security, TlsMaterial};

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_twophase")
}

/// A loopback address free now for a process the test starts later
/// ([`twophase_net::ports::free_port`]: below the ephemeral range, never twice).
pub fn free_addr() -> SocketAddr {
    twophase_net::ports::free_port(std::net::Ipv4Addr::LOCALHOST.into()).expect("a free test port")
}

/// Longest one scrape of a metrics endpoint may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// `what`'s metrics endpoint at `addr`, read and parsed (OpenMetrics text, ending `# EOF`).
pub fn scrape(what: &str, addr: SocketAddr) -> twophase_bench::scrape::Scrape {
    use twophase_bench::scrape;
    let text = scrape::fetch_text(addr, SCRAPE_TIMEOUT).unwrap_or_else(|err| panic!("scraping {what}: {err:#}"));
    assert!(text.ends_with("# EOF\n"), "OpenMetrics text ends with # EOF: {text}");
    scrape::parse(&text).unwrap_or_else(|err| panic!("{what}'s exposition does not parse: {err:#}\n{text}"))
}

/// Scrapes `what` until `ready` holds or `within` passes; returns the last scrape (nodes
/// publish their counters every 100 ms, and a loaded machine is slow).
pub fn scrape_until(
    what: &str,
    addr: SocketAddr,
    within: Duration,
    ready: impl Fn(&twophase_bench::scrape::Scrape) -> bool,
) -> twophase_bench::scrape::Scrape {
    let deadline = Instant::now() + within;
    loop {
        let scraped = scrape(what, addr);
        if ready(&scraped) || Instant::now() > deadline {
            return scraped;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A short demo's flags: 2 s over 2,000 accounts, 2 connections of 32 outstanding each.
pub const SHORT_DEMO: &[&str] =
    &["--duration", "2s", "--accounts", "2000", "--connections", "2", "--outstanding", "32"];

/// A finished `twophase demo` whose audit passed: what it printed, its report.json and the
/// directory holding its reports and logs.
pub struct DemoRun {
    pub stdout: String,
    pub report: serde_json::Value,
    pub dir: tempfile::TempDir,
}

/// Runs `twophase demo ARGS --quiet --report DIR` (RUST_LOG=warn) and asserts that it
/// exited 0 and its audit passed.
pub fn run_demo(args: &[&str]) -> DemoRun {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(binary())
        .arg("demo")
        .args(args)
        .arg("--quiet")
        .arg("--report")
        .arg(dir.path())
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "demo failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("audit       PASSED"), "{stdout}");
    let text = std::fs::read_to_string(dir.path().join("report.json")).expect("report.json written");
    let report = serde_json::from_str(&text).expect("report.json is JSON");
    DemoRun { stdout, report, dir }
}

/// The cluster name every test node uses.
pub const CLUSTER: &str = "local";

/// Where the test's certificates live under its data directory (the same place
/// `twophase cluster` makes them).
pub fn certs_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("certs")
}

/// Makes (with `twophase certs`, reusing the CA in `dir`) the certificate of `role`/`name`
/// of `cluster`, and returns the `--ca --cert --key` arguments that present it.
pub fn make_cert(dir: &Path, cluster: &str, role: &str, name: &str) -> Vec<String> {
    let out = Command::new(binary())
        .args(["certs", "--dir"])
        .arg(dir)
        .args(["--cluster", cluster, &format!("--{role}"), name])
        .output()
        .expect("running twophase certs");
    assert!(out.status.success(), "twophase certs failed: {}", String::from_utf8_lossy(&out.stderr));
    let file = |ext: &str| dir.join(format!("{role}-{name}.{ext}")).display().to_string();
    vec![
        "--ca".into(),
        dir.join("ca.pem").display().to_string(),
        "--cert".into(),
        file("pem"),
        "--key".into(),
        file("key"),
    ]
}

/// The TLS material of `role`/`name` of `cluster` in `dir` (made if missing).
pub fn security(dir: &Path, cluster: &str, role: &str, name: &str) -> Security {
    let (cert, key) = (dir.join(format!("{role}-{name}.pem")), dir.join(format!("{role}-{name}.key")));
    if !cert.exists() {
        make_cert(dir, cluster, role, name);
    }
    let material = TlsMaterial::load(&dir.join("ca.pem"), &cert, &key).expect("loading test certificates");
    Security::Tls(Arc::new(material))
}

/// A test client's options for the nodes of `data_dir` (certificate `client-tester`).
pub fn client_options(data_dir: &Path) -> ClientOptions {
    ClientOptions { security: security(&certs_dir(data_dir), CLUSTER, "client", "tester"), ..ClientOptions::default() }
}

/// An admin's security for the nodes of `data_dir` (certificate `admin-tester`).
pub fn admin_security(data_dir: &Path) -> Security {
    security(&certs_dir(data_dir), CLUSTER, "admin", "tester")
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

    /// The client options of the certificate the cluster made for its client.
    pub fn client_options(&self) -> ClientOptions {
        ClientOptions {
            request_timeout: Duration::from_secs(10),
            security: security(&certs_dir(&self.data_dir), CLUSTER, "client", "local-client"),
            ..ClientOptions::default()
        }
    }

    /// The security of the certificate the cluster made for its admin.
    pub fn admin_security(&self) -> Security {
        security(&certs_dir(&self.data_dir), CLUSTER, "admin", "local-admin")
    }

    pub fn client(&self) -> Client {
        Client::connect(self.coordinator, self.client_options()).expect("connecting to the coordinator")
    }

    /// The client config file the cluster wrote.
    pub fn client_config(&self) -> PathBuf {
        self.data_dir.join("client.toml")
    }

    /// Every server port: the coordinator's and each participant's.
    pub fn ports(&self) -> Vec<SocketAddr> {
        std::iter::once(self.coordinator).chain(self.participants.iter().map(|(_, addr)| *addr)).collect()
    }

    /// The process id of node `name` (`p1`, `c1`), a child of the launcher, if it runs.
    pub fn node_pid(&self, name: &str) -> Option<u32> {
        let data_dir = self.data_dir.join(name).display().to_string();
        std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
            let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            // `pid (comm) state ppid ...`: the comm may hold spaces, so read after its `)`.
            let ppid: u32 = stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()?;
            let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = cmdline.split(|byte| *byte == 0).collect();
            let serves_it = args.windows(2).any(|pair| pair[0] == b"--data-dir" && pair[1] == data_dir.as_bytes());
            (ppid == self.process.id() && serves_it).then_some(pid)
        })
    }

    /// The launcher's exit status once it exits on its own within `timeout` (`None`: still
    /// running).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.process.try_wait().expect("waiting for the cluster") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `twophase tx` against this cluster (with the client config it wrote).
    pub fn tx(&self, args: &[&str]) -> Output {
        Command::new(binary())
            .args(["tx", "--config"])
            .arg(self.client_config())
            .args(args)
            .output()
            .expect("running twophase tx")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !matches!(self.process.try_wait(), Ok(None)) {
            return; // exited and reaped: its pid may be someone else's by now
        }
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
        Outcome::CommittedReadsUnavailable => panic!("a read-only transaction is never resolved after a restart"),
    }
}

pub fn committed(outcome: &Outcome) -> bool {
    outcome.is_committed()
}

/// How long a node may take to print its `listening on` line (a loaded 2-core machine
/// compiling other crates can be very slow).
const NODE_START_TIMEOUT: Duration = Duration::from_secs(60);

/// One `twophase participant` or `twophase coordinator` process, started on its own (not
/// through `twophase cluster`) so that a test can give it environment variables (a
/// failpoint), see it die and restart it at the same address with the same data.
pub struct Node {
    pub name: String,
    /// The address it listens on; kept across restarts.
    pub addr: SocketAddr,
    /// The test's data directory (the node's own is `data_dir/NAME`; certificates in
    /// `data_dir/certs`).
    pub data_dir: PathBuf,
    /// Every argument but `--listen`.
    args: Vec<String>,
    process: Child,
    /// Everything the current process wrote to stderr (its logs, a failpoint's line).
    stderr: Arc<Mutex<String>>,
}

impl Node {
    /// `twophase participant --id NAME` with its data in `data_dir/NAME`, on a free port,
    /// with its certificate from `data_dir/certs`.
    ///
    /// The port comes from [`free_addr`], below the kernel's ephemeral range: a restart
    /// binds the same address again, and a port from that range can meanwhile be handed to
    /// any outgoing connection (CI once saw a restart fail with "Address already in use").
    pub fn participant(name: &str, data_dir: &Path, env: &[(&str, &str)]) -> Node {
        Node::participant_with(name, data_dir, &[], env)
    }

    /// Like [`participant`](Self::participant), with `extra` flags appended.
    pub fn participant_with(name: &str, data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Node {
        let mut args =
            vec!["participant".to_string(), "--id".into(), name.into(), "--data-dir".into(), path(data_dir, name)];
        args.extend(make_cert(&certs_dir(data_dir), CLUSTER, "participant", name));
        args.extend(extra.iter().map(|arg| arg.to_string()));
        Node::start(name, data_dir, args, free_addr(), env)
    }

    /// Like [`participant_with`](Self::participant_with), listening on `listen` (a node whose
    /// peers must know its address before it starts: 3PC participants).
    pub fn participant_at(name: &str, data_dir: &Path, listen: SocketAddr, extra: &[&str]) -> Node {
        let mut args =
            vec!["participant".to_string(), "--id".into(), name.into(), "--data-dir".into(), path(data_dir, name)];
        args.extend(make_cert(&certs_dir(data_dir), CLUSTER, "participant", name));
        args.extend(extra.iter().map(|arg| arg.to_string()));
        Node::start(name, data_dir, args, listen, &[])
    }

    /// `twophase coordinator --id c1` with its data in `data_dir/c1`, connecting to
    /// `participants`, on a free port ([`free_addr`], as for participants: it may be
    /// restarted); `extra` flags are appended (e.g. the prepare timeout).
    pub fn coordinator(data_dir: &Path, participants: &[&Node], extra: &[&str], env: &[(&str, &str)]) -> Node {
        let mut args =
            vec!["coordinator".to_string(), "--id".into(), "c1".into(), "--data-dir".into(), path(data_dir, "c1")];
        args.extend(make_cert(&certs_dir(data_dir), CLUSTER, "coordinator", "c1"));
        for participant in participants {
            args.push("--participant".into());
            args.push(format!("{}={}", participant.name, participant.addr));
        }
        args.extend(extra.iter().map(|arg| arg.to_string()));
        Node::start("c1", data_dir, args, free_addr(), env)
    }

    fn start(name: &str, data_dir: &Path, args: Vec<String>, listen: SocketAddr, env: &[(&str, &str)]) -> Node {
        let (process, addr, stderr) = spawn_node(name, &args, listen, env);
        Node { name: name.to_string(), addr, data_dir: data_dir.to_path_buf(), args, process, stderr }
    }

    /// Starts the node again (it must have exited) at the same address, with `env` only.
    pub fn restart(&mut self, env: &[(&str, &str)]) {
        assert!(self.process.try_wait().expect("polling the node").is_some(), "{} is still running", self.name);
        let (process, addr, stderr) = spawn_node(&self.name, &self.args, self.addr, env);
        assert_eq!(addr, self.addr, "{} restarted at another address", self.name);
        (self.process, self.stderr) = (process, stderr);
    }

    /// Like [`restart`](Self::restart), adding `flags` to its arguments from now on.
    pub fn restart_with(&mut self, flags: &[&str], env: &[(&str, &str)]) {
        self.args.extend(flags.iter().map(|flag| flag.to_string()));
        self.restart(env);
    }

    /// Waits for the process to end and demands that SIGKILL ended it (what a failpoint
    /// does) and that it said which failpoint fired.
    pub fn expect_killed(&mut self, timeout: Duration) {
        let status = self.wait_exit(timeout);
        assert_eq!(status.signal(), Some(libc::SIGKILL), "{} ended with {status}, not SIGKILL", self.name);
        // The reader thread may not have reached the pipe's end yet when the exit is seen:
        // the failpoint's last line can still be on its way (CI saw exactly that).
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.stderr().contains("killing this process") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let stderr = self.stderr();
        assert!(stderr.contains("killing this process"), "{} died without a failpoint's word:\n{stderr}", self.name);
    }

    fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.process.try_wait().expect("polling the node") {
                return status;
            }
            assert!(Instant::now() < deadline, "{} still runs after {timeout:?}:\n{}", self.name, self.stderr());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// What the current process has written to stderr so far.
    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Kills the node with SIGKILL (a crash) and waits until it is gone.
    pub fn kill(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }

    /// Stops the node as an operator would (SIGTERM) and demands a clean exit.
    pub fn stop(&mut self) {
        // SAFETY: kill(2) on a child we spawned; no memory is involved.
        unsafe {
            libc::kill(self.process.id() as i32, libc::SIGTERM);
        }
        let status = self.wait_exit(Duration::from_secs(30));
        assert!(status.success(), "{} exited with {status}:\n{}", self.name, self.stderr());
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

fn path(data_dir: &Path, name: &str) -> String {
    data_dir.join(name).display().to_string()
}

/// Starts `twophase ARGS --listen LISTEN` and waits for its `listening on ADDR` line. Its
/// stderr is collected (and echoed into the test's captured output, shown on failure).
fn spawn_node(
    name: &str,
    args: &[String],
    listen: SocketAddr,
    env: &[(&str, &str)],
) -> (Child, SocketAddr, Arc<Mutex<String>>) {
    let mut command = Command::new(binary());
    command.args(args).args(["--listen", &listen.to_string()]);
    command.env_remove("TWOPHASE_FAILPOINT").env("RUST_LOG", "info");
    command.envs(env.iter().copied());
    let mut process = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| panic!("starting {name}: {err}"));
    let stderr = Arc::new(Mutex::new(String::new()));
    let (collected, err_pipe, label) = (stderr.clone(), process.stderr.take().unwrap(), name.to_string());
    std::thread::spawn(move || {
        let mut lines = BufReader::new(err_pipe);
        let mut line = Vec::new();
        while matches!(lines.read_until(b'\n', &mut line), Ok(1..)) {
            let text = String::from_utf8_lossy(&line);
            eprint!("[{label}] {text}");
            collected.lock().unwrap().push_str(&text);
            line.clear();
        }
    });
    let (line_tx, line_rx) = std::sync::mpsc::channel();
    let stdout = process.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.contains("listening on ") {
                let _ = line_tx.send(line);
            }
        }
    });
    let Ok(line) = line_rx.recv_timeout(NODE_START_TIMEOUT) else {
        let _ = process.kill();
        let status = process.wait();
        panic!("{name} did not start ({status:?}):\n{}", stderr.lock().unwrap());
    };
    let addr = line.rsplit_once("listening on ").unwrap().1.trim().parse().expect("an address");
    (process, addr, stderr)
}

/// Polls `probe` until it returns `Some` (every 20 ms), or panics naming `what`.
pub fn eventually<T>(what: &str, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A participant's state through the admin `Dump` frame: its integer values by key, and
/// (prepared, in doubt) transaction counts.
pub fn dump_ints(participant: &Node) -> (std::collections::BTreeMap<String, i64>, (u32, u32)) {
    let addr = participant.addr;
    let (entries, end) = twophase_net::admin::dump(addr, CLUSTER, &admin_security(&participant.data_dir))
        .unwrap_or_else(|err| panic!("dump of {addr}: {err}"));
    let values = entries
        .into_iter()
        .map(|(key, value)| {
            let value = i64::from_le_bytes(value.as_ref().try_into().expect("8-byte integer"));
            (String::from_utf8_lossy(&key).into_owned(), value)
        })
        .collect();
    (values, (end.prepared, end.in_doubt))
}

/// A TLS connection made by hand (not through the net crate): the server is verified
/// against `ca` under the name `localhost`; `client` is the certificate presented, if any.
pub fn tls_connect(
    addr: SocketAddr,
    ca: &Path,
    client: Option<&(PathBuf, PathBuf)>,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert).unwrap().map(Result::unwrap).collect();
            builder.with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key).unwrap()).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    let server = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(config), server).unwrap();
    let tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

/// Reads frames until the server closes, or until `enough` says so.
pub fn read_frames(
    stream: &mut rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
    enough: impl Fn(&[Frame]) -> bool,
) -> Vec<Frame> {
    let mut decoder = FrameDecoder::new(NetLimits::default());
    let (mut buf, mut frames, mut chunk) = (BytesMut::new(), Vec::new(), [0u8; 4096]);
    while !enough(&frames) {
        // A close without close_notify (or a reset) ends the answer just the same.
        let n = stream.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(frame) = decoder.decode(&mut buf).expect("the server sends valid frames") {
            frames.push(frame);
        }
    }
    frames
}

/// A coordinator `c1` and participants `p1`..`pN`, each its own process (so that a test
/// can kill and restart any one of them), sharing one temporary data directory.
pub struct NodeSet {
    pub coordinator: Node,
    pub participants: Vec<Node>,
    _dir: tempfile::TempDir,
}

impl NodeSet {
    /// Starts `count` participants with `participant_flags` (e.g. a lock-wait timeout),
    /// then the coordinator that connects to them.
    pub fn start(count: usize, participant_flags: &[&str]) -> NodeSet {
        let dir = tempfile::tempdir().unwrap();
        let participants: Vec<Node> = (1..=count)
            .map(|index| Node::participant_with(&format!("p{index}"), dir.path(), participant_flags, &[]))
            .collect();
        let refs: Vec<&Node> = participants.iter().collect();
        let coordinator = Node::coordinator(dir.path(), &refs, &[], &[]);
        NodeSet { coordinator, participants, _dir: dir }
    }

    /// Client options for this set (a 10 s request timeout: statements may wait for locks).
    pub fn options(&self) -> ClientOptions {
        ClientOptions { request_timeout: Duration::from_secs(10), ..client_options(&self.coordinator.data_dir) }
    }

    pub fn client(&self) -> Client {
        Client::connect(self.coordinator.addr, self.options()).expect("connecting to the coordinator")
    }
}
