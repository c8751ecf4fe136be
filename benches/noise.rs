//! Noise channel benchmarks (issue 2), each beside its baseline in the same run:
//! - `setup/sremp_tcp`: a full sremp session over loopback TCP (version headers, XX handshake,
//!   identity signature verification on both sides, key checks) vs `setup/snow_in_memory`:
//!   snow's XX handshake between two in-memory states. Report: snow / sremp (target >= 0.7).
//! - `frames64k/sremp`: 64 KiB frames (one STORE_MESSAGE envelope per Noise message) over a real
//!   sremp connection vs `frames64k/raw_snow_tcp`: snow transport messages of the same size over
//!   a plain tokio TCP stream with a 2-byte length prefix. Report: sremp / raw throughput
//!   (target >= 0.8).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use sremp::identity::{Flags, UserIdentity};
use sremp::noise::stream::{HandshakeLimits, TcpConnection};
use sremp::time::Timestamp;
use sremp::wire::relay::StoreMessage;
use sremp::wire::Envelope;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const FRAMES: usize = 64;
/// Blob size so that the envelope is exactly one full Noise message (65519 plaintext bytes):
/// a `STORE_MESSAGE` adds 107 bytes (envelope head, recipient, bin16 head, signature, id).
const BLOB: usize = sremp::wire::MAX_NOISE_PLAINTEXT - 107;

fn user(name: &str) -> UserIdentity {
    UserIdentity::generate(name, Flags::default(), Timestamp(1), &mut rand::rngs::OsRng).unwrap()
}

/// Both ends run on one thread, like snow's in-memory baseline (which also runs both sides
/// serially); real peers are separate processes.
fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn snow_pair() -> (snow::HandshakeState, snow::HandshakeState) {
    let params: snow::params::NoiseParams = sremp::noise::PATTERN.parse().unwrap();
    let ki = snow::Builder::new(params.clone())
        .generate_keypair()
        .unwrap();
    let kr = snow::Builder::new(params.clone())
        .generate_keypair()
        .unwrap();
    let i = snow::Builder::new(params.clone())
        .local_private_key(&ki.private)
        .unwrap()
        .prologue(b"p")
        .unwrap()
        .build_initiator()
        .unwrap();
    let r = snow::Builder::new(params)
        .local_private_key(&kr.private)
        .unwrap()
        .prologue(b"p")
        .unwrap()
        .build_responder()
        .unwrap();
    (i, r)
}

fn snow_handshake(keys: &(Vec<u8>, Vec<u8>)) -> (snow::TransportState, snow::TransportState) {
    let params: snow::params::NoiseParams = sremp::noise::PATTERN.parse().unwrap();
    let mut i = snow::Builder::new(params.clone())
        .local_private_key(&keys.0)
        .unwrap()
        .prologue(b"p")
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut r = snow::Builder::new(params)
        .local_private_key(&keys.1)
        .unwrap()
        .prologue(b"p")
        .unwrap()
        .build_responder()
        .unwrap();
    let mut buf = [0u8; 1024];
    let mut out = [0u8; 1024];
    let n = i.write_message(&[], &mut buf).unwrap();
    r.read_message(&buf[..n], &mut out).unwrap();
    let n = r.write_message(&[], &mut buf).unwrap();
    i.read_message(&buf[..n], &mut out).unwrap();
    let n = i.write_message(&[], &mut buf).unwrap();
    r.read_message(&buf[..n], &mut out).unwrap();
    (
        i.into_transport_mode().unwrap(),
        r.into_transport_mode().unwrap(),
    )
}

fn setup(c: &mut Criterion) {
    let mut g = c.benchmark_group("setup");
    let params: snow::params::NoiseParams = sremp::noise::PATTERN.parse().unwrap();
    let ki = snow::Builder::new(params.clone())
        .generate_keypair()
        .unwrap();
    let kr = snow::Builder::new(params).generate_keypair().unwrap();
    let keys = (ki.private, kr.private);
    let _ = snow_pair();
    g.bench_function("snow_in_memory", |b| b.iter(|| snow_handshake(&keys)));

    let rt = rt();
    let server_id = Arc::new(user("server"));
    let client_id = user("client");
    // Each side owns its memory of verified identities, as a node or relay does.
    let server_cache = sremp::identity::VerifiedCache::new();
    let client_cache = sremp::identity::VerifiedCache::new();
    let server_limits = HandshakeLimits {
        verified: Some(server_cache.clone()),
        ..HandshakeLimits::default()
    };
    let (addr, mut done_rx) = rt.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let sid = server_id.clone();
        tokio::spawn(async move {
            loop {
                let (s, _) = listener.accept().await.unwrap();
                let sid = sid.clone();
                let tx = tx.clone();
                let limits = server_limits.clone();
                tokio::spawn(async move {
                    let conn = TcpConnection::accept(s, &sid, limits).await.unwrap();
                    let _ = tx.send(());
                    drop(conn);
                });
            }
        });
        (addr, rx)
    });
    let expected = Some(server_id.key());
    for cached in [true, false] {
        let name = if cached {
            "sremp_tcp"
        } else {
            "sremp_tcp_uncached"
        };
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                rt.block_on(async {
                    let start = std::time::Instant::now();
                    for _ in 0..iters {
                        if !cached {
                            server_cache.clear();
                            client_cache.clear();
                        }
                        let conn = TcpConnection::connect(
                            &addr,
                            &client_id,
                            expected,
                            HandshakeLimits {
                                verified: Some(client_cache.clone()),
                                ..HandshakeLimits::default()
                            },
                        )
                        .await
                        .unwrap();
                        // Wait until the server side has verified us too.
                        done_rx.recv().await.unwrap();
                        drop(conn);
                    }
                    start.elapsed()
                })
            })
        });
    }
    g.finish();
}

