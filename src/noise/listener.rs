//! The accept loop shared by the node and the relay: TCP accept, admission control
//! ([`super::admission`]), Noise responder handshake under a deadline, classification of the
//! authenticated peer, then the caller's handler.
//!
//! Flow per connection:
//! 1. Accepted: registered as a handshake; the admission core may close older handshakes to
//!    make room (never the new one), or refuse the new one at once when its address is over
//!    its handshake rate and no known peer uses it.
//! 2. The peer's first bytes mark it as progressed (silent connections are closed first).
//! 3. Handshake (deadline `handshake_timeout`): a failure (garbage, wrong version, bad
//!    identity, silence) closes it.
//! 4. `classify` tells a known peer from a stranger (or refuses it); the admission core admits
//!    it, possibly closing strangers to make room, or refuses it.
//! 5. The handler runs until it returns or the connection is evicted (its task is aborted;
//!    handlers must keep no state that outlives them except through drop guards).
//!
//! A [`Sources`] may add a QUIC endpoint to the TCP listener: its connections go through the
//! same admission budgets (one [`Admission`] for both), with step 2 being the completed QUIC
//! handshake and step 3 the bound Noise handshake on its stream ([`super::quic`]).
//!
//! Every refusal is counted in [`Refusals`] and summarised once per interval (no log line per
//! refused connection). The loop keeps serving everyone else whatever one peer does.

use super::admission::{Admission, Class, ConnId, Limits};
use super::refusals::Refusals;
use super::stream::{HandshakeLimits, TcpConnection};
use super::quic;
use crate::identity::UserIdentity;
use crate::transport::QuicEndpoint;
use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};

/// Accept-loop settings.
#[derive(Clone, Debug)]
pub struct ListenerConfig {
    /// Connection budgets.
    pub limits: Limits,
    /// Handshake deadline and verified-identity cache.
    pub handshake: HandshakeLimits,
    /// How often the summary of refused connections is logged.
    pub refusal_log_interval: Duration,
    /// The addresses the node's contacts advertise, kept current by the node: handed to the
    /// admission core ([`Admission::set_contact_addrs`]) at start and whenever they change,
    /// so that the handshake rate treats them as addresses a known peer uses.
    pub contact_addrs: Option<watch::Receiver<Arc<Vec<std::net::IpAddr>>>>,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            limits: Limits::default(),
            handshake: HandshakeLimits::default(),
            refusal_log_interval: Duration::from_secs(10),
            contact_addrs: None,
        }
    }
}

/// How long handlers get to finish after shutdown before they are aborted.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

#[derive(Default)]
struct Shared {
    admission: Admission,
    handles: HashMap<ConnId, AbortHandle>,
}

type SharedRef = Arc<Mutex<Shared>>;

/// Forgets a connection in the admission state when its task ends, however it ends.
struct Slot {
    shared: SharedRef,
    id: ConnId,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Ok(mut s) = self.shared.lock() {
            s.admission.closed(self.id);
            s.handles.remove(&self.id);
        }
    }
}

/// Aborts the tasks of `evicted` (after the lock is released) and counts them.
fn evict(
    shared: &SharedRef,
    refusals: &Refusals,
    evicted: Vec<(ConnId, super::admission::Reason)>,
) {
    let mut handles = Vec::new();
    if let Ok(mut s) = shared.lock() {
        for (id, _) in &evicted {
            if let Some(h) = s.handles.remove(id) {
                handles.push(h);
            }
        }
    }
    for (id, why) in evicted {
        tracing::debug!(
            conn = id,
            reason = why.name(),
            "connection closed by admission control"
        );
        refusals.note(why.name());
    }
    for h in handles {
        h.abort();
    }
}

/// What the loop accepts from: a TCP listener and, optionally, a QUIC endpoint.
#[derive(Debug)]
pub struct Sources {
    /// The TCP listener.
    pub tcp: TcpListener,
    /// The QUIC endpoint (closed by the loop when it stops).
    pub quic: Option<QuicEndpoint>,
}

