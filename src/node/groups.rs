//! Group chats in the node: the thin shell around the [`crate::group`] core.
//!
//! It stores each group (and the envelopes held for groups whose invitation has not arrived)
//! under `Tree::Meta` keys starting with `group/`, and turns the core's effects into pairwise
//! messages: every group envelope is a ratchet payload of kind 3 queued in the normal outbox
//! with its own history entry (tagged with [`GroupTag`]), so it travels direct-first with the
//! relay as fallback, is retried, kept until confirmed and re-sent after a session reset
//! exactly like a one-to-one message, and its status is that member's status.
//!
//! Every change runs under the node-wide ratchet lock ([`super::locks::RatchetLocks::all`]: it
//! advances several members' sessions and the group state, so no per-contact operation may
//! run beside it) and is one atomic batch: the group state, the ratchet sessions advanced for
//! each member, the history entries and the outbox entries. After the commit only the
//! delivery workers of the members with new outbox entries are woken.
//! Receiving (called from the inbox with the received message's batch): the envelope is handled
//! by the core; readable messages become history entries (tagged, `direction` `in`); a refusal
//! is counted in the group (`refused`, by code name) and logged, and the pairwise message is
//! still confirmed so the source drops it. Envelopes the core wants sent back to the member whose
//! message is being received are queued right after that message's commit (their session record
//! is in that batch).
//!
//! Store keys: `group/g/<id16>` → the `Group`; `group/pending` → the held envelopes;
//! `group/e/<history seq u64 BE>` → the envelope of an outgoing copy (re-sent as is after a
//! session reset); `group/h/<id16><history seq>` → the history entries of a group (deleted
//! with them when the group closes).
//!
//! Retention of the copies' envelopes: one is needed while its copy is not delivered (a
//! session reset re-sends it) and, once delivered, for as long as a recipient restored from an
//! older backup may ask for it again ([`super::recovery::RECOVER_WINDOW_MS`]). [`prune_task`]
//! deletes the envelopes of copies delivered longer ago than that (and of copies whose history
//! entry is gone) at start and every [`PRUNE_EVERY`]; a copy whose envelope was pruned is
//! never re-sent (not as its text either).

use super::history::{DeliveryPath, Direction, HistoryEntry, NewEntry, Status};
use super::outbox::OutboxEntry;
use super::{commit, Inner, Node, NodeError};
use crate::group::{Control, Group, GroupError, GroupId, Pending, Shown, MAX_GROUPS};
use crate::identity::{IdentityKey, Trust};
use crate::ratchet::{Content, MessageId, Payload, PeerKeys};
use crate::store::{Batch, Store, Tree};
use crate::time::Timestamp;
use crate::wire::msgpack;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

const PENDING_KEY: &[u8] = b"group/pending";

/// How often the envelopes of old delivered copies are pruned.
pub const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);
/// Most envelope keys read by one prune pass (the rest wait for the next one).
pub const PRUNE_SCAN: usize = 100_000;

/// History entries to announce after the commit, and envelopes to queue after it.
type Sealed = (Vec<HistoryEntry>, Vec<(IdentityKey, Vec<u8>)>);

fn gkey(id: &GroupId) -> Vec<u8> {
    let mut k = b"group/g/".to_vec();
    k.extend_from_slice(&id.0);
    k
}

