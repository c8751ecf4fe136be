//! The sled implementation of [`Store`](super::Store), with damage detection (see the
//! module docs of [`crate::store`]) and the offline restore of a backup.

use super::{Batch, DbError, Entries, Store, StoreError, Tree};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Appended to the database directory's name for its commit marker file (`db` → `db.commit`).
pub const MARKER_SUFFIX: &str = ".commit";

/// The physical key of the manifest record (0xFF is no [`Tree`]).
const MANIFEST_KEY: &[u8] = &[0xFF, b'M'];
const MANIFEST_MAGIC: &[u8; 8] = b"SRMPMAN1";
const MARKER_MAGIC: &[u8; 8] = b"SRMPCMT1";
/// Tree slots in the manifest (tree bytes 0..16).
const SLOTS: usize = 16;
const MANIFEST_LEN: usize = 8 + 16 + 8 + SLOTS * 8 + 4;
const MARKER_LEN: usize = 8 + 16 + 8 + 4;
/// The marker is rewritten after a flush at most this often (and always at close).
const MARKER_INTERVAL: Duration = Duration::from_secs(1);
/// The advice a damaged store carries unless the node or relay sets its own.
const DEFAULT_ADVICE: &str =
    "Do not use this store: restore it from a backup (`sremp restore BACKUP --key KEYFILE --force`)";

/// What the database committed, as the manifest record and the in-memory state hold it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Manifest {
    store_id: [u8; 16],
    /// Batches applied since the store was created.
    seq: u64,
    /// Records per tree byte.
    counts: [u64; SLOTS],
}

impl Manifest {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MANIFEST_LEN);
        out.extend_from_slice(MANIFEST_MAGIC);
        out.extend_from_slice(&self.store_id);
        out.extend_from_slice(&self.seq.to_be_bytes());
        for c in self.counts {
            out.extend_from_slice(&c.to_be_bytes());
        }
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(b: &[u8]) -> Option<Manifest> {
        if b.len() != MANIFEST_LEN || b.get(..8)? != MANIFEST_MAGIC {
            return None;
        }
        let (body, crc) = b.split_at(MANIFEST_LEN - 4);
        if crc32fast::hash(body).to_le_bytes() != crc {
            return None;
        }
        let store_id: [u8; 16] = body.get(8..24)?.try_into().ok()?;
        let seq = u64::from_be_bytes(body.get(24..32)?.try_into().ok()?);
        let mut counts = [0u64; SLOTS];
        for (i, c) in counts.iter_mut().enumerate() {
            let at = 32 + i * 8;
            *c = u64::from_be_bytes(body.get(at..at + 8)?.try_into().ok()?);
        }
        Some(Manifest {
            store_id,
            seq,
            counts,
        })
    }
}

/// The commit marker: the last sequence known durable, outside the database.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Marker {
    store_id: [u8; 16],
    seq: u64,
}

impl Marker {
    fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(MARKER_LEN);
        out.extend_from_slice(MARKER_MAGIC);
        out.extend_from_slice(&self.store_id);
        out.extend_from_slice(&self.seq.to_be_bytes());
        let crc = crc32fast::hash(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    fn decode(b: &[u8]) -> Option<Marker> {
        if b.len() != MARKER_LEN || b.get(..8)? != MARKER_MAGIC {
            return None;
        }
        let (body, crc) = b.split_at(MARKER_LEN - 4);
        if crc32fast::hash(body).to_le_bytes() != crc {
            return None;
        }
        Some(Marker {
            store_id: body.get(8..24)?.try_into().ok()?,
            seq: u64::from_be_bytes(body.get(24..32)?.try_into().ok()?),
        })
    }
}

/// `value ‖ crc32(physical key ‖ value)` (little-endian).
fn seal(pkey: &[u8], value: &[u8]) -> Vec<u8> {
    let mut h = crc32fast::Hasher::new();
    h.update(pkey);
    h.update(value);
    let mut out = Vec::with_capacity(value.len() + 4);
    out.extend_from_slice(value);
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out
}

/// The value of a sealed record, or `None` when its checksum does not match.
fn unseal<'a>(pkey: &[u8], stored: &'a [u8]) -> Option<&'a [u8]> {
    let split = stored.len().checked_sub(4)?;
    let (value, crc) = stored.split_at(split);
    let mut h = crc32fast::Hasher::new();
    h.update(pkey);
    h.update(value);
    (h.finalize().to_le_bytes() == crc).then_some(value)
}

fn unseal_owned(tree: Tree, pkey: &[u8], stored: &[u8]) -> Result<Vec<u8>, StoreError> {
    unseal(pkey, stored)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| StoreError::Corrupt {
            tree,
            detail: "record checksum mismatch (the store file is damaged)".into(),
        })
}

