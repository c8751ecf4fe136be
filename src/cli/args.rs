//! The command line (clap). Every command takes `--data-dir`, `--config` and `--json`.

use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;

/// sremp: secure relay-enhanced messaging node, relay and rendezvous server.
#[derive(Debug, Parser)]
#[command(name = "sremp", version, about)]
pub struct Cli {
    /// Options shared by every command.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options shared by every command.
#[derive(Debug, Args, Clone)]
pub struct GlobalArgs {
    /// Configuration file (node-config.toml). Optional: defaults apply without one.
    #[arg(long, global = true, env = "SREMP_CONFIG")]
    pub config: Option<PathBuf>,
    /// Data directory (overrides the config file's `data_dir`).
    #[arg(long, global = true)]
    pub data_dir: Option<PathBuf>,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    pub json: bool,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a new identity in the data directory (refuses to overwrite one).
    Init {
        /// Username (1 to 40 characters). Default: the config's `username`, else `$USER` if it
        /// is a valid username, else `sremp-user` (the same default `run` uses).
        #[arg(long)]
        username: Option<String>,
    },
    /// Print this node's contact id, contact card and its QR code; or publish a new version
    /// of the identity (`rename`, `rotate-noise-key`).
    Id {
        /// Do not draw the QR code.
        #[arg(long)]
        no_qr: bool,
        /// Publish a new identity version instead of printing it.
        #[command(subcommand)]
        command: Option<IdCommand>,
    },
    /// Run the personal node (creates an identity on first start).
    Run,
    /// Run relay-only mode: a store-and-forward relay for other people's messages.
    Relay {
        /// Only validate the configuration (and reach NATS for `store = "nats"`), print a
        /// summary and exit: 0 if the relay would start, 1 if not.
        #[arg(long)]
        check_config: bool,
    },
    /// Run a rendezvous (discovery) server over TLS 1.3.
    Rendezvous,
    /// Make a localnet CA (`ca.pem`, reused if present) and a certificate and key per
    /// rendezvous server name (`NAME.pem`, `NAME-key.pem`, also valid for 127.0.0.1 and ::1).
    Certs {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
        /// A server name (repeatable).
        #[arg(long)]
        name: Vec<String>,
    },
    /// Manage contacts of the running node.
    Contacts {
        /// What to do with contacts.
        #[command(subcommand)]
        command: ContactsCommand,
    },
    /// Send a message through the running node; prints the message id (16 hex). With
    /// `--group G TEXT`: to every member of group G (one copy per member).
    Send {
        /// The contact: 64-hex contact id or a unique username (with --group: the text).
        contact: String,
        /// The text.
        #[arg(required_unless_present = "group")]
        text: Option<String>,
        /// Send to this group instead (32-hex id, unique id prefix or unique name); the only
        /// argument is then the text.
        #[arg(long, value_name = "G")]
        group: Option<String>,
        /// Wait until the message is delivered (exit non-zero on timeout).
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this many seconds.
        #[arg(long, default_value = "30")]
        timeout_secs: u64,
    },
    /// Offer a file to a contact through the running node, then show its progress (a bar
    /// with rate and ETA on a terminal; one JSON object per change with --json) until the
    /// recipient has it, refused it, or it failed. Ctrl-C stops watching, not the transfer.
    ///
    /// `sremp send-file --group G PATH` offers it to every accepted member of group G that
    /// is a contact, one transfer each (docs/FILES.md).
    SendFile {
        /// CONTACT PATH: the contact (64-hex contact id or a unique username) and the file;
        /// with --group, PATH alone.
        #[arg(value_name = "[CONTACT] PATH", num_args = 1..=2, required = true)]
        args: Vec<String>,
        /// Send to every member of this group (id or unique name) instead of one contact.
        #[arg(long)]
        group: Option<String>,
        /// Print the transfer and return at once instead of following it.
        #[arg(long)]
        no_wait: bool,
    },
    /// File transfers of the running node: list them (default), accept or reject an offer.
    Files {
        /// What to do.
        #[command(subcommand)]
        command: Option<FilesCommand>,
    },
    /// Message history of the running node, oldest first.
    Messages {
        /// Keep running and print new messages and status changes as they happen (with
        /// --json: one JSON entry per line instead of one array).
        #[arg(long)]
        follow: bool,
        /// Only the newest N entries.
        #[arg(long)]
        limit: Option<usize>,
        /// Only entries with a sequence number above this.
        #[arg(long)]
        after: Option<u64>,
        /// Only this group's entries (id, unique id prefix or unique name).
        #[arg(long, value_name = "G", conflicts_with = "follow")]
        group: Option<String>,
    },
    /// Group chats: members fixed at creation, who accept or decline (docs/PROTOCOL.md,
    /// "Groups").
    Group {
        /// What to do.
        #[command(subcommand)]
        command: GroupCommand,
    },
    /// State of the running node: listen address, relays, rendezvous, connections.
    Status,
    /// Interactive terminal client of the running node: conversations, unread counts,
    /// delivery status, /add, /trust, /reject, /id, /help (see README, "sremp chat").
    Chat,
    /// Browse or search the configured rendezvous servers: online peers (merged over every
    /// server, de-duplicated, online first), or one contact id. Does not need a running node
    /// unless `--add` is given.
    Discover {
        /// A 64-hex contact id to look up, or a username filter (case-insensitive substring).
        query: Option<String>,
        /// Page through every peer each server lists (default: the first page of each).
        #[arg(long)]
        all: bool,
        /// Add the one peer found as a contact of the running node (pinned by TOFU).
        #[arg(long)]
        add: bool,
    },
    /// Write an encrypted point-in-time backup of the running node's store.
    Backup {
        /// The backup file to write (replaced if it exists).
        #[arg(long)]
        out: PathBuf,
        /// The key file (64 hex digits). Created (mode 0600) with a new random key if it does
        /// not exist. Keep it apart from the backup: without it the backup cannot be restored.
        #[arg(long)]
        key: PathBuf,
        /// Back up the store of a stopped relay-only relay (`relay-db`) instead of asking the
        /// running node.
        #[arg(long)]
        relay: bool,
    },
    /// Replace the store with a backup (the node or relay must be stopped). Refuses to replace
    /// a healthy store without --force; the previous store is kept as `<db>.damaged-<time>`.
    Restore {
        /// The backup file written by `sremp backup`.
        file: PathBuf,
        /// The key file the backup was written with.
        #[arg(long)]
        key: PathBuf,
        /// Replace the store even if it is healthy.
        #[arg(long)]
        force: bool,
        /// Restore the relay-only store (`relay-db`) instead of the node's (`db`).
        #[arg(long)]
        relay: bool,
    },
}

/// `sremp id` subcommands: each publishes a new identity version (version + 1, created now,
/// re-signed). Through the running node when there is one (it re-registers at rendezvous and
/// tells contacts at once), else in the key file (carried on the next start).
#[derive(Debug, Subcommand)]
pub enum IdCommand {
    /// A new username (1 to 40 characters).
    Rename {
        /// The new username.
        name: String,
    },
    /// A fresh Noise static key. The old one still opens first-contact messages sealed to it
    /// for `node.noise_key_grace_secs` (default 7 days), then it is forgotten.
    RotateNoiseKey,
}

/// `sremp group` subcommands. `G` is the 32-hex group id, a unique prefix of it (4+ hex) or
/// a unique group name.
#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create a group with these contacts and invite them; prints the group id.
    Create {
        /// The group's name (1 to 64 bytes).
        name: String,
        /// Members: contact ids or unique usernames, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        members: Vec<String>,
    },
    /// Accept an invitation.
    Accept {
        /// The group.
        group: String,
    },
    /// Decline an invitation: nothing more of the group reaches this node.
    Decline {
        /// The group.
        group: String,
    },
    /// Who accepted, declined or has not answered, and this node's state.
    Show {
        /// The group.
        group: String,
    },
    /// Every group this node knows.
    List,
    /// Close a group you created: every member deletes its messages and keys.
    Close {
        /// The group.
        group: String,
    },
    /// Leave a group you accepted: the others are told and replace their sender keys.
    Leave {
        /// The group.
        group: String,
    },
}

