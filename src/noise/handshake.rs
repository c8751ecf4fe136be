//! The XX handshake core: bytes in, bytes out, identities verified. No I/O, no clock.
//!
//! ```
//! use sremp::identity::{Flags, UserIdentity};
//! use sremp::noise::{prologue, Handshake};
//! use sremp::time::Timestamp;
//! use sremp::wire::{Version, VersionHeader};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut rng = rand::rngs::OsRng;
//! let alice = UserIdentity::generate("alice", Flags::default(), Timestamp(0), &mut rng)?;
//! let bob = UserIdentity::generate("bob", Flags::default(), Timestamp(0), &mut rng)?;
//! let p = prologue(VersionHeader(Version::CURRENT), VersionHeader(Version::CURRENT));
//! let mut i = Handshake::initiator(&alice, &p, Some(bob.key()))?;
//! let mut r = Handshake::responder(&bob, &p)?;
//! r.read_message(&i.write_message()?)?;
//! i.read_message(&r.write_message()?)?;
//! r.read_message(&i.write_message()?)?;
//! let (_, _, peer_of_alice) = i.finish()?;
//! let (_, _, peer_of_bob) = r.finish()?;
//! assert_eq!(peer_of_alice.key(), bob.key());
//! assert_eq!(peer_of_bob.key(), alice.key());
//! # Ok(())
//! # }
//! ```

use super::transport::{RecvHalf, SendHalf};
use super::PATTERN;
use crate::identity::{Identity, IdentityError, IdentityKey, UserIdentity, VerifiedCache};
use crate::sig::small_order::is_low_order_x25519;
use std::sync::Arc;

/// Largest handshake message 1 (`e`, empty payload).
pub const MAX_MSG1: usize = 32;
/// Largest handshake message 2 or 3 (keys, tags and an identity).
pub const MAX_MSG23: usize = 32 + 48 + 16 + crate::identity::MAX_IDENTITY_DATA + 128;

/// Why a handshake failed. Crypto failures stay coarse.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Decryption or another Noise-level failure (deliberately without detail).
    #[error("noise handshake failed")]
    Noise,
    /// The peer's identity did not verify.
    #[error("peer identity refused: {0}")]
    Identity(#[from] IdentityError),
    /// The handshake static key is not the identity's noise key.
    #[error("peer's noise static key does not match its identity")]
    NoiseKeyMismatch,
    /// The peer's static key is all-zero or of small order.
    #[error("peer's noise static key is a low-order point")]
    WeakRemoteKey,
    /// We dialled one identity and another answered.
    #[error("expected peer {expected:?}, got {got:?}")]
    UnexpectedPeer {
        /// Whom we dialled.
        expected: IdentityKey,
        /// Who answered.
        got: IdentityKey,
    },
    /// Message 1 carried a payload, or a message arrived out of turn.
    #[error("handshake message out of turn or malformed")]
    OutOfTurn,
}

/// One side of an XX handshake.
pub struct Handshake {
    state: snow::HandshakeState,
    local_identity: Vec<u8>,
    expected: Option<IdentityKey>,
    peer: Option<Identity>,
    step: u8,
    verified: Option<VerifiedCache>,
}

impl std::fmt::Debug for Handshake {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handshake")
            .field("initiator", &self.state.is_initiator())
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

fn builder<'a>(
    local: &'a [u8; 32],
    prologue: &'a [u8],
) -> Result<snow::Builder<'a>, HandshakeError> {
    let params: snow::params::NoiseParams = PATTERN.parse().map_err(|_| HandshakeError::Noise)?;
    snow::Builder::new(params)
        .local_private_key(local)
        .and_then(|b| b.prologue(prologue))
        .map_err(|_| HandshakeError::Noise)
}

impl Handshake {
    /// The dialling side. `expected`: the identity we mean to reach, if known.
    pub fn initiator(
        local: &UserIdentity,
        prologue: &[u8],
        expected: Option<IdentityKey>,
    ) -> Result<Self, HandshakeError> {
        Self::build(local, prologue, expected, true, None)
    }

    /// The accepting side.
    pub fn responder(local: &UserIdentity, prologue: &[u8]) -> Result<Self, HandshakeError> {
        Self::build(local, prologue, None, false, None)
    }

    /// Verifies the peer's identity through `cache` (the owner's memory of identities that
    /// verified before) instead of checking every signature in full.
    pub fn with_verified_cache(mut self, cache: VerifiedCache) -> Self {
        self.verified = Some(cache);
        self
    }

