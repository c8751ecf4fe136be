//! The send path: from the durable outbox to the recipient, direct first and racing a relay.
//!
//! Decision core ([`plan`], pure): for a recipient whose direct path is not known to work, the
//! node tries the direct path and the recipient's relay *at the same time* (mode `race`), or the
//! direct path first and the relay only after it failed (mode `direct-first`). Once a direct
//! attempt succeeds the path is *proven* and used alone, with a hedge: if its acknowledgement
//! has not arrived within [`HEDGE`], the relay attempt starts too, and the path is marked
//! unproven at that moment. A failure also marks it unproven, so the next message races. No attempt ever waits for a TCP timeout: every
//! connect + handshake is cut at `direct_timeout_ms` and every acknowledgement at
//! `ack_timeout_ms`, and the race does not wait for the loser.
//!
//! The same message may thus arrive twice (once directly, once through the relay): the
//! recipient drops the second copy on its `(sender, message id)` check, so a copy is harmless.
//!
//! Status: a store (a direct acknowledgement from the recipient's integrated relay, or a
//! relay's `STORE_RESPONSE`) makes the message `stored_at_relay` with its path; only the
//! recipient's `DELIVERY_CONFIRMATION`, sent after it decrypted and recorded the message and
//! routed back by the relay that held it, makes it `delivered`.
//!
//! Keeping: a stored message leaves the outbox for a `Tree::Awaiting` record holding its
//! ciphertext, and [`confirmations`] stores it again every `restore_after_ms` until the
//! confirmation arrives (at most [`RETAIN_MAX_MS`]). Session reset: a recipient that lost its
//! ratchet state answers with a signed `SESSION_RESET`; [`session_reset`] verifies it against
//! the pinned identity, forgets the session and re-encrypts every unconfirmed message from the
//! history under a new one (docs/PROTOCOL.md, "Session recovery").
//!
//! Retries: a recipient whose messages nobody accepted is retried with exponential backoff
//! (`retry_initial_ms` doubling to `retry_max_ms`), at once when it connects to us or its
//! contact is refreshed, and — with rendezvous configured — after a lookup that refreshes its
//! endpoints and relays (every `lookup_interval_ms` while it stays offline).

use super::history::{format_id, DeliveryPath, Direction, HistoryEntry, NewEntry, Status};
use super::outbox::{self, OutboxEntry};
use super::{commit, Inner, Node, NodeError};
use crate::config::DeliveryMode;
use crate::identity::{ContactIdentity, IdentityKey, Trust};
use crate::ratchet::{Content, MessageId, Payload, PeerKeys};
use crate::relay::{RelayClient, RelayClientError, RelayEvent};
use crate::store::Tree;
use crate::time::Timestamp;
use crate::wire::relay::{DeliveryConfirmation, ResetReason, SessionReset};
use crate::wire::rendezvous::RelayHint;
use crate::wire::Endpoint;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// How long [`Pool::close_all`] waits for connection event tasks at shutdown.
pub const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// How long a proven direct path gets before the relay is tried as well.
pub const HEDGE: Duration = Duration::from_millis(250);
/// Messages to one recipient in flight at once.
pub const PIPELINE: usize = 128;
/// Endpoints or relays tried per attempt.
pub const MAX_ROUTES: usize = 4;
/// How long a recipient's worker waits for more messages once its outbox is empty.
pub const WORKER_IDLE: Duration = Duration::from_secs(2);

/// What the node knows about the direct path to one peer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathState {
    /// The last direct attempt succeeded.
    pub direct_proven: bool,
    /// When that last changed.
    pub since: Option<Instant>,
}

/// What to do for one message. See the module docs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// No route is known: wait (and look the peer up).
    Wait,
    /// Only a direct route is known.
    DirectOnly,
    /// Only relays are known.
    RelayOnly,
    /// Direct and relay at once.
    Race,
    /// Direct; relay too if no acknowledgement within [`HEDGE`].
    Hedge,
    /// Direct; relay only after the direct attempt failed.
    DirectThenRelay,
}

/// The decision core.
pub fn plan(state: PathState, mode: DeliveryMode, has_direct: bool, has_relay: bool) -> Plan {
    match (has_direct, has_relay) {
        (false, false) => Plan::Wait,
        (true, false) => Plan::DirectOnly,
        (false, true) => Plan::RelayOnly,
        (true, true) if state.direct_proven => match mode {
            DeliveryMode::Race => Plan::Hedge,
            DeliveryMode::DirectFirst => Plan::DirectThenRelay,
        },
        (true, true) => match mode {
            DeliveryMode::Race => Plan::Race,
            DeliveryMode::DirectFirst => Plan::DirectThenRelay,
        },
    }
}

/// Outgoing relay-protocol connections (to recipients' nodes and to relays), reused.
///
/// Each connection's event task (confirmations and session resets it carries, which write to
/// the store) is owned by the pool: [`Pool::close_all`] closes the connections and waits for
/// those tasks, so none of them writes after the node's final flush. The per-destination
/// connect locks are dropped once nobody waits on them.
#[derive(Default)]
pub struct Pool {
    /// Open connections and when each registered.
    clients: Mutex<HashMap<String, (Arc<RelayClient>, Instant)>>,
    connecting: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    tasks: Mutex<JoinSet<()>>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("open", &self.len()).finish()
    }
}

fn pool_key(endpoint: &Endpoint, key: &IdentityKey) -> String {
    format!("{key}@{endpoint}")
}

