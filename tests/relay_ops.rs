//! Issue 17, operator features with the real binary: `sremp relay --check-config` and the
//! Prometheus endpoint (`[metrics] listen`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{free_port, run_bin, Proc};
use sremp::identity::{Flags, IdentityKey, UserIdentity};
use sremp::noise::stream::HandshakeLimits;
use sremp::relay::RelayClient;
use sremp::time::Timestamp;
use std::io::{Read, Write};
use std::path::Path;
use std::time::{Duration, Instant};

fn write_config(dir: &Path, extra: &str) -> String {
    let p = dir.join("relay.toml");
    std::fs::write(
        &p,
        format!(
            "data_dir = \"{}\"\nusername = \"relay\"\n[listen]\naddress = \"127.0.0.1:0\"\n{extra}",
            dir.join("data").display()
        ),
    )
    .unwrap();
    p.to_str().unwrap().to_string()
}

fn check(config: &str) -> (i32, serde_json::Value) {
    let out = run_bin(&["relay", "--check-config", "--json", "--config", config]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

/// A config refused before the check runs (out-of-range values): exit code and stderr.
fn check_refused(config: &str) -> (i32, String) {
    let out = run_bin(&["relay", "--check-config", "--json", "--config", config]);
    assert!(out.stdout.is_empty());
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

#[test]
fn check_config_validates_without_starting_and_sets_the_exit_code() {
    let dir = tempfile::tempdir().unwrap();
    // A good sled config: exit 0, nothing created.
    let good = write_config(dir.path(), "[metrics]\nlisten = \"127.0.0.1:9464\"\n");
    let (code, v) = check(&good);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["ok"], true);
    assert_eq!(v["store"], "sled");
    assert_eq!(v["identity"], serde_json::Value::Null);
    assert_eq!(v["metrics"], "127.0.0.1:9464");
    assert_eq!(v["nats_reachable"], serde_json::Value::Null);
    assert!(
        !dir.path().join("data").exists(),
        "--check-config must not create the data dir or an identity"
    );
    // The text form says the same.
    let out = run_bin(&["relay", "--check-config", "--config", &good]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("config:") && text.contains("ok"), "{text}");

    // store = "nats" without servers: invalid, exit 1, the problem named.
    let d2 = tempfile::tempdir().unwrap();
    let (code, err) = check_refused(&write_config(d2.path(), "[relay]\nstore = \"nats\"\n"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("relay.nats_urls"), "{err}");

    // store = "nats" with a server that is not there: unreachable, exit 1.
    let d3 = tempfile::tempdir().unwrap();
    let port = free_port();
    let (code, v) = check(&write_config(
        d3.path(),
        &format!("[relay]\nstore = \"nats\"\nnats_urls = [\"nats://127.0.0.1:{port}\"]\n"),
    ));
    assert_eq!(code, 1, "{v}");
    assert_eq!(v["nats_reachable"], false);
    assert!(!v["problems"].as_array().unwrap().is_empty());

    // Out-of-range values are problems too.
    let d4 = tempfile::tempdir().unwrap();
    let (code, err) = check_refused(&write_config(d4.path(), "[relay]\nreplicas = 9\n"));
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("relay.replicas"), "{err}");
}

fn http_get(addr: &str, path: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_serves_counters_and_latency_histograms() {
    let dir = tempfile::tempdir().unwrap();
    let mport = free_port();
    let config = write_config(
        dir.path(),
        &format!("[metrics]\nlisten = \"127.0.0.1:{mport}\"\n"),
    );
    let relay = Proc::spawn(&["relay", "--config", &config]);
    let file = dir.path().join("data").join("relay.addr");
    let deadline = Instant::now() + Duration::from_secs(30);
    let line = loop {
        if let Ok(s) = std::fs::read_to_string(&file) {
            if s.ends_with('\n') {
                break s;
            }
        }
        assert!(
            Instant::now() < deadline,
            "relay did not start:\n{}",
            relay.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut parts = line.split_whitespace();
    let addr = parts.next().unwrap().to_string();
    let id: IdentityKey = parts.next().unwrap().parse().unwrap();
    assert!(
        relay
            .wait_for_line("metrics endpoint listening", Duration::from_secs(10))
            .is_some(),
        "{}",
        relay.log()
    );
    let (a, b) = (
        UserIdentity::generate(
            "a",
            Flags::default(),
            Timestamp::now(),
            &mut rand::rngs::OsRng,
        )
        .unwrap(),
        UserIdentity::generate(
            "b",
            Flags::default(),
            Timestamp::now(),
            &mut rand::rngs::OsRng,
        )
        .unwrap(),
    );
    let (c, _ev) = RelayClient::connect(&addr, &a, Some(id), HandshakeLimits::default())
        .await
        .unwrap();
    c.store(b.key(), b"hello".to_vec(), 1).await.unwrap();
    c.store(b.key(), b"hello".to_vec(), 1).await.unwrap();

    let maddr = format!("127.0.0.1:{mport}");
    let text = tokio::task::spawn_blocking(move || http_get(&maddr, "/metrics"))
        .await
        .unwrap();
    assert!(text.starts_with("HTTP/1.1 200 OK"), "{text}");
    assert!(text.contains("application/openmetrics-text"), "{text}");
    assert!(text.contains("sremp_relay_stored_total 1"), "{text}");
    assert!(text.contains("sremp_relay_duplicates_total 1"), "{text}");
    assert!(text.contains("sremp_relay_connections_open 1"), "{text}");
    assert!(text.contains("sremp_relay_store_seconds_count 2"), "{text}");
    assert!(
        text.contains("sremp_relay_store_seconds_bucket{le="),
        "{text}"
    );
    assert!(
        text.contains("sremp_relay_backend{backend=\"sled\"} 1"),
        "{text}"
    );
    assert!(text.trim_end().ends_with("# EOF"), "{text}");
    let maddr = format!("127.0.0.1:{mport}");
    let other = tokio::task::spawn_blocking(move || http_get(&maddr, "/"))
        .await
        .unwrap();
    assert!(other.starts_with("HTTP/1.1 404"), "{other}");
}
