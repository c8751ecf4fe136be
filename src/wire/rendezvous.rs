//! Rendezvous protocol messages (draft section "Rendezvous Protocol"), carried in envelopes over
//! TLS 1.3. The byte-exact layout and every **[gap]** choice are in docs/PROTOCOL.md
//! ("Rendezvous"); the rules (signature input, limits, paging) live in the rendezvous core.
//!
//! Every struct encodes as a MessagePack array of its fields in the order written here.
//! Nothing here verifies anything: identities travel as [`RawIdentity`] bytes and identity
//! keys as raw 32-byte strings. The server verifies a [`RegisterRequest`]'s identity (so that
//! a forged identity and a bad request signature get the same answer after the same work),
//! and the client verifies every [`PeerInfo`] identity before it uses one; both do it above
//! this layer (`RawIdentity::verify` lives with the identity code).

use super::Endpoint;
use crate::time::Timestamp;
use serde::{Deserialize, Serialize};

/// **[gap]** Rendezvous refusal codes, sent in an `ErrorMsg` envelope (kind 0x02).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum RendezvousErrorCode {
    /// The request did not decode or a field is out of range.
    Malformed = 0x1001,
    /// Forged or unknown identity, or a bad request signature (deliberately one code).
    Refused = 0x1002,
    /// The request timestamp is outside the server's clock-skew window.
    Expired = 0x1003,
    /// The request timestamp did not increase within this TLS session.
    Replayed = 0x1004,
    /// The request names another server.
    WrongServer = 0x1005,
    /// The registry is full.
    RegistryFull = 0x1006,
    /// The identity has the most registrations allowed.
    TooManyForIdentity = 0x1007,
    /// Too many requests from this client address.
    RateLimited = 0x1008,
    /// The request frame is too large (the server closes the connection after this).
    RequestTooLarge = 0x1009,
    /// Too many connections (the server closes the connection after this).
    TooManyConnections = 0x100a,
    /// A message a client must not send.
    UnexpectedMessage = 0x100b,
}

impl RendezvousErrorCode {
    /// Every code.
    pub const ALL: [RendezvousErrorCode; 11] = [
        Self::Malformed,
        Self::Refused,
        Self::Expired,
        Self::Replayed,
        Self::WrongServer,
        Self::RegistryFull,
        Self::TooManyForIdentity,
        Self::RateLimited,
        Self::RequestTooLarge,
        Self::TooManyConnections,
        Self::UnexpectedMessage,
    ];

    /// The number on the wire.
    pub fn code(self) -> u16 {
        self as u16
    }

    /// The code with this number, if any.
    pub fn from_code(code: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.code() == code)
    }
}

/// An identity in its wire form `[bin data, bin(64) signature]`, not yet verified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawIdentity {
    /// The `IdentityVerifiedData` bytes as sent.
    pub data: serde_bytes::ByteBuf,
    /// The identity signature.
    #[serde(with = "crate::wire::bytes::fixed")]
    pub signature: [u8; 64],
}

/// `REGISTER_REQUEST`. **[gap]** `ttl_seconds == 0` withdraws the registration of `endpoint`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    /// The registering identity (verified by the server, not while decoding).
    pub identity: RawIdentity,
    /// Where it accepts direct connections.
    pub endpoint: Endpoint,
    /// Requested lifetime in seconds (clamped by the server); 0 withdraws.
    pub ttl_seconds: u32,
    /// **[gap]** When the request was made (must be within the server's clock skew, and
    /// strictly increase within one TLS session).
    pub timestamp: Timestamp,
    /// **[gap]** The TLS server name the request is for.
    pub server_name: String,
    /// **[gap]** Home relays where senders can store for this identity (at most
    /// `MAX_RELAYS` of the rendezvous core).
    pub relays: Vec<RelayHint>,
    /// Signature (rendezvous-register context) over the input described in docs/PROTOCOL.md.
    #[serde(with = "crate::wire::bytes::fixed")]
    pub signature: [u8; 64],
}

/// **[gap]** A relay that keeps messages for an identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RelayHint {
    /// Where the relay listens.
    pub endpoint: Endpoint,
    /// The relay's identity key (its Noise identity is checked against it).
    #[serde(with = "crate::wire::bytes::fixed")]
    pub relay_key: [u8; 32],
}

