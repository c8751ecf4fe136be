//! A bounded memory of identities whose signatures already verified.
//!
//! Nodes and relays see the same identities again and again (every reconnect carries the
//! peer's identity, every stored contact embeds one). Whoever verifies them owns a
//! [`VerifiedCache`] (the node one, a relay-only process one) and passes it to
//! [`Identity::from_parts_cached`](super::Identity::from_parts_cached) and the Noise handshake;
//! nothing is shared process-wide.
//!
//! The key is SHA-256 over `len(data) || data || signature`, so a hit means these exact bytes
//! and this exact signature verified before with this cache; anything else is verified in full.
//! Entries are only ever added after a successful strict verification, so the cache can skip
//! work but never accept a forgery. FIFO eviction bounds it to its capacity ([`CAPACITY`] by
//! default).

use sha2::{Digest, Sha256};
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

/// Most identities remembered by [`VerifiedCache::new`].
pub const CAPACITY: usize = 4096;

#[derive(Default)]
struct Cache {
    set: HashSet<[u8; 32]>,
    order: VecDeque<[u8; 32]>,
}

/// A bounded set of verified identity digests. Cheap to clone: clones share the memory.
#[derive(Clone)]
pub struct VerifiedCache {
    inner: Arc<Mutex<Cache>>,
    capacity: usize,
}

impl std::fmt::Debug for VerifiedCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifiedCache")
            .field("len", &self.len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl Default for VerifiedCache {
    fn default() -> Self {
        VerifiedCache::new()
    }
}

impl VerifiedCache {
    /// An empty cache of [`CAPACITY`] entries.
    pub fn new() -> Self {
        VerifiedCache::with_capacity(CAPACITY)
    }

    /// An empty cache that remembers at most `capacity` identities (at least one).
    pub fn with_capacity(capacity: usize) -> Self {
        VerifiedCache {
            inner: Arc::default(),
            capacity: capacity.max(1),
        }
    }

    /// Identities remembered now.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|c| c.set.len()).unwrap_or(0)
    }

    /// True when nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets everything (benchmarks measure the uncached path with it).
    pub fn clear(&self) {
        if let Ok(mut c) = self.inner.lock() {
            c.set.clear();
            c.order.clear();
        }
    }

    /// A poisoned lock reads as "not remembered": the identity is verified in full.
    pub(super) fn contains(&self, d: &[u8; 32]) -> bool {
        self.inner
            .lock()
            .map(|c| c.set.contains(d))
            .unwrap_or(false)
    }

    pub(super) fn insert(&self, d: [u8; 32]) {
        if let Ok(mut c) = self.inner.lock() {
            if c.set.insert(d) {
                c.order.push_back(d);
                if c.order.len() > self.capacity {
                    if let Some(old) = c.order.pop_front() {
                        c.set.remove(&old);
                    }
                }
            }
        }
    }
}

/// The cache key of an identity's exact bytes and signature.
pub(super) fn digest(data: &[u8], signature: &[u8; 64]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update((data.len() as u64).to_be_bytes());
    h.update(data);
    h.update(signature);
    h.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Flags, Identity, UserIdentity};
    use crate::time::Timestamp;

    fn identity(name: &str) -> Identity {
        UserIdentity::generate(name, Flags::default(), Timestamp(1), &mut rand::rngs::OsRng)
            .unwrap()
            .identity()
            .clone()
    }

    #[test]
    fn owned_caches_are_separate_bounded_and_never_accept_a_forgery() {
        let a = VerifiedCache::with_capacity(2);
        let b = VerifiedCache::new();
        let ids: Vec<Identity> = (0..3).map(|i| identity(&format!("u{i}"))).collect();
        let parts = |id: &Identity| (id.data_bytes().to_vec(), *id.signature());
        let (d0, s0) = parts(&ids[0]);
        Identity::from_parts_cached(d0.clone(), s0, &a).unwrap();
        assert_eq!(a.len(), 1);
        assert!(b.is_empty(), "another owner's cache is not touched");
        // Uncached verification never fills a cache.
        Identity::from_parts(d0.clone(), s0).unwrap();
        assert_eq!(b.len(), 0);
        // A hit still decodes and validates; a different signature is verified in full.
        let mut forged = s0;
        forged[0] ^= 1;
        assert!(Identity::from_parts_cached(d0.clone(), forged, &a).is_err());
        assert_eq!(a.len(), 1);
        for id in &ids[1..] {
            let (d, s) = parts(id);
            Identity::from_parts_cached(d, s, &a).unwrap();
        }
        assert_eq!(a.len(), 2, "FIFO bound");
        assert!(!a.contains(&digest(&d0, &s0)), "oldest evicted");
        let clone = a.clone();
        clone.clear();
        assert!(a.is_empty(), "clones share the memory");
    }
}
