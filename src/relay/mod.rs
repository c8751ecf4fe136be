//! The store-and-forward relay: protocol, durable records, policies, service and client.
//!
//! A relay keeps end-to-end encrypted blobs for recipients who are offline, pushes them to
//! recipients who are connected, and routes delivery confirmations back to senders. It runs
//! either alone (`sremp relay`, [`RelayMode::Open`]: stores for anyone) or inside a node
//! (`sremp run`, [`RelayMode::Integrated`]: stores only for the local user and is not
//! advertised). The relay-only process itself (identity, listener, signals) is the binary's
//! `cli::relay`.
//!
//! Flow on one authenticated Noise connection (byte-exact in docs/PROTOCOL.md, "Relay"):
//! 1. client `RELAY_HELLO` → relay `RELAY_CHALLENGE` (32 fresh random bytes + capabilities);
//! 2. client `RELAY_REGISTER`, signed over the challenge *and* the Noise handshake hash, so it
//!    is useless on any other connection → `RELAY_REGISTERED` (granted capabilities);
//! 3. `STORE_MESSAGE` (sender signature verified; the signatures of stores received together
//!    in one batch, [`crate::sig::verify_batch`]) → `STORE_RESPONSE` after the group commit
//!    that made it durable; a connected recipient gets it pushed at once;
//! 4. `RETRIEVE_MESSAGES` → `MESSAGE_BATCH` pages (`has_more`, continue `after` the last);
//! 5. recipient `DELIVERY_CONFIRMATION` → the message is deleted and, in the same step, the
//!    confirmation is kept for the sender until it acknowledges it with `CONFIRMATION_ACK`;
//!    it is pushed at once to a connected sender and handed over again on every registration.
//!
//! Modules:
//! - [`conn`] — the connection core (no I/O): every protocol decision on one connection.
//! - [`auth`] — the signed byte strings (pure).
//! - [`policy`] — `[relay]` config, quotas, token-bucket rate limits, capability grant (pure).
//! - [`store`] — records over [`crate::store::Store`] and the group-commit thread.
//! - [`service`] — the async shell ([`Relay`]): read → [`conn::RelayConn`] → execute.
//! - [`backend`] — the relay-level storage trait: the embedded store ([`store`]), or NATS
//!   JetStream shared by several relay processes (`[relay] store = "nats"`).
//! - [`metrics`] — the Prometheus endpoint (`[metrics] listen`).
//! - [`owner`] — the integrated relay's hand-off to its node (one durable point).
//! - [`client`] — [`client::RelayClient`].
//! - [`read_ahead`] — a read buffer that is freed while a connection idles.
//! - [`stats`] — operator counters.
//!
//! Invariants: a successful `STORE_RESPONSE` is sent only after the flush covering the message
//! returned; `(recipient, sender, message_id)` is stored at most once (a retry is answered with
//! the first `stored_at`); a confirmation deletes only the confirmer's own message; a refusal
//! (typed [`RelayErrorCode`](crate::wire::relay::RelayErrorCode)) concerns only the request
//! that caused it. The relay never logs blobs, signatures or keys (only short key ids).
//!
//! Not done here: the relay never decrypts anything, keeps no tombstones of confirmed messages
//! (recipients de-duplicate on `(sender, message_id)`), and does not forward to other relays.
//!
//! ```no_run
//! # async fn f(store: std::sync::Arc<dyn sremp::store::Store>, me: sremp::identity::IdentityKey) -> Result<(), sremp::Error> {
//! use sremp::relay::{Relay, RelayOptions, RelayMode, RelayConfig};
//! let relay = Relay::start(store, RelayOptions {
//!     policy: RelayConfig::default(),
//!     mode: RelayMode::Integrated { owner: me },
//!     relay_key: me,
//!     idle_timeout: std::time::Duration::from_secs(300),
//!     stats_path: None,
//! }).await?;
//! // For each authenticated connection whose first envelope is RELAY_HELLO:
//! // relay.serve_connection(conn, Some(first)).await;
//! relay.shutdown(std::time::Duration::from_secs(5)).await?;
//! # Ok(()) }
//! ```

pub mod auth;
pub mod backend;
pub mod client;
pub mod conn;
pub mod metrics;
pub mod owner;
pub mod policy;
pub mod read_ahead;
pub mod service;
pub mod stats;
pub mod store;

pub use client::{RelayClient, RelayClientError, RelayEvent};
pub use policy::RelayConfig;
pub use service::{Relay, RelayMode, RelayOptions};
pub use store::RelayStoreError;

/// Name of the file (in the data dir) where `sremp relay` writes its address and id at start:
/// one line `<listen address> <relay id hex>`.
pub const ADDR_FILE: &str = "relay.addr";
/// Name of the counters file (in the data dir), rewritten every `stats_interval_secs`.
pub const STATS_FILE: &str = "relay-stats.json";
/// Directory of the relay's database inside the data dir.
pub const DB_DIR: &str = "relay-db";
/// What a relay-only relay tells its operator when its store is damaged.
pub const RELAY_DAMAGE_ADVICE: &str = "The relay will not start on it (stored messages would be \
silently gone). Restore it with `sremp restore BACKUP --relay --key KEYFILE --force` if you \
have a backup; otherwise move relay-db and relay-db.commit aside and start again (an empty \
store): the messages it held are lost unless their senders send them again";

/// A relay failure (local; peers' misbehaviour is answered on the wire, never an error here).
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// The relay's records.
    #[error(transparent)]
    Store(#[from] RelayStoreError),
    /// A policy value out of range.
    #[error(transparent)]
    Policy(#[from] policy::PolicyError),
    /// The NATS JetStream backend could not start.
    #[error(transparent)]
    Nats(#[from] backend::nats::NatsError),
    /// `sremp relay --check-config` found problems (listed in its output).
    #[error("configuration check failed: {0} problem(s)")]
    CheckFailed(usize),
    /// The async runtime failed a task.
    #[error("relay runtime: {0}")]
    Runtime(String),
}
