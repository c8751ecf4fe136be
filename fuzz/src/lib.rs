//! Fuzz entry points for every SREMP decoder and for ratchet decryption.
//!
//! Each `pub fn` here takes arbitrary bytes and must never panic (apart from the invariant
//! assertions it makes itself, which are bugs when they fire). The cargo-fuzz targets in
//! `fuzz_targets/` are one-line calls into these functions, and `tests/fuzz_corpus.rs` in the
//! main package includes this file as a module (`#[path]`) to replay the seed corpora in
//! `corpus/<target>/` and a deterministic pseudo-random smoke run on every `cargo test`, so the
//! test needs neither nightly nor libFuzzer.
//!
//! Targets whose input is normally protected by a MAC or a signature get a second mode in
//! which the harness itself encrypts or signs the fuzzer's bytes with fixed test keys, so the
//! fuzzer reaches the code behind the authentication check as well (see each function).
//!
//! Only this file knows the input layouts; `TARGETS` lists every entry point by the name of
//! its corpus directory.
#![allow(dead_code)]

use ed25519_dalek::SigningKey;
use sremp::identity::{ContactCard, Identity, UserIdentity};
use sremp::noise::Handshake;
use sremp::ratchet::{Header, LocalKeys, Payload, SessionManager, SignedMessage};
use sremp::sig::{self, SigContext};
use sremp::store::{SledStore, Store};
use sremp::wire::chunk::{Chunk, ChunkHeader, Limits, Reassembler, CHUNK_PAYLOAD_MAX};
use sremp::wire::{msgpack, Envelope, VersionHeader, MAX_DEPTH, MAX_NOISE_PLAINTEXT};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// A fuzz entry function.
pub type Entry = fn(&[u8]);

/// Every entry point, by the name of its fuzz target and corpus directory.
pub const TARGETS: &[(&str, Entry)] = &[
    ("envelope", envelope),
    ("msgpack_scan", msgpack_scan),
    ("identity", identity),
    ("contact_card", contact_card),
    ("version_header", version_header),
    ("chunk_reassembly", chunk_reassembly),
    ("handshake_responder", handshake_responder),
    ("transport_open", transport_open),
    ("ratchet_decrypt", ratchet_decrypt),
    ("relay_messages", relay_messages),
    ("rendezvous_messages", rendezvous_messages),
];

// ---------------------------------------------------------------------------------------------
// Fixed test keys (from tests/vectors/handshake_xx.json and ratchet_conversation.json).

/// Handshake vector: initiator "alice".
const HS_ALICE_SEED: [u8; 32] = [0x11; 32];
const HS_ALICE_STATIC: [u8; 32] = [0x22; 32];
const HS_ALICE_EPHEMERAL: [u8; 32] = [0x55; 32];
/// Handshake vector: responder "bob".
const HS_BOB_SEED: [u8; 32] = [0x33; 32];
const HS_BOB_STATIC: [u8; 32] = [0x44; 32];
const HS_BOB_EPHEMERAL: [u8; 32] = [0x66; 32];
/// The handshake vector's prologue (initiator 1.0, responder 1.0).
const HS_PROLOGUE: &[u8] = b"SREMP-1 noise-prologue\0SREMP\x01\x00SREMP\x01\x00";

const ALICE_IDENTITY_WIRE: &str = "92c45b97a5616c696365c420d04ab232742bb4ab3a1368bd4615e4e6d0224ab71a016baf8520a332c9778737c4200faa684ed28867b97f4a6a2dee5df8ce974e76b7018e3f22a1c4cf2678570f2094c3c2c2c2c001cf0000019b76daa800c4402a21c57b2d793f853695b8ddab2751729f32ec9251b9029edf473587cd02488768a504343f185fa74ea7be32d429bd6b3b15ec7660aa44817b4ea0745fdf3201";
const BOB_IDENTITY_WIRE: &str = "92c45997a3626f62c42017cb79fb2b4120f2b1ec65e4198d6e08b28e813feb01e4a400839b85e18080cec420ff2ee45601ec1b67310c7790404585ae697331eee1c1f8cf2419731c1fff3e6b94c3c2c2c2c001cf0000019b76daa800c440b59b96899b84d57bf07b8483baf2f2775160b3f386bff22c9e76fe6aa06ba36e1d44ec495de966e6af6bae7d5e4af569d00a640e2645ae9eca879a542b97ee0f";

