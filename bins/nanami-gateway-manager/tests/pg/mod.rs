//! A private PostgreSQL server for a test suite: Debian's `postgresql` package,
//! a new cluster in a temporary directory, on a loopback port reserved for it
//! ([`nanami_testkit::port::Reserved`]), owned by the
//! `postgres` user (the server refuses to run as root), removed when the suite ends.
//!
//! A missing PostgreSQL fails the test with what to install: `scripts/test`
//! installs it; nothing skips.
#![allow(clippy::unwrap_used, dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use nanami_testkit::run;

/// One private server.
pub struct PgServer {
    bin: PathBuf,
    dir: PathBuf,
    pub port: u16,
    /// `port`, held for the server's whole life (it restarts on it): no one else
    /// can take it while the server is down.
    _reserved: nanami_testkit::port::Reserved,
    databases: Mutex<u32>,
    /// Server settings beyond the kit's own (`-c name=value` each).
    settings: Vec<String>,
}

/// The directory of Debian's PostgreSQL server binaries (the newest version).
fn server_bin() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path().join("bin"))
        .filter(|bin| bin.join("postgres").exists() && bin.join("initdb").exists())
        .collect();
    found.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    found.pop().unwrap_or_else(|| {
        panic!(
            "PostgreSQL's server is not installed (no /usr/lib/postgresql/*/bin/postgres): \
             run scripts/test, which installs Debian's `postgresql` package"
        )
    })
}

/// Gives `dir` and everything in it to the `postgres` user when running as root
/// (the server refuses to run as root).
fn hand_to_postgres(dir: &Path) {
    // SAFETY: geteuid has no preconditions and no effect.
    if unsafe { libc::geteuid() } == 0 {
        run(Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir));
    }
}

/// `cmd` as the `postgres` user when running as root.
fn as_postgres(program: &Path) -> Command {
    // SAFETY: geteuid has no preconditions and no effect.
    if unsafe { libc::geteuid() } == 0 {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl PgServer {
    /// Creates and starts a new cluster.
    pub fn start(tag: &str) -> Self {
        Self::start_with(tag, &[], |_| {})
    }

    /// [`PgServer::start`] with extra server settings (`name=value`), after
    /// `prepare` has been given the new cluster's data directory (to add files the
    /// settings name; they are handed to the server's user).
    pub fn start_with(tag: &str, settings: &[String], prepare: impl FnOnce(&Path)) -> Self {
        let bin = server_bin();
        let dir = std::env::temp_dir().join(format!("nanami-pg-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        hand_to_postgres(&dir);
        run(as_postgres(&bin.join("initdb"))
            .args([
                "-A",
                "trust",
                "-U",
                "nanami",
                "-E",
                "UTF8",
                "--no-sync",
                "-D",
            ])
            .arg(dir.join("data")));
        prepare(&dir.join("data"));
        hand_to_postgres(&dir);
        let reserved = nanami_testkit::port::Reserved::loopback();
        let server = Self {
            bin,
            dir,
            port: reserved.port(),
            _reserved: reserved,
            databases: Mutex::new(0),
            settings: settings.to_vec(),
        };
        server.start_again();
        server
    }

    /// The suite's shared server, stopped and removed when the test binary exits.
    pub fn shared() -> &'static Self {
        static SERVER: OnceLock<PgServer> = OnceLock::new();
        SERVER.get_or_init(|| {
            extern "C" fn stop_at_exit() {
                if let Some(server) = SERVER.get() {
                    server.remove();
                }
            }
            let server = Self::start("suite");
            // SAFETY: registers a plain `extern "C"` function; it runs once at exit.
            unsafe { libc::atexit(stop_at_exit) };
            server
        })
    }

    fn pg_ctl(&self) -> Command {
        let mut c = as_postgres(&self.bin.join("pg_ctl"));
        c.arg("-D").arg(self.dir.join("data"));
        c
    }

    /// Starts the (stopped) server and waits until it accepts connections.
    pub fn start_again(&self) {
        let mut options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300",
            self.port,
            self.dir.display()
        );
        for setting in &self.settings {
            options.push_str(" -c ");
            options.push_str(setting);
        }
        run(self
            .pg_ctl()
            .args(["-w", "-t", "60", "-l"])
            .arg(self.dir.join("server.log"))
            .args(["-o", &options, "start"]));
    }

    /// Stops the server (fast: open sessions are ended, commits are kept).
    pub fn stop(&self) {
        run(self.pg_ctl().args(["-w", "-m", "fast", "stop"]));
    }

    /// A new empty database; its URL.
    pub fn database(&self, tag: &str) -> String {
        let n = {
            let mut n = self.databases.lock().unwrap();
            *n += 1;
            *n
        };
        let name = format!(
            "{}_{n}",
            tag.replace(|c: char| !c.is_ascii_alphanumeric(), "_")
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    /// The URL of database `name`.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://nanami@127.0.0.1:{}/{name}", self.port)
    }

    /// The cluster's data directory.
    pub fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    /// Runs `sql` in database `db`; its output (unaligned, tuples only).
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = run(Command::new("psql")
            .args([
                "-X",
                "-q",
                "-A",
                "-t",
                "-v",
                "ON_ERROR_STOP=1",
                "-h",
                "127.0.0.1",
                "-U",
                "nanami",
            ])
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-d", db, "-c", sql]));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Waits until the server accepts connections (after a restart by hand).
    pub fn wait_ready(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "PostgreSQL did not come back");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn remove(&self) {
        let _ = self
            .pg_ctl()
            .args(["-w", "-m", "immediate", "stop"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.remove();
    }
}
