//! The HTTP API (axum). Every error is `{"error": ...}` with a 4xx/5xx status;
//! a refused body changes nothing.
//!
//! Every handler authenticates from the headers before it reads a body, reads at
//! most its route's limit within the body timeout, and runs store and compile work
//! on blocking threads: an unauthenticated client can make the manager hold no
//! more than a small enrolment body, and no request stalls the async workers.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::QueryRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use http_body_util::BodyExt as _;
use nanami_api::wire::{
    CredentialKind, EnrolRequest, EnrolResponse, ErrorBody, GatewayDesired, GatewayStatus,
    ObservedRecord, ObservedReport, RegionView, Subject, TokenRequest, TokenResponse,
    TopologyResponse, WorkspaceView,
};
use nanami_control::{authorize, Action, Decision, Target};
use nanami_model::{Document, GatewayExplanation, GatewayId, NodeConfig, NodeExplanation, NodeId};
use serde::de::DeserializeOwned;
use tracing::{error, info, warn};

use crate::auth;
use crate::history::MovementRecord;
use crate::manager::{now_ms, Manager, ManagerError, Writer, MAX_TOKEN_TTL};
use crate::openapi::{BadRequest, BodyLimits, NotFound, Refusals, Unavailable, UriTooLong};

/// Longest long-poll a client may ask for; longer waits are cut to this (under
/// common proxy idle timeouts of 60 s).
pub const MAX_WAIT: Duration = Duration::from_secs(55);

/// Default enrolment token lifetime.
pub const DEFAULT_TOKEN_TTL: u64 = 3600;

/// The largest topology document accepted (the control credential only).
const MAX_TOPOLOGY_BODY: usize = nanami_model::doc::MAX_DOCUMENT_BYTES;

/// The largest observed report accepted (a gateway credential only): room for the
/// state and telemetry of tens of thousands of peers.
const MAX_REPORT_BODY: usize = 16 << 20;

/// The largest small request body: enrolment (which needs no credential) and
/// token requests.
const MAX_SMALL_BODY: usize = 64 << 10;

/// The longest request target accepted; a longer one gets a JSON 414.
const MAX_URI_BYTES: usize = 8 << 10;

/// An error answer.
#[derive(Debug)]
pub struct ApiErr {
    pub(crate) status: StatusCode,
    pub(crate) body: ErrorBody,
}

impl ApiErr {
    pub(crate) fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                error: error.into(),
                issues: Vec::new(),
                current_revision: None,
            },
        }
    }
}

impl IntoResponse for ApiErr {
    fn into_response(self) -> Response {
        (self.status, Json(self.body)).into_response()
    }
}

impl From<ManagerError> for ApiErr {
    fn from(e: ManagerError) -> Self {
        match e {
            ManagerError::InvalidTopology { message, issues } => Self {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                body: ErrorBody {
                    error: format!("invalid topology: {message}"),
                    issues,
                    current_revision: None,
                },
            },
            ManagerError::NotFound(m) => Self::new(StatusCode::NOT_FOUND, m),
            ManagerError::PreconditionFailed { message, current } => Self {
                status: StatusCode::PRECONDITION_FAILED,
                body: ErrorBody {
                    error: message,
                    issues: Vec::new(),
                    current_revision: current,
                },
            },
            ManagerError::Store(e) => {
                warn!(error = %e, "store failure");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store unavailable, retry later",
                )
            }
            ManagerError::Unknown(what) => Self::new(
                StatusCode::NOT_FOUND,
                format!("{what} is not in the topology"),
            ),
            ManagerError::Compile(m) => Self::new(StatusCode::CONFLICT, m),
            ManagerError::BadRequest(m) => Self::new(StatusCode::BAD_REQUEST, m),
            e @ ManagerError::EnrolmentRefused => {
                Self::new(StatusCode::UNAUTHORIZED, e.to_string())
            }
            e @ ManagerError::WrongSubject { .. } => {
                Self::new(StatusCode::FORBIDDEN, e.to_string())
            }
        }
    }
}

/// Limits the HTTP layer applies to every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpConfig {
    /// How long a client may take to send a request body once its headers are in.
    pub body_timeout: Duration,
    /// Whether `/metrics` has the per-peer series (they grow with the clients).
    pub per_peer_metrics: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            body_timeout: Duration::from_secs(30),
            per_peer_metrics: false,
        }
    }
}

/// The handlers' state.
#[derive(Debug, Clone)]
pub(crate) struct App {
    pub(crate) manager: Arc<Manager>,
    pub(crate) config: HttpConfig,
}

impl std::ops::Deref for App {
    type Target = Manager;
    fn deref(&self) -> &Manager {
        &self.manager
    }
}

