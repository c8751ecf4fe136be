//! `DNSEndpoint` of the draft: a host name or IP address and a TCP port.

use super::DecodeError;
use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest host name accepted (RFC 1035).
pub const MAX_HOST_LEN: usize = 253;

/// A host (DNS name or IP literal) and port. Encoded as `[host: str, port: u16]`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "(String, u16)", into = "(String, u16)")]
pub struct Endpoint {
    host: String,
    port: u16,
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
        })
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
        }
    }

    /// `host:port` in the form `tokio::net::lookup_host` and `TcpStream::connect` take.
    pub fn to_connect_string(&self) -> String {
        self.to_string()
    }
}

impl TryFrom<(String, u16)> for Endpoint {
    type Error = DecodeError;
    fn try_from((host, port): (String, u16)) -> Result<Self, Self::Error> {
        Endpoint::new(host, port)
    }
}

impl From<Endpoint> for (String, u16) {
    fn from(e: Endpoint) -> Self {
        (e.host, e.port)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.host.contains(':') {
            write!(f, "[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{}:{}", self.host, self.port)
        }
    }
}

impl std::str::FromStr for Endpoint {
    type Err = DecodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = DecodeError::Invalid {
            what: "endpoint",
            why: "expected host:port",
        };
        let (host, port) = s.rsplit_once(':').ok_or(bad)?;
        let port: u16 = port.parse().map_err(|_| DecodeError::Invalid {
            what: "endpoint port",
            why: "not a number from 0 to 65535",
        })?;
        Endpoint::new(host, port)
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
}
