//! ICMP echo probes ("ping") for forwarding-path health.
//!
//! A [`Pinger`] owns one raw ICMP (IPv4) and one raw ICMPv6 socket and one receive
//! task per socket that hands each matching echo reply to the [`Pinger::ping`] call
//! waiting for it. Many pings may be in flight at once from one `Pinger` (clones
//! share it): each request carries the `Pinger`'s random identifier, its own
//! sequence number and the `Pinger`'s random 16-byte token, and a reply counts only
//! when its source address, identifier, sequence number and token all match.
//! Replies are untrusted input: short, malformed or foreign packets are dropped.
//!
//! Raw sockets (not `SOCK_DGRAM` "ping sockets") because a fresh network namespace's
//! `net.ipv4.ping_group_range` forbids ping sockets; raw sockets need `CAP_NET_RAW`.
//! IPv4 raw sockets deliver the IP header before the ICMP message; ICMPv6 raw sockets
//! do not, and the kernel fills in and verifies the ICMPv6 checksum.

use nanami_model::ErrorKind;
use std::collections::HashMap;
use std::io;
use std::mem::MaybeUninit;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rand_core::{OsRng, RngCore};
use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// ICMP echo request and reply types (RFC 792, RFC 4443).
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;

/// Bytes of the ICMP echo header (type, code, checksum, identifier, sequence).
const ECHO_HEADER: usize = 8;
/// Bytes of the payload token that tells this `Pinger`'s replies from others'.
const TOKEN_LEN: usize = 16;
/// Receive buffer: larger than any echo reply we accept; bigger packets are truncated
/// and then fail the length check.
const RECV_BUFFER: usize = 2048;
/// Pause after an unexpected receive error, so a persistent one cannot spin a core.
const RECV_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// An address family, as named in [`ProbeError::Unsupported`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// IPv4 (raw ICMP socket).
    V4,
    /// IPv6 (raw ICMPv6 socket).
    V6,
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::V4 => "IPv4",
            Family::V6 => "IPv6",
        })
    }
}

/// What can go wrong with a probe.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// No matching echo reply came back in time: the target (or the path to it) is
    /// down. The caller counts it as a failed probe.
    #[error("no echo reply within the timeout")]
    Timeout,
    /// A socket operation failed (opening without `CAP_NET_RAW`, sending to an
    /// unreachable network, …). Opening: run with `CAP_NET_RAW`. Sending: the probe
    /// failed; the caller counts it as a failed probe.
    #[error("ICMP socket: {0}")]
    Io(#[from] io::Error),
    /// This `Pinger` has no socket for the target's family (it could not be opened,
    /// e.g. IPv6 disabled). The caller cannot probe such targets.
    #[error("no {0} ICMP socket (it could not be opened)")]
    Unsupported(Family),
    /// [`Pinger::new`] was called outside a Tokio runtime with I/O enabled: a caller bug.
    #[error("Pinger::new needs a Tokio runtime with I/O enabled")]
    NoRuntime,
    /// Every sequence number is taken by a ping in flight (65 536 at once): retry later.
    #[error("too many pings in flight")]
    Busy,
}

impl ProbeError {
    /// Building a pinger outside a runtime is a [`ErrorKind::Bug`]; everything
    /// else is the network's or the kernel's ([`ErrorKind::Environment`]).
    pub fn kind(&self) -> ErrorKind {
        match self {
            ProbeError::NoRuntime => ErrorKind::Bug,
            ProbeError::Timeout
            | ProbeError::Io(_)
            | ProbeError::Unsupported(_)
            | ProbeError::Busy => ErrorKind::Environment,
        }
    }
}

/// Sends ICMP echo requests and waits for their replies; cheap to clone (shared).
///
/// Dropping the last clone stops the receive tasks and closes the sockets.
#[derive(Clone)]
pub struct Pinger {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Pinger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pinger")
            .field("ident", &self.inner.shared.ident)
            .field("v4", &self.inner.v4.is_some())
            .field("v6", &self.inner.v6.is_some())
            .finish()
    }
}

