//! The relay client: connect, register, store, retrieve, confirm, and receive pushes.
//!
//! One background task reads the connection and dispatches: `STORE_RESPONSE`s to the waiting
//! [`RelayClient::store`] call (by message id), `MESSAGE_BATCH` and `ErrorMsg` to the waiting
//! [`RelayClient::retrieve`], and pushed messages, forwarded confirmations and unsolicited
//! errors to the [`RelayEvent`] channel returned by [`RelayClient::connect`].
//!
//! Limits: one retrieval at a time per client (calls are serialised); message ids must be
//! unique per sender (two concurrent stores with the same id on one client are refused locally).

use super::auth::{self, SessionBinding};
use super::conn::{ClientRegistration, RegistrationFailure, RegistrationStep};
use super::read_ahead::ReadAhead;
use crate::identity::{IdentityKey, UserIdentity};
use crate::noise::stream::{BoxWrite, ConnectionError, HandshakeLimits, TcpConnection, Writer};
use crate::time::Timestamp;
use crate::wire::envelope::ErrorMsg;
use crate::wire::relay::*;
use crate::wire::Envelope;
use ed25519_dalek::SigningKey;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

/// Events queued for the application before the reader waits.
const EVENT_QUEUE: usize = 1024;

/// Why a relay request failed.
#[derive(Debug, thiserror::Error)]
pub enum RelayClientError {
    /// The connection failed or closed.
    #[error("relay connection: {0}")]
    Connection(#[from] ConnectionError),
    /// The relay refused (the code says why).
    #[error("relay refused: {code:?} ({message})")]
    Refused {
        /// The refusal code (`None` when the relay sent a code this version does not know).
        code: Option<RelayErrorCode>,
        /// The raw code.
        raw: u16,
        /// The relay's detail text.
        message: String,
    },
    /// The relay broke the protocol (unexpected reply).
    #[error("relay protocol violation: {0}")]
    Protocol(&'static str),
    /// The connection is gone.
    #[error("relay connection closed")]
    Closed,
    /// No response arrived in time ([`RelayClient::store_many`]).
    #[error("no response in time")]
    NoResponse,
    /// A store with this message id is already waiting for its response.
    #[error("message id {0} already in flight")]
    DuplicateInFlight(u64),
    /// The peer we dialled proved a contact's identity at an older version than the one we
    /// pinned (its noise key may have been rotated out because it leaked): refused, closed.
    #[error("peer presented identity version {presented}, older than the pinned version {pinned}; refused")]
    StaleIdentity {
        /// The version we pinned.
        pinned: u64,
        /// The version the peer presented.
        presented: u64,
    },
}

impl RelayClientError {
    /// The refusal code, when the relay refused.
    pub fn code(&self) -> Option<RelayErrorCode> {
        match self {
            RelayClientError::Refused { code, .. } => *code,
            _ => None,
        }
    }

    fn refused(raw: u16, message: String) -> Self {
        RelayClientError::Refused {
            code: RelayErrorCode::from_code(raw),
            raw,
            message,
        }
    }
}

/// Something the relay sent without being asked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RelayEvent {
    /// A message pushed as it was stored (confirm it with [`RelayClient::confirm`]).
    Message(StoredMessage),
    /// A confirmation that a message we stored was delivered (acknowledge it with
    /// [`RelayClient::ack_confirmation`]).
    Confirmation(DeliveryConfirmation),
    /// The recipient of a message we stored could not decrypt it and asks us to start a new
    /// session (verify it with [`auth::verify_session_reset`] against the pinned identity).
    SessionReset(SessionReset),
    /// A hole-punching message from `peer` forwarded by the relay (check it with
    /// `transport::punch::PunchMessage::open`).
    Punch(PunchRelay),
    /// An error not tied to a waiting request.
    Error(ErrorMsg),
}

type Pending<T> = Arc<Mutex<HashMap<u64, oneshot::Sender<T>>>>;
type Waiter = Arc<Mutex<Option<oneshot::Sender<Result<MessageBatch, RelayClientError>>>>>;

/// A registered relay connection. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct RelayClient {
    key: SigningKey,
    relay: IdentityKey,
    /// The identity the peer presented in the Noise handshake.
    peer: crate::identity::Identity,
    binding: SessionBinding,
    capabilities: RelayCapabilities,
    /// Envelopes waiting for the writer; whoever holds the writer sends all of them with one
    /// write (concurrent stores coalesce instead of costing a system call each).
    outbox: Mutex<Vec<Envelope>>,
    writer: tokio::sync::Mutex<Writer<BoxWrite>>,
    stores: Pending<StoreResponse>,
    batch: Waiter,
    retrieve_lock: tokio::sync::Mutex<()>,
    reader: tokio::task::JoinHandle<()>,
    /// The transport of this connection.
    transport: crate::transport::Transport,
    /// What the relay said it sees as our address (QUIC connections only).
    observed: Option<std::net::SocketAddr>,
    /// A pushed message was not queued as an event (the queue was full): it stays stored at
    /// the relay, and the application should retrieve (see [`RelayClient::take_missed`]).
    missed: Arc<std::sync::atomic::AtomicBool>,
}

