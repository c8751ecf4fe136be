//! Chain keys: the symmetric-key ratchet of one sending or receiving chain.
//!
//! `KDF_CK(ck)`: message key `mk = HMAC-SHA256(ck, 0x01)`, next chain key
//! `ck' = HMAC-SHA256(ck, 0x02)`. The index counts the messages of the chain from 0.

use super::message_key::MessageKey;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

type HmacSha256 = Hmac<Sha256>;

/// HMAC input that derives a message key.
pub const MESSAGE_KEY_SEED: u8 = 0x01;
/// HMAC input that derives the next chain key.
pub const CHAIN_KEY_SEED: u8 = 0x02;

/// The chain key ran out of indexes (2^32 messages in one chain).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Exhausted;

/// A chain key and the index of the next message key it yields.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct ChainKey {
    key: [u8; 32],
    index: u32,
}

impl ChainKey {
    pub(crate) fn new(key: [u8; 32], index: u32) -> Self {
        ChainKey { key, index }
    }

    /// Index of the next message key.
    pub fn index(&self) -> u32 {
        self.index
    }

    pub(crate) fn key_bytes(&self) -> &[u8; 32] {
        &self.key
    }

    /// The message key for the current index; the chain moves to the next index.
    pub(crate) fn next_message_key(&mut self) -> Result<MessageKey, Exhausted> {
        let index = self.index;
        let next = index.checked_add(1).ok_or(Exhausted)?;
        let mac = HmacSha256::new_from_slice(&self.key).map_err(|_| Exhausted)?;
        let mut m = mac.clone();
        m.update(&[MESSAGE_KEY_SEED]);
        let mut mk_out = m.finalize().into_bytes();
        let mut c = mac;
        c.update(&[CHAIN_KEY_SEED]);
        let mut ck_out = c.finalize().into_bytes();
        let mut mk = [0u8; 32];
        mk.copy_from_slice(&mk_out);
        self.key.copy_from_slice(&ck_out);
        mk_out.as_mut_slice().zeroize();
        ck_out.as_mut_slice().zeroize();
        self.index = next;
        Ok(MessageKey::new(mk, index))
    }
}

impl std::fmt::Debug for ChainKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChainKey")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_hmac_definition() {
        let ck0 = [7u8; 32];
        let mut ck = ChainKey::new(ck0, 0);
        let mk = ck.next_message_key().unwrap();
        let mut m = HmacSha256::new_from_slice(&ck0).unwrap();
        m.update(&[1]);
        assert_eq!(mk.key_bytes()[..], m.finalize().into_bytes()[..]);
        let mut c = HmacSha256::new_from_slice(&ck0).unwrap();
        c.update(&[2]);
        assert_eq!(ck.key_bytes()[..], c.finalize().into_bytes()[..]);
        assert_eq!(mk.index(), 0);
        assert_eq!(ck.index(), 1);
    }

    #[test]
    fn exhausts_at_u32_max() {
        let mut ck = ChainKey::new([1u8; 32], u32::MAX);
        assert_eq!(ck.next_message_key().err(), Some(Exhausted));
        assert_eq!(ck.index(), u32::MAX);
    }

    #[test]
    fn debug_prints_no_secret() {
        let s = format!("{:?}", ChainKey::new([0xab; 32], 3));
        assert!(!s.contains("171") && !s.contains("ab"), "{s}");
    }
}
