//! QUIC transport: the bound Noise handshake (known-answer vector), authenticated connections
//! both ways, a man in the middle that terminates QUIC, and bad bytes on the stream; after the
//! bound handshake, envelopes as plain `u32be(len) || envelope` frames (byte-exact, up to the
//! 4 MiB limit) and bad frames closing only their connection with a typed error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use sremp::identity::{
    Flags, Identity, IdentityKey, IdentityVerifiedData, NoiseKey, UserIdentity, Username,
};
use sremp::noise::quic::{accept_incoming, connect};
use sremp::noise::stream::HandshakeLimits;
use sremp::noise::transport::TransportError;
use sremp::noise::{ConnectionError, Handshake, HandshakeError};
use sremp::time::Timestamp;
use sremp::transport::binding::{self, Exporter};
use sremp::transport::quic::{QuicEndpoint, QuicSettings};
use sremp::transport::Transport;
use sremp::wire::{Envelope, Version, VersionHeader};
use std::path::PathBuf;

#[path = "common/quic_raw.rs"]
mod quic_raw;
use std::sync::Arc;
use std::time::Duration;

fn fixed_user(seed: u8, noise: u8, name: &str) -> UserIdentity {
    let sk = ed25519_dalek::SigningKey::from_bytes(&[seed; 32]);
    let ns = x25519_dalek::StaticSecret::from([noise; 32]);
    let data = IdentityVerifiedData {
        username: Username::new(name).unwrap(),
        identity_key: IdentityKey(sk.verifying_key().to_bytes()),
        noise_key: NoiseKey(x25519_dalek::PublicKey::from(&ns).to_bytes()),
        flags: Flags {
            uses_relay: true,
            ..Flags::default()
        },
        extensions: None,
        version: 1,
        created: Timestamp(1_767_225_600_000),
    };
    let id = Identity::sign(data, &sk).unwrap();
    UserIdentity::from_secrets(&[seed; 32], &[noise; 32], id).unwrap()
}

fn user(name: &str) -> UserIdentity {
    UserIdentity::generate(name, Flags::default(), Timestamp(1), &mut rand::rngs::OsRng).unwrap()
}

fn limits() -> HandshakeLimits {
    HandshakeLimits {
        timeout: Duration::from_secs(5),
        ..HandshakeLimits::default()
    }
}

fn vector_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/quic_binding.json")
}

