//! DNS SRV bootstrap: rendezvous servers published by a domain (`rendezvous.dns_bootstrap`).
//!
//! What it owns: turning `_sremp-rendezvous._tcp.<domain>` SRV records into [`ServerEntry`]s
//! (`target@ip:port`, so TLS checks the certificate for the SRV *target*), the TTL cache of
//! those answers ([`SrvCache`], pure, time injected) and RFC 2782 ordering ([`rfc2782_order`],
//! pure, randomness injected). [`DnsBootstrap`] is the thin async shell around
//! hickory-resolver.
//!
//! Flow, per configured domain, whenever candidate servers are wanted (registrar round,
//! `sremp discover`, delivery lookups):
//! 1. a cached answer younger than its TTL is used as is;
//! 2. otherwise `SRV _sremp-rendezvous._tcp.<domain>.` is asked (the nameserver from
//!    `rendezvous.dns_nameserver`, else the system's resolv.conf), records are ordered by
//!    priority then weighted random within a priority, at most [`MAX_SRV_RECORDS`] kept;
//! 3. each target is resolved to addresses through the same resolver (an A/AAAA lookup
//!    per target); the entry is `target@first-ip:port`;
//! 4. the result is cached for the smallest TTL of the records used, clamped to
//!    [`MIN_CACHE_TTL`]..=[`MAX_CACHE_TTL`]; a failure is cached empty for [`FAILURE_TTL`].
//!
//! Failures (no answer, garbage, timeouts, a target without address) are logged — a warning
//! at most once per [`WARN_EVERY`] per domain, debug otherwise — and never fatal: the domain
//! simply contributes no servers. DNS needs no integrity: the TLS certificate of the target
//! name is what is trusted. The optional `TXT "v=sremp1"` marker is not required.

use crate::wire::rendezvous::ServerEntry;
use crate::wire::Endpoint;
use hickory_resolver::config::{NameServerConfigGroup, ResolverConfig, ResolverOpts};
use hickory_resolver::TokioAsyncResolver;
use rand::Rng;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The SRV owner name prefix.
pub const SRV_PREFIX: &str = "_sremp-rendezvous._tcp.";
/// Most SRV records used per domain.
pub const MAX_SRV_RECORDS: usize = 16;
/// Shortest time an answer is cached (a TTL of 0 would ask on every use).
pub const MIN_CACHE_TTL: Duration = Duration::from_secs(5);
/// Longest time an answer is cached, whatever its TTL.
pub const MAX_CACHE_TTL: Duration = Duration::from_secs(86_400);
/// How long a failed domain is not asked again.
pub const FAILURE_TTL: Duration = Duration::from_secs(30);
/// At most one warning per domain this often.
pub const WARN_EVERY: Duration = Duration::from_secs(300);
/// Deadline for one DNS query (two attempts are made).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a domain gave no servers.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    /// The configured domain is not a valid DNS name.
    #[error("invalid domain {domain:?}: {why}")]
    BadDomain {
        /// The domain.
        domain: String,
        /// Why.
        why: String,
    },
    /// The resolver could not be set up (e.g. no usable resolv.conf).
    #[error("DNS resolver unavailable: {0}")]
    Resolver(String),
    /// The SRV query failed (no records, timeout, malformed answer).
    #[error("SRV lookup {name} failed: {why}")]
    Srv {
        /// The SRV name.
        name: String,
        /// The resolver's reason.
        why: String,
    },
    /// No SRV target had an address (or a usable name).
    #[error("no usable SRV target for {name} ({records} records)")]
    NoTarget {
        /// The SRV name.
        name: String,
        /// SRV records received.
        records: usize,
    },
}

/// One SRV record, as far as bootstrap needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SrvRecord {
    /// Lower is preferred.
    pub priority: u16,
    /// Relative weight within a priority.
    pub weight: u16,
    /// TCP port.
    pub port: u16,
    /// The server's name, without the trailing dot (the certificate name).
    pub target: String,
}

