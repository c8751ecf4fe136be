//! The receive path: collect from the integrated relay and the home relays, decrypt, record,
//! confirm.
//!
//! The node is a relay client of its own integrated relay (over loopback, as its owner) and of
//! each home relay. For each source a collector connects, registers, drains what is stored
//! (paged), then handles pushed messages until the connection ends, and reconnects with backoff.
//! A push that found a queue full (the relay's outgoing queue, or our client's event queue,
//! which never blocks on a push so that a retrieval cannot deadlock behind pushes) stays stored
//! at the source: the collector drains again when its client reports one left out, and once
//! after every burst of pushes ([`SWEEP_AFTER`] of quiet).
//!
//! Per message: a sender marked Rejected is refused (the message is deleted unread); otherwise
//! the ratchet verifies, decrypts and de-duplicates it, and the session change plus the history
//! entry are committed in one batch — only then is the message confirmed to the source, which
//! deletes it and routes the confirmation back to the sender. A duplicate (same sender and
//! message id, e.g. the second copy of a raced send) is confirmed without being shown again. A
//! message whose sender signature verifies but which our ratchet state cannot decrypt (lost or
//! older state) is answered with a signed `SESSION_RESET` instead of a confirmation (the source
//! deletes it and tells the sender, who starts a new session and re-sends), and a `notice`
//! line is written. A local failure leaves the message unconfirmed at the source for the next
//! attempt.

use super::history::{format_id, DeliveryPath, Direction, NewEntry, Status};
use super::{Node, NodeError};
use crate::identity::{IdentityKey, Trust};
use crate::ratchet::{Content, DecryptError};
use crate::relay::{RelayClient, RelayEvent};
use crate::time::Timestamp;
use crate::wire::relay::{ResetReason, RetrieveCursor, StoredMessage};
use crate::wire::rendezvous::RelayHint;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

/// Where messages for this node are collected.
#[derive(Clone, Debug)]
pub enum Source {
    /// The node's own integrated relay (messages that came directly).
    Integrated,
    /// A home relay.
    Home(RelayHint),
}

/// The address the node uses to reach its own listener.
pub fn integrated_addr(local: SocketAddr) -> SocketAddr {
    match local.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, local.port()))
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv6Addr::LOCALHOST, local.port()))
        }
        _ => local,
    }
}

fn set_connected(node: &Node, label: &str, up: bool) {
    if let Ok(mut s) = node.inner.sources.lock() {
        s.insert(label.to_string(), up);
    }
}