/// Runs `f` on a blocking thread (store and compile work never runs on the async
/// workers).
pub(crate) async fn blocking<T, F>(app: &App, f: F) -> Result<T, ApiErr>
where
    T: Send + 'static,
    F: FnOnce(&Manager) -> Result<T, ManagerError> + Send + 'static,
{
    let manager = app.manager.clone();
    match tokio::task::spawn_blocking(move || f(&manager)).await {
        Ok(result) => result.map_err(ApiErr::from),
        Err(e) => {
            error!(error = %e, "bug: a request's task failed");
            Err(ApiErr::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal error",
            ))
        }
    }
}

pub(crate) fn unauthorized(app: &App) -> ApiErr {
    app.counters.auth_refused.fetch_add(1, Ordering::Relaxed);
    ApiErr::new(StatusCode::UNAUTHORIZED, "missing or unknown credential")
}

pub(crate) fn forbidden(app: &App) -> ApiErr {
    app.counters.auth_refused.fetch_add(1, Ordering::Relaxed);
    ApiErr::new(StatusCode::FORBIDDEN, "this credential may not do that")
}

/// Who the request's bearer credential is, with the credential's id.
pub(crate) async fn authenticate(app: &App, headers: &HeaderMap) -> Result<Writer, ApiErr> {
    let credential = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(auth::bearer);
    authenticate_credential(app, credential).await
}

/// Who `credential` is, with the credential's id: 401 when there is none or the
/// store does not know it.
pub(crate) async fn authenticate_credential(
    app: &App,
    credential: Option<&str>,
) -> Result<Writer, ApiErr> {
    let digest = auth::digest(credential.ok_or_else(|| unauthorized(app))?);
    let found = blocking(app, move |m| Ok(m.store().principal(&digest)?)).await?;
    match found {
        Some((principal, stored)) if auth::same(&stored, &digest) => Ok(Writer {
            principal,
            credential_id: auth::credential_id(&digest),
        }),
        Some(_) | None => Err(unauthorized(app)),
    }
}

/// The answer a hidden or missing target gets: the same words either way.
pub(crate) fn not_found(what: impl std::fmt::Display) -> ApiErr {
    ApiErr::new(StatusCode::NOT_FOUND, format!("{what} does not exist"))
}

/// Applies the authorization table (see `nanami_control::authz`): `Ok` to go
/// ahead, 403, or for a hidden target the 404 `what` would get if it were missing.
pub(crate) fn authorized(
    app: &App,
    caller: &Writer,
    action: Action,
    target: Target<'_>,
    what: impl std::fmt::Display,
) -> Result<(), ApiErr> {
    match authorize(&caller.principal, action, target) {
        Decision::Allow => Ok(()),
        Decision::Forbidden => Err(forbidden(app)),
        Decision::NotFound => Err(not_found(what)),
    }
}

/// Authenticates and authorizes an action on the platform target.
async fn platform(app: &App, headers: &HeaderMap, action: Action) -> Result<Writer, ApiErr> {
    let caller = authenticate(app, headers).await?;
    authorized(app, &caller, action, Target::Platform, "this")?;
    Ok(caller)
}

pub(crate) fn bad_request(app: &App, message: impl Into<String>) -> ApiErr {
    app.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
    ApiErr::new(StatusCode::BAD_REQUEST, message)
}

fn too_large(app: &App, limit: usize) -> ApiErr {
    app.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
    ApiErr::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the body is larger than this request's limit of {limit} bytes"),
    )
}

/// Reads a request body of at most `limit` bytes within the body timeout. Call it
/// only after the request is authenticated (or, for enrolment, with a small
/// limit): nothing is buffered before.
pub(crate) async fn read_body(
    app: &App,
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<Bytes, ApiErr> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > u64::try_from(limit).unwrap_or(u64::MAX)) {
        return Err(too_large(app, limit));
    }
    let read = async {
        let mut body = body;
        let mut buf: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| bad_request(app, format!("reading the body: {e}")))?;
            if let Ok(data) = frame.into_data() {
                if buf.len() + data.len() > limit {
                    return Err(too_large(app, limit));
                }
                buf.extend_from_slice(&data);
            }
        }
        Ok(Bytes::from(buf))
    };
    match tokio::time::timeout(app.config.body_timeout, read).await {
        Ok(result) => result,
        Err(_) => {
            app.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
            Err(ApiErr::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {} s",
                    app.config.body_timeout.as_secs_f64()
                ),
            ))
        }
    }
}

/// axum's `Path`, with a path it cannot read (invalid UTF-8 after
/// percent-decoding) answered as every other bad request: the JSON 400, not
/// axum's plain-text one.
#[derive(Debug)]
pub(crate) struct PathOf<T>(pub(crate) T);

