//! The UDP side: one IPv4 and one IPv6-only socket on the same port, received in
//! batches with `recvmmsg` and sent in batches with `sendmmsg` (Linux and Android;
//! Apple has neither, so there a batch is a loop of `recvfrom`/`sendto`, and the
//! socket mark `SO_MARK` is Linux's: a non-zero fwmark is refused there).
//!
//! Offloads (Linux, [`UdpSockets::set_offload`]): on send, runs of datagrams to one
//! destination of one size go to the kernel as one UDP GSO message (`UDP_SEGMENT`,
//! up to [`GSO_MAX_SEGMENTS`]), still many messages per `sendmmsg`; on receive the
//! kernel coalesces a flow's datagrams (`UDP_GRO`) and [`RecvBatch`] gives them back
//! one by one. A GSO send the kernel refuses with `EIO` or `EINVAL` (a NIC or
//! kernel that cannot segment) turns GSO off for these sockets, with a warning, and
//! the datagrams go again one message each: nothing is dropped for it.

use std::io;
use std::mem::MaybeUninit;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use socket2::{Domain, Protocol, SockAddr, Socket, Type};

use super::peer::Peer;

/// Largest datagram the device sends or receives.
pub(crate) const MAX_DATAGRAM: usize = 65_536;

/// Socket buffer size asked for: large enough to absorb a burst of a few thousand
/// full-size datagrams while the single receive thread is busy decrypting.
const SOCKET_BUFFER: usize = 4 << 20;

/// How many times a random port is tried when its IPv6 twin is taken.
const BIND_ATTEMPTS: usize = 10;

/// Most datagrams in one GSO message (the kernel's `UDP_MAX_SEGMENTS` was 64 before
/// Linux 6.9).
#[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
pub(crate) const GSO_MAX_SEGMENTS: usize = 64;

/// Most bytes in one GSO message: a UDP payload, with the IPv4 header, fits 64 KiB.
#[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
const GSO_MAX_BYTES: usize = 65_535 - 20 - 8;

/// Room for the control messages of one received or sent message (`UDP_GRO`'s or
/// `UDP_SEGMENT`'s int, with headers and alignment).
#[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
const CMSG_ROOM: usize = 64;

/// The bound sockets of one `listen_port`.
#[derive(Debug)]
pub(crate) struct UdpSockets {
    pub(crate) v4: Option<Socket>,
    pub(crate) v6: Option<Socket>,
    pub(crate) port: u16,
    /// Sends may use UDP GSO: asked for, and not turned off by a refused send.
    gso: AtomicBool,
    /// Some socket took `UDP_GRO`.
    gro: AtomicBool,
}

fn new_socket(domain: Domain, fwmark: u32) -> io::Result<Socket> {
    // `Socket::new` makes it close-on-exec on every platform (`SOCK_CLOEXEC`, or
    // `FD_CLOEXEC` on Apple).
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if domain == Domain::IPV6 {
        s.set_only_v6(true)?;
    }
    grow_buffers(&s);
    if fwmark != 0 {
        set_mark(&s, fwmark)?;
    }
    Ok(s)
}

/// The socket's `SO_MARK`.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn mark(s: &Socket) -> io::Result<u32> {
    s.mark()
}

/// Sets the socket's `SO_MARK`.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn set_mark(s: &Socket, mark: u32) -> io::Result<()> {
    s.set_mark(mark)
}

/// No `SO_MARK` here: every socket's mark is 0.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn mark(_s: &Socket) -> io::Result<u32> {
    Ok(0)
}

/// No `SO_MARK` here: only 0 (no mark) is accepted.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn set_mark(_s: &Socket, mark: u32) -> io::Result<()> {
    if mark == 0 {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "a socket mark (fwmark) is Linux's",
        ))
    }
}

