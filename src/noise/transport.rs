//! Transport halves: seal envelopes into frames, open frames into envelopes.
//!
//! Each half owns its direction's nonce (starting at 0 and incremented per message), so the
//! read and write halves of a connection can live in different tasks without a lock. Frames are
//! opened strictly in order; a frame that fails to decrypt ends the connection.
//!
//! Sending: the envelope is encoded once; if it fits one Noise message it is sealed as one frame,
//! otherwise it is cut into `Chunk` envelopes ([`crate::wire::chunk`]), one frame each.
//! Receiving: chunks go through a bounded [`Reassembler`]; a finished message must decode as a
//! non-chunk envelope.
//!
//! On a QUIC connection whose Noise handshake was bound to the QUIC-TLS exporter
//! ([`crate::transport::binding`]), the halves are *QUIC-bound* ([`SendHalf::into_quic_bound`]):
//! no second encryption layer and no chunking. Each envelope is one frame
//! `u32be(len) || envelope` ([`crate::wire::frame::LONG_HEADER`]), `len` at most the
//! connection's message limit ([`Limits::max_message`], 4 MiB); QUIC's packet protection,
//! whose keys the bound handshake ties to the two authenticated identities, protects it
//! (docs/PROTOCOL.md, "QUIC transport"). A TCP connection's halves are always Noise halves:
//! only the QUIC shell, after a bound handshake, turns them QUIC-bound.

use crate::wire::chunk::{self, ChunkError, Limits, Reassembler};
use crate::wire::frame::{LONG_HEADER, MAX_FRAME};
use crate::wire::{DecodeError, Envelope, MAX_NOISE_PLAINTEXT};
use std::sync::Arc;
use std::time::Instant;

const TAG: usize = 16;

/// Why a transport message was refused. The connection should be closed.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Authentication failed (tampering, replay or reordering). No detail on purpose.
    #[error("transport decryption failed")]
    Decrypt,
    /// The plaintext is not an envelope.
    #[error("bad envelope: {0}")]
    Decode(#[from] DecodeError),
    /// Chunking rules broken.
    #[error("bad chunk: {0}")]
    Chunk(#[from] ChunkError),
    /// A reassembled message was itself a chunk.
    #[error("chunk inside a chunked message")]
    NestedChunk,
    /// An envelope larger than the connection's message limit.
    #[error("message of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Size.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// 2^64 - 1 messages in one direction.
    #[error("nonce space exhausted")]
    NonceExhausted,
    /// A `Chunk` envelope on a QUIC-bound stream, where envelopes are never chunked.
    #[error("chunk envelope on a QUIC-bound stream")]
    ChunkOnQuic,
}

/// How a half protects its frames.
enum Protection {
    /// Noise transport encryption, `u16be(len) || ciphertext` frames, chunking (TCP).
    Noise(Arc<snow::StatelessTransportState>),
    /// QUIC-bound: `u32be(len) || envelope` frames protected by QUIC's packet protection.
    Quic,
}

/// The framing a [`RecvHalf`] expects on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    /// `u16be(len) || Noise ciphertext`, `len` at most [`MAX_FRAME`].
    Noise,
    /// `u32be(len) || envelope`, `len` at most the carried limit (QUIC-bound).
    Quic {
        /// Largest body accepted.
        max: usize,
    },
}

/// The sending direction.
pub struct SendHalf {
    state: Protection,
    nonce: u64,
    next_chunk_id: u64,
    scratch: Vec<u8>,
    max_message: usize,
    hash: [u8; 32],
}

/// The receiving direction.
pub struct RecvHalf {
    state: Protection,
    nonce: u64,
    plain: Vec<u8>,
    reassembler: Reassembler,
    max_message: usize,
    hash: [u8; 32],
}

impl std::fmt::Debug for SendHalf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendHalf")
            .field("quic_bound", &self.is_quic_bound())
            .field("nonce", &self.nonce)
            .finish_non_exhaustive()
    }
}
impl std::fmt::Debug for RecvHalf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvHalf")
            .field("quic_bound", &self.is_quic_bound())
            .field("nonce", &self.nonce)
            .field("reassembler", &self.reassembler)
            .finish_non_exhaustive()
    }
}

