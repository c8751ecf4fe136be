//! Lost state, with the real binary (`sremp run`, `sremp relay`, driven through the CLI):
//!
//! - the recipient's database is replaced by an older copy (taken before its first session
//!   with the sender): the sender keeps sending; the recipient answers each message it cannot
//!   decrypt with a signed session-reset notice, the sender starts a new session and re-sends;
//!   every message arrives exactly once — also those the recipient had confirmed before it lost
//!   them, which the sender re-sends after what the notice says was last recorded — the
//!   sender never shows `delivered` for a message the
//!   recipient has not recorded, both histories carry a `notice` line, and the pair keeps
//!   talking both ways;
//! - a relay-only relay loses its store (restarted on an empty database with the same
//!   identity) while 20 messages wait there for an offline recipient: the sender, which kept
//!   them, stores them again and the recipient gets all 20 exactly once.
//!
//! Every wait is bounded; all traffic stays on 127.0.0.1.

// Tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{free_port, introduce, reap, signal, BinNode, BinNodeOptions, BinRelay};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, Instant};

fn received<'a>(h: &'a [Value], text: &str) -> Vec<&'a Value> {
    h.iter()
        .filter(|e| e["direction"] == "in" && e["status"] == "received" && e["text"] == text)
        .collect()
}

fn sent<'a>(h: &'a [Value], id: &str) -> Option<&'a Value> {
    h.iter()
        .find(|e| e["direction"] == "out" && e["status"] != "notice" && e["id"] == id)
}

fn notices(h: &[Value]) -> Vec<&Value> {
    h.iter().filter(|e| e["status"] == "notice").collect()
}

fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn wait_history(
    node: &BinNode,
    what: &str,
    timeout: Duration,
    f: impl Fn(&[Value]) -> bool,
) -> Vec<Value> {
    let deadline = Instant::now() + timeout;
    loop {
        let h = node.messages();
        if f(&h) {
            return h;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {h:#?}\n--- node log:\n{}",
            tail(&node.logs(), 120)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Appends `line` to the `[node]` section (the last section of a test node's config).
fn node_setting(node: &BinNode, line: &str) {
    let mut text = std::fs::read_to_string(&node.config).unwrap();
    assert!(text.ends_with('\n'));
    text.push_str(line);
    text.push('\n');
    std::fs::write(&node.config, text).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

#[test]
fn recipient_restored_from_an_older_copy_recovers_the_session() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = BinNode::new(dir.path(), &BinNodeOptions::loopback("alice"));
    let mut b = BinNode::new(dir.path(), &BinNodeOptions::loopback("bob"));
    // The backstop for a notice that never arrives (known residual race, see the report of
    // issue 18): an unconfirmed message is stored again after 5 s.
    node_setting(&a, "restore_after_ms = 5000");
    a.start();
    b.start();
    let (a_id, b_id) = introduce(&a, &b);
    // The older copy: bob knows alice, but they have no session yet.
    b.stop();
    let old = dir.path().join("bob-db-copy");
    copy_dir(&b.data.join("db"), &old);
    // The copy's commit marker goes with it (as a restore installs one): the node refuses a
    // database older than its marker as damaged.
    std::fs::copy(
        b.data.join("db.commit"),
        dir.path().join("bob-db-copy.commit"),
    )
    .unwrap();
    b.start();
    for (from, to, text) in [
        (&a, &b_id, "before 1"),
        (&b, &a_id, "reply 1"),
        (&a, &b_id, "before 2"),
    ] {
        let out = from.json(&["send", to, text, "--wait", "--timeout-secs", "20"]);
        assert_eq!(out["status"], "delivered", "{out}");
    }
    // Bob loses everything after the copy (his identity file is outside the db).
    b.stop();
    std::fs::remove_dir_all(b.data.join("db")).unwrap();
    copy_dir(&old, &b.data.join("db"));
    std::fs::copy(
        dir.path().join("bob-db-copy.commit"),
        b.data.join("db.commit"),
    )
    .unwrap();
    b.start();
    let texts: Vec<String> = (1..=5).map(|i| format!("after {i}")).collect();
    let ids: Vec<String> = texts.iter().map(|t| a.send(&b_id, t)).collect();
    // Until everything is through: a status `delivered` at alice is never shown for a message
    // bob has not recorded (alice is read first, so bob's view is at least as new).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ha = a.messages();
        let hb = b.messages();
        for (id, t) in ids.iter().zip(&texts) {
            if sent(&ha, id).is_some_and(|e| e["status"] == "delivered") {
                assert_eq!(
                    received(&hb, t).len(),
                    1,
                    "alice shows {t:?} delivered but bob has not recorded it exactly once: {hb:#?}\n--- bob:\n{}",
                    tail(&b.logs(), 60)
                );
            }
        }
        let done = ids
            .iter()
            .all(|id| sent(&ha, id).is_some_and(|e| e["status"] == "delivered"));
        if done {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not all delivered: {ha:#?}\n--- bob history: {hb:#?}\n--- alice log:\n{}\n--- bob log:\n{}",
            tail(&a.logs(), 80),
            tail(&b.logs(), 80)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Both sides show that the session was reset.
    let ha = a.messages();
    let hb = b.messages();
    let na = notices(&ha);
    let nb = notices(&hb);
    assert!(
        na.iter()
            .any(|e| e["direction"] == "out" && e["peer"] == b_id.as_str()),
        "no notice at alice: {ha:#?}"
    );
    assert!(
        na.iter()
            .any(|e| e["text"].as_str().unwrap().contains("re-sent")),
        "{na:#?}"
    );
    assert!(
        nb.iter()
            .any(|e| e["direction"] == "in" && e["peer"] == a_id.as_str()),
        "no notice at bob: {hb:#?}"
    );
    // The pair works both ways afterwards.
    let out = b.json(&["send", &a_id, "reply 2", "--wait", "--timeout-secs", "30"]);
    assert_eq!(out["status"], "delivered", "{out}");
    wait_history(&a, "alice gets bob's reply", Duration::from_secs(20), |h| {
        received(h, "reply 2").len() == 1
    });
    let out = a.json(&[
        "send",
        &b_id,
        "after reset",
        "--wait",
        "--timeout-secs",
        "30",
    ]);
    assert_eq!(out["status"], "delivered", "{out}");
    // Nothing arrives twice later on.
    std::thread::sleep(Duration::from_millis(700));
    let hb = b.messages();
    let mut count: HashMap<&str, usize> = HashMap::new();
    for e in hb.iter().filter(|e| e["status"] == "received") {
        *count.entry(e["text"].as_str().unwrap()).or_default() += 1;
    }
    // Including what bob had confirmed before he lost his state ("before 1", "before 2"):
    // his notice said he had nothing recorded from alice, so she re-sent them too.
    for t in texts
        .iter()
        .map(String::as_str)
        .chain(["after reset", "before 1", "before 2"])
    {
        assert_eq!(count.get(t), Some(&1), "{t:?} at bob: {hb:#?}");
    }
    for (id, t) in ids.iter().zip(&texts) {
        assert_eq!(received(&hb, t)[0]["id"], id.as_str(), "{t}");
    }
}

fn stop_relay(r: &mut BinRelay) {
    signal(&r.proc.child, libc::SIGTERM);
    assert!(
        reap(&mut r.proc.child, Duration::from_secs(20)),
        "relay did not stop"
    );
}

#[test]
fn relay_that_loses_its_store_gets_the_messages_again_from_the_sender() {
    let dir = tempfile::tempdir().unwrap();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut relay = BinRelay::start(dir.path(), &listen, None);
    let mut a = BinNode::new(dir.path(), &BinNodeOptions::loopback("alice"));
    node_setting(&a, "restore_after_ms = 1500");
    // Bob is reachable only through the relay (his advertised endpoint is dead).
    let mut bo = BinNodeOptions::loopback("bob");
    bo.relays = vec![relay.hint.clone()];
    bo.advertise = vec![format!("127.0.0.1:{}", free_port())];
    let mut b = BinNode::new(dir.path(), &bo);
    a.start();
    b.start();
    let (_, b_id) = introduce(&a, &b);
    b.stop();
    let texts: Vec<String> = (0..20).map(|i| format!("kept {i}")).collect();
    let ids: Vec<String> = texts.iter().map(|t| a.send(&b_id, t)).collect();
    wait_history(
        &a,
        "all 20 stored at the relay",
        Duration::from_secs(30),
        |h| {
            ids.iter()
                .all(|id| sent(h, id).is_some_and(|e| e["status"] == "stored_at_relay"))
        },
    );
    // The relay loses its store: same identity, same address, empty database.
    stop_relay(&mut relay);
    let data = dir.path().join("relay").join("data");
    std::fs::rename(data.join("relay-db"), dir.path().join("lost-relay-db")).unwrap();
    // What the relay's damage report tells the operator: move the store and its commit marker
    // aside (otherwise it refuses to start on a missing database).
    std::fs::rename(
        data.join("relay-db.commit"),
        dir.path().join("lost-relay-db.commit"),
    )
    .unwrap();
    std::fs::remove_file(data.join("relay.addr")).unwrap();
    let mut relay = BinRelay::start(dir.path(), &listen, None);
    let a_proc = a.proc.as_ref().unwrap();
    assert!(
        a_proc
            .wait_for_line(
                "no delivery confirmation in time; storing again",
                Duration::from_secs(30)
            )
            .is_some(),
        "alice never stored again:\n{}",
        tail(&a.logs(), 60)
    );
    // Wait until the re-stores are done (the outbox is empty again).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = a.json(&["status"]);
        let h = a.messages();
        let stored = ids
            .iter()
            .all(|id| sent(&h, id).is_some_and(|e| e["status"] == "stored_at_relay"));
        if s["outbox"] == 0 && stored {
            break;
        }
        assert!(Instant::now() < deadline, "re-store did not finish: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    b.start();
    let h = wait_history(&b, "bob gets all 20", Duration::from_secs(60), |h| {
        texts.iter().all(|t| !received(h, t).is_empty())
    });
    for t in &texts {
        assert_eq!(received(&h, t).len(), 1, "{t:?}: {h:#?}");
    }
    wait_history(&a, "all 20 delivered", Duration::from_secs(60), |h| {
        ids.iter()
            .all(|id| sent(h, id).is_some_and(|e| e["status"] == "delivered"))
    });
    // Later re-stores (none should happen now) never show a message twice.
    std::thread::sleep(Duration::from_millis(2500));
    let h = b.messages();
    for t in &texts {
        assert_eq!(received(&h, t).len(), 1, "{t:?}: {h:#?}");
    }
    stop_relay(&mut relay);
}
