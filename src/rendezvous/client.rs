//! The rendezvous client ([`Client`]: one TLS connection, one request at a time) and the node's
//! background registrar ([`spawn_registrar`]).
//!
//! Client: connects over TCP, completes a TLS 1.3 handshake validated against the configured
//! roots (an untrusted certificate is [`RendezvousError::UntrustedCertificate`]), exchanges
//! version headers, reads the connection's exporter value, and then signs every registration
//! over it. Every step has the deadline given to [`Client::connect`].
//!
//! Registrar:
//! 1. candidate servers = configured (`rendezvous.servers` plus any manual ones), then those
//!    found by DNS bootstrap (`rendezvous.dns_bootstrap`, re-read every round, cached for their
//!    TTL; see [`super::dns`]), then the remembered ones from `<data_dir>/rendezvous-servers`; it registers every endpoint at the
//!    first `max_register_servers` of them;
//! 2. after each registration it asks LIST_SERVERS, merges new servers and rewrites the
//!    remembered file (one `name@host:port` or `host:port` per line, at most 256 lines);
//! 3. renews at the `renewal_interval` the server returned (half the granted TTL), retries a
//!    failing server with backoff (5 s doubling to 5 min);
//! 4. on shutdown withdraws every registration (TTL 0), each server within the timeout.

use super::core::{sign_register, EXPORTER_LEN};
use super::gossip::ServerList;
use super::{tls, RendezvousError};
use crate::identity::{Identity, IdentityKey, UserIdentity};
use crate::noise::framed::{self, FrameReader};
use crate::time::Timestamp;
use crate::wire::frame::{self, MAX_FRAME};
use crate::wire::rendezvous::*;
use crate::wire::version::{self, Version, VersionHeader, HEADER_LEN};
use crate::wire::{Endpoint, Envelope};
use rustls::pki_types::ServerName;
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::client::TlsStream;

/// Most servers kept in the remembered-servers file.
pub const MAX_REMEMBERED: usize = 256;
/// Most pages [`Client::list_all`] fetches.
pub const MAX_LIST_PAGES: usize = 1024;
/// Name of the remembered-servers file in the data directory.
pub const REMEMBERED_FILE: &str = "rendezvous-servers";

/// An accepted registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registration {
    /// When it lapses (server clock).
    pub expires_at: Timestamp,
    /// When to renew.
    pub renewal_interval: Duration,
}

/// A `PeerInfo` from a lookup or listing whose identity verified: what the client hands on.
/// (The wire form, [`crate::wire::rendezvous::PeerInfo`], carries the identity as raw bytes.)
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer.
    pub identity: Identity,
    /// Where it listens (its most recent registration).
    pub endpoint: Endpoint,
    /// `now` while online; otherwise when its last registration lapsed or was withdrawn.
    pub last_seen: Timestamp,
    /// At least one registration has not expired.
    pub online: bool,
    /// Its home relays (from its most recent registration).
    pub relays: Vec<RelayHint>,
    /// Its other live registered endpoints, most recent first.
    pub alt_endpoints: Vec<Endpoint>,
}

impl PeerInfo {
    /// Verifies a received peer's identity. One that does not verify makes the whole reply
    /// malformed, exactly as when identities were verified while decoding.
    pub fn verify(p: crate::wire::rendezvous::PeerInfo) -> Result<Self, RendezvousError> {
        let identity = p.identity.verify().map_err(|_| {
            RendezvousError::Decode(crate::wire::DecodeError::Invalid {
                what: "peer identity",
                why: "does not verify",
            })
        })?;
        Ok(PeerInfo {
            identity,
            endpoint: p.endpoint,
            last_seen: p.last_seen,
            online: p.online,
            relays: p.relays,
            alt_endpoints: p.alt_endpoints,
        })
    }
}

fn verify_peers(
    peers: Vec<crate::wire::rendezvous::PeerInfo>,
) -> Result<Vec<PeerInfo>, RendezvousError> {
    peers.into_iter().map(PeerInfo::verify).collect()
}

/// One page of a listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page {
    /// Online peers.
    pub peers: Vec<PeerInfo>,
    /// Pass this to get the next page; none after the last.
    pub next: Option<IdentityKey>,
}

/// A connection to one rendezvous server.
pub struct Client {
    server: ServerEntry,
    reader: FrameReader<TlsStream<TcpStream>>,
    exporter: [u8; EXPORTER_LEN],
    scratch: Vec<u8>,
    last_timestamp: Timestamp,
    timeout: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.server.to_string())
            .finish_non_exhaustive()
    }
}

