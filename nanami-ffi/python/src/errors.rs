//! The exception hierarchy and the one explicit mapping from each core error enum.
//!
//! ```text
//! NanamiError
//! ├── ParseError          the text or mapping could not be read (syntax, shape, size)
//! ├── ValidationError     the document was read but is invalid; `.issues` lists all
//! ├── InvalidIdError      an id passed by the caller is malformed
//! ├── InvalidKeyError     a WireGuard key is malformed or unusable
//! ├── CompileError        nothing could be compiled for the id asked for
//! │   ├── NotFoundError       no gateway/node with this id; `.id`
//! │   ├── NodeNotActiveError  the node is not active; `.id`, `.status`
//! │   └── NodeIsGatewayError  the node is a gateway's machine; `.id`
//! ├── ApiError            the manager refused a request; `.status`, `.message`
//! │   ├── ConflictError       412: the object changed since its revision was read;
//! │   │                       `.current_revision`
//! │   ├── ObjectNotFoundError 404: no such object (or not this credential's to see)
//! │   ├── ForbiddenError      403: this credential may not do that
//! │   └── UnauthorizedError   401: no valid credential
//! └── ManagerUnreachableError the manager could not be reached or did not answer
//! ```
//!
//! A write the manager refuses as invalid (422) raises `ValidationError`, with
//! `.issues` as local validation gives them (each `path: message` line of the
//! answer is one `Issue`).

use std::fmt::Display;

use nanami_api::ApiError as CoreApiError;
use nanami_model::{
    CompileError as CoreCompileError, IdError, Issue as CoreIssue, KeyError,
    ParseError as CoreParseError, TopologyError, ValidationErrors,
};
use pyo3::exceptions::{PyException, PyOSError, PyRuntimeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyList, PyString};

use crate::topology::Issue;

pyo3::create_exception!(
    nanami,
    NanamiError,
    PyException,
    "Base class of every error raised by nanami."
);
pyo3::create_exception!(
    nanami,
    ParseError,
    NanamiError,
    "The document (YAML, JSON or mapping) could not be read: bad syntax, a value of the wrong shape, or too large. (An unknown field is a validation issue.)"
);
pyo3::create_exception!(
    nanami,
    ValidationError,
    NanamiError,
    "The document was read but is not valid. `.issues` lists every problem, each with its path."
);
pyo3::create_exception!(
    nanami,
    InvalidIdError,
    NanamiError,
    "An id given by the caller is malformed (ids are 1-63 bytes of a-z, 0-9 and '-')."
);
pyo3::create_exception!(
    nanami,
    InvalidKeyError,
    NanamiError,
    "A WireGuard key is malformed (not base64 of 32 bytes) or unusable (a low-order point)."
);
pyo3::create_exception!(
    nanami,
    CompileError,
    NanamiError,
    "Nothing could be compiled for the id asked for."
);
pyo3::create_exception!(
    nanami,
    NotFoundError,
    CompileError,
    "No gateway or node has this id in the topology. `.id` is the id."
);
pyo3::create_exception!(
    nanami,
    NodeNotActiveError,
    CompileError,
    "The node exists but is not active, so it gets no configuration. `.id`, `.status`."
);
pyo3::create_exception!(
    nanami,
    NodeIsGatewayError,
    CompileError,
    "The node is a gateway's machine: compile its gateway instead. `.id`."
);

pyo3::create_exception!(
    nanami,
    ApiError,
    NanamiError,
    "The manager refused the request. `.status` is the HTTP status, `.message` its reason."
);
pyo3::create_exception!(
    nanami,
    ConflictError,
    ApiError,
    "412: the object changed (or was created or deleted) since its revision was read. `.current_revision` is its revision now (None: it does not exist); read it again, merge, retry."
);
pyo3::create_exception!(
    nanami,
    ObjectNotFoundError,
    ApiError,
    "404: no such object, or one this credential may not see (another workspace's)."
);
pyo3::create_exception!(
    nanami,
    ForbiddenError,
    ApiError,
    "403: this credential may not do that (a workspace credential on regions or access grants, an operator writing)."
);
pyo3::create_exception!(
    nanami,
    UnauthorizedError,
    ApiError,
    "401: the credential is missing, unknown or revoked."
);
pyo3::create_exception!(
    nanami,
    ManagerUnreachableError,
    NanamiError,
    "The manager could not be reached (connection refused, TLS handshake failed, connection dropped) or did not answer in time. Nothing is known about whether a write took effect; read the object again."
);

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add("NanamiError", py.get_type::<NanamiError>())?;
    m.add("ParseError", py.get_type::<ParseError>())?;
    m.add("ValidationError", py.get_type::<ValidationError>())?;
    m.add("InvalidIdError", py.get_type::<InvalidIdError>())?;
    m.add("InvalidKeyError", py.get_type::<InvalidKeyError>())?;
    m.add("CompileError", py.get_type::<CompileError>())?;
    m.add("NotFoundError", py.get_type::<NotFoundError>())?;
    m.add("NodeNotActiveError", py.get_type::<NodeNotActiveError>())?;
    m.add("NodeIsGatewayError", py.get_type::<NodeIsGatewayError>())?;
    m.add("ApiError", py.get_type::<ApiError>())?;
    m.add("ConflictError", py.get_type::<ConflictError>())?;
    m.add("ObjectNotFoundError", py.get_type::<ObjectNotFoundError>())?;
    m.add("ForbiddenError", py.get_type::<ForbiddenError>())?;
    m.add("UnauthorizedError", py.get_type::<UnauthorizedError>())?;
    m.add(
        "ManagerUnreachableError",
        py.get_type::<ManagerUnreachableError>(),
    )?;
    Ok(())
}

