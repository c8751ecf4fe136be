//! The byte carriers under the Noise channel: TCP (tokio's sockets, used directly by the Noise
//! stream) and QUIC, plus the hole-punching core. This layer never imports `noise`: the Noise
//! channel sits on top of it and runs over either carrier (its QUIC shell is `noise::quic`).
//!
//! Both carriers carry the same thing: the version exchange, the Noise XX handshake with the
//! same identity checks, and then relay-protocol and direct envelopes. QUIC adds a UDP endpoint
//! (so NAT mappings can be learnt from relays, see [`crate::wire::relay`]'s observed-address
//! message) and binds the Noise prologue to the QUIC connection's TLS exporter; that binding is
//! why, after the handshake, QUIC carries the envelopes in `u32be(len) || envelope` frames under
//! its own packet protection, where TCP carries Noise transport frames.
//!
//! - [`binding`]: the QUIC Noise prologue bytes (pure).
//! - [`punch`]: hole punching coordinated through a relay (pure): signed candidate messages,
//!   one attempt's state machine, the per-contact policy.
//! - [`quic`]: the quinn endpoint (TLS configuration, accept, dial, exporter).

pub mod binding;
pub mod punch;
pub mod quic;

pub use quic::{QuicEndpoint, QuicError, QuicSettings};

// Which transport a connection runs on: defined beside the endpoints that name it, so `wire`
// does not import this shell.
pub use crate::wire::Transport;

/// `[quic]` in node-config.toml: the QUIC endpoint of `sremp run` and `sremp relay`.
#[derive(Clone, Debug, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct QuicConfig {
    /// Serve and dial QUIC. Default `true`. With `false` no UDP socket is opened and
    /// `quic://` endpoints are skipped when dialling.
    pub enabled: bool,
    /// UDP address of the endpoint. Default: the TCP listener's address and port number
    /// (`[listen] address`, with the port actually bound when it was 0); if that UDP port is
    /// taken, a free port is used and a warning logged. Port 0 picks a free port.
    pub listen: Option<std::net::SocketAddr>,
    /// Add `quic://<address>` to the endpoints advertised when `[listen] advertise` is empty.
    /// Default `false`: nodes built before QUIC refuse a card with a `quic://` endpoint, so
    /// turn it on once your contacts run QUIC-capable nodes (or list `quic://host:port` in
    /// `[listen] advertise` yourself).
    pub advertise: bool,
    /// A QUIC connection with no packets for this long is closed, in milliseconds.
    /// Default 30000.
    pub idle_timeout_ms: u64,
    /// Keep-alive interval (keeps NAT mappings open), in milliseconds. Default 10000; must be
    /// below `idle_timeout_ms`.
    pub keep_alive_ms: u64,
}

impl Default for QuicConfig {
    fn default() -> Self {
        QuicConfig {
            enabled: true,
            listen: None,
            advertise: false,
            idle_timeout_ms: 30_000,
            keep_alive_ms: 10_000,
        }
    }
}

/// A `[quic]` value out of range (the config loader reports it as an invalid config value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid config value {key}: {why}")]
pub struct QuicConfigError {
    /// The key.
    pub key: &'static str,
    /// Why.
    pub why: &'static str,
}

impl QuicConfig {
    /// The endpoint settings.
    pub fn settings(&self) -> QuicSettings {
        QuicSettings {
            idle_timeout: std::time::Duration::from_millis(self.idle_timeout_ms),
            keep_alive: std::time::Duration::from_millis(self.keep_alive_ms),
        }
    }

    /// Checks ranges.
    pub fn validate(&self) -> Result<(), QuicConfigError> {
        // quinn's idle timeout is a QUIC varint of milliseconds (< 2^62); a day is plenty.
        if self.idle_timeout_ms < 100 || self.idle_timeout_ms > 86_400_000 {
            return Err(QuicConfigError {
                key: "quic.idle_timeout_ms",
                why: "must be from 100 to 86400000",
            });
        }
        if self.keep_alive_ms == 0 || self.keep_alive_ms >= self.idle_timeout_ms {
            return Err(QuicConfigError {
                key: "quic.keep_alive_ms",
                why: "must be at least 1 and below quic.idle_timeout_ms",
            });
        }
        Ok(())
    }

    /// Binds the endpoint: `listen`, or `tcp`'s address (same port number, falling back to a
    /// free port when that UDP port is taken). `None` when disabled.
    pub fn bind(&self, tcp: std::net::SocketAddr) -> Result<Option<QuicEndpoint>, QuicError> {
        if !self.enabled {
            return Ok(None);
        }
        if let Some(addr) = self.listen {
            return QuicEndpoint::bind(addr, self.settings()).map(Some);
        }
        match QuicEndpoint::bind(tcp, self.settings()) {
            Ok(e) => Ok(Some(e)),
            Err(e) => {
                let any = std::net::SocketAddr::new(tcp.ip(), 0);
                let ep = QuicEndpoint::bind(any, self.settings())?;
                tracing::warn!(%tcp, error = %e, quic = ?ep.local_addr().ok(), "UDP port of the TCP listener is taken; QUIC uses another port");
                Ok(Some(ep))
            }
        }
    }
}
