//! `Manager`: a client of the gateway manager's object API (regions, workspaces,
//! networks, nodes, gateways with revisions; node lifecycle; credentials and
//! enrolment tokens; the audit trail), over [`nanami_api::Client`].
//!
//! Each `Manager` owns a tokio runtime (one worker thread: the connection tasks of
//! hyper run there) and every call releases the GIL while it waits on the network,
//! so Python threads sharing one `Manager` (or each holding one) run their requests
//! at once. Objects travel as their topology-document form (plain Python data);
//! Python mappings are turned into JSON by the standard `json` module with the GIL
//! held, and the request runs without it.
//!
//! Secrets (the credential the `Manager` presents, minted credentials and tokens)
//! never appear in a `repr`: they come out only through `expose_secret()`.

use std::future::Future;
use std::path::PathBuf;
use std::time::Duration;

use nanami_api::objects::{object_path, Lifecycle};
use nanami_api::wire::{
    AuditEntry as WireAuditEntry, CredentialKind, ObjectKind, Precondition, Subject, TokenRequest,
    Versioned as WireVersioned, WriteResponse,
};
use nanami_api::{ApiError as CoreApiError, Client};
use nanami_model::{GatewayId, NodeId};
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use serde_json::Value;

use crate::convert::{json_text, to_py, value_to_py};
use crate::errors;
use crate::keys::PublicKey;

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Manager>()?;
    m.add_class::<Versioned>()?;
    m.add_class::<Written>()?;
    m.add_class::<AuditEntry>()?;
    m.add_class::<AuditPage>()?;
    m.add_class::<WorkspaceCredential>()?;
    m.add_class::<EnrolmentToken>()?;
    Ok(())
}

/// The name of a credential's kind, from its prefix, for `repr` (the secret part
/// is never shown).
fn credential_kind(credential: &str) -> &'static str {
    [
        (CredentialKind::Control, "platform"),
        (CredentialKind::Workspace, "workspace"),
        (CredentialKind::Operator, "operator"),
        (CredentialKind::Gateway, "gateway"),
        (CredentialKind::Node, "node"),
        (CredentialKind::Enrolment, "enrolment"),
    ]
    .into_iter()
    .find(|(kind, _)| credential.starts_with(kind.prefix()))
    .map_or("unknown", |(_, name)| name)
}

/// What the writer believes about the object's revision: `if_match` a revision
/// (or `"*"`: it exists), `create_only` it does not exist yet.
fn precondition(if_match: Option<&str>, create_only: bool) -> PyResult<Precondition> {
    match (if_match, create_only) {
        (Some(_), true) => Err(PyValueError::new_err(
            "if_match and create_only exclude each other: create_only means the object does not exist yet",
        )),
        (None, true) => Ok(Precondition::Absent),
        (Some("*"), false) => Ok(Precondition::Exists),
        (Some(revision), false) => Ok(Precondition::Match(revision.to_owned())),
        (None, false) => Ok(Precondition::Any),
    }
}

/// A Python mapping as the JSON object it stands for, and its `id`.
fn object_arg(object: &Bound<'_, PyAny>, what: &str) -> PyResult<(Value, String)> {
    if !object.is_instance_of::<PyDict>() {
        return Err(PyTypeError::new_err(format!(
            "a {what} is a dict in its topology-document form"
        )));
    }
    let text = json_text(object, what)?;
    let value: Value = serde_json::from_str(&text).map_err(|e| errors::shape_error(what, e))?;
    let id = value
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| errors::shape_error(what, "it has no \"id\" (a str)"))?
        .to_owned();
    Ok((value, id))
}

/// A credential given to `Manager(...)`: its text or a `WorkspaceCredential`.
fn credential_arg(credential: &Bound<'_, PyAny>) -> PyResult<String> {
    if let Ok(c) = credential.cast::<WorkspaceCredential>() {
        return Ok(c.get().credential.clone());
    }
    if let Ok(text) = credential.cast::<PyString>() {
        return Ok(text.to_cow()?.trim().to_owned());
    }
    Err(PyTypeError::new_err(
        "credential is a str or a nanami.WorkspaceCredential",
    ))
}

