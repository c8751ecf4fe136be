//! Message history: every message sent or received, with its delivery status and path.
//!
//! Records live in `Tree::History` keyed by a big-endian sequence number, so listing in order
//! and "everything after N" (`messages --follow`) are range scans. A second index maps
//! `(direction, peer, message_id)` to the sequence number so status updates find their entry.
//! Writes are returned as [`Batch`]es so callers commit them atomically with the ratchet state
//! or outbox change they belong to.

use crate::identity::IdentityKey;
use crate::store::{Batch, Store, StoreError, Tree};
use crate::time::Timestamp;
use crate::wire::msgpack;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Which way a message went.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Sent by this node.
    Out,
    /// Received by this node.
    In,
}

/// Delivery status.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// In the durable outbox, not yet accepted by anyone.
    Queued,
    /// Stored durably by the recipient's relay.
    StoredAtRelay,
    /// The recipient's node stored it (direct acknowledgement or delivery confirmation).
    Delivered,
    /// A message we received.
    Received,
    /// A line the node wrote itself, not a message: a session with the peer was reset (after
    /// one side lost its ratchet state) and what was re-sent. Never sent anywhere.
    Notice,
}

/// How a message travelled.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryPath {
    /// Straight to the peer's node (over TCP for a sent message; for a received one, the
    /// transport the sender used is not tracked). JSON `"direct"`.
    Direct,
    /// Through a relay.
    Relay,
    /// Straight to the peer's node over QUIC (sent messages). JSON `"direct-quic"`.
    #[serde(rename = "direct-quic")]
    DirectQuic,
}

impl DeliveryPath {
    /// The direct path over `transport`.
    pub fn direct(transport: crate::transport::Transport) -> Self {
        match transport {
            crate::transport::Transport::Tcp => DeliveryPath::Direct,
            crate::transport::Transport::Quic => DeliveryPath::DirectQuic,
        }
    }

    /// True for both direct paths.
    pub fn is_direct(self) -> bool {
        matches!(self, DeliveryPath::Direct | DeliveryPath::DirectQuic)
    }
}

/// One history record (also the JSON shape of `sremp messages --json`).
///
/// The ids are typed here; only their serialized form is hex (`id`: 16 hex characters,
/// `peer`: 64), which is both the JSON shape and the stored record, so neither changed when
/// these fields stopped being strings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Position in this node's history.
    pub seq: u64,
    /// The message id, the same on both sides (serialized as 16 hex characters, see
    /// [`format_id`]).
    #[serde(with = "hex_id")]
    pub id: u64,
    /// Sent or received.
    pub direction: Direction,
    /// The other party's contact id (serialized as 64 hex characters).
    #[serde(with = "hex_key")]
    pub peer: IdentityKey,
    /// The other party's username, when known.
    pub peer_name: Option<String>,
    /// The text.
    pub text: String,
    /// The sender's clock at sending (ms since the epoch).
    pub sent_at: u64,
    /// When this node recorded it (ms since the epoch).
    pub recorded_at: u64,
    /// Delivery status.
    pub status: Status,
    /// The path it took (sent: the first path that accepted it; received: how it arrived).
    pub path: Option<DeliveryPath>,
    /// Group chats only (absent for one-to-one messages): the group and what this entry is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<super::groups::GroupTag>,
}

/// What [`History::record`] records: an entry without its sequence number.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEntry {
    /// Sent or received.
    pub direction: Direction,
    /// The other party.
    pub peer: IdentityKey,
    /// The other party's username, when known.
    pub peer_name: Option<String>,
    /// The message id.
    pub id: u64,
    /// The text.
    pub text: String,
    /// The sender's clock at sending.
    pub sent_at: Timestamp,
    /// When this node records it.
    pub recorded_at: Timestamp,
    /// Delivery status.
    pub status: Status,
    /// The path it took, when known.
    pub path: Option<DeliveryPath>,
}

/// Serde for a message id as [`format_id`] text.
mod hex_id {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(id: &u64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_id(*id))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let s = String::deserialize(d)?;
        super::parse_id(&s)
            .ok_or_else(|| serde::de::Error::custom("a message id is 16 hex characters"))
    }
}

