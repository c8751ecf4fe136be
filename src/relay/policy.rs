//! Relay policies: the `[relay]` configuration, per-recipient quotas and per-identity rate
//! limits. Pure logic: time is passed in as a monotonic millisecond count, nothing here reads
//! the clock or touches the store.

use crate::identity::IdentityKey;
use crate::limit::TokenBuckets;
use crate::wire::relay::{RelayCapabilities, RelayErrorCode};
use serde::Deserialize;
use std::collections::HashMap;
use std::time::Duration;

/// Largest `max_message_size` accepted in the configuration: the transport carries envelopes
/// of at most 4 MiB, and a `STORE_MESSAGE` adds about 120 bytes to its blob.
pub const MAX_CONFIGURABLE_MESSAGE: u32 = 4 * 1024 * 1024 - 4096;

/// Relay policies (`[relay]` in node-config.toml). Used by `sremp relay` and by the integrated
/// relay of `sremp run`. Connection limits and timeouts come from `[listen]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Largest encrypted blob accepted, in bytes. Default 262144 (256 KiB).
    pub max_message_size: u32,
    /// Messages kept per recipient. Default 10000.
    pub quota_messages: u32,
    /// Bytes of blobs kept per recipient. Default 104857600 (100 MiB).
    pub quota_bytes: u64,
    /// How long an undelivered message is kept, in seconds. Default 604800 (7 days).
    pub retention_secs: u64,
    /// How often expired messages are removed (also once at start-up), in seconds. Default 600.
    pub expiry_interval_secs: u64,
    /// Sustained requests per second allowed per identity (token bucket refill). Default 50.
    pub rate_per_sec: u32,
    /// Requests an identity may make in a burst (token bucket size). Default 500.
    pub rate_burst: u32,
    /// Integrated relay only: sustained requests per second of a sender the owner marked
    /// Trusted, charged to a bucket of its own instead of `rate_per_sec` (see
    /// [`RateLimiter::set_trusted`]). Default 2000.
    pub trusted_rate_per_sec: u32,
    /// Integrated relay only: burst of a sender the owner marked Trusted. Default 20000.
    pub trusted_rate_burst: u32,
    /// Most messages in one `MESSAGE_BATCH`. Default 100.
    pub batch_messages: u32,
    /// How often the counters are logged and `relay-stats.json` rewritten, in seconds.
    /// Default 60.
    pub stats_interval_secs: u64,
    /// Where `sremp relay` keeps messages: `"sled"` (default, embedded) or `"nats"` (NATS
    /// JetStream shared by several relay processes; see [`super::backend::nats`]). The
    /// integrated relay of `sremp run` always uses its node's store.
    pub store: super::backend::StoreKind,
    /// `store = "nats"`: server URLs (`nats://host:port`, `tls://host:port`). Required then.
    pub nats_urls: Vec<String>,
    /// `store = "nats"`: replicas of every stream (1 ..= 5). Default 3.
    pub replicas: u8,
    /// `store = "nats"`: a NATS `.creds` file (user JWT and NKey seed). Default none.
    pub credentials_file: Option<std::path::PathBuf>,
    /// `store = "nats"`: CA certificates (PEM) that sign the servers' TLS certificates.
    pub nats_tls_ca_file: Option<std::path::PathBuf>,
    /// `store = "nats"`: client certificate (PEM) for mutual TLS (with `nats_tls_key_file`).
    pub nats_tls_cert_file: Option<std::path::PathBuf>,
    /// `store = "nats"`: the client certificate's private key (PEM).
    pub nats_tls_key_file: Option<std::path::PathBuf>,
    /// `store = "nats"`: refuse to connect without TLS. Default false.
    pub nats_tls_required: bool,
    /// `store = "nats"`: prefix of every stream and subject name, so that several relays can
    /// share one NATS system. Letters, digits, `-` and `_`. Default `"sremp"`.
    pub nats_prefix: String,
}

