//! The HTTP API (axum). Every error is `{"error": ...}` with a 4xx/5xx status;
//! a refused body changes nothing.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, RawQuery, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use nanami_api::wire::{
    CredentialKind, EnrolRequest, EnrolResponse, ErrorBody, Liveness, ObservedReport, Subject,
    TokenRequest, TokenResponse,
};
use nanami_model::{GatewayId, NodeId};
use serde::de::DeserializeOwned;
use tracing::{info, warn};

use crate::auth;
use crate::manager::{now_ms, Manager, ManagerError};
use crate::store::{Principal, Redeemed};

/// Longest long-poll a client may ask for; longer waits are cut to this (under
/// common proxy idle timeouts of 60 s).
pub const MAX_WAIT: Duration = Duration::from_secs(55);

/// Default enrolment token lifetime.
pub const DEFAULT_TOKEN_TTL: u64 = 3600;

/// The largest body accepted: a topology document's limit.
const MAX_BODY: usize = nanami_model::doc::MAX_DOCUMENT_BYTES;

static OPENAPI: &str = include_str!("openapi.json");

/// An error answer.
#[derive(Debug)]
pub struct ApiErr {
    status: StatusCode,
    body: ErrorBody,
}

impl ApiErr {
    fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Self {
            status,
            body: ErrorBody {
                error: error.into(),
                issues: Vec::new(),
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
            ManagerError::BadReport(m) => Self::new(StatusCode::BAD_REQUEST, m),
        }
    }
}

type App = Arc<Manager>;

fn unauthorized(app: &App) -> ApiErr {
    app.counters.auth_refused.fetch_add(1, Ordering::Relaxed);
    ApiErr::new(StatusCode::UNAUTHORIZED, "missing or unknown credential")
}

fn forbidden(app: &App) -> ApiErr {
    app.counters.auth_refused.fetch_add(1, Ordering::Relaxed);
    ApiErr::new(StatusCode::FORBIDDEN, "this credential may not do that")
}

fn authenticate(app: &App, headers: &HeaderMap) -> Result<Principal, ApiErr> {
    let credential = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(auth::bearer)
        .ok_or_else(|| unauthorized(app))?;
    let digest = auth::digest(credential);
    match app.store().principal(&digest) {
        Ok(Some((principal, stored))) if auth::same(&stored, &digest) => Ok(principal),
        Ok(Some(_) | None) => Err(unauthorized(app)),
        Err(e) => Err(ManagerError::Store(e).into()),
    }
}

fn bad_request(app: &App, message: impl Into<String>) -> ApiErr {
    app.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
    ApiErr::new(StatusCode::BAD_REQUEST, message)
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

fn json_bytes(body: Vec<u8>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        body,
    )
        .into_response()
}

/// Limits the HTTP layer applies to every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpConfig {
    /// How long a client may take to send a request body once its headers are in.
    pub body_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            body_timeout: Duration::from_secs(30),
        }
    }
}

