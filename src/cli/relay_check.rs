//! `sremp relay --check-config`: validates what `sremp relay` would start with, without
//! starting it (no identity is created, no store opened for writing, nothing bound), and
//! summarises it. With `store = "nats"` it also connects to the servers (bounded) and asks
//! JetStream for the account, so a wrong URL, credential or TLS setting shows up here rather
//! than at start-up.
//!
//! The summary's fields are the `--json` shape documented in the README ("sremp relay
//! --check-config"); [`super::relay`] renders and prints it. It lives in the CLI because it
//! checks the whole configuration (data dir, identity file, `[listen]`, `[metrics]`), not only
//! the relay's own section.

use crate::config::Config;
use crate::relay::backend::StoreKind;
use serde::Serialize;
use std::time::Duration;

/// How long the NATS check may take.
const NATS_CHECK: Duration = Duration::from_secs(10);

/// The result of a configuration check.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct ConfigCheck {
    /// True when `sremp relay` would start with this configuration.
    pub ok: bool,
    /// Every problem found (empty when `ok`).
    pub problems: Vec<String>,
    /// The data directory.
    pub data_dir: String,
    /// The relay's identity id if `identity.key` exists, `null` if it would be created.
    pub identity: Option<String>,
    /// `[listen] address`.
    pub listen: String,
    /// `[relay] store`: `"sled"` or `"nats"`.
    pub store: &'static str,
    /// `store = "nats"`: the server URLs.
    pub nats_urls: Vec<String>,
    /// `store = "nats"`: stream replicas.
    pub replicas: u8,
    /// `store = "nats"`: whether JetStream answered (`null` for sled).
    pub nats_reachable: Option<bool>,
    /// `[metrics] listen`, `null` when off.
    pub metrics: Option<String>,
    /// `[relay] max_message_size`.
    pub max_message_size: u32,
    /// `[relay] quota_messages`.
    pub quota_messages: u32,
    /// `[relay] quota_bytes`.
    pub quota_bytes: u64,
    /// `[relay] retention_secs`.
    pub retention_secs: u64,
    /// `[relay] rate_per_sec`.
    pub rate_per_sec: u32,
    /// `[relay] rate_burst`.
    pub rate_burst: u32,
}

/// Checks `cfg` for `sremp relay` (see the module docs). Never fails: problems are listed.
pub async fn check(cfg: &Config) -> ConfigCheck {
    let mut problems = Vec::new();
    if let Err(e) = cfg.validate() {
        problems.push(e.to_string());
    }
    if let Err(e) = cfg.relay.validate() {
        problems.push(e.to_string());
    }
    let dir = cfg.data_dir();
    if dir.exists() && !dir.is_dir() {
        problems.push(format!("data_dir {} is not a directory", dir.display()));
    }
    let identity = if crate::identity::UserIdentity::exists(&dir) {
        match crate::identity::UserIdentity::load_file(&dir) {
            Ok(u) => Some(u.key().to_string()),
            Err(e) => {
                problems.push(format!("identity.key: {e}"));
                None
            }
        }
    } else {
        None
    };
    for (what, p) in [
        ("relay.credentials_file", &cfg.relay.credentials_file),
        ("relay.nats_tls_ca_file", &cfg.relay.nats_tls_ca_file),
        ("relay.nats_tls_cert_file", &cfg.relay.nats_tls_cert_file),
        ("relay.nats_tls_key_file", &cfg.relay.nats_tls_key_file),
    ] {
        if let Some(p) = p {
            if cfg.relay.store == StoreKind::Nats && std::fs::metadata(p).is_err() {
                problems.push(format!("{what}: cannot read {}", p.display()));
            }
        }
    }
    let nats_reachable = match cfg.relay.store {
        StoreKind::Sled => None,
        StoreKind::Nats if problems.is_empty() => {
            let probe = async {
                let client = crate::relay::backend::nats::connect(&cfg.relay)
                    .await
                    .map_err(|e| e.to_string())?;
                async_nats::jetstream::new(client)
                    .query_account()
                    .await
                    .map_err(|e| format!("JetStream: {e}"))?;
                Ok::<(), String>(())
            };
            match tokio::time::timeout(NATS_CHECK, probe).await {
                Ok(Ok(())) => Some(true),
                Ok(Err(e)) => {
                    problems.push(e);
                    Some(false)
                }
                Err(_) => {
                    problems.push(format!(
                        "no answer from NATS at {} within {}s",
                        cfg.relay.nats_urls.join(","),
                        NATS_CHECK.as_secs()
                    ));
                    Some(false)
                }
            }
        }
        StoreKind::Nats => Some(false),
    };
    ConfigCheck {
        ok: problems.is_empty(),
        problems,
        data_dir: dir.display().to_string(),
        identity,
        listen: cfg.listen.address.to_string(),
        store: cfg.relay.store.name(),
        nats_urls: cfg.relay.nats_urls.clone(),
        replicas: cfg.relay.replicas,
        nats_reachable,
        metrics: cfg.metrics.listen.map(|a| a.to_string()),
        max_message_size: cfg.relay.max_message_size,
        quota_messages: cfg.relay.quota_messages,
        quota_bytes: cfg.relay.quota_bytes,
        retention_secs: cfg.relay.retention_secs,
        rate_per_sec: cfg.relay.rate_per_sec,
        rate_burst: cfg.relay.rate_burst,
    }
}
