//! Known answers for file transfer (tests/vectors/files.json, docs/PROTOCOL.md "File
//! transfer"): the chunk key, one sealed chunk blob, its relay message id, and the encodings of
//! every file message and direct-stream envelope.
//!
//! The key and the chunk are re-derived here with `hkdf` and `chacha20poly1305` directly from
//! the text of the spec, independently of `sremp::files`, so the vector pins the spec, not just
//! the implementation. Inputs: transfer id 16×0x01, secret 32×0x02, sender identity key
//! 32×0x03, recipient identity key 32×0x04, nonce 24×0x05; a 2500-byte file in 1024-byte chunks
//! whose byte i is `i mod 251`; chunk 2 (452 bytes). Regenerate (only after a deliberate
//! protocol change) with `SREMP_WRITE_VECTORS=1 cargo test --test files_vectors`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sremp::files::chunk::{ChunkBlob, ChunkKey, Shape};
use sremp::files::offer::{FileMessage, Offer};
use sremp::files::TransferId;
use sremp::wire::file::{FileAck, FileData, FileNeed, FileOpen, FileSent};
use sremp::wire::Envelope;

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/files.json");

fn file() -> Vec<u8> {
    (0..2500u32).map(|i| (i % 251) as u8).collect()
}

fn compute() -> Value {
    let id = TransferId([1; 16]);
    let secret = [2u8; 32];
    let (sender, recipient) = ([3u8; 32], [4u8; 32]);
    let shape = Shape {
        size: 2500,
        chunk_size: 1024,
        total: 3,
    };
    let key = ChunkKey::derive(&id, &secret, &sender, &recipient);
    let data = file();
    let blob = ChunkBlob::seal_with_nonce(&key, &id, &shape, 2, &data[2048..], [5; 24]);
    let offer = Offer {
        id,
        name: "report.pdf".into(),
        size: 2500,
        chunk_size: 1024,
        total: 3,
        sha256: Sha256::digest(&data).into(),
        secret: zeroize::Zeroizing::new(secret),
    };
    let messages = [
        ("offer", FileMessage::Offer(offer)),
        ("accept", FileMessage::Accept(id)),
        ("reject", FileMessage::Reject(id, "no".into())),
        ("need", FileMessage::Need(id, vec![(0, 1), (2, 3)])),
        ("complete", FileMessage::Complete(id, true, String::new())),
        ("cancel", FileMessage::Cancel(id, "gone".into())),
    ];
    let envelopes = [
        (
            "file_open",
            Envelope::FileOpen(FileOpen { transfer_id: id.0 }),
        ),
        (
            "file_need",
            Envelope::FileNeed(FileNeed {
                transfer_id: id.0,
                missing: vec![(0, 1), (2, 3)],
            }),
        ),
        (
            "file_data",
            Envelope::FileData(FileData {
                blob: vec![0xaa, 0xbb],
            }),
        ),
        (
            "file_ack",
            Envelope::FileAck(FileAck {
                transfer_id: id.0,
                stored: 2,
                state: 1,
                error: String::new(),
            }),
        ),
        (
            "file_sent",
            Envelope::FileSent(FileSent { transfer_id: id.0 }),
        ),
    ];
    json!({
        "description": "File transfer: chunk key, chunk 2 of a 2500-byte file in 1024-byte chunks, file messages, direct-stream envelopes (docs/PROTOCOL.md, File transfer)",
        "transfer_id": hex::encode(id.0),
        "secret": hex::encode(secret),
        "sender_identity_key": hex::encode(sender),
        "recipient_identity_key": hex::encode(recipient),
        "size": 2500, "chunk_size": 1024, "total_chunks": 3,
        "file_sha256": hex::encode(Sha256::digest(&data)),
        "chunk_key": hex::encode(key.bytes()),
        "chunk_index": 2,
        "nonce": hex::encode([5u8; 24]),
        "plaintext": hex::encode(&data[2048..]),
        "chunk_blob": hex::encode(blob.encode()),
        "relay_message_id": ChunkBlob::relay_message_id(&id, 2),
        "messages": messages.iter().map(|(n, m)| json!({"name": n, "bytes": hex::encode(m.encode())})).collect::<Vec<_>>(),
        "envelopes": envelopes.iter().map(|(n, e)| json!({"name": n, "bytes": hex::encode(e.encode())})).collect::<Vec<_>>(),
    })
}

