//! Helpers shared by integration tests: in-process nodes, the real binary, bounded waits.
#![allow(dead_code)]

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
            if let Some(l) = self.lines.lock().unwrap().iter().find(|l| l.contains(needle)) {
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
