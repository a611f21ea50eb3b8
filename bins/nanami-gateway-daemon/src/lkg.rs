//! The last-known-good desired state (with its health targets, which share its
//! generation): checked, then saved atomically (temp file, fsync, rename), never
//! replaced by an older generation.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use nanami_api::wire::GatewayDesired;
use nanami_model::{GatewayState, HealthTargets, InterfaceName};
use nanami_reconcile::Desired;

/// Why a desired state was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Refused {
    /// Its generation is older than the one in force (no rollback).
    #[error("generation {offered} is older than {current}, which is in force (no rollback)")]
    Older {
        /// Offered generation.
        offered: u64,
        /// Generation in force.
        current: u64,
    },
    /// The same generation with a different state: the manager's history forked.
    #[error("generation {0} differs from the saved one with the same number")]
    Forked(u64),
    /// It names objects Nanami does not own.
    #[error(
        "it names objects Nanami does not own (interfaces must be nm-*, routes and rules Nanami's)"
    )]
    NotOwned,
    /// It could not be saved; it is not used either.
    #[error("saving it failed: {0}")]
    Save(std::io::Error),
}

/// How an offer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    /// Newer: checked, saved, now in force.
    Accepted,
    /// The state in force already.
    Same,
}

/// The saved desired state.
#[derive(Debug)]
pub struct LastKnownGood {
    path: PathBuf,
    current: Option<Arc<Desired>>,
    targets: HealthTargets,
    /// The manager's digest of the state in force (reported back with its
    /// generation, so a manager whose history forked notices).
    digest: Option<String>,
    /// The uplink of the state in force, when the gateway is hosted.
    uplink: Option<InterfaceName>,
}

/// Why the saved state could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct LoadError {
    path: PathBuf,
    message: String,
}

fn check(state: &GatewayState) -> Result<(), Refused> {
    if state.owned() == *state {
        Ok(())
    } else {
        Err(Refused::NotOwned)
    }
}

impl LastKnownGood {
    /// Loads the saved state at `path` (none if the file does not exist). A file
    /// that does not parse or check is an error: the daemon must not guess.
    pub fn load(path: &Path) -> Result<Self, LoadError> {
        let error = |message: String| LoadError {
            path: path.to_owned(),
            message,
        };
        let (current, targets, digest, uplink) = match std::fs::read(path) {
            Ok(bytes) => {
                let desired: GatewayDesired =
                    serde_json::from_slice(&bytes).map_err(|e| error(e.to_string()))?;
                check(&desired.state).map_err(|e| error(e.to_string()))?;
                let digest = desired.digest.clone();
                let uplink = desired.uplink.clone();
                let (desired, targets) = desired.into_parts();
                (Some(desired), targets, digest, uplink)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                (None, HealthTargets::new(), None, None)
            }
            Err(e) => return Err(error(e.to_string())),
        };
        Ok(Self {
            path: path.to_owned(),
            current,
            targets,
            digest,
            uplink,
        })
    }

    /// The state in force.
    pub fn current(&self) -> Option<Arc<Desired>> {
        self.current.clone()
    }

    /// The health targets in force (what to probe), per network.
    pub fn targets(&self) -> &HealthTargets {
        &self.targets
    }

    /// Its generation.
    pub fn generation(&self) -> Option<u64> {
        self.current.as_ref().map(|d| d.generation)
    }

    /// The manager's digest of the state in force, when the manager gave one.
    pub fn digest(&self) -> Option<&str> {
        self.digest.as_deref()
    }

    /// The uplink of the state in force: `Some` when the gateway is hosted in its
    /// own network namespace.
    pub fn uplink(&self) -> Option<&InterfaceName> {
        self.uplink.as_ref()
    }

    /// Offers a state from the manager: refused if older than the one in force or
    /// failing the checks; saved before it is put in force.
    pub fn offer(&mut self, desired: GatewayDesired) -> Result<Offer, Refused> {
        if let Some(current) = &self.current {
            if desired.generation < current.generation {
                return Err(Refused::Older {
                    offered: desired.generation,
                    current: current.generation,
                });
            }
            if desired.generation == current.generation {
                return if desired.state == current.state
                    && desired.health_targets == self.targets
                    && desired.uplink == self.uplink
                {
                    if self.digest.is_none() {
                        self.digest = desired.digest;
                    }
                    Ok(Offer::Same)
                } else {
                    Err(Refused::Forked(desired.generation))
                };
            }
        }
        check(&desired.state)?;
        let bytes = serde_json::to_vec_pretty(&desired).map_err(|e| Refused::Save(e.into()))?;
        nanami_wg::linux::write_atomic(&self.path, &bytes).map_err(Refused::Save)?;
        self.digest = desired.digest.clone();
        self.uplink = desired.uplink.clone();
        let (current, targets) = desired.into_parts();
        self.current = Some(current);
        self.targets = targets;
        Ok(Offer::Accepted)
    }

    /// Forgets the saved state (for `--teardown`).
    pub fn remove(path: &Path) -> std::io::Result<()> {
        match std::fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            Ok(()) | Err(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("nanami-lkg-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    fn desired(generation: u64, targets: &[(&str, &str)]) -> GatewayDesired {
        let mut health_targets = HealthTargets::new();
        for (net, ip) in targets {
            health_targets
                .entry(net.parse().unwrap())
                .or_default()
                .insert(ip.parse().unwrap());
        }
        GatewayDesired {
            digest: None,
            uplink: None,
            generation,
            state: GatewayState::default(),
            health_targets,
        }
    }

    #[test]
    fn refuses_older_and_survives_reload() {
        let d = dir("older");
        let path = d.join("desired.json");
        let mut lkg = LastKnownGood::load(&path).unwrap();
        assert_eq!(lkg.generation(), None);
        let corp = [("corp", "10.20.0.1")];
        assert_eq!(lkg.offer(desired(5, &corp)).unwrap(), Offer::Accepted);
        assert!(matches!(
            lkg.offer(desired(4, &corp)),
            Err(Refused::Older {
                offered: 4,
                current: 5
            })
        ));
        assert_eq!(lkg.offer(desired(5, &corp)).unwrap(), Offer::Same);
        assert!(
            matches!(lkg.offer(desired(5, &[])), Err(Refused::Forked(5))),
            "other targets at the same generation: a forked history"
        );
        let reloaded = LastKnownGood::load(&path).unwrap();
        assert_eq!(reloaded.generation(), Some(5));
        assert_eq!(reloaded.targets(), &desired(5, &corp).health_targets);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_state_saved_before_health_targets_loads() {
        let d = dir("old-format");
        std::fs::create_dir_all(&d).unwrap();
        let path = d.join("desired.json");
        let old = Desired {
            generation: 3,
            state: GatewayState::default(),
        };
        std::fs::write(&path, serde_json::to_vec(&old).unwrap()).unwrap();
        let lkg = LastKnownGood::load(&path).unwrap();
        assert_eq!(lkg.generation(), Some(3));
        assert!(lkg.targets().is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
