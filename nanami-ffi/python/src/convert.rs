//! Plain-data conversions between Python and the core's serde forms.
//!
//! Core values go to Python through `serde_json::Value` (their documented JSON
//! form), and Python mappings come back through the standard `json` module, so the
//! Python and JSON shapes of every value are the same by construction.

use std::collections::BTreeSet;

use nanami_model::{GatewayId, Health as CoreHealth, NetworkId};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBool, PyDict, PyList, PyString};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::errors;

/// A JSON value as the Python value `json.loads` would give.
pub(crate) fn value_to_py(py: Python<'_>, v: &Value) -> PyResult<Py<PyAny>> {
    Ok(match v {
        Value::Null => py.None(),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any().unbind(),
        Value::Number(n) => {
            if let Some(i) = n.as_u64() {
                i.into_pyobject(py)?.into_any().unbind()
            } else if let Some(i) = n.as_i64() {
                i.into_pyobject(py)?.into_any().unbind()
            } else {
                n.as_f64()
                    .unwrap_or(f64::NAN)
                    .into_pyobject(py)?
                    .into_any()
                    .unbind()
            }
        }
        Value::String(s) => PyString::new(py, s).into_any().unbind(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(value_to_py(py, item)?)?;
            }
            list.into_any().unbind()
        }
        Value::Object(map) => {
            let dict = PyDict::new(py);
            for (k, item) in map {
                dict.set_item(k, value_to_py(py, item)?)?;
            }
            dict.into_any().unbind()
        }
    })
}

/// A core value as plain Python data (its JSON form).
pub(crate) fn to_py<T: Serialize>(py: Python<'_>, v: &T) -> PyResult<Py<PyAny>> {
    let value = serde_json::to_value(v).map_err(|e| errors::internal("to_dict", e))?;
    value_to_py(py, &value)
}

/// Pretty JSON of a core value.
pub(crate) fn to_json<T: Serialize>(v: &T) -> PyResult<String> {
    serde_json::to_string_pretty(v).map_err(|e| errors::internal("to_json", e))
}

static JSON_DUMPS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// JSON text of a Python value, by the standard `json` module. A value JSON cannot
/// hold raises `ParseError` naming `what`.
pub(crate) fn json_text(obj: &Bound<'_, PyAny>, what: &str) -> PyResult<String> {
    let py = obj.py();
    let dumps = JSON_DUMPS.get_or_try_init(py, || -> PyResult<Py<PyAny>> {
        Ok(py.import("json")?.getattr("dumps")?.unbind())
    })?;
    match dumps.bind(py).call1((obj,)) {
        Ok(text) => text.extract::<String>(),
        Err(e) => Err(errors::shape_error(what, e)),
    }
}

/// A core value from a Python mapping in its JSON form; the wrong shape raises
/// `ParseError` naming `what`.
pub(crate) fn from_py<T: DeserializeOwned + Send>(
    obj: &Bound<'_, PyAny>,
    what: &str,
) -> PyResult<T> {
    let text = json_text(obj, what)?;
    obj.py()
        .detach(|| serde_json::from_str::<T>(&text))
        .map_err(|e| errors::shape_error(what, e))
}

/// The serde name of a unit enum variant (`"active"`, `"add_peer"`, `"v4"`).
pub(crate) fn enum_name<T: Serialize>(v: &T) -> Option<String> {
    match serde_json::to_value(v) {
        Ok(Value::String(s)) => Some(s),
        Ok(_) | Err(_) => None,
    }
}

/// Display strings of an ordered collection.
pub(crate) fn strings<'a, T: std::fmt::Display + 'a>(
    items: impl IntoIterator<Item = &'a T>,
) -> Vec<String> {
    items.into_iter().map(|i| i.to_string()).collect()
}

/// A list of ids as Python prints it: `['a', 'b']` (ids hold no quotes).
pub(crate) fn py_str_list(items: &[String]) -> String {
    let inner: Vec<String> = items.iter().map(|s| format!("'{s}'")).collect();
    format!("[{}]", inner.join(", "))
}

