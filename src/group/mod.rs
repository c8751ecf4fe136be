//! Group chats (no I/O): fixed membership signed by the creator, sender keys, per-member state.
//!
//! A group is created with chosen members who accept or decline; nobody is added or removed
//! afterwards (members may leave; the creator may close it). There is no group server: every
//! group envelope travels inside a pairwise Double Ratchet payload of kind 3 between two
//! members, through the node's normal outbox and its direct-first/relay-fallback delivery.
//!
//! Flow (docs/PROTOCOL.md, "Groups"):
//! - create: the creator signs the [`membership::Membership`] (random 16-byte id, name,
//!   creator, member identity keys) and sends each member an invite carrying it and the
//!   creator's sender key;
//! - accept: the member makes its own sender key and sends it to every other member that has
//!   not declined or left; decline: the member tells every other member and keeps nothing;
//! - message: the author encrypts and signs once with its sender key
//!   ([`sender_key::SenderKey`]) and sends the same bytes to every member that has not
//!   declined or left; a member that has not yet got the author's key (or not yet accepted)
//!   holds the message (at most [`MAX_BUFFERED`]) and opens it when it can;
//! - leave / decline: the others mark the member and replace their own sender keys (new
//!   generation, sent to the remaining members);
//! - close (creator): every member deletes the group's keys and messages and keeps only a
//!   tombstone, so later envelopes for it are refused ([`GroupError::Closed`]).
//!
//! Limits: [`MAX_MEMBERS`] members, names of [`MAX_NAME_LEN`] bytes, [`MAX_SKIP`] messages
//! ahead per sender, [`MAX_BUFFERED`] held messages per group, [`MAX_PENDING`] envelopes
//! waiting for their invitation per node. Every refusal is a typed [`GroupError`] with a
//! numbered code; it changes nothing else.
//!
//! What it does not do: add or remove members, MLS-style tree keys (for fixed membership of
//! at most [`MAX_MEMBERS`], pairwise sender-key distribution costs one pairwise message per
//! member per rotation, and rotations only happen on leave/decline).
//!
//! Members who are not each other's contacts: every member is the creator's contact, so their
//! envelopes travel through the creator ([`Group::route`]): the creator's copy becomes a
//! forward request (type 8) naming the members the sender cannot reach, with the envelope
//! signed by its author; the creator handles it as its own copy and forwards it unchanged
//! (type 9); the receiver checks the author's signature against the signed membership.

pub mod control;
pub mod error;
pub mod membership;
pub mod sender_key;
pub mod state;

pub use control::{Control, Invite};
pub use error::GroupError;
pub use membership::{Member, Membership, SignedMembership};
pub use sender_key::{GroupMessage, ReceiverKey, SenderKey, SenderKeyDistribution};
pub use state::{Effects, Group, MemberState, Pending, Shown};

use serde::{Deserialize, Serialize};

/// Most members in a group, the creator included.
pub const MAX_MEMBERS: usize = 32;
/// Longest group name in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Most messages a sender's number may jump ahead.
pub const MAX_SKIP: u32 = 256;
/// Most skipped keys kept per sender chain.
pub const MAX_SKIPPED_KEYS: usize = 512;
/// Most messages held per group until their sender key (or our acceptance) arrives.
pub const MAX_BUFFERED: usize = 256;
/// Most envelopes held per node for groups whose invitation has not arrived yet.
pub const MAX_PENDING: usize = 64;
/// Most groups per node (tombstones of closed groups included).
pub const MAX_GROUPS: usize = 1024;

/// A random 16-byte group id.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct GroupId(#[serde(with = "crate::wire::bytes::fixed")] pub [u8; 16]);

impl GroupId {
    /// A fresh id.
    pub fn random<R: rand_core::CryptoRngCore + ?Sized>(rng: &mut R) -> Self {
        let mut id = [0u8; 16];
        rng.fill_bytes(&mut id);
        GroupId(id)
    }

    /// Parses 32 hex characters.
    pub fn parse(s: &str) -> Option<GroupId> {
        let v = hex::decode(s).ok()?;
        Some(GroupId(<[u8; 16]>::try_from(v.as_slice()).ok()?))
    }
}

impl std::fmt::Display for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for GroupId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "GroupId({self})")
    }
}
