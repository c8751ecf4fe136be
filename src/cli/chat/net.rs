//! The chat client's connection to the node: the async shell that turns control-socket lines
//! into [`NetEvent`]s and carries out [`Action`]s. No decisions about what to show live here.
//!
//! One session, repeated until the client leaves:
//! 1. `card` (who we are) and `contacts_list`;
//! 2. a `follow` connection with `"events":true` and no backlog, opened *before* the history is
//!    read, so nothing recorded meanwhile is missed;
//! 3. the history, paged with `messages`, then [`NetEvent::Synced`];
//! 4. the follow stream live (entries, status changes, contact and key-conflict events), a
//!    `presence` and `group list` poll every [`PRESENCE_EVERY`] (the group list also at once
//!    when a group entry arrives), and each user action on its own connection.
//!
//! When the node stops (the stream closes) or is not running, [`NetEvent::Down`] says why and
//! the session starts again every [`RETRY_EVERY`]. A `lagged` stream also starts a new session,
//! which re-reads everything.

use super::app::{Action, Contact, Msg, NetEvent, Presence};
use super::groups::GroupInfo;
use crate::node::control::group::GroupOp;
use crate::node::control::{
    Client, ContactView, ControlError, Request, Response, CLIENT_TIMEOUT, MAX_MESSAGES,
};
use crate::node::file_group::GroupFiles;
use crate::node::history::HistoryEntry;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};

/// How often reachability is asked for.
pub const PRESENCE_EVERY: Duration = Duration::from_secs(2);
/// How often a node that is not running is tried again.
pub const RETRY_EVERY: Duration = Duration::from_secs(1);
/// Most history entries read at (re)connection (the app keeps fewer per conversation).
pub const MAX_BACKLOG: usize = 200_000;

/// A client-side message from a history entry.
pub fn msg_of(e: HistoryEntry) -> Msg {
    Msg {
        seq: e.seq,
        direction: e.direction,
        peer: e.peer.to_string(),
        peer_name: e.peer_name,
        text: e.text,
        at_ms: e.recorded_at,
        status: e.status,
        path: e.path,
        group: e.group.map(|g| super::groups::GroupRef {
            group: g.group,
            kind: g.kind,
            message_id: g.message_id,
            forwarded_to: g.forwarded_to.unwrap_or_default(),
            delivered_to: g.delivered_to.unwrap_or_default(),
        }),
    }
}

/// The group list, or None from a node without groups (or a refusal).
pub(super) async fn group_list(ctl: &mut Client) -> Result<Option<Vec<GroupInfo>>, ControlError> {
    let r = ctl
        .call(&group_request(GroupOp::List, None, None), CLIENT_TIMEOUT)
        .await?;
    Ok(r.into_result().ok().map(|r| {
        r.groups
            .unwrap_or_default()
            .iter()
            .filter_map(GroupInfo::from_json)
            .collect()
    }))
}

fn group_request(op: GroupOp, group: Option<String>, text: Option<String>) -> Request {
    Request::Group {
        op,
        group,
        name: None,
        members: None,
        text,
        after_seq: None,
        limit: None,
    }
}

/// A client-side contact from its control view.
pub fn contact_of(c: ContactView) -> Contact {
    Contact {
        id: c.id,
        username: c.username,
        trust: c.trust,
        version: c.version,
        endpoints: c.endpoints.len(),
        relays: c.relays.len(),
    }
}

/// The events one streamed `follow` line gives.
pub fn events_of(r: Response) -> Vec<NetEvent> {
    use crate::node::events::NodeEvent;
    let mut out = Vec::new();
    if let Some(e) = r.entry {
        out.push(NetEvent::Entry(msg_of(e)));
    }
    match r.event {
        Some(NodeEvent::Contact { contact, .. }) => {
            out.push(NetEvent::Contact(contact_of(contact)))
        }
        Some(NodeEvent::KeyConflict { contact, detail }) => out.push(NetEvent::KeyConflict {
            id: contact.id,
            username: Some(contact.username),
            detail,
        }),
        None => {}
    }
    out
}

