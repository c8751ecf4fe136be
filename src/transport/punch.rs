//! Hole punching (DCUtR-style), coordinated through a relay both peers are registered at: the
//! messages, their signatures, the candidate filter, one attempt's state machine and the
//! per-contact policy. No I/O, no clock: every function takes `now_ms` (a monotonic clock in
//! milliseconds) and returns what to send, when to dial and what to dial.
//!
//! Flow of one attempt (docs/PROTOCOL.md, "Hole punching"):
//! 1. The initiator sends `CONNECT` (its candidates and NAT mapping guess) to the responder
//!    through the relay (relay kind `PUNCH_RELAY`).
//! 2. The responder answers `CONNECT_REPLY` with its own candidates and guess; if either guess
//!    is endpoint-dependent nobody dials (a symmetric NAT cannot be punched).
//! 3. The initiator measures the round trip of 1–2 (`rtt`), sends `SYNC` and dials the
//!    responder's candidates at `now + rtt / 2`; the responder dials the initiator's candidates
//!    as soon as `SYNC` arrives. Both dial from their one QUIC endpoint, so the first packets
//!    open the NAT mappings the connection then uses.
//! 4. The first dial whose QUIC + Noise handshake proves the expected identity wins; with no
//!    winner within [`DIAL_WINDOW_MS`] the initiator retries from 1, at most [`MAX_TRIES`] times.
//!
//! Limits and invariants: a message carries at most [`MAX_CANDIDATES`] addresses; at most
//! [`MAX_DIAL`] of them are dialled per attempt, and never an unspecified, multicast,
//! broadcast or loopback address or port 0 ([`filter_candidates`]); messages from a peer are admitted at
//! most [`INBOUND_PER_MINUTE`] per minute; a contact is punched at most
//! [`MAX_ATTEMPTS_PER_HOUR`] times an hour, with exponential back-off between failed attempts,
//! and not at all for [`SYMMETRIC_PAUSE_MS`] after either side reported an endpoint-dependent
//! mapping ([`Policy`]). Every message is signed by its sender's identity key (context
//! `SREMP-1 punch`) and names sender, recipient and a timestamp, so a relay can neither forge
//! nor redirect candidates, and a replay older than [`MAX_AGE_MS`] is refused.
//!
//! Not here: sockets, the relay connection, the QUIC dial itself (the node's shell,
//! `node::punch`), and choosing a path (`node::delivery`).

use crate::sig::{self, SigContext};
use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};

/// Most candidate addresses in one message.
pub const MAX_CANDIDATES: usize = 8;
/// Most addresses dialled per attempt (candidates could aim our packets at third parties).
pub const MAX_DIAL: usize = 4;
/// Tries (CONNECT exchanges) per attempt.
pub const MAX_TRIES: u8 = 3;
/// How long the initiator waits for `CONNECT_REPLY`, in milliseconds.
pub const REPLY_TIMEOUT_MS: u64 = 3_000;
/// How long a dial may take before the try counts as failed, in milliseconds.
pub const DIAL_WINDOW_MS: u64 = 5_000;
/// Longest wait before dialling (half the measured round trip, capped), in milliseconds.
pub const MAX_SYNC_DELAY_MS: u64 = 1_000;
/// Smallest initial round-trip estimate given to a punch dial, in milliseconds.
pub const MIN_DIAL_RTT_MS: u64 = 10;
/// Largest initial round-trip estimate given to a punch dial, in milliseconds: QUIC's own
/// default (RFC 9002 `kInitialRtt`), used when nothing was measured.
pub const MAX_DIAL_RTT_MS: u64 = 333;
/// Messages of an attempt remembered to drop the copy that arrives through a second relay.
const SEEN: usize = 8;
/// A message whose timestamp is further than this from our clock is refused, in milliseconds.
pub const MAX_AGE_MS: u64 = 60_000;
/// Punch messages admitted from one peer per minute.
pub const INBOUND_PER_MINUTE: usize = 12;
/// Attempts started for one contact per hour.
pub const MAX_ATTEMPTS_PER_HOUR: usize = 12;
/// First back-off after a failed attempt, in milliseconds (doubles up to [`MAX_BACKOFF_MS`]).
pub const INITIAL_BACKOFF_MS: u64 = 2_000;
/// Longest back-off between attempts, in milliseconds.
pub const MAX_BACKOFF_MS: u64 = 120_000;
/// No punching with a contact for this long after either side reported an endpoint-dependent
/// mapping, in milliseconds.
pub const SYMMETRIC_PAUSE_MS: u64 = 3_600_000;
/// Peers whose punch history is remembered (the oldest is forgotten first).
pub const MAX_PEERS: usize = 1024;
/// Largest encoded punch message accepted, in bytes.
pub const MAX_MESSAGE_LEN: usize = 1024;

const HOUR_MS: u64 = 3_600_000;
const MINUTE_MS: u64 = 60_000;

/// What a punch message is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PunchKind {
    /// Initiator → responder: my candidates.
    Connect = 1,
    /// Responder → initiator: mine.
    ConnectReply = 2,
    /// Initiator → responder: dial now.
    Sync = 3,
}

impl PunchKind {
    fn from_u8(v: u8) -> Option<PunchKind> {
        match v {
            1 => Some(PunchKind::Connect),
            2 => Some(PunchKind::ConnectReply),
            3 => Some(PunchKind::Sync),
            _ => None,
        }
    }
}

