//! The typed HTTP/1 client of the manager's API, over hyper-util's pooled client
//! with TLS from hyper-rustls. It speaks to one manager or to several serving the
//! same API, moving on to the next when one cannot be reached (see [`Client`]),
//! and keeps connections for reuse (long-polls and reports of a fleet of daemons
//! would otherwise each pay a TLS handshake).

use nanami_model::ErrorKind;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::connect::capture_connection;
use nanami_model::{GatewayId, NodeConfig, NodeId};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::lookup_host;
use tracing::{debug, warn};

use crate::connect::{self, Pool};
use crate::tls::{client_config, TlsError};
use crate::wire::{
    EnrolRequest, EnrolResponse, ErrorBody, GatewayDesired, GatewayStatus, ObservedRecord,
    ObservedReport, RegionView, TokenRequest, TokenResponse, TopologyResponse, WorkspaceView,
};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The URL is not `http(s)://host:port` (in a list of managers, this entry;
    /// an empty entry shows as `""`). Fix the configuration.
    #[error("bad manager URL {0:?}: expected http(s)://host:port")]
    Url(String),
    /// No manager URL was given. Fix the configuration.
    #[error("no manager URL given: expected http(s)://host:port, several separated by commas")]
    NoManager,
    /// The same manager (scheme, host and port) is in the list twice. Fix the
    /// configuration.
    #[error("manager URL {0:?} is given twice")]
    DuplicateManager(String),
    /// The TLS set-up (CA file) is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The manager could not be reached (connection refused, TLS handshake failed,
    /// connection dropped; with several managers, the last one tried). Retry later.
    #[error("cannot reach the manager: {0}")]
    Connect(String),
    /// The manager did not answer in time.
    #[error("the manager did not answer within {0:?}")]
    Timeout(Duration),
    /// The manager answered with an error status.
    #[error("{status}: {message}")]
    Status {
        /// The HTTP status.
        status: StatusCode,
        /// The manager's error message (and issues).
        message: String,
        /// Each validation problem with its path (422), as `nanami validate`
        /// prints them.
        issues: Vec<String>,
        /// With 412: the object's current revision (`None`: it does not exist).
        current_revision: Option<String>,
    },
    /// The answer was not the expected JSON.
    #[error("unexpected answer: {0}")]
    Decode(String),
}

impl ApiError {
    /// Whose move it is: a bad URL or list, and a 4xx answer, are
    /// [`ErrorKind::BadInput`] (except 408 and 429, which say "later"); no
    /// connection, a timeout and a 5xx answer are [`ErrorKind::Environment`]
    /// (retry with backoff); an answer that cannot be read is a
    /// [`ErrorKind::Bug`] (or a manager of another version).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Url(_) | Self::NoManager | Self::DuplicateManager(_) => ErrorKind::BadInput,
            Self::Tls(e) => e.kind(),
            Self::Connect(_) | Self::Timeout(_) => ErrorKind::Environment,
            Self::Status { status, .. }
                if status.is_server_error()
                    || *status == StatusCode::REQUEST_TIMEOUT
                    || *status == StatusCode::TOO_MANY_REQUESTS =>
            {
                ErrorKind::Environment
            }
            Self::Status { .. } => ErrorKind::BadInput,
            Self::Decode(_) => ErrorKind::Bug,
        }
    }
}

impl ApiError {
    /// The HTTP status, when the manager answered with an error.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Status { status, .. } => Some(*status),
            Self::Url(_)
            | Self::NoManager
            | Self::DuplicateManager(_)
            | Self::Tls(_)
            | Self::Connect(_)
            | Self::Timeout(_)
            | Self::Decode(_) => None,
        }
    }
}

/// The most addresses of one host name that are tried: a name is a handful of
/// managers, and each address costs at most one attempt's timeout.
const MAX_ADDRESSES: usize = 8;

/// How long connecting to one manager (TCP, TLS and HTTP handshakes) may take
/// before the next one is tried, by default: a few round trips across a continent
/// take well under a second; a manager that is down but not refusing (its host
/// gone, a firewall dropping) costs this much per call until another answers.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// One manager of the list: where it listens, how to speak TLS to it, and its
/// pool of connections.
struct Endpoint {
    /// The URL as given, for logs and errors.
    url: String,
    host: String,
    port: u16,
    /// The TLS configuration (one CA for all managers) and the name its
    /// certificate must carry; `None` for http.
    tls: Option<(
        Arc<rustls::ClientConfig>,
        rustls::pki_types::ServerName<'static>,
    )>,
    pool: Pool,
}

impl Endpoint {
    /// Parses one `http(s)://host:port`; `config` is made from `ca` on the first
    /// https entry and shared by the others (one CA for all managers).
    fn parse(
        url: &str,
        ca: Option<&Path>,
        config: &mut Option<Arc<rustls::ClientConfig>>,
        connect_timeout: Duration,
    ) -> Result<Self, ApiError> {
        let uri: http::Uri = url.parse().map_err(|_| ApiError::Url(url.into()))?;
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| ApiError::Url(url.into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let tls = match (uri.scheme_str(), ca) {
            (Some("https"), Some(ca)) => {
                let config = match config {
                    Some(c) => c.clone(),
                    None => config.insert(Arc::new(client_config(ca)?)).clone(),
                };
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|_| ApiError::Url(url.into()))?;
                Some((config, name))
            }
            (Some("http"), _) => None,
            (Some("https"), None) => {
                return Err(ApiError::Url(format!("{url} (https needs a CA file)")))
            }
            (Some(_) | None, _) => return Err(ApiError::Url(url.into())),
        };
        let port = uri
            .port_u16()
            .unwrap_or(if tls.is_some() { 443 } else { 80 });
        Ok(Self {
            url: url.to_owned(),
            host,
            port,
            pool: connect::pool(tls.as_ref(), connect_timeout),
            tls,
        })
    }

