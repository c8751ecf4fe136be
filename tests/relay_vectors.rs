//! Known-answer vectors for the relay's signed constructions (tests/vectors/relay_signatures.json).
//!
//! Deterministic keys: client seed 32×0x11, relay seed 32×0x22, recipient seed 32×0x33;
//! handshake hash 32×0xaa, challenge nonce 32×0xbb. Each vector gives the exact signed message
//! (context prefix included) and the Ed25519 signature. `session_reset` is the seven-element
//! notice (still accepted), `session_reset_last_recorded` the eight-element one. Regenerate (only after a deliberate
//! protocol change) with `SREMP_WRITE_VECTORS=1 cargo test --test relay_vectors`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ed25519_dalek::SigningKey;
use serde_json::{json, Value};
use sremp::relay::auth::{self, SessionBinding};
use sremp::sig::SigContext;
use sremp::time::Timestamp;
use sremp::wire::relay::*;
use sremp::wire::Envelope;

const PATH: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/vectors/relay_signatures.json"
);

fn compute() -> Value {
    let client = SigningKey::from_bytes(&[0x11; 32]);
    let relay = SigningKey::from_bytes(&[0x22; 32]);
    let recipient = SigningKey::from_bytes(&[0x33; 32]);
    let (ck, rk, pk) = (
        client.verifying_key().to_bytes(),
        relay.verifying_key().to_bytes(),
        recipient.verifying_key().to_bytes(),
    );
    let b = SessionBinding {
        handshake_hash: [0xaa; 32],
        nonce: [0xbb; 32],
    };
    let with_prefix = |ctx: SigContext, body: &[u8]| {
        let mut v = ctx.prefix().to_vec();
        v.extend_from_slice(body);
        hex::encode(v)
    };

    let reg_sig = auth::sign_register(&client, &b, &rk);
    let mut retrieve = RetrieveMessages {
        identity: [0; 32],
        auth_signature: [0; 64],
        since: Some(Timestamp(1_700_000_000_000)),
        after: Some(RetrieveCursor {
            sender: pk,
            message_id: 7,
        }),
        limit: 50,
    };
    auth::sign_retrieve(&client, &b, &mut retrieve);
    let blob = b"end-to-end ciphertext".to_vec();
    let store_sig = auth::sign_store(&client, &pk, 42, &blob);
    let mut store_body = ck.to_vec();
    store_body.extend_from_slice(&pk);
    store_body.extend_from_slice(&42u64.to_be_bytes());
    store_body.extend_from_slice(&blob);
    let mut conf = DeliveryConfirmation {
        message_id: 42,
        sender: ck,
        delivered_to: [0; 32],
        timestamp: Timestamp(1_700_000_000_500),
        signature: [0; 64],
    };
    auth::sign_confirmation(&recipient, &mut conf);
    let mut conf_body = ck.to_vec();
    conf_body.extend_from_slice(&pk);
    conf_body.extend_from_slice(&42u64.to_be_bytes());
    conf_body.extend_from_slice(&1_700_000_000_500u64.to_be_bytes());
    // SESSION_RESET: the recipient could not decrypt message 42 (blob above), reason 1.
    let mut reset = SessionReset {
        message_id: 42,
        sender: ck,
        recipient: [0; 32],
        timestamp: Timestamp(1_700_000_000_700),
        reason: 1,
        digest: {
            use sha2::Digest;
            sha2::Sha256::digest(&blob).into()
        },
        signature: [0; 64],
        last_recorded: None,
    };
    auth::sign_session_reset(&recipient, &mut reset);
    // The same notice saying what the recipient last recorded from the sender (message 41).
    let mut recorded = SessionReset {
        last_recorded: Some(41),
        ..reset.clone()
    };
    auth::sign_session_reset(&recipient, &mut recorded);
    let mut recorded_body = ck.to_vec();
    recorded_body.extend_from_slice(&pk);
    recorded_body.extend_from_slice(&42u64.to_be_bytes());
    recorded_body.extend_from_slice(&1_700_000_000_700u64.to_be_bytes());
    recorded_body.push(1);
    recorded_body.extend_from_slice(&reset.digest);
    recorded_body.extend_from_slice(&41u64.to_be_bytes());
    let mut reset_body = ck.to_vec();
    reset_body.extend_from_slice(&pk);
    reset_body.extend_from_slice(&42u64.to_be_bytes());
    reset_body.extend_from_slice(&1_700_000_000_700u64.to_be_bytes());
    reset_body.push(1);
    reset_body.extend_from_slice(&reset.digest);
    let store_env = Envelope::StoreMessage(StoreMessage {
        recipient: pk,
        encrypted_blob: blob.clone(),
        sender_signature: store_sig,
        message_id: 42,
    });

    json!({
        "keys": {
            "client_seed": hex::encode([0x11u8; 32]), "client_key": hex::encode(ck),
            "relay_seed": hex::encode([0x22u8; 32]), "relay_key": hex::encode(rk),
            "recipient_seed": hex::encode([0x33u8; 32]), "recipient_key": hex::encode(pk),
            "handshake_hash": hex::encode(b.handshake_hash), "nonce": hex::encode(b.nonce),
        },
        "relay_register": {
            "signed_message": with_prefix(SigContext::RelayAuth, &auth::register_bytes(&b, &rk, &ck)),
            "signature": hex::encode(reg_sig),
        },
        "retrieve_messages": {
            "since": 1_700_000_000_000u64, "after_sender": "recipient_key", "after_id": 7, "limit": 50,
            "signed_message": with_prefix(SigContext::RelayAuth, &auth::retrieve_bytes(&b, &retrieve)),
            "signature": hex::encode(retrieve.auth_signature),
        },
        "store_message": {
            "message_id": 42, "blob": hex::encode(&blob),
            "signed_message": with_prefix(SigContext::StoreMessage, &store_body),
            "signature": hex::encode(store_sig),
            "envelope": hex::encode(store_env.encode()),
        },
        "delivery_confirmation": {
            "message_id": 42, "timestamp": 1_700_000_000_500u64,
            "signed_message": with_prefix(SigContext::DeliveryConfirmation, &conf_body),
            "signature": hex::encode(conf.signature),
            "envelope": hex::encode(Envelope::DeliveryConfirmation(conf.clone()).encode()),
        },
        "session_reset": {
            "message_id": 42, "timestamp": 1_700_000_000_700u64, "reason": 1,
            "digest": hex::encode(reset.digest),
            "signed_message": with_prefix(SigContext::SessionReset, &reset_body),
            "signature": hex::encode(reset.signature),
            "envelope": hex::encode(Envelope::SessionReset(reset.clone()).encode()),
        },
        "session_reset_last_recorded": {
            "message_id": 42, "timestamp": 1_700_000_000_700u64, "reason": 1, "last_recorded": 41,
            "digest": hex::encode(recorded.digest),
            "signed_message": with_prefix(SigContext::SessionReset, &recorded_body),
            "signature": hex::encode(recorded.signature),
            "envelope": hex::encode(Envelope::SessionReset(recorded.clone()).encode()),
        },
    })
}

