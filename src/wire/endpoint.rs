//! `DNSEndpoint` of the draft: a host name or IP address and a port, plus (our extension) the
//! transport to reach it with.
//!
//! Wire form: `[host: str, port: u16]` for TCP, exactly as in the draft, and
//! `[host: str, port: u16, "quic"]` for a QUIC (UDP) endpoint. Text form: `host:port` and
//! `quic://host:port` (`tcp://host:port` is accepted for TCP). Decoders built before QUIC refuse
//! the three-element form, so a node lists a QUIC endpoint only when configured to
//! (docs/PROTOCOL.md, "QUIC transport").

use super::DecodeError;
use serde::de::{Error as _, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// The transport tag of a QUIC endpoint on the wire.
pub const QUIC_TAG: &str = "quic";
/// The text prefix of a QUIC endpoint.
pub const QUIC_SCHEME: &str = "quic://";

/// Which transport a connection runs on (and an endpoint names): TCP or QUIC. The QUIC
/// endpoint itself is in the transport shell, which re-exports this type.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// TCP.
    #[default]
    Tcp,
    /// QUIC over UDP.
    Quic,
}

impl Transport {
    /// Stable name: `"tcp"` or `"quic"`.
    pub fn name(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Quic => "quic",
        }
    }

    /// The path name of a direct message on this transport: `"direct-tcp"` or `"direct-quic"`.
    pub fn direct_path(self) -> &'static str {
        match self {
            Transport::Tcp => "direct-tcp",
            Transport::Quic => "direct-quic",
        }
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Longest host name accepted (RFC 1035).
pub const MAX_HOST_LEN: usize = 253;

/// A host (DNS name or IP literal), a port and a transport. See the module docs for encodings.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Endpoint {
    host: String,
    port: u16,
    transport: Transport,
}

impl Serialize for Endpoint {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.transport {
            Transport::Tcp => {
                let mut t = s.serialize_tuple(2)?;
                t.serialize_element(&self.host)?;
                t.serialize_element(&self.port)?;
                t.end()
            }
            Transport::Quic => {
                let mut t = s.serialize_tuple(3)?;
                t.serialize_element(&self.host)?;
                t.serialize_element(&self.port)?;
                t.serialize_element(QUIC_TAG)?;
                t.end()
            }
        }
    }
}

struct EndpointVisitor;

impl<'de> Visitor<'de> for EndpointVisitor {
    type Value = Endpoint;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[host, port] or [host, port, \"quic\"]")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Endpoint, A::Error> {
        let host: String = seq
            .next_element()?
            .ok_or_else(|| A::Error::invalid_length(0, &self))?;
        let port: u16 = seq
            .next_element()?
            .ok_or_else(|| A::Error::invalid_length(1, &self))?;
        let tag: Option<String> = seq.next_element()?;
        if seq.next_element::<serde::de::IgnoredAny>()?.is_some() {
            return Err(A::Error::invalid_length(4, &self));
        }
        let transport = match tag.as_deref() {
            None => Transport::Tcp,
            Some(QUIC_TAG) => Transport::Quic,
            Some(_) => return Err(A::Error::custom("unknown endpoint transport")),
        };
        Endpoint::new(host, port)
            .map(|e| e.with_transport(transport))
            .map_err(A::Error::custom)
    }
}

impl<'de> Deserialize<'de> for Endpoint {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Endpoint, D::Error> {
        d.deserialize_seq(EndpointVisitor)
    }
}

impl Endpoint {
    /// A validated endpoint.
    pub fn new(host: impl Into<String>, port: u16) -> Result<Self, DecodeError> {
        let host = host.into();
        // One pair of brackets around an IPv6 literal is accepted and removed.
        let h = match host.strip_prefix('[').and_then(|x| x.strip_suffix(']')) {
            Some(inner) if inner.contains(':') => inner,
            _ => host.as_str(),
        };

        if h.is_empty() || h.len() > MAX_HOST_LEN {
            return Err(DecodeError::Invalid {
                what: "endpoint host",
                why: "must be 1 to 253 bytes",
            });
        }
        let is_ip = h.parse::<std::net::IpAddr>().is_ok();
        let is_name = !h.contains(':')
            && h.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_'))
            });
        if !is_ip && !is_name {
            return Err(DecodeError::Invalid {
                what: "endpoint host",
                why: "must be a DNS name or IP address",
            });
        }
        Ok(Endpoint {
            host: h.to_string(),
            port,
            transport: Transport::Tcp,
        })
    }

    /// The same host and port on `transport`.
    pub fn with_transport(mut self, transport: Transport) -> Self {
        self.transport = transport;
        self
    }

    /// The transport to reach it with.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The host.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// From a socket address.
    pub fn from_socket_addr(addr: std::net::SocketAddr) -> Self {
        Endpoint {
            host: addr.ip().to_string(),
            port: addr.port(),
            transport: Transport::Tcp,
        }
    }

    /// `host:port` (no transport prefix) in the form `tokio::net::lookup_host` and
    /// `TcpStream::connect` take.
    pub fn to_connect_string(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.transport == Transport::Quic {
            f.write_str(QUIC_SCHEME)?;
        }
        f.write_str(&self.to_connect_string())
    }
}

