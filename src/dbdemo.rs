//! The demo and the chaos run across databases (`--participants pg,mariadb,kv`): which kind
//! each participant is, the throwaway PostgreSQL and MariaDB servers behind the database
//! participants, the flags those participants are started with, and their SQL audit.
//!
//! Invariants: every server started here is stopped when the run ends, on error (drop) and
//! on Ctrl-C / SIGTERM (the handler stops them, then exits); a database participant's audit
//! reads its database only once nothing is left prepared there (a read would wait on a
//! prepared writer's row locks), or fails saying what is still prepared.
//! Must not: write to the databases (the participants do), or change anything for a run whose
//! participants are all the built-in store.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use twophase_backends::testserver::{MariaServer, PgServer};
use twophase_backends::{Connection, Connector, MariaConnector, PgConnector, SqlLimits};
use twophase_bench::sql_audit::{SqlAudit, SqlDialect, sql_audit};
use twophase_bench::{Balances, BankLayout, LoadResult};

/// Participants at most, as a count or a list (each named p1..pN).
pub const PARTICIPANTS_MAX: u16 = 64;
/// Database participants at most: each starts a database server of its own.
pub const DATABASES_MAX: usize = 4;
/// Longest to wait for a database to hold nothing prepared for its participant.
const PREPARED_SETTLE_LIMIT: Duration = Duration::from_secs(30);
const PREPARED_POLL: Duration = Duration::from_millis(100);
/// Exit status after Ctrl-C (128 + SIGINT).
const INTERRUPTED_EXIT: i32 = 130;

/// Where a participant keeps its data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ParticipantKind {
    /// The built-in store.
    Kv,
    Postgres,
    MariaDb,
}

impl ParticipantKind {
    fn name(self) -> &'static str {
        match self {
            ParticipantKind::Kv => "kv",
            ParticipantKind::Postgres => "pg",
            ParticipantKind::MariaDb => "mariadb",
        }
    }
}

/// `--participants`: a count of built-in-store participants (`3`) or a comma list of kinds
/// (`pg,mariadb,kv`), participant `pN` being the N-th entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParticipantList(Vec<ParticipantKind>);

impl ParticipantList {
    /// How many participants.
    pub fn count(&self) -> u16 {
        u16::try_from(self.0.len()).expect("bounded by PARTICIPANTS_MAX")
    }

    /// Each participant's name and kind.
    fn named(&self) -> impl Iterator<Item = (u16, String, ParticipantKind)> + '_ {
        self.0.iter().enumerate().map(|(at, kind)| (at as u16 + 1, format!("p{}", at + 1), *kind))
    }

    /// Whether some participant runs over a database.
    pub fn has_databases(&self) -> bool {
        self.0.iter().any(|kind| *kind != ParticipantKind::Kv)
    }
}

impl fmt::Display for ParticipantList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kinds: Vec<&str> = self.0.iter().map(|kind| kind.name()).collect();
        f.write_str(&kinds.join(","))
    }
}

/// Parses `--participants`: `N` (1..=64 built-in-store participants) or a comma list of
/// `kv`, `pg` (or `postgres`) and `mariadb` (or `maria`), at most 4 databases.
pub fn parse_participants(text: &str) -> Result<ParticipantList, String> {
    let text = text.trim();
    let kinds = if let Ok(count) = text.parse::<u16>() {
        vec![ParticipantKind::Kv; usize::from(count)]
    } else {
        text.split(',').map(parse_kind).collect::<Result<Vec<_>, _>>()?
    };
    if kinds.is_empty() || kinds.len() > usize::from(PARTICIPANTS_MAX) {
        return Err(format!("between 1 and {PARTICIPANTS_MAX} participants, not {}", kinds.len()));
    }
    let databases = kinds.iter().filter(|kind| **kind != ParticipantKind::Kv).count();
    if databases > DATABASES_MAX {
        return Err(format!("at most {DATABASES_MAX} database participants (each starts a server), not {databases}"));
    }
    Ok(ParticipantList(kinds))
}

fn parse_kind(word: &str) -> Result<ParticipantKind, String> {
    match word.trim() {
        "kv" => Ok(ParticipantKind::Kv),
        "pg" | "postgres" => Ok(ParticipantKind::Postgres),
        "mariadb" | "maria" => Ok(ParticipantKind::MariaDb),
        other => Err(format!("unknown participant kind {other:?}: a count, or a comma list of kv, pg, mariadb")),
    }
}

/// One throwaway server behind a database participant.
enum Server {
    Postgres(PgServer),
    MariaDb(MariaServer),
}

