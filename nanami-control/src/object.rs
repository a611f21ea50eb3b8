//! The object API's edits: one object of the topology document (a region, a
//! workspace's spec, a network, a node, a gateway) created, replaced or deleted,
//! or the whole document imported, under a revision precondition.
//!
//! An object's revision is the digest of its canonical JSON ([`revision`]): it
//! changes exactly when the object does, needs no counter to store, and is the same
//! on every manager that holds the same document. [`apply`] makes the new document
//! and says what it changed; whether that document is valid is the caller's next
//! step (the whole result is validated, so a write either commits whole or changes
//! nothing).

use nanami_model::ErrorKind;
use std::collections::BTreeSet;
use std::fmt;

use std::sync::Arc;

use nanami_model::doc::{
    Document, GatewayDoc, NetworkDoc, NodeDoc, PathPart, RegionDoc, UnknownField, WorkspaceDoc,
    WorkspaceSpec,
};
use serde::Serialize;

use crate::audit;
use crate::docs::Docs;

/// Kinds of object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ObjectKind {
    /// A catalog region (platform scope).
    Region,
    /// A workspace's spec: tenant and region access grants (platform scope).
    Workspace,
    /// A network of a workspace.
    Network,
    /// A node of a workspace.
    Node,
    /// A gateway of a workspace.
    Gateway,
    /// The whole document (import and export).
    Topology,
}

impl ObjectKind {
    /// Its name in paths and the audit trail.
    pub fn name(self) -> &'static str {
        match self {
            Self::Region => "region",
            Self::Workspace => "workspace",
            Self::Network => "network",
            Self::Node => "node",
            Self::Gateway => "gateway",
            Self::Topology => "topology",
        }
    }
}

/// One object: its kind, its workspace (for a workspace's contents) and its id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct ObjectRef {
    /// Its kind.
    pub kind: ObjectKind,
    /// The workspace it belongs to (its own id for a workspace; `None` for regions
    /// and the topology).
    pub workspace: Option<String>,
    /// Its id (empty for the topology).
    pub id: String,
}

impl ObjectRef {
    /// The object `id` of `kind` (in `workspace`, for a workspace's contents and
    /// for a workspace itself).
    pub fn new(kind: ObjectKind, workspace: Option<&str>, id: &str) -> Self {
        Self {
            kind,
            workspace: workspace.map(str::to_owned),
            id: id.to_owned(),
        }
    }
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.kind, &self.workspace) {
            (ObjectKind::Topology, _) => f.write_str("the topology"),
            (ObjectKind::Region | ObjectKind::Workspace, _) | (_, None) => {
                write!(f, "{} {:?}", self.kind.name(), self.id)
            }
            (_, Some(ws)) => write!(f, "{} {:?} of workspace {ws:?}", self.kind.name(), self.id),
        }
    }
}

/// What the writer believes about the object's current revision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// Nothing: the write applies to whatever is there (no `If-Match`).
    Any,
    /// The object exists at this revision (`If-Match: "<revision>"`).
    Match(String),
    /// The object exists (`If-Match: *`).
    Exists,
    /// The object does not exist (`If-None-Match: *`): create only.
    Absent,
}

impl Precondition {
    fn holds(&self, current: Option<&str>) -> bool {
        match (self, current) {
            (Self::Any, _) | (Self::Exists, Some(_)) | (Self::Absent, None) => true,
            (Self::Match(want), Some(have)) => want == have,
            (Self::Exists | Self::Match(_), None) | (Self::Absent, Some(_)) => false,
        }
    }
}

/// One change to the document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Edit {
    /// Creates or replaces a catalog region.
    PutRegion(RegionDoc),
    /// Deletes a catalog region (refused by validation while a workspace or a
    /// gateway uses it).
    DeleteRegion(String),
    /// Creates a workspace (empty) or replaces its spec (its contents stay).
    PutWorkspace(WorkspaceSpec),
    /// Deletes a workspace with everything in it.
    DeleteWorkspace(String),
    /// Creates or replaces a network of a workspace.
    PutNetwork(String, NetworkDoc),
    /// Deletes a network of a workspace.
    DeleteNetwork(String, String),
    /// Creates or replaces a node of a workspace.
    PutNode(String, NodeDoc),
    /// Deletes a node of a workspace.
    DeleteNode(String, String),
    /// Creates or replaces a gateway of a workspace.
    PutGateway(String, GatewayDoc),
    /// Deletes a gateway of a workspace.
    DeleteGateway(String, String),
    /// Sets a node's lifecycle status (`active`, `disabled`, `revoked`, ...).
    SetNodeStatus {
        /// Its workspace.
        workspace: String,
        /// The node.
        node: String,
        /// The new status.
        status: String,
    },
    /// Replaces a node's public key.
    RotateKey {
        /// Its workspace.
        workspace: String,
        /// The node.
        node: String,
        /// The new public key, base64.
        public_key: String,
    },
    /// Replaces the whole document.
    Import(Document),
}

