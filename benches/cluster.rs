//! Relay cluster benchmark (issue 17): the NATS JetStream backend on a 3-node cluster beside
//! the embedded (sled) relay, in the same run, with the same clients over real Noise
//! connections on loopback.
//!
//! - durable stores/s: `SENDERS` clients each store `PER_SENDER` 1 KiB messages one after
//!   another (a store returns at its `STORE_RESPONSE`, i.e. once durable), spread over
//!   `RECIPIENTS` mailboxes (created before timing);
//! - store latency p50/p99 as the client sees it (the "added latency" of the cluster is the
//!   difference to the embedded relay's figures);
//! - forwarding messages/s: recipients collecting on one relay process (NATS: process B;
//!   sled: the one relay), senders storing on another (NATS: process A), counted when the push
//!   arrives at the recipient.
//!
//! Needs `nats-server` in PATH (prints a message and measures only sled without it). Run with
//! `cargo bench --bench cluster` or `scripts/bench-cluster.sh`. Not a criterion bench: it
//! starts external servers once and prints one table.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark harness

use sremp::identity::{Flags, IdentityKey, UserIdentity};
use sremp::noise::listener::{self, ListenerConfig};
use sremp::noise::stream::HandshakeLimits;
use sremp::relay::backend::{nats::NatsBackend, StoreKind};
use sremp::relay::stats::Stats;
use sremp::relay::{Relay, RelayClient, RelayConfig, RelayEvent, RelayMode, RelayOptions};
use sremp::store::{SledStore, Store};
use sremp::time::Timestamp;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::watch;

const SENDERS: usize = 16;
const PER_SENDER: usize = 150;
const RECIPIENTS: usize = 16;
const BLOB: usize = 1024;

fn user(name: &str) -> Arc<UserIdentity> {
    Arc::new(
        UserIdentity::generate(
            name,
            Flags::default(),
            Timestamp::now(),
            &mut rand::rngs::OsRng,
        )
        .unwrap(),
    )
}

fn port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Nats {
    children: Vec<Child>,
    urls: Vec<String>,
}

