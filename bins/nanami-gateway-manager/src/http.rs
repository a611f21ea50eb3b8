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
use axum::extract::{DefaultBodyLimit, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use http_body_util::BodyExt as _;
use nanami_api::wire::{
    CredentialKind, EnrolRequest, EnrolResponse, ErrorBody, ObservedReport, Subject, TokenRequest,
    TokenResponse, TopologyResponse,
};
use nanami_control::{authorize, Action, Decision, Target};
use nanami_model::{Document, GatewayId, NodeId};
use serde::de::DeserializeOwned;
use tracing::{error, info, warn};

use crate::auth;
use crate::manager::{now_ms, Manager, ManagerError, Writer, MAX_TOKEN_TTL};

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

static OPENAPI: &str = include_str!("openapi.json");

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
    manager: Arc<Manager>,
    config: HttpConfig,
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
        .and_then(auth::bearer)
        .ok_or_else(|| unauthorized(app))?;
    let digest = auth::digest(credential);
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
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route(
            "/openapi.json",
            get(|| async {
                (
                    [(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    )],
                    OPENAPI,
                )
            }),
        )
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
        .merge(crate::objects::routes())
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

async fn enrol(
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

async fn create_token(
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

async fn put_topology(
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

async fn get_topology(State(app): State<App>, headers: HeaderMap) -> Result<Response, ApiErr> {
    platform(&app, &headers, Action::ExportTopology).await?;
    match blocking(&app, |m| {
        Ok(m.docs().map(|(_, d)| d.to_document().to_json()))
    })
    .await?
    {
        Some(json) => Ok(json_bytes(json.into_bytes())),
        None => Err(ApiErr::new(StatusCode::NOT_FOUND, "no topology yet")),
    }
}

async fn status(State(app): State<App>, headers: HeaderMap) -> Result<Response, ApiErr> {
    platform(&app, &headers, Action::ReadOversight).await?;
    Ok(Json(app.status()).into_response())
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

async fn desired(
    State(app): State<App>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiErr> {
    let id = gateway_id(&app, id)?;
    gateway_access(&app, &headers, &id, Action::ReadDesired).await?;
    let after = match query_param(query.as_deref(), "after") {
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| bad_request(&app, "after: not a generation"))?,
        ),
        None => None,
    };
    let wait = wait_param(&app, query.as_deref())?;
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

async fn put_observed(
    State(app): State<App>,
    Path(id): Path<String>,
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

async fn get_observed(
    State(app): State<App>,
    Path(id): Path<String>,
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
fn wait_param(app: &App, query: Option<&str>) -> Result<Duration, ApiErr> {
    Ok(match query_param(query, "wait") {
        Some(v) => Duration::from_secs(
            v.parse::<u64>()
                .map_err(|_| bad_request(app, "wait: not a number of seconds"))?,
        ),
        None => Duration::ZERO,
    }
    .min(MAX_WAIT))
}

/// The longest configuration version accepted in `after` (a SHA-256 in hex).
const MAX_VERSION_LEN: usize = 64;

async fn node_config(
    State(app): State<App>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiErr> {
    let id = node_id(&app, id)?;
    node_access(&app, &headers, &id, Action::ReadNodeConfig).await?;
    let format = query_param(query.as_deref(), "format");
    if !matches!(format, None | Some("json" | "wg-quick" | "wg")) {
        return Err(bad_request(&app, "format: json, wg-quick or wg"));
    }
    let after = match query_param(query.as_deref(), "after") {
        Some(v) if v.len() <= MAX_VERSION_LEN && v.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Some(v)
        }
        Some(_) => return Err(bad_request(&app, "after: not a configuration version")),
        None => None,
    };
    let wait = wait_param(&app, query.as_deref())?;
    let Some((version, config)) = app.manager.wait_node_config(&id, after, wait).await? else {
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let etag = HeaderValue::from_str(&format!("\"{version}\""))
        .map_err(|_| ApiErr::new(StatusCode::INTERNAL_SERVER_ERROR, "bad version"))?;
    let mut response = match format {
        Some("wg-quick") => config.to_wg_quick(None).into_response(),
        Some("wg") => config.to_wg(None).into_response(),
        Some(_) | None => Json(config).into_response(),
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

async fn oversight_regions(State(app): State<App>, headers: HeaderMap) -> Result<Response, ApiErr> {
    operator_only(&app, &headers).await?;
    Ok(Json(app.regions()).into_response())
}

async fn oversight_workspaces(
    State(app): State<App>,
    headers: HeaderMap,
) -> Result<Response, ApiErr> {
    operator_only(&app, &headers).await?;
    Ok(Json(app.workspaces()).into_response())
}

async fn oversight_gateways(
    State(app): State<App>,
    headers: HeaderMap,
) -> Result<Response, ApiErr> {
    operator_only(&app, &headers).await?;
    Ok(Json(app.status()).into_response())
}

/// Why a client is on its gateways (operator credential): the model's
/// `NodeExplanation` under the current topology and health.
async fn explain_node(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiErr> {
    let id = node_id(&app, id)?;
    node_access(&app, &headers, &id, Action::ReadContents).await?;
    let explanation = blocking(&app, move |m| m.explain_node(&id)).await?;
    Ok(Json(explanation).into_response())
}

/// Which clients a gateway carries and why (operator credential): the model's
/// `GatewayExplanation` under the current topology and health.
async fn explain_gateway(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiErr> {
    let id = gateway_id(&app, id)?;
    gateway_access(&app, &headers, &id, Action::ReadContents).await?;
    let explanation = blocking(&app, move |m| m.explain_gateway(&id)).await?;
    Ok(Json(explanation).into_response())
}

/// `/metrics` on the API's address: the operator or control credential (give
/// Prometheus the operator credential as its bearer token, or serve metrics on
/// their own address with `--metrics-listen`).
async fn metrics(State(app): State<App>, headers: HeaderMap) -> Result<Response, ApiErr> {
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