impl Edit {
    /// The object it changes.
    pub fn object(&self) -> ObjectRef {
        use ObjectKind as K;
        match self {
            Self::PutRegion(r) => ObjectRef::new(K::Region, None, &r.id),
            Self::DeleteRegion(id) => ObjectRef::new(K::Region, None, id),
            Self::PutWorkspace(w) => ObjectRef::new(K::Workspace, Some(&w.id), &w.id),
            Self::DeleteWorkspace(id) => ObjectRef::new(K::Workspace, Some(id), id),
            Self::PutNetwork(ws, n) => ObjectRef::new(K::Network, Some(ws), &n.id),
            Self::DeleteNetwork(ws, id) => ObjectRef::new(K::Network, Some(ws), id),
            Self::PutNode(ws, n) => ObjectRef::new(K::Node, Some(ws), &n.id),
            Self::DeleteNode(ws, id) => ObjectRef::new(K::Node, Some(ws), id),
            Self::SetNodeStatus {
                workspace, node, ..
            }
            | Self::RotateKey {
                workspace, node, ..
            } => ObjectRef::new(K::Node, Some(workspace), node),
            Self::PutGateway(ws, g) => ObjectRef::new(K::Gateway, Some(ws), &g.id),
            Self::DeleteGateway(ws, id) => ObjectRef::new(K::Gateway, Some(ws), id),
            Self::Import(_) => ObjectRef::new(K::Topology, None, ""),
        }
    }
}

/// Why an edit was refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    /// The object (or the workspace it would go in) does not exist.
    #[error("{0} does not exist")]
    NotFound(ObjectRef),
    /// The object's revision is not the one the writer named.
    #[error("{object} is at revision {}, not the one this write expects; read it again and retry", current.as_deref().unwrap_or("(absent)"))]
    PreconditionFailed {
        /// The object.
        object: ObjectRef,
        /// Its current revision (`None`: it does not exist).
        current: Option<String>,
    },
}

impl EditError {
    /// Always [`ErrorKind::BadInput`]: the object named, or the precondition given.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::BadInput
    }
}

/// Which workspaces an edit may change the compiled state of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Touched {
    /// Any (a region changed: every workspace that may use it).
    All,
    /// These workspace ids only.
    Workspaces(BTreeSet<String>),
}

/// An accepted edit's result, before validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The whole new document.
    pub docs: Docs,
    /// The object changed.
    pub object: ObjectRef,
    /// Its revision before (`None`: created).
    pub old_revision: Option<String>,
    /// Its revision after (`None`: deleted).
    pub new_revision: Option<String>,
    /// A short, human description of the change (see [`audit::diff`]).
    pub diff: String,
    /// What a compile must cover.
    pub touched: Touched,
}

impl Applied {
    /// Whether the edit changed nothing (the object was already so).
    pub fn is_noop(&self) -> bool {
        self.old_revision == self.new_revision
    }
}

/// An object's revision: the first 8 bytes of the SHA-256 of its JSON, in hex.
pub fn revision<T: Serialize + std::fmt::Debug + ?Sized>(object: &T) -> String {
    use sha2::{Digest as _, Sha256};
    // The document's types are strings, numbers, booleans and lists: serializing
    // them cannot fail. If it ever did, the digest of the Debug form still tells
    // objects apart (never one empty text shared by every object, which would let
    // an `If-Match` of one pass for another).
    let json = serde_json::to_vec(object).unwrap_or_else(|_| format!("{object:?}").into_bytes());
    Sha256::digest(&json)
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The revision of a workspace's spec.
pub fn workspace_revision(ws: &WorkspaceDoc) -> String {
    revision(&ws.spec())
}

/// Finds a workspace.
pub fn workspace<'a>(doc: &'a Docs, id: &str) -> Option<&'a WorkspaceDoc> {
    doc.workspace(id)
}

