//! `GatewayState` and its parts: what a gateway must have, with attribute access.
//!
//! Prefixes, addresses, endpoints and keys are `str` in their usual text forms
//! (`10.0.0.0/24`, `203.0.113.10:51820`, base64); `to_dict()` gives the JSON form
//! the manager serves, which `GatewayState.from_dict` reads back.

use nanami_model::{
    Destination, FilterRule as CoreFilterRule, FilterSet as CoreFilterSet,
    GatewayState as CoreGatewayState, InterfaceName, InterfaceState, NatRule as CoreNatRule,
    PeerState, Route as CoreRoute, Rule as CoreRule,
};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use crate::convert::{self, strings, to_json, to_py};

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<GatewayState>()?;
    m.add_class::<Interface>()?;
    m.add_class::<Peer>()?;
    m.add_class::<Route>()?;
    m.add_class::<Rule>()?;
    m.add_class::<FilterSet>()?;
    m.add_class::<FilterRule>()?;
    m.add_class::<NatRule>()?;
    Ok(())
}

fn destination_text(d: &Destination) -> String {
    match d {
        Destination::Prefix(p) => p.to_string(),
        Destination::Internet => "internet".to_owned(),
    }
}

/// Everything Nanami manages on one gateway.
#[pyclass(frozen, eq, module = "nanami", name = "GatewayState")]
#[derive(PartialEq)]
pub(crate) struct GatewayState(pub(crate) CoreGatewayState);

impl From<CoreGatewayState> for GatewayState {
    fn from(s: CoreGatewayState) -> Self {
        Self(s)
    }
}

/// A state from the caller: a `GatewayState` or its JSON form as a dict.
pub(crate) fn state_arg(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<CoreGatewayState> {
    if let Ok(s) = obj.cast::<GatewayState>() {
        return Ok(s.get().0.clone());
    }
    convert::from_py(obj, what)
}

#[pymethods]
impl GatewayState {
    /// Reads the JSON form (`to_dict()` output, or the daemon's report).
    #[staticmethod]
    fn from_dict(data: &Bound<'_, PyAny>) -> PyResult<Self> {
        Ok(Self(convert::from_py(data, "gateway state")?))
    }

    /// Reads JSON text.
    #[staticmethod]
    fn from_json(text: &str) -> PyResult<Self> {
        serde_json::from_str(text)
            .map(Self)
            .map_err(|e| crate::errors::shape_error("gateway state", e))
    }

    /// WireGuard interfaces by name.
    #[getter]
    fn interfaces<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        for (name, iface) in &self.0.interfaces {
            out.set_item(
                PyString::new(py, name.as_str()),
                Interface {
                    name: name.clone(),
                    state: iface.clone(),
                },
            )?;
        }
        Ok(out)
    }

    /// Routes, sorted.
    #[getter]
    fn routes(&self) -> Vec<Route> {
        self.0.routes.iter().cloned().map(Route).collect()
    }

    /// Policy rules, sorted.
    #[getter]
    fn rules(&self) -> Vec<Rule> {
        self.0.rules.iter().cloned().map(Rule).collect()
    }

    /// The `inet nanami` filter and NAT set; `None` when the table does not exist.
    #[getter]
    fn filter(&self) -> Option<FilterSet> {
        self.0.filter.clone().map(FilterSet)
    }

    /// Address families whose forwarding must be on: `"v4"`, `"v6"`.
    #[getter]
    fn forwarding(&self) -> Vec<String> {
        self.0
            .forwarding
            .iter()
            .filter_map(convert::enum_name)
            .collect()
    }

    /// Number of peers over all interfaces.
    #[getter]
    fn peer_count(&self) -> usize {
        self.0.peer_count()
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
        let names: Vec<String> = strings(self.0.interfaces.keys());
        format!(
            "GatewayState(interfaces={}, peers={}, routes={}, rules={})",
            convert::py_str_list(&names),
            self.0.peer_count(),
            self.0.routes.len(),
            self.0.rules.len()
        )
    }
}

