//! The crate-level error: every module's error, gathered for callers that handle them alike.

use crate::identity::keys::{KeyFileError, SetupError};
use crate::identity::IdentityError;
use crate::noise::{ConnectionError, HandshakeError};
use crate::store::StoreError;
use crate::wire::DecodeError;

/// Any sremp error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad bytes from a peer or a file.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// An identity was refused.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// Key file problem.
    #[error(transparent)]
    KeyFile(#[from] KeyFileError),
    /// Noise handshake.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// Connection.
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    /// Storage.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Backup or restore.
    #[error(transparent)]
    Backup(#[from] crate::backup::BackupError),
    /// Configuration.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// File transfer.
    #[error(transparent)]
    Files(#[from] crate::files::FileError),
    /// Relay.
    #[error(transparent)]
    Relay(#[from] crate::relay::RelayError),
    /// Rendezvous.
    #[error(transparent)]
    Rendezvous(#[from] crate::rendezvous::RendezvousError),
    /// The data directory cannot be used.
    #[error(transparent)]
    DataDir(#[from] crate::identity::keys::DataDirError),
    /// Local I/O (sockets we bind, files we write).
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The error.
        source: std::io::Error,
    },
}

impl Error {
    /// A stable machine-readable name for what failed, as printed in the `"kind"` field of a
    /// `--json` error (README, "JSON output"): `decode`, `identity`, `key_file`,
    /// `handshake`, `connection`, `store`, `config`, `relay`, `rendezvous`, `data_dir`, `backup`,
    /// `files` or `io` (the CLI adds `control` for its control-socket failures, `cli::CliError`).
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Decode(_) => "decode",
            Error::Identity(_) => "identity",
            Error::KeyFile(_) => "key_file",
            Error::Handshake(_) => "handshake",
            Error::Connection(_) => "connection",
            Error::Store(_) => "store",
            Error::Config(_) => "config",
            Error::Relay(_) => "relay",
            Error::Rendezvous(_) => "rendezvous",
            Error::DataDir(_) => "data_dir",
            Error::Backup(_) => "backup",
            Error::Files(_) => "files",
            Error::Io { .. } => "io",
        }
    }
}

impl From<SetupError> for Error {
    fn from(e: SetupError) -> Self {
        match e {
            SetupError::DataDir(e) => Error::DataDir(e),
            SetupError::KeyFile(e) => Error::KeyFile(e),
            SetupError::Identity(e) => Error::Identity(e),
        }
    }
}
