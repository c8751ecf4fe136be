//! `SessionManager` with the real sled store: first contact while offline, simultaneous
//! initiation, restart, crash points, de-duplication, noise key rotation, corrupt records.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod ratchet_support;

use ratchet_support::*;
use sremp::ratchet::{
    DecryptError, LocalKeys, Payload, PeerKeys, ReceiveError, SessionError, SessionManager,
    MAX_PREVIOUS_SESSIONS,
};
use sremp::store::{Batch, SledStore, Store, Tree};
use sremp::time::Timestamp;

struct Node {
    p: Party,
    mgr: SessionManager,
    store: SledStore,
    _dir: tempfile::TempDir,
}

fn node(seed: u8) -> Node {
    let p = party(seed);
    let dir = tempfile::tempdir().unwrap();
    let store = SledStore::open(dir.path()).unwrap();
    let mgr = SessionManager::new(LocalKeys::new(p.sk.clone(), p.noise_secret));
    Node {
        p,
        mgr,
        store,
        _dir: dir,
    }
}

fn keys(n: &Node) -> PeerKeys {
    PeerKeys {
        identity_key: n.p.ik,
        noise_key: n.p.noise_pub,
    }
}

/// Encrypts and commits; returns the bytes that may now leave the node.
fn send_text(from: &Node, to: &Node, r: &mut rand_chacha::ChaCha20Rng, text: &str) -> Vec<u8> {
    send_text_at(from, to, r, text, 1_000)
}

fn send_text_at(
    from: &Node,
    to: &Node,
    r: &mut rand_chacha::ChaCha20Rng,
    text: &str,
    now: u64,
) -> Vec<u8> {
    let payload = Payload::text(r, Timestamp(now), text);
    let out = from
        .mgr
        .encrypt(&from.store, r, &keys(to), &payload)
        .unwrap();
    out.commit(&from.store, Batch::new()).unwrap()
}

/// Decrypts and commits (with a pretend history entry); returns the text.
fn recv_text(at: &Node, wire: &[u8]) -> Result<String, ReceiveError> {
    let inc = at.mgr.decrypt(&at.store, wire)?;
    let mut batch = inc.batch;
    batch.put(Tree::History, inc.payload.id.0.to_vec(), b"shown".to_vec());
    at.store.commit(batch).unwrap();
    match inc.payload.content {
        sremp::ratchet::Content::Text(t) => Ok(t),
        other => panic!("unexpected {other:?}"),
    }
}

fn active_id(n: &Node, peer: &Node) -> [u8; 16] {
    *n.mgr
        .sessions(&n.store, &peer.p.ik)
        .unwrap()
        .active()
        .unwrap()
        .id()
}

#[test]
fn first_contact_while_offline_through_a_relay() {
    let mut r = rng(1);
    let alice = node(1);
    let bob = node(2);
    // Alice knows only Bob's identity (contact card); Bob is offline: the relay holds these.
    let relay: Vec<Vec<u8>> = (0..3)
        .map(|i| send_text(&alice, &bob, &mut r, &format!("m{i}")))
        .collect();
    // Bob comes online and fetches them (out of order).
    let inc = bob.mgr.decrypt(&bob.store, &relay[2]).unwrap();
    assert_eq!(inc.first_contact, Some(alice.p.noise_pub));
    bob.store.commit(inc.batch).unwrap();
    assert_eq!(recv_text(&bob, &relay[0]).unwrap(), "m0");
    assert_eq!(recv_text(&bob, &relay[1]).unwrap(), "m1");
    let reply = send_text(&bob, &alice, &mut r, "welcome");
    let inc = alice.mgr.decrypt(&alice.store, &reply).unwrap();
    assert_eq!(inc.first_contact, None);
    alice.store.commit(inc.batch).unwrap();
    assert_eq!(active_id(&alice, &bob), active_id(&bob, &alice));
    // Redelivery by the relay is never shown twice.
    for m in &relay {
        assert!(matches!(recv_text(&bob, m), Err(ReceiveError::Rejected(_))));
    }
}

