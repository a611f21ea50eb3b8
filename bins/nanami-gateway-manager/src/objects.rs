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
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use nanami_api::wire::{
    AuditPage, CredentialResponse, ErrorBody, GatewayDoc, NetworkDoc, NodeDoc, RegionDoc,
    RotateKeyRequest, WorkspaceSpec, WriteResponse,
};
use nanami_control::object::{self as obj, ObjectKind, ObjectRef};
use nanami_control::{Action, Docs, Edit, Precondition, Principal, Target};
use nanami_model::doc::{part_from_json, UnknownField};
use nanami_model::{GatewayId, NetworkId, NodeId, RegionId, WorkspaceId};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::http::{
    authenticate, authorized, bad_request, blocking, forbidden, not_found, read_body, ApiErr, App,
    PathOf,
};
use crate::manager::Writer;
use crate::openapi::{BadRequest, BodyLimits, NotFound, Refusals, WriteRefusals};

/// The largest object body accepted: a network, node or gateway is a few hundred
/// bytes; a workspace spec lists regions.
const MAX_OBJECT_BODY: usize = 1 << 20;

/// The most audit entries one page holds.
pub const MAX_AUDIT_PAGE: u32 = 1000;

/// The object API's routes (merged into the API router).
pub(crate) fn routes() -> Router<App> {
    Router::new()
        .route("/v1/regions", get(regions::list))
        .route(
            "/v1/regions/{id}",
            get(regions::get).put(regions::put).delete(regions::delete),
        )
        .route("/v1/workspaces", get(workspaces::list))
        .route(
            "/v1/workspaces/{ws}",
            get(workspaces::get)
                .put(workspaces::put)
                .delete(workspaces::delete),
        )
        .route("/v1/workspaces/{ws}/credentials", post(mint_credential))
        .route("/v1/workspaces/{ws}/networks", get(networks::list))
        .route(
            "/v1/workspaces/{ws}/networks/{id}",
            get(networks::get)
                .put(networks::put)
                .delete(networks::delete),
        )
        .route("/v1/workspaces/{ws}/nodes", get(nodes::list))
        .route(
            "/v1/workspaces/{ws}/nodes/{id}",
            get(nodes::get).put(nodes::put).delete(nodes::delete),
        )
        .route("/v1/workspaces/{ws}/gateways", get(gateways::list))
        .route(
            "/v1/workspaces/{ws}/gateways/{id}",
            get(gateways::get)
                .put(gateways::put)
                .delete(gateways::delete),
        )
        .route(
            "/v1/workspaces/{ws}/nodes/{id}/{request}",
            post(node_request),
        )
        .route("/v1/oversight/audit", get(audit))
}

/// The four handlers of one kind of object (list, get, put, delete), each with
/// its `#[utoipa::path]`: `$list` and `$one` are the list's and one object's
/// path, extracted with the given pattern and type into the [`ObjectRef`] each
/// handler works on.
macro_rules! object_handlers {
    (
        $(#[$meta:meta])*
        mod $module:ident: $doc:ty, $kind:expr;
        list $list:tt ($lp:pat, $lt:ty) => $list_ws:expr, [$($list_params:tt)*];
        one $one:tt ($op:pat, $ot:ty) => $object:expr, [$($one_params:tt)*];
        operations $list_id:tt, $get_id:tt, $put_id:tt, $delete_id:tt;
        credential $credential:tt;
    ) => {
        $(#[$meta])*
        pub(crate) mod $module {
            use super::*;
            use nanami_api::wire::{Listed, Versioned};

            /// Lists the objects with their revisions.
            #[utoipa::path(
                get,
                path = $list,
                operation_id = $list_id,
                tag = "objects",
                description = $credential,
                params($($list_params)*),
                security(("bearer" = [])),
                responses(
                    (status = 200, description = "The objects, each with its revision.", body = Listed<$doc>),
                    Refusals,
                    NotFound,
                )
            )]
            pub(crate) async fn list(
                s: State<App>,
                $lp: $lt,
                h: HeaderMap,
            ) -> Result<Response, ApiErr> {
                super::list(s, h, $kind, $list_ws).await
            }

            /// Reads one object with its revision (also its `ETag`).
            #[utoipa::path(
                get,
                path = $one,
                operation_id = $get_id,
                tag = "objects",
                description = $credential,
                params($($one_params)*),
                security(("bearer" = [])),
                responses(
                    (status = 200, description = "The object and its revision.", body = Versioned<$doc>,
                        headers(("ETag" = String, description = "The object's revision, quoted."))),
                    Refusals,
                    NotFound,
                )
            )]
            pub(crate) async fn get(
                s: State<App>,
                $op: $ot,
                h: HeaderMap,
            ) -> Result<Response, ApiErr> {
                get_one(s, h, $object).await
            }

            /// Creates or replaces one object. `If-Match: "<revision>"` replaces
            /// only that revision, `If-Match: *` only an existing object,
            /// `If-None-Match: *` only creates; unknown fields are refused (422).
            #[utoipa::path(
                put,
                path = $one,
                operation_id = $put_id,
                tag = "objects",
                description = $credential,
                params($($one_params)* PreconditionHeaders),
                request_body = $doc,
                security(("bearer" = [])),
                responses(
                    (status = 200, description = "Written.", body = WriteResponse,
                        headers(("ETag" = String, description = "The object's new revision, quoted."))),
                    BadRequest,
                    Refusals,
                    BodyLimits,
                    WriteRefusals,
                    NotFound,
                )
            )]
            pub(crate) async fn put(
                s: State<App>,
                $op: $ot,
                h: HeaderMap,
                b: Body,
            ) -> Result<Response, ApiErr> {
                put_one(s, h, $object, b).await
            }

            /// Deletes one object (refused with 422 while others refer to it).
            #[utoipa::path(
                delete,
                path = $one,
                operation_id = $delete_id,
                tag = "objects",
                description = $credential,
                params($($one_params)* PreconditionHeaders),
                security(("bearer" = [])),
                responses(
                    (status = 200, description = "Deleted.", body = WriteResponse),
                    BadRequest,
                    Refusals,
                    WriteRefusals,
                    NotFound,
                )
            )]
            pub(crate) async fn delete(
                s: State<App>,
                $op: $ot,
                h: HeaderMap,
            ) -> Result<Response, ApiErr> {
                delete_one(s, h, $object).await
            }
        }
    };
}

