//! A throwaway PostgreSQL server (`initdb` + `pg_ctl`).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

use super::{ServerError, chown, find_binary, is_root, log_tail, run, user_ids};

/// Where Debian keeps the binaries when they are not on PATH.
const PG_DIRS: [&str; 3] = ["/usr/local/bin", "/usr/lib/postgresql/15/bin", "/usr/lib/postgresql/16/bin"];
/// The port in the socket's name (`.s.PGSQL.5432` in the server's own directory). Nothing
/// listens on TCP, so every server can use the same number.
const PORT: u16 = 5432;

pub struct PgServer {
    dir: TempDir,
    pg_ctl: PathBuf,
    /// The user the server runs as when we are root.
    run_as: Option<(u32, u32)>,
    running: bool,
}

impl PgServer {
    /// initdb, configure (`max_prepared_transactions = 1024`, fsync on, the unix socket in
    /// the directory and no TCP listener) and start.
    pub fn start() -> Result<PgServer, ServerError> {
        let initdb = find_binary(&["initdb"], &PG_DIRS)?;
        let pg_ctl = find_binary(&["pg_ctl"], &PG_DIRS)?;
        let dir = tempfile::Builder::new()
            .prefix("tp-pg")
            .tempdir()
            .map_err(|e| ServerError::Failed(format!("temporary directory: {e}")))?;
        let run_as = if is_root() {
            let ids = user_ids("postgres").or_else(|| user_ids("nobody")).ok_or_else(|| {
                ServerError::Failed("running as root and neither a postgres nor a nobody user exists".into())
            })?;
            chown(dir.path(), ids)?;
            Some(ids)
        } else {
            None
        };
        let mut server = PgServer { dir, pg_ctl, run_as, running: false };
        let data = server.data_dir();
        run(
            server.command(&initdb).arg("-D").arg(&data).args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
                "--no-instructions",
            ]),
            "initdb",
        )?;
        server.configure()?;
        server.restart()?;
        Ok(server)
    }

    /// A libpq connection string over the unix socket (the only way in).
    pub fn dsn(&self) -> String {
        format!("host={} port={PORT} user=postgres dbname=postgres", self.dir.path().display())
    }

    /// The directory that holds the server's data, log and socket, deleted when it is dropped.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Starts the server again on the same data (after `stop` or `kill`).
    pub fn restart(&mut self) -> Result<(), ServerError> {
        assert!(!self.running, "PostgreSQL is running already");
        let (data, log) = (self.data_dir(), self.dir.path().join("server.log"));
        run(
            self.command(&self.pg_ctl).arg("-D").arg(&data).arg("-l").arg(&log).args(["-w", "-t", "60", "start"]),
            "pg_ctl start",
        )
        .map_err(|e| ServerError::Failed(format!("{e}\nserver log:\n{}", log_tail(&log))))?;
        self.running = true;
        Ok(())
    }

    /// A clean shutdown (`pg_ctl -m fast`).
    pub fn stop(&mut self) -> Result<(), ServerError> {
        self.shut_down("fast")
    }

    /// A crash: `pg_ctl -m immediate` (no checkpoint; the next start replays the log).
    pub fn kill(&mut self) -> Result<(), ServerError> {
        self.shut_down("immediate")
    }

    fn shut_down(&mut self, mode: &str) -> Result<(), ServerError> {
        assert!(self.running, "PostgreSQL is not running");
        let data = self.data_dir();
        run(self.command(&self.pg_ctl).arg("-D").arg(&data).args(["-m", mode, "-w", "stop"]), "pg_ctl stop")?;
        self.running = false;
        Ok(())
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn configure(&self) -> Result<(), ServerError> {
        let settings = format!(
            "\n# twophase throwaway server\n\
             port = {PORT}\n\
             listen_addresses = ''\n\
             unix_socket_directories = '{socket_dir}'\n\
             max_connections = 200\n\
             max_prepared_transactions = 1024\n\
             fsync = on\n\
             synchronous_commit = on\n\
             shared_buffers = 64MB\n",
            socket_dir = self.dir.path().display(),
        );
        let conf = self.data_dir().join("postgresql.conf");
        let mut text =
            std::fs::read_to_string(&conf).map_err(|e| ServerError::Failed(format!("read {}: {e}", conf.display())))?;
        text.push_str(&settings);
        std::fs::write(&conf, text).map_err(|e| ServerError::Failed(format!("write {}: {e}", conf.display())))
    }

    fn command(&self, program: &Path) -> Command {
        let mut command = Command::new(program);
        if let Some((uid, gid)) = self.run_as {
            command.uid(uid).gid(gid).env("HOME", self.dir.path());
        }
        command
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.running {
            let _ = self.shut_down("immediate");
        }
    }
}
