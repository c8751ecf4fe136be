//! The file messages that travel inside the ratchet (payload kind 2, `content` = their bytes).
//!
//! ```text
//! FileMessage = [0, transfer_id: bin(16), name: str (≤ 255), size: uint, chunk_size: uint,
//!                   total_chunks: uint, sha256: bin(32), secret: bin(32)]        Offer
//!             | [1, transfer_id]                                                 Accept
//!             | [2, transfer_id, reason: str (≤ 200)]                            Reject
//!             | [3, transfer_id, missing: [[start: uint, end: uint]] (≤ 512)]    Need
//!             | [4, transfer_id, ok: uint (1 = hash matched, 0 = failed), reason: str (≤ 200)] Complete
//!             | [5, transfer_id, reason: str (≤ 200)]                            Cancel
//! ```
//! Offer, Cancel: sender → recipient; Accept, Reject, Need, Complete: recipient → sender.
//! `missing` ranges are half-open chunk index ranges `[start, end)`, ascending and disjoint.
//! Decoding is strict (field counts, lengths, trailing bytes); an offer's shape is checked by
//! [`Offer::validate`] (declared chunk count, chunk size bounds, size limit, name).

use super::chunk::{chunk_count, Shape, MAX_CHUNK_SIZE, MIN_CHUNK_SIZE};
use super::name::{self, NameError, MAX_NAME};
use super::TransferId;
use crate::wire::msgpack::Reader;
use crate::wire::DecodeError;
use zeroize::Zeroizing;

/// Most ranges one `Need` carries (the rest is asked for in the next one).
pub const MAX_RANGES: usize = 512;
/// Longest reason text.
pub const MAX_REASON: usize = 200;
/// Largest file a transfer may declare (64 GiB).
pub const MAX_FILE_SIZE: u64 = 64 * 1024 * 1024 * 1024;

/// A file offer.
#[derive(Clone, PartialEq, Eq)]
pub struct Offer {
    /// Random transfer id chosen by the sender.
    pub id: TransferId,
    /// File name (one path component).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Chunk size in bytes.
    pub chunk_size: u32,
    /// Number of chunks.
    pub total: u64,
    /// SHA-256 of the whole content.
    pub sha256: [u8; 32],
    /// The secret the chunk key is derived from.
    pub secret: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for Offer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Offer")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("size", &self.size)
            .field("chunk_size", &self.chunk_size)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}

/// Why an offer is refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    /// The name could leave the target directory or is otherwise unusable.
    #[error("bad file name: {0}")]
    Name(#[from] NameError),
    /// Chunk size out of bounds.
    #[error("chunk size {0} is outside {MIN_CHUNK_SIZE}..={MAX_CHUNK_SIZE}")]
    ChunkSize(u32),
    /// The declared chunk count does not match the size.
    #[error(
        "offer declares {declared} chunks, but {size} bytes in chunks of {chunk_size} are {want}"
    )]
    ChunkCount {
        /// Declared.
        declared: u64,
        /// Size.
        size: u64,
        /// Chunk size.
        chunk_size: u32,
        /// What the size implies.
        want: u64,
    },
    /// Too large.
    #[error("file of {0} bytes is larger than the limit ({MAX_FILE_SIZE})")]
    TooLarge(u64),
}

impl Offer {
    /// Checks the name, chunk size, size limit and that `total` matches the size.
    pub fn validate(&self) -> Result<(), OfferError> {
        name::check(&self.name)?;
        if !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&self.chunk_size) {
            return Err(OfferError::ChunkSize(self.chunk_size));
        }
        if self.size > MAX_FILE_SIZE {
            return Err(OfferError::TooLarge(self.size));
        }
        let want = chunk_count(self.size, self.chunk_size);
        if want != self.total {
            return Err(OfferError::ChunkCount {
                declared: self.total,
                size: self.size,
                chunk_size: self.chunk_size,
                want,
            });
        }
        Ok(())
    }

    /// The declared shape.
    pub fn shape(&self) -> Shape {
        Shape {
            size: self.size,
            chunk_size: self.chunk_size,
            total: self.total,
        }
    }
}

