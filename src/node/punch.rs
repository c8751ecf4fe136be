//! The node's hole-punching shell: drives [`crate::transport::punch`] attempts over relay
//! connections and the one QUIC endpoint, and remembers the punched path per contact.
//!
//! - [`maybe_start`]: the send path calls it when a contact has no proven direct path. If QUIC
//!   is on, our mapping is not endpoint-dependent, the contact has relays, no attempt with it
//!   is running and the [`Policy`] allows one (back-off, hourly cap, an hour's pause after a
//!   symmetric NAT), an initiator attempt starts in the background through the contact's
//!   relays (connections from the delivery pool).
//! - [`on_message`]: a `PUNCH_RELAY` arrived on any relay connection (home-relay collector or
//!   pooled). Admitted at most `INBOUND_PER_MINUTE` per peer, verified (signed by the sender,
//!   addressed to us, fresh), accepted only from a contact that is not rejected; a `CONNECT`
//!   starts a responder attempt answered over the same connection, the rest go to their
//!   attempt.
//! - A `Dial` step dials the (filtered, at most four) candidates at once from the node's QUIC
//!   endpoint, each as a relay client of the peer's integrated relay with the peer's identity
//!   expected (QUIC + bound Noise + TOFU checks as for any dial). The first to register wins;
//!   it joins the delivery pool under `quic://addr`, the contact's direct path is marked
//!   proven, and [`punched`] gives the endpoint to the send path, which tries it first.
//! - When a store over the punched path fails, [`lost`] forgets it (the send path falls back to
//!   the relay as for any direct failure) and the next message may punch again.
//! - Roaming: every attempt (either side) also asks the home relays again where they see us
//!   ([`refresh_observed`], at most every [`REFRESH_INTERVAL_MS`]), because our own QUIC
//!   connections follow a changed public address silently (connection migration) and the
//!   relays' first observation would stay stale; a later try of the attempt, or the next
//!   attempt, then offers the current address.
//!
//! Bounded: one attempt per contact at a time, tables capped at [`MAX_TRACKED`] peers.

use super::delivery;
use super::quic::NatMapping;
use super::Node;
use crate::identity::{IdentityKey, Trust};
use crate::relay::RelayClient;
use crate::time::Timestamp;
use crate::transport::punch::{
    Attempt, Failure, Mapping, Policy, Punch, PunchKind, PunchMessage, Step, MAX_DIAL,
};
use crate::transport::Transport;
use crate::wire::relay::PunchRelay;
use crate::wire::Endpoint;
use serde::Serialize;
use crate::noise::stream::HandshakeLimits;
use crate::relay::RelayEvent;
use crate::transport::punch::DIAL_WINDOW_MS;
use crate::wire::relay::RelayCapabilities;
use std::collections::{HashMap, HashSet};
use tokio::task::JoinSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Most peers tracked in the punch tables.
pub const MAX_TRACKED: usize = 1024;
/// Relays of a contact tried per attempt to coordinate.
pub const MAX_COORDINATORS: usize = 2;
/// Home relays asked again for our address when an attempt starts.
pub const MAX_REFRESH: usize = 4;
/// Shortest time between two such refreshes, in milliseconds.
pub const REFRESH_INTERVAL_MS: u64 = 5_000;
/// Shortest time between two refreshes while our mapping looks endpoint-dependent (no
/// attempt starts then), in milliseconds.
pub const DEPENDENT_REFRESH_MS: u64 = 60_000;

/// One contact's punch state (an entry of `punch` in `sremp status --json`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PeerPunch {
    /// The contact's id, 64 hex characters.
    pub contact: String,
    /// The current punched path `quic://ip:port`, if any.
    pub punched: Option<String>,
    /// Attempts started by us in the last hour.
    pub attempts_last_hour: usize,
    /// Attempts (either side) that ended in a direct connection, since start.
    pub successes: u64,
    /// How the last attempt ended: `"connected"`, `"endpoint-dependent mapping"`, `"no reply"`,
    /// `"no connection"`, `"no candidates"`; `null` before the first.
    pub last_result: Option<String>,
    /// Round trip of the last CONNECT exchange we initiated, in milliseconds.
    pub last_rtt_ms: Option<u64>,
}

