//! The node's QUIC state: its endpoint (shared by the listener and every dial) and the
//! addresses its relays observed for it.
//!
//! A relay tells each QUIC client the UDP source address it sees (`OBSERVED_ADDRESS`,
//! docs/PROTOCOL.md "Observed addresses"). The node keeps the latest one per relay (its home
//! relays and any contact node it dialled over QUIC) and derives a guess of its NAT mapping:
//! two relays that saw the same address and port mean the mapping does not depend on the
//! destination (hole punching can work); different ports mean it does (symmetric NAT).
//!
//! Bounded: at most [`MAX_OBSERVERS`] relays are remembered (the oldest observation is
//! forgotten first). Hole punching (`node::punch`) reads the observations as its candidates
//! and replaces them all when it asks the home relays again. Roaming: a relay that reports a
//! different address than it did before means we moved, so the other (older) observations
//! are forgotten rather than read as a symmetric NAT.

use crate::identity::IdentityKey;
use crate::time::Timestamp;
use crate::transport::QuicEndpoint;
use serde::Serialize;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;

/// Most relays whose observation is kept.
pub const MAX_OBSERVERS: usize = 32;

/// One relay's view of our address (an entry of `observed_addresses` in `sremp status --json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Observed {
    /// The relay's (or contact node's) id, 64 hex characters.
    pub relay: String,
    /// The endpoint we dialled it at (`quic://host:port`).
    pub endpoint: String,
    /// The address and port it saw for us, `ip:port`.
    pub address: String,
    /// When it told us (ms since the epoch).
    pub seen_ms: u64,
}

/// What the observations say about our NAT mapping (`nat_mapping` in `sremp status --json`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NatMapping {
    /// Fewer than two relays observed us.
    Unknown,
    /// At least two relays saw the same address and port.
    EndpointIndependent,
    /// Two relays saw different ports (or addresses) for us.
    EndpointDependent,
}

/// The endpoint and the observations.
#[derive(Debug, Default)]
pub(crate) struct QuicState {
    endpoint: Option<QuicEndpoint>,
    observed: Mutex<HashMap<IdentityKey, (SocketAddr, String, Timestamp)>>,
}

impl QuicState {
    pub(crate) fn new(endpoint: Option<QuicEndpoint>) -> Self {
        QuicState {
            endpoint,
            observed: Mutex::default(),
        }
    }

    /// The endpoint, when QUIC is enabled.
    pub(crate) fn endpoint(&self) -> Option<&QuicEndpoint> {
        self.endpoint.as_ref()
    }

    /// The bound UDP address.
    pub(crate) fn local_addr(&self) -> Option<SocketAddr> {
        self.endpoint.as_ref().and_then(|e| e.local_addr().ok())
    }

    /// Records what `relay` (dialled at `endpoint`) observed.
    ///
    /// A relay that now sees another address than it saw before means our own address changed
    /// (roaming), not that our NAT maps per destination: every other observation predates the
    /// change and is forgotten, or one stale entry beside the new one would make the mapping
    /// guess say endpoint-dependent (and stop hole punching).
    pub(crate) fn observe(
        &self,
        relay: IdentityKey,
        endpoint: &crate::wire::Endpoint,
        addr: SocketAddr,
        now: Timestamp,
    ) {
        let Ok(mut m) = self.observed.lock() else {
            return;
        };
        match m.get(&relay) {
            Some((old, _, _)) if *old != addr => {
                tracing::info!(relay = %relay.short(), old = %old, observed = %addr, "our QUIC address changed; older observations forgotten");
                m.clear();
            }
            Some(_) => {}
            None => {
                tracing::info!(relay = %relay.short(), observed = %addr, "relay observed our QUIC address")
            }
        }
        m.insert(relay, (addr, endpoint.to_string(), now));
        while m.len() > MAX_OBSERVERS {
            let oldest = m.iter().min_by_key(|(_, (_, _, t))| t.0).map(|(k, _)| *k);
            match oldest {
                Some(k) => m.remove(&k),
                None => break,
            };
        }
    }

    /// Replaces every observation with `fresh` (what relays asked again just now said): an
    /// older one may predate a change of our public address (roaming), and one stale entry
    /// beside fresh ones would also make the mapping guess say endpoint-dependent. Nothing
    /// changes when `fresh` is empty.
    pub(crate) fn replace_observed(
        &self,
        fresh: Vec<(IdentityKey, crate::wire::Endpoint, SocketAddr)>,
        now: Timestamp,
    ) {
        if fresh.is_empty() {
            return;
        }
        let Ok(mut m) = self.observed.lock() else {
            return;
        };
        let before: Vec<SocketAddr> = m.values().map(|(a, _, _)| *a).collect();
        m.clear();
        for (relay, endpoint, addr) in fresh.into_iter().take(MAX_OBSERVERS) {
            if !before.contains(&addr) {
                tracing::info!(relay = %relay.short(), observed = %addr, "relay observed a new QUIC address for us");
            }
            m.insert(relay, (addr, endpoint.to_string(), now));
        }
    }

