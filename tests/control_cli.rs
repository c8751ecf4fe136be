//! The control API through the real binary: `sremp status | contacts | send | messages` against
//! a running `sremp run`, and the clear error when no node runs. Loopback only, bounded waits.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{bin, node_config, Proc};
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const START: Duration = Duration::from_secs(20);

fn sremp(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("SREMP_CONFIG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "failed: {}", stderr(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(o)))
}

/// A running `sremp run` with its config file and data dir.
struct RunningNode {
    proc: Proc,
    config: PathBuf,
    data: PathBuf,
    _dir: tempfile::TempDir,
}

impl RunningNode {
    fn start(extra: &str) -> RunningNode {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("node.toml");
        std::fs::write(&config, format!("{}{extra}", node_config(dir.path(), 5000))).unwrap();
        let proc = Proc::spawn(&["--config", config.to_str().unwrap(), "run"]);
        let data = dir.path().join("data");
        let node = RunningNode {
            proc,
            config,
            data,
            _dir: dir,
        };
        node.wait_ready();
        node
    }

    fn wait_ready(&self) {
        let sock = self.data.join("control.sock");
        let deadline = Instant::now() + START;
        while Instant::now() < deadline {
            if UnixStream::connect(&sock).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("node did not open its control socket:\n{}", self.proc.log());
    }

    fn cmd(&self, args: &[&str]) -> Output {
        let mut all = vec!["--config", self.config.to_str().unwrap()];
        all.extend_from_slice(args);
        sremp(&all)
    }

    fn socket(&self) -> PathBuf {
        self.data.join("control.sock")
    }
}

/// A raw control connection: write lines, read lines (bounded by a read timeout).
fn raw(path: &Path) -> (BufReader<UnixStream>, UnixStream) {
    let s = UnixStream::connect(path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    (BufReader::new(s.try_clone().unwrap()), s)
}

fn roundtrip(r: &mut BufReader<UnixStream>, w: &mut UnixStream, line: &[u8]) -> serde_json::Value {
    w.write_all(line).unwrap();
    w.write_all(b"\n").unwrap();
    let mut resp = String::new();
    r.read_line(&mut resp).unwrap();
    serde_json::from_str(&resp).unwrap_or_else(|e| panic!("bad response line ({e}): {resp:?}"))
}

#[test]
fn commands_without_a_running_node_fail_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("nobody");
    let d = d.to_str().unwrap();
    let commands: [&[&str]; 8] = [
        &["status"],
        &["status", "--json"],
        &["contacts", "list"],
        &["contacts", "add", "sremp1:AAAA"],
        &["contacts", "trust", "bob"],
        &["send", "bob", "hi"],
        &["messages"],
        &["messages", "--follow"],
    ];
    for args in commands {
        let mut all = vec!["--data-dir", d];
        all.extend_from_slice(args);
        let out = sremp(&all);
        assert!(!out.status.success(), "{args:?} succeeded without a node");
        let err = stderr(&out);
        assert!(
            err.contains("node is not running (no control socket at")
                && err.contains("control.sock"),
            "{args:?}: {err}"
        );
        assert!(stdout(&out).is_empty(), "{args:?} printed {}", stdout(&out));
    }
    // A stale socket file (nobody listening) is also "not running".
    std::fs::create_dir_all(d).unwrap();
    drop(std::os::unix::net::UnixListener::bind(Path::new(d).join("control.sock")).unwrap());
    let out = sremp(&["--data-dir", d, "status"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("node is not running"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn status_contacts_and_messages_against_a_running_node() {
    let node = RunningNode::start("");

    // The socket is owner-only.
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(node.socket())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
    }

    // status --json parses and names the listen address; human output too.
    let status = json(&node.cmd(&["status", "--json"]));
    let listen = status["listen"].as_str().expect("status.listen");
    assert!(listen.starts_with("127.0.0.1:"), "{status}");
    let my_id = status["id"].as_str().expect("status.id").to_string();
    let human = node.cmd(&["status"]);
    assert!(human.status.success(), "{}", stderr(&human));
    assert!(stdout(&human).contains(listen), "{}", stdout(&human));

    // `sremp id` asks the running node: its card has the real listen port.
    let live = json(&node.cmd(&["id", "--json"]));
    assert_eq!(live["id"].as_str(), Some(my_id.as_str()));
    let card = sremp::identity::ContactCard::from_text(live["card"].as_str().unwrap()).unwrap();
    assert!(
        card.endpoints.iter().any(|e| e.to_string() == listen),
        "{card:?}"
    );

    // Empty history.
    assert_eq!(
        json(&node.cmd(&["messages", "--json"])),
        serde_json::json!([])
    );
    assert!(stdout(&node.cmd(&["messages"])).contains("no messages"));
    assert_eq!(
        json(&node.cmd(&["contacts", "list", "--json"])),
        serde_json::json!([])
    );

    // Another identity's card (offline `sremp id` of a second data dir).
    let other = tempfile::tempdir().unwrap();
    let od = other.path().to_str().unwrap();
    assert!(sremp(&["--data-dir", od, "init", "--username", "bob"])
        .status
        .success());
    let bob = json(&sremp(&["--data-dir", od, "id", "--json"]));
    let bob_id = bob["id"].as_str().unwrap().to_string();
    let bob_card = bob["card"].as_str().unwrap().to_string();

    let added = json(&node.cmd(&["contacts", "add", &bob_card, "--json"]));
    assert_eq!(added["id"].as_str(), Some(bob_id.as_str()));
    assert_eq!(added["username"].as_str(), Some("bob"));
    assert_eq!(added["trust"].as_str(), Some("unknown"));

    let list = json(&node.cmd(&["contacts", "list", "--json"]));
    assert_eq!(list.as_array().map(Vec::len), Some(1), "{list}");
    assert_eq!(list[0]["id"].as_str(), Some(bob_id.as_str()));
    let human = node.cmd(&["contacts", "list"]);
    assert!(stdout(&human).contains(&bob_id) && stdout(&human).contains("bob"));

    // Trust by username, reject by id.
    let t = json(&node.cmd(&["contacts", "trust", "bob", "--json"]));
    assert_eq!(t["trust"].as_str(), Some("trusted"));
    let r = json(&node.cmd(&["contacts", "reject", &bob_id, "--json"]));
    assert_eq!(r["trust"].as_str(), Some("rejected"));
    let list = json(&node.cmd(&["contacts", "list", "--json"]));
    assert_eq!(list[0]["trust"].as_str(), Some("rejected"));

    // Bad input: clear errors and a non-zero exit.
    let bad = node.cmd(&["contacts", "add", "not-a-card"]);
    assert!(!bad.status.success());
    assert!(
        stderr(&bad).contains("invalid contact card"),
        "{}",
        stderr(&bad)
    );
    let bad = node.cmd(&["contacts", "trust", "nobody-by-that-name"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("unknown contact"), "{}", stderr(&bad));
    let bad = node.cmd(&["send", "nobody-by-that-name", "hi"]);
    assert!(!bad.status.success());
    assert!(stderr(&bad).contains("unknown contact"), "{}", stderr(&bad));
    let bad = node.cmd(&["send", "bob", "hi"]);
    assert!(
        !bad.status.success(),
        "sending to a rejected contact succeeded"
    );
    assert!(stderr(&bad).contains("rejected"), "{}", stderr(&bad));
    let own = node.cmd(&["contacts", "add", live["card"].as_str().unwrap()]);
    assert!(!own.status.success());

    // Nothing of that reached the history.
    assert_eq!(
        json(&node.cmd(&["messages", "--json"])),
        serde_json::json!([])
    );
}

#[test]
fn raw_protocol_survives_bad_requests() {
    let node = RunningNode::start("");
    let (mut r, mut w) = raw(&node.socket());
    let v = roundtrip(&mut r, &mut w, br#"{"cmd":"status"}"#);
    assert_eq!(v["ok"], true);
    assert!(v["status"]["listen"].is_string(), "{v}");
    for bad in [
        &b"{not json"[..],
        br#"{"cmd":"launch_missiles"}"#,
        b"[]",
        b"\"status\"",
        br#"{"cmd":"send"}"#,
    ] {
        let v = roundtrip(&mut r, &mut w, bad);
        assert_eq!(v["ok"], false, "{v}");
        assert!(v["error"].as_str().is_some_and(|e| !e.is_empty()), "{v}");
    }
    // Same connection still works.
    let v = roundtrip(&mut r, &mut w, br#"{"cmd":"messages","limit":5}"#);
    assert_eq!(v, serde_json::json!({"ok": true, "messages": []}));
    let v = roundtrip(
        &mut r,
        &mut w,
        br#"{"cmd":"wait_delivered","id":"zz","timeout_ms":10}"#,
    );
    assert_eq!(v["ok"], false, "{v}");

    // An over-long line gets an error and the connection is closed.
    let (mut r2, mut w2) = raw(&node.socket());
    let long = vec![b'x'; sremp::node::control::MAX_REQUEST_LINE + 1024];
    let _ = w2.write_all(&long);
    let _ = w2.write_all(b"\n");
    let mut resp = String::new();
    r2.read_line(&mut resp).unwrap();
    let v: serde_json::Value = serde_json::from_str(&resp).unwrap();
    assert_eq!(v["ok"], false);
    assert!(v["error"].as_str().unwrap().contains("longer than"), "{v}");
    let mut rest = Vec::new();
    assert_eq!(
        r2.read_to_end(&mut rest).unwrap_or(0),
        0,
        "connection not closed"
    );

    // The node is still serving.
    assert!(node.cmd(&["status", "--json"]).status.success());
    assert!(
        node.proc.log().contains("control socket listening"),
        "{}",
        node.proc.log()
    );
}

#[test]
fn too_many_clients_are_refused_not_queued() {
    let node = RunningNode::start("");
    // Hold the maximum number of idle connections open.
    let max = sremp::node::control::MAX_CLIENTS;
    let mut held = Vec::new();
    for _ in 0..max {
        let (mut r, mut w) = raw(&node.socket());
        let v = roundtrip(&mut r, &mut w, br#"{"cmd":"card"}"#);
        assert_eq!(v["ok"], true);
        held.push((r, w));
    }
    let (mut r, _w) = raw(&node.socket());
    let mut resp = String::new();
    r.read_line(&mut resp).unwrap();
    assert!(resp.contains("too many control clients"), "{resp}");
    // Freeing the slots lets commands through again (bounded retry while the node notices).
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = node.cmd(&["status", "--json"]);
        if out.status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "slots were not released: {}",
            stderr(&out)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Two nodes on loopback: cards exchanged through `sremp id` of the running nodes, a message
/// sent with `send --wait`, seen by `messages --follow --json` on the receiver.
#[test]
fn two_nodes_send_wait_and_follow() {
    let a = RunningNode::start("");
    let b = RunningNode::start("");
    let a_card = json(&a.cmd(&["id", "--json"]));
    let b_card = json(&b.cmd(&["id", "--json"]));
    json(&a.cmd(&[
        "contacts",
        "add",
        b_card["card"].as_str().unwrap(),
        "--json",
    ]));
    json(&b.cmd(&[
        "contacts",
        "add",
        a_card["card"].as_str().unwrap(),
        "--json",
    ]));
    let b_id = b_card["id"].as_str().unwrap();

    // Follow on b before anything is sent.
    let mut follower = Command::new(bin())
        .args([
            "--config",
            b.config.to_str().unwrap(),
            "messages",
            "--follow",
            "--json",
        ])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let out = follower.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });

    let sent = a.cmd(&[
        "send",
        b_id,
        "hello over the control API",
        "--wait",
        "--timeout-secs",
        "20",
    ]);
    assert!(
        sent.status.success(),
        "send --wait failed: {}\n--- a:\n{}\n--- b:\n{}",
        stderr(&sent),
        a.proc.log(),
        b.proc.log()
    );
    let msg_id = stdout(&sent).trim().to_string();
    assert_eq!(msg_id.len(), 16, "{msg_id:?}");
    assert!(msg_id.chars().all(|c| c.is_ascii_hexdigit()));

    // a's history: delivered.
    let hist = json(&a.cmd(&["messages", "--json"]));
    let e = hist
        .as_array()
        .and_then(|v| v.iter().find(|e| e["id"] == msg_id.as_str()))
        .cloned();
    let e = e.unwrap_or_else(|| panic!("{hist}"));
    assert_eq!(e["status"], "delivered");
    assert_eq!(e["direction"], "out");

    // b's follower saw it arrive.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut seen = false;
    while Instant::now() < deadline && !seen {
        if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            seen = v["id"] == msg_id.as_str()
                && v["direction"] == "in"
                && v["text"] == "hello over the control API";
        }
    }
    let _ = follower.kill();
    let _ = follower.wait();
    assert!(seen, "the follower did not print the message");

    // b's history and --limit.
    let hist = json(&b.cmd(&["messages", "--json", "--limit", "1"]));
    assert_eq!(hist.as_array().map(Vec::len), Some(1));
    assert_eq!(hist[0]["status"], "received");

    // send --json prints the whole entry.
    let entry = json(&a.cmd(&["send", b_id, "second", "--json"]));
    assert_eq!(entry["text"], "second");
    assert_eq!(entry["direction"], "out");
}
