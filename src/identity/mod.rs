//! Identities: who a SREMP participant is, and how that is proven.
//!
//! An [`Identity`] is an Ed25519 identity key that never changes, bound by its own signature to
//! an X25519 noise key (which may rotate), a username, flags and optional extensions. The
//! signature covers `"SREMP-1 identity\0" || bytes`, where `bytes` is the MessagePack encoding
//! of [`IdentityVerifiedData`] exactly as it travels: an `Identity` on the wire is
//! `[bin data, bin(64) signature]`, and verification runs over the received `data` bytes, never
//! over a re-encoding. An `Identity` value can only be obtained by signing or by successful
//! verification, so holding one means its fields are authentic.
//!
//! - [`keys`]: the private half ([`UserIdentity`]) and its owner-only key file.
//! - [`card`]: the one-line contact card that users paste.
//! - [`contact`]: the TOFU rule and trust (the node persists contacts).
//! - [`verified`]: [`VerifiedCache`], a bounded memory of verified identities that a node or
//!   relay owns and passes to the code that verifies identities it sees again and again.
//!
//! Limits: username 1..=40 characters without control characters; profile picture at most
//! [`MAX_PICTURE`] bytes; at most [`MAX_METADATA_ENTRIES`] metadata entries; the encoded
//! verified data at most [`MAX_IDENTITY_DATA`] bytes.

pub mod card;
pub mod contact;
pub mod keys;
pub mod rotation;
pub mod verified;

pub use card::ContactCard;
pub use contact::{ContactIdentity, Observation, Trust};
pub use keys::UserIdentity;
pub use verified::VerifiedCache;

use crate::sig::{self, SigContext};
use crate::time::Timestamp;
use crate::wire::rendezvous::RawIdentity;
use crate::wire::{msgpack, DecodeError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// Longest encoded `IdentityVerifiedData` accepted.
pub const MAX_IDENTITY_DATA: usize = 32 * 1024;
/// Longest profile picture accepted.
pub const MAX_PICTURE: usize = 24 * 1024;
/// Most `additional_metadata` entries.
pub const MAX_METADATA_ENTRIES: usize = 16;
/// Longest metadata key (bytes).
pub const MAX_METADATA_KEY: usize = 64;
/// Longest metadata value (bytes).
pub const MAX_METADATA_VALUE: usize = 1024;
/// Username length in characters.
pub const MAX_USERNAME_CHARS: usize = 40;

/// Why an identity was refused.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The bytes did not decode.
    #[error("identity does not decode: {0}")]
    Decode(#[from] DecodeError),
    /// A field is out of its allowed range.
    #[error("invalid identity: {0}")]
    Invalid(&'static str),
    /// The signature does not verify over the received bytes.
    #[error("identity signature does not verify")]
    BadSignature,
    /// The noise key is all-zero or of small order.
    #[error("identity noise key is a low-order point")]
    WeakNoiseKey,
}

/// An Ed25519 identity public key: the permanent contact id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct IdentityKey(#[serde(with = "crate::wire::bytes::fixed")] pub [u8; 32]);

impl IdentityKey {
    /// The raw key.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
    /// First 8 hex characters, for logs.
    pub fn short(&self) -> String {
        hex::encode(self.0.get(..4).unwrap_or_default())
    }
}

/// The contact id text form used everywhere in the CLI: 64 lowercase hex characters.
impl fmt::Display for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IdentityKey({})", self.short())
    }
}

impl std::str::FromStr for IdentityKey {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s.len() != 64 {
            return Err(IdentityError::Invalid("a contact id is 64 hex characters"));
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out)
            .map_err(|_| IdentityError::Invalid("a contact id is 64 hex characters"))?;
        Ok(IdentityKey(out))
    }
}

/// An X25519 public key used only as a Noise static key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NoiseKey(#[serde(with = "crate::wire::bytes::fixed")] pub [u8; 32]);

impl fmt::Debug for NoiseKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "NoiseKey({})",
            hex::encode(self.0.get(..4).unwrap_or_default())
        )
    }
}

impl NoiseKey {
    /// True for the all-zero key and every point of small order (the X25519 inputs for which
    /// any clamped scalar gives the all-zero shared secret), including non-canonical encodings
    /// and with the unused top bit ignored: [`crate::sig::small_order::is_low_order_x25519`].
    pub fn is_low_order(&self) -> bool {
        crate::sig::small_order::is_low_order_x25519(&self.0)
    }
}

/// A validated username: 1 to 40 Unicode scalar values, no control characters.
#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Username(String);

