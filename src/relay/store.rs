//! Relay records over the [`Store`] trait, and group commit.
//!
//! Layout (keys are raw bytes inside each tree):
//! - `RelayMessages`: `recipient[32] || sender[32] || u64be(message_id)` → msgpack
//!   `[stored_at, bin(64) sender_signature, bin blob]`. The key is the de-duplication key, and
//!   because it starts with the recipient, a confirmation by X can only ever delete X's own
//!   messages.
//! - `RelayIndex`: `'e' || u64be(stored_at) || recipient || sender || u64be(message_id)` →
//!   `u32be(blob length)`: the expiry index, oldest first; also what per-recipient quota usage is
//!   rebuilt from at start-up.
//! - `RelayConfirmations`: `sender || delivered_to || u64be(message_id)` → msgpack
//!   `DeliveryConfirmation` kept for an absent sender.
//!
//! Writes go through one committer thread that owns every decision that depends on stored state
//! (de-duplication, quota): it takes all requests waiting in its queue, applies them as one
//! batch, runs one flush for the group if any request needs durability, then answers all of
//! them. A `STORE_MESSAGE` is answered only after the flush that covers it returned. Reads
//! (retrieval) go straight to the store on a blocking thread.

use super::policy::{Quotas, RelayConfig};
use super::stats::Stats;
use crate::identity::IdentityKey;
use crate::store::{Batch, Store, StoreError, Tree};
use crate::time::Timestamp;
use crate::wire::msgpack;
use crate::wire::relay::{DeliveryConfirmation, RelayErrorCode, RetrieveCursor, StoredMessage};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use tokio::sync::{mpsc, oneshot};

/// Requests taken into one group commit at most.
const MAX_GROUP: usize = 4096;
/// Expiry index entries removed per batch.
const EXPIRE_PAGE: usize = 1000;
/// Requests queued for the committer before senders wait.
const QUEUE: usize = 8192;

/// Why a relay store operation failed. Always local, never the peer's fault.
#[derive(Debug, thiserror::Error)]
pub enum RelayStoreError {
    /// The disk or database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The committer has stopped (shutdown).
    #[error("relay store is closed")]
    Closed,
    /// The replicated backend ([`super::backend::nats`]) failed: no quorum, a timeout, no
    /// connection. A store that failed this way may still have been written (the retry is then
    /// a duplicate).
    #[error("replicated store: {what}: {detail}")]
    Replicated {
        /// The operation.
        what: &'static str,
        /// What the server or client said.
        detail: String,
    },
}

/// A stored message's record (MessagePack): the layout both relay backends keep, the embedded
/// store as a tree value and the NATS backend as a JetStream message payload.
#[derive(Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) stored_at: Timestamp,
    #[serde(with = "crate::wire::bytes::fixed")]
    pub(crate) sender_signature: [u8; 64],
    #[serde(with = "serde_bytes")]
    pub(crate) blob: Vec<u8>,
}

/// [`Record`] borrowing its blob, for encoding without a copy (the same bytes).
#[derive(Serialize)]
pub(crate) struct RecordRef<'a> {
    pub(crate) stored_at: Timestamp,
    #[serde(with = "crate::wire::bytes::fixed")]
    pub(crate) sender_signature: [u8; 64],
    #[serde(with = "serde_bytes")]
    pub(crate) blob: &'a [u8],
}

/// A message to store.
#[derive(Clone, Debug)]
pub struct NewMessage {
    /// Recipient.
    pub recipient: IdentityKey,
    /// Sender (the registered identity of the connection).
    pub sender: IdentityKey,
    /// Sender's id.
    pub message_id: u64,
    /// The sender's signature.
    pub sender_signature: [u8; 64],
    /// The blob.
    pub blob: Vec<u8>,
    /// Wall-clock time of storage.
    pub now: Timestamp,
}

/// What happened to a store request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreOutcome {
    /// Newly stored and flushed.
    Stored(Timestamp),
    /// Already stored (at that time); nothing written. Durable.
    Duplicate(Timestamp),
    /// Refused by policy.
    Refused(RelayErrorCode),
}

type Reply<T> = oneshot::Sender<Result<T, RelayStoreError>>;

/// Called on the commit thread when a store is decided: after the flush covering it for
/// [`StoreOutcome::Stored`] and [`StoreOutcome::Duplicate`], at once for a refusal. It gets
/// the message back (the blob untouched), so the caller can push it without a copy. It must
/// not block: it runs between group commits.
pub type StoreCallback =
    Box<dyn FnOnce(Result<StoreOutcome, RelayStoreError>, NewMessage) + Send + 'static>;

/// Who hears about a store.
enum StoreReply {
    Wait(Reply<StoreOutcome>),
    Then(StoreCallback),
}

impl StoreReply {
    fn answer(self, r: Result<StoreOutcome, RelayStoreError>, m: NewMessage) {
        match self {
            StoreReply::Wait(tx) => drop(tx.send(r)),
            StoreReply::Then(f) => f(r, m),
        }
    }
}

