//! The durable outbox: signed, encrypted messages that no one has accepted yet.
//!
//! An entry is written in the same atomic batch that advances the sending chain and records the
//! message in the history, before `send` returns, so a crash at any point after `send` returned
//! leaves the message either here or accepted by a peer or relay. Entries are keyed by
//! `recipient || history seq`, so one recipient's messages are a prefix scan in send order.
//! An entry is removed only in the batch that records its acceptance (direct acknowledgement or
//! durable relay store).

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

/// Recipients with queued messages (at most `limit` distinct ones), and the total count seen.
pub fn recipients(
    store: &dyn Store,
    limit: usize,
) -> Result<(BTreeSet<IdentityKey>, usize), StoreError> {
    let mut out = BTreeSet::new();
    let mut total = 0usize;
    let mut after: Option<Vec<u8>> = None;
    // Bounded walk: pages of 1024 keys, at most 1000 pages.
    for _ in 0..1000 {
        let page = store.scan(Tree::Outbox, b"", after.as_deref(), 1024)?;
        let Some((last, _)) = page.last() else { break };
        after = Some(last.clone());
        total += page.len();
        for (k, _) in &page {
            if let Some(r) = k.get(..32).and_then(|b| <[u8; 32]>::try_from(b).ok()) {
                if out.len() < limit {
                    out.insert(IdentityKey(r));
                }
            }
        }
        if page.len() < 1024 {
            break;
        }
    }
    Ok((out, total))
}
