//! `node-config.toml` → typed configuration. Every field documents its default, and every
//! default is what `sremp run` uses with no config file at all.
//!
//! The file is optional; unknown keys are an error (a typo must not silently fall back to a
//! default). Paths may start with `~/`.

pub use crate::logging::{LogConfig, LogFormat};
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Why a configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has unknown or mistyped keys.
    #[error("invalid config {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message (with line and column).
        message: String,
    },
    /// A value is out of range.
    #[error("invalid config value {key}: {why}")]
    Value {
        /// The key.
        key: &'static str,
        /// Why.
        why: String,
    },
    /// A `[rendezvous]` or `[rendezvous.server]` value is out of range or does not parse.
    #[error(transparent)]
    Rendezvous(Box<crate::rendezvous::RendezvousError>),
}

/// The direct-connection listener (`[listen]`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ListenConfig {
    /// Where to accept Noise connections. Default `"0.0.0.0:7480"`. Port 0 picks a free port.
    pub address: SocketAddr,
    /// Endpoints advertised to contacts and rendezvous servers (`"host:port"`), when they differ
    /// from the listen address (NAT, port forwarding, tests). Default: empty, meaning the
    /// listen address (with the actual port when it was 0).
    pub advertise: Vec<String>,
    /// Authenticated connections at once (contacts and strangers). Default 1024. Strangers
    /// are closed, oldest first, to make room for a contact.
    pub max_connections: usize,
    /// Connections still in the version exchange or Noise handshake at once; when full, the
    /// oldest one (preferring one that has sent nothing yet) is closed for a new one.
    /// Default 128.
    pub max_handshakes: usize,
    /// Handshakes at once from one source address; when full, that address's oldest
    /// handshake is closed for its new one. Default 32.
    pub max_handshakes_per_ip: usize,
    /// Authenticated connections of strangers (peers that are not contacts) at once; when
    /// full, the oldest stranger is closed for a new one. Default 64.
    pub max_stranger_connections: usize,
    /// Authenticated stranger connections from one source address. Default 8. Contacts are
    /// never limited by address.
    pub max_stranger_connections_per_ip: usize,
    /// Handshakes one source address may start per second (bursts of twice as many). Over
    /// that rate a connection from an address no known peer uses is closed at once; one from
    /// an address a known peer uses is let in, closed first when a handshake budget is full,
    /// and refused after the handshake unless the peer is a contact (docs/PROTOCOL.md,
    /// "Connection admission"). `sremp run` only. Default 20; 0 turns it off.
    pub handshakes_per_ip_per_sec: u32,
    /// Deadline for the version exchange and Noise handshake, in milliseconds. Default 10000.
    pub handshake_timeout_ms: u64,
    /// An authenticated connection with no traffic for this long is closed, in seconds.
    /// Default 300.
    pub idle_timeout_secs: u64,
    /// The same for strangers, in seconds. Default 10.
    pub stranger_idle_timeout_secs: u64,
    /// Refused and failed connections are summarised in one WARN line per this many
    /// seconds (counts per reason) instead of one line each. Default 10.
    pub refusal_log_interval_secs: u64,
}

impl ListenConfig {
    /// The endpoints the node advertises: `advertise` parsed (the one place it is parsed,
    /// so a bad entry is an error everywhere, never skipped), or `bound` (the address
    /// actually listened on) when it is empty.
    pub fn advertised(&self, bound: SocketAddr) -> Result<Vec<crate::wire::Endpoint>, ConfigError> {
        if self.advertise.is_empty() {
            return Ok(vec![crate::wire::Endpoint::from_socket_addr(bound)]);
        }
        self.advertise
            .iter()
            .map(|a| {
                a.parse::<crate::wire::Endpoint>()
                    .map_err(|e| ConfigError::Value {
                        key: "listen.advertise",
                        why: format!("{a}: {e}"),
                    })
            })
            .collect()
    }
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            address: SocketAddr::from(([0, 0, 0, 0], 7480)),
            advertise: Vec::new(),
            max_connections: 1024,
            max_handshakes: 128,
            max_handshakes_per_ip: 32,
            max_stranger_connections: 64,
            max_stranger_connections_per_ip: 8,
            handshakes_per_ip_per_sec: 20,
            handshake_timeout_ms: 10_000,
            idle_timeout_secs: 300,
            stranger_idle_timeout_secs: 10,
            refusal_log_interval_secs: 10,
        }
    }
}

