//! Noise: the authenticated, encrypted channel between two SREMP participants.
//!
//! Layering: this module sits on the byte carriers of [`crate::transport`] (TCP and QUIC
//! sockets, the QUIC channel binding), which never import it.
//!
//! Pattern `Noise_XX_25519_ChaChaPoly_BLAKE2s` (through snow), over TCP (over QUIC the same,
//! with the prologue of [`quic`]):
//! 1. Both sides send their 7-byte version header at once ([`crate::wire::version`]); a
//!    different major version ends the connection, otherwise both continue at the lower minor.
//! 2. The prologue is `"SREMP-1 noise-prologue\0" || initiator header || responder header`,
//!    so a tampered header breaks the handshake.
//! 3. `-> e` (empty payload), `<- e, ee, s, es` (payload: responder's `Identity`),
//!    `-> s, se` (payload: initiator's `Identity`), each framed by the one frame codec.
//! 4. Each side checks, in this order: the Noise remote static key is not all-zero or of small
//!    order; the peer's `Identity` decodes and its signature verifies; the remote static key
//!    equals the identity's `noise_key`; and, when dialling a known contact, the identity key is
//!    the one expected. Any failure closes the connection.
//!
//! - [`handshake`]: the handshake core (no I/O, no clock).
//! - [`transport`]: send/receive cipher halves with explicit nonces (so reading and writing can
//!   run in separate tasks), plus chunking and reassembly of envelopes.
//! - [`stream`]: the async shell: dial/accept with a deadline, and framed envelope I/O.
//! - [`quic`]: the same handshake over a QUIC connection of the transport's endpoint, with the
//!   prologue bound to its TLS exporter; after it the stream carries `u32be(len) || envelope`
//!   frames without Noise encryption, inside QUIC's packet protection.
//! - [`listener`]: the accept loop of TCP and QUIC, with admission control.
//! - [`framed`]: the async frame reader and writer (the socket half of
//!   [`crate::wire::frame`]), used by [`stream`] and by the rendezvous TLS connections.

pub mod admission;
pub mod bind;
pub mod framed;
pub mod handshake;
pub mod listener;
pub mod quic;
pub mod refusals;
pub mod stream;
pub mod transport;

pub use handshake::{Handshake, HandshakeError};
pub use stream::{Connection, ConnectionError, HandshakeLimits};
pub use transport::{RecvHalf, SendHalf};

/// The Noise protocol name.
pub const PATTERN: &str = "Noise_XX_25519_ChaChaPoly_BLAKE2s";

/// Label that starts the prologue.
pub const PROLOGUE_LABEL: &[u8] = b"SREMP-1 noise-prologue\0";

/// The prologue both sides feed into the handshake.
pub fn prologue(
    initiator: crate::wire::VersionHeader,
    responder: crate::wire::VersionHeader,
) -> Vec<u8> {
    let mut p = Vec::with_capacity(PROLOGUE_LABEL.len() + 14);
    p.extend_from_slice(PROLOGUE_LABEL);
    p.extend_from_slice(&initiator.encode());
    p.extend_from_slice(&responder.encode());
    p
}
