//! Files to a group with the real binary (issue 15): alice creates a group with bob and carol
//! (both her contacts, not each other's), both accept. `sremp send-file --group G PATH --json`
//! at alice offers the file to each of them as a transfer of its own: bob auto-accepts (he
//! trusts alice), carol accepts by hand; both get the same bytes, alice's follower prints
//! per-member progress and exits 0 once both are done, and `sremp files --json` names the
//! group on each copy. Bob, who is not carol's contact, sending to the group reaches alice
//! only and reports carol as skipped.
//!
//! Every wait is bounded; all traffic stays on 127.0.0.1.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{introduce, BinNode, BinNodeOptions};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::time::{Duration, Instant};

fn make_file(path: &Path, len: usize) -> String {
    let mut x = 11u64;
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

fn transfers(node: &BinNode) -> Vec<Value> {
    match node.json(&["files"]) {
        Value::Array(v) => v,
        other => panic!("files --json is not an array: {other}"),
    }
}

/// Polls `f` (bounded) until it returns Some.
fn wait<T>(node: &BinNode, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n--- node log:\n{}",
            node.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn show(n: &BinNode, g: &str) -> Option<Value> {
    let o = n.cmd(&["group", "show", g, "--json"]);
    o.status
        .success()
        .then(|| serde_json::from_slice(&o.stdout).ok())
        .flatten()
}

#[test]
fn a_file_to_a_group_of_three() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<BinNode> = ["alice", "bob", "carol"]
        .iter()
        .map(|n| BinNode::new(dir.path(), &BinNodeOptions::loopback(n)))
        .collect();
    // Bob accepts files from trusted contacts on his own.
    let mut text = std::fs::read_to_string(&nodes[1].config).unwrap();
    text.push_str("[files]\nauto_accept_trusted_max_bytes = 104857600\n");
    std::fs::write(&nodes[1].config, text).unwrap();
    for n in nodes.iter_mut() {
        n.start();
    }
    let (a_id, b_id) = introduce(&nodes[0], &nodes[1]);
    let (_, c_id) = introduce(&nodes[0], &nodes[2]);
    let [alice, bob, carol] = &mut nodes[..] else {
        unreachable!()
    };
    bob.json(&["contacts", "trust", &a_id]);
    let created = alice.json(&["group", "create", "trio", "--members", "bob,carol"]);
    let g = created["id"].as_str().unwrap().to_string();
    for n in [&*bob, &*carol] {
        wait(n, "invitation", || show(n, &g));
        assert_eq!(n.json(&["group", "accept", &g])["state"], "accepted");
    }
    wait(alice, "both accepted at alice", || {
        let v = show(alice, &g)?;
        (v["members"]
            .as_array()?
            .iter()
            .filter(|m| m["state"] == "accepted")
            .count()
            == 3)
            .then_some(())
    });

    let src = dir.path().join("minutes.bin");
    let len = 2 * 1024 * 1024 + 77;
    let sha = make_file(&src, len);
    let (config, src2, g2) = (alice.config.clone(), src.clone(), g.clone());
    let follower = std::thread::spawn(move || {
        common::run_bin(&[
            "--config",
            config.to_str().unwrap(),
            "send-file",
            "--group",
            &g2,
            src2.to_str().unwrap(),
            "--json",
        ])
    });
    // Carol accepts her copy by hand.
    let offer = wait(carol, "the offer at carol", || {
        transfers(carol)
            .into_iter()
            .find(|t| t["state"] == "offered")
    });
    assert_eq!(offer["name"], "minutes.bin");
    assert_eq!(offer["sha256"], sha.as_str());
    let to = dir.path().join("carol-inbox");
    let id_c = offer["id"].as_str().unwrap().to_string();
    carol.json(&["files", "accept", &id_c, "--to", to.to_str().unwrap()]);

    let out = follower.join().unwrap();
    assert!(
        out.status.success(),
        "send-file --group failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        alice.logs()
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    // First the offer: one transfer per member, nobody skipped.
    let first = &lines[0];
    assert_eq!(first["group"], g.as_str(), "{first}");
    let copies = first["transfers"].as_array().unwrap();
    assert_eq!(copies.len(), 2, "{first}");
    assert!(first["skipped"].as_array().unwrap().is_empty(), "{first}");
    let mut peers: Vec<&str> = copies.iter().map(|t| t["peer"].as_str().unwrap()).collect();
    peers.sort();
    let mut want = vec![b_id.as_str(), c_id.as_str()];
    want.sort();
    assert_eq!(peers, want);
    // Then per-member progress lines, ending with both done.
    for t in copies {
        let id = t["id"].as_str().unwrap();
        let mine: Vec<&Value> = lines[1..].iter().filter(|l| l["id"] == id).collect();
        assert!(!mine.is_empty(), "no progress line for {id}: {lines:?}");
        assert_eq!(mine.last().unwrap()["state"], "done", "{lines:?}");
        assert_eq!(mine.last().unwrap()["group"], g.as_str());
    }
    // Alice's list names the group on both copies.
    let at_alice: Vec<Value> = transfers(alice)
        .into_iter()
        .filter(|t| t["group"] == g.as_str())
        .collect();
    assert_eq!(at_alice.len(), 2, "{at_alice:?}");
    assert!(at_alice.iter().all(|t| t["state"] == "done"));

    // Both recipients hold the same bytes.
    for n in [&*bob, &*carol] {
        let t = wait(n, "done at the recipient", || {
            transfers(n).into_iter().find(|t| t["state"] == "done")
        });
        let bytes = std::fs::read(t["path"].as_str().unwrap()).unwrap();
        assert_eq!(bytes.len(), len);
        assert_eq!(hex::encode(Sha256::digest(&bytes)), sha);
    }

    // Bob is not carol's contact: his copy goes to alice only, carol is reported skipped.
    let other = dir.path().join("from-bob.txt");
    std::fs::write(&other, b"hello group").unwrap();
    let v = bob.json(&[
        "send-file",
        "--group",
        &g,
        other.to_str().unwrap(),
        "--no-wait",
    ]);
    let copies = v["transfers"].as_array().unwrap();
    assert_eq!(copies.len(), 1, "{v}");
    assert_eq!(copies[0]["peer"], a_id.as_str());
    let skipped = v["skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{v}");
    assert_eq!(skipped[0]["member"], c_id.as_str());
    assert!(
        skipped[0]["reason"]
            .as_str()
            .unwrap()
            .contains("not our contact"),
        "{v}"
    );
    // A group we are not in is refused with a clear error.
    let o = bob.cmd(&[
        "send-file",
        "--group",
        "nosuchgroup",
        other.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("unknown group"),
        "{o:?}"
    );
}
