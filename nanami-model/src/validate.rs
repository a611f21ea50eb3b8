//! Validation: a [`Document`] becomes a [`Topology`], or every problem is reported.
//!
//! Each [`Issue`] carries the path of the offending value, written with ids where the
//! id itself is valid (`workspaces[acme].nodes[laptop-1].public_key`) and with
//! positions where it is not (`workspaces[acme].nodes[#3].id`).
//!
//! Uniqueness is checked where compiled state needs it: ids of nodes and gateways
//! and public keys across the whole document (they name peers and interfaces
//! everywhere), gateway endpoints across the document (they are sockets on the
//! platform's machines), overlay addresses and overlapping prefixes inside one
//! workspace only (a workspace is a tenant and picks its own private ranges).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use ipnet::IpNet;
use serde::Serialize;

use crate::alloc::{allocate, Allocation};
use crate::doc::{
    Document, GatewayDoc, NetworkDoc, NodeDoc, PathPart, UnknownField, WorkspaceDoc, VERSION,
};
use crate::id::{
    GatewayId, IdError, InterfaceName, NetworkId, NodeId, RegionId, WorkspaceId, IFNAME_MAX,
    OWNED_PREFIX,
};
use crate::key::PublicKey;
use crate::topology::{
    Gateway, Network, Node, NodeStatus, Policy, Region, RegionState, Role, Topology, Workspace,
};

/// Longest tenant or display name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 256;

/// Shortest IPv4 overlay prefix length accepted: a /8 is already 16 million members.
const MAX_V4_OVERLAY_BITS: u8 = 30;
/// An IPv6 overlay needs at least two host bits.
const MAX_V6_OVERLAY_BITS: u8 = 126;

/// One problem in a document.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Issue {
    /// Where: `workspaces[acme].networks[corp].overlay`.
    pub path: String,
    /// What is wrong, in words an operator can act on.
    pub message: String,
}

impl fmt::Display for Issue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a document, in document order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ValidationErrors(pub Vec<Issue>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        write!(
            f,
            "{n} problem{} in the topology",
            if n == 1 { "" } else { "s" }
        )?;
        for issue in &self.0 {
            write!(f, "\n  {issue}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

/// Validates `doc`, allocating the overlay addresses it leaves open.
pub fn validate(doc: &Document) -> Result<Topology, ValidationErrors> {
    let mut v = Validator::default();
    if doc.version != VERSION {
        v.err(
            "version",
            format!(
                "version {} is not supported; this build reads version {VERSION}",
                doc.version
            ),
        );
    }
    v.unknown_fields(doc);
    let regions = v.regions(doc);
    let mut workspaces = BTreeMap::new();
    let mut seen_ws = BTreeSet::new();
    for (i, ws) in doc.workspaces.iter().enumerate() {
        let path = seg("workspaces", &ws.id, i);
        let id = v.id::<WorkspaceId>(&format!("{path}.id"), &ws.id);
        if let Some(id) = &id {
            if !seen_ws.insert(id.clone()) {
                v.err(
                    format!("{path}.id"),
                    format!("duplicate workspace id {id:?}"),
                );
            }
        }
        let built = v.workspace(&path, ws, &regions);
        if let (Some(id), Some(built)) = (id, built) {
            workspaces.entry(id).or_insert(built);
        }
    }
    v.overlap_checks(doc);
    if v.issues.is_empty() {
        Ok(Topology::from_parts(regions, workspaces))
    } else {
        Err(ValidationErrors(v.issues))
    }
}

/// Validates one workspace of `topology` (new or replacing the one with its id)
/// against the topology's region catalog and its other workspaces: what
/// [`Topology::with_workspace`] builds on. The catalog is taken as valid.
pub(crate) fn validate_workspace(
    topology: &Topology,
    ws: &WorkspaceDoc,
) -> Result<Workspace, ValidationErrors> {
    let mut v = Validator::default();
    let path = seg("workspaces", &ws.id, 0);
    let id = v.id::<WorkspaceId>(&format!("{path}.id"), &ws.id);
    let built = v.workspace(&path, ws, &topology.regions);
    v.workspace_overlaps(&path, ws);
    if let Some(id) = &id {
        v.across(&path, ws, topology, id);
    }
    match built {
        Some(built) if v.issues.is_empty() => Ok(built),
        Some(_) | None => Err(ValidationErrors(v.issues)),
    }
}

/// `name[id]` when `id` is a valid id, `name[#index]` otherwise, so a hostile id
/// can't forge a path or a log line.
fn seg(name: &str, id: &str, index: usize) -> String {
    if NodeId::new(id).is_ok() {
        format!("{name}[{id}]")
    } else {
        format!("{name}[#{index}]")
    }
}

/// The objects of a document that hold fields, for naming an unknown field's
/// neighbours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Holder {
    Document,
    Region,
    Workspace,
    Network,
    Policy,
    Node,
    Membership,
    Gateway,
}

impl Holder {
    /// What the holder is called in a message, and the fields version 1 defines
    /// for it (kept equal to the serde structs of [`crate::doc`] by a test).
    fn fields(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Self::Document => ("the document", &["version", "regions", "workspaces"]),
            Self::Region => ("a region", &["id", "display_name", "state"]),
            Self::Workspace => (
                "a workspace",
                &["id", "tenant", "regions", "networks", "nodes", "gateways"],
            ),
            Self::Network => (
                "a network",
                &[
                    "id",
                    "overlay",
                    "routes",
                    "exit",
                    "nat",
                    "gateways",
                    "health_targets",
                ],
            ),
            Self::Policy => (
                "a network's `gateways`",
                &["policy", "manual", "redundancy"],
            ),
            Self::Node => (
                "a node",
                &[
                    "id",
                    "public_key",
                    "status",
                    "endpoints",
                    "memberships",
                    "exit",
                ],
            ),
            Self::Membership => ("a membership", &["network", "address"]),
            Self::Gateway => (
                "a gateway",
                &[
                    "id",
                    "node",
                    "region",
                    "networks",
                    "roles",
                    "endpoint",
                    "listen_port",
                    "capacity",
                    "drain",
                    "uplink",
                ],
            ),
        }
    }
}

/// A field name as it may appear in a path or message: as written when it is
/// plain (letters, digits, `-`, `_`), quoted and escaped otherwise, so a hostile
/// key can't forge a path or a log line.
fn field_text(name: &str) -> String {
    if !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        name.to_owned()
    } else {
        format!("{name:?}")
    }
}

