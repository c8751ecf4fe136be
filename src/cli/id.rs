//! `sremp init`, `sremp id` and `sremp id rename|rotate-noise-key`.
//!
//! `id` shows the running node's live card when a node answers on the control socket, else the
//! key file's identity with the configured endpoints; an update goes through the running node
//! (which re-registers and tells contacts) or, without one, into the key file.

use super::control::{call_ok, missing};
use super::CliError;
use crate::config::Config;
use crate::identity::keys::{ensure_private_dir, KeyFileError};
use crate::identity::rotation::{apply_update, Change};
use crate::identity::{ContactCard, Flags, UserIdentity};
use crate::node::control::{socket_path, Client, ControlError, IdentityView, Request, Response};
use crate::time::Timestamp;
use std::time::Duration;

/// `sremp init`: a new identity in the data directory (refuses to overwrite one).
pub fn init(cfg: &Config, json: bool, username: Option<String>) -> Result<(), CliError> {
    // Refuse a config `run` would refuse before creating anything.
    crate::node::validate_config(cfg)?;
    let dir = cfg.data_dir();
    if let Some(old) = ensure_private_dir(&dir)? {
        eprintln!(
            "warning: data directory {} was accessible by group or others (mode {old:o}); tightened it to 0700",
            dir.display()
        );
    }
    let key = UserIdentity::path(&dir);
    if let Ok(meta) = std::fs::symlink_metadata(&key) {
        return Err(if meta.is_file() {
            KeyFileError::AlreadyExists(key)
        } else {
            KeyFileError::NotAFile(key)
        }
        .into());
    }
    let username = username.unwrap_or_else(|| cfg.username());
    let user = UserIdentity::generate(
        &username,
        crate::node::wanted_flags(cfg).apply(Flags::default()),
        Timestamp::now(),
        &mut rand::rngs::OsRng,
    )?;
    user.create_file(&dir)?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "id": user.key().to_string(), "data_dir": dir })
        );
    } else {
        println!(
            "created identity {} for {}",
            user.key(),
            user.identity().username()
        );
        println!("data directory: {}", dir.display());
    }
    Ok(())
}

/// `sremp id rename|rotate-noise-key`: publishes a new identity version.
pub fn update(cfg: &Config, json: bool, sub: super::IdCommand) -> Result<(), CliError> {
    let change = match sub {
        super::IdCommand::Rename { name } => Change::Rename(name),
        super::IdCommand::RotateNoiseKey => Change::RotateNoiseKey,
    };
    let (view, live) = match update_live_id(cfg, &change)? {
        Some(v) => (v, true),
        None => {
            let dir = cfg.data_dir();
            let user = apply_update(&dir, &change, cfg.node.noise_key_grace(), Timestamp::now())?;
            let card = offline_card(cfg, &user)?;
            (IdentityView::of(&card), false)
        }
    };
    if json {
        let mut v = serde_json::json!(view);
        v["live"] = serde_json::json!(live);
        println!("{v}");
    } else {
        println!("id:      {}", view.id);
        println!("name:    {}", view.username);
        println!("version: {}", view.version);
        println!("card:    {}", view.card);
        if live {
            println!("published through the running node (re-registered, contacts told)");
        } else {
            println!("saved; the node publishes it when it starts");
        }
    }
    Ok(())
}

/// `sremp id`: the live card of the running node, else the key file's identity.
pub fn show(cfg: &Config, json: bool, no_qr: bool) -> Result<(), CliError> {
    if print_live_id(cfg, json, no_qr) {
        return Ok(());
    }
    let dir = cfg.data_dir();
    let user = UserIdentity::load_file(&dir)?;
    if let Some(w) = crate::node::unusable_advertise_warning(cfg, cfg.listen.address) {
        eprintln!("warning: {w}");
    }
    let card = offline_card(cfg, &user)?;
    if json {
        println!(
            "{}",
            serde_json::json!({
                "id": user.key().to_string(),
                "username": user.identity().username().as_str(),
                "version": user.identity().version(),
                "flags": user.identity().data().flags,
                "card": card.to_text(),
            })
        );
    } else {
        println!("id:   {}", user.key());
        println!("name: {}", user.identity().username());
        println!("card: {}", card.to_text());
        if !no_qr {
            match card.to_qr() {
                Ok(qr) => println!("{qr}"),
                Err(e) => println!("(no QR code: {e})"),
            }
        }
    }
    Ok(())
}

/// The card of a stopped node: configured endpoints, no relays.
fn offline_card(cfg: &Config, user: &UserIdentity) -> Result<ContactCard, CliError> {
    Ok(ContactCard {
        identity: user.identity().clone(),
        endpoints: cfg.listen.advertised(cfg.listen.address)?,
        relays: Vec::new(),
    })
}

/// `sremp id` while the node runs: its live card (actual endpoints and home relays). Returns
/// `false`, printing nothing, when no node answers, so the caller falls back to the key file.
fn print_live_id(cfg: &Config, json: bool, no_qr: bool) -> bool {
    let path = socket_path(&cfg.data_dir());
    if !path.exists() {
        return false;
    }
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return false;
    };
    let resp = rt.block_on(async {
        let mut c = Client::connect(&path).await?;
        c.call(&Request::Card, Duration::from_secs(5))
            .await?
            .into_result()
    });
    let Ok(Response {
        identity: Some(id), ..
    }) = resp
    else {
        return false;
    };
    if json {
        println!("{}", serde_json::json!(id));
    } else {
        println!("id:   {}", id.id);
        println!("name: {}", id.username);
        println!("card: {}", id.card);
        if !no_qr {
            match ContactCard::from_text(&id.card).and_then(|c| c.to_qr()) {
                Ok(qr) => println!("{qr}"),
                Err(e) => println!("(no QR code: {e})"),
            }
        }
    }
    true
}

/// `sremp id rename|rotate-noise-key` while the node runs: the update goes through the node
/// (which announces it). `Ok(None)`: no node answers; the caller updates the key file itself.
fn update_live_id(cfg: &Config, change: &Change) -> Result<Option<IdentityView>, ControlError> {
    let path = socket_path(&cfg.data_dir());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ControlError::Runtime)?;
    let req = match change {
        Change::Rename(username) => Request::IdRename {
            username: username.clone(),
        },
        Change::RotateNoiseKey => Request::IdRotateNoiseKey,
    };
    match rt.block_on(call_ok(&path, &req)) {
        Ok(r) => r.identity.map(Some).ok_or_else(|| missing("identity")),
        Err(ControlError::NotRunning(_)) => Ok(None),
        Err(e) => Err(e),
    }
}
