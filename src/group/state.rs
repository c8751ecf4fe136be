//! One group as a member's node holds it: who answered what, our sender key, the other
//! members' chains, and messages held until they can be opened. A state machine without I/O:
//! every call returns [`Effects`] (envelopes to send pairwise, messages to show) and the caller
//! stores the new state in the same batch as the outbox entries it queues.
//!
//! Member states: `invited` → `accepted` | `declined`; `accepted` → `left`. The creator starts
//! `accepted`. The group itself may be `closed` (a tombstone: membership kept, keys and held
//! messages gone). Envelopes go to every member other than us that has not declined or left
//! ([`Group::recipients`]).

use super::control::{Control, Delivered, ForwardRequest, Forwarded, Invite, SignedInner};
use super::membership::{Member, Membership, SignedMembership};
use super::sender_key::{GroupMessage, ReceiverKey, SenderKey};
use super::{GroupError, GroupId, MAX_BUFFERED, MAX_PENDING};
use crate::identity::IdentityKey;
use crate::ratchet::{Content, MessageId, Payload};
use crate::time::Timestamp;
use ed25519_dalek::SigningKey;
use rand_core::CryptoRngCore;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A member's answer, as this node knows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    /// Invited, no answer seen yet.
    Invited,
    /// Accepted.
    Accepted,
    /// Declined: receives nothing further.
    Declined,
    /// Left after accepting: receives nothing further.
    Left,
}

impl MemberState {
    /// The JSON/CLI word.
    pub fn name(self) -> &'static str {
        match self {
            MemberState::Invited => "invited",
            MemberState::Accepted => "accepted",
            MemberState::Declined => "declined",
            MemberState::Left => "left",
        }
    }

    fn active(self) -> bool {
        matches!(self, MemberState::Invited | MemberState::Accepted)
    }
}

/// A group message that opened, to be recorded in the history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Shown {
    /// The author.
    pub sender: IdentityKey,
    /// The author's message id (the same for every member).
    pub id: MessageId,
    /// Author's clock.
    pub sent_at: Timestamp,
    /// The text.
    pub text: String,
    /// Sender key generation.
    pub generation: u32,
    /// Number in the generation.
    pub seq: u32,
    /// Numbers skipped to reach it.
    pub gap: u32,
    /// [`GroupMessage::digest`] of the message (kept by the node to recognise a different
    /// ciphertext at the same number later).
    pub digest: [u8; super::sender_key::DIGEST_LEN],
    /// It reached us through the creator (a `forwarded` envelope): its author learns of the
    /// delivery only from our signed receipt ([`Group::receipts`]).
    pub forwarded: bool,
}

/// What a call wants done.
#[derive(Debug, Default)]
pub struct Effects {
    /// Envelopes (payload kind 3 content) to queue pairwise, in order.
    pub send: Vec<(IdentityKey, Vec<u8>)>,
    /// Messages now readable.
    pub shown: Vec<Shown>,
    /// Held messages refused while being opened (code name per message).
    pub refused: Vec<GroupError>,
    /// The group was closed: delete its messages.
    pub closed: bool,
    /// Signed receipts for our messages (type 10, through the creator): the member whose
    /// node received the message, and the message id.
    pub delivered: Vec<(IdentityKey, [u8; 16])>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
struct Held {
    #[serde(with = "serde_bytes")]
    message: Vec<u8>,
    /// It came through the creator (a receipt is owed once it opens).
    #[serde(default)]
    forwarded: bool,
}

/// One group.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Group {
    /// The membership the creator signed.
    pub membership: Membership,
    /// Its signed form (sent again in nothing; kept to show and check).
    pub signed: SignedMembership,
    /// Our identity key.
    #[serde(with = "crate::wire::bytes::fixed")]
    pub me: [u8; 32],
    states: BTreeMap<Member, MemberState>,
    /// Closed by the creator.
    pub closed: bool,
    own: Option<SenderKey>,
    receivers: BTreeMap<Member, Vec<ReceiverKey>>,
    held: Vec<Held>,
    /// Refusals by code name.
    pub refused: BTreeMap<String, u64>,
    /// The lowest generation our next fresh chain may have (0 until a restore): after a
    /// restore it is the restore time in seconds, above every generation this node may have
    /// used before it was rolled back ([`Group::restart_sender_key`]).
    #[serde(default)]
    min_generation: u32,
}

impl Group {
    /// Creates a group with `others` (sorted, de-duplicated; must not be empty). Returns the
    /// group and one invite per other member.
    pub fn create<R: CryptoRngCore + ?Sized>(
        rng: &mut R,
        signer: &SigningKey,
        name: &str,
        others: &[IdentityKey],
        now: Timestamp,
    ) -> Result<(Group, Effects), GroupError> {
        let me = IdentityKey(signer.verifying_key().to_bytes());
        let membership = Membership::new(GroupId::random(rng), name, me, others, now)?;
        let signed = membership.sign(signer)?;
        let own = SenderKey::new(rng, 0);
        let invite = Control::Invite(Invite {
            membership: signed.clone(),
            sender_key: own.distribution(),
        })
        .encode(membership.group_id);
        let mut states: BTreeMap<Member, MemberState> = membership
            .members
            .iter()
            .map(|m| (*m, MemberState::Invited))
            .collect();
        states.insert(Member(me.0), MemberState::Accepted);
        let send = membership
            .others(&me)
            .map(|k| (k, invite.clone()))
            .collect();
        let g = Group {
            membership,
            signed,
            me: me.0,
            states,
            closed: false,
            own: Some(own),
            receivers: BTreeMap::new(),
            held: Vec::new(),
            refused: BTreeMap::new(),
            min_generation: 0,
        };
        Ok((
            g,
            Effects {
                send,
                ..Effects::default()
            },
        ))
    }