enum Op {
    Store(NewMessage, StoreReply),
    Confirm {
        delivered_to: IdentityKey,
        sender: IdentityKey,
        message_id: u64,
        /// Kept for the sender in the same batch that deletes the message.
        keep: Option<DeliveryConfirmation>,
        reply: Reply<bool>,
    },
    KeepConfirmation(DeliveryConfirmation),
    AckConfirmation([u8; 72]),
    Expire(Timestamp, Reply<u64>),
    Flush(Reply<()>),
    Close(Reply<()>),
}

fn message_key(recipient: &[u8; 32], sender: &[u8; 32], id: u64) -> [u8; 72] {
    let mut k = [0u8; 72];
    k[..32].copy_from_slice(recipient);
    k[32..64].copy_from_slice(sender);
    k[64..].copy_from_slice(&id.to_be_bytes());
    k
}

fn expiry_key(t: Timestamp, mkey: &[u8; 72]) -> [u8; 81] {
    let mut k = [0u8; 81];
    k[0] = b'e';
    k[1..9].copy_from_slice(&t.0.to_be_bytes());
    k[9..].copy_from_slice(mkey);
    k
}

fn confirmation_key(sender: &[u8; 32], delivered_to: &[u8; 32], id: u64) -> [u8; 72] {
    message_key(sender, delivered_to, id)
}

fn corrupt(tree: Tree, detail: &str) -> StoreError {
    StoreError::Corrupt {
        tree,
        detail: detail.into(),
    }
}

fn arr<const N: usize>(s: &[u8], tree: Tree) -> Result<[u8; N], StoreError> {
    <[u8; N]>::try_from(s).map_err(|_| corrupt(tree, "bad key length"))
}

/// Parses an expiry index entry into (stored_at, message key, blob length).
fn parse_expiry(k: &[u8], v: &[u8]) -> Result<(Timestamp, [u8; 72], u64), StoreError> {
    let t: [u8; 8] = arr(k.get(1..9).unwrap_or_default(), Tree::RelayIndex)?;
    let m: [u8; 72] = arr(k.get(9..).unwrap_or_default(), Tree::RelayIndex)?;
    let len: [u8; 4] = arr(v, Tree::RelayIndex)?;
    Ok((
        Timestamp(u64::from_be_bytes(t)),
        m,
        u64::from(u32::from_be_bytes(len)),
    ))
}

fn recipient_of(mkey: &[u8; 72]) -> IdentityKey {
    let mut r = [0u8; 32];
    r.copy_from_slice(&mkey[..32]);
    IdentityKey(r)
}

fn decode_record(v: &[u8]) -> Result<Record, StoreError> {
    msgpack::decode(v).map_err(|e| corrupt(Tree::RelayMessages, &e.to_string()))
}

/// The relay's durable state. Cheap to clone.
#[derive(Clone)]
pub struct RelayStore {
    store: Arc<dyn Store>,
    tx: mpsc::Sender<Op>,
    thread: Arc<Mutex<Option<std::thread::JoinHandle<()>>>>,
}

impl std::fmt::Debug for RelayStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayStore").finish_non_exhaustive()
    }
}

impl RelayStore {
    /// Rebuilds quota usage from the expiry index and starts the committer thread. Blocking
    /// (scans the index); call before serving.
    pub fn open(
        store: Arc<dyn Store>,
        cfg: RelayConfig,
        stats: Arc<Stats>,
    ) -> Result<Self, RelayStoreError> {
        let generation = store.generation();
        let quotas = usage(&*store)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let committer = Committer {
            store: store.clone(),
            cfg,
            quotas,
            generation,
            stats,
        };
        let thread = std::thread::Builder::new()
            .name("relay-commit".into())
            .spawn(move || committer.run(rx))
            .map_err(|e| StoreError::TaskFailed {
                task: "spawning the relay commit thread",
                detail: e.to_string(),
            })?;
        Ok(RelayStore {
            store,
            tx,
            thread: Arc::new(Mutex::new(Some(thread))),
        })
    }

