//! Store damage with the real binary: a node's or a relay-only relay's store damaged while the
//! process is stopped makes `sremp run` / `sremp relay` refuse to start (non-zero exit, a
//! message naming the file, what is damaged and what to do) instead of starting on a partial
//! store; garbage in sled's `conf` is named as such; a node SIGKILLed mid-burst restarts without
//! a false damage report; `sremp backup` while messages flow, damage, `sremp restore`, and the
//! conversation continues; a wrong key or a tampered backup is refused with the store untouched.
//!
//! Every wait is bounded; all traffic stays on 127.0.0.1.

// Tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{introduce, reap, signal, BinNode, BinNodeOptions, BinRelay, ControlConn, Proc};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

/// The damage variants of issue 18, applied to a stopped store's files.
#[derive(Clone, Copy, Debug)]
enum Damage {
    /// 512 random bytes over the start of `db`.
    RandomStart,
    /// 4 KiB of random bytes in the middle of `db`.
    RandomMiddle,
    /// `db` truncated to half its length.
    TruncateHalf,
    /// 32 bytes flipped, spread over `db`.
    Flip32,
    /// The last 4 KiB of `db` zeroed.
    ZeroTail,
    /// `db` deleted.
    DeleteDb,
    /// The whole database directory deleted.
    DeleteDir,
}

const ALL: [Damage; 7] = [
    Damage::RandomStart,
    Damage::RandomMiddle,
    Damage::TruncateHalf,
    Damage::Flip32,
    Damage::ZeroTail,
    Damage::DeleteDb,
    Damage::DeleteDir,
];

/// Deterministic bytes (xorshift), so a failure reproduces.
fn noise(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

fn damage(db_dir: &Path, d: Damage) {
    let file = db_dir.join("db");
    let mut b = std::fs::read(&file).unwrap();
    let len = b.len();
    match d {
        Damage::RandomStart => b[..512.min(len)].copy_from_slice(&noise(1, 512.min(len))),
        Damage::RandomMiddle => {
            let at = len / 2;
            let n = 4096.min(len - at);
            b[at..at + n].copy_from_slice(&noise(2, n));
        }
        Damage::TruncateHalf => b.truncate(len / 2),
        Damage::Flip32 => {
            // Spread over the part of the file sled has written (not its zero-filled tail).
            let used = b.iter().rposition(|&x| x != 0).unwrap_or(len) + 1;
            for i in 0..32 {
                b[(used / 33) * (i + 1)] ^= 0xFF;
            }
        }
        Damage::ZeroTail => {
            let used = b.iter().rposition(|&x| x != 0).unwrap_or(len) + 1;
            let from = used.saturating_sub(4096);
            b[from..used].fill(0);
        }
        Damage::DeleteDb => {
            std::fs::remove_file(&file).unwrap();
            return;
        }
        Damage::DeleteDir => {
            std::fs::remove_dir_all(db_dir).unwrap();
            return;
        }
    }
    std::fs::write(&file, b).unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let t = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &t);
        } else if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), t).unwrap();
        }
    }
}

/// Runs `args`; it must exit non-zero within 30 s (not start). Returns its stderr.
fn expect_refusal(args: &[&str], what: &str) -> String {
    let mut p = Proc::spawn(args);
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: the process started on a damaged store:\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    // Let the stderr reader drain.
    std::thread::sleep(Duration::from_millis(100));
    let log = p.log();
    assert!(!status.success(), "{what}: exit status {status}:\n{log}");
    log
}

