//! `Topology`: reading, validating and compiling a topology document.

use std::path::{Path, PathBuf};

use nanami_model::{
    compile, compile_all, compile_node, Document, GatewayId, Issue as CoreIssue, NodeId,
    Topology as CoreTopology, TopologyError,
};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};

use crate::config::ClientConfig;
use crate::convert::{self, health_arg};
use crate::errors;
use crate::state::GatewayState;

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Issue>()?;
    m.add_class::<Topology>()?;
    m.add_class::<convert::Health>()?;
    m.add_function(pyo3::wrap_pyfunction!(validate, m)?)?;
    Ok(())
}

/// One problem in a document: where (`path`) and what (`message`).
#[pyclass(frozen, eq, hash, module = "nanami", name = "Issue")]
#[derive(PartialEq, Hash)]
pub(crate) struct Issue {
    path: String,
    message: String,
}

impl From<CoreIssue> for Issue {
    fn from(i: CoreIssue) -> Self {
        Self {
            path: i.path,
            message: i.message,
        }
    }
}

#[pymethods]
impl Issue {
    #[new]
    fn new(path: String, message: String) -> Self {
        Self { path, message }
    }

    /// Where: `workspaces[acme].networks[corp].overlay`.
    #[getter]
    fn path(&self) -> &str {
        &self.path
    }

    /// What is wrong, in words an operator can act on.
    #[getter]
    fn message(&self) -> &str {
        &self.message
    }

    fn __str__(&self) -> String {
        format!("{}: {}", self.path, self.message)
    }

    fn __repr__(&self) -> String {
        format!("Issue(path={:?}, message={:?})", self.path, self.message)
    }
}

/// Where a document comes from, read with the GIL held (Python objects), parsed
/// without it.
enum Source {
    Yaml(String),
    Json(String),
}

impl Source {
    /// `str` is YAML or JSON text (YAML is a superset), `os.PathLike` a file
    /// (`.json` read as JSON, anything else as YAML), a mapping the document itself.
    fn of(py: Python<'_>, document: &Bound<'_, PyAny>) -> PyResult<Self> {
        if let Ok(text) = document.cast::<PyString>() {
            return Ok(Self::Yaml(text.extract::<String>()?));
        }
        if document.hasattr("__fspath__")? {
            let path: PathBuf = document.extract()?;
            return read_file(py, &path);
        }
        if document.is_instance_of::<PyDict>() {
            return Ok(Self::Json(convert::json_text(document, "document")?));
        }
        Err(PyTypeError::new_err(
            "a document is YAML/JSON text (str), a file path (os.PathLike) or a dict",
        ))
    }

    fn parse(&self) -> Result<Document, nanami_model::ParseError> {
        match self {
            Self::Yaml(t) => Document::from_yaml(t),
            Self::Json(t) => Document::from_json(t),
        }
    }
}

fn read_file(py: Python<'_>, path: &Path) -> PyResult<Source> {
    let text = py
        .detach(|| std::fs::read_to_string(path))
        .map_err(|e| errors::io_error(e, path))?;
    let json = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("json"));
    Ok(if json {
        Source::Json(text)
    } else {
        Source::Yaml(text)
    })
}

/// Validates a document without building a topology: every problem, each with
/// its path; an empty list means valid. An unreadable document raises `ParseError`.
#[pyfunction]
pub(crate) fn validate(py: Python<'_>, document: &Bound<'_, PyAny>) -> PyResult<Vec<Issue>> {
    let source = Source::of(py, document)?;
    let outcome = py.detach(|| {
        source
            .parse()
            .map(|doc| CoreTopology::from_document(&doc).err())
    });
    match outcome {
        Ok(None) => Ok(Vec::new()),
        Ok(Some(invalid)) => Ok(invalid.0.into_iter().map(Issue::from).collect()),
        Err(e) => Err(errors::parse_error(e)),
    }
}

/// A validated topology: every reference resolves and every address is allocated.
///
/// Build one with `Topology.load`, `from_yaml`, `from_json` or `from_dict`; an
/// invalid document raises `ValidationError` listing every problem.
#[pyclass(frozen, module = "nanami", name = "Topology")]
pub(crate) struct Topology(CoreTopology);