/// Sets attributes on a freshly made exception. Setting an attribute on a new
/// exception instance cannot fail short of memory exhaustion; if it does, that
/// error is raised instead.
fn with_attrs(py: Python<'_>, err: PyErr, attrs: &[(&str, Py<PyAny>)]) -> PyErr {
    let value = err.value(py);
    for (name, v) in attrs {
        if let Err(e) = value.setattr(*name, v.bind(py)) {
            return e;
        }
    }
    err
}

/// [`TopologyError`] → `ParseError` or `ValidationError`.
pub(crate) fn topology_error(py: Python<'_>, e: TopologyError) -> PyErr {
    match e {
        TopologyError::Parse(p) => parse_error(p),
        TopologyError::Invalid(v) => validation_error(py, v),
        other => NanamiError::new_err(other.to_string()),
    }
}

/// [`nanami_model::ParseError`] → `ParseError`, whatever the reason.
pub(crate) fn parse_error(e: CoreParseError) -> PyErr {
    match e {
        CoreParseError::TooLarge { .. }
        | CoreParseError::TooDeep { .. }
        | CoreParseError::Yaml(_)
        | CoreParseError::Json(_) => ParseError::new_err(e.to_string()),
        // A variant added to the core later is still a parse error.
        #[allow(clippy::wildcard_enum_match_arm)]
        other => ParseError::new_err(other.to_string()),
    }
}

/// A value handed in by the caller (a state, a health mapping) has the wrong shape.
pub(crate) fn shape_error(what: &str, e: impl Display) -> PyErr {
    ParseError::new_err(format!("{what}: {e}"))
}

/// [`ValidationErrors`] → `ValidationError` with `.issues`.
pub(crate) fn validation_error(py: Python<'_>, e: ValidationErrors) -> PyErr {
    let message = e.to_string();
    let issues = match issues_list(py, e) {
        Ok(list) => list,
        Err(err) => return err,
    };
    with_attrs(py, ValidationError::new_err(message), &[("issues", issues)])
}

fn issues_list(py: Python<'_>, e: ValidationErrors) -> PyResult<Py<PyAny>> {
    let items =
        e.0.into_iter()
            .map(|i| Py::new(py, Issue::from(i)))
            .collect::<PyResult<Vec<_>>>()?;
    Ok(PyList::new(py, items)?.into_any().unbind())
}

/// [`nanami_model::CompileError`] → the `CompileError` subclass for its variant.
pub(crate) fn compile_error(py: Python<'_>, e: CoreCompileError) -> PyErr {
    let message = e.to_string();
    let id = |text: &str| -> Py<PyAny> {
        text.into_pyobject(py)
            .map_or_else(|_| py.None(), |s| s.into_any().unbind())
    };
    match e {
        CoreCompileError::UnknownGateway(g) => with_attrs(
            py,
            NotFoundError::new_err(message),
            &[("id", id(g.as_str()))],
        ),
        CoreCompileError::UnknownNode(n) => with_attrs(
            py,
            NotFoundError::new_err(message),
            &[("id", id(n.as_str()))],
        ),
        CoreCompileError::NodeNotActive { id: n, status } => {
            let status = crate::convert::enum_name(&status).unwrap_or_default();
            with_attrs(
                py,
                NodeNotActiveError::new_err(message),
                &[("id", id(n.as_str())), ("status", id(&status))],
            )
        }
        CoreCompileError::NodeIsGateway(n) => with_attrs(
            py,
            NodeIsGatewayError::new_err(message),
            &[("id", id(n.as_str()))],
        ),
        other => CompileError::new_err(other.to_string()),
    }
}

