//! Session establishment: a first-contact message sealed with the one-way Noise `X` pattern.
//!
//! The same construction serves both cases:
//! - **(a) the peer is online** and we have a Noise XX connection to it: the first message
//!   travels inside that connection (so a network observer also faces XX's ephemeral keys);
//! - **(b) first contact while the peer is offline**, knowing only its `Identity` (contact card
//!   or rendezvous): the first message is stored by a relay until the peer fetches it.
//!
//! Initiator (Alice, knowing Bob's identity key and noise key):
//! 1. `Noise_X_25519_ChaChaPoly_BLAKE2s`, prologue
//!    `"SREMP-1 first-contact\0" || alice_identity_key || bob_identity_key`, Alice's static =
//!    her noise key, remote static = Bob's noise key, payload = a fresh 32-byte `seed`.
//! 2. `h` = the handshake hash after that single message (32 bytes); `session_id = h[0..16]`.
//! 3. `rk0 || ck0 = HKDF-SHA256(salt = h, ikm = seed, info = "SREMP-1 ratchet init", L = 64)`.
//! 4. Alice draws a fresh ratchet key pair `A1`; her first sending chain is `ck0` on `A1`.
//!    Every message she sends before hearing from Bob in this session carries the `X`
//!    message, Bob's noise key and the creation time in its header (any of them may be the
//!    first to arrive).
//!
//! Responder (Bob): reads the `X` message with the noise key it was sealed to, checks the
//! ephemeral and Alice's static key are not low-order and that `session_id` matches, derives
//! the same `rk0 || ck0` and starts with the receiving chain `ck0` on `A1`. His first reply
//! makes the first DH-ratchet step (fresh `B1`, `DH(B1, A1)`).
//!
//! The noise key is used only inside the Noise pattern. The seed is secret as long as Bob's
//! noise private key is; the handshake hash binds both identity keys (prologue), both noise
//! keys and the ephemeral into every key of the session.

use super::header::{Header, InitialHeader, X_MESSAGE_LEN};
use super::receiver_chain::ReceiverChain;
use super::root_key::RootKey;
use super::session::{SendingChain, Session};
use super::{chain_key::ChainKey, DecryptError, EncryptError};
use crate::time::Timestamp;
use rand_core::CryptoRngCore;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

/// The Noise protocol name of the first-contact message.
pub const X_PATTERN: &str = "Noise_X_25519_ChaChaPoly_BLAKE2s";
/// Prologue prefix (followed by the sender's and the recipient's identity keys).
pub const PROLOGUE_PREFIX: &[u8] = b"SREMP-1 first-contact\0";
/// HKDF `info` for the first root and chain keys.
pub const INIT_INFO: &[u8] = b"SREMP-1 ratchet init";

fn prologue(sender: &[u8; 32], recipient: &[u8; 32]) -> Vec<u8> {
    let mut p = Vec::with_capacity(PROLOGUE_PREFIX.len() + 64);
    p.extend_from_slice(PROLOGUE_PREFIX);
    p.extend_from_slice(sender);
    p.extend_from_slice(recipient);
    p
}

fn contributory(secret: &StaticSecret, public: &[u8; 32]) -> bool {
    secret
        .diffie_hellman(&PublicKey::from(*public))
        .was_contributory()
}

fn first_keys(h: &[u8], seed: &[u8]) -> Option<(RootKey, ChainKey)> {
    let okm = super::hkdf_64(h, seed, super::establish::INIT_INFO)?;
    Some((RootKey::new(okm.0), ChainKey::new(okm.1, 0)))
}

fn session_id(h: &[u8]) -> Option<[u8; 16]> {
    h.get(..16).and_then(|s| <[u8; 16]>::try_from(s).ok())
}