/// Ratchet vector: alice (sender) and bob (the receiver we fuzz).
const RATCHET_ALICE_SECRET: [u8; 32] = [0xa1; 32];
const RATCHET_BOB_SECRET: [u8; 32] = [0xb2; 32];
const RATCHET_BOB_NOISE: [u8; 32] = [0x16; 32];
/// Alice's first message to bob (`messages[0].wire` of ratchet_conversation.json): bob's
/// fuzzed store holds the session it creates.
const RATCHET_FIRST_MESSAGE: &str = include_str!("ratchet_first_message.hex");

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s.trim()).expect("valid hex constant")
}

fn user(seed: &[u8; 32], static_secret: &[u8; 32], wire: &str) -> UserIdentity {
    let id = Identity::from_bytes(&unhex(wire)).expect("vector identity verifies");
    UserIdentity::from_secrets(seed, static_secret, id).expect("vector keys match")
}

fn hs_alice() -> &'static UserIdentity {
    static U: OnceLock<UserIdentity> = OnceLock::new();
    U.get_or_init(|| user(&HS_ALICE_SEED, &HS_ALICE_STATIC, ALICE_IDENTITY_WIRE))
}

fn hs_bob() -> &'static UserIdentity {
    static U: OnceLock<UserIdentity> = OnceLock::new();
    U.get_or_init(|| user(&HS_BOB_SEED, &HS_BOB_STATIC, BOB_IDENTITY_WIRE))
}

/// A little reader over the fuzz input; every read succeeds (zeros past the end).
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn new(data: &'a [u8]) -> Self {
        Input { data }
    }
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_be_bytes([self.u8(), self.u8()])
    }
    fn u64(&mut self) -> u64 {
        (0..8).fold(0u64, |v, _| (v << 8) | u64::from(self.u8()))
    }
    /// Up to `n` bytes.
    fn take(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a
    }
    fn rest(&mut self) -> &'a [u8] {
        self.take(usize::MAX)
    }
}

// ---------------------------------------------------------------------------------------------
// wire

/// `Envelope::decode`; a decoded envelope must re-encode to bytes that decode to it again.
pub fn envelope(data: &[u8]) {
    if let Ok(env) = Envelope::decode(data) {
        let again = Envelope::decode(&env.encode()).expect("re-encoded envelope decodes");
        assert_eq!(again, env, "envelope round trip");
    }
}

/// `msgpack::value_len` at the default and at a fuzzer-chosen depth. A value found must lie
/// within the input, and scanning just that prefix must give the same length.
pub fn msgpack_scan(data: &[u8]) {
    for depth in [
        MAX_DEPTH,
        usize::from(data.first().copied().unwrap_or(0) % 40),
    ] {
        if let Ok(n) = msgpack::value_len(data, depth) {
            assert!(
                n >= 1 && n <= data.len(),
                "value_len {n} outside input of {}",
                data.len()
            );
            let prefix = data.get(..n).expect("n <= len");
            assert_eq!(
                msgpack::value_len(prefix, depth).ok(),
                Some(n),
                "prefix scan disagrees"
            );
        }
    }
    // The bounded serde path behind every message type.
    let _ = msgpack::decode::<serde::de::IgnoredAny>(data);
}

/// `Identity::from_bytes`; a verified identity must survive its own wire form.
pub fn identity(data: &[u8]) {
    if let Ok(id) = Identity::from_bytes(data) {
        let again = Identity::from_bytes(&id.to_bytes()).expect("re-encoded identity verifies");
        assert_eq!(again, id, "identity round trip");
    }
}

