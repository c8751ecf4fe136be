//! The async shell around the handshake core and transport halves.
//!
//! [`Connection::handshake`] runs version exchange and the XX handshake over any pair of async
//! read/write halves under one deadline; [`Connection::connect`] dials TCP and does the same.
//! After it, [`Reader::recv`] and [`Writer::send`] move envelopes; the two halves can be used
//! from different tasks. Protocol decisions live in the cores; this file only moves bytes.
//!
//! A handshake bound to a QUIC connection ([`Connection::handshake_bound`] with an exporter)
//! leaves QUIC-bound transport halves: the same reader and writer then move
//! `u32be(len) || envelope` frames without Noise encryption ([`super::transport`]); a
//! handshake without a binding (TCP) always leaves Noise-encrypted halves.

use super::framed::{self, FrameReader};
use super::handshake::{Handshake, HandshakeError};
use super::transport::{Framing, RecvHalf, SendHalf, TransportError};
use crate::identity::{Identity, IdentityKey, UserIdentity, VerifiedCache};
use crate::transport::binding::Exporter;
use crate::transport::Transport;
use crate::wire::frame::{FrameError, MAX_FRAME};
use crate::wire::version::{self, VersionError, HEADER_LEN};
use crate::wire::{Envelope, Version, VersionHeader};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Limits (and the verified-identity cache) applied while a connection is being set up.
#[derive(Clone, Debug)]
pub struct HandshakeLimits {
    /// Deadline for TCP connect (when dialling), version exchange and the whole handshake.
    /// Default 10 s.
    pub timeout: Duration,
    /// The owner's memory of verified identities, consulted for the peer's identity; `None`
    /// (the default) verifies every identity in full.
    pub verified: Option<VerifiedCache>,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        HandshakeLimits {
            timeout: Duration::from_secs(10),
            verified: None,
        }
    }
}

/// Why a connection could not be set up or broke.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The deadline passed.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// Socket error.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    /// Framing error (oversized frame, closed mid-frame).
    #[error("{0}")]
    Frame(#[from] FrameError),
    /// The version header was refused.
    #[error("{0}")]
    Version(#[from] VersionError),
    /// The handshake failed.
    #[error("{0}")]
    Handshake(#[from] HandshakeError),
    /// A transport message was refused.
    #[error("{0}")]
    Transport(#[from] TransportError),
    /// The QUIC connection under the Noise channel failed.
    #[error("{0}")]
    Quic(#[from] crate::transport::QuicError),
}

impl ConnectionError {
    /// True when the peer simply went away (not misbehaviour).
    pub fn is_closed(&self) -> bool {
        matches!(self, ConnectionError::Frame(FrameError::Closed))
    }
}

/// The receiving side of an established connection.
#[derive(Debug)]
pub struct Reader<R> {
    frames: FrameReader<R>,
    recv: RecvHalf,
    /// The QUIC connection under a QUIC-bound reader: a frame that breaks the protocol closes
    /// it with [`crate::transport::quic::CLOSE_PROTOCOL`].
    quic: Option<quinn::Connection>,
}

/// The sending side of an established connection.
#[derive(Debug)]
pub struct Writer<W> {
    inner: W,
    send: SendHalf,
    buf: Vec<u8>,
}

/// An established, authenticated connection.
#[derive(Debug)]
pub struct Connection<R, W> {
    /// The verified peer.
    pub peer: Identity,
    /// The negotiated version.
    pub version: Version,
    /// The Noise handshake hash (channel binding for relay authentication).
    pub handshake_hash: [u8; 32],
    /// Receiving half.
    pub reader: Reader<R>,
    /// Sending half.
    pub writer: Writer<W>,
    /// The transport under the Noise channel.
    pub transport: Transport,
    /// The peer's address as this side saw it when the connection was set up (`None` when
    /// the transport did not say).
    pub remote: Option<std::net::SocketAddr>,
}

/// The read half of a peer connection, whatever its transport.
pub struct BoxRead(Pin<Box<dyn AsyncRead + Send + Sync>>);
/// The write half of a peer connection, whatever its transport.
pub struct BoxWrite(Pin<Box<dyn AsyncWrite + Send + Sync>>);

impl BoxRead {
    /// Boxes a read half.
    pub fn new(r: impl AsyncRead + Send + Sync + 'static) -> Self {
        BoxRead(Box::pin(r))
    }
}

impl BoxWrite {
    /// Boxes a write half.
    pub fn new(w: impl AsyncWrite + Send + Sync + 'static) -> Self {
        BoxWrite(Box::pin(w))
    }
}

impl std::fmt::Debug for BoxRead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BoxRead")
    }
}

impl std::fmt::Debug for BoxWrite {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BoxWrite")
    }
}

impl AsyncRead for BoxRead {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        self.0.as_mut().poll_read(cx, buf)
    }
}

