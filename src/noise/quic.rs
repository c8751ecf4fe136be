//! The QUIC shell of the Noise channel: turns a QUIC connection of the transport's endpoint
//! ([`crate::transport::quic`], a raw carrier) into an authenticated [`PeerConnection`].
//!
//! Flow of one connection (docs/PROTOCOL.md, "QUIC transport"), after the QUIC-TLS handshake:
//! 1. Both ends compute the connection's TLS exporter ([`crate::transport::quic::exporter`]).
//! 2. The dialler opens the one bidirectional stream; the responder accepts it.
//! 3. The version exchange and Noise XX run on that stream exactly as over TCP, with the QUIC
//!    prologue that binds the exporter value ([`crate::transport::binding`]), so a party that
//!    terminates QUIC in the middle breaks the handshake.
//! 4. The connection's halves are then QUIC-bound ([`super::transport`]): envelopes flow as
//!    `u32be(len) || envelope` frames with no second encryption layer, QUIC's packet
//!    protection (keys only the two authenticated ends hold) protecting them.
//!
//! The whole setup (QUIC handshake, stream, Noise) runs under the caller's handshake deadline;
//! a failure closes the QUIC connection with [`CLOSE_PROTOCOL`].
//!
//! Layering: `transport` carries bytes (TCP and QUIC sockets, the channel-binding bytes, the
//! hole-punching core) and never imports `noise`; `noise` runs the handshake and the secure
//! stream over either carrier.

use super::stream::{BoxRead, BoxWrite, ConnectionError, HandshakeLimits, PeerConnection};
use super::Connection;
use crate::identity::{IdentityKey, UserIdentity};
use crate::transport::quic::{exporter, QuicEndpoint, QuicError, CLOSE_PROTOCOL};
use crate::transport::Transport;
use std::net::SocketAddr;

fn boxed(send: quinn::SendStream, recv: quinn::RecvStream) -> (BoxRead, BoxWrite) {
    (BoxRead::new(recv), BoxWrite::new(send))
}

/// Dials `ep` over its own transport and runs the Noise handshake expecting `expected`: TCP
/// for `host:port`, a new connection of `quic` for `quic://host:port` (refused with
/// [`QuicError::Disabled`] when the node runs no QUIC endpoint). The name is resolved within
/// the handshake timeout.
pub async fn dial(
    ep: &crate::wire::Endpoint,
    quic: Option<&QuicEndpoint>,
    local: &UserIdentity,
    expected: Option<IdentityKey>,
    limits: HandshakeLimits,
) -> Result<PeerConnection, ConnectionError> {
    match ep.transport() {
        Transport::Tcp => {
            super::stream::TcpConnection::connect(&ep.to_connect_string(), local, expected, limits)
                .await
        }
        Transport::Quic => {
            let q = quic.ok_or(ConnectionError::Quic(QuicError::Disabled))?;
            let timeout = limits.timeout;
            let addr = tokio::time::timeout(timeout, tokio::net::lookup_host(ep.to_connect_string()))
                .await
                .map_err(|_| ConnectionError::Timeout(timeout))?
                .map_err(ConnectionError::Io)?
                .next()
                .ok_or(ConnectionError::Quic(QuicError::NoAddress))?;
            connect(q, addr, local, expected, limits).await
        }
    }
}

/// Dials `addr` from `endpoint` over QUIC and runs the bound Noise handshake as initiator, all
/// within `limits.timeout`.
pub async fn connect(
    endpoint: &QuicEndpoint,
    addr: SocketAddr,
    local: &UserIdentity,
    expected: Option<IdentityKey>,
    limits: HandshakeLimits,
) -> Result<PeerConnection, ConnectionError> {
    connect_inner(endpoint, addr, local, expected, limits, None).await
}