    /// Every observation, newest first.
    pub(crate) fn observed(&self) -> Vec<Observed> {
        let Ok(m) = self.observed.lock() else {
            return Vec::new();
        };
        let mut v: Vec<Observed> = m
            .iter()
            .map(|(k, (a, ep, t))| Observed {
                relay: k.to_string(),
                endpoint: ep.clone(),
                address: a.to_string(),
                seen_ms: t.0,
            })
            .collect();
        v.sort_by(|a, b| b.seen_ms.cmp(&a.seen_ms).then(a.relay.cmp(&b.relay)));
        v
    }

    /// The guess from the observations.
    pub(crate) fn mapping(&self) -> NatMapping {
        let Ok(m) = self.observed.lock() else {
            return NatMapping::Unknown;
        };
        mapping_of(m.values().map(|(a, _, _)| *a))
    }
}

/// Endpoint-independent when every observation agrees and there are at least two.
pub fn mapping_of(addrs: impl Iterator<Item = SocketAddr>) -> NatMapping {
    let mut first = None;
    let mut n = 0usize;
    for a in addrs {
        n += 1;
        match first {
            None => first = Some(a),
            Some(f) if f != a => return NatMapping::EndpointDependent,
            Some(_) => {}
        }
    }
    if n >= 2 {
        NatMapping::EndpointIndependent
    } else {
        NatMapping::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_guess() {
        let a: SocketAddr = "203.0.113.1:4000".parse().unwrap();
        let b: SocketAddr = "203.0.113.1:4001".parse().unwrap();
        assert_eq!(mapping_of([a].into_iter()), NatMapping::Unknown);
        assert_eq!(
            mapping_of([a, a].into_iter()),
            NatMapping::EndpointIndependent
        );
        assert_eq!(
            mapping_of([a, b].into_iter()),
            NatMapping::EndpointDependent
        );
    }

    #[test]
    fn bounded_and_newest_first() {
        let s = QuicState::new(None);
        let ep: crate::wire::Endpoint = "quic://127.0.0.1:1".parse().unwrap();
        for i in 0..(MAX_OBSERVERS as u64 + 5) {
            let mut k = [0u8; 32];
            k[..8].copy_from_slice(&i.to_be_bytes());
            s.observe(
                IdentityKey(k),
                &ep,
                "127.0.0.1:9".parse().unwrap(),
                Timestamp(i),
            );
        }
        let v = s.observed();
        assert_eq!(v.len(), MAX_OBSERVERS);
        assert_eq!(v.first().map(|o| o.seen_ms), Some(MAX_OBSERVERS as u64 + 4));
        assert_eq!(s.mapping(), NatMapping::EndpointIndependent);
    }

    #[test]
    fn a_relay_seeing_a_new_address_means_we_moved() {
        let s = QuicState::new(None);
        let ep: crate::wire::Endpoint = "quic://198.18.0.10:7000".parse().unwrap();
        let old: SocketAddr = "198.18.0.2:7100".parse().unwrap();
        let new: SocketAddr = "198.18.0.4:7100".parse().unwrap();
        s.observe(IdentityKey([1; 32]), &ep, old, Timestamp(1));
        s.observe(IdentityKey([2; 32]), &ep, old, Timestamp(2));
        assert_eq!(s.mapping(), NatMapping::EndpointIndependent);
        // Relay 1 reconnects after we roamed: not a symmetric NAT, the old view is stale.
        s.observe(IdentityKey([1; 32]), &ep, new, Timestamp(3));
        let v = s.observed();
        assert_eq!(v.len(), 1, "{v:?}");
        assert_eq!(v[0].address, new.to_string());
        assert_eq!(s.mapping(), NatMapping::Unknown);
        s.observe(IdentityKey([2; 32]), &ep, new, Timestamp(4));
        assert_eq!(s.mapping(), NatMapping::EndpointIndependent);
        // Two different relays seeing different ports is still endpoint-dependent.
        s.observe(
            IdentityKey([3; 32]),
            &ep,
            "198.18.0.4:7101".parse().unwrap(),
            Timestamp(5),
        );
        assert_eq!(s.mapping(), NatMapping::EndpointDependent);
    }

    #[test]
    fn a_refresh_forgets_stale_observations() {
        let s = QuicState::new(None);
        let ep: crate::wire::Endpoint = "quic://198.18.0.10:7000".parse().unwrap();
        let old: SocketAddr = "198.18.0.2:7100".parse().unwrap();
        let new: SocketAddr = "198.18.0.4:7100".parse().unwrap();
        for k in 1..=3u8 {
            s.observe(IdentityKey([k; 32]), &ep, old, Timestamp(1));
        }
        // Two relays asked again see the new address; the third (a contact's node met while
        // punching) is not asked and must not make the guess endpoint-dependent.
        s.replace_observed(
            vec![
                (IdentityKey([1; 32]), ep.clone(), new),
                (IdentityKey([2; 32]), ep.clone(), new),
            ],
            Timestamp(2),
        );
        let v = s.observed();
        assert_eq!(v.len(), 2);
        assert!(v.iter().all(|o| o.address == new.to_string()));
        assert_eq!(s.mapping(), NatMapping::EndpointIndependent);
        // Nobody answered: the old view stays.
        s.replace_observed(Vec::new(), Timestamp(3));
        assert_eq!(s.observed().len(), 2);
    }
}