/// Which gateways are up: `None` (all), a `nanami.Health`, or a mapping in the
/// JSON form `{"offline": [...], "unhealthy": [[gateway, network], ...]}`.
pub(crate) fn health_arg(health: Option<&Bound<'_, PyAny>>) -> PyResult<CoreHealth> {
    let Some(obj) = health else {
        return Ok(CoreHealth::all_up());
    };
    if obj.is_none() {
        return Ok(CoreHealth::all_up());
    }
    if let Ok(h) = obj.cast::<Health>() {
        return Ok(h.get().0.clone());
    }
    if obj.is_instance_of::<PyDict>() {
        return from_py(obj, "health");
    }
    Err(PyTypeError::new_err(
        "health must be None, a nanami.Health or a mapping {'offline': [...], 'unhealthy': [[gateway, network], ...]}",
    ))
}

/// Gateway health as the manager sees it: which gateways are offline, and which
/// (gateway, network) forwarding paths fail. A gateway named nowhere is healthy.
#[pyclass(frozen, eq, module = "nanami", name = "Health")]
#[derive(PartialEq)]
pub(crate) struct Health(pub(crate) CoreHealth);

#[pymethods]
impl Health {
    #[new]
    #[pyo3(signature = (offline=None, unhealthy=None))]
    fn new(
        offline: Option<Vec<String>>,
        unhealthy: Option<Vec<(String, String)>>,
    ) -> PyResult<Self> {
        let offline = offline
            .unwrap_or_default()
            .iter()
            .map(|g| GatewayId::new(g.as_str()).map_err(|e| errors::id_error("gateway", g, e)))
            .collect::<PyResult<BTreeSet<_>>>()?;
        let unhealthy = unhealthy
            .unwrap_or_default()
            .iter()
            .map(|(g, n)| {
                Ok((
                    GatewayId::new(g.as_str()).map_err(|e| errors::id_error("gateway", g, e))?,
                    NetworkId::new(n.as_str()).map_err(|e| errors::id_error("network", n, e))?,
                ))
            })
            .collect::<PyResult<BTreeSet<_>>>()?;
        Ok(Self(CoreHealth { offline, unhealthy }))
    }

    /// Every gateway healthy.
    #[staticmethod]
    fn all_up() -> Self {
        Self(CoreHealth::all_up())
    }

    /// Reads the JSON form `{"offline": [...], "unhealthy": [[gw, net], ...]}`.
    #[staticmethod]
    fn from_dict(data: &Bound<'_, PyAny>) -> PyResult<Self> {
        Ok(Self(from_py(data, "health")?))
    }

    /// Offline gateway ids, sorted.
    #[getter]
    fn offline(&self) -> Vec<String> {
        strings(&self.0.offline)
    }

    /// Failing (gateway, network) pairs, sorted.
    #[getter]
    fn unhealthy(&self) -> Vec<(String, String)> {
        self.0
            .unhealthy
            .iter()
            .map(|(g, n)| (g.to_string(), n.to_string()))
            .collect()
    }

    /// Whether `gateway` can serve `network`.
    fn is_up(&self, gateway: &str, network: &str) -> PyResult<bool> {
        let g = GatewayId::new(gateway).map_err(|e| errors::id_error("gateway", gateway, e))?;
        let n = NetworkId::new(network).map_err(|e| errors::id_error("network", network, e))?;
        Ok(self.0.is_up(&g, &n))
    }

    /// The JSON form, as plain Python data.
    fn to_dict(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        to_py(py, &self.0)
    }

    fn __repr__(&self) -> String {
        let pairs: Vec<String> = self
            .0
            .unhealthy
            .iter()
            .map(|(g, n)| format!("('{g}', '{n}')"))
            .collect();
        format!(
            "Health(offline={}, unhealthy=[{}])",
            py_str_list(&self.offline()),
            pairs.join(", ")
        )
    }
}
