//! The local control API: how the CLI (and scripts) talk to a running node.
//!
//! The node listens on a Unix socket, `<data_dir>/control.sock` ([`super::CONTROL_SOCKET`]),
//! created with mode 0600 inside the 0700 data directory, so only the owner can use it. The
//! protocol is newline-delimited JSON: the client writes one request object per line and reads
//! one response object per line. A connection may carry several requests, one after another.
//!
//! ## Requests (`"cmd"` selects the command)
//! ```text
//! {"cmd":"status"}
//! {"cmd":"card"}
//! {"cmd":"contacts_add","card":"sremp1:..."}
//! {"cmd":"contacts_list"}
//! {"cmd":"strangers_list"}
//! {"cmd":"contacts_trust","contact":"<64-hex id or unique username>"}
//! {"cmd":"contacts_reject","contact":"<64-hex id or unique username>"}
//! {"cmd":"send","contact":"<id or username>","text":"hello"}
//! {"cmd":"wait_delivered","id":"<16-hex message id>","timeout_ms":30000}
//! {"cmd":"messages","after_seq":null,"limit":100}
//! {"cmd":"follow","after_seq":12}
//! {"cmd":"follow","after_seq":12,"events":true}
//! {"cmd":"presence"}
//! {"cmd":"id_rename","username":"alice2"}
//! {"cmd":"id_rotate_noise_key"}
//! {"cmd":"group","op":"create"|"accept"|...,...}   (group chats: see [`group`])
//! {"cmd":"send_file","contact":"<id or username>","path":"/absolute/path"}
//! {"cmd":"send_file_group","group":"<id or name>","path":"/absolute/path"}
//! {"cmd":"files"}
//! {"cmd":"files_accept","id":"<32-hex transfer id>","to":"/absolute/dir"}
//! {"cmd":"files_reject","id":"<32-hex transfer id>","reason":"too big"}
//! {"cmd":"files_follow","id":"<32-hex transfer id>"}
//! ```
//! The file requests, their `TRANSFER` object and the `files_follow` progress stream are
//! described in docs/FILES.md.
//! `after_seq` and `limit` are optional (`limit` defaults to 100 and is capped at
//! [`MAX_MESSAGES`]); `timeout_ms` defaults to 30000 and is capped at [`MAX_WAIT`].
//!
//! ## Responses
//! Every response has `"ok"`. A failure is `{"ok":false,"error":"<message for people>"}`
//! (unknown command, malformed JSON, unknown contact, bad card, timeout...); a failure caused
//! by a full disk also carries `"code":"disk_full"` ([`DISK_FULL`]). Successes:
//! ```text
//! status          {"ok":true,"status":{...node status...}}
//! card            {"ok":true,"identity":{"id":"<64 hex>","username":"alice","version":1,"flags":FLAGS,"card":"sremp1:..."}}
//! id_rename       {"ok":true,"identity":{...}}          (the new version, as for card)
//! id_rotate_noise_key {"ok":true,"identity":{...}}      (the new version, as for card)
//! contacts_add    {"ok":true,"contact":CONTACT}
//! contacts_list   {"ok":true,"contacts":[CONTACT,...]}   (contacts only)
//! strangers_list  {"ok":true,"contacts":[CONTACT,...]}   (peers met that are not contacts,
//!                                                        most recently seen first; trust "unknown")
//! contacts_trust  {"ok":true,"contact":CONTACT}
//! contacts_reject {"ok":true,"contact":CONTACT}
//! send            {"ok":true,"entry":ENTRY}            (the message is in the durable outbox)
//! wait_delivered  {"ok":true,"entry":ENTRY}            (status is "delivered")
//! messages        {"ok":true,"messages":[ENTRY,...]}   (oldest first, seq > after_seq)
//! backup          {"ok":true,"backup":{"out":PATH,"records":N,"bytes":N}}
//! presence        {"ok":true,"presence":[{"id":"<64 hex>","direct":bool},...]}
//! ```
//! `presence` lists every contact the node has tried to reach directly; `direct` is whether the
//! last attempt succeeded ([`super::events::PresenceView`]).
//! `CONTACT` is `{"id":"<64 hex>","username":"bob","version":1,"trust":"unknown"|"trusted"|
//! "rejected","first_seen":MS,"last_seen":MS,"endpoints":["host:port"|"quic://host:port"],"relays":["<64 hex
//! relay id>@host:port"]}` ([`ContactView`]); `ENTRY` is a
//! [`HistoryEntry`](super::history::HistoryEntry):
//! `{"seq":1,"id":"<16 hex>","direction":"out"|"in","peer":"<64 hex>","peer_name":"bob"|null,
//! "text":"...","sent_at":MS,"recorded_at":MS,"status":"queued"|"stored_at_relay"|"delivered"|
//! "received"|"notice","path":"direct"|"direct-quic"|"relay"|null}` (`direct` is the direct
//! path over TCP, and for received messages any direct path; `direct-quic` a sent message the
//! recipient's node stored over QUIC); `FLAGS` is `{"uses_relay":bool,
//! "is_machine_account":bool,"is_relay_server":bool,"prefers_async":bool}`. Times are
//! milliseconds since the Unix epoch. A `notice` entry is a line the node wrote itself, not a
//! message (a session reset after lost state: on the sender, `direction` `out`, saying how many
//! messages were re-sent; on the recipient, `direction` `in`); its `id` is random and matches
//! nothing.
//!
//! `follow` turns the connection into a stream: first `{"ok":true,"following":true}`, then, if
//! `after_seq` was given, every entry with a larger seq as `{"ok":true,"entry":ENTRY}`, then one
//! such line for every new entry and every status change (the same seq may appear again with a
//! new status), until the client disconnects. If the client reads too slowly and updates are
//! lost, a `{"ok":true,"lagged":N}` line says how many. With `"events":true` the stream also
//! carries `{"ok":true,"event":EVENT}` lines ([`super::events::NodeEvent`]): `{"kind":"contact",
//! "change":"new"|"updated"|"trust","contact":CONTACT}` when a contact is pinned, updated or has
//! its trust changed, and `{"kind":"key_conflict","contact":CONTACT,"detail":"..."}` when a card,
//! connection or rendezvous answer presented an identity conflicting with the pinned one (which
//! is kept). Without `events` the stream is as before. `sremp chat` is a client of this stream.
//!
//! ## Limits and invariants
//! - A request line is at most [`MAX_REQUEST_LINE`] bytes; a longer one gets an error response
//!   and the connection is closed. Malformed JSON gets an error response; nothing a client sends
//!   can panic the node.
//! - At most [`MAX_CLIENTS`] control connections at once; more are told so and closed. A
//!   connection idle for [`IDLE_TIMEOUT`] between requests is closed.
//! - A stale socket file (no live node answering on it) is replaced at start; a live one is
//!   left alone and the second server refuses to start ([`ControlError::InUse`]). The socket file
//!   is removed at shutdown.
//!
//! The control API does no protocol work itself: every request maps to one [`Node`](super::Node)
//! method.
//!
//! ## Layout
//! - this module: the request and response types, the JSON views, the limits and the line codec
//!   both sides share;
//! - [`server`]: the socket the node serves (bind, accept loop, one task per client);
//! - [`client`]: the connection the CLI and scripts use ([`Client`], [`request`],
//!   [`follow_stream`]).
//!
//! Printing for people and the command line live in the binary's `cli` module, not here.
//!
//! ```no_run
//! # async fn f() -> Result<(), sremp::node::control::ControlError> {
//! use sremp::node::control::{request, Request};
//! let resp = request(std::path::Path::new("/home/me/.local/share/sremp/control.sock"), &Request::Status).await?;
//! println!("{}", resp.status.unwrap_or_default());
//! # Ok(()) }
//! ```

