//! Group conversations in the chat client: the group list beside the contacts, one
//! conversation per group, and the author's copies of a message merged into one line with each
//! member's delivery status.
//!
//! A group conversation's key in [`super::app::App::conversations`] is [`KEY_PREFIX`] followed
//! by the 32-hex group id, so it never collides with a contact id (64 hex). History entries
//! with a `group` tag go there instead of the peer's one-to-one conversation: received group
//! messages (`kind` `message`, sender = the entry's peer), each of our copies (`direction`
//! `out`, one per member, the same `message_id`), and notices (the group was closed). The
//! controls we sent (invite, accept, sender keys, ...) are not shown.
//!
//! Pure: the shell ([`super::net`]) turns `group list` answers into [`GroupInfo`]s; the tests
//! below and in [`super::ui`] need no node.

use super::app::{short, Conversation, Msg};
use crate::node::history::{DeliveryPath, Direction, Status};

/// Prefix of a group conversation's key.
pub const KEY_PREFIX: &str = "group:";

/// Most groups shown (the node keeps at most 1024).
pub const MAX_GROUPS: usize = 1024;

/// The `group` tag of a history entry, as the client needs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupRef {
    /// Group id, 32 hex.
    pub group: String,
    /// `message`, `close`, or the control sent (`invite`, `accept`, ...).
    pub kind: String,
    /// The group message id (the same on every copy of one message).
    pub message_id: Option<String>,
    /// On our copy to the creator: the members it forwards it to (not our contacts).
    pub forwarded_to: Vec<String>,
    /// Of those, the members whose signed receipt came back (the message reached them).
    pub delivered_to: Vec<String>,
}

/// One member of a group.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupMember {
    /// Contact id, 64 hex.
    pub id: String,
    /// Username when the node knows it (a contact, or us).
    pub name: Option<String>,
    /// `invited`, `accepted`, `declined` or `left`.
    pub state: String,
    /// This is us.
    pub me: bool,
    /// Not our contact: reached through the creator.
    pub via_creator: bool,
}

/// A group as the list shows it (from the node's `group list`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupInfo {
    /// Group id, 32 hex.
    pub id: String,
    /// Name.
    pub name: String,
    /// Our state, or `closed`.
    pub state: String,
    /// Every member, us included.
    pub members: Vec<GroupMember>,
}