/// Creates an outbound session to a peer known only by its identity key and noise key.
/// `local_noise_secret` is our X25519 noise private key; `created_at` is now (our clock).
pub fn initiate<R: CryptoRngCore + ?Sized>(
    rng: &mut R,
    local_ik: &[u8; 32],
    local_noise_secret: &[u8; 32],
    remote_ik: &[u8; 32],
    remote_noise_key: &[u8; 32],
    created_at: Timestamp,
) -> Result<Session, EncryptError> {
    let local_noise = StaticSecret::from(*local_noise_secret);
    if !contributory(&local_noise, remote_noise_key) {
        return Err(EncryptError::LowOrderKey);
    }
    // The ephemeral is drawn from the caller's CSPRNG (as snow would draw it from the OS) and
    // handed to snow as its random source, so the whole construction is reproducible under a
    // seeded generator without snow's testing-only fixed-ephemeral hook.
    let ephemeral = Zeroizing::new(StaticSecret::random_from_rng(&mut *rng).to_bytes());
    let mut seed = Zeroizing::new([0u8; 32]);
    rng.fill_bytes(&mut seed[..]);
    let params = X_PATTERN.parse().map_err(|_| EncryptError::Noise)?;
    let prologue = prologue(local_ik, remote_ik);
    let resolver = snow::resolvers::FallbackResolver::new(
        Box::new(CallerRandom::resolver(&ephemeral)),
        Box::new(snow::resolvers::DefaultResolver),
    );
    let mut hs = snow::Builder::with_resolver(params, Box::new(resolver))
        .local_private_key(local_noise_secret)
        .and_then(|b| b.remote_public_key(remote_noise_key))
        .and_then(|b| b.prologue(&prologue))
        .and_then(|b| b.build_initiator())
        .map_err(|_| EncryptError::Noise)?;
    let mut handshake = vec![0u8; X_MESSAGE_LEN];
    let len = hs
        .write_message(&seed[..], &mut handshake)
        .map_err(|_| EncryptError::Noise)?;
    if len != X_MESSAGE_LEN {
        return Err(EncryptError::Noise);
    }
    let h = hs.get_handshake_hash();
    let id = session_id(h).ok_or(EncryptError::Noise)?;
    let (root, chain) = first_keys(h, &seed[..]).ok_or(EncryptError::Noise)?;
    let secret = StaticSecret::random_from_rng(&mut *rng);
    let public = PublicKey::from(&secret).to_bytes();
    Ok(Session::new_outbound(
        id,
        *local_ik,
        *remote_ik,
        root,
        SendingChain {
            secret,
            public,
            chain,
        },
        InitialHeader {
            recipient_noise_key: *remote_noise_key,
            handshake,
            created_at: created_at.0,
        },
    ))
}

/// The responder's new session and what it learned.
#[derive(Debug)]
pub struct Accepted {
    /// The new inbound session (nothing decrypted yet).
    pub session: Session,
    /// The sender's noise static key from the `X` message. The node checks it against the
    /// sender's `Identity` when it has one.
    pub remote_noise_key: [u8; 32],
}

/// Creates the inbound session for a first-contact `header` from `remote_ik`, with the noise
/// private key whose public key is `header.initial.recipient_noise_key`. The message's
/// signature must already have been verified.
pub fn accept(
    local_ik: &[u8; 32],
    local_noise_secret: &[u8; 32],
    remote_ik: &[u8; 32],
    header: &Header,
) -> Result<Accepted, DecryptError> {
    let initial = header.initial.as_ref().ok_or(DecryptError::NoSession)?;
    let local_noise = StaticSecret::from(*local_noise_secret);
    if PublicKey::from(&local_noise).as_bytes() != &initial.recipient_noise_key {
        return Err(DecryptError::UnknownNoiseKey);
    }
    let ephemeral: [u8; 32] = initial
        .handshake
        .get(..32)
        .and_then(|e| <[u8; 32]>::try_from(e).ok())
        .ok_or(DecryptError::Decrypt)?;
    if !contributory(&local_noise, &ephemeral) || !contributory(&local_noise, &header.ratchet_key) {
        return Err(DecryptError::LowOrderKey);
    }
    let params = X_PATTERN.parse().map_err(|_| DecryptError::Decrypt)?;
    let prologue = prologue(remote_ik, local_ik);
    let mut hs = snow::Builder::new(params)
        .local_private_key(local_noise_secret)
        .and_then(|b| b.prologue(&prologue))
        .and_then(|b| b.build_responder())
        .map_err(|_| DecryptError::Decrypt)?;
    let mut seed = Zeroizing::new([0u8; X_MESSAGE_LEN]);
    let len = hs
        .read_message(&initial.handshake, &mut seed[..])
        .map_err(|_| DecryptError::Decrypt)?;
    let seed = seed
        .get(..len)
        .filter(|s| s.len() == 32)
        .ok_or(DecryptError::Decrypt)?;
    let remote_noise_key: [u8; 32] = hs
        .get_remote_static()
        .and_then(|s| <[u8; 32]>::try_from(s).ok())
        .ok_or(DecryptError::Decrypt)?;
    if !contributory(&local_noise, &remote_noise_key) {
        return Err(DecryptError::LowOrderKey);
    }
    let h = hs.get_handshake_hash();
    if session_id(h) != Some(header.session_id) {
        return Err(DecryptError::Decrypt);
    }
    let (root, chain) = first_keys(h, seed).ok_or(DecryptError::Decrypt)?;
    let session = Session::new_inbound(
        header.session_id,
        initial.created_at,
        *local_ik,
        *remote_ik,
        root,
        ReceiverChain::new(header.ratchet_key, chain),
    );
    Ok(Accepted {
        session,
        remote_noise_key,
    })
}