    /// A group from an invitation received over `from`'s pairwise session.
    pub fn from_invite(
        me: IdentityKey,
        from: IdentityKey,
        invite: Invite,
    ) -> Result<Group, GroupError> {
        let membership = invite.membership.verify()?;
        if membership.creator != from.0 {
            return Err(GroupError::NotCreator);
        }
        if !membership.is_member(&me) {
            return Err(GroupError::NotMember);
        }
        let mut states: BTreeMap<Member, MemberState> = membership
            .members
            .iter()
            .map(|m| (*m, MemberState::Invited))
            .collect();
        states.insert(Member(from.0), MemberState::Accepted);
        let mut receivers = BTreeMap::new();
        receivers.insert(Member(from.0), vec![ReceiverKey::new(invite.sender_key)]);
        Ok(Group {
            membership,
            signed: invite.membership,
            me: me.0,
            states,
            closed: false,
            own: None,
            receivers,
            held: Vec::new(),
            refused: BTreeMap::new(),
            min_generation: 0,
        })
    }

    /// The group id.
    pub fn id(&self) -> GroupId {
        self.membership.group_id
    }

    /// Whether we created it.
    pub fn is_creator(&self) -> bool {
        self.membership.creator == self.me
    }

    /// Every member's state, in membership order.
    pub fn states(&self) -> Vec<(IdentityKey, MemberState)> {
        self.membership
            .members
            .iter()
            .map(|m| (m.key(), self.state_of(m)))
            .collect()
    }

    fn state_of(&self, m: &Member) -> MemberState {
        self.states.get(m).copied().unwrap_or(MemberState::Invited)
    }

    /// Our own state.
    pub fn my_state(&self) -> MemberState {
        self.state_of(&Member(self.me))
    }

    /// Messages held until a key or our acceptance arrives.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// Per member: messages skipped and not received (gaps), current generation.
    pub fn chains(&self) -> Vec<(IdentityKey, u32, u32, usize)> {
        self.receivers
            .iter()
            .filter_map(|(m, v)| {
                v.last().map(|r| {
                    (
                        m.key(),
                        r.generation(),
                        r.next_seq(),
                        v.iter().map(|r| r.missing()).sum(),
                    )
                })
            })
            .collect()
    }

    /// Our sender key's generation and next number.
    pub fn own_chain(&self) -> Option<(u32, u32)> {
        self.own.as_ref().map(|k| (k.chain.generation, k.chain.seq))
    }

    /// Counts a refusal.
    pub fn count(&mut self, e: &GroupError) {
        *self.refused.entry(e.name().to_string()).or_insert(0) += 1;
    }

    /// Every member other than us that has not declined or left.
    pub fn recipients(&self) -> Vec<IdentityKey> {
        let me = IdentityKey(self.me);
        self.membership
            .others(&me)
            .filter(|k| self.state_of(&Member(k.0)).active())
            .collect()
    }

    fn broadcast(&self, c: &Control) -> Vec<(IdentityKey, Vec<u8>)> {
        let bytes = c.encode(self.id());
        self.recipients()
            .into_iter()
            .map(|k| (k, bytes.clone()))
            .collect()
    }

    fn wipe(&mut self) {
        self.own = None;
        self.receivers.clear();
        self.held.clear();
    }

    fn open_ready(&mut self) -> Result<Effects, GroupError> {
        self.open_held(Effects::default())
    }

    /// Accepts the invitation: a sender key for us, sent to the other members; held messages
    /// that can now be read are opened.
    pub fn accept<R: CryptoRngCore + ?Sized>(
        &mut self,
        rng: &mut R,
    ) -> Result<Effects, GroupError> {
        if self.closed {
            return Err(GroupError::Closed);
        }
        if self.my_state() != MemberState::Invited {
            return Err(GroupError::WrongState(self.my_state().name()));
        }
        let own = SenderKey::new(rng, self.next_generation());
        let c = Control::Accept(own.distribution());
        self.own = Some(own);
        self.states.insert(Member(self.me), MemberState::Accepted);
        let send = self.broadcast(&c);
        let mut fx = self.open_ready()?;
        fx.send.splice(0..0, send);
        Ok(fx)
    }

    /// Declines: the others are told; nothing is kept but the membership.
    pub fn decline(&mut self) -> Result<Effects, GroupError> {
        if self.closed {
            return Err(GroupError::Closed);
        }
        if self.my_state() != MemberState::Invited {
            return Err(GroupError::WrongState(self.my_state().name()));
        }
        let send = self.broadcast(&Control::Decline);
        self.states.insert(Member(self.me), MemberState::Declined);
        self.wipe();
        Ok(Effects {
            send,
            ..Effects::default()
        })
    }

    /// Leaves (not the creator, who closes instead): the others are told.
    pub fn leave(&mut self) -> Result<Effects, GroupError> {
        if self.closed {
            return Err(GroupError::Closed);
        }
        if self.is_creator() {
            return Err(GroupError::WrongState("creator (close the group instead)"));
        }
        if self.my_state() != MemberState::Accepted {
            return Err(GroupError::WrongState(self.my_state().name()));
        }
        let send = self.broadcast(&Control::Leave);
        self.states.insert(Member(self.me), MemberState::Left);
        self.wipe();
        Ok(Effects {
            send,
            ..Effects::default()
        })
    }

    /// Closes (creator only): every member that has not declined or left is told.
    pub fn close(&mut self) -> Result<Effects, GroupError> {
        if self.closed {
            return Err(GroupError::Closed);
        }
        if !self.is_creator() {
            return Err(GroupError::NotCreator);
        }
        let send = self.broadcast(&Control::Close);
        self.closed = true;
        self.wipe();
        Ok(Effects {
            send,
            closed: true,
            ..Effects::default()
        })
    }

    /// Encrypts one message: the envelope and the members to send it to. The sender key
    /// advances; store the group with the outbox entries.
    pub fn encrypt(
        &mut self,
        signer: &SigningKey,
        payload: &Payload,
    ) -> Result<(Vec<u8>, Vec<IdentityKey>), GroupError> {
        if self.closed {
            return Err(GroupError::Closed);
        }
        if self.my_state() != MemberState::Accepted {
            return Err(GroupError::WrongState(self.my_state().name()));
        }
        let gid = self.id();
        let own = self
            .own
            .as_mut()
            .ok_or(GroupError::WrongState("no sender key"))?;
        let m = own.encrypt(gid, signer, &payload.encode())?;
        Ok((Control::Message(m).encode(gid), self.recipients()))
    }

