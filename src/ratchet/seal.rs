//! Sealing and opening: a [`Session`] plus the identity signature make a [`SignedMessage`].
//!
//! - [`seal`]: encrypt in the session (advancing it), then sign
//!   `"SREMP-1 message\0" || version || sender || recipient || u32be(len(header)) || header ||
//!   ciphertext` with the local identity key, and encode.
//! - [`open`]: check the recipient and sender, verify the signature (before any session state is
//!   touched), decode the header, decrypt on a copy; the session changes only on success.
//!
//! The container format is [`super::message`], the header [`super::header`]; this file is the
//! only place that joins the signature to the ratchet. No I/O, no clock.

use super::header::Header;
use super::message::{encode_parts, header_len_be, SignedMessage};
use super::session::Session;
use super::{DecryptError, EncryptError, PROTOCOL_VERSION};
use crate::sig::{self, SigContext};
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;

/// Encrypts `plaintext` in `session` and signs the result with `identity` (the session's
/// local identity key). Returns the encoded [`SignedMessage`]. The session has advanced: it
/// must be stored before the bytes leave the node.
pub fn seal<R: CryptoRngCore + ?Sized>(
    session: &mut Session,
    identity: &SigningKey,
    rng: &mut R,
    plaintext: &[u8],
) -> Result<Vec<u8>, EncryptError> {
    let m = session.encrypt(rng, plaintext)?;
    let sender = *session.local_identity();
    let recipient = *session.remote_identity();
    let len = header_len_be(&m.header);
    let signature = sig::sign(
        identity,
        SigContext::Message,
        &[
            &[PROTOCOL_VERSION],
            &sender,
            &recipient,
            &len,
            &m.header,
            &m.ciphertext,
        ],
    );
    Ok(encode_parts(
        &sender,
        &recipient,
        &m.header,
        &m.ciphertext,
        &signature,
    ))
}

/// Verifies and decrypts a decoded message in `session`. `sender_key` is the session's remote
/// identity key, parsed. The signature is checked first; the session changes only on success.
pub fn open(
    session: &mut Session,
    sender_key: &VerifyingKey,
    msg: &SignedMessage<'_>,
) -> Result<Vec<u8>, DecryptError> {
    if &msg.recipient != session.local_identity() {
        return Err(DecryptError::WrongRecipient);
    }
    if &msg.sender != session.remote_identity() {
        return Err(DecryptError::BadSignature);
    }
    msg.verify(sender_key)?;
    let header = Header::decode(msg.header)?;
    session.decrypt(&header, msg.header, msg.ciphertext)
}