/// `ContactCard::from_text` on the input as UTF-8 text, and on `sremp1:` + base64url(input)
/// so that the fuzzer also reaches the MessagePack decoder behind the text form.
pub fn contact_card(data: &[u8]) {
    use base64::Engine;
    let wrapped = format!(
        "{}{}",
        sremp::identity::card::CARD_PREFIX,
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
    );
    let direct = std::str::from_utf8(data).ok();
    for text in direct.into_iter().chain(std::iter::once(wrapped.as_str())) {
        if let Ok(card) = ContactCard::from_text(text) {
            let again = ContactCard::from_text(&card.to_text()).expect("re-encoded card parses");
            assert_eq!(again, card, "contact card round trip");
        }
    }
}

/// `VersionHeader::decode` on the first 7 bytes; an accepted header re-encodes exactly.
pub fn version_header(data: &[u8]) {
    let Some(bytes) = data.first_chunk::<7>() else {
        return;
    };
    if let Ok(h) = VersionHeader::decode(bytes) {
        assert_eq!(&h.encode(), bytes, "version header round trip");
        let _ = sremp::wire::version::negotiate(sremp::wire::Version::CURRENT, h.0);
    }
}

/// Limits the reassembly fuzzer chooses from (small, so memory stays low).
fn reassembly_limits(b: u8) -> Limits {
    let max_message = match b % 5 {
        0 => 1,
        1 => CHUNK_PAYLOAD_MAX,
        2 => CHUNK_PAYLOAD_MAX + 100,
        3 => 2 * CHUNK_PAYLOAD_MAX + 7,
        _ => 4 * CHUNK_PAYLOAD_MAX,
    };
    Limits {
        max_message,
        // 0 is allowed and behaves as 1.
        max_partial: usize::from((b / 5) % 5),
        stall_timeout: Duration::from_millis(1000),
    }
}

/// A chunk built from a few input bytes: small ids, indices and totals so pieces meet, and
/// full-size payloads (`CHUNK_PAYLOAD_MAX` bytes) available from a 1-byte choice.
fn structured_chunk(inp: &mut Input<'_>) -> Chunk {
    let sel = inp.u8();
    let message_id = u64::from(inp.u8() % 6);
    let (chunk_index, total_chunks) = if sel & 0x80 != 0 {
        (inp.u16(), inp.u16())
    } else {
        (u16::from(inp.u8() % 6), u16::from(inp.u8() % 7))
    };
    let fill = inp.u8();
    let len = match sel & 0x03 {
        0 => CHUNK_PAYLOAD_MAX,
        1 => usize::from(inp.u8()),
        2 => CHUNK_PAYLOAD_MAX - usize::from(inp.u8()),
        _ => usize::from(inp.u16()),
    };
    let payload = vec![fill; len];
    let chunk_size = if sel & 0x04 != 0 {
        inp.u16()
    } else {
        u16::try_from(len).unwrap_or(u16::MAX)
    };
    Chunk {
        header: ChunkHeader {
            message_id,
            chunk_index,
            total_chunks,
            chunk_size,
        },
        payload,
    }
}

