//! Group control and message envelopes: what travels inside a pairwise ratchet payload of
//! kind 3 (group).
//!
//! ```text
//! GroupEnvelope = [type: uint, group_id: bin(16), body: bin]
//! type 1 invite      body = [membership: SignedMembership, sender_key: SenderKeyDistribution]
//!                    (from the creator only; the creator's own chain)
//! type 2 accept      body = SenderKeyDistribution (the accepting member's chain)
//! type 3 decline     body = empty
//! type 4 sender_key  body = SenderKeyDistribution (a new generation after a leave/decline)
//! type 5 leave       body = empty
//! type 6 close       body = empty (from the creator only)
//! type 7 message     body = GroupMessage (see `sender_key`)
//! type 8 forward     body = [to: [bin(32), ...], inner: SignedInner]   (member -> creator)
//! type 9 forwarded   body = [from: bin(32), inner: SignedInner]        (creator -> member)
//! type 10 delivered  body = [author: bin(32), message_id: bin(16)]
//!                    (a receipt for a message that reached us through the creator; travels
//!                    only inside a forward, signed by the member who received the message)
//! SignedInner        = [envelope: bin (a type 2, 3, 4, 5, 7 or 10 envelope of the same group),
//!                       signature: bin(64)]
//! signature          = Ed25519(author, "SREMP-1 group-forward\0" || envelope bytes)
//! ```
//! The pairwise session authenticates who sent the envelope; the group layer then checks that
//! this sender may send it (member, creator, author of the message). Types 8 and 9 carry an
//! envelope between two members who are not each other's contacts through the creator (who is
//! everyone's contact): the inner envelope is signed by its author, whose identity key the
//! creator's signed membership names, so the creator can neither forge nor alter it, and a
//! group message inside stays encrypted under the author's sender key.

use super::membership::{Member, SignedMembership};
use super::sender_key::{GroupMessage, SenderKeyDistribution};
use super::{GroupError, GroupId};
use crate::identity::IdentityKey;
use crate::sig::{self, SigContext};
use crate::wire::msgpack;
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

/// The payload kind that carries group envelopes (docs/PROTOCOL.md, payload kinds).
pub const PAYLOAD_KIND: u8 = 3;

/// An invitation: the signed membership and the creator's sender key.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invite {
    /// Signed by the creator.
    pub membership: SignedMembership,
    /// The creator's chain.
    pub sender_key: SenderKeyDistribution,
}

/// An envelope signed by its author, to travel through the creator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedInner {
    /// The exact envelope bytes (type 2, 3, 4, 5 or 7 of the same group).
    #[serde(with = "serde_bytes")]
    pub envelope: Vec<u8>,
    /// Ed25519 by the author over `"SREMP-1 group-forward\0" || envelope`.
    #[serde(with = "crate::wire::bytes::fixed")]
    pub signature: [u8; 64],
}

impl SignedInner {
    /// Signs `envelope` as its author.
    pub fn sign(author: &SigningKey, envelope: Vec<u8>) -> SignedInner {
        let signature = sig::sign(author, SigContext::GroupForward, &[&envelope]);
        SignedInner {
            envelope,
            signature,
        }
    }

    /// Verifies the author's signature, decodes the inner envelope and checks that it belongs
    /// to `group` and is of a type that may be forwarded.
    pub fn open(&self, author: &IdentityKey, group: GroupId) -> Result<Control, GroupError> {
        let key = sig::verifying_key(&author.0)?;
        sig::verify(
            &key,
            SigContext::GroupForward,
            &[&self.envelope],
            &self.signature,
        )?;
        let (gid, c) = Control::decode(&self.envelope)?;
        if gid != group {
            return Err(GroupError::Malformed(
                "forwarded envelope names another group",
            ));
        }
        if c.forwardable() {
            Ok(c)
        } else {
            Err(GroupError::Malformed("envelope type may not be forwarded"))
        }
    }
}

/// Type 10: a signed receipt, from the member that signs the [`SignedInner`] carrying it, that
/// the group message `message_id` of `author` reached it through the creator.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivered {
    /// The message's author (to whom the creator forwards the receipt).
    pub author: Member,
    /// The 16-byte message id inside the group message's plaintext.
    #[serde(with = "crate::wire::bytes::fixed")]
    pub message_id: [u8; 16],
}

/// Type 8: a member asks the creator to forward `inner` to members it cannot reach (the
/// creator handles `inner` as its own copy too).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ForwardRequest {
    /// The members to forward to.
    pub to: Vec<Member>,
    /// The author's signed envelope.
    pub inner: SignedInner,
}

/// Type 9: the creator forwards `inner`, authored by `from`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forwarded {
    /// The author.
    pub from: Member,
    /// The author's signed envelope.
    pub inner: SignedInner,
}