/// Sets an int socket option.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn set_int_option(
    s: &Socket,
    level: libc::c_int,
    opt: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: setsockopt with a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            level,
            opt,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Asks for large socket buffers, beyond `rmem_max` when privileged (`SO_*BUFFORCE`).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn grow_buffers(s: &Socket) {
    let size = SOCKET_BUFFER as libc::c_int;
    for opt in [libc::SO_RCVBUFFORCE, libc::SO_SNDBUFFORCE] {
        if set_int_option(s, libc::SOL_SOCKET, opt, size).is_err() {
            let _ = if opt == libc::SO_RCVBUFFORCE {
                s.set_recv_buffer_size(SOCKET_BUFFER)
            } else {
                s.set_send_buffer_size(SOCKET_BUFFER)
            };
        }
    }
}

/// Asks for large socket buffers (as large as the system allows).
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn grow_buffers(s: &Socket) {
    let _ = s.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = s.set_send_buffer_size(SOCKET_BUFFER);
}

fn v6_unavailable(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(libc::EAFNOSUPPORT) | Some(libc::EADDRNOTAVAIL) | Some(libc::EPROTONOSUPPORT)
    )
}

impl UdpSockets {
    /// Sockets already bound (none: a placeholder), without offloads.
    pub(crate) fn new(v4: Option<Socket>, v6: Option<Socket>, port: u16) -> Self {
        Self {
            v4,
            v6,
            port,
            gso: AtomicBool::new(false),
            gro: AtomicBool::new(false),
        }
    }

    /// Turns UDP GSO (sends) and GRO (receives) on or off: Linux only (elsewhere
    /// always off, read back with [`UdpSockets::gso`] and [`UdpSockets::gro`]). GRO that a socket refuses leaves that
    /// socket receiving one datagram at a time, which is correct, only slower.
    pub(crate) fn set_offload(&self, on: bool) {
        let on = on && cfg!(target_os = "linux");
        #[allow(unused_mut)]
        let mut gro = false;
        #[cfg(any(target_os = "linux", target_os = "android"))]
        for s in self.v4.iter().chain(self.v6.iter()) {
            match set_int_option(s, libc::SOL_UDP, libc::UDP_GRO, libc::c_int::from(on)) {
                Ok(()) => gro |= on,
                Err(e) => tracing::debug!(error = %e, "UDP_GRO refused"),
            }
        }
        self.gro.store(gro, Ordering::Relaxed);
        self.gso.store(on, Ordering::Relaxed);
    }

    /// Whether sends use UDP GSO now.
    pub(crate) fn gso(&self) -> bool {
        self.gso.load(Ordering::Relaxed)
    }

    /// Whether receives may be coalesced (UDP GRO).
    pub(crate) fn gro(&self) -> bool {
        self.gro.load(Ordering::Relaxed)
    }

