//! Rendezvous protocol messages (draft section "Rendezvous Protocol"), carried in envelopes over
//! TLS 1.3.

use super::Endpoint;
use crate::identity::Identity;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

/// `REGISTER_REQUEST`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// The registering identity (verified on decode).
    pub identity: Identity,
    /// Where it accepts direct connections.
    pub endpoint: Endpoint,
    /// Requested lifetime.
    pub ttl_seconds: u32,
    /// **[gap]** When the request was made.
    pub timestamp: Timestamp,
    /// **[gap]** The server name the request is for.
    pub server_name: String,
    /// **[gap]** Home relays where senders can store for this identity.
    pub relays: Vec<RelayHint>,
    /// Signature (rendezvous-register context).
    #[serde(with = "crate::wire::bytes::fixed")]
    pub signature: [u8; 64],
}

/// **[gap]** A relay that keeps messages for an identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RelayHint {
    /// Where the relay listens.
    pub endpoint: Endpoint,
    /// The relay's identity key (its Noise identity is checked against it).
    #[serde(with = "crate::wire::bytes::fixed")]
    pub relay_key: [u8; 32],
}

/// `REGISTER_RESPONSE`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// Accepted.
    pub success: bool,
    /// When the registration lapses.
    pub expires_at: Timestamp,
    /// Renew after this many seconds.
    pub renewal_interval: u32,
    /// Why not.
    pub error_message: Option<String>,
}

/// `LOOKUP_REQUEST`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupRequest {
    /// One identity to find.
    pub target_identity: Option<serde_bytes::ByteArray<32>>,
    /// List registered peers instead.
    pub list_all: bool,
}

/// `PeerInfo`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The peer.
    pub identity: Identity,
    /// Where it listens.
    pub endpoint: Endpoint,
    /// Last registration or renewal.
    pub last_seen: Timestamp,
    /// Registration not expired.
    pub online: bool,
    /// **[gap]** Its home relays.
    pub relays: Vec<RelayHint>,
}

/// `LOOKUP_RESPONSE`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupResponse {
    /// Found peers.
    pub peers: Vec<PeerInfo>,
    /// Why not.
    pub error_message: Option<String>,
}

/// `LIST_SERVERS_REQUEST`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListServersRequest {}

/// `LIST_SERVERS_RESPONSE`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListServersResponse {
    /// Known servers.
    pub servers: Vec<Endpoint>,
    /// When the list was made.
    pub timestamp: Timestamp,
}
