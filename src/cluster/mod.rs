//! `twophase cluster`: a coordinator (or a Raft group of N coordinators, `--coordinators N`)
//! and M participants as child processes of this one, on loopback, each with its own data
//! directory and certificate. Also used by the demo, the chaos run and by tests.
//!
//! Invariants: a node keeps its address for life. Participants first listen on a free port;
//! their bound address then replaces it in the arguments they are restarted with, so the
//! coordinator's participant list (fixed at its start) stays valid across restarts. The
//! members of a coordinator group get their addresses before any starts (every member's
//! `--peer` list names them all). The leader is whoever announced the highest term on its
//! stdout among the running members ([`LocalCluster::leader_addr`], the one lookup).
//! `twophase cluster` itself ([`supervise`]) restarts a node that dies, within a budget.
//!
//! Must not: decide when to kill anything (the chaos run does) or touch a node's data.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use twophase_net::{Role, ports};

use crate::certs;
use crate::security::TlsFiles;

mod supervise;
pub use supervise::run_until_stopped;

const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The coordinator's name (of a group's first member: the others are c2..cN).
pub const COORDINATOR_NAME: &str = "c1";
/// Most coordinators a local group may have.
pub const COORDINATORS_MAX: u16 = 7;
/// How long a group may take to elect its first leader (the nodes may share a busy machine).
const ELECTION_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub participants: u16,
    /// Coordinators: 1 is a single coordinator, more (odd, at most [`COORDINATORS_MAX`]) one
    /// Raft group (`--peer` for every member).
    pub coordinators: u16,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub cluster: String,
    pub unsafe_no_fsync: bool,
    /// Every node's `--group-interval-us`; `None` leaves their default.
    pub group_interval_us: Option<u64>,
    /// Every node and the launcher's own connections without TLS. Otherwise a CA (reused
    /// if the data directory has one) and every certificate are made in `DATA_DIR/certs`.
    pub plaintext: bool,
    /// Every node's `--trace-sample` and `--otlp-endpoint`.
    pub trace: crate::trace::TraceArgs,
    /// Every node serves metrics on a free loopback port (kept across restarts).
    pub metrics: bool,
    /// Each node's log messages (stderr) go to `NAME.log` here, appended across restarts;
    /// the last run's logs are removed when the cluster starts. `None`: to this process's
    /// stderr.
    pub log_dir: Option<PathBuf>,
    /// Participants (by index N of pN) that run over a database, with the flags that say
    /// which (`--backend postgres --dsn ...`). Empty: all `kv`.
    pub database_participants: Vec<(u16, Vec<String>)>,
    /// The atomic commit protocol every node runs (`--protocol`).
    pub protocol: Protocol,
}

/// The atomic commit protocol of a cluster: every node runs the same one.
#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq, Debug, Default)]
pub enum Protocol {
    /// Two-phase commit (the default).
    #[default]
    #[value(name = "2pc")]
    TwoPc,
    /// Three-phase commit (src/node/threepc): built-in-store participants, one coordinator.
    #[value(name = "3pc")]
    ThreePc,
}

impl Protocol {
    /// The flags that make a node run this protocol (none for the default).
    fn node_args(self) -> Vec<String> {
        match self {
            Protocol::TwoPc => Vec::new(),
            Protocol::ThreePc => vec!["--protocol".into(), "3pc".into()],
        }
    }
}

/// The client certificate's name for the launcher's load and for `client.toml`.
pub const CLIENT_NAME: &str = "local-client";
/// The admin certificate's name for the launcher's audit reads (participants' `Dump`).
pub const ADMIN_NAME: &str = "local-admin";

struct Node {
    name: String,
    /// The arguments it was started with, its listen address made concrete.
    args: Vec<String>,
    addr: SocketAddr,
    /// Where it serves metrics, if it does.
    metrics: Option<SocketAddr>,
    /// Where its stderr goes (`None`: inherited).
    log_file: Option<PathBuf>,
    /// `None` while it is killed and not restarted.
    process: Option<Child>,
    /// The last `leads term T with epoch E` line this process printed (group members).
    leads: Arc<Mutex<Option<Leads>>>,
}

/// A group member's announcement that it leads: `twophase coordinator NAME leads term T
/// with epoch E` on its stdout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leads {
    pub term: u64,
    pub epoch: u32,
}

impl Leads {
    /// The announcement in one stdout line, if the line is one.
    pub fn parse(line: &str) -> Option<Leads> {
        let rest = line.split_once(" leads term ")?.1;
        let (term, epoch) = rest.trim().split_once(" with epoch ")?;
        Some(Leads { term: term.parse().ok()?, epoch: epoch.parse().ok()? })
    }
}

/// An announcement slot: what the current process of a member printed last.
type LeadsSlot = Arc<Mutex<Option<Leads>>>;

