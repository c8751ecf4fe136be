//! The typed inner message: what the ratchet encrypts.
//!
//! ```text
//! Payload = [message_id: bin(16), sent_at: uint (ms since the epoch, sender's clock),
//!            kind: uint, content]
//! kind 0 (text):          content = str (UTF-8)
//! kind 1 (receipt), 2 (file), 3 (group control): reserved, content = bin
//! kind 4..=255:           unknown to this version, content = bin, kept as opaque data
//! ```
//! The message id is 16 bytes from the sender's CSPRNG: unique without coordination, and the
//! receiver de-duplicates on (sender identity key, message id). It is unrelated to the
//! relay's `MessageId`.

use super::DecodeError;
use crate::time::Timestamp;
use crate::wire::msgpack::Reader;
use rand_core::CryptoRngCore;

/// Largest encoded payload (and so plaintext) a message may carry.
pub const MAX_PAYLOAD_LEN: usize = super::MAX_MESSAGE_LEN - 1024;

/// 16 random bytes naming a message for de-duplication.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    /// A fresh random id.
    pub fn random<R: CryptoRngCore + ?Sized>(rng: &mut R) -> Self {
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        MessageId(id)
    }
}

impl std::fmt::Debug for MessageId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MessageId({})", hex::encode(self.0))
    }
}

/// Payload kinds. The numbers are on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PayloadKind {
    /// A text message.
    Text = 0,
    /// Reserved: delivery/read receipts.
    Receipt = 1,
    /// Reserved: file transfer.
    File = 2,
    /// Reserved: group control.
    GroupControl = 3,
}

/// What a message says.
#[derive(Clone, PartialEq, Eq)]
pub enum Content {
    /// Kind 0: UTF-8 text.
    Text(String),
    /// Any other kind (1..=255): not interpreted by this version.
    Other {
        /// The kind byte (never 0).
        kind: u8,
        /// The content bytes.
        data: Vec<u8>,
    },
}

impl std::fmt::Debug for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Message contents are user data: print only the shape.
        match self {
            Content::Text(t) => write!(f, "Text({} bytes)", t.len()),
            Content::Other { kind, data } => write!(f, "Other(kind {kind}, {} bytes)", data.len()),
        }
    }
}

/// The inner message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    /// De-duplication id.
    pub id: MessageId,
    /// The sender's clock when the message was written.
    pub sent_at: Timestamp,
    /// The content.
    pub content: Content,
}

impl Payload {
    /// A text message with a fresh id.
    pub fn text<R: CryptoRngCore + ?Sized>(rng: &mut R, sent_at: Timestamp, text: &str) -> Self {
        Payload {
            id: MessageId::random(rng),
            sent_at,
            content: Content::Text(text.to_owned()),
        }
    }

    /// The kind number of the content.
    pub fn kind(&self) -> u8 {
        match &self.content {
            Content::Text(_) => PayloadKind::Text as u8,
            Content::Other { kind, .. } => *kind,
        }
    }

    /// The MessagePack encoding.
    pub fn encode(&self) -> Vec<u8> {
        let body_len = match &self.content {
            Content::Text(t) => t.len(),
            Content::Other { data, .. } => data.len(),
        };
        let mut out = Vec::with_capacity(body_len + 40);
        let _ = rmp::encode::write_array_len(&mut out, 4);
        let _ = rmp::encode::write_bin(&mut out, &self.id.0);
        let _ = rmp::encode::write_uint(&mut out, self.sent_at.0);
        let _ = rmp::encode::write_uint(&mut out, u64::from(self.kind()));
        match &self.content {
            Content::Text(t) => {
                let _ = rmp::encode::write_str(&mut out, t);
            }
            Content::Other { data, .. } => {
                let _ = rmp::encode::write_bin(&mut out, data);
            }
        }
        out
    }

    /// Decodes a payload; the whole input must be consumed.
    pub fn decode(bytes: &[u8]) -> Result<Payload, DecodeError> {
        if bytes.len() > MAX_PAYLOAD_LEN {
            return Err(DecodeError::TooLarge {
                len: bytes.len(),
                max: MAX_PAYLOAD_LEN,
            });
        }
        let mut r = Reader::new(bytes);
        if r.array_len()? != 4 {
            return Err(DecodeError::Malformed("payload field count"));
        }
        let id = MessageId(r.bin_array::<16>()?);
        let sent_at = Timestamp(r.uint()?);
        let kind = u8::try_from(r.uint()?).map_err(|_| DecodeError::Malformed("payload kind"))?;
        let content = if kind == PayloadKind::Text as u8 {
            Content::Text(r.str(MAX_PAYLOAD_LEN)?.to_owned())
        } else {
            Content::Other {
                kind,
                data: r.bin(MAX_PAYLOAD_LEN)?.to_vec(),
            }
        };
        r.finish()?;
        Ok(Payload {
            id,
            sent_at,
            content,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let p = Payload {
            id: MessageId([1; 16]),
            sent_at: Timestamp(1_700_000_000_000),
            content: Content::Text("héllo".into()),
        };
        assert_eq!(Payload::decode(&p.encode()).unwrap(), p);
        let r = Payload {
            id: MessageId([2; 16]),
            sent_at: Timestamp(0),
            content: Content::Other {
                kind: PayloadKind::Receipt as u8,
                data: vec![1, 2, 3],
            },
        };
        assert_eq!(Payload::decode(&r.encode()).unwrap(), r);
        let mut trailing = r.encode();
        trailing.push(0xc0);
        assert_eq!(
            Payload::decode(&trailing),
            Err(DecodeError::TrailingData(1))
        );
    }

    #[test]
    fn text_must_be_str_and_other_must_be_bin() {
        let bad = Payload {
            id: MessageId([2; 16]),
            sent_at: Timestamp(0),
            content: Content::Other {
                kind: 0,
                data: vec![b'a'],
            },
        };
        assert!(Payload::decode(&bad.encode()).is_err());
    }

    #[test]
    fn debug_hides_content() {
        let p = Payload::text(&mut rand_core::OsRng, Timestamp(1), "secret words");
        assert!(!format!("{p:?}").contains("secret"));
    }
}
