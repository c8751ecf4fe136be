//! The per-transfer state machines and the chunk bitmap (no IO, no clock: times are passed in).
//!
//! Incoming: `offered` → (accept) `receiving` → (every chunk verified and stored) `verifying`
//! → `done` (whole hash matched, file moved into place) or `failed`; `offered`/`receiving` →
//! `rejected` (the user said no) or `cancelled` (the sender gave up).
//! Outgoing: `offered` → (accept or need) `sending` → (the recipient's completion) `done` or
//! `failed`; → `rejected` when the recipient refused; → `cancelled` by the user.
//! `done`, `failed`, `rejected` and `cancelled` are final: nothing moves a transfer out of them.

use super::chunk::Shape;
use super::offer::Offer;
use super::{FileError, TransferId};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where a transfer stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    /// Offered, no answer yet.
    Offered,
    /// Incoming, accepted: chunks are being received.
    Receiving,
    /// Outgoing, accepted: chunks are being sent.
    Sending,
    /// Incoming: every chunk is stored; checking the whole hash.
    Verifying,
    /// Finished: the recipient has the file and its hash matched.
    Done,
    /// The recipient refused it.
    Rejected,
    /// The sender gave up.
    Cancelled,
    /// Failed for good (wrong hash, bad offer, source file changed): see `error`.
    Failed,
}

impl State {
    /// Nothing moves a transfer out of a final state.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            State::Done | State::Rejected | State::Cancelled | State::Failed
        )
    }

    /// The name used in JSON and tables.
    pub fn name(self) -> &'static str {
        match self {
            State::Offered => "offered",
            State::Receiving => "receiving",
            State::Sending => "sending",
            State::Verifying => "verifying",
            State::Done => "done",
            State::Rejected => "rejected",
            State::Cancelled => "cancelled",
            State::Failed => "failed",
        }
    }
}

/// Which way a transfer goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// We send.
    Out,
    /// We receive.
    In,
}

/// A set of chunk indexes `0..total`, one bit each (bit `i % 8` of byte `i / 8`, least
/// significant first), as persisted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bitmap {
    bits: Vec<u8>,
    total: u64,
    count: u64,
}

impl Bitmap {
    /// An empty set over `0..total`.
    pub fn new(total: u64) -> Bitmap {
        Bitmap {
            bits: vec![0; usize::try_from(total.div_ceil(8)).unwrap_or(0)],
            total,
            count: 0,
        }
    }

    /// Reads persisted bytes; `None` when the length does not match or bits past `total`
    /// are set.
    pub fn from_bytes(bytes: Vec<u8>, total: u64) -> Option<Bitmap> {
        if bytes.len() as u64 != total.div_ceil(8) {
            return None;
        }
        if total % 8 != 0 {
            let last = *bytes.last()?;
            if last >> (total % 8) != 0 {
                return None;
            }
        }
        let count = bytes.iter().map(|b| u64::from(b.count_ones())).sum();
        Some(Bitmap {
            bits: bytes,
            total,
            count,
        })
    }

    /// The persisted form.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bits
    }

    /// True when `i` is in the set.
    pub fn get(&self, i: u64) -> bool {
        i < self.total
            && self
                .bits
                .get((i / 8) as usize)
                .is_some_and(|b| b & (1 << (i % 8)) != 0)
    }

    /// Adds `i`; true when it was not there before (false also when `i >= total`).
    pub fn set(&mut self, i: u64) -> bool {
        if i >= self.total || self.get(i) {
            return false;
        }
        if let Some(b) = self.bits.get_mut((i / 8) as usize) {
            *b |= 1 << (i % 8);
            self.count += 1;
            return true;
        }
        false
    }

    /// How many are set.
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The size of the universe.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// True when every index is set.
    pub fn is_full(&self) -> bool {
        self.count == self.total
    }

    /// The unset indexes as ascending half-open ranges, at most `max` of them.
    pub fn missing(&self, max: usize) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut i = 0u64;
        while i < self.total && out.len() < max {
            // Skip full bytes quickly.
            if i % 8 == 0 && self.bits.get((i / 8) as usize) == Some(&0xff) {
                i += 8;
                continue;
            }
            if self.get(i) {
                i += 1;
                continue;
            }
            let start = i;
            while i < self.total && !self.get(i) {
                i += 1;
            }
            out.push((start, i));
        }
        out
    }
}