fn simultaneous(seed_a: u8, seed_b: u8, rseed: u64) {
    simultaneous_at(seed_a, seed_b, rseed, 1_000, 1_000);
}

fn simultaneous_at(seed_a: u8, seed_b: u8, rseed: u64, ta: u64, tb: u64) {
    let mut r = rng(rseed);
    let alice = node(seed_a);
    let bob = node(seed_b);
    // Both start a session at once; two messages each are in flight.
    let a0 = send_text_at(&alice, &bob, &mut r, "a0", ta);
    let b0 = send_text_at(&bob, &alice, &mut r, "b0", tb);
    let a1 = send_text(&alice, &bob, &mut r, "a1");
    let b1 = send_text(&bob, &alice, &mut r, "b1");
    assert_eq!(recv_text(&bob, &a0).unwrap(), "a0");
    assert_eq!(recv_text(&alice, &b0).unwrap(), "b0");
    // Both now send on the session initiated by the smaller identity key.
    let a2 = send_text(&alice, &bob, &mut r, "a2");
    let b2 = send_text(&bob, &alice, &mut r, "b2");
    assert_eq!(active_id(&alice, &bob), active_id(&bob, &alice));
    // In-flight messages of the losing session still decrypt, late and in any order.
    assert_eq!(recv_text(&bob, &a2).unwrap(), "a2");
    assert_eq!(recv_text(&alice, &b2).unwrap(), "b2");
    assert_eq!(recv_text(&bob, &a1).unwrap(), "a1");
    assert_eq!(recv_text(&alice, &b1).unwrap(), "b1");
    for i in 0..5 {
        let m = send_text(&alice, &bob, &mut r, &format!("x{i}"));
        assert_eq!(recv_text(&bob, &m).unwrap(), format!("x{i}"));
        let m = send_text(&bob, &alice, &mut r, &format!("y{i}"));
        assert_eq!(recv_text(&alice, &m).unwrap(), format!("y{i}"));
    }
    assert_eq!(active_id(&alice, &bob), active_id(&bob, &alice));
}

#[test]
fn simultaneous_initiation_converges_whichever_key_is_smaller() {
    for (a, b, r) in [(1, 2, 1), (2, 1, 2), (7, 3, 3), (3, 7, 4)] {
        simultaneous(a, b, r);
    }
}

#[test]
fn simultaneous_initiation_converges_on_the_later_session() {
    for (ta, tb) in [(1_000, 1_001), (1_001, 1_000)] {
        simultaneous_at(1, 2, 7, ta, tb);
        simultaneous_at(2, 1, 8, ta, tb);
    }
}

#[test]
fn simultaneous_initiation_with_delayed_first_messages() {
    let mut r = rng(5);
    let alice = node(1);
    let bob = node(2);
    let a0 = send_text(&alice, &bob, &mut r, "a0");
    let b0 = send_text(&bob, &alice, &mut r, "b0");
    // Only Alice's side learns of the clash at first; she keeps talking.
    assert_eq!(recv_text(&alice, &b0).unwrap(), "b0");
    let a1 = send_text(&alice, &bob, &mut r, "a1");
    let b1 = send_text(&bob, &alice, &mut r, "b1");
    assert_eq!(recv_text(&alice, &b1).unwrap(), "b1");
    assert_eq!(recv_text(&bob, &a1).unwrap(), "a1");
    assert_eq!(recv_text(&bob, &a0).unwrap(), "a0");
    let a2 = send_text(&alice, &bob, &mut r, "a2");
    let b2 = send_text(&bob, &alice, &mut r, "b2");
    assert_eq!(recv_text(&bob, &a2).unwrap(), "a2");
    assert_eq!(recv_text(&alice, &b2).unwrap(), "b2");
    assert_eq!(active_id(&alice, &bob), active_id(&bob, &alice));
}

