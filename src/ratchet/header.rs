//! The ratchet header of an end-to-end message, and its exact MessagePack encoding.
//!
//! ```text
//! Header = [0, session_id: bin(16), ratchet_key: bin(32), pn: uint, n: uint]
//!        | [1, session_id: bin(16), ratchet_key: bin(32), pn: uint, n: uint,
//!           recipient_noise_key: bin(32), handshake: bin(128), created_at: uint]
//! ```
//! The header travels as the exact bytes of this encoding inside a
//! [`SignedMessage`](super::SignedMessage), so the AEAD associated data and the signature cover
//! the bytes received, never a re-encoding. Decoding is bounded by [`MAX_HEADER_LEN`] and
//! refuses trailing bytes. Pure data: no keys, no I/O.

use super::message::short;
use super::DecodeError;
use crate::wire::msgpack::Reader;

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
}
