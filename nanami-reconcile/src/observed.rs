//! What a platform reports: the machine's state plus peer telemetry.

use std::collections::BTreeMap;
use std::time::SystemTime;

use nanami_model::{GatewayState, InterfaceName, PublicKey};
use serde::{Deserialize, Serialize};

/// One peer's telemetry, as `wg show` reports it. Reported, never acted on: no value
/// here ever causes an [`Op`](crate::Op).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct PeerTelemetry {
    /// When the last handshake completed; `None` if never.
    #[cfg_attr(feature = "openapi", schema(value_type = Option<nanami_model::openapi::UnixTime>))]
    pub last_handshake: Option<SystemTime>,
    /// Bytes received from the peer.
    pub rx_bytes: u64,
    /// Bytes sent to the peer.
    pub tx_bytes: u64,
}

/// The observed machine: its whole state (including objects Nanami does not own) and
/// telemetry per peer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Observed {
    /// Everything observed, foreign objects included.
    pub state: GatewayState,
    /// Telemetry by interface, then peer public key. Nested rather than keyed by a
    /// pair so that it serializes to JSON objects.
    pub telemetry: BTreeMap<InterfaceName, BTreeMap<PublicKey, PeerTelemetry>>,
}

impl Observed {
    /// The telemetry of one peer, if reported.
    pub fn peer_telemetry(
        &self,
        interface: &InterfaceName,
        key: &PublicKey,
    ) -> Option<&PeerTelemetry> {
        self.telemetry.get(interface)?.get(key)
    }
}

impl From<GatewayState> for Observed {
    /// An observation without telemetry.
    fn from(state: GatewayState) -> Self {
        Self {
            state,
            telemetry: BTreeMap::new(),
        }
    }
}
