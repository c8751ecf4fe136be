//! Issue 9, items 2, 3 and 6, against the real binary on 127.0.0.1: connection floods do not
//! keep a contact from delivering directly, strangers never become contacts or shadow one,
//! and refused connections are summarised instead of logged one by one.
//!
//! Floods come from this test process (throwaway identities over real Noise handshakes, or
//! bare TCP connections that never speak); every flood is bounded in connections and time.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{BinNode, BinNodeOptions};
use sremp::identity::{Flags, UserIdentity};
use sremp::noise::stream::{HandshakeLimits, TcpConnection};
use sremp::time::Timestamp;
use std::collections::VecDeque;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Connections the old listener would hold (a budget the floods below exceed).
const MAX_CONNECTIONS: usize = 128;

/// One flood at a time: the tests of this file run in parallel threads otherwise, and three
/// floods on two loaded cores measure the machine, not the node.
static ONE_FLOOD: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn one_flood() -> std::sync::MutexGuard<'static, ()> {
    ONE_FLOOD.lock().unwrap_or_else(|e| e.into_inner())
}

fn node(dir: &Path, name: &str) -> BinNode {
    node_with_deadline(dir, name, 5000)
}

/// A node with handshake deadline `handshake_ms`.
fn node_with_deadline(dir: &Path, name: &str, handshake_ms: u64) -> BinNode {
    let o = BinNodeOptions::loopback(name);
    let mut n = BinNode::new(dir, &o);
    // Only keys that existed before the fix, so the same config runs the old binary.
    let text = std::fs::read_to_string(&n.config).unwrap().replace(
        "handshake_timeout_ms = 5000\n",
        &format!("handshake_timeout_ms = {handshake_ms}\nmax_connections = {MAX_CONNECTIONS}\n"),
    );
    std::fs::write(&n.config, text).unwrap();
    n.start();
    n
}

fn listen_addr(n: &BinNode) -> String {
    n.json(&["status"])["listen"].as_str().unwrap().to_string()
}

/// What a flood does.
#[derive(Clone, Copy)]
enum Kind {
    /// Complete a Noise handshake with a fresh identity (named `username`) and hold it.
    Identities,
    /// Open a TCP connection, send nothing, hold it.
    Silent,
    /// Open a TCP connection, send bytes that are no version header, hold it.
    Garbage,
}

struct Flood {
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicUsize>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Flood {
    /// Starts `workers` loops opening connections to `addr` (each pausing `pause` between
    /// opens and holding its last `hold`) until stopped, `max` connections, or 60 s.
    fn start(
        addr: String,
        kind: Kind,
        username: &'static str,
        max: usize,
        pause: Duration,
    ) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicUsize::new(0));
        let (s, o) = (stop.clone(), opened.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let deadline = Instant::now() + Duration::from_secs(60);
                let mut set = tokio::task::JoinSet::new();
                for _ in 0..16 {
                    let (s, o, addr) = (s.clone(), o.clone(), addr.clone());
                    set.spawn(async move {
                        let mut held_conns: VecDeque<TcpConnection> = VecDeque::new();
                        let mut held_tcp: VecDeque<tokio::net::TcpStream> = VecDeque::new();
                        while !s.load(Ordering::Relaxed)
                            && o.fetch_add(1, Ordering::Relaxed) < max
                            && Instant::now() < deadline
                        {
                            match kind {
                                Kind::Identities => {
                                    let me = UserIdentity::generate(
                                        username,
                                        Flags::default(),
                                        Timestamp::now(),
                                        &mut rand::rngs::OsRng,
                                    )
                                    .unwrap();
                                    let limits = HandshakeLimits {
                                        timeout: Duration::from_secs(2),
                                        ..HandshakeLimits::default()
                                    };
                                    if let Ok(c) =
                                        TcpConnection::connect(&addr, &me, None, limits).await
                                    {
                                        held_conns.push_back(c);
                                    }
                                }
                                Kind::Silent | Kind::Garbage => {
                                    if let Ok(mut t) = tokio::net::TcpStream::connect(&addr).await {
                                        if matches!(kind, Kind::Garbage) {
                                            use tokio::io::AsyncWriteExt;
                                            let _ = t.write_all(b"GET / HTTP/1.0\r\n\r\n").await;
                                        }
                                        held_tcp.push_back(t);
                                    }
                                }
                            }
                            while held_conns.len() > 16 {
                                held_conns.pop_front();
                            }
                            // Silent connections are held until the server closes them
                            // (like an attacker who waits for the server to give up); garbage
                            // ones only briefly.
                            let keep = if matches!(kind, Kind::Silent) {
                                held_tcp.retain(still_open);
                                1000
                            } else {
                                16
                            };
                            while held_tcp.len() > keep {
                                held_tcp.pop_front();
                            }
                            tokio::time::sleep(pause).await;
                        }
                        // Keep holding until stopped (bounded by the deadline).
                        while !s.load(Ordering::Relaxed) && Instant::now() < deadline {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    });
                }
                while set.join_next().await.is_some() {}
            });
        });
        Flood {
            stop,
            opened,
            thread: Some(thread),
        }
    }

    /// Waits (bounded) until at least `n` connections were attempted.
    fn wait_opened(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.opened.load(Ordering::Relaxed) < n && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn opened(&self) -> usize {
        self.opened.load(Ordering::Relaxed)
    }
}

