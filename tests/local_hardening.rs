//! Issue 9 items 4, 7, 8 and 9 with the real binary: owner-only files, defaults and limits that
//! agree, error messages that name the path and the fix, prompt shutdown and hedging that
//! matches docs/PROTOCOL.md.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{introduce, run_bin, signal, BinNode, BinNodeOptions, BinRelay, Proc};
use serde_json::Value;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn set_mode(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap();
}

/// Every directory under `dir` is 0700 and every file 0600 (sockets too).
fn assert_owner_only(dir: &Path) {
    assert_eq!(mode(dir), 0o700, "{}", dir.display());
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            assert_owner_only(&e.path());
        } else {
            let m = mode(&e.path());
            assert_eq!(m & 0o077, 0, "{} has mode {m:o}", e.path().display());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Item 4: owner-only data
// ---------------------------------------------------------------------------------------------

#[test]
fn node_data_dir_database_and_socket_are_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let mut node = BinNode::new(dir.path(), &BinNodeOptions::loopback("alice"));
    // A pre-existing data dir readable by everyone is tightened (with a warning).
    std::fs::create_dir_all(&node.data).unwrap();
    set_mode(&node.data, 0o755);
    node.start();
    let sock = node.data.join("control.sock");
    assert_eq!(mode(&sock) & 0o077, 0, "control socket");
    assert_owner_only(&node.data);
    assert!(
        node.data.join("db").join("db").exists(),
        "sled's data file should exist"
    );
    assert!(
        node.logs().contains("tightened it to 0700"),
        "{}",
        node.logs()
    );
    node.stop();
    assert_owner_only(&node.data);
}

#[test]
fn world_writable_data_dir_is_refused_with_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    set_mode(&data, 0o777);
    let d = data.to_str().unwrap();
    for args in [vec!["--data-dir", d, "init"], vec!["--data-dir", d, "run"]] {
        let o = run_bin(&args);
        assert!(!o.status.success(), "{args:?} accepted a 0777 data dir");
        let e = stderr(&o);
        assert!(e.contains(d), "{e}");
        assert!(e.contains("writable by group or others"), "{e}");
        assert!(e.contains(&format!("chmod 700 {d}")), "{e}");
        assert!(
            !data.join("identity.key").exists(),
            "{args:?} created a key"
        );
    }
    assert_eq!(mode(&data), 0o777, "a refused dir is left as it was");
}

#[test]
fn relay_data_is_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let relay = BinRelay::start(dir.path(), "127.0.0.1:0", None);
    let data = dir.path().join("relay").join("data");
    let mut p = relay.proc;
    signal(&p.child, libc::SIGTERM);
    common::reap(&mut p.child, Duration::from_secs(20));
    assert_owner_only(&data);
}

// ---------------------------------------------------------------------------------------------
// Item 7: defaults and limits
// ---------------------------------------------------------------------------------------------

#[test]
fn invalid_log_level_is_refused_before_any_identity_exists() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("node.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\n[log]\nlevel = \"verbose\"\n[listen]\naddress = \"127.0.0.1:0\"\n",
            data.display()
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    for cmd in ["run", "init", "relay"] {
        let o = run_bin(&["--config", c, cmd]);
        assert!(!o.status.success(), "{cmd} accepted level = \"verbose\"");
        let e = stderr(&o);
        assert!(e.contains("log.level"), "{cmd}: {e}");
        assert!(e.contains("\"verbose\""), "{cmd}: {e}");
        assert!(!data.join("identity.key").exists(), "{cmd} created a key");
    }
    // A refused relay policy is also checked before the identity is created.
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\n[relay]\nmax_message_size = 0\n[listen]\naddress = \"127.0.0.1:0\"\n",
            data.display()
        ),
    )
    .unwrap();
    for cmd in ["run", "init"] {
        let o = run_bin(&["--config", c, cmd]);
        assert!(!o.status.success(), "{cmd} accepted a bad relay policy");
        assert!(!data.join("identity.key").exists(), "{cmd} created a key");
    }
}

