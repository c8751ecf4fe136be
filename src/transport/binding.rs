//! QUIC channel binding: the Noise prologue of a QUIC connection. Pure: no I/O, no clock.
//!
//! A QUIC connection is authenticated in two layers (docs/PROTOCOL.md, "QUIC transport"):
//! 1. QUIC-TLS 1.3 with a throwaway self-signed certificate that nobody checks: it gives the
//!    connection its packet protection, which after step 2 is the only encryption of the
//!    relay-protocol frames.
//! 2. Noise XX (the same handshake, identity checks and TOFU as over TCP) on the first
//!    bidirectional stream, with a prologue that binds the TLS exporter value of *this* QUIC
//!    connection ([`EXPORTER_LABEL`], [`EXPORTER_CONTEXT`], [`EXPORTER_LEN`] bytes, RFC 8446
//!    section 7.5) and both version headers.
//!
//! A party that terminates QUIC in the middle holds two QUIC connections with two different
//! exporter values, so the two ends feed different prologues into Noise and the handshake fails
//! with the Noise handshake's coarse decryption error at the first authenticated message.
//!
//! Prologue bytes: `"SREMP-1 quic-bound-prologue\0"` (28 bytes) || initiator version header
//! (7) || responder version header (7) || exporter value (32) = 74 bytes. The label differs
//! from the TCP prologue's, so a transcript can never be moved between the two transports,
//! and from the first QUIC label (`quic-noise-prologue`, ALPN `sremp/1`, Noise transport
//! frames inside QUIC), so the handshake also commits both ends to the frame mode that
//! follows it: unencrypted `u32be(len) || envelope` frames inside QUIC.

use crate::wire::VersionHeader;

/// TLS exporter label (RFC 8446 section 7.5).
pub const EXPORTER_LABEL: &[u8] = b"EXPORTER-SREMP-1 quic-noise-binding";
/// TLS exporter context (empty, but present: RFC 8446 treats absent and empty the same).
pub const EXPORTER_CONTEXT: &[u8] = b"";
/// Bytes of exporter output bound into the prologue.
pub const EXPORTER_LEN: usize = 32;
/// Label that starts the QUIC prologue.
pub const QUIC_PROLOGUE_LABEL: &[u8] = b"SREMP-1 quic-bound-prologue\0";
/// Length of [`prologue`]'s output.
pub const PROLOGUE_LEN: usize = QUIC_PROLOGUE_LABEL.len() + 7 + 7 + EXPORTER_LEN;

/// The exporter value of one QUIC connection.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Exporter(pub [u8; EXPORTER_LEN]);

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A channel binding is not a secret, but there is no reason to print it whole.
        write!(
            f,
            "Exporter({}..)",
            hex::encode(self.0.get(..4).unwrap_or(&[]))
        )
    }
}

/// The Noise prologue of a QUIC connection (see the module docs for the layout).
pub fn prologue(
    initiator: VersionHeader,
    responder: VersionHeader,
    exporter: &Exporter,
) -> Vec<u8> {
    let mut p = Vec::with_capacity(PROLOGUE_LEN);
    p.extend_from_slice(QUIC_PROLOGUE_LABEL);
    p.extend_from_slice(&initiator.encode());
    p.extend_from_slice(&responder.encode());
    p.extend_from_slice(&exporter.0);
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Version;

    #[test]
    fn layout() {
        let h = VersionHeader(Version::CURRENT);
        let p = prologue(h, h, &Exporter([7; 32]));
        assert_eq!(p.len(), PROLOGUE_LEN);
        assert!(p.starts_with(QUIC_PROLOGUE_LABEL));
        assert!(p.ends_with(&[7; 32]));
        assert_ne!(p, prologue(h, h, &Exporter([8; 32])));
        // Never equal to (or a prefix-extension of) the TCP prologue: checked beside the TCP
        // prologue, in the Noise channel's QUIC shell (transport does not import noise).
    }
}