/// A client of one gateway manager presenting one credential.
#[pyclass(frozen, module = "nanami", name = "Manager")]
pub(crate) struct Manager {
    client: Client,
    runtime: tokio::runtime::Runtime,
    url: String,
    /// The kind of credential presented (for `repr`), or `None`.
    kind: Option<&'static str>,
}

impl Manager {
    /// Runs `fut` on the runtime with the GIL released; a failure becomes the
    /// matching exception.
    fn run<T: Send>(
        &self,
        py: Python<'_>,
        fut: impl Future<Output = Result<T, CoreApiError>> + Send,
    ) -> PyResult<T> {
        py.detach(|| self.runtime.block_on(fut))
            .map_err(|e| errors::api_error(py, e))
    }

    fn list(
        &self,
        py: Python<'_>,
        kind: ObjectKind,
        workspace: Option<&str>,
    ) -> PyResult<Vec<Versioned>> {
        let path = object_path(kind, workspace, None);
        let items: Vec<WireVersioned<Value>> = self.run(py, self.client.list_objects(&path))?;
        Ok(items.into_iter().map(Versioned::from).collect())
    }

    fn get_one(
        &self,
        py: Python<'_>,
        kind: ObjectKind,
        workspace: Option<&str>,
        id: &str,
    ) -> PyResult<Versioned> {
        let path = object_path(kind, workspace, Some(id));
        let item: WireVersioned<Value> = self.run(py, self.client.get_object(&path))?;
        Ok(item.into())
    }

    fn put(
        &self,
        py: Python<'_>,
        kind: ObjectKind,
        workspace: Option<&str>,
        object: &Bound<'_, PyAny>,
        if_match: Option<&str>,
        create_only: bool,
    ) -> PyResult<Written> {
        let precondition = precondition(if_match, create_only)?;
        let (value, id) = object_arg(object, kind.name())?;
        let path = object_path(kind, workspace, Some(&id));
        let written = self.run(py, self.client.put_object(&path, &value, &precondition))?;
        Ok(Written::new(written, Some(value)))
    }

    fn delete(
        &self,
        py: Python<'_>,
        kind: ObjectKind,
        workspace: Option<&str>,
        id: &str,
        if_match: Option<&str>,
    ) -> PyResult<Written> {
        let precondition = precondition(if_match, false)?;
        let path = object_path(kind, workspace, Some(id));
        let written = self.run(py, self.client.delete_object(&path, &precondition))?;
        Ok(Written::new(written, None))
    }

    fn lifecycle(
        &self,
        py: Python<'_>,
        workspace: &str,
        node: &str,
        request: Lifecycle,
        if_match: Option<&str>,
    ) -> PyResult<Written> {
        let precondition = precondition(if_match, false)?;
        let written = self.run(
            py,
            self.client
                .node_lifecycle(workspace, node, request, &precondition),
        )?;
        Ok(Written::new(written, None))
    }
}