    /// The same manager with a new, empty pool whose connections are made within
    /// `connect_timeout`.
    fn with_connect_timeout(&self, connect_timeout: Duration) -> Self {
        Self {
            url: self.url.clone(),
            host: self.host.clone(),
            port: self.port,
            tls: self.tls.clone(),
            pool: connect::pool(self.tls.as_ref(), connect_timeout),
        }
    }

    /// What makes two entries the same manager.
    fn key(&self) -> (bool, String, u16) {
        (
            self.tls.is_some(),
            self.host.to_ascii_lowercase(),
            self.port,
        )
    }

    /// The manager's addresses: the literal one, or what its name resolves to now
    /// (each is a target of its own).
    async fn resolve(&self, limit: Duration) -> Result<Vec<SocketAddr>, ApiError> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, self.port)]);
        }
        let found = tokio::time::timeout(limit, lookup_host((self.host.as_str(), self.port)))
            .await
            .map_err(|_| ApiError::Connect(format!("{}: no address within {limit:?}", self.url)))?
            .map_err(|e| ApiError::Connect(format!("{}: {e}", self.url)))?;
        let mut addresses: Vec<SocketAddr> = Vec::new();
        for a in found {
            if !addresses.contains(&a) && addresses.len() < MAX_ADDRESSES {
                addresses.push(a);
            }
        }
        if addresses.is_empty() {
            return Err(ApiError::Connect(format!("{}: no address", self.url)));
        }
        Ok(addresses)
    }

    /// The URI of `path` at `addr`: requests name the address, so the pool keeps
    /// connections per address and a request goes where the caller chose.
    fn uri(&self, addr: SocketAddr, path: &str) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{addr}{path}")
    }
}

/// One address of one manager of the list: what one attempt goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct At {
    endpoint: usize,
    addr: SocketAddr,
}

/// The managers, shared by a client's clones with the one that answered last.
struct Targets {
    endpoints: Vec<Endpoint>,
    /// The target that answered last: every call tries it first, so a client that
    /// moved on stays where it is instead of bouncing back.
    sticky: std::sync::Mutex<Option<At>>,
}

impl Targets {
    /// The target for logs and errors: its URL, and the address when the URL
    /// names a host.
    fn label(&self, at: At) -> String {
        let endpoint = &self.endpoints[at.endpoint];
        if endpoint.host.parse::<IpAddr>().is_ok() {
            endpoint.url.clone()
        } else {
            format!("{} ({})", endpoint.url, at.addr)
        }
    }

    fn sticky(&self) -> Option<At> {
        *self.sticky.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// `at` answered a call that tried `first` first: it is tried first from now
    /// on. Logged once per switch, whichever clone noticed first.
    fn answered(&self, at: At, first: Option<At>) {
        let previous = self
            .sticky
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(at);
        if previous == Some(at) {
            return;
        }
        let tried = previous.or(first);
        let from = tried.map_or_else(|| self.endpoints[0].url.clone(), |t| self.label(t));
        if tried.is_some_and(|t| t != at) || (tried.is_none() && at.endpoint != 0) {
            warn!(manager = %self.label(at), previous = %from, "switched to another manager");
        }
    }
}

/// Whether a request may go to the next manager once it may have reached one (the
/// connection dropped before the answer, no answer in time, or 503). A request
/// that certainly reached no manager (no connection, TLS refused, or hyper gave it
/// back unsent) always may.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    /// Sending it twice does what sending it once does: idempotent methods (GET
    /// long-polls, PUT reports), and enrolment (see [`Client::enrol`]).
    Safe,
    /// It may change something twice (POSTs other than enrolment): only sent
    /// elsewhere when it was not sent at all.
    Once,
}

impl Repeat {
    fn of(method: &Method) -> Self {
        if method.is_idempotent() {
            Self::Safe
        } else {
            Self::Once
        }
    }
}

/// A request as its parts, so that it can be sent again to another manager.
struct Outgoing<'a> {
    method: Method,
    path: &'a str,
    headers: &'a [(http::HeaderName, String)],
    body: Option<(&'a str, Bytes)>,
    repeat: Repeat,
}

/// Why one attempt failed, which says whether the request may go on.
enum Failed {
    /// Nothing reached the manager.
    NotSent(ApiError),
    /// The request left; no answer came.
    NoAnswer {
        /// What happened.
        error: ApiError,
        /// It left on a connection kept from an earlier request (which the
        /// manager may have closed as it arrived), not one opened for it. Never
        /// set for a timeout: a manager that is slow is slow on a new connection
        /// too.
        kept: bool,
    },
    /// The request cannot be built (the caller's mistake): no manager would take it.
    Request(ApiError),
}

/// What an attempt leaves the call to do.
enum Verdict {
    /// The call's result.
    Done(Result<Answer, ApiError>),
    /// Try the next target; this is the result if none is left.
    Next(Result<Answer, ApiError>),
}

