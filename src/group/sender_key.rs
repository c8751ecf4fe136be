//! Sender keys: one symmetric chain per member per generation, and the group message format.
//!
//! ```text
//! SenderKeyDistribution = [generation: uint (u32), chain_key: bin(32), seq: uint (u32)]
//!     the chain key that yields message number `seq` of that generation
//! GroupMessage = [group_id: bin(16), sender: bin(32), generation: uint (u32), seq: uint (u32),
//!                 ciphertext: bin, signature: bin(64)]
//! chain step   = the ratchet's KDF_CK: mk = HMAC-SHA256(ck, 0x01), ck' = HMAC-SHA256(ck, 0x02)
//! ad           = group_id || sender || generation (u32 BE) || seq (u32 BE)
//! ciphertext   = ChaCha20-Poly1305(key = mk, nonce = 12 zero bytes, ad, plaintext)
//! signature    = Ed25519(sender identity key, "SREMP-1 group-message\0" || ad || ciphertext)
//! plaintext    = a ratchet `Payload` (kind 0, text): [message_id, sent_at, 0, text]
//! ```
//! One encryption and one signature per message whatever the member count; each member gets
//! the same bytes. A message key encrypts exactly one plaintext (the chain is advanced and
//! stored before the ciphertext leaves), so the zero nonce is safe, and keys are dropped once
//! used: forward secrecy per message along the chain.
//!
//! Receiving: the signature is checked first (over the exact received bytes), then the key is
//! found on a clone of the chain — an earlier number from the skipped keys, a later one by
//! stepping ahead at most [`MAX_SKIP`] and keeping the keys passed (at most
//! [`MAX_SKIPPED_KEYS`] per sender, oldest dropped) — and the clone replaces the chain only
//! after the AEAD accepted. A number already used is [`GroupError::Replayed`]. A receiver keeps
//! the current and the previous generation of each sender, so messages sent just before a
//! rotation still open.

use super::{GroupError, GroupId, MAX_SKIP, MAX_SKIPPED_KEYS};
use crate::ratchet::chain_key::ChainKey;
use crate::ratchet::message_key::MessageKey;
use crate::sig::{self, SigContext};
use crate::wire::msgpack;
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// A chain key as stored and distributed.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct SenderKeyDistribution {
    /// Generation (starts at 0, +1 on each rotation).
    pub generation: u32,
    /// The chain key yielding message `seq`.
    #[serde(with = "crate::wire::bytes::fixed")]
    pub chain_key: [u8; 32],
    /// Number of the next message.
    pub seq: u32,
}

impl std::fmt::Debug for SenderKeyDistribution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SenderKeyDistribution")
            .field("generation", &self.generation)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl SenderKeyDistribution {
    /// A fresh random chain for `generation`.
    pub fn random<R: rand_core::CryptoRngCore + ?Sized>(rng: &mut R, generation: u32) -> Self {
        let mut chain_key = [0u8; 32];
        rng.fill_bytes(&mut chain_key);
        SenderKeyDistribution {
            generation,
            chain_key,
            seq: 0,
        }
    }

    fn step(&mut self) -> Result<MessageKey, GroupError> {
        let mut ck = ChainKey::new(self.chain_key, self.seq);
        let mk = ck.next_message_key().map_err(|_| GroupError::Exhausted)?;
        self.chain_key = *ck.key_bytes();
        self.seq = ck.index();
        Ok(mk)
    }
}

/// A group message as it travels (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupMessage {
    /// The group.
    pub group_id: GroupId,
    /// The author.
    #[serde(with = "crate::wire::bytes::fixed")]
    pub sender: [u8; 32],
    /// Sender key generation.
    pub generation: u32,
    /// Message number in the generation.
    pub seq: u32,
    /// AEAD output.
    #[serde(with = "serde_bytes")]
    pub ciphertext: Vec<u8>,
    /// The author's signature.
    #[serde(with = "crate::wire::bytes::fixed")]
    pub signature: [u8; 64],
}

/// Length of [`GroupMessage::digest`].
pub const DIGEST_LEN: usize = 16;

fn ad(group_id: &GroupId, sender: &[u8; 32], generation: u32, seq: u32) -> Vec<u8> {
    let mut v = Vec::with_capacity(56);
    v.extend_from_slice(&group_id.0);
    v.extend_from_slice(sender);
    v.extend_from_slice(&generation.to_be_bytes());
    v.extend_from_slice(&seq.to_be_bytes());
    v
}