/// Exporter value -> prologue bytes -> handshake transcript hash, with fixed keys. Run with
/// `SREMP_REGEN_VECTORS=1` to rewrite after an intentional change (and update
/// docs/PROTOCOL.md).
#[test]
fn quic_binding_vector() {
    let alice = fixed_user(0x11, 0x22, "alice");
    let bob = fixed_user(0x33, 0x44, "bob");
    let exporter = Exporter([0xa5; 32]);
    let h10 = VersionHeader(Version::CURRENT);
    let h13 = VersionHeader(Version { major: 1, minor: 3 });
    let p = binding::prologue(h10, h13, &exporter);
    let (ei, er) = ([0x55u8; 32], [0x66u8; 32]);
    let mut i =
        Handshake::with_fixed_ephemeral_for_testing_only(&alice, &p, Some(bob.key()), true, &ei)
            .unwrap();
    let mut r =
        Handshake::with_fixed_ephemeral_for_testing_only(&bob, &p, None, false, &er).unwrap();
    let m1 = i.write_message().unwrap();
    r.read_message(&m1).unwrap();
    let m2 = r.write_message().unwrap();
    i.read_message(&m2).unwrap();
    let m3 = i.write_message().unwrap();
    r.read_message(&m3).unwrap();
    let hash = i.handshake_hash();
    assert_eq!(hash, r.handshake_hash());

    // The same keys with another exporter value: the responder's message 2 no longer opens.
    let p2 = binding::prologue(h10, h13, &Exporter([0x5a; 32]));
    let mut i2 =
        Handshake::with_fixed_ephemeral_for_testing_only(&alice, &p2, Some(bob.key()), true, &ei)
            .unwrap();
    i2.write_message().unwrap();
    assert!(matches!(i2.read_message(&m2), Err(HandshakeError::Noise)));

    let computed = json!({
        "description": "QUIC channel binding (ALPN sremp/2): Noise XX prologue = label (SREMP-1 quic-bound-prologue\\0) || initiator header (1.0) || responder header (1.3) || TLS exporter (label EXPORTER-SREMP-1 quic-noise-binding, empty context, 32 bytes); identities as in handshake_xx.json. After the handshake: u32be(len) || envelope frames inside QUIC, no Noise transport encryption; frame_after_handshake is the frame of confirmation_ack(delivered_to 07*32, message_id 7)",
        "alpn": String::from_utf8_lossy(sremp::transport::quic::ALPN),
        "frame_after_handshake": hex::encode(quic_raw::frame(&ack(7))),
        "exporter_label": String::from_utf8_lossy(binding::EXPORTER_LABEL),
        "exporter_context": hex::encode(binding::EXPORTER_CONTEXT),
        "exporter": hex::encode(exporter.0),
        "initiator_header": hex::encode(h10.encode()),
        "responder_header": hex::encode(h13.encode()),
        "prologue": hex::encode(&p),
        "initiator": {
            "ed25519_seed": hex::encode([0x11u8; 32]),
            "static_secret": hex::encode([0x22u8; 32]),
            "ephemeral_secret": hex::encode(ei),
        },
        "responder": {
            "ed25519_seed": hex::encode([0x33u8; 32]),
            "static_secret": hex::encode([0x44u8; 32]),
            "ephemeral_secret": hex::encode(er),
        },
        "message_1": hex::encode(&m1),
        "message_2": hex::encode(&m2),
        "message_3": hex::encode(&m3),
        "handshake_hash": hex::encode(hash),
    });
    let path = vector_path();
    if std::env::var_os("SREMP_REGEN_VECTORS").is_some() {
        std::fs::write(
            &path,
            serde_json::to_string_pretty(&computed).unwrap() + "\n",
        )
        .unwrap();
        return;
    }
    let stored: Value =
        serde_json::from_str(&std::fs::read_to_string(&path).expect("vector file")).unwrap();
    assert_eq!(stored, computed, "quic_binding.json no longer matches");
}

fn endpoint() -> QuicEndpoint {
    QuicEndpoint::bind("127.0.0.1:0".parse().unwrap(), QuicSettings::default()).unwrap()
}

/// Serves `ep` with `local` until the test ends: authenticated connections echo envelopes;
/// every handshake result is reported on `results`.
fn serve(
    ep: QuicEndpoint,
    local: Arc<UserIdentity>,
    results: tokio::sync::mpsc::UnboundedSender<Result<IdentityKey, String>>,
) {
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let local = local.clone();
            let results = results.clone();
            tokio::spawn(async move {
                match accept_incoming(incoming, &local, limits(), || ()).await {
                    Ok(mut conn) => {
                        assert_eq!(conn.transport, Transport::Quic);
                        let _ = results.send(Ok(conn.peer.key()));
                        while let Ok(env) = conn.recv().await {
                            if conn.send(&env).await.is_err() {
                                break;
                            }
                        }
                    }
                    Err(e) => {
                        let _ = results.send(Err(e.to_string()));
                    }
                }
            });
        }
    });
}

fn ack(id: u64) -> Envelope {
    Envelope::ConfirmationAck(sremp::wire::relay::ConfirmationAck {
        delivered_to: [7; 32],
        message_id: id,
    })
}

