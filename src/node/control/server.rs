//! The node's side of the control socket: bind it owner-only, accept at most
//! [`MAX_CLIENTS`](super::MAX_CLIENTS) clients, read bounded request lines, map each request to
//! one [`Node`] method, write one response line (or a `follow` stream).
//!
//! Nothing a client sends can panic the node: over-long lines and malformed JSON are answered
//! with an error response; an idle client is dropped after [`IDLE_TIMEOUT`](super::IDLE_TIMEOUT).

use super::{
    encode_line, read_line_bounded, ContactView, ControlError, IdentityView, Line, Request,
    Response, DEFAULT_MESSAGES, DEFAULT_WAIT, IDLE_TIMEOUT, MAX_CLIENTS, MAX_MESSAGES,
    MAX_REQUEST_LINE, MAX_RESPONSE_LINE, MAX_WAIT,
};
use crate::identity::rotation::Change;
use crate::identity::{ContactIdentity, Trust};
use crate::node::history::{HistoryEntry, Status};
use crate::node::{Node, NodeError, MAX_TEXT};
use crate::shutdown::stopped;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, watch, Semaphore};
use tokio::task::JoinSet;

/// Backlog entries remembered by a `follow` stream to drop the broadcast copies of them.
const FOLLOW_DEDUP: usize = 1024;

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
                    MAX_TEXT
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
        if let Request::FilesFollow { id } = req {
            files_follow(&node, rd, wr, id, stop).await;
            return;
        }
        if let Request::Follow { after_seq, events } = req {
            follow(&node, rd, wr, after_seq, events, stop).await;
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
    F: FnOnce() -> Result<T, NodeError> + Send + 'static,
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
            match node.wait_delivered_text(&id, timeout).await {
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
        Request::Presence => Response {
            presence: Some(node.presence()),
            ..Response::ok()
        },
        Request::Group {
            op,
            group,
            name,
            members,
            text,
            after_seq,
            limit,
        } => {
            let req = super::group::GroupRequest {
                op,
                group,
                name,
                members,
                text,
                after_seq,
                limit,
            };
            super::group::execute(node, req).await
        }
        Request::Follow { .. } | Request::FilesFollow { .. } => {
            Response::error("follow needs its own connection")
        }
        Request::SendFile { contact, path } => {
            transfer_response(crate::node::files::send_file(node, &contact, Path::new(&path)).await)
        }
        Request::SendFileGroup { group, path } => {
            match node.send_file_group(&group, Path::new(&path)).await {
                Ok(g) => Response {
                    group: serde_json::to_value(g).ok(),
                    ok: true,
                    ..Response::default()
                },
                Err(e) => Response {
                    code: e.is_disk_full().then(|| super::DISK_FULL.to_string()),
                    ..Response::error(e.to_string())
                },
            }
        }
        Request::Files => Response {
            transfers: Some(node.files().list()),
            ok: true,
            ..Response::default()
        },
        Request::FilesAccept { id, to } => {
            transfer_response(crate::node::files::accept(node, &id, to.map(PathBuf::from)).await)
        }
        Request::FilesReject { id, reason } => transfer_response(
            crate::node::files::reject(node, &id, reason.as_deref().unwrap_or("")).await,
        ),
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

fn transfer_response(
    r: Result<crate::node::files::View, crate::node::files::TransferError>,
) -> Response {
    match r {
        Ok(v) => Response {
            transfer: Some(v),
            ok: true,
            ..Response::default()
        },
        Err(e) => Response {
            code: e.is_disk_full().then(|| super::DISK_FULL.to_string()),
            ..Response::error(e.to_string())
        },
    }
}

/// Streams file transfer progress: `{"ok":true,"following":true}`, the current state of the
/// transfer(s), then a line for every change, until the client disconnects.
async fn files_follow<R, W>(
    node: &Node,
    mut rd: R,
    mut wr: W,
    id: Option<String>,
    mut stop: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let files = node.files();
    let mut rx = files.subscribe();
    let now = match &id {
        Some(id) => match files.get(id) {
            Ok(v) => vec![v],
            Err(e) => {
                let _ = write_response(&mut wr, &Response::error(e.to_string())).await;
                return;
            }
        },
        None => files.list(),
    };
    let line =
        |v: Option<crate::node::files::View>, following: Option<bool>, lagged: Option<u64>| Response {
            ok: true,
            transfer: v,
            following,
            lagged,
            ..Response::default()
        };
    if write_response(&mut wr, &line(None, Some(true), None))
        .await
        .is_err()
    {
        return;
    }
    for v in now {
        if write_response(&mut wr, &line(Some(v), None, None))
            .await
            .is_err()
        {
            return;
        }
    }
    let mut scratch = [0u8; 512];
    loop {
        tokio::select! {
            _ = stopped(&mut stop) => return,
            r = rd.read(&mut scratch) => match r {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            ev = rx.recv() => match ev {
                Ok(v) => {
                    if id.as_deref().is_some_and(|i| i != v.id) {
                        continue;
                    }
                    if write_response(&mut wr, &line(Some(v), None, None)).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    if write_response(&mut wr, &line(None, None, Some(n))).await.is_err() {
                        return;
                    }
                }
                Err(broadcast::error::RecvError::Closed) => return,
            },
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
    events: bool,
    mut stop: watch::Receiver<bool>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    // Subscribe first so nothing recorded during the backlog scan is missed.
    let mut rx = node.subscribe();
    let mut node_events = events.then(|| node.node_events().subscribe());
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
            ev = next_event(&mut node_events) => {
                let resp = match ev {
                    Ok(e) => Response { event: Some(e), ..Response::ok() },
                    Err(broadcast::error::RecvError::Lagged(n)) => Response { lagged: Some(n), ..Response::ok() },
                    Err(broadcast::error::RecvError::Closed) => return,
                };
                if write_response(&mut wr, &resp).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// The next contact event, or never when the stream was opened without events.
async fn next_event(
    rx: &mut Option<broadcast::Receiver<super::super::events::NodeEvent>>,
) -> Result<super::super::events::NodeEvent, broadcast::error::RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            super::super::request(&none, &Request::Status).await,
            Err(ControlError::NotRunning(_))
        ));
    }
}