object_handlers! {
    /// Regions: the platform's catalog.
    mod regions: RegionDoc, ObjectKind::Region;
    list "/v1/regions" ((), ()) => None, [];
    one "/v1/regions/{id}" (PathOf(id), PathOf<String>) => ObjectRef::new(ObjectKind::Region, None, &id),
        [("id" = RegionId, Path, description = "The region."),];
    operations "list_regions", "get_region", "put_region", "delete_region";
    credential "Credential: the platform writes; the platform and operators read.";
}

object_handlers! {
    /// Workspaces: a tenant and its region access grants (the spec; its
    /// contents are the routes below it).
    mod workspaces: WorkspaceSpec, ObjectKind::Workspace;
    list "/v1/workspaces" ((), ()) => None, [];
    one "/v1/workspaces/{ws}" (PathOf(ws), PathOf<String>) => ObjectRef::new(ObjectKind::Workspace, Some(&ws), &ws),
        [("ws" = WorkspaceId, Path, description = "The workspace."),];
    operations "list_workspaces", "get_workspace", "put_workspace", "delete_workspace";
    credential "Credential: the platform writes; the platform and operators read every workspace, a workspace credential its own (the list holds only it; another workspace is missing, 404).";
}

object_handlers! {
    /// A workspace's networks.
    mod networks: NetworkDoc, ObjectKind::Network;
    list "/v1/workspaces/{ws}/networks" (PathOf(ws), PathOf<String>) => Some(ws),
        [("ws" = WorkspaceId, Path, description = "The workspace."),];
    one "/v1/workspaces/{ws}/networks/{id}" (PathOf((ws, id)), PathOf<(String, String)>) => ObjectRef::new(ObjectKind::Network, Some(&ws), &id),
        [("ws" = WorkspaceId, Path, description = "The workspace."), ("id" = NetworkId, Path, description = "The network."),];
    operations "list_networks", "get_network", "put_network", "delete_network";
    credential "Credential: the platform or the workspace's own write; operators read (another workspace is missing, 404).";
}

object_handlers! {
    /// A workspace's nodes.
    mod nodes: NodeDoc, ObjectKind::Node;
    list "/v1/workspaces/{ws}/nodes" (PathOf(ws), PathOf<String>) => Some(ws),
        [("ws" = WorkspaceId, Path, description = "The workspace."),];
    one "/v1/workspaces/{ws}/nodes/{id}" (PathOf((ws, id)), PathOf<(String, String)>) => ObjectRef::new(ObjectKind::Node, Some(&ws), &id),
        [("ws" = WorkspaceId, Path, description = "The workspace."), ("id" = NodeId, Path, description = "The node."),];
    operations "list_nodes", "get_node", "put_node", "delete_node";
    credential "Credential: the platform or the workspace's own write; operators read (another workspace is missing, 404).";
}

