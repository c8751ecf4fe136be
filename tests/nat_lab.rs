//! Hole punching with the real binary in the NAT lab (tests/common/natlab.rs): two home
//! networks behind NAT routers and a public network with two relays, every node an
//! `ip netns exec … sremp run`.
//!
//! - cone + cone: the first message goes through a relay, a punch starts in the background,
//!   and the next message takes the direct QUIC path (`NAT_LAB_TRIALS` trials, default 2;
//!   `scripts/nat-lab.sh` runs 20 and prints the success count and timings);
//! - cone + symmetric: every message goes through the relay, none lost, and punching stops
//!   after one attempt (the symmetric side says so);
//! - the direct path dropped mid-conversation: relay fallback, nothing lost, and back to direct
//!   once it returns;
//! - a MITM on the public network terminating QUIC cannot authenticate as the relay it fronts;
//! - roaming: home A's router gets a new public address while both directions are direct;
//!   each direction falls back to the relay and returns to `direct-quic`, nothing lost.
//!
//! Needs root, `ip`, `iptables` and permission to create network namespaces; otherwise each
//! test prints why it skips and passes. Every wait is bounded. `NAT_LAB_DUMP=DIR` makes each
//! cone trial write both nodes' debug logs to `DIR/t<i>-{a,b}.log` (the first line of the `a`
//! log is the wall-clock time of the first send), for timing a punch.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;
#[path = "common/natlab.rs"]
mod natlab;

use common::{introduce, BinNode, BinNodeOptions, BinRelay};
use natlab::{Lab, Nat};
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

fn lab_or_skip(test: &str, a: Nat, b: Nat) -> Option<Lab> {
    if let Some(why) = natlab::unsupported() {
        eprintln!("skipping {test}: {why}");
        return None;
    }
    match Lab::build(a, b) {
        Ok(l) => Some(l),
        Err(why) => {
            eprintln!("skipping {test}: cannot build the NAT lab: {why}");
            None
        }
    }
}

/// Two relays in the public namespace.
fn relays(lab: &Lab, dir: &Path) -> (BinRelay, BinRelay) {
    let p = lab.public();
    let r1 = BinRelay::start(
        &dir.join("r1"),
        &format!("{}:7000", natlab::RELAY1),
        Some(&p),
    );
    let r2 = BinRelay::start(
        &dir.join("r2"),
        &format!("{}:7000", natlab::RELAY2),
        Some(&p),
    );
    (r1, r2)
}

/// A node in namespace `ns` at `ip:port` with both relays as home relays (over QUIC).
fn node(
    dir: &Path,
    name: &str,
    ns: &str,
    ip: &str,
    port: u16,
    r: &(BinRelay, BinRelay),
) -> BinNode {
    let mut o = BinNodeOptions::loopback(name);
    o.listen = format!("{ip}:{port}");
    o.relays = vec![
        r.0.quic_hint.clone().expect("relay serves QUIC"),
        r.1.quic_hint.clone().expect("relay serves QUIC"),
    ];
    o.direct_timeout_ms = 1000;
    o.ack_timeout_ms = 3000;
    let mut n = BinNode::new(dir, &o);
    n.netns = Some(ns.to_string());
    n.start();
    n
}