/// A `Reassembler` with fuzzer-chosen limits fed a sequence of chunks (built from a few bytes,
/// or decoded from raw envelope bytes) and clock steps. After every step the memory bounds
/// must hold: at most `max(max_partial, 1)` partial messages and
/// `buffered() <= max(max_partial, 1) * max_message`; a finished message is within its limit.
pub fn chunk_reassembly(data: &[u8]) {
    let mut inp = Input::new(data);
    let limits = reassembly_limits(inp.u8());
    let partial_cap = limits.max_partial.max(1);
    let mut r = Reassembler::new(limits);
    let t0 = Instant::now();
    let mut now = t0;
    let mut ops = 0;
    while !inp.is_empty() && ops < 64 {
        ops += 1;
        match inp.u8() % 4 {
            0 | 1 => {
                let c = structured_chunk(&mut inp);
                let total = c.header.total_chunks;
                if let Ok(Some(done)) = r.push(c, now) {
                    assert!(
                        done.len() <= limits.max_message,
                        "reassembled over the limit"
                    );
                    let min = usize::from(total.saturating_sub(1)) * CHUNK_PAYLOAD_MAX;
                    assert!(
                        done.len() > min,
                        "reassembled message shorter than its chunks"
                    );
                }
            }
            2 => {
                let len = usize::from(inp.u8());
                let raw = inp.take(len);
                if let Ok(Envelope::Chunk(c)) = Envelope::decode(raw) {
                    if let Ok(Some(done)) = r.push(c, now) {
                        assert!(
                            done.len() <= limits.max_message,
                            "reassembled over the limit"
                        );
                    }
                }
            }
            _ => {
                now += Duration::from_millis(u64::from(inp.u8()) * 20);
                let before = r.partial_count();
                let dropped = r.expire(now);
                assert_eq!(r.partial_count() + dropped, before, "expire count");
                if let Some(deadline) = r.poll_timeout() {
                    assert!(deadline > now, "a stalled partial survived expire");
                }
            }
        }
        assert!(
            r.partial_count() <= partial_cap,
            "too many partial messages"
        );
        assert!(
            r.buffered() <= partial_cap * limits.max_message,
            "buffered {} over {} * {}",
            r.buffered(),
            partial_cap,
            limits.max_message
        );
    }
}

// ---------------------------------------------------------------------------------------------
// noise

fn snow_initiator() -> snow::HandshakeState {
    let params: snow::params::NoiseParams = sremp::noise::PATTERN.parse().expect("pattern parses");
    snow::Builder::new(params)
        .local_private_key(&HS_ALICE_STATIC)
        .and_then(|b| b.prologue(HS_PROLOGUE))
        .map(|b| b.fixed_ephemeral_key_for_testing_only(&HS_ALICE_EPHEMERAL))
        .and_then(|b| b.build_initiator())
        .expect("snow initiator")
}

fn responder() -> Handshake {
    Handshake::with_fixed_ephemeral_for_testing_only(
        hs_bob(),
        HS_PROLOGUE,
        None,
        false,
        &HS_BOB_EPHEMERAL,
    )
    .expect("responder")
}

/// An XX responder (bob of handshake_xx.json, fixed ephemeral so runs reproduce) fed the
/// peer's messages 1 and 3. Must never panic.
///
/// Layout: `mode: u8`, then
/// - mode even (raw): `len1: u8`, message 1 (`len1` bytes), message 3 (the rest). The vector's
///   messages complete the handshake.
/// - mode odd (payload): the rest is the plaintext payload of message 3, which a snow
///   initiator with alice's fixed keys encrypts after a real message 1 and 2: this reaches the
///   identity checks behind the AEAD (identity decode, noise-key binding, finish).
pub fn handshake_responder(data: &[u8]) {
    let mut inp = Input::new(data);
    let mode = inp.u8();
    let mut r = responder();
    if mode & 1 == 0 {
        let len1 = usize::from(inp.u8());
        let m1 = inp.take(len1);
        if r.read_message(m1).is_err() {
            return;
        }
        if r.write_message().is_err() {
            return;
        }
        let _ = r.read_message(inp.rest());
    } else {
        let mut i = snow_initiator();
        let mut buf = vec![0u8; 65_535];
        let Ok(n) = i.write_message(&[], &mut buf) else {
            return;
        };
        r.read_message(buf.get(..n).unwrap_or(&[]))
            .expect("real message 1 accepted");
        let m2 = r.write_message().expect("message 2");
        let mut scratch = vec![0u8; m2.len()];
        i.read_message(&m2, &mut scratch)
            .expect("initiator reads message 2");
        let payload = inp.take(sremp::noise::handshake::MAX_MSG23 - 64);
        let Ok(n) = i.write_message(payload, &mut buf) else {
            return;
        };
        let _ = r.read_message(buf.get(..n).unwrap_or(&[]));
    }
    if r.is_finished() {
        if let Ok((_, mut recv, peer)) = r.finish() {
            assert_eq!(
                peer.noise_key().0,
                alice_noise_public(),
                "peer bound to its static key"
            );
            let _ = recv.open(&[0u8; 32], Instant::now());
        }
    }
}

