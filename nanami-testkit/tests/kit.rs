//! The kit itself, as root: namespaces, veth pairs, processes, waits, ports.
#![allow(clippy::unwrap_used)]

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use nanami_testkit::port::{reported_addr, Reserved};
use nanami_testkit::root::require_netns;
use nanami_testkit::veth::{bridge, plug, set_link};
use nanami_testkit::{veth, wait_until, wait_until_async, Netns, Process};

fn exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

#[test]
fn a_namespace_is_deleted_with_its_processes_on_drop() {
    require_netns(&["ping", "sleep"]);
    let ns = Netns::new("kit");
    let name = ns.name().to_owned();
    assert!(exists(&name));
    assert!(ns.exec("ip", &["link", "show", "lo"]).contains("UP"));
    let owned = ns.spawn("sleep", &["600"], &[]);
    // A process the namespace did not start (it detached): killed too.
    let stray = ns
        .command("sh")
        .args(["-c", "setsid sleep 600 >/dev/null 2>&1 & echo $!"])
        .output()
        .unwrap();
    let stray: i32 = String::from_utf8_lossy(&stray.stdout)
        .trim()
        .parse()
        .unwrap();
    drop(ns);
    assert!(!exists(&name), "{name} left");
    for pid in [owned as i32, stray] {
        wait_until(&format!("pid {pid} to go"), Duration::from_secs(5), || {
            !Path::new(&format!("/proc/{pid}")).exists()
                || std::fs::read_to_string(format!("/proc/{pid}/stat"))
                    .unwrap_or_default()
                    .contains(") Z ")
        });
    }
}

#[test]
fn a_fixed_name_replaces_what_an_earlier_run_left() {
    require_netns(&[]);
    let name = format!("nmt-kit-fixed-{}", std::process::id());
    let first = Netns::named(&name);
    first.ip(&["link", "add", "k7a", "type", "veth", "peer", "name", "k7b"]);
    std::mem::forget(first); // a crashed run
    let second = Netns::named(&name);
    assert!(!second.has_link("k7a"), "the old namespace was kept");
    drop(second);
    assert!(!exists(&name));
}

#[test]
fn veth_pairs_and_bridges_connect_namespaces() {
    require_netns(&["ping"]);
    let (a, b) = (Netns::new("ka"), Netns::new("kb"));
    let (ia, ib) = veth(&a, "10.77.0.1/24", &b, "10.77.0.2/24");
    assert!(a.has_link(&ia) && b.has_link(&ib));
    assert!(a.ping_until("10.77.0.2", Duration::from_secs(5)));

    let (wan, c) = (Netns::new("kw"), Netns::new("kc"));
    bridge(&wan, "br0", &[]);
    plug(&a, "eth0", &["10.78.0.1/24"], &wan, "br0", "port-a");
    plug(&c, "eth0", &["10.78.0.3/24"], &wan, "br0", "port-c");
    assert!(c.ping_until("10.78.0.1", Duration::from_secs(5)));
    set_link(&wan, "port-a", false);
    assert!(!c.try_exec("ping", &["-c", "1", "-W", "1", "10.78.0.1"]));
}

#[test]
fn enter_runs_inside_and_carries_panics_out() {
    require_netns(&[]);
    let ns = Netns::new("ke");
    let listener = ns.enter(|| TcpListener::bind("127.0.0.1:0").unwrap());
    let addr = listener.local_addr().unwrap();
    // Not reachable from the test's own namespace, reachable inside.
    assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err());
    assert!(ns.enter(|| TcpStream::connect(addr).is_ok()));
    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let n = std::process::id() % 10;
        ns.enter(|| panic!("inside: {n}"));
    }))
    .unwrap_err();
    let n = std::process::id() % 10;
    assert_eq!(
        panic.downcast_ref::<String>().unwrap(),
        &format!("inside: {n}")
    );
}

