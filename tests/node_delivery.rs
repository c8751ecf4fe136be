//! Two in-process nodes and a relay: direct delivery, relay fallback (dead endpoint, tarpit),
//! offline recipients, rejected contacts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sremp::config::Config;
use sremp::identity::{Trust, UserIdentity};
use sremp::node::history::{DeliveryPath, Direction, HistoryEntry, Status};
use sremp::node::{Node, NodeHandle};
use sremp::noise::listener::{self, ListenerConfig};
use sremp::relay::{Relay, RelayMode, RelayOptions};
use sremp::store::{SledStore, Store};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

struct TestRelay {
    hint: String,
    _stop: tokio::sync::watch::Sender<bool>,
}

async fn start_relay(dir: &Path) -> TestRelay {
    let me = Arc::new(
        UserIdentity::generate(
            "relay",
            Default::default(),
            sremp::time::Timestamp(1),
            &mut rand::rngs::OsRng,
        )
        .unwrap(),
    );
    let store: Arc<dyn Store> = Arc::new(SledStore::open(&dir.join("relay-db")).unwrap());
    let relay = Relay::start(
        store,
        RelayOptions {
            policy: Default::default(),
            mode: RelayMode::Open,
            relay_key: me.key(),
            idle_timeout: Duration::from_secs(60),
            stats_path: None,
        },
    )
    .await
    .unwrap();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let key = me.key();
    tokio::spawn(listener::serve(
        l,
        me,
        ListenerConfig::default(),
        rx,
        move |conn, _| {
            let r = relay.clone();
            async move { r.serve_connection(conn, None).await }
        },
    ));
    TestRelay {
        hint: format!("{key}@{addr}"),
        _stop: tx,
    }
}

fn config(dir: &Path, name: &str, extra_listen: &str, relays: &[&str], port: u16) -> Config {
    let relays = relays
        .iter()
        .map(|r| format!("\"{r}\""))
        .collect::<Vec<_>>()
        .join(",");
    let text = format!(
        "data_dir = \"{}\"\nusername = \"{name}\"\n[listen]\naddress = \"127.0.0.1:{port}\"\n{extra_listen}\n[node]\nrelays = [{relays}]\ndirect_timeout_ms = 1000\nack_timeout_ms = 3000\nretry_initial_ms = 100\nretry_max_ms = 400\n",
        dir.join(name).display()
    );
    Config::parse(&text, Path::new("test")).unwrap()
}

