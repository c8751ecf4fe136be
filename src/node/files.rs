//! The async shell of file transfer inside the node: the transfer table, the sender task per
//! outgoing transfer, the direct stream server, chunks that arrive through a relay, the
//! recipient's stall timer, and the operations the control API calls.
//!
//! Protocol decisions live in [`crate::files::transfer`], [`crate::files::chunk`] and
//! [`crate::files::offer`]; this
//! file moves bytes between them, the disk, the ratchet (file messages are ordinary queued
//! messages) and connections.
//!
//! Invariants:
//! - a chunk is recorded in the `have` bitmap only after it was authenticated, written and
//!   fsynced; a chunk that fails authentication is counted in `refused` and never written;
//! - a record is saved (atomically) before the state change is announced or acted on;
//! - the transfer table lock is never held across an `.await`.

use crate::files::chunk::{ChunkBlob, ChunkKey, BLOB_OVERHEAD};
use crate::files::offer::{FileMessage, Offer, MAX_RANGES};
use crate::files::store::{self, Dir, PartFile};
use crate::files::transfer::{Bitmap, Direction, Record, State};
use super::{Node, NodeError};
use crate::files::{FileError, FilesConfig, TransferId};
use crate::identity::{ContactIdentity, IdentityKey, Trust};
use crate::noise::stream::TcpConnection;
use crate::ratchet::Content;
use crate::relay::RelayClientError;
use crate::time::Timestamp;
use crate::wire::envelope::ErrorMsg;
use crate::wire::file::{FileAck, FileData, FileNeed, FileOpen, FileSent};
use crate::wire::relay::RelayErrorCode;
use crate::wire::{Endpoint, Envelope};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{broadcast, mpsc, Notify};

/// The payload kind of file messages.
pub const PAYLOAD_KIND: u8 = crate::ratchet::PayloadKind::File as u8;
/// A receiving transfer syncs its temporary file and saves its bitmap after this many chunks.
pub const SYNC_EVERY: usize = 32;
/// A receiving transfer without a new chunk for this long asks its sender for the missing
/// ones (a ratchet `Need`); the interval doubles while nothing arrives, up to [`STALL_MAX`].
pub const STALL: Duration = Duration::from_secs(15);
/// Longest interval between two `Need`s of a stalled transfer.
pub const STALL_MAX: Duration = Duration::from_secs(600);
/// Rounds (`FILE_SENT`) one direct stream may take before the recipient gives up on it.
pub const MAX_ROUNDS: u32 = 16;
/// The sender reads this many chunks from disk at a time.
const READ_BATCH: u64 = 8;
/// Chunks the recipient's stream decrypts ahead of its disk: what it holds unwritten is lost
/// (and sent again) when it is killed, so this stays small.
const RECV_QUEUE: usize = 2;
/// Most time a direct stream waits for the next envelope.
const STREAM_IDLE: Duration = Duration::from_secs(60);

/// Why a file operation of the node failed: the file layer refused it ([`FileError`]), or the
/// node did (unknown or rejected contact, full disk, shutting down). The file layer knows
/// nothing of the node, so the wrapper of both lives here.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// The file layer refused or failed.
    #[error(transparent)]
    File(#[from] FileError),
    /// The node refused (unknown contact, rejected contact, full disk, shutting down).
    #[error(transparent)]
    Node(#[from] NodeError),
}

impl TransferError {
    /// True for a full disk.
    pub fn is_disk_full(&self) -> bool {
        match self {
            TransferError::File(e) => e.is_disk_full(),
            TransferError::Node(e) => e.is_disk_full(),
        }
    }

    /// A failure of this node (disk, IO, shutting down), not of the peer's data: worth
    /// retrying later.
    fn is_local(&self) -> bool {
        matches!(
            self,
            TransferError::File(FileError::DiskFull(_) | FileError::Io { .. })
                | TransferError::Node(_)
        )
    }
}

/// One transfer as the control API shows it (`sremp files --json`, progress lines).
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq)]
pub struct View {
    /// Transfer id, 32 hex.
    pub id: String,
    /// `out` or `in`.
    pub direction: Direction,
    /// The other side's contact id.
    pub peer: String,
    /// Its username when known.
    pub peer_name: Option<String>,
    /// Offered file name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content, 64 hex.
    pub sha256: String,
    /// `offered`, `receiving`, `sending`, `verifying`, `done`, `rejected`, `cancelled`, `failed`.
    pub state: State,
    /// Chunks the recipient has stored (incoming: ours; outgoing: as last reported).
    pub chunks_done: u64,
    /// Chunks in the file.
    pub chunks_total: u64,
    /// Bytes the recipient has stored.
    pub bytes_done: u64,
    /// `bytes_done` of `size` in percent (100 for an empty file that is done).
    pub percent: f64,
    /// Bytes per second since this process started working on the transfer.
    pub rate: f64,
    /// Seconds left at that rate, when known.
    pub eta_secs: Option<u64>,
    /// Outgoing: chunks sent by this process (re-sends included).
    pub chunks_sent: u64,
    /// Incoming: chunks received again after they were stored.
    pub duplicates: u64,
    /// Incoming: chunks refused because they failed authentication.
    pub refused: u64,
    /// Outgoing: the source file; incoming: the saved file once `done`.
    pub path: Option<String>,
    /// Incoming: the target directory once accepted.
    pub dir: Option<String>,
    /// Why it failed, was rejected, or is waiting (a relay too small, a full disk…).
    pub error: Option<String>,
    /// The path the chunks last took in this node process: `direct-tcp`, `direct-quic` or
    /// `relay` (null before the first chunk moved).
    #[serde(default)]
    pub via: Option<String>,
    /// Outgoing: the group (32 hex) this is one member's copy for (`send-file --group`).
    #[serde(default)]
    pub group: Option<String>,
    /// Created, ms since the epoch.
    pub created_at: u64,
    /// Last state change, ms since the epoch.
    pub updated_at: u64,
}

struct Entry {
    record: Record,
    key: Option<ChunkKey>,
    /// Incoming: durably stored chunks. Outgoing: chunks a relay acknowledged.
    have: Bitmap,
    /// Incoming: written, maybe not yet synced (a superset of `have`).
    written: Bitmap,
    part: Option<Arc<PartFile>>,
    unsynced: usize,
    /// Outgoing: chunks the recipient reported stored.
    peer_done: u64,
    /// Outgoing: what the recipient asked for last (ratchet `Accept`/`Need`).
    need: Vec<(u64, u64)>,
    sent_run: u64,
    started: Instant,
    done_at_start: u64,
    last_chunk: Instant,
    next_need: Duration,
    last_need: Option<Instant>,
    wake: Arc<Notify>,
    task: bool,
    /// The path chunks last took (`View::via`).
    via: Option<&'static str>,
}

impl Entry {
    fn new(record: Record, have: Bitmap) -> Entry {
        let key = None;
        let written = have.clone();
        let done = have.count();
        Entry {
            record,
            key,
            have,
            written,
            part: None,
            unsynced: 0,
            peer_done: 0,
            need: Vec::new(),
            sent_run: 0,
            started: Instant::now(),
            done_at_start: done,
            last_chunk: Instant::now(),
            next_need: STALL,
            last_need: None,
            wake: Arc::new(Notify::new()),
            task: false,
            via: None,
        }
    }

    fn done_chunks(&self) -> u64 {
        if self.record.state == State::Done {
            return self.record.total;
        }
        match self.record.direction {
            Direction::In => self.have.count(),
            Direction::Out => self.peer_done,
        }
    }