#[pymethods]
impl Manager {
    /// A client of the manager at `url` (`https://host:port`, trusting the CA
    /// certificate in the file `ca`; `http://` on loopback needs no `ca`),
    /// presenting `credential` (a str, or a `WorkspaceCredential` minted earlier).
    /// `timeout` bounds each call, in seconds. Nothing is sent until the first call.
    #[new]
    #[pyo3(signature = (url, ca=None, credential=None, timeout=30.0))]
    fn new(
        py: Python<'_>,
        url: &str,
        ca: Option<PathBuf>,
        credential: Option<&Bound<'_, PyAny>>,
        timeout: f64,
    ) -> PyResult<Self> {
        let timeout = Duration::try_from_secs_f64(timeout)
            .ok()
            .filter(|t| !t.is_zero())
            .ok_or_else(|| PyValueError::new_err("timeout is a positive number of seconds"))?;
        let mut client = Client::new(url, ca.as_deref())
            .map_err(|e| errors::api_error(py, e))?
            .with_timeout(timeout);
        let mut kind = None;
        if let Some(c) = credential.filter(|c| !c.is_none()) {
            let text = credential_arg(c)?;
            kind = Some(credential_kind(&text));
            client = client.with_credential(text);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("nanami-manager-client")
            .enable_all()
            .build()
            .map_err(|e| errors::internal("starting the client's runtime", e))?;
        Ok(Self {
            client,
            runtime,
            url: url.to_owned(),
            kind,
        })
    }

    /// The manager's URL.
    #[getter]
    fn url(&self) -> &str {
        &self.url
    }

    // Regions (platform scope) ------------------------------------------------

    /// Every region of the catalog.
    fn regions(&self, py: Python<'_>) -> PyResult<Vec<Versioned>> {
        self.list(py, ObjectKind::Region, None)
    }

    /// One region and its revision.
    fn region(&self, py: Python<'_>, id: &str) -> PyResult<Versioned> {
        self.get_one(py, ObjectKind::Region, None, id)
    }

    /// Creates or replaces a region (platform credential).
    #[pyo3(signature = (region, *, if_match=None, create_only=false))]
    fn put_region(
        &self,
        py: Python<'_>,
        region: &Bound<'_, PyAny>,
        if_match: Option<&str>,
        create_only: bool,
    ) -> PyResult<Written> {
        self.put(py, ObjectKind::Region, None, region, if_match, create_only)
    }

    /// Deletes a region (refused while a workspace or gateway uses it).
    #[pyo3(signature = (id, *, if_match=None))]
    fn delete_region(&self, py: Python<'_>, id: &str, if_match: Option<&str>) -> PyResult<Written> {
        self.delete(py, ObjectKind::Region, None, id, if_match)
    }

    // Workspaces (platform scope) -----------------------------------------------

    /// Every workspace this credential may see (a workspace credential: its own).
    fn workspaces(&self, py: Python<'_>) -> PyResult<Vec<Versioned>> {
        self.list(py, ObjectKind::Workspace, None)
    }

    /// One workspace's spec (`id`, `tenant`, `regions`) and its revision.
    fn workspace(&self, py: Python<'_>, id: &str) -> PyResult<Versioned> {
        self.get_one(py, ObjectKind::Workspace, None, id)
    }

    /// Creates or replaces a workspace's spec (platform credential); its networks,
    /// nodes and gateways are kept.
    #[pyo3(signature = (workspace, *, if_match=None, create_only=false))]
    fn put_workspace(
        &self,
        py: Python<'_>,
        workspace: &Bound<'_, PyAny>,
        if_match: Option<&str>,
        create_only: bool,
    ) -> PyResult<Written> {
        self.put(
            py,
            ObjectKind::Workspace,
            None,
            workspace,
            if_match,
            create_only,
        )
    }

    /// Deletes a workspace (platform credential).
    #[pyo3(signature = (id, *, if_match=None))]
    fn delete_workspace(
        &self,
        py: Python<'_>,
        id: &str,
        if_match: Option<&str>,
    ) -> PyResult<Written> {
        self.delete(py, ObjectKind::Workspace, None, id, if_match)
    }

    /// Mints a credential that administers `workspace` alone (platform
    /// credential). It is shown once: keep it.
    fn mint_workspace_credential(
        &self,
        py: Python<'_>,
        workspace: &str,
    ) -> PyResult<WorkspaceCredential> {
        let minted = self.run(py, self.client.mint_workspace_credential(workspace))?;
        Ok(WorkspaceCredential {
            credential: minted.credential,
            workspace: minted.workspace,
            credential_id: minted.credential_id,
        })
    }

    // Networks, nodes and gateways (a workspace's scope) -------------------------

    /// Every network of `workspace`.
    fn networks(&self, py: Python<'_>, workspace: &str) -> PyResult<Vec<Versioned>> {
        self.list(py, ObjectKind::Network, Some(workspace))
    }

    /// One network and its revision.
    fn network(&self, py: Python<'_>, workspace: &str, id: &str) -> PyResult<Versioned> {
        self.get_one(py, ObjectKind::Network, Some(workspace), id)
    }

    /// Creates or replaces a network of `workspace`.
    #[pyo3(signature = (workspace, network, *, if_match=None, create_only=false))]
    fn put_network(
        &self,
        py: Python<'_>,
        workspace: &str,
        network: &Bound<'_, PyAny>,
        if_match: Option<&str>,
        create_only: bool,
    ) -> PyResult<Written> {
        self.put(
            py,
            ObjectKind::Network,
            Some(workspace),
            network,
            if_match,
            create_only,
        )
    }

    /// Deletes a network of `workspace`.
    #[pyo3(signature = (workspace, id, *, if_match=None))]
    fn delete_network(
        &self,
        py: Python<'_>,
        workspace: &str,
        id: &str,
        if_match: Option<&str>,
    ) -> PyResult<Written> {
        self.delete(py, ObjectKind::Network, Some(workspace), id, if_match)
    }

    /// Every node of `workspace`.
    fn nodes(&self, py: Python<'_>, workspace: &str) -> PyResult<Vec<Versioned>> {
        self.list(py, ObjectKind::Node, Some(workspace))
    }

    /// One node and its revision.
    fn node(&self, py: Python<'_>, workspace: &str, id: &str) -> PyResult<Versioned> {
        self.get_one(py, ObjectKind::Node, Some(workspace), id)
    }

    /// Creates or replaces a node of `workspace`.
    #[pyo3(signature = (workspace, node, *, if_match=None, create_only=false))]
    fn put_node(
        &self,
        py: Python<'_>,
        workspace: &str,
        node: &Bound<'_, PyAny>,
        if_match: Option<&str>,
        create_only: bool,
    ) -> PyResult<Written> {
        self.put(
            py,
            ObjectKind::Node,
            Some(workspace),
            node,
            if_match,
            create_only,
        )
    }

    /// Deletes a node of `workspace`.
    #[pyo3(signature = (workspace, id, *, if_match=None))]
    fn delete_node(
        &self,
        py: Python<'_>,
        workspace: &str,
        id: &str,
        if_match: Option<&str>,
    ) -> PyResult<Written> {
        self.delete(py, ObjectKind::Node, Some(workspace), id, if_match)
    }

    /// Every gateway of `workspace`.
    fn gateways(&self, py: Python<'_>, workspace: &str) -> PyResult<Vec<Versioned>> {
        self.list(py, ObjectKind::Gateway, Some(workspace))
    }

    /// One gateway and its revision.
    fn gateway(&self, py: Python<'_>, workspace: &str, id: &str) -> PyResult<Versioned> {
        self.get_one(py, ObjectKind::Gateway, Some(workspace), id)
    }

    /// Creates or replaces a gateway of `workspace`.
    #[pyo3(signature = (workspace, gateway, *, if_match=None, create_only=false))]
    fn put_gateway(
        &self,
        py: Python<'_>,
        workspace: &str,
        gateway: &Bound<'_, PyAny>,
        if_match: Option<&str>,
        create_only: bool,
    ) -> PyResult<Written> {
        self.put(
            py,
            ObjectKind::Gateway,
            Some(workspace),
            gateway,
            if_match,
            create_only,
        )
    }

    /// Deletes a gateway of `workspace`.
    #[pyo3(signature = (workspace, id, *, if_match=None))]
    fn delete_gateway(
        &self,
        py: Python<'_>,
        workspace: &str,
        id: &str,
        if_match: Option<&str>,
    ) -> PyResult<Written> {
        self.delete(py, ObjectKind::Gateway, Some(workspace), id, if_match)
    }

    // Node lifecycle -------------------------------------------------------------

    /// Makes the node `active`.
    #[pyo3(signature = (workspace, node, *, if_match=None))]
    fn enable_node(
        &self,
        py: Python<'_>,
        workspace: &str,
        node: &str,
        if_match: Option<&str>,
    ) -> PyResult<Written> {
        self.lifecycle(py, workspace, node, Lifecycle::Enable, if_match)
    }

    /// Makes the node `disabled`: it keeps its record but gets no peer anywhere.
    #[pyo3(signature = (workspace, node, *, if_match=None))]
    fn disable_node(
        &self,
        py: Python<'_>,
        workspace: &str,
        node: &str,
        if_match: Option<&str>,
    ) -> PyResult<Written> {
        self.lifecycle(py, workspace, node, Lifecycle::Disable, if_match)
    }

    /// Makes the node `revoked`; its credential is revoked too.
    #[pyo3(signature = (workspace, node, *, if_match=None))]
    fn revoke_node(
        &self,
        py: Python<'_>,
        workspace: &str,
        node: &str,
        if_match: Option<&str>,
    ) -> PyResult<Written> {
        self.lifecycle(py, workspace, node, Lifecycle::Revoke, if_match)
    }

    /// Replaces the node's public key (a str or a `PublicKey`); the node made the
    /// new private key itself.
    #[pyo3(signature = (workspace, node, public_key, *, if_match=None))]
    fn rotate_key(
        &self,
        py: Python<'_>,
        workspace: &str,
        node: &str,
        public_key: &Bound<'_, PyAny>,
        if_match: Option<&str>,
    ) -> PyResult<Written> {
        let key = if let Ok(k) = public_key.cast::<PublicKey>() {
            k.get().inner().to_base64()
        } else if let Ok(text) = public_key.cast::<PyString>() {
            text.to_cow()?.into_owned()
        } else {
            return Err(PyTypeError::new_err(
                "public_key is a str (base64) or a nanami.PublicKey",
            ));
        };
        let precondition = precondition(if_match, false)?;
        let written = self.run(
            py,
            self.client.rotate_key(workspace, node, &key, &precondition),
        )?;
        Ok(Written::new(written, None))
    }

    /// A one-time enrolment token for a gateway or a node (exactly one of them);
    /// a workspace credential may mint them only for its own workspace's.
    #[pyo3(signature = (*, gateway=None, node=None, ttl_seconds=None))]
    fn create_token(
        &self,
        py: Python<'_>,
        gateway: Option<&str>,
        node: Option<&str>,
        ttl_seconds: Option<u64>,
    ) -> PyResult<EnrolmentToken> {
        let subject = match (gateway, node) {
            (Some(g), None) => {
                Subject::Gateway(GatewayId::new(g).map_err(|e| errors::id_error("gateway", g, e))?)
            }
            (None, Some(n)) => {
                Subject::Node(NodeId::new(n).map_err(|e| errors::id_error("node", n, e))?)
            }
            (Some(_), Some(_)) | (None, None) => {
                return Err(PyValueError::new_err(
                    "give exactly one of gateway= or node=",
                ))
            }
        };
        let request = TokenRequest {
            subject,
            ttl_seconds,
        };
        let minted = self.run(py, self.client.create_token(&request))?;
        let (subject_kind, subject_id) = match minted.subject {
            Subject::Gateway(g) => ("gateway", g.to_string()),
            Subject::Node(n) => ("node", n.to_string()),
        };
        Ok(EnrolmentToken {
            token: minted.token,
            subject_kind,
            subject_id,
            expires_at: minted.expires_at,
        })
    }

    // The whole document and the audit trail --------------------------------------

    /// The whole topology document as plain data (platform or operator
    /// credential); `Topology.from_dict` reads it.
    fn export_topology(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let text = self.run(py, self.client.export_topology())?;
        let value: Value = py
            .detach(|| serde_json::from_str(&text))
            .map_err(|e| errors::api_error(py, CoreApiError::Decode(e.to_string())))?;
        value_to_py(py, &value)
    }

    /// Replaces the whole topology (platform credential; the GitOps import):
    /// YAML/JSON text or a dict. Returns the topology's new revision.
    fn import_topology(&self, py: Python<'_>, document: &Bound<'_, PyAny>) -> PyResult<u64> {
        let text = if let Ok(text) = document.cast::<PyString>() {
            text.to_cow()?.into_owned()
        } else if document.is_instance_of::<PyDict>() {
            json_text(document, "document")?
        } else {
            return Err(PyTypeError::new_err(
                "a document is YAML/JSON text (str) or a dict",
            ));
        };
        Ok(self.run(py, self.client.put_topology(&text))?.revision)
    }

    /// A page of the audit trail this credential may read, oldest first: entries
    /// after sequence number `after` (from the start when `None`), at most `limit`
    /// (the manager caps it). Pass `page.next_after` as `after` for the next page.
    #[pyo3(signature = (after=None, limit=None))]
    fn audit(&self, py: Python<'_>, after: Option<u64>, limit: Option<u32>) -> PyResult<AuditPage> {
        let page = self.run(py, self.client.audit(after, limit))?;
        Ok(AuditPage {
            entries: page.entries.into_iter().map(AuditEntry).collect(),
            next_after: page.next_after,
        })
    }

    fn __repr__(&self) -> String {
        match self.kind {
            Some(kind) => format!("Manager('{}', credential=<{kind}>)", self.url),
            None => format!("Manager('{}', credential=None)", self.url),
        }
    }
}

/// An object of the manager and its revision (send it back as `if_match=` to
/// change the object only if nobody else did).
#[pyclass(frozen, eq, module = "nanami", name = "Versioned")]
#[derive(PartialEq)]
pub(crate) struct Versioned {
    revision: String,
    object: Value,
}

impl From<WireVersioned<Value>> for Versioned {
    fn from(v: WireVersioned<Value>) -> Self {
        Self {
            revision: v.revision,
            object: v.object,
        }
    }
}

#[pymethods]
impl Versioned {
    /// The object's revision.
    #[getter]
    fn revision(&self) -> &str {
        &self.revision
    }