fn alice_noise_public() -> [u8; 32] {
    hs_alice().identity().noise_key().0
}

/// A real transport pair (the handshake vector's keys and ephemerals) whose receiving half is
/// fed a sequence of frames. Must never panic, and buffered bytes stay within the limits.
///
/// Layout: `limits: u8`, then frames of `flags: u8, len: u16be, bytes[len]`:
/// - flags & 3 == 0: `bytes` is raw ciphertext;
/// - 1: `bytes` is plaintext, encrypted by the peer's `SendHalf::encrypt` (reaches the
///   envelope decoder and reassembly);
/// - 2: a chunk envelope built from `bytes` as in the `chunk_reassembly` target, encrypted;
/// - 3: replay of the previous ciphertext (must fail).
pub fn transport_open(data: &[u8]) {
    let mut inp = Input::new(data);
    let limits = reassembly_limits(inp.u8());
    let partial_cap = limits.max_partial.max(1);
    let Some((mut send, mut recv)) = transport_pair() else {
        return;
    };
    recv.set_limits(limits);
    let mut now = Instant::now();
    let mut last: Vec<u8> = Vec::new();
    let mut ct = Vec::new();
    let mut frames = 0;
    while !inp.is_empty() && frames < 32 {
        frames += 1;
        let flags = inp.u8();
        let len = usize::from(inp.u16());
        let bytes = inp.take(len);
        now += Duration::from_millis(u64::from(flags >> 2) * 40);
        let frame: Vec<u8> = match flags & 3 {
            0 => bytes.to_vec(),
            1 => {
                let pt = bytes
                    .get(..MAX_NOISE_PLAINTEXT.min(bytes.len()))
                    .unwrap_or(&[]);
                if send.encrypt(pt, &mut ct).is_err() {
                    return;
                }
                ct.clone()
            }
            2 => {
                let c = structured_chunk(&mut Input::new(bytes));
                let pt = Envelope::Chunk(c).encode();
                if pt.len() > MAX_NOISE_PLAINTEXT || send.encrypt(&pt, &mut ct).is_err() {
                    continue;
                }
                ct.clone()
            }
            _ => {
                let replay = last.clone();
                assert!(
                    replay.is_empty() || recv.open(&replay, now).is_err(),
                    "a replayed frame was accepted"
                );
                continue;
            }
        };
        let _ = recv.open(&frame, now);
        last = frame;
        assert!(
            recv.buffered() <= partial_cap * limits.max_message,
            "transport buffered {} bytes",
            recv.buffered()
        );
    }
}

/// Alice's send half and bob's receive half after a full deterministic handshake.
fn transport_pair() -> Option<(sremp::noise::SendHalf, sremp::noise::RecvHalf)> {
    let mut i = Handshake::with_fixed_ephemeral_for_testing_only(
        hs_alice(),
        HS_PROLOGUE,
        Some(hs_bob().key()),
        true,
        &HS_ALICE_EPHEMERAL,
    )
    .ok()?;
    let mut r = responder();
    r.read_message(&i.write_message().ok()?).ok()?;
    i.read_message(&r.write_message().ok()?).ok()?;
    r.read_message(&i.write_message().ok()?).ok()?;
    let (send, _, _) = i.finish().ok()?;
    let (_, recv, _) = r.finish().ok()?;
    Some((send, recv))
}

// ---------------------------------------------------------------------------------------------
// ratchet

struct RatchetFixture {
    manager: SessionManager,
    store: SledStore,
    alice: SigningKey,
    alice_key: [u8; 32],
    bob_key: [u8; 32],
}