/// The path of the object `parts` lead to, written like every other issue's path
/// (`workspaces[acme].gateways[gw-a]`), with the kind of object it is when known.
fn object_path(doc: &Document, parts: &[PathPart]) -> (String, Option<Holder>) {
    let mut out = String::new();
    let mut holder = Some(Holder::Document);
    let mut ws: Option<&WorkspaceDoc> = None;
    let mut i = 0;
    while let Some(part) = parts.get(i) {
        let name = match part {
            PathPart::Field(name) => name,
            PathPart::Index(j) => {
                out.push_str(&format!("[{j}]"));
                holder = None;
                i += 1;
                continue;
            }
        };
        if !out.is_empty() {
            out.push('.');
        }
        let index = match parts.get(i + 1) {
            Some(PathPart::Index(j)) => Some(*j),
            Some(PathPart::Field(_)) | None => None,
        };
        // An index past the list can't come from the parser; `#j` is written then.
        let id_of = |id: Option<&String>| id.cloned().unwrap_or_default();
        let step = match (holder, name.as_str(), index) {
            (Some(Holder::Document), "regions", Some(j)) => Some((
                seg("regions", &id_of(doc.regions.get(j).map(|r| &r.id)), j),
                Holder::Region,
            )),
            (Some(Holder::Document), "workspaces", Some(j)) => {
                ws = doc.workspaces.get(j);
                Some((
                    seg("workspaces", &id_of(ws.map(|w| &w.id)), j),
                    Holder::Workspace,
                ))
            }
            (Some(Holder::Workspace), "networks", Some(j)) => Some((
                seg(
                    "networks",
                    &id_of(ws.and_then(|w| w.networks.get(j)).map(|n| &n.id)),
                    j,
                ),
                Holder::Network,
            )),
            (Some(Holder::Workspace), "nodes", Some(j)) => Some((
                seg(
                    "nodes",
                    &id_of(ws.and_then(|w| w.nodes.get(j)).map(|n| &n.id)),
                    j,
                ),
                Holder::Node,
            )),
            (Some(Holder::Workspace), "gateways", Some(j)) => Some((
                seg(
                    "gateways",
                    &id_of(ws.and_then(|w| w.gateways.get(j)).map(|g| &g.id)),
                    j,
                ),
                Holder::Gateway,
            )),
            (Some(Holder::Node), "memberships", Some(j)) => {
                Some((format!("memberships[{j}]"), Holder::Membership))
            }
            _ => None,
        };
        match step {
            Some((text, next)) => {
                out.push_str(&text);
                holder = Some(next);
                i += 2;
            }
            None => {
                holder = match (holder, name.as_str()) {
                    (Some(Holder::Network), "gateways") => Some(Holder::Policy),
                    _ => None,
                };
                out.push_str(&field_text(name));
                i += 1;
            }
        }
    }
    (out, holder)
}

/// The issue of each of `doc`'s unknown fields ([`Document::unknown_fields`]),
/// as [`validate`] reports them: at its path, naming the fields its object has.
pub fn unknown_field_issues(doc: &Document) -> Vec<Issue> {
    doc.unknown_fields
        .iter()
        .map(|f| unknown_field_issue(doc, f))
        .collect()
}

/// The issue for one unknown field: at its path, naming the fields its object has.
fn unknown_field_issue(doc: &Document, field: &UnknownField) -> Issue {
    let parent = field.path.len().saturating_sub(1);
    let (mut path, holder) = object_path(doc, &field.path[..parent]);
    let name = field_text(field.name());
    if !path.is_empty() {
        path.push('.');
    }
    path.push_str(&name);
    let message = match holder {
        Some(h) => {
            let (what, fields) = h.fields();
            format!(
                "unknown field `{name}`; {what} has {} (topology version {VERSION})",
                fields.join(", ")
            )
        }
        None => "unknown field".to_owned(),
    };
    Issue { path, message }
}

fn describe_id_error(e: &IdError) -> String {
    format!("not a valid id: {e}")
}

#[derive(Default)]
struct Validator {
    issues: Vec<Issue>,
    /// Node public keys across the document: key → path of first holder.
    keys: BTreeMap<PublicKey, String>,
    /// Node ids across the document.
    node_ids: BTreeMap<String, String>,
    /// Gateway ids across the document.
    gateway_ids: BTreeMap<String, String>,
    /// Gateway endpoints across the document.
    endpoints: BTreeMap<SocketAddr, String>,
}

/// A prefix with where it was declared, for overlap checks inside a workspace.
struct Declared {
    net: IpNet,
    path: String,
}

impl Validator {
    fn err(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.issues.push(Issue {
            path: path.into(),
            message: message.into(),
        });
    }

    /// Every field the text had that version 1 does not define, at its path.
    fn unknown_fields(&mut self, doc: &Document) {
        for field in &doc.unknown_fields {
            let issue = unknown_field_issue(doc, field);
            self.issues.push(issue);
        }
    }

    fn id<T: std::str::FromStr<Err = IdError>>(&mut self, path: &str, text: &str) -> Option<T> {
        match text.parse::<T>() {
            Ok(id) => Some(id),
            Err(e) => {
                self.err(path, describe_id_error(&e));
                None
            }
        }
    }

    fn name(&mut self, path: &str, text: &str) {
        if text.trim().is_empty() {
            self.err(path, "must not be empty");
        } else if text.len() > MAX_NAME_LEN {
            self.err(
                path,
                format!("is {} bytes, the limit is {MAX_NAME_LEN}", text.len()),
            );
        } else if text.chars().any(char::is_control) {
            self.err(path, "must not contain control characters");
        }
    }

