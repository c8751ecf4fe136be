//! Rendezvous: discovery of peers (and of other rendezvous servers) over TLS 1.3.
//!
//! What it owns: the registry core ([`core`]), server lists and gossip merging ([`gossip`]),
//! TLS configuration and the localnet CA ([`tls`]), the async server ([`server`]), the client
//! and the node's background registrar ([`client`]), discovery for people (`sremp discover`:
//! [`discover`]), DNS SRV bootstrap ([`dns`]), and the `[rendezvous]` configuration.
//! The byte-exact protocol is docs/PROTOCOL.md, section "Rendezvous".
//!
//! Flow on one connection:
//! 1. TCP, then a TLS 1.3 handshake; the client validates the server certificate against its
//!    configured CA file or the system roots (ALPN `sremp-rendezvous/1`).
//! 2. Both sides send the 7-byte SREMP version header inside TLS.
//! 3. Request/response frames (`u16be(len) || envelope`), one reply per request, in order:
//!    `REGISTER_REQUEST` (TTL 0 withdraws) → `REGISTER_RESPONSE`; `LOOKUP_REQUEST` →
//!    `LOOKUP_RESPONSE`; `LIST_SERVERS_REQUEST` → `LIST_SERVERS_RESPONSE`; any refusal →
//!    `ErrorMsg` with a [`crate::wire::rendezvous::RendezvousErrorCode`].
//!
//! A registration is signed by the identity it names over the TLS exporter value of the
//! connection, the server's name, the identity, endpoint, TTL, timestamp and relays, so it
//! cannot be forged, replayed on another connection, or taken to another server; timestamps
//! strictly increase within a connection and must be within the server's clock skew.
//!
//! Limits (each refused with its own code while other clients are served): registrations in
//! total and per identity, requests per second per client address, request size, connections
//! in total and per address, and an idle timeout. A forged identity and a bad request signature
//! get the same answer after the same work.
//!
//! What it does not do: it never learns message content or contacts; it does not do NAT
//! traversal. DNS-based bootstrap (SRV records, [`dns`]) only adds candidate servers; DNS
//! is not trusted beyond that, the TLS certificate of the SRV target is.
//!
//! ```no_run
//! # async fn f(user: std::sync::Arc<sremp::identity::UserIdentity>) -> Result<(), sremp::Error> {
//! use sremp::rendezvous::client::{spawn_registrar, RegistrarSettings};
//! let rv = sremp::rendezvous::RendezvousConfig::default();
//! let settings = RegistrarSettings::from_config(&rv, "/var/lib/sremp".into())?;
//! let (stop, rx) = tokio::sync::watch::channel(false);
//! let ep: sremp::wire::Endpoint = "203.0.113.7:7480".parse()?;
//! let handle = spawn_registrar(settings, user, vec![ep], Vec::new(), rx);
//! // ... later, on shutdown: withdraws the registrations.
//! let _ = stop.send(true);
//! let _ = handle.join.await;
//! # Ok(()) }
//! ```

pub mod client;
pub mod core;
pub mod discover;
pub mod dns;
pub mod gossip;
pub mod server;
pub mod tls;

use crate::wire::rendezvous::{RendezvousErrorCode, ServerEntry};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use client::Client;
pub use server::{Clock, Server, ServerHandle};

