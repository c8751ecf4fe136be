//! Strangers: peers that are not contacts but that the node has met — they connected to it
//! (authenticated by the Noise handshake) or sent it a message through a relay (their identity
//! then learned from rendezvous). Kept in memory, apart from the contact book, so that nobody
//! can grow the contact book or shadow a contact's name by connecting.
//!
//! What the node needs them for: pinning the identity they presented (the same TOFU rule as
//! for contacts, so a connection with a conflicting or outdated identity is refused) and the
//! routes learned for them, so that the user can answer one by its contact id
//! (`send <64-hex id>`) or make it a contact (`contacts add CARD`, `contacts trust <id>`).
//! Names never resolve to strangers.
//!
//! Limits: at most `max` entries; an entry unseen for `ttl` expires; when full, the entry seen
//! least recently makes room. No I/O and no clock: callers pass `now`.

use crate::identity::contact::observe;
use crate::identity::{ContactIdentity, Identity, IdentityKey, Observation};
use crate::time::Timestamp;
use crate::wire::rendezvous::RelayHint;
use crate::wire::Endpoint;
use std::collections::HashMap;

/// The strangers table. See the module docs.
#[derive(Debug)]
pub struct Strangers {
    max: usize,
    ttl_ms: u64,
    map: HashMap<IdentityKey, ContactIdentity>,
}

impl Strangers {
    /// An empty table of at most `max` entries, each expiring `ttl_secs` after it was last
    /// seen.
    pub fn new(max: usize, ttl_secs: u64) -> Strangers {
        Strangers {
            max: max.max(1),
            ttl_ms: ttl_secs.saturating_mul(1000),
            map: HashMap::new(),
        }
    }

    fn expired(&self, c: &ContactIdentity, now: Timestamp) -> bool {
        now.0.saturating_sub(c.last_seen.0) > self.ttl_ms
    }

    /// Applies the TOFU rule to `incoming` (and records routes, when given). A conflicting or
    /// outdated identity leaves the entry as it was.
    pub fn observe(
        &mut self,
        incoming: &Identity,
        endpoints: &[Endpoint],
        relays: &[RelayHint],
        now: Timestamp,
    ) -> Observation {
        let key = incoming.key();
        if self.map.get(&key).is_some_and(|c| self.expired(c, now)) {
            self.map.remove(&key);
        }
        let mut obs = observe(self.map.get(&key), incoming, now);
        if let Observation::New(c) | Observation::Updated(c) | Observation::Same(c) = &mut obs {
            if !endpoints.is_empty() {
                c.endpoints = endpoints.to_vec();
            }
            if !relays.is_empty() {
                c.relays = relays.to_vec();
            }
            if !self.map.contains_key(&key) {
                self.make_room(now);
            }
            self.map.insert(key, c.clone());
        }
        obs
    }

    /// The entry for `key`, unless it expired.
    pub fn get(&mut self, key: &IdentityKey, now: Timestamp) -> Option<ContactIdentity> {
        match self.map.get(key) {
            Some(c) if self.expired(c, now) => {
                self.map.remove(key);
                None
            }
            Some(c) => Some(c.clone()),
            None => None,
        }
    }

    /// Forgets `key` (it became a contact).
    pub fn remove(&mut self, key: &IdentityKey) -> Option<ContactIdentity> {
        self.map.remove(key)
    }

    /// Live entries, most recently seen first.
    pub fn list(&mut self, now: Timestamp) -> Vec<ContactIdentity> {
        self.purge(now);
        let mut v: Vec<ContactIdentity> = self.map.values().cloned().collect();
        v.sort_by_key(|c| std::cmp::Reverse(c.last_seen.0));
        v
    }

    /// Entries held.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// No entries.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn purge(&mut self, now: Timestamp) {
        let ttl = self.ttl_ms;
        self.map
            .retain(|_, c| now.0.saturating_sub(c.last_seen.0) <= ttl);
    }

    fn make_room(&mut self, now: Timestamp) {
        if self.map.len() < self.max {
            return;
        }
        self.purge(now);
        while self.map.len() >= self.max {
            let oldest = self
                .map
                .iter()
                .min_by_key(|(_, c)| c.last_seen.0)
                .map(|(k, _)| *k);
            match oldest {
                Some(k) => {
                    self.map.remove(&k);
                }
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Flags, UserIdentity};

    fn id(name: &str) -> Identity {
        UserIdentity::generate(name, Flags::default(), Timestamp(1), &mut rand::rngs::OsRng)
            .unwrap()
            .identity()
            .clone()
    }

    #[test]
    fn bounded_and_expiring() {
        let mut s = Strangers::new(2, 10);
        let (a, b, c) = (id("a"), id("b"), id("c"));
        assert!(matches!(
            s.observe(&a, &[], &[], Timestamp(1000)),
            Observation::New(_)
        ));
        s.observe(&b, &[], &[], Timestamp(2000));
        s.observe(&c, &[], &[], Timestamp(3000));
        assert_eq!(s.len(), 2);
        assert!(
            s.get(&a.key(), Timestamp(3000)).is_none(),
            "least recently seen made room"
        );
        assert!(s.get(&b.key(), Timestamp(3000)).is_some());
        assert!(s.get(&b.key(), Timestamp(12_001)).is_none(), "expired");
        assert_eq!(s.list(Timestamp(12_500)).len(), 1);
        assert!(s.list(Timestamp(14_000)).is_empty());
    }

    #[test]
    fn same_identity_is_same() {
        let mut s = Strangers::new(4, 100);
        let a = id("a");
        s.observe(&a, &[], &[], Timestamp(1));
        assert!(matches!(
            s.observe(&a, &[], &[], Timestamp(2)),
            Observation::Same(_)
        ));
        assert_eq!(s.len(), 1);
    }
}
