//! `nanami-device [-f|--foreground] [--netns <name>] <ifname>`: Nanami's userspace
//! WireGuard device with the command line of the cross-platform userspace interface
//! (like `wireguard-go`). It creates the TUN `<ifname>` and the UAPI socket
//! `/var/run/wireguard/<ifname>.sock`, is configured with `wg(8)`, and runs until
//! SIGTERM or SIGINT, the removal of the TUN, or the deletion of the socket; then it
//! stops every thread and exits.
//!
//! Without `--foreground` it starts itself in the background (a new session) and
//! exits once the socket exists.
//!
//! `--netns <name>` (Nanami's addition, for a gateway hosted in its own namespace)
//! creates the TUN inside the named network namespace `/run/netns/<name>`, which
//! must exist, while the UDP sockets stay in the namespace the program was started
//! in. Logs go to stderr; `RUST_LOG` sets the level.

use std::os::unix::process::CommandExt;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use nanami_model::InterfaceName;
use nanami_wg::device::{create_tun, Device, DeviceOptions, TunSource, DEFAULT_UAPI_DIR};
use nanami_wg::netns::Netns;

const USAGE: &str =
    "usage: nanami-device [-f|--foreground] [--netns <name>] [--no-offload] <ifname>";

/// How long the background launcher waits for the device to come up.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the foreground loop checks the TUN and the socket between signals.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

fn main() -> ExitCode {
    let mut foreground = false;
    let mut name = None;
    let mut netns = None;
    // TUN and UDP offloads (on by default; see nanami_wg::device::Offloads).
    let mut offload = true;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-f" | "--foreground" => foreground = true,
            "--no-offload" => offload = false,
            "--netns" if netns.is_none() => match args.next() {
                Some(ns) => netns = Some(ns),
                None => {
                    eprintln!("{USAGE}");
                    return ExitCode::from(2);
                }
            },
            "-h" | "--help" => {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            "--version" => {
                println!("nanami-device {}", env!("CARGO_PKG_VERSION"));
                return ExitCode::SUCCESS;
            }
            other if name.is_none() && !other.starts_with('-') => name = Some(other.to_owned()),
            _ => {
                eprintln!("{USAGE}");
                return ExitCode::from(2);
            }
        }
    }
    let Some(name) = name else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let result = if foreground {
        run(&name, netns.as_deref(), offload)
    } else {
        launch_background(&name, netns.as_deref(), offload)
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nanami-device: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn socket_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(DEFAULT_UAPI_DIR).join(format!("{name}.sock"))
}

/// Starts `nanami-device --foreground [--netns <ns>] [--no-offload] <name>` in a new
/// session and waits until its socket exists (or it fails).
fn launch_background(name: &str, netns: Option<&str>, offload: bool) -> anyhow::Result<()> {
    InterfaceName::new(name).context("invalid interface name")?;
    let exe = std::env::current_exe().context("locating this program")?;
    let mut cmd = Command::new(exe);
    cmd.arg("--foreground");
    if let Some(ns) = netns {
        cmd.args(["--netns", ns]);
    }
    if !offload {
        cmd.arg("--no-offload");
    }
    cmd.arg(name)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("starting the background device")?;
    let path = socket_path(name);
    let start = Instant::now();
    while start.elapsed() < STARTUP_TIMEOUT {
        if let Some(status) = child.try_wait()? {
            bail!("the device exited during start-up ({status}); run with --foreground to see why");
        }
        if path.exists() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!("the device did not create {} in time", path.display())
}

/// Signals that stop the device.
fn stop_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t owned by this frame.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
    }
    set
}

/// The TUN source: by name here, or created inside the namespace `netns`.
fn tun_source(ifname: InterfaceName, netns: Option<&str>) -> anyhow::Result<TunSource> {
    let Some(ns) = netns else {
        return Ok(TunSource::Name(ifname));
    };
    let ns = Netns::open(ns)?.with_context(|| format!("no network namespace {ns}"))?;
    let fd = ns
        .run(|| create_tun(&ifname))
        .context("entering the namespace")??;
    Ok(TunSource::Fd {
        fd,
        name: Some(ifname),
    })
}

fn run(name: &str, netns: Option<&str>, offload: bool) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let ifname = InterfaceName::new(name).context("invalid interface name")?;

    // Block the stop signals before any thread exists, so every device thread
    // inherits the mask and only `sigtimedwait` below receives them.
    let set = stop_signals();
    // SAFETY: `set` is initialised; the old mask is not needed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        bail!(
            "blocking signals: {}",
            std::io::Error::from_raw_os_error(rc)
        );
    }

    let tun = tun_source(ifname, netns)?;
    let options = DeviceOptions {
        offload,
        ..DeviceOptions::default()
    };
    let device = Device::open(tun, options).context("starting the device")?;
    let socket = device
        .uapi_path()
        .map(std::path::Path::to_path_buf)
        .context("the device has no UAPI socket")?;
    tracing::info!(socket = %socket.display(), port = device.listen_port(), offloads = ?device.offloads(), "ready");

    let timeout = libc::timespec {
        tv_sec: HEALTH_INTERVAL.as_secs() as libc::time_t,
        tv_nsec: 0,
    };
    let outcome = loop {
        // SAFETY: `set` and `timeout` are initialised; no siginfo is requested.
        let sig = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &timeout) };
        if sig > 0 {
            tracing::info!(signal = sig, "stopping");
            break Ok(());
        }
        if !device.is_running() {
            // The interface was deleted: as wireguard-go, stop cleanly.
            tracing::warn!("the TUN interface went away; stopping");
            break Ok(());
        }
        if !socket.exists() {
            tracing::info!("UAPI socket deleted; stopping");
            break Ok(());
        }
    };
    device.shutdown();
    outcome
}
