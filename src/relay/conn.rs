//! The relay connection core: every protocol decision on one authenticated connection, with no
//! I/O, no clock and no randomness of its own (the shell passes the challenge nonce and `now`).
//!
//! The async shell ([`super::service`]) reads an envelope, calls [`RelayConn::handle`] (or
//! [`RelayConn::handle_stores`] for `STORE_MESSAGE`s received together), and executes the
//! returned [`Action`]s in order: sending, storing, retrieving, confirming, routing. What an
//! action's I/O returns (a durable store, a storage failure) is mapped to replies by the shell
//! with fixed rules; nothing it does depends on the connection's state.
//!
//! Flow (docs/PROTOCOL.md, "Relay"):
//! 1. before `RELAY_HELLO`: anything else is refused with `UnexpectedMessage` and closes;
//! 2. `RELAY_HELLO` → `RELAY_CHALLENGE` (the nonce, bound to the Noise handshake hash);
//! 3. `RELAY_REGISTER` (rate-charged; identity = Noise peer, key not weak, signature over the
//!    binding and the relay key) → register, `RELAY_REGISTERED` with granted capabilities, then
//!    the confirmations kept for this sender; a refusal closes; anything else `NotRegistered`
//!    and closes;
//! 4. registered: `STORE_MESSAGE` (charged, integrated owner only, size, sender signature
//!    verified in batches), `RETRIEVE_MESSAGES` (charged, owner only at an integrated relay,
//!    signed over the binding; the limit clamped to `batch_messages`), `DELIVERY_CONFIRMATION`
//!    and `SESSION_RESET` (charged, for the registered identity only, signed), and
//!    `CONFIRMATION_ACK`; refusals answer and keep the connection open.
//!
//! An integrated relay never rate-limits its owner, and charges a sender the owner marked
//! Trusted to a larger budget of its own ([`RateLimiter::set_trusted`]). The rate limiter is
//! shared by all of an identity's connections, so it is passed in behind a lock.

use super::auth::{self, SessionBinding};
use super::policy::{RateLimiter, RelayConfig};
use crate::identity::IdentityKey;
use crate::sig;
use crate::time::Timestamp;
use crate::wire::envelope::ErrorMsg;
use crate::wire::relay::*;
use crate::wire::Envelope;
use ed25519_dalek::VerifyingKey;
use std::sync::{Arc, Mutex};

/// Kept confirmations sent to a sender right after it registers.
pub const KEPT_CONFIRMATIONS_ON_REGISTER: usize = 1000;

/// Whom a relay serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RelayMode {
    /// Relay-only mode (`sremp relay`): stores for anyone.
    Open,
    /// The integrated relay of a node: stores only messages for `owner`, and only `owner` may
    /// retrieve or confirm. Anyone may register (to send to the owner).
    Integrated {
        /// The local user.
        owner: IdentityKey,
    },
}

/// What the connection's core is told about time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Now {
    /// Milliseconds on a monotonic clock (rate limits).
    pub mono_ms: u64,
    /// Wall-clock time (the storage time of a message).
    pub wall: Timestamp,
}

/// Where a confirmation or a session reset is forwarded once the message is deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Forward {
    /// A `DELIVERY_CONFIRMATION`: kept for the sender until it acknowledges it, and pushed to
    /// it if it is connected.
    Confirmation(DeliveryConfirmation),
    /// A `SESSION_RESET`: pushed to the connected sender only (never kept).
    SessionReset(SessionReset),
}