impl From<TcpListener> for Sources {
    fn from(tcp: TcpListener) -> Self {
        Sources { tcp, quic: None }
    }
}

enum Accepted {
    Tcp(tokio::net::TcpStream),
    Quic(Box<quinn::Incoming>),
}

async fn next_quic(quic: &Option<QuicEndpoint>) -> Option<quinn::Incoming> {
    match quic {
        Some(q) => q.accept().await,
        None => std::future::pending().await,
    }
}

/// [`serve_live`] with a fixed local identity.
pub async fn serve<H, Fut>(
    listener: impl Into<Sources>,
    local: Arc<UserIdentity>,
    cfg: ListenerConfig,
    shutdown: watch::Receiver<bool>,
    handler: H,
) where
    H: Fn(TcpConnection, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (_keep, local) = watch::channel(local);
    serve_live(listener, local, cfg, shutdown, handler).await;
}

/// [`serve_classified`] for a server that treats every authenticated peer alike (as
/// [`Class::Known`]; the handshake budgets still apply, the handshake rate does not: with
/// every peer known, it could only refuse addresses before their first peer authenticated,
/// which is how many clients of one host start at once), with its own refusal log. The local
/// identity is read from `local` at every accept, so a new identity version (a rotated Noise
/// key, a new username) is used from the next connection on.
pub async fn serve_live<H, Fut>(
    listener: impl Into<Sources>,
    local: watch::Receiver<Arc<UserIdentity>>,
    mut cfg: ListenerConfig,
    shutdown: watch::Receiver<bool>,
    handler: H,
) where
    H: Fn(TcpConnection, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    cfg.limits.handshakes_per_ip_per_sec = 0;
    serve_classified(
        listener,
        local,
        cfg,
        shutdown,
        Arc::new(Refusals::default()),
        |_: &TcpConnection| Ok(Class::Known),
        move |conn, addr, _| handler(conn, addr),
    )
    .await
}

