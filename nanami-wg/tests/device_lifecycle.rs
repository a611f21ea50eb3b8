//! Clean stop: `Device::shutdown` and drop join every thread the device started and
//! remove its UAPI socket. Its own test binary, so no other test's threads are around.
//! Needs root (a TUN in a private namespace).

mod common;

use std::time::{Duration, Instant};

use common::{ifname, keypair, Netns};
use nanami_model::InterfaceName;
use nanami_wg::device::{Device, DeviceOptions, DeviceUpdate, PeerUpdate, TunSource};

/// Names of this process's threads that belong to a device.
fn device_threads() -> Vec<String> {
    let mut names = Vec::new();
    for task in std::fs::read_dir("/proc/self/task")
        .expect("tasks")
        .flatten()
    {
        if let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) {
            let comm = comm.trim().to_owned();
            if comm.starts_with("nanami-") {
                names.push(comm);
            }
        }
    }
    names.sort();
    names
}

fn open(ns: &Netns) -> Device {
    let name = InterfaceName::new(ifname("l")).expect("name");
    let dev = ns
        .enter(|| Device::open(TunSource::Name(name), DeviceOptions::default()))
        .expect("open device");
    let (key, _) = keypair();
    let (_, peer) = keypair();
    dev.apply(
        DeviceUpdate::new().private_key(key).peer(
            PeerUpdate::new(peer)
                .endpoint("172.30.9.9:51820".parse().expect("ep"))
                .replace_allowed_ips(["10.9.0.0/24".parse().expect("n")]),
        ),
    )
    .expect("configure");
    // Rebinding the port replaces the receive threads: those must be joined too.
    dev.apply(DeviceUpdate::new().listen_port(0))
        .expect("rebind");
    dev
}

#[test]
fn shutdown_and_drop_join_every_thread_and_remove_the_socket() {
    common::require(&[]);
    let ns = Netns::new("l");
    assert!(device_threads().is_empty());

    let dev = open(&ns);
    // A thread names itself once it runs, a moment after it is spawned: wait for it.
    let expected = [
        "nanami-tun",
        "nanami-timers",
        "nanami-uapi",
        "nanami-udp-v4",
        "nanami-handshak", // "nanami-handshake", cut to the kernel's 15 bytes
    ];
    let start = Instant::now();
    loop {
        let running = device_threads();
        let missing: Vec<&str> = expected
            .iter()
            .filter(|t| !running.iter().any(|n| n == *t))
            .copied()
            .collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{missing:?} not running: {running:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let sock = dev.uapi_path().expect("socket").to_owned();
    assert!(sock.exists());
    // The TUN the device made holds 2,000 packets for it, not the kernel's 500:
    // a TUN drops what overflows it, and TCP retransmits each one.
    let link = ns.ip(&["link", "show", dev.name().expect("a named TUN")]);
    assert!(link.contains("qlen 2000"), "{link}");
    let start = Instant::now();
    dev.shutdown();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "shutdown took {:?}",
        start.elapsed()
    );
    assert_eq!(
        device_threads(),
        Vec::<String>::new(),
        "threads left behind"
    );
    assert!(!sock.exists(), "UAPI socket left behind");

    let dev = open(&ns);
    let sock = dev.uapi_path().expect("socket").to_owned();
    drop(dev);
    assert_eq!(
        device_threads(),
        Vec::<String>::new(),
        "threads left behind by drop"
    );
    assert!(!sock.exists());
}
