//! `twophase cluster`: a coordinator and N participants as child processes of this one,
//! on loopback, each with its own data directory. Also used by the demo and by tests.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

const START_TIMEOUT: Duration = Duration::from_secs(30);
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub participants: u16,
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    pub cluster: String,
    pub unsafe_no_fsync: bool,
}

struct Node {
    name: String,
    process: Child,
}

pub struct LocalCluster {
    pub coordinator: SocketAddr,
    pub participants: Vec<(String, SocketAddr)>,
    nodes: Vec<Node>,
}

/// Starts `args` and waits for its `... listening on ADDR` line on stdout.
fn start_node(name: &str, args: &[String]) -> anyhow::Result<(Node, SocketAddr)> {
    let exe = std::env::current_exe().context("locating the twophase binary")?;
    let mut process = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .with_context(|| format!("starting {name}"))?;
    let stdout = process.stdout.take().expect("piped stdout");
    let (lines, line) = crossbeam_channel::bounded(1);
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut first = String::new();
        let _ = reader.read_line(&mut first);
        let _ = lines.send(first);
        // Keep draining so the child never blocks on a full pipe.
        std::io::copy(&mut reader, &mut std::io::sink()).ok();
    });
    let mut node = Node { name: name.to_string(), process };
    let first = match line.recv_timeout(START_TIMEOUT) {
        Ok(first) if !first.is_empty() => first,
        _ => {
            let status = node.process.try_wait().ok().flatten();
            node.kill();
            bail!("{name} did not start (exit status {status:?}); see its messages above");
        }
    };
    let addr = first
        .trim()
        .rsplit_once("listening on ")
        .and_then(|(_, addr)| addr.parse().ok())
        .with_context(|| format!("{name} printed {first:?}, not its address"))?;
    Ok((node, addr))
}

impl Node {
    fn signal(&self, signal: i32) {
        // SAFETY: kill(2) with a pid we spawned and still own; no memory is involved.
        unsafe {
            libc::kill(self.process.id() as i32, signal);
        }
    }

    fn kill(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

impl LocalCluster {
    pub fn start(options: &ClusterOptions) -> anyhow::Result<LocalCluster> {
        let mut cluster = LocalCluster { coordinator: options.listen, participants: Vec::new(), nodes: Vec::new() };
        let common = |data_dir: &Path| {
            let mut args = vec![
                "--data-dir".to_string(),
                data_dir.display().to_string(),
                "--cluster".into(),
                options.cluster.clone(),
            ];
            if options.unsafe_no_fsync {
                args.push("--unsafe-no-fsync".into());
            }
            args
        };
        for index in 1..=options.participants {
            let name = format!("p{index}");
            let mut args =
                vec!["participant".to_string(), "--id".into(), name.clone(), "--listen".into(), "127.0.0.1:0".into()];
            args.extend(common(&options.data_dir.join(&name)));
            let (node, addr) = start_node(&name, &args)?;
            cluster.nodes.push(node);
            cluster.participants.push((name, addr));
        }
        let mut args =
            vec!["coordinator".to_string(), "--id".into(), "c1".into(), "--listen".into(), options.listen.to_string()];
        args.extend(common(&options.data_dir.join("c1")));
        for (name, addr) in &cluster.participants {
            args.push("--participant".into());
            args.push(format!("{name}={addr}"));
        }
        let (node, addr) = start_node("c1", &args)?;
        cluster.nodes.push(node);
        cluster.coordinator = addr;
        Ok(cluster)
    }

    /// Each node's name and process id.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.nodes.iter().map(|node| (node.name.clone(), node.process.id())).collect()
    }

    /// A node that exited on its own, if any.
    pub fn exited(&mut self) -> Option<String> {
        self.nodes.iter_mut().find_map(|node| match node.process.try_wait() {
            Ok(Some(status)) => Some(format!("{} exited ({status})", node.name)),
            _ => None,
        })
    }

    /// Asks every node to stop (SIGTERM), waits, and kills what does not stop in time.
    pub fn stop(&mut self) {
        for node in &self.nodes {
            node.signal(libc::SIGTERM);
        }
        let deadline = Instant::now() + STOP_TIMEOUT;
        for node in &mut self.nodes {
            while Instant::now() < deadline && matches!(node.process.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            if matches!(node.process.try_wait(), Ok(None)) {
                eprintln!("{} did not stop in {STOP_TIMEOUT:?}; killing it", node.name);
            }
            node.kill();
        }
        self.nodes.clear();
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `twophase cluster`: runs until Ctrl-C (or until a node dies), then stops every node.
pub fn run_until_stopped(options: ClusterOptions) -> anyhow::Result<ExitCode> {
    let stop = crate::node::stop_on_signal()?;
    let mut cluster = LocalCluster::start(&options)?;
    for (name, addr) in &cluster.participants {
        println!("participant {name} listening on {addr}");
    }
    println!("coordinator c1 listening on {}", cluster.coordinator);
    println!("cluster running; Ctrl-C stops it");
    let mut code = ExitCode::SUCCESS;
    while !stop.load(Ordering::SeqCst) {
        if let Some(exit) = cluster.exited() {
            eprintln!("error: {exit}; stopping the cluster");
            code = ExitCode::FAILURE;
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.stop();
    println!("cluster stopped");
    Ok(code)
}