    /// Deterministic handshake for test vectors: a fixed ephemeral key. Never use otherwise.
    #[doc(hidden)]
    pub fn with_fixed_ephemeral_for_testing_only(
        local: &UserIdentity,
        prologue: &[u8],
        expected: Option<IdentityKey>,
        initiator: bool,
        ephemeral: &[u8; 32],
    ) -> Result<Self, HandshakeError> {
        Self::build(local, prologue, expected, initiator, Some(ephemeral))
    }

    fn build(
        local: &UserIdentity,
        prologue: &[u8],
        expected: Option<IdentityKey>,
        initiator: bool,
        ephemeral: Option<&[u8; 32]>,
    ) -> Result<Self, HandshakeError> {
        let secret = zeroize::Zeroizing::new(local.noise_secret().to_bytes());
        let mut b = builder(&secret, prologue)?;
        if let Some(e) = ephemeral {
            b = b.fixed_ephemeral_key_for_testing_only(e);
        }
        let state = if initiator {
            b.build_initiator()
        } else {
            b.build_responder()
        }
        .map_err(|_| HandshakeError::Noise)?;
        Ok(Handshake {
            state,
            local_identity: local.identity().to_bytes(),
            expected,
            peer: None,
            step: 0,
            verified: None,
        })
    }

    /// True when it is our turn to write.
    pub fn is_my_turn(&self) -> bool {
        self.state.is_my_turn()
    }

    /// True when all three messages have been processed.
    pub fn is_finished(&self) -> bool {
        self.state.is_handshake_finished()
    }

    /// The largest message the peer may send next (frames over it are refused unread).
    pub fn max_incoming(&self) -> usize {
        if self.step == 0 {
            MAX_MSG1
        } else {
            MAX_MSG23
        }
    }

    /// Produces our next handshake message.
    pub fn write_message(&mut self) -> Result<Vec<u8>, HandshakeError> {
        if !self.state.is_my_turn() || self.is_finished() {
            return Err(HandshakeError::OutOfTurn);
        }
        // Message 1 carries nothing; messages 2 and 3 carry our identity.
        let payload: &[u8] = if self.step == 0 {
            &[]
        } else {
            &self.local_identity
        };
        let mut out = vec![0u8; MAX_MSG23];
        let n = self
            .state
            .write_message(payload, &mut out)
            .map_err(|_| HandshakeError::Noise)?;
        out.truncate(n);
        self.step += 1;
        Ok(out)
    }

    /// Consumes the peer's next handshake message, verifying its identity when it carries one.
    pub fn read_message(&mut self, msg: &[u8]) -> Result<(), HandshakeError> {
        if self.state.is_my_turn() || self.is_finished() || msg.len() > self.max_incoming() {
            return Err(HandshakeError::OutOfTurn);
        }
        let mut payload = vec![0u8; msg.len()];
        let n = self
            .state
            .read_message(msg, &mut payload)
            .map_err(|_| HandshakeError::Noise)?;
        let payload = payload.get(..n).ok_or(HandshakeError::Noise)?;
        let first = self.step == 0;
        self.step += 1;
        if first {
            return if payload.is_empty() {
                Ok(())
            } else {
                Err(HandshakeError::OutOfTurn)
            };
        }
        let rs: [u8; 32] = self
            .state
            .get_remote_static()
            .and_then(|s| <[u8; 32]>::try_from(s).ok())
            .ok_or(HandshakeError::Noise)?;
        if is_low_order_x25519(&rs) {
            return Err(HandshakeError::WeakRemoteKey);
        }
        let identity = match &self.verified {
            Some(cache) => Identity::from_bytes_cached(payload, cache)?,
            None => Identity::from_bytes(payload)?,
        };
        if identity.noise_key().0 != rs {
            return Err(HandshakeError::NoiseKeyMismatch);
        }
        if let Some(expected) = self.expected {
            if identity.key() != expected {
                return Err(HandshakeError::UnexpectedPeer {
                    expected,
                    got: identity.key(),
                });
            }
        }
        self.peer = Some(identity);
        Ok(())
    }

    /// The handshake hash (channel binding), available once finished.
    pub fn handshake_hash(&self) -> [u8; 32] {
        let mut h = [0u8; 32];
        let src = self.state.get_handshake_hash();
        let n = src.len().min(32);
        h[..n].copy_from_slice(&src[..n]);
        h
    }