    /// The object in its topology-document form (a new dict on each access).
    #[getter]
    fn object(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        value_to_py(py, &self.object)
    }

    /// The object's id.
    #[getter]
    fn id(&self) -> &str {
        self.object
            .get("id")
            .and_then(Value::as_str)
            .unwrap_or_default()
    }

    /// `{"revision": ..., "object": {...}}`.
    fn to_dict(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        to_py(
            py,
            &serde_json::json!({"revision": self.revision, "object": self.object}),
        )
    }

    fn __repr__(&self) -> String {
        format!(
            "Versioned(id={:?}, revision={:?})",
            self.id(),
            self.revision
        )
    }
}

/// The result of an accepted write.
#[pyclass(frozen, module = "nanami", name = "Written")]
pub(crate) struct Written {
    response: WriteResponse,
    object: Option<Value>,
}

impl Written {
    fn new(response: WriteResponse, object: Option<Value>) -> Self {
        Self { response, object }
    }
}

#[pymethods]
impl Written {
    /// `region`, `workspace`, `network`, `node` or `gateway`.
    #[getter]
    fn kind(&self) -> &str {
        &self.response.object.kind
    }

    /// The workspace the object is in (or is); `None` for a region.
    #[getter]
    fn workspace(&self) -> Option<&str> {
        self.response.object.workspace.as_deref()
    }

