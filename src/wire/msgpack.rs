//! Bounded MessagePack decoding.
//!
//! [`value_len`] walks one MessagePack value iteratively (no recursion) and returns its length in
//! bytes, failing if any declared length runs past the input, any container declares more
//! elements than there are bytes left, or nesting exceeds the depth limit. Only after that does
//! [`decode`] hand the bytes to serde, so no allocation is ever sized by a peer's claim beyond the
//! input it actually sent.
//!
//! [`Reader`] is the strict streaming reader for the hand-written end-to-end formats (no serde):
//! the one other way SREMP reads MessagePack, kept here so there is one place that does.

use super::{DecodeError, MAX_DEPTH};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Encodes a value as compact MessagePack (structs as arrays).
pub fn encode<T: Serialize + ?Sized>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    encode_into(value, &mut out);
    out
}

/// Appends the MessagePack encoding of `value` to `out`.
pub fn encode_into<T: Serialize + ?Sized>(value: &T, out: &mut Vec<u8>) {
    // Writing to a Vec cannot fail, and our types contain no maps with non-string keys or other
    // constructs rmp-serde refuses; an error here would be a bug in a type definition.
    if let Err(e) = rmp_serde::encode::write(out, value) {
        tracing::error!(error = %e, "msgpack encoding failed (type definition bug)");
        debug_assert!(false, "msgpack encoding failed: {e}");
    }
}

/// Decodes exactly one value that must span all of `bytes`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, DecodeError> {
    let n = value_len(bytes, MAX_DEPTH)?;
    if n != bytes.len() {
        return Err(DecodeError::TrailingData {
            extra: bytes.len() - n,
        });
    }
    Ok(rmp_serde::from_slice(bytes)?)
}

/// A strict streaming MessagePack reader over a byte slice, for hand-written formats whose
/// exact bytes matter (the end-to-end message, its header and payload): each call reads one
/// value of the expected type, lengths are checked against the caller's limit and against
/// the bytes left before anything is borrowed, and [`Reader::finish`] refuses trailing bytes.
/// Borrows from the input; never allocates.
pub struct Reader<'a> {
    buf: &'a [u8],
}

/// Any rmp read failure: wrong marker, truncated, or out of the target type's range.
fn bad_value<E>(_: E) -> DecodeError {
    DecodeError::Invalid {
        what: "msgpack value",
        why: "bad msgpack value",
    }
}

impl<'a> Reader<'a> {
    /// Reads from the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }

    /// An array header: the element count.
    pub fn array_len(&mut self) -> Result<u32, DecodeError> {
        rmp::decode::read_array_len(&mut self.buf).map_err(bad_value)
    }

    /// An unsigned integer (any width).
    pub fn uint(&mut self) -> Result<u64, DecodeError> {
        rmp::decode::read_int::<u64, _>(&mut self.buf).map_err(bad_value)
    }

    /// An unsigned integer that fits in 32 bits.
    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        rmp::decode::read_int::<u32, _>(&mut self.buf).map_err(bad_value)
    }

    /// A `bin` of at most `max` bytes.
    pub fn bin(&mut self, max: usize) -> Result<&'a [u8], DecodeError> {
        let len = rmp::decode::read_bin_len(&mut self.buf).map_err(bad_value)? as usize;
        self.take("bin", len, max)
    }

    /// A `str` of at most `max` bytes.
    pub fn str(&mut self, max: usize) -> Result<&'a str, DecodeError> {
        let len = rmp::decode::read_str_len(&mut self.buf).map_err(bad_value)? as usize;
        let bytes = self.take("str", len, max)?;
        std::str::from_utf8(bytes).map_err(|_| DecodeError::Invalid {
            what: "str",
            why: "invalid UTF-8",
        })
    }

    fn take(
        &mut self,
        what: &'static str,
        len: usize,
        max: usize,
    ) -> Result<&'a [u8], DecodeError> {
        if len > max {
            return Err(DecodeError::TooLarge { what, len, max });
        }
        if len > self.buf.len() {
            return Err(DecodeError::Truncated);
        }
        let (head, rest) = self.buf.split_at(len);
        self.buf = rest;
        Ok(head)
    }

    /// A `bin` of exactly `N` bytes.
    pub fn bin_array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let b = self.bin(N)?;
        <[u8; N]>::try_from(b).map_err(|_| DecodeError::Invalid {
            what: "bin",
            why: "wrong byte-string length",
        })
    }

    /// Succeeds only if every byte was read.
    pub fn finish(&self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingData {
                extra: self.buf.len(),
            })
        }
    }
}

fn be(bytes: &[u8], pos: usize, n: usize) -> Result<usize, DecodeError> {
    let s = bytes.get(pos..pos + n).ok_or(DecodeError::Truncated)?;
    let mut v: u64 = 0;
    for b in s {
        v = (v << 8) | u64::from(*b);
    }
    usize::try_from(v).map_err(|_| DecodeError::Truncated)
}