/// Finds a group's leader: every member's address and the announcement slot of its running
/// process (`None` while it is down). [`LocalCluster::leader_addr`] answers through it.
#[derive(Clone, Default)]
struct LeaderLookup(Arc<Mutex<Vec<MemberSlot>>>);

/// A member's address and its running process's announcement slot (`None`: down).
type MemberSlot = (SocketAddr, Option<LeadsSlot>);

impl LeaderLookup {
    /// The running member that announced the highest term.
    pub fn leader_addr(&self) -> Option<SocketAddr> {
        let members = self.0.lock().expect("leader lookup");
        let announced = members.iter().filter_map(|(addr, slot)| Some((*addr, (*slot.as_ref()?.lock().ok()?)?)));
        announced.max_by_key(|(_, leads)| leads.term).map(|(addr, _)| addr)
    }

    fn add(&self, addr: SocketAddr, slot: LeadsSlot) {
        self.0.lock().expect("leader lookup").push((addr, Some(slot)));
    }

    /// A member's process changed (`None`: it is down); no-op for an address not in the group.
    fn set(&self, addr: SocketAddr, slot: Option<LeadsSlot>) {
        let mut members = self.0.lock().expect("leader lookup");
        if let Some(member) = members.iter_mut().find(|(member, _)| *member == addr) {
            member.1 = slot;
        }
    }
}

/// A coordinator's role as last seen: the leader is the running member whose announcement
/// names the highest term.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CoordinatorRole {
    /// A single coordinator (no group).
    Single,
    Leader(Leads),
    Follower,
    Down,
}

/// A node started again by [`LocalCluster::restart`].
#[derive(Clone, Copy, Debug)]
pub struct Restarted {
    pub pid: u32,
    /// When its `listening on` line was read.
    pub listening: Instant,
}

pub struct LocalCluster {
    /// The coordinator, or the group's leader when the cluster started (it may change: ask
    /// [`leader_addr`](Self::leader_addr)).
    pub coordinator: SocketAddr,
    /// Every coordinator's name and address, c1..cN.
    pub coordinators: Vec<(String, SocketAddr)>,
    pub participants: Vec<(String, SocketAddr)>,
    /// The group's members and their announcements (empty for a single coordinator).
    lookup: LeaderLookup,
    /// What the launcher's client connections (transactions) present.
    pub client: TlsFiles,
    /// What the launcher's admin connections (state dumps, topology) present.
    pub admin: TlsFiles,
    nodes: Vec<Node>,
}

/// A node's stdout lines before it serves: an optional `... metrics on ADDR`, then
/// `... listening on ADDR`.
const START_LINES_MAX: usize = 4;

/// What a started node printed about itself.
struct Started {
    process: Child,
    addr: SocketAddr,
    metrics: Option<SocketAddr>,
}

/// Starts `args` and waits for its `... listening on ADDR` line on stdout (reading its
/// `... metrics on ADDR` line on the way). Its stderr goes to `log_file` if given. Later
/// stdout lines that announce leadership go into `leads`.
fn start_node(
    name: &str,
    args: &[String],
    log_file: Option<&Path>,
    leads: Arc<Mutex<Option<Leads>>>,
) -> anyhow::Result<Started> {
    let exe = std::env::current_exe().context("locating the twophase binary")?;
    let stderr = match log_file {
        Some(path) => {
            let file = std::fs::OpenOptions::new().create(true).append(true).open(path);
            Stdio::from(file.with_context(|| format!("opening {}", path.display()))?)
        }
        None => Stdio::inherit(),
    };
    let mut process = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let stdout = process.stdout.take().expect("piped stdout");
    let (lines, line) = crossbeam_channel::bounded(START_LINES_MAX);
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        for _ in 0..START_LINES_MAX {
            let mut next = String::new();
            let _ = reader.read_line(&mut next);
            let done = next.is_empty() || next.contains("listening on ");
            let _ = lines.send(next);
            if done {
                break;
            }
        }
        // Keep draining so the child never blocks on a full pipe.
        let mut next = String::new();
        while reader.read_line(&mut next).is_ok_and(|read| read > 0) {
            if let Some(announced) = Leads::parse(&next) {
                *leads.lock().expect("leads slot") = Some(announced);
            }
            next.clear();
        }
    });
    let seen = where_to_look(log_file);
    let deadline = Instant::now() + START_TIMEOUT;
    let mut metrics = None;
    loop {
        let next = match line.recv_deadline(deadline) {
            Ok(next) if !next.is_empty() => next,
            _ => {
                let status = process.try_wait().ok().flatten();
                reap(&mut process);
                bail!("{name} did not start (exit status {status:?}); see its messages {seen}");
            }
        };
        let printed = |marker: &str| next.trim().rsplit_once(marker).and_then(|(_, addr)| addr.parse().ok());
        if let Some(addr) = printed(" metrics on ") {
            metrics = Some(addr);
        } else if let Some(addr) = printed("listening on ") {
            return Ok(Started { process, addr, metrics });
        } else {
            reap(&mut process);
            bail!("{name} printed {next:?}, not its address");
        }
    }
}