    fn regions(&mut self, doc: &Document) -> BTreeMap<RegionId, Region> {
        let mut out = BTreeMap::new();
        for (i, r) in doc.regions.iter().enumerate() {
            let path = seg("regions", &r.id, i);
            let id = self.id::<RegionId>(&format!("{path}.id"), &r.id);
            let state = match r.state.as_str() {
                "active" => Some(RegionState::Active),
                "draining" => Some(RegionState::Draining),
                "retired" => Some(RegionState::Retired),
                other => {
                    self.err(
                        format!("{path}.state"),
                        format!("unknown state {other:?}; expected active, draining or retired"),
                    );
                    None
                }
            };
            if let Some(name) = &r.display_name {
                self.name(&format!("{path}.display_name"), name);
            }
            let (Some(id), Some(state)) = (id, state) else {
                continue;
            };
            if out.contains_key(&id) {
                self.err(format!("{path}.id"), format!("duplicate region id {id:?}"));
                continue;
            }
            let display_name = r.display_name.clone().unwrap_or_else(|| id.to_string());
            out.insert(
                id.clone(),
                Region {
                    id,
                    display_name,
                    state,
                },
            );
        }
        out
    }

    fn workspace(
        &mut self,
        path: &str,
        ws: &WorkspaceDoc,
        regions: &BTreeMap<RegionId, Region>,
    ) -> Option<Workspace> {
        self.name(&format!("{path}.tenant"), &ws.tenant);
        let mut allowed = Vec::new();
        for (i, r) in ws.regions.iter().enumerate() {
            let rpath = format!("{path}.regions[{i}]");
            let Some(id) = self.id::<RegionId>(&rpath, r) else {
                continue;
            };
            if !regions.contains_key(&id) {
                self.err(rpath, format!("unknown region {id:?}"));
            } else if allowed.contains(&id) {
                self.err(rpath, format!("region {id:?} listed twice"));
            } else {
                allowed.push(id);
            }
        }

        let mut networks = BTreeMap::new();
        for (i, n) in ws.networks.iter().enumerate() {
            let npath = format!("{path}.{}", seg("networks", &n.id, i));
            let id = self.id::<NetworkId>(&format!("{npath}.id"), &n.id);
            let built = self.network(&npath, n);
            let (Some(id), Some(built)) = (id, built) else {
                continue;
            };
            if networks.contains_key(&id) {
                self.err(
                    format!("{npath}.id"),
                    format!("duplicate network id {id:?}"),
                );
                continue;
            }
            networks.insert(id, built);
        }

        // Ids declared in the document, valid or not, so that a reference to an object
        // with its own problems is not also reported as unknown.
        let declared_networks: BTreeSet<&str> = ws.networks.iter().map(|n| n.id.as_str()).collect();
        let mut declared_nodes: BTreeMap<&str, &NodeDoc> = BTreeMap::new();
        for n in &ws.nodes {
            declared_nodes.entry(n.id.as_str()).or_insert(n);
        }
        let exit_networks: BTreeSet<&str> = ws
            .networks
            .iter()
            .filter(|n| n.exit)
            .map(|n| n.id.as_str())
            .collect();
        let mut nodes = BTreeMap::new();
        let mut explicit: BTreeMap<(NetworkId, IpAddr), String> = BTreeMap::new();
        for (i, n) in ws.nodes.iter().enumerate() {
            let npath = format!("{path}.{}", seg("nodes", &n.id, i));
            if let Some(node) = self.node(&npath, n, &networks, &declared_networks, &mut explicit) {
                nodes.entry(node.id.clone()).or_insert(node);
            }
        }

        let mut gateways = BTreeMap::new();
        let mut ports: BTreeMap<(&str, u16), String> = BTreeMap::new();
        for (i, g) in ws.gateways.iter().enumerate() {
            let gpath = format!("{path}.{}", seg("gateways", &g.id, i));
            if let Some(first) = ports.get(&(g.node.as_str(), g.listen_port)) {
                self.err(
                    format!("{gpath}.listen_port"),
                    format!(
                        "port {} on node {:?} is already taken by {first}",
                        g.listen_port, g.node
                    ),
                );
            } else {
                ports.insert((g.node.as_str(), g.listen_port), gpath.clone());
            }
            if let Some(gw) = self.gateway(
                &gpath,
                g,
                &declared_networks,
                &exit_networks,
                &declared_nodes,
                regions,
                &allowed,
            ) {
                gateways.entry(gw.id.clone()).or_insert(gw);
            }
        }

        for (i, n) in ws.networks.iter().enumerate() {
            let npath = format!("{path}.{}", seg("networks", &n.id, i));
            let Ok(id) = NetworkId::new(&n.id) else {
                continue;
            };
            if let Some(net) = networks.get(&id) {
                self.policy_refs(&npath, net, &ws.gateways);
            }
        }
        self.exits(path, ws);

        // Exhaustion is judged on the document's memberships, so that it is reported
        // even when some members have problems of their own.
        for (id, net) in &networks {
            let members = ws
                .nodes
                .iter()
                .filter(|n| n.memberships.iter().any(|m| m.network == id.as_str()))
                .count() as u128;
            for prefix in &net.overlay {
                let usable = crate::alloc::usable_hosts(prefix);
                if members > usable {
                    self.err(
                        format!("{path}.networks[{id}].overlay"),
                        format!(
                            "overlay exhausted: {prefix} has {usable} usable addresses, {members} members need one"
                        ),
                    );
                }
            }
        }
        if self.issues.is_empty() {
            for (id, net) in &networks {
                if let Allocation::Exhausted { prefix, .. } = allocate(id, net, &mut nodes) {
                    // Unreachable after the check above; reported rather than trusted.
                    self.err(
                        format!("{path}.networks[{id}].overlay"),
                        format!("overlay exhausted: {prefix}"),
                    );
                }
            }
        }

        let id = WorkspaceId::new(&ws.id).ok()?;
        Some(Workspace {
            id,
            tenant: ws.tenant.clone(),
            regions: allowed,
            networks,
            nodes,
            gateways,
        })
    }

    fn prefix(&mut self, path: &str, text: &str) -> Option<IpNet> {
        match text.parse::<IpNet>() {
            Ok(net) if net.trunc() != net => {
                self.err(
                    path,
                    format!("{net} has host bits set; did you mean {}?", net.trunc()),
                );
                None
            }
            Ok(net) => Some(net),
            Err(_) => {
                self.err(
                    path,
                    format!("{text:?} is not an IP prefix (a.b.c.d/n or x::/n)"),
                );
                None
            }
        }
    }