    /// Binds `port` (0: a free one) on both families; IPv6 is skipped when the
    /// system has none.
    pub(crate) fn bind(port: u16, fwmark: u32) -> io::Result<Self> {
        let attempts = if port == 0 { BIND_ATTEMPTS } else { 1 };
        let mut last_err = None;
        for _ in 0..attempts {
            let v4 = new_socket(Domain::IPV4, fwmark)?;
            v4.bind(&SockAddr::from(SocketAddrV4::new(
                Ipv4Addr::UNSPECIFIED,
                port,
            )))?;
            let bound = v4
                .local_addr()?
                .as_socket()
                .map(|a| a.port())
                .ok_or_else(|| io::Error::other("bound socket has no port"))?;
            let v6 = match new_socket(Domain::IPV6, fwmark) {
                Ok(s) => s,
                Err(e) if v6_unavailable(&e) => {
                    return Ok(Self::new(Some(v4), None, bound));
                }
                Err(e) => return Err(e),
            };
            match v6.bind(&SockAddr::from(SocketAddrV6::new(
                Ipv6Addr::UNSPECIFIED,
                bound,
                0,
                0,
            ))) {
                Ok(()) => return Ok(Self::new(Some(v4), Some(v6), bound)),
                Err(e) if v6_unavailable(&e) => return Ok(Self::new(Some(v4), None, bound)),
                Err(e) => last_err = Some(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::from_raw_os_error(libc::EADDRINUSE)))
    }

    /// Sets `SO_MARK` on both sockets, or on neither: when the second refuses, the
    /// first gets its old mark back.
    pub(crate) fn set_fwmark(&self, mark: u32) -> io::Result<()> {
        let mut done: Vec<(&Socket, u32)> = Vec::new();
        for s in self.v4.iter().chain(self.v6.iter()) {
            let old = self::mark(s)?;
            if let Err(e) = set_mark(s, mark) {
                for (s, old) in done {
                    let _ = set_mark(s, old);
                }
                return Err(e);
            }
            done.push((s, old));
        }
        Ok(())
    }

    /// The socket for `addr`'s family.
    fn socket_for(&self, addr: &SocketAddr) -> Option<&Socket> {
        match addr {
            SocketAddr::V4(_) => self.v4.as_ref(),
            SocketAddr::V6(_) => self.v6.as_ref(),
        }
    }

    /// Sends one datagram (blocking when the socket buffer is full: back-pressure).
    pub(crate) fn send_to(&self, data: &[u8], addr: SocketAddr) -> io::Result<()> {
        let addr = canonical(addr);
        let sock = self
            .socket_for(&addr)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EAFNOSUPPORT))?;
        sock.send_to(data, &SockAddr::from(addr)).map(|_| ())
    }
}

/// Turns an IPv4-mapped IPv6 address into the IPv4 one, so it goes out the v4 socket.
pub(crate) fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, a.port())),
            None => SocketAddr::V6(a),
        },
        SocketAddr::V4(_) => addr,
    }
}

/// Control-message room of one message, aligned for `cmsghdr`.
#[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
#[derive(Clone, Copy)]
#[repr(C, align(8))]
struct Cmsg([u8; CMSG_ROOM]);

/// Buffers for receiving up to `n` messages with one `recvmmsg`; with UDP GRO a
/// message holds several datagrams of one flow ([`RecvBatch::get`]).
pub(crate) struct RecvBatch {
    bufs: Vec<Vec<u8>>,
    addrs: Vec<MaybeUninit<libc::sockaddr_storage>>,
    #[cfg(any(target_os = "linux", target_os = "android"))]
    iovs: Vec<libc::iovec>,
    #[cfg(any(target_os = "linux", target_os = "android"))]
    hdrs: Vec<libc::mmsghdr>,
    #[cfg(any(target_os = "linux", target_os = "android"))]
    cmsgs: Vec<Cmsg>,
    lens: Vec<usize>,
    /// The GRO segment size of each message (0: one datagram).
    strides: Vec<usize>,
    srcs: Vec<Option<SocketAddr>>,
}

impl RecvBatch {
    pub(crate) fn new(n: usize) -> Self {
        Self {
            bufs: (0..n).map(|_| vec![0u8; MAX_DATAGRAM]).collect(),
            addrs: (0..n).map(|_| MaybeUninit::zeroed()).collect(),
            #[cfg(any(target_os = "linux", target_os = "android"))]
            iovs: (0..n)
                .map(|_| libc::iovec {
                    iov_base: std::ptr::null_mut(),
                    iov_len: 0,
                })
                .collect(),
            // SAFETY: mmsghdr is plain data for which all-zero is a valid value.
            #[cfg(any(target_os = "linux", target_os = "android"))]
            hdrs: (0..n).map(|_| unsafe { std::mem::zeroed() }).collect(),
            #[cfg(any(target_os = "linux", target_os = "android"))]
            cmsgs: vec![Cmsg([0; CMSG_ROOM]); n],
            lens: vec![0; n],
            strides: vec![0; n],
            srcs: vec![None; n],
        }
    }