impl GroupInfo {
    /// Reads one `GROUP` object of the control API; None when it lacks an id or a name.
    pub fn from_json(v: &serde_json::Value) -> Option<GroupInfo> {
        let s =
            |v: &serde_json::Value, k: &str| v.get(k).and_then(|x| x.as_str()).map(String::from);
        let members = v
            .get("members")
            .and_then(|m| m.as_array())
            .map(|a| {
                a.iter()
                    .take(64)
                    .filter_map(|m| {
                        Some(GroupMember {
                            id: s(m, "id")?,
                            name: s(m, "name"),
                            state: s(m, "state").unwrap_or_default(),
                            me: m.get("me").and_then(|x| x.as_bool()).unwrap_or(false),
                            via_creator: m
                                .get("via_creator")
                                .and_then(|x| x.as_bool())
                                .unwrap_or(false),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(GroupInfo {
            id: s(v, "id")?,
            name: s(v, "name")?,
            state: s(v, "state").unwrap_or_default(),
            members,
        })
    }

    /// The conversation key.
    pub fn key(&self) -> String {
        key_of(&self.id)
    }

    /// A member's display name: its name, else the first 8 hex digits of its id.
    pub fn member_name(&self, id: &str) -> String {
        self.members
            .iter()
            .find(|m| m.id == id)
            .and_then(|m| m.name.clone())
            .unwrap_or_else(|| short(id))
    }

    /// Members that accepted, and all members.
    pub fn counts(&self) -> (usize, usize) {
        let accepted = self
            .members
            .iter()
            .filter(|m| m.state == "accepted")
            .count();
        (accepted, self.members.len())
    }
}

/// The conversation key of group `id`.
pub fn key_of(id: &str) -> String {
    format!("{KEY_PREFIX}{id}")
}

/// Whether a conversation key is a group's.
pub fn is_group_key(key: &str) -> bool {
    key.starts_with(KEY_PREFIX)
}

/// The group id of a conversation key.
pub fn group_id(key: &str) -> Option<&str> {
    key.strip_prefix(KEY_PREFIX)
}

/// Where an entry goes: `Some(Some(key))` a group conversation, `Some(None)` nowhere (a
/// control we sent or received), `None` not a group entry (the peer's conversation).
pub fn route(m: &Msg) -> Option<Option<String>> {
    let g = m.group.as_ref()?;
    let shown = g.kind == "message" || m.status == Status::Notice;
    Some(shown.then(|| key_of(&g.group)))
}

/// One member's copy of our message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Copy {
    /// The member (the creator, for a copy it forwards).
    pub peer: String,
    /// That copy's status.
    pub status: Status,
    /// Its path.
    pub path: Option<DeliveryPath>,
    /// Members the creator forwards this copy to.
    pub forwarded_to: Vec<String>,
    /// Of those, the members whose signed receipt came back.
    pub delivered_to: Vec<String>,
}

/// One line of a group conversation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupLine {
    /// The first entry's seq.
    pub seq: u64,
    /// Ours or received.
    pub direction: Direction,
    /// The author (received) or the first copy's member (ours).
    pub peer: String,
    /// The name history carried for the author.
    pub peer_name: Option<String>,
    /// Text.
    pub text: String,
    /// When recorded.
    pub at_ms: u64,
    /// Received: received (or notice); ours: see `copies`.
    pub status: Status,
    /// Received: the path it came by.
    pub path: Option<DeliveryPath>,
    /// Ours: one per member copy, in the order recorded.
    pub copies: Vec<Copy>,
}

/// The conversation's lines: our copies of one message (same `message_id`) merged into one.
pub fn lines(conv: &Conversation) -> Vec<GroupLine> {
    let mut out: Vec<GroupLine> = Vec::new();
    let mut by_id: std::collections::HashMap<String, usize> = Default::default();
    for m in &conv.messages {
        let mid = m.group.as_ref().and_then(|g| g.message_id.clone());
        let copy = (m.direction == Direction::Out && m.status != Status::Notice).then(|| Copy {
            peer: m.peer.clone(),
            status: m.status,
            path: m.path,
            forwarded_to: m
                .group
                .as_ref()
                .map(|g| g.forwarded_to.clone())
                .unwrap_or_default(),
            delivered_to: m
                .group
                .as_ref()
                .map(|g| g.delivered_to.clone())
                .unwrap_or_default(),
        });
        if let (Some(c), Some(mid)) = (&copy, &mid) {
            if let Some(line) = by_id.get(mid).and_then(|&i| out.get_mut(i)) {
                line.copies.push(c.clone());
                continue;
            }
            by_id.insert(mid.clone(), out.len());
        }
        out.push(GroupLine {
            seq: m.seq,
            direction: m.direction,
            peer: m.peer.clone(),
            peer_name: m.peer_name.clone(),
            text: m.text.clone(),
            at_ms: m.at_ms,
            status: m.status,
            path: m.path,
            copies: copy.into_iter().collect(),
        });
    }
    out
}

/// The short status word of a copy.
pub fn copy_word(s: Status) -> &'static str {
    match s {
        Status::Queued => "queued",
        Status::StoredAtRelay => "at relay",
        Status::Delivered => "delivered",
        Status::Received | Status::Notice => "",
    }
}

/// Our message's per-member tag: `[bob delivered, carol at relay]`; a copy the creator
/// forwards reads `[alice delivered (+dave via alice)]`, and once dave's signed receipt came
/// back `[alice delivered (+dave delivered via alice)]`.
pub fn copies_tag(info: Option<&GroupInfo>, copies: &[Copy]) -> String {
    let name = |id: &str| match info {
        Some(g) => g.member_name(id),
        None => short(id),
    };
    let parts: Vec<String> = copies
        .iter()
        .map(|c| {
            let mut s = format!("{} {}", name(&c.peer), copy_word(c.status));
            if !c.forwarded_to.is_empty() {
                let far: Vec<String> = c
                    .forwarded_to
                    .iter()
                    .map(|f| {
                        if c.delivered_to.contains(f) {
                            format!("{} delivered", name(f))
                        } else {
                            name(f)
                        }
                    })
                    .collect();
                s.push_str(&format!(" (+{} via {})", far.join(", "), name(&c.peer)));
            }
            s
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

/// The worst status among copies (what the line's colour says).
pub fn least(copies: &[Copy]) -> Status {
    copies
        .iter()
        .map(|c| c.status)
        .min()
        .unwrap_or(Status::Queued)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn gid() -> String {
        "9".repeat(32)
    }

    pub(crate) fn info() -> GroupInfo {
        let m = |d: char, name: Option<&str>, me: bool, via: bool| GroupMember {
            id: std::iter::repeat_n(d, 64).collect(),
            name: name.map(String::from),
            state: "accepted".into(),
            me,
            via_creator: via,
        };
        GroupInfo {
            id: gid(),
            name: "team".into(),
            state: "accepted".into(),
            members: vec![
                m('a', Some("alice"), true, false),
                m('b', Some("bob"), false, false),
                m('c', Some("carol"), false, false),
                m('d', None, false, true),
            ],
        }
    }

    /// A group entry: `peer` one hex digit repeated.
    pub(crate) fn gmsg(
        seq: u64,
        peer: char,
        out: bool,
        text: &str,
        status: Status,
        message_id: &str,
    ) -> Msg {
        Msg {
            seq,
            direction: if out { Direction::Out } else { Direction::In },
            peer: std::iter::repeat_n(peer, 64).collect(),
            peer_name: None,
            text: text.into(),
            at_ms: 1_700_000_000_000 + seq * 60_000,
            status,
            path: None,
            group: Some(GroupRef {
                group: gid(),
                kind: "message".into(),
                message_id: Some(message_id.into()),
                forwarded_to: Vec::new(),
                delivered_to: Vec::new(),
            }),
        }
    }

    #[test]
    fn copies_of_one_message_merge_with_their_statuses() {
        let mut conv = Conversation {
            messages: vec![
                gmsg(1, 'b', false, "hi all", Status::Received, "m1"),
                gmsg(2, 'b', true, "hello", Status::Delivered, "m2"),
                gmsg(3, 'c', true, "hello", Status::StoredAtRelay, "m2"),
            ],
            ..Conversation::default()
        };
        let mut fwd = gmsg(4, 'c', true, "again", Status::Queued, "m3");
        if let Some(g) = fwd.group.as_mut() {
            g.forwarded_to = vec!["d".repeat(64)];
        }
        conv.messages.push(fwd);
        let mut fwd = gmsg(5, 'c', true, "once more", Status::Delivered, "m4");
        if let Some(g) = fwd.group.as_mut() {
            g.forwarded_to = vec!["d".repeat(64), "e".repeat(64)];
            g.delivered_to = vec!["e".repeat(64)];
        }
        conv.messages.push(fwd);
        let l = lines(&conv);
        assert_eq!(l.len(), 4);
        assert_eq!(l[0].direction, Direction::In);
        assert_eq!(l[1].copies.len(), 2);
        assert_eq!(least(&l[1].copies), Status::StoredAtRelay);
        let g = info();
        assert_eq!(
            copies_tag(Some(&g), &l[1].copies),
            "[bob delivered, carol at relay]"
        );
        assert_eq!(
            copies_tag(Some(&g), &l[2].copies),
            "[carol queued (+dddddddd via carol)]"
        );
        assert_eq!(
            copies_tag(Some(&g), &l[3].copies),
            "[carol delivered (+dddddddd, eeeeeeee delivered via carol)]"
        );
    }

    #[test]
    fn routing_of_entries() {
        let m = gmsg(1, 'b', false, "x", Status::Received, "m");
        assert_eq!(route(&m), Some(Some(key_of(&gid()))));
        let mut c = m.clone();
        if let Some(g) = c.group.as_mut() {
            g.kind = "accept".into();
        }
        assert_eq!(route(&c), Some(None), "controls are not shown");
        c.status = Status::Notice;
        assert_eq!(route(&c), Some(Some(key_of(&gid()))), "notices are");
        c.group = None;
        assert_eq!(route(&c), None);
    }

    #[test]
    fn group_json_is_read_defensively() {
        let v = serde_json::json!({"id": gid(), "name": "team", "state": "invited",
            "members": [{"id": "b".repeat(64), "name": null, "state": "accepted", "me": false,
                         "via_creator": true}, {"no_id": 1}]});
        let g = GroupInfo::from_json(&v).unwrap_or_else(|| unreachable!());
        assert_eq!(g.members.len(), 1);
        assert!(g.members[0].via_creator);
        assert_eq!(g.counts(), (1, 1));
        assert!(GroupInfo::from_json(&serde_json::json!({"name": "x"})).is_none());
        assert!(GroupInfo::from_json(&serde_json::json!("garbage")).is_none());
    }
}