/// The NAT mapping guess carried in a message (`node::quic::NatMapping` on the wire).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Mapping {
    /// Fewer than two observations.
    Unknown = 0,
    /// Every relay saw the same address and port.
    EndpointIndependent = 1,
    /// Relays saw different ports: a symmetric NAT.
    EndpointDependent = 2,
}

impl Mapping {
    fn from_u8(v: u8) -> Mapping {
        match v {
            1 => Mapping::EndpointIndependent,
            2 => Mapping::EndpointDependent,
            _ => Mapping::Unknown,
        }
    }
}

/// One candidate on the wire: `[ip: bin(4 | 16), port: u16]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireCandidate {
    /// IPv4 (4 bytes) or IPv6 (16 bytes), network order.
    #[serde(with = "serde_bytes")]
    pub ip: Vec<u8>,
    /// UDP port.
    pub port: u16,
}

impl WireCandidate {
    fn new(a: SocketAddr) -> Self {
        let ip = match a.ip().to_canonical() {
            IpAddr::V4(v4) => v4.octets().to_vec(),
            IpAddr::V6(v6) => v6.octets().to_vec(),
        };
        WireCandidate { ip, port: a.port() }
    }

    fn addr(&self) -> Option<SocketAddr> {
        let ip: IpAddr = if let Ok(b) = <[u8; 4]>::try_from(self.ip.as_slice()) {
            b.into()
        } else if let Ok(b) = <[u8; 16]>::try_from(self.ip.as_slice()) {
            b.into()
        } else {
            return None;
        };
        Some(SocketAddr::new(ip, self.port))
    }
}

/// A signed punch message, the `body` of a `PUNCH_RELAY` envelope, MessagePack
/// `[kind, attempt, sender, recipient, timestamp, mapping, candidates, signature]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PunchMessage {
    /// A [`PunchKind`] value.
    pub kind: u8,
    /// The attempt id (chosen by the initiator, random).
    pub attempt: u64,
    /// The signer's identity key.
    #[serde(with = "crate::wire::bytes::fixed")]
    pub sender: [u8; 32],
    /// Whom it is for.
    #[serde(with = "crate::wire::bytes::fixed")]
    pub recipient: [u8; 32],
    /// When it was made (ms since the epoch, the sender's clock).
    pub timestamp: u64,
    /// A [`Mapping`] value.
    pub mapping: u8,
    /// Candidate addresses (at most [`MAX_CANDIDATES`]).
    pub candidates: Vec<WireCandidate>,
    /// Signature (context `SREMP-1 punch`) over [`PunchMessage::signed_bytes`].
    #[serde(with = "crate::wire::bytes::fixed")]
    pub signature: [u8; 64],
}

/// Why a punch message was refused. The peer's fault: the message is dropped, nothing else.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PunchError {
    /// Not a punch message (bad MessagePack, unknown kind, bad address length, trailing bytes).
    #[error("malformed punch message: {0}")]
    Malformed(&'static str),
    /// Too large.
    #[error("punch message of {len} bytes (max {max})")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// More candidates than allowed.
    #[error("{got} candidates (max {max})")]
    TooManyCandidates {
        /// How many.
        got: usize,
        /// The limit.
        max: usize,
    },
    /// The signature does not verify for the sender.
    #[error("bad punch signature")]
    BadSignature,
    /// Not for us, or not from whom the relay says.
    #[error("punch message for someone else or from someone else")]
    Misaddressed,
    /// Its timestamp is too far from our clock.
    #[error("punch message {skew_ms} ms away from our clock (max {max_ms})")]
    Stale {
        /// Distance from our clock.
        skew_ms: u64,
        /// The limit.
        max_ms: u64,
    },
    /// The peer sent too many punch messages recently.
    #[error("too many punch messages from this peer")]
    RateLimited,
}