fn ekey(seq: u64) -> Vec<u8> {
    let mut k = b"group/e/".to_vec();
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn hprefix(id: &GroupId) -> Vec<u8> {
    let mut k = b"group/h/".to_vec();
    k.extend_from_slice(&id.0);
    k
}

fn hkey(id: &GroupId, seq: u64) -> Vec<u8> {
    let mut k = hprefix(id);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn mprefix(id: &GroupId) -> Vec<u8> {
    let mut k = b"group/m/".to_vec();
    k.extend_from_slice(&id.0);
    k
}

/// Where the history seq of our copy to the creator of message `mid` (low 64 bits of its
/// id) is kept when the creator forwards it: `group/m/<id16><mid u64 BE>`.
fn mkey(id: &GroupId, mid: u64) -> Vec<u8> {
    let mut k = mprefix(id);
    k.extend_from_slice(&mid.to_be_bytes());
    k
}

/// A signed receipt from `member` for our message `mid`: adds it to `delivered_to` of our
/// copy to the creator (when the copy names it in `forwarded_to`). `updated` holds the
/// entries changed earlier in the same batch. Returns the changed entry.
fn mark_delivered(
    inner: &Inner,
    g: &Group,
    member: &IdentityKey,
    mid: &[u8; 16],
    updated: &mut BTreeMap<u64, HistoryEntry>,
    batch: &mut Batch,
) -> Result<Option<HistoryEntry>, NodeError> {
    let Some(seq) = inner
        .store
        .get(Tree::Meta, &mkey(&g.id(), low64(&MessageId(*mid))))?
        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
        .map(u64::from_be_bytes)
    else {
        tracing::debug!(group = %g.id(), member = %member.short(), "receipt for a message we have no forwarded copy of");
        return Ok(None);
    };
    let entry = match updated.get(&seq) {
        Some(e) => Some(e.clone()),
        None => inner.history.get(seq)?,
    };
    let Some(mut e) = entry else {
        return Ok(None);
    };
    let id = member.to_string();
    let Some(tag) = e.group.as_mut() else {
        return Ok(None);
    };
    if !tag.forwarded_to.as_ref().is_some_and(|f| f.contains(&id)) {
        tracing::warn!(group = %g.id(), member = %member.short(), "receipt from a member our copy was not forwarded to; ignored");
        return Ok(None);
    }
    let done = tag.delivered_to.get_or_insert_with(Vec::new);
    if done.contains(&id) {
        return Ok(None);
    }
    done.push(id);
    batch.extend(inner.history.update(&e));
    updated.insert(seq, e.clone());
    tracing::debug!(group = %g.id(), member = %member.short(), seq, "forwarded group message delivered (signed receipt)");
    Ok(Some(e))
}

fn sprefix(id: &GroupId) -> Vec<u8> {
    let mut k = b"group/s/".to_vec();
    k.extend_from_slice(&id.0);
    k
}

/// Where the digest of a received group message is kept: `group/s/<id16><sender32>
/// <generation u32 BE><seq u32 BE>`.
fn skey(id: &GroupId, sender: &IdentityKey, generation: u32, seq: u32) -> Vec<u8> {
    let mut k = sprefix(id);
    k.extend_from_slice(&sender.0);
    k.extend_from_slice(&generation.to_be_bytes());
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// A refusal as the node reports it: a `replayed` message whose number we decrypted before
/// with a *different* ciphertext is [`GroupError::ConflictingReplay`] (its author encrypted
/// two texts under one message key); an exact copy stays `replayed`.
fn classify(inner: &Inner, gid: &GroupId, c: Option<&crate::group::GroupMessage>, e: GroupError) -> GroupError {
    let (GroupError::Replayed { generation, seq }, Some(m)) = (&e, c) else {
        return e;
    };
    let key = skey(gid, &IdentityKey(m.sender), *generation, *seq);
    match inner.store.get(Tree::Meta, &key) {
        Ok(Some(d)) if d.as_slice() != m.digest().as_slice() => GroupError::ConflictingReplay {
            generation: *generation,
            seq: *seq,
        },
        _ => e,
    }
}

/// What a history entry is in a group (the `group` field of `ENTRY`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupTag {
    /// The group id (32 hex).
    pub group: String,
    /// `message`, or the control sent: `invite`, `accept`, `decline`, `sender_key`, `leave`,
    /// `close`.
    pub kind: String,
    /// For `message`: the group message id (16 hex), the same at every member and on every
    /// copy the author sent; null otherwise.
    pub message_id: Option<String>,
    /// For a received `message`: its number in the author's chain; null otherwise.
    pub seq: Option<u32>,
    /// For a received `message`: numbers skipped to reach it (a visible gap); null otherwise.
    pub gap: Option<u32>,
    /// For a copy sent to the creator as a forward request (type 8): the members (64 hex)
    /// that are not our contacts, to whom the creator forwards it; null otherwise.
    #[serde(default)]
    pub forwarded_to: Option<Vec<String>>,
    /// For a received `message`: the author's sender-key generation (with `seq`, the number
    /// that must never repeat for one author); null otherwise.
    #[serde(default)]
    pub generation: Option<u32>,
    /// On a copy with `forwarded_to`: those of its members whose signed receipt (type 10,
    /// forwarded back by the creator) says the message reached them; null otherwise.
    #[serde(default)]
    pub delivered_to: Option<Vec<String>>,
}

/// One member in [`GroupView`].
#[derive(Clone, Debug, Serialize)]
pub struct MemberView {
    /// Contact id (64 hex).
    pub id: String,
    /// Username when it is a contact (or us).
    pub name: Option<String>,
    /// `invited`, `accepted`, `declined` or `left`.
    pub state: &'static str,
    /// This is us.
    pub me: bool,
    /// We can send to it: it is us, a contact that is not rejected, or a member we reach
    /// through the creator (`via_creator`).
    pub reachable: bool,
    /// Not our contact: our envelopes reach it through the creator (forward requests,
    /// docs/PROTOCOL.md "Groups"), and its reach us the same way.
    pub via_creator: bool,
}

/// `sremp group show --json` (and each item of `group list`).
#[derive(Clone, Debug, Serialize)]
pub struct GroupView {
    /// Group id (32 hex).
    pub id: String,
    /// Name.
    pub name: String,
    /// Creator's contact id.
    pub creator: String,
    /// We created it.
    pub is_creator: bool,
    /// Our own state.
    pub state: &'static str,
    /// Closed by the creator (messages and keys deleted).
    pub closed: bool,
    /// Creation time (creator's clock, ms).
    pub created_at: u64,
    /// Every member, the creator included.
    pub members: Vec<MemberView>,
    /// Messages held until their sender key (or our acceptance) arrives.
    pub held: usize,
    /// Our sender key: generation and next number (null when we have none).
    pub sender_key: Option<(u32, u32)>,
    /// Refused envelopes by reason (code name).
    pub refused: BTreeMap<String, u64>,
}

/// `sremp send --group` result.
#[derive(Clone, Debug, Serialize)]
pub struct GroupSent {
    /// Group id.
    pub group: String,
    /// The group message id (16 hex).
    pub message_id: String,
    /// One queued copy per member, each with its own status.
    pub entries: Vec<HistoryEntry>,
}

fn load(inner: &Inner, id: &GroupId) -> Result<Option<Group>, NodeError> {
    match inner.store.get(Tree::Meta, &gkey(id))? {
        None => Ok(None),
        Some(v) => Ok(Some(msgpack::decode(&v).map_err(|e| {
            crate::store::StoreError::Corrupt {
                tree: Tree::Meta,
                detail: format!("group record: {e}"),
            }
        })?)),
    }
}

fn all(inner: &Inner) -> Result<Vec<Group>, NodeError> {
    Ok(inner
        .store
        .scan(Tree::Meta, b"group/g/", None, MAX_GROUPS)?
        .iter()
        .filter_map(|(_, v)| msgpack::decode::<Group>(v).ok())
        .collect())
}

fn put(batch: &mut Batch, g: &Group) {
    batch.put(Tree::Meta, gkey(&g.id()), msgpack::encode(g));
}

fn load_pending(inner: &Inner) -> Pending {
    inner
        .store
        .get(Tree::Meta, PENDING_KEY)
        .ok()
        .flatten()
        .and_then(|v| msgpack::decode(&v).ok())
        .unwrap_or_default()
}

fn low64(id: &MessageId) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&id.0[..8]);
    u64::from_be_bytes(b)
}

