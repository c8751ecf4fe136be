//! Relay protocol integration tests: in-process relays on 127.0.0.1:0 with temporary stores,
//! real Noise connections, and every refusal checked while the relay keeps serving others.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test helpers outside #[test] fns

use sremp::identity::{Flags, IdentityKey, UserIdentity};
use sremp::noise::listener::{self, ListenerConfig};
use sremp::noise::stream::{HandshakeLimits, TcpConnection};
use sremp::relay::{
    Relay, RelayClient, RelayClientError, RelayConfig, RelayEvent, RelayMode, RelayOptions,
};
use sremp::store::{Batch, Entries, SledStore, Store, StoreError, Tree};
use sremp::time::Timestamp;
use sremp::wire::relay::*;
use sremp::wire::Envelope;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

const T: Duration = Duration::from_secs(10);

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

struct TestRelay {
    relay: Relay,
    addr: String,
    id: Arc<UserIdentity>,
    stop: watch::Sender<bool>,
    _dir: Option<tempfile::TempDir>,
}

impl TestRelay {
    async fn start(policy: RelayConfig, mode: impl FnOnce(IdentityKey) -> RelayMode) -> TestRelay {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
        let mut t = Self::start_on(store, policy, mode).await;
        t._dir = Some(dir);
        t
    }

    async fn start_on(
        store: Arc<dyn Store>,
        policy: RelayConfig,
        mode: impl FnOnce(IdentityKey) -> RelayMode,
    ) -> TestRelay {
        let id = user("relay");
        let relay = Relay::start(
            store,
            RelayOptions {
                policy,
                mode: mode(id.key()),
                relay_key: id.key(),
                idle_timeout: Duration::from_secs(30),
                stats_path: None,
            },
        )
        .await
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (stop, rx) = watch::channel(false);
        let r = relay.clone();
        tokio::spawn(listener::serve(
            listener,
            id.clone(),
            ListenerConfig::default(),
            rx,
            move |c, _| {
                let r = r.clone();
                async move { r.serve_connection(c, None).await }
            },
        ));
        TestRelay {
            relay,
            addr,
            id,
            stop,
            _dir: None,
        }
    }

    async fn client(&self, u: &UserIdentity) -> (RelayClient, mpsc::Receiver<RelayEvent>) {
        tokio::time::timeout(
            T,
            RelayClient::connect(
                &self.addr,
                u,
                Some(self.id.key()),
                HandshakeLimits::default(),
            ),
        )
        .await
        .unwrap()
        .unwrap()
    }

    async fn stop(self) {
        let _ = self.stop.send(true);
        self.relay.shutdown(Duration::from_secs(5)).await.unwrap();
    }
}

async fn next_event(ev: &mut mpsc::Receiver<RelayEvent>) -> RelayEvent {
    tokio::time::timeout(T, ev.recv()).await.unwrap().unwrap()
}

/// A quick check that the relay still serves an unrelated client end to end.
async fn still_serving(r: &TestRelay) {
    let (a, b) = (user("x"), user("y"));
    let (ca, _) = r.client(&a).await;
    ca.store(b.key(), b"ping".to_vec(), 1).await.unwrap();
    let (cb, _) = r.client(&b).await;
    let got = cb.retrieve_all(4).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].encrypted_blob, b"ping");
}

