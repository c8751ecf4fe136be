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
//! {"cmd":"id_rename","username":"alice2"}
//! {"cmd":"id_rotate_noise_key"}
//! ```
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
//! ```
//! `CONTACT` is `{"id":"<64 hex>","username":"bob","version":1,"trust":"unknown"|"trusted"|
//! "rejected","first_seen":MS,"last_seen":MS,"endpoints":["host:port"],"relays":["<64 hex
//! relay id>@host:port"]}` ([`ContactView`]); `ENTRY` is a
//! [`HistoryEntry`](super::history::HistoryEntry):
//! `{"seq":1,"id":"<16 hex>","direction":"out"|"in","peer":"<64 hex>","peer_name":"bob"|null,
//! "text":"...","sent_at":MS,"recorded_at":MS,"status":"queued"|"stored_at_relay"|"delivered"|
//! "received"|"notice","path":"direct"|"relay"|null}`; `FLAGS` is `{"uses_relay":bool,
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
//! lost, a `{"ok":true,"lagged":N}` line says how many.
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
//! The control API does no protocol work itself: every request maps to one [`Node`] method.
//!
//! ```no_run
//! # async fn f() -> Result<(), sremp::node::control::ControlError> {
//! use sremp::node::control::{request, Request};
//! let resp = request(std::path::Path::new("/home/me/.local/share/sremp/control.sock"), &Request::Status).await?;
//! println!("{}", resp.status.unwrap_or_default());
//! # Ok(()) }
//! ```

use super::history::{DeliveryPath, Direction, HistoryEntry, Status};
use super::Node;
use crate::cli::{Command, ContactsCommand, GlobalArgs};
use crate::config::Config;
use crate::identity::rotation::Change;
use crate::identity::{ContactIdentity, Trust};
use crate::rendezvous::discover::{Discovery, Found, FoundView, Query, ServerFailure};
use crate::shutdown::stopped;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, VecDeque};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{
    AsyncBufRead, AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader,
};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, watch, Semaphore};
use tokio::task::JoinSet;

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
/// Backlog entries remembered by a `follow` stream to drop the broadcast copies of them.
const FOLLOW_DEDUP: usize = 1024;

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
    },
    /// Publish a new identity version with a new username.
    IdRename {
        /// 1 to 40 characters.
        username: String,
    },
    /// Publish a new identity version with a fresh Noise key.
    IdRotateNoiseKey,
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

    fn ok() -> Self {
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

// ---------------------------------------------------------------------------------------------
// Server
// ---------------------------------------------------------------------------------------------

/// Binds the control socket at `path` with mode 0600, replacing a stale socket file (one no
/// live node answers on). The socket is bound under a temporary name, restricted, then renamed
/// into place, so it is never reachable with looser permissions.
pub async fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    let io = |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    };
    match tokio::fs::symlink_metadata(path).await {
        Ok(meta) => {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(ControlError::NotASocket(path.to_path_buf()));
            }
            match tokio::time::timeout(Duration::from_secs(2), UnixStream::connect(path)).await {
                Ok(Ok(_live)) => return Err(ControlError::InUse(path.to_path_buf())),
                _ => {
                    tracing::info!(path = %path.display(), "removing a stale control socket");
                    tokio::fs::remove_file(path).await.map_err(io)?;
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let mut tmp_name = path.as_os_str().to_os_string();
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(io)?;
    let placed = (|| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(io(e));
    }
    Ok(listener)
}

/// Serves the control API for `node` on `path` until `stop` turns true (or its sender is
/// dropped), then removes the socket file. Errors binding the socket are logged; the node keeps
/// running without a control API.
pub async fn serve(node: Node, path: PathBuf, stop: watch::Receiver<bool>) {
    let listener = match bind(&path).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, "control API not available");
            return;
        }
    };
    tracing::info!(path = %path.display(), "control socket listening");
    serve_listener(node, listener, stop).await;
    let _ = std::fs::remove_file(&path);
}