/// Whether the envelope of outgoing copy `entry` (None: its history entry is gone) may be
/// deleted at `now_ms`: delivered (or gone) and sent before the recovery window.
pub fn envelope_prunable(entry: Option<&HistoryEntry>, now_ms: u64) -> bool {
    match entry {
        None => true,
        Some(e) => {
            e.status == Status::Delivered
                && e.sent_at < now_ms.saturating_sub(super::recovery::RECOVER_WINDOW_MS)
        }
    }
}

/// Deletes the envelopes [`envelope_prunable`] at `now_ms`; returns how many.
pub(crate) async fn prune_envelopes(inner: &Inner, now_ms: u64) -> Result<usize, NodeError> {
    let prefix = b"group/e/".to_vec();
    let mut after: Option<Vec<u8>> = None;
    let (mut read, mut pruned) = (0usize, 0usize);
    while read < PRUNE_SCAN {
        let page = inner
            .store
            .scan(Tree::Meta, &prefix, after.as_deref(), 1000)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        read += page.len();
        let mut batch = Batch::new();
        let mut n = 0;
        for (k, _) in &page {
            let Some(seq) = k
                .get(prefix.len()..)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
            else {
                continue;
            };
            if envelope_prunable(inner.history.get(seq)?.as_ref(), now_ms) {
                batch.delete(Tree::Meta, k.clone());
                n += 1;
            }
        }
        if n > 0 {
            commit(&inner.store, batch).await?;
            pruned += n;
        }
        if page.len() < 1000 {
            break;
        }
    }
    Ok(pruned)
}

/// Prunes old envelopes at start and every [`PRUNE_EVERY`] until the node stops.
pub(crate) async fn prune_task(node: Node) {
    let inner = node.inner.clone();
    let mut stop = inner.stop.clone();
    loop {
        match prune_envelopes(&inner, Timestamp::now().0).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(pruned = n, "envelopes of old delivered group copies pruned"),
            Err(e) => tracing::warn!(error = %e, "cannot prune group copies"),
        }
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(PRUNE_EVERY) => {}
        }
        if *stop.borrow() {
            return;
        }
    }
}

/// The envelope of an outgoing group copy, for a re-send after a session reset.
pub(crate) fn envelope_for(inner: &Inner, seq: u64) -> Result<Option<Vec<u8>>, NodeError> {
    Ok(inner.store.get(Tree::Meta, &ekey(seq))?)
}

/// Encrypts one envelope for member `to` over the pairwise session and adds the session, the
/// history entry and the outbox entry to `batch`. None when `to` is not a usable contact. The
/// caller holds the node-wide ratchet lock and must not have `to`'s session in `batch` already.
fn seal(
    inner: &Inner,
    g: &Group,
    to: IdentityKey,
    envelope: &[u8],
    tag: GroupTag,
    text: String,
    batch: &mut Batch,
) -> Result<Option<HistoryEntry>, NodeError> {
    let Some(c) = inner.contacts.get(&to)? else {
        tracing::warn!(group = %g.id(), member = %to.short(), "group member is not a contact; not sent");
        return Ok(None);
    };
    if c.trust == Trust::Rejected {
        return Ok(None);
    }
    let now = Timestamp::now();
    let payload = Payload {
        id: MessageId::random(&mut rand::rngs::OsRng),
        sent_at: now,
        content: Content::Other {
            kind: crate::group::control::PAYLOAD_KIND,
            data: envelope.to_vec(),
        },
    };
    let id = low64(&payload.id);
    let peer = PeerKeys {
        identity_key: to.0,
        noise_key: c.identity.noise_key().0,
    };
    let out = inner
        .sessions()
        .encrypt(&*inner.store, &mut rand::rngs::OsRng, &peer, &payload)?;
    let (sb, wire) = out.into_parts();
    batch.extend(sb);
    let (mut entry, hb) = inner.history.record(NewEntry {
        direction: Direction::Out,
        peer: to,
        peer_name: Some(c.identity.username().to_string()),
        id,
        text,
        sent_at: now,
        recorded_at: now,
        status: Status::Queued,
        path: None,
    });
    batch.extend(hb);
    entry.group = Some(tag);
    batch.extend(inner.history.update(&entry));
    batch.extend(inner.history.keep_payload_id(entry.seq, &payload.id.0));
    batch.extend(
        OutboxEntry {
            message_id: id,
            recipient: to.0,
            wire,
            history_seq: entry.seq,
            payload_id: payload.id.0.to_vec(),
        }
        .put(),
    );
    batch.put(Tree::Meta, ekey(entry.seq), envelope.to_vec());
    batch.put(Tree::Meta, hkey(&g.id(), entry.seq), Vec::new());
    Ok(Some(entry))
}

fn control_tag(g: &Group, envelope: &[u8]) -> (GroupTag, String) {
    let (kind, forwarded_to) = match Control::decode(envelope) {
        Ok((_, Control::Forward(f))) => (
            Control::decode(&f.inner.envelope)
                .map(|(_, c)| c.name())
                .unwrap_or("control"),
            Some(f.to.iter().map(|m| m.key().to_string()).collect()),
        ),
        Ok((_, c)) => (c.name(), None),
        Err(_) => ("control", None),
    };
    (
        GroupTag {
            group: g.id().to_string(),
            kind: kind.to_string(),
            message_id: None,
            seq: None,
            gap: None,
            forwarded_to,
            generation: None,
            delivered_to: None,
        },
        format!("[group {}: {kind}]", g.membership.name),
    )
}

