//! A small, strict parser for the wg-quick text Nanami renders
//! (`NodeConfig::to_wg_quick`): `[Interface]` with `PrivateKey`, `Address`, `MTU`,
//! `ListenPort`, then `[Peer]` sections with `PublicKey`, `PresharedKey`, `Endpoint`
//! (`ip:port`), `AllowedIPs`, `PersistentKeepalive`.
//!
//! Anything else is refused with its line number rather than ignored: a mobile
//! tunnel runs no `PostUp` script and sets no `DNS`, so silently dropping such a key
//! would give the user a tunnel that differs from the one the text describes. Keys
//! and section names match ASCII case-insensitively, as in `wg(8)`; `#` starts a
//! comment anywhere on a line, as in `wg-quick(8)`.

use std::net::{IpAddr, SocketAddr};

use base64::Engine as _;
use ipnet::IpNet;
use nanami_model::config::PRIVATE_KEY_PLACEHOLDER;
use nanami_model::{PrivateKey, PublicKey};
use nanami_wg::device::{PeerConfig, PresharedKey, PRESHARED_KEY_LEN};
use zeroize::Zeroizing;

/// A refusal, at a 1-based line (0: the text as a whole).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SyntaxError {
    pub line: u32,
    pub reason: String,
}

/// What the `PrivateKey` line held.
#[derive(Debug)]
pub(crate) enum KeyLine {
    /// `<PRIVATE_KEY>`: the app supplies its key.
    Placeholder,
    /// A real key.
    Key(PrivateKey),
}

/// The parsed text.
#[derive(Debug)]
pub(crate) struct WgQuick {
    pub private_key: KeyLine,
    pub addresses: Vec<IpNet>,
    pub mtu: Option<u32>,
    pub listen_port: Option<u16>,
    pub peers: Vec<PeerConfig>,
}

const INTERFACE_KEYS: &str = "PrivateKey, Address, MTU, ListenPort";
const PEER_KEYS: &str = "PublicKey, PresharedKey, Endpoint, AllowedIPs, PersistentKeepalive";
/// The smallest MTU IPv4 guarantees; wg-quick's own floor is lower, but nothing
/// below this carries a full IPv4 header chain reliably.
const MIN_MTU: u32 = 576;

enum Section {
    Interface,
    Peer,
}

struct PeerDraft {
    line: u32,
    public_key: Option<PublicKey>,
    preshared_key: Option<PresharedKey>,
    endpoint: Option<SocketAddr>,
    allowed_ips: Vec<IpNet>,
    persistent_keepalive: Option<u16>,
    seen: Vec<&'static str>,
}

fn err(line: u32, reason: impl Into<String>) -> SyntaxError {
    SyntaxError {
        line,
        reason: reason.into(),
    }
}