use super::history::HistoryEntry;
use crate::identity::ContactIdentity;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};

pub mod client;
pub mod group;
pub mod server;

pub use client::{connect, follow_stream, request, Client, Follow};
pub use server::{bind, execute, serve, serve_listener};

/// Longest request line accepted, in bytes (without the newline): room for a `send` of the
/// longest valid text ([`super::MAX_TEXT`]) even if JSON must escape every byte as `\u00XX`
/// (6 bytes each), plus the contact and the rest of the request.
pub const MAX_REQUEST_LINE: usize = 6 * super::MAX_TEXT + 4096;
/// Longest response line a client accepts, in bytes.
pub const MAX_RESPONSE_LINE: usize = 64 * 1024 * 1024;
/// Most control connections served at once.
pub const MAX_CLIENTS: usize = 16;
/// Most entries in one `messages` response.
pub const MAX_MESSAGES: usize = 1000;
/// Default `limit` of a `messages` request.
pub const DEFAULT_MESSAGES: usize = 100;
/// Longest `wait_delivered` the server accepts.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);
/// Default `wait_delivered` timeout.
pub const DEFAULT_WAIT: Duration = Duration::from_secs(30);
/// A connection idle this long between requests is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(300);
/// How long the client waits for a connection and a plain (non-waiting) response.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Why a control operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// No node answers on the socket.
    #[error("node is not running (no control socket at {})", .0.display())]
    NotRunning(PathBuf),
    /// Local socket I/O.
    #[error("control socket {}: {source}", path.display())]
    Io {
        /// The socket.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Another live node already serves this socket.
    #[error("another node is already serving {}", .0.display())]
    InUse(PathBuf),
    /// Something that is not a socket is in the way.
    #[error("{} exists and is not a socket; not replacing it", .0.display())]
    NotASocket(PathBuf),
    /// The node answered with an error.
    #[error("{0}")]
    Refused(String),
    /// The node refused because its disk is full (`"code":"disk_full"`); it keeps running and
    /// resumes by itself when space returns.
    #[error("{0}")]
    DiskFull(String),
    /// The node's answer was not a valid response.
    #[error("malformed response from the node: {0}")]
    BadResponse(String),
    /// The node's answer line was too long.
    #[error("response from the node is larger than {max} bytes")]
    ResponseTooLarge {
        /// The limit.
        max: usize,
    },
    /// The node closed the connection before answering.
    #[error("the node closed the control connection")]
    Closed,
    /// No answer in time.
    #[error("no answer from the node within {} s", .0.as_secs())]
    Timeout(Duration),
    /// Bad command line input.
    #[error("{0}")]
    BadArgument(String),
    /// Writing to stdout failed.
    #[error("writing output: {0}")]
    Output(std::io::Error),
    /// The async runtime could not start.
    #[error("starting the runtime: {0}")]
    Runtime(std::io::Error),
    /// Asking the rendezvous servers failed (every server failed, or none is configured).
    #[error(transparent)]
    Rendezvous(#[from] crate::rendezvous::RendezvousError),
    /// A discovery found nothing to add, or more than one peer.
    #[error("{0}")]
    NotFound(String),
}

/// A control request (one JSON line; see the module doc for the shapes).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Listen address, relay and rendezvous state, connections.
    Status,
    /// This node's identity and live contact card.
    Card,
    /// Add (pin) a contact from its card.
    ContactsAdd {
        /// The `sremp1:` card text.
        card: String,
    },
    /// Every contact.
    ContactsList,
    /// Peers met that are not contacts (`sremp contacts list --strangers`).
    StrangersList,
    /// Mark a contact trusted.
    ContactsTrust {
        /// 64-hex id or unique username.
        contact: String,
    },
    /// Mark a contact rejected.
    ContactsReject {
        /// 64-hex id or unique username.
        contact: String,
    },
    /// Queue a message.
    Send {
        /// 64-hex id or unique username.
        contact: String,
        /// The text.
        text: String,
    },
    /// Wait until a sent message is delivered.
    WaitDelivered {
        /// 16-hex message id.
        id: String,
        /// Give up after this many ms (default 30000, at most 3600000).
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// History, oldest first.
    Messages {
        /// Only entries with a larger seq.
        #[serde(default)]
        after_seq: Option<u64>,
        /// At most this many (default 100, at most 1000).
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Write an encrypted point-in-time backup of the store.
    Backup {
        /// Absolute path of the backup file to write.
        out: String,
        /// Absolute path of the key file (must exist).
        key: String,
    },
    /// Stream entries (backlog after `after_seq`, then every new entry and status change).
    Follow {
        /// Send the entries after this seq first.
        #[serde(default)]
        after_seq: Option<u64>,
        /// Also stream contact events ([`super::events::NodeEvent`]).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        events: bool,
    },
    /// Reachability of the contacts the node has tried.
    Presence,
    /// Publish a new identity version with a new username.
    IdRename {
        /// 1 to 40 characters.
        username: String,
    },
    /// Publish a new identity version with a fresh Noise key.
    IdRotateNoiseKey,
    /// Group chats: one request per `op` ([`group`] documents the shapes).
    Group {
        /// What to do.
        op: group::GroupOp,
        /// The group: 32-hex id, unique id prefix (4+ hex) or unique name (all but
        /// `create` and `list`).
        #[serde(default)]
        group: Option<String>,
        /// `create`: the group's name.
        #[serde(default)]
        name: Option<String>,
        /// `create`: the members (contact ids or unique usernames), not us.
        #[serde(default)]
        members: Option<Vec<String>>,
        /// `send`: the text.
        #[serde(default)]
        text: Option<String>,
        /// `messages`: only entries with a larger seq.
        #[serde(default)]
        after_seq: Option<u64>,
        /// `messages`: at most this many (default 100, at most 1000).
        #[serde(default)]
        limit: Option<usize>,
    },
    /// Offer a file to a contact (docs/FILES.md).
    SendFile {
        /// 64-hex id or unique username.
        contact: String,
        /// Absolute path of the file (as the node sees it).
        path: String,
    },
    /// Offer a file to every member of a group (docs/FILES.md).
    SendFileGroup {
        /// Group id or unique name.
        group: String,
        /// Absolute path of the file (as the node sees it).
        path: String,
    },
    /// Every file transfer.
    Files,
    /// Accept an offered file.
    FilesAccept {
        /// 32-hex transfer id.
        id: String,
        /// Absolute target directory (default: `[files] download_dir`).
        #[serde(default)]
        to: Option<String>,
    },
    /// Refuse an offered file.
    FilesReject {
        /// 32-hex transfer id.
        id: String,
        /// Told to the sender.
        #[serde(default)]
        reason: Option<String>,
    },
    /// Stream progress of one transfer (or of all when `id` is null).
    FilesFollow {
        /// 32-hex transfer id.
        #[serde(default)]
        id: Option<String>,
    },
}

/// This node's identity and card (`card` response; the shape of `sremp id --json`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdentityView {
    /// Contact id, 64 hex.
    pub id: String,
    /// Username.
    pub username: String,
    /// Identity version.
    pub version: u64,
    /// The identity's flags (`uses_relay`, `is_machine_account`, `is_relay_server`,
    /// `prefers_async`).
    #[serde(default)]
    pub flags: crate::identity::Flags,
    /// The `sremp1:` card with the live endpoints and home relays.
    pub card: String,
}

impl IdentityView {
    /// The view of a card.
    pub fn of(card: &crate::identity::ContactCard) -> Self {
        IdentityView {
            id: card.identity.key().to_string(),
            username: card.identity.username().as_str().to_string(),
            version: card.identity.version(),
            flags: card.identity.data().flags,
            card: card.to_text(),
        }
    }
}

/// A contact as the control API shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContactView {
    /// Contact id, 64 hex.
    pub id: String,
    /// Username.
    pub username: String,
    /// Identity version.
    pub version: u64,
    /// "unknown", "trusted" or "rejected".
    pub trust: String,
    /// When first pinned (ms since the epoch).
    pub first_seen: u64,
    /// When last seen (ms since the epoch).
    pub last_seen: u64,
    /// Known direct endpoints, "host:port".
    pub endpoints: Vec<String>,
    /// Known home relays, "<relay id>@host:port".
    pub relays: Vec<String>,
}

