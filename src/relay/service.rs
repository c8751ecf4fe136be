//! The relay service: the async shell around [`super::conn::RelayConn`]. For each
//! authenticated connection it loops read → core → execute: it reads envelopes (gathering
//! `STORE_MESSAGE`s that are already buffered into one batch), hands them to the core, and
//! executes the returned actions in order (writes, durable stores, retrievals, confirmations),
//! routing pushes and confirmations between connections. Protocol decisions are the core's;
//! this file moves envelopes and maps I/O results to replies.

use super::backend::{LocalSink, Records, RelayBackend};
use super::conn::{error_envelope as err, Action, Forward, Now, RelayConn};
use super::policy::{RateLimiter, RelayConfig};
use super::read_ahead::ReadAhead;
use super::stats::Stats;
use super::store::{NewMessage, RelayStore, RelayStoreError, StoreOutcome};
use super::RelayError;
use crate::identity::IdentityKey;
use crate::noise::stream::{Connection, ConnectionError, Reader, Writer};
use crate::store::Store;
use crate::time::Timestamp;
use crate::wire::relay::*;
use crate::wire::Envelope;
use rand::RngCore;
use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{mpsc, watch, Notify, Semaphore};

/// Envelopes queued for one connection's writer; a push to a full queue is dropped (the
/// message stays stored and is retrieved later).
const OUT_QUEUE: usize = 256;
/// Stores one connection may have waiting for their group commit.
const MAX_INFLIGHT_STORES: usize = 64;
/// Most `STORE_MESSAGE`s, already received together, whose sender signatures are verified as
/// one batch.
const MAX_VERIFY_BATCH: usize = 32;
/// Blob bytes after which no further `STORE_MESSAGE` joins a verification batch.
const MAX_VERIFY_BATCH_BYTES: usize = 256 * 1024;

pub use super::conn::RelayMode;

/// Everything needed to start a relay.
#[derive(Clone, Debug)]
pub struct RelayOptions {
    /// Policies.
    pub policy: RelayConfig,
    /// Whom it serves.
    pub mode: RelayMode,
    /// The relay's own identity key (part of the registration signature).
    pub relay_key: IdentityKey,
    /// Close an authenticated connection after this long without a request.
    pub idle_timeout: Duration,
    /// Rewrite counters as JSON here every `stats_interval_secs` and at shutdown.
    pub stats_path: Option<PathBuf>,
}

type Out = mpsc::Sender<Box<Envelope>>;

/// One registered connection of an identity, as the relay routes to it.
struct Route {
    conn: u64,
    out: Out,
    /// The connection sent an authorised `RETRIEVE_MESSAGES`: it collects the identity's
    /// messages, so pushes go to it. A connection that only registered (to store or to wait
    /// for confirmations) never receives pushes.
    collecting: bool,
}

/// Registered connections per identity, oldest first; the newest collector gets pushes (see
/// [`Routes::push_target`]).
#[derive(Default)]
struct Routes(HashMap<IdentityKey, Vec<Route>>);

impl Routes {
    fn register(&mut self, who: IdentityKey, conn: u64, out: Out) {
        self.0.entry(who).or_default().push(Route {
            conn,
            out,
            collecting: false,
        });
    }

    /// `conn` asked to collect: it becomes the newest collector of `who`.
    fn collecting(&mut self, who: &IdentityKey, conn: u64) {
        if let Some(list) = self.0.get_mut(who) {
            if let Some(i) = list.iter().position(|r| r.conn == conn) {
                let mut r = list.remove(i);
                r.collecting = true;
                list.push(r);
            }
        }
    }

    fn remove(&mut self, who: &IdentityKey, conn: u64) {
        if let Some(list) = self.0.get_mut(who) {
            list.retain(|r| r.conn != conn);
            if list.is_empty() {
                self.0.remove(who);
            }
        }
    }

    /// Where a `StoredMessage` for `who` is pushed: the connection that most recently asked to
    /// collect, if any is still open.
    fn push_target(&self, who: &IdentityKey) -> Option<Out> {
        self.0
            .get(who)?
            .iter()
            .rev()
            .find(|r| r.collecting)
            .map(|r| r.out.clone())
    }

    /// Where a confirmation for the sender `who` is forwarded: the newest collector, else the
    /// newest registered connection.
    fn confirmation_target(&self, who: &IdentityKey) -> Option<Out> {
        let list = self.0.get(who)?;
        list.iter()
            .rev()
            .find(|r| r.collecting)
            .or(list.last())
            .map(|r| r.out.clone())
    }
}