/// One thing for the shell to do, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send this envelope on the connection.
    Send(Envelope),
    /// Count a refusal and send `ErrorMsg{code, message}`.
    Refuse {
        /// Why.
        code: RelayErrorCode,
        /// The detail sent.
        message: &'static str,
    },
    /// The connection is registered as `who`: route confirmations (and, once it retrieves,
    /// pushes) for `who` to it.
    Register {
        /// The registered identity.
        who: IdentityKey,
    },
    /// Send up to `max` confirmations kept for the sender `who`.
    SendKeptConfirmations {
        /// The sender.
        who: IdentityKey,
        /// Most sent.
        max: usize,
    },
    /// Count a refused store and answer `STORE_RESPONSE{success: false, error: code}`.
    StoreRefused {
        /// The refused message's id.
        message_id: u64,
        /// Why.
        code: RelayErrorCode,
    },
    /// Store a checked message durably, then answer its `STORE_RESPONSE` (and push it to a
    /// collecting recipient).
    Store {
        /// The registered sender.
        sender: IdentityKey,
        /// The request.
        message: StoreMessage,
        /// The storage time.
        now: Timestamp,
    },
    /// Make this connection the collector of `who` (pushes go to it), then answer a page of
    /// `who`'s messages with `MESSAGE_BATCH` (or refuse with `StorageFailure`).
    Retrieve {
        /// The registered recipient.
        who: IdentityKey,
        /// Only messages stored at or after this time.
        since: Option<Timestamp>,
        /// Continue after this message.
        after: Option<RetrieveCursor>,
        /// Most messages in the page (already clamped).
        limit: usize,
    },
    /// Delete `who`'s message `(sender, message_id)` and, if it existed, forward.
    Confirm {
        /// The recipient that confirmed (or reset).
        who: IdentityKey,
        /// The message's sender.
        sender: IdentityKey,
        /// Its id.
        message_id: u64,
        /// What goes to the sender.
        forward: Forward,
    },
    /// The sender `who` received the confirmation `(delivered_to, message_id)`: forget it.
    AckConfirmation {
        /// The sender.
        who: IdentityKey,
        /// The confirming recipient.
        delivered_to: [u8; 32],
        /// The message.
        message_id: u64,
    },
    /// Forward a hole-punching message to `to`'s registered connection, if it has one (else
    /// drop it: punching is best effort and never stored).
    ForwardPunch {
        /// The recipient.
        to: IdentityKey,
        /// The envelope as `to` receives it (`peer` = the sender).
        env: Envelope,
    },
    /// This many sender signatures were verified as one batch (a counter).
    SignaturesBatched(u64),
    /// Close the connection.
    Close(&'static str),
}

enum Phase {
    /// The challenge nonce it will be sent.
    AwaitHello([u8; 32]),
    Challenged(SessionBinding),
    Registered {
        who: IdentityKey,
        /// `who` parsed once (and checked not weak) at registration.
        key: Box<VerifyingKey>,
        binding: SessionBinding,
        max_message_size: u32,
    },
}

/// The relay's side of one authenticated connection (see the module docs).
pub struct RelayConn {
    mode: RelayMode,
    relay_key: IdentityKey,
    policy: Arc<RelayConfig>,
    rate: Arc<Mutex<RateLimiter>>,
    peer: IdentityKey,
    handshake_hash: [u8; 32],
    phase: Phase,
}

impl std::fmt::Debug for RelayConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RelayConn")
            .field("peer", &self.peer.short())
            .field("registered", &self.registered().map(|k| k.short()))
            .finish_non_exhaustive()
    }
}

fn refuse(code: RelayErrorCode, message: &'static str) -> Action {
    Action::Refuse { code, message }
}

/// The `ErrorMsg` envelope for a refusal.
pub fn error_envelope(code: RelayErrorCode, message: &str) -> Envelope {
    Envelope::ErrorMsg(ErrorMsg {
        code: code.code(),
        message: message.into(),
    })
}

impl RelayConn {
    /// A connection from the Noise-authenticated `peer` whose handshake hash is
    /// `handshake_hash`; `nonce` (fresh random bytes) is the challenge it will be sent.
    pub fn new(
        mode: RelayMode,
        relay_key: IdentityKey,
        policy: Arc<RelayConfig>,
        rate: Arc<Mutex<RateLimiter>>,
        peer: IdentityKey,
        handshake_hash: [u8; 32],
        nonce: [u8; 32],
    ) -> Self {
        RelayConn {
            mode,
            relay_key,
            policy,
            rate,
            peer,
            handshake_hash,
            phase: Phase::AwaitHello(nonce),
        }
    }

    /// The identity this connection registered as, once it has.
    pub fn registered(&self) -> Option<IdentityKey> {
        match &self.phase {
            Phase::Registered { who, .. } => Some(*who),
            _ => None,
        }
    }

    /// True when `STORE_MESSAGE`s may be gathered and passed together to
    /// [`RelayConn::handle_stores`] (the connection is registered).
    pub fn takes_store_batches(&self) -> bool {
        self.registered().is_some()
    }

