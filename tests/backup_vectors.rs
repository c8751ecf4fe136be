//! Known-answer vector for the backup file format (docs/PROTOCOL.md, "Store backups";
//! tests/vectors/backup.json).
//!
//! The expected file is built here independently of `sremp::backup::Writer`, from the
//! documented layout and the `chacha20poly1305` crate, then compared byte for byte with the
//! writer's output and the stored vector; the reader must return the records. Run with
//! `SREMP_REGEN_VECTORS=1` to rewrite the file after an intentional format change.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde_json::{json, Value};
use sremp::backup::{BackupKey, Reader, Writer};

const KEY: [u8; 32] = [0x42; 32];
const PREFIX: [u8; 19] = [
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18,
];

fn records() -> Vec<(u8, Vec<u8>, Vec<u8>)> {
    vec![
        (1, b"contact-a".to_vec(), b"alice".to_vec()),
        (4, vec![0, 0, 0, 0, 0, 0, 0, 1], b"hello".to_vec()),
    ]
}

/// The documented layout, built by hand.
fn by_the_spec() -> Vec<u8> {
    let mut header = Vec::new();
    header.extend_from_slice(b"SREMPBK1");
    header.extend_from_slice(&65536u32.to_be_bytes());
    header.extend_from_slice(&PREFIX);
    header.push(0);
    let mut plain = Vec::new();
    for (t, k, v) in records() {
        plain.push(1);
        plain.push(t);
        plain.extend_from_slice(&(k.len() as u32).to_be_bytes());
        plain.extend_from_slice(&k);
        plain.extend_from_slice(&(v.len() as u32).to_be_bytes());
        plain.extend_from_slice(&v);
    }
    plain.push(0);
    plain.extend_from_slice(&2u64.to_be_bytes());
    // One chunk: counter 0, last = 1.
    let mut nonce = PREFIX.to_vec();
    nonce.extend_from_slice(&0u32.to_be_bytes());
    nonce.push(1);
    let ct = XChaCha20Poly1305::new((&KEY).into())
        .encrypt(
            XNonce::from_slice(&nonce),
            Payload {
                msg: &plain,
                aad: &header,
            },
        )
        .unwrap();
    let mut file = header;
    file.extend_from_slice(&ct);
    file
}

#[test]
fn backup_vector() {
    let key = BackupKey::from_bytes(KEY);
    let mut w = Writer::new(Vec::new(), &key, PREFIX).unwrap();
    for (t, k, v) in records() {
        w.record(t, &k, &v).unwrap();
    }
    let (file, n, _) = w.finish().unwrap();
    assert_eq!(n, 2);
    assert_eq!(hex::encode(&file), hex::encode(by_the_spec()));
    let computed = json!({
        "key": hex::encode(KEY),
        "nonce_prefix": hex::encode(PREFIX),
        "records": records().iter().map(|(t, k, v)| json!({
            "tree": t, "key": hex::encode(k), "value": hex::encode(v)
        })).collect::<Vec<_>>(),
        "file": hex::encode(&file),
    });
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/backup.json");
    if std::env::var_os("SREMP_REGEN_VECTORS").is_some() {
        std::fs::write(&p, serde_json::to_string_pretty(&computed).unwrap() + "\n").unwrap();
    }
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    assert_eq!(stored, computed, "backup vector no longer matches");
    let mut r = Reader::new(&file[..], &key).unwrap();
    let mut got = Vec::new();
    while let Some(rec) = r.next_record().unwrap() {
        got.push(rec);
    }
    assert_eq!(got, records());
}