fn tls_error(server: &ServerEntry, e: std::io::Error) -> RendezvousError {
    let server = server.to_string();
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(c)) => RendezvousError::UntrustedCertificate {
            server,
            why: format!("{c:?}"),
        },
        Some(other) => RendezvousError::Handshake {
            server,
            why: other.to_string(),
        },
        None => RendezvousError::Handshake {
            server,
            why: e.to_string(),
        },
    }
}

impl Client {
    /// Connects to `server` and completes TLS and the version exchange within `timeout`.
    pub async fn connect(
        server: &ServerEntry,
        tls: Arc<rustls::ClientConfig>,
        timeout: Duration,
    ) -> Result<Client, RendezvousError> {
        Self::connect_from(server, tls, timeout, None).await
    }

    /// [`Client::connect`] from a chosen local address (tests use 127.0.0.x to be distinct
    /// clients).
    pub async fn connect_from(
        server: &ServerEntry,
        tls: Arc<rustls::ClientConfig>,
        timeout: Duration,
        local: Option<IpAddr>,
    ) -> Result<Client, RendezvousError> {
        let fut = Self::connect_inner(server, tls, local, timeout);
        tokio::time::timeout(timeout, fut)
            .await
            .map_err(|_| RendezvousError::Timeout {
                server: server.to_string(),
                after: timeout,
            })?
    }

