//! Node events beyond history entries, for control clients such as `sremp chat`: a contact was
//! pinned, updated or had its trust changed, or presented a conflicting identity (TOFU).
//!
//! The node publishes them on a broadcast channel ([`Events`]); the control socket streams them
//! on a `follow` connection opened with `"events":true` (see [`super::control`]). History entries
//! (new messages and status changes) keep their own channel ([`super::Node::subscribe`]).
//!
//! Flow: every place that applies the TOFU rule to a contact ([`Observation`]) or changes its
//! trust calls [`Events::observed`] / [`Events::trust`] with the result; `Same` and `Stale`
//! observations change nothing visible and are not published.
//!
//! Limits: the channel holds [`CAPACITY`] events; a slow subscriber is told how many it missed
//! (the control stream's `lagged` line) and should re-read the contact list.

use super::control::ContactView;
use crate::identity::{ContactIdentity, Observation};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

/// Events buffered per subscriber before it lags.
pub const CAPACITY: usize = 256;

/// What changed about a contact.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContactChange {
    /// Pinned for the first time (TOFU `New`: a card was added, or a new peer connected).
    New,
    /// A newer identity version replaced the pinned one (username or Noise key changed).
    Updated,
    /// The user changed its trust.
    Trust,
}

/// One event (`{"ok":true,"event":EVENT}` on a `follow` stream with `"events":true`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NodeEvent {
    /// A contact was added or changed: `{"kind":"contact","change":"new"|"updated"|"trust",
    /// "contact":CONTACT}`.
    Contact {
        /// What changed.
        change: ContactChange,
        /// The contact as it stands now.
        contact: ContactView,
    },
    /// A peer presented an identity that conflicts with the pinned one (same key and version,
    /// different contents: the key signed two versions, a sign it is used by someone else); the
    /// pinned one is kept and the connection or card refused:
    /// `{"kind":"key_conflict","contact":CONTACT,"detail":"..."}`.
    KeyConflict {
        /// The pinned contact (unchanged).
        contact: ContactView,
        /// What happened, for people.
        detail: String,
    },
}

/// Where the TOFU conflict was seen (for the event's `detail`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// A card the user added.
    Card,
    /// A peer's handshake (inbound or outbound connection).
    Connection,
    /// A rendezvous answer.
    Rendezvous,
}

/// The node's event channel (cheap to clone).
#[derive(Clone, Debug)]
pub struct Events {
    tx: broadcast::Sender<NodeEvent>,
}

impl Default for Events {
    fn default() -> Self {
        Events::new()
    }
}

impl Events {
    /// A channel with no subscriber yet.
    pub fn new() -> Self {
        Events {
            tx: broadcast::channel(CAPACITY).0,
        }
    }

    /// A receiver of every event published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.tx.subscribe()
    }

    /// Publishes (no subscriber: dropped).
    pub fn publish(&self, ev: NodeEvent) {
        let _ = self.tx.send(ev);
    }

    /// Publishes what a TOFU observation changed.
    pub fn observed(&self, obs: &Observation, seen: Seen) {
        if let Some(ev) = event_of(obs, seen) {
            self.publish(ev);
        }
    }

    /// Publishes a trust change.
    pub fn trust(&self, c: &ContactIdentity) {
        self.publish(NodeEvent::Contact {
            change: ContactChange::Trust,
            contact: c.into(),
        });
    }
}

/// The event an observation gives, if any (`Same` and `Stale` change nothing).
pub fn event_of(obs: &Observation, seen: Seen) -> Option<NodeEvent> {
    let contact = |c: &ContactIdentity| ContactView::from(c);
    match obs {
        Observation::New(c) => Some(NodeEvent::Contact {
            change: ContactChange::New,
            contact: contact(c),
        }),
        Observation::Updated(c) => Some(NodeEvent::Contact {
            change: ContactChange::Updated,
            contact: contact(c),
        }),
        Observation::Conflict(c) => {
            let how = match seen {
                Seen::Card => "the card you added",
                Seen::Connection => "a connection",
                Seen::Rendezvous => "a rendezvous answer",
            };
            Some(NodeEvent::KeyConflict {
                contact: contact(c),
                detail: format!(
                    "{how} presented an identity for {}'s key with the same version ({}) but \
                     different contents; the pinned identity is kept and the other refused",
                    c.identity.username(),
                    c.identity.version()
                ),
            })
        }
        Observation::Same(_) | Observation::Stale(_) => None,
    }
}

/// A contact's reachability (`presence` response): `{"id":"<64 hex>","direct":bool}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceView {
    /// Contact id, 64 hex.
    pub id: String,
    /// The node's last direct attempt to this contact succeeded (its node is online and
    /// reachable directly); `false` also when no attempt was made yet.
    pub direct: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Flags, Trust, UserIdentity};
    use crate::time::Timestamp;

    fn contact() -> ContactIdentity {
        let u = UserIdentity::generate(
            "erin",
            Flags::default(),
            Timestamp(1),
            &mut rand::rngs::OsRng,
        )
        .unwrap_or_else(|e| unreachable!("{e}"));
        ContactIdentity {
            identity: u.identity().clone(),
            trust: Trust::Unknown,
            first_seen: Timestamp(1),
            last_seen: Timestamp(1),
            endpoints: vec![],
            relays: vec![],
        }
    }

    #[test]
    fn observations_map_to_events_and_serialize_as_documented() {
        let c = contact();
        assert!(event_of(&Observation::Same(c.clone()), Seen::Connection).is_none());
        assert!(event_of(&Observation::Stale(c.clone()), Seen::Connection).is_none());
        let new = event_of(&Observation::New(c.clone()), Seen::Card);
        let v = serde_json::to_value(&new).unwrap_or_default();
        assert_eq!(v["kind"], "contact");
        assert_eq!(v["change"], "new");
        assert_eq!(v["contact"]["username"], "erin");
        let upd = event_of(&Observation::Updated(c.clone()), Seen::Connection);
        assert!(matches!(
            upd,
            Some(NodeEvent::Contact {
                change: ContactChange::Updated,
                ..
            })
        ));
        let conflict = event_of(&Observation::Conflict(c.clone()), Seen::Connection);
        let v = serde_json::to_value(&conflict).unwrap_or_default();
        assert_eq!(v["kind"], "key_conflict");
        assert_eq!(v["contact"]["id"], c.identity.key().to_string());
        assert!(v["detail"]
            .as_str()
            .is_some_and(|d| d.contains("a connection") && d.contains("erin")));
        // Round trip (clients parse what the node writes).
        let back: Option<NodeEvent> = serde_json::from_value(v).ok();
        assert_eq!(back, conflict);
    }

    #[test]
    fn subscribers_see_published_events() {
        let ev = Events::new();
        let mut rx = ev.subscribe();
        let c = contact();
        ev.trust(&c);
        ev.observed(&Observation::Same(c.clone()), Seen::Rendezvous);
        ev.observed(&Observation::New(c), Seen::Rendezvous);
        assert!(matches!(
            rx.try_recv(),
            Ok(NodeEvent::Contact {
                change: ContactChange::Trust,
                ..
            })
        ));
        assert!(matches!(
            rx.try_recv(),
            Ok(NodeEvent::Contact {
                change: ContactChange::New,
                ..
            })
        ));
        assert!(rx.try_recv().is_err(), "Same published nothing");
    }
}