    fn network(&mut self, path: &str, n: &NetworkDoc) -> Option<Network> {
        let mut overlay: Vec<IpNet> = Vec::new();
        let texts = n.overlay.as_slice();
        if texts.is_empty() {
            self.err(format!("{path}.overlay"), "needs an IPv4 or IPv6 prefix");
        }
        for (i, t) in texts.iter().enumerate() {
            let opath = if texts.len() == 1 {
                format!("{path}.overlay")
            } else {
                format!("{path}.overlay[{i}]")
            };
            let Some(net) = self.prefix(&opath, t) else {
                continue;
            };
            let (bits, max) = match net {
                IpNet::V4(_) => (net.prefix_len(), MAX_V4_OVERLAY_BITS),
                IpNet::V6(_) => (net.prefix_len(), MAX_V6_OVERLAY_BITS),
            };
            if reserved_space(&net) {
                self.err(
                    &opath,
                    format!("{net} is not usable as an overlay: loopback, link-local, multicast and unspecified space belong to the kernel"),
                );
            } else if bits > max {
                self.err(
                    &opath,
                    format!("{net} is too small for an overlay (longest is /{max})"),
                );
            } else if overlay
                .iter()
                .any(|o| o.addr().is_ipv4() == net.addr().is_ipv4())
            {
                self.err(&opath, "at most one overlay prefix per address family");
            } else {
                overlay.push(net);
            }
        }
        overlay.sort_by_key(|o| o.addr().is_ipv6());

        let mut routes = BTreeSet::new();
        for (i, t) in n.routes.iter().enumerate() {
            let rpath = format!("{path}.routes[{i}]");
            let Some(net) = self.prefix(&rpath, t) else {
                continue;
            };
            if net.prefix_len() == 0 {
                self.err(
                    &rpath,
                    format!("{net} would swallow every destination, the overlay and the gateway's LAN with it; use `exit: true` for a default route"),
                );
            } else if !routes.insert(net) {
                self.err(&rpath, format!("{net} listed twice"));
            }
        }

        let mut health_targets = BTreeSet::new();
        for (i, t) in n.health_targets.iter().enumerate() {
            let tpath = format!("{path}.health_targets[{i}]");
            let Ok(addr) = t.parse::<IpAddr>() else {
                self.err(tpath, format!("{t:?} is not an IP address"));
                continue;
            };
            if !routes.iter().any(|r| r.contains(&addr)) {
                let listed: Vec<String> = routes.iter().map(|r| r.to_string()).collect();
                self.err(
                    tpath,
                    format!(
                        "{addr} is not inside the network's routes ({}); a health target is an address behind the gateway",
                        if listed.is_empty() { "none".to_owned() } else { listed.join(", ") }
                    ),
                );
            } else if !health_targets.insert(addr) {
                self.err(tpath, format!("{addr} listed twice"));
            }
        }

        let redundancy = n.gateways.redundancy;
        if redundancy == 0 {
            self.err(format!("{path}.gateways.redundancy"), "must be at least 1");
        }
        let policy = match n.gateways.policy.as_str() {
            "auto" | "balanced" if !n.gateways.manual.is_empty() => {
                self.err(
                    format!("{path}.gateways.manual"),
                    "a manual list needs `policy: manual`",
                );
                None
            }
            "auto" => Some(Policy::Auto),
            "balanced" => Some(Policy::Balanced),
            "manual" => {
                if n.gateways.manual.is_empty() {
                    self.err(
                        format!("{path}.gateways.manual"),
                        "policy manual needs a non-empty `manual` list of gateway ids",
                    );
                    None
                } else {
                    let mut ids = Vec::new();
                    for (i, g) in n.gateways.manual.iter().enumerate() {
                        let mpath = format!("{path}.gateways.manual[{i}]");
                        if let Some(id) = self.id::<GatewayId>(&mpath, g) {
                            if ids.contains(&id) {
                                self.err(mpath, format!("gateway {id:?} listed twice"));
                            } else {
                                ids.push(id);
                            }
                        }
                    }
                    Some(Policy::Manual(ids))
                }
            }
            other => {
                self.err(
                    format!("{path}.gateways.policy"),
                    format!("unknown policy {other:?}; expected auto, balanced or manual"),
                );
                None
            }
        };
        // A network with problems is still returned (they are reported already), so
        // that its members' addresses are checked too; the result is an error anyway.
        if overlay.is_empty() {
            return None;
        }
        Some(Network {
            id: NetworkId::new(&n.id).ok()?,
            overlay,
            routes,
            exit: n.exit,
            nat: n.nat,
            policy: policy.unwrap_or(Policy::Auto),
            redundancy,
            health_targets,
        })
    }

