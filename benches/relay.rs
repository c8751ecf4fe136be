//! Relay benchmarks (loopback and temp dirs only; every loop bounded).
//!
//! - `durable_store_1k/group_commit_64_senders`: 1 KiB stores through the relay's committer
//!   (de-duplication, quota, group commit, fsync before each answer) from 64 concurrent tasks;
//! - `durable_store_1k/sled_unsynced_insert`: the same records inserted into sled without any
//!   flush (the ceiling);
//! - `durable_store_1k/raw_fsync_loop`: 1 KiB write + fsync of a file, one at a time;
//! - `forward/connected_recipients`: 16 senders → relay → 16 connected recipients over real
//!   Noise connections (signatures verified by the relay), counted when the push arrives. The
//!   senders' `STORE_MESSAGE` signatures are made before each timed iteration: a relay's
//!   senders are other machines, and signing in this process would take one of the two cores
//!   away from the relay being measured.
//!
//! With `RELAY_MEM_ADDR=host:port RELAY_MEM_ID=<hex> RELAY_MEM_CONNS=10000` it instead opens that
//! many registered, idle connections to a running relay and holds them for
//! `RELAY_MEM_HOLD_SECS` (see scripts/bench-relay-memory.sh).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // a benchmark harness

use criterion::{criterion_group, Criterion, Throughput};
use sremp::identity::{Flags, IdentityKey, UserIdentity};
use sremp::noise::listener::{self, ListenerConfig};
use sremp::noise::stream::HandshakeLimits;
use sremp::relay::auth;
use sremp::relay::stats::Stats;
use sremp::relay::store::{NewMessage, RelayStore};
use sremp::relay::{Relay, RelayClient, RelayConfig, RelayEvent, RelayMode, RelayOptions};
use sremp::store::{Batch, SledStore, Store, Tree};
use sremp::time::Timestamp;
use sremp::wire::relay::StoreMessage;
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

static NEXT: AtomicU64 = AtomicU64::new(0);
static CPU_NS: AtomicU64 = AtomicU64::new(0);
static TIMED_MSGS: AtomicU64 = AtomicU64::new(0);

/// CPU time (user + system) used by this process so far: a figure that other load on the
/// machine does not distort, unlike wall-clock throughput.
fn cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn durable(c: &mut Criterion) {
    let rt = rt();
    let mut g = c.benchmark_group("durable_store_1k");
    g.sample_size(10).measurement_time(Duration::from_secs(8));
    const N: u64 = 4096;
    g.throughput(Throughput::Elements(N));
    let dir = tempfile::tempdir().unwrap();
    // As `sremp relay` opens it: checksums, manifest and the commit marker.
    let store: Arc<dyn Store> = Arc::new(SledStore::open_checked(&dir.path().join("a")).unwrap());
    let policy = RelayConfig {
        quota_messages: u32::MAX,
        quota_bytes: u64::MAX,
        ..RelayConfig::default()
    };
    let rs = RelayStore::open(store, policy, Arc::new(Stats::default())).unwrap();
    g.bench_function("group_commit_64_senders", |b| {
        b.to_async(&rt).iter_custom(|iters| {
            let rs = rs.clone();
            async move {
                let start = Instant::now();
                for _ in 0..iters {
                    let mut js = tokio::task::JoinSet::new();
                    for s in 0..64u64 {
                        let rs = rs.clone();
                        js.spawn(async move {
                            for _ in 0..N / 64 {
                                let id = NEXT.fetch_add(1, Ordering::Relaxed);
                                rs.store(NewMessage {
                                    recipient: IdentityKey([(s % 8) as u8; 32]),
                                    sender: IdentityKey([s as u8; 32]),
                                    message_id: id,
                                    sender_signature: [1; 64],
                                    blob: vec![7; 1024],
                                    now: Timestamp(id),
                                })
                                .await
                                .unwrap();
                            }
                        });
                    }
                    while js.join_next().await.is_some() {}
                }
                start.elapsed()
            }
        })
    });
    let raw = SledStore::open(&dir.path().join("b")).unwrap();
    g.bench_function("sled_unsynced_insert", |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                for _ in 0..N {
                    let id = NEXT.fetch_add(1, Ordering::Relaxed);
                    let mut k = vec![3u8; 64];
                    k.extend_from_slice(&id.to_be_bytes());
                    let mut batch = Batch::new();
                    batch.put(Tree::RelayMessages, k, vec![7u8; 1024 + 70]);
                    raw.apply(batch).unwrap();
                }
            }
            start.elapsed()
        })
    });
    g.throughput(Throughput::Elements(64));
    let path = dir.path().join("fsync.bin");
    g.bench_function("raw_fsync_loop", |b| {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap();
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                for _ in 0..64 {
                    f.write_all(&[7u8; 1024]).unwrap();
                    f.sync_data().unwrap();
                }
            }
            start.elapsed()
        })
    });
    g.finish();
    rt.block_on(rs.close()).unwrap();
}