    /// The object's id.
    #[getter]
    fn id(&self) -> &str {
        &self.response.object.id
    }

    /// Its new revision; `None` when it was deleted.
    #[getter]
    fn revision(&self) -> Option<&str> {
        self.response.revision.as_deref()
    }

    /// The object as written by `put_*`; `None` for deletes and node requests
    /// (read it back with the matching getter).
    #[getter]
    fn object(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.object.as_ref().map(|v| value_to_py(py, v)).transpose()
    }

    /// The topology's revision after the write.
    #[getter]
    fn topology_revision(&self) -> u64 {
        self.response.topology_revision
    }

    /// Gateways whose compiled state changed, with their new generation.
    #[getter]
    fn changed(&self) -> std::collections::BTreeMap<String, u64> {
        self.response
            .changed
            .iter()
            .map(|(g, n)| (g.to_string(), *n))
            .collect()
    }

    fn __repr__(&self) -> String {
        format!(
            "Written(kind={:?}, id={:?}, revision={})",
            self.kind(),
            self.id(),
            self.revision()
                .map_or_else(|| "None".to_owned(), |r| format!("{r:?}"))
        )
    }
}

/// One accepted write of the audit trail.
#[pyclass(frozen, module = "nanami", name = "AuditEntry")]
pub(crate) struct AuditEntry(WireAuditEntry);

#[pymethods]
impl AuditEntry {
    /// Its place in the trail (1, 2, ...).
    #[getter]
    fn seq(&self) -> u64 {
        self.0.seq
    }

