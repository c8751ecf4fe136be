//! Crash tests against the real `sremp relay` binary: SIGKILL right after a `STORE_RESPONSE`,
//! SIGKILL at random moments under 50 concurrent senders, and SIGTERM's clean shutdown.
//!
//! Everything runs on 127.0.0.1 with temporary data directories; every wait is bounded.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

use sremp::identity::{Flags, IdentityKey, UserIdentity};
use sremp::noise::stream::HandshakeLimits;
use sremp::relay::{RelayClient, ADDR_FILE, STATS_FILE};
use sremp::time::Timestamp;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Messages per sender in the random-kill test (50 senders): the full 200 with
/// `--features soak`, 60 by default to keep `cargo test` under a minute on 2 cores (debug).
#[cfg(feature = "soak")]
const PER_SENDER: u64 = 200;
#[cfg(not(feature = "soak"))]
const PER_SENDER: u64 = 60;
const SENDERS: usize = 50;

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

struct RelayProc {
    child: Child,
    addr: String,
    id: IdentityKey,
}

impl Drop for RelayProc {
    /// Never leave a relay process behind, even when a test fails half-way.
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn write_config(dir: &Path, extra: &str) -> PathBuf {
    let cfg = dir.join("relay.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = {:?}\nusername = \"relay\"\n[log]\nlevel = \"warn\"\n[listen]\naddress = \"127.0.0.1:0\"\n[relay]\n{extra}\n",
            dir.join("data")
        ),
    )
    .unwrap();
    cfg
}

