//! Wake-ups for the delivery engine and its per-recipient workers.
//!
//! Each recipient with queued messages has one delivery worker (see `delivery::engine`). When a
//! message is queued for it, its contact connects to us or its routes change, only *that*
//! worker is woken ([`Wakers::wake`]); a recipient without a worker is handed to the engine,
//! which starts one. Nothing polls and no wake-up reaches every worker, except
//! [`Wakers::wake_all`] for events that concern all of them (our identity changed, shutdown).
//!
//! No lost wake-up: a wake sets the worker's flag and stores a permit in its [`Notify`]
//! (`notify_one`), both under the registry lock. A worker clears the flag just before it reads
//! the outbox, so every wake either precedes that read (and the read sees the message) or
//! leaves the flag set. A worker that found nothing to do leaves only through
//! [`Wakers::retire`], which refuses while the flag is set; once it is gone from the registry,
//! the next wake for its recipient goes to the engine.

use crate::identity::IdentityKey;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::sync::Notify;

/// One worker's wake-up channel.
#[derive(Debug, Default)]
pub struct Waker {
    notify: Notify,
    woken: AtomicBool,
}

impl Waker {
    /// Waits for a wake-up (returns at once if one arrived since the last [`Waker::clear`]
    /// or wait).
    pub async fn woken(&self) {
        self.notify.notified().await;
    }

    /// Called right before the worker reads the outbox: wake-ups up to here are covered by
    /// that read.
    pub fn clear(&self) {
        self.woken.store(false, Ordering::SeqCst);
    }

    fn wake(&self) {
        self.woken.store(true, Ordering::SeqCst);
        self.notify.notify_one();
    }
}

#[derive(Debug, Default)]
struct State {
    workers: HashMap<IdentityKey, Arc<Waker>>,
    /// Recipients woken while they had no worker: the engine starts one.
    pending: HashSet<IdentityKey>,
    /// The engine should read the outbox for every recipient with queued messages.
    rescan: bool,
}

/// The registry of workers and the engine's own wake-up. See the module docs.
#[derive(Debug, Default)]
pub struct Wakers {
    state: Mutex<State>,
    engine: Notify,
}

impl Wakers {
    fn state(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Something changed for `peer` (a message queued, its contact connected or refreshed).
    pub fn wake(&self, peer: &IdentityKey) {
        let mut s = self.state();
        match s.workers.get(peer) {
            Some(w) => w.wake(),
            None => {
                s.pending.insert(*peer);
                drop(s);
                self.engine.notify_one();
            }
        }
    }

    /// Something changed for every recipient: wakes every worker, and the engine re-reads the
    /// outbox for recipients without one.
    pub fn wake_all(&self) {
        let mut s = self.state();
        for w in s.workers.values() {
            w.wake();
        }
        s.rescan = true;
        drop(s);
        self.engine.notify_one();
    }

    /// Engine: waits until [`Wakers::wake`] or [`Wakers::wake_all`] handed it work.
    pub async fn engine_woken(&self) {
        self.engine.notified().await;
    }

    /// Engine: the recipients handed to it since the last call, and whether it should re-read
    /// the whole outbox.
    pub fn take(&self) -> (Vec<IdentityKey>, bool) {
        let mut s = self.state();
        let rescan = std::mem::take(&mut s.rescan);
        (s.pending.drain().collect(), rescan)
    }

    /// Engine: registers a worker for `peer`; `None` when one is registered already.
    pub fn register(&self, peer: &IdentityKey) -> Option<Arc<Waker>> {
        let mut s = self.state();
        if s.workers.contains_key(peer) {
            return None;
        }
        let w = Arc::new(Waker::default());
        s.workers.insert(*peer, w.clone());
        Some(w)
    }

    /// Worker: leaves the registry unless a wake-up arrived since its last [`Waker::clear`];
    /// true when it left (it must then stop), false when it must read the outbox again.
    pub fn retire(&self, peer: &IdentityKey, w: &Arc<Waker>) -> bool {
        let mut s = self.state();
        if w.woken.load(Ordering::SeqCst) {
            return false;
        }
        if s.workers.get(peer).is_some_and(|x| Arc::ptr_eq(x, w)) {
            s.workers.remove(peer);
        }
        true
    }

    /// Worker: leaves the registry unconditionally (it stops on an error or at shutdown). A
    /// wake-up that raced with it is handed to the engine.
    pub fn remove(&self, peer: &IdentityKey, w: &Arc<Waker>) {
        let mut s = self.state();
        if s.workers.get(peer).is_some_and(|x| Arc::ptr_eq(x, w)) {
            s.workers.remove(peer);
            if w.woken.load(Ordering::SeqCst) {
                s.pending.insert(*peer);
                drop(s);
                self.engine.notify_one();
            }
        }
    }

    /// Registered workers.
    pub fn workers(&self) -> usize {
        self.state().workers.len()
    }
}

/// Removes a worker from the registry when it stops, however it stops.
pub struct Registration {
    wakers: Arc<Wakers>,
    peer: IdentityKey,
    waker: Arc<Waker>,
}

impl Registration {
    /// Ties `waker` (registered for `peer`) to this value's lifetime.
    pub fn new(wakers: Arc<Wakers>, peer: IdentityKey, waker: Arc<Waker>) -> Self {
        Registration {
            wakers,
            peer,
            waker,
        }
    }

