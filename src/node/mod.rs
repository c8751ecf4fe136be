//! The personal node: one process that owns the identity, store, listener, integrated relay,
//! outbox, history, and the connections to relays and rendezvous servers.
//!
//! Layout:
//! - [`contacts`]: the TOFU contact book persisted in the store.
//! - [`contact_addrs`]: the addresses contacts advertise, handed to the listener's handshake
//!   rate.
//! - [`history`]: every message sent or received, with status and path.
//! - [`outbox`]: durable queue of signed, encrypted messages nobody accepted yet.
//! - [`delivery`]: the send path — direct-vs-relay decision core (pure), the racing delivery
//!   workers, and the pool of outgoing relay-protocol connections.
//! - [`inbox`]: the receive path — collecting from the integrated relay and home relays,
//!   decrypting, recording, confirming.
//! - [`owner_inbox`]: a contact's message arriving at the integrated relay is recorded before
//!   the relay acknowledges it (one durable point on the receiving node).
//! - [`control`]: the local control socket the CLI talks to.
//! - [`strangers`]: peers met that are not contacts (bounded, expiring, in memory).
//!
//! Admission (docs/PROTOCOL.md, "Connection admission"): the listener classes each
//! authenticated peer as known (a contact, or the node itself) or a stranger; strangers get a
//! small share of the connections and a short idle timeout, and are closed to make room for a
//! contact. Connecting never makes anyone a contact: only the user does (`contacts add`,
//! `contacts trust <id>`).
//!
//! Delivery model (docs/PROTOCOL.md, "Node"): every node hosts an *integrated relay* on its
//! Noise listener that stores only for its owner. A sender delivers *directly* by storing the
//! message at the recipient's integrated relay over a Noise connection to the recipient's node
//! (the `STORE_RESPONSE` arrives only after the recipient's node flushed it: the recipient
//! stores before it acknowledges), or *through a relay* by storing it at one of the recipient's
//! home relays. The same relay protocol serves both, so one client and one server carry every
//! message. The node itself collects from its integrated relay and its home relays.
//!
//! Invariants: a message is in the outbox (committed with the ratchet state and its history
//! entry) before `send` returns; it leaves the outbox only in the batch that records who
//! accepted it, which keeps it (`Tree::Awaiting`) until the recipient confirms it; it is
//! `delivered` only after that confirmation; a received message is recorded (committed with the ratchet state) before it is
//! confirmed to the relay that held it; duplicates are dropped on the ratchet's
//! `(sender, message id)` check; a validly signed message we cannot decrypt for lack of
//! ratchet state is answered with a session-reset notice, never confirmed. Messages from
//! contacts marked Rejected are refused.

pub mod contact_addrs;
pub mod contacts;
pub mod control;
pub mod delivery;
pub mod events;
pub mod file_group;
mod file_hooks;
pub mod files;
pub mod groups;
pub mod history;
pub mod inbox;
pub mod locks;
pub mod outbox;
pub mod owner_inbox;
pub mod punch;
pub mod quic;
pub mod recovery;
pub mod strangers;
pub mod wake;

use crate::config::Config;
use crate::identity::keys::{load_or_create_identity, WantedFlags};
use crate::identity::rotation::{Change, PreviousNoiseKeys};
use crate::identity::{
    ContactCard, ContactIdentity, IdentityKey, Observation, Trust, UserIdentity, VerifiedCache,
};
use crate::logging::LogEvery;
use crate::noise::admission::Class;
use crate::noise::listener;
use crate::noise::refusals::Refusals;
use crate::noise::stream::{HandshakeLimits, TcpConnection};
use crate::ratchet::{LocalKeys, SessionManager};
use crate::relay::{Relay, RelayMode, RelayOptions};
use crate::shutdown::stopped;
use crate::store::{Batch, SledStore, Store, StoreError};
use crate::time::Timestamp;
use crate::wire::rendezvous::RelayHint;
use crate::wire::{Endpoint, Envelope};
use crate::Error;
use contacts::ContactBook;
use history::{Direction, History, HistoryEntry, Status};
use serde::Serialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, watch, Notify};
use tokio::task::JoinHandle;

/// Directory inside the data dir that holds the database.
pub const DB_DIR: &str = "db";
/// What a node tells the user when its store is damaged.
pub const NODE_DAMAGE_ADVICE: &str = "The node will not start on it (it would run with history, \
contacts and sessions missing). Restore the store from a backup with `sremp restore BACKUP \
--key KEYFILE --force` (the damaged directory is kept beside it as db.damaged-<time>); see \
\"After damage\" in the README";
/// The control socket inside the data dir.
pub const CONTROL_SOCKET: &str = "control.sock";
/// Longest text a message may carry (bytes), so that it fits every relay's default limit.
pub const MAX_TEXT: usize = 64 * 1024;

/// Everything `sremp run` checks before it creates an identity or opens the store:
/// [`Config::validate`] (every section's values) and the rendezvous client settings (CA file).
pub fn validate_config(cfg: &Config) -> Result<(), Error> {
    cfg.validate()?;
    if !cfg.rendezvous.servers.is_empty() {
        crate::rendezvous::client::RegistrarSettings::from_config(
            &cfg.rendezvous,
            cfg.data_dir(),
        )?;
    }
    Ok(())
}

/// The identity flags of `sremp run` (and `init`) with this configuration: `uses_relay` when
/// the node has home relays (`node.relays`).
pub fn wanted_flags(cfg: &Config) -> WantedFlags {
    WantedFlags::node(!cfg.node.relays.is_empty())
}

/// The warning to give when the card would advertise an address no contact can use: nothing in
/// `[listen] advertise` and a wildcard (`0.0.0.0`, `::`) listen address. `None` if fine.
pub fn unusable_advertise_warning(cfg: &Config, bound: SocketAddr) -> Option<String> {
    if !cfg.listen.advertise.is_empty() || !bound.ip().is_unspecified() {
        return None;
    }
    Some(format!(
        "the contact card advertises {bound}, which no contact can connect to: set \
         [listen] advertise = [\"<host or IP others can reach>:{}\"] in the config (without \
         it, contacts can reach this node only through its home relays)",
        bound.port()
    ))
}