/// Whether we send to `k` pairwise: a contact we have not rejected.
fn is_reachable(inner: &Inner, k: &IdentityKey) -> bool {
    inner
        .contacts
        .get(k)
        .ok()
        .flatten()
        .is_some_and(|c| c.trust != Trust::Rejected)
}

/// The core's sends with those for members who are not our contacts routed through the
/// creator ([`Group::route`]).
fn route(
    inner: &Inner,
    g: &Group,
    sends: Vec<(IdentityKey, Vec<u8>)>,
) -> Vec<(IdentityKey, Vec<u8>)> {
    let me = inner.me();
    g.route(me.signing_key(), sends, |k| is_reachable(inner, k))
}

/// Seals every send of the core's effects (skipping `defer`, returned for later).
fn seal_all(
    inner: &Inner,
    g: &Group,
    sends: Vec<(IdentityKey, Vec<u8>)>,
    defer: Option<IdentityKey>,
    batch: &mut Batch,
) -> Result<Sealed, NodeError> {
    let mut entries = Vec::new();
    let mut later = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (to, env) in route(inner, g, sends) {
        // A second envelope to the same member needs the first one's session committed.
        if Some(to) == defer || !seen.insert(to) {
            later.push((to, env));
            continue;
        }
        let (tag, text) = control_tag(g, &env);
        entries.extend(seal(inner, g, to, &env, tag, text, batch)?);
    }
    Ok((entries, later))
}

/// Deletes every history entry of a closed group (and the envelopes kept for re-sends).
fn delete_history(inner: &Inner, id: &GroupId, batch: &mut Batch) -> Result<usize, NodeError> {
    let prefix = hprefix(id);
    let mut n = 0;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = inner
            .store
            .scan(Tree::Meta, &prefix, after.as_deref(), 1000)?;
        if page.is_empty() {
            break;
        }
        for (k, _) in &page {
            let seq = k
                .get(prefix.len()..)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes);
            if let Some(seq) = seq {
                if let Some(e) = inner.history.get(seq)? {
                    batch.extend(inner.history.delete(&e));
                    n += 1;
                }
                batch.delete(Tree::Meta, ekey(seq));
            }
            batch.delete(Tree::Meta, k.clone());
        }
        after = page.last().map(|(k, _)| k.clone());
    }
    for prefix in [sprefix(id), mprefix(id)] {
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = inner
                .store
                .scan(Tree::Meta, &prefix, after.as_deref(), 1000)?;
            let Some((last, _)) = page.last() else { break };
            after = Some(last.clone());
            for (k, _) in &page {
                batch.delete(Tree::Meta, k.clone());
            }
        }
    }
    Ok(n)
}

fn record_shown(
    inner: &Inner,
    g: &Group,
    s: &Shown,
    path: Option<DeliveryPath>,
    batch: &mut Batch,
) -> Result<HistoryEntry, NodeError> {
    let name = inner
        .contacts
        .get(&s.sender)?
        .map(|c| c.identity.username().to_string());
    let (mut entry, hb) = inner.history.record(NewEntry {
        direction: Direction::In,
        peer: s.sender,
        peer_name: name,
        id: low64(&s.id),
        text: s.text.clone(),
        sent_at: s.sent_at,
        recorded_at: Timestamp::now(),
        status: Status::Received,
        path,
    });
    batch.extend(hb);
    entry.group = Some(GroupTag {
        group: g.id().to_string(),
        kind: "message".into(),
        message_id: Some(super::history::format_id(low64(&s.id))),
        seq: Some(s.seq),
        gap: Some(s.gap),
        forwarded_to: None,
        generation: Some(s.generation),
        delivered_to: None,
    });
    batch.extend(inner.history.update(&entry));
    batch.put(Tree::Meta, hkey(&g.id(), entry.seq), Vec::new());
    batch.put(
        Tree::Meta,
        skey(&g.id(), &s.sender, s.generation, s.seq),
        s.digest.to_vec(),
    );
    prune_digests(&*inner.store, &g.id(), &s.sender, s.generation, s.seq, batch)?;
    Ok(entry)
}

/// How many message numbers behind a sender's newest read message its digests are kept.
/// Twice the skipped keys a receiver holds: a copy of anything older is refused as `replayed`
/// by the chain alone; only the key-reuse diagnosis (`conflicting_replay`) needs the digest.
pub const DIGEST_WINDOW: u32 = 2 * crate::group::MAX_SKIPPED_KEYS as u32;

/// At most this many old digests are deleted per message read: each message adds one, so
/// the store keeps pace while no single commit grows without bound.
const PRUNE_PER_MESSAGE: usize = 16;

/// True when the digest kept for `(generation, seq)` is no longer needed once `(cur_gen,
/// cur_seq)` was read from the same sender: its generation is older than the previous one
/// (those messages are refused as `stale_generation` before any digest is consulted), or it
/// is the current generation's and more than [`DIGEST_WINDOW`] numbers behind.
fn digest_expired(generation: u32, seq: u32, cur_gen: u32, cur_seq: u32) -> bool {
    generation.saturating_add(1) < cur_gen
        || (generation == cur_gen && seq.saturating_add(DIGEST_WINDOW) < cur_seq)
}

