//! The SREMP wire format: everything that turns typed messages into bytes and back.
//!
//! - [`version`]: the 7-byte version header each side sends first, and version negotiation.
//! - [`frame`]: the one length-prefixed frame codec used on every connection (Noise over TCP,
//!   relay, rendezvous over TLS). It checks the declared length before allocating.
//! - [`msgpack`]: bounded MessagePack decoding: a structural pre-scan checks sizes, element
//!   counts and nesting depth before serde allocates anything, and trailing bytes are an error.
//! - [`envelope`]: `[kind, body]`, the typed message carried in every frame.
//! - [`chunk`]: splitting envelopes larger than one frame and bounded reassembly.
//! - [`endpoint`], [`relay`], [`rendezvous`]: the message bodies.
//!
//! Nothing here does I/O or imports tokio (the async frame reader and writer are the noise
//! module's `framed` shell), and nothing reads the clock: reassembly takes `now` from its caller.

pub mod bytes;
pub mod chunk;
pub mod endpoint;
pub mod envelope;
pub mod file;
pub mod frame;
pub mod msgpack;
pub mod relay;
pub mod rendezvous;
pub mod version;

pub use endpoint::{Endpoint, Transport};
pub use envelope::{Envelope, Kind};
pub use version::{Version, VersionHeader};

/// Maximum plaintext carried by one Noise transport message (65535 minus the 16-byte tag).
pub const MAX_NOISE_PLAINTEXT: usize = 65_535 - 16;

/// Maximum nesting depth of any MessagePack value we accept.
pub const MAX_DEPTH: usize = 16;

/// Bytes that did not decode. Always the peer's (or the file's) fault, never ours.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// A length field exceeds what this decoder accepts.
    #[error("{what} of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// What was too large.
        what: &'static str,
        /// Declared or actual length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// MessagePack nesting deeper than [`MAX_DEPTH`].
    #[error("nesting deeper than {max}")]
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// The input ended inside a value.
    #[error("truncated input")]
    Truncated,
    /// A complete value was followed by more bytes.
    #[error("{extra} trailing bytes after the value")]
    TrailingData {
        /// How many.
        extra: usize,
    },
    /// A reserved MessagePack marker (0xc1).
    #[error("reserved MessagePack marker")]
    ReservedMarker,
    /// Structurally valid MessagePack of the wrong shape or type.
    #[error("malformed message: {0}")]
    Msgpack(#[from] rmp_serde::decode::Error),
    /// Well-formed but semantically invalid (a field out of its range, an empty list...).
    #[error("invalid {what}: {why}")]
    Invalid {
        /// The field or structure.
        what: &'static str,
        /// Why.
        why: &'static str,
    },
}
