//! Compiling only what a change can affect, and bumping only the generations whose
//! content changed.
//!
//! A workspace's gateways depend on that workspace and the region catalog alone
//! (assignment never crosses workspaces), so a change confined to some workspaces
//! recompiles their gateways only ([`Scope::Workspaces`]); a catalog change or a
//! health verdict that can move anything recompiles everything ([`Scope::All`]).
//! Either way a gateway's generation is bumped only when the digest of what it is
//! served ([`content_digest`]) differs from the one it has.

use std::collections::{BTreeMap, BTreeSet};

use nanami_model::{
    compile_workspace, health_targets, GatewayId, GatewayState, Health, HealthTargets,
    SerializeError, Topology, WorkspaceId,
};

/// `targets_json` of a gateway that probes nothing (and of rows stored before
/// health targets existed).
pub const NO_TARGETS: &str = "{}";

/// One gateway's compiled state at a generation, as stored and served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayRow {
    /// Its generation.
    pub generation: u64,
    /// The compiled [`GatewayState`], as JSON.
    pub state_json: String,
    /// Its [`HealthTargets`] (what it probes), as JSON: part of the generation,
    /// like the state.
    pub targets_json: String,
    /// Its uplink when it is hosted: part of the generation too.
    pub uplink: Option<String>,
}

/// Rows whose content changed, at their next generation, with their peer counts.
pub type Compiled = BTreeMap<GatewayId, (GatewayRow, usize)>;

/// What a compile must cover.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope<'a> {
    /// Every gateway (a catalog change, a health verdict, an import).
    All,
    /// The gateways of these workspaces, before and after the change.
    Workspaces(&'a BTreeSet<WorkspaceId>),
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().take(16).map(|b| format!("{b:02x}")).collect()
}

/// The digest of a generation's content: the first 16 bytes of the SHA-256 of its
/// state, health targets and uplink (as served), in hex. Served as the desired
/// answer's `ETag` and reported back by the daemon with its applied generation.
pub fn content_digest(state_json: &str, targets_json: &str, uplink: Option<&str>) -> String {
    use sha2::{Digest as _, Sha256};
    let mut h = Sha256::new();
    h.update(state_json.as_bytes());
    h.update([0]);
    h.update(targets_json.as_bytes());
    if let Some(uplink) = uplink {
        h.update([0]);
        h.update(uplink.as_bytes());
    }
    hex(&h.finalize())
}

/// Serializes a compiled value. Its types are ordered maps, strings and integers,
/// so this cannot fail; if it ever did, that is a bug to report.
pub fn to_json<T: serde::Serialize>(
    value: &T,
    what: &'static str,
) -> Result<String, SerializeError> {
    serde_json::to_string(value).map_err(|e| SerializeError::new(what, e))
}

fn targets_json(targets: &HealthTargets) -> Result<String, SerializeError> {
    if targets.is_empty() {
        return Ok(NO_TARGETS.to_owned());
    }
    to_json(targets, "health targets")
}

/// The gateways a compile of `scope` covers: those of the scoped workspaces in the
/// topology `before` the change and in the one `after` it (a gateway that left
/// must be served the empty state), or, for [`Scope::All`], every gateway of
/// `after` and every one in `known`.
pub fn gateways_in_scope<'a>(
    scope: Scope<'_>,
    before: Option<&Topology>,
    after: &Topology,
    known: impl IntoIterator<Item = &'a GatewayId>,
) -> BTreeSet<GatewayId> {
    match scope {
        Scope::All => after
            .gateway_ids()
            .cloned()
            .chain(known.into_iter().cloned())
            .collect(),
        Scope::Workspaces(ids) => {
            let mut out = BTreeSet::new();
            for t in before.into_iter().chain([after]) {
                for id in ids {
                    if let Some(ws) = t.workspaces.get(id) {
                        out.extend(ws.gateways.keys().cloned());
                    }
                }
            }
            out
        }
    }
}

/// Compiles `gateways` under `health` and returns those whose content differs
/// from `known` (their generation and digest), at their next generation. Each
/// workspace is assigned once; a gateway that is not in `topology` gets the empty
/// state (its daemon removes everything Nanami owns).
pub fn compile_changed(
    known: &BTreeMap<GatewayId, (u64, String)>,
    gateways: &BTreeSet<GatewayId>,
    topology: &Topology,
    health: &Health,
) -> Result<Compiled, SerializeError> {
    let workspaces: BTreeSet<&WorkspaceId> = gateways
        .iter()
        .filter_map(|g| topology.gateway(g).map(|(ws, _)| &ws.id))
        .collect();
    let mut compiled: BTreeMap<GatewayId, GatewayState> = BTreeMap::new();
    for ws in workspaces {
        compiled.extend(compile_workspace(topology, health, ws));
    }
    let empty = GatewayState::default();
    let mut changed = BTreeMap::new();
    for id in gateways {
        let state = compiled.get(id).unwrap_or(&empty);
        let json = to_json(state, "a gateway state")?;
        let targets = targets_json(&health_targets(topology, id))?;
        let uplink = topology
            .gateway(id)
            .and_then(|(_, g)| g.uplink.as_ref())
            .map(|u| u.as_str().to_owned());
        let generation = match known.get(id) {
            Some((_, digest)) if *digest == content_digest(&json, &targets, uplink.as_deref()) => {
                continue
            }
            Some((generation, _)) => generation + 1,
            None => 1,
        };
        changed.insert(
            id.clone(),
            (
                GatewayRow {
                    generation,
                    state_json: json,
                    targets_json: targets,
                    uplink,
                },
                state.peer_count(),
            ),
        );
    }
    Ok(changed)
}
