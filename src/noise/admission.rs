//! Admission control for the Noise listener: who may hold one of the node's connections, and
//! whom to close to make room. No I/O and no clock: the listener shell reports accepts,
//! progress, authentications and closes, and carries out the evictions this core returns.
//!
//! Two budgets (docs/PROTOCOL.md, "Node", "Connection admission"):
//! 1. **Handshakes** (accepted, not yet authenticated): at most `max_handshakes` in total and
//!    `max_handshakes_per_ip` per source address. A new connection is always let in; when a
//!    budget is full the oldest handshake in it is closed, preferring one whose peer has not
//!    sent a byte yet. A silent or slow flood therefore only shortens how long each of its own
//!    connections lives, while a real peer, which completes its handshake within a few round
//!    trips, gets through.
//! 2. **Authenticated connections**: at most `max_connections`. Peers are classed after the
//!    handshake by identity: [`Class::Known`] (contacts, the node itself) or
//!    [`Class::Stranger`]. Strangers share at most `max_strangers` of the budget, and
//!    `max_strangers_per_ip` per address; a stranger over either share closes the oldest
//!    stranger in it. A known peer is refused only when every connection is held by known
//!    peers: any stranger is closed first. Source addresses never limit known peers (on
//!    loopback, or behind one NAT, everyone shares an address).
//!
//! 3. **Handshake rate per source address**: each address may start `handshakes_per_ip_per_sec`
//!    handshakes per second (bursts of twice as many; [`crate::limit::TokenBuckets`]). What
//!    happens to a connection over that rate depends on its address:
//!    - an address no known peer uses (none connected from it now, none authenticated from it
//!      within [`KNOWN_ADDR_TTL_MS`]): the connection is refused at once
//!      ([`Reason::HandshakeRate`]), before any handshake work — a flood from such an address
//!      costs one accept per connection and gets the rate's worth of handshakes, no more;
//!    - an address a known peer uses (loopback, one NAT: a contact may share the flooder's
//!      address, and its identity is unknown until the handshake completes): the connection is
//!      let in, but it is the first closed when a handshake budget is full, and if it
//!      authenticates as a stranger it is refused ([`Reason::HandshakeRate`]). A known peer is
//!      admitted by identity whatever the rate of its address.
//!
//!    Addresses become known when a [`Class::Known`] peer authenticates from them; at most
//!    [`MAX_KNOWN_ADDRS`] are remembered (connected ones always). The shell may also name the
//!    addresses its contacts advertise ([`Admission::set_contact_addrs`]): those are known for
//!    as long as they are named, so a contact that shares a flooder's address and has been
//!    away longer than [`KNOWN_ADDR_TTL_MS`] still gets in when it connects from an address it
//!    advertises.
//!
//! Invariants: the counts never exceed their budgets after [`Admission::accept`] or
//! [`Admission::authenticated`] returns (counting the evictions as done); every id is
//! forgotten by [`Admission::closed`], which is idempotent.

use crate::limit::TokenBuckets;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

/// Budgets. See the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Authenticated connections in total.
    pub max_connections: usize,
    /// Connections still in the version exchange or handshake.
    pub max_handshakes: usize,
    /// Handshakes per source address.
    pub max_handshakes_per_ip: usize,
    /// Authenticated connections of strangers (peers that are not contacts).
    pub max_strangers: usize,
    /// Authenticated stranger connections per source address.
    pub max_strangers_per_ip: usize,
    /// Handshakes a source address may start per second (bursts of twice as many); see the
    /// module docs. 0 turns the rate off.
    pub handshakes_per_ip_per_sec: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_handshakes: 128,
            max_handshakes_per_ip: 32,
            max_strangers: 64,
            max_strangers_per_ip: 8,
            handshakes_per_ip_per_sec: 20,
        }
    }
}

/// A connection, numbered in accept order (so a smaller id is older).
pub type ConnId = u64;

/// What an authenticated peer is to this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    /// A contact (or the node itself): admitted whenever any stranger can make room.
    Known,
    /// Anyone else: admitted within the strangers' share.
    Stranger,
}

