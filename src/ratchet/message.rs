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

use super::session::Session;
use super::{DecodeError, DecryptError, EncryptError, MAX_MESSAGE_LEN, PROTOCOL_VERSION};
use crate::sig::{self, SigContext};
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_core::CryptoRngCore;

/// Length of the Noise `X` message in an initial header (e, encrypted s, encrypted seed).
pub const X_MESSAGE_LEN: usize = 32 + (32 + 16) + (32 + 16);
/// Largest encoded header.
pub const MAX_HEADER_LEN: usize = 256;

const KIND_NORMAL: u64 = 0;
const KIND_INITIAL: u64 = 1;

/// First-contact data repeated in every message of a session until the peer answers in it.
#[derive(Clone, PartialEq, Eq)]
pub struct InitialHeader {
    /// The recipient noise key the Noise `X` message was sealed to.
    pub recipient_noise_key: [u8; 32],
    /// The Noise `X` handshake message (`X_MESSAGE_LEN` bytes).
    pub handshake: Vec<u8>,
    /// When the initiator created the session (ms since the epoch, its clock): orders
    /// competing sessions (see [`persist`](super::persist)).
    pub created_at: u64,
}

impl std::fmt::Debug for InitialHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitialHeader")
            .field("recipient_noise_key", &short(&self.recipient_noise_key))
            .finish_non_exhaustive()
    }
}

/// The ratchet header of a message.
#[derive(Clone, PartialEq, Eq)]
pub struct Header {
    /// Session the message belongs to (first 16 bytes of the `X` handshake hash).
    pub session_id: [u8; 16],
    /// The sender's current ratchet public key.
    pub ratchet_key: [u8; 32],
    /// Number of messages in the sender's previous sending chain (`pn`).
    pub previous_counter: u32,
    /// Index of this message in its chain (`n`).
    pub counter: u32,
    /// Present while the sender has not yet heard from us in this session.
    pub initial: Option<InitialHeader>,
}

impl std::fmt::Debug for Header {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Header")
            .field("session_id", &hex::encode(self.session_id))
            .field("ratchet_key", &short(&self.ratchet_key))
            .field("pn", &self.previous_counter)
            .field("n", &self.counter)
            .field("initial", &self.initial.is_some())
            .finish()
    }
}

fn short(k: &[u8; 32]) -> String {
    hex::encode(&k[..4])
}

impl Header {
    /// The MessagePack encoding.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + X_MESSAGE_LEN);
        let len = if self.initial.is_some() { 8 } else { 5 };
        let kind = if self.initial.is_some() {
            KIND_INITIAL
        } else {
            KIND_NORMAL
        };
        // Writing to a Vec cannot fail.
        let _ = rmp::encode::write_array_len(&mut out, len);
        let _ = rmp::encode::write_uint(&mut out, kind);
        let _ = rmp::encode::write_bin(&mut out, &self.session_id);
        let _ = rmp::encode::write_bin(&mut out, &self.ratchet_key);
        let _ = rmp::encode::write_uint(&mut out, u64::from(self.previous_counter));
        let _ = rmp::encode::write_uint(&mut out, u64::from(self.counter));
        if let Some(i) = &self.initial {
            let _ = rmp::encode::write_bin(&mut out, &i.recipient_noise_key);
            let _ = rmp::encode::write_bin(&mut out, &i.handshake);
            let _ = rmp::encode::write_uint(&mut out, i.created_at);
        }
        out
    }

    /// Decodes a header; the whole input must be consumed.
    pub fn decode(bytes: &[u8]) -> Result<Header, DecodeError> {
        if bytes.len() > MAX_HEADER_LEN {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: MAX_HEADER_LEN,
            });
        }
        let mut r = Reader::new(bytes);
        let len = r.array_len()?;
        let kind = r.uint()?;
        let expected = match kind {
            KIND_NORMAL => 5,
            KIND_INITIAL => 8,
            _ => return Err(DecodeError::Malformed("unknown header kind")),
        };
        if len != expected {
            return Err(DecodeError::Malformed("header field count"));
        }
        let session_id = r.bin_array::<16>()?;
        let ratchet_key = r.bin_array::<32>()?;
        let previous_counter = r.u32()?;
        let counter = r.u32()?;
        let initial = if kind == KIND_INITIAL {
            let recipient_noise_key = r.bin_array::<32>()?;
            let handshake = r.bin(X_MESSAGE_LEN)?;
            if handshake.len() != X_MESSAGE_LEN {
                return Err(DecodeError::Malformed("handshake length"));
            }
            let created_at = r.uint()?;
            Some(InitialHeader {
                recipient_noise_key,
                handshake: handshake.to_vec(),
                created_at,
            })
        } else {
            None
        };
        r.finish()?;
        Ok(Header {
            session_id,
            ratchet_key,
            previous_counter,
            counter,
            initial,
        })
    }
}