fn wait_history(node: &BinNode, what: &str, f: impl Fn(&[Value]) -> bool) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let h = node.messages();
        if f(&h) {
            return h;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {h:#?}\n--- log:\n{}",
            node.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn count_in(h: &[Value]) -> usize {
    h.iter().filter(|e| e["direction"] == "in").count()
}

/// Alice and Bob exchange `n` messages each way (direct); both stay running.
fn conversation(dir: &Path, n: usize) -> (BinNode, BinNode, String, String) {
    let mut a = BinNode::new(dir, &BinNodeOptions::loopback("alice"));
    let mut b = BinNode::new(dir, &BinNodeOptions::loopback("bob"));
    a.start();
    b.start();
    let (a_id, b_id) = introduce(&a, &b);
    for i in 0..n {
        a.send(&b_id, &format!("a{i}"));
        b.send(&a_id, &format!("b{i}"));
    }
    wait_history(&b, "bob has alice's messages", |h| count_in(h) == n);
    wait_history(&a, "alice has bob's messages", |h| count_in(h) == n);
    (a, b, a_id, b_id)
}

#[test]
fn damaged_node_store_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b, _a_id, _b_id) = conversation(dir.path(), 15);
    a.stop();
    b.stop();
    let pristine = dir.path().join("pristine");
    copy_dir(&b.data, &pristine);
    let cfg = b.config.to_str().unwrap().to_string();
    // The undamaged copy starts (the checks do not refuse a healthy store).
    b.start();
    assert_eq!(count_in(&b.messages()), 15);
    b.stop();
    for d in ALL {
        copy_dir(&pristine, &b.data);
        damage(&b.data.join("db"), d);
        let log = expect_refusal(&["--config", &cfg, "run"], &format!("{d:?}"));
        eprintln!("{d:?}: {log}");
        assert!(log.contains("store damaged"), "{d:?}: {log}");
        assert!(log.contains("sremp restore"), "{d:?}: {log}");
        assert!(log.contains("/db"), "{d:?}: names the file: {log}");
        // Still refused the second time (nothing was "repaired" into an empty store).
        let again = expect_refusal(&["--config", &cfg, "run"], &format!("{d:?} again"));
        assert!(again.contains("store damaged"), "{d:?} again: {again}");
    }
    // Garbage in sled's conf file is named as such.
    copy_dir(&pristine, &b.data);
    std::fs::write(b.data.join("db/conf"), noise(9, 200)).unwrap();
    let log = expect_refusal(&["--config", &cfg, "run"], "conf garbage");
    assert!(log.contains("db/conf"), "{log}");
    assert!(log.contains("configuration file is corrupt"), "{log}");
    assert!(!log.contains("earlier than 0.29"), "{log}");
    // The pristine copy still starts with everything in it.
    copy_dir(&pristine, &b.data);
    b.start();
    assert_eq!(count_in(&b.messages()), 15);
}

#[test]
fn damaged_relay_store_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut relay = BinRelay::start(dir.path(), "127.0.0.1:0", None);
    let mut bob_o = BinNodeOptions::loopback("bob");
    bob_o.relays = vec![relay.hint.clone()];
    let mut a = BinNode::new(dir.path(), &BinNodeOptions::loopback("alice"));
    let mut b = BinNode::new(dir.path(), &bob_o);
    a.start();
    b.start();
    let (_, b_id) = introduce(&a, &b);
    b.stop();
    // 20 messages for the offline Bob end up stored at the relay-only relay.
    let ids: Vec<String> = (0..20).map(|i| a.send(&b_id, &format!("m{i}"))).collect();
    wait_history(&a, "all stored at the relay", |h| {
        ids.iter().all(|id| {
            h.iter()
                .any(|e| e["id"] == id.as_str() && e["status"] == "stored_at_relay")
        })
    });
    a.stop();
    signal(&relay.proc.child, libc::SIGTERM);
    assert!(reap(&mut relay.proc.child, Duration::from_secs(20)));
    let home = dir.path().join("relay");
    let data = home.join("data");
    let cfg = home.join("relay.toml").to_str().unwrap().to_string();
    let pristine = dir.path().join("relay-pristine");
    copy_dir(&data, &pristine);
    for d in ALL {
        copy_dir(&pristine, &data);
        damage(&data.join("relay-db"), d);
        let log = expect_refusal(&["relay", "--config", &cfg], &format!("relay {d:?}"));
        assert!(log.contains("store damaged"), "{d:?}: {log}");
        assert!(log.contains("relay-db/db"), "{d:?}: names the file: {log}");
        assert!(
            log.contains("move relay-db"),
            "{d:?}: says what to do: {log}"
        );
    }
    copy_dir(&pristine, &data);
    std::fs::write(data.join("relay-db/conf"), noise(5, 100)).unwrap();
    let log = expect_refusal(&["relay", "--config", &cfg], "relay conf garbage");
    assert!(log.contains("relay-db/conf"), "{log}");
    // An offline backup of the stopped relay, damage, restore: the relay starts again with
    // the stored messages.
    copy_dir(&pristine, &data);
    let backup = dir.path().join("relay.backup");
    let key = dir.path().join("relay.key");
    let (bk, kk) = (backup.to_str().unwrap(), key.to_str().unwrap());
    let o = common::run_bin(&[
        "--config", &cfg, "backup", "--relay", "--out", bk, "--key", kk, "--json",
    ]);
    assert!(o.status.success(), "{o:?}");
    let made: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(made["records"].as_u64().unwrap() >= 20, "{made}");
    damage(&data.join("relay-db"), Damage::RandomStart);
    expect_refusal(&["relay", "--config", &cfg], "relay damaged before restore");
    let o = common::run_bin(&[
        "--config", &cfg, "restore", bk, "--relay", "--key", kk, "--json",
    ]);
    assert!(o.status.success(), "{o:?}");
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["records"], made["records"], "{r}");
    let p = Proc::spawn(&["relay", "--config", &cfg]);
    assert!(
        p.wait_for_line("relay listening", Duration::from_secs(30))
            .is_some(),
        "{}",
        p.log()
    );
}

