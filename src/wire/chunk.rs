//! Chunking: envelopes larger than one frame travel as `Chunk` envelopes and are reassembled.
//!
//! Sender: [`split`] cuts the encoded envelope into pieces of at most [`CHUNK_PAYLOAD_MAX`]
//! bytes, numbered `0..total_chunks`, all with one `message_id` that the sender never reuses on
//! that connection.
//!
//! Receiver: [`Reassembler`] accepts chunks in any order, ignores exact duplicates, requires
//! every piece but the last to be exactly [`CHUNK_PAYLOAD_MAX`] bytes (so a header alone bounds
//! the message size and `total_chunks` can never reserve more slots than the size limit
//! allows), and bounds memory three ways: the total size of one message ([`Limits::max_message`]), the number of
//! partial messages per peer ([`Limits::max_partial`], the oldest is evicted), and a deadline
//! after which a stalled partial message is dropped ([`Limits::stall_timeout`], driven by the
//! caller's `now` through [`Reassembler::expire`] / [`Reassembler::poll_timeout`]).

use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};

/// Largest payload of one chunk: a chunk envelope with this payload still fits one Noise
/// transport message (at most 40 bytes of envelope and chunk header).
pub const CHUNK_PAYLOAD_MAX: usize = super::MAX_NOISE_PLAINTEXT - 64;

/// `CHUNK_HEADER`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkHeader {
    /// Identifies the chunked message on this connection.
    pub message_id: u64,
    /// 0-based position.
    pub chunk_index: u16,
    /// How many chunks the message has (at least 2).
    pub total_chunks: u16,
    /// Length of this chunk's payload.
    pub chunk_size: u16,
}

/// `CHUNKED_MESSAGE`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// Header.
    pub header: ChunkHeader,
    /// Bytes `[index * CHUNK_PAYLOAD_MAX ..]` of the encoded envelope.
    #[serde(with = "serde_bytes")]
    pub payload: Vec<u8>,
}

/// Reassembly limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest reassembled envelope in bytes.
    pub max_message: usize,
    /// Partial messages kept at once per connection.
    pub max_partial: usize,
    /// A partial message with no progress for this long is dropped.
    pub stall_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message: 4 * 1024 * 1024,
            max_partial: 4,
            stall_timeout: Duration::from_secs(30),
        }
    }
}

/// A chunk that breaks the rules. The connection that sent it should be closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    /// `chunk_index >= total_chunks`.
    #[error("chunk index {index} out of range for {total} chunks")]
    IndexOutOfRange {
        /// Index.
        index: u16,
        /// Total.
        total: u16,
    },
    /// A message of fewer than two chunks.
    #[error("a chunked message needs at least two chunks, got {0}")]
    TooFewChunks(u16),
    /// `chunk_size` disagrees with the payload length, or the payload is too large.
    #[error("chunk size {declared} does not match payload of {actual} bytes (max {max})")]
    BadSize {
        /// Declared.
        declared: u16,
        /// Actual.
        actual: usize,
        /// Limit.
        max: usize,
    },
    /// Two chunks of one message disagree about `total_chunks`.
    #[error("chunk says {got} chunks, earlier chunks said {expected}")]
    InconsistentTotal {
        /// First seen.
        expected: u16,
        /// This chunk.
        got: u16,
    },
    /// The message would exceed [`Limits::max_message`].
    #[error("chunked message of at least {len} bytes exceeds {max}")]
    MessageTooLarge {
        /// Lower bound of the size.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The same index arrived twice with different bytes.
    #[error("chunk {0} arrived twice with different contents")]
    ConflictingDuplicate(u16),
}

/// Cuts `encoded` (an encoded envelope) into chunk envelopes' contents.
pub fn split(message_id: u64, encoded: &[u8]) -> impl Iterator<Item = Chunk> + '_ {
    let total = encoded.len().div_ceil(CHUNK_PAYLOAD_MAX);
    let total = u16::try_from(total).unwrap_or(u16::MAX);
    encoded
        .chunks(CHUNK_PAYLOAD_MAX)
        .enumerate()
        .map(move |(i, piece)| Chunk {
            header: ChunkHeader {
                message_id,
                chunk_index: u16::try_from(i).unwrap_or(u16::MAX),
                total_chunks: total,
                chunk_size: u16::try_from(piece.len()).unwrap_or(u16::MAX),
            },
            payload: piece.to_vec(),
        })
}

struct Partial {
    message_id: u64,
    total: u16,
    pieces: Vec<Option<Vec<u8>>>,
    received: u16,
    bytes: usize,
    last_progress: Instant,
}

/// Bounded reassembly for one connection. No I/O; time comes from the caller.
pub struct Reassembler {
    limits: Limits,
    partials: Vec<Partial>,
    evicted: u64,
}

impl std::fmt::Debug for Reassembler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reassembler")
            .field("partials", &self.partials.len())
            .field("buffered", &self.buffered())
            .finish()
    }
}

impl Reassembler {
    /// An empty reassembler.
    pub fn new(limits: Limits) -> Self {
        Reassembler {
            limits,
            partials: Vec::new(),
            evicted: 0,
        }
    }