#[tokio::test]
async fn quic_connection_authenticates_both_ways() {
    let (a, b) = (user("alice"), Arc::new(user("bob")));
    let (ea, eb) = (endpoint(), endpoint());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    serve(eb.clone(), b.clone(), tx);
    let mut conn = connect(&ea, eb.local_addr().unwrap(), &a, Some(b.key()), limits())
        .await
        .unwrap();
    assert_eq!(conn.transport, Transport::Quic);
    assert_eq!(conn.peer.key(), b.key());
    assert_eq!(rx.recv().await.unwrap().unwrap(), a.key());
    conn.send(&ack(7)).await.unwrap();
    assert_eq!(conn.recv().await.unwrap(), ack(7));

    // Dialling the right address but expecting someone else fails with the typed error.
    let c = user("carol");
    let err = connect(&ea, eb.local_addr().unwrap(), &a, Some(c.key()), limits())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            ConnectionError::Handshake(HandshakeError::UnexpectedPeer { .. })
        ),
        "{err}"
    );
}

/// Mallory terminates QUIC with her own certificate on both sides and relays the stream bytes
/// unchanged between Alice and Bob. The two QUIC connections have different exporter values,
/// so the Noise prologues differ and Alice cannot open Bob's message 2.
#[tokio::test]
async fn quic_mitm_terminating_tls_cannot_complete_noise() {
    let (a, b) = (user("alice"), Arc::new(user("bob")));
    let (ea, eb, em) = (endpoint(), endpoint(), endpoint());
    let (tx, mut bob_results) = tokio::sync::mpsc::unbounded_channel();
    serve(eb.clone(), b.clone(), tx);
    let bob_addr = eb.local_addr().unwrap();
    let em2 = em.clone();
    let relay = tokio::spawn(async move {
        let incoming = em2.accept().await.unwrap();
        let from_alice = incoming.await.unwrap();
        let (mut a_send, mut a_recv) = from_alice.accept_bi().await.unwrap();
        let to_bob = em2.connect_raw(bob_addr).await.unwrap();
        let (mut b_send, mut b_recv) = to_bob.open_bi().await.unwrap();
        let up = async {
            let _ = tokio::io::copy(&mut a_recv, &mut b_send).await;
        };
        let down = async {
            let _ = tokio::io::copy(&mut b_recv, &mut a_send).await;
        };
        tokio::join!(up, down);
        (from_alice, to_bob)
    });
    let err = connect(&ea, em.local_addr().unwrap(), &a, Some(b.key()), limits())
        .await
        .unwrap_err();
    assert!(
        matches!(err, ConnectionError::Handshake(HandshakeError::Noise)),
        "Alice must fail the bound handshake, got {err}"
    );
    // Bob never authenticates anyone through Mallory.
    let bob_saw = tokio::time::timeout(Duration::from_secs(10), bob_results.recv())
        .await
        .expect("bob's handshake ends within its deadline")
        .unwrap();
    assert!(
        bob_saw.is_err(),
        "bob authenticated a peer through the MITM"
    );
    relay.abort();
}

/// Garbage instead of a version header on the QUIC stream: the connection is closed, and the
/// endpoint goes on serving a well-behaved peer.
#[tokio::test]
async fn quic_bad_bytes_close_the_connection_and_serving_continues() {
    let (a, b) = (user("alice"), Arc::new(user("bob")));
    let (ea, eb) = (endpoint(), endpoint());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    serve(eb.clone(), b.clone(), tx);
    let raw = ea.connect_raw(eb.local_addr().unwrap()).await.unwrap();
    let (mut send, mut recv) = raw.open_bi().await.unwrap();
    send.write_all(b"GARBAGE-NOT-SREMP\xff\xff\xff\xff")
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(got.is_err(), "garbage was accepted");
    // The connection is closed by the server.
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 64];
        loop {
            match recv.read(&mut buf).await {
                Ok(None) | Err(_) => break,
                Ok(_) => continue,
            }
        }
        raw.closed().await
    })
    .await
    .expect("server closes the connection");
    assert!(
        matches!(closed, quinn::ConnectionError::ApplicationClosed(ref c) if c.error_code == 1u32.into()),
        "{closed:?}"
    );
    let mut conn = connect(&ea, eb.local_addr().unwrap(), &a, Some(b.key()), limits())
        .await
        .unwrap();
    conn.send(&ack(1)).await.unwrap();
    assert_eq!(conn.recv().await.unwrap(), ack(1));
}

