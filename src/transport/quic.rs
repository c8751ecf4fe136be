//! The QUIC endpoint (quinn): one UDP socket that both accepts and dials, its TLS
//! configuration and the TLS exporter of a connection. A raw byte carrier: it knows nothing of
//! Noise or identities.
//!
//! Flow of one connection (docs/PROTOCOL.md, "QUIC transport"):
//! 1. QUIC-TLS 1.3, ALPN [`ALPN`]. The server presents a throwaway self-signed certificate made
//!    at start-up; the client accepts any certificate (it still checks the TLS handshake
//!    signature, so the server holds the certificate's key). The certificate authenticates
//!    nobody; the bound Noise handshake (step 2) does, and from then on QUIC's packet
//!    protection is the channel's only encryption.
//! 2. Both ends compute the TLS exporter ([`exporter`], [`super::binding`]); the dialler opens
//!    the one bidirectional stream and the version exchange and Noise XX run on it exactly as
//!    over TCP, with the QUIC prologue that binds the exporter value. That step, which turns a
//!    QUIC connection into an authenticated peer connection, is the Noise channel's QUIC shell
//!    (`noise::quic`), above this module.
//! 3. Relay-protocol and direct envelopes then flow on that stream as `u32be(len) || envelope`
//!    frames, protected by QUIC's packet protection alone (no second Noise encryption layer):
//!    the bound handshake proved that the two ends of this QUIC connection, the only holders
//!    of its packet keys, are the two authenticated identities.
//!
//! Limits: a peer may open one bidirectional stream and no unidirectional ones (quinn's
//! transport parameters refuse more); an idle connection closes after `idle_timeout`.
//!
//! Not here: the Noise handshake on the stream and its deadline, admission control and the
//! handler per connection (the Noise listener serves TCP and QUIC alike), hole punching.

use super::binding::{Exporter, EXPORTER_CONTEXT, EXPORTER_LABEL, EXPORTER_LEN};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// ALPN protocol id of SREMP over QUIC. `sremp/2`: after the bound Noise handshake, frames
/// flow without Noise encryption (`u32be(len) || envelope`). Builds that spoke `sremp/1` (Noise
/// transport frames inside QUIC) fail the TLS handshake with us instead of half-talking.
pub const ALPN: &[u8] = b"sremp/2";
/// The TLS server name the dialler sends (never checked).
pub const SERVER_NAME: &str = "sremp";
/// QUIC application close code: the connection is no longer used (normal close).
pub const CLOSE_DONE: u32 = 0;
/// QUIC application close code: the peer broke the protocol (bad frame, failed handshake).
pub const CLOSE_PROTOCOL: u32 = 1;

/// QUIC settings (from `[quic]` in node-config.toml).
#[derive(Clone, Copy, Debug)]
pub struct QuicSettings {
    /// A connection with no packets for this long is closed. Default 30 s.
    pub idle_timeout: Duration,
    /// Keep-alive (PING) interval, so NAT mappings stay open. Default 10 s.
    pub keep_alive: Duration,
}

impl Default for QuicSettings {
    fn default() -> Self {
        QuicSettings {
            idle_timeout: Duration::from_secs(30),
            keep_alive: Duration::from_secs(10),
        }
    }
}

/// Why the QUIC endpoint could not be set up or a connection failed below Noise.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// Binding the UDP socket failed.
    #[error("cannot bind QUIC on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Making the TLS configuration or certificate failed (local).
    #[error("QUIC TLS setup failed: {0}")]
    Tls(String),
    /// Dialling was refused locally (bad address, endpoint closing).
    #[error("QUIC connect failed: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The QUIC connection failed or closed.
    #[error("QUIC connection failed: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// The TLS exporter was unavailable.
    #[error("QUIC TLS exporter unavailable")]
    Exporter,
    /// A `quic://` endpoint while QUIC is switched off (`[quic] enabled = false`).
    #[error("QUIC is disabled")]
    Disabled,
    /// The endpoint's host resolved to no address.
    #[error("QUIC endpoint resolved to no address")]
    NoAddress,
}