fn where_to_look(log_file: Option<&Path>) -> String {
    log_file.map_or_else(|| "above".to_string(), |path| format!("in {}", path.display()))
}

/// SIGKILL (a no-op if it already exited) and wait, so no zombie is left.
fn reap(process: &mut Child) {
    let _ = process.kill();
    let _ = process.wait();
}

/// `args` with the value after `flag` replaced by `value`.
fn with_flag(mut args: Vec<String>, flag: &str, value: String) -> Vec<String> {
    if let Some(at) = args.iter().position(|arg| arg == flag) {
        args[at + 1] = value;
    }
    args
}

impl Node {
    /// Starts a node and makes its listen (and metrics) address concrete in `args`.
    fn start(name: &str, args: Vec<String>, log_dir: Option<&Path>) -> anyhow::Result<Node> {
        let log_file = log_dir.map(|dir| dir.join(format!("{name}.log")));
        let leads = Arc::new(Mutex::new(None));
        let started = start_node(name, &args, log_file.as_deref(), leads.clone())?;
        let mut args = with_flag(args, "--listen", started.addr.to_string());
        if let Some(metrics) = started.metrics {
            args = with_flag(args, "--metrics-listen", metrics.to_string());
        }
        let process = Some(started.process);
        Ok(Node {
            name: name.to_string(),
            args,
            addr: started.addr,
            metrics: started.metrics,
            log_file,
            process,
            leads,
        })
    }

    fn signal(&self, signal: i32) {
        let Some(process) = &self.process else { return };
        // SAFETY: kill(2) with a pid we spawned and have not reaped; no memory is involved.
        unsafe {
            libc::kill(process.id() as i32, signal);
        }
    }
}

/// Where a cluster keeps its CA and certificates.
pub fn certs_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("certs")
}

/// What `role`/`name` of the cluster presents: its certificate in [`certs_dir`], or nothing.
fn identity(options: &ClusterOptions, role: Role, name: &str) -> TlsFiles {
    if options.plaintext {
        return TlsFiles::InsecurePlaintext;
    }
    let dir = certs_dir(&options.data_dir);
    let (cert, key) = certs::cert_paths(&dir, role, name);
    TlsFiles::in_dir(&dir, cert, key)
}

/// Makes the CA (or reuses the one there) and the certificate of every node, of the
/// launcher's client and of its admin.
fn make_certs(options: &ClusterOptions) -> anyhow::Result<()> {
    if options.plaintext {
        return Ok(());
    }
    let mut holders: Vec<(Role, String)> =
        coordinator_names(options.coordinators).into_iter().map(|name| (Role::Coordinator, name)).collect();
    holders.extend((1..=options.participants).map(|index| (Role::Participant, format!("p{index}"))));
    holders.push((Role::Client, CLIENT_NAME.into()));
    holders.push((Role::Admin, ADMIN_NAME.into()));
    certs::make_all(&certs_dir(&options.data_dir), &options.cluster, &holders)
        .context("making the cluster's certificates")?;
    Ok(())
}

/// Refuses a coordinator count that is not a usable Raft group here: odd (an even group
/// tolerates no more failures than the odd one below it) and 1..=[`COORDINATORS_MAX`].
pub fn check_coordinators(coordinators: u16) -> anyhow::Result<()> {
    ensure!(
        (1..=COORDINATORS_MAX).contains(&coordinators) && coordinators % 2 == 1,
        "--coordinators {coordinators}: must be odd, from 1 to {COORDINATORS_MAX}"
    );
    Ok(())
}

/// The coordinators' names: c1..cN.
pub fn coordinator_names(coordinators: u16) -> Vec<String> {
    (1..=coordinators).map(|index| format!("c{index}")).collect()
}

/// A group member's listen address, fixed before any member starts: `listen` for the first
/// one if it names a port, otherwise a free port on its host ([`ports::free_port`]).
fn member_addr(listen: SocketAddr, index: usize) -> anyhow::Result<SocketAddr> {
    if index == 0 && listen.port() != 0 {
        return Ok(listen);
    }
    ports::free_port(listen.ip()).context("finding a free port")
}

/// The arguments every node of the cluster gets: its data directory, the cluster-wide
/// storage options, its own certificate (or `--insecure-plaintext`) and its metrics port
/// (free now and below the ephemeral range, as the listen ports: it is kept across
/// restarts).
fn common_node_args(options: &ClusterOptions, role: Role, name: &str) -> anyhow::Result<Vec<String>> {
    let data_dir = options.data_dir.join(name);
    let mut args =
        vec!["--data-dir".to_string(), data_dir.display().to_string(), "--cluster".into(), options.cluster.clone()];
    args.extend(identity(options, role, name).to_args());
    if options.unsafe_no_fsync {
        args.push("--unsafe-no-fsync".into());
    }
    if let Some(interval_us) = options.group_interval_us {
        args.extend(["--group-interval-us".to_string(), interval_us.to_string()]);
    }
    args.extend(options.trace.to_args());
    if options.metrics {
        args.extend(["--metrics-listen".to_string(), free_loopback_addr()?.to_string()]);
    }
    Ok(args)
}