async fn wait_for<F: Fn(&[HistoryEntry]) -> bool>(
    node: &Node,
    what: &str,
    timeout: Duration,
    f: F,
) -> Vec<HistoryEntry> {
    let deadline = Instant::now() + timeout;
    loop {
        let h = node.messages(None, 1000).unwrap();
        if f(&h) {
            return h;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {h:#?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn exchange(a: &NodeHandle, b: &NodeHandle) {
    a.node.add_contact(&b.node.card().to_text()).unwrap();
    b.node.add_contact(&a.node.card().to_text()).unwrap();
}

fn received<'a>(h: &'a [HistoryEntry], text: &str) -> Vec<&'a HistoryEntry> {
    h.iter()
        .filter(|e| e.direction == Direction::In && e.text == text)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_delivery_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let a = Node::start(&config(dir.path(), "alice", "", &[], 0))
        .await
        .unwrap();
    let b = Node::start(&config(dir.path(), "bob", "", &[], 0))
        .await
        .unwrap();
    exchange(&a, &b);
    let sent = a.node.send("bob", "hello bob").await.unwrap();
    assert_eq!(sent.status, Status::Queued);
    let done = a
        .node
        .wait_delivered(sent.id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(done.path, Some(DeliveryPath::Direct));
    let h = wait_for(&b.node, "bob receives", Duration::from_secs(10), |h| {
        !received(h, "hello bob").is_empty()
    })
    .await;
    let got = received(&h, "hello bob");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id, sent.id);
    assert_eq!(got[0].path, Some(DeliveryPath::Direct));
    assert_eq!(got[0].peer_name.as_deref(), Some("alice"));
    assert_eq!(got[0].peer, a.identity.key());
    assert_eq!(sent.peer, b.identity.key());
    // Typed ids, hex in messages: the same texts as when the ids were strings.
    let hex = sremp::node::history::format_id(sent.id);
    assert_eq!(
        a.node
            .wait_delivered_text(&hex, Duration::from_secs(1))
            .await
            .unwrap()
            .id,
        sent.id
    );
    let bad = a
        .node
        .wait_delivered_text("not-an-id", Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(bad.to_string(), "no message with id not-an-id");
    let unknown = a
        .node
        .wait_delivered(0xdead, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(unknown.to_string(), "no message with id 000000000000dead");
    // And back, several in a row.
    for i in 0..5 {
        b.node.send("alice", &format!("reply {i}")).await.unwrap();
    }
    wait_for(&a.node, "alice receives 5", Duration::from_secs(10), |h| {
        (0..5).all(|i| received(h, &format!("reply {i}")).len() == 1)
    })
    .await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_endpoint_goes_through_the_relay() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(dir.path()).await;
    // Bob advertises a loopback port where nothing listens.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let a = Node::start(&config(dir.path(), "alice", "", &[], 0))
        .await
        .unwrap();
    let b = Node::start(&config(
        dir.path(),
        "bob",
        &format!("advertise = [\"{dead}\"]"),
        &[&relay.hint],
        0,
    ))
    .await
    .unwrap();
    exchange(&a, &b);
    let sent = a.node.send("bob", "via relay").await.unwrap();
    let h = wait_for(&b.node, "bob receives", Duration::from_secs(10), |h| {
        !received(h, "via relay").is_empty()
    })
    .await;
    assert_eq!(received(&h, "via relay")[0].path, Some(DeliveryPath::Relay));
    let done = a
        .node
        .wait_delivered(sent.id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        done.path,
        Some(DeliveryPath::Relay),
        "first accepted by the relay"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tarpit_endpoint_goes_through_the_relay_quickly() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(dir.path()).await;
    // Accepts TCP and never says a word.
    let tarpit = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tarpit_addr = tarpit.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = tarpit.accept().await {
            held.push(s);
        }
    });
    let a = Node::start(&config(dir.path(), "alice", "", &[], 0))
        .await
        .unwrap();
    let b = Node::start(&config(
        dir.path(),
        "bob",
        &format!("advertise = [\"{tarpit_addr}\"]"),
        &[&relay.hint],
        0,
    ))
    .await
    .unwrap();
    exchange(&a, &b);
    // Let bob's collector register at the relay so the push is immediate.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    a.node.send("bob", "past the tarpit").await.unwrap();
    wait_for(&b.node, "bob receives", Duration::from_secs(10), |h| {
        !received(h, "past the tarpit").is_empty()
    })
    .await;
    // Well within the 1 s direct deadline: the relay attempt never waited for the direct one.
    assert!(
        start.elapsed() < Duration::from_millis(900),
        "took {:?}",
        start.elapsed()
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offline_recipient_gets_it_when_it_starts() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let a = Node::start(&config(dir.path(), "alice", "", &[], 0))
        .await
        .unwrap();
    let b = Node::start(&config(dir.path(), "bob", "", &[], port))
        .await
        .unwrap();
    exchange(&a, &b);
    b.shutdown().await.unwrap();
    let sent = a.node.send("bob", "while you were out").await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let queued = a.node.messages(None, 10).unwrap();
    assert_eq!(
        queued.iter().find(|e| e.id == sent.id).unwrap().status,
        Status::Queued
    );
    let b = Node::start(&config(dir.path(), "bob", "", &[], port))
        .await
        .unwrap();
    wait_for(
        &b.node,
        "bob receives after restart",
        Duration::from_secs(10),
        |h| received(h, "while you were out").len() == 1,
    )
    .await;
    a.node
        .wait_delivered(sent.id, Duration::from_secs(10))
        .await
        .unwrap();
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_contacts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = Node::start(&config(dir.path(), "alice", "", &[], 0))
        .await
        .unwrap();
    let b = Node::start(&config(dir.path(), "bob", "", &[], 0))
        .await
        .unwrap();
    exchange(&a, &b);
    b.node.set_trust("alice", Trust::Rejected).unwrap();
    let sent = a.node.send("bob", "let me in").await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(received(&b.node.messages(None, 100).unwrap(), "let me in").is_empty());
    assert_ne!(
        a.node
            .messages(None, 10)
            .unwrap()
            .iter()
            .find(|e| e.id == sent.id)
            .unwrap()
            .status,
        Status::Delivered
    );
    // Bob cannot send to a contact he rejected either.
    assert!(b.node.send("alice", "x").await.is_err());
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confirmation_kept_at_the_relay_reaches_a_restarted_sender() {
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(dir.path()).await;
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let bob_cfg = config(
        dir.path(),
        "bob",
        &format!("advertise = [\"{dead}\"]"),
        &[&relay.hint],
        0,
    );
    let a = Node::start(&config(dir.path(), "alice", "", &[], 0))
        .await
        .unwrap();
    let b = Node::start(&bob_cfg).await.unwrap();
    exchange(&a, &b);
    b.shutdown().await.unwrap();
    // Bob is offline: the relay stores it.
    let sent = a.node.send("bob", "confirm me later").await.unwrap();
    wait_for(
        &a.node,
        "stored at the relay",
        Duration::from_secs(10),
        |h| {
            h.iter()
                .any(|e| e.id == sent.id && e.status == Status::StoredAtRelay)
        },
    )
    .await;
    // Alice goes away (her connection to the relay with her), Bob comes back and confirms:
    // the relay keeps the confirmation for Alice.
    a.shutdown().await.unwrap();
    let b = Node::start(&bob_cfg).await.unwrap();
    wait_for(&b.node, "bob receives", Duration::from_secs(10), |h| {
        received(h, "confirm me later").len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Alice restarts without sending anything: she reconnects to the relay that holds her
    // confirmation and learns the message was delivered.
    let a = Node::start(&config(dir.path(), "alice", "", &[], 0))
        .await
        .unwrap();
    let done = a
        .node
        .wait_delivered(sent.id, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(done.status, Status::Delivered);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// Issue 12, one durable point on the receiving node: a contact's direct messages are
/// verified, decrypted and committed by the recipient before its integrated relay acknowledges
/// them, so the relay stores no record of them (before, each was stored, pushed, recorded and
/// confirmed over loopback). A stranger's message still takes the relay-record path and is
/// recorded by the collector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_messages_are_recorded_before_the_integrated_relay_acknowledges() {
    let dir = tempfile::tempdir().unwrap();
    let a = Node::start(&config(dir.path(), "alice", "", &[], 0))
        .await
        .unwrap();
    let b = Node::start(&config(dir.path(), "bob", "", &[], 0))
        .await
        .unwrap();
    exchange(&a, &b);
    let mut sent = Vec::new();
    for i in 0..20 {
        sent.push(a.node.send("bob", &format!("burst {i}")).await.unwrap());
    }
    for s in &sent {
        let done = a
            .node
            .wait_delivered(s.id, Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(done.path, Some(DeliveryPath::Direct));
    }
    let h = wait_for(&b.node, "bob receives 20", Duration::from_secs(10), |h| {
        (0..20).all(|i| received(h, &format!("burst {i}")).len() == 1)
    })
    .await;
    for s in &sent {
        let got: Vec<_> = h
            .iter()
            .filter(|e| e.direction == Direction::In && e.id == s.id)
            .collect();
        assert_eq!(got.len(), 1, "exactly once: {s:?}");
        assert_eq!(got[0].path, Some(DeliveryPath::Direct));
    }
    let stats = b.relay_stats();
    assert_eq!(
        stats.stored, 0,
        "a contact's direct messages must not be stored as relay records: {stats:?}"
    );
    assert!(
        stats.confirmations_forwarded + stats.confirmations_kept >= 20,
        "every recorded message is confirmed to the sender: {stats:?}"
    );
    // A stranger (bob does not know carol) still goes through a relay record and the
    // collector.
    let c = Node::start(&config(dir.path(), "carol", "", &[], 0))
        .await
        .unwrap();
    c.node.add_contact(&b.node.card().to_text()).unwrap();
    let from_carol = c.node.send("bob", "hello from a stranger").await.unwrap();
    c.node
        .wait_delivered(from_carol.id, Duration::from_secs(20))
        .await
        .unwrap();
    wait_for(
        &b.node,
        "bob receives carol's",
        Duration::from_secs(10),
        |h| received(h, "hello from a stranger").len() == 1,
    )
    .await;
    assert_eq!(
        b.relay_stats().stored,
        1,
        "the stranger's message was a relay record"
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    c.shutdown().await.unwrap();
}

/// Issue 12 item 4: the integrated relay's per-sender rate limit does not throttle a burst
/// from a contact the owner marked Trusted (charged to `[relay] trusted_rate_*` instead),
/// while a contact that is not Trusted keeps the ordinary limit. Bob's ordinary limit is tiny
/// here (burst 4, 1/s), so a 30-message burst is refused without the trusted budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_contacts_burst_is_not_rate_limited_by_the_integrated_relay() {
    let dir = tempfile::tempdir().unwrap();
    let mut bob_cfg = config(dir.path(), "bob", "", &[], 0);
    bob_cfg.relay.rate_per_sec = 1;
    bob_cfg.relay.rate_burst = 4;
    let a = Node::start(&config(dir.path(), "alice", "", &[], 0))
        .await
        .unwrap();
    let b = Node::start(&bob_cfg).await.unwrap();
    let c = Node::start(&config(dir.path(), "carol", "", &[], 0))
        .await
        .unwrap();
    exchange(&a, &b);
    exchange(&c, &b);
    b.node.set_trust("alice", Trust::Trusted).unwrap();
    let limited = |b: &NodeHandle| {
        b.relay_stats()
            .rejected
            .get("rate_limited")
            .copied()
            .unwrap_or(0)
    };
    let mut sent = Vec::new();
    for i in 0..30 {
        sent.push(a.node.send("bob", &format!("trusted {i}")).await.unwrap());
    }
    for s in &sent {
        a.node
            .wait_delivered(s.id, Duration::from_secs(20))
            .await
            .unwrap();
    }
    assert_eq!(
        limited(&b),
        0,
        "the trusted contact's burst was rate-limited"
    );
    // Carol is a contact but not Trusted: her burst meets the ordinary limit (and is retried,
    // so a few arrive; they are not what this checks).
    for i in 0..30 {
        c.node.send("bob", &format!("ordinary {i}")).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while limited(&b) == 0 {
        assert!(
            Instant::now() < deadline,
            "the ordinary limit never applied to a contact that is not Trusted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    c.shutdown().await.unwrap();
}

/// Issue 12 item 2: one sender with 64 `send()` calls in flight at once (they are encrypted
/// and committed together, stored in batches, recorded by the recipient in batches and
/// confirmed in batches), through the recipient's relay and with the direct path too (racing
/// the relay until it is proven): every
/// message arrives exactly once with its own text, and the sender sees each delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_of_concurrent_sends_arrives_once_each_direct_and_via_relay() {
    // Within the test relay's default burst (500 requests: stores and acknowledgements).
    const N: usize = 200;
    const WINDOW: usize = 64;
    let dir = tempfile::tempdir().unwrap();
    let relay = start_relay(dir.path()).await;
    for via_relay in [true, false] {
        let tag = if via_relay { "relay" } else { "direct" };
        let a = Node::start(&config(dir.path(), &format!("alice-{tag}"), "", &[], 0))
            .await
            .unwrap();
        let b = Node::start(&config(
            dir.path(),
            &format!("bob-{tag}"),
            "",
            &[&relay.hint],
            0,
        ))
        .await
        .unwrap();
        let mut card = b.node.card();
        if via_relay {
            // The sender knows only the relay.
            card.endpoints.clear();
            let deadline = Instant::now() + Duration::from_secs(20);
            while !b.node.status().relays.first().is_some_and(|r| r.connected) {
                assert!(
                    Instant::now() < deadline,
                    "bob never connected to the relay"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        a.node.add_contact(&card.to_text()).unwrap();
        b.node.add_contact(&a.node.card().to_text()).unwrap();
        let bob = format!("bob-{tag}");
        let mut set = tokio::task::JoinSet::new();
        let mut ids = Vec::with_capacity(N);
        for i in 0..N {
            if set.len() >= WINDOW {
                ids.push(set.join_next().await.unwrap().unwrap());
            }
            let node = a.node.clone();
            let bob = bob.clone();
            set.spawn(async move { node.send(&bob, &format!("{tag} {i:03}")).await.unwrap().id });
        }
        while let Some(id) = set.join_next().await {
            ids.push(id.unwrap());
        }
        let h = wait_for(
            &b.node,
            "every message at bob",
            Duration::from_secs(60),
            |h| h.iter().filter(|e| e.direction == Direction::In).count() >= N,
        )
        .await;
        for i in 0..N {
            let text = format!("{tag} {i:03}");
            let got = received(&h, &text);
            assert_eq!(got.len(), 1, "{text} arrived {} times", got.len());
            if via_relay {
                assert_eq!(got[0].path, Some(DeliveryPath::Relay));
            }
        }
        for id in ids {
            a.node
                .wait_delivered(id, Duration::from_secs(30))
                .await
                .unwrap();
        }
        // Nothing arrives twice later on.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let h = b.node.messages(None, 1000).unwrap();
        assert_eq!(h.iter().filter(|e| e.direction == Direction::In).count(), N);
        a.shutdown().await.unwrap();
        b.shutdown().await.unwrap();
    }
}
