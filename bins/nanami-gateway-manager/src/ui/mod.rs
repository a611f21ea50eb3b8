//! The operator's web pages: read-only, server-rendered HTML under `/ui` (no
//! JavaScript at all, so they work with it off), each a plain link to bookmark.
//!
//! - `/ui`: the summary, the region catalog × workspaces matrix (access, gateways
//!   placed, region state) and the workspaces;
//! - `/ui/gateways`: every gateway's liveness, path health, drain, generations,
//!   peers, newest handshake and traffic; `/ui/gateways/{id}`: one gateway with
//!   its verdict per network and the clients it carries and why;
//! - `/ui/workspaces/{id}`: a workspace's networks (each gateway's verdict for
//!   each), gateways, and clients with their placement;
//! - `/ui/nodes/{id}`: why a client is on its gateways, and its movement history.
//!
//! The pages need the operator (or platform) credential: sent as a bearer token,
//! or given once on `/ui/login`, which keeps it in an `HttpOnly`, `Secure`,
//! `SameSite=Strict` cookie scoped to `/ui`. A request without one gets the login
//! page (401), one with another kind of credential the denied page (403). Nothing
//! here changes the manager: the only forms are login and logout. Every answer
//! carries a strict content security policy (no script, styles from `/ui` only).

mod pages;
mod words;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use maud::Markup;
use nanami_control::{Action, Target};
use nanami_model::{GatewayId, NodeId, WorkspaceId};

use crate::auth;
use crate::http::{authenticate_credential, authorized, blocking, read_body, App};

/// The cookie that holds the credential given on the login page.
const COOKIE: &str = "nanami_session";

/// Most bytes of a login form (a credential is under 100).
const LOGIN_BODY_LIMIT: usize = 4096;

/// The pages' routes.
pub(crate) fn routes() -> Router<App> {
    Router::new()
        .route("/ui", get(overview))
        .route("/ui/", get(overview))
        .route("/ui/gateways", get(gateways))
        .route("/ui/gateways/{id}", get(gateway))
        .route("/ui/workspaces/{id}", get(workspace))
        .route("/ui/nodes/{id}", get(node))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/style.css", get(style))
        .route("/ui/favicon.svg", get(favicon))
        .route("/ui/{*rest}", get(missing))
}

/// An HTML answer with the pages' security headers.
fn html(status: StatusCode, markup: Markup) -> Response {
    let mut response = (status, markup.into_string()).into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    secure_headers(h);
    response
}

fn secure_headers(h: &mut HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
}

/// The credential of a request: its bearer token, else the login cookie.
fn credential(headers: &HeaderMap) -> Option<&str> {
    if let Some(token) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(auth::bearer)
    {
        return Some(token);
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE)?.strip_prefix('='))
        .filter(|v| !v.is_empty())
}

/// Lets an operator (or the platform) through; anyone else gets the login page
/// (no or an unknown credential) or the denied page (another kind).
async fn operator(app: &App, headers: &HeaderMap, here: &str) -> Result<(), Response> {
    let given = credential(headers);
    let caller = match authenticate_credential(app, given).await {
        Ok(caller) => caller,
        Err(e) if e.status == StatusCode::UNAUTHORIZED => {
            let problem = given.map(|_| "That credential is not known to this manager.");
            return Err(html(
                StatusCode::UNAUTHORIZED,
                pages::login(problem, Some(here)),
            ));
        }
        Err(e) => return Err(html(e.status, pages::error(e.status, &e.body.error))),
    };
    authorized(
        app,
        &caller,
        Action::ReadOversight,
        Target::Platform,
        "this",
    )
    .map_err(|_| {
        html(
            StatusCode::FORBIDDEN,
            pages::denied(caller.principal.kind()),
        )
    })
}

async fn overview(State(app): State<App>, headers: HeaderMap) -> Response {
    if let Err(page) = operator(&app, &headers, "/ui").await {
        return page;
    }
    let view = pages::Overview {
        summary: app.summary(),
        regions: app.regions(),
        workspaces: app.workspaces(),
        status: app.status(),
        has_topology: app.current().is_some(),
    };
    html(StatusCode::OK, pages::overview(&view))
}