/// RFC 2782 order: ascending priority; within one priority, repeatedly pick a record with
/// probability proportional to its weight (weight-0 records get a small chance too, and all
/// of them when every weight is 0). A target of `.` ("no service") is dropped.
pub fn rfc2782_order(records: Vec<SrvRecord>, rng: &mut impl Rng) -> Vec<SrvRecord> {
    let mut records: Vec<SrvRecord> = records
        .into_iter()
        .filter(|r| !r.target.is_empty() && r.target != ".")
        .collect();
    records.sort_by_key(|r| r.priority);
    let mut out = Vec::with_capacity(records.len());
    let mut rest = records.as_slice();
    while let Some(first) = rest.first() {
        let n = rest
            .iter()
            .take_while(|r| r.priority == first.priority)
            .count();
        let (group, tail) = rest.split_at(n);
        rest = tail;
        let mut group: Vec<SrvRecord> = group.to_vec();
        // Weight-0 records first, as RFC 2782 suggests, so they keep a small chance.
        group.sort_by_key(|r| r.weight != 0);
        while !group.is_empty() {
            let total: u32 = group.iter().map(|r| u32::from(r.weight)).sum();
            let pick = if total == 0 {
                0
            } else {
                let x = rng.gen_range(0..=total);
                let mut run = 0u32;
                group
                    .iter()
                    .position(|r| {
                        run += u32::from(r.weight);
                        run >= x
                    })
                    .unwrap_or(0)
            };
            out.push(group.remove(pick));
        }
    }
    out
}

#[derive(Clone, Debug)]
struct CacheEntry {
    servers: Vec<ServerEntry>,
    expires: Instant,
}

/// Answers per domain, each until its TTL runs out. Pure: the caller gives `now`.
#[derive(Clone, Debug, Default)]
pub struct SrvCache {
    entries: HashMap<String, CacheEntry>,
}

impl SrvCache {
    /// The cached servers of `domain`, if still fresh at `now`.
    pub fn get(&self, domain: &str, now: Instant) -> Option<&[ServerEntry]> {
        self.entries
            .get(domain)
            .filter(|e| now < e.expires)
            .map(|e| e.servers.as_slice())
    }

    /// Caches `servers` for `ttl` (clamped to [`MIN_CACHE_TTL`]..=[`MAX_CACHE_TTL`]).
    pub fn insert(&mut self, domain: &str, servers: Vec<ServerEntry>, ttl: Duration, now: Instant) {
        let ttl = ttl.clamp(MIN_CACHE_TTL, MAX_CACHE_TTL);
        self.entries.insert(
            domain.to_string(),
            CacheEntry {
                servers,
                expires: now + ttl,
            },
        );
    }
}

/// The SRV name for `domain` (`_sremp-rendezvous._tcp.<domain>.`), checked.
pub fn srv_name(domain: &str) -> Result<String, DnsError> {
    let d = domain.trim_end_matches('.');
    let bad = |why: &str| DnsError::BadDomain {
        domain: domain.to_string(),
        why: why.to_string(),
    };
    if d.is_empty() || d.len() > 200 {
        return Err(bad("must be 1 to 200 bytes"));
    }
    // Reuse the endpoint host rules (labels, characters) for the domain.
    Endpoint::new(d, 1).map_err(|e| bad(&e.to_string()))?;
    if d.parse::<std::net::IpAddr>().is_ok() {
        return Err(bad("an IP address is not a domain"));
    }
    Ok(format!("{SRV_PREFIX}{d}."))
}

/// DNS SRV bootstrap for the configured domains: the async shell (resolver, cache, logs).
pub struct DnsBootstrap {
    domains: Vec<String>,
    nameserver: Option<SocketAddr>,
    resolver: OnceLock<Result<TokioAsyncResolver, String>>,
    cache: Mutex<SrvCache>,
    warned: Mutex<HashMap<String, Instant>>,
}

