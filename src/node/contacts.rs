//! The node's contact book: TOFU contacts ([`crate::identity::contact`]) persisted in the
//! store, one record per identity key in `Tree::Contacts`.
//!
//! Every write is committed (durable) before it returns. A stored identity is verified again
//! when it is read, through the node's [`VerifiedCache`], so reading a known contact costs a
//! hash, not a signature check, and a damaged or planted record is refused as corrupt.

use crate::identity::contact::observe;
use crate::identity::{
    ContactIdentity, Identity, IdentityKey, Observation, Trust, UnverifiedIdentity, VerifiedCache,
};
use crate::store::{Batch, Store, StoreError, Tree};
use crate::time::Timestamp;
use crate::wire::rendezvous::RelayHint;
use crate::wire::{msgpack, Endpoint};
use serde::Deserialize;
use std::sync::Arc;

/// Errors of the contact book.
#[derive(Debug, thiserror::Error)]
pub enum ContactError {
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// No such contact.
    #[error("unknown contact {0}")]
    Unknown(IdentityKey),
    /// The identity names a different key than the contact.
    #[error("identity key mismatch")]
    KeyMismatch,
}

/// Contacts persisted in the store.
#[derive(Clone)]
pub struct ContactBook {
    store: Arc<dyn Store>,
    verified: VerifiedCache,
    /// Notified after every write (see [`ContactBook::changes`]).
    changed: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for ContactBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContactBook").finish_non_exhaustive()
    }
}

/// Most contacts listed at once.
pub const MAX_LIST: usize = 100_000;

