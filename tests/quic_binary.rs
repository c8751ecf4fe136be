//! QUIC with the real binary: `sremp run` nodes and a `sremp relay` on loopback, driven through
//! the CLI.
//!
//! - two nodes whose only reachable endpoint is QUIC (the advertised TCP port is dead): the
//!   message is delivered with path `direct-quic`, and garbage on a QUIC stream to the node is
//!   closed without harming it, as are an oversized and a truncated `u32be(len) || envelope`
//!   frame after a completed bound handshake (QUIC application code 1);
//! - a relay reached over QUIC by both nodes: delivery through it, and each node records the
//!   address the relay observed for it (`sremp status --json`, `observed_addresses`).
//!
//! Every wait is bounded; all traffic stays on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/quic_raw.rs"]
mod quic_raw;

use common::{free_port, introduce, BinNode, BinNodeOptions, BinRelay};
use serde_json::Value;
use std::time::{Duration, Instant};

/// A loopback UDP port that was free a moment ago.
fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .unwrap()
}

fn wait_for(node: &BinNode, what: &str, f: impl Fn(&Value) -> bool, args: &[&str]) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = node.json(args);
        if f(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {v:#}\n--- node log:\n{}",
            node.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn received(h: &Value, text: &str) -> Vec<Value> {
    h.as_array()
        .unwrap()
        .iter()
        .filter(|e| e["direction"] == "in" && e["text"] == text)
        .cloned()
        .collect()
}

/// Bob advertises a dead TCP port and a QUIC endpoint: QUIC is the only way in.
fn quic_only(name: &str) -> (BinNodeOptions, u16) {
    let q = free_udp_port();
    let mut o = BinNodeOptions::loopback(name);
    o.advertise = vec![
        format!("127.0.0.1:{}", free_port()),
        format!("quic://127.0.0.1:{q}"),
    ];
    o.extra = format!("[quic]\nlisten = \"127.0.0.1:{q}\"\n");
    (o, q)
}

/// A raw QUIC connection to `port` that sends garbage instead of a version header: the node
/// closes it with application code 1.
fn garbage_over_quic(port: u16) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ep = sremp::transport::QuicEndpoint::bind(
            "127.0.0.1:0".parse().unwrap(),
            sremp::transport::QuicSettings::default(),
        )
        .unwrap();
        let conn = ep
            .connect_raw(format!("127.0.0.1:{port}").parse().unwrap())
            .await
            .unwrap();
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        send.write_all(&[0xff; 64]).await.unwrap();
        let closed = tokio::time::timeout(Duration::from_secs(15), conn.closed())
            .await
            .expect("the node closes a QUIC connection that sends garbage");
        assert!(
            matches!(closed, quinn::ConnectionError::ApplicationClosed(ref c) if c.error_code == 1u32.into()),
            "{closed:?}"
        );
    });
}

/// Completes the bound handshake with the node at `port` by hand (as a stranger), then sends
/// `bytes` on the stream (and finishes it when `finish`): the node must close the QUIC
/// connection with application code 1.
fn bad_frame_after_handshake(port: u16, bytes: &[u8], finish: bool) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let ep = sremp::transport::QuicEndpoint::bind(
            "127.0.0.1:0".parse().unwrap(),
            sremp::transport::QuicSettings::default(),
        )
        .unwrap();
        let me = sremp::identity::UserIdentity::generate(
            "mallory",
            sremp::identity::Flags::default(),
            sremp::time::Timestamp(1),
            &mut rand::rngs::OsRng,
        )
        .unwrap();
        let addr = format!("127.0.0.1:{port}").parse().unwrap();
        let mut raw = tokio::time::timeout(Duration::from_secs(15), quic_raw::dial(&ep, addr, &me))
            .await
            .expect("the bound handshake completes");
        raw.send.write_all(bytes).await.unwrap();
        if finish {
            raw.send.finish().unwrap();
        }
        let closed = tokio::time::timeout(Duration::from_secs(15), raw.conn.closed())
            .await
            .expect("the node closes a QUIC connection with a bad frame");
        assert!(
            matches!(closed, quinn::ConnectionError::ApplicationClosed(ref c) if c.error_code == 1u32.into()),
            "{closed:?}"
        );
    });
}