#[test]
fn init_defaults_the_username_like_run() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("node.toml");
    std::fs::write(&cfg, "username = \"carol\"\n").unwrap();
    let data = dir.path().join("data");
    let o = run_bin(&[
        "--config",
        cfg.to_str().unwrap(),
        "--data-dir",
        data.to_str().unwrap(),
        "init",
        "--json",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = run_bin(&["--data-dir", data.to_str().unwrap(), "id", "--json"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["username"], "carol");
}

#[test]
fn json_errors_are_json_with_stable_fields() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    let o = run_bin(&["--data-dir", d, "id", "--json"]);
    assert!(!o.status.success());
    let v: Value = serde_json::from_str(stderr(&o).trim()).unwrap();
    assert_eq!(v["ok"], false, "{v}");
    assert_eq!(v["kind"], "key_file", "{v}");
    assert!(v["error"].as_str().unwrap().contains(d), "{v}");
    // A node that is not running.
    let o = run_bin(&["--data-dir", d, "status", "--json"]);
    let v: Value = serde_json::from_str(stderr(&o).trim()).unwrap();
    assert_eq!(v["kind"], "control", "{v}");
    // A usage error.
    let o = run_bin(&["--data-dir", d, "send", "--json"]);
    assert!(!o.status.success());
    let v: Value = serde_json::from_str(stderr(&o).trim()).unwrap();
    assert_eq!(v["kind"], "usage", "{v}");
}

#[test]
fn wildcard_listen_address_warns_and_says_what_to_set() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let d = data.to_str().unwrap();
    assert!(run_bin(&["--data-dir", d, "init", "--username", "x"])
        .status
        .success());
    // The default listen address is 0.0.0.0:7480.
    let o = run_bin(&["--data-dir", d, "id", "--no-qr"]);
    assert!(o.status.success());
    let e = stderr(&o);
    assert!(e.contains("0.0.0.0:7480"), "{e}");
    assert!(e.contains("[listen] advertise"), "{e}");
}

