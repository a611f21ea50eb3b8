//! The audit trail: what is recorded of every accepted write.
//!
//! An entry names who wrote (the credential's id, a digest prefix that reveals
//! nothing of the secret, and its kind), what (the object, with its revision
//! before and after) and a short diff. The store gives each entry its sequence
//! number in the same transaction as the write, so a refused write leaves no entry
//! and an accepted one always has one.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::authz::Principal;
use crate::docs::Docs;
use crate::object::{Applied, ObjectKind, ObjectRef};

/// The longest diff kept; longer ones are cut with `…`.
pub const MAX_DIFF: usize = 1024;

/// The longest value shown in a field's diff.
const MAX_VALUE: usize = 80;

/// The object of an entry, as served.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditObject {
    /// `region`, `workspace`, `network`, `node`, `gateway` or `topology`.
    pub kind: String,
    /// Its workspace, if it is in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace: Option<String>,
    /// Its id (empty for the topology).
    pub id: String,
}

impl From<&ObjectRef> for AuditObject {
    fn from(o: &ObjectRef) -> Self {
        Self {
            kind: o.kind.name().to_owned(),
            workspace: o.workspace.clone(),
            id: o.id.clone(),
        }
    }
}

/// One accepted write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    /// Its place in the trail (1, 2, ...); 0 until the store assigns it.
    pub seq: u64,
    /// When it was accepted (Unix milliseconds).
    pub at_unix_ms: u64,
    /// Who wrote: the credential's id (a digest prefix, not the secret).
    pub credential_id: String,
    /// The credential's kind (`platform`, `workspace`, ...).
    pub credential_kind: String,
    /// The object.
    pub object: AuditObject,
    /// Its revision before (`None`: created).
    #[serde(default)]
    pub old_revision: Option<String>,
    /// Its revision after (`None`: deleted).
    #[serde(default)]
    pub new_revision: Option<String>,
    /// What changed, briefly.
    pub diff: String,
}

impl AuditEntry {
    /// The entry for `applied`, written by `principal` through the credential
    /// `credential_id` at `now_ms`.
    pub fn new(applied: &Applied, principal: &Principal, credential_id: &str, now_ms: u64) -> Self {
        Self {
            seq: 0,
            at_unix_ms: now_ms,
            credential_id: credential_id.to_owned(),
            credential_kind: principal.kind().to_owned(),
            object: AuditObject::from(&applied.object),
            old_revision: applied.old_revision.clone(),
            new_revision: applied.new_revision.clone(),
            diff: applied.diff.clone(),
        }
    }

    /// The workspace the entry belongs to, for a workspace credential's view.
    pub fn workspace(&self) -> Option<&str> {
        self.object.workspace.as_deref()
    }
}

fn cut(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// A short description of the change from `old` to `new` (each an object's
/// JSON; `None`: absent): `created`, `deleted`, `no change`, or each changed field
/// as `field: old → new`.
pub fn diff(old: Option<&serde_json::Value>, new: Option<&serde_json::Value>) -> String {
    let show = |v: Option<&serde_json::Value>| match v {
        Some(v) => cut(v.to_string(), MAX_VALUE),
        None => "(unset)".to_owned(),
    };
    let text = match (old, new) {
        (None, None) => "no change".to_owned(),
        (None, Some(_)) => "created".to_owned(),
        (Some(_), None) => "deleted".to_owned(),
        (Some(a), Some(b)) if a == b => "no change".to_owned(),
        (Some(serde_json::Value::Object(a)), Some(serde_json::Value::Object(b))) => {
            let keys: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            keys.into_iter()
                .filter(|k| a.get(*k) != b.get(*k))
                .map(|k| format!("{k}: {} → {}", show(a.get(k)), show(b.get(k))))
                .collect::<Vec<_>>()
                .join("; ")
        }
        (Some(a), Some(b)) => format!("{} → {}", show(Some(a)), show(Some(b))),
    };
    cut(text, MAX_DIFF)
}

/// A short description of a whole-document change: whether the catalog changed,
/// and which workspaces were created, changed or deleted.
pub fn document_diff(old: &Docs, new: &Docs) -> String {
    let ids: BTreeSet<&String> = old.workspaces.keys().chain(new.workspaces.keys()).collect();
    let (mut created, mut changed, mut deleted) = (Vec::new(), Vec::new(), Vec::new());
    for id in ids {
        match (
            old.workspaces.contains_key(id),
            new.workspaces.contains_key(id),
        ) {
            (false, true) => created.push(id),
            (true, false) => deleted.push(id),
            (true, true) if old.workspace_differs(new, id) => changed.push(id),
            (true, true) | (false, false) => {}
        }
    }
    let list = |v: &[&String]| {
        let shown: Vec<&str> = v.iter().take(10).map(|s| s.as_str()).collect();
        let more = v.len().saturating_sub(10);
        if more > 0 {
            format!("{} and {more} more", shown.join(", "))
        } else {
            shown.join(", ")
        }
    };
    let mut parts = Vec::new();
    if old.regions != new.regions {
        parts.push("regions changed".to_owned());
    }
    for (what, v) in [
        ("created", &created),
        ("changed", &changed),
        ("deleted", &deleted),
    ] {
        if !v.is_empty() {
            parts.push(format!("workspaces {what}: {}", list(v)));
        }
    }
    if parts.is_empty() {
        return "no change".to_owned();
    }
    cut(parts.join("; "), MAX_DIFF)
}

impl ObjectKind {
    /// Whether objects of this kind are in a workspace (their audit entries are
    /// that workspace's).
    pub fn in_workspace(self) -> bool {
        match self {
            Self::Workspace | Self::Network | Self::Node | Self::Gateway => true,
            Self::Region | Self::Topology => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_diff_names_each_changed_field() {
        let a = json!({"id": "n1", "status": "active", "exit": false});
        let b = json!({"id": "n1", "status": "disabled", "exit": true});
        assert_eq!(
            diff(Some(&a), Some(&b)),
            "exit: false → true; status: \"active\" → \"disabled\""
        );
        assert_eq!(diff(None, Some(&b)), "created");
        assert_eq!(diff(Some(&a), None), "deleted");
        assert_eq!(diff(Some(&a), Some(&a)), "no change");
    }

    #[test]
    fn long_values_and_diffs_are_cut() {
        let a = json!({"endpoints": ["x".repeat(500)]});
        let b = json!({"endpoints": []});
        let d = diff(Some(&a), Some(&b));
        assert!(d.len() < 200, "{d}");
        assert!(d.contains('…'));
    }
}