/// Serde for a contact id as its 64-hex text form.
mod hex_key {
    use crate::identity::IdentityKey;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(key: &IdentityKey, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(key)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<IdentityKey, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Formats a message id for people and scripts.
pub fn format_id(id: u64) -> String {
    format!("{id:016x}")
}

/// Parses [`format_id`]'s output.
pub fn parse_id(s: &str) -> Option<u64> {
    if s.len() != 16 {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

fn index_key(direction: Direction, peer: &IdentityKey, id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(42);
    k.push(b'i');
    k.push(match direction {
        Direction::Out => b'o',
        Direction::In => b'i',
    });
    k.extend_from_slice(peer.as_bytes());
    k.extend_from_slice(&id.to_be_bytes());
    k
}

fn id_key(direction: Direction, id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(10);
    k.push(b'x');
    k.push(match direction {
        Direction::Out => b'o',
        Direction::In => b'i',
    });
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// `p || seq`: the full 16-byte payload id of an outgoing message, so it can be sent again
/// with the same id after the recipient lost it (see `node::recovery`).
fn payload_key(seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(b'p');
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn seq_key(seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(b's');
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The history over the store.
#[derive(Clone)]
pub struct History {
    store: Arc<dyn Store>,
    next: Arc<AtomicU64>,
}

impl std::fmt::Debug for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("History").field("next", &self.next).finish()
    }
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt {
        tree: Tree::History,
        detail: e.to_string(),
    }
}

impl History {
    /// Opens the history, finding the next sequence number.
    pub fn open(store: Arc<dyn Store>) -> Result<Self, StoreError> {
        let last = match store.last(Tree::History, b"s")? {
            None => 0,
            Some((k, _)) => k
                .get(1..9)
                .and_then(|b| <[u8; 8]>::try_from(b).ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| corrupt("bad sequence key"))?,
        };
        Ok(History {
            store,
            next: Arc::new(AtomicU64::new(last + 1)),
        })
    }

    /// Allocates a sequence number and returns the entry plus the batch that records it.
    pub fn record(&self, new: NewEntry) -> (HistoryEntry, Batch) {
        let seq = self.next.fetch_add(1, Ordering::SeqCst);
        let NewEntry {
            direction,
            peer,
            peer_name,
            id,
            text,
            sent_at,
            recorded_at,
            status,
            path,
        } = new;
        let entry = HistoryEntry {
            seq,
            id,
            direction,
            peer,
            peer_name,
            text,
            sent_at: sent_at.0,
            recorded_at: recorded_at.0,
            status,
            path,
            group: None,
        };
        let mut b = Batch::new();
        b.put(Tree::History, seq_key(seq), msgpack::encode(&entry));
        b.put(
            Tree::History,
            index_key(direction, &peer, id),
            seq.to_be_bytes().to_vec(),
        );
        b.put(
            Tree::History,
            id_key(direction, id),
            seq.to_be_bytes().to_vec(),
        );
        (entry, b)
    }

    /// The entry for a message, if recorded.
    pub fn find(
        &self,
        direction: Direction,
        peer: &IdentityKey,
        id: u64,
    ) -> Result<Option<HistoryEntry>, StoreError> {
        let Some(seq) = self
            .store
            .get(Tree::History, &index_key(direction, peer, id))?
        else {
            return Ok(None);
        };
        let seq = <[u8; 8]>::try_from(seq.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| corrupt("bad index value"))?;
        self.get(seq)
    }

    /// The most recent entry with this message id in `direction`, whoever the peer.
    pub fn find_by_id(
        &self,
        direction: Direction,
        id: u64,
    ) -> Result<Option<HistoryEntry>, StoreError> {
        let Some(seq) = self.store.get(Tree::History, &id_key(direction, id))? else {
            return Ok(None);
        };
        let seq = <[u8; 8]>::try_from(seq.as_slice())
            .map(u64::from_be_bytes)
            .map_err(|_| corrupt("bad index value"))?;
        self.get(seq)
    }

    /// The entry at `seq`.
    pub fn get(&self, seq: u64) -> Result<Option<HistoryEntry>, StoreError> {
        match self.store.get(Tree::History, &seq_key(seq))? {
            None => Ok(None),
            Some(v) => Ok(Some(msgpack::decode(&v).map_err(corrupt)?)),
        }
    }

    /// A batch that rewrites `entry` (status or path changed).
    pub fn update(&self, entry: &HistoryEntry) -> Batch {
        let mut b = Batch::new();
        b.put(Tree::History, seq_key(entry.seq), msgpack::encode(entry));
        b
    }

    /// A batch that keeps the full payload id of outgoing message `seq`.
    pub fn keep_payload_id(&self, seq: u64, id: &[u8; 16]) -> Batch {
        let mut b = Batch::new();
        b.put(Tree::History, payload_key(seq), id.to_vec());
        b
    }

    /// The full payload id kept for outgoing message `seq` (none for messages sent before
    /// ids were kept, and for received ones).
    pub fn payload_id(&self, seq: u64) -> Result<Option<[u8; 16]>, StoreError> {
        match self.store.get(Tree::History, &payload_key(seq))? {
            None => Ok(None),
            Some(v) => Ok(Some(
                <[u8; 16]>::try_from(v.as_slice()).map_err(|_| corrupt("bad payload id"))?,
            )),
        }
    }

    /// The message id of the newest message received from `peer` (notice lines are not
    /// messages), reading at most `max` index records.
    pub fn newest_received_from(
        &self,
        peer: &IdentityKey,
        max: usize,
    ) -> Result<Option<u64>, StoreError> {
        let mut prefix = vec![b'i', b'i'];
        prefix.extend_from_slice(peer.as_bytes());
        let mut found: Vec<(u64, u64)> = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        const PAGE: usize = 1000;
        while found.len() < max {
            let page = self
                .store
                .scan(Tree::History, &prefix, after.as_deref(), PAGE)?;
            for (k, v) in &page {
                let id = k
                    .get(k.len().saturating_sub(8)..)
                    .and_then(|b| <[u8; 8]>::try_from(b).ok())
                    .map(u64::from_be_bytes)
                    .ok_or_else(|| corrupt("bad index key"))?;
                let seq = <[u8; 8]>::try_from(v.as_slice())
                    .map(u64::from_be_bytes)
                    .map_err(|_| corrupt("bad index value"))?;
                found.push((seq, id));
            }
            match page.last() {
                Some((k, _)) if page.len() == PAGE => after = Some(k.clone()),
                _ => break,
            }
        }
        found.sort_unstable_by(|a, b| b.cmp(a));
        for (seq, id) in found {
            if self
                .get(seq)?
                .is_some_and(|e| e.direction == Direction::In && e.status == Status::Received)
            {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    /// A batch that removes `entry` and its indexes (a closed group's messages).
    pub fn delete(&self, entry: &HistoryEntry) -> Batch {
        let mut b = Batch::new();
        b.delete(Tree::History, seq_key(entry.seq));
        b.delete(Tree::History, payload_key(entry.seq));
        let id = entry.id;
        b.delete(Tree::History, index_key(entry.direction, &entry.peer, id));
        // The id index names the latest entry with this id; remove it only if it is this one.
        if let Ok(Some(v)) = self.store.get(Tree::History, &id_key(entry.direction, id)) {
            if v.as_slice() == entry.seq.to_be_bytes() {
                b.delete(Tree::History, id_key(entry.direction, id));
            }
        }
        b
    }

    /// Up to `limit` entries with `seq > after`, oldest first.
    pub fn list(&self, after: Option<u64>, limit: usize) -> Result<Vec<HistoryEntry>, StoreError> {
        let after_key = after.map(seq_key);
        self.store
            .scan(Tree::History, b"s", after_key.as_deref(), limit)?
            .iter()
            .map(|(_, v)| msgpack::decode(v).map_err(corrupt))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SledStore;

    #[test]
    fn record_find_update_list_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let h = History::open(store.clone()).unwrap();
        let peer = IdentityKey([9; 32]);
        let new = |direction, id: u64, text: String, status| NewEntry {
            direction,
            peer,
            peer_name: None,
            id,
            text,
            sent_at: Timestamp(1),
            recorded_at: Timestamp(2),
            status,
            path: None,
        };
        for i in 0..5u64 {
            let (_, b) = h.record(new(Direction::Out, i, format!("m{i}"), Status::Queued));
            store.commit(b).unwrap();
        }
        let mut e = h.find(Direction::Out, &peer, 3).unwrap().unwrap();
        assert_eq!(e.text, "m3");
        e.status = Status::Delivered;
        store.commit(h.update(&e)).unwrap();
        assert_eq!(
            h.find(Direction::Out, &peer, 3).unwrap().unwrap().status,
            Status::Delivered
        );
        assert!(h.find(Direction::In, &peer, 3).unwrap().is_none());
        let after2 = h.list(Some(2), 10).unwrap();
        assert_eq!(
            after2.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![3, 4, 5]
        );
        drop(h);
        let h2 = History::open(store).unwrap();
        let (e6, _) = h2.record(new(Direction::In, 9, "x".into(), Status::Received));
        assert_eq!(e6.seq, 6);
        assert_eq!(parse_id(&format_id(0xabc)), Some(0xabc));
    }

    /// The record as it was stored (and shown in JSON) when the ids were strings.
    #[derive(Serialize)]
    struct StringIds {
        seq: u64,
        id: String,
        direction: Direction,
        peer: String,
        peer_name: Option<String>,
        text: String,
        sent_at: u64,
        recorded_at: u64,
        status: Status,
        path: Option<DeliveryPath>,
    }

    #[test]
    fn typed_ids_keep_the_stored_and_json_shapes() {
        let peer = IdentityKey([0xab; 32]);
        let entry = HistoryEntry {
            seq: 7,
            id: 0x0123_4567_89ab_cdef,
            direction: Direction::In,
            peer,
            peer_name: Some("bob".into()),
            text: "hi".into(),
            sent_at: 1,
            recorded_at: 2,
            status: Status::Received,
            path: Some(DeliveryPath::Relay),
            group: None,
        };
        let old = StringIds {
            seq: 7,
            id: "0123456789abcdef".into(),
            direction: Direction::In,
            peer: "ab".repeat(32),
            peer_name: Some("bob".into()),
            text: "hi".into(),
            sent_at: 1,
            recorded_at: 2,
            status: Status::Received,
            path: Some(DeliveryPath::Relay),
        };
        // Stored records written before the change decode, and new ones are byte-identical.
        assert_eq!(msgpack::encode(&entry), msgpack::encode(&old));
        assert_eq!(
            msgpack::decode::<HistoryEntry>(&msgpack::encode(&old)).unwrap(),
            entry
        );
        // `--json` output is unchanged.
        let json = serde_json::to_value(&entry).unwrap();
        assert_eq!(json, serde_json::to_value(&old).unwrap());
        assert_eq!(json["id"], "0123456789abcdef");
        assert_eq!(json["peer"], "ab".repeat(32));
        assert_eq!(serde_json::from_value::<HistoryEntry>(json).unwrap(), entry);
    }
}
