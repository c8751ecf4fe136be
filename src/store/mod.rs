//! Durable storage behind one narrow trait.
//!
//! Everything the node, relay and ratchet persist goes through [`Store`]: a sorted key-value
//! space split into [`Tree`] namespaces, atomic multi-key [`Batch`]es, and an explicit
//! [`Store::flush`] that makes every batch applied so far durable. Callers that acknowledge
//! anything to a peer ("stored", "delivered") call [`Store::commit`] (apply + flush) or apply
//! several batches and share one flush (group commit) before answering.
//!
//! The only implementation is [`SledStore`]; this module is the only place that knows sled.
//! The trait is synchronous (sled is); async callers run it on `spawn_blocking` or accept that
//! a single small write is cheap.
//!
//! Keys inside a tree are opaque bytes; callers that need ordering use big-endian integers.
//!
//! # Damage detection
//!
//! Every record carries a CRC-32 over its tree, key and value, and every applied batch also
//! rewrites a checksummed *manifest* record (store id, commit sequence, record count per tree)
//! in the same atomic sled batch, so the manifest always describes exactly the data committed
//! with it. A small *commit marker* file outside the database (written after a flush, at most
//! once a second and at close) remembers the last durable sequence: it only ever lags behind
//! the database, so a crash never looks like damage, while a database that lost committed data
//! (truncated, zeroed, replaced, deleted) is older than its marker. [`SledStore::open_checked`]
//! verifies all of it and returns [`StoreError::Damaged`] instead of starting on a partial store.
//! See `docs/PROTOCOL.md` ("Local store integrity").

mod sled_store;

pub use sled_store::{
    marker_path, restore_store, RecordSource, Restored, SledStore, MARKER_SUFFIX,
};

use std::sync::Arc;

/// A namespace. The byte is the first byte of every physical key, so trees never overlap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Tree {
    /// Node metadata (schema version, counters).
    Meta = 0,
    /// TOFU contacts, keyed by identity key.
    Contacts = 1,
    /// Double Ratchet sessions, keyed by peer identity key.
    Sessions = 2,
    /// Messages waiting to leave this node.
    Outbox = 3,
    /// Message history shown to the user.
    History = 4,
    /// De-duplication keys for received messages: (sender, message id).
    Seen = 5,
    /// Relay: stored blobs.
    RelayMessages = 6,
    /// Relay: secondary indexes (per-recipient, per-sender id, expiry).
    RelayIndex = 7,
    /// Relay: delivery confirmations waiting for their sender.
    RelayConfirmations = 8,
    /// Rendezvous client: remembered servers.
    Servers = 9,
    /// Node: messages stored at a relay whose delivery confirmation has not arrived yet.
    Awaiting = 10,
}

impl Tree {
    fn key(self, key: &[u8]) -> Vec<u8> {
        let mut k = Vec::with_capacity(key.len() + 1);
        k.push(self as u8);
        k.extend_from_slice(key);
        k
    }
}