impl ListenConfig {
    /// The handshake deadline.
    pub fn handshake_timeout(&self) -> Duration {
        Duration::from_millis(self.handshake_timeout_ms)
    }
    /// The idle timeout.
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout_secs)
    }
    /// The idle timeout for strangers.
    pub fn stranger_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.stranger_idle_timeout_secs)
    }
    /// The accept loop's settings.
    pub fn listener(&self) -> crate::noise::listener::ListenerConfig {
        crate::noise::listener::ListenerConfig {
            limits: crate::noise::admission::Limits {
                max_connections: self.max_connections,
                max_handshakes: self.max_handshakes,
                max_handshakes_per_ip: self.max_handshakes_per_ip,
                max_strangers: self.max_stranger_connections,
                max_strangers_per_ip: self.max_stranger_connections_per_ip,
                handshakes_per_ip_per_sec: self.handshakes_per_ip_per_sec,
            },
            handshake: crate::noise::HandshakeLimits {
                timeout: self.handshake_timeout(),
                // The node or relay sets its own cache.
                verified: None,
            },
            refusal_log_interval: Duration::from_secs(self.refusal_log_interval_secs),
            // The node sets its contacts' addresses.
            contact_addrs: None,
        }
    }
}

/// How the node chooses between the direct path and relays.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryMode {
    /// While the direct path is not known to work, try it and the recipient's relay at once.
    #[default]
    Race,
    /// Use a relay only after the direct attempt failed (exposes less metadata to relays).
    DirectFirst,
}

/// The personal node (`[node]`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Home relays: where this node collects its messages and where contacts should store
    /// for it when it is offline, as `"<relay contact id>@host:port"`. They go on the contact
    /// card and into rendezvous registrations. Default: none.
    pub relays: Vec<String>,
    /// `"race"` (default) or `"direct-first"`.
    pub delivery: DeliveryMode,
    /// Give up on a direct connection attempt (TCP connect + handshake) after this many
    /// milliseconds. Default 3000.
    pub direct_timeout_ms: u64,
    /// Give up waiting for a store acknowledgement after this many milliseconds. Default 10000.
    pub ack_timeout_ms: u64,
    /// First retry delay for a message nobody accepted, doubling up to `retry_max_ms`.
    /// Default 500.
    pub retry_initial_ms: u64,
    /// Longest retry delay. Default 30000.
    pub retry_max_ms: u64,
    /// While messages wait for an offline contact, ask rendezvous for it this often.
    /// Default 2000.
    pub lookup_interval_ms: u64,
    /// After `sremp id rotate-noise-key`, the old Noise key still opens first-contact messages
    /// sealed to it (in flight at relays) for this many seconds, then it is forgotten.
    /// Default 604800 (7 days).
    pub noise_key_grace_secs: u64,
    /// A message stored at a relay (or at the recipient's node) stays kept by the sender until
    /// the recipient's delivery confirmation arrives; if none arrived this many milliseconds
    /// after it was stored, the sender stores it again (de-duplicated by id at the relay and at
    /// the recipient), and again after each further interval, for at most 30 days.
    /// Default 600000 (10 minutes); at least 100.
    pub restore_after_ms: u64,
    /// Strangers (peers that connected or wrote but are not contacts) remembered at once, in
    /// memory and apart from the contacts. Default 1000.
    pub max_strangers: usize,
    /// A stranger not seen for this many seconds is forgotten. Default 86400 (one day).
    pub stranger_ttl_secs: u64,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            relays: Vec::new(),
            delivery: DeliveryMode::Race,
            direct_timeout_ms: 3000,
            ack_timeout_ms: 10_000,
            retry_initial_ms: 500,
            retry_max_ms: 30_000,
            lookup_interval_ms: 2000,
            noise_key_grace_secs: 7 * 24 * 3600,
            restore_after_ms: 600_000,
            max_strangers: 1000,
            stranger_ttl_secs: 86_400,
        }
    }
}

