//! The relay's signed byte strings, and their signing and verification. Pure: no I/O, no clock.
//!
//! Every signature is `sig::sign(key, context, parts)`, i.e. Ed25519 over
//! `context_prefix || parts...` (see [`crate::sig`]). The parts are:
//!
//! | what | context | parts |
//! | --- | --- | --- |
//! | `RELAY_REGISTER` | relay-auth | `0x01 \|\| handshake_hash[32] \|\| nonce[32] \|\| relay_key[32] \|\| client_key[32]` |
//! | `RETRIEVE_MESSAGES` | relay-auth | `0x02 \|\| handshake_hash[32] \|\| nonce[32] \|\| client_key[32] \|\| u64be(since or 0) \|\| cursor_sender[32] \|\| u64be(cursor_id) \|\| u32be(limit)` (absent cursor: 40 zero bytes) |
//! | `STORE_MESSAGE` | store-message | `sender[32] \|\| recipient[32] \|\| u64be(message_id) \|\| blob` |
//! | `DELIVERY_CONFIRMATION` | delivery-confirmation | `sender[32] \|\| delivered_to[32] \|\| u64be(message_id) \|\| u64be(timestamp)` |
//!
//! `handshake_hash` is the Noise handshake hash of the connection (identical on both sides and
//! unique per session) and `nonce` the relay's fresh challenge, so a registration or retrieval
//! signature is worthless on any other connection.

use crate::time::Timestamp;
use crate::sig::{self, SigContext};
use crate::wire::relay::{DeliveryConfirmation, RetrieveMessages, SessionReset, StoreMessage};
use ed25519_dalek::{SigningKey, VerifyingKey};

/// Tag byte of a registration signature.
pub const TAG_REGISTER: u8 = 0x01;
/// Tag byte of a retrieval signature.
pub const TAG_RETRIEVE: u8 = 0x02;

/// The session binding: the Noise handshake hash and the relay's challenge nonce.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionBinding {
    /// Noise handshake hash.
    pub handshake_hash: [u8; 32],
    /// The relay's challenge.
    pub nonce: [u8; 32],
}

/// The signed bytes of a registration (without the context prefix).
pub fn register_bytes(b: &SessionBinding, relay: &[u8; 32], client: &[u8; 32]) -> Vec<u8> {
    let mut v = Vec::with_capacity(129);
    v.push(TAG_REGISTER);
    v.extend_from_slice(&b.handshake_hash);
    v.extend_from_slice(&b.nonce);
    v.extend_from_slice(relay);
    v.extend_from_slice(client);
    v
}

/// Signs a registration.
pub fn sign_register(key: &SigningKey, b: &SessionBinding, relay: &[u8; 32]) -> [u8; 64] {
    let me = key.verifying_key().to_bytes();
    sig::sign(
        key,
        SigContext::RelayAuth,
        &[&register_bytes(b, relay, &me)],
    )
}

/// Verifies a registration by `client`.
pub fn verify_register(
    b: &SessionBinding,
    relay: &[u8; 32],
    client: &[u8; 32],
    signature: &[u8; 64],
) -> Result<(), sig::BadSignature> {
    let vk = sig::verifying_key(client)?;
    sig::verify(
        &vk,
        SigContext::RelayAuth,
        &[&register_bytes(b, relay, client)],
        signature,
    )
}

/// The signed bytes of a retrieval (without the context prefix).
pub fn retrieve_bytes(b: &SessionBinding, r: &RetrieveMessages) -> Vec<u8> {
    let mut v = Vec::with_capacity(149);
    v.push(TAG_RETRIEVE);
    v.extend_from_slice(&b.handshake_hash);
    v.extend_from_slice(&b.nonce);
    v.extend_from_slice(&r.identity);
    v.extend_from_slice(&r.since.map(|t| t.0).unwrap_or(0).to_be_bytes());
    match &r.after {
        Some(c) => {
            v.extend_from_slice(&c.sender);
            v.extend_from_slice(&c.message_id.to_be_bytes());
        }
        None => v.extend_from_slice(&[0u8; 40]),
    }
    v.extend_from_slice(&r.limit.to_be_bytes());
    v
}

/// Fills in `r.identity` and `r.auth_signature`.
pub fn sign_retrieve(key: &SigningKey, b: &SessionBinding, r: &mut RetrieveMessages) {
    r.identity = key.verifying_key().to_bytes();
    r.auth_signature = sig::sign(key, SigContext::RelayAuth, &[&retrieve_bytes(b, r)]);
}

/// Verifies a retrieval signature by `r.identity`.
pub fn verify_retrieve(b: &SessionBinding, r: &RetrieveMessages) -> Result<(), sig::BadSignature> {
    let vk = sig::verifying_key(&r.identity)?;
    sig::verify(
        &vk,
        SigContext::RelayAuth,
        &[&retrieve_bytes(b, r)],
        &r.auth_signature,
    )
}