impl Pool {
    /// Open connections.
    pub fn len(&self) -> usize {
        self.clients.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// True when no connection is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Closes every pooled connection and waits (at most [`CLOSE_WAIT`]) for their event
    /// tasks to finish what they are writing.
    pub async fn close_all(&self) {
        let all: Vec<Arc<RelayClient>> = self
            .clients
            .lock()
            .map(|mut c| c.drain().map(|(_, (v, _))| v).collect())
            .unwrap_or_default();
        for c in all {
            c.close().await;
        }
        let mut tasks = self
            .tasks
            .lock()
            .map(|mut t| std::mem::take(&mut *t))
            .unwrap_or_default();
        let joined = tokio::time::timeout(CLOSE_WAIT, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if joined.is_err() {
            tracing::warn!("connection event tasks did not finish in time");
        }
    }

    /// Runs `task` (a short background job: a lookup, an announcement) as one of the tasks
    /// [`Pool::close_all`] waits for.
    pub(crate) fn track(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        if let Ok(mut t) = self.tasks.lock() {
            while t.try_join_next().is_some() {}
            t.spawn(task);
        }
    }

    /// Connect locks held (for tests and status).
    pub fn connecting(&self) -> usize {
        self.connecting.lock().map(|c| c.len()).unwrap_or(0)
    }

    /// Event tasks running.
    pub fn tasks(&self) -> usize {
        self.tasks.lock().map(|t| t.len()).unwrap_or(0)
    }

    fn cached(&self, k: &str) -> Option<Arc<RelayClient>> {
        self.clients
            .lock()
            .ok()
            .and_then(|c| c.get(k).map(|(c, _)| c.clone()))
    }

    fn remove(&self, k: &str, client: &Arc<RelayClient>) {
        if let Ok(mut c) = self.clients.lock() {
            if c.get(k).is_some_and(|(x, _)| Arc::ptr_eq(x, client)) {
                c.remove(k);
            }
        }
    }

    /// Drops `client` from the pool if it is still the one for `(endpoint, key)`.
    pub(crate) fn forget(&self, endpoint: &Endpoint, key: &IdentityKey, client: &Arc<RelayClient>) {
        self.remove(&pool_key(endpoint, key), client);
    }

    /// Like [`Pool::get`], but a pooled connection that registered more than `older_than` ago
    /// is closed and replaced: a relay hands over the confirmations it kept for us (our
    /// connection's queue was full, or we were away) only when we register.
    pub(crate) async fn fresh(
        &self,
        node: &Node,
        endpoint: &Endpoint,
        key: IdentityKey,
        older_than: Duration,
    ) -> Result<Arc<RelayClient>, RelayClientError> {
        let k = pool_key(endpoint, &key);
        let stale = self.clients.lock().ok().and_then(|mut c| {
            let old = c.get(&k).is_some_and(|(_, at)| at.elapsed() > older_than);
            if old {
                c.remove(&k).map(|(client, _)| client)
            } else {
                None
            }
        });
        if let Some(client) = stale {
            client.close().await;
        }
        self.get(node, endpoint, key).await
    }

    /// A registered connection to `endpoint` whose Noise identity must be `key`.
    pub(crate) async fn get(
        &self,
        node: &Node,
        endpoint: &Endpoint,
        key: IdentityKey,
    ) -> Result<Arc<RelayClient>, RelayClientError> {
        let k = pool_key(endpoint, &key);
        if let Some(c) = self.cached(&k) {
            return Ok(c);
        }
        let lock = {
            let mut m = self
                .connecting
                .lock()
                .map_err(|_| RelayClientError::Closed)?;
            m.entry(k.clone()).or_default().clone()
        };
        let r = async {
            let _one = lock.lock().await;
            if let Some(c) = self.cached(&k) {
                return Ok(c);
            }
            self.connect(node, endpoint, key, &k).await
        }
        .await;
        // Forget the connect lock unless someone else waits on it (they keep their clone).
        if let Ok(mut m) = self.connecting.lock() {
            if m.get(&k)
                .is_some_and(|l| Arc::ptr_eq(l, &lock) && Arc::strong_count(l) <= 2)
            {
                m.remove(&k);
            }
        }
        r
    }

    async fn connect(
        &self,
        node: &Node,
        endpoint: &Endpoint,
        key: IdentityKey,
        k: &str,
    ) -> Result<Arc<RelayClient>, RelayClientError> {
        let inner = &node.inner;
        let (client, events) = RelayClient::connect_endpoint(
            endpoint,
            &inner.me(),
            Some(key),
            inner.handshake.clone(),
            inner.quic.endpoint(),
        )
        .await?;
        if let Some(a) = client.observed_address() {
            inner.quic.observe(key, endpoint, a, Timestamp::now());
        }
        let client = Arc::new(client);
        if let Err(e) = learn_update(inner, client.peer_identity()).await {
            tracing::warn!(%endpoint, peer = %key.short(), error = %e, "outgoing connection refused");
            client.close().await;
            return Err(e);
        }
        if let Ok(mut c) = self.clients.lock() {
            c.insert(k.to_string(), (client.clone(), Instant::now()));
        }
        if let Ok(mut t) = self.tasks.lock() {
            // Reap the tasks of connections that ended.
            while t.try_join_next().is_some() {}
            t.spawn(outbound_events(
                node.clone(),
                k.to_string(),
                client.clone(),
                events,
            ));
        }
        Ok(client)
    }

    /// Adds a connection made elsewhere (a punched QUIC path to `key` at `endpoint`), replacing
    /// any pooled one for the same endpoint.
    pub(crate) fn adopt(
        &self,
        node: &Node,
        endpoint: &Endpoint,
        key: IdentityKey,
        client: RelayClient,
        events: mpsc::Receiver<RelayEvent>,
    ) -> Arc<RelayClient> {
        let k = pool_key(endpoint, &key);
        let client = Arc::new(client);
        if let Ok(mut c) = self.clients.lock() {
            c.insert(k.clone(), (client.clone(), Instant::now()));
        }
        // Owned by the pool like every connection's event task (waited for at shutdown).
        if let Ok(mut t) = self.tasks.lock() {
            while t.try_join_next().is_some() {}
            t.spawn(outbound_events(node.clone(), k, client.clone(), events));
        }
        client
    }
}

/// A contact's node presented its identity in our handshake: pin a newer version (its
/// username or Noise key changed), as an inbound handshake would, and refuse an older one
/// than pinned (`Stale`: its noise key may have been rotated out because it leaked), as an
/// inbound handshake does. Relays are not contacts and are left alone.
async fn learn_update(
    inner: &Arc<super::Inner>,
    peer: &crate::identity::Identity,
) -> Result<(), RelayClientError> {
    let book = inner.contacts.clone();
    let p = peer.clone();
    let r = tokio::task::spawn_blocking(move || match book.get(&p.key())? {
        Some(c) if c.identity.version() < p.version() => {
            book.observe(&p, Timestamp::now()).map(|o| (Some(o), None))
        }
        Some(c) if c.identity.version() > p.version() => Ok((None, Some(c.identity.version()))),
        _ => Ok((None, None)),
    })
    .await;
    match r {
        Ok(Ok((_, Some(pinned)))) => {
            return Err(RelayClientError::StaleIdentity {
                pinned,
                presented: peer.version(),
            })
        }
        Ok(Ok((Some(obs), None))) => {
            inner
                .node_events
                .observed(&obs, super::events::Seen::Connection);
            tracing::info!(
                peer = %peer.key().short(),
                version = obs.contact().identity.version(),
                "contact presented a newer identity version"
            )
        }
        Ok(Ok((None, None))) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "contact store failed"),
        Err(e) => tracing::warn!(error = %e, "contact update task failed"),
    }
    Ok(())
}

/// Events on an outgoing connection: confirmations of our messages. Ends when it closes.
///
/// Confirmations that arrived together are recorded together ([`confirmed_all`]).
async fn outbound_events(
    node: Node,
    k: String,
    client: Arc<RelayClient>,
    mut events: mpsc::Receiver<RelayEvent>,
) {
    let mut next = None;
    loop {
        let ev = match next.take() {
            Some(ev) => ev,
            None => match events.recv().await {
                Some(ev) => ev,
                None => break,
            },
        };
        match ev {
            RelayEvent::Confirmation(c) => {
                let mut all = vec![c];
                while all.len() < MAX_CONFIRM_BATCH {
                    match events.try_recv() {
                        Ok(RelayEvent::Confirmation(c)) => all.push(c),
                        Ok(other) => {
                            next = Some(other);
                            break;
                        }
                        Err(_) => break,
                    }
                }
                confirmed_all(&node, &client, all).await
            }
            RelayEvent::SessionReset(n) => session_reset(&node, n).await,
            RelayEvent::Message(_) => {}
            RelayEvent::Punch(p) => super::punch::on_message(&node, &client, p).await,
            RelayEvent::Error(e) => tracing::debug!(code = e.code, "relay error event"),
        }
    }
    node.inner.pool.remove(&k, &client);
}

/// Most confirmations recorded with one commit.
pub const MAX_CONFIRM_BATCH: usize = 256;

/// A recipient confirmed one of our messages (routed back by a relay).
pub(crate) async fn confirmed(node: &Node, client: &RelayClient, c: DeliveryConfirmation) {
    confirmed_all(node, client, vec![c]).await
}

/// Recipients confirmed some of our messages (routed back by one relay): each recipient's are
/// recorded with one commit ([`upgrade_all`]), then all are acknowledged to the relay in one
/// write.
pub(crate) async fn confirmed_all(
    node: &Node,
    client: &RelayClient,
    all: Vec<DeliveryConfirmation>,
) {
    let me = node.inner.me().key().0;
    // Per recipient, in arrival order.
    let mut by_peer: Vec<(IdentityKey, Vec<DeliveryConfirmation>)> = Vec::new();
    for c in all {
        if c.sender != me {
            continue;
        }
        let peer = IdentityKey(c.delivered_to);
        match by_peer.iter_mut().find(|(p, _)| *p == peer) {
            Some((_, v)) => v.push(c),
            None => by_peer.push((peer, vec![c])),
        }
    }
    let mut acks = Vec::new();
    for (peer, cs) in by_peer {
        // A confirmation comes back through the relay that held the message: the recipient's
        // own node (the direct path) or a relay. It can overtake that store's acceptance
        // (another task), so it names the path when the entry has none yet.
        let path = if client.relay_key() == peer {
            DeliveryPath::direct(client.transport())
        } else {
            DeliveryPath::Relay
        };
        let ids: Vec<u64> = cs.iter().map(|c| c.message_id).collect();
        match upgrade_all(&node.inner, &peer, &ids, Some(path)).await {
            Ok(()) => acks.extend(cs),
            Err(e) => {
                tracing::debug!(error = %e, "confirmation not recorded; the relay will hand it over again")
            }
        }
    }
    if acks.is_empty() {
        return;
    }
    // Unacknowledged, the relay keeps a confirmation and hands it over again on the next
    // registration (the upgrade above is idempotent), so nothing is lost.
    if let Err(e) = client.ack_confirmations(&acks).await {
        tracing::debug!(error = %e, "confirmation ack not sent; the relay will hand it over again");
    }
}

/// A recipient could not decrypt one of our messages and says so in a signed notice, routed
/// back by the relay that held it (which deleted that copy). Verified against the recipient's
/// pinned identity; see [`reset`] for what follows.
pub(crate) async fn session_reset(node: &Node, n: SessionReset) {
    let inner = &node.inner;
    if n.sender != inner.me().key().0 {
        return;
    }
    let peer = IdentityKey(n.recipient);
    let contact = match inner.contacts.get(&peer) {
        Ok(Some(c)) if c.trust != Trust::Rejected && c.identity.key() == peer => c,
        _ => {
            tracing::debug!(peer = %peer.short(), "session reset from an unknown or rejected contact ignored");
            return;
        }
    };
    if crate::relay::auth::verify_session_reset(&n).is_err() {
        tracing::warn!(peer = %peer.short(), "session reset notice with a bad signature ignored");
        return;
    }
    match reset(inner, &contact, &n).await {
        Ok(Some(count)) => {
            tracing::info!(peer = %peer.short(), resent = count, "peer lost our session; started a new one and re-sent unconfirmed messages");
            inner.wakers.wake(&peer);
        }
        Ok(None) => {}
        Err(e) => tracing::error!(peer = %peer.short(), error = %e, "session reset failed"),
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// The copy of our message `seq` to `peer` we hold now: queued, or kept awaiting confirmation.
fn current_copy(
    inner: &Inner,
    peer: &IdentityKey,
    seq: u64,
) -> Result<(Option<OutboxEntry>, Option<OutboxEntry>), NodeError> {
    let mut key = peer.0.to_vec();
    key.extend_from_slice(&seq.to_be_bytes());
    let queued = inner
        .store
        .get(Tree::Outbox, &key)?
        .and_then(|v| crate::wire::msgpack::decode::<OutboxEntry>(&v).ok());
    let kept = inner
        .store
        .get(Tree::Awaiting, &seq.to_be_bytes())?
        .and_then(|v| crate::wire::msgpack::decode::<AwaitingConfirmation>(&v).ok())
        .and_then(|a| a.entry);
    Ok((queued, kept))
}

/// Acts on a verified notice. If it names an older copy than the one we hold (sent before an
/// earlier reset), only that message is stored again. If it names our current copy, every
/// session with the peer is forgotten and each message the peer has not confirmed (queued or
/// kept, at most [`MAX_RESEND`], oldest first) is encrypted again from the history under a new
/// session (first contact), with its original ids, and queued; each goes back to `queued`, and
/// a `notice` line records the reset. At most one reset per peer per [`RESET_MIN_INTERVAL`].
/// Returns the number re-sent, or `None` when nothing was reset.
async fn reset(
    inner: &Arc<Inner>,
    contact: &ContactIdentity,
    n: &SessionReset,
) -> Result<Option<usize>, NodeError> {
    let peer = contact.identity.key();
    let _one = inner.locks.peer(&peer).await;
    let Some(named) = inner.history.find(Direction::Out, &peer, n.message_id)? else {
        return Ok(None);
    };
    if named.status == Status::Delivered {
        return Ok(None);
    }
    let (queued, kept) = current_copy(inner, &peer, named.seq)?;
    let current = queued.as_ref().or(kept.as_ref());
    if current.map(|e| digest(&e.wire)) != Some(n.digest) {
        // A copy from before an earlier reset; the relay deleted it, so the current copy (if it
        // was accepted as a duplicate of that one) must be stored again.
        match (&queued, &kept) {
            (None, Some(e)) => {
                let mut batch = e.put();
                batch.delete(Tree::Awaiting, named.seq.to_be_bytes().to_vec());
                commit(&inner.store, batch).await?;
                inner.wakers.wake(&peer);
            }
            // Its store may be in flight right now: store it once more when that finishes.
            (Some(_), _) => {
                if let Ok(mut r) = inner.restore.lock() {
                    r.insert(named.seq);
                }
            }
            (None, None) => return Ok(None),
        }
        tracing::debug!(peer = %peer.short(), id = %format_id(named.id), "old copy dropped by the peer; storing the current one again");
        return Ok(None);
    }
    if let Ok(mut m) = inner.resets.lock() {
        if m.get(&peer)
            .is_some_and(|t| t.elapsed() < RESET_MIN_INTERVAL)
        {
            tracing::debug!(peer = %peer.short(), "session reset notice within the minimum interval ignored");
            return Ok(None);
        }
        m.insert(peer, Instant::now());
    }
    // Everything the peer has not confirmed: queued, and kept after a store.
    let mut pending: Vec<OutboxEntry> = outbox::for_recipient(&*inner.store, &peer, MAX_RESEND)?;
    for (_, v) in inner.store.scan(Tree::Awaiting, b"", None, RETAIN_SCAN)? {
        if let Ok(AwaitingConfirmation { entry: Some(e), .. }) =
            crate::wire::msgpack::decode::<AwaitingConfirmation>(&v)
        {
            if e.recipient == peer.0 {
                pending.push(e);
            }
        }
    }
    // And what the peer had confirmed but lost (restored from an older backup): after what
    // its notice says it last recorded from us, within the recovery window.
    let mut lost = std::collections::HashSet::new();
    if let Some(last) = n.last_recorded {
        for e in super::recovery::lost_after(
            &inner.history,
            &peer,
            last,
            Timestamp::now().0,
            MAX_RESEND,
        )? {
            lost.insert(e.history_seq);
            pending.push(e);
        }
    }
    pending.sort_by_key(|e| e.history_seq);
    pending.dedup_by_key(|e| e.history_seq);
    pending.truncate(MAX_RESEND);
    commit(&inner.store, inner.sessions().forget(&peer.0)).await?;
    let keys = PeerKeys {
        identity_key: peer.0,
        noise_key: contact.identity.noise_key().0,
    };
    let (mut resent, mut recovered) = (0usize, 0usize);
    for e in pending {
        let Some(mut h) = inner.history.get(e.history_seq)? else {
            continue;
        };
        if h.direction != Direction::Out
            || (h.status == Status::Delivered && !lost.contains(&h.seq))
        {
            continue;
        }
        let id = match <[u8; 16]>::try_from(e.payload_id.as_slice()) {
            Ok(id) => MessageId(id),
            Err(_) => {
                // Written before full ids were kept: the same history id, fresh low half.
                let mut id = MessageId::random(&mut rand::rngs::OsRng);
                id.0[..8].copy_from_slice(&e.message_id.to_be_bytes());
                id
            }
        };
        // A group copy is re-sent as the same group envelope, not as its text (and not at all
        // once its envelope was pruned, see `groups::prune_task`).
        let content = match super::groups::envelope_for(inner, h.seq)? {
            Some(data) => Content::Other {
                kind: crate::group::control::PAYLOAD_KIND,
                data,
            },
            None if h.group.is_some() => continue,
            None => Content::Text(h.text.clone()),
        };
        let payload = Payload {
            id,
            sent_at: Timestamp(h.sent_at),
            content,
        };
        let out =
            inner
                .sessions()
                .encrypt(&*inner.store, &mut rand::rngs::OsRng, &keys, &payload)?;
        let (mut batch, wire) = out.into_parts();
        let again = OutboxEntry {
            wire,
            payload_id: id.0.to_vec(),
            ..e
        };
        batch.extend(again.put());
        batch.extend(inner.history.keep_payload_id(h.seq, &id.0));
        batch.delete(Tree::Awaiting, h.seq.to_be_bytes().to_vec());
        h.status = Status::Queued;
        h.path = None;
        batch.extend(inner.history.update(&h));
        commit(&inner.store, batch).await?;
        let _ = inner.events.send(h);
        resent += 1;
        if lost.contains(&e.history_seq) {
            recovered += 1;
        }
    }
    let reason = ResetReason::from_u8(n.reason);
    let now = Timestamp::now();
    let (line, batch) = inner.history.record(NewEntry {
        direction: Direction::Out,
        peer,
        peer_name: Some(contact.identity.username().to_string()),
        id: rand::random::<u64>(),
        text: format!(
            "session reset: {} could not decrypt message {} ({}); new session started, {resent} message(s) re-sent ({recovered} it had confirmed but lost)",
            contact.identity.username(),
            format_id(named.id),
            reason.name()
        ),
        sent_at: now,
        recorded_at: now,
        status: Status::Notice,
        path: None,
    });
    commit(&inner.store, batch).await?;
    let _ = inner.events.send(line);
    Ok(Some(resent))
}

/// Marks an outgoing message delivered (if it is not already). See [`upgrade_all`].
#[cfg(test)]
async fn upgrade(
    inner: &Arc<Inner>,
    peer: &IdentityKey,
    id: u64,
    path: Option<DeliveryPath>,
) -> Result<(), NodeError> {
    upgrade_all(inner, peer, &[id], path).await
}

/// Marks outgoing messages to `peer` delivered (those that are not already), with one commit.
///
/// Under the peer's lock, like the acceptance it may overtake ([`finalize_all`]): a
/// confirmation can arrive while that store's acceptance is between its reads and its commit,
/// and an acceptance committed after this would write `stored_at_relay` over `delivered` (and
/// keep the message for a needless re-store).
async fn upgrade_all(
    inner: &Arc<Inner>,
    peer: &IdentityKey,
    ids: &[u64],
    path: Option<DeliveryPath>,
) -> Result<(), NodeError> {
    let _one = inner.locks.peer(peer).await;
    let mut batch = crate::store::Batch::new();
    let mut done = Vec::new();
    for &id in ids {
        let Some(mut e) = inner.history.find(Direction::Out, peer, id)? else {
            continue;
        };
        if e.status == Status::Delivered || done.iter().any(|d: &HistoryEntry| d.seq == e.seq) {
            continue;
        }
        e.status = Status::Delivered;
        if e.path.is_none() {
            e.path = path;
        }
        batch.extend(inner.history.update(&e));
        batch.delete(Tree::Awaiting, e.seq.to_be_bytes().to_vec());
        // A copy re-queued for a re-store (or after a session reset) is no longer needed.
        let mut key = peer.0.to_vec();
        key.extend_from_slice(&e.seq.to_be_bytes());
        batch.delete(Tree::Outbox, key);
        done.push(e);
    }
    if done.is_empty() {
        return Ok(());
    }
    commit(&inner.store, batch).await?;
    if let Ok(mut r) = inner.restore.lock() {
        for e in &done {
            r.remove(&e.seq);
        }
    }
    for e in done {
        let _ = inner.events.send(e);
    }
    Ok(())
}

/// A message a relay (or the recipient's integrated relay) stored whose delivery confirmation
/// has not arrived. Keyed by the history seq in `Tree::Awaiting`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct AwaitingConfirmation {
    /// The relay that stored it (where the confirmation will be kept for us). For a direct
    /// store: the recipient's node endpoint and identity key.
    relay: RelayHint,
    /// The message as it was stored (so it can be stored again). `None` in records written
    /// before senders kept their messages.
    #[serde(default)]
    entry: Option<OutboxEntry>,
    /// When it was first accepted (ms since the epoch).
    #[serde(default)]
    first_stored: u64,
    /// When it was last accepted (ms since the epoch).
    #[serde(default)]
    last_stored: u64,
}

/// How often the node reconnects to relays that hold messages awaiting confirmation (and
/// checks for messages to re-store): this, or `restore_after_ms / 2` if that is shorter.
pub const CONFIRMATION_POLL: Duration = Duration::from_secs(30);
/// How long a sender keeps a stored message whose delivery confirmation never arrives (and
/// keeps re-storing it every `restore_after_ms`): 30 days, the longest a relay keeps one by
/// default. After that the message stays `stored_at_relay` in the history and is no longer kept.
pub const RETAIN_MAX_MS: u64 = 30 * 24 * 3600 * 1000;
/// Most kept (awaiting) messages examined per round; the rest wait for the next round.
pub const RETAIN_SCAN: usize = 10_000;
/// A sender acts on at most one session reset per peer in this interval; later notices in it
/// concern copies sent before the reset, which the reset already re-queued.
pub const RESET_MIN_INTERVAL: Duration = Duration::from_secs(10);
/// Most unconfirmed messages re-sent by one session reset (oldest first); any beyond stay kept
/// and are re-stored with their old ciphertext, which triggers the next reset.
pub const MAX_RESEND: usize = 1000;

/// Reconnects (through the pool) to every relay that stored a message of ours whose
/// confirmation has not arrived, so that confirmations it kept while we were away reach us:
/// shortly after start, then every [`CONFIRMATION_POLL`]. Entries whose message is delivered
/// (or gone) are dropped.
pub(crate) async fn confirmations(node: Node) {
    let inner = node.inner.clone();
    let mut stop = inner.stop.clone();
    let restore_after = inner.cfg.restore_after_ms.max(1);
    let poll = CONFIRMATION_POLL.min(Duration::from_millis((restore_after / 2).max(100)));
    let mut wait = Duration::from_secs(1).min(poll);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = super::stopped(&mut stop) => return,
        }
        wait = poll;
        let entries = match inner.store.scan(Tree::Awaiting, b"", None, RETAIN_SCAN) {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, "cannot read awaiting confirmations");
                continue;
            }
        };
        let now = Timestamp::now().0;
        // Each relay holding awaiting messages, and whether one has waited a whole poll.
        let mut relays: Vec<(RelayHint, bool)> = Vec::new();
        let poll_ms = u64::try_from(poll.as_millis()).unwrap_or(u64::MAX);
        let mut changes = crate::store::Batch::new();
        let mut requeued: Vec<IdentityKey> = Vec::new();
        for (k, v) in entries {
            let seq = <[u8; 8]>::try_from(k.as_slice()).map(u64::from_be_bytes);
            let entry: Result<AwaitingConfirmation, _> = crate::wire::msgpack::decode(&v);
            let pending = match (&seq, &entry) {
                (Ok(seq), Ok(_)) => matches!(
                    inner.history.get(*seq),
                    Ok(Some(h)) if h.status == Status::StoredAtRelay
                ),
                _ => false,
            };
            match entry {
                Ok(a) if pending => {
                    let first = if a.first_stored == 0 {
                        now
                    } else {
                        a.first_stored
                    };
                    match a.entry {
                        Some(_) if now.saturating_sub(first) > RETAIN_MAX_MS => {
                            tracing::warn!(seq = ?seq, "no delivery confirmation within the retention limit; message no longer kept");
                            changes.delete(Tree::Awaiting, k);
                        }
                        // No confirmation in time: store it again (the relay de-duplicates by
                        // id, and stores it anew if it lost it; the recipient drops a copy it
                        // already recorded and confirms it again).
                        Some(e) if now.saturating_sub(a.last_stored) >= restore_after => {
                            if inner
                                .store
                                .get(Tree::Outbox, &e.key())
                                .ok()
                                .flatten()
                                .is_none()
                            {
                                changes.extend(e.put());
                                requeued.push(IdentityKey(e.recipient));
                            }
                            // The record stays (with `first_stored`, so the retention limit
                            // holds across re-stores) until the store overwrites it.
                            let again = AwaitingConfirmation {
                                relay: a.relay,
                                entry: Some(e),
                                first_stored: first,
                                last_stored: now,
                            };
                            changes.put(Tree::Awaiting, k, crate::wire::msgpack::encode(&again));
                        }
                        _ => {
                            let stale = now.saturating_sub(a.last_stored) >= poll_ms;
                            match relays.iter_mut().find(|(r, _)| *r == a.relay) {
                                Some((_, s)) => *s |= stale,
                                None => relays.push((a.relay, stale)),
                            }
                        }
                    }
                }
                _ => changes.delete(Tree::Awaiting, k),
            }
        }
        if !changes.is_empty() {
            match commit(&inner.store, changes).await {
                Ok(()) if !requeued.is_empty() => {
                    tracing::info!(
                        messages = requeued.len(),
                        "no delivery confirmation in time; storing again"
                    );
                    requeued.sort_unstable_by_key(|k| k.0);
                    requeued.dedup();
                    for peer in &requeued {
                        inner.wakers.wake(peer);
                    }
                }
                Ok(()) => {}
                Err(e) => tracing::error!(error = %e, "cannot update kept messages"),
            }
        }
        for (hint, stale) in relays.into_iter().take(MAX_ROUTES * 16) {
            // A confirmation still missing after a whole poll may be kept at the relay for a
            // connection of ours that has been open all along: register anew to receive it.
            let key = IdentityKey(hint.relay_key);
            let got =
                tokio::time::timeout(Duration::from_millis(inner.cfg.direct_timeout_ms), async {
                    if stale {
                        inner.pool.fresh(&node, &hint.endpoint, key, poll).await
                    } else {
                        inner.pool.get(&node, &hint.endpoint, key).await
                    }
                })
                .await;
            if !matches!(got, Ok(Ok(_))) {
                tracing::debug!(relay = %hint.endpoint, "relay holding confirmations unreachable");
            }
        }
    }
}

