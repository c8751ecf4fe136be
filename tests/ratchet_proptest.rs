//! Property tests: random send/drop/reorder/replay schedules always decrypt to the original
//! text; arbitrary bytes never make a decoder (or decrypt) panic or change a session.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod ratchet_support;

use proptest::prelude::*;
use ratchet_support::*;
use sremp::ratchet::{Header, LocalKeys, Payload, SessionManager, SignedMessage};

#[derive(Debug, Clone)]
enum Op {
    /// Send from Alice (true) or Bob (false).
    Send(bool),
    /// Deliver the in-flight message at this index (modulo) in that direction.
    Deliver(bool, usize),
    /// Drop an in-flight message.
    Drop(bool, usize),
    /// Replay an already delivered message.
    Replay(bool, usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => any::<bool>().prop_map(Op::Send),
        4 => (any::<bool>(), any::<usize>()).prop_map(|(d, i)| Op::Deliver(d, i)),
        1 => (any::<bool>(), any::<usize>()).prop_map(|(d, i)| Op::Drop(d, i)),
        1 => (any::<bool>(), any::<usize>()).prop_map(|(d, i)| Op::Replay(d, i)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn random_schedules_decrypt_to_the_original(seed in any::<u64>(), ops in proptest::collection::vec(op(), 1..120)) {
        let (a, b, mut alice, mut bob, mut r) = pair(seed);
        // In flight and delivered, per direction (true: Alice -> Bob).
        let mut flight: [Vec<(Vec<u8>, Vec<u8>)>; 2] = [vec![], vec![]];
        let mut done: [Vec<Vec<u8>>; 2] = [vec![], vec![]];
        let mut counter = 0u32;
        for op in ops {
            match op {
                Op::Send(dir) => {
                    counter += 1;
                    let text = format!("message {counter}").into_bytes();
                    let wire = if dir { send(&mut alice, &a, &mut r, &text) } else { send(&mut bob, &b, &mut r, &text) };
                    flight[dir as usize].push((wire, text));
                }
                Op::Deliver(dir, i) | Op::Drop(dir, i) if flight[dir as usize].is_empty() => { let _ = i; }
                Op::Deliver(dir, i) => {
                    let q = &mut flight[dir as usize];
                    let (wire, text) = q.remove(i % q.len());
                    let got = if dir { recv(&mut bob, &a, &wire) } else { recv(&mut alice, &b, &wire) };
                    prop_assert_eq!(got.unwrap(), text);
                    done[dir as usize].push(wire);
                }
                Op::Drop(dir, i) => {
                    let q = &mut flight[dir as usize];
                    q.remove(i % q.len());
                }
                Op::Replay(dir, i) => {
                    let d = &done[dir as usize];
                    if d.is_empty() { continue; }
                    let wire = d[i % d.len()].clone();
                    let got = if dir { recv(&mut bob, &a, &wire) } else { recv(&mut alice, &b, &wire) };
                    prop_assert!(got.is_err());
                }
            }
        }
        // Everything still in flight arrives in the end, newest first.
        for dir in [true, false] {
            while let Some((wire, text)) = flight[dir as usize].pop() {
                let got = if dir { recv(&mut bob, &a, &wire) } else { recv(&mut alice, &b, &wire) };
                prop_assert_eq!(got.unwrap(), text);
            }
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let _ = SignedMessage::decode(&bytes);
        let _ = Header::decode(&bytes);
        let _ = Payload::decode(&bytes);
    }

    #[test]
    fn mutated_messages_never_panic_nor_change_the_session(seed in any::<u64>(), edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8), cut in any::<usize>()) {
        let (a, b, mut alice, bob, mut r) = pair(seed);
        let wire = send(&mut alice, &a, &mut r, b"payload");
        let mut bad = wire.clone();
        for (i, v) in edits {
            let n = bad.len();
            bad[i % n] ^= v | 1;
        }
        bad.truncate(cut % (wire.len() + 1));
        let mut s = bob.clone();
        if recv(&mut s, &a, &bad).is_err() {
            prop_assert!(same_state(&bob, &s, &b));
        }
    }
}

#[test]
fn arbitrary_bytes_to_the_manager_are_rejected() {
    let p = party(2);
    let dir = tempfile::tempdir().unwrap();
    let store = sremp::store::SledStore::open(dir.path()).unwrap();
    let mgr = SessionManager::new(LocalKeys::new(p.sk.clone(), p.noise_secret));
    let mut runner = proptest::test_runner::TestRunner::default();
    runner
        .run(&proptest::collection::vec(any::<u8>(), 0..300), |bytes| {
            prop_assert!(mgr.decrypt(&store, &bytes).is_err());
            Ok(())
        })
        .unwrap();
}
