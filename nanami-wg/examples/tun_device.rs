//! Starts Nanami's WireGuard device on a TUN, reads it back over UAPI, and stops it.
//!
//! Shows the embedding path a gateway or Linux client takes: open a [`Device`] on a
//! TUN by name, configure it (a fresh private key, one peer), then ask its UAPI
//! socket `get=1` exactly as `wg show` would, and shut it down. The TUN lives in a
//! network namespace the example creates and deletes, so nothing on the host changes.
//! The private key is left out of what is printed.
//!
//! Run as root (it needs `/dev/net/tun` and a namespace):
//! `cargo run -p nanami-wg --example tun_device`.

use std::io::{BufRead as _, BufReader, Write as _};
use std::os::unix::net::UnixStream;

use nanami_model::{InterfaceName, PrivateKey};
use nanami_wg::device::{Device, DeviceOptions, DeviceUpdate, PeerUpdate, TunSource};
use nanami_wg::netns::Netns;

/// Deletes the example's namespace (and the TUN in it) however `main` ends.
struct DeleteOnDrop(String);

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        if let Err(err) = Netns::delete(&self.0) {
            eprintln!("deleting namespace {}: {err}", self.0);
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ns_name = format!("nanami-ex-{}", std::process::id());
    let netns = Netns::open_or_create(&ns_name)?;
    let _cleanup = DeleteOnDrop(ns_name.clone());
    let uapi_dir = tempfile::tempdir()?;

    // The TUN and the UDP socket are created in the calling thread's namespace: open
    // the device from a thread inside ours. Its own threads stay there.
    let options = DeviceOptions {
        uapi_dir: Some(uapi_dir.path().to_owned()),
        listen_port: 0,
        offload: true,
    };
    let tun = TunSource::Name(InterfaceName::new("nanami-ex0")?);
    let device = netns.run(move || Device::open(tun, options))??;

    let key = PrivateKey::generate(&mut rand_core::OsRng);
    let public_key = key.public_key();
    let peer = PrivateKey::generate(&mut rand_core::OsRng).public_key();
    device.apply(
        DeviceUpdate::new().private_key(key).peer(
            PeerUpdate::new(peer)
                .endpoint("192.0.2.1:51820".parse()?)
                .add_allowed_ip("10.99.0.2/32".parse()?)
                .persistent_keepalive(25),
        ),
    )?;
    println!(
        "device nanami-ex0 in namespace {ns_name}, UDP port {}",
        device.listen_port()
    );
    println!("device public key {public_key}");

    // The UAPI, as wg(8) speaks it: `get=1` and an empty line; the reply ends with
    // `errno=0` and an empty line. Keys are hex there.
    let path = device.uapi_path().ok_or("the device runs no UAPI server")?;
    let mut stream = UnixStream::connect(path)?;
    stream.write_all(b"get=1\n\n")?;
    println!("UAPI get ({}):", path.display());
    for line in BufReader::new(stream).lines() {
        let line = line?;
        if line.is_empty() {
            break;
        }
        if !line.starts_with("private_key=") {
            println!("  {line}");
        }
    }

    device.shutdown();
    println!("device stopped");
    Ok(())
}
