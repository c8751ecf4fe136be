//! Connection-flood benchmark (issue 9, item 2), a custom harness against the real binary:
//! two `sremp run` nodes on 127.0.0.1 (alice is bob's contact and has no relay, so she can
//! only deliver directly), and floods against bob from this process:
//!
//! - `identities`: throwaway identities completing Noise handshakes as fast as 32 workers can
//!   (the attack that filled `max_connections` in 2 s), each connection held until bob closes
//!   it, at most 1100 held;
//! - `silent`: bare TCP connections that never send a byte, opened at a paced ~3000/s (16
//!   workers), each held until bob closes it;
//! - `both`: the two at once.
//!
//! For each scenario (and a `baseline` without flood) the flood runs for 2 s first, then alice
//! is (re)started, so her first message must get a fresh connection admitted through the
//! flood; then she sends messages one at a time. Latency is control-socket `send` → the
//! `wait_delivered` answer (outbox commit, connection/handshake if needed, the store at bob's
//! integrated relay and its commit, the acknowledgement); `not_direct` counts messages whose
//! recorded path is not `direct` (alice has no relay, so that means no path was recorded).
//! Printed: the first message, then p50/p95/max of the rest, and the flood's rate.
//!
//! Run: `cargo bench --bench flood` (`FLOOD_BENCH_MESSAGES=N`, default 30). Target (issue 9):
//! a contact's direct delivery under 100 ms while the floods run.

// A benchmark, not code that handles peer input: failing loudly is what we want.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sremp::identity::{Flags, UserIdentity};
use sremp::node::control::{request, Request};
use sremp::noise::stream::{HandshakeLimits, TcpConnection};
use sremp::time::Timestamp;
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sremp"))
}

struct Proc(Child, PathBuf);