/// Deletes (into `batch`) a sender's digests that [`digest_expired`] says are unneeded,
/// oldest first, at most [`PRUNE_PER_MESSAGE`] per call. Two bounded scans in key order
/// (generation, then seq): the generations before the previous one, then the current
/// generation's numbers behind the window. Each stops at the first key it keeps.
fn prune_digests(
    store: &dyn Store,
    gid: &GroupId,
    sender: &IdentityKey,
    cur_gen: u32,
    cur_seq: u32,
    batch: &mut Batch,
) -> Result<(), NodeError> {
    let mut by_sender = sprefix(gid);
    by_sender.extend_from_slice(&sender.0);
    let mut current = by_sender.clone();
    current.extend_from_slice(&cur_gen.to_be_bytes());
    for prefix in [by_sender, current] {
        let page = store.scan(Tree::Meta, &prefix, None, PRUNE_PER_MESSAGE)?;
        for (k, _) in page {
            // The key ends in generation (u32 BE) || seq (u32 BE).
            let tail = k.get(k.len().saturating_sub(8)..).unwrap_or_default();
            let Ok(t) = <[u8; 8]>::try_from(tail) else {
                break;
            };
            let generation = u32::from_be_bytes([t[0], t[1], t[2], t[3]]);
            let seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
            if !digest_expired(generation, seq, cur_gen, cur_seq) {
                break;
            }
            batch.delete(Tree::Meta, k);
        }
    }
    Ok(())
}

fn notice(
    inner: &Inner,
    g: &Group,
    peer: &IdentityKey,
    text: String,
    batch: &mut Batch,
) -> HistoryEntry {
    let now = Timestamp::now();
    let (mut entry, hb) = inner.history.record(NewEntry {
        direction: Direction::In,
        peer: *peer,
        peer_name: None,
        id: rand::random::<u64>(),
        text,
        sent_at: now,
        recorded_at: now,
        status: Status::Notice,
        path: None,
    });
    batch.extend(hb);
    entry.group = Some(GroupTag {
        group: g.id().to_string(),
        kind: "close".into(),
        message_id: None,
        seq: None,
        gap: None,
        forwarded_to: None,
        generation: None,
        delivered_to: None,
    });
    batch.extend(inner.history.update(&entry));
    entry
}

/// Handles a group envelope received from `sender` (inside the inbox, under the node-wide ratchet lock).
/// Adds everything to `batch` (the received message's batch); returns the entries to announce
/// after the commit and the envelopes to send to `sender` after it.
pub(crate) fn on_envelope(
    inner: &Inner,
    sender: IdentityKey,
    data: &[u8],
    path: DeliveryPath,
    batch: &mut Batch,
) -> Result<Sealed, NodeError> {
    let me = inner.me().key();
    let (gid, c) = match Control::decode(data) {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(peer = %sender.short(), code = e.code(), error = %e, "group envelope refused");
            return Ok((Vec::new(), Vec::new()));
        }
    };
    let kind = c.name();
    let mut replay: Vec<(IdentityKey, Control)> = Vec::new();
    let mut g = match load(inner, &gid)? {
        Some(g) => {
            replay.push((sender, c));
            g
        }
        None => match c {
            Control::Invite(inv) => {
                if all(inner)?.len() >= MAX_GROUPS {
                    let e = GroupError::TooManyGroups { max: MAX_GROUPS };
                    tracing::warn!(peer = %sender.short(), group = %gid, error = %e, "invitation refused");
                    return Ok((Vec::new(), Vec::new()));
                }
                match Group::from_invite(me, sender, inv) {
                    Ok(g) if g.id() == gid => {
                        tracing::info!(peer = %sender.short(), group = %gid, "group invitation received");
                        let mut pending = load_pending(inner);
                        for (from, env) in pending.take(gid) {
                            if let Ok((_, c)) = Control::decode(&env) {
                                replay.push((from, c));
                            }
                        }
                        batch.put(Tree::Meta, PENDING_KEY.to_vec(), msgpack::encode(&pending));
                        g
                    }
                    Ok(_) => {
                        tracing::warn!(peer = %sender.short(), code = 0x01, "invitation names another group; refused");
                        return Ok((Vec::new(), Vec::new()));
                    }
                    Err(e) => {
                        tracing::warn!(peer = %sender.short(), group = %gid, code = e.code(), error = %e, "group invitation refused");
                        return Ok((Vec::new(), Vec::new()));
                    }
                }
            }
            _ => {
                // It may have overtaken its invitation: hold it (bounded) if the sender is one
                // of our contacts.
                let known = inner
                    .contacts
                    .get(&sender)?
                    .is_some_and(|c| c.trust != Trust::Rejected);
                let e = GroupError::UnknownGroup;
                tracing::info!(peer = %sender.short(), group = %gid, kind, code = e.code(), held = known, "envelope for an unknown group");
                if known {
                    let mut pending = load_pending(inner);
                    pending.hold(gid, sender, data.to_vec());
                    batch.put(Tree::Meta, PENDING_KEY.to_vec(), msgpack::encode(&pending));
                }
                return Ok((Vec::new(), Vec::new()));
            }
        },
    };
    let mut entries = Vec::new();
    let mut sends = Vec::new();
    let mut rng = rand::rngs::OsRng;
    let mut updated = BTreeMap::new();
    let signer = inner.me();
    for (from, c) in replay {
        let kind = c.name();
        let carried = c.message();
        match g.handle(&mut rng, from, c) {
            Ok(fx) => {
                tracing::debug!(peer = %from.short(), group = %gid, kind, shown = fx.shown.len(), "group envelope handled");
                for s in &fx.shown {
                    entries.push(record_shown(inner, &g, s, Some(path), batch)?);
                }
                sends.extend(fx.send);
                sends.extend(g.receipts(signer.signing_key(), &fx.shown));
                for (member, mid) in &fx.delivered {
                    entries.extend(mark_delivered(inner, &g, member, mid, &mut updated, batch)?);
                }
                if fx.closed {
                    let n = delete_history(inner, &gid, batch)?;
                    entries.clear();
                    entries.push(notice(
                        inner,
                        &g,
                        &from,
                        format!(
                            "group {} closed by its creator; {n} entries deleted",
                            g.membership.name
                        ),
                        batch,
                    ));
                    tracing::info!(group = %gid, deleted = n, "group closed by its creator");
                }
            }
            Err(e) => {
                let e = classify(inner, &gid, carried.as_ref(), e);
                g.count(&e);
                if let GroupError::ConflictingReplay { generation, seq } = e {
                    let author = carried.as_ref().map(|m| IdentityKey(m.sender)).unwrap_or(from);
                    tracing::warn!(peer = %from.short(), author = %author.short(), group = %gid, generation, seq, code = e.code(), reason = e.name(), "group message dropped: it reuses a message key already received with different content (possible key reuse by the sender)");
                } else {
                    tracing::warn!(peer = %from.short(), group = %gid, kind, code = e.code(), reason = e.name(), "group envelope refused");
                }
            }
        }
    }
    let (sent, later) = seal_all(inner, &g, sends, Some(sender), batch)?;
    entries.extend(sent);
    put(batch, &g);
    Ok((entries, later))
}

