//! The signed wire format of an end-to-end message.
//!
//! ```text
//! SignedMessage = [version: uint, sender: bin(32), recipient: bin(32),
//!                  header: bin, ciphertext: bin, signature: bin(64)]
//! Header        = [0, session_id: bin(16), ratchet_key: bin(32), pn: uint, n: uint]
//!               | [1, session_id: bin(16), ratchet_key: bin(32), pn: uint, n: uint,
//!                  recipient_noise_key: bin(32), handshake: bin(128), created_at: uint]
//! ```
//! The header travels as the exact bytes of its own MessagePack encoding inside `header`, so
//! the AEAD associated data and the signature cover the bytes received, never a re-encoding.
//!
//! Signature (Ed25519 identity key of `sender`, [`SigContext::Message`]) over
//! `"SREMP-1 message\0" || version(1 byte) || sender || recipient || u32be(len(header)) ||
//! header || ciphertext`. It is verified before any session state is looked at.
//!
//! The header inside is [`super::header`]; encrypting into and decrypting out of a session is
//! [`super::seal`]. This file is only the signed container: decode, encode, verify.

use super::header::MAX_HEADER_LEN;
use super::{DecodeError, DecryptError, MAX_MESSAGE_LEN, PROTOCOL_VERSION};
use crate::sig::{self, SigContext};
use crate::wire::msgpack::Reader;
use ed25519_dalek::VerifyingKey;

/// A decoded end-to-end message, borrowing the received bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedMessage<'a> {
    /// Sender identity key (Ed25519).
    pub sender: [u8; 32],
    /// Recipient identity key (Ed25519).
    pub recipient: [u8; 32],
    /// Encoded [`Header`](super::Header), exactly as received.
    pub header: &'a [u8],
    /// AEAD ciphertext of the encoded [`Payload`](super::Payload).
    pub ciphertext: &'a [u8],
    /// Sender's signature.
    pub signature: [u8; 64],
}

impl std::fmt::Debug for SignedMessage<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedMessage")
            .field("sender", &short(&self.sender))
            .field("recipient", &short(&self.recipient))
            .field("header_len", &self.header.len())
            .field("ciphertext_len", &self.ciphertext.len())
            .finish_non_exhaustive()
    }
}

impl<'a> SignedMessage<'a> {
    /// Decodes a message; the whole input must be consumed.
    pub fn decode(bytes: &'a [u8]) -> Result<Self, DecodeError> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: MAX_MESSAGE_LEN,
            });
        }
        let mut r = Reader::new(bytes);
        if r.array_len()? != 6 {
            return Err(DecodeError::Malformed("message field count"));
        }
        let version = r.uint()?;
        if version != u64::from(PROTOCOL_VERSION) {
            return Err(DecodeError::UnsupportedVersion(version));
        }
        let sender = r.bin_array::<32>()?;
        let recipient = r.bin_array::<32>()?;
        let header = r.bin(MAX_HEADER_LEN)?;
        let ciphertext = r.bin(MAX_MESSAGE_LEN)?;
        let signature = r.bin_array::<64>()?;
        r.finish()?;
        Ok(SignedMessage {
            sender,
            recipient,
            header,
            ciphertext,
            signature,
        })
    }

    /// The MessagePack encoding.
    pub fn encode(&self) -> Vec<u8> {
        encode_parts(
            &self.sender,
            &self.recipient,
            self.header,
            self.ciphertext,
            &self.signature,
        )
    }

    /// Verifies the sender's signature with `sender_key` (which must be `self.sender`).
    pub fn verify(&self, sender_key: &VerifyingKey) -> Result<(), DecryptError> {
        if sender_key.as_bytes() != &self.sender {
            return Err(DecryptError::BadSignature);
        }
        let len = header_len_be(self.header);
        sig::verify(
            sender_key,
            SigContext::Message,
            &[
                &[PROTOCOL_VERSION],
                &self.sender,
                &self.recipient,
                &len,
                self.header,
                self.ciphertext,
            ],
            &self.signature,
        )
        .map_err(|_| DecryptError::BadSignature)
    }
}

/// The first 4 bytes of a key in hex, for `Debug` output.
pub(super) fn short(k: &[u8; 32]) -> String {
    hex::encode(k.get(..4).unwrap_or_default())
}

pub(super) fn header_len_be(header: &[u8]) -> [u8; 4] {
    // Headers are bounded by MAX_HEADER_LEN, far below u32::MAX.
    u32::try_from(header.len())
        .unwrap_or(u32::MAX)
        .to_be_bytes()
}

pub(super) fn encode_parts(
    sender: &[u8; 32],
    recipient: &[u8; 32],
    header: &[u8],
    ciphertext: &[u8],
    signature: &[u8; 64],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(header.len() + ciphertext.len() + 150);
    let _ = rmp::encode::write_array_len(&mut out, 6);
    let _ = rmp::encode::write_uint(&mut out, u64::from(PROTOCOL_VERSION));
    let _ = rmp::encode::write_bin(&mut out, sender);
    let _ = rmp::encode::write_bin(&mut out, recipient);
    let _ = rmp::encode::write_bin(&mut out, header);
    let _ = rmp::encode::write_bin(&mut out, ciphertext);
    let _ = rmp::encode::write_bin(&mut out, signature);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_round_trip_and_limits() {
        let m = SignedMessage {
            sender: [5; 32],
            recipient: [6; 32],
            header: &[7; 10],
            ciphertext: &[8; 100],
            signature: [9; 64],
        };
        let enc = m.encode();
        assert_eq!(SignedMessage::decode(&enc).unwrap(), m);
        let mut v2 = enc.clone();
        v2[1] = 2;
        assert_eq!(
            SignedMessage::decode(&v2),
            Err(DecodeError::UnsupportedVersion(2))
        );
        let big = vec![0u8; MAX_MESSAGE_LEN + 1];
        assert!(matches!(
            SignedMessage::decode(&big),
            Err(DecodeError::TooLarge { .. })
        ));
    }
}
