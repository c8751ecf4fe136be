//! Where a relay keeps its records: the relay-level storage trait [`RelayBackend`], its two
//! implementations, and [`Records`], the handle the service uses.
//!
//! The key-value [`crate::store::Store`] trait is too narrow for a replicated engine (it has no
//! notion of a durable acknowledgement per message, of server-side limits or of other relay
//! processes), so the relay's storage is split at the level of relay operations instead:
//! store (answered once durable), retrieve a page, confirm (delete exactly once), keep / hand
//! over / forget confirmations for absent senders, expire, flush, close.
//!
//! - [`sled`]: the embedded store ([`super::store::RelayStore`] over a local
//!   [`crate::store::SledStore`], group commit). The default, and the only backend of the
//!   integrated relay of `sremp run`. Unchanged in behaviour.
//! - [`nats`]: NATS JetStream (`[relay] store = "nats"`): a replicated stream per recipient
//!   mailbox, shared by several `sremp relay` processes. See docs/PROTOCOL.md ("Relay cluster
//!   on NATS JetStream") for the mapping.
//!
//! A backend shared by several processes also offers a [`Cluster`]: how a push or a
//! confirmation reaches a client connected to another process of the same relay.
//!
//! [`Records`] adds the latency histograms of [`super::metrics::RelayMetrics`] around every
//! operation, so both backends are measured the same way.

pub mod nats;
pub mod sled;

use super::metrics::RelayMetrics;
use super::store::{NewMessage, RelayStoreError, StoreCallback, StoreOutcome};
use crate::identity::IdentityKey;
use crate::time::Timestamp;
use crate::wire::relay::{DeliveryConfirmation, RetrieveCursor, StoredMessage};
use crate::wire::Envelope;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::oneshot;

/// Which backend `sremp relay` uses (`[relay] store`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// The embedded store in the data directory.
    #[default]
    Sled,
    /// NATS JetStream.
    Nats,
}

impl StoreKind {
    /// The config value.
    pub fn name(self) -> &'static str {
        match self {
            StoreKind::Sled => "sled",
            StoreKind::Nats => "nats",
        }
    }
}

/// Checks the backend part of `[relay]`.
pub fn validate(cfg: &super::RelayConfig) -> Result<(), super::policy::PolicyError> {
    let bad = |key, why: &str| {
        Err(super::policy::PolicyError {
            key,
            why: why.into(),
        })
    };
    if cfg.replicas == 0 || cfg.replicas > 5 {
        return bad("relay.replicas", "must be 1 ..= 5");
    }
    if cfg.nats_prefix.is_empty()
        || cfg.nats_prefix.len() > 32
        || !cfg
            .nats_prefix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return bad(
            "relay.nats_prefix",
            "must be 1 to 32 letters, digits, '-' or '_'",
        );
    }
    if cfg.nats_tls_cert_file.is_some() != cfg.nats_tls_key_file.is_some() {
        return bad(
            "relay.nats_tls_cert_file / nats_tls_key_file",
            "give both or neither",
        );
    }
    if cfg.store == StoreKind::Nats {
        if cfg.nats_urls.is_empty() {
            return bad(
                "relay.nats_urls",
                "store = \"nats\" needs at least one server URL",
            );
        }
        for u in &cfg.nats_urls {
            if u.parse::<async_nats::ServerAddr>().is_err() {
                return bad("relay.nats_urls", &format!("not a NATS URL: {u}"));
            }
        }
    }
    Ok(())
}

/// A boxed future of a backend operation.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = Result<T, RelayStoreError>> + Send + 'a>>;

/// A page of messages and whether more remain.
pub type Page = (Vec<StoredMessage>, bool);

