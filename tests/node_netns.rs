//! A direct path blackholed on and off (iptables DROP) while the sender keeps sending: every
//! message is delivered exactly once, through the relay while the direct path is dark.
//!
//! Needs root, `ip` and `iptables`, and permission to create network namespaces; otherwise it
//! prints why it skips and passes. The topology is built here and torn down by a guard, even
//! when the test fails:
//!
//! ```text
//!   namespace <p>a                                  namespace <p>b
//!   alice (127.0.0.1:7003)                          bob (10.251.1.2:7001)
//!   relay (10.251.2.1:7002)
//!       vd 10.251.1.1/24  <---- direct link ---->  vd 10.251.1.2/24   <- DROP tcp+udp --dport 7001 -i vd
//!       vr 10.251.2.1/24  <---- relay link  ---->  vr 10.251.2.2/24
//! ```
//!
//! Private addresses exist only inside these two namespaces; nothing touches the host's own
//! network. Bob's home relay is reached over the second link, so blackholing Bob's listener
//! on the first leaves his relay connection alone.

// Tests: failing loudly is the point.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{introduce, BinNode, BinNodeOptions, BinRelay, ControlConn};
use serde_json::Value;
use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const B_PORT: u16 = 7001;

/// Runs a command; `Err(text)` with its stderr when it fails or cannot start.
fn sh(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Deletes the namespaces (and with them the veth pairs and rules) when dropped.
struct Namespaces {
    names: Vec<String>,
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for n in &self.names {
            if let Err(e) = sh("ip", &["netns", "del", n]) {
                eprintln!("cleanup: {e}");
            }
        }
    }
}