    fn view(&self) -> View {
        let r = &self.record;
        let done = self.done_chunks();
        let bytes = done.saturating_mul(u64::from(r.chunk_size)).min(r.size);
        let percent = if r.size == 0 {
            if r.state == State::Done {
                100.0
            } else {
                0.0
            }
        } else {
            (bytes as f64 * 100.0 / r.size as f64).min(100.0)
        };
        let since = done.saturating_sub(self.done_at_start);
        let secs = self.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 {
            (since.saturating_mul(u64::from(r.chunk_size)) as f64 / secs).max(0.0)
        } else {
            0.0
        };
        let eta_secs = (rate > 0.0 && !r.state.is_final())
            .then(|| (r.size.saturating_sub(bytes) as f64 / rate).ceil() as u64);
        View {
            id: r.id.to_string(),
            direction: r.direction,
            peer: r.peer.clone(),
            peer_name: r.peer_name.clone(),
            name: r.name.clone(),
            size: r.size,
            sha256: r.sha256.clone(),
            state: r.state,
            chunks_done: done,
            chunks_total: r.total,
            bytes_done: bytes,
            percent,
            rate,
            eta_secs,
            chunks_sent: self.sent_run,
            duplicates: r.duplicates,
            refused: r.refused,
            path: r.path.as_ref().map(|p| p.display().to_string()),
            dir: r.dir.as_ref().map(|p| p.display().to_string()),
            error: r.error.clone(),
            via: self.via.map(str::to_string),
            group: r.group.clone(),
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }

    fn key(&mut self, me: &IdentityKey) -> Option<ChunkKey> {
        if self.key.is_none() {
            let secret = self.record.secret_bytes()?;
            let peer: IdentityKey = self.record.peer.parse().ok()?;
            let (s, r) = match self.record.direction {
                Direction::Out => (me.0, peer.0),
                Direction::In => (peer.0, me.0),
            };
            self.key = Some(ChunkKey::derive(&self.record.id, &secret, &s, &r));
        }
        self.key.clone()
    }
}

/// The transfer table and its events.
pub struct Files {
    dir: Dir,
    cfg: FilesConfig,
    downloads: PathBuf,
    table: Mutex<HashMap<TransferId, Entry>>,
    events: broadcast::Sender<View>,
    /// Held across a whole [`Files::sync`] (snapshot, fdatasync, bitmap save, update): a
    /// direct stream's background sync and a relayed chunk's could otherwise overlap, the
    /// older snapshot landing last would move `have` back and count chunks twice, and the
    /// transfer would stall with chunks written but never recorded.
    syncing: Mutex<()>,
}

impl std::fmt::Debug for Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Files").finish_non_exhaustive()
    }
}

/// What happened to a received chunk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// Written (not yet synced).
    Written,
    /// Already had it.
    Duplicate,
}

fn now_ms() -> u64 {
    Timestamp::now().0
}

fn describe(m: &FileMessage, name: Option<&str>) -> String {
    let n = name.unwrap_or("?");
    match m {
        FileMessage::Offer(o) => format!(
            "[file offer] {} ({} bytes), transfer {} — `sremp files accept {}`",
            o.name, o.size, o.id, o.id
        ),
        FileMessage::Accept(id) => format!("[file accepted] {n}, transfer {id}"),
        FileMessage::Reject(id, r) => format!("[file rejected] {n}, transfer {id}: {r}"),
        FileMessage::Need(id, r) => format!(
            "[file resume] {n}, transfer {id}: {} ranges missing",
            r.len()
        ),
        FileMessage::Complete(id, true, _) => format!("[file received] {n}, transfer {id}"),
        FileMessage::Complete(id, false, r) => format!("[file failed] {n}, transfer {id}: {r}"),
        FileMessage::Cancel(id, r) => format!("[file cancelled] {n}, transfer {id}: {r}"),
    }
}

impl Files {
    /// Opens `<data dir>/files` and loads every record.
    pub fn open(data_dir: &Path, cfg: FilesConfig) -> Result<Files, FileError> {
        let dir = Dir::open(data_dir)?;
        let downloads = cfg
            .download_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("downloads"));
        let mut table = HashMap::new();
        for r in dir.load_all()? {
            let have = match r.direction {
                Direction::In => dir.load_bitmap(&r.id, "have", r.total),
                Direction::Out => dir.load_bitmap(&r.id, "sent", r.total),
            };
            let mut e = Entry::new(r, have);
            if e.record.direction == Direction::Out && e.record.state == State::Sending {
                e.need = vec![(0, e.record.total)];
            }
            table.insert(e.record.id, e);
        }
        let (events, _) = broadcast::channel(1024);
        Ok(Files {
            dir,
            cfg,
            downloads,
            table: Mutex::new(table),
            events,
            syncing: Mutex::new(()),
        })
    }

    fn with<T>(&self, f: impl FnOnce(&mut HashMap<TransferId, Entry>) -> T) -> T {
        match self.table.lock() {
            Ok(mut t) => f(&mut t),
            Err(p) => f(&mut p.into_inner()),
        }
    }

    fn emit(&self, id: &TransferId) {
        if let Some(v) = self.with(|t| t.get(id).map(Entry::view)) {
            let _ = self.events.send(v);
        }
    }

    /// Progress events: a [`View`] whenever a transfer changes.
    pub fn subscribe(&self) -> broadcast::Receiver<View> {
        self.events.subscribe()
    }

    /// Every transfer, oldest first.
    pub fn list(&self) -> Vec<View> {
        let mut v: Vec<(u64, View)> = self.with(|t| {
            t.values()
                .map(|e| (e.record.created_at, e.view()))
                .collect()
        });
        v.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| a.1.id.cmp(&b.1.id)));
        v.into_iter().map(|(_, v)| v).collect()
    }

    /// One transfer.
    pub fn get(&self, id: &str) -> Result<View, FileError> {
        let tid: TransferId = id.parse()?;
        self.with(|t| t.get(&tid).map(Entry::view))
            .ok_or_else(|| FileError::UnknownTransfer(id.to_string()))
    }

    /// Saves the record of `id` after `f` changed it; `f` returns false for "no change".
    fn update(
        &self,
        id: &TransferId,
        f: impl FnOnce(&mut Entry) -> Result<bool, FileError>,
    ) -> Result<Record, FileError> {
        let (record, changed) = self.with(|t| {
            let e = t
                .get_mut(id)
                .ok_or_else(|| FileError::UnknownTransfer(id.to_string()))?;
            let before = e.record.clone();
            match f(e) {
                Ok(changed) => Ok((e.record.clone(), changed.then_some(before))),
                Err(err) => {
                    e.record = before;
                    Err(err)
                }
            }
        })?;
        if let Some(before) = changed {
            if let Err(err) = self.dir.save(&record) {
                // Keep memory in step with the disk.
                self.with(|t| {
                    if let Some(e) = t.get_mut(id) {
                        e.record = before;
                    }
                });
                return Err(err);
            }
            if record.state.is_final() {
                self.dir.remove_bitmaps(id);
            }
        }
        self.emit(id);
        Ok(record)
    }
}