    /// Receives what is queued without waiting; `Ok(0)` when nothing is.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    pub(crate) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        let n = self.bufs.len();
        for i in 0..n {
            self.iovs[i].iov_base = self.bufs[i].as_mut_ptr().cast();
            self.iovs[i].iov_len = self.bufs[i].len();
            let h = &mut self.hdrs[i];
            h.msg_hdr.msg_name = self.addrs[i].as_mut_ptr().cast();
            h.msg_hdr.msg_namelen = std::mem::size_of::<libc::sockaddr_storage>() as _;
            h.msg_hdr.msg_iov = &mut self.iovs[i];
            h.msg_hdr.msg_iovlen = 1;
            h.msg_hdr.msg_control = self.cmsgs[i].0.as_mut_ptr().cast();
            h.msg_hdr.msg_controllen = CMSG_ROOM as _;
            h.msg_hdr.msg_flags = 0;
            h.msg_len = 0;
        }
        // SAFETY: every header points at a live buffer, iovec, control buffer and
        // address slot owned by `self`, which outlives the call; `n` is the array
        // length.
        let rc = unsafe {
            libc::recvmmsg(
                fd,
                self.hdrs.as_mut_ptr(),
                n as libc::c_uint,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            let err = io::Error::last_os_error();
            return if matches!(
                err.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
            ) {
                Ok(0)
            } else {
                Err(err)
            };
        }
        let got = usize::try_from(rc).unwrap_or(0);
        for i in 0..got {
            self.lens[i] = self.hdrs[i].msg_len as usize;
            self.strides[i] = gro_size(&self.hdrs[i].msg_hdr);
            let len = self.hdrs[i].msg_hdr.msg_namelen;
            // SAFETY: the kernel wrote a socket address of `len` bytes into the slot,
            // which is a full sockaddr_storage (as is socket2's storage).
            let addr = unsafe { sock_addr(self.addrs[i].assume_init(), len) };
            self.srcs[i] = addr.as_socket().map(canonical);
        }
        Ok(got)
    }

    /// Receives what is queued without waiting; `Ok(0)` when nothing is.
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    pub(crate) fn recv(&mut self, fd: RawFd) -> io::Result<usize> {
        self.recv_each(fd)
    }

    /// Receives what is queued without waiting, one `recvfrom` a datagram (Apple has
    /// no `recvmmsg`); `Ok(0)` when nothing is. As `recvmmsg`, an error after the
    /// first datagram ends the batch and is left for the next call. Compiled
    /// everywhere so the tests run it here.
    #[cfg_attr(any(target_os = "linux", target_os = "android"), allow(dead_code))]
    fn recv_each(&mut self, fd: RawFd) -> io::Result<usize> {
        let mut got = 0;
        while got < self.bufs.len() {
            let buf = &mut self.bufs[got];
            let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            // SAFETY: the buffer and the address slot are live, writable and of the
            // lengths given; `len` lives across the call.
            let rc = unsafe {
                libc::recvfrom(
                    fd,
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    self.addrs[got].as_mut_ptr().cast(),
                    &mut len,
                )
            };
            let Ok(n) = usize::try_from(rc) else {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                if err.kind() == io::ErrorKind::WouldBlock || got > 0 {
                    break;
                }
                return Err(err);
            };
            self.lens[got] = n;
            self.strides[got] = 0;
            // SAFETY: the kernel wrote a socket address of `len` bytes into the slot,
            // which is a full sockaddr_storage (as is socket2's storage).
            let addr = unsafe { sock_addr(self.addrs[got].assume_init(), len) };
            self.srcs[got] = addr.as_socket().map(canonical);
            got += 1;
        }
        Ok(got)
    }

