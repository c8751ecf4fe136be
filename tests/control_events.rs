//! The control API's event stream (`follow` with `"events":true`) and `presence`, against the
//! real binary: a contact added and trusted arrives as `contact` events, a card that
//! equivocates (same key and version, other contents) is refused and arrives as a
//! `key_conflict` event, and a plain `follow` stream is unchanged (no `event` lines).
//!
//! Every wait is bounded by a read timeout; all traffic stays on 127.0.0.1.

// Tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{BinNode, BinNodeOptions};
use sremp::identity::{ContactCard, Flags, UserIdentity};
use sremp::time::Timestamp;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

fn raw(path: &Path) -> (BufReader<UnixStream>, UnixStream) {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    (BufReader::new(s.try_clone().unwrap()), s)
}

fn line(r: &mut BufReader<UnixStream>) -> serde_json::Value {
    let mut s = String::new();
    r.read_line(&mut s).unwrap();
    serde_json::from_str(&s).unwrap_or_else(|e| panic!("bad line ({e}): {s:?}"))
}

fn request(r: &mut BufReader<UnixStream>, w: &mut UnixStream, req: &str) -> serde_json::Value {
    w.write_all(req.as_bytes()).unwrap();
    w.write_all(b"\n").unwrap();
    line(r)
}

/// The next `event` line of a stream (entries skipped), within 10 s.
fn next_event(r: &mut BufReader<UnixStream>) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let v = line(r);
        assert_eq!(v["ok"], true, "{v}");
        if !v["event"].is_null() {
            return v["event"].clone();
        }
    }
    panic!("no event within 10 s");
}

fn card(u: &UserIdentity) -> String {
    ContactCard {
        identity: u.identity().clone(),
        endpoints: vec![],
        relays: vec![],
    }
    .to_text()
}

#[test]
fn contact_and_key_conflict_events() {
    let dir = tempfile::tempdir().unwrap();
    let mut alice = BinNode::new(dir.path(), &BinNodeOptions::loopback("alice"));
    alice.start();
    let sock = alice.data.join("control.sock");

    let (mut er, mut ew) = raw(&sock);
    let ack = request(&mut er, &mut ew, r#"{"cmd":"follow","events":true}"#);
    assert_eq!(ack, serde_json::json!({"ok":true,"following":true}));
    // A plain follow (as `sremp messages --follow` opens it) next to it.
    let (mut pr, mut pw) = raw(&sock);
    let ack = request(&mut pr, &mut pw, r#"{"cmd":"follow"}"#);
    assert_eq!(ack["following"], true);

    // dave v2, and an equivocating v2 signed by the same key.
    let mut dave = UserIdentity::generate(
        "dave",
        Flags::default(),
        Timestamp(1),
        &mut rand::rngs::OsRng,
    )
    .unwrap();
    let mut fork = UserIdentity::from_secrets(
        &dave.signing_key().to_bytes(),
        &dave.noise_secret().to_bytes(),
        dave.identity().clone(),
    )
    .unwrap();
    dave.update(Some("dave"), None, None, Timestamp(2)).unwrap();
    fork.update(Some("evil twin"), None, None, Timestamp(3))
        .unwrap();
    assert_eq!(dave.identity().version(), fork.identity().version());
    let dave_id = dave.key().to_string();

    alice.json(&["contacts", "add", &card(&dave)]);
    let ev = next_event(&mut er);
    assert_eq!(ev["kind"], "contact", "{ev}");
    assert_eq!(ev["change"], "new", "{ev}");
    assert_eq!(ev["contact"]["id"], dave_id.as_str(), "{ev}");
    assert_eq!(ev["contact"]["username"], "dave", "{ev}");
    assert_eq!(ev["contact"]["trust"], "unknown", "{ev}");

    alice.json(&["contacts", "trust", &dave_id]);
    let ev = next_event(&mut er);
    assert_eq!(ev["kind"], "contact", "{ev}");
    assert_eq!(ev["change"], "trust", "{ev}");
    assert_eq!(ev["contact"]["trust"], "trusted", "{ev}");

    let refused = alice.cmd(&["contacts", "add", &card(&fork)]);
    assert!(
        !refused.status.success(),
        "an equivocating card was accepted"
    );
    let ev = next_event(&mut er);
    assert_eq!(ev["kind"], "key_conflict", "{ev}");
    assert_eq!(ev["contact"]["id"], dave_id.as_str(), "{ev}");
    assert_eq!(
        ev["contact"]["username"], "dave",
        "the pinned one is kept: {ev}"
    );
    assert!(ev["detail"].as_str().unwrap().contains("card"), "{ev}");

    // The pinned contact did not change.
    let contacts = alice.json(&["contacts", "list"]);
    assert_eq!(contacts[0]["username"], "dave", "{contacts}");

    // A message recorded now reaches both streams as an entry; the plain one saw no event line
    // before it.
    let (mut cr, mut cw) = raw(&sock);
    let sent = request(
        &mut cr,
        &mut cw,
        &format!(r#"{{"cmd":"send","contact":"{dave_id}","text":"marker"}}"#),
    );
    assert_eq!(sent["ok"], true, "{sent}");
    let first = line(&mut pr);
    assert!(
        first["event"].is_null(),
        "plain follow got an event: {first}"
    );
    assert_eq!(first["entry"]["text"], "marker", "{first}");

    // presence: an array of {id, direct}.
    let p = request(&mut cr, &mut cw, r#"{"cmd":"presence"}"#);
    assert_eq!(p["ok"], true, "{p}");
    for e in p["presence"].as_array().unwrap() {
        assert_eq!(e["id"].as_str().unwrap().len(), 64, "{p}");
        assert!(e["direct"].is_boolean(), "{p}");
    }
}