impl ContactBook {
    /// A book over `store`. Stored identities are verified again when read, through
    /// `verified` (the node's cache), so a record is trusted only as far as its signature.
    pub fn new(store: Arc<dyn Store>, verified: VerifiedCache) -> Self {
        ContactBook {
            store,
            verified,
            changed: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// The pinned contact for `key`.
    pub fn get(&self, key: &IdentityKey) -> Result<Option<ContactIdentity>, ContactError> {
        match self.store.get(Tree::Contacts, key.as_bytes())? {
            None => Ok(None),
            Some(bytes) => Ok(Some(self.decode(&bytes)?)),
        }
    }

    /// All contacts in key order.
    pub fn list(&self) -> Result<Vec<ContactIdentity>, ContactError> {
        self.store
            .scan(Tree::Contacts, b"", None, MAX_LIST)?
            .iter()
            .map(|(_, v)| self.decode(v).map_err(ContactError::from))
            .collect()
    }

    /// Applies the TOFU rule to `incoming` and persists the result (durably).
    pub fn observe(
        &self,
        incoming: &Identity,
        now: Timestamp,
    ) -> Result<Observation, ContactError> {
        let existing = self.get(&incoming.key())?;
        let obs = observe(existing.as_ref(), incoming, now);
        match &obs {
            Observation::Conflict(_) | Observation::Stale(_) => {}
            other => self.put(other.contact())?,
        }
        Ok(obs)
    }

    /// Observes an identity and records where it can be reached.
    pub fn observe_with_routes(
        &self,
        incoming: &Identity,
        endpoints: &[Endpoint],
        relays: &[RelayHint],
        now: Timestamp,
    ) -> Result<Observation, ContactError> {
        let existing = self.get(&incoming.key())?;
        let mut obs = observe(existing.as_ref(), incoming, now);
        if let Observation::New(c) | Observation::Updated(c) | Observation::Same(c) = &mut obs {
            if !endpoints.is_empty() {
                c.endpoints = endpoints.to_vec();
            }
            if !relays.is_empty() {
                c.relays = relays.to_vec();
            }
            let c = c.clone();
            self.put(&c)?;
        }
        Ok(obs)
    }

    /// Sets the user's trust in a contact.
    pub fn set_trust(
        &self,
        key: &IdentityKey,
        trust: Trust,
    ) -> Result<ContactIdentity, ContactError> {
        let mut c = self.get(key)?.ok_or(ContactError::Unknown(*key))?;
        c.trust = trust;
        self.put(&c)?;
        Ok(c)
    }

    /// Stores `c` as it is (e.g. a stranger the user adds as a contact).
    pub fn insert(&self, c: &ContactIdentity) -> Result<(), ContactError> {
        self.put(c)
    }

    fn put(&self, c: &ContactIdentity) -> Result<(), ContactError> {
        let mut b = Batch::new();
        b.put(
            Tree::Contacts,
            c.identity.key().as_bytes().to_vec(),
            msgpack::encode(c),
        );
        self.store.commit(b)?;
        self.changed.notify_one();
        Ok(())
    }

    /// Notified after every committed write (one stored permit: a burst of writes wakes a
    /// waiter once). Clones of this book share it.
    pub fn changes(&self) -> Arc<tokio::sync::Notify> {
        self.changed.clone()
    }

    /// Decodes a stored contact, verifying its identity through the cache.
    fn decode(&self, bytes: &[u8]) -> Result<ContactIdentity, StoreError> {
        let corrupt = |detail: String| StoreError::Corrupt {
            tree: Tree::Contacts,
            detail,
        };
        let s: StoredContact = msgpack::decode(bytes).map_err(|e| corrupt(e.to_string()))?;
        Ok(ContactIdentity {
            identity: s
                .identity
                .verify(Some(&self.verified))
                .map_err(|e| corrupt(e.to_string()))?,
            trust: s.trust,
            first_seen: s.first_seen,
            last_seen: s.last_seen,
            endpoints: s.endpoints,
            relays: s.relays,
        })
    }
}

/// [`ContactIdentity`] as stored (its serde layout, field for field), identity not yet verified.
#[derive(Deserialize)]
struct StoredContact {
    identity: UnverifiedIdentity,
    trust: Trust,
    first_seen: Timestamp,
    last_seen: Timestamp,
    endpoints: Vec<Endpoint>,
    relays: Vec<RelayHint>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Flags, UserIdentity};
    use crate::store::SledStore;

    #[test]
    fn tofu_rules() {
        let dir = tempfile::tempdir().unwrap();
        let verified = VerifiedCache::new();
        let book = ContactBook::new(
            Arc::new(SledStore::open(dir.path()).unwrap()),
            verified.clone(),
        );
        let mut u = UserIdentity::generate(
            "dave",
            Flags::default(),
            Timestamp(1),
            &mut rand::rngs::OsRng,
        )
        .unwrap();
        let v1 = u.identity().clone();
        assert!(matches!(
            book.observe(&v1, Timestamp(10)).unwrap(),
            Observation::New(_)
        ));
        assert!(matches!(
            book.observe(&v1, Timestamp(11)).unwrap(),
            Observation::Same(_)
        ));
        book.set_trust(&v1.key(), Trust::Trusted).unwrap();
        u.update(Some("david"), None, None, Timestamp(12)).unwrap();
        let v2 = u.identity().clone();
        let obs = book.observe(&v2, Timestamp(13)).unwrap();
        assert!(matches!(obs, Observation::Updated(_)));
        assert_eq!(
            obs.contact().trust,
            Trust::Trusted,
            "trust survives updates"
        );
        assert!(matches!(
            book.observe(&v1, Timestamp(14)).unwrap(),
            Observation::Stale(_)
        ));
        let stored = book.get(&v1.key()).unwrap().unwrap();
        assert_eq!(stored.identity.version(), 2);
        assert_eq!(stored.first_seen, Timestamp(10));
        assert_eq!(stored.last_seen, Timestamp(13));

        // Same version, different content: an equivocation, refused.
        let mut fork = UserIdentity::from_secrets(
            &u.signing_key().to_bytes(),
            &u.noise_secret().to_bytes(),
            v1.clone(),
        )
        .unwrap();
        fork.update(Some("evil twin"), None, None, Timestamp(15))
            .unwrap();
        assert_eq!(fork.identity().version(), 2);
        assert!(matches!(
            book.observe(fork.identity(), Timestamp(16)).unwrap(),
            Observation::Conflict(_)
        ));
        assert_eq!(
            book.get(&v1.key())
                .unwrap()
                .unwrap()
                .identity
                .username()
                .as_str(),
            "david"
        );

        // Another key with the same username is another contact.
        let other = UserIdentity::generate(
            "david",
            Flags::default(),
            Timestamp(1),
            &mut rand::rngs::OsRng,
        )
        .unwrap();
        assert!(matches!(
            book.observe(other.identity(), Timestamp(20)).unwrap(),
            Observation::New(_)
        ));
        assert_eq!(book.list().unwrap().len(), 2);
        assert_eq!(book.get(&v1.key()).unwrap().unwrap().trust, Trust::Trusted);
        // Reads went through the node's cache (not a process-wide one).
        assert!(!verified.is_empty());
    }

    #[test]
    fn stored_records_keep_their_layout_and_a_forged_identity_is_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let book = ContactBook::new(store.clone(), VerifiedCache::new());
        let u = UserIdentity::generate(
            "erin",
            Flags::default(),
            Timestamp(1),
            &mut rand::rngs::OsRng,
        )
        .unwrap();
        let Observation::New(c) = book.observe(u.identity(), Timestamp(2)).unwrap() else {
            panic!("new contact")
        };
        let raw = store
            .get(Tree::Contacts, u.key().as_bytes())
            .unwrap()
            .unwrap();
        // The record is ContactIdentity's own encoding, and serde decodes it as before.
        assert_eq!(raw, msgpack::encode(&c));
        assert_eq!(msgpack::decode::<ContactIdentity>(&raw).unwrap(), c);
        assert_eq!(book.get(&u.key()).unwrap(), Some(c));
        // A record whose identity signature does not verify is refused as corrupt.
        let mut bad = raw.clone();
        let sig_at = bad
            .windows(64)
            .position(|w| w == u.identity().signature())
            .unwrap();
        bad[sig_at] ^= 1;
        let mut b = Batch::new();
        b.put(Tree::Contacts, u.key().as_bytes().to_vec(), bad);
        store.commit(b).unwrap();
        let fresh = ContactBook::new(store, VerifiedCache::new());
        assert!(matches!(
            fresh.get(&u.key()),
            Err(ContactError::Store(StoreError::Corrupt {
                tree: Tree::Contacts,
                ..
            }))
        ));
    }
}
