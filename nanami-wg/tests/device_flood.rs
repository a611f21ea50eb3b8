//! A handshake flood does not stall the data plane (issue 22). A client (wireguard-go)
//! pushes one TCP stream through a Nanami gateway while a third namespace floods the
//! gateway with valid-MAC1 initiations, first without cookies, then with a cookie for
//! its address. The stream keeps more than half its unflooded throughput (measured in
//! the same test, before and after), and with the cookie the flooder gets about 20
//! initiations a second through to Diffie-Hellman. Needs root, `wireguard-go`, `wg`,
//! `ping`.

mod common;
#[path = "common/raw.rs"]
mod raw;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use boringtun::noise::TunnResult;
use common::pair::{Pair, A_IN, A_PORT};
use common::{keypair, veth, Netns};
use nanami_model::PublicKey;
use nanami_wg::device::DeviceCounters;
use raw::{initiation, wait_until, StopOnDrop, COOKIE};

/// Initiations a second the flooder sends: each would cost the gateway at least one
/// Diffie-Hellman (~50 µs) if it reached one, twice what one core can do.
const FLOOD_PER_SECOND: u64 = 20_000;
/// Distinct initiations the flooder cycles through (made in advance: making one costs
/// the flooder two scalar multiplications). Fewer than 256, so that the pool's sender
/// indices (a `Tunn` cycles through 256) differ from the one that asked for the cookie.
const POOL: usize = 200;
/// Each throughput measurement.
const WINDOW: Duration = Duration::from_secs(3);
const F_UNDER: &str = "172.30.1.2";
const A_UNDER_F: &str = "172.30.1.1";

/// What the flooder does.
const IDLE: u8 = 0;
const NO_COOKIE: u8 = 1;
const WITH_COOKIE: u8 = 2;

/// The flooder's state, shared with the test.
#[derive(Default)]
struct Flood {
    mode: AtomicU8,
    stop: AtomicBool,
    sent: AtomicU64,
    cookies_received: AtomicU64,
    /// Set while the flooder's initiations carry a cookie it believes valid.
    has_cookie: AtomicBool,
}

/// The receiver index a cookie reply names, or the sender index of an initiation.
fn index(message: &[u8]) -> u32 {
    u32::from_le_bytes([message[4], message[5], message[6], message[7]])
}