impl GroupMessage {
    /// The encoding.
    pub fn encode(&self) -> Vec<u8> {
        msgpack::encode(self)
    }

    /// Decodes; the whole input must be consumed.
    pub fn decode(bytes: &[u8]) -> Result<GroupMessage, GroupError> {
        Ok(msgpack::decode(bytes)?)
    }

    /// First 16 bytes of SHA-256 over the ciphertext: what a receiver keeps per (sender,
    /// generation, seq) it decrypted, to tell an exact replay from a second, different
    /// ciphertext under the same message key (docs/PROTOCOL.md, "Sender keys after a restore").
    pub fn digest(&self) -> [u8; DIGEST_LEN] {
        use sha2::Digest;
        let full = sha2::Sha256::digest(&self.ciphertext);
        let mut d = [0u8; DIGEST_LEN];
        for (o, i) in d.iter_mut().zip(full.iter()) {
            *o = *i;
        }
        d
    }

    /// Checks the author's signature.
    pub fn verify(&self) -> Result<(), GroupError> {
        let key = sig::verifying_key(&self.sender)?;
        let a = ad(&self.group_id, &self.sender, self.generation, self.seq);
        sig::verify(
            &key,
            SigContext::GroupMessage,
            &[&a, &self.ciphertext],
            &self.signature,
        )?;
        Ok(())
    }
}

/// Our own sending chain in one group.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SenderKey {
    /// Current chain.
    pub chain: SenderKeyDistribution,
}

impl SenderKey {
    /// A fresh chain.
    pub fn new<R: rand_core::CryptoRngCore + ?Sized>(rng: &mut R, generation: u32) -> Self {
        SenderKey {
            chain: SenderKeyDistribution::random(rng, generation),
        }
    }

    /// What to give the other members so they can read our next messages.
    pub fn distribution(&self) -> SenderKeyDistribution {
        self.chain.clone()
    }

    /// Encrypts and signs one message; the chain advances (store it before sending).
    pub fn encrypt(
        &mut self,
        group_id: GroupId,
        signer: &SigningKey,
        plaintext: &[u8],
    ) -> Result<GroupMessage, GroupError> {
        let sender = signer.verifying_key().to_bytes();
        let generation = self.chain.generation;
        let seq = self.chain.seq;
        let mk = self.chain.step()?;
        let a = ad(&group_id, &sender, generation, seq);
        let ciphertext = mk.encrypt(&a, plaintext).map_err(|_| GroupError::Decrypt)?;
        let signature = sig::sign(signer, SigContext::GroupMessage, &[&a, &ciphertext]);
        Ok(GroupMessage {
            group_id,
            sender,
            generation,
            seq,
            ciphertext,
            signature,
        })
    }
}

/// One sender's chain as a receiver holds it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiverKey {
    chain: SenderKeyDistribution,
    /// Keys of numbers passed over and not yet received.
    skipped: BTreeMap<u32, Skipped>,
}

#[derive(Clone, PartialEq, Eq, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct Skipped(#[serde(with = "crate::wire::bytes::fixed")] [u8; 32]);

impl std::fmt::Debug for ReceiverKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceiverKey")
            .field("generation", &self.chain.generation)
            .field("next", &self.chain.seq)
            .field("skipped", &self.skipped.len())
            .finish_non_exhaustive()
    }
}

/// A message that opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Opened {
    /// The plaintext.
    pub plaintext: Vec<u8>,
    /// Numbers newly skipped to reach it (a visible gap; they may still arrive later).
    pub gap: u32,
    /// It arrived after a later number (it was in the skipped keys).
    pub reordered: bool,
}

impl ReceiverKey {
    /// A receiver for a distributed chain.
    pub fn new(chain: SenderKeyDistribution) -> Self {
        ReceiverKey {
            chain,
            skipped: BTreeMap::new(),
        }
    }

    /// Generation of this chain.
    pub fn generation(&self) -> u32 {
        self.chain.generation
    }

    /// Number of the next message expected.
    pub fn next_seq(&self) -> u32 {
        self.chain.seq
    }

    /// Numbers passed over and not (yet) received.
    pub fn missing(&self) -> usize {
        self.skipped.len()
    }

