//! The object API's HTTP wiring: regions and workspaces (platform scope),
//! networks, nodes and gateways (a workspace's scope), node lifecycle requests,
//! workspace credentials and the audit trail.
//!
//! Every object is served with its revision (body and `ETag`); every write takes
//! `If-Match: "<revision>"`, `If-Match: *` or `If-None-Match: *` and answers 412
//! with the current revision when it does not hold. Authorization is the table of
//! `nanami_control::authz`; the edits, revisions and audit entries are
//! `nanami_control`'s; the write itself is [`crate::manager::Manager::write`].

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use nanami_api::wire::{
    AuditPage, GatewayDoc, NetworkDoc, NodeDoc, RegionDoc, RotateKeyRequest, WorkspaceSpec,
    WriteResponse,
};
use nanami_control::object::{self as obj, ObjectKind, ObjectRef};
use nanami_control::{Action, Docs, Edit, Precondition, Principal, Target};
use nanami_model::doc::{part_from_json, UnknownField};
use nanami_model::WorkspaceId;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::http::{
    authenticate, authorized, bad_request, blocking, forbidden, not_found, read_body, ApiErr, App,
};
use crate::manager::Writer;

/// The largest object body accepted: a network, node or gateway is a few hundred
/// bytes; a workspace spec lists regions.
const MAX_OBJECT_BODY: usize = 1 << 20;

/// The most audit entries one page holds.
pub const MAX_AUDIT_PAGE: u32 = 1000;

/// The object API's routes (merged into the API router).
pub(crate) fn routes() -> Router<App> {
    use ObjectKind as K;
    let contents = |kind: ObjectKind| {
        (
            get(move |s: State<App>, Path(ws): Path<String>, h: HeaderMap| {
                list(s, h, kind, Some(ws))
            }),
            get(
                move |s: State<App>, Path((ws, id)): Path<(String, String)>, h: HeaderMap| {
                    get_one(s, h, ObjectRef::new(kind, Some(&ws), &id))
                },
            )
            .put(
                move |s: State<App>,
                      Path((ws, id)): Path<(String, String)>,
                      h: HeaderMap,
                      b: Body| {
                    put_one(s, h, ObjectRef::new(kind, Some(&ws), &id), b)
                },
            )
            .delete(
                move |s: State<App>, Path((ws, id)): Path<(String, String)>, h: HeaderMap| {
                    delete_one(s, h, ObjectRef::new(kind, Some(&ws), &id))
                },
            ),
        )
    };
    let (networks, network) = contents(K::Network);
    let (nodes, node) = contents(K::Node);
    let (gateways, gateway) = contents(K::Gateway);
    Router::new()
        .route(
            "/v1/regions",
            get(|s: State<App>, h: HeaderMap| list(s, h, K::Region, None)),
        )
        .route(
            "/v1/regions/{id}",
            get(|s: State<App>, Path(id): Path<String>, h: HeaderMap| {
                get_one(s, h, ObjectRef::new(K::Region, None, &id))
            })
            .put(
                |s: State<App>, Path(id): Path<String>, h: HeaderMap, b: Body| {
                    put_one(s, h, ObjectRef::new(K::Region, None, &id), b)
                },
            )
            .delete(|s: State<App>, Path(id): Path<String>, h: HeaderMap| {
                delete_one(s, h, ObjectRef::new(K::Region, None, &id))
            }),
        )
        .route(
            "/v1/workspaces",
            get(|s: State<App>, h: HeaderMap| list(s, h, K::Workspace, None)),
        )
        .route(
            "/v1/workspaces/{ws}",
            get(|s: State<App>, Path(ws): Path<String>, h: HeaderMap| {
                get_one(s, h, ObjectRef::new(K::Workspace, Some(&ws), &ws))
            })
            .put(
                |s: State<App>, Path(ws): Path<String>, h: HeaderMap, b: Body| {
                    put_one(s, h, ObjectRef::new(K::Workspace, Some(&ws), &ws), b)
                },
            )
            .delete(|s: State<App>, Path(ws): Path<String>, h: HeaderMap| {
                delete_one(s, h, ObjectRef::new(K::Workspace, Some(&ws), &ws))
            }),
        )
        .route("/v1/workspaces/{ws}/credentials", post(mint_credential))
        .route("/v1/workspaces/{ws}/networks", networks)
        .route("/v1/workspaces/{ws}/networks/{id}", network)
        .route("/v1/workspaces/{ws}/nodes", nodes)
        .route("/v1/workspaces/{ws}/nodes/{id}", node)
        .route("/v1/workspaces/{ws}/gateways", gateways)
        .route("/v1/workspaces/{ws}/gateways/{id}", gateway)
        .route(
            "/v1/workspaces/{ws}/nodes/{id}/{request}",
            post(node_request),
        )
        .route("/v1/oversight/audit", get(audit))
}

