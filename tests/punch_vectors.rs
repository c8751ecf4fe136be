//! Known-answer vector for hole punching (tests/vectors/punch.json): the signed bytes, the
//! Ed25519 signature (context `SREMP-1 punch`), the MessagePack body and the `PUNCH_RELAY`
//! envelope (relay kind 0x2d) as docs/PROTOCOL.md ("Hole punching") specifies them, and that
//! the body opens for its recipient and for nobody else.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ed25519_dalek::SigningKey;
use sremp::transport::punch::{Mapping, PunchKind, PunchMessage};
use sremp::wire::relay::PunchRelay;
use sremp::wire::Envelope;
use std::path::PathBuf;

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn seed(v: &serde_json::Value) -> [u8; 32] {
    let s = v.as_str().unwrap();
    let mut out = [0u8; 32];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
    }
    out
}

#[test]
fn punch_vector() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/punch.json");
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let sender = SigningKey::from_bytes(&seed(&v["sender_ed25519_seed"]));
    let recipient = SigningKey::from_bytes(&seed(&v["recipient_ed25519_seed"]));
    let rk = recipient.verifying_key().to_bytes();
    let candidates: Vec<std::net::SocketAddr> = v["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().parse().unwrap())
        .collect();
    let m = PunchMessage::sign(
        &sender,
        PunchKind::Connect,
        v["attempt"].as_u64().unwrap(),
        rk,
        v["timestamp"].as_u64().unwrap(),
        Mapping::EndpointIndependent,
        &candidates,
    );
    assert_eq!(m.kind, v["kind"].as_u64().unwrap() as u8);
    assert_eq!(m.mapping, v["mapping"].as_u64().unwrap() as u8);
    assert_eq!(hex(&m.signed_bytes()), v["signed_bytes"]);
    assert_eq!(hex(&m.signature), v["signature"]);
    let body = m.encode();
    assert_eq!(hex(&body), v["body"]);
    let env = Envelope::PunchRelay(PunchRelay {
        peer: rk,
        body: body.clone(),
    });
    assert_eq!(hex(&env.encode()), v["envelope_to_relay"]);
    assert_eq!(Envelope::decode(&env.encode()).unwrap(), env);
    let sk = sender.verifying_key().to_bytes();
    let now = v["timestamp"].as_u64().unwrap() + 1000;
    let p = PunchMessage::open(&body, &sk, &rk, now).unwrap();
    assert_eq!(p.candidates, candidates);
    assert!(PunchMessage::open(&body, &sk, &sk, now).is_err());
    assert!(PunchMessage::open(&body, &rk, &rk, now).is_err());
}