fn store(id: u64, blob: usize) -> Envelope {
    Envelope::StoreMessage(sremp::wire::relay::StoreMessage {
        recipient: [1; 32],
        encrypted_blob: vec![(id % 251) as u8; blob],
        sender_signature: [2; 64],
        message_id: id,
    })
}

/// A store envelope whose encoding is exactly `len` bytes.
fn store_of_len(id: u64, len: usize) -> Envelope {
    let overhead = store(id, 0).encode().len();
    // msgpack's bin length field grows with the blob: step down until it fits exactly.
    let mut blob = len - overhead;
    while store(id, blob).encode().len() > len {
        blob -= 1;
    }
    let e = store(id, blob);
    assert_eq!(e.encode().len(), len);
    e
}

/// A bound connection moves envelopes both ways as `u32be(len) || envelope` frames: a frame
/// near 64 KiB and one at the 4 MiB limit are echoed intact; one byte over the limit is refused
/// locally with a typed error and the connection goes on working. TCP halves stay Noise halves.
#[tokio::test]
async fn quic_bound_connection_moves_envelopes_up_to_the_limit() {
    let (a, b) = (user("alice"), Arc::new(user("bob")));
    let (ea, eb) = (endpoint(), endpoint());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    serve(eb.clone(), b.clone(), tx);
    let mut conn = connect(&ea, eb.local_addr().unwrap(), &a, Some(b.key()), limits())
        .await
        .unwrap();
    assert!(rx.recv().await.unwrap().is_ok());
    assert!(conn.writer.transport().is_quic_bound());
    assert!(conn.reader.transport().is_quic_bound());
    let max = sremp::wire::chunk::Limits::default().max_message;
    for env in [
        store_of_len(1, 65_531),
        ack(2),
        store_of_len(3, 2 << 20),
        store_of_len(4, max),
        store_of_len(5, 65_540),
    ] {
        conn.send(&env).await.unwrap();
        let back = tokio::time::timeout(Duration::from_secs(20), conn.recv())
            .await
            .expect("echo within 20 s")
            .unwrap();
        assert!(back == env, "echo differs");
    }
    let err = conn.send(&store_of_len(6, max + 1)).await.unwrap_err();
    assert!(
        matches!(
            err,
            ConnectionError::Transport(TransportError::TooLarge { len, max: m }) if len == max + 1 && m == max
        ),
        "{err}"
    );
    conn.send(&ack(7)).await.unwrap();
    assert_eq!(conn.recv().await.unwrap(), ack(7));
}

/// On the wire, after the bound handshake, the stream carries the envelope bytes themselves
/// behind a u32be length: no Noise encryption, no chunking (checked against a handshake run by
/// hand from the public cores).
#[tokio::test]
async fn quic_bound_frames_are_length_and_envelope_on_the_stream() {
    let (a, b) = (user("alice"), Arc::new(user("bob")));
    let (ea, eb) = (endpoint(), endpoint());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    serve(eb.clone(), b.clone(), tx);
    let mut raw = quic_raw::dial(&ea, eb.local_addr().unwrap(), &a).await;
    assert_eq!(raw.peer.key(), b.key());
    assert_eq!(rx.recv().await.unwrap().unwrap(), a.key());
    for env in [ack(9), store_of_len(10, 65_531), store_of_len(11, 300_000)] {
        let f = quic_raw::frame(&env);
        raw.send.write_all(&f).await.unwrap();
        let back =
            tokio::time::timeout(Duration::from_secs(10), quic_raw::read_frame(&mut raw.recv))
                .await
                .expect("echo within 10 s");
        assert!(back == f, "the echoed frame is not u32be(len) || envelope");
    }
}

