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

use common::{introduce, BinNode, BinNodeOptions, BinRelay, Proc};
use serde_json::Value;
use std::path::{Path, PathBuf};
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