    /// The `i`-th message received: its source and its datagrams (several when the
    /// kernel coalesced them: every one `stride` bytes but a shorter last).
    pub(crate) fn get(&self, i: usize) -> (Option<SocketAddr>, impl Iterator<Item = &[u8]>) {
        let data = &self.bufs[i][..self.lens[i]];
        let stride = self.strides[i];
        // One datagram (an empty one too) unless the kernel said it coalesced.
        let (first, rest) = if stride == 0 || data.len() <= stride {
            (data, &[][..])
        } else {
            data.split_at(stride)
        };
        (
            self.srcs[i],
            std::iter::once(first).chain(rest.chunks(stride.max(1))),
        )
    }
}

/// The segment size the kernel put in a received message's `UDP_GRO` control
/// message; 0 when there is none (one datagram).
#[cfg(any(target_os = "linux", target_os = "android"))]
fn gro_size(msg: &libc::msghdr) -> usize {
    // SAFETY: `msg` is a header recvmmsg filled: its control pointer and length
    // describe the live control buffer the kernel wrote `msg_controllen` bytes of;
    // the CMSG_* functions stay inside it, and the data of a `UDP_GRO` message is
    // one int (read unaligned).
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_UDP && (*c).cmsg_type == libc::UDP_GRO {
                let v = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::c_int>());
                return usize::try_from(v).unwrap_or(0);
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    0
}

/// Encrypted datagrams waiting to be sent together, one after another in one
/// buffer (so a run of them is one GSO message without a copy).
pub(crate) struct SendBatch {
    buf: Vec<u8>,
    /// Where each datagram starts in `buf`, and its length.
    spans: Vec<(usize, usize)>,
    dsts: Vec<SocketAddr>,
    /// Whose tx bytes each datagram counts to, once the kernel took it.
    peers: Vec<Arc<Peer>>,
    /// Where the next datagram goes.
    end: usize,
}

/// One message of a `sendmmsg`: datagrams `first..first + count`, contiguous in the
/// buffer, each `segment` bytes but a shorter last (a GSO message when `count > 1`).
#[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Message {
    first: usize,
    count: usize,
    segment: usize,
}

impl SendBatch {
    /// A batch; it grows to what one pass queues and keeps that room.
    pub(crate) fn new() -> Self {
        Self {
            buf: Vec::new(),
            spans: Vec::new(),
            dsts: Vec::new(),
            peers: Vec::new(),
            end: 0,
        }
    }

    /// How many datagrams are queued.
    pub(crate) fn len(&self) -> usize {
        self.spans.len()
    }

    /// The buffer the next datagram is written into: at least `room` bytes.
    pub(crate) fn next_buf(&mut self, room: usize) -> &mut [u8] {
        let need = self.end + room;
        if self.buf.len() < need {
            self.buf.resize(need, 0);
        }
        &mut self.buf[self.end..need]
    }

    /// Commits the datagram just written into [`SendBatch::next_buf`].
    pub(crate) fn push(&mut self, len: usize, dst: SocketAddr, peer: &Arc<Peer>) {
        self.spans.push((self.end, len));
        self.dsts.push(canonical(dst));
        self.peers.push(peer.clone());
        self.end += len;
    }

    fn clear(&mut self) {
        self.spans.clear();
        self.dsts.clear();
        self.peers.clear();
        self.end = 0;
    }

    /// Sends everything queued; returns how many datagrams failed.
    pub(crate) fn flush(&mut self, sockets: &UdpSockets) -> usize {
        let mut failed = 0;
        for v4 in [true, false] {
            let idx: Vec<usize> = (0..self.len())
                .filter(|i| self.dsts[*i].is_ipv4() == v4)
                .collect();
            if idx.is_empty() {
                continue;
            }
            let Some(sock) = (if v4 { &sockets.v4 } else { &sockets.v6 }) else {
                failed += idx.len();
                continue;
            };
            failed += self.send_indices(sock.as_raw_fd(), &idx, sockets);
        }
        self.clear();
        failed
    }