object_handlers! {
    /// A workspace's gateways.
    mod gateways: GatewayDoc, ObjectKind::Gateway;
    list "/v1/workspaces/{ws}/gateways" (PathOf(ws), PathOf<String>) => Some(ws),
        [("ws" = WorkspaceId, Path, description = "The workspace."),];
    one "/v1/workspaces/{ws}/gateways/{id}" (PathOf((ws, id)), PathOf<(String, String)>) => ObjectRef::new(ObjectKind::Gateway, Some(&ws), &id),
        [("ws" = WorkspaceId, Path, description = "The workspace."), ("id" = GatewayId, Path, description = "The gateway."),];
    operations "list_gateways", "get_gateway", "put_gateway", "delete_gateway";
    credential "Credential: the platform or the workspace's own write; operators read (another workspace is missing, 404).";
}

/// The write preconditions every object write takes.
#[derive(Debug, utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // read by `precondition` from the raw headers; this documents them
struct PreconditionHeaders {
    /// `"<revision>"` (the object's `ETag`): write only if the object is at that
    /// revision; `*`: only if it exists.
    #[param(rename = "If-Match", pattern = r#"^(\*|(W/)?"?[0-9a-fA-F]{1,64}"?)$"#)]
    if_match: Option<String>,
    /// `*`: create only, never replace (not with `If-Match`).
    #[param(rename = "If-None-Match", pattern = r"^\*$")]
    if_none_match: Option<String>,
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

/// The node lifecycle requests (the `{request}` of their path).
#[derive(Debug, Clone, Copy, utoipa::ToSchema)]
#[schema(rename_all = "kebab-case")]
#[allow(dead_code)] // the handler matches the path's text; this documents it
pub(crate) enum NodeRequest {
    /// The node may connect again.
    Enable,
    /// The node's configuration is withheld until it is enabled.
    Disable,
    /// The node's credential stops working for good.
    Revoke,
    /// The node's public key changes (body: `RotateKeyRequest`).
    RotateKey,
}

/// A node lifecycle request: enable, disable, revoke (its credential stops
/// working) or rotate-key (body: `RotateKeyRequest`).
#[utoipa::path(
    post,
    path = "/v1/workspaces/{ws}/nodes/{id}/{request}",
    tag = "objects",
    description = "Credential: the platform or the workspace's own (another workspace is missing, 404). Takes the object preconditions of a write.",
    params(
        ("ws" = WorkspaceId, Path, description = "The workspace."),
        ("id" = NodeId, Path, description = "The node."),
        ("request" = NodeRequest, Path, description = "What to do."),
        PreconditionHeaders,
    ),
    request_body(content = Option<RotateKeyRequest>, description = "With `rotate-key` only: the new public key."),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Done.", body = WriteResponse,
            headers(("ETag" = String, description = "The node's new revision, quoted."))),
        BadRequest,
        Refusals,
        BodyLimits,
        WriteRefusals,
        (status = 404, description = "No such node or request, or another workspace's node.", body = ErrorBody),
    )
)]
pub(crate) async fn node_request(
    State(app): State<App>,
    PathOf((ws, id, request)): PathOf<(String, String, String)>,
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

/// Mints a workspace credential (`nmw_...`), shown once: only its digest is
/// stored.
#[utoipa::path(
    post,
    path = "/v1/workspaces/{ws}/credentials",
    tag = "objects",
    description = "Credential: the platform.",
    params(("ws" = WorkspaceId, Path, description = "The workspace.")),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "The new credential.", body = CredentialResponse),
        Refusals,
        NotFound,
    )
)]
pub(crate) async fn mint_credential(
    State(app): State<App>,
    PathOf(ws): PathOf<String>,
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
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub(crate) struct AuditQuery {
    /// Entries after this sequence number (the previous page's `next_after`).
    #[serde(default)]
    #[param(value_type = Option<u64>)]
    after: u64,
    /// At most this many entries (100 when absent; at most 1000).
    #[serde(default)]
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// One workspace's entries (a workspace credential reads only its own).
    #[serde(default)]
    #[param(value_type = Option<WorkspaceId>)]
    workspace: Option<String>,
}

/// A page of the audit trail, oldest first.
///
/// The platform and operators read every entry (or one workspace's with
/// `workspace=`), a workspace credential its own workspace's.
#[utoipa::path(
    get,
    path = "/v1/oversight/audit",
    tag = "oversight",
    params(AuditQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The page; `next_after` leads to the next one.", body = AuditPage),
        BadRequest,
        Refusals,
        NotFound,
    )
)]
pub(crate) async fn audit(
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