    async fn call<T>(&self, op: impl FnOnce(Reply<T>) -> Op) -> Result<T, RelayStoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send(op(tx))
            .await
            .map_err(|_| RelayStoreError::Closed)?;
        rx.await.map_err(|_| RelayStoreError::Closed)?
    }

    /// Stores a message; returns once it is durable (or refused, or a duplicate).
    pub async fn store(&self, m: NewMessage) -> Result<StoreOutcome, RelayStoreError> {
        self.call(|r| Op::Store(m, StoreReply::Wait(r))).await
    }

    /// Queues a message for storage and returns once it is queued; `then` runs on the commit
    /// thread when the store is decided (see [`StoreCallback`]), or here with
    /// [`RelayStoreError::Closed`] if the committer has stopped. Saves a task and a wake-up
    /// per message over [`RelayStore::store`].
    pub async fn store_then(&self, m: NewMessage, then: StoreCallback) {
        if let Err(mpsc::error::SendError(Op::Store(m, reply))) =
            self.tx.send(Op::Store(m, StoreReply::Then(then))).await
        {
            reply.answer(Err(RelayStoreError::Closed), m);
        }
    }

    /// Deletes `delivered_to`'s message `(sender, message_id)`. True if there was one.
    pub async fn confirm(
        &self,
        delivered_to: IdentityKey,
        sender: IdentityKey,
        message_id: u64,
    ) -> Result<bool, RelayStoreError> {
        self.call(|reply| Op::Confirm {
            delivered_to,
            sender,
            message_id,
            keep: None,
            reply,
        })
        .await
    }

    /// [`RelayStore::confirm`] that also keeps `keep` for its sender, in the same atomic batch
    /// that deletes the message: the message is gone only if the receipt is kept. Nothing is
    /// kept when there was no such message.
    pub async fn confirm_keeping(
        &self,
        delivered_to: IdentityKey,
        sender: IdentityKey,
        message_id: u64,
        keep: DeliveryConfirmation,
    ) -> Result<bool, RelayStoreError> {
        self.call(|reply| Op::Confirm {
            delivered_to,
            sender,
            message_id,
            keep: Some(keep),
            reply,
        })
        .await
    }

    /// Keeps a confirmation for its absent sender (written with the next group).
    pub async fn keep_confirmation(&self, c: DeliveryConfirmation) -> Result<(), RelayStoreError> {
        self.tx
            .send(Op::KeepConfirmation(c))
            .await
            .map_err(|_| RelayStoreError::Closed)
    }

    /// Forgets a kept confirmation the sender has acknowledged.
    pub async fn ack_confirmation(
        &self,
        sender: &IdentityKey,
        delivered_to: &[u8; 32],
        message_id: u64,
    ) -> Result<(), RelayStoreError> {
        let k = confirmation_key(&sender.0, delivered_to, message_id);
        self.tx
            .send(Op::AckConfirmation(k))
            .await
            .map_err(|_| RelayStoreError::Closed)
    }

    /// Removes every message stored before `cutoff`; returns how many.
    pub async fn expire(&self, cutoff: Timestamp) -> Result<u64, RelayStoreError> {
        self.call(|r| Op::Expire(cutoff, r)).await
    }

    /// Makes everything written so far durable.
    pub async fn flush(&self) -> Result<(), RelayStoreError> {
        self.call(Op::Flush).await
    }

    /// Up to `limit` messages for `recipient` after `after`, stored at or after `since`, and
    /// whether more remain.
    pub async fn retrieve(
        &self,
        recipient: IdentityKey,
        since: Option<Timestamp>,
        after: Option<RetrieveCursor>,
        limit: usize,
    ) -> Result<(Vec<StoredMessage>, bool), RelayStoreError> {
        let store = self.store.clone();
        let task = tokio::task::spawn_blocking(move || {
            retrieve_blocking(&*store, recipient, since, after, limit)
        });
        task.await
            .map_err(|e| StoreError::TaskFailed {
                task: "retrieval",
                detail: e.to_string(),
            })?
            .map_err(RelayStoreError::from)
    }

    /// Up to `limit` confirmations kept for `sender`.
    pub async fn kept_confirmations(
        &self,
        sender: IdentityKey,
        limit: usize,
    ) -> Result<Vec<DeliveryConfirmation>, RelayStoreError> {
        let store = self.store.clone();
        let task = tokio::task::spawn_blocking(move || -> Result<_, StoreError> {
            let page = store.scan(Tree::RelayConfirmations, &sender.0, None, limit)?;
            page.iter()
                .map(|(_, v)| {
                    msgpack::decode(v)
                        .map_err(|e| corrupt(Tree::RelayConfirmations, &e.to_string()))
                })
                .collect()
        });
        task.await
            .map_err(|e| StoreError::TaskFailed {
                task: "confirmation scan",
                detail: e.to_string(),
            })?
            .map_err(RelayStoreError::from)
    }

    /// Finishes every request queued before it, flushes, and stops the committer. Later
    /// requests fail with [`RelayStoreError::Closed`]. Idempotent.
    pub async fn close(&self) -> Result<(), RelayStoreError> {
        let flushed = self.call(Op::Close).await;
        let handle = self.thread.lock().ok().and_then(|mut t| t.take());
        if let Some(h) = handle {
            let _ = tokio::task::spawn_blocking(move || h.join()).await;
        }
        match flushed {
            Ok(()) | Err(RelayStoreError::Closed) => Ok(()),
            Err(e) => Err(e),
        }
    }
}

fn retrieve_blocking(
    store: &dyn Store,
    recipient: IdentityKey,
    since: Option<Timestamp>,
    after: Option<RetrieveCursor>,
    limit: usize,
) -> Result<(Vec<StoredMessage>, bool), StoreError> {
    let limit = limit.max(1);
    let mut out = Vec::new();
    let mut cursor: Option<[u8; 72]> =
        after.map(|c| message_key(&recipient.0, &c.sender, c.message_id));
    // Bounded: at most 64 pages of skipped (too old) messages per request.
    for _ in 0..64 {
        let page = store.scan(
            Tree::RelayMessages,
            &recipient.0,
            cursor.as_ref().map(|c| &c[..]),
            limit + 1,
        )?;
        let full = page.len() > limit;
        for (k, v) in &page {
            let mkey: [u8; 72] = arr(k, Tree::RelayMessages)?;
            cursor = Some(mkey);
            let rec = decode_record(v)?;
            if since.is_some_and(|s| rec.stored_at < s) {
                continue;
            }
            if out.len() == limit {
                return Ok((out, true));
            }
            let mut sender = [0u8; 32];
            sender.copy_from_slice(&mkey[32..64]);
            let mut id = [0u8; 8];
            id.copy_from_slice(&mkey[64..]);
            out.push(StoredMessage {
                message_id: u64::from_be_bytes(id),
                sender,
                timestamp: rec.stored_at,
                encrypted_blob: rec.blob,
                sender_signature: rec.sender_signature,
            });
        }
        if !full {
            return Ok((out, false));
        }
    }
    Ok((out, true))
}