struct Inner {
    v4: Option<Arc<AsyncFd<Socket>>>,
    v6: Option<Arc<AsyncFd<Socket>>>,
    shared: Arc<Shared>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// What the senders and the receive tasks share.
struct Shared {
    ident: u16,
    token: [u8; TOKEN_LEN],
    state: Mutex<Waiters>,
}

#[derive(Default)]
struct Waiters {
    next_seq: u16,
    by_seq: HashMap<u16, Waiter>,
}

struct Waiter {
    target: IpAddr,
    reply: oneshot::Sender<Instant>,
}

impl Shared {
    fn waiters(&self) -> std::sync::MutexGuard<'_, Waiters> {
        // The map stays consistent under every operation, so a panic elsewhere
        // while holding it leaves nothing half-done.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reserves a free sequence number for a ping to `target`.
    fn register(&self, target: IpAddr) -> Result<(u16, oneshot::Receiver<Instant>), ProbeError> {
        let mut w = self.waiters();
        if w.by_seq.len() > usize::from(u16::MAX) {
            return Err(ProbeError::Busy);
        }
        let mut seq = w.next_seq;
        while w.by_seq.contains_key(&seq) {
            seq = seq.wrapping_add(1);
        }
        w.next_seq = seq.wrapping_add(1);
        let (tx, rx) = oneshot::channel();
        w.by_seq.insert(seq, Waiter { target, reply: tx });
        Ok((seq, rx))
    }

    fn unregister(&self, seq: u16) {
        self.waiters().by_seq.remove(&seq);
    }

    /// Hands a parsed echo reply to its waiter, if it is one of ours.
    fn deliver(&self, from: IpAddr, echo: Echo<'_>, at: Instant) {
        if echo.ident != self.ident || echo.payload != self.token {
            return;
        }
        let mut w = self.waiters();
        let matches = w
            .by_seq
            .get(&echo.seq)
            .is_some_and(|waiter| waiter.target == from);
        if matches {
            if let Some(waiter) = w.by_seq.remove(&echo.seq) {
                let _ = waiter.reply.send(at);
            }
        }
    }
}

/// Removes a ping's waiter however the ping ends (reply, timeout, cancellation).
struct Registration<'a> {
    shared: &'a Shared,
    seq: u16,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        self.shared.unregister(self.seq);
    }
}