impl AsyncWrite for BoxWrite {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.as_mut().poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.0.as_mut().poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.0.as_mut().poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.0.as_mut().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }
}
/// An authenticated peer connection over TCP or QUIC ([`Connection::transport`] says which).
pub type PeerConnection = Connection<BoxRead, BoxWrite>;
/// The connection type the listener and dialers use; kept as a name for existing callers. It
/// is a [`PeerConnection`]: QUIC connections have the same type.
pub type TcpConnection = PeerConnection;

fn box_tcp(stream: TcpStream) -> (BoxRead, BoxWrite) {
    let _ = stream.set_nodelay(true);
    let (r, w): (OwnedReadHalf, OwnedWriteHalf) = stream.into_split();
    (BoxRead::new(r), BoxWrite::new(w))
}

impl TcpConnection {
    /// Dials `addr` and runs the handshake as initiator, all within `limits.timeout`.
    pub async fn connect(
        addr: &str,
        local: &UserIdentity,
        expected: Option<IdentityKey>,
        limits: HandshakeLimits,
    ) -> Result<TcpConnection, ConnectionError> {
        let fut = async {
            let stream = TcpStream::connect(addr).await?;
            let remote = stream.peer_addr().ok();
            let (r, w) = box_tcp(stream);
            let mut c = Connection::run_handshake(
                r,
                w,
                local,
                true,
                expected,
                limits.verified.as_ref(),
                None,
            )
            .await?;
            c.remote = remote;
            Ok(c)
        };
        tokio::time::timeout(limits.timeout, fut)
            .await
            .map_err(|_| ConnectionError::Timeout(limits.timeout))?
    }

    /// Runs the responder side on an accepted TCP stream within `limits.timeout`.
    pub async fn accept(
        stream: TcpStream,
        local: &UserIdentity,
        limits: HandshakeLimits,
    ) -> Result<TcpConnection, ConnectionError> {
        let remote = stream.peer_addr().ok();
        let (r, w) = box_tcp(stream);
        let mut c = Connection::handshake(r, w, local, false, None, limits).await?;
        c.remote = remote;
        Ok(c)
    }
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Connection<R, W> {
    /// Version exchange and XX handshake over `r`/`w`, within `limits.timeout`.
    pub async fn handshake(
        r: R,
        w: W,
        local: &UserIdentity,
        initiator: bool,
        expected: Option<IdentityKey>,
        limits: HandshakeLimits,
    ) -> Result<Self, ConnectionError> {
        tokio::time::timeout(
            limits.timeout,
            Self::run_handshake(
                r,
                w,
                local,
                initiator,
                expected,
                limits.verified.as_ref(),
                None,
            ),
        )
        .await
        .map_err(|_| ConnectionError::Timeout(limits.timeout))?
    }

    /// [`Connection::handshake`] with the QUIC prologue binding `binding` (the QUIC
    /// connection's TLS exporter, [`crate::transport::binding`]); `None` is the TCP prologue.
    /// With a binding the halves left are QUIC-bound (no Noise encryption after the
    /// handshake), so `r`/`w` must be the stream of the QUIC connection whose exporter it is:
    /// only the QUIC shell ([`super::quic`]) calls it.
    pub(crate) async fn handshake_bound(
        r: R,
        w: W,
        local: &UserIdentity,
        initiator: bool,
        expected: Option<IdentityKey>,
        limits: HandshakeLimits,
        binding: Option<Exporter>,
    ) -> Result<Self, ConnectionError> {
        tokio::time::timeout(
            limits.timeout,
            Self::run_handshake(
                r,
                w,
                local,
                initiator,
                expected,
                limits.verified.as_ref(),
                binding,
            ),
        )
        .await
        .map_err(|_| ConnectionError::Timeout(limits.timeout))?
    }

    async fn run_handshake(
        mut r: R,
        mut w: W,
        local: &UserIdentity,
        initiator: bool,
        expected: Option<IdentityKey>,
        verified: Option<&VerifiedCache>,
        binding: Option<Exporter>,
    ) -> Result<Self, ConnectionError> {
        let ours = VersionHeader(Version::CURRENT);
        w.write_all(&ours.encode()).await?;
        let mut theirs = [0u8; HEADER_LEN];
        r.read_exact(&mut theirs).await?;
        let theirs = VersionHeader::decode(&theirs)?;
        let version = version::negotiate(Version::CURRENT, theirs.0)?;
        let (i, r_) = if initiator {
            (ours, theirs)
        } else {
            (theirs, ours)
        };
        let prologue = match &binding {
            None => super::prologue(i, r_),
            Some(x) => crate::transport::binding::prologue(i, r_, x),
        };
        let mut hs = if initiator {
            Handshake::initiator(local, &prologue, expected)?
        } else {
            Handshake::responder(local, &prologue)?
        };
        if let Some(cache) = verified {
            hs = hs.with_verified_cache(cache.clone());
        }
        let mut frames = FrameReader::new(r);
        let mut scratch = Vec::new();
        while !hs.is_finished() {
            if hs.is_my_turn() {
                let msg = hs.write_message()?;
                framed::write(&mut w, &msg, &mut scratch).await?;
            } else {
                let max = hs.max_incoming();
                let msg = frames.read(max).await?;
                hs.read_message(msg)?;
            }
        }
        w.flush().await?;
        let handshake_hash = hs.handshake_hash();
        let (mut send, mut recv, peer) = hs.finish()?;
        if binding.is_some() {
            // Bound to this QUIC connection's exporter: QUIC protects the frames from here on
            // (docs/PROTOCOL.md, "QUIC transport").
            send = send.into_quic_bound();
            recv = recv.into_quic_bound();
        }
        Ok(Connection {
            peer,
            version,
            handshake_hash,
            reader: Reader {
                frames,
                recv,
                quic: None,
            },
            writer: Writer {
                inner: w,
                send,
                buf: Vec::new(),
            },
            transport: Transport::Tcp,
            remote: None,
        })
    }

    /// Sends one envelope.
    pub async fn send(&mut self, env: &Envelope) -> Result<(), ConnectionError> {
        self.writer.send(env).await
    }

    /// Receives the next envelope.
    pub async fn recv(&mut self) -> Result<Envelope, ConnectionError> {
        self.reader.recv().await
    }

    /// Splits into independently usable halves.
    pub fn split(self) -> (Identity, Reader<R>, Writer<W>) {
        (self.peer, self.reader, self.writer)
    }
}

impl<R: AsyncRead + Unpin> Reader<R> {
    /// Receives the next complete envelope (reassembling chunks). On a QUIC-bound reader any
    /// failure other than a clean close also closes the QUIC connection with application code
    /// [`crate::transport::quic::CLOSE_PROTOCOL`] (the peer sees why the connection ended).
    pub async fn recv(&mut self) -> Result<Envelope, ConnectionError> {
        let r = self.recv_inner().await;
        if let (Err(e), Some(q)) = (&r, &self.quic) {
            if !e.is_closed() {
                q.close(
                    crate::transport::quic::CLOSE_PROTOCOL.into(),
                    b"bad frame",
                );
            }
        }
        r
    }

