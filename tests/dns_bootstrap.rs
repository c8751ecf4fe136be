//! Issue 10, DNS SRV bootstrap with the real binary: the rendezvous server is found ONLY
//! through a DNS server this test runs on 127.0.0.1 (an OS-chosen UDP port; answers built with
//! hickory-proto's message types). Two nodes whose config names no rendezvous server register
//! through it and `sremp discover` finds each other; a garbage DNS answer is logged and the
//! node keeps running. Every wait is bounded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{BinNode, BinNodeOptions, Proc};
use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, SRV};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use std::net::{Ipv4Addr, UdpSocket};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RV_NAME: &str = "rv.sremp.test";

/// A loopback DNS responder; stops when dropped.
struct Dns {
    port: u16,
    queries: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Dns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// `rv_port`: SRV answers point at `rv.sremp.test:rv_port`, which is 127.0.0.1.
/// `garbage`: every answer is bytes that are not DNS.
fn dns(rv_port: u16, garbage: bool) -> Dns {
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let port = sock.local_addr().unwrap().port();
    let queries = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let (q, s) = (queries.clone(), stop.clone());
    let thread = std::thread::spawn(move || {
        let mut buf = [0u8; 1500];
        // Bounded: ends when the test drops it, at the latest after 10 minutes.
        let deadline = Instant::now() + Duration::from_secs(600);
        while !s.load(Ordering::SeqCst) && Instant::now() < deadline {
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                continue;
            };
            q.fetch_add(1, Ordering::SeqCst);
            if garbage {
                let _ = sock.send_to(b"\xde\xad\xbe\xef not a DNS message", from);
                continue;
            }
            let Ok(req) = Message::from_vec(&buf[..n]) else {
                continue;
            };
            let mut resp = Message::new();
            resp.set_id(req.id())
                .set_message_type(MessageType::Response)
                .set_op_code(req.op_code())
                .set_recursion_desired(req.recursion_desired())
                .set_recursion_available(true)
                .set_authoritative(true);
            let srv_name = Name::from_ascii("_sremp-rendezvous._tcp.sremp.test.").unwrap();
            let target = Name::from_ascii(format!("{RV_NAME}.")).unwrap();
            let mut code = ResponseCode::NXDomain;
            for query in req.queries() {
                resp.add_query(query.clone());
                let name = query.name();
                if name == &srv_name {
                    code = ResponseCode::NoError;
                    if query.query_type() == RecordType::SRV {
                        resp.add_answer(Record::from_rdata(
                            srv_name.clone(),
                            30,
                            RData::SRV(SRV::new(0, 10, rv_port, target.clone())),
                        ));
                    }
                } else if name == &target {
                    code = ResponseCode::NoError;
                    if query.query_type() == RecordType::A {
                        resp.add_answer(Record::from_rdata(
                            target.clone(),
                            30,
                            RData::A(A(Ipv4Addr::LOCALHOST)),
                        ));
                    }
                }
            }
            resp.set_response_code(code);
            if let Ok(bytes) = resp.to_vec() {
                let _ = sock.send_to(&bytes, from);
            }
        }
    });
    Dns {
        port,
        queries,
        stop,
        thread: Some(thread),
    }
}