struct Inner {
    store: Records,
    opts: RelayOptions,
    stats: Arc<Stats>,
    /// `opts.policy`, shared with every connection's core.
    policy: Arc<RelayConfig>,
    rate: Arc<Mutex<RateLimiter>>,
    origin: Instant,
    online: Mutex<Routes>,
    next_conn: AtomicU64,
    shutdown: watch::Sender<bool>,
    idle: Notify,
    maintenance: Mutex<Option<tokio::task::JoinHandle<()>>>,
    /// Integrated relay: the node that records its messages itself ([`super::owner`]).
    owner_inbox: std::sync::OnceLock<Arc<dyn super::owner::OwnerInbox>>,
}

/// A running relay. Cheap to clone; see the module docs of [`crate::relay`].
#[derive(Clone)]
pub struct Relay {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Relay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Relay")
            .field("mode", &self.inner.opts.mode)
            .field("relay", &self.inner.opts.relay_key.short())
            .finish_non_exhaustive()
    }
}

struct ConnGuard {
    inner: Arc<Inner>,
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.inner.stats.connections_open.fetch_sub(1, Relaxed);
        self.inner.idle.notify_waiters();
    }
}

impl Relay {
    /// Opens the relay's records on `store` (rebuilding quota usage), removes expired messages,
    /// and starts the periodic expiry and statistics task. Must run inside a tokio runtime.
    pub async fn start(store: Arc<dyn Store>, opts: RelayOptions) -> Result<Relay, RelayError> {
        opts.policy.validate()?;
        let stats = Arc::new(Stats::default());
        let (policy, st) = (opts.policy.clone(), stats.clone());
        let rs = tokio::task::spawn_blocking(move || RelayStore::open(store, policy, st))
            .await
            .map_err(|e| RelayError::Runtime(e.to_string()))??;
        Self::start_backend(Arc::new(rs), stats, opts).await
    }

    /// Starts a relay on an opened backend (see [`super::backend`]); `stats` are the counters
    /// the backend updates.
    pub async fn start_backend(
        backend: Arc<dyn RelayBackend>,
        stats: Arc<Stats>,
        opts: RelayOptions,
    ) -> Result<Relay, RelayError> {
        opts.policy.validate()?;
        let (shutdown, _) = watch::channel(false);
        let relay = Relay {
            inner: Arc::new(Inner {
                store: Records::new(backend, Default::default()),
                rate: Arc::new(Mutex::new(RateLimiter::new(&opts.policy))),
                policy: Arc::new(opts.policy.clone()),
                opts,
                stats,
                origin: Instant::now(),
                online: Mutex::new(Routes::default()),
                next_conn: AtomicU64::new(1),
                shutdown,
                idle: Notify::new(),
                maintenance: Mutex::new(None),
                owner_inbox: std::sync::OnceLock::new(),
            }),
        };
        if let Some(cluster) = relay.inner.store.cluster() {
            cluster.set_sink(relay.local_sink());
        }
        let n = relay.expire_now().await?;
        tracing::info!(
            expired = n,
            backend = relay.inner.store.kind(),
            "relay store opened"
        );
        let task = tokio::spawn(relay.clone().maintenance());
        if let Ok(mut m) = relay.inner.maintenance.lock() {
            *m = Some(task);
        }
        Ok(relay)
    }

    /// Integrated relay: tells it which senders the owner marked Trusted; they are charged to
    /// `trusted_rate_per_sec` / `trusted_rate_burst` instead of the per-identity limit (see
    /// [`RateLimiter`]).
    pub fn set_trusted(&self, check: super::policy::IsTrusted) {
        if let Ok(mut r) = self.inner.rate.lock() {
            r.set_trusted(check);
        }
    }

    /// Removes messages older than the retention period now; returns how many.
    pub async fn expire_now(&self) -> Result<u64, RelayError> {
        let cutoff = Timestamp(
            Timestamp::now()
                .0
                .saturating_sub(self.inner.opts.policy.retention_secs.saturating_mul(1000)),
        );
        Ok(self.inner.store.expire(cutoff).await?)
    }