/// Queues envelopes deferred by [`on_envelope`] (the caller still holds the node-wide ratchet lock and
/// has committed the received message).
pub(crate) async fn send_deferred(
    inner: &Arc<Inner>,
    later: Vec<(IdentityKey, Vec<u8>)>,
) -> Result<(), NodeError> {
    for (to, env) in later {
        let Ok((gid, _)) = Control::decode(&env) else {
            continue;
        };
        let Some(g) = load(inner, &gid)? else {
            continue;
        };
        let mut batch = Batch::new();
        let (tag, text) = control_tag(&g, &env);
        let e = seal(inner, &g, to, &env, tag, text, &mut batch)?;
        commit(&inner.store, batch).await?;
        if let Some(e) = e {
            let _ = inner.events.send(e);
            inner.wakers.wake(&to);
        }
    }
    Ok(())
}

/// After a restore ([`crate::backup::GROUPS_RESTORED_KEY`] present): replaces our sender key
/// in every group by a fresh generation at least the restore time in seconds (and at least
/// now), sent to the other members as `sender_key` ([`Group::restart_sender_key`]); then
/// deletes the mark. Runs at start before anything can send or receive. One commit per group
/// (a member's second envelope needs the first one's session committed); a crash in between
/// re-keys again at the next start, which only costs another generation. Returns how many
/// groups got a new chain.
pub(crate) async fn rekey_after_restore(inner: &Arc<Inner>) -> Result<usize, NodeError> {
    let Some(mark) = inner
        .store
        .get(Tree::Meta, crate::backup::GROUPS_RESTORED_KEY)?
    else {
        return Ok(0);
    };
    let restored_at = <[u8; 8]>::try_from(mark.as_slice())
        .map(u64::from_be_bytes)
        .unwrap_or(0);
    let floor = restored_at.max(Timestamp::now().0 / 1000);
    let floor = u32::try_from(floor).unwrap_or(u32::MAX);
    let _one = inner.locks.all().await;
    let mut n = 0;
    for mut g in all(inner)? {
        let before = g.own_chain();
        let fx = g.restart_sender_key(&mut rand::rngs::OsRng, floor);
        let mut batch = Batch::new();
        let (entries, later) = seal_all(inner, &g, fx.send, None, &mut batch)?;
        put(&mut batch, &g);
        commit(&inner.store, batch).await?;
        if g.own_chain() != before {
            n += 1;
            tracing::info!(group = %g.id(), generation = ?g.own_chain().map(|c| c.0), "restored from a backup: group sender key replaced by a new generation");
        }
        wake_queued(inner, &entries);
        for e in entries {
            let _ = inner.events.send(e);
        }
        send_deferred(inner, later).await?;
    }
    let mut batch = Batch::new();
    batch.delete(Tree::Meta, crate::backup::GROUPS_RESTORED_KEY.to_vec());
    commit(&inner.store, batch).await?;
    Ok(n)
}

/// Wakes the delivery workers of the members that `entries` queued messages for (after their
/// commit).
pub(crate) fn wake_queued(inner: &Inner, entries: &[HistoryEntry]) {
    for e in entries {
        if e.direction == Direction::Out && e.status == Status::Queued {
            inner.wakers.wake(&e.peer);
        }
    }
}

impl Node {
    /// Finds a group by id (32 hex), unique id prefix (at least 4 hex) or unique name.
    fn find_group(&self, g: &str) -> Result<Group, NodeError> {
        if let Some(id) = GroupId::parse(g) {
            return load(&self.inner, &id)?
                .ok_or_else(|| GroupError::Usage(format!("unknown group {g:?}")).into());
        }
        let groups = all(&self.inner)?;
        let lower = g.to_ascii_lowercase();
        let mut found: Vec<Group> = groups
            .into_iter()
            .filter(|x| {
                x.membership.name == g || (g.len() >= 4 && x.id().to_string().starts_with(&lower))
            })
            .collect();
        match found.len() {
            1 => Ok(found.remove(0)),
            0 => Err(GroupError::Usage(format!("unknown group {g:?}")).into()),
            _ => Err(
                GroupError::Usage(format!("{g:?} matches several groups; use the group id")).into(),
            ),
        }
    }

    fn view(&self, g: &Group) -> GroupView {
        let me = self.inner.me();
        let members = g
            .states()
            .into_iter()
            .map(|(k, s)| {
                let is_me = k.0 == g.me;
                let c = self.inner.contacts.get(&k).ok().flatten();
                let direct = is_me || c.as_ref().is_some_and(|c| c.trust != Trust::Rejected);
                let via_creator = !direct
                    && c.is_none()
                    && !g.is_creator()
                    && is_reachable(&self.inner, &IdentityKey(g.membership.creator));
                MemberView {
                    id: k.to_string(),
                    name: if is_me {
                        Some(me.identity().username().to_string())
                    } else {
                        c.as_ref().map(|c| c.identity.username().to_string())
                    },
                    state: s.name(),
                    me: is_me,
                    reachable: direct || via_creator,
                    via_creator,
                }
            })
            .collect();
        GroupView {
            id: g.id().to_string(),
            name: g.membership.name.clone(),
            creator: IdentityKey(g.membership.creator).to_string(),
            is_creator: g.is_creator(),
            state: if g.closed {
                "closed"
            } else {
                g.my_state().name()
            },
            closed: g.closed,
            created_at: g.membership.created_at,
            members,
            held: g.held(),
            sender_key: g.own_chain(),
            refused: g.refused.clone(),
        }
    }