#[tokio::test]
async fn store_retrieve_page_push_confirm_and_route() {
    let r = TestRelay::start(
        RelayConfig {
            batch_messages: 3,
            ..RelayConfig::default()
        },
        |_| RelayMode::Open,
    )
    .await;
    let (alice, bob) = (user("alice"), user("bob"));
    let (ca, mut ea) = r.client(&alice).await;
    for i in 0..7u64 {
        let t = ca
            .store(bob.key(), format!("m{i}").into_bytes(), i)
            .await
            .unwrap();
        assert!(t.0 > 0);
    }
    // A retry is a duplicate: same stored_at, nothing new.
    let t0 = ca.store(bob.key(), b"m0".to_vec(), 0).await.unwrap();
    let (cb, mut eb) = r.client(&bob).await;
    // Pages of 3: 3 + 3 + 1.
    let p1 = cb.retrieve(None, None, 0).await.unwrap();
    assert_eq!((p1.messages.len(), p1.has_more), (3, true));
    let all = cb.retrieve_all(10).await.unwrap();
    assert_eq!(all.len(), 7);
    assert_eq!(all[0].timestamp, t0);
    for m in &all {
        // The recipient can check the sender's signature too.
        sremp::relay::auth::verify_store_parts(
            &m.sender,
            &bob.key().0,
            m.message_id,
            &m.encrypted_blob,
            &m.sender_signature,
        )
        .unwrap();
    }
    // Push: bob is connected, a new message arrives at once.
    ca.store(bob.key(), b"live".to_vec(), 100).await.unwrap();
    match next_event(&mut eb).await {
        RelayEvent::Message(m) => assert_eq!(
            (m.message_id, m.encrypted_blob.as_slice()),
            (100, &b"live"[..])
        ),
        other => panic!("expected a push, got {other:?}"),
    }
    // Confirm: deleted, and alice (connected) is told at once.
    cb.confirm(alice.key(), 100).await.unwrap();
    match next_event(&mut ea).await {
        RelayEvent::Confirmation(c) => {
            assert_eq!((c.message_id, c.delivered_to), (100, bob.key().0));
            sremp::relay::auth::verify_confirmation(&c).unwrap();
        }
        other => panic!("expected a confirmation, got {other:?}"),
    }
    // Alice goes away without acknowledging it (as if the push died with her connection); bob
    // confirms the rest. Every confirmation is kept for her, the pushed one included.
    ca.close().await;
    drop(ca);
    drop(ea);
    tokio::time::sleep(Duration::from_millis(100)).await;
    for i in 0..7 {
        cb.confirm(alice.key(), i).await.unwrap();
    }
    // A confirmation for an unknown id deletes nothing and is not routed.
    cb.confirm(alice.key(), 9999).await.unwrap();
    let left = cb.retrieve_all(10).await.unwrap();
    assert!(left.is_empty(), "{left:?}");
    let (ca, mut ea) = r.client(&alice).await;
    let mut seen = Vec::new();
    for _ in 0..8 {
        match next_event(&mut ea).await {
            RelayEvent::Confirmation(c) => {
                ca.ack_confirmation(&c).await.unwrap();
                seen.push(c.message_id);
            }
            other => panic!("expected a kept confirmation, got {other:?}"),
        }
    }
    seen.sort();
    assert_eq!(seen, (0..7).chain([100]).collect::<Vec<_>>());
    // Acknowledged confirmations are not handed over again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    r.relay.records().flush().await.unwrap();
    let (_ca2, mut ea2) = r.client(&alice).await;
    assert!(tokio::time::timeout(Duration::from_millis(300), ea2.recv())
        .await
        .is_err());
    let s = r.relay.stats().snapshot();
    assert_eq!(s.stored, 8);
    assert_eq!(s.duplicates, 1);
    assert_eq!(s.delivered, 8);
    assert_eq!(s.confirmations_forwarded, 1);
    assert_eq!(s.confirmations_kept, 7);
    r.stop().await;
}

