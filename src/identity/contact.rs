//! TOFU contacts and trust.
//!
//! A contact is keyed by its identity key. The first identity seen for a key is pinned
//! ([`Observation::New`]); a later one with a higher version and a valid signature replaces it
//! ([`Observation::Updated`]); an older version is ignored ([`Observation::Stale`]); the same
//! version with different contents is an equivocation and is refused
//! ([`Observation::Conflict`]). A different identity key is always a different contact: nothing
//! ever re-pins a contact to another key. Trust starts `Unknown` and only the user changes it.
//!
//! [`observe`] is the pure rule; [`ContactBook`] persists contacts in the [`Store`].

use super::{Identity, IdentityKey};
use crate::store::{Batch, Store, StoreError, Tree};
use crate::time::Timestamp;
use crate::wire::rendezvous::RelayHint;
use crate::wire::{msgpack, Endpoint};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// The user's assessment of a contact.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub enum Trust {
    /// Default for TOFU contacts.
    #[default]
    Unknown = 0,
    /// Verified out of band, or accepted.
    Trusted = 1,
    /// Untrusted: messages from it are refused.
    Rejected = 2,
}

impl TryFrom<u8> for Trust {
    type Error = String;
    fn try_from(v: u8) -> Result<Self, String> {
        match v {
            0 => Ok(Trust::Unknown),
            1 => Ok(Trust::Trusted),
            2 => Ok(Trust::Rejected),
            other => Err(format!("unknown trust value {other}")),
        }
    }
}
impl From<Trust> for u8 {
    fn from(t: Trust) -> u8 {
        t as u8
    }
}
impl std::fmt::Display for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Trust::Unknown => "unknown",
            Trust::Trusted => "trusted",
            Trust::Rejected => "rejected",
        })
    }
}

/// A pinned contact.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactIdentity {
    /// Newest valid identity seen.
    pub identity: Identity,
    /// The user's trust.
    pub trust: Trust,
    /// When first pinned.
    pub first_seen: Timestamp,
    /// When last seen (any valid version).
    pub last_seen: Timestamp,
    /// Last known direct endpoints.
    pub endpoints: Vec<Endpoint>,
    /// Last known home relays.
    pub relays: Vec<RelayHint>,
}

/// The outcome of seeing an identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observation {
    /// Not known before: pinned now.
    New(ContactIdentity),
    /// A higher version replaced the pinned one.
    Updated(ContactIdentity),
    /// The pinned version again (last_seen refreshed).
    Same(ContactIdentity),
    /// An older version: ignored.
    Stale(ContactIdentity),
    /// Same version, different contents: refused, the pinned one is kept.
    Conflict(ContactIdentity),
}

impl Observation {
    /// The contact as it stands after the observation.
    pub fn contact(&self) -> &ContactIdentity {
        match self {
            Observation::New(c)
            | Observation::Updated(c)
            | Observation::Same(c)
            | Observation::Stale(c)
            | Observation::Conflict(c) => c,
        }
    }
}

/// The TOFU rule. `existing` must be the contact pinned for `incoming.key()`, if any.
pub fn observe(
    existing: Option<&ContactIdentity>,
    incoming: &Identity,
    now: Timestamp,
) -> Observation {
    let Some(c) = existing else {
        return Observation::New(ContactIdentity {
            identity: incoming.clone(),
            trust: Trust::Unknown,
            first_seen: now,
            last_seen: now,
            endpoints: Vec::new(),
            relays: Vec::new(),
        });
    };
    let mut c = c.clone();
    debug_assert_eq!(c.identity.key(), incoming.key());
    match incoming.version().cmp(&c.identity.version()) {
        std::cmp::Ordering::Greater => {
            c.identity = incoming.clone();
            c.last_seen = now;
            Observation::Updated(c)
        }
        std::cmp::Ordering::Equal if c.identity.data_bytes() == incoming.data_bytes() => {
            c.last_seen = now;
            Observation::Same(c)
        }
        std::cmp::Ordering::Equal => Observation::Conflict(c),
        std::cmp::Ordering::Less => Observation::Stale(c),
    }
}

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
}

impl std::fmt::Debug for ContactBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContactBook").finish_non_exhaustive()
    }
}

/// Most contacts listed at once.
pub const MAX_LIST: usize = 100_000;

impl ContactBook {
    /// A book over `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        ContactBook { store }
    }

    /// The pinned contact for `key`.
    pub fn get(&self, key: &IdentityKey) -> Result<Option<ContactIdentity>, ContactError> {
        match self.store.get(Tree::Contacts, key.as_bytes())? {
            None => Ok(None),
            Some(bytes) => Ok(Some(decode(&bytes)?)),
        }
    }

    /// All contacts in key order.
    pub fn list(&self) -> Result<Vec<ContactIdentity>, ContactError> {
        self.store
            .scan(Tree::Contacts, b"", None, MAX_LIST)?
            .iter()
            .map(|(_, v)| decode(v).map_err(ContactError::from))
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
        Ok(())
    }
}

fn decode(bytes: &[u8]) -> Result<ContactIdentity, StoreError> {
    msgpack::decode(bytes).map_err(|e| StoreError::Corrupt {
        tree: Tree::Contacts,
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Flags, UserIdentity};
    use crate::store::SledStore;

    #[test]
    fn tofu_rules() {
        let dir = tempfile::tempdir().unwrap();
        let book = ContactBook::new(Arc::new(SledStore::open(dir.path()).unwrap()));
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
    }
}