impl SendHalf {
    pub(crate) fn new(state: Arc<snow::StatelessTransportState>, hash: [u8; 32]) -> Self {
        SendHalf {
            state: Protection::Noise(state),
            nonce: 0,
            next_chunk_id: 0,
            scratch: Vec::new(),
            max_message: Limits::default().max_message,
            hash,
        }
    }

    /// The Noise handshake hash of this session (channel binding).
    pub fn handshake_hash(&self) -> &[u8; 32] {
        &self.hash
    }

    /// Sets the largest envelope this side will send.
    pub fn set_max_message(&mut self, max: usize) {
        self.max_message = max;
    }

    /// Drops the Noise transport keys: from now on frames are `u32be(len) || envelope`,
    /// protected by QUIC (see the module docs). Only for a connection whose handshake was
    /// bound to its QUIC connection's exporter.
    pub(crate) fn into_quic_bound(mut self) -> Self {
        self.state = Protection::Quic;
        self
    }

    /// True when frames go out unencrypted by Noise, inside QUIC (see the module docs).
    pub fn is_quic_bound(&self) -> bool {
        matches!(self.state, Protection::Quic)
    }

    /// Encrypts one Noise message (`plaintext` at most 65519 bytes) into `out` (replaced).
    pub fn encrypt(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), TransportError> {
        out.clear();
        self.seal_into(plaintext, out)
    }

    /// Appends `u16be(len) || ciphertext` for one plaintext to `out`.
    fn seal_frame(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), TransportError> {
        let len = plaintext.len() + TAG;
        let len16 = u16::try_from(len).map_err(|_| TransportError::TooLarge {
            len,
            max: MAX_FRAME,
        })?;
        out.extend_from_slice(&len16.to_be_bytes());
        self.seal_into(plaintext, out)
    }

    fn seal_into(&mut self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), TransportError> {
        if plaintext.len() > MAX_NOISE_PLAINTEXT {
            return Err(TransportError::TooLarge {
                len: plaintext.len(),
                max: MAX_NOISE_PLAINTEXT,
            });
        }
        let Protection::Noise(state) = &self.state else {
            // QUIC-bound halves never seal (their frames are built by `seal_quic`).
            return Err(TransportError::Decrypt);
        };
        let nonce = self.nonce;
        self.nonce = nonce.checked_add(1).ok_or(TransportError::NonceExhausted)?;
        let start = out.len();
        out.resize(start + plaintext.len() + TAG, 0);
        let n = state
            .write_message(nonce, plaintext, &mut out[start..])
            .map_err(|_| TransportError::Decrypt)?;
        out.truncate(start + n);
        Ok(())
    }

    /// Appends the frames that carry `env` to `out` (one frame, or one per chunk).
    pub fn seal(&mut self, env: &Envelope, out: &mut Vec<u8>) -> Result<(), TransportError> {
        if self.is_quic_bound() {
            // Encoded straight after its length field: no copy of the envelope.
            let start = out.len();
            out.extend_from_slice(&[0; LONG_HEADER]);
            env.encode_into(out);
            return self.finish_quic_frame(out, start);
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        env.encode_into(&mut scratch);
        let result = self.seal_encoded(&scratch, out);
        if scratch.capacity() <= 2 * MAX_FRAME {
            self.scratch = scratch;
        }
        result
    }

    /// Like [`SendHalf::seal`] for an already-encoded envelope.
    pub fn seal_encoded(
        &mut self,
        encoded: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), TransportError> {
        if encoded.len() > self.max_message {
            return Err(TransportError::TooLarge {
                len: encoded.len(),
                max: self.max_message,
            });
        }
        if self.is_quic_bound() {
            let start = out.len();
            out.reserve(LONG_HEADER + encoded.len());
            out.extend_from_slice(&[0; LONG_HEADER]);
            out.extend_from_slice(encoded);
            return self.finish_quic_frame(out, start);
        }
        if encoded.len() <= MAX_NOISE_PLAINTEXT {
            return self.seal_frame(encoded, out);
        }
        let id = self.next_chunk_id;
        self.next_chunk_id = self.next_chunk_id.wrapping_add(1);
        let mut piece = Vec::with_capacity(MAX_NOISE_PLAINTEXT);
        for c in chunk::split(id, encoded) {
            piece.clear();
            Envelope::Chunk(c).encode_into(&mut piece);
            self.seal_frame(&piece, out)?;
        }
        Ok(())
    }
}

impl SendHalf {
    /// Writes the length field of the QUIC-bound frame that starts at `start` in `out` (its
    /// header placeholder and envelope already appended), or removes the frame again when the
    /// envelope is over the message limit.
    fn finish_quic_frame(&self, out: &mut Vec<u8>, start: usize) -> Result<(), TransportError> {
        let len = out.len().saturating_sub(start + LONG_HEADER);
        let len32 = u32::try_from(len).ok().filter(|_| len <= self.max_message);
        let (Some(len32), Some(header)) = (len32, out.get_mut(start..start + LONG_HEADER)) else {
            out.truncate(start);
            return Err(TransportError::TooLarge {
                len,
                max: self.max_message,
            });
        };
        header.copy_from_slice(&len32.to_be_bytes());
        Ok(())
    }
}

impl RecvHalf {
    pub(crate) fn new(state: Arc<snow::StatelessTransportState>, hash: [u8; 32]) -> Self {
        RecvHalf {
            state: Protection::Noise(state),
            nonce: 0,
            plain: Vec::new(),
            reassembler: Reassembler::new(Limits::default()),
            max_message: Limits::default().max_message,
            hash,
        }
    }