impl Pinger {
    /// Opens raw ICMP (v4) and ICMPv6 sockets; needs `CAP_NET_RAW`. Error if neither
    /// opens (the IPv4 error when both fail). Must be called within a Tokio runtime
    /// with I/O enabled; the sockets live in the network namespace of the calling
    /// thread.
    pub fn new() -> Result<Pinger, ProbeError> {
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ProbeError::NoRuntime);
        }
        let mut ident = [0u8; 2];
        let mut token = [0u8; TOKEN_LEN];
        OsRng.fill_bytes(&mut ident);
        OsRng.fill_bytes(&mut token);
        let shared = Arc::new(Shared {
            ident: u16::from_be_bytes(ident),
            token,
            state: Mutex::new(Waiters::default()),
        });

        let v4 = open(Domain::IPV4, Protocol::ICMPV4);
        let v6 = open(Domain::IPV6, Protocol::ICMPV6);
        let (v4, v6) = match (v4, v6) {
            (Err(e4), Err(e6)) => {
                tracing::debug!(error = %e6, "cannot open a raw ICMPv6 socket");
                return Err(ProbeError::Io(e4));
            }
            (v4, v6) => {
                if let Err(e) = &v4 {
                    tracing::warn!(error = %e, "cannot open a raw ICMP socket; IPv4 targets cannot be probed");
                }
                if let Err(e) = &v6 {
                    tracing::warn!(error = %e, "cannot open a raw ICMPv6 socket; IPv6 targets cannot be probed");
                }
                (v4.ok(), v6.ok())
            }
        };
        let mut tasks = Vec::new();
        for (fd, family) in [(&v4, Family::V4), (&v6, Family::V6)] {
            if let Some(fd) = fd {
                tasks.push(tokio::spawn(receive(
                    Arc::clone(fd),
                    Arc::clone(&shared),
                    family,
                )));
            }
        }
        Ok(Pinger {
            inner: Arc::new(Inner {
                v4,
                v6,
                shared,
                tasks,
            }),
        })
    }

    /// One echo request to `target`; `Ok(round-trip)` on a matching echo reply within
    /// `timeout`, `Err(ProbeError::Timeout)` otherwise. Many concurrent pings from one
    /// `Pinger` work; each is matched on source, identifier, sequence and token.
    ///
    /// An IPv4-mapped IPv6 address is pinged over IPv4. IPv6 link-local targets need
    /// a scope, which an `IpAddr` lacks: they fail with [`ProbeError::Io`].
    pub async fn ping(&self, target: IpAddr, timeout: Duration) -> Result<Duration, ProbeError> {
        let target = target.to_canonical();
        let (fd, family) = match target {
            IpAddr::V4(_) => (&self.inner.v4, Family::V4),
            IpAddr::V6(_) => (&self.inner.v6, Family::V6),
        };
        let fd = fd.as_ref().ok_or(ProbeError::Unsupported(family))?;
        let shared = &self.inner.shared;
        let (seq, reply) = shared.register(target)?;
        let _registration = Registration { shared, seq };
        let packet = echo_request(family, shared.ident, seq, &shared.token);
        let dest = SockAddr::from(SocketAddr::new(target, 0));

        let deadline = tokio::time::Instant::now() + timeout;
        let sent = Instant::now();
        let send = async {
            loop {
                let mut guard = fd.writable().await?;
                match guard.try_io(|s| s.get_ref().send_to(&packet, &dest)) {
                    Ok(result) => return result.map(|_| ()),
                    Err(_would_block) => continue,
                }
            }
        };
        match tokio::time::timeout_at(deadline, send).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(ProbeError::Io(e)),
            Err(_) => return Err(ProbeError::Timeout),
        }
        match tokio::time::timeout_at(deadline, reply).await {
            Ok(Ok(at)) => Ok(at.saturating_duration_since(sent)),
            // The sender is only dropped when the receive task is gone (the Pinger is
            // being dropped): no reply will come.
            Ok(Err(_)) | Err(_) => Err(ProbeError::Timeout),
        }
    }
}

fn open(domain: Domain, protocol: Protocol) -> io::Result<Arc<AsyncFd<Socket>>> {
    let s = Socket::new(domain, Type::RAW.cloexec(), Some(protocol))?;
    s.set_nonblocking(true)?;
    // SAFETY: the `Socket` owns its descriptor, which stays open and the same until
    // the `AsyncFd` (its only owner) is dropped.
    let fd = unsafe { AsyncFd::register(s) }?;
    Ok(Arc::new(fd))
}

/// The receive task of one socket: parse every datagram, deliver matching replies.
async fn receive(fd: Arc<AsyncFd<Socket>>, shared: Arc<Shared>, family: Family) {
    let mut buf = vec![0u8; RECV_BUFFER];
    loop {
        let mut guard = match fd.readable().await {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(%family, error = %e, "ICMP socket cannot be polled; probes of this family will time out");
                return;
            }
        };
        let got = guard.try_io(|s| {
            // SAFETY: `[u8]` and `[MaybeUninit<u8>]` have the same layout; recvfrom only
            // writes initialised bytes into the buffer, so it stays initialised.
            let uninit =
                unsafe { &mut *(buf.as_mut_slice() as *mut [u8] as *mut [MaybeUninit<u8>]) };
            s.get_ref().recv_from(uninit)
        });
        match got {
            Err(_would_block) => continue,
            Ok(Ok((n, from))) => {
                let at = Instant::now();
                let Some(from) = from.as_socket().map(|a| a.ip().to_canonical()) else {
                    continue;
                };
                let packet = buf.get(..n).unwrap_or_default();
                let echo = match family {
                    Family::V4 => parse_v4(packet),
                    Family::V6 => parse_v6(packet),
                };
                if let Some(echo) = echo {
                    shared.deliver(from, echo, at);
                }
            }
            Ok(Err(e)) => {
                tracing::debug!(%family, error = %e, "ICMP receive failed");
                tokio::time::sleep(RECV_ERROR_PAUSE).await;
            }
        }
    }
}

