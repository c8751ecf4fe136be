//! The envelope: every frame's plaintext is one `[kind: uint, body]` MessagePack array.
//!
//! `kind` says how to read `body` (a MessagePack array of the message's fields). Kinds this
//! implementation does not know decode as [`Envelope::Unknown`] so that newer peers can add
//! kinds without breaking older ones; the receiving shell decides whether to ignore them.
//!
//! Kind numbers (**[gap]**): `0x01..` transport, `0x10..` rendezvous, `0x20..`
//! ([`RELAY_KINDS`]) relay, `0x40..` direct node-to-node. The direct kinds `0x40`
//! (`DirectMessage`) and `0x41` (`DirectAck`) are reserved for a future relay-less fast path
//! (docs/PROTOCOL.md, Node): no 1.0 node sends them, so they have no type here and decode as
//! [`Envelope::Unknown`].

use super::file::{FileAck, FileData, FileNeed, FileOpen, FileSent};
use super::msgpack;
use super::relay::*;
use super::rendezvous::*;
use super::{chunk::Chunk, DecodeError, MAX_DEPTH};
use serde::{Deserialize, Serialize};

/// A protocol-level error reply.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorMsg {
    /// An `ErrorCode` value (see docs/PROTOCOL.md).
    pub code: u16,
    /// Human-readable detail (never secret material).
    pub message: String,
}

