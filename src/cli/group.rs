//! `sremp group create|accept|decline|show|list|close|leave`, `sremp send --group` and
//! `sremp messages --group`: group chats through the running node's control socket
//! (`{"cmd":"group",...}`, [`crate::node::control::group`]).
//!
//! Output: human text, or with `--json` the node's JSON unchanged: `GROUP` for every command
//! but `list` (`[GROUP,...]`), `send --group` (`GROUP_SENT`) and `messages --group`
//! (`[ENTRY,...]`); the shapes are in README ("Groups") and the control module docs.

use super::args::GroupCommand;
use super::control::{call_ok, missing};
use super::render::{format_entry, format_time, print_json, print_line};
use crate::node::control::group::GroupOp;
use crate::node::control::{ControlError, Request, MAX_MESSAGES};
use std::path::Path;

fn req(op: GroupOp, group: Option<String>) -> Request {
    Request::Group {
        op,
        group,
        name: None,
        members: None,
        text: None,
        after_seq: None,
        limit: None,
    }
}

fn str_of<'a>(v: &'a serde_json::Value, k: &str) -> &'a str {
    v.get(k).and_then(|x| x.as_str()).unwrap_or("?")
}

/// A group for people: header, then one line per member.
fn format_group(g: &serde_json::Value) -> String {
    let mut out = format!(
        "{} {} (you: {}{}; created {})",
        str_of(g, "id"),
        str_of(g, "name"),
        str_of(g, "state"),
        if g.get("is_creator").and_then(|x| x.as_bool()) == Some(true) {
            ", creator"
        } else {
            ""
        },
        format_time(g.get("created_at").and_then(|x| x.as_u64()).unwrap_or(0)),
    );
    let empty = Vec::new();
    let members = g
        .get("members")
        .and_then(|m| m.as_array())
        .unwrap_or(&empty);
    for m in members {
        let id = str_of(m, "id");
        let name = m
            .get("name")
            .and_then(|x| x.as_str())
            .map(str::to_string)
            .unwrap_or_else(|| id.chars().take(16).collect());
        let me = if m.get("me").and_then(|x| x.as_bool()) == Some(true) {
            " (you)"
        } else {
            ""
        };
        let unreachable = if m.get("reachable").and_then(|x| x.as_bool()) == Some(false) {
            " [not a contact: unreachable]"
        } else {
            ""
        };
        out.push_str(&format!(
            "\n  {name}{me}: {}{unreachable}",
            str_of(m, "state")
        ));
    }
    if let Some(n) = g.get("held").and_then(|x| x.as_u64()).filter(|n| *n > 0) {
        out.push_str(&format!("\n  {n} message(s) waiting for a sender key"));
    }
    if let Some(r) = g
        .get("refused")
        .and_then(|x| x.as_object())
        .filter(|r| !r.is_empty())
    {
        let parts: Vec<String> = r.iter().map(|(k, v)| format!("{k} {v}")).collect();
        out.push_str(&format!("\n  refused: {}", parts.join(", ")));
    }
    out
}

/// `sremp group ...`.
pub async fn run(path: &Path, json: bool, command: GroupCommand) -> Result<(), ControlError> {
    let request = match command {
        GroupCommand::Create { name, members } => Request::Group {
            op: GroupOp::Create,
            group: None,
            name: Some(name),
            members: Some(members),
            text: None,
            after_seq: None,
            limit: None,
        },
        GroupCommand::Accept { group } => req(GroupOp::Accept, Some(group)),
        GroupCommand::Decline { group } => req(GroupOp::Decline, Some(group)),
        GroupCommand::Show { group } => req(GroupOp::Show, Some(group)),
        GroupCommand::Close { group } => req(GroupOp::Close, Some(group)),
        GroupCommand::Leave { group } => req(GroupOp::Leave, Some(group)),
        GroupCommand::List => {
            let gs = call_ok(path, &req(GroupOp::List, None))
                .await?
                .groups
                .ok_or_else(|| missing("groups"))?;
            if json {
                return print_json(&gs);
            }
            for g in &gs {
                print_line(&format_group(g))?;
            }
            return Ok(());
        }
    };
    let create = matches!(
        request,
        Request::Group {
            op: GroupOp::Create,
            ..
        }
    );
    let g = call_ok(path, &request)
        .await?
        .group
        .ok_or_else(|| missing("group"))?;
    if json {
        print_json(&g)
    } else if create {
        // Scripts read the group id from the first line.
        print_line(str_of(&g, "id"))?;
        print_line(&format_group(&g))
    } else {
        print_line(&format_group(&g))
    }
}

/// `sremp send --group G TEXT`: prints the group message id, then one line per member copy.
pub async fn send(
    path: &Path,
    json: bool,
    group: String,
    text: String,
) -> Result<(), ControlError> {
    let r = Request::Group {
        op: GroupOp::Send,
        group: Some(group),
        name: None,
        members: None,
        text: Some(text),
        after_seq: None,
        limit: None,
    };
    let sent = call_ok(path, &r)
        .await?
        .group
        .ok_or_else(|| missing("group"))?;
    if json {
        return print_json(&sent);
    }
    print_line(str_of(&sent, "message_id"))?;
    let empty = Vec::new();
    for e in sent
        .get("entries")
        .and_then(|x| x.as_array())
        .unwrap_or(&empty)
    {
        if let Ok(e) = serde_json::from_value(e.clone()) {
            print_line(&format_entry(&e))?;
        }
    }
    Ok(())
}

/// `sremp messages --group G`: the group's entries, oldest first (all, or the newest `limit`,
/// or after `after`).
pub async fn messages(
    path: &Path,
    json: bool,
    group: String,
    limit: Option<usize>,
    after: Option<u64>,
) -> Result<(), ControlError> {
    let keep = limit.unwrap_or(usize::MAX);
    let mut shown = std::collections::VecDeque::new();
    let mut last = after;
    // Bounded pages; the loop ends at an empty page.
    loop {
        let r = Request::Group {
            op: GroupOp::Messages,
            group: Some(group.clone()),
            name: None,
            members: None,
            text: None,
            after_seq: last,
            limit: Some(MAX_MESSAGES),
        };
        let page = call_ok(path, &r)
            .await?
            .messages
            .ok_or_else(|| missing("messages"))?;
        if page.is_empty() {
            break;
        }
        for e in page {
            last = Some(last.map_or(e.seq, |l: u64| l.max(e.seq)));
            shown.push_back(e);
            if shown.len() > keep {
                shown.pop_front();
            }
        }
    }
    if json {
        return print_json(&shown);
    }
    for e in &shown {
        print_line(&format_entry(e))?;
    }
    Ok(())
}