    /// The messages that send datagrams `idx` (ascending): with `gso`, each run of
    /// datagrams contiguous in the buffer, to one destination, of one size (the
    /// last may be shorter), within the kernel's limits; without, one each.
    #[cfg_attr(not(any(target_os = "linux", target_os = "android")), allow(dead_code))]
    fn messages(&self, idx: &[usize], gso: bool) -> Vec<Message> {
        let mut out: Vec<Message> = Vec::new();
        let mut bytes = 0;
        for (k, &i) in idx.iter().enumerate() {
            let (start, len) = self.spans[i];
            if gso {
                if let Some(m) = out.last_mut() {
                    let prev = idx[k - 1];
                    let (pstart, plen) = self.spans[prev];
                    let joins = m.count < GSO_MAX_SEGMENTS
                        && pstart + plen == start
                        && self.dsts[prev] == self.dsts[i]
                        // Every datagram but the last is `segment` long.
                        && plen == m.segment
                        && len <= m.segment
                        && bytes + len <= GSO_MAX_BYTES;
                    if joins {
                        m.count += 1;
                        bytes += len;
                        continue;
                    }
                }
            }
            out.push(Message {
                first: k,
                count: 1,
                segment: len,
            });
            bytes = len;
        }
        out
    }

    /// Sends the datagrams `idx` (indices into the batch, ascending); returns how
    /// many failed.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn send_indices(&mut self, fd: RawFd, idx: &[usize], sockets: &UdpSockets) -> usize {
        let gso = sockets.gso();
        let messages = self.messages(idx, gso);
        let addrs: Vec<SockAddr> = messages
            .iter()
            .map(|m| SockAddr::from(self.dsts[idx[m.first]]))
            .collect();
        let mut iovs: Vec<libc::iovec> = messages
            .iter()
            .map(|m| {
                let (start, _) = self.spans[idx[m.first]];
                let (last_start, last_len) = self.spans[idx[m.first + m.count - 1]];
                libc::iovec {
                    iov_base: self.buf[start..].as_mut_ptr().cast(),
                    iov_len: last_start + last_len - start,
                }
            })
            .collect();
        let mut cmsgs = vec![Cmsg([0; CMSG_ROOM]); messages.len()];
        let mut hdrs: Vec<libc::mmsghdr> = Vec::with_capacity(messages.len());
        for (k, (m, a)) in messages.iter().zip(&addrs).enumerate() {
            // SAFETY: mmsghdr is plain data for which all-zero is a valid value.
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_name = a.as_ptr() as *mut libc::c_void;
            h.msg_hdr.msg_namelen = a.len();
            h.msg_hdr.msg_iov = &mut iovs[k];
            h.msg_hdr.msg_iovlen = 1;
            if m.count > 1 {
                // SAFETY: the control buffer is live, aligned and CMSG_ROOM bytes, more
                // than CMSG_SPACE of a u16; the header is filled before its data.
                unsafe { put_segment_cmsg(&mut h.msg_hdr, &mut cmsgs[k], m.segment) };
            }
            hdrs.push(h);
        }
        let mut sent = 0;
        let mut failed = 0;
        while sent < hdrs.len() {
            let rest = &mut hdrs[sent..];
            // SAFETY: the headers point at addresses, iovecs, control buffers and
            // datagrams that live until this function returns; `rest.len()` is the
            // array length.
            let rc = unsafe { libc::sendmmsg(fd, rest.as_mut_ptr(), rest.len() as _, 0) };
            if rc < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                let m = messages[sent];
                if m.count > 1 && matches!(err.raw_os_error(), Some(libc::EIO | libc::EINVAL)) {
                    // The kernel (or the NIC under it) cannot segment: no more GSO
                    // on these sockets, and what is left goes one datagram a message.
                    sockets.gso.store(false, Ordering::Relaxed);
                    tracing::warn!(error = %err, "UDP GSO send refused; UDP segmentation offload turned off for this device");
                    return failed + self.send_indices(fd, &idx[m.first..], sockets);
                }
                tracing::trace!(error = %err, "sendmmsg failed; dropping one message");
                // Skip the message the kernel refused (e.g. unreachable) and go on.
                sent += 1;
                failed += m.count;
                continue;
            }
            let n = usize::try_from(rc)
                .unwrap_or(0)
                .max(1)
                .min(hdrs.len() - sent);
            for m in &messages[sent..sent + n] {
                for i in &idx[m.first..m.first + m.count] {
                    self.peers[*i].add_tx(self.spans[*i].1);
                }
            }
            sent += n;
        }
        failed
    }

    /// Sends the datagrams `idx`; returns how many failed.
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn send_indices(&mut self, fd: RawFd, idx: &[usize], _sockets: &UdpSockets) -> usize {
        self.send_each(fd, idx)
    }

    /// Sends the datagrams `idx`, one `sendto` each (Apple has no `sendmmsg`);
    /// returns how many failed. A refused datagram is skipped, as with `sendmmsg`.
    /// Compiled everywhere so the tests run it here.
    #[cfg_attr(any(target_os = "linux", target_os = "android"), allow(dead_code))]
    fn send_each(&mut self, fd: RawFd, idx: &[usize]) -> usize {
        let mut failed = 0;
        for i in idx {
            let addr = SockAddr::from(self.dsts[*i]);
            let (start, len) = self.spans[*i];
            let data = &self.buf[start..start + len];
            loop {
                // SAFETY: `data` and `addr` are live, valid buffers of the lengths
                // given; sendto only reads them.
                let rc = unsafe {
                    libc::sendto(
                        fd,
                        data.as_ptr().cast(),
                        data.len(),
                        0,
                        addr.as_ptr().cast(),
                        addr.len(),
                    )
                };
                if rc >= 0 {
                    self.peers[*i].add_tx(data.len());
                    break;
                }
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::trace!(error = %err, "sendto failed; dropping one datagram");
                failed += 1;
                break;
            }
        }
        failed
    }
}

