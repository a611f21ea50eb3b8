//! The cross-platform userspace configuration protocol (`wg(8)`'s UAPI) over a Unix
//! socket: `get=1` and `set=1` requests of `key=value` lines ended by an empty line,
//! answered with `errno=N`.
//!
//! A request is untrusted input: lines and the whole request are bounded, it is
//! parsed completely into a [`DeviceUpdate`] before anything is applied, and a refused
//! request changes nothing. Per-peer flags (`remove`, `update_only`,
//! `replace_allowed_ips`) belong to the peer they follow and are reset at every
//! `public_key`. After an error the connection stays usable (or is closed when the
//! framing itself is broken), so a client never hangs.

use std::fmt::Write as _;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use ipnet::IpNet;
use nanami_model::{PrivateKey, PublicKey};
use zeroize::Zeroize;

use super::config::{DeviceInfo, DeviceUpdate, PeerUpdate, PresharedKey, PRESHARED_KEY_LEN};
use super::error::{DeviceError, UapiError};
use super::sys::{self, Ready};
use super::{Offloads, Shared};

/// Longest accepted line. The longest legitimate one (an IPv6 endpoint with a scope)
/// is under 100 bytes.
pub const MAX_LINE_LEN: usize = 1024;

/// Largest accepted request: room for ~50,000 peers with a few AllowedIPs each.
pub const MAX_REQUEST_LEN: usize = 16 << 20;

/// How long a connection may stay silent in the middle of a request, or between
/// requests, before it is closed.
const IDLE_LIMIT: Duration = Duration::from_secs(10);

/// Granularity at which a blocked read notices shutdown.
const READ_SLICE: Duration = Duration::from_millis(200);

/// A parsed request.
#[derive(Debug)]
pub(crate) enum Request {
    /// `get=1`; with the line `nanami_offload=1` the answer also says the device's
    /// offloads (keys `wg(8)` does not know, so it only gets them when it asks).
    Get {
        /// Whether the offload keys were asked for.
        offload: bool,
    },
    /// `set=1` with its changes.
    Set(DeviceUpdate),
}

/// Reads the lines of one request (without the terminating empty line).
/// `Ok(None)` is a clean end of the connection between requests.
pub(crate) fn read_request<R: BufRead>(r: &mut R) -> Result<Option<Vec<String>>, ReadError> {
    let mut lines = Vec::new();
    let mut total = 0usize;
    let mut buf = Vec::with_capacity(128);
    loop {
        buf.clear();
        let n = r
            .by_ref()
            .take(MAX_LINE_LEN as u64 + 1)
            .read_until(b'\n', &mut buf)
            .map_err(ReadError::Io)?;
        if n == 0 {
            return if lines.is_empty() {
                Ok(None)
            } else {
                Err(ReadError::Protocol(UapiError::Truncated))
            };
        }
        let line_no = lines.len() + 1;
        if buf.last() != Some(&b'\n') {
            return Err(ReadError::Protocol(if n > MAX_LINE_LEN {
                UapiError::LineTooLong {
                    line: line_no,
                    max: MAX_LINE_LEN,
                }
            } else {
                UapiError::Truncated
            }));
        }
        buf.pop();
        total += n;
        if total > MAX_REQUEST_LEN {
            return Err(ReadError::Protocol(UapiError::RequestTooLarge {
                max: MAX_REQUEST_LEN,
            }));
        }
        if buf.is_empty() {
            if lines.is_empty() {
                // Stray empty line between requests: ignore it.
                continue;
            }
            return Ok(Some(lines));
        }
        let line = String::from_utf8(std::mem::take(&mut buf))
            .map_err(|_| ReadError::Protocol(UapiError::Malformed { line: line_no }))?;
        lines.push(line);
    }
}

/// Why reading a request stopped.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// The framing is broken: answer with the errno and close.
    Protocol(UapiError),
    /// The connection failed or idled out: close.
    Io(io::Error),
}