/// The accept loop over an already bound listener (see [`serve`]).
pub async fn serve_listener(node: Node, listener: UnixListener, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    let mut tasks = JoinSet::new();
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => break,
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => match slots.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let node = node.clone();
                        let stop = stop.clone();
                        tasks.spawn(async move {
                            handle_client(node, stream, stop).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        tracing::warn!(max = MAX_CLIENTS, "too many control clients; refusing one");
                        let mut line = encode_line(&Response::error(format!(
                            "too many control clients (at most {MAX_CLIENTS})"
                        )));
                        line.truncate(4096);
                        let _ = stream.try_write(&line);
                    }
                },
                Err(e) => {
                    tracing::warn!(error = %e, "control accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
    tasks.shutdown().await;
}

/// One line read from a client.
enum Line {
    Complete(Vec<u8>),
    TooLong,
}

/// Reads one `\n`-terminated line of at most `max` bytes (`None` at end of stream).
async fn read_line_bounded<R: AsyncBufRead + Unpin>(
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

fn encode_line<T: Serialize>(v: &T) -> Vec<u8> {
    let mut out = serde_json::to_vec(v).unwrap_or_else(|e| {
        serde_json::to_vec(&Response::error(format!(
            "could not encode the response: {e}"
        )))
        .unwrap_or_else(|_| br#"{"ok":false,"error":"could not encode the response"}"#.to_vec())
    });
    out.push(b'\n');
    out
}

async fn write_response<W: AsyncWrite + Unpin>(w: &mut W, r: &Response) -> std::io::Result<()> {
    w.write_all(&encode_line(r)).await?;
    w.flush().await
}

async fn handle_client(node: Node, stream: UnixStream, mut stop: watch::Receiver<bool>) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    loop {
        let line = tokio::select! {
            _ = stopped(&mut stop) => return,
            r = tokio::time::timeout(IDLE_TIMEOUT, read_line_bounded(&mut rd, MAX_REQUEST_LINE)) => r,
        };
        let bytes = match line {
            Err(_) | Ok(Err(_)) | Ok(Ok(None)) => return,
            Ok(Ok(Some(Line::TooLong))) => {
                let msg = format!(
                    "request line longer than {MAX_REQUEST_LINE} bytes (the control socket's line \
                     limit; a message text may be at most {} bytes)",
                    super::MAX_TEXT
                );
                let _ = write_response(&mut wr, &Response::error(msg)).await;
                return;
            }
            Ok(Ok(Some(Line::Complete(b)))) => b,
        };
        if bytes.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let req: Request = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                let resp = Response::error(format!("malformed request: {e}"));
                if write_response(&mut wr, &resp).await.is_err() {
                    return;
                }
                continue;
            }
        };
        if let Request::Follow { after_seq } = req {
            follow(&node, rd, wr, after_seq, stop).await;
            return;
        }
        let resp = tokio::select! {
            _ = stopped(&mut stop) => return,
            r = execute(&node, req) => r,
        };
        if write_response(&mut wr, &resp).await.is_err() {
            return;
        }
    }
}

/// Runs a blocking node call (store access) off the async workers.
async fn blocking<T, F>(f: F) -> Response
where
    F: FnOnce() -> Result<T, super::NodeError> + Send + 'static,
    T: Send + 'static,
    T: Into<ResponseBody>,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => v.into().0,
        Ok(Err(e)) => Response::node_error(&e),
        Err(_) => Response::error("internal error in the node"),
    }
}

/// A successful payload, converted into its response.
struct ResponseBody(Response);

impl From<ContactIdentity> for ResponseBody {
    fn from(c: ContactIdentity) -> Self {
        ResponseBody(Response::contact(&c))
    }
}
impl From<Vec<ContactIdentity>> for ResponseBody {
    fn from(cs: Vec<ContactIdentity>) -> Self {
        ResponseBody(Response {
            contacts: Some(cs.iter().map(ContactView::from).collect()),
            ..Response::ok()
        })
    }
}
impl From<Vec<HistoryEntry>> for ResponseBody {
    fn from(ms: Vec<HistoryEntry>) -> Self {
        ResponseBody(Response {
            messages: Some(ms),
            ..Response::ok()
        })
    }
}

