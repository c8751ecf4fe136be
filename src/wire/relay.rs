//! Relay protocol messages (draft section "Relay Protocol"), carried in envelopes over an
//! authenticated Noise connection between a client and a relay.
//!
//! Flow (details and the exact signed bytes in docs/PROTOCOL.md, section "Relay"):
//! 1. client → relay [`RelayHello`]; relay → client [`RelayChallenge`] (fresh nonce + offer).
//! 2. client → relay [`RelayRegister`] (signature over the nonce and the Noise handshake hash);
//!    relay → client [`RelayRegistered`] or an `ErrorMsg` with a [`RelayErrorCode`].
//! 3. Any number of [`StoreMessage`] → [`StoreResponse`], [`RetrieveMessages`] →
//!    [`MessageBatch`], [`DeliveryConfirmation`] (recipient → relay, and relay → sender), and
//!    [`ConfirmationAck`] (sender → relay), and [`SessionReset`] (recipient → relay → sender,
//!    in place of a confirmation for a message the recipient could not decrypt). The relay pushes [`StoredMessage`]s to a connected
//!    recipient as they are stored.
//!
//! Nothing here does I/O; sizes are bounded by the frame/chunk limits of the transport and by
//! the relay's [`RelayCapabilities`].

use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

/// Most messages a relay puts in one [`MessageBatch`], whatever the client asks for.
pub const MAX_BATCH_MESSAGES: u32 = 1000;

/// **[gap]** Error codes of relay refusals: the `code` of an `ErrorMsg`, or the `error` of a
/// failed [`StoreResponse`]. Each refusal concerns only the request (and, for `Unauthorized`
/// during registration, the connection) that caused it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum RelayErrorCode {
    /// A request other than `RELAY_HELLO`/`RELAY_REGISTER` before registration.
    NotRegistered = 0x2001,
    /// Bad registration signature (replayed, other session, wrong key), an identity that is not
    /// the Noise peer, a retrieval for someone else, or a stranger at an integrated relay.
    Unauthorized = 0x2002,
    /// A sender or confirmation signature does not verify.
    BadSignature = 0x2003,
    /// The blob is larger than `max_message_size`.
    TooLarge = 0x2004,
    /// The recipient's quota (messages or bytes) is full.
    QuotaFull = 0x2005,
    /// The identity's request rate is over its limit; retry later.
    RateLimited = 0x2006,
    /// A message that is not valid in the connection's current state.
    UnexpectedMessage = 0x2007,
    /// The relay could not write to its disk. Not the client's fault; retry later.
    StorageFailure = 0x2008,
    /// The relay is shutting down.
    ShuttingDown = 0x2009,
    /// The relay's disk is full: nothing was stored. Retry later or use another route; the
    /// relay keeps serving and resumes storing by itself when space returns.
    DiskFull = 0x200A,
}

impl RelayErrorCode {
    /// All codes.
    pub const ALL: [RelayErrorCode; 10] = [
        RelayErrorCode::NotRegistered,
        RelayErrorCode::Unauthorized,
        RelayErrorCode::BadSignature,
        RelayErrorCode::TooLarge,
        RelayErrorCode::QuotaFull,
        RelayErrorCode::RateLimited,
        RelayErrorCode::UnexpectedMessage,
        RelayErrorCode::StorageFailure,
        RelayErrorCode::ShuttingDown,
        RelayErrorCode::DiskFull,
    ];

    /// The number on the wire.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The code for a wire number, if known.
    pub fn from_code(code: u16) -> Option<RelayErrorCode> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }

    /// A stable lower-case name (logs, counters).
    pub fn name(self) -> &'static str {
        match self {
            RelayErrorCode::NotRegistered => "not_registered",
            RelayErrorCode::Unauthorized => "unauthorized",
            RelayErrorCode::BadSignature => "bad_signature",
            RelayErrorCode::TooLarge => "too_large",
            RelayErrorCode::QuotaFull => "quota_full",
            RelayErrorCode::RateLimited => "rate_limited",
            RelayErrorCode::UnexpectedMessage => "unexpected_message",
            RelayErrorCode::StorageFailure => "storage_failure",
            RelayErrorCode::ShuttingDown => "shutting_down",
            RelayErrorCode::DiskFull => "disk_full",
        }
    }
}

/// What a relay offers, sent to the client in [`RelayChallenge`] and [`RelayRegistered`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayCapabilities {
    /// Largest `encrypted_blob` accepted, in bytes.
    pub max_message_size: u32,
    /// How long an undelivered message is kept, in seconds.
    pub max_storage_duration: u64,
    /// Messages kept per recipient.
    pub quota_messages: u32,
    /// Bytes kept per recipient.
    pub quota_bytes: u64,
}

