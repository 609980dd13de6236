//! Throwaway database servers for tests, the demo and the baseline: each in a temporary
//! directory (data, unix socket, log), reachable over its unix socket only, durable (fsync
//! on, InnoDB flushing its log at every commit), stopped when dropped. `stop` shuts down
//! cleanly; `kill` is a crash (`pg_ctl -m immediate`, SIGKILL of mariadbd); `restart`
//! starts the same data again.
//!
//! Why no TCP listener: the servers trust whoever connects (PostgreSQL's `trust`, MariaDB's
//! root without a password), so on TCP any local user would be their superuser, while the
//! socket sits in a directory only its owner can enter. And a port would have to be chosen
//! ahead of the server, where another socket could take it before a restart binds it again.
//!
//! Servers refuse to run as root, so as root the PostgreSQL binaries run as the `postgres`
//! user (or `nobody`) and mariadbd with `--user=root`.

mod mariadb;
mod postgres;

use std::ffi::CString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub use self::mariadb::MariaServer;
pub use self::postgres::PgServer;

/// Set to `1` to let database tests pass without running where a server binary is missing.
/// CI never sets it: there, a missing server is a failure.
pub const SKIP_ENV: &str = "TWOPHASE_SKIP_DB_TESTS";

#[derive(Debug)]
pub enum ServerError {
    /// A server binary is not installed.
    Missing(String),
    /// It is installed but failed (the message carries its output or log).
    Failed(String),
}

impl fmt::Display for ServerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ServerError::Missing(what) => write!(f, "{what} (set {SKIP_ENV}=1 to skip database tests)"),
            ServerError::Failed(what) => f.write_str(what),
        }
    }
}

impl std::error::Error for ServerError {}

/// For tests: the server, or `None` when it is missing and `TWOPHASE_SKIP_DB_TESTS=1` (the
/// caller then returns, having printed SKIPPED). Panics otherwise, saying what is missing.
pub fn or_skip<T>(started: Result<T, ServerError>) -> Option<T> {
    match started {
        Ok(server) => Some(server),
        Err(ServerError::Missing(what)) if std::env::var(SKIP_ENV).as_deref() == Ok("1") => {
            eprintln!("SKIPPED: {what} ({SKIP_ENV}=1)");
            None
        }
        Err(error) => panic!("cannot start a throwaway database server: {error}"),
    }
}

/// The first of `names` found on PATH or in `extra_dirs`.
fn find_binary(names: &[&str], extra_dirs: &[&str]) -> Result<PathBuf, ServerError> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::env::split_paths(&path).chain(extra_dirs.iter().map(PathBuf::from)).collect();
    names
        .iter()
        .flat_map(|name| dirs.iter().map(move |dir| dir.join(name)))
        .find(|candidate| candidate.is_file())
        .ok_or_else(|| ServerError::Missing(format!("none of {names:?} is installed (PATH or {extra_dirs:?})")))
}

fn run(command: &mut Command, what: &str) -> Result<Output, ServerError> {
    let output = command.output().map_err(|e| ServerError::Failed(format!("{what}: cannot run: {e}")))?;
    if !output.status.success() {
        return Err(ServerError::Failed(format!(
            "{what} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    Ok(output)
}

/// The last lines of a server log, for error messages.
fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// The uid and gid of a local user.
fn user_ids(name: &str) -> Option<(u32, u32)> {
    let name = CString::new(name).ok()?;
    // SAFETY: getpwnam reads a NUL-terminated name and returns a pointer into static storage
    // (or null); it is read at once, before any other getpw* call on this thread.
    let entry = unsafe { libc::getpwnam(name.as_ptr()) };
    if entry.is_null() {
        return None;
    }
    // SAFETY: non-null, so it points at a valid passwd entry.
    let entry = unsafe { &*entry };
    Some((entry.pw_uid, entry.pw_gid))
}

fn chown(path: &Path, (uid, gid): (u32, u32)) -> Result<(), ServerError> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid))
        .map_err(|e| ServerError::Failed(format!("chown {}: {e}", path.display())))
}
