//! A throwaway MariaDB server (`mariadb-install-db` + `mariadbd`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mysql::prelude::Queryable;
use mysql::{Conn, OptsBuilder};
use tempfile::TempDir;

use super::{ServerError, find_binary, is_root, log_tail, run};

const SBIN_DIRS: [&str; 3] = ["/usr/sbin", "/usr/bin", "/usr/local/bin"];
const DATABASE: &str = "twophase";
const START_TIMEOUT: Duration = Duration::from_secs(60);

pub struct MariaServer {
    dir: TempDir,
    mariadbd: PathBuf,
    child: Option<Child>,
}

impl MariaServer {
    /// Installs the system tables, starts the server and creates the `twophase` database.
    pub fn start() -> Result<MariaServer, ServerError> {
        let mariadbd = find_binary(&["mariadbd", "mysqld"], &SBIN_DIRS)?;
        let install_db = find_binary(&["mariadb-install-db", "mysql_install_db"], &SBIN_DIRS)?;
        let dir = tempfile::Builder::new()
            .prefix("tp-maria")
            .tempdir()
            .map_err(|e| ServerError::Failed(format!("temporary directory: {e}")))?;
        let mut server = MariaServer { dir, mariadbd, child: None };
        let mut install = Command::new(&install_db);
        install.arg("--no-defaults").arg(format!("--datadir={}", server.data_dir().display())).args([
            "--auth-root-authentication-method=normal",
            "--skip-test-db",
            "--innodb-log-file-size=16M",
        ]);
        if is_root() {
            install.arg("--user=root");
        }
        install_system_tables(&mut install, &server.data_dir())?;
        server.restart()?;
        let mut conn = server.connect_as_root(None)?;
        conn.query_drop(format!("CREATE DATABASE IF NOT EXISTS {DATABASE}"))
            .map_err(|e| ServerError::Failed(format!("create database: {e}")))?;
        Ok(server)
    }

    /// Connection options for the `twophase` database over the unix socket.
    pub fn opts(&self) -> OptsBuilder {
        self.root_opts().db_name(Some(DATABASE))
    }

    /// The same as a URL (`mysql://root@localhost/twophase?socket=...`).
    pub fn url(&self) -> String {
        format!("mysql://root@localhost/{DATABASE}?socket={}", self.socket().display())
    }

    /// The server's unix socket (the only way in), in a directory deleted when it is dropped.
    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("mariadbd.sock")
    }

    /// Starts mariadbd on the same data (after `stop` or `kill`) and waits until it answers.
    pub fn restart(&mut self) -> Result<(), ServerError> {
        assert!(self.child.is_none(), "MariaDB is running already");
        let mut command = Command::new(&self.mariadbd);
        command
            .arg("--no-defaults")
            .arg(format!("--datadir={}", self.data_dir().display()))
            .arg(format!("--socket={}", self.socket().display()))
            .arg(format!("--pid-file={}", self.dir.path().join("mariadbd.pid").display()))
            .arg(format!("--log-error={}", self.log().display()))
            .args([
                "--skip-networking",
                "--innodb-flush-log-at-trx-commit=1",
                "--innodb-log-file-size=16M",
                "--innodb-buffer-pool-size=64M",
                "--max-connections=300",
                "--skip-log-bin",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if is_root() {
            command.arg("--user=root");
        }
        let child = command.spawn().map_err(|e| ServerError::Failed(format!("start mariadbd: {e}")))?;
        self.child = Some(child);
        self.wait_until_ready()
    }

    /// A clean shutdown (SIGTERM, then wait).
    pub fn stop(&mut self) -> Result<(), ServerError> {
        self.signal_and_wait(libc::SIGTERM)
    }

    /// A crash (SIGKILL): InnoDB recovers at the next start.
    pub fn kill(&mut self) -> Result<(), ServerError> {
        self.signal_and_wait(libc::SIGKILL)
    }

    fn signal_and_wait(&mut self, signal: libc::c_int) -> Result<(), ServerError> {
        let mut child = self.child.take().expect("MariaDB is not running");
        let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own child, which has not been reaped (we hold its Child).
        unsafe { libc::kill(pid, signal) };
        child.wait().map_err(|e| ServerError::Failed(format!("wait for mariadbd: {e}")))?;
        Ok(())
    }

    fn wait_until_ready(&mut self) -> Result<(), ServerError> {
        let started = Instant::now();
        loop {
            if self.connect_as_root(None).is_ok() {
                return Ok(());
            }
            let child = self.child.as_mut().expect("started");
            if let Ok(Some(status)) = child.try_wait() {
                self.child = None;
                return Err(ServerError::Failed(format!(
                    "mariadbd exited ({status}); log:\n{}",
                    log_tail(&self.log())
                )));
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(ServerError::Failed(format!(
                    "mariadbd did not answer within {START_TIMEOUT:?}; log:\n{}",
                    log_tail(&self.log())
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn connect_as_root(&self, db: Option<&str>) -> Result<Conn, ServerError> {
        Conn::new(self.root_opts().db_name(db)).map_err(|e| ServerError::Failed(format!("connect to MariaDB: {e}")))
    }

    fn root_opts(&self) -> OptsBuilder {
        OptsBuilder::new()
            .user(Some("root"))
            .socket(Some(self.socket().to_string_lossy().into_owned()))
            .prefer_socket(true)
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("error.log")
    }
}

/// Runs mariadb-install-db, one at a time in this process and again after a failure: two
/// bootstraps started together in one test binary now and then fail ("Installation of system
/// tables failed") with nothing in their logs, where one after the other never does.
fn install_system_tables(install: &mut Command, data_dir: &Path) -> Result<(), ServerError> {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let mut attempts_left = 3;
    loop {
        attempts_left -= 1;
        match run(install, "mariadb-install-db") {
            Ok(_) => return Ok(()),
            Err(error) if attempts_left == 0 => return Err(error),
            Err(error) => {
                eprintln!("retrying mariadb-install-db after: {error}");
                let _ = std::fs::remove_dir_all(data_dir);
            }
        }
    }
}

impl Drop for MariaServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = self.signal_and_wait(libc::SIGKILL);
        }
    }
}
