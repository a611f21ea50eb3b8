//! `ClientConfig`: what a client needs to join its networks, and its wg-quick text.

use std::collections::BTreeSet;

use nanami_model::{
    ClientPeer as CoreClientPeer, GatewayChoice as CoreGatewayChoice, GatewayId, NetworkId,
    NodeConfig,
};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::convert::{self, strings, to_json, to_py};
use crate::errors;
use crate::keys::PrivateKey;

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<ClientConfig>()?;
    m.add_class::<ClientPeer>()?;
    m.add_class::<GatewayChoice>()?;
    Ok(())
}

/// Everything a client needs to join its workspace's networks.
#[pyclass(frozen, eq, module = "nanami", name = "ClientConfig")]
#[derive(PartialEq)]
pub(crate) struct ClientConfig(NodeConfig);

impl From<NodeConfig> for ClientConfig {
    fn from(c: NodeConfig) -> Self {
        Self(c)
    }
}

#[pymethods]
impl ClientConfig {
    /// The node id.
    #[getter]
    fn node(&self) -> &str {
        self.0.node.as_str()
    }

    /// Its workspace id.
    #[getter]
    fn workspace(&self) -> &str {
        self.0.workspace.as_str()
    }

    /// Its public key, base64 (the private half stays on the node).
    #[getter]
    fn public_key(&self) -> String {
        self.0.public_key.to_base64()
    }

    /// Its overlay addresses as host prefixes, sorted.
    #[getter]
    fn addresses(&self) -> Vec<String> {
        strings(&self.0.addresses)
    }

    /// Tunnel MTU.
    #[getter]
    fn mtu(&self) -> u32 {
        self.0.mtu
    }

    /// One peer per gateway it uses, ordered by gateway id.
    #[getter]
    fn peers(&self) -> Vec<ClientPeer> {
        self.0.peers.iter().cloned().map(ClientPeer).collect()
    }

    /// Networks of the node that no healthy gateway can serve right now.
    #[getter]
    fn unassigned(&self) -> Vec<String> {
        strings(&self.0.unassigned)
    }

    /// For each network with gateways, its gateways in failover order (primary
    /// first, then standbys).
    #[getter]
    fn gateways<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        for (net, choices) in &self.0.gateways {
            let list: Vec<GatewayChoice> = choices.iter().cloned().map(GatewayChoice).collect();
            out.set_item(net.as_str(), list)?;
        }
        Ok(out)
    }

    /// The configuration with each network routed to the first of its gateways not
    /// in `down` (client-side failover, no manager needed). Same peers; only
    /// AllowedIPs, the default route and `unassigned` move.
    fn failed_over(&self, down: Vec<String>) -> PyResult<Self> {
        let down = gateway_set(&down)?;
        Ok(Self(self.0.failed_over(&down)))
    }

    /// The active gateway of `network` when the gateways in `down` are down;
    /// `None` if every gateway of it is down or it has none.
    #[pyo3(signature = (network, down=None))]
    fn active_gateway(&self, network: &str, down: Option<Vec<String>>) -> PyResult<Option<String>> {
        let net = NetworkId::new(network).map_err(|e| errors::id_error("network", network, e))?;
        let down = gateway_set(&down.unwrap_or_default())?;
        Ok(self.0.active_gateway(&net, &down).map(|g| g.to_string()))
    }

    /// The `wg-quick(8)` text. Without `private_key` the key line holds the
    /// placeholder `<PRIVATE_KEY>` for the node to fill in.
    #[pyo3(signature = (private_key=None))]
    fn to_wg_quick(&self, private_key: Option<&Bound<'_, PrivateKey>>) -> String {
        self.0.to_wg_quick(private_key.map(|k| k.get().inner()))
    }

    /// The `wg setconf` text (no `Address` or `MTU`).
    #[pyo3(signature = (private_key=None))]
    fn to_wg(&self, private_key: Option<&Bound<'_, PrivateKey>>) -> String {
        self.0.to_wg(private_key.map(|k| k.get().inner()))
    }

    /// The JSON form, as plain Python data.
    fn to_dict(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        to_py(py, &self.0)
    }

    /// Pretty JSON.
    fn to_json(&self) -> PyResult<String> {
        to_json(&self.0)
    }

    fn __repr__(&self) -> String {
        let gateways: Vec<String> = self.0.peers.iter().map(|p| p.gateway.to_string()).collect();
        format!(
            "ClientConfig(node='{}', workspace='{}', addresses={}, gateways={})",
            self.0.node,
            self.0.workspace,
            convert::py_str_list(&self.addresses()),
            convert::py_str_list(&gateways)
        )
    }
}