/// Waits (bounded) until `f(status)` holds.
fn wait_status(n: &BinNode, what: &str, secs: u64, f: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = n.json(&["status"]);
        if f(&v) {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {v:#}\n--- node log:\n{}",
            n.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn punch_row<'a>(status: &'a Value, contact: &str) -> Option<&'a Value> {
    status["punch"]
        .as_array()?
        .iter()
        .find(|r| r["contact"] == contact)
}

fn path_of(status: &Value, contact: &str) -> Option<String> {
    status["paths"]
        .as_array()?
        .iter()
        .find(|r| r["contact"] == contact)
        .and_then(|r| r["path"].as_str().map(String::from))
}

fn mapping_is(m: &'static str) -> impl Fn(&Value) -> bool {
    move |s| s["nat_mapping"] == m
}

/// One cone-to-cone trial with fresh nodes on `port`: `Some(time from the first send until
/// the punched path is up)` when the second message went direct over QUIC.
fn cone_trial(lab: &Lab, dir: &Path, r: &(BinRelay, BinRelay), i: u16) -> Option<Duration> {
    let port = 7100 + i;
    let a = node(
        dir,
        &format!("alice{i}"),
        &lab.home_a(),
        natlab::HA,
        port,
        r,
    );
    let b = node(dir, &format!("bob{i}"), &lab.home_b(), natlab::HB, port, r);
    let (a_id, b_id) = introduce(&a, &b);
    wait_status(
        &a,
        "alice's mapping",
        20,
        mapping_is("endpoint-independent"),
    );
    wait_status(&b, "bob's mapping", 20, mapping_is("endpoint-independent"));
    let t0 = Instant::now();
    let t0_wall = std::time::SystemTime::now();
    let first = a.json(&[
        "send",
        &b_id,
        "hello over the relay",
        "--wait",
        "--timeout-secs",
        "20",
    ]);
    assert_eq!(first["path"], "relay", "{first}");
    let deadline = t0 + Duration::from_secs(25);
    let punched = loop {
        let s = a.json(&["status"]);
        if punch_row(&s, &b_id).is_some_and(|r| r["punched"].is_string()) {
            break Some(t0.elapsed());
        }
        if Instant::now() > deadline {
            eprintln!("trial {i}: no punched path: {s:#}");
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let second = a.json(&[
        "send",
        &b_id,
        "hello direct",
        "--wait",
        "--timeout-secs",
        "20",
    ]);
    let direct = second["path"] == "direct-quic";
    if !direct || punched.is_none() {
        eprintln!(
            "trial {i} failed: second message {second}\n--- alice:\n{}\n--- bob:\n{}",
            a.logs(),
            b.logs()
        );
        return None;
    }
    let s = a.json(&["status"]);
    assert_eq!(path_of(&s, &b_id).as_deref(), Some("direct-quic"), "{s:#}");
    // Bob got both, once each.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let got: Vec<Value> = b
            .messages()
            .into_iter()
            .filter(|e| e["direction"] == "in")
            .collect();
        if got.len() == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "bob has {got:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = a_id;
    if let Some(d) = std::env::var("NAT_LAB_DUMP").ok().filter(|d| !d.is_empty()) {
        let _ = std::fs::create_dir_all(&d);
        let _ = std::fs::write(
            format!("{d}/t{i}-a.log"),
            format!(
                "first send at unix {:.3}\n{}",
                t0_wall
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap_or_default()
                    .as_secs_f64(),
                a.logs()
            ),
        );
        let _ = std::fs::write(format!("{d}/t{i}-b.log"), b.logs());
    }
    punched
}

#[test]
fn cone_nats_end_on_a_direct_quic_path() {
    let Some(lab) = lab_or_skip("cone_nats_end_on_a_direct_quic_path", Nat::Cone, Nat::Cone) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let r = relays(&lab, dir.path());
    let trials: u16 = std::env::var("NAT_LAB_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2)
        .clamp(1, 100);
    let mut times = Vec::new();
    for i in 0..trials {
        if let Some(t) = cone_trial(&lab, dir.path(), &r, i) {
            times.push(t.as_millis() as u64);
        }
    }
    times.sort_unstable();
    let median = times.get(times.len() / 2).copied();
    eprintln!(
        "NAT-LAB cone+cone: {}/{trials} trials direct-quic; first message -> punched path: median {:?} ms, all {:?}",
        times.len(),
        median,
        times
    );
    assert_eq!(times.len(), trials as usize, "every trial must punch");
}

#[test]
fn symmetric_nat_stays_on_the_relay_and_stops_punching() {
    let Some(lab) = lab_or_skip(
        "symmetric_nat_stays_on_the_relay_and_stops_punching",
        Nat::Cone,
        Nat::Symmetric,
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let r = relays(&lab, dir.path());
    let a = node(dir.path(), "alice", &lab.home_a(), natlab::HA, 7100, &r);
    let b = node(dir.path(), "bob", &lab.home_b(), natlab::HB, 7100, &r);
    let (a_id, b_id) = introduce(&a, &b);
    wait_status(
        &a,
        "alice's mapping",
        20,
        mapping_is("endpoint-independent"),
    );
    wait_status(&b, "bob's mapping", 20, mapping_is("endpoint-dependent"));
    let mut ids = Vec::new();
    for i in 0..8 {
        ids.push(a.send(&b_id, &format!("a->b {i}")));
        ids.push(b.send(&a_id, &format!("b->a {i}")));
        std::thread::sleep(Duration::from_millis(250));
    }
    // Every message arrives, once, through a relay.
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (ha, hb) = (a.messages(), b.messages());
        let inbound: Vec<&Value> = ha
            .iter()
            .chain(hb.iter())
            .filter(|e| e["direction"] == "in")
            .collect();
        let all = ids
            .iter()
            .all(|id| inbound.iter().filter(|e| e["id"] == id.as_str()).count() == 1);
        if all && inbound.len() == ids.len() {
            for e in ha.iter().chain(hb.iter()) {
                assert_eq!(e["path"], "relay", "{e}");
            }
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not all delivered once: {} inbound of {}\n--- alice:\n{}\n--- bob:\n{}",
            inbound.len(),
            ids.len(),
            a.logs(),
            b.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // At most one attempt, ended by the symmetric mapping; then nothing more.
    let s = wait_status(&a, "alice's punch result", 20, |s| {
        punch_row(s, &b_id).is_some_and(|r| r["last_result"].is_string())
    });
    let row = punch_row(&s, &b_id).unwrap().clone();
    assert_eq!(row["last_result"], "endpoint-dependent mapping", "{s:#}");
    assert_eq!(row["attempts_last_hour"], 1, "{s:#}");
    assert!(row["punched"].is_null());
    // Bob, the symmetric side, never starts one.
    let sb = b.json(&["status"]);
    assert!(
        punch_row(&sb, &a_id).is_none_or(|r| r["attempts_last_hour"] == 0),
        "{sb:#}"
    );
    for i in 0..4 {
        a.send(&b_id, &format!("more {i}"));
    }
    std::thread::sleep(Duration::from_secs(3));
    let s = a.json(&["status"]);
    assert_eq!(
        punch_row(&s, &b_id).unwrap()["attempts_last_hour"],
        1,
        "{s:#}"
    );
    assert_eq!(path_of(&s, &b_id).as_deref(), Some("relay"), "{s:#}");
}

#[test]
fn dropped_direct_path_falls_back_to_the_relay_and_returns() {
    let Some(lab) = lab_or_skip(
        "dropped_direct_path_falls_back_to_the_relay_and_returns",
        Nat::Cone,
        Nat::Cone,
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let r = relays(&lab, dir.path());
    let a = node(dir.path(), "alice", &lab.home_a(), natlab::HA, 7100, &r);
    let b = node(dir.path(), "bob", &lab.home_b(), natlab::HB, 7100, &r);
    let (_, b_id) = introduce(&a, &b);
    wait_status(
        &a,
        "alice's mapping",
        20,
        mapping_is("endpoint-independent"),
    );
    wait_status(&b, "bob's mapping", 20, mapping_is("endpoint-independent"));
    let mut ids = vec![a.send(&b_id, "warm-up")];
    wait_status(&a, "a punched path", 25, |s| {
        punch_row(s, &b_id).is_some_and(|r| r["punched"].is_string())
    });
    let e = a.json(&["send", &b_id, "direct", "--wait", "--timeout-secs", "20"]);
    assert_eq!(e["path"], "direct-quic", "{e}");
    ids.push(e["id"].as_str().unwrap().to_string());

    // The direct path dies: messages go through the relay.
    lab.cut_direct(true);
    let mut by_relay = 0;
    for i in 0..4 {
        let e = a.json(&[
            "send",
            &b_id,
            &format!("cut {i}"),
            "--wait",
            "--timeout-secs",
            "20",
        ]);
        ids.push(e["id"].as_str().unwrap().to_string());
        if e["path"] == "relay" {
            by_relay += 1;
        }
    }
    assert!(by_relay >= 3, "the relay took {by_relay} of 4 while cut");
    let s = a.json(&["status"]);
    assert_eq!(path_of(&s, &b_id).as_deref(), Some("relay"), "{s:#}");

    // It returns: a later message is direct again (a new punch after the back-off).
    lab.cut_direct(false);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let e = a.json(&["send", &b_id, "again?", "--wait", "--timeout-secs", "20"]);
        ids.push(e["id"].as_str().unwrap().to_string());
        if e["path"] == "direct-quic" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "never direct again\n--- alice:\n{}\n--- bob:\n{}",
            a.logs(),
            b.logs()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Nothing lost: every message at Bob exactly once.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got: Vec<Value> = b
            .messages()
            .into_iter()
            .filter(|e| e["direction"] == "in")
            .collect();
        let once = ids
            .iter()
            .all(|id| got.iter().filter(|e| e["id"] == id.as_str()).count() == 1);
        if once && got.len() == ids.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "bob has {} of {}: {got:?}",
            got.len(),
            ids.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `sremp send --wait`: `(id, path)`.
fn send_wait(from: &BinNode, to: &str, text: &str) -> (String, String) {
    let e = from.json(&["send", to, text, "--wait", "--timeout-secs", "30"]);
    (
        e["id"].as_str().unwrap().to_string(),
        e["path"].as_str().unwrap_or("").to_string(),
    )
}

/// With `NAT_LAB_DUMP=DIR`, writes both nodes' logs to `DIR/<tag>-{a,b}.log`.
fn dump(tag: &str, a: &BinNode, b: &BinNode) {
    if let Some(d) = std::env::var("NAT_LAB_DUMP").ok().filter(|d| !d.is_empty()) {
        let _ = std::fs::create_dir_all(&d);
        let _ = std::fs::write(format!("{d}/{tag}-a.log"), a.logs());
        let _ = std::fs::write(format!("{d}/{tag}-b.log"), b.logs());
    }
}

/// Waits (bounded) until `n` has every id of `ids` exactly once as a received message and no
/// other received message.
fn all_once(n: &BinNode, ids: &[String], secs: u64, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let got: Vec<Value> = n
            .messages()
            .into_iter()
            .filter(|e| e["direction"] == "in" && e["status"] == "received")
            .collect();
        let once = ids
            .iter()
            .all(|id| got.iter().filter(|e| e["id"] == id.as_str()).count() == 1);
        if once && got.len() == ids.len() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: {} inbound of {}: {got:?}",
            got.len(),
            ids.len()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Roaming: home A's public address changes (the router is renumbered, so every NAT mapping
/// of home A changes) while both directions use the punched QUIC paths. Neither punched
/// connection survives: QUIC migration cannot carry Alice's (Bob's NAT drops packets from her
/// new address) and Bob's goes to her old one. So both directions fall back to the relay
/// until a new punch carries Alice's new address, which she learns by asking her relays
/// again; then both are direct again. Nothing is lost or doubled. (Without that refresh
/// Alice offers her stale address forever and neither direction comes back.)
#[test]
fn roaming_home_keeps_or_regains_the_direct_path() {
    let Some(lab) = lab_or_skip(
        "roaming_home_keeps_or_regains_the_direct_path",
        Nat::Cone,
        Nat::Cone,
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let r = relays(&lab, dir.path());
    let a = node(dir.path(), "alice", &lab.home_a(), natlab::HA, 7100, &r);
    let b = node(dir.path(), "bob", &lab.home_b(), natlab::HB, 7100, &r);
    let (a_id, b_id) = introduce(&a, &b);
    wait_status(
        &a,
        "alice's mapping",
        20,
        mapping_is("endpoint-independent"),
    );
    wait_status(&b, "bob's mapping", 20, mapping_is("endpoint-independent"));
    let (mut to_b, mut to_a) = (Vec::new(), Vec::new());
    to_b.push(a.send(&b_id, "warm-up"));
    // One punch gives both sides a path (the responder's dial too).
    for (n, peer, who) in [(&a, &b_id, "alice"), (&b, &a_id, "bob")] {
        wait_status(n, &format!("{who}'s punched path"), 30, |s| {
            punch_row(s, peer).is_some_and(|r| r["punched"].is_string())
        });
    }
    let (id, path) = send_wait(&a, &b_id, "a->b direct");
    to_b.push(id);
    assert_eq!(path, "direct-quic");
    let (id, path) = send_wait(&b, &a_id, "b->a direct");
    to_a.push(id);
    assert_eq!(path, "direct-quic");

    lab.renumber_a();

    // Both keep talking; each direction must come back to (or stay on) a direct QUIC path.
    let (mut a_direct, mut b_direct) = (false, false);
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut i = 0;
    while !(a_direct && b_direct) {
        assert!(
            Instant::now() < deadline,
            "not direct again in both directions (alice {a_direct}, bob {b_direct})\n--- alice:\n{}\n--- bob:\n{}",
            a.logs(),
            b.logs()
        );
        let (id, path) = send_wait(&a, &b_id, &format!("a->b after {i}"));
        to_b.push(id);
        a_direct |= path == "direct-quic";
        let (id, path) = send_wait(&b, &a_id, &format!("b->a after {i}"));
        to_a.push(id);
        b_direct |= path == "direct-quic";
        eprintln!("roaming: round {i}: alice direct {a_direct}, bob direct {b_direct}");
        i += 1;
        std::thread::sleep(Duration::from_millis(500));
    }
    dump("roaming", &a, &b);
    // Alice's candidates now carry her new public address.
    let s = a.json(&["status"]);
    assert!(
        s["observed_addresses"]
            .as_array()
            .unwrap()
            .iter()
            .any(|o| o["address"]
                .as_str()
                .is_some_and(|x| x.starts_with(natlab::RA_WAN2))),
        "{s:#}"
    );
    all_once(&b, &to_b, 30, "bob");
    all_once(&a, &to_a, 30, "alice");
}

/// Runs `f` on a thread inside network namespace `ns` (its sockets live there).
fn in_netns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> std::thread::JoinHandle<T> {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        use std::os::fd::AsRawFd;
        let file = std::fs::File::open(&path).unwrap();
        // SAFETY: setns on a valid namespace fd only changes this thread's network namespace.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns failed");
        f()
    })
}

#[test]
fn a_mitm_terminating_quic_cannot_authenticate() {
    let Some(lab) = lab_or_skip(
        "a_mitm_terminating_quic_cannot_authenticate",
        Nat::Cone,
        Nat::Cone,
    ) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let r = relays(&lab, dir.path());
    // The MITM at 198.18.0.66:7000 terminates QUIC (its own certificate) and splices the
    // stream to relay 1's QUIC endpoint; the node is told relay 1 is there.
    let relay1: std::net::SocketAddr = format!("{}:7000", natlab::RELAY1).parse().unwrap();
    let listen: std::net::SocketAddr = format!("{}:7000", natlab::MITM).parse().unwrap();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let spliced = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = spliced.clone();
    let mitm = in_netns(&lab.public(), move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let ep = sremp::transport::QuicEndpoint::bind(
                listen,
                sremp::transport::QuicSettings::default(),
            )
            .unwrap();
            let serve = async {
                while let Some(inc) = ep.accept().await {
                    let ep = ep.clone();
                    let counter = counter.clone();
                    tokio::spawn(async move {
                        let Ok(down) = inc.await else { return };
                        let Ok(up) = ep.connect_raw(relay1).await else {
                            return;
                        };
                        let Ok((mut dw, mut dr)) = down.accept_bi().await else {
                            return;
                        };
                        let Ok((mut uw, mut ur)) = up.open_bi().await else {
                            return;
                        };
                        counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let a = tokio::io::copy(&mut dr, &mut uw);
                        let b = tokio::io::copy(&mut ur, &mut dw);
                        let _ = tokio::time::timeout(Duration::from_secs(10), async {
                            tokio::join!(a, b)
                        })
                        .await;
                    });
                }
            };
            let stop = async {
                loop {
                    if stop_rx.try_recv().is_ok() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            };
            tokio::select! { _ = serve => {}, _ = stop => {} }
            ep.close();
        })
    });
    let id1 = r.0.hint.split('@').next().unwrap().to_string();
    let mut o = BinNodeOptions::loopback("alice");
    o.listen = format!("{}:7100", natlab::HA);
    o.relays = vec![format!("{id1}@quic://{listen}")];
    o.direct_timeout_ms = 1000;
    let mut a = BinNode::new(dir.path(), &o);
    a.netns = Some(lab.home_a());
    a.start();
    // The MITM splices at least one attempt, and none registers.
    let deadline = Instant::now() + Duration::from_secs(20);
    while spliced.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        assert!(
            Instant::now() < deadline,
            "the node never went through the MITM\n{}",
            a.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_secs(2));
    let s = a.json(&["status"]);
    assert_eq!(s["relays"][0]["connected"], false, "{s:#}");
    assert!(
        s["observed_addresses"].as_array().unwrap().is_empty(),
        "nothing learnt through the MITM: {s:#}"
    );
    let logs = a.logs();
    assert!(
        logs.contains("cannot reach message source"),
        "the node should report the failed relay:\n{logs}"
    );
    // The real relay, reached without the MITM, works for the same node.
    let mut o2 = o.clone();
    o2.name = "alice2".into();
    o2.listen = format!("{}:7101", natlab::HA);
    o2.relays = vec![r.0.quic_hint.clone().unwrap()];
    let mut a2 = BinNode::new(dir.path(), &o2);
    a2.netns = Some(lab.home_a());
    a2.start();
    wait_status(&a2, "the real relay", 20, |s| {
        s["relays"][0]["connected"] == true
    });
    let _ = stop_tx.send(());
    mitm.join().unwrap();
}

/// One trial for the table: fresh nodes on `port`, one message, then up to `secs` for a
/// punched path. `Some(time from the send to the punched path)`.
fn punch_trial(
    lab: &Lab,
    dir: &Path,
    r: &(BinRelay, BinRelay),
    tag: &str,
    port: u16,
    secs: u64,
) -> Option<Duration> {
    let a = node(
        dir,
        &format!("a{tag}{port}"),
        &lab.home_a(),
        natlab::HA,
        port,
        r,
    );
    let b = node(
        dir,
        &format!("b{tag}{port}"),
        &lab.home_b(),
        natlab::HB,
        port,
        r,
    );
    let (_, b_id) = introduce(&a, &b);
    let known = |s: &Value| s["nat_mapping"] != "unknown";
    wait_status(&a, "alice's mapping", 20, known);
    wait_status(&b, "bob's mapping", 20, known);
    let t0 = Instant::now();
    a.send(&b_id, "hello");
    let deadline = t0 + Duration::from_secs(secs);
    while Instant::now() < deadline {
        let s = a.json(&["status"]);
        if punch_row(&s, &b_id).is_some_and(|r| r["punched"].is_string()) {
            return Some(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// `scripts/bench-nat.sh`: punch success and time per NAT combination.
#[test]
#[ignore = "benchmark: run by scripts/bench-nat.sh"]
fn nat_bench_table() {
    let trials: u16 = std::env::var("NAT_BENCH_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
        .clamp(1, 100);
    let mut rows = Vec::new();
    for (name, a, b) in [
        ("cone/cone", Nat::Cone, Nat::Cone),
        ("cone/symmetric", Nat::Cone, Nat::Symmetric),
        ("symmetric/cone", Nat::Symmetric, Nat::Cone),
        ("symmetric/symmetric", Nat::Symmetric, Nat::Symmetric),
    ] {
        let Some(lab) = lab_or_skip("nat_bench_table", a, b) else {
            return;
        };
        let dir = tempfile::tempdir().unwrap();
        let r = relays(&lab, dir.path());
        let mut times: Vec<u64> = Vec::new();
        for i in 0..trials {
            if let Some(t) = punch_trial(&lab, dir.path(), &r, "x", 7100 + i, 15) {
                times.push(t.as_millis() as u64);
            }
        }
        times.sort_unstable();
        rows.push((name, times));
    }
    eprintln!("NAT-BENCH combination            punched/trials  median ms  max ms");
    for (name, times) in rows {
        eprintln!(
            "NAT-BENCH {name:<22} {:>6}/{trials:<8} {:>9} {:>7}",
            times.len(),
            times
                .get(times.len() / 2)
                .map_or("-".to_string(), |t| t.to_string()),
            times.last().map_or("-".to_string(), |t| t.to_string()),
        );
    }
}