fn build(py: Python<'_>, source: Source) -> PyResult<Topology> {
    let result = py.detach(|| match &source {
        Source::Yaml(t) => CoreTopology::from_yaml(t),
        Source::Json(t) => CoreTopology::from_json(t),
    });
    result
        .map(Topology)
        .map_err(|e: TopologyError| errors::topology_error(py, e))
}

fn gateway_id(id: &str) -> PyResult<GatewayId> {
    GatewayId::new(id).map_err(|e| errors::id_error("gateway", id, e))
}

fn node_id(id: &str) -> PyResult<NodeId> {
    NodeId::new(id).map_err(|e| errors::id_error("node", id, e))
}

#[pymethods]
impl Topology {
    /// Reads a file: `.json` as JSON, anything else as YAML.
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Self> {
        let source = read_file(py, &path)?;
        build(py, source)
    }

    /// Parses and validates YAML text.
    #[staticmethod]
    fn from_yaml(py: Python<'_>, text: String) -> PyResult<Self> {
        build(py, Source::Yaml(text))
    }

    /// Parses and validates JSON text.
    #[staticmethod]
    fn from_json(py: Python<'_>, text: String) -> PyResult<Self> {
        build(py, Source::Json(text))
    }

    /// Validates a document given as a dict (the JSON form).
    #[staticmethod]
    fn from_dict(py: Python<'_>, data: &Bound<'_, PyDict>) -> PyResult<Self> {
        let text = convert::json_text(data.as_any(), "document")?;
        build(py, Source::Json(text))
    }

    /// Validates a document (text, path or dict) and returns every problem; empty
    /// means valid. Also available as `nanami.validate`.
    #[staticmethod]
    #[pyo3(name = "validate")]
    fn validate_document(py: Python<'_>, document: &Bound<'_, PyAny>) -> PyResult<Vec<Issue>> {
        validate(py, document)
    }

    /// Workspace ids, sorted.
    #[getter]
    fn workspaces(&self) -> Vec<String> {
        convert::strings(self.0.workspaces.keys())
    }

    /// Every gateway id, sorted.
    fn gateway_ids(&self) -> Vec<String> {
        convert::strings(self.0.gateway_ids())
    }

    /// Every node id (clients, gateway machines, inactive nodes), sorted.
    fn node_ids(&self) -> Vec<String> {
        convert::strings(self.0.node_ids())
    }

    /// Ids of the nodes that get a client configuration (active, not a gateway's
    /// machine), sorted.
    fn client_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .0
            .workspaces
            .values()
            .flat_map(|ws| {
                ws.nodes
                    .values()
                    .filter(|n| n.is_active() && !ws.is_gateway_node(&n.id))
                    .map(|n| n.id.to_string())
            })
            .collect();
        ids.sort();
        ids
    }

    /// The desired state of one gateway under `health` (default: all up).
    #[pyo3(signature = (gateway, health=None))]
    fn compile_gateway(
        &self,
        py: Python<'_>,
        gateway: &str,
        health: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<GatewayState> {
        let id = gateway_id(gateway)?;
        let health = health_arg(health)?;
        py.detach(|| compile(&self.0, &health, &id))
            .map(GatewayState::from)
            .map_err(|e| errors::compile_error(py, e))
    }

    /// The desired state of every gateway, by gateway id.
    #[pyo3(signature = (health=None))]
    fn compile_all<'py>(
        &self,
        py: Python<'py>,
        health: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let health = health_arg(health)?;
        let all = py.detach(|| compile_all(&self.0, &health));
        let out = PyDict::new(py);
        for (id, state) in all {
            out.set_item(id.as_str(), GatewayState::from(state))?;
        }
        Ok(out)
    }

    /// The configuration of one client node under `health` (default: all up).
    #[pyo3(signature = (node, health=None))]
    fn client_config(
        &self,
        py: Python<'_>,
        node: &str,
        health: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<ClientConfig> {
        let id = node_id(node)?;
        let health = health_arg(health)?;
        py.detach(|| compile_node(&self.0, &health, &id))
            .map(ClientConfig::from)
            .map_err(|e| errors::compile_error(py, e))
    }

    fn __repr__(&self) -> String {
        let nodes: usize = self.0.workspaces.values().map(|w| w.nodes.len()).sum();
        let gateways: usize = self.0.workspaces.values().map(|w| w.gateways.len()).sum();
        format!(
            "Topology(workspaces={}, nodes={nodes}, gateways={gateways})",
            self.0.workspaces.len()
        )
    }
}