impl Drop for Nats {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn start_nats(root: &std::path::Path) -> Option<Nats> {
    Command::new("nats-server").arg("--version").output().ok()?;
    let ports: Vec<(u16, u16)> = (0..3).map(|_| (port(), port())).collect();
    let routes = ports
        .iter()
        .map(|(_, c)| format!("nats://127.0.0.1:{c}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut children = Vec::new();
    for (i, (p, c)) in ports.iter().enumerate() {
        let sd = root.join(format!("n{i}"));
        children.push(
            Command::new("nats-server")
                .args([
                    "-a",
                    "127.0.0.1",
                    "-p",
                    &p.to_string(),
                    "-n",
                    &format!("n{i}"),
                    "-js",
                    "-sd",
                    sd.to_str().unwrap(),
                    "--cluster_name",
                    "bench",
                    "--cluster",
                    &format!("nats://127.0.0.1:{c}"),
                    "--routes",
                    &routes,
                ])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .ok()?,
        );
    }
    Some(Nats {
        children,
        urls: ports
            .iter()
            .map(|(p, _)| format!("nats://127.0.0.1:{p}"))
            .collect(),
    })
}

fn policy() -> RelayConfig {
    RelayConfig {
        rate_per_sec: 1_000_000,
        rate_burst: 1_000_000,
        ..RelayConfig::default()
    }
}

/// A relay process (in this process) serving on loopback.
async fn serve(relay: Relay, id: Arc<UserIdentity>, stop: watch::Receiver<bool>) -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(listener::serve(
        l,
        id,
        ListenerConfig::default(),
        stop,
        move |c, _| {
            let r = relay.clone();
            async move { r.serve_connection(c, None).await }
        },
    ));
    addr
}

fn opts(id: &UserIdentity, policy: RelayConfig) -> RelayOptions {
    RelayOptions {
        policy,
        mode: RelayMode::Open,
        relay_key: id.key(),
        idle_timeout: Duration::from_secs(300),
        stats_path: None,
    }
}

struct Figures {
    stores_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    forwards_per_sec: f64,
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0)
}

/// Runs both phases against relays at `store_addr` (senders) and `collect_addr`
/// (recipients), which publish the identity `relay`.
async fn measure(store_addr: &str, collect_addr: &str, relay: IdentityKey) -> Figures {
    let senders: Vec<_> = (0..SENDERS).map(|i| user(&format!("s{i}"))).collect();
    let recipients: Vec<_> = (0..RECIPIENTS).map(|i| user(&format!("r{i}"))).collect();
    let mut clients = Vec::new();
    for s in &senders {
        let (c, ev) = RelayClient::connect(store_addr, s, Some(relay), HandshakeLimits::default())
            .await
            .unwrap();
        clients.push((Arc::new(c), ev));
    }
    // Warm-up (untimed): one message per mailbox creates it.
    for (i, r) in recipients.iter().enumerate() {
        clients[0]
            .0
            .store(r.key(), vec![0; BLOB], 1_000_000 + i as u64)
            .await
            .unwrap();
    }
    // Durable stores.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (k, (c, _)) in clients.iter().enumerate() {
        let c = c.clone();
        let to: Vec<IdentityKey> = recipients.iter().map(|r| r.key()).collect();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(PER_SENDER);
            for i in 0..PER_SENDER {
                let t = Instant::now();
                c.store(to[(i + k) % to.len()], vec![7; BLOB], i as u64)
                    .await
                    .unwrap();
                lat.push(t.elapsed());
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed();
    let stores_per_sec = lat.len() as f64 / elapsed.as_secs_f64();
    let p50_ms = pct(&mut lat, 0.50);
    let p99_ms = pct(&mut lat, 0.99);

    // Forwarding: recipients collect on `collect_addr`.
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(SENDERS * PER_SENDER);
    let mut rclients = Vec::new();
    for r in &recipients {
        let (c, mut ev) =
            RelayClient::connect(collect_addr, r, Some(relay), HandshakeLimits::default())
                .await
                .unwrap();
        // Retrieve once (a page): from now on this connection collects.
        let _ = c.retrieve(None, None, 1).await.unwrap();
        let tx = done_tx.clone();
        tokio::spawn(async move {
            while let Some(e) = ev.recv().await {
                if let RelayEvent::Message(m) = e {
                    if m.message_id >= 2_000_000 {
                        let _ = tx.send(()).await;
                    }
                }
            }
        });
        rclients.push(c);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (k, (c, _)) in clients.iter().enumerate() {
        let c = c.clone();
        let to: Vec<IdentityKey> = recipients.iter().map(|r| r.key()).collect();
        tasks.push(tokio::spawn(async move {
            for i in 0..PER_SENDER {
                c.store(to[(i + k) % to.len()], vec![9; BLOB], 2_000_000 + i as u64)
                    .await
                    .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = SENDERS * PER_SENDER;
    let mut got = 0;
    while got < total {
        match tokio::time::timeout(Duration::from_secs(10), done_rx.recv()).await {
            Ok(Some(())) => got += 1,
            _ => break,
        }
    }
    let forwards_per_sec = got as f64 / started.elapsed().as_secs_f64();
    if got < total {
        eprintln!("  (only {got} of {total} pushes arrived; the rest stays stored)");
    }
    Figures {
        stores_per_sec,
        p50_ms,
        p99_ms,
        forwards_per_sec,
    }
}

fn main() {
    // `cargo bench` passes --bench; nothing to parse.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let root = tempfile::tempdir().unwrap();
    rt.block_on(async {
        let (_stop_tx, stop) = watch::channel(false);
        // The embedded relay.
        let id = user("relay");
        let store: Arc<dyn Store> = Arc::new(SledStore::open(&root.path().join("sled")).unwrap());
        let relay = Relay::start(store, opts(&id, policy())).await.unwrap();
        let addr = serve(relay, id.clone(), stop.clone()).await;
        let sled = measure(&addr, &addr, id.key()).await;
        let mut rows = vec![("sled (embedded, 1 process)", sled)];

        match start_nats(root.path()) {
            None => eprintln!("nats-server not found: only the embedded relay was measured"),
            Some(nats) => {
                // Wait for JetStream (bounded inside NatsBackend::open: 30 s).
                let id = user("cluster");
                let p = RelayConfig {
                    store: StoreKind::Nats,
                    nats_urls: nats.urls.clone(),
                    replicas: 3,
                    nats_prefix: "bench".into(),
                    ..policy()
                };
                // The servers take a moment to listen (bounded).
                let deadline = Instant::now() + Duration::from_secs(30);
                while sremp::relay::backend::nats::connect(&p).await.is_err() {
                    assert!(Instant::now() < deadline, "nats-server did not start");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let mut addrs = Vec::new();
                for _ in 0..2 {
                    let stats = Arc::new(Stats::default());
                    let b = NatsBackend::open(p.clone(), stats.clone()).await.unwrap();
                    let relay = Relay::start_backend(b, stats, opts(&id, p.clone()))
                        .await
                        .unwrap();
                    addrs.push(serve(relay, id.clone(), stop.clone()).await);
                }
                let f = measure(&addrs[0], &addrs[1], id.key()).await;
                rows.push(("nats (3-node JetStream R3, 2 processes)", f));
                drop(nats);
            }
        }
        println!(
            "\n{SENDERS} senders x {PER_SENDER} stores of {BLOB} B, {RECIPIENTS} mailboxes, loopback\n"
        );
        println!(
            "{:<42} {:>10} {:>10} {:>10} {:>12}",
            "backend", "stores/s", "p50 ms", "p99 ms", "forwards/s"
        );
        for (name, f) in &rows {
            println!(
                "{:<42} {:>10.0} {:>10.2} {:>10.2} {:>12.0}",
                name, f.stores_per_sec, f.p50_ms, f.p99_ms, f.forwards_per_sec
            );
        }
        if let [(_, s), (_, n)] = rows.as_slice() {
            println!(
                "\nadded store latency of the cluster: p50 {:+.2} ms, p99 {:+.2} ms",
                n.p50_ms - s.p50_ms,
                n.p99_ms - s.p99_ms
            );
        }
    });
}
