//! The integrated relay's hand-off to its owner: one durable point on the receiving node.
//!
//! A relay stores a message, acknowledges it (`STORE_RESPONSE`), and later deletes it when the
//! recipient's confirmation arrives. At the *integrated* relay of a node the recipient is the
//! node itself, in the same process: storing the message as a relay record and then recording
//! it again in the node's inbox would cost two durable commits (and a push, a decryption and a
//! confirmation round trip over loopback) for one message. Instead the node installs an
//! [`OwnerInbox`]: the relay hands it the `STORE_MESSAGE`s it checked (owner, size, rate,
//! sender signatures — exactly as before), and the node verifies, decrypts and commits them
//! (ratchet state, de-duplication entries and history in one flush) before the relay answers.
//! For each message the node returns a [`Verdict`]:
//!
//! - [`Verdict::Recorded`]: durable in the node's inbox (or a duplicate of a message that is).
//!   The relay answers `STORE_RESPONSE` success and routes the node's signed
//!   `DELIVERY_CONFIRMATION` to the sender exactly as if the node had collected and confirmed
//!   a stored copy (forwarded to the sender's connection, else kept for it). Nothing is written
//!   to the relay's records.
//! - [`Verdict::Store`]: anything else (a sender the node does not handle on this path, a
//!   message it cannot decrypt, a group envelope, a local failure): the relay stores it as any
//!   relay does, and the node's collector handles it later (session reset notices, refusals and
//!   retries keep their existing paths).
//!
//! Home relays and relay-only relays never have an owner inbox; the relay protocol on the wire
//! is unchanged. Crash safety is argued in docs/PROTOCOL.md ("Node", one durable point).

use crate::identity::IdentityKey;
use crate::wire::relay::{DeliveryConfirmation, StoreMessage};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// What the owner did with one message (see the module docs).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Durable in the owner's inbox: answer success and forward this confirmation.
    Recorded(Box<DeliveryConfirmation>),
    /// Store it as a relay record for the owner's collector.
    Store,
}

/// The future an [`OwnerInbox`] returns: one verdict per message, in order.
pub type Verdicts = Pin<Box<dyn Future<Output = Vec<Verdict>> + Send + 'static>>;

/// Installed by the node on its integrated relay (see the module docs).
pub trait OwnerInbox: Send + Sync + 'static {
    /// `messages` from the authenticated `sender`, all for the owner, their sender signatures
    /// verified, in the order received. Must return exactly one verdict per message (missing
    /// ones are treated as [`Verdict::Store`]).
    fn receive(&self, sender: IdentityKey, messages: Arc<[StoreMessage]>) -> Verdicts;
}