/// Parses the lines of one request.
pub(crate) fn parse(lines: &[String]) -> Result<Request, UapiError> {
    let Some(first) = lines.first() else {
        return Err(UapiError::Truncated);
    };
    match first.as_str() {
        "get=1" => match lines.get(1..).unwrap_or_default() {
            [] => Ok(Request::Get { offload: false }),
            [l] if l == "nanami_offload=1" => Ok(Request::Get { offload: true }),
            [l, ..] => Err(UapiError::UnexpectedKey {
                line: 2,
                key: short(l.split('=').next().unwrap_or_default()),
            }),
        },
        "set=1" => parse_set(&lines[1..]).map(Request::Set),
        other => Err(UapiError::UnknownOperation(short(other))),
    }
}

fn short(s: &str) -> String {
    s.chars().take(64).collect()
}

fn invalid(line: usize, key: &'static str, reason: impl Into<String>) -> UapiError {
    UapiError::InvalidValue {
        line,
        key,
        reason: reason.into(),
    }
}

fn parse_true(line: usize, key: &'static str, value: &str) -> Result<bool, UapiError> {
    match value {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid(line, key, "expected true or false")),
    }
}

fn parse_hex32(line: usize, key: &'static str, value: &str) -> Result<[u8; 32], UapiError> {
    let raw = value.as_bytes();
    if raw.len() != 64 {
        return Err(invalid(line, key, "expected 64 hexadecimal digits"));
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in raw.chunks_exact(2).enumerate() {
        match (nibble(pair[0]), nibble(pair[1])) {
            (Some(h), Some(l)) => out[i] = (h << 4) | l,
            _ => return Err(invalid(line, key, "expected 64 hexadecimal digits")),
        }
    }
    Ok(out)
}

fn parse_set(lines: &[String]) -> Result<DeviceUpdate, UapiError> {
    let mut update = DeviceUpdate::new();
    let mut peer: Option<PeerUpdate> = None;
    for (i, line) in lines.iter().enumerate() {
        // +2: 1-based, and the `set=1` line came first.
        let n = i + 2;
        let Some((key, value)) = line.split_once('=') else {
            return Err(UapiError::Malformed { line: n });
        };
        if key == "public_key" {
            let bytes = parse_hex32(n, "public_key", value)?;
            let pk = PublicKey::from_bytes(bytes)
                .map_err(|e| invalid(n, "public_key", e.to_string()))?;
            // Every flag below is per peer: a new peer starts with all of them clear.
            if let Some(done) = peer.replace(PeerUpdate::new(pk)) {
                update.peers.push(done);
            }
            continue;
        }
        match peer.as_mut() {
            None => parse_device_key(&mut update, n, key, value)?,
            Some(p) => parse_peer_key(p, n, key, value)?,
        }
    }
    if let Some(done) = peer {
        update.peers.push(done);
    }
    Ok(update)
}

fn parse_device_key(
    u: &mut DeviceUpdate,
    n: usize,
    key: &str,
    value: &str,
) -> Result<(), UapiError> {
    match key {
        "private_key" => {
            let mut bytes = parse_hex32(n, "private_key", value)?;
            u.private_key = Some(if bytes.iter().all(|b| *b == 0) {
                None
            } else {
                Some(PrivateKey::from_bytes(bytes))
            });
            bytes.zeroize();
        }
        "listen_port" => {
            u.listen_port = Some(
                value
                    .parse()
                    .map_err(|_| invalid(n, "listen_port", "expected 0-65535"))?,
            );
        }
        "fwmark" => {
            u.fwmark = Some(if value.is_empty() {
                0
            } else {
                value
                    .parse()
                    .map_err(|_| invalid(n, "fwmark", "expected a 32-bit number"))?
            });
        }
        "replace_peers" => u.replace_peers = parse_true(n, "replace_peers", value)?,
        // Nanami's own key (`wg(8)` never sends it).
        "nanami_offload" => u.offload = Some(parse_true(n, "nanami_offload", value)?),
        other => {
            return Err(UapiError::UnexpectedKey {
                line: n,
                key: short(other),
            })
        }
    }
    Ok(())
}

fn parse_peer_key(p: &mut PeerUpdate, n: usize, key: &str, value: &str) -> Result<(), UapiError> {
    match key {
        "remove" => p.remove = parse_true(n, "remove", value)?,
        "update_only" => p.update_only = parse_true(n, "update_only", value)?,
        "preshared_key" => {
            let mut bytes = parse_hex32(n, "preshared_key", value)?;
            let k = PresharedKey::from_bytes(bytes);
            bytes.zeroize();
            p.preshared_key = Some((!k.is_zero()).then_some(k));
        }
        "endpoint" => {
            let ep: SocketAddr = value
                .parse()
                .map_err(|_| invalid(n, "endpoint", "expected IP:port or [IPv6]:port"))?;
            if ep.port() == 0 || ep.ip().is_unspecified() {
                return Err(invalid(n, "endpoint", "address and port must be set"));
            }
            p.endpoint = Some(ep);
        }
        "persistent_keepalive_interval" => {
            p.persistent_keepalive =
                Some(value.parse().map_err(|_| {
                    invalid(n, "persistent_keepalive_interval", "expected 0-65535")
                })?);
        }
        "replace_allowed_ips" => {
            p.replace_allowed_ips = parse_true(n, "replace_allowed_ips", value)?
        }
        "allowed_ip" => {
            let net: IpNet = value
                .parse()
                .map_err(|_| invalid(n, "allowed_ip", "expected an IP prefix like 10.0.0.0/24"))?;
            p.allowed_ips.push(net);
        }
        "protocol_version" => {
            if value != "1" {
                return Err(invalid(
                    n,
                    "protocol_version",
                    "only version 1 is supported",
                ));
            }
        }
        other => {
            return Err(UapiError::UnexpectedKey {
                line: n,
                key: short(other),
            })
        }
    }
    Ok(())
}

/// Formats the answer to `get=1` (without the final `errno=0` and empty line).
pub(crate) fn format_get(info: &DeviceInfo) -> String {
    let mut s = String::with_capacity(256 + info.peers.len() * 320);
    if let Some(k) = &info.private_key {
        let _ = writeln!(s, "private_key={}", k.to_hex_secret().as_str());
    }
    let _ = writeln!(s, "listen_port={}", info.listen_port);
    if info.fwmark != 0 {
        let _ = writeln!(s, "fwmark={}", info.fwmark);
    }
    for p in &info.peers {
        let _ = writeln!(s, "public_key={}", p.config.public_key.to_hex());
        if let Some(psk) = &p.config.preshared_key {
            s.push_str("preshared_key=");
            for b in psk.expose_secret().iter().take(PRESHARED_KEY_LEN) {
                let _ = write!(s, "{b:02x}");
            }
            s.push('\n');
        }
        s.push_str("protocol_version=1\n");
        if let Some(ep) = p.config.endpoint {
            let _ = writeln!(s, "endpoint={ep}");
        }
        let since = p
            .stats
            .last_handshake
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .unwrap_or_default();
        let _ = writeln!(s, "last_handshake_time_sec={}", since.as_secs());
        let _ = writeln!(s, "last_handshake_time_nsec={}", since.subsec_nanos());
        let _ = writeln!(s, "tx_bytes={}", p.stats.tx_bytes);
        let _ = writeln!(s, "rx_bytes={}", p.stats.rx_bytes);
        let _ = writeln!(
            s,
            "persistent_keepalive_interval={}",
            p.config.persistent_keepalive.unwrap_or(0)
        );
        for net in &p.config.allowed_ips {
            let _ = writeln!(s, "allowed_ip={net}");
        }
    }
    s
}

/// Appends the answer to `nanami_offload=1`: `nanami_offload=true|false` (the
/// switch) and `nanami_offloads=` the offloads in use, comma-separated (`tun_tso`,
/// `tun_uso`, `tun_gro`, `udp_gso`, `udp_gro`; empty when none).
pub(crate) fn format_offloads(s: &mut String, o: &Offloads) {
    let _ = writeln!(s, "nanami_offload={}", o.enabled);
    let on: Vec<&str> = [
        (o.tun_tso, "tun_tso"),
        (o.tun_uso, "tun_uso"),
        (o.tun_gro, "tun_gro"),
        (o.udp_gso, "udp_gso"),
        (o.udp_gro, "udp_gro"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    let _ = writeln!(s, "nanami_offloads={}", on.join(","));
}

/// Answers one parsed-or-refused request.
fn respond(shared: &Arc<Shared>, lines: &[String]) -> String {
    match parse(lines) {
        Ok(Request::Get { offload }) => {
            let mut s = format_get(&shared.get());
            if offload {
                format_offloads(&mut s, &shared.offloads());
            }
            s.push_str("errno=0\n\n");
            s
        }
        Ok(Request::Set(update)) => match shared.apply(update) {
            Ok(()) => "errno=0\n\n".to_owned(),
            Err(e) => {
                tracing::warn!(error = %e, "UAPI set refused");
                format!("errno=-{}\n\n", e.errno())
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "UAPI request refused");
            format!("errno=-{}\n\n", e.errno())
        }
    }
}

/// Creates the socket `path` (mode 0600) in `dir`, refusing when another live device
/// serves it and replacing a stale one.
pub(crate) fn bind(dir: &Path, path: &Path) -> Result<UnixListener, DeviceError> {
    let err = |source: io::Error| DeviceError::Uapi {
        path: path.to_owned(),
        source,
    };
    if !dir.exists() {
        std::fs::create_dir_all(dir).map_err(err)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).map_err(err)?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(DeviceError::UapiInUse(path.to_owned()));
        }
        std::fs::remove_file(path).map_err(err)?;
    }
    // `Socket::new` makes it close-on-exec on every platform (`SOCK_CLOEXEC`, or
    // `FD_CLOEXEC` on Apple).
    let sock =
        socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::STREAM, None).map_err(err)?;
    // The socket inode's mode becomes the file's mode at bind on Linux: no window in
    // which another user could connect.
    // SAFETY: fchmod on a socket fd we own; no memory is passed.
    if unsafe { libc::fchmod(sock.as_raw_fd(), 0o600) } != 0 {
        return Err(err(io::Error::last_os_error()));
    }
    let addr = socket2::SockAddr::unix(path).map_err(err)?;
    sock.bind(&addr).map_err(err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
    sock.listen(128).map_err(err)?;
    sock.set_nonblocking(true).map_err(err)?;
    Ok(UnixListener::from(OwnedFd::from(sock)))
}

/// Whether the connecting process is root or runs as our user.
fn peer_allowed(stream: &UnixStream) -> bool {
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    peer_uid(stream).is_some_and(|uid| uid == 0 || uid == me)
}

/// The effective user of the process at the other end (`SO_PEERCRED`).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn peer_uid(stream: &UnixStream) -> Option<libc::uid_t> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED fills a `ucred` of `len` bytes; both live across the call.
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cred.uid)
}