/// `REGISTER_RESPONSE`. Refusals are sent as an `ErrorMsg` envelope instead, so `success` is
/// always true in SREMP 1.0 **[gap]**.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterResponse {
    /// Accepted.
    pub success: bool,
    /// When the registration lapses (the request time on a withdrawal).
    pub expires_at: Timestamp,
    /// Renew after this many seconds (0 on a withdrawal).
    pub renewal_interval: u32,
    /// Why not (always nil; refusals are `ErrorMsg`).
    pub error_message: Option<String>,
}

/// `LOOKUP_REQUEST`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupRequest {
    /// One identity key to find (then `list_all` is ignored).
    #[serde(with = "crate::wire::bytes::fixed_opt")]
    pub target_identity: Option<[u8; 32]>,
    /// List online peers instead, one page at a time.
    pub list_all: bool,
    /// **[gap]** List peers whose key sorts strictly after this one (nil: from the start).
    #[serde(with = "crate::wire::bytes::fixed_opt")]
    pub cursor: Option<[u8; 32]>,
    /// **[gap]** Most peers wanted in this page (the server may return fewer; 0 means the
    /// server's page size).
    pub limit: u16,
}

/// `PeerInfo`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// The peer, not yet verified (the client verifies it before use).
    pub identity: RawIdentity,
    /// Where it listens (its most recent registration).
    pub endpoint: Endpoint,
    /// `now` while online; otherwise when its last registration lapsed or was withdrawn.
    pub last_seen: Timestamp,
    /// At least one registration has not expired.
    pub online: bool,
    /// **[gap]** Its home relays (from its most recent registration).
    pub relays: Vec<RelayHint>,
    /// **[gap]** Its other live registered endpoints, most recent first.
    pub alt_endpoints: Vec<Endpoint>,
}

/// `LOOKUP_RESPONSE`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LookupResponse {
    /// Found peers (at most one for a targeted lookup), sorted by identity key.
    pub peers: Vec<PeerInfo>,
    /// Always nil (refusals are `ErrorMsg`).
    pub error_message: Option<String>,
    /// **[gap]** Cursor for the next page of a listing; nil when this page is the last.
    #[serde(with = "crate::wire::bytes::fixed_opt")]
    pub next_cursor: Option<[u8; 32]>,
}

/// `LIST_SERVERS_REQUEST`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListServersRequest {}

/// **[gap]** One rendezvous server: where it listens and the TLS name its certificate is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ServerEntry {
    /// `host:port`.
    pub endpoint: Endpoint,
    /// The name the server's certificate must be valid for (a DNS name or an IP literal).
    pub name: String,
}

impl ServerEntry {
    /// A server whose certificate name is its host.
    pub fn from_endpoint(endpoint: Endpoint) -> Self {
        let name = endpoint.host().to_string();
        ServerEntry { endpoint, name }
    }
}

/// Text form (config, CLI, the remembered-servers file): `name@host:port`, or `host:port` when
/// the certificate name is the host.
impl std::fmt::Display for ServerEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.name == self.endpoint.host() {
            write!(f, "{}", self.endpoint)
        } else {
            write!(f, "{}@{}", self.name, self.endpoint)
        }
    }
}

impl std::str::FromStr for ServerEntry {
    type Err = super::DecodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        match s.split_once('@') {
            Some((name, addr)) => {
                let endpoint: Endpoint = addr.parse()?;
                // The name must itself be a valid host.
                let name = Endpoint::new(name, 0)?.host().to_string();
                Ok(ServerEntry { endpoint, name })
            }
            None => Ok(ServerEntry::from_endpoint(s.parse()?)),
        }
    }
}

