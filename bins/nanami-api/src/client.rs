//! A small HTTP/1 client for the manager's API, over hyper, with TLS from
//! tokio-rustls. It keeps one idle connection for reuse (long-polls and reports of a
//! fleet of daemons would otherwise each pay a TLS handshake).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use nanami_model::{GatewayId, NodeConfig, NodeId};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tracing::debug;

use crate::tls::{client_config, TlsError};
use crate::wire::{
    EnrolRequest, EnrolResponse, ErrorBody, GatewayDesired, GatewayStatus, ObservedRecord,
    ObservedReport, RegionView, TokenRequest, TokenResponse, TopologyResponse, WorkspaceView,
};

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    /// The URL is not `http(s)://host:port`.
    #[error("bad manager URL {0:?}: expected http(s)://host:port")]
    Url(String),
    /// The TLS set-up (CA file) is unusable.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The manager could not be reached (connection refused, TLS handshake failed,
    /// connection dropped). Retry later.
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
    /// The HTTP status, when the manager answered with an error.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Self::Status { status, .. } => Some(*status),
            Self::Url(_) | Self::Tls(_) | Self::Connect(_) | Self::Timeout(_) | Self::Decode(_) => {
                None
            }
        }
    }
}

struct Target {
    host: String,
    port: u16,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
}

/// A client of one manager, with an optional bearer credential. Cloning shares the
/// target but not the idle connection.
pub struct Client {
    target: Arc<Target>,
    credential: Option<String>,
    idle: Mutex<Option<SendRequest<Full<Bytes>>>>,
    timeout: Duration,
}

impl Clone for Client {
    fn clone(&self) -> Self {
        Self {
            target: self.target.clone(),
            credential: self.credential.clone(),
            idle: Mutex::new(None),
            timeout: self.timeout,
        }
    }
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("host", &self.target.host)
            .field("port", &self.target.port)
            .field("tls", &self.target.tls.is_some())
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
    /// A client of `url` (`https://host:port` trusting the CA in `ca`, or
    /// `http://host:port` with `ca` `None`).
    pub fn new(url: &str, ca: Option<&Path>) -> Result<Self, ApiError> {
        let uri: http::Uri = url.parse().map_err(|_| ApiError::Url(url.into()))?;
        let host = uri
            .host()
            .ok_or_else(|| ApiError::Url(url.into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let tls = match (uri.scheme_str(), ca) {
            (Some("https"), Some(ca)) => {
                let config = client_config(ca)?;
                let name = rustls::pki_types::ServerName::try_from(host.clone())
                    .map_err(|_| ApiError::Url(url.into()))?;
                Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
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
            target: Arc::new(Target { host, port, tls }),
            credential: None,
            idle: Mutex::new(None),
            timeout: Duration::from_secs(30),
        })
    }

    /// The same client presenting `credential`.
    pub fn with_credential(mut self, credential: impl Into<String>) -> Self {
        self.credential = Some(credential.into());
        self
    }

    /// The timeout of calls other than long-polls (30 s by default).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The timeout of calls other than long-polls.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    async fn connect(&self) -> Result<SendRequest<Full<Bytes>>, ApiError> {
        let t = &self.target;
        let tcp = TcpStream::connect((t.host.as_str(), t.port))
            .await
            .map_err(|e| ApiError::Connect(format!("{}:{}: {e}", t.host, t.port)))?;
        let _ = tcp.set_nodelay(true);
        let connect_err = |e: hyper::Error| ApiError::Connect(e.to_string());
        match &t.tls {
            Some((connector, name)) => {
                let stream = connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| ApiError::Connect(format!("TLS: {e}")))?;
                let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(connect_err)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        debug!(error = %e, "connection closed");
                    }
                });
                Ok(send)
            }
            None => {
                let (send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
                    .await
                    .map_err(connect_err)?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        debug!(error = %e, "connection closed");
                    }
                });
                Ok(send)
            }
        }
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

    /// [`Client::send_raw`] with extra request headers.
    pub async fn send_with(
        &self,
        method: Method,
        path: &str,
        headers: &[(http::HeaderName, String)],
        body: Option<(&str, Vec<u8>)>,
        timeout: Duration,
    ) -> Result<Answer, ApiError> {
        let fut = async {
            let idle = self.idle.lock().await.take();
            let mut send = match idle {
                Some(s) if s.is_ready() => s,
                Some(_) | None => self.connect().await?,
            };
            let mut builder = Request::builder()
                .method(method)
                .uri(path)
                .header(http::header::HOST, self.target.host.as_str());
            if let Some(c) = &self.credential {
                builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {c}"));
            }
            for (name, value) in headers {
                builder = builder.header(name, value.as_str());
            }
            let request = match body {
                Some((content_type, bytes)) => builder
                    .header(http::header::CONTENT_TYPE, content_type)
                    .body(Full::new(Bytes::from(bytes))),
                None => builder.body(Full::new(Bytes::new())),
            }
            .map_err(|e| ApiError::Url(e.to_string()))?;
            send.ready()
                .await
                .map_err(|e| ApiError::Connect(e.to_string()))?;
            let response = send
                .send_request(request)
                .await
                .map_err(|e| ApiError::Connect(e.to_string()))?;
            let status = response.status();
            let (parts, body) = response.into_parts();
            let headers = parts.headers;
            let body = body
                .collect()
                .await
                .map_err(|e| ApiError::Connect(e.to_string()))?
                .to_bytes();
            *self.idle.lock().await = Some(send);
            Ok(Answer {
                status,
                headers,
                body,
            })
        };
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| ApiError::Timeout(timeout))?
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
        timeout: Duration,
    ) -> Result<Option<T>, ApiError> {
        let answer = self.send_raw(method, path, body, timeout).await?;
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
    ) -> Result<T, ApiError> {
        let bytes = serde_json::to_vec(body).map_err(|e| ApiError::Decode(e.to_string()))?;
        self.call(
            method,
            path,
            Some(("application/json", bytes)),
            self.timeout,
        )
        .await?
        .ok_or_else(|| ApiError::Decode("empty answer".into()))
    }

    /// `POST /v1/enrol`.
    pub async fn enrol(&self, request: &EnrolRequest) -> Result<EnrolResponse, ApiError> {
        self.json(Method::POST, "/v1/enrol", request).await
    }

    /// [`Client::enrol`], retried with backoff (200 ms doubling to 10 s) while the
    /// manager cannot be reached; an answer, even a refusal, ends it.
    pub async fn enrol_retrying(&self, request: &EnrolRequest) -> Result<EnrolResponse, ApiError> {
        let mut delay = Duration::from_millis(200);
        loop {
            match self.enrol(request).await {
                Err(e) if e.status().is_none() => {
                    tracing::warn!(error = %e, retry_in = ?delay, "manager unreachable; retrying enrolment");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                answer => return answer,
            }
        }
    }

    /// `POST /v1/enrolment-tokens` (control credential).
    pub async fn create_token(&self, request: &TokenRequest) -> Result<TokenResponse, ApiError> {
        self.json(Method::POST, "/v1/enrolment-tokens", request)
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