/// One WireGuard interface.
#[pyclass(frozen, eq, module = "nanami", name = "Interface")]
#[derive(PartialEq)]
pub(crate) struct Interface {
    name: InterfaceName,
    state: InterfaceState,
}

#[pymethods]
impl Interface {
    /// Its name (`nm-<gateway id>` for Nanami's).
    #[getter]
    fn name(&self) -> &str {
        self.name.as_str()
    }

    /// UDP listen port; `None` lets the device choose.
    #[getter]
    fn listen_port(&self) -> Option<u16> {
        self.state.listen_port
    }

    /// Link MTU.
    #[getter]
    fn mtu(&self) -> u32 {
        self.state.mtu
    }

    /// Addresses with their prefix length, sorted.
    #[getter]
    fn addresses(&self) -> Vec<String> {
        strings(&self.state.addresses)
    }

    /// Peers by base64 public key.
    #[getter]
    fn peers<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let out = PyDict::new(py);
        for (key, peer) in &self.state.peers {
            let key = key.to_base64();
            out.set_item(
                key.as_str(),
                Peer {
                    public_key: key.clone(),
                    state: peer.clone(),
                },
            )?;
        }
        Ok(out)
    }

    /// The JSON form, as plain Python data.
    fn to_dict(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        to_py(py, &self.state)
    }

    fn __repr__(&self) -> String {
        format!(
            "Interface(name='{}', listen_port={}, peers={})",
            self.name,
            self.state
                .listen_port
                .map_or_else(|| "None".to_owned(), |p| p.to_string()),
            self.state.peers.len()
        )
    }
}

/// A WireGuard peer of a gateway interface.
#[pyclass(frozen, eq, module = "nanami", name = "Peer")]
#[derive(PartialEq)]
pub(crate) struct Peer {
    public_key: String,
    state: PeerState,
}

#[pymethods]
impl Peer {
    /// Its public key, base64.
    #[getter]
    fn public_key(&self) -> &str {
        &self.public_key
    }

    /// Where to send its packets (`ip:port`); `None` until it contacts the gateway.
    #[getter]
    fn endpoint(&self) -> Option<String> {
        self.state.endpoint.map(|e| e.to_string())
    }

    /// Inner addresses it may use and that are routed to it, sorted.
    #[getter]
    fn allowed_ips(&self) -> Vec<String> {
        strings(&self.state.allowed_ips)
    }

    /// Seconds between keepalives; `None` disables them.
    #[getter]
    fn persistent_keepalive(&self) -> Option<u16> {
        self.state.persistent_keepalive
    }

    /// The JSON form, as plain Python data.
    fn to_dict(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        to_py(py, &self.state)
    }

    fn __repr__(&self) -> String {
        format!(
            "Peer(public_key='{}', allowed_ips={})",
            self.public_key,
            convert::py_str_list(&self.allowed_ips())
        )
    }
}

/// A route: `ip route add <destination> dev <interface> table <table> proto <protocol>`.
#[pyclass(frozen, eq, hash, module = "nanami", name = "Route")]
#[derive(PartialEq, Hash)]
pub(crate) struct Route(CoreRoute);

#[pymethods]
impl Route {
    /// Routing table.
    #[getter]
    fn table(&self) -> u32 {
        self.0.table
    }
    /// Destination prefix.
    #[getter]
    fn destination(&self) -> String {
        self.0.destination.to_string()
    }
    /// Outgoing interface.
    #[getter]
    fn interface(&self) -> &str {
        self.0.interface.as_str()
    }
    /// Routing protocol number.
    #[getter]
    fn protocol(&self) -> u8 {
        self.0.protocol
    }
    /// The JSON form, as plain Python data.
    fn to_dict(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        to_py(py, &self.0)
    }
    fn __repr__(&self) -> String {
        format!(
            "Route(destination='{}', interface='{}', table={}, protocol={})",
            self.0.destination, self.0.interface, self.0.table, self.0.protocol
        )
    }
}

/// A policy rule: `ip rule add to <destination> lookup <table> priority <priority>`.
#[pyclass(frozen, eq, hash, module = "nanami", name = "Rule")]
#[derive(PartialEq, Hash)]
pub(crate) struct Rule(CoreRule);

