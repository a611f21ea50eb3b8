//! WireGuard keys: [`PublicKey`] travels, [`PrivateKey`] never does.
//!
//! A private key is generated on the node that uses it, with a random source the
//! caller supplies (this crate reads no entropy itself). It is zeroized on drop, has
//! no `Serialize`, and its `Debug` shows only the public half.

use std::fmt;
use std::str::FromStr;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rand_core::{CryptoRng, RngCore};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroize;

/// Length in bytes of every WireGuard key.
pub const KEY_LEN: usize = 32;

/// Why a key could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The text is not standard base64 (with padding). Fix the text.
    #[error("not valid base64")]
    Base64,
    /// The text decodes, but not to 32 bytes.
    #[error("decodes to {0} bytes, a WireGuard key has 32")]
    Length(usize),
    /// The text is not 64 hexadecimal digits (the UAPI form).
    #[error("not 64 hexadecimal digits")]
    Hex,
    /// The public key is a low-order Curve25519 point: every shared secret with it is
    /// predictable, so a peer with it can be impersonated by anyone.
    #[error("a low-order Curve25519 point, unusable as a public key")]
    LowOrder,
}

/// A WireGuard (X25519) public key. Base64 in text and in serde, like `wg(8)`.
///
/// ```
/// use nanami_model::PublicKey;
/// let k: PublicKey = "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=".parse().unwrap();
/// assert_eq!(k.to_string(), "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw=");
/// ```
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PublicKey([u8; KEY_LEN]);

/// The Curve25519 points of small order (and their non-canonical encodings), as
/// listed by libsodium's `crypto_scalarmult` blacklist. Rejecting them keeps a
/// document from naming a key every party can compute shared secrets with.
const LOW_ORDER_POINTS: [[u8; 32]; 7] = [
    [0; 32],
    [
        1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0,
    ],
    [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
        0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49,
        0xb8, 0x00,
    ],
    [
        0x5f, 0x9c, 0x95, 0xbc, 0xa3, 0x50, 0x8c, 0x24, 0xb1, 0xd0, 0xb1, 0x55, 0x9c, 0x83, 0xef,
        0x5b, 0x04, 0x44, 0x5c, 0xc4, 0x58, 0x1c, 0x8e, 0x86, 0xd8, 0x22, 0x4e, 0xdd, 0xd0, 0x9f,
        0x11, 0x57,
    ],
    [
        0xec, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    [
        0xed, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
    [
        0xee, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        0xff, 0x7f,
    ],
];

impl PublicKey {
    /// Wraps raw bytes, refusing low-order points.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Result<Self, KeyError> {
        // Compare with the top bit cleared too: X25519 ignores it, so both encodings
        // name the same point.
        let mut masked = bytes;
        masked[31] &= 0x7f;
        if LOW_ORDER_POINTS.iter().any(|p| *p == bytes || *p == masked) {
            return Err(KeyError::LowOrder);
        }
        Ok(Self(bytes))
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Standard base64, as `wg(8)` prints it.
    pub fn to_base64(&self) -> String {
        STANDARD.encode(self.0)
    }

    /// Lower-case hex, as the WireGuard UAPI protocol writes keys.
    pub fn to_hex(&self) -> String {
        hex_encode(&self.0)
    }

    /// Parses the UAPI's 64 hexadecimal digits.
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        Self::from_bytes(hex_decode(text)?)
    }
}

fn hex_encode(bytes: &[u8; KEY_LEN]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(KEY_LEN * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

fn hex_decode(text: &str) -> Result<[u8; KEY_LEN], KeyError> {
    let raw = text.as_bytes();
    if raw.len() != KEY_LEN * 2 {
        return Err(KeyError::Hex);
    }
    let nibble = |c: u8| -> Result<u8, KeyError> {
        match c {
            b'0'..=b'9' => Ok(c - b'0'),
            b'a'..=b'f' => Ok(c - b'a' + 10),
            b'A'..=b'F' => Ok(c - b'A' + 10),
            _ => Err(KeyError::Hex),
        }
    };
    let mut out = [0u8; KEY_LEN];
    for (i, pair) in raw.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Ok(out)
}

fn base64_decode(text: &str) -> Result<[u8; KEY_LEN], KeyError> {
    // A key is 44 characters; refuse anything much longer before decoding it.
    if text.len() > 64 {
        return Err(KeyError::Base64);
    }
    let bytes = STANDARD.decode(text.trim()).map_err(|_| KeyError::Base64)?;
    <[u8; KEY_LEN]>::try_from(bytes.as_slice()).map_err(|_| KeyError::Length(bytes.len()))
}

impl FromStr for PublicKey {
    type Err = KeyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_bytes(base64_decode(s)?)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_base64())
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.to_base64())
    }
}

impl Serialize for PublicKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_base64())
    }
}

