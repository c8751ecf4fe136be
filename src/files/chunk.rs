//! Chunk encryption: one key per transfer, one AEAD seal per chunk, no ratchet step per chunk.
//!
//! ```text
//! key   = HKDF-SHA256(salt = transfer_id (16), ikm = secret (32),
//!                     info = "SREMP-1 file chunk key" || sender_ik (32) || recipient_ik (32), L = 32)
//! aad   = "SREMP-1 file chunk\0" || transfer_id (16) || u64be(index) || u64be(total_chunks)
//!         || u64be(size)
//! nonce = 24 bytes from the sender's CSPRNG, fresh for every seal
//! ct    = XChaCha20-Poly1305(key, nonce, aad, plaintext)
//! ChunkBlob = [0x46 ("F"), transfer_id: bin(16), index: uint, nonce: bin(24), ct: bin]
//! ```
//! `secret` travels only inside the ratchet-encrypted offer, so only the two ends hold the
//! key. The index, the transfer and its declared shape are authenticated: a chunk cannot be
//! moved to another index or another transfer. Random 24-byte nonces make a re-send of the same
//! index safe even if the file changed in between (no nonce is ever reused under a key).
//! A chunk that fails authentication is one coarse [`ChunkError::Decrypt`].
//!
//! XChaCha20-Poly1305 here is the construction of draft-irtf-cfrg-xchacha, built from two
//! audited pieces: `subkey = HChaCha20(key, nonce[0..16])` (the `chacha20` crate), then the
//! IETF ChaCha20-Poly1305 of `ring` under `subkey` with the 12-byte nonce
//! `[0; 4] || nonce[16..24]`. Byte for byte what `chacha20poly1305::XChaCha20Poly1305` produces
//! (tests/vectors/files.json holds the vector), at ring's speed, sealed and opened in place.

use super::TransferId;
use crate::wire::msgpack::Reader;
use crate::wire::DecodeError;
use chacha20::cipher::consts::U10;
use rand_core::CryptoRngCore;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use sha2::{Digest, Sha256};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// The first element of every chunk blob ("F"); a ratchet `SignedMessage` starts with 1.
pub const CHUNK_TAG: u8 = 0x46;
/// HKDF info prefix.
pub const KEY_INFO: &[u8] = b"SREMP-1 file chunk key";
/// AAD prefix.
pub const AAD_CONTEXT: &[u8] = b"SREMP-1 file chunk\0";
/// Largest chunk (plaintext) a transfer may declare.
pub const MAX_CHUNK_SIZE: u32 = 1024 * 1024;
/// Smallest chunk size a transfer may declare.
pub const MIN_CHUNK_SIZE: u32 = 1024;
/// Poly1305 tag length.
pub const TAG_LEN: usize = 16;
/// Bytes a blob adds to its plaintext at most (tag, nonce, ids, msgpack heads).
pub const BLOB_OVERHEAD: usize = TAG_LEN + 24 + 16 + 9 + 2 + 2 + 5 + 1;

/// Why a chunk was refused.
#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    /// Not a chunk blob.
    #[error("malformed chunk: {0}")]
    Decode(#[from] DecodeError),
    /// The index is beyond the declared number of chunks.
    #[error("chunk index {index} but the offer declared {total} chunks")]
    IndexOutOfRange {
        /// Index received.
        index: u64,
        /// Chunks declared.
        total: u64,
    },
    /// The plaintext length does not match what the offer declared for this index.
    #[error("chunk {index} is {got} bytes, the offer declared {want}")]
    SizeMismatch {
        /// Index.
        index: u64,
        /// Bytes received.
        got: usize,
        /// Bytes declared.
        want: u64,
    },
    /// Authentication failed (tampered, wrong key, wrong index or transfer).
    #[error("chunk authentication failed")]
    Decrypt,
}

/// The per-transfer chunk key.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct ChunkKey([u8; 32]);

impl std::fmt::Debug for ChunkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChunkKey(..)")
    }
}

