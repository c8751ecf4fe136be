//! The Noise channel against a real node: bad peers are closed, good peers keep being served.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use sremp::config::Config;
use sremp::identity::{Flags, UserIdentity};
use sremp::node::{Node, NodeHandle};
use sremp::noise::stream::{HandshakeLimits, TcpConnection};
use sremp::noise::{ConnectionError, HandshakeError};
use sremp::sig::small_order::LOW_ORDER_POINTS;
use sremp::time::Timestamp;
use sremp::wire::chunk::{Chunk, ChunkHeader};
use sremp::wire::{Envelope, Version, VersionHeader};
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

fn user(name: &str) -> UserIdentity {
    UserIdentity::generate(name, Flags::default(), Timestamp(1), &mut rand::rngs::OsRng).unwrap()
}

async fn start_node(dir: &Path, handshake_ms: u64) -> NodeHandle {
    let cfg = Config::parse(&common::node_config(dir, handshake_ms), Path::new("test")).unwrap();
    Node::start(&cfg).await.unwrap()
}

fn limits() -> HandshakeLimits {
    HandshakeLimits {
        timeout: Duration::from_secs(5),
        ..HandshakeLimits::default()
    }
}

/// Reads until EOF or error, bounded; returns how long it took.
async fn wait_closed(stream: &mut TcpStream, bound: Duration) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout(bound.saturating_sub(start.elapsed()), stream.read(&mut buf))
            .await
        {
            Err(_) => panic!("connection still open after {bound:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return start.elapsed(),
            Ok(Ok(_)) => continue,
        }
    }
}

async fn good_client_works(node: &NodeHandle) {
    let c = user("good");
    // The client's own memory of verified identities: the handshake fills it.
    let verified = sremp::identity::VerifiedCache::new();
    let mut conn = TcpConnection::connect(
        &node.local_addr.to_string(),
        &c,
        Some(node.identity.key()),
        HandshakeLimits {
            verified: Some(verified.clone()),
            ..limits()
        },
    )
    .await
    .expect("a well-behaved client is still served");
    assert_eq!(conn.peer.key(), node.identity.key());
    assert_eq!(verified.len(), 1, "the peer's identity was remembered");
    conn.send(&Envelope::ConfirmationAck(
        sremp::wire::relay::ConfirmationAck {
            delivered_to: [1; 32],
            message_id: 1,
        },
    ))
    .await
    .unwrap();
}