#[tokio::test]
async fn replayed_register_is_refused() {
    let r = TestRelay::start(RelayConfig::default(), |_| RelayMode::Open).await;
    let alice = user("alice");
    // Session 1: register by hand and keep the RELAY_REGISTER.
    let mut c1 = TcpConnection::connect(&r.addr, &alice, None, HandshakeLimits::default())
        .await
        .unwrap();
    c1.send(&Envelope::RelayHello(RelayHello { features: 0 }))
        .await
        .unwrap();
    let Envelope::RelayChallenge(ch) = c1.recv().await.unwrap() else {
        panic!("no challenge")
    };
    let binding = sremp::relay::auth::SessionBinding {
        handshake_hash: c1.handshake_hash,
        nonce: ch.nonce,
    };
    let reg = RelayRegister {
        identity: alice.key().0,
        auth_signature: sremp::relay::auth::sign_register(
            alice.signing_key(),
            &binding,
            &r.id.key().0,
        ),
        capabilities: ch.capabilities.clone(),
    };
    c1.send(&Envelope::RelayRegister(reg.clone()))
        .await
        .unwrap();
    assert!(matches!(
        c1.recv().await.unwrap(),
        Envelope::RelayRegistered(_)
    ));
    // Session 2: replay it.
    let mut c2 = TcpConnection::connect(&r.addr, &alice, None, HandshakeLimits::default())
        .await
        .unwrap();
    c2.send(&Envelope::RelayHello(RelayHello { features: 0 }))
        .await
        .unwrap();
    assert!(matches!(
        c2.recv().await.unwrap(),
        Envelope::RelayChallenge(_)
    ));
    c2.send(&Envelope::RelayRegister(reg.clone()))
        .await
        .unwrap();
    match c2.recv().await.unwrap() {
        Envelope::ErrorMsg(e) => assert_eq!(e.code, RelayErrorCode::Unauthorized.code()),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Someone else presenting alice's registration is refused too (identity ≠ Noise peer).
    let eve = user("eve");
    let mut c3 = TcpConnection::connect(&r.addr, &eve, None, HandshakeLimits::default())
        .await
        .unwrap();
    c3.send(&Envelope::RelayHello(RelayHello { features: 0 }))
        .await
        .unwrap();
    assert!(matches!(
        c3.recv().await.unwrap(),
        Envelope::RelayChallenge(_)
    ));
    c3.send(&Envelope::RelayRegister(reg)).await.unwrap();
    assert!(
        matches!(c3.recv().await.unwrap(), Envelope::ErrorMsg(e) if e.code == RelayErrorCode::Unauthorized.code())
    );
    // A request before registration.
    let mut c4 = TcpConnection::connect(&r.addr, &eve, None, HandshakeLimits::default())
        .await
        .unwrap();
    c4.send(&Envelope::RelayHello(RelayHello { features: 0 }))
        .await
        .unwrap();
    assert!(matches!(
        c4.recv().await.unwrap(),
        Envelope::RelayChallenge(_)
    ));
    c4.send(&Envelope::ConfirmationAck(ConfirmationAck {
        delivered_to: [0; 32],
        message_id: 0,
    }))
    .await
    .unwrap();
    assert!(
        matches!(c4.recv().await.unwrap(), Envelope::ErrorMsg(e) if e.code == RelayErrorCode::NotRegistered.code())
    );
    // Session 1 is unaffected.
    c1.send(&Envelope::ConfirmationAck(ConfirmationAck {
        delivered_to: [0; 32],
        message_id: 0,
    }))
    .await
    .unwrap();
    still_serving(&r).await;
    assert_eq!(r.relay.stats().rejected(RelayErrorCode::Unauthorized), 2);
    r.stop().await;
}

#[tokio::test]
async fn retrieval_by_someone_else_is_refused() {
    let r = TestRelay::start(RelayConfig::default(), |_| RelayMode::Open).await;
    let (alice, bob, eve) = (user("alice"), user("bob"), user("eve"));
    let (ca, _) = r.client(&alice).await;
    ca.store(bob.key(), b"secret blob".to_vec(), 1)
        .await
        .unwrap();
    let (ce, _) = r.client(&eve).await;
    // Eve asks for bob's mailbox with her own (valid) signature.
    let mut req = RetrieveMessages {
        identity: [0; 32],
        auth_signature: [0; 64],
        since: None,
        after: None,
        limit: 0,
    };
    sremp::relay::auth::sign_retrieve(eve.signing_key(), &ce.binding(), &mut req);
    req.identity = bob.key().0;
    let e = ce.retrieve_raw(req).await.unwrap_err();
    assert_eq!(e.code(), Some(RelayErrorCode::Unauthorized));
    // Eve's own mailbox is empty; bob's message is still there for bob.
    assert!(ce.retrieve_all(2).await.unwrap().is_empty());
    // Eve confirming bob's message deletes nothing (her confirmation names her, not bob).
    ce.confirm(alice.key(), 1).await.unwrap();
    let (cb, _) = r.client(&bob).await;
    assert_eq!(cb.retrieve_all(2).await.unwrap().len(), 1);
    // A confirmation claiming to be bob's, from eve's connection.
    let mut c = DeliveryConfirmation {
        message_id: 1,
        sender: alice.key().0,
        delivered_to: [0; 32],
        timestamp: Timestamp(1),
        signature: [0; 64],
    };
    sremp::relay::auth::sign_confirmation(eve.signing_key(), &mut c);
    c.delivered_to = bob.key().0;
    ce.send_raw(&Envelope::DeliveryConfirmation(c))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(cb.retrieve_all(2).await.unwrap().len(), 1);
    still_serving(&r).await;
    r.stop().await;
}

#[tokio::test]
async fn forged_oversized_quota_and_rate_are_refused_with_their_codes() {
    let policy = RelayConfig {
        max_message_size: 1024,
        quota_messages: 3,
        quota_bytes: 2500,
        rate_per_sec: 1,
        rate_burst: 20,
        ..RelayConfig::default()
    };
    let r = TestRelay::start(policy, |_| RelayMode::Open).await;
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let (ca, _) = r.client(&alice).await;
    // Forged: signed by someone else.
    let sig = sremp::relay::auth::sign_store(carol.signing_key(), &bob.key().0, 1, b"x");
    let e = ca
        .store_raw(StoreMessage {
            recipient: bob.key().0,
            encrypted_blob: b"x".to_vec(),
            sender_signature: sig,
            message_id: 1,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(RelayErrorCode::BadSignature));
    // Tampered blob under a valid signature.
    let sig = sremp::relay::auth::sign_store(alice.signing_key(), &bob.key().0, 2, b"x");
    let e = ca
        .store_raw(StoreMessage {
            recipient: bob.key().0,
            encrypted_blob: b"y".to_vec(),
            sender_signature: sig,
            message_id: 2,
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(RelayErrorCode::BadSignature));
    // Oversized.
    let e = ca.store(bob.key(), vec![0; 1025], 3).await.unwrap_err();
    assert_eq!(e.code(), Some(RelayErrorCode::TooLarge));
    ca.store(bob.key(), vec![0; 1024], 4).await.unwrap();
    // Quota (bytes): 1024 + 1024 fit, a third 1024 would pass 2500.
    ca.store(bob.key(), vec![0; 1024], 5).await.unwrap();
    let e = ca.store(bob.key(), vec![0; 1024], 6).await.unwrap_err();
    assert_eq!(e.code(), Some(RelayErrorCode::QuotaFull));
    // Quota (count): a small one fits, the fourth does not.
    ca.store(bob.key(), vec![0; 10], 7).await.unwrap();
    let e = ca.store(bob.key(), vec![0; 1], 8).await.unwrap_err();
    assert_eq!(e.code(), Some(RelayErrorCode::QuotaFull));
    // Another recipient is unaffected by bob's full quota.
    ca.store(carol.key(), vec![0; 10], 9).await.unwrap();
    // Rate: burst 20 at 1/s; alice has used ~10. Hammer until refused.
    let mut limited = false;
    for i in 0..40u64 {
        match ca
            .store(IdentityKey([i as u8 + 1; 32]), vec![1], 100 + i)
            .await
        {
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.code(), Some(RelayErrorCode::RateLimited));
                limited = true;
                break;
            }
        }
    }
    assert!(limited, "never rate limited");
    // Others are served meanwhile (their own buckets).
    still_serving(&r).await;
    let s = r.relay.stats().snapshot();
    assert_eq!(s.rejected["bad_signature"], 2);
    assert_eq!(s.rejected["too_large"], 1);
    assert_eq!(s.rejected["quota_full"], 2);
    assert!(s.rejected["rate_limited"] >= 1);
    r.stop().await;
}

#[tokio::test]
async fn integrated_relay_lets_trusted_contacts_exceed_the_sender_limit() {
    let owner = user("owner");
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
    let ok = owner.key();
    let policy = RelayConfig {
        rate_per_sec: 1,
        rate_burst: 4,
        trusted_rate_per_sec: 1,
        trusted_rate_burst: 100,
        ..RelayConfig::default()
    };
    let r = TestRelay::start_on(store, policy, move |_| RelayMode::Integrated { owner: ok }).await;
    let (friend, stranger) = (user("friend"), user("stranger"));
    let fk = friend.key();
    r.relay
        .set_trusted(Arc::new(move |k: &IdentityKey| *k == fk));
    let (cf, _) = r.client(&friend).await;
    let (cs, _) = r.client(&stranger).await;
    // A burst of 40 from the trusted contact: far past the stranger limit (burst 4), all stored.
    for i in 0..40u64 {
        cf.store(owner.key(), vec![1], 1 + i)
            .await
            .unwrap_or_else(|e| panic!("trusted store {i} refused: {e}"));
    }
    // Anyone else keeps the ordinary limit.
    let mut limited = false;
    for i in 0..10u64 {
        if let Err(e) = cs.store(owner.key(), vec![2], 100 + i).await {
            assert_eq!(e.code(), Some(RelayErrorCode::RateLimited));
            limited = true;
            break;
        }
    }
    assert!(limited, "the stranger was never limited");
    // The trusted budget is bounded as well (100 here): it ends too.
    let mut limited = false;
    for i in 0..100u64 {
        if let Err(e) = cf.store(owner.key(), vec![3], 1000 + i).await {
            assert_eq!(e.code(), Some(RelayErrorCode::RateLimited));
            limited = true;
            break;
        }
    }
    assert!(limited, "the trusted budget never ended");
    r.stop().await;
}

#[tokio::test]
async fn integrated_relay_serves_only_its_owner() {
    let owner = user("owner");
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SledStore::open(dir.path()).unwrap());
    let ok = owner.key();
    // A tight rate limit: it applies to senders, never to the owner.
    let policy = RelayConfig {
        rate_per_sec: 1,
        rate_burst: 4,
        ..RelayConfig::default()
    };
    let r = TestRelay::start_on(store, policy, move |_| RelayMode::Integrated { owner: ok }).await;
    let (alice, bob) = (user("alice"), user("bob"));
    let (ca, _) = r.client(&alice).await;
    ca.store(owner.key(), b"for the owner".to_vec(), 1)
        .await
        .unwrap();
    let e = ca
        .store(bob.key(), b"for bob".to_vec(), 2)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(RelayErrorCode::Unauthorized));
    let e = ca.retrieve(None, None, 0).await.unwrap_err();
    assert_eq!(e.code(), Some(RelayErrorCode::Unauthorized));
    // Alice has used her burst: the next request is limited.
    let e = ca
        .store(owner.key(), b"again".to_vec(), 3)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Some(RelayErrorCode::RateLimited));
    let (co, _) = r.client(&owner).await;
    let got = co.retrieve_all(2).await.unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].sender, alice.key().0);
    // The owner is never limited.
    for _ in 0..10 {
        co.retrieve(None, None, 0).await.unwrap();
    }
    co.confirm(alice.key(), 1).await.unwrap();
    r.stop().await;
}