/// **[gap]** First message of a relay client after the Noise handshake. It lets a node that
/// serves both direct and relay traffic on one port tell the two apart.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayHello {
    /// Reserved feature bits; 0 in this version, ignored by the relay.
    pub features: u64,
}

/// **[gap]** The relay's answer to [`RelayHello`]: a fresh challenge and its offer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayChallenge {
    /// 32 random bytes, never reused.
    #[serde(with = "crate::wire::bytes::fixed")]
    pub nonce: [u8; 32],
    /// The relay's offer.
    pub capabilities: RelayCapabilities,
}

/// `RELAY_REGISTER`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayRegister {
    /// The client's identity key (must be the Noise peer's).
    #[serde(with = "crate::wire::bytes::fixed")]
    pub identity: [u8; 32],
    /// Signature (relay-auth context) over the challenge bound to the Noise session.
    #[serde(with = "crate::wire::bytes::fixed")]
    pub auth_signature: [u8; 64],
    /// What the client asks for (the relay answers with what it grants).
    pub capabilities: RelayCapabilities,
}

/// **[gap]** The relay accepted a `RELAY_REGISTER`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RelayRegistered {
    /// What the relay grants.
    pub capabilities: RelayCapabilities,
}

/// `STORE_MESSAGE`. The sender is the registered identity of the connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreMessage {
    /// Who the blob is for.
    #[serde(with = "crate::wire::bytes::fixed")]
    pub recipient: [u8; 32],
    /// The end-to-end encrypted message.
    #[serde(with = "serde_bytes")]
    pub encrypted_blob: Vec<u8>,
    /// The sender's signature (store-message context).
    #[serde(with = "crate::wire::bytes::fixed")]
    pub sender_signature: [u8; 64],
    /// Sender-chosen id, unique per sender.
    pub message_id: u64,
}

/// `STORE_RESPONSE`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreResponse {
    /// Stored durably (on disk, flushed) — or already stored earlier (a duplicate).
    pub success: bool,
    /// When the relay stored it (the first time, for a duplicate); 0 on failure.
    pub stored_at: Timestamp,
    /// Which message.
    pub message_id: u64,
    /// **[gap]** Why not, when `success` is false (a [`RelayErrorCode`] value).
    pub error: Option<u16>,
}

/// **[gap]** Position after which a retrieval continues (the last message of the previous page).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetrieveCursor {
    /// Sender of the last message seen.
    #[serde(with = "crate::wire::bytes::fixed")]
    pub sender: [u8; 32],
    /// Its id.
    pub message_id: u64,
}

/// `RETRIEVE_MESSAGES`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetrieveMessages {
    /// Whose messages (must be the registered identity).
    #[serde(with = "crate::wire::bytes::fixed")]
    pub identity: [u8; 32],
    /// Signature (relay-auth context) bound to the session.
    #[serde(with = "crate::wire::bytes::fixed")]
    pub auth_signature: [u8; 64],
    /// Only messages stored at or after this time.
    pub since: Option<Timestamp>,
    /// **[gap]** Continue after this message (paging); `nil` for the first page.
    pub after: Option<RetrieveCursor>,
    /// **[gap]** Most messages wanted; 0 or more than the relay's maximum means the maximum.
    pub limit: u32,
}

/// One stored message in a [`MessageBatch`], or pushed alone to a connected recipient.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// The sender's id.
    pub message_id: u64,
    /// The sender's identity key.
    #[serde(with = "crate::wire::bytes::fixed")]
    pub sender: [u8; 32],
    /// When the relay stored it.
    pub timestamp: Timestamp,
    /// The blob.
    #[serde(with = "serde_bytes")]
    pub encrypted_blob: Vec<u8>,
    /// **[gap]** The sender's `STORE_MESSAGE` signature, so the recipient can check it too.
    #[serde(with = "crate::wire::bytes::fixed")]
    pub sender_signature: [u8; 64],
}

/// `MESSAGE_BATCH`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageBatch {
    /// Messages in key order (sender, then message id).
    pub messages: Vec<StoredMessage>,
    /// More are waiting: ask again with `after` = the last message here.
    pub has_more: bool,
}