    async fn connect_inner(
        server: &ServerEntry,
        tls: Arc<rustls::ClientConfig>,
        local: Option<IpAddr>,
        timeout: Duration,
    ) -> Result<Client, RendezvousError> {
        let conn_err = |source| RendezvousError::Connect {
            server: server.to_string(),
            source,
        };
        let tcp = match local {
            None => TcpStream::connect(server.endpoint.to_connect_string())
                .await
                .map_err(conn_err)?,
            Some(ip) => {
                let addr = tokio::net::lookup_host(server.endpoint.to_connect_string())
                    .await
                    .map_err(conn_err)?
                    .find(|a| a.is_ipv4() == ip.is_ipv4())
                    .ok_or_else(|| conn_err(std::io::ErrorKind::AddrNotAvailable.into()))?;
                let sock = if ip.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()
                } else {
                    tokio::net::TcpSocket::new_v6()
                }
                .map_err(conn_err)?;
                sock.bind(std::net::SocketAddr::new(ip, 0))
                    .map_err(conn_err)?;
                sock.connect(addr).await.map_err(conn_err)?
            }
        };
        let _ = tcp.set_nodelay(true);
        let name =
            ServerName::try_from(server.name.clone()).map_err(|e| RendezvousError::Handshake {
                server: server.to_string(),
                why: format!("invalid TLS server name: {e}"),
            })?;
        let connector = tokio_rustls::TlsConnector::from(tls);
        let mut stream = connector
            .connect(name, tcp)
            .await
            .map_err(|e| tls_error(server, e))?;
        let hs = |e: std::io::Error| RendezvousError::Handshake {
            server: server.to_string(),
            why: e.to_string(),
        };
        stream
            .write_all(&VersionHeader(Version::CURRENT).encode())
            .await
            .map_err(hs)?;
        stream.flush().await.map_err(hs)?;
        let mut theirs = [0u8; HEADER_LEN];
        stream.read_exact(&mut theirs).await.map_err(hs)?;
        VersionHeader::decode(&theirs)
            .and_then(|h| version::negotiate(Version::CURRENT, h.0))
            .map_err(|e| RendezvousError::Handshake {
                server: server.to_string(),
                why: e.to_string(),
            })?;
        let exporter =
            tls::exporter(stream.get_ref().1).map_err(|_| RendezvousError::Handshake {
                server: server.to_string(),
                why: "TLS exporter unavailable".into(),
            })?;
        Ok(Client {
            server: server.clone(),
            reader: FrameReader::new(stream),
            exporter,
            scratch: Vec::new(),
            last_timestamp: Timestamp(0),
            timeout,
        })
    }

    /// The server this client talks to.
    pub fn server(&self) -> &ServerEntry {
        &self.server
    }

    /// This connection's exporter value (what registrations are bound to).
    pub fn exporter(&self) -> [u8; EXPORTER_LEN] {
        self.exporter
    }

    /// A timestamp for a signed request: now, but always after the previous one.
    pub fn next_timestamp(&mut self) -> Timestamp {
        let ts = Timestamp::now().max(Timestamp(self.last_timestamp.0.saturating_add(1)));
        self.last_timestamp = ts;
        ts
    }

    /// Sends one envelope and returns the reply; an `ErrorMsg` reply is
    /// [`RendezvousError::Refused`].
    pub async fn call(&mut self, req: &Envelope) -> Result<Envelope, RendezvousError> {
        self.call_raw(&req.encode()).await
    }

    /// Sends `body` as one frame (whatever it contains) and returns the reply.
    pub async fn call_raw(&mut self, body: &[u8]) -> Result<Envelope, RendezvousError> {
        let timeout = self.timeout;
        let server = self.server.to_string();
        let fut = async {
            let w = self.reader.get_mut();
            framed::write(w, body, &mut self.scratch).await?;
            w.flush().await.map_err(frame::FrameError::Io)?;
            let reply = self.reader.read(MAX_FRAME).await?;
            Ok::<_, RendezvousError>(Envelope::decode(reply)?)
        };
        let reply =
            tokio::time::timeout(timeout, fut)
                .await
                .map_err(|_| RendezvousError::Timeout {
                    server,
                    after: timeout,
                })??;
        match reply {
            Envelope::ErrorMsg(e) => Err(RendezvousError::Refused {
                code: e.code,
                message: e.message,
            }),
            other => Ok(other),
        }
    }

    /// Registers (or renews) `endpoint` for `user` for about `ttl_seconds`, advertising
    /// `relays` as the user's home relays.
    pub async fn register(
        &mut self,
        user: &UserIdentity,
        endpoint: &Endpoint,
        ttl_seconds: u32,
        relays: &[RelayHint],
    ) -> Result<Registration, RendezvousError> {
        let ts = self.next_timestamp();
        let req = sign_register(
            user,
            &self.exporter,
            &self.server.name,
            endpoint,
            ttl_seconds.max(1),
            ts,
            relays,
        )?;
        match self.call(&req.into()).await? {
            Envelope::RegisterResponse(r) => Ok(Registration {
                expires_at: r.expires_at,
                renewal_interval: Duration::from_secs(u64::from(r.renewal_interval.max(1))),
            }),
            other => Err(RendezvousError::UnexpectedReply { kind: other.kind() }),
        }
    }

    /// Withdraws the registration of `endpoint` (a registration with TTL 0).
    pub async fn withdraw(
        &mut self,
        user: &UserIdentity,
        endpoint: &Endpoint,
    ) -> Result<(), RendezvousError> {
        let ts = self.next_timestamp();
        let req = sign_register(
            user,
            &self.exporter,
            &self.server.name,
            endpoint,
            0,
            ts,
            &[],
        )?;
        match self.call(&req.into()).await? {
            Envelope::RegisterResponse(_) => Ok(()),
            other => Err(RendezvousError::UnexpectedReply { kind: other.kind() }),
        }
    }

    /// Looks one identity up (online, or offline but still remembered by the server).
    pub async fn lookup(&mut self, key: &IdentityKey) -> Result<Option<PeerInfo>, RendezvousError> {
        let req = LookupRequest {
            target_identity: Some(key.0),
            list_all: false,
            cursor: None,
            limit: 1,
        };
        match self.call(&req.into()).await? {
            // A server may only answer with the identity asked for.
            Envelope::LookupResponse(r) => Ok(verify_peers(r.peers)?
                .into_iter()
                .find(|p| p.identity.key() == *key)),
            other => Err(RendezvousError::UnexpectedReply { kind: other.kind() }),
        }
    }

    /// One page of online peers after `cursor` (at most `limit`, 0 for the server's default).
    pub async fn list_page(
        &mut self,
        cursor: Option<IdentityKey>,
        limit: u16,
    ) -> Result<Page, RendezvousError> {
        let req = LookupRequest {
            target_identity: None,
            list_all: true,
            cursor: cursor.map(|c| c.0),
            limit,
        };
        match self.call(&req.into()).await? {
            Envelope::LookupResponse(r) => {
                // The cursor must move forward, or a server could keep us paging forever.
                let next = r
                    .next_cursor
                    .map(IdentityKey)
                    .filter(|n| cursor.is_none_or(|c| *n > c));
                Ok(Page {
                    peers: verify_peers(r.peers)?,
                    next,
                })
            }
            other => Err(RendezvousError::UnexpectedReply { kind: other.kind() }),
        }
    }

    /// Every online peer, page by page, stopping at `max_peers` (and [`MAX_LIST_PAGES`]).
    pub async fn list_all(&mut self, max_peers: usize) -> Result<Vec<PeerInfo>, RendezvousError> {
        let mut out = Vec::new();
        let mut cursor = None;
        for _ in 0..MAX_LIST_PAGES {
            let page = self.list_page(cursor, 0).await?;
            out.extend(page.peers);
            if out.len() >= max_peers {
                out.truncate(max_peers);
                break;
            }
            match page.next {
                Some(n) => cursor = Some(n),
                None => break,
            }
        }
        Ok(out)
    }

    /// The servers this server knows (itself first when it advertises itself).
    pub async fn list_servers(&mut self) -> Result<Vec<ServerEntry>, RendezvousError> {
        match self.call(&ListServersRequest {}.into()).await? {
            Envelope::ListServersResponse(r) => {
                let mut servers = r.servers;
                servers.truncate(super::gossip::MAX_SERVERS_IN_RESPONSE);
                Ok(servers)
            }
            other => Err(RendezvousError::UnexpectedReply { kind: other.kind() }),
        }
    }

    /// Closes the connection (TLS close_notify), within the timeout.
    pub async fn close(mut self) {
        let _ = tokio::time::timeout(self.timeout, self.reader.get_mut().shutdown()).await;
    }
}