/// Puts a `UDP_SEGMENT` control message (`segment` bytes a datagram) in `msg`.
///
/// # Safety
/// `cmsg` must outlive every use of `msg`.
#[cfg(any(target_os = "linux", target_os = "android"))]
unsafe fn put_segment_cmsg(msg: &mut libc::msghdr, cmsg: &mut Cmsg, segment: usize) {
    let value = u16::try_from(segment).unwrap_or(u16::MAX);
    msg.msg_control = cmsg.0.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE of a u16 (24 on 64-bit) is within CMSG_ROOM; the first
    // header is at the (aligned) start of the buffer, and its data right after it.
    unsafe {
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<u16>() as u32) as _;
        let c = libc::CMSG_FIRSTHDR(msg);
        (*c).cmsg_level = libc::SOL_UDP;
        (*c).cmsg_type = libc::UDP_SEGMENT;
        (*c).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<u16>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<u16>(), value);
    }
}

/// socket2's address from a `sockaddr_storage` the kernel filled with `len` bytes.
///
/// # Safety
/// `len` bytes of `raw` must be a socket address the kernel wrote.
unsafe fn sock_addr(raw: libc::sockaddr_storage, len: libc::socklen_t) -> SockAddr {
    let mut storage = socket2::SockAddrStorage::zeroed();
    // SAFETY: socket2's storage is a sockaddr_storage of the same size.
    unsafe {
        *storage.view_as::<libc::sockaddr_storage>() = raw;
        SockAddr::new(storage, len)
    }
}

#[cfg(test)]
mod tests {
    use std::net::UdpSocket;

    use nanami_model::PrivateKey;

    use super::*;

    fn peer() -> Arc<Peer> {
        Arc::new(Peer::new(PrivateKey::from_bytes([7; 32]).public_key(), 1))
    }