/// The documents served now (empty before the first topology).
fn document(app: &App) -> Docs {
    app.docs().map(|(_, d)| d).unwrap_or_default()
}

/// A workspace id of the path, if it names an existing workspace.
fn existing(doc: &Docs, ws: Option<&str>) -> Option<WorkspaceId> {
    let ws = ws?;
    obj::workspace(doc, ws)?;
    WorkspaceId::new(ws).ok()
}

/// The workspace an object is in (or is), for the authorization table: the
/// workspace's own 404 when it is hidden or missing, so the two read alike.
fn authorize_object(
    app: &App,
    caller: &Writer,
    doc: &Docs,
    object: &ObjectRef,
    write: bool,
) -> Result<(), ApiErr> {
    let action = match (object.kind, write) {
        (ObjectKind::Region | ObjectKind::Topology, false) => Action::ReadCatalog,
        (ObjectKind::Region | ObjectKind::Topology, true) => Action::WriteCatalog,
        (ObjectKind::Workspace, false) => Action::ReadWorkspace,
        (ObjectKind::Workspace, true) => Action::WriteWorkspace,
        (ObjectKind::Network | ObjectKind::Node | ObjectKind::Gateway, false) => {
            Action::ReadContents
        }
        (ObjectKind::Network | ObjectKind::Node | ObjectKind::Gateway, true) => {
            Action::WriteContents
        }
    };
    match object.kind {
        ObjectKind::Region | ObjectKind::Topology => {
            authorized(app, caller, action, Target::Platform, object)
        }
        ObjectKind::Workspace | ObjectKind::Network | ObjectKind::Node | ObjectKind::Gateway => {
            let ws = existing(doc, object.workspace.as_deref());
            let name = object.workspace.clone().unwrap_or_default();
            authorized(
                app,
                caller,
                action,
                Target::Workspace(ws.as_ref()),
                ObjectRef::new(ObjectKind::Workspace, Some(&name), &name),
            )
        }
    }
}

/// The 404 of an object that is not there: its workspace's when that is missing.
fn missing(doc: &Docs, object: &ObjectRef) -> ApiErr {
    match object.workspace.as_deref() {
        Some(ws) if obj::workspace(doc, ws).is_none() => {
            not_found(ObjectRef::new(ObjectKind::Workspace, Some(ws), ws))
        }
        Some(_) | None => not_found(object),
    }
}

fn with_etag(mut response: Response, revision: Option<&str>) -> Response {
    if let Some(value) = revision.and_then(|r| HeaderValue::from_str(&format!("\"{r}\"")).ok()) {
        response.headers_mut().insert(header::ETAG, value);
    }
    response
}

