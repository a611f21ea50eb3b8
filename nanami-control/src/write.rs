//! One write of the object API, decided without I/O: the edit applied under its
//! precondition, the result validated (one workspace against the rest when the
//! change stays inside workspaces, the whole document otherwise), and what must be
//! compiled and stored. The caller compiles ([`crate::compile_changed`] over
//! [`Prepared::gateways`]), stores and publishes.

use nanami_model::ErrorKind;
use std::collections::BTreeSet;
use std::sync::Arc;

use nanami_model::doc::{RegionDoc, WorkspaceDoc};
use nanami_model::{GatewayId, Topology, ValidationErrors, WorkspaceId};

use crate::docs::Docs;
use crate::incremental::{gateways_in_scope, to_json, Scope};
use crate::object::{apply, Applied, Edit, EditError, ObjectKind, Precondition, Touched};
use nanami_model::SerializeError;

/// Why a write was refused; nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The object is missing or not at the expected revision.
    #[error(transparent)]
    Edit(#[from] EditError),
    /// The result would not be a valid topology: every problem, with its path.
    #[error(transparent)]
    Invalid(#[from] ValidationErrors),
}

impl WriteError {
    /// Always [`ErrorKind::BadInput`]: the edit, or the document it makes.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::BadInput
    }
}

/// An accepted write, before it is compiled and stored.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The edit's result and its audit facts.
    pub applied: Applied,
    /// The validated topology after the write.
    pub topology: Topology,
    /// The workspaces it touched (empty when it touched everything).
    pub touched: BTreeSet<WorkspaceId>,
}

impl Prepared {
    /// What compiling it must cover.
    pub fn scope(&self) -> Scope<'_> {
        match self.applied.touched {
            Touched::All => Scope::All,
            Touched::Workspaces(_) => Scope::Workspaces(&self.touched),
        }
    }

    /// The gateways to compile: those of the touched workspaces before (`before`)
    /// and after the write, or every gateway (of the topology and of `known`).
    pub fn gateways<'a>(
        &self,
        before: Option<&Topology>,
        known: impl IntoIterator<Item = &'a GatewayId>,
    ) -> BTreeSet<GatewayId> {
        gateways_in_scope(self.scope(), before, &self.topology, known)
    }

    /// The document rows it changes: all of them for an import, the catalog for a
    /// region, the touched workspaces otherwise (`None`: deleted).
    pub fn stored(&self) -> Result<StoredDocuments, SerializeError> {
        let docs = &self.applied.docs;
        let json = |w: &WorkspaceDoc| to_json(w, "a workspace document");
        let catalog = || to_json(docs.regions.as_ref(), "the region catalog");
        Ok(match self.applied.object.kind {
            ObjectKind::Topology => StoredDocuments {
                catalog: Some(catalog()?),
                workspaces: docs
                    .workspaces
                    .iter()
                    .map(|(id, w)| Ok((id.clone(), Some(json(w)?))))
                    .collect::<Result<_, SerializeError>>()?,
                replace_all: true,
            },
            ObjectKind::Region => StoredDocuments {
                catalog: Some(catalog()?),
                workspaces: Vec::new(),
                replace_all: false,
            },
            ObjectKind::Workspace
            | ObjectKind::Network
            | ObjectKind::Node
            | ObjectKind::Gateway => {
                let ids: Vec<String> = match &self.applied.touched {
                    Touched::Workspaces(ids) => ids.iter().cloned().collect(),
                    Touched::All => Vec::new(),
                };
                StoredDocuments {
                    catalog: None,
                    workspaces: ids
                        .into_iter()
                        .map(|id| {
                            let doc = docs.workspace(&id).map(json).transpose()?;
                            Ok((id, doc))
                        })
                        .collect::<Result<_, SerializeError>>()?,
                    replace_all: false,
                }
            }
        })
    }
}

/// The document rows a write stores.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredDocuments {
    /// The region catalog (JSON), when it changed.
    pub catalog: Option<String>,
    /// Workspace documents (JSON) written, or deleted (`None`), by id.
    pub workspaces: Vec<(String, Option<String>)>,
    /// Every other workspace row goes (an import).
    pub replace_all: bool,
}

