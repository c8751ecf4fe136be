//! The chat client's `/group` commands: create a group, answer an invitation, leave.
//!
//! ```text
//! /group new NAME CONTACT...   create NAME with the contacts (names or ids) and invite them
//! /group accept [ID]           accept an invitation (default: the selected group if it is an
//!                              invitation, else the only invitation waiting)
//! /group decline [ID]          decline it (same default)
//! /group invite CONTACT        membership is fixed at creation (docs/PROTOCOL.md, "Groups"), so
//!                              this creates a NEW group with the selected group's name and its
//!                              members who have not declined or left, plus CONTACT
//! /group leave [ID]            leave the selected (or named) group; its creator closes it
//!                              instead (`sremp group close`)
//! ```
//! `ID` is a group id, a unique id prefix (4+ hex) or a unique group name, as for
//! `sremp group`. [`command`] turns a typed line into an [`Action::Group`] (pure, tested below);
//! [`act`] carries it out over the control socket and reports the outcome as a notice, then
//! refreshes the group list.

use super::app::{Action, App, Conn, Level, NetEvent};
use super::groups::{self, GroupInfo};
use crate::node::control::group::GroupOp;
use crate::node::control::{Client, ControlError, Request};
use std::path::Path;
use tokio::sync::mpsc::UnboundedSender;

/// A `/group` request for the shell.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupAction {
    /// `create`, `accept`, `decline` or `leave`.
    pub op: GroupOp,
    /// The group (accept, decline, leave): id, id prefix or name.
    pub group: Option<String>,
    /// `create`: the name.
    pub name: Option<String>,
    /// `create`: the members (contact ids).
    pub members: Vec<String>,
    /// Shown once it succeeded.
    pub done: String,
}

const USAGE: &str =
    "usage: /group new NAME CONTACT... | accept [ID] | decline [ID] | invite CONTACT | leave [ID]";

/// `/group ...` typed in the client: the action, or None (a notice says why).
pub fn command(app: &mut App, name: &str, arg: &str) -> Option<Vec<Action>> {
    if name != "group" {
        return None;
    }
    let refuse = |app: &mut App, e: String| {
        app.notice = Some((Level::Error, e));
        Some(Vec::new())
    };
    let (sub, rest) = match arg.split_once(char::is_whitespace) {
        Some((s, r)) => (s, r.trim()),
        None => (arg, ""),
    };
    if app.conn != Conn::Up && !sub.is_empty() {
        return refuse(app, "the node is not connected".into());
    }
    let action = match sub {
        "new" | "create" => {
            let mut words = rest.split_whitespace();
            let Some(gname) = words.next() else {
                return refuse(app, "usage: /group new NAME CONTACT...".into());
            };
            let mut members = Vec::new();
            for w in words {
                match contact_id(app, w) {
                    Ok(id) if !members.contains(&id) => members.push(id),
                    Ok(_) => {}
                    Err(e) => return refuse(app, e),
                }
            }
            if members.is_empty() {
                return refuse(
                    app,
                    "usage: /group new NAME CONTACT... (at least one)".into(),
                );
            }
            GroupAction {
                op: GroupOp::Create,
                group: None,
                name: Some(gname.to_string()),
                members,
                done: format!("group {gname} created; invitations sent"),
            }
        }
        "accept" | "decline" => {
            let group = match answerable(app, rest) {
                Ok(g) => g,
                Err(e) => return refuse(app, e),
            };
            let (op, word) = if sub == "accept" {
                (GroupOp::Accept, "accepted")
            } else {
                (GroupOp::Decline, "declined")
            };
            GroupAction {
                op,
                done: format!("group {}: {word}", label(app, &group)),
                group: Some(group),
                name: None,
                members: Vec::new(),
            }
        }
        "leave" => {
            let group = if rest.is_empty() {
                match selected_group(app) {
                    Some(g) => g.id.clone(),
                    None => return refuse(app, "select a group, or /group leave ID".into()),
                }
            } else {
                rest.to_string()
            };
            GroupAction {
                op: GroupOp::Leave,
                done: format!("left group {}", label(app, &group)),
                group: Some(group),
                name: None,
                members: Vec::new(),
            }
        }
        "invite" => {
            let Some(g) = selected_group(app).cloned() else {
                return refuse(
                    app,
                    "select the group first, then /group invite CONTACT".into(),
                );
            };
            if rest.is_empty() {
                return refuse(app, "usage: /group invite CONTACT".into());
            }
            let new = match contact_id(app, rest) {
                Ok(id) => id,
                Err(e) => return refuse(app, e),
            };
            let mut members: Vec<String> = g
                .members
                .iter()
                .filter(|m| !m.me && !matches!(m.state.as_str(), "declined" | "left"))
                .map(|m| m.id.clone())
                .collect();
            if members.contains(&new) {
                return refuse(app, format!("{rest} is already a member of {}", g.name));
            }
            members.push(new);
            GroupAction {
                op: GroupOp::Create,
                group: None,
                name: Some(g.name.clone()),
                done: format!(
                    "members are fixed at creation: a new group {} was created with {} members and invitations sent",
                    g.name,
                    members.len() + 1
                ),
                members,
            }
        }
        _ => return refuse(app, USAGE.into()),
    };
    Some(vec![Action::Group(action)])
}