#[pymethods]
impl Rule {
    /// Rule priority.
    #[getter]
    fn priority(&self) -> u32 {
        self.0.priority
    }
    /// Destination selector.
    #[getter]
    fn destination(&self) -> String {
        self.0.destination.to_string()
    }
    /// Table to look up.
    #[getter]
    fn table(&self) -> u32 {
        self.0.table
    }
    /// Routing protocol number.
    #[getter]
    fn protocol(&self) -> u8 {
        self.0.protocol
    }
    /// `suppress_prefixlength`: the table's routes this short or shorter are
    /// ignored (`None`: no suppression).
    #[getter]
    fn suppress_prefix_len(&self) -> Option<u8> {
        self.0.suppress_prefix_len
    }
    /// The JSON form, as plain Python data.
    fn to_dict(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        to_py(py, &self.0)
    }
    fn __repr__(&self) -> String {
        let suppress = self
            .0
            .suppress_prefix_len
            .map(|l| format!(", suppress_prefix_len={l}"))
            .unwrap_or_default();
        format!(
            "Rule(destination='{}', table={}, priority={}, protocol={}{suppress})",
            self.0.destination, self.0.table, self.0.priority, self.0.protocol
        )
    }
}

/// The contents of the `inet nanami` nftables table.
#[pyclass(frozen, eq, module = "nanami", name = "FilterSet")]
#[derive(PartialEq)]
pub(crate) struct FilterSet(CoreFilterSet);

#[pymethods]
impl FilterSet {
    /// Forwarding accepts, sorted.
    #[getter]
    fn accept(&self) -> Vec<FilterRule> {
        self.0.accept.iter().cloned().map(FilterRule).collect()
    }
    /// Masquerades, sorted.
    #[getter]
    fn masquerade(&self) -> Vec<NatRule> {
        self.0.masquerade.iter().cloned().map(NatRule).collect()
    }
    /// The JSON form, as plain Python data.
    fn to_dict(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        to_py(py, &self.0)
    }
    fn __repr__(&self) -> String {
        format!(
            "FilterSet(accept={}, masquerade={})",
            self.0.accept.len(),
            self.0.masquerade.len()
        )
    }
}

/// Accept traffic arriving on `interface` from `source` toward `destination`.
#[pyclass(frozen, eq, hash, module = "nanami", name = "FilterRule")]
#[derive(PartialEq, Hash)]
pub(crate) struct FilterRule(CoreFilterRule);

#[pymethods]
impl FilterRule {
    /// The Nanami interface the traffic arrives on.
    #[getter]
    fn interface(&self) -> &str {
        self.0.interface.as_str()
    }
    /// Allowed source prefix.
    #[getter]
    fn source(&self) -> String {
        self.0.source.to_string()
    }
    /// Allowed destination: a prefix, or `"internet"`.
    #[getter]
    fn destination(&self) -> String {
        destination_text(&self.0.destination)
    }
    /// The JSON form, as plain Python data.
    fn to_dict(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        to_py(py, &self.0)
    }
    fn __repr__(&self) -> String {
        format!(
            "FilterRule(interface='{}', source='{}', destination='{}')",
            self.0.interface,
            self.0.source,
            destination_text(&self.0.destination)
        )
    }
}

/// Masquerade traffic from `source` toward `destination`.
#[pyclass(frozen, eq, hash, module = "nanami", name = "NatRule")]
#[derive(PartialEq, Hash)]
pub(crate) struct NatRule(CoreNatRule);

#[pymethods]
impl NatRule {
    /// Source prefix.
    #[getter]
    fn source(&self) -> String {
        self.0.source.to_string()
    }
    /// Destination: a prefix, or `"internet"`.
    #[getter]
    fn destination(&self) -> String {
        destination_text(&self.0.destination)
    }
    /// The JSON form, as plain Python data.
    fn to_dict(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        to_py(py, &self.0)
    }
    fn __repr__(&self) -> String {
        format!(
            "NatRule(source='{}', destination='{}')",
            self.0.source,
            destination_text(&self.0.destination)
        )
    }
}
