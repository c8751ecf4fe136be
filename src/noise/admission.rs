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
//! Invariants: the counts never exceed their budgets after [`Admission::accept`] or
//! [`Admission::authenticated`] returns (counting the evictions as done); every id is
//! forgotten by [`Admission::closed`], which is idempotent.

use std::collections::{BTreeMap, HashMap};
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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_handshakes: 128,
            max_handshakes_per_ip: 32,
            max_strangers: 64,
            max_strangers_per_ip: 8,
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
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Handshake { progressed: bool },
    Known,
    Stranger,
}

/// The admission state. See the module docs.
#[derive(Debug, Default)]
pub struct Admission {
    limits: Limits,
    next: ConnId,
    conns: HashMap<ConnId, (IpAddr, State)>,
    /// Handshakes by age, with whether they progressed.
    handshakes: BTreeMap<ConnId, bool>,
    handshakes_per_ip: HashMap<IpAddr, BTreeMap<ConnId, bool>>,
    strangers: BTreeMap<ConnId, IpAddr>,
    strangers_per_ip: HashMap<IpAddr, BTreeMap<ConnId, ()>>,
    known: usize,
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
        };
        Admission {
            limits: l,
            ..Admission::default()
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

    /// A TCP connection from `ip` was accepted: its id, and the handshakes to close now.
    pub fn accept(&mut self, ip: IpAddr) -> (ConnId, Vec<(ConnId, Reason)>) {
        let id = self.next;
        self.next = self.next.wrapping_add(1);
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
        self.conns
            .insert(id, (ip, State::Handshake { progressed: false }));
        self.handshakes.insert(id, false);
        self.handshakes_per_ip
            .entry(ip)
            .or_default()
            .insert(id, false);
        (id, evict)
    }

    /// The peer of handshake `id` sent its first bytes.
    pub fn progressed(&mut self, id: ConnId) {
        if let Some((ip, st @ State::Handshake { .. })) = self.conns.get_mut(&id) {
            *st = State::Handshake { progressed: true };
            self.handshakes.insert(id, true);
            if let Some(m) = self.handshakes_per_ip.get_mut(ip) {
                m.insert(id, true);
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
        let Some(&(ip, State::Handshake { .. })) = self.conns.get(&id) else {
            return Err(Reason::HandshakeBudget);
        };
        self.forget_handshake(id, ip);
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
            State::Known => self.known = self.known.saturating_sub(1),
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

/// The handshake to close: the oldest silent one, else the oldest.
fn pick_handshake(m: &BTreeMap<ConnId, bool>) -> Option<ConnId> {
    m.iter()
        .find(|(_, progressed)| !**progressed)
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
        })
    }

    #[test]
    fn handshakes_evict_oldest_silent_first() {
        let mut a = small();
        let (h0, e) = a.accept(A);
        assert!(e.is_empty());
        a.progressed(h0);
        let (h1, e) = a.accept(A);
        assert!(e.is_empty());
        // Per-address budget full: the silent h1 goes, not the older but progressed h0.
        let (_h2, e) = a.accept(A);
        assert_eq!(e, vec![(h1, Reason::HandshakePerIp)]);
        let (_h3, e) = a.accept(B);
        assert!(e.is_empty());
        // Global budget (3) full.
        let (_h4, e) = a.accept(B);
        assert_eq!(e.len(), 1);
        assert!(a.handshakes() <= 3);
    }

    #[test]
    fn strangers_keep_to_their_share_and_make_room_for_contacts() {
        let mut a = small();
        let mut strangers = Vec::new();
        for _ in 0..5 {
            let (id, _) = a.accept(A);
            let e = a.authenticated(id, Class::Stranger).unwrap();
            assert!(e.len() <= 1);
            strangers.push(id);
        }
        assert_eq!(a.counts(), (0, 2));
        for _ in 0..2 {
            let (id, _) = a.accept(A);
            assert!(a.authenticated(id, Class::Known).unwrap().is_empty());
        }
        // Full (2 known + 2 strangers): a contact evicts the oldest stranger.
        let (id, _) = a.accept(A);
        let e = a.authenticated(id, Class::Known).unwrap();
        assert_eq!(e, vec![(strangers[3], Reason::ForContact)]);
        let (id, _) = a.accept(A);
        let e = a.authenticated(id, Class::Known).unwrap();
        assert_eq!(e, vec![(strangers[4], Reason::ForContact)]);
        // All known now: a stranger is refused, and so is a fifth contact.
        let (id, _) = a.accept(A);
        assert_eq!(a.authenticated(id, Class::Stranger), Err(Reason::Full));
        let (id, _) = a.accept(A);
        assert_eq!(a.authenticated(id, Class::Known), Err(Reason::Full));
        assert_eq!(a.counts(), (4, 0));
        assert_eq!(a.handshakes(), 0);
    }

    #[test]
    fn evicted_handshake_cannot_authenticate_and_close_is_idempotent() {
        let mut a = small();
        let (h0, _) = a.accept(A);
        a.accept(A);
        a.accept(A);
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
        let (s0, _) = a.accept(A);
        a.authenticated(s0, Class::Stranger).unwrap();
        let (s1, _) = a.accept(B);
        assert!(a.authenticated(s1, Class::Stranger).unwrap().is_empty());
        let (s2, _) = a.accept(A);
        assert_eq!(
            a.authenticated(s2, Class::Stranger).unwrap(),
            vec![(s0, Reason::StrangerPerIp)]
        );
    }
}
