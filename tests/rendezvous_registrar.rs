//! The node's background registrar against real servers: registers, renews before expiry,
//! learns and remembers servers, withdraws on shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod rendezvous_support;

use rendezvous_support::*;
use sremp::rendezvous::client::{
    load_remembered, lookup_anywhere, spawn_registrar, RegistrarSettings,
};
use sremp::rendezvous::{Client, Clock};
use sremp::wire::rendezvous::RelayHint;
use std::sync::Arc;
use std::time::Duration;

#[tokio::test]
async fn registrar_registers_renews_learns_and_withdraws() {
    let net = Net::new(&["rv1.test", "rv2.test"]);
    let h2 = net.start(net.config("rv2.test"), Clock::System).await;
    let s2 = entry(&h2, "rv2.test");
    let mut cfg1 = net.config("rv1.test");
    cfg1.min_ttl_secs = 2;
    cfg1.peers = vec![s2.to_string()];
    let h1 = net.start(cfg1, Clock::System).await;
    let s1 = entry(&h1, "rv1.test");

    let data = tempfile::tempdir().unwrap();
    let settings = RegistrarSettings {
        servers: Vec::new(),
        tls: net.tls.clone(),
        ttl_secs: 2,
        max_register_servers: 1,
        register: true,
        learn_servers: true,
        data_dir: Some(data.path().to_path_buf()),
        timeout: TIMEOUT,
        dns: None,
    }
    .with_servers([s1.clone()]); // manual bootstrap
    let alice = Arc::new(user(1));
    let relay = RelayHint {
        endpoint: ep(9999),
        relay_key: [3; 32],
    };
    let (stop, rx) = tokio::sync::watch::channel(false);
    let mut handle = spawn_registrar(
        settings.clone(),
        alice.clone(),
        vec![ep(7001), ep(7002)],
        vec![relay.clone()],
        rx,
    );

    // Registered with rv1.
    let mut registered = false;
    for _ in 0..100 {
        if !handle.status.borrow().registered.is_empty() {
            registered = true;
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(100), handle.status.changed()).await;
    }
    assert!(registered, "{:?}", *handle.status.borrow());
    let mut c = Client::connect(&s1, net.tls.clone(), TIMEOUT)
        .await
        .unwrap();
    let info = c.lookup(&alice.key()).await.unwrap().unwrap();
    assert!(info.online);
    assert_eq!(info.relays, vec![relay]);
    assert_eq!(info.alt_endpoints.len(), 1);

    // rv1 told it about rv2 (rv1 polls rv2 at start); the registrar remembers it.
    let mut learned = false;
    for _ in 0..100 {
        if load_remembered(data.path()).contains(&s2) {
            learned = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(learned, "remembered: {:?}", load_remembered(data.path()));
    assert!(settings.candidates().contains(&s2));

    // The TTL is 2 s: after 4.5 s it is still online only because it was renewed.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert!(
        c.lookup(&alice.key()).await.unwrap().unwrap().online,
        "not renewed"
    );
    assert!(
        lookup_anywhere(&settings, &alice.key())
            .await
            .unwrap()
            .unwrap()
            .online
    );

    // Clean shutdown withdraws.
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(15), handle.join)
        .await
        .unwrap()
        .unwrap();
    assert!(handle.status.borrow().stopped);
    let after = c.lookup(&alice.key()).await.unwrap().unwrap();
    assert!(!after.online, "still online after withdrawal");
    c.close().await;
    h1.shutdown().await;
    h2.shutdown().await;
}

#[tokio::test]
async fn registrar_with_nothing_to_do_ends() {
    let net = Net::new(&["rv1.test"]);
    let settings = RegistrarSettings {
        servers: Vec::new(),
        tls: net.tls.clone(),
        ttl_secs: 60,
        max_register_servers: 3,
        register: false,
        learn_servers: false,
        data_dir: None,
        timeout: TIMEOUT,
        dns: None,
    };
    let (_stop, rx) = tokio::sync::watch::channel(false);
    let h = spawn_registrar(settings, Arc::new(user(1)), vec![ep(1)], Vec::new(), rx);
    tokio::time::timeout(Duration::from_secs(5), h.join)
        .await
        .unwrap()
        .unwrap();
}