/// An atomic set of writes.
#[derive(Debug, Default, Clone)]
pub struct Batch {
    ops: Vec<(Tree, Vec<u8>, Option<Vec<u8>>)>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Self {
        Batch::default()
    }
    /// Sets `tree[key] = value`.
    pub fn put(&mut self, tree: Tree, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) {
        self.ops.push((tree, key.into(), Some(value.into())));
    }
    /// Removes `tree[key]`.
    pub fn delete(&mut self, tree: Tree, key: impl Into<Vec<u8>>) {
        self.ops.push((tree, key.into(), None));
    }
    /// Appends every operation of `other`.
    pub fn extend(&mut self, other: Batch) {
        self.ops.extend(other.ops);
    }
    /// The operations, in order (test stores).
    #[cfg(test)]
    pub(crate) fn into_ops(self) -> Vec<(Tree, Vec<u8>, Option<Vec<u8>>)> {
        self.ops
    }
    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }
    /// True when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// A local storage failure. Never caused by a peer.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The underlying database reported an error (I/O error, corruption) other than a full
    /// disk.
    #[error("storage I/O error: {0}")]
    Db(#[source] DbError),
    /// The disk (or the file system's quota) is full: nothing was written. The store rolled its
    /// in-memory state back to what is on disk and retries by itself once space returns.
    #[error("disk full: {0} (free some space; the node resumes by itself)")]
    DiskFull(String),
    /// The store is already opened by another process.
    #[error("store at {0} is locked by another process")]
    Locked(String),
    /// The store on disk is damaged: it must not be used (it would start with data missing).
    #[error("store damaged: {path}: {detail}. {advice}")]
    Damaged {
        /// The damaged file or directory.
        path: String,
        /// What is wrong.
        detail: String,
        /// What the user can do (set by the node or relay that opened the store).
        advice: String,
    },
    /// A stored value did not decode.
    #[error("corrupt record in {tree:?}: {detail}")]
    Corrupt {
        /// Where.
        tree: Tree,
        /// What.
        detail: String,
    },
    /// Writes applied before a flush were thrown away: an earlier write failed and the store
    /// rolled back to what is on disk, so nothing of them was kept.
    #[error("writes were rolled back after a failed write; nothing of them was kept")]
    RolledBack,
    /// The task or thread running a store operation panicked, was cancelled, or could not be
    /// started: the operation may or may not have happened.
    #[error("storage task failed: {task}: {detail}")]
    TaskFailed {
        /// Which task.
        task: &'static str,
        /// The panic message or start error.
        detail: String,
    },
    /// A lock guarding the store was poisoned (a thread panicked while holding it).
    #[error("store lock poisoned (a thread panicked while holding it)")]
    Poisoned,
    /// A restore was asked to replace a store that opened and verified cleanly, without
    /// `--force`.
    #[error("{0} is a healthy store; refusing to replace it without --force")]
    Healthy(String),
    /// This store does not support the operation.
    #[error("this store cannot {0}")]
    Unsupported(&'static str),
    /// A caller's callback (a backup writer or reader fed by an export or restore) failed and
    /// stopped the operation; the caller keeps the real error.
    #[error("stopped by the caller: {0}")]
    Aborted(String),
}

/// What the database reported, as the source of [`StoreError::Db`]. Cloneable, so a closed
/// store can answer the same error to every caller until it reopens.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DbError {
    /// sled failed (I/O error, corruption, a bug it reports).
    #[error("sled: {0}")]
    Sled(#[source] sled::Error),
    /// A file of the database could not be opened, synced or restricted.
    #[error("{context}: {source}")]
    File {
        /// What the store was doing, with the path.
        context: String,
        /// The error.
        #[source]
        source: Arc<std::io::Error>,
    },
}

/// One key-value pair, the key without the tree byte.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Key-value pairs returned by a scan, keys without the tree byte.
pub type Entries = Vec<Entry>;

/// The storage trait. See the module docs.
pub trait Store: Send + Sync + 'static {
    /// Reads one key.
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Up to `limit` entries of `tree` whose key starts with `prefix` and is strictly greater
    /// than `after` (when given), in key order.
    fn scan(
        &self,
        tree: Tree,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StoreError>;
    /// The entry of `tree` with the greatest key starting with `prefix`.
    fn last(&self, tree: Tree, prefix: &[u8]) -> Result<Option<Entry>, StoreError>;
    /// Applies a batch atomically. Not durable until [`Store::flush`] returns.
    fn apply(&self, batch: Batch) -> Result<(), StoreError>;
    /// Makes every batch applied so far durable (fsync).
    fn flush(&self) -> Result<(), StoreError>;
    /// Applies and flushes: when this returns Ok the batch survives a crash.
    fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        self.apply(batch)?;
        self.flush()
    }
    /// Approximate bytes on disk.
    fn size_on_disk(&self) -> Result<u64, StoreError>;
    /// Records in `tree` (applied so far), when the store keeps a count: O(1), for status
    /// lines that must not walk a tree. `None` when it does not.
    fn count(&self, tree: Tree) -> Option<u64> {
        let _ = tree;
        None
    }
    /// Flushes that reached the disk since open (each is one sled flush + `fdatasync`), when
    /// the store counts them. With group commit, concurrent commits share one.
    fn flushes(&self) -> Option<u64> {
        None
    }
    /// Flushes and records the durable state for the next open (the commit marker). Call once
    /// at shutdown; the store stays usable.
    fn close(&self) -> Result<(), StoreError> {
        self.flush()
    }
    /// A point-in-time copy of every record: commits are held back while `sink` is called
    /// for each (tree byte, key, value) in key order. Returns the number of records.
    /// The default refuses (a store that cannot hold commits back cannot make a consistent copy).
    #[allow(clippy::type_complexity)]
    fn export(
        &self,
        sink: &mut dyn FnMut(u8, &[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        let _ = sink;
        Err(StoreError::Unsupported("export a backup"))
    }
    /// A number that changes whenever the store threw away writes that were applied but never
    /// made durable (after a failed flush it reloads what is on disk). A caller that read
    /// something and is about to act on it outside the process (send it) calls
    /// [`Store::flush`] and checks that the generation did not change since before the read.
    fn generation(&self) -> u64 {
        0
    }
}

impl StoreError {
    /// The same error with `advice` as the user-facing next step when it is [`StoreError::Damaged`].
    pub fn with_advice(self, advice: &str) -> Self {
        match self {
            StoreError::Damaged { path, detail, .. } => StoreError::Damaged {
                path,
                detail,
                advice: advice.to_string(),
            },
            other => other,
        }
    }

    /// True when the disk is full (ENOSPC or a quota), as opposed to any other failure.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, StoreError::DiskFull(_))
    }

    /// Classifies an I/O error: a full disk becomes [`StoreError::DiskFull`], anything else
    /// [`StoreError::Db`] with `context`.
    pub fn from_io(context: &str, e: std::io::Error) -> StoreError {
        if is_disk_full_io(&e) {
            StoreError::DiskFull(format!("{context}: no space left on device"))
        } else {
            StoreError::Db(DbError::File {
                context: context.to_string(),
                source: Arc::new(e),
            })
        }
    }
}

impl Tree {
    /// The tree whose key byte is `b`.
    pub fn from_byte(b: u8) -> Option<Tree> {
        Some(match b {
            0 => Tree::Meta,
            1 => Tree::Contacts,
            2 => Tree::Sessions,
            3 => Tree::Outbox,
            4 => Tree::History,
            5 => Tree::Seen,
            6 => Tree::RelayMessages,
            7 => Tree::RelayIndex,
            8 => Tree::RelayConfirmations,
            9 => Tree::Servers,
            10 => Tree::Awaiting,
            _ => return None,
        })
    }
}

/// True for ENOSPC / EDQUOT (also when sled re-created the error and only the kind survived).
pub fn is_disk_full_io(e: &std::io::Error) -> bool {
    matches!(
        e.kind(),
        std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded
    ) || matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
        || e.to_string().contains("No space left on device")
}