impl Username {
    /// Validates a username.
    pub fn new(s: impl Into<String>) -> Result<Self, IdentityError> {
        let s = s.into();
        let n = s.chars().count();
        if n == 0 || n > MAX_USERNAME_CHARS {
            return Err(IdentityError::Invalid(
                "username must be 1 to 40 characters",
            ));
        }
        if s.chars().any(char::is_control) {
            return Err(IdentityError::Invalid(
                "username must not contain control characters",
            ));
        }
        Ok(Username(s))
    }
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for Username {
    type Error = IdentityError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Username::new(s)
    }
}
impl From<Username> for String {
    fn from(u: Username) -> String {
        u.0
    }
}
impl fmt::Debug for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}
impl fmt::Display for Username {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// `Flags`, encoded as an array of four booleans.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Flags {
    /// The user relies on relays (is often offline).
    pub uses_relay: bool,
    /// A bot or service rather than a person.
    pub is_machine_account: bool,
    /// This identity is a relay server's.
    pub is_relay_server: bool,
    /// Prefers store-and-forward over direct delivery.
    pub prefers_async: bool,
}

/// `Extensions`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Extensions {
    /// A small picture (any image format).
    pub profile_picture: Option<serde_bytes::ByteBuf>,
    /// Free-form metadata, keys in sorted order.
    pub additional_metadata: Option<BTreeMap<String, serde_bytes::ByteBuf>>,
}

/// The signed part of an identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IdentityVerifiedData {
    /// Human-readable name.
    pub username: Username,
    /// The permanent Ed25519 key.
    pub identity_key: IdentityKey,
    /// The current X25519 Noise static key.
    pub noise_key: NoiseKey,
    /// Flags.
    pub flags: Flags,
    /// Optional extensions.
    pub extensions: Option<Extensions>,
    /// Incremented by one on every update.
    pub version: u64,
    /// When this version was made.
    pub created: Timestamp,
}

impl IdentityVerifiedData {
    fn validate(&self) -> Result<(), IdentityError> {
        if self.noise_key.is_low_order() {
            return Err(IdentityError::WeakNoiseKey);
        }
        if let Some(ext) = &self.extensions {
            if ext
                .profile_picture
                .as_ref()
                .is_some_and(|p| p.len() > MAX_PICTURE)
            {
                return Err(IdentityError::Invalid("profile picture too large"));
            }
            if let Some(meta) = &ext.additional_metadata {
                if meta.len() > MAX_METADATA_ENTRIES {
                    return Err(IdentityError::Invalid("too many metadata entries"));
                }
                if meta
                    .iter()
                    .any(|(k, v)| k.len() > MAX_METADATA_KEY || v.len() > MAX_METADATA_VALUE)
                {
                    return Err(IdentityError::Invalid("metadata entry too large"));
                }
            }
        }
        Ok(())
    }
}

