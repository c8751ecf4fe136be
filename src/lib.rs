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
//! - [`noise`]: the XX handshake core (no I/O), transport halves, the async connection shell.
//! - [`ratchet`]: the Double Ratchet core (no I/O) and signed end-to-end messages.
//! - [`store`]: the storage trait and its sled implementation.
//! - [`relay`]: relay protocol core, relay service and policies.
//! - [`rendezvous`]: rendezvous protocol core, TLS server and client.
//! - [`group`]: group chats (no I/O): signed fixed membership, sender keys, member states.
//! - [`transport`]: TCP and QUIC under the Noise channel; the QUIC endpoint and its channel
//!   binding.
//! - [`node`]: the personal node: listener, connections, routing; its control socket
//!   ([`node::control`]: requests and responses, server, client).
//! - [`config`], [`logging`], [`shutdown`]: configuration, tracing and signal handling.
//! - [`cli`]: every command of the binary and all its output (`main.rs` only calls it).
//!
//! Protocol cores (`wire`, `noise::handshake`, `ratchet`, relay/rendezvous cores) never do I/O
//! and never read the clock; the async shells around them own sockets and time.

pub mod backup;
pub mod cli;
pub mod config;
pub mod error;
pub mod files;
pub mod group;
pub mod identity;
pub mod limit;
pub mod logging;
pub mod node;
pub mod noise;
pub mod ratchet;
pub mod relay;
pub mod rendezvous;
pub mod shutdown;
pub mod sig;
pub mod store;
pub mod time;
pub mod transport;
pub mod wire;

pub use error::Error;
