//! What an agent keeps in its state directory: the key (0600, never sent), the
//! credential (0600), the listen port it chose, and the last-known-good desired
//! state. Every file is written atomically (a 0600 temp file, fsync, rename:
//! [`nanami_wg::files::write_atomic`]).

use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use nanami_model::{PrivateKey, PublicKey};
use nanami_wg::files::write_atomic;
use nanami_wg::keyfile;
use rand_core::{OsRng, RngCore as _};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::Credential;

/// A state directory file that could not be read or written.
#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct StoreError {
    /// The file.
    pub path: PathBuf,
    /// What went wrong.
    pub message: String,
}

impl StoreError {
    fn new(path: &Path, message: impl ToString) -> Self {
        Self {
            path: path.to_owned(),
            message: message.to_string(),
        }
    }
}

/// The state directory's files; `D` is the last-known-good state's type, saved
/// as JSON in `lkg_file`.
#[derive(Debug, Clone)]
pub struct StateDir<D> {
    dir: PathBuf,
    lkg_file: &'static str,
    kind: PhantomData<fn() -> D>,
}

impl<D: Serialize + DeserializeOwned> StateDir<D> {
    /// The directory `dir`, whose last-known-good state is `dir/lkg_file`.
    pub fn new(dir: impl Into<PathBuf>, lkg_file: &'static str) -> Self {
        Self {
            dir: dir.into(),
            lkg_file,
            kind: PhantomData,
        }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    /// The private key file.
    pub fn key_file(&self) -> PathBuf {
        self.dir.join("private.key")
    }

    /// The credential file.
    pub fn credential_file(&self) -> PathBuf {
        self.dir.join("credential")
    }

    /// The last-known-good state's file.
    pub fn lkg_path(&self) -> PathBuf {
        self.dir.join(self.lkg_file)
    }

    fn port_file(&self) -> PathBuf {
        self.dir.join("listen-port")
    }

    /// Creates the directory (0700) and the key (0600) on first use; the public
    /// key, the only part that leaves.
    pub fn ensure_key(&self) -> Result<PublicKey, StoreError> {
        Ok(self.private_key()?.public_key())
    }

    /// The key itself, made on first use as [`StateDir::ensure_key`] does, for a
    /// program whose device runs in its own process (the mobile tunnel): it never
    /// leaves that process.
    pub fn private_key(&self) -> Result<PrivateKey, StoreError> {
        create_private_dir(&self.dir)?;
        let file = self.key_file();
        keyfile::load_or_generate(&file, &mut OsRng).map_err(|e| StoreError::new(&file, e))
    }

    /// The saved credential, if enrolled.
    pub fn credential(&self) -> Option<Credential> {
        std::fs::read_to_string(self.credential_file())
            .ok()
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty())
            .map(Credential)
    }

    /// Saves the credential (0600, atomically).
    pub fn save_credential(&self, credential: &Credential) -> Result<(), StoreError> {
        let file = self.credential_file();
        write_atomic(&file, format!("{}\n", credential.0).as_bytes())
            .map_err(|e| StoreError::new(&file, e))
    }

    /// The listen port: `requested` unless 0; otherwise the one chosen on first
    /// start (a random port in the dynamic range, kept so gateways keep the same
    /// endpoint across restarts).
    pub fn listen_port(&self, requested: u16) -> Result<u16, StoreError> {
        if requested != 0 {
            return Ok(requested);
        }
        let file = self.port_file();
        if let Some(port) = std::fs::read_to_string(&file)
            .ok()
            .and_then(|t| t.trim().parse::<u16>().ok())
            .filter(|p| *p != 0)
        {
            return Ok(port);
        }
        // 49152..=65535, the dynamic range (RFC 6335).
        let port = 49152 + (OsRng.next_u32() % 16384) as u16;
        write_atomic(&file, format!("{port}\n").as_bytes())
            .map_err(|e| StoreError::new(&file, e))?;
        Ok(port)
    }

    /// The saved last-known-good state: `None` when there is none; an error when
    /// the file is there but unreadable (the caller decides whether to ignore it).
    pub fn load_lkg(&self) -> Result<Option<D>, StoreError> {
        let file = self.lkg_path();
        match std::fs::read(&file) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| StoreError::new(&file, e)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StoreError::new(&file, e)),
        }
    }

    /// Saves the last-known-good state (atomically).
    pub fn save_lkg(&self, desired: &D) -> Result<(), StoreError> {
        let file = self.lkg_path();
        let json = serde_json::to_vec_pretty(desired).map_err(|e| StoreError::new(&file, e))?;
        write_atomic(&file, &json).map_err(|e| StoreError::new(&file, e))
    }

    /// Forgets the saved last-known-good state (none saved is fine).
    pub fn remove_lkg(&self) -> Result<(), StoreError> {
        let file = self.lkg_path();
        match std::fs::remove_file(&file) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StoreError::new(&file, e)),
            Ok(()) | Err(_) => Ok(()),
        }
    }

    /// Writes `bytes` to `name` in the directory (atomically), for a program's
    /// own files (a status file).
    pub fn write(&self, name: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let file = self.dir.join(name);
        write_atomic(&file, bytes).map_err(|e| StoreError::new(&file, e))
    }
}

fn create_private_dir(dir: &Path) -> Result<(), StoreError> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| StoreError::new(dir, e))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::VersionedConfig;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("nanami-agent-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn the_credential_is_private_and_survives_a_restart() {
        let d = dir("credential");
        let store = StateDir::<VersionedConfig>::new(&d, "config.json");
        store.ensure_key().unwrap();
        assert_eq!(store.credential(), None);
        store.save_credential(&Credential("nmn_x".into())).unwrap();
        let mode = std::fs::metadata(store.credential_file())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let again = StateDir::<VersionedConfig>::new(&d, "config.json");
        assert_eq!(again.credential(), Some(Credential("nmn_x".into())));
        assert_eq!(again.load_lkg().unwrap(), None);
        std::fs::write(again.lkg_path(), "{").unwrap();
        assert!(again.load_lkg().is_err());
        let port = again.listen_port(0).unwrap();
        assert_eq!(again.listen_port(0).unwrap(), port);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
