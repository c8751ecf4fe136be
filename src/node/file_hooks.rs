//! What the file-transfer shell ([`crate::node::files`]) needs from the node: its transfer
//! table, queueing a file message through the ratchet, pooled relay connections, and the
//! shutdown signal. Kept apart so the node's own modules stay as they are.

use super::{Node, NodeError};
use super::files::Files;
use crate::identity::{ContactIdentity, IdentityKey};
use crate::noise::stream::{ConnectionError, HandshakeLimits, PeerConnection};
use crate::ratchet::Content;
use crate::relay::{RelayClient, RelayClientError};
use crate::wire::Endpoint;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

impl Node {
    /// The file transfer table.
    pub fn files(&self) -> Arc<Files> {
        self.inner.files.clone()
    }

    /// Queues a message with any content (file messages) like [`Node::send`] queues text.
    pub(crate) async fn enqueue_content(
        &self,
        c: &ContactIdentity,
        content: Content,
        text: &str,
    ) -> Result<super::history::HistoryEntry, NodeError> {
        if *self.inner.stop.borrow() {
            return Err(NodeError::ShuttingDown);
        }
        let entry = super::delivery::enqueue_content(&self.inner, c, content, text).await?;
        let _ = self.inner.events.send(entry.clone());
        self.inner.wakers.wake(&c.identity.key());
        Ok(entry)
    }

    /// Becomes true at shutdown.
    pub(crate) fn stop_signal(&self) -> watch::Receiver<bool> {
        self.inner.stop.clone()
    }

    /// The deadline for connecting and the handshake (`direct_timeout_ms`).
    pub(crate) fn handshake_limits(&self) -> HandshakeLimits {
        self.inner.handshake.clone()
    }

    /// A pooled, registered relay-protocol connection to `endpoint` proving `key`.
    pub(crate) async fn relay_connection(
        &self,
        endpoint: &Endpoint,
        key: IdentityKey,
    ) -> Result<Arc<RelayClient>, RelayClientError> {
        let limit = Duration::from_millis(self.inner.cfg.direct_timeout_ms);
        match tokio::time::timeout(limit, self.inner.pool.get(self, endpoint, key)).await {
            Ok(r) => r,
            Err(_) => Err(RelayClientError::Closed),
        }
    }

    /// Drops a pooled connection that failed.
    pub(crate) fn drop_relay_connection(
        &self,
        endpoint: &Endpoint,
        key: IdentityKey,
        client: &Arc<RelayClient>,
    ) {
        self.inner.pool.forget(endpoint, &key, client);
    }

    /// Dials a contact's direct endpoint over its transport and runs the Noise handshake
    /// expecting `peer`: TCP for `host:port`, a new connection of the node's QUIC endpoint
    /// for `quic://host:port` (so a file stream never shares a stream with messages).
    pub(crate) async fn dial_direct(
        &self,
        ep: &Endpoint,
        peer: IdentityKey,
    ) -> Result<PeerConnection, ConnectionError> {
        let me = self.inner.me();
        let limits = self.handshake_limits();
        crate::noise::quic::dial(ep, self.inner.quic.endpoint(), &me, Some(peer), limits).await
    }
}
