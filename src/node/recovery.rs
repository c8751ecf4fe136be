//! Recovering messages a recipient confirmed and then lost (restored from an older backup).
//!
//! A recipient that cannot decrypt a message for lack of ratchet state answers with a signed
//! `SESSION_RESET` (docs/PROTOCOL.md, "Session reset"). Besides what is unconfirmed, the sender
//! re-sends what the recipient *had* confirmed but no longer holds: the notice carries the id of
//! the newest message from the sender that the recipient still has recorded
//! (`last_recorded`, 0 for none), and the sender picks its own `delivered` messages to that
//! contact that come after it in its history, sent within [`RECOVER_WINDOW_MS`] — the
//! documented window for which delivered messages stay recoverable at the sender. Each is
//! re-encrypted from its history entry with its original 16-byte payload id, which the history
//! keeps for every outgoing message (`History::keep_payload_id`), so a recipient that does
//! still hold one drops the copy by its `(sender, MessageId)` check and confirms it again.
//!
//! Group messages: the recipient records a received group message under the *group* message
//! id (the same at every member), while each of our copies is recorded under the id of the
//! pairwise payload that carried it, with the group message id in its `group` tag. So when
//! `last_recorded` names no message of ours, it is looked up among our group copies to that
//! recipient by that tag ([`group_copy_after`]); without this the whole window was re-sent.
//!
//! Pure selection over the store; the caller ([`super::delivery`]) holds the ratchet lock,
//! re-encrypts and commits.

use super::history::{Direction, History, Status};
use super::outbox::OutboxEntry;
use crate::identity::IdentityKey;
use crate::store::StoreError;

/// How long a delivered message stays recoverable at the sender: a session reset naming an
/// older `last_recorded` re-sends delivered messages sent within this window (7 days).
pub const RECOVER_WINDOW_MS: u64 = 7 * 24 * 3600 * 1000;
/// Most history entries read to find them (after `last_recorded`).
pub const RECOVER_SCAN: usize = 100_000;
/// Most index records read by the recipient to find what it last recorded from a sender.
pub const LAST_RECORDED_SCAN: usize = 1_000_000;

/// The `last_recorded` a recipient puts in a session-reset notice to `sender`: the id of the
/// newest message from `sender` in its history, 0 if there is none.
pub fn last_recorded(history: &History, sender: &IdentityKey) -> Result<u64, StoreError> {
    Ok(history
        .newest_received_from(sender, LAST_RECORDED_SCAN)?
        .unwrap_or(0))
}

/// Our `delivered` messages to `peer` that come after its `last_recorded` in our history (all
/// of them when it is 0 or unknown to us), sent at or after `now_ms - RECOVER_WINDOW_MS`,
/// oldest first, at most `limit`. Each is returned as an outbox entry without ciphertext
/// (`wire` empty): the caller encrypts it again. Messages without a kept payload id (sent
/// before ids were kept) are skipped: re-sent under a new id they could show twice.
pub fn lost_after(
    history: &History,
    peer: &IdentityKey,
    last_recorded: u64,
    now_ms: u64,
    limit: usize,
) -> Result<Vec<OutboxEntry>, StoreError> {
    let after = match last_recorded {
        0 => 0,
        id => match history
            .find(Direction::Out, peer, id)?
            .filter(|e| e.direction == Direction::Out)
        {
            Some(e) => e.seq,
            None => group_copy_after(history, peer, id)?.unwrap_or(0),
        },
    };
    let since = now_ms.saturating_sub(RECOVER_WINDOW_MS);
    let mut out = Vec::new();
    let mut cursor = after;
    let mut read = 0usize;
    const PAGE: usize = 1000;
    while read < RECOVER_SCAN && out.len() < limit {
        let page = history.list(Some(cursor), PAGE)?;
        let Some(last) = page.last() else { break };
        cursor = last.seq;
        read += page.len();
        for h in &page {
            if h.direction != Direction::Out
                || h.status != Status::Delivered
                || h.peer != *peer
                || h.sent_at < since
            {
                continue;
            }
            let Some(pid) = history.payload_id(h.seq)? else {
                continue;
            };
            let message_id = h.id;
            out.push(OutboxEntry {
                message_id,
                recipient: peer.0,
                wire: Vec::new(),
                history_seq: h.seq,
                payload_id: pid.to_vec(),
            });
            if out.len() >= limit {
                break;
            }
        }
        if page.len() < PAGE {
            break;
        }
    }
    Ok(out)
}