/// Reads `<dir>/rendezvous-servers` (missing file: empty; bad lines are skipped).
pub fn load_remembered(dir: &Path) -> Vec<ServerEntry> {
    let Ok(text) = std::fs::read_to_string(dir.join(REMEMBERED_FILE)) else {
        return Vec::new();
    };
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .filter_map(|l| l.parse().ok())
        .take(MAX_REMEMBERED)
        .collect()
}

/// Rewrites `<dir>/rendezvous-servers` (atomically) with at most [`MAX_REMEMBERED`] servers.
pub fn save_remembered(dir: &Path, servers: &[ServerEntry]) -> Result<(), RendezvousError> {
    let path = dir.join(REMEMBERED_FILE);
    let tmp = dir.join(format!("{REMEMBERED_FILE}.tmp"));
    let mut text = String::from("# rendezvous servers learned by LIST_SERVERS (name@host:port)\n");
    for s in servers.iter().take(MAX_REMEMBERED) {
        text.push_str(&s.to_string());
        text.push('\n');
    }
    let io = |source| RendezvousError::Io {
        context: format!("writing {}", path.display()),
        source,
    };
    std::fs::write(&tmp, text).map_err(io)?;
    std::fs::rename(&tmp, &path).map_err(io)
}

/// What the registrar needs, resolved from the configuration.
#[derive(Clone)]
pub struct RegistrarSettings {
    /// Configured and manual servers, in order of preference.
    pub servers: Vec<ServerEntry>,
    /// TLS client configuration (trust roots).
    pub tls: Arc<rustls::ClientConfig>,
    /// Requested TTL.
    pub ttl_secs: u32,
    /// Register with at most this many servers.
    pub max_register_servers: usize,
    /// Whether to register at all.
    pub register: bool,
    /// Learn and remember servers.
    pub learn_servers: bool,
    /// Where the remembered-servers file lives (none: not remembered).
    pub data_dir: Option<PathBuf>,
    /// Per-step deadline.
    pub timeout: Duration,
    /// DNS SRV bootstrap (`rendezvous.dns_bootstrap`), if any domain is configured.
    pub dns: Option<Arc<super::dns::DnsBootstrap>>,
}

impl std::fmt::Debug for RegistrarSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistrarSettings")
            .field(
                "servers",
                &self
                    .servers
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>(),
            )
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

impl RegistrarSettings {
    /// From the `[rendezvous]` section and the data directory (where remembered servers are
    /// kept). Reads the CA file, if one is configured.
    pub fn from_config(
        rv: &super::RendezvousConfig,
        data_dir: std::path::PathBuf,
    ) -> Result<Self, RendezvousError> {
        rv.validate()?;
        Ok(RegistrarSettings {
            servers: rv.server_entries()?,
            tls: tls::client_config(rv.ca_file.as_deref())?,
            ttl_secs: rv.ttl_secs,
            max_register_servers: rv.max_register_servers,
            register: rv.register,
            learn_servers: rv.learn_servers,
            data_dir: Some(data_dir),
            timeout: rv.timeout(),
            dns: super::dns::DnsBootstrap::new(&rv.dns_bootstrap, rv.dns_nameserver),
        })
    }

