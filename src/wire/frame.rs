//! The one frame codec: every SREMP connection carries `u16be(len) || body` frames.
//!
//! On Noise connections the body is one Noise message (handshake or transport, at most 65535
//! bytes as the Noise specification allows); on rendezvous TLS connections it is one envelope.
//! The one other form: after the bound handshake on a QUIC stream, `u32be(len) || envelope`
//! frames ([`LONG_HEADER`], [`long_body_len`]; docs/PROTOCOL.md, "QUIC transport").
//! This file is the format without I/O: [`encode`] and the length check [`body_len`]. The async
//! reader and writer that use them on a socket are the noise module's `framed` shell.

/// Largest body a frame can carry (the u16 length field).
pub const MAX_FRAME: usize = u16::MAX as usize;

/// Why reading or writing a frame failed.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The peer declared a frame longer than this connection accepts at this point.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Declared length.
        len: usize,
        /// Limit in force.
        max: usize,
    },
    /// The connection closed cleanly between frames.
    #[error("connection closed")]
    Closed,
    /// Socket error (including the connection closing inside a frame).
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// Writes `len || body` into `out` (cleared first). Fails if `body` is over [`MAX_FRAME`].
pub fn encode(body: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    let len = u16::try_from(body.len()).map_err(|_| FrameError::TooLarge {
        len: body.len(),
        max: MAX_FRAME,
    })?;
    out.clear();
    out.reserve(2 + body.len());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    Ok(())
}

/// The body length a frame header declares, refused if it is over `max` (checked before the
/// body is read or any buffer is sized).
pub fn body_len(header: [u8; 2], max: usize) -> Result<usize, FrameError> {
    let len = usize::from(u16::from_be_bytes(header));
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

/// Length-field bytes of a QUIC-bound frame: `u32be(len) || envelope`.
pub const LONG_HEADER: usize = 4;

/// The body length a QUIC-bound frame header declares, refused if it is over `max` (checked
/// before the body is read).
pub fn long_body_len(header: [u8; LONG_HEADER], max: usize) -> Result<usize, FrameError> {
    let len = usize::try_from(u32::from_be_bytes(header)).unwrap_or(usize::MAX);
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oversized_body_is_refused() {
        let mut out = Vec::new();
        assert!(encode(&vec![0u8; MAX_FRAME + 1], &mut out).is_err());
        encode(&vec![0u8; MAX_FRAME], &mut out).unwrap();
        assert_eq!(&out[..2], &[0xff, 0xff]);
    }

    #[test]
    fn declared_long_length_is_checked_against_the_limit() {
        assert_eq!(long_body_len([0, 1, 0, 0], 65_536).unwrap(), 65_536);
        assert!(matches!(
            long_body_len([0xff; 4], 4 << 20),
            Err(FrameError::TooLarge {
                len: 0xffff_ffff,
                max: 0x40_0000
            })
        ));
    }

    #[test]
    fn declared_length_is_checked_against_the_limit() {
        assert_eq!(body_len([0, 10], 10).unwrap(), 10);
        assert!(matches!(
            body_len([0x03, 0xe8], 999),
            Err(FrameError::TooLarge {
                len: 1000,
                max: 999
            })
        ));
    }
}
