//! The NAT lab: network namespaces for two home networks, each behind a router namespace that
//! NATs with iptables, and a "public" namespace with relays, all built by the test and torn
//! down by a guard (also when the test fails).
//!
//! ```text
//!  <p>ha  10.0.1.2/24 ─┐                        ┌─ 192.168.2.2/24  <p>hb
//!                 lan  │ 10.0.1.1               │ 192.168.2.1  lan
//!  <p>ra  router A (NAT)                      router B (NAT)  <p>rb
//!                 wan  │ 198.18.0.2             │ 198.18.0.3   wan
//!                      └──── br0 in <p>pub ─────┘
//!                 relays 198.18.0.10, 198.18.0.11 (and 198.18.0.66 for a MITM)
//! ```
//!
//! Public addresses come from 198.18.0.0/15 (benchmarking range) only; no namespace has a
//! default route that leads anywhere but the other lab namespaces, and nothing is attached to
//! the host's own interfaces. Routers forward, NAT with `MASQUERADE` (endpoint-independent
//! mapping: Linux keeps the source port) or `MASQUERADE --random-fully` (a new random port per
//! destination: endpoint-dependent, "symmetric"), and drop unsolicited inbound packets as home
//! routers do (`--ctstate NEW` from the WAN), so an inbound packet passes only after the
//! inside host sent to its source address and port.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// How a router maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nat {
    /// `MASQUERADE`: endpoint-independent mapping (port kept).
    Cone,
    /// `MASQUERADE --random-fully`: a new port per destination.
    Symmetric,
}