    /// Integrated relay: from now on, `STORE_MESSAGE`s for the owner are handed to `inbox`
    /// first (see [`super::owner`]). Ignored by a relay that serves everyone, and when one is
    /// installed already.
    pub fn set_owner_inbox(&self, inbox: Arc<dyn super::owner::OwnerInbox>) {
        if matches!(self.inner.opts.mode, RelayMode::Integrated { .. }) {
            let _ = self.inner.owner_inbox.set(inbox);
        }
    }

    /// The counters.
    pub fn stats(&self) -> &Arc<Stats> {
        &self.inner.stats
    }

    /// The options it runs with.
    pub fn options(&self) -> &RelayOptions {
        &self.inner.opts
    }

    /// The underlying records (tests and tools).
    pub fn records(&self) -> &Records {
        &self.inner.store
    }

    /// Delivers envelopes that other processes of a clustered relay route to our clients.
    fn local_sink(&self) -> LocalSink {
        let weak = Arc::downgrade(&self.inner);
        Arc::new(move |who: &IdentityKey, env: Envelope| {
            let Some(inner) = weak.upgrade() else {
                return false;
            };
            let push = matches!(env, Envelope::StoredMessage(_));
            let target = match inner.online.lock() {
                Ok(routes) if push => routes.push_target(who),
                Ok(routes) => routes.confirmation_target(who),
                Err(_) => None,
            };
            let sent = target.is_some_and(|out| out.try_send(Box::new(env)).is_ok());
            if sent && push {
                inner.stats.pushed.fetch_add(1, Relaxed);
            }
            sent
        })
    }

    /// Hands a confirmation or session reset for `to` to another process of the cluster.
    async fn forward_elsewhere(&self, to: IdentityKey, env: Envelope) -> bool {
        match self.inner.store.cluster() {
            Some(c) => c.forward(to, env).await,
            None => false,
        }
    }

    async fn maintenance(self) {
        let p = &self.inner.opts.policy;
        let mut expiry = tokio::time::interval(Duration::from_secs(p.expiry_interval_secs));
        let mut stats = tokio::time::interval(Duration::from_secs(p.stats_interval_secs));
        expiry.tick().await;
        stats.tick().await;
        let mut stop = self.inner.shutdown.subscribe();
        loop {
            tokio::select! {
                _ = expiry.tick() => match self.expire_now().await {
                    Ok(n) if n > 0 => tracing::info!(expired = n, "expired old messages"),
                    Ok(_) => {}
                    Err(e) => tracing::error!(error = %e, "expiry failed"),
                },
                _ = stats.tick() => self.report("relay counters"),
                _ = async { stop.wait_for(|s| *s).await.is_ok() } => break,
            }
        }
    }

