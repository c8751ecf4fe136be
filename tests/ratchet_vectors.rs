//! Known-answer vectors for one short conversation (`tests/vectors/ratchet_conversation.json`).
//!
//! The conversation is produced from fixed keys and a seeded ChaCha20 generator; the test
//! re-runs it and compares every byte. It also re-derives the first message key from the
//! byte-exact description in docs/PROTOCOL.md with the primitives alone (snow, hkdf, hmac,
//! chacha20poly1305) and decrypts the first message with it.
//! Regenerate with `SREMP_WRITE_VECTORS=1 cargo test --test ratchet_vectors`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod ratchet_support;

use chacha20poly1305::aead::{Aead, KeyInit, Payload as AeadPayload};
use chacha20poly1305::ChaCha20Poly1305;
use hmac::{Hmac, Mac};
use ratchet_support::*;
use serde_json::{json, Value};
use sha2::Sha256;
use sremp::ratchet::seal::{open, seal};
use sremp::ratchet::{accept, initiate, Header, MessageId, Payload, SignedMessage};
use sremp::time::Timestamp;

const PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/vectors/ratchet_conversation.json"
);
const RNG_SEED: u64 = 0x5eed_0001;

fn conversation() -> Value {
    let mut r = rng(RNG_SEED);
    let a = party(0xa1);
    let b = party(0xb2);
    let script: [(bool, &str, u64); 5] = [
        (true, "Hello Bob, it's Alice.", 1_700_000_000_000),
        (true, "Are you there?", 1_700_000_001_000),
        (false, "Hi Alice! Just got online.", 1_700_000_060_000),
        (true, "Great, the ratchet turned.", 1_700_000_061_000),
        (false, "Indeed.", 1_700_000_062_000),
    ];
    let mut alice = initiate(
        &mut r,
        &a.ik,
        &a.noise_secret,
        &b.ik,
        &b.noise_pub,
        Timestamp(script[0].2),
    )
    .unwrap();
    let mut bob = None;
    let mut messages = Vec::new();
    for (from_alice, text, at) in script {
        let payload = Payload {
            id: MessageId::random(&mut r),
            sent_at: Timestamp(at),
            content: sremp::ratchet::Content::Text(text.into()),
        };
        let pt = payload.encode();
        let wire = if from_alice {
            seal(&mut alice, &a.sk, &mut r, &pt).unwrap()
        } else {
            seal(bob.as_mut().unwrap(), &b.sk, &mut r, &pt).unwrap()
        };
        let msg = SignedMessage::decode(&wire).unwrap();
        let got = if from_alice {
            if bob.is_none() {
                let header = Header::decode(msg.header).unwrap();
                bob = Some(
                    accept(&b.ik, &b.noise_secret, &a.ik, &header)
                        .unwrap()
                        .session,
                );
            }
            open(bob.as_mut().unwrap(), &a.vk, &msg).unwrap()
        } else {
            open(&mut alice, &b.vk, &msg).unwrap()
        };
        assert_eq!(got, pt);
        messages.push(json!({
            "from": if from_alice { "alice" } else { "bob" },
            "text": text,
            "payload": hex::encode(&pt),
            "header": hex::encode(msg.header),
            "wire": hex::encode(&wire),
        }));
    }
    json!({
        "description": "SREMP-1 end-to-end conversation: first contact (Noise X) then Double Ratchet, signed messages. Keys below are test-only.",
        "rng": format!("rand_chacha::ChaCha20Rng::seed_from_u64({RNG_SEED:#x}); draws in order: X ephemeral, seed, Alice's first ratchet key, then per message: payload id, (ratchet key on a DH step)"),
        "alice": { "identity_secret": hex::encode(a.sk.to_bytes()), "identity_key": hex::encode(a.ik), "noise_secret": hex::encode(a.noise_secret), "noise_key": hex::encode(a.noise_pub) },
        "bob": { "identity_secret": hex::encode(b.sk.to_bytes()), "identity_key": hex::encode(b.ik), "noise_secret": hex::encode(b.noise_secret), "noise_key": hex::encode(b.noise_pub) },
        "first_message": first_message_keys(&a, &b, &messages[0]),
        "messages": messages,
    })
}