/// Quota usage of everything stored: one scan of the expiry index (which holds each blob's
/// length), page by page.
fn usage(store: &dyn Store) -> Result<Quotas, StoreError> {
    let mut quotas = Quotas::default();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.scan(Tree::RelayIndex, b"e", after.as_deref(), EXPIRE_PAGE)?;
        let Some((last, _)) = page.last() else { break };
        let last = last.clone();
        for (k, v) in &page {
            let (_, m, len) = parse_expiry(k, v)?;
            quotas.add(recipient_of(&m), len);
        }
        if page.len() < EXPIRE_PAGE {
            break;
        }
        after = Some(last);
    }
    Ok(quotas)
}

struct Committer {
    store: Arc<dyn Store>,
    cfg: RelayConfig,
    quotas: Quotas,
    /// The store generation `quotas` was counted at. A rollback (a failed write, e.g. a full
    /// disk, by us or by anyone sharing the store) throws away applied writes that were never
    /// durable, whose quota changes were already counted; so when it changes, usage is counted
    /// again from what the store holds.
    generation: u64,
    stats: Arc<Stats>,
}

enum Done {
    Store(StoreReply, StoreOutcome, NewMessage),
    Confirm(Reply<bool>, bool),
    Expire(Reply<u64>, u64),
    Flush(Reply<()>),
}

impl Done {
    fn fail(self, e: &StoreError) {
        fn err<T>(e: &StoreError) -> Result<T, RelayStoreError> {
            Err(RelayStoreError::Store(e.clone()))
        }
        match self {
            Done::Store(r, _, m) => r.answer(err(e), m),
            Done::Confirm(r, _) => drop(r.send(err(e))),
            Done::Expire(r, _) => drop(r.send(err(e))),
            Done::Flush(r) => drop(r.send(err(e))),
        }
    }
    fn succeed(self, stats: &Stats) {
        match self {
            Done::Store(r, o, m) => {
                match o {
                    StoreOutcome::Stored(_) => stats.stored.fetch_add(1, Relaxed),
                    StoreOutcome::Duplicate(_) => stats.duplicates.fetch_add(1, Relaxed),
                    StoreOutcome::Refused(_) => 0,
                };
                r.answer(Ok(o), m)
            }
            Done::Confirm(r, b) => {
                if b {
                    stats.delivered.fetch_add(1, Relaxed);
                }
                drop(r.send(Ok(b)))
            }
            Done::Expire(r, n) => drop(r.send(Ok(n))),
            Done::Flush(r) => drop(r.send(Ok(()))),
        }
    }
}

/// One group being assembled.
#[derive(Default)]
struct Group {
    batch: Batch,
    done: Vec<Done>,
    /// Messages written in this group (key → stored_at), for duplicates within the group.
    written: HashMap<[u8; 72], Timestamp>,
    /// Quota changes to undo if the batch fails: (recipient, len, added).
    undo: Vec<(IdentityKey, u64, bool)>,
    needs_flush: bool,
    closing: bool,
}

impl Committer {
    fn run(mut self, mut rx: mpsc::Receiver<Op>) {
        while let Some(first) = rx.blocking_recv() {
            self.recount_after_rollback();
            let mut group = Group::default();
            self.handle(first, &mut group);
            while group.done.len() < MAX_GROUP && !group.closing {
                match rx.try_recv() {
                    Ok(op) => self.handle(op, &mut group),
                    Err(_) => break,
                }
            }
            let closing = group.closing;
            self.commit(group);
            if closing {
                break;
            }
        }
        // Every sender is gone: make the last writes durable.
        if let Err(e) = self.store.flush() {
            tracing::error!(error = %e, "final relay flush failed");
        }
    }

    /// Counts quota usage again if the store rolled back since it was counted (between
    /// groups, so no change of the next group is pending). If the store cannot be read now
    /// (closed until space returns), the next group tries again; its writes fail meanwhile.
    fn recount_after_rollback(&mut self) {
        let generation = self.store.generation();
        if generation == self.generation {
            return;
        }
        match usage(&*self.store) {
            Ok(q) => {
                self.quotas = q;
                self.generation = generation;
                tracing::info!(
                    "relay store rolled back after a failed write; quota usage counted again"
                );
            }
            Err(e) => tracing::debug!(error = %e, "cannot count quota usage yet"),
        }
    }