/// A parsed echo reply.
#[derive(Debug, PartialEq, Eq)]
struct Echo<'a> {
    ident: u16,
    seq: u16,
    payload: &'a [u8],
}

/// Builds an echo request: header, then the token. The IPv4 checksum is ours to
/// compute; the kernel computes the ICMPv6 one (it covers a pseudo-header).
fn echo_request(family: Family, ident: u16, seq: u16, token: &[u8; TOKEN_LEN]) -> Vec<u8> {
    let kind = match family {
        Family::V4 => ICMP_ECHO_REQUEST,
        Family::V6 => ICMPV6_ECHO_REQUEST,
    };
    let mut p = Vec::with_capacity(ECHO_HEADER + TOKEN_LEN);
    p.extend_from_slice(&[kind, 0, 0, 0]);
    p.extend_from_slice(&ident.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(token);
    if family == Family::V4 {
        let sum = checksum(&p).to_be_bytes();
        p[2] = sum[0];
        p[3] = sum[1];
    }
    p
}

/// The Internet checksum (RFC 1071) of `data`: 0 when `data` holds a checksum that
/// verifies.
fn checksum(data: &[u8]) -> u16 {
    crate::checksum::checksum(data, 0)
}

/// Parses one packet as the raw socket of `family` delivers it (IPv4: with its IP
/// header; ICMPv6: the message alone): `Some((identifier, sequence, payload))` for a
/// well-formed echo reply, `None` for anything else. Public for the fuzzers; the
/// packet is untrusted and never makes it panic.
pub fn parse_echo_reply(family: Family, packet: &[u8]) -> Option<(u16, u16, &[u8])> {
    let echo = match family {
        Family::V4 => parse_v4(packet),
        Family::V6 => parse_v6(packet),
    }?;
    Some((echo.ident, echo.seq, echo.payload))
}

/// An IPv4 datagram as a raw ICMP socket delivers it: IP header, then ICMP. Only an
/// echo reply with a valid checksum is returned.
fn parse_v4(packet: &[u8]) -> Option<Echo<'_>> {
    let first = *packet.first()?;
    if first >> 4 != 4 {
        return None;
    }
    let header_len = usize::from(first & 0x0f) * 4;
    if header_len < 20 || *packet.get(9)? != 1 {
        return None;
    }
    let icmp = packet.get(header_len..)?;
    // A valid checksum sums (with itself) to zero.
    if checksum(icmp) != 0 {
        return None;
    }
    parse_echo(icmp, ICMP_ECHO_REPLY)
}

/// An ICMPv6 message as a raw ICMPv6 socket delivers it (no IP header; the kernel
/// has verified the checksum).
fn parse_v6(packet: &[u8]) -> Option<Echo<'_>> {
    parse_echo(packet, ICMPV6_ECHO_REPLY)
}