/// `DELIVERY_CONFIRMATION`, from the recipient to the relay and from the relay to the sender.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryConfirmation {
    /// The confirmed message.
    pub message_id: u64,
    /// **[gap]** The sender of the confirmed message (ids are unique per sender only).
    #[serde(with = "crate::wire::bytes::fixed")]
    pub sender: [u8; 32],
    /// The recipient who confirms.
    #[serde(with = "crate::wire::bytes::fixed")]
    pub delivered_to: [u8; 32],
    /// When.
    pub timestamp: Timestamp,
    /// The recipient's signature (delivery-confirmation context).
    #[serde(with = "crate::wire::bytes::fixed")]
    pub signature: [u8; 64],
}

/// **[gap]** The sender received a forwarded [`DeliveryConfirmation`]; the relay may forget it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfirmationAck {
    /// The `delivered_to` of the confirmation.
    #[serde(with = "crate::wire::bytes::fixed")]
    pub delivered_to: [u8; 32],
    /// Its `message_id`.
    pub message_id: u64,
}

/// **[gap]** `SESSION_RESET`: the recipient could not decrypt a stored message because it has no
/// matching ratchet state (lost state, restored from an older backup). Sent by the recipient
/// to the relay that held the message *instead of* a [`DeliveryConfirmation`]: the relay
/// deletes the message and forwards this notice to the sender if it is connected (it is not
/// kept for an absent sender). The sender verifies the signature against the recipient's
/// pinned identity, starts a new session and re-sends what the recipient has not confirmed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionReset {
    /// The message that could not be decrypted.
    pub message_id: u64,
    /// Its sender (who should reset the session).
    #[serde(with = "crate::wire::bytes::fixed")]
    pub sender: [u8; 32],
    /// The recipient who could not decrypt it (the signer).
    #[serde(with = "crate::wire::bytes::fixed")]
    pub recipient: [u8; 32],
    /// When (the recipient's clock).
    pub timestamp: Timestamp,
    /// Why: a [`ResetReason`] value.
    pub reason: u8,
    /// SHA-256 of the `encrypted_blob` that could not be decrypted, so the sender can tell a
    /// copy sent before an earlier reset (just store the current copy again) from its current
    /// copy (start a new session).
    #[serde(with = "crate::wire::bytes::fixed")]
    pub digest: [u8; 32],
    /// The recipient's signature (session-reset context).
    #[serde(with = "crate::wire::bytes::fixed")]
    pub signature: [u8; 64],
    /// What the recipient last recorded from `sender`: the `message_id` of the newest message
    /// from `sender` in its history, 0 when it has none. The sender re-sends, besides what is
    /// unconfirmed, the messages after that one that it still keeps (a recipient restored from
    /// an older backup lost messages it had confirmed). An optional eighth array element:
    /// notices without it (`None`) still parse and verify, and mean "re-send what is unconfirmed".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_recorded: Option<u64>,
}

/// **[gap]** Why a [`SessionReset`] was sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ResetReason {
    /// No session with this id and no first-contact header (or one sealed to a noise key we
    /// do not hold).
    NoSession = 1,
    /// A session with this id exists but its state cannot decrypt the (validly signed)
    /// message: the recipient's ratchet state is older than the sender's.
    StateMismatch = 2,
}

impl ResetReason {
    /// The reason for a wire number (unknown numbers are treated like `StateMismatch`).
    pub fn from_u8(v: u8) -> ResetReason {
        if v == ResetReason::NoSession as u8 {
            ResetReason::NoSession
        } else {
            ResetReason::StateMismatch
        }
    }

    /// A stable lower-case name (logs, history lines).
    pub fn name(self) -> &'static str {
        match self {
            ResetReason::NoSession => "no session",
            ResetReason::StateMismatch => "ratchet state mismatch",
        }
    }
}

/// **[gap]** `OBSERVED_ADDRESS` (relay → client, QUIC connections only): the UDP source
/// address and port the relay sees for this client, i.e. the client's public mapping when it
/// is behind a NAT. Sent once, right after the Noise handshake and before `RELAY_CHALLENGE`.
/// Wire: `[ip: bin(4 | 16), port: u16]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObservedAddress {
    /// IPv4 (4 bytes) or IPv6 (16 bytes), network order.
    #[serde(with = "serde_bytes")]
    pub ip: Vec<u8>,
    /// The UDP port.
    pub port: u16,
}

