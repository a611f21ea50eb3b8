//! Credentials: 32 random bytes (base64url) behind a kind prefix; only their SHA-256
//! digest is stored. A plain hash suffices because the secret has 256 bits of
//! entropy: there is nothing to brute-force, so a slow password hash buys nothing.

use base64::Engine as _;
use nanami_api::wire::CredentialKind;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

use crate::store::Digest;

/// A fresh credential of `kind`.
pub fn generate(kind: CredentialKind) -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    format!(
        "{}{}",
        kind.prefix(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// The stored form of a credential.
pub fn digest(credential: &str) -> Digest {
    Sha256::digest(credential.as_bytes()).into()
}

/// Constant-time equality of two digests.
pub fn same(a: &Digest, b: &Digest) -> bool {
    a.ct_eq(b).into()
}

/// The bearer credential of an `Authorization` header value.
pub fn bearer(header: &str) -> Option<&str> {
    let (scheme, token) = header.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
}

/// A credential's id for logs and the audit trail: the first 6 bytes of its
/// digest in hex (it identifies the credential and reveals nothing of it).
pub fn credential_id(digest: &Digest) -> String {
    digest.iter().take(6).map(|b| format!("{b:02x}")).collect()
}