fn ratchet_fixture() -> &'static RatchetFixture {
    static F: OnceLock<RatchetFixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = SledStore::open(dir.path()).expect("sled store");
        let bob = SigningKey::from_bytes(&RATCHET_BOB_SECRET);
        let bob_key = bob.verifying_key().to_bytes();
        let manager = SessionManager::new(LocalKeys::new(bob, RATCHET_BOB_NOISE));
        // Bob has received alice's first message: one session in the store.
        let incoming = manager
            .decrypt(&store, &unhex(RATCHET_FIRST_MESSAGE))
            .expect("vector first message decrypts");
        store.commit(incoming.batch).expect("commit");
        // The fixture lives in a static that is never dropped: remove the directory now. sled
        // keeps its files open and the fuzz inputs only read (nothing is committed again).
        let _ = dir.close();
        let alice = SigningKey::from_bytes(&RATCHET_ALICE_SECRET);
        RatchetFixture {
            manager,
            store,
            alice_key: alice.verifying_key().to_bytes(),
            alice,
            bob_key,
        }
    })
}

/// `SignedMessage::encode`'s layout, signed with alice's key over the given header and
/// ciphertext (the same signed bytes as `ratchet::seal::seal`).
fn sign_as_alice(f: &RatchetFixture, header: &[u8], ciphertext: &[u8]) -> Vec<u8> {
    let len = u32::try_from(header.len())
        .unwrap_or(u32::MAX)
        .to_be_bytes();
    let signature = sig::sign(
        &f.alice,
        SigContext::Message,
        &[
            &[sremp::ratchet::PROTOCOL_VERSION],
            &f.alice_key,
            &f.bob_key,
            &len,
            header,
            ciphertext,
        ],
    );
    SignedMessage {
        sender: f.alice_key,
        recipient: f.bob_key,
        header,
        ciphertext,
        signature,
    }
    .encode()
}

