//! Replays the fuzz seed corpora (`fuzz/corpus/<target>/`) through the same entry functions the
//! cargo-fuzz targets call (`fuzz/src/lib.rs`, included here as a module, so this test needs
//! neither nightly nor libFuzzer), then runs each entry function on deterministic
//! pseudo-random inputs: mutations of the seeds plus plain random bytes, a cheap smoke fuzz on
//! every `cargo test`. A panic anywhere is a bug in a decoder (or a broken invariant that the
//! entry function asserts); the failure message names the input in hex.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[path = "../fuzz/src/lib.rs"]
mod sremp_fuzz;

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz")
}

fn entry(name: &str) -> sremp_fuzz::Entry {
    sremp_fuzz::TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, f)| *f)
        .unwrap_or_else(|| panic!("no entry function {name}"))
}

/// The seed files of one target, sorted by name.
fn corpus(name: &str) -> Vec<(String, Vec<u8>)> {
    let dir = fuzz_dir().join("corpus").join(name);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file())
        .map(|p| {
            let data = std::fs::read(&p).unwrap();
            (p.file_name().unwrap().to_string_lossy().into_owned(), data)
        })
        .collect();
    files.sort();
    files
}

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn bytes(&mut self, max_len: usize) -> Vec<u8> {
        let len = self.below(max_len + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }
}

/// A few byte-level mutations of `seed` (flip, set, insert, delete, truncate, splice).
fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(v.len());
        match rng.below(7) {
            0 if !v.is_empty() => v[at] ^= 1 << rng.below(8),
            1 if !v.is_empty() => {
                v[at] = [0x00, 0xff, 0x7f, 0x80, 0xc0, 0xc1, 0xdd, 0xdf][rng.below(8)]
            }
            2 => v.insert(at.min(v.len()), rng.next() as u8),
            3 if !v.is_empty() => {
                v.remove(at);
            }
            4 => v.truncate(at),
            5 if !other.is_empty() => {
                let from = rng.below(other.len());
                let n = rng.below(64).min(other.len() - from);
                v.splice(
                    at.min(v.len())..at.min(v.len()),
                    other[from..from + n].iter().copied(),
                );
            }
            _ if !v.is_empty() => v[at] = v[at].wrapping_add(1 + rng.below(3) as u8),
            _ => {}
        }
    }
    v
}

fn run_one(name: &str, f: sremp_fuzz::Entry, label: &str, data: &[u8]) {
    let result = std::panic::catch_unwind(|| f(data));
    if result.is_err() {
        panic!(
            "fuzz entry `{name}` panicked on {label} ({} bytes): {}",
            data.len(),
            hex::encode(data)
        );
    }
}

/// Replays the seeds of `name`, then `iterations` pseudo-random inputs (half mutated seeds,
/// half random bytes of up to `max_len`).
fn replay_and_smoke(name: &str, iterations: usize, max_len: usize) {
    let f = entry(name);
    let seeds = corpus(name);
    assert!(!seeds.is_empty(), "fuzz/corpus/{name}/ has no seeds");
    for (file, data) in &seeds {
        run_one(name, f, &format!("corpus file {file}"), data);
    }
    let mut rng = Rng(0x5eed_f022
        ^ name
            .bytes()
            .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))));
    for i in 0..iterations {
        let input = if i % 2 == 0 {
            let (_, seed) = &seeds[rng.below(seeds.len())];
            let (_, other) = &seeds[rng.below(seeds.len())];
            mutate(&mut rng, seed, other)
        } else {
            rng.bytes(max_len)
        };
        run_one(name, f, &format!("smoke input {i}"), &input);
    }
}

#[test]
fn every_entry_has_a_fuzz_target_and_a_corpus() {
    let cargo_toml = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    for (name, _) in sremp_fuzz::TARGETS {
        let target = fuzz_dir().join("fuzz_targets").join(format!("{name}.rs"));
        let src = std::fs::read_to_string(&target)
            .unwrap_or_else(|e| panic!("{}: {e}", target.display()));
        assert!(
            src.contains(&format!("sremp_fuzz::{name}(")),
            "{} calls another entry",
            target.display()
        );
        assert!(
            cargo_toml.contains(&format!("name = \"{name}\"")),
            "fuzz/Cargo.toml lacks [[bin]] {name}"
        );
        assert!(!corpus(name).is_empty(), "no seeds for {name}");
    }
}

// Iteration counts keep the whole file to a few seconds in the unoptimised test profile: the
// Noise and ratchet entries run X25519/Ed25519 on every input and get fewer.
#[test]
fn envelope() {
    replay_and_smoke("envelope", 4000, 300);
}

#[test]
fn msgpack_scan() {
    replay_and_smoke("msgpack_scan", 4000, 300);
}

#[test]
fn identity() {
    replay_and_smoke("identity", 3000, 300);
}

#[test]
fn contact_card() {
    replay_and_smoke("contact_card", 3000, 400);
}

#[test]
fn version_header() {
    replay_and_smoke("version_header", 4000, 12);
}

#[test]
fn chunk_reassembly() {
    replay_and_smoke("chunk_reassembly", 1500, 120);
}

#[test]
fn handshake_responder() {
    replay_and_smoke("handshake_responder", 300, 400);
}

#[test]
fn transport_open() {
    replay_and_smoke("transport_open", 200, 300);
}

#[test]
fn ratchet_decrypt() {
    replay_and_smoke("ratchet_decrypt", 600, 600);
}

#[test]
fn relay_messages() {
    replay_and_smoke("relay_messages", 4000, 300);
}

#[test]
fn rendezvous_messages() {
    replay_and_smoke("rendezvous_messages", 4000, 300);
}
