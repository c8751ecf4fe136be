//! Issue 10 with the real binary on a loopback localnet (`scripts/localnet.sh`: a rendezvous
//! server over TLS, a relay, personal nodes): `sremp discover` lists the registered nodes and
//! adds one, and a message then flows. Skips when bash is not available. Every wait is bounded
//! and `down` runs even when a step fails.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/localnet.sh")
}

fn have_bash() -> bool {
    Command::new("bash")
        .arg("-c")
        .arg("true")
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Runs the script with `args` (and `env`), killing it after `limit`.
fn run(dir: &Path, args: &[&str], env: &[(&str, &str)], limit: Duration) -> Output {
    let mut cmd = Command::new("bash");
    cmd.arg(script())
        .args(args)
        .env("LOCALNET_DIR", dir)
        .env("SREMP_BIN", common::bin())
        .env_remove("RUST_LOG")
        .env_remove("SREMP_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    panic!(
        "localnet.sh {args:?} took longer than {limit:?}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `down` when dropped, so a failed assertion leaves no processes behind.
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = run(&self.0, &["down"], &[], Duration::from_secs(40));
    }
}

fn logs(dir: &Path) -> String {
    let mut all = String::new();
    for name in ["rendezvous", "node1", "node2", "node3"] {
        let log = std::fs::read_to_string(dir.join(name).join("log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        all.push_str(&format!("--- {name} (newest first)\n{}\n", tail.join("\n")));
    }
    all
}

/// `sremp --config <dir>/<node>/config.toml ARGS`.
fn cli(dir: &Path, node: &str, args: &[&str]) -> Output {
    let cfg = dir.join(node).join("config.toml");
    let mut all = vec!["--config", cfg.to_str().unwrap()];
    all.extend_from_slice(args);
    common::run_bin(&all)
}

/// A CLI command that must succeed with JSON output.
fn json(dir: &Path, node: &str, args: &[&str]) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let o = cli(dir, node, &all);
    assert!(
        o.status.success(),
        "{node}: sremp {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        logs(dir)
    );
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
}

fn id_of(dir: &Path, node: &str) -> String {
    json(dir, node, &["id"])["id"].as_str().unwrap().to_string()
}

fn up(dir: &Path, n: &str, introduce: bool) -> Down {
    let guard = Down(dir.to_path_buf());
    let flag = if introduce { "1" } else { "0" };
    let o = run(
        dir,
        &["up", n],
        &[("LOCALNET_INTRODUCE", flag)],
        Duration::from_secs(60),
    );
    assert!(
        o.status.success(),
        "up failed\n{}\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
        logs(dir)
    );
    guard
}

/// Polls `discover --json` (bounded) until `want` ids are listed; returns the last answer.
fn discover_until(dir: &Path, node: &str, args: &[&str], want: &[&str]) -> Value {
    let mut all = vec!["discover"];
    all.extend_from_slice(args);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = json(dir, node, &all);
        let ids: Vec<&str> = v["peers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap())
            .collect();
        if want.iter().all(|w| ids.contains(w)) || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn discover_lists_registered_nodes_adds_one_and_a_message_flows() {
    if !have_bash() {
        eprintln!("skipping: bash is not available");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ln");
    let _down = up(&dir, "3", false);
    let (id1, id2, id3) = (
        id_of(&dir, "node1"),
        id_of(&dir, "node2"),
        id_of(&dir, "node3"),
    );
    // Nobody knows anybody yet.
    let contacts = json(&dir, "node1", &["contacts", "list"]);
    assert_eq!(contacts.as_array().unwrap().len(), 0, "{contacts}");

    // Browse: both other nodes, online, with their endpoints and a usable card; not ourselves.
    let v = discover_until(&dir, "node1", &["--all"], &[&id2, &id3]);
    let peers = v["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 2, "{v}");
    for p in peers {
        assert!(p["online"].as_bool().unwrap(), "{p}");
        assert_ne!(p["id"].as_str().unwrap(), id1);
        assert_eq!(p["version"].as_u64().unwrap(), 1);
        assert!(!p["endpoints"].as_array().unwrap().is_empty(), "{p}");
        assert_eq!(p["relays"].as_array().unwrap().len(), 1, "{p}");
        assert!(p["card"].as_str().unwrap().starts_with("sremp1:"));
        assert_eq!(p["servers"].as_array().unwrap().len(), 1, "{p}");
    }
    assert_eq!(v["answered"].as_array().unwrap().len(), 1, "{v}");
    assert!(v["errors"].as_array().unwrap().is_empty(), "{v}");
    assert!(v["added"].is_null());

    // Search by username; then the human output.
    let v = json(&dir, "node1", &["discover", "NODE2"]);
    let peers = v["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 1, "{v}");
    assert_eq!(peers[0]["username"], "node2");
    let o = cli(&dir, "node1", &["discover"]);
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains(&id2) && text.contains(&id3), "{text}");

    // Look one id up and add it: it becomes a contact (TOFU, trust unknown).
    let v = json(&dir, "node1", &["discover", "--add", &id2]);
    assert_eq!(v["peers"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["added"]["id"], id2.as_str(), "{v}");
    assert_eq!(v["added"]["trust"], "unknown", "{v}");
    // `contacts add --from-rendezvous` does the same for node3.
    let c = json(
        &dir,
        "node1",
        &["contacts", "add", "--from-rendezvous", &id3],
    );
    assert_eq!(c["id"], id3.as_str(), "{c}");
    let contacts = json(&dir, "node1", &["contacts", "list"]);
    assert_eq!(contacts.as_array().unwrap().len(), 2, "{contacts}");

    // A message then flows to the discovered contact, and back to us (node2 pinned us by TOFU
    // when we connected).
    let sent = json(
        &dir,
        "node1",
        &["send", "--wait", "--timeout-secs", "30", &id2, "found you"],
    );
    assert_eq!(sent["status"], "delivered", "{sent}");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got = json(&dir, "node2", &["messages"]);
        if got
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["text"] == "found you" && m["direction"] == "in")
        {
            break;
        }
        assert!(Instant::now() < deadline, "node2 never got it: {got}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let back = json(
        &dir,
        "node2",
        &["send", "--wait", "--timeout-secs", "30", &id1, "hello back"],
    );
    assert_eq!(back["status"], "delivered", "{back}");

    // Errors are clear and nothing is added: an unknown id, and a bad --from-rendezvous value.
    let unknown = "ab".repeat(32);
    let o = cli(&dir, "node1", &["discover", "--add", &unknown]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no peer matching"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let o = cli(
        &dir,
        "node1",
        &["contacts", "add", "--from-rendezvous", "nope"],
    );
    assert!(!o.status.success());
    let contacts = json(&dir, "node1", &["contacts", "list"]);
    assert_eq!(contacts.as_array().unwrap().len(), 2, "{contacts}");
}

/// The contact `id` as `node` lists it.
fn contact(dir: &Path, node: &str, id: &str) -> Value {
    let list = json(dir, node, &["contacts", "list"]);
    list.as_array()
        .unwrap()
        .iter()
        .find(|c| c["id"] == id)
        .cloned()
        .unwrap_or(Value::Null)
}

/// Waits (bounded) until `node` lists contact `id` at `version`.
fn wait_version(dir: &Path, node: &str, id: &str, version: u64) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let c = contact(dir, node, id);
        if c["version"].as_u64() == Some(version) {
            return c;
        }
        assert!(
            Instant::now() < deadline,
            "{node} never saw version {version} of {id}: {c}\n{}",
            logs(dir)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Sends and waits for delivery, then checks the receiver recorded it.
fn exchange(dir: &Path, from: &str, to: &str, to_id: &str, text: &str) {
    let sent = json(
        dir,
        from,
        &["send", "--wait", "--timeout-secs", "30", to_id, text],
    );
    assert_eq!(sent["status"], "delivered", "{sent}");
    wait_received(dir, to, text);
}

fn wait_received(dir: &Path, node: &str, text: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = json(dir, node, &["messages"]);
        if got
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["text"] == text && m["direction"] == "in")
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{node} never got {text:?}: {got}\n{}",
            logs(dir)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn node_log(dir: &Path, node: &str) -> String {
    std::fs::read_to_string(dir.join(node).join("log")).unwrap_or_default()
}

#[test]
fn rename_and_rotate_reach_contacts_and_messages_keep_flowing() {
    if !have_bash() {
        eprintln!("skipping: bash is not available");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ln");
    let _down = up(&dir, "3", true);
    let (id1, id2) = (id_of(&dir, "node1"), id_of(&dir, "node2"));
    assert_eq!(contact(&dir, "node2", &id1)["version"], 1);

    // Rename while running: the node publishes version 2 and tells its contacts at once.
    let v = json(&dir, "node1", &["id", "rename", "alice2"]);
    assert_eq!(v["version"], 2, "{v}");
    assert_eq!(v["username"], "alice2", "{v}");
    assert_eq!(v["live"], true, "{v}");
    assert_eq!(json(&dir, "node1", &["id"])["version"], 2);
    let c = wait_version(&dir, "node2", &id1, 2);
    assert_eq!(c["username"], "alice2", "{c}");
    wait_version(&dir, "node3", &id1, 2);
    exchange(&dir, "node1", "node2", &id2, "after rename 1->2");
    exchange(&dir, "node2", "node1", &id1, "after rename 2->1");

    // Rotate the Noise key while running: version 3 reaches contacts and the rendezvous
    // server; the sessions keep working both ways.
    let v = json(&dir, "node1", &["id", "rotate-noise-key"]);
    assert_eq!(v["version"], 3, "{v}");
    assert_eq!(v["live"], true, "{v}");
    wait_version(&dir, "node2", &id1, 3);
    wait_version(&dir, "node3", &id1, 3);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let d = json(&dir, "node2", &["discover", &id1]);
        if d["peers"][0]["version"] == 3 {
            break;
        }
        assert!(Instant::now() < deadline, "rendezvous still has {d}");
        std::thread::sleep(Duration::from_millis(200));
    }
    exchange(&dir, "node1", "node2", &id2, "after rotation 1->2");
    exchange(&dir, "node2", "node1", &id1, "after rotation 2->1");

    // A first-contact message in flight during a rotation: node3 (no session with node1 yet)
    // seals one to node1's version-3 Noise key while node1 is offline; it waits at node1's
    // relay. node1 rotates again while stopped (version 4) with a short grace period, starts,
    // and still opens it with the rotated-out key; the reply carries version 4 to node3.
    let o = run(&dir, &["stop", "node1"], &[], Duration::from_secs(30));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg = dir.join("node1").join("config.toml");
    let text = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        text.replace("[node]\n", "[node]\nnoise_key_grace_secs = 20\n"),
    )
    .unwrap();
    let sent = json(&dir, "node3", &["send", &id1, "sealed to the old key"]);
    let mid = sent["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ms = json(&dir, "node3", &["messages"]);
        let st = ms
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == mid.as_str())
            .map(|m| m["status"].clone());
        if st == Some(Value::from("stored_at_relay")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not stored at the relay: {st:?}\n{}",
            logs(&dir)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let v = json(&dir, "node1", &["id", "rotate-noise-key"]);
    assert_eq!(v["version"], 4, "{v}");
    assert_eq!(v["live"], false, "{v}");
    let prev = dir.join("node1/data/previous-noise-keys");
    assert_eq!(
        std::fs::read_to_string(&prev).unwrap().lines().count(),
        2,
        "both rotated-out keys are in their grace period"
    );
    let o = run(&dir, &["start", "node1"], &[], Duration::from_secs(30));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    wait_received(&dir, "node1", "sealed to the old key");
    let done = json(
        &dir,
        "node3",
        &[
            "send",
            "--wait",
            "--timeout-secs",
            "30",
            &id1,
            "and a second one",
        ],
    );
    assert_eq!(done["status"], "delivered", "{done}");
    exchange(
        &dir,
        "node1",
        "node3",
        &id_of(&dir, "node3"),
        "reply from v4",
    );
    wait_version(&dir, "node3", &id1, 4);
    // node2 learns version 4 from the handshake of its next connection to node1.
    exchange(&dir, "node2", "node1", &id1, "after restart 2->1");
    wait_version(&dir, "node2", &id1, 4);

    // The 20 s grace period of the key rotated out while stopped ends: that key is forgotten
    // (its line removed, logged); the one rotated out earlier under the default 7 days stays.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let left = std::fs::read_to_string(&prev).unwrap_or_default();
        if left.lines().count() == 1
            && node_log(&dir, "node1").contains("rotated-out noise key forgotten")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "old key not forgotten: {left:?}\n{}",
            logs(&dir)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    exchange(&dir, "node2", "node1", &id1, "after the grace period");
}

/// The unknown-sender case (commit 6949378, with issue 9 item 3): node1 found node2 through
/// rendezvous and writes to it while node2 is down, so the message reaches node2 through its
/// relay and no handshake ever shows node2 who node1 is. node2 looks the sender up through
/// rendezvous and can answer it — as a stranger, not a contact: its contact list stays empty.
#[test]
fn unknown_sender_through_a_relay_can_be_answered_as_a_stranger() {
    if !have_bash() {
        eprintln!("skipping: bash is not available");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ln");
    let _down = up(&dir, "2", false);
    let (id1, id2) = (id_of(&dir, "node1"), id_of(&dir, "node2"));
    let c = json(
        &dir,
        "node1",
        &["contacts", "add", "--from-rendezvous", &id2],
    );
    assert_eq!(c["id"], id2.as_str(), "{c}");
    let o = run(&dir, &["stop", "node2"], &[], Duration::from_secs(30));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let sent = json(&dir, "node1", &["send", &id2, "through the relay"]);
    let msg_id = sent["id"].as_str().unwrap().to_string();
    // Stored at node2's relay (node2 is down, so never directly).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let h = json(&dir, "node1", &["messages"]);
        let st = h
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["id"] == msg_id.as_str())
            .map(|m| m["status"].as_str().unwrap_or_default().to_string());
        if st.as_deref() == Some("stored_at_relay") {
            break;
        }
        assert!(Instant::now() < deadline, "not stored at the relay: {h}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let o = run(&dir, &["start", "node2"], &[], Duration::from_secs(40));
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    wait_received(&dir, "node2", "through the relay");
    // node2 answers the unknown sender by its id.
    let deadline = Instant::now() + Duration::from_secs(30);
    let back = loop {
        let o = cli(
            &dir,
            "node2",
            &[
                "send",
                "--json",
                "--wait",
                "--timeout-secs",
                "20",
                &id1,
                "answer to a stranger",
            ],
        );
        if o.status.success() {
            break serde_json::from_slice::<Value>(&o.stdout).unwrap();
        }
        // Until the rendezvous lookup has pinned the sender.
        assert!(
            Instant::now() < deadline,
            "node2 cannot answer the unknown sender: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            node_log(&dir, "node2")
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(back["status"], "delivered", "{back}");
    wait_received(&dir, "node1", "answer to a stranger");
    // A stranger, not a contact.
    let contacts = json(&dir, "node2", &["contacts", "list"]);
    assert_eq!(contacts.as_array().unwrap().len(), 0, "{contacts}");
    let strangers = json(&dir, "node2", &["contacts", "list", "--strangers"]);
    assert!(
        strangers
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["id"] == id1.as_str()),
        "{strangers}"
    );
}