/// The relay's storage, at the level of relay operations. Invariants every implementation
/// keeps (the service relies on them):
/// - a store's callback gets [`StoreOutcome::Stored`] / [`StoreOutcome::Duplicate`] only once
///   the message is durable (flushed, or acknowledged by the replicated engine);
/// - `(recipient, sender, message_id)` is stored at most once while it is stored (a retry is
///   answered with the first `stored_at`);
/// - `confirm` deletes only the confirmer's own message and returns true for exactly one of
///   several concurrent confirmations of it;
/// - quotas and sizes are checked against every message stored for the recipient, by any
///   process sharing the backend.
pub trait RelayBackend: Send + Sync + 'static {
    /// Short name for logs and the config summary ("sled", "nats").
    fn kind(&self) -> &'static str;
    /// Queues a message for storage; `then` runs once the store is decided (see
    /// [`StoreCallback`]). Returns once it is queued.
    fn store_then(
        &self,
        m: NewMessage,
        then: StoreCallback,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
    /// Deletes `delivered_to`'s message `(sender, message_id)`. True if this call deleted it.
    fn confirm(
        &self,
        delivered_to: IdentityKey,
        sender: IdentityKey,
        message_id: u64,
    ) -> BoxFut<'_, bool>;
    /// [`RelayBackend::confirm`] for a delivered message whose receipt `keep` must reach its
    /// sender at least once: if the message is stored, `keep` is kept durably no later than the
    /// message is deleted (so no crash between the two can lose the receipt), and stays kept
    /// until the sender acknowledges it ([`RelayBackend::ack_confirmation`]). Nothing is kept
    /// for a message that is not stored. True if this call deleted the message.
    fn confirm_keeping(
        &self,
        delivered_to: IdentityKey,
        sender: IdentityKey,
        message_id: u64,
        keep: DeliveryConfirmation,
    ) -> BoxFut<'_, bool>;
    /// Keeps a confirmation for its absent sender.
    fn keep_confirmation(&self, c: DeliveryConfirmation) -> BoxFut<'_, ()>;
    /// Forgets a kept confirmation the sender acknowledged.
    fn ack_confirmation(
        &self,
        sender: IdentityKey,
        delivered_to: [u8; 32],
        message_id: u64,
    ) -> BoxFut<'_, ()>;
    /// Removes every message stored before `cutoff`; returns how many (a backend whose engine
    /// expires by itself returns 0).
    fn expire(&self, cutoff: Timestamp) -> BoxFut<'_, u64>;
    /// Makes everything written so far durable.
    fn flush(&self) -> BoxFut<'_, ()>;
    /// Up to `limit` messages for `recipient` in key order (sender, then message id) after
    /// `after`, stored at or after `since`, and whether more remain.
    fn retrieve(
        &self,
        recipient: IdentityKey,
        since: Option<Timestamp>,
        after: Option<RetrieveCursor>,
        limit: usize,
    ) -> BoxFut<'_, Page>;
    /// Up to `limit` confirmations kept for `sender`.
    fn kept_confirmations(
        &self,
        sender: IdentityKey,
        limit: usize,
    ) -> BoxFut<'_, Vec<DeliveryConfirmation>>;
    /// Finishes what is in flight and stops; later calls fail with
    /// [`RelayStoreError::Closed`]. Idempotent.
    fn close(&self) -> BoxFut<'_, ()>;
    /// How pushes and confirmations reach clients of other processes sharing this backend
    /// (`None`: this process is the only one).
    fn cluster(&self) -> Option<Arc<dyn Cluster>> {
        None
    }
}

/// Delivers an envelope to a client of this process: `(identity, envelope)` → delivered.
/// A `StoredMessage` goes to the identity's newest collecting connection, a confirmation or
/// session reset to its newest connection (as [`super::Relay`] routes its own).
pub type LocalSink = Arc<dyn Fn(&IdentityKey, Envelope) -> bool + Send + Sync>;

/// Routing between the processes of one relay that share a backend.
pub trait Cluster: Send + Sync + 'static {
    /// Tells the cluster that `who` has a connection here (counted; call [`Cluster::offline`]
    /// once per call). Returns once other processes can reach it.
    fn online(&self, who: IdentityKey) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;
    /// One connection of `who` here closed.
    fn offline(&self, who: IdentityKey);
    /// Pushes a stored message to `to` wherever it collects (fire and forget: a push that
    /// reaches nobody is retrieved later).
    fn push(&self, to: IdentityKey, m: StoredMessage);
    /// Hands a confirmation or session reset to `to` if it is connected to another process;
    /// true if one took it.
    fn forward(
        &self,
        to: IdentityKey,
        env: Envelope,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + '_>>;
    /// Where envelopes for this process's clients go. Set once, at relay start.
    fn set_sink(&self, sink: LocalSink);
}

/// The relay's records: a backend plus latency measurement. Cheap to clone. Method names and
/// signatures are those of [`super::store::RelayStore`], so the service does not care which
/// backend runs.
#[derive(Clone)]
pub struct Records {
    backend: Arc<dyn RelayBackend>,
    metrics: Arc<RelayMetrics>,
}

