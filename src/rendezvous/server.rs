//! The rendezvous server shell: accept loop, one task per connection, the gossip poller and
//! the expiry sweep. It owns sockets, TLS and the clock; every decision is in [`super::core`]
//! and [`super::gossip`].
//!
//! - Accept: connection admission (total and per address) before anything else; a refused
//!   connection still gets a TLS handshake and a `TooManyConnections` error, then is closed.
//! - Per connection: TLS 1.3 handshake and version exchange under `handshake_timeout_ms`, then
//!   request → reply until the client closes, `idle_timeout_secs` pass, or shutdown. Each
//!   request first takes a rate-limit token for the client's IP address. A frame over
//!   `max_request_bytes` gets `RequestTooLarge` and the connection is closed (the rest of the
//!   frame is never read).
//! - Gossip: every `gossip_interval_secs` (and once at start), LIST_SERVERS to every known
//!   server, merging what they know.
//! - The listen address is logged and written to `<data_dir>/rendezvous.addr` (`host:port`).
//!
//! Shared state sits behind short `std::sync::Mutex` sections that never span an `.await`.

use super::core::{Admission, RateLimiter, Registry, RequestError, Session};
use super::gossip::ServerList;
use super::{client, tls, RendezvousConfig, RendezvousError, RendezvousServerConfig};
use crate::noise::framed::{self, FrameReader};
use crate::shutdown::stopped;
use crate::time::Timestamp;
use crate::wire::frame::FrameError;
use crate::wire::rendezvous::ServerEntry;
use crate::wire::version::{self, Version, VersionHeader, HEADER_LEN};
use crate::wire::{Endpoint, Envelope};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// How long a refused connection is kept open so that the client reads the refusal.
const LINGER: Duration = Duration::from_secs(1);

/// Where the server's `now` comes from: the system clock, or a manual clock for tests.
#[derive(Clone, Debug, Default)]
pub enum Clock {
    /// Wall-clock time.
    #[default]
    System,
    /// A clock that moves only when told to.
    Manual(Arc<AtomicU64>),
}

impl Clock {
    /// A manual clock starting at `start`.
    pub fn manual(start: Timestamp) -> Self {
        Clock::Manual(Arc::new(AtomicU64::new(start.0)))
    }

    /// The current time.
    pub fn now(&self) -> Timestamp {
        match self {
            Clock::System => Timestamp::now(),
            Clock::Manual(t) => Timestamp(t.load(Ordering::SeqCst)),
        }
    }

    /// Moves a manual clock forward (no effect on the system clock).
    pub fn advance(&self, d: Duration) {
        if let Clock::Manual(t) = self {
            let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
            t.fetch_add(ms, Ordering::SeqCst);
        }
    }
}

/// Everything a server needs besides its socket.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// `[rendezvous.server]`.
    pub config: RendezvousServerConfig,
    /// Trust roots for polling gossip peers (`rendezvous.ca_file`; none: system roots).
    pub ca_file: Option<PathBuf>,
    /// Where to write `rendezvous.addr` (none: not written).
    pub data_dir: Option<PathBuf>,
    /// The clock.
    pub clock: Clock,
}

impl ServerOptions {
    /// From the `[rendezvous]` section and the data directory (system clock).
    pub fn from_config(rv: &RendezvousConfig, data_dir: PathBuf) -> Result<Self, RendezvousError> {
        Ok(ServerOptions {
            config: rv.server.clone(),
            ca_file: rv.ca_file.clone(),
            data_dir: Some(data_dir),
            clock: Clock::System,
        })
    }
}