/// A [`Store`] on a sled database in one directory.
///
/// Durability: sled 0.34 writes its log with `sync_file_range`, which waits for the data to
/// reach the device but neither persists file metadata (the log file grows) nor flushes the
/// drive's volatile write cache. That survives a process crash but not a power cut. So
/// [`Store::flush`] follows sled's flush with `fdatasync` on sled's data file, and only then is
/// anything acknowledged.
///
/// Group commit: concurrent [`Store::flush`] calls share one sled flush + `fdatasync`. A caller
/// takes a ticket after its writes were applied; a flush that *starts* after the ticket was
/// taken covers those writes. One caller at a time leads a flush; the others wait for one that
/// covers their ticket (leader/follower, as databases do for their write-ahead logs).
///
/// Failed writes and rollback: sled applies a batch to its in-memory tree at once and writes
/// it to disk only when flushed; after a failed write (ENOSPC) sled keeps failing every later
/// operation until the database is reopened. So after any failed apply or flush this store
/// drops the sled handle and reopens the directory: the in-memory state becomes again exactly
/// what is on disk (writes that were applied but not durable are gone), and the
/// [generation](Store::generation) changes. If reopening fails too (the disk is still full),
/// every call answers the typed error and retries the reopen at most once per
/// [`REOPEN_INTERVAL`], so the store resumes by itself when space returns. A flush on the
/// thread that applied a batch before a rollback fails (that batch is gone), so
/// apply-then-flush on one thread never reports a lost batch as durable.
///
/// Integrity: see the [module docs](crate::store). Batches are applied one at a time (each
/// updates the manifest record inside the same sled batch); a reopen after a rollback verifies
/// the database again.
#[derive(Clone)]
pub struct SledStore {
    shared: Arc<Shared>,
}

/// How often a store whose reopen failed tries again.
pub const REOPEN_INTERVAL: Duration = Duration::from_millis(500);

/// One opened (and verified) database.
#[derive(Clone)]
struct Open {
    db: sled::Db,
    data_file: Arc<std::fs::File>,
    /// The committed manifest; its lock serializes applies (and export).
    manifest: Arc<Mutex<Manifest>>,
}

struct Shared {
    id: u64,
    dir: PathBuf,
    /// The commit marker file, when this store keeps one.
    marker: Option<PathBuf>,
    open: std::sync::RwLock<Option<Open>>,
    /// Bumped by every rollback (reopen after a failed write).
    generation: std::sync::atomic::AtomicU64,
    /// When the last reopen was tried, and the error it (or the write that closed us) gave.
    closed: Mutex<Option<(Instant, StoreError)>>,
    flusher: Flusher,
    /// When the marker was last written.
    marker_written: Mutex<Option<Instant>>,
    /// Flushes led (each one sled flush + `fdatasync`).
    flushes: std::sync::atomic::AtomicU64,
}

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

thread_local! {
    /// (store id, generation) of this thread's last apply not yet covered by a flush.
    static APPLIED: std::cell::Cell<(u64, u64)> = const { std::cell::Cell::new((0, 0)) };
}

#[derive(Default)]
struct FlushState {
    /// Tickets handed out so far.
    issued: u64,
    /// Every ticket up to this one is durable.
    durable: u64,
    /// A flush is running.
    running: bool,
}

#[derive(Default)]
struct Flusher {
    state: Mutex<FlushState>,
    done: Condvar,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").finish_non_exhaustive()
    }
}

fn io(e: sled::Error) -> StoreError {
    match e {
        sled::Error::Io(ioe) => StoreError::from_io("sled", ioe),
        other => StoreError::Db(DbError::Sled(other)),
    }
}
fn poisoned() -> StoreError {
    StoreError::Poisoned
}

fn damaged(path: &Path, detail: impl Into<String>) -> StoreError {
    StoreError::Damaged {
        path: path.display().to_string(),
        detail: detail.into(),
        advice: DEFAULT_ADVICE.into(),
    }
}

/// The commit marker file of the database directory `dir`.
pub fn marker_path(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(MARKER_SUFFIX);
    dir.with_file_name(name)
}

