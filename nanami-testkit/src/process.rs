//! Processes a test starts (usually inside a namespace: [`crate::Netns::command`]):
//! their output goes to a log that failure messages quote, and they are stopped
//! and reaped when dropped, also while a failed assertion unwinds.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// How long a stopped process has between SIGTERM and SIGKILL.
pub const GRACE: Duration = Duration::from_secs(5);

/// A running child process with its output in a log file.
///
/// It runs in a process group of its own (so stopping it stops what it forked);
/// dropping it sends the group SIGTERM, then SIGKILL after [`GRACE`], and reaps
/// it. While a test panics, the drop prints the end of its output.
#[derive(Debug)]
pub struct Process {
    what: String,
    child: Child,
    log: PathBuf,
    /// The log is the kit's own temp file (removed on a clean drop).
    own_log: bool,
    status: Option<ExitStatus>,
}

fn fresh_log(what: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let tag: String = what
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(32)
        .collect();
    std::env::temp_dir().join(format!(
        "nmt-proc-{}-{}-{tag}.log",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

impl Process {
    /// Starts `cmd` (stdin from /dev/null, stdout and stderr to a fresh log in the
    /// temp directory); `what` names it in messages.
    pub fn spawn(what: &str, cmd: Command) -> Self {
        let log = fresh_log(what);
        Self::start(what, cmd, log, true)
    }

    /// [`Process::spawn`], appending its output to `log` (kept on drop).
    pub fn spawn_logged(what: &str, cmd: Command, log: &Path) -> Self {
        Self::start(what, cmd, log.to_owned(), false)
    }

    fn start(what: &str, mut cmd: Command, log: PathBuf, own_log: bool) -> Self {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap_or_else(|e| panic!("{what}: cannot open its log {}: {e}", log.display()));
        let err = file
            .try_clone()
            .unwrap_or_else(|e| panic!("{what}: cannot clone its log: {e}"));
        let child = cmd
            .stdin(Stdio::null())
            .stdout(file)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what} ({cmd:?}): {e}"));
        Self {
            what: what.to_owned(),
            child,
            log,
            own_log,
            status: None,
        }
    }

    /// Its pid (`ip netns exec` execs the program: the program's own pid).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Where its output goes.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Its output so far (stdout and stderr, interleaved).
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its exit status once it has exited (reaping it), `None` while it runs.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Polls until `found` finds something in its output and returns it; fails the
    /// test after `timeout`, or at once when the process exits first, with its
    /// output.
    pub fn wait_for_output<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut found: impl FnMut(&str) -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            let output = self.output();
            if let Some(v) = found(&output) {
                return v;
            }
            if let Some(status) = self.exited() {
                panic!(
                    "{} exited ({status}) before {what}; its output:\n{output}",
                    self.what
                );
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {timeout:?} waiting for {what} from {}; its output:\n{output}",
                self.what
            );
            std::thread::sleep(crate::wait::POLL);
        }
    }

    /// Fails the test with its output when it has exited.
    pub fn assert_running(&mut self) {
        if let Some(status) = self.exited() {
            panic!(
                "{} exited ({status}); its output:\n{}",
                self.what,
                self.output()
            );
        }
    }

    fn signal_group(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap_or(libc::pid_t::MAX);
        // SAFETY: kill(2) on the process group of a child we started; no memory
        // involved. Its group id is its pid (`process_group(0)`).
        unsafe { libc::kill(-pid, signal) };
    }

    /// Stops it: SIGTERM to its process group, SIGKILL after [`GRACE`]; reaps it
    /// and returns how it ended.
    pub fn stop(&mut self) -> ExitStatus {
        if let Some(status) = self.exited() {
            return status;
        }
        self.signal_group(libc::SIGTERM);
        let deadline = Instant::now() + GRACE;
        while Instant::now() < deadline {
            if let Some(status) = self.exited() {
                return status;
            }
            std::thread::sleep(crate::wait::POLL);
        }
        self.kill()
    }

    /// SIGKILL to its process group now (`kill -9`); reaps it.
    pub fn kill(&mut self) -> ExitStatus {
        if let Some(status) = self.exited() {
            return status;
        }
        self.signal_group(libc::SIGKILL);
        let status = self
            .child
            .wait()
            .unwrap_or_else(|e| panic!("reaping {}: {e}", self.what));
        self.status = Some(status);
        status
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let output = self.output();
            let lines: Vec<&str> = output.lines().collect();
            let tail = &lines[lines.len().saturating_sub(40)..];
            eprintln!(
                "--- {} (last {} lines of {}) ---\n{}",
                self.what,
                tail.len(),
                self.log.display(),
                tail.join("\n")
            );
        } else if self.own_log {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}