/// Why a rendezvous operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RendezvousError {
    /// A certificate or key file could not be used.
    #[error("TLS certificates {path}: {why}")]
    Certificates {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// Making a localnet CA or certificate failed.
    #[error("certificate generation failed: {0}")]
    CertGen(String),
    /// A `[rendezvous]` setting is missing or out of range.
    #[error("invalid config value rendezvous.{key}: {why}")]
    Config {
        /// The key.
        key: &'static str,
        /// Why.
        why: String,
    },
    /// Local I/O (binding, files).
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// The TCP connection to a server failed.
    #[error("cannot connect to rendezvous server {server}: {source}")]
    Connect {
        /// The server.
        server: String,
        /// Why.
        source: std::io::Error,
    },
    /// The server's certificate is not valid for its name under our trust roots.
    #[error("rendezvous server {server} presented an untrusted certificate: {why}")]
    UntrustedCertificate {
        /// The server.
        server: String,
        /// What the verifier said.
        why: String,
    },
    /// The TLS handshake or version exchange failed.
    #[error("handshake with rendezvous server {server} failed: {why}")]
    Handshake {
        /// The server.
        server: String,
        /// Why.
        why: String,
    },
    /// No answer in time.
    #[error("rendezvous server {server} did not answer within {after:?}")]
    Timeout {
        /// The server.
        server: String,
        /// The deadline.
        after: Duration,
    },
    /// The connection broke.
    #[error("rendezvous connection: {0}")]
    Frame(#[from] crate::wire::frame::FrameError),
    /// The server sent bytes that do not decode.
    #[error("rendezvous server sent a malformed reply: {0}")]
    Decode(#[from] crate::wire::DecodeError),
    /// The server sent a reply that does not answer the request.
    #[error("rendezvous server sent an unexpected reply (kind {kind:#04x})")]
    UnexpectedReply {
        /// Its kind.
        kind: u16,
    },
    /// The server refused the request.
    #[error("rendezvous server refused: {message} (code {code:#06x})")]
    Refused {
        /// The wire code (see [`RendezvousError::code`]).
        code: u16,
        /// The server's message.
        message: String,
    },
    /// A request could not be built (a field too long).
    #[error(transparent)]
    Request(#[from] core::RequestError),
}

impl RendezvousError {
    /// The server's refusal code, if this is a refusal with a known code.
    pub fn code(&self) -> Option<RendezvousErrorCode> {
        match self {
            RendezvousError::Refused { code, .. } => RendezvousErrorCode::from_code(*code),
            _ => None,
        }
    }
}

/// `[rendezvous]`: the servers this node uses (client side) and, in `[rendezvous.server]`, the
/// settings of `sremp rendezvous`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RendezvousConfig {
    /// Rendezvous servers to use, as `"host:port"` (the certificate is checked for `host`) or
    /// `"name@host:port"` (checked for `name`). Also the manual bootstrap list. Default: empty.
    pub servers: Vec<String>,
    /// Domains whose `_sremp-rendezvous._tcp.<domain>` SRV records name rendezvous servers
    /// (DNS bootstrap, [`dns`]); found servers come after `servers`, are cached for their TTL,
    /// and the certificate is checked for the SRV target. Default: empty (no DNS bootstrap).
    pub dns_bootstrap: Vec<String>,
    /// The DNS server (`"ip:port"`) asked for `dns_bootstrap`, instead of the ones in the
    /// system's resolv.conf. Default: none (system resolver configuration).
    pub dns_nameserver: Option<SocketAddr>,
    /// A PEM file of CA certificates to trust *instead of* the system roots (localnets, tests;
    /// `sremp certs` writes `ca.pem`). Also used by servers to check their gossip peers.
    /// Default: none (system roots, else the bundled Mozilla roots).
    pub ca_file: Option<PathBuf>,
    /// Register this node's endpoints (and relays) with the servers. Default `true`.
    pub register: bool,
    /// Registration lifetime asked for, in seconds (the server clamps it; the node renews at
    /// the `renewal_interval` the server returns). Default 600.
    pub ttl_secs: u32,
    /// Register with at most this many servers: configured ones first, then learned ones.
    /// Default 3.
    pub max_register_servers: usize,
    /// Learn servers from LIST_SERVERS answers and remember them in
    /// `<data_dir>/rendezvous-servers`. Default `true`.
    pub learn_servers: bool,
    /// Deadline for connecting, the TLS handshake and each request, in milliseconds.
    /// Default 10000.
    pub timeout_ms: u64,
    /// The rendezvous server (`sremp rendezvous`).
    pub server: RendezvousServerConfig,
}

impl Default for RendezvousConfig {
    fn default() -> Self {
        RendezvousConfig {
            servers: Vec::new(),
            dns_bootstrap: Vec::new(),
            dns_nameserver: None,
            ca_file: None,
            register: true,
            ttl_secs: 600,
            max_register_servers: 3,
            learn_servers: true,
            timeout_ms: 10_000,
            server: RendezvousServerConfig::default(),
        }
    }
}

/// `[rendezvous.server]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RendezvousServerConfig {
    /// Where to accept TLS connections. Default `"0.0.0.0:7470"`. Port 0 picks a free port
    /// (logged, and written to `<data_dir>/rendezvous.addr`).
    pub listen: SocketAddr,
    /// The name clients use for this server; its certificate must be valid for it, and signed
    /// registrations name it. Required to run a server. Default: none.
    pub server_name: Option<String>,
    /// PEM certificate chain. Required to run a server. Default: none.
    pub cert_file: Option<PathBuf>,
    /// PEM private key. Required to run a server. Default: none.
    pub key_file: Option<PathBuf>,
    /// This server's public `"host:port"` as given to others in LIST_SERVERS. Default: the
    /// listen address (with the actual port) unless it is `0.0.0.0`/`::`, then not advertised.
    pub advertise: Option<String>,
    /// Other rendezvous servers to gossip with (`"host:port"` or `"name@host:port"`).
    /// Default: empty.
    pub peers: Vec<String>,
    /// Seconds between LIST_SERVERS polls of every known server. Default 300.
    pub gossip_interval_secs: u64,
    /// Most servers remembered (configured ones always are). Default 256.
    pub max_known_servers: usize,
    /// Shortest TTL granted, in seconds. Default 60.
    pub min_ttl_secs: u32,
    /// Longest TTL granted, in seconds. Default 3600.
    pub max_ttl_secs: u32,
    /// Largest accepted distance between a request timestamp and our clock, in seconds.
    /// Default 120.
    pub max_clock_skew_secs: u32,
    /// How long lookups still answer (offline, with relays) for an identity whose
    /// registrations lapsed, in seconds. Default 3600.
    pub offline_retention_secs: u64,
    /// Registrations in total (also the most identities remembered). Default 100000.
    pub max_registrations: usize,
    /// Live registrations (endpoints) per identity. Default 4.
    pub max_registrations_per_identity: usize,
    /// Concurrent connections in total. Default 1024.
    pub max_connections: usize,
    /// Concurrent connections per client IP address. Default 32.
    pub max_connections_per_ip: usize,
    /// Requests per second per client IP address, on average. Default 5.
    pub requests_per_sec: u32,
    /// Requests a client IP address may send in a burst. Default 20.
    pub request_burst: u32,
    /// Largest request frame accepted, in bytes (at most 65535). Default 40960.
    pub max_request_bytes: usize,
    /// Peers per LOOKUP page when the client asks for 0 (at most 256). Default 64.
    pub page_size: usize,
    /// Close a connection idle for this many seconds. Default 60.
    pub idle_timeout_secs: u64,
    /// Deadline for the TLS handshake and version exchange, in milliseconds. Default 10000.
    pub handshake_timeout_ms: u64,
}

impl Default for RendezvousServerConfig {
    fn default() -> Self {
        RendezvousServerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 7470)),
            server_name: None,
            cert_file: None,
            key_file: None,
            advertise: None,
            peers: Vec::new(),
            gossip_interval_secs: 300,
            max_known_servers: 256,
            min_ttl_secs: 60,
            max_ttl_secs: 3600,
            max_clock_skew_secs: 120,
            offline_retention_secs: 3600,
            max_registrations: 100_000,
            max_registrations_per_identity: 4,
            max_connections: 1024,
            max_connections_per_ip: 32,
            requests_per_sec: 5,
            request_burst: 20,
            max_request_bytes: 40_960,
            page_size: 64,
            idle_timeout_secs: 60,
            handshake_timeout_ms: 10_000,
        }
    }
}