    /// Adds manually given servers (bootstrap) after the configured ones.
    pub fn with_servers(mut self, manual: impl IntoIterator<Item = ServerEntry>) -> Self {
        for s in manual {
            if !self.servers.iter().any(|x| x.endpoint == s.endpoint) {
                self.servers.push(s);
            }
        }
        self
    }

    /// Configured and manual servers, then remembered ones, without duplicates (no DNS; see
    /// [`RegistrarSettings::candidates_with_dns`]).
    pub fn candidates(&self) -> Vec<ServerEntry> {
        self.candidates_after(self.servers.clone())
    }

    /// The servers found by DNS bootstrap (cached for their TTL; failures logged, never
    /// fatal), empty without `dns_bootstrap`.
    pub async fn dns_servers(&self) -> Vec<ServerEntry> {
        match &self.dns {
            Some(d) => d.servers().await,
            None => Vec::new(),
        }
    }

    /// Configured and manual servers, then those found by DNS bootstrap, then remembered
    /// ones, without duplicates.
    pub async fn candidates_with_dns(&self) -> Vec<ServerEntry> {
        let mut out = self.servers.clone();
        for s in self.dns_servers().await {
            if !out.iter().any(|x| x.endpoint == s.endpoint) {
                out.push(s);
            }
        }
        self.candidates_after(out)
    }

    fn candidates_after(&self, mut out: Vec<ServerEntry>) -> Vec<ServerEntry> {
        if let Some(dir) = self.data_dir.as_deref().filter(|_| self.learn_servers) {
            for s in load_remembered(dir) {
                if !out.iter().any(|x| x.endpoint == s.endpoint) {
                    out.push(s);
                }
            }
        }
        out
    }
}

/// Looks `key` up on the candidate servers (at most 8 tried): the first online answer, else
/// the most recently seen offline one. Fails only if every server tried failed.
pub async fn lookup_anywhere(
    settings: &RegistrarSettings,
    key: &IdentityKey,
) -> Result<Option<PeerInfo>, RendezvousError> {
    let mut best: Option<PeerInfo> = None;
    let mut last_err = None;
    let mut answered = false;
    for server in settings.candidates_with_dns().await.iter().take(8) {
        let result = async {
            let mut c = Client::connect(server, settings.tls.clone(), settings.timeout).await?;
            let r = c.lookup(key).await;
            c.close().await;
            r
        }
        .await;
        match result {
            Ok(found) => {
                answered = true;
                match found {
                    Some(p) if p.online => return Ok(Some(p)),
                    Some(p) if best.as_ref().is_none_or(|b| p.last_seen > b.last_seen) => {
                        best = Some(p);
                    }
                    _ => {}
                }
            }
            Err(e) => last_err = Some(e),
        }
    }
    match (answered, last_err) {
        (false, Some(e)) => Err(e),
        _ => Ok(best),
    }
}

/// What the registrar has achieved so far.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegistrarStatus {
    /// Servers where every endpoint is registered, with the earliest expiry.
    pub registered: Vec<(ServerEntry, Timestamp)>,
    /// Every server known (configured, remembered, learned).
    pub known: Vec<ServerEntry>,
    /// The last failure, if the last attempt at some server failed.
    pub last_error: Option<String>,
    /// True once shutdown withdrawals are done.
    pub stopped: bool,
}

/// The running registrar.
#[derive(Debug)]
pub struct RegistrarHandle {
    /// Ends after the withdrawals that follow shutdown.
    pub join: tokio::task::JoinHandle<()>,
    /// Progress, updated after every attempt.
    pub status: watch::Receiver<RegistrarStatus>,
}

/// Starts registering `endpoints` (with `relays` as home relays) for `user`; it renews before
/// expiry, learns servers, and withdraws when `shutdown` becomes true (or its sender is
/// dropped). With `register = false` or no endpoints it does nothing and ends at once.
pub fn spawn_registrar(
    settings: RegistrarSettings,
    user: Arc<UserIdentity>,
    endpoints: Vec<Endpoint>,
    relays: Vec<RelayHint>,
    shutdown: watch::Receiver<bool>,
) -> RegistrarHandle {
    let (_keep, user) = watch::channel(user);
    spawn_registrar_live(settings, user, endpoints, relays, shutdown)
}

