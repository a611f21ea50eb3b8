//! `plan(desired, observed) -> Plan`, from `nanami-reconcile`.

use nanami_reconcile::{plan as core_plan, Observed, Op as CoreOp, Plan as CorePlan};
use pyo3::exceptions::{PyAttributeError, PyIndexError};
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyIterator, PyList};
use serde_json::Value;

use crate::convert::{self, to_json, to_py};
use crate::errors;
use crate::state::{state_arg, GatewayState};

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Plan>()?;
    m.add_class::<Op>()?;
    m.add_function(pyo3::wrap_pyfunction!(plan, m)?)?;
    Ok(())
}

/// The observed side: a `GatewayState`, its dict form, or the daemon's report
/// `{"state": {...}, "telemetry": {...}}` (telemetry never causes an op).
fn observed_arg(obj: &Bound<'_, PyAny>) -> PyResult<Observed> {
    if let Ok(dict) = obj.cast::<PyDict>() {
        if let Some(state) = dict.get_item("state")? {
            if dict.contains("telemetry")? {
                return convert::from_py(obj, "observed state");
            }
            return Ok(Observed::from(state_arg(&state, "observed state")?));
        }
    }
    Ok(Observed::from(state_arg(obj, "observed state")?))
}

/// The ordered ops that take `observed` to `desired`; empty means converged.
///
/// `desired` is a `GatewayState` (or its dict form); `observed` a `GatewayState`,
/// its dict form, or a report `{"state": ..., "telemetry": ...}`. Objects Nanami
/// does not own (non-`nm-` interfaces, foreign routes) are never touched.
#[pyfunction]
fn plan(py: Python<'_>, desired: &Bound<'_, PyAny>, observed: &Bound<'_, PyAny>) -> PyResult<Plan> {
    let desired = state_arg(desired, "desired state")?;
    let observed = observed_arg(observed)?;
    Ok(Plan(py.detach(|| core_plan(&desired, &observed))))
}

/// An ordered list of ops; iterate it to apply them in order.
#[pyclass(frozen, eq, module = "nanami", name = "Plan")]
#[derive(PartialEq)]
pub(crate) struct Plan(CorePlan);

#[pymethods]
impl Plan {
    /// The ops, in the order they must be applied.
    #[getter]
    fn ops(&self) -> Vec<Op> {
        self.0.ops().iter().cloned().map(Op).collect()
    }

    /// Whether there is nothing to do.
    #[getter]
    fn is_converged(&self) -> bool {
        self.0.is_converged()
    }

    /// One line per op (`+` add, `~` change in place, `-` remove); `= converged`
    /// when empty.
    fn render(&self) -> String {
        self.0.to_string()
    }

    /// JSON: `{"ops": [{"op": "add_peer", ...}, ...]}`.
    fn to_json(&self) -> PyResult<String> {
        to_json(&self.0)
    }

    /// The JSON form, as plain Python data.
    fn to_dict(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        to_py(py, &self.0)
    }

    /// The state after applying every op to `state` with the model semantics.
    fn apply_to(&self, py: Python<'_>, state: &Bound<'_, PyAny>) -> PyResult<GatewayState> {
        let state = state_arg(state, "state")?;
        Ok(GatewayState::from(py.detach(|| self.0.apply_to(&state))))
    }

    fn __len__(&self) -> usize {
        self.0.len()
    }

    fn __getitem__(&self, index: isize) -> PyResult<Op> {
        let len = self.0.len();
        let i = if index < 0 {
            len.checked_sub(index.unsigned_abs())
        } else {
            Some(index.unsigned_abs())
        };
        i.and_then(|i| self.0.ops().get(i))
            .cloned()
            .map(Op)
            .ok_or_else(|| PyIndexError::new_err("plan index out of range"))
    }

    fn __iter__<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyIterator>> {
        PyList::new(py, self.ops())?.as_any().try_iter()
    }

    fn __str__(&self) -> String {
        self.render()
    }

    fn __repr__(&self) -> String {
        let n = self.0.len();
        format!("Plan({n} op{})", if n == 1 { "" } else { "s" })
    }
}

/// One change to a machine. `kind` and `phase` name it; its fields (`interface`,
/// `public_key`, `peer`, `route`, ...) are attributes, as in `to_dict()`.
#[pyclass(frozen, eq, module = "nanami", name = "Op")]
#[derive(PartialEq)]
pub(crate) struct Op(CoreOp);

impl Op {
    fn fields(&self) -> PyResult<serde_json::Map<String, Value>> {
        match serde_json::to_value(&self.0) {
            Ok(Value::Object(map)) => Ok(map),
            Ok(other) => Err(errors::internal("op form", other)),
            Err(e) => Err(errors::internal("op form", e)),
        }
    }
}

#[pymethods]
impl Op {
    /// What it does: `"add_peer"`, `"update_peer"`, `"remove_route"`, ...
    #[getter]
    fn kind(&self) -> String {
        convert::enum_name(&self.0.kind()).unwrap_or_default()
    }

    /// The phase of the plan it belongs to: `"peers"`, `"add_routes"`, ...
    #[getter]
    fn phase(&self) -> String {
        convert::enum_name(&self.0.phase()).unwrap_or_default()
    }

    /// The JSON form (`{"op": kind, ...fields}`), as plain Python data.
    fn to_dict(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        to_py(py, &self.0)
    }

    fn __getattr__(&self, py: Python<'_>, name: &str) -> PyResult<Py<PyAny>> {
        match self.fields()?.get(name) {
            Some(v) if name != "op" => convert::value_to_py(py, v),
            Some(_) | None => Err(PyAttributeError::new_err(format!(
                "'{}' op has no field '{name}'",
                self.kind()
            ))),
        }
    }

    fn __str__(&self) -> String {
        self.0.to_string()
    }

    fn __repr__(&self) -> String {
        format!("Op({}: {})", self.kind(), self.0)
    }
}
