//! The NATS JetStream backend (`[relay] store = "nats"`): a relay's mailboxes in a replicated
//! JetStream, shared by several `sremp relay` processes that publish one relay identity.
//!
//! Mapping (byte-exact in docs/PROTOCOL.md, "Relay cluster on NATS JetStream"; `P` is
//! `[relay] nats_prefix`, hex is lowercase):
//! - one stream per recipient mailbox, `P_m_<recipient hex>`, subjects
//!   `P.m.<recipient hex>.>`; a message is the subject
//!   `P.m.<recipient hex>.<sender hex>.<message_id as 16 hex digits>` with the MessagePack
//!   record `[stored_at, sender_signature, blob]` of the embedded store as payload and
//!   `Nats-Msg-Id: <sender hex>:<message_id>`. Limits retention, `max_msgs` =
//!   `quota_messages`, `max_bytes` = `quota_bytes` + 512 per message, discard new,
//!   `max_msgs_per_subject` = 1 with discard-new-per-subject (so the (sender, message id) is
//!   stored at most once for as long as it is stored, also beyond the duplicate window),
//!   `max_age` = `retention_secs`, `num_replicas` = `replicas`, file storage;
//! - kept confirmations in one stream `P_c`, subject
//!   `P.c.<sender hex>.<delivered_to hex>.<message_id 16 hex>`, payload the MessagePack
//!   `DeliveryConfirmation`, one per subject, `max_age` = `retention_secs`;
//! - cross-process routing on core NATS subjects `P.n.<identity hex>`: each process subscribes
//!   to the identities connected to it; a push is published there, a confirmation is a request
//!   answered `1` by the process that handed it to its client (no responder: kept).
//!
//! A store is answered only after JetStream's publish acknowledgement (the write is on a
//! quorum of the replicas). A confirmation purges the message's subject: JetStream serialises
//! purges through the stream leader, so of two concurrent confirmations exactly one sees it
//! deleted. Retrieval lists the mailbox's subjects (server-side subject filter), sorts them
//! (hex of big-endian keys sorts like the embedded store's keys) and reads each message from
//! the stream leader.

use super::{BoxFut, Cluster, LocalSink, Page, RelayBackend};
use crate::identity::IdentityKey;
use crate::relay::policy::RelayConfig;
use crate::relay::stats::Stats;
use crate::relay::store::{
    NewMessage, Record, RecordRef, RelayStoreError, StoreCallback, StoreOutcome,
};
use crate::time::Timestamp;
use crate::wire::msgpack;
use crate::wire::relay::{DeliveryConfirmation, RelayErrorCode, RetrieveCursor, StoredMessage};
use crate::wire::Envelope;
use async_nats::jetstream::{self, context::Publish, stream};
use futures::{StreamExt, TryStreamExt};
use std::collections::HashMap;
use std::collections::HashSet;
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;
use tokio::sync::Semaphore;

/// Bytes allowed per message on top of its blob in a mailbox's `max_bytes` (subject, headers,
/// record framing and signature).
pub const PER_MESSAGE_ALLOWANCE: u64 = 512;
/// Stores waiting for their JetStream acknowledgement at once (per process).
const MAX_INFLIGHT: u32 = 4096;
/// JetStream's duplicate window (shorter if the retention is shorter).
const DUPLICATE_WINDOW: Duration = Duration::from_secs(120);
/// How long a confirmation waits for another process to take it before keeping it.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(2);
/// Start-up attempts (one a second) while JetStream is not ready.
const START_ATTEMPTS: u32 = 30;
/// Subjects of one mailbox read per retrieval at most (the quota bounds it anyway).
const MAX_LISTED: usize = 100_000;

