//! File transfer throughput (issue 15), a custom harness: raw snow over TCP beside a real
//! sremp file transfer over the direct path, in the same run, on loopback.
//!
//! - `raw_snow_tcp`: the floor. Noise XX (sremp's pattern) handshake in memory, then one task
//!   encrypts 65 519-byte payloads into 2-byte-length-prefixed frames on a TCP loopback
//!   connection and another reads and decrypts them. No file IO.
//! - `sremp_direct` / `sremp_quic`: two in-process nodes (`Node::start`, temp dirs on the machine's disk), the
//!   recipient trusts the sender and auto-accepts; a file is offered with
//!   `node::files::send_file` and timed until the sender sees `done`. Two figures: end to end
//!   (hashing the source, the offer and accept round trip through the ratchet, the chunks, the
//!   recipient's whole-file hash check and atomic save) and the data phase alone (from the
//!   moment the sender's state is `sending` to `done`). `sremp_quic` is the same over a
//!   direct QUIC path (bob's card lists only his QUIC endpoint): the chunk AEAD inside QUIC's
//!   packet protection, without the Noise layer of the TCP path.
//!
//! Run: `cargo bench --bench files` (`FILES_BENCH_MIB=64` for a quicker run; default 256;
//! `FILES_BENCH_CHUNK=N` sets the sender's chunk size, else the node's default).
//! Target: sremp direct ≥ 0.7 × raw snow. Memory while sending 1 GiB: scripts/bench-files.sh.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use sremp::config::Config;
use sremp::files::State;
use sremp::node::Node;
use sremp::transport::Transport;
use sremp::wire::Endpoint;
use std::path::Path;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn mib() -> usize {
    std::env::var("FILES_BENCH_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(256)
}

fn transports() -> (snow::TransportState, snow::TransportState) {
    let params: snow::params::NoiseParams = sremp::noise::PATTERN.parse().unwrap();
    let ki = snow::Builder::new(params.clone())
        .generate_keypair()
        .unwrap();
    let kr = snow::Builder::new(params.clone())
        .generate_keypair()
        .unwrap();
    let mut i = snow::Builder::new(params.clone())
        .local_private_key(&ki.private)
        .unwrap()
        .build_initiator()
        .unwrap();
    let mut r = snow::Builder::new(params)
        .local_private_key(&kr.private)
        .unwrap()
        .build_responder()
        .unwrap();
    let (mut buf, mut out) = ([0u8; 1024], [0u8; 1024]);
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

async fn raw_snow(bytes: usize) -> Duration {
    let (mut tx, mut rx) = transports();
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let reader = tokio::spawn(async move {
        let (s, _) = l.accept().await.unwrap();
        let mut s = tokio::io::BufReader::with_capacity(256 * 1024, s);
        let mut frame = vec![0u8; 65535];
        let mut plain = vec![0u8; 65535];
        let mut got = 0usize;
        while got < bytes {
            let len = s.read_u16().await.unwrap() as usize;
            s.read_exact(&mut frame[..len]).await.unwrap();
            got += rx.read_message(&frame[..len], &mut plain).unwrap();
        }
    });
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let start = Instant::now();
    let payload = vec![0x5au8; 65535 - 16];
    let mut out = vec![0u8; 2 + 65535];
    let mut sent = 0usize;
    while sent < bytes {
        let n = (bytes - sent).min(payload.len());
        let len = tx.write_message(&payload[..n], &mut out[2..]).unwrap();
        out[..2].copy_from_slice(&(len as u16).to_be_bytes());
        s.write_all(&out[..2 + len]).await.unwrap();
        sent += n;
    }
    reader.await.unwrap();
    start.elapsed()
}

fn config(dir: &Path, name: &str, files: &str) -> Config {
    let text = format!(
        "data_dir = \"{}\"\nusername = \"{name}\"\n[log]\nlevel = \"warn\"\n[listen]\naddress = \"127.0.0.1:0\"\n[files]\n{files}",
        dir.join(name).display()
    );
    Config::parse(&text, Path::new("bench")).unwrap()
}

/// A transfer over the direct path: TCP, or QUIC only (`quic`: bob's card lists nothing but
/// his QUIC endpoint, so the transfer dials it and runs on a QUIC stream).
async fn sremp_direct(
    dir: &Path,
    bytes: usize,
    runs: usize,
    quic: bool,
) -> Vec<(Duration, Duration)> {
    // The sender's chunk size: FILES_BENCH_CHUNK, else the node's default.
    let chunk = std::env::var("FILES_BENCH_CHUNK")
        .ok()
        .map(|c| format!("chunk_size = {c}\n"))
        .unwrap_or_default();
    let a = Node::start(&config(dir, "alice", &chunk)).await.unwrap();
    let b = Node::start(&config(
        dir,
        "bob",
        "auto_accept_trusted_max_bytes = 100000000000\n",
    ))
    .await
    .unwrap();
    let mut card = b.node.card();
    if quic {
        let q = b
            .quic_addr
            .expect("the node runs a QUIC endpoint by default");
        card.endpoints = vec![Endpoint::from_socket_addr(q).with_transport(Transport::Quic)];
    }
    a.node.add_contact(&card.to_text()).unwrap();
    b.node.add_contact(&a.node.card().to_text()).unwrap();
    b.node
        .set_trust(&a.node.id().to_string(), sremp::identity::Trust::Trusted)
        .unwrap();
    let src = dir.join("source.bin");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&src).unwrap();
        let mut x = 1u64;
        let mut buf = vec![0u8; 1 << 20];
        for _ in 0..bytes >> 20 {
            for c in buf.chunks_mut(8) {
                x = x
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                c.copy_from_slice(&x.to_le_bytes());
            }
            f.write_all(&buf).unwrap();
        }
    }
    let bob = b.node.id().to_string();
    let mut out = Vec::new();
    for _ in 0..runs {
        let mut events = a.node.files().subscribe();
        let start = Instant::now();
        let v = sremp::node::files::send_file(&a.node, &bob, &src)
            .await
            .unwrap();
        let mut sending = None;
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let e = tokio::time::timeout_at(deadline.into(), events.recv())
                .await
                .expect("transfer timed out")
                .unwrap();
            if e.id != v.id {
                continue;
            }
            if e.state == State::Sending && sending.is_none() {
                sending = Some(Instant::now());
            }
            if e.state.is_final() {
                assert_eq!(e.state, State::Done, "{e:?}");
                break;
            }
        }
        let end = Instant::now();
        out.push((end - start, end - sending.unwrap_or(start)));
        // Remove the received copy so the disk does not fill up.
        let got = b.node.files().get(&v.id).unwrap();
        if let Some(p) = got.path {
            let _ = std::fs::remove_file(p);
        }
    }
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
    out
}

