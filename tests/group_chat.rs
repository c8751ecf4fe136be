//! Group chats with the real binary: a localnet of four nodes (alice creates; bob and carol
//! accept; dave declines) and one relay that is every node's home relay, plus eve, a contact
//! of bob's who is not a member.
//!
//! Covered, in one run (the setup is the expensive part): invitations, accept/decline seen by
//! every member, messages both ways, nothing for the member who declined, an offline member
//! receiving everything later through its relay, a member SIGKILLed in the middle of a stream
//! losing and duplicating nothing, a non-member's injected message and a replayed group message
//! refused with their typed reasons (without disturbing the group), and close reaching an
//! online member at once and an offline one when it comes back (both delete the messages and
//! refuse to send).
//!
//! Injection and replay need bytes no honest CLI produces: the test writes them into a stopped
//! sender's own outbox with the library (a fresh pairwise ratchet message around the group
//! envelope), and the sender's real node delivers them like any other message.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{introduce, BinNode, BinNodeOptions, BinRelay};
use serde_json::Value;
use sremp::group::{Control, GroupId, GroupMessage, SenderKey};
use sremp::identity::{ContactCard, UserIdentity};
use sremp::node::history::{Direction, History, NewEntry, Status};
use sremp::node::outbox::OutboxEntry;
use sremp::ratchet::{Content, LocalKeys, MessageId, Payload, PeerKeys, SessionManager};
use sremp::store::{SledStore, Store, Tree};
use sremp::time::Timestamp;
use std::time::{Duration, Instant};

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

fn group_messages(n: &BinNode, g: &str) -> Vec<Value> {
    match n.json(&["messages", "--group", g]) {
        Value::Array(v) => v,
        other => panic!("not an array: {other}"),
    }
}

/// Texts of the group messages `n` received, in history order.
fn received_texts(n: &BinNode, g: &str) -> Vec<String> {
    group_messages(n, g)
        .iter()
        .filter(|e| e["direction"] == "in" && e["group"]["kind"] == "message")
        .map(|e| e["text"].as_str().unwrap().to_string())
        .collect()
}

fn wait_texts(n: &BinNode, g: &str, want: &[&str], timeout: Duration) {
    wait(n, &format!("{want:?}"), timeout, || {
        let got = received_texts(n, g);
        want.iter()
            .all(|w| got.iter().any(|t| t == w))
            .then_some(())
    });
}

fn wait_relay_connected(node: &BinNode) {
    wait(node, "relay connected", Duration::from_secs(20), || {
        (node.json(&["status"])["relays"][0]["connected"] == true).then_some(())
    });
}

fn send_group(n: &BinNode, g: &str, text: &str) -> Value {
    n.json(&["send", "--group", g, text])
}

/// Queues `envelope` (a group envelope) from the stopped node `from` to `to_card`'s owner as a
/// fresh pairwise message, in `from`'s own store, so that its real node delivers it at start.
fn queue_raw_envelope(from: &BinNode, to_card: &str, envelope: Vec<u8>) {
    let user = UserIdentity::load_file(&from.data).unwrap();
    let to = ContactCard::from_text(to_card).unwrap().identity;
    let store: std::sync::Arc<dyn Store> =
        std::sync::Arc::new(SledStore::open_checked(&from.data.join("db")).unwrap());
    let sessions = SessionManager::new(LocalKeys::new(
        user.signing_key().clone(),
        user.noise_secret().to_bytes(),
    ));
    let now = Timestamp::now();
    let payload = Payload {
        id: MessageId::random(&mut rand::rngs::OsRng),
        sent_at: now,
        content: Content::Other {
            kind: sremp::group::control::PAYLOAD_KIND,
            data: envelope,
        },
    };
    let peer = PeerKeys {
        identity_key: to.key().0,
        noise_key: to.noise_key().0,
    };
    let out = sessions
        .encrypt(&*store, &mut rand::rngs::OsRng, &peer, &payload)
        .unwrap();
    let (mut batch, wire) = out.into_parts();
    let mut id8 = [0u8; 8];
    id8.copy_from_slice(&payload.id.0[..8]);
    let id = u64::from_be_bytes(id8);
    let history = History::open(store.clone()).unwrap();
    let (entry, hb) = history.record(NewEntry {
        direction: Direction::Out,
        peer: to.key(),
        peer_name: None,
        id,
        text: "[raw group envelope]".into(),
        sent_at: now,
        recorded_at: now,
        status: Status::Queued,
        path: None,
    });
    batch.extend(hb);
    batch.extend(
        OutboxEntry {
            message_id: id,
            recipient: to.key().0,
            wire,
            history_seq: entry.seq,
            payload_id: payload.id.0.to_vec(),
        }
        .put(),
    );
    store.commit(batch).unwrap();
    store.close().unwrap();
}

