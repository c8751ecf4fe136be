//! The rendezvous registry: registration, renewal, withdrawal, lookup, paging, expiry and the
//! request limits. No I/O and no clock: every call takes `now`, and the TLS exporter value of the
//! connection arrives in a [`Session`].
//!
//! Invariants:
//! - a registration exists only if its request verified under the identity it names, for this
//!   server's name and this TLS session, with a fresh timestamp;
//! - within one [`Session`] signed request timestamps strictly increase (same-session replay);
//! - `records.len() <= max_registrations` and live registrations `<= max_registrations`;
//! - an identity has at most `max_per_identity` live registrations (one per endpoint).

use crate::identity::{Identity, IdentityKey};
use crate::limit::{Limited, TokenBuckets};
use crate::sig::{self, SigContext};
use crate::time::Timestamp;
use crate::wire::envelope::ErrorMsg;
use crate::wire::msgpack;
use crate::wire::rendezvous::RendezvousErrorCode as ErrorCode;
use crate::wire::rendezvous::*;
use crate::wire::Endpoint;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::ops::Bound;
use std::time::Duration;

/// Most relay hints one registration may carry.
pub const MAX_RELAYS: usize = 4;
/// Longest server name (a DNS name).
pub const MAX_SERVER_NAME: usize = 253;
/// TLS exporter label (RFC 8446 section 7.5) for the registration binding.
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-sremp-rendezvous-register";
/// Length of the exported value.
pub const EXPORTER_LEN: usize = 32;
/// Byte budget for the peers of one `LOOKUP_RESPONSE` (the rest of the envelope is < 100 bytes,
/// so a response always fits one 65535-byte frame).
pub const MAX_PAGE_BYTES: usize = 60_000;
/// Most peers one page may hold, whatever the client asks.
pub const MAX_PAGE_PEERS: usize = 256;

/// A request the server refuses; sent back as an `ErrorMsg` with [`RequestError::code`].
/// Never carries secret material; `Refused` deliberately carries nothing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The request did not decode or a field is out of range.
    #[error("malformed request: {0}")]
    Malformed(String),
    /// Unknown or forged identity, or a request signature that does not verify.
    #[error("registration refused")]
    Refused,
    /// The request timestamp is too far from the server's clock.
    #[error("request timestamp is {off_ms} ms from the server clock (at most {max_ms} allowed)")]
    Expired {
        /// Distance from the server clock.
        off_ms: u64,
        /// Allowed skew.
        max_ms: u64,
    },
    /// The timestamp did not increase within this TLS session.
    #[error("request replayed (timestamp not after {last})")]
    Replayed {
        /// The last accepted timestamp in this session.
        last: Timestamp,
    },
    /// The request names another server. The `ErrorMsg` names only ours (never what the
    /// client sent); `got` is for local logs.
    #[error("request is for server {got:?}, this is {ours:?}")]
    WrongServer {
        /// The name in the request.
        got: String,
        /// Ours.
        ours: String,
    },
    /// The registry is full.
    #[error("registry full ({max} registrations)")]
    RegistryFull {
        /// The limit.
        max: usize,
    },
    /// The identity already has the most registrations allowed.
    #[error("identity already has {max} registrations")]
    TooManyForIdentity {
        /// The limit.
        max: usize,
    },
    /// Too many requests from this client address.
    #[error("rate limited; retry after {retry_after_ms} ms")]
    RateLimited {
        /// When a request would be accepted again.
        retry_after_ms: u64,
    },
    /// The request frame is larger than the server accepts.
    #[error("request of {len} bytes exceeds the limit of {max}")]
    RequestTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Too many connections (in total or from this address).
    #[error("too many connections (limit {max})")]
    TooManyConnections {
        /// The limit that was hit.
        max: usize,
    },
    /// A message kind a client must not send to a rendezvous server.
    #[error("unexpected message kind {kind:#04x}")]
    Unexpected {
        /// Its kind.
        kind: u16,
    },
}

impl RequestError {
    /// The wire code.
    pub fn code(&self) -> ErrorCode {
        match self {
            RequestError::Malformed(_) => ErrorCode::Malformed,
            RequestError::Refused => ErrorCode::Refused,
            RequestError::Expired { .. } => ErrorCode::Expired,
            RequestError::Replayed { .. } => ErrorCode::Replayed,
            RequestError::WrongServer { .. } => ErrorCode::WrongServer,
            RequestError::RegistryFull { .. } => ErrorCode::RegistryFull,
            RequestError::TooManyForIdentity { .. } => ErrorCode::TooManyForIdentity,
            RequestError::RateLimited { .. } => ErrorCode::RateLimited,
            RequestError::RequestTooLarge { .. } => ErrorCode::RequestTooLarge,
            RequestError::TooManyConnections { .. } => ErrorCode::TooManyConnections,
            RequestError::Unexpected { .. } => ErrorCode::UnexpectedMessage,
        }
    }

