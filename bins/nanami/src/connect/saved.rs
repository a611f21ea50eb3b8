//! What the agent keeps in its state directory: the key (0600, never sent), the
//! credential, the listen port it chose, and the last-known-good configuration.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use nanami_model::{NodeConfig, NodeId, PublicKey};
use nanami_wg::linux::{keyfile, write_atomic};
use rand_core::{OsRng, RngCore as _};
use serde::{Deserialize, Serialize};

/// The state directory's files.
#[derive(Debug, Clone)]
pub struct StateDir(pub PathBuf);

/// A configuration as the manager served it, with its version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Saved {
    /// The manager's version of it (what the next long-poll waits past).
    pub version: String,
    /// The configuration.
    pub config: NodeConfig,
}

impl StateDir {
    /// The private key file.
    pub fn key_file(&self) -> PathBuf {
        self.0.join("private.key")
    }

    fn credential_file(&self) -> PathBuf {
        self.0.join("credential")
    }

    fn port_file(&self) -> PathBuf {
        self.0.join("listen-port")
    }

    fn config_file(&self) -> PathBuf {
        self.0.join("config.json")
    }

    /// Creates the directory (0700) and the key on first use; the public key.
    pub fn ensure_key(&self) -> anyhow::Result<PublicKey> {
        create_private_dir(&self.0)?;
        let key = keyfile::load_or_generate(&self.key_file(), &mut OsRng)?;
        Ok(key.public_key())
    }

    /// The saved credential, if enrolled.
    pub fn credential(&self) -> Option<String> {
        std::fs::read_to_string(self.credential_file())
            .ok()
            .map(|c| c.trim().to_owned())
            .filter(|c| !c.is_empty())
    }

    /// Saves the credential.
    pub fn save_credential(&self, credential: &str) -> anyhow::Result<()> {
        let file = self.credential_file();
        write_atomic(&file, format!("{credential}\n").as_bytes())
            .with_context(|| format!("writing {}", file.display()))
    }

    /// The listen port: `requested` unless 0; otherwise the one chosen on first
    /// start (a random port in the dynamic range, kept so gateways keep the same
    /// endpoint across restarts).
    pub fn listen_port(&self, requested: u16) -> anyhow::Result<u16> {
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
            .with_context(|| format!("writing {}", file.display()))?;
        Ok(port)
    }

    /// The last-known-good configuration for `node`, if one was saved and is
    /// readable (an unreadable one is ignored: the manager's next answer replaces it).
    pub fn load_config(&self, node: &NodeId) -> Option<Saved> {
        let text = std::fs::read_to_string(self.config_file()).ok()?;
        match serde_json::from_str::<Saved>(&text) {
            Ok(saved) if &saved.config.node == node => Some(saved),
            Ok(saved) => {
                tracing::warn!(saved = %saved.config.node, "ignoring a saved configuration of another node");
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "ignoring an unreadable saved configuration");
                None
            }
        }
    }

    /// Saves the configuration (atomically: temp file, fsync, rename).
    pub fn save_config(&self, saved: &Saved) -> anyhow::Result<()> {
        let file = self.config_file();
        let json = serde_json::to_vec_pretty(saved)?;
        write_atomic(&file, &json).with_context(|| format!("writing {}", file.display()))
    }
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {}", dir.display()))
}