/// Length in bytes of the first MessagePack value in `bytes`, checking bounds and depth.
pub fn value_len(bytes: &[u8], max_depth: usize) -> Result<usize, DecodeError> {
    let mut pos = 0usize;
    // Remaining items in each open container; the bottom entry is the single top-level value.
    let mut stack: Vec<usize> = Vec::with_capacity(max_depth.min(32) + 1);
    stack.push(1);
    while let Some(top) = stack.last_mut() {
        if *top == 0 {
            stack.pop();
            continue;
        }
        *top -= 1;
        let m = *bytes.get(pos).ok_or(DecodeError::Truncated)?;
        let remaining = bytes.len() - pos;
        // (header bytes, payload bytes, child items)
        let (header, payload, children) = match m {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (1, 0, 0),
            0x80..=0x8f => (1, 0, 2 * usize::from(m & 0x0f)),
            0x90..=0x9f => (1, 0, usize::from(m & 0x0f)),
            0xa0..=0xbf => (1, usize::from(m & 0x1f), 0),
            0xc1 => return Err(DecodeError::ReservedMarker),
            0xc4 | 0xd9 => (2, be(bytes, pos + 1, 1)?, 0),
            0xc5 | 0xda => (3, be(bytes, pos + 1, 2)?, 0),
            0xc6 | 0xdb => (5, be(bytes, pos + 1, 4)?, 0),
            0xc7 => (3, be(bytes, pos + 1, 1)?, 0),
            0xc8 => (4, be(bytes, pos + 1, 2)?, 0),
            0xc9 => (6, be(bytes, pos + 1, 4)?, 0),
            0xca | 0xce | 0xd2 => (5, 0, 0),
            0xcb | 0xcf | 0xd3 => (9, 0, 0),
            0xcc | 0xd0 => (2, 0, 0),
            0xcd | 0xd1 => (3, 0, 0),
            0xd4 => (3, 0, 0),
            0xd5 => (4, 0, 0),
            0xd6 => (6, 0, 0),
            0xd7 => (10, 0, 0),
            0xd8 => (18, 0, 0),
            0xdc => (3, 0, be(bytes, pos + 1, 2)?),
            0xdd => (5, 0, be(bytes, pos + 1, 4)?),
            0xde => (3, 0, 2usize.saturating_mul(be(bytes, pos + 1, 2)?)),
            0xdf => (5, 0, 2usize.saturating_mul(be(bytes, pos + 1, 4)?)),
        };
        let size = header + payload;
        if size > remaining {
            return Err(DecodeError::Truncated);
        }
        pos += size;
        if children > 0 {
            // Every child takes at least one byte.
            if children > bytes.len() - pos {
                return Err(DecodeError::Truncated);
            }
            if stack.len() > max_depth {
                return Err(DecodeError::TooDeep { max: max_depth });
            }
            stack.push(children);
        }
    }
    Ok(pos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn lengths_of_simple_values() {
        assert_eq!(value_len(&[0x01], 4).unwrap(), 1);
        assert_eq!(
            value_len(&[0x92, 0x01, 0xc4, 0x01, 0xff, 0x00], 4).unwrap(),
            5
        );
        assert!(matches!(
            value_len(&[0x92, 0x01], 4),
            Err(DecodeError::Truncated)
        ));
        assert!(matches!(
            value_len(&[0xc6, 0xff, 0xff, 0xff, 0xff], 4),
            Err(DecodeError::Truncated)
        ));
        assert!(matches!(
            value_len(&[0xdd, 0xff, 0xff, 0xff, 0xff], 4),
            Err(DecodeError::Truncated)
        ));
        assert!(matches!(
            value_len(&[0xc1], 4),
            Err(DecodeError::ReservedMarker)
        ));
    }

    #[test]
    fn depth_is_bounded() {
        let mut deep = vec![0x91u8; 100];
        deep.push(0x00);
        assert!(matches!(
            value_len(&deep, MAX_DEPTH),
            Err(DecodeError::TooDeep { .. })
        ));
        let mut ok = vec![0x91u8; MAX_DEPTH];
        ok.push(0x00);
        assert_eq!(value_len(&ok, MAX_DEPTH).unwrap(), ok.len());
    }

    #[test]
    fn trailing_data_is_an_error() {
        assert!(matches!(
            decode::<u8>(&[0x01, 0x02]),
            Err(DecodeError::TrailingData { extra: 1 })
        ));
    }

    proptest! {
        #[test]
        fn scan_agrees_with_rmp_serde(v in proptest::collection::vec(any::<(u64, String, Vec<u8>, Option<bool>)>(), 0..8)) {
            let bytes = encode(&v);
            prop_assert_eq!(value_len(&bytes, MAX_DEPTH).unwrap(), bytes.len());
            let back: Vec<(u64, String, serde_bytes::ByteBuf, Option<bool>)> = decode(&bytes).unwrap();
            prop_assert_eq!(back.len(), v.len());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = value_len(&bytes, MAX_DEPTH);
            let _ = decode::<Vec<(u64, String)>>(&bytes);
        }
    }
}
