//! Known-answer vectors for group chats (`tests/vectors/group.json`): a signed membership, three
//! messages of one sender-key chain, and the control envelopes (the receipt, type 10,
//! included), from fixed keys.
//!
//! The test re-derives every message from the byte-exact description in docs/PROTOCOL.md
//! ("Groups") with the primitives alone (hmac, chacha20poly1305, ed25519-dalek), compares with
//! what the library produces and with the file, and opens each message with the library's
//! receiver. Regenerate with `SREMP_WRITE_VECTORS=1 cargo test --test group_vectors`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use chacha20poly1305::aead::{Aead, KeyInit, Payload as AeadPayload};
use chacha20poly1305::ChaCha20Poly1305;
use ed25519_dalek::{Signer, SigningKey};
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use sremp::group::control::{Delivered, ForwardRequest, Forwarded, SignedInner};
use sremp::group::{
    Control, GroupId, Invite, Member, Membership, ReceiverKey, SenderKey, SenderKeyDistribution,
};
use sremp::identity::IdentityKey;
use sremp::ratchet::{Content, MessageId, Payload};
use sremp::time::Timestamp;

const PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/vectors/group.json");

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn ik(k: &SigningKey) -> IdentityKey {
    IdentityKey(k.verifying_key().to_bytes())
}

fn hmac(k: &[u8; 32], b: u8) -> [u8; 32] {
    let mut m = <Hmac<Sha256> as Mac>::new_from_slice(k).unwrap();
    m.update(&[b]);
    m.finalize().into_bytes().into()
}

