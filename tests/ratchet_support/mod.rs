//! Helpers shared by the `ratchet_*` integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ed25519_dalek::{SigningKey, VerifyingKey};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sremp::ratchet::seal::{open, seal};
use sremp::ratchet::{accept, initiate, DecryptError, Header, Session, SignedMessage};
use sremp::time::Timestamp;
use x25519_dalek::{PublicKey, StaticSecret};

pub struct Party {
    pub sk: SigningKey,
    pub vk: VerifyingKey,
    pub ik: [u8; 32],
    pub noise_secret: [u8; 32],
    pub noise_pub: [u8; 32],
}

pub fn party(seed: u8) -> Party {
    let sk = SigningKey::from_bytes(&[seed; 32]);
    let vk = sk.verifying_key();
    let noise_secret = StaticSecret::from([seed.wrapping_add(100); 32]).to_bytes();
    let noise_pub = PublicKey::from(&StaticSecret::from(noise_secret)).to_bytes();
    Party {
        ik: vk.to_bytes(),
        sk,
        vk,
        noise_secret,
        noise_pub,
    }
}

pub fn rng(seed: u64) -> ChaCha20Rng {
    ChaCha20Rng::seed_from_u64(seed)
}

/// Alice initiates; returns her session and her first message (not yet received).
pub fn initiate_to(rng: &mut ChaCha20Rng, a: &Party, b: &Party, text: &[u8]) -> (Session, Vec<u8>) {
    let mut s = initiate(
        rng,
        &a.ik,
        &a.noise_secret,
        &b.ik,
        &b.noise_pub,
        Timestamp(1_000),
    )
    .unwrap();
    let wire = seal(&mut s, &a.sk, rng, text).unwrap();
    (s, wire)
}

/// Bob accepts a first-contact message and decrypts it.
pub fn accept_from(b: &Party, a: &Party, wire: &[u8]) -> (Session, Vec<u8>) {
    let msg = SignedMessage::decode(wire).unwrap();
    let header = Header::decode(msg.header).unwrap();
    let mut s = accept(&b.ik, &b.noise_secret, &a.ik, &header)
        .unwrap()
        .session;
    let pt = open(&mut s, &a.vk, &msg).unwrap();
    (s, pt)
}

/// A confirmed pair after one message each way.
pub fn pair(seed: u64) -> (Party, Party, Session, Session, ChaCha20Rng) {
    let mut r = rng(seed);
    let a = party(1);
    let b = party(2);
    let (mut alice, m0) = initiate_to(&mut r, &a, &b, b"hello bob");
    let (mut bob, pt) = accept_from(&b, &a, &m0);
    assert_eq!(pt, b"hello bob");
    let m1 = send(&mut bob, &b, &mut r, b"hello alice");
    assert_eq!(recv(&mut alice, &b, &m1).unwrap(), b"hello alice");
    (a, b, alice, bob, r)
}

pub fn send(s: &mut Session, from: &Party, rng: &mut ChaCha20Rng, text: &[u8]) -> Vec<u8> {
    seal(s, &from.sk, rng, text).unwrap()
}

pub fn recv(s: &mut Session, from: &Party, wire: &[u8]) -> Result<Vec<u8>, DecryptError> {
    let msg = SignedMessage::decode(wire)?;
    open(s, &from.vk, &msg)
}

/// A stable fingerprint of a session's full state (via its Debug plus a probe encryption
/// would mutate it, so compare the Debug output and skipped-key count).
pub fn shape(s: &Session) -> String {
    format!("{s:?}")
}

/// True if two sessions behave identically: same shape, and the same next message under the
/// same randomness.
pub fn same_state(x: &Session, y: &Session, from: &Party) -> bool {
    let (mut x, mut y) = (x.clone(), y.clone());
    shape(&x) == shape(&y)
        && send(&mut x, from, &mut rng(99), b"probe") == send(&mut y, from, &mut rng(99), b"probe")
}