/// Parses `text`; every refusal names its line.
pub(crate) fn parse(text: &str) -> Result<WgQuick, SyntaxError> {
    let mut section: Option<Section> = None;
    let mut interface_seen = false;
    let mut iface_keys: Vec<&'static str> = Vec::new();
    let mut private_key: Option<KeyLine> = None;
    let mut addresses = Vec::new();
    let mut mtu = None;
    let mut listen_port = None;
    let mut peers: Vec<PeerDraft> = Vec::new();

    for (index, raw) in text.lines().enumerate() {
        let line = u32::try_from(index + 1).unwrap_or(u32::MAX);
        let content = raw.split('#').next().unwrap_or_default().trim();
        if content.is_empty() {
            continue;
        }
        if let Some(name) = content.strip_prefix('[').and_then(|s| s.strip_suffix(']')) {
            if name.eq_ignore_ascii_case("Interface") {
                if interface_seen {
                    return Err(err(line, "a second [Interface] section"));
                }
                if !peers.is_empty() {
                    return Err(err(line, "[Interface] must come before every [Peer]"));
                }
                interface_seen = true;
                section = Some(Section::Interface);
            } else if name.eq_ignore_ascii_case("Peer") {
                if !interface_seen {
                    return Err(err(line, "[Peer] before [Interface]"));
                }
                peers.push(PeerDraft {
                    line,
                    public_key: None,
                    preshared_key: None,
                    endpoint: None,
                    allowed_ips: Vec::new(),
                    persistent_keepalive: None,
                    seen: Vec::new(),
                });
                section = Some(Section::Peer);
            } else {
                return Err(err(
                    line,
                    format!("unknown section [{name}]: only [Interface] and [Peer]"),
                ));
            }
            continue;
        }
        let Some((key, value)) = content.split_once('=') else {
            return Err(err(line, "not a `Key = Value` line"));
        };
        let (key, value) = (key.trim(), value.trim());
        match section {
            None => return Err(err(line, format!("{key} outside any section"))),
            Some(Section::Interface) => {
                let canonical = interface_key(key)
                    .ok_or_else(|| err(line, unsupported(key, "[Interface]", INTERFACE_KEYS)))?;
                // Address may repeat, as in wg-quick; the others are single-valued.
                if canonical != "Address" && iface_keys.contains(&canonical) {
                    return Err(err(line, format!("{canonical} given twice in [Interface]")));
                }
                iface_keys.push(canonical);
                match canonical {
                    "PrivateKey" => {
                        private_key = Some(if value == PRIVATE_KEY_PLACEHOLDER {
                            KeyLine::Placeholder
                        } else {
                            KeyLine::Key(PrivateKey::from_base64(value).map_err(|e| {
                                err(line, format!("PrivateKey is not a WireGuard key: {e}"))
                            })?)
                        });
                    }
                    "Address" => addresses.extend(nets(value, line, "Address")?),
                    "MTU" => {
                        let m: u32 = value
                            .parse()
                            .map_err(|_| err(line, format!("MTU {value:?} is not a number")))?;
                        if !(MIN_MTU..=65535).contains(&m) {
                            return Err(err(line, format!("MTU {m} is outside {MIN_MTU}..=65535")));
                        }
                        mtu = Some(m);
                    }
                    _ => {
                        listen_port = Some(value.parse::<u16>().map_err(|_| {
                            err(
                                line,
                                format!("ListenPort {value:?} is not a port (0-65535)"),
                            )
                        })?);
                    }
                }
            }
            Some(Section::Peer) => {
                let canonical = peer_key(key)
                    .ok_or_else(|| err(line, unsupported(key, "[Peer]", PEER_KEYS)))?;
                let Some(peer) = peers.last_mut() else {
                    return Err(err(line, format!("{key} outside any section")));
                };
                if canonical != "AllowedIPs" && peer.seen.contains(&canonical) {
                    return Err(err(line, format!("{canonical} given twice in one [Peer]")));
                }
                peer.seen.push(canonical);
                match canonical {
                    "PublicKey" => {
                        peer.public_key = Some(value.parse().map_err(|e| {
                            err(line, format!("PublicKey is not a WireGuard key: {e}"))
                        })?);
                    }
                    "PresharedKey" => peer.preshared_key = Some(preshared(value, line)?),
                    "Endpoint" => {
                        peer.endpoint = Some(value.parse().map_err(|_| {
                            err(
                                line,
                                format!(
                                    "Endpoint {value:?} is not ip:port (IPv6 as [addr]:port); \
                                     host names are not resolved here"
                                ),
                            )
                        })?);
                    }
                    "AllowedIPs" => peer.allowed_ips.extend(nets(value, line, "AllowedIPs")?),
                    _ => {
                        let secs = if value.eq_ignore_ascii_case("off") {
                            0
                        } else {
                            value.parse::<u16>().map_err(|_| {
                                err(
                                    line,
                                    format!(
                                        "PersistentKeepalive {value:?} is not seconds \
                                         (0-65535) or off"
                                    ),
                                )
                            })?
                        };
                        peer.persistent_keepalive = (secs != 0).then_some(secs);
                    }
                }
            }
        }
    }

    if !interface_seen {
        return Err(err(0, "no [Interface] section"));
    }
    let Some(private_key) = private_key else {
        return Err(err(0, "[Interface] has no PrivateKey"));
    };
    let peers = peers
        .into_iter()
        .map(|p| {
            let public_key = p
                .public_key
                .ok_or_else(|| err(p.line, "[Peer] without PublicKey"))?;
            Ok(PeerConfig {
                public_key,
                preshared_key: p.preshared_key,
                endpoint: p.endpoint,
                allowed_ips: p.allowed_ips,
                persistent_keepalive: p.persistent_keepalive,
            })
        })
        .collect::<Result<Vec<_>, SyntaxError>>()?;
    Ok(WgQuick {
        private_key,
        addresses,
        mtu,
        listen_port,
        peers,
    })
}