    /// Logs the counters and rewrites the stats file (if configured).
    pub fn report(&self, what: &str) {
        let s = self.inner.stats.snapshot();
        match serde_json::to_string(&s) {
            Ok(json) => {
                tracing::info!(stats = %json, "{what}");
                if let Some(p) = &self.inner.opts.stats_path {
                    let tmp = p.with_extension("json.tmp");
                    let r = std::fs::write(&tmp, json.as_bytes())
                        .and_then(|()| std::fs::rename(&tmp, p));
                    if let Err(e) = r {
                        tracing::warn!(error = %e, path = %p.display(), "cannot write stats file");
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot serialise counters"),
        }
    }

    /// Stops serving: every connection finishes the request it is handling (stores wait for
    /// their commit), then the committer finishes everything queued and flushes. Waits at most
    /// `grace` for connections to wind down.
    pub async fn shutdown(&self, grace: Duration) -> Result<(), RelayError> {
        self.inner.shutdown.send_replace(true);
        let deadline = Instant::now() + grace;
        // Bounded wait for connection tasks.
        while self.inner.stats.connections_open.load(Relaxed) > 0 && Instant::now() < deadline {
            let _ =
                tokio::time::timeout(Duration::from_millis(50), self.inner.idle.notified()).await;
        }
        let task = self
            .inner
            .maintenance
            .lock()
            .ok()
            .and_then(|mut m| m.take());
        if let Some(t) = task {
            let _ = t.await;
        }
        self.inner.store.close().await?;
        self.report("relay stopped; final counters");
        Ok(())
    }

    /// Tells every connection to stop after the request it is handling, without waiting (the
    /// waiting part of [`Relay::shutdown`]). Idle peers are disconnected at once instead of
    /// holding shutdown until their idle timeout.
    pub fn begin_shutdown(&self) {
        self.inner.shutdown.send_replace(true);
    }

    /// A receiver that turns true when the relay shuts down.
    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.inner.shutdown.subscribe()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.inner.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn now(&self) -> Now {
        Now {
            mono_ms: self.now_ms(),
            wall: Timestamp::now(),
        }
    }

    fn push_target(&self, who: &IdentityKey) -> Option<Out> {
        self.inner
            .online
            .lock()
            .ok()
            .and_then(|m| m.push_target(who))
    }

    fn confirmation_target(&self, who: &IdentityKey) -> Option<Out> {
        self.inner
            .online
            .lock()
            .ok()
            .and_then(|m| m.confirmation_target(who))
    }

    /// Serves one authenticated connection until it closes, idles out, breaks the protocol, or
    /// the relay shuts down. `first` is an envelope already read from it (a node that reads
    /// the first envelope to tell relay traffic from direct traffic passes it here).
    pub async fn serve_connection<R, W>(&self, conn: Connection<R, W>, first: Option<Envelope>)
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let idle = self.inner.opts.idle_timeout;
        self.serve_connection_with(conn, first, idle).await
    }

    /// [`Relay::serve_connection`] with this connection's own idle timeout (a node gives
    /// strangers a shorter one). Dropping the future (e.g. an evicted connection's task being
    /// aborted) cleans up like a normal end: the registration is forgotten and the writer
    /// closes the connection.
    pub async fn serve_connection_with<R, W>(
        &self,
        conn: Connection<R, W>,
        first: Option<Envelope>,
        idle: Duration,
    ) where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let inner = &self.inner;
        inner.stats.connections_total.fetch_add(1, Relaxed);
        inner.stats.connections_open.fetch_add(1, Relaxed);
        let _guard = ConnGuard {
            inner: inner.clone(),
        };
        let conn_id = inner.next_conn.fetch_add(1, Relaxed);
        let handshake_hash = conn.handshake_hash;
        // A QUIC client learns the address we see for it (its NAT mapping) before anything
        // else (docs/PROTOCOL.md, "Observed addresses").
        let observed = match (conn.transport, conn.remote) {
            (crate::transport::Transport::Quic, Some(a)) => Some(a),
            _ => None,
        };
        let (peer, reader, writer) = conn.split();
        let reader = reader.map_inner(ReadAhead::new);
        let peer = peer.key();
        let (tx, rx) = mpsc::channel::<Box<Envelope>>(OUT_QUEUE);
        if let Some(a) = observed {
            // The queue is new and empty: this cannot fail, and goes out first.
            let _ = tx.try_send(Box::new(Envelope::ObservedAddress(
                crate::wire::relay::ObservedAddress::new(a),
            )));
        }
        let writer_task = tokio::spawn(write_loop(writer, rx));
        let mut nonce = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let core = RelayConn::new(
            inner.opts.mode,
            inner.opts.relay_key,
            inner.policy.clone(),
            inner.rate.clone(),
            peer,
            handshake_hash,
            nonce,
        );
        let mut c = ConnState {
            relay: self.clone(),
            peer,
            conn_id,
            core,
            tx,
            inflight: Arc::new(Semaphore::new(MAX_INFLIGHT_STORES)),
            idle,
            in_cluster: false,
        };
        let reason = c.run(reader, first).await;
        tracing::debug!(peer = %peer.short(), conn = conn_id, %reason, "relay connection ended");
        // Forgets the registration (also when this future is dropped instead).
        drop(c);
        let _ = writer_task.await;
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(
    mut w: Writer<W>,
    mut rx: mpsc::Receiver<Box<Envelope>>,
) {
    let mut batch: Vec<Envelope> = Vec::new();
    while let Some(first) = rx.recv().await {
        batch.push(*first);
        while batch.len() < 64 {
            match rx.try_recv() {
                Ok(e) => batch.push(*e),
                Err(_) => break,
            }
        }
        let r = w.send_all(&batch).await;
        batch.clear();
        if batch.capacity() > 64 {
            batch = Vec::new();
        }
        if r.is_err() {
            // The peer is gone; drain so senders never block on us.
            rx.close();
            while rx.recv().await.is_some() {}
            return;
        }
    }
    let _ = w.shutdown().await;
}

struct ConnState {
    relay: Relay,
    peer: IdentityKey,
    conn_id: u64,
    core: RelayConn,
    tx: Out,
    inflight: Arc<Semaphore>,
    idle: Duration,
    /// Counted online with the cluster's routing (clustered backend only).
    in_cluster: bool,
}

impl Drop for ConnState {
    fn drop(&mut self) {
        if let Some(who) = self.core.registered() {
            if let Ok(mut m) = self.relay.inner.online.lock() {
                m.remove(&who, self.conn_id);
            }
            if self.in_cluster {
                if let Some(cluster) = self.relay.inner.store.cluster() {
                    cluster.offline(who);
                }
            }
        }
    }
}

/// The `STORE_RESPONSE` for a decided store (counting refusals).
fn store_response(
    stats: &Stats,
    id: u64,
    r: Result<StoreOutcome, RelayStoreError>,
) -> StoreResponse {
    let refused = |code: RelayErrorCode| {
        stats.reject(code);
        StoreResponse {
            success: false,
            stored_at: Timestamp(0),
            message_id: id,
            error: Some(code.code()),
        }
    };
    match r {
        Ok(StoreOutcome::Stored(t) | StoreOutcome::Duplicate(t)) => StoreResponse {
            success: true,
            stored_at: t,
            message_id: id,
            error: None,
        },
        Ok(StoreOutcome::Refused(code)) => refused(code),
        Err(RelayStoreError::Closed) => refused(RelayErrorCode::ShuttingDown),
        Err(e @ RelayStoreError::Replicated { .. }) => {
            if let Some(repeats) = stats.store_errors.due() {
                tracing::error!(error = %e, repeats, "cannot store a message in the replicated store");
            }
            refused(RelayErrorCode::StorageFailure)
        }
        Err(RelayStoreError::Store(e)) => {
            if let Some(repeats) = stats.store_errors.due() {
                tracing::error!(error = %e, repeats, "cannot store a message; refusing STORE until it works again");
            }
            if e.is_disk_full() {
                refused(RelayErrorCode::DiskFull)
            } else {
                refused(RelayErrorCode::StorageFailure)
            }
        }
    }
}

/// Receives the next envelope, handing the reader back with it: one such receive stays in
/// flight across turns of [`ConnState::run`] (`Reader::recv` is not cancel-safe, so a receive
/// found pending is resumed later, never dropped and restarted).
async fn recv_owned<R: AsyncRead + Unpin>(
    mut reader: Reader<R>,
) -> (Result<Envelope, ConnectionError>, Reader<R>) {
    let r = reader.recv().await;
    (r, reader)
}

/// Polls `f` once without registering for a wake-up: its output if it is ready now (the bytes
/// are already buffered or readable), `None` otherwise. Whoever awaits `f` next registers.
fn ready_now<F: Future>(f: Pin<&mut F>) -> Option<F::Output> {
    match f.poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// What ends a connection.
enum Flow {
    Continue,
    Close(&'static str),
}

impl ConnState {
    /// Reads and handles envelopes in order. A `STORE_MESSAGE` after registration takes with
    /// it the `STORE_MESSAGE`s that can be received at once without waiting (up to
    /// [`MAX_VERIFY_BATCH`]), so that their signatures are verified as one batch; nothing ever
    /// waits for more input to fill a batch.
    async fn run<R: AsyncRead + Unpin>(
        &mut self,
        reader: Reader<R>,
        first: Option<Envelope>,
    ) -> &'static str {
        let idle = self.idle;
        let mut stop = self.relay.shutdown_signal();
        if let Some(env) = first {
            if let Flow::Close(why) = Box::pin(self.handle(env)).await {
                return why;
            }
        }
        // The receive lives across the handling of what it received; the handling is boxed
        // so that its state is allocated only while it runs, not kept in every idle
        // connection's task.
        let mut recv = std::pin::pin!(recv_owned(reader));
        // Received while gathering a batch, to be handled after it.
        let mut next: Option<Result<Envelope, ConnectionError>> = None;
        loop {
            let r = match next.take() {
                Some(r) => r,
                None => {
                    let got = tokio::select! {
                        r = tokio::time::timeout(idle, recv.as_mut()) => match r {
                            Err(_) => return "idle timeout",
                            Ok(got) => got,
                        },
                        _ = async { stop.wait_for(|s| *s).await.is_ok() } => {
                            self.send(err(RelayErrorCode::ShuttingDown, "relay shutting down")).await;
                            return "relay shutdown";
                        }
                    };
                    let (r, reader) = got;
                    recv.set(recv_owned(reader));
                    r
                }
            };
            let env = match r {
                Ok(env) => env,
                Err(e) if e.is_closed() => return "closed by peer",
                Err(_) => return "transport error",
            };
            let flow = match env {
                Envelope::StoreMessage(m) if self.core.takes_store_batches() => {
                    let mut bytes = m.encrypted_blob.len();
                    let mut batch = vec![m];
                    while batch.len() < MAX_VERIFY_BATCH && bytes < MAX_VERIFY_BATCH_BYTES {
                        let Some((r, reader)) = ready_now(recv.as_mut()) else {
                            break;
                        };
                        recv.set(recv_owned(reader));
                        match r {
                            Ok(Envelope::StoreMessage(m)) => {
                                bytes = bytes.saturating_add(m.encrypted_blob.len());
                                batch.push(m);
                            }
                            other => {
                                next = Some(other);
                                break;
                            }
                        }
                    }
                    let actions = self.core.handle_stores(batch, self.relay.now());
                    Box::pin(self.execute(actions)).await
                }
                env => Box::pin(self.handle(env)).await,
            };
            if let Flow::Close(why) = flow {
                return why;
            }
        }
    }

    async fn send(&self, env: Envelope) {
        let _ = self.tx.send(Box::new(env)).await;
    }

    async fn refuse(&self, code: RelayErrorCode, message: &str) {
        self.relay.inner.stats.reject(code);
        tracing::debug!(peer = %self.peer.short(), reason = code.name(), "request refused");
        self.send(err(code, message)).await;
    }

    async fn handle(&mut self, env: Envelope) -> Flow {
        let actions = self.core.handle(env, self.relay.now());
        self.execute(actions).await
    }

    /// Executes the core's actions in order; stops at a `Close` (or when a store cannot be
    /// queued because the connection is closing).
    async fn execute(&mut self, actions: Vec<Action>) -> Flow {
        let inner = self.relay.inner.clone();
        // Stores for the owner of an integrated relay with an owner inbox: handed over
        // together once the other actions ran (their sender is this connection's identity).
        let owner = inner.owner_inbox.get().cloned();
        let mut to_owner: Vec<StoreMessage> = Vec::new();
        let mut flow = Flow::Continue;
        for action in actions {
            match action {
                Action::Send(env) => self.send(env).await,
                Action::Refuse { code, message } => self.refuse(code, message).await,
                Action::Register { who } => {
                    if let Ok(mut m) = inner.online.lock() {
                        m.register(who, self.conn_id, self.tx.clone());
                    }
                    if let Some(cluster) = inner.store.cluster() {
                        // Reachable from the other processes before RELAY_REGISTERED goes out.
                        self.in_cluster = true;
                        cluster.online(who).await;
                    }
                }
                Action::SendKeptConfirmations { who, max } => {
                    match inner.store.kept_confirmations(who, max).await {
                        Ok(list) => {
                            for c in list {
                                self.send(Envelope::DeliveryConfirmation(c)).await;
                            }
                        }
                        Err(e) => tracing::error!(error = %e, "reading kept confirmations failed"),
                    }
                }
                Action::StoreRefused { message_id, code } => {
                    inner.stats.reject(code);
                    self.send(Envelope::StoreResponse(StoreResponse {
                        success: false,
                        stored_at: Timestamp(0),
                        message_id,
                        error: Some(code.code()),
                    }))
                    .await;
                }
                Action::Store {
                    sender,
                    message,
                    now,
                } => {
                    if owner.is_some() && sender == self.peer {
                        to_owner.push(message);
                    } else if let Flow::Close(why) = self.commit_store(sender, message, now).await
                    {
                        flow = Flow::Close(why);
                        break;
                    }
                }
                Action::Retrieve {
                    who,
                    since,
                    after,
                    limit,
                } => {
                    // This connection collects `who`'s messages from now on: pushes go to it.
                    if let Ok(mut m) = inner.online.lock() {
                        m.collecting(&who, self.conn_id);
                    }
                    match inner.store.retrieve(who, since, after, limit).await {
                        Ok((messages, has_more)) => {
                            inner
                                .stats
                                .retrieved
                                .fetch_add(messages.len() as u64, Relaxed);
                            self.send(Envelope::MessageBatch(MessageBatch { messages, has_more }))
                                .await;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "retrieval failed");
                            self.refuse(RelayErrorCode::StorageFailure, "storage failure")
                                .await;
                        }
                    }
                }
                Action::Confirm {
                    who,
                    sender,
                    message_id,
                    forward,
                } => self.confirm(who, sender, message_id, forward).await,
                Action::AckConfirmation {
                    who,
                    delivered_to,
                    message_id,
                } => {
                    if let Err(e) = inner
                        .store
                        .ack_confirmation(&who, &delivered_to, message_id)
                        .await
                    {
                        tracing::error!(error = %e, "forgetting a confirmation failed");
                    }
                }
                Action::ForwardPunch { to, env } => match self.relay.confirmation_target(&to) {
                    Some(out) if out.try_send(Box::new(env)).is_ok() => {
                        tracing::debug!(from = %self.peer.short(), to = %to.short(), "punch message forwarded");
                    }
                    _ => {
                        tracing::debug!(from = %self.peer.short(), to = %to.short(), "punch message for an absent client dropped");
                    }
                },
                Action::SignaturesBatched(n) => {
                    inner.stats.signatures_batched.fetch_add(n, Relaxed);
                }
                Action::Close(why) => {
                    flow = Flow::Close(why);
                    break;
                }
            }
        }
        if let (Some(owner), false) = (owner, to_owner.is_empty()) {
            if let Flow::Close(why) = self.hand_to_owner(owner, to_owner).await {
                return Flow::Close(why);
            }
        }
        flow
    }

    /// Hands checked stores for the owner to its inbox and answers each when it returned:
    /// recorded ones with success and the owner's confirmation (routed like any confirmation),
    /// the others by storing them as relay records (see [`super::owner`]).
    async fn hand_to_owner(
        &mut self,
        owner: Arc<dyn super::owner::OwnerInbox>,
        messages: Vec<StoreMessage>,
    ) -> Flow {
        use super::owner::Verdict;
        let messages: Arc<[StoreMessage]> = messages.into();
        let mut verdicts = owner.receive(self.peer, messages.clone()).await.into_iter();
        let now = Timestamp::now();
        for m in messages.iter() {
            match verdicts.next().unwrap_or(Verdict::Store) {
                Verdict::Recorded(c) => {
                    self.send(Envelope::StoreResponse(StoreResponse {
                        success: true,
                        stored_at: now,
                        message_id: m.message_id,
                        error: None,
                    }))
                    .await;
                    self.forward_confirmation(*c).await;
                }
                Verdict::Store => {
                    if let Flow::Close(why) = self.commit_store(self.peer, m.clone(), now).await {
                        return Flow::Close(why);
                    }
                }
            }
        }
        Flow::Continue
    }

    /// The owner path ([`super::owner`]): pushes the owner's confirmation of a message it
    /// recorded to the sender's connection (here or, in a cluster, at another process), else
    /// keeps it for the sender. Not kept before the push, unlike [`ConnState::confirm`]'s
    /// receipts: there is no relay record whose deletion it must accompany, and a confirmation
    /// lost with this process is sent again when the sender stores the message again (the
    /// owner answers the duplicate with a new confirmation).
    async fn forward_confirmation(&self, c: DeliveryConfirmation) {
        let inner = &self.relay.inner;
        let sender = IdentityKey(c.sender);
        match self.relay.confirmation_target(&sender) {
            Some(out)
                if out
                    .try_send(Box::new(Envelope::DeliveryConfirmation(c.clone())))
                    .is_ok() =>
            {
                inner.stats.confirmations_forwarded.fetch_add(1, Relaxed);
            }
            _ if self
                .relay
                .forward_elsewhere(sender, Envelope::DeliveryConfirmation(c.clone()))
                .await =>
            {
                inner.stats.confirmations_forwarded.fetch_add(1, Relaxed);
            }
            _ => {
                inner.stats.confirmations_kept.fetch_add(1, Relaxed);
                if let Err(e) = inner.store.keep_confirmation(c).await {
                    tracing::error!(error = %e, "keeping a confirmation failed");
                }
            }
        }
    }

    /// Deletes `who`'s message `(sender, message_id)`. If it existed: a delivery confirmation
    /// is kept durably for the sender in the same step (see [`RelayBackend::confirm_keeping`])
    /// and then pushed to the sender if it is connected here or to another process of the
    /// cluster; the kept copy goes when the sender acknowledges it (`CONFIRMATION_ACK`), and is
    /// handed over again on its next registration until then, so a receipt survives a crash of
    /// this process or a push lost in flight. A session reset is pushed only (dropped if the
    /// sender is away: it re-stores later and gets a fresh notice).
    ///
    /// [`RelayBackend::confirm_keeping`]: super::backend::RelayBackend::confirm_keeping
    async fn confirm(
        &mut self,
        who: IdentityKey,
        sender: IdentityKey,
        message_id: u64,
        forward: Forward,
    ) {
        let inner = self.relay.inner.clone();
        let (what, deleted) = match &forward {
            Forward::Confirmation(c) => (
                "confirmation",
                inner
                    .store
                    .confirm_keeping(who, sender, message_id, c.clone())
                    .await,
            ),
            Forward::SessionReset(_) => (
                "session reset",
                inner.store.confirm(who, sender, message_id).await,
            ),
        };
        match deleted {
            Ok(true) => {
                let env = match forward {
                    Forward::Confirmation(c) => Envelope::DeliveryConfirmation(c),
                    Forward::SessionReset(n) => Envelope::SessionReset(n),
                };
                let receipt = matches!(env, Envelope::DeliveryConfirmation(_));
                let local = self.relay.confirmation_target(&sender).is_some_and(|out| {
                    out.try_send(Box::new(env.clone())).is_ok()
                });
                let pushed = local || self.relay.forward_elsewhere(sender, env).await;
                if receipt {
                    let counter = if pushed {
                        &inner.stats.confirmations_forwarded
                    } else {
                        &inner.stats.confirmations_kept
                    };
                    counter.fetch_add(1, Relaxed);
                }
            }
            Ok(false) => {
                tracing::debug!(peer = %who.short(), what, "confirmation or reset for an unknown message ignored")
            }
            Err(e) => {
                tracing::error!(error = %e, what, "confirmation or session reset failed");
                self.refuse(RelayErrorCode::StorageFailure, "storage failure")
                    .await;
            }
        }
    }

    /// Queues a checked `STORE_MESSAGE` for the group commit; its `STORE_RESPONSE` (and push)
    /// is sent from the commit thread once it is durable (or refused there).
    async fn commit_store(&mut self, who: IdentityKey, m: StoreMessage, now: Timestamp) -> Flow {
        let inner = self.relay.inner.clone();
        let id = m.message_id;
        // Bound the stores waiting for a commit on this connection, and hold a slot
        // of its outgoing queue for the response, so the commit thread can answer
        // without waiting (pushes that find a queue full are dropped instead).
        let Ok(permit) = self.inflight.clone().acquire_owned().await else {
            return Flow::Close("closing");
        };
        let Ok(slot) = self.tx.clone().reserve_owned().await else {
            return Flow::Close("writer gone");
        };
        let recipient = IdentityKey(m.recipient);
        let relay = self.relay.clone();
        let new = NewMessage {
            recipient,
            sender: who,
            message_id: id,
            sender_signature: m.sender_signature,
            blob: m.encrypted_blob,
            now,
        };
        let stats = inner.stats.clone();
        // Runs on the commit thread once the message is durable (or refused).
        let then = move |r: Result<StoreOutcome, RelayStoreError>, m: NewMessage| {
            let _permit = permit;
            // Looked up once the message is durable, so that a connection that asked to
            // collect before this point either read it from the store or gets it pushed.
            let push_to = match &r {
                Ok(StoreOutcome::Stored(_)) => relay.push_target(&recipient),
                _ => None,
            };
            if let Ok(StoreOutcome::Stored(t)) = &r {
                let pushed = StoredMessage {
                    message_id: id,
                    sender: who.0,
                    timestamp: *t,
                    encrypted_blob: m.blob,
                    sender_signature: m.sender_signature,
                };
                match (push_to, relay.inner.store.cluster()) {
                    (Some(out), _) => {
                        if out
                            .try_send(Box::new(Envelope::StoredMessage(pushed)))
                            .is_ok()
                        {
                            stats.pushed.fetch_add(1, Relaxed);
                        }
                    }
                    // Not collecting here: wherever it collects in the cluster.
                    (None, Some(cluster)) => cluster.push(recipient, pushed),
                    (None, None) => {}
                }
            }
            let resp = store_response(&stats, id, r);
            slot.send(Box::new(Envelope::StoreResponse(resp)));
        };
        inner.store.store_then(new, Box::new(then)).await;
        Flow::Continue
    }
}