#[test]
fn files_vectors_match() {
    let got = compute();
    if std::env::var_os("SREMP_WRITE_VECTORS").is_some() {
        std::fs::write(PATH, serde_json::to_string_pretty(&got).unwrap() + "\n").unwrap();
    }
    let want: Value = serde_json::from_str(&std::fs::read_to_string(PATH).unwrap()).unwrap();
    assert_eq!(got, want, "tests/vectors/files.json does not match");
}

/// The chunk key and blob from the spec text alone.
#[test]
fn chunk_from_the_spec_text() {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(PATH).unwrap()).unwrap();
    let h = |k: &str| hex::decode(v[k].as_str().unwrap()).unwrap();
    let (id, secret, s, r) = (
        h("transfer_id"),
        h("secret"),
        h("sender_identity_key"),
        h("recipient_identity_key"),
    );
    // key = HKDF-SHA256(salt = transfer_id, ikm = secret, info = "SREMP-1 file chunk key" || s || r, 32)
    let mut info = b"SREMP-1 file chunk key".to_vec();
    info.extend_from_slice(&s);
    info.extend_from_slice(&r);
    let mut key = [0u8; 32];
    hkdf::Hkdf::<Sha256>::new(Some(&id), &secret)
        .expand(&info, &mut key)
        .unwrap();
    assert_eq!(hex::encode(key), v["chunk_key"].as_str().unwrap());
    // aad = "SREMP-1 file chunk\0" || transfer_id || u64be(index) || u64be(total) || u64be(size)
    let mut aad = b"SREMP-1 file chunk\0".to_vec();
    aad.extend_from_slice(&id);
    aad.extend_from_slice(&2u64.to_be_bytes());
    aad.extend_from_slice(&3u64.to_be_bytes());
    aad.extend_from_slice(&2500u64.to_be_bytes());
    let ct = XChaCha20Poly1305::new((&key).into())
        .encrypt(
            XNonce::from_slice(&h("nonce")),
            Payload {
                msg: &h("plaintext"),
                aad: &aad,
            },
        )
        .unwrap();
    // blob = [0x46, bin(16) id, 2, bin(24) nonce, bin ct]
    let mut blob = vec![0x95, 0x46, 0xc4, 16];
    blob.extend_from_slice(&id);
    blob.extend_from_slice(&[0x02, 0xc4, 24]);
    blob.extend_from_slice(&h("nonce"));
    blob.extend_from_slice(&[0xc5]);
    blob.extend_from_slice(&(ct.len() as u16).to_be_bytes());
    blob.extend_from_slice(&ct);
    assert_eq!(hex::encode(&blob), v["chunk_blob"].as_str().unwrap());
    // relay message id = u64be(SHA-256("SREMP-1 file chunk id" || id || u64be(2))[0..8])
    let d = Sha256::new()
        .chain_update(b"SREMP-1 file chunk id")
        .chain_update(&id)
        .chain_update(2u64.to_be_bytes())
        .finalize();
    assert_eq!(
        u64::from_be_bytes(d[..8].try_into().unwrap()),
        v["relay_message_id"].as_u64().unwrap()
    );
    // Every message and envelope decodes back to itself.
    for m in v["messages"].as_array().unwrap() {
        let b = hex::decode(m["bytes"].as_str().unwrap()).unwrap();
        assert_eq!(FileMessage::decode(&b).unwrap().encode(), b);
    }
    for e in v["envelopes"].as_array().unwrap() {
        let b = hex::decode(e["bytes"].as_str().unwrap()).unwrap();
        assert_eq!(Envelope::decode(&b).unwrap().encode(), b);
    }
}