/// Runs sessions until `actions` closes (the client left).
pub async fn run(
    path: PathBuf,
    tx: UnboundedSender<NetEvent>,
    mut actions: UnboundedReceiver<Action>,
) {
    loop {
        let _ = tx.send(NetEvent::Connecting);
        let why = match session(&path, &tx, &mut actions).await {
            Ok(()) => return,
            Err(ControlError::Closed) => "the node stopped".to_string(),
            Err(e) => e.to_string(),
        };
        let _ = tx.send(NetEvent::Down(why));
        // Wait, refusing what the user asks meanwhile (the app refuses most of it already).
        let wait = tokio::time::sleep(RETRY_EVERY);
        tokio::pin!(wait);
        loop {
            tokio::select! {
                _ = &mut wait => break,
                a = actions.recv() => match a {
                    None => return,
                    Some(_) => { let _ = tx.send(NetEvent::Error("the node is not connected".into())); }
                },
            }
        }
    }
}

/// Offers the file the user typed (made absolute: the node resolves paths from its own
/// directory) with the request `make` builds from it. The node hashes the whole file before it
/// answers, hence the long timeout.
async fn offer_file(
    socket: &Path,
    typed: &str,
    make: impl FnOnce(String) -> Request,
) -> Result<Response, ControlError> {
    let abs = super::files::absolute(typed).map_err(ControlError::BadArgument)?;
    let req = make(abs.to_string_lossy().into_owned());
    Client::connect(socket)
        .await?
        .call(&req, SEND_FILE_TIMEOUT)
        .await?
        .into_result()
}

async fn call(path: &Path, req: &Request) -> Result<Response, ControlError> {
    let mut c = Client::connect(path).await?;
    c.call(req, CLIENT_TIMEOUT).await?.into_result()
}