#[test]
fn longest_valid_text_fits_the_control_line_and_longer_names_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = BinNode::new(dir.path(), &BinNodeOptions::loopback("alice"));
    a.start();
    // A contact that is never online: the message only has to reach the outbox.
    let other = dir.path().join("other");
    let od = other.to_str().unwrap();
    assert!(run_bin(&["--data-dir", od, "init", "--username", "bob"])
        .status
        .success());
    let o = run_bin(&["--data-dir", od, "id", "--json", "--no-qr"]);
    let v: Value = serde_json::from_slice(&o.stdout).unwrap();
    let (bob, card) = (v["id"].as_str().unwrap(), v["card"].as_str().unwrap());
    a.json(&["contacts", "add", card]);
    // Worst case for JSON: every byte a control character, escaped as \u00XX (6 bytes).
    let text = "\u{1}".repeat(65_536);
    let o = a.cmd(&["send", bob, &text, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let text = "\u{1}".repeat(65_537);
    let o = a.cmd(&["send", bob, &text]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("65537 bytes"), "{e}");
    assert!(e.contains("message text limit"), "{e}");
    assert!(e.contains("65536"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// Item 8: errors that name the path and the fix
// ---------------------------------------------------------------------------------------------

#[test]
fn key_file_that_is_a_directory_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    set_mode(&data, 0o700);
    let key = data.join("identity.key");
    std::fs::create_dir(&key).unwrap();
    let d = data.to_str().unwrap();
    for args in [
        vec!["--data-dir", d, "id"],
        vec!["--data-dir", d, "run"],
        vec!["--data-dir", d, "init"],
    ] {
        let o = run_bin(&args);
        assert!(!o.status.success());
        let e = stderr(&o);
        assert!(e.contains(key.to_str().unwrap()), "{args:?}: {e}");
        assert!(e.contains("not a regular file"), "{args:?}: {e}");
        assert!(!e.contains("chmod"), "{args:?}: {e}");
    }
}

#[test]
fn data_dir_that_is_a_file_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("data");
    std::fs::write(&f, b"x").unwrap();
    let d = f.to_str().unwrap();
    for args in [vec!["--data-dir", d, "init"], vec!["--data-dir", d, "run"]] {
        let o = run_bin(&args);
        assert!(!o.status.success());
        let e = stderr(&o);
        assert!(e.contains(&format!("data directory {d}")), "{e}");
        assert!(e.contains("not a directory"), "{e}");
    }
}

#[test]
fn too_many_control_clients_is_said_so() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = BinNode::new(dir.path(), &BinNodeOptions::loopback("alice"));
    a.start();
    let sock = a.data.join("control.sock");
    // Start-up probes are done once a full request was answered.
    assert!(a.cmd(&["status"]).status.success());
    std::thread::sleep(Duration::from_millis(200));
    // Hold every slot (MAX_CLIENTS = 16) with connections that never send a request.
    let held: Vec<_> = (0..16)
        .map(|_| std::os::unix::net::UnixStream::connect(&sock).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..5 {
        let o = a.cmd(&["status"]);
        assert!(
            !o.status.success(),
            "{}\n{}\n{}",
            String::from_utf8_lossy(&o.stdout),
            stderr(&o),
            a.logs()
        );
        let e = stderr(&o);
        assert!(e.contains("too many control clients"), "{e}");
    }
    drop(held);
}

// ---------------------------------------------------------------------------------------------
// Item 9: shutdown and hedging
// ---------------------------------------------------------------------------------------------

/// SIGTERM, then how long until the process exited (bounded by 20 s).
fn sigterm_time(p: &mut Proc) -> Duration {
    let t = Instant::now();
    signal(&p.child, libc::SIGTERM);
    assert!(
        common::reap(&mut p.child, Duration::from_secs(20)),
        "no exit after SIGTERM"
    );
    t.elapsed()
}

#[test]
fn sigterm_does_not_wait_for_peers_holding_pooled_connections() {
    let dir = tempfile::tempdir().unwrap();
    let mut a = BinNode::new(dir.path(), &BinNodeOptions::loopback("alice"));
    let mut b = BinNode::new(dir.path(), &BinNodeOptions::loopback("bob"));
    a.start();
    b.start();
    let (a_id, b_id) = introduce(&a, &b);
    // Both directions: each node holds a pooled connection to the other and serves one.
    for (from, to) in [(&a, &b_id), (&b, &a_id)] {
        let v = from.json(&["send", to, "hi", "--wait", "--timeout-secs", "20"]);
        assert_eq!(v["path"], "direct", "{v}");
    }
    let mut pb = b.proc.take().unwrap();
    let tb = sigterm_time(&mut pb);
    let log = pb.log();
    assert!(
        !log.contains("still running after the grace period"),
        "shutdown waited for idle peers:\n{log}"
    );
    assert!(!log.contains("did not stop in time"), "{log}");
    let mut pa = a.proc.take().unwrap();
    let ta = sigterm_time(&mut pa);
    let log = pa.log();
    assert!(
        !log.contains("still running after the grace period"),
        "shutdown waited for idle peers:\n{log}"
    );
    println!("SIGTERM to exit: bob {tb:?}, alice {ta:?}");
    // The store was flushed: bob's history survives a restart.
    b.start();
    assert!(b
        .messages()
        .iter()
        .any(|e| e["direction"] == "in" && e["text"] == "hi"));
}

/// The `plan=` of the "delivery plan" debug line for message `id`, if logged yet.
fn plan_of(node: &BinNode, id: &str) -> Option<String> {
    node.logs()
        .lines()
        .find(|l| l.contains("delivery plan") && l.contains(id))
        .and_then(|l| {
            let s = l.find("plan=")? + 5;
            Some(l[s..].split_whitespace().next()?.to_string())
        })
}

#[test]
fn first_hedge_that_fires_makes_the_next_message_race() {
    let dir = tempfile::tempdir().unwrap();
    let relay = BinRelay::start(dir.path(), "127.0.0.1:0", None);
    let mut ao = BinNodeOptions::loopback("alice");
    // A dark direct path must not be given up on before the next message is planned.
    ao.ack_timeout_ms = 20_000;
    ao.direct_timeout_ms = 20_000;
    let mut bo = BinNodeOptions::loopback("bob");
    bo.relays = vec![relay.hint.clone()];
    let mut a = BinNode::new(dir.path(), &ao);
    let mut b = BinNode::new(dir.path(), &bo);
    a.start();
    b.start();
    let (_, b_id) = introduce(&a, &b);
    let v = a.json(&["send", &b_id, "one", "--wait", "--timeout-secs", "20"]);
    assert_eq!(v["status"], "delivered", "{v}");
    let proven = a
        .proc
        .as_ref()
        .unwrap()
        .wait_for_line("direct=true", Duration::from_secs(20));
    assert!(proven.is_some(), "direct path never proven:\n{}", a.logs());
    // Proven now. Make the direct path go dark: bob's process stops answering, its sockets
    // stay open (connections hang instead of failing).
    let bob_pid = i32::try_from(b.pid().unwrap()).unwrap();
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(bob_pid, libc::SIGSTOP) };
    let two = a.send(&b_id, "two");
    let deadline = Instant::now() + Duration::from_secs(20);
    // The hedge fires, the relay takes "two".
    loop {
        let h = a.messages();
        if h.iter()
            .any(|e| e["id"] == two.as_str() && e["status"] == "stored_at_relay")
        {
            break;
        }
        assert!(Instant::now() < deadline, "two never reached the relay");
        std::thread::sleep(Duration::from_millis(50));
    }
    let three = a.send(&b_id, "three");
    let deadline = Instant::now() + Duration::from_secs(20);
    let plan = loop {
        if let Some(p) = plan_of(&a, &three) {
            break p;
        }
        assert!(Instant::now() < deadline, "no plan logged:\n{}", a.logs());
        std::thread::sleep(Duration::from_millis(20));
    };
    unsafe { libc::kill(bob_pid, libc::SIGCONT) };
    assert_eq!(plan_of(&a, &two).as_deref(), Some("Hedge"));
    assert_eq!(
        plan, "Race",
        "after a hedge fired the next message must race"
    );
    drop(relay);
}
