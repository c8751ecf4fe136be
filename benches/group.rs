//! Group chat encryption cost against one-to-one, in the same run. Run:
//! `cargo bench --bench group`.
//!
//! - `group/pairwise_seal`: what one one-to-one message costs the sender: payload encode,
//!   Double Ratchet encrypt, sign, encode (`ratchet::seal::seal`), 100-byte text.
//! - `group/group_encrypt/N`: what one group message costs its author for a group of N
//!   members: payload encode, one sender-key step, one AEAD, one signature, the envelope
//!   encoding and the recipient list (`group::Group::encrypt`). Target: at most 1.2x
//!   `pairwise_seal`, and flat in N.
//! - `group/group_send_total/N`: `group_encrypt` plus the pairwise seal of the same envelope
//!   for each of the N - 1 other members (each copy travels as a pairwise message): the whole
//!   CPU cost of a group send, which does grow with N.

// A benchmark, not code that handles peer input: failing loudly is what we want.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use ed25519_dalek::SigningKey;
use rand_chacha::rand_core::SeedableRng;
use rand_chacha::ChaCha20Rng;
use sremp::group::Group;
use sremp::identity::IdentityKey;
use sremp::ratchet::seal::seal;
use sremp::ratchet::{initiate, Content, MessageId, Payload, Session};
use sremp::time::Timestamp;
use x25519_dalek::{PublicKey, StaticSecret};

const TEXT: &str = "0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789";

fn session(rng: &mut ChaCha20Rng, peer: u8) -> Session {
    let a_ik = SigningKey::from_bytes(&[1; 32]).verifying_key().to_bytes();
    let b_ik = SigningKey::from_bytes(&[peer; 32])
        .verifying_key()
        .to_bytes();
    let b_noise_pub = PublicKey::from(&StaticSecret::from([peer; 32])).to_bytes();
    initiate(rng, &a_ik, &[11; 32], &b_ik, &b_noise_pub, Timestamp(0)).unwrap()
}

fn group_of(rng: &mut ChaCha20Rng, signer: &SigningKey, n: usize) -> Group {
    let others: Vec<IdentityKey> = (0..n - 1)
        .map(|i| {
            IdentityKey(
                SigningKey::from_bytes(&[i as u8 + 2; 32])
                    .verifying_key()
                    .to_bytes(),
            )
        })
        .collect();
    Group::create(rng, signer, "bench", &others, Timestamp(0))
        .unwrap()
        .0
}

fn bench(c: &mut Criterion) {
    let signer = SigningKey::from_bytes(&[1; 32]);
    let mut rng = ChaCha20Rng::seed_from_u64(7);
    let mut g = c.benchmark_group("group");
    let mut s = session(&mut rng, 2);
    g.bench_function("pairwise_seal", |b| {
        b.iter(|| {
            let p = Payload::text(&mut rng, Timestamp(1), TEXT);
            black_box(seal(&mut s, &signer, &mut rng, &p.encode()).unwrap())
        })
    });
    for n in [2usize, 10, 32] {
        let mut group = group_of(&mut rng, &signer, n);
        g.bench_with_input(BenchmarkId::new("group_encrypt", n), &n, |b, _| {
            b.iter(|| {
                let p = Payload::text(&mut rng, Timestamp(1), TEXT);
                black_box(group.encrypt(&signer, &p).unwrap())
            })
        });
    }
    for n in [2usize, 10, 32] {
        let mut group = group_of(&mut rng, &signer, n);
        let mut sessions: Vec<Session> =
            (0..n - 1).map(|i| session(&mut rng, i as u8 + 2)).collect();
        g.bench_with_input(BenchmarkId::new("group_send_total", n), &n, |b, _| {
            b.iter(|| {
                let p = Payload::text(&mut rng, Timestamp(1), TEXT);
                let (env, _to) = group.encrypt(&signer, &p).unwrap();
                for s in sessions.iter_mut() {
                    let copy = Payload {
                        id: MessageId::random(&mut rng),
                        sent_at: Timestamp(1),
                        content: Content::Other {
                            kind: sremp::group::control::PAYLOAD_KIND,
                            data: env.clone(),
                        },
                    };
                    black_box(seal(s, &signer, &mut rng, &copy.encode()).unwrap());
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