/// Encrypts and queues a message (the `send` path). See [`enqueue_content`].
pub(crate) async fn enqueue(
    inner: &Arc<Inner>,
    c: &ContactIdentity,
    text: &str,
) -> Result<HistoryEntry, NodeError> {
    enqueue_content(inner, c, Content::Text(text.to_string()), text).await
}

/// Most sends to one peer encrypted and committed together by [`enqueue_content`].
pub const MAX_SEND_BATCH: usize = 256;

/// One `send` waiting for its peer's ratchet lock (see [`enqueue_content`]).
pub(crate) struct QueuedSend {
    peer: PeerKeys,
    username: String,
    content: Content,
    text: String,
    done: tokio::sync::oneshot::Sender<Result<HistoryEntry, NodeError>>,
}

/// Sends waiting for their peer's ratchet lock, per peer (see [`enqueue_content`]).
#[derive(Default)]
pub(crate) struct SendQueue(Mutex<HashMap<IdentityKey, Vec<QueuedSend>>>);

impl SendQueue {
    fn push(&self, peer: IdentityKey, q: QueuedSend) -> Result<(), NodeError> {
        let mut m = self.0.lock().map_err(|_| crate::store::StoreError::Poisoned)?;
        m.entry(peer).or_default().push(q);
        Ok(())
    }

