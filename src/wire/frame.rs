//! The one frame codec: every SREMP connection carries `u16be(len) || body` frames.
//!
//! On Noise connections the body is one Noise message (handshake or transport, at most 65535
//! bytes as the Noise specification allows); on rendezvous TLS connections it is one envelope.
//! The reader checks the declared length against the caller's limit before allocating or
//! reading the body, and reuses one growable buffer per connection.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

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

/// Reads frames from one half of a connection.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Wraps a reader.
    pub fn new(inner: R) -> Self {
        FrameReader {
            inner,
            buf: Vec::new(),
        }
    }

    /// Reads the next frame body (at most `max` bytes). The slice lives until the next call.
    pub async fn read(&mut self, max: usize) -> Result<&mut [u8], FrameError> {
        let mut len = [0u8; 2];
        // Distinguish a clean close between frames from a close inside one.
        let n = self.inner.read(&mut len[..1]).await?;
        if n == 0 {
            return Err(FrameError::Closed);
        }
        self.inner.read_exact(&mut len[1..]).await?;
        let len = usize::from(u16::from_be_bytes(len));
        if len > max {
            return Err(FrameError::TooLarge { len, max });
        }
        self.buf.resize(len, 0);
        self.inner.read_exact(&mut self.buf[..len]).await?;
        Ok(&mut self.buf[..len])
    }

    /// The wrapped reader.
    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// Unwraps.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// Writes one already-encoded frame (`len || body`) and nothing else.
pub async fn write_raw<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8]) -> Result<(), FrameError> {
    w.write_all(frame).await?;
    Ok(())
}

/// Writes `len || body` with one write call.
pub async fn write<W: AsyncWrite + Unpin>(
    w: &mut W,
    body: &[u8],
    scratch: &mut Vec<u8>,
) -> Result<(), FrameError> {
    encode(body, scratch)?;
    write_raw(w, scratch).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn round_trip_and_limit() {
        let (mut a, b) = tokio::io::duplex(1 << 20);
        let mut scratch = Vec::new();
        write(&mut a, b"hello", &mut scratch).await.unwrap();
        write(&mut a, &[7u8; 1000], &mut scratch).await.unwrap();
        let mut r = FrameReader::new(b);
        assert_eq!(r.read(10).await.unwrap(), b"hello");
        assert!(matches!(
            r.read(999).await,
            Err(FrameError::TooLarge {
                len: 1000,
                max: 999
            })
        ));
        drop(a);
    }

    #[tokio::test]
    async fn clean_close_vs_truncation() {
        let (a, b) = tokio::io::duplex(64);
        drop(a);
        let mut r = FrameReader::new(b);
        assert!(matches!(r.read(10).await, Err(FrameError::Closed)));

        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(&[0, 5, 1, 2]).await.unwrap();
        drop(a);
        let mut r = FrameReader::new(b);
        assert!(matches!(r.read(10).await, Err(FrameError::Io(_))));
    }

    #[test]
    fn oversized_body_is_refused() {
        let mut out = Vec::new();
        assert!(encode(&vec![0u8; MAX_FRAME + 1], &mut out).is_err());
        encode(&vec![0u8; MAX_FRAME], &mut out).unwrap();
        assert_eq!(&out[..2], &[0xff, 0xff]);
    }
}