/// Collects from `source` until shutdown.
pub(crate) async fn collect(node: Node, source: Source) {
    let inner = node.inner.clone();
    let mut stop = inner.stop.clone();
    let (addr, key, path) = match &source {
        Source::Integrated => (
            integrated_addr(inner.local_addr).to_string(),
            inner.me().key(),
            DeliveryPath::Direct,
        ),
        Source::Home(h) => (
            h.endpoint.to_string(),
            IdentityKey(h.relay_key),
            DeliveryPath::Relay,
        ),
    };
    let mut backoff = Duration::from_millis(200);
    let mut warned = false;
    loop {
        if *stop.borrow() {
            return;
        }
        let connected = match &source {
            Source::Integrated => {
                RelayClient::connect(&addr, &inner.me(), Some(key), inner.handshake.clone()).await
            }
            Source::Home(h) => {
                RelayClient::connect_endpoint(
                    &h.endpoint,
                    &inner.me(),
                    Some(key),
                    inner.handshake.clone(),
                    inner.quic.endpoint(),
                )
                .await
            }
        };
        match connected {
            Ok((client, mut events)) => {
                let client = std::sync::Arc::new(client);
                if let (Source::Home(h), Some(a)) = (&source, client.observed_address()) {
                    inner.quic.observe(key, &h.endpoint, a, Timestamp::now());
                }
                tracing::debug!(source = %addr, "collecting messages");
                set_connected(&node, &addr, true);
                backoff = Duration::from_millis(200);
                warned = false;
                let mut recent = Recent::default();
                let mut drained = drain(&node, &client, path, &mut recent).await;
                // Pushed messages were handled since the last drain: after a quiet
                // `SWEEP_AFTER`, drain once more for pushes the relay or our client left out
                // (full queues during a burst); they stay stored at the source until then.
                let mut pushed = false;
                if drained != Drained::Failed {
                    loop {
                        if drained == Drained::Done && client.take_missed() {
                            drained = drain(&node, &client, path, &mut recent).await;
                            if drained == Drained::Failed {
                                break;
                            }
                        }
                        tokio::select! {
                            // A local failure (full disk) left messages at the source: try
                            // again after a pause, on the same connection, without a restart.
                            _ = tokio::time::sleep(STALL_RETRY), if drained == Drained::Stalled => {
                                drained = drain(&node, &client, path, &mut recent).await;
                                if drained == Drained::Failed {
                                    break;
                                }
                            }
                            _ = tokio::time::sleep(SWEEP_AFTER), if pushed && drained == Drained::Done => {
                                pushed = false;
                                drained = drain(&node, &client, path, &mut recent).await;
                                if drained == Drained::Failed {
                                    break;
                                }
                            }
                            ev = events.recv() => match ev {
                                Some(RelayEvent::Message(m)) => {
                                    pushed = true;
                                    // With every push already queued behind it: recorded
                                    // together (one flush per sender's run).
                                    let mut all = vec![m];
                                    let mut after = None;
                                    while all.len() < MAX_RECEIVE_BATCH {
                                        match events.try_recv() {
                                            Ok(RelayEvent::Message(m)) => all.push(m),
                                            Ok(other) => {
                                                after = Some(other);
                                                break;
                                            }
                                            Err(_) => break,
                                        }
                                    }
                                    if !handle_many(&node, &client, all, path, &mut recent).await {
                                        drained = Drained::Stalled;
                                    }
                                    if let Some(ev) = after {
                                        on_event(&node, &client, ev, &addr).await;
                                    }
                                }
                                Some(ev) => on_event(&node, &client, ev, &addr).await,
                                None => break,
                            },
                            _ = super::stopped(&mut stop) => {
                                client.close().await;
                                set_connected(&node, &addr, false);
                                return;
                            }
                        }
                    }
                }
                client.close().await;
                set_connected(&node, &addr, false);
            }
            Err(e) => {
                if warned {
                    tracing::debug!(source = %addr, error = %e, "cannot reach message source");
                } else {
                    tracing::warn!(source = %addr, error = %e, "cannot reach message source; retrying");
                    warned = true;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = super::stopped(&mut stop) => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// An event other than a pushed message.
async fn on_event(
    node: &Node,
    client: &std::sync::Arc<RelayClient>,
    ev: RelayEvent,
    addr: &str,
) {
    match ev {
        RelayEvent::Confirmation(c) => super::delivery::confirmed(node, client, c).await,
        RelayEvent::SessionReset(n) => super::delivery::session_reset(node, n).await,
        RelayEvent::Punch(p) => super::punch::on_message(node, client, p).await,
        RelayEvent::Error(e) => tracing::debug!(source = %addr, code = e.code, "relay error"),
        // Pushed messages are gathered by the caller.
        RelayEvent::Message(_) => {}
    }
}

/// Most pushed messages a collector records together.
pub const MAX_RECEIVE_BATCH: usize = 256;

/// How long a collector waits before it retries messages it could not record (full disk).
pub const STALL_RETRY: Duration = Duration::from_secs(1);
/// Quiet time after pushed messages after which a collector drains its source once more
/// (pushes dropped on a full queue stay stored there).
pub const SWEEP_AFTER: Duration = Duration::from_secs(1);

/// How a drain of a source ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Drained {
    /// Everything stored was handled.
    Done,
    /// A message could not be recorded locally (full disk): it stays at the source; retry
    /// after [`STALL_RETRY`].
    Stalled,
    /// The connection failed.
    Failed,
}

/// Handles everything stored at the source, stopping at the first local failure.
///
/// Pages forward with a cursor: a message just handled is not offered again by the next page
/// while its confirmation is still on its way to the source (re-reading from the start would
/// decrypt it again as a duplicate). Bounded: at most [`DRAIN_PAGES`] pages per drain.
async fn drain(
    node: &Node,
    client: &RelayClient,
    path: DeliveryPath,
    recent: &mut Recent,
) -> Drained {
    let mut after = None;
    for _ in 0..DRAIN_PAGES {
        match client.retrieve(None, after, 0).await {
            Ok(batch) => {
                after = batch.messages.last().map(|m| RetrieveCursor {
                    sender: m.sender,
                    message_id: m.message_id,
                });
                for m in batch.messages {
                    if !handle(node, client, m, path, recent).await {
                        return Drained::Stalled;
                    }
                }
                if !batch.has_more || after.is_none() {
                    return Drained::Done;
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "retrieval failed");
                return Drained::Failed;
            }
        }
    }
    Drained::Done
}

/// Messages (sender, transport id) a collector handled lately, all confirmed after a commit
/// (or refused): a copy offered again is confirmed again without decrypting. Bounded FIFO.
#[derive(Debug, Default)]
pub(crate) struct Recent {
    set: std::collections::HashSet<([u8; 32], u64)>,
    order: std::collections::VecDeque<([u8; 32], u64)>,
}

/// Entries a [`Recent`] keeps.
pub const RECENT: usize = 4096;

impl Recent {
    fn contains(&self, k: &([u8; 32], u64)) -> bool {
        self.set.contains(k)
    }

    fn insert(&mut self, k: ([u8; 32], u64)) {
        if self.set.insert(k) {
            self.order.push_back(k);
            if self.order.len() > RECENT {
                if let Some(old) = self.order.pop_front() {
                    self.set.remove(&old);
                }
            }
        }
    }
}

/// Most pages one drain reads.
pub const DRAIN_PAGES: usize = 10_000;

/// Handles stored messages (in order), recording each run of ordinary messages from one
/// contact with one flush ([`handle_run`]); the rest one by one ([`handle`]). False when one
/// could not be recorded (a local failure): it stays at the source, unconfirmed.
pub(crate) async fn handle_many(
    node: &Node,
    client: &RelayClient,
    all: Vec<StoredMessage>,
    path: DeliveryPath,
    recent: &mut Recent,
) -> bool {
    let mut ok = true;
    let mut run: Vec<StoredMessage> = Vec::new();
    for m in all {
        let plain = !crate::files::chunk::ChunkBlob::is_chunk(&m.encrypted_blob)
            && !recent.contains(&(m.sender, m.message_id));
        if plain && run.first().is_none_or(|r| r.sender == m.sender) {
            run.push(m);
            continue;
        }
        if !run.is_empty() {
            ok &= handle_run(node, client, std::mem::take(&mut run), path, recent).await;
        }
        if plain {
            run.push(m);
        } else {
            ok &= handle(node, client, m, path, recent).await;
        }
    }
    if !run.is_empty() {
        ok &= handle_run(node, client, run, path, recent).await;
    }
    ok
}

/// Ordinary messages from one sender (no file chunks, none handled lately), in order: for a
/// contact not marked Rejected, each is verified, decrypted and applied under the sender's
/// ratchet lock, then **one** flush makes all of them durable, and only then are they confirmed
/// to the source (in one write). What that path does not take (group envelopes, file messages,
/// undecryptable ones, and everything after the first of those) and runs of one message go
/// through [`handle`], one by one, in order. False on a local failure: nothing of the run was
/// confirmed, it stays at the source.
async fn handle_run(
    node: &Node,
    client: &RelayClient,
    run: Vec<StoredMessage>,
    path: DeliveryPath,
    recent: &mut Recent,
) -> bool {
    let inner = &node.inner;
    let Some(sender) = run.first().map(|m| IdentityKey(m.sender)) else {
        return true;
    };
    let contact = match inner.contacts.get(&sender) {
        Ok(Some(c)) if run.len() > 1 && c.trust != Trust::Rejected && c.identity.key() == sender => c,
        // One message, a stranger, a rejected contact, or an unreadable book: one by one.
        _ => {
            let mut ok = true;
            for m in run {
                ok &= handle(node, client, m, path, recent).await;
            }
            return ok;
        }
    };
    let username = Some(contact.identity.username().to_string());
    let one = inner.locks.peer(&sender).await;
    let sessions = inner.sessions();
    let store = inner.store.clone();
    let history = inner.history.clone();
    let (done, run) = match tokio::task::spawn_blocking(move || {
        let r = super::owner_inbox::record_all(
            &sessions,
            &*store,
            &history,
            sender,
            username,
            run.iter().map(|m| m.encrypted_blob.as_slice()),
            path,
        );
        // Released only once the flush returned.
        drop(one);
        (r, run)
    })
    .await
    {
        Ok((Ok(outcomes), run)) => (outcomes, run),
        Ok((Err(e), _)) => {
            if let Some(repeats) = inner.receive_errors.due() {
                tracing::error!(error = %e, repeats, "cannot record received messages; will retry");
            }
            return false;
        }
        Err(e) => {
            tracing::error!(error = %e, "receive task failed");
            return false;
        }
    };
    let mut confirms = Vec::new();
    let mut alone = Vec::new();
    let mut outcomes = done.into_iter();
    for m in run {
        match outcomes.next() {
            Some(super::owner_inbox::Outcome::Recorded(entry)) => {
                recent.insert((m.sender, m.message_id));
                confirms.push((sender, m.message_id));
                if let Some(entry) = entry {
                    tracing::info!(peer = %sender.short(), id = %format_id(entry.id), ?path, "message received");
                    let _ = inner.events.send(*entry);
                }
            }
            Some(super::owner_inbox::Outcome::Store) | None => alone.push(m),
        }
    }
    if !confirms.is_empty() {
        if let Err(e) = client.confirm_many(&confirms).await {
            tracing::debug!(error = %e, "confirmations not sent");
        }
    }
    let mut ok = true;
    for m in alone {
        ok &= handle(node, client, m, path, recent).await;
    }
    ok
}

/// Decrypts, records and confirms one stored message. False when it could not be recorded
/// (a local failure such as a full disk): it stays at the source, unconfirmed.
pub(crate) async fn handle(
    node: &Node,
    client: &RelayClient,
    m: StoredMessage,
    path: DeliveryPath,
    recent: &mut Recent,
) -> bool {
    let key = (m.sender, m.message_id);
    if crate::files::chunk::ChunkBlob::is_chunk(&m.encrypted_blob) {
        // A file chunk stored at a relay: not a ratchet message (docs/PROTOCOL.md, "File
        // transfer"). Confirmed once stored durably (or refused for good). A pushed copy of
        // one a drain just handled is confirmed again without being counted twice. Chunk
        // message ids repeat by design (a re-sent chunk has the same id and a fresh nonce), so
        // the blob's own digest is part of the key: a re-sent chunk is always handled.
        let key = {
            use sha2::Digest;
            let d = sha2::Sha256::digest(&m.encrypted_blob);
            let mut low = [0u8; 8];
            low.copy_from_slice(&d[..8]);
            (m.sender, m.message_id ^ u64::from_be_bytes(low))
        };
        if recent.contains(&key) {
            if let Err(e) = client.confirm(IdentityKey(m.sender), m.message_id).await {
                tracing::debug!(error = %e, "confirmation not sent");
            }
            return true;
        }
        return match crate::node::files::on_relay_chunk(
            node,
            IdentityKey(m.sender),
            m.encrypted_blob.clone(),
        )
        .await
        {
            Ok(()) => {
                recent.insert(key);
                if let Err(e) = client.confirm(IdentityKey(m.sender), m.message_id).await {
                    tracing::debug!(error = %e, "confirmation not sent");
                }
                true
            }
            Err(e) => {
                if let Some(repeats) = node.inner.receive_errors.due() {
                    tracing::error!(error = %e, repeats, "cannot store a received file chunk; will retry");
                }
                false
            }
        };
    }
    if recent.contains(&key) {
        // Handled (and committed) moments ago: a pushed copy of a message a drain already
        // read, or one whose confirmation was lost. Confirm again, without decrypting.
        if let Err(e) = client.confirm(IdentityKey(m.sender), m.message_id).await {
            tracing::debug!(error = %e, "confirmation not sent");
        }
        return true;
    }
    match receive(node, &m, path).await {
        Ok(Received::Done) => {
            recent.insert(key);
            if let Err(e) = client.confirm(IdentityKey(m.sender), m.message_id).await {
                tracing::debug!(error = %e, "confirmation not sent");
            }
            true
        }
        Ok(Received::Lost(reason)) => {
            let sender = IdentityKey(m.sender);
            // Only the signer of the blob may be told (and the notice names the copy by digest).
            let signed_by_sender = crate::ratchet::SignedMessage::decode(&m.encrypted_blob)
                .is_ok_and(|s| s.sender == m.sender);
            if !signed_by_sender {
                tracing::warn!(peer = %sender.short(), "undecryptable message not signed by its sender; dropped");
                if let Err(e) = client.confirm(sender, m.message_id).await {
                    tracing::debug!(error = %e, "confirmation not sent");
                }
                return true;
            }
            note_lost(node, &sender, reason).await;
            // What we still have from the sender, so it also re-sends what we had confirmed
            // and lost (a restore from an older backup). Unreadable: leave it out (the sender
            // then re-sends what is unconfirmed only).
            let last = match super::recovery::last_recorded(&node.inner.history, &sender) {
                Ok(l) => Some(l),
                Err(e) => {
                    tracing::debug!(error = %e, "cannot read what we last recorded from the sender");
                    None
                }
            };
            // In place of a confirmation: the source deletes the copy and tells the sender,
            // who starts a new session and re-sends. Never `delivered` for this copy.
            if let Err(e) = client
                .session_reset(sender, m.message_id, reason, &m.encrypted_blob, last)
                .await
            {
                tracing::debug!(error = %e, "session reset notice not sent");
            }
            true
        }
        Err(e) => {
            // Left at the source: it will be offered again. One line per interval.
            if let Some(repeats) = node.inner.receive_errors.due() {
                tracing::error!(error = %e, repeats, "cannot record a received message; will retry");
            }
            false
        }
    }
}

/// How a stored message was handled.
#[derive(Debug)]
enum Received {
    /// Recorded, or refused/duplicate/malformed: confirm it (the source deletes it).
    Done,
    /// Validly signed by its sender but undecryptable with our ratchet state (we lost it):
    /// answer with a session reset notice instead of a confirmation.
    Lost(ResetReason),
}

/// Writes a `notice` line for a sender whose messages we could not decrypt, at most once per
/// [`super::delivery::RESET_MIN_INTERVAL`] per sender.
async fn note_lost(node: &Node, sender: &IdentityKey, reason: ResetReason) {
    let inner = &node.inner;
    if let Ok(mut m) = inner.reset_notes.lock() {
        if m.get(sender)
            .is_some_and(|t| t.elapsed() < super::delivery::RESET_MIN_INTERVAL)
        {
            return;
        }
        m.insert(*sender, std::time::Instant::now());
    }
    let name = inner
        .contacts
        .get(sender)
        .ok()
        .flatten()
        .map(|c| c.identity.username().to_string());
    let now = Timestamp::now();
    let text = format!(
        "session reset: could not decrypt a message from {} ({}); asked the sender to start a new session and re-send",
        name.clone().unwrap_or_else(|| sender.short()),
        reason.name()
    );
    let (line, batch) = inner.history.record(NewEntry {
        direction: Direction::In,
        peer: *sender,
        peer_name: name,
        id: rand::random::<u64>(),
        text,
        sent_at: now,
        recorded_at: now,
        status: Status::Notice,
        path: None,
    });
    match super::commit(&inner.store, batch).await {
        Ok(()) => {
            tracing::warn!(peer = %sender.short(), reason = reason.name(), "cannot decrypt a message (lost ratchet state); asked the sender to reset the session");
            let _ = inner.events.send(line);
        }
        Err(e) => tracing::error!(error = %e, "cannot record the session reset notice"),
    }
}

/// Ok: handled (see [`Received`]); Err: a local failure, leave it at the source.
async fn receive(
    node: &Node,
    m: &StoredMessage,
    path: DeliveryPath,
) -> Result<Received, NodeError> {
    let inner = &node.inner;
    let sender = IdentityKey(m.sender);
    let contact = inner.contacts.get(&sender)?;
    let known = contact.is_some();
    if contact.as_ref().is_some_and(|c| c.trust == Trust::Rejected) {
        tracing::info!(peer = %sender.short(), "refused a message from a rejected contact");
        return Ok(Received::Done);
    }
    let username = contact.as_ref().map(|c| c.identity.username().to_string());
    // Verify, decrypt and commit on the blocking pool under the sender's ratchet lock (other
    // senders are not held back; their commits share the flush).
    let one = inner.locks.peer(&sender).await;
    let sessions = inner.sessions();
    let store = inner.store.clone();
    let history = inner.history.clone();
    let blob = m.encrypted_blob.clone();
    let claimed = m.sender;
    let done = tokio::task::spawn_blocking(move || {
        let r = record(&sessions, &*store, &history, &blob, claimed, username, path);
        drop(one);
        r
    })
    .await
    .map_err(|e| crate::store::StoreError::TaskFailed {
        task: "receive",
        detail: e.to_string(),
    })??;
    let entry = match done {
        Recorded::Entry(e) => *e,
        Recorded::Handled(r) => return Ok(r),
        Recorded::Group => return group(node, m, path).await,
        Recorded::File => match file_message(node, m, path, contact).await? {
            Ok(e) => e,
            Err(r) => return Ok(r),
        },
    };
    tracing::info!(peer = %sender.short(), id = %format_id(entry.id), ?path, "message received");
    let _ = inner.events.send(entry);
    if !known && inner.rendezvous.is_some() {
        // A first message from someone we have never seen (it came through a relay, so no
        // handshake showed us their identity): learn and pin it so that we can answer.
        let job = inner.clone();
        inner
            .pool
            .track(async move { super::delivery::lookup(&job, &sender).await });
    }
    Ok(Received::Done)
}

/// What [`record`] did.
enum Recorded {
    /// Decrypted and committed with its history entry.
    Entry(Box<super::history::HistoryEntry>),
    /// Not recorded (duplicate, undecryptable, forged): how to answer the source.
    Handled(Received),
    /// A group envelope: nothing committed; handle it under the node-wide lock ([`group`]).
    Group,
    /// A file message: nothing committed; its handling awaits the file layer
    /// ([`file_message`]).
    File,
}

/// A file message ([`Recorded::File`]): the file layer acts on it (async, so not inside the
/// blocking [`record`]) and names its history entry. Under the sender's ratchet lock, taken
/// again: the message is verified and decrypted again from the stored state (a copy recorded
/// meanwhile is a duplicate), then committed like any message. Ok(Err): answer the source so.
async fn file_message(
    node: &Node,
    m: &StoredMessage,
    path: DeliveryPath,
    contact: Option<crate::identity::ContactIdentity>,
) -> Result<Result<super::history::HistoryEntry, Received>, NodeError> {
    let inner = &node.inner;
    let sender = IdentityKey(m.sender);
    let _one = inner.locks.peer(&sender).await;
    let incoming = match inner.sessions().decrypt(&*inner.store, &m.encrypted_blob) {
        Ok(i) => i,
        Err(e) => return refused(&sender, e).map(Err),
    };
    if incoming.sender != m.sender {
        tracing::warn!(peer = %sender.short(), "message signed by someone other than its claimed sender; dropped");
        return Ok(Err(Received::Done));
    }
    let text = match &incoming.payload.content {
        Content::Other { kind, data } if *kind == crate::node::files::PAYLOAD_KIND => {
            crate::node::files::on_message(node, &sender, contact.as_ref(), data).await
        }
        _ => return Ok(Err(Received::Done)),
    };
    let username = contact.map(|c| c.identity.username().to_string());
    let (entry, batch) = entry_for(&inner.history, incoming, username, path, Some(text));
    super::commit(&inner.store, batch).await?;
    Ok(Ok(entry))
}

/// How a failed decryption is answered (`Ok`), or a local failure (`Err`).
fn refused(sender: &IdentityKey, e: crate::ratchet::ReceiveError) -> Result<Received, NodeError> {
    match e {
        crate::ratchet::ReceiveError::Rejected(DecryptError::Duplicate)
        | crate::ratchet::ReceiveError::Rejected(DecryptError::Replayed { .. }) => {
            tracing::debug!(peer = %sender.short(), "duplicate message dropped");
            Ok(Received::Done)
        }
        crate::ratchet::ReceiveError::Rejected(DecryptError::ConflictingReplay) => {
            tracing::warn!(peer = %sender.short(), "message dropped: it reuses a message key or id already received with different content (possible key reuse by the sender)");
            Ok(Received::Done)
        }
        // The sender's signature verified (these come after the check): our state is missing
        // or older than the sender's.
        crate::ratchet::ReceiveError::Rejected(
            DecryptError::NoSession | DecryptError::UnknownNoiseKey,
        ) => Ok(Received::Lost(ResetReason::NoSession)),
        crate::ratchet::ReceiveError::Rejected(
            DecryptError::Decrypt
            | DecryptError::UnexpectedRatchetKey
            | DecryptError::TooBigMessageGap { .. },
        ) => Ok(Received::Lost(ResetReason::StateMismatch)),
        crate::ratchet::ReceiveError::Rejected(e) => {
            tracing::warn!(peer = %sender.short(), error = %e, "undecryptable message dropped");
            Ok(Received::Done)
        }
        crate::ratchet::ReceiveError::Local(e) => Err(NodeError::Session(e)),
    }
}

/// A group envelope ([`Recorded::Group`]): it changes the group state and may advance several
/// members' sessions (answers, forwarded envelopes), so it runs under the node-wide ratchet
/// lock. The sender's lock was released without a commit, so the message is verified and
/// decrypted again from the stored state (a copy recorded meanwhile is a duplicate), and the
/// group layer records it in the same batch (docs/PROTOCOL.md, "Groups"); a refused one is still
/// confirmed, so the source drops it.
async fn group(node: &Node, m: &StoredMessage, path: DeliveryPath) -> Result<Received, NodeError> {
    let inner = &node.inner;
    let sender = IdentityKey(m.sender);
    let _all = inner.locks.all().await;
    let incoming = match inner.sessions().decrypt(&*inner.store, &m.encrypted_blob) {
        Ok(i) => i,
        Err(e) => return refused(&sender, e),
    };
    if incoming.sender != m.sender {
        tracing::warn!(peer = %sender.short(), "message signed by someone other than its claimed sender; dropped");
        return Ok(Received::Done);
    }
    let Content::Other { kind, data } = &incoming.payload.content else {
        return Ok(Received::Done);
    };
    if *kind != crate::group::control::PAYLOAD_KIND {
        return Ok(Received::Done);
    }
    let mut batch = incoming.batch;
    let (entries, later) = super::groups::on_envelope(inner, sender, data, path, &mut batch)?;
    super::commit(&inner.store, batch).await?;
    super::groups::wake_queued(inner, &entries);
    for e in entries {
        let _ = inner.events.send(e);
    }
    super::groups::send_deferred(inner, later).await?;
    Ok(Received::Done)
}

/// Verifies, decrypts and de-duplicates `blob` from `claimed`, and commits the ratchet change,
/// the de-duplication entries and the history entry in one batch. Blocking (crypto and the
/// store's flush); the caller holds the sender's ratchet lock.
fn record(
    sessions: &crate::ratchet::SessionManager,
    store: &dyn crate::store::Store,
    history: &super::history::History,
    blob: &[u8],
    claimed: [u8; 32],
    username: Option<String>,
    path: DeliveryPath,
) -> Result<Recorded, NodeError> {
    let sender = IdentityKey(claimed);
    let incoming = match sessions.decrypt(store, blob) {
        Ok(i) => i,
        Err(e) => return refused(&sender, e).map(Recorded::Handled),
    };
    if incoming.sender != claimed {
        tracing::warn!(peer = %sender.short(), "message signed by someone other than its claimed sender; dropped");
        return Ok(Recorded::Handled(Received::Done));
    }
    if is_group(&incoming) {
        return Ok(Recorded::Group);
    }
    if is_file(&incoming) {
        return Ok(Recorded::File);
    }
    let (entry, batch) = entry_for(history, incoming, username, path, None);
    store.commit(batch)?;
    Ok(Recorded::Entry(Box::new(entry)))
}

/// True when `incoming` carries a group envelope (handled by the group layer, [`group`]).
pub(super) fn is_group(incoming: &crate::ratchet::Incoming) -> bool {
    matches!(&incoming.payload.content,
        Content::Other { kind, .. } if *kind == crate::group::control::PAYLOAD_KIND)
}

/// True when `incoming` carries a file message (handled by the file layer, [`file_message`]).
pub(super) fn is_file(incoming: &crate::ratchet::Incoming) -> bool {
    matches!(&incoming.payload.content,
        Content::Other { kind, .. } if *kind == crate::node::files::PAYLOAD_KIND)
}

/// The history entry of a decrypted one-to-one message, and the batch that records it: the
/// ratchet change and de-duplication entries of `incoming` plus the entry. `text`: what the
/// entry shows, when not the message's own text.
pub(super) fn entry_for(
    history: &super::history::History,
    incoming: crate::ratchet::Incoming,
    username: Option<String>,
    path: DeliveryPath,
    text: Option<String>,
) -> (super::history::HistoryEntry, crate::store::Batch) {
    let text = text.unwrap_or_else(|| match &incoming.payload.content {
        Content::Text(t) => t.clone(),
        Content::Other { kind, .. } => format!("[unsupported content kind {kind}]"),
    });
    let mut id8 = [0u8; 8];
    id8.copy_from_slice(&incoming.payload.id.0[..8]);
    let id = u64::from_be_bytes(id8);
    let now = Timestamp::now();
    let (entry, hb) = history.record(NewEntry {
        direction: Direction::In,
        peer: IdentityKey(incoming.sender),
        peer_name: username,
        id,
        text,
        sent_at: incoming.payload.sent_at,
        recorded_at: now,
        status: Status::Received,
        path: Some(path),
    });
    let mut batch = incoming.batch;
    batch.extend(hb);
    (entry, batch)
}