fn mbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / 1e6
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let bytes = mib() << 20;
    let runs = 3;
    let dir =
        tempfile::tempdir_in(std::env::var("FILES_BENCH_DIR").unwrap_or_else(|_| "/tmp".into()))
            .unwrap();
    let mut snow = Vec::new();
    let mut tcp = Vec::new();
    let mut quic = Vec::new();
    // Interleaved so that all three see the same machine load; fresh nodes each time.
    for _ in 0..runs {
        snow.push(rt.block_on(raw_snow(bytes)));
        for (over_quic, out) in [(false, &mut tcp), (true, &mut quic)] {
            out.extend(rt.block_on(sremp_direct(dir.path(), bytes, 1, over_quic)));
            let _ = std::fs::remove_dir_all(dir.path().join("alice"));
            let _ = std::fs::remove_dir_all(dir.path().join("bob"));
        }
    }
    snow.sort();
    let med = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let s = mbps(bytes, med(snow));
    println!("file size: {} MiB, {runs} runs each, medians", mib());
    println!("raw_snow_tcp:          {s:8.1} MB/s");
    for (name, runs) in [("sremp_direct", tcp), ("sremp_quic", quic)] {
        let d = mbps(bytes, med(runs.iter().map(|x| x.1).collect()));
        let e = mbps(bytes, med(runs.iter().map(|x| x.0).collect()));
        println!(
            "{name:<12} (data):   {d:8.1} MB/s  ({:.2} x raw snow)",
            d / s
        );
        println!("{name:<12} (e2e):    {e:8.1} MB/s  ({:.2} x raw snow; hashing, offer/accept, verify and save included)", e / s);
    }
}