async fn list(
    State(app): State<App>,
    headers: HeaderMap,
    kind: ObjectKind,
    workspace: Option<String>,
) -> Result<Response, ApiErr> {
    let caller = authenticate(&app, &headers).await?;
    let doc = document(&app);
    let items: Vec<(String, serde_json::Value)> = match kind {
        ObjectKind::Workspace => {
            // Each workspace this credential may read; none is a 403 only for a
            // credential that may read no workspace at all (a machine's).
            if caller_reads_no_workspace(&caller) {
                return Err(forbidden(&app));
            }
            obj::list(&doc, kind, None)
                .into_iter()
                .filter(|(_, v)| {
                    let id = v.get("id").and_then(|i| i.as_str()).unwrap_or_default();
                    let ws = WorkspaceId::new(id).ok();
                    nanami_control::authorize(
                        &caller.principal,
                        Action::ReadWorkspace,
                        Target::Workspace(ws.as_ref()),
                    ) == nanami_control::Decision::Allow
                })
                .collect()
        }
        ObjectKind::Region
        | ObjectKind::Topology
        | ObjectKind::Network
        | ObjectKind::Node
        | ObjectKind::Gateway => {
            let object = ObjectRef::new(kind, workspace.as_deref(), "");
            authorize_object(&app, &caller, &doc, &object, false)?;
            if let Some(ws) = workspace.as_deref() {
                if obj::workspace(&doc, ws).is_none() {
                    return Err(missing(&doc, &object));
                }
            }
            obj::list(&doc, kind, workspace.as_deref())
        }
    };
    let items: Vec<serde_json::Value> = items
        .into_iter()
        .map(|(revision, object)| serde_json::json!({"revision": revision, "object": object}))
        .collect();
    Ok(Json(serde_json::json!({ "items": items })).into_response())
}

/// Whether the authorization table lets `caller` read no workspace at all.
fn caller_reads_no_workspace(caller: &Writer) -> bool {
    matches!(
        nanami_control::authorize(
            &caller.principal,
            Action::ReadWorkspace,
            Target::Workspace(None)
        ),
        nanami_control::Decision::Forbidden
    )
}

async fn get_one(
    State(app): State<App>,
    headers: HeaderMap,
    object: ObjectRef,
) -> Result<Response, ApiErr> {
    let caller = authenticate(&app, &headers).await?;
    let doc = document(&app);
    authorize_object(&app, &caller, &doc, &object, false)?;
    let (revision, value) = obj::get(&doc, &object).ok_or_else(|| missing(&doc, &object))?;
    let body = Json(serde_json::json!({"revision": revision, "object": value})).into_response();
    Ok(with_etag(body, Some(&revision)))
}

/// The write precondition of the request's `If-Match` / `If-None-Match`.
fn precondition(app: &App, headers: &HeaderMap) -> Result<Precondition, ApiErr> {
    let text = |name: header::HeaderName| -> Result<Option<String>, ApiErr> {
        let mut values = headers.get_all(&name).iter();
        let Some(first) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(bad_request(app, format!("{name}: one value, please")));
        }
        let v = first
            .to_str()
            .map_err(|_| bad_request(app, format!("{name}: not text")))?
            .trim();
        if v.contains(',') {
            return Err(bad_request(app, format!("{name}: one revision, please")));
        }
        Ok(Some(v.to_owned()))
    };
    match (text(header::IF_MATCH)?, text(header::IF_NONE_MATCH)?) {
        (None, None) => Ok(Precondition::Any),
        (Some(_), Some(_)) => Err(bad_request(
            app,
            "If-Match and If-None-Match together mean nothing here",
        )),
        (Some(v), None) if v == "*" => Ok(Precondition::Exists),
        (Some(v), None) => {
            let rev = v.strip_prefix("W/").unwrap_or(&v).trim_matches('"');
            if rev.is_empty() || rev.len() > 64 || !rev.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad_request(app, "If-Match: not a revision"));
            }
            Ok(Precondition::Match(rev.to_owned()))
        }
        (None, Some(v)) if v == "*" => Ok(Precondition::Absent),
        (None, Some(_)) => Err(bad_request(
            app,
            "If-None-Match: only * (create, never replace) is meaningful for a write",
        )),
    }
}