    /// Routes envelopes for members we cannot reach pairwise (`reachable` is false: not our
    /// contact) through the creator, who is everyone's contact: for each envelope, the
    /// creator's copy becomes one forward request (type 8) naming those members, signed by us,
    /// and their own copies are dropped. Envelopes that may not be forwarded, and every send
    /// when we are the creator or cannot reach it ourselves, pass unchanged (the caller skips
    /// what it cannot send).
    pub fn route(
        &self,
        signer: &SigningKey,
        sends: Vec<(IdentityKey, Vec<u8>)>,
        reachable: impl Fn(&IdentityKey) -> bool,
    ) -> Vec<(IdentityKey, Vec<u8>)> {
        let creator = IdentityKey(self.membership.creator);
        if self.is_creator() || !reachable(&creator) {
            return sends;
        }
        // Envelopes in order of first appearance, each with its recipients.
        let mut by_env: Vec<(Vec<u8>, Vec<IdentityKey>)> = Vec::new();
        for (to, env) in sends {
            match by_env.iter_mut().find(|(e, _)| *e == env) {
                Some((_, v)) => v.push(to),
                None => by_env.push((env, vec![to])),
            }
        }
        let mut out = Vec::new();
        for (env, tos) in by_env {
            let forwardable = Control::decode(&env).is_ok_and(|(_, c)| c.forwardable());
            let far: Vec<Member> = tos
                .iter()
                .filter(|k| **k != creator && !reachable(k))
                .map(|k| Member(k.0))
                .collect();
            if !forwardable || far.is_empty() || !tos.contains(&creator) {
                out.extend(tos.into_iter().map(|k| (k, env.clone())));
                continue;
            }
            for k in tos {
                if k == creator {
                    let req = Control::Forward(ForwardRequest {
                        to: far.clone(),
                        inner: SignedInner::sign(signer, env.clone()),
                    });
                    out.push((k, req.encode(self.id())));
                } else if reachable(&k) {
                    out.push((k, env.clone()));
                }
            }
        }
        out
    }

    /// Receipts owed for messages that reached us through the creator (`shown` with
    /// `forwarded`): for each, one `forward` to the creator naming the author, carrying a
    /// `delivered` envelope signed by us, so the author learns its message reached us and the
    /// creator can neither forge nor alter the receipt.
    pub fn receipts(&self, signer: &SigningKey, shown: &[Shown]) -> Vec<(IdentityKey, Vec<u8>)> {
        if self.is_creator() {
            return Vec::new();
        }
        let creator = IdentityKey(self.membership.creator);
        shown
            .iter()
            .filter(|s| s.forwarded && s.sender != creator && s.sender.0 != self.me)
            .map(|s| {
                let receipt = Control::Delivered(Delivered {
                    author: Member(s.sender.0),
                    message_id: s.id.0,
                })
                .encode(self.id());
                let req = Control::Forward(ForwardRequest {
                    to: vec![Member(s.sender.0)],
                    inner: SignedInner::sign(signer, receipt),
                });
                (creator, req.encode(self.id()))
            })
            .collect()
    }

    fn rotate<R: CryptoRngCore + ?Sized>(&mut self, rng: &mut R) -> Vec<(IdentityKey, Vec<u8>)> {
        if self.my_state() != MemberState::Accepted {
            return Vec::new();
        }
        let own = SenderKey::new(rng, self.next_generation());
        let c = Control::SenderKey(own.distribution());
        self.own = Some(own);
        self.broadcast(&c)
    }

    /// The generation of our next fresh chain: one above the current one (0 for the first),
    /// and never below `min_generation`.
    fn next_generation(&self) -> u32 {
        self.own
            .as_ref()
            .map_or(0, |k| k.chain.generation.saturating_add(1))
            .max(self.min_generation)
    }

    /// After this node's store was restored from a backup (or may otherwise be older than
    /// what it already sent): our chain in the store may be one we advanced past and sent on
    /// after the backup, so sending on it would encrypt new texts under message keys already
    /// used. It is replaced by a fresh random chain whose generation is at least `floor` (the
    /// restore time in seconds: above every generation used before, which a restored store
    /// cannot know) and sent as `sender_key` to every member not declined or left. A member
    /// that has not accepted yet only remembers the floor for its chain at acceptance. Nothing
    /// for a closed group or one we declined or left.
    pub fn restart_sender_key<R: CryptoRngCore + ?Sized>(
        &mut self,
        rng: &mut R,
        floor: u32,
    ) -> Effects {
        self.min_generation = self.min_generation.max(floor);
        if self.closed || self.own.is_none() {
            return Effects::default();
        }
        Effects {
            send: self.rotate(rng),
            ..Effects::default()
        }
    }

    fn install(&mut self, from: Member, k: super::SenderKeyDistribution) {
        let v = self.receivers.entry(from).or_default();
        if v.iter().any(|r| r.generation() >= k.generation) {
            return;
        }
        v.push(ReceiverKey::new(k));
        // The current and the previous generation.
        while v.len() > 2 {
            v.remove(0);
        }
    }

    /// Handles an envelope that arrived over `from`'s pairwise session. A refusal changes
    /// nothing (count it with [`Group::count`]).
    pub fn handle<R: CryptoRngCore + ?Sized>(
        &mut self,
        rng: &mut R,
        from: IdentityKey,
        c: Control,
    ) -> Result<Effects, GroupError> {
        self.handle_from(rng, from, c, false)
    }