/// One QUIC endpoint: a UDP socket that accepts and dials.
#[derive(Clone, Debug)]
pub struct QuicEndpoint {
    endpoint: quinn::Endpoint,
    settings: QuicSettings,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn tls_err(e: impl std::fmt::Display) -> QuicError {
    QuicError::Tls(e.to_string())
}

fn transport_config(s: QuicSettings) -> Result<quinn::TransportConfig, QuicError> {
    let mut t = quinn::TransportConfig::default();
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(s.idle_timeout).map_err(tls_err)?,
    ));
    t.keep_alive_interval(Some(s.keep_alive));
    // One bidirectional stream per connection (the Noise channel); no unidirectional ones.
    t.max_concurrent_bidi_streams(1u32.into());
    t.max_concurrent_uni_streams(0u32.into());
    Ok(t)
}

/// Accepts any server certificate: the peer is authenticated by the Noise handshake bound to
/// this connection's exporter, not by the certificate (a different certificate means a
/// different TLS session, hence a different exporter, and that handshake fails). The TLS handshake signature is
/// still verified, so the exporter is shared only with whoever holds the certificate's key.
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The server side: a fresh self-signed certificate (P-256) for this process.
fn server_config(s: QuicSettings) -> Result<quinn::ServerConfig, QuicError> {
    let cert =
        rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_string()]).map_err(tls_err)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_pair.serialize_der()));
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)
        .map_err(tls_err)?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(tls_err)?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(Arc::new(transport_config(s)?));
    Ok(cfg)
}

/// The dialler's configuration; `initial_rtt` replaces QUIC's default initial round-trip
/// estimate (333 ms, so a lost first packet is resent after about 1 s).
fn client_config(
    s: QuicSettings,
    initial_rtt: Option<Duration>,
) -> Result<quinn::ClientConfig, QuicError> {
    let p = provider();
    let mut tls = rustls::ClientConfig::builder_with_provider(p.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(p)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(tls_err)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    let mut t = transport_config(s)?;
    if let Some(rtt) = initial_rtt {
        t.initial_rtt(rtt);
    }
    cfg.transport_config(Arc::new(t));
    Ok(cfg)
}

/// The exporter value of an established QUIC connection.
pub fn exporter(conn: &quinn::Connection) -> Result<Exporter, QuicError> {
    let mut out = [0u8; EXPORTER_LEN];
    conn.export_keying_material(&mut out, EXPORTER_LABEL, EXPORTER_CONTEXT)
        .map_err(|_| QuicError::Exporter)?;
    Ok(Exporter(out))
}

impl QuicEndpoint {
    /// Binds a UDP socket on `addr` and serves QUIC on it (needs a tokio runtime).
    pub fn bind(addr: SocketAddr, settings: QuicSettings) -> Result<QuicEndpoint, QuicError> {
        let mut endpoint = quinn::Endpoint::server(server_config(settings)?, addr)
            .map_err(|source| QuicError::Bind { addr, source })?;
        endpoint.set_default_client_config(client_config(settings, None)?);
        Ok(QuicEndpoint { endpoint, settings })
    }

    /// The bound UDP address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.endpoint.local_addr()
    }

    /// The next incoming connection attempt (`None` once the endpoint is closed).
    pub async fn accept(&self) -> Option<quinn::Incoming> {
        self.endpoint.accept().await
    }

    /// Closes every connection and stops accepting.
    pub fn close(&self) {
        self.endpoint.close(CLOSE_DONE.into(), b"shutdown");
    }

    /// A bare QUIC connection to `addr`, without the Noise channel. A node always runs the
    /// bound Noise handshake on it next (`noise::quic::connect`); tests and tools also use it
    /// alone.
    pub async fn connect_raw(&self, addr: SocketAddr) -> Result<quinn::Connection, QuicError> {
        Ok(self.endpoint.connect(addr, SERVER_NAME)?.await?)
    }

    /// [`connect_raw`](Self::connect_raw) with QUIC's initial round-trip estimate set to
    /// `initial_rtt`: a hole punch measured the round trip, and its first packet is usually
    /// dropped by the peer's NAT, so the retransmission should come after about 3 × that
    /// rather than after QUIC's default 1 s.
    pub async fn connect_raw_with_rtt(
        &self,
        addr: SocketAddr,
        initial_rtt: Duration,
    ) -> Result<quinn::Connection, QuicError> {
        let cfg = client_config(self.settings, Some(initial_rtt))?;
        Ok(self.endpoint.connect_with(cfg, addr, SERVER_NAME)?.await?)
    }
}
