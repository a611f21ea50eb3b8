//! The pages' markup (maud: compiled templates, every value escaped) and the
//! views they are drawn from.

use std::collections::BTreeMap;
use std::time::UNIX_EPOCH;

use axum::http::StatusCode;
use maud::{html, Markup, DOCTYPE};
use nanami_api::wire::{GatewayStatus, Liveness, RegionView, WorkspaceView};
use nanami_model::assign::{assign, verdict, Duty, Verdict};
use nanami_model::explain::NetworkExplanation;
use nanami_model::topology::{NodeStatus, Policy};
use nanami_model::{
    GatewayExplanation, GatewayId, Health, NetworkId, NodeExplanation, NodeId, Topology,
    WorkspaceId,
};

use super::words;
use crate::history::MovementRecord;
use crate::manager::{now_ms, Manager, ManagerError, Summary};

/// Most clients a workspace page lists.
pub const MAX_CLIENTS: usize = 1000;

/// The `head` of every page.
fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Nanami" }
            link rel="stylesheet" href="/ui/style.css";
            link rel="icon" href="/ui/favicon.svg" type="image/svg+xml";
        }
    }
}

/// The frame of every page.
fn layout(title: &str, body: &Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header {
                    span.brand { "Nanami" }
                    nav {
                        a href="/ui" { "Overview" }
                        a href="/ui/gateways" { "Gateways" }
                    }
                    form method="post" action="/ui/logout" {
                        button type="submit" { "Log out" }
                    }
                }
                main { (body) }
                footer { "Read-only oversight. Everything here is also in the API under /v1/oversight." }
            }
        }
    }
}

/// A page with no header navigation (login, denied, errors).
fn bare(title: &str, body: &Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header { span.brand { "Nanami" } nav { a href="/ui" { "Overview" } } }
                main { (body) }
            }
        }
    }
}

/// The login page: `problem` says what was wrong with the last try; `next` is
/// where to go after.
pub fn login(problem: Option<&str>, next: Option<&str>) -> Markup {
    bare(
        "Log in",
        &html! {
            h1 #login { "Operator login" }
            p.lead { "These pages need the operator credential (nmo_…) or the platform credential (nmc_…). It is kept in a cookie for this site only, sent only over TLS, and never readable by scripts." }
            @if let Some(problem) = problem {
                div.notice.error #problem role="alert" { (problem) }
            }
            form.login method="post" action="/ui/login" {
                label for="credential" { "Credential" }
                input #credential type="password" name="credential" autocomplete="off" required;
                @if let Some(next) = next {
                    input type="hidden" name="next" value=(next);
                }
                button type="submit" { "Log in" }
            }
        },
    )
}

/// The page for a credential of another kind.
pub fn denied(kind: &str) -> Markup {
    bare(
        "Denied",
        &html! {
            h1 #denied { "Not for this credential" }
            p { "This is a " strong { (kind) } " credential. The oversight pages need the operator or the platform credential." }
            form method="post" action="/ui/logout" {
                button type="submit" { "Log in with another credential" }
            }
        },
    )
}

/// An error page.
pub fn error(status: StatusCode, message: &str) -> Markup {
    let title = status.canonical_reason().unwrap_or("Error");
    bare(
        title,
        &html! {
            h1 #error { (status.as_u16()) " " (title) }
            div.notice.error { (message) }
            p { a href="/ui" { "Back to the overview" } }
        },
    )
}

/// What the overview shows.
pub struct Overview {
    /// The gauges.
    pub summary: Summary,
    /// The catalog.
    pub regions: Vec<RegionView>,
    /// The workspaces.
    pub workspaces: Vec<WorkspaceView>,
    /// Every gateway.
    pub status: Vec<GatewayStatus>,
    /// Whether there is a topology at all.
    pub has_topology: bool,
}

fn card(value: impl std::fmt::Display, label: &str, class: &str) -> Markup {
    html! { div.card { div.value.(class) { (value) } div.label { (label) } } }
}

