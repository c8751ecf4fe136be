//! The durable outbox: signed, encrypted messages that no one has accepted yet.
//!
//! An entry is written in the same atomic batch that advances the sending chain and records the
//! message in the history, before `send` returns, so a crash at any point after `send` returned
//! leaves the message either here or accepted by a peer or relay. Entries are keyed by
//! `recipient || history seq`, so one recipient's messages are a prefix scan in send order.
//! An entry is removed only in the batch that records its acceptance (durable store at the
//! recipient's node or at a relay), and that batch keeps a copy in `Tree::Awaiting` until the
//! recipient's delivery confirmation arrives (see `delivery::confirmations`): a relay that loses
//! its store, or a recipient that loses its state, cannot lose the message for good.

use crate::identity::IdentityKey;
use crate::store::{Batch, Store, StoreError, Tree};
use crate::wire::msgpack;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// One queued message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// The transport message id (unique per sender; the recipient de-duplicates on it).
    pub message_id: u64,
    /// Recipient identity key.
    #[serde(with = "crate::wire::bytes::fixed")]
    pub recipient: [u8; 32],
    /// The signed end-to-end message (a `ratchet` wire message).
    #[serde(with = "serde_bytes")]
    pub wire: Vec<u8>,
    /// The history entry it belongs to.
    pub history_seq: u64,
    /// The full 16-byte payload id (the recipient de-duplicates on it), so that a re-send
    /// after a session reset carries the same id. Empty in entries written before it existed.
    #[serde(default, with = "serde_bytes")]
    pub payload_id: Vec<u8>,
}

impl OutboxEntry {
    /// The store key.
    pub fn key(&self) -> Vec<u8> {
        let mut k = self.recipient.to_vec();
        k.extend_from_slice(&self.history_seq.to_be_bytes());
        k
    }

    /// A batch that adds this entry.
    pub fn put(&self) -> Batch {
        let mut b = Batch::new();
        b.put(Tree::Outbox, self.key(), msgpack::encode(self));
        b
    }

    /// A batch that removes this entry.
    pub fn delete(&self) -> Batch {
        let mut b = Batch::new();
        b.delete(Tree::Outbox, self.key());
        b
    }
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        tree: Tree::Outbox,
        detail: e.to_string(),
    }
}

/// Up to `limit` queued messages for `recipient`, oldest first.
pub fn for_recipient(
    store: &dyn Store,
    recipient: &IdentityKey,
    limit: usize,
) -> Result<Vec<OutboxEntry>, StoreError> {
    store
        .scan(Tree::Outbox, recipient.as_bytes(), None, limit)?
        .iter()
        .map(|(_, v)| msgpack::decode(v).map_err(corrupt))
        .collect()
}

/// Recipients with queued messages, at most `limit` of them.
///
/// Reads one entry per recipient (each scan skips past the previous recipient's keys), so the
/// delivery engine's periodic check costs O(recipients), however many messages wait.
pub fn recipients(store: &dyn Store, limit: usize) -> Result<BTreeSet<IdentityKey>, StoreError> {
    let mut out = BTreeSet::new();
    let mut after: Option<Vec<u8>> = None;
    while out.len() < limit {
        let page = store.scan(Tree::Outbox, b"", after.as_deref(), 1)?;
        let Some(r) = page
            .first()
            .and_then(|(k, _)| k.get(..32))
            .and_then(|b| <[u8; 32]>::try_from(b).ok())
        else {
            break;
        };
        out.insert(IdentityKey(r));
        // Every key of this recipient is `r || seq` (40 bytes) and sorts at or before this.
        let mut next = r.to_vec();
        next.extend_from_slice(&[0xff; 8]);
        after = Some(next);
    }
    Ok(out)
}

/// Messages waiting in the outbox (for `status`; walks every entry).
pub fn count(store: &dyn Store) -> Result<usize, StoreError> {
    let mut total = 0usize;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let page = store.scan(Tree::Outbox, b"", after.as_deref(), 1024)?;
        total += page.len();
        match page.last() {
            Some((last, _)) if page.len() == 1024 => after = Some(last.clone()),
            _ => return Ok(total),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;

    #[test]
    fn recipients_and_count() {
        let dir = tempfile::tempdir().unwrap();
        let store = SledStore::open(dir.path()).unwrap();
        for (r, n) in [(1u8, 3u64), (2, 1), (7, 2000)] {
            let mut b = Batch::new();
            for seq in 0..n {
                b.extend(
                    OutboxEntry {
                        message_id: seq,
                        recipient: [r; 32],
                        wire: vec![0; 8],
                        history_seq: seq,
                        payload_id: Vec::new(),
                    }
                    .put(),
                );
            }
            store.commit(b).unwrap();
        }
        let rs = recipients(&store, 10).unwrap();
        assert_eq!(
            rs.into_iter().collect::<Vec<_>>(),
            vec![
                IdentityKey([1; 32]),
                IdentityKey([2; 32]),
                IdentityKey([7; 32])
            ]
        );
        assert_eq!(recipients(&store, 2).unwrap().len(), 2);
        assert_eq!(count(&store).unwrap(), 2004);
        assert_eq!(
            for_recipient(&store, &IdentityKey([2; 32]), 10)
                .unwrap()
                .len(),
            1
        );
    }
}