impl PunchMessage {
    /// The bytes signed (after the context prefix): `kind (1) || attempt (8, BE) || sender (32)
    /// || recipient (32) || timestamp (8, BE) || mapping (1) || count (1) || for each candidate:
    /// ip length (1: 4 or 16) || ip || port (2, BE)`.
    pub fn signed_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(83 + self.candidates.len() * 19);
        b.push(self.kind);
        b.extend_from_slice(&self.attempt.to_be_bytes());
        b.extend_from_slice(&self.sender);
        b.extend_from_slice(&self.recipient);
        b.extend_from_slice(&self.timestamp.to_be_bytes());
        b.push(self.mapping);
        b.push(u8::try_from(self.candidates.len()).unwrap_or(u8::MAX));
        for c in &self.candidates {
            b.push(u8::try_from(c.ip.len()).unwrap_or(u8::MAX));
            b.extend_from_slice(&c.ip);
            b.extend_from_slice(&c.port.to_be_bytes());
        }
        b
    }

    /// Makes and signs a message. At most [`MAX_CANDIDATES`] candidates are kept.
    #[allow(clippy::too_many_arguments)]
    pub fn sign(
        key: &SigningKey,
        kind: PunchKind,
        attempt: u64,
        recipient: [u8; 32],
        timestamp: u64,
        mapping: Mapping,
        candidates: &[SocketAddr],
    ) -> PunchMessage {
        let mut m = PunchMessage {
            kind: kind as u8,
            attempt,
            sender: key.verifying_key().to_bytes(),
            recipient,
            timestamp,
            mapping: mapping as u8,
            candidates: candidates
                .iter()
                .take(MAX_CANDIDATES)
                .map(|a| WireCandidate::new(*a))
                .collect(),
            signature: [0; 64],
        };
        m.signature = sig::sign(key, SigContext::Punch, &[&m.signed_bytes()]);
        m
    }

    /// The MessagePack encoding.
    pub fn encode(&self) -> Vec<u8> {
        crate::wire::msgpack::encode(self)
    }

    /// Decodes and checks a message the relay says came from `from`, for `me`, at wall-clock
    /// `now_wall_ms`: size, shape, addressing, age, then the signature.
    pub fn open(
        bytes: &[u8],
        from: &[u8; 32],
        me: &[u8; 32],
        now_wall_ms: u64,
    ) -> Result<Punch, PunchError> {
        if bytes.len() > MAX_MESSAGE_LEN {
            return Err(PunchError::TooLarge {
                len: bytes.len(),
                max: MAX_MESSAGE_LEN,
            });
        }
        let m: PunchMessage = crate::wire::msgpack::decode(bytes)
            .map_err(|_| PunchError::Malformed("not a punch message"))?;
        let kind = PunchKind::from_u8(m.kind).ok_or(PunchError::Malformed("unknown kind"))?;
        if m.candidates.len() > MAX_CANDIDATES {
            return Err(PunchError::TooManyCandidates {
                got: m.candidates.len(),
                max: MAX_CANDIDATES,
            });
        }
        let mut candidates = Vec::with_capacity(m.candidates.len());
        for c in &m.candidates {
            candidates.push(c.addr().ok_or(PunchError::Malformed("address length"))?);
        }
        if &m.sender != from || &m.recipient != me {
            return Err(PunchError::Misaddressed);
        }
        let skew_ms = now_wall_ms.abs_diff(m.timestamp);
        if skew_ms > MAX_AGE_MS {
            return Err(PunchError::Stale {
                skew_ms,
                max_ms: MAX_AGE_MS,
            });
        }
        let key = sig::verifying_key(&m.sender).map_err(|_| PunchError::BadSignature)?;
        sig::verify(&key, SigContext::Punch, &[&m.signed_bytes()], &m.signature)
            .map_err(|_| PunchError::BadSignature)?;
        Ok(Punch {
            kind,
            attempt: m.attempt,
            peer: m.sender,
            timestamp: m.timestamp,
            mapping: Mapping::from_u8(m.mapping),
            candidates,
        })
    }
}

/// A verified punch message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Punch {
    /// What it is.
    pub kind: PunchKind,
    /// The attempt.
    pub attempt: u64,
    /// Its sender.
    pub peer: [u8; 32],
    /// When its sender made it (its clock, ms since the epoch). One message sent through two
    /// relays arrives twice with the same timestamp; a retry is a new message.
    pub timestamp: u64,
    /// The sender's mapping guess.
    pub mapping: Mapping,
    /// The sender's candidates, unfiltered.
    pub candidates: Vec<SocketAddr>,
}

/// True for an address a node may send punch packets to: not unspecified, multicast,
/// broadcast or loopback (a peer must not aim our packets at our own host's services), and not
/// port 0.
pub fn dialable(a: &SocketAddr) -> bool {
    if a.port() == 0 {
        return false;
    }
    match a.ip().to_canonical() {
        IpAddr::V4(v4) => {
            !(v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast() || v4.is_loopback())
        }
        IpAddr::V6(v6) => !(v6.is_unspecified() || v6.is_multicast() || v6.is_loopback()),
    }
}

/// The addresses to dial from a peer's candidates: dialable ones, without repeats, in the
/// peer's order, at most `max`.
pub fn filter_candidates(addrs: &[SocketAddr], max: usize) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for a in addrs {
        if out.len() >= max {
            break;
        }
        let a = SocketAddr::new(a.ip().to_canonical(), a.port());
        if dialable(&a) && !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

/// Why an attempt ended without a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Either side's mapping depends on the destination.
    Symmetric,
    /// The peer never answered `CONNECT`.
    NoReply,
    /// No dial succeeded in any try.
    NoConnection,
    /// The peer offered no dialable candidate.
    NoCandidates,
}

impl Failure {
    /// Stable lower-case name (logs, status).
    pub fn name(self) -> &'static str {
        match self {
            Failure::Symmetric => "endpoint-dependent mapping",
            Failure::NoReply => "no reply",
            Failure::NoConnection => "no connection",
            Failure::NoCandidates => "no candidates",
        }
    }
}

/// What the shell does next for an attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Send this message (kind, with our candidates when it carries them) to the peer.
    Send(PunchKind),
    /// Dial these addresses at `at_ms` (monotonic), all at once, each until the attempt ends.
    /// An address still being dialled from an earlier step is not dialled again.
    Dial {
        /// When.
        at_ms: u64,
        /// Where (filtered, at most [`MAX_DIAL`]).
        addrs: Vec<SocketAddr>,
        /// The QUIC initial round-trip estimate for these dials, in milliseconds: the measured
        /// round trip through the relay, clamped to [`MIN_DIAL_RTT_MS`]..=[`MAX_DIAL_RTT_MS`].
        /// One side's first packet is always dropped by the other side's NAT (it arrives
        /// before that side has sent anything), so the dial only succeeds with QUIC's first
        /// retransmission, which comes after about three times this estimate.
        initial_rtt_ms: u64,
    },
    /// The attempt is over without a connection.
    Failed(Failure),
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Phase {
    /// Initiator: CONNECT sent at `sent_ms`.
    AwaitReply {
        sent_ms: u64,
    },
    /// Responder: CONNECT_REPLY sent at `sent_ms`; waiting for SYNC.
    AwaitSync {
        sent_ms: u64,
        until_ms: u64,
    },
    /// Dialling until `until_ms`.
    Dialling {
        until_ms: u64,
    },
    Done,
}