impl ChunkKey {
    /// Derives the key of a transfer from the offer's secret and the two identity keys.
    pub fn derive(
        id: &TransferId,
        secret: &[u8; 32],
        sender: &[u8; 32],
        recipient: &[u8; 32],
    ) -> Self {
        let hk = hkdf::Hkdf::<Sha256>::new(Some(&id.0), secret);
        let mut info = Vec::with_capacity(KEY_INFO.len() + 64);
        info.extend_from_slice(KEY_INFO);
        info.extend_from_slice(sender);
        info.extend_from_slice(recipient);
        let mut key = [0u8; 32];
        // 32 bytes is far below HKDF-SHA256's 8160-byte limit.
        let _ = hk.expand(&info, &mut key);
        ChunkKey(key)
    }

    /// The key bytes (test vectors only).
    pub fn bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

/// The shape a transfer declared, bound into every chunk's AAD.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shape {
    /// File size in bytes.
    pub size: u64,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Number of chunks (`ceil(size / chunk_size)`).
    pub total: u64,
}

impl Shape {
    /// Plaintext length of chunk `index` (the last one may be shorter); `None` past the end.
    pub fn chunk_len(&self, index: u64) -> Option<u64> {
        if index >= self.total {
            return None;
        }
        let start = index.checked_mul(u64::from(self.chunk_size))?;
        Some(
            self.size
                .checked_sub(start)?
                .min(u64::from(self.chunk_size)),
        )
    }

    /// Byte offset of chunk `index` in the file.
    pub fn offset(&self, index: u64) -> u64 {
        index.saturating_mul(u64::from(self.chunk_size))
    }
}

/// The number of chunks of `size` bytes cut in `chunk_size` pieces.
pub fn chunk_count(size: u64, chunk_size: u32) -> u64 {
    size.div_ceil(u64::from(chunk_size.max(1)))
}

fn aad(id: &TransferId, index: u64, shape: &Shape) -> Vec<u8> {
    let mut a = Vec::with_capacity(AAD_CONTEXT.len() + 16 + 24);
    a.extend_from_slice(AAD_CONTEXT);
    a.extend_from_slice(&id.0);
    a.extend_from_slice(&index.to_be_bytes());
    a.extend_from_slice(&shape.total.to_be_bytes());
    a.extend_from_slice(&shape.size.to_be_bytes());
    a
}

/// The ring key and 12-byte nonce of one seal: HChaCha20 of the transfer key and the first 16
/// nonce bytes, then the last 8 nonce bytes behind 4 zero bytes.
fn xchacha(key: &ChunkKey, nonce: &[u8; 24]) -> Option<(LessSafeKey, Nonce)> {
    let mut head = [0u8; 16];
    head.copy_from_slice(&nonce[..16]);
    let sub = Zeroizing::new(<[u8; 32]>::from(chacha20::hchacha::<U10>(
        (&key.0).into(),
        (&head).into(),
    )));
    let mut n = [0u8; 12];
    n[4..].copy_from_slice(&nonce[16..]);
    // ring refuses only keys of the wrong length, and this one is 32 bytes by type.
    let unbound = UnboundKey::new(&CHACHA20_POLY1305, &sub[..]).ok()?;
    Some((LessSafeKey::new(unbound), Nonce::assume_unique_for_key(n)))
}

/// Seals `in_out` (plaintext, replaced by ciphertext) and returns the tag.
fn seal_in_place(
    key: &ChunkKey,
    id: &TransferId,
    shape: &Shape,
    index: u64,
    nonce: &[u8; 24],
    in_out: &mut [u8],
) -> [u8; TAG_LEN] {
    let aad = aad(id, index, shape);
    let mut out = [0u8; TAG_LEN];
    // ring refuses only inputs over 256 GiB (a chunk is at most 1 MiB) and keys of the wrong
    // length. Should it refuse anyway, no plaintext leaves: the buffer is zeroed and the
    // all-zero tag fails at the recipient.
    match xchacha(key, nonce)
        .and_then(|(k, n)| k.seal_in_place_separate_tag(n, Aad::from(&aad[..]), in_out).ok())
    {
        Some(tag) => out.copy_from_slice(tag.as_ref()),
        None => in_out.fill(0),
    }
    out
}