/// Executes one non-streaming request.
pub async fn execute(node: &Node, req: Request) -> Response {
    match req {
        Request::Status => match serde_json::to_value(node.status()) {
            Ok(v) => Response {
                status: Some(v),
                ..Response::ok()
            },
            Err(e) => Response::error(format!("could not encode the status: {e}")),
        },
        Request::Card => card_response(node),
        Request::IdRename { username } => {
            match node.update_identity(Change::Rename(username)).await {
                Ok(_) => card_response(node),
                Err(e) => Response::error(e.to_string()),
            }
        }
        Request::IdRotateNoiseKey => match node.update_identity(Change::RotateNoiseKey).await {
            Ok(_) => card_response(node),
            Err(e) => Response::error(e.to_string()),
        },
        Request::ContactsAdd { card } => {
            let n = node.clone();
            blocking(move || n.add_contact(&card)).await
        }
        Request::ContactsList => {
            let n = node.clone();
            blocking(move || n.contacts()).await
        }
        Request::StrangersList => ResponseBody::from(node.strangers()).0,
        Request::ContactsTrust { contact } => {
            let n = node.clone();
            blocking(move || n.set_trust(&contact, Trust::Trusted)).await
        }
        Request::ContactsReject { contact } => {
            let n = node.clone();
            blocking(move || n.set_trust(&contact, Trust::Rejected)).await
        }
        Request::Send { contact, text } => match node.send(&contact, &text).await {
            Ok(e) => Response::entry(e),
            Err(e) => Response::node_error(&e),
        },
        Request::WaitDelivered { id, timeout_ms } => {
            let timeout = timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(DEFAULT_WAIT)
                .min(MAX_WAIT);
            match node.wait_delivered(&id, timeout).await {
                Ok(e) => Response::entry(e),
                Err(e) => Response::error(e.to_string()),
            }
        }
        Request::Messages { after_seq, limit } => {
            let limit = limit.unwrap_or(DEFAULT_MESSAGES).clamp(1, MAX_MESSAGES);
            let n = node.clone();
            let mut resp = blocking(move || n.messages(after_seq, limit)).await;
            shrink_to_fit(&mut resp);
            resp
        }
        Request::Follow { .. } => Response::error("follow needs its own connection"),
        Request::Backup { out, key } => {
            let store = node.inner.store.clone();
            let done = tokio::task::spawn_blocking(move || {
                crate::backup::write_backup(&*store, Path::new(&out), Path::new(&key))
            })
            .await;
            match done {
                Ok(Ok(summary)) => {
                    tracing::info!(out = %summary.out, records = summary.records, "backup written");
                    Response {
                        backup: Some(summary),
                        ..Response::ok()
                    }
                }
                Ok(Err(e)) => Response::error(format!("backup failed: {e}")),
                Err(_) => Response::error("internal error in the node"),
            }
        }
    }
}

fn card_response(node: &Node) -> Response {
    let card = node.card();
    Response {
        identity: Some(IdentityView::of(&card)),
        ..Response::ok()
    }
}

/// Keeps a `messages` response under the client's line limit by dropping its newest entries
/// (the client pages on from the last seq it got).
fn shrink_to_fit(resp: &mut Response) {
    for _ in 0..64 {
        let Ok(len) = serde_json::to_vec(&*resp).map(|v| v.len()) else {
            return;
        };
        if len < MAX_RESPONSE_LINE {
            return;
        }
        match resp.messages.as_mut() {
            Some(ms) if ms.len() > 1 => ms.truncate(ms.len() / 2),
            _ => return,
        }
    }
}

