//! Domain-separated Ed25519 signatures.
//!
//! Every signature SREMP makes with an identity key is over `context || data`, where the
//! context is one of the NUL-terminated ASCII strings below. Because every context ends in a
//! NUL byte and none is a prefix of another, a signature made for one purpose can never verify
//! as another (an identity signature can never pass as a relay authentication, and so on).
//!
//! Verification is always `verify_strict` (rejects small-order public keys and non-canonical
//! `R`/`s` encodings) over the exact bytes that were received, never over a re-encoding.
//! The one exception is [`verify_batch`], which the relay uses for `STORE_MESSAGE` sender
//! signatures received together; its doc states exactly how its accepted set differs.
//!
//! This module does no I/O and holds no keys; it only composes `ed25519-dalek`.

pub mod small_order;

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
    /// `SESSION_RESET` signed by the recipient that could not decrypt a message.
    SessionReset,
    /// A group's membership, signed by its creator.
    GroupMembership,
    /// A group message, signed by its author.
    GroupMessage,
    /// A group envelope its author asks the creator to forward to members it cannot reach.
    GroupForward,
    /// A hole-punching message (candidates), signed by its sender.
    Punch,
}

impl SigContext {
    /// All contexts, for tests that check they are prefix-free.
    pub const ALL: [SigContext; 11] = [
        SigContext::Identity,
        SigContext::RendezvousRegister,
        SigContext::RelayAuth,
        SigContext::StoreMessage,
        SigContext::Message,
        SigContext::DeliveryConfirmation,
        SigContext::SessionReset,
        SigContext::GroupMembership,
        SigContext::GroupMessage,
        SigContext::GroupForward,
        SigContext::Punch,
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
            SigContext::SessionReset => b"SREMP-1 session-reset\0",
            SigContext::GroupMembership => b"SREMP-1 group-membership\0",
            SigContext::GroupMessage => b"SREMP-1 group-message\0",
            SigContext::GroupForward => b"SREMP-1 group-forward\0",
            SigContext::Punch => b"SREMP-1 punch\0",
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

/// Verifies several signatures by one key, each made by [`sign`] over `ctx || parts...`;
/// returns one result per item, in order.
///
/// Two or more candidates are checked with one `ed25519_dalek::verify_batch`; if that fails
/// (or fewer than two are left) each candidate is checked alone with `verify_strict`, so a bad
/// signature is found and refused on its own. A signature is a candidate only if its `s` is
/// canonical (`s < ℓ`) and its `R` is not an encoding of a small-order point: both are refused
/// here exactly as `verify_strict` refuses them. A weak (small-order) `key` is checked one
/// signature at a time (`verify_strict` refuses them all).
///
/// Accepted set: an honestly made signature passes both ways. The batch equation is
/// cofactorless with random 128-bit weights `z_i` derived from the inputs,
/// `Σ z_i·(s_i·B − R_i − k_i·A) = 0`, so it differs from `verify_strict` only when some
/// `s_i·B − R_i − k_i·A` is a non-zero torsion point (an `R` or key with a small-order
/// component): such a signature can pass the batch (when the `z_i` cancel the torsion, about
/// 1 in 8) although `verify_strict` refuses it. Making one needs the private key of `key`.
/// The batch also does not require a canonical `R` encoding; the only decodable non-canonical
/// encodings are of small-order points (refused before the batch) or have `y < 19`.
/// docs/PROTOCOL.md ("Relay", "Storing") states where this is used.
pub fn verify_batch(
    key: &VerifyingKey,
    ctx: SigContext,
    items: &[(&[&[u8]], &[u8; 64])],
) -> Vec<Result<(), BadSignature>> {
    if items.len() < 2 || key.is_weak() {
        return items
            .iter()
            .map(|(parts, signature)| verify(key, ctx, parts, signature))
            .collect();
    }
    let mut out = vec![Err(BadSignature); items.len()];
    // (index in `items`, message, signature) of the candidates.
    let mut candidates: Vec<(usize, Vec<u8>, Signature)> = items
        .iter()
        .enumerate()
        .filter(|(_, (_, signature))| batchable(signature))
        .map(|(i, (parts, signature))| (i, concat(ctx, parts), Signature::from_bytes(signature)))
        .collect();
    let together = candidates.len() >= 2 && {
        let msgs: Vec<&[u8]> = candidates.iter().map(|(_, m, _)| m.as_slice()).collect();
        let sigs: Vec<Signature> = candidates.iter().map(|(_, _, s)| *s).collect();
        let keys = vec![*key; candidates.len()];
        ed25519_dalek::verify_batch(&msgs, &sigs, &keys).is_ok()
    };
    for (i, msg, signature) in candidates.drain(..) {
        let r = if together {
            Ok(())
        } else {
            key.verify_strict(&msg, &signature)
                .map_err(|_| BadSignature)
        };
        if let Some(o) = out.get_mut(i) {
            *o = r;
        }
    }
    out
}

/// The group order ℓ = 2^252 + 27742317777372353535851937790883648493, little-endian.
const ORDER_L: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// True if the scalar `s` (little-endian) is reduced, `s < ℓ`, as `verify_strict` requires.
fn canonical_s(s: &[u8; 32]) -> bool {
    for (a, l) in s.iter().rev().zip(ORDER_L.iter().rev()) {
        if a != l {
            return a < l;
        }
    }
    false
}

/// A signature that may go into a batch: `s` canonical and `R` not of small order. Whatever
/// fails this, `verify_strict` refuses too.
fn batchable(signature: &[u8; 64]) -> bool {
    let (r, s) = signature.split_at(32);
    match (<&[u8; 32]>::try_from(r), <&[u8; 32]>::try_from(s)) {
        (Ok(r), Ok(s)) => canonical_s(s) && !small_order::is_small_order_edwards_y(r),
        _ => false,
    }
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

    /// `a + b` on 256-bit little-endian numbers (no overflow in these tests).
    fn add_le(a: &[u8; 32], b: &[u8; 32]) -> [u8; 32] {
        let mut out = [0u8; 32];
        let mut carry = 0u16;
        for i in 0..32 {
            let v = u16::from(a[i]) + u16::from(b[i]) + carry;
            out[i] = v as u8;
            carry = v >> 8;
        }
        out
    }

    #[test]
    fn canonical_s_is_the_bound_verify_strict_uses() {
        let one = {
            let mut v = [0u8; 32];
            v[0] = 1;
            v
        };
        let l_minus_1 = {
            let mut v = ORDER_L;
            v[0] -= 1;
            v
        };
        assert!(canonical_s(&[0; 32]));
        assert!(canonical_s(&l_minus_1));
        assert!(!canonical_s(&ORDER_L));
        assert!(!canonical_s(&add_le(&ORDER_L, &one)));
        assert!(!canonical_s(&[0xff; 32]));
        // dalek refuses s = ℓ as a scalar format error, s = ℓ − 1 only by the equation.
        let key = SigningKey::from_bytes(&[9u8; 32]);
        let vk = key.verifying_key();
        let good = sign(&key, SigContext::StoreMessage, &[b"m"]);
        let with_s = |s: &[u8; 32]| {
            let mut b = good;
            b[32..].copy_from_slice(s);
            Signature::from_bytes(&b)
        };
        let msg = concat(SigContext::StoreMessage, &[b"m"]);
        let e_l = vk.verify_strict(&msg, &with_s(&ORDER_L)).unwrap_err();
        let e_l1 = vk.verify_strict(&msg, &with_s(&l_minus_1)).unwrap_err();
        assert!(e_l.to_string().to_lowercase().contains("scalar"), "{e_l}");
        assert!(
            !e_l1.to_string().to_lowercase().contains("scalar"),
            "{e_l1}"
        );
        // A valid signature's s is canonical; s + ℓ (same point s·B) is not, and is refused.
        let s: [u8; 32] = good[32..].try_into().unwrap();
        assert!(canonical_s(&s) && batchable(&good));
        let mut malleated = good;
        malleated[32..].copy_from_slice(&add_le(&s, &ORDER_L));
        assert!(!batchable(&malleated));
        assert!(verify(&vk, SigContext::StoreMessage, &[b"m"], &malleated).is_err());
    }

    #[test]
    fn verify_batch_answers_each_item_like_verify() {
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let vk = key.verifying_key();
        let other = SigningKey::from_bytes(&[4u8; 32]);
        let ctx = SigContext::StoreMessage;
        let msgs: Vec<Vec<u8>> = (0..12u8).map(|i| vec![i; 100 + usize::from(i)]).collect();
        let mut sigs: Vec<[u8; 64]> = msgs.iter().map(|m| sign(&key, ctx, &[m])).collect();
        let check = |sigs: &[[u8; 64]]| {
            let parts: Vec<[&[u8]; 1]> = msgs.iter().map(|m| [m.as_slice()]).collect();
            let items: Vec<(&[&[u8]], &[u8; 64])> = parts
                .iter()
                .zip(sigs)
                .map(|(p, s)| (p.as_slice(), s))
                .collect();
            let got = verify_batch(&vk, ctx, &items);
            let want: Vec<_> = items.iter().map(|(p, s)| verify(&vk, ctx, p, s)).collect();
            assert_eq!(got, want);
            got
        };
        assert!(check(&sigs).iter().all(|r| r.is_ok()));
        assert!(check(&sigs[..1]).iter().all(|r| r.is_ok()));
        assert!(check(&[]).is_empty());
        // One forged (another key), one over other bytes, one with s + ℓ, one with a
        // small-order R: exactly those four are refused.
        sigs[2] = sign(&other, ctx, &[&msgs[2]]);
        sigs[5] = sign(&key, ctx, &[b"something else"]);
        let s: [u8; 32] = sigs[7][32..].try_into().unwrap();
        sigs[7][32..].copy_from_slice(&add_le(&s, &ORDER_L));
        sigs[9][..32].copy_from_slice(&small_order::SMALL_ORDER_Y[1]);
        let got = check(&sigs);
        let refused: Vec<usize> = (0..got.len()).filter(|&i| got[i].is_err()).collect();
        assert_eq!(refused, vec![2, 5, 7, 9]);
        // All bad.
        let bad: Vec<[u8; 64]> = msgs.iter().map(|m| sign(&other, ctx, &[m])).collect();
        assert!(check(&bad).iter().all(|r| r.is_err()));
        // Another context never verifies.
        let parts: Vec<[&[u8]; 1]> = msgs.iter().map(|m| [m.as_slice()]).collect();
        let good: Vec<[u8; 64]> = msgs.iter().map(|m| sign(&key, ctx, &[m])).collect();
        let items: Vec<(&[&[u8]], &[u8; 64])> = parts
            .iter()
            .zip(&good)
            .map(|(p, s)| (p.as_slice(), s))
            .collect();
        assert!(verify_batch(&vk, SigContext::Message, &items)
            .iter()
            .all(|r| r.is_err()));
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