    /// The worker's wake-up channel.
    pub fn waker(&self) -> &Waker {
        &self.waker
    }

    /// See [`Wakers::retire`].
    pub fn retire(&self) -> bool {
        self.wakers.retire(&self.peer, &self.waker)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.wakers.remove(&self.peer, &self.waker);
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
    async fn a_wake_reaches_only_its_worker() {
        let w = Arc::new(Wakers::default());
        let a = w.register(&key(1)).unwrap();
        let b = w.register(&key(2)).unwrap();
        assert!(w.register(&key(1)).is_none(), "one worker per recipient");
        w.wake(&key(1));
        tokio::time::timeout(Duration::from_secs(5), a.woken())
            .await
            .expect("woken");
        let other = tokio::time::timeout(Duration::from_millis(50), b.woken()).await;
        assert!(other.is_err(), "the other worker must not be woken");
        assert_eq!(w.take(), (vec![], false), "nothing for the engine");
    }

    #[tokio::test]
    async fn a_recipient_without_worker_goes_to_the_engine() {
        let w = Wakers::default();
        w.wake(&key(7));
        tokio::time::timeout(Duration::from_secs(5), w.engine_woken())
            .await
            .expect("engine woken");
        assert_eq!(w.take(), (vec![key(7)], false));
    }

    #[test]
    fn retire_refuses_after_a_wake_and_a_late_wake_goes_to_the_engine() {
        let w = Arc::new(Wakers::default());
        let reg = Registration::new(w.clone(), key(1), w.register(&key(1)).unwrap());
        reg.waker().clear();
        w.wake(&key(1));
        assert!(!reg.retire(), "woken since the last read: read again");
        reg.waker().clear();
        assert!(reg.retire());
        assert_eq!(w.workers(), 0);
        w.wake(&key(1));
        assert_eq!(w.take(), (vec![key(1)], false));
        drop(reg);
        assert!(w.register(&key(1)).is_some());
    }

    #[test]
    fn a_stopping_worker_hands_its_wake_to_the_engine() {
        let w = Arc::new(Wakers::default());
        let reg = Registration::new(w.clone(), key(3), w.register(&key(3)).unwrap());
        w.wake(&key(3));
        drop(reg);
        assert_eq!(w.workers(), 0);
        assert_eq!(w.take(), (vec![key(3)], false));
        w.wake_all();
        assert_eq!(w.take(), (vec![], true));
    }
}