impl From<&ContactIdentity> for ContactView {
    fn from(c: &ContactIdentity) -> Self {
        ContactView {
            id: c.identity.key().to_string(),
            username: c.identity.username().as_str().to_string(),
            version: c.identity.version(),
            trust: c.trust.to_string(),
            first_seen: c.first_seen.0,
            last_seen: c.last_seen.0,
            endpoints: c.endpoints.iter().map(|e| e.to_string()).collect(),
            relays: c
                .relays
                .iter()
                .map(|r| format!("{}@{}", hex::encode(r.relay_key), r.endpoint))
                .collect(),
        }
    }
}

/// The `code` of a refusal caused by a full disk (control responses and `--json` errors).
pub const DISK_FULL: &str = "disk_full";

/// A control response (one JSON line). Exactly one payload field is set on success.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request succeeded.
    pub ok: bool,
    /// Why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// A stable machine-readable code for some failures: [`DISK_FULL`] (`"disk_full"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// `status`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
    /// `card`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<IdentityView>,
    /// `contacts_add`, `contacts_trust`, `contacts_reject`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contact: Option<ContactView>,
    /// `contacts_list`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contacts: Option<Vec<ContactView>>,
    /// `send`, `wait_delivered`, and each streamed `follow` line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<HistoryEntry>,
    /// `messages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub messages: Option<Vec<HistoryEntry>>,
    /// First line of a `follow` stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub following: Option<bool>,
    /// In a `follow` stream: this many updates were dropped because the client was slow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lagged: Option<u64>,
    /// `backup`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<crate::backup::BackupSummary>,
    /// In a `follow` stream with `"events":true`: a contact event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<super::events::NodeEvent>,
    /// `presence`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub presence: Option<Vec<super::events::PresenceView>>,
    /// `group` ops `create`, `accept`, `decline`, `leave`, `close`, `show` (a `GROUP`) and
    /// `send` (a `GROUP_SENT`); see [`group`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<serde_json::Value>,
    /// `group` op `list`: `[GROUP,...]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<serde_json::Value>>,
    /// `send_file`, `files_accept`, `files_reject`, and each `files_follow` line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfer: Option<crate::node::files::View>,
    /// `files`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transfers: Option<Vec<crate::node::files::View>>,
}

