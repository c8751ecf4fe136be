//! File transfer over QUIC with the real binary (issue 15): bob's only reachable endpoint is
//! QUIC (his advertised TCP port is dead), so alice's node must open the direct file stream
//! over QUIC. The file arrives byte-identical, and both sides say so in `via`
//! (`sremp send-file --json` progress lines and `sremp files --json`).
//!
//! Every wait is bounded; all traffic stays on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{free_port, introduce, BinNode, BinNodeOptions};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::{Duration, Instant};

/// A loopback UDP port that was free a moment ago.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap()
}

fn make_file(path: &Path, len: usize) -> String {
    let mut x = 7u64;
    let mut data = Vec::with_capacity(len + 8);
    while data.len() < len {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        data.extend_from_slice(&x.to_le_bytes());
    }
    data.truncate(len);
    std::fs::write(path, &data).unwrap();
    hex::encode(Sha256::digest(&data))
}

fn transfer(node: &BinNode, id: &str) -> Option<Value> {
    match node.json(&["files"]) {
        Value::Array(v) => v.into_iter().find(|t| t["id"] == id),
        other => panic!("files --json is not an array: {other}"),
    }
}

fn wait_transfer(node: &BinNode, id: &str, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let t = transfer(node, id);
        if let Some(t) = &t {
            if f(t) {
                return t.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {t:?}\n--- node log:\n{}",
            node.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn file_over_quic_when_tcp_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let q = free_udp_port();
    let mut bob = BinNodeOptions::loopback("bob");
    bob.advertise = vec![
        format!("127.0.0.1:{}", free_port()),
        format!("quic://127.0.0.1:{q}"),
    ];
    bob.extra = format!("[quic]\nlisten = \"127.0.0.1:{q}\"\n");
    let mut a = BinNode::new(dir.path(), &BinNodeOptions::loopback("alice"));
    let mut b = BinNode::new(dir.path(), &bob);
    a.start();
    b.start();
    let (_a_id, b_id) = introduce(&a, &b);
    let src = dir.path().join("over-quic.bin");
    let len = 3 * 1024 * 1024 + 4321;
    let sha = make_file(&src, len);

    // Alice follows the transfer with JSON progress lines while bob accepts by hand.
    let (config, src2, b2) = (a.config.clone(), src.clone(), b_id.clone());
    let follower = std::thread::spawn(move || {
        common::run_bin(&[
            "--config",
            config.to_str().unwrap(),
            "send-file",
            &b2,
            src2.to_str().unwrap(),
            "--json",
        ])
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let offered = loop {
        let offers = match b.json(&["files"]) {
            Value::Array(v) => v,
            other => panic!("{other}"),
        };
        if let Some(t) = offers.into_iter().find(|t| t["state"] == "offered") {
            break t;
        }
        assert!(
            Instant::now() < deadline,
            "no offer at bob\n{}\n{}",
            a.logs(),
            b.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let id = offered["id"].as_str().unwrap().to_string();
    let to = dir.path().join("inbox");
    let v = b.json(&["files", "accept", &id, "--to", to.to_str().unwrap()]);
    assert_eq!(v["state"], "receiving", "{v}");

    let got = wait_transfer(&b, &id, "bob done", |t| t["state"] == "done");
    assert_eq!(got["via"], "direct-quic", "{got}\n{}", b.logs());
    let saved = std::path::PathBuf::from(got["path"].as_str().unwrap());
    let bytes = std::fs::read(&saved).unwrap();
    assert_eq!(bytes.len(), len);
    assert_eq!(hex::encode(Sha256::digest(&bytes)), sha);
    assert_eq!(got["refused"], 0);

    let sent = wait_transfer(&a, &id, "alice done", |t| t["state"] == "done");
    assert_eq!(sent["via"], "direct-quic", "{sent}\n{}", a.logs());
    assert_eq!(sent["chunks_sent"], sent["chunks_total"], "{sent}");

    // The follower exits 0 once done; its progress lines name the path.
    let out = follower.join().unwrap();
    assert!(
        out.status.success(),
        "send-file failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        a.logs()
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = lines.last().expect("progress lines");
    assert_eq!(last["state"], "done", "{lines:?}");
    assert_eq!(last["via"], "direct-quic", "{lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| l["via"].is_null() || l["via"] == "direct-quic"),
        "{lines:?}"
    );
}
