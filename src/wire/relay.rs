//! Relay protocol messages (draft section "Relay Protocol"), carried in envelopes over an
//! authenticated Noise connection between a client and a relay.

use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

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

/// **[gap]** First message from the relay after the Noise handshake: a fresh challenge.
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
    /// The client's identity key.
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

/// `STORE_MESSAGE`.
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
    /// Stored durably.
    pub success: bool,
    /// When.
    pub stored_at: Timestamp,
    /// Which message.
    pub message_id: u64,
    /// **[gap]** Why not, when `success` is false (an `ErrorCode` value).
    pub error: Option<u16>,
}

/// `RETRIEVE_MESSAGES`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetrieveMessages {
    /// Whose messages.
    #[serde(with = "crate::wire::bytes::fixed")]
    pub identity: [u8; 32],
    /// Signature (relay-auth context) bound to the session.
    #[serde(with = "crate::wire::bytes::fixed")]
    pub auth_signature: [u8; 64],
    /// Only messages stored after this time.
    pub since: Option<Timestamp>,
}

/// One stored message in a [`MessageBatch`].
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
}

/// `MESSAGE_BATCH`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageBatch {
    /// Messages in storage order.
    pub messages: Vec<StoredMessage>,
    /// More are waiting.
    pub has_more: bool,
}

/// `DELIVERY_CONFIRMATION`.
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