/// Signs a `STORE_MESSAGE` as `key` (the sender).
pub fn sign_store(
    key: &SigningKey,
    recipient: &[u8; 32],
    message_id: u64,
    blob: &[u8],
) -> [u8; 64] {
    let me = key.verifying_key().to_bytes();
    sig::sign(
        key,
        SigContext::StoreMessage,
        &[&me, recipient, &message_id.to_be_bytes(), blob],
    )
}

/// Verifies the sender signature of a `STORE_MESSAGE` sent by `sender`.
pub fn verify_store(sender: &[u8; 32], m: &StoreMessage) -> Result<(), sig::BadSignature> {
    verify_store_with(&sig::verifying_key(sender)?, m)
}

/// [`verify_store`] with the sender's key already parsed (the relay parses a registered
/// sender's key once per connection instead of once per message).
pub fn verify_store_with(sender: &VerifyingKey, m: &StoreMessage) -> Result<(), sig::BadSignature> {
    sig::verify(
        sender,
        SigContext::StoreMessage,
        &[
            sender.as_bytes(),
            &m.recipient,
            &m.message_id.to_be_bytes(),
            &m.encrypted_blob,
        ],
        &m.sender_signature,
    )
}

/// [`verify_store_with`] for several messages of one sender at once: the signatures are checked
/// as one batch where possible ([`sig::verify_batch`]: candidates with a canonical `s` and an
/// `R` not of small order, falling back to `verify_strict` one by one when the batch fails).
/// Returns one result per message, in order.
pub fn verify_store_batch(
    sender: &VerifyingKey,
    ms: &[&StoreMessage],
) -> Vec<Result<(), sig::BadSignature>> {
    let ids: Vec<[u8; 8]> = ms.iter().map(|m| m.message_id.to_be_bytes()).collect();
    let parts: Vec<[&[u8]; 4]> = ms
        .iter()
        .zip(&ids)
        .map(|(m, id)| {
            [
                sender.as_bytes().as_slice(),
                m.recipient.as_slice(),
                id.as_slice(),
                m.encrypted_blob.as_slice(),
            ]
        })
        .collect();
    let items: Vec<(&[&[u8]], &[u8; 64])> = parts
        .iter()
        .zip(ms)
        .map(|(p, m)| (p.as_slice(), &m.sender_signature))
        .collect();
    sig::verify_batch(sender, SigContext::StoreMessage, &items)
}

/// Verifies a store signature from its parts (used by recipients on a `StoredMessage`).
pub fn verify_store_parts(
    sender: &[u8; 32],
    recipient: &[u8; 32],
    message_id: u64,
    blob: &[u8],
    signature: &[u8; 64],
) -> Result<(), sig::BadSignature> {
    let vk = sig::verifying_key(sender)?;
    sig::verify(
        &vk,
        SigContext::StoreMessage,
        &[sender, recipient, &message_id.to_be_bytes(), blob],
        signature,
    )
}

fn confirmation_bytes(c: &DeliveryConfirmation) -> Vec<u8> {
    let mut v = Vec::with_capacity(80);
    v.extend_from_slice(&c.sender);
    v.extend_from_slice(&c.delivered_to);
    v.extend_from_slice(&c.message_id.to_be_bytes());
    v.extend_from_slice(&c.timestamp.0.to_be_bytes());
    v
}

/// Fills in `c.delivered_to` and `c.signature`.
/// The `DELIVERY_CONFIRMATION` a recipient (`key`) sends for `sender`'s message `message_id`,
/// dated `timestamp` and signed ([`sign_confirmation`]).
pub fn confirmation(
    key: &SigningKey,
    sender: &[u8; 32],
    message_id: u64,
    timestamp: Timestamp,
) -> DeliveryConfirmation {
    let mut c = DeliveryConfirmation {
        message_id,
        sender: *sender,
        delivered_to: [0; 32],
        timestamp,
        signature: [0; 64],
    };
    sign_confirmation(key, &mut c);
    c
}

pub fn sign_confirmation(key: &SigningKey, c: &mut DeliveryConfirmation) {
    c.delivered_to = key.verifying_key().to_bytes();
    c.signature = sig::sign(
        key,
        SigContext::DeliveryConfirmation,
        &[&confirmation_bytes(c)],
    );
}

/// Verifies a confirmation's signature by `c.delivered_to`.
pub fn verify_confirmation(c: &DeliveryConfirmation) -> Result<(), sig::BadSignature> {
    let vk = sig::verifying_key(&c.delivered_to)?;
    sig::verify(
        &vk,
        SigContext::DeliveryConfirmation,
        &[&confirmation_bytes(c)],
        &c.signature,
    )
}

