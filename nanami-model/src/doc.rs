//! The topology document, version 1, exactly as it is written: the serde form.
//!
//! Scalars that can be wrong in interesting ways (ids, keys, prefixes, addresses,
//! enumerations) are read as text here and checked by [`crate::validate`], so one
//! pass reports every problem with its path instead of stopping at the first.
//! Unknown fields are read past and recorded in [`Document::unknown_fields`], so
//! that they too are reported by that pass, with their paths, next to every other
//! problem; wrong shapes (a list where a mapping belongs, a word where a number
//! does) are parse errors.

use serde::{Deserialize, Serialize};

/// Largest document accepted by [`Document::from_yaml`] and [`Document::from_json`]:
/// 32 MiB holds a 100,000-node topology with room to spare, and bounds what an
/// untrusted caller can make us allocate.
pub const MAX_DOCUMENT_BYTES: usize = 32 * 1024 * 1024;

/// The only document version this crate reads.
pub const VERSION: u32 = 1;

/// A value of Nanami's own types could not be written. Never bad input: their
/// fields are strings, numbers, booleans, lists and ordered maps, so this is a bug
/// (report it), and it is returned rather than hidden behind an empty text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bug: {what} could not be serialized: {message}")]
pub struct SerializeError {
    what: &'static str,
    message: String,
}

impl SerializeError {
    /// `what` failed to serialize with `error`.
    pub fn new(what: &'static str, error: impl std::fmt::Display) -> Self {
        Self {
            what,
            message: error.to_string(),
        }
    }
}

/// Why a document could not be read at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The text is larger than the limit; nothing was parsed.
    #[error("document is {size} bytes, the limit is {limit}")]
    TooLarge {
        /// Its size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// The YAML is malformed or has a value of the wrong shape. (Unknown fields
    /// are not parse errors: validation reports them with their paths.)
    #[error("YAML: {0}")]
    Yaml(String),
    /// The YAML nests flow collections (`[`, `{`) deeper than
    /// [`MAX_YAML_NESTING`]; no topology needs that, and the YAML parser's cost grows
    /// with the square of the depth, so it is refused before parsing.
    #[error("YAML nests [ and {{ more than {limit} deep (line {line})")]
    TooDeep {
        /// The limit.
        limit: usize,
        /// Where the limit was crossed (1-based).
        line: usize,
    },
    /// The JSON is malformed or has a value of the wrong shape. (Unknown fields
    /// are not parse errors: validation reports them with their paths.)
    #[error("JSON: {0}")]
    Json(String),
}

/// One value or a list of them (`overlay: 10.0.0.0/8` or `overlay: [a, b]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum OneOrMany {
    /// A single value.
    One(String),
    /// A list.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The values as a slice.
    pub fn as_slice(&self) -> &[String] {
        match self {
            Self::One(s) => std::slice::from_ref(s),
            Self::Many(v) => v,
        }
    }
}

/// The whole document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Document {
    /// Must be 1.
    pub version: u32,
    /// The platform's region catalog.
    pub regions: Vec<RegionDoc>,
    /// Tenants' workspaces.
    pub workspaces: Vec<WorkspaceDoc>,
    /// Fields the text had that document version 1 does not define, in the order
    /// they were read: [`crate::validate`] reports each as an issue at its path.
    /// Filled by [`Document::from_yaml`] and [`Document::from_json`]; never written
    /// back by [`Document::to_yaml`] or [`Document::to_json`].
    #[serde(skip)]
    pub unknown_fields: Vec<UnknownField>,
}

/// A field of the text that document version 1 does not define.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UnknownField {
    /// Where it is, from the document's root: `[Field("workspaces"), Index(0),
    /// Field("gateways"), Index(1), Field("colour")]`. The last part is the field.
    pub path: Vec<PathPart>,
}

/// One step of an [`UnknownField`]'s path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PathPart {
    /// A field of a mapping.
    Field(String),
    /// A position in a list (0-based).
    Index(usize),
}

impl UnknownField {
    /// The unknown field's own name (the last part of its path).
    pub fn name(&self) -> &str {
        match self.path.last() {
            Some(PathPart::Field(name)) => name,
            Some(PathPart::Index(_)) | None => "",
        }
    }

    fn from_ignored(path: &serde_ignored::Path<'_>) -> Self {
        let mut parts = Vec::new();
        let mut at = path;
        loop {
            match at {
                serde_ignored::Path::Root => break,
                serde_ignored::Path::Seq { parent, index } => {
                    parts.push(PathPart::Index(*index));
                    at = parent;
                }
                serde_ignored::Path::Map { parent, key } => {
                    parts.push(PathPart::Field(key.clone()));
                    at = parent;
                }
                serde_ignored::Path::Some { parent }
                | serde_ignored::Path::NewtypeStruct { parent }
                | serde_ignored::Path::NewtypeVariant { parent } => at = parent,
            }
        }
        parts.reverse();
        Self { path: parts }
    }
}