fn gateway_set(ids: &[String]) -> PyResult<BTreeSet<GatewayId>> {
    ids.iter()
        .map(|g| GatewayId::new(g.as_str()).map_err(|e| errors::id_error("gateway", g, e)))
        .collect()
}

/// One gateway in a client's failover list for one network.
#[pyclass(frozen, eq, module = "nanami", name = "GatewayChoice")]
#[derive(PartialEq)]
pub(crate) struct GatewayChoice(CoreGatewayChoice);

#[pymethods]
impl GatewayChoice {
    /// The gateway id.
    #[getter]
    fn gateway(&self) -> &str {
        self.0.gateway.as_str()
    }

    /// Its public key, base64.
    #[getter]
    fn public_key(&self) -> String {
        self.0.public_key.to_base64()
    }

    /// Where to reach it (`ip:port`).
    #[getter]
    fn endpoint(&self) -> String {
        self.0.endpoint.to_string()
    }

    /// What the client routes to it for this network while it is active, sorted.
    #[getter]
    fn allowed_ips(&self) -> Vec<String> {
        strings(&self.0.allowed_ips)
    }

    /// The default routes it carries when it is the client's exit, sorted.
    #[getter]
    fn exit_routes(&self) -> Vec<String> {
        strings(&self.0.exit_routes)
    }

    /// The gateway's own overlay addresses in this network (what a client agent
    /// probes through the tunnel), sorted.
    #[getter]
    fn addresses(&self) -> Vec<String> {
        strings(&self.0.addresses)
    }

    /// The JSON form, as plain Python data.
    fn to_dict(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        to_py(py, &self.0)
    }

    fn __repr__(&self) -> String {
        format!(
            "GatewayChoice(gateway='{}', endpoint='{}')",
            self.0.gateway, self.0.endpoint
        )
    }
}

/// A gateway as a client's peer.
#[pyclass(frozen, eq, module = "nanami", name = "ClientPeer")]
#[derive(PartialEq)]
pub(crate) struct ClientPeer(CoreClientPeer);

#[pymethods]
impl ClientPeer {
    /// The gateway id.
    #[getter]
    fn gateway(&self) -> &str {
        self.0.gateway.as_str()
    }

    /// The gateway's public key, base64.
    #[getter]
    fn public_key(&self) -> String {
        self.0.public_key.to_base64()
    }

    /// Where to reach it (`ip:port`).
    #[getter]
    fn endpoint(&self) -> String {
        self.0.endpoint.to_string()
    }

    /// What the client routes to it, sorted.
    #[getter]
    fn allowed_ips(&self) -> Vec<String> {
        strings(&self.0.allowed_ips)
    }

    /// Keepalive interval in seconds.
    #[getter]
    fn persistent_keepalive(&self) -> Option<u16> {
        self.0.persistent_keepalive
    }

    /// Networks it serves for this client, sorted.
    #[getter]
    fn networks(&self) -> Vec<String> {
        strings(&self.0.networks)
    }

    /// Whether it carries the client's default route.
    #[getter]
    fn exit(&self) -> bool {
        self.0.exit
    }

    /// Networks it is a standby for (held as a peer, nothing routed to it yet).
    #[getter]
    fn standby_for(&self) -> Vec<String> {
        strings(&self.0.standby_for)
    }

    /// The JSON form, as plain Python data.
    fn to_dict(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        to_py(py, &self.0)
    }

    fn __repr__(&self) -> String {
        format!(
            "ClientPeer(gateway='{}', endpoint='{}', networks={}, exit={})",
            self.0.gateway,
            self.0.endpoint,
            convert::py_str_list(&self.networks()),
            if self.0.exit { "True" } else { "False" }
        )
    }
}