/// A crash is not damage: nodes SIGKILLed in the middle of a burst (both the sender with
/// commits in flight and the receiver) restart cleanly, several times.
#[test]
fn sigkill_mid_burst_is_not_damage() {
    let dir = tempfile::tempdir().unwrap();
    let (mut a, mut b, _a_id, b_id) = conversation(dir.path(), 2);
    for round in 0..4 {
        let mut conn = ControlConn::connect(&a);
        for i in 0..15 {
            conn.send(&b_id, &format!("r{round}-{i}"));
            if i == 7 {
                if round % 2 == 0 {
                    b.kill();
                } else {
                    // The sender dies with sends and commits in flight.
                    a.kill();
                    break;
                }
            }
        }
        drop(conn);
        // Restarting must work: `start` fails the test if the node exits.
        if a.proc.is_none() {
            a.start();
        }
        if b.proc.is_none() {
            b.start();
        }
        assert!(!a.logs().contains("store damaged"), "{}", a.logs());
        assert!(!b.logs().contains("store damaged"), "{}", b.logs());
    }
    // And the pair still works.
    let id = a.send(&b_id, "after the crashes");
    wait_history(&b, "bob receives after the crashes", |h| {
        h.iter().any(|e| e["text"] == "after the crashes")
    });
    wait_history(&a, "delivered", |h| {
        h.iter()
            .any(|e| e["id"] == id.as_str() && e["status"] == "delivered")
    });
}

/// Every file of a directory tree with its bytes (to prove a refused restore touched nothing).
fn snapshot_files(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.path(), std::fs::read(e.path()).unwrap()));
            }
        }
    }
    out.sort();
    out
}

