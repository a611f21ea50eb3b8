//! `/openapi.json`, generated from the wire types (`utoipa::ToSchema` on
//! `nanami_api::wire` and the model) and the handlers' `#[utoipa::path]`
//! annotations, so the document cannot drift from what the router serves.
//!
//! The error answers every route shares are the response types below; a
//! handler lists the ones its code can give.

use std::sync::OnceLock;

use nanami_api::wire::ErrorBody;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoResponses, Modify, OpenApi};

/// The name of the bearer security scheme every authenticated route requires.
pub const BEARER: &str = "bearer";

/// Declares an error answer (an [`ErrorBody`] with one status) for the
/// handlers' `responses(...)`.
macro_rules! error_response {
    ($(#[$doc:meta])* $name:ident, $status:tt, $description:tt) => {
        $(#[$doc])*
        #[derive(IntoResponses)]
        #[response(status = $status, description = $description)]
        #[allow(dead_code)] // only its `IntoResponses` is used
        pub(crate) struct $name(pub(crate) ErrorBody);
    };
}

/// The answers every authenticated route can give besides its own: no or an
/// unknown credential, a credential the table refuses, a request target over
/// the limit, a store that cannot answer.
#[derive(IntoResponses)]
#[allow(dead_code)] // only its `IntoResponses` is used
pub(crate) enum Refusals {
    /// 401.
    #[response(status = 401, description = "Missing or unknown credential.")]
    Unauthorized(ErrorBody),
    /// 403.
    #[response(status = 403, description = "This credential may not do that.")]
    Forbidden(ErrorBody),
    /// 414.
    #[response(status = 414, description = "The request target is longer than 8 KiB.")]
    UriTooLong(ErrorBody),
    /// 503.
    #[response(status = 503, description = "The store is unavailable; retry later.")]
    Unavailable(ErrorBody),
}

/// The answers of a route that reads a body, about the body's arrival.
#[derive(IntoResponses)]
#[allow(dead_code)] // only its `IntoResponses` is used
pub(crate) enum BodyLimits {
    /// 408.
    #[response(
        status = 408,
        description = "The body did not arrive within the body timeout."
    )]
    Timeout(ErrorBody),
    /// 413.
    #[response(
        status = 413,
        description = "The body is larger than this route's limit."
    )]
    TooLarge(ErrorBody),
}

/// The answers of a write the current topology refuses.
#[derive(IntoResponses)]
#[allow(dead_code)] // only its `IntoResponses` is used
pub(crate) enum WriteRefusals {
    /// 409.
    #[response(
        status = 409,
        description = "The write is valid but the topology it makes cannot be compiled."
    )]
    Conflict(ErrorBody),
    /// 412.
    #[response(
        status = 412,
        description = "`If-Match` / `If-None-Match` does not hold; `current_revision` is the object's revision now (absent when it does not exist)."
    )]
    PreconditionFailed(ErrorBody),
    /// 422.
    #[response(
        status = 422,
        description = "The object is invalid, or the topology it makes is (`issues` lists each problem at its path); nothing changed."
    )]
    Unprocessable(ErrorBody),
}

error_response!(
    /// 400.
    BadRequest,
    400,
    "A malformed id, parameter, header or body (nothing changed)."
);
error_response!(
    /// 404.
    NotFound,
    404,
    "No such object, or hidden from this credential (another workspace's): the same answer either way."
);
error_response!(
    /// 414, for the routes that need no credential.
    UriTooLong,
    414,
    "The request target is longer than 8 KiB."
);
error_response!(
    /// 503, for the routes that need no credential.
    Unavailable,
    503,
    "The store is unavailable; retry later."
);

/// The manager's API.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Nanami gateway manager",
        version = "1",
        description = "Desired state for gateway daemons, their observed state, client configurations, the object API and read-only oversight.

Authentication: `Authorization: Bearer <credential>`. Credential kinds by prefix: `nmc_` the platform (control plane), `nmw_` one workspace's administrator, `nmo_` operator (read-only oversight), `nmg_` one gateway, `nmn_` one client node, `nme_` a one-time enrolment token (only in the body of `POST /v1/enrol`).

Scopes: the platform credential holds the catalog (regions), workspaces and their region access grants, and every workspace's contents; a workspace credential reads and writes only its own workspace's networks, nodes and gateways and meets every other workspace as missing (404); the operator credential reads everything and writes nothing; a gateway or node credential reaches only its own desired state, report or configuration.

Every error is `{\"error\": string, \"issues\"?: [string], \"current_revision\"?: string}`; a refused request changes nothing. Limits: a request target over 8 KiB is refused (414); bodies are read only after the credential is checked, up to each route's limit (413) and within the body timeout (408). hyper itself answers 431 with no body to a header section over 64 KiB."
    ),
    paths(
        crate::http::healthz,
        crate::http::metrics,
        crate::http::openapi_json,
        crate::http::enrol,
        crate::http::create_token,
        crate::http::put_topology,
        crate::http::get_topology,
        crate::http::status,
        crate::http::desired,
        crate::http::put_observed,
        crate::http::get_observed,
        crate::http::node_config,
        crate::http::oversight_regions,
        crate::http::oversight_workspaces,
        crate::http::oversight_gateways,
        crate::http::explain_node,
        crate::http::explain_gateway,
        crate::http::node_movements,
        crate::objects::regions::list,
        crate::objects::regions::get,
        crate::objects::regions::put,
        crate::objects::regions::delete,
        crate::objects::workspaces::list,
        crate::objects::workspaces::get,
        crate::objects::workspaces::put,
        crate::objects::workspaces::delete,
        crate::objects::networks::list,
        crate::objects::networks::get,
        crate::objects::networks::put,
        crate::objects::networks::delete,
        crate::objects::nodes::list,
        crate::objects::nodes::get,
        crate::objects::nodes::put,
        crate::objects::nodes::delete,
        crate::objects::gateways::list,
        crate::objects::gateways::get,
        crate::objects::gateways::put,
        crate::objects::gateways::delete,
        crate::objects::node_request,
        crate::objects::mint_credential,
        crate::objects::audit,
    ),
    components(schemas(
        ErrorBody,
        crate::http::ConfigFormat,
        crate::objects::NodeRequest,
        // Named by path parameters (which do not collect their schemas).
        nanami_model::RegionId,
        nanami_model::WorkspaceId,
        nanami_model::NetworkId,
        nanami_model::NodeId,
        nanami_model::GatewayId,
    )),
    modifiers(&BearerScheme)
)]
pub struct ApiDoc;

