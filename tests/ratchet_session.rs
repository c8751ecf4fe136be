//! Double Ratchet scenarios on in-memory sessions (no store): the Signal specification's
//! cases, post-compromise security, forward secrecy, tamper, replay and re-addressing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod ratchet_support;

use ratchet_support::*;

use sremp::ratchet::{DecryptError, Header, SignedMessage, MAX_MESSAGE_GAP};

#[test]
fn in_order_both_directions_with_dh_steps() {
    let (a, b, mut alice, mut bob, mut r) = pair(1);
    for round in 0..10 {
        for i in 0..3 {
            let t = format!("a{round}.{i}");
            let m = send(&mut alice, &a, &mut r, t.as_bytes());
            assert_eq!(recv(&mut bob, &a, &m).unwrap(), t.as_bytes());
        }
        let t = format!("b{round}");
        let m = send(&mut bob, &b, &mut r, t.as_bytes());
        assert_eq!(recv(&mut alice, &b, &m).unwrap(), t.as_bytes());
    }
    assert_eq!(alice.skipped_keys(), 0);
    assert_eq!(bob.skipped_keys(), 0);
}

#[test]
fn out_of_order_within_and_across_chains() {
    let (a, b, mut alice, mut bob, mut r) = pair(2);
    let a1: Vec<_> = (0..5).map(|i| send(&mut alice, &a, &mut r, &[i])).collect();
    // Bob replies after seeing only a1[1]: Alice's next chain is a new DH step.
    assert_eq!(recv(&mut bob, &a, &a1[1]).unwrap(), [1]);
    let b1 = send(&mut bob, &b, &mut r, b"b");
    recv(&mut alice, &b, &b1).unwrap();
    let a2: Vec<_> = (10..13)
        .map(|i| send(&mut alice, &a, &mut r, &[i]))
        .collect();
    // New chain first (skips the rest of the old chain via pn), then the stragglers.
    assert_eq!(recv(&mut bob, &a, &a2[2]).unwrap(), [12]);
    assert_eq!(bob.skipped_keys(), 1 + 3 + 2); // a1[0]; a1[2..5] via pn; a2[0..2]
    for (m, want) in [
        (&a1[4], 4u8),
        (&a2[0], 10),
        (&a1[0], 0),
        (&a1[3], 3),
        (&a2[1], 11),
        (&a1[2], 2),
    ] {
        assert_eq!(recv(&mut bob, &a, m).unwrap(), [want]);
    }
    assert_eq!(bob.skipped_keys(), 0);
}

#[test]
fn lost_messages_do_not_block_the_conversation() {
    let (a, b, mut alice, mut bob, mut r) = pair(3);
    for round in 0..5u8 {
        let _lost = send(&mut alice, &a, &mut r, b"lost");
        let m = send(&mut alice, &a, &mut r, &[round]);
        assert_eq!(recv(&mut bob, &a, &m).unwrap(), [round]);
        let _lost = send(&mut bob, &b, &mut r, b"lost");
        let m = send(&mut bob, &b, &mut r, &[round]);
        assert_eq!(recv(&mut alice, &b, &m).unwrap(), [round]);
    }
    assert_eq!(bob.skipped_keys(), 5);
    assert_eq!(alice.skipped_keys(), 5);
}

#[test]
fn gap_at_the_limit_is_accepted_beyond_is_a_typed_error_without_state_change() {
    let (a, _b, mut alice, mut bob, mut r) = pair(4);
    let ms: Vec<_> = (0..=MAX_MESSAGE_GAP + 1)
        .map(|_| send(&mut alice, &a, &mut r, b"x"))
        .collect();
    let before = bob.clone();
    let last = ms.last().unwrap();
    assert_eq!(
        recv(&mut bob, &a, last),
        Err(DecryptError::TooBigMessageGap {
            got: u64::from(MAX_MESSAGE_GAP) + 1,
            max: 2000
        })
    );
    assert!(same_state(&before, &bob, &_b));
    // Exactly MAX_MESSAGE_GAP skipped keys is fine.
    assert_eq!(
        recv(&mut bob, &a, &ms[MAX_MESSAGE_GAP as usize]).unwrap(),
        b"x"
    );
    assert_eq!(bob.skipped_keys(), MAX_MESSAGE_GAP as usize);
    assert_eq!(recv(&mut bob, &a, last).unwrap(), b"x");
    assert_eq!(recv(&mut bob, &a, &ms[7]).unwrap(), b"x");
}