#[test]
fn a_process_is_stopped_and_reaped_on_drop_and_its_output_is_kept() {
    require_netns(&[]);
    let ns = Netns::new("kp");
    let mut p = ns.process(
        "a shell",
        "sh",
        &[
            "-c",
            "echo listening on addr=127.0.0.1:4321 now; exec sleep 600",
        ],
        &[],
    );
    let addr = p.wait_for_output("its address", Duration::from_secs(5), |out| {
        reported_addr(out, "addr=")
    });
    assert_eq!(addr.port(), 4321);
    p.assert_running();
    let (pid, log) = (p.pid(), p.log_path().to_owned());
    drop(p);
    assert!(!Path::new(&format!("/proc/{pid}")).exists(), "not reaped");
    assert!(!log.exists(), "the kit's own log is removed");

    let mut quick = ns.process("false", "sh", &["-c", "echo oops >&2; exit 3"], &[]);
    let failed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        quick.wait_for_output("never", Duration::from_secs(5), |_| None::<()>)
    }))
    .unwrap_err();
    let message = failed.downcast_ref::<String>().unwrap();
    assert!(
        message.contains("exited") && message.contains("oops"),
        "{message}"
    );
}

#[test]
fn a_process_that_ignores_sigterm_is_killed() {
    let mut p = Process::spawn("stubborn", {
        let mut c = std::process::Command::new("sh");
        c.args([
            "-c",
            "trap '' TERM; echo ready; while :; do sleep 0.1; done",
        ]);
        c
    });
    p.wait_for_output("its trap", Duration::from_secs(5), |o| {
        o.contains("ready").then_some(())
    });
    let start = Instant::now();
    let status = p.stop();
    assert!(!status.success());
    assert!(start.elapsed() >= nanami_testkit::process::GRACE);
}

#[test]
fn waits_return_the_value_and_fail_with_the_last_observation() {
    let mut n = 0;
    let v = wait_until("n to reach 3", Duration::from_secs(5), || {
        n += 1;
        (n >= 3).then_some(n)
    });
    assert_eq!(v, 3);
    let failed = std::panic::catch_unwind(|| {
        wait_until("the impossible", Duration::from_millis(100), || {
            Err::<(), _>("seen 41")
        })
    })
    .unwrap_err();
    let message = failed.downcast_ref::<String>().unwrap();
    assert!(
        message.contains("waiting for the impossible") && message.contains("seen 41"),
        "{message}"
    );
}

#[tokio::test]
async fn the_async_wait_polls_a_future() {
    let start = Instant::now();
    wait_until_async("100 ms to pass", Duration::from_secs(5), || async {
        start.elapsed() >= Duration::from_millis(100)
    })
    .await;
}

#[test]
fn a_reserved_port_refuses_connections_until_a_child_binds_it() {
    let loopback = IpAddr::from([127, 0, 0, 1]);
    let reserved = Reserved::tcp(loopback);
    let addr = reserved.addr();
    assert!(TcpStream::connect(addr).is_err(), "nothing listens yet");
    // Nobody else gets it from the kernel meanwhile.
    for _ in 0..200 {
        let other = nanami_testkit::port::tcp_listener(loopback);
        assert_ne!(other.local_addr().unwrap().port(), addr.port());
    }
    // A server (std's listener sets SO_REUSEADDR, as tokio's does) takes it over.
    let server = TcpListener::bind(addr).unwrap();
    let mut client = TcpStream::connect(addr).unwrap();
    let (mut accepted, _) = server.accept().unwrap();
    accepted.write_all(b"hi").unwrap();
    let mut buf = [0u8; 2];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hi");
}

#[test]
fn reported_addresses_are_found_in_logs() {
    let log = "INFO serving addr=127.0.0.1:7443 tls=true\nINFO serving /metrics addr=Some(127.0.0.1:9501)";
    assert_eq!(
        reported_addr(log, "serving addr="),
        Some("127.0.0.1:7443".parse().unwrap())
    );
    assert_eq!(
        reported_addr(log, "/metrics addr=Some"),
        Some("127.0.0.1:9501".parse().unwrap())
    );
    assert_eq!(reported_addr(log, "missing="), None);
}