impl NodeConfig {
    /// The grace period of a rotated-out Noise key.
    pub fn noise_key_grace(&self) -> Duration {
        Duration::from_secs(self.noise_key_grace_secs)
    }

    /// Parses `relays`.
    pub fn relay_hints(&self) -> Result<Vec<crate::wire::rendezvous::RelayHint>, ConfigError> {
        self.relays.iter().map(|r| parse_relay_hint(r)).collect()
    }
}

/// Parses `"<64 hex>@host:port"`.
pub fn parse_relay_hint(s: &str) -> Result<crate::wire::rendezvous::RelayHint, ConfigError> {
    let bad = |why: String| ConfigError::Value {
        key: "node.relays",
        why,
    };
    let (key, ep) = s
        .split_once('@')
        .ok_or_else(|| bad(format!("{s}: expected <relay id>@host:port")))?;
    let key: crate::identity::IdentityKey = key.parse().map_err(|e| bad(format!("{s}: {e}")))?;
    let endpoint: crate::wire::Endpoint = ep.parse().map_err(|e| bad(format!("{s}: {e}")))?;
    Ok(crate::wire::rendezvous::RelayHint {
        endpoint,
        relay_key: key.0,
    })
}

/// The whole `node-config.toml`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where the identity, database and control socket live. Default: `$SREMP_DATA_DIR`, else
    /// `$XDG_DATA_HOME/sremp`, else `~/.local/share/sremp`.
    pub data_dir: Option<PathBuf>,
    /// Username for the identity created on first start when none exists. Default: `$USER`,
    /// else `"sremp-user"`.
    pub username: Option<String>,
    /// Logging.
    pub log: LogConfig,
    /// Direct connections.
    pub listen: ListenConfig,
    /// The personal node: home relays and delivery.
    pub node: NodeConfig,
    /// Relay policies (`[relay]`): relay-only mode and the integrated relay.
    pub relay: crate::relay::RelayConfig,
    /// Rendezvous servers to use and, in `[rendezvous.server]`, `sremp rendezvous` settings.
    pub rendezvous: crate::rendezvous::RendezvousConfig,
    /// The QUIC endpoint (`[quic]`) of `sremp run` and `sremp relay`.
    pub quic: crate::transport::QuicConfig,
    /// `[metrics]`: the Prometheus endpoint of `sremp relay` (off by default).
    pub metrics: crate::relay::metrics::MetricsConfig,
    /// File transfer (`[files]`): download directory, auto-accept, chunk size.
    pub files: crate::files::FilesConfig,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses config text (`path` is for messages only).
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let mut cfg: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        cfg.data_dir = cfg.data_dir.map(|p| expand_home(&p));
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks every section: ranges, names, endpoints (`[listen] advertise`, `[node] relays`,
    /// `[rendezvous] servers`, `[rendezvous.server] peers`/`advertise`) and the `[relay]`
    /// policy. What only a running rendezvous server needs (its name, certificate and key) is
    /// checked when it starts.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate_log_level(&self.log.level)?;
        let l = &self.listen;
        for (key, v) in [
            ("listen.max_connections", l.max_connections as u64),
            ("listen.max_handshakes", l.max_handshakes as u64),
            (
                "listen.max_handshakes_per_ip",
                l.max_handshakes_per_ip as u64,
            ),
            (
                "listen.max_stranger_connections",
                l.max_stranger_connections as u64,
            ),
            (
                "listen.max_stranger_connections_per_ip",
                l.max_stranger_connections_per_ip as u64,
            ),
            (
                "listen.stranger_idle_timeout_secs",
                l.stranger_idle_timeout_secs,
            ),
            (
                "listen.refusal_log_interval_secs",
                l.refusal_log_interval_secs,
            ),
        ] {
            if v == 0 {
                return Err(ConfigError::Value {
                    key,
                    why: "must be at least 1".into(),
                });
            }
        }
        if self.listen.handshake_timeout_ms == 0 {
            return Err(ConfigError::Value {
                key: "listen.handshake_timeout_ms",
                why: "must be at least 1".into(),
            });
        }
        self.listen.advertised(self.listen.address)?;
        self.node.relay_hints()?;
        self.quic.validate().map_err(|e| ConfigError::Value {
            key: e.key,
            why: e.why.into(),
        })?;
        if self.node.direct_timeout_ms == 0 || self.node.ack_timeout_ms == 0 {
            return Err(ConfigError::Value {
                key: "node.direct_timeout_ms",
                why: "timeouts must be at least 1 ms".into(),
            });
        }
        if self.node.restore_after_ms < 100 {
            return Err(ConfigError::Value {
                key: "node.restore_after_ms",
                why: "must be at least 100 ms".into(),
            });
        }
        self.files.validate().map_err(|e| ConfigError::Value {
            key: e.key,
            why: e.why,
        })?;
        if let Some(u) = &self.username {
            crate::identity::Username::new(u.clone()).map_err(|e| ConfigError::Value {
                key: "username",
                why: e.to_string(),
            })?;
        }
        self.relay.validate().map_err(|e| ConfigError::Value {
            key: e.key,
            why: e.why,
        })?;
        self.rendezvous
            .validate()
            .map_err(|e| ConfigError::Rendezvous(Box::new(e)))?;
        self.rendezvous
            .server
            .validate_values()
            .map_err(|e| ConfigError::Rendezvous(Box::new(e)))?;
        Ok(())
    }

    /// The data directory: the configured one or the platform default.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(default_data_dir)
    }

    /// The username for a first-start identity.
    pub fn username(&self) -> String {
        self.username
            .clone()
            .or_else(|| {
                std::env::var("USER")
                    .ok()
                    .filter(|u| crate::identity::Username::new(u.clone()).is_ok())
            })
            .unwrap_or_else(|| "sremp-user".into())
    }
}

