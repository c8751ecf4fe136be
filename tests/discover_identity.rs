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
    let o = cli(&dir, "node1", &["contacts", "add", "--from-rendezvous", "nope"]);
    assert!(!o.status.success());
    let contacts = json(&dir, "node1", &["contacts", "list"]);
    assert_eq!(contacts.as_array().unwrap().len(), 2, "{contacts}");
}
