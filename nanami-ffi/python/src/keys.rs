//! WireGuard keys. A `PrivateKey` never shows its material: `repr`/`str` name only
//! the public half, and pickling or copying it is refused, so it cannot leak into
//! logs, caches, task queues or crash reports by accident. The secret comes out
//! only through `expose_secret()` or `write_key_file()`, named so every use is
//! visible in review.

use std::path::PathBuf;

use nanami_model::{PrivateKey as CorePrivateKey, PublicKey as CorePublicKey};
use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use rand_core::OsRng;

use crate::errors;

pub(crate) fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<PublicKey>()?;
    m.add_class::<PrivateKey>()?;
    m.add_function(pyo3::wrap_pyfunction!(generate_keypair, m)?)?;
    Ok(())
}

/// A WireGuard public key; its text form is base64, as `wg(8)` prints it.
#[pyclass(frozen, eq, hash, module = "nanami", name = "PublicKey")]
#[derive(PartialEq, Hash)]
pub(crate) struct PublicKey(CorePublicKey);

impl PublicKey {
    pub(crate) fn inner(&self) -> &CorePublicKey {
        &self.0
    }
}

#[pymethods]
impl PublicKey {
    /// Parses base64; a malformed or low-order key raises `InvalidKeyError`.
    #[new]
    fn new(text: &str) -> PyResult<Self> {
        text.parse().map(Self).map_err(errors::key_error)
    }

    /// Parses the UAPI's 64 hexadecimal digits.
    #[staticmethod]
    fn from_hex(text: &str) -> PyResult<Self> {
        CorePublicKey::from_hex(text)
            .map(Self)
            .map_err(errors::key_error)
    }

    /// Base64, as `wg(8)` prints it.
    fn to_base64(&self) -> String {
        self.0.to_base64()
    }

    /// Lower-case hex, as the UAPI writes it.
    fn to_hex(&self) -> String {
        self.0.to_hex()
    }

    fn __bytes__<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.0.as_bytes())
    }

    fn __str__(&self) -> String {
        self.0.to_base64()
    }

    fn __repr__(&self) -> String {
        format!("PublicKey('{}')", self.0)
    }
}

/// A WireGuard private key. Zeroized in memory when dropped; never printed,
/// pickled or copied.
#[pyclass(frozen, module = "nanami", name = "PrivateKey")]
pub(crate) struct PrivateKey(CorePrivateKey);

impl PrivateKey {
    pub(crate) fn inner(&self) -> &CorePrivateKey {
        &self.0
    }
}

fn refuse(what: &str) -> PyErr {
    PyTypeError::new_err(format!(
        "nanami.PrivateKey cannot be {what}: a private key stays in the process that \
         generated it. Write it to its own 0600 file with write_key_file(), or take the \
         base64 text explicitly with expose_secret()"
    ))
}

#[pymethods]
impl PrivateKey {
    /// A new key from the operating system's random source.
    #[staticmethod]
    fn generate() -> Self {
        Self(CorePrivateKey::generate(&mut OsRng))
    }

    /// Reads the base64 form `wg genkey` writes.
    #[staticmethod]
    fn from_base64(text: &str) -> PyResult<Self> {
        CorePrivateKey::from_base64(text)
            .map(Self)
            .map_err(errors::key_error)
    }

    /// The matching public key.
    #[getter]
    fn public_key(&self) -> PublicKey {
        PublicKey(self.0.public_key())
    }

    /// The secret as base64, for the node's own key file or `wg set ... private-key`.
    /// The returned `str` is an ordinary Python string: it is not zeroized.
    fn expose_secret(&self) -> String {
        self.0.to_base64_secret().to_string()
    }

    /// Writes the secret (base64 and a newline, as `wg genkey`) to `path` with mode
    /// `0600`, replacing the file's contents and tightening its mode if it exists.
    fn write_key_file(&self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let secret = self.0.to_base64_secret();
        py.detach(|| write_secret(&path, secret.as_str()))
            .map_err(|e| errors::io_error(e, &path))
    }

    fn __repr__(&self) -> String {
        format!("PrivateKey(public_key='{}')", self.0.public_key())
    }

    fn __str__(&self) -> String {
        self.__repr__()
    }

    fn __reduce__(&self) -> PyResult<()> {
        Err(refuse("pickled"))
    }

    fn __reduce_ex__(&self, _protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        Err(refuse("pickled"))
    }

    fn __getstate__(&self) -> PyResult<()> {
        Err(refuse("pickled"))
    }

    fn __copy__(&self) -> PyResult<()> {
        Err(refuse("copied"))
    }

    fn __deepcopy__(&self, _memo: &Bound<'_, PyAny>) -> PyResult<()> {
        Err(refuse("copied"))
    }
}

#[cfg(unix)]
fn write_secret(path: &std::path::Path, secret: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)?;
    // `mode` applies only when the file is created: tighten an existing one before
    // the secret is written to it.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    file.set_len(0)?;
    file.write_all(secret.as_bytes())?;
    file.write_all(b"\n")?;
    file.sync_all()
}

#[cfg(not(unix))]
fn write_secret(path: &std::path::Path, secret: &str) -> std::io::Result<()> {
    std::fs::write(path, format!("{secret}\n"))
}

/// A new key pair from the operating system's random source: `(private, public)`.
#[pyfunction]
fn generate_keypair() -> (PrivateKey, PublicKey) {
    let key = CorePrivateKey::generate(&mut OsRng);
    let public = PublicKey(key.public_key());
    (PrivateKey(key), public)
}