/// Why the NATS backend could not start. Operational failures after start are answered on the
/// wire (`StorageFailure`) and logged.
#[derive(Debug, thiserror::Error)]
pub enum NatsError {
    /// No NATS server could be reached.
    #[error("cannot connect to NATS at {urls}: {detail}")]
    Connect {
        /// The configured URLs.
        urls: String,
        /// Why.
        detail: String,
    },
    /// The credentials file could not be read.
    #[error("reading NATS credentials {path}: {source}")]
    Credentials {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A JetStream request failed (stream creation, JetStream not enabled, not enough servers
    /// for the replication factor).
    #[error("JetStream: {0}")]
    JetStream(String),
    /// The configuration does not fit the servers.
    #[error("{0}")]
    Config(String),
}

fn io_err(what: &'static str, e: impl std::fmt::Display) -> RelayStoreError {
    RelayStoreError::Replicated {
        what,
        detail: e.to_string(),
    }
}


/// The NATS JetStream backend. See the module docs.
pub struct NatsBackend(Arc<Core>);

/// The shared state of a [`NatsBackend`] (its tasks hold it).
pub struct Core {
    client: async_nats::Client,
    js: jetstream::Context,
    cfg: RelayConfig,
    prefix: String,
    /// Mailbox streams this process has created or updated to the current config.
    ensured: Mutex<HashSet<[u8; 32]>>,
    inflight: Arc<Semaphore>,
    closed: AtomicBool,
    stats: Arc<Stats>,
    cluster: Arc<NatsCluster>,
}

impl std::fmt::Debug for NatsBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBackend")
            .field("prefix", &self.0.prefix)
            .finish_non_exhaustive()
    }
}

fn hex32(k: &[u8; 32]) -> String {
    hex::encode(k)
}

/// Connects to the servers of `cfg` (URLs, credentials, TLS).
pub async fn connect(cfg: &RelayConfig) -> Result<async_nats::Client, NatsError> {
    let mut opts = async_nats::ConnectOptions::new()
        .name("sremp-relay")
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(5)));
    if let Some(path) = &cfg.credentials_file {
        opts = opts
            .credentials_file(path)
            .await
            .map_err(|source| NatsError::Credentials {
                path: path.clone(),
                source,
            })?;
    }
    if let Some(ca) = &cfg.nats_tls_ca_file {
        opts = opts.add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&cfg.nats_tls_cert_file, &cfg.nats_tls_key_file) {
        opts = opts.add_client_certificate(cert.clone(), key.clone());
    }
    if cfg.nats_tls_required {
        opts = opts.require_tls(true);
    }
    let urls: Vec<async_nats::ServerAddr> = cfg
        .nats_urls
        .iter()
        .map(|u| u.parse())
        .collect::<Result<_, _>>()
        .map_err(|e| NatsError::Config(format!("relay.nats_urls: {e}")))?;
    opts.connect(urls.as_slice())
        .await
        .map_err(|e| NatsError::Connect {
            urls: cfg.nats_urls.join(","),
            detail: e.to_string(),
        })
}

impl NatsBackend {
    /// Connects, checks that the servers can carry the configured message size, and creates
    /// (or updates) the confirmations stream.
    pub async fn open(cfg: RelayConfig, stats: Arc<Stats>) -> Result<Arc<Self>, NatsError> {
        let client = connect(&cfg).await?;
        let max_payload = client.server_info().max_payload as u64;
        let needed = u64::from(cfg.max_message_size) + PER_MESSAGE_ALLOWANCE;
        if max_payload > 0 && needed > max_payload {
            return Err(NatsError::Config(format!(
                "relay.max_message_size {} needs NATS max_payload >= {needed}, the server allows {max_payload}",
                cfg.max_message_size
            )));
        }
        let js = jetstream::new(client.clone());
        let prefix = cfg.nats_prefix.clone();
        // JetStream may still be electing its leaders right after the servers start: retry
        // for a bounded time before giving up.
        let mut attempt = 0;
        loop {
            match js.create_or_update_stream(confirmations_stream(&cfg)).await {
                Ok(_) => break,
                Err(e) if attempt < START_ATTEMPTS => {
                    attempt += 1;
                    tracing::info!(error = %e, attempt, "JetStream not ready; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => {
                    return Err(NatsError::JetStream(format!(
                        "creating stream {prefix}_c: {e}"
                    )))
                }
            }
        }
        let cluster = Arc::new(NatsCluster {
            client: client.clone(),
            prefix: prefix.clone(),
            subs: Mutex::new(HashMap::new()),
            sink: OnceLock::new(),
        });
        Ok(Arc::new(NatsBackend(Arc::new(Core {
            client,
            js,
            cfg,
            prefix,
            ensured: Mutex::new(HashSet::new()),
            inflight: Arc::new(Semaphore::new(MAX_INFLIGHT as usize)),
            closed: AtomicBool::new(false),
            stats,
            cluster,
        }))))
    }
}

impl Core {
    fn mailbox_name(&self, r: &[u8; 32]) -> String {
        format!("{}_m_{}", self.prefix, hex32(r))
    }

