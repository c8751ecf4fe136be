//! Double Ratchet benchmarks against vodozemac, and the signed message path against the sum
//! of its primitives. Run: `cargo bench --bench ratchet`; the ratios are computed from the
//! criterion estimates (see the report at the end of `scripts`-less runs: `ratchet/*`).
//!
//! - `oneway/*`: one 100-byte message encrypted by Alice and decrypted by Bob, same chain.
//! - `pingpong/*`: Alice -> Bob then Bob -> Alice (100 bytes each): a DH step on every message.
//! - `signed/full`: payload encode, encrypt, sign, encode, decode, verify, decrypt, payload
//!   decode; `primitive/*` measure each of those pieces alone with the same sizes.

// A benchmark, not code that handles peer input: failing loudly is what we want.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chacha20poly1305::aead::{AeadInPlace, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use ed25519_dalek::SigningKey;
use hmac::{Hmac, Mac};
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sha2::Sha256;
use sremp::ratchet::seal::{open, seal};
use sremp::ratchet::{
    accept, initiate, Content, Header, MessageId, Payload, Session, SignedMessage,
};
use sremp::sig::{self, SigContext};
use sremp::time::Timestamp;
use vodozemac::olm::{Account, OlmMessage, SessionConfig};
use x25519_dalek::{PublicKey, StaticSecret};

const MSG: [u8; 100] = [0x42; 100];

struct Pair {
    a_sk: SigningKey,
    b_sk: SigningKey,
    alice: Session,
    bob: Session,
    rng: ChaCha20Rng,
}

fn sremp_pair() -> Pair {
    let mut rng = ChaCha20Rng::seed_from_u64(1);
    let a_sk = SigningKey::from_bytes(&[1; 32]);
    let b_sk = SigningKey::from_bytes(&[2; 32]);
    let (a_ik, b_ik) = (
        a_sk.verifying_key().to_bytes(),
        b_sk.verifying_key().to_bytes(),
    );
    let b_noise = [22u8; 32];
    let b_noise_pub = PublicKey::from(&StaticSecret::from(b_noise)).to_bytes();
    let mut alice = initiate(
        &mut rng,
        &a_ik,
        &[11; 32],
        &b_ik,
        &b_noise_pub,
        Timestamp(0),
    )
    .unwrap();
    let w = seal(&mut alice, &a_sk, &mut rng, b"hi").unwrap();
    let m = SignedMessage::decode(&w).unwrap();
    let h = Header::decode(m.header).unwrap();
    let mut bob = accept(&b_ik, &b_noise, &a_ik, &h).unwrap().session;
    open(&mut bob, &a_sk.verifying_key(), &m).unwrap();
    let w = seal(&mut bob, &b_sk, &mut rng, b"hi").unwrap();
    open(
        &mut alice,
        &b_sk.verifying_key(),
        &SignedMessage::decode(&w).unwrap(),
    )
    .unwrap();
    Pair {
        a_sk,
        b_sk,
        alice,
        bob,
        rng,
    }
}

fn vodozemac_pair() -> (vodozemac::olm::Session, vodozemac::olm::Session) {
    let alice = Account::new();
    let mut bob = Account::new();
    bob.generate_one_time_keys(1);
    let otk = *bob.one_time_keys().values().next().unwrap();
    let mut a =
        alice.create_outbound_session(SessionConfig::version_2(), bob.curve25519_key(), otk);
    let OlmMessage::PreKey(m) = a.encrypt("hi") else {
        panic!("expected a pre-key message")
    };
    let mut b = bob
        .create_inbound_session(alice.curve25519_key(), &m)
        .unwrap()
        .session;
    let reply = b.encrypt("hi");
    a.decrypt(&reply).unwrap();
    (a, b)
}

fn bench_vs_vodozemac(c: &mut Criterion) {
    let mut g = c.benchmark_group("oneway");
    let mut p = sremp_pair();
    g.bench_function("sremp", |bch| {
        bch.iter(|| {
            let m = p.alice.encrypt(&mut p.rng, black_box(&MSG)).unwrap();
            black_box(p.bob.decrypt_message(&m).unwrap())
        })
    });
    let (mut va, mut vb) = vodozemac_pair();
    g.bench_function("vodozemac", |bch| {
        bch.iter(|| {
            let m = va.encrypt(black_box(&MSG));
            black_box(vb.decrypt(&m).unwrap())
        })
    });
    g.finish();

    let mut g = c.benchmark_group("pingpong");
    let mut p = sremp_pair();
    g.bench_function("sremp", |bch| {
        bch.iter(|| {
            let m = p.alice.encrypt(&mut p.rng, black_box(&MSG)).unwrap();
            black_box(p.bob.decrypt_message(&m).unwrap());
            let m = p.bob.encrypt(&mut p.rng, black_box(&MSG)).unwrap();
            black_box(p.alice.decrypt_message(&m).unwrap())
        })
    });
    let (mut va, mut vb) = vodozemac_pair();
    g.bench_function("vodozemac", |bch| {
        bch.iter(|| {
            let m = va.encrypt(black_box(&MSG));
            black_box(vb.decrypt(&m).unwrap());
            let m = vb.encrypt(black_box(&MSG));
            black_box(va.decrypt(&m).unwrap())
        })
    });
    g.finish();
}