fn interface_key(key: &str) -> Option<&'static str> {
    ["PrivateKey", "Address", "MTU", "ListenPort"]
        .into_iter()
        .find(|k| k.eq_ignore_ascii_case(key))
}

fn peer_key(key: &str) -> Option<&'static str> {
    [
        "PublicKey",
        "PresharedKey",
        "Endpoint",
        "AllowedIPs",
        "PersistentKeepalive",
    ]
    .into_iter()
    .find(|k| k.eq_ignore_ascii_case(key))
}

fn unsupported(key: &str, section: &str, allowed: &str) -> String {
    const HOOKS: [&str; 4] = ["PreUp", "PostUp", "PreDown", "PostDown"];
    let why = if HOOKS.iter().any(|h| h.eq_ignore_ascii_case(key)) {
        " (the mobile tunnel runs no scripts)"
    } else {
        ""
    };
    format!(
        "unsupported key {key:?} in {section}{why}; Nanami's mobile tunnel accepts only {allowed}"
    )
}

/// A comma-separated list of prefixes; a bare address is a host prefix. An empty
/// value is an empty list (`AllowedIPs =` routes nothing, as in `wg`).
fn nets(value: &str, line: u32, key: &str) -> Result<Vec<IpNet>, SyntaxError> {
    value
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| err(line, format!("{key}: {s:?} is not an address or prefix")))
        })
        .collect()
}