    /// [`Group::handle`]; `forwarded`: `c` is the inner envelope of a `forwarded` from the
    /// creator, authored by `from`.
    fn handle_from<R: CryptoRngCore + ?Sized>(
        &mut self,
        rng: &mut R,
        from: IdentityKey,
        c: Control,
        forwarded: bool,
    ) -> Result<Effects, GroupError> {
        if self.closed {
            return Err(GroupError::Closed);
        }
        let fm = Member(from.0);
        if !self.membership.is_member(&from) || from.0 == self.me {
            return Err(GroupError::NotMember);
        }
        let mine = self.my_state();
        if matches!(mine, MemberState::Declined | MemberState::Left) {
            return Err(GroupError::Inactive);
        }
        let theirs = self.state_of(&fm);
        match c {
            Control::Invite(i) => {
                // The same invitation again (a re-send) is harmless; anything else is not.
                if from.0 == self.membership.creator && i.membership == self.signed {
                    Ok(Effects::default())
                } else if from.0 != self.membership.creator {
                    Err(GroupError::NotCreator)
                } else {
                    Err(GroupError::Malformed("a second, different invitation"))
                }
            }
            Control::Accept(k) => {
                if !theirs.active() {
                    return Err(GroupError::Inactive);
                }
                self.states.insert(fm, MemberState::Accepted);
                self.install(fm, k);
                self.open_ready()
            }
            Control::SenderKey(k) => {
                if theirs != MemberState::Accepted {
                    return Err(GroupError::Inactive);
                }
                self.install(fm, k);
                self.open_ready()
            }
            Control::Decline => {
                if theirs != MemberState::Invited {
                    return Err(GroupError::Inactive);
                }
                self.states.insert(fm, MemberState::Declined);
                self.receivers.remove(&fm);
                Ok(Effects {
                    send: self.rotate(rng),
                    ..Effects::default()
                })
            }
            Control::Leave => {
                if theirs != MemberState::Accepted || from.0 == self.membership.creator {
                    return Err(GroupError::Inactive);
                }
                self.states.insert(fm, MemberState::Left);
                self.receivers.remove(&fm);
                self.held
                    .retain(|h| GroupMessage::decode(&h.message).is_ok_and(|m| m.sender != fm.0));
                Ok(Effects {
                    send: self.rotate(rng),
                    ..Effects::default()
                })
            }
            Control::Close => {
                if from.0 != self.membership.creator {
                    return Err(GroupError::NotCreator);
                }
                self.closed = true;
                self.wipe();
                Ok(Effects {
                    closed: true,
                    ..Effects::default()
                })
            }
            Control::Forward(req) => {
                // A member asks us (the creator) to forward an envelope to members it cannot
                // reach; we are one of its recipients too.
                if !self.is_creator() {
                    return Err(GroupError::NotCreator);
                }
                if !theirs.active() {
                    return Err(GroupError::Inactive);
                }
                let inner = req.inner.open(&from, self.id())?;
                let mut to: Vec<Member> = Vec::new();
                for t in &req.to {
                    if !self.membership.is_member(&t.key()) || t.0 == self.me || *t == fm {
                        return Err(GroupError::NotMember);
                    }
                    if !to.contains(t) {
                        to.push(*t);
                    }
                }
                let mut fx = self.handle(rng, from, inner)?;
                let fwd = Control::Forwarded(Forwarded {
                    from: fm,
                    inner: req.inner,
                })
                .encode(self.id());
                for t in to {
                    if self.state_of(&t).active() {
                        fx.send.push((t.key(), fwd.clone()));
                    }
                }
                Ok(fx)
            }
            Control::Forwarded(f) => {
                // The creator forwards an envelope of a member we do not reach pairwise.
                if from.0 != self.membership.creator {
                    return Err(GroupError::NotCreator);
                }
                let author = f.from.key();
                if !self.membership.is_member(&author) || author.0 == self.me {
                    return Err(GroupError::NotMember);
                }
                if author.0 == self.membership.creator {
                    return Err(GroupError::Malformed(
                        "the creator forwards its own envelope",
                    ));
                }
                let inner = f.inner.open(&author, self.id())?;
                self.handle_from(rng, author, inner, true)
            }
            Control::Delivered(d) => {
                // A receipt only means something to the author it names; the creator, which
                // handles every forwarded envelope as its own copy, just passes it on.
                if !theirs.active() {
                    return Err(GroupError::Inactive);
                }
                let mut fx = Effects::default();
                if d.author.0 == self.me {
                    fx.delivered.push((from, d.message_id));
                }
                Ok(fx)
            }
            Control::Message(m) => {
                if m.sender != from.0 {
                    return Err(GroupError::SenderMismatch);
                }
                if m.group_id != self.id() {
                    return Err(GroupError::UnknownGroup);
                }
                if !theirs.active() {
                    return Err(GroupError::Inactive);
                }
                m.verify()?;
                let mut fx = Effects::default();
                match self.try_open(&m, forwarded) {
                    Ok(Some(s)) => fx.shown.push(s),
                    Ok(None) => {
                        if self.held.len() >= MAX_BUFFERED {
                            return Err(GroupError::BufferFull { max: MAX_BUFFERED });
                        }
                        self.held.push(Held {
                            message: m.encode(),
                            forwarded,
                        });
                    }
                    Err(e) => return Err(e),
                }
                Ok(fx)
            }
        }
    }

    /// Ok(None): cannot open yet (we have not accepted, or no key of that generation yet).
    fn try_open(
        &mut self,
        m: &GroupMessage,
        forwarded: bool,
    ) -> Result<Option<Shown>, GroupError> {
        if self.my_state() != MemberState::Accepted {
            return Ok(None);
        }
        let Some(chains) = self.receivers.get_mut(&Member(m.sender)) else {
            return Ok(None);
        };
        let Some(r) = chains.iter_mut().find(|r| r.generation() == m.generation) else {
            let newest = chains.iter().map(|r| r.generation()).max().unwrap_or(0);
            if m.generation > newest {
                return Ok(None);
            }
            return Err(GroupError::StaleGeneration {
                got: m.generation,
                current: newest,
            });
        };
        // Decode the plaintext on the side before committing the chain.
        let mut trial = r.clone();
        let opened = trial.open(m)?;
        let p = Payload::decode(&opened.plaintext)
            .map_err(|_| GroupError::Malformed("group plaintext"))?;
        let Content::Text(text) = p.content else {
            return Err(GroupError::Malformed("group plaintext is not text"));
        };
        *r = trial;
        Ok(Some(Shown {
            sender: IdentityKey(m.sender),
            id: p.id,
            sent_at: p.sent_at,
            text,
            generation: m.generation,
            seq: m.seq,
            gap: opened.gap,
            digest: m.digest(),
            forwarded,
        }))
    }

    fn open_held(&mut self, mut fx: Effects) -> Result<Effects, GroupError> {
        let held = std::mem::take(&mut self.held);
        for h in held {
            let m = match GroupMessage::decode(&h.message) {
                Ok(m) => m,
                Err(e) => {
                    fx.refused.push(e);
                    continue;
                }
            };
            match self.try_open(&m, h.forwarded) {
                Ok(Some(s)) => fx.shown.push(s),
                Ok(None) => self.held.push(h),
                Err(e) => fx.refused.push(e),
            }
        }
        for e in &fx.refused {
            *self.refused.entry(e.name().to_string()).or_insert(0) += 1;
        }
        Ok(fx)
    }
}