impl ObservedAddress {
    /// The message for `addr` (an IPv4-mapped IPv6 address is sent as IPv4).
    pub fn new(addr: std::net::SocketAddr) -> Self {
        let ip = match addr.ip().to_canonical() {
            std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
            std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        ObservedAddress {
            ip,
            port: addr.port(),
        }
    }

    /// The address, or `None` when `ip` is neither 4 nor 16 bytes.
    pub fn socket_addr(&self) -> Option<std::net::SocketAddr> {
        let ip: std::net::IpAddr = if let Ok(b) = <[u8; 4]>::try_from(self.ip.as_slice()) {
            b.into()
        } else if let Ok(b) = <[u8; 16]>::try_from(self.ip.as_slice()) {
            b.into()
        } else {
            return None;
        };
        Some(std::net::SocketAddr::new(ip, self.port))
    }
}

/// **[gap]** `PUNCH_RELAY`: a hole-punching message (`transport::punch::PunchMessage`, signed
/// by its author) forwarded by an open relay between two registered clients. From a client,
/// `peer` is the recipient; from the relay, `peer` is the registered sender. Wire:
/// `[peer: bin(32), body: bin]`, `body` at most `transport::punch::MAX_MESSAGE_LEN` bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PunchRelay {
    /// The recipient (client → relay) or the sender (relay → client).
    #[serde(with = "crate::wire::bytes::fixed")]
    pub peer: [u8; 32],
    /// The signed punch message.
    #[serde(with = "serde_bytes")]
    pub body: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observed_address_round_trip() {
        for a in [
            "203.0.113.7:40000",
            "[2001:db8::1]:9",
            "[::ffff:10.0.0.1]:5",
        ] {
            let addr: std::net::SocketAddr = a.parse().unwrap();
            let env = crate::wire::Envelope::ObservedAddress(ObservedAddress::new(addr));
            let back = crate::wire::Envelope::decode(&env.encode()).unwrap();
            let crate::wire::Envelope::ObservedAddress(o) = back else {
                panic!("wrong kind")
            };
            assert_eq!(
                o.socket_addr().map(|s| (s.ip().to_canonical(), s.port())),
                Some((addr.ip().to_canonical(), addr.port()))
            );
        }
        assert_eq!(
            crate::wire::Envelope::ObservedAddress(ObservedAddress::new(
                "203.0.113.7:40000".parse().unwrap()
            ))
            .encode(),
            vec![0x92, 0x2c, 0x92, 0xc4, 4, 203, 0, 113, 7, 0xcd, 0x9c, 0x40]
        );
        let bad = ObservedAddress {
            ip: vec![1, 2, 3],
            port: 1,
        };
        assert_eq!(bad.socket_addr(), None);
    }
    use crate::wire::Envelope;
    use proptest::prelude::*;

    #[test]
    fn error_codes_round_trip() {
        for c in RelayErrorCode::ALL {
            assert_eq!(RelayErrorCode::from_code(c.code()), Some(c));
        }
        assert_eq!(RelayErrorCode::from_code(7), None);
    }

    proptest! {
        #[test]
        fn relay_kinds_round_trip(id in any::<u64>(), t in any::<u64>(), blob in proptest::collection::vec(any::<u8>(), 0..200), lim in any::<u32>()) {
            let envs = vec![
                Envelope::RelayHello(RelayHello { features: t }),
                Envelope::RetrieveMessages(RetrieveMessages {
                    identity: [1; 32], auth_signature: [2; 64], since: Some(Timestamp(t)),
                    after: Some(RetrieveCursor { sender: [3; 32], message_id: id }), limit: lim,
                }),
                Envelope::MessageBatch(MessageBatch { messages: vec![StoredMessage {
                    message_id: id, sender: [4; 32], timestamp: Timestamp(t),
                    encrypted_blob: blob.clone(), sender_signature: [5; 64],
                }], has_more: true }),
                Envelope::StoredMessage(StoredMessage {
                    message_id: id, sender: [4; 32], timestamp: Timestamp(t),
                    encrypted_blob: blob, sender_signature: [5; 64],
                }),
                Envelope::ConfirmationAck(ConfirmationAck { delivered_to: [6; 32], message_id: id }),
                Envelope::SessionReset(SessionReset {
                    message_id: id, sender: [7; 32], recipient: [8; 32], timestamp: Timestamp(t),
                    reason: 1, digest: [10; 32], signature: [9; 64], last_recorded: None,
                }),
                Envelope::SessionReset(SessionReset {
                    message_id: id, sender: [7; 32], recipient: [8; 32], timestamp: Timestamp(t),
                    reason: 2, digest: [10; 32], signature: [9; 64], last_recorded: Some(lim.into()),
                }),
                Envelope::StoreResponse(StoreResponse { success: false, stored_at: Timestamp(t), message_id: id, error: Some(0x2005) }),
            ];
            for e in envs {
                prop_assert_eq!(Envelope::decode(&e.encode()).unwrap(), e);
            }
        }
    }
}