/// A verified identity. Only [`Identity::sign`] and [`Identity::from_parts`] make one.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    data: IdentityVerifiedData,
    data_bytes: Vec<u8>,
    signature: [u8; 64],
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("username", &self.data.username)
            .field("identity_key", &self.data.identity_key)
            .field("version", &self.data.version)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Signs `data` with the identity's private key. Fails if `data` is invalid or names a
    /// different identity key.
    pub fn sign(
        data: IdentityVerifiedData,
        key: &ed25519_dalek::SigningKey,
    ) -> Result<Identity, IdentityError> {
        if key.verifying_key().to_bytes() != data.identity_key.0 {
            return Err(IdentityError::Invalid(
                "signing key does not match identity_key",
            ));
        }
        data.validate()?;
        let data_bytes = msgpack::encode(&data);
        if data_bytes.len() > MAX_IDENTITY_DATA {
            return Err(IdentityError::Invalid("identity too large"));
        }
        let signature = sig::sign(key, SigContext::Identity, &[&data_bytes]);
        Ok(Identity {
            data,
            data_bytes,
            signature,
        })
    }

    /// Verifies received parts: decode (bounded), validate, then check the signature over the
    /// exact received bytes with strict verification. Always runs the signature check.
    pub fn from_parts(data_bytes: Vec<u8>, signature: [u8; 64]) -> Result<Identity, IdentityError> {
        Self::verify_parts(data_bytes, signature, None)
    }

    /// The same as [`Identity::from_parts`] (which never consults a cache), named for servers
    /// that must spend the same work on every request whether or not they have seen the
    /// identity before (no timing oracle).
    pub fn from_parts_uncached(
        data_bytes: Vec<u8>,
        signature: [u8; 64],
    ) -> Result<Identity, IdentityError> {
        Self::verify_parts(data_bytes, signature, None)
    }

    /// Like [`Identity::from_parts`], but skips the signature check when `cache` remembers
    /// these exact bytes and signature as verified, and remembers them after a successful
    /// check. Decoding and validation always run.
    pub fn from_parts_cached(
        data_bytes: Vec<u8>,
        signature: [u8; 64],
        cache: &VerifiedCache,
    ) -> Result<Identity, IdentityError> {
        Self::verify_parts(data_bytes, signature, Some(cache))
    }

    fn verify_parts(
        data_bytes: Vec<u8>,
        signature: [u8; 64],
        cache: Option<&VerifiedCache>,
    ) -> Result<Identity, IdentityError> {
        if data_bytes.len() > MAX_IDENTITY_DATA {
            return Err(DecodeError::TooLarge {
                what: "identity",
                len: data_bytes.len(),
                max: MAX_IDENTITY_DATA,
            }
            .into());
        }
        let data: IdentityVerifiedData = msgpack::decode(&data_bytes)?;
        data.validate()?;
        let digest = cache.map(|_| verified::digest(&data_bytes, &signature));
        let known = match (cache, &digest) {
            (Some(c), Some(d)) => c.contains(d),
            _ => false,
        };
        if !known {
            let vk = sig::verifying_key(&data.identity_key.0)
                .map_err(|_| IdentityError::BadSignature)?;
            sig::verify(&vk, SigContext::Identity, &[&data_bytes], &signature)
                .map_err(|_| IdentityError::BadSignature)?;
            if let (Some(c), Some(d)) = (cache, digest) {
                c.insert(d);
            }
        }
        Ok(Identity {
            data,
            data_bytes,
            signature,
        })
    }

    /// Decodes and verifies the wire form `[bin data, bin(64) signature]`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Identity, IdentityError> {
        let wire: UnverifiedIdentity = msgpack::decode(bytes)?;
        Identity::from_parts(wire.data.into_vec(), wire.signature)
    }

    /// [`Identity::from_bytes`] consulting `cache` (see [`Identity::from_parts_cached`]).
    pub fn from_bytes_cached(
        bytes: &[u8],
        cache: &VerifiedCache,
    ) -> Result<Identity, IdentityError> {
        let wire: UnverifiedIdentity = msgpack::decode(bytes)?;
        Identity::from_parts_cached(wire.data.into_vec(), wire.signature, cache)
    }

    /// The wire form.
    pub fn to_bytes(&self) -> Vec<u8> {
        msgpack::encode(self)
    }

    /// The verified fields.
    pub fn data(&self) -> &IdentityVerifiedData {
        &self.data
    }
    /// The permanent key.
    pub fn key(&self) -> IdentityKey {
        self.data.identity_key
    }
    /// The Noise static key.
    pub fn noise_key(&self) -> NoiseKey {
        self.data.noise_key
    }
    /// The username.
    pub fn username(&self) -> &Username {
        &self.data.username
    }
    /// The version.
    pub fn version(&self) -> u64 {
        self.data.version
    }
    /// The signed bytes as they were received or produced.
    pub fn data_bytes(&self) -> &[u8] {
        &self.data_bytes
    }
    /// The signature.
    pub fn signature(&self) -> &[u8; 64] {
        &self.signature
    }
    /// The Ed25519 verifying key.
    pub fn verifying_key(&self) -> Result<ed25519_dalek::VerifyingKey, IdentityError> {
        sig::verifying_key(&self.data.identity_key.0).map_err(|_| IdentityError::BadSignature)
    }
}

/// The wire keeps identities as raw bytes ([`RawIdentity`]); turning them into a verified
/// [`Identity`] and back happens here, above the wire layer.
impl RawIdentity {
    /// The wire form of a verified identity.
    pub fn from_identity(id: &Identity) -> Self {
        RawIdentity {
            data: serde_bytes::ByteBuf::from(id.data_bytes().to_vec()),
            signature: *id.signature(),
        }
    }

    /// Verifies it (bounded decode, validation, strict signature check over the sent bytes),
    /// always in full: the server must not answer faster for identities it has seen.
    pub fn verify(&self) -> Result<Identity, IdentityError> {
        Identity::from_parts_uncached(self.data.to_vec(), self.signature)
    }
}

/// An identity in its wire (and stored) form `[bin data, bin(64) signature]`, not verified yet:
/// for records that embed an identity and want to verify it with a [`VerifiedCache`].
#[derive(Clone, Serialize, Deserialize)]
pub struct UnverifiedIdentity {
    data: serde_bytes::ByteBuf,
    #[serde(with = "crate::wire::bytes::fixed")]
    signature: [u8; 64],
}

impl fmt::Debug for UnverifiedIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnverifiedIdentity")
            .field("data_len", &self.data.len())
            .finish_non_exhaustive()
    }
}

impl UnverifiedIdentity {
    /// Verifies it ([`Identity::from_parts`], or [`Identity::from_parts_cached`] with a cache).
    pub fn verify(self, cache: Option<&VerifiedCache>) -> Result<Identity, IdentityError> {
        Identity::verify_parts(self.data.into_vec(), self.signature, cache)
    }
}