/// Why the test cannot run here, if it cannot.
fn unsupported() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    for tool in ["ip", "iptables"] {
        if Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

/// Builds the topology above. `Err`: the environment does not allow it (skip).
fn topology(prefix: &str) -> Result<Namespaces, String> {
    let (a, b) = (format!("{prefix}a"), format!("{prefix}b"));
    let mut ns = Namespaces { names: Vec::new() };
    for n in [&a, &b] {
        sh("ip", &["netns", "add", n])?;
        ns.names.push(n.clone());
        sh("ip", &["-n", n, "link", "set", "lo", "up"])?;
    }
    for (dev, net) in [("vd", "10.251.1"), ("vr", "10.251.2")] {
        sh(
            "ip",
            &[
                "-n", &a, "link", "add", dev, "type", "veth", "peer", "name", dev, "netns", &b,
            ],
        )?;
        for (n, host) in [(&a, 1), (&b, 2)] {
            sh(
                "ip",
                &[
                    "-n",
                    n,
                    "addr",
                    "add",
                    &format!("{net}.{host}/24"),
                    "dev",
                    dev,
                ],
            )?;
            sh("ip", &["-n", n, "link", "set", dev, "up"])?;
        }
    }
    // iptables must work inside the namespace (nf_tables or legacy).
    sh("ip", &["netns", "exec", &b, "iptables", "-S", "INPUT"])?;
    Ok(ns)
}

/// Blackholes (or restores) Bob's port on the direct link, TCP and UDP alike: Bob's node also
/// listens for QUIC on that port, and a direct path over QUIC must go dark with the TCP one.
fn drop_rule(ns: &str, on: bool) {
    let port = B_PORT.to_string();
    let op = if on { "-A" } else { "-D" };
    for proto in ["tcp", "udp"] {
        sh(
            "ip",
            &[
                "netns", "exec", ns, "iptables", op, "INPUT", "-i", "vd", "-p", proto, "--dport",
                &port, "-j", "DROP",
            ],
        )
        .unwrap();
    }
}

#[test]
fn blackholed_direct_path_keeps_delivering() {
    if let Some(why) = unsupported() {
        eprintln!("skipping node_netns: {why}");
        return;
    }
    let prefix = format!("srx{}", std::process::id());
    // Declared first so it is dropped last: after the processes inside are killed.
    let ns = match topology(&prefix) {
        Ok(ns) => ns,
        Err(why) => {
            eprintln!("skipping node_netns: cannot build network namespaces: {why}");
            return;
        }
    };
    let (ns_a, ns_b) = (ns.names[0].clone(), ns.names[1].clone());
    let dir = tempfile::tempdir().unwrap();
    let relay = BinRelay::start(dir.path(), "10.251.2.1:7002", Some(&ns_a));
    let mut alice = BinNodeOptions::loopback("alice");
    alice.listen = "127.0.0.1:7003".into();
    alice.direct_timeout_ms = 1000;
    alice.ack_timeout_ms = 2000;
    alice.log = "sremp=info".into();
    let mut bob = BinNodeOptions::loopback("bob");
    bob.listen = format!("10.251.1.2:{B_PORT}");
    bob.relays = vec![relay.hint.clone()];
    bob.log = "sremp=info".into();
    let mut a = BinNode::new(dir.path(), &alice);
    a.netns = Some(ns_a.clone());
    let mut b = BinNode::new(dir.path(), &bob);
    b.netns = Some(ns_b.clone());
    a.start();
    b.start();
    let (_, b_id) = introduce(&a, &b);
    let deadline = Instant::now() + Duration::from_secs(20);
    while b.json(&["status"])["relays"][0]["connected"] != true {
        assert!(Instant::now() < deadline, "bob never reached his relay");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The direct path works before anything is dropped. The path to Bob starts unproven, so
    // Alice's first message races the direct path against Bob's relay and either may be
    // acknowledged first (both are one handshake away); the direct attempt proves the path
    // even when it loses. So send until a message is stored directly (bounded).
    let mut ids = Vec::new();
    let mut sent_at: HashMap<String, u64> = HashMap::new();
    let mut paths = Vec::new();
    for i in 0..10 {
        let m = a.json(&[
            "send",
            &b_id,
            &format!("before {i}"),
            "--wait",
            "--timeout-secs",
            "20",
        ]);
        let id = m["id"].as_str().unwrap().to_string();
        sent_at.insert(id.clone(), m["sent_at"].as_u64().unwrap());
        ids.push(id);
        paths.push(m["path"].clone());
        if m["path"] == "direct" {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        paths.last(),
        Some(&Value::from("direct")),
        "no message went direct before the blackhole: {paths:?}\n--- alice:\n{}\n--- bob:\n{}",
        a.logs(),
        b.logs()
    );

    eprintln!("paths before the blackhole: {paths:?}");

    // Keep sending (every 100 ms) while the direct path goes dark and light every 1.2 s.
    let mut ctl = ControlConn::connect(&a);
    let mut dark = false;
    let mut toggles = 0;
    for i in 0..80 {
        if i % 12 == 0 {
            dark = !dark;
            drop_rule(&ns_b, dark);
            toggles += 1;
        }
        let e = ctl.send(&b_id, &format!("blackhole {i:03}"));
        let id = e["id"].as_str().unwrap().to_string();
        sent_at.insert(id.clone(), e["sent_at"].as_u64().unwrap());
        ids.push(id);
        std::thread::sleep(Duration::from_millis(100));
    }
    if dark {
        drop_rule(&ns_b, false);
    }
    eprintln!("sent {} messages across {toggles} toggles", ids.len());

    // Every message at Bob exactly once, every status at Alice `delivered`, within 40 s.
    let deadline = Instant::now() + Duration::from_secs(40);
    let (got, statuses) = loop {
        let hb = b.messages();
        let ha = a.messages();
        let got: Vec<&Value> = hb.iter().filter(|e| e["direction"] == "in").collect();
        let have = |id: &String| got.iter().any(|e| e["id"] == id.as_str());
        let delivered = |id: &String| {
            ha.iter()
                .any(|e| e["id"] == id.as_str() && e["status"] == "delivered")
        };
        if ids.iter().all(have) && ids.iter().all(delivered) {
            break (
                got.into_iter().cloned().collect::<Vec<_>>(),
                ha.iter()
                    .map(|e| e["status"].as_str().unwrap_or("").to_string())
                    .collect::<Vec<_>>(),
            );
        }
        assert!(
            Instant::now() < deadline,
            "not all delivered: {} of {} at bob, {} delivered at alice\n--- alice:\n{}\n--- bob:\n{}",
            ids.iter().filter(|id| have(id)).count(),
            ids.len(),
            ids.iter().filter(|id| delivered(id)).count(),
            a.logs(),
            b.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let mut per_id: HashMap<&str, usize> = HashMap::new();
    for e in &got {
        *per_id.entry(e["id"].as_str().unwrap()).or_default() += 1;
    }
    for id in &ids {
        assert_eq!(per_id.get(id.as_str()), Some(&1), "message {id} at bob");
    }
    assert_eq!(got.len(), ids.len(), "unexpected extra messages at bob");
    assert!(statuses.iter().all(|s| s == "delivered"), "{statuses:?}");
    let by_relay = got.iter().filter(|e| e["path"] == "relay").count();
    let mut lat: Vec<u64> = got
        .iter()
        .map(|e| {
            let id = e["id"].as_str().unwrap();
            e["recorded_at"]
                .as_u64()
                .unwrap()
                .saturating_sub(sent_at[id])
        })
        .collect();
    lat.sort_unstable();
    eprintln!(
        "{} delivered exactly once ({by_relay} through the relay); send -> recipient history: p50 {} ms, max {} ms",
        got.len(),
        lat[lat.len() / 2],
        lat[lat.len() - 1]
    );
    assert!(by_relay > 0, "the blackhole never forced the relay path");
    drop(relay);
}