    /// Drops the Noise transport keys: from now on frames are `u32be(len) || envelope`,
    /// protected by QUIC (see the module docs). Only for a connection whose handshake was
    /// bound to its QUIC connection's exporter.
    pub(crate) fn into_quic_bound(mut self) -> Self {
        self.state = Protection::Quic;
        self
    }

    /// True when frames arrive unencrypted by Noise, inside QUIC (see the module docs).
    pub fn is_quic_bound(&self) -> bool {
        matches!(self.state, Protection::Quic)
    }

    /// The framing of the frames [`RecvHalf::open`] expects, with its limit.
    pub fn framing(&self) -> Framing {
        match self.state {
            Protection::Noise(_) => Framing::Noise,
            Protection::Quic => Framing::Quic {
                max: self.max_message,
            },
        }
    }

    /// The Noise handshake hash of this session (channel binding).
    pub fn handshake_hash(&self) -> &[u8; 32] {
        &self.hash
    }

    /// Replaces the reassembly limits.
    pub fn set_limits(&mut self, limits: Limits) {
        self.max_message = limits.max_message;
        self.reassembler = Reassembler::new(limits);
    }

    /// Decrypts one Noise message into `out` (replaced).
    pub fn decrypt(&mut self, ciphertext: &[u8], out: &mut Vec<u8>) -> Result<(), TransportError> {
        let Protection::Noise(state) = &self.state else {
            return Err(TransportError::Decrypt);
        };
        let nonce = self.nonce;
        out.resize(ciphertext.len(), 0);
        let n = state
            .read_message(nonce, ciphertext, out)
            .map_err(|_| TransportError::Decrypt)?;
        out.truncate(n);
        self.nonce = nonce.checked_add(1).ok_or(TransportError::NonceExhausted)?;
        Ok(())
    }

    /// Opens one frame body. Returns an envelope when one is complete. On a QUIC-bound half
    /// the body is the envelope itself, never a chunk.
    pub fn open(
        &mut self,
        ciphertext: &[u8],
        now: Instant,
    ) -> Result<Option<Envelope>, TransportError> {
        if self.is_quic_bound() {
            return match Envelope::decode(ciphertext)? {
                Envelope::Chunk(_) => Err(TransportError::ChunkOnQuic),
                env => Ok(Some(env)),
            };
        }
        let mut plain = std::mem::take(&mut self.plain);
        let result = self
            .decrypt(ciphertext, &mut plain)
            .and_then(|()| self.open_plain(&plain, now));
        self.plain = plain;
        result
    }

    fn open_plain(
        &mut self,
        plain: &[u8],
        now: Instant,
    ) -> Result<Option<Envelope>, TransportError> {
        self.reassembler.expire(now);
        match Envelope::decode(plain)? {
            Envelope::Chunk(c) => match self.reassembler.push(c, now)? {
                None => Ok(None),
                Some(whole) => match Envelope::decode(&whole)? {
                    Envelope::Chunk(_) => Err(TransportError::NestedChunk),
                    env => Ok(Some(env)),
                },
            },
            env => Ok(Some(env)),
        }
    }

    /// Bytes held in partial chunked messages.
    pub fn buffered(&self) -> usize {
        self.reassembler.buffered()
    }
}
