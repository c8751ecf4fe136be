//! Helpers shared by integration tests: in-process nodes, the real binary, bounded waits.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Path of the real `sremp` binary built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_sremp"))
}

/// A config for a node in `dir` listening on an OS-chosen loopback port.
pub fn node_config(dir: &Path, handshake_ms: u64) -> String {
    format!(
        "data_dir = \"{}\"\nusername = \"tester\"\n[log]\nlevel = \"sremp=debug,info\"\n[listen]\naddress = \"127.0.0.1:0\"\nhandshake_timeout_ms = {handshake_ms}\n",
        dir.join("data").display()
    )
}

/// A child process whose stderr lines are collected.
pub struct Proc {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Spawns the binary with `args`, collecting stderr.
    pub fn spawn(args: &[&str]) -> Proc {
        let mut child = Command::new(bin())
            .args(args)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sremp");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Proc { child, lines }
    }

    /// Waits (bounded) for a stderr line containing `needle`; returns it.
    pub fn wait_for_line(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return Some(l.clone());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Value of `key=` in the first stderr line containing `needle`.
    pub fn wait_for_field(&self, needle: &str, key: &str, timeout: Duration) -> Option<String> {
        let line = self.wait_for_line(needle, timeout)?;
        let start = line.find(&format!("{key}="))? + key.len() + 1;
        Some(
            line[start..]
                .split_whitespace()
                .next()?
                .trim_matches('"')
                .to_string(),
        )
    }

    /// All stderr so far.
    pub fn log(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the binary with `args` to completion (the commands used here end on their own).
pub fn run_bin(args: &[&str]) -> std::process::Output {
    Command::new(bin())
        .args(args)
        .env_remove("RUST_LOG")
        .env_remove("SREMP_CONFIG")
        .stdin(Stdio::null())
        .output()
        .expect("run sremp")
}

/// A loopback port that was free a moment ago (for nodes that must restart on the same port).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Sends `sig` to the process (SIGTERM/SIGKILL); the caller reaps it.
pub fn signal(child: &Child, sig: i32) {
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on a child we spawned and have not reaped yet.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// Waits (bounded) for `child` to exit; kills it if it does not.
pub fn reap(child: &mut Child, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    false
}

impl Proc {
    /// Spawns `program` with `args` (e.g. `ip netns exec NS sremp ...`), collecting stderr.
    pub fn spawn_program(program: &Path, args: &[&str]) -> Proc {
        let mut child = Command::new(program)
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("SREMP_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = child.stderr.take().expect("stderr");
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Proc { child, lines }
    }
}

/// The `[node]` knobs of a test node started with the real binary.
#[derive(Clone, Debug)]
pub struct BinNodeOptions {
    /// Username.
    pub name: String,
    /// `listen.address`.
    pub listen: String,
    /// `listen.advertise` (empty: the bound address).
    pub advertise: Vec<String>,
    /// `node.relays` (`<id>@host:port`).
    pub relays: Vec<String>,
    /// `node.direct_timeout_ms`.
    pub direct_timeout_ms: u64,
    /// `node.ack_timeout_ms`.
    pub ack_timeout_ms: u64,
    /// Log filter.
    pub log: String,
    /// TOML appended to the config as is (e.g. a `[quic]` section).
    pub extra: String,
}

impl BinNodeOptions {
    /// A loopback node on a fixed port (so it can restart where its contacts expect it).
    pub fn loopback(name: &str) -> BinNodeOptions {
        BinNodeOptions {
            name: name.into(),
            listen: format!("127.0.0.1:{}", free_port()),
            advertise: Vec::new(),
            relays: Vec::new(),
            direct_timeout_ms: 1000,
            ack_timeout_ms: 3000,
            log: "sremp=debug,info".into(),
            extra: String::new(),
        }
    }
}

fn toml_list(items: &[String]) -> String {
    items
        .iter()
        .map(|s| format!("\"{s}\""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `sremp run` (the real binary) with its config file and data dir; restartable.
pub struct BinNode {
    /// The running process, if any.
    pub proc: Option<Proc>,
    /// Config file.
    pub config: PathBuf,
    /// Data dir.
    pub data: PathBuf,
    /// `ip netns exec <ns>` prefix, if the node runs in a namespace.
    pub netns: Option<String>,
    /// Logs of earlier runs (for failure messages).
    pub old_logs: String,
}

impl BinNode {
    /// Writes the config under `dir/<name>` (does not start the node).
    pub fn new(dir: &Path, o: &BinNodeOptions) -> BinNode {
        let home = dir.join(&o.name);
        std::fs::create_dir_all(&home).unwrap();
        let data = home.join("data");
        let config = home.join("node.toml");
        let text = format!(
            "data_dir = \"{}\"\nusername = \"{}\"\n[log]\nlevel = \"{}\"\n[listen]\naddress = \"{}\"\nadvertise = [{}]\nhandshake_timeout_ms = 5000\n[node]\nrelays = [{}]\ndirect_timeout_ms = {}\nack_timeout_ms = {}\nretry_initial_ms = 100\nretry_max_ms = 400\n",
            data.display(),
            o.name,
            o.log,
            o.listen,
            toml_list(&o.advertise),
            toml_list(&o.relays),
            o.direct_timeout_ms,
            o.ack_timeout_ms,
        ) + &o.extra;
        std::fs::write(&config, text).unwrap();
        BinNode {
            proc: None,
            config,
            data,
            netns: None,
            old_logs: String::new(),
        }
    }

    /// Starts `sremp run` and waits (bounded) until its control socket answers.
    pub fn start(&mut self) {
        assert!(self.proc.is_none(), "already running");
        let cfg = self.config.to_str().unwrap().to_string();
        let proc = match &self.netns {
            None => Proc::spawn(&["--config", &cfg, "run"]),
            Some(ns) => {
                let b = bin();
                let b = b.to_str().unwrap();
                Proc::spawn_program(
                    Path::new("ip"),
                    &["netns", "exec", ns, b, "--config", &cfg, "run"],
                )
            }
        };
        let sock = self.data.join("control.sock");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if std::os::unix::net::UnixStream::connect(&sock).is_ok() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "node did not open its control socket:\n{}",
                proc.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        self.proc = Some(proc);
    }

    /// SIGKILL, no chance to flush anything.
    pub fn kill(&mut self) {
        if let Some(mut p) = self.proc.take() {
            signal(&p.child, libc::SIGKILL);
            reap(&mut p.child, Duration::from_secs(10));
            self.old_logs.push_str(&p.log());
            self.old_logs.push_str("\n--- killed ---\n");
        }
    }

    /// SIGTERM and a bounded wait for the orderly shutdown.
    pub fn stop(&mut self) {
        if let Some(mut p) = self.proc.take() {
            signal(&p.child, libc::SIGTERM);
            reap(&mut p.child, Duration::from_secs(20));
            self.old_logs.push_str(&p.log());
            self.old_logs.push_str("\n--- stopped ---\n");
        }
    }

    /// Every log line of every run so far.
    pub fn logs(&self) -> String {
        let now = self.proc.as_ref().map(|p| p.log()).unwrap_or_default();
        format!("{}{now}", self.old_logs)
    }

    /// Runs a CLI command against this node.
    pub fn cmd(&self, args: &[&str]) -> std::process::Output {
        let mut all = vec!["--config", self.config.to_str().unwrap()];
        all.extend_from_slice(args);
        run_bin(&all)
    }

    /// A CLI command that must succeed with `--json` output.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = args.to_vec();
        all.push("--json");
        let o = self.cmd(&all);
        assert!(
            o.status.success(),
            "sremp {args:?} failed: {}\n--- node log:\n{}",
            String::from_utf8_lossy(&o.stderr),
            self.logs()
        );
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&o.stdout)))
    }

    /// `(contact id, card)` from `sremp id --json`.
    pub fn card(&self) -> (String, String) {
        let v = self.json(&["id"]);
        (
            v["id"].as_str().unwrap().to_string(),
            v["card"].as_str().unwrap().to_string(),
        )
    }

    /// `sremp send CONTACT TEXT`: the message id once it is in the durable outbox.
    pub fn send(&self, contact: &str, text: &str) -> String {
        let v = self.json(&["send", contact, text]);
        v["id"].as_str().unwrap().to_string()
    }

    /// `sremp messages --json`: the whole history.
    pub fn messages(&self) -> Vec<serde_json::Value> {
        match self.json(&["messages"]) {
            serde_json::Value::Array(v) => v,
            other => panic!("messages --json is not an array: {other}"),
        }
    }

    /// The pid of the running process.
    pub fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(|p| p.child.id())
    }
}

impl Drop for BinNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Makes two running nodes contacts of each other (cards from the running nodes).
pub fn introduce(a: &BinNode, b: &BinNode) -> (String, String) {
    let (a_id, a_card) = a.card();
    let (b_id, b_card) = b.card();
    a.json(&["contacts", "add", &b_card]);
    b.json(&["contacts", "add", &a_card]);
    (a_id, b_id)
}

/// `sremp relay` (the real binary): its process and `<relay id>@<addr>` hint.
pub struct BinRelay {
    /// The process.
    pub proc: Proc,
    /// `<relay id>@host:port`, as `node.relays` wants it.
    pub hint: String,
    /// `<relay id>@quic://host:port` (its QUIC endpoint), when it serves QUIC.
    pub quic_hint: Option<String>,
}

impl BinRelay {
    /// Starts a relay listening on `listen` with its data under `dir/relay`; reads `relay.addr`.
    pub fn start(dir: &Path, listen: &str, netns: Option<&str>) -> BinRelay {
        let home = dir.join("relay");
        std::fs::create_dir_all(&home).unwrap();
        let data = home.join("data");
        let config = home.join("relay.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = \"{}\"\nusername = \"relay\"\n[listen]\naddress = \"{listen}\"\n",
                data.display()
            ),
        )
        .unwrap();
        let cfg = config.to_str().unwrap();
        let proc = match netns {
            None => Proc::spawn(&["relay", "--config", cfg]),
            Some(ns) => {
                let b = bin();
                Proc::spawn_program(
                    Path::new("ip"),
                    &[
                        "netns",
                        "exec",
                        ns,
                        b.to_str().unwrap(),
                        "relay",
                        "--config",
                        cfg,
                    ],
                )
            }
        };
        let file = data.join("relay.addr");
        let deadline = Instant::now() + Duration::from_secs(30);
        let line = loop {
            if let Ok(s) = std::fs::read_to_string(&file) {
                if s.ends_with('\n') {
                    break s;
                }
            }
            assert!(
                Instant::now() < deadline,
                "relay did not write relay.addr:\n{}",
                proc.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut parts = line.split_whitespace();
        let addr = parts.next().unwrap().to_string();
        let id = parts.next().unwrap().to_string();
        let quic_hint = parts.next().map(|q| format!("{id}@{q}"));
        BinRelay {
            proc,
            hint: format!("{id}@{addr}"),
            quic_hint,
        }
    }
}

/// A TCP listener that accepts and never says a word (bounded: at most 256 connections held).
pub fn tarpit() -> std::net::SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for s in l.incoming().take(256) {
            match s {
                Ok(s) => held.push(s),
                Err(_) => break,
            }
        }
        // Keep them open until the test process ends.
        std::thread::sleep(Duration::from_secs(3600));
        drop(held);
    });
    addr
}

/// One control connection used for many requests (the documented line protocol of
/// `sremp::node::control`), so a stream of sends is not dominated by process start-up.
pub struct ControlConn {
    rd: BufReader<std::os::unix::net::UnixStream>,
    wr: std::os::unix::net::UnixStream,
}

impl ControlConn {
    /// Connects to the node's control socket (reads bounded by a 20 s timeout).
    pub fn connect(node: &BinNode) -> ControlConn {
        let s = std::os::unix::net::UnixStream::connect(node.data.join("control.sock")).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        ControlConn {
            rd: BufReader::new(s.try_clone().unwrap()),
            wr: s,
        }
    }

    /// `{"cmd":"send"}`: the history entry of the queued message.
    pub fn send(&mut self, contact: &str, text: &str) -> serde_json::Value {
        use std::io::Write;
        let req = serde_json::json!({"cmd": "send", "contact": contact, "text": text});
        self.wr.write_all(format!("{req}\n").as_bytes()).unwrap();
        let mut line = String::new();
        self.rd.read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ok"], true, "{v}");
        v["entry"].clone()
    }
}