impl<T> FromRequestParts<App> for PathOf<T>
where
    T: DeserializeOwned + Send,
{
    type Rejection = ApiErr;

    async fn from_request_parts(parts: &mut Parts, app: &App) -> Result<Self, ApiErr> {
        match Path::<T>::from_request_parts(parts, app).await {
            Ok(Path(value)) => Ok(Self(value)),
            Err(e) => Err(bad_request(app, e.body_text())),
        }
    }
}

fn parse_json<T: DeserializeOwned>(app: &App, body: &[u8]) -> Result<T, ApiErr> {
    serde_json::from_slice(body).map_err(|e| bad_request(app, format!("bad JSON body: {e}")))
}

fn gateway_id(app: &App, text: String) -> Result<GatewayId, ApiErr> {
    GatewayId::new(text).map_err(|e| bad_request(app, format!("bad gateway id: {e}")))
}

fn node_id(app: &App, text: String) -> Result<NodeId, ApiErr> {
    NodeId::new(text).map_err(|e| bad_request(app, format!("bad node id: {e}")))
}

pub(crate) fn json_bytes(body: Vec<u8>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// Refuses request targets longer than [`MAX_URI_BYTES`] with the JSON error.
async fn limit_uri(request: Request, next: Next) -> Response {
    let len = request
        .uri()
        .path_and_query()
        .map_or(0, |p| p.as_str().len());
    if len > MAX_URI_BYTES {
        return ApiErr::new(
            StatusCode::URI_TOO_LONG,
            format!("the request target is longer than {MAX_URI_BYTES} bytes"),
        )
        .into_response();
    }
    next.run(request).await
}

/// The router of the whole API.
pub fn router(manager: Arc<Manager>, config: HttpConfig) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi_json))
        .route("/v1/enrol", post(enrol))
        .route("/v1/enrolment-tokens", post(create_token))
        .route("/v1/topology", put(put_topology).get(get_topology))
        .route("/v1/status", get(status))
        .route("/v1/gateways/{id}/desired", get(desired))
        .route(
            "/v1/gateways/{id}/observed",
            put(put_observed).get(get_observed),
        )
        .route("/v1/nodes/{id}/config", get(node_config))
        .route("/v1/oversight/regions", get(oversight_regions))
        .route("/v1/oversight/workspaces", get(oversight_workspaces))
        .route("/v1/oversight/gateways", get(oversight_gateways))
        .route("/v1/oversight/nodes/{id}/explain", get(explain_node))
        .route("/v1/oversight/gateways/{id}/explain", get(explain_gateway))
        .route("/v1/oversight/nodes/{id}/movements", get(node_movements))
        .merge(crate::objects::routes())
        .merge(crate::ui::routes())
        .fallback(|| async { ApiErr::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiErr::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
        })
        // Handlers read their bodies themselves, after authentication.
        .layer(DefaultBodyLimit::disable())
        .layer(axum::middleware::from_fn(limit_uri))
        .with_state(App { manager, config })
}

/// A router with `/metrics` alone and no credential, for a separate listen
/// address that only the monitoring system reaches (`--metrics-listen`).
pub fn metrics_router(manager: Arc<Manager>, config: HttpConfig) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(|State(app): State<App>| async move { metrics_response(&app) }),
        )
        .fallback(|| async { ApiErr::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(App { manager, config })
}

/// Liveness: `ok` while the process serves requests.
#[utoipa::path(
    get,
    path = "/healthz",
    tag = "service",
    responses(
        (status = 200, description = "The manager serves requests.", body = String, content_type = "text/plain"),
        UriTooLong,
    )
)]
pub(crate) async fn healthz() -> &'static str {
    "ok\n"
}

/// This document: the API's OpenAPI description, generated from its wire types
/// and handlers.
#[utoipa::path(
    get,
    path = "/openapi.json",
    tag = "service",
    responses(
        (status = 200, description = "The OpenAPI document.", body = Object, content_type = "application/json"),
        UriTooLong,
    )
)]
pub(crate) async fn openapi_json() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        crate::openapi::document(),
    )
        .into_response()
}