/// The current revision of `object` in `doc` (`None`: absent).
pub fn current_revision(doc: &Docs, object: &ObjectRef) -> Option<String> {
    let ws = || workspace(doc, object.workspace.as_deref().unwrap_or_default());
    match object.kind {
        ObjectKind::Topology => Some(revision(&doc.to_document())),
        ObjectKind::Region => doc.regions.iter().find(|r| r.id == object.id).map(revision),
        ObjectKind::Workspace => workspace(doc, &object.id).map(workspace_revision),
        ObjectKind::Network => ws()?
            .networks
            .iter()
            .find(|n| n.id == object.id)
            .map(revision),
        ObjectKind::Node => ws()?.nodes.iter().find(|n| n.id == object.id).map(revision),
        ObjectKind::Gateway => ws()?
            .gateways
            .iter()
            .find(|g| g.id == object.id)
            .map(revision),
    }
}

/// One object of `doc` as JSON, with its revision (`None`: absent).
pub fn get(doc: &Docs, object: &ObjectRef) -> Option<(String, serde_json::Value)> {
    Some((current_revision(doc, object)?, json_of(doc, object)?))
}

/// Every object of `kind` (in `workspace`, for a workspace's contents) as JSON
/// with its revision, in document order. Empty when the workspace does not exist.
pub fn list(
    doc: &Docs,
    kind: ObjectKind,
    workspace: Option<&str>,
) -> Vec<(String, serde_json::Value)> {
    fn entry<T: Serialize + std::fmt::Debug>(v: &T) -> (String, serde_json::Value) {
        (
            revision(v),
            serde_json::to_value(v).unwrap_or(serde_json::Value::Null),
        )
    }
    let ws = || self::workspace(doc, workspace.unwrap_or_default());
    match kind {
        ObjectKind::Topology => Vec::new(),
        ObjectKind::Region => doc.regions.iter().map(entry).collect(),
        ObjectKind::Workspace => doc.workspaces.values().map(|w| entry(&w.spec())).collect(),
        ObjectKind::Network => ws()
            .map(|w| w.networks.iter().map(entry).collect())
            .unwrap_or_default(),
        ObjectKind::Node => ws()
            .map(|w| w.nodes.iter().map(entry).collect())
            .unwrap_or_default(),
        ObjectKind::Gateway => ws()
            .map(|w| w.gateways.iter().map(entry).collect())
            .unwrap_or_default(),
    }
}

impl Edit {
    /// The edit that deletes `object` (`None` for the topology, which is only
    /// replaced).
    pub fn delete(object: &ObjectRef) -> Option<Self> {
        let ws = object.workspace.clone().unwrap_or_default();
        let id = object.id.clone();
        Some(match object.kind {
            ObjectKind::Region => Self::DeleteRegion(id),
            ObjectKind::Workspace => Self::DeleteWorkspace(id),
            ObjectKind::Network => Self::DeleteNetwork(ws, id),
            ObjectKind::Node => Self::DeleteNode(ws, id),
            ObjectKind::Gateway => Self::DeleteGateway(ws, id),
            ObjectKind::Topology => return None,
        })
    }
}