/// One attempt, from either side. See the module docs for the flow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attempt {
    /// The attempt id.
    pub id: u64,
    /// True on the side that sent `CONNECT`.
    pub initiator: bool,
    tries: u8,
    mapping: Mapping,
    remote: Vec<SocketAddr>,
    phase: Phase,
    failure: Option<Failure>,
    /// `(kind, timestamp)` of the last messages handled, newest last (at most [`SEEN`]).
    seen: VecDeque<(PunchKind, u64)>,
    /// The measured round trip through the relay: CONNECT → CONNECT_REPLY on the initiator,
    /// CONNECT_REPLY → SYNC on the responder.
    pub rtt_ms: Option<u64>,
}

/// The initial round-trip estimate for a dial after a measured round trip of `rtt_ms`.
pub fn dial_rtt_ms(rtt_ms: Option<u64>) -> u64 {
    rtt_ms.map_or(MAX_DIAL_RTT_MS, |r| r.clamp(MIN_DIAL_RTT_MS, MAX_DIAL_RTT_MS))
}

impl Attempt {
    /// The initiator's attempt: send `CONNECT` now.
    pub fn initiate(id: u64, mapping: Mapping, now_ms: u64) -> (Attempt, Step) {
        let a = Attempt {
            id,
            initiator: true,
            tries: 1,
            mapping,
            remote: Vec::new(),
            phase: Phase::AwaitReply { sent_ms: now_ms },
            failure: None,
            seen: VecDeque::new(),
            rtt_ms: None,
        };
        (a, Step::Send(PunchKind::Connect))
    }

    /// The responder's attempt for a verified `CONNECT`: answer `CONNECT_REPLY` (which tells
    /// the initiator our mapping, so a symmetric side stops both), then wait for `SYNC`.
    pub fn respond(connect: &Punch, mapping: Mapping, now_ms: u64) -> (Attempt, Vec<Step>) {
        let mut a = Attempt {
            id: connect.attempt,
            initiator: false,
            tries: 1,
            mapping,
            remote: Vec::new(),
            phase: Phase::Done,
            failure: None,
            seen: VecDeque::new(),
            rtt_ms: None,
        };
        a.first_time(connect);
        let steps = a.answer(connect, now_ms);
        (a, steps)
    }

    /// Responder: (re)answers a `CONNECT` (a retry of the initiator restarts the wait).
    fn answer(&mut self, connect: &Punch, now_ms: u64) -> Vec<Step> {
        self.remote = filter_candidates(&connect.candidates, MAX_DIAL);
        self.phase = Phase::AwaitSync {
            sent_ms: now_ms,
            until_ms: now_ms + REPLY_TIMEOUT_MS + DIAL_WINDOW_MS,
        };
        let mut steps = vec![Step::Send(PunchKind::ConnectReply)];
        if self.mapping == Mapping::EndpointDependent
            || connect.mapping == Mapping::EndpointDependent
        {
            steps.push(self.fail(Failure::Symmetric));
        } else if self.remote.is_empty() {
            steps.push(self.fail(Failure::NoCandidates));
        }
        steps
    }

    fn fail(&mut self, f: Failure) -> Step {
        self.phase = Phase::Done;
        self.failure = Some(f);
        Step::Failed(f)
    }

    /// Why the attempt failed, once it has.
    pub fn failure(&self) -> Option<Failure> {
        self.failure
    }

    /// True once the attempt is over.
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Tries used so far.
    pub fn tries(&self) -> u8 {
        self.tries
    }

    /// True the first time `p` is seen (remembers it); false for a copy of a message already
    /// handled, e.g. the same `CONNECT` or `SYNC` arriving through the second relay.
    fn first_time(&mut self, p: &Punch) -> bool {
        let key = (p.kind, p.timestamp);
        if self.seen.contains(&key) {
            return false;
        }
        if self.seen.len() >= SEEN {
            self.seen.pop_front();
        }
        self.seen.push_back(key);
        true
    }

    /// Handles a verified message of this attempt (`p.attempt == self.id`). A copy of a
    /// message already handled (the same message relayed twice) does nothing: it must not
    /// restart a dial that is under way.
    pub fn handle(&mut self, p: &Punch, now_ms: u64) -> Vec<Step> {
        if !self.first_time(p) {
            return Vec::new();
        }
        match (&self.phase, p.kind) {
            (Phase::AwaitReply { sent_ms }, PunchKind::ConnectReply) if self.initiator => {
                let rtt = now_ms.saturating_sub(*sent_ms);
                self.rtt_ms = Some(rtt);
                if self.mapping == Mapping::EndpointDependent
                    || p.mapping == Mapping::EndpointDependent
                {
                    return vec![self.fail(Failure::Symmetric)];
                }
                self.remote = filter_candidates(&p.candidates, MAX_DIAL);
                if self.remote.is_empty() {
                    return vec![self.fail(Failure::NoCandidates)];
                }
                // The responder dials when SYNC arrives, half a round trip from now.
                let at_ms = now_ms + (rtt / 2).min(MAX_SYNC_DELAY_MS);
                self.phase = Phase::Dialling {
                    until_ms: at_ms + DIAL_WINDOW_MS,
                };
                vec![
                    Step::Send(PunchKind::Sync),
                    Step::Dial {
                        at_ms,
                        addrs: self.remote.clone(),
                        initial_rtt_ms: dial_rtt_ms(self.rtt_ms),
                    },
                ]
            }
            (Phase::AwaitSync { sent_ms, .. }, PunchKind::Sync) if !self.initiator => {
                self.rtt_ms = Some(now_ms.saturating_sub(*sent_ms));
                self.phase = Phase::Dialling {
                    until_ms: now_ms + DIAL_WINDOW_MS,
                };
                vec![Step::Dial {
                    at_ms: now_ms,
                    addrs: self.remote.clone(),
                    initial_rtt_ms: dial_rtt_ms(self.rtt_ms),
                }]
            }
            (Phase::AwaitSync { .. } | Phase::Dialling { .. }, PunchKind::Connect)
                if !self.initiator =>
            {
                self.answer(p, now_ms)
            }
            // Anything else (a late or repeated message) is ignored.
            _ => Vec::new(),
        }
    }