impl<'de> Deserialize<'de> for PublicKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A WireGuard private key. Zeroized on drop; never serialized; `Debug` and
/// `Display` are not implemented to print it.
///
/// ```
/// use nanami_model::PrivateKey;
/// # struct Rng(u8);
/// # impl rand_core::RngCore for Rng {
/// #     fn next_u32(&mut self) -> u32 { 4 }
/// #     fn next_u64(&mut self) -> u64 { 4 }
/// #     fn fill_bytes(&mut self, d: &mut [u8]) { d.fill(self.0) }
/// #     fn try_fill_bytes(&mut self, d: &mut [u8]) -> Result<(), rand_core::Error> { d.fill(self.0); Ok(()) }
/// # }
/// # impl rand_core::CryptoRng for Rng {}
/// let mut rng = Rng(4); // in a real program: rand_core::OsRng
/// let key = PrivateKey::generate(&mut rng);
/// assert!(!format!("{key:?}").contains(key.to_base64_secret().as_str()));
/// ```
pub struct PrivateKey(x25519_dalek::StaticSecret);

impl PrivateKey {
    /// Generates a key from the caller's cryptographic random source.
    pub fn generate<R: RngCore + CryptoRng>(rng: &mut R) -> Self {
        let mut bytes = [0u8; KEY_LEN];
        rng.fill_bytes(&mut bytes);
        let key = Self::from_bytes(bytes);
        bytes.zeroize();
        key
    }

    /// Wraps raw bytes (clamped by X25519 when used).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(x25519_dalek::StaticSecret::from(bytes))
    }

    /// Reads the base64 form `wg genkey` writes.
    pub fn from_base64(text: &str) -> Result<Self, KeyError> {
        let mut bytes = base64_decode(text)?;
        let key = Self::from_bytes(bytes);
        bytes.zeroize();
        Ok(key)
    }

    /// Reads the UAPI's 64 hexadecimal digits.
    pub fn from_hex(text: &str) -> Result<Self, KeyError> {
        let mut bytes = hex_decode(text)?;
        let key = Self::from_bytes(bytes);
        bytes.zeroize();
        Ok(key)
    }

    /// The matching public key.
    pub fn public_key(&self) -> PublicKey {
        // The public half of a clamped scalar times the base point is never low-order.
        PublicKey(x25519_dalek::PublicKey::from(&self.0).to_bytes())
    }

    /// The secret bytes, for handing to the data plane. Named so that every use is
    /// visible in review.
    pub fn expose_secret(&self) -> &[u8; KEY_LEN] {
        self.0.as_bytes()
    }

    /// The secret as base64, for writing the node's own `0600` key file. Named so that
    /// every use is visible in review; the returned string is zeroized on drop.
    pub fn to_base64_secret(&self) -> zeroize::Zeroizing<String> {
        zeroize::Zeroizing::new(STANDARD.encode(self.0.as_bytes()))
    }

    /// The secret as UAPI hex; the returned string is zeroized on drop.
    pub fn to_hex_secret(&self) -> zeroize::Zeroizing<String> {
        zeroize::Zeroizing::new(hex_encode(self.0.as_bytes()))
    }
}

impl Clone for PrivateKey {
    fn clone(&self) -> Self {
        Self(self.0.clone())
    }
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(<redacted>, public {})", self.public_key())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_key_round_trips_base64_and_hex() {
        let key = PrivateKey::from_bytes([7; 32]).public_key();
        assert_eq!(key.to_string().parse::<PublicKey>(), Ok(key));
        assert_eq!(PublicKey::from_hex(&key.to_hex()), Ok(key));
    }

    #[test]
    fn rejects_bad_keys() {
        assert_eq!("not base64!".parse::<PublicKey>(), Err(KeyError::Base64));
        assert_eq!("AAAA".parse::<PublicKey>(), Err(KeyError::Length(3)));
        assert_eq!(
            STANDARD.encode([0u8; 32]).parse::<PublicKey>(),
            Err(KeyError::LowOrder)
        );
        let mut one = [0u8; 32];
        one[0] = 1;
        one[31] = 0x80; // non-canonical encoding of the same point
        assert_eq!(PublicKey::from_bytes(one), Err(KeyError::LowOrder));
        assert_eq!(PublicKey::from_hex("zz"), Err(KeyError::Hex));
    }

    #[test]
    fn private_key_debug_hides_material() {
        let key = PrivateKey::from_bytes([9; 32]);
        let shown = format!("{key:?}");
        assert!(!shown.contains(key.to_base64_secret().as_str()));
        assert!(!shown.contains(key.to_hex_secret().as_str()));
        assert!(shown.contains("redacted"));
        let back = PrivateKey::from_hex(key.to_hex_secret().as_str()).unwrap();
        assert_eq!(back.public_key(), key.public_key());
    }

    #[test]
    fn matches_wg_pubkey() {
        // `echo 'yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=' | wg pubkey`
        let key = PrivateKey::from_base64("yAnz5TF+lXXJte14tji3zlMNq+hd2rYUIgJBgB3fBmk=").unwrap();
        assert_eq!(
            key.public_key().to_string(),
            "HIgo9xNzJMWLKASShiTqIybxZ0U3wGLiUeJ1PKf8ykw="
        );
    }
}