/// A decoded envelope.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Control {
    /// Type 1.
    Invite(Invite),
    /// Type 2.
    Accept(SenderKeyDistribution),
    /// Type 3.
    Decline,
    /// Type 4.
    SenderKey(SenderKeyDistribution),
    /// Type 5.
    Leave,
    /// Type 6.
    Close,
    /// Type 7.
    Message(GroupMessage),
    /// Type 8.
    Forward(ForwardRequest),
    /// Type 9.
    Forwarded(Forwarded),
    /// Type 10.
    Delivered(Delivered),
}

#[derive(Serialize, Deserialize)]
struct Raw {
    kind: u8,
    group_id: GroupId,
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
}

impl Control {
    /// The type number.
    pub fn type_number(&self) -> u8 {
        match self {
            Control::Invite(_) => 1,
            Control::Accept(_) => 2,
            Control::Decline => 3,
            Control::SenderKey(_) => 4,
            Control::Leave => 5,
            Control::Close => 6,
            Control::Message(_) => 7,
            Control::Forward(_) => 8,
            Control::Forwarded(_) => 9,
            Control::Delivered(_) => 10,
        }
    }

    /// A short name for logs and JSON.
    pub fn name(&self) -> &'static str {
        match self {
            Control::Invite(_) => "invite",
            Control::Accept(_) => "accept",
            Control::Decline => "decline",
            Control::SenderKey(_) => "sender_key",
            Control::Leave => "leave",
            Control::Close => "close",
            Control::Message(_) => "message",
            Control::Forward(_) => "forward",
            Control::Forwarded(_) => "forwarded",
            Control::Delivered(_) => "delivered",
        }
    }

    /// Whether the envelope may travel inside a forward (types 2, 3, 4, 5, 7 and 10).
    pub fn forwardable(&self) -> bool {
        matches!(
            self,
            Control::Accept(_)
                | Control::Decline
                | Control::SenderKey(_)
                | Control::Leave
                | Control::Message(_)
                | Control::Delivered(_)
        )
    }

    /// The group message this envelope carries, directly (type 7) or inside a forward (types
    /// 8 and 9, inner envelope decoded without checking its signature): for telling an exact
    /// replay from a conflicting one after the core refused it as replayed (which it does
    /// only after every signature checked).
    pub fn message(&self) -> Option<GroupMessage> {
        let inner = match self {
            Control::Message(m) => return Some(m.clone()),
            Control::Forward(f) => &f.inner,
            Control::Forwarded(f) => &f.inner,
            _ => return None,
        };
        match Control::decode(&inner.envelope) {
            Ok((_, Control::Message(m))) => Some(m),
            _ => None,
        }
    }

    /// Encodes the envelope for `group_id`.
    pub fn encode(&self, group_id: GroupId) -> Vec<u8> {
        let body = match self {
            Control::Invite(i) => msgpack::encode(i),
            Control::Accept(k) | Control::SenderKey(k) => msgpack::encode(k),
            Control::Decline | Control::Leave | Control::Close => Vec::new(),
            Control::Message(m) => m.encode(),
            Control::Forward(f) => msgpack::encode(f),
            Control::Forwarded(f) => msgpack::encode(f),
            Control::Delivered(d) => msgpack::encode(d),
        };
        msgpack::encode(&Raw {
            kind: self.type_number(),
            group_id,
            body,
        })
    }

    /// Decodes an envelope; the whole input must be consumed, and a message must name the
    /// envelope's group.
    pub fn decode(bytes: &[u8]) -> Result<(GroupId, Control), GroupError> {
        let raw: Raw = msgpack::decode(bytes)?;
        let empty = |c: Control| {
            if raw.body.is_empty() {
                Ok(c)
            } else {
                Err(GroupError::Malformed("body must be empty"))
            }
        };
        let c = match raw.kind {
            1 => Control::Invite(msgpack::decode(&raw.body)?),
            2 => Control::Accept(msgpack::decode(&raw.body)?),
            3 => empty(Control::Decline)?,
            4 => Control::SenderKey(msgpack::decode(&raw.body)?),
            5 => empty(Control::Leave)?,
            6 => empty(Control::Close)?,
            7 => {
                let m = GroupMessage::decode(&raw.body)?;
                if m.group_id != raw.group_id {
                    return Err(GroupError::Malformed("message names another group"));
                }
                Control::Message(m)
            }
            8 => Control::Forward(msgpack::decode(&raw.body)?),
            9 => Control::Forwarded(msgpack::decode(&raw.body)?),
            10 => Control::Delivered(msgpack::decode(&raw.body)?),
            _ => return Err(GroupError::Malformed("unknown group envelope type")),
        };
        Ok((raw.group_id, c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trip() {
        let k = SenderKeyDistribution {
            generation: 2,
            chain_key: [5; 32],
            seq: 9,
        };
        for c in [
            Control::Accept(k.clone()),
            Control::Decline,
            Control::SenderKey(k),
            Control::Leave,
            Control::Close,
            Control::Delivered(Delivered {
                author: Member([8; 32]),
                message_id: [9; 16],
            }),
        ] {
            let g = GroupId([3; 16]);
            assert_eq!(Control::decode(&c.encode(g)).unwrap(), (g, c));
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_do_not_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = Control::decode(&bytes);
        }
    }
}
