//! Issue 9 item 2, the per-address handshake rate, against the real binary on loopback.
//!
//! A flood of handshake starts (valid version headers) comes from 127.0.0.2, an address no
//! contact of the node uses, while the node's contact delivers from 127.0.0.1. Over
//! `handshakes_per_ip_per_sec` (default 20, bursts of 40) the flood's connections are closed
//! at once, before any handshake work: the node starts at most the burst plus the rate times
//! the flood's duration of handshakes for it, the refusal summary counts `handshake_rate`,
//! and the contact's messages still go directly.
//!
//! The flood is bounded in time (8 s) and in connections (one at a time per worker, 16 workers).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{BinNode, BinNodeOptions};
use sremp::wire::version::{Version, VersionHeader, HEADER_LEN};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The node's default rate and burst (not set in the config, so the test measures the default).
const RATE: usize = 20;
const BURST: usize = 2 * RATE;
/// How long the flood runs.
const FLOOD: Duration = Duration::from_secs(8);
/// Connections the flood has open at once (one per worker).
const WORKERS: usize = 16;

fn node(dir: &Path, name: &str) -> BinNode {
    let o = BinNodeOptions::loopback(name);
    let mut n = BinNode::new(dir, &o);
    // The refusal summary once a second, so the test need not wait 10 s for it.
    let text = std::fs::read_to_string(&n.config).unwrap().replace(
        "handshake_timeout_ms = 5000\n",
        "handshake_timeout_ms = 5000\nrefusal_log_interval_secs = 1\n",
    );
    std::fs::write(&n.config, text).unwrap();
    n.start();
    n
}

/// Whether this machine routes 127.0.0.2 to loopback (Linux does by default).
fn second_loopback_usable() -> bool {
    let Ok(s) = std::net::UdpSocket::bind("127.0.0.2:0") else {
        return false;
    };
    s.local_addr().is_ok()
}

/// Counts of one flood.
#[derive(Debug, Default)]
struct Counts {
    /// Connections the node took in: it answered the version header with its own.
    answered: AtomicUsize,
    /// Connections the node closed without a word (or that failed otherwise).
    refused: AtomicUsize,
}

/// Runs [`WORKERS`] loops dialling `target` from 127.0.0.2, one connection at a time each,
/// until `stop` or [`FLOOD`] is over. Each connection writes a valid version header and waits
/// for the node's: a node that starts a handshake answers at once, a refused connection is
/// closed without a byte. Cheap for both sides, so the flood asks for handshakes far faster
/// than the rate (a Noise handshake in a debug build is too slow for that).
fn flood(target: SocketAddr, stop: Arc<AtomicBool>, counts: Arc<Counts>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let deadline = Instant::now() + FLOOD;
        let header = VersionHeader(Version::CURRENT).encode();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..WORKERS {
            let (stop, counts) = (stop.clone(), counts.clone());
            set.spawn(async move {
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    let once = async {
                        let sock = tokio::net::TcpSocket::new_v4()?;
                        sock.bind(SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), 0))?;
                        let mut stream = sock.connect(target).await?;
                        stream.write_all(&header).await?;
                        let mut theirs = [0u8; HEADER_LEN];
                        stream.read_exact(&mut theirs).await?;
                        Ok::<_, std::io::Error>(())
                    };
                    match tokio::time::timeout(Duration::from_secs(5), once).await {
                        Ok(Ok(())) => {
                            counts.answered.fetch_add(1, Ordering::Relaxed);
                        }
                        _ => {
                            counts.refused.fetch_add(1, Ordering::Relaxed);
                            // A refused connection returns at once: keep the loop from spinning.
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                    }
                }
            });
        }
        while set.join_next().await.is_some() {}
    });
}

#[test]
fn handshake_rate_per_address_stops_a_flood_but_not_a_contact() {
    if !second_loopback_usable() {
        eprintln!("skipping handshake_rate: cannot bind 127.0.0.2 on this machine");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let alice = node(dir.path(), "alice");
    let bob = node(dir.path(), "bob");
    common::introduce(&alice, &bob);
    let target: SocketAddr = bob.json(&["status"])["listen"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let started = Instant::now();
    let thread = {
        let (stop, counts) = (stop.clone(), counts.clone());
        std::thread::spawn(move || flood(target, stop, counts))
    };
    // The contact delivers directly while the flood runs (from another address).
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..3 {
        let out = alice.json(&[
            "send",
            "bob",
            &format!("during the handshake flood {i}"),
            "--wait",
            "--timeout-secs",
            "30",
        ]);
        assert_eq!(out["status"], "delivered", "{out}");
        assert_eq!(out["path"], "direct", "{out}");
    }
    thread.join().unwrap();
    stop.store(true, Ordering::Relaxed);
    let elapsed = started.elapsed();
    let answered = counts.answered.load(Ordering::Relaxed);
    let refused = counts.refused.load(Ordering::Relaxed);
    eprintln!(
        "flood from 127.0.0.2 for {:.1} s: {answered} handshakes started by bob, {refused} connections refused",
        elapsed.as_secs_f64()
    );
    // The node's clock started no earlier than ours, so this bound is safe under any load.
    let bound = BURST + RATE * (elapsed.as_millis() as usize).div_ceil(1000) + RATE;
    assert!(
        answered <= bound,
        "bob started {answered} handshakes for one address in {elapsed:?} (bound {bound}): no rate limit"
    );
    let proc = bob.proc.as_ref().unwrap();
    let line = proc.wait_for_line("handshake_rate=", Duration::from_secs(20));
    assert!(
        line.is_some(),
        "no handshake_rate refusals in bob's summaries:\n{}",
        bob.logs()
            .lines()
            .filter(|l| l.contains("connections refused"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Strangers did not become contacts.
    let list = bob.json(&["contacts", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 1, "{list}");
}
