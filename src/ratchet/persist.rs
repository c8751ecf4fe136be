//! Sessions in the store: [`SessionManager`].
//!
//! All sessions with one peer live in one record, `Tree::Sessions[peer identity key]`:
//! `0x01 || msgpack(PeerRecord)`, with `PeerRecord = [sessions: [SessionRecord]]` in
//! preference order (see docs/PROTOCOL.md for `SessionRecord`). The manager only
//! reads the store; every change comes back as a [`Batch`]:
//! - [`SessionManager::encrypt`] returns an [`Outgoing`]: commit its batch durably **before**
//!   the wire bytes leave the node (the node adds its outbox entry holding those bytes to the
//!   same batch, so a crash after the commit re-sends the same ciphertext and never re-uses
//!   the key for another plaintext). [`Outgoing::commit`] does exactly that.
//! - [`SessionManager::decrypt`] returns an [`Incoming`]: commit its batch (session state and
//!   the `Tree::Seen` de-duplication entry) together with the history entry before showing
//!   the message or acknowledging it to a relay. A crash before the commit leaves the state
//!   as it was, so the re-delivered message decrypts again; after it, the key is gone and the
//!   id is in `Seen`, so a re-delivery is rejected and never shown twice.
//!
//! Operations on one peer must be serialized by the caller (one at a time, each batch
//! committed before the next operation on that peer starts): two concurrent encrypts from the
//! same stored state would derive the same message key.
//!
//! Session choice (simultaneous initiation, re-establishment): a peer's sessions are ordered
//! by [`Session::priority`], `(created_at, session_id)`, where `created_at` is the
//! initiator's clock when it created the session, carried in every first-contact header and
//! covered by the signature. The most preferred session is the active one: we send on it, and
//! when a first-contact message for a session we did not know arrives we add it and re-sort.
//! Both peers see the same sessions (every first-contact header is repeated until answered)
//! and the same order, so two peers that start at once converge on one session, whatever the
//! arrival order; a peer that lost its state starts a session with a later `created_at` and
//! wins. The others are kept (at most [`MAX_PREVIOUS_SESSIONS`], least preferred dropped
//! first) so messages in flight on them still decrypt. Sending on a session the peer does
//! not have yet is fine: it carries the first-contact header until answered.

use super::establish::{accept, initiate};
use super::header::{Header, InitialHeader};
use super::message::SignedMessage;
use super::payload::{MessageId, Payload};
use super::receiver_chain::{ReceiverChain, SkippedKey, SkippedKeys};
use super::root_key::RootKey;
use super::seal;
use super::session::{SendingChain, Session};
use super::{chain_key::ChainKey, message_key::MessageKey};
use super::{
    DecryptError, ReceiveError, SendError, SessionError, MAX_OLD_RATCHET_KEYS,
    MAX_PREVIOUS_SESSIONS, MAX_SKIPPED_KEYS,
};
use crate::sig;
use crate::store::{Batch, Store, StoreError, Tree};
use ed25519_dalek::SigningKey;
use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

/// Largest stored session record accepted.
pub const MAX_RECORD_LEN: usize = 4 << 20;
/// First byte of a session record.
pub const RECORD_VERSION: u8 = 1;

/// Our private keys, as the manager needs them.
pub struct LocalKeys {
    identity: SigningKey,
    identity_key: [u8; 32],
    /// Noise private keys with their public keys, current first.
    noise: Vec<(Zeroizing<[u8; 32]>, [u8; 32])>,
}

impl std::fmt::Debug for LocalKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKeys")
            .field("identity_key", &hex::encode(&self.identity_key[..4]))
            .finish_non_exhaustive()
    }
}

impl LocalKeys {
    /// Our identity signing key and current noise private key.
    pub fn new(identity: SigningKey, noise_secret: [u8; 32]) -> Self {
        let identity_key = identity.verifying_key().to_bytes();
        let public = PublicKey::from(&StaticSecret::from(noise_secret)).to_bytes();
        LocalKeys {
            identity,
            identity_key,
            noise: vec![(Zeroizing::new(noise_secret), public)],
        }
    }

