//! A client of the cross-platform userspace WireGuard protocol (UAPI): what `wg(8)`
//! does, as a library. It drives a device in another process (a detached
//! `nanami-device`, or `wireguard-go`) through `<dir>/<name>.sock`.
//!
//! Replies are untrusted: bounded in size, parsed strictly, and a malformed reply is
//! an error, never a panic.

use nanami_model::ErrorKind;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use ipnet::IpNet;
use nanami_model::{PrivateKey, PublicKey};
use zeroize::Zeroizing;

use crate::device::{DeviceInfo, PeerConfig, PeerInfo, PeerStats};

/// Largest reply accepted: 64 MiB holds a `get` of more than 100,000 peers.
const MAX_REPLY: u64 = 64 * 1024 * 1024;

/// How long one request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// What went wrong talking to a device.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UapiClientError {
    /// The socket could not be reached (no device of that name runs here?).
    #[error("UAPI socket {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing failed midway.
    #[error("UAPI I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The device refused the request with this errno.
    #[error("device refused the request (errno {0})")]
    Errno(i64),
    /// The reply was not valid UAPI.
    #[error("malformed UAPI reply: {0}")]
    Malformed(String),
}

impl UapiClientError {
    /// The device refusing a request as invalid (`EINVAL`) is
    /// [`ErrorKind::BadInput`]; the socket, other refusals and a reply that cannot
    /// be read are [`ErrorKind::Environment`] (another program's device).
    pub fn kind(&self) -> ErrorKind {
        match self {
            UapiClientError::Errno(e) if *e == i64::from(libc::EINVAL) => ErrorKind::BadInput,
            UapiClientError::Connect { .. }
            | UapiClientError::Io(_)
            | UapiClientError::Errno(_)
            | UapiClientError::Malformed(_) => ErrorKind::Environment,
        }
    }
}

/// A device reachable through its UAPI socket.
#[derive(Debug, Clone)]
pub struct UapiClient {
    path: PathBuf,
}

impl UapiClient {
    /// The device `name` whose socket is in `dir`.
    pub fn new(dir: &Path, name: &str) -> Self {
        Self {
            path: dir.join(format!("{name}.sock")),
        }
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn exchange(&self, request: &str) -> Result<String, UapiClientError> {
        let mut stream =
            UnixStream::connect(&self.path).map_err(|source| UapiClientError::Connect {
                path: self.path.clone(),
                source,
            })?;
        stream.set_read_timeout(Some(TIMEOUT))?;
        stream.set_write_timeout(Some(TIMEOUT))?;
        stream.write_all(request.as_bytes())?;
        let mut reader = BufReader::new(stream.take(MAX_REPLY));
        let mut reply = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Err(UapiClientError::Malformed(
                    "reply ended without errno".into(),
                ));
            }
            if line == "\n" {
                break;
            }
            reply.push_str(&line);
        }
        Ok(reply)
    }

    /// `get=1`: the device as it is now.
    pub fn get(&self) -> Result<DeviceInfo, UapiClientError> {
        parse_get(&self.exchange("get=1\n\n")?)
    }

    /// `set=1` with `body` (lines ending in `\n`, without the request or the blank
    /// terminator).
    fn set(&self, body: &str) -> Result<(), UapiClientError> {
        let request = Zeroizing::new(format!("set=1\n{body}\n"));
        let reply = self.exchange(&request)?;
        match reply.trim().strip_prefix("errno=").map(str::parse::<i64>) {
            Some(Ok(0)) => Ok(()),
            Some(Ok(e)) => Err(UapiClientError::Errno(e)),
            _ => Err(UapiClientError::Malformed(format!("set reply {reply:?}"))),
        }
    }

    /// Sets the private key (a no-op for the device when unchanged).
    pub fn set_private_key(&self, key: &PrivateKey) -> Result<(), UapiClientError> {
        self.set(&format!("private_key={}\n", key.to_hex_secret().as_str()))
    }

    /// Sets the listen port (0: the device picks one).
    pub fn set_listen_port(&self, port: u16) -> Result<(), UapiClientError> {
        self.set(&format!("listen_port={port}\n"))
    }

    /// Adds or updates a peer in place: its AllowedIPs are replaced, its session
    /// kept. Without an endpoint, the device keeps the one it learned.
    pub fn upsert_peer(&self, peer: &PeerConfig) -> Result<(), UapiClientError> {
        let mut body = format!(
            "public_key={}\nreplace_allowed_ips=true\n",
            peer.public_key.to_hex()
        );
        if let Some(ep) = peer.endpoint {
            body.push_str(&format!("endpoint={ep}\n"));
        }
        body.push_str(&format!(
            "persistent_keepalive_interval={}\n",
            peer.persistent_keepalive.unwrap_or(0)
        ));
        for net in &peer.allowed_ips {
            body.push_str(&format!("allowed_ip={net}\n"));
        }
        self.set(&body)
    }

    /// Removes a peer (absent is success).
    pub fn remove_peer(&self, key: &PublicKey) -> Result<(), UapiClientError> {
        self.set(&format!("public_key={}\nremove=true\n", key.to_hex()))
    }
}