/// Trades a one-time enrolment token and a public key for a per-machine
/// credential.
///
/// No credential: the token in the body is the authority. The machine's private
/// key never leaves it; only the public key travels. When `subject` is given, a
/// token for anyone else is refused before it is spent.
#[utoipa::path(
    post,
    path = "/v1/enrol",
    tag = "enrolment",
    request_body = EnrolRequest,
    responses(
        (status = 200, description = "The credential (shown once; only its digest is stored).", body = EnrolResponse),
        BadRequest,
        (status = 401, description = "The token is unknown, spent or expired.", body = ErrorBody),
        (status = 403, description = "The token is for another subject than the one named.", body = ErrorBody),
        BodyLimits,
        UriTooLong,
        Unavailable,
    )
)]
pub(crate) async fn enrol(
    State(app): State<App>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<EnrolResponse>, ApiErr> {
    let body = read_body(&app, &headers, body, MAX_SMALL_BODY).await?;
    let request: EnrolRequest = parse_json(&app, &body)?;
    let key = request.public_key;
    let result = blocking(&app, move |m| {
        m.enrol(&request.token, request.public_key, request.subject.as_ref())
    })
    .await;
    match result {
        Ok(response) => {
            app.counters.enrolments.fetch_add(1, Ordering::Relaxed);
            info!(subject = %response.subject, public_key = %key, "enrolled");
            Ok(Json(response))
        }
        Err(e) => {
            app.counters
                .enrolments_refused
                .fetch_add(1, Ordering::Relaxed);
            warn!(public_key = %key, error = %e.body.error, "enrolment refused");
            Err(e)
        }
    }
}

/// Mints a one-time enrolment token for a gateway or a node.
///
/// Credential: the platform, or the subject's workspace (404 for another
/// workspace's gateway or node). `ttl_seconds` is 1 s to 30 days (one hour when
/// absent).
#[utoipa::path(
    post,
    path = "/v1/enrolment-tokens",
    tag = "enrolment",
    request_body = TokenRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The token (shown once; only its digest is stored).", body = TokenResponse),
        BadRequest,
        Refusals,
        BodyLimits,
        NotFound,
    )
)]
pub(crate) async fn create_token(
    State(app): State<App>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<TokenResponse>, ApiErr> {
    let caller = authenticate(&app, &headers).await?;
    let body = read_body(&app, &headers, body, MAX_SMALL_BODY).await?;
    let request: TokenRequest = parse_json(&app, &body)?;
    match &request.subject {
        Subject::Gateway(id) => {
            let ws = app.gateway_workspace(id);
            authorized(
                &app,
                &caller,
                Action::MintToken,
                Target::Gateway(id, ws.as_ref()),
                format_args!("gateway {id}"),
            )?;
        }
        Subject::Node(id) => {
            let ws = app.node_workspace(id);
            authorized(
                &app,
                &caller,
                Action::MintToken,
                Target::Node(id, ws.as_ref()),
                format_args!("node {id}"),
            )?;
        }
    }
    let ttl = request.ttl_seconds.unwrap_or(DEFAULT_TOKEN_TTL);
    let response = blocking(&app, move |m| issue_token(m, &request.subject, ttl)).await?;
    Ok(Json(response))
}

/// Mints an enrolment token for `subject`, valid for `ttl` seconds (1 s to
/// [`MAX_TOKEN_TTL`]).
pub fn issue_token(
    app: &Manager,
    subject: &Subject,
    ttl: u64,
) -> Result<TokenResponse, ManagerError> {
    if !(1..=MAX_TOKEN_TTL).contains(&ttl) {
        return Err(ManagerError::BadRequest(format!(
            "ttl_seconds: {ttl} is outside 1..={MAX_TOKEN_TTL} (30 days)"
        )));
    }
    let token = auth::generate(CredentialKind::Enrolment);
    let expires_at = now_ms() / 1000 + ttl;
    app.store()
        .add_token(&auth::digest(&token), subject, expires_at)?;
    info!(%subject, expires_at, "enrolment token issued");
    Ok(TokenResponse {
        token,
        subject: subject.clone(),
        expires_at,
    })
}

/// The two document formats `PUT /v1/topology` takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Json,
    Yaml,
}

/// The format named by a `Content-Type` (parameters such as `charset` ignored).
fn document_format(headers: &HeaderMap) -> Option<Format> {
    let value = headers.get(header::CONTENT_TYPE)?.to_str().ok()?;
    let mime = value.split(';').next()?.trim().to_ascii_lowercase();
    match mime.as_str() {
        "application/json" => Some(Format::Json),
        "application/yaml" | "application/x-yaml" | "text/yaml" | "text/x-yaml" => {
            Some(Format::Yaml)
        }
        _ => None,
    }
}