/// Runs until `shutdown` becomes true; then stops accepting, gives handlers
/// [`SHUTDOWN_GRACE`] to finish (handlers that hold a clone of `shutdown` should return
/// promptly), and aborts the rest.
///
/// `classify` decides, right after the handshake, whether the peer is known (a contact) or a
/// stranger, or refuses it with a reason name for the refusal log.
pub async fn serve_classified<C, H, Fut>(
    listener: impl Into<Sources>,
    local: watch::Receiver<Arc<UserIdentity>>,
    cfg: ListenerConfig,
    mut shutdown: watch::Receiver<bool>,
    refusals: Arc<Refusals>,
    classify: C,
    handler: H,
) where
    C: Fn(&TcpConnection) -> Result<Class, &'static str> + Clone + Send + Sync + 'static,
    H: Fn(TcpConnection, SocketAddr, Class) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let sources: Sources = listener.into();
    let mut admission = Admission::new(cfg.limits);
    let mut contact_addrs = cfg.contact_addrs.clone();
    if let Some(rx) = contact_addrs.as_mut() {
        admission.set_contact_addrs(rx.borrow_and_update().iter().copied());
    }
    let shared: SharedRef = Arc::new(Mutex::new(Shared {
        admission,
        handles: HashMap::new(),
    }));
    let interval = cfg.refusal_log_interval.max(Duration::from_millis(100));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tasks = JoinSet::new();
    // The clock of the admission core's handshake rate.
    let started = std::time::Instant::now();
    loop {
        let accepted = tokio::select! {
            r = sources.tcp.accept() => r.map(|(s, a)| (Accepted::Tcp(s), a)),
            Some(inc) = next_quic(&sources.quic) => {
                let a = inc.remote_address();
                Ok((Accepted::Quic(Box::new(inc)), a))
            }
            _ = tick.tick() => {
                refusals.flush(interval.as_secs());
                continue;
            }
            _ = crate::shutdown::stopped(&mut shutdown) => break,
        };
        // Reap finished tasks so the set stays small.
        while tasks.try_join_next().is_some() {}
        let (accepted, addr) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                refusals.note("accept_failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        // The identity current at accept time (it may be updated while the node runs).
        let local = local.borrow().clone();
        let handler = handler.clone();
        let classify = classify.clone();
        let refusals2 = refusals.clone();
        let shared2 = shared.clone();
        let hs = cfg.handshake.clone();
        // Admission, eviction and registering the new task's abort handle happen under one
        // lock, so no other task can evict this one before its handle is known.
        let evicted = {
            let Ok(mut s) = shared.lock() else { break };
            if let Some(rx) = contact_addrs.as_mut() {
                if rx.has_changed().unwrap_or(false) {
                    let addrs = rx.borrow_and_update().clone();
                    s.admission.set_contact_addrs(addrs.iter().copied());
                }
            }
            let now_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
            let (id, evicted) = match s.admission.accept(addr.ip(), now_ms) {
                Ok(x) => x,
                Err(why) => {
                    // Over the rate of an address no known peer uses: closed before any
                    // handshake work (dropping a QUIC `Incoming` refuses it).
                    drop(s);
                    drop(accepted);
                    tracing::debug!(%addr, reason = why.name(), "connection refused");
                    refusals.note(why.name());
                    continue;
                }
            };
            let slot = Slot {
                shared: shared.clone(),
                id,
            };
            let handle = tasks.spawn(async move {
                let slot = slot;
                let progressed = || {
                    if let Ok(mut s) = slot.shared.lock() {
                        s.admission.progressed(slot.id);
                    }
                };
                let conn = match accepted {
                    Accepted::Tcp(stream) => {
                        // `readable()` may report a fresh socket ready with nothing to read
                        // (it did for every silent connection, so a silent flood looked
                        // progressed and was not closed first); a peek waits for a byte.
                        let mut first = [0u8; 1];
                        let r = tokio::time::timeout(hs.timeout, stream.peek(&mut first)).await;
                        if !matches!(r, Ok(Ok(n)) if n > 0) {
                            tracing::debug!(%addr, "no bytes before the handshake deadline; closed");
                            refusals2.note("handshake_failed");
                            return;
                        }
                        progressed();
                        TcpConnection::accept(stream, &local, hs).await
                    }
                    Accepted::Quic(incoming) => {
                        quic::accept_incoming(*incoming, &local, hs, progressed).await
                    }
                };
                let conn = match conn {
                    Ok(conn) => conn,
                    Err(e) => {
                        tracing::debug!(%addr, error = %e, "handshake failed; connection closed");
                        refusals2.note("handshake_failed");
                        return;
                    }
                };
                let class = match classify(&conn) {
                    Ok(c) => c,
                    Err(reason) => {
                        tracing::debug!(%addr, peer = %conn.peer.key().short(), reason, "peer refused");
                        refusals2.note(reason);
                        return;
                    }
                };
                let admitted = match slot.shared.lock() {
                    Ok(mut s) => s.admission.authenticated(slot.id, class),
                    Err(_) => return,
                };
                match admitted {
                    Ok(evicted) => evict(&shared2, &refusals2, evicted),
                    Err(why) => {
                        tracing::debug!(%addr, peer = %conn.peer.key().short(), reason = why.name(), "connection refused");
                        refusals2.note(why.name());
                        return;
                    }
                }
                tracing::debug!(%addr, peer = %conn.peer.key().short(), ?class, "authenticated");
                handler(conn, addr, class).await;
                drop(slot);
            });
            s.handles.insert(id, handle);
            evicted
        };
        evict(&shared, &refusals, evicted);
    }
    if let Some(q) = &sources.quic {
        q.close();
    }
    drop(sources);
    refusals.flush(interval.as_secs());
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            remaining = tasks.len(),
            "handlers still running after the grace period; aborting"
        );
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}
