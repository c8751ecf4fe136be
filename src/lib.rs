//! # sremp — the Secure Relay-Enhanced Messaging Platform
//!
//! A node that talks to its contacts directly over Noise when it can and through relays when it
//! cannot, with end-to-end Double Ratchet encryption and Ed25519-signed messages; a durable
//! store-and-forward relay; and a TLS 1.3 rendezvous server for discovery. The byte-exact
//! protocol is in `docs/PROTOCOL.md`.
//!
//! ## Layout
//! - [`sig`]: domain-separated Ed25519 signatures (every signature purpose has its own prefix).
//! - [`time`]: wire timestamps (milliseconds since the epoch).
//! - [`limit`]: per-key token buckets (the relay's and the rendezvous server's rate limits).
//! - [`identity`]: identities, private keys and the data directory on disk, contact cards, TOFU
//!   contacts.
//! - [`wire`]: version header, the one frame codec, typed MessagePack envelopes, chunking.
//! - [`noise`]: the XX handshake core (no I/O), transport halves, the async connection shell
//!   over TCP and QUIC, the accept loop with admission control.
//! - [`ratchet`]: the Double Ratchet core (no I/O) and signed end-to-end messages.
//! - [`store`]: the storage trait and its sled implementation.
//! - [`relay`]: relay protocol core, relay service and policies.
//! - [`rendezvous`]: rendezvous protocol core, TLS server and client.
//! - [`group`]: group chats (no I/O): signed fixed membership, sender keys, member states.
//! - [`files`]: file transfer without the node: offer messages, chunk crypto, the transfer
//!   state machines and their records on disk (the node's shell is `node::files`).
//! - [`transport`]: the byte carriers under the Noise channel: the QUIC endpoint, its channel
//!   binding bytes, the hole-punching core. It never imports [`noise`], whose QUIC shell
//!   (`noise::quic`) runs the handshake over it.
//! - [`node`]: the personal node: listener, connections, routing, the file-transfer shell; its
//!   control socket ([`node::control`]: requests and responses, server, client).
//! - [`config`], [`logging`], [`shutdown`]: configuration, tracing and signal handling.
//! - [`cli`]: every command of the binary and all its output (`main.rs` only calls it).
//!
//! Protocol cores (`wire`, `noise::handshake`, `ratchet`, relay/rendezvous cores) never do I/O
//! and never read the clock; the async shells around them own sockets and time. Modules import
//! each other one way only (`tests/module_graph.rs` checks it; the order is in the README,
//! "Layout").

//! ## Public API and test hooks
//! Without features, the crate exposes the command line ([`cli`]), the configuration
//! ([`config`]), the crate [`Error`], and at the root what embeds a node, a relay or a
//! rendezvous server: [`Node`] / [`NodeHandle`] with its [`control`] socket and [`history`]
//! entries, [`Relay`], [`RendezvousServer`], and the identity and endpoint types they take.
//! Every other module is private. The `test-hooks` feature makes them all public (their paths
//! are `sremp::wire::...`, `sremp::ratchet::...` and so on): the crate's own integration tests,
//! benchmarks and fuzz targets turn it on through a dev-dependency on this package, so a plain
//! `cargo test` runs everything. It is not a stable API.

// Without the test hooks, items that only the tests, benchmarks and fuzz targets reach are
// unused; with them (every `cargo test`, `cargo bench`, `cargo clippy --all-targets`) all is
// public and nothing is reported either way, as before the modules became private.
#![cfg_attr(not(feature = "test-hooks"), allow(dead_code, unused_imports))]

pub mod cli;
pub mod config;

/// Declares the internal modules: public with the `test-hooks` feature, private otherwise.
macro_rules! internal_modules {
    ($($name:ident),* $(,)?) => {
        $(
            #[cfg(feature = "test-hooks")]
            pub mod $name;
            #[cfg(not(feature = "test-hooks"))]
            mod $name;
        )*
    };
}

internal_modules!(
    backup, error, files, group, identity, limit, logging, node, noise, ratchet, relay, rendezvous,
    shutdown, sig, store, time, transport, wire,
);

pub use error::Error;
pub use identity::{ContactCard, ContactIdentity, Identity, IdentityKey, Trust, UserIdentity};
pub use node::{control, history, Node, NodeError, NodeHandle};
pub use relay::{Relay, RelayMode, RelayOptions};
pub use rendezvous::server::ServerOptions as RendezvousServerOptions;
pub use rendezvous::{Server as RendezvousServer, ServerHandle as RendezvousServerHandle};
pub use wire::Endpoint;
