//! Network namespaces for tests: created on demand, deleted on drop with every
//! process inside.
//!
//! The namespace itself is made, entered and deleted by `nanami_wg::netns` (the
//! product's own implementation, the same on disk as `ip netns`); commands run
//! inside through `ip netns exec`, so `ip netns` sees and manages them as usual.

use std::ffi::OsStr;
use std::io::Write as _;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::process::Process;

fn next_id() -> u32 {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// A unique interface name (at most 15 bytes): `n` + pid (hex) + counter + `tag`.
/// Unique on the machine, as WireGuard UAPI sockets of every namespace share one
/// directory.
pub fn ifname(tag: &str) -> String {
    let name = format!("n{:x}{}{tag}", std::process::id() & 0xfffff, next_id());
    assert!(name.len() <= 15, "interface name {name} is too long");
    name
}

/// Runs `cmd`, failing the test with its output when it does not succeed.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Kills every process inside namespace `name` (SIGKILL).
fn kill_inside(name: &str) {
    let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
        if let Ok(pid) = pid.parse::<libc::pid_t>() {
            // SAFETY: kill(2) on a process inside a test namespace; no memory involved.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// A command that runs `program` inside the namespace `name`, one the test does
/// not own (made by the program under test): `ip netns exec <name> <program>`.
pub fn command_in(name: &str, program: impl AsRef<OsStr>) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", name]).arg(program);
    c
}

/// Runs `f` on a thread inside the namespace `name` (one the test does not own);
/// see [`Netns::enter`].
pub fn enter_named<R: Send>(name: &str, f: impl FnOnce() -> R + Send) -> R {
    let handle = nanami_wg::netns::Netns::open(name)
        .unwrap_or_else(|e| panic!("opening namespace {name}: {e}"))
        .unwrap_or_else(|| panic!("namespace {name} does not exist"));
    enter_handle(name, &handle, f)
}

fn enter_handle<R: Send>(
    name: &str,
    handle: &nanami_wg::netns::Netns,
    f: impl FnOnce() -> R + Send,
) -> R {
    let caught = handle
        .run(|| std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)))
        .unwrap_or_else(|e| panic!("entering namespace {name}: {e}"));
    caught.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Deletes namespace `name` if it exists, killing what runs inside first: what a
/// crashed earlier run left under a fixed name.
pub fn delete(name: &str) {
    if nanami_wg::netns::Netns::path(name).exists() {
        kill_inside(name);
        if let Err(e) = nanami_wg::netns::Netns::delete(name) {
            panic!("deleting namespace {name}: {e}");
        }
    }
}

/// A named network namespace with `lo` up. Dropping it (also while a failed
/// assertion unwinds) stops the processes it started ([`Netns::spawn`]), kills
/// whatever else still runs inside (daemons that detached) and deletes it.
#[derive(Debug)]
pub struct Netns {
    name: String,
    handle: Option<nanami_wg::netns::Netns>,
    processes: Mutex<Vec<Process>>,
}

impl Netns {
    /// A namespace of this test process: `nmt-<pid>-<n>-<tag>`.
    pub fn new(tag: &str) -> Self {
        Self::named(&format!("nmt-{}-{}-{tag}", std::process::id(), next_id()))
    }

    /// The namespace `name`, after deleting what an earlier run left under that
    /// name: for rigs whose names must be fixed (they appear in configuration).
    pub fn named(name: &str) -> Self {
        delete(name);
        let handle = nanami_wg::netns::Netns::open_or_create(name)
            .unwrap_or_else(|e| panic!("creating namespace {name}: {e}"));
        let ns = Self {
            name: name.to_owned(),
            handle: Some(handle),
            processes: Mutex::new(Vec::new()),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// Its name (as `ip netns` shows it).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside (`ip netns exec <name> <program>`; the
    /// program replaces `ip`, so a child's pid is the program's).
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        command_in(&self.name, program)
    }

    /// Runs `program args…` inside and returns its output, whatever its status.
    pub fn output(&self, program: impl AsRef<OsStr>, args: &[&str]) -> Output {
        let program = program.as_ref();
        self.command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program:?} in {}: {e}", self.name))
    }

    /// Runs `program args…` inside and returns its stdout; fails the test (with
    /// the output) when it fails.
    pub fn exec(&self, program: impl AsRef<OsStr>, args: &[&str]) -> String {
        let out = run(self.command(program).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `program args…` inside and returns whether it succeeded.
    pub fn try_exec(&self, program: impl AsRef<OsStr>, args: &[&str]) -> bool {
        self.command(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Runs `program args…` inside with `stdin` fed to it; its stdout. Fails the
    /// test when it fails.
    pub fn exec_stdin(&self, program: &str, args: &[&str], stdin: &str) -> String {
        let mut child = self
            .command(program)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        child
            .stdin
            .take()
            .expect("a piped stdin")
            .write_all(stdin.as_bytes())
            .unwrap_or_else(|e| panic!("writing to {program}: {e}"));
        let out = child
            .wait_with_output()
            .unwrap_or_else(|e| panic!("waiting for {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `ip -n <name> args…`; fails the test when it fails.
    pub fn ip(&self, args: &[&str]) -> String {
        let out = run(Command::new("ip").arg("-n").arg(&self.name).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether interface `dev` exists inside.
    pub fn has_link(&self, dev: &str) -> bool {
        Command::new("ip")
            .args(["-n", &self.name, "link", "show", dev])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Starts `program args…` inside (with `env` added) as a [`Process`] the caller
    /// owns; `what` names it in messages.
    pub fn process(
        &self,
        what: &str,
        program: impl AsRef<OsStr>,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Process {
        let mut cmd = self.command(program);
        cmd.args(args).envs(env.iter().copied());
        Process::spawn(what, cmd)
    }

    /// Starts `program args…` inside, owned by the namespace: it is stopped before
    /// the namespace goes (or by [`Netns::stop`]). Returns its pid.
    pub fn spawn(&self, program: &str, args: &[&str], env: &[(&str, &str)]) -> u32 {
        let process = self.process(program, program, args, env);
        let pid = process.pid();
        self.lock().push(process);
        pid
    }

    /// Stops the process `pid` started with [`Netns::spawn`] (SIGTERM, then SIGKILL).
    pub fn stop(&self, pid: u32) {
        let process = {
            let mut processes = self.lock();
            let i = processes.iter().position(|p| p.pid() == pid);
            i.map(|i| processes.remove(i))
        };
        drop(process);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Process>> {
        self.processes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Runs `f` on a thread that has entered the namespace and returns what it
    /// returns: sockets and TUN devices `f` creates belong to the namespace, and so
    /// do threads it spawns. A panic in `f` continues in the caller.
    pub fn enter<R: Send>(&self, f: impl FnOnce() -> R + Send) -> R {
        let handle = self.handle.as_ref().expect("the namespace is open");
        enter_handle(&self.name, handle, f)
    }

    /// Pings `addr` from inside until a reply comes back; whether one did within
    /// `timeout`.
    pub fn ping_until(&self, addr: &str, timeout: Duration) -> bool {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.try_exec("ping", &["-c", "1", "-W", "1", addr]) {
                return true;
            }
        }
        false
    }

    /// Pings `addr` `count` times, 0.2 s apart (`extra` arguments added); whether
    /// every reply came.
    pub fn ping_all(&self, addr: &str, count: u32, extra: &[&str]) -> bool {
        let count = count.to_string();
        let mut args = vec!["-c", count.as_str(), "-i", "0.2", "-W", "2"];
        args.extend_from_slice(extra);
        args.push(addr);
        self.try_exec("ping", &args)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Started processes first (SIGTERM: they may clean up), in reverse order.
        let processes: Vec<Process> = self.lock().drain(..).collect();
        for process in processes.into_iter().rev() {
            drop(process);
        }
        kill_inside(&self.name);
        self.handle = None;
        if let Err(e) = nanami_wg::netns::Netns::delete(&self.name) {
            eprintln!("warning: deleting namespace {}: {e}", self.name);
        }
    }
}