    fn queue(batch: &mut SendBatch, data: &[u8], dst: SocketAddr, peer: &Arc<Peer>) {
        batch.next_buf(data.len())[..data.len()].copy_from_slice(data);
        batch.push(data.len(), dst, peer);
    }

    #[test]
    fn gso_messages_are_runs_to_one_destination_of_one_size_within_the_limits() {
        let p = peer();
        let a: SocketAddr = "192.0.2.1:51820".parse().expect("addr");
        let b: SocketAddr = "192.0.2.2:51820".parse().expect("addr");
        let mut batch = SendBatch::new();
        // 3 full to a, a short one to a (ends the run), 2 to b, one longer to b.
        for (len, dst) in [
            (100, a),
            (100, a),
            (100, a),
            (60, a),
            (100, a),
            (100, b),
            (100, b),
            (120, b),
        ] {
            queue(&mut batch, &vec![7; len], dst, &p);
        }
        let all: Vec<usize> = (0..batch.len()).collect();
        let m = |first, count, segment| Message {
            first,
            count,
            segment,
        };
        assert_eq!(
            batch.messages(&all, true),
            vec![m(0, 4, 100), m(4, 1, 100), m(5, 2, 100), m(7, 1, 120)]
        );
        // Without GSO, or over indices that are not contiguous, one each.
        assert_eq!(batch.messages(&all, false).len(), 8);
        assert_eq!(
            batch.messages(&[0, 2], true),
            vec![m(0, 1, 100), m(1, 1, 100)]
        );

        // At most GSO_MAX_SEGMENTS datagrams and GSO_MAX_BYTES a message.
        let mut big = SendBatch::new();
        for _ in 0..(GSO_MAX_SEGMENTS + 3) {
            queue(&mut big, &[1; 500], a, &p);
        }
        let all: Vec<usize> = (0..big.len()).collect();
        let counts: Vec<usize> = big.messages(&all, true).iter().map(|m| m.count).collect();
        assert_eq!(counts, vec![GSO_MAX_SEGMENTS, 3]);
        let mut huge = SendBatch::new();
        for _ in 0..40 {
            queue(&mut huge, &[1; 1452], a, &p);
        }
        let all: Vec<usize> = (0..huge.len()).collect();
        for msg in huge.messages(&all, true) {
            assert!(msg.count * 1452 <= GSO_MAX_BYTES, "{msg:?}");
        }
    }

    /// The `sendto`/`recvfrom` loops Apple uses, run here over loopback.
    #[test]
    fn one_by_one_batches_send_count_skip_refused_and_receive_with_sources() {
        let tx = UdpSocket::bind("127.0.0.1:0").expect("binds");
        let rx = UdpSocket::bind("127.0.0.1:0").expect("binds");
        let to = rx.local_addr().expect("addr");
        let p = peer();
        let mut out = SendBatch::new();
        queue(&mut out, b"one", to, &p);
        // A v6 destination on a v4 socket: refused, skipped, counted.
        queue(
            &mut out,
            b"refused",
            "[2001:db8::1]:9".parse().expect("addr"),
            &p,
        );
        queue(&mut out, b"three!", to, &p);
        assert_eq!(out.send_each(tx.as_raw_fd(), &[0, 1, 2]), 1);
        assert_eq!(p.tx_bytes.load(std::sync::atomic::Ordering::Relaxed), 9);

        let mut batch = RecvBatch::new(4);
        let got = batch.recv_each(rx.as_raw_fd()).expect("receives");
        assert_eq!(got, 2);
        let from = tx.local_addr().expect("addr");
        let one = |i: usize| {
            let (src, datagrams) = batch.get(i);
            (src, datagrams.collect::<Vec<_>>())
        };
        assert_eq!(one(0), (Some(from), vec![&b"one"[..]]));
        assert_eq!(one(1), (Some(from), vec![&b"three!"[..]]));
        assert_eq!(batch.recv_each(rx.as_raw_fd()).expect("nothing queued"), 0);
    }
}
