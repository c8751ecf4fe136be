//! TOFU contacts and trust.
//!
//! A contact is keyed by its identity key. The first identity seen for a key is pinned
//! ([`Observation::New`]); a later one with a higher version and a valid signature replaces it
//! ([`Observation::Updated`]); an older version is ignored ([`Observation::Stale`]); the same
//! version with different contents is an equivocation and is refused
//! ([`Observation::Conflict`]). A different identity key is always a different contact: nothing
//! ever re-pins a contact to another key. Trust starts `Unknown` and only the user changes it.
//!
//! [`observe`] is the pure rule; the node's `ContactBook` (`node::contacts`) persists contacts.

use super::Identity;
use crate::time::Timestamp;
use crate::wire::rendezvous::RelayHint;
use crate::wire::Endpoint;
use serde::{Deserialize, Serialize};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Flags, UserIdentity};

    #[test]
    fn observe_rule() {
        let mut u = UserIdentity::generate(
            "dave",
            Flags::default(),
            Timestamp(1),
            &mut rand::rngs::OsRng,
        )
        .unwrap();
        let v1 = u.identity().clone();
        let Observation::New(c1) = observe(None, &v1, Timestamp(10)) else {
            panic!("first sight pins")
        };
        assert!(matches!(
            observe(Some(&c1), &v1, Timestamp(11)),
            Observation::Same(c) if c.last_seen == Timestamp(11)
        ));
        u.update(Some("david"), None, None, Timestamp(12)).unwrap();
        let v2 = u.identity().clone();
        let Observation::Updated(c2) = observe(Some(&c1), &v2, Timestamp(13)) else {
            panic!("a higher version replaces")
        };
        assert!(matches!(
            observe(Some(&c2), &v1, Timestamp(14)),
            Observation::Stale(_)
        ));
    }
}
