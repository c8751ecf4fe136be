//! End-to-end messaging: the Double Ratchet, signed messages, first contact and sessions.
//!
//! This module owns everything between "the user typed a text for a contact" and "these bytes
//! may be handed to a Noise connection or a relay", and back. It does no network I/O and never
//! reads the clock; randomness comes from a caller-supplied [`rand_core::CryptoRngCore`], so a
//! seeded generator reproduces every byte (see `tests/vectors/ratchet_conversation.json`).
//! The only module that touches the [`Store`](crate::store::Store) is [`persist`], and it only
//! reads: every write is returned to the caller as a [`Batch`](crate::store::Batch).
//!
//! # Layout (one file per key role)
//! - [`root_key`]: the root key and the DH-ratchet step (X25519 + HKDF-SHA256).
//! - [`chain_key`]: sending/receiving chain keys (HMAC-SHA256 chain KDF).
//! - [`message_key`]: one-shot ChaCha20-Poly1305 message keys.
//! - [`receiver_chain`]: the current receiving chain and the bounded store of skipped keys.
//! - [`session`]: one Double Ratchet session ([`Session`]), unsigned encrypt/decrypt.
//! - [`establish`]: session establishment with a one-way Noise `X` message sealed to the
//!   peer's noise key (works while the peer is offline).
//! - [`header`]: the ratchet header ([`Header`], [`InitialHeader`]) and its exact encoding.
//! - [`message`]: the signed wire format of an end-to-end message ([`SignedMessage`]).
//! - [`seal`]: [`seal::seal`] and [`seal::open`], which join a [`Session`] and the identity
//!   signature into a [`SignedMessage`] and back.
//! - [`payload`]: the typed inner message ([`Payload`]: id, sender timestamp, content).
//! - [`persist`]: [`SessionManager`], which ties sessions to the store, picks the session to
//!   use (simultaneous initiation), de-duplicates, and returns batches to commit.
//!
//! # Flow
//! 1. Sender: [`SessionManager::encrypt`] loads (or, on first contact, creates with
//!    [`establish::initiate`]) the peer's session, advances the sending chain, encrypts the
//!    encoded [`Payload`], signs the message with the identity key and returns an [`Outgoing`]:
//!    the new session state as a `Batch` and the wire bytes. The caller commits the batch
//!    (durably) **before** the bytes leave the node ([`Outgoing::commit`]).
//! 2. Receiver: [`SessionManager::decrypt`] decodes, checks the recipient, verifies the
//!    signature (before any ratchet state is touched), finds or creates the session (a first
//!    message carries the Noise `X` handshake), decrypts on a copy, decodes the payload, checks
//!    the message id against the `Seen` tree, and returns an [`Incoming`] whose batch (new
//!    session state + `Seen` entry) the caller commits together with its history entry before
//!    showing or acknowledging the message.
//!
//! # Example
//! ```
//! use sremp::ratchet::{Content, LocalKeys, Payload, PeerKeys, SessionManager};
//! use sremp::store::{Batch, SledStore};
//! use x25519_dalek::{PublicKey, StaticSecret};
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut rng = rand_core::OsRng;
//! let (alice_id, bob_id) = (ed25519_dalek::SigningKey::from_bytes(&[1; 32]), ed25519_dalek::SigningKey::from_bytes(&[2; 32]));
//! let bob_noise = [7u8; 32];
//! let bob = PeerKeys {
//!     identity_key: bob_id.verifying_key().to_bytes(),
//!     noise_key: PublicKey::from(&StaticSecret::from(bob_noise)).to_bytes(),
//! };
//! let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
//! let (store_a, store_b) = (SledStore::open(dir_a.path())?, SledStore::open(dir_b.path())?);
//! let alice = SessionManager::new(LocalKeys::new(alice_id, [6u8; 32]));
//! let bob_mgr = SessionManager::new(LocalKeys::new(bob_id, bob_noise));
//!
//! // Alice: encrypt, commit the session state (plus her outbox entry), then send.
//! let msg = Payload::text(&mut rng, sremp::time::Timestamp(1), "hi Bob");
//! let wire = alice.encrypt(&store_a, &mut rng, &bob, &msg)?.commit(&store_a, Batch::new())?;
//!
//! // Bob (maybe much later, via a relay): decrypt, commit with his history entry, then show.
//! let incoming = bob_mgr.decrypt(&store_b, &wire)?;
//! sremp::store::Store::commit(&store_b, incoming.batch)?;
//! assert_eq!(incoming.payload.content, Content::Text("hi Bob".into()));
//! # Ok(()) }
//! ```
//!
//! # Limits
//! - [`MAX_MESSAGE_GAP`]: a message may skip at most this many keys of one chain (also for the
//!   end of the previous chain announced by `pn`); a larger gap is
//!   [`DecryptError::TooBigMessageGap`] and changes nothing.
//! - [`MAX_SKIPPED_KEYS`]: skipped message keys kept per session in total; the oldest are
//!   forgotten first.
//! - [`MAX_OLD_RATCHET_KEYS`]: remembered old remote ratchet keys (to classify late replays).
//! - [`MAX_PREVIOUS_SESSIONS`]: older sessions kept per peer to decrypt in-flight messages.
//! - [`MAX_MESSAGE_LEN`], [`payload::MAX_PAYLOAD_LEN`], [`persist::MAX_RECORD_LEN`]: decoder
//!   bounds, checked before allocating.
//!
//! # Invariants
//! - Ratchet keys are fresh X25519 keys; the identity key only signs and the noise key is only
//!   used inside the Noise `X` pattern.
//! - Every DH output is checked to be contributory; low-order keys are rejected.
//! - Nothing about a session changes unless a message verified, decrypted and decoded; all
//!   decryption works on copies that are committed on success only.
//! - A message key encrypts exactly one plaintext and is dropped (zeroized) once used.
//! - Secrets are `ZeroizeOnDrop` and no `Debug` impl prints one.
//!
//! # Not here
//! Transport (Noise XX connections, relays), contact trust (TOFU), clocks, retries, and the
//! outbox/history trees: those belong to the node, which extends the returned batches.
//!
//! The byte-exact description is the "End-to-end messages" section of `docs/PROTOCOL.md`.

