//! The device's offload switch: what the caller asked for, what the kernel took,
//! and what a refused write turned off ([`Offloads`] is its public reading).
//!
//! Offloads are on by default where they exist (a Linux TUN with the
//! `virtio_net_hdr`, Linux UDP sockets). They can be turned off per device
//! ([`super::DeviceOptions::offload`], [`super::DeviceUpdate::offload`], the UAPI
//! key `nanami_offload`), and they turn themselves off, with a warning, where the
//! kernel refuses them: a coalesced TUN write that fails with `EINVAL` or `EIO`
//! ends coalescing for the device (the packets go again one by one), a refused
//! UDP GSO send ends GSO (see `udp.rs`). Nothing is dropped for either.

use std::sync::atomic::{AtomicBool, Ordering};

use super::tun::{Tun, TunOffload};
use super::udp::UdpSockets;

/// The offloads of a device now (all off where the platform has none).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offloads {
    /// What the caller asked for.
    pub enabled: bool,
    /// The TUN hands over TCP super-packets, which the device splits (TSO).
    pub tun_tso: bool,
    /// The TUN hands over UDP super-packets (USO, Linux 6.2 and later).
    pub tun_uso: bool,
    /// Received packets of a flow are coalesced into super-packets before they are
    /// written to the TUN (GRO); a TUN that refuses one turns this off.
    pub tun_gro: bool,
    /// Sends batch a flow's datagrams into UDP GSO messages; a refused one turns
    /// this off.
    pub udp_gso: bool,
    /// The UDP sockets receive coalesced datagrams (UDP GRO).
    pub udp_gro: bool,
}

/// The switch the threads read.
#[derive(Debug, Default)]
pub(crate) struct OffloadSwitch {
    enabled: AtomicBool,
    tun_tcp: AtomicBool,
    tun_udp: AtomicBool,
    /// A coalesced write was refused: no coalescing on this device from then on.
    refused: AtomicBool,
}

impl OffloadSwitch {
    /// A switch asking for offloads (`on`) or not; [`OffloadSwitch::set_tun`] and
    /// [`OffloadSwitch::set_sockets`] apply it.
    pub(crate) fn new(on: bool) -> Self {
        let s = Self::default();
        s.enabled.store(on, Ordering::Relaxed);
        s
    }

    /// Turns the offloads of `tun` and `sockets` on or off.
    pub(crate) fn set(&self, on: bool, tun: &Tun, sockets: &UdpSockets) {
        self.enabled.store(on, Ordering::Relaxed);
        self.set_tun(tun);
        self.set_sockets(sockets);
    }

    /// Applies the switch to the TUN. A TUN that refuses offloads is left without
    /// them (logged): the device works without.
    pub(crate) fn set_tun(&self, tun: &Tun) {
        let on = self.enabled.load(Ordering::Relaxed);
        let took = tun.set_offload(on).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "the TUN refused offloads; the device runs without");
            TunOffload::default()
        });
        self.tun_tcp.store(took.tcp, Ordering::Relaxed);
        self.tun_udp.store(took.udp, Ordering::Relaxed);
    }

    /// A switch as a TUN that took `tcp` and `udp` offloads leaves it (for tests
    /// without a TUN).
    #[cfg(test)]
    pub(crate) fn took(tcp: bool, udp: bool) -> Self {
        let s = Self::new(true);
        s.tun_tcp.store(tcp, Ordering::Relaxed);
        s.tun_udp.store(udp, Ordering::Relaxed);
        s
    }

    /// Applies the switch to newly bound sockets.
    pub(crate) fn set_sockets(&self, sockets: &UdpSockets) {
        sockets.set_offload(self.enabled.load(Ordering::Relaxed));
    }

    /// What may be coalesced before a TUN write: `(tcp, udp)`, what the TUN took
    /// unless a coalesced write was refused.
    pub(crate) fn coalesce(&self) -> (bool, bool) {
        if self.refused.load(Ordering::Relaxed) {
            return (false, false);
        }
        (
            self.tun_tcp.load(Ordering::Relaxed),
            self.tun_udp.load(Ordering::Relaxed),
        )
    }

    /// A coalesced write was refused: no more coalescing on this device.
    pub(crate) fn refuse_coalescing(&self) {
        self.refused.store(true, Ordering::Relaxed);
    }

    /// The reading for callers.
    pub(crate) fn get(&self, sockets: &UdpSockets) -> Offloads {
        let (gro_tcp, gro_udp) = self.coalesce();
        Offloads {
            enabled: self.enabled.load(Ordering::Relaxed),
            tun_tso: self.tun_tcp.load(Ordering::Relaxed),
            tun_uso: self.tun_udp.load(Ordering::Relaxed),
            tun_gro: gro_tcp || gro_udp,
            udp_gso: sockets.gso(),
            udp_gro: sockets.gro(),
        }
    }
}