    /// Also accept first-contact messages sealed to an older (rotated) noise key.
    pub fn with_previous_noise_key(mut self, noise_secret: [u8; 32]) -> Self {
        let public = PublicKey::from(&StaticSecret::from(noise_secret)).to_bytes();
        self.noise.push((Zeroizing::new(noise_secret), public));
        self
    }

    /// Our identity public key.
    pub fn identity_key(&self) -> &[u8; 32] {
        &self.identity_key
    }
}

/// What we need to know about a peer to send to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerKeys {
    /// The peer's Ed25519 identity key.
    pub identity_key: [u8; 32],
    /// The peer's X25519 noise key (from its verified `Identity`), used only for first contact.
    pub noise_key: [u8; 32],
}

/// An encrypted message and the state change that must be durable before it is sent.
#[derive(Debug)]
pub struct Outgoing {
    batch: Batch,
    wire: Vec<u8>,
    message_id: MessageId,
}

impl Outgoing {
    /// The wire bytes, to be copied into the caller's outbox entry of the same batch. Do not
    /// send them before the batch is committed.
    pub fn wire(&self) -> &[u8] {
        &self.wire
    }

    /// The payload's message id.
    pub fn message_id(&self) -> MessageId {
        self.message_id
    }

    /// The batch and the bytes, for callers that group-commit; the same rule applies.
    pub fn into_parts(self) -> (Batch, Vec<u8>) {
        (self.batch, self.wire)
    }

    /// Commits (applies and flushes) the session batch together with `extra` (for example
    /// the outbox entry) and only then hands out the bytes to send.
    pub fn commit<S: Store + ?Sized>(self, store: &S, extra: Batch) -> Result<Vec<u8>, StoreError> {
        let mut batch = self.batch;
        batch.extend(extra);
        store.commit(batch)?;
        Ok(self.wire)
    }
}

/// A verified, decrypted, not yet seen message and the state change that accepts it.
#[derive(Debug)]
pub struct Incoming {
    /// The sender's identity key (the signature verified with it).
    pub sender: [u8; 32],
    /// The message.
    pub payload: Payload,
    /// For a message that created a new session: the sender's noise key from the Noise `X`
    /// message (compare it with the sender's `Identity` if known).
    pub first_contact: Option<[u8; 32]>,
    /// Session state and `Seen` entry. Extend with the history entry and commit atomically
    /// before showing or acknowledging the message.
    pub batch: Batch,
}

/// All sessions with one peer, most preferred first (see [`Session::priority`]).
#[derive(Clone, Debug, Default)]
pub struct PeerSessions {
    sessions: Vec<Session>,
}

impl PeerSessions {
    /// The session used for sending: the most preferred one.
    pub fn active(&self) -> Option<&Session> {
        self.sessions.first()
    }

    /// The other sessions, kept to decrypt messages still in flight, in preference order.
    pub fn previous(&self) -> &[Session] {
        self.sessions.get(1..).unwrap_or(&[])
    }

    fn find(&self, id: &[u8; 16]) -> Option<(usize, Session)> {
        self.sessions
            .iter()
            .position(|s| s.id() == id)
            .and_then(|i| self.sessions.get(i).map(|s| (i, s.clone())))
    }

    /// Puts `session` back at `slot`, or adds it as a new session.
    fn place(&mut self, slot: Option<usize>, session: Session) {
        match slot.and_then(|i| self.sessions.get_mut(i)) {
            Some(s) => *s = session,
            None => {
                self.sessions.push(session);
                self.sessions
                    .sort_by_key(|s| std::cmp::Reverse(s.priority()));
                self.sessions.truncate(1 + MAX_PREVIOUS_SESSIONS);
            }
        }
    }
}

/// Ties sessions to the store. Holds only our keys; all state is in the store.
#[derive(Debug)]
pub struct SessionManager {
    keys: LocalKeys,
}

impl SessionManager {
    /// A manager for our keys.
    pub fn new(keys: LocalKeys) -> Self {
        SessionManager { keys }
    }

    /// Our identity key.
    pub fn identity_key(&self) -> &[u8; 32] {
        &self.keys.identity_key
    }

