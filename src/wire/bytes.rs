//! Serde helpers: fixed-size byte arrays as MessagePack `bin` (never as arrays of integers).

use serde::de::{Error as _, Visitor};
use serde::{Deserializer, Serializer};
use std::fmt;

/// `#[serde(with = "crate::wire::bytes::fixed")]` for `[u8; N]`.
pub mod fixed {
    use super::*;

    /// Serializes as `bin`.
    pub fn serialize<S: Serializer, const N: usize>(v: &[u8; N], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    /// Deserializes a `bin` of exactly N bytes.
    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        struct V<const N: usize>;
        impl<'de, const N: usize> Visitor<'de> for V<N> {
            type Value = [u8; N];
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a byte string of length {N}")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<Self::Value, E> {
                <[u8; N]>::try_from(v).map_err(|_| E::invalid_length(v.len(), &self))
            }
        }
        d.deserialize_bytes(V::<N>).map_err(D::Error::custom)
    }
}

/// `#[serde(with = "crate::wire::bytes::fixed_opt")]` for `Option<[u8; N]>`: nil or a `bin` of
/// exactly N bytes (the same bytes as an `Option` of a newtype over [`fixed`]).
pub mod fixed_opt {
    use super::*;

    /// Serializes as nil or `bin`.
    pub fn serialize<S: Serializer, const N: usize>(
        v: &Option<[u8; N]>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(b) => s.serialize_some(serde_bytes::Bytes::new(b)),
            None => s.serialize_none(),
        }
    }

    /// Deserializes nil or a `bin` of exactly N bytes.
    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<Option<[u8; N]>, D::Error> {
        struct V<const N: usize>;
        impl<'de, const N: usize> Visitor<'de> for V<N> {
            type Value = Option<[u8; N]>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "nil or a byte string of length {N}")
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
                Ok(None)
            }
            fn visit_some<D2: Deserializer<'de>>(self, d: D2) -> Result<Self::Value, D2::Error> {
                super::fixed::deserialize(d).map(Some)
            }
        }
        d.deserialize_option(V::<N>)
    }
}

/// `#[serde(with = "crate::wire::bytes::fixed_vec")]` for `Vec<[u8; N]>`.
pub mod fixed_vec {
    use super::*;
    use serde::ser::SerializeSeq;

    /// Serializes as an array of `bin`.
    pub fn serialize<S: Serializer, const N: usize>(
        v: &[[u8; N]],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(v.len()))?;
        for item in v {
            seq.serialize_element(serde_bytes::Bytes::new(item))?;
        }
        seq.end()
    }

    /// Deserializes an array of `bin`s of exactly N bytes each.
    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<Vec<[u8; N]>, D::Error> {
        let raw: Vec<serde_bytes::ByteBuf> = serde::Deserialize::deserialize(d)?;
        raw.into_iter()
            .map(|b| {
                <[u8; N]>::try_from(b.as_slice())
                    .map_err(|_| D::Error::invalid_length(b.len(), &"N bytes"))
            })
            .collect()
    }
}
