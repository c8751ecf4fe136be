//! Issue 17: a relay cluster on NATS JetStream, with the real binary.
//!
//! A 3-node JetStream cluster on loopback ports chosen at run time (`nats-server` from the
//! distribution; the test SKIPS with a message when it is not installed), two `sremp relay`
//! processes sharing one identity key and `store = "nats"`, senders on one, recipients on the
//! other. Mid-stream one NATS server and the recipients' relay are SIGKILLed; every
//! acknowledged message must reach its recipient, each confirmation must delete exactly one
//! stored message and reach its sender, and after both are restarted the cluster serves on.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{free_port, reap, signal, Proc};
use sremp::identity::{Flags, IdentityKey, UserIdentity};
use sremp::noise::stream::HandshakeLimits;
use sremp::relay::{RelayClient, RelayEvent};
use sremp::time::Timestamp;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

const T: Duration = Duration::from_secs(20);

fn nats_server() -> Option<PathBuf> {
    let out = Command::new("nats-server").arg("--version").output().ok()?;
    out.status.success().then(|| PathBuf::from("nats-server"))
}

async fn nats_connect(urls: &[String]) -> Option<async_nats::Client> {
    let addrs: Vec<async_nats::ServerAddr> = urls.iter().map(|u| u.parse().unwrap()).collect();
    async_nats::connect(addrs.as_slice()).await.ok()
}

/// One `nats-server` of the test cluster.
struct NatsNode {
    port: u16,
    cluster_port: u16,
    dir: PathBuf,
    name: String,
    child: Option<Child>,
}

/// A JetStream cluster of `nats-server` processes on loopback, stopped by PID on drop.
struct NatsCluster {
    nodes: Vec<NatsNode>,
}

impl NatsCluster {
    fn start(root: &Path, n: usize) -> NatsCluster {
        let mut nodes = Vec::new();
        for i in 0..n {
            let dir = root.join(format!("nats{i}"));
            std::fs::create_dir_all(&dir).unwrap();
            nodes.push(NatsNode {
                port: free_port(),
                cluster_port: free_port(),
                dir,
                name: format!("n{i}"),
                child: None,
            });
        }
        let mut c = NatsCluster { nodes };
        for i in 0..n {
            c.spawn(i);
        }
        c
    }

    fn routes(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.cluster_port))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("nats://127.0.0.1:{}", n.port))
            .collect()
    }

    fn spawn(&mut self, i: usize) {
        let routes = self.routes();
        let n = &mut self.nodes[i];
        let log = std::fs::File::create(n.dir.join("server.log")).unwrap();
        let child = Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &n.port.to_string(),
                "-n",
                &n.name,
                "-js",
                "-sd",
                n.dir.join("js").to_str().unwrap(),
                "--cluster_name",
                "sremp-test",
                "--cluster",
                &format!("nats://127.0.0.1:{}", n.cluster_port),
                "--routes",
                &routes,
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn nats-server");
        n.child = Some(child);
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            signal(&c, libc::SIGKILL);
            reap(&mut c, Duration::from_secs(5));
        }
    }

    /// Waits (bounded) until JetStream accepts an R3 stream.
    async fn ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let ok = async {
                let c = nats_connect(&self.urls()).await?;
                let js = async_nats::jetstream::new(c);
                let s = js
                    .create_stream(async_nats::jetstream::stream::Config {
                        name: "probe".into(),
                        subjects: vec!["probe".into()],
                        num_replicas: 3,
                        ..Default::default()
                    })
                    .await
                    .ok()?;
                let _ = js.delete_stream(&s.cached_info().config.name).await;
                Some(())
            };
            if tokio::time::timeout(Duration::from_secs(5), ok)
                .await
                .ok()
                .flatten()
                .is_some()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "JetStream cluster did not become ready"
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

/// One `sremp relay` process with `store = "nats"`.
struct ClusterRelay {
    proc: Option<Proc>,
    config: PathBuf,
    data: PathBuf,
    addr: String,
}