    /// Opens a message whose signature the caller has verified; commits only on success.
    pub fn open(&mut self, m: &GroupMessage) -> Result<Opened, GroupError> {
        let a = ad(&m.group_id, &m.sender, m.generation, m.seq);
        if m.generation != self.chain.generation {
            return Err(GroupError::StaleGeneration {
                got: m.generation,
                current: self.chain.generation,
            });
        }
        if m.seq < self.chain.seq {
            let Some(k) = self.skipped.get(&m.seq) else {
                return Err(GroupError::Replayed {
                    generation: m.generation,
                    seq: m.seq,
                });
            };
            let mk = MessageKey::new(k.0, m.seq);
            let plaintext = mk
                .decrypt(&a, &m.ciphertext)
                .map_err(|_| GroupError::Decrypt)?;
            self.skipped.remove(&m.seq);
            return Ok(Opened {
                plaintext,
                gap: 0,
                reordered: true,
            });
        }
        let gap = m.seq - self.chain.seq;
        if gap > MAX_SKIP {
            return Err(GroupError::TooBigGap {
                got: gap,
                max: MAX_SKIP,
            });
        }
        let mut next = self.clone();
        while next.chain.seq < m.seq {
            let seq = next.chain.seq;
            let mk = next.chain.step()?;
            next.skipped.insert(seq, Skipped(*mk.key_bytes()));
        }
        let mk = next.chain.step()?;
        let plaintext = mk
            .decrypt(&a, &m.ciphertext)
            .map_err(|_| GroupError::Decrypt)?;
        while next.skipped.len() > MAX_SKIPPED_KEYS {
            next.skipped.pop_first();
        }
        *self = next;
        Ok(Opened {
            plaintext,
            gap,
            reordered: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn setup() -> (SigningKey, SenderKey, ReceiverKey) {
        let signer = SigningKey::from_bytes(&[7; 32]);
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let sk = SenderKey::new(&mut rng, 0);
        let rk = ReceiverKey::new(sk.distribution());
        (signer, sk, rk)
    }

    #[test]
    fn in_order_reorder_gap_replay() {
        let (signer, mut sk, mut rk) = setup();
        let g = GroupId([1; 16]);
        let m: Vec<GroupMessage> = (0..4)
            .map(|i| sk.encrypt(g, &signer, format!("m{i}").as_bytes()).unwrap())
            .collect();
        for x in &m {
            x.verify().unwrap();
            let back = GroupMessage::decode(&x.encode()).unwrap();
            assert_eq!(&back, x);
        }
        assert_eq!(rk.open(&m[0]).unwrap().plaintext, b"m0");
        let o = rk.open(&m[2]).unwrap();
        assert_eq!((o.plaintext.as_slice(), o.gap), (&b"m2"[..], 1));
        assert_eq!(rk.missing(), 1);
        let o = rk.open(&m[1]).unwrap();
        assert!(o.reordered);
        assert_eq!(rk.missing(), 0);
        assert_eq!(
            rk.open(&m[1]).err(),
            Some(GroupError::Replayed {
                generation: 0,
                seq: 1
            })
        );
        assert_eq!(rk.open(&m[0]).err().map(|e| e.code()), Some(0x07));
        assert_eq!(rk.open(&m[3]).unwrap().plaintext, b"m3");
    }

    #[test]
    fn tamper_and_gap_limit_leave_state_alone() {
        let (signer, mut sk, mut rk) = setup();
        let g = GroupId([1; 16]);
        let mut m = sk.encrypt(g, &signer, b"x").unwrap();
        if let Some(b) = m.ciphertext.first_mut() {
            *b ^= 1;
        }
        assert_eq!(m.verify().err(), Some(GroupError::BadSignature));
        let before = rk.clone();
        assert_eq!(rk.open(&m).err(), Some(GroupError::Decrypt));
        assert_eq!(rk, before);
        for _ in 0..=MAX_SKIP {
            sk.encrypt(g, &signer, b"skip").unwrap();
        }
        let far = sk.encrypt(g, &signer, b"far").unwrap();
        assert!(matches!(rk.open(&far), Err(GroupError::TooBigGap { .. })));
        assert_eq!(rk, before);
    }

    #[test]
    fn debug_prints_no_secret() {
        let d = SenderKeyDistribution {
            generation: 1,
            chain_key: [0xcd; 32],
            seq: 2,
        };
        let s = format!("{d:?} {:?}", ReceiverKey::new(d.clone()));
        assert!(!s.contains("cd") && !s.contains("205"), "{s}");
    }
}