/// Decides one write against the documents and topology in force (`None`: no
/// topology yet).
pub fn handle_write(
    docs: &Docs,
    topology: Option<&Topology>,
    edit: Edit,
    precondition: &Precondition,
) -> Result<Prepared, WriteError> {
    // An import is validated whole: its text may hold what the documents cannot
    // (duplicate ids, unknown fields, another version).
    let imported = if let Edit::Import(document) = &edit {
        Some(Topology::from_document(document)?)
    } else {
        None
    };
    let applied = apply(docs, edit, precondition)?;
    let touched: BTreeSet<WorkspaceId> = match &applied.touched {
        Touched::All => BTreeSet::new(),
        Touched::Workspaces(ids) => ids
            .iter()
            .filter_map(|id| WorkspaceId::new(id).ok())
            .collect(),
    };
    let topology = match (imported, &applied.touched) {
        (Some(topology), _) => topology,
        (None, Touched::All) => Topology::from_document(&applied.docs.to_document())?,
        // A change inside workspaces: those are validated against the rest, which
        // is not looked at again.
        (None, Touched::Workspaces(ids)) => {
            let mut t = match topology {
                Some(t) => t.clone(),
                None => Topology::from_document(&Docs::default().to_document())?,
            };
            for id in ids {
                t = match (applied.docs.workspace(id), WorkspaceId::new(id)) {
                    (Some(ws), _) => t.with_workspace(ws)?,
                    (None, Ok(id)) => t.without_workspace(&id),
                    (None, Err(_)) => t,
                };
            }
            t
        }
    };
    Ok(Prepared {
        applied,
        topology,
        touched,
    })
}

/// Follows documents another writer stored: `regions` is the catalog in force,
/// `ids` every workspace in force, `written` the workspace documents written since
/// `docs`. The result is validated as [`handle_write`] validates: the changed
/// workspaces against the rest when the catalog is unchanged, the whole document
/// otherwise. A store only holds what a writer validated, so an error here means
/// writers disagree on the rules (a newer manager wrote it).
pub fn follow_stored(
    docs: &Docs,
    topology: Option<&Topology>,
    regions: Vec<RegionDoc>,
    ids: &BTreeSet<String>,
    written: Vec<WorkspaceDoc>,
) -> Result<(Docs, Topology), ValidationErrors> {
    let mut next = docs.clone();
    let mut changed: BTreeSet<String> = docs
        .workspaces
        .keys()
        .filter(|id| !ids.contains(*id))
        .cloned()
        .collect();
    for id in &changed {
        next.workspaces.remove(id);
    }
    for ws in written {
        changed.insert(ws.id.clone());
        next.workspaces.insert(ws.id.clone(), Arc::new(ws));
    }
    let catalog_changed = *next.regions != regions;
    if catalog_changed {
        next.regions = Arc::new(regions);
    }
    let topology = match topology {
        Some(t) if !catalog_changed => {
            let mut t = t.clone();
            for id in &changed {
                t = match (next.workspace(id), WorkspaceId::new(id)) {
                    (Some(ws), _) => t.with_workspace(ws)?,
                    (None, Ok(id)) => t.without_workspace(&id),
                    (None, Err(_)) => t,
                };
            }
            t
        }
        Some(_) | None => Topology::from_document(&next.to_document())?,
    };
    Ok((next, topology))
}

#[cfg(test)]
mod tests {
    use super::*;
    use nanami_model::doc::{Document, NodeDoc};
    use std::collections::BTreeMap;

    fn key(n: u8) -> String {
        let mut seed = [n; 32];
        seed[0] = 1;
        nanami_model::PrivateKey::from_bytes(seed)
            .public_key()
            .to_base64()
    }

    fn platform() -> (Docs, Topology) {
        let mut ws = String::new();
        for (i, name) in ["acme", "globex"].iter().enumerate() {
            let k = |j: u8| key(u8::try_from(i).unwrap_or(0) * 10 + j + 2);
            ws.push_str(&format!(
                "  - id: {name}
    tenant: {name}
    regions: [lab]
    networks: [{{id: corp, overlay: 100.64.0.0/24}}]
    nodes:
      - {{id: {name}-gw, public_key: '{}', status: active, memberships: [{{network: corp}}]}}
      - {{id: {name}-n1, public_key: '{}', status: active, memberships: [{{network: corp}}]}}
    gateways:
      - {{id: {name}-gw, node: {name}-gw, region: lab, networks: [corp], roles: [ingress], endpoint: '192.0.2.{}:51820', listen_port: 51820}}
",
                k(0),
                k(1),
                i + 1
            ));
        }
        let doc = Document::from_yaml(&format!(
            "version: 1\nregions: [{{id: lab, state: active}}]\nworkspaces:\n{ws}"
        ))
        .expect("valid yaml");
        (
            Docs::from_document(&doc),
            Topology::from_document(&doc).expect("valid topology"),
        )
    }