/// A snow random source that yields exactly one 32-byte value (our ephemeral key drawn from
/// the caller's CSPRNG) and fails on any further request, so snow can never silently use
/// anything else.
struct CallerRandom {
    bytes: Zeroizing<[u8; 32]>,
    used: bool,
}

impl CallerRandom {
    fn resolver(bytes: &Zeroizing<[u8; 32]>) -> CallerRandomResolver {
        CallerRandomResolver(std::sync::Mutex::new(Some(CallerRandom {
            bytes: bytes.clone(),
            used: false,
        })))
    }
}

impl snow::types::Random for CallerRandom {
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), snow::Error> {
        if self.used || dest.len() != self.bytes.len() {
            return Err(snow::Error::Rng);
        }
        dest.copy_from_slice(&self.bytes[..]);
        self.used = true;
        Ok(())
    }
}

/// Resolves only the random source; everything else falls back to snow's default resolver.
struct CallerRandomResolver(std::sync::Mutex<Option<CallerRandom>>);

impl snow::resolvers::CryptoResolver for CallerRandomResolver {
    fn resolve_rng(&self) -> Option<Box<dyn snow::types::Random>> {
        let r = self.0.lock().ok()?.take()?;
        Some(Box::new(r))
    }
    fn resolve_dh(&self, _: &snow::params::DHChoice) -> Option<Box<dyn snow::types::Dh>> {
        None
    }
    fn resolve_hash(&self, _: &snow::params::HashChoice) -> Option<Box<dyn snow::types::Hash>> {
        None
    }
    fn resolve_cipher(
        &self,
        _: &snow::params::CipherChoice,
    ) -> Option<Box<dyn snow::types::Cipher>> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    #[test]
    fn both_sides_derive_the_same_first_chain() {
        let (a_ik, b_ik) = ([1u8; 32], [2u8; 32]);
        let b_noise = [4u8; 32];
        let b_pub = PublicKey::from(&StaticSecret::from(b_noise)).to_bytes();
        let mut alice =
            initiate(&mut OsRng, &a_ik, &[3u8; 32], &b_ik, &b_pub, Timestamp(9)).unwrap();
        let m = alice.encrypt(&mut OsRng, b"first").unwrap();
        let header = Header::decode(&m.header).unwrap();
        let acc = accept(&b_ik, &b_noise, &a_ik, &header).unwrap();
        assert_eq!(
            acc.remote_noise_key,
            PublicKey::from(&StaticSecret::from([3u8; 32])).to_bytes()
        );
        let mut bob = acc.session;
        assert_eq!(bob.id(), alice.id());
        assert_eq!(bob.created_at(), 9);
        assert_eq!(bob.decrypt_message(&m).unwrap(), b"first");
        // Swapped identity keys change the prologue and so the handshake.
        assert!(accept(&a_ik, &b_noise, &b_ik, &header).is_err());
    }
}