impl std::fmt::Debug for RelayClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayClient")
            .field("relay", &self.relay.short())
            .finish_non_exhaustive()
    }
}

impl Drop for RelayClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl RelayClient {
    /// Dials `addr`, runs the Noise handshake (checking the relay's identity when `relay` is
    /// given), then hello → challenge → register. Returns the client and its event stream.
    pub async fn connect(
        addr: &str,
        me: &UserIdentity,
        relay: Option<IdentityKey>,
        limits: HandshakeLimits,
    ) -> Result<(RelayClient, mpsc::Receiver<RelayEvent>), RelayClientError> {
        let conn = TcpConnection::connect(addr, me, relay, limits).await?;
        Self::register(
            conn,
            me,
            RelayCapabilities {
                max_message_size: 0,
                max_storage_duration: 0,
                quota_messages: 0,
                quota_bytes: 0,
            },
        )
        .await
    }

    /// Dials `ep` over its transport (`quic://` endpoints through `quic`, which must be
    /// given) and registers as [`RelayClient::connect`] does.
    pub async fn connect_endpoint(
        ep: &crate::wire::Endpoint,
        me: &UserIdentity,
        relay: Option<IdentityKey>,
        limits: HandshakeLimits,
        quic: Option<&crate::transport::QuicEndpoint>,
    ) -> Result<(RelayClient, mpsc::Receiver<RelayEvent>), RelayClientError> {
        let conn = crate::noise::quic::dial(ep, quic, me, relay, limits).await?;
        Self::register(
            conn,
            me,
            RelayCapabilities {
                max_message_size: 0,
                max_storage_duration: 0,
                quota_messages: 0,
                quota_bytes: 0,
            },
        )
        .await
    }

    /// Registers on an established connection, asking for `asked` (zeros: whatever the relay
    /// offers).
    pub async fn register(
        mut conn: TcpConnection,
        me: &UserIdentity,
        asked: RelayCapabilities,
    ) -> Result<(RelayClient, mpsc::Receiver<RelayEvent>), RelayClientError> {
        let relay = conn.peer.key();
        let peer = conn.peer.clone();
        let key = me.signing_key().clone();
        let (mut reg, hello) =
            ClientRegistration::start(key.clone(), relay, conn.handshake_hash, asked);
        conn.send(&hello).await?;
        let transport = conn.transport;
        let mut observed = None;
        let (binding, capabilities) = loop {
            let env = conn.recv().await?;
            // A relay tells a QUIC client its observed address before the challenge.
            if let Envelope::ObservedAddress(o) = &env {
                if transport == crate::transport::Transport::Quic && observed.is_none() {
                    observed = o.socket_addr();
                    continue;
                }
                return Err(RelayClientError::Protocol("unexpected OBSERVED_ADDRESS"));
            }
            match reg.handle(env) {
                Ok(RegistrationStep::Send(env)) => conn.send(&env).await?,
                Ok(RegistrationStep::Registered {
                    binding,
                    capabilities,
                }) => break (binding, capabilities),
                Err(RegistrationFailure::Refused { raw, message }) => {
                    return Err(RelayClientError::refused(raw, message))
                }
                Err(RegistrationFailure::Protocol(what)) => {
                    return Err(RelayClientError::Protocol(what))
                }
            }
        };
        let (_, reader, writer) = conn.split();
        let mut reader = reader.map_inner(ReadAhead::new);
        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let stores: Pending<StoreResponse> = Arc::default();
        let batch: Waiter = Arc::default();
        let (s2, b2) = (stores.clone(), batch.clone());
        let missed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let missed2 = missed.clone();
        let reader = tokio::spawn(async move {
            loop {
                let env = match reader.recv().await {
                    Ok(e) => e,
                    Err(_) => break,
                };
                let event = match env {
                    Envelope::StoreResponse(r) => {
                        let w = s2.lock().ok().and_then(|mut m| m.remove(&r.message_id));
                        match w {
                            Some(w) => {
                                let _ = w.send(r);
                                continue;
                            }
                            None => continue,
                        }
                    }
                    Envelope::MessageBatch(b) => {
                        if let Some(w) = b2.lock().ok().and_then(|mut w| w.take()) {
                            let _ = w.send(Ok(b));
                        }
                        continue;
                    }
                    Envelope::ErrorMsg(e) => match b2.lock().ok().and_then(|mut w| w.take()) {
                        Some(w) => {
                            let _ = w.send(Err(RelayClientError::refused(e.code, e.message)));
                            continue;
                        }
                        None => RelayEvent::Error(e),
                    },
                    // Never wait for room for a push: the application may be waiting for a
                    // response behind it (a retrieval while pushes pile up would deadlock).
                    // A push left out stays stored at the relay; `take_missed` says so.
                    Envelope::StoredMessage(m) => {
                        match events_tx.try_send(RelayEvent::Message(m)) {
                            Ok(()) => {}
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                missed2.store(true, std::sync::atomic::Ordering::SeqCst);
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => {}
                        }
                        continue;
                    }
                    Envelope::DeliveryConfirmation(c) => RelayEvent::Confirmation(c),
                    Envelope::SessionReset(n) => RelayEvent::SessionReset(n),
                    Envelope::PunchRelay(p) => RelayEvent::Punch(p),
                    _ => continue,
                };
                if events_tx.send(event).await.is_err() {
                    // Nobody listens for events; keep serving responses.
                    continue;
                }
            }
            // Fail everything still waiting.
            if let Ok(mut m) = s2.lock() {
                m.clear();
            }
            if let Ok(mut w) = b2.lock() {
                w.take();
            }
        });
        Ok((
            RelayClient {
                key,
                relay,
                peer,
                binding,
                capabilities,
                outbox: Mutex::new(Vec::new()),
                writer: tokio::sync::Mutex::new(writer),
                stores,
                batch,
                retrieve_lock: tokio::sync::Mutex::new(()),
                reader,
                transport,
                observed,
                missed,
            },
            events,
        ))
    }