    /// Sends waiting for `peer` (tests).
    #[cfg(test)]
    fn queued(&self, peer: &IdentityKey) -> usize {
        self.0
            .lock()
            .map(|m| m.get(peer).map_or(0, |v| v.len()))
            .unwrap_or(0)
    }

    /// Up to [`MAX_SEND_BATCH`] of `peer`'s waiting sends, oldest first. Sends whose caller
    /// gave up are dropped first, so they never fill a batch: every send taken has a caller
    /// waiting, and every send left behind has one that will take the lock after this holder
    /// (cancelled stale sends once filled a whole batch and left a live one queued with nobody
    /// to take it).
    fn take(&self, peer: &IdentityKey) -> Vec<QueuedSend> {
        let Ok(mut m) = self.0.lock() else {
            return Vec::new();
        };
        let Some(v) = m.get_mut(peer) else {
            return Vec::new();
        };
        v.retain(|q| !q.done.is_closed());
        if v.len() <= MAX_SEND_BATCH {
            let all = std::mem::take(v);
            m.remove(peer);
            all
        } else {
            v.drain(..MAX_SEND_BATCH).collect()
        }
    }
}

/// [`enqueue`] for any payload content; `text` is what the history entry shows (for a file
/// message, a one-line description). Returns once the message is durable.
///
/// Commit before send: the advanced ratchet session, the history entry and the outbox entry
/// of a message are one atomic batch, applied under the peer's ratchet lock, and the delivery
/// worker reads the outbox only under the same lock, so it never sees (and sends) a message
/// whose flush has not returned.
///
/// Sends to one peer are combined: each call queues its message, then takes the peer's lock;
/// whoever holds it takes every send queued for that peer by then (at most
/// [`MAX_SEND_BATCH`]), encrypts them in order (each batch applied before the next encrypt
/// reads the session) and makes all of them durable with **one** flush; a call whose message
/// was taken by an earlier holder just waits for its answer. So many sends in flight from one
/// sender share a flush, and a lone send costs what it did. Encryption and the commit run on
/// the blocking pool (off the async workers), and the lock guard moves there with them, so a
/// cancelled `send` cannot release it early (a cancelled send still queued is skipped). Other
/// peers are not held back: their commits share the flush (group commit). If an apply or the
/// flush fails (a full disk), the store rolls its in-memory state back to what is on disk:
/// no session is advanced, no outbox entry exists, nothing is sent, every send of the batch
/// gets the error, and the next message reuses no key.
pub(crate) async fn enqueue_content(
    inner: &Arc<Inner>,
    c: &ContactIdentity,
    content: Content,
    text: &str,
) -> Result<HistoryEntry, NodeError> {
    let key = c.identity.key();
    let (tx, rx) = tokio::sync::oneshot::channel();
    inner.sends.push(
        key,
        QueuedSend {
            peer: PeerKeys {
                identity_key: key.0,
                noise_key: c.identity.noise_key().0,
            },
            username: c.identity.username().to_string(),
            content,
            text: text.to_string(),
            done: tx,
        },
    )?;
    let one = inner.locks.peer(&key).await;
    let items = inner.sends.take(&key);
    if items.is_empty() {
        // An earlier holder of the lock took ours: its answer is on the way.
        drop(one);
    } else {
        let sessions = inner.sessions();
        let store = inner.store.clone();
        let history = inner.history.clone();
        let joined = tokio::task::spawn_blocking(move || {
            encrypt_all(&sessions, &*store, &history, key, items);
            // Released only once the flush returned.
            drop(one);
        })
        .await;
        if let Err(e) = joined {
            return Err(crate::store::StoreError::TaskFailed {
                task: "commit",
                detail: e.to_string(),
            }
            .into());
        }
    }
    rx.await.map_err(|_| crate::store::StoreError::TaskFailed {
        task: "commit",
        detail: "the send batch ended without an answer".into(),
    })?
}