macro_rules! envelope {
    ($( $(#[$doc:meta])* $name:ident = $kind:literal ),* $(,)?) => {
        /// Every message kind.
        #[derive(Clone, Debug, PartialEq, Eq)]
        #[allow(clippy::large_enum_variant)]
        pub enum Envelope {
            $( $(#[$doc])* $name($name), )*
            /// A kind this implementation does not know.
            Unknown {
                /// Its number.
                kind: u16,
            },
        }

        /// Kind numbers.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u16)]
        pub enum Kind {
            $( $(#[$doc])* $name = $kind, )*
        }

        impl Envelope {
            /// The kind number.
            pub fn kind(&self) -> u16 {
                match self {
                    $( Envelope::$name(_) => $kind, )*
                    Envelope::Unknown { kind } => *kind,
                }
            }

            /// Appends the encoding to `out`.
            pub fn encode_into(&self, out: &mut Vec<u8>) {
                match self {
                    $( Envelope::$name(body) => {
                        write_head(out, $kind);
                        msgpack::encode_into(body, out);
                    } )*
                    Envelope::Unknown { kind } => {
                        write_head(out, *kind);
                        out.push(0xc0);
                    }
                }
            }

            fn decode_body(kind: u16, body: &[u8]) -> Result<Envelope, DecodeError> {
                Ok(match kind {
                    $( $kind => Envelope::$name(rmp_serde::from_slice(body)?), )*
                    other => Envelope::Unknown { kind: other },
                })
            }
        }

        $(
            impl From<$name> for Envelope {
                fn from(v: $name) -> Self { Envelope::$name(v) }
            }
        )*
    };
}

envelope! {
    /// A piece of an envelope too large for one frame.
    Chunk = 0x01,
    /// A protocol error reply.
    ErrorMsg = 0x02,
    /// `REGISTER_REQUEST`.
    RegisterRequest = 0x10,
    /// `REGISTER_RESPONSE`.
    RegisterResponse = 0x11,
    /// `LOOKUP_REQUEST`.
    LookupRequest = 0x12,
    /// `LOOKUP_RESPONSE`.
    LookupResponse = 0x13,
    /// `LIST_SERVERS_REQUEST`.
    ListServersRequest = 0x14,
    /// `LIST_SERVERS_RESPONSE`.
    ListServersResponse = 0x15,
    /// Relay challenge (first relay message).
    RelayChallenge = 0x20,
    /// `RELAY_REGISTER`.
    RelayRegister = 0x21,
    /// Registration accepted.
    RelayRegistered = 0x22,
    /// `STORE_MESSAGE`.
    StoreMessage = 0x23,
    /// `STORE_RESPONSE`.
    StoreResponse = 0x24,
    /// `RETRIEVE_MESSAGES`.
    RetrieveMessages = 0x25,
    /// `MESSAGE_BATCH`.
    MessageBatch = 0x26,
    /// `DELIVERY_CONFIRMATION`.
    DeliveryConfirmation = 0x27,
    /// Relay client hello (first relay message from the client).
    RelayHello = 0x28,
    /// A stored message pushed to its connected recipient.
    StoredMessage = 0x29,
    /// The sender received a forwarded delivery confirmation.
    ConfirmationAck = 0x2a,
    /// The recipient could not decrypt a message (no session): delete it, tell its sender.
    SessionReset = 0x2b,
    /// The source address a relay sees for a QUIC client.
    ObservedAddress = 0x2c,
    /// `FILE_OPEN`: opens the direct stream of a file transfer.
    FileOpen = 0x48,
    /// `FILE_NEED`: the chunks the recipient still lacks.
    FileNeed = 0x49,
    /// `FILE_DATA`: one encrypted chunk.
    FileData = 0x4a,
    /// `FILE_ACK`: progress and outcome.
    FileAck = 0x4b,
    /// `FILE_SENT`: end of a round of chunks.
    FileSent = 0x4c,
    /// A hole-punching message forwarded between two registered clients.
    PunchRelay = 0x2d,
}

/// The kind numbers assigned to relay traffic (**[gap]**): a node serves an inbound connection
/// whose first envelope has one of these kinds with its integrated relay.
pub const RELAY_KINDS: std::ops::RangeInclusive<u16> = 0x20..=0x2f;

fn write_head(out: &mut Vec<u8>, kind: u16) {
    out.push(0x92); // fixarray of 2
                    // Writing into a Vec cannot fail.
    let _ = rmp::encode::write_uint(out, u64::from(kind));
}

impl Envelope {
    /// True when the kind is in [`RELAY_KINDS`] (known or not).
    pub fn is_relay(&self) -> bool {
        RELAY_KINDS.contains(&self.kind())
    }

    /// The encoding as a new vector.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.encode_into(&mut out);
        out
    }

    /// Decodes one envelope spanning all of `bytes` (sizes and depth checked first).
    pub fn decode(bytes: &[u8]) -> Result<Envelope, DecodeError> {
        let n = msgpack::value_len(bytes, MAX_DEPTH)?;
        if n != bytes.len() {
            return Err(DecodeError::TrailingData {
                extra: bytes.len() - n,
            });
        }
        let mut rd = bytes;
        let len = rmp::decode::read_array_len(&mut rd).map_err(|_| DecodeError::Invalid {
            what: "envelope",
            why: "not an array",
        })?;
        if len != 2 {
            return Err(DecodeError::Invalid {
                what: "envelope",
                why: "must have exactly two elements",
            });
        }
        let kind: u16 = rmp::decode::read_int(&mut rd).map_err(|_| DecodeError::Invalid {
            what: "envelope kind",
            why: "not an integer from 0 to 65535",
        })?;
        Envelope::decode_body(kind, rd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::chunk::ChunkHeader;
    use proptest::prelude::*;

    #[test]
    fn known_bytes() {
        let e = Envelope::ConfirmationAck(ConfirmationAck {
            delivered_to: [7; 32],
            message_id: 5,
        });
        let mut want = vec![0x92, 0x2a, 0x92, 0xc4, 0x20];
        want.extend_from_slice(&[7; 32]);
        want.push(0x05);
        assert_eq!(e.encode(), want);
        assert_eq!(Envelope::decode(&e.encode()).unwrap(), e);
    }

    #[test]
    fn unknown_kind_is_kept_apart() {
        let bytes = [0x92, 0xcd, 0x12, 0x34, 0x93, 1, 2, 3];
        assert_eq!(
            Envelope::decode(&bytes).unwrap(),
            Envelope::Unknown { kind: 0x1234 }
        );
    }

    #[test]
    fn malformed_envelopes() {
        assert!(Envelope::decode(&[]).is_err());
        assert!(Envelope::decode(&[0x93, 1, 2, 3]).is_err());
        // Trailing bytes after a complete envelope.
        assert!(Envelope::decode(&[0x92, 0x40, 0x91, 0x05, 0x00]).is_err());
        // A known kind whose body does not decode (`CONFIRMATION_ACK` wants two fields).
        assert!(Envelope::decode(&[0x92, 0x2a, 0x91, 0xa1, b'x']).is_err());
        // The reserved direct kinds have no type here: well-formed, not interpreted.
        assert_eq!(
            Envelope::decode(&[0x92, 0x41, 0x91, 0x05]).unwrap(),
            Envelope::Unknown { kind: 0x41 }
        );
        assert!(Envelope::decode(&[0x92, 0xa1, b'x', 0x90]).is_err());
    }

    #[test]
    fn chunk_round_trip() {
        let e = Envelope::Chunk(Chunk {
            header: ChunkHeader {
                message_id: 9,
                chunk_index: 1,
                total_chunks: 3,
                chunk_size: 2,
            },
            payload: vec![0xaa, 0xbb],
        });
        assert_eq!(Envelope::decode(&e.encode()).unwrap(), e);
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..1024)) {
            let _ = Envelope::decode(&bytes);
        }

        #[test]
        fn arbitrary_bodies_behind_every_kind_never_panic(kind in 0u16..0x50, body in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut bytes = Vec::new();
            write_head(&mut bytes, kind);
            bytes.extend_from_slice(&body);
            let _ = Envelope::decode(&bytes);
        }

        #[test]
        fn store_message_round_trip(id in any::<u64>(), blob in proptest::collection::vec(any::<u8>(), 0..300)) {
            let e = Envelope::StoreMessage(StoreMessage {
                recipient: [3; 32], encrypted_blob: blob, sender_signature: [4; 64], message_id: id,
            });
            prop_assert_eq!(Envelope::decode(&e.encode()).unwrap(), e);
        }
    }
}