/// [`spawn_registrar`] for an identity that may be updated while it runs: every new version
/// sent on `user` is registered again at once with every server (re-signed), so lookups
/// return it.
pub fn spawn_registrar_live(
    settings: RegistrarSettings,
    user: watch::Receiver<Arc<UserIdentity>>,
    endpoints: Vec<Endpoint>,
    relays: Vec<RelayHint>,
    shutdown: watch::Receiver<bool>,
) -> RegistrarHandle {
    let (tx, status) = watch::channel(RegistrarStatus::default());
    let join = tokio::spawn(registrar(settings, user, endpoints, relays, shutdown, tx));
    RegistrarHandle { join, status }
}

struct Target {
    server: ServerEntry,
    due: tokio::time::Instant,
    failures: u32,
    expires: Option<Timestamp>,
}

fn backoff(failures: u32) -> Duration {
    let secs = 5u64.saturating_mul(1u64 << failures.saturating_sub(1).min(6));
    Duration::from_secs(secs.min(300))
}

async fn register_all(
    settings: &RegistrarSettings,
    user: &UserIdentity,
    endpoints: &[Endpoint],
    relays: &[RelayHint],
    server: &ServerEntry,
) -> Result<(Registration, Vec<ServerEntry>), RendezvousError> {
    let mut c = Client::connect(server, settings.tls.clone(), settings.timeout).await?;
    let mut earliest: Option<Registration> = None;
    for ep in endpoints {
        let r = c.register(user, ep, settings.ttl_secs, relays).await?;
        earliest = Some(match earliest {
            Some(e) if e.renewal_interval <= r.renewal_interval => e,
            _ => r,
        });
    }
    let learned = if settings.learn_servers {
        c.list_servers().await.unwrap_or_default()
    } else {
        Vec::new()
    };
    c.close().await;
    let reg = earliest.ok_or_else(|| RendezvousError::Config {
        key: "endpoints",
        why: "nothing to register".into(),
    })?;
    Ok((reg, learned))
}

async fn withdraw_all(
    settings: &RegistrarSettings,
    user: &UserIdentity,
    endpoints: &[Endpoint],
    server: &ServerEntry,
) -> Result<(), RendezvousError> {
    let mut c = Client::connect(server, settings.tls.clone(), settings.timeout).await?;
    for ep in endpoints {
        c.withdraw(user, ep).await?;
    }
    c.close().await;
    Ok(())
}