/// Issue 18: backup while sending, damage, restore (without the ratchet sessions), and the
/// conversation continues with the gap repaired: alice re-sends what bob confirmed after the
/// snapshot and lost, nothing twice.
#[test]
fn backup_while_sending_then_damage_restore_and_continue() {
    let dir = tempfile::tempdir().unwrap();
    let (a, mut b, a_id, b_id) = conversation(dir.path(), 10);
    let backup = dir.path().join("bob.backup");
    let key = dir.path().join("bob.key");
    // Alice keeps sending while Bob's node takes the backup.
    let sender = {
        let mut conn = ControlConn::connect(&a);
        let b_id = b_id.clone();
        std::thread::spawn(move || {
            for i in 0..40 {
                conn.send(&b_id, &format!("flow{i}"));
                std::thread::sleep(Duration::from_millis(15));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(200));
    let out = b.json(&[
        "backup",
        "--out",
        backup.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert_eq!(out["key_created"], true, "{out}");
    assert!(out["records"].as_u64().unwrap() > 20, "{out}");
    assert_eq!(
        out["bytes"].as_u64().unwrap(),
        std::fs::metadata(&backup).unwrap().len()
    );
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "key file mode");
    }
    sender.join().unwrap();
    wait_history(&b, "bob has the whole flow", |h| count_in(h) == 50);
    b.stop();
    let cfg = b.config.to_str().unwrap().to_string();
    let db = b.data.join("db");

    // A healthy store is not replaced without --force.
    let o = b.cmd(&[
        "restore",
        backup.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--force"),
        "{o:?}"
    );

    damage(&db, Damage::RandomStart);
    let log = expect_refusal(&["--config", &cfg, "run"], "damaged before restore");
    assert!(log.contains("store damaged"), "{log}");
    let before = snapshot_files(&b.data);

    // Wrong key: refused, nothing touched.
    let wrong = dir.path().join("wrong.key");
    std::fs::write(&wrong, format!("{}\n", "ab".repeat(32))).unwrap();
    let o = b.cmd(&[
        "restore",
        backup.to_str().unwrap(),
        "--key",
        wrong.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("does not authenticate"),
        "{o:?}"
    );
    assert_eq!(
        snapshot_files(&b.data),
        before,
        "wrong key touched the store"
    );
    // Tampered backup (one byte in the middle, and truncated): refused, nothing touched.
    let good = std::fs::read(&backup).unwrap();
    let tampered = dir.path().join("tampered.backup");
    let mut t = good.clone();
    let mid = t.len() / 2;
    t[mid] ^= 0x40;
    std::fs::write(&tampered, &t).unwrap();
    let o = b.cmd(&[
        "restore",
        tampered.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("does not authenticate"),
        "{o:?}"
    );
    std::fs::write(&tampered, &good[..good.len() - 1]).unwrap();
    let o = b.cmd(&[
        "restore",
        tampered.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    assert!(!o.status.success(), "{o:?}");
    assert_eq!(
        snapshot_files(&b.data),
        before,
        "a bad backup touched the store"
    );

    // The real restore (a damaged store needs no --force).
    let r = b.json(&[
        "restore",
        backup.to_str().unwrap(),
        "--key",
        key.to_str().unwrap(),
    ]);
    // Everything but the ratchet sessions (one record per contact) is restored.
    assert!(
        r["records"].as_u64().unwrap() < out["records"].as_u64().unwrap(),
        "{r} {out}"
    );
    assert!(
        r["records"].as_u64().unwrap() + 2 >= out["records"].as_u64().unwrap(),
        "{r} {out}"
    );
    let aside = r["moved_aside"].as_str().unwrap().to_string();
    assert!(
        Path::new(&aside).join("db").exists(),
        "the damaged store is kept: {r}"
    );
    b.start();
    let h = b.messages();
    let n_in = count_in(&h);
    assert!((10..=50).contains(&n_in), "history of the snapshot: {n_in}");
    assert!(h.iter().any(|e| e["text"] == "a9"), "{h:#?}");
    let contacts = b.json(&["contacts", "list"]);
    assert!(contacts.to_string().contains(&a_id), "{contacts}");
    // The conversation continues both ways on the restored sessions.
    let id = a.send(&b_id, "after restore");
    wait_history(&b, "bob receives after restore", |h| {
        h.iter().any(|e| e["text"] == "after restore")
    });
    wait_history(&a, "alice sees delivered", |h| {
        h.iter()
            .any(|e| e["id"] == id.as_str() && e["status"] == "delivered")
    });
    b.send(&a_id, "bob is back");
    wait_history(&a, "alice receives bob's reply", |h| {
        h.iter().any(|e| e["text"] == "bob is back")
    });
    // The gap is repaired: what bob had confirmed after the snapshot and lost came again
    // (alice re-sent everything after what bob's restored history last recorded), and
    // nothing shows twice. Both sides wrote a notice line.
    let want: Vec<String> = (0..10)
        .map(|i| format!("a{i}"))
        .chain((0..40).map(|i| format!("flow{i}")))
        .chain(["after restore".to_string()])
        .collect();
    let h = wait_history(&b, "bob has the whole conversation again", |h| {
        want.iter().all(|t| {
            h.iter()
                .any(|e| e["status"] == "received" && e["text"] == t.as_str())
        })
    });
    for t in &want {
        let n = h
            .iter()
            .filter(|e| e["status"] == "received" && e["text"] == t.as_str())
            .count();
        assert_eq!(n, 1, "{t:?} recorded {n} times at bob");
    }
    assert!(
        h.iter()
            .any(|e| e["status"] == "notice" && e["direction"] == "in"),
        "no notice line at bob: {h:#?}"
    );
    let ha = wait_history(&a, "every flow message delivered again", |h| {
        h.iter()
            .filter(|e| e["direction"] == "out" && e["status"] != "notice")
            .all(|e| e["status"] == "delivered")
    });
    let notice = ha
        .iter()
        .find(|e| e["status"] == "notice" && e["direction"] == "out")
        .unwrap_or_else(|| panic!("no notice line at alice: {ha:#?}"));
    assert!(
        notice["text"]
            .as_str()
            .unwrap()
            .contains("it had confirmed but lost"),
        "{notice}"
    );
}