fn vectors() -> Value {
    let creator = key(0xa1);
    let members = [key(0xb2), key(0xc3)];
    let gid = GroupId([0x42; 16]);
    let m = Membership::new(
        gid,
        "team",
        ik(&creator),
        &members.iter().map(ik).collect::<Vec<_>>(),
        Timestamp(1_700_000_000_000),
    )
    .unwrap();
    let signed = m.sign(&creator).unwrap();
    // Spec: signature = Ed25519(creator, "SREMP-1 group-membership\0" || membership bytes).
    let mut msg = b"SREMP-1 group-membership\0".to_vec();
    msg.extend_from_slice(&signed.membership);
    assert_eq!(creator.sign(&msg).to_bytes(), signed.signature);
    assert_eq!(signed.verify().unwrap(), m);

    let ck0 = [0x07u8; 32];
    let dist = SenderKeyDistribution {
        generation: 0,
        chain_key: ck0,
        seq: 0,
    };
    let mut sender = SenderKey {
        chain: dist.clone(),
    };
    let mut receiver = ReceiverKey::new(dist.clone());
    let mut ck = ck0;
    let mut out = Vec::new();
    for (i, text) in ["Hello group", "Second", "Third, with ünïcode"]
        .iter()
        .enumerate()
    {
        let seq = i as u32;
        let payload = Payload {
            id: MessageId([i as u8 + 1; 16]),
            sent_at: Timestamp(1_700_000_000_000 + i as u64),
            content: Content::Text((*text).to_string()),
        };
        let plaintext = payload.encode();
        let gm = sender.encrypt(gid, &creator, &plaintext).unwrap();
        // Spec, from the primitives: mk = HMAC(ck, 0x01), ck' = HMAC(ck, 0x02);
        // ad = group_id || sender || generation BE4 || seq BE4; zero nonce;
        // signature over "SREMP-1 group-message\0" || ad || ciphertext.
        let mk = hmac(&ck, 0x01);
        ck = hmac(&ck, 0x02);
        let mut ad = gid.0.to_vec();
        ad.extend_from_slice(&ik(&creator).0);
        ad.extend_from_slice(&0u32.to_be_bytes());
        ad.extend_from_slice(&seq.to_be_bytes());
        let ct = ChaCha20Poly1305::new((&mk).into())
            .encrypt(
                &[0u8; 12].into(),
                AeadPayload {
                    msg: &plaintext,
                    aad: &ad,
                },
            )
            .unwrap();
        assert_eq!(gm.ciphertext, ct);
        let mut signed_bytes = b"SREMP-1 group-message\0".to_vec();
        signed_bytes.extend_from_slice(&ad);
        signed_bytes.extend_from_slice(&ct);
        assert_eq!(gm.signature, creator.sign(&signed_bytes).to_bytes());
        gm.verify().unwrap();
        assert_eq!(receiver.open(&gm).unwrap().plaintext, plaintext);
        let envelope = Control::Message(gm.clone()).encode(gid);
        out.push(json!({
            "text": text,
            "seq": seq,
            "plaintext": hex::encode(&plaintext),
            "message_key": hex::encode(mk),
            "ad": hex::encode(&ad),
            "ciphertext": hex::encode(&gm.ciphertext),
            "signature": hex::encode(gm.signature),
            "group_message": hex::encode(gm.encode()),
            "envelope": hex::encode(&envelope),
        }));
    }
    let invite = Control::Invite(Invite {
        membership: signed.clone(),
        sender_key: dist.clone(),
    })
    .encode(gid);
    // A member's accept, signed for forwarding by that member (seed 0xb2) and forwarded by the
    // creator to the other member (seed 0xc3).
    // Spec: signature = Ed25519(author, "SREMP-1 group-forward\0" || envelope bytes).
    let accept = Control::Accept(dist.clone()).encode(gid);
    let inner = SignedInner::sign(&members[0], accept.clone());
    let mut fmsg = b"SREMP-1 group-forward\0".to_vec();
    fmsg.extend_from_slice(&accept);
    assert_eq!(members[0].sign(&fmsg).to_bytes(), inner.signature);
    assert_eq!(
        inner.open(&ik(&members[0]), gid).unwrap(),
        Control::Accept(dist.clone())
    );
    let forward = Control::Forward(ForwardRequest {
        to: vec![Member(ik(&members[1]).0)],
        inner: inner.clone(),
    })
    .encode(gid);
    let forwarded = Control::Forwarded(Forwarded {
        from: Member(ik(&members[0]).0),
        inner,
    })
    .encode(gid);
    // A receipt (type 10) from the member 0xc3 for message id 0x5a x16 of the member 0xb2.
    // Spec: [10, bin(16) group_id, bin(body)], body = [bin(32) author, bin(16) message_id].
    let delivered = Control::Delivered(Delivered {
        author: Member(ik(&members[0]).0),
        message_id: [0x5a; 16],
    })
    .encode(gid);
    let mut body = vec![0x92, 0xc4, 0x20];
    body.extend_from_slice(&ik(&members[0]).0);
    body.extend_from_slice(&[0xc4, 0x10]);
    body.extend_from_slice(&[0x5a; 16]);
    let mut by_hand = vec![0x93, 0x0a, 0xc4, 0x10];
    by_hand.extend_from_slice(&gid.0);
    by_hand.extend_from_slice(&[0xc4, u8::try_from(body.len()).unwrap()]);
    by_hand.extend_from_slice(&body);
    assert_eq!(delivered, by_hand);
    json!({
        "creator_seed": hex::encode([0xa1u8; 32]),
        "member_seeds": [hex::encode([0xb2u8; 32]), hex::encode([0xc3u8; 32])],
        "group_id": gid.to_string(),
        "membership": hex::encode(&signed.membership),
        "membership_signature": hex::encode(signed.signature),
        "chain_key": hex::encode(ck0),
        "messages": out,
        "envelopes": {
            "invite": hex::encode(invite),
            "accept": hex::encode(Control::Accept(dist.clone()).encode(gid)),
            "decline": hex::encode(Control::Decline.encode(gid)),
            "sender_key": hex::encode(Control::SenderKey(dist).encode(gid)),
            "leave": hex::encode(Control::Leave.encode(gid)),
            "close": hex::encode(Control::Close.encode(gid)),
            "forward": hex::encode(forward),
            "forwarded": hex::encode(forwarded),
            "delivered": hex::encode(delivered),
        }
    })
}

#[test]
fn group_vectors_match() {
    let v = vectors();
    if std::env::var_os("SREMP_WRITE_VECTORS").is_some() {
        std::fs::write(PATH, serde_json::to_string_pretty(&v).unwrap() + "\n").unwrap();
    }
    let file: Value = serde_json::from_str(&std::fs::read_to_string(PATH).unwrap()).unwrap();
    assert_eq!(
        v, file,
        "vectors changed; regenerate only if the format changed on purpose"
    );
    // Every stored envelope decodes to its type.
    for (name, hexed) in file["envelopes"].as_object().unwrap() {
        let (gid, c) = Control::decode(&hex::decode(hexed.as_str().unwrap()).unwrap()).unwrap();
        assert_eq!(gid.to_string(), file["group_id"]);
        assert_eq!(c.name(), name);
    }
}