#[test]
fn restart_mid_conversation_with_the_real_store() {
    let mut r = rng(6);
    let dir_a = tempfile::tempdir().unwrap();
    let dir_b = tempfile::tempdir().unwrap();
    let (pa, pb) = (party(1), party(2));
    let open = |dir: &tempfile::TempDir, p: &Party| {
        (
            SledStore::open(dir.path()).unwrap(),
            SessionManager::new(LocalKeys::new(p.sk.clone(), p.noise_secret)),
        )
    };
    let keys_b = PeerKeys {
        identity_key: pb.ik,
        noise_key: pb.noise_pub,
    };
    let keys_a = PeerKeys {
        identity_key: pa.ik,
        noise_key: pa.noise_pub,
    };
    let mut in_flight: Vec<Vec<u8>> = Vec::new();
    for round in 0..4 {
        let (sa, ma) = open(&dir_a, &pa);
        let (sb, mb) = open(&dir_b, &pb);
        // Deliver what was in flight before the restart.
        for w in in_flight.drain(..) {
            let inc = mb.decrypt(&sb, &w).unwrap();
            sb.commit(inc.batch).unwrap();
        }
        for i in 0..3 {
            let p = Payload::text(&mut r, Timestamp(round), &format!("{round}.{i}"));
            let w = ma
                .encrypt(&sa, &mut r, &keys_b, &p)
                .unwrap()
                .commit(&sa, Batch::new())
                .unwrap();
            let inc = mb.decrypt(&sb, &w).unwrap();
            assert_eq!(inc.payload, p);
            sb.commit(inc.batch).unwrap();
        }
        let p = Payload::text(&mut r, Timestamp(round), "pong");
        let w = mb
            .encrypt(&sb, &mut r, &keys_a, &p)
            .unwrap()
            .commit(&sb, Batch::new())
            .unwrap();
        let inc = ma.decrypt(&sa, &w).unwrap();
        sa.commit(inc.batch).unwrap();
        let p = Payload::text(&mut r, Timestamp(round), "in flight over restart");
        in_flight.push(
            ma.encrypt(&sa, &mut r, &keys_b, &p)
                .unwrap()
                .commit(&sa, Batch::new())
                .unwrap(),
        );
        // Both processes stop here (stores and managers dropped).
    }
}

#[test]
fn crash_before_commit_on_receive_redelivers_crash_after_never_shows_twice() {
    let mut r = rng(7);
    let alice = node(1);
    let bob = node(2);
    let w = send_text(&alice, &bob, &mut r, "m");
    // Bob decrypts but "crashes" before committing: nothing was written.
    let first = bob.mgr.decrypt(&bob.store, &w).unwrap();
    drop(first);
    assert!(bob
        .mgr
        .sessions(&bob.store, &alice.p.ik)
        .unwrap()
        .active()
        .is_none());
    // The relay re-delivers: it decrypts again, to the same payload.
    assert_eq!(recv_text(&bob, &w).unwrap(), "m");
    // After the commit a re-delivery is rejected.
    assert!(matches!(
        recv_text(&bob, &w),
        Err(ReceiveError::Rejected(_))
    ));
}

#[test]
fn crash_before_commit_on_send_never_leaks_a_reused_key() {
    let mut r = rng(8);
    let alice = node(1);
    let bob = node(2);
    send_text(&alice, &bob, &mut r, "established");
    // An Outgoing that is never committed (crash) never yields bytes to send.
    let p = Payload::text(&mut r, Timestamp(1), "lost in crash");
    let uncommitted = alice
        .mgr
        .encrypt(&alice.store, &mut r, &keys(&bob), &p)
        .unwrap();
    let idx_before = format!(
        "{:?}",
        alice
            .mgr
            .sessions(&alice.store, &bob.p.ik)
            .unwrap()
            .active()
    );
    drop(uncommitted);
    assert_eq!(
        idx_before,
        format!(
            "{:?}",
            alice
                .mgr
                .sessions(&alice.store, &bob.p.ik)
                .unwrap()
                .active()
        )
    );
    // The committed path stores the advanced chain before handing out the bytes.
    let w = send_text(&alice, &bob, &mut r, "after restart");
    let idx_after = format!(
        "{:?}",
        alice
            .mgr
            .sessions(&alice.store, &bob.p.ik)
            .unwrap()
            .active()
    );
    assert_ne!(idx_before, idx_after);
    assert!(recv_text(&bob, &w).is_ok());
}