async fn registrar(
    settings: RegistrarSettings,
    mut user_rx: watch::Receiver<Arc<UserIdentity>>,
    endpoints: Vec<Endpoint>,
    relays: Vec<RelayHint>,
    mut shutdown: watch::Receiver<bool>,
    status: watch::Sender<RegistrarStatus>,
) {
    if !settings.register || endpoints.is_empty() {
        status.send_modify(|s| s.stopped = true);
        return;
    }
    let mut user = user_rx.borrow_and_update().clone();
    let mut user_live = true;
    let mut known = ServerList::new(None, &settings.servers, MAX_REMEMBERED);
    known.merge(&settings.candidates());
    let mut targets: HashMap<Endpoint, Target> = HashMap::new();
    let mut last_error = None;
    loop {
        if *shutdown.borrow() {
            break;
        }
        // Configured servers first, then DNS bootstrap's, then the rest in list order.
        let mut chosen: Vec<ServerEntry> = settings.servers.clone();
        // Not merged into `known`: they are not remembered past their DNS TTL.
        let from_dns = settings.dns_servers().await;
        for s in from_dns.into_iter().chain(known.others()) {
            if !chosen.iter().any(|c| c.endpoint == s.endpoint) {
                chosen.push(s);
            }
        }
        chosen.truncate(settings.max_register_servers.max(1));
        targets.retain(|e, t| chosen.iter().any(|c| &c.endpoint == e) || t.expires.is_some());
        let now = tokio::time::Instant::now();
        for server in &chosen {
            let t = targets.entry(server.endpoint.clone()).or_insert(Target {
                server: server.clone(),
                due: now,
                failures: 0,
                expires: None,
            });
            if t.due > now {
                continue;
            }
            match register_all(&settings, &user, &endpoints, &relays, server).await {
                Ok((reg, learned)) => {
                    tracing::info!(server = %server, expires_at = %reg.expires_at, "registered with rendezvous server");
                    t.due = tokio::time::Instant::now() + reg.renewal_interval;
                    t.failures = 0;
                    t.expires = Some(reg.expires_at);
                    known.success(&server.endpoint);
                    if known.merge(&learned) > 0 {
                        if let Some(dir) = &settings.data_dir {
                            let mut all = known.others();
                            all.retain(|s| {
                                !settings.servers.iter().any(|c| c.endpoint == s.endpoint)
                            });
                            if let Err(e) = save_remembered(dir, &all) {
                                tracing::warn!(error = %e, "cannot remember rendezvous servers");
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(server = %server, error = %e, "rendezvous registration failed");
                    t.failures = t.failures.saturating_add(1);
                    t.due = tokio::time::Instant::now() + backoff(t.failures);
                    known.failure(&server.endpoint);
                    last_error = Some(e.to_string());
                }
            }
        }
        let registered: Vec<(ServerEntry, Timestamp)> = chosen
            .iter()
            .filter_map(|s| {
                targets
                    .get(&s.endpoint)
                    .and_then(|t| t.expires)
                    .map(|x| (s.clone(), x))
            })
            .collect();
        status.send_replace(RegistrarStatus {
            registered,
            known: known.others(),
            last_error: last_error.clone(),
            stopped: false,
        });
        let next = targets
            .values()
            .map(|t| t.due)
            .min()
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(60));
        tokio::select! {
            _ = tokio::time::sleep_until(next) => {}
            changed = shutdown.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            changed = user_rx.changed(), if user_live => match changed {
                Ok(()) => {
                    user = user_rx.borrow_and_update().clone();
                    tracing::info!(version = user.identity().version(), "identity updated; registering it again");
                    let now = tokio::time::Instant::now();
                    for t in targets.values_mut() {
                        t.due = now;
                    }
                }
                Err(_) => user_live = false,
            },
        }
    }
    for t in targets.values() {
        if t.expires.is_none() {
            continue;
        }
        let server = &t.server;
        match tokio::time::timeout(
            settings.timeout,
            withdraw_all(&settings, &user, &endpoints, server),
        )
        .await
        {
            Ok(Ok(())) => tracing::info!(server = %server, "withdrew rendezvous registration"),
            Ok(Err(e)) => tracing::warn!(server = %server, error = %e, "withdrawal failed"),
            Err(_) => tracing::warn!(server = %server, "withdrawal timed out"),
        }
    }
    status.send_modify(|s| {
        s.registered.clear();
        s.stopped = true;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_verified_before_use() {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha20Rng::from_seed([8; 32]);
        let u = UserIdentity::generate(
            "dave",
            crate::identity::Flags::default(),
            Timestamp(1),
            &mut rng,
        )
        .unwrap();
        let wire = crate::wire::rendezvous::PeerInfo {
            identity: RawIdentity::from_identity(u.identity()),
            endpoint: "127.0.0.1:1".parse().unwrap(),
            last_seen: Timestamp(2),
            online: true,
            relays: Vec::new(),
            alt_endpoints: Vec::new(),
        };
        let ok = PeerInfo::verify(wire.clone()).unwrap();
        assert_eq!(ok.identity, *u.identity());
        assert_eq!(ok.endpoint, wire.endpoint);
        let mut forged = wire;
        forged.identity.signature[0] ^= 1;
        assert!(matches!(
            verify_peers(vec![forged]),
            Err(RendezvousError::Decode(_))
        ));
    }

    #[test]
    fn remembered_file_round_trip_and_garbage() {
        let dir = tempfile::tempdir().unwrap();
        assert!(load_remembered(dir.path()).is_empty());
        let list: Vec<ServerEntry> = vec![
            "rv1.test@127.0.0.1:1".parse().unwrap(),
            "127.0.0.1:2".parse().unwrap(),
        ];
        save_remembered(dir.path(), &list).unwrap();
        assert_eq!(load_remembered(dir.path()), list);
        std::fs::write(
            dir.path().join(REMEMBERED_FILE),
            "garbage\n127.0.0.1:3\n\n# c\n",
        )
        .unwrap();
        assert_eq!(load_remembered(dir.path()).len(), 1);
    }

    #[test]
    fn backoff_is_bounded() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(100), Duration::from_secs(300));
    }
}