/// What the user asked for could not be done.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// No contact matches.
    #[error("unknown contact {0:?} (add it with `sremp contacts add CARD`)")]
    UnknownContact(String),
    /// Several contacts share the username.
    #[error("{0:?} matches several contacts; use the contact id")]
    AmbiguousContact(String),
    /// Sending to a contact marked Rejected.
    #[error("contact {0} is rejected")]
    RejectedContact(IdentityKey),
    /// That is us.
    #[error("cannot message yourself")]
    SelfContact,
    /// The card did not parse or verify.
    #[error("invalid contact card: {0}")]
    Card(#[from] crate::identity::IdentityError),
    /// The text is empty or too long.
    #[error("message text is {0} bytes (UTF-8); the message text limit is 1 to {MAX_TEXT} bytes")]
    BadText(usize),
    /// Not a message id (16 hex characters): no message can have it.
    #[error("no message with id {0}")]
    BadMessageId(String),
    /// No message we sent has that id.
    #[error("no message with id {0:016x}")]
    UnknownMessage(u64),
    /// Waiting timed out.
    #[error("timed out waiting for delivery of {0:016x}")]
    Timeout(u64),
    /// The contact presented a conflicting identity.
    #[error(
        "contact card conflicts with the pinned identity of {0} (same version, different contents)"
    )]
    Conflict(IdentityKey),
    /// Local storage failed.
    #[error("storage: {0}")]
    Store(#[from] StoreError),
    /// Contacts storage failed.
    #[error(transparent)]
    Contact(#[from] contacts::ContactError),
    /// Encryption failed locally.
    #[error("encryption: {0}")]
    Send(#[from] crate::ratchet::SendError),
    /// The ratchet session store failed while handling a received message.
    #[error("session: {0}")]
    Session(#[from] crate::ratchet::SessionError),
    /// The node is shutting down.
    #[error("node is shutting down")]
    ShuttingDown,
    /// Updating the identity (key file) failed.
    #[error("identity update: {0}")]
    Identity(#[from] crate::identity::keys::KeyFileError),
    /// A group request was refused (the code is docs/PROTOCOL.md's, "Groups").
    #[error("group: {0} (code 0x{code:02x})", code = .0.code())]
    Group(#[from] crate::group::GroupError),
}

/// One relay connection's state in [`NodeStatus`].
#[derive(Clone, Debug, Serialize)]
pub struct RelayState {
    /// `host:port`.
    pub endpoint: String,
    /// The relay's contact id.
    pub id: String,
    /// Registered and collecting right now.
    pub connected: bool,
}

/// `sremp status`.
#[derive(Clone, Debug, Serialize)]
pub struct NodeStatus {
    /// Our contact id.
    pub id: String,
    /// Our username.
    pub username: String,
    /// Where we listen.
    pub listen: String,
    /// What we advertise.
    pub advertised: Vec<String>,
    /// The integrated relay (collecting from it).
    pub integrated_relay: RelayState,
    /// Home relays.
    pub relays: Vec<RelayState>,
    /// Rendezvous: servers we are registered with (`name@host:port`).
    pub rendezvous_registered: Vec<String>,
    /// Rendezvous servers known.
    pub rendezvous_known: Vec<String>,
    /// Last rendezvous error, if any.
    pub rendezvous_error: Option<String>,
    /// Authenticated inbound connections open now.
    pub inbound_connections: usize,
    /// Outgoing relay-protocol connections open now (direct and relay).
    pub outbound_connections: usize,
    /// Messages waiting in the outbox.
    pub outbox: usize,
    /// The QUIC endpoint's UDP address (`null` when `[quic] enabled = false`).
    pub quic_listen: Option<String>,
    /// What relays observed as our QUIC address, newest first.
    pub observed_addresses: Vec<quic::Observed>,
    /// The guess about our NAT's mapping from those observations.
    pub nat_mapping: quic::NatMapping,
    /// Per contact, the path its last message took now (see [`ContactPath`]).
    pub paths: Vec<ContactPath>,
    /// Hole punching per contact met in punching.
    pub punch: Vec<punch::PeerPunch>,
}

/// The current path to one contact (an entry of `paths` in `sremp status --json`).
#[derive(Clone, Debug, Serialize)]
pub struct ContactPath {
    /// The contact's id, 64 hex characters.
    pub contact: String,
    /// `"direct-quic"` or `"direct-tcp"` while the direct path is proven (the last direct
    /// attempt succeeded), else `"relay"`.
    pub path: String,
    /// The direct endpoint that last worked, if the path is direct.
    pub endpoint: Option<String>,
}

pub(crate) struct Inner {
    /// Our identity; a new version replaces it while the node runs (`sremp id rename`,
    /// `rotate-noise-key`), and the listener and registrar follow it.
    me: watch::Sender<Arc<UserIdentity>>,
    store: Arc<dyn Store>,
    contacts: ContactBook,
    history: History,
    /// Replaced when our Noise keys change (rotation, end of a grace period).
    sessions: std::sync::RwLock<Arc<SessionManager>>,
    /// One identity update (or grace-period expiry) at a time.
    updating: tokio::sync::Mutex<()>,
    /// Wakes the grace-period task after a rotation.
    keys_changed: Notify,
    /// One ratchet operation per peer at a time (load → compute → commit must not
    /// interleave); different peers run at once.
    locks: locks::RatchetLocks,
    /// Sends waiting for their peer's ratchet lock, committed together.
    sends: delivery::SendQueue,
    events: broadcast::Sender<HistoryEntry>,
    /// Contact events for control clients (`follow` with `"events":true`).
    node_events: events::Events,
    cfg: crate::config::NodeConfig,
    handshake: HandshakeLimits,
    local_addr: SocketAddr,
    advertised: Vec<Endpoint>,
    my_relays: Vec<RelayHint>,
    rendezvous: Option<crate::rendezvous::client::RegistrarSettings>,
    registrar: Mutex<Option<watch::Receiver<crate::rendezvous::client::RegistrarStatus>>>,
    data_dir: PathBuf,
    pool: delivery::Pool,
    paths: Mutex<std::collections::HashMap<IdentityKey, delivery::PathState>>,
    /// Wakes one recipient's delivery worker (or the engine).
    wakers: Arc<wake::Wakers>,
    inbound: AtomicUsize,
    sources: Mutex<std::collections::HashMap<String, bool>>,
    /// Sender side: when we last reset our session with a peer after its notice.
    resets: Mutex<std::collections::HashMap<IdentityKey, std::time::Instant>>,
    /// Sender side: history seqs of queued messages whose store in flight may have been taken
    /// as a duplicate of a copy the recipient has since dropped: store them once more.
    restore: Mutex<std::collections::HashSet<u64>>,
    /// Recipient side: when we last wrote a "could not decrypt" notice line for a sender.
    reset_notes: Mutex<std::collections::HashMap<IdentityKey, std::time::Instant>>,
    stop: watch::Receiver<bool>,
    /// Rate limit for "cannot record a received message".
    receive_errors: LogEvery,
    /// Rate limit for "cannot record delivery".
    record_errors: LogEvery,
    strangers: Mutex<strangers::Strangers>,
    refusals: Arc<Refusals>,
    quic: quic::QuicState,
    /// File transfers (`crate::files`).
    files: Arc<files::Files>,
    punch: punch::PunchState,
}

impl Inner {
    /// The contact, else the stranger, with id `key`.
    pub(crate) fn peer(&self, key: &IdentityKey) -> Result<Option<ContactIdentity>, NodeError> {
        if let Some(c) = self.contacts.get(key)? {
            return Ok(Some(c));
        }
        Ok(self
            .strangers
            .lock()
            .ok()
            .and_then(|mut s| s.get(key, Timestamp::now())))
    }
}

/// The node's API (cheap to clone). See the module docs.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("id", &self.inner.me().key())
            .finish_non_exhaustive()
    }
}

/// A running node: its API plus what is needed to stop it.
pub struct NodeHandle {
    /// The API.
    pub node: Node,
    /// The bound listen address.
    pub local_addr: SocketAddr,
    /// The QUIC endpoint's bound UDP address, when QUIC is enabled.
    pub quic_addr: Option<SocketAddr>,
    /// Endpoints advertised to others.
    pub advertised: Vec<Endpoint>,
    /// Our identity.
    pub identity: Arc<UserIdentity>,
    /// Contacts.
    pub contacts: ContactBook,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    relay: Relay,
    store: Arc<dyn Store>,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle")
            .field("local_addr", &self.local_addr)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl NodeHandle {
    /// The integrated relay's counters (messages it stored as relay records, confirmations it
    /// forwarded or kept, ...). With the owner inbox (docs/PROTOCOL.md, "One durable point on
    /// the receiving node") a contact's direct message is recorded without a relay record.
    pub fn relay_stats(&self) -> crate::relay::stats::StatsSnapshot {
        self.relay.stats().snapshot()
    }

    /// Stops accepting and sending, withdraws from rendezvous, finishes in-flight relay commits
    /// and closes the store (flush and commit marker). Every step runs; the error is the
    /// close's, which means writes applied since the last commit may not be on disk (`sremp
    /// run` exits non-zero).
    pub async fn shutdown(self) -> Result<(), StoreError> {
        let _ = self.shutdown.send(true);
        // Inbound peers sit in the integrated relay's connection loop: tell it now, or the
        // listener waits out its grace period for peers that are merely idle.
        self.relay.begin_shutdown();
        self.node.inner.wakers.wake_all();
        for t in self.tasks {
            if tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .is_err()
            {
                tracing::warn!("a node task did not stop in time");
            }
        }
        self.node.inner.pool.close_all().await;
        if let Err(e) = self.relay.shutdown(Duration::from_secs(2)).await {
            tracing::warn!(error = %e, "integrated relay shutdown");
        }
        let store = self.store.clone();
        let closed = tokio::task::spawn_blocking(move || store.close())
            .await
            .map_err(|e| StoreError::TaskFailed {
                task: "closing the store",
                detail: e.to_string(),
            })
            .and_then(|r| r);
        if let Err(e) = &closed {
            tracing::error!(error = %e, "closing the store failed; the last writes may not be on disk");
        }
        // Already gone when the control server removed it on its way out.
        let _ = std::fs::remove_file(self.node.data_dir().join(CONTROL_SOCKET));
        closed
    }
}

impl NodeError {
    /// True when the failure is a full disk (a store error, also inside a contact or
    /// encryption error; `#[error(transparent)]` hides them from `source()`, so match).
    pub fn is_disk_full(&self) -> bool {
        use crate::ratchet::{SendError, SessionError};
        use contacts::ContactError;
        match self {
            NodeError::Store(e) | NodeError::Contact(ContactError::Store(e)) => e.is_disk_full(),
            NodeError::Send(SendError::Local(SessionError::Store(e)))
            | NodeError::Session(SessionError::Store(e)) => e.is_disk_full(),
            _ => false,
        }
    }
}

/// Commits a batch on the blocking pool (sled flushes are fsyncs).
pub(crate) async fn commit(store: &Arc<dyn Store>, batch: Batch) -> Result<(), StoreError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || store.commit(batch))
        .await
        .map_err(|e| StoreError::TaskFailed {
            task: "commit",
            detail: e.to_string(),
        })?
}

impl Node {
    /// Starts a node from `cfg`: identity, store, integrated relay, listener, inbox collectors,
    /// delivery engine, rendezvous registrar and control socket.
    pub async fn start(cfg: &Config) -> Result<NodeHandle, Error> {
        // Validate everything first: a refused config must not leave a new identity behind.
        validate_config(cfg)?;
        let dir = cfg.data_dir();
        let (user, created) = load_or_create_identity(&dir, &cfg.username(), wanted_flags(cfg))?;
        if created {
            tracing::info!(id = %user.key(), dir = %dir.display(), "created a new identity");
        }
        // Opening verifies every record: on the blocking pool, not an async worker.
        let db = dir.join(DB_DIR);
        let store: Arc<dyn Store> = Arc::new(
            tokio::task::spawn_blocking(move || SledStore::open_checked(&db))
                .await
                .map_err(|e| StoreError::TaskFailed {
                    task: "store open",
                    detail: e.to_string(),
                })?
                .map_err(|e| e.with_advice(NODE_DAMAGE_ADVICE))?,
        );
        // Identities this node has verified (peers' handshakes, stored contacts), shared by
        // its connections and its integrated relay's listener.
        let verified = VerifiedCache::new();
        let contacts = ContactBook::new(store.clone(), verified.clone());
        let history = History::open(store.clone())?;
        let listener =
            crate::noise::bind::listen(cfg.listen.address).map_err(|source| Error::Io {
                context: format!("binding {}", cfg.listen.address),
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Io {
            context: "reading the bound address".into(),
            source,
        })?;
        if let Some(w) = unusable_advertise_warning(cfg, local_addr) {
            tracing::warn!("{w}");
        }
        let quic_ep = cfg
            .quic
            .bind(local_addr)
            .map_err(|e| Error::Connection(e.into()))?;
        let quic_addr = quic_ep.as_ref().and_then(|q| q.local_addr().ok());
        let mut advertised = cfg.listen.advertised(local_addr)?;
        if cfg.listen.advertise.is_empty() {
            if let (true, Some(q)) = (cfg.quic.advertise, quic_addr) {
                advertised.push(
                    Endpoint::from_socket_addr(q).with_transport(crate::transport::Transport::Quic),
                );
            }
        }
        let my_relays = cfg.node.relay_hints()?;
        let rendezvous =
            if cfg.rendezvous.servers.is_empty() && cfg.rendezvous.dns_bootstrap.is_empty() {
                None
            } else {
                Some(crate::rendezvous::client::RegistrarSettings::from_config(
                    &cfg.rendezvous,
                    cfg.data_dir(),
                )?)
            };
        let identity = Arc::new(user);
        let relay = Relay::start(
            store.clone(),
            RelayOptions {
                policy: cfg.relay.clone(),
                mode: RelayMode::Integrated {
                    owner: identity.key(),
                },
                relay_key: identity.key(),
                idle_timeout: cfg.listen.idle_timeout(),
                stats_path: None,
            },
        )
        .await?;
        {
            // A Trusted contact's burst (file chunks, a backlog) is not held to the stranger
            // limit of the integrated relay (`[relay] trusted_rate_*`).
            let book = contacts.clone();
            relay.set_trusted(Arc::new(move |k: &IdentityKey| {
                book.get(k)
                    .ok()
                    .flatten()
                    .is_some_and(|c| c.trust == Trust::Trusted)
            }));
        }
        let (tx, rx) = watch::channel(false);
        let keys = {
            let mut prev = PreviousNoiseKeys::load(&dir)?;
            if prev.prune(Timestamp::now()) > 0 {
                prev.save(&dir)?;
                tracing::info!("forgot rotated-out noise keys whose grace period ended");
            }
            local_keys(&identity, &prev)
        };
        let (me_tx, me_rx) = watch::channel(identity.clone());
        let (events, _) = broadcast::channel(1024);
        let handshake = HandshakeLimits {
            timeout: Duration::from_millis(cfg.node.direct_timeout_ms),
            verified: Some(verified.clone()),
        };
        let inner = Arc::new(Inner {
            me: me_tx,
            store: store.clone(),
            contacts: contacts.clone(),
            history,
            sessions: std::sync::RwLock::new(Arc::new(SessionManager::new(keys))),
            updating: tokio::sync::Mutex::new(()),
            keys_changed: Notify::new(),
            locks: Default::default(),
            sends: Default::default(),
            events,
            node_events: events::Events::new(),
            cfg: cfg.node.clone(),
            handshake,
            local_addr,
            advertised: advertised.clone(),
            my_relays: my_relays.clone(),
            rendezvous: rendezvous.clone(),
            registrar: Mutex::new(None),
            data_dir: dir.clone(),
            pool: delivery::Pool::default(),
            paths: Mutex::new(Default::default()),
            wakers: Default::default(),
            inbound: AtomicUsize::new(0),
            sources: Mutex::new(Default::default()),
            resets: Mutex::new(Default::default()),
            restore: Mutex::new(Default::default()),
            reset_notes: Mutex::new(Default::default()),
            stop: rx.clone(),
            receive_errors: LogEvery::default(),
            record_errors: LogEvery::default(),
            strangers: Mutex::new(strangers::Strangers::new(
                cfg.node.max_strangers,
                cfg.node.stranger_ttl_secs,
            )),
            refusals: Arc::new(Refusals::default()),
            quic: quic::QuicState::new(quic_ep.clone()),
            files: Arc::new(files::Files::open(&dir, cfg.files.clone())?),
            punch: punch::PunchState::default(),
        });
        let node = Node { inner };
        // One durable point: a contact's direct messages are recorded before the integrated
        // relay acknowledges them.
        relay.set_owner_inbox(Arc::new(owner_inbox::Inbox::new(&node.inner)));
        tracing::info!(
            id = %identity.key(),
            listen = %local_addr,
            quic = ?quic_addr,
            "node listening for Noise connections"
        );
        // A restored store's group sender keys may be behind what this node already sent:
        // replace them before anything can send (docs/PROTOCOL.md, "Sender keys after a
        // restore").
        // Refuse to start rather than send on a chain that may repeat message keys.
        if let Err(e) = groups::rekey_after_restore(&node.inner).await {
            return Err(StoreError::TaskFailed {
                task: "replacing group sender keys after a restore",
                detail: e.to_string(),
            }
            .into());
        }
        let mut tasks = Vec::new();
        // The listener: relay-protocol connections go to the integrated relay.
        let mut lcfg = cfg.listen.listener();
        lcfg.handshake.verified = Some(verified);
        // The addresses contacts advertise count as known to the handshake rate.
        let (addrs_tx, addrs_rx) = contact_addrs::channel(&contacts);
        lcfg.contact_addrs = Some(addrs_rx);
        tasks.push(tokio::spawn(contact_addrs::run(
            contacts.clone(),
            addrs_tx,
            rx.clone(),
        )));
        let idle = cfg.listen.idle_timeout();
        let stranger_idle = cfg.listen.stranger_idle_timeout();
        {
            let node = node.clone();
            let relay = relay.clone();
            let id = me_rx.clone();
            let stop = rx.clone();
            let refusals = node.inner.refusals.clone();
            let book = contacts.clone();
            let me = identity.key();
            // Contacts (and the node itself) are known; anyone else is a stranger. Runs on
            // every authenticated connection: one point read of the contact book.
            let classify = move |conn: &TcpConnection| {
                let key = conn.peer.key();
                if key == me {
                    return Ok(Class::Known);
                }
                match book.get(&key) {
                    Ok(Some(c)) if c.trust == Trust::Rejected => Err("rejected_contact"),
                    Ok(Some(_)) => Ok(Class::Known),
                    Ok(None) => Ok(Class::Stranger),
                    Err(e) => {
                        tracing::error!(error = %e, "contact store failed; closing connection");
                        Err("contact_store_failed")
                    }
                }
            };
            tasks.push(tokio::spawn(async move {
                listener::serve_classified(
                    listener::Sources {
                        tcp: listener,
                        quic: quic_ep,
                    },
                    id,
                    lcfg,
                    stop.clone(),
                    refusals,
                    classify,
                    move |conn, addr, class| {
                        let idle = match class {
                            Class::Known => idle,
                            Class::Stranger => stranger_idle,
                        };
                        serve_peer(
                            node.clone(),
                            relay.clone(),
                            conn,
                            addr,
                            class,
                            idle,
                            stop.clone(),
                        )
                    },
                )
                .await;
            }));
        }
        // Collect from the integrated relay and every home relay.
        tasks.push(tokio::spawn(inbox::collect(
            node.clone(),
            inbox::Source::Integrated,
        )));
        for hint in &my_relays {
            tasks.push(tokio::spawn(inbox::collect(
                node.clone(),
                inbox::Source::Home(hint.clone()),
            )));
        }
        tasks.push(tokio::spawn(delivery::engine(node.clone())));
        tasks.push(tokio::spawn(delivery::confirmations(node.clone())));
        if let Some(settings) = rendezvous {
            if settings.register {
                let h = crate::rendezvous::client::spawn_registrar_live(
                    settings,
                    me_rx.clone(),
                    advertised.clone(),
                    my_relays.clone(),
                    rx.clone(),
                );
                if let Ok(mut r) = node.inner.registrar.lock() {
                    *r = Some(h.status.clone());
                }
                tasks.push(h.join);
            }
        }
        tasks.push(tokio::spawn(forget_expired_noise_keys(node.clone())));
        tasks.push(tokio::spawn(files::run(node.clone())));
        tasks.push(tokio::spawn(groups::prune_task(node.clone())));
        tasks.push(tokio::spawn(control::serve(
            node.clone(),
            dir.join(CONTROL_SOCKET),
            rx.clone(),
        )));
        Ok(NodeHandle {
            node,
            local_addr,
            quic_addr,
            advertised,
            identity,
            contacts,
            shutdown: tx,
            tasks,
            relay,
            store,
        })
    }

    /// Our contact id.
    pub fn id(&self) -> IdentityKey {
        self.inner.me().key()
    }

    /// Our current identity (with its private keys).
    pub fn identity(&self) -> Arc<UserIdentity> {
        self.inner.me()
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// Our contact card: identity, advertised endpoints and home relays.
    pub fn card(&self) -> ContactCard {
        ContactCard {
            identity: self.inner.me().identity().clone(),
            endpoints: self.inner.advertised.clone(),
            relays: self.inner.my_relays.clone(),
        }
    }

    /// Adds (or refreshes) a contact from its card, TOFU rules applied.
    pub fn add_contact(&self, card_text: &str) -> Result<ContactIdentity, NodeError> {
        let card = ContactCard::from_text(card_text)?;
        if card.identity.key() == self.id() {
            return Err(NodeError::SelfContact);
        }
        let obs = self.inner.contacts.observe_with_routes(
            &card.identity,
            &card.endpoints,
            &card.relays,
            Timestamp::now(),
        )?;
        self.inner.node_events.observed(&obs, events::Seen::Card);
        match obs {
            Observation::Conflict(c) => Err(NodeError::Conflict(c.identity.key())),
            other => {
                if let Ok(mut s) = self.inner.strangers.lock() {
                    s.remove(&card.identity.key());
                }
                self.inner.wakers.wake(&card.identity.key());
                Ok(other.contact().clone())
            }
        }
    }

    /// All contacts.
    pub fn contacts(&self) -> Result<Vec<ContactIdentity>, NodeError> {
        Ok(self.inner.contacts.list()?)
    }

    /// Strangers: peers met (connected, or wrote through a relay) that are not contacts, most
    /// recently seen first. See [`strangers`].
    pub fn strangers(&self) -> Vec<ContactIdentity> {
        self.inner
            .strangers
            .lock()
            .map(|mut s| s.list(Timestamp::now()))
            .unwrap_or_default()
    }

    /// Finds a contact by id (64 hex) or unique username, or a stranger by id. A name only
    /// ever matches contacts, so nobody can shadow a contact by taking its username.
    pub fn resolve(&self, contact: &str) -> Result<ContactIdentity, NodeError> {
        if let Ok(key) = contact.parse::<IdentityKey>() {
            return self
                .inner
                .peer(&key)?
                .ok_or_else(|| NodeError::UnknownContact(contact.into()));
        }
        let mut found = self
            .inner
            .contacts
            .list()?
            .into_iter()
            .filter(|c| c.identity.username().as_str() == contact);
        match (found.next(), found.next()) {
            (Some(c), None) => Ok(c),
            (Some(_), Some(_)) => Err(NodeError::AmbiguousContact(contact.into())),
            _ => Err(NodeError::UnknownContact(contact.into())),
        }
    }

    /// Sets the trust of a contact. A stranger named by its id becomes a contact with that
    /// trust (the identity it presented stays pinned).
    pub fn set_trust(&self, contact: &str, trust: Trust) -> Result<ContactIdentity, NodeError> {
        let c = self.resolve(contact)?;
        let key = c.identity.key();
        if self.inner.contacts.get(&key)?.is_none() {
            let mut c = c;
            c.trust = trust;
            self.inner.contacts.insert(&c)?;
            if let Ok(mut s) = self.inner.strangers.lock() {
                s.remove(&key);
            }
            self.inner.wakers.wake(&key);
            self.inner.node_events.trust(&c);
            return Ok(c);
        }
        let c = self.inner.contacts.set_trust(&key, trust)?;
        self.inner.node_events.trust(&c);
        // Messages kept queued while it was rejected may leave now.
        self.inner.wakers.wake(&key);
        Ok(c)
    }

    /// Encrypts `text` for `contact`, stores it in the outbox with its history entry, and
    /// returns once that is durable. Delivery proceeds in the background.
    pub async fn send(&self, contact: &str, text: &str) -> Result<HistoryEntry, NodeError> {
        if text.is_empty() || text.len() > MAX_TEXT {
            return Err(NodeError::BadText(text.len()));
        }
        if *self.inner.stop.borrow() {
            return Err(NodeError::ShuttingDown);
        }
        let c = self.resolve(contact)?;
        if c.trust == Trust::Rejected {
            return Err(NodeError::RejectedContact(c.identity.key()));
        }
        let entry = delivery::enqueue(&self.inner, &c, text).await?;
        let _ = self.inner.events.send(entry.clone());
        self.inner.wakers.wake(&c.identity.key());
        Ok(entry)
    }

    /// Waits until the message `id` (16 hex, as [`history::format_id`] writes it) is
    /// delivered.
    pub async fn wait_delivered_text(
        &self,
        id: &str,
        timeout: Duration,
    ) -> Result<HistoryEntry, NodeError> {
        let id = history::parse_id(id).ok_or_else(|| NodeError::BadMessageId(id.into()))?;
        self.wait_delivered(id, timeout).await
    }

    /// Waits until the message we sent with `id` is delivered.
    pub async fn wait_delivered(
        &self,
        id: u64,
        timeout: Duration,
    ) -> Result<HistoryEntry, NodeError> {
        let mut rx = self.inner.events.subscribe();
        let find = || -> Result<Option<HistoryEntry>, NodeError> {
            Ok(self.inner.history.find_by_id(Direction::Out, id)?)
        };
        let Some(e) = find()? else {
            return Err(NodeError::UnknownMessage(id));
        };
        if e.status == Status::Delivered {
            return Ok(e);
        }
        let wait = async {
            loop {
                match rx.recv().await {
                    Ok(e)
                        if e.id == id
                            && e.direction == Direction::Out
                            && e.status == Status::Delivered =>
                    {
                        return Ok(e)
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => {
                        if let Some(e) = find()? {
                            if e.status == Status::Delivered {
                                return Ok(e);
                            }
                        }
                    }
                    Err(broadcast::error::RecvError::Closed) => {
                        return Err(NodeError::ShuttingDown)
                    }
                }
            }
        };
        match tokio::time::timeout(timeout, wait).await {
            Ok(r) => r,
            Err(_) => match find()? {
                Some(e) if e.status == Status::Delivered => Ok(e),
                _ => Err(NodeError::Timeout(id)),
            },
        }
    }

    /// History entries after `after_seq`, oldest first.
    pub fn messages(
        &self,
        after_seq: Option<u64>,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, NodeError> {
        Ok(self.inner.history.list(after_seq, limit)?)
    }

    /// Every new history entry and every status change.
    pub fn subscribe(&self) -> broadcast::Receiver<HistoryEntry> {
        self.inner.events.subscribe()
    }

    /// Contact events: added, updated, trust changed, TOFU conflicts.
    pub fn node_events(&self) -> &events::Events {
        &self.inner.node_events
    }

    /// Reachability of every contact the node has tried to reach directly.
    pub fn presence(&self) -> Vec<events::PresenceView> {
        let Ok(paths) = self.inner.paths.lock() else {
            return Vec::new();
        };
        let mut v: Vec<events::PresenceView> = paths
            .iter()
            .map(|(k, p)| events::PresenceView {
                id: k.to_string(),
                direct: p.direct_proven,
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// The node's state.
    pub fn status(&self) -> NodeStatus {
        let sources = self
            .inner
            .sources
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        let me = self.inner.me().key();
        let integrated_ep = inbox::integrated_addr(self.inner.local_addr).to_string();
        let (registered, known, error) =
            match self.inner.registrar.lock().ok().and_then(|r| r.clone()) {
                Some(rx) => {
                    let s = rx.borrow().clone();
                    (
                        s.registered.iter().map(|(e, _)| e.to_string()).collect(),
                        s.known.iter().map(|e| e.to_string()).collect(),
                        s.last_error.clone(),
                    )
                }
                None => (Vec::new(), Vec::new(), None),
            };
        NodeStatus {
            id: me.to_string(),
            username: self.inner.me().identity().username().to_string(),
            listen: self.inner.local_addr.to_string(),
            advertised: self
                .inner
                .advertised
                .iter()
                .map(|e| e.to_string())
                .collect(),
            integrated_relay: RelayState {
                connected: sources.get(&integrated_ep).copied().unwrap_or(false),
                endpoint: integrated_ep,
                id: me.to_string(),
            },
            relays: self
                .inner
                .my_relays
                .iter()
                .map(|h| RelayState {
                    endpoint: h.endpoint.to_string(),
                    id: IdentityKey(h.relay_key).to_string(),
                    connected: sources
                        .get(&h.endpoint.to_string())
                        .copied()
                        .unwrap_or(false),
                })
                .collect(),
            rendezvous_registered: registered,
            rendezvous_known: known,
            rendezvous_error: error,
            inbound_connections: self.inner.inbound.load(Ordering::Relaxed),
            outbound_connections: self.inner.pool.len(),
            // The store's record count (O(1)); a walk only for a store that keeps none.
            outbox: match self.inner.store.count(crate::store::Tree::Outbox) {
                Some(n) => usize::try_from(n).unwrap_or(usize::MAX),
                None => outbox::count(&*self.inner.store).unwrap_or(0),
            },
            quic_listen: self.inner.quic.local_addr().map(|a| a.to_string()),
            observed_addresses: self.inner.quic.observed(),
            nat_mapping: self.inner.quic.mapping(),
            paths: delivery::paths(&self.inner),
            punch: self.inner.punch.status(),
        }
    }
}

impl Inner {
    /// Our current identity.
    pub(crate) fn me(&self) -> Arc<UserIdentity> {
        self.me.borrow().clone()
    }

    /// The session manager for our current Noise keys.
    pub(crate) fn sessions(&self) -> Arc<SessionManager> {
        match self.sessions.read() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_sessions(&self, keys: LocalKeys) {
        let m = Arc::new(SessionManager::new(keys));
        match self.sessions.write() {
            Ok(mut s) => *s = m,
            Err(poisoned) => *poisoned.into_inner() = m,
        }
    }
}

/// Our ratchet keys: the current Noise key first, then the rotated-out ones still in grace.
fn local_keys(user: &UserIdentity, previous: &PreviousNoiseKeys) -> LocalKeys {
    let mut keys = LocalKeys::new(user.signing_key().clone(), user.noise_secret().to_bytes());
    for k in previous.keys().iter().rev() {
        keys = keys.with_previous_noise_key(*k.secret);
    }
    keys
}

/// Most contacts announced to at once after an identity update.
const ANNOUNCE_PARALLEL: usize = 8;

impl Node {
    /// Publishes a new version of our identity while the node runs: writes the key file (and,
    /// for a rotation, keeps the old Noise key for `node.noise_key_grace_secs`), switches the
    /// listener, ratchet and registrar to it (the registrar re-registers at once), drops
    /// outgoing connections made with the old version, and connects to every contact with a
    /// known endpoint so that its handshake carries the new version to them now.
    pub async fn update_identity(&self, change: Change) -> Result<Arc<UserIdentity>, NodeError> {
        let inner = &self.inner;
        let _one = inner.updating.lock().await;
        let dir = inner.data_dir.clone();
        let grace = inner.cfg.noise_key_grace();
        let (user, prev) = tokio::task::spawn_blocking(move || {
            let user =
                crate::identity::rotation::apply_update(&dir, &change, grace, Timestamp::now())?;
            let prev = PreviousNoiseKeys::load(&dir)?;
            Ok::<_, NodeError>((user, prev))
        })
        .await
        .map_err(|_| NodeError::ShuttingDown)??;
        if user.key() != inner.me().key() {
            // Someone replaced the key file with another identity: refuse to switch.
            return Err(NodeError::Identity(
                crate::identity::keys::KeyFileError::AlreadyExists(UserIdentity::path(
                    &inner.data_dir,
                )),
            ));
        }
        let user = Arc::new(user);
        {
            let _all = inner.locks.all().await;
            inner.set_sessions(local_keys(&user, &prev));
            inner.me.send_replace(user.clone());
        }
        inner.keys_changed.notify_one();
        tracing::info!(
            version = user.identity().version(),
            user = %user.identity().username(),
            "identity updated"
        );
        inner.pool.close_all().await;
        inner.wakers.wake_all();
        let node = self.clone();
        inner.pool.track(async move { announce(&node).await });
        Ok(user)
    }
}

/// Connects to every contact that has a direct endpoint (bounded in parallel and in time), so
/// its node sees our new identity version in the handshake.
async fn announce(node: &Node) {
    let inner = &node.inner;
    let book = inner.contacts.clone();
    let Ok(Ok(contacts)) = tokio::task::spawn_blocking(move || book.list()).await else {
        return;
    };
    let slots = Arc::new(tokio::sync::Semaphore::new(ANNOUNCE_PARALLEL));
    let mut set = tokio::task::JoinSet::new();
    for c in contacts {
        if c.trust == Trust::Rejected || c.endpoints.is_empty() {
            continue;
        }
        let node = node.clone();
        let slots = slots.clone();
        set.spawn(async move {
            let Ok(_slot) = slots.acquire_owned().await else {
                return;
            };
            let key = c.identity.key();
            let limit = Duration::from_millis(node.inner.cfg.direct_timeout_ms);
            for ep in &c.endpoints {
                let r = tokio::time::timeout(limit, node.inner.pool.get(&node, ep, key)).await;
                if let Ok(Ok(_)) = r {
                    tracing::debug!(peer = %key.short(), endpoint = %ep, "announced our new identity version");
                    return;
                }
            }
            tracing::debug!(peer = %key.short(), "contact not reachable; it learns our update on the next connection");
        });
    }
    while set.join_next().await.is_some() {}
}

/// Forgets rotated-out Noise keys when their grace period ends (rewrites
/// `previous-noise-keys` and rebuilds the ratchet keys without them).
async fn forget_expired_noise_keys(node: Node) {
    let inner = &node.inner;
    let mut stop = inner.stop.clone();
    loop {
        let dir = inner.data_dir.clone();
        let next = tokio::task::spawn_blocking(move || {
            PreviousNoiseKeys::load(&dir)
                .ok()
                .and_then(|p| p.next_expiry())
        })
        .await
        .ok()
        .flatten();
        let wait = match next {
            Some(t) => Duration::from_millis(t.0.saturating_sub(Timestamp::now().0)),
            None => Duration::from_secs(3600),
        }
        .min(Duration::from_secs(3600));
        tokio::select! {
            _ = stopped(&mut stop) => return,
            _ = inner.keys_changed.notified() => continue,
            _ = tokio::time::sleep(wait) => {}
        }
        let _one = inner.updating.lock().await;
        let dir = inner.data_dir.clone();
        let pruned = tokio::task::spawn_blocking(move || {
            let mut prev = PreviousNoiseKeys::load(&dir)?;
            let n = prev.prune(Timestamp::now());
            if n > 0 {
                prev.save(&dir)?;
            }
            Ok::<_, crate::identity::keys::KeyFileError>((n, prev))
        })
        .await;
        match pruned {
            Ok(Ok((0, _))) => {}
            Ok(Ok((n, prev))) => {
                let _all = inner.locks.all().await;
                inner.set_sessions(local_keys(&inner.me(), &prev));
                tracing::info!(
                    forgotten = n,
                    "rotated-out noise key forgotten (grace period over)"
                );
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read previous noise keys");
                tokio::time::sleep(Duration::from_secs(60)).await;
            }
            Err(_) => return,
        }
    }
}

/// One inbound authenticated connection: TOFU (in the contact book for contacts, in the
/// strangers table for anyone else; a conflicting or outdated identity is refused), then hand
/// relay-protocol connections to the integrated relay with this class's idle timeout.
async fn serve_peer(
    node: Node,
    relay: Relay,
    mut conn: TcpConnection,
    addr: SocketAddr,
    class: Class,
    idle: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let inner = &node.inner;
    let refused = |reason: &'static str| {
        inner.refusals.note(reason);
    };
    let peer = conn.peer.clone();
    let short = peer.key().short();
    if peer.key() != inner.me().key() {
        let obs = match class {
            Class::Known => {
                let book = inner.contacts.clone();
                let p = peer.clone();
                match tokio::task::spawn_blocking(move || book.observe(&p, Timestamp::now())).await
                {
                    Ok(Ok(obs)) => obs,
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "contact store failed; closing connection");
                        return;
                    }
                    Err(_) => return,
                }
            }
            Class::Stranger => match inner.strangers.lock() {
                Ok(mut s) => s.observe(&peer, &[], &[], Timestamp::now()),
                Err(_) => return,
            },
        };
        if class == Class::Known {
            inner.node_events.observed(&obs, events::Seen::Connection);
        }
        if obs.contact().trust == Trust::Rejected {
            tracing::debug!(%addr, peer = %short, "rejected contact; closing");
            refused("rejected_contact");
            return;
        }
        match obs {
            Observation::New(_) => {
                tracing::debug!(%addr, peer = %short, user = %peer.username(), "stranger connected")
            }
            Observation::Conflict(_) => {
                tracing::debug!(%addr, peer = %short, "peer presented a conflicting identity of the same version; closing");
                refused("conflicting_identity");
                return;
            }
            // An older version than the one pinned: its noise key may have been
            // rotated out (and stolen), so it does not authenticate this identity.
            Observation::Stale(_) => {
                tracing::debug!(%addr, peer = %short, "peer presented an outdated identity version; closing");
                refused("outdated_identity");
                return;
            }
            _ => {}
        }
        if class == Class::Known {
            // A contact we have queued messages for just showed up.
            inner.wakers.wake(&peer.key());
        }
    }
    let first = tokio::select! {
        r = tokio::time::timeout(idle, conn.recv()) => r,
        _ = stopped(&mut stop) => return,
    };
    match first {
        Ok(Ok(env)) if env.is_relay() => {
            inner.inbound.fetch_add(1, Ordering::Relaxed);
            let _count = InboundGuard(inner.clone());
            relay.serve_connection_with(conn, Some(env), idle).await;
        }
        Ok(Ok(Envelope::FileOpen(open))) => {
            inner.inbound.fetch_add(1, Ordering::Relaxed);
            let _count = InboundGuard(inner.clone());
            files::serve_stream(node.clone(), conn, open).await;
        }
        Ok(Ok(Envelope::Unknown { kind })) => {
            tracing::debug!(%addr, peer = %short, kind, "unknown first message kind; closing");
            refused("unexpected_message");
        }
        Ok(Ok(env)) => {
            tracing::debug!(%addr, peer = %short, kind = env.kind(), "unexpected first message; closing");
            refused("unexpected_message");
        }
        Ok(Err(e)) if e.is_closed() => {}
        Ok(Err(e)) => {
            tracing::debug!(%addr, peer = %short, error = %e, "protocol error; closing");
            refused("protocol_error");
        }
        Err(_) => {
            tracing::debug!(%addr, peer = %short, "idle before the first message; closing");
            refused("idle_before_request");
        }
    }
}

/// Counts an inbound relay-protocol connection while it lives (also when its task is aborted
/// by admission control).
struct InboundGuard(Arc<Inner>);

impl Drop for InboundGuard {
    fn drop(&mut self) {
        self.0.inbound.fetch_sub(1, Ordering::Relaxed);
    }
}