/// The issues of the unknown fields of a PUT's body (paths from the body's root),
/// exactly as validating a whole document holding it reports them
/// (`workspaces[acme].nodes[n1].colour: unknown field ...; a node has ...`).
pub fn unknown_field_issues(edit: &Edit, unknown: &[UnknownField]) -> Vec<String> {
    let empty_ws = |id: &str| WorkspaceDoc {
        id: id.to_owned(),
        tenant: String::new(),
        regions: Vec::new(),
        networks: Vec::new(),
        nodes: Vec::new(),
        gateways: Vec::new(),
    };
    let mut doc = Document {
        version: nanami_model::doc::VERSION,
        regions: Vec::new(),
        workspaces: Vec::new(),
        unknown_fields: Vec::new(),
    };
    let (prefix, list): (Vec<PathPart>, &str) = match edit {
        Edit::PutRegion(r) => {
            doc.regions.push(r.clone());
            (vec![PathPart::Field("regions".into())], "")
        }
        Edit::PutWorkspace(w) => {
            let mut ws = empty_ws(&w.id);
            ws.tenant.clone_from(&w.tenant);
            ws.regions.clone_from(&w.regions);
            doc.workspaces.push(ws);
            (vec![PathPart::Field("workspaces".into())], "")
        }
        Edit::PutNetwork(id, n) => {
            let mut ws = empty_ws(id);
            ws.networks.push(n.clone());
            doc.workspaces.push(ws);
            (Vec::new(), "networks")
        }
        Edit::PutNode(id, n) => {
            let mut ws = empty_ws(id);
            ws.nodes.push(n.clone());
            doc.workspaces.push(ws);
            (Vec::new(), "nodes")
        }
        Edit::PutGateway(id, g) => {
            let mut ws = empty_ws(id);
            ws.gateways.push(g.clone());
            doc.workspaces.push(ws);
            (Vec::new(), "gateways")
        }
        Edit::DeleteRegion(_)
        | Edit::DeleteWorkspace(_)
        | Edit::DeleteNetwork(..)
        | Edit::DeleteNode(..)
        | Edit::DeleteGateway(..)
        | Edit::SetNodeStatus { .. }
        | Edit::RotateKey { .. }
        | Edit::Import(_) => return Vec::new(),
    };
    let prefix = if list.is_empty() {
        let mut p = prefix;
        p.push(PathPart::Index(0));
        p
    } else {
        vec![
            PathPart::Field("workspaces".into()),
            PathPart::Index(0),
            PathPart::Field(list.into()),
            PathPart::Index(0),
        ]
    };
    doc.unknown_fields = unknown
        .iter()
        .map(|f| UnknownField {
            path: prefix.iter().chain(&f.path).cloned().collect(),
        })
        .collect();
    nanami_model::validate::unknown_field_issues(&doc)
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// Replaces the item of `list` with `new`'s id, or appends `new`.
fn upsert<T>(list: &mut Vec<T>, new: T, key: impl Fn(&T) -> &str) {
    match list.iter().position(|x| key(x) == key(&new)) {
        Some(i) => list[i] = new,
        None => list.push(new),
    }
}

/// Removes the item with `id` from `list`, if it is there.
fn remove<T>(list: &mut Vec<T>, id: &str, key: impl Fn(&T) -> &str) {
    list.retain(|x| key(x) != id);
}

/// Changes node `id` of `w` with `change` (nothing when it has none).
fn on_node(w: &mut WorkspaceDoc, id: &str, change: impl FnOnce(&mut NodeDoc)) {
    if let Some(n) = w.nodes.iter_mut().find(|n| n.id == id) {
        change(n);
    }
}

/// Changes workspace `ws`'s contents with `change`: the workspace is then the
/// one touched.
fn contents(
    doc: &mut Docs,
    ws: String,
    change: impl FnOnce(&mut WorkspaceDoc),
) -> Result<Touched, EditError> {
    change(workspace_mut(doc, &ws)?);
    Ok(Touched::Workspaces(BTreeSet::from([ws])))
}

/// The workspace `id` of `doc`, mutably, or [`EditError::NotFound`] naming it.
fn workspace_mut<'a>(doc: &'a mut Docs, id: &str) -> Result<&'a mut WorkspaceDoc, EditError> {
    doc.workspace_mut(id)
        .ok_or_else(|| EditError::NotFound(ObjectRef::new(ObjectKind::Workspace, Some(id), id)))
}

/// The JSON of `object` in `doc`, for the audit diff.
fn json_of(doc: &Docs, object: &ObjectRef) -> Option<serde_json::Value> {
    fn value<T: Serialize>(v: &T) -> serde_json::Value {
        serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
    }
    let ws = || workspace(doc, object.workspace.as_deref().unwrap_or_default());
    match object.kind {
        ObjectKind::Topology => None,
        ObjectKind::Region => doc.regions.iter().find(|r| r.id == object.id).map(value),
        ObjectKind::Workspace => workspace(doc, &object.id).map(|w| value(&w.spec())),
        ObjectKind::Network => ws()?.networks.iter().find(|n| n.id == object.id).map(value),
        ObjectKind::Node => ws()?.nodes.iter().find(|n| n.id == object.id).map(value),
        ObjectKind::Gateway => ws()?.gateways.iter().find(|g| g.id == object.id).map(value),
    }
}