impl Response {
    /// A failure.
    pub fn error(msg: impl Into<String>) -> Self {
        Response {
            ok: false,
            error: Some(msg.into()),
            ..Response::default()
        }
    }

    /// A failure of the node, with its code when it has one (a full disk).
    pub fn node_error(e: &super::NodeError) -> Self {
        Response {
            code: e.is_disk_full().then(|| DISK_FULL.to_string()),
            ..Response::error(e.to_string())
        }
    }

    pub(crate) fn ok() -> Self {
        Response {
            ok: true,
            ..Response::default()
        }
    }

    fn entry(e: HistoryEntry) -> Self {
        Response {
            entry: Some(e),
            ..Response::ok()
        }
    }

    fn contact(c: &ContactIdentity) -> Self {
        Response {
            contact: Some(c.into()),
            ..Response::ok()
        }
    }

    /// `Ok(self)` for a success, [`ControlError::Refused`] for a failure.
    pub fn into_result(self) -> Result<Response, ControlError> {
        if self.ok {
            Ok(self)
        } else if self.code.as_deref() == Some(DISK_FULL) {
            Err(ControlError::DiskFull(
                self.error.unwrap_or_else(|| "disk full".into()),
            ))
        } else {
            Err(ControlError::Refused(
                self.error
                    .unwrap_or_else(|| "the node refused the request".into()),
            ))
        }
    }
}