#[derive(Default)]
struct Tables {
    /// Running attempts: id → (peer, channel to its task).
    attempts: HashMap<u64, (IdentityKey, mpsc::Sender<Punch>)>,
    /// Peers with an attempt running.
    busy: HashMap<IdentityKey, u64>,
    /// The punched path per peer.
    punched: HashMap<IdentityKey, Endpoint>,
    /// Status per peer.
    info: HashMap<IdentityKey, PeerPunch>,
    /// The direct endpoint that last took a message, per peer (any transport).
    last_direct: HashMap<IdentityKey, Endpoint>,
}

/// The node's punch state.
pub(crate) struct PunchState {
    policy: Mutex<Policy>,
    tables: Mutex<Tables>,
    epoch: Instant,
    /// When our observed addresses were last refreshed (`now_ms`), if ever.
    refreshed: Mutex<Option<u64>>,
}

impl Default for PunchState {
    fn default() -> Self {
        PunchState {
            policy: Mutex::default(),
            tables: Mutex::default(),
            epoch: Instant::now(),
            refreshed: Mutex::default(),
        }
    }
}

impl std::fmt::Debug for PunchState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PunchState").finish_non_exhaustive()
    }
}

impl PunchState {
    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn info(&self, peer: IdentityKey, f: impl FnOnce(&mut PeerPunch)) {
        if let Ok(mut t) = self.tables.lock() {
            if !t.info.contains_key(&peer) && t.info.len() >= MAX_TRACKED {
                return;
            }
            let e = t.info.entry(peer).or_insert_with(|| PeerPunch {
                contact: peer.to_string(),
                ..PeerPunch::default()
            });
            f(e);
        }
    }

    /// The direct endpoint that last took a message to `peer`.
    pub(crate) fn last_direct(&self, peer: &IdentityKey) -> Option<Endpoint> {
        self.tables
            .lock()
            .ok()
            .and_then(|t| t.last_direct.get(peer).cloned())
    }

    /// The status rows, one per contact met in punching, by contact id.
    pub(crate) fn status(&self) -> Vec<PeerPunch> {
        let now = self.now_ms();
        let Ok(t) = self.tables.lock() else {
            return Vec::new();
        };
        let mut v: Vec<PeerPunch> = t
            .info
            .iter()
            .map(|(k, p)| {
                let mut p = p.clone();
                p.punched = t.punched.get(k).map(|e| e.to_string());
                p.attempts_last_hour = self
                    .policy
                    .lock()
                    .map(|mut pol| pol.attempts_last_hour(&k.0, now))
                    .unwrap_or(0);
                p
            })
            .collect();
        v.sort_by(|a, b| a.contact.cmp(&b.contact));
        v
    }
}

/// The punched path to `peer`, if one is known.
pub(crate) fn punched(node: &Node, peer: &IdentityKey) -> Option<Endpoint> {
    node.inner
        .punch
        .tables
        .lock()
        .ok()
        .and_then(|t| t.punched.get(peer).cloned())
}

/// A store over the direct endpoint `ep` to `peer` succeeded.
pub(crate) fn direct_used(node: &Node, peer: IdentityKey, ep: &Endpoint) {
    if let Ok(mut t) = node.inner.punch.tables.lock() {
        if t.last_direct.contains_key(&peer) || t.last_direct.len() < MAX_TRACKED {
            t.last_direct.insert(peer, ep.clone());
        }
    }
}

/// A store over `ep` to `peer` failed: if it is the punched path, forget it.
pub(crate) fn lost(node: &Node, peer: &IdentityKey, ep: &Endpoint) {
    if let Ok(mut t) = node.inner.punch.tables.lock() {
        if t.punched.get(peer) == Some(ep) {
            t.punched.remove(peer);
            tracing::info!(peer = %peer.short(), path = %ep, "punched path lost; back to the relay");
        }
    }
}

fn mapping(node: &Node) -> Mapping {
    match node.inner.quic.mapping() {
        NatMapping::Unknown => Mapping::Unknown,
        NatMapping::EndpointIndependent => Mapping::EndpointIndependent,
        NatMapping::EndpointDependent => Mapping::EndpointDependent,
    }
}