impl std::str::FromStr for Endpoint {
    type Err = DecodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = DecodeError::Invalid {
            what: "endpoint",
            why: "expected host:port or quic://host:port",
        };
        let (s, transport) = if let Some(rest) = s.strip_prefix(QUIC_SCHEME) {
            (rest, Transport::Quic)
        } else if let Some(rest) = s.strip_prefix("tcp://") {
            (rest, Transport::Tcp)
        } else {
            (s, Transport::Tcp)
        };
        let (host, port) = s.rsplit_once(':').ok_or(bad)?;
        let port: u16 = port.parse().map_err(|_| DecodeError::Invalid {
            what: "endpoint port",
            why: "not a number from 0 to 65535",
        })?;
        Endpoint::new(host, port).map(|e| e.with_transport(transport))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_display_and_wire() {
        let e: Endpoint = "127.0.0.1:7000".parse().unwrap();
        assert_eq!(e.to_string(), "127.0.0.1:7000");
        let v6: Endpoint = "[::1]:9".parse().unwrap();
        assert_eq!(v6.to_string(), "[::1]:9");
        let bytes = crate::wire::msgpack::encode(&e);
        assert_eq!(crate::wire::msgpack::decode::<Endpoint>(&bytes).unwrap(), e);
        assert!("bad host:1".parse::<Endpoint>().is_err());
        assert!(":1".parse::<Endpoint>().is_err());
        assert!("[[::1]]:1".parse::<Endpoint>().is_err());
        assert!("a..b:1".parse::<Endpoint>().is_err());
        assert!("-a:1".parse::<Endpoint>().is_err());
        assert_eq!(
            "relay.example.org:443".parse::<Endpoint>().unwrap().host(),
            "relay.example.org"
        );
    }

    #[test]
    fn quic_endpoints() {
        let tcp: Endpoint = "127.0.0.1:7000".parse().unwrap();
        // A TCP endpoint's wire form is the draft's two-element array, unchanged.
        assert_eq!(
            crate::wire::msgpack::encode(&tcp),
            vec![
                0x92, 0xa9, b'1', b'2', b'7', b'.', b'0', b'.', b'0', b'.', b'1', 0xcd, 0x1b, 0x58
            ]
        );
        let q: Endpoint = "quic://[::1]:9".parse().unwrap();
        assert_eq!(q.transport(), Transport::Quic);
        assert_eq!(q.to_string(), "quic://[::1]:9");
        assert_eq!(q.to_connect_string(), "[::1]:9");
        let bytes = crate::wire::msgpack::encode(&q);
        assert_eq!(bytes.first(), Some(&0x93));
        assert!(bytes.ends_with(b"\xa4quic"));
        assert_eq!(crate::wire::msgpack::decode::<Endpoint>(&bytes).unwrap(), q);
        assert_eq!("tcp://127.0.0.1:7000".parse::<Endpoint>().unwrap(), tcp);
        // Unknown tags and extra elements are refused.
        let mut bad = bytes.clone();
        let n = bad.len();
        bad[n - 4..].copy_from_slice(b"quac");
        assert!(crate::wire::msgpack::decode::<Endpoint>(&bad).is_err());
        let mut four = vec![0x94];
        four.extend_from_slice(&bytes[1..]);
        four.push(0x01);
        assert!(crate::wire::msgpack::decode::<Endpoint>(&four).is_err());
        assert!("quic://bad host:1".parse::<Endpoint>().is_err());
    }
}