/// Replaces the whole topology document (platform credential).
///
/// The document is validated as a whole: an invalid one is refused with 422 and
/// every issue at its path, and nothing changes. The answer names each gateway
/// whose compiled state changed, with its new generation.
#[utoipa::path(
    put,
    path = "/v1/topology",
    tag = "topology",
    request_body(
        description = "The topology document, as JSON or YAML.",
        content(
            (Document = "application/json"),
            (Document = "application/yaml"),
        )
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Stored (the revision is unchanged when the document was identical).", body = TopologyResponse),
        BadRequest,
        Refusals,
        BodyLimits,
        (status = 409, description = "The document is valid but cannot be compiled.", body = ErrorBody),
        (status = 415, description = "`Content-Type` must be `application/json` or `application/yaml`.", body = ErrorBody),
        (status = 422, description = "The document is invalid (`issues` lists each problem at its path); nothing changed.", body = ErrorBody),
    )
)]
pub(crate) async fn put_topology(
    State(app): State<App>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiErr> {
    let caller = platform(&app, &headers, Action::ImportTopology).await?;
    let Some(format) = document_format(&headers) else {
        app.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
        return Err(ApiErr::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "Content-Type must be application/json or application/yaml",
        ));
    };
    let body = read_body(&app, &headers, body, MAX_TOPOLOGY_BODY).await?;
    let text =
        String::from_utf8(body.to_vec()).map_err(|_| bad_request(&app, "the body is not UTF-8"))?;
    let result = blocking(&app, move |m| {
        let document = match format {
            Format::Json => Document::from_json(&text),
            Format::Yaml => Document::from_yaml(&text),
        }
        .map_err(|e| ManagerError::InvalidTopology {
            message: e.to_string(),
            issues: Vec::new(),
        })?;
        let w = m.write(
            &caller,
            nanami_control::Edit::Import(document),
            &nanami_control::Precondition::Any,
        )?;
        Ok(TopologyResponse {
            revision: w.topology_revision,
            changed: w.changed,
        })
    })
    .await;
    match result {
        Ok(r) => Ok(Json(r).into_response()),
        Err(e) => {
            if e.status == StatusCode::UNPROCESSABLE_ENTITY {
                app.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
            }
            Err(e)
        }
    }
}

/// The topology document in force (platform or operator credential).
#[utoipa::path(
    get,
    path = "/v1/topology",
    tag = "topology",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The document.", body = Document),
        Refusals,
        (status = 404, description = "No topology yet.", body = ErrorBody),
    )
)]
pub(crate) async fn get_topology(
    State(app): State<App>,
    headers: HeaderMap,
) -> Result<Response, ApiErr> {
    platform(&app, &headers, Action::ExportTopology).await?;
    match blocking(&app, |m| {
        Ok(m.docs().map(|(_, d)| d.to_document().to_json()))
    })
    .await?
    {
        Some(Ok(json)) => Ok(json_bytes(json.into_bytes())),
        Some(Err(e)) => {
            error!(error = %e, "the topology cannot be exported");
            Err(ApiErr::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                e.to_string(),
            ))
        }
        None => Err(ApiErr::new(StatusCode::NOT_FOUND, "no topology yet")),
    }
}

/// Every gateway's status: liveness, convergence, peers and facts (platform or
/// operator credential).
#[utoipa::path(
    get,
    path = "/v1/status",
    tag = "oversight",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "One entry per gateway.", body = Vec<GatewayStatus>),
        Refusals,
    )
)]
pub(crate) async fn status(State(app): State<App>, headers: HeaderMap) -> Result<Response, ApiErr> {
    platform(&app, &headers, Action::ReadOversight).await?;
    Ok(Json(app.status()).into_response())
}

/// The query parameters of the long-polls, percent-decoded by axum's `Query`;
/// each route parses and checks the ones it takes (others are ignored).
#[derive(Debug, Default, serde::Deserialize)]
pub(crate) struct PollQuery {
    after: Option<String>,
    wait: Option<String>,
    format: Option<String>,
}

/// The query of a long-poll, or the JSON 400 when it cannot be decoded.
fn poll_query(
    app: &App,
    query: Result<Query<PollQuery>, QueryRejection>,
) -> Result<PollQuery, ApiErr> {
    query
        .map(|Query(q)| q)
        .map_err(|e| bad_request(app, format!("query: {}", e.body_text())))
}