    fn message_subject(&self, r: &[u8; 32], s: &[u8; 32], id: u64) -> String {
        format!("{}.m.{}.{}.{:016x}", self.prefix, hex32(r), hex32(s), id)
    }

    fn confirmation_subject(&self, s: &[u8; 32], d: &[u8; 32], id: u64) -> String {
        format!("{}.c.{}.{}.{:016x}", self.prefix, hex32(s), hex32(d), id)
    }

    /// Creates or updates `r`'s mailbox stream once per process.
    async fn ensure_mailbox(&self, r: &[u8; 32]) -> Result<(), RelayStoreError> {
        if self.ensured.lock().map(|s| s.contains(r)).unwrap_or(false) {
            return Ok(());
        }
        self.js
            .create_or_update_stream(mailbox_stream(&self.cfg, &self.mailbox_name(r), r))
            .await
            .map_err(|e| io_err("creating a mailbox stream", e))?;
        if let Ok(mut s) = self.ensured.lock() {
            s.insert(*r);
        }
        Ok(())
    }

    fn forget_mailbox(&self, r: &[u8; 32]) {
        if let Ok(mut s) = self.ensured.lock() {
            s.remove(r);
        }
    }

    /// The stream of a mailbox, `None` if it does not exist (nothing was ever stored).
    async fn mailbox(&self, r: &[u8; 32]) -> Result<Option<stream::Stream>, RelayStoreError> {
        match self.js.get_stream(self.mailbox_name(r)).await {
            Ok(s) => Ok(Some(s)),
            Err(e)
                if matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(j)
                    if j.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND) =>
            {
                Ok(None)
            }
            Err(e) => Err(io_err("reading a mailbox", e)),
        }
    }

    /// Stored-at time of the message on `subject` (a duplicate's original).
    async fn stored_at(
        &self,
        r: &[u8; 32],
        subject: &str,
    ) -> Result<Option<Timestamp>, RelayStoreError> {
        let Some(stream) = self.mailbox(r).await? else {
            return Ok(None);
        };
        match stream.get_last_raw_message_by_subject(subject).await {
            Ok(m) => {
                let rec: Record = msgpack::decode(&m.payload)
                    .map_err(|e| io_err("decoding a stored record", e))?;
                Ok(Some(rec.stored_at))
            }
            Err(e) if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {
                Ok(None)
            }
            Err(e) => Err(io_err("reading a stored message", e)),
        }
    }

    async fn store_one(&self, m: &NewMessage) -> Result<StoreOutcome, RelayStoreError> {
        let r = m.recipient.0;
        let subject = self.message_subject(&r, &m.sender.0, m.message_id);
        let payload = msgpack::encode(&RecordRef {
            stored_at: m.now,
            sender_signature: m.sender_signature,
            blob: &m.blob,
        });
        let msg_id = format!("{}:{}", hex32(&m.sender.0), m.message_id);
        for attempt in 0..2 {
            self.ensure_mailbox(&r).await?;
            let publish = Publish::build()
                .payload(payload.clone().into())
                .message_id(&msg_id);
            let ack = match self.js.send_publish(subject.clone(), publish).await {
                Ok(f) => f.await,
                Err(e) => return Err(io_err("publishing", e)),
            };
            match ack {
                Ok(a) if a.duplicate => {
                    let t = self.stored_at(&r, &subject).await?.unwrap_or(m.now);
                    return Ok(StoreOutcome::Duplicate(t));
                }
                Ok(_) => return Ok(StoreOutcome::Stored(m.now)),
                Err(e) => {
                    let text = e.to_string();
                    if e.kind() == jetstream::context::PublishErrorKind::StreamNotFound
                        && attempt == 0
                    {
                        // The mailbox was removed behind our back: create it again.
                        self.forget_mailbox(&r);
                        continue;
                    }
                    if text.contains("maximum messages per subject exceeded") {
                        let t = self.stored_at(&r, &subject).await?.unwrap_or(m.now);
                        return Ok(StoreOutcome::Duplicate(t));
                    }
                    if text.contains("maximum messages exceeded")
                        || text.contains("maximum bytes exceeded")
                    {
                        return Ok(StoreOutcome::Refused(RelayErrorCode::QuotaFull));
                    }
                    if text.contains("message size exceeds maximum") {
                        return Ok(StoreOutcome::Refused(RelayErrorCode::TooLarge));
                    }
                    return Err(io_err("publishing", e));
                }
            }
        }
        Err(io_err("publishing", "mailbox stream missing"))
    }

