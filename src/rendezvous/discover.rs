//! Discovery for people: browse or search the configured rendezvous servers (`sremp discover`).
//!
//! Flow:
//! 1. candidate servers = configured, manual, DNS-bootstrapped and remembered ones
//!    ([`RegistrarSettings::candidates_with_dns`]), at most [`MAX_DISCOVER_SERVERS`] of them;
//! 2. each is asked on its own TLS connection: `LOOKUP_REQUEST` for one identity, or
//!    `list_all` pages (one page each, or every page up to [`MAX_DISCOVERED`] with `all`);
//! 3. the answers are merged by [`merge`] (pure, no I/O): one entry per identity key, the
//!    highest identity version wins, online before offline, then the latest `last_seen`;
//!    endpoints and relays of every answer are united; sorted online first, then by username
//!    and key.
//!
//! A server that fails is reported in [`Discovery::errors`] and the others still answer; the
//! whole discovery fails only when every server failed. Peers found are *not* trusted by being
//! found: adding one pins it by TOFU exactly like a card would (the identity is self-signed
//! and verified when decoded; its contact id is its Ed25519 key).

use super::client::PeerInfo;
use super::client::{Client, RegistrarSettings};
use super::RendezvousError;
use crate::identity::card::MAX_CARD_ENTRIES;
use crate::identity::{ContactCard, Identity, IdentityKey};
use crate::time::Timestamp;
use crate::wire::rendezvous::{RelayHint, ServerEntry};
use crate::wire::Endpoint;
use serde::Serialize;

/// Most servers one discovery asks.
pub const MAX_DISCOVER_SERVERS: usize = 8;
/// Most peers one discovery returns (per server and merged).
pub const MAX_DISCOVERED: usize = 10_000;

/// What to discover.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Query {
    /// One identity, by its contact id.
    Id(IdentityKey),
    /// Online peers (a username filter, case-insensitive substring, when given).
    List {
        /// Only usernames containing this.
        name: Option<String>,
        /// Every page, not only the first of each server.
        all: bool,
    },
}

impl Query {
    /// `QUERY` of the command line: a 64-hex contact id, else a username filter.
    pub fn parse(query: Option<&str>, all: bool) -> Query {
        match query.map(str::trim).filter(|q| !q.is_empty()) {
            Some(q) => match q.parse::<IdentityKey>() {
                Ok(k) => Query::Id(k),
                Err(_) => Query::List {
                    name: Some(q.to_string()),
                    all,
                },
            },
            None => Query::List { name: None, all },
        }
    }
}

/// One peer found, merged over every server that knew it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The newest identity version seen.
    pub identity: Identity,
    /// Online at some server.
    pub online: bool,
    /// The latest `last_seen` of any server.
    pub last_seen: Timestamp,
    /// Endpoints, the most useful first (the best answer's endpoint, its alternates, others).
    pub endpoints: Vec<Endpoint>,
    /// Home relays.
    pub relays: Vec<RelayHint>,
    /// Servers that answered with it (`name@host:port`).
    pub servers: Vec<String>,
}

impl Found {
    /// A contact card for the peer (at most [`MAX_CARD_ENTRIES`] endpoints and relays).
    pub fn card(&self) -> ContactCard {
        ContactCard {
            identity: self.identity.clone(),
            endpoints: self
                .endpoints
                .iter()
                .take(MAX_CARD_ENTRIES)
                .cloned()
                .collect(),
            relays: self.relays.iter().take(MAX_CARD_ENTRIES).cloned().collect(),
        }
    }

    /// The JSON view (`sremp discover --json`, README "JSON output").
    pub fn view(&self) -> FoundView {
        FoundView {
            id: self.identity.key().to_string(),
            username: self.identity.username().as_str().to_string(),
            version: self.identity.version(),
            online: self.online,
            last_seen: self.last_seen.0,
            endpoints: self.endpoints.iter().map(|e| e.to_string()).collect(),
            relays: self
                .relays
                .iter()
                .map(|r| format!("{}@{}", hex::encode(r.relay_key), r.endpoint))
                .collect(),
            servers: self.servers.clone(),
            card: self.card().to_text(),
        }
    }
}