/// The envelope alice kept for her copy of group message `message_id` to `to` (for a replay).
fn kept_envelope(from: &BinNode, to: &str, message_id: &str) -> Vec<u8> {
    let store: std::sync::Arc<dyn Store> =
        std::sync::Arc::new(SledStore::open_checked(&from.data.join("db")).unwrap());
    let history = History::open(store.clone()).unwrap();
    let mut found = None;
    for e in history.list(None, 100_000).unwrap() {
        let is_copy = e.direction == Direction::Out
            && e.peer.to_string() == to
            && e.group.as_ref().and_then(|g| g.message_id.as_deref()) == Some(message_id);
        if is_copy {
            let mut k = b"group/e/".to_vec();
            k.extend_from_slice(&e.seq.to_be_bytes());
            found = store.get(Tree::Meta, &k).unwrap();
        }
    }
    store.close().unwrap();
    found.expect("alice keeps the envelope of her copy")
}

#[test]
fn group_localnet_lifecycle() {
    let dir = tempfile::tempdir().unwrap();
    let relay = BinRelay::start(dir.path(), "127.0.0.1:0", None);
    let names = ["alice", "bob", "carol", "dave", "eve"];
    let mut nodes: Vec<BinNode> = names
        .iter()
        .map(|n| {
            let mut o = BinNodeOptions::loopback(n);
            o.relays = vec![relay.hint.clone()];
            BinNode::new(dir.path(), &o)
        })
        .collect();
    for n in nodes.iter_mut() {
        n.start();
    }
    // The four members know each other; eve knows only bob.
    for i in 0..4 {
        for j in (i + 1)..4 {
            introduce(&nodes[i], &nodes[j]);
        }
    }
    introduce(&nodes[1], &nodes[4]);
    for n in &nodes {
        wait_relay_connected(n);
    }
    let cards: Vec<(String, String)> = nodes.iter().map(|n| n.card()).collect();
    let [alice, bob, carol, dave, eve] = &mut nodes[..] else {
        unreachable!()
    };

    // Create: members are contacts; the invitation reaches every member.
    let created = alice.json(&["group", "create", "team", "--members", "bob,carol,dave"]);
    let g = created["id"].as_str().unwrap().to_string();
    assert_eq!(g.len(), 32);
    assert_eq!(created["state"], "accepted");
    assert_eq!(created["members"].as_array().unwrap().len(), 4);
    for n in [&*bob, &*carol, &*dave] {
        let v = wait(n, "invitation", Duration::from_secs(20), || show(n, &g));
        assert_eq!(v["state"], "invited");
        assert_eq!(v["name"], "team");
        assert_eq!(member_state(&v, "alice"), "accepted");
    }
    // A non-contact cannot be invited.
    let o = alice.cmd(&["group", "create", "x", "--members", "eve"]);
    assert!(!o.status.success());

    // Two accept, one declines; every member sees every answer.
    assert_eq!(bob.json(&["group", "accept", &g])["state"], "accepted");
    assert_eq!(
        carol.json(&["group", "accept", "team"])["state"],
        "accepted"
    );
    assert_eq!(dave.json(&["group", "decline", &g])["state"], "declined");
    for n in [&*alice, &*bob, &*carol] {
        wait(n, "all answers", Duration::from_secs(20), || {
            let v = show(n, &g)?;
            let ok = member_state(&v, "bob") == "accepted"
                && member_state(&v, "carol") == "accepted"
                && member_state(&v, "dave") == "declined";
            ok.then_some(())
        });
    }

    // Messages both ways; one encryption, one copy per active member, statuses per member.
    let sent = send_group(alice, &g, "hello team");
    let copies = sent["entries"].as_array().unwrap();
    assert_eq!(
        copies.len(),
        2,
        "bob and carol only (dave declined): {sent}"
    );
    let hello_id = sent["message_id"].as_str().unwrap().to_string();
    send_group(bob, &g, "hi from bob");
    wait_texts(bob, &g, &["hello team"], Duration::from_secs(20));
    wait_texts(
        carol,
        &g,
        &["hello team", "hi from bob"],
        Duration::from_secs(20),
    );
    wait_texts(alice, &g, &["hi from bob"], Duration::from_secs(20));
    // Per-member statuses reach `delivered`.
    wait(alice, "copies delivered", Duration::from_secs(20), || {
        let h = group_messages(alice, &g);
        let delivered = h
            .iter()
            .filter(|e| e["group"]["message_id"] == hello_id.as_str() && e["status"] == "delivered")
            .count();
        (delivered == 2).then_some(())
    });

    // An offline member gets everything later through its relay.
    carol.stop();
    send_group(alice, &g, "while carol is away 1");
    send_group(bob, &g, "while carol is away 2");
    send_group(alice, &g, "while carol is away 3");
    wait_texts(
        bob,
        &g,
        &["while carol is away 1", "while carol is away 3"],
        Duration::from_secs(20),
    );
    carol.start();
    wait_texts(
        carol,
        &g,
        &[
            "while carol is away 1",
            "while carol is away 2",
            "while carol is away 3",
        ],
        Duration::from_secs(30),
    );
    let via_relay = group_messages(carol, &g)
        .iter()
        .filter(|e| {
            e["text"]
                .as_str()
                .is_some_and(|t| t.starts_with("while carol"))
                && e["path"] == "relay"
        })
        .count();
    assert_eq!(
        via_relay, 3,
        "carol was offline: all three came through the relay"
    );

    // A member SIGKILLed mid-stream loses and duplicates nothing.
    let stream: Vec<String> = (0..20).map(|i| format!("stream {i:02}")).collect();
    for (i, t) in stream.iter().enumerate() {
        if i == 6 {
            bob.kill();
        }
        if i == 14 {
            bob.start();
        }
        send_group(alice, &g, t);
    }
    let want: Vec<&str> = stream.iter().map(String::as_str).collect();
    wait_texts(bob, &g, &want, Duration::from_secs(40));
    wait_texts(carol, &g, &want, Duration::from_secs(40));
    std::thread::sleep(Duration::from_millis(500));
    for n in [&*bob, &*carol] {
        let got: Vec<String> = received_texts(n, &g)
            .into_iter()
            .filter(|t| t.starts_with("stream "))
            .collect();
        let mut sorted = got.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(
            sorted.len(),
            20,
            "each stream message exactly once: {got:?}"
        );
        assert_eq!(got.len(), 20, "no duplicates: {got:?}");
    }
    // The member who declined got nothing of it.
    let dave_group: Vec<Value> = dave
        .messages()
        .into_iter()
        .filter(|e| e["group"]["kind"] == "message")
        .collect();
    assert!(dave_group.is_empty(), "{dave_group:?}");

    // A non-member's message is refused (typed reason), and nothing else is disturbed.
    eve.stop();
    let eve_signer = UserIdentity::load_file(&eve.data)
        .unwrap()
        .signing_key()
        .clone();
    let gid = GroupId::parse(&g).unwrap();
    let mut fake_key = SenderKey::new(&mut rand::rngs::OsRng, 0);
    let inner = Payload::text(&mut rand::rngs::OsRng, Timestamp::now(), "eve was here");
    let fake: GroupMessage = fake_key.encrypt(gid, &eve_signer, &inner.encode()).unwrap();
    queue_raw_envelope(eve, &cards[1].1, Control::Message(fake).encode(gid));
    eve.start();
    wait(bob, "non-member refused", Duration::from_secs(30), || {
        let v = show(bob, &g)?;
        (v["refused"]["not_member"] == 1).then_some(())
    });

    // A replayed group message (alice's "hello team" envelope, in a new pairwise message) is
    // refused as a replay.
    alice.stop();
    let env = kept_envelope(alice, &cards[1].0, &hello_id);
    queue_raw_envelope(alice, &cards[1].1, env);
    alice.start();
    wait(bob, "replay refused", Duration::from_secs(30), || {
        let v = show(bob, &g)?;
        (v["refused"]["replayed"] == 1).then_some(())
    });
    assert_eq!(
        received_texts(bob, &g)
            .iter()
            .filter(|t| *t == "hello team" || *t == "eve was here")
            .count(),
        1,
        "only the original hello, never eve's text"
    );
    // Still working afterwards.
    send_group(alice, &g, "after the attacks");
    wait_texts(bob, &g, &["after the attacks"], Duration::from_secs(20));
    wait_texts(carol, &g, &["after the attacks"], Duration::from_secs(20));

    // Close: bob online is told at once; carol offline when she comes back.
    carol.stop();
    let closed = alice.json(&["group", "close", &g]);
    assert_eq!(closed["state"], "closed");
    wait(bob, "close at bob", Duration::from_secs(20), || {
        show(bob, &g).filter(|v| v["closed"] == true).map(|_| ())
    });
    assert!(
        received_texts(bob, &g).is_empty(),
        "bob deleted the group's messages"
    );
    let o = bob.cmd(&["send", "--group", &g, "too late"]);
    assert!(!o.status.success(), "sending to a closed group is refused");
    assert!(String::from_utf8_lossy(&o.stderr).contains("0x04"), "{o:?}");
    carol.start();
    wait(carol, "close at carol", Duration::from_secs(30), || {
        show(carol, &g).filter(|v| v["closed"] == true).map(|_| ())
    });
    assert!(
        received_texts(carol, &g).is_empty(),
        "carol deleted the group's messages"
    );
    assert!(!alice.cmd(&["send", "--group", &g, "x"]).status.success());
    drop(relay);
}

