//! Helpers for the rendezvous integration tests: a localnet CA made in the test, in-process
//! servers on 127.0.0.1:0, deterministic identities.
#![allow(dead_code)]
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use rand::SeedableRng;
use sremp::identity::{Flags, UserIdentity};
use sremp::rendezvous::server::ServerOptions;
use sremp::rendezvous::{tls, Clock, RendezvousServerConfig, Server, ServerHandle};
use sremp::time::Timestamp;
use sremp::wire::rendezvous::ServerEntry;
use sremp::wire::Endpoint;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub const TIMEOUT: Duration = Duration::from_secs(10);

/// A CA and certificates for `names`, in a temporary directory.
pub struct Net {
    pub dir: tempfile::TempDir,
    pub tls: Arc<rustls::ClientConfig>,
}

impl Net {
    pub fn new(names: &[&str]) -> Net {
        let dir = tempfile::tempdir().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        tls::generate_localnet(dir.path(), &names).unwrap();
        let tls = tls::client_config(Some(&dir.path().join("ca.pem"))).unwrap();
        Net { dir, tls }
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Server settings for `name` on 127.0.0.1:0 with generous limits.
    pub fn config(&self, name: &str) -> RendezvousServerConfig {
        RendezvousServerConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            server_name: Some(name.into()),
            cert_file: Some(self.dir.path().join(format!("{name}.pem"))),
            key_file: Some(self.dir.path().join(format!("{name}-key.pem"))),
            requests_per_sec: 1000,
            request_burst: 1000,
            ..RendezvousServerConfig::default()
        }
    }

    pub async fn start(&self, config: RendezvousServerConfig, clock: Clock) -> ServerHandle {
        let opts = ServerOptions {
            config,
            ca_file: Some(self.ca()),
            data_dir: None,
            clock,
        };
        Server::bind(opts).await.unwrap().spawn()
    }
}

pub fn entry(h: &ServerHandle, name: &str) -> ServerEntry {
    ServerEntry {
        endpoint: Endpoint::from_socket_addr(h.local_addr()),
        name: name.into(),
    }
}

pub fn user(seed: u8) -> UserIdentity {
    let mut rng = rand_chacha::ChaCha20Rng::from_seed([seed; 32]);
    UserIdentity::generate(
        &format!("user{seed}"),
        Flags::default(),
        Timestamp(1),
        &mut rng,
    )
    .unwrap()
}

pub fn ep(port: u16) -> Endpoint {
    Endpoint::new("127.0.0.1", port).unwrap()
}
