//! The client's private key as an opaque handle: generated here, kept by the app.

use std::sync::Arc;

use nanami_model::PrivateKey as CoreKey;
use rand_core::OsRng;

use crate::error::NanamiError;

/// A WireGuard private key. Foreign code holds a handle; the secret stays in Rust
/// memory (zeroized when the last handle is dropped) unless the app asks for it
/// with `expose_secret_base64` to store it in the platform keystore.
#[derive(uniffi::Object)]
pub struct PrivateKey {
    pub(crate) key: CoreKey,
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The core key's Debug shows only the public half.
        self.key.fmt(f)
    }
}

#[uniffi::export]
impl PrivateKey {
    /// A new random key from the operating system's CSPRNG.
    #[uniffi::constructor]
    pub fn generate() -> Arc<Self> {
        Arc::new(Self {
            key: CoreKey::generate(&mut OsRng),
        })
    }

    /// The key stored earlier with `expose_secret_base64` (standard base64 of 32
    /// bytes, as `wg genkey` prints).
    #[uniffi::constructor]
    pub fn from_base64(secret: String) -> Result<Arc<Self>, NanamiError> {
        let key = CoreKey::from_base64(secret.trim()).map_err(|e| NanamiError::from_key(&e))?;
        Ok(Arc::new(Self { key }))
    }

    /// The public key, base64: what the app sends to the manager when it enrols.
    pub fn public_key(&self) -> String {
        self.key.public_key().to_base64()
    }

    /// The secret, base64, for the platform keystore (Android Keystore-wrapped
    /// storage, the iOS Keychain) and nothing else: never log or send it.
    pub fn expose_secret_base64(&self) -> String {
        self.key.to_base64_secret().as_str().to_owned()
    }
}
