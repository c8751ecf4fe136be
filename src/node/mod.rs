//! The personal node: one process that owns the identity, the store and the Noise listener.
//!
//! Start-up: load the identity from the data directory (creating one on first start), open the
//! store, bind the listener, then accept authenticated Noise connections. Each authenticated
//! peer is run through TOFU ([`crate::identity::ContactBook`]): a contact marked Rejected is
//! disconnected at once; everyone else is served until they close or go idle.
//!
//! [`Node::start`] returns a [`NodeHandle`] (address, identity, shutdown), so tests run nodes
//! in-process; `sremp run` calls it and waits for a signal.

use crate::config::Config;
use crate::identity::{ContactBook, Flags, Observation, Trust, UserIdentity};
use crate::noise::listener::{self, ListenerConfig};
use crate::noise::stream::{HandshakeLimits, TcpConnection};
use crate::store::{SledStore, Store};
use crate::time::Timestamp;
use crate::wire::Endpoint;
use crate::Error;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Directory inside the data dir that holds the database.
pub const DB_DIR: &str = "db";

/// Loads the identity in `dir`, or creates one (owner-only key file) if there is none.
pub fn load_or_create_identity(dir: &Path, username: &str) -> Result<(UserIdentity, bool), Error> {
    if UserIdentity::exists(dir) {
        return Ok((UserIdentity::load_file(dir)?, false));
    }
    let user = UserIdentity::generate(username, Flags::default(), Timestamp::now(), &mut rand::rngs::OsRng)?;
    create_private_dir(dir)?;
    user.create_file(dir)?;
    Ok((user, true))
}

/// Creates `dir` (and parents) with mode 0700 for the last component.
pub fn create_private_dir(dir: &Path) -> Result<(), Error> {
    let io = |source| Error::Io {
        context: format!("creating data directory {}", dir.display()),
        source,
    };
    if dir.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).map_err(io)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)?;
    }
    Ok(())
}

/// A running node.
#[derive(Debug)]
pub struct NodeHandle {
    /// The bound listen address.
    pub local_addr: SocketAddr,
    /// Endpoints advertised to others.
    pub advertised: Vec<Endpoint>,
    /// Our identity.
    pub identity: Arc<UserIdentity>,
    /// Contacts.
    pub contacts: ContactBook,
    shutdown: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl NodeHandle {
    /// Stops accepting, lets handlers finish, and flushes the store.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
    }
}

/// The node.
#[derive(Debug)]
pub struct Node;

impl Node {
    /// Starts a node from `cfg`: identity, store, listener.
    pub async fn start(cfg: &Config) -> Result<NodeHandle, Error> {
        let dir = cfg.data_dir();
        let (user, created) = load_or_create_identity(&dir, &cfg.username())?;
        if created {
            tracing::info!(id = %user.key(), dir = %dir.display(), "created a new identity");
        }
        let store: Arc<dyn Store> = Arc::new(SledStore::open(&dir.join(DB_DIR))?);
        let contacts = ContactBook::new(store.clone());
        let listener = tokio::net::TcpListener::bind(cfg.listen.address)
            .await
            .map_err(|source| Error::Io {
                context: format!("binding {}", cfg.listen.address),
                source,
            })?;
        let local_addr = listener.local_addr().map_err(|source| Error::Io {
            context: "reading the bound address".into(),
            source,
        })?;
        let advertised = if cfg.listen.advertise.is_empty() {
            vec![Endpoint::from_socket_addr(local_addr)]
        } else {
            cfg.listen
                .advertise
                .iter()
                .filter_map(|a| a.parse().ok())
                .collect()
        };
        let identity = Arc::new(user);
        tracing::info!(
            id = %identity.key(),
            listen = %local_addr,
            "node listening for Noise connections"
        );
        let (tx, rx) = watch::channel(false);
        let lcfg = ListenerConfig {
            max_connections: cfg.listen.max_connections,
            handshake: HandshakeLimits {
                timeout: cfg.listen.handshake_timeout(),
            },
        };
        let idle = cfg.listen.idle_timeout();
        let book = contacts.clone();
        let id_for_task = identity.clone();
        let stop = rx.clone();
        let task = tokio::spawn(async move {
            listener::serve(listener, id_for_task, lcfg, rx, move |conn, addr| {
                serve_peer(conn, addr, book.clone(), idle, stop.clone())
            })
            .await;
        });
        Ok(NodeHandle {
            local_addr,
            advertised,
            identity,
            contacts,
            shutdown: tx,
            task,
        })
    }
}

/// Serves one authenticated peer: TOFU, refuse Rejected contacts, then read until close/idle.
async fn serve_peer(
    mut conn: TcpConnection,
    addr: SocketAddr,
    book: ContactBook,
    idle: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let peer = conn.peer.clone();
    let short = peer.key().short();
    let book2 = book.clone();
    let peer2 = peer.clone();
    let observed =
        tokio::task::spawn_blocking(move || book2.observe(&peer2, Timestamp::now())).await;
    match observed {
        Ok(Ok(obs)) => {
            if obs.contact().trust == Trust::Rejected {
                tracing::info!(%addr, peer = %short, "rejected contact; closing");
                return;
            }
            match obs {
                Observation::New(_) => tracing::info!(%addr, peer = %short, user = %peer.username(), "new contact pinned (TOFU)"),
                Observation::Conflict(_) => {
                    tracing::warn!(%addr, peer = %short, "peer presented a conflicting identity of the same version; closing");
                    return;
                }
                _ => tracing::debug!(%addr, peer = %short, "known contact connected"),
            }
        }
        Ok(Err(e)) => {
            tracing::error!(error = %e, "contact store failed; closing connection");
            return;
        }
        Err(_) => return,
    }
    loop {
        let next = tokio::select! {
            r = tokio::time::timeout(idle, conn.recv()) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        match next {
            Err(_) => {
                tracing::debug!(%addr, peer = %short, "idle timeout; closing");
                return;
            }
            Ok(Err(e)) if e.is_closed() => {
                tracing::debug!(%addr, peer = %short, "peer closed the connection");
                return;
            }
            Ok(Err(e)) => {
                tracing::warn!(%addr, peer = %short, error = %e, "protocol error; closing");
                return;
            }
            Ok(Ok(env)) => {
                tracing::debug!(%addr, peer = %short, kind = env.kind(), "envelope received");
            }
        }
    }
}