impl Default for RelayConfig {
    fn default() -> Self {
        RelayConfig {
            max_message_size: 256 * 1024,
            quota_messages: 10_000,
            quota_bytes: 100 * 1024 * 1024,
            retention_secs: 7 * 24 * 3600,
            expiry_interval_secs: 600,
            rate_per_sec: 50,
            rate_burst: 500,
            trusted_rate_per_sec: 2000,
            trusted_rate_burst: 20_000,
            batch_messages: 100,
            stats_interval_secs: 60,
            store: super::backend::StoreKind::Sled,
            nats_urls: Vec::new(),
            replicas: 3,
            credentials_file: None,
            nats_tls_ca_file: None,
            nats_tls_cert_file: None,
            nats_tls_key_file: None,
            nats_tls_required: false,
            nats_prefix: "sremp".into(),
        }
    }
}

/// A `[relay]` value out of range.
#[derive(Debug, thiserror::Error)]
#[error("invalid relay config value {key}: {why}")]
pub struct PolicyError {
    /// The key.
    pub key: &'static str,
    /// Why.
    pub why: String,
}

impl RelayConfig {
    /// Checks ranges.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let bad = |key, why: &str| {
            Err(PolicyError {
                key,
                why: why.into(),
            })
        };
        if self.max_message_size == 0 || self.max_message_size > MAX_CONFIGURABLE_MESSAGE {
            return bad("relay.max_message_size", "must be 1 ..= 4190208");
        }
        if self.quota_messages == 0 || self.quota_bytes == 0 {
            return bad("relay.quota_*", "must be at least 1");
        }
        if self.retention_secs == 0 || self.expiry_interval_secs == 0 {
            return bad(
                "relay.retention_secs / expiry_interval_secs",
                "must be at least 1",
            );
        }
        if self.rate_per_sec == 0 || self.rate_burst == 0 {
            return bad("relay.rate_*", "must be at least 1");
        }
        if self.trusted_rate_per_sec == 0 || self.trusted_rate_burst == 0 {
            return bad("relay.trusted_rate_*", "must be at least 1");
        }
        if self.batch_messages == 0 || self.batch_messages > crate::wire::relay::MAX_BATCH_MESSAGES
        {
            return bad("relay.batch_messages", "must be 1 ..= 1000");
        }
        if self.stats_interval_secs == 0 {
            return bad("relay.stats_interval_secs", "must be at least 1");
        }
        super::backend::validate(self)
    }

    /// What this relay offers clients.
    pub fn capabilities(&self) -> RelayCapabilities {
        RelayCapabilities {
            max_message_size: self.max_message_size,
            max_storage_duration: self.retention_secs,
            quota_messages: self.quota_messages,
            quota_bytes: self.quota_bytes,
        }
    }

    /// The retention period.
    pub fn retention(&self) -> Duration {
        Duration::from_secs(self.retention_secs)
    }

    /// **[gap]** Capability negotiation: what the relay grants a client that asked for
    /// `asked` — the smaller of the two in every field (a client may ask for less, never more;
    /// a 0 means "whatever the relay offers").
    pub fn grant(&self, asked: &RelayCapabilities) -> RelayCapabilities {
        let ours = self.capabilities();
        let pick64 = |a: u64, o: u64| if a == 0 { o } else { a.min(o) };
        let pick32 = |a: u32, o: u32| if a == 0 { o } else { a.min(o) };
        RelayCapabilities {
            max_message_size: pick32(asked.max_message_size, ours.max_message_size),
            max_storage_duration: pick64(asked.max_storage_duration, ours.max_storage_duration),
            quota_messages: pick32(asked.quota_messages, ours.quota_messages),
            quota_bytes: pick64(asked.quota_bytes, ours.quota_bytes),
        }
    }
}

/// Stored messages and bytes of one recipient.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    /// Messages.
    pub messages: u64,
    /// Blob bytes.
    pub bytes: u64,
}

/// Per-recipient usage, kept in memory (rebuilt from the expiry index at start-up).
#[derive(Debug, Default)]
pub struct Quotas {
    usage: HashMap<IdentityKey, Usage>,
}

impl Quotas {
    /// Whether one more blob of `len` bytes fits the recipient's quota.
    pub fn check(
        &self,
        cfg: &RelayConfig,
        recipient: &IdentityKey,
        len: u64,
    ) -> Result<(), RelayErrorCode> {
        let u = self.usage.get(recipient).copied().unwrap_or_default();
        if u.messages.saturating_add(1) > u64::from(cfg.quota_messages)
            || u.bytes.saturating_add(len) > cfg.quota_bytes
        {
            return Err(RelayErrorCode::QuotaFull);
        }
        Ok(())
    }

