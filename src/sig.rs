//! Domain-separated Ed25519 signatures.
//!
//! Every signature SREMP makes with an identity key is over `context || data`, where the
//! context is one of the NUL-terminated ASCII strings below. Because every context ends in a
//! NUL byte and none is a prefix of another, a signature made for one purpose can never verify
//! as another (an identity signature can never pass as a relay authentication, and so on).
//!
//! Verification is always `verify_strict` (rejects small-order public keys and non-canonical
//! `R`/`s` encodings) over the exact bytes that were received, never over a re-encoding.
//!
//! This module does no I/O and holds no keys; it only composes `ed25519-dalek`.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

/// What a signature is for. The discriminant is not on the wire; only the prefix is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SigContext {
    /// Signature of an `Identity` over its `IdentityVerifiedData` bytes.
    Identity,
    /// Rendezvous `REGISTER_REQUEST` signature.
    RendezvousRegister,
    /// Relay authentication (`RELAY_REGISTER`, `RETRIEVE_MESSAGES`).
    RelayAuth,
    /// Sender signature of a `STORE_MESSAGE` (over recipient, id and blob).
    StoreMessage,
    /// End-to-end message signature (over sender, recipient, header and ciphertext).
    Message,
    /// `DELIVERY_CONFIRMATION` signed by the recipient.
    DeliveryConfirmation,
}

impl SigContext {
    /// All contexts, for tests that check they are prefix-free.
    pub const ALL: [SigContext; 6] = [
        SigContext::Identity,
        SigContext::RendezvousRegister,
        SigContext::RelayAuth,
        SigContext::StoreMessage,
        SigContext::Message,
        SigContext::DeliveryConfirmation,
    ];

    /// The exact prefix bytes, as written in docs/PROTOCOL.md.
    pub const fn prefix(self) -> &'static [u8] {
        match self {
            SigContext::Identity => b"SREMP-1 identity\0",
            SigContext::RendezvousRegister => b"SREMP-1 rendezvous-register\0",
            SigContext::RelayAuth => b"SREMP-1 relay-auth\0",
            SigContext::StoreMessage => b"SREMP-1 store-message\0",
            SigContext::Message => b"SREMP-1 message\0",
            SigContext::DeliveryConfirmation => b"SREMP-1 delivery-confirmation\0",
        }
    }
}

/// The signature did not verify. Deliberately carries no detail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("signature verification failed")]
pub struct BadSignature;

/// Signs `context || parts[0] || parts[1] || ...`.
pub fn sign(key: &SigningKey, ctx: SigContext, parts: &[&[u8]]) -> [u8; 64] {
    let msg = concat(ctx, parts);
    key.sign(&msg).to_bytes()
}

/// Verifies a signature made by [`sign`] with `verify_strict`.
pub fn verify(
    key: &VerifyingKey,
    ctx: SigContext,
    parts: &[&[u8]],
    signature: &[u8; 64],
) -> Result<(), BadSignature> {
    let msg = concat(ctx, parts);
    let sig = Signature::from_bytes(signature);
    key.verify_strict(&msg, &sig).map_err(|_| BadSignature)
}

/// Parses a 32-byte Ed25519 public key, rejecting encodings that are not points.
pub fn verifying_key(bytes: &[u8; 32]) -> Result<VerifyingKey, BadSignature> {
    let key = VerifyingKey::from_bytes(bytes).map_err(|_| BadSignature)?;
    if key.is_weak() {
        return Err(BadSignature);
    }
    Ok(key)
}

fn concat(ctx: SigContext, parts: &[&[u8]]) -> Vec<u8> {
    let prefix = ctx.prefix();
    let len = prefix.len() + parts.iter().map(|p| p.len()).sum::<usize>();
    let mut msg = Vec::with_capacity(len);
    msg.extend_from_slice(prefix);
    for p in parts {
        msg.extend_from_slice(p);
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contexts_are_prefix_free() {
        for a in SigContext::ALL {
            for b in SigContext::ALL {
                if a != b {
                    assert!(!b.prefix().starts_with(a.prefix()), "{a:?} prefixes {b:?}");
                }
            }
            assert_eq!(a.prefix().last(), Some(&0u8));
        }
    }

    #[test]
    fn signature_does_not_cross_contexts() {
        let key = SigningKey::from_bytes(&[7u8; 32]);
        let vk = key.verifying_key();
        let sig = sign(&key, SigContext::RelayAuth, &[b"abc"]);
        assert!(verify(&vk, SigContext::RelayAuth, &[b"abc"], &sig).is_ok());
        for ctx in SigContext::ALL {
            if ctx != SigContext::RelayAuth {
                assert_eq!(verify(&vk, ctx, &[b"abc"], &sig), Err(BadSignature));
            }
        }
        assert_eq!(
            verify(&vk, SigContext::RelayAuth, &[b"abd"], &sig),
            Err(BadSignature)
        );
    }
}