/// Why a connection was closed by admission control (the refusal log counts these).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Reason {
    /// A handshake closed to make room for a newer one (all handshakes).
    HandshakeBudget,
    /// A handshake closed to make room for a newer one from the same address.
    HandshakePerIp,
    /// A stranger closed to make room for a newer stranger.
    StrangerBudget,
    /// A stranger closed to make room for a newer stranger from the same address.
    StrangerPerIp,
    /// A stranger closed to make room for a contact.
    ForContact,
    /// A contact refused: every connection is held by contacts.
    Full,
    /// A stranger whose handshake started over its address's handshake rate.
    HandshakeRate,
}

impl Reason {
    /// Stable name, used in logs.
    pub fn name(self) -> &'static str {
        match self {
            Reason::HandshakeBudget => "handshake_budget",
            Reason::HandshakePerIp => "handshake_per_ip",
            Reason::StrangerBudget => "stranger_budget",
            Reason::StrangerPerIp => "stranger_per_ip",
            Reason::ForContact => "evicted_for_contact",
            Reason::Full => "full",
            Reason::HandshakeRate => "handshake_rate",
        }
    }
}

/// A handshake in progress: whether its peer sent bytes, whether it started over its
/// address's rate.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Hs {
    progressed: bool,
    over_rate: bool,
    /// When it was accepted (the caller's clock, milliseconds).
    at_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Handshake(Hs),
    Known,
    Stranger,
}

impl Default for Admission {
    fn default() -> Self {
        Admission::new(Limits::default())
    }
}

/// Most source addresses whose handshake rate is tracked at once (full buckets are forgotten
/// first; beyond this, a new address counts as over its rate).
pub const MAX_RATE_KEYS: usize = 65_536;

/// How long an address stays known after a known peer last authenticated from it (1 hour),
/// when no known peer is connected from it.
pub const KNOWN_ADDR_TTL_MS: u64 = 3_600_000;

/// Most addresses remembered as known (entries of disconnected addresses are dropped oldest
/// first to make room).
pub const MAX_KNOWN_ADDRS: usize = 4096;

/// Most contact addresses kept by [`Admission::set_contact_addrs`].
pub const MAX_CONTACT_ADDRS: usize = 4096;

/// An address a known peer used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct KnownAddr {
    /// Known peers connected from it now.
    connected: usize,
    /// When a known peer last authenticated from it.
    last_ms: u64,
}

/// The admission state. See the module docs.
#[derive(Debug)]
pub struct Admission {
    limits: Limits,
    next: ConnId,
    conns: HashMap<ConnId, (IpAddr, State)>,
    /// Handshakes by age.
    handshakes: BTreeMap<ConnId, Hs>,
    handshakes_per_ip: HashMap<IpAddr, BTreeMap<ConnId, Hs>>,
    /// Handshake starts per source address; `None` when the rate is off.
    rate: Option<TokenBuckets<IpAddr>>,
    strangers: BTreeMap<ConnId, IpAddr>,
    strangers_per_ip: HashMap<IpAddr, BTreeMap<ConnId, ()>>,
    known: usize,
    /// Addresses known peers use (see the module docs).
    known_addrs: HashMap<IpAddr, KnownAddr>,
    /// Addresses the node's contacts advertise (canonical form; see the module docs).
    contact_addrs: HashSet<IpAddr>,
}

