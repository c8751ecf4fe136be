//! File transfer: offer, accept or reject, encrypted chunks over the direct path or a relay,
//! resume after a disconnect or a crash of either side, whole-file hash check, atomic save.
//!
//! Layout:
//! - [`name`]: the check that keeps a peer-chosen name inside the target directory.
//! - [`offer`]: the file messages carried by the ratchet (payload kind 2): offer, accept,
//!   reject, need, complete, cancel.
//! - [`chunk`]: the per-transfer chunk key (HKDF from the offer's secret) and the chunk blob
//!   (XChaCha20-Poly1305, index and transfer in the AAD).
//! - [`transfer`]: the state machines and the chunk bitmap (no IO).
//! - [`store`]: records, bitmaps and the receiver's temporary file on disk.
//!
//! The async shell inside the node (the transfer table, the sender task per transfer, the
//! direct stream server, the relay path, the control API operations and progress events) is
//! `node::files`: this module never imports the node.
//!
//! Flow (docs/PROTOCOL.md, "File transfer"):
//! 1. The sender hashes the file (SHA-256) and sends an `Offer` (transfer id, name, size,
//!    chunk size, chunk count, hash, a fresh 32-byte secret) as an ordinary ratchet message.
//! 2. The recipient accepts (by hand, or automatically from a Trusted contact under the
//!    configured size) with `Accept`, or refuses with `Reject`.
//! 3. The sender opens a direct Noise connection to the recipient (`FILE_OPEN`); the recipient
//!    answers with the chunk ranges it still lacks (`FILE_NEED`) and the sender streams them
//!    (`FILE_DATA`, each an encrypted chunk blob). Without a direct path it stores the chunk
//!    blobs at the recipient's home relay as ordinary `STORE_MESSAGE`s, within the relay's
//!    size limit, and the recipient asks for what is missing with ratchet `Need` messages.
//! 4. The recipient writes each authenticated chunk into a temporary file in the target
//!    directory, fsyncs, then records it in its bitmap. With every chunk stored it checks the
//!    whole hash, links the file into place and sends `Complete`.
//!
//! Limits: [`offer::MAX_FILE_SIZE`], [`chunk::MAX_CHUNK_SIZE`], [`offer::MAX_RANGES`] per
//! `Need`, [`store::MAX_RECORDS`]. Memory per transfer is one chunk plus the bitmap (one bit per
//! chunk), independent of the file size.
//!
//! Not done here: groups (a transfer has one recipient), sending a directory.

pub mod chunk;
pub mod name;
pub mod offer;
pub mod store;
pub mod transfer;

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

pub use offer::{FileMessage, Offer};
pub use transfer::{Direction, Record, State};

/// 16 random bytes naming a transfer; shown and typed as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TransferId(pub [u8; 16]);

impl TransferId {
    /// A fresh random id.
    pub fn random() -> TransferId {
        TransferId(rand::random())
    }
}

impl std::fmt::Display for TransferId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl std::fmt::Debug for TransferId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TransferId({self})")
    }
}

impl std::str::FromStr for TransferId {
    type Err = FileError;
    fn from_str(s: &str) -> Result<Self, FileError> {
        let mut b = [0u8; 16];
        hex::decode_to_slice(s, &mut b).map_err(|_| FileError::UnknownTransfer(s.to_string()))?;
        Ok(TransferId(b))
    }
}

impl Serialize for TransferId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for TransferId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// `[files]` in node-config.toml.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct FilesConfig {
    /// Where accepted files are saved unless `files accept --to DIR` says otherwise. Default:
    /// `<data dir>/downloads`.
    pub download_dir: Option<PathBuf>,
    /// Accept offers from contacts marked Trusted automatically when the file is at most this
    /// many bytes (into `download_dir`). Default 0: never; every offer waits for
    /// `sremp files accept`.
    pub auto_accept_trusted_max_bytes: u64,
    /// Chunk size of the files this node sends, in bytes (1024 ..= 1048576). Default 131072;
    /// a chunk must also fit the recipient relay's `max_message_size` to go through it.
    pub chunk_size: u32,
    /// Upper bound on the sending rate per transfer, bytes per second. Default 0: no bound.
    pub max_send_rate: u64,
}

