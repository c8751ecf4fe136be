#!/usr/bin/env python3
"""Regenerates the seed corpora in fuzz/corpus/<target>/ from tests/vectors/*.json.

Seeds are valid encodings from the known-answer vectors plus a few truncated or mutated
variants, laid out as each entry function in fuzz/src/lib.rs expects. Run from anywhere:
    python3 fuzz/seeds.py
It rewrites only the files it names (seed-*), so inputs saved from crashes (crash-*) stay.
"""
import base64
import json
import os
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VEC = os.path.join(ROOT, "tests", "vectors")
CORPUS = os.path.join(ROOT, "fuzz", "corpus")


def vec(name):
    with open(os.path.join(VEC, name + ".json")) as f:
        return json.load(f)


def h(s):
    return bytes.fromhex(s)


def flip(b, i, mask=0x01):
    b = bytearray(b)
    b[i % len(b)] ^= mask
    return bytes(b)


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


hs = vec("handshake_xx")
ident = vec("identity")
rv = vec("rendezvous_register")
relay = vec("relay_signatures")
ratchet = vec("ratchet_conversation")
version = vec("version_header")

alice_id = h(ident["identity_wire"])
bob_id = h(hs["responder"]["identity_wire"])
register_env = h(rv["envelope"])
store_env = h(relay["store_message"]["envelope"])
confirm_env = h(relay["delivery_confirmation"]["envelope"])
direct_env = h(hs["first_transport_plaintext"])
chunk_prefix = h(vec("chunk")["chunks"][1]["envelope_prefix"])