impl std::fmt::Debug for DnsBootstrap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DnsBootstrap")
            .field("domains", &self.domains)
            .field("nameserver", &self.nameserver)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl DnsBootstrap {
    /// Bootstrap for `domains` (none: `None`), asking `nameserver` (UDP and TCP) or, without
    /// it, the servers of the system's resolv.conf.
    pub fn new(domains: &[String], nameserver: Option<SocketAddr>) -> Option<Arc<Self>> {
        if domains.is_empty() {
            return None;
        }
        Some(Arc::new(DnsBootstrap {
            domains: domains.to_vec(),
            nameserver,
            resolver: OnceLock::new(),
            cache: Mutex::new(SrvCache::default()),
            warned: Mutex::new(HashMap::new()),
        }))
    }

    fn resolver(&self) -> Result<&TokioAsyncResolver, DnsError> {
        let r = self.resolver.get_or_init(|| {
            let mut opts = ResolverOpts::default();
            opts.timeout = QUERY_TIMEOUT;
            opts.attempts = 2;
            match self.nameserver {
                Some(ns) => {
                    let group = NameServerConfigGroup::from_ips_clear(&[ns.ip()], ns.port(), true);
                    let config = ResolverConfig::from_parts(None, Vec::new(), group);
                    Ok(TokioAsyncResolver::tokio(config, opts))
                }
                None => hickory_resolver::system_conf::read_system_conf()
                    .map(|(config, _)| TokioAsyncResolver::tokio(config, opts))
                    .map_err(|e| e.to_string()),
            }
        });
        r.as_ref().map_err(|e| DnsError::Resolver(e.clone()))
    }

    /// The servers of every domain, in configuration order, without duplicates. Never fails:
    /// a domain that cannot be resolved contributes nothing (and is logged).
    pub async fn servers(&self) -> Vec<ServerEntry> {
        let mut out: Vec<ServerEntry> = Vec::new();
        for domain in &self.domains {
            let cached = lock(&self.cache)
                .get(domain, Instant::now())
                .map(|s| s.to_vec());
            let found = match cached {
                Some(s) => s,
                None => {
                    let (found, ttl) = match self.resolve(domain).await {
                        Ok((found, ttl)) => {
                            tracing::debug!(domain = %domain, servers = found.len(), ttl_secs = ttl.as_secs(), "DNS bootstrap resolved");
                            (found, ttl)
                        }
                        Err(e) => {
                            self.log_failure(domain, &e);
                            (Vec::new(), FAILURE_TTL)
                        }
                    };
                    lock(&self.cache).insert(domain, found.clone(), ttl, Instant::now());
                    found
                }
            };
            for s in found {
                if !out.iter().any(|x| x.endpoint == s.endpoint) {
                    out.push(s);
                }
            }
        }
        out
    }

    fn log_failure(&self, domain: &str, e: &DnsError) {
        let now = Instant::now();
        let mut warned = lock(&self.warned);
        let due = warned
            .get(domain)
            .is_none_or(|last| now.saturating_duration_since(*last) >= WARN_EVERY);
        if due {
            warned.insert(domain.to_string(), now);
            tracing::warn!(domain = %domain, error = %e, "DNS bootstrap failed; continuing without its servers");
        } else {
            tracing::debug!(domain = %domain, error = %e, "DNS bootstrap failed");
        }
    }

    async fn resolve(&self, domain: &str) -> Result<(Vec<ServerEntry>, Duration), DnsError> {
        let name = srv_name(domain)?;
        let resolver = self.resolver()?;
        let lookup = resolver
            .srv_lookup(name.as_str())
            .await
            .map_err(|e| DnsError::Srv {
                name: name.clone(),
                why: e.to_string(),
            })?;
        let now = Instant::now();
        let mut ttl = lookup
            .as_lookup()
            .valid_until()
            .saturating_duration_since(now);
        let records: Vec<SrvRecord> = lookup
            .iter()
            .map(|s| SrvRecord {
                priority: s.priority(),
                weight: s.weight(),
                port: s.port(),
                target: s
                    .target()
                    .to_ascii()
                    .trim_end_matches('.')
                    .to_ascii_lowercase(),
            })
            .collect();
        let total = records.len();
        let ordered = rfc2782_order(records, &mut rand::thread_rng());
        let mut out = Vec::new();
        for r in ordered.into_iter().take(MAX_SRV_RECORDS) {
            if r.port == 0 {
                continue;
            }
            let ip = match resolver.lookup_ip(format!("{}.", r.target)).await {
                Ok(ips) => {
                    ttl = ttl.min(ips.valid_until().saturating_duration_since(now));
                    ips.iter().next()
                }
                Err(e) => {
                    tracing::debug!(target = %r.target, error = %e, "SRV target has no address");
                    None
                }
            };
            let Some(ip) = ip else { continue };
            let Ok(endpoint) = Endpoint::new(ip.to_string(), r.port) else {
                continue;
            };
            // The certificate is checked for the target; it must be a valid host name.
            if Endpoint::new(r.target.clone(), r.port).is_err() {
                continue;
            }
            if !out.iter().any(|x: &ServerEntry| x.endpoint == endpoint) {
                out.push(ServerEntry {
                    endpoint,
                    name: r.target,
                });
            }
        }
        if out.is_empty() {
            return Err(DnsError::NoTarget {
                name,
                records: total,
            });
        }
        Ok((out, ttl))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn rec(priority: u16, weight: u16, target: &str) -> SrvRecord {
        SrvRecord {
            priority,
            weight,
            port: 7470,
            target: target.into(),
        }
    }

    fn entry(port: u16) -> ServerEntry {
        ServerEntry {
            endpoint: Endpoint::new("127.0.0.1", port).unwrap(),
            name: "rv.sremp.test".into(),
        }
    }

    #[test]
    fn cache_keeps_answers_for_their_ttl_only() {
        let t0 = Instant::now();
        let mut c = SrvCache::default();
        assert!(c.get("a.test", t0).is_none());
        c.insert("a.test", vec![entry(1)], Duration::from_secs(60), t0);
        assert_eq!(c.get("a.test", t0).unwrap(), &[entry(1)]);
        assert_eq!(
            c.get("a.test", t0 + Duration::from_secs(59)).unwrap(),
            &[entry(1)]
        );
        assert!(c.get("a.test", t0 + Duration::from_secs(60)).is_none());
        assert!(c.get("b.test", t0).is_none());
        // TTL 0 is clamped up, a huge TTL down.
        c.insert("z.test", vec![], Duration::ZERO, t0);
        assert!(c
            .get("z.test", t0 + MIN_CACHE_TTL - Duration::from_millis(1))
            .is_some());
        assert!(c.get("z.test", t0 + MIN_CACHE_TTL).is_none());
        c.insert("h.test", vec![], Duration::from_secs(10_000_000), t0);
        assert!(c.get("h.test", t0 + MAX_CACHE_TTL).is_none());
        // A new answer replaces the old one.
        c.insert("a.test", vec![entry(2)], Duration::from_secs(5), t0);
        assert_eq!(c.get("a.test", t0).unwrap(), &[entry(2)]);
    }

    #[test]
    fn order_is_by_priority_then_weighted() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for _ in 0..50 {
            let o = rfc2782_order(
                vec![
                    rec(20, 1, "c"),
                    rec(10, 5, "a"),
                    rec(10, 5, "b"),
                    rec(0, 0, "."),
                    rec(30, 0, "d"),
                ],
                &mut rng,
            );
            let names: Vec<&str> = o.iter().map(|r| r.target.as_str()).collect();
            assert_eq!(names.len(), 4);
            assert!(names[..2].contains(&"a") && names[..2].contains(&"b"));
            assert_eq!(&names[2..], &["c", "d"]);
        }
        // A heavy record is first most of the time, a light one sometimes.
        let mut heavy_first = 0;
        for _ in 0..200 {
            let o = rfc2782_order(vec![rec(1, 1, "light"), rec(1, 99, "heavy")], &mut rng);
            if o[0].target == "heavy" {
                heavy_first += 1;
            }
        }
        assert!(heavy_first > 150 && heavy_first < 200, "{heavy_first}");
    }

    #[test]
    fn domains_are_checked() {
        assert_eq!(
            srv_name("sremp.test").unwrap(),
            "_sremp-rendezvous._tcp.sremp.test."
        );
        assert_eq!(
            srv_name("sremp.test.").unwrap(),
            "_sremp-rendezvous._tcp.sremp.test."
        );
        for bad in ["", ".", "a..b", "-x.test", "127.0.0.1", "a b.test"] {
            assert!(srv_name(bad).is_err(), "{bad}");
        }
    }
}