/// Our candidates: the addresses relays observed (distinct, newest first), then the
/// endpoint's own address when it is a specific one.
fn candidates(node: &Node) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for o in node.inner.quic.observed() {
        if let Ok(a) = o.address.parse::<SocketAddr>() {
            if crate::transport::punch::dialable(&a) && !out.contains(&a) {
                out.push(a);
            }
        }
    }
    if let Some(a) = node.inner.quic.local_addr() {
        if crate::transport::punch::dialable(&a) && !out.contains(&a) {
            out.push(a);
        }
    }
    out.truncate(crate::transport::punch::MAX_CANDIDATES);
    out
}

fn sign(node: &Node, kind: PunchKind, attempt: u64, peer: IdentityKey) -> Vec<u8> {
    let me = node.inner.me();
    let cands = if kind == PunchKind::Sync {
        Vec::new()
    } else {
        candidates(node)
    };
    PunchMessage::sign(
        me.signing_key(),
        kind,
        attempt,
        peer.0,
        Timestamp::now().0,
        mapping(node),
        &cands,
    )
    .encode()
}

/// Asks our home relays again where they see us, in the background (at most once per
/// [`REFRESH_INTERVAL_MS`]): a fresh QUIC connection to each of the first [`MAX_REFRESH`]
/// QUIC home relays, closed once it has registered. The answers replace every observation.
///
/// Why: the relays tell a client its address only when a connection is set up, and our
/// connections follow a changed address silently (QUIC connection migration), so after
/// roaming our candidates would stay stale. Each attempt (either side) starts one, so an
/// attempt's later tries, or the next attempt, carry the current address.
fn refresh_observed(node: &Node, interval_ms: u64) {
    let inner = &node.inner;
    let Some(q) = inner.quic.endpoint().cloned() else {
        return;
    };
    let now = inner.punch.now_ms();
    {
        let Ok(mut last) = inner.punch.refreshed.lock() else {
            return;
        };
        if last.is_some_and(|t| now.saturating_sub(t) < interval_ms) {
            return;
        }
        *last = Some(now);
    }
    let hints: Vec<_> = inner
        .my_relays
        .iter()
        .filter(|h| h.endpoint.transport() == Transport::Quic)
        .take(MAX_REFRESH)
        .cloned()
        .collect();
    if hints.is_empty() {
        return;
    }
    let node = node.clone();
    tokio::spawn(async move {
        let inner = &node.inner;
        let me = inner.me();
        let mut set = JoinSet::new();
        for h in hints {
            let (me, q, limits) = (me.clone(), q.clone(), inner.handshake.clone());
            set.spawn(async move {
                let key = IdentityKey(h.relay_key);
                let r = RelayClient::connect_endpoint(&h.endpoint, &me, Some(key), limits, Some(&q))
                    .await;
                match r {
                    Ok((client, _events)) => client.observed_address().map(|a| (key, h.endpoint, a)),
                    Err(e) => {
                        tracing::debug!(relay = %key.short(), error = %e, "cannot ask a relay for our address");
                        None
                    }
                }
            });
        }
        let mut stop = inner.stop.clone();
        let mut fresh = Vec::new();
        loop {
            tokio::select! {
                r = set.join_next() => match r {
                    Some(Ok(Some(o))) => fresh.push(o),
                    Some(_) => {}
                    None => break,
                },
                _ = super::stopped(&mut stop) => return,
            }
        }
        inner.quic.replace_observed(fresh, Timestamp::now());
    });
}