impl Admission {
    /// Empty state with `limits` (zeros are raised to 1).
    pub fn new(limits: Limits) -> Admission {
        let l = Limits {
            max_connections: limits.max_connections.max(1),
            max_handshakes: limits.max_handshakes.max(1),
            max_handshakes_per_ip: limits.max_handshakes_per_ip.max(1),
            max_strangers: limits.max_strangers.max(1),
            max_strangers_per_ip: limits.max_strangers_per_ip.max(1),
            handshakes_per_ip_per_sec: limits.handshakes_per_ip_per_sec,
        };
        let rate = (l.handshakes_per_ip_per_sec > 0).then(|| {
            let per_sec = l.handshakes_per_ip_per_sec;
            TokenBuckets::new(per_sec, per_sec.saturating_mul(2), MAX_RATE_KEYS, 4096)
        });
        Admission {
            limits: l,
            next: 0,
            conns: HashMap::new(),
            handshakes: BTreeMap::new(),
            handshakes_per_ip: HashMap::new(),
            rate,
            strangers: BTreeMap::new(),
            strangers_per_ip: HashMap::new(),
            known: 0,
            known_addrs: HashMap::new(),
            contact_addrs: HashSet::new(),
        }
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Handshakes in progress.
    pub fn handshakes(&self) -> usize {
        self.handshakes.len()
    }

    /// Authenticated connections (known, stranger).
    pub fn counts(&self) -> (usize, usize) {
        (self.known, self.strangers.len())
    }

    /// A connection from `ip` was accepted at `now_ms` (milliseconds from any fixed origin):
    /// its id and the handshakes to close now, or `Err(HandshakeRate)` when it must be closed
    /// at once (over the rate of an address no known peer uses; see the module docs).
    pub fn accept(
        &mut self,
        ip: IpAddr,
        now_ms: u64,
    ) -> Result<(ConnId, Vec<(ConnId, Reason)>), Reason> {
        let over_rate = self
            .rate
            .as_mut()
            .is_some_and(|r| r.take(ip, now_ms).is_err());
        if over_rate && !self.is_known_addr(ip, now_ms) {
            return Err(Reason::HandshakeRate);
        }
        let id = self.next;
        self.next = self.next.wrapping_add(1);
        let hs = Hs {
            progressed: false,
            over_rate,
            at_ms: now_ms,
        };
        let mut evict = Vec::new();
        let per_ip = self.handshakes_per_ip.get(&ip).map_or(0, |m| m.len());
        if per_ip >= self.limits.max_handshakes_per_ip {
            if let Some(old) = self.handshakes_per_ip.get(&ip).and_then(pick_handshake) {
                self.closed(old);
                evict.push((old, Reason::HandshakePerIp));
            }
        }
        if self.handshakes.len() >= self.limits.max_handshakes {
            if let Some(old) = pick_handshake(&self.handshakes) {
                self.closed(old);
                evict.push((old, Reason::HandshakeBudget));
            }
        }
        self.conns.insert(id, (ip, State::Handshake(hs)));
        self.handshakes.insert(id, hs);
        self.handshakes_per_ip.entry(ip).or_default().insert(id, hs);
        Ok((id, evict))
    }

    /// Whether a known peer uses `ip` (connected now, or authenticated within
    /// [`KNOWN_ADDR_TTL_MS`] of `now_ms`), or a contact advertises it.
    pub fn is_known_addr(&self, ip: IpAddr, now_ms: u64) -> bool {
        self.contact_addrs.contains(&ip.to_canonical())
            || self.known_addrs.get(&ip).is_some_and(|k| {
                k.connected > 0 || now_ms.saturating_sub(k.last_ms) <= KNOWN_ADDR_TTL_MS
            })
    }

    /// Replaces the addresses the node's contacts advertise (IP literals of their endpoints):
    /// each counts as an address a known peer uses, with no expiry, until the next call. At
    /// most [`MAX_CONTACT_ADDRS`] are kept (the first ones given); unspecified, multicast and
    /// broadcast addresses are ignored (no peer connects from them).
    pub fn set_contact_addrs(&mut self, addrs: impl IntoIterator<Item = IpAddr>) {
        self.contact_addrs = addrs
            .into_iter()
            .map(|ip| ip.to_canonical())
            .filter(|ip| {
                !ip.is_unspecified()
                    && !ip.is_multicast()
                    && !matches!(ip, IpAddr::V4(v4) if v4.is_broadcast())
            })
            .take(MAX_CONTACT_ADDRS)
            .collect();
    }

    /// A known peer authenticated from `ip` (accepted at `at_ms`).
    fn learn_known_addr(&mut self, ip: IpAddr, at_ms: u64) {
        if !self.known_addrs.contains_key(&ip) && self.known_addrs.len() >= MAX_KNOWN_ADDRS {
            // Make room: expired entries, else the oldest disconnected one.
            self.known_addrs.retain(|_, k| {
                k.connected > 0 || at_ms.saturating_sub(k.last_ms) <= KNOWN_ADDR_TTL_MS
            });
            if self.known_addrs.len() >= MAX_KNOWN_ADDRS {
                let oldest = self
                    .known_addrs
                    .iter()
                    .filter(|(_, k)| k.connected == 0)
                    .min_by_key(|(_, k)| k.last_ms)
                    .map(|(ip, _)| *ip);
                match oldest {
                    Some(old) => {
                        self.known_addrs.remove(&old);
                    }
                    // Every remembered address has a known peer connected: this one is not
                    // remembered (its connection still counts as known).
                    None => return,
                }
            }
        }
        let k = self.known_addrs.entry(ip).or_insert(KnownAddr {
            connected: 0,
            last_ms: at_ms,
        });
        k.connected = k.connected.saturating_add(1);
        k.last_ms = k.last_ms.max(at_ms);
    }

    /// The peer of handshake `id` sent its first bytes.
    pub fn progressed(&mut self, id: ConnId) {
        if let Some((ip, State::Handshake(hs))) = self.conns.get_mut(&id) {
            hs.progressed = true;
            let hs = *hs;
            self.handshakes.insert(id, hs);
            if let Some(m) = self.handshakes_per_ip.get_mut(ip) {
                m.insert(id, hs);
            }
        }
    }

    /// Handshake `id` authenticated a peer of `class`: `Ok` with the connections to close to
    /// make room, or `Err(Full)` when this connection must be closed instead. An id that was
    /// already evicted is refused with the reason it would have had.
    pub fn authenticated(
        &mut self,
        id: ConnId,
        class: Class,
    ) -> Result<Vec<(ConnId, Reason)>, Reason> {
        let Some(&(ip, State::Handshake(hs))) = self.conns.get(&id) else {
            return Err(Reason::HandshakeBudget);
        };
        self.forget_handshake(id, ip);
        if hs.over_rate && class == Class::Stranger {
            self.conns.remove(&id);
            return Err(Reason::HandshakeRate);
        }
        let mut evict = Vec::new();
        match class {
            Class::Known => {
                if self.total() >= self.limits.max_connections {
                    let Some((&old, _)) = self.strangers.iter().next() else {
                        self.conns.remove(&id);
                        return Err(Reason::Full);
                    };
                    self.closed(old);
                    evict.push((old, Reason::ForContact));
                }
                self.known += 1;
                self.conns.insert(id, (ip, State::Known));
                self.learn_known_addr(ip, hs.at_ms);
            }
            Class::Stranger => {
                let per_ip = self.strangers_per_ip.get(&ip).map_or(0, |m| m.len());
                if per_ip >= self.limits.max_strangers_per_ip {
                    let old = self
                        .strangers_per_ip
                        .get(&ip)
                        .and_then(|m| m.keys().next().copied());
                    if let Some(old) = old {
                        self.closed(old);
                        evict.push((old, Reason::StrangerPerIp));
                    }
                }
                if self.strangers.len() >= self.limits.max_strangers
                    || self.total() >= self.limits.max_connections
                {
                    match self.strangers.keys().next().copied() {
                        Some(old) => {
                            self.closed(old);
                            evict.push((old, Reason::StrangerBudget));
                        }
                        None => {
                            self.conns.remove(&id);
                            return Err(Reason::Full);
                        }
                    }
                }
                self.strangers.insert(id, ip);
                self.strangers_per_ip.entry(ip).or_default().insert(id, ());
                self.conns.insert(id, (ip, State::Stranger));
            }
        }
        Ok(evict)
    }

    /// Connection `id` ended (or was evicted). Unknown ids are ignored.
    pub fn closed(&mut self, id: ConnId) {
        let Some((ip, st)) = self.conns.remove(&id) else {
            return;
        };
        match st {
            State::Handshake { .. } => self.forget_handshake(id, ip),
            State::Known => {
                self.known = self.known.saturating_sub(1);
                if let Some(k) = self.known_addrs.get_mut(&ip) {
                    k.connected = k.connected.saturating_sub(1);
                }
            }
            State::Stranger => {
                self.strangers.remove(&id);
                if let Some(m) = self.strangers_per_ip.get_mut(&ip) {
                    m.remove(&id);
                    if m.is_empty() {
                        self.strangers_per_ip.remove(&ip);
                    }
                }
            }
        }
    }

    fn forget_handshake(&mut self, id: ConnId, ip: IpAddr) {
        self.handshakes.remove(&id);
        if let Some(m) = self.handshakes_per_ip.get_mut(&ip) {
            m.remove(&id);
            if m.is_empty() {
                self.handshakes_per_ip.remove(&ip);
            }
        }
    }

    fn total(&self) -> usize {
        self.known + self.strangers.len()
    }
}

/// The handshake to close, oldest first among: silent and over the rate, then silent, then
/// over the rate, then any.
fn pick_handshake(m: &BTreeMap<ConnId, Hs>) -> Option<ConnId> {
    m.iter()
        .find(|(_, h)| !h.progressed && h.over_rate)
        .or_else(|| m.iter().find(|(_, h)| !h.progressed))
        .or_else(|| m.iter().find(|(_, h)| h.over_rate))
        .or_else(|| m.iter().next())
        .map(|(id, _)| *id)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    fn small() -> Admission {
        Admission::new(Limits {
            max_connections: 4,
            max_handshakes: 3,
            max_handshakes_per_ip: 2,
            max_strangers: 2,
            max_strangers_per_ip: 2,
            handshakes_per_ip_per_sec: 0,
        })
    }

    /// Issue 9: over its rate, an address no known peer uses is refused before the
    /// handshake; an address a known peer uses is let in, its strangers refused after the
    /// handshake and its contacts admitted; the rate refills with time and is per address.
    #[test]
    fn handshake_rate_per_address() {
        let mut a = Admission::new(Limits {
            handshakes_per_ip_per_sec: 2,
            ..Limits::default()
        });
        // A (unknown): a burst of 4 (twice the rate), then refused at once.
        for _ in 0..4 {
            let (id, e) = a.accept(A, 1000).unwrap();
            assert!(e.is_empty());
            assert!(a.authenticated(id, Class::Stranger).is_ok());
        }
        assert_eq!(a.accept(A, 1000), Err(Reason::HandshakeRate));
        assert!(
            !a.is_known_addr(A, 1000),
            "strangers do not make an address known"
        );
        // B has its own rate; a contact authenticating from it makes it known.
        let (b, _) = a.accept(B, 1000).unwrap();
        assert!(a.authenticated(b, Class::Known).is_ok());
        assert!(a.is_known_addr(B, 1000));
        for _ in 0..3 {
            let (id, _) = a.accept(B, 1000).unwrap();
            assert!(a.authenticated(id, Class::Stranger).is_ok());
        }
        // B over its rate: let in, a stranger refused after the handshake, a contact admitted.
        let (s, _) = a.accept(B, 1000).unwrap();
        assert_eq!(
            a.authenticated(s, Class::Stranger),
            Err(Reason::HandshakeRate)
        );
        let (c, _) = a.accept(B, 1000).unwrap();
        assert!(
            a.authenticated(c, Class::Known).is_ok(),
            "a contact gets in"
        );
        // Half a second later one token is back for A.
        let (s, _) = a.accept(A, 1500).unwrap();
        assert!(a.authenticated(s, Class::Stranger).is_ok());
        assert_eq!(a.accept(A, 1500), Err(Reason::HandshakeRate));
        assert_eq!(a.counts(), (2, 8));
        assert_eq!(a.handshakes(), 0);
    }

    /// A known address stays known while a known peer is connected from it and for
    /// [`KNOWN_ADDR_TTL_MS`] after the last one authenticated; at most [`MAX_KNOWN_ADDRS`]
    /// are remembered.
    #[test]
    fn known_addresses_expire_and_are_bounded() {
        let mut a = Admission::new(Limits {
            max_connections: MAX_KNOWN_ADDRS * 2,
            handshakes_per_ip_per_sec: 1,
            ..Limits::default()
        });
        let (k, _) = a.accept(A, 0).unwrap();
        a.authenticated(k, Class::Known).unwrap();
        let (h, _) = a.accept(A, 0).unwrap();
        a.closed(h);
        // Over the rate, but a known peer is connected from A.
        let (h, _) = a.accept(A, 0).unwrap();
        a.closed(h);
        assert!(a.is_known_addr(A, 10 * KNOWN_ADDR_TTL_MS));
        a.closed(k);
        assert!(a.is_known_addr(A, KNOWN_ADDR_TTL_MS));
        assert!(!a.is_known_addr(A, KNOWN_ADDR_TTL_MS + 1));
        for i in 0..MAX_KNOWN_ADDRS + 10 {
            let n = u32::try_from(i).unwrap();
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + n));
            let (id, _) = a.accept(ip, 5).unwrap();
            a.authenticated(id, Class::Known).unwrap();
            a.closed(id);
        }
        assert!(a.known_addrs.len() <= MAX_KNOWN_ADDRS);
        assert_eq!(a.counts(), (0, 0));
    }

    /// Issue 9: an address a contact advertises is known without expiry (a contact away for
    /// longer than the TTL, sharing a flooder's address, is let in over the rate), until the
    /// shell names other addresses; IPv4-mapped IPv6 counts as the IPv4 address; unspecified
    /// addresses are ignored and the set is bounded.
    #[test]
    fn contact_addresses_are_known_without_expiry() {
        let mut a = Admission::new(Limits {
            handshakes_per_ip_per_sec: 1,
            ..Limits::default()
        });
        let mapped = IpAddr::V6(std::net::Ipv4Addr::new(10, 0, 0, 2).to_ipv6_mapped());
        let unspecified = IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED);
        a.set_contact_addrs([mapped, unspecified]);
        let late = 100 * KNOWN_ADDR_TTL_MS;
        assert!(a.is_known_addr(B, late));
        assert!(!a.is_known_addr(unspecified, late));
        assert!(!a.is_known_addr(A, late));
        // Over the rate (burst 2), B is still let in; A is refused before the handshake.
        for _ in 0..5 {
            let (id, _) = a.accept(B, late).unwrap();
            a.closed(id);
        }
        for _ in 0..2 {
            let (id, _) = a.accept(A, late).unwrap();
            a.closed(id);
        }
        assert_eq!(a.accept(A, late), Err(Reason::HandshakeRate));
        // Over the rate, a stranger from B is still refused after its handshake; a contact
        // is admitted.
        let (s, _) = a.accept(B, late).unwrap();
        assert_eq!(a.authenticated(s, Class::Stranger), Err(Reason::HandshakeRate));
        let (k, _) = a.accept(B, late).unwrap();
        assert!(a.authenticated(k, Class::Known).is_ok());
        a.closed(k);
        // Replaced: B is known only through the contact that just authenticated (TTL).
        a.set_contact_addrs([]);
        assert!(a.is_known_addr(B, late + KNOWN_ADDR_TTL_MS));
        assert!(!a.is_known_addr(B, late + KNOWN_ADDR_TTL_MS + 1));
        // Bounded.
        a.set_contact_addrs(
            (0..MAX_CONTACT_ADDRS as u32 + 10).map(|n| IpAddr::V4((0x0b00_0000 + n).into())),
        );
        assert_eq!(a.contact_addrs.len(), MAX_CONTACT_ADDRS);
    }

    #[test]
    fn over_rate_handshakes_make_way_first() {
        let mut a = Admission::new(Limits {
            max_handshakes_per_ip: 3,
            handshakes_per_ip_per_sec: 1,
            ..Limits::default()
        });
        // A contact from A makes it known (and takes one token of the burst of 2).
        let (k, _) = a.accept(A, 0).unwrap();
        a.authenticated(k, Class::Known).unwrap();
        let (h0, _) = a.accept(A, 0).unwrap(); // within the rate
        let (h1, _) = a.accept(A, 0).unwrap(); // over
        let (h2, _) = a.accept(A, 0).unwrap(); // over
        for h in [h0, h1, h2] {
            a.progressed(h);
        }
        // Full: the oldest over-rate h1 goes, though h0 is older.
        let (_h3, e) = a.accept(A, 0).unwrap();
        assert_eq!(e, vec![(h1, Reason::HandshakePerIp)]);
    }

    #[test]
    fn handshakes_evict_oldest_silent_first() {
        let mut a = small();
        let (h0, e) = a.accept(A, 0).unwrap();
        assert!(e.is_empty());
        a.progressed(h0);
        let (h1, e) = a.accept(A, 0).unwrap();
        assert!(e.is_empty());
        // Per-address budget full: the silent h1 goes, not the older but progressed h0.
        let (_h2, e) = a.accept(A, 0).unwrap();
        assert_eq!(e, vec![(h1, Reason::HandshakePerIp)]);
        let (_h3, e) = a.accept(B, 0).unwrap();
        assert!(e.is_empty());
        // Global budget (3) full.
        let (_h4, e) = a.accept(B, 0).unwrap();
        assert_eq!(e.len(), 1);
        assert!(a.handshakes() <= 3);
    }

    #[test]
    fn strangers_keep_to_their_share_and_make_room_for_contacts() {
        let mut a = small();
        let mut strangers = Vec::new();
        for _ in 0..5 {
            let (id, _) = a.accept(A, 0).unwrap();
            let e = a.authenticated(id, Class::Stranger).unwrap();
            assert!(e.len() <= 1);
            strangers.push(id);
        }
        assert_eq!(a.counts(), (0, 2));
        for _ in 0..2 {
            let (id, _) = a.accept(A, 0).unwrap();
            assert!(a.authenticated(id, Class::Known).unwrap().is_empty());
        }
        // Full (2 known + 2 strangers): a contact evicts the oldest stranger.
        let (id, _) = a.accept(A, 0).unwrap();
        let e = a.authenticated(id, Class::Known).unwrap();
        assert_eq!(e, vec![(strangers[3], Reason::ForContact)]);
        let (id, _) = a.accept(A, 0).unwrap();
        let e = a.authenticated(id, Class::Known).unwrap();
        assert_eq!(e, vec![(strangers[4], Reason::ForContact)]);
        // All known now: a stranger is refused, and so is a fifth contact.
        let (id, _) = a.accept(A, 0).unwrap();
        assert_eq!(a.authenticated(id, Class::Stranger), Err(Reason::Full));
        let (id, _) = a.accept(A, 0).unwrap();
        assert_eq!(a.authenticated(id, Class::Known), Err(Reason::Full));
        assert_eq!(a.counts(), (4, 0));
        assert_eq!(a.handshakes(), 0);
    }

    #[test]
    fn evicted_handshake_cannot_authenticate_and_close_is_idempotent() {
        let mut a = small();
        let (h0, _) = a.accept(A, 0).unwrap();
        a.accept(A, 0).unwrap();
        a.accept(A, 0).unwrap();
        assert!(a.authenticated(h0, Class::Known).is_err());
        a.closed(h0);
        a.closed(h0);
        assert_eq!(a.handshakes(), 2);
        assert_eq!(a.counts(), (0, 0));
    }

    #[test]
    fn per_ip_stranger_share() {
        let mut a = Admission::new(Limits {
            max_strangers: 10,
            max_strangers_per_ip: 1,
            ..Limits::default()
        });
        let (s0, _) = a.accept(A, 0).unwrap();
        a.authenticated(s0, Class::Stranger).unwrap();
        let (s1, _) = a.accept(B, 0).unwrap();
        assert!(a.authenticated(s1, Class::Stranger).unwrap().is_empty());
        let (s2, _) = a.accept(A, 0).unwrap();
        assert_eq!(
            a.authenticated(s2, Class::Stranger).unwrap(),
            vec![(s0, Reason::StrangerPerIp)]
        );
    }
}