/// A catalog region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct RegionDoc {
    /// Region id.
    pub id: String,
    /// Human name; the id when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    /// `active`, `draining` or `retired`.
    pub state: String,
}

/// A workspace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkspaceDoc {
    /// Workspace id.
    pub id: String,
    /// The tenant that owns it.
    pub tenant: String,
    /// Regions it may use, in order of preference.
    pub regions: Vec<String>,
    /// Its networks.
    #[serde(default)]
    pub networks: Vec<NetworkDoc>,
    /// Its nodes (clients and gateway machines).
    #[serde(default)]
    pub nodes: Vec<NodeDoc>,
    /// Its gateways.
    #[serde(default)]
    pub gateways: Vec<GatewayDoc>,
}

/// A workspace without its contents: what the platform decides about it (its
/// tenant and the regions it may use, its region access grants). The object API
/// reads and writes workspaces in this form; their networks, nodes and gateways
/// are objects of their own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WorkspaceSpec {
    /// Workspace id.
    pub id: String,
    /// The tenant that owns it.
    pub tenant: String,
    /// Regions it may use, in order of preference.
    pub regions: Vec<String>,
}

impl WorkspaceDoc {
    /// Its [`WorkspaceSpec`] (everything but its contents).
    pub fn spec(&self) -> WorkspaceSpec {
        WorkspaceSpec {
            id: self.id.clone(),
            tenant: self.tenant.clone(),
            regions: self.regions.clone(),
        }
    }
}

/// A network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NetworkDoc {
    /// Network id, unique in its workspace.
    pub id: String,
    /// Member tunnel prefixes: at most one IPv4 and one IPv6. They must not overlap
    /// another overlay or route of the same workspace; other workspaces may reuse
    /// them.
    pub overlay: OneOrMany,
    /// Private subnets reached through the network's egress gateways; like the
    /// overlay, disjoint inside the workspace, free to repeat across workspaces.
    #[serde(default)]
    pub routes: Vec<String>,
    /// Whether gateways may serve as exit nodes.
    #[serde(default)]
    pub exit: bool,
    /// Whether traffic leaving toward `routes` is masqueraded.
    #[serde(default = "default_true")]
    pub nat: bool,
    /// Gateway assignment policy.
    #[serde(default)]
    pub gateways: PolicyDoc,
    /// Addresses behind the gateways, each inside one of `routes`, that a gateway
    /// probes to tell whether its forwarding path to this network works. A failing
    /// path is reported as [`crate::Health::unhealthy`] for (gateway, network).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub health_targets: Vec<String>,
}

fn default_true() -> bool {
    true
}

fn default_redundancy() -> u32 {
    1
}

fn default_policy() -> String {
    "auto".to_owned()
}

/// `gateways: { policy: auto | balanced | manual, manual: [ids], redundancy: k }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PolicyDoc {
    /// `auto`, `balanced` or `manual`.
    #[serde(default = "default_policy")]
    pub policy: String,
    /// For `manual`: the gateways in order of preference.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub manual: Vec<String>,
    /// How many gateways hold each client: its primary and `redundancy - 1`
    /// standbys, each pre-provisioned with the client as a peer.
    #[serde(default = "default_redundancy")]
    pub redundancy: u32,
}

impl Default for PolicyDoc {
    fn default() -> Self {
        Self {
            policy: default_policy(),
            manual: Vec::new(),
            redundancy: default_redundancy(),
        }
    }
}

/// A node: a client or a gateway machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeDoc {
    /// Node id, unique in the document.
    pub id: String,
    /// Its WireGuard public key, base64.
    pub public_key: String,
    /// `pending`, `active`, `disabled` or `revoked`.
    pub status: String,
    /// Where it can be reached (`ip:port`), most preferred first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub endpoints: Vec<String>,
    /// Networks it belongs to.
    #[serde(default)]
    pub memberships: Vec<MembershipDoc>,
    /// Whether it wants its default route through an exit gateway.
    #[serde(default)]
    pub exit: bool,
}

/// Membership of a node in a network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct MembershipDoc {
    /// The network id.
    pub network: String,
    /// Its overlay address(es); allocated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<OneOrMany>,
}