impl Server {
    fn start(kind: ParticipantKind) -> anyhow::Result<Server> {
        Ok(match kind {
            ParticipantKind::Postgres => Server::Postgres(PgServer::start().context("starting PostgreSQL")?),
            ParticipantKind::MariaDb => Server::MariaDb(MariaServer::start().context("starting MariaDB")?),
            ParticipantKind::Kv => unreachable!("the built-in store has no server"),
        })
    }

    /// The `twophase participant` flags that put a participant over this server.
    fn participant_flags(&self) -> Vec<String> {
        let (backend, dsn) = match self {
            Server::Postgres(server) => ("postgres", server.dsn()),
            Server::MariaDb(server) => ("mariadb", server.url()),
        };
        vec!["--backend".into(), backend.into(), "--dsn".into(), dsn]
    }

    /// What runs, and how a person connects to look inside (its unix socket: the servers
    /// listen on nothing else).
    fn describe(&self) -> (&'static str, String) {
        match self {
            Server::Postgres(server) => ("PostgreSQL", format!("psql \"{}\"", server.dsn())),
            Server::MariaDb(server) => {
                ("MariaDB", format!("mariadb --socket={} --user=root twophase", server.socket().display()))
            }
        }
    }
}

/// A database participant: its index (N of pN), name and server.
struct Database {
    index: u16,
    name: String,
    server: Server,
}

/// The servers behind a run's database participants. Stopped when dropped, and by the
/// Ctrl-C / SIGTERM handler [`Databases::start`] installs (which then exits the process).
pub struct Databases {
    /// `None` once the handler stopped them.
    running: Arc<Mutex<Option<Vec<Database>>>>,
}

impl Databases {
    /// Starts one server per database participant of `list` (none for an all-`kv` list, and
    /// then no handler is installed either).
    pub fn start(list: &ParticipantList) -> anyhow::Result<Databases> {
        let running = Arc::new(Mutex::new(Some(Vec::new())));
        if !list.has_databases() {
            return Ok(Databases { running });
        }
        let stopper = running.clone();
        ctrlc::set_handler(move || {
            eprintln!("interrupted: stopping the database servers");
            drop(stopper.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take());
            std::process::exit(INTERRUPTED_EXIT);
        })
        .context("installing the signal handler that stops the database servers")?;
        for (index, name, kind) in list.named().filter(|(_, _, kind)| *kind != ParticipantKind::Kv) {
            // Started under the lock: an interruption meanwhile waits for the server to be
            // listed, then stops it with the others (nothing is left half made).
            let mut running = running.lock().expect("not poisoned");
            let server = Server::start(kind)?;
            let (what, connect) = server.describe();
            eprintln!("started {what} for participant {name}: {connect}");
            running.as_mut().context("interrupted")?.push(Database { index, name, server });
        }
        Ok(Databases { running })
    }

    /// Each database participant's index and the flags it is started with
    /// (`ClusterOptions::database_participants`).
    pub fn participant_flags(&self) -> Vec<(u16, Vec<String>)> {
        self.with(|databases| databases.iter().map(|db| (db.index, db.server.participant_flags())).collect())
    }

    /// The names of the database participants.
    pub fn names(&self) -> Vec<String> {
        self.with(|databases| databases.iter().map(|db| db.name.clone()).collect())
    }

    /// Waits until no database holds anything prepared for its participant, then reads each
    /// one's accounts into `balances` and audits its sums. Fails only when a database cannot
    /// be read; what is still prepared after the wait fails that database's audit.
    pub fn audit(
        &self,
        layout: &BankLayout,
        result: &LoadResult,
        balances: &mut Balances,
    ) -> anyhow::Result<Vec<SqlAudit>> {
        let targets: Vec<(String, Target)> = self.with(|databases| {
            databases.iter().map(|db| Ok((db.name.clone(), Target::of(&db.server)?))).collect::<anyhow::Result<_>>()
        })?;
        let mut audits = Vec::new();
        for (name, target) in targets {
            let audit = match target {
                Target::Postgres(connector) => {
                    audit_one(connector.as_ref(), SqlDialect::Postgres, &name, layout, result, balances)
                }
                Target::MariaDb(connector) => {
                    audit_one(&connector, SqlDialect::MariaDb, &name, layout, result, balances)
                }
            };
            audits.push(audit.with_context(|| format!("auditing participant {name}'s database"))?);
        }
        Ok(audits)
    }