fn parse_servers(key: &'static str, list: &[String]) -> Result<Vec<ServerEntry>, RendezvousError> {
    list.iter()
        .map(|s| {
            s.parse::<ServerEntry>()
                .map_err(|e| RendezvousError::Config {
                    key,
                    why: format!("{s}: {e}"),
                })
        })
        .collect()
}

impl RendezvousConfig {
    /// The configured servers, parsed.
    pub fn server_entries(&self) -> Result<Vec<ServerEntry>, RendezvousError> {
        parse_servers("servers", &self.servers)
    }

    /// The request deadline.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.max(1))
    }

    /// Checks ranges of the client settings.
    pub fn validate(&self) -> Result<(), RendezvousError> {
        self.server_entries()?;
        for d in &self.dns_bootstrap {
            dns::srv_name(d).map_err(|e| RendezvousError::Config {
                key: "dns_bootstrap",
                why: e.to_string(),
            })?;
        }
        if self.ttl_secs == 0 {
            return Err(RendezvousError::Config {
                key: "ttl_secs",
                why: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}

impl RendezvousServerConfig {
    /// The gossip peers, parsed.
    pub fn peer_entries(&self) -> Result<Vec<ServerEntry>, RendezvousError> {
        parse_servers("server.peers", &self.peers)
    }

    /// `advertise`, parsed (the one place it is parsed).
    pub fn advertise_endpoint(&self) -> Result<Option<crate::wire::Endpoint>, RendezvousError> {
        self.advertise
            .as_ref()
            .map(|a| {
                a.parse::<crate::wire::Endpoint>()
                    .map_err(|e| RendezvousError::Config {
                        key: "server.advertise",
                        why: format!("{a}: {e}"),
                    })
            })
            .transpose()
    }

    /// Checks that a server can run with these settings: the names and files it needs, then
    /// [`RendezvousServerConfig::validate_values`].
    pub fn validate(&self) -> Result<(), RendezvousError> {
        let missing = |key| RendezvousError::Config {
            key,
            why: "required to run a rendezvous server".into(),
        };
        self.server_name
            .as_ref()
            .ok_or_else(|| missing("server.server_name"))?;
        self.cert_file
            .as_ref()
            .ok_or_else(|| missing("server.cert_file"))?;
        self.key_file
            .as_ref()
            .ok_or_else(|| missing("server.key_file"))?;
        self.validate_values()
    }

    /// Checks every value that is set (names, endpoints, ranges) without requiring what only
    /// a running server needs; `Config::validate` runs this for every command.
    pub fn validate_values(&self) -> Result<(), RendezvousError> {
        if let Some(name) = &self.server_name {
            if name.len() > core::MAX_SERVER_NAME
                || crate::wire::Endpoint::new(name.as_str(), 0).is_err()
            {
                return Err(RendezvousError::Config {
                    key: "server.server_name",
                    why: "must be a DNS name or IP address".into(),
                });
            }
        }
        self.peer_entries()?;
        self.advertise_endpoint()?;
        let checks: [(&'static str, bool); 7] = [
            (
                "server.min_ttl_secs",
                self.min_ttl_secs >= 1 && self.min_ttl_secs <= self.max_ttl_secs,
            ),
            (
                "server.max_request_bytes",
                (1024..=crate::wire::frame::MAX_FRAME).contains(&self.max_request_bytes),
            ),
            (
                "server.page_size",
                (1..=core::MAX_PAGE_PEERS).contains(&self.page_size),
            ),
            (
                "server.max_connections",
                self.max_connections >= 1 && self.max_connections_per_ip >= 1,
            ),
            ("server.request_burst", self.request_burst >= 1),
            (
                "server.gossip_interval_secs",
                self.gossip_interval_secs >= 1,
            ),
            (
                "server.handshake_timeout_ms",
                self.handshake_timeout_ms >= 1 && self.idle_timeout_secs >= 1,
            ),
        ];
        for (key, ok) in checks {
            if !ok {
                return Err(RendezvousError::Config {
                    key,
                    why: "out of range (see node-config.toml)".into(),
                });
            }
        }
        Ok(())
    }

    /// The registry limits.
    pub fn limits(&self) -> core::Limits {
        core::Limits {
            min_ttl: Duration::from_secs(u64::from(self.min_ttl_secs)),
            max_ttl: Duration::from_secs(u64::from(self.max_ttl_secs)),
            max_clock_skew: Duration::from_secs(u64::from(self.max_clock_skew_secs)),
            offline_retention: Duration::from_secs(self.offline_retention_secs),
            max_registrations: self.max_registrations,
            max_per_identity: self.max_registrations_per_identity,
            page_peers: self.page_size,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_config_section_is_the_default() {
        let example = include_str!("../../node-config.toml");
        let cfg = crate::config::Config::parse(example, std::path::Path::new("node-config.toml"))
            .unwrap();
        assert_eq!(cfg.rendezvous, RendezvousConfig::default());
        let t = "[rendezvous]\nservers = [\"rv1.test@127.0.0.1:7470\"]\n[rendezvous.server]\npeers = [\"127.0.0.1:7471\"]";
        let cfg = crate::config::Config::parse(t, std::path::Path::new("x")).unwrap();
        assert_eq!(cfg.rendezvous.server_entries().unwrap()[0].name, "rv1.test");
        assert!(crate::config::Config::parse(
            "[rendezvous]\nsrvers = []",
            std::path::Path::new("x")
        )
        .is_err());
    }

    #[test]
    fn server_settings_are_checked() {
        let mut s = RendezvousServerConfig::default();
        assert!(matches!(
            s.validate(),
            Err(RendezvousError::Config {
                key: "server.server_name",
                ..
            })
        ));
        s.server_name = Some("rv1.test".into());
        s.cert_file = Some("c.pem".into());
        s.key_file = Some("k.pem".into());
        s.validate().unwrap();
        s.max_request_bytes = 70_000;
        assert!(s.validate().is_err());
        let c = RendezvousConfig {
            servers: vec!["nope".into()],
            ..Default::default()
        };
        assert!(c.validate().is_err());
    }
}