/// A client of one manager or of several that serve the same API (active-active,
/// one store), with an optional bearer credential.
///
/// Each call goes first to the target that answered last (sticky; at first, the
/// first of the list). When a target cannot be reached (no connection, TLS
/// refused, connecting slower than the connect timeout), or, for a request that
/// can be repeated, the connection drops before the answer, no answer comes in
/// time, or it answers 503, the call goes on to the next target, each target at
/// most once, and the last failure is returned when none is left: a call is
/// bounded by the number of targets times its timeout. Retrying later is the
/// caller's business (`nanami_agent` does it with [`nanami_reconcile::Backoff`]). A host name counts as one target per
/// address it resolves to (at most 8), resolved when a call is made.
///
/// Connections are pooled per address (hyper-util's client), kept idle for 30 s
/// and shared by the client's clones, as are the targets and which one answered
/// last: a daemon's long-poll and its reports reuse connections instead of paying
/// a TLS handshake each. A kept connection the manager has closed in the meantime
/// is replaced by a new one when nothing was sent on it.
#[derive(Clone)]
pub struct Client {
    targets: Arc<Targets>,
    credential: Option<String>,
    timeout: Duration,
    connect_timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("managers", &self.managers().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// A raw answer: status, headers and body.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// Response headers.
    pub headers: http::HeaderMap,
    /// Body bytes.
    pub body: Bytes,
}

impl Answer {
    /// The manager's error, for an answer whose status is not a success.
    pub fn error(&self) -> ApiError {
        match serde_json::from_slice::<ErrorBody>(&self.body) {
            Ok(e) => ApiError::Status {
                status: self.status,
                message: if e.issues.is_empty() {
                    e.error
                } else {
                    format!("{}\n  {}", e.error, e.issues.join("\n  "))
                },
                issues: e.issues,
                current_revision: e.current_revision,
            },
            Err(_) => ApiError::Status {
                status: self.status,
                message: String::from_utf8_lossy(&self.body).into_owned(),
                issues: Vec::new(),
                current_revision: None,
            },
        }
    }
}

impl Client {
    /// A client of `url`: `https://host:port` trusting the CA in `ca`, or
    /// `http://host:port` (`ca` unused), or several of them separated by commas
    /// (`https://a:7443,https://b:7443`), managers serving the same API: see
    /// [`Client::with_urls`].
    pub fn new(url: &str, ca: Option<&Path>) -> Result<Self, ApiError> {
        if url.trim().is_empty() {
            return Err(ApiError::NoManager);
        }
        let urls: Vec<&str> = url.split(',').collect();
        Self::with_urls(&urls, ca)
    }

    /// A client of the managers at `urls`, tried in this order at first (see
    /// [`Client`]); each `http(s)://host:port`, https ones trusting the CA in `ca`
    /// (one CA for all). Errors name the first bad entry: not such a URL (an empty
    /// entry, too), https without a CA, the same manager twice, or no entry at all.
    pub fn with_urls<S: AsRef<str>>(urls: &[S], ca: Option<&Path>) -> Result<Self, ApiError> {
        let mut config = None;
        let mut endpoints: Vec<Endpoint> = Vec::with_capacity(urls.len());
        for url in urls {
            let endpoint = Endpoint::parse(
                url.as_ref().trim(),
                ca,
                &mut config,
                DEFAULT_CONNECT_TIMEOUT,
            )?;
            if endpoints.iter().any(|e| e.key() == endpoint.key()) {
                return Err(ApiError::DuplicateManager(endpoint.url));
            }
            endpoints.push(endpoint);
        }
        if endpoints.is_empty() {
            return Err(ApiError::NoManager);
        }
        Ok(Self {
            targets: Arc::new(Targets {
                endpoints,
                sticky: std::sync::Mutex::new(None),
            }),
            credential: None,
            timeout: Duration::from_secs(30),
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
        })
    }

    /// The managers' URLs, in the order given.
    pub fn managers(&self) -> impl Iterator<Item = &str> {
        self.targets.endpoints.iter().map(|e| e.url.as_str())
    }

    /// The same client presenting `credential`.
    pub fn with_credential(mut self, credential: impl Into<String>) -> Self {
        self.credential = Some(credential.into());
        self
    }

    /// The timeout of calls other than long-polls (30 s by default), per target.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// How long connecting to one target (TCP and TLS) may take before the next
    /// is tried ([`DEFAULT_CONNECT_TIMEOUT`]; the call's timeout bounds the whole
    /// call, connecting included). The client gets pools of its own, and forgets
    /// which manager answered last: set it before the first call.
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self.targets = Arc::new(Targets {
            endpoints: self
                .targets
                .endpoints
                .iter()
                .map(|e| e.with_connect_timeout(timeout))
                .collect(),
            sticky: std::sync::Mutex::new(self.targets.sticky()),
        });
        self
    }

    /// The timeout of calls other than long-polls.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Sends one request and reads the whole answer, whatever its status.
    pub async fn send_raw(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
        timeout: Duration,
    ) -> Result<Answer, ApiError> {
        self.send_with(method, path, &[], body, timeout).await
    }

    /// [`Client::send_raw`] with extra request headers. An idempotent method
    /// (GET, PUT, DELETE, …) goes on to the next manager after a dropped
    /// connection, a timeout or a 503; another only when it reached no manager.
    pub async fn send_with(
        &self,
        method: Method,
        path: &str,
        headers: &[(http::HeaderName, String)],
        body: Option<(&str, Vec<u8>)>,
        timeout: Duration,
    ) -> Result<Answer, ApiError> {
        let repeat = Repeat::of(&method);
        self.exchange(
            &Outgoing {
                method,
                path,
                headers,
                body: body.map(|(t, b)| (t, Bytes::from(b))),
                repeat,
            },
            timeout,
        )
        .await
    }