    /// Creates the bank's accounts: those of the database participants straight in their
    /// databases (bulk INSERTs of literal integers: concurrent setup transactions inserting
    /// neighbouring ids deadlock on InnoDB's gap locks), the others through the coordinator.
    pub fn setup_accounts(&self, target: &crate::loadgen::Target) -> anyhow::Result<()> {
        let layout = &target.layout;
        let targets: Vec<(usize, String, Target)> = self.with(|databases| {
            databases
                .iter()
                .map(|db| Ok((usize::from(db.index - 1), db.name.clone(), Target::of(&db.server)?)))
                .collect::<anyhow::Result<_>>()
        })?;
        for (index, name, target) in &targets {
            let seeded = match target {
                Target::Postgres(connector) => seed_accounts(connector.as_ref(), layout, *index),
                Target::MariaDb(connector) => seed_accounts(connector, layout, *index),
            };
            seeded.with_context(|| format!("creating participant {name}'s accounts in its database"))?;
        }
        let in_database =
            |account: u64| targets.iter().any(|(index, _, _)| layout.participant_index(account) == *index);
        twophase_bench::setup_accounts_where(target.coordinator, &target.client_options(), layout, |account| {
            !in_database(account)
        })
    }

    fn with<T>(&self, read: impl FnOnce(&[Database]) -> T) -> T {
        let running = self.running.lock().expect("not poisoned");
        read(running.as_deref().unwrap_or(&[]))
    }
}

impl Drop for Databases {
    /// Stops the servers now: the signal handler holds the other reference to them.
    fn drop(&mut self) {
        drop(self.running.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take());
    }
}

/// How the audit connects to a server.
enum Target {
    Postgres(Box<PgConnector>),
    MariaDb(MariaConnector),
}

impl Target {
    fn of(server: &Server) -> anyhow::Result<Target> {
        Ok(match server {
            Server::Postgres(server) => Target::Postgres(Box::new(PgConnector::new(&server.dsn())?)),
            Server::MariaDb(server) => Target::MariaDb(MariaConnector::new(&server.url())?),
        })
    }
}

/// Accounts per INSERT statement when seeding a database.
const SEED_ROWS_PER_STATEMENT: usize = 1_000;

/// Inserts the accounts of participant `index` of `layout` at the initial balance, in one
/// transaction per statement of [`SEED_ROWS_PER_STATEMENT`] rows (only integers are spliced
/// into the SQL).
fn seed_accounts<C: Connector>(connector: &C, layout: &BankLayout, index: usize) -> anyhow::Result<()> {
    let mut conn = connector.connect()?;
    conn.ensure_schema()?;
    let accounts: Vec<u64> = (index as u64..layout.accounts).step_by(layout.participants.len()).collect();
    for chunk in accounts.chunks(SEED_ROWS_PER_STATEMENT) {
        let values: Vec<String> =
            chunk.iter().map(|account| format!("({account}, {})", layout.initial_balance)).collect();
        let sql = format!("INSERT INTO accounts (id, balance) VALUES {}", values.join(", "));
        let limits = SqlLimits { sql_bytes_max: sql.len(), ..SqlLimits::default() };
        conn.execute(&sql, &[], &limits)?;
    }
    Ok(())
}

fn audit_one<C: Connector>(
    connector: &C,
    dialect: SqlDialect,
    name: &str,
    layout: &BankLayout,
    result: &LoadResult,
    balances: &mut Balances,
) -> anyhow::Result<SqlAudit> {
    let mut conn = connector.connect()?;
    let began = Instant::now();
    while !conn.recover(name)?.is_empty() && began.elapsed() < PREPARED_SETTLE_LIMIT {
        std::thread::sleep(PREPARED_POLL);
    }
    Ok(sql_audit(&mut conn, dialect, name, layout, result, balances)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_count_is_that_many_built_in_store_participants() {
        let list = parse_participants("3").unwrap();
        assert_eq!(list, ParticipantList(vec![ParticipantKind::Kv; 3]));
        assert!(!list.has_databases());
        assert_eq!(list.count(), 3);
    }

    #[test]
    fn a_list_names_each_participant_in_order() {
        let list = parse_participants("pg,mariadb,kv").unwrap();
        let named: Vec<(u16, String, ParticipantKind)> = list.named().collect();
        assert_eq!(
            named,
            [
                (1, "p1".to_string(), ParticipantKind::Postgres),
                (2, "p2".to_string(), ParticipantKind::MariaDb),
                (3, "p3".to_string(), ParticipantKind::Kv)
            ]
        );
        assert!(list.has_databases());
        assert_eq!(list.to_string(), "pg,mariadb,kv");
        assert_eq!(parse_participants("postgres, maria").unwrap().to_string(), "pg,mariadb");
    }

    #[test]
    fn bad_lists_are_refused_with_the_reason() {
        assert!(parse_participants("0").unwrap_err().contains("between 1 and"));
        assert!(parse_participants("65").unwrap_err().contains("between 1 and"));
        assert!(parse_participants("pg,oracle").unwrap_err().contains("unknown participant kind \"oracle\""));
        assert!(parse_participants("pg,pg,pg,pg,pg").unwrap_err().contains("at most 4 database"));
        assert!(parse_participants("").is_err());
    }
}