/// Long-poll: a gateway's desired state once its generation exceeds `after`,
/// waiting up to `wait` seconds.
///
/// Credential: the gateway's own, the platform, an operator, or the gateway's
/// workspace (404 for another workspace's gateway). The body is `{generation,
/// state}`, with `health_targets` (per network, the addresses behind the gateway
/// it probes) when not empty, at the same generation; the `ETag` is the
/// manager's digest of that generation's content.
#[utoipa::path(
    get,
    path = "/v1/gateways/{id}/desired",
    tag = "gateways",
    params(
        ("id" = GatewayId, Path, description = "The gateway."),
        ("after" = Option<u64>, Query, description = "The generation the daemon has: answer only with a newer one."),
        ("wait" = Option<u64>, Query, maximum = 55, description = "Seconds to wait for a newer generation (longer waits are cut to 55)."),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The desired state.", body = GatewayDesired,
            headers(("ETag" = String, description = "The digest of this generation's content, quoted."))),
        (status = 204, description = "Nothing newer than `after` within `wait`, or no desired state yet."),
        BadRequest,
        Refusals,
        (status = 404, description = "Unknown gateway (or another workspace's).", body = ErrorBody),
    )
)]
pub(crate) async fn desired(
    State(app): State<App>,
    PathOf(id): PathOf<String>,
    query: Result<Query<PollQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiErr> {
    let id = gateway_id(&app, id)?;
    gateway_access(&app, &headers, &id, Action::ReadDesired).await?;
    let query = poll_query(&app, query)?;
    let after = match query.after.as_deref() {
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| bad_request(&app, "after: not a generation"))?,
        ),
        None => None,
    };
    let wait = wait_param(&app, &query)?;
    match app.wait_desired(&id, after, wait).await {
        Some(desired) => {
            let mut response = json_bytes(desired.body.to_vec());
            if let Ok(etag) = HeaderValue::from_str(&format!("\"{}\"", desired.digest)) {
                response.headers_mut().insert(header::ETAG, etag);
            }
            Ok(response)
        }
        None if app.has_gateway(&id) || after.is_some() => {
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        None => Err(ApiErr::new(
            StatusCode::NOT_FOUND,
            format!("gateway {id} has no desired state"),
        )),
    }
}

/// A gateway daemon's report: its reconciler status, observed state, telemetry,
/// facts and forwarding-path health (the gateway's own credential).
#[utoipa::path(
    put,
    path = "/v1/gateways/{id}/observed",
    tag = "gateways",
    params(("id" = GatewayId, Path, description = "The gateway.")),
    request_body = ObservedReport,
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Recorded."),
        BadRequest,
        Refusals,
        BodyLimits,
        NotFound,
    )
)]
pub(crate) async fn put_observed(
    State(app): State<App>,
    PathOf(id): PathOf<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiErr> {
    let id = gateway_id(&app, id)?;
    gateway_access(&app, &headers, &id, Action::ReportObserved).await?;
    let body = read_body(&app, &headers, body, MAX_REPORT_BODY).await?;
    let report: ObservedReport = parse_json(&app, &body)?;
    blocking(&app, move |m| m.put_observed(&id, report)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// A gateway's latest report, with the time it arrived.
///
/// Credential: the gateway's own, the platform, an operator, or the gateway's
/// workspace (404 for another workspace's gateway).
#[utoipa::path(
    get,
    path = "/v1/gateways/{id}/observed",
    tag = "gateways",
    params(("id" = GatewayId, Path, description = "The gateway.")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The latest report.", body = ObservedRecord),
        (status = 204, description = "No report yet."),
        BadRequest,
        Refusals,
        NotFound,
    )
)]
pub(crate) async fn get_observed(
    State(app): State<App>,
    PathOf(id): PathOf<String>,
    headers: HeaderMap,
) -> Result<Response, ApiErr> {
    let id = gateway_id(&app, id)?;
    gateway_access(&app, &headers, &id, Action::ReadDesired).await?;
    match app.observed(&id) {
        Some(record) => Ok(Json(record).into_response()),
        None => Ok(StatusCode::NO_CONTENT.into_response()),
    }
}

/// `wait=<seconds>`, cut to [`MAX_WAIT`]; zero when absent.
fn wait_param(app: &App, query: &PollQuery) -> Result<Duration, ApiErr> {
    Ok(match query.wait.as_deref() {
        Some(v) => Duration::from_secs(
            v.parse::<u64>()
                .map_err(|_| bad_request(app, "wait: not a number of seconds"))?,
        ),
        None => Duration::ZERO,
    }
    .min(MAX_WAIT))
}

/// The formats of a node's configuration (`format=`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, utoipa::ToSchema)]
#[schema(rename_all = "kebab-case")]
pub(crate) enum ConfigFormat {
    /// [`NodeConfig`] as JSON.
    Json,
    /// A `wg-quick(8)` file.
    WgQuick,
    /// A `wg(8)` `setconf` file.
    Wg,
}

/// The longest configuration version accepted in `after` (a SHA-256 in hex).
const MAX_VERSION_LEN: usize = 64;

/// A client's configuration under current health: JSON, or `format=wg-quick|wg`
/// text with a `<PRIVATE_KEY>` placeholder.
///
/// Credential: the node's own (from enrolment), the platform, an operator, or the
/// node's workspace (404 for another workspace's node). Every configuration answer
/// carries its version in the `ETag` header (quoted hex; the same version whatever
/// the format). With `after=<version>` the answer waits up to `wait` seconds for a
/// different configuration (health or topology changes), else 204.
#[utoipa::path(
    get,
    path = "/v1/nodes/{id}/config",
    tag = "nodes",
    params(
        ("id" = NodeId, Path, description = "The node."),
        ("format" = Option<ConfigFormat>, Query, description = "`json` (the default), `wg-quick` or `wg`."),
        ("after" = Option<String>, Query, pattern = "^[0-9a-f]{1,64}$", description = "The version the client has (the ETag it got, unquoted)."),
        ("wait" = Option<u64>, Query, maximum = 55, description = "Seconds to wait for a change (longer waits are cut to 55)."),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The configuration; its text with `format=wg-quick` or `wg`.",
            content(
                (NodeConfig = "application/json"),
                (String = "text/plain"),
            ),
            headers(("ETag" = String, description = "The configuration's version, quoted; pass it back unquoted as `after`."))),
        (status = 204, description = "Unchanged from `after` within `wait`."),
        BadRequest,
        Refusals,
        (status = 404, description = "Unknown node (or another workspace's).", body = ErrorBody),
        (status = 409, description = "The node is not an active client (disabled, revoked, pending, or a gateway's node).", body = ErrorBody),
    )
)]
pub(crate) async fn node_config(
    State(app): State<App>,
    PathOf(id): PathOf<String>,
    query: Result<Query<PollQuery>, QueryRejection>,
    headers: HeaderMap,
) -> Result<Response, ApiErr> {
    let id = node_id(&app, id)?;
    node_access(&app, &headers, &id, Action::ReadNodeConfig).await?;
    let query = poll_query(&app, query)?;
    let format = match query.format.as_deref() {
        None | Some("json") => ConfigFormat::Json,
        Some("wg-quick") => ConfigFormat::WgQuick,
        Some("wg") => ConfigFormat::Wg,
        Some(_) => return Err(bad_request(&app, "format: json, wg-quick or wg")),
    };
    let after = match query.after.as_deref() {
        Some(v) if v.len() <= MAX_VERSION_LEN && v.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(v)
        }
        Some(_) => return Err(bad_request(&app, "after: not a configuration version")),
        None => None,
    };
    let wait = wait_param(&app, &query)?;
    let Some((version, config)) = app.manager.wait_node_config(&id, after, wait).await? else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let etag = HeaderValue::from_str(&format!("\"{version}\""))
        .map_err(|_| ApiErr::new(StatusCode::INTERNAL_SERVER_ERROR, "bad version"))?;
    let mut response = match format {
        ConfigFormat::WgQuick => config.to_wg_quick(None).into_response(),
        ConfigFormat::Wg => config.to_wg(None).into_response(),
        ConfigFormat::Json => Json(config).into_response(),
    };
    response.headers_mut().insert(header::ETAG, etag);
    Ok(response)
}

