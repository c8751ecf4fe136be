//! `sremp relay`: relay-only mode, a store-and-forward relay for other people's messages
//! ([`crate::relay::Relay`] in [`RelayMode::Open`]) until SIGTERM or Ctrl-C.

use super::relay_check::ConfigCheck;
use super::CliError;
use crate::config::Config;
use crate::identity::keys::{load_or_create_identity, WantedFlags};
use crate::noise::listener;
use crate::relay::backend::{nats::NatsBackend, RelayBackend, StoreKind};
use crate::relay::stats::Stats;
use crate::relay::store::RelayStore;
use crate::relay::{
    metrics, Relay, RelayConfig, RelayError, RelayMode, RelayOptions, ADDR_FILE, DB_DIR,
    RELAY_DAMAGE_ADVICE, STATS_FILE,
};
use crate::store::{SledStore, Store};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Runs relay-only mode with `cfg` until SIGTERM or Ctrl-C (the `sremp relay` command).
///
/// Data dir: `identity.key` (the relay's own identity, created on first start), `relay-db/`,
/// `relay.addr` (address, id and, when QUIC is on, `quic://` UDP address, written once
/// listening) and `relay-stats.json`.
pub fn run(cfg: &Config) -> Result<(), CliError> {
    crate::logging::init(&cfg.log);
    cfg.relay.validate().map_err(RelayError::from)?;
    let rt = super::server_runtime()?;
    Ok(rt.block_on(serve(cfg))?)
}

async fn serve(cfg: &Config) -> Result<(), crate::Error> {
    let dir = cfg.data_dir();
    let (user, created) = load_or_create_identity(&dir, &cfg.username(), WantedFlags::relay())?;
    let user = Arc::new(user);
    let stats = Arc::new(Stats::default());
    let (backend, store) = open_backend(&cfg.relay, &dir, stats.clone()).await?;
    let relay = Relay::start_backend(
        backend,
        stats,
        RelayOptions {
            policy: cfg.relay.clone(),
            mode: RelayMode::Open,
            relay_key: user.key(),
            idle_timeout: cfg.listen.idle_timeout(),
            stats_path: Some(dir.join(STATS_FILE)),
        },
    )
    .await?;
    let listener =
        crate::noise::bind::listen(cfg.listen.address).map_err(|source| crate::Error::Io {
            context: format!("binding {}", cfg.listen.address),
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| crate::Error::Io {
        context: "reading the listen address".into(),
        source,
    })?;
    let id = user.key();
    let quic = cfg
        .quic
        .bind(addr)
        .map_err(|e| crate::Error::Connection(e.into()))?;
    let quic_addr = quic.as_ref().and_then(|q| q.local_addr().ok());
    // `<tcp addr> <id>[ quic://<udp addr>]`: the QUIC endpoint is a third field, so readers
    // of the first two are unaffected.
    let quic_field = quic_addr
        .map(|q| format!(" quic://{q}"))
        .unwrap_or_default();
    let addr_file = dir.join(ADDR_FILE);
    let tmp = dir.join("relay.addr.tmp");
    std::fs::write(&tmp, format!("{addr} {id}{quic_field}\n"))
        .and_then(|()| std::fs::rename(&tmp, &addr_file))
        .map_err(|source| crate::Error::Io {
            context: format!("writing {}", addr_file.display()),
            source,
        })?;
    tracing::info!(%addr, quic = ?quic_addr, relay_id = %id, new_identity = created, "relay listening");
    let (stop_tx, stop_rx) = watch_pair();
    let metrics_task = start_metrics(cfg.metrics.listen, &relay, stop_rx.clone()).await?;
    let mut lc = cfg.listen.listener();
    // This relay's own memory of verified identities (clients reconnect often).
    lc.handshake.verified = Some(crate::identity::VerifiedCache::new());
    let r = relay.clone();
    // A relay serves everyone alike: every authenticated peer is admitted as known (the
    // handshake budgets and the total still apply).
    let server = tokio::spawn(listener::serve(
        listener::Sources {
            tcp: listener,
            quic,
        },
        user,
        lc,
        stop_rx,
        move |conn, _addr| {
            let r = r.clone();
            async move { r.serve_connection(conn, None).await }
        },
    ));
    crate::shutdown::wait_for_signal().await;
    tracing::info!("signal received; finishing in-flight commits");
    let _ = stop_tx.send(true);
    let shutdown = relay.shutdown(Duration::from_secs(10)).await;
    let _ = server.await;
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    shutdown?;
    if let Some(store) = store {
        tokio::task::spawn_blocking(move || store.close())
            .await
            .map_err(|e| crate::store::StoreError::TaskFailed {
                task: "closing the store",
                detail: e.to_string(),
            })??;
    }
    Ok(())
}

/// Opens the backend `[relay] store` names: the embedded store in the data dir (returned too,
/// to be closed at shutdown) or NATS JetStream.
async fn open_backend(
    cfg: &RelayConfig,
    dir: &std::path::Path,
    stats: Arc<Stats>,
) -> Result<(Arc<dyn RelayBackend>, Option<Arc<dyn Store>>), crate::Error> {
    match cfg.store {
        StoreKind::Sled => {
            let store: Arc<dyn Store> = Arc::new(
                SledStore::open_checked(&dir.join(DB_DIR))
                    .map_err(|e| e.with_advice(RELAY_DAMAGE_ADVICE))?,
            );
            let (s, policy) = (store.clone(), cfg.clone());
            let rs = tokio::task::spawn_blocking(move || RelayStore::open(s, policy, stats))
                .await
                .map_err(|e| RelayError::Runtime(e.to_string()))?
                .map_err(RelayError::from)?;
            Ok((Arc::new(rs), Some(store)))
        }
        StoreKind::Nats => {
            let b = NatsBackend::open(cfg.clone(), stats)
                .await
                .map_err(RelayError::from)?;
            tracing::info!(urls = %cfg.nats_urls.join(","), replicas = cfg.replicas, "relay store: NATS JetStream");
            Ok((b, None))
        }
    }
}

/// Starts the endpoint of `[metrics] listen` (`at`) for `relay`, if configured; it stops when
/// `stop` turns true.
async fn start_metrics(
    at: Option<SocketAddr>,
    relay: &Relay,
    stop: tokio::sync::watch::Receiver<bool>,
) -> Result<Option<tokio::task::JoinHandle<()>>, crate::Error> {
    let Some(at) = at else {
        return Ok(None);
    };
    let l = tokio::net::TcpListener::bind(at)
        .await
        .map_err(|source| crate::Error::Io {
            context: format!("binding the metrics endpoint {at}"),
            source,
        })?;
    let bound = l.local_addr().map_err(|source| crate::Error::Io {
        context: "reading the metrics address".into(),
        source,
    })?;
    tracing::info!(addr = %bound, "metrics endpoint listening");
    let r = relay.clone();
    let render: metrics::Render = Arc::new(move || {
        r.records()
            .metrics()
            .render(&r.stats().snapshot(), r.records().kind())
    });
    Ok(Some(tokio::spawn(metrics::serve(l, render, stop))))
}

/// `sremp relay --check-config`: prints the summary ([`super::relay_check`]; text, or the
/// JSON object with `--json`) on stdout; an error (exit status 1) when the relay would not
/// start.
pub fn check_config(cfg: &Config, json: bool) -> Result<(), CliError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| crate::Error::Io {
            context: "starting the runtime".into(),
            source,
        })?;
    let c = rt.block_on(super::relay_check::check(cfg));
    if json {
        println!("{}", serde_json::to_string(&c).unwrap_or_default());
    } else {
        print!("{}", check_text(&c));
    }
    if c.ok {
        Ok(())
    } else {
        Err(crate::Error::from(RelayError::CheckFailed(c.problems.len())).into())
    }
}