/// A contact id from a typed name or id (the client's contact list).
fn contact_id(app: &App, w: &str) -> Result<String, String> {
    if app.contacts.contains_key(w) {
        return Ok(w.to_string());
    }
    let mut named = app.contacts.values().filter(|c| c.username == w);
    match (named.next(), named.next()) {
        (Some(c), None) => Ok(c.id.clone()),
        (Some(_), Some(_)) => Err(format!(
            "several contacts are called \"{w}\": use the contact id"
        )),
        _ => Err(format!("no contact \"{w}\"")),
    }
}

fn selected_group(app: &App) -> Option<&GroupInfo> {
    let key = app.selected.as_deref()?;
    groups::is_group_key(key)
        .then(|| app.groups.get(key))
        .flatten()
}

/// The invitation `/group accept|decline` answers: `arg` if given, else the selected group if
/// it is an invitation, else the only invitation waiting.
fn answerable(app: &App, arg: &str) -> Result<String, String> {
    if !arg.is_empty() {
        return Ok(arg.to_string());
    }
    if let Some(g) = selected_group(app).filter(|g| g.state == "invited") {
        return Ok(g.id.clone());
    }
    let mut invited: Vec<&GroupInfo> = app
        .groups
        .values()
        .filter(|g| g.state == "invited")
        .collect();
    invited.sort_by(|a, b| a.name.cmp(&b.name));
    match invited.as_slice() {
        [one] => Ok(one.id.clone()),
        [] => Err("no group invitation waiting".into()),
        many => Err(format!(
            "several invitations ({}): select one or name it",
            many.iter()
                .map(|g| g.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// A group's name for a notice (the id as typed when the client does not know it).
fn label(app: &App, group: &str) -> String {
    app.groups
        .values()
        .find(|g| g.id == group)
        .map(|g| g.name.clone())
        .unwrap_or_else(|| group.to_string())
}

/// Carries out a `/group` action; the outcome becomes a notice, and the group list is
/// refreshed so the change shows at once.
pub async fn act(path: &Path, a: GroupAction, tx: &UnboundedSender<NetEvent>) {
    let req = Request::Group {
        op: a.op,
        group: a.group,
        name: a.name,
        members: (!a.members.is_empty()).then_some(a.members),
        text: None,
        after_seq: None,
        limit: None,
    };
    let r: Result<(), ControlError> = async {
        let mut c = Client::connect(path).await?;
        c.call(&req, crate::node::control::CLIENT_TIMEOUT)
            .await?
            .into_result()?;
        if let Some(list) = super::net::group_list(&mut c).await? {
            let _ = tx.send(NetEvent::Groups(list));
        }
        Ok(())
    }
    .await;
    let _ = tx.send(match r {
        Ok(()) => NetEvent::Info(a.done),
        Err(e) => NetEvent::Error(e.to_string()),
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::chat::app::tests::connected;
    use crate::cli::chat::groups::GroupMember;

    fn info(id: char, name: &str, state: &str) -> GroupInfo {
        GroupInfo {
            id: std::iter::repeat_n(id, 32).collect(),
            name: name.into(),
            state: state.into(),
            members: vec![
                GroupMember {
                    id: "a".repeat(64),
                    name: Some("me".into()),
                    state: state.into(),
                    me: true,
                    via_creator: false,
                },
                GroupMember {
                    id: "b".repeat(64),
                    name: Some("bob".into()),
                    state: "accepted".into(),
                    me: false,
                    via_creator: false,
                },
                GroupMember {
                    id: "d".repeat(64),
                    name: None,
                    state: "declined".into(),
                    me: false,
                    via_creator: false,
                },
            ],
        }
    }

    fn typed(app: &mut App, line: &str) -> Vec<Action> {
        let cmd = line.trim_start_matches('/');
        let (name, arg) = cmd.split_once(' ').unwrap_or((cmd, ""));
        command(app, name, arg.trim()).unwrap_or_default()
    }

    fn error(app: &App) -> String {
        match &app.notice {
            Some((Level::Error, s)) => s.clone(),
            other => panic!("no error notice: {other:?}"),
        }
    }

    #[test]
    fn accept_decline_leave_invite() {
        use crate::cli::chat::app::tests::contact;
        let bob = contact('b', "bob");
        let carol = contact('c', "carol");
        let mut app = connected(vec![bob.clone(), carol.clone()]);
        // new: names resolved to ids, duplicates dropped, at least one contact.
        assert!(typed(&mut app, "/group new crew").is_empty());
        assert!(error(&app).contains("at least one"));
        assert!(typed(&mut app, "/group new crew nobody").is_empty());
        assert!(error(&app).contains("no contact \"nobody\""));
        let acts = typed(&mut app, "/group new crew bob carol bob");
        let [Action::Group(a)] = acts.as_slice() else {
            panic!("{acts:?}")
        };
        assert_eq!(a.op, GroupOp::Create);
        assert_eq!(a.name.as_deref(), Some("crew"));
        assert_eq!(a.members, vec![bob.id.clone(), carol.id.clone()]);
        // accept with nothing waiting, then with one invitation, then with two.
        assert!(typed(&mut app, "/group accept").is_empty());
        assert!(error(&app).contains("no group invitation"));
        let inv = info('1', "crew", "invited");
        app.groups.insert(inv.key(), inv.clone());
        let acts = typed(&mut app, "/group accept");
        let [Action::Group(a)] = acts.as_slice() else {
            panic!("{acts:?}")
        };
        assert_eq!(
            (a.op, a.group.as_deref()),
            (GroupOp::Accept, Some(inv.id.as_str()))
        );
        assert_eq!(a.done, "group crew: accepted");
        let other = info('2', "other", "invited");
        app.groups.insert(other.key(), other.clone());
        assert!(typed(&mut app, "/group decline").is_empty());
        assert!(error(&app).contains("several invitations (crew, other)"));
        // The selected invitation is the default; an explicit id wins.
        app.selected = Some(other.key());
        let acts = typed(&mut app, "/group decline");
        assert!(matches!(acts.as_slice(),
            [Action::Group(a)] if a.op == GroupOp::Decline && a.group.as_deref() == Some(other.id.as_str())));
        let acts = typed(&mut app, "/group accept crew");
        assert!(matches!(acts.as_slice(),
            [Action::Group(a)] if a.group.as_deref() == Some("crew")));
        // leave: the selected group.
        let acts = typed(&mut app, "/group leave");
        assert!(matches!(acts.as_slice(),
            [Action::Group(a)] if a.op == GroupOp::Leave && a.group.as_deref() == Some(other.id.as_str())));
        // invite: a new group with the active members (not us, not who declined) + carol.
        let acts = typed(&mut app, "/group invite carol");
        let [Action::Group(a)] = acts.as_slice() else {
            panic!("{acts:?}")
        };
        assert_eq!(a.op, GroupOp::Create);
        assert_eq!(a.name.as_deref(), Some("other"));
        assert_eq!(a.members, vec!["b".repeat(64), carol.id.clone()]);
        assert!(a.done.contains("fixed at creation"), "{}", a.done);
        assert!(typed(&mut app, "/group invite bob").is_empty());
        assert!(error(&app).contains("already a member"));
        // Without a group selected.
        app.selected = Some(bob.id.clone());
        assert!(typed(&mut app, "/group invite carol").is_empty());
        assert!(typed(&mut app, "/group leave").is_empty());
        assert!(typed(&mut app, "/group frob").is_empty());
        assert!(error(&app).contains("usage: /group"));
        // Not connected.
        app.conn = Conn::Down("x".into());
        assert!(typed(&mut app, "/group new x bob").is_empty());
        assert!(error(&app).contains("not connected"));
    }
}
