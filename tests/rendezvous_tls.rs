//! Rendezvous over real TLS 1.3 on loopback: registration security, expiry, paging, gossip and
//! limits. Servers run in-process on 127.0.0.1:0 with a CA made in the test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod rendezvous_support;

use rendezvous_support::*;
use sremp::rendezvous::core::sign_register;
use sremp::rendezvous::{Client, Clock, RendezvousError};
use sremp::time::Timestamp;
use sremp::wire::rendezvous::*;
use sremp::wire::Envelope;
use std::net::IpAddr;
use std::time::Duration;

fn code(r: Result<impl std::fmt::Debug, RendezvousError>) -> RendezvousErrorCode {
    match r {
        Err(e) => e.code().unwrap_or_else(|| panic!("not a refusal: {e}")),
        Ok(v) => panic!("expected a refusal, got {v:?}"),
    }
}

fn ip(last: u8) -> Option<IpAddr> {
    Some(IpAddr::from([127, 0, 0, last]))
}

#[tokio::test]
async fn register_lookup_withdraw() {
    let net = Net::new(&["rv1.test"]);
    let h = net.start(net.config("rv1.test"), Clock::System).await;
    let server = entry(&h, "rv1.test");
    let alice = user(1);
    let relay = RelayHint {
        endpoint: ep(9999),
        relay_key: [7; 32],
    };
    let mut a = Client::connect(&server, net.tls.clone(), TIMEOUT)
        .await
        .unwrap();
    let reg = a
        .register(&alice, &ep(7001), 600, std::slice::from_ref(&relay))
        .await
        .unwrap();
    assert_eq!(reg.renewal_interval, Duration::from_secs(300));

    let mut b = Client::connect(&server, net.tls.clone(), TIMEOUT)
        .await
        .unwrap();
    let found = b.lookup(&alice.key()).await.unwrap().unwrap();
    assert!(found.online);
    assert_eq!(found.endpoint, ep(7001));
    assert_eq!(found.relays, vec![relay]);
    assert_eq!(found.identity, *alice.identity());
    assert!(b.lookup(&user(2).key()).await.unwrap().is_none());

    a.withdraw(&alice, &ep(7001)).await.unwrap();
    let gone = b.lookup(&alice.key()).await.unwrap().unwrap();
    assert!(!gone.online, "withdrawn registration still online");
    assert!(b.list_all(100).await.unwrap().is_empty());
    a.close().await;
    b.close().await;
    h.shutdown().await;
}

#[tokio::test]
async fn forged_replayed_expired_and_cross_server_registrations_are_refused() {
    let net = Net::new(&["rv1.test", "rv2.test"]);
    let h1 = net.start(net.config("rv1.test"), Clock::System).await;
    let h2 = net.start(net.config("rv2.test"), Clock::System).await;
    let (s1, s2) = (entry(&h1, "rv1.test"), entry(&h2, "rv2.test"));
    let alice = user(1);
    let mallory = user(2);

    // Forged: Mallory signs a registration naming Alice's identity.
    let mut c = Client::connect(&s1, net.tls.clone(), TIMEOUT)
        .await
        .unwrap();
    let ts = c.next_timestamp();
    let mut forged =
        sign_register(&mallory, &c.exporter(), "rv1.test", &ep(6666), 600, ts, &[]).unwrap();
    forged.identity = RawIdentity::from_identity(alice.identity());
    let forged_err = c.call(&forged.into()).await.unwrap_err();
    assert_eq!(forged_err.code(), Some(RendezvousErrorCode::Refused));
    // A tampered identity ("unknown identity") gets exactly the same answer.
    let ts = c.next_timestamp();
    let mut bad_id =
        sign_register(&alice, &c.exporter(), "rv1.test", &ep(6666), 600, ts, &[]).unwrap();
    bad_id.identity.signature[0] ^= 1;
    let bad_id_err = c.call(&bad_id.into()).await.unwrap_err();
    assert_eq!(forged_err.to_string(), bad_id_err.to_string());
    assert!(c.lookup(&alice.key()).await.unwrap().is_none());

    // Replay within the same TLS session.
    let ts = c.next_timestamp();
    let good = sign_register(&alice, &c.exporter(), "rv1.test", &ep(7001), 600, ts, &[]).unwrap();
    assert!(matches!(
        c.call(&good.clone().into()).await.unwrap(),
        Envelope::RegisterResponse(_)
    ));
    assert_eq!(
        code(c.call(&good.clone().into()).await),
        RendezvousErrorCode::Replayed
    );

    // Replay on another TLS session with the same server.
    let mut other = Client::connect(&s1, net.tls.clone(), TIMEOUT)
        .await
        .unwrap();
    assert_ne!(other.exporter(), c.exporter());
    assert_eq!(
        code(other.call(&good.clone().into()).await),
        RendezvousErrorCode::Refused
    );

    // Replay at another server, as captured and with the server name rewritten.
    let mut at2 = Client::connect(&s2, net.tls.clone(), TIMEOUT)
        .await
        .unwrap();
    assert_eq!(
        code(at2.call(&good.clone().into()).await),
        RendezvousErrorCode::WrongServer
    );
    let mut renamed = good.clone();
    renamed.server_name = "rv2.test".into();
    assert_eq!(
        code(at2.call(&renamed.into()).await),
        RendezvousErrorCode::Refused
    );
    assert!(at2.lookup(&alice.key()).await.unwrap().is_none());

    // Expired: correctly signed for this session, but with an old timestamp.
    let old = Timestamp(Timestamp::now().0 - 10 * 60 * 1000);
    let stale = sign_register(
        &alice,
        &other.exporter(),
        "rv1.test",
        &ep(7002),
        600,
        old,
        &[],
    )
    .unwrap();
    assert_eq!(
        code(other.call(&stale.into()).await),
        RendezvousErrorCode::Expired
    );
    let lookup = other.lookup(&alice.key()).await.unwrap().unwrap();
    assert_eq!(lookup.endpoint, ep(7001));
    assert!(lookup.alt_endpoints.is_empty());

    h1.shutdown().await;
    h2.shutdown().await;
}