    /// The next deadline, if any.
    pub fn poll_timeout(&self) -> Option<u64> {
        match self.phase {
            Phase::AwaitReply { sent_ms } => Some(sent_ms + REPLY_TIMEOUT_MS),
            Phase::AwaitSync { until_ms, .. } | Phase::Dialling { until_ms } => Some(until_ms),
            Phase::Done => None,
        }
    }

    /// Time passed: retry (initiator, a new `CONNECT`) or give up.
    pub fn handle_timeout(&mut self, now_ms: u64) -> Vec<Step> {
        let Some(deadline) = self.poll_timeout() else {
            return Vec::new();
        };
        if now_ms < deadline {
            return Vec::new();
        }
        let failure = match self.phase {
            Phase::AwaitReply { .. } => Failure::NoReply,
            _ => Failure::NoConnection,
        };
        if self.initiator && self.tries < MAX_TRIES {
            self.tries += 1;
            self.phase = Phase::AwaitReply { sent_ms: now_ms };
            return vec![Step::Send(PunchKind::Connect)];
        }
        vec![self.fail(failure)]
    }

    /// Every dial of the current try ended without a connection before the dial window did:
    /// the initiator retries at once (a new `CONNECT`) instead of idling to the window's end,
    /// or gives up after [`MAX_TRIES`]; the responder keeps waiting for the initiator's retry.
    pub fn dials_failed(&mut self, now_ms: u64) -> Vec<Step> {
        if !self.initiator || !matches!(self.phase, Phase::Dialling { .. }) {
            return Vec::new();
        }
        if self.tries < MAX_TRIES {
            self.tries += 1;
            self.phase = Phase::AwaitReply { sent_ms: now_ms };
            return vec![Step::Send(PunchKind::Connect)];
        }
        vec![self.fail(Failure::NoConnection)]
    }

    /// A dial proved the peer's identity: the attempt succeeded.
    pub fn connected(&mut self) {
        self.phase = Phase::Done;
    }
}

#[derive(Clone, Debug, Default)]
struct PeerRecord {
    started: VecDeque<u64>,
    inbound: VecDeque<u64>,
    next_ms: u64,
    backoff_ms: u64,
    last_seen_ms: u64,
}

/// Why the policy refused to start an attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Backing off after a failure until this time (monotonic ms).
    BackingOff(u64),
    /// [`MAX_ATTEMPTS_PER_HOUR`] reached.
    HourlyCap,
}

/// Per-contact gating of attempts and admission of inbound messages (bounded to
/// [`MAX_PEERS`] peers).
#[derive(Debug, Default)]
pub struct Policy {
    peers: HashMap<[u8; 32], PeerRecord>,
}

impl Policy {
    fn record(&mut self, peer: &[u8; 32], now_ms: u64) -> &mut PeerRecord {
        if !self.peers.contains_key(peer) && self.peers.len() >= MAX_PEERS {
            let oldest = self
                .peers
                .iter()
                .min_by_key(|(_, r)| r.last_seen_ms)
                .map(|(k, _)| *k);
            if let Some(k) = oldest {
                self.peers.remove(&k);
            }
        }
        let r = self.peers.entry(*peer).or_default();
        r.last_seen_ms = now_ms;
        while r
            .started
            .front()
            .is_some_and(|t| now_ms.saturating_sub(*t) >= HOUR_MS)
        {
            r.started.pop_front();
        }
        while r
            .inbound
            .front()
            .is_some_and(|t| now_ms.saturating_sub(*t) >= MINUTE_MS)
        {
            r.inbound.pop_front();
        }
        r
    }

    /// May an attempt with `peer` start now? If so it is counted.
    pub fn start(&mut self, peer: &[u8; 32], now_ms: u64) -> Result<(), Refusal> {
        let r = self.record(peer, now_ms);
        if now_ms < r.next_ms {
            return Err(Refusal::BackingOff(r.next_ms));
        }
        if r.started.len() >= MAX_ATTEMPTS_PER_HOUR {
            return Err(Refusal::HourlyCap);
        }
        r.started.push_back(now_ms);
        Ok(())
    }