    /// When it was accepted (Unix milliseconds).
    #[getter]
    fn at_unix_ms(&self) -> u64 {
        self.0.at_unix_ms
    }

    /// The writer's credential id (a digest prefix, not the secret).
    #[getter]
    fn credential_id(&self) -> &str {
        &self.0.credential_id
    }

    /// The writer's credential kind (`platform`, `workspace`, ...).
    #[getter]
    fn credential_kind(&self) -> &str {
        &self.0.credential_kind
    }

    /// The object's kind.
    #[getter]
    fn kind(&self) -> &str {
        &self.0.object.kind
    }

    /// The object's workspace, if it is in one.
    #[getter]
    fn workspace(&self) -> Option<&str> {
        self.0.object.workspace.as_deref()
    }

    /// The object's id (empty for the topology).
    #[getter]
    fn id(&self) -> &str {
        &self.0.object.id
    }

    /// The revision before (`None`: created).
    #[getter]
    fn old_revision(&self) -> Option<&str> {
        self.0.old_revision.as_deref()
    }

    /// The revision after (`None`: deleted).
    #[getter]
    fn new_revision(&self) -> Option<&str> {
        self.0.new_revision.as_deref()
    }

    /// What changed, briefly.
    #[getter]
    fn diff(&self) -> &str {
        &self.0.diff
    }