fn parse_echo(icmp: &[u8], reply_type: u8) -> Option<Echo<'_>> {
    let header = icmp.get(..ECHO_HEADER)?;
    if header[0] != reply_type || header[1] != 0 {
        return None;
    }
    Some(Echo {
        ident: u16::from_be_bytes([header[4], header[5]]),
        seq: u16::from_be_bytes([header[6], header[7]]),
        payload: icmp.get(ECHO_HEADER..)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::RngCore;

    const TOKEN: [u8; TOKEN_LEN] = *b"0123456789abcdef";

    /// An echo reply the way a peer answers `echo_request`, inside an IPv4 header.
    fn v4_reply(ident: u16, seq: u16) -> Vec<u8> {
        let mut icmp = echo_request(Family::V4, ident, seq, &TOKEN);
        icmp[0] = ICMP_ECHO_REPLY;
        icmp[2] = 0;
        icmp[3] = 0;
        let sum = checksum(&icmp).to_be_bytes();
        icmp[2] = sum[0];
        icmp[3] = sum[1];
        let mut ip = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1,
        ];
        ip.extend_from_slice(&icmp);
        ip
    }

    #[test]
    fn request_checksum_verifies() {
        let p = echo_request(Family::V4, 0x1234, 7, &TOKEN);
        assert_eq!(p[0], ICMP_ECHO_REQUEST);
        assert_eq!(checksum(&p), 0);
        assert_eq!(checksum(&[0xff]), !0xff00u16);
    }

    #[test]
    fn parses_v4_reply() {
        let p = v4_reply(0x1234, 7);
        let echo = parse_v4(&p).expect("a reply");
        assert_eq!(
            echo,
            Echo {
                ident: 0x1234,
                seq: 7,
                payload: &TOKEN
            }
        );
    }

    #[test]
    fn rejects_bad_v4() {
        let good = v4_reply(1, 2);
        // Corrupted checksum.
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert_eq!(parse_v4(&bad), None);
        // Not an echo reply (our own request looped back).
        let mut req = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 2, 10, 0, 0, 1,
        ];
        req.extend_from_slice(&echo_request(Family::V4, 1, 2, &TOKEN));
        assert_eq!(parse_v4(&req), None);
        // Header length pointing past the end, wrong version, wrong protocol.
        assert_eq!(parse_v4(&[0x4f, 0, 0]), None);
        assert_eq!(parse_v4(&[0x65; 40]), None);
        let mut udp = good.clone();
        udp[9] = 17;
        assert_eq!(parse_v4(&udp), None);
        // Every truncation.
        for n in 0..good.len() {
            let _ = parse_v4(&good[..n]);
        }
        assert_eq!(parse_v4(&good[..27]), None);
    }

    #[test]
    fn parses_v6_reply_and_ignores_garbage() {
        let mut p = echo_request(Family::V6, 9, 10, &TOKEN);
        assert_eq!(parse_v6(&p), None, "a request is not a reply");
        p[0] = ICMPV6_ECHO_REPLY;
        assert_eq!(parse_v6(&p).map(|e| (e.ident, e.seq)), Some((9, 10)));
        assert_eq!(parse_v6(&p[..7]), None);
        let mut buf = [0u8; 64];
        for _ in 0..10_000 {
            let n = (OsRng.next_u32() as usize) % buf.len();
            OsRng.fill_bytes(&mut buf[..n]);
            let _ = parse_v4(&buf[..n]);
            let _ = parse_v6(&buf[..n]);
        }
    }

    fn shared(ident: u16) -> Shared {
        Shared {
            ident,
            token: TOKEN,
            state: Mutex::new(Waiters::default()),
        }
    }

    #[test]
    fn delivery_matches_source_ident_seq_and_token() {
        let shared = shared(5);
        let target: IpAddr = "10.0.0.2".parse().expect("addr");
        let other: IpAddr = "10.0.0.3".parse().expect("addr");
        let (seq, mut rx) = shared.register(target).expect("register");
        let now = Instant::now();
        let echo = |ident, seq, payload| Echo {
            ident,
            seq,
            payload,
        };
        shared.deliver(other, echo(5, seq, &TOKEN), now);
        shared.deliver(target, echo(6, seq, &TOKEN), now);
        shared.deliver(target, echo(5, seq.wrapping_add(1), &TOKEN), now);
        shared.deliver(target, echo(5, seq, b"not-our-token!!!"), now);
        assert!(rx.try_recv().is_err(), "nothing foreign was delivered");
        shared.deliver(target, echo(5, seq, &TOKEN), now);
        assert_eq!(rx.try_recv().ok(), Some(now));
        assert!(shared.waiters().by_seq.is_empty());
    }

    #[test]
    fn sequence_numbers_skip_those_in_flight() {
        let shared = shared(1);
        let target: IpAddr = "::1".parse().expect("addr");
        shared.waiters().next_seq = u16::MAX;
        let (a, _ra) = shared.register(target).expect("a");
        let (b, _rb) = shared.register(target).expect("b");
        assert_eq!((a, b), (u16::MAX, 0));
        shared.waiters().next_seq = u16::MAX;
        let (c, _rc) = shared.register(target).expect("c");
        assert_eq!(c, 1, "skips the two in flight");
    }
}