    /// Counts a stored blob.
    pub fn add(&mut self, recipient: IdentityKey, len: u64) {
        let u = self.usage.entry(recipient).or_default();
        u.messages = u.messages.saturating_add(1);
        u.bytes = u.bytes.saturating_add(len);
    }

    /// Forgets a removed blob.
    pub fn remove(&mut self, recipient: &IdentityKey, len: u64) {
        if let Some(u) = self.usage.get_mut(recipient) {
            u.messages = u.messages.saturating_sub(1);
            u.bytes = u.bytes.saturating_sub(len);
            if u.messages == 0 {
                self.usage.remove(recipient);
            }
        }
    }

    /// Usage of one recipient.
    pub fn usage(&self, recipient: &IdentityKey) -> Usage {
        self.usage.get(recipient).copied().unwrap_or_default()
    }

    /// Totals over all recipients.
    pub fn total(&self) -> Usage {
        self.usage.values().fold(Usage::default(), |a, u| Usage {
            messages: a.messages.saturating_add(u.messages),
            bytes: a.bytes.saturating_add(u.bytes),
        })
    }
}

/// Per-identity token buckets shared by all of an identity's connections, so opening more
/// connections does not buy more rate (`rate_per_sec`, `rate_burst`; full buckets are pruned
/// once more than 4096 identities are held).
///
/// An integrated relay also knows its owner's contacts ([`RateLimiter::set_trusted`]): a sender
/// the owner marked **Trusted** is charged to a separate, larger bucket of its own
/// (`trusted_rate_per_sec`, `trusted_rate_burst`) instead, so a trusted contact's legitimate
/// burst (a file's chunks, a backlog after being offline) is not throttled to the stranger
/// limit; every other sender, including a contact not marked Trusted, keeps the ordinary one.
pub struct RateLimiter {
    all: TokenBuckets<IdentityKey>,
    trusted: TokenBuckets<IdentityKey>,
    is_trusted: Option<IsTrusted>,
}

/// Tells whether a sender is a contact the owner marked Trusted (installed by the node).
pub type IsTrusted = std::sync::Arc<dyn Fn(&IdentityKey) -> bool + Send + Sync>;

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RateLimiter")
            .field("buckets", &self.all.len())
            .field("trusted_buckets", &self.trusted.len())
            .finish_non_exhaustive()
    }
}

/// Buckets kept before full ones are pruned.
const PRUNE_THRESHOLD: usize = 4096;

impl RateLimiter {
    /// The limiter for `cfg`'s rate and burst.
    pub fn new(cfg: &RelayConfig) -> Self {
        RateLimiter {
            all: TokenBuckets::new(
                cfg.rate_per_sec,
                cfg.rate_burst,
                usize::MAX,
                PRUNE_THRESHOLD,
            ),
            trusted: TokenBuckets::new(
                cfg.trusted_rate_per_sec,
                cfg.trusted_rate_burst,
                usize::MAX,
                PRUNE_THRESHOLD,
            ),
            is_trusted: None,
        }
    }

    /// Integrated relay: senders for which `check` is true are charged to the trusted budget.
    pub fn set_trusted(&mut self, check: IsTrusted) {
        self.is_trusted = Some(check);
    }

    /// The installed trust check, if any (to be run outside the limiter's lock: it reads the
    /// owner's contact book).
    pub fn trust_check(&self) -> Option<IsTrusted> {
        self.is_trusted.clone()
    }

    /// Charges one request to `who` at `now_ms` (a monotonic clock), to the trusted budget if
    /// the installed check says so. `Err(RateLimited)` when its bucket is empty.
    pub fn charge(&mut self, who: IdentityKey, now_ms: u64) -> Result<(), RelayErrorCode> {
        let trusted = self.is_trusted.as_ref().is_some_and(|f| f(&who));
        self.charge_as(who, now_ms, trusted)
    }

    /// [`RateLimiter::charge`] with the trust check already run (`trusted`).
    pub fn charge_as(
        &mut self,
        who: IdentityKey,
        now_ms: u64,
        trusted: bool,
    ) -> Result<(), RelayErrorCode> {
        let buckets = if trusted {
            &mut self.trusted
        } else {
            &mut self.all
        };
        buckets
            .take(who, now_ms)
            .map_err(|_| RelayErrorCode::RateLimited)
    }