/// One connected session; `Ok(())` only when the client left.
async fn session(
    path: &Path,
    tx: &UnboundedSender<NetEvent>,
    actions: &mut UnboundedReceiver<Action>,
) -> Result<(), ControlError> {
    let mut ctl = Client::connect(path).await?;
    let me = ctl
        .call(&Request::Card, CLIENT_TIMEOUT)
        .await?
        .into_result()?
        .identity
        .ok_or_else(|| ControlError::BadResponse("card without identity".into()))?;
    // The live stream first, so nothing recorded while the history is read is missed.
    let mut follow = Client::connect(path).await?;
    let ack = follow
        .call(
            &Request::Follow {
                after_seq: None,
                events: true,
            },
            CLIENT_TIMEOUT,
        )
        .await?
        .into_result()?;
    if ack.following != Some(true) {
        return Err(ControlError::BadResponse(
            "follow was not acknowledged".into(),
        ));
    }
    // File transfers: every one now, then each change (docs/FILES.md). A node without file
    // transfer refuses the request: the client then simply shows none.
    let mut files = Client::connect(path).await?;
    let files = match files
        .call(&Request::FilesFollow { id: None }, CLIENT_TIMEOUT)
        .await?
        .into_result()
    {
        Ok(r) if r.following == Some(true) => Some(files),
        _ => None,
    };
    let _ = tx.send(NetEvent::Connected {
        id: me.id,
        username: me.username,
    });
    let contacts = ctl
        .call(&Request::ContactsList, CLIENT_TIMEOUT)
        .await?
        .into_result()?
        .contacts
        .unwrap_or_default();
    let _ = tx.send(NetEvent::Contacts(
        contacts.into_iter().map(contact_of).collect(),
    ));
    let mut groups_on = true;
    match group_list(&mut ctl).await? {
        Some(list) => {
            let _ = tx.send(NetEvent::Groups(list));
        }
        None => groups_on = false,
    }
    let mut last = None;
    let mut read = 0usize;
    loop {
        let page = ctl
            .call(
                &Request::Messages {
                    after_seq: last,
                    limit: Some(MAX_MESSAGES),
                },
                CLIENT_TIMEOUT,
            )
            .await?
            .into_result()?
            .messages
            .unwrap_or_default();
        let n = page.len();
        for e in page {
            last = Some(last.unwrap_or(0).max(e.seq));
            let _ = tx.send(NetEvent::Entry(msg_of(e)));
        }
        read += n;
        if n == 0 || read >= MAX_BACKLOG {
            break;
        }
    }
    let _ = tx.send(NetEvent::Synced);

    // Reading a line is not cancel-safe (a partial line would be lost), so the stream is read
    // by its own task and the loop below selects on its channel.
    let (ftx, mut frx) = tokio::sync::mpsc::unbounded_channel();
    let reader = AbortOnDrop(tokio::spawn(async move {
        loop {
            let r = follow.next().await;
            let end = r.is_err();
            if ftx.send(r).is_err() || end {
                return;
            }
        }
    }));
    let (xtx, mut xrx) = tokio::sync::mpsc::unbounded_channel();
    let files_reader = files.map(|mut files| {
        AbortOnDrop(tokio::spawn(async move {
            loop {
                let r = files.next().await;
                let end = r.is_err();
                if xtx.send(r).is_err() || end {
                    return;
                }
            }
        }))
    });
    let mut presence_on = true;
    let mut tick = tokio::time::interval(PRESENCE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            line = frx.recv() => {
                let r = line.unwrap_or(Err(ControlError::Closed))?.into_result()?;
                if r.lagged.is_some() {
                    // Updates were lost: read everything again.
                    return Err(ControlError::BadResponse("the event stream lagged; resynchronising".into()));
                }
                let mut refresh = false;
                for ev in events_of(r) {
                    // A group entry may be a group we do not list yet, or a member's answer.
                    refresh |= matches!(&ev, NetEvent::Entry(m) if m.group.is_some());
                    let _ = tx.send(ev);
                }
                if refresh && groups_on {
                    if let Some(list) = group_list(&mut ctl).await? {
                        let _ = tx.send(NetEvent::Groups(list));
                    }
                }
            }
            line = xrx.recv(), if files_reader.is_some() => {
                let r = line.unwrap_or(Err(ControlError::Closed))?.into_result()?;
                if r.lagged.is_some() {
                    return Err(ControlError::BadResponse("the file transfer stream lagged; resynchronising".into()));
                }
                if let Some(v) = r.transfer {
                    let _ = tx.send(NetEvent::Transfer(Box::new(v)));
                }
            }
            _ = tick.tick(), if presence_on => {
                match ctl.call(&Request::Presence, CLIENT_TIMEOUT).await?.into_result() {
                    Ok(r) => {
                        let map = r.presence.unwrap_or_default().into_iter()
                            .map(|p| (p.id, Presence { direct: p.direct }))
                            .collect();
                        let _ = tx.send(NetEvent::Presence(map));
                    }
                    // An older node without `presence`: no indicator beyond the relays.
                    Err(_) => presence_on = false,
                }
                if groups_on {
                    if let Some(list) = group_list(&mut ctl).await? {
                        let _ = tx.send(NetEvent::Groups(list));
                    }
                }
            }
            a = actions.recv() => {
                let Some(a) = a else {
                    drop(reader);
                    drop(files_reader);
                    return Ok(());
                };
                let path = path.to_path_buf();
                let tx = tx.clone();
                tokio::spawn(async move { act(&path, a, &tx).await });
            }
        }
    }
}