fn preshared(value: &str, line: u32) -> Result<PresharedKey, SyntaxError> {
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(value)
            .map_err(|_| err(line, "PresharedKey is not base64"))?,
    );
    let array: [u8; PRESHARED_KEY_LEN] = bytes.as_slice().try_into().map_err(|_| {
        err(
            line,
            format!(
                "PresharedKey decodes to {} bytes, not {PRESHARED_KEY_LEN}",
                bytes.len()
            ),
        )
    })?;
    Ok(PresharedKey::from_bytes(array))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PEER_KEY: &str = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=";

    fn text(extra_iface: &str, extra_peer: &str) -> String {
        format!(
            "# Nanami configuration for node laptop-1 (workspace acme)\n\
             [Interface]\nPrivateKey = <PRIVATE_KEY>\nAddress = 100.80.0.10/32, fd00::a/128\n\
             MTU = 1380\n{extra_iface}\n\
             # gateway gw-a (networks: corp)\n[Peer]\nPublicKey = {PEER_KEY}\n\
             Endpoint = 203.0.113.10:51820\nAllowedIPs = 100.80.0.0/22, 10.20.0.0/16\n\
             PersistentKeepalive = 25\n{extra_peer}"
        )
    }

    #[test]
    fn parses_what_nanami_renders() {
        let q = parse(&text(
            "ListenPort = 51000",
            "PresharedKey = AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
        ))
        .unwrap();
        assert!(matches!(q.private_key, KeyLine::Placeholder));
        assert_eq!(q.addresses.len(), 2);
        assert_eq!(q.mtu, Some(1380));
        assert_eq!(q.listen_port, Some(51000));
        assert_eq!(q.peers.len(), 1);
        let p = &q.peers[0];
        assert_eq!(p.public_key.to_base64(), PEER_KEY);
        assert_eq!(p.endpoint, Some("203.0.113.10:51820".parse().unwrap()));
        assert_eq!(p.allowed_ips.len(), 2);
        assert_eq!(p.persistent_keepalive, Some(25));
        assert!(p.preshared_key.is_some());
    }

    #[test]
    fn a_standby_peer_without_allowed_ips_parses() {
        let t = format!("[Interface]\nPrivateKey = <PRIVATE_KEY>\n[Peer]\nPublicKey = {PEER_KEY}\nEndpoint = [2001:db8::1]:51820\n");
        let q = parse(&t).unwrap();
        assert!(q.peers[0].allowed_ips.is_empty());
        assert_eq!(q.peers[0].persistent_keepalive, None);
    }

    #[test]
    fn refuses_hooks_and_unknown_keys_with_their_line() {
        let e = parse(&text("PostUp = iptables -A FORWARD", "")).unwrap_err();
        assert_eq!(e.line, 6);
        assert!(
            e.reason.contains("PostUp") && e.reason.contains("runs no scripts"),
            "{e:?}"
        );
        let e = parse(&text("DNS = 1.1.1.1", "")).unwrap_err();
        assert!(e.reason.contains("unsupported key \"DNS\""), "{e:?}");
        let e = parse(&text("", "Table = off")).unwrap_err();
        assert!(e.reason.contains("[Peer]"), "{e:?}");
    }

    #[test]
    fn refuses_malformed_values() {
        for (from, to, needle) in [
            ("MTU = 1380", "MTU = 12", "MTU 12 is outside"),
            ("MTU = 1380", "MTU = 1380\nListenPort = 70000", "ListenPort"),
            ("MTU = 1380", "MTU = 1380\nMTU = 1400", "MTU given twice"),
            ("100.80.0.10/32", "100.80.0.300/32", "Address"),
            ("203.0.113.10:51820", "gw.example.com:51820", "host names"),
            ("Keepalive = 25", "Keepalive = soon", "PersistentKeepalive"),
            (
                "Keepalive = 25",
                "Keepalive = 25\nPresharedKey = AAAA",
                "PresharedKey",
            ),
        ] {
            let e = parse(&text("", "").replace(from, to)).unwrap_err();
            assert!(e.reason.contains(needle), "{needle}: {e:?}");
        }
    }

    #[test]
    fn refuses_bad_structure() {
        assert_eq!(parse("").unwrap_err().reason, "no [Interface] section");
        assert!(parse("PrivateKey = x\n")
            .unwrap_err()
            .reason
            .contains("outside any section"));
        assert!(parse(&format!("[Peer]\nPublicKey = {PEER_KEY}\n"))
            .unwrap_err()
            .reason
            .contains("before [Interface]"));
        assert!(parse("[Interface]\nAddress = 10.0.0.1\n")
            .unwrap_err()
            .reason
            .contains("no PrivateKey"));
        assert!(
            parse("[Interface]\nPrivateKey = <PRIVATE_KEY>\n[Peer]\nEndpoint = 1.2.3.4:5\n")
                .unwrap_err()
                .reason
                .contains("without PublicKey")
        );
        assert!(parse("[Interface]\nPrivateKey = <PRIVATE_KEY>\n[Wat]\n")
            .unwrap_err()
            .reason
            .contains("unknown section"));
        assert!(parse("[Interface]\nPrivateKey = <PRIVATE_KEY>\njunk\n")
            .unwrap_err()
            .reason
            .contains("Key = Value"));
        assert!(parse("[Interface]\nPrivateKey = nope\n")
            .unwrap_err()
            .reason
            .contains("not a WireGuard key"));
    }
}