impl Default for FilesConfig {
    fn default() -> Self {
        FilesConfig {
            download_dir: None,
            auto_accept_trusted_max_bytes: 0,
            chunk_size: 128 * 1024,
            max_send_rate: 0,
        }
    }
}

/// A `[files]` value out of range (the config loader reports it as an invalid config value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid config value {key}: {why}")]
pub struct FilesConfigError {
    /// The key.
    pub key: &'static str,
    /// Why.
    pub why: String,
}

impl FilesConfig {
    /// Checks ranges.
    pub fn validate(&self) -> Result<(), FilesConfigError> {
        if !(chunk::MIN_CHUNK_SIZE..=chunk::MAX_CHUNK_SIZE).contains(&self.chunk_size) {
            return Err(FilesConfigError {
                key: "files.chunk_size",
                why: format!(
                    "must be {} ..= {}",
                    chunk::MIN_CHUNK_SIZE,
                    chunk::MAX_CHUNK_SIZE
                ),
            });
        }
        Ok(())
    }
}

/// Why a file operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// No transfer with this id.
    #[error("no transfer with id {0:?}")]
    UnknownTransfer(String),
    /// The transfer is not in a state that allows this.
    #[error("transfer {id} is {state}; this needs {wanted}")]
    WrongState {
        /// Transfer id.
        id: String,
        /// Its state.
        state: &'static str,
        /// What the operation needs.
        wanted: &'static str,
    },
    /// A peer's offer was refused.
    #[error("bad offer: {0}")]
    Offer(#[from] offer::OfferError),
    /// A chunk was refused.
    #[error("bad chunk: {0}")]
    Chunk(#[from] chunk::ChunkError),
    /// A file name was refused.
    #[error("{0}")]
    Name(#[from] name::NameError),
    /// The disk is full (or the quota reached): the chunk was not stored.
    #[error("disk full: {0}")]
    DiskFull(String),
    /// A local IO error.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The error.
        source: std::io::Error,
    },
    /// A path that must be a regular file is not.
    #[error("{} is not a regular file", .0.display())]
    NotAFile(PathBuf),
    /// A file cannot go to the group asked for (not a member, nobody to send it to).
    #[error("{0}")]
    Group(String),
    /// The received file's length is not the declared size.
    #[error("received {got} bytes, the offer declared {declared}")]
    SizeMismatch {
        /// Declared.
        declared: u64,
        /// Received.
        got: u64,
    },
    /// The received file's SHA-256 is not the offered one.
    #[error("the received file does not match the offered SHA-256")]
    HashMismatch,
    /// Every candidate name is taken.
    #[error("no free name for {0:?} in the target directory")]
    NoFreeName(String),
    /// The source file changed after it was offered.
    #[error("{} changed since it was offered", .0.display())]
    SourceChanged(PathBuf),
    /// A stored record is damaged.
    #[error("damaged transfer record: {0}")]
    Corrupt(String),
    /// A chunk is larger than a relay accepts.
    #[error("chunks of this transfer ({need} bytes) are larger than relay {relay} accepts ({max} bytes); send it while the recipient is reachable directly, or lower [files] chunk_size")]
    RelayTooSmall {
        /// The relay.
        relay: String,
        /// Its granted `max_message_size`.
        max: u32,
        /// The blob size needed.
        need: usize,
    },
}

impl FileError {
    /// Maps an IO error, telling a full disk apart.
    pub fn from_io(context: String, source: std::io::Error) -> FileError {
        match source.raw_os_error() {
            Some(libc::ENOSPC) | Some(libc::EDQUOT) => {
                FileError::DiskFull(format!("{context}: {source}"))
            }
            _ => FileError::Io { context, source },
        }
    }

    /// True for a full disk.
    pub fn is_disk_full(&self) -> bool {
        matches!(self, FileError::DiskFull(_))
    }
}