    /// The `ErrorMsg` sent to the client. Its text never echoes bytes the client sent.
    pub fn to_msg(&self) -> ErrorMsg {
        let message = match self {
            RequestError::WrongServer { ours, .. } => {
                format!("request is for another server, this is {ours:?}")
            }
            other => other.to_string(),
        };
        ErrorMsg {
            code: self.code() as u16,
            message,
        }
    }
}

/// Registry limits (from `[rendezvous.server]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Shortest TTL granted (shorter requests are raised to it).
    pub min_ttl: Duration,
    /// Longest TTL granted.
    pub max_ttl: Duration,
    /// Largest accepted distance between a request timestamp and the server clock.
    pub max_clock_skew: Duration,
    /// How long an identity whose registrations lapsed is still answered (offline) by lookups.
    pub offline_retention: Duration,
    /// Registrations in total (and identities remembered, online or not).
    pub max_registrations: usize,
    /// Live registrations (endpoints) per identity.
    pub max_per_identity: usize,
    /// Peers per page when the client asks for 0.
    pub page_peers: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            min_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(3600),
            max_clock_skew: Duration::from_secs(120),
            offline_retention: Duration::from_secs(3600),
            max_registrations: 100_000,
            max_per_identity: 4,
            page_peers: 64,
        }
    }
}

/// Per-TLS-connection state.
#[derive(Clone, Debug)]
pub struct Session {
    exporter: [u8; EXPORTER_LEN],
    last_signed: Option<Timestamp>,
}

impl Session {
    /// A session whose TLS exporter value (label [`EXPORTER_LABEL`], no context) is `exporter`.
    pub fn new(exporter: [u8; EXPORTER_LEN]) -> Self {
        Session {
            exporter,
            last_signed: None,
        }
    }
}

/// The bytes signed by a `REGISTER_REQUEST`, after the `"SREMP-1 rendezvous-register\0"`
/// prefix (docs/PROTOCOL.md, "Registration signature"):
///
/// ```text
/// exporter(32) || u8(len name) || name || identity_key(32)
/// || SHA-256(u32be(len data) || data || identity_signature)
/// || u8(len host) || host || u16be(port) || u32be(ttl) || u64be(timestamp)
/// || u8(n relays) || n * (u8(len host) || host || u16be(port) || relay_key(32))
/// ```
///
/// `identity_key` is the key inside the identity (32 zero bytes when the identity does not
/// verify, so that the work done is the same). Fails only when a length does not fit its byte.
#[allow(clippy::too_many_arguments)]
pub fn register_signed_input(
    exporter: &[u8; EXPORTER_LEN],
    server_name: &str,
    identity_key: &[u8; 32],
    identity: &RawIdentity,
    endpoint: &Endpoint,
    ttl_seconds: u32,
    timestamp: Timestamp,
    relays: &[RelayHint],
) -> Result<Vec<u8>, RequestError> {
    let short = |what: &str, n: usize| {
        u8::try_from(n).map_err(|_| RequestError::Malformed(format!("{what} longer than 255")))
    };
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(exporter);
    out.push(short("server name", server_name.len())?);
    out.extend_from_slice(server_name.as_bytes());
    out.extend_from_slice(identity_key);
    let mut h = Sha256::new();
    let data_len = u32::try_from(identity.data.len())
        .map_err(|_| RequestError::Malformed("identity too large".into()))?;
    h.update(data_len.to_be_bytes());
    h.update(&identity.data);
    h.update(identity.signature);
    out.extend_from_slice(&h.finalize());
    push_endpoint(&mut out, endpoint)?;
    out.extend_from_slice(&ttl_seconds.to_be_bytes());
    out.extend_from_slice(&timestamp.0.to_be_bytes());
    out.push(short("relay list", relays.len())?);
    for r in relays {
        push_endpoint(&mut out, &r.endpoint)?;
        out.extend_from_slice(&r.relay_key);
    }
    Ok(out)
}

fn push_endpoint(out: &mut Vec<u8>, e: &Endpoint) -> Result<(), RequestError> {
    let len = u8::try_from(e.host().len())
        .map_err(|_| RequestError::Malformed("host longer than 255".into()))?;
    out.push(len);
    out.extend_from_slice(e.host().as_bytes());
    out.extend_from_slice(&e.port().to_be_bytes());
    Ok(())
}