/// Starts `sremp rendezvous` on 127.0.0.1:0 with a certificate for `rv.sremp.test`; returns
/// the process, its port and the CA file.
fn rendezvous(dir: &Path) -> (Proc, u16, std::path::PathBuf) {
    let certs = dir.join("certs");
    let o = common::run_bin(&["certs", "--out", certs.to_str().unwrap(), "--name", RV_NAME]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let data = dir.join("rv-data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&data, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let cfg = dir.join("rv.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\nusername = \"rendezvous\"\n[log]\nlevel = \"info\"\n[rendezvous.server]\nlisten = \"127.0.0.1:0\"\nserver_name = \"{RV_NAME}\"\ncert_file = \"{}\"\nkey_file = \"{}\"\nmax_connections_per_ip = 256\nrequests_per_sec = 1000\nrequest_burst = 1000\n",
            data.display(),
            certs.join(format!("{RV_NAME}.pem")).display(),
            certs.join(format!("{RV_NAME}-key.pem")).display(),
        ),
    )
    .unwrap();
    let p = Proc::spawn(&["--config", cfg.to_str().unwrap(), "rendezvous"]);
    let addr_file = data.join("rendezvous.addr");
    let deadline = Instant::now() + Duration::from_secs(30);
    let port = loop {
        if let Some(port) = std::fs::read_to_string(&addr_file)
            .ok()
            .and_then(|t| t.trim().rsplit(':').next().and_then(|p| p.parse().ok()))
        {
            break port;
        }
        assert!(
            Instant::now() < deadline,
            "rendezvous did not start:\n{}",
            p.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    (p, port, certs.join("ca.pem"))
}

/// A node whose only way to rendezvous is DNS bootstrap through `dns_port`.
fn node(dir: &Path, name: &str, dns_port: u16, ca: &Path) -> BinNode {
    let n = BinNode::new(dir, &BinNodeOptions::loopback(name));
    let mut text = std::fs::read_to_string(&n.config).unwrap();
    text.push_str(&format!(
        "[rendezvous]\nservers = []\ndns_bootstrap = [\"sremp.test\"]\ndns_nameserver = \"127.0.0.1:{dns_port}\"\nca_file = \"{}\"\nttl_secs = 120\nlearn_servers = false\ntimeout_ms = 5000\n",
        ca.display()
    ));
    std::fs::write(&n.config, text).unwrap();
    n
}

fn wait_log(n: &BinNode, needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if n.logs().contains(needle) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

#[test]
fn nodes_find_the_rendezvous_server_only_through_dns_srv() {
    let dir = tempfile::tempdir().unwrap();
    let (rv, rv_port, ca) = rendezvous(dir.path());
    let dns = dns(rv_port, false);
    let mut a = node(dir.path(), "alice", dns.port, &ca);
    let mut b = node(dir.path(), "bob", dns.port, &ca);
    a.start();
    b.start();
    for n in [&a, &b] {
        assert!(
            wait_log(n, "registered with rendezvous server"),
            "no registration via DNS bootstrap\n{}\n--- rendezvous:\n{}",
            n.logs(),
            rv.log()
        );
        assert!(n.logs().contains(RV_NAME), "{}", n.logs());
    }
    assert!(dns.queries.load(Ordering::SeqCst) >= 2);
    let (bob_id, _) = b.card();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = a.json(&["discover"]);
        let ids: Vec<String> = v["peers"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|p| p["id"].as_str().map(String::from))
            .collect();
        if ids.contains(&bob_id) {
            let answered = v["answered"].to_string();
            assert!(answered.contains(RV_NAME), "{v}");
            break;
        }
        assert!(Instant::now() < deadline, "discover never found bob: {v}");
        std::thread::sleep(Duration::from_millis(200));
    }
    a.stop();
    b.stop();
}

#[test]
fn garbage_dns_answers_are_logged_and_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let dns = dns(1, true);
    let ca = dir.path().join("no-ca.pem");
    let mut a = node(dir.path(), "carol", dns.port, &ca);
    // No CA file is needed for the failure path; use the system roots.
    let text = std::fs::read_to_string(&a.config)
        .unwrap()
        .replace(&format!("ca_file = \"{}\"\n", ca.display()), "");
    std::fs::write(&a.config, text).unwrap();
    a.start();
    assert!(
        wait_log(&a, "DNS bootstrap failed"),
        "garbage DNS not logged\n{}",
        a.logs()
    );
    assert!(dns.queries.load(Ordering::SeqCst) >= 1);
    // The node keeps running and answering.
    let v = a.json(&["status"]);
    assert!(v.is_object(), "{v}");
    assert!(a.pid().is_some());
    // discover reports that no server was found instead of crashing or hanging.
    let o = a.cmd(&["discover", "--json"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("DNS bootstrap"), "{err}");
    a.stop();
}
