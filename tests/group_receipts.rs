//! Delivery status for group members reached through the creator, with the real binary
//! (issue 14): bob and carol are not each other's contacts, so their messages reach each
//! other through alice, the creator. The status of bob's copy to alice used to say only that
//! alice had it; now carol's node sends bob a receipt signed by carol (through alice, who can
//! neither forge nor alter it), and bob's copy shows `delivered_to` with carol in it — in
//! `messages --group --json` and in the text form of `messages --group`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{introduce, BinNode, BinNodeOptions};
use serde_json::Value;
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

fn accepted(v: &Value) -> usize {
    v["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["state"] == "accepted")
        .count()
}

fn entries(n: &BinNode, g: &str) -> Vec<Value> {
    match n.json(&["messages", "--group", g]) {
        Value::Array(v) => v,
        other => panic!("not an array: {other}"),
    }
}

/// Our copy of `text` to `to` (contact id).
fn copy_to(n: &BinNode, g: &str, text: &str, to: &str) -> Option<Value> {
    entries(n, g)
        .into_iter()
        .find(|e| e["direction"] == "out" && e["text"] == text && e["peer"] == to)
}

#[test]
fn a_member_reached_through_the_creator_confirms_delivery_with_a_signed_receipt() {
    let dir = tempfile::tempdir().unwrap();
    let mut alice = BinNode::new(dir.path(), &BinNodeOptions::loopback("alice"));
    let mut bob = BinNode::new(dir.path(), &BinNodeOptions::loopback("bob"));
    let mut carol = BinNode::new(dir.path(), &BinNodeOptions::loopback("carol"));
    alice.start();
    bob.start();
    carol.start();
    let (alice_id, bob_id) = introduce(&alice, &bob);
    let (_, carol_id) = introduce(&alice, &carol);
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
            (accepted(&show(n, &g)?) == 3).then_some(())
        });
    }
    for (from, text, far) in [
        (&bob, "from bob", &carol_id),
        (&carol, "from carol", &bob_id),
    ] {
        let sent = from.json(&["send", "--group", &g, text]);
        let to_alice = sent["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["peer"] == alice_id.as_str())
            .cloned()
            .unwrap();
        assert_eq!(
            to_alice["group"]["forwarded_to"],
            serde_json::json!([far]),
            "{sent}"
        );
        assert_eq!(
            to_alice["group"]["delivered_to"],
            serde_json::json!([]),
            "{sent}"
        );
        let copy = wait(from, "the signed receipt", T, || {
            copy_to(from, &g, text, &alice_id)
                .filter(|e| e["group"]["delivered_to"] == serde_json::json!([far]))
        });
        assert_eq!(copy["group"]["forwarded_to"], serde_json::json!([far]));
        // The text form names the forwarded member as delivered.
        let o = from.cmd(&["messages", "--group", &g]);
        assert!(o.status.success());
        let out = String::from_utf8_lossy(&o.stdout).to_string();
        let line = out.lines().find(|l| l.contains(text)).unwrap_or_default();
        assert!(line.contains(&format!("+{} delivered", &far[..8])), "{out}");
    }
    // Nothing was refused anywhere, and the receipts did not show as messages.
    for n in [&alice, &bob, &carol] {
        let v = show(n, &g).unwrap();
        assert_eq!(v["refused"], serde_json::json!({}), "{v}");
        let texts: Vec<String> = entries(n, &g)
            .iter()
            .filter(|e| e["direction"] == "in" && e["group"]["kind"] == "message")
            .map(|e| e["text"].as_str().unwrap().to_string())
            .collect();
        assert!(texts.len() <= 2, "{texts:?}");
    }
}