    fn node(
        &mut self,
        path: &str,
        n: &NodeDoc,
        networks: &BTreeMap<NetworkId, Network>,
        declared_networks: &BTreeSet<&str>,
        explicit: &mut BTreeMap<(NetworkId, IpAddr), String>,
    ) -> Option<Node> {
        let id = self.id::<NodeId>(&format!("{path}.id"), &n.id);
        if let Some(id) = &id {
            if let Some(first) = self.node_ids.get(id.as_str()) {
                let first = first.clone();
                self.err(
                    format!("{path}.id"),
                    format!("duplicate node id {id:?} (first at {first})"),
                );
            } else {
                self.node_ids.insert(id.to_string(), path.to_owned());
            }
        }
        let key = match n.public_key.parse::<PublicKey>() {
            Ok(k) => {
                if let Some(first) = self.keys.get(&k) {
                    let first = first.clone();
                    self.err(
                        format!("{path}.public_key"),
                        format!("public key already used by {first}"),
                    );
                } else {
                    self.keys.insert(k, path.to_owned());
                }
                Some(k)
            }
            Err(e) => {
                self.err(
                    format!("{path}.public_key"),
                    format!("not a valid WireGuard key: {e}"),
                );
                None
            }
        };
        let status = match n.status.as_str() {
            "pending" => Some(NodeStatus::Pending),
            "active" => Some(NodeStatus::Active),
            "disabled" => Some(NodeStatus::Disabled),
            "revoked" => Some(NodeStatus::Revoked),
            other => {
                self.err(
                    format!("{path}.status"),
                    format!(
                        "unknown status {other:?}; expected pending, active, disabled or revoked"
                    ),
                );
                None
            }
        };
        let mut endpoints = Vec::new();
        for (i, e) in n.endpoints.iter().enumerate() {
            match parse_endpoint(e) {
                Ok(addr) => endpoints.push(addr),
                Err(msg) => self.err(format!("{path}.endpoints[{i}]"), msg),
            }
        }
        let mut memberships: BTreeMap<NetworkId, Vec<IpAddr>> = BTreeMap::new();
        let mut ok = true;
        for (i, m) in n.memberships.iter().enumerate() {
            let mpath = format!("{path}.memberships[{i}]");
            let Some(net_id) = self.id::<NetworkId>(&format!("{mpath}.network"), &m.network) else {
                ok = false;
                continue;
            };
            let Some(net) = networks.get(&net_id) else {
                if !declared_networks.contains(net_id.as_str()) {
                    self.err(
                        format!("{mpath}.network"),
                        format!("unknown network {net_id:?} in this workspace"),
                    );
                }
                ok = false;
                continue;
            };
            if memberships.contains_key(&net_id) {
                self.err(
                    format!("{mpath}.network"),
                    format!("already a member of {net_id:?}"),
                );
                ok = false;
                continue;
            }
            let mut addrs = Vec::new();
            let texts = m.address.as_ref().map(|a| a.as_slice()).unwrap_or(&[]);
            for (j, t) in texts.iter().enumerate() {
                let apath = if texts.len() == 1 {
                    format!("{mpath}.address")
                } else {
                    format!("{mpath}.address[{j}]")
                };
                let Ok(addr) = t.parse::<IpAddr>() else {
                    self.err(apath, format!("{t:?} is not an IP address"));
                    ok = false;
                    continue;
                };
                let Some(prefix) = net.overlay.iter().find(|o| o.contains(&addr)) else {
                    let overlay: Vec<String> = net.overlay.iter().map(|o| o.to_string()).collect();
                    self.err(
                        apath,
                        format!(
                            "{addr} is outside the overlay of {net_id:?} ({})",
                            overlay.join(", ")
                        ),
                    );
                    ok = false;
                    continue;
                };
                if !crate::alloc::is_host(prefix, addr) {
                    self.err(
                        apath,
                        format!("{addr} is the network or broadcast address of {prefix}"),
                    );
                    ok = false;
                    continue;
                }
                if addrs.iter().any(|a: &IpAddr| a.is_ipv4() == addr.is_ipv4()) {
                    self.err(apath, "at most one address per address family");
                    ok = false;
                    continue;
                }
                if let Some(first) = explicit.get(&(net_id.clone(), addr)) {
                    let first = first.clone();
                    self.err(apath, format!("{addr} is already taken by {first}"));
                    ok = false;
                    continue;
                }
                explicit.insert((net_id.clone(), addr), path.to_owned());
                addrs.push(addr);
            }
            addrs.sort_by_key(|a| a.is_ipv6());
            memberships.insert(net_id, addrs);
        }
        if !ok {
            return None;
        }
        Some(Node {
            id: id?,
            public_key: key?,
            status: status?,
            endpoints,
            memberships,
            exit: n.exit,
        })
    }