/// False once the server closed `t` (what it sent is read and discarded).
fn still_open(t: &tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 64];
    for _ in 0..16 {
        match t.try_read(&mut buf) {
            Ok(0) => return false,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
            Err(_) => return false,
        }
    }
    true
}

impl Drop for Flood {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn contacts(n: &BinNode, extra: &[&str]) -> Vec<serde_json::Value> {
    let mut args = vec!["contacts", "list"];
    args.extend_from_slice(extra);
    match n.json(&args) {
        serde_json::Value::Array(v) => v,
        other => panic!("contacts list --json is not an array: {other}"),
    }
}

/// `send --wait` from `from` to `to`; asserts delivered on the direct path.
fn send_direct(from: &BinNode, to: &str, text: &str) {
    let out = from.json(&["send", to, text, "--wait", "--timeout-secs", "20"]);
    assert_eq!(out["status"], "delivered", "{out}");
    assert_eq!(out["path"], "direct", "{out}");
}

/// Items 2 and 3: a few hundred throwaway identities, all named like bob's contact "alice",
/// hold connections to bob while alice delivers directly to him; bob's contact list stays
/// `[alice]` and `send alice` still reaches the real alice.
#[test]
fn identity_flood_neither_blocks_nor_becomes_contacts() {
    let _one = one_flood();
    let dir = tempfile::tempdir().unwrap();
    let alice = node(dir.path(), "alice");
    let bob = node(dir.path(), "bob");
    let (alice_id, _bob_id) = common::introduce(&alice, &bob);
    let flood = Flood::start(
        listen_addr(&bob),
        Kind::Identities,
        "alice",
        400,
        Duration::from_millis(2),
    );
    flood.wait_opened(MAX_CONNECTIONS * 2, Duration::from_secs(30));
    for i in 0..3 {
        send_direct(&alice, "bob", &format!("during the flood {i}"));
    }
    // A name shared with a contact never shadows it.
    send_direct(&bob, "alice", "to the real alice");
    let opened = flood.opened();
    drop(flood);
    let list = contacts(&bob, &[]);
    assert_eq!(list.len(), 1, "strangers became contacts: {list:?}");
    assert_eq!(list[0]["id"], alice_id.as_str());
    let strangers = contacts(&bob, &["--strangers"]);
    assert!(
        !strangers.is_empty() && strangers.iter().all(|s| s["username"] == "alice"),
        "strangers table: {} entries",
        strangers.len()
    );
    assert!(opened >= MAX_CONNECTIONS * 2, "flood opened only {opened}");
    let h = alice.messages();
    assert!(
        h.iter().any(|e| e["text"] == "to the real alice"),
        "the real alice did not get bob's message"
    );
}

/// Item 2: bare TCP connections that never speak, re-opened as soon as the node closes them
/// (up to 16 workers, hundreds per second), do not keep a contact out: alice, who never
/// connected to bob before, gets a *new* connection through the flood, and each message is
/// delivered directly while it runs.
///
/// Bob's handshake deadline is long (90 s) on purpose: a listener that lets a silent
/// connection hold its slot until the deadline (the code before admission control, which
/// reserved one of `max_connections` per accepted connection) keeps alice out for the whole
/// wait and fails here; one that closes the oldest silent handshake to make room lets her in.
/// The flood is paced (20 ms between opens per worker) so that the test measures admission,
/// not how fast two loaded cores can accept.
///
/// Alice connects from 127.0.0.1, like the flood, far over that address's handshake rate; the
/// rate lets her in because a known peer uses the address (bob's own connection to himself,
/// and alice's card). Among the 32 handshakes allowed per address, hers is the only one that
/// sends bytes, and silent ones are closed first, so no number of newer flood connections
/// closes hers. The test before this one (`unauthenticated_flood_does_not_block_contacts`)
/// flooded unpaced while the listener still counted every fresh socket as having sent bytes
/// (tokio's `readable()`, fixed with `peek`): alice's handshake was then closed as the oldest
/// once 32 newer flood connections arrived before it finished, which happened only when the
/// machine was loaded enough to slow her handshake down: the likely cause of its one failure.
/// This test does not catch that listener bug (paced, it passed against the `readable()`
/// listener: her handshake finishes before 32 newer flood connections arrive); the bug's
/// deterministic test is `silent_connections_are_cut_at_the_handshake_deadline`.
#[test]
fn silent_flood_does_not_hold_a_contacts_slot() {
    let _one = one_flood();
    let dir = tempfile::tempdir().unwrap();
    let alice = node(dir.path(), "alice");
    let bob = node_with_deadline(dir.path(), "bob", 90_000);
    common::introduce(&alice, &bob);
    let flood = Flood::start(
        listen_addr(&bob),
        Kind::Silent,
        "",
        300_000,
        Duration::from_millis(20),
    );
    flood.wait_opened(MAX_CONNECTIONS * 2, Duration::from_secs(30));
    // Generous for a load average of 15, and well inside bob's 90 s deadline.
    let out = alice.json(&[
        "send",
        "bob",
        "first through the silent flood",
        "--wait",
        "--timeout-secs",
        "45",
    ]);
    assert_eq!(
        out["status"],
        "delivered",
        "alice got no connection through the silent flood: {out}\n--- bob:\n{}",
        bob.logs()
            .lines()
            .filter(|l| !l.contains("no bytes before"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(out["path"], "direct", "{out}");
    for i in 0..2 {
        send_direct(&alice, "bob", &format!("through the silent flood {i}"));
    }
    let opened = flood.opened();
    drop(flood);
    eprintln!("silent flood: {opened} connections");
    assert!(opened >= MAX_CONNECTIONS * 2);
}

/// Item 2: a connection that never sends a byte is cut at the handshake deadline (here
/// 1.5 s), even when no other connection needs its slot.
#[test]
fn silent_connections_are_cut_at_the_handshake_deadline() {
    let _one = one_flood();
    let dir = tempfile::tempdir().unwrap();
    let bob = node_with_deadline(dir.path(), "bob", 1500);
    let addr = listen_addr(&bob);
    let held: Vec<std::net::TcpStream> = (0..8)
        .map(|_| std::net::TcpStream::connect(&addr).unwrap())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    for mut s in held {
        use std::io::Read;
        let left = deadline.saturating_duration_since(Instant::now());
        s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .unwrap();
        let mut buf = [0u8; 16];
        // The node sends nothing to a silent peer and closes it: EOF (or a reset).
        match s.read(&mut buf) {
            Ok(0) => {}
            Ok(n) => panic!(
                "the node sent {n} bytes to a silent connection: {:?}\n{}",
                &buf[..n],
                bob.logs()
            ),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
            Err(e) => panic!("a silent connection was not cut within 30 s: {e}"),
        }
    }
}

/// Item 6: a few hundred failed handshakes write a bounded number of WARN lines: summaries
/// with counts, not one line per connection.
#[test]
fn refused_connections_are_summarised() {
    let _one = one_flood();
    let dir = tempfile::tempdir().unwrap();
    let bob = node(dir.path(), "bob");
    let flood = Flood::start(
        listen_addr(&bob),
        Kind::Garbage,
        "",
        300,
        Duration::from_millis(1),
    );
    flood.wait_opened(300, Duration::from_secs(30));
    drop(flood);
    // The summary comes within one interval (10 s by default).
    let proc = bob.proc.as_ref().unwrap();
    let line = proc.wait_for_line("connections refused", Duration::from_secs(15));
    let log = bob.logs();
    let warns = log.lines().filter(|l| l.contains("WARN")).count();
    assert!(
        warns <= 10,
        "{warns} WARN lines for 300 refused connections:\n{}",
        log.lines()
            .filter(|l| l.contains("WARN"))
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    let line = line.expect("no 'connections refused' summary line");
    assert!(line.contains("handshake_failed="), "{line}");
}