/// The MessagePack head of a blob whose ciphertext (with tag) is `ct_len` bytes: everything
/// before the ciphertext.
fn encode_head(id: &TransferId, index: u64, nonce: &[u8; 24], ct_len: usize, out: &mut Vec<u8>) {
    let _ = rmp::encode::write_array_len(out, 5);
    let _ = rmp::encode::write_uint(out, u64::from(CHUNK_TAG));
    let _ = rmp::encode::write_bin(out, &id.0);
    let _ = rmp::encode::write_uint(out, index);
    let _ = rmp::encode::write_bin(out, nonce);
    let _ = rmp::encode::write_bin_len(out, ct_len as u32);
}

/// Seals chunk `index` straight into its encoded blob: `fill` writes the plaintext (for
/// instance from the file) into the blob's buffer, which is then encrypted in place. One pass
/// over the bytes besides the read, no copy. What [`ChunkBlob::seal`] then
/// [`ChunkBlob::encode`] produce, byte for byte.
pub fn seal_encoded<R: CryptoRngCore + ?Sized, E>(
    rng: &mut R,
    key: &ChunkKey,
    id: &TransferId,
    shape: &Shape,
    index: u64,
    len: usize,
    fill: impl FnOnce(&mut [u8]) -> Result<(), E>,
) -> Result<Vec<u8>, E> {
    let mut nonce = [0u8; 24];
    rng.fill_bytes(&mut nonce);
    let mut out = Vec::with_capacity(len + BLOB_OVERHEAD);
    encode_head(id, index, &nonce, len + TAG_LEN, &mut out);
    let start = out.len();
    out.resize(start + len, 0);
    fill(&mut out[start..])?;
    let tag = seal_in_place(key, id, shape, index, &nonce, &mut out[start..]);
    out.extend_from_slice(&tag);
    Ok(out)
}

/// A decoded chunk blob (still encrypted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkBlob {
    /// The transfer.
    pub transfer: TransferId,
    /// Chunk index from 0.
    pub index: u64,
    /// XChaCha20 nonce.
    pub nonce: [u8; 24],
    /// Ciphertext with tag.
    pub ciphertext: Vec<u8>,
}

impl ChunkBlob {
    /// Seals chunk `index` of a transfer with a fresh random nonce.
    pub fn seal<R: CryptoRngCore + ?Sized>(
        rng: &mut R,
        key: &ChunkKey,
        id: &TransferId,
        shape: &Shape,
        index: u64,
        plaintext: &[u8],
    ) -> ChunkBlob {
        let mut nonce = [0u8; 24];
        rng.fill_bytes(&mut nonce);
        Self::seal_with_nonce(key, id, shape, index, plaintext, nonce)
    }

    /// Seals with a given nonce (test vectors; real senders use [`ChunkBlob::seal`]).
    pub fn seal_with_nonce(
        key: &ChunkKey,
        id: &TransferId,
        shape: &Shape,
        index: u64,
        plaintext: &[u8],
        nonce: [u8; 24],
    ) -> ChunkBlob {
        let mut ciphertext = Vec::with_capacity(plaintext.len() + TAG_LEN);
        ciphertext.extend_from_slice(plaintext);
        let tag = seal_in_place(key, id, shape, index, &nonce, &mut ciphertext);
        ciphertext.extend_from_slice(&tag);
        ChunkBlob {
            transfer: *id,
            index,
            nonce,
            ciphertext,
        }
    }

    /// Checks index and length against the declared shape, then authenticates and decrypts.
    /// Nothing is returned unless all of it holds.
    pub fn open(&self, key: &ChunkKey, shape: &Shape) -> Result<Vec<u8>, ChunkError> {
        self.clone().open_owned(key, shape)
    }