// The child is owned by the returned `RelayProc`, whose `Drop` kills and waits for it.
#[allow(clippy::zombie_processes)]
fn start(cfg: &Path, data: &Path) -> RelayProc {
    let _ = std::fs::remove_file(data.join(ADDR_FILE));
    let mut child = Command::new(env!("CARGO_BIN_EXE_sremp"))
        .arg("--config")
        .arg(cfg)
        .arg("relay")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(s) = std::fs::read_to_string(data.join(ADDR_FILE)) {
            let mut it = s.split_whitespace();
            if let (Some(a), Some(i)) = (it.next(), it.next()) {
                let id: IdentityKey = i.parse().unwrap();
                return RelayProc {
                    child,
                    addr: a.to_string(),
                    id,
                };
            }
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("relay did not start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Messages whose `STORE_RESPONSE` said stored: (sender, message id).
type Acked = Arc<Mutex<HashSet<([u8; 32], u64)>>>;

fn sigkill(p: &mut RelayProc) {
    p.child.kill().unwrap(); // SIGKILL on unix
    p.child.wait().unwrap();
}

async fn connect(p_addr: &str, id: IdentityKey, u: &UserIdentity) -> RelayClient {
    let (c, _) = tokio::time::timeout(
        Duration::from_secs(15),
        RelayClient::connect(p_addr, u, Some(id), HandshakeLimits::default()),
    )
    .await
    .unwrap()
    .unwrap();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_right_after_store_response_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let data = dir.path().join("data");
    let (alice, bob) = (user("alice"), user("bob"));
    for round in 0..3u64 {
        let mut p = start(&cfg, &data);
        let c = connect(&p.addr, p.id, &alice).await;
        c.store(bob.key(), format!("round {round}").into_bytes(), round)
            .await
            .unwrap();
        sigkill(&mut p);
    }
    let mut p = start(&cfg, &data);
    let c = connect(&p.addr, p.id, &bob).await;
    let got = c.retrieve_all(4).await.unwrap();
    let mut ids: Vec<u64> = got.iter().map(|m| m.message_id).collect();
    ids.sort();
    assert_eq!(ids, vec![0, 1, 2]);
    assert_eq!(
        got.iter()
            .find(|m| m.message_id == 2)
            .unwrap()
            .encrypted_blob,
        b"round 2"
    );
    sigkill(&mut p);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_commits_and_writes_counters() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), "");
    let data = dir.path().join("data");
    let (alice, bob) = (user("alice"), user("bob"));
    let mut p = start(&cfg, &data);
    let c = connect(&p.addr, p.id, &alice).await;
    for i in 0..10 {
        c.store(bob.key(), vec![1; 100], i).await.unwrap();
    }
    let pid = i32::try_from(p.child.id()).unwrap();
    // SAFETY: plain kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(s) = p.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "relay did not stop on SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    let stats: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join(STATS_FILE)).unwrap()).unwrap();
    assert_eq!(stats["stored"], 10);
    assert_eq!(stats["connections_total"], 1);
    let mut p = start(&cfg, &data);
    let c = connect(&p.addr, p.id, &bob).await;
    assert_eq!(c.retrieve_all(4).await.unwrap().len(), 10);
    sigkill(&mut p);
}

/// 50 senders store concurrently; the relay is SIGKILLed at random moments and restarted.
/// Senders retry unacknowledged messages (same id) after reconnecting. At the end every
/// acknowledged message is retrievable exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_under_concurrent_senders() {
    use rand::Rng;
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(
        dir.path(),
        "quota_messages = 100000\nquota_bytes = 1000000000\nrate_per_sec = 100000\nrate_burst = 100000\nbatch_messages = 1000",
    );
    let data = dir.path().join("data");
    let recipients: Vec<Arc<UserIdentity>> = (0..5).map(|i| user(&format!("r{i}"))).collect();
    let first = start(&cfg, &data);
    let relay_id = first.id;
    let (addr_tx, addr_rx) = tokio::sync::watch::channel(first.addr.clone());
    let proc_ = Arc::new(Mutex::new(first));
    let acked: Acked = Arc::default();
    let deadline = Instant::now() + Duration::from_secs(240);

    let mut senders = tokio::task::JoinSet::new();
    for s in 0..SENDERS {
        let rcpt = recipients[s % recipients.len()].key();
        let mut addr_rx = addr_rx.clone();
        let acked = acked.clone();
        senders.spawn(async move {
            let me = user(&format!("s{s}"));
            let mut next = 0u64;
            let mut client: Option<RelayClient> = None;
            while next < PER_SENDER {
                assert!(Instant::now() < deadline, "sender {s} stuck at {next}");
                let c = match client.take() {
                    Some(c) => c,
                    None => {
                        let addr = addr_rx.borrow_and_update().clone();
                        match RelayClient::connect(
                            &addr,
                            &me,
                            Some(relay_id),
                            HandshakeLimits {
                                timeout: Duration::from_secs(5),
                                ..HandshakeLimits::default()
                            },
                        )
                        .await
                        {
                            Ok((c, _)) => c,
                            Err(_) => {
                                let _ = tokio::time::timeout(
                                    Duration::from_millis(200),
                                    addr_rx.changed(),
                                )
                                .await;
                                continue;
                            }
                        }
                    }
                };
                let blob = format!("{s}:{next}").into_bytes();
                match tokio::time::timeout(Duration::from_secs(10), c.store(rcpt, blob, next)).await
                {
                    Ok(Ok(_)) => {
                        acked.lock().unwrap().insert((me.key().0, next));
                        next += 1;
                        client = Some(c);
                    }
                    // Connection lost or timed out: reconnect and retry the same id.
                    _ => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            assert_eq!(next, PER_SENDER);
            (me.key().0, s)
        });
    }

    // The killer: SIGKILL at random moments while senders run, restart at once.
    let mut kills = 0;
    let total = SENDERS as u64 * PER_SENDER;
    while kills < 6 && (acked.lock().unwrap().len() as u64) < total * 9 / 10 {
        let wait = rand::thread_rng().gen_range(50..600);
        tokio::time::sleep(Duration::from_millis(wait)).await;
        if (acked.lock().unwrap().len() as u64) >= total * 9 / 10 {
            break;
        }
        let mut p = proc_.lock().unwrap();
        sigkill(&mut p);
        kills += 1;
        *p = tokio::task::block_in_place(|| start(&cfg, &data));
        addr_tx.send_replace(p.addr.clone());
    }
    let mut done = HashMap::new();
    while let Some(r) = senders.join_next().await {
        let (k, s) = r.unwrap();
        done.insert(k, s);
    }
    assert!(kills >= 1, "the relay was never killed");
    // One more crash after everything was acknowledged.
    let addr = {
        let mut p = proc_.lock().unwrap();
        sigkill(&mut p);
        *p = tokio::task::block_in_place(|| start(&cfg, &data));
        p.addr.clone()
    };
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len() as u64, total);
    let mut seen: HashSet<([u8; 32], u64)> = HashSet::new();
    for r in &recipients {
        let c = connect(&addr, relay_id, r).await;
        let got = c.retrieve_all(100).await.unwrap();
        for m in got {
            assert_eq!(
                m.encrypted_blob,
                format!("{}:{}", done[&m.sender], m.message_id).into_bytes()
            );
            assert!(seen.insert((m.sender, m.message_id)), "delivered twice");
        }
    }
    let missing = acked.difference(&seen).count();
    assert_eq!(
        missing, 0,
        "{missing} acknowledged messages lost after {kills} kills"
    );
    assert_eq!(seen.len() as u64, total);
    eprintln!("{kills} SIGKILLs, {total} messages, none lost");
    let mut p = proc_.lock().unwrap();
    sigkill(&mut p);
}