    /// Splits into transport halves: `(send, recv, verified peer)`.
    pub fn finish(self) -> Result<(SendHalf, RecvHalf, Identity), HandshakeError> {
        if !self.is_finished() {
            return Err(HandshakeError::OutOfTurn);
        }
        let hash = self.handshake_hash();
        let peer = self.peer.ok_or(HandshakeError::OutOfTurn)?;
        let transport = Arc::new(
            self.state
                .into_stateless_transport_mode()
                .map_err(|_| HandshakeError::Noise)?,
        );
        Ok((
            SendHalf::new(transport.clone(), hash),
            RecvHalf::new(transport, hash),
            peer,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Flags, IdentityVerifiedData, NoiseKey};
    use crate::time::Timestamp;
    use crate::wire::{Version, VersionHeader};

    fn user(name: &str) -> UserIdentity {
        UserIdentity::generate(name, Flags::default(), Timestamp(0), &mut rand::rngs::OsRng)
            .unwrap()
    }

    fn p() -> Vec<u8> {
        super::super::prologue(
            VersionHeader(Version::CURRENT),
            VersionHeader(Version::CURRENT),
        )
    }

    fn run(i: &mut Handshake, r: &mut Handshake) -> Result<(), HandshakeError> {
        r.read_message(&i.write_message()?)?;
        i.read_message(&r.write_message()?)?;
        r.read_message(&i.write_message()?)?;
        Ok(())
    }

    #[test]
    fn transport_after_handshake() {
        let (a, b) = (user("a"), user("b"));
        let mut i = Handshake::initiator(&a, &p(), Some(b.key())).unwrap();
        let mut r = Handshake::responder(&b, &p()).unwrap();
        run(&mut i, &mut r).unwrap();
        assert_eq!(i.handshake_hash(), r.handshake_hash());
        let (mut is, _ir, peer_b) = i.finish().unwrap();
        let (_rs, mut rr, peer_a) = r.finish().unwrap();
        assert_eq!(peer_b.key(), b.key());
        assert_eq!(peer_a.key(), a.key());
        let mut ct = Vec::new();
        is.encrypt(b"hi", &mut ct).unwrap();
        let mut pt = Vec::new();
        rr.decrypt(&ct, &mut pt).unwrap();
        assert_eq!(pt, b"hi");
    }

    #[test]
    fn mismatched_prologue_fails() {
        let (a, b) = (user("a"), user("b"));
        let other = super::super::prologue(
            VersionHeader(Version { major: 1, minor: 1 }),
            VersionHeader(Version::CURRENT),
        );
        let mut i = Handshake::initiator(&a, &p(), None).unwrap();
        let mut r = Handshake::responder(&b, &other).unwrap();
        assert!(matches!(run(&mut i, &mut r), Err(HandshakeError::Noise)));
    }

    #[test]
    fn unexpected_peer_is_refused() {
        let (a, b, c) = (user("a"), user("b"), user("c"));
        let mut i = Handshake::initiator(&a, &p(), Some(c.key())).unwrap();
        let mut r = Handshake::responder(&b, &p()).unwrap();
        assert!(matches!(
            run(&mut i, &mut r),
            Err(HandshakeError::UnexpectedPeer { .. })
        ));
    }

    #[test]
    fn identity_with_foreign_noise_key_is_refused() {
        // Mallory signs a valid identity that claims someone else's noise key but handshakes
        // with her own static key.
        let (a, m, victim) = (user("a"), user("m"), user("v"));
        let data = IdentityVerifiedData {
            noise_key: NoiseKey(victim.identity().noise_key().0),
            ..m.identity().data().clone()
        };
        let forged = Identity::sign(data, m.signing_key()).unwrap();
        let m2 = UserIdentity::from_secrets(
            &m.signing_key().to_bytes(),
            &m.noise_secret().to_bytes(),
            m.identity().clone(),
        )
        .unwrap();
        let mut r = Handshake::responder(&m2, &p()).unwrap();
        r.local_identity = forged.to_bytes();
        let mut i = Handshake::initiator(&a, &p(), None).unwrap();
        assert!(matches!(
            run(&mut i, &mut r),
            Err(HandshakeError::NoiseKeyMismatch)
        ));
    }

    #[test]
    fn message_one_with_payload_is_refused() {
        let (a, b) = (user("a"), user("b"));
        let mut r = Handshake::responder(&b, &p()).unwrap();
        let mut i = Handshake::initiator(&a, &p(), None).unwrap();
        let mut m1 = i.write_message().unwrap();
        m1.push(0);
        assert!(r.read_message(&m1).is_err());
    }
}