    /// The stored sessions with `peer` (empty if none).
    pub fn sessions<S: Store + ?Sized>(
        &self,
        store: &S,
        peer: &[u8; 32],
    ) -> Result<PeerSessions, SessionError> {
        match store.get(Tree::Sessions, peer)? {
            None => Ok(PeerSessions::default()),
            Some(bytes) => {
                let bytes = Zeroizing::new(bytes);
                decode_record(&bytes, &self.keys.identity_key, peer)
            }
        }
    }

    /// Encrypts and signs `payload` for `peer`, creating a session (first contact) if there is
    /// none. See [`Outgoing`] for what the caller must commit before sending.
    pub fn encrypt<S: Store + ?Sized, R: CryptoRngCore + ?Sized>(
        &self,
        store: &S,
        rng: &mut R,
        peer: &PeerKeys,
        payload: &Payload,
    ) -> Result<Outgoing, SendError> {
        let mut sessions = self.sessions(store, &peer.identity_key)?;
        let (slot, mut session) = match sessions.active() {
            Some(s) => (Some(0), s.clone()),
            None => {
                let (noise, _) = self
                    .keys
                    .noise
                    .first()
                    .ok_or(SessionError::Corrupt("no noise key"))?;
                let ik = &self.keys.identity_key;
                let s = initiate(
                    rng,
                    ik,
                    noise,
                    &peer.identity_key,
                    &peer.noise_key,
                    payload.sent_at,
                )?;
                (None, s)
            }
        };
        let plaintext = Zeroizing::new(payload.encode());
        let wire = seal::seal(&mut session, &self.keys.identity, rng, &plaintext)?;
        sessions.place(slot, session);
        let mut batch = Batch::new();
        batch.put(
            Tree::Sessions,
            peer.identity_key.to_vec(),
            encode_record(&sessions),
        );
        Ok(Outgoing {
            batch,
            wire,
            message_id: payload.id,
        })
    }

    /// Verifies, decrypts and de-duplicates a received message. Nothing is written; see
    /// [`Incoming`] for what the caller must commit.
    pub fn decrypt<S: Store + ?Sized>(
        &self,
        store: &S,
        bytes: &[u8],
    ) -> Result<Incoming, ReceiveError> {
        let msg = SignedMessage::decode(bytes).map_err(DecryptError::from)?;
        if msg.recipient != self.keys.identity_key {
            return Err(DecryptError::WrongRecipient.into());
        }
        let sender_key = sig::verifying_key(&msg.sender).map_err(|_| DecryptError::BadSignature)?;
        msg.verify(&sender_key)?;
        let header = Header::decode(msg.header).map_err(DecryptError::from)?;
        let digest = message_digest(bytes);
        let used = used_key(&msg.sender, &header);
        // A signed message the session cannot take may still be one this node already read:
        // a late copy (another path, a re-send after a lost confirmation) whose session or
        // ratchet key has since been forgotten (more than `MAX_OLD_RATCHET_KEYS` rounds ago,
        // or an older session replaced) fails as `UnexpectedRatchetKey`, `Decrypt` or
        // `NoSession`, not as a replay. The used-key record of that exact (session, ratchet key,
        // counter) tells a quiet duplicate from a real mismatch, which would reset the session.
        let known_copy = |e: DecryptError| -> ReceiveError {
            let before = match store.get(Tree::Seen, &used) {
                Ok(b) => b,
                Err(err) => return SessionError::from(err).into(),
            };
            match before {
                Some(d) if d.as_slice() != digest.as_slice() => DecryptError::ConflictingReplay,
                Some(_) if !matches!(e, DecryptError::Replayed { .. }) => DecryptError::Duplicate,
                _ => e,
            }
            .into()
        };

        let mut sessions = self.sessions(store, &msg.sender)?;
        let (slot, mut session, first_contact) = match sessions.find(&header.session_id) {
            Some((slot, s)) => (Some(slot), s, None),
            None => {
                let initial = header
                    .initial
                    .as_ref()
                    .ok_or_else(|| known_copy(DecryptError::NoSession))?;
                let (noise, _) = self
                    .keys
                    .noise
                    .iter()
                    .find(|(_, public)| public == &initial.recipient_noise_key)
                    .ok_or_else(|| known_copy(DecryptError::UnknownNoiseKey))?;
                let accepted = accept(&self.keys.identity_key, noise, &msg.sender, &header)
                    .map_err(known_copy)?;
                (None, accepted.session, Some(accepted.remote_noise_key))
            }
        };
        let plaintext = match session.decrypt(&header, msg.header, msg.ciphertext) {
            Ok(p) => Zeroizing::new(p),
            Err(e) => return Err(known_copy(e)),
        };
        let payload = Payload::decode(&plaintext).map_err(DecryptError::Payload)?;
        // Under the id, the digest of the payload: the same payload re-encrypted (a re-send in
        // a new session) is a quiet duplicate; another payload under the same id is not.
        let payload_digest = message_digest(&plaintext);
        let seen = seen_key(&msg.sender, &payload.id);
        if let Some(before) = store.get(Tree::Seen, &seen).map_err(SessionError::from)? {
            // Value: sent_at (8 bytes) || digest of the payload (16 bytes; absent in older
            // records, which then cannot be compared).
            return Err(match before.get(8..) {
                Some(d) if d.len() == DIGEST_LEN && d != payload_digest.as_slice() => {
                    DecryptError::ConflictingReplay
                }
                _ => DecryptError::Duplicate,
            }
            .into());
        }
        sessions.place(slot, session);
        let mut batch = Batch::new();
        batch.put(
            Tree::Sessions,
            msg.sender.to_vec(),
            encode_record(&sessions),
        );
        let mut seen_value = payload.sent_at.0.to_be_bytes().to_vec();
        seen_value.extend_from_slice(&payload_digest);
        batch.put(Tree::Seen, seen, seen_value);
        batch.put(Tree::Seen, used, digest.to_vec());
        Ok(Incoming {
            sender: msg.sender,
            payload,
            first_contact,
            batch,
        })
    }