#[tokio::test]
async fn expiry_removes_old_messages() {
    let r = TestRelay::start(
        RelayConfig {
            retention_secs: 1,
            ..RelayConfig::default()
        },
        |_| RelayMode::Open,
    )
    .await;
    let (alice, bob) = (user("alice"), user("bob"));
    let (ca, _) = r.client(&alice).await;
    for i in 0..5 {
        ca.store(bob.key(), vec![i as u8; 10], i).await.unwrap();
    }
    assert_eq!(r.relay.expire_now().await.unwrap(), 0);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    ca.store(bob.key(), b"fresh".to_vec(), 99).await.unwrap();
    assert_eq!(r.relay.expire_now().await.unwrap(), 5);
    let (cb, _) = r.client(&bob).await;
    let left = cb.retrieve_all(2).await.unwrap();
    assert_eq!(
        left.iter().map(|m| m.message_id).collect::<Vec<_>>(),
        vec![99]
    );
    assert_eq!(r.relay.stats().snapshot().expired, 5);
    r.stop().await;
}

/// A store whose disk "fails" on demand.
struct FailingStore {
    inner: SledStore,
    fail: AtomicBool,
}

impl FailingStore {
    fn check(&self) -> Result<(), StoreError> {
        if self.fail.load(Ordering::SeqCst) {
            Err(StoreError::from_io(
                "injected",
                std::io::Error::other("injected failure"),
            ))
        } else {
            Ok(())
        }
    }
}