/// A coordinator's command line: its participants and, in a group, every member (`peers`,
/// itself included; empty for a single coordinator).
fn coordinator_args(
    options: &ClusterOptions,
    name: &str,
    listen: SocketAddr,
    participants: &[(String, SocketAddr)],
    peers: &[(String, SocketAddr)],
) -> anyhow::Result<Vec<String>> {
    let mut args = vec!["coordinator".to_string(), "--id".into(), name.into(), "--listen".into(), listen.to_string()];
    args.extend(common_node_args(options, Role::Coordinator, name)?);
    args.extend(options.protocol.node_args());
    for (participant, addr) in participants {
        args.push("--participant".into());
        args.push(format!("{participant}={addr}"));
    }
    for (member, addr) in peers {
        args.push("--peer".into());
        args.push(format!("{member}={addr}"));
    }
    Ok(args)
}

/// The participants' addresses, fixed before any starts: free loopback ports below the
/// kernel's ephemeral range ([`ports::free_port`]). Fixed, because under 3PC every
/// participant dials every other; below that range, because a killed participant restarts
/// at its address (chaos, the supervisor), and a port of that range can meanwhile be handed
/// to any outgoing connection, its coordinator's redials included.
fn participant_addrs(options: &ClusterOptions) -> anyhow::Result<Vec<(String, SocketAddr)>> {
    (1..=options.participants).map(|index| Ok((format!("p{index}"), free_loopback_addr()?))).collect()
}

fn free_loopback_addr() -> anyhow::Result<SocketAddr> {
    ports::free_port(std::net::Ipv4Addr::LOCALHOST.into()).context("finding a free port")
}

/// Refuses what 3PC does not run with: a coordinator group or database participants.
pub fn check_protocol(options: &ClusterOptions) -> anyhow::Result<()> {
    if options.protocol == Protocol::ThreePc {
        ensure!(options.coordinators == 1, "--protocol 3pc runs one coordinator (no --coordinators group)");
        ensure!(options.database_participants.is_empty(), "--protocol 3pc runs built-in-store participants only");
        ensure!(options.trace.to_args().is_empty(), "--protocol 3pc nodes do not trace yet");
    }
    Ok(())
}

/// Makes `dir` hold this run's node logs only: created if missing, a previous run's
/// `NAME.log` files removed (a node restarted within the run appends to its own, so a
/// file left from the last run would run on into this one's, and a node the last run had
/// and this one has not would leave a stale file). Nothing else in `dir` is touched.
fn fresh_log_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry.with_context(|| format!("listing {}", dir.display()))?.path();
        if path.extension().is_some_and(|ext| ext == "log") && path.is_file() {
            std::fs::remove_file(&path).with_context(|| format!("removing the last run's {}", path.display()))?;
        }
    }
    Ok(())
}

impl LocalCluster {
    pub fn start(options: &ClusterOptions) -> anyhow::Result<LocalCluster> {
        make_certs(options)?;
        if let Some(dir) = &options.log_dir {
            fresh_log_dir(dir)?;
        }
        let log_dir = options.log_dir.as_deref();
        check_coordinators(options.coordinators)?;
        check_protocol(options)?;
        let mut cluster = LocalCluster {
            coordinator: options.listen,
            coordinators: Vec::new(),
            participants: Vec::new(),
            lookup: LeaderLookup::default(),
            client: identity(options, Role::Client, CLIENT_NAME),
            admin: identity(options, Role::Admin, ADMIN_NAME),
            nodes: Vec::new(),
        };
        let participant_addrs = participant_addrs(options)?;
        for (index, (name, listen)) in (1u16..).zip(&participant_addrs) {
            let name = name.clone();
            let mut args =
                vec!["participant".to_string(), "--id".into(), name.clone(), "--listen".into(), listen.to_string()];
            args.extend(common_node_args(options, Role::Participant, &name)?);
            args.extend(options.protocol.node_args());
            if options.protocol == Protocol::ThreePc {
                for (peer, addr) in participant_addrs.iter().filter(|(peer, _)| *peer != name) {
                    args.extend(["--threepc-peer".to_string(), format!("{peer}={addr}")]);
                }
            }
            if let Some((_, flags)) = options.database_participants.iter().find(|(at, _)| *at == index) {
                args.extend(flags.iter().cloned());
            }
            let node = Node::start(&name, args, log_dir)?;
            cluster.participants.push((name, node.addr));
            cluster.nodes.push(node);
        }
        if options.coordinators == 1 {
            let listen = member_addr(options.listen, 0)?;
            let args = coordinator_args(options, COORDINATOR_NAME, listen, &cluster.participants, &[])?;
            let node = Node::start(COORDINATOR_NAME, args, log_dir)?;
            cluster.coordinator = node.addr;
            cluster.coordinators.push((node.name.clone(), node.addr));
            cluster.nodes.push(node);
            return Ok(cluster);
        }
        let names = coordinator_names(options.coordinators);
        let addrs =
            (0..names.len()).map(|index| member_addr(options.listen, index)).collect::<anyhow::Result<Vec<_>>>()?;
        let peers: Vec<(String, SocketAddr)> = names.iter().cloned().zip(addrs.iter().copied()).collect();
        for (name, addr) in &peers {
            let args = coordinator_args(options, name, *addr, &cluster.participants, &peers)?;
            let node = Node::start(name, args, log_dir)?;
            cluster.lookup.add(node.addr, node.leads.clone());
            cluster.coordinators.push((node.name.clone(), node.addr));
            cluster.nodes.push(node);
        }
        cluster.coordinator = cluster.wait_for_leader(ELECTION_TIMEOUT)?;
        Ok(cluster)
    }