/// Applies `edit` to `doc` if `precondition` holds for the object it changes.
/// The result is not validated yet.
pub fn apply(doc: &Docs, edit: Edit, precondition: &Precondition) -> Result<Applied, EditError> {
    let object = edit.object();
    let old_revision = current_revision(doc, &object);
    if !precondition.holds(old_revision.as_deref()) {
        return Err(EditError::PreconditionFailed {
            object,
            current: old_revision,
        });
    }
    let must_exist = matches!(
        edit,
        Edit::DeleteRegion(_)
            | Edit::DeleteWorkspace(_)
            | Edit::DeleteNetwork(..)
            | Edit::DeleteNode(..)
            | Edit::DeleteGateway(..)
            | Edit::SetNodeStatus { .. }
            | Edit::RotateKey { .. }
    );
    if must_exist && old_revision.is_none() {
        // The workspace itself missing is the clearer answer.
        if let Some(ws) = object.workspace.as_deref() {
            if workspace(doc, ws).is_none() {
                return Err(EditError::NotFound(ObjectRef::new(
                    ObjectKind::Workspace,
                    Some(ws),
                    ws,
                )));
            }
        }
        return Err(EditError::NotFound(object));
    }
    let old_json = json_of(doc, &object);
    let mut new = doc.clone();
    let touched = match edit {
        Edit::PutRegion(r) => {
            upsert(new.regions_mut(), r, |r| &r.id);
            Touched::All
        }
        Edit::DeleteRegion(id) => {
            remove(new.regions_mut(), &id, |r| &r.id);
            Touched::All
        }
        Edit::PutWorkspace(spec) => {
            let id = spec.id.clone();
            match new.workspace_mut(&id) {
                Some(ws) => {
                    ws.tenant = spec.tenant;
                    ws.regions = spec.regions;
                }
                None => {
                    new.workspaces.insert(
                        id.clone(),
                        Arc::new(WorkspaceDoc {
                            id: spec.id,
                            tenant: spec.tenant,
                            regions: spec.regions,
                            networks: Vec::new(),
                            nodes: Vec::new(),
                            gateways: Vec::new(),
                        }),
                    );
                }
            }
            Touched::Workspaces(BTreeSet::from([id]))
        }
        Edit::DeleteWorkspace(id) => {
            new.workspaces.remove(&id);
            Touched::Workspaces(BTreeSet::from([id]))
        }
        Edit::PutNetwork(ws, n) => {
            contents(&mut new, ws, |w| upsert(&mut w.networks, n, |n| &n.id))?
        }
        Edit::DeleteNetwork(ws, id) => {
            contents(&mut new, ws, |w| remove(&mut w.networks, &id, |n| &n.id))?
        }
        Edit::PutNode(ws, n) => contents(&mut new, ws, |w| upsert(&mut w.nodes, n, |n| &n.id))?,
        Edit::DeleteNode(ws, id) => {
            contents(&mut new, ws, |w| remove(&mut w.nodes, &id, |n| &n.id))?
        }
        Edit::SetNodeStatus {
            workspace,
            node,
            status,
        } => contents(&mut new, workspace, |w| {
            on_node(w, &node, |n| n.status = status)
        })?,
        Edit::RotateKey {
            workspace,
            node,
            public_key,
        } => contents(&mut new, workspace, |w| {
            on_node(w, &node, |n| n.public_key = public_key)
        })?,
        Edit::PutGateway(ws, g) => {
            contents(&mut new, ws, |w| upsert(&mut w.gateways, g, |g| &g.id))?
        }
        Edit::DeleteGateway(ws, id) => {
            contents(&mut new, ws, |w| remove(&mut w.gateways, &id, |g| &g.id))?
        }
        Edit::Import(document) => {
            let imported = Docs::from_document(&document);
            let touched = changed_workspaces(doc, &imported);
            new = imported;
            touched
        }
    };
    let new_revision = current_revision(&new, &object);
    let diff = match object.kind {
        ObjectKind::Topology => audit::document_diff(doc, &new),
        ObjectKind::Region
        | ObjectKind::Workspace
        | ObjectKind::Network
        | ObjectKind::Node
        | ObjectKind::Gateway => audit::diff(old_json.as_ref(), json_of(&new, &object).as_ref()),
    };
    Ok(Applied {
        docs: new,
        object,
        old_revision,
        new_revision,
        diff,
        touched,
    })
}