fn text_payload() -> Payload {
    Payload {
        id: MessageId([7; 16]),
        sent_at: Timestamp(1_700_000_000_000),
        content: Content::Text(String::from_utf8(MSG.to_vec()).unwrap()),
    }
}

fn bench_signed_path(c: &mut Criterion) {
    let mut g = c.benchmark_group("signed");
    let mut p = sremp_pair();
    let a_vk = p.a_sk.verifying_key();
    let payload = text_payload();
    g.bench_function("full", |bch| {
        bch.iter(|| {
            let pt = black_box(&payload).encode();
            let wire = seal(&mut p.alice, &p.a_sk, &mut p.rng, &pt).unwrap();
            let msg = SignedMessage::decode(&wire).unwrap();
            let out = open(&mut p.bob, &a_vk, &msg).unwrap();
            black_box(Payload::decode(&out).unwrap())
        })
    });
    g.finish();
    let _ = &p.b_sk;

    // The same pieces, alone, with the sizes of the full path.
    let mut p = sremp_pair();
    let pt = payload.encode();
    let wire = seal(&mut p.alice, &p.a_sk, &mut p.rng, &pt).unwrap();
    let msg = SignedMessage::decode(&wire).unwrap();
    let header = msg.header.to_vec();
    let ct = msg.ciphertext.to_vec();
    let mut ad = vec![1u8];
    ad.extend_from_slice(&msg.sender);
    ad.extend_from_slice(&msg.recipient);
    ad.extend_from_slice(&header);
    let len = (header.len() as u32).to_be_bytes();
    let key = [9u8; 32];
    let cipher_ct = {
        let mut buf = pt.clone();
        ChaCha20Poly1305::new(Key::from_slice(&key))
            .encrypt_in_place(&Nonce::default(), &ad, &mut buf)
            .unwrap();
        buf
    };

    let mut g = c.benchmark_group("primitive");
    g.bench_function("aead_encrypt", |bch| {
        bch.iter(|| {
            let mut buf = Vec::with_capacity(pt.len() + 16);
            buf.extend_from_slice(black_box(&pt));
            ChaCha20Poly1305::new(Key::from_slice(&key))
                .encrypt_in_place(&Nonce::default(), &ad, &mut buf)
                .unwrap();
            black_box(buf)
        })
    });
    g.bench_function("aead_decrypt", |bch| {
        bch.iter(|| {
            let mut buf = black_box(&cipher_ct).to_vec();
            ChaCha20Poly1305::new(Key::from_slice(&key))
                .decrypt_in_place(&Nonce::default(), &ad, &mut buf)
                .unwrap();
            black_box(buf)
        })
    });
    g.bench_function("chain_kdf", |bch| {
        bch.iter(|| {
            let mac = <Hmac<Sha256> as Mac>::new_from_slice(black_box(&key)).unwrap();
            let mut m = mac.clone();
            m.update(&[1]);
            let mut ck = mac;
            ck.update(&[2]);
            black_box((m.finalize().into_bytes(), ck.finalize().into_bytes()))
        })
    });
    let parts: [&[u8]; 6] = [&[1u8], &msg.sender, &msg.recipient, &len, &header, &ct];
    g.bench_function("sign", |bch| {
        bch.iter(|| black_box(sig::sign(&p.a_sk, SigContext::Message, black_box(&parts))))
    });
    let signature = sig::sign(&p.a_sk, SigContext::Message, &parts);
    g.bench_function("verify", |bch| {
        bch.iter(|| sig::verify(&a_vk, SigContext::Message, black_box(&parts), &signature).unwrap())
    });
    g.bench_function("encoding", |bch| {
        bch.iter(|| {
            let pe = black_box(&payload).encode();
            let he = Header::decode(black_box(&header)).unwrap().encode();
            let we = SignedMessage {
                header: &he,
                ciphertext: &ct,
                ..msg.clone()
            }
            .encode();
            let md = SignedMessage::decode(&we).unwrap();
            let hd = Header::decode(md.header).unwrap();
            black_box((Payload::decode(&pe).unwrap(), hd))
        })
    });
    g.finish();
}

/// Interleaved A/B timing: alternates batches of `a` and `b` so that machine noise (other
/// processes, frequency changes) hits both alike; returns (ns per a, ns per b).
fn interleaved(rounds: u32, batch: u32, mut a: impl FnMut(), mut b: impl FnMut()) -> (f64, f64) {
    let (mut ta, mut tb) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
    for _ in 0..rounds {
        let t = std::time::Instant::now();
        for _ in 0..batch {
            a();
        }
        ta += t.elapsed();
        let t = std::time::Instant::now();
        for _ in 0..batch {
            b();
        }
        tb += t.elapsed();
    }
    let n = f64::from(rounds * batch);
    (ta.as_nanos() as f64 / n, tb.as_nanos() as f64 / n)
}