    /// An attempt with `peer` failed: back off (for an hour after a symmetric mapping).
    pub fn failed(&mut self, peer: &[u8; 32], why: Failure, now_ms: u64) {
        let r = self.record(peer, now_ms);
        if why == Failure::Symmetric {
            r.next_ms = now_ms + SYMMETRIC_PAUSE_MS;
            return;
        }
        r.backoff_ms = if r.backoff_ms == 0 {
            INITIAL_BACKOFF_MS
        } else {
            (r.backoff_ms * 2).min(MAX_BACKOFF_MS)
        };
        r.next_ms = now_ms + r.backoff_ms;
    }

    /// An attempt with `peer` succeeded: the back-off starts over.
    pub fn succeeded(&mut self, peer: &[u8; 32], now_ms: u64) {
        let r = self.record(peer, now_ms);
        r.backoff_ms = 0;
        r.next_ms = 0;
    }

    /// Admits one inbound message from `peer` (at most [`INBOUND_PER_MINUTE`] a minute).
    pub fn admit(&mut self, peer: &[u8; 32], now_ms: u64) -> Result<(), PunchError> {
        let r = self.record(peer, now_ms);
        if r.inbound.len() >= INBOUND_PER_MINUTE {
            return Err(PunchError::RateLimited);
        }
        r.inbound.push_back(now_ms);
        Ok(())
    }

