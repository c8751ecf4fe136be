//! Ratchet locks: one per peer, plus a node-wide switch for our own keys.
//!
//! A peer's ratchet state (`Tree::Sessions[peer]`, its `Tree::Seen` entries, its outbox prefix)
//! is read, advanced and committed by one operation at a time: two concurrent encrypts from the
//! same stored state would derive the same message key, and the delivery worker must never read
//! (and send) an outbox entry whose commit has not returned. Operations on *different* peers
//! touch disjoint records, so they run at once and their commits share one flush (the store's
//! group commit) instead of queueing behind one node-wide mutex: one slow fsync no longer stalls
//! every contact.
//!
//! Replacing our ratchet keys (Noise key rotation, end of a grace period) takes
//! [`RatchetLocks::all`], which waits for every per-peer operation in progress and holds new
//! ones back until the switch is done.
//!
//! Invariants: a [`PeerGuard`] holds the node-wide read side and the peer's mutex, in that
//! order (so `all` cannot deadlock with it); guards are owned (`'static`), so they can move into
//! a blocking commit and are released only when it returned, even if the caller is cancelled.
//! Entries of peers nobody holds are pruned, so the map stays as small as the set of peers with
//! an operation in flight.

use crate::identity::IdentityKey;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard, OwnedRwLockReadGuard, RwLock};

/// Entries kept before unused ones are pruned.
const PRUNE_AT: usize = 64;

/// See the module docs.
#[derive(Debug, Default)]
pub struct RatchetLocks {
    keys: Arc<RwLock<()>>,
    peers: Mutex<HashMap<IdentityKey, Arc<AsyncMutex<()>>>>,
}

/// Exclusive use of one peer's ratchet state (see the module docs).
#[derive(Debug)]
pub struct PeerGuard {
    // Field order is drop order: the peer first, then the node-wide read side.
    _peer: OwnedMutexGuard<()>,
    _keys: OwnedRwLockReadGuard<()>,
}

/// Exclusive use of every peer's ratchet state (our keys are being replaced).
pub type AllGuard = tokio::sync::OwnedRwLockWriteGuard<()>;

impl RatchetLocks {
    /// Waits for exclusive use of `peer`'s ratchet state.
    pub async fn peer(&self, peer: &IdentityKey) -> PeerGuard {
        let keys = self.keys.clone().read_owned().await;
        let lock = {
            let mut m = match self.peers.lock() {
                Ok(m) => m,
                Err(poisoned) => poisoned.into_inner(),
            };
            if m.len() >= PRUNE_AT {
                // Only the map holds these: nobody is using or waiting for them.
                m.retain(|_, l| Arc::strong_count(l) > 1);
            }
            m.entry(*peer).or_default().clone()
        };
        PeerGuard {
            _peer: lock.lock_owned().await,
            _keys: keys,
        }
    }

    /// Waits until no per-peer operation runs and holds new ones back.
    pub async fn all(&self) -> AllGuard {
        self.keys.clone().write_owned().await
    }

    /// Peers with a lock entry (for tests).
    #[cfg(test)]
    fn entries(&self) -> usize {
        self.peers.lock().map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn key(b: u8) -> IdentityKey {
        IdentityKey([b; 32])
    }

    #[tokio::test]
    async fn different_peers_run_at_once_same_peer_waits() {
        let locks = Arc::new(RatchetLocks::default());
        let a = locks.peer(&key(1)).await;
        // Another peer is not held back by `a`.
        let b = tokio::time::timeout(Duration::from_secs(5), locks.peer(&key(2))).await;
        assert!(b.is_ok(), "a second peer must not wait for the first");
        // The same peer waits until `a` is dropped.
        let again = {
            let locks = locks.clone();
            tokio::spawn(async move { locks.peer(&key(1)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!again.is_finished(), "the same peer must wait");
        drop(a);
        let got = tokio::time::timeout(Duration::from_secs(5), again).await;
        assert!(matches!(got, Ok(Ok(_))));
    }

    #[tokio::test]
    async fn all_waits_for_every_peer_and_holds_new_ones() {
        let locks = Arc::new(RatchetLocks::default());
        let a = locks.peer(&key(1)).await;
        let all = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let g = locks.all().await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                drop(g);
            })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!all.is_finished(), "`all` must wait for a held peer");
        drop(a);
        let done = tokio::time::timeout(Duration::from_secs(5), all).await;
        assert!(matches!(done, Ok(Ok(()))));
        // Free again.
        let got = tokio::time::timeout(Duration::from_secs(5), locks.peer(&key(3))).await;
        assert!(got.is_ok());
    }

    #[tokio::test]
    async fn unused_entries_are_pruned() {
        let locks = RatchetLocks::default();
        for i in 0..200u8 {
            drop(locks.peer(&key(i)).await);
        }
        assert!(
            locks.entries() <= PRUNE_AT,
            "{} entries kept",
            locks.entries()
        );
    }
}