/// Bob's `SessionManager::decrypt` over a sled store holding the session from alice's first
/// vector message (never committed to, so every run sees the same state).
///
/// Layout: `mode: u8`, then
/// - mode % 3 == 0 (raw): the rest is a wire message (`SignedMessage::decode`, then decrypt);
/// - 1 (signed): `hlen: u8`, header (`hlen` bytes), ciphertext (the rest), signed by alice so
///   the fuzzer reaches header decoding, first-contact acceptance and the ratchet itself;
/// - 2 (inner decoders): the rest through `Header::decode` and `Payload::decode`.
pub fn ratchet_decrypt(data: &[u8]) {
    let mut inp = Input::new(data);
    let mode = inp.u8() % 3;
    let f = ratchet_fixture();
    match mode {
        0 => {
            let wire = inp.rest();
            if let Ok(msg) = SignedMessage::decode(wire) {
                let encoded = msg.encode();
                assert_eq!(
                    SignedMessage::decode(&encoded).ok(),
                    Some(msg),
                    "signed message round trip"
                );
            }
            let _ = f.manager.decrypt(&f.store, wire);
        }
        1 => {
            let hlen = usize::from(inp.u8());
            let header = inp.take(hlen);
            let ciphertext = inp.rest();
            let wire = sign_as_alice(f, header, ciphertext);
            let _ = f.manager.decrypt(&f.store, &wire);
        }
        _ => {
            let rest = inp.rest();
            if let Ok(h) = Header::decode(rest) {
                assert_eq!(
                    Header::decode(&h.encode()).ok(),
                    Some(h),
                    "header round trip"
                );
            }
            if let Ok(p) = Payload::decode(rest) {
                assert_eq!(
                    Payload::decode(&p.encode()).ok(),
                    Some(p),
                    "payload round trip"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// relay and rendezvous bodies

fn round_trip<T>(data: &[u8])
where
    T: serde::de::DeserializeOwned + serde::Serialize + PartialEq + std::fmt::Debug,
{
    if let Ok(v) = msgpack::decode::<T>(data) {
        let again: T = msgpack::decode(&msgpack::encode(&v)).expect("re-encoded body decodes");
        assert_eq!(again, v, "{} round trip", std::any::type_name::<T>());
    }
}

/// Every relay body type through `msgpack::decode`, chosen by the first byte; a decoded body
/// must round-trip. The same bytes then drive the relay connection core (see `relay_conn`).
pub fn relay_messages(data: &[u8]) {
    use sremp::wire::relay::*;
    let Some((sel, body)) = data.split_first() else {
        return;
    };
    match sel % 14 {
        0 => round_trip::<RelayHello>(body),
        1 => round_trip::<RelayChallenge>(body),
        2 => round_trip::<RelayRegister>(body),
        3 => round_trip::<RelayRegistered>(body),
        4 => round_trip::<StoreMessage>(body),
        5 => round_trip::<StoreResponse>(body),
        6 => round_trip::<RetrieveMessages>(body),
        7 => round_trip::<StoredMessage>(body),
        8 => round_trip::<MessageBatch>(body),
        9 => round_trip::<DeliveryConfirmation>(body),
        10 => round_trip::<ConfirmationAck>(body),
        11 => round_trip::<RelayCapabilities>(body),
        12 => round_trip::<SessionReset>(body),
        _ => round_trip::<RetrieveCursor>(body),
    }
    relay_conn(*sel, body);
}

/// Relay test keys: the connecting client and the relay itself.
const RELAY_CLIENT_SEED: [u8; 32] = [0x71; 32];
const RELAY_KEY: [u8; 32] = [0x72; 32];
/// Most envelopes fed to one connection core.
const RELAY_CONN_STEPS: usize = 64;

/// Drives the relay connection core ([`sremp::relay::conn::RelayConn`]) with the input as a
/// sequence of envelopes, each `u16be(len) || bytes`. Bits of the selector byte choose the
/// relay mode (`0x20`: integrated, owned by the client when `0x40` is also set) and whether
/// the harness first registers properly with a fixed key (`0x80`), so that the fuzzer reaches
/// the registered state; with `0x10` a decoded `STORE_MESSAGE`'s sender signature is replaced
/// by a valid one. Checks the core's invariants: nothing follows a `Close`, nothing is stored,
/// retrieved or confirmed before registration, retrieval limits stay within the policy, and a
/// store is for the owner at an integrated relay.
fn relay_conn(sel: u8, body: &[u8]) {
    use sremp::identity::IdentityKey;
    use sremp::relay::auth::{self, SessionBinding};
    use sremp::relay::conn::{Action, Now, RelayConn, RelayMode};
    use sremp::relay::policy::RateLimiter;
    use sremp::relay::RelayConfig;
    use sremp::time::Timestamp;
    use sremp::wire::relay::*;
    use std::sync::{Arc, Mutex};

    let client = SigningKey::from_bytes(&RELAY_CLIENT_SEED);
    let me = IdentityKey(client.verifying_key().to_bytes());
    let relay_key = IdentityKey(RELAY_KEY);
    let mode = match (sel & 0x20 != 0, sel & 0x40 != 0) {
        (false, _) => RelayMode::Open,
        (true, true) => RelayMode::Integrated { owner: me },
        (true, false) => RelayMode::Integrated {
            owner: IdentityKey([0x73; 32]),
        },
    };
    let policy = RelayConfig {
        rate_burst: 16,
        max_message_size: 4096,
        batch_messages: 8,
        ..RelayConfig::default()
    };
    let batch_max = policy.batch_messages as usize;
    let max_size = policy.max_message_size as usize;
    let rate = Arc::new(Mutex::new(RateLimiter::new(&policy)));
    let (hash, nonce) = ([0x74; 32], [0x75; 32]);
    let mut conn = RelayConn::new(mode, relay_key, Arc::new(policy), rate, me, hash, nonce);
    let now = Now {
        mono_ms: 1000,
        wall: Timestamp(1_767_225_600_000),
    };
    let binding = SessionBinding {
        handshake_hash: hash,
        nonce,
    };
    let mut closed = false;
    // True when the actions close the connection.
    let check = |actions: &[Action], registered_before: bool| -> bool {
        let mut closes = false;
        for (i, a) in actions.iter().enumerate() {
            match a {
                Action::Close(_) => {
                    assert_eq!(i + 1, actions.len(), "an action follows Close");
                    closes = true;
                }
                Action::Store {
                    sender, message, ..
                } => {
                    assert!(registered_before, "stored before registration");
                    assert_eq!(*sender, me);
                    assert!(message.encrypted_blob.len() <= max_size);
                    if let RelayMode::Integrated { owner } = mode {
                        assert_eq!(message.recipient, owner.0, "stored for a stranger");
                    }
                }
                Action::Retrieve { who, limit, .. } => {
                    assert!(registered_before, "retrieved before registration");
                    assert_eq!(*who, me);
                    assert!(*limit >= 1 && *limit <= batch_max);
                }
                Action::Confirm { who, .. } | Action::AckConfirmation { who, .. } => {
                    assert!(registered_before, "confirmed before registration");
                    assert_eq!(*who, me);
                }
                _ => {}
            }
        }
        closes
    };
    if sel & 0x80 != 0 {
        let a = conn.handle(Envelope::RelayHello(RelayHello { features: 0 }), now);
        assert!(!check(&a, false));
        let reg = RelayRegister {
            identity: me.0,
            auth_signature: auth::sign_register(&client, &binding, &relay_key.0),
            capabilities: RelayCapabilities {
                max_message_size: u32::MAX,
                max_storage_duration: u64::MAX,
                quota_messages: u32::MAX,
                quota_bytes: u64::MAX,
            },
        };
        let a = conn.handle(Envelope::RelayRegister(reg), now);
        assert!(!check(&a, false));
        assert_eq!(
            conn.registered(),
            Some(me),
            "a valid registration is accepted"
        );
    }
    let mut input = Input::new(body);
    let mut stores = Vec::new();
    for _ in 0..RELAY_CONN_STEPS {
        if input.is_empty() || closed {
            break;
        }
        let len = usize::from(input.u16());
        let Ok(mut env) = Envelope::decode(input.take(len)) else {
            continue;
        };
        if let (true, Envelope::StoreMessage(m)) = (sel & 0x10 != 0, &mut env) {
            m.sender_signature =
                auth::sign_store(&client, &m.recipient, m.message_id, &m.encrypted_blob);
        }
        let registered = conn.registered().is_some();
        // Consecutive stores also go through the batch path, as the shell gathers them.
        match env {
            Envelope::StoreMessage(m) if registered && stores.len() < 4 => {
                stores.push(m);
                continue;
            }
            env => {
                if !stores.is_empty() {
                    let a = conn.handle_stores(std::mem::take(&mut stores), now);
                    closed = check(&a, registered);
                    if closed {
                        break;
                    }
                }
                let a = conn.handle(env, now);
                closed = check(&a, registered);
            }
        }
    }
    if !stores.is_empty() && !closed {
        let registered = conn.registered().is_some();
        let a = conn.handle_stores(stores, now);
        check(&a, registered);
    }
}

/// Every rendezvous body type through `msgpack::decode`, chosen by the first byte; a decoded
/// body must round-trip, and a decoded `RawIdentity` is verified.
pub fn rendezvous_messages(data: &[u8]) {
    use sremp::wire::rendezvous::*;
    let Some((sel, body)) = data.split_first() else {
        return;
    };
    match sel % 10 {
        0 => {
            round_trip::<RawIdentity>(body);
            if let Ok(raw) = msgpack::decode::<RawIdentity>(body) {
                let _ = raw.verify();
            }
        }
        1 => round_trip::<RegisterRequest>(body),
        2 => round_trip::<RelayHint>(body),
        3 => round_trip::<RegisterResponse>(body),
        4 => round_trip::<LookupRequest>(body),
        5 => round_trip::<PeerInfo>(body),
        6 => round_trip::<LookupResponse>(body),
        7 => round_trip::<ListServersRequest>(body),
        8 => round_trip::<ServerEntry>(body),
        _ => round_trip::<ListServersResponse>(body),
    }
}