impl Store for FailingStore {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        self.inner.get(tree, key)
    }
    fn scan(
        &self,
        tree: Tree,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Entries, StoreError> {
        self.check()?;
        self.inner.scan(tree, prefix, after, limit)
    }
    fn last(&self, tree: Tree, prefix: &[u8]) -> Result<Option<sremp::store::Entry>, StoreError> {
        self.check()?;
        self.inner.last(tree, prefix)
    }
    fn apply(&self, batch: Batch) -> Result<(), StoreError> {
        self.check()?;
        self.inner.apply(batch)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.check()?;
        self.inner.flush()
    }
    fn size_on_disk(&self) -> Result<u64, StoreError> {
        self.inner.size_on_disk()
    }
}

#[tokio::test]
async fn disk_errors_are_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let fs = Arc::new(FailingStore {
        inner: SledStore::open(dir.path()).unwrap(),
        fail: AtomicBool::new(false),
    });
    let store: Arc<dyn Store> = fs.clone();
    let r = TestRelay::start_on(store, RelayConfig::default(), |_| RelayMode::Open).await;
    let (alice, bob) = (user("alice"), user("bob"));
    let (ca, _) = r.client(&alice).await;
    ca.store(bob.key(), b"ok".to_vec(), 1).await.unwrap();
    fs.fail.store(true, Ordering::SeqCst);
    let e = ca.store(bob.key(), b"lost".to_vec(), 2).await.unwrap_err();
    assert_eq!(e.code(), Some(RelayErrorCode::StorageFailure));
    let (cb, _) = r.client(&bob).await;
    let e = cb.retrieve(None, None, 0).await.unwrap_err();
    assert_eq!(e.code(), Some(RelayErrorCode::StorageFailure));
    assert!(r.relay.expire_now().await.is_err());
    // The disk comes back: the retry succeeds, nothing was lost or panicked.
    fs.fail.store(false, Ordering::SeqCst);
    ca.store(bob.key(), b"lost".to_vec(), 2).await.unwrap();
    assert_eq!(cb.retrieve_all(2).await.unwrap().len(), 2);
    r.stop().await;
}