/// `sremp contacts` subcommands.
#[derive(Debug, Subcommand)]
pub enum ContactsCommand {
    /// Add a contact from its card (`sremp1:...`, as printed by `sremp id`), or find it by id
    /// at the rendezvous servers (`--from-rendezvous ID`).
    Add {
        /// The contact card.
        #[arg(
            required_unless_present = "from_rendezvous",
            conflicts_with = "from_rendezvous"
        )]
        card: Option<String>,
        /// Look this contact id up at the configured rendezvous servers and add what they
        /// answer (the same as `sremp discover --add ID`).
        #[arg(long, value_name = "ID")]
        from_rendezvous: Option<String>,
    },
    /// List contacts (or, with --strangers, peers met that are not contacts).
    List {
        /// List strangers instead: peers that connected or wrote but are not contacts (kept
        /// in memory, bounded and expiring; answer one with `send <id>`, keep one with
        /// `contacts trust <id>`).
        #[arg(long)]
        strangers: bool,
    },
    /// Mark a contact trusted (64-hex id or unique username).
    Trust {
        /// The contact.
        contact: String,
    },
    /// Mark a contact rejected: its messages and connections are refused.
    Reject {
        /// The contact.
        contact: String,
    },
}

/// `sremp files` subcommands.
#[derive(Debug, Subcommand)]
pub enum FilesCommand {
    /// List every transfer with its state and progress.
    List,
    /// Accept an offered file (32-hex transfer id).
    Accept {
        /// The transfer id.
        id: String,
        /// Save into this directory (created if needed) instead of `[files] download_dir`.
        #[arg(long)]
        to: Option<PathBuf>,
    },
    /// Refuse an offered file; the sender is told the reason.
    Reject {
        /// The transfer id.
        id: String,
        /// Why (at most 200 bytes).
        #[arg(long)]
        reason: Option<String>,
    },
}