    /// The address of the coordinator that serves transactions now: the single coordinator,
    /// or the running group member that announced the highest term. This is the one place
    /// that finds the leader (a client that follows `NotLeader` replies will replace it).
    pub fn leader_addr(&self) -> Option<SocketAddr> {
        if self.coordinators.len() > 1 {
            return self.lookup.leader_addr();
        }
        let (name, _) = self.leader()?;
        self.coordinators.iter().find(|(member, _)| *member == name).map(|(_, addr)| *addr)
    }

    /// Every coordinator's address (c1..cN): where a client of the cluster connects; it finds
    /// the leader itself.
    pub fn coordinator_addrs(&self) -> Vec<SocketAddr> {
        self.coordinators.iter().map(|(_, addr)| *addr).collect()
    }

    /// The leader's name and announcement (see [`leader_addr`](Self::leader_addr)); a
    /// single coordinator has no announcement and leads whenever it runs.
    fn leader(&self) -> Option<(String, Option<Leads>)> {
        let running = self.coordinator_nodes().filter(|node| node.process.is_some());
        if self.coordinators.len() == 1 {
            return running.map(|node| (node.name.clone(), None)).next();
        }
        running
            .filter_map(|node| Some((node.name.clone(), (*node.leads.lock().expect("leads slot"))?)))
            .max_by_key(|(_, leads)| leads.term)
            .map(|(name, leads)| (name, Some(leads)))
    }

    /// Waits until some coordinator leads; its address.
    pub fn wait_for_leader(&self, timeout: Duration) -> anyhow::Result<SocketAddr> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(addr) = self.leader_addr() {
                return Ok(addr);
            }
            ensure!(Instant::now() < deadline, "no coordinator announced that it leads within {timeout:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every coordinator's name, address and role as last seen.
    pub fn coordinator_roles(&self) -> Vec<(String, SocketAddr, CoordinatorRole)> {
        let leader = self.leader();
        self.coordinator_nodes()
            .map(|node| {
                let role = match (&leader, &node.process) {
                    (_, None) => CoordinatorRole::Down,
                    (Some((name, Some(leads))), _) if *name == node.name => CoordinatorRole::Leader(*leads),
                    (Some((name, None)), _) if *name == node.name => CoordinatorRole::Single,
                    _ => CoordinatorRole::Follower,
                };
                (node.name.clone(), node.addr, role)
            })
            .collect()
    }

    fn coordinator_nodes(&self) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(|node| self.coordinators.iter().any(|(name, _)| *name == node.name))
    }

    /// Every node's name and metrics address (participants in order, then the coordinator),
    /// for the nodes that serve metrics.
    pub fn metrics(&self) -> Vec<(String, SocketAddr)> {
        self.nodes.iter().filter_map(|node| Some((node.name.clone(), node.metrics?))).collect()
    }

    /// The `twophase top` command line that watches this cluster, if its nodes serve metrics:
    /// the coordinator's (a group's leader's) and the participants'.
    pub fn top_command(&self) -> Option<String> {
        let metrics = self.metrics();
        let leader = self.coordinator_roles().into_iter().find_map(|(name, _, role)| match role {
            CoordinatorRole::Leader(_) => Some(name),
            _ => None,
        });
        let coordinator_name = leader.unwrap_or_else(|| COORDINATOR_NAME.to_string());
        let (_, coordinator) = metrics.iter().find(|(name, _)| *name == coordinator_name)?;
        let is_coordinator = |name: &String| self.coordinators.iter().any(|(member, _)| member == name);
        let participants: Vec<String> = metrics
            .iter()
            .filter(|(name, _)| !is_coordinator(name))
            .map(|(name, addr)| format!("{name}={addr}"))
            .collect();
        Some(format!("twophase top --coordinator {coordinator} --metrics {}", participants.join(",")))
    }

    /// Every node's name: the participants in order, then the coordinators.
    pub fn names(&self) -> Vec<String> {
        self.nodes.iter().map(|node| node.name.clone()).collect()
    }