    async fn list_subjects(
        &self,
        stream: &stream::Stream,
        filter: &str,
    ) -> Result<Vec<String>, RelayStoreError> {
        let mut info = stream
            .info_with_subjects(filter)
            .await
            .map_err(|e| io_err("listing subjects", e))?;
        let mut out = Vec::new();
        while let Some((subject, _)) = info
            .try_next()
            .await
            .map_err(|e| io_err("listing subjects", e))?
        {
            out.push(subject);
            if out.len() >= MAX_LISTED {
                break;
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    async fn retrieve_page(
        &self,
        recipient: IdentityKey,
        since: Option<Timestamp>,
        after: Option<RetrieveCursor>,
        limit: usize,
    ) -> Result<Page, RelayStoreError> {
        let limit = limit.max(1);
        let r = recipient.0;
        let Some(stream) = self.mailbox(&r).await? else {
            return Ok((Vec::new(), false));
        };
        let filter = format!("{}.m.{}.>", self.prefix, hex32(&r));
        let subjects = self.list_subjects(&stream, &filter).await?;
        let start = after
            .map(|c| self.message_subject(&r, &c.sender, c.message_id))
            .map(|c| subjects.partition_point(|s| s.as_str() <= c.as_str()))
            .unwrap_or(0);
        let mut out = Vec::new();
        // Bounded like the embedded store: at most 64 pages of skipped (too old) messages.
        let budget = limit.saturating_mul(65);
        for (n, subject) in subjects.iter().skip(start).enumerate() {
            if n >= budget {
                return Ok((out, true));
            }
            let Some((sender, message_id)) = parse_message_subject(subject) else {
                continue;
            };
            let m = match stream.get_last_raw_message_by_subject(subject).await {
                Ok(m) => m,
                // Confirmed or expired since the listing.
                Err(e)
                    if e.kind() == jetstream::stream::LastRawMessageErrorKind::NoMessageFound =>
                {
                    continue
                }
                Err(e) => return Err(io_err("reading a message", e)),
            };
            let rec: Record =
                msgpack::decode(&m.payload).map_err(|e| io_err("decoding a record", e))?;
            if since.is_some_and(|s| rec.stored_at < s) {
                continue;
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            out.push(StoredMessage {
                message_id,
                sender,
                timestamp: rec.stored_at,
                encrypted_blob: rec.blob,
                sender_signature: rec.sender_signature,
            });
        }
        Ok((out, false))
    }

    async fn purge(&self, stream: &str, subject: String) -> Result<bool, RelayStoreError> {
        let s = match self.js.get_stream_no_info(stream).await {
            Ok(s) => s,
            Err(e) => return Err(io_err("opening a stream", e)),
        };
        match s.purge().filter(subject).await {
            Ok(p) => Ok(p.purged > 0),
            Err(e) if e.to_string().contains("not found") => Ok(false),
            Err(e) => Err(io_err("deleting", e)),
        }
    }
}


/// `P.m.<recipient>.<sender>.<id>` → (sender, id).
fn parse_message_subject(s: &str) -> Option<([u8; 32], u64)> {
    let mut parts = s.rsplit('.');
    let id = u64::from_str_radix(parts.next()?, 16).ok()?;
    let mut sender = [0u8; 32];
    hex::decode_to_slice(parts.next()?, &mut sender).ok()?;
    Some((sender, id))
}

fn duplicate_window(cfg: &RelayConfig) -> Duration {
    DUPLICATE_WINDOW.min(cfg.retention())
}

/// The stream configuration of one mailbox.
pub fn mailbox_stream(cfg: &RelayConfig, name: &str, recipient: &[u8; 32]) -> stream::Config {
    let max_bytes = cfg
        .quota_bytes
        .saturating_add(u64::from(cfg.quota_messages).saturating_mul(PER_MESSAGE_ALLOWANCE));
    stream::Config {
        name: name.to_string(),
        description: Some("sremp relay mailbox".into()),
        subjects: vec![format!("{}.m.{}.>", cfg.nats_prefix, hex32(recipient))],
        retention: stream::RetentionPolicy::Limits,
        max_messages: i64::from(cfg.quota_messages),
        max_bytes: i64::try_from(max_bytes).unwrap_or(i64::MAX),
        max_messages_per_subject: 1,
        discard: stream::DiscardPolicy::New,
        discard_new_per_subject: true,
        max_age: cfg.retention(),
        max_message_size: i32::try_from(u64::from(cfg.max_message_size) + PER_MESSAGE_ALLOWANCE)
            .unwrap_or(i32::MAX),
        storage: stream::StorageType::File,
        num_replicas: usize::from(cfg.replicas),
        duplicate_window: duplicate_window(cfg),
        ..Default::default()
    }
}

/// The stream configuration of the kept confirmations.
pub fn confirmations_stream(cfg: &RelayConfig) -> stream::Config {
    stream::Config {
        name: format!("{}_c", cfg.nats_prefix),
        description: Some("sremp relay: confirmations kept for absent senders".into()),
        subjects: vec![format!("{}.c.>", cfg.nats_prefix)],
        retention: stream::RetentionPolicy::Limits,
        max_messages_per_subject: 1,
        max_age: cfg.retention(),
        storage: stream::StorageType::File,
        num_replicas: usize::from(cfg.replicas),
        duplicate_window: duplicate_window(cfg),
        ..Default::default()
    }
}

impl std::ops::Deref for NatsBackend {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.0
    }
}

impl RelayBackend for NatsBackend {
    fn kind(&self) -> &'static str {
        "nats"
    }

    fn store_then(
        &self,
        m: NewMessage,
        then: StoreCallback,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            let core = self.0.clone();
            if core.closed.load(Relaxed) {
                then(Err(RelayStoreError::Closed), m);
                return;
            }
            let Ok(permit) = core.inflight.clone().acquire_owned().await else {
                then(Err(RelayStoreError::Closed), m);
                return;
            };
            tokio::spawn(async move {
                let _permit = permit;
                let r = core.store_one(&m).await;
                match &r {
                    Ok(StoreOutcome::Stored(_)) => {
                        core.stats.stored.fetch_add(1, Relaxed);
                    }
                    Ok(StoreOutcome::Duplicate(_)) => {
                        core.stats.duplicates.fetch_add(1, Relaxed);
                    }
                    _ => {}
                }
                then(r, m);
            });
        })
    }