    fn disable(ws: &str, node: &str) -> Edit {
        Edit::SetNodeStatus {
            workspace: ws.into(),
            node: node.into(),
            status: "disabled".into(),
        }
    }

    #[test]
    fn a_node_change_covers_its_workspace_and_stores_its_row_only() {
        let (docs, t) = platform();
        let p = handle_write(
            &docs,
            Some(&t),
            disable("acme", "acme-n1"),
            &Precondition::Any,
        )
        .expect("accepted");
        let gws: Vec<String> = p
            .gateways(Some(&t), [])
            .iter()
            .map(|g| g.to_string())
            .collect();
        assert_eq!(gws, ["acme-gw"]);
        let stored = p.stored().expect("serializes");
        assert_eq!(stored.catalog, None);
        assert_eq!(stored.workspaces.len(), 1);
        assert_eq!(stored.workspaces[0].0, "acme");
        assert!(!stored.replace_all);
        // Compiling it bumps acme-gw alone (it served acme-n1).
        let health = nanami_model::Health::all_up();
        let all = gateways_in_scope(Scope::All, None, &t, []);
        let before = crate::compile_changed(&BTreeMap::new(), &all, &t, &health).expect("compiles");
        let known = before
            .iter()
            .map(|(id, (row, _))| {
                let digest = crate::content_digest(&row.state_json, &row.targets_json, None);
                (id.clone(), (row.generation, digest))
            })
            .collect();
        let changed =
            crate::compile_changed(&known, &p.gateways(Some(&t), []), &p.topology, &health)
                .expect("compiles");
        assert_eq!(changed.len(), 1);
        assert_eq!(
            changed.values().next().map(|(row, _)| row.generation),
            Some(2)
        );
    }

    /// What one writer stored, followed by another from the same documents,
    /// gives that writer's documents and topology.
    #[test]
    fn following_stored_documents_gives_the_writers_result() {
        let (docs, t) = platform();
        let follow = |p: &Prepared| {
            let written = p
                .applied
                .docs
                .workspaces
                .values()
                .filter(|w| docs.workspace_differs(&p.applied.docs, &w.id))
                .map(|w| w.as_ref().clone())
                .collect();
            let ids = p.applied.docs.workspaces.keys().cloned().collect();
            let regions = p.applied.docs.regions.as_ref().clone();
            follow_stored(&docs, Some(&t), regions, &ids, written).expect("valid")
        };
        let changed = handle_write(
            &docs,
            Some(&t),
            disable("acme", "acme-n1"),
            &Precondition::Any,
        )
        .expect("accepted");
        let (d, topology) = follow(&changed);
        assert_eq!(d, changed.applied.docs);
        assert_eq!(topology, changed.topology);
        let deleted = handle_write(
            &docs,
            Some(&t),
            Edit::DeleteWorkspace("globex".into()),
            &Precondition::Any,
        )
        .expect("accepted");
        let (d, topology) = follow(&deleted);
        assert_eq!(d, deleted.applied.docs);
        assert_eq!(topology, deleted.topology);
        assert!(topology.gateway_count() < t.gateway_count());
        // A new catalog is validated whole: a region still used cannot go.
        let ids = docs.workspaces.keys().cloned().collect();
        let err = follow_stored(&docs, Some(&t), Vec::new(), &ids, Vec::new())
            .expect_err("the workspaces' region is gone");
        assert!(!err.0.is_empty());
    }

    #[test]
    fn a_clash_across_workspaces_and_a_stale_revision_are_refused() {
        let (docs, t) = platform();
        let theirs = docs.workspace("globex").expect("exists").nodes[1]
            .public_key
            .clone();
        let node = NodeDoc {
            id: "acme-n2".into(),
            public_key: theirs,
            status: "active".into(),
            endpoints: Vec::new(),
            memberships: Vec::new(),
            exit: false,
        };
        let e = handle_write(
            &docs,
            Some(&t),
            Edit::PutNode("acme".into(), node),
            &Precondition::Any,
        )
        .expect_err("refused");
        let WriteError::Invalid(issues) = e else {
            panic!("{e:?}")
        };
        assert_eq!(issues.0.len(), 1);
        assert!(issues.0[0].message.contains("globex"), "{issues}");
        let e = handle_write(
            &docs,
            Some(&t),
            disable("acme", "acme-n1"),
            &Precondition::Match("0000000000000000".into()),
        )
        .expect_err("stale");
        assert!(matches!(
            e,
            WriteError::Edit(EditError::PreconditionFailed { .. })
        ));
    }
}