impl std::fmt::Debug for Records {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Records")
            .field("backend", &self.backend.kind())
            .finish_non_exhaustive()
    }
}

impl Records {
    /// Wraps a backend.
    pub fn new(backend: Arc<dyn RelayBackend>, metrics: Arc<RelayMetrics>) -> Self {
        Records { backend, metrics }
    }

    /// The backend's kind ("sled", "nats").
    pub fn kind(&self) -> &'static str {
        self.backend.kind()
    }

    /// The latency histograms.
    pub fn metrics(&self) -> &Arc<RelayMetrics> {
        &self.metrics
    }

    /// Cross-process routing, if the backend is shared.
    pub fn cluster(&self) -> Option<Arc<dyn Cluster>> {
        self.backend.cluster()
    }

    /// See [`RelayBackend::store_then`]; the time until `then` runs is the store latency.
    pub async fn store_then(&self, m: NewMessage, then: StoreCallback) {
        let started = Instant::now();
        let metrics = self.metrics.clone();
        let timed: StoreCallback = Box::new(move |r, m| {
            metrics.observe_store(started.elapsed());
            then(r, m)
        });
        self.backend.store_then(m, timed).await
    }

    /// Stores a message; returns once it is durable (or refused, or a duplicate).
    pub async fn store(&self, m: NewMessage) -> Result<StoreOutcome, RelayStoreError> {
        let (tx, rx) = oneshot::channel();
        self.store_then(
            m,
            Box::new(move |r, _| {
                let _ = tx.send(r);
            }),
        )
        .await;
        rx.await.map_err(|_| RelayStoreError::Closed)?
    }

    /// See [`RelayBackend::confirm`].
    pub async fn confirm(
        &self,
        delivered_to: IdentityKey,
        sender: IdentityKey,
        message_id: u64,
    ) -> Result<bool, RelayStoreError> {
        let started = Instant::now();
        let r = self.backend.confirm(delivered_to, sender, message_id).await;
        self.metrics.observe_confirm(started.elapsed());
        r
    }

    /// See [`RelayBackend::confirm_keeping`].
    pub async fn confirm_keeping(
        &self,
        delivered_to: IdentityKey,
        sender: IdentityKey,
        message_id: u64,
        keep: DeliveryConfirmation,
    ) -> Result<bool, RelayStoreError> {
        let started = Instant::now();
        let r = self
            .backend
            .confirm_keeping(delivered_to, sender, message_id, keep)
            .await;
        self.metrics.observe_confirm(started.elapsed());
        r
    }

    /// See [`RelayBackend::keep_confirmation`].
    pub async fn keep_confirmation(&self, c: DeliveryConfirmation) -> Result<(), RelayStoreError> {
        self.backend.keep_confirmation(c).await
    }

    /// See [`RelayBackend::ack_confirmation`].
    pub async fn ack_confirmation(
        &self,
        sender: &IdentityKey,
        delivered_to: &[u8; 32],
        message_id: u64,
    ) -> Result<(), RelayStoreError> {
        self.backend
            .ack_confirmation(*sender, *delivered_to, message_id)
            .await
    }

    /// See [`RelayBackend::expire`].
    pub async fn expire(&self, cutoff: Timestamp) -> Result<u64, RelayStoreError> {
        self.backend.expire(cutoff).await
    }

    /// See [`RelayBackend::flush`].
    pub async fn flush(&self) -> Result<(), RelayStoreError> {
        self.backend.flush().await
    }

    /// See [`RelayBackend::retrieve`].
    pub async fn retrieve(
        &self,
        recipient: IdentityKey,
        since: Option<Timestamp>,
        after: Option<RetrieveCursor>,
        limit: usize,
    ) -> Result<Page, RelayStoreError> {
        let started = Instant::now();
        let r = self.backend.retrieve(recipient, since, after, limit).await;
        self.metrics.observe_retrieve(started.elapsed());
        r
    }

    /// See [`RelayBackend::kept_confirmations`].
    pub async fn kept_confirmations(
        &self,
        sender: IdentityKey,
        limit: usize,
    ) -> Result<Vec<DeliveryConfirmation>, RelayStoreError> {
        self.backend.kept_confirmations(sender, limit).await
    }

    /// See [`RelayBackend::close`].
    pub async fn close(&self) -> Result<(), RelayStoreError> {
        self.backend.close().await
    }
}
