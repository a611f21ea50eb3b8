//! Out-of-band changes as [`PlatformEvent`]s: an rtnetlink multicast subscription
//! (links, addresses, routes, rules) and a netfilter one (nftables), so drift is
//! repaired within a pass rather than at the next periodic resync.

// Netlink's message and attribute enums have dozens of variants; ignoring the ones
// Nanami does not read is the point of these matches.
#![allow(clippy::wildcard_enum_match_arm)]

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt as _;
use nanami_reconcile::{ObjectKind, PlatformEvent};
use rtnetlink::packet_core::NetlinkPayload;
use rtnetlink::packet_route::RouteNetlinkMessage;
use rtnetlink::MulticastGroup;
use tokio::sync::mpsc;

/// `NFNLGRP_NFTABLES` in `linux/netfilter/nfnetlink.h`.
const NFNLGRP_NFTABLES: u32 = 7;

/// Bounded so that a storm of kernel notifications cannot grow memory: a full channel
/// already guarantees a pass, so further events are dropped.
const CHANNEL: usize = 64;

/// The running subscriptions; dropping it stops them.
pub struct Events {
    task: tokio::task::JoinHandle<()>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Events {
    fn drop(&mut self) {
        self.task.abort();
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn kind_of(msg: &RouteNetlinkMessage) -> Option<ObjectKind> {
    match msg {
        RouteNetlinkMessage::NewLink(_)
        | RouteNetlinkMessage::DelLink(_)
        | RouteNetlinkMessage::SetLink(_) => Some(ObjectKind::Interface),
        RouteNetlinkMessage::NewAddress(_) | RouteNetlinkMessage::DelAddress(_) => {
            Some(ObjectKind::Address)
        }
        RouteNetlinkMessage::NewRoute(_) | RouteNetlinkMessage::DelRoute(_) => {
            Some(ObjectKind::Route)
        }
        RouteNetlinkMessage::NewRule(_) | RouteNetlinkMessage::DelRule(_) => Some(ObjectKind::Rule),
        _ => None,
    }
}

/// Starts both subscriptions in `netns` (the current namespace when `None`): events
/// are those of the namespace the sockets were opened in.
pub fn subscribe_in(
    netns: Option<&crate::netns::Netns>,
) -> Result<(Events, mpsc::Receiver<PlatformEvent>), super::PlatformError> {
    super::in_netns(netns, || {
        subscribe().map_err(|source| super::PlatformError::Io {
            context: "subscribing to netlink events".into(),
            source,
        })
    })
}

/// Starts both subscriptions in the current network namespace.
pub fn subscribe() -> io::Result<(Events, mpsc::Receiver<PlatformEvent>)> {
    let (tx, rx) = mpsc::channel(CHANNEL);
    let groups = [
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
        MulticastGroup::Ipv4Route,
        MulticastGroup::Ipv6Route,
        MulticastGroup::Ipv4Rule,
        MulticastGroup::Ipv6Rule,
    ];
    let (conn, _handle, mut messages) = rtnetlink::new_multicast_connection(&groups)?;
    let route_tx = tx.clone();
    let task = tokio::spawn(async move {
        let conn = tokio::spawn(conn);
        while let Some((msg, _)) = messages.next().await {
            let event = match &msg.payload {
                NetlinkPayload::InnerMessage(inner) => {
                    kind_of(inner).map(|kind| PlatformEvent::Changed { kind })
                }
                NetlinkPayload::Overrun(_) => Some(PlatformEvent::Overflow),
                _ => None,
            };
            if let Some(e) = event {
                // Full means a pass is already due; closed means nobody listens.
                if let Err(mpsc::error::TrySendError::Closed(_)) = route_tx.try_send(e) {
                    break;
                }
            }
        }
        conn.abort();
    });

    let stop = Arc::new(AtomicBool::new(false));
    let socket = netfilter_socket()?;
    let thread_stop = stop.clone();
    let thread = std::thread::Builder::new()
        .name("nanami-nft-events".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while !thread_stop.load(Ordering::Relaxed) {
                match socket.recv(&mut &mut buf[..], 0) {
                    Ok(_) => {
                        let e = PlatformEvent::Changed {
                            kind: ObjectKind::Filter,
                        };
                        if let Err(mpsc::error::TrySendError::Closed(_)) = tx.try_send(e) {
                            break;
                        }
                    }
                    Err(e)
                        if e.kind() == io::ErrorKind::WouldBlock
                            || e.kind() == io::ErrorKind::TimedOut
                            || e.kind() == io::ErrorKind::Interrupted => {}
                    // ENOBUFS: notifications were lost, anything may have changed.
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                        let _ = tx.try_send(PlatformEvent::Overflow);
                    }
                    Err(_) => break,
                }
            }
        })?;
    Ok((
        Events {
            task,
            stop,
            thread: Some(thread),
        },
        rx,
    ))
}

fn netfilter_socket() -> io::Result<netlink_sys::Socket> {
    let mut socket = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_NETFILTER)?;
    socket.bind_auto()?;
    socket.add_membership(NFNLGRP_NFTABLES)?;
    // A receive timeout lets the thread notice `stop` without a wake-up message.
    let timeout = libc::timeval {
        tv_sec: 0,
        tv_usec: i64::from(Duration::from_millis(200).subsec_micros()),
    };
    // SAFETY: setsockopt with a valid fd, a pointer to a live timeval and its size.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            std::ptr::addr_of!(timeout).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}