    /// Each running node's name and process id.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.nodes.iter().filter_map(|node| Some((node.name.clone(), node.process.as_ref()?.id()))).collect()
    }

    /// Every node not running: killed, exited and taken by [`take_exited`](Self::take_exited),
    /// or whose [`restart`](Self::restart) failed.
    pub fn down(&self) -> Vec<String> {
        self.nodes.iter().filter(|node| node.process.is_none()).map(|node| node.name.clone()).collect()
    }

    /// A node that exited on its own, if any (one killed by [`kill`](Self::kill) is not).
    pub fn exited(&mut self) -> Option<String> {
        self.nodes.iter_mut().find_map(|node| match node.process.as_mut()?.try_wait() {
            Ok(Some(status)) => Some(format!("{} exited ({status})", node.name)),
            _ => None,
        })
    }

    /// Every node that exited on its own, marked down (so [`restart`](Self::restart) may
    /// start it again): its name and a line saying how it exited.
    pub fn take_exited(&mut self) -> Vec<(String, String)> {
        let mut exited = Vec::new();
        for node in &mut self.nodes {
            let Some(process) = node.process.as_mut() else { continue };
            if let Ok(Some(status)) = process.try_wait() {
                exited.push((node.name.clone(), format!("{} (pid {}) exited ({status})", node.name, process.id())));
                node.process = None;
            }
        }
        exited
    }

    fn node(&mut self, name: &str) -> anyhow::Result<&mut Node> {
        self.nodes.iter_mut().find(|node| node.name == name).with_context(|| format!("no node named {name}"))
    }

    /// Kills `name` with SIGKILL (no chance to flush or say goodbye) and reaps it. Returns
    /// the pid it had.
    pub fn kill(&mut self, name: &str) -> anyhow::Result<u32> {
        let node = self.node(name)?;
        let mut process = node.process.take().with_context(|| format!("{name} is not running"))?;
        let pid = process.id();
        if let Ok(Some(status)) = process.try_wait() {
            bail!("{name} (pid {pid}) had already exited ({status})");
        }
        reap(&mut process);
        let addr = node.addr;
        self.lookup.set(addr, None);
        Ok(pid)
    }

    /// Starts a killed node again with the same arguments, hence the same data directory
    /// and the same address, and waits for its `listening on` line.
    pub fn restart(&mut self, name: &str) -> anyhow::Result<Restarted> {
        let node = self.node(name)?;
        if node.process.is_some() {
            bail!("{name} is running; kill it first");
        }
        // A fresh slot: what the killed process announced is no claim of the new one.
        node.leads = Arc::new(Mutex::new(None));
        let Started { mut process, addr, .. } =
            start_node(name, &node.args, node.log_file.as_deref(), node.leads.clone())?;
        let listening = Instant::now();
        if addr != node.addr {
            reap(&mut process);
            bail!("{name} came back on {addr}, not on its address {}", node.addr);
        }
        let pid = process.id();
        node.process = Some(process);
        let (addr, slot) = (node.addr, node.leads.clone());
        self.lookup.set(addr, Some(slot));
        Ok(Restarted { pid, listening })
    }

    /// Asks every node to stop (SIGTERM), waits, and kills what does not stop in time.
    pub fn stop(&mut self) {
        for node in &self.nodes {
            node.signal(libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        for node in &mut self.nodes {
            let Some(process) = node.process.as_mut() else { continue };
            while Instant::now() < deadline && matches!(process.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(process.try_wait(), Ok(None)) {
                eprintln!("{} did not stop in {STOP_TIMEOUT:?}; killing it", node.name);
            }
            reap(process);
        }
        self.nodes.clear();
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn options(unsafe_no_fsync: bool, group_interval_us: Option<u64>, plaintext: bool) -> ClusterOptions {
        ClusterOptions {
            participants: 3,
            coordinators: 1,
            data_dir: "/data".into(),
            listen: "127.0.0.1:0".parse().expect("address"),
            cluster: "demo".into(),
            unsafe_no_fsync,
            group_interval_us,
            plaintext,
            trace: Default::default(),
            metrics: false,
            log_dir: None,
            database_participants: Vec::new(),
            protocol: Protocol::TwoPc,
        }
    }

    #[test]
    fn a_new_run_starts_its_node_logs_afresh_and_leaves_other_files() {
        let report = tempfile::tempdir().unwrap();
        let dir = report.path().join("logs");
        fresh_log_dir(&dir).unwrap();
        assert!(dir.is_dir(), "created when missing");
        for (name, text) in [("c1.log", "last run"), ("p4.log", "a node this run has not"), ("notes.txt", "mine")] {
            std::fs::write(dir.join(name), text).unwrap();
        }
        fresh_log_dir(&dir).unwrap();
        let mut left: Vec<String> =
            std::fs::read_dir(&dir).unwrap().map(|entry| entry.unwrap().file_name().into_string().unwrap()).collect();
        left.sort();
        assert_eq!(left, ["notes.txt"]);
    }

    #[test]
    fn a_3pc_cluster_refuses_what_3pc_does_not_run() {
        let threepc = ClusterOptions { protocol: Protocol::ThreePc, ..options(false, None, true) };
        assert!(check_protocol(&threepc).is_ok());
        assert!(check_protocol(&ClusterOptions { coordinators: 3, ..threepc.clone() }).is_err());
        let database = ClusterOptions { database_participants: vec![(1, vec!["--backend".into()])], ..threepc };
        assert!(check_protocol(&database).is_err());
    }

    #[test]
    fn nodes_get_the_cluster_wide_storage_options() {
        let args = common_node_args(&options(true, Some(2500), true), Role::Participant, "p1").unwrap();
        assert_eq!(
            args,
            [
                "--data-dir",
                "/data/p1",
                "--cluster",
                "demo",
                "--insecure-plaintext",
                "--unsafe-no-fsync",
                "--group-interval-us",
                "2500"
            ]
        );
    }

    #[test]
    fn every_node_gets_its_own_certificate_from_the_cluster_ca() {
        let args = common_node_args(&options(false, None, false), Role::Coordinator, "c1").unwrap();
        assert_eq!(
            args,
            [
                "--data-dir",
                "/data/c1",
                "--cluster",
                "demo",
                "--ca",
                "/data/certs/ca.pem",
                "--cert",
                "/data/certs/coordinator-c1.pem",
                "--key",
                "/data/certs/coordinator-c1.key"
            ]
        );
    }

    #[test]
    fn metrics_ask_for_a_port_fixed_before_the_node_starts() {
        let options = ClusterOptions { metrics: true, ..options(false, None, true) };
        let args = common_node_args(&options, Role::Coordinator, "c1").unwrap();
        assert_eq!(args[args.len() - 2], "--metrics-listen");
        assert_fixed_loopback(args[args.len() - 1].parse().unwrap());
    }

    /// A port chosen by the launcher ([`ports::free_port`], whose own test checks that it
    /// lies below the ephemeral range), not left to the kernel at bind time.
    fn assert_fixed_loopback(addr: SocketAddr) {
        assert!(addr.ip().is_loopback() && addr.port() != 0, "{addr}");
    }

    #[test]
    fn every_participant_gets_a_port_fixed_before_it_starts() {
        for protocol in [Protocol::TwoPc, Protocol::ThreePc] {
            let addrs = participant_addrs(&ClusterOptions { protocol, ..options(false, None, true) }).unwrap();
            let names: Vec<&str> = addrs.iter().map(|(name, _)| name.as_str()).collect();
            assert_eq!(names, ["p1", "p2", "p3"]);
            addrs.iter().for_each(|(_, addr)| assert_fixed_loopback(*addr));
            let mut ports: Vec<u16> = addrs.iter().map(|(_, addr)| addr.port()).collect();
            ports.sort_unstable();
            ports.dedup();
            assert_eq!(ports.len(), 3, "{addrs:?}");
        }
    }

    #[test]
    fn the_node_command_lines_parse() {
        for plaintext in [false, true] {
            let common = common_node_args(&options(false, Some(0), plaintext), Role::Participant, "p1").unwrap();
            let participant = ["twophase", "participant", "--id", "p1", "--listen", "127.0.0.1:0"];
            let argv = participant.iter().map(|a| a.to_string()).chain(common);
            crate::cli::Cli::try_parse_from(argv).expect("a participant command line");
        }
    }

    #[test]
    fn the_certificates_are_made_for_every_node_and_the_launcher() {
        let dir = tempfile::tempdir().unwrap();
        let options = ClusterOptions { data_dir: dir.path().to_path_buf(), ..options(false, None, false) };
        make_certs(&options).unwrap();
        let holders = [
            (Role::Coordinator, "c1"),
            (Role::Participant, "p1"),
            (Role::Participant, "p3"),
            (Role::Client, CLIENT_NAME),
            (Role::Admin, ADMIN_NAME),
        ];
        for (role, name) in holders {
            let TlsFiles::Tls { ca, cert, key } = identity(&options, role, name) else { panic!("plaintext") };
            assert!(ca.exists() && cert.exists() && key.exists(), "{role} {name}");
        }
        let plain = ClusterOptions { plaintext: true, ..options };
        assert_eq!(identity(&plain, Role::Client, CLIENT_NAME), TlsFiles::InsecurePlaintext);
    }

    #[test]
    fn a_leaders_announcement_is_read_from_its_stdout_line() {
        // The line src/node/replicated.rs prints each time a member becomes leader.
        let line = "twophase coordinator c2 leads term 7 with epoch 9\n";
        assert_eq!(Leads::parse(line), Some(Leads { term: 7, epoch: 9 }));
        assert_eq!(Leads::parse("twophase coordinator c2 listening on 127.0.0.1:7000"), None);
        assert_eq!(Leads::parse("twophase coordinator c2 leads term x with epoch 9"), None);
    }

    #[test]
    fn the_leader_is_the_running_member_that_announced_the_highest_term() {
        let lookup = LeaderLookup::default();
        let addr = |port: u16| SocketAddr::from(([127, 0, 0, 1], port));
        let slots: Vec<LeadsSlot> = (0..3).map(|_| Arc::new(Mutex::new(None))).collect();
        for (port, slot) in (7000..).zip(&slots) {
            lookup.add(addr(port), slot.clone());
        }
        assert_eq!(lookup.leader_addr(), None, "nobody announced yet");
        *slots[0].lock().unwrap() = Some(Leads { term: 1, epoch: 1 });
        *slots[2].lock().unwrap() = Some(Leads { term: 2, epoch: 2 });
        assert_eq!(lookup.leader_addr(), Some(addr(7002)), "a deposed leader's older term loses");
        lookup.set(addr(7002), None);
        assert_eq!(lookup.leader_addr(), Some(addr(7000)), "a member that is down never leads");
        lookup.set(addr(7002), Some(Arc::new(Mutex::new(None))));
        lookup.set(addr(9999), None);
        assert_eq!(lookup.leader_addr(), Some(addr(7000)), "a restarted process has announced nothing yet");
    }

    #[test]
    fn a_group_is_odd_and_at_most_seven() {
        for good in [1, 3, 5, 7] {
            check_coordinators(good).unwrap();
        }
        for bad in [0, 2, 4, 9] {
            let err = check_coordinators(bad).unwrap_err().to_string();
            assert!(err.contains("must be odd, from 1 to 7"), "{err}");
        }
    }

    #[test]
    fn every_member_lists_the_whole_group_and_the_participants() {
        let options = ClusterOptions { coordinators: 3, ..options(false, None, false) };
        let participants = vec![("p1".to_string(), "127.0.0.1:7101".parse().unwrap())];
        let names = coordinator_names(3);
        let peers: Vec<(String, SocketAddr)> = names
            .iter()
            .cloned()
            .zip(["127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002"])
            .map(|(n, a)| (n, a.parse().unwrap()))
            .collect();
        let args = coordinator_args(&options, "c2", peers[1].1, &participants, &peers).unwrap();
        let joined = args.join(" ");
        for expected in [
            "--id c2 --listen 127.0.0.1:7001",
            "--cert /data/certs/coordinator-c2.pem",
            "--participant p1=127.0.0.1:7101",
            "--peer c1=127.0.0.1:7000 --peer c2=127.0.0.1:7001 --peer c3=127.0.0.1:7002",
        ] {
            assert!(joined.contains(expected), "{expected:?} not in {joined}");
        }
        let argv = std::iter::once("twophase".to_string()).chain(args);
        crate::cli::Cli::try_parse_from(argv).expect("a group member's command line");
        let single = coordinator_args(&options, "c1", peers[0].1, &participants, &[]).unwrap();
        assert!(!single.contains(&"--peer".to_string()), "{single:?}");
    }

    /// Also a single coordinator's address (member 0): a port the operator names is kept,
    /// port 0 becomes a port fixed before it starts.
    #[test]
    fn a_fixed_listen_address_goes_to_the_first_member_only() {
        let fixed: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        assert_eq!(member_addr(fixed, 0).unwrap(), fixed);
        let other = member_addr(fixed, 1).unwrap();
        assert_ne!(other.port(), 0);
        assert_ne!(other, fixed);
        assert_ne!(member_addr("127.0.0.1:0".parse().unwrap(), 0).unwrap().port(), 0);
    }

    #[test]
    fn every_coordinator_of_a_group_gets_a_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let options =
            ClusterOptions { data_dir: dir.path().to_path_buf(), coordinators: 3, ..options(false, None, false) };
        make_certs(&options).unwrap();
        for name in coordinator_names(3) {
            let TlsFiles::Tls { cert, .. } = identity(&options, Role::Coordinator, &name) else { panic!("plaintext") };
            assert!(cert.exists(), "{name}");
        }
    }

    #[test]
    fn the_trace_flags_reach_every_node() {
        let mut traced = options(false, Some(0), true);
        traced.trace = crate::trace::TraceArgs {
            trace_sample: Some(0.5),
            otlp_endpoint: Some("http://h:4318".into()),
            otlp_ca: None,
        };
        let common = common_node_args(&traced, Role::Participant, "p1").unwrap();
        let flags = ["--trace-sample", "0.5", "--otlp-endpoint", "http://h:4318"].map(String::from);
        assert!(common.windows(flags.len()).any(|window| window == flags), "{common:?}");
        let participant = ["twophase", "participant", "--id", "p1", "--listen", "127.0.0.1:0"];
        let argv = participant.iter().map(|a| a.to_string()).chain(common);
        crate::cli::Cli::try_parse_from(argv).expect("a participant command line");
    }
}