/// Starts an attempt with `peer` in the background if allowed (see the module docs).
pub(crate) fn maybe_start(node: &Node, peer: IdentityKey) {
    let inner = &node.inner;
    if inner.quic.endpoint().is_none() {
        return;
    }
    if mapping(node) == Mapping::EndpointDependent {
        // No punching through a symmetric NAT; but the guess may come from observations
        // made on both sides of an address change we have not noticed: ask again now and then.
        refresh_observed(node, DEPENDENT_REFRESH_MS);
        return;
    }
    let Ok(Some(contact)) = inner.contacts.get(&peer) else {
        return;
    };
    if contact.trust == Trust::Rejected || contact.relays.is_empty() {
        return;
    }
    let id = rand::random::<u64>();
    {
        let Ok(mut t) = inner.punch.tables.lock() else {
            return;
        };
        if t.busy.contains_key(&peer) || t.punched.contains_key(&peer) {
            return;
        }
        let now = inner.punch.now_ms();
        let allowed = inner
            .punch
            .policy
            .lock()
            .map(|mut p| p.start(&peer.0, now).is_ok())
            .unwrap_or(false);
        if !allowed || t.busy.len() >= MAX_TRACKED {
            return;
        }
        t.busy.insert(peer, id);
    }
    refresh_observed(node, REFRESH_INTERVAL_MS);
    let node = node.clone();
    let relays: Vec<_> = contact
        .relays
        .iter()
        .take(MAX_COORDINATORS)
        .cloned()
        .collect();
    tokio::spawn(async move {
        let mut clients = Vec::new();
        for h in &relays {
            if *node.inner.stop.borrow() {
                break;
            }
            let mut stop = node.inner.stop.clone();
            let got = tokio::select! {
                got = tokio::time::timeout(
                    Duration::from_millis(node.inner.cfg.direct_timeout_ms),
                    node.inner
                        .pool
                        .get(&node, &h.endpoint, IdentityKey(h.relay_key)),
                ) => got,
                _ = super::stopped(&mut stop) => break,
            };
            if let Ok(Ok(c)) = got {
                clients.push(c);
            }
        }
        if clients.is_empty() {
            tracing::debug!(peer = %peer.short(), "no relay of the contact reachable to punch through");
            finish(&node, peer, id, Err(Failure::NoReply));
            return;
        }
        let now = node.inner.punch.now_ms();
        let (attempt, first) = Attempt::initiate(id, mapping(&node), now);
        let (tx, rx) = mpsc::channel::<Punch>(8);
        if let Ok(mut t) = node.inner.punch.tables.lock() {
            t.attempts.insert(id, (peer, tx));
        }
        run(node, peer, attempt, clients, vec![first], rx).await;
    });
}

/// A `PUNCH_RELAY` arrived on `client`.
pub(crate) async fn on_message(node: &Node, client: &Arc<RelayClient>, p: PunchRelay) {
    let inner = &node.inner;
    let peer = IdentityKey(p.peer);
    let now = inner.punch.now_ms();
    let admitted = inner
        .punch
        .policy
        .lock()
        .map(|mut pol| pol.admit(&peer.0, now))
        .unwrap_or(Err(crate::transport::punch::PunchError::RateLimited));
    if let Err(e) = admitted {
        tracing::debug!(peer = %peer.short(), error = %e, "punch message dropped");
        return;
    }
    let me = inner.me().key();
    let msg = match PunchMessage::open(&p.body, &p.peer, &me.0, Timestamp::now().0) {
        Ok(m) => m,
        Err(e) => {
            tracing::debug!(peer = %peer.short(), error = %e, "punch message refused");
            return;
        }
    };
    match inner.contacts.get(&peer) {
        Ok(Some(c)) if c.trust != Trust::Rejected => {}
        _ => {
            tracing::debug!(peer = %peer.short(), "punch message from a non-contact ignored");
            return;
        }
    }
    if msg.kind == PunchKind::Connect {
        if inner.quic.endpoint().is_none() {
            return;
        }
        let tx_rx = mpsc::channel::<Punch>(8);
        {
            let Ok(mut t) = inner.punch.tables.lock() else {
                return;
            };
            // A retry of a running attempt goes to it (below).
            if let Some((who, tx)) = t.attempts.get(&msg.attempt) {
                if *who == peer {
                    let _ = tx.try_send(msg);
                }
                return;
            }
            // Both sides started at once: the smaller identity key keeps its attempt as
            // initiator, the other also answers.
            if t.busy.contains_key(&peer) && me.0 < peer.0 {
                tracing::debug!(peer = %peer.short(), "crossing punch attempts; keeping ours");
                return;
            }
            if t.attempts.len() >= MAX_TRACKED {
                return;
            }
            // Registered before this message is answered, so the copy arriving through the
            // initiator's other relay goes to this attempt (which drops it), not to a second
            // responder.
            t.busy.insert(peer, msg.attempt);
            t.attempts.insert(msg.attempt, (peer, tx_rx.0.clone()));
        }
        refresh_observed(node, REFRESH_INTERVAL_MS);
        let (attempt, steps) = Attempt::respond(&msg, mapping(node), now);
        tokio::spawn(run(
            node.clone(),
            peer,
            attempt,
            vec![client.clone()],
            steps,
            tx_rx.1,
        ));
        return;
    }
    let target = inner
        .punch
        .tables
        .lock()
        .ok()
        .and_then(|t| t.attempts.get(&msg.attempt).cloned());
    match target {
        Some((who, tx)) if who == peer => {
            let _ = tx.try_send(msg);
        }
        _ => tracing::debug!(peer = %peer.short(), "punch message for no running attempt"),
    }
}