    /// The JSON form, as plain Python data.
    fn to_dict(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        to_py(py, &self.0)
    }

    fn __repr__(&self) -> String {
        format!(
            "AuditEntry(seq={}, kind={:?}, id={:?}, credential_kind={:?})",
            self.0.seq, self.0.object.kind, self.0.object.id, self.0.credential_kind
        )
    }
}

/// A page of the audit trail.
#[pyclass(frozen, module = "nanami", name = "AuditPage")]
pub(crate) struct AuditPage {
    entries: Vec<AuditEntry>,
    next_after: Option<u64>,
}

#[pymethods]
impl AuditPage {
    /// The entries, oldest first.
    #[getter]
    fn entries(&self, py: Python<'_>) -> PyResult<Vec<Py<AuditEntry>>> {
        self.entries
            .iter()
            .map(|e| Py::new(py, AuditEntry(e.0.clone())))
            .collect()
    }

    /// Pass as `after=` for the next page; `None` when this page is the last.
    #[getter]
    fn next_after(&self) -> Option<u64> {
        self.next_after
    }

    fn __len__(&self) -> usize {
        self.entries.len()
    }

    fn __repr__(&self) -> String {
        format!(
            "AuditPage({} entries, next_after={})",
            self.entries.len(),
            self.next_after
                .map_or_else(|| "None".to_owned(), |n| n.to_string())
        )
    }
}

/// A credential that administers one workspace. Its secret is shown by
/// `expose_secret()` only, never by `repr`/`str`.
#[pyclass(frozen, module = "nanami", name = "WorkspaceCredential")]
pub(crate) struct WorkspaceCredential {
    credential: String,
    workspace: String,
    credential_id: String,
}

#[pymethods]
impl WorkspaceCredential {
    /// The workspace it administers.
    #[getter]
    fn workspace(&self) -> &str {
        &self.workspace
    }

    /// Its id in the audit trail (a digest prefix, not the secret).
    #[getter]
    fn credential_id(&self) -> &str {
        &self.credential_id
    }

    /// The credential's text (`nmw_...`), to store or hand to its user.
    fn expose_secret(&self) -> &str {
        &self.credential
    }

    fn __repr__(&self) -> String {
        format!(
            "WorkspaceCredential(workspace={:?}, credential_id={:?})",
            self.workspace, self.credential_id
        )
    }
}

/// A one-time enrolment token; its secret is shown by `expose_secret()` only.
#[pyclass(frozen, module = "nanami", name = "EnrolmentToken")]
pub(crate) struct EnrolmentToken {
    token: String,
    subject_kind: &'static str,
    subject_id: String,
    expires_at: u64,
}

#[pymethods]
impl EnrolmentToken {
    /// `gateway` or `node`.
    #[getter]
    fn subject_kind(&self) -> &str {
        self.subject_kind
    }

    /// The gateway's or node's id.
    #[getter]
    fn subject_id(&self) -> &str {
        &self.subject_id
    }

    /// When it expires (Unix seconds).
    #[getter]
    fn expires_at(&self) -> u64 {
        self.expires_at
    }

    /// The token's text, for the machine's `--token`.
    fn expose_secret(&self) -> &str {
        &self.token
    }

    fn __repr__(&self) -> String {
        format!(
            "EnrolmentToken({}={:?}, expires_at={})",
            self.subject_kind, self.subject_id, self.expires_at
        )
    }
}