#[tokio::test]
async fn many_concurrent_senders_one_recipient() {
    let r = TestRelay::start(
        RelayConfig {
            rate_burst: 10_000,
            ..RelayConfig::default()
        },
        |_| RelayMode::Open,
    )
    .await;
    let bob = user("bob");
    let mut tasks = Vec::new();
    for s in 0..20 {
        let addr = r.addr.clone();
        let rid = r.id.key();
        let bk = bob.key();
        tasks.push(tokio::spawn(async move {
            let u = user(&format!("s{s}"));
            let (c, _) = RelayClient::connect(&addr, &u, Some(rid), HandshakeLimits::default())
                .await
                .unwrap();
            let c = Arc::new(c);
            let mut js = tokio::task::JoinSet::new();
            for i in 0..25u64 {
                let c = c.clone();
                js.spawn(async move { c.store(bk, vec![s as u8; 100], i).await.unwrap() });
            }
            while let Some(x) = js.join_next().await {
                x.unwrap();
            }
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .unwrap()
            .unwrap();
    }
    let (cb, _) = r.client(&bob).await;
    assert_eq!(cb.retrieve_all(100).await.unwrap().len(), 500);
    let s = r.relay.stats().snapshot();
    assert_eq!(s.stored, 500);
    // Whether stores share flushes here depends on timing (in a debug build signature checks,
    // not flushes, pace the senders); sharing itself is asserted deterministically by the
    // store's unit test `concurrent_stores_share_flushes`.
    assert!(
        s.flushes <= 500,
        "at most one flush per store: {} flushes",
        s.flushes
    );
    r.stop().await;
}

#[tokio::test]
async fn stores_received_together_refuse_exactly_the_forged_one() {
    let r = TestRelay::start(RelayConfig::default(), |_| RelayMode::Open).await;
    let (alice, bob, carol) = (user("alice"), user("bob"), user("carol"));
    let mut c = TcpConnection::connect(&r.addr, &alice, None, HandshakeLimits::default())
        .await
        .unwrap();
    c.send(&Envelope::RelayHello(RelayHello { features: 0 }))
        .await
        .unwrap();
    let Envelope::RelayChallenge(ch) = c.recv().await.unwrap() else {
        panic!("no challenge")
    };
    let binding = sremp::relay::auth::SessionBinding {
        handshake_hash: c.handshake_hash,
        nonce: ch.nonce,
    };
    c.send(&Envelope::RelayRegister(RelayRegister {
        identity: alice.key().0,
        auth_signature: sremp::relay::auth::sign_register(
            alice.signing_key(),
            &binding,
            &r.id.key().0,
        ),
        capabilities: ch.capabilities.clone(),
    }))
    .await
    .unwrap();
    assert!(matches!(
        c.recv().await.unwrap(),
        Envelope::RelayRegistered(_)
    ));
    // 20 stores in one write, so the relay receives them together: #5 is signed by carol, and
    // a CONFIRMATION_ACK in the middle splits them into two batches.
    const FORGED: u64 = 5;
    let mut envs = Vec::new();
    for id in 0..20u64 {
        if id == 12 {
            envs.push(Envelope::ConfirmationAck(ConfirmationAck {
                delivered_to: [0; 32],
                message_id: 0,
            }));
        }
        let blob = vec![id as u8; 200];
        let signer = if id == FORGED { &carol } else { &alice };
        envs.push(Envelope::StoreMessage(StoreMessage {
            recipient: bob.key().0,
            sender_signature: sremp::relay::auth::sign_store(
                signer.signing_key(),
                &bob.key().0,
                id,
                &blob,
            ),
            encrypted_blob: blob,
            message_id: id,
        }));
    }
    c.writer.send_all(&envs).await.unwrap();
    let mut answered = std::collections::BTreeMap::new();
    while answered.len() < 20 {
        match tokio::time::timeout(T, c.recv()).await.unwrap().unwrap() {
            Envelope::StoreResponse(resp) => {
                assert!(answered.insert(resp.message_id, resp).is_none());
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    for (id, resp) in &answered {
        if *id == FORGED {
            assert!(!resp.success);
            assert_eq!(resp.error, Some(RelayErrorCode::BadSignature.code()));
        } else {
            assert!(resp.success, "message {id}: {resp:?}");
        }
    }
    let (cb, _) = r.client(&bob).await;
    let got = cb.retrieve_all(100).await.unwrap();
    let ids: Vec<u64> = got.iter().map(|m| m.message_id).collect();
    let want: Vec<u64> = (0..20).filter(|id| *id != FORGED).collect();
    assert_eq!(ids, want);
    for m in &got {
        assert_eq!(m.encrypted_blob, vec![m.message_id as u8; 200]);
    }
    let s = r.relay.stats().snapshot();
    assert_eq!(s.stored, 19);
    assert_eq!(s.rejected["bad_signature"], 1);
    assert!(
        s.signatures_batched >= 2,
        "the stores were not verified together: {s:?}"
    );
    r.stop().await;
}

#[tokio::test]
async fn session_reset_deletes_the_message_and_reaches_only_a_connected_sender() {
    let r = TestRelay::start(RelayConfig::default(), |_| RelayMode::Open).await;
    let (alice, bob, eve) = (user("alice"), user("bob"), user("eve"));
    let (ca, mut ea) = r.client(&alice).await;
    ca.store(bob.key(), b"lost".to_vec(), 5).await.unwrap();
    ca.store(bob.key(), b"lost too".to_vec(), 6).await.unwrap();
    let (cb, _eb) = r.client(&bob).await;
    assert_eq!(cb.retrieve_all(10).await.unwrap().len(), 2);
    // Bob cannot decrypt message 5: the relay deletes it and forwards the signed notice.
    cb.session_reset(alice.key(), 5, ResetReason::NoSession, b"lost", Some(3))
        .await
        .unwrap();
    match next_event(&mut ea).await {
        RelayEvent::SessionReset(n) => {
            assert_eq!(
                (n.message_id, n.sender, n.recipient),
                (5, alice.key().0, bob.key().0)
            );
            assert_eq!(ResetReason::from_u8(n.reason), ResetReason::NoSession);
            use sha2::Digest;
            assert_eq!(n.digest, <[u8; 32]>::from(sha2::Sha256::digest(b"lost")));
            // Forwarded unchanged, with what bob last recorded, under his signature.
            assert_eq!(n.last_recorded, Some(3));
            sremp::relay::auth::verify_session_reset(&n).unwrap();
            let mut changed = n.clone();
            changed.last_recorded = Some(2);
            assert!(sremp::relay::auth::verify_session_reset(&changed).is_err());
            changed.last_recorded = None;
            assert!(sremp::relay::auth::verify_session_reset(&changed).is_err());
        }
        other => panic!("expected a session reset, got {other:?}"),
    }
    let left = cb.retrieve_all(10).await.unwrap();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_eq!(left[0].message_id, 6);
    // Not a delivery: the relay counts no delivery and keeps no confirmation for it.
    assert_eq!(r.relay.stats().snapshot().confirmations_kept, 0);
    // A notice for an id the relay does not hold deletes nothing and is not forwarded.
    cb.session_reset(alice.key(), 9999, ResetReason::NoSession, b"?", None)
        .await
        .unwrap();
    // A forged notice (eve signs as bob) and one for someone else's message are refused; the
    // message stays.
    let (ce, mut ee) = r.client(&eve).await;
    let mut forged = SessionReset {
        message_id: 6,
        sender: alice.key().0,
        recipient: bob.key().0,
        timestamp: Timestamp::now(),
        reason: 1,
        digest: [0; 32],
        signature: [7; 64],
        last_recorded: None,
    };
    ce.send_raw(&Envelope::SessionReset(forged.clone()))
        .await
        .unwrap();
    match next_event(&mut ee).await {
        RelayEvent::Error(e) => assert_eq!(e.code, RelayErrorCode::Unauthorized.code()),
        other => panic!("expected a refusal, got {other:?}"),
    }
    forged.recipient = eve.key().0;
    ce.send_raw(&Envelope::SessionReset(forged)).await.unwrap();
    match next_event(&mut ee).await {
        RelayEvent::Error(e) => assert_eq!(e.code, RelayErrorCode::BadSignature.code()),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(tokio::time::timeout(Duration::from_millis(300), ea.recv())
        .await
        .is_err());
    assert_eq!(cb.retrieve_all(10).await.unwrap().len(), 1);
    // With alice away, a notice is not kept for her.
    ca.close().await;
    drop(ca);
    drop(ea);
    tokio::time::sleep(Duration::from_millis(100)).await;
    cb.session_reset(
        alice.key(),
        6,
        ResetReason::StateMismatch,
        b"lost too",
        None,
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(cb.retrieve_all(10).await.unwrap().is_empty());
    let (_ca, mut ea) = r.client(&alice).await;
    assert!(tokio::time::timeout(Duration::from_millis(300), ea.recv())
        .await
        .is_err());
    still_serving(&r).await;
    r.stop().await;
}

/// Issue 9 item 5 at the protocol level: with several registered connections of one identity,
/// pushes go to the newest one that asked to collect (sent an authorised RETRIEVE_MESSAGES),
/// never to one that only registered; without a collector nothing is pushed and the message
/// waits in the store.
#[tokio::test]
async fn pushes_go_to_the_newest_collecting_connection_only() {
    let r = TestRelay::start(RelayConfig::default(), |_| RelayMode::Open).await;
    let (alice, bob) = (user("alice"), user("bob"));
    let (ca, _ea) = r.client(&alice).await;
    let (collector, mut ec) = r.client(&bob).await;
    assert!(collector.retrieve_all(10).await.unwrap().is_empty());
    // Bob's second, newer connection only registers (a node's delivery connection).
    let (sender_only, mut es) = r.client(&bob).await;
    ca.store(bob.key(), b"one".to_vec(), 1).await.unwrap();
    match next_event(&mut ec).await {
        RelayEvent::Message(m) => assert_eq!(m.message_id, 1),
        other => panic!("expected a push to the collector, got {other:?}"),
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(300), es.recv())
            .await
            .is_err(),
        "a connection that never retrieved got a push"
    );
    // The collector goes away: no push, the message stays stored.
    collector.close().await;
    drop(collector);
    drop(ec);
    tokio::time::sleep(Duration::from_millis(100)).await;
    ca.store(bob.key(), b"two".to_vec(), 2).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(300), es.recv())
            .await
            .is_err(),
        "pushed to a connection that never retrieved"
    );
    // Once it retrieves, it collects: it reads what is stored and gets the next push.
    let stored = sender_only.retrieve_all(10).await.unwrap();
    let mut ids: Vec<u64> = stored.iter().map(|m| m.message_id).collect();
    ids.sort();
    assert_eq!(ids, vec![1, 2]);
    ca.store(bob.key(), b"three".to_vec(), 3).await.unwrap();
    match next_event(&mut es).await {
        RelayEvent::Message(m) => assert_eq!(m.message_id, 3),
        other => panic!("expected a push, got {other:?}"),
    }
    r.stop().await;
}

/// Issue 12: the batched client calls. `store_many` sends several stores in one write and
/// answers each (a repeated id in the same call is refused locally, a retry of a stored one
/// is a duplicate with its first `stored_at`); `confirm_many` confirms several in one write
/// (each routed back to the connected sender); `ack_confirmations` lets the relay forget them.
#[tokio::test]
async fn batched_store_confirm_and_ack() {
    let r = TestRelay::start(RelayConfig::default(), |_| RelayMode::Open).await;
    let (alice, bob) = (user("alice"), user("bob"));
    let (ca, mut ea) = r.client(&alice).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let blobs: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 40]).collect();
    let mut items: Vec<(IdentityKey, &[u8], u64)> = blobs
        .iter()
        .enumerate()
        .map(|(i, b)| (bob.key(), b.as_slice(), i as u64))
        .collect();
    items.push((bob.key(), blobs[0].as_slice(), 0));
    let got = ca.store_many(&items, deadline).await;
    assert_eq!(got.len(), 6);
    let t0 = match &got[0] {
        Ok(t) => *t,
        Err(e) => panic!("store 0 failed: {e}"),
    };
    assert!(got[1..5].iter().all(|r| r.is_ok()), "{got:?}");
    assert!(matches!(
        got[5],
        Err(RelayClientError::DuplicateInFlight(0))
    ));
    let again = ca
        .store_many(&[(bob.key(), blobs[0].as_slice(), 0)], deadline)
        .await;
    assert_eq!(again.len(), 1);
    assert_eq!(*again[0].as_ref().unwrap(), t0, "a retry is a duplicate");
    let (cb, _eb) = r.client(&bob).await;
    let all = cb.retrieve_all(10).await.unwrap();
    assert_eq!(all.len(), 5);
    let ids: Vec<(IdentityKey, u64)> = (0..5).map(|i| (alice.key(), i)).collect();
    cb.confirm_many(&ids).await.unwrap();
    let mut confirmed = Vec::new();
    for _ in 0..5 {
        match next_event(&mut ea).await {
            RelayEvent::Confirmation(c) => {
                sremp::relay::auth::verify_confirmation(&c).unwrap();
                confirmed.push(c);
            }
            other => panic!("expected a confirmation, got {other:?}"),
        }
    }
    let mut got_ids: Vec<u64> = confirmed.iter().map(|c| c.message_id).collect();
    got_ids.sort_unstable();
    assert_eq!(got_ids, vec![0, 1, 2, 3, 4]);
    ca.ack_confirmations(&confirmed).await.unwrap();
    assert!(cb.retrieve_all(10).await.unwrap().is_empty());
    // Acknowledged: nothing is handed over again at the next registration.
    ca.close().await;
    let (_ca2, mut ea2) = r.client(&alice).await;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), ea2.recv())
            .await
            .is_err(),
        "an acknowledged confirmation was handed over again"
    );
}
