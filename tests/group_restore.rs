//! Group sender keys after a restore, with the real binary (issue 14).
//!
//! A member restored from an older backup holds its own sender-key chain as it was at the
//! backup; the messages it sent after the backup used the numbers that follow. Sending on the
//! restored chain would encrypt new texts under message keys (and nonces) already used.
//! `sremp restore` marks the store, and the node replaces its chain in every group by a fresh
//! generation at its next start, sent to every member (docs/PROTOCOL.md, "Sender keys after a
//! restore").
//!
//! - `restored_member_sends_on_a_fresh_sender_key_generation`: bob backs up, sends, is
//!   restored, sends again; alice and carol read every message, and no (generation, seq) of
//!   bob's appears twice at either.
//! - `reused_group_message_key_is_refused_as_conflicting_and_logged_at_warn`: the same, with
//!   the restore's mark removed by hand (what a restore did before the fix): bob's next message
//!   reuses a number alice already decrypted, with another text; alice drops it as
//!   `conflicting_replay` and logs a WARN naming the possible key reuse.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{introduce, BinNode, BinNodeOptions};
use serde_json::Value;
use sremp::store::{Batch, SledStore, Store, Tree};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(30);

fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Polls `f` (bounded) until it returns Some.
fn wait<T>(node: &BinNode, what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}\n--- node log:\n{}",
            tail(&node.logs(), 80)
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