/// Authenticates and authorizes `action` on gateway `id` (in its workspace).
async fn gateway_access(
    app: &App,
    headers: &HeaderMap,
    id: &GatewayId,
    action: Action,
) -> Result<Writer, ApiErr> {
    let caller = authenticate(app, headers).await?;
    let ws = app.gateway_workspace(id);
    authorized(
        app,
        &caller,
        action,
        Target::Gateway(id, ws.as_ref()),
        format_args!("gateway {id}"),
    )?;
    Ok(caller)
}

/// Authenticates and authorizes `action` on node `id` (in its workspace).
async fn node_access(
    app: &App,
    headers: &HeaderMap,
    id: &NodeId,
    action: Action,
) -> Result<Writer, ApiErr> {
    let caller = authenticate(app, headers).await?;
    let ws = app.node_workspace(id);
    authorized(
        app,
        &caller,
        action,
        Target::Node(id, ws.as_ref()),
        format_args!("node {id}"),
    )?;
    Ok(caller)
}

async fn operator_only(app: &App, headers: &HeaderMap) -> Result<(), ApiErr> {
    platform(app, headers, Action::ReadOversight)
        .await
        .map(drop)
}

/// Every region, the workspaces allowed in it and the gateways placed in it
/// (platform or operator credential).
#[utoipa::path(
    get,
    path = "/v1/oversight/regions",
    tag = "oversight",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "One entry per region.", body = Vec<RegionView>),
        Refusals,
    )
)]
pub(crate) async fn oversight_regions(
    State(app): State<App>,
    headers: HeaderMap,
) -> Result<Response, ApiErr> {
    operator_only(&app, &headers).await?;
    Ok(Json(app.regions()).into_response())
}