/// Envelopes for groups whose invitation has not arrived yet (an accept can overtake the
/// invite on another path). Bounded by [`MAX_PENDING`]; the oldest is dropped.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Pending {
    items: Vec<PendingItem>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct PendingItem {
    group_id: GroupId,
    #[serde(with = "crate::wire::bytes::fixed")]
    from: [u8; 32],
    #[serde(with = "serde_bytes")]
    envelope: Vec<u8>,
}

impl Pending {
    /// Holds one envelope.
    pub fn hold(&mut self, group_id: GroupId, from: IdentityKey, envelope: Vec<u8>) {
        if self.items.len() >= MAX_PENDING {
            self.items.remove(0);
        }
        self.items.push(PendingItem {
            group_id,
            from: from.0,
            envelope,
        });
    }

    /// Takes the envelopes held for `group_id`, oldest first.
    pub fn take(&mut self, group_id: GroupId) -> Vec<(IdentityKey, Vec<u8>)> {
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut self.items)
            .into_iter()
            .partition(|i| i.group_id == group_id);
        self.items = rest;
        mine.into_iter()
            .map(|i| (IdentityKey(i.from), i.envelope))
            .collect()
    }

    /// Envelopes held.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// None held.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    struct P {
        sk: SigningKey,
        g: Option<Group>,
    }

    impl P {
        fn key(&self) -> IdentityKey {
            IdentityKey(self.sk.verifying_key().to_bytes())
        }
    }

    /// Delivers every queued envelope until none is left; returns shown texts per member.
    fn pump(
        rng: &mut rand::rngs::StdRng,
        ps: &mut [P],
        mut q: Vec<(IdentityKey, IdentityKey, Vec<u8>)>,
    ) -> Vec<Vec<String>> {
        let mut shown = vec![Vec::new(); ps.len()];
        let mut n = 0;
        while let Some((from, to, env)) = (!q.is_empty()).then(|| q.remove(0)) {
            n += 1;
            assert!(n < 1000);
            let Some(i) = ps.iter().position(|p| p.key() == to) else {
                continue;
            };
            let (_, c) = Control::decode(&env).unwrap();
            let fx = match (&mut ps[i].g, c) {
                (None, Control::Invite(inv)) => {
                    ps[i].g = Some(Group::from_invite(to, from, inv).unwrap());
                    continue;
                }
                (None, _) => continue,
                (Some(g), c) => match g.handle(rng, from, c) {
                    Ok(fx) => fx,
                    Err(_) => continue,
                },
            };
            shown[i].extend(fx.shown.iter().map(|s| s.text.clone()));
            q.extend(fx.send.into_iter().map(|(k, e)| (to, k, e)));
        }
        shown
    }

    fn send(
        ps: &mut [P],
        i: usize,
        text: &str,
        rng: &mut rand::rngs::StdRng,
    ) -> Vec<(IdentityKey, IdentityKey, Vec<u8>)> {
        let from = ps[i].key();
        let sk = ps[i].sk.clone();
        let g = ps[i].g.as_mut().unwrap();
        let p = Payload::text(rng, Timestamp(1), text);
        let (env, to) = g.encrypt(&sk, &p).unwrap();
        to.into_iter().map(|k| (from, k, env.clone())).collect()
    }

    #[test]
    fn create_accept_decline_message_leave_close() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut ps: Vec<P> = (1..=4u8)
            .map(|i| P {
                sk: SigningKey::from_bytes(&[i; 32]),
                g: None,
            })
            .collect();
        let others: Vec<IdentityKey> = ps[1..].iter().map(|p| p.key()).collect();
        let (g, fx) = Group::create(&mut rng, &ps[0].sk, "team", &others, Timestamp(0)).unwrap();
        ps[0].g = Some(g);
        let a = ps[0].key();
        // Creator speaks before anyone accepted: members hold the message.
        let mut q: Vec<_> = fx.send.into_iter().map(|(k, e)| (a, k, e)).collect();
        q.extend(send(&mut ps, 0, "early", &mut rng));
        let shown = pump(&mut rng, &mut ps, q);
        assert!(shown.iter().all(|s| s.is_empty()));
        assert_eq!(ps[1].g.as_ref().unwrap().held(), 1);
        // Two accept (and see the held message), one declines.
        let mut q = Vec::new();
        for i in [1usize, 2] {
            let me = ps[i].key();
            let fx = ps[i].g.as_mut().unwrap().accept(&mut rng).unwrap();
            assert_eq!(fx.shown.len(), 1);
            q.extend(fx.send.into_iter().map(|(k, e)| (me, k, e)));
        }
        let me = ps[3].key();
        let fx = ps[3].g.as_mut().unwrap().decline().unwrap();
        q.extend(fx.send.into_iter().map(|(k, e)| (me, k, e)));
        pump(&mut rng, &mut ps, q);
        for p in &ps[..3] {
            let st = p.g.as_ref().unwrap().states();
            let names: Vec<_> = st.iter().map(|(_, s)| s.name()).collect();
            assert_eq!(
                names.iter().filter(|n| **n == "accepted").count(),
                3,
                "{names:?}"
            );
            assert_eq!(names.iter().filter(|n| **n == "declined").count(), 1);
        }
        // Messages both ways; the decliner gets nothing.
        let q = send(&mut ps, 1, "from b", &mut rng);
        assert_eq!(q.len(), 2);
        let shown = pump(&mut rng, &mut ps, q);
        assert_eq!(shown[0], vec!["from b"]);
        assert_eq!(shown[2], vec!["from b"]);
        // A replay of the same envelope is refused.
        let q = send(&mut ps, 0, "from a", &mut rng);
        let (from, _, env) = q[0].clone();
        let shown = pump(&mut rng, &mut ps, q);
        assert_eq!(shown[1], vec!["from a"]);
        let (_, c) = Control::decode(&env).unwrap();
        let i = ps
            .iter()
            .position(|p| p.key() == q_to(&env, &ps))
            .unwrap_or(1);
        let err = ps[i].g.as_mut().unwrap().handle(&mut rng, from, c).err();
        assert!(matches!(err, Some(GroupError::Replayed { .. })), "{err:?}");
        // A non-member (the decliner is a member; use a stranger) is refused.
        let stranger = IdentityKey([0x55; 32]);
        let (_, c) = Control::decode(&env).unwrap();
        assert_eq!(
            ps[1]
                .g
                .as_mut()
                .unwrap()
                .handle(&mut rng, stranger, c)
                .err(),
            Some(GroupError::NotMember)
        );
        // Someone else's message forwarded by a member: refused.
        let (_, c) = Control::decode(&env).unwrap();
        let c_key = ps[2].key();
        assert_eq!(
            ps[1].g.as_mut().unwrap().handle(&mut rng, c_key, c).err(),
            Some(GroupError::SenderMismatch)
        );
        // Leave: the others rotate and keep talking.
        let me = ps[2].key();
        let fx = ps[2].g.as_mut().unwrap().leave().unwrap();
        let q: Vec<_> = fx.send.into_iter().map(|(k, e)| (me, k, e)).collect();
        pump(&mut rng, &mut ps, q);
        assert_eq!(ps[0].g.as_ref().unwrap().own_chain().map(|c| c.0), Some(2));
        let q = send(&mut ps, 0, "after leave", &mut rng);
        assert_eq!(q.len(), 1);
        let shown = pump(&mut rng, &mut ps, q);
        assert_eq!(shown[1], vec!["after leave"]);
        // Close: the member wipes and refuses later envelopes.
        let fx = ps[0].g.as_mut().unwrap().close().unwrap();
        let q: Vec<_> = fx.send.into_iter().map(|(k, e)| (a, k, e)).collect();
        pump(&mut rng, &mut ps, q);
        let b = ps[1].g.as_mut().unwrap();
        assert!(b.closed);
        assert!(b.chains().is_empty());
        let (_, c) = Control::decode(&env).unwrap();
        assert_eq!(b.handle(&mut rng, a, c).err(), Some(GroupError::Closed));
    }

    /// Like `pump`, but members route their sends: `far(a, b)` is true when a cannot reach b.
    fn pump_routed(
        rng: &mut rand::rngs::StdRng,
        ps: &mut [P],
        far: &dyn Fn(IdentityKey, IdentityKey) -> bool,
        q: Vec<(IdentityKey, IdentityKey, Vec<u8>)>,
    ) -> Vec<Vec<String>> {
        pump_receipts(rng, ps, far, q).0
    }

    type Receipts = Vec<Vec<(IdentityKey, [u8; 16])>>;

    /// [`pump_routed`], with the receipts members owe for forwarded messages sent too; also
    /// returns the receipts each member got.
    fn pump_receipts(
        rng: &mut rand::rngs::StdRng,
        ps: &mut [P],
        far: &dyn Fn(IdentityKey, IdentityKey) -> bool,
        mut q: Vec<(IdentityKey, IdentityKey, Vec<u8>)>,
    ) -> (Vec<Vec<String>>, Receipts) {
        let mut delivered = vec![Vec::new(); ps.len()];
        let mut shown = vec![Vec::new(); ps.len()];
        let mut n = 0;
        while let Some((from, to, env)) = (!q.is_empty()).then(|| q.remove(0)) {
            n += 1;
            assert!(n < 1000);
            assert!(
                !far(from, to),
                "an envelope went to a member its sender cannot reach"
            );
            let Some(i) = ps.iter().position(|p| p.key() == to) else {
                continue;
            };
            let (_, c) = Control::decode(&env).unwrap();
            let sk = ps[i].sk.clone();
            let fx = match (&mut ps[i].g, c) {
                (None, Control::Invite(inv)) => {
                    ps[i].g = Some(Group::from_invite(to, from, inv).unwrap());
                    continue;
                }
                (None, _) => continue,
                (Some(g), c) => match g.handle(rng, from, c) {
                    Ok(fx) => fx,
                    Err(_) => continue,
                },
            };
            shown[i].extend(fx.shown.iter().map(|s| s.text.clone()));
            delivered[i].extend(fx.delivered.iter().copied());
            let g = ps[i].g.as_ref().unwrap();
            let mut send = fx.send;
            send.extend(g.receipts(&sk, &fx.shown));
            let routed = g.route(&sk, send, |k| !far(to, *k));
            q.extend(routed.into_iter().map(|(k, e)| (to, k, e)));
        }
        (shown, delivered)
    }

    #[test]
    fn non_contacts_reach_each_other_through_the_creator() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut ps: Vec<P> = (1..=4u8)
            .map(|i| P {
                sk: SigningKey::from_bytes(&[i; 32]),
                g: None,
            })
            .collect();
        let (a, b, c, d) = (ps[0].key(), ps[1].key(), ps[2].key(), ps[3].key());
        // b and c are not each other's contacts; d knows everyone.
        let far = move |x: IdentityKey, y: IdentityKey| (x == b && y == c) || (x == c && y == b);
        let (g, fx) = Group::create(&mut rng, &ps[0].sk, "team", &[b, c, d], Timestamp(0)).unwrap();
        ps[0].g = Some(g);
        let q: Vec<_> = fx.send.into_iter().map(|(k, e)| (a, k, e)).collect();
        pump_routed(&mut rng, &mut ps, &far, q);
        let mut q = Vec::new();
        for p in ps.iter_mut().skip(1) {
            let me = p.key();
            let sk = p.sk.clone();
            let g = p.g.as_mut().unwrap();
            let fx = g.accept(&mut rng).unwrap();
            let routed = g.route(&sk, fx.send, |k| !far(me, *k));
            q.extend(routed.into_iter().map(|(k, e)| (me, k, e)));
        }
        pump_routed(&mut rng, &mut ps, &far, q);
        // b and c have each other's sender keys (through a) and see each other's messages.
        for p in &ps[1..=2] {
            let g = p.g.as_ref().unwrap();
            assert_eq!(g.chains().len(), 3, "every other chain");
        }
        let mut q = Vec::new();
        for (i, text) in [(1usize, "from b"), (2, "from c")] {
            let me = ps[i].key();
            let sk = ps[i].sk.clone();
            let p = Payload::text(&mut rng, Timestamp(1), text);
            let g = ps[i].g.as_mut().unwrap();
            let (env, to) = g.encrypt(&sk, &p).unwrap();
            let sends = to.into_iter().map(|k| (k, env.clone())).collect();
            let routed = g.route(&sk, sends, |k| !far(me, *k));
            // d directly, a gets one forward request naming the far member.
            assert_eq!(routed.len(), 2, "{routed:?}");
            q.extend(routed.into_iter().map(|(k, e)| (me, k, e)));
        }
        let shown = pump_routed(&mut rng, &mut ps, &far, q);
        assert_eq!(shown[0], vec!["from b", "from c"]);
        assert_eq!(shown[1], vec!["from c"]);
        assert_eq!(shown[2], vec!["from b"]);
        assert_eq!(shown[3], vec!["from b", "from c"]);

        // Refusals: a forwarded envelope from someone other than the creator, a forward
        // request to a member who is not the creator, a forged inner signature.
        let p = Payload::text(&mut rng, Timestamp(2), "again");
        let sk_b = ps[1].sk.clone();
        let (env, _) = ps[1].g.as_mut().unwrap().encrypt(&sk_b, &p).unwrap();
        let gid = ps[1].g.as_ref().unwrap().id();
        let fwd = |from: IdentityKey, inner: SignedInner| {
            Control::Forwarded(Forwarded {
                from: Member(from.0),
                inner,
            })
        };
        let good = SignedInner::sign(&sk_b, env.clone());
        let forged = SignedInner::sign(&ps[3].sk, env.clone());
        let gc = ps[2].g.as_mut().unwrap();
        assert_eq!(
            gc.handle(&mut rng, d, fwd(b, good.clone())).err(),
            Some(GroupError::NotCreator)
        );
        assert_eq!(
            gc.handle(&mut rng, a, fwd(b, forged)).err(),
            Some(GroupError::BadSignature)
        );
        let req = Control::Forward(ForwardRequest {
            to: vec![Member(c.0)],
            inner: good.clone(),
        });
        assert_eq!(
            ps[3].g.as_mut().unwrap().handle(&mut rng, b, req).err(),
            Some(GroupError::NotCreator)
        );
        // An invitation may not travel inside a forward.
        let bad = SignedInner::sign(&sk_b, Control::Close.encode(gid));
        assert!(matches!(
            ps[2]
                .g
                .as_mut()
                .unwrap()
                .handle(&mut rng, a, fwd(b, bad))
                .err(),
            Some(GroupError::Malformed(_))
        ));
        // The genuine one still opens, once.
        let gc = ps[2].g.as_mut().unwrap();
        let fx = gc.handle(&mut rng, a, fwd(b, good.clone())).unwrap();
        assert_eq!(fx.shown.len(), 1);
        assert!(matches!(
            gc.handle(&mut rng, a, fwd(b, good)).err(),
            Some(GroupError::Replayed { .. })
        ));
    }

    /// A member restored from an older copy of its state (a backup) must not send on its old
    /// chain: its numbers were used after the copy was taken. `restart_sender_key` gives it a
    /// fresh generation the others install, while messages of the old generation still in
    /// flight keep opening; without it, the numbers repeat and the others refuse them.
    #[test]
    fn restored_member_restarts_its_sender_key_at_a_new_generation() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut ps: Vec<P> = (1..=3u8)
            .map(|i| P {
                sk: SigningKey::from_bytes(&[i; 32]),
                g: None,
            })
            .collect();
        let (a, b) = (ps[0].key(), ps[1].key());
        let others: Vec<IdentityKey> = ps[1..].iter().map(|p| p.key()).collect();
        let (g, fx) = Group::create(&mut rng, &ps[0].sk, "team", &others, Timestamp(0)).unwrap();
        ps[0].g = Some(g);
        pump(&mut rng, &mut ps, fx.send.into_iter().map(|(k, e)| (a, k, e)).collect());
        let mut q = Vec::new();
        for i in [1usize, 2] {
            let me = ps[i].key();
            let fx = ps[i].g.as_mut().unwrap().accept(&mut rng).unwrap();
            q.extend(fx.send.into_iter().map(|(k, e)| (me, k, e)));
        }
        pump(&mut rng, &mut ps, q);
        let q = send(&mut ps, 1, "b1", &mut rng);
        pump(&mut rng, &mut ps, q);
        // The backup of b's state.
        let backup = ps[1].g.clone().unwrap();
        let q = send(&mut ps, 1, "b2", &mut rng);
        pump(&mut rng, &mut ps, q);
        // b3 is sent but still in flight when b is restored.
        let in_flight = send(&mut ps, 1, "b3", &mut rng);
        assert_eq!(ps[1].g.as_ref().unwrap().own_chain(), Some((0, 3)));

        // Without a restart the restored chain repeats number 1: refused as replayed.
        let mut stale = backup.clone();
        let p = Payload::text(&mut rng, Timestamp(1), "again");
        let (env, _) = stale.encrypt(&ps[1].sk, &p).unwrap();
        let (_, c) = Control::decode(&env).unwrap();
        assert_eq!(
            ps[0].g.as_mut().unwrap().handle(&mut rng, b, c).err(),
            Some(GroupError::Replayed {
                generation: 0,
                seq: 1
            })
        );

        // The restart: a fresh chain at the floor, sent to both others.
        ps[1].g = Some(backup);
        let fx = ps[1]
            .g
            .as_mut()
            .unwrap()
            .restart_sender_key(&mut rng, 1_700_000_000);
        assert_eq!(fx.send.len(), 2);
        assert_eq!(
            ps[1].g.as_ref().unwrap().own_chain(),
            Some((1_700_000_000, 0))
        );
        let mut q: Vec<_> = fx.send.into_iter().map(|(k, e)| (b, k, e)).collect();
        q.extend(in_flight);
        q.extend(send(&mut ps, 1, "b4", &mut rng));
        let shown = pump(&mut rng, &mut ps, q);
        assert_eq!(shown[0], vec!["b3", "b4"]);
        assert_eq!(shown[2], vec!["b3", "b4"]);
        for i in [0usize, 2] {
            let chains = ps[i].g.as_ref().unwrap().chains();
            assert!(chains.contains(&(b, 1_700_000_000, 1, 0)), "{chains:?}");
        }
        // A later rotation keeps going up from there.
        let fx = ps[2].g.as_mut().unwrap().leave().unwrap();
        let c = ps[2].key();
        pump(&mut rng, &mut ps, fx.send.into_iter().map(|(k, e)| (c, k, e)).collect());
        assert_eq!(
            ps[1].g.as_ref().unwrap().own_chain(),
            Some((1_700_000_001, 0))
        );
    }

    /// A member restored to before its acceptance accepts again with a chain at the floor, so
    /// the others (who installed its first chain, generation 0) take the new one.
    #[test]
    fn restart_before_acceptance_sets_the_floor_for_the_accept() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(12);
        let mut ps: Vec<P> = (1..=2u8)
            .map(|i| P {
                sk: SigningKey::from_bytes(&[i; 32]),
                g: None,
            })
            .collect();
        let (a, b) = (ps[0].key(), ps[1].key());
        let (g, fx) = Group::create(&mut rng, &ps[0].sk, "pair", &[b], Timestamp(0)).unwrap();
        ps[0].g = Some(g);
        pump(&mut rng, &mut ps, fx.send.into_iter().map(|(k, e)| (a, k, e)).collect());
        let backup = ps[1].g.clone().unwrap();
        let fx = ps[1].g.as_mut().unwrap().accept(&mut rng).unwrap();
        pump(&mut rng, &mut ps, fx.send.into_iter().map(|(k, e)| (b, k, e)).collect());
        let q = send(&mut ps, 1, "first", &mut rng);
        assert_eq!(pump(&mut rng, &mut ps, q)[0], vec!["first"]);
        // Restored to "invited": nothing to send yet, the floor is kept for the accept.
        ps[1].g = Some(backup);
        let fx = ps[1].g.as_mut().unwrap().restart_sender_key(&mut rng, 500);
        assert!(fx.send.is_empty());
        let fx = ps[1].g.as_mut().unwrap().accept(&mut rng).unwrap();
        assert_eq!(ps[1].g.as_ref().unwrap().own_chain(), Some((500, 0)));
        pump(&mut rng, &mut ps, fx.send.into_iter().map(|(k, e)| (b, k, e)).collect());
        let q = send(&mut ps, 1, "second", &mut rng);
        assert_eq!(pump(&mut rng, &mut ps, q)[0], vec!["second"]);
    }

    /// A member that got a message through the creator sends its author a receipt signed by
    /// itself, through the creator; the author learns which forwarded member has it. The
    /// creator cannot make one up.
    #[test]
    fn receipts_for_forwarded_messages_come_back_signed_by_the_recipient() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(21);
        let mut ps: Vec<P> = (1..=4u8)
            .map(|i| P {
                sk: SigningKey::from_bytes(&[i; 32]),
                g: None,
            })
            .collect();
        let (a, b, c, d) = (ps[0].key(), ps[1].key(), ps[2].key(), ps[3].key());
        let far = move |x: IdentityKey, y: IdentityKey| (x == b && y == c) || (x == c && y == b);
        let (g, fx) = Group::create(&mut rng, &ps[0].sk, "team", &[b, c, d], Timestamp(0)).unwrap();
        ps[0].g = Some(g);
        let q: Vec<_> = fx.send.into_iter().map(|(k, e)| (a, k, e)).collect();
        pump_receipts(&mut rng, &mut ps, &far, q);
        let mut q = Vec::new();
        for p in ps.iter_mut().skip(1) {
            let me = p.key();
            let sk = p.sk.clone();
            let g = p.g.as_mut().unwrap();
            let fx = g.accept(&mut rng).unwrap();
            q.extend(
                g.route(&sk, fx.send, |k| !far(me, *k))
                    .into_iter()
                    .map(|(k, e)| (me, k, e)),
            );
        }
        pump_receipts(&mut rng, &mut ps, &far, q);
        // b writes: d directly, c through a; c's receipt comes back to b (and only to b).
        let sk = ps[1].sk.clone();
        let p = Payload::text(&mut rng, Timestamp(1), "from b");
        let g = ps[1].g.as_mut().unwrap();
        let (env, to) = g.encrypt(&sk, &p).unwrap();
        let sends = to.into_iter().map(|k| (k, env.clone())).collect();
        let q: Vec<_> = g
            .route(&sk, sends, |k| !far(b, *k))
            .into_iter()
            .map(|(k, e)| (b, k, e))
            .collect();
        let (shown, delivered) = pump_receipts(&mut rng, &mut ps, &far, q);
        assert_eq!(shown[2], vec!["from b"]);
        assert_eq!(delivered[1], vec![(c, p.id.0)], "{delivered:?}");
        assert!(delivered[0].is_empty() && delivered[2].is_empty() && delivered[3].is_empty());
        // The creator forging c's receipt (signed with its own key) is refused.
        let receipt = Control::Delivered(Delivered {
            author: Member(b.0),
            message_id: [0x77; 16],
        })
        .encode(ps[0].g.as_ref().unwrap().id());
        let forged = Control::Forwarded(Forwarded {
            from: Member(c.0),
            inner: SignedInner::sign(&ps[0].sk, receipt.clone()),
        });
        // And a receipt is not a thing anyone but the creator forwards.
        let direct = Control::Forwarded(Forwarded {
            from: Member(c.0),
            inner: SignedInner::sign(&ps[2].sk, receipt),
        });
        let gb = ps[1].g.as_mut().unwrap();
        assert_eq!(
            gb.handle(&mut rng, a, forged).err(),
            Some(GroupError::BadSignature)
        );
        assert_eq!(
            gb.handle(&mut rng, d, direct).err(),
            Some(GroupError::NotCreator)
        );
    }

    fn q_to(_env: &[u8], _ps: &[P]) -> IdentityKey {
        IdentityKey(_ps[1].sk.verifying_key().to_bytes())
    }

    #[test]
    fn pending_is_bounded() {
        let mut p = Pending::default();
        for i in 0..(MAX_PENDING + 5) {
            p.hold(GroupId([i as u8; 16]), IdentityKey([1; 32]), vec![1]);
        }
        assert_eq!(p.len(), MAX_PENDING);
        assert!(p.take(GroupId([0; 16])).is_empty());
        assert_eq!(p.take(GroupId([10; 16])).len(), 1);
    }
}