    /// Bytes currently buffered.
    pub fn buffered(&self) -> usize {
        self.partials.iter().map(|p| p.bytes).sum()
    }

    /// Partial messages currently held.
    pub fn partial_count(&self) -> usize {
        self.partials.len()
    }

    /// Partial messages dropped so far (evicted or stalled).
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Adds a chunk. Returns the complete encoded envelope when this chunk finished one.
    pub fn push(&mut self, chunk: Chunk, now: Instant) -> Result<Option<Vec<u8>>, ChunkError> {
        let h = chunk.header;
        if h.total_chunks < 2 {
            return Err(ChunkError::TooFewChunks(h.total_chunks));
        }
        if h.chunk_index >= h.total_chunks {
            return Err(ChunkError::IndexOutOfRange {
                index: h.chunk_index,
                total: h.total_chunks,
            });
        }
        // Every piece but the last is exactly CHUNK_PAYLOAD_MAX bytes; the last carries 1 to
        // CHUNK_PAYLOAD_MAX. So a chunk's header alone fixes the message's size range, and a
        // message that cannot fit is refused before anything is allocated for it.
        let last = h.chunk_index + 1 == h.total_chunks;
        let len = chunk.payload.len();
        let size_ok = usize::from(h.chunk_size) == len
            && if last {
                (1..=CHUNK_PAYLOAD_MAX).contains(&len)
            } else {
                len == CHUNK_PAYLOAD_MAX
            };
        if !size_ok {
            return Err(ChunkError::BadSize {
                declared: h.chunk_size,
                actual: len,
                max: CHUNK_PAYLOAD_MAX,
            });
        }
        let min_len = usize::from(h.total_chunks - 1) * CHUNK_PAYLOAD_MAX + 1;
        if min_len > self.limits.max_message {
            return Err(ChunkError::MessageTooLarge {
                len: min_len,
                max: self.limits.max_message,
            });
        }
        let pos = match self
            .partials
            .iter()
            .position(|p| p.message_id == h.message_id)
        {
            Some(pos) => pos,
            None => {
                if self.partials.len() >= self.limits.max_partial.max(1) {
                    // Evict the partial message that made progress least recently.
                    if let Some((oldest, _)) = self
                        .partials
                        .iter()
                        .enumerate()
                        .min_by_key(|(_, p)| p.last_progress)
                    {
                        self.partials.swap_remove(oldest);
                        self.evicted += 1;
                    }
                }
                self.partials.push(Partial {
                    message_id: h.message_id,
                    total: h.total_chunks,
                    pieces: vec![None; usize::from(h.total_chunks)],
                    received: 0,
                    bytes: 0,
                    last_progress: now,
                });
                self.partials.len() - 1
            }
        };
        let Some(p) = self.partials.get_mut(pos) else {
            return Ok(None);
        };
        if p.total != h.total_chunks {
            let expected = p.total;
            self.partials.swap_remove(pos);
            return Err(ChunkError::InconsistentTotal {
                expected,
                got: h.total_chunks,
            });
        }
        let Some(slot) = p.pieces.get_mut(usize::from(h.chunk_index)) else {
            return Ok(None);
        };
        if let Some(existing) = slot {
            if *existing == chunk.payload {
                return Ok(None);
            }
            let idx = h.chunk_index;
            self.partials.swap_remove(pos);
            return Err(ChunkError::ConflictingDuplicate(idx));
        }
        let new_bytes = p.bytes + chunk.payload.len();
        if new_bytes > self.limits.max_message {
            self.partials.swap_remove(pos);
            return Err(ChunkError::MessageTooLarge {
                len: new_bytes,
                max: self.limits.max_message,
            });
        }
        p.bytes = new_bytes;
        *slot = Some(chunk.payload);
        p.received += 1;
        p.last_progress = now;
        if p.received < p.total {
            return Ok(None);
        }
        let done = self.partials.swap_remove(pos);
        let mut out = Vec::with_capacity(done.bytes);
        for piece in done.pieces.into_iter().flatten() {
            out.extend_from_slice(&piece);
        }
        Ok(Some(out))
    }

    /// Drops partial messages that made no progress within the stall timeout.
    pub fn expire(&mut self, now: Instant) -> usize {
        let timeout = self.limits.stall_timeout;
        let before = self.partials.len();
        self.partials
            .retain(|p| now.saturating_duration_since(p.last_progress) < timeout);
        let dropped = before - self.partials.len();
        self.evicted += dropped as u64;
        dropped
    }

    /// When [`Reassembler::expire`] next has work, if anything is buffered.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.partials
            .iter()
            .map(|p| p.last_progress + self.limits.stall_timeout)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits() -> Limits {
        Limits {
            max_message: 1 << 20,
            max_partial: 2,
            stall_timeout: Duration::from_secs(5),
        }
    }

    fn chunk(id: u64, index: u16, total: u16, payload: &[u8]) -> Chunk {
        Chunk {
            header: ChunkHeader {
                message_id: id,
                chunk_index: index,
                total_chunks: total,
                chunk_size: payload.len() as u16,
            },
            payload: payload.to_vec(),
        }
    }