    /// The transport this connection runs on.
    pub fn transport(&self) -> crate::transport::Transport {
        self.transport
    }

    /// The address the relay observed for us (QUIC connections only).
    pub fn observed_address(&self) -> Option<std::net::SocketAddr> {
        self.observed
    }

    /// True (once) when a pushed message was left out of the event queue because it was full
    /// since the last call: it is still stored at the relay, retrieve it.
    pub fn take_missed(&self) -> bool {
        self.missed.swap(false, std::sync::atomic::Ordering::SeqCst)
    }

    /// What the relay granted.
    pub fn capabilities(&self) -> &RelayCapabilities {
        &self.capabilities
    }

    /// The identity the peer presented in the handshake (for a node: its current version).
    pub fn peer_identity(&self) -> &crate::identity::Identity {
        &self.peer
    }

    /// The relay's identity key.
    pub fn relay_key(&self) -> IdentityKey {
        self.relay
    }

    /// This session's binding (tests that craft requests by hand).
    pub fn binding(&self) -> SessionBinding {
        self.binding
    }

    async fn send(&self, env: Envelope) -> Result<(), RelayClientError> {
        self.send_many(std::iter::once(env)).await
    }

    /// Queues `envs` and sends everything queued with one write (see `outbox`).
    async fn send_many(
        &self,
        envs: impl IntoIterator<Item = Envelope>,
    ) -> Result<(), RelayClientError> {
        self.outbox
            .lock()
            .map_err(|_| RelayClientError::Closed)?
            .extend(envs);
        let mut w = self.writer.lock().await;
        let batch = std::mem::take(&mut *self.outbox.lock().map_err(|_| RelayClientError::Closed)?);
        // Empty: an earlier holder of the writer already sent ours.
        if !batch.is_empty() {
            w.send_all(&batch).await?;
        }
        Ok(())
    }

    /// Stores `blob` for `recipient` under `message_id`; returns when the relay has it on disk
    /// (`stored_at`), or its refusal.
    pub async fn store(
        &self,
        recipient: IdentityKey,
        blob: Vec<u8>,
        message_id: u64,
    ) -> Result<Timestamp, RelayClientError> {
        let sender_signature = auth::sign_store(&self.key, &recipient.0, message_id, &blob);
        self.store_raw(StoreMessage {
            recipient: recipient.0,
            encrypted_blob: blob,
            sender_signature,
            message_id,
        })
        .await
    }

