//! The topology document, version 1, exactly as it is written: the serde form.
//!
//! Scalars that can be wrong in interesting ways (ids, keys, prefixes, addresses,
//! enumerations) are read as text here and checked by [`crate::validate`], so one
//! pass reports every problem with its path instead of stopping at the first.
//! Unknown fields and wrong shapes are parse errors.

use serde::{Deserialize, Serialize};

/// Largest document accepted by [`Document::from_yaml`] and [`Document::from_json`]:
/// 32 MiB holds a 100,000-node topology with room to spare, and bounds what an
/// untrusted caller can make us allocate.
pub const MAX_DOCUMENT_BYTES: usize = 32 * 1024 * 1024;

/// The only document version this crate reads.
pub const VERSION: u32 = 1;

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
    /// The YAML is malformed, has an unknown field, or a value of the wrong shape.
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
    /// The JSON is malformed, has an unknown field, or a value of the wrong shape.
    #[error("JSON: {0}")]
    Json(String),
}

/// One value or a list of them (`overlay: 10.0.0.0/8` or `overlay: [a, b]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
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
#[serde(deny_unknown_fields)]
pub struct Document {
    /// Must be 1.
    pub version: u32,
    /// The platform's region catalog.
    pub regions: Vec<RegionDoc>,
    /// Tenants' workspaces.
    pub workspaces: Vec<WorkspaceDoc>,
}

/// A catalog region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
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

/// A network.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
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
#[serde(deny_unknown_fields)]
pub struct MembershipDoc {
    /// The network id.
    pub network: String,
    /// Its overlay address(es); allocated when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<OneOrMany>,
}

/// A gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
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
}

impl Document {
    /// Reads YAML (a superset of JSON).
    pub fn from_yaml(text: &str) -> Result<Self, ParseError> {
        check_size(text)?;
        check_yaml_nesting(text)?;
        serde_yaml_ng::from_str(text).map_err(|e| ParseError::Yaml(e.to_string()))
    }

    /// Reads JSON.
    pub fn from_json(text: &str) -> Result<Self, ParseError> {
        check_size(text)?;
        serde_json::from_str(text).map_err(|e| ParseError::Json(e.to_string()))
    }

    /// Writes YAML.
    pub fn to_yaml(&self) -> String {
        // Serializing plain strings, numbers and lists cannot fail.
        serde_yaml_ng::to_string(self).unwrap_or_default()
    }

    /// Writes pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// Deepest flow nesting (`[`/`{`) accepted in YAML. A topology needs 3 or 4 levels;
/// the YAML parser (libyaml) spends time proportional to the depth on every token,
/// so 100,000 nested brackets would cost minutes of CPU.
pub const MAX_YAML_NESTING: usize = 64;

/// A linear pre-scan that refuses deep flow nesting. It skips quoted scalars and
/// comments; brackets inside plain block scalars count too (a conservative error,
/// never a missed one: they cannot hide nesting from the limit).
fn check_yaml_nesting(text: &str) -> Result<(), ParseError> {
    let mut depth = 0usize;
    let mut line = 1;
    let mut chars = text.chars().peekable();
    let mut prev = '\n';
    while let Some(c) = chars.next() {
        match c {
            '\n' => line += 1,
            '#' if prev.is_whitespace() => {
                // A comment runs to the end of the line.
                for c in chars.by_ref() {
                    if c == '\n' {
                        line += 1;
                        break;
                    }
                }
                prev = '\n';
                continue;
            }
            '"' => {
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            chars.next();
                        }
                        '"' => break,
                        '\n' => line += 1,
                        _ => {}
                    }
                }
            }
            '\'' if !prev.is_alphanumeric() => {
                for c in chars.by_ref() {
                    match c {
                        // '' inside a single-quoted scalar is an escaped quote: the
                        // scan resumes inside the scalar on the next quote anyway.
                        '\'' => break,
                        '\n' => line += 1,
                        _ => {}
                    }
                }
            }
            '[' | '{' => {
                depth += 1;
                if depth > MAX_YAML_NESTING {
                    return Err(ParseError::TooDeep {
                        limit: MAX_YAML_NESTING,
                        line,
                    });
                }
            }
            ']' | '}' => depth = depth.saturating_sub(1),
            _ => {}
        }
        prev = c;
    }
    Ok(())
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
