//! File transfer against bad input (issue 15): a misbehaving sender (an in-process node that
//! sends crafted file messages and chunks) and a real `sremp run` recipient.
//!
//! - offers whose names would leave the target directory (`../`, absolute, NUL, separators,
//!   `..`) or whose chunk count does not match the size are refused, recorded as failed, and
//!   create nothing anywhere;
//! - a tampered chunk, a chunk beyond the declared count and a chunk of the wrong size are
//!   refused (counted in `refused`, never written), and the transfer still completes with the
//!   right hash from the genuine chunks.
//!
//! Every wait is bounded; all traffic stays on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{BinNode, BinNodeOptions};
use serde_json::Value;
use sremp::config::Config;
use sremp::files::chunk::{ChunkBlob, ChunkKey};
use sremp::files::offer::{FileMessage, Offer};
use sremp::files::TransferId;
use sremp::identity::IdentityKey;
use sremp::node::Node;
use sremp::relay::RelayClient;
use std::path::Path;
use std::time::{Duration, Instant};

fn transfers(node: &BinNode) -> Vec<Value> {
    match node.json(&["files"]) {
        Value::Array(v) => v,
        other => panic!("files --json is not an array: {other}"),
    }
}

async fn wait_transfer(node: &BinNode, id: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(t) = transfers(node).into_iter().find(|t| t["id"] == id) {
            if f(&t) {
                return t;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {t:#}\n{}",
                node.logs()
            );
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            node.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn alice_config(dir: &Path, extra: &str) -> Config {
    let text = format!(
        "data_dir = \"{}\"\nusername = \"alice\"\n[listen]\naddress = \"127.0.0.1:0\"\n[node]\ndirect_timeout_ms = 1000\nack_timeout_ms = 3000\nretry_initial_ms = 100\nretry_max_ms = 400\n[files]\n{extra}",
        dir.join("alice").display()
    );
    Config::parse(&text, Path::new("test")).unwrap()
}

fn bob(dir: &Path) -> BinNode {
    let mut b = BinNode::new(dir, &BinNodeOptions::loopback("bob"));
    let mut text = std::fs::read_to_string(&b.config).unwrap();
    text.push_str("[files]\nauto_accept_trusted_max_bytes = 10000000\n");
    std::fs::write(&b.config, text).unwrap();
    b.start();
    b
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offers_with_bad_names_or_shapes_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let b = bob(dir.path());
    let alice = Node::start(&alice_config(dir.path(), "")).await.unwrap();
    let (b_id, b_card) = b.card();
    alice.node.add_contact(&b_card).unwrap();
    b.json(&["contacts", "add", &alice.node.card().to_text()]);
    b.json(&["contacts", "trust", &alice.node.id().to_string()]);
    let good = |name: &str| Offer {
        id: TransferId::random(),
        name: name.into(),
        size: 10,
        chunk_size: 1024,
        total: 1,
        sha256: [0; 32],
        secret: zeroize::Zeroizing::new([1; 32]),
    };
    let mut cases = Vec::new();
    for name in [
        "../evil.txt",
        "/tmp/sremp-abs.txt",
        "a\0b",
        "sub/dir.txt",
        "..",
        "",
        ".sremp-x.part",
        "a\\b",
    ] {
        cases.push((good(name), "bad file name"));
    }
    let mut shape = good("fine.txt");
    shape.total = 7; // more chunks than 10 bytes can have
    cases.push((shape, "chunks"));
    let mut tiny = good("fine.txt");
    tiny.chunk_size = 1; // below the minimum
    cases.push((tiny, "chunk size"));
    for (o, _) in &cases {
        sremp::node::files::send_message(&alice.node, &b_id, &FileMessage::Offer(o.clone()), None)
            .await
            .unwrap();
    }
    for (o, why) in &cases {
        let t = wait_transfer(&b, &o.id.to_string(), "the refusal", |t| {
            t["state"] == "failed"
        })
        .await;
        assert!(t["error"].as_str().unwrap().contains(why), "{why}: {t}");
        assert!(t["dir"].is_null(), "{t}");
    }
    // Nothing was created: not in the download dir, not where the names point.
    assert!(
        !b.data.join("downloads").exists()
            || std::fs::read_dir(b.data.join("downloads"))
                .unwrap()
                .next()
                .is_none()
    );
    assert!(!b.data.join("evil.txt").exists());
    assert!(!dir.path().join("evil.txt").exists());
    assert!(!Path::new("/tmp/sremp-abs.txt").exists());
    // Accepting a refused offer is refused too.
    let o = b.cmd(&["files", "accept", &cases[0].0.id.to_string()]);
    assert!(!o.status.success());
    // The node is still fine: a genuine file still works.
    let src = dir.path().join("ok.txt");
    std::fs::write(&src, b"hello").unwrap();
    let v = sremp::node::files::send_file(&alice.node, &b_id, &src)
        .await
        .unwrap();
    let t = wait_transfer(&b, &v.id, "the genuine file", |t| t["state"] == "done").await;
    assert_eq!(
        std::fs::read(t["path"].as_str().unwrap()).unwrap(),
        b"hello"
    );
    alice.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_and_out_of_shape_chunks_are_refused_never_written() {
    let dir = tempfile::tempdir().unwrap();
    let b = bob(dir.path());
    // 32 chunks of 32 KiB at 256 KiB/s: about 4 s, time to inject before the last arrives.
    let alice = Node::start(&alice_config(
        dir.path(),
        "chunk_size = 32768\nmax_send_rate = 262144\n",
    ))
    .await
    .unwrap();
    let (b_id, b_card) = b.card();
    alice.node.add_contact(&b_card).unwrap();
    b.json(&["contacts", "add", &alice.node.card().to_text()]);
    b.json(&["contacts", "trust", &alice.node.id().to_string()]);
    let src = dir.path().join("data.bin");
    let data: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i * 7 + i / 256) as u8)
        .collect();
    std::fs::write(&src, &data).unwrap();
    let v = sremp::node::files::send_file(&alice.node, &b_id, &src)
        .await
        .unwrap();
    wait_transfer(&b, &v.id, "bob receiving", |t| t["state"] == "receiving").await;
    // The chunk key, as the sender holds it.
    let rec: Value = serde_json::from_slice(
        &std::fs::read(
            dir.path()
                .join("alice/files")
                .join(format!("{}.json", v.id)),
        )
        .unwrap(),
    )
    .unwrap();
    let mut secret = [0u8; 32];
    hex::decode_to_slice(rec["secret"].as_str().unwrap(), &mut secret).unwrap();
    let id: TransferId = v.id.parse().unwrap();
    let bob_key: IdentityKey = b_id.parse().unwrap();
    let key = ChunkKey::derive(&id, &secret, &alice.node.id().0, &bob_key.0);
    let shape = sremp::files::chunk::Shape {
        size: data.len() as u64,
        chunk_size: 32768,
        total: 32,
    };
    // A genuine last chunk with one bit flipped; one past the end; one of the wrong size.
    let mut tampered = ChunkBlob::seal(
        &mut rand::rngs::OsRng,
        &key,
        &id,
        &shape,
        31,
        &data[31 * 32768..],
    );
    tampered.ciphertext[100] ^= 0x01;
    let beyond = ChunkBlob::seal(&mut rand::rngs::OsRng, &key, &id, &shape, 32, &[0u8; 32768]);
    let short = ChunkBlob::seal(&mut rand::rngs::OsRng, &key, &id, &shape, 30, &[0u8; 100]);
    // Delivered the way a relay would: stored at Bob's node as Alice.
    let endpoint = b.json(&["status"])["listen"].as_str().unwrap().to_string();
    let (client, _events) = RelayClient::connect(
        &endpoint,
        &alice.node.identity(),
        Some(bob_key),
        Default::default(),
    )
    .await
    .unwrap();
    for (n, blob) in [tampered, beyond, short].into_iter().enumerate() {
        client
            .store(bob_key, blob.encode(), 0x7e57_0000 + n as u64)
            .await
            .unwrap();
    }
    let t = wait_transfer(&b, &v.id, "done with the genuine chunks", |t| {
        t["state"] == "done"
    })
    .await;
    assert_eq!(t["refused"], 3, "{t}");
    assert_eq!(std::fs::read(t["path"].as_str().unwrap()).unwrap(), data);
    assert!(b.logs().contains("chunk refused"));
    alice.shutdown().await.unwrap();
}