/// Parses an object body of type `T` (the id must be the path's), with its
/// unknown fields.
fn parse_part<T: DeserializeOwned>(
    app: &App,
    object: &ObjectRef,
    body: &[u8],
    id_of: impl Fn(&T) -> &str,
) -> Result<(T, Vec<UnknownField>), ApiErr> {
    let (part, unknown) = part_from_json::<T>(body)
        .map_err(|e| bad_request(app, format!("bad {} body: {e}", object.kind.name())))?;
    if id_of(&part) != object.id {
        return Err(bad_request(
            app,
            format!(
                "the body's id {:?} is not the path's {:?}",
                id_of(&part),
                object.id
            ),
        ));
    }
    Ok((part, unknown))
}

/// The edit a PUT body makes. Unknown fields are reported as a whole document's
/// validation reports them (422, each at its path).
fn put_edit(app: &App, object: &ObjectRef, body: &[u8]) -> Result<Edit, ApiErr> {
    let ws = object.workspace.clone().unwrap_or_default();
    let (edit, unknown) = match object.kind {
        ObjectKind::Region => {
            let (r, u) = parse_part::<RegionDoc>(app, object, body, |r| &r.id)?;
            (Edit::PutRegion(r), u)
        }
        ObjectKind::Workspace => {
            let (w, u) = parse_part::<WorkspaceSpec>(app, object, body, |w| &w.id)?;
            (Edit::PutWorkspace(w), u)
        }
        ObjectKind::Network => {
            let (n, u) = parse_part::<NetworkDoc>(app, object, body, |n| &n.id)?;
            (Edit::PutNetwork(ws, n), u)
        }
        ObjectKind::Node => {
            let (n, u) = parse_part::<NodeDoc>(app, object, body, |n| &n.id)?;
            (Edit::PutNode(ws, n), u)
        }
        ObjectKind::Gateway => {
            let (g, u) = parse_part::<GatewayDoc>(app, object, body, |g| &g.id)?;
            (Edit::PutGateway(ws, g), u)
        }
        ObjectKind::Topology => {
            return Err(bad_request(app, "the topology is replaced at /v1/topology"))
        }
    };
    if unknown.is_empty() {
        return Ok(edit);
    }
    app.counters
        .bad_requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    Err(ApiErr {
        status: StatusCode::UNPROCESSABLE_ENTITY,
        body: nanami_api::wire::ErrorBody {
            error: format!("invalid {}: unknown fields", object.kind.name()),
            issues: obj::unknown_field_issues(&edit, &unknown),
            current_revision: None,
        },
    })
}

/// Runs an authorized write and answers with its result and new revision.
async fn commit(
    app: &App,
    caller: Writer,
    edit: Edit,
    precondition: Precondition,
) -> Result<Response, ApiErr> {
    let written: WriteResponse =
        blocking(app, move |m| m.write(&caller, edit, &precondition)).await?;
    let revision = written.revision.clone();
    Ok(with_etag(
        Json(written).into_response(),
        revision.as_deref(),
    ))
}

async fn put_one(
    State(app): State<App>,
    headers: HeaderMap,
    object: ObjectRef,
    body: Body,
) -> Result<Response, ApiErr> {
    let caller = authenticate(&app, &headers).await?;
    authorize_object(&app, &caller, &document(&app), &object, true)?;
    let precondition = precondition(&app, &headers)?;
    let body = read_body(&app, &headers, body, MAX_OBJECT_BODY).await?;
    let edit = put_edit(&app, &object, &body)?;
    commit(&app, caller, edit, precondition).await
}

async fn delete_one(
    State(app): State<App>,
    headers: HeaderMap,
    object: ObjectRef,
) -> Result<Response, ApiErr> {
    let caller = authenticate(&app, &headers).await?;
    authorize_object(&app, &caller, &document(&app), &object, true)?;
    let precondition = precondition(&app, &headers)?;
    let edit = Edit::delete(&object)
        .ok_or_else(|| bad_request(&app, "the topology is replaced, not deleted"))?;
    commit(&app, caller, edit, precondition).await
}