    fn charge(&self, who: IdentityKey, now: Now) -> Result<(), RelayErrorCode> {
        // An integrated relay never limits its owner: collecting and confirming its own
        // messages must not be throttled by the traffic it receives.
        if matches!(self.mode, RelayMode::Integrated { owner } if owner == who) {
            return Ok(());
        }
        // An integrated relay's trust check reads the owner's contact book: outside the lock
        // every connection shares.
        let check = self.rate.lock().ok().and_then(|rl| rl.trust_check());
        let trusted = check.is_some_and(|f| f(&who));
        match self.rate.lock() {
            Ok(mut rl) => rl.charge_as(who, now.mono_ms, trusted),
            Err(_) => Err(RelayErrorCode::RateLimited),
        }
    }

    /// Handles one envelope received on the connection.
    pub fn handle(&mut self, env: Envelope, now: Now) -> Vec<Action> {
        match (&self.phase, env) {
            (Phase::AwaitHello(nonce), Envelope::RelayHello(_)) => {
                let nonce = *nonce;
                self.phase = Phase::Challenged(SessionBinding {
                    handshake_hash: self.handshake_hash,
                    nonce,
                });
                vec![Action::Send(Envelope::RelayChallenge(RelayChallenge {
                    nonce,
                    capabilities: self.policy.capabilities(),
                }))]
            }
            (Phase::AwaitHello(_), _) => vec![
                refuse(RelayErrorCode::UnexpectedMessage, "expected RELAY_HELLO"),
                Action::Close("no hello"),
            ],
            (Phase::Challenged(binding), Envelope::RelayRegister(reg)) => {
                let binding = *binding;
                if let Err(code) = self.charge(self.peer, now) {
                    return vec![
                        refuse(code, "rate limited"),
                        Action::Close("rate limited at registration"),
                    ];
                }
                let key = sig::verifying_key(&reg.identity).ok().filter(|_| {
                    reg.identity == self.peer.0
                        && auth::verify_register(
                            &binding,
                            &self.relay_key.0,
                            &reg.identity,
                            &reg.auth_signature,
                        )
                        .is_ok()
                });
                let Some(key) = key else {
                    return vec![
                        refuse(RelayErrorCode::Unauthorized, "registration refused"),
                        Action::Close("registration refused"),
                    ];
                };
                let caps = self.policy.grant(&reg.capabilities);
                let who = self.peer;
                self.phase = Phase::Registered {
                    who,
                    key: Box::new(key),
                    binding,
                    max_message_size: caps.max_message_size,
                };
                tracing::debug!(peer = %who.short(), "registered");
                vec![
                    Action::Register { who },
                    Action::Send(Envelope::RelayRegistered(RelayRegistered {
                        capabilities: caps,
                    })),
                    // Hand over confirmations kept while the sender was away.
                    Action::SendKeptConfirmations {
                        who,
                        max: KEPT_CONFIRMATIONS_ON_REGISTER,
                    },
                ]
            }
            (Phase::Challenged(_), _) => vec![
                refuse(RelayErrorCode::NotRegistered, "expected RELAY_REGISTER"),
                Action::Close("not registered"),
            ],
            (Phase::Registered { .. }, Envelope::StoreMessage(m)) => {
                self.handle_stores(vec![m], now)
            }
            (Phase::Registered { who, binding, .. }, env) => {
                let (who, binding) = (*who, *binding);
                self.registered_request(who, binding, env, now)
            }
        }
    }