/// A file message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FileMessage {
    /// 0: sender offers a file.
    Offer(Offer),
    /// 1: recipient accepts; it needs every chunk.
    Accept(TransferId),
    /// 2: recipient refuses.
    Reject(TransferId, String),
    /// 3: recipient asks for these chunk ranges.
    Need(TransferId, Vec<(u64, u64)>),
    /// 4: recipient finished: the hash matched (`true`) or not.
    Complete(TransferId, bool, String),
    /// 5: sender gives up.
    Cancel(TransferId, String),
}

fn clip(s: &str) -> &str {
    if s.len() <= MAX_REASON {
        return s;
    }
    let mut end = MAX_REASON;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

impl FileMessage {
    /// The transfer it is about.
    pub fn transfer(&self) -> TransferId {
        match self {
            FileMessage::Offer(o) => o.id,
            FileMessage::Accept(id)
            | FileMessage::Reject(id, _)
            | FileMessage::Need(id, _)
            | FileMessage::Complete(id, _, _)
            | FileMessage::Cancel(id, _) => *id,
        }
    }

    /// The MessagePack encoding (reasons longer than [`MAX_REASON`] are cut).
    pub fn encode(&self) -> Vec<u8> {
        let mut o = Vec::with_capacity(128);
        let w = &mut o;
        match self {
            FileMessage::Offer(f) => {
                let _ = rmp::encode::write_array_len(w, 8);
                let _ = rmp::encode::write_uint(w, 0);
                let _ = rmp::encode::write_bin(w, &f.id.0);
                let _ = rmp::encode::write_str(w, &f.name);
                let _ = rmp::encode::write_uint(w, f.size);
                let _ = rmp::encode::write_uint(w, u64::from(f.chunk_size));
                let _ = rmp::encode::write_uint(w, f.total);
                let _ = rmp::encode::write_bin(w, &f.sha256);
                let _ = rmp::encode::write_bin(w, &f.secret[..]);
            }
            FileMessage::Accept(id) => {
                let _ = rmp::encode::write_array_len(w, 2);
                let _ = rmp::encode::write_uint(w, 1);
                let _ = rmp::encode::write_bin(w, &id.0);
            }
            FileMessage::Reject(id, reason) | FileMessage::Cancel(id, reason) => {
                let tag = if matches!(self, FileMessage::Reject(..)) {
                    2
                } else {
                    5
                };
                let _ = rmp::encode::write_array_len(w, 3);
                let _ = rmp::encode::write_uint(w, tag);
                let _ = rmp::encode::write_bin(w, &id.0);
                let _ = rmp::encode::write_str(w, clip(reason));
            }
            FileMessage::Need(id, ranges) => {
                let ranges = &ranges[..ranges.len().min(MAX_RANGES)];
                let _ = rmp::encode::write_array_len(w, 3);
                let _ = rmp::encode::write_uint(w, 3);
                let _ = rmp::encode::write_bin(w, &id.0);
                let _ = rmp::encode::write_array_len(w, ranges.len() as u32);
                for (a, b) in ranges {
                    let _ = rmp::encode::write_array_len(w, 2);
                    let _ = rmp::encode::write_uint(w, *a);
                    let _ = rmp::encode::write_uint(w, *b);
                }
            }
            FileMessage::Complete(id, ok, reason) => {
                let _ = rmp::encode::write_array_len(w, 4);
                let _ = rmp::encode::write_uint(w, 4);
                let _ = rmp::encode::write_bin(w, &id.0);
                let _ = rmp::encode::write_uint(w, u64::from(*ok));
                let _ = rmp::encode::write_str(w, clip(reason));
            }
        }
        o
    }

    /// Decodes one message; the whole input must be consumed. Offers are not validated here
    /// (see [`Offer::validate`]).
    pub fn decode(bytes: &[u8]) -> Result<FileMessage, DecodeError> {
        let mut r = Reader::new(bytes);
        let n = r.array_len()?;
        let tag = r.uint()?;
        let want = match tag {
            0 => 8,
            1 => 2,
            2 | 3 | 5 => 3,
            4 => 4,
            _ => {
                return Err(DecodeError::Invalid {
                    what: "file message",
                    why: "unknown file message type",
                })
            }
        };
        if n != want {
            return Err(DecodeError::Invalid {
                what: "file message",
                why: "file message field count",
            });
        }
        let id = TransferId(r.bin_array::<16>()?);
        let m = match tag {
            0 => {
                let name = r.str(MAX_NAME)?.to_string();
                let size = r.uint()?;
                let chunk_size = r.u32()?;
                let total = r.uint()?;
                let sha256 = r.bin_array::<32>()?;
                let secret = Zeroizing::new(r.bin_array::<32>()?);
                FileMessage::Offer(Offer {
                    id,
                    name,
                    size,
                    chunk_size,
                    total,
                    sha256,
                    secret,
                })
            }
            1 => FileMessage::Accept(id),
            2 => FileMessage::Reject(id, r.str(MAX_REASON)?.to_string()),
            5 => FileMessage::Cancel(id, r.str(MAX_REASON)?.to_string()),
            3 => {
                let count = r.array_len()? as usize;
                if count > MAX_RANGES {
                    return Err(DecodeError::TooLarge {
                        what: "need ranges",
                        len: count,
                        max: MAX_RANGES,
                    });
                }
                let mut ranges = Vec::with_capacity(count);
                let mut last = 0u64;
                for _ in 0..count {
                    if r.array_len()? != 2 {
                        return Err(DecodeError::Invalid {
                            what: "file message",
                            why: "range",
                        });
                    }
                    let (a, b) = (r.uint()?, r.uint()?);
                    if a >= b || a < last {
                        return Err(DecodeError::Invalid {
                            what: "file message",
                            why: "ranges not ascending and disjoint",
                        });
                    }
                    last = b;
                    ranges.push((a, b));
                }
                FileMessage::Need(id, ranges)
            }
            _ => {
                let ok = match r.uint()? {
                    0 => false,
                    1 => true,
                    _ => {
                        return Err(DecodeError::Invalid {
                            what: "file message",
                            why: "complete flag",
                        })
                    }
                };
                FileMessage::Complete(id, ok, r.str(MAX_REASON)?.to_string())
            }
        };
        r.finish()?;
        Ok(m)
    }
}

#[cfg(test)]
pub(crate) mod tests_support {
    use super::*;

    /// A valid offer.
    pub(crate) fn offer() -> Offer {
        Offer {
            id: TransferId([3; 16]),
            name: "report.pdf".into(),
            size: 300_000,
            chunk_size: 131_072,
            total: 3,
            sha256: [4; 32],
            secret: Zeroizing::new([5; 32]),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::offer;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn round_trips() {
        let id = TransferId([1; 16]);
        for m in [
            FileMessage::Offer(offer()),
            FileMessage::Accept(id),
            FileMessage::Reject(id, "no thanks".into()),
            FileMessage::Need(id, vec![(0, 3), (7, 9)]),
            FileMessage::Complete(id, true, String::new()),
            FileMessage::Cancel(id, "gone".into()),
        ] {
            let b = m.encode();
            assert_eq!(FileMessage::decode(&b).unwrap(), m);
            let mut t = b.clone();
            t.push(0xc0);
            assert!(FileMessage::decode(&t).is_err());
        }
    }

    #[test]
    fn bad_ranges_refused() {
        let id = TransferId([1; 16]);
        for r in [vec![(3, 3)], vec![(5, 9), (1, 2)], vec![(0, 5), (4, 6)]] {
            assert!(FileMessage::decode(&FileMessage::Need(id, r).encode()).is_err());
        }
    }

    #[test]
    fn offer_validation() {
        assert_eq!(offer().validate(), Ok(()));
        let mut o = offer();
        o.total = 4;
        assert!(matches!(o.validate(), Err(OfferError::ChunkCount { .. })));
        let mut o = offer();
        o.name = "../../.bashrc".into();
        assert!(matches!(o.validate(), Err(OfferError::Name(_))));
        let mut o = offer();
        o.chunk_size = 10;
        assert!(matches!(o.validate(), Err(OfferError::ChunkSize(10))));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = FileMessage::decode(&bytes);
        }
    }
}
