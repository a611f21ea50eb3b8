//! # nanami-python
//!
//! The native module (`nanami._nanami`) of the `nanami` Python package: a thin
//! binding over [`nanami_model`] and [`nanami_reconcile`], and a client of the
//! gateway manager's object API over [`nanami_api`] ([`manager`]), built by
//! maturin from `bindings/python/`.
//!
//! Habits, after mozilla/application-services and pydantic/jiter:
//! - the core crates know nothing of Python; this crate owns every Python type;
//! - every Python class wraps an owned core value and exposes FFI-only accessors
//!   (ids, prefixes and keys as `str`), never the core types themselves;
//! - each core error enum is mapped to a Python exception by one explicit function
//!   in [`errors`], never through a blanket `From`;
//! - calls that parse, validate or compile, and every request to a manager,
//!   release the GIL.
//!
//! The Python-facing contract is `bindings/python/nanami/_nanami.pyi`; the tests
//! in `bindings/python/tests` check that it matches this module exactly.
#![deny(missing_docs)]

mod config;
mod convert;
mod errors;
mod keys;
mod manager;
mod plan;
mod state;
mod topology;

use pyo3::prelude::*;

/// The `nanami._nanami` module.
#[pymodule]
fn _nanami(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    errors::register(m)?;
    topology::register(m)?;
    state::register(m)?;
    config::register(m)?;
    keys::register(m)?;
    plan::register(m)?;
    manager::register(m)?;
    Ok(())
}