/// The blocking part of [`enqueue_content`]: encrypts and applies each send in order, flushes
/// once, then answers each. The caller holds `key`'s ratchet lock.
fn encrypt_all(
    sessions: &crate::ratchet::SessionManager,
    store: &dyn crate::store::Store,
    history: &super::history::History,
    key: IdentityKey,
    items: Vec<QueuedSend>,
) {
    let generation = store.generation();
    let mut applied: Vec<(HistoryEntry, tokio::sync::oneshot::Sender<_>)> =
        Vec::with_capacity(items.len());
    let mut store_failed: Option<crate::store::StoreError> = None;
    for q in items {
        if let Some(e) = &store_failed {
            let _ = q.done.send(Err(e.clone().into()));
            continue;
        }
        if q.done.is_closed() {
            // Its caller gave up before it was encrypted: not sent.
            continue;
        }
        let one = (|| -> Result<(HistoryEntry, crate::store::Batch), NodeError> {
            let now = Timestamp::now();
            let payload = Payload {
                id: MessageId::random(&mut rand::rngs::OsRng),
                sent_at: now,
                content: q.content,
            };
            let mut id8 = [0u8; 8];
            id8.copy_from_slice(&payload.id.0[..8]);
            let id = u64::from_be_bytes(id8);
            let out = sessions.encrypt(store, &mut rand::rngs::OsRng, &q.peer, &payload)?;
            let (mut batch, wire) = out.into_parts();
            let (entry, hb) = history.record(NewEntry {
                direction: Direction::Out,
                peer: key,
                peer_name: Some(q.username),
                id,
                text: q.text,
                sent_at: now,
                recorded_at: now,
                status: Status::Queued,
                path: None,
            });
            batch.extend(hb);
            batch.extend(history.keep_payload_id(entry.seq, &payload.id.0));
            batch.extend(
                OutboxEntry {
                    message_id: id,
                    recipient: key.0,
                    wire,
                    history_seq: entry.seq,
                    payload_id: payload.id.0.to_vec(),
                }
                .put(),
            );
            Ok((entry, batch))
        })();
        if store.generation() != generation {
            // A failed flush elsewhere rolled the store back, taking our earlier applies with
            // it: the rest must not land on the reloaded store and be sent while every caller
            // of this batch is told it failed.
            let e = crate::store::StoreError::RolledBack;
            let _ = q.done.send(Err(e.clone().into()));
            store_failed = Some(e);
            continue;
        }
        match one {
            Ok((entry, batch)) => match store.apply(batch) {
                Ok(()) => applied.push((entry, q.done)),
                Err(e) => {
                    // Rolled back to what is on disk: every earlier apply of this batch too.
                    let _ = q.done.send(Err(e.clone().into()));
                    store_failed = Some(e);
                }
            },
            Err(e) => {
                let _ = q.done.send(Err(e));
            }
        }
    }
    let flushed = match (store_failed, applied.is_empty()) {
        (Some(e), _) => Err(e),
        (None, true) => Ok(()),
        (None, false) => store.flush().and_then(|()| {
            if store.generation() == generation {
                Ok(())
            } else {
                // A failed flush elsewhere threw away applied writes, maybe ours.
                Err(crate::store::StoreError::RolledBack)
            }
        }),
    };
    for (entry, done) in applied {
        let _ = done.send(match &flushed {
            Ok(()) => Ok(entry),
            Err(e) => Err(e.clone().into()),
        });
    }
}

/// How often the engine re-reads the whole outbox as a safety net (a worker that stopped on a
/// local error, a message queued by a path that woke nobody). Wake-ups do the real work.
pub const RESCAN: Duration = Duration::from_secs(30);

/// Starts a worker per recipient with queued messages; runs until shutdown, then waits for
/// every worker to stop (each finishes the commit it is in; none is aborted mid-write).
///
/// Workers are started for the recipients read from the outbox at start, for each recipient
/// [`super::wake::Wakers::wake`] hands over (a message queued for a recipient without a
/// worker), and at each [`RESCAN`].
pub(crate) async fn engine(node: Node) {
    let inner = node.inner.clone();
    let mut stop = inner.stop.clone();
    let mut workers: JoinSet<()> = JoinSet::new();
    let mut rescan = true;
    loop {
        let (woken, all) = inner.wakers.take();
        let mut start: Vec<IdentityKey> = woken;
        if rescan || all {
            match outbox::recipients(&*inner.store, 10_000) {
                Ok(recipients) => start.extend(recipients),
                Err(e) => tracing::error!(error = %e, "cannot read the outbox"),
            }
        }
        for r in start {
            if let Some(w) = inner.wakers.register(&r) {
                let reg = super::wake::Registration::new(inner.wakers.clone(), r, w);
                workers.spawn(worker(node.clone(), r, reg));
            }
        }
        rescan = false;
        tokio::select! {
            _ = inner.wakers.engine_woken() => {}
            Some(_) = workers.join_next(), if !workers.is_empty() => {}
            _ = tokio::time::sleep(RESCAN) => rescan = true,
            _ = super::stopped(&mut stop) => break,
        }
    }
    // Workers return at the stop signal once their current step is done.
    while workers.join_next().await.is_some() {}
}

/// Delivers one recipient's queued messages, retrying with backoff until the outbox is empty.
///
/// Up to [`PIPELINE`] messages are in flight at once, and the pipeline is refilled as each one
/// completes (and whenever a new message is queued), so a fresh message never waits behind a
/// slow one. After a failed attempt no new attempts start until the in-flight ones finish;
/// then the worker backs off.
async fn worker(node: Node, recipient: IdentityKey, reg: super::wake::Registration) {
    let inner = node.inner.clone();
    let mut stop = inner.stop.clone();
    let initial = Duration::from_millis(inner.cfg.retry_initial_ms.max(1));
    let max = Duration::from_millis(inner.cfg.retry_max_ms.max(1));
    let mut backoff = initial;
    let mut refresh = false;
    let mut failed = false;
    let mut set: JoinSet<Vec<(OutboxEntry, Outcome)>> = JoinSet::new();
    let mut in_flight: std::collections::HashSet<u64> = std::collections::HashSet::new();
    // The entries each attempt task carries (to forget them if the task fails).
    let mut tasks: HashMap<tokio::task::Id, Vec<u64>> = HashMap::new();
    loop {
        if *stop.borrow() {
            return;
        }
        if !failed && in_flight.len() < PIPELINE {
            // Wake-ups up to here are covered by the read below.
            reg.waker().clear();
            // Under the peer's ratchet lock: `enqueue` holds it until its commit returned, so
            // what we read here is durable (or was rolled back before we could see it).
            let read = {
                let _committed = inner.locks.peer(&recipient).await;
                outbox::for_recipient(&*inner.store, &recipient, PIPELINE)
            };
            let entries = match read {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!(error = %e, "cannot read the outbox");
                    Vec::new()
                }
            };
            if entries.is_empty() && set.is_empty() {
                // Linger briefly, then leave unless a wake-up arrived since the read.
                tokio::select! {
                    _ = reg.waker().woken() => continue,
                    _ = tokio::time::sleep(WORKER_IDLE) => {
                        if reg.retire() {
                            return;
                        }
                        continue;
                    }
                    _ = super::stopped(&mut stop) => return,
                }
            }
            let fresh: Vec<OutboxEntry> = entries
                .into_iter()
                .filter(|e| !in_flight.contains(&e.history_seq))
                .take(PIPELINE - in_flight.len())
                .collect();
            if !fresh.is_empty() {
                if refresh || needs_lookup(&inner, &recipient) {
                    lookup(&inner, &recipient).await;
                    refresh = false;
                }
                match inner.peer(&recipient) {
                    Ok(Some(contact)) if contact.trust != Trust::Rejected => {
                        // One task for all of them: stored together (one write), see
                        // `attempt_many`.
                        let seqs: Vec<u64> = fresh.iter().map(|e| e.history_seq).collect();
                        in_flight.extend(seqs.iter().copied());
                        let node = node.clone();
                        let h = set.spawn(async move { attempt_many(&node, fresh, &contact).await });
                        tasks.insert(h.id(), seqs);
                    }
                    // Removed, rejected, or a stranger forgotten: messages stay queued until
                    // the user trusts (or adds) it again.
                    _ if set.is_empty() => return,
                    _ => {}
                }
            }
        }
        if set.is_empty() {
            if failed {
                tracing::debug!(peer = %recipient.short(), retry_in = ?backoff, "delivery attempt failed; will retry");
                let wait = if inner.rendezvous.is_some() {
                    backoff.min(Duration::from_millis(inner.cfg.lookup_interval_ms.max(1)))
                } else {
                    backoff
                };
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = reg.waker().woken() => {}
                    _ = super::stopped(&mut stop) => return,
                }
                backoff = (backoff * 2).min(max);
                refresh = inner.rendezvous.is_some();
                failed = false;
            }
            continue;
        }
        tokio::select! {
            done = set.join_next_with_id() => {
                let Some(first) = done else { continue };
                // Every attempt that completed by now is recorded with one commit.
                let mut accepted: Vec<Accepted> = Vec::new();
                let mut next = Some(first);
                while let Some(r) = next {
                    match r {
                        Ok((id, results)) => {
                            tasks.remove(&id);
                            for (e, r) in results {
                                in_flight.remove(&e.history_seq);
                                match r {
                                    Some((status, path, hint)) => accepted.push((e, status, path, hint)),
                                    None => failed = true,
                                }
                            }
                        }
                        Err(err) => {
                            // A failed task: its messages stay queued, to be attempted again.
                            for seq in tasks.remove(&err.id()).unwrap_or_default() {
                                in_flight.remove(&seq);
                            }
                            failed = true;
                        }
                    }
                    next = set.try_join_next_with_id();
                }
                if !accepted.is_empty() {
                    match finalize_all(&inner, &recipient, accepted).await {
                        Ok(()) => backoff = initial,
                        Err(err) => {
                            if let Some(repeats) = inner.record_errors.due() {
                                tracing::error!(error = %err, repeats, "cannot record delivery; will retry");
                            }
                            failed = true;
                        }
                    }
                }
            }
            _ = reg.waker().woken() => {}
            _ = super::stopped(&mut stop) => return,
        }
    }
}

fn needs_lookup(inner: &Inner, recipient: &IdentityKey) -> bool {
    inner.rendezvous.is_some()
        && inner
            .peer(recipient)
            .ok()
            .flatten()
            .is_some_and(|c| c.endpoints.is_empty() && c.relays.is_empty())
}