fn member_state(v: &Value, name: &str) -> String {
    v["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["name"] == name)
        .map(|m| m["state"].as_str().unwrap().to_string())
        .unwrap_or_default()
}

/// The group messages `n` received from `from` (contact id): (text, generation, seq).
fn received_from(n: &BinNode, g: &str, from: &str) -> Vec<(String, u64, u64)> {
    let Value::Array(v) = n.json(&["messages", "--group", g]) else {
        panic!("not an array");
    };
    v.iter()
        .filter(|e| e["direction"] == "in" && e["group"]["kind"] == "message" && e["peer"] == from)
        .map(|e| {
            (
                e["text"].as_str().unwrap().to_string(),
                e["group"]["generation"].as_u64().unwrap_or(u64::MAX),
                e["group"]["seq"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn wait_texts(n: &BinNode, g: &str, from: &str, want: &[&str]) {
    wait(n, &format!("{want:?}"), T, || {
        let got = received_from(n, g, from);
        want.iter()
            .all(|w| got.iter().any(|(t, _, _)| t == w))
            .then_some(())
    });
}

struct Net {
    dir: tempfile::TempDir,
    alice: BinNode,
    bob: BinNode,
    carol: BinNode,
    bob_id: String,
    g: String,
}

/// alice creates a group with bob and carol (all contacts of each other); both accept; bob
/// sends `b1`, which both read.
fn setup() -> Net {
    let dir = tempfile::tempdir().unwrap();
    let mut alice = BinNode::new(dir.path(), &BinNodeOptions::loopback("alice"));
    let mut bob = BinNode::new(dir.path(), &BinNodeOptions::loopback("bob"));
    let mut carol = BinNode::new(dir.path(), &BinNodeOptions::loopback("carol"));
    alice.start();
    bob.start();
    carol.start();
    let (_, bob_id) = introduce(&alice, &bob);
    introduce(&alice, &carol);
    introduce(&bob, &carol);
    let g = alice.json(&["group", "create", "team", "--members", "bob,carol"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    for n in [&bob, &carol] {
        wait(n, "invitation", T, || show(n, &g));
        n.json(&["group", "accept", &g]);
    }
    for n in [&alice, &bob, &carol] {
        wait(n, "everyone accepted", T, || {
            let v = show(n, &g)?;
            ["alice", "bob", "carol"]
                .iter()
                .all(|m| member_state(&v, m) == "accepted")
                .then_some(())
        });
    }
    bob.json(&["send", "--group", &g, "b1"]);
    for n in [&alice, &carol] {
        wait_texts(n, &g, &bob_id, &["b1"]);
    }
    Net {
        dir,
        alice,
        bob,
        carol,
        bob_id,
        g,
    }
}

/// `sremp backup` of bob's running node, then `after` texts sent and read by alice and carol,
/// then bob stopped and restored from the backup with `sremp restore --force`.
fn backup_send_restore(net: &mut Net, after: &[&str]) {
    let backup = net.dir.path().join("bob.backup");
    let key = net.dir.path().join("bob.key");
    let (b, k) = (backup.to_str().unwrap(), key.to_str().unwrap());
    net.bob.json(&["backup", "--out", b, "--key", k]);
    for t in after {
        net.bob.json(&["send", "--group", &net.g, t]);
    }
    for n in [&net.alice, &net.carol] {
        wait_texts(n, &net.g, &net.bob_id, after);
    }
    net.bob.stop();
    let r = net.bob.json(&["restore", b, "--key", k, "--force"]);
    assert!(r["records"].as_u64().unwrap() > 0, "{r}");
}

fn sender_key(n: &BinNode, g: &str) -> (u64, u64) {
    let v = show(n, g).unwrap();
    (
        v["sender_key"][0].as_u64().unwrap(),
        v["sender_key"][1].as_u64().unwrap(),
    )
}

#[test]
fn restored_member_sends_on_a_fresh_sender_key_generation() {
    let mut net = setup();
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    backup_send_restore(&mut net, &["b2", "b3", "b4"]);
    net.bob.start();
    for t in ["b5", "b6", "b7"] {
        net.bob.json(&["send", "--group", &net.g, t]);
    }
    let all = ["b1", "b2", "b3", "b4", "b5", "b6", "b7"];
    for n in [&net.alice, &net.carol] {
        wait_texts(n, &net.g, &net.bob_id, &all);
        let got = received_from(n, &net.g, &net.bob_id);
        let mut texts: Vec<&str> = got.iter().map(|(t, _, _)| t.as_str()).collect();
        texts.sort();
        assert_eq!(texts, all, "each once: {got:?}");
        let numbers: BTreeSet<(u64, u64)> = got.iter().map(|(_, g, s)| (*g, *s)).collect();
        assert_eq!(
            numbers.len(),
            got.len(),
            "a (generation, seq) used twice: {got:?}"
        );
        for (t, g, s) in &got {
            let old = ["b1", "b2", "b3", "b4"].contains(&t.as_str());
            assert_eq!(*g == 0, old, "{t} at ({g}, {s}): {got:?}");
            if !old {
                assert!(*g >= before, "{t} at ({g}, {s}): {got:?}");
            }
        }
        let v = show(n, &net.g).unwrap();
        assert_eq!(v["refused"], serde_json::json!({}), "{v}");
    }
    // The restored node replaced its chain before sending: a generation at least the
    // restore time, numbered from 0 (three messages sent on it).
    let (generation, next) = sender_key(&net.bob, &net.g);
    assert!(generation >= before, "generation {generation} < {before}");
    assert_eq!(next, 3);
    assert!(
        net.bob
            .logs()
            .contains("group sender key replaced by a new generation"),
        "{}",
        tail(&net.bob.logs(), 40)
    );
    // The mark is gone: a second start does not re-key again.
    net.bob.stop();
    net.bob.start();
    assert_eq!(sender_key(&net.bob, &net.g), (generation, 3));
}

#[test]
fn reused_group_message_key_is_refused_as_conflicting_and_logged_at_warn() {
    let mut net = setup();
    backup_send_restore(&mut net, &["b2"]);
    // What a restore did before the fix: no mark, so no new generation.
    {
        let store = SledStore::open_checked(&net.bob.data.join("db")).unwrap();
        let mut batch = Batch::new();
        // `sremp::backup::GROUPS_RESTORED_KEY`, spelled out so this test also runs on the
        // code before the fix (a different key would leave the mark: the next line fails).
        batch.delete(Tree::Meta, b"group/restored".to_vec());
        store.commit(batch).unwrap();
        store.close().unwrap();
    }
    net.bob.start();
    assert_eq!(sender_key(&net.bob, &net.g), (0, 1), "the restored chain");
    // (0, 1) again, another text: alice and carol decrypted "b2" at that number.
    net.bob.json(&["send", "--group", &net.g, "reused"]);
    for n in [&net.alice, &net.carol] {
        let v = wait(n, "the refusal", T, || {
            let v = show(n, &net.g)?;
            v["refused"]["conflicting_replay"].as_u64().map(|_| v)
        });
        assert_eq!(v["refused"]["conflicting_replay"], 1, "{v}");
        let got = received_from(n, &net.g, &net.bob_id);
        assert!(got.iter().all(|(t, _, _)| t != "reused"), "{got:?}");
        let warn = n
            .logs()
            .lines()
            .any(|l| l.contains("WARN") && l.contains("possible key reuse") && l.contains("seq=1"));
        assert!(warn, "{}", tail(&n.logs(), 40));
    }
}
