//! Outgoing connections refuse an outdated identity (issue 10's note, issue 9), with the real
//! binary: bob rotates his noise key (identity version 2) and alice pins it; then a process
//! holding bob's *old* key file (version 1, whose noise key was rotated out) answers at bob's
//! endpoint. Alice's delivery connection must refuse it (`Stale`, as an inbound handshake
//! would): her message stays queued instead of being acknowledged by the old key, and once the
//! real bob is back it is delivered. Loopback only; every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{introduce, BinNode, BinNodeOptions};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        let t = e.file_type().unwrap();
        if t.is_dir() {
            copy_dir(&e.path(), &target);
        } else if t.is_file() {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

fn status_of(node: &BinNode, id: &str) -> String {
    node.messages()
        .iter()
        .find(|e| e["id"] == id && e["direction"] == "out")
        .map(|e| e["status"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

fn pinned_version(node: &BinNode, id: &str) -> u64 {
    let v: Value = node.json(&["contacts", "list"]);
    let list = v
        .as_array()
        .cloned()
        .or_else(|| v["contacts"].as_array().cloned())
        .unwrap_or_default();
    list.iter()
        .find(|c| c["id"] == id)
        .and_then(|c| c["version"].as_u64())
        .unwrap_or_else(|| panic!("{id} not in {v}"))
}

#[test]
fn dialling_a_contact_refuses_an_older_identity_version() {
    let dir = tempfile::tempdir().unwrap();
    let bo = BinNodeOptions::loopback("bob");
    let mut a = BinNode::new(dir.path(), &BinNodeOptions::loopback("alice"));
    let mut b = BinNode::new(dir.path(), &bo);
    // The impostor: bob's config and port, and (below) a copy of bob's data before rotation.
    let mut old = BinNode::new(&dir.path().join("old"), &bo);
    a.start();
    b.start();
    let (a_id, b_id) = introduce(&a, &b);
    let out = a.json(&["send", &b_id, "hello", "--wait", "--timeout-secs", "20"]);
    assert_eq!(out["status"], "delivered", "{out}");

    // Bob's data (identity file version 1) is copied, then bob rotates his noise key.
    b.stop();
    copy_dir(&b.data, &old.data);
    b.start();
    let v = b.json(&["id", "rotate-noise-key"]);
    assert_eq!(v["version"], 2, "{v}");
    // Alice pins version 2 (bob tells his contacts; a message from him carries it too).
    let out = b.json(&["send", &a_id, "rotated", "--wait", "--timeout-secs", "20"]);
    assert_eq!(out["status"], "delivered", "{out}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while pinned_version(&a, &b_id) != 2 {
        assert!(
            Instant::now() < deadline,
            "alice did not pin bob's version 2:\n{}",
            a.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // The old key answers at bob's endpoint.
    b.stop();
    old.start();
    let id = a.send(&b_id, "not for the old key");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !a.logs().contains("older than the pinned version 2") {
        assert!(
            Instant::now() < deadline,
            "no refusal of the outdated identity at alice (status {}):\n{}",
            status_of(&a, &id),
            a.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // A few more attempts: never accepted by the old key.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        status_of(&a, &id),
        "queued",
        "the outdated identity took the message:\n{}",
        a.logs()
    );
    assert!(
        !old.messages()
            .iter()
            .any(|e| e["text"] == "not for the old key"),
        "the old key's node recorded it"
    );
    // Alice keeps running; the real bob gets it once he is back.
    old.stop();
    b.start();
    let deadline = Instant::now() + Duration::from_secs(30);
    while status_of(&a, &id) != "delivered" {
        assert!(
            Instant::now() < deadline,
            "not delivered to the real bob (status {}):\n{}",
            status_of(&a, &id),
            a.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    a.stop();
    b.stop();
}