/// Aborts a task when dropped (the session ended, however).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Carries out one user action on its own connection, reporting the outcome.
async fn act(path: &Path, a: Action, tx: &UnboundedSender<NetEvent>) {
    let report = |r: Result<Vec<NetEvent>, ControlError>| {
        let evs = r.unwrap_or_else(|e| vec![NetEvent::Error(e.to_string())]);
        for ev in evs {
            let _ = tx.send(ev);
        }
    };
    match a {
        Action::Send { to, text } => {
            let r = call(path, &Request::Send { contact: to, text }).await;
            report(r.map(|r| {
                r.entry
                    .map(|e| vec![NetEvent::Entry(msg_of(e))])
                    .unwrap_or_default()
            }));
        }
        Action::SendGroup { group, text } => {
            let r = call(path, &group_request(GroupOp::Send, Some(group), Some(text))).await;
            report(r.map(|r| {
                // One entry per member copy; the app merges them into one line.
                r.group
                    .and_then(|g| g.get("entries").cloned())
                    .and_then(|e| serde_json::from_value::<Vec<HistoryEntry>>(e).ok())
                    .unwrap_or_default()
                    .into_iter()
                    .map(|e| NetEvent::Entry(msg_of(e)))
                    .collect()
            }));
        }
        Action::Add(card) => {
            let r = call(path, &Request::ContactsAdd { card }).await;
            report(r.map(|r| contact_events(r, "added")));
        }
        Action::Trust(id) => {
            let r = call(path, &Request::ContactsTrust { contact: id }).await;
            report(r.map(|r| contact_events(r, "trusted")));
        }
        Action::Reject(id) => {
            let r = call(path, &Request::ContactsReject { contact: id }).await;
            report(r.map(|r| contact_events(r, "rejected")));
        }
        Action::ShowCard => {
            let r = call(path, &Request::Card).await;
            report(r.map(|r| match r.identity {
                Some(id) => {
                    let qr = crate::identity::ContactCard::from_text(&id.card)
                        .and_then(|c| c.to_qr())
                        .map_err(|e| e.to_string());
                    vec![NetEvent::Card { card: id.card, qr }]
                }
                None => vec![NetEvent::Error("the node sent no card".into())],
            }));
        }
        Action::SendFile { to, path: typed } => {
            let r = offer_file(path, &typed, |path| Request::SendFile { contact: to, path }).await;
            report(r.map(|r| transfer_events(r, "offered")));
        }
        Action::SendFileGroup { group, path: typed } => {
            let r = offer_file(path, &typed, |path| Request::SendFileGroup { group, path }).await;
            report(r.and_then(group_transfer_events));
        }
        Action::AcceptFile { id, dir } => {
            let to = match dir.as_deref().map(super::files::absolute) {
                Some(Err(e)) => {
                    report(Err(ControlError::BadArgument(e)));
                    return;
                }
                Some(Ok(d)) => Some(d.to_string_lossy().into_owned()),
                None => None,
            };
            let r = call(path, &Request::FilesAccept { id, to }).await;
            report(r.map(|r| transfer_events(r, "accepted")));
        }
        Action::DeclineFile { id, reason } => {
            let r = call(path, &Request::FilesReject { id, reason }).await;
            report(r.map(|r| transfer_events(r, "declined")));
        }
        Action::Group(g) => super::group_cmd::act(path, g, tx).await,
        Action::Quit => {}
    }
}

/// How long `/file` waits for the node to hash the file and queue the offer.
pub const SEND_FILE_TIMEOUT: Duration = Duration::from_secs(3600);

fn transfer_events(r: Response, what: &str) -> Vec<NetEvent> {
    match r.transfer {
        Some(v) => {
            let info = NetEvent::Info(format!(
                "{} ({}): {what}",
                super::ui::clean(&v.name),
                super::app::short(&v.id)
            ));
            vec![NetEvent::Transfer(Box::new(v)), info]
        }
        None => vec![NetEvent::Error("the node sent no transfer".into())],
    }
}