/// The effective user of the process at the other end (`getpeereid`: the BSDs and
/// Apple have no `SO_PEERCRED`).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn peer_uid(stream: &UnixStream) -> Option<libc::uid_t> {
    let mut uid: libc::uid_t = libc::uid_t::MAX;
    let mut gid: libc::gid_t = libc::gid_t::MAX;
    // SAFETY: getpeereid writes one uid and one gid into the two live locals.
    let rc = unsafe { libc::getpeereid(stream.as_raw_fd(), &mut uid, &mut gid) };
    (rc == 0).then_some(uid)
}

/// At most this many clients are served at once; more are refused (closed).
const MAX_CLIENTS: usize = 16;

/// The UAPI thread: accepts connections, each served on its own thread (so an idle
/// client blocks no one), until shutdown; then joins them all.
pub(crate) fn serve(shared: &Arc<Shared>, listener: UnixListener) {
    let mut clients: Vec<std::thread::JoinHandle<()>> = Vec::new();
    loop {
        match sys::wait_readable(Some(listener.as_raw_fd()), &[shared.wake.fd()], None) {
            Ok(Ready::Woken) => break,
            Ok(Ready::Fd | Ready::Timeout) => {}
            Err(e) => {
                tracing::error!(error = %e, "UAPI poll failed; UAPI server stops");
                break;
            }
        }
        if shared.stopping() {
            break;
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => {
                tracing::debug!(error = %e, "UAPI accept failed");
                continue;
            }
        };
        if !peer_allowed(&stream) {
            tracing::warn!("UAPI connection from another user refused");
            continue;
        }
        let (done, running): (Vec<_>, Vec<_>) = clients.into_iter().partition(|h| h.is_finished());
        for h in done {
            let _ = h.join();
        }
        clients = running;
        if clients.len() >= MAX_CLIENTS {
            tracing::warn!("too many UAPI clients; connection refused");
            continue;
        }
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("nanami-uapi-conn".into())
            .spawn(move || {
                if let Err(e) = handle_connection(&s, &stream) {
                    tracing::debug!(error = %e, "UAPI connection ended");
                }
            });
        match spawned {
            Ok(h) => clients.push(h),
            Err(e) => tracing::warn!(error = %e, "cannot serve a UAPI client"),
        }
    }
    for h in clients {
        let _ = h.join();
    }
}

