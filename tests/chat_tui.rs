//! `sremp chat` with the real binary in a real pseudo-terminal (tmux, 80×24): alice types a
//! message, bob's node stores it, and alice's screen shows its status turn to `delivered`; bob's
//! reply appears live; `/add` of a card that equivocates (same key and version as a pinned
//! contact, other contents) raises the key warning; then alice's node stops (the client says so and keeps running) and starts again (the client
//! reconnects by itself); Ctrl-C leaves the client.
//!
//! Skips with a message when tmux is not installed (`.ci/run` installs it). Every wait is
//! bounded; all traffic stays on 127.0.0.1 and the tmux server has its own socket in the test's
//! temporary directory.

// Tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{bin, introduce, BinNode, BinNodeOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A private tmux server running one session.
struct Tmux {
    socket: PathBuf,
}

impl Tmux {
    fn cmd(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .arg("-S")
            .arg(&self.socket)
            .arg("-f")
            .arg("/dev/null")
            .args(args)
            .output()
            .expect("run tmux")
    }

    /// The visible screen.
    fn screen(&self) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", "chat"]).stdout)
            .into_owned()
    }

    /// Waits (bounded) until the screen satisfies `ok`; returns the last screen either way.
    fn wait_for(&self, timeout: Duration, ok: impl Fn(&str) -> bool) -> (bool, String) {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.screen();
            if ok(&s) {
                return (true, s);
            }
            if Instant::now() >= deadline {
                return (false, s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn alive(&self) -> bool {
        self.cmd(&["has-session", "-t", "chat"]).status.success()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd(&["kill-server"]);
    }
}

fn tmux_available() -> bool {
    Command::new("tmux")
        .arg("-V")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

fn start_chat(dir: &Path, config: &Path) -> Tmux {
    let t = Tmux {
        socket: dir.join("tmux.sock"),
    };
    // The pane's command: the client, then a marker so its exit status is visible.
    let line = format!(
        "{} --config {} chat; echo chat-exited-$?; sleep 30",
        bin().display(),
        config.display()
    );
    let o = t.cmd(&[
        "new-session",
        "-d",
        "-s",
        "chat",
        "-x",
        "80",
        "-y",
        "24",
        &line,
    ]);
    assert!(
        o.status.success(),
        "tmux new-session: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    t
}

/// A card for "dave" (version 2), and another version 2 signed by the same key with other
/// contents (an equivocation: TOFU `Conflict`).
fn equivocating_cards() -> (String, String) {
    use sremp::identity::{ContactCard, Flags, UserIdentity};
    use sremp::time::Timestamp;
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
    fork.update(Some("mallory"), None, None, Timestamp(3))
        .unwrap();
    let card = |u: &UserIdentity| {
        ContactCard {
            identity: u.identity().clone(),
            endpoints: vec![],
            relays: vec![],
        }
        .to_text()
    };
    (card(&dave), card(&fork))
}

#[test]
fn chat_refuses_json_and_a_missing_terminal() {
    let o = common::run_bin(&["chat", "--json"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("interactive"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // stdin is not a terminal here.
    let o = common::run_bin(&["chat"]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("needs a terminal"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn chat_client_sends_and_shows_delivery_in_a_real_terminal() {
    if !tmux_available() {
        eprintln!("SKIP chat_client_sends_and_shows_delivery_in_a_real_terminal: tmux is not installed (apt-get install tmux)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut alice = BinNode::new(dir.path(), &BinNodeOptions::loopback("alice"));
    let mut bob = BinNode::new(dir.path(), &BinNodeOptions::loopback("bob"));
    alice.start();
    bob.start();
    let (_alice_id, bob_id) = introduce(&alice, &bob);

    let t = start_chat(dir.path(), &alice.config);
    let (ok, screen) = t.wait_for(Duration::from_secs(20), |s| {
        s.contains("connected") && s.contains("bob") && s.contains("Message bob")
    });
    assert!(
        ok,
        "the client did not connect:\n{screen}\n--- alice:\n{}",
        alice.logs()
    );

    let text = "hello from the chat client";
    assert!(t
        .cmd(&["send-keys", "-t", "chat", "-l", text])
        .status
        .success());
    assert!(t
        .cmd(&["send-keys", "-t", "chat", "Enter"])
        .status
        .success());

    // Bob's node stored it.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut arrived = false;
    while Instant::now() < deadline && !arrived {
        arrived = bob
            .messages()
            .iter()
            .any(|m| m["direction"] == "in" && m["text"] == text);
        if !arrived {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert!(
        arrived,
        "bob did not receive it\n--- screen:\n{}\n--- alice:\n{}\n--- bob:\n{}",
        t.screen(),
        alice.logs(),
        bob.logs()
    );

    // Alice's screen shows it delivered, with its path.
    // (The status tag follows the text, on the next line when the text leaves no room.)
    let (ok, screen) = t.wait_for(Duration::from_secs(30), |s| {
        let lines: Vec<&str> = s.lines().collect();
        lines.iter().enumerate().any(|(i, l)| {
            l.contains(text)
                && (l.contains("[delivered, ")
                    || lines.get(i + 1).is_some_and(|n| n.contains("[delivered, ")))
        }) && !s.contains("[queued]")
    });
    assert!(ok, "no delivered status on screen:\n{screen}");

    // A message from bob shows up live in the conversation.
    bob.send(&_alice_id, "hi alice, got it");
    let (ok, screen) = t.wait_for(Duration::from_secs(30), |s| {
        s.contains("bob: hi alice, got it")
    });
    assert!(
        ok,
        "bob's reply did not appear:\n{screen}\n--- bob:\n{}",
        bob.logs()
    );

    // An equivocating card for a pinned contact: refused, and a warning nobody can miss.
    let (dave, fork) = equivocating_cards();
    alice.json(&["contacts", "add", &dave]);
    let (ok, screen) = t.wait_for(Duration::from_secs(10), |s| s.contains("dave"));
    assert!(ok, "dave did not appear:\n{screen}");
    assert!(t
        .cmd(&["send-keys", "-t", "chat", "-l", &format!("/add {fork}")])
        .status
        .success());
    assert!(t
        .cmd(&["send-keys", "-t", "chat", "Enter"])
        .status
        .success());
    let (ok, screen) = t.wait_for(Duration::from_secs(10), |s| {
        s.contains("IDENTITY KEY WARNING") && s.contains("Press Enter to acknowledge")
    });
    assert!(ok, "no key warning:\n{screen}");
    assert!(t
        .cmd(&["send-keys", "-t", "chat", "Enter"])
        .status
        .success());
    let (ok, screen) = t.wait_for(Duration::from_secs(10), |s| {
        !s.contains("IDENTITY KEY WARNING") && s.contains("\u{26a0} dave")
    });
    assert!(ok, "warning not acknowledged or dave not marked:\n{screen}");
    // Back to bob's conversation for what follows.
    let (ok, screen) = t.wait_for(Duration::from_secs(1), |s| s.contains("Message bob"));
    if !ok {
        assert!(t.cmd(&["send-keys", "-t", "chat", "Tab"]).status.success());
        let (ok, screen2) = t.wait_for(Duration::from_secs(5), |s| s.contains("Message bob"));
        assert!(ok, "{screen}\n{screen2}");
    }

    // The node stops: the client says so and keeps running; it reconnects by itself.
    alice.stop();
    let (ok, screen) = t.wait_for(Duration::from_secs(20), |s| s.contains("NODE NOT RUNNING"));
    assert!(ok, "no 'node not running' notice:\n{screen}");
    assert!(t.alive() && !screen.contains("chat-exited"), "{screen}");
    alice.start();
    let (ok, screen) = t.wait_for(Duration::from_secs(20), |s| {
        s.lines().next().is_some_and(|l| l.contains("connected"))
            && s.contains(text)
            && s.contains("hi alice, got it")
    });
    assert!(
        ok,
        "the client did not reconnect:\n{screen}\n--- alice:\n{}",
        alice.logs()
    );

    // Ctrl-C leaves cleanly (exit status 0, terminal restored).
    assert!(t.cmd(&["send-keys", "-t", "chat", "C-c"]).status.success());
    let (ok, screen) = t.wait_for(Duration::from_secs(10), |s| s.contains("chat-exited-0"));
    assert!(ok, "the client did not exit cleanly:\n{screen}");
    let _ = bob_id;
}

/// A group conversation in the real client (issue 16): alice creates the group with
/// `/group new` and bob accepts the invitation with `/group accept`, each in a chat client
/// (issue 14); the group is listed beside the contacts, Tab opens it, a typed line goes to the
/// group (bob's node shows it as a group message), our line shows bob's copy turn to
/// delivered, and bob's group message appears with his name.
#[test]
fn chat_client_group_conversation_in_a_real_terminal() {
    if !tmux_available() {
        eprintln!("SKIP chat_client_group_conversation_in_a_real_terminal: tmux is not installed (apt-get install tmux)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut alice = BinNode::new(dir.path(), &BinNodeOptions::loopback("alice"));
    let mut bob = BinNode::new(dir.path(), &BinNodeOptions::loopback("bob"));
    alice.start();
    bob.start();
    introduce(&alice, &bob);
    let type_line = |t: &Tmux, line: &str| {
        assert!(t
            .cmd(&["send-keys", "-t", "chat", "-l", line])
            .status
            .success());
        assert!(t
            .cmd(&["send-keys", "-t", "chat", "Enter"])
            .status
            .success());
    };

    let t = start_chat(dir.path(), &alice.config);
    let (ok, screen) = t.wait_for(Duration::from_secs(20), |s| {
        s.contains("connected") && s.contains("bob")
    });
    assert!(ok, "alice's client did not connect:\n{screen}");
    type_line(&t, "/group new crew bob");
    let (ok, screen) = t.wait_for(Duration::from_secs(20), |s| {
        s.contains("group crew created") && s.contains("#crew")
    });
    assert!(
        ok,
        "the group was not created from the chat:\n{screen}\n--- alice:\n{}",
        alice.logs()
    );
    let list = alice.json(&["group", "list"]);
    assert_eq!(list[0]["name"], "crew", "{list}");
    let g = list[0]["id"].as_str().unwrap().to_string();

    // Bob's own client: the invitation is listed; `/group accept` answers it.
    let bob_dir = dir.path().join("bob-chat");
    std::fs::create_dir_all(&bob_dir).unwrap();
    let tb = start_chat(&bob_dir, &bob.config);
    let (ok, screen) = tb.wait_for(Duration::from_secs(30), |s| {
        s.contains("connected") && s.contains("#crew")
    });
    assert!(
        ok,
        "bob's client does not list the invitation:\n{screen}\n--- bob:\n{}",
        bob.logs()
    );
    type_line(&tb, "/group accept");
    let (ok, screen) = tb.wait_for(Duration::from_secs(20), |s| {
        s.contains("group crew: accepted")
    });
    assert!(ok, "bob's client did not accept:\n{screen}");
    assert_eq!(bob.json(&["group", "show", &g])["state"], "accepted");
    drop(tb);
    let deadline = Instant::now() + Duration::from_secs(20);
    while alice.json(&["group", "show", &g])["members"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["state"] != "accepted")
    {
        assert!(Instant::now() < deadline, "alice never saw bob accept");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Tab until the group is open (bounded).
    for _ in 0..4 {
        if t.screen().contains("Message #crew") {
            break;
        }
        assert!(t.cmd(&["send-keys", "-t", "chat", "Tab"]).status.success());
        t.wait_for(Duration::from_secs(2), |s| s.contains("Message #crew"));
    }
    let (ok, screen) = t.wait_for(Duration::from_secs(5), |s| {
        s.contains("Message #crew") && s.contains("group")
    });
    assert!(ok, "the group conversation did not open:\n{screen}");

    let text = "hello crew from the chat";
    assert!(t
        .cmd(&["send-keys", "-t", "chat", "-l", text])
        .status
        .success());
    assert!(t
        .cmd(&["send-keys", "-t", "chat", "Enter"])
        .status
        .success());
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = bob.json(&["messages", "--group", &g]);
        let arrived = got.as_array().is_some_and(|v| {
            v.iter().any(|e| {
                e["direction"] == "in" && e["text"] == text && e["group"]["kind"] == "message"
            })
        });
        if arrived {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "bob did not get the group message\n--- screen:\n{}\n--- bob:\n{}",
            t.screen(),
            bob.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ok, screen) = t.wait_for(Duration::from_secs(30), |s| s.contains("[bob delivered"));
    assert!(ok, "bob's copy not shown delivered:\n{screen}");

    bob.json(&["send", "--group", &g, "bob answers the crew"]);
    let (ok, screen) = t.wait_for(Duration::from_secs(30), |s| {
        s.contains("bob: bob answers the crew")
    });
    assert!(
        ok,
        "bob's group message did not appear:\n{screen}\n--- bob:\n{}",
        bob.logs()
    );

    assert!(t.cmd(&["send-keys", "-t", "chat", "C-c"]).status.success());
    let (ok, screen) = t.wait_for(Duration::from_secs(10), |s| s.contains("chat-exited-0"));
    assert!(ok, "the client did not exit cleanly:\n{screen}");
}
