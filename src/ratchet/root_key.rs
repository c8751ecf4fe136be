//! The root key and the DH-ratchet step.
//!
//! `KDF_RK(rk, dh) = HKDF-SHA256(salt = rk, ikm = dh, info = "SREMP-1 ratchet root", L = 64)`,
//! split into the next root key (first 32 bytes) and a new chain key (last 32 bytes). `dh` is
//! the X25519 output of one of our ratchet secrets and the peer's ratchet public key; it must be
//! contributory (a low-order peer key is rejected).

use super::chain_key::ChainKey;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// HKDF `info` of the root KDF.
pub const ROOT_INFO: &[u8] = b"SREMP-1 ratchet root";

/// Why a DH ratchet step failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum StepError {
    /// The peer's key is a low-order point.
    LowOrder,
    /// HKDF refused the output length (cannot happen for 64 bytes).
    Kdf,
}

/// The root key of a session.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct RootKey([u8; 32]);

impl RootKey {
    pub(crate) fn new(bytes: [u8; 32]) -> Self {
        RootKey(bytes)
    }

    pub(crate) fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// One DH-ratchet step: the next root key and the new chain key (index 0).
    pub(crate) fn advance(
        &self,
        ours: &StaticSecret,
        theirs: &[u8; 32],
    ) -> Result<(RootKey, ChainKey), StepError> {
        let shared = ours.diffie_hellman(&PublicKey::from(*theirs));
        if !shared.was_contributory() {
            return Err(StepError::LowOrder);
        }
        let okm = super::hkdf_64(&self.0, shared.as_bytes(), ROOT_INFO).ok_or(StepError::Kdf)?;
        Ok((RootKey(okm.0), ChainKey::new(okm.1, 0)))
    }
}

impl std::fmt::Debug for RootKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RootKey(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_sides_derive_the_same_keys() {
        let a = StaticSecret::from([1u8; 32]);
        let b = StaticSecret::from([2u8; 32]);
        let rk = RootKey::new([9u8; 32]);
        let (ra, ca) = rk.advance(&a, PublicKey::from(&b).as_bytes()).unwrap();
        let (rb, cb) = rk.advance(&b, PublicKey::from(&a).as_bytes()).unwrap();
        assert_eq!(ra.as_bytes(), rb.as_bytes());
        assert_eq!(ca.key_bytes(), cb.key_bytes());
        assert_ne!(ra.as_bytes(), rk.as_bytes());
    }

    #[test]
    fn low_order_keys_are_rejected() {
        let a = StaticSecret::from([1u8; 32]);
        let rk = RootKey::new([9u8; 32]);
        // The identity point and a point of order 8.
        let mut order8 = [0u8; 32];
        order8.copy_from_slice(
            &hex::decode("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800")
                .unwrap(),
        );
        for bad in [[0u8; 32], order8] {
            assert_eq!(rk.advance(&a, &bad).err(), Some(StepError::LowOrder));
        }
    }

    #[test]
    fn debug_prints_no_secret() {
        assert_eq!(format!("{:?}", RootKey::new([0xab; 32])), "RootKey(..)");
    }
}