/// Refreshes a contact's endpoints and relays from rendezvous (best effort). Someone who is
/// not a contact (an unknown sender) is pinned in the strangers table, never in the book.
pub(crate) async fn lookup(inner: &Arc<Inner>, recipient: &IdentityKey) {
    let Some(settings) = &inner.rendezvous else {
        return;
    };
    let found = tokio::time::timeout(
        Duration::from_secs(5),
        crate::rendezvous::client::lookup_anywhere(settings, recipient),
    )
    .await;
    match found {
        Ok(Ok(Some(info))) if info.identity.key() == *recipient => {
            let mut endpoints = Vec::new();
            if info.online {
                endpoints.push(info.endpoint.clone());
                endpoints.extend(info.alt_endpoints.iter().cloned());
            }
            let is_contact = matches!(inner.contacts.get(recipient), Ok(Some(_)));
            if !is_contact {
                if let Ok(mut s) = inner.strangers.lock() {
                    s.observe(&info.identity, &endpoints, &info.relays, Timestamp::now());
                }
                tracing::debug!(peer = %recipient.short(), online = info.online, "rendezvous lookup pinned a stranger");
                return;
            }
            let book = inner.contacts.clone();
            let relays = info.relays.clone();
            let id = info.identity.clone();
            let r = tokio::task::spawn_blocking(move || {
                book.observe_with_routes(&id, &endpoints, &relays, Timestamp::now())
            })
            .await;
            if let Ok(Ok(obs)) = r {
                inner
                    .node_events
                    .observed(&obs, super::events::Seen::Rendezvous);
                tracing::debug!(peer = %recipient.short(), online = info.online, "rendezvous lookup refreshed routes");
            }
        }
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "rendezvous lookup failed"),
        Err(_) => tracing::debug!("rendezvous lookup timed out"),
    }
}

/// Records a store's acceptance of an outbox entry (under the recipient's lock, see
/// [`upgrade`]).
#[cfg(test)]
async fn finalize(
    inner: &Arc<Inner>,
    e: &OutboxEntry,
    status: Status,
    path: DeliveryPath,
    hint: RelayHint,
) -> Result<(), NodeError> {
    finalize_all(
        inner,
        &IdentityKey(e.recipient),
        vec![(e.clone(), status, path, hint)],
    )
    .await
}

/// A store's acceptance of one outbox entry: the entry, its status, path and where its
/// confirmation comes from.
type Accepted = (OutboxEntry, Status, DeliveryPath, RelayHint);

/// Records the acceptances of several of `recipient`'s outbox entries (all the stores of a
/// worker that completed together) under the recipient's lock (see [`upgrade`]), as one batch
/// with one flush.
async fn finalize_all(
    inner: &Arc<Inner>,
    recipient: &IdentityKey,
    accepted: Vec<Accepted>,
) -> Result<(), NodeError> {
    let _one = inner.locks.peer(recipient).await;
    let mut batch = crate::store::Batch::new();
    let mut announce = Vec::new();
    for (e, status, path, hint) in accepted {
        let Some((b, entry)) = acceptance(inner, &e, status, path, hint)? else {
            continue;
        };
        batch.extend(b);
        if let Some(h) = entry {
            tracing::debug!(id = %format_id(h.id), ?status, ?path, "message accepted");
            announce.push(h);
        }
    }
    if batch.is_empty() {
        return Ok(());
    }
    commit(&inner.store, batch).await?;
    for h in announce {
        let _ = inner.events.send(h);
    }
    Ok(())
}

/// The reads of [`finalize_all`] for one entry: the batch that records the acceptance, and the history entry to
/// announce (`None`: nothing changed that a subscriber must see). `None` when there is nothing
/// to record. The caller holds the recipient's lock from here until the batch is committed.
///
/// Monotonic: a message already `delivered` stays so; its acceptance only removes the queued
/// copy and keeps nothing for a re-store.
fn acceptance(
    inner: &Inner,
    e: &OutboxEntry,
    status: Status,
    path: DeliveryPath,
    hint: RelayHint,
) -> Result<Option<(crate::store::Batch, Option<HistoryEntry>)>, NodeError> {
    // A session reset may have replaced this entry with a re-encrypted copy (same key), and a
    // confirmation may have removed it: then this acceptance concerns a copy that is gone.
    let still_queued = inner
        .store
        .get(Tree::Outbox, &e.key())?
        .and_then(|v| crate::wire::msgpack::decode::<OutboxEntry>(&v).ok())
        .is_some_and(|q| q.wire == e.wire);
    if !still_queued {
        return Ok(None);
    }
    // The relay may have answered this store as a duplicate of an older copy that the
    // recipient has since dropped (session reset): leave it queued, to be stored once more.
    if inner
        .restore
        .lock()
        .map(|mut r| r.remove(&e.history_seq))
        .unwrap_or(false)
    {
        return Ok(None);
    }
    let mut batch = e.delete();
    let current = inner.history.get(e.history_seq)?;
    if current
        .as_ref()
        .is_some_and(|h| h.status == Status::Delivered)
    {
        // Confirmed already: never downgraded, and not kept for a re-store.
        return Ok(Some((batch, None)));
    }
    // Kept until the recipient confirms it (see `confirmations`).
    let now = Timestamp::now().0;
    let first_stored = inner
        .store
        .get(Tree::Awaiting, &e.history_seq.to_be_bytes())?
        .and_then(|v| crate::wire::msgpack::decode::<AwaitingConfirmation>(&v).ok())
        .map(|a| a.first_stored)
        .filter(|t| *t != 0)
        .unwrap_or(now);
    batch.put(
        Tree::Awaiting,
        e.history_seq.to_be_bytes().to_vec(),
        crate::wire::msgpack::encode(&AwaitingConfirmation {
            relay: hint,
            entry: Some(e.clone()),
            first_stored,
            last_stored: now,
        }),
    );
    let entry = match current {
        Some(mut h) => {
            if h.status < status {
                h.status = status;
            }
            if h.path.is_none() {
                h.path = Some(path);
            }
            batch.extend(inner.history.update(&h));
            Some(h)
        }
        None => None,
    };
    Ok(Some((batch, entry)))
}

pub(crate) fn set_proven(inner: &Inner, peer: &IdentityKey, ok: bool) {
    if let Ok(mut p) = inner.paths.lock() {
        let s = p.entry(*peer).or_default();
        if s.direct_proven != ok {
            s.direct_proven = ok;
            s.since = Some(Instant::now());
            tracing::debug!(peer = %peer.short(), direct = ok, "direct path state changed");
        }
    }
}

/// The current path per peer with a known path state (`paths` in `sremp status --json`).
pub(crate) fn paths(inner: &Inner) -> Vec<super::ContactPath> {
    let states: Vec<(IdentityKey, PathState)> = inner
        .paths
        .lock()
        .map(|p| p.iter().map(|(k, v)| (*k, *v)).collect())
        .unwrap_or_default();
    let mut v: Vec<super::ContactPath> = states
        .into_iter()
        .map(|(k, s)| {
            let ep = s
                .direct_proven
                .then(|| inner.punch.last_direct(&k))
                .flatten();
            super::ContactPath {
                contact: k.to_string(),
                path: match &ep {
                    Some(e) => e.transport().direct_path().to_string(),
                    None => "relay".to_string(),
                },
                endpoint: ep.map(|e| e.to_string()),
            }
        })
        .collect();
    v.sort_by(|a, b| a.contact.cmp(&b.contact));
    v
}

fn path_state(inner: &Inner, peer: &IdentityKey) -> PathState {
    inner
        .paths
        .lock()
        .ok()
        .and_then(|p| p.get(peer).copied())
        .unwrap_or_default()
}

/// Who accepted a message: its status, path, and where its confirmation will come from.
type Outcome = Option<(Status, DeliveryPath, RelayHint)>;

/// Delivers one message according to [`plan`]. `None`: nobody accepted it this time.
///
/// Either acceptance (the recipient's integrated relay, or one of its relays) makes it
/// `stored_at_relay` with the path it took; only the recipient's delivery confirmation, sent
/// after it decrypted and recorded the message, makes it `delivered`.
async fn attempt(node: &Node, e: &OutboxEntry, contact: &ContactIdentity) -> Outcome {
    let inner = &node.inner;
    let peer = contact.identity.key();
    let (endpoints, relays) = routes(node, contact);
    if !path_state(inner, &peer).direct_proven {
        super::punch::maybe_start(node, peer);
    }
    let p = plan(
        path_state(inner, &peer),
        inner.cfg.delivery,
        !endpoints.is_empty(),
        !relays.is_empty(),
    );
    tracing::debug!(
        peer = %peer.short(),
        id = %format_id(e.message_id),
        plan = ?p,
        "delivery plan"
    );
    let direct = |node: Node, e: OutboxEntry, endpoints: Vec<Endpoint>| async move {
        let ok = try_direct(&node, &e, &endpoints).await;
        if let Some(ep) = &ok {
            super::punch::direct_used(&node, IdentityKey(e.recipient), ep);
        }
        set_proven(&node.inner, &IdentityKey(e.recipient), ok.is_some());
        ok
    };
    let at_node = |ep: Endpoint| {
        Some((
            Status::StoredAtRelay,
            DeliveryPath::direct(ep.transport()),
            RelayHint {
                endpoint: ep,
                relay_key: peer.0,
            },
        ))
    };
    let at_relay = |h: RelayHint| Some((Status::StoredAtRelay, DeliveryPath::Relay, h));
    match p {
        Plan::Wait => None,
        Plan::DirectOnly => at_node(direct(node.clone(), e.clone(), endpoints).await?),
        Plan::RelayOnly => at_relay(try_relay(node, e, &relays).await?),
        Plan::DirectThenRelay => {
            if let Some(ep) = direct(node.clone(), e.clone(), endpoints).await {
                at_node(ep)
            } else {
                at_relay(try_relay(node, e, &relays).await?)
            }
        }
        Plan::Race | Plan::Hedge => {
            let mut d = tokio::spawn(direct(node.clone(), e.clone(), endpoints));
            if p == Plan::Hedge {
                tokio::select! {
                    r = &mut d => {
                        if let Ok(Some(ep)) = r {
                            return at_node(ep);
                        }
                        return at_relay(try_relay(node, e, &relays).await?);
                    }
                    _ = tokio::time::sleep(HEDGE) => {
                        // No acknowledgement within the hedge: the path is no longer proven,
                        // so the next message races instead of paying the hedge again
                        // (docs/PROTOCOL.md, "Route choice"). A late success proves it again.
                        set_proven(inner, &peer, false);
                    }
                }
            }
            let r = try_relay(node, e, &relays);
            tokio::pin!(r);
            tokio::select! {
                dr = &mut d => {
                    if let Ok(Some(ep)) = dr {
                        at_node(ep)
                    } else {
                        at_relay(r.await?)
                    }
                }
                rr = &mut r => {
                    match rr {
                        // The direct attempt goes on in the background (it proves the path for
                        // the next message); the recipient drops the second copy.
                        Some(h) => at_relay(h),
                        None => match d.await {
                            Ok(Some(ep)) => at_node(ep),
                            _ => None,
                        },
                    }
                }
            }
        }
    }
}