/// Reads with short timeouts so that shutdown is noticed, and gives up after
/// [`IDLE_LIMIT`] of silence.
struct PatientReader<'a> {
    stream: &'a UnixStream,
    shared: &'a Shared,
    last_data: Instant,
}

impl Read for PatientReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            match (&*self.stream).read(buf) {
                Ok(n) => {
                    self.last_data = Instant::now();
                    return Ok(n);
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    if self.shared.stopping() || self.last_data.elapsed() > IDLE_LIMIT {
                        return Err(io::Error::new(io::ErrorKind::TimedOut, "UAPI client idle"));
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }
}

fn handle_connection(shared: &Arc<Shared>, stream: &UnixStream) -> io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(READ_SLICE))?;
    stream.set_write_timeout(Some(IDLE_LIMIT))?;
    let mut reader = BufReader::new(PatientReader {
        stream,
        shared,
        last_data: Instant::now(),
    });
    loop {
        match read_request(&mut reader) {
            Ok(None) => return Ok(()),
            Ok(Some(mut lines)) => {
                let mut answer = respond(shared, &lines);
                // Requests and answers may carry the private key in hex.
                lines.zeroize();
                let written = (&*stream).write_all(answer.as_bytes());
                answer.zeroize();
                written?;
            }
            Err(ReadError::Protocol(e)) => {
                tracing::warn!(error = %e, "UAPI request refused; closing the connection");
                (&*stream).write_all(format!("errno=-{}\n\n", e.errno()).as_bytes())?;
                return Ok(());
            }
            Err(ReadError::Io(e)) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        read_request(&mut text.as_bytes()).unwrap().unwrap()
    }

    fn key(n: u8) -> PublicKey {
        PrivateKey::from_bytes([n; 32]).public_key()
    }

    #[test]
    fn get_parses() {
        assert!(matches!(
            parse(&lines("get=1\n\n")),
            Ok(Request::Get { offload: false })
        ));
        assert!(matches!(
            parse(&lines("get=1\nnanami_offload=1\n\n")),
            Ok(Request::Get { offload: true })
        ));
        assert!(parse(&lines("get=1\nnanami_offload=2\n\n")).is_err());
        let set = parse(&lines("set=1\nnanami_offload=false\n\n"));
        assert!(matches!(set, Ok(Request::Set(u)) if u.offload == Some(false)));
        assert!(parse(&lines("set=1\nnanami_offload=off\n\n")).is_err());
    }

    #[test]
    fn flags_reset_between_peers() {
        let req = format!(
            "set=1\npublic_key={}\nremove=true\npublic_key={}\nallowed_ip=10.0.0.2/32\n\
             public_key={}\nupdate_only=true\nreplace_allowed_ips=true\npublic_key={}\n\n",
            key(1).to_hex(),
            key(2).to_hex(),
            key(3).to_hex(),
            key(4).to_hex()
        );
        let Ok(Request::Set(u)) = parse(&lines(&req)) else {
            panic!("set did not parse");
        };
        assert_eq!(u.peers.len(), 4);
        assert!(u.peers[0].remove);
        assert!(!u.peers[1].remove && !u.peers[1].update_only && !u.peers[1].replace_allowed_ips);
        assert_eq!(
            u.peers[1].allowed_ips,
            vec!["10.0.0.2/32".parse::<IpNet>().unwrap()]
        );
        assert!(u.peers[2].update_only && u.peers[2].replace_allowed_ips && !u.peers[2].remove);
        assert!(!u.peers[3].remove && !u.peers[3].update_only && !u.peers[3].replace_allowed_ips);
    }

    #[test]
    fn device_keys_and_zero_keys() {
        let req = format!(
            "set=1\nprivate_key={}\nlisten_port=51820\nfwmark=0\nreplace_peers=true\n\
             public_key={}\npreshared_key={}\nendpoint=[fd00::1]:51820\n\
             persistent_keepalive_interval=25\nprotocol_version=1\n\n",
            "00".repeat(32),
            key(1).to_hex(),
            "00".repeat(32)
        );
        let Ok(Request::Set(u)) = parse(&lines(&req)) else {
            panic!("set did not parse");
        };
        assert!(matches!(u.private_key, Some(None)));
        assert_eq!(u.listen_port, Some(51820));
        assert!(u.replace_peers);
        assert_eq!(u.peers[0].preshared_key, Some(None));
        assert_eq!(
            u.peers[0].endpoint,
            Some("[fd00::1]:51820".parse().unwrap())
        );
        assert_eq!(u.peers[0].persistent_keepalive, Some(25));
    }

    #[test]
    fn bad_input_is_refused_with_errno() {
        let cases = [
            ("set=1\nlisten_port=99999\n\n", libc::EINVAL),
            ("set=1\nbogus=1\n\n", libc::EINVAL),
            ("set=1\nallowed_ip=10.0.0.0/8\n\n", libc::EINVAL),
            ("set=1\npublic_key=zz\n\n", libc::EINVAL),
            ("set=1\nno equals sign\n\n", libc::EPROTO),
            ("fly=1\n\n", libc::EPROTO),
            ("get=1\nx=y\n\n", libc::EINVAL),
        ];
        for (req, errno) in cases {
            let err = parse(&lines(req)).unwrap_err();
            assert_eq!(err.errno(), errno, "{req:?}: {err}");
        }
        let low_order = format!("set=1\npublic_key={}\n\n", "00".repeat(32));
        assert!(parse(&lines(&low_order)).is_err());
        let bad_protocol = format!(
            "set=1\npublic_key={}\nprotocol_version=2\n\n",
            key(1).to_hex()
        );
        assert!(parse(&lines(&bad_protocol)).is_err());
    }

    #[test]
    fn framing_is_bounded() {
        let long = format!("set=1\nlisten_port={}\n\n", "1".repeat(MAX_LINE_LEN + 10));
        assert!(matches!(
            read_request(&mut long.as_bytes()),
            Err(ReadError::Protocol(UapiError::LineTooLong { line: 2, .. }))
        ));
        assert!(matches!(
            read_request(&mut "set=1\nlisten_port=1".as_bytes()),
            Err(ReadError::Protocol(UapiError::Truncated))
        ));
        assert!(read_request(&mut "".as_bytes()).unwrap().is_none());
        // Two requests on one connection are read one after the other.
        let mut two = "get=1\n\nget=1\n\n".as_bytes();
        assert!(read_request(&mut two).unwrap().is_some());
        assert!(read_request(&mut two).unwrap().is_some());
        assert!(read_request(&mut two).unwrap().is_none());
    }

    #[test]
    fn get_format_has_keys_and_timestamps() {
        use super::super::config::{PeerConfig, PeerInfo, PeerStats};
        let when = UNIX_EPOCH + Duration::new(1_700_000_000, 123);
        let info = DeviceInfo {
            name: None,
            private_key: Some(PrivateKey::from_bytes([9; 32])),
            listen_port: 51820,
            fwmark: 0,
            peers: vec![PeerInfo {
                config: PeerConfig {
                    public_key: key(1),
                    preshared_key: None,
                    endpoint: Some("192.0.2.1:51820".parse().unwrap()),
                    allowed_ips: vec!["10.0.0.0/24".parse().unwrap()],
                    persistent_keepalive: Some(25),
                },
                stats: PeerStats {
                    rx_bytes: 10,
                    tx_bytes: 20,
                    last_handshake: Some(when),
                },
            }],
        };
        let text = format_get(&info);
        assert!(text.contains(&format!("public_key={}\n", key(1).to_hex())));
        assert!(text.contains("last_handshake_time_sec=1700000000\nlast_handshake_time_nsec=123\n"));
        assert!(text.contains("tx_bytes=20\nrx_bytes=10\n"));
        assert!(text.contains("protocol_version=1\n"));
        assert!(text.contains("allowed_ip=10.0.0.0/24\n"));
        assert!(text.contains("endpoint=192.0.2.1:51820\n"));
    }
}