/// A gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct GatewayDoc {
    /// Gateway id, unique in the document; its interface is `nm-<id>`.
    pub id: String,
    /// The node record whose key and overlay addresses the gateway uses.
    pub node: String,
    /// The region it runs in.
    pub region: String,
    /// Networks it serves.
    pub networks: Vec<String>,
    /// `ingress`, `egress`, `exit`.
    pub roles: Vec<String>,
    /// Public `ip:port` clients dial.
    pub endpoint: String,
    /// UDP port it listens on.
    pub listen_port: u16,
    /// Most clients it takes; unbounded when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<u32>,
    /// Maintenance mode: the gateway is not eligible, so it takes no new clients and
    /// the ones it holds move at the next generation.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drain: bool,
    /// Hosting: the interface (a VLAN, veth or NIC) that leads to the gateway's LAN
    /// on a machine that hosts gateways of several workspaces. With it, the gateway
    /// runs in its own network namespace `nm-<id>` that its daemon creates, and the
    /// uplink is moved into it; without it, the gateway uses the machine's own
    /// namespace (a dedicated machine).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uplink: Option<String>,
}

/// Reads one part of a document (a region, a workspace spec, a network, a node,
/// a gateway) from JSON, as the object API receives it: the fields its type does
/// not define are returned with their paths (from the part's root), for the caller
/// to report like [`Document::unknown_fields`].
pub fn part_from_json<T: serde::de::DeserializeOwned>(
    text: &[u8],
) -> Result<(T, Vec<UnknownField>), ParseError> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(ParseError::TooLarge {
            size: text.len(),
            limit: MAX_DOCUMENT_BYTES,
        });
    }
    let mut unknown = Vec::new();
    let mut de = serde_json::Deserializer::from_slice(text);
    let part: T = serde_ignored::deserialize(&mut de, |path| {
        unknown.push(UnknownField::from_ignored(&path));
    })
    .map_err(|e| ParseError::Json(e.to_string()))?;
    de.end().map_err(|e| ParseError::Json(e.to_string()))?;
    Ok((part, unknown))
}

impl Document {
    /// Reads YAML (a superset of JSON).
    pub fn from_yaml(text: &str) -> Result<Self, ParseError> {
        check_size(text)?;
        check_yaml_nesting(text)?;
        let mut unknown = Vec::new();
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let mut doc: Self =
            serde_ignored::deserialize(de, |path| unknown.push(UnknownField::from_ignored(&path)))
                .map_err(|e| ParseError::Yaml(e.to_string()))?;
        doc.unknown_fields = unknown;
        Ok(doc)
    }

    /// Reads JSON.
    pub fn from_json(text: &str) -> Result<Self, ParseError> {
        check_size(text)?;
        let mut unknown = Vec::new();
        let mut de = serde_json::Deserializer::from_str(text);
        let mut doc: Self = serde_ignored::deserialize(&mut de, |path| {
            unknown.push(UnknownField::from_ignored(&path));
        })
        .map_err(|e| ParseError::Json(e.to_string()))?;
        // Trailing text after the document is an error, as with `serde_json::from_str`.
        de.end().map_err(|e| ParseError::Json(e.to_string()))?;
        doc.unknown_fields = unknown;
        Ok(doc)
    }

    /// Writes YAML.
    pub fn to_yaml(&self) -> Result<String, SerializeError> {
        serde_yaml_ng::to_string(self).map_err(|e| SerializeError::new("a topology document", e))
    }

    /// Writes pretty JSON.
    pub fn to_json(&self) -> Result<String, SerializeError> {
        serde_json::to_string_pretty(self)
            .map_err(|e| SerializeError::new("a topology document", e))
    }
}

/// Deepest flow nesting (`[`/`{`) accepted in YAML. A topology needs 3 or 4 levels;
/// the YAML parser (libyaml) spends time proportional to the depth on every token,
/// so 100,000 nested brackets would cost minutes of CPU.
pub const MAX_YAML_NESTING: usize = 64;

/// Refuses flow nesting deeper than [`MAX_YAML_NESTING`] in one linear pass that
/// tokenizes the text as libyaml does (see [`crate::yaml_depth`]), so quotes,
/// comments and block scalars can't hide brackets from it.
fn check_yaml_nesting(text: &str) -> Result<(), ParseError> {
    crate::yaml_depth::check(text, MAX_YAML_NESTING).map_err(|line| ParseError::TooDeep {
        limit: MAX_YAML_NESTING,
        line,
    })
}

fn check_size(text: &str) -> Result<(), ParseError> {
    if text.len() > MAX_DOCUMENT_BYTES {
        return Err(ParseError::TooLarge {
            size: text.len(),
            limit: MAX_DOCUMENT_BYTES,
        });
    }
    Ok(())
}
