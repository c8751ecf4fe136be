//! Transports under the Noise channel: TCP (in [`crate::noise::stream`]) and QUIC.
//!
//! Both carry the same thing: the version exchange, the Noise XX handshake with the same
//! identity checks, and then Noise transport frames with relay-protocol and direct envelopes.
//! QUIC adds a UDP endpoint (so NAT mappings can be learnt from relays, see
//! [`crate::wire::relay`]'s observed-address message) and binds the Noise prologue to the QUIC
//! connection's TLS exporter.
//!
//! - [`binding`]: the QUIC Noise prologue (pure).
//! - [`quic`]: the quinn endpoint and the async shell from QUIC connection to
//!   [`crate::noise::stream::PeerConnection`].

pub mod binding;
pub mod quic;

pub use quic::{QuicEndpoint, QuicError, QuicSettings};

/// Which transport a connection runs on.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// TCP.
    #[default]
    Tcp,
    /// QUIC over UDP.
    Quic,
}

impl Transport {
    /// Stable name: `"tcp"` or `"quic"`.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Quic => "quic",
        }
    }

    /// The path name of a direct message on this transport: `"direct-tcp"` or `"direct-quic"`.
    pub fn direct_path(self) -> &'static str {
        match self {
            Transport::Tcp => "direct-tcp",
            Transport::Quic => "direct-quic",
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