    /// Buckets held.
    pub fn len(&self) -> usize {
        self.all.len() + self.trusted.len()
    }

    /// True when no bucket is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trusted_senders_get_their_own_larger_budget() {
        let cfg = RelayConfig {
            rate_per_sec: 1,
            rate_burst: 2,
            trusted_rate_per_sec: 1,
            trusted_rate_burst: 10,
            ..RelayConfig::default()
        };
        let mut rl = RateLimiter::new(&cfg);
        let (friend, stranger) = (IdentityKey([1; 32]), IdentityKey([2; 32]));
        // No check installed: everyone has the ordinary limit.
        rl.charge(friend, 0).unwrap();
        rl.charge(friend, 0).unwrap();
        assert_eq!(rl.charge(friend, 0), Err(RelayErrorCode::RateLimited));
        rl.set_trusted(std::sync::Arc::new(move |k: &IdentityKey| *k == friend));
        for i in 0..10 {
            assert_eq!(rl.charge(friend, 0), Ok(()), "trusted request {i}");
        }
        assert_eq!(
            rl.charge(friend, 0),
            Err(RelayErrorCode::RateLimited),
            "the trusted budget is bounded too"
        );
        rl.charge(stranger, 0).unwrap();
        rl.charge(stranger, 0).unwrap();
        assert_eq!(rl.charge(stranger, 0), Err(RelayErrorCode::RateLimited));
        let bad = RelayConfig {
            trusted_rate_burst: 0,
            ..RelayConfig::default()
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn defaults_are_valid() {
        RelayConfig::default().validate().unwrap();
        let c = RelayConfig {
            max_message_size: MAX_CONFIGURABLE_MESSAGE + 1,
            ..RelayConfig::default()
        };
        assert!(c.validate().is_err());
    }

    #[test]
    fn token_bucket_refills() {
        let cfg = RelayConfig {
            rate_per_sec: 10,
            rate_burst: 3,
            ..RelayConfig::default()
        };
        let mut rl = RateLimiter::new(&cfg);
        let k = IdentityKey([1; 32]);
        for _ in 0..3 {
            rl.charge(k, 1000).unwrap();
        }
        assert_eq!(rl.charge(k, 1000), Err(RelayErrorCode::RateLimited));
        // Another identity is unaffected.
        rl.charge(IdentityKey([2; 32]), 1000).unwrap();
        // 100 ms at 10/s is one token.
        rl.charge(k, 1100).unwrap();
        assert_eq!(rl.charge(k, 1100), Err(RelayErrorCode::RateLimited));
        // Time going backwards never adds tokens.
        assert_eq!(rl.charge(k, 500), Err(RelayErrorCode::RateLimited));
    }

    #[test]
    fn quotas_count_messages_and_bytes() {
        let cfg = RelayConfig {
            quota_messages: 2,
            quota_bytes: 100,
            ..RelayConfig::default()
        };
        let mut q = Quotas::default();
        let r = IdentityKey([1; 32]);
        q.check(&cfg, &r, 60).unwrap();
        q.add(r, 60);
        assert_eq!(q.check(&cfg, &r, 41), Err(RelayErrorCode::QuotaFull));
        q.check(&cfg, &r, 40).unwrap();
        q.add(r, 40);
        assert_eq!(q.check(&cfg, &r, 0), Err(RelayErrorCode::QuotaFull));
        q.remove(&r, 60);
        q.check(&cfg, &r, 0).unwrap();
        assert_eq!(
            q.usage(&r),
            Usage {
                messages: 1,
                bytes: 40
            }
        );
    }

    #[test]
    fn grant_takes_the_minimum() {
        let cfg = RelayConfig::default();
        let asked = RelayCapabilities {
            max_message_size: 1000,
            max_storage_duration: 0,
            quota_messages: u32::MAX,
            quota_bytes: 5,
        };
        let g = cfg.grant(&asked);
        assert_eq!(g.max_message_size, 1000);
        assert_eq!(g.max_storage_duration, cfg.retention_secs);
        assert_eq!(g.quota_messages, cfg.quota_messages);
        assert_eq!(g.quota_bytes, 5);
    }
}