#[test]
fn gap_announced_by_pn_is_bounded_too() {
    let (a, b, mut alice, mut bob, mut r) = pair(5);
    for _ in 0..=MAX_MESSAGE_GAP + 1 {
        send(&mut alice, &a, &mut r, b"never delivered");
    }
    // Alice needs a new key from Bob to step; Bob has that reply already delivered.
    let b1 = send(&mut bob, &b, &mut r, b"b");
    recv(&mut alice, &b, &b1).unwrap();
    let m = send(&mut alice, &a, &mut r, b"new chain");
    let before = bob.clone();
    assert!(matches!(
        recv(&mut bob, &a, &m),
        Err(DecryptError::TooBigMessageGap { .. })
    ));
    assert!(same_state(&before, &bob, &b));
}

#[test]
fn replay_is_rejected_and_changes_nothing() {
    let (a, b, mut alice, mut bob, mut r) = pair(6);
    let m0 = send(&mut alice, &a, &mut r, b"once");
    let m1 = send(&mut alice, &a, &mut r, b"twice?");
    recv(&mut bob, &a, &m1).unwrap();
    recv(&mut bob, &a, &m0).unwrap();
    for m in [&m0, &m1] {
        let before = bob.clone();
        assert!(matches!(
            recv(&mut bob, &a, m),
            Err(DecryptError::Replayed { .. })
        ));
        assert!(same_state(&before, &bob, &b));
    }
    // Replays of an older chain after a DH step.
    let b1 = send(&mut bob, &b, &mut r, b"b");
    recv(&mut alice, &b, &b1).unwrap();
    let m2 = send(&mut alice, &a, &mut r, b"next chain");
    recv(&mut bob, &a, &m2).unwrap();
    assert!(matches!(
        recv(&mut bob, &a, &m0),
        Err(DecryptError::Replayed { .. })
    ));
    assert!(matches!(
        recv(&mut alice, &b, &b1),
        Err(DecryptError::Replayed { .. })
    ));
}

#[test]
fn any_bit_flip_is_rejected_without_state_change() {
    let (a, b, mut alice, mut bob, mut r) = pair(7);
    let m = send(&mut alice, &a, &mut r, b"integrity");
    let before = bob.clone();
    for i in 0..m.len() {
        for bit in [0x01u8, 0x80] {
            let mut t = m.clone();
            t[i] ^= bit;
            assert!(recv(&mut bob, &a, &t).is_err(), "flip at {i} accepted");
        }
    }
    assert!(same_state(&before, &bob, &b));
    assert_eq!(recv(&mut bob, &a, &m).unwrap(), b"integrity");
}

#[test]
fn valid_signature_over_bad_ciphertext_is_rejected_without_state_change() {
    // A malicious or buggy peer signs garbage: the AEAD rejects it, nothing changes.
    let (a, b, mut alice, mut bob, mut r) = pair(8);
    let m = send(&mut alice, &a, &mut r, b"real");
    let parsed = SignedMessage::decode(&m).unwrap();
    let mut ct = parsed.ciphertext.to_vec();
    ct[0] ^= 1;
    let forged = resign(&a, &parsed.recipient, parsed.header, &ct);
    let before = bob.clone();
    assert_eq!(recv(&mut bob, &a, &forged), Err(DecryptError::Decrypt));
    assert!(same_state(&before, &bob, &b));
    assert_eq!(recv(&mut bob, &a, &m).unwrap(), b"real");
}

fn resign(from: &Party, recipient: &[u8; 32], header: &[u8], ct: &[u8]) -> Vec<u8> {
    let len = (header.len() as u32).to_be_bytes();
    let signature = sremp::sig::sign(
        &from.sk,
        sremp::sig::SigContext::Message,
        &[&[1u8], &from.ik, recipient, &len, header, ct],
    );
    SignedMessage {
        sender: from.ik,
        recipient: *recipient,
        header,
        ciphertext: ct,
        signature,
    }
    .encode()
}