/// The control socket of the node whose data directory is `data_dir`.
pub fn socket_path(data_dir: &Path) -> PathBuf {
    data_dir.join(super::CONTROL_SOCKET)
}

/// One line read from the other side.
pub(crate) enum Line {
    Complete(Vec<u8>),
    TooLong,
}

/// Reads one `\n`-terminated line of at most `max` bytes (`None` at end of stream).
pub(crate) async fn read_line_bounded<R: AsyncBufRead + Unpin>(
    r: &mut R,
    max: usize,
) -> std::io::Result<Option<Line>> {
    let mut buf = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    let n = (&mut *r).take(limit).read_until(b'\n', &mut buf).await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        if buf.last() == Some(&b'\r') {
            buf.pop();
        }
        return Ok(Some(Line::Complete(buf)));
    }
    if buf.len() > max {
        return Ok(Some(Line::TooLong));
    }
    Ok(Some(Line::Complete(buf)))
}

pub(crate) fn encode_line<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec(v).unwrap_or_else(|e| {
        serde_json::to_vec(&Response::error(format!(
            "could not encode the response: {e}"
        )))
        .unwrap_or_else(|_| br#"{"ok":false,"error":"could not encode the response"}"#.to_vec())
    });
    out.push(b'\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    #[test]
    fn request_json_shapes() {
        let r: Request = serde_json::from_str(r#"{"cmd":"status"}"#).unwrap();
        assert_eq!(r, Request::Status);
        let r: Request = serde_json::from_str(r#"{"cmd":"messages"}"#).unwrap();
        assert_eq!(
            r,
            Request::Messages {
                after_seq: None,
                limit: None
            }
        );
        let r: Request =
            serde_json::from_str(r#"{"cmd":"send","contact":"bob","text":"hi"}"#).unwrap();
        assert_eq!(
            r,
            Request::Send {
                contact: "bob".into(),
                text: "hi".into()
            }
        );
        assert_eq!(
            serde_json::to_string(&Request::ContactsTrust {
                contact: "x".into()
            })
            .unwrap(),
            r#"{"cmd":"contacts_trust","contact":"x"}"#
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"nope"}"#).is_err());
        assert!(serde_json::from_str::<Request>(
            r#"{"cmd":"send","contact":"a","text":"b","x":1}"#
        )
        .is_err());
        assert!(serde_json::from_str::<Request>("[1,2").is_err());
    }

    #[test]
    fn response_json_shapes() {
        assert_eq!(
            serde_json::to_string(&Response::error("no")).unwrap(),
            r#"{"ok":false,"error":"no"}"#
        );
        let r: Response = serde_json::from_str(r#"{"ok":true,"following":true}"#).unwrap();
        assert_eq!(r.following, Some(true));
        assert!(Response::error("bad card").into_result().is_err());
    }

    #[tokio::test]
    async fn bounded_lines() {
        let data = b"short\nthis line is far too long\nok".to_vec();
        let mut r = BufReader::new(&data[..]);
        assert!(
            matches!(read_line_bounded(&mut r, 10).await, Ok(Some(Line::Complete(b))) if b == b"short")
        );
        assert!(matches!(
            read_line_bounded(&mut r, 10).await,
            Ok(Some(Line::TooLong))
        ));
    }
}
