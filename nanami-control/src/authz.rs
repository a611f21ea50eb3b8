//! Authorization: one table of (principal × action) → rule, and one function that
//! applies it to a target's scope.
//!
//! Scopes follow the mission's split. **Platform scope** is the region catalog,
//! which workspaces exist and which regions each may use (its access grants),
//! minting workspace credentials, and oversight. **Workspace scope** is one
//! workspace's networks, nodes and gateways, and its enrolment tokens.
//!
//! A workspace credential cannot tell whether another workspace exists: every
//! target in another workspace (or in none) is [`Decision::NotFound`], whatever
//! the action, before the table is consulted, so the answer is the one a missing
//! object gets.

use nanami_model::{GatewayId, NodeId, WorkspaceId};

/// Who a credential authenticates as.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Principal {
    /// The platform (the `nmc_` control credential): the catalog, workspaces,
    /// access grants, workspace credentials, every workspace's contents.
    Platform,
    /// A platform operator: reads everything, changes nothing.
    Operator,
    /// One workspace's administrator: its own networks, nodes and gateways.
    Workspace(WorkspaceId),
    /// One gateway's daemon.
    Gateway(GatewayId),
    /// One client node.
    Node(NodeId),
}

impl Principal {
    /// The kind of principal, as the audit trail records it.
    pub fn kind(&self) -> &'static str {
        self.who().name()
    }

    fn who(&self) -> Who {
        match self {
            Self::Platform => Who::Platform,
            Self::Operator => Who::Operator,
            Self::Workspace(_) => Who::Workspace,
            Self::Gateway(_) => Who::Gateway,
            Self::Node(_) => Who::Node,
        }
    }
}

/// What a request does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    /// Read the region catalog.
    ReadCatalog,
    /// Create, change or delete a catalog region.
    WriteCatalog,
    /// Read a workspace's spec (its tenant and access grants).
    ReadWorkspace,
    /// Create, change (tenant, access grants) or delete a workspace.
    WriteWorkspace,
    /// Read a workspace's networks, nodes, gateways and their explanations.
    ReadContents,
    /// Create, change or delete a workspace's networks, nodes and gateways,
    /// including node lifecycle requests.
    WriteContents,
    /// Mint an enrolment token for a node or gateway of a workspace.
    MintToken,
    /// Mint a credential for a workspace.
    MintCredential,
    /// Read the audit trail (of a workspace, or all of it on the platform target).
    ReadAudit,
    /// Read fleet-wide oversight: status, regions and workspaces views.
    ReadOversight,
    /// Export the whole topology document.
    ExportTopology,
    /// Replace the whole topology document (import, for GitOps).
    ImportTopology,
    /// Read a gateway's desired state or last observed report.
    ReadDesired,
    /// Report a gateway's observed state.
    ReportObserved,
    /// Read a client node's compiled configuration.
    ReadNodeConfig,
}

/// What a request acts on, with the workspace it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target<'a> {
    /// Platform scope: the catalog, the whole topology, every workspace.
    Platform,
    /// A workspace (its spec, its contents, its audit entries). `None`: an id that
    /// names no workspace.
    Workspace(Option<&'a WorkspaceId>),
    /// A gateway and the workspace it is in (`None`: in no workspace).
    Gateway(&'a GatewayId, Option<&'a WorkspaceId>),
    /// A node and the workspace it is in (`None`: in no workspace).
    Node(&'a NodeId, Option<&'a WorkspaceId>),
}

impl Target<'_> {
    fn workspace(&self) -> Option<Option<&WorkspaceId>> {
        match self {
            Self::Platform => None,
            Self::Workspace(ws) | Self::Gateway(_, ws) | Self::Node(_, ws) => Some(*ws),
        }
    }
}

/// The answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Go ahead.
    Allow,
    /// 403: this credential may not do that (and may know the target exists).
    Forbidden,
    /// 404: the target is hidden from this credential, exactly as if it did not
    /// exist.
    NotFound,
}

/// Kinds of principal, the table's rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Who {
    Platform,
    Operator,
    Workspace,
    Gateway,
    Node,
}

impl Who {
    fn name(self) -> &'static str {
        match self {
            Self::Platform => "platform",
            Self::Operator => "operator",
            Self::Workspace => "workspace",
            Self::Gateway => "gateway",
            Self::Node => "node",
        }
    }
}

/// How a row of the table decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rule {
    /// On any target.
    Any,
    /// On targets of the principal's own workspace (others are hidden, see the
    /// module's notes); never on the platform target.
    OwnWorkspace,
    /// On the principal itself only (a gateway's own desired state, a node's own
    /// configuration).
    Itself,
}