/// The human-readable `--check-config` summary (one `key: value` line each, problems last).
fn check_text(c: &ConfigCheck) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: String| out.push_str(&format!("{k:<17} {v}\n"));
    line("config:", if c.ok { "ok".into() } else { "INVALID".into() });
    line("data dir:", c.data_dir.clone());
    line(
        "identity:",
        c.identity
            .clone()
            .unwrap_or_else(|| "(created on first start)".into()),
    );
    line("listen:", c.listen.clone());
    match c.store {
        "nats" => line(
            "store:",
            format!(
                "nats {} (replicas {}, {})",
                c.nats_urls.join(","),
                c.replicas,
                match c.nats_reachable {
                    Some(true) => "JetStream reachable",
                    _ => "JetStream NOT reachable",
                }
            ),
        ),
        other => line(
            "store:",
            format!("{other} (embedded, relay-db in the data dir)"),
        ),
    }
    line(
        "metrics:",
        c.metrics.clone().unwrap_or_else(|| "off".into()),
    );
    line(
        "limits:",
        format!(
            "max message {} B, quota {} messages / {} B per recipient, retention {} s, rate {}/s burst {}",
            c.max_message_size, c.quota_messages, c.quota_bytes, c.retention_secs, c.rate_per_sec, c.rate_burst
        ),
    );
    for p in &c.problems {
        line("problem:", p.clone());
    }
    out
}

fn watch_pair() -> (
    tokio::sync::watch::Sender<bool>,
    tokio::sync::watch::Receiver<bool>,
) {
    tokio::sync::watch::channel(false)
}