/// Prints the three ratios the issue asks for, measured interleaved in this run.
fn ratio_report(_c: &mut Criterion) {
    let mut p = sremp_pair();
    let (mut va, mut vb) = vodozemac_pair();
    let (s, v) = interleaved(
        40,
        500,
        || {
            let m = p.alice.encrypt(&mut p.rng, black_box(&MSG)).unwrap();
            black_box(p.bob.decrypt_message(&m).unwrap());
        },
        || {
            let m = va.encrypt(black_box(&MSG));
            black_box(vb.decrypt(&m).unwrap());
        },
    );
    println!(
        "RATIO oneway sremp {s:.0} ns / vodozemac {v:.0} ns = {:.3} (target <= 0.5)",
        s / v
    );

    let mut p = sremp_pair();
    let (mut va, mut vb) = vodozemac_pair();
    let (s, v) = interleaved(
        40,
        20,
        || {
            let m = p.alice.encrypt(&mut p.rng, black_box(&MSG)).unwrap();
            black_box(p.bob.decrypt_message(&m).unwrap());
            let m = p.bob.encrypt(&mut p.rng, black_box(&MSG)).unwrap();
            black_box(p.alice.decrypt_message(&m).unwrap());
        },
        || {
            let m = va.encrypt(black_box(&MSG));
            black_box(vb.decrypt(&m).unwrap());
            let m = vb.encrypt(black_box(&MSG));
            black_box(va.decrypt(&m).unwrap());
        },
    );
    println!(
        "RATIO pingpong sremp {s:.0} ns / vodozemac {v:.0} ns = {:.3} (target <= 1.1)",
        s / v
    );

    // Full signed path vs the sum of its primitives (same inputs as `primitive/*`).
    let mut p = sremp_pair();
    let a_vk = p.a_sk.verifying_key();
    let payload = text_payload();
    let mut p2 = sremp_pair();
    let pt = payload.encode();
    let wire = seal(&mut p2.alice, &p2.a_sk, &mut p2.rng, &pt).unwrap();
    let msg = SignedMessage::decode(&wire).unwrap();
    let header = msg.header.to_vec();
    let ct = msg.ciphertext.to_vec();
    let mut ad = vec![1u8];
    ad.extend_from_slice(&msg.sender);
    ad.extend_from_slice(&msg.recipient);
    ad.extend_from_slice(&header);
    let len = (header.len() as u32).to_be_bytes();
    let key = [9u8; 32];
    let parts: [&[u8]; 6] = [&[1u8], &msg.sender, &msg.recipient, &len, &header, &ct];
    let signature = sig::sign(&p2.a_sk, SigContext::Message, &parts);
    let (full, prims) = interleaved(
        40,
        25,
        || {
            let pt = black_box(&payload).encode();
            let wire = seal(&mut p.alice, &p.a_sk, &mut p.rng, &pt).unwrap();
            let msg = SignedMessage::decode(&wire).unwrap();
            let out = open(&mut p.bob, &a_vk, &msg).unwrap();
            black_box(Payload::decode(&out).unwrap());
        },
        || {
            // encoding
            let pe = black_box(&payload).encode();
            let he = Header::decode(black_box(&header)).unwrap().encode();
            let we = SignedMessage {
                header: &he,
                ciphertext: &ct,
                ..msg.clone()
            }
            .encode();
            let md = SignedMessage::decode(&we).unwrap();
            black_box((
                Payload::decode(&pe).unwrap(),
                Header::decode(md.header).unwrap(),
            ));
            // two chain KDF steps (sender and receiver)
            for _ in 0..2 {
                let mac = <Hmac<Sha256> as Mac>::new_from_slice(black_box(&key)).unwrap();
                let mut m = mac.clone();
                m.update(&[1]);
                let mut ck = mac;
                ck.update(&[2]);
                black_box((m.finalize().into_bytes(), ck.finalize().into_bytes()));
            }
            // AEAD both ways
            let mut buf = Vec::with_capacity(pt.len() + 16);
            buf.extend_from_slice(black_box(&pt));
            let c = ChaCha20Poly1305::new(Key::from_slice(&key));
            c.encrypt_in_place(&Nonce::default(), &ad, &mut buf)
                .unwrap();
            let mut buf2 = buf.clone();
            ChaCha20Poly1305::new(Key::from_slice(&key))
                .decrypt_in_place(&Nonce::default(), &ad, &mut buf2)
                .unwrap();
            black_box(buf2);
            // sign and verify
            black_box(sig::sign(&p2.a_sk, SigContext::Message, black_box(&parts)));
            sig::verify(&a_vk, SigContext::Message, black_box(&parts), &signature).unwrap();
        },
    );
    println!(
        "RATIO signed primitives {prims:.0} ns / full path {full:.0} ns = {:.3} (target >= 0.85)",
        prims / full
    );
}

criterion_group!(benches, bench_vs_vodozemac, bench_signed_path, ratio_report);
criterion_main!(benches);