/// Two members who are not each other's contacts (bob and carol know only alice, the creator)
/// get each other's messages and sender keys: their envelopes travel as forward requests to
/// alice, who forwards them (docs/PROTOCOL.md, "Groups", forwarding through the creator).
#[test]
fn members_who_are_not_contacts_reach_each_other_through_the_creator() {
    let dir = tempfile::tempdir().unwrap();
    let relay = BinRelay::start(dir.path(), "127.0.0.1:0", None);
    let mut nodes: Vec<BinNode> = ["alice", "bob", "carol"]
        .iter()
        .map(|n| {
            let mut o = BinNodeOptions::loopback(n);
            o.relays = vec![relay.hint.clone()];
            BinNode::new(dir.path(), &o)
        })
        .collect();
    for n in nodes.iter_mut() {
        n.start();
    }
    introduce(&nodes[0], &nodes[1]);
    introduce(&nodes[0], &nodes[2]);
    for n in &nodes {
        wait_relay_connected(n);
    }
    let [alice, bob, carol] = &mut nodes[..] else {
        unreachable!()
    };
    let created = alice.json(&["group", "create", "trio", "--members", "bob,carol"]);
    let g = created["id"].as_str().unwrap().to_string();
    for n in [&*bob, &*carol] {
        wait(n, "invitation", Duration::from_secs(20), || show(n, &g));
        assert_eq!(n.json(&["group", "accept", &g])["state"], "accepted");
    }
    // Each sees the other accept (the accept went through alice) and holds its sender key.
    for (n, other) in [(&*bob, "carol"), (&*carol, "bob")] {
        let v = wait(n, "the other's acceptance", Duration::from_secs(30), || {
            let v = show(n, &g)?;
            (v["members"]
                .as_array()?
                .iter()
                .filter(|m| m["state"] == "accepted")
                .count()
                == 3)
                .then_some(v)
        });
        let far: Vec<&Value> = v["members"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|m| m["via_creator"] == true)
            .collect();
        assert_eq!(far.len(), 1, "{other} is reached through alice: {v}");
        assert_eq!(far[0]["reachable"], true);
    }
    let sent = send_group(bob, &g, "bob to everyone");
    let copies = sent["entries"].as_array().unwrap();
    assert_eq!(
        copies.len(),
        1,
        "one copy, the forward request to alice: {sent}"
    );
    assert_eq!(
        copies[0]["group"]["forwarded_to"].as_array().map(Vec::len),
        Some(1),
        "{sent}"
    );
    send_group(carol, &g, "carol to everyone");
    send_group(alice, &g, "alice to everyone");
    wait_texts(
        carol,
        &g,
        &["bob to everyone", "alice to everyone"],
        Duration::from_secs(30),
    );
    wait_texts(
        bob,
        &g,
        &["carol to everyone", "alice to everyone"],
        Duration::from_secs(30),
    );
    wait_texts(
        alice,
        &g,
        &["bob to everyone", "carol to everyone"],
        Duration::from_secs(30),
    );
    // Exactly once each, and nothing refused anywhere.
    std::thread::sleep(Duration::from_millis(500));
    for n in [&*alice, &*bob, &*carol] {
        let got = received_texts(n, &g);
        assert_eq!(got.len(), 2, "{got:?}");
        let v = show(n, &g).unwrap();
        assert_eq!(v["refused"], serde_json::json!({}), "{v}");
    }
    drop(relay);
}