/// Builds and signs a `REGISTER_REQUEST` (`ttl_seconds == 0` for a withdrawal).
#[allow(clippy::too_many_arguments)]
pub fn sign_register(
    user: &crate::identity::UserIdentity,
    exporter: &[u8; EXPORTER_LEN],
    server_name: &str,
    endpoint: &Endpoint,
    ttl_seconds: u32,
    timestamp: Timestamp,
    relays: &[RelayHint],
) -> Result<RegisterRequest, RequestError> {
    let identity = RawIdentity::from_identity(user.identity());
    let input = register_signed_input(
        exporter,
        server_name,
        &user.key().0,
        &identity,
        endpoint,
        ttl_seconds,
        timestamp,
        relays,
    )?;
    let signature = sig::sign(
        user.signing_key(),
        SigContext::RendezvousRegister,
        &[&input],
    );
    Ok(RegisterRequest {
        identity,
        endpoint: endpoint.clone(),
        ttl_seconds,
        timestamp,
        server_name: server_name.to_string(),
        relays: relays.to_vec(),
        signature,
    })
}

#[derive(Clone, Debug)]
struct Reg {
    endpoint: Endpoint,
    expires_at: Timestamp,
}

#[derive(Clone, Debug)]
struct Record {
    identity: Identity,
    /// Most recent first; lapsed ones until the next prune.
    regs: Vec<Reg>,
    /// The endpoint of the most recent registration (for offline answers).
    last_endpoint: Endpoint,
    relays: Vec<RelayHint>,
    /// Latest expiry of any registration (the withdrawal time after a withdrawal).
    seen_until: Timestamp,
}

impl Record {
    fn prune(&mut self, now: Timestamp) -> usize {
        let before = self.regs.len();
        self.regs.retain(|r| r.expires_at > now);
        before - self.regs.len()
    }

    fn online(&self, now: Timestamp) -> bool {
        self.regs.iter().any(|r| r.expires_at > now)
    }

    fn peer_info(&self, now: Timestamp) -> PeerInfo {
        let mut live = self.regs.iter().filter(|r| r.expires_at > now);
        let (endpoint, online) = match live.next() {
            Some(first) => (first.endpoint.clone(), true),
            None => (self.last_endpoint.clone(), false),
        };
        PeerInfo {
            identity: RawIdentity::from_identity(&self.identity),
            endpoint,
            last_seen: if online {
                now
            } else {
                self.seen_until.min(now)
            },
            online,
            relays: self.relays.clone(),
            alt_endpoints: live.map(|r| r.endpoint.clone()).collect(),
        }
    }
}

/// The registry of one rendezvous server.
#[derive(Debug)]
pub struct Registry {
    server_name: String,
    limits: Limits,
    records: BTreeMap<IdentityKey, Record>,
    /// Registrations counted (live, or expired and not yet swept).
    regs: usize,
    dummy: ed25519_dalek::VerifyingKey,
}