/// Streams history entries to a `follow` client until it disconnects or the node stops.
async fn follow<R, W>(
    node: &Node,
    mut rd: R,
    mut wr: W,
    after_seq: Option<u64>,
    mut stop: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Subscribe first so nothing recorded during the backlog scan is missed.
    let mut rx = node.subscribe();
    let started = Response {
        following: Some(true),
        ..Response::ok()
    };
    if write_response(&mut wr, &started).await.is_err() {
        return;
    }
    // Backlog, remembering what was sent so the broadcast copies of it can be skipped.
    let mut sent: HashMap<u64, Status> = HashMap::new();
    let mut order: VecDeque<u64> = VecDeque::new();
    if let Some(mut last) = after_seq {
        loop {
            let n = node.clone();
            let page =
                match tokio::task::spawn_blocking(move || n.messages(Some(last), MAX_MESSAGES))
                    .await
                {
                    Ok(Ok(p)) => p,
                    Ok(Err(e)) => {
                        let _ = write_response(&mut wr, &Response::error(e.to_string())).await;
                        return;
                    }
                    Err(_) => return,
                };
            let short = page.len() < MAX_MESSAGES;
            for e in page {
                last = last.max(e.seq);
                sent.insert(e.seq, e.status);
                order.push_back(e.seq);
                if order.len() > FOLLOW_DEDUP {
                    if let Some(old) = order.pop_front() {
                        sent.remove(&old);
                    }
                }
                if write_response(&mut wr, &Response::entry(e)).await.is_err() {
                    return;
                }
            }
            if short {
                break;
            }
        }
    }
    let mut scratch = [0u8; 512];
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => return,
            r = rd.read(&mut scratch) => match r {
                Ok(0) | Err(_) => return,
                Ok(_) => {} // Anything the client sends while following is ignored.
            },
            ev = rx.recv() => match ev {
                Ok(e) => {
                    if sent.remove(&e.seq) == Some(e.status) {
                        continue;
                    }
                    if write_response(&mut wr, &Response::entry(e)).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    let lag = Response { lagged: Some(n), ..Response::ok() };
                    if write_response(&mut wr, &lag).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Client
// ---------------------------------------------------------------------------------------------

/// Connects to the control socket at `path`.
pub async fn connect(path: &Path) -> Result<UnixStream, ControlError> {
    use std::io::ErrorKind;
    match tokio::time::timeout(CLIENT_TIMEOUT, UnixStream::connect(path)).await {
        Err(_) => Err(ControlError::Timeout(CLIENT_TIMEOUT)),
        Ok(Ok(s)) => Ok(s),
        Ok(Err(e)) if matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
            Err(ControlError::NotRunning(path.to_path_buf()))
        }
        Ok(Err(source)) => Err(ControlError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// An open control connection (several requests, one after another).
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    rd: BufReader<tokio::net::unix::OwnedReadHalf>,
    wr: tokio::net::unix::OwnedWriteHalf,
}

impl Client {
    /// Connects to the control socket at `path`.
    pub async fn connect(path: &Path) -> Result<Client, ControlError> {
        let (rd, wr) = connect(path).await?.into_split();
        Ok(Client {
            path: path.to_path_buf(),
            rd: BufReader::new(rd),
            wr,
        })
    }

    fn io(&self, source: std::io::Error) -> ControlError {
        ControlError::Io {
            path: self.path.clone(),
            source,
        }
    }

    /// Sends one request line.
    pub async fn send(&mut self, req: &Request) -> Result<(), ControlError> {
        let line = encode_line(req);
        let r = async {
            self.wr.write_all(&line).await?;
            self.wr.flush().await
        }
        .await;
        r.map_err(|e| self.io(e))
    }

    /// Reads the next response line (a failure response is returned as is, not as an error).
    pub async fn next(&mut self) -> Result<Response, ControlError> {
        match read_line_bounded(&mut self.rd, MAX_RESPONSE_LINE).await {
            Err(e) => Err(self.io(e)),
            Ok(None) => Err(ControlError::Closed),
            Ok(Some(Line::TooLong)) => Err(ControlError::ResponseTooLarge {
                max: MAX_RESPONSE_LINE,
            }),
            Ok(Some(Line::Complete(b))) => {
                serde_json::from_slice(&b).map_err(|e| ControlError::BadResponse(e.to_string()))
            }
        }
    }

    /// One request, one response, with a deadline.
    pub async fn call(
        &mut self,
        req: &Request,
        deadline: Duration,
    ) -> Result<Response, ControlError> {
        tokio::time::timeout(deadline, async {
            if let Err(e) = self.send(req).await {
                // The node may have answered and closed before reading our request (it refuses
                // connections beyond MAX_CLIENTS that way): its answer says why, a bare
                // "Broken pipe" would not.
                return match self.next().await {
                    Ok(resp) => Ok(resp),
                    Err(_) => Err(e),
                };
            }
            self.next().await
        })
        .await
        .map_err(|_| ControlError::Timeout(deadline))?
    }
}

/// Sends one request to the node at `path` and returns its response (a failure response is
/// returned as is; see [`Response::into_result`]).
pub async fn request(path: &Path, req: &Request) -> Result<Response, ControlError> {
    let deadline = match req {
        Request::WaitDelivered { timeout_ms, .. } => timeout_ms
            .map(Duration::from_millis)
            .unwrap_or(DEFAULT_WAIT)
            .min(MAX_WAIT)
            .saturating_add(CLIENT_TIMEOUT),
        _ => CLIENT_TIMEOUT,
    };
    let mut c = Client::connect(path).await?;
    c.call(req, deadline).await
}

/// A `follow` stream.
#[derive(Debug)]
pub struct Follow {
    client: Client,
}

impl Follow {
    /// The next streamed entry (`Ok(None)`: the node stopped). Lag notices are logged and skipped.
    pub async fn next_entry(&mut self) -> Result<Option<HistoryEntry>, ControlError> {
        loop {
            let r = match self.client.next().await {
                Err(ControlError::Closed) => return Ok(None),
                other => other?.into_result()?,
            };
            if let Some(e) = r.entry {
                return Ok(Some(e));
            }
            if let Some(n) = r.lagged {
                tracing::warn!(missed = n, "follow stream lagged");
            }
        }
    }
}

/// Opens a `follow` stream: entries after `after_seq` (if given), then every new entry and
/// status change.
pub async fn follow_stream(path: &Path, after_seq: Option<u64>) -> Result<Follow, ControlError> {
    let mut client = Client::connect(path).await?;
    let first = client
        .call(&Request::Follow { after_seq }, CLIENT_TIMEOUT)
        .await?
        .into_result()?;
    if first.following != Some(true) {
        return Err(ControlError::BadResponse(
            "follow was not acknowledged".into(),
        ));
    }
    Ok(Follow { client })
}

// ---------------------------------------------------------------------------------------------
// CLI
// ---------------------------------------------------------------------------------------------

/// Runs a control command of the CLI (`contacts`, `send`, `messages`, `status`) against the
/// node whose data directory `cfg` names, printing human text or (`--json`) JSON on stdout.
pub fn run_cli(cfg: &Config, global: &GlobalArgs, command: Command) -> Result<(), ControlError> {
    let path = socket_path(&cfg.data_dir());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ControlError::Runtime)?;
    match rt.block_on(run_command(cfg, &path, global.json, command)) {
        // `sremp messages --follow | head`: the reader is gone, which is not a failure.
        Err(ControlError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        // `--json`: the refusal with its stable code on stdout too (and the exit status).
        Err(ControlError::DiskFull(msg)) if global.json => {
            println!(
                "{}",
                serde_json::json!({"ok": false, "error": msg, "code": DISK_FULL})
            );
            Err(ControlError::DiskFull(msg))
        }
        other => other,
    }
}

/// `sremp id` while the node runs: its live card (actual endpoints and home relays). Returns
/// `false`, printing nothing, when no node answers, so the caller falls back to the key file.
pub fn print_live_id(cfg: &Config, json: bool, no_qr: bool) -> bool {
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
            match crate::identity::ContactCard::from_text(&id.card).and_then(|c| c.to_qr()) {
                Ok(qr) => println!("{qr}"),
                Err(e) => println!("(no QR code: {e})"),
            }
        }
    }
    true
}

/// `sremp id rename|rotate-noise-key` while the node runs: the update goes through the node
/// (which announces it). `Ok(None)`: no node answers; the caller updates the key file itself.
pub fn update_live_id(cfg: &Config, change: &Change) -> Result<Option<IdentityView>, ControlError> {
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

fn print_json<T: Serialize>(v: &T) -> Result<(), ControlError> {
    let s = serde_json::to_string(v).map_err(|e| ControlError::BadResponse(e.to_string()))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{s}")
        .and_then(|()| out.flush())
        .map_err(ControlError::Output)
}

fn print_line(s: &str) -> Result<(), ControlError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{s}")
        .and_then(|()| out.flush())
        .map_err(ControlError::Output)
}

fn missing(what: &str) -> ControlError {
    ControlError::BadResponse(format!("the response has no {what}"))
}

async fn call_ok(path: &Path, req: &Request) -> Result<Response, ControlError> {
    request(path, req).await?.into_result()
}

async fn run_command(
    cfg: &Config,
    path: &Path,
    json: bool,
    command: Command,
) -> Result<(), ControlError> {
    match command {
        Command::Discover { query, all, add } => {
            discover(cfg, path, json, query.as_deref(), all, add).await
        }
        Command::Contacts {
            command:
                ContactsCommand::Add {
                    from_rendezvous: Some(id),
                    ..
                },
        } => {
            let key: crate::identity::IdentityKey = id.parse().map_err(|_| {
                ControlError::BadArgument(format!(
                    "--from-rendezvous needs a 64-hex contact id, not {id:?}"
                ))
            })?;
            let found = discover_peers(cfg, &Query::Id(key)).await?;
            let peer = only_one(&found, &id)?;
            let c = add_found(path, peer).await?;
            if json {
                print_json(&c)
            } else {
                print_line(&format_contact(&c))
            }
        }
        Command::Backup { out, key, .. } => {
            let abs = |p: &Path| {
                std::path::absolute(p)
                    .map_err(|e| ControlError::BadArgument(format!("{}: {e}", p.display())))
            };
            let (out, key) = (abs(&out)?, abs(&key)?);
            let (_, created) = crate::backup::BackupKey::load_or_create(&key)
                .map_err(|e| ControlError::BadArgument(e.to_string()))?;
            let req = Request::Backup {
                out: out.display().to_string(),
                key: key.display().to_string(),
            };
            let summary = call_ok(path, &req)
                .await?
                .backup
                .ok_or_else(|| missing("backup"))?;
            if json {
                print_json(&serde_json::json!({
                    "out": summary.out,
                    "records": summary.records,
                    "bytes": summary.bytes,
                    "key": key.display().to_string(),
                    "key_created": created,
                }))
            } else {
                if created {
                    print_line(&format!(
                        "created key file {} (keep it safe and apart from the backup)",
                        key.display()
                    ))?;
                }
                print_line(&format!(
                    "backup written: {} ({} records, {} bytes)",
                    summary.out, summary.records, summary.bytes
                ))
            }
        }
        Command::Status => {
            let status = call_ok(path, &Request::Status)
                .await?
                .status
                .ok_or_else(|| missing("status"))?;
            if json {
                print_json(&status)
            } else {
                let mut text = String::new();
                format_value(&mut text, None, &status, 0);
                print_line(text.trim_end())
            }
        }
        Command::Contacts { command } => {
            let req = match command {
                ContactsCommand::Add { card, .. } => Request::ContactsAdd {
                    card: card.ok_or_else(|| {
                        ControlError::BadArgument("give a card or --from-rendezvous ID".into())
                    })?,
                },
                ContactsCommand::List { strangers: false } => Request::ContactsList,
                ContactsCommand::List { strangers: true } => Request::StrangersList,
                ContactsCommand::Trust { contact } => Request::ContactsTrust { contact },
                ContactsCommand::Reject { contact } => Request::ContactsReject { contact },
            };
            let resp = call_ok(path, &req).await?;
            if let Some(list) = resp.contacts {
                if json {
                    return print_json(&list);
                }
                if list.is_empty() {
                    return print_line(if matches!(req, Request::StrangersList) {
                        "no strangers"
                    } else {
                        "no contacts"
                    });
                }
                for c in &list {
                    print_line(&format_contact(c))?;
                }
                Ok(())
            } else {
                let c = resp.contact.ok_or_else(|| missing("contact"))?;
                if json {
                    print_json(&c)
                } else {
                    print_line(&format_contact(&c))
                }
            }
        }
        Command::Send {
            contact,
            text,
            wait,
            timeout_secs,
        } => {
            let entry = call_ok(path, &Request::Send { contact, text })
                .await?
                .entry
                .ok_or_else(|| missing("entry"))?;
            if !wait {
                return if json {
                    print_json(&entry)
                } else {
                    print_line(&entry.id)
                };
            }
            if !json {
                // Scripts read the id from stdout while the wait goes on.
                print_line(&entry.id)?;
            }
            let timeout_ms = timeout_secs.saturating_mul(1000);
            let waited = call_ok(
                path,
                &Request::WaitDelivered {
                    id: entry.id.clone(),
                    timeout_ms: Some(timeout_ms),
                },
            )
            .await?
            .entry
            .ok_or_else(|| missing("entry"))?;
            if json {
                print_json(&waited)
            } else {
                eprintln!("delivered ({})", path_name(waited.path));
                Ok(())
            }
        }
        Command::Messages {
            follow,
            limit,
            after,
        } => messages(path, json, follow, limit, after).await,
        other => Err(ControlError::BadArgument(format!(
            "not a control command: {other:?}"
        ))),
    }
}

/// `sremp discover --json`: the peers found, the servers that answered and failed, and the
/// contact added with `--add` (README, "JSON output").
#[derive(Debug, Serialize)]
struct DiscoverView {
    peers: Vec<FoundView>,
    answered: Vec<String>,
    errors: Vec<ServerFailure>,
    added: Option<ContactView>,
}

async fn discover_peers(cfg: &Config, query: &Query) -> Result<Discovery, ControlError> {
    let settings =
        crate::rendezvous::client::RegistrarSettings::from_config(&cfg.rendezvous, cfg.data_dir())?;
    let me = crate::identity::UserIdentity::load_file(&cfg.data_dir())
        .ok()
        .map(|u| u.key());
    Ok(crate::rendezvous::discover::discover(&settings, query, me).await?)
}

fn only_one<'a>(d: &'a Discovery, query: &str) -> Result<&'a Found, ControlError> {
    match d.peers.as_slice() {
        [one] => Ok(one),
        [] => Err(ControlError::NotFound(format!(
            "no peer matching {query:?} at the rendezvous servers"
        ))),
        many => Err(ControlError::NotFound(format!(
            "{} peers match {query:?}; give the contact id",
            many.len()
        ))),
    }
}

