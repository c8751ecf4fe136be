//! The membership of a group: fixed at creation and signed by the creator.
//!
//! ```text
//! Membership       = [group_id: bin(16), name: str (1..=64 bytes), creator: bin(32),
//!                     members: [bin(32), ...] (2..=MAX_MEMBERS, strictly ascending, includes
//!                     the creator), created_at: uint (ms since the epoch)]
//! SignedMembership = [membership: bin (the exact Membership bytes), signature: bin(64)]
//! signature        = Ed25519(creator, "SREMP-1 group-membership\0" || membership bytes)
//! ```
//! Verification is over the exact received bytes, which must then decode to a membership that
//! keeps every rule above; nothing about the membership can change afterwards (members are
//! neither added nor removed — they may only decline or leave).

use super::{GroupError, GroupId, MAX_MEMBERS, MAX_NAME_LEN};
use crate::identity::IdentityKey;
use crate::sig::{self, SigContext};
use crate::time::Timestamp;
use crate::wire::msgpack;
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

/// Who is in a group, as the creator signed it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Membership {
    /// Random group id.
    pub group_id: GroupId,
    /// Display name chosen by the creator.
    pub name: String,
    /// The creator's identity key.
    #[serde(with = "crate::wire::bytes::fixed")]
    pub creator: [u8; 32],
    /// Every member's identity key (the creator included), strictly ascending.
    pub members: Vec<Member>,
    /// Creation time (creator's clock).
    pub created_at: u64,
}

/// One member's identity key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Member(#[serde(with = "crate::wire::bytes::fixed")] pub [u8; 32]);

impl From<IdentityKey> for Member {
    fn from(k: IdentityKey) -> Self {
        Member(k.0)
    }
}

impl Member {
    /// As an identity key.
    pub fn key(&self) -> IdentityKey {
        IdentityKey(self.0)
    }
}

impl Membership {
    /// A membership for `creator` and `others` (sorted and de-duplicated here).
    pub fn new(
        group_id: GroupId,
        name: &str,
        creator: IdentityKey,
        others: &[IdentityKey],
        now: Timestamp,
    ) -> Result<Membership, GroupError> {
        let mut members: Vec<Member> = others.iter().map(|k| Member(k.0)).collect();
        members.push(Member(creator.0));
        members.sort();
        members.dedup();
        let m = Membership {
            group_id,
            name: name.to_string(),
            creator: creator.0,
            members,
            created_at: now.0,
        };
        m.check()?;
        Ok(m)
    }

    /// The rules of the module docs.
    pub fn check(&self) -> Result<(), GroupError> {
        if self.name.is_empty() || self.name.len() > MAX_NAME_LEN {
            return Err(GroupError::InvalidMembership("name length"));
        }
        if self.members.len() < 2 {
            return Err(GroupError::InvalidMembership("fewer than two members"));
        }
        if self.members.len() > MAX_MEMBERS {
            return Err(GroupError::InvalidMembership("too many members"));
        }
        if !self
            .members
            .windows(2)
            .all(|w| matches!(w, [a, b] if a < b))
        {
            return Err(GroupError::InvalidMembership(
                "members not strictly ascending",
            ));
        }
        if !self.is_member(&IdentityKey(self.creator)) {
            return Err(GroupError::InvalidMembership("creator not a member"));
        }
        Ok(())
    }

    /// Whether `key` is a member.
    pub fn is_member(&self, key: &IdentityKey) -> bool {
        self.members.binary_search(&Member(key.0)).is_ok()
    }

    /// Members other than `me`.
    pub fn others(&self, me: &IdentityKey) -> impl Iterator<Item = IdentityKey> + '_ {
        let me = *me;
        self.members
            .iter()
            .map(|m| m.key())
            .filter(move |k| *k != me)
    }

    /// Encodes and signs (the signer must be the creator).
    pub fn sign(&self, creator: &SigningKey) -> Result<SignedMembership, GroupError> {
        if creator.verifying_key().to_bytes() != self.creator {
            return Err(GroupError::NotCreator);
        }
        let bytes = msgpack::encode(self);
        let signature = sig::sign(creator, SigContext::GroupMembership, &[&bytes]);
        Ok(SignedMembership {
            membership: bytes,
            signature,
        })
    }
}

/// A membership as it travels: its exact bytes and the creator's signature.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignedMembership {
    /// The Membership bytes.
    #[serde(with = "serde_bytes")]
    pub membership: Vec<u8>,
    /// The creator's signature.
    #[serde(with = "crate::wire::bytes::fixed")]
    pub signature: [u8; 64],
}

impl SignedMembership {
    /// Verifies the signature over the exact bytes with the creator key they name, and the
    /// membership rules.
    pub fn verify(&self) -> Result<Membership, GroupError> {
        let m: Membership = msgpack::decode(&self.membership)?;
        let key = sig::verifying_key(&m.creator)?;
        sig::verify(
            &key,
            SigContext::GroupMembership,
            &[&self.membership],
            &self.signature,
        )?;
        m.check()?;
        Ok(m)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    fn ik(k: &SigningKey) -> IdentityKey {
        IdentityKey(k.verifying_key().to_bytes())
    }

    #[test]
    fn sign_verify_and_tamper() {
        let (a, b, c) = (key(1), key(2), key(3));
        let m = Membership::new(
            GroupId([9; 16]),
            "team",
            ik(&a),
            &[ik(&b), ik(&c), ik(&b)],
            Timestamp(5),
        )
        .unwrap();
        assert_eq!(m.members.len(), 3);
        let s = m.sign(&a).unwrap();
        assert_eq!(s.verify().unwrap(), m);
        assert_eq!(m.sign(&b).err(), Some(GroupError::NotCreator));
        let mut bad = s.clone();
        if let Some(x) = bad.membership.last_mut() {
            *x ^= 1;
        }
        assert!(bad.verify().is_err());
        // Signed by a member who claims to be creator of a membership naming someone else.
        let mut forged = m.clone();
        forged.creator = ik(&b).0;
        let bytes = msgpack::encode(&forged);
        let sig = sig::sign(&a, SigContext::GroupMembership, &[&bytes]);
        let f = SignedMembership {
            membership: bytes,
            signature: sig,
        };
        assert_eq!(f.verify().err(), Some(GroupError::BadSignature));
    }

    #[test]
    fn rules() {
        let a = key(1);
        assert!(Membership::new(GroupId([0; 16]), "x", ik(&a), &[], Timestamp(0)).is_err());
        assert!(
            Membership::new(GroupId([0; 16]), "", ik(&a), &[ik(&key(2))], Timestamp(0)).is_err()
        );
        let many: Vec<IdentityKey> = (2..=40u8).map(|i| ik(&key(i))).collect();
        assert!(Membership::new(GroupId([0; 16]), "x", ik(&a), &many, Timestamp(0)).is_err());
        let mut m =
            Membership::new(GroupId([0; 16]), "x", ik(&a), &[ik(&key(2))], Timestamp(0)).unwrap();
        m.members.reverse();
        assert!(m.check().is_err());
    }
}