/// Serves `ep` with `local`: every bound connection's first receive result is reported.
fn serve_first_recv(
    ep: QuicEndpoint,
    local: Arc<UserIdentity>,
    results: tokio::sync::mpsc::UnboundedSender<Result<Envelope, ConnectionError>>,
) {
    tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            let local = local.clone();
            let results = results.clone();
            tokio::spawn(async move {
                if let Ok(mut conn) = accept_incoming(incoming, &local, limits(), || ()).await {
                    let r = conn.recv().await;
                    let ok = r.is_ok();
                    let _ = results.send(r);
                    if ok {
                        let _ = conn.send(&ack(0)).await;
                        let _ = conn.recv().await;
                    }
                }
            });
        }
    });
}

/// After a completed bound handshake, a frame over the 4 MiB limit, a frame cut short by the
/// end of the stream, an undecodable body and a `Chunk` envelope each end that connection with
/// a typed error and QUIC application code 1; the endpoint goes on serving.
#[tokio::test]
async fn quic_bound_bad_frames_close_the_connection_with_a_typed_error() {
    use sremp::wire::frame::FrameError;
    let (a, b) = (user("alice"), Arc::new(user("bob")));
    let (ea, eb) = (endpoint(), endpoint());
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    serve_first_recv(eb.clone(), b.clone(), tx);
    let addr = eb.local_addr().unwrap();
    let max = sremp::wire::chunk::Limits::default().max_message;
    let mut cut = 1000u32.to_be_bytes().to_vec();
    cut.extend_from_slice(&[0x93; 10]);
    let chunk = Envelope::Chunk(sremp::wire::chunk::split(1, &[0u8; 70_000]).next().unwrap());
    let cases: Vec<(Vec<u8>, bool, &str)> = vec![
        (
            u32::MAX.to_be_bytes().to_vec(),
            false,
            "oversized (u32::MAX)",
        ),
        (
            ((max + 1) as u32).to_be_bytes().to_vec(),
            false,
            "oversized (limit + 1)",
        ),
        (cut, true, "truncated"),
        (vec![0, 0, 0, 3, 0xc1, 0xc1, 0xc1], false, "undecodable"),
        (quic_raw::frame(&chunk), false, "chunk"),
    ];
    for (bytes, finish, what) in cases {
        let mut raw = quic_raw::dial(&ea, addr, &a).await;
        raw.send.write_all(&bytes).await.unwrap();
        if finish {
            raw.send.finish().unwrap();
        }
        let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("the server's receive ends")
            .unwrap();
        let err = got.expect_err(what);
        let typed = match what {
            "oversized (u32::MAX)" => matches!(
                err,
                ConnectionError::Frame(FrameError::TooLarge { len: 0xffff_ffff, max: m }) if m == max
            ),
            "oversized (limit + 1)" => matches!(
                err,
                ConnectionError::Frame(FrameError::TooLarge { len, max: m }) if len == max + 1 && m == max
            ),
            "truncated" => {
                matches!(err, ConnectionError::Frame(FrameError::Io(ref e)) if e.kind() == std::io::ErrorKind::UnexpectedEof)
            }
            "undecodable" => matches!(err, ConnectionError::Transport(TransportError::Decode(_))),
            _ => matches!(err, ConnectionError::Transport(TransportError::ChunkOnQuic)),
        };
        assert!(typed, "{what}: {err:?}");
        let closed = tokio::time::timeout(Duration::from_secs(10), raw.conn.closed())
            .await
            .expect("the server closes the connection");
        assert!(
            matches!(closed, quinn::ConnectionError::ApplicationClosed(ref c) if c.error_code == 1u32.into()),
            "{what}: {closed:?}"
        );
    }
    // A well-behaved peer is still served.
    let mut conn = connect(&ea, addr, &a, Some(b.key()), limits())
        .await
        .unwrap();
    conn.send(&ack(1)).await.unwrap();
    assert!(rx.recv().await.unwrap().is_ok());
    assert_eq!(conn.recv().await.unwrap(), ack(0));
}