/// The level names a `[log] level` directive may use.
const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// Checks a `[log] level` filter strictly: every comma-separated directive must be a level
/// (`info`) or `target=level` (`sremp=debug`). A bare word that is not a level would be read by
/// `tracing` as a target name and silence every other line, so it is refused.
pub fn validate_log_level(level: &str) -> Result<(), ConfigError> {
    let bad = |why: String| ConfigError::Value {
        key: "log.level",
        why: format!(
            "{level:?}: {why}; use a level ({}) or comma-separated `target=level` directives, \
             e.g. \"info\" or \"sremp=debug,info\"",
            LEVELS.join(", ")
        ),
    };
    if level.trim().is_empty() {
        return Err(bad("empty".into()));
    }
    for d in level.split(',') {
        let d = d.trim();
        let lvl = match d.rsplit_once('=') {
            Some((target, lvl)) if !target.trim().is_empty() => lvl.trim(),
            Some(_) => return Err(bad(format!("directive {d:?} has no target"))),
            None => d,
        };
        if !LEVELS.contains(&lvl.to_ascii_lowercase().as_str()) {
            return Err(bad(format!("{lvl:?} is not a level")));
        }
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(level)
        .map_err(|e| bad(e.to_string()))?;
    Ok(())
}

/// `$SREMP_DATA_DIR`, else `$XDG_DATA_HOME/sremp`, else `~/.local/share/sremp`, else
/// `./sremp-data`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SREMP_DATA_DIR") {
        return PathBuf::from(d);
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME") {
        return PathBuf::from(x).join("sremp");
    }
    if let Some(h) = std::env::var_os("HOME") {
        return PathBuf::from(h).join(".local/share/sremp");
    }
    PathBuf::from("sremp-data")
}