fn forward(c: &mut Criterion) {
    let rt = rt();
    let dir = tempfile::tempdir().unwrap();
    let (relay, addr, rid) = rt.block_on(async {
        let id = user("relay");
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let policy = RelayConfig {
            quota_messages: u32::MAX,
            quota_bytes: u64::MAX,
            rate_per_sec: 1_000_000,
            rate_burst: 1_000_000,
            ..RelayConfig::default()
        };
        let relay = Relay::start(
            store,
            RelayOptions {
                policy,
                mode: RelayMode::Open,
                relay_key: id.key(),
                idle_timeout: Duration::from_secs(600),
                stats_path: None,
            },
        )
        .await
        .unwrap();
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let (_tx, rx) = tokio::sync::watch::channel(false);
        std::mem::forget(_tx);
        let r = relay.clone();
        tokio::spawn(listener::serve(
            l,
            id.clone(),
            ListenerConfig::default(),
            rx,
            move |c, _| {
                let r = r.clone();
                async move { r.serve_connection(c, None).await }
            },
        ));
        (relay, addr, id.key())
    });
    const PAIRS: usize = 16;
    const PER: u64 = 128;
    let (senders, mut events, recipients) = rt.block_on(async {
        let mut senders = Vec::new();
        let mut events = Vec::new();
        let mut recipients = Vec::new();
        for i in 0..PAIRS {
            let s = user(&format!("s{i}"));
            let r = user(&format!("r{i}"));
            let (cs, _) = RelayClient::connect(&addr, &s, Some(rid), HandshakeLimits::default())
                .await
                .unwrap();
            let (cr, er) = RelayClient::connect(&addr, &r, Some(rid), HandshakeLimits::default())
                .await
                .unwrap();
            senders.push((s, Arc::new(cs)));
            events.push(er);
            recipients.push((r.key(), cr));
        }
        (senders, events, recipients)
    });
    // The senders of a real relay are other machines: their signing is done before the clock
    // starts (on both cores), so the timed section measures the relay, not the generator.
    let presign = |_: ()| -> Vec<Vec<StoreMessage>> {
        std::thread::scope(|sc| {
            let jobs: Vec<_> = senders
                .chunks(PAIRS.div_ceil(2))
                .enumerate()
                .map(|(half, chunk)| {
                    let recipients = &recipients;
                    sc.spawn(move || {
                        chunk
                            .iter()
                            .enumerate()
                            .map(|(j, (s, _))| {
                                let to = recipients[half * PAIRS.div_ceil(2) + j].0;
                                (0..PER)
                                    .map(|_| {
                                        let id = NEXT.fetch_add(1, Ordering::Relaxed);
                                        let blob = vec![9; 1024];
                                        StoreMessage {
                                            recipient: to.0,
                                            sender_signature: auth::sign_store(
                                                s.signing_key(),
                                                &to.0,
                                                id,
                                                &blob,
                                            ),
                                            encrypted_blob: blob,
                                            message_id: id,
                                        }
                                    })
                                    .collect::<Vec<_>>()
                            })
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            jobs.into_iter().flat_map(|j| j.join().unwrap()).collect()
        })
    };
    let mut g = c.benchmark_group("forward");
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(PAIRS as u64 * PER));
    g.bench_function("connected_recipients", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let batches = presign(());
                let cpu0 = cpu_time();
                total += rt.block_on(async {
                    let start = Instant::now();
                    let mut js = tokio::task::JoinSet::new();
                    for ((_, s), msgs) in senders.iter().zip(batches) {
                        let s = s.clone();
                        js.spawn(async move {
                            let mut inner = tokio::task::JoinSet::new();
                            for m in msgs {
                                let s = s.clone();
                                inner.spawn(async move { s.store_raw(m).await.unwrap() });
                                if inner.len() >= 32 {
                                    inner.join_next().await;
                                }
                            }
                            while inner.join_next().await.is_some() {}
                        });
                    }
                    // Count pushes.
                    for ev in events.iter_mut() {
                        let mut got = 0;
                        while got < PER {
                            match tokio::time::timeout(Duration::from_secs(30), ev.recv()).await {
                                Ok(Some(RelayEvent::Message(_))) => got += 1,
                                Ok(Some(_)) => {}
                                _ => panic!("push missing"),
                            }
                        }
                    }
                    while js.join_next().await.is_some() {}
                    start.elapsed()
                });
                CPU_NS.fetch_add((cpu_time() - cpu0).as_nanos() as u64, Ordering::Relaxed);
                TIMED_MSGS.fetch_add(PAIRS as u64 * PER, Ordering::Relaxed);
            }
            total
        })
    });
    g.finish();
    let s = relay.stats().snapshot();
    let (cpu, n) = (
        CPU_NS.load(Ordering::Relaxed),
        TIMED_MSGS.load(Ordering::Relaxed),
    );
    eprintln!(
        "forward: stored {} pushed {} flushes {}; {:.1} µs of CPU per message in timed sections \
         (≈ {:.0} messages/s on 2 idle cores)",
        s.stored,
        s.pushed,
        s.flushes,
        cpu as f64 / 1e3 / n.max(1) as f64,
        2e9 * n as f64 / cpu.max(1) as f64,
    );
    drop(recipients);
}