    /// A batch that deletes every session with `peer` (the next send starts a new session).
    pub fn forget(&self, peer: &[u8; 32]) -> Batch {
        let mut batch = Batch::new();
        batch.delete(Tree::Sessions, peer.to_vec());
        batch
    }
}

/// Bytes of a received message's digest kept to tell an exact copy from different content.
const DIGEST_LEN: usize = 16;

/// First [`DIGEST_LEN`] bytes of SHA-256 over the whole signed message.
fn message_digest(bytes: &[u8]) -> [u8; DIGEST_LEN] {
    use sha2::Digest;
    let full = sha2::Sha256::digest(bytes);
    let mut d = [0u8; DIGEST_LEN];
    d.copy_from_slice(full.get(..DIGEST_LEN).unwrap_or(&[0u8; DIGEST_LEN]));
    d
}

/// `Tree::Seen` key of a used message key: `'k'` || sender || session id || ratchet key ||
/// chain index (85 bytes, so never equal to a 48-byte [`seen_key`]); the value is the message
/// digest.
fn used_key(sender: &[u8; 32], header: &Header) -> Vec<u8> {
    let mut k = Vec::with_capacity(85);
    k.push(b'k');
    k.extend_from_slice(sender);
    k.extend_from_slice(&header.session_id);
    k.extend_from_slice(&header.ratchet_key);
    k.extend_from_slice(&header.counter.to_be_bytes());
    k
}

/// `Tree::Seen` key of a received message: sender identity key || message id.
pub fn seen_key(sender: &[u8; 32], id: &MessageId) -> Vec<u8> {
    let mut k = Vec::with_capacity(48);
    k.extend_from_slice(sender);
    k.extend_from_slice(&id.0);
    k
}