    /// Attempts started with `peer` in the last hour.
    pub fn attempts_last_hour(&mut self, peer: &[u8; 32], now_ms: u64) -> usize {
        self.record(peer, now_ms).started.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn open(m: &PunchMessage, me: [u8; 32], now: u64) -> Result<Punch, PunchError> {
        PunchMessage::open(&m.encode(), &m.sender, &me, now)
    }

    #[test]
    fn sign_open_round_trip_and_refusals() {
        let (a, b) = (key(1), key(2));
        let bk = b.verifying_key().to_bytes();
        let m = PunchMessage::sign(
            &a,
            PunchKind::Connect,
            7,
            bk,
            1_000_000,
            Mapping::EndpointIndependent,
            &[addr("198.18.0.2:4000"), addr("[2001:db8::1]:9")],
        );
        let p = open(&m, bk, 1_000_500).unwrap();
        assert_eq!(p.kind, PunchKind::Connect);
        assert_eq!(p.candidates.len(), 2);
        assert_eq!(p.mapping, Mapping::EndpointIndependent);
        // Not for us.
        assert_eq!(open(&m, [9; 32], 1_000_000), Err(PunchError::Misaddressed));
        // Claimed by someone else (the relay says it came from another identity).
        assert_eq!(
            PunchMessage::open(&m.encode(), &[9; 32], &bk, 1_000_000),
            Err(PunchError::Misaddressed)
        );
        // Stale.
        assert!(matches!(
            open(&m, bk, 1_000_000 + MAX_AGE_MS + 1),
            Err(PunchError::Stale { .. })
        ));
        // Tampered candidate.
        let mut t = m.clone();
        t.candidates[0].port = 4001;
        assert_eq!(open(&t, bk, 1_000_000), Err(PunchError::BadSignature));
        // Too many candidates.
        let mut many = m.clone();
        many.candidates = vec![many.candidates[0].clone(); MAX_CANDIDATES + 1];
        assert!(matches!(
            open(&many, bk, 1_000_000),
            Err(PunchError::TooManyCandidates { .. })
        ));
        // Bad address length, garbage, too large.
        let mut bad = m.clone();
        bad.candidates[0].ip = vec![1, 2, 3];
        assert_eq!(
            open(&bad, bk, 1_000_000),
            Err(PunchError::Malformed("address length"))
        );
        assert!(matches!(
            PunchMessage::open(&[0xc1], &m.sender, &bk, 0),
            Err(PunchError::Malformed(_))
        ));
        assert!(matches!(
            PunchMessage::open(&[0u8; MAX_MESSAGE_LEN + 1], &m.sender, &bk, 0),
            Err(PunchError::TooLarge { .. })
        ));
    }

    #[test]
    fn candidates_are_filtered_and_capped() {
        let got = filter_candidates(
            &[
                addr("0.0.0.0:1"),
                addr("224.0.0.1:1"),
                addr("255.255.255.255:1"),
                addr("198.18.0.2:0"),
                addr("[::]:1"),
                addr("[ff02::1]:1"),
                addr("127.0.0.1:1"),
                addr("[::1]:1"),
                addr("198.18.0.2:1"),
                addr("198.18.0.2:1"),
                addr("[::ffff:198.18.0.2]:1"),
                addr("198.18.0.3:1"),
                addr("198.18.0.4:1"),
                addr("198.18.0.5:1"),
                addr("198.18.0.6:1"),
            ],
            MAX_DIAL,
        );
        assert_eq!(
            got,
            vec![
                addr("198.18.0.2:1"),
                addr("198.18.0.3:1"),
                addr("198.18.0.4:1"),
                addr("198.18.0.5:1")
            ]
        );
    }

    /// A new message (each has its own timestamp, as a re-signed one would).
    fn punch(kind: PunchKind, mapping: Mapping, cands: &[SocketAddr]) -> Punch {
        static STAMP: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Punch {
            kind,
            attempt: 5,
            peer: [2; 32],
            timestamp: STAMP.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            mapping,
            candidates: cands.to_vec(),
        }
    }

    #[test]
    fn initiator_and_responder_meet() {
        let (mut i, s) = Attempt::initiate(5, Mapping::EndpointIndependent, 1000);
        assert_eq!(s, Step::Send(PunchKind::Connect));
        let connect = punch(
            PunchKind::Connect,
            Mapping::EndpointIndependent,
            &[addr("198.18.0.2:4000")],
        );
        let (mut r, steps) = Attempt::respond(&connect, Mapping::Unknown, 1010);
        assert_eq!(steps, vec![Step::Send(PunchKind::ConnectReply)]);
        let reply = punch(
            PunchKind::ConnectReply,
            Mapping::Unknown,
            &[addr("198.18.0.3:5000"), addr("0.0.0.0:1")],
        );
        // RTT 40 ms: the initiator dials 20 ms after sending SYNC.
        let steps = i.handle(&reply, 1040);
        assert_eq!(i.rtt_ms, Some(40));
        assert_eq!(
            steps,
            vec![
                Step::Send(PunchKind::Sync),
                Step::Dial {
                    at_ms: 1060,
                    addrs: vec![addr("198.18.0.3:5000")],
                    initial_rtt_ms: 40,
                }
            ]
        );
        let steps = r.handle(&punch(PunchKind::Sync, Mapping::Unknown, &[]), 1060);
        assert_eq!(
            steps,
            // The responder measured CONNECT_REPLY (1010) → SYNC (1060).
            vec![Step::Dial {
                at_ms: 1060,
                addrs: vec![addr("198.18.0.2:4000")],
                initial_rtt_ms: 50,
            }]
        );
        // A repeated SYNC does nothing.
        assert!(r
            .handle(&punch(PunchKind::Sync, Mapping::Unknown, &[]), 1070)
            .is_empty());
        i.connected();
        assert!(i.is_done());
        assert_eq!(i.poll_timeout(), None);
    }

    /// The initiator sends each message through every coordinating relay, so the responder
    /// gets two copies of `CONNECT` and of `SYNC`. A copy must not re-answer or dial again:
    /// a second `Dial` restarted the responder's dial that was under way (the NAT lab's slow
    /// mode: the aborted handshake and a lost try).
    #[test]
    fn a_copy_through_the_second_relay_does_not_dial_again() {
        let connect = punch(
            PunchKind::Connect,
            Mapping::EndpointIndependent,
            &[addr("198.18.0.2:4000")],
        );
        let sync = punch(PunchKind::Sync, Mapping::Unknown, &[]);
        let (mut r, _) = Attempt::respond(&connect, Mapping::EndpointIndependent, 0);
        // Relay 2's copy of CONNECT arrives before relay 1's SYNC.
        assert!(r.handle(&connect, 5).is_empty());
        let dials = |steps: Vec<Step>| {
            steps
                .iter()
                .filter(|s| matches!(s, Step::Dial { .. }))
                .count()
        };
        assert_eq!(dials(r.handle(&sync, 60)), 1);
        // Then the copies of CONNECT and SYNC (in either order): nothing.
        assert!(r.handle(&connect, 62).is_empty());
        assert!(r.handle(&sync, 63).is_empty());
        assert_eq!(r.poll_timeout(), Some(60 + DIAL_WINDOW_MS));
        // The initiator's retry is a new message: answered, and its SYNC dials again.
        let retry = punch(
            PunchKind::Connect,
            Mapping::EndpointIndependent,
            &[addr("198.18.0.2:4000")],
        );
        assert_eq!(
            r.handle(&retry, 5_000),
            vec![Step::Send(PunchKind::ConnectReply)]
        );
        let sync2 = punch(PunchKind::Sync, Mapping::Unknown, &[]);
        assert_eq!(dials(r.handle(&sync2, 5_030)), 1);
        // The initiator ignores a second CONNECT_REPLY the same way.
        let (mut i, _) = Attempt::initiate(5, Mapping::EndpointIndependent, 0);
        let reply = punch(
            PunchKind::ConnectReply,
            Mapping::EndpointIndependent,
            &[addr("198.18.0.3:5000")],
        );
        assert_eq!(dials(i.handle(&reply, 30)), 1);
        assert!(i.handle(&reply, 31).is_empty());
    }

    /// A dial starts with the measured round trip as QUIC's initial estimate, so the
    /// retransmission that gets through once the peer's NAT mapping exists comes after about
    /// 3 × rtt rather than QUIC's default 1 s; nothing measured: the default.
    #[test]
    fn dials_use_the_measured_round_trip() {
        assert_eq!(dial_rtt_ms(None), MAX_DIAL_RTT_MS);
        assert_eq!(dial_rtt_ms(Some(0)), MIN_DIAL_RTT_MS);
        assert_eq!(dial_rtt_ms(Some(120)), 120);
        assert_eq!(dial_rtt_ms(Some(5_000)), MAX_DIAL_RTT_MS);
        let (mut i, _) = Attempt::initiate(5, Mapping::EndpointIndependent, 0);
        let steps = i.handle(
            &punch(
                PunchKind::ConnectReply,
                Mapping::EndpointIndependent,
                &[addr("198.18.0.3:5000")],
            ),
            90,
        );
        assert!(steps.contains(&Step::Dial {
            at_ms: 135,
            addrs: vec![addr("198.18.0.3:5000")],
            initial_rtt_ms: 90
        }));
    }

    /// When every dial of a try has failed the initiator retries at once instead of idling
    /// until the dial window ends; the tries stay bounded.
    #[test]
    fn failed_dials_retry_at_once_and_stay_bounded() {
        let (mut i, _) = Attempt::initiate(5, Mapping::EndpointIndependent, 0);
        let mut now = 0;
        let mut connects = 1;
        let mut end = None;
        for _ in 0..10 {
            now += 40;
            let reply = punch(
                PunchKind::ConnectReply,
                Mapping::EndpointIndependent,
                &[addr("198.18.0.3:5000")],
            );
            assert!(i
                .handle(&reply, now)
                .iter()
                .any(|s| matches!(s, Step::Dial { .. })));
            now += 100;
            assert!(now < i.poll_timeout().unwrap_or(0), "well inside the window");
            for s in i.dials_failed(now) {
                match s {
                    Step::Send(PunchKind::Connect) => connects += 1,
                    Step::Failed(f) => end = Some(f),
                    other => panic!("{other:?}"),
                }
            }
            if i.is_done() {
                break;
            }
        }
        assert_eq!(connects, MAX_TRIES as usize);
        assert_eq!(end, Some(Failure::NoConnection));
        assert!(i.dials_failed(now + 1).is_empty());
        // The responder has nothing to do: it waits for the initiator's retry.
        let (mut r, _) = Attempt::respond(
            &punch(
                PunchKind::Connect,
                Mapping::EndpointIndependent,
                &[addr("198.18.0.2:4000")],
            ),
            Mapping::EndpointIndependent,
            0,
        );
        r.handle(&punch(PunchKind::Sync, Mapping::Unknown, &[]), 10);
        assert!(r.dials_failed(20).is_empty());
        assert!(!r.is_done());
    }

    #[test]
    fn symmetric_on_either_side_stops_both() {
        let (mut i, _) = Attempt::initiate(5, Mapping::EndpointIndependent, 0);
        let steps = i.handle(
            &punch(
                PunchKind::ConnectReply,
                Mapping::EndpointDependent,
                &[addr("198.18.0.3:1")],
            ),
            10,
        );
        assert_eq!(steps, vec![Step::Failed(Failure::Symmetric)]);
        let (r, steps) = Attempt::respond(
            &punch(
                PunchKind::Connect,
                Mapping::EndpointIndependent,
                &[addr("198.18.0.2:1")],
            ),
            Mapping::EndpointDependent,
            0,
        );
        assert!(r.is_done());
        assert_eq!(
            steps,
            vec![
                Step::Send(PunchKind::ConnectReply),
                Step::Failed(Failure::Symmetric)
            ]
        );
    }

    #[test]
    fn retries_are_bounded() {
        let (mut i, _) = Attempt::initiate(5, Mapping::Unknown, 0);
        let mut now = 0;
        let mut sends = 1;
        let mut end = None;
        for _ in 0..10 {
            now = i.poll_timeout().unwrap_or(now);
            for s in i.handle_timeout(now) {
                match s {
                    Step::Send(PunchKind::Connect) => sends += 1,
                    Step::Failed(f) => end = Some(f),
                    other => panic!("{other:?}"),
                }
            }
            if i.is_done() {
                break;
            }
        }
        assert_eq!(sends, MAX_TRIES as usize);
        assert_eq!(end, Some(Failure::NoReply));
        // Too early: nothing.
        let (mut j, _) = Attempt::initiate(6, Mapping::Unknown, 0);
        assert!(j.handle_timeout(REPLY_TIMEOUT_MS - 1).is_empty());
    }

    #[test]
    fn policy_backs_off_caps_and_pauses_on_symmetric() {
        let mut p = Policy::default();
        let peer = [3; 32];
        assert_eq!(p.start(&peer, 0), Ok(()));
        p.failed(&peer, Failure::NoConnection, 0);
        assert_eq!(
            p.start(&peer, 1),
            Err(Refusal::BackingOff(INITIAL_BACKOFF_MS))
        );
        assert_eq!(p.start(&peer, INITIAL_BACKOFF_MS), Ok(()));
        p.failed(&peer, Failure::NoConnection, INITIAL_BACKOFF_MS);
        assert_eq!(
            p.start(&peer, INITIAL_BACKOFF_MS + 1),
            Err(Refusal::BackingOff(3 * INITIAL_BACKOFF_MS))
        );
        p.succeeded(&peer, 10_000);
        let mut now = 10_000;
        while p.start(&peer, now).is_ok() {
            now += 1;
        }
        assert_eq!(p.start(&peer, now), Err(Refusal::HourlyCap));
        assert_eq!(p.attempts_last_hour(&peer, now), MAX_ATTEMPTS_PER_HOUR);
        // An hour later the cap is free again.
        assert_eq!(p.start(&peer, HOUR_MS + now), Ok(()));
        p.failed(&peer, Failure::Symmetric, HOUR_MS + now);
        assert!(matches!(
            p.start(&peer, HOUR_MS + now + 1000),
            Err(Refusal::BackingOff(_))
        ));
    }

    #[test]
    fn inbound_messages_are_rate_limited_and_peers_bounded() {
        let mut p = Policy::default();
        for i in 0..INBOUND_PER_MINUTE {
            assert_eq!(p.admit(&[1; 32], i as u64), Ok(()));
        }
        assert_eq!(p.admit(&[1; 32], 100), Err(PunchError::RateLimited));
        assert_eq!(p.admit(&[1; 32], MINUTE_MS + 20), Ok(()));
        for i in 0..(MAX_PEERS as u64 + 10) {
            let mut k = [0u8; 32];
            k[..8].copy_from_slice(&i.to_be_bytes());
            let _ = p.admit(&k, i);
        }
        assert!(p.peers.len() <= MAX_PEERS);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = PunchMessage::open(&bytes, &[1; 32], &[2; 32], 0);
        }
    }
}
