//! Message keys: one ChaCha20-Poly1305 key per message.
//!
//! The 32-byte message key is the AEAD key; the nonce is 12 zero bytes. That is safe because a
//! message key encrypts exactly one plaintext: the sending chain is advanced and stored before
//! a ciphertext leaves the node, and a receiving key is dropped once it decrypted.

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Bytes the AEAD adds to a plaintext.
pub const TAG_LEN: usize = 16;

/// The AEAD rejected the ciphertext (wrong key, tampered bytes or associated data).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AeadFailure;

/// A message key and the chain index it belongs to.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MessageKey {
    key: [u8; 32],
    index: u32,
}

impl MessageKey {
    pub(crate) fn new(key: [u8; 32], index: u32) -> Self {
        MessageKey { key, index }
    }

    /// Chain index of this key.
    pub fn index(&self) -> u32 {
        self.index
    }

    pub(crate) fn key_bytes(&self) -> &[u8; 32] {
        &self.key
    }

    /// Encrypts `plaintext` with associated data `ad`; consumes the key.
    pub(crate) fn encrypt(self, ad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, AeadFailure> {
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.key));
        let mut buf = Vec::with_capacity(plaintext.len() + TAG_LEN);
        buf.extend_from_slice(plaintext);
        cipher
            .encrypt_in_place(&Nonce::default(), ad, &mut buf)
            .map_err(|_| AeadFailure)?;
        Ok(buf)
    }

    /// Decrypts and authenticates `ciphertext` with associated data `ad`.
    pub(crate) fn decrypt(&self, ad: &[u8], ciphertext: &[u8]) -> Result<Vec<u8>, AeadFailure> {
        if ciphertext.len() < TAG_LEN {
            return Err(AeadFailure);
        }
        let cipher = ChaCha20Poly1305::new(Key::from_slice(&self.key));
        let mut buf = ciphertext.to_vec();
        cipher
            .decrypt_in_place(&Nonce::default(), ad, &mut buf)
            .map_err(|_| AeadFailure)?;
        Ok(buf)
    }
}

impl std::fmt::Debug for MessageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MessageKey")
            .field("index", &self.index)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_tamper() {
        let k = MessageKey::new([3u8; 32], 0);
        let ct = k.clone().encrypt(b"ad", b"hello").unwrap();
        assert_eq!(ct.len(), 5 + TAG_LEN);
        assert_eq!(k.decrypt(b"ad", &ct).unwrap(), b"hello");
        assert!(k.decrypt(b"ae", &ct).is_err());
        let mut bad = ct.clone();
        bad[0] ^= 1;
        assert!(k.decrypt(b"ad", &bad).is_err());
        assert!(k.decrypt(b"ad", &ct[..10]).is_err());
        assert!(MessageKey::new([4u8; 32], 0).decrypt(b"ad", &ct).is_err());
    }
}
