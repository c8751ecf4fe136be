//! `sremp relay`: relay-only mode, a store-and-forward relay for other people's messages
//! ([`crate::relay::Relay`] in [`RelayMode::Open`]) until SIGTERM or Ctrl-C.

use super::CliError;
use crate::config::Config;
use crate::identity::keys::{load_or_create_identity, WantedFlags};
use crate::noise::listener;
use crate::relay::check::ConfigCheck;
use crate::relay::stats::Stats;
use crate::relay::{
    backend, metrics, Relay, RelayError, RelayMode, RelayOptions, ADDR_FILE, STATS_FILE,
};
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
    let (backend, store) = backend::open(cfg, &dir, stats.clone()).await?;
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
    let metrics_task = metrics::start(cfg, &relay, stop_rx.clone()).await?;
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

/// `sremp relay --check-config`: prints the summary ([`crate::relay::check`]; text, or the
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
    let c = rt.block_on(crate::relay::check::check(cfg));
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
