//! The sled implementation of [`Store`](super::Store).

use super::{Batch, Entries, Store, StoreError, Tree};
use std::path::Path;

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
#[derive(Clone)]
pub struct SledStore {
    shared: std::sync::Arc<Shared>,
}

/// How often a store whose reopen failed tries again.
pub const REOPEN_INTERVAL: std::time::Duration = std::time::Duration::from_millis(500);

struct Open {
    db: sled::Db,
    data_file: std::sync::Arc<std::fs::File>,
}

struct Shared {
    id: u64,
    dir: std::path::PathBuf,
    open: std::sync::RwLock<Option<Open>>,
    /// Bumped by every rollback (reopen after a failed write).
    generation: std::sync::atomic::AtomicU64,
    /// When the last reopen was tried, and the error it (or the write that closed us) gave.
    closed: std::sync::Mutex<Option<(std::time::Instant, StoreError)>>,
    flusher: Flusher,
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
    state: std::sync::Mutex<FlushState>,
    done: std::sync::Condvar,
}

impl std::fmt::Debug for SledStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledStore").finish_non_exhaustive()
    }
}

fn io(e: sled::Error) -> StoreError {
    match e {
        sled::Error::Io(ref ioe) => StoreError::from_io("sled", ioe),
        other => StoreError::Io(other.to_string()),
    }
}

fn copy(e: &StoreError) -> StoreError {
    match e {
        StoreError::DiskFull(s) => StoreError::DiskFull(s.clone()),
        StoreError::Locked(s) => StoreError::Locked(s.clone()),
        other => StoreError::Io(other.to_string()),
    }
}

fn open_dir(dir: &Path) -> Result<Open, StoreError> {
    let db = sled::Config::new()
        .path(dir)
        .mode(sled::Mode::HighThroughput)
        .flush_every_ms(None)
        .open()
        .map_err(|e| match e {
            sled::Error::Io(ref ioe) if ioe.kind() == std::io::ErrorKind::WouldBlock => {
                StoreError::Locked(dir.display().to_string())
            }
            sled::Error::Io(ref ioe) if ioe.to_string().contains("lock") => {
                StoreError::Locked(dir.display().to_string())
            }
            other => io(other),
        })?;
    #[cfg(unix)]
    restrict(dir, 2)
        .map_err(|e| StoreError::from_io(&format!("making {} owner-only", dir.display()), &e))?;
    // sled 0.34 keeps its log in `<dir>/db`.
    let path = dir.join("db");
    let data_file = std::fs::File::open(&path)
        .map_err(|e| StoreError::from_io(&format!("opening {}", path.display()), &e))?;
    Ok(Open {
        db,
        data_file: std::sync::Arc::new(data_file),
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
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        let open = open_dir(dir)?;
        Ok(SledStore {
            shared: std::sync::Arc::new(Shared {
                id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                dir: dir.to_path_buf(),
                open: std::sync::RwLock::new(Some(open)),
                generation: Default::default(),
                closed: std::sync::Mutex::new(None),
                flusher: Default::default(),
            }),
        })
    }

    /// The open sled handle (a cheap clone), reopening it if a failed write closed it.
    fn db(&self) -> Result<(sled::Db, std::sync::Arc<std::fs::File>), StoreError> {
        let sh = &self.shared;
        {
            let g = sh.open.read().map_err(|_| poisoned())?;
            if let Some(o) = g.as_ref() {
                return Ok((o.db.clone(), o.data_file.clone()));
            }
        }
        let mut g = sh.open.write().map_err(|_| poisoned())?;
        if let Some(o) = g.as_ref() {
            return Ok((o.db.clone(), o.data_file.clone()));
        }
        let mut closed = sh.closed.lock().map_err(|_| poisoned())?;
        if let Some((at, e)) = closed.as_ref() {
            if at.elapsed() < REOPEN_INTERVAL {
                return Err(copy(e));
            }
        }
        match open_dir(&sh.dir) {
            Ok(o) => {
                tracing::info!(dir = %sh.dir.display(), "store reopened; writes resume");
                let r = (o.db.clone(), o.data_file.clone());
                *g = Some(o);
                *closed = None;
                Ok(r)
            }
            Err(e) => {
                tracing::debug!(dir = %sh.dir.display(), error = ?e, "store reopen failed; will retry");
                let r = copy(&e);
                *closed = Some((std::time::Instant::now(), e));
                Err(r)
            }
        }
    }

    /// A write failed: throw the in-memory state away and reload what is on disk.
    fn rollback(&self, e: &StoreError) {
        let sh = &self.shared;
        let Ok(mut g) = sh.open.write() else { return };
        sh.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        // Dropping the last handle releases sled's file lock before the reopen.
        *g = None;
        match open_dir(&sh.dir) {
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
                    *c = Some((std::time::Instant::now(), copy(e)));
                }
            }
        }
    }

    fn fail<T>(&self, e: StoreError) -> Result<T, StoreError> {
        self.rollback(&e);
        Err(e)
    }
}

fn poisoned() -> StoreError {
    StoreError::Io("store lock poisoned".into())
}

impl Store for SledStore {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let (db, _) = self.db()?;
        Ok(db.get(tree.key(key)).map_err(io)?.map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        tree: Tree,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StoreError> {
        let (db, _) = self.db()?;
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
            out.push((k.get(1..).unwrap_or_default().to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn last(&self, tree: Tree, prefix: &[u8]) -> Result<Option<super::Entry>, StoreError> {
        let (db, _) = self.db()?;
        let last = db.scan_prefix(tree.key(prefix)).next_back();
        match last {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item.map_err(io)?;
                Ok(Some((k.get(1..).unwrap_or_default().to_vec(), v.to_vec())))
            }
        }
    }

    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        let (db, _) = self.db()?;
        let generation = self.generation();
        let mut b = sled::Batch::default();
        for (tree, key, value) in batch.ops {
            match value {
                Some(v) => b.insert(tree.key(&key), v),
                None => b.remove(tree.key(&key)),
            }
        }
        db.apply_batch(b).map_err(io).or_else(|e| self.fail(e))?;
        APPLIED.with(|a| a.set((self.shared.id, generation)));
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        let id = self.shared.id;
        let mine = APPLIED.with(|a| a.get());
        if mine.0 == id {
            APPLIED.with(|a| a.set((0, 0)));
            if mine.1 != self.generation() {
                return Err(StoreError::Io(
                    "writes were rolled back after a failed write; nothing of them was kept".into(),
                ));
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
            let result = self.db().and_then(|(db, file)| {
                db.flush().map_err(io)?;
                file.sync_data()
                    .map_err(|e| StoreError::from_io("fdatasync", &e))
            });
            if let Err(e) = &result {
                self.rollback(e);
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
            return Err(StoreError::Io(
                "writes were rolled back after a failed write during this flush".into(),
            ));
        }
        Ok(())
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        let (db, _) = self.db()?;
        db.size_on_disk().map_err(io)
    }

    fn generation(&self) -> u64 {
        self.shared
            .generation
            .load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
