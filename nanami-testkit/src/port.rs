//! Ports that cannot race. Picking a free port, closing it and handing its number
//! to a child lets anything else on the machine take it in between. Instead:
//!
//! - a socket bound here is handed over as it is ([`tcp_listener`],
//!   [`udp_socket`]): the port is never free;
//! - a child that binds port 0 reports its address, and the test reads it from its
//!   output ([`reported_addr`], with [`crate::Process::wait_for_output`]);
//! - when the address must be known before the child starts (it is in another
//!   process's configuration), a [`Reserved`] port is bound without listening: no
//!   one else can bind it, connections to it are refused, and a child that binds
//!   it with `SO_REUSEADDR` (std's, tokio's and most servers' listeners do) takes
//!   it over.

use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};

/// A TCP listener on `ip`, on a port the kernel picks.
pub fn tcp_listener(ip: IpAddr) -> TcpListener {
    TcpListener::bind((ip, 0)).unwrap_or_else(|e| panic!("binding a TCP port on {ip}: {e}"))
}

/// A UDP socket on `ip`, on a port the kernel picks.
pub fn udp_socket(ip: IpAddr) -> UdpSocket {
    UdpSocket::bind((ip, 0)).unwrap_or_else(|e| panic!("binding a UDP port on {ip}: {e}"))
}

/// A TCP port held, not listened on, for as long as this lives (see the module).
#[derive(Debug)]
pub struct Reserved {
    _socket: socket2::Socket,
    addr: SocketAddr,
}

impl Reserved {
    /// Reserves a port on `ip` (the kernel picks it).
    pub fn tcp(ip: IpAddr) -> Self {
        use socket2::{Domain, Socket, Type};
        let bound = || -> std::io::Result<(Socket, SocketAddr)> {
            let socket = Socket::new(Domain::for_address((ip, 0).into()), Type::STREAM, None)?;
            socket.set_reuse_address(true)?;
            socket.bind(&SocketAddr::from((ip, 0)).into())?;
            let addr = socket
                .local_addr()?
                .as_socket()
                .ok_or_else(|| std::io::Error::other("not an IP socket"))?;
            Ok((socket, addr))
        };
        let (socket, addr) =
            bound().unwrap_or_else(|e| panic!("reserving a TCP port on {ip}: {e}"));
        Self {
            _socket: socket,
            addr,
        }
    }

    /// [`Reserved::tcp`] on 127.0.0.1.
    pub fn loopback() -> Self {
        Self::tcp(IpAddr::from([127, 0, 0, 1]))
    }

    /// The reserved port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The reserved address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// The first socket address that follows `marker` in `text` (up to whitespace, a
/// quote or a closing parenthesis), e.g. `reported_addr(log, "serving addr=")`
/// for a line `… serving addr=127.0.0.1:40123 tls=true`.
pub fn reported_addr(text: &str, marker: &str) -> Option<SocketAddr> {
    text.match_indices(marker).find_map(|(at, _)| {
        let rest = &text[at + marker.len()..];
        let rest = rest.trim_start_matches(['"', '(', '\'']);
        let end = rest
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | ')' | ','))
            .unwrap_or(rest.len());
        rest[..end].parse().ok()
    })
}
