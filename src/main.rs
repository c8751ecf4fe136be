//! The `sremp` binary: parse the command line, set up tracing, call into the library.

use clap::Parser;
use sremp::cli::{Cli, Command, GlobalArgs, IdCommand};
use sremp::config::Config;
use sremp::identity::rotation::Change;
use sremp::identity::{ContactCard, Flags, UserIdentity};
use sremp::time::Timestamp;
use std::process::ExitCode;

fn main() -> ExitCode {
    // Everything this process creates (data dirs, sled's files, stats and address files, the
    // control socket) is owner-only, whatever the caller's umask; files that need it are also
    // chmod-ed explicitly.
    #[cfg(unix)]
    // SAFETY: umask(2) only sets this process's file mode creation mask; it cannot fail.
    unsafe {
        libc::umask(0o077);
    }
    let json_requested = std::env::args_os().any(|a| a == "--json");
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if json_requested && e.use_stderr() => {
            print_json_error("usage", &e.kind().to_string(), &e.to_string());
            return ExitCode::from(2);
        }
        Err(e) => e.exit(),
    };
    let json = cli.global.json;
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if json => {
            print_json_error(e.kind(), &e.to_string(), &e.to_string());
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A `--json` failure: one JSON object on stderr, `{"ok":false,"kind":..,"error":..}`
/// (README, "JSON output"). For usage errors `error` is clap's kind and `message` its text.
fn print_json_error(kind: &str, error: &str, message: &str) {
    let mut v = serde_json::json!({ "ok": false, "kind": kind, "error": error.trim() });
    if message != error {
        v["message"] = serde_json::Value::String(message.trim().to_string());
    }
    eprintln!("{v}");
}

fn load_config(g: &GlobalArgs) -> Result<Config, sremp::Error> {
    let mut cfg = match &g.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(d) = &g.data_dir {
        cfg.data_dir = Some(d.clone());
    }
    Ok(cfg)
}

/// The card of a stopped node: configured endpoints, no relays.
fn offline_card(cfg: &Config, user: &UserIdentity) -> ContactCard {
    let endpoints = if cfg.listen.advertise.is_empty() {
        vec![sremp::wire::Endpoint::from_socket_addr(cfg.listen.address)]
    } else {
        cfg.listen
            .advertise
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect()
    };
    ContactCard {
        identity: user.identity().clone(),
        endpoints,
        relays: Vec::new(),
    }
}

fn run(cli: Cli) -> Result<(), sremp::Error> {
    let cfg = load_config(&cli.global)?;
    match cli.command {
        Command::Init { username } => {
            // Refuse a config `run` would refuse before creating anything.
            cfg.validate_node()?;
            let dir = cfg.data_dir();
            if let Some(old) = sremp::node::ensure_private_dir(&dir)? {
                eprintln!(
                    "warning: data directory {} was accessible by group or others (mode {old:o}); tightened it to 0700",
                    dir.display()
                );
            }
            let key = UserIdentity::path(&dir);
            if let Ok(meta) = std::fs::symlink_metadata(&key) {
                return Err(if meta.is_file() {
                    sremp::identity::keys::KeyFileError::AlreadyExists(key)
                } else {
                    sremp::identity::keys::KeyFileError::NotAFile(key)
                }
                .into());
            }
            let username = username.unwrap_or_else(|| cfg.username());
            let user = UserIdentity::generate(
                &username,
                sremp::node::WantedFlags::node(&cfg).apply(Flags::default()),
                Timestamp::now(),
                &mut rand::rngs::OsRng,
            )?;
            user.create_file(&dir)?;
            if cli.global.json {
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
        Command::Id {
            command: Some(sub), ..
        } => {
            let change = match sub {
                IdCommand::Rename { name } => Change::Rename(name),
                IdCommand::RotateNoiseKey => Change::RotateNoiseKey,
            };
            let (view, live) = match sremp::node::control::update_live_id(&cfg, &change)? {
                Some(v) => (v, true),
                None => {
                    let dir = cfg.data_dir();
                    let user = sremp::identity::rotation::apply_update(
                        &dir,
                        &change,
                        cfg.node.noise_key_grace(),
                        Timestamp::now(),
                    )?;
                    let card = offline_card(&cfg, &user);
                    (sremp::node::control::IdentityView::of(&card), false)
                }
            };
            if cli.global.json {
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
        Command::Id { no_qr, .. } => {
            if sremp::node::control::print_live_id(&cfg, cli.global.json, no_qr) {
                return Ok(());
            }
            let dir = cfg.data_dir();
            let user = UserIdentity::load_file(&dir)?;
            if let Some(w) = sremp::node::unusable_advertise_warning(&cfg, cfg.listen.address) {
                eprintln!("warning: {w}");
            }
            let card = offline_card(&cfg, &user);
            if cli.global.json {
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
        Command::Relay => sremp::relay::run_cli(&cfg),
        Command::Rendezvous => sremp::rendezvous::run_cli(&cfg),
        Command::Certs { out, name } => sremp::rendezvous::run_certs_cli(&out, &name),
        Command::Backup {
            out,
            key,
            relay: true,
        } => {
            // A stopped relay's store: opened (and verified) here; a running relay holds the lock.
            let dir = cfg.data_dir().join(sremp::relay::DB_DIR);
            let store = sremp::store::SledStore::open_checked(&dir)
                .map_err(|e| e.with_advice(sremp::relay::RELAY_DAMAGE_ADVICE))?;
            let (_, created) = sremp::backup::BackupKey::load_or_create(&key)?;
            let s = sremp::backup::write_backup(&store, &out, &key)?;
            sremp::store::Store::close(&store)?;
            if cli.global.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "out": s.out,
                        "records": s.records,
                        "bytes": s.bytes,
                        "key": key.display().to_string(),
                        "key_created": created,
                    })
                );
            } else {
                if created {
                    println!(
                        "created key file {} (keep it safe and apart from the backup)",
                        key.display()
                    );
                }
                println!(
                    "backup written: {} ({} records, {} bytes)",
                    s.out, s.records, s.bytes
                );
            }
            Ok(())
        }
        Command::Restore {
            file,
            key,
            force,
            relay,
        } => {
            let dir = cfg.data_dir().join(if relay {
                sremp::relay::DB_DIR
            } else {
                sremp::node::DB_DIR
            });
            let r = sremp::backup::restore_backup(&dir, &file, &key, force)?;
            let aside = r.moved_aside.map(|p| p.display().to_string());
            if cli.global.json {
                println!(
                    "{}",
                    serde_json::json!({
                        "records": r.records,
                        "db": dir.display().to_string(),
                        "moved_aside": aside,
                    })
                );
            } else {
                println!("restored {} records into {}", r.records, dir.display());
                if let Some(a) = aside {
                    println!("the previous store was moved to {a}");
                }
            }
            Ok(())
        }
        cmd @ (Command::Contacts { .. }
        | Command::Backup { .. }
        | Command::Send { .. }
        | Command::Messages { .. }
        | Command::Status
        | Command::Discover { .. }) => {
            sremp::node::control::run_cli(&cfg, &cli.global, cmd).map_err(Into::into)
        }
        Command::Run => {
            sremp::logging::init(&cfg.log);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .map_err(|source| sremp::Error::Io {
                    context: "starting the runtime".into(),
                    source,
                })?;
            rt.block_on(async {
                let node = sremp::node::Node::start(&cfg).await?;
                sremp::shutdown::wait_for_signal().await;
                tracing::info!("shutting down");
                node.shutdown().await;
                Ok(())
            })
        }
    }
}
