//! The accept loop shared by the node and the relay: TCP accept, connection limit, Noise
//! responder handshake under a deadline, then the caller's handler per authenticated peer.
//!
//! A connection over the limit is closed at once; a failed handshake (garbage, wrong version,
//! bad identity, silence past the deadline) is logged with its reason and closed, and the loop
//! keeps serving everyone else.

use super::stream::{HandshakeLimits, TcpConnection};
use crate::identity::UserIdentity;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// Accept-loop settings.
#[derive(Clone, Copy, Debug)]
pub struct ListenerConfig {
    /// Concurrent connections (including ones still in the handshake).
    pub max_connections: usize,
    /// Handshake deadline.
    pub handshake: HandshakeLimits,
}

impl Default for ListenerConfig {
    fn default() -> Self {
        ListenerConfig {
            max_connections: 1024,
            handshake: HandshakeLimits::default(),
        }
    }
}

/// How long handlers get to finish after shutdown before they are aborted.
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs until `shutdown` becomes true; then stops accepting, gives handlers
/// [`SHUTDOWN_GRACE`] to finish (handlers that hold a clone of `shutdown` should return
/// promptly), and aborts the rest. The local identity is fixed; see [`serve_live`] for one
/// that may be updated while serving.
pub async fn serve<H, Fut>(
    listener: TcpListener,
    local: Arc<UserIdentity>,
    cfg: ListenerConfig,
    shutdown: watch::Receiver<bool>,
    handler: H,
) where
    H: Fn(TcpConnection, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (_keep, local) = watch::channel(local);
    serve_live(listener, local, cfg, shutdown, handler).await;
}

/// [`serve`] with the local identity read from `local` at every accept, so a new identity
/// version (a rotated Noise key, a new username) is used from the next connection on.
pub async fn serve_live<H, Fut>(
    listener: TcpListener,
    local: watch::Receiver<Arc<UserIdentity>>,
    cfg: ListenerConfig,
    mut shutdown: watch::Receiver<bool>,
    handler: H,
) where
    H: Fn(TcpConnection, SocketAddr) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(cfg.max_connections.max(1)));
    let mut tasks = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        // Reap finished tasks so the set stays small.
        while tasks.try_join_next().is_some() {}
        let (stream, addr) = match accepted {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%addr, limit = cfg.max_connections, "connection limit reached; closing");
            drop(stream);
            continue;
        };
        // The identity current at accept time (it may be updated while the node runs).
        let local = local.borrow().clone();
        let handler = handler.clone();
        tasks.spawn(async move {
            let _permit = permit;
            match TcpConnection::accept(stream, &local, cfg.handshake).await {
                Ok(conn) => {
                    tracing::debug!(%addr, peer = %conn.peer.key().short(), "authenticated");
                    handler(conn, addr).await;
                }
                Err(e) => {
                    tracing::warn!(%addr, error = %e, "handshake failed; connection closed");
                }
            }
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            remaining = tasks.len(),
            "handlers still running after the grace period; aborting"
        );
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
}