/// Delivers several of one recipient's messages (all the fresh ones a worker read at once).
///
/// On the hot paths — a proven direct path (plans [`Plan::Hedge`] and
/// [`Plan::DirectOnly`]) or relays only ([`Plan::RelayOnly`]) — all of them are stored with
/// one write on the first route and their acknowledgements awaited together (for a hedge,
/// at most [`HEDGE`]; then the path is no longer proven). Each one that was not accepted
/// there, and every message of any other plan, goes through [`attempt`] on its own (all at
/// once, in this task), which tries every route.
async fn attempt_many(
    node: &Node,
    entries: Vec<OutboxEntry>,
    contact: &ContactIdentity,
) -> Vec<(OutboxEntry, Outcome)> {
    if entries.len() <= 1 {
        let mut out = Vec::with_capacity(1);
        for e in entries {
            let r = attempt(node, &e, contact).await;
            out.push((e, r));
        }
        return out;
    }
    let inner = &node.inner;
    let peer = contact.identity.key();
    let (endpoints, relays) = routes(node, contact);
    let state = path_state(inner, &peer);
    let p = plan(state, inner.cfg.delivery, !endpoints.is_empty(), !relays.is_empty());
    if p == Plan::RelayOnly {
        // As `attempt` does for a path that is not proven direct.
        super::punch::maybe_start(node, peer);
    }
    let first = match p {
        Plan::Hedge | Plan::DirectOnly if state.direct_proven => endpoints
            .first()
            .map(|ep| (ep.clone(), peer, p == Plan::Hedge, None)),
        Plan::RelayOnly => relays
            .first()
            .map(|h| (h.endpoint.clone(), IdentityKey(h.relay_key), false, Some(h.clone()))),
        _ => None,
    };
    let mut out: Vec<(OutboxEntry, Outcome)> = Vec::with_capacity(entries.len());
    let mut rest: Vec<OutboxEntry> = Vec::new();
    match first {
        Some((ep, key, hedge, relay)) => {
            tracing::debug!(peer = %peer.short(), messages = entries.len(), plan = ?p, "delivery plan");
            let limit = if hedge {
                HEDGE
            } else {
                Duration::from_millis(inner.cfg.ack_timeout_ms)
            };
            let stored = store_many_at(node, &entries, &ep, key, limit).await;
            let mut any = false;
            for (e, ok) in entries.into_iter().zip(stored) {
                if !ok {
                    rest.push(e);
                    continue;
                }
                any = true;
                let r = match &relay {
                    Some(h) => Some((Status::StoredAtRelay, DeliveryPath::Relay, h.clone())),
                    None => Some((
                        Status::StoredAtRelay,
                        DeliveryPath::direct(ep.transport()),
                        RelayHint {
                            endpoint: ep.clone(),
                            relay_key: peer.0,
                        },
                    )),
                };
                out.push((e, r));
            }
            if relay.is_none() {
                if any {
                    super::punch::direct_used(node, peer, &ep);
                }
                if !rest.is_empty() {
                    // Not acknowledged in time (or refused): the next messages race.
                    set_proven(inner, &peer, false);
                }
            }
        }
        None => rest = entries,
    }
    let each = futures::future::join_all(rest.iter().map(|e| attempt(node, e, contact))).await;
    out.extend(rest.into_iter().zip(each));
    out
}

/// The endpoints (a punched path first) and relays to try for `contact`, at most
/// [`MAX_ROUTES`] of each.
fn routes(node: &Node, contact: &ContactIdentity) -> (Vec<Endpoint>, Vec<RelayHint>) {
    let peer = contact.identity.key();
    // A punched QUIC path (docs/PROTOCOL.md, "Hole punching") is a direct path, tried first.
    let punched = super::punch::punched(node, &peer);
    let endpoints: Vec<Endpoint> = punched
        .iter()
        .chain(
            contact
                .endpoints
                .iter()
                .filter(|e| Some(*e) != punched.as_ref()),
        )
        .take(MAX_ROUTES)
        .cloned()
        .collect();
    let relays: Vec<RelayHint> = contact.relays.iter().take(MAX_ROUTES).cloned().collect();
    (endpoints, relays)
}

/// Stores `entries` at `ep` (whose identity must be `key`) with one write; which of them it
/// acknowledged within `limit`.
async fn store_many_at(
    node: &Node,
    entries: &[OutboxEntry],
    ep: &Endpoint,
    key: IdentityKey,
    limit: Duration,
) -> Vec<bool> {
    let inner = &node.inner;
    let Some(client) = pooled_client(node, ep, key).await else {
        return vec![false; entries.len()];
    };
    let items: Vec<(IdentityKey, &[u8], u64)> = entries
        .iter()
        .map(|e| (IdentityKey(e.recipient), e.wire.as_slice(), e.message_id))
        .collect();
    let deadline = tokio::time::Instant::now() + limit;
    let results = client.store_many(&items, deadline).await;
    let whole_wait = limit >= Duration::from_millis(inner.cfg.ack_timeout_ms);
    let mut broken = false;
    let ok = results
        .into_iter()
        .map(|r| match r {
            Ok(_) => true,
            Err(RelayClientError::DuplicateInFlight(_)) => false,
            // Within a hedge, the direct path is only late; for the whole time of a store
            // (like a connection failure) it is dead.
            Err(RelayClientError::NoResponse) => {
                broken |= whole_wait;
                false
            }
            Err(err) => {
                tracing::debug!(endpoint = %ep, error = %err, "store failed");
                broken |= err.code().is_none();
                false
            }
        })
        .collect();
    if broken {
        tracing::debug!(endpoint = %ep, "connection dropped from the pool");
        inner.pool.remove(&pool_key(ep, &key), &client);
    }
    ok
}

/// Stores `e` at the recipient's integrated relay (its own node), trying each endpoint.
async fn try_direct(node: &Node, e: &OutboxEntry, endpoints: &[Endpoint]) -> Option<Endpoint> {
    let recipient = IdentityKey(e.recipient);
    for ep in endpoints {
        if store_at(node, e, ep, recipient).await {
            return Some(ep.clone());
        }
        super::punch::lost(node, &recipient, ep);
    }
    None
}

/// Stores `e` at one of the recipient's relays; returns the one that stored it (its delivery
/// confirmation can be collected there later, even if this connection is gone by then).
async fn try_relay(node: &Node, e: &OutboxEntry, relays: &[RelayHint]) -> Option<RelayHint> {
    for hint in relays {
        if store_at(node, e, &hint.endpoint, IdentityKey(hint.relay_key)).await {
            return Some(hint.clone());
        }
    }
    None
}

/// The pooled connection to `ep` (whose identity must be `key`), dialled within
/// `direct_timeout_ms` when there is none; `None` (logged) when it cannot be had.
async fn pooled_client(node: &Node, ep: &Endpoint, key: IdentityKey) -> Option<Arc<RelayClient>> {
    let inner = &node.inner;
    let connect = tokio::time::timeout(
        Duration::from_millis(inner.cfg.direct_timeout_ms),
        inner.pool.get(node, ep, key),
    )
    .await;
    match connect {
        Ok(Ok(c)) => Some(c),
        Ok(Err(err)) => {
            tracing::debug!(endpoint = %ep, error = %err, "connection failed");
            None
        }
        Err(_) => {
            tracing::debug!(endpoint = %ep, "connection timed out");
            None
        }
    }
}

