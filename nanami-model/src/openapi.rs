//! OpenAPI schemas (the `openapi` feature) of the types whose serde form is
//! written by hand: ids, interface names and keys are strings with a syntax, and
//! the standard library's addresses and times have no schema of their own.
//!
//! Derived types name these in `#[schema(value_type = ...)]`; the marker types
//! here exist only to carry a schema and are never built.

use std::borrow::Cow;

use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

use crate::id::{GatewayId, InterfaceName, NetworkId, NodeId, RegionId, WorkspaceId};
use crate::key::PublicKey;

/// The syntax of every id (see [`crate::id`]): 1 to 63 of `a-z`, `0-9` and `-`,
/// not starting with `-`.
pub const ID_PATTERN: &str = "^[a-z0-9][a-z0-9-]{0,62}$";

/// A string schema with a description and an optional pattern.
fn string(description: &str, pattern: Option<&str>) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .pattern(pattern)
        .into()
}

/// Implements `ToSchema` for a type served as a string.
macro_rules! string_schema {
    ($ty:ty, $name:literal, $description:literal, $pattern:expr) => {
        impl PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                string($description, $pattern)
            }
        }
        impl ToSchema for $ty {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
        }
    };
}

string_schema!(RegionId, "RegionId", "A region id.", Some(ID_PATTERN));
string_schema!(
    WorkspaceId,
    "WorkspaceId",
    "A workspace id.",
    Some(ID_PATTERN)
);
string_schema!(NetworkId, "NetworkId", "A network id.", Some(ID_PATTERN));
string_schema!(NodeId, "NodeId", "A node id.", Some(ID_PATTERN));
string_schema!(GatewayId, "GatewayId", "A gateway id.", Some(ID_PATTERN));
string_schema!(
    InterfaceName,
    "InterfaceName",
    "A network interface name: 1 to 15 bytes, no `/`, `:` or whitespace (Nanami's own start with `nm-`).",
    Some("^[^/:\\s]{1,15}$")
);
string_schema!(
    PublicKey,
    "PublicKey",
    "A WireGuard (X25519) public key, base64 as `wg(8)` writes it.",
    Some("^[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048]=$")
);

/// Schema marker: an IP prefix (`10.0.0.0/8`, `fd00::/64`) or an address with its
/// prefix length (`100.64.0.1/24`).
#[derive(Debug)]
pub enum IpNet {}
string_schema!(
    IpNet,
    "IpNet",
    "An IP prefix or an address with its prefix length, e.g. `100.64.0.1/24`.",
    None
);

/// Schema marker: an IP address (`10.0.0.1`, `fd00::1`).
#[derive(Debug)]
pub enum IpAddr {}
string_schema!(IpAddr, "IpAddr", "An IPv4 or IPv6 address.", None);

/// Schema marker: an IP address with a port (`192.0.2.1:51820`, `[2001:db8::1]:51820`).
#[derive(Debug)]
pub enum SocketAddr {}
string_schema!(
    SocketAddr,
    "SocketAddr",
    "An IP address and a UDP port, e.g. `192.0.2.1:51820`.",
    None
);

/// A point in time as serde writes a `std::time::SystemTime`.
#[derive(Debug, utoipa::ToSchema)]
#[schema(as = SystemTime)]
pub struct UnixTime {
    /// Whole seconds since the Unix epoch.
    pub secs_since_epoch: u64,
    /// Nanoseconds past `secs_since_epoch`.
    pub nanos_since_epoch: u32,
}
