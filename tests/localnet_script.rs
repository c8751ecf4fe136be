//! `scripts/localnet.sh`: up 2 (rendezvous, relay, two nodes), the demo (direct and relay
//! paths), and down, with the binary under test. Skips when bash is not available. Loopback
//! only; every step has a deadline and `down` runs even when a step fails. A pid file naming a
//! zombie (exited, unreaped) does not count as "already up".
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/localnet.sh")
}

/// Runs the script with `args`, killing it after `limit`.
fn run(dir: &Path, args: &[&str], limit: Duration) -> Output {
    let mut child = Command::new("bash")
        .arg(script())
        .args(args)
        .env("LOCALNET_DIR", dir)
        .env("SREMP_BIN", common::bin())
        .env_remove("RUST_LOG")
        .env_remove("SREMP_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().unwrap();
    panic!(
        "localnet.sh {args:?} took longer than {limit:?}\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `down` when dropped, so a failed assertion leaves no processes behind.
struct Down(PathBuf);

impl Drop for Down {
    fn drop(&mut self) {
        let _ = run(&self.0, &["down"], Duration::from_secs(40));
    }
}

fn text(o: &Output) -> String {
    format!(
        "--- stdout\n{}\n--- stderr\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn logs(dir: &Path) -> String {
    let mut all = String::new();
    for name in ["rendezvous", "relay", "node1", "node2"] {
        let log = std::fs::read_to_string(dir.join(name).join("log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        all.push_str(&format!(
            "--- {name} (last lines, newest first)\n{}\n",
            tail.join("\n")
        ));
    }
    all
}

#[test]
fn localnet_up_demo_down() {
    if Command::new("bash")
        .arg("-c")
        .arg("true")
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        eprintln!("skipping: bash is not available");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ln");
    let guard = Down(dir.clone());

    // A pid file left behind naming a process that exited but was never reaped (a zombie,
    // as under a parent that does not reap): it is gone, so `up` must not say "already up".
    let mut zombie = Command::new("true").spawn().unwrap();
    let stat = format!("/proc/{}/stat", zombie.id());
    let deadline = Instant::now() + Duration::from_secs(10);
    while !std::fs::read_to_string(&stat)
        .map(|s| s.rsplit(") ").next().unwrap_or_default().starts_with('Z'))
        .unwrap_or(true)
    {
        assert!(Instant::now() < deadline, "no zombie within 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("pids"), format!("relay {}\n", zombie.id())).unwrap();

    let up = run(&dir, &["up", "2"], Duration::from_secs(40));
    zombie.wait().unwrap();
    assert!(
        up.status.success(),
        "up failed\n{}\n{}",
        text(&up),
        logs(&dir)
    );
    let out = String::from_utf8_lossy(&up.stdout).into_owned();
    for name in ["relay", "node1", "node2"] {
        assert!(out.contains(name), "{out}");
    }
    assert!(
        out.contains(dir.join("node1").join("data").to_str().unwrap()),
        "{out}"
    );
    let pids = std::fs::read_to_string(dir.join("pids")).unwrap();
    assert_eq!(pids.lines().count(), 4, "{pids}");

    let demo = run(&dir, &["demo"], Duration::from_secs(60));
    assert!(
        demo.status.success(),
        "demo failed\n{}\n{}",
        text(&demo),
        logs(&dir)
    );
    let out = String::from_utf8_lossy(&demo.stdout).into_owned();
    assert!(out.contains("stored at relay"), "{out}");
    assert!(out.contains("(path: direct)"), "{out}");
    assert!(out.contains("(path: relay)"), "{out}");

    drop(guard);
    assert!(!dir.join("pids").exists(), "down left the pid file");
    for line in pids.lines() {
        let pid = line.split_whitespace().nth(1).unwrap();
        assert!(
            !Path::new("/proc").join(pid).join("cmdline").exists() || {
                // A reused pid belongs to something else.
                let cmd =
                    std::fs::read(Path::new("/proc").join(pid).join("cmdline")).unwrap_or_default();
                !String::from_utf8_lossy(&cmd).contains(dir.to_str().unwrap())
            },
            "process {line} still running after down"
        );
    }
}