#[test]
fn relay_signature_vectors() {
    let v = compute();
    if std::env::var_os("SREMP_WRITE_VECTORS").is_some() {
        std::fs::write(PATH, serde_json::to_string_pretty(&v).unwrap() + "\n").unwrap();
    }
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(PATH).unwrap()).unwrap();
    assert_eq!(stored, v);
    // The stored signatures verify over the stored messages with the stored keys.
    for (what, key) in [
        ("relay_register", "client_key"),
        ("retrieve_messages", "client_key"),
        ("store_message", "client_key"),
        ("delivery_confirmation", "recipient_key"),
        ("session_reset", "recipient_key"),
        ("session_reset_last_recorded", "recipient_key"),
    ] {
        let pk: [u8; 32] = hex::decode(stored["keys"][key].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&pk).unwrap();
        let msg = hex::decode(stored[what]["signed_message"].as_str().unwrap()).unwrap();
        let sig: [u8; 64] = hex::decode(stored[what]["signature"].as_str().unwrap())
            .unwrap()
            .try_into()
            .unwrap();
        vk.verify_strict(&msg, &ed25519_dalek::Signature::from_bytes(&sig))
            .unwrap();
    }
    // And the envelopes decode to what was signed.
    let env = hex::decode(
        stored["delivery_confirmation"]["envelope"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    match Envelope::decode(&env).unwrap() {
        Envelope::DeliveryConfirmation(c) => auth::verify_confirmation(&c).unwrap(),
        other => panic!("{other:?}"),
    }
    let env = hex::decode(stored["session_reset"]["envelope"].as_str().unwrap()).unwrap();
    match Envelope::decode(&env).unwrap() {
        Envelope::SessionReset(mut n) => {
            auth::verify_session_reset(&n).unwrap();
            // Any change to a signed field breaks it.
            assert_eq!(n.last_recorded, None, "a notice without the eighth element");
            n.reason = 2;
            assert!(auth::verify_session_reset(&n).is_err());
        }
        other => panic!("{other:?}"),
    }
    let env = hex::decode(
        stored["session_reset_last_recorded"]["envelope"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    match Envelope::decode(&env).unwrap() {
        Envelope::SessionReset(mut n) => {
            assert_eq!(n.last_recorded, Some(41));
            auth::verify_session_reset(&n).unwrap();
            // It is signed: dropping or changing it breaks the signature.
            n.last_recorded = None;
            assert!(auth::verify_session_reset(&n).is_err());
        }
        other => panic!("{other:?}"),
    }
}