    /// Closes `conn` when a frame breaks the protocol (see [`Reader::recv`]).
    pub(crate) fn close_on_violation(&mut self, conn: quinn::Connection) {
        self.quic = Some(conn);
    }

    async fn recv_inner(&mut self) -> Result<Envelope, ConnectionError> {
        loop {
            let frame = match self.recv.framing() {
                Framing::Noise => self.frames.read(MAX_FRAME).await?,
                Framing::Quic { max } => self.frames.read_long(max).await?,
            };
            if let Some(env) = self.recv.open(frame, Instant::now())? {
                return Ok(env);
            }
        }
    }

    /// The transport half (limits, statistics).
    pub fn transport(&mut self) -> &mut RecvHalf {
        &mut self.recv
    }

    /// Re-wraps the underlying reader (e.g. in a read-ahead buffer), keeping the transport
    /// state. Nothing is lost: the framer never reads past the frame it returns.
    pub fn map_inner<R2: AsyncRead + Unpin>(self, f: impl FnOnce(R) -> R2) -> Reader<R2> {
        Reader {
            frames: FrameReader::new(f(self.frames.into_inner())),
            recv: self.recv,
            quic: self.quic,
        }
    }
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    /// Sends one envelope (chunked when larger than a frame) with one write.
    pub async fn send(&mut self, env: &Envelope) -> Result<(), ConnectionError> {
        self.buf.clear();
        self.send.seal(env, &mut self.buf)?;
        self.inner.write_all(&self.buf).await?;
        if self.buf.capacity() > 4 * MAX_FRAME {
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// Sends several envelopes with one write.
    pub async fn send_all(&mut self, envs: &[Envelope]) -> Result<(), ConnectionError> {
        self.buf.clear();
        for env in envs {
            self.send.seal(env, &mut self.buf)?;
        }
        self.inner.write_all(&self.buf).await?;
        Ok(())
    }

    /// The transport half (limits).
    pub fn transport(&mut self) -> &mut SendHalf {
        &mut self.send
    }

    /// Shuts the write side down.
    pub async fn shutdown(&mut self) -> Result<(), ConnectionError> {
        self.inner.shutdown().await?;
        Ok(())
    }
}