// ---- records ----------------------------------------------------------------------------

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct SendingRecord {
    #[serde(with = "serde_bytes")]
    secret: [u8; 32],
    #[serde(with = "serde_bytes")]
    public: [u8; 32],
    #[serde(with = "serde_bytes")]
    chain_key: [u8; 32],
    index: u32,
}

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct ReceivingRecord {
    #[serde(with = "serde_bytes")]
    ratchet_key: [u8; 32],
    #[serde(with = "serde_bytes")]
    chain_key: [u8; 32],
    index: u32,
}

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct SkippedRecord {
    #[serde(with = "serde_bytes")]
    ratchet_key: [u8; 32],
    index: u32,
    #[serde(with = "serde_bytes")]
    key: [u8; 32],
}

#[derive(Serialize, Deserialize)]
struct InitialRecord {
    #[serde(with = "serde_bytes")]
    recipient_noise_key: [u8; 32],
    #[serde(with = "serde_bytes")]
    handshake: Vec<u8>,
}

#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
struct SessionRecord {
    #[serde(with = "serde_bytes")]
    id: [u8; 16],
    created_at: u64,
    #[serde(with = "serde_bytes")]
    local_ik: [u8; 32],
    #[serde(with = "serde_bytes")]
    remote_ik: [u8; 32],
    initiator: bool,
    confirmed: bool,
    #[serde(with = "serde_bytes")]
    root: [u8; 32],
    sending: Option<SendingRecord>,
    receiving: Option<ReceivingRecord>,
    previous_counter: u32,
    skipped: Vec<SkippedRecord>,
    #[zeroize(skip)]
    old_ratchet_keys: Vec<serde_bytes::ByteArray<32>>,
    #[zeroize(skip)]
    initial: Option<InitialRecord>,
}

#[derive(Serialize, Deserialize)]
struct PeerRecord {
    sessions: Vec<SessionRecord>,
}

fn to_record(s: &Session) -> SessionRecord {
    SessionRecord {
        id: s.id,
        created_at: s.created_at,
        local_ik: s.local_ik,
        remote_ik: s.remote_ik,
        initiator: s.initiator,
        confirmed: s.confirmed,
        root: *s.root.as_bytes(),
        sending: s.sending.as_ref().map(|c| SendingRecord {
            secret: c.secret.to_bytes(),
            public: c.public,
            chain_key: *c.chain.key_bytes(),
            index: c.chain.index(),
        }),
        receiving: s.receiving.as_ref().map(|r| ReceivingRecord {
            ratchet_key: r.ratchet_key,
            chain_key: *r.chain.key_bytes(),
            index: r.chain.index(),
        }),
        previous_counter: s.previous_counter,
        skipped: s
            .skipped
            .iter()
            .map(|k| SkippedRecord {
                ratchet_key: k.ratchet_key,
                index: k.key.index(),
                key: *k.key.key_bytes(),
            })
            .collect(),
        old_ratchet_keys: s
            .old_ratchet_keys
            .iter()
            .map(|k| serde_bytes::ByteArray::new(*k))
            .collect(),
        initial: s.initial.as_ref().map(|i| InitialRecord {
            recipient_noise_key: i.recipient_noise_key,
            handshake: i.handshake.clone(),
        }),
    }
}

