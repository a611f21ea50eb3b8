//! The object API from the client's side: regions and workspaces (platform
//! scope), networks, nodes and gateways (a workspace's scope), each read with its
//! revision and written under a [`Precondition`] (`If-Match`).
//!
//! | object | collection | one |
//! |---|---|---|
//! | region | `/v1/regions` | `/v1/regions/{id}` |
//! | workspace | `/v1/workspaces` | `/v1/workspaces/{id}` |
//! | network | `/v1/workspaces/{ws}/networks` | `.../networks/{id}` |
//! | node | `/v1/workspaces/{ws}/nodes` | `.../nodes/{id}` |
//! | gateway | `/v1/workspaces/{ws}/gateways` | `.../gateways/{id}` |

use http::{HeaderName, Method, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::client::{Answer, ApiError, Client};
use crate::wire::{
    AuditPage, CredentialResponse, Listed, ObjectKind, Precondition, RotateKeyRequest, Versioned,
    WriteResponse,
};

/// Percent-encodes one path segment (every byte but `A-Z a-z 0-9 - . _ ~`), so an
/// id can never change the path it is put in.
pub fn segment(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    for b in id.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The path of a collection of `kind` (`workspace` is needed for networks, nodes
/// and gateways), or of one object when `id` is given.
pub fn object_path(kind: ObjectKind, workspace: Option<&str>, id: Option<&str>) -> String {
    let ws = segment(workspace.unwrap_or_default());
    let mut path = match kind {
        ObjectKind::Region => "/v1/regions".to_owned(),
        ObjectKind::Workspace => "/v1/workspaces".to_owned(),
        ObjectKind::Network => format!("/v1/workspaces/{ws}/networks"),
        ObjectKind::Node => format!("/v1/workspaces/{ws}/nodes"),
        ObjectKind::Gateway => format!("/v1/workspaces/{ws}/gateways"),
        ObjectKind::Topology => return "/v1/topology".to_owned(),
    };
    if let Some(id) = id {
        path.push('/');
        path.push_str(&segment(id));
    }
    path
}

/// The request headers that carry `precondition`.
pub fn precondition_headers(precondition: &Precondition) -> Vec<(HeaderName, String)> {
    match precondition {
        Precondition::Any => Vec::new(),
        Precondition::Match(revision) => vec![(http::header::IF_MATCH, format!("\"{revision}\""))],
        Precondition::Exists => vec![(http::header::IF_MATCH, "*".to_owned())],
        Precondition::Absent => vec![(http::header::IF_NONE_MATCH, "*".to_owned())],
    }
}

fn decode<T: DeserializeOwned>(answer: &Answer) -> Result<T, ApiError> {
    if !answer.status.is_success() {
        return Err(answer.error());
    }
    serde_json::from_slice(&answer.body).map_err(|e| ApiError::Decode(e.to_string()))
}

/// A node lifecycle request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lifecycle {
    /// Status `active`.
    Enable,
    /// Status `disabled`.
    Disable,
    /// Status `revoked`; its credential is revoked too.
    Revoke,
}

impl Lifecycle {
    /// Its path segment.
    pub fn name(self) -> &'static str {
        match self {
            Self::Enable => "enable",
            Self::Disable => "disable",
            Self::Revoke => "revoke",
        }
    }
}

impl Client {
    async fn object_call(
        &self,
        method: Method,
        path: &str,
        precondition: &Precondition,
        body: Option<Vec<u8>>,
    ) -> Result<Answer, ApiError> {
        self.send_with(
            method,
            path,
            &precondition_headers(precondition),
            body.map(|b| ("application/json", b)),
            self.timeout(),
        )
        .await
    }

    /// Every object at a collection `path` (see [`object_path`]) that this
    /// credential may see.
    pub async fn list_objects<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Vec<Versioned<T>>, ApiError> {
        let answer = self
            .object_call(Method::GET, path, &Precondition::Any, None)
            .await?;
        Ok(decode::<Listed<T>>(&answer)?.items)
    }

    /// One object and its revision.
    pub async fn get_object<T: DeserializeOwned>(
        &self,
        path: &str,
    ) -> Result<Versioned<T>, ApiError> {
        let answer = self
            .object_call(Method::GET, path, &Precondition::Any, None)
            .await?;
        decode(&answer)
    }

    /// Creates or replaces the object at `path` (its id must be the path's) if
    /// `precondition` holds. A stale revision is a 412 [`ApiError::Status`] with
    /// the current revision; an invalid result a 422 with every issue.
    pub async fn put_object<T: Serialize>(
        &self,
        path: &str,
        object: &T,
        precondition: &Precondition,
    ) -> Result<WriteResponse, ApiError> {
        let body = serde_json::to_vec(object).map_err(|e| ApiError::Decode(e.to_string()))?;
        let answer = self
            .object_call(Method::PUT, path, precondition, Some(body))
            .await?;
        decode(&answer)
    }

    /// Deletes the object at `path` if `precondition` holds.
    pub async fn delete_object(
        &self,
        path: &str,
        precondition: &Precondition,
    ) -> Result<WriteResponse, ApiError> {
        let answer = self
            .object_call(Method::DELETE, path, precondition, None)
            .await?;
        decode(&answer)
    }

    /// Enables, disables or revokes node `node` of `workspace`.
    pub async fn node_lifecycle(
        &self,
        workspace: &str,
        node: &str,
        request: Lifecycle,
        precondition: &Precondition,
    ) -> Result<WriteResponse, ApiError> {
        let path = format!(
            "{}/{}",
            object_path(ObjectKind::Node, Some(workspace), Some(node)),
            request.name()
        );
        let answer = self
            .object_call(Method::POST, &path, precondition, None)
            .await?;
        decode(&answer)
    }

    /// Replaces node `node`'s public key (the node made the new private key).
    pub async fn rotate_key(
        &self,
        workspace: &str,
        node: &str,
        public_key: &str,
        precondition: &Precondition,
    ) -> Result<WriteResponse, ApiError> {
        let path = format!(
            "{}/rotate-key",
            object_path(ObjectKind::Node, Some(workspace), Some(node))
        );
        let body = serde_json::to_vec(&RotateKeyRequest {
            public_key: public_key.to_owned(),
        })
        .map_err(|e| ApiError::Decode(e.to_string()))?;
        let answer = self
            .object_call(Method::POST, &path, precondition, Some(body))
            .await?;
        decode(&answer)
    }

    /// Mints a credential for `workspace` (platform credential).
    pub async fn mint_workspace_credential(
        &self,
        workspace: &str,
    ) -> Result<CredentialResponse, ApiError> {
        let path = format!(
            "{}/credentials",
            object_path(ObjectKind::Workspace, None, Some(workspace))
        );
        let answer = self
            .object_call(Method::POST, &path, &Precondition::Any, None)
            .await?;
        decode(&answer)
    }

    /// A page of the audit trail this credential may read: entries after `after`
    /// (from the start when `None`), at most `limit` (the manager caps it).
    pub async fn audit(
        &self,
        after: Option<u64>,
        limit: Option<u32>,
    ) -> Result<AuditPage, ApiError> {
        let mut path = "/v1/oversight/audit".to_owned();
        let mut sep = '?';
        if let Some(after) = after {
            path.push_str(&format!("{sep}after={after}"));
            sep = '&';
        }
        if let Some(limit) = limit {
            path.push_str(&format!("{sep}limit={limit}"));
        }
        let answer = self
            .object_call(Method::GET, &path, &Precondition::Any, None)
            .await?;
        decode(&answer)
    }

    /// The whole topology document as JSON (platform or operator credential).
    pub async fn export_topology(&self) -> Result<String, ApiError> {
        let answer = self
            .object_call(Method::GET, "/v1/topology", &Precondition::Any, None)
            .await?;
        if answer.status == StatusCode::OK {
            Ok(String::from_utf8_lossy(&answer.body).into_owned())
        } else {
            Err(answer.error())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_cannot_escape_their_segment() {
        assert_eq!(segment("gw-1"), "gw-1");
        assert_eq!(segment("../x"), "..%2Fx");
        assert_eq!(
            object_path(ObjectKind::Node, Some("a/b"), Some("n?1")),
            "/v1/workspaces/a%2Fb/nodes/n%3F1"
        );
        assert_eq!(object_path(ObjectKind::Region, None, None), "/v1/regions");
    }
}