    #[test]
    fn reassembles_out_of_order_with_duplicates() {
        let data: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let mut chunks: Vec<Chunk> = split(7, &data).collect();
        assert_eq!(chunks.len(), data.len().div_ceil(CHUNK_PAYLOAD_MAX));
        chunks.reverse();
        chunks.insert(1, chunks[0].clone());
        let mut r = Reassembler::new(limits());
        let now = Instant::now();
        let mut out = None;
        for c in chunks {
            if let Some(done) = r.push(c, now).unwrap() {
                out = Some(done);
            }
        }
        assert_eq!(out.unwrap(), data);
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn chunk_bombs_are_refused() {
        let mut r = Reassembler::new(limits());
        let now = Instant::now();
        assert!(matches!(
            r.push(chunk(1, 5, 5, b"x"), now),
            Err(ChunkError::IndexOutOfRange { .. })
        ));
        assert!(matches!(
            r.push(chunk(1, 0, 1, b"x"), now),
            Err(ChunkError::TooFewChunks(1))
        ));
        let mut bad = chunk(1, 0, 2, b"xy");
        bad.header.chunk_size = 1;
        assert!(matches!(r.push(bad, now), Err(ChunkError::BadSize { .. })));
        let full = vec![7u8; CHUNK_PAYLOAD_MAX];
        let mut other = full.clone();
        other[0] = 8;
        // A short piece that is not the last one.
        assert!(matches!(
            r.push(chunk(2, 0, 3, b"a"), now),
            Err(ChunkError::BadSize { .. })
        ));
        // An empty last piece.
        assert!(matches!(
            r.push(chunk(2, 2, 3, b""), now),
            Err(ChunkError::BadSize { .. })
        ));
        assert_eq!(r.push(chunk(2, 0, 3, &full), now).unwrap(), None);
        assert!(matches!(
            r.push(chunk(2, 1, 4, &full), now),
            Err(ChunkError::InconsistentTotal {
                expected: 3,
                got: 4
            })
        ));
        assert_eq!(r.partial_count(), 0);
        assert_eq!(r.push(chunk(3, 0, 3, &full), now).unwrap(), None);
        assert!(matches!(
            r.push(chunk(3, 0, 3, &other), now),
            Err(ChunkError::ConflictingDuplicate(0))
        ));
        // A header announcing more than the limit is refused before any allocation: 65535
        // chunks from a 30-byte frame cannot reserve 65535 slots.
        assert!(matches!(
            r.push(chunk(4, 65_534, 65_535, b"a"), now),
            Err(ChunkError::MessageTooLarge { .. })
        ));
        let small = Limits {
            max_message: CHUNK_PAYLOAD_MAX + 3,
            ..limits()
        };
        let mut r = Reassembler::new(small);
        assert!(matches!(
            r.push(chunk(5, 0, 3, &full), now),
            Err(ChunkError::MessageTooLarge { .. })
        ));
        assert_eq!(r.push(chunk(6, 1, 2, &[1; 6]), now).unwrap(), None);
        assert!(matches!(
            r.push(chunk(6, 0, 2, &full), now),
            Err(ChunkError::MessageTooLarge { .. })
        ));
        assert_eq!(r.buffered(), 0);
    }

    #[test]
    fn partials_are_bounded_and_stalled_ones_expire() {
        let mut r = Reassembler::new(limits());
        let t0 = Instant::now();
        for id in 0..10u64 {
            r.push(chunk(id, 1, 2, &[0; 1000]), t0 + Duration::from_millis(id))
                .unwrap();
            assert!(r.partial_count() <= 2);
        }
        assert_eq!(r.evicted(), 8);
        assert!(r.buffered() <= 2000);
        let deadline = r.poll_timeout().unwrap();
        assert_eq!(r.expire(deadline - Duration::from_millis(100)), 0);
        assert_eq!(r.expire(deadline + Duration::from_millis(20)), 2);
        assert_eq!(r.partial_count(), 0);
        assert!(r.poll_timeout().is_none());
    }

    proptest! {
        #[test]
        fn random_chunks_keep_memory_bounded(ops in proptest::collection::vec((0u64..6, 0u16..8, 0u16..8, proptest::collection::vec(any::<u8>(), 0..64)), 0..200)) {
            let lim = Limits { max_message: 2 * CHUNK_PAYLOAD_MAX, max_partial: 3, stall_timeout: Duration::from_secs(1) };
            let mut r = Reassembler::new(lim);
            let now = Instant::now();
            for (id, idx, total, payload) in ops {
                // Full-size pieces for the non-last indices so that some messages complete.
                let body = if idx + 1 < total { vec![payload.first().copied().unwrap_or(0); CHUNK_PAYLOAD_MAX] } else { payload };
                if let Ok(Some(done)) = r.push(chunk(id, idx, total, &body), now) {
                    prop_assert!(done.len() <= 2 * CHUNK_PAYLOAD_MAX);
                }
                prop_assert!(r.partial_count() <= 3);
                prop_assert!(r.buffered() <= 3 * 2 * CHUNK_PAYLOAD_MAX);
            }
        }
    }
}