/// Appends `line` to the `[node]` section (the last section of a test node's config).
fn node_setting(node: &BinNode, line: &str) {
    let mut text = std::fs::read_to_string(&node.config).unwrap();
    assert!(text.ends_with('\n'));
    text.push_str(line);
    text.push('\n');
    std::fs::write(&node.config, text).unwrap();
}

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
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

/// Gap repair after a restore targets only the group messages the member lost: bob's database
/// goes back to a copy that has g1..g3; after it he got g4 and g5 (and answered alice, which
/// turned the ratchet so his old state cannot read her next message). Alice's next message
/// makes bob ask for a session reset naming g3 (the newest message he has from her, a group
/// message id) and alice re-sends exactly g4 and g5 from her delivered copies — not the whole
/// recovery window — and bob shows every message once with nothing refused.
#[test]
fn restored_member_gets_exactly_the_group_messages_it_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut alice = BinNode::new(dir.path(), &BinNodeOptions::loopback("alice"));
    let mut bob = BinNode::new(dir.path(), &BinNodeOptions::loopback("bob"));
    // The backstop for a reset notice that never arrives (as in tests/session_recovery.rs).
    node_setting(&alice, "restore_after_ms = 5000");
    alice.start();
    bob.start();
    let (alice_id, _bob_id) = introduce(&alice, &bob);
    let g = alice.json(&["group", "create", "pair", "--members", "bob"])["id"]
        .as_str()
        .unwrap()
        .to_string();
    wait(&bob, "invitation", Duration::from_secs(20), || {
        show(&bob, &g)
    });
    bob.json(&["group", "accept", &g]);
    wait(&alice, "bob's acceptance", Duration::from_secs(20), || {
        (member_state(&show(&alice, &g)?, "bob") == "accepted").then_some(())
    });
    let delivered = |n: &BinNode, text: &str| {
        group_messages(n, &g)
            .iter()
            .any(|e| e["direction"] == "out" && e["text"] == text && e["status"] == "delivered")
    };
    for t in ["g1", "g2", "g3"] {
        send_group(&alice, &g, t);
        wait(&alice, t, Duration::from_secs(20), || {
            delivered(&alice, t).then_some(())
        });
    }
    // The backup.
    bob.stop();
    let old = dir.path().join("bob-db-copy");
    copy_dir(&bob.data.join("db"), &old);
    std::fs::copy(
        bob.data.join("db.commit"),
        dir.path().join("bob-db-copy.commit"),
    )
    .unwrap();
    bob.start();
    send_group(&alice, &g, "g4");
    wait(&alice, "g4", Duration::from_secs(20), || {
        delivered(&alice, "g4").then_some(())
    });
    // Bob answers (a one-to-one message): the ratchet turns.
    let out = bob.json(&["send", &alice_id, "turn", "--wait", "--timeout-secs", "20"]);
    assert_eq!(out["status"], "delivered", "{out}");
    send_group(&alice, &g, "g5");
    wait(&alice, "g5", Duration::from_secs(20), || {
        delivered(&alice, "g5").then_some(())
    });
    wait_texts(&bob, &g, &["g4", "g5"], Duration::from_secs(20));
    // The restore.
    bob.stop();
    std::fs::remove_dir_all(bob.data.join("db")).unwrap();
    copy_dir(&old, &bob.data.join("db"));
    std::fs::copy(
        dir.path().join("bob-db-copy.commit"),
        bob.data.join("db.commit"),
    )
    .unwrap();
    bob.start();
    assert_eq!(received_texts(&bob, &g), vec!["g1", "g2", "g3"]);
    send_group(&alice, &g, "g6");
    wait_texts(&bob, &g, &["g4", "g5", "g6"], Duration::from_secs(60));
    // Alice's reset line: exactly the two lost messages were recovered.
    let notice = wait(&alice, "the reset notice", Duration::from_secs(20), || {
        alice.messages().into_iter().find(|e| {
            e["status"] == "notice" && e["text"].as_str().is_some_and(|t| t.contains("re-sent"))
        })
    });
    let text = notice["text"].as_str().unwrap();
    assert!(
        text.contains("(2 it had confirmed but lost)"),
        "only g4 and g5 are recovered, not the whole window: {text}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let mut got = received_texts(&bob, &g);
    got.sort();
    assert_eq!(
        got,
        vec!["g1", "g2", "g3", "g4", "g5", "g6"],
        "each once (re-sent copies may overtake each other)"
    );

    assert_eq!(show(&bob, &g).unwrap()["refused"], serde_json::json!({}));
}