    /// [`ChunkBlob::open`] decrypting the blob's own buffer in place (no copy, no allocation).
    pub fn open_owned(self, key: &ChunkKey, shape: &Shape) -> Result<Vec<u8>, ChunkError> {
        let want = shape
            .chunk_len(self.index)
            .ok_or(ChunkError::IndexOutOfRange {
                index: self.index,
                total: shape.total,
            })?;
        let got = self.ciphertext.len().saturating_sub(TAG_LEN);
        if got as u64 != want || self.ciphertext.len() < TAG_LEN {
            return Err(ChunkError::SizeMismatch {
                index: self.index,
                got,
                want,
            });
        }
        let (k, n) = xchacha(key, &self.nonce).ok_or(ChunkError::Decrypt)?;
        let aad = aad(&self.transfer, self.index, shape);
        let mut buf = self.ciphertext;
        let plain_len = k
            .open_in_place(n, Aad::from(&aad[..]), &mut buf)
            .map_err(|_| ChunkError::Decrypt)?
            .len();
        buf.truncate(plain_len);
        Ok(buf)
    }

    /// The MessagePack encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.ciphertext.len() + BLOB_OVERHEAD);
        encode_head(
            &self.transfer,
            self.index,
            &self.nonce,
            self.ciphertext.len(),
            &mut out,
        );
        out.extend_from_slice(&self.ciphertext);
        out
    }

    /// True when `bytes` starts like a chunk blob (a 5-array whose first element is 0x46), so
    /// that a receiver can tell chunks from ratchet messages without decoding either.
    pub fn is_chunk(bytes: &[u8]) -> bool {
        bytes.len() >= 2 && bytes[..2] == [0x95, CHUNK_TAG]
    }

    /// Decodes a blob; the whole input must be consumed.
    pub fn decode(bytes: &[u8]) -> Result<ChunkBlob, DecodeError> {
        let mut r = Reader::new(bytes);
        if r.array_len()? != 5 {
            return Err(DecodeError::Invalid {
                what: "file chunk",
                why: "chunk field count",
            });
        }
        if r.uint()? != u64::from(CHUNK_TAG) {
            return Err(DecodeError::Invalid {
                what: "file chunk",
                why: "not a file chunk",
            });
        }
        let transfer = TransferId(r.bin_array::<16>()?);
        let index = r.uint()?;
        let nonce = r.bin_array::<24>()?;
        let ciphertext = r.bin(MAX_CHUNK_SIZE as usize + TAG_LEN)?.to_vec();
        r.finish()?;
        Ok(ChunkBlob {
            transfer,
            index,
            nonce,
            ciphertext,
        })
    }

    /// The relay `message_id` of chunk `index` of a transfer: the first 8 bytes (big-endian)
    /// of `SHA-256("SREMP-1 file chunk id" || transfer_id || u64be(index))`. The same for every
    /// re-send, so a relay that still holds the chunk stores nothing twice.
    pub fn relay_message_id(id: &TransferId, index: u64) -> u64 {
        let mut h = Sha256::new();
        h.update(b"SREMP-1 file chunk id");
        h.update(id.0);
        h.update(index.to_be_bytes());
        let d = h.finalize();
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[..8]);
        u64::from_be_bytes(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn setup() -> (ChunkKey, TransferId, Shape) {
        let id = TransferId([7; 16]);
        let key = ChunkKey::derive(&id, &[9; 32], &[1; 32], &[2; 32]);
        let shape = Shape {
            size: 2500,
            chunk_size: 1024,
            total: 3,
        };
        (key, id, shape)
    }

    #[test]
    fn seal_open_round_trip_and_binding() {
        let (key, id, shape) = setup();
        let data = vec![5u8; 1024];
        let blob = ChunkBlob::seal(&mut rand_core::OsRng, &key, &id, &shape, 1, &data);
        let bytes = blob.encode();
        assert!(ChunkBlob::is_chunk(&bytes));
        let back = ChunkBlob::decode(&bytes).unwrap();
        assert_eq!(back.open(&key, &shape).unwrap(), data);
        // Moved to another index of the same length: refused.
        let mut moved = back.clone();
        moved.index = 0;
        assert!(matches!(moved.open(&key, &shape), Err(ChunkError::Decrypt)));
        // Tampered.
        let mut bad = back.clone();
        bad.ciphertext[3] ^= 1;
        assert!(matches!(bad.open(&key, &shape), Err(ChunkError::Decrypt)));
        // More chunks than declared.
        let mut far = back.clone();
        far.index = 3;
        assert!(matches!(
            far.open(&key, &shape),
            Err(ChunkError::IndexOutOfRange { .. })
        ));
        // Other key.
        let other = ChunkKey::derive(&id, &[8; 32], &[1; 32], &[2; 32]);
        assert!(matches!(
            back.open(&other, &shape),
            Err(ChunkError::Decrypt)
        ));
        // The short last chunk must be exactly 452 bytes.
        let last = ChunkBlob::seal(&mut rand_core::OsRng, &key, &id, &shape, 2, &[1u8; 451]);
        assert!(matches!(
            last.open(&key, &shape),
            Err(ChunkError::SizeMismatch { .. })
        ));
    }

    /// Hands out one fixed 24-byte nonce.
    struct FixedRng([u8; 24]);
    impl rand_core::RngCore for FixedRng {
        fn next_u32(&mut self) -> u32 {
            0
        }
        fn next_u64(&mut self) -> u64 {
            0
        }
        fn fill_bytes(&mut self, dest: &mut [u8]) {
            dest.copy_from_slice(&self.0[..dest.len()]);
        }
        fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
            self.fill_bytes(dest);
            Ok(())
        }
    }
    impl rand_core::CryptoRng for FixedRng {}

    #[test]
    fn shape_lengths() {
        let (_, _, shape) = setup();
        assert_eq!(shape.chunk_len(0), Some(1024));
        assert_eq!(shape.chunk_len(2), Some(452));
        assert_eq!(shape.chunk_len(3), None);
        assert_eq!(chunk_count(0, 1024), 0);
        assert_eq!(chunk_count(1024, 1024), 1);
        assert_eq!(chunk_count(1025, 1024), 2);
    }

    /// The ring-based construction is XChaCha20-Poly1305 byte for byte (RustCrypto's is the
    /// reference), and sealing into the encoded blob equals seal-then-encode.
    fn reference_seal(key: &ChunkKey, id: &TransferId, shape: &Shape, i: u64, p: &[u8], n: [u8; 24]) -> Vec<u8> {
        use chacha20poly1305::aead::{Aead, KeyInit, Payload};
        let c = chacha20poly1305::XChaCha20Poly1305::new((&key.0).into());
        c.encrypt(
            chacha20poly1305::XNonce::from_slice(&n),
            Payload { msg: p, aad: &aad(id, i, shape) },
        )
        .unwrap()
    }

    proptest! {
        #[test]
        fn ring_xchacha_matches_reference(len in 0usize..3000, nonce in any::<[u8; 24]>(), k in any::<[u8; 32]>()) {
            let id = TransferId([3; 16]);
            let key = ChunkKey(k);
            let shape = Shape { size: len as u64, chunk_size: 4096, total: 1 };
            let data: Vec<u8> = (0..len).map(|i| (i * 7 + 1) as u8).collect();
            let blob = ChunkBlob::seal_with_nonce(&key, &id, &shape, 0, &data, nonce);
            prop_assert_eq!(&blob.ciphertext, &reference_seal(&key, &id, &shape, 0, &data, nonce));
            prop_assert_eq!(blob.open(&key, &shape).unwrap(), data.clone());
            let mut fixed = FixedRng(nonce);
            let enc = seal_encoded(&mut fixed, &key, &id, &shape, 0, len, |b: &mut [u8]| {
                b.copy_from_slice(&data);
                Ok::<(), ()>(())
            })
            .unwrap();
            prop_assert_eq!(enc, blob.encode());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = ChunkBlob::decode(&bytes);
            let _ = ChunkBlob::is_chunk(&bytes);
        }
    }
}