/// Every workspace with its tenant, regions, gateways and active nodes (platform
/// or operator credential).
#[utoipa::path(
    get,
    path = "/v1/oversight/workspaces",
    tag = "oversight",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "One entry per workspace.", body = Vec<WorkspaceView>),
        Refusals,
    )
)]
pub(crate) async fn oversight_workspaces(
    State(app): State<App>,
    headers: HeaderMap,
) -> Result<Response, ApiErr> {
    operator_only(&app, &headers).await?;
    Ok(Json(app.workspaces()).into_response())
}

/// Every gateway's status, as `/v1/status` (platform or operator credential).
#[utoipa::path(
    get,
    path = "/v1/oversight/gateways",
    tag = "oversight",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "One entry per gateway.", body = Vec<GatewayStatus>),
        Refusals,
    )
)]
pub(crate) async fn oversight_gateways(
    State(app): State<App>,
    headers: HeaderMap,
) -> Result<Response, ApiErr> {
    operator_only(&app, &headers).await?;
    Ok(Json(app.status()).into_response())
}

/// Why a client is on its gateways: the model's `NodeExplanation` under the
/// current topology and health.
///
/// Credential: the platform, an operator, or the node's workspace (404 for
/// another workspace's node).
#[utoipa::path(
    get,
    path = "/v1/oversight/nodes/{id}/explain",
    tag = "oversight",
    params(("id" = NodeId, Path, description = "The node.")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Each network's and the exit's gateway verdicts.", body = NodeExplanation),
        BadRequest,
        Refusals,
        NotFound,
        (status = 409, description = "The node is not an active client.", body = ErrorBody),
    )
)]
pub(crate) async fn explain_node(
    State(app): State<App>,
    PathOf(id): PathOf<String>,
    headers: HeaderMap,
) -> Result<Response, ApiErr> {
    let id = node_id(&app, id)?;
    node_access(&app, &headers, &id, Action::ReadContents).await?;
    let explanation = blocking(&app, move |m| m.explain_node(&id)).await?;
    Ok(Json(explanation).into_response())
}

/// A client's movement history: its recent changes of primary gateway per
/// network and for its exit, newest first, each with when, the revision, what
/// triggered it and why it moved (at most 32 per client, kept in the manager's
/// memory since it started).
///
/// Credential: the platform, an operator, or the node's workspace (404 for
/// another workspace's node).
#[utoipa::path(
    get,
    path = "/v1/oversight/nodes/{id}/movements",
    tag = "oversight",
    params(("id" = NodeId, Path, description = "The node.")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The node's movements, newest first.", body = Vec<MovementRecord>),
        BadRequest,
        Refusals,
        NotFound,
    )
)]
pub(crate) async fn node_movements(
    State(app): State<App>,
    PathOf(id): PathOf<String>,
    headers: HeaderMap,
) -> Result<Response, ApiErr> {
    let id = node_id(&app, id)?;
    node_access(&app, &headers, &id, Action::ReadContents).await?;
    Ok(Json(app.manager.movements(&id)?).into_response())
}

/// Which clients a gateway carries and why: the model's `GatewayExplanation`
/// under the current topology and health.
///
/// Credential: the platform, an operator, or the gateway's workspace (404 for
/// another workspace's gateway).
#[utoipa::path(
    get,
    path = "/v1/oversight/gateways/{id}/explain",
    tag = "oversight",
    params(("id" = GatewayId, Path, description = "The gateway.")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Each network's verdict and the clients carried.", body = GatewayExplanation),
        BadRequest,
        Refusals,
        NotFound,
    )
)]
pub(crate) async fn explain_gateway(
    State(app): State<App>,
    PathOf(id): PathOf<String>,
    headers: HeaderMap,
) -> Result<Response, ApiErr> {
    let id = gateway_id(&app, id)?;
    gateway_access(&app, &headers, &id, Action::ReadContents).await?;
    let explanation = blocking(&app, move |m| m.explain_gateway(&id)).await?;
    Ok(Json(explanation).into_response())
}

/// The Prometheus metrics: the operator or platform credential (give Prometheus
/// the operator credential as its bearer token, or serve metrics on their own
/// address with `--metrics-listen`).
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "service",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The Prometheus text exposition (version 0.0.4).", body = String, content_type = "text/plain"),
        Refusals,
    )
)]
pub(crate) async fn metrics(
    State(app): State<App>,
    headers: HeaderMap,
) -> Result<Response, ApiErr> {
    platform(&app, &headers, Action::ReadOversight).await?;
    Ok(metrics_response(&app))
}

/// The Prometheus text exposition of the manager's series (see [`crate::metrics`]).
fn metrics_response(app: &App) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(nanami_api::metrics::CONTENT_TYPE),
        )],
        crate::metrics::render(&app.manager, app.config.per_peer_metrics),
    )
        .into_response()
}