async fn gateways(State(app): State<App>, headers: HeaderMap) -> Response {
    if let Err(page) = operator(&app, &headers, "/ui/gateways").await {
        return page;
    }
    let rows = pages::gateway_rows(&app, None);
    html(StatusCode::OK, pages::gateways(&rows))
}

async fn gateway(State(app): State<App>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if let Err(page) = operator(&app, &headers, &format!("/ui/gateways/{id}")).await {
        return page;
    }
    let Ok(id) = GatewayId::new(&id) else {
        return not_found(&format!("gateway {id:?}"));
    };
    let lookup = id.clone();
    let explained = match blocking(&app, move |m| Ok(m.explain_gateway(&lookup))).await {
        Ok(e) => e,
        Err(e) => return html(e.status, pages::error(e.status, &e.body.error)),
    };
    let rows = pages::gateway_rows(&app, Some(&id));
    match (rows.into_iter().next(), explained) {
        (Some(row), explained) => html(
            StatusCode::OK,
            pages::gateway(&row, explained.ok().as_ref()),
        ),
        (None, _) => not_found(&format!("gateway {id}")),
    }
}

async fn workspace(State(app): State<App>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if let Err(page) = operator(&app, &headers, &format!("/ui/workspaces/{id}")).await {
        return page;
    }
    let Ok(id) = WorkspaceId::new(&id) else {
        return not_found(&format!("workspace {id:?}"));
    };
    let Some((topology, health)) = app.current() else {
        return not_found(&format!("workspace {id}"));
    };
    if !topology.workspaces.contains_key(&id) {
        return not_found(&format!("workspace {id}"));
    }
    let rows = pages::gateway_rows(&app, None)
        .into_iter()
        .filter(|r| r.status.workspace.as_deref() == Some(id.as_str()))
        .collect::<Vec<_>>();
    // The assignment runs off the async workers.
    let built = blocking(&app, move |_| {
        Ok(pages::WorkspacePage::build(&topology, &health, &id, rows))
    })
    .await;
    match built {
        Ok(Some(page)) => html(StatusCode::OK, pages::workspace(&page)),
        Ok(None) => not_found("the workspace"),
        Err(e) => html(e.status, pages::error(e.status, &e.body.error)),
    }
}

async fn node(State(app): State<App>, Path(id): Path<String>, headers: HeaderMap) -> Response {
    if let Err(page) = operator(&app, &headers, &format!("/ui/nodes/{id}")).await {
        return page;
    }
    let Ok(id) = NodeId::new(&id) else {
        return not_found(&format!("node {id:?}"));
    };
    let Ok(history) = app.movements(&id) else {
        return not_found(&format!("node {id}"));
    };
    let lookup = id.clone();
    let explained = match blocking(&app, move |m| Ok(m.explain_node(&lookup))).await {
        Ok(e) => e,
        Err(e) => return html(e.status, pages::error(e.status, &e.body.error)),
    };
    let workspace = app.node_workspace(&id);
    html(
        StatusCode::OK,
        pages::node(&id, workspace.as_ref(), &explained, &history),
    )
}

async fn login_form() -> Response {
    html(StatusCode::OK, pages::login(None, None))
}

/// Checks the credential given in the form and keeps it in the cookie.
async fn login(State(app): State<App>, headers: HeaderMap, body: Body) -> Response {
    let body = match read_body(&app, &headers, body, LOGIN_BODY_LIMIT).await {
        Ok(b) => b,
        Err(e) => return html(e.status, pages::error(e.status, &e.body.error)),
    };
    let mut given = None;
    let mut next = None;
    for (k, v) in form_urlencoded::parse(&body) {
        match &*k {
            "credential" => given = Some(v.trim().to_owned()),
            "next" => next = Some(v.into_owned()),
            _ => {}
        }
    }
    let next = next.filter(|n| safe_next(n));
    let Some(given) = given.filter(|g| !g.is_empty()) else {
        return html(
            StatusCode::UNAUTHORIZED,
            pages::login(Some("Paste the operator credential."), next.as_deref()),
        );
    };
    let caller = match authenticate_credential(&app, Some(&given)).await {
        Ok(caller) => caller,
        Err(e) if e.status == StatusCode::UNAUTHORIZED => {
            return html(
                StatusCode::UNAUTHORIZED,
                pages::login(
                    Some("That credential is not known to this manager."),
                    next.as_deref(),
                ),
            )
        }
        Err(e) => return html(e.status, pages::error(e.status, &e.body.error)),
    };
    if authorized(
        &app,
        &caller,
        Action::ReadOversight,
        Target::Platform,
        "this",
    )
    .is_err()
    {
        return html(
            StatusCode::FORBIDDEN,
            pages::denied(caller.principal.kind()),
        );
    }
    // A credential is base64url behind a prefix: nothing to escape in a cookie.
    let Ok(cookie) = HeaderValue::from_str(&format!(
        "{COOKIE}={given}; Path=/ui; HttpOnly; Secure; SameSite=Strict"
    )) else {
        return html(
            StatusCode::UNAUTHORIZED,
            pages::login(
                Some("That credential is not known to this manager."),
                next.as_deref(),
            ),
        );
    };
    redirect(next.as_deref().unwrap_or("/ui"), Some(cookie))
}

