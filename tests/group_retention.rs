//! Retention of outgoing group copies (issue 14): the envelope kept for each member's copy of a
//! group message is needed while the copy is not delivered (a session reset re-sends it) and,
//! once delivered, for the recovery window in which a member restored from an older backup may
//! ask for it again. After that it is pruned; an undelivered copy is never pruned.
//!
//! In-process nodes on 127.0.0.1 (the prune pass is run with a clock moved past the window
//! through `Node::group_prune`; the node itself runs it hourly with the real clock).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sremp::config::Config;
use sremp::node::history::Status;
use sremp::node::recovery::RECOVER_WINDOW_MS;
use sremp::node::{Node, NodeHandle};
use sremp::time::Timestamp;
use std::path::Path;
use std::time::{Duration, Instant};

fn config(dir: &Path, name: &str) -> Config {
    let text = format!(
        "data_dir = \"{}\"\nusername = \"{name}\"\n[listen]\naddress = \"127.0.0.1:0\"\n[node]\nrelays = []\ndirect_timeout_ms = 1000\nack_timeout_ms = 3000\nretry_initial_ms = 100\nretry_max_ms = 400\n",
        dir.join(name).display()
    );
    Config::parse(&text, Path::new("test")).unwrap()
}

fn exchange(a: &NodeHandle, b: &NodeHandle) {
    a.node.add_contact(&b.node.card().to_text()).unwrap();
    b.node.add_contact(&a.node.card().to_text()).unwrap();
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn statuses(n: &Node, g: &str, message_id: &str) -> Vec<Status> {
    n.group_messages(g, None, 1000)
        .unwrap()
        .iter()
        .filter(|e| {
            e.group.as_ref().and_then(|t| t.message_id.as_deref()) == Some(message_id)
                && e.direction == sremp::node::history::Direction::Out
        })
        .map(|e| e.status)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_copies_are_pruned_after_the_recovery_window_undelivered_ones_kept() {
    let dir = tempfile::tempdir().unwrap();
    let a = Node::start(&config(dir.path(), "alice")).await.unwrap();
    let b = Node::start(&config(dir.path(), "bob")).await.unwrap();
    let c = Node::start(&config(dir.path(), "carol")).await.unwrap();
    exchange(&a, &b);
    exchange(&a, &c);
    let g = a
        .node
        .group_create("kept", &["bob".into(), "carol".into()])
        .await
        .unwrap()
        .id;
    until("invitations", || {
        b.node.group_show(&g).is_ok() && c.node.group_show(&g).is_ok()
    })
    .await;
    b.node.group_accept(&g).await.unwrap();
    until("both invitations delivered", || {
        a.node
            .group_messages(&g, None, 1000)
            .unwrap()
            .iter()
            .filter(|e| {
                e.group.as_ref().is_some_and(|t| t.kind == "invite")
                    && e.status == Status::Delivered
            })
            .count()
            == 2
    })
    .await;
    // Carol goes away: her copy of the message stays undelivered.
    c.shutdown().await.unwrap();
    let sent = a.node.group_send(&g, "one").await.unwrap();
    assert_eq!(sent.entries.len(), 2);
    until("bob's copy delivered", || {
        statuses(&a.node, &g, &sent.message_id).contains(&Status::Delivered)
    })
    .await;
    let kept = a.node.group_kept_envelopes().unwrap();
    let copies: Vec<(String, String, Status)> = a
        .node
        .group_messages(&g, None, 1000)
        .unwrap()
        .iter()
        .filter(|e| e.direction == sremp::node::history::Direction::Out)
        .map(|e| {
            let kind = e.group.as_ref().map(|t| t.kind.clone()).unwrap_or_default();
            (kind, e.peer_name.clone().unwrap_or_default(), e.status)
        })
        .collect();
    assert_eq!(kept, copies.len(), "one envelope per copy: {copies:?}");
    let undelivered = copies.iter().filter(|c| c.2 != Status::Delivered).count();
    assert!(
        copies
            .iter()
            .any(|c| c.0 == "message" && c.1 == "carol" && c.2 != Status::Delivered),
        "{copies:?}"
    );
    assert!(undelivered < kept, "{copies:?}");
    // Within the window nothing goes: a restored member may still ask for it.
    let now = Timestamp::now().0;
    assert_eq!(a.node.group_prune(now).await.unwrap(), 0);
    assert_eq!(a.node.group_kept_envelopes().unwrap(), kept);
    // Past it, every delivered copy's envelope goes (bob's invitation and message copies),
    // and carol's undelivered ones stay.
    let later = now + RECOVER_WINDOW_MS + 60_000;
    let pruned = a.node.group_prune(later).await.unwrap();
    assert_eq!(
        pruned,
        kept - undelivered,
        "every delivered copy's: {copies:?}"
    );
    assert_eq!(
        a.node.group_kept_envelopes().unwrap(),
        undelivered,
        "undelivered copies (carol's message) are kept: {copies:?}"
    );
    // A second pass finds nothing more.
    assert_eq!(a.node.group_prune(later).await.unwrap(), 0);
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}