    #[allow(clippy::too_many_arguments)]
    fn gateway(
        &mut self,
        path: &str,
        g: &GatewayDoc,
        networks: &BTreeSet<&str>,
        exit_networks: &BTreeSet<&str>,
        nodes: &BTreeMap<&str, &NodeDoc>,
        regions: &BTreeMap<RegionId, Region>,
        allowed: &[RegionId],
    ) -> Option<Gateway> {
        let mut ok = true;
        let id = self.id::<GatewayId>(&format!("{path}.id"), &g.id);
        let mut interface = None;
        if let Some(id) = &id {
            if let Some(first) = self.gateway_ids.get(id.as_str()) {
                let first = first.clone();
                self.err(
                    format!("{path}.id"),
                    format!("duplicate gateway id {id:?} (first at {first})"),
                );
                ok = false;
            } else {
                self.gateway_ids.insert(id.to_string(), path.to_owned());
            }
            match InterfaceName::owned(id.as_str()) {
                Ok(name) => interface = Some(name),
                Err(_) => {
                    self.err(
                        format!("{path}.id"),
                        format!(
                            "its interface name {OWNED_PREFIX}{id} would be {} bytes, over Linux's limit of {IFNAME_MAX}; use an id of at most {} bytes",
                            OWNED_PREFIX.len() + id.as_str().len(),
                            IFNAME_MAX - OWNED_PREFIX.len()
                        ),
                    );
                    ok = false;
                }
            }
        }
        let node = self.id::<NodeId>(&format!("{path}.node"), &g.node);
        let node_rec = node.as_ref().and_then(|n| nodes.get(n.as_str()));
        if let (Some(n), None) = (&node, node_rec) {
            self.err(
                format!("{path}.node"),
                format!("unknown node {n:?} in this workspace"),
            );
            ok = false;
        }
        let region = self.id::<RegionId>(&format!("{path}.region"), &g.region);
        if let Some(r) = &region {
            match regions.get(r) {
                None => {
                    self.err(format!("{path}.region"), format!("unknown region {r:?}"));
                    ok = false;
                }
                Some(reg) if reg.state == RegionState::Retired => {
                    self.err(
                        format!("{path}.region"),
                        format!("region {r:?} is retired; no gateway may run in it"),
                    );
                    ok = false;
                }
                Some(_) if !allowed.contains(r) => {
                    self.err(
                        format!("{path}.region"),
                        format!("this workspace has no access to region {r:?}"),
                    );
                    ok = false;
                }
                Some(_) => {}
            }
        }
        let mut served = BTreeSet::new();
        if g.networks.is_empty() {
            self.err(
                format!("{path}.networks"),
                "a gateway serves at least one network",
            );
            ok = false;
        }
        for (i, n) in g.networks.iter().enumerate() {
            let npath = format!("{path}.networks[{i}]");
            let Some(nid) = self.id::<NetworkId>(&npath, n) else {
                ok = false;
                continue;
            };
            if !networks.contains(nid.as_str()) {
                self.err(npath, format!("unknown network {nid:?} in this workspace"));
                ok = false;
                continue;
            }
            if let Some(rec) = node_rec {
                if !rec.memberships.iter().any(|m| m.network == nid.as_str()) {
                    self.err(
                        npath,
                        format!("its node {:?} is not a member of network {nid:?}", rec.id),
                    );
                    ok = false;
                    continue;
                }
            }
            if !served.insert(nid.clone()) {
                self.err(npath, format!("network {nid:?} listed twice"));
                ok = false;
            }
        }
        let mut roles = BTreeSet::new();
        if g.roles.is_empty() {
            self.err(
                format!("{path}.roles"),
                "needs at least one of ingress, egress, exit",
            );
            ok = false;
        }
        for (i, r) in g.roles.iter().enumerate() {
            let role = match r.as_str() {
                "ingress" => Role::Ingress,
                "egress" => Role::Egress,
                "exit" => Role::Exit,
                other => {
                    self.err(
                        format!("{path}.roles[{i}]"),
                        format!("unknown role {other:?}; expected ingress, egress or exit"),
                    );
                    ok = false;
                    continue;
                }
            };
            roles.insert(role);
        }
        if roles.contains(&Role::Exit)
            && !served.is_empty()
            && served.iter().all(|n| !exit_networks.contains(n.as_str()))
        {
            self.err(
                format!("{path}.roles"),
                "role exit, but none of its networks has `exit: true`",
            );
            ok = false;
        }
        let endpoint = match parse_endpoint(&g.endpoint) {
            Ok(addr) => {
                if let Some(first) = self.endpoints.get(&addr) {
                    let first = first.clone();
                    self.err(
                        format!("{path}.endpoint"),
                        format!("endpoint {addr} is already used by {first}"),
                    );
                    ok = false;
                } else {
                    self.endpoints.insert(addr, path.to_owned());
                }
                Some(addr)
            }
            Err(msg) => {
                self.err(format!("{path}.endpoint"), msg);
                None
            }
        };
        if g.listen_port == 0 {
            self.err(format!("{path}.listen_port"), "must be between 1 and 65535");
            ok = false;
        }
        if g.capacity == Some(0) {
            self.err(format!("{path}.capacity"), "must be at least 1");
            ok = false;
        }
        let uplink = match g.uplink.as_deref().map(InterfaceName::new) {
            None => None,
            Some(Ok(name)) if name.is_owned() => {
                self.err(
                    format!("{path}.uplink"),
                    format!("{name} is a name Nanami owns (nm-*); the uplink is the operator's interface to the LAN"),
                );
                ok = false;
                None
            }
            Some(Ok(name)) => Some(name),
            Some(Err(e)) => {
                self.err(
                    format!("{path}.uplink"),
                    format!("not an interface name: {e}"),
                );
                ok = false;
                None
            }
        };
        if !ok {
            return None;
        }
        Some(Gateway {
            id: id?,
            node: node?,
            region: region?,
            networks: served,
            roles,
            endpoint: endpoint?,
            listen_port: g.listen_port,
            capacity: g.capacity,
            drain: g.drain,
            interface: interface?,
            uplink,
        })
    }

    /// `redundancy: k` needs k gateways that can hold a client: gateways serving the
    /// network with the `ingress` role (and, for `manual`, named in its list). This
    /// is judged on the document, not on health or drain, which change at run time:
    /// while fewer are eligible, clients simply get fewer standbys.
    fn redundancy(&mut self, path: &str, net: &Network, gateways: &[GatewayDoc]) {
        if net.redundancy < 2 {
            return;
        }
        let serving = gateways
            .iter()
            .filter(|g| g.networks.iter().any(|n| n == net.id.as_str()))
            .filter(|g| g.roles.iter().any(|r| r == "ingress"))
            .filter(|g| match &net.policy {
                Policy::Manual(ids) => ids.iter().any(|id| id.as_str() == g.id),
                Policy::Auto | Policy::Balanced => true,
            })
            .count();
        if u64::from(net.redundancy) > serving as u64 {
            self.err(
                format!("{path}.gateways.redundancy"),
                format!(
                    "redundancy {} needs as many gateways serving network {:?} with the ingress role{}; there {} {serving}",
                    net.redundancy,
                    net.id,
                    if matches!(net.policy, Policy::Manual(_)) { " in its manual list" } else { "" },
                    if serving == 1 { "is" } else { "are" },
                ),
            );
        }
    }