/// [`connect`] with QUIC's initial round-trip estimate set to `initial_rtt`
/// ([`QuicEndpoint::connect_raw_with_rtt`]; a hole punch's dial).
pub async fn connect_with_rtt(
    endpoint: &QuicEndpoint,
    addr: SocketAddr,
    local: &UserIdentity,
    expected: Option<IdentityKey>,
    limits: HandshakeLimits,
    initial_rtt: std::time::Duration,
) -> Result<PeerConnection, ConnectionError> {
    connect_inner(endpoint, addr, local, expected, limits, Some(initial_rtt)).await
}

async fn connect_inner(
    endpoint: &QuicEndpoint,
    addr: SocketAddr,
    local: &UserIdentity,
    expected: Option<IdentityKey>,
    limits: HandshakeLimits,
    initial_rtt: Option<std::time::Duration>,
) -> Result<PeerConnection, ConnectionError> {
    let timeout = limits.timeout;
    let fut = async {
        let conn = match initial_rtt {
            Some(rtt) => endpoint.connect_raw_with_rtt(addr, rtt).await?,
            None => endpoint.connect_raw(addr).await?,
        };
        let r = initiate(&conn, local, expected, limits).await;
        if r.is_err() {
            conn.close(CLOSE_PROTOCOL.into(), b"handshake failed");
        }
        r
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| ConnectionError::Timeout(timeout))?
}

/// The initiator's half once QUIC is up: open the stream, Noise with the bound prologue.
pub async fn initiate(
    conn: &quinn::Connection,
    local: &UserIdentity,
    expected: Option<IdentityKey>,
    limits: HandshakeLimits,
) -> Result<PeerConnection, ConnectionError> {
    let binding = exporter(conn)?;
    let (send, recv) = conn.open_bi().await.map_err(QuicError::from)?;
    let (r, w) = boxed(send, recv);
    let mut c =
        Connection::handshake_bound(r, w, local, true, expected, limits, Some(binding)).await?;
    c.transport = Transport::Quic;
    c.reader.close_on_violation(conn.clone());
    c.remote = Some(conn.remote_address());
    Ok(c)
}

/// The responder's half once QUIC is up: accept the stream, Noise with the bound prologue.
pub async fn respond(
    conn: &quinn::Connection,
    local: &UserIdentity,
    limits: HandshakeLimits,
) -> Result<PeerConnection, ConnectionError> {
    let binding = exporter(conn)?;
    let (send, recv) = conn.accept_bi().await.map_err(QuicError::from)?;
    let (r, w) = boxed(send, recv);
    let mut c =
        Connection::handshake_bound(r, w, local, false, None, limits, Some(binding)).await?;
    c.transport = Transport::Quic;
    c.reader.close_on_violation(conn.clone());
    c.remote = Some(conn.remote_address());
    Ok(c)
}

/// The whole responder side of an incoming attempt within `limits.timeout`: QUIC handshake,
/// `established()` (the peer proved it receives at its address), then [`respond`]. A
/// failure closes the QUIC connection with [`CLOSE_PROTOCOL`].
pub async fn accept_incoming(
    incoming: quinn::Incoming,
    local: &UserIdentity,
    limits: HandshakeLimits,
    established: impl FnOnce(),
) -> Result<PeerConnection, ConnectionError> {
    let timeout = limits.timeout;
    let fut = async {
        let conn = incoming.await.map_err(QuicError::from)?;
        established();
        let r = respond(&conn, local, limits).await;
        if r.is_err() {
            conn.close(CLOSE_PROTOCOL.into(), b"handshake failed");
        }
        r
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| ConnectionError::Timeout(timeout))?
}

#[cfg(test)]
mod tests {
    use crate::transport::binding::{self, Exporter};
    use crate::wire::{Version, VersionHeader};

    #[test]
    fn quic_prologue_never_extends_the_tcp_prologue() {
        // A transcript can never be moved between the two transports.
        let h = VersionHeader(Version::CURRENT);
        let p = binding::prologue(h, h, &Exporter([7; 32]));
        assert!(!p.starts_with(&super::super::prologue(h, h)));
    }
}
