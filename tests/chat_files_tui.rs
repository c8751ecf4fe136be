//! `/file` in `sremp chat` with the real binaries, in real pseudo-terminals (tmux, 80×24): alice
//! types `/file PATH` (a relative path, resolved from where her client runs), bob's client
//! announces the offer and shows it under the conversation, bob types `/accept DIR`, and both
//! screens show the transfer `done`; the saved file has the source's bytes. Then an offer that
//! bob answers with `/decline REASON` shows on alice's screen as declined with the reason.
//!
//! Skips with a message when tmux is not installed (`.ci/run` installs it). Every wait is
//! bounded; all traffic stays on 127.0.0.1 and the tmux server has its own socket in the test's
//! temporary directory.

// Tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{bin, introduce, BinNode, BinNodeOptions};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// A private tmux server (the same helper as tests/chat_tui.rs, with one session per client).
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

    /// Starts `sremp chat` for `config` in session `name`, in directory `cwd`.
    fn start(&self, name: &str, config: &Path, cwd: &Path) {
        let line = format!(
            "cd {} && {} --config {} chat; echo chat-exited-$?; sleep 30",
            cwd.display(),
            bin().display(),
            config.display()
        );
        let o = self.cmd(&[
            "new-session",
            "-d",
            "-s",
            name,
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
    }

    fn screen(&self, name: &str) -> String {
        String::from_utf8_lossy(&self.cmd(&["capture-pane", "-p", "-t", name]).stdout).into_owned()
    }

    fn wait_for(&self, name: &str, timeout: Duration, ok: impl Fn(&str) -> bool) -> (bool, String) {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.screen(name);
            if ok(&s) {
                return (true, s);
            }
            if Instant::now() >= deadline {
                return (false, s);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn type_line(&self, name: &str, text: &str) {
        assert!(self
            .cmd(&["send-keys", "-t", name, "-l", text])
            .status
            .success());
        assert!(self
            .cmd(&["send-keys", "-t", name, "Enter"])
            .status
            .success());
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

fn transfers(node: &BinNode) -> Vec<Value> {
    match node.json(&["files"]) {
        Value::Array(v) => v,
        other => panic!("files --json is not an array: {other}"),
    }
}

#[test]
fn chat_offers_accepts_and_declines_files_in_real_terminals() {
    if !tmux_available() {
        eprintln!("SKIP chat_offers_accepts_and_declines_files_in_real_terminals: tmux is not installed (apt-get install tmux)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut alice = BinNode::new(dir.path(), &BinNodeOptions::loopback("alice"));
    let mut bob = BinNode::new(dir.path(), &BinNodeOptions::loopback("bob"));
    alice.start();
    bob.start();
    let (alice_id, _bob_id) = introduce(&alice, &bob);

    // Alice's client runs in `work`, where the file is: `/file` takes a relative path.
    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let data: Vec<u8> = (0..3 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(work.join("report.bin"), &data).unwrap();
    let inbox = dir.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();

    let t = Tmux {
        socket: dir.path().join("tmux.sock"),
    };
    t.start("alice", &alice.config, &work);
    t.start("bob", &bob.config, dir.path());
    for (who, peer) in [("alice", "bob"), ("bob", "alice")] {
        let (ok, screen) = t.wait_for(who, Duration::from_secs(20), |s| {
            s.contains("connected") && s.contains(&format!("Message {peer}"))
        });
        assert!(ok, "{who}'s client did not connect:\n{screen}");
    }

    t.type_line("alice", "/file report.bin");
    // Bob's client announces the offer and shows it under the conversation.
    let (ok, screen) = t.wait_for("bob", Duration::from_secs(30), |s| {
        s.contains("alice offers report.bin") && s.contains("offered: /accept")
    });
    assert!(
        ok,
        "no offer on bob's screen:\n{screen}\n--- alice's screen:\n{}\n--- alice:\n{}",
        t.screen("alice"),
        alice.logs()
    );
    let (ok, screen) = t.wait_for("alice", Duration::from_secs(10), |s| {
        s.contains("report.bin") && s.contains("waiting for an answer")
    });
    assert!(
        ok,
        "alice's screen does not show her offer waiting:\n{screen}"
    );

    t.type_line("bob", &format!("/accept {}", inbox.display()));
    let (ok, screen) = t.wait_for("bob", Duration::from_secs(60), |s| {
        s.contains("report.bin (3.00 MiB) done")
    });
    assert!(
        ok,
        "bob's screen does not show the transfer done:\n{screen}\n--- bob:\n{}",
        bob.logs()
    );
    let (ok, screen) = t.wait_for("alice", Duration::from_secs(30), |s| {
        s.contains("report.bin (3.00 MiB) done") && s.contains("bob has report.bin")
    });
    assert!(
        ok,
        "alice's screen does not show the transfer done:\n{screen}"
    );
    assert_eq!(std::fs::read(inbox.join("report.bin")).unwrap(), data);

    // A second offer, declined with a reason that alice sees.
    std::fs::write(work.join("second.txt"), b"not wanted").unwrap();
    t.type_line("alice", "/file second.txt");
    let (ok, screen) = t.wait_for("bob", Duration::from_secs(30), |s| {
        s.contains("alice offers second.txt")
    });
    assert!(ok, "no second offer on bob's screen:\n{screen}");
    t.type_line("bob", "/decline not today");
    let (ok, screen) = t.wait_for("alice", Duration::from_secs(30), |s| {
        s.contains("second.txt rejected: not today")
    });
    assert!(
        ok,
        "alice's screen does not show the decline:\n{screen}\n--- alice:\n{}",
        alice.logs()
    );
    let states: Vec<(String, String)> = transfers(&bob)
        .iter()
        .map(|t| {
            (
                t["name"].as_str().unwrap_or("").to_string(),
                t["state"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert!(
        states.contains(&("report.bin".into(), "done".into()))
            && states.contains(&("second.txt".into(), "rejected".into())),
        "{states:?}"
    );
    let _ = alice_id;
}

/// `/file PATH` in a group conversation (issue 15): alice, bob and carol are in group "trio"
/// (bob and carol are alice's contacts and trust her; both accept files from trusted contacts
/// on their own). Alice opens the group in her client and types `/file minutes.bin`: the
/// status line names who gets it, each member's copy shows under the group as `NAME: ...`,
/// both lines reach `done`, and bob and carol each saved the same bytes.
#[test]
fn chat_file_to_a_group_conversation_reaches_every_member() {
    if !tmux_available() {
        eprintln!("SKIP chat_file_to_a_group_conversation_reaches_every_member: tmux is not installed (apt-get install tmux)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<BinNode> = ["alice", "bob", "carol"]
        .iter()
        .map(|n| BinNode::new(dir.path(), &BinNodeOptions::loopback(n)))
        .collect();
    for n in &nodes[1..] {
        let mut text = std::fs::read_to_string(&n.config).unwrap();
        text.push_str("[files]\nauto_accept_trusted_max_bytes = 104857600\n");
        std::fs::write(&n.config, text).unwrap();
    }
    for n in nodes.iter_mut() {
        n.start();
    }
    let (a_id, _) = introduce(&nodes[0], &nodes[1]);
    introduce(&nodes[0], &nodes[2]);
    let [alice, bob, carol] = &nodes[..] else {
        unreachable!()
    };
    for n in [bob, carol] {
        n.json(&["contacts", "trust", &a_id]);
    }
    let created = alice.json(&["group", "create", "trio", "--members", "bob,carol"]);
    let g = created["id"].as_str().unwrap().to_string();
    let accepted = |n: &BinNode| {
        let o = n.cmd(&["group", "show", &g, "--json"]);
        o.status.success()
    };
    for n in [bob, carol] {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !accepted(n) {
            assert!(Instant::now() < deadline, "no invitation\n{}", n.logs());
            std::thread::sleep(Duration::from_millis(100));
        }
        assert_eq!(n.json(&["group", "accept", &g])["state"], "accepted");
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while alice.json(&["group", "show", &g])["members"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["state"] != "accepted")
    {
        assert!(Instant::now() < deadline, "alice never saw both accept");
        std::thread::sleep(Duration::from_millis(100));
    }

    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let data: Vec<u8> = (0..2 * 1024 * 1024 + 77u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 11) as u8)
        .collect();
    std::fs::write(work.join("minutes.bin"), &data).unwrap();

    let t = Tmux {
        socket: dir.path().join("tmux.sock"),
    };
    t.start("alice", &alice.config, &work);
    let (ok, screen) = t.wait_for("alice", Duration::from_secs(20), |s| {
        s.contains("connected") && s.contains("#trio")
    });
    assert!(ok, "alice's client did not connect:\n{screen}");
    // Tab until the group is open (bounded).
    for _ in 0..4 {
        if t.screen("alice").contains("Message #trio") {
            break;
        }
        assert!(t.cmd(&["send-keys", "-t", "alice", "Tab"]).status.success());
        t.wait_for("alice", Duration::from_secs(2), |s| {
            s.contains("Message #trio")
        });
    }
    let (ok, screen) = t.wait_for("alice", Duration::from_secs(5), |s| {
        s.contains("Message #trio")
    });
    assert!(ok, "the group conversation did not open:\n{screen}");

    t.type_line("alice", "/file minutes.bin");
    let (ok, screen) = t.wait_for("alice", Duration::from_secs(60), |s| {
        s.contains("bob: \u{2191} minutes.bin (2.00 MiB) done")
            && s.contains("carol: \u{2191} minutes.bin (2.00 MiB) done")
    });
    assert!(
        ok,
        "alice's group conversation does not show both copies done:\n{screen}\n--- alice:\n{}",
        alice.logs()
    );
    for (who, n) in [("bob", bob), ("carol", carol)] {
        let got = transfers(n)
            .into_iter()
            .find(|t| t["name"] == "minutes.bin" && t["state"] == "done")
            .unwrap_or_else(|| panic!("no finished transfer at {who}:\n{}", n.logs()));
        let path = got["path"].as_str().unwrap();
        assert_eq!(std::fs::read(path).unwrap(), data, "{who}");
    }
    // Alice's node recorded both copies as the group's.
    let copies: Vec<Value> = transfers(alice)
        .into_iter()
        .filter(|t| t["group"] == g.as_str())
        .collect();
    assert_eq!(copies.len(), 2, "{copies:?}");
}