/// One transfer, as persisted (`<data dir>/files/<id>.json`) and shown.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    /// Transfer id (32 hex).
    pub id: TransferId,
    /// `in` or `out`.
    pub direction: Direction,
    /// The other side's identity key (64 hex).
    pub peer: String,
    /// Its username when known.
    pub peer_name: Option<String>,
    /// The offered file name.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Number of chunks.
    pub total: u64,
    /// SHA-256 of the content (64 hex).
    pub sha256: String,
    /// The chunk-key secret (64 hex); never shown (see [`super::View`]).
    pub secret: String,
    /// Where it stands.
    pub state: State,
    /// Incoming: the directory it is saved to (set on accept).
    pub dir: Option<PathBuf>,
    /// Outgoing: the source file; incoming: the final file once `done`.
    pub path: Option<PathBuf>,
    /// Why it failed, was rejected or is stalled.
    pub error: Option<String>,
    /// Created, ms since the epoch.
    pub created_at: u64,
    /// Last state change, ms since the epoch.
    pub updated_at: u64,
    /// Incoming: chunks that arrived again after they were stored (re-sends).
    #[serde(default)]
    pub duplicates: u64,
    /// Incoming: chunks refused because they failed authentication (never written).
    #[serde(default)]
    pub refused: u64,
    /// Outgoing: the group (32 hex) it was offered to as one member's copy
    /// (`send-file --group`); null otherwise.
    #[serde(default)]
    pub group: Option<String>,
}

impl Record {
    /// A new record for an offer.
    pub fn from_offer(
        offer: &Offer,
        direction: Direction,
        peer: String,
        peer_name: Option<String>,
        now_ms: u64,
    ) -> Record {
        Record {
            id: offer.id,
            direction,
            peer,
            peer_name,
            name: offer.name.clone(),
            size: offer.size,
            chunk_size: offer.chunk_size,
            total: offer.total,
            sha256: hex::encode(offer.sha256),
            secret: hex::encode(&offer.secret[..]),
            state: State::Offered,
            dir: None,
            path: None,
            error: None,
            created_at: now_ms,
            updated_at: now_ms,
            duplicates: 0,
            refused: 0,
            group: None,
        }
    }

    /// The declared shape.
    pub fn shape(&self) -> Shape {
        Shape {
            size: self.size,
            chunk_size: self.chunk_size,
            total: self.total,
        }
    }

    /// The secret bytes; `None` if the record is damaged.
    pub fn secret_bytes(&self) -> Option<zeroize::Zeroizing<[u8; 32]>> {
        let mut out = zeroize::Zeroizing::new([0u8; 32]);
        hex::decode_to_slice(&self.secret, &mut out[..]).ok()?;
        Some(out)
    }