/// `LIST_SERVERS_RESPONSE`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ListServersResponse {
    /// Known servers, the answering server itself first when it knows its public endpoint.
    pub servers: Vec<ServerEntry>,
    /// When the list was made.
    pub timestamp: Timestamp,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Flags, IdentityKey, UserIdentity};
    use crate::wire::{msgpack, Envelope};
    use proptest::prelude::*;

    fn user() -> UserIdentity {
        use rand::SeedableRng;
        let mut rng = rand_chacha::ChaCha20Rng::from_seed([5; 32]);
        UserIdentity::generate("carol", Flags::default(), Timestamp(1), &mut rng).unwrap()
    }

    #[test]
    fn raw_identity_has_the_identity_wire_form() {
        let u = user();
        let raw = RawIdentity::from_identity(u.identity());
        assert_eq!(msgpack::encode(&raw), u.identity().to_bytes());
        assert_eq!(raw.verify().unwrap(), *u.identity());
        let mut bad = raw.clone();
        bad.signature[0] ^= 1;
        assert!(bad.verify().is_err());
    }

    #[test]
    fn round_trips() {
        let u = user();
        let ep: Endpoint = "127.0.0.1:7000".parse().unwrap();
        let msgs: Vec<Envelope> = vec![
            RegisterRequest {
                identity: RawIdentity::from_identity(u.identity()),
                endpoint: ep.clone(),
                ttl_seconds: 600,
                timestamp: Timestamp(5),
                server_name: "rv.example".into(),
                relays: vec![RelayHint {
                    endpoint: ep.clone(),
                    relay_key: [9; 32],
                }],
                signature: [1; 64],
            }
            .into(),
            RegisterResponse {
                success: true,
                expires_at: Timestamp(9),
                renewal_interval: 300,
                error_message: None,
            }
            .into(),
            LookupRequest {
                target_identity: Some(u.key().0),
                list_all: false,
                cursor: None,
                limit: 0,
            }
            .into(),
            LookupResponse {
                peers: vec![PeerInfo {
                    identity: RawIdentity::from_identity(u.identity()),
                    endpoint: ep.clone(),
                    last_seen: Timestamp(3),
                    online: true,
                    relays: vec![],
                    alt_endpoints: vec![ep.clone()],
                }],
                error_message: None,
                next_cursor: Some(u.key().0),
            }
            .into(),
            ListServersRequest {}.into(),
            ListServersResponse {
                servers: vec![ServerEntry {
                    endpoint: ep,
                    name: "rv.example".into(),
                }],
                timestamp: Timestamp(7),
            }
            .into(),
        ];
        for m in msgs {
            assert_eq!(Envelope::decode(&m.encode()).unwrap(), m);
        }
        assert_eq!(
            Envelope::from(ListServersRequest {}).encode(),
            vec![0x92, 0x14, 0x90]
        );
    }

    #[test]
    fn server_entry_text_form() {
        let a: ServerEntry = "rv1.test@127.0.0.1:7470".parse().unwrap();
        assert_eq!(a.name, "rv1.test");
        assert_eq!(a.endpoint.port(), 7470);
        assert_eq!(a.to_string(), "rv1.test@127.0.0.1:7470");
        let b: ServerEntry = "rv.example.org:7470".parse().unwrap();
        assert_eq!(b.name, "rv.example.org");
        assert_eq!(b.to_string(), "rv.example.org:7470");
        assert!("bad name@1.2.3.4:5".parse::<ServerEntry>().is_err());
        assert!("x@1.2.3.4".parse::<ServerEntry>().is_err());
    }

    #[test]
    fn raw_keys_have_the_identity_key_wire_form() {
        // The raw [u8; 32] fields encode exactly as IdentityKey (bin 32) and nil did.
        let k = [7u8; 32];
        let mut old = Vec::new();
        rmp_serde::encode::write(
            &mut old,
            &(Some(IdentityKey(k)), false, None::<IdentityKey>, 0u16),
        )
        .unwrap();
        let new = msgpack::encode(&LookupRequest {
            target_identity: Some(k),
            list_all: false,
            cursor: None,
            limit: 0,
        });
        assert_eq!(new, old);
        assert!(msgpack::decode::<LookupRequest>(&old).is_ok());
    }

    proptest! {
        #[test]
        fn arbitrary_bodies_never_panic(kind in 0x10u16..0x20, body in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut bytes = vec![0x92];
            rmp::encode::write_uint(&mut bytes, u64::from(kind)).unwrap();
            bytes.extend_from_slice(&body);
            let _ = Envelope::decode(&bytes);
        }

        #[test]
        fn lookup_round_trip(key in any::<[u8; 32]>(), list_all in any::<bool>(), limit in any::<u16>(), cur in proptest::option::of(any::<[u8; 32]>())) {
            let m = Envelope::from(LookupRequest {
                target_identity: Some(key), list_all, cursor: cur, limit,
            });
            prop_assert_eq!(Envelope::decode(&m.encode()).unwrap(), m);
        }
    }
}
