//! The real binary: `sremp init`, `sremp id`, and `sremp run` serving Noise connections.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{bin, Proc};
use std::process::Command;
use std::time::Duration;

fn sremp(args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

#[test]
fn init_refuses_to_overwrite_and_keys_are_private() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("alice");
    let d = d.to_str().unwrap();
    let first = sremp(&["init", "--data-dir", d, "--username", "alice"]);
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let key_file = std::path::Path::new(d).join("identity.key");
    let before = std::fs::read(&key_file).unwrap();
    let second = sremp(&["init", "--data-dir", d, "--username", "mallory"]);
    assert!(!second.status.success());
    assert!(String::from_utf8_lossy(&second.stderr).contains("already exists"));
    assert_eq!(
        std::fs::read(&key_file).unwrap(),
        before,
        "key file was modified"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&key_file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }
}

#[test]
fn bad_usernames_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let long = "x".repeat(41);
    for bad in ["", long.as_str()] {
        let out = sremp(&["init", "--data-dir", d, "--username", bad]);
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("username"));
    }
}

#[test]
fn id_prints_contact_id_and_a_card_that_parses() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    assert!(sremp(&["init", "--data-dir", d, "--username", "bob"])
        .status
        .success());
    let out = sremp(&["id", "--data-dir", d, "--json"]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = v["id"].as_str().unwrap();
    assert_eq!(id.len(), 64);
    let card = sremp::identity::ContactCard::from_text(v["card"].as_str().unwrap()).unwrap();
    assert_eq!(card.identity.key().to_string(), id);
    assert_eq!(card.identity.username().as_str(), "bob");
    // Human output has the QR code.
    let human = sremp(&["id", "--data-dir", d]);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains(id) && text.contains("sremp1:") && text.contains('█'));
    // No identity: a clear error, non-zero exit.
    let empty = tempfile::tempdir().unwrap();
    let out = sremp(&["id", "--data-dir", empty.path().to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sremp init"));
}

#[test]
fn run_creates_identity_serves_noise_and_logs_bad_peers() {
    let dir = tempfile::tempdir().unwrap();
    let cfg_path = dir.path().join("node.toml");
    std::fs::write(&cfg_path, common::node_config(dir.path(), 1000)).unwrap();
    let node = Proc::spawn(&["run", "--config", cfg_path.to_str().unwrap()]);
    let addr = node
        .wait_for_field("node listening", "listen", Duration::from_secs(20))
        .unwrap_or_else(|| panic!("node did not start:\n{}", node.log()));
    assert!(
        dir.path().join("data/identity.key").exists(),
        "identity created on first start"
    );

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(&addr).await.unwrap();
        s.write_all(b"HELLO!!").await.unwrap();
        let mut buf = [0u8; 16];
        let r = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(r.is_ok(), "garbage peer not closed");

        let me = sremp::identity::UserIdentity::generate(
            "client",
            Default::default(),
            sremp::time::Timestamp(1),
            &mut rand::rngs::OsRng,
        )
        .unwrap();
        let conn = sremp::noise::stream::TcpConnection::connect(
            &addr,
            &me,
            None,
            sremp::noise::HandshakeLimits::default(),
        )
        .await
        .expect("node still serves good peers");
        assert_eq!(conn.peer.username().as_str(), "tester");
    });
    let line = node.wait_for_line("not a SREMP peer", Duration::from_secs(5));
    assert!(
        line.is_some(),
        "no clear log line for the garbage peer:\n{}",
        node.log()
    );
}