impl Drop for Proc {
    fn drop(&mut self) {
        // SIGTERM first so the node flushes; then make sure it is gone.
        if let Ok(pid) = i32::try_from(self.0.id()) {
            // SAFETY: kill(2) on our own child, not reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn write_config(dir: &Path, name: &str) -> PathBuf {
    let home = dir.join(name);
    std::fs::create_dir_all(&home).unwrap();
    let cfg = home.join("node.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\nusername = \"{name}\"\n[log]\nlevel = \"warn\"\n[listen]\naddress = \"127.0.0.1:0\"\n[node]\ndirect_timeout_ms = 1000\nretry_initial_ms = 50\nretry_max_ms = 400\n[relay]\nrate_per_sec = 100000\nrate_burst = 100000\n",
            home.join("data").display()
        ),
    )
    .unwrap();
    cfg
}

fn start(cfg: &Path) -> Proc {
    let child = Command::new(bin())
        .args(["--config", cfg.to_str().unwrap(), "run"])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let sock = cfg.parent().unwrap().join("data").join("control.sock");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&sock).is_err() {
        assert!(Instant::now() < deadline, "node did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Proc(child, sock)
}

async fn call(sock: &Path, req: Request) -> sremp::node::control::Response {
    let r = request(sock, &req).await.unwrap();
    assert!(r.ok, "{req:?}: {:?}", r.error);
    r
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

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Identities,
    Silent,
}

/// A flood runs on its own runtime (two threads), so that its work never delays the
/// benchmark's own control-socket calls in the measuring runtime.
struct Flood {
    stop: Arc<AtomicBool>,
    opened: Arc<AtomicUsize>,
    started: Instant,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Flood {
    fn start(addr: &str, kind: Kind) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let opened = Arc::new(AtomicUsize::new(0));
        let workers = if kind == Kind::Identities { 32 } else { 16 };
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let mut tasks = Vec::new();
        for _ in 0..workers {
            let (stop, opened, addr) = (stop.clone(), opened.clone(), addr.to_string());
            tasks.push(rt.spawn(async move {
                let mut conns: VecDeque<TcpConnection> = VecDeque::new();
                let mut tcp: VecDeque<tokio::net::TcpStream> = VecDeque::new();
                // 16 workers × one per 5.33 ms ≈ 3000 connections/s.
                let mut pace = tokio::time::interval(Duration::from_micros(5333));
                pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                let deadline = Instant::now() + Duration::from_secs(600);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match kind {
                        Kind::Identities => {
                            let me = UserIdentity::generate(
                                "alice",
                                Flags::default(),
                                Timestamp::now(),
                                &mut rand::rngs::OsRng,
                            )
                            .unwrap();
                            let limits = HandshakeLimits {
                                timeout: Duration::from_secs(2),
                                ..HandshakeLimits::default()
                            };
                            if let Ok(c) = TcpConnection::connect(&addr, &me, None, limits).await {
                                opened.fetch_add(1, Ordering::Relaxed);
                                conns.push_back(c);
                            }
                            while conns.len() > 1100 / 32 {
                                conns.pop_front();
                            }
                        }
                        Kind::Silent => {
                            pace.tick().await;
                            if let Ok(t) = tokio::net::TcpStream::connect(&addr).await {
                                opened.fetch_add(1, Ordering::Relaxed);
                                tcp.push_back(t);
                            }
                            tcp.retain(still_open);
                            while tcp.len() > 2000 {
                                tcp.pop_front();
                            }
                        }
                    }
                }
            }));
        }
        Flood {
            stop,
            opened,
            started: Instant::now(),
            tasks,
            rt: Some(rt),
        }
    }

    async fn stop(mut self) -> (usize, f64) {
        self.stop.store(true, Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64();
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
        let n = self.opened.load(Ordering::Relaxed);
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
        (n, n as f64 / secs)
    }
}

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let n: usize = std::env::var("FLOOD_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    let dir = tempfile::tempdir().unwrap();
    let alice_cfg = write_config(dir.path(), "alice");
    let bob_cfg = write_config(dir.path(), "bob");
    let bob = start(&bob_cfg);
    let mut alice = Some(start(&alice_cfg));
    let card = |sock: PathBuf| async move { call(&sock, Request::Card).await.identity.unwrap() };
    let a = card(alice.as_ref().unwrap().1.clone()).await;
    let b = card(bob.1.clone()).await;
    call(
        &alice.as_ref().unwrap().1,
        Request::ContactsAdd {
            card: b.card.clone(),
        },
    )
    .await;
    call(
        &bob.1,
        Request::ContactsAdd {
            card: a.card.clone(),
        },
    )
    .await;
    let status = call(&bob.1, Request::Status).await.status.unwrap();
    let bob_addr = status["listen"].as_str().unwrap().to_string();
    println!("flood bench: {n} messages per scenario, bob at {bob_addr}");
    println!(
        "{:<12} {:>9} {:>9} {:>9} {:>9} {:>12} {:>10} {:>10}",
        "scenario",
        "first_ms",
        "p50_ms",
        "p95_ms",
        "max_ms",
        "flood_conns",
        "flood_/s",
        "not_direct"
    );
    for scenario in ["baseline", "identities", "silent", "both"] {
        let mut floods = Vec::new();
        if matches!(scenario, "identities" | "both") {
            floods.push(Flood::start(&bob_addr, Kind::Identities));
        }
        if matches!(scenario, "silent" | "both") {
            floods.push(Flood::start(&bob_addr, Kind::Silent));
        }
        if !floods.is_empty() {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
        // A fresh alice: her first message needs a new connection through the flood.
        drop(alice.take());
        alice = Some(start(&alice_cfg));
        let sock = alice.as_ref().unwrap().1.clone();
        let mut lat = Vec::new();
        let mut not_direct = 0usize;
        for i in 0..=n {
            let t0 = Instant::now();
            let entry = call(
                &sock,
                Request::Send {
                    contact: "bob".into(),
                    text: format!("{scenario} {i}"),
                },
            )
            .await
            .entry
            .unwrap();
            let done = call(
                &sock,
                Request::WaitDelivered {
                    id: sremp::node::history::format_id(entry.id),
                    timeout_ms: Some(60_000),
                },
            )
            .await
            .entry
            .unwrap();
            let d = t0.elapsed();
            if done.path != Some(sremp::node::history::DeliveryPath::Direct) {
                not_direct += 1;
            }
            lat.push(d);
        }
        let mut total = (0usize, 0f64);
        for f in floods {
            let (c, r) = f.stop().await;
            total = (total.0 + c, total.1 + r);
        }
        let first = lat.remove(0);
        lat.sort();
        println!(
            "{:<12} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>12} {:>10.0} {:>10}",
            scenario,
            ms(first),
            ms(pct(&lat, 0.5)),
            ms(pct(&lat, 0.95)),
            ms(*lat.last().unwrap_or(&Duration::ZERO)),
            total.0,
            total.1,
            not_direct
        );
        // Let bob close what the flood left before the next scenario.
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    drop(alice);
    drop(bob);
}
