//! `twophase status`: each replica of a coordinator group with its role, term, commit index,
//! applied index and lag, asked over the admin role.
//!
//! The node named by `--coordinator` reports itself and lists the other members; each of
//! them is then asked for its own row (an unreachable one is shown as such). Lag is the
//! leader's commit index minus the member's applied index (entries it has still to apply).
//! A single coordinator answers with no replica: "single coordinator".

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use twophase_net::{ReplicaRole, ReplicaStatus, Security, admin};

use crate::client_config::{ClientFile, resolve_coordinators};
use crate::security::SecurityArgs;

#[derive(Args)]
pub struct StatusArgs {
    /// Client config file (the client.toml `twophase cluster` writes: its admin certificate
    /// is used); flags win over it.
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Any node of the group (or a single coordinator), HOST:PORT; repeat the flag or give
    /// a comma list to try several [default: 127.0.0.1:7000].
    #[arg(long, value_name = "ADDR")]
    coordinator: Vec<String>,
    /// Cluster name [default: local].
    #[arg(long)]
    cluster: Option<String>,
    /// An admin certificate (--ca/--cert/--key), or --insecure-plaintext.
    #[command(flatten)]
    security: SecurityArgs,
}

/// One line of the table: a member and what it said about itself, if it answered.
struct Row {
    name: String,
    address: String,
    own: Option<ReplicaStatus>,
}

/// Exit status: 0 when the table was printed with exactly one leader, 1 otherwise (no
/// leader, or a member unreachable), 2 when no node could be asked.
pub fn run(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let file = ClientFile::read(args.config.as_deref())?;
    let coordinator = match (args.coordinator.is_empty(), &file.coordinator) {
        (false, _) => args.coordinator.join(","),
        (true, Some(from_file)) => from_file.clone(),
        (true, None) => "127.0.0.1:7000".into(),
    };
    let addrs = resolve_coordinators(&[coordinator.as_str()])?;
    let cluster = args.cluster.or(file.cluster.clone()).unwrap_or_else(|| "local".into());
    let security = args.security.resolve(file.admin_security())?.load("this admin")?;
    let Some(first) = first_answer(&addrs, &cluster, &security) else {
        eprintln!("no coordinator of {coordinator} answered");
        return Ok(ExitCode::from(2));
    };
    if first.is_empty() {
        println!("single coordinator");
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Row> = first
        .iter()
        .map(|member| Row {
            name: member.name.clone(),
            address: member.address.clone(),
            own: match member.role {
                ReplicaRole::Unreported => own_row(member, &cluster, &security),
                _ => Some(member.clone()),
            },
        })
        .collect();
    print!("{}", render(&rows));
    let leaders = rows.iter().filter(|row| row.own.as_ref().is_some_and(|own| own.role == ReplicaRole::Leader));
    let healthy = leaders.count() == 1 && rows.iter().all(|row| row.own.is_some());
    Ok(if healthy { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// The first node of `addrs` that answers `Status`.
fn first_answer(addrs: &[SocketAddr], cluster: &str, security: &Security) -> Option<Vec<ReplicaStatus>> {
    addrs.iter().find_map(|addr| match admin::status(*addr, cluster, security) {
        Ok(members) => Some(members),
        Err(err) => {
            eprintln!("{addr}: {err}");
            None
        }
    })
}

/// What `member` says about itself, if it answers.
fn own_row(member: &ReplicaStatus, cluster: &str, security: &Security) -> Option<ReplicaStatus> {
    match admin::status(member.address.as_str(), cluster, security) {
        Ok(answer) => answer.into_iter().find(|row| row.name == member.name && row.role != ReplicaRole::Unreported),
        Err(err) => {
            eprintln!("{} at {}: {err}", member.name, member.address);
            None
        }
    }
}

/// The table, one member a line, with the lag against the leader of the highest term.
fn render(rows: &[Row]) -> String {
    let leader = rows
        .iter()
        .filter_map(|row| row.own.as_ref())
        .filter(|own| own.role == ReplicaRole::Leader)
        .max_by_key(|own| own.term);
    let mut out = format!(
        "{:<12} {:<22} {:<12} {:>6} {:>12} {:>12} {:>8}\n",
        "replica", "address", "role", "term", "commit", "applied", "lag"
    );
    for row in rows {
        let line = match &row.own {
            None => format!("{:<12} {:<22} {:<12}\n", row.name, row.address, "unreachable"),
            Some(own) => {
                let lag =
                    leader.map_or("?".to_string(), |l| l.commit_index.saturating_sub(own.applied_index).to_string());
                format!(
                    "{:<12} {:<22} {:<12} {:>6} {:>12} {:>12} {:>8}\n",
                    row.name,
                    row.address,
                    own.role.name(),
                    own.term,
                    own.commit_index,
                    own.applied_index,
                    lag
                )
            }
        };
        out.push_str(&line);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(name: &str, role: ReplicaRole, term: u64, commit_index: u64, applied_index: u64) -> Row {
        let address = format!("127.0.0.1:700{}", &name[1..]);
        let status =
            ReplicaStatus { name: name.into(), role, term, commit_index, applied_index, address: address.clone() };
        Row { name: name.into(), address, own: Some(status) }
    }

    #[test]
    fn the_table_shows_roles_terms_and_lag_against_the_leader() {
        let rows = vec![
            own("c1", ReplicaRole::Follower, 3, 100, 90),
            own("c2", ReplicaRole::Leader, 3, 120, 120),
            Row { name: "c3".into(), address: "127.0.0.1:7003".into(), own: None },
        ];
        let table = render(&rows);
        let lines: Vec<Vec<&str>> = table.lines().map(|line| line.split_whitespace().collect()).collect();
        assert_eq!(lines[0], ["replica", "address", "role", "term", "commit", "applied", "lag"]);
        assert_eq!(lines[1], ["c1", "127.0.0.1:7001", "follower", "3", "100", "90", "30"]);
        assert_eq!(lines[2], ["c2", "127.0.0.1:7002", "leader", "3", "120", "120", "0"]);
        assert_eq!(lines[3], ["c3", "127.0.0.1:7003", "unreachable"]);
    }

    #[test]
    fn without_a_leader_the_lag_is_unknown() {
        let table = render(&[own("c1", ReplicaRole::Follower, 4, 10, 10)]);
        assert!(table.lines().nth(1).unwrap().trim_end().ends_with('?'), "{table}");
    }
}