    /// Sends `out` to the targets in turn, from the one that answered last, until
    /// one answers or none is left (see [`Client`]).
    async fn exchange(&self, out: &Outgoing<'_>, timeout: Duration) -> Result<Answer, ApiError> {
        let first = self.targets.sticky();
        let mut last = None;
        let n = self.targets.endpoints.len();
        let start = first.map_or(0, |at| at.endpoint);
        let limit = self.connect_timeout.min(timeout);
        for endpoint in (0..n).map(|k| (start + k) % n) {
            let mut addresses = match self.targets.endpoints[endpoint].resolve(limit).await {
                Ok(a) => a,
                Err(e) => {
                    debug!(error = %e, "cannot resolve a manager's name; trying the next one");
                    last = Some(Err(e));
                    continue;
                }
            };
            // The address that answered last goes first.
            if let Some(i) = first
                .filter(|f| f.endpoint == endpoint)
                .and_then(|f| addresses.iter().position(|a| *a == f.addr))
            {
                addresses.rotate_left(i);
            }
            for addr in addresses {
                match self
                    .try_target(out, At { endpoint, addr }, first, timeout)
                    .await
                {
                    Verdict::Done(result) => return result,
                    Verdict::Next(result) => last = Some(result),
                }
            }
        }
        last.unwrap_or_else(|| Err(ApiError::Connect("no manager to try".into())))
    }

    /// One attempt at `at`, judged. A repeatable request that got no answer on a
    /// kept connection is sent once more on a new one: the manager may have closed
    /// the connection as the request arrived (a restart, its idle timeout), which
    /// says nothing about whether it can answer.
    async fn try_target(
        &self,
        out: &Outgoing<'_>,
        at: At,
        first: Option<At>,
        timeout: Duration,
    ) -> Verdict {
        let mut result = self.attempt(out, at, timeout).await;
        if out.repeat == Repeat::Safe && matches!(result, Err(Failed::NoAnswer { kept: true, .. }))
        {
            debug!(manager = %self.targets.label(at), "a kept connection gave no answer; trying a new one");
            result = self.attempt(out, at, timeout).await;
        }
        match result {
            Ok(answer)
                if answer.status == StatusCode::SERVICE_UNAVAILABLE
                    && out.repeat == Repeat::Safe =>
            {
                debug!(manager = %self.targets.label(at), "unavailable (503); trying the next manager");
                Verdict::Next(Ok(answer))
            }
            Ok(answer) => {
                if answer.status != StatusCode::SERVICE_UNAVAILABLE {
                    self.targets.answered(at, first);
                }
                Verdict::Done(Ok(answer))
            }
            Err(Failed::Request(e)) => Verdict::Done(Err(e)),
            Err(Failed::NotSent(e)) => {
                debug!(error = %e, "cannot reach a manager; trying the next one");
                Verdict::Next(Err(e))
            }
            Err(Failed::NoAnswer { error, .. }) => match out.repeat {
                Repeat::Safe => {
                    debug!(error = %error, "no answer from a manager; trying the next one");
                    Verdict::Next(Err(error))
                }
                Repeat::Once => Verdict::Done(Err(error)),
            },
        }
    }

