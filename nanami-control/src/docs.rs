//! The topology document as the control plane holds it: the region catalog and
//! each workspace's document, in persistent maps, so that a change to one
//! workspace copies that workspace and nothing else.

use std::sync::Arc;

use imbl::OrdMap;
use nanami_model::doc::{Document, RegionDoc, WorkspaceDoc, VERSION};

/// The region catalog and every workspace's document, by workspace id.
///
/// Cloning costs nothing; [`Docs::workspace_mut`] copies the one workspace it
/// changes. [`Docs::to_document`] is the whole document (workspaces in id order),
/// for export and for whole-document validation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Docs {
    /// The region catalog, as written.
    pub regions: Arc<Vec<RegionDoc>>,
    /// Every workspace's document, by its id as written.
    pub workspaces: OrdMap<String, Arc<WorkspaceDoc>>,
}

impl Docs {
    /// The documents of a catalog and workspaces (keyed by their ids; a later
    /// workspace with an id already seen replaces the earlier one).
    pub fn new(
        regions: Vec<RegionDoc>,
        workspaces: impl IntoIterator<Item = WorkspaceDoc>,
    ) -> Self {
        Self {
            regions: Arc::new(regions),
            workspaces: workspaces
                .into_iter()
                .map(|w| (w.id.clone(), Arc::new(w)))
                .collect(),
        }
    }

    /// The documents of `doc` (a later workspace with an id already seen replaces
    /// the earlier one: call it on validated documents).
    pub fn from_document(doc: &Document) -> Self {
        Self {
            regions: Arc::new(doc.regions.clone()),
            workspaces: doc
                .workspaces
                .iter()
                .map(|w| (w.id.clone(), Arc::new(w.clone())))
                .collect(),
        }
    }

    /// The whole document, workspaces in id order.
    pub fn to_document(&self) -> Document {
        Document {
            version: VERSION,
            regions: self.regions.as_ref().clone(),
            workspaces: self
                .workspaces
                .values()
                .map(|w| w.as_ref().clone())
                .collect(),
            unknown_fields: Vec::new(),
        }
    }

    /// Workspace `id`'s document.
    pub fn workspace(&self, id: &str) -> Option<&WorkspaceDoc> {
        self.workspaces.get(id).map(Arc::as_ref)
    }

    /// Workspace `id`'s document, mutably (copied if shared).
    pub fn workspace_mut(&mut self, id: &str) -> Option<&mut WorkspaceDoc> {
        self.workspaces.get_mut(id).map(Arc::make_mut)
    }

    /// The region catalog, mutably (copied if shared).
    pub fn regions_mut(&mut self) -> &mut Vec<RegionDoc> {
        Arc::make_mut(&mut self.regions)
    }

    /// Whether workspace `id`'s document differs between `self` and `other`
    /// (shared documents are equal without a comparison).
    pub fn workspace_differs(&self, other: &Self, id: &str) -> bool {
        match (self.workspaces.get(id), other.workspaces.get(id)) {
            (Some(a), Some(b)) => !Arc::ptr_eq(a, b) && a != b,
            (None, None) => false,
            (Some(_), None) | (None, Some(_)) => true,
        }
    }
}