impl Serialize for Identity {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(2)?;
        t.serialize_element(serde_bytes::Bytes::new(&self.data_bytes))?;
        t.serialize_element(serde_bytes::Bytes::new(&self.signature))?;
        t.end()
    }
}

/// Deserializing an `Identity` verifies it; an invalid one is a decode error.
impl<'de> Deserialize<'de> for Identity {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = UnverifiedIdentity::deserialize(d)?;
        Identity::from_parts(wire.data.into_vec(), wire.signature)
            .map_err(|e| serde::de::Error::custom(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn sample() -> (SigningKey, IdentityVerifiedData) {
        let sk = SigningKey::from_bytes(&[1u8; 32]);
        let noise = x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from([2u8; 32]));
        let data = IdentityVerifiedData {
            username: Username::new("alice").unwrap(),
            identity_key: IdentityKey(sk.verifying_key().to_bytes()),
            noise_key: NoiseKey(noise.to_bytes()),
            flags: Flags::default(),
            extensions: None,
            version: 1,
            created: Timestamp(1_700_000_000_000),
        };
        (sk, data)
    }

    #[test]
    fn sign_verify_round_trip() {
        let (sk, data) = sample();
        let id = Identity::sign(data, &sk).unwrap();
        let back = Identity::from_bytes(&id.to_bytes()).unwrap();
        assert_eq!(back, id);
    }

    #[test]
    fn every_tampered_field_is_rejected() {
        let (sk, data) = sample();
        let id = Identity::sign(data.clone(), &sk).unwrap();
        let other_noise =
            x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from([3u8; 32]));
        type Tamper = Box<dyn Fn(&mut IdentityVerifiedData)>;
        let variants: Vec<Tamper> = vec![
            Box::new(|d| d.username = Username::new("mallory").unwrap()),
            Box::new(move |d| d.noise_key = NoiseKey(other_noise.to_bytes())),
            Box::new(|d| d.flags.is_relay_server = true),
            Box::new(|d| d.version += 1),
            Box::new(|d| d.created = Timestamp(d.created.0 + 1)),
            Box::new(|d| d.extensions = Some(Extensions::default())),
        ];
        for tamper in variants {
            let mut d = data.clone();
            tamper(&mut d);
            let forged = msgpack::encode(&d);
            assert!(matches!(
                Identity::from_parts(forged, *id.signature()),
                Err(IdentityError::BadSignature)
            ));
        }
        // Flipping any single byte of the signed bytes or the signature fails.
        for i in 0..id.data_bytes().len() {
            let mut b = id.data_bytes().to_vec();
            b[i] ^= 0x01;
            assert!(Identity::from_parts(b, *id.signature()).is_err());
        }
        let mut s = *id.signature();
        s[10] ^= 1;
        assert!(Identity::from_parts(id.data_bytes().to_vec(), s).is_err());
    }

    #[test]
    fn verification_uses_received_bytes() {
        // A non-canonical but equivalent encoding (version as u64 marker) is signed as-is and
        // verifies as-is; re-encoding would change the bytes and break the signature.
        let (sk, data) = sample();
        let mut bytes = msgpack::encode(&data);
        let canonical_len = bytes.len();
        // Replace the trailing created (cf + 8 bytes) and version (positive fixint 1).
        let tail = bytes.split_off(canonical_len - 10);
        assert_eq!(tail[0], 0x01);
        bytes.extend_from_slice(&[0xcf, 0, 0, 0, 0, 0, 0, 0, 1]);
        bytes.extend_from_slice(&tail[1..]);
        let sig = sig::sign(&sk, SigContext::Identity, &[&bytes]);
        let id = Identity::from_parts(bytes.clone(), sig).unwrap();
        assert_eq!(id.data_bytes(), &bytes[..]);
        assert_eq!(id.version(), 1);
        let again = Identity::from_bytes(&id.to_bytes()).unwrap();
        assert_eq!(again.data_bytes(), &bytes[..]);
    }

    #[test]
    fn weak_noise_keys_and_bad_usernames() {
        let (sk, mut data) = sample();
        data.noise_key = NoiseKey([0; 32]);
        assert!(matches!(
            Identity::sign(data.clone(), &sk),
            Err(IdentityError::WeakNoiseKey)
        ));
        assert!(Username::new("").is_err());
        assert!(Username::new("a".repeat(41)).is_err());
        assert!(Username::new("é".repeat(40)).is_ok());
        assert!(Username::new("a\nb").is_err());
    }

    #[test]
    fn contact_id_text_form() {
        let k = IdentityKey([0xab; 32]);
        let s = k.to_string();
        assert_eq!(s.len(), 64);
        assert_eq!(s.parse::<IdentityKey>().unwrap(), k);
        assert!("xyz".parse::<IdentityKey>().is_err());
    }
}