fn finish(node: &Node, peer: IdentityKey, id: u64, r: Result<Endpoint, Failure>) {
    let inner = &node.inner;
    let now = inner.punch.now_ms();
    if let Ok(mut t) = inner.punch.tables.lock() {
        t.attempts.remove(&id);
        if t.busy.get(&peer) == Some(&id) {
            t.busy.remove(&peer);
        }
        if let Ok(ep) = &r {
            t.punched.insert(peer, ep.clone());
        }
    }
    if let Ok(mut pol) = inner.punch.policy.lock() {
        match &r {
            Ok(_) => pol.succeeded(&peer.0, now),
            Err(f) => pol.failed(&peer.0, *f, now),
        }
    }
    match &r {
        Ok(ep) => {
            inner.punch.info(peer, |i| {
                i.successes += 1;
                i.last_result = Some("connected".into());
            });
            tracing::info!(peer = %peer.short(), path = %ep, "hole punched: direct QUIC path");
            delivery::set_proven(inner, &peer, true);
            inner.wakers.wake(&peer);
        }
        Err(f) => {
            inner
                .punch
                .info(peer, |i| i.last_result = Some(f.name().into()));
            tracing::info!(peer = %peer.short(), why = f.name(), "hole punching failed");
        }
    }
}

/// Drives one attempt to its end; `rx` gets its messages (the caller registered it).
async fn run(
    node: Node,
    peer: IdentityKey,
    mut attempt: Attempt,
    clients: Vec<Arc<RelayClient>>,
    first: Vec<Step>,
    mut rx: mpsc::Receiver<Punch>,
) {
    let id = attempt.id;
    let mut steps: std::collections::VecDeque<Step> = first.into();
    // One task per address being dialled; a Dial step skips addresses still in flight, so a
    // retry never tears down a handshake that may be about to complete.
    let mut dials: JoinSet<(SocketAddr, Option<Dialled>)> = JoinSet::new();
    let mut in_flight: HashSet<SocketAddr> = HashSet::new();
    // The task holds the node: it must end with it (shutdown releases the store).
    let mut stop = node.inner.stop.clone();
    let result = loop {
        if *stop.borrow() {
            break Err(Failure::NoReply);
        }
        while let Some(s) = steps.pop_front() {
            match s {
                Step::Send(kind) => {
                    let body = sign(&node, kind, id, peer);
                    for c in &clients {
                        if let Err(e) = c.punch(peer, body.clone()).await {
                            tracing::debug!(peer = %peer.short(), error = %e, "cannot send punch message");
                        }
                    }
                }
                Step::Dial {
                    at_ms,
                    addrs,
                    initial_rtt_ms,
                } => {
                    let wait = at_ms.saturating_sub(node.inner.punch.now_ms());
                    let fresh: Vec<SocketAddr> = addrs
                        .into_iter()
                        .filter(|a| !in_flight.contains(a))
                        .take(MAX_DIAL.saturating_sub(in_flight.len()))
                        .collect();
                    tracing::debug!(
                        peer = %peer.short(),
                        addrs = ?fresh,
                        still_dialling = in_flight.len(),
                        wait_ms = wait,
                        initial_rtt_ms,
                        "punching"
                    );
                    for a in fresh {
                        in_flight.insert(a);
                        dials.spawn(dial(
                            node.clone(),
                            peer,
                            a,
                            Duration::from_millis(wait),
                            Duration::from_millis(initial_rtt_ms),
                        ));
                    }
                }
                Step::Failed(_) => break,
            }
        }
        if attempt.is_done() {
            break Err(last_failure(&attempt));
        }
        let deadline = attempt
            .poll_timeout()
            .unwrap_or_else(|| node.inner.punch.now_ms());
        let wait = Duration::from_millis(deadline.saturating_sub(node.inner.punch.now_ms()));
        tokio::select! {
            Some(done) = dials.join_next(), if !dials.is_empty() => {
                match done {
                    Ok((addr, Some((ep, client, events)))) => {
                        if let Some(a) = client.observed_address() {
                            node.inner.quic.observe(peer, &ep, a, Timestamp::now());
                        }
                        node.inner.pool.adopt(&node, &ep, peer, client, events);
                        attempt.connected();
                        tracing::debug!(peer = %peer.short(), %addr, "punch dial connected");
                        break Ok(ep);
                    }
                    Ok((addr, None)) => {
                        in_flight.remove(&addr);
                    }
                    Err(_) => {}
                }
                if dials.is_empty() {
                    in_flight.clear();
                    let now = node.inner.punch.now_ms();
                    steps.extend(attempt.dials_failed(now));
                }
            }
            m = rx.recv() => {
                if let Some(m) = m {
                    let now = node.inner.punch.now_ms();
                    steps.extend(attempt.handle(&m, now));
                    if let Some(rtt) = attempt.rtt_ms.filter(|_| attempt.initiator) {
                        node.inner.punch.info(peer, |i| i.last_rtt_ms = Some(rtt));
                    }
                }
            }
            _ = tokio::time::sleep(wait) => {
                let now = node.inner.punch.now_ms();
                steps.extend(attempt.handle_timeout(now));
            }
            _ = super::stopped(&mut stop) => break Err(Failure::NoReply),
        }
    };
    dials.abort_all();
    finish(&node, peer, id, result);
}