fn bad(what: &str, line: &str) -> UapiClientError {
    let shown: String = line.chars().take(80).collect();
    UapiClientError::Malformed(format!("{what}: {shown:?}"))
}

/// Parses a `get=1` reply (without the blank terminator).
pub fn parse_get(reply: &str) -> Result<DeviceInfo, UapiClientError> {
    let mut info = DeviceInfo {
        name: None,
        private_key: None,
        listen_port: 0,
        fwmark: 0,
        peers: Vec::new(),
    };
    let mut errno = None;
    let mut handshake: (u64, u32) = (0, 0);
    let finish = |peer: Option<PeerInfo>, hs: (u64, u32), peers: &mut Vec<PeerInfo>| {
        if let Some(mut p) = peer {
            if hs != (0, 0) {
                p.stats.last_handshake =
                    UNIX_EPOCH.checked_add(Duration::new(hs.0, hs.1.min(999_999_999)));
            }
            peers.push(p);
        }
    };
    let mut peer: Option<PeerInfo> = None;
    for line in reply.lines() {
        let (key, value) = line.split_once('=').ok_or_else(|| bad("no '='", line))?;
        match key {
            "errno" => errno = Some(value.parse::<i64>().map_err(|_| bad("errno", line))?),
            "private_key" => {
                info.private_key =
                    Some(PrivateKey::from_hex(value).map_err(|_| bad("private_key", "…"))?);
            }
            "listen_port" => {
                info.listen_port = value.parse().map_err(|_| bad("listen_port", line))?
            }
            "fwmark" => info.fwmark = value.parse().map_err(|_| bad("fwmark", line))?,
            "public_key" => {
                finish(peer.take(), handshake, &mut info.peers);
                handshake = (0, 0);
                let key = PublicKey::from_hex(value).map_err(|_| bad("public_key", line))?;
                peer = Some(PeerInfo {
                    config: PeerConfig::new(key),
                    stats: PeerStats::default(),
                });
            }
            _ => {
                let p = peer
                    .as_mut()
                    .ok_or_else(|| bad("peer key before public_key", line))?;
                match key {
                    "preshared_key" | "protocol_version" => {}
                    "endpoint" => {
                        p.config.endpoint = Some(
                            value
                                .parse::<SocketAddr>()
                                .map_err(|_| bad("endpoint", line))?,
                        )
                    }
                    "last_handshake_time_sec" => {
                        handshake.0 = value.parse().map_err(|_| bad("handshake", line))?
                    }
                    "last_handshake_time_nsec" => {
                        handshake.1 = value.parse().map_err(|_| bad("handshake", line))?
                    }
                    "tx_bytes" => p.stats.tx_bytes = value.parse().map_err(|_| bad("tx", line))?,
                    "rx_bytes" => p.stats.rx_bytes = value.parse().map_err(|_| bad("rx", line))?,
                    "persistent_keepalive_interval" => {
                        let k: u16 = value.parse().map_err(|_| bad("keepalive", line))?;
                        p.config.persistent_keepalive = (k != 0).then_some(k);
                    }
                    "allowed_ip" => p.config.allowed_ips.push(
                        value
                            .parse::<IpNet>()
                            .map_err(|_| bad("allowed_ip", line))?,
                    ),
                    // Keys a newer device may add are ignored, as wg(8) does.
                    _ => {}
                }
            }
        }
    }
    finish(peer.take(), handshake, &mut info.peers);
    match errno {
        Some(0) => Ok(info),
        Some(e) => Err(UapiClientError::Errno(e)),
        None => Err(UapiClientError::Malformed("get reply without errno".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `last_handshake` as the UAPI writes it.
    fn handshake_fields(t: Option<std::time::SystemTime>) -> (u64, u32) {
        t.and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map(|d| (d.as_secs(), d.subsec_nanos()))
            .unwrap_or((0, 0))
    }

    #[test]
    fn parses_a_get_reply() {
        let k = PrivateKey::from_bytes([3; 32]).public_key();
        let reply = format!(
            "listen_port=51820\npublic_key={}\nprotocol_version=1\nendpoint=[2001:db8::1]:51820\nlast_handshake_time_sec=1700000000\nlast_handshake_time_nsec=5\ntx_bytes=10\nrx_bytes=20\npersistent_keepalive_interval=25\nallowed_ip=100.80.0.10/32\nallowed_ip=fd00::/64\nerrno=0\n",
            k.to_hex()
        );
        let info = parse_get(&reply).unwrap();
        assert_eq!(info.listen_port, 51820);
        let p = &info.peers[0];
        assert_eq!(p.config.public_key, k);
        assert_eq!(p.config.allowed_ips.len(), 2);
        assert_eq!(p.config.persistent_keepalive, Some(25));
        assert_eq!(p.stats.rx_bytes, 20);
        assert_eq!(handshake_fields(p.stats.last_handshake), (1_700_000_000, 5));
    }

    #[test]
    fn malformed_replies_are_errors() {
        for reply in [
            "listen_port=x\nerrno=0\n",
            "endpoint=1.2.3.4:5\nerrno=0\n",
            "garbage\n",
            "listen_port=1\n",
            "public_key=zz\nerrno=0\n",
            "errno=-22\n",
        ] {
            assert!(parse_get(reply).is_err(), "{reply:?}");
        }
    }
}