    /// Sends a prepared `STORE_MESSAGE` as is (tests).
    pub async fn store_raw(&self, m: StoreMessage) -> Result<Timestamp, RelayClientError> {
        let id = m.message_id;
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self.stores.lock().map_err(|_| RelayClientError::Closed)?;
            if p.contains_key(&id) {
                return Err(RelayClientError::DuplicateInFlight(id));
            }
            p.insert(id, tx);
        }
        if let Err(e) = self.send(Envelope::StoreMessage(m)).await {
            if let Ok(mut p) = self.stores.lock() {
                p.remove(&id);
            }
            return Err(e);
        }
        let r = rx.await.map_err(|_| RelayClientError::Closed)?;
        match (r.success, r.error) {
            (true, _) => Ok(r.stored_at),
            (false, code) => {
                let raw = code.unwrap_or(0);
                Err(RelayClientError::refused(raw, "store refused".into()))
            }
        }
    }

    /// Stores several messages (`(recipient, blob, message_id)`) with one write; returns each
    /// one's result in order, once every response arrived or `deadline` passed
    /// ([`RelayClientError::NoResponse`] for those still waiting; see [`RelayClient::store`]).
    /// Those whose id is already in flight on this client are refused locally
    /// ([`RelayClientError::DuplicateInFlight`]) without being sent.
    pub async fn store_many(
        &self,
        items: &[(IdentityKey, &[u8], u64)],
        deadline: tokio::time::Instant,
    ) -> Vec<Result<Timestamp, RelayClientError>> {
        let mut envs = Vec::with_capacity(items.len());
        let mut waits = Vec::with_capacity(items.len());
        {
            let Ok(mut p) = self.stores.lock() else {
                return items.iter().map(|_| Err(RelayClientError::Closed)).collect();
            };
            for (recipient, blob, id) in items {
                if p.contains_key(id) {
                    waits.push(Err(RelayClientError::DuplicateInFlight(*id)));
                    continue;
                }
                let (tx, rx) = oneshot::channel();
                p.insert(*id, tx);
                envs.push(Envelope::StoreMessage(StoreMessage {
                    recipient: recipient.0,
                    encrypted_blob: blob.to_vec(),
                    sender_signature: auth::sign_store(&self.key, &recipient.0, *id, blob),
                    message_id: *id,
                }));
                waits.push(Ok((*id, rx)));
            }
        }
        // The write is bounded too: a peer that accepts but stops reading must not hold the
        // worker (and this connection's writer) past the deadline.
        let sent = match tokio::time::timeout_at(deadline, self.send_many(envs)).await {
            Ok(r) => r,
            Err(_) => {
                // A frame may be half written: the stream cannot be used again. Each store
                // comes back `Closed`, so the caller drops the connection from its pool.
                self.reader.abort();
                Err(RelayClientError::NoResponse)
            }
        };
        if let Err(e) = sent {
            tracing::debug!(error = %e, "stores not sent");
            if let Ok(mut p) = self.stores.lock() {
                for (id, _) in waits.iter().flatten() {
                    p.remove(id);
                }
            }
            // The connection failed (the error is not `Clone`): each one is `Closed`.
            return waits
                .into_iter()
                .map(|w| w.and(Err(RelayClientError::Closed)))
                .collect();
        }
        let mut out = Vec::with_capacity(waits.len());
        for w in waits {
            out.push(match w {
                Err(e) => Err(e),
                Ok((id, rx)) => match tokio::time::timeout_at(deadline, rx).await {
                    Err(_) => {
                        // Forget it: a late response finds nobody waiting.
                        if let Ok(mut p) = self.stores.lock() {
                            p.remove(&id);
                        }
                        Err(RelayClientError::NoResponse)
                    }
                    Ok(Err(_)) => Err(RelayClientError::Closed),
                    Ok(Ok(r)) if r.success => Ok(r.stored_at),
                    Ok(Ok(r)) => Err(RelayClientError::refused(
                        r.error.unwrap_or(0),
                        "store refused".into(),
                    )),
                },
            });
        }
        out
    }

    /// One page of messages for us: stored at or after `since`, after `after`.
    pub async fn retrieve(
        &self,
        since: Option<Timestamp>,
        after: Option<RetrieveCursor>,
        limit: u32,
    ) -> Result<MessageBatch, RelayClientError> {
        let mut r = RetrieveMessages {
            identity: [0; 32],
            auth_signature: [0; 64],
            since,
            after,
            limit,
        };
        auth::sign_retrieve(&self.key, &self.binding, &mut r);
        self.retrieve_raw(r).await
    }

    /// Sends a prepared `RETRIEVE_MESSAGES` as is (tests).
    pub async fn retrieve_raw(
        &self,
        r: RetrieveMessages,
    ) -> Result<MessageBatch, RelayClientError> {
        let _one = self.retrieve_lock.lock().await;
        let (tx, rx) = oneshot::channel();
        if let Ok(mut w) = self.batch.lock() {
            *w = Some(tx);
        }
        self.send(Envelope::RetrieveMessages(r)).await?;
        rx.await.map_err(|_| RelayClientError::Closed)?
    }

    /// Every message waiting for us, page by page (at most `max_pages` pages).
    pub async fn retrieve_all(
        &self,
        max_pages: usize,
    ) -> Result<Vec<StoredMessage>, RelayClientError> {
        let mut out: Vec<StoredMessage> = Vec::new();
        let mut after = None;
        for _ in 0..max_pages {
            let b = self.retrieve(None, after, 0).await?;
            after = b.messages.last().map(|m| RetrieveCursor {
                sender: m.sender,
                message_id: m.message_id,
            });
            out.extend(b.messages);
            if !b.has_more || after.is_none() {
                break;
            }
        }
        Ok(out)
    }

    /// Confirms delivery of `sender`'s message `message_id`: the relay deletes it and tells
    /// the sender.
    pub async fn confirm(
        &self,
        sender: IdentityKey,
        message_id: u64,
    ) -> Result<(), RelayClientError> {
        let c = auth::confirmation(&self.key, &sender.0, message_id, Timestamp::now());
        self.send(Envelope::DeliveryConfirmation(c)).await
    }

    /// Answers `sender`'s message `message_id`, which we could not decrypt, with a signed
    /// `SESSION_RESET`: the relay deletes the message (without a delivery confirmation) and
    /// forwards the notice to the sender if it is connected. `last_recorded`: the id of the
    /// newest message from `sender` we have recorded (0: none), `None` to leave it out.
    pub async fn session_reset(
        &self,
        sender: IdentityKey,
        message_id: u64,
        reason: ResetReason,
        blob: &[u8],
        last_recorded: Option<u64>,
    ) -> Result<(), RelayClientError> {
        use sha2::Digest;
        let mut n = SessionReset {
            message_id,
            sender: sender.0,
            recipient: [0; 32],
            timestamp: Timestamp::now(),
            reason: reason as u8,
            digest: sha2::Sha256::digest(blob).into(),
            signature: [0; 64],
            last_recorded,
        };
        auth::sign_session_reset(&self.key, &mut n);
        self.send(Envelope::SessionReset(n)).await
    }

    /// Confirms several delivered messages (`(sender, message_id)`, see
    /// [`RelayClient::confirm`]) with one write.
    pub async fn confirm_many(
        &self,
        delivered: &[(IdentityKey, u64)],
    ) -> Result<(), RelayClientError> {
        let now = Timestamp::now();
        self.send_many(delivered.iter().map(|(sender, id)| {
            Envelope::DeliveryConfirmation(auth::confirmation(&self.key, &sender.0, *id, now))
        }))
        .await
    }

    /// [`RelayClient::ack_confirmation`] for several confirmations, with one write.
    pub async fn ack_confirmations(
        &self,
        cs: &[DeliveryConfirmation],
    ) -> Result<(), RelayClientError> {
        self.send_many(cs.iter().map(|c| {
            Envelope::ConfirmationAck(ConfirmationAck {
                delivered_to: c.delivered_to,
                message_id: c.message_id,
            })
        }))
        .await
    }

    /// Tells the relay we received a forwarded confirmation, so it can forget it.
    pub async fn ack_confirmation(&self, c: &DeliveryConfirmation) -> Result<(), RelayClientError> {
        self.send(Envelope::ConfirmationAck(ConfirmationAck {
            delivered_to: c.delivered_to,
            message_id: c.message_id,
        }))
        .await
    }

    /// Asks the relay to forward a signed hole-punching message to `peer` (best effort: an
    /// absent peer never gets it and nothing is answered).
    pub async fn punch(&self, peer: IdentityKey, body: Vec<u8>) -> Result<(), RelayClientError> {
        self.send(Envelope::PunchRelay(PunchRelay { peer: peer.0, body }))
            .await
    }

    /// Sends any envelope (tests that break the protocol on purpose).
    pub async fn send_raw(&self, env: &Envelope) -> Result<(), RelayClientError> {
        self.send(env.clone()).await
    }

    /// Closes the connection.
    pub async fn close(&self) {
        let _ = self.writer.lock().await.shutdown().await;
        self.reader.abort();
    }
}
