//! The direct file stream (docs/PROTOCOL.md, "File transfer", "Direct stream"): the envelopes a
//! sender and a recipient exchange over a Noise connection opened for one transfer.
//!
//! ```text
//! 0x48 FILE_OPEN  S→R [transfer_id: bin(16)]                       first envelope
//! 0x49 FILE_NEED  R→S [transfer_id: bin(16), missing: [[start, end]]]  (≤ 512 ranges)
//! 0x4a FILE_DATA  S→R [blob: bin]                                  one chunk blob
//! 0x4b FILE_ACK   R→S [transfer_id: bin(16), stored: uint, state: uint, error: str]
//! 0x4c FILE_SENT  S→R [transfer_id: bin(16)]                       end of a round
//! ```

use serde::{Deserialize, Serialize};

/// Opens the stream of one transfer (the sender's first envelope on the connection).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileOpen {
    /// The transfer.
    #[serde(with = "crate::wire::bytes::fixed")]
    pub transfer_id: [u8; 16],
}

/// The chunk ranges the recipient still lacks (half-open, ascending).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileNeed {
    /// The transfer.
    #[serde(with = "crate::wire::bytes::fixed")]
    pub transfer_id: [u8; 16],
    /// `[start, end)` ranges.
    pub missing: Vec<(u64, u64)>,
}

/// One encrypted chunk blob.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileData {
    /// A chunk blob (`files::chunk::ChunkBlob`).
    #[serde(with = "serde_bytes")]
    pub blob: Vec<u8>,
}

/// Progress and outcome from the recipient.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileAck {
    /// The transfer.
    #[serde(with = "crate::wire::bytes::fixed")]
    pub transfer_id: [u8; 16],
    /// Chunks stored durably so far.
    pub stored: u64,
    /// 0 receiving, 1 done (hash matched, saved), 2 failed (see `error`).
    pub state: u8,
    /// Why it failed, or empty.
    pub error: String,
}

/// The sender sent every chunk of the last `FILE_NEED`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileSent {
    /// The transfer.
    #[serde(with = "crate::wire::bytes::fixed")]
    pub transfer_id: [u8; 16],
}