struct Shared {
    cfg: RendezvousServerConfig,
    clock: Clock,
    registry: Mutex<Registry>,
    limiter: Mutex<RateLimiter>,
    admission: Mutex<Admission>,
    servers: Mutex<ServerList>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock cannot leave these structures half-updated in a way that
    // matters more than stopping the server would; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    /// One request → one reply.
    fn handle(&self, session: &mut Session, ip: IpAddr, body: &[u8]) -> Envelope {
        let now = self.clock.now();
        if let Err(e) = lock(&self.limiter).check(ip, now) {
            return e.to_msg().into();
        }
        let env = match Envelope::decode(body) {
            Ok(env) => env,
            Err(e) => {
                // A MessagePack type error may quote the client's bytes: never echo it.
                let why = match e {
                    crate::wire::DecodeError::Msgpack(_) => {
                        "malformed message: wrong shape or type".to_string()
                    }
                    other => other.to_string(),
                };
                return RequestError::Malformed(why).to_msg().into();
            }
        };
        let reply: Result<Envelope, RequestError> = match env {
            Envelope::RegisterRequest(req) => {
                // The two Ed25519 verifications (~0.1 ms) run under the registry lock.
                let result = {
                    let mut reg = lock(&self.registry);
                    reg.register(session, &req, now)
                };
                if let Ok(r) = &result {
                    tracing::debug!(endpoint = %req.endpoint, ttl = r.renewal_interval, "registered");
                }
                result.map(Envelope::from)
            }
            Envelope::LookupRequest(req) => Ok(lock(&self.registry).lookup(&req, now).into()),
            Envelope::ListServersRequest(_) => Ok(lock(&self.servers).response(now).into()),
            other => Err(RequestError::Unexpected { kind: other.kind() }),
        };
        reply.unwrap_or_else(|e| e.to_msg().into())
    }
}

/// A bound, not yet running server.
pub struct Server {
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    gossip_tls: Arc<rustls::ClientConfig>,
    shared: Arc<Shared>,
    addr: SocketAddr,
}

/// A running server.
pub struct ServerHandle {
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    join: tokio::task::JoinHandle<()>,
    shared: Arc<Shared>,
}

impl Server {
    /// Loads the certificate, binds the listener and writes `rendezvous.addr`.
    pub async fn bind(opts: ServerOptions) -> Result<Server, RendezvousError> {
        let cfg = opts.config;
        cfg.validate()?;
        let missing = |key| RendezvousError::Config {
            key,
            why: "required".into(),
        };
        let name = cfg
            .server_name
            .clone()
            .ok_or_else(|| missing("server.server_name"))?;
        let cert = cfg
            .cert_file
            .clone()
            .ok_or_else(|| missing("server.cert_file"))?;
        let key = cfg
            .key_file
            .clone()
            .ok_or_else(|| missing("server.key_file"))?;
        let tls_cfg = tls::server_config(&cert, &key)?;
        let gossip_tls = tls::client_config(opts.ca_file.as_deref())?;
        let listener =
            TcpListener::bind(cfg.listen)
                .await
                .map_err(|source| RendezvousError::Io {
                    context: format!("binding rendezvous listener {}", cfg.listen),
                    source,
                })?;
        let addr = listener
            .local_addr()
            .map_err(|source| RendezvousError::Io {
                context: "reading the listen address".into(),
                source,
            })?;
        let advertise = match cfg.advertise_endpoint()? {
            Some(a) => Some(a),
            None if !addr.ip().is_unspecified() => Some(Endpoint::from_socket_addr(addr)),
            None => None,
        };
        let me = advertise.map(|endpoint| ServerEntry {
            endpoint,
            name: name.clone(),
        });
        let servers = ServerList::new(me, &cfg.peer_entries()?, cfg.max_known_servers);
        let shared = Arc::new(Shared {
            registry: Mutex::new(Registry::new(name.clone(), cfg.limits())),
            limiter: Mutex::new(RateLimiter::new(
                cfg.requests_per_sec,
                cfg.request_burst,
                cfg.max_connections.saturating_mul(4).max(1024),
            )),
            admission: Mutex::new(Admission::new(
                cfg.max_connections,
                cfg.max_connections_per_ip,
            )),
            servers: Mutex::new(servers),
            clock: opts.clock,
            cfg,
        });
        tracing::info!(%addr, server_name = %name, "rendezvous server listening");
        if let Some(dir) = &opts.data_dir {
            write_addr_file(dir, addr)?;
        }
        Ok(Server {
            listener,
            acceptor: tokio_rustls::TlsAcceptor::from(tls_cfg),
            gossip_tls,
            shared,
            addr,
        })
    }