fn memory_mode() -> bool {
    let (Ok(addr), Ok(id), Ok(n)) = (
        std::env::var("RELAY_MEM_ADDR"),
        std::env::var("RELAY_MEM_ID"),
        std::env::var("RELAY_MEM_CONNS"),
    ) else {
        return false;
    };
    let n: usize = n.parse().unwrap();
    let hold: u64 = std::env::var("RELAY_MEM_HOLD_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let id: IdentityKey = id.parse().unwrap();
    let rt = rt();
    rt.block_on(async move {
        let me = user("mem");
        let mut held = Vec::with_capacity(n);
        let start = Instant::now();
        let mut js = tokio::task::JoinSet::new();
        let mut opened = 0usize;
        while held.len() < n && start.elapsed() < Duration::from_secs(600) {
            while js.len() < 64 && opened < n {
                opened += 1;
                let (addr, me) = (addr.clone(), me.clone());
                js.spawn(async move {
                    RelayClient::connect(&addr, &me, Some(id), HandshakeLimits::default()).await
                });
            }
            match js.join_next().await {
                Some(Ok(Ok(c))) => held.push(c),
                Some(_) => panic!("connection failed after {}", held.len()),
                None => break,
            }
        }
        println!("OPENED {} connections in {:?}", held.len(), start.elapsed());
        tokio::time::sleep(Duration::from_secs(hold)).await;
        drop(held);
    });
    true
}

criterion_group!(benches, durable, forward);

fn main() {
    if memory_mode() {
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
