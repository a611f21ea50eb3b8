//! `nanami-gateway-manager init`: the manager's directory with a CA, a server
//! certificate signed by it, the control-plane and operator credentials and the
//! store.

use nanami_model::ErrorKind;
use std::path::{Path, PathBuf};

use nanami_api::wire::CredentialKind;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

use crate::auth;
use crate::store::{Principal, SqliteStore, Store, StoreError};

/// Why `init` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// The directory already holds a manager (nothing was overwritten).
    #[error("{0} already exists; refusing to overwrite it")]
    Exists(PathBuf),
    /// Certificate generation failed.
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
    /// Writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// The store could not be created.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl InitError {
    /// An existing directory is [`ErrorKind::BadInput`]; the disk is
    /// [`ErrorKind::Environment`]; a certificate that cannot be made is a
    /// [`ErrorKind::Bug`]; the store says its own.
    pub fn kind(&self) -> ErrorKind {
        match self {
            InitError::Exists(_) => ErrorKind::BadInput,
            InitError::Cert(_) => ErrorKind::Bug,
            InitError::Io { .. } => ErrorKind::Environment,
            InitError::Store(e) => e.kind(),
        }
    }
}

/// Files of a manager directory.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The directory.
    pub dir: PathBuf,
}

impl Layout {
    /// The layout of `dir`.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    /// CA certificate (give it to daemons and the CLI).
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    /// CA private key (0600; only `init` uses it).
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca.key")
    }
    /// Server certificate.
    pub fn server_cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }
    /// Server private key (0600).
    pub fn server_key(&self) -> PathBuf {
        self.dir.join("server.key")
    }
    /// The control-plane credential (0600).
    pub fn control_token(&self) -> PathBuf {
        self.dir.join("control.token")
    }
    /// The operator credential (0600).
    pub fn operator_token(&self) -> PathBuf {
        self.dir.join("operator.token")
    }
    /// The SQLite store.
    pub fn store(&self) -> PathBuf {
        self.dir.join("manager.db")
    }
}

fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), InitError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |source| InitError::Io {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)
}

/// Creates the manager directory. `names` are the server certificate's subject
/// alternative names (DNS names or IP addresses clients connect to). The
/// credentials go to `store`, or to a new SQLite store in the directory when it is
/// `None`. A shared store is initialised once: the other managers get a copy of
/// this directory.
pub fn init(layout: &Layout, names: &[String], store: Option<&dyn Store>) -> Result<(), InitError> {
    let io = |source| InitError::Io {
        path: layout.dir.clone(),
        source,
    };
    std::fs::create_dir_all(&layout.dir).map_err(io)?;
    // Keys, credentials and the store live here: the manager's user only, whatever
    // the umask.
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&layout.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(io)?;
    }
    let own_store = store.is_none().then(|| layout.store());
    for p in [
        layout.ca_cert(),
        layout.server_cert(),
        layout.control_token(),
    ]
    .into_iter()
    .chain(own_store)
    {
        if p.exists() {
            return Err(InitError::Exists(p));
        }
    }
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Nanami gateway-manager CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca_params.self_signed(&ca_key)?;

    let server_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, "nanami-gateway-manager");
    let server = params.signed_by(&server_key, &ca, &ca_key)?;

    write_secret(&layout.ca_key(), ca_key.serialize_pem().as_bytes())?;
    write_secret(&layout.server_key(), server_key.serialize_pem().as_bytes())?;
    write_secret(&layout.ca_cert(), ca.pem().as_bytes())?;
    write_secret(&layout.server_cert(), server.pem().as_bytes())?;

    let own;
    let store = match store {
        Some(store) => store,
        None => {
            own = SqliteStore::open(&layout.store())?;
            &own
        }
    };
    let control = auth::generate(CredentialKind::Control);
    let operator = auth::generate(CredentialKind::Operator);
    store.set_api_credential(&Principal::Platform, &auth::digest(&control))?;
    store.set_api_credential(&Principal::Operator, &auth::digest(&operator))?;
    write_secret(&layout.control_token(), format!("{control}\n").as_bytes())?;
    write_secret(&layout.operator_token(), format!("{operator}\n").as_bytes())?;
    Ok(())
}