#[test]
fn re_addressed_messages_are_rejected() {
    let (a, b, mut alice, _bob, mut r) = pair(9);
    let carol = party(3);
    // Carol also has a session with Alice.
    let (mut a_c, m0) = initiate_to(&mut r, &a, &carol, b"hi carol");
    let (mut carol_s, _) = accept_from(&carol, &a, &m0);
    let reply = send(&mut carol_s, &carol, &mut r, b"hi");
    recv(&mut a_c, &carol, &reply).unwrap();

    let to_bob = send(&mut alice, &a, &mut r, b"for bob only");
    let parsed = SignedMessage::decode(&to_bob).unwrap();
    // Unchanged recipient field: Carol's session refuses it.
    assert_eq!(
        recv(&mut carol_s, &a, &to_bob),
        Err(DecryptError::WrongRecipient)
    );
    // Recipient rewritten to Carol: the signature no longer verifies.
    let mut readdressed = parsed.clone();
    readdressed.recipient = carol.ik;
    assert_eq!(
        recv(&mut carol_s, &a, &readdressed.encode()),
        Err(DecryptError::BadSignature)
    );
    // Mallory re-signs Alice's ciphertext as her own: wrong sender for Bob's session...
    let mallory = party(4);
    let stolen = resign(&mallory, &b.ik, parsed.header, parsed.ciphertext);
    assert_eq!(
        recv(&mut _bob.clone(), &a, &stolen),
        Err(DecryptError::BadSignature)
    );
    // ...and even in a session with Mallory the AEAD binds Alice's identity key.
    let (mut m_b, mm0) = initiate_to(&mut r, &mallory, &b, b"hi bob");
    let (mut b_m, _) = accept_from(&b, &mallory, &mm0);
    let _ = &mut m_b;
    let moved = SignedMessage::decode(&stolen).unwrap();
    assert!(sremp::ratchet::seal::open(&mut b_m, &mallory.vk, &moved).is_err());
}

#[test]
fn post_compromise_security_after_one_round_trip() {
    let (a, b, mut alice, mut bob, mut r) = pair(10);
    let stolen = bob.clone(); // the attacker copies Bob's state at time T
                              // One round trip: Alice -> Bob, Bob -> Alice (both DH steps with fresh keys).
    let m1 = send(&mut alice, &a, &mut r, b"after T");
    recv(&mut bob, &a, &m1).unwrap();
    let m2 = send(&mut bob, &b, &mut r, b"reply");
    recv(&mut alice, &b, &m2).unwrap();
    let mut later = Vec::new();
    for i in 0..3u8 {
        let m = send(&mut alice, &a, &mut r, &[i]);
        assert_eq!(recv(&mut bob, &a, &m).unwrap(), [i]);
        later.push(m);
        let m = send(&mut bob, &b, &mut r, &[i]);
        recv(&mut alice, &b, &m).unwrap();
    }
    // The attacker replays everything it saw into its copy: nothing after the round trip opens.
    let mut attacker = stolen;
    let _ = recv(&mut attacker, &a, &m1);
    for m in &later {
        assert!(recv(&mut attacker, &a, m).is_err());
    }
}

#[test]
fn forward_secrecy_used_keys_are_gone() {
    let (a, b, mut alice, mut bob, mut r) = pair(11);
    let ms: Vec<_> = (0..4u8)
        .map(|i| send(&mut alice, &a, &mut r, &[i]))
        .collect();
    recv(&mut bob, &a, &ms[3]).unwrap(); // skips 0..3
    recv(&mut bob, &a, &ms[1]).unwrap();
    let reply = send(&mut bob, &b, &mut r, b"r");
    recv(&mut alice, &b, &reply).unwrap();
    let later = send(&mut alice, &a, &mut r, b"later");
    recv(&mut bob, &a, &later).unwrap();
    // A copy of Bob's state taken now cannot open what Bob already read...
    let mut snapshot = bob.clone();
    for m in [&ms[1], &ms[3], &later] {
        assert!(matches!(
            recv(&mut snapshot, &a, m),
            Err(DecryptError::Replayed { .. })
        ));
    }
    // ...only the still-missing messages, whose keys are kept on purpose.
    assert_eq!(snapshot.skipped_keys(), 2);
    assert_eq!(recv(&mut snapshot, &a, &ms[0]).unwrap(), [0]);
    // Alice's sending chain has moved on too: a copy of her state cannot rebuild old keys.
    let mut alice_copy = alice.clone();
    assert!(recv(&mut alice_copy, &b, &reply).is_err());
}