/// Adds a discovered peer through the running node (TOFU, like a card).
async fn add_found(path: &Path, peer: &Found) -> Result<ContactView, ControlError> {
    let req = Request::ContactsAdd {
        card: peer.card().to_text(),
    };
    call_ok(path, &req)
        .await?
        .contact
        .ok_or_else(|| missing("contact"))
}

/// `sremp discover [--all] [--add] [QUERY]`.
async fn discover(
    cfg: &Config,
    path: &Path,
    json: bool,
    query: Option<&str>,
    all: bool,
    add: bool,
) -> Result<(), ControlError> {
    let q = Query::parse(query, all);
    let found = discover_peers(cfg, &q).await?;
    let added = if add {
        Some(add_found(path, only_one(&found, query.unwrap_or(""))?).await?)
    } else {
        None
    };
    if json {
        return print_json(&DiscoverView {
            peers: found.peers.iter().map(Found::view).collect(),
            answered: found.answered,
            errors: found.errors,
            added,
        });
    }
    for e in &found.errors {
        eprintln!("warning: rendezvous server {}: {}", e.server, e.error);
    }
    if found.peers.is_empty() {
        print_line("no peers found")?;
    }
    for p in &found.peers {
        let state = if p.online {
            "online".to_string()
        } else {
            format!("offline since {}", format_time(p.last_seen.0))
        };
        let ep = p
            .endpoints
            .first()
            .map(|e| e.to_string())
            .unwrap_or_default();
        print_line(&format!(
            "{}  {:<20}  v{:<3} {:<8} {}",
            p.identity.key(),
            p.identity.username(),
            p.identity.version(),
            state,
            ep
        ))?;
    }
    if let Some(c) = added {
        print_line(&format!("added: {}", format_contact(&c)))?;
    }
    Ok(())
}