/// A peer as `sremp discover --json` prints it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FoundView {
    /// Contact id, 64 hex.
    pub id: String,
    /// Username.
    pub username: String,
    /// Identity version.
    pub version: u64,
    /// Online at some server.
    pub online: bool,
    /// Last seen (ms since the epoch; now for online peers).
    pub last_seen: u64,
    /// Endpoints, "host:port".
    pub endpoints: Vec<String>,
    /// Home relays, "<relay id>@host:port".
    pub relays: Vec<String>,
    /// Servers that knew it.
    pub servers: Vec<String>,
    /// A contact card built from the answer (`sremp contacts add` takes it).
    pub card: String,
}

/// A server that could not be asked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServerFailure {
    /// The server.
    pub server: String,
    /// Why.
    pub error: String,
}

/// The result of a discovery.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Discovery {
    /// Peers, online first.
    pub peers: Vec<Found>,
    /// Servers that answered.
    pub answered: Vec<String>,
    /// Servers that failed.
    pub errors: Vec<ServerFailure>,
}

fn better(a: &PeerInfo, b: &Found) -> bool {
    (a.identity.version(), a.online, a.last_seen) > (b.identity.version(), b.online, b.last_seen)
}

fn push_unique<T: PartialEq>(v: &mut Vec<T>, x: T) {
    if !v.contains(&x) {
        v.push(x);
    }
}

/// Merges the answers of several servers (pure; see the module docs for the rules). `me` is
/// left out of the result.
pub fn merge(answers: Vec<(ServerEntry, Vec<PeerInfo>)>, me: Option<IdentityKey>) -> Vec<Found> {
    let mut out: Vec<Found> = Vec::new();
    let mut index: std::collections::HashMap<IdentityKey, usize> = Default::default();
    for (server, peers) in answers {
        for p in peers {
            let key = p.identity.key();
            if Some(key) == me {
                continue;
            }
            let mut eps = vec![p.endpoint.clone()];
            eps.extend(p.alt_endpoints.iter().cloned());
            match index.get(&key).and_then(|&i| out.get_mut(i)) {
                Some(f) => {
                    if better(&p, f) {
                        // The better answer's routes go first.
                        let mut endpoints = Vec::new();
                        for e in eps.into_iter().chain(f.endpoints.drain(..)) {
                            push_unique(&mut endpoints, e);
                        }
                        f.endpoints = endpoints;
                        if p.identity.version() > f.identity.version() {
                            f.identity = p.identity.clone();
                        }
                    } else {
                        for e in eps {
                            push_unique(&mut f.endpoints, e);
                        }
                    }
                    f.online |= p.online;
                    f.last_seen = f.last_seen.max(p.last_seen);
                    for r in p.relays {
                        push_unique(&mut f.relays, r);
                    }
                    push_unique(&mut f.servers, server.to_string());
                }
                None => {
                    if out.len() >= MAX_DISCOVERED {
                        continue;
                    }
                    let mut endpoints = Vec::new();
                    for e in eps {
                        push_unique(&mut endpoints, e);
                    }
                    let mut relays = Vec::new();
                    for r in p.relays {
                        push_unique(&mut relays, r);
                    }
                    index.insert(key, out.len());
                    out.push(Found {
                        identity: p.identity,
                        online: p.online,
                        last_seen: p.last_seen,
                        endpoints,
                        relays,
                        servers: vec![server.to_string()],
                    });
                }
            }
        }
    }
    out.sort_by(|a, b| {
        b.online
            .cmp(&a.online)
            .then_with(|| {
                a.identity
                    .username()
                    .as_str()
                    .cmp(b.identity.username().as_str())
            })
            .then_with(|| a.identity.key().cmp(&b.identity.key()))
    });
    out
}

async fn ask(
    settings: &RegistrarSettings,
    server: &ServerEntry,
    query: &Query,
) -> Result<Vec<PeerInfo>, RendezvousError> {
    let mut c = Client::connect(server, settings.tls.clone(), settings.timeout).await?;
    let r = match query {
        Query::Id(k) => c.lookup(k).await.map(|p| p.into_iter().collect()),
        Query::List { all: true, .. } => c.list_all(MAX_DISCOVERED).await,
        Query::List { all: false, .. } => c.list_page(None, 0).await.map(|p| p.peers),
    };
    c.close().await;
    r
}