/// Sends one file message to a contact through the ratchet (queued like a text message).
/// Public so that tests can send crafted (bad) messages as a misbehaving peer would.
pub async fn send_message(
    node: &Node,
    peer: &str,
    m: &FileMessage,
    name: Option<&str>,
) -> Result<(), TransferError> {
    let c = node.resolve(peer)?;
    if c.trust == Trust::Rejected {
        return Err(NodeError::RejectedContact(c.identity.key()).into());
    }
    node.enqueue_content(
        &c,
        Content::Other {
            kind: PAYLOAD_KIND,
            data: m.encode(),
        },
        &describe(m, name),
    )
    .await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Operations of the control API.

/// A source file checked and hashed, ready to be offered (once, or to each member of a group).
#[derive(Clone, Debug)]
pub struct Source {
    path: PathBuf,
    name: String,
    sha256: [u8; 32],
    size: u64,
}

/// Checks that `path` is a regular file with an acceptable name and size, and hashes it.
pub async fn hash_source(path: &Path) -> Result<Source, TransferError> {
    let path = std::path::absolute(path)
        .map_err(|e| FileError::from_io(format!("resolving {}", path.display()), e))?;
    let meta = std::fs::metadata(&path)
        .map_err(|e| FileError::from_io(format!("reading {}", path.display()), e))?;
    if !meta.is_file() {
        return Err(FileError::NotAFile(path).into());
    }
    let name = crate::files::name::of_path(&path).map_err(FileError::from)?;
    let p = path.clone();
    let (sha256, size) = tokio::task::spawn_blocking(move || store::hash_file(&p))
        .await
        .map_err(|_| NodeError::ShuttingDown)??;
    if size > crate::files::offer::MAX_FILE_SIZE {
        return Err(FileError::from(crate::files::offer::OfferError::TooLarge(size)).into());
    }
    Ok(Source {
        path,
        name,
        sha256,
        size,
    })
}

/// `send-file`: hashes `path`, records the transfer and queues the offer.
pub async fn send_file(
    node: &Node,
    contact: &str,
    path: &Path,
) -> Result<View, TransferError> {
    let c = node.resolve(contact)?;
    if c.trust == Trust::Rejected {
        return Err(NodeError::RejectedContact(c.identity.key()).into());
    }
    if c.identity.key() == node.id() {
        return Err(NodeError::SelfContact.into());
    }
    let src = hash_source(path).await?;
    offer_source(node, &c, &src, None).await
}

/// Records an outgoing transfer of `src` to contact `c` (one member's copy when `group` is
/// set) and queues its offer.
pub async fn offer_source(
    node: &Node,
    c: &ContactIdentity,
    src: &Source,
    group: Option<String>,
) -> Result<View, TransferError> {
    let files = node.files();
    let Source {
        path,
        name,
        sha256,
        size,
    } = src.clone();
    let chunk_size = files.cfg.chunk_size;
    let offer = Offer {
        id: TransferId::random(),
        name,
        size,
        chunk_size,
        total: crate::files::chunk::chunk_count(size, chunk_size),
        sha256,
        secret: zeroize::Zeroizing::new(rand::random()),
    };
    offer.validate().map_err(FileError::from)?;
    let mut record = Record::from_offer(
        &offer,
        Direction::Out,
        c.identity.key().to_string(),
        Some(c.identity.username().to_string()),
        now_ms(),
    );
    record.path = Some(path);
    record.group = group;
    files.dir.save(&record)?;
    let id = offer.id;
    let total = record.total;
    files.with(|t| t.insert(id, Entry::new(record, Bitmap::new(total))));
    if let Err(e) = send_message(
        node,
        &c.identity.key().to_string(),
        &FileMessage::Offer(offer),
        None,
    )
    .await
    {
        let _ = files.update(&id, |e2| {
            Ok(e2.record.finish(
                State::Failed,
                Some(format!("offer not sent: {e}")),
                now_ms(),
            ))
        });
        return Err(e);
    }
    tracing::info!(transfer = %id, peer = %c.identity.key().short(), size, "file offered");
    Ok(files.get(&id.to_string())?)
}

/// `files accept`: accepts an offered incoming transfer into `to` (default: the download
/// directory), creating the directory if needed.
pub async fn accept(
    node: &Node,
    id: &str,
    to: Option<PathBuf>,
) -> Result<View, TransferError> {
    let files = node.files();
    let tid: TransferId = id.parse()?;
    let dir = match to {
        Some(d) => std::path::absolute(&d)
            .map_err(|e| FileError::from_io(format!("resolving {}", d.display()), e))?,
        None => files.downloads.clone(),
    };
    std::fs::create_dir_all(&dir)
        .map_err(|e| FileError::from_io(format!("creating {}", dir.display()), e))?;
    let meta = std::fs::metadata(&dir)
        .map_err(|e| FileError::from_io(format!("reading {}", dir.display()), e))?;
    if !meta.is_dir() {
        return Err(FileError::NotAFile(dir).into());
    }
    let part = Arc::new(PartFile::open(&dir, &tid)?);
    let rec = files.update(&tid, |e| {
        e.record.accept(dir.clone(), now_ms())?;
        e.part = Some(part.clone());
        e.last_chunk = Instant::now();
        Ok(true)
    });
    let rec = match rec {
        Ok(r) => r,
        Err(e) => {
            // Only remove a temporary file we may just have created for nothing.
            let fresh = std::fs::metadata(part.path()).is_ok_and(|m| m.len() == 0);
            if fresh && !matches!(e, FileError::WrongState { .. }) {
                let _ = std::fs::remove_file(part.path());
            }
            return Err(e.into());
        }
    };
    tracing::info!(transfer = %tid, dir = %dir.display(), "file accepted");
    send_message(node, &rec.peer, &FileMessage::Accept(tid), Some(&rec.name)).await?;
    if rec.total == 0 {
        finish_incoming(node, tid).await;
    }
    Ok(files.get(id)?)
}

/// `files reject`: refuses an offered (or receiving) incoming transfer.
pub async fn reject(node: &Node, id: &str, reason: &str) -> Result<View, TransferError> {
    let files = node.files();
    let tid: TransferId = id.parse()?;
    let rec = files.update(&tid, |e| {
        e.record.reject(reason, now_ms())?;
        if let (Some(dir), Some(_)) = (&e.record.dir, e.part.take()) {
            let _ = std::fs::remove_file(store::temp_path(dir, &tid));
        }
        Ok(true)
    })?;
    send_message(
        node,
        &rec.peer,
        &FileMessage::Reject(tid, reason.to_string()),
        Some(&rec.name),
    )
    .await?;
    Ok(files.get(id)?)
}

// ---------------------------------------------------------------------------------------------
// File messages from the ratchet.

/// Handles a file message from `sender` (already decrypted and de-duplicated); returns the
/// history line. Idempotent: the same message handled twice changes nothing the second time.
/// Called with the node's ratchet lock held: it must not queue messages itself (it spawns
/// tasks for that).
pub async fn on_message(
    node: &Node,
    sender: &IdentityKey,
    contact: Option<&ContactIdentity>,
    data: &[u8],
) -> String {
    let files = node.files();
    let m = match FileMessage::decode(data) {
        Ok(m) => m,
        Err(e) => {
            tracing::warn!(peer = %sender.short(), error = %e, "malformed file message dropped");
            return format!("[file message] malformed: {e}");
        }
    };
    let id = m.transfer();
    let peer_hex = sender.to_string();
    let known = files.with(|t| {
        t.get(&id).map(|e| {
            (
                e.record.peer.clone(),
                e.record.direction,
                e.record.name.clone(),
            )
        })
    });
    if let Some((peer, _, _)) = &known {
        if *peer != peer_hex {
            tracing::warn!(peer = %sender.short(), transfer = %id, "file message about another peer's transfer dropped");
            return format!("[file message] about a transfer of another contact ({id}); ignored");
        }
    }
    let name = known.as_ref().map(|k| k.2.clone());
    let line = describe(&m, name.as_deref());
    let r = match m.clone() {
        FileMessage::Offer(offer) => on_offer(node, sender, contact, offer, known.is_some()).await,
        FileMessage::Cancel(_, reason) if matches!(known, Some((_, Direction::In, _))) => files
            .update(&id, |e| {
                let changed = e
                    .record
                    .finish(State::Cancelled, Some(reason.clone()), now_ms());
                if changed {
                    if let (Some(dir), Some(_)) = (&e.record.dir, e.part.take()) {
                        let _ = std::fs::remove_file(store::temp_path(dir, &id));
                    }
                }
                Ok(changed)
            })
            .map(|_| ()),
        FileMessage::Accept(_) | FileMessage::Need(..)
            if matches!(known, Some((_, Direction::Out, _))) =>
        {
            let asked = match &m {
                FileMessage::Need(_, r) => Some(r.clone()),
                _ => None,
            };
            let r = files.update(&id, |e| {
                let total = e.record.total;
                match &asked {
                    // A new request after a stall: what a relay stored may have been lost.
                    Some(ranges) => {
                        for (a, b) in ranges {
                            for i in *a..(*b).min(total) {
                                clear_bit(&mut e.have, i);
                            }
                        }
                        e.need = ranges.clone();
                    }
                    None => e.need = vec![(0, total)],
                }
                e.wake.notify_one();
                Ok(e.record.peer_wants(now_ms()))
            });
            if r.is_ok() {
                start_sender(node, id);
            }
            r.map(|_| ())
        }
        FileMessage::Reject(_, reason) if matches!(known, Some((_, Direction::Out, _))) => files
            .update(&id, |e| {
                e.wake.notify_one();
                Ok(e.record
                    .finish(State::Rejected, Some(reason.clone()), now_ms()))
            })
            .map(|_| ()),
        FileMessage::Complete(_, ok, reason) if matches!(known, Some((_, Direction::Out, _))) => {
            files
                .update(&id, |e| {
                    e.wake.notify_one();
                    let (s, why) = if ok {
                        (State::Done, None)
                    } else {
                        (State::Failed, Some(reason.clone()))
                    };
                    Ok(e.record.finish(s, why, now_ms()))
                })
                .map(|_| ())
        }
        _ => {
            tracing::debug!(peer = %sender.short(), transfer = %id, "file message for an unknown transfer or the wrong direction ignored");
            Ok(())
        }
    };
    if let Err(e) = r {
        tracing::warn!(peer = %sender.short(), transfer = %id, error = %e, "file message not applied");
    }
    line
}

fn clear_bit(b: &mut Bitmap, i: u64) {
    if b.get(i) {
        let mut bytes = b.as_bytes().to_vec();
        if let Some(x) = bytes.get_mut((i / 8) as usize) {
            *x &= !(1 << (i % 8));
        }
        if let Some(n) = Bitmap::from_bytes(bytes, b.total()) {
            *b = n;
        }
    }
}

async fn on_offer(
    node: &Node,
    sender: &IdentityKey,
    contact: Option<&ContactIdentity>,
    offer: Offer,
    known: bool,
) -> Result<(), FileError> {
    let files = node.files();
    if known {
        return Ok(()); // a re-delivered offer
    }
    let mut record = Record::from_offer(
        &offer,
        Direction::In,
        sender.to_string(),
        contact.map(|c| c.identity.username().to_string()),
        now_ms(),
    );
    if let Err(e) = offer.validate() {
        // Refused: recorded as failed (nothing is created anywhere), and the sender told.
        tracing::warn!(peer = %sender.short(), transfer = %offer.id, error = %e, "file offer refused");
        record.name = record
            .name
            .chars()
            .filter(|c| !c.is_control())
            .take(255)
            .collect();
        record.finish(State::Failed, Some(format!("refused: {e}")), now_ms());
        record.secret = String::new();
        files.dir.save(&record)?;
        let id = record.id;
        files.with(|t| t.insert(id, Entry::new(record, Bitmap::new(0))));
        files.emit(&id);
        // Sent from a task: the receive path holds the ratchet lock while it calls us.
        let (node, peer, reason) = (node.clone(), sender.to_string(), format!("refused: {e}"));
        tokio::spawn(async move {
            if let Err(e) = send_message(&node, &peer, &FileMessage::Reject(id, reason), None).await
            {
                tracing::debug!(transfer = %id, error = %e, "refusal not sent");
            }
        });
        return Ok(());
    }
    files.dir.save(&record)?;
    let id = record.id;
    let total = record.total;
    files.with(|t| t.insert(id, Entry::new(record, Bitmap::new(total))));
    files.emit(&id);
    tracing::info!(peer = %sender.short(), transfer = %id, size = offer.size, "file offered to us");
    let limit = files.cfg.auto_accept_trusted_max_bytes;
    if contact.is_some_and(|c| c.trust == Trust::Trusted) && limit > 0 && offer.size <= limit {
        let node = node.clone();
        tokio::spawn(async move {
            if let Err(e) = accept(&node, &id.to_string(), None).await {
                tracing::warn!(transfer = %id, error = %e, "automatic accept failed");
            }
        });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Receiving chunks.

/// What a chunk needs before it can be opened and written.
struct Target {
    key: ChunkKey,
    shape: crate::files::chunk::Shape,
    part: Arc<PartFile>,
}

impl Files {
    fn target(
        &self,
        me: &IdentityKey,
        peer: &str,
        blob: &ChunkBlob,
    ) -> Result<Option<Target>, FileError> {
        let id = blob.transfer;
        self.with(|t| {
            let e = t
                .get_mut(&id)
                .filter(|e| e.record.direction == Direction::In && e.record.peer == peer)
                .ok_or_else(|| FileError::UnknownTransfer(id.to_string()))?;
            if e.record.state != State::Receiving {
                return Err(FileError::WrongState {
                    id: id.to_string(),
                    state: e.record.state.name(),
                    wanted: "a receiving transfer",
                });
            }
            if e.written.get(blob.index) {
                e.record.duplicates += 1;
                return Ok(None);
            }
            let key = e
                .key(me)
                .ok_or_else(|| FileError::Corrupt("transfer secret".into()))?;
            let part = match &e.part {
                Some(p) => p.clone(),
                None => {
                    let dir = e
                        .record
                        .dir
                        .clone()
                        .ok_or_else(|| FileError::Corrupt("no target directory".into()))?;
                    let p = Arc::new(PartFile::open(&dir, &id)?);
                    e.part = Some(p.clone());
                    p
                }
            };
            Ok(Some(Target {
                key,
                shape: e.record.shape(),
                part,
            }))
        })
    }

    /// Authenticates and writes one chunk from `sender` (blocking IO: call from a blocking
    /// context). It is durable only after [`Files::sync`]. A chunk that fails any check is
    /// counted in `refused` and never written.
    pub fn store_chunk(
        &self,
        me: &IdentityKey,
        sender: &IdentityKey,
        bytes: &[u8],
    ) -> Result<(TransferId, ChunkOutcome), FileError> {
        let blob = ChunkBlob::decode(bytes).map_err(crate::files::chunk::ChunkError::from)?;
        let id = blob.transfer;
        let Some(target) = self.target(me, &sender.to_string(), &blob)? else {
            return Ok((id, ChunkOutcome::Duplicate));
        };
        let index = blob.index;
        let plain = match blob.open_owned(&target.key, &target.shape) {
            Ok(p) => p,
            Err(e) => {
                self.with(|t| {
                    if let Some(e) = t.get_mut(&id) {
                        e.record.refused += 1;
                    }
                });
                tracing::warn!(transfer = %id, index = index, error = %e, "chunk refused");
                return Err(e.into());
            }
        };
        if let Err(e) = target
            .part
            .write_at(target.shape.offset(index), &plain)
        {
            self.with(|t| {
                if let Some(en) = t.get_mut(&id) {
                    en.record.error = Some(e.to_string());
                }
            });
            return Err(e);
        }
        self.with(|t| {
            if let Some(e) = t.get_mut(&id) {
                if e.written.set(index) {
                    e.unsynced += 1;
                }
                e.last_chunk = Instant::now();
                e.next_need = STALL;
            }
        });
        Ok((id, ChunkOutcome::Written))
    }

    /// True when `id` has written chunks waiting for a sync.
    pub fn needs_sync(&self, id: &TransferId, every: usize) -> bool {
        self.with(|t| t.get(id).is_some_and(|e| e.unsynced >= every.max(1)))
    }

    /// Makes the written chunks of `id` durable (fsync of the temporary file), then records
    /// them in the `have` bitmap (saved atomically). Returns (stored chunks, complete).
    /// Blocking IO.
    pub fn sync(&self, id: &TransferId) -> Result<(u64, bool), FileError> {
        let _one = self.syncing.lock().unwrap_or_else(|p| p.into_inner());
        // The snapshot and its count are taken together: chunks written after it wait for
        // the next sync.
        let Some((part, written, unsynced)) = self.with(|t| {
            t.get(id)
                .and_then(|e| e.part.clone().map(|p| (p, e.written.clone(), e.unsynced)))
        }) else {
            let done = self.with(|t| t.get(id).map(|e| (e.have.count(), e.have.is_full())));
            return done.ok_or_else(|| FileError::UnknownTransfer(id.to_string()));
        };
        if unsynced > 0 {
            if let Err(e) = part
                .sync()
                .and_then(|()| self.dir.save_bitmap(id, "have", &written))
            {
                // Linux reports a failed fdatasync once: a retry would succeed and record
                // chunks whose pages were lost. Everything since the last good sync counts as
                // not written, so it is accepted (and asked for) again.
                self.with(|t| {
                    if let Some(en) = t.get_mut(id) {
                        en.written = en.have.clone();
                        en.unsynced = 0;
                        en.record.error = Some(e.to_string());
                    }
                });
                return Err(e);
            }
            self.with(|t| {
                if let Some(e) = t.get_mut(id) {
                    e.have = written;
                    e.unsynced = e.unsynced.saturating_sub(unsynced);
                    if e.record
                        .error
                        .as_deref()
                        .is_some_and(|x| x.starts_with("disk full"))
                    {
                        e.record.error = None;
                    }
                }
            });
            self.emit(id);
        }
        Ok(self
            .with(|t| t.get(id).map(|e| (e.have.count(), e.have.is_full())))
            .unwrap_or((0, false)))
    }

    /// Chunks of `id` stored durably.
    pub fn stored(&self, id: &TransferId) -> u64 {
        self.with(|t| t.get(id).map_or(0, |e| e.have.count()))
    }

    /// The chunk ranges `id` still lacks (at most [`MAX_RANGES`]).
    pub fn missing(&self, id: &TransferId) -> Vec<(u64, u64)> {
        self.with(|t| {
            t.get(id)
                .map(|e| e.have.missing(MAX_RANGES))
                .unwrap_or_default()
        })
    }
}

/// Every chunk of an incoming transfer is stored: check the whole hash, move the file into
/// place, tell the sender. Returns the final state.
pub async fn finish_incoming(node: &Node, id: TransferId) -> State {
    let files = node.files();
    let started = files.update(&id, |e| {
        e.record.verifying(now_ms())?;
        e.part = None;
        Ok(true)
    });
    let rec = match started {
        Ok(r) => r,
        Err(_) => {
            return files
                .with(|t| t.get(&id).map(|e| e.record.state))
                .unwrap_or(State::Failed)
        }
    };
    let (Some(dir), Some(sha)) = (rec.dir.clone(), rec.sha256_bytes()) else {
        return State::Failed;
    };
    let (name, size) = (rec.name.clone(), rec.size);
    let result = tokio::task::spawn_blocking(move || store::finalize(&dir, &id, &name, size, &sha))
        .await
        .map_err(|_| TransferError::from(NodeError::ShuttingDown))
        .and_then(|r| r.map_err(TransferError::from));
    let outcome = match &result {
        Ok(p) => Ok(p.clone()),
        Err(e) => Err(e.to_string()),
    };
    if result.as_ref().is_err_and(TransferError::is_local) {
        // A local failure, not the sender's: try again later from `receiving`.
        let msg = result.as_ref().err().map(|e| e.to_string());
        let _ = files.update(&id, |e| {
            e.record.state = State::Receiving;
            e.record.error = msg.clone();
            Ok(true)
        });
        return State::Receiving;
    }
    let _ = files.update(&id, |e| {
        e.record.verified(outcome.clone(), now_ms())?;
        Ok(true)
    });
    let ok = outcome.is_ok();
    match &outcome {
        Ok(p) => tracing::info!(transfer = %id, path = %p.display(), "file received and verified"),
        Err(e) => tracing::warn!(transfer = %id, error = %e, "received file failed its check"),
    }
    let reason = outcome.err().unwrap_or_default();
    if let Err(e) = send_message(
        node,
        &rec.peer,
        &FileMessage::Complete(id, ok, reason),
        Some(&rec.name),
    )
    .await
    {
        tracing::warn!(transfer = %id, error = %e, "completion not sent");
    }
    if ok {
        State::Done
    } else {
        State::Failed
    }
}

/// A chunk collected from a relay (`StoredMessage`): store and sync it at once. Ok when the
/// message may be confirmed (stored, duplicate, or refused for good); Err for a local failure
/// (leave it at the relay).
pub async fn on_relay_chunk(
    node: &Node,
    sender: IdentityKey,
    blob: Vec<u8>,
) -> Result<(), TransferError> {
    let n = node.clone();
    let me = node.id();
    let r = tokio::task::spawn_blocking(move || {
        let files = n.files();
        let (id, _) = files.store_chunk(&me, &sender, &blob)?;
        files.with(|t| {
            if let Some(e) = t.get_mut(&id) {
                e.via = Some("relay");
            }
        });
        let synced = files.sync(&id)?;
        Ok::<_, FileError>((id, synced))
    })
    .await
    .map_err(|_| NodeError::ShuttingDown)?;
    match r {
        Ok((id, (_, true))) => {
            finish_incoming(node, id).await;
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(e @ (FileError::DiskFull(_) | FileError::Io { .. })) => Err(e.into()),
        Err(e) => {
            tracing::debug!(peer = %sender.short(), error = %e, "relayed chunk dropped");
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The direct stream, recipient side.

/// Serves a direct stream opened by `FILE_OPEN` on an inbound connection.
pub async fn serve_stream(node: Node, conn: TcpConnection, open: FileOpen) {
    let files = node.files();
    let peer = conn.peer.key();
    let id = TransferId(open.transfer_id);
    let me = node.id();
    let ok = files.with(|t| {
        t.get(&id).is_some_and(|e| {
            e.record.direction == Direction::In
                && e.record.peer == peer.to_string()
                && e.record.state == State::Receiving
        })
    });
    let chunk_size = files
        .with(|t| t.get(&id).map(|e| e.record.chunk_size))
        .unwrap_or(crate::files::chunk::MAX_CHUNK_SIZE);
    let via = conn.transport.direct_path();
    let (_, reader, mut conn) = conn.split();
    if !ok {
        let _ = conn
            .send(&Envelope::ErrorMsg(ErrorMsg {
                code: 0x4001,
                message: "no such receiving transfer".into(),
            }))
            .await;
        return;
    }
    files.with(|t| {
        if let Some(e) = t.get_mut(&id) {
            e.via = Some(via);
        }
    });
    let mut rounds = 0u32;
    let mut need = files.missing(&id);
    if conn
        .send(&Envelope::FileNeed(FileNeed {
            transfer_id: id.0,
            missing: need.clone(),
        }))
        .await
        .is_err()
    {
        return;
    }
    // Envelopes are read and decrypted by their own task, a short queue ahead of the chunk
    // writes below (both cores work). The frames come through a read-ahead buffer: one
    // syscall for several frames instead of three per frame.
    let mut reader = reader.map_inner(|r| tokio::io::BufReader::with_capacity(READ_BUF, r));
    let (tx, mut rx) = mpsc::channel(queue_len(chunk_size).min(RECV_QUEUE));
    let _reading = AbortOnDrop(tokio::spawn(async move {
        while let Ok(Ok(env)) = tokio::time::timeout(STREAM_IDLE, reader.recv()).await {
            if tx.send(env).await.is_err() {
                return;
            }
        }
    }));
    // Written chunks are made durable (fdatasync, then the `have` bitmap) on a blocking
    // thread of their own, one sync at a time, while the next chunks are decrypted and
    // written; each finished sync is acked. The writes wait for a sync only when twice
    // [`SYNC_EVERY`] chunks are unsynced, which bounds what a crash costs (docs/FILES.md).
    let every = SYNC_EVERY;
    let mut syncing: Option<tokio::task::JoinHandle<Result<(u64, bool), FileError>>> = None;
    let start_sync = |node: &Node| {
        let f = node.clone();
        Some(tokio::task::spawn_blocking(move || f.files().sync(&id)))
    };
    loop {
        let env = tokio::select! {
            biased;
            done = join_opt(&mut syncing) => {
                syncing = None;
                if !ack_sync(&mut conn, id, done).await {
                    break;
                }
                continue;
            }
            env = rx.recv() => env,
        };
        let Some(env) = env else { break };
        match env {
            Envelope::FileData(FileData { blob }) => {
                let f = node.clone();
                let r =
                    tokio::task::spawn_blocking(move || f.files().store_chunk(&me, &peer, &blob))
                        .await;
                let Ok(r) = r else { break };
                match r {
                    Ok((cid, _)) if cid != id => break,
                    Ok(_) => {}
                    Err(FileError::Chunk(e)) => {
                        tracing::warn!(transfer = %id, error = %e, "chunk refused on the direct stream");
                    }
                    Err(e) => {
                        tracing::warn!(transfer = %id, error = %e, "cannot store a chunk; closing the stream");
                        let _ = conn
                            .send(&Envelope::FileAck(FileAck {
                                transfer_id: id.0,
                                stored: files.stored(&id),
                                state: 0,
                                error: e.to_string(),
                            }))
                            .await;
                        break;
                    }
                }
                if syncing.is_some() && files.needs_sync(&id, 2 * every) {
                    // Too far ahead of the disk: wait for the running sync.
                    let done = join_opt(&mut syncing).await;
                    syncing = None;
                    if !ack_sync(&mut conn, id, done).await {
                        break;
                    }
                }
                if syncing.is_none() && files.needs_sync(&id, every) {
                    syncing = start_sync(&node);
                }
            }
            Envelope::FileSent(FileSent { transfer_id }) if transfer_id == id.0 => {
                if syncing.is_some() {
                    let done = join_opt(&mut syncing).await;
                    syncing = None;
                    if !ack_sync(&mut conn, id, done).await {
                        break;
                    }
                }
                let f = node.clone();
                let synced = tokio::task::spawn_blocking(move || f.files().sync(&id)).await;
                let (stored, full) = match synced {
                    Ok(Ok(x)) => x,
                    _ => break,
                };
                if full {
                    let state = finish_incoming(&node, id).await;
                    let error = files
                        .with(|t| t.get(&id).and_then(|e| e.record.error.clone()))
                        .unwrap_or_default();
                    let code = match state {
                        State::Done => 1,
                        State::Failed => 2,
                        _ => 0,
                    };
                    let _ = conn
                        .send(&Envelope::FileAck(FileAck {
                            transfer_id: id.0,
                            stored,
                            state: code,
                            error,
                        }))
                        .await;
                    break;
                }
                let now = files.missing(&id);
                rounds += if now == need { 1 } else { 0 };
                if rounds >= MAX_ROUNDS {
                    tracing::warn!(transfer = %id, "direct stream makes no progress; closing");
                    break;
                }
                need = now;
                if conn
                    .send(&Envelope::FileNeed(FileNeed {
                        transfer_id: id.0,
                        missing: need.clone(),
                    }))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            other => {
                tracing::debug!(transfer = %id, kind = other.kind(), "unexpected envelope on a file stream; closing");
                break;
            }
        }
    }
    if let Some(h) = syncing {
        let _ = h.await;
    }
    let f = node.clone();
    let _ = tokio::task::spawn_blocking(move || f.files().sync(&id)).await;
}

/// Read-ahead buffer of a receiving direct stream.
const READ_BUF: usize = 256 * 1024;

/// Waits for the sync in `h`; pending forever when there is none (for `select!`).
async fn join_opt<T>(
    h: &mut Option<tokio::task::JoinHandle<T>>,
) -> Result<T, tokio::task::JoinError> {
    match h {
        Some(j) => j.await,
        None => std::future::pending().await,
    }
}

/// Acks a finished background sync to the sender; false when the stream must close.
async fn ack_sync<W: tokio::io::AsyncWrite + Unpin>(
    conn: &mut crate::noise::stream::Writer<W>,
    id: TransferId,
    done: Result<Result<(u64, bool), FileError>, tokio::task::JoinError>,
) -> bool {
    match done {
        Ok(Ok((stored, _))) => {
            let _ = conn
                .send(&Envelope::FileAck(FileAck {
                    transfer_id: id.0,
                    stored,
                    state: 0,
                    error: String::new(),
                }))
                .await;
            true
        }
        Ok(Err(e)) => {
            tracing::warn!(transfer = %id, error = %e, "cannot sync received chunks; closing the stream");
            false
        }
        Err(_) => false,
    }
}

// ---------------------------------------------------------------------------------------------
// The sender.

/// Starts the sender task of an outgoing transfer unless it runs already.
pub fn start_sender(node: &Node, id: TransferId) {
    let files = node.files();
    let start = files.with(|t| match t.get_mut(&id) {
        Some(e)
            if e.record.direction == Direction::Out
                && e.record.state == State::Sending
                && !e.task =>
        {
            e.task = true;
            true
        }
        _ => false,
    });
    if start {
        let node = node.clone();
        tokio::spawn(async move {
            sender(&node, id).await;
            node.files().with(|t| {
                if let Some(e) = t.get_mut(&id) {
                    e.task = false;
                }
            });
        });
    }
}

enum Round {
    /// Final state reached.
    Finished,
    /// Sent what was asked; wait for the recipient.
    Waiting,
    /// No path worked.
    Failed,
}

async fn sender(node: &Node, id: TransferId) {
    let files = node.files();
    let mut stop = node.stop_signal();
    let mut backoff = Duration::from_millis(500);
    let Some(wake) = files.with(|t| t.get(&id).map(|e| e.wake.clone())) else {
        return;
    };
    for _ in 0..100_000u32 {
        if *stop.borrow() {
            return;
        }
        let Some(rec) = files.with(|t| t.get(&id).map(|e| e.record.clone())) else {
            return;
        };
        if rec.state != State::Sending {
            return;
        }
        let Some(path) = rec.path.clone() else { return };
        let Ok(contact) = node.resolve(&rec.peer) else {
            return;
        };
        // Direct first.
        let mut round = Round::Failed;
        for ep in contact.endpoints.iter().take(4) {
            match send_direct(node, &rec, &path, ep, contact.identity.key()).await {
                Ok(r) => {
                    round = r;
                    break;
                }
                Err(e) => {
                    tracing::debug!(transfer = %id, endpoint = %ep, error = %e, "direct file stream failed");
                    if matches!(e, TransferError::File(FileError::SourceChanged(_))) {
                        let _ = files.update(&id, |en| {
                            Ok(en
                                .record
                                .finish(State::Failed, Some(e.to_string()), now_ms()))
                        });
                        let _ = send_message(
                            node,
                            &rec.peer,
                            &FileMessage::Cancel(id, e.to_string()),
                            Some(&rec.name),
                        )
                        .await;
                        return;
                    }
                }
            }
        }
        if matches!(round, Round::Failed) && !contact.relays.is_empty() {
            match send_relay(node, &rec, &path, &contact).await {
                Ok(r) => round = r,
                Err(e) => {
                    tracing::info!(transfer = %id, error = %e, "file chunks cannot go through a relay now");
                    let msg = e.to_string();
                    let _ = files.update(&id, |en| {
                        en.record.error = Some(msg.clone());
                        Ok(true)
                    });
                }
            }
        }
        match round {
            Round::Finished => return,
            Round::Waiting => backoff = Duration::from_millis(500),
            Round::Failed => backoff = (backoff * 2).min(Duration::from_secs(30)),
        }
        let wait = match round {
            Round::Waiting => STALL * 2,
            _ => backoff,
        };
        tokio::select! {
            _ = wake.notified() => {}
            _ = tokio::time::sleep(wait) => {}
            _ = crate::shutdown::stopped(&mut stop) => return,
        }
    }
}

/// Bytes of sealed chunks the sender reads ahead of its socket per transfer (at least
/// [`MIN_QUEUE`] chunks).
pub const QUEUE_BYTES: usize = 4 * 1024 * 1024;
/// The smallest read-ahead queue, in chunks.
const MIN_QUEUE: usize = 2;

/// Chunks in a read-ahead queue of a transfer with `chunk_size`.
fn queue_len(chunk_size: u32) -> usize {
    (QUEUE_BYTES / (chunk_size as usize).max(1)).max(MIN_QUEUE)
}

/// Reads and seals `indexes` on a blocking thread, [`READ_BATCH`] at a time, into a bounded
/// queue; an error ends the queue. Dropping the receiver stops the reader.
fn read_ahead(
    path: &Path,
    rec: &Record,
    key: &ChunkKey,
    indexes: Vec<u64>,
) -> mpsc::Receiver<Result<Vec<u8>, FileError>> {
    let (tx, rx) = mpsc::channel(queue_len(rec.chunk_size));
    let (p, r, k) = (path.to_path_buf(), rec.clone(), key.clone());
    tokio::task::spawn_blocking(move || {
        for batch in indexes.chunks(READ_BATCH as usize) {
            match read_chunks(&p, &r, &k, batch) {
                Ok(blobs) => {
                    for (_, b) in blobs {
                        if tx.blocking_send(Ok(b)).is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    rx
}

/// Reads and seals chunks `indexes` of the source file (blocking IO).
fn read_chunks(
    path: &Path,
    rec: &Record,
    key: &ChunkKey,
    indexes: &[u64],
) -> Result<Vec<(u64, Vec<u8>)>, FileError> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path)
        .map_err(|e| FileError::from_io(format!("reading {}", path.display()), e))?;
    let meta = f
        .metadata()
        .map_err(|e| FileError::from_io(format!("reading {}", path.display()), e))?;
    if meta.len() != rec.size {
        return Err(FileError::SourceChanged(path.to_path_buf()));
    }
    let shape = rec.shape();
    let mut out = Vec::with_capacity(indexes.len());
    for &i in indexes {
        let Some(len) = shape.chunk_len(i) else {
            continue;
        };
        // Read straight into the blob and sealed there in place.
        let blob = crate::files::chunk::seal_encoded(
            &mut rand::rngs::OsRng,
            key,
            &rec.id,
            &shape,
            i,
            len as usize,
            |buf| {
                f.read_exact_at(buf, shape.offset(i))
                    .map_err(|e| FileError::from_io(format!("reading {}", path.display()), e))
            },
        )?;
        out.push((i, blob));
    }
    Ok(out)
}

fn indexes(ranges: &[(u64, u64)], total: u64, skip: &Bitmap) -> Vec<u64> {
    let mut v = Vec::new();
    for &(a, b) in ranges {
        for i in a..b.min(total) {
            if !skip.get(i) {
                v.push(i);
            }
        }
    }
    v
}

/// Paces sending at `rate` bytes/s (0 = no limit).
struct Pace {
    rate: u64,
    start: Instant,
    bytes: u64,
}

impl Pace {
    async fn sent(&mut self, n: usize) {
        if self.rate == 0 {
            return;
        }
        self.bytes += n as u64;
        let due = Duration::from_secs_f64(self.bytes as f64 / self.rate as f64);
        let el = self.start.elapsed();
        if due > el {
            tokio::time::sleep(due - el).await;
        }
    }
}

async fn send_direct(
    node: &Node,
    rec: &Record,
    path: &Path,
    ep: &Endpoint,
    peer: IdentityKey,
) -> Result<Round, TransferError> {
    let endpoint = ep.to_string();
    let files = node.files();
    let id = rec.id;
    let me = node.identity();
    let key = files
        .with(|t| t.get_mut(&id).and_then(|e| e.key(&me.key())))
        .ok_or_else(|| FileError::Corrupt("transfer secret".into()))?;
    let conn = node
        .dial_direct(ep, peer)
        .await
        .map_err(|e| FileError::Io {
            context: format!("connecting to {endpoint}"),
            source: std::io::Error::other(e.to_string()),
        })?;
    let via = conn.transport.direct_path();
    files.with(|t| {
        if let Some(e) = t.get_mut(&id) {
            e.via = Some(via);
        }
    });
    let (_, mut reader, mut writer) = conn.split();
    let io = |e: crate::noise::stream::ConnectionError| FileError::Io {
        context: format!("file stream to {endpoint}"),
        source: std::io::Error::other(e.to_string()),
    };
    writer
        .send(&Envelope::FileOpen(FileOpen { transfer_id: id.0 }))
        .await
        .map_err(io)?;
    // Acks update progress as they come; requests and outcomes go to the loop below.
    let (tx, mut rx) = mpsc::unbounded_channel::<Envelope>();
    let n2 = node.clone();
    let reader_task = tokio::spawn(async move {
        loop {
            match reader.recv().await {
                Ok(Envelope::FileAck(a)) if a.state == 0 && a.error.is_empty() => {
                    let f = n2.files();
                    f.with(|t| {
                        if let Some(e) = t.get_mut(&id) {
                            e.peer_done = e.peer_done.max(a.stored);
                        }
                    });
                    f.emit(&id);
                }
                Ok(env) => {
                    if tx.send(env).is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    });
    let _guard = AbortOnDrop(reader_task);
    let mut pace = Pace {
        rate: files.cfg.max_send_rate,
        start: Instant::now(),
        bytes: 0,
    };
    for _ in 0..MAX_ROUNDS * 2 {
        let env = match tokio::time::timeout(STREAM_IDLE * 10, rx.recv()).await {
            Ok(Some(env)) => env,
            _ => return Ok(Round::Failed),
        };
        match env {
            Envelope::FileNeed(FileNeed { missing, .. }) => {
                files.with(|t| {
                    if let Some(e) = t.get_mut(&id) {
                        e.record.error = None;
                        let missing_count: u64 =
                            missing.iter().map(|(a, b)| b.saturating_sub(*a)).sum();
                        e.peer_done = e.record.total.saturating_sub(missing_count);
                    }
                });
                files.emit(&id);
                let all = indexes(
                    &missing[..missing.len().min(MAX_RANGES)],
                    rec.total,
                    &Bitmap::new(0),
                );
                // Chunks are read and sealed on a blocking thread ahead of the socket, a
                // bounded queue apart, so disk, chunk AEAD and Noise overlap.
                let mut blobs = read_ahead(path, rec, &key, all);
                let mut n_sent = 0u64;
                while let Some(blob) = blobs.recv().await {
                    let blob = blob?;
                    let n = blob.len();
                    writer
                        .send(&Envelope::FileData(FileData { blob }))
                        .await
                        .map_err(io)?;
                    files.with(|t| {
                        if let Some(e) = t.get_mut(&id) {
                            e.sent_run += 1;
                        }
                    });
                    pace.sent(n).await;
                    n_sent += 1;
                    if n_sent % READ_BATCH == 0
                        && files.with(|t| {
                            t.get(&id).is_none_or(|e| e.record.state != State::Sending)
                        })
                    {
                        return Ok(Round::Finished);
                    }
                }
                writer
                    .send(&Envelope::FileSent(FileSent { transfer_id: id.0 }))
                    .await
                    .map_err(io)?;
            }
            Envelope::FileAck(a) => {
                let (state, why) = match a.state {
                    1 => (State::Done, None),
                    2 => (State::Failed, Some(a.error.clone())),
                    _ => {
                        // The recipient cannot store now (its disk is full...): retry later.
                        let msg = format!("recipient: {}", a.error);
                        let _ = files.update(&id, |e| {
                            e.record.error = Some(msg.clone());
                            Ok(true)
                        });
                        return Ok(Round::Failed);
                    }
                };
                let _ = files.update(&id, |e| {
                    e.peer_done = a.stored;
                    Ok(e.record.finish(state, why.clone(), now_ms()))
                });
                tracing::info!(transfer = %id, state = state.name(), "file transfer finished");
                return Ok(Round::Finished);
            }
            Envelope::ErrorMsg(e) => {
                return Err(FileError::Io {
                    context: format!("file stream to {endpoint}"),
                    source: std::io::Error::other(e.message),
                }
                .into())
            }
            _ => return Ok(Round::Failed),
        }
    }
    Ok(Round::Failed)
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Stores the requested chunks at one of the recipient's relays.
async fn send_relay(
    node: &Node,
    rec: &Record,
    path: &Path,
    contact: &ContactIdentity,
) -> Result<Round, TransferError> {
    let files = node.files();
    let id = rec.id;
    let me = node.identity();
    let recipient = contact.identity.key();
    let (key, need, sent) = files
        .with(|t| {
            t.get_mut(&id).and_then(|e| {
                e.key(&me.key())
                    .map(|k| (k, e.need.clone(), e.have.clone()))
            })
        })
        .ok_or_else(|| FileError::Corrupt("transfer secret".into()))?;
    let todo = indexes(&need, rec.total, &sent);
    let blob_max = rec.chunk_size as usize + BLOB_OVERHEAD;
    let mut last_err = None;
    for hint in contact.relays.iter().take(4) {
        let client = match node
            .relay_connection(&hint.endpoint, IdentityKey(hint.relay_key))
            .await
        {
            Ok(c) => c,
            Err(e) => {
                last_err = Some(FileError::Io {
                    context: format!("connecting to relay {}", hint.endpoint),
                    source: std::io::Error::other(e.to_string()),
                });
                continue;
            }
        };
        let max = client.capabilities().max_message_size;
        if (max as usize) < blob_max {
            last_err = Some(FileError::RelayTooSmall {
                relay: hint.endpoint.to_string(),
                max,
                need: blob_max,
            });
            continue;
        }
        files.with(|t| {
            if let Some(e) = t.get_mut(&id) {
                e.via = Some("relay");
            }
        });
        let mut pace = Pace {
            rate: files.cfg.max_send_rate,
            start: Instant::now(),
            bytes: 0,
        };
        let mut failed = false;
        'batches: for batch in todo.chunks(READ_BATCH as usize) {
            let (p, r, k, b) = (path.to_path_buf(), rec.clone(), key.clone(), batch.to_vec());
            let blobs = tokio::task::spawn_blocking(move || read_chunks(&p, &r, &k, &b))
                .await
                .map_err(|_| NodeError::ShuttingDown)??;
            for (i, blob) in blobs {
                let n = blob.len();
                let mid = ChunkBlob::relay_message_id(&id, i);
                let mut tries = 0u32;
                loop {
                    tries += 1;
                    match client.store(recipient, blob.clone(), mid).await {
                        Ok(_) => break,
                        Err(e)
                            if tries < 60
                                && matches!(
                                    e.code(),
                                    Some(RelayErrorCode::QuotaFull | RelayErrorCode::RateLimited)
                                ) =>
                        {
                            // Respect the relay: wait until the recipient drained some.
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        Err(e) => {
                            last_err = Some(FileError::Io {
                                context: format!("storing at relay {}", hint.endpoint),
                                source: std::io::Error::other(e.to_string()),
                            });
                            if !matches!(e, RelayClientError::DuplicateInFlight(_)) {
                                node.drop_relay_connection(
                                    &hint.endpoint,
                                    IdentityKey(hint.relay_key),
                                    &client,
                                );
                            }
                            failed = true;
                            break 'batches;
                        }
                    }
                }
                let save = files.with(|t| {
                    t.get_mut(&id).map(|e| {
                        e.have.set(i);
                        e.sent_run += 1;
                        (e.sent_run % SYNC_EVERY as u64 == 0).then(|| e.have.clone())
                    })
                });
                if let Some(Some(b)) = save {
                    let _ = files.dir.save_bitmap(&id, "sent", &b);
                }
                files.emit(&id);
                pace.sent(n).await;
                if files.with(|t| t.get(&id).is_none_or(|e| e.record.state != State::Sending)) {
                    return Ok(Round::Finished);
                }
            }
        }
        if failed {
            continue;
        }
        if let Some(b) = files.with(|t| t.get(&id).map(|e| e.have.clone())) {
            let _ = files.dir.save_bitmap(&id, "sent", &b);
        }
        let _ = files.update(&id, |e| {
            let changed = e.record.error.is_some();
            e.record.error = None;
            Ok(changed)
        });
        return Ok(Round::Waiting);
    }
    match last_err {
        Some(e) => Err(e.into()),
        None => Ok(Round::Failed),
    }
}

// ---------------------------------------------------------------------------------------------
// Start-up and the recipient's stall timer.

/// A stalled incoming transfer: id, sender, name, missing ranges, complete.
type Stalled = (TransferId, String, String, Vec<(u64, u64)>, bool);

/// Runs for the node's lifetime: resumes senders, and asks senders of stalled incoming
/// transfers for their missing chunks.
pub async fn run(node: Node) {
    let files = node.files();
    let mut stop = node.stop_signal();
    let ids: Vec<TransferId> = files.with(|t| {
        t.values()
            .filter(|e| e.record.direction == Direction::Out && e.record.state == State::Sending)
            .map(|e| e.record.id)
            .collect()
    });
    for id in ids {
        start_sender(&node, id);
    }
    // Incoming transfers that were verifying when we stopped: verify again.
    let verifying: Vec<TransferId> = files.with(|t| {
        t.values_mut()
            .filter(|e| e.record.direction == Direction::In && e.record.state == State::Verifying)
            .map(|e| {
                e.record.state = State::Receiving;
                e.record.id
            })
            .collect()
    });
    for id in verifying {
        finish_incoming(&node, id).await;
    }
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = crate::shutdown::stopped(&mut stop) => return,
        }
        let stalled: Vec<Stalled> = files.with(|t| {
            t.values_mut()
                .filter(|e| {
                    e.record.direction == Direction::In && e.record.state == State::Receiving
                })
                .filter(|e| {
                    e.last_chunk.elapsed() >= e.next_need
                        && e.last_need.is_none_or(|l| l.elapsed() >= e.next_need)
                })
                .map(|e| {
                    e.last_need = Some(Instant::now());
                    e.next_need = (e.next_need * 2).min(STALL_MAX);
                    (
                        e.record.id,
                        e.record.peer.clone(),
                        e.record.name.clone(),
                        e.have.missing(MAX_RANGES),
                        e.have.is_full(),
                    )
                })
                .collect()
        });
        for (id, peer, name, missing, full) in stalled {
            if full {
                finish_incoming(&node, id).await;
                continue;
            }
            tracing::info!(transfer = %id, ranges = missing.len(), "file transfer stalled; asking the sender for the missing chunks");
            if let Err(e) =
                send_message(&node, &peer, &FileMessage::Need(id, missing), Some(&name)).await
            {
                tracing::debug!(transfer = %id, error = %e, "need not sent");
            }
        }
    }
}