    fn confirm(
        &self,
        delivered_to: IdentityKey,
        sender: IdentityKey,
        message_id: u64,
    ) -> BoxFut<'_, bool> {
        Box::pin(async move {
            if self.closed.load(Relaxed) {
                return Err(RelayStoreError::Closed);
            }
            let subject = self.message_subject(&delivered_to.0, &sender.0, message_id);
            let deleted = self
                .purge(&self.mailbox_name(&delivered_to.0), subject)
                .await?;
            if deleted {
                self.stats.delivered.fetch_add(1, Relaxed);
            }
            Ok(deleted)
        })
    }

    fn confirm_keeping(
        &self,
        delivered_to: IdentityKey,
        sender: IdentityKey,
        message_id: u64,
        keep: DeliveryConfirmation,
    ) -> BoxFut<'_, bool> {
        // JetStream has no transaction across streams: keep the receipt (acknowledged by the
        // cluster) before the purge, and only for a message that is stored. If a concurrent
        // confirmation purges it first, the receipt stays kept all the same: it is true (the
        // recipient has the message) and the sender's acknowledgement removes it.
        Box::pin(async move {
            if self.closed.load(Relaxed) {
                return Err(RelayStoreError::Closed);
            }
            let subject = self.message_subject(&delivered_to.0, &sender.0, message_id);
            if self.stored_at(&delivered_to.0, &subject).await?.is_none() {
                return Ok(false);
            }
            self.keep_confirmation(keep).await?;
            let deleted = self
                .purge(&self.mailbox_name(&delivered_to.0), subject)
                .await?;
            if deleted {
                self.stats.delivered.fetch_add(1, Relaxed);
            }
            Ok(deleted)
        })
    }

    fn keep_confirmation(&self, c: DeliveryConfirmation) -> BoxFut<'_, ()> {
        Box::pin(async move {
            let subject = self.confirmation_subject(&c.sender, &c.delivered_to, c.message_id);
            let ack = self
                .js
                .publish(subject, msgpack::encode(&c).into())
                .await
                .map_err(|e| io_err("keeping a confirmation", e))?;
            ack.await.map_err(|e| io_err("keeping a confirmation", e))?;
            Ok(())
        })
    }

    fn ack_confirmation(
        &self,
        sender: IdentityKey,
        delivered_to: [u8; 32],
        message_id: u64,
    ) -> BoxFut<'_, ()> {
        Box::pin(async move {
            let subject = self.confirmation_subject(&sender.0, &delivered_to, message_id);
            self.purge(&format!("{}_c", self.prefix), subject).await?;
            Ok(())
        })
    }

    fn expire(&self, _cutoff: Timestamp) -> BoxFut<'_, u64> {
        // JetStream removes messages older than the stream's max_age by itself.
        Box::pin(async { Ok(0) })
    }

    fn flush(&self) -> BoxFut<'_, ()> {
        Box::pin(async move { self.client.flush().await.map_err(|e| io_err("flushing", e)) })
    }

    fn retrieve(
        &self,
        recipient: IdentityKey,
        since: Option<Timestamp>,
        after: Option<RetrieveCursor>,
        limit: usize,
    ) -> BoxFut<'_, Page> {
        Box::pin(self.retrieve_page(recipient, since, after, limit))
    }

    fn kept_confirmations(
        &self,
        sender: IdentityKey,
        limit: usize,
    ) -> BoxFut<'_, Vec<DeliveryConfirmation>> {
        Box::pin(async move {
            let stream = self
                .js
                .get_stream(format!("{}_c", self.prefix))
                .await
                .map_err(|e| io_err("opening the confirmations stream", e))?;
            let filter = format!("{}.c.{}.>", self.prefix, hex32(&sender.0));
            let subjects = self.list_subjects(&stream, &filter).await?;
            let mut out = Vec::new();
            for subject in subjects.iter().take(limit) {
                match stream.get_last_raw_message_by_subject(subject).await {
                    Ok(m) => match msgpack::decode::<DeliveryConfirmation>(&m.payload) {
                        Ok(c) => out.push(c),
                        Err(e) => {
                            tracing::warn!(error = %e, "undecodable kept confirmation skipped")
                        }
                    },
                    Err(e)
                        if e.kind()
                            == jetstream::stream::LastRawMessageErrorKind::NoMessageFound => {}
                    Err(e) => return Err(io_err("reading a kept confirmation", e)),
                }
            }
            Ok(out)
        })
    }

    fn close(&self) -> BoxFut<'_, ()> {
        Box::pin(async move {
            self.closed.store(true, Relaxed);
            // Let stores waiting for their acknowledgement finish (bounded).
            let _ = tokio::time::timeout(
                Duration::from_secs(10),
                self.inflight.acquire_many(MAX_INFLIGHT),
            )
            .await;
            let _ = tokio::time::timeout(Duration::from_secs(5), self.client.flush()).await;
            Ok(())
        })
    }

    fn cluster(&self) -> Option<Arc<dyn Cluster>> {
        Some(self.cluster.clone())
    }
}

