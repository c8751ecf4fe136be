//! The receiving side: the current receiving chain and the bounded store of skipped keys.
//!
//! When a message arrives ahead of its predecessors, the keys of the messages it jumps over are
//! derived and kept here, keyed by (remote ratchet key, index), so the late messages still
//! decrypt. A single message may skip at most [`MAX_MESSAGE_GAP`](super::MAX_MESSAGE_GAP) keys
//! of one chain; the store keeps at most [`MAX_SKIPPED_KEYS`](super::MAX_SKIPPED_KEYS) keys and
//! forgets the oldest first. A key leaves the store when it decrypted its message.

use super::chain_key::ChainKey;
use super::message_key::MessageKey;
use std::collections::VecDeque;

/// The chain of the peer's current ratchet key.
#[derive(Clone, Debug)]
pub struct ReceiverChain {
    pub(crate) ratchet_key: [u8; 32],
    pub(crate) chain: ChainKey,
}

impl ReceiverChain {
    pub(crate) fn new(ratchet_key: [u8; 32], chain: ChainKey) -> Self {
        ReceiverChain { ratchet_key, chain }
    }

    /// The peer ratchet key this chain belongs to.
    pub fn ratchet_key(&self) -> &[u8; 32] {
        &self.ratchet_key
    }
}

/// A message key kept for a message that has not arrived yet.
#[derive(Clone, Debug)]
pub struct SkippedKey {
    pub(crate) ratchet_key: [u8; 32],
    pub(crate) key: MessageKey,
}

/// Skipped message keys, oldest first.
#[derive(Clone, Debug, Default)]
pub struct SkippedKeys {
    keys: VecDeque<SkippedKey>,
}

impl SkippedKeys {
    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// True when no key is held.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Position of the key for (`ratchet_key`, `index`).
    pub(crate) fn find(&self, ratchet_key: &[u8; 32], index: u32) -> Option<usize> {
        self.keys
            .iter()
            .position(|k| k.key.index() == index && &k.ratchet_key == ratchet_key)
    }

    pub(crate) fn get(&self, pos: usize) -> Option<&MessageKey> {
        self.keys.get(pos).map(|k| &k.key)
    }

    /// Removes (and so zeroizes) the key at `pos`.
    pub(crate) fn remove(&mut self, pos: usize) {
        self.keys.remove(pos);
    }

    /// Appends keys, then forgets the oldest beyond the limit.
    pub(crate) fn extend(&mut self, new: Vec<SkippedKey>) {
        self.keys.extend(new);
        while self.keys.len() > super::MAX_SKIPPED_KEYS {
            self.keys.pop_front();
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = &SkippedKey> {
        self.keys.iter()
    }

    pub(crate) fn push_raw(&mut self, k: SkippedKey) {
        self.keys.push_back(k);
    }
}

/// Derives the keys of `chain` up to (excluding) `until`, tagged with `ratchet_key`. The caller
/// has checked that `until - chain.index()` is within the gap limit.
pub(crate) fn skip_until(
    chain: &mut ChainKey,
    ratchet_key: &[u8; 32],
    until: u32,
) -> Option<Vec<SkippedKey>> {
    let mut out = Vec::with_capacity(until.saturating_sub(chain.index()) as usize);
    while chain.index() < until {
        let key = chain.next_message_key().ok()?;
        out.push(SkippedKey {
            ratchet_key: *ratchet_key,
            key,
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_find_remove_and_bound() {
        let mut chain = ChainKey::new([1u8; 32], 0);
        let rk = [5u8; 32];
        let skipped = skip_until(&mut chain, &rk, 3).unwrap();
        assert_eq!(skipped.len(), 3);
        assert_eq!(chain.index(), 3);
        let mut store = SkippedKeys::default();
        store.extend(skipped);
        let pos = store.find(&rk, 1).unwrap();
        assert_eq!(store.get(pos).unwrap().index(), 1);
        store.remove(pos);
        assert!(store.find(&rk, 1).is_none());
        assert!(store.find(&[6u8; 32], 0).is_none());
        assert_eq!(store.len(), 2);

        let mut big = ChainKey::new([2u8; 32], 0);
        let many = skip_until(
            &mut big,
            &[7u8; 32],
            crate::ratchet::MAX_SKIPPED_KEYS as u32,
        )
        .unwrap();
        store.extend(many);
        assert_eq!(store.len(), crate::ratchet::MAX_SKIPPED_KEYS);
        // The oldest (chain [5;32]) were forgotten first.
        assert!(store.find(&rk, 0).is_none());
        assert!(store.find(&[7u8; 32], 4999).is_some());
    }
}