fn read_marker(path: &Path) -> Result<Option<Marker>, StoreError> {
    match std::fs::read(path) {
        Ok(b) => Marker::decode(&b).map(Some).ok_or_else(|| {
            damaged(
                path,
                "the commit marker is corrupt, so the database cannot be checked for lost data",
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(StoreError::from_io(
            &format!("reading {}", path.display()),
            e,
        )),
    }
}

/// Writes the marker atomically: a temporary file, fdatasync, rename.
fn write_marker(path: &Path, m: &Marker) -> Result<(), StoreError> {
    let tmp = path.with_extension("commit-tmp");
    fn write(tmp: &Path, path: &Path, bytes: &[u8]) -> std::io::Result<()> {
        use std::io::Write;
        let mut f = std::fs::File::create(tmp)?;
        f.write_all(bytes)?;
        f.sync_data()?;
        std::fs::rename(tmp, path)
    }
    write(&tmp, path, &m.encode())
        .map_err(|e| StoreError::from_io(&format!("writing {}", path.display()), e))
}

/// sled's `conf` file: its body followed by a little-endian CRC-32. sled itself reports a
/// damaged one as "created using a sled version earlier than 0.29"; name it plainly instead.
fn check_conf(dir: &Path) -> Result<(), StoreError> {
    let path = dir.join("conf");
    let b = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(StoreError::from_io(
                &format!("reading {}", path.display()),
                e,
            ))
        }
    };
    let ok = b
        .len()
        .checked_sub(4)
        .filter(|&n| n > 4)
        .map(|n| b.split_at(n))
        .is_some_and(|(body, crc)| crc32fast::hash(body).to_le_bytes() == crc);
    if ok {
        Ok(())
    } else {
        Err(damaged(
            &path,
            "the database configuration file is corrupt (checksum mismatch)",
        ))
    }
}

/// How long opening waits for a lock released by a handle this process just dropped.
///
/// sled takes an exclusive `flock` on its `db` file and releases it only when the last clone
/// of the file handle is dropped, and its background threads (log writes, segment truncation)
/// hold clones for a moment after the `sled::Db` itself is gone. So dropping a store and
/// reopening the same directory at once (a node restarted in-process, a rollback's reopen)
/// can find the lock still held: measured 55 ms on two loaded cores. A store held by another
/// process stays locked past this wait and is refused with [`StoreError::Locked`].
pub const LOCK_WAIT: Duration = Duration::from_secs(2);

fn open_sled(dir: &Path) -> Result<sled::Db, StoreError> {
    let start = Instant::now();
    loop {
        match open_sled_once(dir) {
            Err(StoreError::Locked(_)) if start.elapsed() < LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

fn open_sled_once(dir: &Path) -> Result<sled::Db, StoreError> {
    let d = dir.to_path_buf();
    let opened = std::panic::catch_unwind(move || {
        sled::Config::new()
            .path(d)
            .mode(sled::Mode::HighThroughput)
            .flush_every_ms(None)
            .open()
    });
    match opened {
        Ok(Ok(db)) => Ok(db),
        Ok(Err(sled::Error::Io(ref ioe)))
            if ioe.kind() == std::io::ErrorKind::WouldBlock || ioe.to_string().contains("lock") =>
        {
            Err(StoreError::Locked(dir.display().to_string()))
        }
        Ok(Err(sled::Error::Io(ioe))) if ioe.kind() != std::io::ErrorKind::UnexpectedEof => Err(
            StoreError::from_io(&format!("opening {}", dir.display()), ioe),
        ),
        Ok(Err(e)) => Err(damaged(
            &dir.join("db"),
            format!("the database could not be read ({e})"),
        )),
        Err(_) => Err(damaged(
            &dir.join("db"),
            "the database could not be read (its reader failed on the damaged data)",
        )),
    }
}

/// Opens the database in `dir` and verifies it (see [`verify`]); with `marker`, against its
/// commit marker.
fn open_dir(dir: &Path, marker: Option<&Path>) -> Result<Open, StoreError> {
    let mark = match marker {
        Some(p) => read_marker(p)?,
        None => None,
    };
    let db_file = dir.join("db");
    if let (Some(m), Some(p)) = (&mark, marker) {
        if !db_file.exists() {
            return Err(damaged(
                &db_file,
                format!(
                    "the database file is missing, but {} records {} committed batches",
                    p.display(),
                    m.seq
                ),
            ));
        }
    }
    check_conf(dir)?;
    let db = open_sled(dir)?;
    #[cfg(unix)]
    restrict(dir, 2)
        .map_err(|e| StoreError::from_io(&format!("making {} owner-only", dir.display()), e))?;
    let data_file = std::fs::File::open(&db_file)
        .map_err(|e| StoreError::from_io(&format!("opening {}", db_file.display()), e))?;
    let manifest = verify(&db, &db_file, mark.as_ref(), marker)?;
    Ok(Open {
        db,
        data_file: Arc::new(data_file),
        manifest: Arc::new(Mutex::new(manifest)),
    })
}

/// Sets owner-only modes on the database directory and everything sled created in it (dirs
/// 0700, files 0600), whatever the umask was: the database holds message history in clear.
#[cfg(unix)]
fn restrict(dir: &Path, depth: usize) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ft = entry.file_type()?;
        if ft.is_dir() && depth > 0 {
            restrict(&entry.path(), depth - 1)?;
        } else if ft.is_file() {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

impl SledStore {
    /// Opens (or creates) the database in `dir`, verifying every record checksum and the
    /// manifest, without a commit marker (tests, tools).
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Self::open_inner(dir, None)
    }

    /// Opens (or creates) the database in `dir` with its commit marker `<dir>.commit`
    /// ([`marker_path`]): what the node and the relay use. Refuses a damaged store with
    /// [`StoreError::Damaged`]; never starts on a store that lost committed data.
    pub fn open_checked(dir: &Path) -> Result<Self, StoreError> {
        Self::open_inner(dir, Some(marker_path(dir)))
    }

    fn open_inner(dir: &Path, marker: Option<PathBuf>) -> Result<Self, StoreError> {
        let open = open_dir(dir, marker.as_deref())?;
        let store = SledStore {
            shared: Arc::new(Shared {
                id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                dir: dir.to_path_buf(),
                marker,
                open: std::sync::RwLock::new(Some(open)),
                generation: Default::default(),
                closed: Mutex::new(None),
                flusher: Default::default(),
                flushes: Default::default(),
                marker_written: Mutex::new(None),
            }),
        };
        // Make a new or migrated store durable and record what was verified.
        store.close()?;
        Ok(store)
    }

    /// The open database, reopening it (at most once per [`REOPEN_INTERVAL`]) after a
    /// rollback whose reopen failed.
    fn db(&self) -> Result<Open, StoreError> {
        let sh = &self.shared;
        {
            let g = sh.open.read().map_err(|_| poisoned())?;
            if let Some(o) = g.as_ref() {
                return Ok(o.clone());
            }
        }
        let mut g = sh.open.write().map_err(|_| poisoned())?;
        if let Some(o) = g.as_ref() {
            return Ok(o.clone());
        }
        let mut closed = sh.closed.lock().map_err(|_| poisoned())?;
        if let Some((at, e)) = closed.as_ref() {
            if at.elapsed() < REOPEN_INTERVAL {
                return Err(e.clone());
            }
        }
        match open_dir(&sh.dir, sh.marker.as_deref()) {
            Ok(o) => {
                tracing::info!(dir = %sh.dir.display(), "store reopened; writes resume");
                *g = Some(o.clone());
                *closed = None;
                Ok(o)
            }
            Err(e) => {
                tracing::debug!(dir = %sh.dir.display(), error = ?e, "store reopen failed; will retry");
                let r = e.clone();
                *closed = Some((Instant::now(), e));
                Err(r)
            }
        }
    }

    /// Drops the sled handle and reopens the directory: the state becomes what is on disk.
    fn rollback(&self, e: &StoreError) {
        let sh = &self.shared;
        let Ok(mut g) = sh.open.write() else { return };
        sh.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        *g = None;
        match open_dir(&sh.dir, sh.marker.as_deref()) {
            Ok(o) => {
                tracing::warn!(error = %e, "a store write failed; state rolled back to what is on disk");
                *g = Some(o);
                if let Ok(mut c) = sh.closed.lock() {
                    *c = None;
                }
            }
            Err(e2) => {
                tracing::warn!(error = %e, reopen = %e2, "a store write failed; store closed until it can be reopened");
                if let Ok(mut c) = sh.closed.lock() {
                    *c = Some((Instant::now(), e.clone()));
                }
            }
        }
    }

    fn fail<T>(&self, e: StoreError) -> Result<T, StoreError> {
        self.rollback(&e);
        Err(e)
    }

    /// Writes the marker for `m` if one is kept and `force` or the interval has passed.
    fn maybe_write_marker(&self, m: &Manifest, force: bool) -> Result<(), StoreError> {
        let Some(path) = &self.shared.marker else {
            return Ok(());
        };
        let mut last = self.shared.marker_written.lock().map_err(|_| poisoned())?;
        if !force && last.is_some_and(|t| t.elapsed() < MARKER_INTERVAL) {
            return Ok(());
        }
        write_marker(
            path,
            &Marker {
                store_id: m.store_id,
                seq: m.seq,
            },
        )?;
        *last = Some(Instant::now());
        Ok(())
    }
}

fn sync(o: &Open) -> Result<(), StoreError> {
    o.db.flush().map_err(io)?;
    o.data_file
        .sync_data()
        .map_err(|e| StoreError::from_io("fdatasync", e))
}

/// Reads every record: checksums, tree bytes, counts against the manifest, manifest against
/// the marker. Creates the manifest of a new store and migrates a store written before
/// checksums existed (records but neither manifest nor marker).
fn verify(
    db: &sled::Db,
    db_file: &Path,
    mark: Option<&Marker>,
    marker_file: Option<&Path>,
) -> Result<Manifest, StoreError> {
    let mut counts = [0u64; SLOTS];
    let mut manifest_raw = None;
    let mut bad: Vec<(Tree, Vec<u8>)> = Vec::new();
    let mut bad_count = 0u64;
    for item in db.iter() {
        let (k, v) =
            item.map_err(|e| damaged(db_file, format!("reading the records failed ({e})")))?;
        if &k[..] == MANIFEST_KEY {
            manifest_raw = Some(v.to_vec());
            continue;
        }
        let tree = k
            .first()
            .copied()
            .and_then(Tree::from_byte)
            .ok_or_else(|| damaged(db_file, "a record has a key that belongs to no tree"))?;
        if let Some(c) = counts.get_mut(tree as usize) {
            *c += 1;
        }
        if unseal(&k, &v).is_none() {
            bad_count += 1;
            if bad.len() < 64 {
                bad.push((tree, k.to_vec()));
            }
        }
    }
    let total: u64 = counts.iter().sum();
    let marker_name = marker_file
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let Some(raw) = manifest_raw else {
        if let Some(m) = mark {
            return Err(damaged(
                db_file,
                format!(
                    "the database holds {total} records but no manifest, while {marker_name} \
                     records {} committed batches: committed data was lost",
                    m.seq
                ),
            ));
        }
        // New store, or one written before checksums: seal every record, write a manifest.
        let mut store_id = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut store_id);
        let manifest = Manifest {
            store_id,
            seq: 0,
            counts,
        };
        let mut b = sled::Batch::default();
        for item in db.iter() {
            let (k, v) = item.map_err(io)?;
            b.insert(k.to_vec(), seal(&k, &v));
        }
        b.insert(MANIFEST_KEY, manifest.encode());
        db.apply_batch(b).map_err(io)?;
        if total > 0 {
            tracing::info!(
                records = total,
                "added checksums to a store written without them"
            );
        }
        return Ok(manifest);
    };
    let manifest =
        Manifest::decode(&raw).ok_or_else(|| damaged(db_file, "the manifest record is corrupt"))?;
    if bad_count > 0 {
        let trees: std::collections::BTreeSet<String> =
            bad.iter().map(|(t, _)| format!("{t:?}")).collect();
        return Err(damaged(
            db_file,
            format!(
                "{bad_count} records fail their checksum (in {})",
                trees.into_iter().collect::<Vec<_>>().join(", ")
            ),
        ));
    }
    if manifest.counts != counts {
        let mut diffs = Vec::new();
        for (i, (want, have)) in manifest.counts.iter().zip(counts.iter()).enumerate() {
            if want != have {
                let name = u8::try_from(i)
                    .ok()
                    .and_then(Tree::from_byte)
                    .map(|t| format!("{t:?}"))
                    .unwrap_or_else(|| format!("tree {i}"));
                diffs.push(format!("{name}: {have} records, {want} committed"));
            }
        }
        return Err(damaged(
            db_file,
            format!("records are missing or extra ({})", diffs.join("; ")),
        ));
    }
    if let Some(m) = mark {
        if m.store_id != manifest.store_id {
            return Err(damaged(
                db_file,
                format!("the database is not the one {marker_name} describes (it was replaced)"),
            ));
        }
        if manifest.seq < m.seq {
            return Err(damaged(
                db_file,
                format!(
                    "the database ends at batch {} but {} were committed durably \
                     ({marker_name}): committed data was lost",
                    manifest.seq, m.seq
                ),
            ));
        }
    }
    Ok(manifest)
}

impl Store for SledStore {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let o = self.db()?;
        let k = tree.key(key);
        match o.db.get(&k).map_err(io)? {
            None => Ok(None),
            Some(v) => unseal_owned(tree, &k, &v).map(Some),
        }
    }

    fn scan(
        &self,
        tree: Tree,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StoreError> {
        let o = self.db()?;
        let db = &o.db;
        let full_prefix = tree.key(prefix);
        let mut out = Vec::new();
        let iter = match after {
            Some(a) if tree.key(a) >= full_prefix => db.range((
                std::ops::Bound::Excluded(tree.key(a)),
                std::ops::Bound::Unbounded,
            )),
            Some(_) => db.range(full_prefix.clone()..),
            None => db.range(full_prefix.clone()..),
        };
        for item in iter {
            if out.len() >= limit {
                break;
            }
            let (k, v) = item.map_err(io)?;
            if !k.starts_with(&full_prefix) {
                break;
            }
            let value = unseal_owned(tree, &k, &v)?;
            out.push((k.get(1..).unwrap_or_default().to_vec(), value));
        }
        Ok(out)
    }

    fn last(&self, tree: Tree, prefix: &[u8]) -> Result<Option<super::Entry>, StoreError> {
        let o = self.db()?;
        let last = o.db.scan_prefix(tree.key(prefix)).next_back();
        match last {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item.map_err(io)?;
                let value = unseal_owned(tree, &k, &v)?;
                Ok(Some((k.get(1..).unwrap_or_default().to_vec(), value)))
            }
        }
    }

    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        let o = self.db()?;
        let generation = self.generation();
        let mut st = o.manifest.lock().map_err(|_| poisoned())?;
        let mut next = *st;
        let mut seen: HashMap<Vec<u8>, bool> = HashMap::new();
        let mut b = sled::Batch::default();
        for (tree, key, value) in batch.ops {
            let k = tree.key(&key);
            let existed = match seen.get(&k) {
                Some(e) => *e,
                None => o.db.contains_key(&k).map_err(io)?,
            };
            let count = next.counts.get_mut(tree as usize);
            match value {
                Some(v) => {
                    if let (false, Some(c)) = (existed, count) {
                        *c += 1;
                    }
                    b.insert(k.clone(), seal(&k, &v));
                    seen.insert(k, true);
                }
                None => {
                    if let (true, Some(c)) = (existed, count) {
                        *c = c.saturating_sub(1);
                    }
                    b.remove(k.clone());
                    seen.insert(k, false);
                }
            }
        }
        next.seq += 1;
        b.insert(MANIFEST_KEY, next.encode());
        if let Err(e) = o.db.apply_batch(b).map_err(io) {
            drop(st);
            return self.fail(e);
        }
        *st = next;
        drop(st);
        APPLIED.with(|a| a.set((self.shared.id, generation)));
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        let id = self.shared.id;
        let mine = APPLIED.with(|a| a.get());
        if mine.0 == id {
            APPLIED.with(|a| a.set((0, 0)));
            if mine.1 != self.generation() {
                return Err(StoreError::RolledBack);
            }
        }
        let generation = self.generation();
        let f = &self.shared.flusher;
        let mut st = f.state.lock().map_err(|_| poisoned())?;
        st.issued += 1;
        let ticket = st.issued;
        loop {
            if st.durable >= ticket {
                break;
            }
            if st.running {
                st = f.done.wait(st).map_err(|_| poisoned())?;
                continue;
            }
            // Lead a flush covering every ticket issued so far.
            st.running = true;
            let target = st.issued;
            drop(st);
            let result = self.db().and_then(|o| {
                // Every batch up to this manifest was applied before the flush starts.
                let covered = *o.manifest.lock().map_err(|_| poisoned())?;
                sync(&o)?;
                self.shared
                    .flushes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok(covered)
            });
            match &result {
                Err(e) => self.rollback(e),
                Ok(covered) => {
                    // The marker only lags: failing to write it (a full disk) loses nothing.
                    if let Err(e) = self.maybe_write_marker(covered, false) {
                        tracing::debug!(error = %e, "commit marker not updated");
                    }
                }
            }
            st = f.state.lock().map_err(|_| poisoned())?;
            st.running = false;
            if result.is_ok() {
                st.durable = st.durable.max(target);
            }
            f.done.notify_all();
            // On failure the waiters retry and lead their own flush (and see their own error).
            result?;
        }
        drop(st);
        if self.generation() != generation {
            return Err(StoreError::RolledBack);
        }
        Ok(())
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        let o = self.db()?;
        o.db.size_on_disk().map_err(io)
    }

    fn count(&self, tree: Tree) -> Option<u64> {
        let o = self.db().ok()?;
        let m = o.manifest.lock().ok()?;
        m.counts.get(tree as usize).copied()
    }

    fn flushes(&self) -> Option<u64> {
        Some(
            self.shared
                .flushes
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    fn generation(&self) -> u64 {
        self.shared
            .generation
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    fn close(&self) -> Result<(), StoreError> {
        let o = self.db()?;
        // Hold applies back so the marker describes exactly what was flushed.
        let st = o.manifest.lock().map_err(|_| poisoned())?;
        sync(&o)?;
        self.maybe_write_marker(&st, true)
    }

    fn export(
        &self,
        sink: &mut dyn FnMut(u8, &[u8], &[u8]) -> Result<(), StoreError>,
    ) -> Result<u64, StoreError> {
        let o = self.db()?;
        // Holding the apply lock makes this a point-in-time copy: no batch lands meanwhile.
        let _st = o.manifest.lock().map_err(|_| poisoned())?;
        let mut n = 0u64;
        for item in o.db.iter() {
            let (k, v) = item.map_err(io)?;
            if &k[..] == MANIFEST_KEY {
                continue;
            }
            let (Some(&tb), Some(key)) = (k.first(), k.get(1..)) else {
                continue;
            };
            let tree = Tree::from_byte(tb).ok_or_else(|| StoreError::Corrupt {
                tree: Tree::Meta,
                detail: format!("record with unknown tree byte {tb}"),
            })?;
            let value = unseal_owned(tree, &k, &v)?;
            sink(tb, key, &value)?;
            n += 1;
        }
        Ok(n)
    }
}

/// Builds the new store in `tmp` from `source`; returns the number of records.
fn fill(tmp: &Path, source: RecordSource<'_>) -> Result<u64, StoreError> {
    let store = SledStore::open_checked(tmp)?;
    let mut batch = Batch::new();
    let mut records = 0u64;
    source(&mut |tb, key, value| {
        let tree = Tree::from_byte(tb).ok_or_else(|| StoreError::Corrupt {
            tree: Tree::Meta,
            detail: format!("backup record with unknown tree byte {tb}"),
        })?;
        batch.put(tree, key, value);
        records += 1;
        if batch.len() >= 1024 {
            store.apply(std::mem::take(&mut batch))?;
        }
        Ok(())
    })?;
    store.apply(batch)?;
    store.close()?;
    Ok(records)
}

/// What [`restore_store`] did.
#[derive(Debug, Clone)]
pub struct Restored {
    /// Records written.
    pub records: u64,
    /// Where the previous database directory was moved, if there was one.
    pub moved_aside: Option<PathBuf>,
}

/// A source of records for [`restore_store`]: called once with a sink for every record.
pub type RecordSource<'a> = &'a mut dyn FnMut(
    &mut dyn FnMut(u8, Vec<u8>, Vec<u8>) -> Result<(), StoreError>,
) -> Result<(), StoreError>;

/// Replaces the database in `dir` with the records `source` yields (the process using the
/// store must be stopped: a locked store is refused).
///
/// A healthy store is refused unless `force`. The new database is built and flushed in
/// `<dir>.restore-tmp` first; if `source` fails (a backup that does not authenticate),
/// nothing else was touched. Then, in this order: the new commit marker replaces the old one
/// (a crash here leaves the old database with a marker of another store: refused, not used),
/// the old directory moves to `<dir>.damaged-<unix seconds>` (kept, never deleted; a crash
/// here leaves no database but a marker: refused), the new one takes its place.
pub fn restore_store(
    dir: &Path,
    force: bool,
    source: RecordSource<'_>,
) -> Result<Restored, StoreError> {
    let exists = dir.join("db").exists();
    if exists {
        match SledStore::open_checked(dir) {
            Ok(s) => {
                drop(s);
                if !force {
                    return Err(StoreError::Healthy(dir.display().to_string()));
                }
            }
            Err(StoreError::Locked(p)) => return Err(StoreError::Locked(p)),
            Err(StoreError::Damaged { .. }) => {}
            Err(e) if !force => return Err(e),
            Err(_) => {}
        }
    }
    let mut tmp_name = dir.file_name().unwrap_or_default().to_os_string();
    tmp_name.push(".restore-tmp");
    let tmp = dir.with_file_name(tmp_name);
    let tmp_marker = marker_path(&tmp);
    let cleanup = |tmp: &Path| {
        let _ = std::fs::remove_dir_all(tmp);
        let _ = std::fs::remove_file(marker_path(tmp));
    };
    cleanup(&tmp);
    let filled = fill(&tmp, source);
    let records = match filled {
        Ok(n) => n,
        Err(e) => {
            cleanup(&tmp);
            return Err(e);
        }
    };
    let marker = marker_path(dir);
    let fs_err = |what: &str, e: std::io::Error| StoreError::from_io(what, e);
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let mut aside_name = dir.file_name().unwrap_or_default().to_os_string();
    aside_name.push(format!(".damaged-{stamp}"));
    let aside = dir.with_file_name(aside_name);
    if marker.exists() {
        std::fs::copy(&marker, marker_path(&aside))
            .map_err(|e| fs_err("keeping the old commit marker", e))?;
    }
    std::fs::rename(&tmp_marker, &marker).map_err(|e| fs_err("installing the commit marker", e))?;
    let moved_aside = if dir.exists() {
        std::fs::rename(dir, &aside).map_err(|e| fs_err("moving the old store aside", e))?;
        Some(aside)
    } else {
        None
    };
    std::fs::rename(&tmp, dir).map_err(|e| fs_err("installing the restored store", e))?;
    if let Some(parent) = dir.parent() {
        if let Ok(d) = std::fs::File::open(parent) {
            let _ = d.sync_all();
        }
    }
    Ok(Restored {
        records,
        moved_aside,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Takes the same exclusive `flock` sled takes on `dir/db`, as a sled background thread
    /// still holding the file of a just-dropped handle does.
    fn hold_lock(dir: &Path) -> std::fs::File {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dir.join("db"))
            .unwrap();
        // SAFETY: flock on a descriptor this function owns; no memory is involved.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
        f
    }

    #[test]
    fn reopening_waits_for_a_lock_released_just_after_a_drop() {
        let dir = tempfile::tempdir().unwrap();
        let mut b = Batch::new();
        b.put(Tree::Meta, b"k".to_vec(), b"v".to_vec());
        SledStore::open(dir.path()).unwrap().commit(b).unwrap();
        let held = hold_lock(dir.path());
        let release = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(200));
            drop(held);
        });
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.get(Tree::Meta, b"k").unwrap(), Some(b"v".to_vec()));
        release.join().unwrap();
    }

    #[test]
    fn a_lock_held_past_the_wait_is_refused_as_locked() {
        let dir = tempfile::tempdir().unwrap();
        drop(SledStore::open(dir.path()).unwrap());
        let held = hold_lock(dir.path());
        assert!(matches!(
            SledStore::open(dir.path()),
            Err(StoreError::Locked(_))
        ));
        drop(held);
    }

    #[test]
    fn concurrent_flushes_share_work_and_all_return() {
        let dir = tempfile::tempdir().unwrap();
        let s = SledStore::open(dir.path()).unwrap();
        std::thread::scope(|scope| {
            for t in 0..8u8 {
                let s = s.clone();
                scope.spawn(move || {
                    for i in 0..20u8 {
                        let mut b = Batch::new();
                        b.put(Tree::Meta, vec![t, i], vec![i]);
                        s.commit(b).unwrap();
                    }
                });
            }
        });
        assert_eq!(s.scan(Tree::Meta, b"", None, 1000).unwrap().len(), 160);
        let st = s.shared.flusher.state.lock().unwrap();
        assert_eq!(st.durable, 160, "every ticket durable");
        assert!(!st.running);
    }

    #[test]
    fn lone_commits_flush_each_and_concurrent_commits_share_flushes() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            // A lone commit is never held back for company: one flush each.
            for i in 0..10u8 {
                let mut b = Batch::new();
                b.put(Tree::Meta, vec![0xee, i], vec![i]);
                s.commit(b).unwrap();
            }
            assert_eq!(s.flushes(), Some(10));
            // Concurrent commits: every one returns only after a flush that covers it, and
            // they share flushes (at most one per commit, usually far fewer).
            let acked = std::sync::Mutex::new(Vec::new());
            std::thread::scope(|scope| {
                for t in 0..8u8 {
                    let (s, acked) = (s.clone(), &acked);
                    scope.spawn(move || {
                        for i in 0..25u8 {
                            let mut b = Batch::new();
                            b.put(Tree::Meta, vec![t, i], vec![i]);
                            s.commit(b).unwrap();
                            acked.lock().unwrap().push(vec![t, i]);
                        }
                    });
                }
            });
            let flushes = s.flushes().unwrap() - 10;
            assert!(flushes <= 200, "{flushes} flushes for 200 commits");
            eprintln!("200 concurrent commits, {flushes} flushes");
            assert_eq!(acked.lock().unwrap().len(), 200);
            // Dropped without close (no final flush): only what the commits flushed remains.
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.scan(Tree::Meta, b"", None, 1000).unwrap().len(), 210);
    }

    #[test]
    fn batch_scan_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = SledStore::open(dir.path()).unwrap();
            let mut b = Batch::new();
            b.put(Tree::Contacts, b"a1".to_vec(), b"x".to_vec());
            b.put(Tree::Contacts, b"a2".to_vec(), b"y".to_vec());
            b.put(Tree::Sessions, b"a1".to_vec(), b"z".to_vec());
            s.commit(b).unwrap();
            let all = s.scan(Tree::Contacts, b"", None, 10).unwrap();
            assert_eq!(all.len(), 2);
            let after = s.scan(Tree::Contacts, b"a", Some(b"a1"), 10).unwrap();
            assert_eq!(after, vec![(b"a2".to_vec(), b"y".to_vec())]);
            assert_eq!(
                s.last(Tree::Contacts, b"a").unwrap(),
                Some((b"a2".to_vec(), b"y".to_vec()))
            );
            assert_eq!(s.last(Tree::Sessions, b"b").unwrap(), None);
        }
        let s = SledStore::open(dir.path()).unwrap();
        assert_eq!(s.get(Tree::Sessions, b"a1").unwrap(), Some(b"z".to_vec()));
        assert_eq!(s.get(Tree::Contacts, b"zz").unwrap(), None);
        let mut b = Batch::new();
        b.delete(Tree::Contacts, b"a1".to_vec());
        s.commit(b).unwrap();
        assert_eq!(s.get(Tree::Contacts, b"a1").unwrap(), None);
    }

    fn put(s: &SledStore, tree: Tree, k: &[u8], v: &[u8]) {
        let mut b = Batch::new();
        b.put(tree, k.to_vec(), v.to_vec());
        s.commit(b).unwrap();
    }

    fn copy_dir(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for e in std::fs::read_dir(from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                copy_dir(&e.path(), &to.join(e.file_name()));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }

    #[test]
    fn tree_bytes_round_trip() {
        for b in 0..=255u8 {
            if let Some(t) = Tree::from_byte(b) {
                assert_eq!(t as u8, b);
            }
        }
        assert_eq!(Tree::from_byte(Tree::Awaiting as u8), Some(Tree::Awaiting));
    }

    #[test]
    fn manifest_counts_follow_overwrites_and_deletes_in_one_batch() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        {
            let s = SledStore::open_checked(&db).unwrap();
            let mut b = Batch::new();
            b.put(Tree::History, b"a".to_vec(), b"1".to_vec());
            b.put(Tree::History, b"a".to_vec(), b"2".to_vec());
            b.put(Tree::History, b"b".to_vec(), b"3".to_vec());
            b.delete(Tree::History, b"b".to_vec());
            b.delete(Tree::History, b"never".to_vec());
            b.put(Tree::Contacts, b"c".to_vec(), b"4".to_vec());
            s.commit(b).unwrap();
            let m = *s.db().unwrap().manifest.lock().unwrap();
            assert_eq!(m.counts[Tree::History as usize], 1);
            assert_eq!(m.counts[Tree::Contacts as usize], 1);
            s.close().unwrap();
        }
        let s = SledStore::open_checked(&db).unwrap();
        assert_eq!(s.get(Tree::History, b"a").unwrap(), Some(b"2".to_vec()));
    }

    /// A process that dies without closing (the marker lags behind) reopens cleanly; a
    /// database older than its marker (lost commits) or replaced by another store is refused.
    #[test]
    fn lagging_marker_is_fine_older_database_is_damage() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let old = dir.path().join("old");
        {
            let s = SledStore::open_checked(&db).unwrap();
            put(&s, Tree::History, b"1", b"x");
            s.close().unwrap();
        }
        copy_dir(&db, &old);
        {
            let s = SledStore::open_checked(&db).unwrap();
            for i in 0..20u8 {
                put(&s, Tree::History, &[i], b"y");
            }
            // Dropped without close: like a crash after the flushes.
        }
        let s = SledStore::open_checked(&db).unwrap();
        assert_eq!(s.scan(Tree::History, b"", None, 100).unwrap().len(), 21);
        s.close().unwrap();
        drop(s);
        // Roll the database back to the older copy: the marker says more was committed.
        std::fs::remove_dir_all(&db).unwrap();
        copy_dir(&old, &db);
        match SledStore::open_checked(&db) {
            Err(StoreError::Damaged { detail, .. }) => {
                assert!(detail.contains("committed data was lost"), "{detail}")
            }
            other => panic!("{other:?}"),
        }
        // Another store's database under this marker.
        std::fs::remove_dir_all(&db).unwrap();
        drop(SledStore::open(&db).unwrap());
        match SledStore::open_checked(&db) {
            Err(StoreError::Damaged { detail, .. }) => {
                assert!(detail.contains("replaced"), "{detail}")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unsealed_store_is_migrated_once() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        {
            // A store written before checksums: raw sled records, no manifest, no marker.
            let raw = sled::open(&db).unwrap();
            raw.insert(Tree::Contacts.key(b"k"), b"v".to_vec()).unwrap();
            raw.flush().unwrap();
        }
        let s = SledStore::open_checked(&db).unwrap();
        assert_eq!(s.get(Tree::Contacts, b"k").unwrap(), Some(b"v".to_vec()));
        s.close().unwrap();
        drop(s);
        let s = SledStore::open_checked(&db).unwrap();
        assert_eq!(s.get(Tree::Contacts, b"k").unwrap(), Some(b"v".to_vec()));
    }
}