/// `sremp messages`: history (all, the newest `limit`, or after `after`), then optionally follow.
async fn messages(
    path: &Path,
    json: bool,
    follow: bool,
    limit: Option<usize>,
    after: Option<u64>,
) -> Result<(), ControlError> {
    let mut client = Client::connect(path).await?;
    let keep = limit.unwrap_or(usize::MAX);
    let mut shown: VecDeque<HistoryEntry> = VecDeque::new();
    let mut last = after;
    // Page through the history; each page is bounded and the loop ends at a short page.
    loop {
        let req = Request::Messages {
            after_seq: last,
            limit: Some(MAX_MESSAGES),
        };
        let page = client
            .call(&req, CLIENT_TIMEOUT)
            .await?
            .into_result()?
            .messages
            .ok_or_else(|| missing("messages"))?;
        let short = page.is_empty();
        for e in page {
            last = Some(last.map_or(e.seq, |l| l.max(e.seq)));
            shown.push_back(e);
            if shown.len() > keep {
                shown.pop_front();
            }
        }
        if short {
            break;
        }
    }
    drop(client);
    if json && !follow {
        return print_json(&shown);
    }
    for e in &shown {
        if json {
            print_json(e)?;
        } else {
            print_line(&format_entry(e))?;
        }
    }
    if !follow {
        if shown.is_empty() && !json {
            print_line("no messages")?;
        }
        return Ok(());
    }
    let mut stream = follow_stream(path, Some(last.unwrap_or(0))).await?;
    while let Some(e) = stream.next_entry().await? {
        if json {
            print_json(&e)?;
        } else {
            print_line(&format_entry(&e))?;
        }
    }
    // The stream only ends when the node stops: not a success for a script that follows.
    Err(ControlError::Closed)
}