/// Re-derives the first message's keys from the documented construction, with primitives only.
fn first_message_keys(a: &Party, b: &Party, m0: &Value) -> Value {
    let wire = hex::decode(m0["wire"].as_str().unwrap()).unwrap();
    let msg = SignedMessage::decode(&wire).unwrap();
    let header = Header::decode(msg.header).unwrap();
    let initial = header.initial.as_ref().unwrap();
    let mut prologue = b"SREMP-1 first-contact\0".to_vec();
    prologue.extend_from_slice(&a.ik);
    prologue.extend_from_slice(&b.ik);
    let mut hs = snow::Builder::new("Noise_X_25519_ChaChaPoly_BLAKE2s".parse().unwrap())
        .local_private_key(&b.noise_secret)
        .unwrap()
        .prologue(&prologue)
        .unwrap()
        .build_responder()
        .unwrap();
    let mut seed = [0u8; 64];
    let n = hs.read_message(&initial.handshake, &mut seed).unwrap();
    assert_eq!(n, 32);
    assert_eq!(hs.get_remote_static().unwrap(), &a.noise_pub);
    let h = hs.get_handshake_hash().to_vec();
    assert_eq!(&h[..16], &header.session_id);
    let mut okm = [0u8; 64];
    hkdf::Hkdf::<Sha256>::new(Some(&h), &seed[..32])
        .expand(b"SREMP-1 ratchet init", &mut okm)
        .unwrap();
    let (rk0, ck0) = okm.split_at(32);
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(ck0).unwrap();
    mac.update(&[0x01]);
    let mk0 = mac.finalize().into_bytes();
    let mut ad = vec![1u8];
    ad.extend_from_slice(&a.ik);
    ad.extend_from_slice(&b.ik);
    ad.extend_from_slice(msg.header);
    let pt = ChaCha20Poly1305::new(&mk0)
        .decrypt(
            &[0u8; 12].into(),
            AeadPayload {
                msg: msg.ciphertext,
                aad: &ad,
            },
        )
        .unwrap();
    assert_eq!(hex::encode(pt), m0["payload"].as_str().unwrap());
    // The signature input, as documented.
    let mut signed = b"SREMP-1 message\0".to_vec();
    signed.push(1);
    signed.extend_from_slice(&a.ik);
    signed.extend_from_slice(&b.ik);
    signed.extend_from_slice(&(msg.header.len() as u32).to_be_bytes());
    signed.extend_from_slice(msg.header);
    signed.extend_from_slice(msg.ciphertext);
    a.vk.verify_strict(
        &signed,
        &ed25519_dalek::Signature::from_bytes(&msg.signature),
    )
    .unwrap();
    json!({
        "x_seed": hex::encode(&seed[..32]),
        "handshake_hash": hex::encode(&h),
        "root_key_0": hex::encode(rk0),
        "chain_key_0": hex::encode(ck0),
        "message_key_0": hex::encode(mk0),
        "associated_data": hex::encode(&ad),
        "signed_bytes": hex::encode(&signed),
    })
}

#[test]
fn conversation_matches_known_answers() {
    let got = conversation();
    if std::env::var_os("SREMP_WRITE_VECTORS").is_some() {
        std::fs::write(PATH, serde_json::to_string_pretty(&got).unwrap() + "\n").unwrap();
    }
    let want: Value = serde_json::from_str(&std::fs::read_to_string(PATH).unwrap()).unwrap();
    assert_eq!(got, want);
}

#[test]
fn stored_vectors_decrypt_with_a_fresh_receiver() {
    // Independent of the generator: Bob's keys and the stored bytes alone open Alice's
    // first-chain messages.
    let want: Value = serde_json::from_str(&std::fs::read_to_string(PATH).unwrap()).unwrap();
    let a = party(0xa1);
    let b = party(0xb2);
    let m0 = &want["messages"][0];
    let keys = first_message_keys(&a, &b, m0);
    assert_eq!(keys, want["first_message"]);
    let mut bob = None;
    for m in want["messages"].as_array().unwrap() {
        if m["from"] != "alice" {
            // Bob's reply needs Bob's fresh ratchet key, which only the generator knows.
            break;
        }
        let wire = hex::decode(m["wire"].as_str().unwrap()).unwrap();
        let msg = SignedMessage::decode(&wire).unwrap();
        if bob.is_none() {
            let header = Header::decode(msg.header).unwrap();
            bob = Some(
                accept(&b.ik, &b.noise_secret, &a.ik, &header)
                    .unwrap()
                    .session,
            );
        }
        let pt = open(bob.as_mut().unwrap(), &a.vk, &msg).unwrap();
        assert_eq!(hex::encode(pt), m["payload"].as_str().unwrap());
    }
}

/// docs/PROTOCOL.md, "The vector's random numbers": the generator rebuilt from the text (PCG32
/// key expansion, then the ChaCha20 keystream taken in order) and the documented draw offsets
/// give the vector's `seed`, ephemeral, ratchet keys and every `MessageId`.
#[test]
fn documented_generator_and_draw_order_reproduce_the_vector() {
    use rand_chacha::rand_core::{RngCore, SeedableRng};
    let want: Value = serde_json::from_str(&std::fs::read_to_string(PATH).unwrap()).unwrap();
    let mut state: u64 = RNG_SEED;
    let mut key = [0u8; 32];
    for chunk in key.chunks_exact_mut(4) {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(11_634_580_027_462_260_723);
        let x = ((((state >> 18) ^ state) >> 27) as u32).rotate_right((state >> 59) as u32);
        chunk.copy_from_slice(&x.to_le_bytes());
    }
    let mut ks = [0u8; 272];
    rand_chacha::ChaCha20Rng::from_seed(key).fill_bytes(&mut ks);
    let hex_at = |from: usize, len: usize| hex::encode(&ks[from..from + len]);
    let x25519_pub = |from: usize| {
        let mut s = [0u8; 32];
        s.copy_from_slice(&ks[from..from + 32]);
        hex::encode(x25519_dalek::PublicKey::from(&x25519_dalek::StaticSecret::from(s)).as_bytes())
    };
    assert_eq!(hex_at(32, 32), want["first_message"]["x_seed"]);
    let msgs = want["messages"].as_array().unwrap();
    // e, seed, A1; id1; id2; id3, B1; id4, A2; id5, B2
    for (i, at) in [96usize, 112, 128, 176, 224].into_iter().enumerate() {
        let payload = msgs[i]["payload"].as_str().unwrap();
        assert_eq!(&payload[6..38], hex_at(at, 16), "message {i} id");
    }
    // The ephemeral is in the first header; each ratchet key in the header of a message.
    assert!(msgs[0]["header"].as_str().unwrap().contains(&x25519_pub(0)));
    for (i, at) in [(0usize, 64usize), (2, 144), (3, 192), (4, 240)] {
        let header = msgs[i]["header"].as_str().unwrap();
        assert!(header.contains(&x25519_pub(at)), "message {i} ratchet key");
    }
}