/// The router of the whole API.
pub fn router(manager: Arc<Manager>, config: HttpConfig) -> Router {
    let _ = config;
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
        .fallback(|| async { ApiErr::new(StatusCode::NOT_FOUND, "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiErr::new(StatusCode::METHOD_NOT_ALLOWED, "method not allowed here")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(manager)
}

async fn enrol(State(app): State<App>, body: Bytes) -> Result<Json<EnrolResponse>, ApiErr> {
    let request: EnrolRequest = parse_json(&app, &body)?;
    let key = request.public_key;
    let mut issued: Option<String> = None;
    let redeemed = if request
        .token
        .starts_with(CredentialKind::Enrolment.prefix())
    {
        app.store()
            .redeem_token(
                &auth::digest(&request.token),
                now_ms() / 1000,
                &key,
                &mut |subject| {
                    if !app.may_enrol(subject, &key) {
                        return None;
                    }
                    let credential = auth::generate(match subject {
                        Subject::Gateway(_) => CredentialKind::Gateway,
                        Subject::Node(_) => CredentialKind::Node,
                    });
                    let digest = auth::digest(&credential);
                    issued = Some(credential);
                    Some(digest)
                },
            )
            .map_err(ManagerError::Store)?
    } else {
        Redeemed::Refused
    };
    match (redeemed, issued) {
        (Redeemed::Enrolled(subject), Some(credential)) => {
            if let Subject::Gateway(g) = &subject {
                app.set_gateway_key(g, key);
            }
            app.counters.enrolments.fetch_add(1, Ordering::Relaxed);
            info!(%subject, public_key = %key, "enrolled");
            Ok(Json(EnrolResponse {
                subject,
                credential,
            }))
        }
        (Redeemed::Enrolled(_) | Redeemed::Refused, _) => {
            app.counters
                .enrolments_refused
                .fetch_add(1, Ordering::Relaxed);
            warn!(public_key = %key, "enrolment refused");
            Err(ApiErr::new(
                StatusCode::UNAUTHORIZED,
                "enrolment refused: the token is unknown, expired or used, or the key is not the node's",
            ))
        }
    }
}

async fn create_token(
    State(app): State<App>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<TokenResponse>, ApiErr> {
    match authenticate(&app, &headers)? {
        Principal::Control => {}
        Principal::Operator | Principal::Gateway(_) | Principal::Node(_) => {
            return Err(forbidden(&app))
        }
    }
    let request: TokenRequest = parse_json(&app, &body)?;
    let response = issue_token(
        &app,
        &request.subject,
        request.ttl_seconds.unwrap_or(DEFAULT_TOKEN_TTL),
    )?;
    Ok(Json(response))
}

/// Mints an enrolment token for `subject`, valid for `ttl` seconds.
pub fn issue_token(
    app: &Manager,
    subject: &Subject,
    ttl: u64,
) -> Result<TokenResponse, ManagerError> {
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

async fn put_topology(
    State(app): State<App>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiErr> {
    match authenticate(&app, &headers)? {
        Principal::Control => {}
        Principal::Operator | Principal::Gateway(_) | Principal::Node(_) => {
            return Err(forbidden(&app))
        }
    }
    let text =
        std::str::from_utf8(&body).map_err(|_| bad_request(&app, "the body is not UTF-8"))?;
    match app.put_topology_text(text) {
        Ok(r) => Ok(Json(r).into_response()),
        Err(e @ ManagerError::InvalidTopology { .. }) => {
            app.counters.bad_requests.fetch_add(1, Ordering::Relaxed);
            Err(e.into())
        }
        Err(e) => Err(e.into()),
    }
}

async fn get_topology(State(app): State<App>, headers: HeaderMap) -> Result<Response, ApiErr> {
    match authenticate(&app, &headers)? {
        Principal::Control => {}
        Principal::Operator | Principal::Gateway(_) | Principal::Node(_) => {
            return Err(forbidden(&app))
        }
    }
    match app.document() {
        Some((_, doc)) => Ok(json_bytes(doc.to_json().into_bytes())),
        None => Err(ApiErr::new(StatusCode::NOT_FOUND, "no topology yet")),
    }
}

fn may_read_all(principal: &Principal) -> bool {
    match principal {
        Principal::Control | Principal::Operator => true,
        Principal::Gateway(_) | Principal::Node(_) => false,
    }
}

async fn status(State(app): State<App>, headers: HeaderMap) -> Result<Response, ApiErr> {
    if !may_read_all(&authenticate(&app, &headers)?) {
        return Err(forbidden(&app));
    }
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
    let principal = authenticate(&app, &headers)?;
    let id = gateway_id(&app, id)?;
    match &principal {
        Principal::Gateway(own) if *own == id => {}
        Principal::Control => {}
        Principal::Gateway(_) | Principal::Operator | Principal::Node(_) => {
            return Err(forbidden(&app))
        }
    }
    let after = match query_param(query.as_deref(), "after") {
        Some(v) => Some(
            v.parse::<u64>()
                .map_err(|_| bad_request(&app, "after: not a generation"))?,
        ),
        None => None,
    };
    let wait = wait_param(&app, query.as_deref())?;
    match app.wait_desired(&id, after, wait).await {
        Some((_, body)) => Ok(json_bytes(body.to_vec())),
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
    body: Bytes,
) -> Result<Response, ApiErr> {
    let principal = authenticate(&app, &headers)?;
    let id = gateway_id(&app, id)?;
    match &principal {
        Principal::Gateway(own) if *own == id => {}
        Principal::Gateway(_) | Principal::Control | Principal::Operator | Principal::Node(_) => {
            return Err(forbidden(&app))
        }
    }
    let report: ObservedReport = parse_json(&app, &body)?;
    app.put_observed(&id, report)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn get_observed(
    State(app): State<App>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiErr> {
    let principal = authenticate(&app, &headers)?;
    let id = gateway_id(&app, id)?;
    match &principal {
        Principal::Gateway(own) if *own == id => {}
        Principal::Control | Principal::Operator => {}
        Principal::Gateway(_) | Principal::Node(_) => return Err(forbidden(&app)),
    }
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
    let principal = authenticate(&app, &headers)?;
    let id = node_id(&app, id)?;
    match &principal {
        Principal::Node(own) if *own == id => {}
        Principal::Control => {}
        Principal::Node(_) | Principal::Gateway(_) | Principal::Operator => {
            return Err(forbidden(&app))
        }
    }
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
    let Some((version, config)) = app.wait_node_config(&id, after, wait).await? else {
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

fn operator_only(app: &App, headers: &HeaderMap) -> Result<(), ApiErr> {
    match authenticate(app, headers)? {
        Principal::Operator => Ok(()),
        Principal::Control | Principal::Gateway(_) | Principal::Node(_) => Err(forbidden(app)),
    }
}

async fn oversight_regions(State(app): State<App>, headers: HeaderMap) -> Result<Response, ApiErr> {
    operator_only(&app, &headers)?;
    Ok(Json(app.regions()).into_response())
}

async fn oversight_workspaces(
    State(app): State<App>,
    headers: HeaderMap,
) -> Result<Response, ApiErr> {
    operator_only(&app, &headers)?;
    Ok(Json(app.workspaces()).into_response())
}

async fn oversight_gateways(
    State(app): State<App>,
    headers: HeaderMap,
) -> Result<Response, ApiErr> {
    operator_only(&app, &headers)?;
    Ok(Json(app.status()).into_response())
}

async fn metrics(State(app): State<App>) -> Response {
    use std::fmt::Write as _;
    let status = app.status();
    let online = status
        .iter()
        .filter(|s| s.health == Liveness::Online)
        .count();
    let converged = status
        .iter()
        .filter(|s| s.observed_generation == Some(s.desired_generation))
        .count();
    let c = &app.counters;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    };
    let n = |v: usize| u64::try_from(v).unwrap_or(u64::MAX);
    metric(
        "nanami_topology_revision",
        "gauge",
        "Topology revision in force.",
        app.revision(),
    );
    metric(
        "nanami_gateways",
        "gauge",
        "Gateways with a desired state.",
        n(status.len()),
    );
    metric(
        "nanami_gateways_online",
        "gauge",
        "Gateways reporting.",
        n(online),
    );
    metric(
        "nanami_gateways_offline",
        "gauge",
        "Gateways that missed too many reports.",
        n(status.len() - online),
    );
    metric(
        "nanami_gateway_paths_unhealthy",
        "gauge",
        "(gateway, network) pairs whose forwarding path is down while the gateway reports.",
        n(status.iter().map(|s| s.unhealthy_networks.len()).sum()),
    );
    metric(
        "nanami_gateways_converged",
        "gauge",
        "Gateways whose observed generation is the desired one.",
        n(converged),
    );
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    metric(
        "nanami_enrolments_total",
        "counter",
        "Successful enrolments.",
        load(&c.enrolments),
    );
    metric(
        "nanami_enrolments_refused_total",
        "counter",
        "Refused enrolments.",
        load(&c.enrolments_refused),
    );
    metric(
        "nanami_reports_total",
        "counter",
        "Observed reports accepted.",
        load(&c.reports),
    );
    metric(
        "nanami_desired_served_total",
        "counter",
        "Desired states served.",
        load(&c.desired_served),
    );
    metric(
        "nanami_auth_refused_total",
        "counter",
        "Requests refused with 401 or 403.",
        load(&c.auth_refused),
    );
    metric(
        "nanami_bad_requests_total",
        "counter",
        "Malformed bodies and parameters refused.",
        load(&c.bad_requests),
    );
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        out,
    )
        .into_response()
}
