//! A hand-made QUIC-bound connection for tests that must see or forge the bytes on the stream:
//! the version exchange and bound Noise XX run here from the public cores (not through
//! `noise::quic`), then the caller holds the raw quinn stream halves, on which a bound
//! connection carries `u32be(len) || envelope` frames (docs/PROTOCOL.md, "QUIC transport").
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sremp::identity::{Identity, UserIdentity};
use sremp::noise::Handshake;
use sremp::transport::binding;
use sremp::transport::quic::{exporter, QuicEndpoint};
use sremp::wire::{Envelope, Version, VersionHeader};
use std::net::SocketAddr;

/// A QUIC connection on which the bound handshake ran by hand.
pub struct RawBound {
    pub conn: quinn::Connection,
    pub send: quinn::SendStream,
    pub recv: quinn::RecvStream,
    pub peer: Identity,
}

async fn read_u16_frame(r: &mut quinn::RecvStream) -> Vec<u8> {
    let mut len = [0u8; 2];
    r.read_exact(&mut len).await.unwrap();
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(len))];
    r.read_exact(&mut body).await.unwrap();
    body
}

/// Dials `addr` from `ep` as `local` and runs the version exchange and the bound Noise XX
/// handshake as initiator, by hand.
pub async fn dial(ep: &QuicEndpoint, addr: SocketAddr, local: &UserIdentity) -> RawBound {
    let conn = ep.connect_raw(addr).await.unwrap();
    let x = exporter(&conn).unwrap();
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let ours = VersionHeader(Version::CURRENT);
    send.write_all(&ours.encode()).await.unwrap();
    let mut theirs = [0u8; 7];
    recv.read_exact(&mut theirs).await.unwrap();
    let theirs = VersionHeader::decode(&theirs).unwrap();
    let prologue = binding::prologue(ours, theirs, &x);
    let mut hs = Handshake::initiator(local, &prologue, None).unwrap();
    while !hs.is_finished() {
        if hs.is_my_turn() {
            let m = hs.write_message().unwrap();
            let mut f = (m.len() as u16).to_be_bytes().to_vec();
            f.extend_from_slice(&m);
            send.write_all(&f).await.unwrap();
        } else {
            let m = read_u16_frame(&mut recv).await;
            hs.read_message(&m).unwrap();
        }
    }
    let (_, _, peer) = hs.finish().unwrap();
    RawBound {
        conn,
        send,
        recv,
        peer,
    }
}

/// `u32be(len) || envelope`: one frame of a bound QUIC stream.
pub fn frame(env: &Envelope) -> Vec<u8> {
    let body = env.encode();
    let mut f = (body.len() as u32).to_be_bytes().to_vec();
    f.extend_from_slice(&body);
    f
}

/// Reads one `u32be(len) || body` frame's raw bytes (header included).
pub async fn read_frame(r: &mut quinn::RecvStream) -> Vec<u8> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len).await.unwrap();
    let n = u32::from_be_bytes(len) as usize;
    assert!(n <= 8 << 20, "frame of {n} bytes");
    let mut f = len.to_vec();
    f.resize(4 + n, 0);
    r.read_exact(&mut f[4..]).await.unwrap();
    f
}
