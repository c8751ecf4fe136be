//! Group chat requests of the control API (`{"cmd":"group","op":...}`).
//!
//! ```text
//! {"cmd":"group","op":"create","name":"team","members":["bob","<64 hex>"]}
//! {"cmd":"group","op":"accept"|"decline"|"leave"|"close"|"show","group":"<G>"}
//! {"cmd":"group","op":"list"}
//! {"cmd":"group","op":"send","group":"<G>","text":"hello"}
//! {"cmd":"group","op":"messages","group":"<G>","after_seq":null,"limit":100}
//! ```
//! `<G>` is the 32-hex group id, a unique prefix of it (4+ hex) or a unique group name.
//! Responses: `create`, `accept`, `decline`, `leave`, `close`, `show` →
//! `{"ok":true,"group":GROUP}`; `list` → `{"ok":true,"groups":[GROUP,...]}`; `send` →
//! `{"ok":true,"group":GROUP_SENT}`; `messages` → `{"ok":true,"messages":[ENTRY,...]}` (the
//! group's entries only, oldest first). A refusal is `{"ok":false,"error":"group: ... (code
//! 0xNN)"}` with the code of docs/PROTOCOL.md ("Groups", "Error codes").
//!
//! `GROUP` ([`crate::node::groups::GroupView`]): `{"id":"<32 hex>","name":"team","creator":
//! "<64 hex>","is_creator":bool,"state":"invited"|"accepted"|"declined"|"left"|"closed",
//! "closed":bool,"created_at":MS,"members":[{"id":"<64 hex>","name":"bob"|null,"state":
//! "invited"|"accepted"|"declined"|"left","me":bool,"reachable":bool,"via_creator":bool},...],
//! "held":N,
//! "sender_key":[GENERATION,NEXT_SEQ]|null,"refused":{"<reason>":N,...}}`.
//! `GROUP_SENT`: `{"group":"<32 hex>","message_id":"<16 hex>","entries":[ENTRY,...]}`, one
//! queued copy per member, each with that member's status.
//! A group `ENTRY` carries `"group":{"group":"<32 hex>","kind":"message"|"invite"|"accept"|
//! "decline"|"sender_key"|"leave"|"close","message_id":"<16 hex>"|null,"seq":N|null,"gap":N|null,
//! "forwarded_to":["<64 hex>",...]|null}` (`forwarded_to`: on our copy to the creator that it
//! forwards to these members, who are not our contacts; docs/PROTOCOL.md "Groups").

use super::{Response, DEFAULT_MESSAGES, MAX_MESSAGES};
use crate::node::{Node, NodeError};
use serde::{Deserialize, Serialize};

/// What a group request does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupOp {
    /// Create a group and invite the members.
    Create,
    /// Accept an invitation.
    Accept,
    /// Decline an invitation.
    Decline,
    /// Leave a group we accepted.
    Leave,
    /// Close a group we created.
    Close,
    /// One group.
    Show,
    /// Every group.
    List,
    /// Send a message to the group.
    Send,
    /// The group's history entries.
    Messages,
}

/// The fields of a `group` request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupRequest {
    /// What to do.
    pub op: GroupOp,
    /// The group.
    pub group: Option<String>,
    /// `create`: name.
    pub name: Option<String>,
    /// `create`: members.
    pub members: Option<Vec<String>>,
    /// `send`: text.
    pub text: Option<String>,
    /// `messages`: after this seq.
    pub after_seq: Option<u64>,
    /// `messages`: at most this many.
    pub limit: Option<usize>,
}

fn value<T: Serialize>(v: &T) -> Response {
    match serde_json::to_value(v) {
        Ok(v) => Response {
            group: Some(v),
            ..Response::ok()
        },
        Err(e) => Response::error(format!("could not encode the group: {e}")),
    }
}

fn need(field: Option<String>, what: &str) -> Result<String, Box<Response>> {
    field.ok_or_else(|| Box::new(Response::error(format!("group request needs \"{what}\""))))
}

/// Executes one group request.
pub async fn execute(node: &Node, req: GroupRequest) -> Response {
    match run(node, req).await {
        Ok(r) => r,
        Err(r) => *r,
    }
}

fn fail(e: NodeError) -> Box<Response> {
    Box::new(Response::node_error(&e))
}

async fn run(node: &Node, req: GroupRequest) -> Result<Response, Box<Response>> {
    Ok(match req.op {
        GroupOp::Create => {
            let name = need(req.name, "name")?;
            let members = req.members.unwrap_or_default();
            value(&node.group_create(&name, &members).await.map_err(fail)?)
        }
        GroupOp::Accept => value(
            &node
                .group_accept(&need(req.group, "group")?)
                .await
                .map_err(fail)?,
        ),
        GroupOp::Decline => value(
            &node
                .group_decline(&need(req.group, "group")?)
                .await
                .map_err(fail)?,
        ),
        GroupOp::Leave => value(
            &node
                .group_leave(&need(req.group, "group")?)
                .await
                .map_err(fail)?,
        ),
        GroupOp::Close => value(
            &node
                .group_close(&need(req.group, "group")?)
                .await
                .map_err(fail)?,
        ),
        GroupOp::Show => value(&node.group_show(&need(req.group, "group")?).map_err(fail)?),
        GroupOp::List => {
            let gs = node.group_list().map_err(fail)?;
            Response {
                groups: Some(
                    gs.iter()
                        .filter_map(|g| serde_json::to_value(g).ok())
                        .collect(),
                ),
                ..Response::ok()
            }
        }
        GroupOp::Send => {
            let g = need(req.group, "group")?;
            let text = need(req.text, "text")?;
            value(&node.group_send(&g, &text).await.map_err(fail)?)
        }
        GroupOp::Messages => {
            let g = need(req.group, "group")?;
            let limit = req.limit.unwrap_or(DEFAULT_MESSAGES).clamp(1, MAX_MESSAGES);
            let n = node.clone();
            let after = req.after_seq;
            match tokio::task::spawn_blocking(move || n.group_messages(&g, after, limit)).await {
                Ok(Ok(ms)) => Response {
                    messages: Some(ms),
                    ..Response::ok()
                },
                Ok(Err(e)) => *fail(e),
                Err(_) => Response::error("internal error in the node"),
            }
        }
    })
}