fn format_contact(c: &ContactView) -> String {
    format!("{}  {:<20}  {}", c.id, c.username, c.trust)
}

fn path_name(p: Option<DeliveryPath>) -> &'static str {
    match p {
        Some(DeliveryPath::Direct) => "direct",
        Some(DeliveryPath::Relay) => "relay",
        None => "-",
    }
}

fn status_name(s: Status) -> &'static str {
    match s {
        Status::Queued => "queued",
        Status::StoredAtRelay => "stored at relay",
        Status::Delivered => "delivered",
        Status::Received => "received",
        Status::Notice => "notice",
    }
}

fn format_entry(e: &HistoryEntry) -> String {
    let who = e
        .peer_name
        .clone()
        .unwrap_or_else(|| e.peer.chars().take(8).collect());
    let arrow = match e.direction {
        Direction::Out => format!("-> {who}"),
        Direction::In => format!("<- {who}"),
    };
    format!(
        "#{} {} {} {} [{}, {}] {}",
        e.seq,
        format_time(e.recorded_at),
        e.id,
        arrow,
        status_name(e.status),
        path_name(e.path),
        e.text.replace(['\n', '\r'], " ")
    )
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) for milliseconds since the epoch.
fn format_time(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Human form of a JSON value: `key: value` lines, nested objects indented.
fn format_value(out: &mut String, key: Option<&str>, v: &serde_json::Value, depth: usize) {
    use serde_json::Value;
    let pad = "  ".repeat(depth);
    let label = key.map(|k| format!("{k}: ")).unwrap_or_default();
    match v {
        Value::Object(map) => {
            if key.is_some() {
                out.push_str(&format!("{pad}{}\n", label.trim_end()));
            }
            let d = if key.is_some() { depth + 1 } else { depth };
            if map.is_empty() {
                out.push_str(&format!("{}(none)\n", "  ".repeat(d)));
            }
            for (k, v) in map {
                format_value(out, Some(k), v, d);
            }
        }
        Value::Array(items) if items.iter().all(|i| !i.is_object() && !i.is_array()) => {
            let parts: Vec<String> = items.iter().map(scalar).collect();
            let list = if parts.is_empty() {
                "(none)".to_string()
            } else {
                parts.join(", ")
            };
            out.push_str(&format!("{pad}{label}{list}\n"));
        }
        Value::Array(items) => {
            out.push_str(&format!("{pad}{}\n", label.trim_end()));
            for (i, item) in items.iter().enumerate() {
                format_value(out, Some(&format!("[{i}]")), item, depth + 1);
            }
        }
        other => out.push_str(&format!("{pad}{label}{}\n", scalar(other))),
    }
}

fn scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn time_format() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(format_time(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(format_time(1_700_000_000_123), "2023-11-14 22:13:20");
    }

    #[tokio::test]
    async fn stale_socket_is_replaced_and_live_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        {
            let _l = std::os::unix::net::UnixListener::bind(&path).unwrap();
        }
        // Stale (nobody listening): replaced.
        let live = bind(&path).await.unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        // Live: refused.
        assert!(matches!(bind(&path).await, Err(ControlError::InUse(_))));
        drop(live);
        // Not a socket: refused.
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").unwrap();
        assert!(matches!(
            bind(&file).await,
            Err(ControlError::NotASocket(_))
        ));
        // Nothing there: not running.
        let none = dir.path().join("none.sock");
        assert!(matches!(
            request(&none, &Request::Status).await,
            Err(ControlError::NotRunning(_))
        ));
    }
}
