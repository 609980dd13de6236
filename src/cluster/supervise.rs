//! `twophase cluster` in the foreground: starts the cluster, prints where everything is,
//! and runs until Ctrl-C. A node that dies (a SIGKILL, a crash, a stop nobody asked the
//! launcher for) is restarted at once with the same arguments, hence the same data
//! directory and address, and recovers from its log, as a service manager would do. A node
//! that keeps dying ([`RESTARTS_MAX`] times within [`RESTART_WINDOW`]) dies for a reason a
//! restart does not cure (a full disk, a corrupt log, a bad flag): the cluster stops then,
//! with a failing exit status, rather than restart it forever.

use std::collections::{HashMap, VecDeque};
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;

use super::{ClusterOptions, CoordinatorRole, LocalCluster};
use crate::client_config::ClientFile;

/// Restarts of one node within [`RESTART_WINDOW`] at most; one more death stops the cluster.
const RESTARTS_MAX: usize = 5;
/// How far back [`RESTARTS_MAX`] counts.
const RESTART_WINDOW: Duration = Duration::from_secs(60);
/// How often the launcher looks for nodes that died.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// `twophase cluster`: runs until Ctrl-C, restarting nodes that die, then stops every node.
/// Fails when a node died, or failed to start, too often.
pub fn run_until_stopped(mut options: ClusterOptions) -> anyhow::Result<ExitCode> {
    let stop = crate::node::stop_on_signal()?;
    std::fs::create_dir_all(&options.data_dir).with_context(|| format!("creating {}", options.data_dir.display()))?;
    // Absolute, so that client.toml works from any directory.
    options.data_dir = std::fs::canonicalize(&options.data_dir)
        .with_context(|| format!("resolving {}", options.data_dir.display()))?;
    let mut cluster = LocalCluster::start(&options)?;
    // Written before the addresses are printed: whoever waits for them may use it at once.
    let config = options.data_dir.join("client.toml");
    let coordinators = cluster.coordinator_addrs();
    ClientFile::for_cluster(&coordinators, &options.cluster, &cluster.client, &cluster.admin).write(&config)?;
    for (name, addr) in &cluster.participants {
        println!("participant {name} listening on {addr}");
    }
    print_coordinators(&cluster);
    for (name, addr) in cluster.metrics() {
        println!("metrics of {name} on http://{addr}/metrics");
    }
    if let Some(top) = cluster.top_command() {
        println!("watch it: {top}");
    }
    println!("cluster running; Ctrl-C stops it. Submit transactions with:");
    println!("  twophase tx --config {} add p1:alice=100", config.display());
    let mut restarts = RestartBudget::default();
    let mut code = ExitCode::SUCCESS;
    while !stop.load(Ordering::SeqCst) {
        if let Err(err) = restart_the_dead(&mut cluster, &mut restarts) {
            eprintln!("error: {err:#}; stopping the cluster");
            code = ExitCode::FAILURE;
            break;
        }
        std::thread::sleep(POLL_INTERVAL);
    }
    cluster.stop();
    println!("cluster stopped");
    Ok(code)
}

/// Restarts every node that is down: those that exited since the last look, and those
/// whose restart failed before (killed while it started, say). One attempt each per look,
/// every attempt counted against the node's budget; an error once a node may not be
/// restarted again.
fn restart_the_dead(cluster: &mut LocalCluster, restarts: &mut RestartBudget) -> anyhow::Result<()> {
    for (_, exited) in cluster.take_exited() {
        eprintln!("{exited}");
    }
    for name in cluster.down() {
        anyhow::ensure!(
            restarts.allow(&name, Instant::now()),
            "{name} is down again; it was restarted {RESTARTS_MAX} times within {RESTART_WINDOW:?}: not again"
        );
        match cluster.restart(&name) {
            Ok(restarted) => eprintln!("restarted {name} (pid {}), it recovers from its log", restarted.pid),
            Err(err) => eprintln!("restarting {name} failed, trying again: {err:#}"),
        }
    }
    Ok(())
}

/// Each node's restarts within the last [`RESTART_WINDOW`] (a map bounded by the nodes of
/// the cluster, each queue by [`RESTARTS_MAX`]).
#[derive(Default)]
struct RestartBudget {
    recent: HashMap<String, VecDeque<Instant>>,
}

impl RestartBudget {
    /// Counts a restart of `name` at `now` and says yes, unless it already had
    /// [`RESTARTS_MAX`] within the window before `now`.
    fn allow(&mut self, name: &str, now: Instant) -> bool {
        let recent = self.recent.entry(name.to_string()).or_default();
        while recent.front().is_some_and(|at| now.duration_since(*at) >= RESTART_WINDOW) {
            recent.pop_front();
        }
        if recent.len() >= RESTARTS_MAX {
            return false;
        }
        recent.push_back(now);
        assert!(recent.len() <= RESTARTS_MAX, "the budget holds at most RESTARTS_MAX restarts");
        true
    }
}

/// One line per coordinator (with its role in a group), then the leader.
fn print_coordinators(cluster: &LocalCluster) {
    let roles = cluster.coordinator_roles();
    for (name, addr, role) in &roles {
        match role {
            CoordinatorRole::Single => println!("coordinator {name} listening on {addr}"),
            CoordinatorRole::Leader(leads) => {
                println!("coordinator {name} listening on {addr} (leader, term {}, epoch {})", leads.term, leads.epoch)
            }
            CoordinatorRole::Follower => println!("coordinator {name} listening on {addr} (follower)"),
            CoordinatorRole::Down => println!("coordinator {name} on {addr} is down"),
        }
    }
    if roles.len() > 1 {
        match roles.iter().find(|(_, _, role)| matches!(role, CoordinatorRole::Leader(_))) {
            Some((name, addr, _)) => {
                println!(
                    "leader: coordinator {name} at {addr} (client.toml lists every member; clients find the leader)"
                )
            }
            None => println!("leader: none right now"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_restarted_five_times_a_minute_at_most_each_node_on_its_own_count() {
        let start = Instant::now();
        let mut budget = RestartBudget::default();
        for second in 0..RESTARTS_MAX as u64 {
            assert!(budget.allow("p1", start + Duration::from_secs(second)), "restart {second} of p1");
        }
        let sixth = start + Duration::from_secs(30);
        assert!(!budget.allow("p1", sixth), "a sixth death within the minute is refused");
        assert!(budget.allow("p2", sixth), "p2 has its own budget");
        // Once the first restart is a window old, one more is allowed, and only one.
        let later = start + RESTART_WINDOW;
        assert!(budget.allow("p1", later));
        assert!(!budget.allow("p1", later));
    }
}