# envelope
write("envelope", "register-request", register_env)
write("envelope", "store-message", store_env)
write("envelope", "delivery-confirmation", confirm_env)
write("envelope", "direct-message", direct_env)
write("envelope", "direct-ack", bytes([0x92, 0x41, 0x91, 0x05]))
write("envelope", "unknown-kind", bytes([0x92, 0xCD, 0x12, 0x34, 0x93, 1, 2, 3]))
write("envelope", "chunk-small", bytes([0x92, 0x01, 0x92, 0x94, 0x09, 0x01, 0x02, 0x02, 0xC4, 0x02, 0xAA, 0xBB]))
write("envelope", "chunk-vector-truncated", chunk_prefix)
write("envelope", "register-truncated", register_env[: len(register_env) // 2])
write("envelope", "store-trailing", store_env + b"\x00")
write("envelope", "store-flipped", flip(store_env, 40, 0x80))

# msgpack_scan
write("msgpack_scan", "register-request", register_env)
write("msgpack_scan", "identity", alice_id)
write("msgpack_scan", "nested-ok", b"\x91" * 16 + b"\x00")
write("msgpack_scan", "nested-too-deep", b"\x91" * 17 + b"\x00")
write("msgpack_scan", "map-ext-float", bytes([0x83, 0xA1, 0x61, 0xD4, 0x01, 0x02, 0xA1, 0x62, 0xCB]) + b"\x00" * 8 + bytes([0xC0, 0xC7, 0x02, 0x05, 0x01, 0x02]))
write("msgpack_scan", "huge-array-claim", bytes([0xDD, 0xFF, 0xFF, 0xFF, 0xFF, 0x00]))
write("msgpack_scan", "huge-bin-claim", bytes([0xC6, 0x7F, 0xFF, 0xFF, 0xFF, 0x00]))
write("msgpack_scan", "reserved", bytes([0x92, 0x01, 0xC1]))

# identity
write("identity", "alice", alice_id)
write("identity", "bob", bob_id)
write("identity", "alice-truncated", alice_id[:-10])
write("identity", "alice-bad-signature", flip(alice_id, len(alice_id) - 1))
write("identity", "alice-bad-data", flip(alice_id, 10))
write("identity", "verified-data-only", h(ident["verified_data"]))

# contact_card: [identity, [endpoint...], [relay_hint...]]; the entry function parses the
# input as text and also wraps it as sremp1:base64url(input).
def mp_str(s):
    b = s.encode()
    assert len(b) < 32
    return bytes([0xA0 | len(b)]) + b


endpoint = b"\x92" + mp_str("alice.example.net") + b"\xcd\x1d\x38"
relay_hint = b"\x92" + b"\x92" + mp_str("relay.example.net") + b"\xcd\x1d\x42" + b"\xc4\x20" + b"\x44" * 32
card = b"\x93" + alice_id + b"\x91" + endpoint + b"\x91" + relay_hint
card_text = "sremp1:" + base64.urlsafe_b64encode(card).decode().rstrip("=")
write("contact_card", "card-msgpack", card)
write("contact_card", "card-text", card_text.encode())
write("contact_card", "card-text-truncated", card_text[:-7].encode())
write("contact_card", "card-empty-lists", b"\x93" + alice_id + b"\x90\x90")
write("contact_card", "card-nine-endpoints", b"\x93" + alice_id + b"\x99" + endpoint * 9 + b"\x90")
write("contact_card", "card-bad-host", b"\x93" + alice_id + b"\x91\x92" + mp_str("bad host!") + b"\x01\x90")

# version_header
write("version_header", "v1-0", h(version["header_1_0"]))
write("version_header", "v1-3", h(version["header_1_3"]))
write("version_header", "v2-0", b"SREMP\x02\x00")
write("version_header", "http", b"GET / H")
write("version_header", "short", b"SREMP\x01")

# chunk_reassembly: limits byte, then ops (see sremp_fuzz::chunk_reassembly).
#   op 0/1 structured chunk: sel, id, index, total, fill, [len byte/u16], [chunk_size u16]
#   op 2 raw envelope: len, bytes;  op 3 clock: steps of 20 ms
LIM_2_PARTIAL_2CPM = 3 + 5 * 2  # max_message = 2*CPM+7, max_partial = 2
full = lambda mid, idx, total, fill: bytes([0x00, 0x00, mid, idx, total, fill])
short = lambda mid, idx, total, fill, n: bytes([0x00, 0x01, mid, idx, total, fill, n])
write("chunk_reassembly", "complete-two", bytes([LIM_2_PARTIAL_2CPM]) + full(1, 0, 2, 0xAA) + short(1, 1, 2, 0xBB, 10))
write("chunk_reassembly", "out-of-order-dup", bytes([LIM_2_PARTIAL_2CPM]) + short(2, 2, 3, 1, 5) + full(2, 0, 3, 2) + full(2, 0, 3, 2) + full(2, 1, 3, 3))
write("chunk_reassembly", "evict-and-expire", bytes([LIM_2_PARTIAL_2CPM]) + full(1, 0, 3, 1) + full(2, 0, 3, 1) + full(3, 0, 3, 1) + bytes([0x03, 60]) + full(1, 1, 3, 1))
write("chunk_reassembly", "too-large", bytes([1 + 5 * 4]) + full(1, 0, 3, 1) + bytes([0x00, 0x80, 4, 0xFF, 0xFE, 0xFF, 0xFF, 1]))
write("chunk_reassembly", "conflict-and-bad-size", bytes([4]) + full(1, 0, 2, 1) + full(1, 0, 2, 2) + bytes([0x00, 0x04, 1, 0, 2, 1, 0x00, 0x05]))
small_chunk_env = bytes([0x92, 0x01, 0x92, 0x94, 0x09, 0x01, 0x02, 0x02, 0xC4, 0x02, 0xAA, 0xBB])
write("chunk_reassembly", "raw-envelope", bytes([LIM_2_PARTIAL_2CPM, 0x02, len(small_chunk_env)]) + small_chunk_env + bytes([0x02, len(chunk_prefix)]) + chunk_prefix)

# handshake_responder: mode 0 = [len1, msg1, msg3]; mode 1 = msg3 payload.
m1, m3 = h(hs["message_1"]), h(hs["message_3"])
write("handshake_responder", "vector-complete", bytes([0, len(m1)]) + m1 + m3)
write("handshake_responder", "vector-msg3-truncated", bytes([0, len(m1)]) + m1 + m3[:40])
write("handshake_responder", "vector-msg3-flipped", bytes([0, len(m1)]) + m1 + flip(m3, 70))
write("handshake_responder", "msg1-with-payload", bytes([0, len(m1) + 3]) + m1 + b"abc")
write("handshake_responder", "payload-alice", b"\x01" + alice_id)
write("handshake_responder", "payload-bob-mismatch", b"\x01" + bob_id)
write("handshake_responder", "payload-garbage", b"\x01" + alice_id[:50])

# transport_open: limits byte, frames [flags, len u16be, bytes]
def frame(flags, body):
    return bytes([flags]) + struct.pack(">H", len(body)) + body


first_ct = h(hs["first_transport_frame"])[2:]
LIM_DEFAULTISH = 4 + 5 * 2  # max_message = 4*CPM, max_partial = 2
write("transport_open", "vector-frame", bytes([LIM_DEFAULTISH]) + frame(0, first_ct))
write("transport_open", "vector-frame-replayed", bytes([LIM_DEFAULTISH]) + frame(0, first_ct) + frame(3, b""))
write("transport_open", "vector-frame-flipped", bytes([LIM_DEFAULTISH]) + frame(0, flip(first_ct, 3)))
write("transport_open", "plain-envelopes", bytes([LIM_DEFAULTISH]) + frame(1, direct_env) + frame(1, register_env) + frame(1, b"\x92\x41\x91") + frame(3, b""))
write("transport_open", "plain-chunks", bytes([LIM_DEFAULTISH]) + frame(2, bytes([0x00, 4, 0, 2, 0x92])) + frame(2 | 8, bytes([0x01, 4, 1, 2, 0x00, 9])))
write("transport_open", "plain-nested-chunk", bytes([LIM_DEFAULTISH]) + frame(1, small_chunk_env))

# ratchet_decrypt: mode 0 = wire, 1 = [hlen, header, ciphertext] signed by alice, 2 = inner.
msgs = ratchet["messages"]


def split_wire(wire):
    """(header, ciphertext) of a SignedMessage: [1, bin32, bin32, bin hdr, bin ct, bin64]."""
    i = 1 + 1 + 34 + 34  # array marker, version, sender, recipient

    def read_bin(i):
        m = wire[i]
        if m == 0xC4:
            n, i = wire[i + 1], i + 2
        elif m == 0xC5:
            n, i = struct.unpack(">H", wire[i + 1 : i + 3])[0], i + 3
        else:
            n, i = struct.unpack(">I", wire[i + 1 : i + 5])[0], i + 5
        return wire[i : i + n], i + n

    hdr, i = read_bin(i)
    ct, i = read_bin(i)
    return hdr, ct


for k, label in [(1, "alice-second"), (0, "alice-first-dup"), (3, "alice-new-chain"), (2, "bob-own")]:
    write("ratchet_decrypt", "wire-" + label, b"\x00" + h(msgs[k]["wire"]))
write("ratchet_decrypt", "wire-truncated", b"\x00" + h(msgs[1]["wire"])[:200])
write("ratchet_decrypt", "wire-bad-signature", b"\x00" + flip(h(msgs[1]["wire"]), -3))
for k, label in [(1, "alice-second"), (3, "alice-new-chain"), (0, "alice-first")]:
    hdr, ct = split_wire(h(msgs[k]["wire"]))
    write("ratchet_decrypt", "signed-" + label, b"\x01" + bytes([len(hdr)]) + hdr + ct)
hdr, ct = split_wire(h(msgs[1]["wire"]))
write("ratchet_decrypt", "signed-gap", b"\x01" + bytes([len(hdr)]) + hdr[:-1] + b"\x7f" + ct)
write("ratchet_decrypt", "inner-header-initial", b"\x02" + h(msgs[0]["header"]))
write("ratchet_decrypt", "inner-header-normal", b"\x02" + h(msgs[2]["header"]))
write("ratchet_decrypt", "inner-payload", b"\x02" + h(msgs[0]["payload"]))

# relay_messages: selector byte (see sremp_fuzz::relay_messages), then the body.
caps = b"\x94" + b"\xce\x00\x01\x00\x00" + b"\xcd\x0e\x10" + b"\xcd\x03\xe8" + b"\xce\x01\x00\x00\x00"
nonce = b"\xc4\x20" + b"\xbb" * 32
write("relay_messages", "hello", b"\x00" + b"\x91\x00")
write("relay_messages", "challenge", b"\x01" + b"\x92" + nonce + caps)
write("relay_messages", "register", b"\x02" + b"\x93" + b"\xc4\x20" + b"\x11" * 32 + b"\xc4\x40" + b"\x22" * 64 + caps)
write("relay_messages", "store-message", b"\x04" + store_env[2:])
write("relay_messages", "store-response", b"\x05" + b"\x94\xc2\xcf\x00\x00\x01\x8b\xcf\xe5\x69\xf4\x2a\xcd\x20\x05")
write("relay_messages", "retrieve", b"\x06" + b"\x95" + b"\xc4\x20" + b"\x11" * 32 + b"\xc4\x40" + b"\x22" * 64 + b"\xc0" + b"\x92\xc4\x20" + b"\x33" * 32 + b"\x07" + b"\x32")
stored = b"\x95\x07\xc4\x20" + b"\x11" * 32 + b"\x05\xc4\x03abc\xc4\x40" + b"\x22" * 64
write("relay_messages", "batch", b"\x08" + b"\x92\x92" + stored + stored + b"\xc3")
write("relay_messages", "delivery-confirmation", b"\x09" + confirm_env[2:])
write("relay_messages", "batch-huge-claim", b"\x08" + b"\x92\xdd\xff\xff\xff\xff\xc3")
# The connection core part of relay_messages: selector bits 0x80 (the harness registers first),
# 0x10 (the harness signs stores), 0x20/0x40 (integrated relay, owned by the client); then
# envelopes as u16be(len) || bytes.
def envs(*es):
    return b"".join(struct.pack(">H", len(e)) + e for e in es)
write("relay_messages", "core-registered-stores", bytes([0x94]) + envs(store_env, store_env, confirm_env, store_env))
write("relay_messages", "core-integrated-owner", bytes([0xf4]) + envs(store_env, confirm_env))
write("relay_messages", "core-unregistered", bytes([0x04]) + envs(b"\x92\x28\x91\x00", store_env, confirm_env))

# rendezvous_messages: selector byte, then the body.
write("rendezvous_messages", "raw-identity", b"\x00" + alice_id)
write("rendezvous_messages", "raw-identity-bad", b"\x00" + flip(alice_id, 20))
write("rendezvous_messages", "register-request", b"\x01" + register_env[2:])
write("rendezvous_messages", "relay-hint", b"\x02" + relay_hint)
write("rendezvous_messages", "lookup-request", b"\x04" + b"\x94\xc4\x20" + b"\x11" * 32 + b"\xc2\xc0\x0a")
write("rendezvous_messages", "peer-info", b"\x05" + b"\x96" + alice_id + endpoint + b"\x05\xc3\x91" + relay_hint + b"\x91" + endpoint)
write("rendezvous_messages", "list-servers-request", b"\x07\x90")
write("rendezvous_messages", "list-servers-response", b"\x09" + b"\x92\x91\x92" + endpoint + mp_str("rv1") + b"\x05")
write("rendezvous_messages", "server-entry-ipv6", b"\x08" + b"\x92\x92" + mp_str("[::1]") + b"\x01" + mp_str("::1"))