    /// The bound address (with the actual port).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Starts the accept loop, the gossip poller and the expiry sweep.
    pub fn spawn(self) -> ServerHandle {
        let (stop, rx) = watch::channel(false);
        let shared = self.shared.clone();
        let addr = self.addr;
        let join = tokio::spawn(self.run(rx));
        ServerHandle {
            addr,
            stop,
            join,
            shared,
        }
    }

    async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut tasks = JoinSet::new();
        tasks.spawn(gossip_loop(
            self.shared.clone(),
            self.gossip_tls.clone(),
            stop.clone(),
        ));
        tasks.spawn(sweep_loop(self.shared.clone(), stop.clone()));
        loop {
            tokio::select! {
                _ = stopped(&mut stop) => break,
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, peer)) => {
                        let admitted = lock(&self.shared.admission).admit(peer.ip());
                        tasks.spawn(connection(
                            self.shared.clone(),
                            self.acceptor.clone(),
                            tcp,
                            peer,
                            admitted,
                            stop.clone(),
                        ));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            }
        }
        // Connections see the stop signal and close; give them a moment, then abort.
        let drain = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(2), drain)
            .await
            .is_err()
        {
            tasks.abort_all();
        }
    }
}

impl ServerHandle {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The servers this server knows (not itself).
    pub fn known_servers(&self) -> Vec<ServerEntry> {
        lock(&self.shared.servers).others()
    }

    /// Registrations currently counted.
    pub fn registrations(&self) -> usize {
        lock(&self.shared.registry).registrations()
    }

    /// The server's clock.
    pub fn clock(&self) -> &Clock {
        &self.shared.clock
    }

    /// Stops accepting, closes connections and waits for every task.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let _ = self.join.await;
    }
}

fn write_addr_file(dir: &std::path::Path, addr: SocketAddr) -> Result<(), RendezvousError> {
    let io = |source| RendezvousError::Io {
        context: format!("writing {}", dir.join("rendezvous.addr").display()),
        source,
    };
    std::fs::create_dir_all(dir).map_err(io)?;
    let tmp = dir.join("rendezvous.addr.tmp");
    std::fs::write(&tmp, format!("{addr}\n")).map_err(io)?;
    std::fs::rename(&tmp, dir.join("rendezvous.addr")).map_err(io)
}

