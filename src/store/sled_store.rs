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
#[derive(Clone)]
pub struct SledStore {
    db: sled::Db,
    data_file: std::sync::Arc<std::fs::File>,
    flusher: std::sync::Arc<Flusher>,
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
    StoreError::Io(e.to_string())
}

impl SledStore {
    /// Opens (or creates) the database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
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
        // sled 0.34 keeps its log in `<dir>/db`.
        let data_file = std::fs::File::open(dir.join("db"))
            .map_err(|e| StoreError::Io(format!("opening {}: {e}", dir.join("db").display())))?;
        Ok(SledStore {
            db,
            data_file: std::sync::Arc::new(data_file),
            flusher: Default::default(),
        })
    }
}

impl Store for SledStore {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get(tree.key(key)).map_err(io)?.map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        tree: Tree,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StoreError> {
        let full_prefix = tree.key(prefix);
        let mut out = Vec::new();
        let iter = match after {
            Some(a) if tree.key(a) >= full_prefix => self.db.range((
                std::ops::Bound::Excluded(tree.key(a)),
                std::ops::Bound::Unbounded,
            )),
            Some(_) => self.db.range(full_prefix.clone()..),
            None => self.db.range(full_prefix.clone()..),
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
        match self.db.scan_prefix(tree.key(prefix)).next_back() {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item.map_err(io)?;
                Ok(Some((k.get(1..).unwrap_or_default().to_vec(), v.to_vec())))
            }
        }
    }

    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        let mut b = sled::Batch::default();
        for (tree, key, value) in batch.ops {
            match value {
                Some(v) => b.insert(tree.key(&key), v),
                None => b.remove(tree.key(&key)),
            }
        }
        self.db.apply_batch(b).map_err(io)
    }

    fn flush(&self) -> Result<(), StoreError> {
        let poisoned = || StoreError::Io("flush state poisoned".into());
        let f = &self.flusher;
        let mut st = f.state.lock().map_err(|_| poisoned())?;
        st.issued += 1;
        let ticket = st.issued;
        loop {
            if st.durable >= ticket {
                return Ok(());
            }
            if st.running {
                st = f.done.wait(st).map_err(|_| poisoned())?;
                continue;
            }
            // Lead a flush covering every ticket issued so far.
            st.running = true;
            let target = st.issued;
            drop(st);
            let result = self.db.flush().map_err(io).and_then(|_| {
                self.data_file
                    .sync_data()
                    .map_err(|e| StoreError::Io(format!("fdatasync: {e}")))
            });
            st = f.state.lock().map_err(|_| poisoned())?;
            st.running = false;
            if result.is_ok() {
                st.durable = st.durable.max(target);
            }
            f.done.notify_all();
            // On failure the waiters retry and lead their own flush (and see their own error).
            result?;
        }
    }

    fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.db.size_on_disk().map_err(io)
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
        let st = s.flusher.state.lock().unwrap();
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
