//! The node's private key file: generated on the node, `0600`, base64 like
//! `wg genkey`; never logged.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use nanami_model::PrivateKey;
use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use crate::files::write_atomic;

/// A key file that cannot be read, is not a key, lets others read it, or cannot
/// be written. Bad input (the file is the operator's), except a failed write.
#[derive(Debug, thiserror::Error)]
#[error("key file {}: {message}", path.display())]
pub struct KeyFileError {
    /// The file.
    pub path: PathBuf,
    /// What is wrong.
    pub message: String,
}

fn error(path: &Path, message: impl Into<String>) -> KeyFileError {
    KeyFileError {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// Reads the key at `path`, refusing a file that group or others can access.
pub fn load(path: &Path) -> Result<PrivateKey, KeyFileError> {
    let meta = std::fs::metadata(path).map_err(|e| error(path, e.to_string()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(error(
            path,
            format!("mode {mode:o} lets others read the key; chmod 600 it"),
        ));
    }
    let text =
        Zeroizing::new(std::fs::read_to_string(path).map_err(|e| error(path, e.to_string()))?);
    PrivateKey::from_base64(text.trim())
        .map_err(|e| error(path, format!("not a WireGuard key: {e}")))
}

/// Reads the key at `path`, generating and writing one (0600) if the file does not
/// exist yet.
pub fn load_or_generate<R: RngCore + CryptoRng>(
    path: &Path,
    rng: &mut R,
) -> Result<PrivateKey, KeyFileError> {
    if path.exists() {
        return load(path);
    }
    let key = PrivateKey::generate(rng);
    let text = Zeroizing::new(format!("{}\n", key.to_base64_secret().as_str()));
    write_atomic(path, text.as_bytes()).map_err(|e| error(path, e.to_string()))?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_0600_and_reloads() {
        let dir = std::env::temp_dir().join(format!("nanami-key-{}", std::process::id()));
        let path = dir.join("private.key");
        let _ = std::fs::remove_file(&path);
        let key = load_or_generate(&path, &mut rand_core::OsRng).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(load(&path).unwrap().public_key(), key.public_key());
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load(&path).unwrap_err().message.contains("chmod 600"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