/// `POST /v1/workspaces/{ws}/nodes/{id}/{enable|disable|revoke|rotate-key}`.
async fn node_request(
    State(app): State<App>,
    Path((ws, id, request)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiErr> {
    let caller = authenticate(&app, &headers).await?;
    let object = ObjectRef::new(ObjectKind::Node, Some(&ws), &id);
    authorize_object(&app, &caller, &document(&app), &object, true)?;
    let precondition = precondition(&app, &headers)?;
    let status = |s: &str| Edit::SetNodeStatus {
        workspace: ws.clone(),
        node: id.clone(),
        status: s.to_owned(),
    };
    let edit = match request.as_str() {
        "enable" => status("active"),
        "disable" => status("disabled"),
        "revoke" => status("revoked"),
        "rotate-key" => {
            let body = read_body(&app, &headers, body, MAX_OBJECT_BODY).await?;
            let request: RotateKeyRequest = serde_json::from_slice(&body)
                .map_err(|e| bad_request(&app, format!("bad JSON body: {e}")))?;
            Edit::RotateKey {
                workspace: ws.clone(),
                node: id.clone(),
                public_key: request.public_key,
            }
        }
        _ => {
            return Err(ApiErr::new(
                StatusCode::NOT_FOUND,
                "no such node request: enable, disable, revoke or rotate-key",
            ))
        }
    };
    commit(&app, caller, edit, precondition).await
}

async fn mint_credential(
    State(app): State<App>,
    Path(ws): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiErr> {
    let caller = authenticate(&app, &headers).await?;
    let doc = document(&app);
    let target = existing(&doc, Some(&ws));
    authorized(
        &app,
        &caller,
        Action::MintCredential,
        Target::Workspace(target.as_ref()),
        ObjectRef::new(ObjectKind::Workspace, Some(&ws), &ws),
    )?;
    let Some(target) = target else {
        return Err(missing(
            &doc,
            &ObjectRef::new(ObjectKind::Workspace, Some(&ws), &ws),
        ));
    };
    let minted = blocking(&app, move |m| m.mint_workspace_credential(&caller, &target)).await?;
    Ok((StatusCode::CREATED, Json(minted)).into_response())
}

/// `?after=N&limit=M&workspace=W`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    #[serde(default)]
    after: u64,
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    workspace: Option<String>,
}

/// `GET /v1/oversight/audit`: the platform and operators read every entry (or one
/// workspace's with `workspace=`), a workspace credential its own workspace's.
async fn audit(
    State(app): State<App>,
    headers: HeaderMap,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiErr> {
    let caller = authenticate(&app, &headers).await?;
    let Query(query) = query.map_err(|e| bad_request(&app, e.body_text()))?;
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_AUDIT_PAGE);
    let workspace = match (&caller.principal, &query.workspace) {
        (_, Some(ws)) => Some(ws.clone()),
        (Principal::Workspace(own), None) => Some(own.to_string()),
        (
            Principal::Platform | Principal::Operator | Principal::Gateway(_) | Principal::Node(_),
            None,
        ) => None,
    };
    let filter = match &workspace {
        None => {
            authorized(&app, &caller, Action::ReadAudit, Target::Platform, "this")?;
            None
        }
        Some(ws) => {
            // Entries of a deleted workspace stay readable by the platform: the
            // target is the id, existing or not.
            let id = WorkspaceId::new(ws).ok();
            authorized(
                &app,
                &caller,
                Action::ReadAudit,
                Target::Workspace(id.as_ref()),
                ObjectRef::new(ObjectKind::Workspace, Some(ws), ws),
            )?;
            Some(id.ok_or_else(|| bad_request(&app, "workspace: not a workspace id"))?)
        }
    };
    let entries = blocking(&app, move |m| m.audit(query.after, limit, filter.as_ref())).await?;
    let next_after = (entries.len() == limit as usize)
        .then(|| entries.last().map(|e| e.seq))
        .flatten();
    Ok(Json(AuditPage {
        entries,
        next_after,
    })
    .into_response())
}