    /// Sends `out` to `at` once, on a pooled connection or a new one; the whole
    /// exchange within `timeout`.
    async fn attempt(
        &self,
        out: &Outgoing<'_>,
        at: At,
        timeout: Duration,
    ) -> Result<Answer, Failed> {
        let endpoint = &self.targets.endpoints[at.endpoint];
        let connect_error = |e: &dyn std::fmt::Display| {
            ApiError::Connect(format!("{}: {e}", self.targets.label(at)))
        };
        let mut request = self
            .request(endpoint, at.addr, out)
            .map_err(Failed::Request)?;
        let capture = capture_connection(&mut request);
        let started = Instant::now();
        // Whether the request went out on a connection kept from before.
        let kept = || connect::opened(&capture).is_some_and(|opened| opened < started);
        let exchange = async {
            let response = endpoint.pool.request(request).await.map_err(|e| {
                let error = connect_error(&connect::describe(&e));
                // A connection error: nothing was written. (A request on a kept
                // connection that closed before it was written is retried on a new
                // connection by the pool itself.)
                if e.is_connect() {
                    Failed::NotSent(error)
                } else {
                    Failed::NoAnswer {
                        error,
                        kept: kept(),
                    }
                }
            })?;
            let status = response.status();
            let (parts, body) = response.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| Failed::NoAnswer {
                    error: connect_error(&e),
                    kept: kept(),
                })?
                .to_bytes();
            Ok(Answer {
                status,
                headers: parts.headers,
                body,
            })
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(Failed::NoAnswer {
                error: ApiError::Timeout(timeout),
                kept: false,
            }),
        }
    }

    /// `out` as a request to `endpoint` at `addr`.
    fn request(
        &self,
        endpoint: &Endpoint,
        addr: SocketAddr,
        out: &Outgoing<'_>,
    ) -> Result<Request<Full<Bytes>>, ApiError> {
        let mut builder = Request::builder()
            .method(out.method.clone())
            .uri(endpoint.uri(addr, out.path))
            .header(http::header::HOST, endpoint.host.as_str());
        if let Some(c) = &self.credential {
            builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {c}"));
        }
        for (name, value) in out.headers {
            builder = builder.header(name, value.as_str());
        }
        match &out.body {
            Some((content_type, bytes)) => builder
                .header(http::header::CONTENT_TYPE, *content_type)
                .body(Full::new(bytes.clone())),
            None => builder.body(Full::new(Bytes::new())),
        }
        .map_err(|e| ApiError::Url(e.to_string()))
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
        timeout: Duration,
    ) -> Result<Option<T>, ApiError> {
        let repeat = Repeat::of(&method);
        self.call_with(method, path, body, timeout, repeat).await
    }

    /// [`Client::call`] with its own [`Repeat`].
    async fn call_with<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
        timeout: Duration,
        repeat: Repeat,
    ) -> Result<Option<T>, ApiError> {
        let out = Outgoing {
            method,
            path,
            headers: &[],
            body: body.map(|(t, b)| (t, Bytes::from(b))),
            repeat,
        };
        let answer = self.exchange(&out, timeout).await?;
        if answer.status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        if !answer.status.is_success() {
            return Err(answer.error());
        }
        serde_json::from_slice(&answer.body)
            .map(Some)
            .map_err(|e| ApiError::Decode(e.to_string()))
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ApiError> {
        self.call(Method::GET, path, None, self.timeout)
            .await?
            .ok_or_else(|| ApiError::Decode("empty answer".into()))
    }

    async fn json<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: &B,
        repeat: Repeat,
    ) -> Result<T, ApiError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ApiError::Decode(e.to_string()))?;
        self.call_with(
            method,
            path,
            Some(("application/json", bytes)),
            self.timeout,
            repeat,
        )
        .await?
        .ok_or_else(|| ApiError::Decode("empty answer".into()))
    }

    /// `POST /v1/enrol`.
    ///
    /// Although a POST, it goes on to the next manager after a dropped connection,
    /// a timeout or a 503 like an idempotent request: a token is redeemed
    /// atomically and once, so sending it again can never enrol twice. If the
    /// first manager redeemed it and died before answering, the next one refuses
    /// the spent token (401) and a new token is needed, as it would be without
    /// the retry.
    pub async fn enrol(&self, request: &EnrolRequest) -> Result<EnrolResponse, ApiError> {
        self.json(Method::POST, "/v1/enrol", request, Repeat::Safe)
            .await
    }

    /// `POST /v1/enrolment-tokens` (control credential).
    pub async fn create_token(&self, request: &TokenRequest) -> Result<TokenResponse, ApiError> {
        self.json(Method::POST, "/v1/enrolment-tokens", request, Repeat::Once)
            .await
    }

    /// `PUT /v1/topology` (control credential) with a YAML or JSON document.
    pub async fn put_topology(&self, document: &str) -> Result<TopologyResponse, ApiError> {
        let content_type = if document.trim_start().starts_with('{') {
            "application/json"
        } else {
            "application/yaml"
        };
        self.call(
            Method::PUT,
            "/v1/topology",
            Some((content_type, document.as_bytes().to_vec())),
            self.timeout,
        )
        .await?
        .ok_or_else(|| ApiError::Decode("empty answer".into()))
    }

    /// A long-poll `GET path` that may wait `wait`: `None` when nothing changed in
    /// that time (204), the answer when it succeeded, the manager's error otherwise.
    async fn long_poll(&self, path: &str, wait: Duration) -> Result<Option<Answer>, ApiError> {
        let answer = self
            .send_raw(Method::GET, path, None, wait + self.timeout)
            .await?;
        if answer.status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        if !answer.status.is_success() {
            return Err(answer.error());
        }
        Ok(Some(answer))
    }

    /// `GET /v1/gateways/{id}/desired?after=G&wait=S`: the desired state if its
    /// generation is above `after`, waiting up to `wait` for one; `None` if none
    /// came.
    pub async fn desired(
        &self,
        gateway: &GatewayId,
        after: Option<u64>,
        wait: Duration,
    ) -> Result<Option<GatewayDesired>, ApiError> {
        let mut path = format!("/v1/gateways/{gateway}/desired?wait={}", wait.as_secs());
        if let Some(after) = after {
            path.push_str(&format!("&after={after}"));
        }
        let Some(answer) = self.long_poll(&path, wait).await? else {
            return Ok(None);
        };
        let mut desired: GatewayDesired =
            serde_json::from_slice(&answer.body).map_err(|e| ApiError::Decode(e.to_string()))?;
        // The content's digest travels as the ETag (older daemons parse the body
        // strictly).
        desired.digest = answer
            .headers
            .get(http::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim_matches('"').to_owned())
            .filter(|v| !v.is_empty() && v.len() <= 64 && v.bytes().all(|b| b.is_ascii_hexdigit()));
        Ok(Some(desired))
    }

    /// `PUT /v1/gateways/{id}/observed`.
    pub async fn report(
        &self,
        gateway: &GatewayId,
        report: &ObservedReport,
    ) -> Result<(), ApiError> {
        let bytes = serde_json::to_vec(report).map_err(|e| ApiError::Decode(e.to_string()))?;
        let answer = self
            .send_raw(
                Method::PUT,
                &format!("/v1/gateways/{gateway}/observed"),
                Some(("application/json", bytes)),
                self.timeout,
            )
            .await?;
        if answer.status.is_success() {
            Ok(())
        } else {
            Err(answer.error())
        }
    }

    /// `GET /v1/gateways/{id}/observed` (control or operator credential).
    pub async fn observed(&self, gateway: &GatewayId) -> Result<Option<ObservedRecord>, ApiError> {
        self.call(
            Method::GET,
            &format!("/v1/gateways/{gateway}/observed"),
            None,
            self.timeout,
        )
        .await
    }

    /// `GET /v1/status` (control or operator credential).
    pub async fn status(&self) -> Result<Vec<GatewayStatus>, ApiError> {
        self.get("/v1/status").await
    }

    /// `GET /v1/nodes/{id}/config` as JSON (node's own or control credential).
    pub async fn node_config(&self, node: &NodeId) -> Result<NodeConfig, ApiError> {
        self.get(&format!("/v1/nodes/{node}/config")).await
    }

    /// Waits up to `wait` for node's configuration to differ from version `after`;
    /// Ok(None) when it did not change within `wait`; Ok(Some((version, config)))
    /// otherwise.
    ///
    /// `GET /v1/nodes/{id}/config?after=<version>&wait=<seconds>` (node's own or
    /// control credential); the version is the answer's `ETag` (an opaque string;
    /// `after: None` returns the current configuration at once). The manager cuts
    /// `wait` to 55 s and rounds it down to whole seconds.
    pub async fn node_config_watch(
        &self,
        node: &NodeId,
        after: Option<&str>,
        wait: Duration,
    ) -> Result<Option<(String, NodeConfig)>, ApiError> {
        let mut path = format!("/v1/nodes/{node}/config?wait={}", wait.as_secs());
        if let Some(after) = after {
            path.push_str("&after=");
            path.push_str(after);
        }
        let Some(answer) = self.long_poll(&path, wait).await? else {
            return Ok(None);
        };
        let version = answer
            .headers
            .get(http::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim_start_matches("W/").trim_matches('"').to_owned())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ApiError::Decode("a configuration without an ETag".into()))?;
        let config =
            serde_json::from_slice(&answer.body).map_err(|e| ApiError::Decode(e.to_string()))?;
        Ok(Some((version, config)))
    }

    /// `GET /v1/oversight/regions` (operator credential).
    pub async fn oversight_regions(&self) -> Result<Vec<RegionView>, ApiError> {
        self.get("/v1/oversight/regions").await
    }

    /// `GET /v1/oversight/workspaces` (operator credential).
    pub async fn oversight_workspaces(&self) -> Result<Vec<WorkspaceView>, ApiError> {
        self.get("/v1/oversight/workspaces").await
    }

    /// `GET /v1/oversight/gateways` (operator credential).
    pub async fn oversight_gateways(&self) -> Result<Vec<GatewayStatus>, ApiError> {
        self.get("/v1/oversight/gateways").await
    }

    /// Why client `node` is on the gateways it is on, under the manager's current
    /// topology and health: the model's `NodeExplanation` as JSON.
    ///
    /// `GET /v1/oversight/nodes/{id}/explain` (operator credential); 404 for an
    /// unknown node, 409 for one that is not active or is a gateway's machine.
    pub async fn explain_node(&self, node: &NodeId) -> Result<serde_json::Value, ApiError> {
        self.get(&format!("/v1/oversight/nodes/{node}/explain"))
            .await
    }

    /// `node`'s recent changes of primary gateway, newest first: the manager's
    /// movement records as JSON.
    ///
    /// `GET /v1/oversight/nodes/{id}/movements` (operator credential); 404 for an
    /// unknown node.
    pub async fn node_movements(&self, node: &NodeId) -> Result<serde_json::Value, ApiError> {
        self.get(&format!("/v1/oversight/nodes/{node}/movements"))
            .await
    }

    /// Which clients `gateway` carries and why, under the manager's current
    /// topology and health: the model's `GatewayExplanation` as JSON.
    ///
    /// `GET /v1/oversight/gateways/{id}/explain` (operator credential); 404 for an
    /// unknown gateway.
    pub async fn explain_gateway(
        &self,
        gateway: &GatewayId,
    ) -> Result<serde_json::Value, ApiError> {
        self.get(&format!("/v1/oversight/gateways/{gateway}/explain"))
            .await
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::atomic::{AtomicUsize, Ordering};

    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::wire::Subject;

    #[test]
    fn errors_say_whose_move_it_is() {
        let status = |code: u16| ApiError::Status {
            status: StatusCode::from_u16(code).unwrap(),
            message: String::new(),
            issues: Vec::new(),
            current_revision: None,
        };
        for code in [400, 401, 403, 404, 409, 412, 413, 422] {
            assert_eq!(status(code).kind(), ErrorKind::BadInput, "{code}");
        }
        for code in [408, 429, 500, 502, 503] {
            assert_eq!(status(code).kind(), ErrorKind::Environment, "{code}");
        }
        assert_eq!(
            ApiError::Connect("refused".into()).kind(),
            ErrorKind::Environment
        );
        assert_eq!(
            ApiError::Timeout(Duration::from_secs(1)).kind(),
            ErrorKind::Environment
        );
        assert_eq!(
            Client::new("", None).unwrap_err().kind(),
            ErrorKind::BadInput
        );
        assert_eq!(ApiError::Decode("x".into()).kind(), ErrorKind::Bug);
    }

    fn url_error(list: &str) -> String {
        match Client::new(list, None) {
            Err(ApiError::Url(entry)) => entry,
            other => panic!("{list}: expected a bad URL, got {other:?}"),
        }
    }

    #[test]
    fn a_list_of_managers_keeps_its_order_and_trims_spaces() {
        let client = Client::new("http://10.0.0.1:7443, http://m2.example:7443", None).unwrap();
        assert_eq!(
            client.managers().collect::<Vec<_>>(),
            ["http://10.0.0.1:7443", "http://m2.example:7443"]
        );
        let client = Client::with_urls(&["http://[::1]:1", "http://[::1]:2"], None).unwrap();
        assert_eq!(client.managers().count(), 2);
    }

    #[test]
    fn a_bad_entry_is_refused_by_name() {
        assert_eq!(url_error("http://a:1,ftp://b:2"), "ftp://b:2");
        assert_eq!(url_error("http://a:1,b:2"), "b:2");
        assert_eq!(url_error("http://a:1,,http://c:3"), "", "an empty entry");
        assert_eq!(url_error("http://a:1,"), "", "a trailing comma");
        assert_eq!(url_error("http://a:1,http://:2"), "http://:2");
        let https = url_error("http://a:1,https://b:2");
        assert!(
            https.starts_with("https://b:2") && https.contains("CA"),
            "{https}"
        );
        let message = Client::new("http://a:1,ftp://b:2", None)
            .unwrap_err()
            .to_string();
        assert!(message.contains("\"ftp://b:2\""), "{message}");
    }

    #[test]
    fn the_same_manager_twice_is_refused() {
        for list in [
            "http://a:1,http://a:1",
            "http://a:1,http://A:1",
            "http://a,http://a:80",
            "http://127.0.0.1:1, http://a:2,http://127.0.0.1:1",
        ] {
            match Client::new(list, None) {
                Err(e @ ApiError::DuplicateManager(_)) => {
                    assert!(e.to_string().contains("given twice"), "{e}")
                }
                other => panic!("{list}: expected a duplicate, got {other:?}"),
            }
        }
        // Another port, or another scheme, is another manager.
        Client::new("http://a:1,http://a:2", None).unwrap();
    }

    #[test]
    fn no_manager_at_all_is_refused() {
        assert!(matches!(Client::new("", None), Err(ApiError::NoManager)));
        assert!(matches!(Client::new("  ", None), Err(ApiError::NoManager)));
        let none: [&str; 0] = [];
        assert!(matches!(
            Client::with_urls(&none, None),
            Err(ApiError::NoManager)
        ));
    }

    /// What a test server does with each request.
    #[derive(Clone)]
    enum Behaviour {
        /// Answers with this status and body, then closes.
        Answer(u16, Vec<u8>),
        /// Reads the request and closes without a word.
        Drop,
        /// Answers 200 `{"ok":true}` and keeps the connection open for more.
        KeepAlive,
        /// Answers the first request of a connection and keeps it open, then
        /// closes it when the next request arrives, unanswered (a manager that
        /// closed an idle connection as a request was on its way).
        KeepOnce,
    }

    /// An HTTP/1 server on loopback that counts the connections it accepts and the
    /// requests it reads.
    struct Server {
        url: String,
        requests: Arc<AtomicUsize>,
        connections: Arc<AtomicUsize>,
    }

    impl Server {
        async fn start(behaviour: Behaviour) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            let requests = Arc::new(AtomicUsize::new(0));
            let connections = Arc::new(AtomicUsize::new(0));
            let (count, accepted) = (requests.clone(), connections.clone());
            tokio::spawn(async move {
                while let Ok((mut stream, _)) = listener.accept().await {
                    accepted.fetch_add(1, Ordering::SeqCst);
                    let behaviour = behaviour.clone();
                    let count = count.clone();
                    tokio::spawn(async move {
                        let mut served = 0;
                        while read_request(&mut stream).await.is_some() {
                            count.fetch_add(1, Ordering::SeqCst);
                            served += 1;
                            let (status, body, keep) = match &behaviour {
                                Behaviour::Answer(status, body) => (*status, body.clone(), false),
                                Behaviour::KeepAlive => (200, OK.as_bytes().to_vec(), true),
                                Behaviour::KeepOnce if served == 1 => {
                                    (200, OK.as_bytes().to_vec(), true)
                                }
                                Behaviour::Drop | Behaviour::KeepOnce => break,
                            };
                            let head = format!(
                                "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n{}\r\n",
                                body.len(),
                                if keep { "" } else { "connection: close\r\n" }
                            );
                            let _ = stream.write_all(head.as_bytes()).await;
                            let _ = stream.write_all(&body).await;
                            if !keep {
                                break;
                            }
                        }
                        let _ = stream.shutdown().await;
                    });
                }
            });
            Self {
                url,
                requests,
                connections,
            }
        }

        fn requests(&self) -> usize {
            self.requests.load(Ordering::SeqCst)
        }

        fn connections(&self) -> usize {
            self.connections.load(Ordering::SeqCst)
        }
    }

    /// Reads one request (head and `content-length` body); `None` at EOF.
    async fn read_request(stream: &mut TcpStream) -> Option<()> {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap());
        while buf.len() < head_end + length {
            let n = stream.read(&mut chunk).await.ok()?;
            if n == 0 {
                return None;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        Some(())
    }

    /// A loopback URL where nothing listens: connections are refused.
    fn refused_url() -> String {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    }

    const OK: &str = r#"{"ok":true}"#;

    async fn get(client: &Client) -> Result<Answer, ApiError> {
        client
            .send_raw(Method::GET, "/v1/status", None, Duration::from_secs(5))
            .await
    }

    async fn post(client: &Client) -> Result<Answer, ApiError> {
        client
            .send_raw(
                Method::POST,
                "/v1/enrolment-tokens",
                Some(("application/json", b"{}".to_vec())),
                Duration::from_secs(5),
            )
            .await
    }

    #[tokio::test]
    async fn a_refused_manager_is_skipped_for_any_request() {
        let live = Server::start(Behaviour::Answer(200, OK.into())).await;
        let client = Client::new(&format!("{},{}", refused_url(), live.url), None).unwrap();
        let answer = get(&client).await.unwrap();
        assert_eq!(answer.status, StatusCode::OK);
        assert_eq!(answer.body, OK.as_bytes());
        // Nothing reached the refused one: even a POST may go on.
        let fresh = Client::new(&format!("{},{}", refused_url(), live.url), None).unwrap();
        assert_eq!(post(&fresh).await.unwrap().status, StatusCode::OK);
        assert_eq!(live.requests(), 2);
    }

    #[tokio::test]
    async fn a_503_moves_a_repeatable_request_on_and_the_client_stays_where_it_answered() {
        let busy = Server::start(Behaviour::Answer(
            503,
            br#"{"error":"store unavailable"}"#.into(),
        ))
        .await;
        let live = Server::start(Behaviour::Answer(200, OK.into())).await;
        let client = Client::new(&format!("{},{}", busy.url, live.url), None).unwrap();
        // A POST may have done something: the 503 is the answer.
        let answer = post(&client).await.unwrap();
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!((busy.requests(), live.requests()), (1, 0));
        // A GET goes on to the next manager...
        assert_eq!(get(&client).await.unwrap().status, StatusCode::OK);
        assert_eq!((busy.requests(), live.requests()), (2, 1));
        // ...which every clone asks first from now on.
        let clone = client.clone();
        assert_eq!(get(&clone).await.unwrap().status, StatusCode::OK);
        assert_eq!(post(&client).await.unwrap().status, StatusCode::OK);
        assert_eq!((busy.requests(), live.requests()), (2, 3));
    }

    #[tokio::test]
    async fn a_connection_dropped_before_the_answer_moves_only_a_repeatable_request_on() {
        let dropping = Server::start(Behaviour::Drop).await;
        let live = Server::start(Behaviour::Answer(200, OK.into())).await;
        let client = Client::new(&format!("{},{}", dropping.url, live.url), None).unwrap();
        let e = post(&client).await.unwrap_err();
        assert!(matches!(e, ApiError::Connect(_)), "{e:?}");
        assert!(
            e.to_string().contains(&dropping.url),
            "names the manager: {e}"
        );
        assert_eq!((dropping.requests(), live.requests()), (1, 0));
        assert_eq!(get(&client).await.unwrap().status, StatusCode::OK);
        assert_eq!((dropping.requests(), live.requests()), (2, 1));
    }

    #[tokio::test]
    async fn enrolment_goes_on_after_a_503() {
        let busy = Server::start(Behaviour::Answer(
            503,
            br#"{"error":"store unavailable"}"#.into(),
        ))
        .await;
        let response = EnrolResponse {
            subject: Subject::Gateway(GatewayId::new("gw-a").unwrap()),
            credential: "nmg_test".into(),
        };
        let live = Server::start(Behaviour::Answer(
            200,
            serde_json::to_vec(&response).unwrap(),
        ))
        .await;
        let client = Client::new(&format!("{},{}", busy.url, live.url), None).unwrap();
        let request = EnrolRequest {
            token: "t".into(),
            public_key: "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
                .parse()
                .unwrap(),
            subject: None,
        };
        let enrolled = client.enrol(&request).await.unwrap();
        assert_eq!(enrolled.credential, "nmg_test");
        assert_eq!((busy.requests(), live.requests()), (1, 1));
    }

    #[tokio::test]
    async fn when_no_manager_answers_the_last_failure_is_returned() {
        let (first, last) = (refused_url(), refused_url());
        let client = Client::new(&format!("{first},{last}"), None).unwrap();
        let e = get(&client).await.unwrap_err();
        assert!(matches!(e, ApiError::Connect(_)), "{e:?}");
        assert!(e.to_string().contains(&last), "{e}");
        // Two 503s: the last answer is the call's.
        let a = Server::start(Behaviour::Answer(503, b"{}".to_vec())).await;
        let b = Server::start(Behaviour::Answer(503, b"{}".to_vec())).await;
        let client = Client::new(&format!("{},{}", a.url, b.url), None).unwrap();
        assert_eq!(
            get(&client).await.unwrap().status,
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!((a.requests(), b.requests()), (1, 1));
    }

    #[tokio::test]
    async fn connections_are_kept_and_shared_by_clones() {
        let server = Server::start(Behaviour::KeepAlive).await;
        let client = Client::new(&server.url, None).unwrap();
        let clone = client.clone();
        for c in [&client, &clone, &client] {
            assert_eq!(get(c).await.unwrap().status, StatusCode::OK);
        }
        assert_eq!(post(&clone).await.unwrap().status, StatusCode::OK);
        assert_eq!((server.requests(), server.connections()), (4, 1));
    }

    #[tokio::test]
    async fn a_kept_connection_closed_under_a_repeatable_request_is_replaced() {
        let server = Server::start(Behaviour::KeepOnce).await;
        let client = Client::new(&server.url, None).unwrap();
        assert_eq!(get(&client).await.unwrap().status, StatusCode::OK);
        // The kept connection is closed as the request arrives: a GET is sent
        // again on a new connection, to the same (only) manager.
        assert_eq!(get(&client).await.unwrap().status, StatusCode::OK);
        assert_eq!((server.requests(), server.connections()), (3, 2));
        // A POST may have been taken: the same closing is its answer.
        let e = post(&client).await.unwrap_err();
        assert!(matches!(e, ApiError::Connect(_)), "{e:?}");
        assert_eq!((server.requests(), server.connections()), (4, 2));
    }

    #[tokio::test]
    async fn a_host_name_is_resolved_when_connecting() {
        // Each address `localhost` resolves to is a target (127.0.0.1, and ::1
        // where it resolves so, with nothing listening there): the server on
        // 127.0.0.1 answers whichever comes first.
        let live = Server::start(Behaviour::Answer(200, OK.into())).await;
        let port = live.url.rsplit(':').next().unwrap();
        let client = Client::new(&format!("http://localhost:{port}"), None).unwrap();
        assert_eq!(get(&client).await.unwrap().status, StatusCode::OK);
    }
}