/// Runs a command; `Err(text)` with its stderr when it fails or cannot start.
pub fn sh(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `ip netns exec <ns> <args...>`.
pub fn ns_exec(ns: &str, args: &[&str]) -> Result<(), String> {
    let mut all = vec!["netns", "exec", ns];
    all.extend_from_slice(args);
    sh("ip", &all)
}

/// Why the lab cannot run here, if it cannot (the caller prints it and skips).
pub fn unsupported() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not running as root".into());
    }
    for tool in ["ip", "iptables"] {
        if Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

/// A built lab. Dropping it deletes every namespace (and with them links and rules).
pub struct Lab {
    /// Namespace prefix.
    pub prefix: String,
    names: Vec<String>,
}

/// Public address of router A / router B.
pub const RA_WAN: &str = "198.18.0.2";
/// See [`RA_WAN`].
pub const RB_WAN: &str = "198.18.0.3";
/// Relay addresses in the public namespace.
pub const RELAY1: &str = "198.18.0.10";
/// See [`RELAY1`].
pub const RELAY2: &str = "198.18.0.11";
/// Router A's public address after [`Lab::renumber_a`].
pub const RA_WAN2: &str = "198.18.0.4";
/// The MITM's public address.
pub const MITM: &str = "198.18.0.66";
/// Home A's host address.
pub const HA: &str = "10.0.1.2";
/// Home B's host address.
pub const HB: &str = "192.168.2.2";

static NEXT: AtomicU32 = AtomicU32::new(0);

impl Drop for Lab {
    fn drop(&mut self) {
        for n in self.names.iter().rev() {
            if let Err(e) = sh("ip", &["netns", "del", n]) {
                eprintln!("nat lab cleanup: {e}");
            }
        }
    }
}

impl Lab {
    /// Public namespace.
    pub fn public(&self) -> String {
        format!("{}pub", self.prefix)
    }
    /// Home A (behind router A).
    pub fn home_a(&self) -> String {
        format!("{}ha", self.prefix)
    }
    /// Home B.
    pub fn home_b(&self) -> String {
        format!("{}hb", self.prefix)
    }
    /// Router A.
    pub fn router_a(&self) -> String {
        format!("{}ra", self.prefix)
    }
    /// Router B.
    pub fn router_b(&self) -> String {
        format!("{}rb", self.prefix)
    }

    fn add_ns(&mut self, n: &str) -> Result<(), String> {
        sh("ip", &["netns", "add", n])?;
        self.names.push(n.to_string());
        sh("ip", &["-n", n, "link", "set", "lo", "up"])
    }

    /// Builds the lab with router A doing `a` and router B doing `b`. `Err`: the environment
    /// does not allow it (the caller skips); anything built so far is removed.
    pub fn build(a: Nat, b: Nat) -> Result<Lab, String> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("nl{}x{n}", std::process::id() % 100_000);
        let mut lab = Lab {
            prefix,
            names: Vec::new(),
        };
        let public = lab.public();
        lab.add_ns(&public)?;
        sh(
            "ip",
            &["-n", &public, "link", "add", "br0", "type", "bridge"],
        )?;
        sh("ip", &["-n", &public, "link", "set", "br0", "up"])?;
        for ip in [RELAY1, RELAY2, MITM] {
            sh(
                "ip",
                &[
                    "-n",
                    &public,
                    "addr",
                    "add",
                    &format!("{ip}/24"),
                    "dev",
                    "br0",
                ],
            )?;
        }
        for (router, home, wan, lan_net, nat, tag) in [
            (lab.router_a(), lab.home_a(), RA_WAN, "10.0.1", a, "ra"),
            (lab.router_b(), lab.home_b(), RB_WAN, "192.168.2", b, "rb"),
        ] {
            lab.add_ns(&router)?;
            lab.add_ns(&home)?;
            // WAN: router <-> public bridge.
            sh(
                "ip",
                &[
                    "-n", &router, "link", "add", "wan", "type", "veth", "peer", "name", tag,
                    "netns", &public,
                ],
            )?;
            sh("ip", &["-n", &public, "link", "set", tag, "master", "br0"])?;
            sh("ip", &["-n", &public, "link", "set", tag, "up"])?;
            sh(
                "ip",
                &[
                    "-n",
                    &router,
                    "addr",
                    "add",
                    &format!("{wan}/24"),
                    "dev",
                    "wan",
                ],
            )?;
            sh("ip", &["-n", &router, "link", "set", "wan", "up"])?;
            // LAN: router <-> home host.
            sh(
                "ip",
                &[
                    "-n", &router, "link", "add", "lan", "type", "veth", "peer", "name", "eth0",
                    "netns", &home,
                ],
            )?;
            sh(
                "ip",
                &[
                    "-n",
                    &router,
                    "addr",
                    "add",
                    &format!("{lan_net}.1/24"),
                    "dev",
                    "lan",
                ],
            )?;
            sh("ip", &["-n", &router, "link", "set", "lan", "up"])?;
            sh(
                "ip",
                &[
                    "-n",
                    &home,
                    "addr",
                    "add",
                    &format!("{lan_net}.2/24"),
                    "dev",
                    "eth0",
                ],
            )?;
            sh("ip", &["-n", &home, "link", "set", "eth0", "up"])?;
            // The home's only way out is its router; the router knows only its two links.
            sh(
                "ip",
                &[
                    "-n",
                    &home,
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("{lan_net}.1"),
                ],
            )?;
            ns_exec(&router, &["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])?;
            let mut masq = vec![
                "iptables",
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                "wan",
                "-j",
                "MASQUERADE",
            ];
            if nat == Nat::Symmetric {
                masq.push("--random-fully");
            }
            ns_exec(&router, &masq)?;
            // A home router drops what nobody inside asked for.
            for chain in ["INPUT", "FORWARD"] {
                ns_exec(
                    &router,
                    &[
                        "iptables",
                        "-A",
                        chain,
                        "-i",
                        "wan",
                        "-m",
                        "conntrack",
                        "--ctstate",
                        "NEW,INVALID",
                        "-j",
                        "DROP",
                    ],
                )?;
            }
        }
        Ok(lab)
    }

    /// Drops (`on`) or restores every packet between the two routers' public addresses
    /// (rules on router A), leaving the relays reachable: the direct path dies.
    pub fn cut_direct(&self, on: bool) {
        let op = if on { "-I" } else { "-D" };
        let ra = self.router_a();
        for (chain, dir) in [
            ("FORWARD", "-s"),
            ("FORWARD", "-d"),
            ("INPUT", "-s"),
            ("OUTPUT", "-d"),
        ] {
            ns_exec(&ra, &["iptables", op, chain, dir, RB_WAN, "-j", "DROP"]).unwrap();
        }
    }

    /// Router A gets a new public address ([`RA_WAN2`] instead of [`RA_WAN`]), as when an ISP
    /// renumbers a home line. Removing the old address makes the kernel drop every connection
    /// MASQUERADE had mapped to it (its address notifier flushes them from conntrack), so every
    /// flow of home A leaves from the new address from its next packet on, and packets sent
    /// to the old address go nowhere.
    pub fn renumber_a(&self) {
        let ra = self.router_a();
        // Without this, deleting the primary address deletes the new (secondary) one too.
        ns_exec(
            &ra,
            &[
                "sysctl",
                "-q",
                "-w",
                "net.ipv4.conf.wan.promote_secondaries=1",
            ],
        )
        .unwrap();
        sh(
            "ip",
            &[
                "-n",
                &ra,
                "addr",
                "add",
                &format!("{RA_WAN2}/24"),
                "dev",
                "wan",
            ],
        )
        .unwrap();
        sh(
            "ip",
            &[
                "-n",
                &ra,
                "addr",
                "del",
                &format!("{RA_WAN}/24"),
                "dev",
                "wan",
            ],
        )
        .unwrap();
    }
}