#[tokio::test]
async fn untrusted_server_certificate_fails_clearly() {
    let net = Net::new(&["rv1.test"]);
    let stranger = Net::new(&["rv1.test"]); // another CA issuing the same name
    let h = net.start(net.config("rv1.test"), Clock::System).await;
    let err = Client::connect(&entry(&h, "rv1.test"), stranger.tls.clone(), TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RendezvousError::UntrustedCertificate { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("untrusted certificate"), "{err}");
    // The right CA but the wrong name is refused too.
    let wrong_name = ServerEntry {
        endpoint: entry(&h, "x").endpoint,
        name: "rv9.test".into(),
    };
    let err = Client::connect(&wrong_name, net.tls.clone(), TIMEOUT)
        .await
        .unwrap_err();
    assert!(
        matches!(err, RendezvousError::UntrustedCertificate { .. }),
        "{err:?}"
    );
    // The server keeps serving trusting clients.
    let mut ok = Client::connect(&entry(&h, "rv1.test"), net.tls.clone(), TIMEOUT)
        .await
        .unwrap();
    assert!(ok.lookup(&user(1).key()).await.unwrap().is_none());
    h.shutdown().await;
}

#[tokio::test]
async fn registrations_disappear_after_their_ttl() {
    let net = Net::new(&["rv1.test"]);
    let clock = Clock::manual(Timestamp::now());
    let mut cfg = net.config("rv1.test");
    cfg.offline_retention_secs = 600;
    let h = net.start(cfg, clock.clone()).await;
    let server = entry(&h, "rv1.test");
    let mut c = Client::connect(&server, net.tls.clone(), TIMEOUT)
        .await
        .unwrap();
    let alice = user(1);
    let reg = c.register(&alice, &ep(7001), 90, &[]).await.unwrap();
    assert_eq!(reg.expires_at, clock.now().plus(Duration::from_secs(90)));
    assert!(c.lookup(&alice.key()).await.unwrap().unwrap().online);

    clock.advance(Duration::from_secs(89));
    assert!(c.lookup(&alice.key()).await.unwrap().unwrap().online);
    assert_eq!(c.list_all(10).await.unwrap().len(), 1);

    clock.advance(Duration::from_secs(2));
    let offline = c.lookup(&alice.key()).await.unwrap().unwrap();
    assert!(!offline.online);
    assert_eq!(offline.last_seen, reg.expires_at);
    assert!(c.list_all(10).await.unwrap().is_empty());

    clock.advance(Duration::from_secs(601));
    assert!(c.lookup(&alice.key()).await.unwrap().is_none());
    h.shutdown().await;
}

#[tokio::test]
async fn list_all_pages_through_every_peer() {
    let net = Net::new(&["rv1.test"]);
    let h = net.start(net.config("rv1.test"), Clock::System).await;
    let server = entry(&h, "rv1.test");
    let mut c = Client::connect(&server, net.tls.clone(), TIMEOUT)
        .await
        .unwrap();
    let mut keys = Vec::new();
    for i in 0..30u8 {
        let u = user(100 + i);
        c.register(&u, &ep(8000 + u16::from(i)), 600, &[])
            .await
            .unwrap();
        keys.push(u.key());
    }
    keys.sort();
    let mut seen = Vec::new();
    let mut cursor = None;
    let mut pages = 0;
    for _ in 0..20 {
        let page = c.list_page(cursor, 7).await.unwrap();
        assert!(page.peers.len() <= 7);
        assert!(page.peers.iter().all(|p| p.online));
        seen.extend(page.peers.iter().map(|p| p.identity.key()));
        pages += 1;
        match page.next {
            Some(n) => cursor = Some(n),
            None => break,
        }
    }
    assert_eq!(pages, 5);
    assert_eq!(seen, keys);
    assert_eq!(c.list_all(1000).await.unwrap().len(), 30);
    assert_eq!(c.list_all(12).await.unwrap().len(), 12);
    h.shutdown().await;
}

#[tokio::test]
async fn three_servers_that_know_one_neighbour_converge() {
    let names = ["rv1.test", "rv2.test", "rv3.test"];
    let net = Net::new(&names);
    // Bind all three first (ports are needed for the peer lists), then start them.
    let mut addrs = Vec::new();
    let mut bound = Vec::new();
    for n in names {
        let mut cfg = net.config(n);
        cfg.gossip_interval_secs = 1;
        let opts = sremp::rendezvous::server::ServerOptions {
            config: cfg,
            ca_file: Some(net.ca()),
            data_dir: None,
            clock: Clock::System,
        };
        let s = sremp::rendezvous::Server::bind(opts).await.unwrap();
        addrs.push(s.local_addr());
        bound.push(s);
    }
    drop(bound);
    // Rebind with peers now that the ports are known: a → b → c → a.
    let mut handles = Vec::new();
    for (i, n) in names.iter().enumerate() {
        let mut cfg = net.config(n);
        cfg.listen = addrs[i];
        cfg.gossip_interval_secs = 1;
        let next = (i + 1) % 3;
        cfg.peers = vec![format!("{}@{}", names[next], addrs[next])];
        handles.push(net.start(cfg, Clock::System).await);
    }
    let mut converged = false;
    for _ in 0..100 {
        if handles.iter().all(|h| h.known_servers().len() == 2) {
            converged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        converged,
        "{:?}",
        handles
            .iter()
            .map(|h| h.known_servers())
            .collect::<Vec<_>>()
    );
    // A client learns all three from any one of them.
    let mut c = Client::connect(&entry(&handles[0], names[0]), net.tls.clone(), TIMEOUT)
        .await
        .unwrap();
    let mut listed = c.list_servers().await.unwrap();
    listed.sort();
    let mut expected: Vec<ServerEntry> = handles
        .iter()
        .zip(names)
        .map(|(h, n)| entry(h, n))
        .collect();
    expected.sort();
    assert_eq!(listed, expected);
    for h in handles {
        h.shutdown().await;
    }
}

#[tokio::test]
async fn every_limit_is_answered_with_its_error_while_others_are_served() {
    let net = Net::new(&["rv1.test"]);
    let mut cfg = net.config("rv1.test");
    cfg.max_registrations = 3;
    cfg.max_registrations_per_identity = 1;
    cfg.requests_per_sec = 0; // with no refill, each address has exactly `request_burst` requests
    cfg.request_burst = 8;
    cfg.max_request_bytes = 2048;
    cfg.max_connections_per_ip = 2;
    let h = net.start(cfg, Clock::System).await;
    let server = entry(&h, "rv1.test");
    let connect = |last: u8| Client::connect_from(&server, net.tls.clone(), TIMEOUT, ip(last));
    // A bystander from its own address, checked after every refusal.
    let mut bystander = connect(2).await.unwrap();
    let bystander_key = user(50).key();

    // Registrations per identity.
    let mut a = connect(10).await.unwrap();
    let alice = user(1);
    a.register(&alice, &ep(7001), 600, &[]).await.unwrap();
    assert_eq!(
        code(a.register(&alice, &ep(7002), 600, &[]).await),
        RendezvousErrorCode::TooManyForIdentity
    );
    assert!(bystander.lookup(&bystander_key).await.unwrap().is_none());

    // Registrations in total.
    let mut b = connect(11).await.unwrap();
    b.register(&user(2), &ep(7003), 600, &[]).await.unwrap();
    b.register(&user(3), &ep(7004), 600, &[]).await.unwrap();
    assert_eq!(
        code(b.register(&user(4), &ep(7005), 600, &[]).await),
        RendezvousErrorCode::RegistryFull
    );
    assert!(bystander.lookup(&bystander_key).await.unwrap().is_none());

    // Request rate per client address.
    let mut r = connect(12).await.unwrap();
    for _ in 0..8 {
        r.lookup(&alice.key()).await.unwrap();
    }
    assert_eq!(
        code(r.lookup(&alice.key()).await),
        RendezvousErrorCode::RateLimited
    );
    // A new connection from the same address is limited too.
    let mut r2 = connect(12).await.unwrap();
    assert_eq!(
        code(r2.list_servers().await),
        RendezvousErrorCode::RateLimited
    );
    assert!(
        bystander
            .lookup(&alice.key())
            .await
            .unwrap()
            .unwrap()
            .online
    );

    // Request size: the server answers and closes that connection.
    let mut big = connect(13).await.unwrap();
    assert_eq!(
        code(big.call_raw(&vec![0x90; 4000]).await),
        RendezvousErrorCode::RequestTooLarge
    );
    assert!(big.lookup(&alice.key()).await.is_err());
    assert!(bystander.lookup(&bystander_key).await.unwrap().is_none());

    // Connections per client address.
    let _c1 = connect(14).await.unwrap();
    let _c2 = connect(14).await.unwrap();
    let mut c3 = connect(14).await.unwrap();
    assert_eq!(
        code(c3.lookup(&alice.key()).await),
        RendezvousErrorCode::TooManyConnections
    );
    assert!(bystander.lookup(&bystander_key).await.unwrap().is_none());

    // Garbage and client-only kinds.
    let mut g = connect(15).await.unwrap();
    assert_eq!(
        code(g.call_raw(&[0xc1]).await),
        RendezvousErrorCode::Malformed
    );
    let reply = RegisterResponse {
        success: true,
        expires_at: Timestamp(0),
        renewal_interval: 0,
        error_message: None,
    };
    assert_eq!(
        code(g.call(&reply.into()).await),
        RendezvousErrorCode::UnexpectedMessage
    );
    assert!(bystander.lookup(&alice.key()).await.unwrap().is_some());
    h.shutdown().await;
}

/// Issue 9 item 10: an `ErrorMsg` never echoes received bytes — neither the server name of a
/// `WrongServer` registration nor a string found where the decoder wanted another type — and
/// a refused request keeps the connection.
#[tokio::test]
async fn error_messages_never_echo_the_request_and_keep_the_connection() {
    let marker = "ECHO-MARKER-7f3a";
    let net = Net::new(&["rv1.test"]);
    let h = net.start(net.config("rv1.test"), Clock::System).await;
    let server = entry(&h, "rv1.test");
    let alice = user(1);
    let mut c = Client::connect(&server, net.tls.clone(), TIMEOUT)
        .await
        .unwrap();
    let ts = c.next_timestamp();
    let wrong = sign_register(&alice, &c.exporter(), marker, &ep(7001), 600, ts, &[]).unwrap();
    match c.call(&wrong.into()).await {
        Err(RendezvousError::Refused { code, message }) => {
            assert_eq!(code, RendezvousErrorCode::WrongServer as u16);
            assert!(!message.contains(marker), "echoed: {message:?}");
            assert!(message.contains("rv1.test"), "{message:?}");
        }
        other => panic!("expected WrongServer, got {other:?}"),
    }
    // A REGISTER_REQUEST whose body is a string where an identity array belongs.
    let raw = rmp_serde::to_vec(&(0x10u16, (marker,))).unwrap();
    match c.call_raw(&raw).await {
        Err(RendezvousError::Refused { code, message }) => {
            assert_eq!(code, RendezvousErrorCode::Malformed as u16);
            assert!(!message.contains(marker), "echoed: {message:?}");
        }
        other => panic!("expected Malformed, got {other:?}"),
    }
    // The connection stayed: the same session registers and looks up.
    c.register(&alice, &ep(7001), 600, &[]).await.unwrap();
    assert!(c.lookup(&alice.key()).await.unwrap().unwrap().online);
    // Signed requests in the same millisecond: the client's timestamps still increase.
    // (renewals of the same endpoint, back to back)
    for _ in 0..5 {
        c.register(&alice, &ep(7001), 600, &[]).await.unwrap();
    }
    h.shutdown().await;
}

/// docs/PROTOCOL.md "Transport": a client that offers no ALPN is accepted and served; one that
/// offers only another protocol fails the TLS handshake.
#[tokio::test]
async fn clients_without_alpn_are_served_and_other_alpn_is_refused() {
    let net = Net::new(&["rv1.test"]);
    let h = net.start(net.config("rv1.test"), Clock::System).await;
    let server = entry(&h, "rv1.test");
    let mut none = (*net.tls).clone();
    none.alpn_protocols.clear();
    let mut c = Client::connect(&server, std::sync::Arc::new(none), TIMEOUT)
        .await
        .unwrap();
    assert!(c.lookup(&user(1).key()).await.unwrap().is_none());
    let mut other = (*net.tls).clone();
    other.alpn_protocols = vec![b"http/1.1".to_vec()];
    assert!(
        Client::connect(&server, std::sync::Arc::new(other), TIMEOUT)
            .await
            .is_err(),
        "a client offering only another ALPN protocol was accepted"
    );
    h.shutdown().await;
}
