//! Connections to one manager: hyper-util's pooled client, TLS from hyper-rustls
//! with Nanami's rustls configuration, every new connection (TCP and TLS
//! handshakes) bounded by the connect timeout so that a manager that accepts but
//! never completes a handshake is left for the next one like one that refuses.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::Uri;
use http_body_util::Full;
use hyper_rustls::{FixedServerNameResolver, HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::{
    CaptureConnection, Connected, Connection, HttpConnector,
};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::net::TcpStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How long an idle connection is kept for the next call: under the manager's own
/// 60 s idle timeout, so the client drops a connection before the manager does
/// (a connection the manager closed is found out only when a request is written
/// to it; hyper then retries on a new one, but only if nothing was sent).
pub(crate) const POOL_IDLE: Duration = Duration::from_secs(30);

/// How to speak TLS to a manager: the configuration (one CA for all managers) and
/// the name its certificate must carry.
pub(crate) type Tls = (Arc<rustls::ClientConfig>, ServerName<'static>);

/// The pooled HTTP/1 client of one manager. Requests name the address to use
/// (`http(s)://<ip>:<port>/…`), so idle connections are kept per address.
pub(crate) type Pool = hyper_util::client::legacy::Client<Bounded, Full<Bytes>>;

/// A pool for a manager spoken to in plain HTTP, or in TLS verifying the
/// certificate for `tls.1` (the host name of its URL, whatever address is dialled).
pub(crate) fn pool(tls: Option<&Tls>, connect_timeout: Duration) -> Pool {
    let mut tcp = HttpConnector::new();
    tcp.enforce_http(false);
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(connect_timeout));
    let inner = match tls {
        None => Inner::Plain(tcp),
        // hyper-rustls sets ALPN itself (http/1.1, from `enable_http1`).
        Some((config, name)) => Inner::Tls(
            hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(rustls::ClientConfig::clone(config))
                .https_only()
                .with_server_name_resolver(FixedServerNameResolver::new(name.clone()))
                .enable_http1()
                .wrap_connector(tcp),
        ),
    };
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE)
        .build(Bounded {
            inner,
            limit: connect_timeout,
        })
}

/// The transport under a [`Pool`].
#[derive(Clone)]
enum Inner {
    Plain(HttpConnector),
    Tls(HttpsConnector<HttpConnector>),
}

/// A connector whose connections are made within `limit` or fail as connection
/// errors (which tell the caller that nothing was sent).
#[derive(Clone)]
pub(crate) struct Bounded {
    inner: Inner,
    limit: Duration,
}

/// When a connection was opened: an extra of its [`Connected`] metadata, so that a
/// caller can tell a kept connection from one opened for its request.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Opened(pub(crate) Instant);

/// A connection, with when it was opened.
pub(crate) struct Conn {
    stream: MaybeHttpsStream<TokioIo<TcpStream>>,
    opened: Instant,
}

impl Connection for Conn {
    fn connected(&self) -> Connected {
        self.stream.connected().extra(Opened(self.opened))
    }
}

impl hyper::rt::Read for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }
}

/// When the connection a request went out on was opened, if it got one.
pub(crate) fn opened(capture: &CaptureConnection) -> Option<Instant> {
    let connected = capture.connection_metadata();
    let mut extras = http::Extensions::new();
    connected.as_ref()?.get_extras(&mut extras);
    extras.get::<Opened>().map(|o| o.0)
}

type Stream = MaybeHttpsStream<TokioIo<TcpStream>>;

impl tower_service::Service<Uri> for Bounded {
    type Response = Conn;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        match &mut self.inner {
            Inner::Plain(c) => c.poll_ready(cx).map_err(Into::into),
            Inner::Tls(c) => c.poll_ready(cx),
        }
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let limit = self.limit;
        let connecting: Pin<Box<dyn Future<Output = Result<Stream, BoxError>> + Send>> =
            match &mut self.inner {
                Inner::Plain(c) => {
                    let tcp = c.call(uri);
                    Box::pin(async move { Ok(MaybeHttpsStream::Http(tcp.await?)) })
                }
                Inner::Tls(c) => c.call(uri),
            };
        Box::pin(async move {
            let stream = tokio::time::timeout(limit, connecting)
                .await
                .map_err(|_| format!("no connection within {limit:?}"))??;
            Ok(Conn {
                stream,
                opened: Instant::now(),
            })
        })
    }
}

/// An error and its causes, `outer: inner: …` (hyper's errors say little without
/// their sources: "client error (Connect)").
pub(crate) fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}