impl Registry {
    /// An empty registry for the server whose TLS name is `server_name`.
    pub fn new(server_name: impl Into<String>, limits: Limits) -> Self {
        Registry {
            server_name: server_name.into(),
            limits,
            records: BTreeMap::new(),
            regs: 0,
            dummy: ed25519_dalek::SigningKey::from_bytes(&[0x42; 32]).verifying_key(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Identities remembered (online or offline).
    pub fn identities(&self) -> usize {
        self.records.len()
    }

    /// Registrations counted (including expired ones not yet swept by [`Registry::expire`]).
    pub fn registrations(&self) -> usize {
        self.regs
    }

    /// Handles `REGISTER_REQUEST` (a registration, a renewal, or with TTL 0 a withdrawal).
    pub fn register(
        &mut self,
        session: &mut Session,
        req: &RegisterRequest,
        now: Timestamp,
    ) -> Result<RegisterResponse, RequestError> {
        if req.server_name.len() > MAX_SERVER_NAME {
            return Err(RequestError::Malformed("server name too long".into()));
        }
        if req.relays.len() > MAX_RELAYS {
            return Err(RequestError::Malformed(format!(
                "{} relays (at most {MAX_RELAYS})",
                req.relays.len()
            )));
        }
        if req.server_name != self.server_name {
            return Err(RequestError::WrongServer {
                got: req.server_name.clone(),
                ours: self.server_name.clone(),
            });
        }
        let identity = self.verify(session, req)?;
        let off = req.timestamp.since(now).max(now.since(req.timestamp));
        if off > self.limits.max_clock_skew {
            return Err(RequestError::Expired {
                off_ms: millis(off),
                max_ms: millis(self.limits.max_clock_skew),
            });
        }
        if let Some(last) = session.last_signed {
            if req.timestamp <= last {
                return Err(RequestError::Replayed { last });
            }
        }
        session.last_signed = Some(req.timestamp);
        if req.ttl_seconds == 0 {
            self.withdraw(&identity.key(), &req.endpoint, now);
            return Ok(RegisterResponse {
                success: true,
                expires_at: now,
                renewal_interval: 0,
                error_message: None,
            });
        }
        let ttl = Duration::from_secs(u64::from(req.ttl_seconds))
            .clamp(self.limits.min_ttl, self.limits.max_ttl);
        let expires_at = now.plus(ttl);
        self.insert(identity, req, expires_at, now)?;
        let ttl_secs = u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX);
        Ok(RegisterResponse {
            success: true,
            expires_at,
            renewal_interval: (ttl_secs / 2).max(1),
            error_message: None,
        })
    }

    /// Verifies the identity and the request signature with the same work whichever fails,
    /// and the same answer ([`RequestError::Refused`]).
    fn verify(&self, session: &Session, req: &RegisterRequest) -> Result<Identity, RequestError> {
        let identity = req.identity.verify();
        let (key, key_bytes) = match &identity {
            Ok(id) => (id.verifying_key().ok(), id.key().0),
            Err(e) => {
                if !matches!(e, crate::identity::IdentityError::BadSignature) {
                    // The identity failed before its signature check: spend that check anyway.
                    let _ = sig::verify(
                        &self.dummy,
                        SigContext::Identity,
                        &[&req.identity.data],
                        &req.identity.signature,
                    );
                }
                (None, [0u8; 32])
            }
        };
        let input = register_signed_input(
            &session.exporter,
            &self.server_name,
            &key_bytes,
            &req.identity,
            &req.endpoint,
            req.ttl_seconds,
            req.timestamp,
            &req.relays,
        )?;
        let vk = key.unwrap_or(self.dummy);
        let sig_ok = sig::verify(
            &vk,
            SigContext::RendezvousRegister,
            &[&input],
            &req.signature,
        )
        .is_ok();
        match (identity, key.is_some(), sig_ok) {
            (Ok(id), true, true) => Ok(id),
            _ => Err(RequestError::Refused),
        }
    }

    fn withdraw(&mut self, key: &IdentityKey, endpoint: &Endpoint, now: Timestamp) {
        if let Some(rec) = self.records.get_mut(key) {
            let before = rec.regs.len();
            rec.regs.retain(|r| &r.endpoint != endpoint);
            self.regs -= before - rec.regs.len();
            if !rec.online(now) {
                rec.seen_until = rec.seen_until.min(now);
            }
        }
    }

    fn insert(
        &mut self,
        identity: Identity,
        req: &RegisterRequest,
        expires_at: Timestamp,
        now: Timestamp,
    ) -> Result<(), RequestError> {
        let key = identity.key();
        let max = self.limits.max_registrations;
        if let Some(rec) = self.records.get_mut(&key) {
            self.regs -= rec.prune(now);
            let existing = rec.regs.iter().position(|r| r.endpoint == req.endpoint);
            if existing.is_none() {
                if rec.regs.len() >= self.limits.max_per_identity {
                    return Err(RequestError::TooManyForIdentity {
                        max: self.limits.max_per_identity,
                    });
                }
                if self.regs >= max {
                    self.expire(now);
                    if self.regs >= max {
                        return Err(RequestError::RegistryFull { max });
                    }
                }
            }
        } else {
            if self.limits.max_per_identity == 0 {
                return Err(RequestError::TooManyForIdentity { max: 0 });
            }
            if self.regs >= max || self.records.len() >= max {
                self.expire(now);
            }
            if self.regs >= max {
                return Err(RequestError::RegistryFull { max });
            }
            if self.records.len() >= max && !self.evict_offline(now) {
                return Err(RequestError::RegistryFull { max });
            }
        }
        let rec = self.records.entry(key).or_insert_with(|| Record {
            identity: identity.clone(),
            regs: Vec::new(),
            last_endpoint: req.endpoint.clone(),
            relays: Vec::new(),
            seen_until: now,
        });
        if let Some(i) = rec.regs.iter().position(|r| r.endpoint == req.endpoint) {
            rec.regs.remove(i);
        } else {
            self.regs += 1;
        }
        rec.regs.insert(
            0,
            Reg {
                endpoint: req.endpoint.clone(),
                expires_at,
            },
        );
        if identity.version() >= rec.identity.version() {
            rec.identity = identity;
        }
        rec.relays = req.relays.clone();
        rec.last_endpoint = req.endpoint.clone();
        rec.seen_until = rec.seen_until.max(expires_at);
        Ok(())
    }

    /// Drops the offline identity that lapsed first. False if every identity is online.
    fn evict_offline(&mut self, now: Timestamp) -> bool {
        let victim = self
            .records
            .iter()
            .filter(|(_, r)| !r.online(now))
            .min_by_key(|(_, r)| r.seen_until)
            .map(|(k, _)| *k);
        match victim.and_then(|k| self.records.remove(&k)) {
            Some(rec) => {
                self.regs -= rec.regs.len();
                true
            }
            None => false,
        }
    }

    /// Removes lapsed registrations, and identities offline for longer than the retention.
    pub fn expire(&mut self, now: Timestamp) {
        let retention = self.limits.offline_retention;
        let mut removed = 0;
        self.records.retain(|_, rec| {
            removed += rec.prune(now);
            rec.online(now) || rec.seen_until.plus(retention) > now
        });
        let kept: usize = self.records.values().map(|r| r.regs.len()).sum();
        debug_assert_eq!(kept + removed, self.regs);
        self.regs = kept;
    }

    /// Handles `LOOKUP_REQUEST`.
    pub fn lookup(&self, req: &LookupRequest, now: Timestamp) -> LookupResponse {
        if let Some(target) = &req.target_identity {
            let peers = self
                .records
                .get(&IdentityKey(*target))
                .filter(|r| r.online(now) || r.seen_until.plus(self.limits.offline_retention) > now)
                .map(|r| r.peer_info(now))
                .into_iter()
                .collect();
            return LookupResponse {
                peers,
                error_message: None,
                next_cursor: None,
            };
        }
        if !req.list_all {
            return LookupResponse {
                peers: Vec::new(),
                error_message: None,
                next_cursor: None,
            };
        }
        let limit = match usize::from(req.limit) {
            0 => self.limits.page_peers,
            n => n,
        }
        .clamp(1, MAX_PAGE_PEERS);
        let start = match &req.cursor {
            Some(c) => Bound::Excluded(IdentityKey(*c)),
            None => Bound::Unbounded,
        };
        let mut online = self
            .records
            .range((start, Bound::Unbounded))
            .filter(|(_, r)| r.online(now));
        let mut peers = Vec::new();
        let mut bytes = 0usize;
        let mut last = None;
        let mut more = false;
        for (key, rec) in online.by_ref() {
            let info = rec.peer_info(now);
            let size = msgpack::encode(&info).len();
            if peers.len() >= limit || bytes + size > MAX_PAGE_BYTES {
                more = true;
                break;
            }
            bytes += size;
            peers.push(info);
            last = Some(*key);
        }
        LookupResponse {
            peers,
            error_message: None,
            next_cursor: if more {
                last.map(|k: IdentityKey| k.0)
            } else {
                None
            },
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Token-bucket request rate limit per client address.
#[derive(Debug)]
pub struct RateLimiter(TokenBuckets<IpAddr>);

impl RateLimiter {
    /// `per_sec` requests per second on average, bursts of `burst`, tracking at most
    /// `max_clients` addresses (beyond that, idle addresses are forgotten first; if none is
    /// idle, new addresses are limited).
    pub fn new(per_sec: u32, burst: u32, max_clients: usize) -> Self {
        RateLimiter(TokenBuckets::new(
            per_sec,
            burst.max(1),
            max_clients.max(1),
            usize::MAX,
        ))
    }

    /// Takes one request token for `ip`.
    pub fn check(&mut self, ip: IpAddr, now: Timestamp) -> Result<(), RequestError> {
        self.0.take(ip, now.0).map_err(|e| match e {
            Limited::Empty { retry_after_ms } => RequestError::RateLimited { retry_after_ms },
            Limited::TooManyKeys { .. } => RequestError::RateLimited {
                retry_after_ms: 1000,
            },
        })
    }

    /// Forgets addresses whose bucket has refilled (they are indistinguishable from new ones).
    pub fn forget_idle(&mut self, now: Timestamp) {
        self.0.forget_full(now.0);
    }
}

/// Connection admission: a total limit and a per-address limit.
#[derive(Debug)]
pub struct Admission {
    max_total: usize,
    max_per_ip: usize,
    total: usize,
    per_ip: HashMap<IpAddr, usize>,
}

impl Admission {
    /// Limits.
    pub fn new(max_total: usize, max_per_ip: usize) -> Self {
        Admission {
            max_total,
            max_per_ip,
            total: 0,
            per_ip: HashMap::new(),
        }
    }

    /// Admits a connection from `ip`; pair with [`Admission::release`].
    pub fn admit(&mut self, ip: IpAddr) -> Result<(), RequestError> {
        if self.total >= self.max_total {
            return Err(RequestError::TooManyConnections {
                max: self.max_total,
            });
        }
        let n = self.per_ip.entry(ip).or_insert(0);
        if *n >= self.max_per_ip {
            return Err(RequestError::TooManyConnections {
                max: self.max_per_ip,
            });
        }
        *n += 1;
        self.total += 1;
        Ok(())
    }

    /// Releases a connection admitted earlier.
    pub fn release(&mut self, ip: IpAddr) {
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
            self.total = self.total.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Flags, UserIdentity};
    use rand::SeedableRng;

    const NAME: &str = "rv1.test";
    const T0: Timestamp = Timestamp(1_700_000_000_000);

    fn user(seed: u8) -> UserIdentity {
        let mut rng = rand_chacha::ChaCha20Rng::from_seed([seed; 32]);
        UserIdentity::generate(
            &format!("u{seed}"),
            Flags::default(),
            Timestamp(1),
            &mut rng,
        )
        .unwrap()
    }

    fn ep(port: u16) -> Endpoint {
        Endpoint::new("127.0.0.1", port).unwrap()
    }

    fn req(u: &UserIdentity, s: &[u8; 32], port: u16, ttl: u32, ts: Timestamp) -> RegisterRequest {
        sign_register(u, s, NAME, &ep(port), ttl, ts, &[]).unwrap()
    }

    fn reg() -> Registry {
        Registry::new(NAME, Limits::default())
    }

    #[test]
    fn register_lookup_expire() {
        let mut r = reg();
        let u = user(1);
        let mut s = Session::new([7; 32]);
        let resp = r
            .register(&mut s, &req(&u, &[7; 32], 9000, 120, T0), T0)
            .unwrap();
        assert_eq!(resp.expires_at, T0.plus(Duration::from_secs(120)));
        assert_eq!(resp.renewal_interval, 60);
        let q = LookupRequest {
            target_identity: Some(u.key().0),
            list_all: false,
            cursor: None,
            limit: 0,
        };
        let found = r.lookup(&q, T0).peers;
        assert_eq!(found.len(), 1);
        assert!(found[0].online);
        assert_eq!(found[0].endpoint, ep(9000));
        // After the TTL: offline, last_seen is the expiry; then gone after the retention.
        let later = T0.plus(Duration::from_secs(121));
        r.expire(later);
        let found = r.lookup(&q, later).peers;
        assert!(!found[0].online);
        assert_eq!(found[0].last_seen, resp.expires_at);
        assert_eq!(r.registrations(), 0);
        let all = LookupRequest {
            target_identity: None,
            list_all: true,
            cursor: None,
            limit: 0,
        };
        assert!(r.lookup(&all, later).peers.is_empty());
        let gone = later.plus(Duration::from_secs(3600));
        r.expire(gone);
        assert!(r.lookup(&q, gone).peers.is_empty());
        assert_eq!(r.identities(), 0);
    }

    #[test]
    fn ttl_is_clamped() {
        let mut r = reg();
        let u = user(1);
        let mut s = Session::new([7; 32]);
        let a = r
            .register(&mut s, &req(&u, &[7; 32], 1, 5, T0), T0)
            .unwrap();
        assert_eq!(a.expires_at, T0.plus(Duration::from_secs(60)));
        let b = r
            .register(
                &mut s,
                &req(&u, &[7; 32], 1, u32::MAX, Timestamp(T0.0 + 1)),
                T0,
            )
            .unwrap();
        assert_eq!(b.expires_at, T0.plus(Duration::from_secs(3600)));
        assert_eq!(r.registrations(), 1);
    }

    #[test]
    fn forged_replayed_expired_and_cross_server_are_refused() {
        let mut r = reg();
        let u = user(1);
        let mallory = user(2);
        let mut s = Session::new([7; 32]);
        // Forged: Mallory signs a request naming Alice's identity.
        let mut forged = req(&mallory, &[7; 32], 1, 60, T0);
        forged.identity = RawIdentity::from_identity(u.identity());
        assert_eq!(r.register(&mut s, &forged, T0), Err(RequestError::Refused));
        // A tampered identity gets the same answer.
        let mut bad_id = req(&u, &[7; 32], 1, 60, T0);
        bad_id.identity.signature[3] ^= 1;
        assert_eq!(r.register(&mut s, &bad_id, T0), Err(RequestError::Refused));
        let mut garbage = req(&u, &[7; 32], 1, 60, T0);
        garbage.identity.data = serde_bytes::ByteBuf::from(vec![1, 2, 3]);
        assert_eq!(r.register(&mut s, &garbage, T0), Err(RequestError::Refused));
        // Tampered endpoint.
        let mut moved = req(&u, &[7; 32], 1, 60, T0);
        moved.endpoint = ep(2);
        assert_eq!(r.register(&mut s, &moved, T0), Err(RequestError::Refused));
        // Another TLS session.
        let good = req(&u, &[7; 32], 1, 60, T0);
        let mut other = Session::new([8; 32]);
        assert_eq!(
            r.register(&mut other, &good, T0),
            Err(RequestError::Refused)
        );
        // Same session replay.
        r.register(&mut s, &good, T0).unwrap();
        assert!(matches!(
            r.register(&mut s, &good, T0),
            Err(RequestError::Replayed { .. })
        ));
        // Expired.
        let old = req(&u, &[7; 32], 1, 60, Timestamp(T0.0 - 121_000));
        let mut s2 = Session::new([7; 32]);
        assert!(matches!(
            r.register(&mut s2, &old, T0),
            Err(RequestError::Expired { .. })
        ));
        // For another server.
        let mut r2 = Registry::new("rv2.test", Limits::default());
        assert!(matches!(
            r2.register(&mut Session::new([7; 32]), &good, T0),
            Err(RequestError::WrongServer { .. })
        ));
        // Even when the name is rewritten, the signature does not cover it.
        let mut renamed = good.clone();
        renamed.server_name = "rv2.test".into();
        assert_eq!(
            r2.register(&mut Session::new([7; 32]), &renamed, T0),
            Err(RequestError::Refused)
        );
    }

    /// docs/PROTOCOL.md "Home relays": a withdrawal removes only its endpoint; the kept home
    /// relays (and identity) stay, whatever relays the withdrawal names.
    #[test]
    fn withdrawal_keeps_the_home_relays() {
        let mut r = reg();
        let a = user(1);
        let mut s = Session::new([1; 32]);
        let home = RelayHint {
            endpoint: ep(9000),
            relay_key: [9; 32],
        };
        let other = RelayHint {
            endpoint: ep(9001),
            relay_key: [8; 32],
        };
        let ts = |n: u64| Timestamp(T0.0 + n);
        let add = sign_register(
            &a,
            &[1; 32],
            NAME,
            &ep(1),
            60,
            ts(1),
            std::slice::from_ref(&home),
        );
        r.register(&mut s, &add.unwrap(), T0).unwrap();
        let gone = sign_register(
            &a,
            &[1; 32],
            NAME,
            &ep(1),
            0,
            ts(2),
            std::slice::from_ref(&other),
        );
        r.register(&mut s, &gone.unwrap(), T0).unwrap();
        let q = LookupRequest {
            target_identity: Some(a.key().0),
            list_all: false,
            cursor: None,
            limit: 0,
        };
        let peers = r.lookup(&q, T0).peers;
        assert_eq!(peers.len(), 1);
        assert!(!peers[0].online);
        assert_eq!(peers[0].relays, vec![home]);
    }

    #[test]
    fn withdraw_and_limits() {
        let limits = Limits {
            max_registrations: 3,
            max_per_identity: 2,
            ..Limits::default()
        };
        let mut r = Registry::new(NAME, limits);
        let (a, b, c) = (user(1), user(2), user(3));
        let mut s = Session::new([1; 32]);
        let mut ts = T0.0;
        let mut next = || {
            ts += 1;
            Timestamp(ts)
        };
        r.register(&mut s, &req(&a, &[1; 32], 1, 60, next()), T0)
            .unwrap();
        r.register(&mut s, &req(&a, &[1; 32], 2, 60, next()), T0)
            .unwrap();
        assert_eq!(
            r.register(&mut s, &req(&a, &[1; 32], 3, 60, next()), T0),
            Err(RequestError::TooManyForIdentity { max: 2 })
        );
        // Renewing an existing endpoint is not a new registration.
        r.register(&mut s, &req(&a, &[1; 32], 1, 60, next()), T0)
            .unwrap();
        r.register(&mut s, &req(&b, &[1; 32], 1, 60, next()), T0)
            .unwrap();
        assert_eq!(
            r.register(&mut s, &req(&c, &[1; 32], 1, 60, next()), T0),
            Err(RequestError::RegistryFull { max: 3 })
        );
        // Withdrawal frees a slot.
        let resp = r
            .register(&mut s, &req(&b, &[1; 32], 1, 0, next()), T0)
            .unwrap();
        assert_eq!(resp.renewal_interval, 0);
        r.register(&mut s, &req(&c, &[1; 32], 1, 60, next()), T0)
            .unwrap();
        assert_eq!(r.registrations(), 3);
        let q = LookupRequest {
            target_identity: Some(a.key().0),
            list_all: false,
            cursor: None,
            limit: 0,
        };
        let info = &r.lookup(&q, T0).peers[0];
        assert_eq!(info.endpoint, ep(1));
        assert_eq!(info.alt_endpoints, vec![ep(2)]);
    }

    #[test]
    fn paging_visits_every_online_peer_once() {
        let mut r = reg();
        let mut keys = Vec::new();
        for i in 0..25u8 {
            let u = user(10 + i);
            keys.push(u.key());
            let mut s = Session::new([i; 32]);
            r.register(
                &mut s,
                &sign_register(&u, &[i; 32], NAME, &ep(1000), 60, T0, &[]).unwrap(),
                T0,
            )
            .unwrap();
        }
        keys.sort();
        let mut cursor = None;
        let mut seen = Vec::new();
        for _ in 0..10 {
            let page = r.lookup(
                &LookupRequest {
                    target_identity: None,
                    list_all: true,
                    cursor,
                    limit: 7,
                },
                T0,
            );
            assert!(page.peers.len() <= 7);
            seen.extend(
                page.peers
                    .iter()
                    .map(|p| p.identity.verify().unwrap().key()),
            );
            cursor = page.next_cursor;
            if cursor.is_none() {
                break;
            }
        }
        assert_eq!(seen, keys);
    }

    #[test]
    fn pages_fit_one_frame() {
        let mut r = Registry::new(
            NAME,
            Limits {
                max_registrations: 1000,
                ..Limits::default()
            },
        );
        let relays: Vec<RelayHint> = (0..4)
            .map(|i| RelayHint {
                endpoint: Endpoint::new(
                    format!("{0}.{0}.{0}.{1}", "r".repeat(62), "r".repeat(61)),
                    i,
                )
                .unwrap(),
                relay_key: [1; 32],
            })
            .collect();
        for i in 0..300u16 {
            let u = user((i % 250) as u8);
            let e = Endpoint::new(
                format!("{0}.{0}.{0}.{1}.example", "h".repeat(60), "h".repeat(52)),
                i,
            )
            .unwrap();
            let mut s = Session::new([0; 32]);
            let rq = sign_register(
                &u,
                &[0; 32],
                NAME,
                &e,
                60,
                Timestamp(T0.0 + u64::from(i)),
                &relays,
            )
            .unwrap();
            let _ = r.register(&mut s, &rq, T0);
        }
        let page = r.lookup(
            &LookupRequest {
                target_identity: None,
                list_all: true,
                cursor: None,
                limit: u16::MAX,
            },
            T0,
        );
        let env = crate::wire::Envelope::from(page);
        assert!(env.encode().len() <= crate::wire::frame::MAX_FRAME);
    }

    #[test]
    fn rate_limit_refills() {
        let mut rl = RateLimiter::new(2, 3, 10);
        let ip: IpAddr = [127, 0, 0, 1].into();
        let other: IpAddr = [127, 0, 0, 2].into();
        for _ in 0..3 {
            rl.check(ip, T0).unwrap();
        }
        assert_eq!(
            rl.check(ip, T0),
            Err(RequestError::RateLimited {
                retry_after_ms: 500
            })
        );
        rl.check(other, T0).unwrap();
        rl.check(ip, Timestamp(T0.0 + 500)).unwrap();
        assert!(rl.check(ip, Timestamp(T0.0 + 500)).is_err());
    }

    #[test]
    fn admission_limits() {
        let mut a = Admission::new(3, 2);
        let ip: IpAddr = [127, 0, 0, 1].into();
        a.admit(ip).unwrap();
        a.admit(ip).unwrap();
        assert_eq!(
            a.admit(ip),
            Err(RequestError::TooManyConnections { max: 2 })
        );
        a.admit([127, 0, 0, 2].into()).unwrap();
        assert_eq!(
            a.admit([127, 0, 0, 3].into()),
            Err(RequestError::TooManyConnections { max: 3 })
        );
        a.release(ip);
        a.admit([127, 0, 0, 3].into()).unwrap();
    }

    #[test]
    fn unknown_identity_and_bad_signature_get_the_same_answer() {
        // Both paths run exactly two strict Ed25519 verifications (identity, then request,
        // with a dummy key standing in for an invalid identity) and never consult the
        // verified-identity cache, so neither the answer nor the work tells them apart. Timing
        // itself is not asserted here (tests assert behaviour; a loaded CI machine is noisy).
        let mut r = reg();
        let u = user(1);
        let m = user(2);
        let mut s = Session::new([7; 32]);
        // Alice's identity is well known to this process (verified and cached) ...
        let _ = req(&u, &[7; 32], 1, 60, T0).identity.verify().unwrap();
        let mut bad_sig = req(&u, &[7; 32], 1, 60, T0);
        bad_sig.signature[5] ^= 1;
        let mut bad_id = req(&m, &[7; 32], 1, 60, T0);
        bad_id.identity.signature[5] ^= 1;
        let a = r.register(&mut s, &bad_sig, T0);
        let b = r.register(&mut s, &bad_id, T0);
        assert_eq!(a, Err(RequestError::Refused));
        assert_eq!(a, b);
    }
}