/// Cross-process routing over core NATS (see the module docs).
pub struct NatsCluster {
    client: async_nats::Client,
    prefix: String,
    /// Identities connected to this process: connection count and the subscription task.
    subs: Mutex<HashMap<IdentityKey, (usize, tokio::task::JoinHandle<()>)>>,
    sink: OnceLock<LocalSink>,
}

impl NatsCluster {
    fn subject(&self, who: &IdentityKey) -> String {
        format!("{}.n.{}", self.prefix, hex32(&who.0))
    }

    fn increment(&self, who: &IdentityKey) -> bool {
        match self.subs.lock() {
            Ok(mut m) => match m.get_mut(who) {
                Some((n, _)) => {
                    *n += 1;
                    true
                }
                None => false,
            },
            Err(_) => true,
        }
    }
}

impl Cluster for NatsCluster {
    fn online(&self, who: IdentityKey) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(async move {
            if self.increment(&who) {
                return;
            }
            let mut sub = match self.client.subscribe(self.subject(&who)).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot subscribe for cluster pushes");
                    return;
                }
            };
            // The subscription is known to our server before the client hears REGISTERED.
            if let Err(e) = self.client.flush().await {
                tracing::debug!(error = %e, "flush after subscribe failed");
            }
            if self.increment(&who) {
                // Another connection of `who` subscribed meanwhile; ours goes.
                return;
            }
            let client = self.client.clone();
            let sink = self.sink.get().cloned();
            let task = tokio::spawn(async move {
                while let Some(msg) = sub.next().await {
                    let delivered = match (Envelope::decode(&msg.payload), &sink) {
                        (Ok(env), Some(sink)) => sink(&who, env),
                        (Err(e), _) => {
                            tracing::debug!(error = %e, "undecodable cluster notice ignored");
                            false
                        }
                        _ => false,
                    };
                    if let Some(reply) = msg.reply {
                        let answer: &'static [u8] = if delivered { b"1" } else { b"0" };
                        let _ = client.publish(reply, answer.into()).await;
                    }
                }
            });
            if let Ok(mut m) = self.subs.lock() {
                m.insert(who, (1, task));
            }
        })
    }

    fn offline(&self, who: IdentityKey) {
        if let Ok(mut m) = self.subs.lock() {
            let gone = match m.get_mut(&who) {
                Some((n, _)) => {
                    *n = n.saturating_sub(1);
                    *n == 0
                }
                None => false,
            };
            if gone {
                if let Some((_, task)) = m.remove(&who) {
                    task.abort();
                }
            }
        }
    }

    fn push(&self, to: IdentityKey, m: StoredMessage) {
        let client = self.client.clone();
        let subject = self.subject(&to);
        let payload = Envelope::StoredMessage(m).encode();
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                // Too large for the server's max_payload, or disconnected: retrieved later.
                let _ = client.publish(subject, payload.into()).await;
            });
        }
    }

    fn forward(
        &self,
        to: IdentityKey,
        env: Envelope,
    ) -> Pin<Box<dyn Future<Output = bool> + Send + '_>> {
        Box::pin(async move {
            let req = self.client.request(self.subject(&to), env.encode().into());
            match tokio::time::timeout(FORWARD_TIMEOUT, req).await {
                Ok(Ok(reply)) => reply.payload.as_ref() == b"1",
                _ => false,
            }
        })
    }

    fn set_sink(&self, sink: LocalSink) {
        let _ = self.sink.set(sink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_parse_back_and_sort_like_keys() {
        let cfg = RelayConfig::default();
        let a = format!(
            "{}.m.{}.{}.{:016x}",
            cfg.nats_prefix,
            hex32(&[1; 32]),
            hex32(&[2; 32]),
            9u64
        );
        assert_eq!(parse_message_subject(&a), Some(([2; 32], 9)));
        let b = format!(
            "{}.m.{}.{}.{:016x}",
            cfg.nats_prefix,
            hex32(&[1; 32]),
            hex32(&[2; 32]),
            0x100u64
        );
        assert!(a < b, "hex of big-endian ids sorts numerically");
        assert_eq!(parse_message_subject("x.m.zz.1"), None);
    }

    #[test]
    fn mailbox_config_enforces_quota_dedup_and_retention() {
        let cfg = RelayConfig {
            quota_messages: 10,
            quota_bytes: 1000,
            retention_secs: 60,
            ..RelayConfig::default()
        };
        let s = mailbox_stream(&cfg, "n", &[7; 32]);
        assert_eq!(s.max_messages, 10);
        assert_eq!(s.max_bytes, 1000 + 10 * 512);
        assert_eq!(s.max_messages_per_subject, 1);
        assert!(s.discard_new_per_subject);
        assert_eq!(s.discard, stream::DiscardPolicy::New);
        assert_eq!(s.max_age, Duration::from_secs(60));
        assert_eq!(s.duplicate_window, Duration::from_secs(60));
        assert_eq!(s.num_replicas, 3);
    }
}