/// [`KeyError`] → `InvalidKeyError`.
pub(crate) fn key_error(e: KeyError) -> PyErr {
    match e {
        KeyError::Base64 | KeyError::Length(_) | KeyError::Hex | KeyError::LowOrder => {
            InvalidKeyError::new_err(format!("invalid WireGuard key: {e}"))
        }
        other => InvalidKeyError::new_err(format!("invalid WireGuard key: {other}")),
    }
}

/// [`IdError`] → `InvalidIdError`, naming what kind of id and the text.
pub(crate) fn id_error(kind: &str, text: &str, e: IdError) -> PyErr {
    match e {
        IdError::Empty | IdError::TooLong { .. } | IdError::Charset => {
            InvalidIdError::new_err(format!("invalid {kind} id {text:?}: {e}"))
        }
        other => InvalidIdError::new_err(format!("invalid {kind} id {text:?}: {other}")),
    }
}

/// An I/O error on `path` → `OSError` (Python picks the subclass from the errno:
/// `FileNotFoundError`, `PermissionError`, ...), carrying the file name.
pub(crate) fn io_error(e: std::io::Error, path: &std::path::Path) -> PyErr {
    PyOSError::new_err((
        e.raw_os_error().unwrap_or(0),
        e.to_string(),
        path.display().to_string(),
    ))
}

/// One `path: message` line of a manager's 422 answer as the core's issue (the
/// manager prints issues as `nanami validate` does).
fn issue_of_line(line: &str) -> CoreIssue {
    match line.split_once(": ") {
        Some((path, message)) => CoreIssue {
            path: path.to_owned(),
            message: message.to_owned(),
        },
        None => CoreIssue {
            path: String::new(),
            message: line.to_owned(),
        },
    }
}

fn text(py: Python<'_>, s: &str) -> Py<PyAny> {
    PyString::new(py, s).into_any().unbind()
}

/// [`nanami_api::ApiError`] → the exception for its status (or cause).
pub(crate) fn api_error(py: Python<'_>, e: CoreApiError) -> PyErr {
    match e {
        CoreApiError::Status {
            status,
            message,
            issues,
            current_revision,
        } => {
            let code = status.as_u16();
            if code == 422 {
                let err = validation_error(
                    py,
                    ValidationErrors(issues.iter().map(|l| issue_of_line(l)).collect()),
                );
                return with_attrs(
                    py,
                    err,
                    &[
                        ("status", code_obj(py, code)),
                        ("message", text(py, &message)),
                    ],
                );
            }
            let shown = format!("{status}: {message}");
            let err = match code {
                412 => ConflictError::new_err(shown),
                404 => ObjectNotFoundError::new_err(shown),
                403 => ForbiddenError::new_err(shown),
                401 => UnauthorizedError::new_err(shown),
                _ => ApiError::new_err(shown),
            };
            let revision = current_revision.map_or_else(|| py.None(), |r| text(py, &r));
            let mut attrs = vec![
                ("status", code_obj(py, code)),
                ("message", text(py, &message)),
            ];
            if code == 412 {
                attrs.push(("current_revision", revision));
            }
            with_attrs(py, err, &attrs)
        }
        CoreApiError::Connect(_) | CoreApiError::Timeout(_) => {
            ManagerUnreachableError::new_err(e.to_string())
        }
        CoreApiError::Url(_)
        | CoreApiError::NoManager
        | CoreApiError::DuplicateManager(_)
        | CoreApiError::Tls(_) => PyValueError::new_err(e.to_string()),
        CoreApiError::Decode(_) => NanamiError::new_err(format!(
            "the manager's answer is not what this client expects (a different version?): {e}"
        )),
        // A cause added to the client later is still an error of this call.
        #[allow(clippy::wildcard_enum_match_arm)]
        other => NanamiError::new_err(other.to_string()),
    }
}

fn code_obj(py: Python<'_>, code: u16) -> Py<PyAny> {
    match code.into_pyobject(py) {
        Ok(n) => n.into_any().unbind(),
        Err(never) => match never {},
    }
}

/// A failure that is a bug in nanami, not in the caller's input.
pub(crate) fn internal(what: &str, e: impl Display) -> PyErr {
    PyRuntimeError::new_err(format!("nanami internal error ({what}): {e}"))
}
