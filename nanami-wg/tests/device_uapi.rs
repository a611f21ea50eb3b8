//! The UAPI socket as an untrusted client sees it: permissions, errno replies, no
//! hang after an error, nothing applied from a refused request.
//! Needs root (a TUN in a private namespace).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::{ifname, keypair, Netns};
use nanami_model::InterfaceName;
use nanami_wg::device::{Device, DeviceOptions, TunSource};

struct Fixture {
    dev: Device,
    _ns: Netns,
    _dir: TempDir,
}

struct TempDir(std::path::PathBuf);
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn fixture() -> Fixture {
    common::require(&[]);
    let ns = Netns::new("u");
    let dir = TempDir(std::env::temp_dir().join(format!("nmt-uapi-{}", ifname("d"))));
    let name = InterfaceName::new(ifname("u")).expect("name");
    let uapi_dir = dir.0.clone();
    let dev = ns
        .enter(|| {
            Device::open(
                TunSource::Name(name),
                DeviceOptions {
                    uapi_dir: Some(uapi_dir),
                    listen_port: 0,
                    offload: true,
                },
            )
        })
        .expect("open device");
    Fixture {
        dev,
        _ns: ns,
        _dir: dir,
    }
}

fn connect(f: &Fixture) -> (UnixStream, BufReader<UnixStream>) {
    let s = UnixStream::connect(f.dev.uapi_path().expect("uapi path")).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let r = BufReader::new(s.try_clone().expect("clone"));
    (s, r)
}

/// Reads one reply (up to the empty line).
fn reply(r: &mut BufReader<UnixStream>) -> Vec<String> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        let n = r.read_line(&mut line).expect("reply within 5 s (no hang)");
        assert!(n > 0, "connection closed before the reply ended: {lines:?}");
        let line = line.trim_end_matches('\n').to_owned();
        if line.is_empty() {
            return lines;
        }
        lines.push(line);
    }
}

#[test]
fn socket_is_private_and_errors_get_errno_without_hanging() {
    let f = fixture();
    let path = f.dev.uapi_path().expect("path").to_owned();
    let mode = std::fs::metadata(&path).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");

    let (mut s, mut r) = connect(&f);
    // An invalid value: EINVAL, and the same connection keeps working.
    s.write_all(b"set=1\nlisten_port=70000\n\n").expect("write");
    assert_eq!(reply(&mut r), vec!["errno=-22"]);
    s.write_all(b"set=1\nfrobnicate=1\n\n").expect("write");
    assert_eq!(reply(&mut r), vec!["errno=-22"]);
    s.write_all(b"get=1\n\n").expect("write");
    let got = reply(&mut r);
    assert_eq!(got.last().map(String::as_str), Some("errno=0"));
    assert!(got.iter().any(|l| l.starts_with("listen_port=")), "{got:?}");

    // An unknown operation: EPROTO, and still no hang.
    s.write_all(b"bogus\n\n").expect("write");
    assert_eq!(reply(&mut r), vec!["errno=-71"]);
    s.write_all(b"get=1\n\n").expect("write");
    assert_eq!(reply(&mut r).last().map(String::as_str), Some("errno=0"));

    // An overlong line breaks the framing: refused, and the connection closes.
    let (mut s2, mut r2) = connect(&f);
    let long = format!("set=1\nlisten_port={}\n\n", "9".repeat(100_000));
    let _ = s2.write_all(long.as_bytes());
    assert_eq!(reply(&mut r2), vec!["errno=-71"]);
    let mut rest = String::new();
    let _ = r2.read_to_string(&mut rest);
    assert!(rest.is_empty());

    // A client that stays connected (the first one) does not block others.

    // The server still answers new connections.
    let (mut s, mut r) = connect(&f);
    s.write_all(b"get=1\n\n").expect("write");
    assert_eq!(reply(&mut r).last().map(String::as_str), Some("errno=0"));
}

#[test]
fn a_refused_set_applies_nothing() {
    let f = fixture();
    let (key, public) = keypair();
    let (_, peer) = keypair();
    let (mut s, mut r) = connect(&f);
    let req = format!(
        "set=1\nprivate_key={}\npublic_key={}\nallowed_ip=10.1.0.0/16\nallowed_ip=not-a-prefix\n\n",
        key.to_hex_secret().as_str(),
        peer.to_hex()
    );
    s.write_all(req.as_bytes()).expect("write");
    assert_eq!(reply(&mut r), vec!["errno=-22"]);
    let info = f.dev.get();
    assert!(
        info.private_key.is_none(),
        "private key applied from a refused request"
    );
    assert!(info.peers.is_empty(), "peer applied from a refused request");

    // The same request, fixed, applies; `get` shows the public key and the peer.
    let req = req.replace("allowed_ip=not-a-prefix\n", "");
    s.write_all(req.as_bytes()).expect("write");
    assert_eq!(reply(&mut r), vec!["errno=0"]);
    s.write_all(b"get=1\n\n").expect("write");
    let got = reply(&mut r);
    assert!(
        got.contains(&format!("public_key={}", peer.to_hex())),
        "{got:?}"
    );
    assert!(
        got.contains(&"allowed_ip=10.1.0.0/16".to_owned()),
        "{got:?}"
    );
    assert!(got.contains(&"protocol_version=1".to_owned()), "{got:?}");
    assert_eq!(f.dev.get().public_key(), Some(public));
}