fn frames(c: &mut Criterion) {
    let mut g = c.benchmark_group("frames64k");
    g.throughput(Throughput::Bytes((FRAMES * 65_535) as u64));
    let rt = rt();

    // Raw snow transport over plain TCP.
    let params: snow::params::NoiseParams = sremp::noise::PATTERN.parse().unwrap();
    let ki = snow::Builder::new(params.clone())
        .generate_keypair()
        .unwrap();
    let kr = snow::Builder::new(params).generate_keypair().unwrap();
    let (mut ti, tr) = snow_handshake(&(ki.private, kr.private));
    let (mut raw_w, ack_rx) = rt.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (ack_tx, ack_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        tokio::spawn(async move {
            let mut tr = tr;
            let (mut s, _) = listener.accept().await.unwrap();
            s.set_nodelay(true).unwrap();
            let mut len = [0u8; 2];
            let mut buf = vec![0u8; 65_535];
            let mut out = vec![0u8; 65_535];
            loop {
                for _ in 0..FRAMES {
                    if s.read_exact(&mut len).await.is_err() {
                        return;
                    }
                    let n = u16::from_be_bytes(len) as usize;
                    s.read_exact(&mut buf[..n]).await.unwrap();
                    tr.read_message(&buf[..n], &mut out).unwrap();
                }
                let _ = ack_tx.send(());
            }
        });
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        (s, ack_rx)
    });
    let payload = vec![0x5au8; sremp::wire::MAX_NOISE_PLAINTEXT];
    let mut ack_rx = ack_rx;
    let mut frame = vec![0u8; 2 + 65_535];
    g.bench_function("raw_snow_tcp", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = std::time::Instant::now();
                for _ in 0..iters {
                    for _ in 0..FRAMES {
                        let n = ti.write_message(&payload, &mut frame[2..]).unwrap();
                        frame[..2].copy_from_slice(&(n as u16).to_be_bytes());
                        raw_w.write_all(&frame[..2 + n]).await.unwrap();
                    }
                    ack_rx.recv().await.unwrap();
                }
                start.elapsed()
            })
        })
    });

    // A real sremp connection.
    let a = user("a");
    let bsrv = user("b");
    let (mut conn, sremp_ack) = rt.block_on(async move {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (ack_tx, ack_rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let mut conn = TcpConnection::accept(s, &bsrv, HandshakeLimits::default())
                .await
                .unwrap();
            loop {
                for _ in 0..FRAMES {
                    if conn.recv().await.is_err() {
                        return;
                    }
                }
                let _ = ack_tx.send(());
            }
        });
        let conn = TcpConnection::connect(&addr, &a, None, HandshakeLimits::default())
            .await
            .unwrap();
        (conn, ack_rx)
    });
    let env = Envelope::StoreMessage(StoreMessage {
        recipient: [0x11; 32],
        encrypted_blob: vec![0x5a; BLOB],
        sender_signature: [0x22; 64],
        message_id: 1,
    });
    assert_eq!(
        env.encode().len(),
        sremp::wire::MAX_NOISE_PLAINTEXT,
        "one full frame per envelope"
    );
    let mut sremp_ack = sremp_ack;
    g.bench_function("sremp", |b| {
        b.iter_custom(|iters| {
            rt.block_on(async {
                let start = std::time::Instant::now();
                for _ in 0..iters {
                    for _ in 0..FRAMES {
                        conn.send(&env).await.unwrap();
                    }
                    sremp_ack.recv().await.unwrap();
                }
                start.elapsed()
            })
        })
    });
    g.finish();
}

criterion_group!(benches, setup, frames);
criterion_main!(benches);