use Action as A;
use Rule as R;
use Who as W;

/// The authorization table. A (principal, action) pair that is not here is
/// forbidden.
const TABLE: &[(Who, Action, Rule)] = &[
    // The platform does everything but speak for a machine.
    (W::Platform, A::ReadCatalog, R::Any),
    (W::Platform, A::WriteCatalog, R::Any),
    (W::Platform, A::ReadWorkspace, R::Any),
    (W::Platform, A::WriteWorkspace, R::Any),
    (W::Platform, A::ReadContents, R::Any),
    (W::Platform, A::WriteContents, R::Any),
    (W::Platform, A::MintToken, R::Any),
    (W::Platform, A::MintCredential, R::Any),
    (W::Platform, A::ReadAudit, R::Any),
    (W::Platform, A::ReadOversight, R::Any),
    (W::Platform, A::ExportTopology, R::Any),
    (W::Platform, A::ImportTopology, R::Any),
    (W::Platform, A::ReadDesired, R::Any),
    (W::Platform, A::ReadNodeConfig, R::Any),
    // Operators read everything and change nothing.
    (W::Operator, A::ReadCatalog, R::Any),
    (W::Operator, A::ReadWorkspace, R::Any),
    (W::Operator, A::ReadContents, R::Any),
    (W::Operator, A::ReadAudit, R::Any),
    (W::Operator, A::ReadOversight, R::Any),
    (W::Operator, A::ExportTopology, R::Any),
    (W::Operator, A::ReadDesired, R::Any),
    (W::Operator, A::ReadNodeConfig, R::Any),
    // A workspace administrator: its own workspace's contents, tokens and audit
    // entries; its spec (access grants) read-only.
    (W::Workspace, A::ReadWorkspace, R::OwnWorkspace),
    (W::Workspace, A::ReadContents, R::OwnWorkspace),
    (W::Workspace, A::WriteContents, R::OwnWorkspace),
    (W::Workspace, A::MintToken, R::OwnWorkspace),
    (W::Workspace, A::ReadAudit, R::OwnWorkspace),
    (W::Workspace, A::ReadDesired, R::OwnWorkspace),
    (W::Workspace, A::ReadNodeConfig, R::OwnWorkspace),
    // Machines speak for themselves only.
    (W::Gateway, A::ReadDesired, R::Itself),
    (W::Gateway, A::ReportObserved, R::Itself),
    (W::Node, A::ReadNodeConfig, R::Itself),
];

fn rule(who: Who, action: Action) -> Option<Rule> {
    TABLE
        .iter()
        .find(|(w, a, _)| *w == who && *a == action)
        .map(|(_, _, r)| *r)
}