/// Asks the candidate servers (at most [`MAX_DISCOVER_SERVERS`], concurrently) and merges the
/// answers. Fails only when there is no server or every server failed.
pub async fn discover(
    settings: &RegistrarSettings,
    query: &Query,
    me: Option<IdentityKey>,
) -> Result<Discovery, RendezvousError> {
    let servers: Vec<ServerEntry> = settings
        .candidates_with_dns()
        .await
        .into_iter()
        .take(MAX_DISCOVER_SERVERS)
        .collect();
    if servers.is_empty() {
        return Err(RendezvousError::Config {
            key: "servers",
            why: "no rendezvous servers configured (or found by DNS bootstrap)".into(),
        });
    }
    let mut set = tokio::task::JoinSet::new();
    for server in servers {
        let settings = settings.clone();
        let query = query.clone();
        set.spawn(async move {
            let r = ask(&settings, &server, &query).await;
            (server, r)
        });
    }
    let mut answers = Vec::new();
    let mut d = Discovery::default();
    let mut last_err = None;
    while let Some(joined) = set.join_next().await {
        let Ok((server, r)) = joined else { continue };
        match r {
            Ok(peers) => {
                d.answered.push(server.to_string());
                answers.push((server, peers));
            }
            Err(e) => {
                tracing::warn!(server = %server, error = %e, "rendezvous discovery failed");
                d.errors.push(ServerFailure {
                    server: server.to_string(),
                    error: e.to_string(),
                });
                last_err = Some(e);
            }
        }
    }
    if answers.is_empty() {
        if let Some(e) = last_err {
            return Err(e);
        }
    }
    // Deterministic merge order whatever order the servers answered in.
    answers.sort_by(|a, b| a.0.cmp(&b.0));
    d.answered.sort();
    d.errors.sort_by(|a, b| a.server.cmp(&b.server));
    let mut peers = merge(answers, me);
    if let Query::List {
        name: Some(name), ..
    } = query
    {
        let needle = name.to_lowercase();
        peers.retain(|p| {
            p.identity
                .username()
                .as_str()
                .to_lowercase()
                .contains(&needle)
        });
    }
    d.peers = peers;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{Flags, UserIdentity};

    fn user(name: &str) -> UserIdentity {
        UserIdentity::generate(name, Flags::default(), Timestamp(1), &mut rand::rngs::OsRng)
            .unwrap()
    }

    fn info(u: &Identity, port: u16, online: bool, seen: u64) -> PeerInfo {
        PeerInfo {
            identity: u.clone(),
            endpoint: format!("127.0.0.1:{port}").parse().unwrap(),
            last_seen: Timestamp(seen),
            online,
            relays: Vec::new(),
            alt_endpoints: Vec::new(),
        }
    }

    #[test]
    fn merge_dedups_prefers_newest_version_and_sorts_online_first() {
        let mut a = user("zed");
        let b = user("amy");
        let me = user("me");
        let a1 = a.identity().clone();
        a.update(None, None, None, Timestamp(5)).unwrap();
        let a2 = a.identity().clone();
        let s1: ServerEntry = "rv1.test@127.0.0.1:1".parse().unwrap();
        let s2: ServerEntry = "rv2.test@127.0.0.1:2".parse().unwrap();
        let merged = merge(
            vec![
                (
                    s1.clone(),
                    vec![
                        info(&a1, 10, true, 100),
                        info(b.identity(), 20, false, 50),
                        info(me.identity(), 30, true, 100),
                    ],
                ),
                (
                    s2.clone(),
                    vec![info(&a2, 11, true, 90), info(b.identity(), 21, false, 60)],
                ),
            ],
            Some(me.key()),
        );
        assert_eq!(merged.len(), 2);
        // Online first even though "amy" sorts before "zed".
        assert_eq!(merged[0].identity.key(), a.key());
        assert_eq!(merged[0].identity.version(), 2);
        assert_eq!(merged[0].endpoints[0].to_string(), "127.0.0.1:11");
        assert_eq!(merged[0].endpoints.len(), 2);
        assert_eq!(merged[0].servers.len(), 2);
        assert!(!merged[1].online);
        assert_eq!(merged[1].last_seen, Timestamp(60));
        assert_eq!(merged[1].endpoints[0].to_string(), "127.0.0.1:21");
        let card = ContactCard::from_text(&merged[0].card().to_text()).unwrap();
        assert_eq!(card.identity.version(), 2);
    }

    #[test]
    fn query_parsing() {
        let k = user("x").key();
        assert_eq!(Query::parse(Some(&k.to_string()), false), Query::Id(k));
        assert_eq!(
            Query::parse(Some("bo"), true),
            Query::List {
                name: Some("bo".into()),
                all: true
            }
        );
        assert_eq!(
            Query::parse(Some("  "), false),
            Query::List {
                name: None,
                all: false
            }
        );
    }
}