async fn store_at(node: &Node, e: &OutboxEntry, ep: &Endpoint, key: IdentityKey) -> bool {
    let inner = &node.inner;
    let Some(client) = pooled_client(node, ep, key).await else {
        return false;
    };
    let stored = tokio::time::timeout(
        Duration::from_millis(inner.cfg.ack_timeout_ms),
        client.store(IdentityKey(e.recipient), e.wire.clone(), e.message_id),
    )
    .await;
    match stored {
        Ok(Ok(_)) => true,
        Ok(Err(RelayClientError::DuplicateInFlight(_))) => false,
        Ok(Err(err)) => {
            tracing::debug!(endpoint = %ep, error = %err, "store failed");
            if err.code().is_none() {
                inner.pool.remove(&pool_key(ep, &key), &client);
            }
            false
        }
        Err(_) => {
            tracing::debug!(endpoint = %ep, "no acknowledgement in time");
            inner.pool.remove(&pool_key(ep, &key), &client);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn awaiting_records_written_before_senders_kept_messages_still_decode() {
        #[derive(serde::Serialize)]
        struct Old {
            relay: RelayHint,
        }
        let relay = RelayHint {
            endpoint: "127.0.0.1:9".parse().unwrap(),
            relay_key: [5; 32],
        };
        let old = crate::wire::msgpack::encode(&Old {
            relay: relay.clone(),
        });
        let a: AwaitingConfirmation = crate::wire::msgpack::decode(&old).unwrap();
        assert_eq!(
            a,
            AwaitingConfirmation {
                relay,
                entry: None,
                first_stored: 0,
                last_stored: 0
            }
        );
        // And an outbox entry without `payload_id`.
        #[derive(serde::Serialize)]
        struct OldEntry {
            message_id: u64,
            #[serde(with = "crate::wire::bytes::fixed")]
            recipient: [u8; 32],
            #[serde(with = "serde_bytes")]
            wire: Vec<u8>,
            history_seq: u64,
        }
        let old = crate::wire::msgpack::encode(&OldEntry {
            message_id: 1,
            recipient: [2; 32],
            wire: vec![3],
            history_seq: 4,
        });
        let e: OutboxEntry = crate::wire::msgpack::decode(&old).unwrap();
        assert!(e.payload_id.is_empty());
        assert_eq!((e.message_id, e.history_seq), (1, 4));
    }

    /// A node `a` with one queued message to `b`, whose endpoint is dead (nothing is ever
    /// accepted on its own): returns the handle, b's key and the queued outbox entry.
    async fn one_queued(dir: &std::path::Path) -> (super::super::NodeHandle, IdentityKey, OutboxEntry) {
        let cfg = |name: &str| {
            crate::config::Config::parse(
                &format!(
                    "data_dir = \"{}\"\nusername = \"{name}\"\n[listen]\naddress = \"127.0.0.1:0\"\n",
                    dir.join(name).display()
                ),
                std::path::Path::new("test"),
            )
            .unwrap()
        };
        let b = Node::start(&cfg("bob")).await.unwrap();
        let card = b.node.card().to_text();
        let bob = b.node.id();
        b.shutdown().await.unwrap();
        let a = Node::start(&cfg("alice")).await.unwrap();
        a.node.add_contact(&card).unwrap();
        let sent = a.node.send("bob", "hello").await.unwrap();
        let queued = outbox::for_recipient(&*a.node.inner.store, &bob, 10).unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!(queued[0].history_seq, sent.seq);
        (a, bob, queued.into_iter().next().unwrap())
    }

    fn hint() -> RelayHint {
        RelayHint {
            endpoint: "127.0.0.1:9".parse().unwrap(),
            relay_key: [5; 32],
        }
    }

    /// The race of issue 12: a store's acceptance (`finalize`) read the entry under the
    /// recipient's lock, the confirmation (`upgrade`) committed `delivered` meanwhile, and the
    /// acceptance then wrote `stored_at_relay` over it (and kept the message for a re-store).
    /// Driven deterministically: the acceptance's reads, then the confirmation gets a chance
    /// to run, then the acceptance's commit.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_confirmation_overtaking_an_acceptance_stays_delivered() {
        let dir = tempfile::tempdir().unwrap();
        let (a, bob, e) = one_queued(dir.path()).await;
        let inner = a.node.inner.clone();
        let seq = e.history_seq;
        let id = inner.history.get(seq).unwrap().unwrap().id;
        // finalize(): the lock, then its reads.
        let guard = inner.locks.peer(&bob).await;
        let (batch, _) = acceptance(&inner, &e, Status::StoredAtRelay, DeliveryPath::Direct, hint())
            .unwrap()
            .expect("still queued");
        // The confirmation arrives now.
        let up = {
            let inner = inner.clone();
            tokio::spawn(async move { upgrade(&inner, &bob, id, Some(DeliveryPath::Direct)).await })
        };
        let mut up = up;
        // It must wait for the acceptance (bounded: on the old code it finishes at once).
        let overtook = tokio::time::timeout(Duration::from_millis(500), &mut up).await.is_ok();
        // finalize(): its commit, then the lock is released.
        commit(&inner.store, batch).await.unwrap();
        drop(guard);
        if !overtook {
            tokio::time::timeout(Duration::from_secs(10), &mut up)
                .await
                .expect("upgrade finishes once the lock is free")
                .unwrap()
                .unwrap();
        }
        let h = inner.history.get(seq).unwrap().unwrap();
        assert_eq!(h.status, Status::Delivered, "acceptance wrote over the confirmation");
        assert!(
            inner.store.get(Tree::Awaiting, &seq.to_be_bytes()).unwrap().is_none(),
            "a delivered message is kept for a re-store"
        );
        assert!(!overtook, "the confirmation did not wait for the acceptance's commit");
        a.shutdown().await.unwrap();
    }

    /// The other order: the confirmation first, then a late acceptance of the same copy. The
    /// confirmation removed the queued copy, so the acceptance is normally ignored; here the
    /// copy is put back to check the store-level rule beneath the lock: the status stays
    /// `delivered` and nothing is kept for a re-store.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_acceptance_after_the_confirmation_never_downgrades() {
        let dir = tempfile::tempdir().unwrap();
        let (a, bob, e) = one_queued(dir.path()).await;
        let inner = a.node.inner.clone();
        let seq = e.history_seq;
        let id = inner.history.get(seq).unwrap().unwrap().id;
        upgrade(&inner, &bob, id, Some(DeliveryPath::Relay)).await.unwrap();
        // The copy queued again, then its acceptance.
        commit(&inner.store, e.put()).await.unwrap();
        finalize(&inner, &e, Status::StoredAtRelay, DeliveryPath::Direct, hint())
            .await
            .unwrap();
        let h = inner.history.get(seq).unwrap().unwrap();
        assert_eq!(h.status, Status::Delivered);
        assert_eq!(h.path, Some(DeliveryPath::Relay));
        assert!(inner.store.get(Tree::Awaiting, &seq.to_be_bytes()).unwrap().is_none());
        assert!(inner.store.get(Tree::Outbox, &e.key()).unwrap().is_none());
        a.shutdown().await.unwrap();
    }

    /// Issue 12 item 2: sends to one peer that are in flight together are encrypted in order
    /// and made durable with one flush (not one flush each, in turn, under the peer's lock),
    /// and each caller gets its own entry. The old code took one flush per send.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_sends_to_one_peer_share_one_flush() {
        let dir = tempfile::tempdir().unwrap();
        let (a, bob, _) = one_queued(dir.path()).await;
        let inner = a.node.inner.clone();
        const N: usize = 64;
        // Held while the sends queue up, so that they all wait for the same holder.
        let guard = inner.locks.peer(&bob).await;
        let mut tasks = Vec::new();
        for i in 0..N {
            let node = a.node.clone();
            tasks.push(tokio::spawn(async move {
                node.send("bob", &format!("message {i}")).await
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while inner.sends.queued(&bob) < N {
            assert!(Instant::now() < deadline, "the sends never queued");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let flushes = inner.store.flushes().unwrap();
        drop(guard);
        let mut seqs = std::collections::HashSet::new();
        for (i, t) in tasks.into_iter().enumerate() {
            let e = t.await.unwrap().unwrap();
            assert_eq!(e.text, format!("message {i}"));
            assert_eq!(e.status, Status::Queued);
            assert!(seqs.insert(e.seq));
        }
        let used = inner.store.flushes().unwrap() - flushes;
        assert!(used <= 2, "{N} concurrent sends took {used} flushes");
        // Every one is durable in the outbox with its own ciphertext (one ratchet step each).
        let queued = outbox::for_recipient(&*inner.store, &bob, 1000).unwrap();
        assert_eq!(queued.len(), N + 1);
        let wires: std::collections::HashSet<&Vec<u8>> = queued.iter().map(|e| &e.wire).collect();
        assert_eq!(wires.len(), N + 1);
        for e in &queued {
            assert!(seqs.contains(&e.history_seq) || e.history_seq < *seqs.iter().min().unwrap());
        }
        a.shutdown().await.unwrap();
    }

    /// Sends whose callers gave up while waiting for the peer's lock must not fill the next
    /// holder's batch: more than a batch of them once left a live send queued behind them
    /// with nobody left to take it, and its caller waited forever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cancelled_sends_do_not_strand_a_live_one() {
        let dir = tempfile::tempdir().unwrap();
        let (a, bob, _) = one_queued(dir.path()).await;
        let inner = a.node.inner.clone();
        let guard = inner.locks.peer(&bob).await;
        let stale = MAX_SEND_BATCH + 8;
        let mut tasks = Vec::new();
        for i in 0..stale {
            let node = a.node.clone();
            tasks.push(tokio::spawn(async move {
                node.send("bob", &format!("given up {i}")).await
            }));
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while inner.sends.queued(&bob) < stale {
            assert!(Instant::now() < deadline, "the sends never queued");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for t in &tasks {
            t.abort();
        }
        for t in tasks {
            let _ = t.await;
        }
        let live = {
            let node = a.node.clone();
            tokio::spawn(async move { node.send("bob", "still wanted").await })
        };
        while inner.sends.queued(&bob) < stale + 1 {
            assert!(Instant::now() < deadline, "the live send never queued");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        drop(guard);
        let e = tokio::time::timeout(Duration::from_secs(20), live)
            .await
            .expect("the live send was stranded behind cancelled ones")
            .unwrap()
            .unwrap();
        assert_eq!(e.text, "still wanted");
        assert_eq!(inner.sends.queued(&bob), 0);
        a.shutdown().await.unwrap();
    }

    #[test]
    fn plans() {
        let unproven = PathState::default();
        let proven = PathState {
            direct_proven: true,
            since: None,
        };
        use DeliveryMode::*;
        assert_eq!(plan(unproven, Race, true, true), Plan::Race);
        assert_eq!(plan(proven, Race, true, true), Plan::Hedge);
        assert_eq!(
            plan(unproven, DirectFirst, true, true),
            Plan::DirectThenRelay
        );
        assert_eq!(plan(proven, DirectFirst, true, true), Plan::DirectThenRelay);
        assert_eq!(plan(unproven, Race, true, false), Plan::DirectOnly);
        assert_eq!(plan(unproven, Race, false, true), Plan::RelayOnly);
        assert_eq!(plan(proven, Race, false, false), Plan::Wait);
    }
}