/// Adds the bearer security scheme the handlers' `security(...)` names.
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A credential: nmc_ (platform), nmw_ (workspace), nmo_ (operator), nmg_ (gateway) or nmn_ (node).",
                    ))
                    .build(),
            ),
        );
    }
}

/// The document served at `/openapi.json` (built once).
pub fn document() -> &'static str {
    static DOCUMENT: OnceLock<String> = OnceLock::new();
    DOCUMENT.get_or_init(|| {
        ApiDoc::openapi()
            .to_pretty_json()
            .unwrap_or_else(|e| format!("{{\"error\": \"bug: the OpenAPI document: {e}\"}}"))
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn doc() -> serde_json::Value {
        serde_json::from_str(document()).unwrap()
    }

    /// Each JSON body of an operation: (where, schema).
    fn bodies(doc: &serde_json::Value) -> Vec<(String, serde_json::Value)> {
        let mut out = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let mut contents = vec![(
                    format!("{method} {path} request"),
                    &op["requestBody"]["content"],
                )];
                for (status, r) in op["responses"].as_object().unwrap() {
                    contents.push((format!("{method} {path} {status}"), &r["content"]));
                }
                for (at, content) in contents {
                    if let Some(content) = content.as_object() {
                        for (media, c) in content {
                            out.push((format!("{at} {media}"), c["schema"].clone()));
                        }
                    }
                }
            }
        }
        out
    }

    #[test]
    fn the_document_is_openapi_3_json() {
        let doc = doc();
        let version = doc["openapi"].as_str().unwrap();
        assert!(version.starts_with("3."), "{version}");
        let operations: usize = doc["paths"]
            .as_object()
            .unwrap()
            .values()
            .map(|item| item.as_object().unwrap().len())
            .sum();
        assert!(operations >= 40, "{operations} operations");
        assert_eq!(
            doc["components"]["securitySchemes"][BEARER]["scheme"],
            "bearer"
        );
    }

    #[test]
    fn every_v1_json_body_is_a_named_schema() {
        let doc = doc();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let mut checked = 0;
        for (at, schema) in bodies(&doc) {
            if !at.contains(" /v1/") || !at.ends_with("application/json") {
                continue;
            }
            // The body, a list's items, or an optional body's non-null
            // alternative refer to a component.
            let optional = schema["oneOf"].as_array().and_then(|alternatives| {
                let mut named = alternatives.iter().filter(|a| a["type"] != "null");
                match (named.next(), named.next()) {
                    (Some(one), None) => one["$ref"].as_str(),
                    (Some(_), Some(_)) | (None, _) => None,
                }
            });
            let reference = schema["$ref"]
                .as_str()
                .or_else(|| schema["items"]["$ref"].as_str())
                .or(optional)
                .unwrap_or_else(|| panic!("{at}: not a named schema: {schema}"));
            let name = reference.trim_start_matches("#/components/schemas/");
            let named = &schemas[name];
            assert!(named.is_object(), "{at}: {reference} is not in components");
            let untyped = named["type"] == "object"
                && named.get("properties").is_none()
                && named.get("additionalProperties").is_none();
            assert!(!untyped, "{at}: {name} is an object without properties");
            checked += 1;
        }
        assert!(checked > 100, "only {checked} bodies checked");
    }

    /// Every `$ref` anywhere in `value`.
    fn references<'a>(value: &'a serde_json::Value, out: &mut Vec<&'a str>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v.as_str()) {
                        ("$ref", Some(target)) => out.push(target),
                        _ => references(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| references(v, out)),
            serde_json::Value::Null
            | serde_json::Value::Bool(_)
            | serde_json::Value::Number(_)
            | serde_json::Value::String(_) => {}
        }
    }

    #[test]
    fn every_reference_resolves() {
        let doc = doc();
        let mut refs = Vec::new();
        references(&doc, &mut refs);
        assert!(!refs.is_empty());
        for target in refs {
            let name = target
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| panic!("{target}: not a schema reference"));
            assert!(
                doc["components"]["schemas"][name].is_object(),
                "{target} is not in the document"
            );
        }
    }

    #[test]
    fn every_authenticated_route_names_the_bearer_scheme() {
        let doc = doc();
        let public = ["/healthz", "/openapi.json", "/v1/enrol"];
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let secured = op["security"]
                    .as_array()
                    .is_some_and(|s| s.iter().any(|r| r.get(BEARER).is_some()));
                assert_eq!(secured, !public.contains(&path.as_str()), "{method} {path}");
                if secured {
                    assert!(op["responses"]["401"].is_object(), "{method} {path}");
                }
            }
        }
    }
}