#[test]
fn first_chain_messages_all_carry_the_handshake_until_answered() {
    let mut r = rng(12);
    let a = party(1);
    let b = party(2);
    let (mut alice, m0) = initiate_to(&mut r, &a, &b, b"0");
    let m1 = send(&mut alice, &a, &mut r, b"1");
    for m in [&m0, &m1] {
        let msg = SignedMessage::decode(m).unwrap();
        assert!(Header::decode(msg.header).unwrap().initial.is_some());
    }
    // m0 is lost; m1 alone establishes Bob's session.
    let (mut bob, pt) = accept_from(&b, &a, &m1);
    assert_eq!(pt, b"1");
    let reply = send(&mut bob, &b, &mut r, b"r");
    recv(&mut alice, &b, &reply).unwrap();
    let m2 = send(&mut alice, &a, &mut r, b"2");
    let msg = SignedMessage::decode(&m2).unwrap();
    assert!(Header::decode(msg.header).unwrap().initial.is_none());
    assert_eq!(recv(&mut bob, &a, &m2).unwrap(), b"2");
    assert_eq!(recv(&mut bob, &a, &m0).unwrap(), b"0");
}

#[test]
fn first_contact_rejects_wrong_noise_key_and_low_order_keys() {
    let mut r = rng(13);
    let a = party(1);
    let b = party(2);
    let (_, m0) = initiate_to(&mut r, &a, &b, b"0");
    let msg = SignedMessage::decode(&m0).unwrap();
    let header = Header::decode(msg.header).unwrap();
    let other = party(5);
    assert_eq!(
        sremp::ratchet::accept(&b.ik, &other.noise_secret, &a.ik, &header)
            .err()
            .map(|e| e.to_string()),
        Some(DecryptError::UnknownNoiseKey.to_string())
    );
    // Sealing to a low-order noise key is refused.
    assert!(sremp::ratchet::initiate(
        &mut r,
        &a.ik,
        &a.noise_secret,
        &b.ik,
        &[0u8; 32],
        sremp::time::Timestamp(0)
    )
    .is_err());
    // A header with a low-order ratchet key is refused by the responder.
    let mut bad = header.clone();
    bad.ratchet_key = [0u8; 32];
    assert!(matches!(
        sremp::ratchet::accept(&b.ik, &b.noise_secret, &a.ik, &bad),
        Err(DecryptError::LowOrderKey)
    ));
    // The wrong identity keys (prologue) break the handshake.
    assert!(sremp::ratchet::accept(&b.ik, &b.noise_secret, &other.ik, &header).is_err());
}

#[test]
fn low_order_ratchet_key_in_a_signed_message_is_rejected() {
    let (a, b, mut alice, mut bob, mut r) = pair(14);
    let m = send(&mut alice, &a, &mut r, b"x");
    let parsed = SignedMessage::decode(&m).unwrap();
    let mut h = Header::decode(parsed.header).unwrap();
    h.ratchet_key = [0u8; 32];
    let forged = resign(&a, &b.ik, &h.encode(), parsed.ciphertext);
    let before = bob.clone();
    assert_eq!(recv(&mut bob, &a, &forged), Err(DecryptError::LowOrderKey));
    assert!(same_state(&before, &bob, &b));
}

#[test]
fn unsigned_core_round_trip() {
    let (_a, _b, mut alice, mut bob, mut r) = pair(15);
    for i in 0..20u8 {
        let m = alice.encrypt(&mut r, &[i; 100]).unwrap();
        assert_eq!(bob.decrypt_message(&m).unwrap(), [i; 100]);
        let m = bob.encrypt(&mut r, &[i; 10]).unwrap();
        assert_eq!(alice.decrypt_message(&m).unwrap(), [i; 10]);
    }
}