    /// `sremp group create NAME --members a,b`: members are contacts (id or unique username).
    pub async fn group_create(
        &self,
        name: &str,
        members: &[String],
    ) -> Result<GroupView, NodeError> {
        if *self.inner.stop.borrow() {
            return Err(NodeError::ShuttingDown);
        }
        let me = self.inner.me();
        let mut keys = Vec::new();
        for m in members.iter().map(|m| m.trim()).filter(|m| !m.is_empty()) {
            let c = self.resolve(m)?;
            if c.trust == Trust::Rejected {
                return Err(NodeError::RejectedContact(c.identity.key()));
            }
            if c.identity.key() == me.key() {
                return Err(NodeError::SelfContact);
            }
            keys.push(c.identity.key());
        }
        if keys.is_empty() {
            return Err(GroupError::Usage("a group needs at least one other member".into()).into());
        }
        let inner = &self.inner;
        let _one = inner.locks.all().await;
        if all(inner)?.len() >= MAX_GROUPS {
            return Err(GroupError::TooManyGroups { max: MAX_GROUPS }.into());
        }
        let (g, fx) = Group::create(
            &mut rand::rngs::OsRng,
            me.signing_key(),
            name,
            &keys,
            Timestamp::now(),
        )?;
        let mut batch = Batch::new();
        let (entries, later) = seal_all(inner, &g, fx.send, None, &mut batch)?;
        put(&mut batch, &g);
        commit(&inner.store, batch).await?;
        self.after(entries, &g, later).await?;
        tracing::info!(group = %g.id(), members = g.membership.members.len(), "group created");
        Ok(self.view(&g))
    }

    async fn after(
        &self,
        entries: Vec<HistoryEntry>,
        g: &Group,
        later: Vec<(IdentityKey, Vec<u8>)>,
    ) -> Result<(), NodeError> {
        wake_queued(&self.inner, &entries);
        for e in entries {
            let _ = self.inner.events.send(e);
        }
        for (to, env) in later {
            let mut batch = Batch::new();
            let (tag, text) = control_tag(g, &env);
            let e = seal(&self.inner, g, to, &env, tag, text, &mut batch)?;
            commit(&self.inner.store, batch).await?;
            if let Some(e) = e {
                let _ = self.inner.events.send(e);
                self.inner.wakers.wake(&to);
            }
        }
        Ok(())
    }

    /// Runs one local change on a group (accept, decline, leave, close).
    async fn group_change(
        &self,
        g: &str,
        f: impl FnOnce(&mut Group) -> Result<crate::group::Effects, GroupError>,
    ) -> Result<GroupView, NodeError> {
        if *self.inner.stop.borrow() {
            return Err(NodeError::ShuttingDown);
        }
        let inner = &self.inner;
        let _one = inner.locks.all().await;
        let mut g = self.find_group(g)?;
        let fx = f(&mut g)?;
        let mut batch = Batch::new();
        let mut entries = Vec::new();
        if fx.closed
            || matches!(
                g.my_state(),
                crate::group::MemberState::Declined | crate::group::MemberState::Left
            )
        {
            delete_history(inner, &g.id(), &mut batch)?;
        }
        for s in &fx.shown {
            entries.push(record_shown(inner, &g, s, None, &mut batch)?);
        }
        let mut send = fx.send;
        send.extend(g.receipts(inner.me().signing_key(), &fx.shown));
        let (sent, later) = seal_all(inner, &g, send, None, &mut batch)?;
        entries.extend(sent);
        put(&mut batch, &g);
        commit(&inner.store, batch).await?;
        self.after(entries, &g, later).await?;
        Ok(self.view(&g))
    }

    /// `sremp group accept G`.
    pub async fn group_accept(&self, g: &str) -> Result<GroupView, NodeError> {
        self.group_change(g, |g| g.accept(&mut rand::rngs::OsRng))
            .await
    }

    /// `sremp group decline G`.
    pub async fn group_decline(&self, g: &str) -> Result<GroupView, NodeError> {
        self.group_change(g, |g| g.decline()).await
    }

    /// `sremp group leave G`.
    pub async fn group_leave(&self, g: &str) -> Result<GroupView, NodeError> {
        self.group_change(g, |g| g.leave()).await
    }

    /// `sremp group close G` (creator).
    pub async fn group_close(&self, g: &str) -> Result<GroupView, NodeError> {
        self.group_change(g, |g| g.close()).await
    }

    /// `sremp group show G`.
    pub fn group_show(&self, g: &str) -> Result<GroupView, NodeError> {
        Ok(self.view(&self.find_group(g)?))
    }

    /// Envelopes of outgoing group copies kept for re-sends (what [`prune_task`] bounds).
    pub fn group_kept_envelopes(&self) -> Result<usize, NodeError> {
        Ok(self
            .inner
            .store
            .scan(Tree::Meta, b"group/e/", None, PRUNE_SCAN)?
            .len())
    }

    /// One prune pass as if the time were `now_ms` (the node runs it hourly with the clock);
    /// returns how many envelopes were deleted.
    pub async fn group_prune(&self, now_ms: u64) -> Result<usize, NodeError> {
        prune_envelopes(&self.inner, now_ms).await
    }