/// A punched connection: its endpoint, the registered client and its events.
type Dialled = (Endpoint, RelayClient, mpsc::Receiver<RelayEvent>);

/// Dials `addr` after `wait`, as a relay client of `peer`'s integrated relay (QUIC + bound
/// Noise expecting `peer`, then registration), for up to the dial window, with QUIC's
/// initial round-trip estimate set to `initial_rtt`.
async fn dial(
    node: Node,
    peer: IdentityKey,
    addr: SocketAddr,
    wait: Duration,
    initial_rtt: Duration,
) -> (SocketAddr, Option<Dialled>) {
    tokio::time::sleep(wait).await;
    let ep = Endpoint::from_socket_addr(addr).with_transport(Transport::Quic);
    let Some(q) = node.inner.quic.endpoint() else {
        return (addr, None);
    };
    // The dial lasts as long as the try may: a punch dial's first packet is normally dropped
    // (the peer's NAT has no mapping yet) and only a retransmission gets through, so the
    // node's `direct_timeout_ms` (made for reachable peers) would cut it short.
    let limits = HandshakeLimits {
        timeout: Duration::from_millis(DIAL_WINDOW_MS),
        ..node.inner.handshake.clone()
    };
    let me = node.inner.me();
    let r = async {
        let conn =
            crate::noise::quic::connect_with_rtt(q, addr, &me, Some(peer), limits, initial_rtt)
                .await?;
        // Zeros: whatever the peer's integrated relay offers (as any relay dial).
        let asked = RelayCapabilities {
            max_message_size: 0,
            max_storage_duration: 0,
            quota_messages: 0,
            quota_bytes: 0,
        };
        RelayClient::register(conn, &me, asked).await
    }
    .await;
    match r {
        Ok((client, events)) => (addr, Some((ep, client, events))),
        Err(e) => {
            tracing::debug!(peer = %peer.short(), endpoint = %ep, error = %e, "punch dial failed");
            (addr, None)
        }
    }
}

fn last_failure(a: &Attempt) -> Failure {
    a.failure().unwrap_or(Failure::NoConnection)
}