pub mod chain_key;
pub mod establish;
pub mod header;
pub mod message;
pub mod message_key;
pub mod payload;
pub mod persist;
pub mod receiver_chain;
pub mod root_key;
pub mod seal;
pub mod session;

pub use establish::{accept, initiate};
pub use header::{Header, InitialHeader};
pub use message::SignedMessage;
pub use payload::{Content, MessageId, Payload, PayloadKind};
pub use persist::{Incoming, LocalKeys, Outgoing, PeerKeys, SessionManager};
pub use session::{RatchetMessage, Session};

/// Version byte of the end-to-end message format (first field of a [`SignedMessage`]).
pub const PROTOCOL_VERSION: u8 = 1;

/// Most message keys a single message may make us skip in one chain.
pub const MAX_MESSAGE_GAP: u32 = 2_000;

/// Most skipped message keys a session keeps in total; the oldest are dropped first.
pub const MAX_SKIPPED_KEYS: usize = 5_000;

/// Old remote ratchet keys a session remembers, to report late replays as such.
pub const MAX_OLD_RATCHET_KEYS: usize = 8;

/// Sessions kept per peer besides the active one (simultaneous initiation, re-establishment).
pub const MAX_PREVIOUS_SESSIONS: usize = 4;

/// Largest encoded [`SignedMessage`] accepted by the decoder.
pub const MAX_MESSAGE_LEN: usize = 1 << 20;

