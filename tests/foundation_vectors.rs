//! Known-answer vectors for the foundation (tests/vectors/*.json).
//!
//! Every value is recomputed from the secrets in the file and compared byte for byte. Run with
//! `SREMP_REGEN_VECTORS=1` to rewrite the files after an intentional wire change (and update
//! docs/PROTOCOL.md with it).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use sremp::identity::{
    Flags, Identity, IdentityKey, IdentityVerifiedData, NoiseKey, UserIdentity, Username,
};
use sremp::noise::{prologue, Handshake};
use sremp::sig::SigContext;
use sremp::time::Timestamp;
use sremp::wire::chunk::{split, CHUNK_PAYLOAD_MAX};
use sremp::wire::{Envelope, Version, VersionHeader};
use std::path::PathBuf;

/// The encoding of the reserved envelope `DirectMessage{message_id, blob}` (kind 0x40,
/// docs/PROTOCOL.md): the vectors keep it as their example plaintext, though no 1.0 node sends
/// it and the crate has no type for it (it decodes as `Envelope::Unknown`).
fn direct_message_bytes(message_id: u64, blob: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    rmp::encode::write_array_len(&mut out, 2).unwrap();
    rmp::encode::write_uint(&mut out, 0x40).unwrap();
    rmp::encode::write_array_len(&mut out, 2).unwrap();
    rmp::encode::write_uint(&mut out, message_id).unwrap();
    rmp::encode::write_bin(&mut out, blob).unwrap();
    out
}

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(name)
}

/// Compares `computed` with the stored vector, or writes it when regenerating.
fn check(name: &str, computed: Value) {
    let p = path(name);
    if std::env::var_os("SREMP_REGEN_VECTORS").is_some() {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, serde_json::to_string_pretty(&computed).unwrap() + "\n").unwrap();
        return;
    }
    let stored: Value = serde_json::from_str(
        &std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display())),
    )
    .unwrap();
    assert_eq!(
        stored, computed,
        "vector {name} no longer matches the implementation"
    );
}

fn user(seed: u8, noise: u8, name: &str) -> UserIdentity {
    let sk = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
    let ns = x25519_dalek::StaticSecret::from([noise; 32]);
    let data = IdentityVerifiedData {
        username: Username::new(name).unwrap(),
        identity_key: IdentityKey(sk.verifying_key().to_bytes()),
        noise_key: NoiseKey(x25519_dalek::PublicKey::from(&ns).to_bytes()),
        flags: Flags {
            uses_relay: true,
            ..Flags::default()
        },
        extensions: None,
        version: 1,
        created: Timestamp(1_767_225_600_000),
    };
    let id = Identity::sign(data, &sk).unwrap();
    UserIdentity::from_secrets(&[seed; 32], &[noise; 32], id).unwrap()
}

#[test]
fn identity_vector() {
    let u = user(0x11, 0x22, "alice");
    let id = u.identity();
    let mut signed = SigContext::Identity.prefix().to_vec();
    signed.extend_from_slice(id.data_bytes());
    check(
        "identity.json",
        json!({
            "description": "Identity of 'alice', version 1, created 2026-01-01T00:00:00Z, flags uses_relay",
            "ed25519_seed": hex::encode([0x11u8; 32]),
            "x25519_secret": hex::encode([0x22u8; 32]),
            "identity_key": hex::encode(id.key().0),
            "noise_key": hex::encode(id.noise_key().0),
            "verified_data": hex::encode(id.data_bytes()),
            "signed_message": hex::encode(&signed),
            "signature": hex::encode(id.signature()),
            "identity_wire": hex::encode(id.to_bytes()),
            "contact_id": id.key().to_string(),
        }),
    );
    // The stored wire form verifies.
    assert_eq!(&Identity::from_bytes(&id.to_bytes()).unwrap(), id);
}

#[test]
fn version_header_vector() {
    let h = VersionHeader(Version::CURRENT);
    let newer = VersionHeader(Version { major: 1, minor: 3 });
    check(
        "version_header.json",
        json!({
            "header_1_0": hex::encode(h.encode()),
            "header_1_3": hex::encode(newer.encode()),
            "prologue_initiator_1_0_responder_1_3": hex::encode(prologue(h, newer)),
        }),
    );
}