#[test]
fn same_message_id_twice_is_a_duplicate_unless_the_payload_differs() {
    let mut r = rng(9);
    let alice = node(1);
    let bob = node(2);
    let p = Payload::text(&mut r, Timestamp(5), "once");
    let enc = |p: &Payload, r: &mut rand_chacha::ChaCha20Rng| {
        alice
            .mgr
            .encrypt(&alice.store, r, &keys(&bob), p)
            .unwrap()
            .commit(&alice.store, Batch::new())
            .unwrap()
    };
    let w1 = enc(&p, &mut r);
    // The same payload re-encrypted (fresh key, same id): a quiet duplicate.
    let w2 = enc(&p, &mut r);
    // Another text under the same id: reported (WARN in the node).
    let mut other = p.clone();
    other.content = sremp::ratchet::Content::Text("other".into());
    let w3 = enc(&other, &mut r);
    assert_eq!(recv_text(&bob, &w1).unwrap(), "once");
    assert!(matches!(
        recv_text(&bob, &w2),
        Err(ReceiveError::Rejected(DecryptError::Duplicate))
    ));
    assert!(matches!(
        recv_text(&bob, &w3),
        Err(ReceiveError::Rejected(DecryptError::ConflictingReplay))
    ));
    // An exact copy stays a quiet replay.
    assert!(matches!(
        recv_text(&bob, &w1),
        Err(ReceiveError::Rejected(DecryptError::Replayed { .. }))
    ));
}

/// A copy of a message read long ago (a re-send through the relay after its direct
/// confirmation was lost, arriving many round trips later) whose ratchet key the session has
/// since forgotten: a quiet duplicate, not a state mismatch (which would reset the session).
#[test]
fn late_copy_from_a_forgotten_ratchet_round_is_a_duplicate() {
    let mut r = rng(13);
    let alice = node(1);
    let bob = node(2);
    let old = send_text(&alice, &bob, &mut r, "early");
    assert_eq!(recv_text(&bob, &old).unwrap(), "early");
    // Many turns: every change of direction is a new ratchet key on each side.
    for i in 0..(2 * sremp::ratchet::MAX_OLD_RATCHET_KEYS + 4) {
        let w = send_text(&bob, &alice, &mut r, &format!("b{i}"));
        assert_eq!(recv_text(&alice, &w).unwrap(), format!("b{i}"));
        let w = send_text(&alice, &bob, &mut r, &format!("a{i}"));
        assert_eq!(recv_text(&bob, &w).unwrap(), format!("a{i}"));
    }
    assert!(matches!(
        recv_text(&bob, &old),
        Err(ReceiveError::Rejected(DecryptError::Duplicate))
    ));
    // The copy changed nothing: the conversation goes on.
    let w = send_text(&alice, &bob, &mut r, "after");
    assert_eq!(recv_text(&bob, &w).unwrap(), "after");
}

#[test]
fn one_message_key_for_two_plaintexts_is_a_conflicting_replay() {
    let mut r = rng(11);
    let alice = node(1);
    let bob = node(2);
    let w0 = send_text(&alice, &bob, &mut r, "hello");
    assert_eq!(recv_text(&bob, &w0).unwrap(), "hello");
    // Alice's session state is rolled back behind what she already sent (the issue 9 bug).
    let saved = alice.store.get(Tree::Sessions, &bob.p.ik).unwrap().unwrap();
    let w1 = send_text(&alice, &bob, &mut r, "first under key n");
    let mut b = Batch::new();
    b.put(Tree::Sessions, bob.p.ik.to_vec(), saved);
    alice.store.commit(b).unwrap();
    let w2 = send_text(&alice, &bob, &mut r, "second under key n");
    assert_eq!(recv_text(&bob, &w1).unwrap(), "first under key n");
    assert!(matches!(
        recv_text(&bob, &w2),
        Err(ReceiveError::Rejected(DecryptError::ConflictingReplay))
    ));
    assert!(matches!(
        recv_text(&bob, &w1),
        Err(ReceiveError::Rejected(DecryptError::Replayed { .. }))
    ));
}