/// The flooder: a key that is no peer of the gateway (it knows only the gateway's
/// public key, which is all a valid MAC1 needs).
fn flooder(flood: &Flood, sock: &UdpSocket, gateway: SocketAddr, gateway_pub: &PublicKey) {
    let (key, _) = keypair();
    let mut tunn = raw::tunn(&key, gateway_pub, None, 1);
    let plain: Vec<Vec<u8>> = (0..POOL).map(|_| initiation(&mut tunn)).collect();
    let mut with_cookie: Vec<Vec<u8>> = Vec::new();
    // While asking for a cookie: the initiation the flooder's `Tunn` would take one
    // for (its last), sent at the full rate.
    let mut asking: Option<Vec<u8>> = None;
    let mut buf = [0u8; 256];
    let mut out = [0u8; 256];
    let start = Instant::now();
    let mut next = 0usize;
    while !flood.stop.load(Ordering::Relaxed) {
        let mode = flood.mode.load(Ordering::Relaxed);
        // Answers: cookie replies (for the plain flood, or a cookie gone stale).
        while let Ok((n, _)) = sock.recv_from(&mut buf) {
            if buf[0] != COOKIE || n < 8 {
                continue;
            }
            flood.cookies_received.fetch_add(1, Ordering::Relaxed);
            if mode != WITH_COOKIE {
                continue;
            }
            match &asking {
                Some(ask) if index(ask) == index(&buf) => {
                    if let TunnResult::Done = tunn.decapsulate(None, &buf[..n], &mut out) {
                        with_cookie = (0..POOL).map(|_| initiation(&mut tunn)).collect();
                        asking = None;
                        flood.has_cookie.store(true, Ordering::Relaxed);
                    }
                }
                Some(_) => {}
                None => {
                    if with_cookie.iter().any(|i| index(i) == index(&buf)) {
                        // The gateway's cookie secret turned over (every two
                        // minutes): ask again.
                        flood.has_cookie.store(false, Ordering::Relaxed);
                        with_cookie.clear();
                    }
                }
            }
        }
        if mode == WITH_COOKIE && with_cookie.is_empty() && asking.is_none() {
            asking = Some(initiation(&mut tunn));
        }
        // Send what is due at FLOOD_PER_SECOND.
        let due = start.elapsed().as_micros() as u64 * FLOOD_PER_SECOND / 1_000_000;
        let mut sent = flood.sent.load(Ordering::Relaxed);
        while mode != IDLE && sent < due {
            let packet = match (&asking, mode) {
                (Some(ask), WITH_COOKIE) => ask,
                (None, WITH_COOKIE) => &with_cookie[next % POOL],
                _ => &plain[next % POOL],
            };
            let _ = sock.send_to(packet, gateway);
            next += 1;
            sent += 1;
        }
        if mode == IDLE {
            sent = due;
        }
        flood.sent.store(sent, Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Bytes a second received by the stream's reader over one window.
fn throughput(received: &AtomicU64) -> f64 {
    let before = received.load(Ordering::Relaxed);
    let start = Instant::now();
    // A measurement window, not an ordering wait.
    std::thread::sleep(WINDOW);
    let bytes = received.load(Ordering::Relaxed) - before;
    bytes as f64 / start.elapsed().as_secs_f64()
}

/// Throughput under a flood: the best of up to three windows, stopping at the first
/// above `enough`. On a shared two-core machine one window can lose to a neighbour's
/// build; a stalled data plane loses all three (the design before issue 22 kept about
/// 1% of its throughput under the flood with a cookie).
fn flooded_throughput(received: &AtomicU64, enough: f64) -> f64 {
    let mut best: f64 = 0.0;
    for _ in 0..3 {
        best = best.max(throughput(received));
        if best > enough {
            break;
        }
    }
    best
}

fn mbit(bytes_per_second: f64) -> f64 {
    bytes_per_second * 8.0 / 1e6
}

/// `after - before` of the counters this test reads.
fn delta(before: &DeviceCounters, after: &DeviceCounters) -> (u64, u64, u64) {
    (
        after.handshake_rejected - before.handshake_rejected,
        after.handshake_rate_limited - before.handshake_rate_limited,
        after.cookie_replies - before.cookie_replies,
    )
}

#[test]
fn a_handshake_flood_leaves_other_peers_traffic_flowing() {
    let p = Pair::new();
    p.wait_up();
    let f = Netns::new("f");
    veth(
        &p.a,
        &format!("{A_UNDER_F}/24"),
        &f,
        &format!("{F_UNDER}/24"),
    );
    let gateway: SocketAddr = format!("{A_UNDER_F}:{A_PORT}").parse().expect("addr");
    let flood_sock = raw::socket(&f, &format!("{F_UNDER}:0"));
    flood_sock.set_nonblocking(true).expect("nonblocking");

    // One TCP stream from wireguard-go's side to the gateway's overlay address.
    let addr: SocketAddr = format!("{A_IN}:5201").parse().expect("addr");
    let listener = p.a.enter(|| TcpListener::bind(addr)).expect("listen");
    let received = AtomicU64::new(0);
    let flood = Flood::default();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        let _stop_flood = StopOnDrop(&flood.stop);
        s.spawn(|| {
            let (mut conn, _) = listener.accept().expect("accept");
            conn.set_read_timeout(Some(Duration::from_millis(200)))
                .expect("timeout");
            let mut buf = vec![0u8; 1 << 16];
            while !stop.load(Ordering::Relaxed) {
                match conn.read(&mut buf) {
                    Ok(0) => return,
                    Ok(n) => {
                        received.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(_) => {}
                }
            }
        });
        s.spawn(|| {
            let mut conn =
                p.b.enter(|| TcpStream::connect_timeout(&addr, Duration::from_secs(10)))
                    .expect("connect through the tunnel");
            conn.set_write_timeout(Some(Duration::from_millis(200)))
                .expect("timeout");
            let chunk = vec![0x5au8; 1 << 16];
            while !stop.load(Ordering::Relaxed) {
                let _ = conn.write(&chunk);
            }
        });
        s.spawn(|| flooder(&flood, &flood_sock, gateway, &p.a_pub));

        wait_until("the stream to start", Duration::from_secs(20), || {
            received.load(Ordering::Relaxed) > 4 << 20
        });
        let base_before = throughput(&received);

        // Flood without cookies: the gateway is under load and answers cookie replies.
        flood.mode.store(NO_COOKIE, Ordering::Relaxed);
        let c0 = p.dev.counters();
        wait_until(
            "cookie replies to the flood",
            Duration::from_secs(10),
            || p.dev.counters().cookie_replies > c0.cookie_replies + 1000,
        );
        let sent0 = flood.sent.load(Ordering::Relaxed);
        let start = Instant::now();
        let plain = flooded_throughput(&received, base_before / 2.0);
        let plain_rate =
            (flood.sent.load(Ordering::Relaxed) - sent0) as f64 / start.elapsed().as_secs_f64();

        // Flood with a cookie for the flooder's address: limited to its budget.
        flood.mode.store(WITH_COOKIE, Ordering::Relaxed);
        let c1 = p.dev.counters();
        wait_until(
            "the flood with cookies limited",
            Duration::from_secs(20),
            || {
                flood.has_cookie.load(Ordering::Relaxed)
                    && p.dev.counters().handshake_rate_limited > c1.handshake_rate_limited + 1000
            },
        );
        let before = p.dev.counters();
        let sent1 = flood.sent.load(Ordering::Relaxed);
        let start = Instant::now();
        let cookied = flooded_throughput(&received, base_before / 2.0);
        let after = p.dev.counters();
        let secs = start.elapsed().as_secs_f64();
        let cookied_rate = (flood.sent.load(Ordering::Relaxed) - sent1) as f64 / secs;
        let stale = !flood.has_cookie.load(Ordering::Relaxed);
        let (processed, limited, cookies) = delta(&before, &after);

        flood.mode.store(IDLE, Ordering::Relaxed);
        // Over once nothing is turned away for a while.
        wait_until("the flood to end", Duration::from_secs(10), || {
            let c = p.dev.counters();
            std::thread::sleep(Duration::from_millis(200));
            let again = p.dev.counters();
            again.handshake_rate_limited == c.handshake_rate_limited
                && again.cookie_replies == c.cookie_replies
        });
        let base_after = throughput(&received);

        let base = (base_before + base_after) / 2.0;
        eprintln!(
            "TCP through the gateway: unflooded {:.0} and {:.0} Mbit/s; flood without \
             cookies ({plain_rate:.0}/s) {:.0} Mbit/s ({:.2}×); with a cookie \
             ({cookied_rate:.0}/s) {:.0} Mbit/s ({:.2}×); with the cookie, over {secs:.1} s: \
             {processed} initiations to Diffie-Hellman ({:.1}/s), {limited} over budget, \
             {cookies} cookie replies",
            mbit(base_before),
            mbit(base_after),
            mbit(plain),
            plain / base,
            mbit(cookied),
            cookied / base,
            processed as f64 / secs,
        );
        assert!(
            plain_rate > FLOOD_PER_SECOND as f64 / 2.0
                && cookied_rate > FLOOD_PER_SECOND as f64 / 2.0,
            "the flooder did not flood ({plain_rate:.0}/s, {cookied_rate:.0}/s)"
        );
        assert!(
            plain > base / 2.0,
            "flood without cookies: {:.0} Mbit/s against {:.0} unflooded",
            mbit(plain),
            mbit(base)
        );
        assert!(
            cookied > base / 2.0,
            "flood with a cookie: {:.0} Mbit/s against {:.0} unflooded",
            mbit(cookied),
            mbit(base)
        );
        // 20 a second plus the burst of 5; a cookie gone stale mid-window (the secret
        // turns over every two minutes) only lowers the count.
        let most = 20.0 * secs + 5.0 + 2.0;
        assert!(
            (processed as f64) <= most,
            "{processed} initiations reached Diffie-Hellman in {secs:.1} s (at most {most:.0})"
        );
        if !stale {
            assert!(
                (processed as f64) >= 10.0 * secs,
                "only {processed} initiations with a valid cookie got through in {secs:.1} s"
            );
        }
    });
    assert!(p.dev.is_running());
}