impl ClusterRelay {
    fn configure(home: &Path, urls: &[String], prefix: &str, port: u16) -> ClusterRelay {
        std::fs::create_dir_all(home).unwrap();
        let data = home.join("data");
        let config = home.join("relay.toml");
        let urls = urls
            .iter()
            .map(|u| format!("\"{u}\""))
            .collect::<Vec<_>>()
            .join(", ");
        std::fs::write(
            &config,
            format!(
                "data_dir = \"{}\"\nusername = \"relay\"\n[log]\nlevel = \"sremp=debug,info\"\n\
                 [listen]\naddress = \"127.0.0.1:{port}\"\n\
                 [relay]\nstore = \"nats\"\nnats_urls = [{urls}]\nreplicas = 3\n\
                 nats_prefix = \"{prefix}\"\nrate_per_sec = 100000\nrate_burst = 100000\n",
                data.display()
            ),
        )
        .unwrap();
        ClusterRelay {
            proc: None,
            config,
            data,
            addr: format!("127.0.0.1:{port}"),
        }
    }

    fn start(&mut self) -> IdentityKey {
        let _ = std::fs::remove_file(self.data.join("relay.addr"));
        let proc = Proc::spawn(&["relay", "--config", self.config.to_str().unwrap()]);
        let file = self.data.join("relay.addr");
        let deadline = Instant::now() + Duration::from_secs(60);
        let line = loop {
            if let Ok(s) = std::fs::read_to_string(&file) {
                if s.ends_with('\n') {
                    break s;
                }
            }
            assert!(
                Instant::now() < deadline,
                "relay did not start:\n{}",
                proc.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        self.proc = Some(proc);
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            signal(&p.child, libc::SIGKILL);
            reap(&mut p.child, Duration::from_secs(5));
        }
    }
}

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

async fn connect(
    addr: &str,
    u: &UserIdentity,
    relay: IdentityKey,
) -> Option<(RelayClient, mpsc::Receiver<RelayEvent>)> {
    tokio::time::timeout(
        T,
        RelayClient::connect(addr, u, Some(relay), HandshakeLimits::default()),
    )
    .await
    .ok()?
    .ok()
}

type Key = ([u8; 32], u64);
/// An acknowledged store: (recipient, sender, message id).
type Acked = (IdentityKey, [u8; 32], u64);

/// What a recipient saw: every (sender, id) received, with how often.
#[derive(Default)]
struct Seen {
    got: HashMap<Key, u32>,
    /// Messages that arrived as pushes (stored through the other relay process).
    pushed: u64,
}

/// A recipient: connects to the first reachable relay of `addrs`, collects (retrieves and
/// takes pushes), confirms everything it gets; reconnects (bounded) when its relay dies.
async fn recipient(
    u: Arc<UserIdentity>,
    relay: IdentityKey,
    addrs: Vec<String>,
    seen: Arc<Mutex<Seen>>,
    stop: tokio::sync::watch::Receiver<bool>,
) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut n = 0usize;
    while Instant::now() < deadline && !*stop.borrow() {
        let addr = &addrs[n % addrs.len()];
        n += 1;
        let Some((c, mut ev)) = connect(addr, &u, relay).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let take = |m: &sremp::wire::relay::StoredMessage| {
            *seen
                .lock()
                .unwrap()
                .got
                .entry((m.sender, m.message_id))
                .or_default() += 1;
        };
        // Collect: the backlog first, then pushes.
        let Ok(backlog) = tokio::time::timeout(T, c.retrieve_all(1000)).await else {
            continue;
        };
        let Ok(backlog) = backlog else { continue };
        for m in &backlog {
            take(m);
            let _ = c.confirm(IdentityKey(m.sender), m.message_id).await;
        }
        let mut stop = stop.clone();
        loop {
            tokio::select! {
                e = ev.recv() => match e {
                    Some(RelayEvent::Message(m)) => {
                        seen.lock().unwrap().pushed += 1;
                        take(&m);
                        if c.confirm(IdentityKey(m.sender), m.message_id).await.is_err() {
                            break;
                        }
                    }
                    Some(_) => {}
                    None => break,
                },
                _ = stop.changed() => {
                    // A last sweep for anything whose push was lost with a dead process.
                    if let Ok(Ok(rest)) = tokio::time::timeout(T, c.retrieve_all(1000)).await {
                        for m in &rest {
                            take(m);
                            let _ = c.confirm(IdentityKey(m.sender), m.message_id).await;
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    return;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nats_cluster_survives_a_dead_server_and_a_dead_relay() {
    if nats_server().is_none() {
        eprintln!("SKIP: nats-server is not installed (apt-get install nats-server); the NATS relay cluster test did not run");
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let mut nats = NatsCluster::start(root.path(), 3);
    nats.ready().await;
    let urls = nats.urls();
    let prefix = format!("t{}", std::process::id());
    let mut a = ClusterRelay::configure(&root.path().join("ra"), &urls, &prefix, free_port());
    let mut b = ClusterRelay::configure(&root.path().join("rb"), &urls, &prefix, free_port());
    let relay_id = a.start();
    // One published relay identity: B runs with A's key file.
    std::fs::create_dir_all(&b.data).unwrap();
    std::fs::copy(a.data.join("identity.key"), b.data.join("identity.key")).unwrap();
    assert_eq!(
        b.start(),
        relay_id,
        "both processes publish one relay identity"
    );

    let senders = [user("s1"), user("s2")];
    let recipients = [user("r1"), user("r2")];
    let seen = Arc::new(Mutex::new(Seen::default()));
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // Recipients on B (A as the published fallback address).
    let mut rtasks = Vec::new();
    for r in &recipients {
        rtasks.push(tokio::spawn(recipient(
            r.clone(),
            relay_id,
            vec![b.addr.clone(), a.addr.clone()],
            seen.clone(),
            stop_rx.clone(),
        )));
    }
    // Senders on A: confirmations they get, and every store the relay acknowledged.
    let acked: Arc<Mutex<HashSet<Acked>>> = Default::default();
    let confirmed: Arc<Mutex<HashMap<Key, u32>>> = Default::default();
    let mut sender_clients = Vec::new();
    for s in &senders {
        let (c, mut ev) = connect(&a.addr, s, relay_id)
            .await
            .expect("sender connects");
        let conf = confirmed.clone();
        tokio::spawn(async move {
            while let Some(e) = ev.recv().await {
                if let RelayEvent::Confirmation(d) = e {
                    *conf
                        .lock()
                        .unwrap()
                        .entry((d.delivered_to, d.message_id))
                        .or_default() += 1;
                }
            }
        });
        sender_clients.push(c);
    }
    // Give the recipients a moment to register and start collecting on B.
    tokio::time::sleep(Duration::from_millis(500)).await;

    const PER_SENDER: u64 = 60;
    let mut failed = 0u32;
    for i in 0..PER_SENDER {
        if i == PER_SENDER / 3 {
            // Mid-stream: one NATS server and the recipients' relay die.
            nats.kill(1);
            b.kill();
        }
        for (k, c) in sender_clients.iter().enumerate() {
            let to = recipients[(i as usize + k) % 2].key();
            let id = i * 10 + k as u64;
            // Bounded retries while JetStream elects new leaders.
            let mut ok = false;
            for _ in 0..40 {
                match tokio::time::timeout(T, c.store(to, format!("m{k}-{i}").into_bytes(), id))
                    .await
                {
                    Ok(Ok(_)) => {
                        ok = true;
                        break;
                    }
                    _ => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            }
            if ok {
                acked.lock().unwrap().insert((to, senders[k].key().0, id));
            } else {
                failed += 1;
            }
        }
    }
    let acked: HashSet<_> = acked.lock().unwrap().clone();
    assert!(
        acked.len() as u64 >= PER_SENDER * 2 - 4,
        "too few stores acknowledged ({} of {}, {failed} failed):\n{}",
        acked.len(),
        PER_SENDER * 2,
        a.proc.as_ref().unwrap().log()
    );

    // Both come back; the cluster serves on.
    nats.spawn(1);
    b.start();
    // Wait (bounded) until every acknowledged message has reached its recipient.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let missing = {
            let s = seen.lock().unwrap();
            acked
                .iter()
                .filter(|(_, sender, id)| !s.got.contains_key(&(*sender, *id)))
                .count()
        };
        if missing == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} acknowledged messages never delivered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = stop_tx.send(true);
    for t in rtasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
    }
    // Delivered exactly once after the recipient's de-duplication, and nothing that was not
    // acknowledged (or sent) appeared.
    let got = seen.lock().unwrap().got.clone();
    let sent: HashSet<Key> = (0..PER_SENDER)
        .flat_map(|i| (0..2u64).map(move |k| (i * 10 + k, k)))
        .map(|(id, k)| (senders[k as usize].key().0, id))
        .collect();
    assert!(
        got.keys().all(|k| sent.contains(k)),
        "a message nobody sent was delivered"
    );
    let dup_receipts: u32 = got.values().map(|n| n - 1).sum();
    eprintln!(
        "acked {} of {}, delivered {} distinct, {} repeated receipts (pushed and also retrieved)",
        acked.len(),
        PER_SENDER * 2,
        got.len(),
        dup_receipts
    );

    // Every confirmation deleted its message exactly once: the mailboxes empty. A recipient
    // has its message once the relay pushed it; the relay purges it only when the recipient's
    // confirmation has been processed (the receipt published and acknowledged by JetStream
    // first), which trails the delivery, more so under load. So wait, bounded: a lost
    // confirmation leaves its message for good and still fails here.
    let c = nats_connect(&urls).await.unwrap();
    let js = async_nats::jetstream::new(c);
    let deadline = Instant::now() + Duration::from_secs(30);
    for r in &recipients {
        let name = format!("{prefix}_m_{}", r.key());
        let mut s = js.get_stream(&name).await.unwrap();
        loop {
            let left = s.info().await.unwrap().state.messages;
            if left == 0 {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{name} still holds {left} messages 30 s after every delivery"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    // Confirmations reached the senders (pushed across processes, or kept and handed over
    // when the sender registers again, here on the restarted B).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut handed_over = HashSet::new();
    loop {
        let missing: Vec<_> = {
            let conf = confirmed.lock().unwrap();
            acked
                .iter()
                .filter(|(to, _, id)| {
                    !conf.contains_key(&(to.0, *id)) && !handed_over.contains(&(to.0, *id))
                })
                .cloned()
                .collect()
        };
        if missing.is_empty() {
            break;
        }
        // Kept ones come on a fresh registration.
        for s in &senders {
            if let Some((c2, mut ev)) = connect(&b.addr, s, relay_id).await {
                let until = Instant::now() + Duration::from_millis(500);
                while let Ok(Some(e)) = tokio::time::timeout_at(until.into(), ev.recv()).await {
                    if let RelayEvent::Confirmation(d) = e {
                        handed_over.insert((d.delivered_to, d.message_id));
                        let _ = c2.ack_confirmation(&d).await;
                    }
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "{} confirmations never reached their sender",
            missing.len()
        );
    }

    // Serves on after the restart: a store through the restarted B reaches a recipient
    // collecting on A, pushed across processes.
    let (rc, mut rev) = connect(&a.addr, &recipients[0], relay_id).await.unwrap();
    let _ = rc.retrieve_all(10).await.unwrap();
    let (sc, _sev) = connect(&b.addr, &senders[0], relay_id).await.unwrap();
    sc.store(recipients[0].key(), b"after".to_vec(), 999_999)
        .await
        .unwrap();
    // Pushed across processes; a push published while the restarted server's routes are
    // still forming can miss (at-least-once delivery rests on retrieval), so fall back to
    // retrieving it, bounded.
    let pushed = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match rev.recv().await {
                Some(RelayEvent::Message(m)) => return Some(m),
                Some(_) => continue,
                None => return None,
            }
        }
    })
    .await
    .ok()
    .flatten();
    let after = match pushed {
        Some(m) => m,
        None => {
            eprintln!("push after restart missed; retrieving");
            rc.retrieve_all(10)
                .await
                .unwrap()
                .into_iter()
                .find(|m| m.message_id == 999_999)
                .expect("the message stored after the restart")
        }
    };
    assert_eq!(after.encrypted_blob, b"after");
    assert!(
        seen.lock().unwrap().pushed > 0,
        "no message was pushed from the senders' relay to the recipients' relay"
    );

    a.kill();
    b.kill();
}

/// A single JetStream server (`replicas = 1`) for the backend's semantics.
struct SingleNats {
    child: Child,
    url: String,
}

impl Drop for SingleNats {
    fn drop(&mut self) {
        signal(&self.child, libc::SIGKILL);
        reap(&mut self.child, Duration::from_secs(5));
    }
}

async fn single_nats(dir: &Path) -> SingleNats {
    let port = free_port();
    let child = Command::new("nats-server")
        .args([
            "-a",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-js",
            "-sd",
            dir.join("js").to_str().unwrap(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn nats-server");
    let url = format!("nats://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while nats_connect(std::slice::from_ref(&url)).await.is_none() {
        assert!(Instant::now() < deadline, "nats-server did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    SingleNats { child, url }
}

/// The NATS backend keeps the embedded store's rules: de-duplication (also from another
/// process, and beyond JetStream's duplicate window through the per-subject limit), quota,
/// key-ordered paging with `after` and `since`, confirmation deleting exactly once under
/// concurrency, and kept confirmations.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_backend_matches_the_embedded_store_rules() {
    use sremp::relay::backend::nats::NatsBackend;
    use sremp::relay::backend::{RelayBackend, StoreKind};
    use sremp::relay::stats::Stats;
    use sremp::relay::store::{NewMessage, StoreOutcome};
    use sremp::relay::RelayConfig;
    use sremp::wire::relay::{DeliveryConfirmation, RelayErrorCode, RetrieveCursor};

    if nats_server().is_none() {
        eprintln!("SKIP: nats-server is not installed (apt-get install nats-server); the NATS backend test did not run");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let server = single_nats(dir.path()).await;
    let cfg = RelayConfig {
        store: StoreKind::Nats,
        nats_urls: vec![server.url.clone()],
        replicas: 1,
        quota_messages: 4,
        nats_prefix: "sem".into(),
        ..RelayConfig::default()
    };
    let open = || async {
        let stats = Arc::new(Stats::default());
        (
            NatsBackend::open(cfg.clone(), stats.clone()).await.unwrap(),
            stats,
        )
    };
    let (p1, stats1) = open().await;
    let (p2, _) = open().await; // a second relay process on the same cluster
    let store = |b: Arc<NatsBackend>, r: u8, s: u8, id: u64, at: u64| async move {
        let (tx, rx) = tokio::sync::oneshot::channel();
        b.store_then(
            NewMessage {
                recipient: IdentityKey([r; 32]),
                sender: IdentityKey([s; 32]),
                message_id: id,
                sender_signature: [s; 64],
                blob: vec![id as u8; 10],
                now: Timestamp(at),
            },
            Box::new(move |r, _| {
                let _ = tx.send(r);
            }),
        )
        .await;
        rx.await.unwrap().unwrap()
    };
    assert_eq!(
        store(p1.clone(), 1, 2, 10, 100).await,
        StoreOutcome::Stored(Timestamp(100))
    );
    // The same message through the other process: a duplicate with the first stored_at.
    assert_eq!(
        store(p2.clone(), 1, 2, 10, 200).await,
        StoreOutcome::Duplicate(Timestamp(100))
    );
    store(p1.clone(), 1, 2, 11, 300).await;
    store(p2.clone(), 1, 3, 10, 400).await;
    store(p1.clone(), 1, 3, 0x100, 500).await;
    assert_eq!(
        store(p2.clone(), 1, 3, 12, 600).await,
        StoreOutcome::Refused(RelayErrorCode::QuotaFull)
    );
    assert_eq!(stats1.stored.load(std::sync::atomic::Ordering::Relaxed), 3);

    // Beyond the duplicate window the per-subject limit still refuses a second copy (the
    // server's answer the backend maps to Duplicate).
    let c = nats_connect(std::slice::from_ref(&server.url))
        .await
        .unwrap();
    let js = async_nats::jetstream::new(c);
    let subject = format!(
        "sem.m.{}.{}.{:016x}",
        IdentityKey([1; 32]),
        IdentityKey([2; 32]),
        10u64
    );
    let err = js
        .publish(subject, b"again".to_vec().into())
        .await
        .unwrap()
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("maximum messages per subject exceeded"),
        "{err}"
    );

    // Paging in key order (sender, then message id), with `after` and `since`.
    let (p, more) = p2
        .retrieve(IdentityKey([1; 32]), None, None, 3)
        .await
        .unwrap();
    assert!(more);
    assert_eq!(
        p.iter()
            .map(|m| (m.sender[0], m.message_id))
            .collect::<Vec<_>>(),
        vec![(2, 10), (2, 11), (3, 10)]
    );
    assert_eq!(p[0].timestamp, Timestamp(100));
    assert_eq!(p[0].sender_signature, [2; 64]);
    assert_eq!(p[0].encrypted_blob, vec![10; 10]);
    let cur = RetrieveCursor {
        sender: [3; 32],
        message_id: 10,
    };
    let (p, more) = p1
        .retrieve(IdentityKey([1; 32]), None, Some(cur), 3)
        .await
        .unwrap();
    assert_eq!((p.len(), more, p[0].message_id), (1, false, 0x100));
    let (p, _) = p1
        .retrieve(IdentityKey([1; 32]), Some(Timestamp(350)), None, 10)
        .await
        .unwrap();
    assert_eq!(p.len(), 2);
    let (p, more) = p1
        .retrieve(IdentityKey([9; 32]), None, None, 10)
        .await
        .unwrap();
    assert!(p.is_empty() && !more, "an unknown mailbox is empty");

    // Confirmations: someone else's deletes nothing; of concurrent ones exactly one deletes.
    assert!(!p1
        .confirm(IdentityKey([5; 32]), IdentityKey([2; 32]), 10)
        .await
        .unwrap());
    let mut tasks = Vec::new();
    for i in 0..6 {
        let b = if i % 2 == 0 { p1.clone() } else { p2.clone() };
        tasks.push(tokio::spawn(async move {
            b.confirm(IdentityKey([1; 32]), IdentityKey([2; 32]), 10)
                .await
                .unwrap()
        }));
    }
    let mut deleted = 0;
    for t in tasks {
        deleted += u32::from(t.await.unwrap());
    }
    assert_eq!(deleted, 1, "a confirmation deletes exactly once");
    // Quota space came back.
    assert_eq!(
        store(p1.clone(), 1, 3, 12, 700).await,
        StoreOutcome::Stored(Timestamp(700))
    );

    // Kept confirmations: kept by one process, handed over by the other, forgotten on ack.
    let kc = DeliveryConfirmation {
        message_id: 10,
        sender: [2; 32],
        delivered_to: [1; 32],
        timestamp: Timestamp(800),
        signature: [4; 64],
    };
    p1.keep_confirmation(kc.clone()).await.unwrap();
    let kept = p2
        .kept_confirmations(IdentityKey([2; 32]), 10)
        .await
        .unwrap();
    assert_eq!(kept, vec![kc]);
    p2.ack_confirmation(IdentityKey([2; 32]), [1; 32], 10)
        .await
        .unwrap();
    assert!(p1
        .kept_confirmations(IdentityKey([2; 32]), 10)
        .await
        .unwrap()
        .is_empty());
    p1.close().await.unwrap();
    p2.close().await.unwrap();
}
