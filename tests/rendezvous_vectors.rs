//! Known-answer vector for the rendezvous registration signature
//! (tests/vectors/rendezvous_register.json, described in docs/PROTOCOL.md "Rendezvous").
//!
//! The identity comes from tests/vectors/identity.json. Every value is recomputed and compared
//! byte for byte; `SREMP_REGEN_VECTORS=1` rewrites the file after an intentional change.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use serde_json::{json, Value};
use sremp::identity::{Identity, UserIdentity};
use sremp::rendezvous::core::{register_signed_input, sign_register, Limits, Registry, Session};
use sremp::sig::SigContext;
use sremp::time::Timestamp;
use sremp::wire::rendezvous::{RawIdentity, RelayHint};
use sremp::wire::{Endpoint, Envelope};
use std::path::PathBuf;

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(name)
}

fn hex32(v: &Value) -> [u8; 32] {
    let mut out = [0u8; 32];
    hex::decode_to_slice(v.as_str().unwrap(), &mut out).unwrap();
    out
}

#[test]
fn registration_signature_vector() {
    let id: Value =
        serde_json::from_str(&std::fs::read_to_string(path("identity.json")).unwrap()).unwrap();
    let identity =
        Identity::from_bytes(&hex::decode(id["identity_wire"].as_str().unwrap()).unwrap()).unwrap();
    let user = UserIdentity::from_secrets(
        &hex32(&id["ed25519_seed"]),
        &hex32(&id["x25519_secret"]),
        identity,
    )
    .unwrap();

    let exporter = [0x33u8; 32];
    let server_name = "rv1.example.org";
    let endpoint = Endpoint::new("alice.example.net", 7480).unwrap();
    let ttl = 600;
    let timestamp = Timestamp(1_767_225_600_000);
    let relays = vec![RelayHint {
        endpoint: Endpoint::new("relay.example.net", 7490).unwrap(),
        relay_key: [0x44; 32],
    }];

    let raw = RawIdentity::from_identity(user.identity());
    let input = register_signed_input(
        &exporter,
        server_name,
        &user.key().0,
        &raw,
        &endpoint,
        ttl,
        timestamp,
        &relays,
    )
    .unwrap();
    let mut signed = SigContext::RendezvousRegister.prefix().to_vec();
    signed.extend_from_slice(&input);
    let req = sign_register(
        &user,
        &exporter,
        server_name,
        &endpoint,
        ttl,
        timestamp,
        &relays,
    )
    .unwrap();
    let envelope = Envelope::from(req.clone()).encode();

    // The server accepts exactly this request on a session with this exporter value.
    let mut reg = Registry::new(server_name, Limits::default());
    reg.register(&mut Session::new(exporter), &req, timestamp)
        .unwrap();

    let computed = json!({
        "description": "REGISTER_REQUEST of the identity in identity.json: exporter 0x33*32, server rv1.example.org, endpoint alice.example.net:7480, ttl 600, timestamp 2026-01-01T00:00:00Z, one relay relay.example.net:7490 with key 0x44*32",
        "tls_exporter_label": String::from_utf8(sremp::rendezvous::core::EXPORTER_LABEL.to_vec()).unwrap(),
        "tls_exporter": hex::encode(exporter),
        "server_name": server_name,
        "identity_wire": id["identity_wire"],
        "signed_message": hex::encode(&signed),
        "signature": hex::encode(req.signature),
        "envelope": hex::encode(&envelope),
    });
    let p = path("rendezvous_register.json");
    if std::env::var_os("SREMP_REGEN_VECTORS").is_some() {
        std::fs::write(&p, serde_json::to_string_pretty(&computed).unwrap() + "\n").unwrap();
        return;
    }
    let stored: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    assert_eq!(
        stored, computed,
        "rendezvous_register.json no longer matches the implementation"
    );
    // And the envelope decodes back to the same request.
    assert_eq!(Envelope::decode(&envelope).unwrap(), Envelope::from(req));
}