#[test]
fn handshake_vector() {
    let alice = user(0x11, 0x22, "alice");
    let bob = user(0x33, 0x44, "bob");
    let p = prologue(
        VersionHeader(Version::CURRENT),
        VersionHeader(Version::CURRENT),
    );
    let ei = [0x55u8; 32];
    let er = [0x66u8; 32];
    let mut i =
        Handshake::with_fixed_ephemeral_for_testing_only(&alice, &p, Some(bob.key()), true, &ei)
            .unwrap();
    let mut r =
        Handshake::with_fixed_ephemeral_for_testing_only(&bob, &p, None, false, &er).unwrap();
    let m1 = i.write_message().unwrap();
    r.read_message(&m1).unwrap();
    let m2 = r.write_message().unwrap();
    i.read_message(&m2).unwrap();
    let m3 = i.write_message().unwrap();
    r.read_message(&m3).unwrap();
    let hash = i.handshake_hash();
    assert_eq!(hash, r.handshake_hash());
    let (mut isend, _, peer_b) = i.finish().unwrap();
    let (_, mut rrecv, peer_a) = r.finish().unwrap();
    assert_eq!(peer_b.key(), bob.key());
    assert_eq!(peer_a.key(), alice.key());
    let env = direct_message_bytes(7, b"hello bob");
    let mut frame = Vec::new();
    isend.seal_encoded(&env, &mut frame).unwrap();
    let got = rrecv
        .open(&frame[2..], std::time::Instant::now())
        .unwrap()
        .unwrap();
    assert_eq!(got, Envelope::Unknown { kind: 0x40 });
    check(
        "handshake_xx.json",
        json!({
            "protocol": sremp::noise::PATTERN,
            "prologue": hex::encode(&p),
            "initiator": {
                "ed25519_seed": hex::encode([0x11u8; 32]),
                "static_secret": hex::encode([0x22u8; 32]),
                "ephemeral_secret": hex::encode(ei),
                "identity_wire": hex::encode(alice.identity().to_bytes()),
            },
            "responder": {
                "ed25519_seed": hex::encode([0x33u8; 32]),
                "static_secret": hex::encode([0x44u8; 32]),
                "ephemeral_secret": hex::encode(er),
                "identity_wire": hex::encode(bob.identity().to_bytes()),
            },
            "message_1": hex::encode(&m1),
            "message_2": hex::encode(&m2),
            "message_3": hex::encode(&m3),
            "handshake_hash": hex::encode(hash),
            "first_transport_plaintext": hex::encode(&env),
            "first_transport_frame": hex::encode(&frame),
        }),
    );
}

#[test]
fn chunk_vector() {
    // A DirectMessage whose blob is bytes (i mod 251) for i in 0..70000: too large for one frame.
    let blob: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
    let encoded = direct_message_bytes(1, &blob);
    let chunks: Vec<Value> = split(9, &encoded)
        .map(|c| {
            let bytes = Envelope::Chunk(c.clone()).encode();
            use sha2::Digest;
            json!({
                "chunk_index": c.header.chunk_index,
                "chunk_size": c.header.chunk_size,
                "envelope_prefix": hex::encode(&bytes[..24]),
                "envelope_len": bytes.len(),
                "envelope_sha256": hex::encode(sha2::Sha256::digest(&bytes)),
            })
        })
        .collect();
    use sha2::Digest;
    check(
        "chunk.json",
        json!({
            "description": "Envelope DirectMessage{message_id: 1, blob: (i mod 251) for i in 0..70000}, chunked with chunk message_id 9",
            "chunk_payload_max": CHUNK_PAYLOAD_MAX,
            "envelope_len": encoded.len(),
            "envelope_prefix": hex::encode(&encoded[..16]),
            "envelope_sha256": hex::encode(sha2::Sha256::digest(&encoded)),
            "chunks": chunks,
        }),
    );
}