/// The seq of our copy to `peer` of the group message whose id (low 64 bits) is `group_id`,
/// if it is among the first [`RECOVER_SCAN`] history entries.
pub fn group_copy_after(
    history: &History,
    peer: &IdentityKey,
    group_id: u64,
) -> Result<Option<u64>, StoreError> {
    let want = super::history::format_id(group_id);
    let mut cursor = None;
    let mut read = 0usize;
    let mut found = None;
    const PAGE: usize = 1000;
    while read < RECOVER_SCAN {
        let page = history.list(cursor, PAGE)?;
        let Some(last) = page.last() else { break };
        cursor = Some(last.seq);
        read += page.len();
        for h in &page {
            let copy = h.direction == Direction::Out
                && h.peer == *peer
                && h.group
                    .as_ref()
                    .is_some_and(|g| g.kind == "message" && g.message_id.as_deref() == Some(&want));
            if copy {
                found = Some(h.seq);
            }
        }
        if page.len() < PAGE {
            break;
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::history::{DeliveryPath, NewEntry};
    use crate::store::{SledStore, Store};
    use crate::time::Timestamp;
    use std::sync::Arc;

    fn record(
        h: &History,
        s: &dyn Store,
        dir: Direction,
        peer: &IdentityKey,
        id: u64,
        st: Status,
        at: u64,
    ) -> u64 {
        let (e, mut b) = h.record(NewEntry {
            direction: dir,
            peer: *peer,
            peer_name: None,
            id,
            text: format!("m{id}"),
            sent_at: Timestamp(at),
            recorded_at: Timestamp(at),
            status: st,
            path: Some(DeliveryPath::Direct),
        });
        if dir == Direction::Out {
            let mut pid = [0u8; 16];
            pid[..8].copy_from_slice(&id.to_be_bytes());
            pid[8] = 0xee;
            b.extend(h.keep_payload_id(e.seq, &pid));
        }
        s.commit(b).unwrap();
        e.seq
    }

    #[test]
    fn picks_delivered_messages_after_the_last_recorded_one_within_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let h = History::open(store.clone()).unwrap();
        let (bob, carol) = (IdentityKey([2; 32]), IdentityKey([3; 32]));
        let day = 24 * 3600 * 1000;
        let now = 100 * day;
        record(
            &h,
            &*store,
            Direction::Out,
            &bob,
            1,
            Status::Delivered,
            now - 10 * day,
        ); // too old
        record(
            &h,
            &*store,
            Direction::Out,
            &bob,
            2,
            Status::Delivered,
            now - day,
        );
        record(
            &h,
            &*store,
            Direction::Out,
            &bob,
            3,
            Status::Delivered,
            now - day,
        );
        record(
            &h,
            &*store,
            Direction::In,
            &bob,
            4,
            Status::Received,
            now - day,
        );
        record(
            &h,
            &*store,
            Direction::Out,
            &carol,
            5,
            Status::Delivered,
            now - day,
        );
        record(
            &h,
            &*store,
            Direction::Out,
            &bob,
            6,
            Status::Queued,
            now - day,
        );
        record(
            &h,
            &*store,
            Direction::Out,
            &bob,
            7,
            Status::Delivered,
            now - day,
        );
        let ids = |v: Vec<OutboxEntry>| v.iter().map(|e| e.message_id).collect::<Vec<_>>();
        // Bob recorded up to 2: 3 and 7 (queued 6 is the caller's other half).
        assert_eq!(ids(lost_after(&h, &bob, 2, now, 100).unwrap()), vec![3, 7]);
        // Nothing recorded: everything delivered in the window.
        assert_eq!(
            ids(lost_after(&h, &bob, 0, now, 100).unwrap()),
            vec![2, 3, 7]
        );
        assert_eq!(ids(lost_after(&h, &bob, 0, now, 1).unwrap()), vec![2]);
        // An id we never sent counts as nothing recorded.
        assert_eq!(
            ids(lost_after(&h, &bob, 999, now, 100).unwrap()),
            vec![2, 3, 7]
        );
        let e = &lost_after(&h, &bob, 2, now, 100).unwrap()[0];
        assert_eq!(e.payload_id[8], 0xee, "the kept payload id");
        assert!(e.wire.is_empty());
        // The recipient's side: newest received from bob, notices skipped.
        assert_eq!(last_recorded(&h, &bob).unwrap(), 4);
        record(&h, &*store, Direction::In, &bob, 8, Status::Notice, now);
        assert_eq!(last_recorded(&h, &bob).unwrap(), 4);
        assert_eq!(last_recorded(&h, &carol).unwrap(), 0);
    }

    #[test]
    fn a_group_message_id_finds_our_copy_by_its_tag() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let h = History::open(store.clone()).unwrap();
        let bob = IdentityKey([2; 32]);
        let now = 100 * 24 * 3600 * 1000;
        let tag = |mid: u64| crate::node::groups::GroupTag {
            group: "g".into(),
            kind: "message".into(),
            message_id: Some(crate::node::history::format_id(mid)),
            seq: None,
            gap: None,
            forwarded_to: None,
            generation: None,
            delivered_to: None,
        };
        // Our copies of group messages 0x100..0x103 (pairwise ids 1..4) to bob.
        for i in 0..4u64 {
            let seq = record(
                &h,
                &*store,
                Direction::Out,
                &bob,
                i + 1,
                Status::Delivered,
                now,
            );
            let mut e = h.get(seq).unwrap().unwrap();
            e.group = Some(tag(0x100 + i));
            store.commit(h.update(&e)).unwrap();
        }
        let ids = |v: Vec<OutboxEntry>| v.iter().map(|e| e.message_id).collect::<Vec<_>>();
        // Bob last recorded group message 0x101: only the copies after it.
        assert_eq!(
            ids(lost_after(&h, &bob, 0x101, now, 100).unwrap()),
            vec![3, 4]
        );
        assert_eq!(group_copy_after(&h, &bob, 0x999).unwrap(), None);
        assert_eq!(
            group_copy_after(&h, &IdentityKey([9; 32]), 0x101).unwrap(),
            None
        );
    }
}