/// The member copies of a `/file` to a group (each then shows under the group conversation)
/// and one line saying who gets it and who does not.
fn group_transfer_events(r: Response) -> Result<Vec<NetEvent>, ControlError> {
    let sent: GroupFiles = r
        .group
        .and_then(|g| serde_json::from_value(g).ok())
        .ok_or_else(|| ControlError::BadResponse("the response has no group transfers".into()))?;
    let clean = super::ui::clean;
    let name = sent
        .transfers
        .first()
        .map(|v| clean(&v.name))
        .unwrap_or_default();
    let to: Vec<String> = sent
        .transfers
        .iter()
        .map(|v| {
            clean(
                v.peer_name
                    .as_deref()
                    .unwrap_or(&super::app::short(&v.peer)),
            )
        })
        .collect();
    let mut info = format!("{name}: offered to {}", to.join(", "));
    for s in &sent.skipped {
        let who = s
            .name
            .clone()
            .unwrap_or_else(|| super::app::short(&s.member));
        info.push_str(&format!("; not to {} ({})", clean(&who), clean(&s.reason)));
    }
    let mut out: Vec<NetEvent> = sent
        .transfers
        .into_iter()
        .map(|v| NetEvent::Transfer(Box::new(v)))
        .collect();
    out.push(NetEvent::Info(info));
    Ok(out)
}

fn contact_events(r: Response, what: &str) -> Vec<NetEvent> {
    match r.contact {
        Some(c) => {
            let info = NetEvent::Info(format!(
                "{} ({}): {what}",
                c.username,
                super::app::short(&c.id)
            ));
            vec![NetEvent::Contact(contact_of(c)), info]
        }
        None => vec![NetEvent::Error("the node sent no contact".into())],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    use tokio::net::UnixListener;
    use tokio::sync::mpsc;

    /// Collects what `run` reports for `secs` seconds.
    async fn events_for(path: PathBuf, secs: u64) -> Vec<NetEvent> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (_act_tx, act_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(path, tx, act_rx));
        tokio::time::sleep(Duration::from_secs(secs)).await;
        task.abort();
        let mut out = Vec::new();
        while let Ok(ev) = rx.try_recv() {
            out.push(ev);
        }
        out
    }

    #[tokio::test]
    async fn no_node_is_reported_and_retried() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let evs = events_for(dir.path().join("control.sock"), 3).await;
        let downs = evs
            .iter()
            .filter(|e| matches!(e, NetEvent::Down(why) if why.contains("not running")))
            .count();
        let tries = evs.iter().filter(|e| **e == NetEvent::Connecting).count();
        assert!(downs >= 2 && tries >= 2, "{evs:?}");
    }

    #[tokio::test]
    async fn garbage_from_the_socket_is_a_reconnect_not_a_panic() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        let path = dir.path().join("control.sock");
        let listener = UnixListener::bind(&path).unwrap_or_else(|e| unreachable!("{e}"));
        // A "node" that answers the card properly, then garbage of every kind.
        let answers: Vec<&'static [u8]> = vec![
            b"not json at all\n",
            b"{\"ok\":true,\"following\":true}\n{\"ok\":true,\"entry\":{\"seq\":\"x\"}}\n",
            b"{\"ok\":false,\"error\":\"nope\"}\n",
            b"\xff\xfe\n",
            b"{\"ok\":true}\n",
        ];
        let server = tokio::spawn(async move {
            let card =
                br#"{"ok":true,"identity":{"id":"aa","username":"me","version":1,"card":"x"}}"#;
            let mut n = 0usize;
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                let (rd, mut wr) = s.into_split();
                let mut rd = BufReader::new(rd);
                let mut line = String::new();
                let _ = rd.read_line(&mut line).await;
                let reply: &[u8] = if line.contains("\"card\"") {
                    card
                } else {
                    answers.get(n % answers.len()).copied().unwrap_or(b"\n")
                };
                n += 1;
                let _ = wr.write_all(reply).await;
                let _ = wr.write_all(b"\n").await;
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    drop(wr);
                });
            }
        });
        let evs = events_for(path, 4).await;
        server.abort();
        let downs = evs
            .iter()
            .filter(|e| matches!(e, NetEvent::Down(_)))
            .count();
        assert!(downs >= 2, "{evs:?}");
        assert!(
            !evs.iter().any(|e| matches!(e, NetEvent::Synced)),
            "a broken node never looks synced: {evs:?}"
        );
    }
}
