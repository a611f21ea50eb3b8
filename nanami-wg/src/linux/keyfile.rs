//! The node's private key file: generated on the node, `0600`, base64 like
//! `wg genkey`; never logged.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

use nanami_model::PrivateKey;
use rand_core::{CryptoRng, RngCore};
use zeroize::Zeroizing;

use super::{write_atomic, PlatformError};

fn error(path: &Path, message: impl Into<String>) -> PlatformError {
    PlatformError::KeyFile {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// Reads the key at `path`, refusing a file that group or others can access.
pub fn load(path: &Path) -> Result<PrivateKey, PlatformError> {
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
) -> Result<PrivateKey, PlatformError> {
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
        assert!(matches!(load(&path), Err(PlatformError::KeyFile { .. })));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