/// The workspaces whose documents differ between `old` and `new` (all of them
/// when the catalog changed).
fn changed_workspaces(old: &Docs, new: &Docs) -> Touched {
    if old.regions != new.regions {
        return Touched::All;
    }
    let ids: BTreeSet<&String> = old.workspaces.keys().chain(new.workspaces.keys()).collect();
    Touched::Workspaces(
        ids.into_iter()
            .filter(|id| old.workspace_differs(new, id))
            .cloned()
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc() -> Docs {
        Docs::from_document(
            &Document::from_yaml(
                "version: 1
regions: [{id: eu, state: active}]
workspaces:
  - id: acme
    tenant: Acme
    regions: [eu]
    networks: [{id: corp, overlay: 10.0.0.0/24}]
    nodes:
      - id: n1
        public_key: 'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA='
        status: active
        memberships: [{network: corp}]
",
            )
            .expect("valid yaml"),
        )
    }

    fn disable() -> Edit {
        Edit::SetNodeStatus {
            workspace: "acme".into(),
            node: "n1".into(),
            status: "disabled".into(),
        }
    }

    #[test]
    fn a_stale_revision_is_refused_and_the_current_one_named() {
        let d = doc();
        let node = disable().object();
        let before = current_revision(&d, &node).expect("exists");
        let applied = apply(&d, disable(), &Precondition::Match(before.clone())).expect("applies");
        assert_ne!(applied.new_revision.as_deref(), Some(before.as_str()));
        assert_eq!(applied.diff, "status: \"active\" → \"disabled\"");
        let again = apply(
            &applied.docs,
            Edit::SetNodeStatus {
                workspace: "acme".into(),
                node: "n1".into(),
                status: "revoked".into(),
            },
            &Precondition::Match(before),
        );
        assert_eq!(
            again,
            Err(EditError::PreconditionFailed {
                object: node,
                current: applied.new_revision
            })
        );
    }

    #[test]
    fn create_only_and_must_exist() {
        let d = doc();
        assert!(matches!(
            apply(&d, disable(), &Precondition::Absent),
            Err(EditError::PreconditionFailed { .. })
        ));
        let missing = Edit::DeleteNode("acme".into(), "n9".into());
        assert!(matches!(
            apply(&d, missing, &Precondition::Any),
            Err(EditError::NotFound(ObjectRef {
                kind: ObjectKind::Node,
                ..
            }))
        ));
        let elsewhere = Edit::DeleteNode("globex".into(), "n1".into());
        assert!(matches!(
            apply(&d, elsewhere, &Precondition::Any),
            Err(EditError::NotFound(ObjectRef {
                kind: ObjectKind::Workspace,
                ..
            }))
        ));
    }

    #[test]
    fn a_workspace_spec_change_keeps_its_contents() {
        let d = doc();
        let spec = WorkspaceSpec {
            id: "acme".into(),
            tenant: "Acme Corp".into(),
            regions: vec!["eu".into()],
        };
        let applied = apply(&d, Edit::PutWorkspace(spec), &Precondition::Exists).expect("applies");
        let ws = workspace(&applied.docs, "acme").expect("still there");
        assert_eq!(ws.tenant, "Acme Corp");
        assert_eq!(ws.nodes.len(), 1);
        assert_eq!(
            applied.touched,
            Touched::Workspaces(BTreeSet::from(["acme".to_owned()]))
        );
    }

    #[test]
    fn an_import_touches_only_the_workspaces_it_changes() {
        let d = doc();
        let mut other = d.to_document();
        other.workspaces.push(WorkspaceDoc {
            id: "globex".into(),
            tenant: "Globex".into(),
            regions: vec!["eu".into()],
            networks: Vec::new(),
            nodes: Vec::new(),
            gateways: Vec::new(),
        });
        let applied = apply(&d, Edit::Import(other), &Precondition::Any).expect("applies");
        assert_eq!(
            applied.touched,
            Touched::Workspaces(BTreeSet::from(["globex".to_owned()]))
        );
        assert_eq!(applied.diff, "workspaces created: globex");
    }
}