    fn registered_request(
        &self,
        who: IdentityKey,
        binding: SessionBinding,
        env: Envelope,
        now: Now,
    ) -> Vec<Action> {
        match env {
            Envelope::RetrieveMessages(r) => {
                if let Err(code) = self.charge(who, now) {
                    return vec![refuse(code, "rate limited")];
                }
                let owner_ok = match self.mode {
                    RelayMode::Integrated { owner } => owner == who,
                    RelayMode::Open => true,
                };
                if r.identity != who.0 || !owner_ok || auth::verify_retrieve(&binding, &r).is_err()
                {
                    return vec![refuse(RelayErrorCode::Unauthorized, "retrieval refused")];
                }
                let max = self.policy.batch_messages;
                let limit = if r.limit == 0 || r.limit > max {
                    max
                } else {
                    r.limit
                };
                vec![Action::Retrieve {
                    who,
                    since: r.since,
                    after: r.after,
                    limit: limit as usize,
                }]
            }
            Envelope::DeliveryConfirmation(c) => {
                if let Err(code) = self.charge(who, now) {
                    return vec![refuse(code, "rate limited")];
                }
                if c.delivered_to != who.0 {
                    return vec![refuse(
                        RelayErrorCode::Unauthorized,
                        "confirmation for someone else",
                    )];
                }
                if auth::verify_confirmation(&c).is_err() {
                    return vec![refuse(
                        RelayErrorCode::BadSignature,
                        "bad confirmation signature",
                    )];
                }
                vec![Action::Confirm {
                    who,
                    sender: IdentityKey(c.sender),
                    message_id: c.message_id,
                    forward: Forward::Confirmation(c),
                }]
            }
            Envelope::SessionReset(n) => {
                if let Err(code) = self.charge(who, now) {
                    return vec![refuse(code, "rate limited")];
                }
                if n.recipient != who.0 {
                    return vec![refuse(
                        RelayErrorCode::Unauthorized,
                        "session reset for someone else",
                    )];
                }
                if auth::verify_session_reset(&n).is_err() {
                    return vec![refuse(
                        RelayErrorCode::BadSignature,
                        "bad session reset signature",
                    )];
                }
                // Deleted like a confirmed message; forwarded only to a connected sender (never
                // kept: a sender that was away re-stores later and gets a fresh notice).
                vec![Action::Confirm {
                    who,
                    sender: IdentityKey(n.sender),
                    message_id: n.message_id,
                    forward: Forward::SessionReset(n),
                }]
            }
            Envelope::ConfirmationAck(a) => vec![Action::AckConfirmation {
                who,
                delivered_to: a.delivered_to,
                message_id: a.message_id,
            }],
            Envelope::PunchRelay(p) => {
                // Only open relays coordinate hole punching between two of their clients; an
                // integrated relay's clients already reach its owner directly.
                if matches!(self.mode, RelayMode::Integrated { .. }) {
                    return vec![refuse(
                        RelayErrorCode::UnexpectedMessage,
                        "punch relaying is served by open relays only",
                    )];
                }
                if let Err(code) = self.charge(who, now) {
                    return vec![refuse(code, "rate limited")];
                }
                if p.body.len() > crate::transport::punch::MAX_MESSAGE_LEN {
                    return vec![refuse(RelayErrorCode::TooLarge, "punch message too large")];
                }
                if p.peer == who.0 {
                    return vec![refuse(
                        RelayErrorCode::UnexpectedMessage,
                        "punch message to oneself",
                    )];
                }
                vec![Action::ForwardPunch {
                    to: IdentityKey(p.peer),
                    env: Envelope::PunchRelay(PunchRelay {
                        peer: who.0,
                        body: p.body,
                    }),
                }]
            }
            Envelope::ErrorMsg(e) => {
                tracing::debug!(peer = %who.short(), code = e.code, "client reported an error");
                Vec::new()
            }
            _ => vec![refuse(
                RelayErrorCode::UnexpectedMessage,
                "unexpected message",
            )],
        }
    }

