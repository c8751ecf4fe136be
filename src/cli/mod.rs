//! The command line: clap definitions ([`args`]), one module per command group, and all
//! rendering ([`render`]). `main.rs` only parses, calls [`run`] and prints the error.
//!
//! Commands:
//! - [`id`]: `sremp init`, `sremp id`, `sremp id rename|rotate-noise-key` (through the running
//!   node when there is one, else the key file);
//! - [`node`]: `sremp run`, the personal node until a signal;
//! - [`relay`]: `sremp relay`, relay-only mode until a signal;
//! - [`rendezvous`]: `sremp rendezvous` and `sremp certs`;
//! - [`backup`]: `sremp backup --relay` (a stopped relay's store) and `sremp restore`;
//! - [`files`]: `send-file` (with its progress bar) and `files [list|accept|reject]`;
//!   [`group_files`]: `send-file --group`;
//! - [`control`]: `contacts`, `send`, `messages`, `status`, `discover`, `backup` (of the
//!   running node), the commands that talk
//!   to a running node over its control socket ([`crate::node::control`]);
//! - [`chat`]: `sremp chat`, the interactive terminal client of the running node.
//! - [`group`]: `sremp group ...`, `send --group`, `messages --group` (group chats, over the
//!   control socket too).
//!
//! Output: human text on stdout, or with `--json` one JSON value (README, "JSON output"); a
//! failure is `error: ...` on stderr, or with `--json` one JSON object
//! `{"ok":false,"kind":..,"error":..}` on stderr ([`print_json_error`]), and a non-zero exit.
//!
//! The library below this module prints nothing and parses no arguments.

pub mod args;
pub mod backup;
pub mod chat;
pub mod control;
pub mod files;
pub mod group;
pub mod group_files;
pub mod id;
pub mod node;
pub mod relay;
pub mod relay_check;
pub mod render;
pub mod rendezvous;

pub use args::{Cli, Command, ContactsCommand, FilesCommand, GlobalArgs, GroupCommand, IdCommand};

use crate::config::Config;
use crate::node::control::ControlError;

/// Why a command failed: a library error, or the control socket (the CLI talking to a running
/// node).
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Any library error.
    #[error(transparent)]
    Sremp(#[from] crate::Error),
    /// The control socket.
    #[error(transparent)]
    Control(#[from] ControlError),
}

impl CliError {
    /// The `"kind"` of a `--json` error (README, "JSON output"): [`crate::Error::kind`], or
    /// `control` for the control socket.
    pub fn kind(&self) -> &'static str {
        match self {
            CliError::Sremp(e) => e.kind(),
            CliError::Control(_) => "control",
        }
    }
}

/// Library errors the commands meet with `?`, each through [`crate::Error`].
macro_rules! via_crate_error {
    ($($t:ty),* $(,)?) => {
        $(impl From<$t> for CliError {
            fn from(e: $t) -> Self {
                CliError::Sremp(e.into())
            }
        })*
    };
}
via_crate_error!(
    crate::config::ConfigError,
    crate::identity::IdentityError,
    crate::identity::keys::KeyFileError,
    crate::identity::keys::DataDirError,
    crate::identity::keys::SetupError,
    crate::store::StoreError,
    crate::backup::BackupError,
    crate::relay::RelayError,
    crate::rendezvous::RendezvousError,
);

/// A `--json` failure: one JSON object on stderr, `{"ok":false,"kind":..,"error":..}`
/// (README, "JSON output"). For usage errors `error` is clap's kind and `message` its text.
pub fn print_json_error(kind: &str, error: &str, message: &str) {
    let mut v = serde_json::json!({ "ok": false, "kind": kind, "error": error.trim() });
    if message != error {
        v["message"] = serde_json::Value::String(message.trim().to_string());
    }
    eprintln!("{v}");
}

/// The configuration `--config` names (defaults without one), with `--data-dir` applied.
pub fn load_config(g: &GlobalArgs) -> Result<Config, CliError> {
    let mut cfg = match &g.config {
        Some(p) => Config::load(p)?,
        None => Config::default(),
    };
    if let Some(d) = &g.data_dir {
        cfg.data_dir = Some(d.clone());
    }
    Ok(cfg)
}

/// Runs one parsed command line.
pub fn run(cli: Cli) -> Result<(), CliError> {
    let cfg = load_config(&cli.global)?;
    let json = cli.global.json;
    match cli.command {
        Command::Init { username } => id::init(&cfg, json, username),
        Command::Id {
            command: Some(sub), ..
        } => id::update(&cfg, json, sub),
        Command::Id { no_qr, .. } => id::show(&cfg, json, no_qr),
        Command::Chat => Ok(chat::run(&cfg, json)?),
        Command::Run => node::run(&cfg),
        Command::Relay { check_config: true } => relay::check_config(&cfg, json),
        Command::Relay { .. } => relay::run(&cfg),
        Command::Rendezvous => rendezvous::run(&cfg),
        Command::Certs { out, name } => rendezvous::certs(&out, &name),
        Command::Backup {
            out,
            key,
            relay: true,
        } => backup::backup_relay(&cfg, json, &out, &key),
        Command::Restore {
            file,
            key,
            force,
            relay,
        } => backup::restore(&cfg, json, &file, &key, force, relay),
        cmd @ (Command::Contacts { .. }
        | Command::Backup { .. }
        | Command::Send { .. }
        | Command::Messages { .. }
        | Command::Group { .. }
        | Command::Status
        | Command::Discover { .. }) => Ok(control::run(&cfg, &cli.global, cmd)?),
        Command::SendFile {
            args,
            group,
            no_wait,
        } => {
            let (contact, path) = match (group.is_some(), args.as_slice()) {
                (false, [c, p]) => (c.clone(), std::path::PathBuf::from(p)),
                (true, [p]) => (String::new(), std::path::PathBuf::from(p)),
                (false, _) => {
                    return Err(ControlError::Refused(
                        "send-file needs CONTACT PATH (or --group G PATH)".into(),
                    )
                    .into())
                }
                (true, _) => {
                    return Err(ControlError::Refused(
                        "send-file --group G takes PATH alone".into(),
                    )
                    .into())
                }
            };
            Ok(files::run(&cfg, |socket| async move {
                match group {
                    Some(g) => group_files::send_file(&socket, json, &g, &path, no_wait).await,
                    None => files::send_file(&socket, json, &contact, &path, no_wait).await,
                }
            })?)
        }
        Command::Files { command } => Ok(files::run(&cfg, |socket| async move {
            files::files(&socket, json, command).await
        })?),
    }
}

/// A multi-threaded runtime for a long-running command (`run`, `relay`, `rendezvous`).
fn server_runtime() -> Result<tokio::runtime::Runtime, crate::Error> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| crate::Error::Io {
            context: "starting the runtime".into(),
            source,
        })
}