/// The bytes of an end-to-end message are not a valid encoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input is longer than the limit for this structure.
    #[error("encoding too large: {len} bytes (max {max})")]
    TooLarge {
        /// Bytes received.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The input ended early, had a wrong type marker, length or value.
    #[error("malformed encoding: {0}")]
    Malformed(&'static str),
    /// Bytes were left over after the structure.
    #[error("{0} trailing bytes")]
    TrailingData(usize),
    /// The version byte is not one we speak.
    #[error("unsupported message version {0}")]
    UnsupportedVersion(u64),
}

/// The one MessagePack reader ([`crate::wire::msgpack::Reader`]) reports in wire terms; the
/// ratchet keeps its own variants (and their texts) for the same failures.
impl From<crate::wire::DecodeError> for DecodeError {
    fn from(e: crate::wire::DecodeError) -> Self {
        use crate::wire::DecodeError as W;
        match e {
            W::TooLarge { len, max, .. } => DecodeError::TooLarge { len, max },
            W::TrailingData { extra } => DecodeError::TrailingData(extra),
            W::Truncated => DecodeError::Malformed("truncated"),
            W::Invalid { why, .. } => DecodeError::Malformed(why),
            W::TooDeep { .. } | W::ReservedMarker | W::Msgpack(_) => {
                DecodeError::Malformed("bad msgpack value")
            }
        }
    }
}

/// A received message was rejected. Nothing was changed. Crypto failures are deliberately
/// coarse ([`DecryptError::Decrypt`]); never echo details to the peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    /// The bytes are not a message.
    #[error("malformed message: {0}")]
    Decode(#[from] DecodeError),
    /// The message is addressed to another identity.
    #[error("message is addressed to another recipient")]
    WrongRecipient,
    /// The sender's identity signature does not verify (or the sender key is not a valid key).
    #[error("bad message signature")]
    BadSignature,
    /// A non-initial message for a session we do not have.
    #[error("no session for this message")]
    NoSession,
    /// A first message sealed to a noise key we do not hold (any more).
    #[error("first message sealed to an unknown noise key")]
    UnknownNoiseKey,
    /// Authenticated decryption (or the Noise `X` handshake) failed.
    #[error("decryption failed")]
    Decrypt,
    /// A DH input was a low-order point (non-contributory result).
    #[error("low-order key")]
    LowOrderKey,
    /// The message would make us skip more keys than allowed.
    #[error("message gap too big: {got} (max {max})")]
    TooBigMessageGap {
        /// Keys that would have to be skipped.
        got: u64,
        /// [`MAX_MESSAGE_GAP`].
        max: u64,
    },
    /// The key for this message was already used (a replay) or forgotten (beyond the bounds).
    #[error("message key already used or forgotten (chain index {index})")]
    Replayed {
        /// Chain index of the message.
        index: u32,
    },
    /// A message reuses a message key (same session, ratchet key and chain index) or a message
    /// id already received, but its bytes differ from the message received then: the sender
    /// may have encrypted two plaintexts under one key. Dropped, and worth a warning (an exact
    /// copy is [`DecryptError::Replayed`] or [`DecryptError::Duplicate`] instead).
    #[error("a message key or id already received came again with different content (possible key reuse)")]
    ConflictingReplay,
    /// A new remote ratchet key where the protocol does not allow one.
    #[error("unexpected ratchet key")]
    UnexpectedRatchetKey,
    /// The decrypted payload is not a valid [`Payload`].
    #[error("malformed payload: {0}")]
    Payload(DecodeError),
    /// A message with this id from this sender was already accepted.
    #[error("duplicate message id")]
    Duplicate,
}

/// A message could not be encrypted. Local, never caused by a peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncryptError {
    /// The sending chain reached its last index; a new session is needed.
    #[error("sending chain exhausted")]
    ChainExhausted,
    /// The peer's key (noise or ratchet) is a low-order point.
    #[error("peer key is a low-order point")]
    LowOrderKey,
    /// The Noise `X` handshake could not be built.
    #[error("noise handshake failed")]
    Noise,
    /// The session has no chain to send on (a corrupt or foreign record).
    #[error("session has no chain to send on")]
    NoChain,
    /// The plaintext is larger than a message may carry.
    #[error("plaintext too large: {len} bytes (max {max})")]
    TooLarge {
        /// Bytes given.
        len: usize,
        /// Limit.
        max: usize,
    },
}

/// A stored session record could not be read or written. Local.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// The record does not decode (version, encoding, bounds or key material).
    #[error("corrupt session record: {0}")]
    Corrupt(&'static str),
}

/// Why [`SessionManager::decrypt`] produced no message: the peer's fault or ours.
#[derive(Debug, thiserror::Error)]
pub enum ReceiveError {
    /// The message was rejected; drop it (and, if repeated, the peer). Nothing changed.
    #[error(transparent)]
    Rejected(#[from] DecryptError),
    /// A local failure (store, corrupt record); keep the message for a retry.
    #[error(transparent)]
    Local(#[from] SessionError),
}

/// Why [`SessionManager::encrypt`] produced no message. All local.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Encryption failed.
    #[error(transparent)]
    Encrypt(#[from] EncryptError),
    /// The store failed or a record is corrupt.
    #[error(transparent)]
    Local(#[from] SessionError),
}

/// HKDF-SHA256 with a 64-byte output, split into two 32-byte keys.
pub(crate) fn hkdf_64(
    salt: &[u8],
    ikm: &[u8],
    info: &[u8],
) -> Option<zeroize::Zeroizing<([u8; 32], [u8; 32])>> {
    let hk = hkdf::Hkdf::<sha2::Sha256>::new(Some(salt), ikm);
    let mut okm = zeroize::Zeroizing::new([0u8; 64]);
    hk.expand(info, &mut okm[..]).ok()?;
    let mut out = zeroize::Zeroizing::new(([0u8; 32], [0u8; 32]));
    let (a, b) = okm.split_at(32);
    out.0.copy_from_slice(a);
    out.1.copy_from_slice(b);
    Some(out)
}
