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