    /// A client with `exit: true` needs a gateway that can be its exit: one of its
    /// networks has `exit: true` and a gateway with the `exit` role serving it (for
    /// `policy: manual`, one named in the list, since exits follow the network's
    /// policy order). Judged on the document, like redundancy: health and drain only
    /// take an exit away for a while. Gateway machines are not clients and are
    /// skipped; memberships of unknown networks are reported elsewhere.
    fn exits(&mut self, path: &str, ws: &WorkspaceDoc) {
        let gateway_nodes: BTreeSet<&str> = ws.gateways.iter().map(|g| g.node.as_str()).collect();
        for (i, n) in ws.nodes.iter().enumerate() {
            if !n.exit || gateway_nodes.contains(n.id.as_str()) {
                continue;
            }
            let xpath = format!("{path}.{}.exit", seg("nodes", &n.id, i));
            if n.memberships.is_empty() {
                self.err(
                    xpath,
                    "`exit: true`, but it is a member of no network, so no gateway can be its exit",
                );
                continue;
            }
            let nets: Vec<&NetworkDoc> = n
                .memberships
                .iter()
                .filter_map(|m| ws.networks.iter().find(|d| d.id == m.network))
                .collect();
            if nets.is_empty() {
                continue;
            }
            let exit_nets: Vec<&NetworkDoc> = nets.iter().copied().filter(|d| d.exit).collect();
            if exit_nets.is_empty() {
                let names: Vec<&str> = nets.iter().map(|d| d.id.as_str()).collect();
                self.err(
                    xpath,
                    format!(
                        "`exit: true`, but none of its networks ({}) has `exit: true`, so no gateway can be its exit",
                        names.join(", ")
                    ),
                );
                continue;
            }
            let can_exit = |d: &NetworkDoc, g: &GatewayDoc| {
                g.networks.contains(&d.id) && g.roles.iter().any(|r| r == "exit")
            };
            let listed = |d: &NetworkDoc, g: &GatewayDoc| {
                d.gateways.policy != "manual" || d.gateways.manual.contains(&g.id)
            };
            let served = exit_nets
                .iter()
                .any(|d| ws.gateways.iter().any(|g| can_exit(d, g) && listed(d, g)));
            if served {
                continue;
            }
            let names: Vec<&str> = exit_nets.iter().map(|d| d.id.as_str()).collect();
            let unlisted: Vec<&str> = exit_nets
                .iter()
                .flat_map(|d| {
                    ws.gateways
                        .iter()
                        .filter(move |g| can_exit(d, g) && !listed(d, g))
                        .map(|g| g.id.as_str())
                })
                .collect();
            let message = if unlisted.is_empty() {
                format!(
                    "`exit: true`, but no gateway serving its exit network{} ({}) has the exit role",
                    if names.len() == 1 { "" } else { "s" },
                    names.join(", ")
                )
            } else {
                format!(
                    "`exit: true`, but the gateways with the exit role serving its exit network{} ({}) are not in the network's manual list: {}",
                    if names.len() == 1 { "" } else { "s" },
                    names.join(", "),
                    unlisted.join(", ")
                )
            };
            self.err(xpath, message);
        }
    }

    fn policy_refs(&mut self, path: &str, net: &Network, gateways: &[GatewayDoc]) {
        self.redundancy(path, net, gateways);
        let Policy::Manual(ids) = &net.policy else {
            return;
        };
        for (i, id) in ids.iter().enumerate() {
            let mpath = format!("{path}.gateways.manual[{i}]");
            match gateways.iter().find(|g| g.id == id.as_str()) {
                None => self.err(mpath, format!("unknown gateway {id:?} in this workspace")),
                Some(g) if !g.networks.iter().any(|n| n == net.id.as_str()) => self.err(
                    mpath,
                    format!("gateway {id:?} does not serve network {:?}", net.id),
                ),
                Some(_) => {}
            }
        }
    }

    /// Overlaps between the overlays and routes of one workspace.
    ///
    /// Workspaces are not compared with each other: tenants choose their private
    /// ranges, and two workspaces may use the same overlay or route. Isolation is
    /// structural (a gateway serves one workspace, and compile reads only that
    /// workspace), never by address disjointness. Inside one workspace a client's
    /// AllowedIPs and a gateway's routes must be unambiguous, so prefixes may not
    /// overlap there.
    /// What must stay unique across workspaces (node and gateway ids, public
    /// keys, gateway endpoints), for workspace `own` at `path` against the other
    /// workspaces of `topology`.
    fn across(&mut self, path: &str, ws: &WorkspaceDoc, topology: &Topology, own: &WorkspaceId) {
        for (i, n) in ws.nodes.iter().enumerate() {
            let npath = format!("{path}.{}", seg("nodes", &n.id, i));
            if let Ok(id) = NodeId::new(&n.id) {
                if let Some(w) = topology.node_workspace(&id).filter(|w| *w != own) {
                    self.err(
                        format!("{npath}.id"),
                        format!("duplicate node id {id:?} (first at workspaces[{w}].nodes[{id}])"),
                    );
                }
            }
            if let Ok(k) = n.public_key.parse::<PublicKey>() {
                if let Some((w, holder)) = topology.key_holder(&k).filter(|(w, _)| *w != own) {
                    self.err(
                        format!("{npath}.public_key"),
                        format!("public key already used by workspaces[{w}].nodes[{holder}]"),
                    );
                }
            }
        }
        for (i, g) in ws.gateways.iter().enumerate() {
            let gpath = format!("{path}.{}", seg("gateways", &g.id, i));
            if let Ok(id) = GatewayId::new(&g.id) {
                if let Some(w) = topology.gateway_workspace(&id).filter(|w| *w != own) {
                    self.err(
                        format!("{gpath}.id"),
                        format!(
                            "duplicate gateway id {id:?} (first at workspaces[{w}].gateways[{id}])"
                        ),
                    );
                }
            }
            if let Ok(addr) = parse_endpoint(&g.endpoint) {
                if let Some((w, holder)) =
                    topology.endpoint_holder(&addr).filter(|(w, _)| *w != own)
                {
                    self.err(
                        format!("{gpath}.endpoint"),
                        format!(
                            "endpoint {addr} is already used by workspaces[{w}].gateways[{holder}]"
                        ),
                    );
                }
            }
        }
    }

    fn overlap_checks(&mut self, doc: &Document) {
        for (wi, ws) in doc.workspaces.iter().enumerate() {
            let wpath = seg("workspaces", &ws.id, wi);
            self.workspace_overlaps(&wpath, ws);
        }
    }

    fn workspace_overlaps(&mut self, wpath: &str, ws: &WorkspaceDoc) {
        let mut declared = Vec::new();
        for (ni, n) in ws.networks.iter().enumerate() {
            let npath = format!("{wpath}.{}", seg("networks", &n.id, ni));
            let overlays = n.overlay.as_slice();
            for (i, t) in overlays.iter().enumerate() {
                if let Ok(net) = t.parse::<IpNet>() {
                    let path = if overlays.len() == 1 {
                        format!("{npath}.overlay")
                    } else {
                        format!("{npath}.overlay[{i}]")
                    };
                    declared.push(Declared {
                        net: net.trunc(),
                        path,
                    });
                }
            }
            for (i, t) in n.routes.iter().enumerate() {
                if let Ok(net) = t.parse::<IpNet>() {
                    if net.prefix_len() > 0 {
                        declared.push(Declared {
                            net: net.trunc(),
                            path: format!("{npath}.routes[{i}]"),
                        });
                    }
                }
            }
        }
        // Prefixes either nest or are disjoint: sorted by address then length, a
        // prefix overlaps an earlier one exactly when an enclosing one is still open.
        let mut order: Vec<usize> = (0..declared.len()).collect();
        order.sort_by(|&a, &b| {
            let (x, y) = (&declared[a], &declared[b]);
            (
                x.net.addr().is_ipv6(),
                x.net.network(),
                x.net.prefix_len(),
                &x.path,
            )
                .cmp(&(
                    y.net.addr().is_ipv6(),
                    y.net.network(),
                    y.net.prefix_len(),
                    &y.path,
                ))
        });
        let mut open: Vec<usize> = Vec::new();
        let mut found = Vec::new();
        for &i in &order {
            while let Some(&top) = open.last() {
                if declared[top].net.contains(&declared[i].net) {
                    break;
                }
                open.pop();
            }
            if let Some(&top) = open.last() {
                found.push((i, top));
            }
            open.push(i);
        }
        found.sort();
        for (i, top) in found {
            let (d, o) = (&declared[i], &declared[top]);
            let message = format!("{} overlaps {} at {}", d.net, o.net, o.path);
            self.err(d.path.clone(), message);
        }
    }
}