#[tokio::test]
async fn authenticated_connection_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path(), 2000).await;
    let c = user("alice");
    let mut conn = TcpConnection::connect(
        &node.local_addr.to_string(),
        &c,
        Some(node.identity.key()),
        limits(),
    )
    .await
    .unwrap();
    assert_eq!(conn.version, Version::CURRENT);
    // Over TCP the frames always stay Noise-encrypted (only a QUIC-bound handshake drops it).
    assert!(!conn.writer.transport().is_quic_bound());
    assert!(!conn.reader.transport().is_quic_bound());
    // The node pinned us (TOFU) once the connection was served: as a stranger, not as a
    // contact (connecting makes nobody a contact).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !node
        .node
        .strangers()
        .iter()
        .any(|s| s.identity.key() == c.key())
    {
        assert!(Instant::now() < deadline, "node never pinned the client");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(node.contacts.get(&c.key()).unwrap().is_none());
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn dialing_the_wrong_identity_fails() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path(), 2000).await;
    let c = user("alice");
    let someone_else = user("bob").key();
    let err = TcpConnection::connect(
        &node.local_addr.to_string(),
        &c,
        Some(someone_else),
        limits(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            ConnectionError::Handshake(HandshakeError::UnexpectedPeer { .. })
        ),
        "{err}"
    );
    good_client_works(&node).await;
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn garbage_and_wrong_versions_are_closed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path(), 3000).await;
    for first in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"SREMP\x02\x00",
        b"\x00\x00\x00\x00\x00\x00\x00",
    ] {
        let mut s = TcpStream::connect(node.local_addr).await.unwrap();
        s.write_all(first).await.unwrap();
        let took = wait_closed(&mut s, Duration::from_secs(5)).await;
        assert!(
            took < Duration::from_millis(2500),
            "closed only at the deadline ({took:?})"
        );
    }
    good_client_works(&node).await;
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn oversized_handshake_frame_is_closed_before_reading_it() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path(), 3000).await;
    let mut s = TcpStream::connect(node.local_addr).await.unwrap();
    s.write_all(&VersionHeader(Version::CURRENT).encode())
        .await
        .unwrap();
    // Message 1 may be at most 32 bytes; claim 65535 and send none of it.
    s.write_all(&[0xff, 0xff]).await.unwrap();
    let took = wait_closed(&mut s, Duration::from_secs(5)).await;
    assert!(
        took < Duration::from_millis(2500),
        "waited for the body ({took:?})"
    );
    good_client_works(&node).await;
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn silent_and_truncated_handshakes_are_cut_at_the_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path(), 400).await;
    let start = Instant::now();
    // Silent: connect and say nothing.
    let mut silent = TcpStream::connect(node.local_addr).await.unwrap();
    // Truncated: a header and half of message 1.
    let mut trunc = TcpStream::connect(node.local_addr).await.unwrap();
    trunc
        .write_all(&VersionHeader(Version::CURRENT).encode())
        .await
        .unwrap();
    trunc.write_all(&[0x00, 0x20, 1, 2, 3, 4, 5]).await.unwrap();
    wait_closed(&mut silent, Duration::from_secs(5)).await;
    let a = start.elapsed();
    wait_closed(&mut trunc, Duration::from_secs(5)).await;
    let b = start.elapsed();
    assert!(
        a >= Duration::from_millis(300),
        "silent peer cut too early: {a:?}"
    );
    assert!(
        b >= Duration::from_millis(300),
        "truncated peer cut too early: {b:?}"
    );
    good_client_works(&node).await;
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn chunk_bomb_closes_only_that_connection() {
    let dir = tempfile::tempdir().unwrap();
    let node = start_node(dir.path(), 2000).await;
    let c = user("bomber");
    let mut conn = TcpConnection::connect(&node.local_addr.to_string(), &c, None, limits())
        .await
        .unwrap();
    let bomb = Envelope::Chunk(Chunk {
        header: ChunkHeader {
            message_id: 1,
            chunk_index: 9,
            total_chunks: 3,
            chunk_size: 1,
        },
        payload: vec![0],
    });
    conn.send(&bomb).await.unwrap();
    // The node closes: the next read sees the end of the stream.
    let r = tokio::time::timeout(Duration::from_secs(5), conn.recv())
        .await
        .expect("node did not close");
    assert!(r.is_err());
    good_client_works(&node).await;
    node.shutdown().await.unwrap();
}

#[tokio::test]
async fn large_messages_are_chunked_and_reassembled() {
    let (a, b) = (user("a"), user("b"));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        let (s, _) = listener.accept().await.unwrap();
        let mut conn = TcpConnection::accept(s, &b, limits()).await.unwrap();
        conn.recv().await.unwrap()
    });
    let mut conn = TcpConnection::connect(&addr, &a, None, limits())
        .await
        .unwrap();
    let blob: Vec<u8> = (0..300_000u32).map(|i| (i * 7) as u8).collect();
    let msg = Envelope::StoreMessage(sremp::wire::relay::StoreMessage {
        recipient: [2; 32],
        encrypted_blob: blob,
        sender_signature: [3; 64],
        message_id: 42,
    });
    conn.send(&msg).await.unwrap();
    assert_eq!(server.await.unwrap(), msg);
}

// ---- A malicious responder whose Noise static key is all-zero or of small order. ----

mod evil {
    use snow::params::{CipherChoice, DHChoice, HashChoice};
    use snow::resolvers::{CryptoResolver, DefaultResolver};
    use snow::types::{Cipher, Dh, Hash, Random};