/// A decoded end-to-end message, borrowing the received bytes.
#[derive(Clone, PartialEq, Eq)]
pub struct SignedMessage<'a> {
    /// Sender identity key (Ed25519).
    pub sender: [u8; 32],
    /// Recipient identity key (Ed25519).
    pub recipient: [u8; 32],
    /// Encoded [`Header`], exactly as received.
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

fn header_len_be(header: &[u8]) -> [u8; 4] {
    // Headers are bounded by MAX_HEADER_LEN, far below u32::MAX.
    u32::try_from(header.len())
        .unwrap_or(u32::MAX)
        .to_be_bytes()
}

fn encode_parts(
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

/// A strict MessagePack reader over a byte slice.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

fn malformed<E>(_: E) -> DecodeError {
    DecodeError::Malformed("bad msgpack value")
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    pub(crate) fn array_len(&mut self) -> Result<u32, DecodeError> {
        rmp::decode::read_array_len(&mut self.buf).map_err(malformed)
    }

    pub(crate) fn uint(&mut self) -> Result<u64, DecodeError> {
        rmp::decode::read_int::<u64, _>(&mut self.buf).map_err(malformed)
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        rmp::decode::read_int::<u32, _>(&mut self.buf).map_err(malformed)
    }

    /// A `bin` of at most `max` bytes.
    pub(crate) fn bin(&mut self, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = rmp::decode::read_bin_len(&mut self.buf).map_err(malformed)? as usize;
        self.take(len, max)
    }

    /// A `str` of at most `max` bytes.
    pub(crate) fn str(&mut self, max: usize) -> Result<&'a str, DecodeError> {
        let len = rmp::decode::read_str_len(&mut self.buf).map_err(malformed)? as usize;
        let bytes = self.take(len, max)?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::Malformed("invalid UTF-8"))
    }

    fn take(&mut self, len: usize, max: usize) -> Result<&'a [u8], DecodeError> {
        if len > max {
            return Err(DecodeError::TooLarge { len, max });
        }
        if len > self.buf.len() {
            return Err(DecodeError::Malformed("truncated"));
        }
        let (head, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(head)
    }

    pub(crate) fn bin_array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let b = self.bin(N)?;
        <[u8; N]>::try_from(b).map_err(|_| DecodeError::Malformed("wrong byte-string length"))
    }

    pub(crate) fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingData(self.buf.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(initial: bool) -> Header {
        Header {
            session_id: [1; 16],
            ratchet_key: [2; 32],
            previous_counter: 300,
            counter: 70_000,
            initial: initial.then(|| InitialHeader {
                recipient_noise_key: [3; 32],
                handshake: vec![4; X_MESSAGE_LEN],
                created_at: 1_700_000_000_000,
            }),
        }
    }

    #[test]
    fn header_round_trip() {
        for initial in [false, true] {
            let h = header(initial);
            let enc = h.encode();
            assert_eq!(Header::decode(&enc).unwrap(), h);
            let mut trailing = enc.clone();
            trailing.push(0);
            assert_eq!(Header::decode(&trailing), Err(DecodeError::TrailingData(1)));
            for cut in 0..enc.len() {
                assert!(Header::decode(&enc[..cut]).is_err());
            }
        }
    }

    #[test]
    fn normal_header_bytes() {
        let h = Header {
            session_id: [0; 16],
            ratchet_key: [0; 32],
            previous_counter: 1,
            counter: 2,
            initial: None,
        };
        let enc = h.encode();
        assert_eq!(&enc[..4], &[0x95, 0x00, 0xc4, 16]);
        assert_eq!(&enc[enc.len() - 2..], &[0x01, 0x02]);
        assert_eq!(enc.len(), 1 + 1 + 18 + 34 + 1 + 1);
    }

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