/// The overview page.
pub fn overview(v: &Overview) -> Markup {
    let s = &v.summary;
    // (region, workspace) → gateways placed.
    let mut placed: BTreeMap<(&str, &str), Vec<&GatewayId>> = BTreeMap::new();
    for g in &v.status {
        if let (Some(r), Some(w)) = (&g.region, &g.workspace) {
            placed
                .entry((r.as_str(), w.as_str()))
                .or_default()
                .push(&g.id);
        }
    }
    layout(
        "Overview",
        &html! {
            h1 { "Overview" }
            p.lead { "Topology revision " (s.revision) "." }
            @if !v.has_topology {
                div.empty #no-topology { "No topology yet: give the manager one (PUT /v1/topology or the object API) and its regions, workspaces and gateways appear here." }
            } @else {
                div.cards {
                    (card(s.online, "gateways online", if s.online > 0 { "ok" } else { "" }))
                    (card(s.offline, "gateways offline", if s.offline > 0 { "bad" } else { "" }))
                    (card(s.paths_unhealthy, "forwarding paths down", if s.paths_unhealthy > 0 { "warn" } else { "" }))
                    (card(s.converged, "gateways converged", ""))
                    (card(if s.store_ok { "ok" } else { "FAILING" }, "store", if s.store_ok { "ok" } else { "bad" }))
                }
                h2 { "Regions × workspaces" }
                @if v.regions.is_empty() {
                    div.empty { "The region catalog is empty." }
                } @else {
                    table #matrix {
                        thead { tr {
                            th { "Region" } th { "State" }
                            @for w in &v.workspaces { th { a href={ "/ui/workspaces/" (w.id) } { (w.id) } } }
                        } }
                        tbody {
                            @for r in &v.regions {
                                tr data-region=(r.id) {
                                    td { strong { (r.id) } br; span.muted { (r.display_name) } }
                                    td { span.badge.(region_class(&r.state)) { (r.state) } }
                                    @for w in &v.workspaces {
                                        td data-workspace=(w.id) {
                                            @if r.workspaces.contains(&w.id) {
                                                span.ok { "access" }
                                                @match placed.get(&(r.id.as_str(), w.id.as_str())) {
                                                    Some(gws) => {
                                                        br;
                                                        @for (i, g) in gws.iter().enumerate() {
                                                            @if i > 0 { ", " }
                                                            a href={ "/ui/gateways/" (g) } { (g) }
                                                        }
                                                    }
                                                    None => { br; span.muted { "no gateways" } }
                                                }
                                            } @else {
                                                span.muted { "—" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
                h2 { "Workspaces" }
                table #workspaces {
                    thead { tr { th { "Workspace" } th { "Tenant" } th { "Regions" } th.num { "Gateways" } th.num { "Active nodes" } } }
                    tbody {
                        @for w in &v.workspaces {
                            tr {
                                td { a href={ "/ui/workspaces/" (w.id) } { (w.id) } }
                                td { (w.tenant) }
                                td { (w.regions.join(", ")) }
                                td.num { (w.gateways.len()) }
                                td.num { (w.active_nodes) }
                            }
                        }
                    }
                }
            }
        },
    )
}

fn region_class(state: &str) -> &'static str {
    match state {
        "active" => "ok",
        "draining" => "warn",
        _ => "bad",
    }
}

/// One gateway as the tables show it.
pub struct GatewayRow {
    /// Its status.
    pub status: GatewayStatus,
    /// `drain: true` in the topology.
    pub drained: bool,
    /// Its region's state.
    pub region_state: Option<String>,
    /// Bytes received from its peers, from its last report.
    pub rx: u64,
    /// Bytes sent to its peers.
    pub tx: u64,
}

/// Every gateway's row (or only `only`'s), in id order.
pub fn gateway_rows(m: &Manager, only: Option<&GatewayId>) -> Vec<GatewayRow> {
    let current = m.current();
    let telemetry = m.telemetry(false);
    m.status()
        .into_iter()
        .filter(|s| only.is_none_or(|id| &s.id == id))
        .map(|status| {
            let found = current
                .as_ref()
                .and_then(|(t, _)| Some((t, t.gateway(&status.id)?.1)));
            let drained = found.is_some_and(|(_, g)| g.drain);
            let region_state = found.and_then(|(t, g)| {
                let r = t.regions.get(&g.region)?;
                serde_json::to_value(r.state)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
            });
            let (rx, tx) = telemetry.get(&status.id).map_or((0, 0), |t| {
                t.peers.iter().fold((0u64, 0u64), |(rx, tx), p| {
                    (
                        rx.saturating_add(p.telemetry.rx_bytes),
                        tx.saturating_add(p.telemetry.tx_bytes),
                    )
                })
            });
            GatewayRow {
                status,
                drained,
                region_state,
                rx,
                tx,
            }
        })
        .collect()
}

fn liveness(row: &GatewayRow) -> Markup {
    let s = &row.status;
    html! {
        @if s.workspace.is_none() {
            span.badge.warn { "removed" }
        } @else if s.health == Liveness::Online {
            span.badge.ok { "online" }
        } @else {
            span.badge.bad { "offline" }
        }
        @if row.drained { " " span.badge.warn.drained { "drained" } }
        @if row.region_state.as_deref().is_some_and(|r| r != "active") {
            " " span.badge.warn { "region " (row.region_state.as_deref().unwrap_or("")) }
        }
    }
}

fn gateway_table(rows: &[GatewayRow], id: &str) -> Markup {
    let now = now_ms();
    html! {
        table id=(id) {
            thead { tr {
                th { "Gateway" } th { "Workspace" } th { "Region" } th { "Health" } th { "Paths" }
                th.num { "Generation" } th.num { "Peers" } th { "Newest handshake" } th.num { "Received" } th.num { "Sent" }
            } }
            tbody {
                @for r in rows {
                    @let s = &r.status;
                    tr data-gateway=(s.id) {
                        td { a href={ "/ui/gateways/" (s.id) } { (s.id) } }
                        td { @if let Some(w) = &s.workspace { a href={ "/ui/workspaces/" (w) } { (w) } } @else { span.muted { "—" } } }
                        td { (s.region.as_deref().unwrap_or("—")) }
                        td.health { (liveness(r)) }
                        td.paths {
                            @if s.unhealthy_networks.is_empty() { span.ok { "healthy" } }
                            @else {
                                span.bad { "down: " }
                                (s.unhealthy_networks.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))
                            }
                        }
                        td.num {
                            (s.desired_generation) " / "
                            @match s.observed_generation {
                                Some(o) if o == s.desired_generation => { span.ok { (o) } }
                                Some(o) => { span.warn { (o) } }
                                None => { span.muted { "never" } }
                            }
                        }
                        td.num { (s.observed_peers) " / " (s.peers) }
                        td {
                            @match s.newest_handshake.and_then(|t| t.duration_since(UNIX_EPOCH).ok()) {
                                Some(d) => { (words::ago(u64::try_from(d.as_millis()).unwrap_or(u64::MAX), now)) }
                                None => { span.muted { "none" } }
                            }
                        }
                        td.num { (words::bytes(r.rx)) }
                        td.num { (words::bytes(r.tx)) }
                    }
                }
            }
        }
    }
}

/// The gateways page.
pub fn gateways(rows: &[GatewayRow]) -> Markup {
    layout(
        "Gateways",
        &html! {
            h1 { "Gateways" }
            p.lead { "Generation: desired / observed. Peers: reported / desired. Traffic: totals over the peers of the last report." }
            @if rows.is_empty() {
                div.empty { "No gateways yet." }
            } @else {
                (gateway_table(rows, "gateways"))
            }
        },
    )
}

fn verdict_cell(v: &Verdict) -> Markup {
    html! {
        @if words::bad(v) { span.bad.verdict { (words::verdict(v)) } }
        @else { span.ok.verdict { (words::verdict(v)) } }
    }
}

/// One gateway's page.
pub fn gateway(row: &GatewayRow, why: Option<&GatewayExplanation>) -> Markup {
    let s = &row.status;
    layout(
        &format!("Gateway {}", s.id),
        &html! {
            h1 { "Gateway " (s.id) }
            p.lead {
                (liveness(row))
                @if let Some(w) = &s.workspace { " in workspace " a href={ "/ui/workspaces/" (w) } { (w) } }
                @if let Some(r) = &s.region { ", region " (r) }
            }
            @if row.drained {
                div.notice #drained-notice { "Drained (maintenance): it takes no clients, and the clients it held moved to other gateways." }
            }
            @if s.key_mismatch {
                div.notice.error { "The key it enrolled with is not its node's key in the topology: clients cannot reach it." }
            }
            @if let Some(e) = &s.store_error {
                div.notice.error { "Not stored yet: " (e) }
            }
            (gateway_table(std::slice::from_ref(row), "gateway"))
            @match why {
                None => { div.empty { "It is no longer in the topology." } }
                Some(why) => {
                    p { "Carries " strong #load { (why.load) } " client" @if why.load != 1 { "s" }
                        ", capacity " (why.capacity.map_or_else(|| "unbounded".to_owned(), |c| c.to_string())) "." }
                    @for n in &why.networks {
                        h2 { "Network " (n.network) }
                        p { "As the network's gateway: " (verdict_cell(&n.verdict))
                            @if let Some(e) = &n.exit_verdict { "; as exit: " (verdict_cell(e)) }
                        }
                        @if n.safety_rule {
                            div.notice { "No gateway of the network was eligible: those whose only fault is the path stay candidates (safety rule)." }
                        }
                        @if n.clients.is_empty() && n.exit_clients.is_empty() {
                            div.empty.no-clients { "No clients here." }
                        } @else {
                            table.clients data-network=(n.network) {
                                thead { tr { th { "Client" } th { "As" } th { "Position" } th { "In its policy order" } } }
                                tbody {
                                    @for (c, role) in n.clients.iter().map(|c| (c, "gateway")).chain(n.exit_clients.iter().map(|c| (c, "exit"))) {
                                        tr data-node=(c.node) {
                                            td { a href={ "/ui/nodes/" (c.node) } { (c.node) } }
                                            td { (role) }
                                            td { @if c.position == 0 { "primary" } @else { "standby " (c.position) } }
                                            td { "#" (c.preference + 1) }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

/// A client's row on its workspace's page.
pub struct ClientRow {
    /// The node.
    pub id: NodeId,
    /// Its status.
    pub status: NodeStatus,
    /// Its gateways per network, in failover order.
    pub networks: Vec<(NetworkId, Vec<GatewayId>)>,
    /// Its exit network and gateways.
    pub exit: Option<(NetworkId, Vec<GatewayId>)>,
    /// It wants an exit.
    pub wants_exit: bool,
}

/// A network on its workspace's page.
pub struct NetworkRow {
    /// The network.
    pub id: NetworkId,
    /// Its overlay prefixes and routes, as text.
    pub overlay: String,
    /// Its routes.
    pub routes: String,
    /// Its policy and redundancy, in words.
    pub policy: String,
    /// Each gateway serving it with its verdict.
    pub gateways: Vec<(GatewayId, Verdict)>,
}

/// What a workspace's page shows.
pub struct WorkspacePage {
    /// The workspace.
    pub id: WorkspaceId,
    /// Its tenant.
    pub tenant: String,
    /// Its regions in order.
    pub regions: Vec<String>,
    /// Its networks.
    pub networks: Vec<NetworkRow>,
    /// Its gateways.
    pub gateways: Vec<GatewayRow>,
    /// Its clients (at most [`MAX_CLIENTS`]).
    pub clients: Vec<ClientRow>,
    /// How many clients it has in all.
    pub client_count: usize,
}

impl WorkspacePage {
    /// Builds the page from the topology and health in force (runs the
    /// workspace's assignment: call it off the async workers).
    pub fn build(
        topology: &Topology,
        health: &Health,
        id: &WorkspaceId,
        gateways: Vec<GatewayRow>,
    ) -> Option<Self> {
        let ws = topology.workspaces.get(id)?;
        let a = assign(topology, ws, health);
        let networks = ws
            .networks
            .values()
            .map(|n| NetworkRow {
                id: n.id.clone(),
                overlay: n
                    .overlay
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                routes: n
                    .routes
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
                policy: format!(
                    "{}, redundancy {}{}",
                    match &n.policy {
                        Policy::Auto => "auto".to_owned(),
                        Policy::Balanced => "balanced".to_owned(),
                        Policy::Manual(list) => format!(
                            "manual [{}]",
                            list.iter()
                                .map(ToString::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    },
                    n.redundancy,
                    if n.exit { ", exit" } else { "" }
                ),
                gateways: ws
                    .gateways
                    .values()
                    .filter(|g| g.networks.contains(&n.id))
                    .map(|g| {
                        (
                            g.id.clone(),
                            verdict(topology, ws, g, &n.id, Duty::Network, health),
                        )
                    })
                    .collect(),
            })
            .collect();
        let clients: Vec<&nanami_model::topology::Node> = ws
            .nodes
            .values()
            .filter(|n| !ws.is_gateway_node(&n.id))
            .collect();
        let client_count = clients.len();
        let clients = clients
            .into_iter()
            .take(MAX_CLIENTS)
            .map(|n| ClientRow {
                id: n.id.clone(),
                status: n.status,
                networks: n
                    .memberships
                    .keys()
                    .map(|net| {
                        let gws = a
                            .ordered
                            .get(&n.id)
                            .and_then(|m| m.get(net))
                            .cloned()
                            .unwrap_or_default();
                        (net.clone(), gws)
                    })
                    .collect(),
                exit: a.exits.get(&n.id).cloned(),
                wants_exit: n.exit,
            })
            .collect();
        Some(Self {
            id: id.clone(),
            tenant: ws.tenant.clone(),
            regions: ws.regions.iter().map(ToString::to_string).collect(),
            networks,
            gateways,
            clients,
            client_count,
        })
    }
}

fn chain(gws: &[GatewayId]) -> Markup {
    html! {
        @if gws.is_empty() { span.bad { "none" } }
        @for (i, g) in gws.iter().enumerate() {
            @if i == 0 { a.primary href={ "/ui/gateways/" (g) } { (g) } }
            @else { ", " span.muted { "standby " } a href={ "/ui/gateways/" (g) } { (g) } }
        }
    }
}

/// A workspace's page.
pub fn workspace(p: &WorkspacePage) -> Markup {
    layout(
        &format!("Workspace {}", p.id),
        &html! {
            h1 { "Workspace " (p.id) }
            p.lead { "Tenant " (p.tenant) ". Regions in order of preference: " (p.regions.join(", ")) "." }
            h2 { "Networks" }
            @if p.networks.is_empty() { div.empty { "No networks." } } @else {
                table #networks {
                    thead { tr { th { "Network" } th { "Overlay" } th { "Routes" } th { "Policy" } th { "Gateways (verdict)" } } }
                    tbody {
                        @for n in &p.networks {
                            tr data-network=(n.id) {
                                td { (n.id) } td { (n.overlay) } td { (n.routes) } td { (n.policy) }
                                td {
                                    @if n.gateways.is_empty() { span.bad { "no gateway serves it" } }
                                    @for (g, v) in &n.gateways {
                                        div data-gateway=(g) { a href={ "/ui/gateways/" (g) } { (g) } ": " (verdict_cell(v)) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            h2 { "Gateways" }
            @if p.gateways.is_empty() { div.empty { "No gateways." } } @else { (gateway_table(&p.gateways, "gateways")) }
            h2 { "Clients" }
            @if p.client_count > p.clients.len() {
                p.muted { "The first " (p.clients.len()) " of " (p.client_count) " clients, by id." }
            }
            @if p.clients.is_empty() { div.empty { "No clients." } } @else {
                table #clients {
                    thead { tr { th { "Client" } th { "Status" } th { "Gateways per network (primary first)" } th { "Exit" } } }
                    tbody {
                        @for c in &p.clients {
                            tr data-node=(c.id) {
                                td { a href={ "/ui/nodes/" (c.id) } { (c.id) } }
                                td { @if c.status == NodeStatus::Active { span.ok { "active" } } @else { span.muted { (status_word(c.status)) } } }
                                td {
                                    @if c.status != NodeStatus::Active { span.muted { "not placed" } }
                                    @else {
                                        @for (net, gws) in &c.networks {
                                            div data-network=(net) { (net) ": " (chain(gws)) }
                                        }
                                    }
                                }
                                td {
                                    @match &c.exit {
                                        Some((net, gws)) => { "via " (net) ": " (chain(gws)) }
                                        None if c.wants_exit && c.status == NodeStatus::Active => { span.bad { "none available" } }
                                        None => { span.muted { "—" } }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        },
    )
}

fn status_word(s: NodeStatus) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| format!("{s:?}"))
}

fn explanation_table(n: &NetworkExplanation) -> Markup {
    html! {
        table.explain data-network=(n.network) {
            thead { tr { th { "Gateway" } th { "Verdict" } th { "Outcome" } } }
            tbody {
                @for g in &n.gateways {
                    tr data-gateway=(g.gateway) {
                        td { a href={ "/ui/gateways/" (g.gateway) } { (g.gateway) } }
                        td { (verdict_cell(&g.verdict)) }
                        td.outcome { (words::outcome(&g.outcome)) }
                    }
                }
            }
        }
    }
}

/// A node's page: its explanation (or why there is none) and its history.
pub fn node(
    id: &NodeId,
    workspace: Option<&WorkspaceId>,
    why: &Result<NodeExplanation, ManagerError>,
    history: &[MovementRecord],
) -> Markup {
    let now = now_ms();
    layout(
        &format!("Node {id}"),
        &html! {
            h1 { "Node " (id) }
            @if let Some(w) = workspace { p.lead { "In workspace " a href={ "/ui/workspaces/" (w) } { (w) } "." } }
            h2 { "Why it is where it is" }
            @match why {
                Ok(why) => {
                    @for n in &why.networks {
                        h3 { "Network " (n.network) }
                        p { "Primary: " strong.primary data-network=(n.network) { (n.primary.as_ref().map_or("none (no candidate had room)".to_owned(), ToString::to_string)) }
                            @if !n.standbys.is_empty() { "; standbys: " (n.standbys.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")) } }
                        @if n.safety_rule { div.notice { "No gateway was eligible: those whose only fault is the path stay candidates (safety rule)." } }
                        (explanation_table(n))
                    }
                    @match &why.exit {
                        None => { p.muted { "It does not want an exit." } }
                        Some(exit) => {
                            h3 { "Exit" }
                            @match &exit.network {
                                Some(net) => { p { "Through network " (net) "." } }
                                None => { p.bad { "None: no exit gateway could take it." } }
                            }
                            @for t in &exit.tried { (explanation_table(t)) }
                        }
                    }
                }
                Err(ManagerError::Compile(message)) => { div.empty #not-placed { "Not placed: " (message) } }
                Err(e) => { div.notice.error { (e) } }
            }
            h2 { "Movements" }
            @if history.is_empty() {
                div.empty #no-movements { "No movements since the manager started: its gateways have not changed." }
            } @else {
                table #movements {
                    thead { tr { th { "When" } th.num { "Revision" } th { "Placement" } th { "From" } th { "To" } th { "Trigger" } th { "Cause" } } }
                    tbody {
                        @for r in history {
                            tr {
                                td { (words::ago(r.at_unix_ms, now)) }
                                td.num { (r.revision) }
                                td { (words::slot(&r.movement.slot)) }
                                td.from { (r.movement.from.as_ref().map_or("none".to_owned(), ToString::to_string)) }
                                td.to { (r.movement.to.as_ref().map_or("none".to_owned(), ToString::to_string)) }
                                td { (words::trigger(r.trigger)) }
                                td.cause { (words::cause(&r.movement.cause)) }
                            }
                        }
                    }
                }
            }
        },
    )
}