fn parse_endpoint(text: &str) -> Result<SocketAddr, String> {
    match text.parse::<SocketAddr>() {
        Ok(addr) if addr.port() == 0 => Err(format!("{addr} has port 0")),
        Ok(addr) if addr.ip().is_unspecified() => Err(format!("{addr} is not a reachable address")),
        Ok(addr) => Ok(addr),
        Err(_) => Err(format!(
            "{text:?} is not an endpoint (ip:port, or [ipv6]:port)"
        )),
    }
}

/// Whether `net` overlaps space the kernel manages itself (a link-local address on
/// every link, loopback, multicast, the unspecified address): Nanami's addresses
/// there could not be told from the kernel's.
fn reserved_space(net: &IpNet) -> bool {
    const RESERVED: [&str; 8] = [
        "0.0.0.0/8",
        "127.0.0.0/8",
        "169.254.0.0/16",
        "224.0.0.0/4",
        "::/127",
        "fe80::/10",
        "ff00::/8",
        "::ffff:0:0/96",
    ];
    RESERVED
        .iter()
        .filter_map(|r| r.parse::<IpNet>().ok())
        .any(|r| r.contains(&net.network()) || net.contains(&r.network()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Every field set, so that serializing writes every one.
    const FULL: &str = r#"
version: 1
regions: [{ id: r, display_name: R, state: active }]
workspaces:
  - id: w
    tenant: t
    regions: [r]
    networks:
      - id: n
        overlay: 100.64.0.0/24
        routes: [10.0.0.0/24]
        exit: true
        nat: true
        gateways: { policy: manual, manual: [g], redundancy: 1 }
        health_targets: [10.0.0.1]
    nodes:
      - id: g
        public_key: "0TFxBlKHhHWPmIRcbXIDsPyOJg/xr68jHitQbAAIr3g="
        status: active
        endpoints: ["192.0.2.9:1"]
        memberships: [{ network: n, address: 100.64.0.1 }]
        exit: true
    gateways:
      - { id: g, node: g, region: r, networks: [n], roles: [ingress], endpoint: "192.0.2.1:51820", listen_port: 51820, capacity: 5, drain: true, uplink: vlan101 }
"#;

    fn keys(v: &serde_json::Value) -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    }

    fn listed(h: Holder) -> Vec<String> {
        let mut k: Vec<String> = h.fields().1.iter().map(|s| (*s).to_owned()).collect();
        k.sort();
        k
    }

    /// The field lists named in unknown-field messages are the serde structs' own.
    #[test]
    fn holder_fields_match_the_document_structs() {
        let doc = Document::from_yaml(FULL).unwrap();
        assert!(doc.unknown_fields.is_empty());
        let v = serde_json::to_value(&doc).unwrap();
        let ws = &v["workspaces"][0];
        for (h, obj) in [
            (Holder::Document, &v),
            (Holder::Region, &v["regions"][0]),
            (Holder::Workspace, ws),
            (Holder::Network, &ws["networks"][0]),
            (Holder::Policy, &ws["networks"][0]["gateways"]),
            (Holder::Node, &ws["nodes"][0]),
            (Holder::Membership, &ws["nodes"][0]["memberships"][0]),
            (Holder::Gateway, &ws["gateways"][0]),
        ] {
            assert_eq!(keys(obj), listed(h), "{h:?}");
        }
    }

    #[test]
    fn a_hosted_gateway_runs_in_its_own_namespace_and_its_uplink_is_checked() {
        let t = Topology::from_yaml(FULL).unwrap();
        let (_, g) = t.gateway(&crate::GatewayId::new("g").unwrap()).unwrap();
        assert_eq!(
            g.uplink.as_ref().map(InterfaceName::as_str),
            Some("vlan101")
        );
        assert_eq!(g.namespace(), Some("nm-g"));
        for (uplink, message) in [
            ("nm-other", "a name Nanami owns"),
            ("a-name-longer-than-15", "not an interface name"),
            ("\"eth 0\"", "not an interface name"),
        ] {
            let text = FULL.replace("uplink: vlan101", &format!("uplink: {uplink}"));
            let doc = Document::from_yaml(&text).unwrap();
            let issues = Topology::from_document(&doc).unwrap_err().0;
            assert!(
                issues
                    .iter()
                    .any(|i| i.path == "workspaces[w].gateways[g].uplink"
                        && i.message.contains(message)),
                "{uplink}: {issues:?}"
            );
        }
        let plain = FULL.replace(", uplink: vlan101", "");
        let t = Topology::from_yaml(&plain).unwrap();
        assert_eq!(
            t.gateway(&crate::GatewayId::new("g").unwrap())
                .unwrap()
                .1
                .namespace(),
            None
        );
    }

    #[test]
    fn field_names_that_could_forge_a_path_are_quoted() {
        assert_eq!(field_text("colour"), "colour");
        assert_eq!(field_text("listen_port"), "listen_port");
        assert_eq!(field_text("a]b"), "\"a]b\"");
        assert_eq!(field_text("a\nb"), "\"a\\nb\"");
        assert_eq!(field_text(""), "\"\"");
    }
}