struct AdmissionGuard {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for AdmissionGuard {
    fn drop(&mut self) {
        lock(&self.shared.admission).release(self.ip);
    }
}

async fn connection(
    shared: Arc<Shared>,
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    admitted: Result<(), RequestError>,
    mut stop: watch::Receiver<bool>,
) {
    let _guard = admitted.is_ok().then(|| AdmissionGuard {
        shared: shared.clone(),
        ip: peer.ip(),
    });
    let _ = tcp.set_nodelay(true);
    let hs_timeout = Duration::from_millis(shared.cfg.handshake_timeout_ms);
    let handshake = async {
        let mut tls = acceptor.accept(tcp).await?;
        tls.write_all(&VersionHeader(Version::CURRENT).encode())
            .await?;
        tls.flush().await?;
        let mut theirs = [0u8; HEADER_LEN];
        tls.read_exact(&mut theirs).await?;
        Ok::<_, std::io::Error>((tls, theirs))
    };
    let (tls, theirs) = match tokio::time::timeout(hs_timeout, handshake).await {
        Ok(Ok(x)) => x,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "rendezvous handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "rendezvous handshake timed out");
            return;
        }
    };
    let mut scratch = Vec::new();
    let mut reader = FrameReader::new(tls);
    if let Err(e) =
        VersionHeader::decode(&theirs).and_then(|h| version::negotiate(Version::CURRENT, h.0))
    {
        tracing::debug!(%peer, error = %e, "rendezvous version refused");
        return;
    }
    if let Err(e) = admitted {
        tracing::debug!(%peer, error = %e, "connection refused");
        let _ = send(&mut reader, &e.to_msg().into(), &mut scratch).await;
        // Let the client's first request arrive (and be dropped) so that it reads our answer
        // rather than a connection reset.
        let _ = tokio::time::timeout(LINGER, reader.read(shared.cfg.max_request_bytes)).await;
        let _ = tokio::time::timeout(LINGER, reader.get_mut().shutdown()).await;
        return;
    }
    let exporter = match tls::exporter(reader.get_mut().get_ref().1) {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(%peer, error = %e, "no TLS exporter");
            return;
        }
    };
    let mut session = Session::new(exporter);
    let idle = Duration::from_secs(shared.cfg.idle_timeout_secs);
    let max = shared.cfg.max_request_bytes;
    loop {
        let reply = tokio::select! {
            _ = stopped(&mut stop) => break,
            read = tokio::time::timeout(idle, reader.read(max)) => match read {
                Err(_) => break,
                Ok(Err(FrameError::TooLarge { len, max })) => {
                    let e = RequestError::RequestTooLarge { len, max };
                    let _ = send(&mut reader, &e.to_msg().into(), &mut scratch).await;
                    // Consume the refused body (at most 64 KiB, briefly) so that closing sends
                    // a FIN after our answer rather than a reset that could discard it.
                    let body = (&mut *reader.get_mut()).take(len as u64);
                    let _ = tokio::time::timeout(LINGER, tokio::io::copy(&mut { body }, &mut tokio::io::sink())).await;
                    break;
                }
                Ok(Err(_)) => break,
                Ok(Ok(body)) => shared.handle(&mut session, peer.ip(), body),
            },
        };
        if send(&mut reader, &reply, &mut scratch).await.is_err() {
            break;
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), reader.get_mut().shutdown()).await;
}

async fn send(
    reader: &mut FrameReader<tokio_rustls::server::TlsStream<TcpStream>>,
    env: &Envelope,
    scratch: &mut Vec<u8>,
) -> Result<(), FrameError> {
    let w = reader.get_mut();
    framed::write(w, &env.encode(), scratch).await?;
    w.flush().await?;
    Ok(())
}

async fn gossip_loop(
    shared: Arc<Shared>,
    tls: Arc<rustls::ClientConfig>,
    mut stop: watch::Receiver<bool>,
) {
    let every = Duration::from_secs(shared.cfg.gossip_interval_secs.max(1));
    let timeout = Duration::from_millis(shared.cfg.handshake_timeout_ms);
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = tick.tick() => {}
        }
        gossip_round(&shared, &tls, timeout).await;
    }
}

/// Polls every known server once.
async fn gossip_round(shared: &Shared, tls: &Arc<rustls::ClientConfig>, timeout: Duration) {
    let targets = lock(&shared.servers).others();
    for target in targets {
        let result = async {
            let mut c = client::Client::connect(&target, tls.clone(), timeout).await?;
            let list = c.list_servers().await;
            c.close().await;
            list
        }
        .await;
        let mut servers = lock(&shared.servers);
        match result {
            Ok(list) => {
                servers.success(&target.endpoint);
                let added = servers.merge(&list);
                if added > 0 {
                    tracing::info!(from = %target, added, "learned rendezvous servers");
                }
            }
            Err(e) => {
                tracing::debug!(server = %target, error = %e, "gossip poll failed");
                servers.failure(&target.endpoint);
            }
        }
    }
}

async fn sweep_loop(shared: Arc<Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = tick.tick() => {}
        }
        let now = shared.clock.now();
        lock(&shared.registry).expire(now);
        lock(&shared.limiter).forget_idle(now);
    }
}