/// Expands a leading `~/`.
pub fn expand_home(p: &Path) -> PathBuf {
    match (p.strip_prefix("~"), std::env::var_os("HOME")) {
        (Ok(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => p.to_path_buf(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_example_file_parse() {
        let example = include_str!("../node-config.toml");
        let cfg = Config::parse(example, Path::new("node-config.toml")).unwrap();
        assert_eq!(cfg.listen, ListenConfig::default());
        assert_eq!(cfg.log, LogConfig::default());
        assert_eq!(cfg.quic, crate::transport::QuicConfig::default());
        assert_eq!(cfg.files, crate::files::FilesConfig::default());
        let empty = Config::parse("", Path::new("x")).unwrap();
        assert_eq!(empty, Config::default());
    }

    #[test]
    fn typos_and_bad_values_are_refused() {
        assert!(matches!(
            Config::parse("lisen = 1", Path::new("x")),
            Err(ConfigError::Parse { .. })
        ));
        assert!(matches!(
            Config::parse("[listen]\nmax_connections = 0", Path::new("x")),
            Err(ConfigError::Value { .. })
        ));
        assert!(Config::parse("[listen]\nadvertise = [\"nope\"]", Path::new("x")).is_err());
        assert!(Config::parse("[node]\nrestore_after_ms = 0", Path::new("x")).is_err());
        // Every section is checked when the file is read, not only by the command using it.
        let e = Config::parse("[relay]\nmax_message_size = 0", Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("relay.max_message_size"), "{e}");
        let e = Config::parse("[rendezvous]\nttl_secs = 0", Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("rendezvous.ttl_secs"), "{e}");
        let e = Config::parse("[rendezvous]\nservers = [\"x y\"]", Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("rendezvous.servers"), "{e}");
        let e =
            Config::parse("[rendezvous.server]\nadvertise = \"nope\"", Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("rendezvous.server.advertise"), "{e}");
        let e = Config::parse("[rendezvous.server]\npage_size = 0", Path::new("x")).unwrap_err();
        assert!(e.to_string().contains("rendezvous.server.page_size"), "{e}");
        // What only a running server needs is not required of every node.
        Config::parse(
            "[rendezvous.server]\nlisten = \"127.0.0.1:0\"",
            Path::new("x"),
        )
        .unwrap();
    }

    #[test]
    fn log_levels_are_checked_strictly() {
        for ok in [
            "info",
            "WARN",
            "sremp=debug,info",
            "sremp::node=trace",
            "off",
        ] {
            assert!(validate_log_level(ok).is_ok(), "{ok}");
        }
        for bad in ["verbose", "", "sremp=loud", "=info", "info,chatty"] {
            assert!(
                matches!(
                    validate_log_level(bad),
                    Err(ConfigError::Value {
                        key: "log.level",
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn advertised_endpoints_are_parsed_in_one_place() {
        let bound: SocketAddr = "127.0.0.1:4242".parse().unwrap();
        let mut l = ListenConfig::default();
        assert_eq!(
            l.advertised(bound).unwrap(),
            vec![crate::wire::Endpoint::from_socket_addr(bound)]
        );
        l.advertise = vec!["example.org:7480".into(), "203.0.113.7:1".into()];
        let got = l.advertised(bound).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].to_string(), "example.org:7480");
        // One bad entry is an error, not skipped.
        l.advertise.push("nope".into());
        assert!(matches!(
            l.advertised(bound),
            Err(ConfigError::Value {
                key: "listen.advertise",
                ..
            })
        ));
    }
}