/// Whether `principal` may do `action` on `target`.
pub fn authorize(principal: &Principal, action: Action, target: Target<'_>) -> Decision {
    // A workspace credential meets every other workspace as missing, first.
    if let (Principal::Workspace(own), Some(ws)) = (principal, target.workspace()) {
        if ws != Some(own) {
            return Decision::NotFound;
        }
    }
    let Some(rule) = rule(principal.who(), action) else {
        return Decision::Forbidden;
    };
    let allowed = match rule {
        Rule::Any => true,
        Rule::OwnWorkspace => match (principal, target.workspace()) {
            (Principal::Workspace(own), Some(Some(ws))) => ws == own,
            _ => false,
        },
        Rule::Itself => match (principal, target) {
            (Principal::Gateway(me), Target::Gateway(id, _)) => me == id,
            (Principal::Node(me), Target::Node(id, _)) => me == id,
            _ => false,
        },
    };
    if allowed {
        Decision::Allow
    } else {
        Decision::Forbidden
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(id: &str) -> WorkspaceId {
        WorkspaceId::new(id).expect("valid id")
    }

    const ALL: [Action; 15] = [
        A::ReadCatalog,
        A::WriteCatalog,
        A::ReadWorkspace,
        A::WriteWorkspace,
        A::ReadContents,
        A::WriteContents,
        A::MintToken,
        A::MintCredential,
        A::ReadAudit,
        A::ReadOversight,
        A::ExportTopology,
        A::ImportTopology,
        A::ReadDesired,
        A::ReportObserved,
        A::ReadNodeConfig,
    ];

    #[test]
    fn a_workspace_meets_every_other_workspace_as_missing() {
        let acme = ws("acme");
        let globex = ws("globex");
        let me = Principal::Workspace(acme.clone());
        let gw = GatewayId::new("gw-1").expect("valid id");
        let node = NodeId::new("n-1").expect("valid id");
        for action in ALL {
            for target in [
                Target::Workspace(Some(&globex)),
                Target::Workspace(None),
                Target::Gateway(&gw, Some(&globex)),
                Target::Gateway(&gw, None),
                Target::Node(&node, Some(&globex)),
                Target::Node(&node, None),
            ] {
                assert_eq!(
                    authorize(&me, action, target),
                    Decision::NotFound,
                    "{action:?} on {target:?}"
                );
            }
        }
    }

    #[test]
    fn a_workspace_changes_its_contents_but_not_its_grants_nor_the_platform() {
        let acme = ws("acme");
        let me = Principal::Workspace(acme.clone());
        let own = Target::Workspace(Some(&acme));
        for action in [
            A::ReadWorkspace,
            A::ReadContents,
            A::WriteContents,
            A::MintToken,
            A::ReadAudit,
        ] {
            assert_eq!(authorize(&me, action, own), Decision::Allow, "{action:?}");
        }
        for action in [A::WriteWorkspace, A::MintCredential, A::ImportTopology] {
            assert_eq!(
                authorize(&me, action, own),
                Decision::Forbidden,
                "{action:?}"
            );
        }
        for action in ALL {
            assert_eq!(
                authorize(&me, action, Target::Platform),
                Decision::Forbidden,
                "{action:?} on the platform"
            );
        }
    }

    #[test]
    fn operators_read_everything_and_write_nothing() {
        let acme = ws("acme");
        let writes = [
            A::WriteCatalog,
            A::WriteWorkspace,
            A::WriteContents,
            A::MintToken,
            A::MintCredential,
            A::ImportTopology,
            A::ReportObserved,
        ];
        for action in ALL {
            let expected = if writes.contains(&action) {
                Decision::Forbidden
            } else {
                Decision::Allow
            };
            for target in [Target::Platform, Target::Workspace(Some(&acme))] {
                assert_eq!(
                    authorize(&Principal::Operator, action, target),
                    expected,
                    "{action:?} on {target:?}"
                );
            }
        }
    }

    #[test]
    fn the_platform_does_everything_but_report_for_a_gateway() {
        let acme = ws("acme");
        let gw = GatewayId::new("gw-1").expect("valid id");
        for action in ALL {
            let expected = if action == A::ReportObserved {
                Decision::Forbidden
            } else {
                Decision::Allow
            };
            assert_eq!(
                authorize(
                    &Principal::Platform,
                    action,
                    Target::Gateway(&gw, Some(&acme))
                ),
                expected,
                "{action:?}"
            );
        }
    }

    #[test]
    fn machines_speak_only_for_themselves() {
        let acme = ws("acme");
        let me = GatewayId::new("gw-1").expect("valid id");
        let other = GatewayId::new("gw-2").expect("valid id");
        let gateway = Principal::Gateway(me.clone());
        assert_eq!(
            authorize(
                &gateway,
                A::ReportObserved,
                Target::Gateway(&me, Some(&acme))
            ),
            Decision::Allow
        );
        assert_eq!(
            authorize(&gateway, A::ReadDesired, Target::Gateway(&me, None)),
            Decision::Allow,
            "a gateway removed from the topology still reads its (empty) state"
        );
        assert_eq!(
            authorize(
                &gateway,
                A::ReadDesired,
                Target::Gateway(&other, Some(&acme))
            ),
            Decision::Forbidden
        );
        let n1 = NodeId::new("n-1").expect("valid id");
        let n2 = NodeId::new("n-2").expect("valid id");
        let node = Principal::Node(n1.clone());
        assert_eq!(
            authorize(&node, A::ReadNodeConfig, Target::Node(&n1, Some(&acme))),
            Decision::Allow
        );
        assert_eq!(
            authorize(&node, A::ReadNodeConfig, Target::Node(&n2, Some(&acme))),
            Decision::Forbidden
        );
        for action in ALL {
            if action != A::ReadNodeConfig {
                assert_eq!(
                    authorize(&node, action, Target::Workspace(Some(&acme))),
                    Decision::Forbidden,
                    "{action:?}"
                );
            }
        }
    }

    #[test]
    fn the_table_names_each_pair_once() {
        for (i, (w, a, _)) in TABLE.iter().enumerate() {
            assert!(
                !TABLE[..i].iter().any(|(w2, a2, _)| w2 == w && a2 == a),
                "{w:?} × {a:?} is in the table twice"
            );
        }
    }
}