    /// Applies the group's batch so that reads see it (before confirm/expire).
    fn apply_pending(&mut self, g: &mut Group) -> Result<(), StoreError> {
        if g.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut g.batch);
        self.store.apply(batch).inspect_err(|_| self.undo(g))?;
        g.undo.clear();
        Ok(())
    }

    fn undo(&mut self, g: &mut Group) {
        for (r, len, added) in g.undo.drain(..) {
            if added {
                self.quotas.remove(&r, len);
            } else {
                self.quotas.add(r, len);
            }
        }
    }

    fn handle(&mut self, op: Op, g: &mut Group) {
        match op {
            Op::Store(m, reply) => {
                let key = message_key(&m.recipient.0, &m.sender.0, m.message_id);
                if let Some(t) = g.written.get(&key) {
                    g.done
                        .push(Done::Store(reply, StoreOutcome::Duplicate(*t), m));
                    return;
                }
                match self.store.get(Tree::RelayMessages, &key) {
                    Err(e) => reply.answer(Err(e.into()), m),
                    Ok(Some(v)) => match decode_record(&v) {
                        Ok(rec) => {
                            // Wait for this group's flush too: an earlier flush may have failed.
                            g.needs_flush = true;
                            let dup = StoreOutcome::Duplicate(rec.stored_at);
                            g.done.push(Done::Store(reply, dup, m));
                        }
                        Err(e) => reply.answer(Err(e.into()), m),
                    },
                    Ok(None) => {
                        let len = m.blob.len() as u64;
                        if let Err(code) = self.quotas.check(&self.cfg, &m.recipient, len) {
                            reply.answer(Ok(StoreOutcome::Refused(code)), m);
                            return;
                        }
                        let rec = RecordRef {
                            stored_at: m.now,
                            sender_signature: m.sender_signature,
                            blob: &m.blob,
                        };
                        g.batch
                            .put(Tree::RelayMessages, key.to_vec(), msgpack::encode(&rec));
                        let len32 = u32::try_from(len).unwrap_or(u32::MAX);
                        g.batch.put(
                            Tree::RelayIndex,
                            expiry_key(m.now, &key).to_vec(),
                            len32.to_be_bytes().to_vec(),
                        );
                        self.quotas.add(m.recipient, len);
                        g.undo.push((m.recipient, len, true));
                        g.written.insert(key, m.now);
                        g.needs_flush = true;
                        g.done
                            .push(Done::Store(reply, StoreOutcome::Stored(m.now), m));
                    }
                }
            }
            Op::Confirm {
                delivered_to,
                sender,
                message_id,
                keep,
                reply,
            } => {
                let key = message_key(&delivered_to.0, &sender.0, message_id);
                let found = self
                    .apply_pending(g)
                    .and_then(|()| self.store.get(Tree::RelayMessages, &key));
                match found {
                    Err(e) => drop(reply.send(Err(e.into()))),
                    Ok(None) => g.done.push(Done::Confirm(reply, false)),
                    Ok(Some(v)) => match decode_record(&v) {
                        Err(e) => drop(reply.send(Err(e.into()))),
                        Ok(rec) => {
                            let len = rec.blob.len() as u64;
                            g.batch.delete(Tree::RelayMessages, key.to_vec());
                            g.batch
                                .delete(Tree::RelayIndex, expiry_key(rec.stored_at, &key).to_vec());
                            g.written.remove(&key);
                            self.quotas.remove(&delivered_to, len);
                            g.undo.push((delivered_to, len, false));
                            if let Some(c) = keep {
                                let k = confirmation_key(&c.sender, &c.delivered_to, c.message_id);
                                g.batch.put(
                                    Tree::RelayConfirmations,
                                    k.to_vec(),
                                    msgpack::encode(&c),
                                );
                            }
                            g.done.push(Done::Confirm(reply, true));
                        }
                    },
                }
            }
            Op::KeepConfirmation(c) => {
                let k = confirmation_key(&c.sender, &c.delivered_to, c.message_id);
                g.batch
                    .put(Tree::RelayConfirmations, k.to_vec(), msgpack::encode(&c));
            }
            Op::AckConfirmation(k) => g.batch.delete(Tree::RelayConfirmations, k.to_vec()),
            Op::Expire(cutoff, reply) => match self.expire(cutoff, g) {
                Ok(n) => g.done.push(Done::Expire(reply, n)),
                Err(e) => drop(reply.send(Err(e.into()))),
            },
            Op::Flush(reply) => {
                g.needs_flush = true;
                g.done.push(Done::Flush(reply));
            }
            Op::Close(reply) => {
                g.needs_flush = true;
                g.closing = true;
                g.done.push(Done::Flush(reply));
            }
        }
    }

    fn expire(&mut self, cutoff: Timestamp, g: &mut Group) -> Result<u64, StoreError> {
        self.apply_pending(g)?;
        let mut removed = 0u64;
        // Bounded by the number of stored messages; each pass removes a page.
        loop {
            let page = self.store.scan(Tree::RelayIndex, b"e", None, EXPIRE_PAGE)?;
            let mut batch = Batch::new();
            let mut changes = Vec::new();
            let mut reached_cutoff = page.len() < EXPIRE_PAGE;
            for (k, v) in &page {
                let (t, m, len) = parse_expiry(k, v)?;
                if t >= cutoff {
                    reached_cutoff = true;
                    break;
                }
                batch.delete(Tree::RelayIndex, k.clone());
                batch.delete(Tree::RelayMessages, m.to_vec());
                g.written.remove(&m);
                changes.push((recipient_of(&m), len));
            }
            if batch.is_empty() {
                break;
            }
            self.store.apply(batch)?;
            for (r, len) in changes {
                self.quotas.remove(&r, len);
                removed += 1;
            }
            if reached_cutoff {
                break;
            }
        }
        self.stats.expired.fetch_add(removed, Relaxed);
        self.expire_receipts(cutoff)?;
        Ok(removed)
    }

    /// Forgets kept receipts older than `cutoff` (by the recipient's signed `timestamp`) that
    /// their sender never acknowledged, as the NATS backend's `max_age` does: a sender that
    /// stays away longer than the retention loses receipts, not messages. One paged scan per
    /// expiry pass; an undecodable entry is left for the corruption check to report.
    fn expire_receipts(&mut self, cutoff: Timestamp) -> Result<(), StoreError> {
        let mut after: Option<Vec<u8>> = None;
        // Bounded: each page moves `after` forward through a finite tree.
        loop {
            let page = self.store.scan(
                Tree::RelayConfirmations,
                b"",
                after.as_deref(),
                EXPIRE_PAGE,
            )?;
            let mut batch = Batch::new();
            for (k, v) in &page {
                if let Ok(c) = msgpack::decode::<DeliveryConfirmation>(v) {
                    if c.timestamp < cutoff {
                        batch.delete(Tree::RelayConfirmations, k.clone());
                    }
                }
            }
            if !batch.is_empty() {
                self.store.apply(batch)?;
            }
            match page.last() {
                Some((k, _)) if page.len() == EXPIRE_PAGE => after = Some(k.clone()),
                _ => return Ok(()),
            }
        }
    }

    fn commit(&mut self, mut g: Group) {
        let result = self.apply_pending(&mut g).and_then(|()| {
            if g.needs_flush {
                self.stats.flushes.fetch_add(1, Relaxed);
                self.store.flush()
            } else {
                Ok(())
            }
        });
        match result {
            Ok(()) => {
                for d in g.done {
                    d.succeed(&self.stats);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, requests = g.done.len(), "relay group commit failed");
                for d in g.done {
                    d.fail(&e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;

    fn msg(r: u8, s: u8, id: u64, now: u64, len: usize) -> NewMessage {
        NewMessage {
            recipient: IdentityKey([r; 32]),
            sender: IdentityKey([s; 32]),
            message_id: id,
            sender_signature: [9; 64],
            blob: vec![7; len],
            now: Timestamp(now),
        }
    }

    fn open(dir: &std::path::Path, cfg: RelayConfig) -> RelayStore {
        let s: Arc<dyn Store> = Arc::new(SledStore::open(dir).unwrap());
        RelayStore::open(s, cfg, Arc::new(Stats::default())).unwrap()
    }

    #[test]
    fn borrowed_record_encodes_like_the_record() {
        let blob = vec![5u8; 300];
        let owned = Record {
            stored_at: Timestamp(77),
            sender_signature: [3; 64],
            blob: blob.clone(),
        };
        let borrowed = RecordRef {
            stored_at: Timestamp(77),
            sender_signature: [3; 64],
            blob: &blob,
        };
        assert_eq!(msgpack::encode(&owned), msgpack::encode(&borrowed));
    }

    #[tokio::test]
    async fn store_then_answers_after_commit_and_returns_the_blob() {
        let dir = tempfile::tempdir().unwrap();
        let rs = open(dir.path(), RelayConfig::default());
        let (tx, rx) = oneshot::channel();
        rs.store_then(
            msg(1, 2, 10, 100, 5),
            Box::new(move |r, m| {
                let _ = tx.send((r.unwrap(), m.blob));
            }),
        )
        .await;
        assert_eq!(
            rx.await.unwrap(),
            (StoreOutcome::Stored(Timestamp(100)), vec![7; 5])
        );
        let (tx, rx) = oneshot::channel();
        rs.store_then(
            msg(1, 2, 10, 200, 5),
            Box::new(move |r, _| {
                let _ = tx.send(r.unwrap());
            }),
        )
        .await;
        assert_eq!(rx.await.unwrap(), StoreOutcome::Duplicate(Timestamp(100)));
        rs.close().await.unwrap();
        let (tx, rx) = oneshot::channel();
        rs.store_then(
            msg(1, 2, 11, 300, 5),
            Box::new(move |r, _| {
                let _ = tx.send(r.is_err());
            }),
        )
        .await;
        assert!(rx.await.unwrap(), "a closed store answers Closed");
    }

    #[tokio::test]
    async fn store_dedup_confirm_expire_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = RelayConfig {
            quota_messages: 3,
            ..RelayConfig::default()
        };
        let rs = open(dir.path(), cfg.clone());
        assert_eq!(
            rs.store(msg(1, 2, 10, 100, 5)).await.unwrap(),
            StoreOutcome::Stored(Timestamp(100))
        );
        assert_eq!(
            rs.store(msg(1, 2, 10, 200, 5)).await.unwrap(),
            StoreOutcome::Duplicate(Timestamp(100))
        );
        rs.store(msg(1, 2, 11, 300, 5)).await.unwrap();
        rs.store(msg(1, 3, 10, 400, 5)).await.unwrap();
        assert_eq!(
            rs.store(msg(1, 3, 11, 500, 5)).await.unwrap(),
            StoreOutcome::Refused(RelayErrorCode::QuotaFull)
        );
        // Paging.
        let (p1, more) = rs
            .retrieve(IdentityKey([1; 32]), None, None, 2)
            .await
            .unwrap();
        assert_eq!((p1.len(), more), (2, true));
        let last = p1.last().unwrap();
        let cur = RetrieveCursor {
            sender: last.sender,
            message_id: last.message_id,
        };
        let (p2, more) = rs
            .retrieve(IdentityKey([1; 32]), None, Some(cur), 2)
            .await
            .unwrap();
        assert_eq!((p2.len(), more), (1, false));
        assert_eq!(p2[0].sender, [3; 32]);
        let (p, _) = rs
            .retrieve(IdentityKey([1; 32]), Some(Timestamp(250)), None, 10)
            .await
            .unwrap();
        assert_eq!(p.len(), 2);
        // Someone else's confirmation deletes nothing.
        assert!(!rs
            .confirm(IdentityKey([5; 32]), IdentityKey([2; 32]), 10)
            .await
            .unwrap());
        assert!(!rs
            .confirm(IdentityKey([1; 32]), IdentityKey([2; 32]), 99)
            .await
            .unwrap());
        assert!(rs
            .confirm(IdentityKey([1; 32]), IdentityKey([2; 32]), 10)
            .await
            .unwrap());
        assert!(!rs
            .confirm(IdentityKey([1; 32]), IdentityKey([2; 32]), 10)
            .await
            .unwrap());
        // Quota space came back.
        rs.store(msg(1, 3, 11, 500, 5)).await.unwrap();
        // Expire the one stored at 300 (and nothing at or after 400).
        assert_eq!(rs.expire(Timestamp(400)).await.unwrap(), 1);
        rs.close().await.unwrap();
        drop(rs);
        let rs = open(dir.path(), cfg);
        let (p, _) = rs
            .retrieve(IdentityKey([1; 32]), None, None, 10)
            .await
            .unwrap();
        assert_eq!(
            p.iter()
                .map(|m| (m.sender[0], m.message_id))
                .collect::<Vec<_>>(),
            vec![(3, 10), (3, 11)]
        );
        // Usage was rebuilt: 2 stored, quota 3.
        rs.store(msg(1, 4, 1, 600, 5)).await.unwrap();
        assert_eq!(
            rs.store(msg(1, 4, 2, 600, 5)).await.unwrap(),
            StoreOutcome::Refused(RelayErrorCode::QuotaFull)
        );
    }

    fn receipt(delivered_to: u8, sender: u8, id: u64) -> DeliveryConfirmation {
        DeliveryConfirmation {
            message_id: id,
            sender: [sender; 32],
            delivered_to: [delivered_to; 32],
            timestamp: Timestamp(1),
            signature: [3; 64],
        }
    }

    #[tokio::test]
    async fn a_confirmed_message_leaves_its_receipt_kept_durably_until_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let rs = open(dir.path(), RelayConfig::default());
        rs.store(msg(1, 2, 10, 100, 5)).await.unwrap();
        // No message, no receipt: a recipient cannot make us keep receipts for nothing.
        assert!(!rs
            .confirm_keeping(IdentityKey([1; 32]), IdentityKey([2; 32]), 11, receipt(1, 2, 11))
            .await
            .unwrap());
        assert!(rs
            .confirm_keeping(IdentityKey([1; 32]), IdentityKey([2; 32]), 10, receipt(1, 2, 10))
            .await
            .unwrap());
        // The delete and the receipt were one batch; both survive a reopen.
        rs.close().await.unwrap();
        drop(rs);
        let rs = open(dir.path(), RelayConfig::default());
        let (left, _) = rs
            .retrieve(IdentityKey([1; 32]), None, None, 10)
            .await
            .unwrap();
        assert!(left.is_empty());
        let kept = rs.kept_confirmations(IdentityKey([2; 32]), 10).await.unwrap();
        assert_eq!(kept, vec![receipt(1, 2, 10)]);
        rs.ack_confirmation(&IdentityKey([2; 32]), &[1; 32], 10)
            .await
            .unwrap();
        rs.flush().await.unwrap();
        assert!(rs
            .kept_confirmations(IdentityKey([2; 32]), 10)
            .await
            .unwrap()
            .is_empty());
        // A receipt its sender never acknowledges goes with the retention, like a message.
        rs.store(msg(1, 2, 12, 100, 5)).await.unwrap();
        let mut old = receipt(1, 2, 12);
        old.timestamp = Timestamp(50);
        rs.confirm_keeping(IdentityKey([1; 32]), IdentityKey([2; 32]), 12, old)
            .await
            .unwrap();
        rs.store(msg(1, 2, 13, 100, 5)).await.unwrap();
        let mut recent = receipt(1, 2, 13);
        recent.timestamp = Timestamp(500);
        rs.confirm_keeping(IdentityKey([1; 32]), IdentityKey([2; 32]), 13, recent.clone())
            .await
            .unwrap();
        rs.expire(Timestamp(400)).await.unwrap();
        let kept = rs.kept_confirmations(IdentityKey([2; 32]), 10).await.unwrap();
        assert_eq!(kept, vec![recent]);
    }

    /// A store that keeps what is durable apart from what was applied, and whose flush can be
    /// made to fail once: like [`SledStore`] on a full disk it then rolls back to what is
    /// durable and changes its generation.
    type Map = std::collections::BTreeMap<Vec<u8>, Vec<u8>>;

    #[derive(Default)]
    struct RollbackStore {
        /// (durable, applied, generation)
        state: std::sync::Mutex<(Map, Map, u64)>,
        fail_next_flush: std::sync::atomic::AtomicBool,
    }

    impl Store for RollbackStore {
        fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
            let mut k = vec![tree as u8];
            k.extend_from_slice(key);
            Ok(self.state.lock().unwrap().1.get(&k).cloned())
        }
        fn scan(
            &self,
            tree: Tree,
            prefix: &[u8],
            after: Option<&[u8]>,
            limit: usize,
        ) -> Result<crate::store::Entries, StoreError> {
            let mut p = vec![tree as u8];
            p.extend_from_slice(prefix);
            let st = self.state.lock().unwrap();
            Ok(st
                .1
                .range(p.clone()..)
                .take_while(|(k, _)| k.starts_with(&p))
                .map(|(k, v)| (k[1..].to_vec(), v.clone()))
                .filter(|(k, _)| after.is_none_or(|a| k.as_slice() > a))
                .take(limit)
                .collect())
        }
        fn last(
            &self,
            tree: Tree,
            prefix: &[u8],
        ) -> Result<Option<crate::store::Entry>, StoreError> {
            Ok(self.scan(tree, prefix, None, usize::MAX)?.pop())
        }
        fn apply(&self, batch: Batch) -> Result<(), StoreError> {
            let mut st = self.state.lock().unwrap();
            for (tree, key, value) in batch.into_ops() {
                let mut k = vec![tree as u8];
                k.extend_from_slice(&key);
                match value {
                    Some(v) => st.1.insert(k, v),
                    None => st.1.remove(&k),
                };
            }
            Ok(())
        }
        fn flush(&self) -> Result<(), StoreError> {
            let mut st = self.state.lock().unwrap();
            if self.fail_next_flush.swap(false, Relaxed) {
                st.1 = st.0.clone();
                st.2 += 1;
                return Err(StoreError::DiskFull("test".into()));
            }
            st.0 = st.1.clone();
            Ok(())
        }
        fn size_on_disk(&self) -> Result<u64, StoreError> {
            Ok(0)
        }
        fn generation(&self) -> u64 {
            self.state.lock().unwrap().2
        }
    }

    /// Issue 18: a failed flush rolls the store back, throwing away a blob whose quota use was
    /// already counted; the relay counts usage again, so the recipient's quota stays truthful.
    #[tokio::test]
    async fn quota_usage_follows_a_rollback() {
        let store = Arc::new(RollbackStore::default());
        let cfg = RelayConfig {
            quota_messages: 2,
            ..RelayConfig::default()
        };
        let rs = RelayStore::open(store.clone(), cfg, Arc::new(Stats::default())).unwrap();
        rs.store(msg(1, 2, 10, 100, 5)).await.unwrap();
        store.fail_next_flush.store(true, Relaxed);
        assert!(rs.store(msg(1, 2, 11, 200, 5)).await.is_err());
        let (held, _) = rs
            .retrieve(IdentityKey([1; 32]), None, None, 10)
            .await
            .unwrap();
        assert_eq!(held.len(), 1, "the failed store was rolled back");
        // One blob is stored, so one more fits (quota 2) and then no more.
        assert_eq!(
            rs.store(msg(1, 2, 12, 400, 5)).await.unwrap(),
            StoreOutcome::Stored(Timestamp(400)),
            "quota still counts a blob the rollback threw away"
        );
        assert_eq!(
            rs.store(msg(1, 2, 99, 500, 5)).await.unwrap(),
            StoreOutcome::Refused(RelayErrorCode::QuotaFull)
        );
    }

    #[tokio::test]
    async fn concurrent_stores_share_flushes() {
        let dir = tempfile::tempdir().unwrap();
        let stats = Arc::new(Stats::default());
        let s: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let rs = RelayStore::open(s, RelayConfig::default(), stats.clone()).unwrap();
        let mut tasks = Vec::new();
        for t in 0..20u8 {
            let rs = rs.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..20 {
                    rs.store(msg(1, t, i, 1, 10)).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(stats.stored.load(Relaxed), 400);
        assert!(stats.flushes.load(Relaxed) <= 400);
    }
}
