//! Messages exchanged directly between two nodes over their Noise session.

use serde::{Deserialize, Serialize};

/// An end-to-end encrypted, signed message (its bytes are a `ratchet` message) sent directly.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectMessage {
    /// The sender's message id (de-duplication key together with the sender).
    pub message_id: u64,
    /// The end-to-end message.
    #[serde(with = "serde_bytes")]
    pub blob: Vec<u8>,
}

/// The recipient stored `message_id` durably.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirectAck {
    /// The acknowledged id.
    pub message_id: u64,
}