    /// Handles `STORE_MESSAGE`s received together, in order, as if one at a time: each is
    /// charged and checked (integrated owner, size) on its own, the signatures of those that
    /// pass are verified together ([`auth::verify_store_batch`]), and each is then refused
    /// with its own code or stored. Before registration they are handled one by one like any
    /// other envelope.
    pub fn handle_stores(&mut self, ms: Vec<StoreMessage>, now: Now) -> Vec<Action> {
        let (who, key, max) = match &self.phase {
            Phase::Registered {
                who,
                key,
                max_message_size,
                ..
            } => (*who, **key, *max_message_size),
            _ => {
                let mut out = Vec::new();
                for m in ms {
                    let actions = self.handle(Envelope::StoreMessage(m), now);
                    let closes = actions.iter().any(|a| matches!(a, Action::Close(_)));
                    out.extend(actions);
                    if closes {
                        break;
                    }
                }
                return out;
            }
        };
        let pre: Vec<Result<(), RelayErrorCode>> = ms
            .iter()
            .map(|m| {
                self.charge(who, now)
                    .and_then(|()| match self.mode {
                        RelayMode::Integrated { owner } if owner.0 != m.recipient => {
                            Err(RelayErrorCode::Unauthorized)
                        }
                        _ => Ok(()),
                    })
                    .and(if m.encrypted_blob.len() > max as usize {
                        Err(RelayErrorCode::TooLarge)
                    } else {
                        Ok(())
                    })
            })
            .collect();
        let to_verify: Vec<&StoreMessage> = ms
            .iter()
            .zip(&pre)
            .filter(|(_, p)| p.is_ok())
            .map(|(m, _)| m)
            .collect();
        let mut out = Vec::with_capacity(ms.len() + 1);
        if to_verify.len() >= 2 {
            out.push(Action::SignaturesBatched(to_verify.len() as u64));
        }
        let mut verdicts = auth::verify_store_batch(&key, &to_verify).into_iter();
        drop(to_verify);
        for (m, p) in ms.into_iter().zip(pre) {
            let check = p.and_then(|()| match verdicts.next() {
                Some(Ok(())) => Ok(()),
                _ => Err(RelayErrorCode::BadSignature),
            });
            match check {
                Err(code) => {
                    tracing::debug!(peer = %who.short(), reason = code.name(), "store refused");
                    out.push(Action::StoreRefused {
                        message_id: m.message_id,
                        code,
                    });
                }
                Ok(()) => out.push(Action::Store {
                    sender: who,
                    message: m,
                    now: now.wall,
                }),
            }
        }
        out
    }
}

/// What the relay answered that ends a client's registration without success.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistrationFailure {
    /// The relay refused with `ErrorMsg{code: raw, message}`.
    Refused {
        /// The raw code.
        raw: u16,
        /// The relay's detail text.
        message: String,
    },
    /// The relay sent something else than the next registration step.
    Protocol(&'static str),
}

/// The next step of a client's registration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RegistrationStep {
    /// Send this and wait for the next envelope.
    Send(Envelope),
    /// Registered: the session binding (retrievals are signed over it) and what was granted.
    Registered {
        /// Challenge bound to the Noise session.
        binding: SessionBinding,
        /// What the relay granted.
        capabilities: RelayCapabilities,
    },
}

/// The client's side of registration (no I/O): `RELAY_HELLO` → `RELAY_CHALLENGE` →
/// `RELAY_REGISTER` (signed over the challenge, the Noise handshake hash and the relay's key)
/// → `RELAY_REGISTERED`.
pub struct ClientRegistration {
    key: ed25519_dalek::SigningKey,
    relay: IdentityKey,
    handshake_hash: [u8; 32],
    asked: RelayCapabilities,
    binding: Option<SessionBinding>,
}

impl std::fmt::Debug for ClientRegistration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientRegistration")
            .field("relay", &self.relay.short())
            .field("challenged", &self.binding.is_some())
            .finish_non_exhaustive()
    }
}

impl ClientRegistration {
    /// Starts registering as `key` with `relay` on the Noise session whose handshake hash is
    /// `handshake_hash`, asking for `asked`; returns the first envelope to send.
    pub fn start(
        key: ed25519_dalek::SigningKey,
        relay: IdentityKey,
        handshake_hash: [u8; 32],
        asked: RelayCapabilities,
    ) -> (Self, Envelope) {
        let me = ClientRegistration {
            key,
            relay,
            handshake_hash,
            asked,
            binding: None,
        };
        (me, Envelope::RelayHello(RelayHello { features: 0 }))
    }