fn from_record(
    r: &SessionRecord,
    local_ik: &[u8; 32],
    remote_ik: &[u8; 32],
) -> Result<Session, SessionError> {
    if &r.local_ik != local_ik || &r.remote_ik != remote_ik {
        return Err(SessionError::Corrupt(
            "identity keys do not match the record key",
        ));
    }
    if r.sending.is_none() && r.receiving.is_none() {
        return Err(SessionError::Corrupt("session without chains"));
    }
    if r.skipped.len() > MAX_SKIPPED_KEYS || r.old_ratchet_keys.len() > MAX_OLD_RATCHET_KEYS {
        return Err(SessionError::Corrupt("session exceeds limits"));
    }
    let sending = match &r.sending {
        None => None,
        Some(c) => {
            let secret = StaticSecret::from(c.secret);
            if PublicKey::from(&secret).as_bytes() != &c.public {
                return Err(SessionError::Corrupt("ratchet key pair mismatch"));
            }
            Some(SendingChain {
                secret,
                public: c.public,
                chain: ChainKey::new(c.chain_key, c.index),
            })
        }
    };
    let mut skipped = SkippedKeys::default();
    for k in &r.skipped {
        skipped.push_raw(SkippedKey {
            ratchet_key: k.ratchet_key,
            key: MessageKey::new(k.key, k.index),
        });
    }
    let initial = match &r.initial {
        None => None,
        Some(i) if i.handshake.len() == super::header::X_MESSAGE_LEN => Some(InitialHeader {
            recipient_noise_key: i.recipient_noise_key,
            handshake: i.handshake.clone(),
            created_at: r.created_at,
        }),
        Some(_) => return Err(SessionError::Corrupt("bad first-contact handshake")),
    };
    Ok(Session {
        id: r.id,
        created_at: r.created_at,
        local_ik: r.local_ik,
        remote_ik: r.remote_ik,
        initiator: r.initiator,
        confirmed: r.confirmed,
        root: RootKey::new(r.root),
        sending,
        receiving: r
            .receiving
            .as_ref()
            .map(|c| ReceiverChain::new(c.ratchet_key, ChainKey::new(c.chain_key, c.index))),
        previous_counter: r.previous_counter,
        skipped,
        old_ratchet_keys: r
            .old_ratchet_keys
            .iter()
            .map(|k| k.into_array())
            .collect::<VecDeque<_>>(),
        initial,
    })
}

/// Encodes a peer's sessions as a store record.
fn encode_record(sessions: &PeerSessions) -> Vec<u8> {
    let record = PeerRecord {
        sessions: sessions.sessions.iter().map(to_record).collect(),
    };
    let mut out = vec![RECORD_VERSION];
    // Serializing plain structs into a Vec cannot fail.
    let _ = rmp_serde::encode::write(&mut out, &record);
    out
}

fn decode_record(
    bytes: &[u8],
    local_ik: &[u8; 32],
    remote_ik: &[u8; 32],
) -> Result<PeerSessions, SessionError> {
    if bytes.len() > MAX_RECORD_LEN {
        return Err(SessionError::Corrupt("record too large"));
    }
    let (version, mut rest) = bytes
        .split_first()
        .ok_or(SessionError::Corrupt("empty record"))?;
    if *version != RECORD_VERSION {
        return Err(SessionError::Corrupt("unknown record version"));
    }
    let record = {
        let mut de = rmp_serde::Deserializer::new(&mut rest);
        PeerRecord::deserialize(&mut de).map_err(|_| SessionError::Corrupt("undecodable record"))?
    };
    if !rest.is_empty() {
        return Err(SessionError::Corrupt("trailing bytes in record"));
    }
    if record.sessions.len() > 1 + MAX_PREVIOUS_SESSIONS {
        return Err(SessionError::Corrupt("too many sessions"));
    }
    let sessions = record
        .sessions
        .iter()
        .map(|r| from_record(r, local_ik, remote_ik))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PeerSessions { sessions })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::Timestamp;
    use rand_core::OsRng;

    #[test]
    fn record_round_trip_and_corruption() {
        let a_ik = [1u8; 32];
        let b_ik = [2u8; 32];
        let b_noise = PublicKey::from(&StaticSecret::from([4u8; 32])).to_bytes();
        let s = initiate(&mut OsRng, &a_ik, &[3u8; 32], &b_ik, &b_noise, Timestamp(5)).unwrap();
        let sessions = PeerSessions {
            sessions: vec![s.clone(), s],
        };
        let enc = encode_record(&sessions);
        let dec = decode_record(&enc, &a_ik, &b_ik).unwrap();
        assert_eq!(encode_record(&dec), enc);
        // Wrong owner, truncation, trailing bytes, wrong version: typed errors, no panic.
        assert!(decode_record(&enc, &b_ik, &a_ik).is_err());
        for cut in 0..enc.len() {
            assert!(decode_record(&enc[..cut], &a_ik, &b_ik).is_err());
        }
        let mut trailing = enc.clone();
        trailing.push(0);
        assert!(decode_record(&trailing, &a_ik, &b_ik).is_err());
        let mut v2 = enc.clone();
        v2[0] = 2;
        assert!(decode_record(&v2, &a_ik, &b_ik).is_err());
    }
}