    /// The content hash; `None` if the record is damaged.
    pub fn sha256_bytes(&self) -> Option<[u8; 32]> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(&self.sha256, &mut out).ok()?;
        Some(out)
    }

    fn wrong(&self, wanted: &'static str) -> FileError {
        FileError::WrongState {
            id: self.id.to_string(),
            state: self.state.name(),
            wanted,
        }
    }

    fn to(&mut self, state: State, now_ms: u64) {
        self.state = state;
        self.updated_at = now_ms;
    }

    /// Incoming, `offered` → `receiving` into `dir`.
    pub fn accept(&mut self, dir: PathBuf, now_ms: u64) -> Result<(), FileError> {
        if self.direction != Direction::In || self.state != State::Offered {
            return Err(self.wrong("an offered incoming transfer"));
        }
        self.dir = Some(dir);
        self.error = None;
        self.to(State::Receiving, now_ms);
        Ok(())
    }

    /// Incoming, `offered`/`receiving` → `rejected`.
    pub fn reject(&mut self, reason: &str, now_ms: u64) -> Result<(), FileError> {
        if self.direction != Direction::In
            || !matches!(self.state, State::Offered | State::Receiving)
        {
            return Err(self.wrong("an offered or receiving incoming transfer"));
        }
        self.error = (!reason.is_empty()).then(|| reason.to_string());
        self.to(State::Rejected, now_ms);
        Ok(())
    }

    /// Incoming, `receiving` → `verifying` (every chunk stored).
    pub fn verifying(&mut self, now_ms: u64) -> Result<(), FileError> {
        if self.state != State::Receiving {
            return Err(self.wrong("a receiving transfer"));
        }
        self.to(State::Verifying, now_ms);
        Ok(())
    }

    /// Incoming, `verifying` → `done` (saved as `path`) or `failed`.
    pub fn verified(
        &mut self,
        result: Result<PathBuf, String>,
        now_ms: u64,
    ) -> Result<(), FileError> {
        if self.state != State::Verifying {
            return Err(self.wrong("a verifying transfer"));
        }
        match result {
            Ok(p) => {
                self.path = Some(p);
                self.error = None;
                self.to(State::Done, now_ms);
            }
            Err(e) => {
                self.error = Some(e);
                self.to(State::Failed, now_ms);
            }
        }
        Ok(())
    }

    /// Outgoing: the recipient accepted or asked for chunks: `offered` → `sending`. False
    /// when the transfer is final (the message is ignored).
    pub fn peer_wants(&mut self, now_ms: u64) -> bool {
        match self.state {
            State::Offered => {
                self.to(State::Sending, now_ms);
                true
            }
            State::Sending => true,
            _ => false,
        }
    }

    /// Any non-final transfer → a final state with a reason (the peer's reject, completion or
    /// cancel, or a local failure). False (nothing changed) when it was already final.
    pub fn finish(&mut self, state: State, reason: Option<String>, now_ms: u64) -> bool {
        if self.state.is_final() || !state.is_final() {
            return false;
        }
        self.error = reason.filter(|r| !r.is_empty());
        self.to(state, now_ms);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_ranges_and_persistence() {
        let mut b = Bitmap::new(20);
        assert_eq!(b.missing(10), vec![(0, 20)]);
        for i in [0, 1, 2, 5, 19] {
            assert!(b.set(i));
        }
        assert!(!b.set(5));
        assert!(!b.set(20));
        assert_eq!(b.count(), 5);
        assert_eq!(b.missing(10), vec![(3, 5), (6, 19)]);
        assert_eq!(b.missing(1), vec![(3, 5)]);
        let back = Bitmap::from_bytes(b.as_bytes().to_vec(), 20).unwrap();
        assert_eq!(back, b);
        assert!(Bitmap::from_bytes(vec![0; 2], 20).is_none());
        assert!(Bitmap::from_bytes(vec![0, 0, 0xf0], 20).is_none());
        for i in 0..20 {
            b.set(i);
        }
        assert!(b.is_full());
        assert!(b.missing(10).is_empty());
    }

    #[test]
    fn incoming_transitions() {
        let o = super::super::offer::tests_support::offer();
        let mut r = Record::from_offer(&o, Direction::In, "p".into(), None, 1);
        assert!(r.verifying(2).is_err());
        r.accept("/tmp".into(), 2).unwrap();
        assert!(r.accept("/tmp".into(), 3).is_err());
        r.verifying(4).unwrap();
        r.verified(Err("hash mismatch".into()), 5).unwrap();
        assert_eq!(r.state, State::Failed);
        assert!(!r.finish(State::Done, None, 6));
        assert!(r.reject("x", 7).is_err());
    }
}