    /// Handles the relay's next envelope.
    pub fn handle(&mut self, env: Envelope) -> Result<RegistrationStep, RegistrationFailure> {
        match (self.binding, env) {
            (_, Envelope::ErrorMsg(e)) => Err(RegistrationFailure::Refused {
                raw: e.code,
                message: e.message,
            }),
            (None, Envelope::RelayChallenge(c)) => {
                let binding = SessionBinding {
                    handshake_hash: self.handshake_hash,
                    nonce: c.nonce,
                };
                self.binding = Some(binding);
                Ok(RegistrationStep::Send(Envelope::RelayRegister(
                    RelayRegister {
                        identity: self.key.verifying_key().to_bytes(),
                        auth_signature: auth::sign_register(&self.key, &binding, &self.relay.0),
                        capabilities: self.asked.clone(),
                    },
                )))
            }
            (None, _) => Err(RegistrationFailure::Protocol("expected RELAY_CHALLENGE")),
            (Some(binding), Envelope::RelayRegistered(r)) => Ok(RegistrationStep::Registered {
                binding,
                capabilities: r.capabilities,
            }),
            (Some(_), _) => Err(RegistrationFailure::Protocol("expected RELAY_REGISTERED")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    const NOW: Now = Now {
        mono_ms: 1000,
        wall: Timestamp(1_767_225_600_000),
    };
    const HASH: [u8; 32] = [4; 32];
    const NONCE: [u8; 32] = [5; 32];
    const RELAY: IdentityKey = IdentityKey([6; 32]);

    fn client() -> SigningKey {
        SigningKey::from_bytes(&[7; 32])
    }

    fn key(k: &SigningKey) -> IdentityKey {
        IdentityKey(k.verifying_key().to_bytes())
    }

    fn conn(mode: RelayMode, policy: RelayConfig) -> RelayConn {
        let rate = Arc::new(Mutex::new(RateLimiter::new(&policy)));
        RelayConn::new(
            mode,
            RELAY,
            Arc::new(policy),
            rate,
            key(&client()),
            HASH,
            NONCE,
        )
    }

    fn register(c: &mut RelayConn) -> Vec<Action> {
        let hello = c.handle(Envelope::RelayHello(RelayHello { features: 0 }), NOW);
        assert!(
            matches!(&hello[..], [Action::Send(Envelope::RelayChallenge(ch))] if ch.nonce == NONCE)
        );
        let binding = SessionBinding {
            handshake_hash: HASH,
            nonce: NONCE,
        };
        let reg = RelayRegister {
            identity: key(&client()).0,
            auth_signature: auth::sign_register(&client(), &binding, &RELAY.0),
            capabilities: RelayConfig::default().capabilities(),
        };
        c.handle(Envelope::RelayRegister(reg), NOW)
    }

    fn store(to: [u8; 32], id: u64, blob: &[u8]) -> StoreMessage {
        StoreMessage {
            recipient: to,
            encrypted_blob: blob.to_vec(),
            sender_signature: auth::sign_store(&client(), &to, id, blob),
            message_id: id,
        }
    }

    #[test]
    fn punch_messages_are_forwarded_by_open_relays_only() {
        let punch = |peer: [u8; 32], len: usize| {
            Envelope::PunchRelay(PunchRelay {
                peer,
                body: vec![0; len],
            })
        };
        let me = key(&client());
        let mut c = conn(RelayMode::Open, RelayConfig::default());
        register(&mut c);
        let a = c.handle(punch([9; 32], 10), NOW);
        assert!(matches!(
            &a[..],
            [Action::ForwardPunch { to, env: Envelope::PunchRelay(p) }]
                if *to == IdentityKey([9; 32]) && p.peer == me.0 && p.body.len() == 10
        ));
        let a = c.handle(
            punch([9; 32], crate::transport::punch::MAX_MESSAGE_LEN + 1),
            NOW,
        );
        assert!(matches!(
            &a[..],
            [Action::Refuse {
                code: RelayErrorCode::TooLarge,
                ..
            }]
        ));
        let a = c.handle(punch(me.0, 10), NOW);
        assert!(matches!(
            &a[..],
            [Action::Refuse {
                code: RelayErrorCode::UnexpectedMessage,
                ..
            }]
        ));
        let mut i = conn(
            RelayMode::Integrated { owner: RELAY },
            RelayConfig::default(),
        );
        register(&mut i);
        let a = i.handle(punch([9; 32], 10), NOW);
        assert!(matches!(
            &a[..],
            [Action::Refuse {
                code: RelayErrorCode::UnexpectedMessage,
                ..
            }]
        ));
        // Before registration: refused and closed like any request.
        let mut u = conn(RelayMode::Open, RelayConfig::default());
        let a = u.handle(punch([9; 32], 10), NOW);
        assert!(matches!(&a[..], [Action::Refuse { .. }, Action::Close(_)]));
    }

    #[test]
    fn hello_register_then_kept_confirmations() {
        let mut c = conn(RelayMode::Open, RelayConfig::default());
        let a = register(&mut c);
        let who = key(&client());
        assert!(matches!(
            &a[..],
            [
                Action::Register { who: w },
                Action::Send(Envelope::RelayRegistered(_)),
                Action::SendKeptConfirmations { who: k, max: KEPT_CONFIRMATIONS_ON_REGISTER },
            ] if *w == who && *k == who
        ));
        assert_eq!(c.registered(), Some(who));
        assert!(c.takes_store_batches());
    }

    #[test]
    fn anything_before_hello_or_registration_closes() {
        let mut c = conn(RelayMode::Open, RelayConfig::default());
        let a = c.handle(Envelope::StoreMessage(store([1; 32], 1, b"x")), NOW);
        assert!(matches!(
            &a[..],
            [
                Action::Refuse {
                    code: RelayErrorCode::UnexpectedMessage,
                    ..
                },
                Action::Close(_)
            ]
        ));
        let mut c = conn(RelayMode::Open, RelayConfig::default());
        c.handle(Envelope::RelayHello(RelayHello { features: 0 }), NOW);
        let a = c.handle_stores(vec![store([1; 32], 1, b"x"), store([1; 32], 2, b"y")], NOW);
        assert!(matches!(
            &a[..],
            [
                Action::Refuse {
                    code: RelayErrorCode::NotRegistered,
                    ..
                },
                Action::Close(_)
            ]
        ));
        assert_eq!(c.registered(), None);
    }

    #[test]
    fn a_registration_for_another_session_is_refused_and_closes() {
        let mut c = conn(RelayMode::Open, RelayConfig::default());
        c.handle(Envelope::RelayHello(RelayHello { features: 0 }), NOW);
        let other = SessionBinding {
            handshake_hash: [9; 32],
            nonce: NONCE,
        };
        let reg = RelayRegister {
            identity: key(&client()).0,
            auth_signature: auth::sign_register(&client(), &other, &RELAY.0),
            capabilities: RelayConfig::default().capabilities(),
        };
        let a = c.handle(Envelope::RelayRegister(reg), NOW);
        assert!(matches!(
            &a[..],
            [
                Action::Refuse {
                    code: RelayErrorCode::Unauthorized,
                    ..
                },
                Action::Close(_)
            ]
        ));
    }

    #[test]
    fn stores_are_checked_one_by_one_and_verified_in_a_batch() {
        let owner = IdentityKey([1; 32]);
        let policy = RelayConfig {
            max_message_size: 4,
            ..RelayConfig::default()
        };
        let mut c = conn(RelayMode::Integrated { owner }, policy);
        register(&mut c);
        let mut forged = store(owner.0, 4, b"ok");
        forged.sender_signature[0] ^= 1;
        let a = c.handle_stores(
            vec![
                store(owner.0, 1, b"ok"),
                store([2; 32], 2, b"ok"),
                store(owner.0, 3, b"too big"),
                forged,
                store(owner.0, 5, b"ok"),
            ],
            NOW,
        );
        let code = |id| {
            a.iter().find_map(|x| match x {
                Action::StoreRefused { message_id, code } if *message_id == id => Some(*code),
                _ => None,
            })
        };
        assert!(matches!(a[0], Action::SignaturesBatched(3)));
        assert_eq!(code(2), Some(RelayErrorCode::Unauthorized));
        assert_eq!(code(3), Some(RelayErrorCode::TooLarge));
        assert_eq!(code(4), Some(RelayErrorCode::BadSignature));
        let stored: Vec<u64> = a
            .iter()
            .filter_map(|x| match x {
                Action::Store { message, now, .. } => {
                    assert_eq!(*now, NOW.wall);
                    Some(message.message_id)
                }
                _ => None,
            })
            .collect();
        assert_eq!(stored, vec![1, 5]);
    }

    #[test]
    fn retrieve_is_owner_only_signed_and_clamped() {
        let me = key(&client());
        let binding = SessionBinding {
            handshake_hash: HASH,
            nonce: NONCE,
        };
        let retrieve = |limit| {
            let mut r = RetrieveMessages {
                identity: me.0,
                auth_signature: [0; 64],
                since: None,
                after: None,
                limit,
            };
            auth::sign_retrieve(&client(), &binding, &mut r);
            Envelope::RetrieveMessages(r)
        };
        let mut c = conn(RelayMode::Open, RelayConfig::default());
        register(&mut c);
        let max = RelayConfig::default().batch_messages as usize;
        for (asked, got) in [(0, max), (3, 3), (u32::MAX, max)] {
            let a = c.handle(retrieve(asked), NOW);
            assert!(
                matches!(&a[..], [Action::Retrieve { who, limit, .. }] if *who == me && *limit == got),
                "{a:?}"
            );
        }
        // At an integrated relay only the owner retrieves.
        let mut c = conn(
            RelayMode::Integrated {
                owner: IdentityKey([1; 32]),
            },
            RelayConfig::default(),
        );
        register(&mut c);
        let a = c.handle(retrieve(0), NOW);
        assert!(matches!(
            &a[..],
            [Action::Refuse {
                code: RelayErrorCode::Unauthorized,
                ..
            }]
        ));
    }

    #[test]
    fn rate_limit_spares_the_integrated_owner() {
        let policy = RelayConfig {
            rate_per_sec: 0,
            rate_burst: 2,
            ..RelayConfig::default()
        };
        let me = key(&client());
        // A stranger: registration takes one token, then one more request, then refused.
        let mut c = conn(RelayMode::Open, policy.clone());
        register(&mut c);
        let ack = Envelope::DeliveryConfirmation(DeliveryConfirmation {
            message_id: 1,
            sender: [2; 32],
            delivered_to: [3; 32],
            timestamp: Timestamp(1),
            signature: [0; 64],
        });
        let a = c.handle(ack.clone(), NOW);
        assert!(matches!(
            &a[..],
            [Action::Refuse {
                code: RelayErrorCode::Unauthorized,
                ..
            }]
        ));
        let a = c.handle(ack.clone(), NOW);
        assert!(matches!(
            &a[..],
            [Action::Refuse {
                code: RelayErrorCode::RateLimited,
                ..
            }]
        ));
        // The owner of an integrated relay is never limited.
        let mut c = conn(RelayMode::Integrated { owner: me }, policy);
        register(&mut c);
        for _ in 0..5 {
            let a = c.handle(ack.clone(), NOW);
            assert!(matches!(
                &a[..],
                [Action::Refuse {
                    code: RelayErrorCode::Unauthorized,
                    ..
                }]
            ));
        }
    }

    #[test]
    fn client_registration_meets_the_relay_core() {
        let mut relay = conn(RelayMode::Open, RelayConfig::default());
        let (mut registration, hello) =
            ClientRegistration::start(client(), RELAY, HASH, RelayConfig::default().capabilities());
        let mut to_relay = hello;
        for _ in 0..3 {
            let answer = relay.handle(to_relay, NOW);
            let reply = answer
                .into_iter()
                .find_map(|a| match a {
                    Action::Send(e) => Some(e),
                    _ => None,
                })
                .unwrap();
            match registration.handle(reply).unwrap() {
                RegistrationStep::Send(e) => to_relay = e,
                RegistrationStep::Registered { binding, .. } => {
                    assert_eq!(binding.nonce, NONCE);
                    assert_eq!(relay.registered(), Some(key(&client())));
                    return;
                }
            }
        }
        panic!("registration did not finish");
    }

    #[test]
    fn client_registration_rejects_out_of_order_replies() {
        let caps = RelayConfig::default().capabilities();
        let (mut c, _) = ClientRegistration::start(client(), RELAY, HASH, caps.clone());
        assert_eq!(
            c.handle(Envelope::RelayRegistered(RelayRegistered {
                capabilities: caps
            })),
            Err(RegistrationFailure::Protocol("expected RELAY_CHALLENGE"))
        );
        assert!(matches!(
            c.handle(error_envelope(RelayErrorCode::RateLimited, "slow down")),
            Err(RegistrationFailure::Refused { raw: 0x2006, .. })
        ));
    }
}