/// The bytes a [`SessionReset`] signature covers (docs/PROTOCOL.md, "Session reset"): with
/// `last_recorded`, its `u64be` follows the digest (so it cannot be stripped or changed).
pub fn session_reset_bytes(n: &SessionReset) -> Vec<u8> {
    let mut v = Vec::with_capacity(121);
    v.extend_from_slice(&n.sender);
    v.extend_from_slice(&n.recipient);
    v.extend_from_slice(&n.message_id.to_be_bytes());
    v.extend_from_slice(&n.timestamp.0.to_be_bytes());
    v.push(n.reason);
    v.extend_from_slice(&n.digest);
    if let Some(last) = n.last_recorded {
        v.extend_from_slice(&last.to_be_bytes());
    }
    v
}

/// Fills in `n.recipient` and `n.signature`.
pub fn sign_session_reset(key: &SigningKey, n: &mut SessionReset) {
    n.recipient = key.verifying_key().to_bytes();
    n.signature = sig::sign(key, SigContext::SessionReset, &[&session_reset_bytes(n)]);
}

/// Verifies a session-reset notice's signature by `n.recipient`.
pub fn verify_session_reset(n: &SessionReset) -> Result<(), sig::BadSignature> {
    let vk = sig::verifying_key(&n.recipient)?;
    sig::verify(
        &vk,
        SigContext::SessionReset,
        &[&session_reset_bytes(n)],
        &n.signature,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Timestamp;

    fn key(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    #[test]
    fn register_is_bound_to_session_and_relay() {
        let c = key(1);
        let relay = key(2).verifying_key().to_bytes();
        let b = SessionBinding {
            handshake_hash: [3; 32],
            nonce: [4; 32],
        };
        let s = sign_register(&c, &b, &relay);
        let me = c.verifying_key().to_bytes();
        verify_register(&b, &relay, &me, &s).unwrap();
        let other = SessionBinding {
            handshake_hash: [5; 32],
            ..b
        };
        assert!(verify_register(&other, &relay, &me, &s).is_err());
        let other = SessionBinding {
            nonce: [5; 32],
            ..b
        };
        assert!(verify_register(&other, &relay, &me, &s).is_err());
        assert!(verify_register(&b, &[9; 32], &me, &s).is_err());
    }

    #[test]
    fn store_batch_refuses_exactly_the_bad_ones() {
        let s = key(1);
        let vk = s.verifying_key();
        let r = key(2).verifying_key().to_bytes();
        let mut ms: Vec<StoreMessage> = (0..10u64)
            .map(|id| {
                let blob = vec![id as u8; 1024];
                StoreMessage {
                    recipient: r,
                    sender_signature: sign_store(&s, &r, id, &blob),
                    encrypted_blob: blob,
                    message_id: id,
                }
            })
            .collect();
        let refs: Vec<&StoreMessage> = ms.iter().collect();
        assert!(verify_store_batch(&vk, &refs).iter().all(|x| x.is_ok()));
        // Signed by someone else, and a valid signature over another id.
        ms[3].sender_signature = sign_store(&key(3), &r, 3, &ms[3].encrypted_blob);
        ms[8].message_id = 80;
        let refs: Vec<&StoreMessage> = ms.iter().collect();
        let got = verify_store_batch(&vk, &refs);
        for (i, (g, m)) in got.iter().zip(&ms).enumerate() {
            assert_eq!(g.is_ok(), i != 3 && i != 8, "message {i}");
            assert_eq!(*g, verify_store_with(&vk, m));
        }
        // One alone, and none.
        assert_eq!(
            verify_store_batch(&vk, &refs[3..4]),
            vec![Err(sig::BadSignature)]
        );
        assert!(verify_store_batch(&vk, &[]).is_empty());
    }

    #[test]
    fn store_and_confirmation() {
        let s = key(1);
        let r = key(2).verifying_key().to_bytes();
        let sig = sign_store(&s, &r, 7, b"blob");
        let m = StoreMessage {
            recipient: r,
            encrypted_blob: b"blob".to_vec(),
            sender_signature: sig,
            message_id: 7,
        };
        verify_store(&s.verifying_key().to_bytes(), &m).unwrap();
        let mut forged = m.clone();
        forged.message_id = 8;
        assert!(verify_store(&s.verifying_key().to_bytes(), &forged).is_err());
        assert!(verify_store(&r, &m).is_err());

        let mut c = DeliveryConfirmation {
            message_id: 7,
            sender: s.verifying_key().to_bytes(),
            delivered_to: [0; 32],
            timestamp: Timestamp(5),
            signature: [0; 64],
        };
        sign_confirmation(&key(2), &mut c);
        verify_confirmation(&c).unwrap();
        c.message_id = 6;
        assert!(verify_confirmation(&c).is_err());
    }
}