#[test]
fn noise_key_rotation_keeps_old_first_contacts_readable() {
    let mut r = rng(10);
    let alice = node(1);
    let bob = node(2);
    let w = send_text(&alice, &bob, &mut r, "to your old noise key");
    let new_noise = [77u8; 32];
    let rotated_only = SessionManager::new(LocalKeys::new(bob.p.sk.clone(), new_noise));
    assert!(matches!(
        rotated_only.decrypt(&bob.store, &w),
        Err(ReceiveError::Rejected(DecryptError::UnknownNoiseKey))
    ));
    let rotated = SessionManager::new(
        LocalKeys::new(bob.p.sk.clone(), new_noise).with_previous_noise_key(bob.p.noise_secret),
    );
    let inc = rotated.decrypt(&bob.store, &w).unwrap();
    assert!(
        matches!(inc.payload.content, sremp::ratchet::Content::Text(ref t) if t == "to your old noise key")
    );
}

#[test]
fn corrupt_session_record_is_a_local_typed_error() {
    let mut r = rng(11);
    let alice = node(1);
    let bob = node(2);
    let w = send_text(&alice, &bob, &mut r, "x");
    for junk in [
        vec![],
        vec![1u8],
        vec![2u8, 0x90],
        vec![1u8, 0x92, 0xc0, 0x90, 0x00],
    ] {
        let mut b = Batch::new();
        b.put(Tree::Sessions, alice.p.ik.to_vec(), junk);
        bob.store.commit(b).unwrap();
        assert!(matches!(
            bob.mgr.decrypt(&bob.store, &w),
            Err(ReceiveError::Local(SessionError::Corrupt(_)))
        ));
    }
}

#[test]
fn old_sessions_are_bounded() {
    let mut r = rng(12);
    let alice = node(1);
    let bob = node(2);
    let mut pending = Vec::new();
    for i in 0..(MAX_PREVIOUS_SESSIONS + 3) {
        // Alice loses her state each time and starts over.
        alice.store.commit(alice.mgr.forget(&bob.p.ik)).unwrap();
        let w = send_text_at(&alice, &bob, &mut r, &format!("s{i}"), 1_000 + i as u64);
        assert_eq!(recv_text(&bob, &w).unwrap(), format!("s{i}"));
        pending.push(w);
    }
    let s = bob.mgr.sessions(&bob.store, &alice.p.ik).unwrap();
    assert_eq!(s.previous().len(), MAX_PREVIOUS_SESSIONS);
    // The newest session (latest created_at) is the active one on both sides, and it works.
    assert_eq!(s.active().unwrap().id(), &active_id(&alice, &bob));
    let reply = send_text(&bob, &alice, &mut r, "ok");
    assert_eq!(recv_text(&alice, &reply).unwrap(), "ok");
}

#[test]
fn message_for_someone_else_or_unknown_session_is_rejected() {
    let mut r = rng(13);
    let alice = node(1);
    let bob = node(2);
    let carol = node(3);
    let w = send_text(&alice, &bob, &mut r, "for bob");
    assert!(matches!(
        carol.mgr.decrypt(&carol.store, &w),
        Err(ReceiveError::Rejected(DecryptError::WrongRecipient))
    ));
    recv_text(&bob, &w).unwrap();
    let reply = send_text(&bob, &alice, &mut r, "r");
    recv_text(&alice, &reply).unwrap();
    let normal = send_text(&alice, &bob, &mut r, "normal header");
    let fresh_bob = SessionManager::new(LocalKeys::new(bob.p.sk.clone(), bob.p.noise_secret));
    let empty = tempfile::tempdir().unwrap();
    let empty_store = SledStore::open(empty.path()).unwrap();
    assert!(matches!(
        fresh_bob.decrypt(&empty_store, &normal),
        Err(ReceiveError::Rejected(DecryptError::NoSession))
    ));
}