    /// `sremp group list`.
    pub fn group_list(&self) -> Result<Vec<GroupView>, NodeError> {
        Ok(all(&self.inner)?.iter().map(|g| self.view(g)).collect())
    }

    /// `sremp send --group G TEXT`: one encryption, one copy per member queued.
    pub async fn group_send(&self, g: &str, text: &str) -> Result<GroupSent, NodeError> {
        if text.is_empty() || text.len() > super::MAX_TEXT {
            return Err(NodeError::BadText(text.len()));
        }
        if *self.inner.stop.borrow() {
            return Err(NodeError::ShuttingDown);
        }
        let inner = &self.inner;
        let me = inner.me();
        let _one = inner.locks.all().await;
        let mut g = self.find_group(g)?;
        let payload = Payload::text(&mut rand::rngs::OsRng, Timestamp::now(), text);
        let (env, to) = g.encrypt(me.signing_key(), &payload)?;
        if to.is_empty() {
            return Err(GroupError::Usage("no other member left to send to".into()).into());
        }
        let message_id = super::history::format_id(low64(&payload.id));
        let mut batch = Batch::new();
        let mut entries = Vec::new();
        let sends = to.into_iter().map(|k| (k, env.clone())).collect();
        for (k, env) in route(inner, &g, sends) {
            let (control, _) = control_tag(&g, &env);
            let tag = GroupTag {
                group: g.id().to_string(),
                kind: "message".into(),
                message_id: Some(message_id.clone()),
                seq: None,
                gap: None,
                delivered_to: control.forwarded_to.as_ref().map(|_| Vec::new()),
                forwarded_to: control.forwarded_to,
                generation: None,
            };
            let forwarded = tag.forwarded_to.is_some();
            let sealed = seal(inner, &g, k, &env, tag, text.to_string(), &mut batch)?;
            if let (true, Some(e)) = (forwarded, &sealed) {
                batch.put(
                    Tree::Meta,
                    mkey(&g.id(), low64(&payload.id)),
                    e.seq.to_be_bytes().to_vec(),
                );
            }
            entries.extend(sealed);
        }
        put(&mut batch, &g);
        commit(&inner.store, batch).await?;
        wake_queued(inner, &entries);
        for e in &entries {
            let _ = inner.events.send(e.clone());
        }
        Ok(GroupSent {
            group: g.id().to_string(),
            message_id,
            entries,
        })
    }

    /// `sremp messages --group G`: the group's entries (messages both ways, one entry per
    /// member copy for ours, and the controls we sent), oldest first, `seq > after`.
    pub fn group_messages(
        &self,
        g: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<Vec<HistoryEntry>, NodeError> {
        let g = self.find_group(g)?;
        let prefix = hprefix(&g.id());
        let start = after.map(|a| hkey(&g.id(), a));
        let mut out = Vec::new();
        for (k, _) in self
            .inner
            .store
            .scan(Tree::Meta, &prefix, start.as_deref(), limit)?
        {
            let seq = k
                .get(prefix.len()..)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes);
            if let Some(e) = seq
                .map(|s| self.inner.history.get(s))
                .transpose()?
                .flatten()
            {
                out.push(e);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::store::SledStore;

    #[test]
    fn digests_expire_behind_the_window_and_before_the_previous_generation() {
        assert!(!digest_expired(5, 10, 5, 10));
        assert!(!digest_expired(5, 0, 5, DIGEST_WINDOW));
        assert!(digest_expired(5, 0, 5, DIGEST_WINDOW + 1));
        // The previous generation is kept whole (messages in flight still open).
        assert!(!digest_expired(4, 0, 5, u32::MAX));
        assert!(digest_expired(3, u32::MAX, 5, 0));
        // A later generation (a held message read out of order) is never pruned.
        assert!(!digest_expired(6, 0, 5, u32::MAX));
    }

    #[test]
    fn reading_a_long_run_keeps_a_bounded_window_of_digests() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        let gid = GroupId([7; 16]);
        let bob = IdentityKey([1; 32]);
        let carol = IdentityKey([2; 32]);
        let count = |who: &IdentityKey| {
            let mut p = sprefix(&gid);
            p.extend_from_slice(&who.0);
            store.scan(Tree::Meta, &p, None, usize::MAX).unwrap()
        };
        // Generation 1, then 2 and 3: what `record_shown` does for each message read.
        for (generation, n) in [(1u32, 3 * DIGEST_WINDOW), (2, 40), (3, 3 * DIGEST_WINDOW)] {
            for seq in 0..n {
                let mut b = Batch::new();
                b.put(Tree::Meta, skey(&gid, &bob, generation, seq), vec![0; 16]);
                prune_digests(&store, &gid, &bob, generation, seq, &mut b).unwrap();
                store.apply(b).unwrap();
            }
        }
        // Carol's digests are another sender's: untouched.
        let mut b = Batch::new();
        b.put(Tree::Meta, skey(&gid, &carol, 1, 0), vec![0; 16]);
        store.apply(b).unwrap();
        let kept = count(&bob);
        // Generation 1 is gone, generation 2 (the previous) is whole, generation 3 holds
        // the window (plus the newest).
        let gens: Vec<u32> = kept
            .iter()
            .map(|(k, _)| u32::from_be_bytes(k[k.len() - 8..k.len() - 4].try_into().unwrap()))
            .collect();
        assert!(!gens.contains(&1), "generation 1 digests left: {}", gens.iter().filter(|g| **g == 1).count());
        assert_eq!(gens.iter().filter(|g| **g == 2).count(), 40);
        assert_eq!(gens.iter().filter(|g| **g == 3).count() as u32, DIGEST_WINDOW + 1);
        assert_eq!(count(&carol).len(), 1);
    }
}