#[test]
fn direct_delivery_over_quic_only() {
    let dir = tempfile::tempdir().unwrap();
    let (bob_opts, bob_udp) = quic_only("bob");
    let mut a = BinNode::new(dir.path(), &BinNodeOptions::loopback("alice"));
    let mut b = BinNode::new(dir.path(), &bob_opts);
    a.start();
    b.start();
    let (a_id, b_id) = introduce(&a, &b);
    let bs = b.json(&["status"]);
    assert_eq!(bs["quic_listen"], format!("127.0.0.1:{bob_udp}"), "{bs}");

    // Bad bytes on a QUIC stream: closed, and the node goes on serving.
    garbage_over_quic(bob_udp);
    // After a completed bound handshake: a frame declaring more than the 4 MiB limit, and a
    // frame cut short by the end of the stream. Each is closed; the node goes on serving.
    bad_frame_after_handshake(bob_udp, &u32::MAX.to_be_bytes(), false);
    bad_frame_after_handshake(bob_udp, &((4u32 << 20) + 1).to_be_bytes(), false);
    let mut cut = 1000u32.to_be_bytes().to_vec();
    cut.extend_from_slice(&[0x93; 10]);
    bad_frame_after_handshake(bob_udp, &cut, true);

    let out = a.json(&[
        "send",
        &b_id,
        "hello over quic",
        "--wait",
        "--timeout-secs",
        "20",
    ]);
    assert_eq!(out["status"], "delivered", "{out}\n{}", a.logs());
    assert_eq!(out["path"], "direct-quic", "{out}");
    let h = wait_for(
        &b,
        "bob receives",
        |h| !received(h, "hello over quic").is_empty(),
        &["messages"],
    );
    let got = received(&h, "hello over quic");
    assert_eq!(got.len(), 1, "{h:#}");
    assert_eq!(got[0]["peer"], a_id.as_str());
    // Alice's history says the same path.
    let ha = a.json(&["messages"]);
    let mine: Vec<&Value> = ha
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["direction"] == "out")
        .collect();
    assert_eq!(mine[0]["path"], "direct-quic", "{ha:#}");
    // Bob's node (its integrated relay) told Alice the address it saw for her.
    let s = a.json(&["status"]);
    let quic_listen = s["quic_listen"].as_str().unwrap().to_string();
    let obs = s["observed_addresses"].as_array().unwrap();
    assert!(
        obs.iter()
            .any(|o| o["relay"] == b_id.as_str() && o["address"] == quic_listen.as_str()),
        "{s:#}"
    );
}

#[test]
fn relay_over_quic_and_observed_addresses() {
    let dir = tempfile::tempdir().unwrap();
    let relay = BinRelay::start(dir.path(), "127.0.0.1:0", None);
    let quic_hint = relay.quic_hint.clone().expect("the relay serves QUIC");
    let relay_id = quic_hint.split('@').next().unwrap().to_string();
    // Bob: no direct path at all (dead TCP endpoint), home relay over QUIC.
    let mut bob = BinNodeOptions::loopback("bob");
    bob.advertise = vec![format!("127.0.0.1:{}", free_port())];
    bob.relays = vec![quic_hint.clone()];
    let mut alice = BinNodeOptions::loopback("alice");
    alice.relays = vec![quic_hint.clone()];
    let mut a = BinNode::new(dir.path(), &alice);
    let mut b = BinNode::new(dir.path(), &bob);
    a.start();
    b.start();
    let (_a_id, b_id) = introduce(&a, &b);
    for n in [&a, &b] {
        let s = wait_for(
            n,
            "registered at the relay over QUIC with an observed address",
            |s| {
                s["relays"][0]["connected"] == true
                    && !s["observed_addresses"].as_array().unwrap().is_empty()
            },
            &["status"],
        );
        assert_eq!(
            s["relays"][0]["endpoint"],
            quic_hint.split('@').nth(1).unwrap()
        );
        let o = &s["observed_addresses"][0];
        assert_eq!(o["relay"], relay_id.as_str(), "{s:#}");
        assert_eq!(o["address"], s["quic_listen"], "{s:#}");
        assert_eq!(s["nat_mapping"], "unknown", "{s:#}");
    }
    let out = a.json(&[
        "send",
        &b_id,
        "through the quic relay",
        "--wait",
        "--timeout-secs",
        "20",
    ]);
    assert_eq!(out["status"], "delivered", "{out}\n{}", a.logs());
    assert_eq!(out["path"], "relay", "{out}");
    let h = wait_for(
        &b,
        "bob receives",
        |h| !received(h, "through the quic relay").is_empty(),
        &["messages"],
    );
    assert_eq!(received(&h, "through the quic relay")[0]["path"], "relay");
    drop(relay);
}