    /// A DH whose *static* key claims to be `point` (a low-order u-coordinate). Its DH output is
    /// all-zero, which is exactly what an honest peer computes against such a point, so the
    /// handshake would complete if nobody checked.
    pub struct EvilDh {
        inner: Box<dyn Dh>,
        point: [u8; 32],
        is_static: bool,
    }

    impl Dh for EvilDh {
        fn name(&self) -> &'static str {
            self.inner.name()
        }
        fn pub_len(&self) -> usize {
            32
        }
        fn priv_len(&self) -> usize {
            32
        }
        fn set(&mut self, privkey: &[u8]) {
            self.is_static = true;
            self.inner.set(privkey)
        }
        fn generate(&mut self, rng: &mut dyn Random) -> Result<(), snow::Error> {
            self.inner.generate(rng)
        }
        fn pubkey(&self) -> &[u8] {
            if self.is_static {
                &self.point
            } else {
                self.inner.pubkey()
            }
        }
        fn privkey(&self) -> &[u8] {
            self.inner.privkey()
        }
        fn dh(&self, pubkey: &[u8], out: &mut [u8]) -> Result<(), snow::Error> {
            if self.is_static {
                out.iter_mut().for_each(|b| *b = 0);
                Ok(())
            } else {
                self.inner.dh(pubkey, out)
            }
        }
    }

    pub struct EvilResolver(pub [u8; 32]);

    impl CryptoResolver for EvilResolver {
        fn resolve_rng(&self) -> Option<Box<dyn Random>> {
            DefaultResolver.resolve_rng()
        }
        fn resolve_dh(&self, c: &DHChoice) -> Option<Box<dyn Dh>> {
            Some(Box::new(EvilDh {
                inner: DefaultResolver.resolve_dh(c)?,
                point: self.0,
                is_static: false,
            }))
        }
        fn resolve_hash(&self, c: &HashChoice) -> Option<Box<dyn Hash>> {
            DefaultResolver.resolve_hash(c)
        }
        fn resolve_cipher(&self, c: &CipherChoice) -> Option<Box<dyn Cipher>> {
            DefaultResolver.resolve_cipher(c)
        }
    }
}

async fn evil_responder(listener: TcpListener, point: [u8; 32], who: UserIdentity) {
    let (mut s, _) = listener.accept().await.unwrap();
    let ours = VersionHeader(Version::CURRENT);
    s.write_all(&ours.encode()).await.unwrap();
    let mut theirs = [0u8; 7];
    s.read_exact(&mut theirs).await.unwrap();
    let prologue = sremp::noise::prologue(VersionHeader::decode(&theirs).unwrap(), ours);
    let params = sremp::noise::PATTERN.parse().unwrap();
    let mut hs = snow::Builder::with_resolver(params, Box::new(evil::EvilResolver(point)))
        .local_private_key(&[7u8; 32])
        .unwrap()
        .prologue(&prologue)
        .unwrap()
        .build_responder()
        .unwrap();
    let mut len = [0u8; 2];
    s.read_exact(&mut len).await.unwrap();
    let mut m1 = vec![0u8; u16::from_be_bytes(len) as usize];
    s.read_exact(&mut m1).await.unwrap();
    let mut buf = vec![0u8; 70_000];
    hs.read_message(&m1, &mut buf).unwrap();
    // A perfectly valid identity of someone else is the payload: the key check must still fail.
    let n = hs
        .write_message(&who.identity().to_bytes(), &mut buf)
        .unwrap();
    s.write_all(&(n as u16).to_be_bytes()).await.unwrap();
    s.write_all(&buf[..n]).await.unwrap();
    let mut rest = [0u8; 64];
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut rest)).await;
}

#[tokio::test]
async fn all_zero_and_low_order_static_keys_are_refused() {
    for point in LOW_ORDER_POINTS {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(evil_responder(listener, point, user("victim")));
        let err = TcpConnection::connect(&addr, &user("a"), None, limits())
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ConnectionError::Handshake(HandshakeError::WeakRemoteKey)
            ),
            "point {}: {err}",
            hex::encode(point)
        );
        server.await.unwrap();
    }
}