/// Forgets the cookie.
async fn logout() -> Response {
    let cookie = HeaderValue::from_static(
        "nanami_session=; Path=/ui; HttpOnly; Secure; SameSite=Strict; Max-Age=0",
    );
    redirect("/ui/login", Some(cookie))
}

/// Where a login may send the browser back to: one of these pages only.
fn safe_next(next: &str) -> bool {
    (next == "/ui" || next.starts_with("/ui/"))
        && !next.contains("//")
        && !next.contains('\\')
        && next.bytes().all(|b| b.is_ascii_graphic())
}

fn redirect(to: &str, cookie: Option<HeaderValue>) -> Response {
    let mut response = StatusCode::SEE_OTHER.into_response();
    let h = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(to) {
        h.insert(header::LOCATION, location);
    }
    if let Some(cookie) = cookie {
        h.insert(header::SET_COOKIE, cookie);
    }
    secure_headers(h);
    response
}

fn not_found(what: &str) -> Response {
    html(
        StatusCode::NOT_FOUND,
        pages::error(
            StatusCode::NOT_FOUND,
            &format!("{what} is not in the topology"),
        ),
    )
}

async fn missing() -> Response {
    html(
        StatusCode::NOT_FOUND,
        pages::error(StatusCode::NOT_FOUND, "There is no such page."),
    )
}

async fn style() -> Response {
    asset(
        include_str!("style.css"),
        "text/css; charset=utf-8",
        "max-age=300",
    )
}

async fn favicon() -> Response {
    asset(
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 16 16"><circle cx="8" cy="8" r="7" fill="#1d2330"/><circle cx="8" cy="8" r="3" fill="#7fb2ff"/></svg>"##,
        "image/svg+xml",
        "max-age=86400",
    )
}

/// A static file of the pages (no credential: it says nothing).
fn asset(body: &'static str, content_type: &'static str, cache: &'static str) -> Response {
    let mut response = body.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_login_sends_back_only_to_these_pages() {
        assert!(safe_next("/ui"));
        assert!(safe_next("/ui/nodes/laptop-ana"));
        for bad in [
            "//evil.example/ui",
            "https://evil.example/ui",
            "/ui//evil.example",
            "/ui/\\evil",
            "/v1/topology",
            "/ui/a b",
            "/uix",
        ] {
            assert!(!safe_next(bad), "{bad}");
        }
    }

    #[test]
    fn the_credential_comes_from_the_bearer_token_or_the_cookie() {
        let mut h = HeaderMap::new();
        assert_eq!(credential(&h), None);
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("theme=dark; nanami_session=nmo_abc; x=1"),
        );
        assert_eq!(credential(&h), Some("nmo_abc"));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer nmc_xyz"),
        );
        assert_eq!(credential(&h), Some("nmc_xyz"));
        let mut empty = HeaderMap::new();
        empty.insert(header::COOKIE, HeaderValue::from_static("nanami_session="));
        assert_eq!(credential(&empty), None);
        let mut other = HeaderMap::new();
        other.insert(
            header::COOKIE,
            HeaderValue::from_static("nanami_sessionx=nmo_abc"),
        );
        assert_eq!(credential(&other), None);
    }
}
