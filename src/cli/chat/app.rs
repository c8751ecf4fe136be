//! The chat client's state, with no terminal and no socket: conversations, unread counts,
//! contacts and their presence, the input line with its history, overlays (help, own card,
//! key-change warning) and the connection state.
//!
//! Two inputs drive it: [`App::handle_key`] (a key press, returning the [`Action`]s the shell
//! must carry out over the control socket) and [`App::handle_net`] (a [`NetEvent`] from the
//! control connection). Time never comes from the clock here: the shell passes `now_ms` where
//! it matters, so the tests are deterministic.
//!
//! Limits: each conversation keeps its newest [`MAX_CONVERSATION`] messages, the input history
//! its newest [`MAX_INPUT_HISTORY`] lines, and an input line is at most [`MAX_INPUT`] bytes.
//! Unread counts only cover what arrived while this client runs (the node keeps no read marks).

use super::groups::{self, GroupInfo, GroupRef};
use crate::node::history::{DeliveryPath, Direction, Status};
use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use std::collections::HashMap;

/// Newest messages kept per conversation.
pub const MAX_CONVERSATION: usize = 2000;
/// Input lines remembered for Up/Down.
pub const MAX_INPUT_HISTORY: usize = 200;
/// Longest input line, in bytes (the node's own message limit is checked by the node).
pub const MAX_INPUT: usize = 64 * 1024;
/// Most contacts shown (a node with more is not a personal messenger's case; the rest are
/// counted in the list's title).
pub const MAX_CONTACTS: usize = 10_000;

/// One message of a conversation, as the client shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Msg {
    /// History seq (unique per node; status updates repeat it).
    pub seq: u64,
    /// Sent (`Out`) or received (`In`).
    pub direction: Direction,
    /// The peer's contact id, 64 hex.
    pub peer: String,
    /// The peer's username, when the node knows it.
    pub peer_name: Option<String>,
    /// The text.
    pub text: String,
    /// When the node recorded it (ms since the epoch).
    pub at_ms: u64,
    /// Delivery status.
    pub status: Status,
    /// The path it took.
    pub path: Option<DeliveryPath>,
    /// Group entries only: the group and what the entry is ([`groups`]).
    pub group: Option<GroupRef>,
}

/// A contact as the client shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Contact {
    /// Contact id, 64 hex.
    pub id: String,
    /// Username.
    pub username: String,
    /// "unknown", "trusted" or "rejected".
    pub trust: String,
    /// Identity version.
    pub version: u64,
    /// Known direct endpoints.
    pub endpoints: usize,
    /// Known home relays.
    pub relays: usize,
}

/// What the node says about a contact's reachability ([`NetEvent::Presence`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Presence {
    /// The node's last direct attempt to the contact succeeded.
    pub direct: bool,
}

/// The contact list's indicator: the path the node would take to the contact now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reach {
    /// The last direct attempt succeeded: the contact's node is online and reachable directly.
    Direct,
    /// Through the contact's relay (no direct path proven).
    Relay,
    /// No route known yet: messages wait in the outbox.
    Unknown,
}

/// Something from the node (the shell turns control-socket lines into these).
#[derive(Clone, Debug, PartialEq)]
pub enum NetEvent {
    /// Trying to reach the node.
    Connecting,
    /// Connected: our own identity; the full state follows (the client forgets what it had).
    Connected {
        /// Our contact id.
        id: String,
        /// Our username.
        username: String,
    },
    /// The whole contact list.
    Contacts(Vec<Contact>),
    /// A new or changed contact (added, updated, trust changed).
    Contact(Contact),
    /// A contact presented a conflicting identity (TOFU), or a card to add conflicted with the
    /// pinned one.
    KeyConflict {
        /// The pinned contact's id.
        id: String,
        /// Its username, if known.
        username: Option<String>,
        /// What happened, for people.
        detail: String,
    },
    /// A history entry, new or with a new status.
    Entry(Msg),
    /// The backlog after [`NetEvent::Connected`] is complete; what follows is live.
    Synced,
    /// Reachability of every contact the node has a path state for.
    Presence(HashMap<String, Presence>),
    /// The whole group list.
    Groups(Vec<GroupInfo>),
    /// Our own card, for `/id`: the card text and its QR code lines.
    Card {
        /// The `sremp1:` card.
        card: String,
        /// The QR code (unicode half blocks), or why there is none.
        qr: Result<String, String>,
    },
    /// A request finished; a line for the status bar.
    Info(String),
    /// A request failed; a line for the status bar.
    Error(String),
    /// The node is not running or stopped; the shell retries by itself.
    Down(String),
    /// A file transfer, new or changed (the node's `files_follow` stream; [`super::files`]).
    Transfer(Box<crate::node::files::View>),
}

/// What the shell must do for the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Send `text` to the contact `to` (64-hex id).
    Send {
        /// Contact id.
        to: String,
        /// The text.
        text: String,
    },
    /// Send `text` to the group `group` (32-hex id).
    SendGroup {
        /// Group id.
        group: String,
        /// The text.
        text: String,
    },
    /// Add a contact from its card.
    Add(String),
    /// Mark a contact trusted (64-hex id).
    Trust(String),
    /// Mark a contact rejected (64-hex id).
    Reject(String),
    /// Fetch our card for the `/id` overlay.
    ShowCard,
    /// `/file PATH`: offer a file to the contact `to` (64-hex id); the path as typed.
    SendFile {
        /// Contact id.
        to: String,
        /// The path (`~/` and relative paths are resolved by the shell).
        path: String,
    },
    /// `/file PATH` in a group conversation: offer a file to every member of `group` (32-hex
    /// id) that is our contact, one pairwise transfer each (`send-file --group`).
    SendFileGroup {
        /// Group id.
        group: String,
        /// The path as typed.
        path: String,
    },
    /// `/accept`: accept an incoming file offer (32-hex transfer id), into `dir` if given.
    AcceptFile {
        /// Transfer id.
        id: String,
        /// Target directory as typed (default: the node's download directory).
        dir: Option<String>,
    },
    /// `/decline`: refuse an incoming file offer, telling the sender `reason`.
    DeclineFile {
        /// Transfer id.
        id: String,
        /// Told to the sender.
        reason: Option<String>,
    },
    /// `/group ...`: create a group, answer an invitation, leave ([`super::group_cmd`]).
    Group(super::group_cmd::GroupAction),
    /// Leave the client.
    Quit,
}

/// The node connection as the header shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Conn {
    /// Trying to reach the node.
    Connecting,
    /// Connected.
    Up,
    /// Not reachable, and why.
    Down(String),
}

/// A pop-up over the main screen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Overlay {
    /// The command list.
    Help,
    /// Our card and its QR code.
    Card {
        /// The card text.
        card: String,
        /// QR code lines (or why there is none).
        qr: Result<String, String>,
    },
}

/// A contact whose identity conflicted: shown as a banner until dismissed, and marked in the
/// contact list for the rest of the session.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyWarning {
    /// The contact id concerned.
    pub id: String,
    /// Who, for people.
    pub name: String,
    /// What happened.
    pub detail: String,
}

/// Status bar line severity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    /// Neutral.
    Info,
    /// A failure.
    Error,
}

/// One conversation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Conversation {
    /// Messages by seq, oldest first (at most [`MAX_CONVERSATION`]).
    pub messages: Vec<Msg>,
    /// Received while not shown.
    pub unread: usize,
}

impl Conversation {
    /// Inserts or updates (same seq) a message; `true` when it is new.
    fn upsert(&mut self, m: Msg) -> bool {
        match self.messages.binary_search_by_key(&m.seq, |x| x.seq) {
            Ok(i) => {
                // A status never goes back (queued -> stored at relay -> delivered): a stale
                // copy (a backlog page read before a live update) must not undo a newer one.
                if let Some(slot) = self.messages.get_mut(i) {
                    // Receipts for forwarded members only accumulate too.
                    let mut m = m;
                    if let (Some(new), Some(old)) = (m.group.as_mut(), slot.group.as_ref()) {
                        for d in &old.delivered_to {
                            if !new.delivered_to.contains(d) {
                                new.delivered_to.push(d.clone());
                            }
                        }
                    }
                    if m.status >= slot.status {
                        *slot = m;
                    }
                }
                false
            }
            Err(i) => {
                // Older than everything kept in a full conversation: it was trimmed, not new.
                if i == 0 && self.messages.len() >= MAX_CONVERSATION {
                    return false;
                }
                self.messages.insert(i, m);
                if self.messages.len() > MAX_CONVERSATION {
                    let extra = self.messages.len() - MAX_CONVERSATION;
                    self.messages.drain(..extra);
                }
                true
            }
        }
    }

    /// Time of the newest message (0 when empty).
    pub fn last_activity(&self) -> u64 {
        self.messages.last().map(|m| m.at_ms).unwrap_or(0)
    }
}

/// The whole client state.
#[derive(Clone, Debug)]
pub struct App {
    /// Node connection.
    pub conn: Conn,
    /// Our (id, username) once connected.
    pub me: Option<(String, String)>,
    /// Contacts by id.
    pub contacts: HashMap<String, Contact>,
    /// Presence by contact id.
    pub presence: HashMap<String, Presence>,
    /// Conversations by peer id (a group's: [`groups::key_of`] its id).
    pub conversations: HashMap<String, Conversation>,
    /// Groups by conversation key.
    pub groups: HashMap<String, GroupInfo>,
    /// The peer id shown.
    pub selected: Option<String>,
    /// The input line.
    pub input: String,
    /// Cursor position in `input`, in chars.
    pub cursor: usize,
    /// Sent input lines, oldest first.
    pub history: Vec<String>,
    /// Position while browsing `history` with Up/Down.
    pub history_pos: Option<usize>,
    /// The unfinished line saved when history browsing started.
    pub draft: String,
    /// Lines scrolled up from the bottom of the conversation.
    pub scroll: usize,
    /// Pop-up shown.
    pub overlay: Option<Overlay>,
    /// Key-change warnings not yet dismissed (the first is shown).
    pub warnings: Vec<KeyWarning>,
    /// Contact ids that had a key warning this session.
    pub flagged: std::collections::HashSet<String>,
    /// Status bar line.
    pub notice: Option<(Level, String)>,
    /// Local time offset from UTC, seconds (timestamps and day separators).
    pub utc_offset_secs: i64,
    /// The highest seq this client has shown, once the first backlog is in: received
    /// messages above it are unread (also those that arrived while the node was unreachable).
    pub seen_seq: Option<u64>,
    /// File transfers ([`super::files`]).
    pub transfers: super::files::Transfers,
}

impl App {
    /// A fresh client, connecting, with times shown at `utc_offset_secs` from UTC.
    pub fn new(utc_offset_secs: i64) -> Self {
        App {
            conn: Conn::Connecting,
            me: None,
            contacts: HashMap::new(),
            presence: HashMap::new(),
            conversations: HashMap::new(),
            groups: HashMap::new(),
            selected: None,
            input: String::new(),
            cursor: 0,
            history: Vec::new(),
            history_pos: None,
            draft: String::new(),
            scroll: 0,
            overlay: None,
            warnings: Vec::new(),
            flagged: Default::default(),
            notice: None,
            utc_offset_secs,
            seen_seq: None,
            transfers: Default::default(),
        }
    }

    /// Peer ids in the order the contact list shows them: most recent activity first, then by
    /// name, then by id.
    pub fn order(&self) -> Vec<String> {
        let mut ids: Vec<&String> = self.contacts.keys().collect();
        ids.extend(self.groups.keys());
        for id in self.conversations.keys() {
            if !self.contacts.contains_key(id) && !self.groups.contains_key(id) {
                ids.push(id);
            }
        }
        let mut v: Vec<(u64, String, String)> = ids
            .into_iter()
            .map(|id| {
                let act = self
                    .conversations
                    .get(id)
                    .map(Conversation::last_activity)
                    .unwrap_or(0);
                (act, self.name_of(id), id.clone())
            })
            .collect();
        v.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
        v.truncate(MAX_CONTACTS);
        v.into_iter().map(|(_, _, id)| id).collect()
    }

    /// A peer's display name: the contact's username, else the name history carried, else
    /// the id's first 8 hex digits.
    pub fn name_of(&self, id: &str) -> String {
        if let Some(c) = self.contacts.get(id) {
            return c.username.clone();
        }
        if let Some(g) = self.groups.get(id) {
            return format!("#{}", g.name);
        }
        if let Some(gid) = groups::group_id(id) {
            return format!("#{}", short(gid));
        }
        self.conversations
            .get(id)
            .and_then(|c| c.messages.iter().rev().find_map(|m| m.peer_name.clone()))
            .unwrap_or_else(|| id.chars().take(8).collect())
    }

    /// Whether two contacts share this contact's username (another key under the same name).
    pub fn name_is_shared(&self, id: &str) -> bool {
        let Some(c) = self.contacts.get(id) else {
            return false;
        };
        self.contacts
            .values()
            .any(|o| o.id != c.id && o.username == c.username)
    }

    /// The path indicator of a contact.
    pub fn reach(&self, id: &str) -> Reach {
        if self.presence.get(id).is_some_and(|p| p.direct) {
            return Reach::Direct;
        }
        match self.contacts.get(id) {
            Some(c) if c.relays > 0 => Reach::Relay,
            _ => Reach::Unknown,
        }
    }

    /// The selected conversation.
    pub fn current(&self) -> Option<&Conversation> {
        self.selected
            .as_ref()
            .and_then(|id| self.conversations.get(id))
    }

    fn set_notice(&mut self, level: Level, text: impl Into<String>) {
        self.notice = Some((level, text.into()));
    }

    fn select(&mut self, id: Option<String>) {
        self.selected = id;
        self.scroll = 0;
        if let Some(c) = self
            .selected
            .as_ref()
            .and_then(|id| self.conversations.get_mut(id))
        {
            c.unread = 0;
        }
    }

    /// Moves the selection `step` places along the contact list (wrapping).
    fn cycle(&mut self, forward: bool) {
        let order = self.order();
        if order.is_empty() {
            return;
        }
        let n = order.len();
        let pos = self
            .selected
            .as_ref()
            .and_then(|s| order.iter().position(|id| id == s));
        let next = match (pos, forward) {
            (None, _) => 0,
            (Some(p), true) => (p + 1) % n,
            (Some(p), false) => (p + n - 1) % n,
        };
        self.select(order.get(next).cloned());
    }

    /// Applies one event from the node.
    pub fn handle_net(&mut self, ev: NetEvent) {
        match ev {
            NetEvent::Connecting => {
                if self.conn != Conn::Up {
                    self.conn = Conn::Connecting;
                }
            }
            NetEvent::Connected { id, username } => {
                self.conn = Conn::Up;
                self.me = Some((id, username));
                // A full resync follows: forget what may have changed while away, but keep
                // unread counts for conversations that still exist.
                let unread: HashMap<String, usize> = self
                    .conversations
                    .iter()
                    .map(|(k, c)| (k.clone(), c.unread))
                    .collect();
                self.conversations.clear();
                for (k, u) in unread {
                    if u > 0 {
                        self.conversations.entry(k).or_default().unread = u;
                    }
                }
                self.contacts.clear();
                self.presence.clear();
                self.transfers.clear();
                self.groups.clear();
                if matches!(self.notice, Some((Level::Error, _))) {
                    self.notice = None;
                }
            }
            NetEvent::Contacts(list) => {
                self.contacts = list
                    .into_iter()
                    .take(MAX_CONTACTS)
                    .map(|c| (c.id.clone(), c))
                    .collect();
                if self.selected.is_none() {
                    let first = self.order().into_iter().next();
                    self.select(first);
                }
            }
            NetEvent::Contact(c) => {
                let new = !self.contacts.contains_key(&c.id);
                if new {
                    if let Some(other) = self
                        .contacts
                        .values()
                        .find(|o| o.username == c.username && o.id != c.id)
                    {
                        let detail = format!(
                            "a new identity key calls itself \"{}\" ({}), but the {} you know has key {}. \
                             Another key is another person until you check the id out of band.",
                            c.username,
                            short(&c.id),
                            other.username,
                            short(&other.id)
                        );
                        self.warn(c.id.clone(), c.username.clone(), detail);
                    }
                    if self.contacts.len() >= MAX_CONTACTS {
                        return;
                    }
                }
                let id = c.id.clone();
                self.contacts.insert(id.clone(), c);
                if self.selected.is_none() {
                    self.select(Some(id));
                }
            }
            NetEvent::KeyConflict {
                id,
                username,
                detail,
            } => {
                let name = username
                    .or_else(|| self.contacts.get(&id).map(|c| c.username.clone()))
                    .unwrap_or_else(|| short(&id));
                self.warn(id, name, detail);
            }
            NetEvent::Entry(m) => self.entry(m),
            NetEvent::Synced => {
                let top = self
                    .conversations
                    .values()
                    .filter_map(|c| c.messages.last().map(|m| m.seq))
                    .max()
                    .unwrap_or(0);
                self.seen_seq = Some(self.seen_seq.unwrap_or(0).max(top));
            }
            NetEvent::Presence(p) => self.presence = p,
            NetEvent::Groups(list) => {
                self.groups = list
                    .into_iter()
                    .take(groups::MAX_GROUPS)
                    .map(|g| (g.key(), g))
                    .collect();
                if self.selected.is_none() {
                    let first = self.order().into_iter().next();
                    self.select(first);
                }
            }
            NetEvent::Card { card, qr } => self.overlay = Some(Overlay::Card { card, qr }),
            NetEvent::Info(s) => self.set_notice(Level::Info, s),
            NetEvent::Error(s) => self.set_notice(Level::Error, s),
            NetEvent::Transfer(v) => super::files::on_transfer(self, *v),
            NetEvent::Down(why) => {
                self.conn = Conn::Down(why);
                self.presence.clear();
            }
        }
    }

    fn warn(&mut self, id: String, name: String, detail: String) {
        self.flagged.insert(id.clone());
        if self
            .warnings
            .iter()
            .any(|w| w.id == id && w.detail == detail)
        {
            return;
        }
        if self.warnings.len() >= 16 {
            self.warnings.remove(0);
        }
        self.warnings.push(KeyWarning { id, name, detail });
    }

    fn entry(&mut self, m: Msg) {
        // A group entry goes to its group's conversation (or nowhere: a control).
        let peer = match groups::route(&m) {
            None => m.peer.clone(),
            Some(Some(key)) => key,
            Some(None) => return,
        };
        let incoming = m.direction == Direction::In && m.status == Status::Received;
        let shown = self.selected.as_deref() == Some(peer.as_str());
        let conv = self.conversations.entry(peer.clone()).or_default();
        let seq = m.seq;
        let new = conv.upsert(m);
        if let Some(seen) = self.seen_seq {
            if new && incoming && !shown && seq > seen {
                conv.unread = conv.unread.saturating_add(1);
            }
            self.seen_seq = Some(seen.max(seq));
        }
        if self.selected.is_none() {
            self.select(Some(peer));
        }
    }

    /// Applies one key press; returns what the shell must do.
    pub fn handle_key(&mut self, key: KeyEvent) -> Vec<Action> {
        if key.kind == KeyEventKind::Release {
            return Vec::new();
        }
        let ctrl = key.modifiers.contains(KeyModifiers::CONTROL);
        match key.code {
            KeyCode::Char('c') | KeyCode::Char('d') if ctrl => return vec![Action::Quit],
            _ => {}
        }
        // A key warning must be acknowledged before anything else.
        if !self.warnings.is_empty() {
            if matches!(key.code, KeyCode::Enter | KeyCode::Esc) {
                self.warnings.remove(0);
            }
            return Vec::new();
        }
        if self.overlay.is_some() {
            if matches!(key.code, KeyCode::Esc | KeyCode::Enter | KeyCode::Char('q')) {
                self.overlay = None;
            }
            return Vec::new();
        }
        match key.code {
            KeyCode::Tab => self.cycle(true),
            KeyCode::BackTab => self.cycle(false),
            KeyCode::Enter => return self.submit(),
            KeyCode::Esc => self.notice = None,
            KeyCode::Backspace if self.cursor > 0 => {
                self.cursor -= 1;
                self.remove_at(self.cursor);
            }
            KeyCode::Delete => self.remove_at(self.cursor),
            KeyCode::Left => self.cursor = self.cursor.saturating_sub(1),
            KeyCode::Right => self.cursor = (self.cursor + 1).min(self.input.chars().count()),
            KeyCode::Home => self.cursor = 0,
            KeyCode::End => self.cursor = self.input.chars().count(),
            KeyCode::Char('a') if ctrl => self.cursor = 0,
            KeyCode::Char('e') if ctrl => self.cursor = self.input.chars().count(),
            KeyCode::Char('u') if ctrl => {
                self.input.clear();
                self.cursor = 0;
            }
            KeyCode::Up => self.history_prev(),
            KeyCode::Down => self.history_next(),
            KeyCode::PageUp => self.scroll = self.scroll.saturating_add(10),
            KeyCode::PageDown => self.scroll = self.scroll.saturating_sub(10),
            KeyCode::Char(ch) if !ctrl => self.insert(ch),
            _ => {}
        }
        Vec::new()
    }

    /// Pasted text goes into the input line (newlines become spaces).
    pub fn paste(&mut self, text: &str) {
        let room = MAX_INPUT.saturating_sub(self.input.len());
        let mut add = String::new();
        let mut n = 0;
        for ch in text.chars() {
            let ch = if ch == '\n' || ch == '\r' { ' ' } else { ch };
            if ch.is_control() {
                continue;
            }
            if add.len() + ch.len_utf8() > room {
                break;
            }
            add.push(ch);
            n += 1;
        }
        let at = self.byte_at(self.cursor);
        self.input.insert_str(at, &add);
        self.cursor += n;
        self.history_pos = None;
    }

    fn byte_at(&self, char_pos: usize) -> usize {
        self.input
            .char_indices()
            .nth(char_pos)
            .map(|(i, _)| i)
            .unwrap_or(self.input.len())
    }

    fn insert(&mut self, ch: char) {
        if ch.is_control() || self.input.len() + ch.len_utf8() > MAX_INPUT {
            return;
        }
        let at = self.byte_at(self.cursor);
        self.input.insert(at, ch);
        self.cursor += 1;
        self.history_pos = None;
    }

    fn remove_at(&mut self, char_pos: usize) {
        if char_pos < self.input.chars().count() {
            let at = self.byte_at(char_pos);
            self.input.remove(at);
        }
    }

    fn set_input(&mut self, s: String) {
        self.cursor = s.chars().count();
        self.input = s;
    }

    fn history_prev(&mut self) {
        if self.history.is_empty() {
            return;
        }
        let pos = match self.history_pos {
            None => {
                self.draft = self.input.clone();
                self.history.len() - 1
            }
            Some(p) => p.saturating_sub(1),
        };
        self.history_pos = Some(pos);
        if let Some(s) = self.history.get(pos).cloned() {
            self.set_input(s);
        }
    }

    fn history_next(&mut self) {
        let Some(p) = self.history_pos else {
            return;
        };
        if p + 1 >= self.history.len() {
            self.history_pos = None;
            let d = std::mem::take(&mut self.draft);
            self.set_input(d);
        } else {
            self.history_pos = Some(p + 1);
            if let Some(s) = self.history.get(p + 1).cloned() {
                self.set_input(s);
            }
        }
    }

    fn remember(&mut self, line: &str) {
        if self.history.last().map(String::as_str) != Some(line) {
            self.history.push(line.to_string());
            if self.history.len() > MAX_INPUT_HISTORY {
                self.history.remove(0);
            }
        }
        self.history_pos = None;
        self.draft.clear();
    }

    /// Enter: a command or a message to the selected conversation.
    fn submit(&mut self) -> Vec<Action> {
        let line = self.input.trim().to_string();
        if line.is_empty() {
            return Vec::new();
        }
        self.remember(&line);
        self.input.clear();
        self.cursor = 0;
        self.scroll = 0;
        if let Some(cmd) = line.strip_prefix('/') {
            if !cmd.starts_with('/') {
                return self.command(cmd);
            }
        }
        // "//text" sends "/text".
        let text = line.strip_prefix('/').unwrap_or(&line).to_string();
        let text = if line.starts_with("//") { text } else { line };
        self.send(text)
    }

    fn send(&mut self, text: String) -> Vec<Action> {
        if self.conn != Conn::Up {
            self.set_notice(
                Level::Error,
                "not sent: the node is not connected (it is kept in the input history)",
            );
            return Vec::new();
        }
        match self.selected.clone() {
            Some(key) if groups::is_group_key(&key) => {
                let group = groups::group_id(&key).unwrap_or_default().to_string();
                vec![Action::SendGroup { group, text }]
            }
            Some(to) => vec![Action::Send { to, text }],
            None => {
                self.set_notice(
                    Level::Error,
                    "no conversation selected: add a contact with /add CARD",
                );
                Vec::new()
            }
        }
    }

    /// The contact a command names (`/trust bob`), or the selected one.
    fn target(&self, arg: &str) -> Result<String, String> {
        if arg.is_empty() {
            return match self.selected.clone() {
                Some(k) if groups::is_group_key(&k) => {
                    Err("a group is selected: name the contact".to_string())
                }
                Some(k) => Ok(k),
                None => Err("no conversation selected".to_string()),
            };
        }
        if self.contacts.contains_key(arg) {
            return Ok(arg.to_string());
        }
        let mut named = self.contacts.values().filter(|c| c.username == arg);
        match (named.next(), named.next()) {
            (Some(c), None) => Ok(c.id.clone()),
            (Some(_), Some(_)) => Err(format!(
                "several contacts are called \"{arg}\": select the conversation and use the command without a name"
            )),
            _ => Err(format!("no contact \"{arg}\"")),
        }
    }

    fn command(&mut self, cmd: &str) -> Vec<Action> {
        let (name, arg) = match cmd.split_once(char::is_whitespace) {
            Some((n, a)) => (n, a.trim()),
            None => (cmd, ""),
        };
        if let Some(actions) = super::files::command(self, name, arg) {
            return actions;
        }
        if let Some(actions) = super::group_cmd::command(self, name, arg) {
            return actions;
        }
        let needs_node = |app: &mut App| {
            if app.conn == Conn::Up {
                true
            } else {
                app.set_notice(Level::Error, "the node is not connected");
                false
            }
        };
        match name {
            "help" | "h" | "?" => self.overlay = Some(Overlay::Help),
            "quit" | "q" | "exit" => return vec![Action::Quit],
            "id" | "card" => {
                if needs_node(self) {
                    return vec![Action::ShowCard];
                }
            }
            "add" => {
                if arg.is_empty() {
                    self.set_notice(Level::Error, "usage: /add sremp1:...");
                } else if needs_node(self) {
                    return vec![Action::Add(arg.to_string())];
                }
            }
            "trust" | "reject" => match self.target(arg) {
                Ok(id) if needs_node(self) => {
                    return vec![if name == "trust" {
                        Action::Trust(id)
                    } else {
                        Action::Reject(id)
                    }]
                }
                Ok(_) => {}
                Err(e) => self.set_notice(Level::Error, e),
            },
            other => self.set_notice(
                Level::Error,
                format!("unknown command /{other} (type /help)"),
            ),
        }
        Vec::new()
    }
}

/// The first 8 hex digits of an id.
pub fn short(id: &str) -> String {
    id.chars().take(8).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn key(code: KeyCode) -> KeyEvent {
        KeyEvent::new(code, KeyModifiers::NONE)
    }

    fn typed(app: &mut App, s: &str) -> Vec<Action> {
        for ch in s.chars() {
            app.handle_key(key(KeyCode::Char(ch)));
        }
        app.handle_key(key(KeyCode::Enter))
    }

    pub(crate) fn contact(id_digit: char, name: &str) -> Contact {
        Contact {
            id: std::iter::repeat_n(id_digit, 64).collect(),
            username: name.into(),
            trust: "unknown".into(),
            version: 1,
            endpoints: 1,
            relays: 1,
        }
    }

    pub(crate) fn msg(seq: u64, peer: &Contact, out: bool, text: &str, status: Status) -> Msg {
        Msg {
            seq,
            direction: if out { Direction::Out } else { Direction::In },
            peer: peer.id.clone(),
            peer_name: Some(peer.username.clone()),
            text: text.into(),
            at_ms: 1_700_000_000_000 + seq * 60_000,
            status,
            path: None,
            group: None,
        }
    }

    pub(crate) fn connected(contacts: Vec<Contact>) -> App {
        let mut app = App::new(0);
        app.handle_net(NetEvent::Connected {
            id: "a".repeat(64),
            username: "alice".into(),
        });
        app.handle_net(NetEvent::Contacts(contacts));
        app.handle_net(NetEvent::Synced);
        app
    }

    #[test]
    fn a_group_conversation_sends_to_the_group_and_counts_unread() {
        use crate::cli::chat::groups::tests::{gid, gmsg, info};
        let bob = contact('b', "bob");
        let mut app = connected(vec![bob.clone()]);
        assert_eq!(app.selected.as_deref(), Some(bob.id.as_str()));
        app.handle_net(NetEvent::Groups(vec![info()]));
        let key = info().key();
        assert!(app.order().contains(&key));
        assert_eq!(app.name_of(&key), "#team");
        // A group message while bob is shown: unread in the group, not in bob's conversation.
        app.handle_net(NetEvent::Entry(gmsg(
            7,
            'b',
            false,
            "hi",
            Status::Received,
            "m",
        )));
        assert_eq!(app.conversations.get(&key).map(|c| c.unread), Some(1));
        assert!(!app.conversations.contains_key(&bob.id));
        // Tab to the group clears it; Enter sends to the group.
        while app.selected.as_deref() != Some(key.as_str()) {
            app.handle_key(key_of(KeyCode::Tab));
        }
        assert_eq!(app.conversations.get(&key).map(|c| c.unread), Some(0));
        assert_eq!(
            typed(&mut app, "hello group"),
            vec![Action::SendGroup {
                group: gid(),
                text: "hello group".into()
            }]
        );
        // /trust with no name is refused on a group (it names no contact).
        assert!(typed(&mut app, "/trust").is_empty());
        assert!(matches!(&app.notice, Some((Level::Error, e)) if e.contains("group")));
        // A reconnection forgets the groups until the node lists them again.
        app.handle_net(NetEvent::Connected {
            id: "a".repeat(64),
            username: "alice".into(),
        });
        assert!(app.groups.is_empty());
    }

    fn key_of(code: KeyCode) -> KeyEvent {
        key(code)
    }

    #[test]
    fn typing_and_enter_sends_to_the_selected_contact() {
        let bob = contact('b', "bob");
        let mut app = connected(vec![bob.clone()]);
        assert_eq!(app.selected.as_deref(), Some(bob.id.as_str()));
        let acts = typed(&mut app, "hello bob");
        assert_eq!(
            acts,
            vec![Action::Send {
                to: bob.id.clone(),
                text: "hello bob".into()
            }]
        );
        assert!(app.input.is_empty());
        // "//x" sends "/x".
        let acts = typed(&mut app, "//shrug");
        assert_eq!(
            acts,
            vec![Action::Send {
                to: bob.id,
                text: "/shrug".into()
            }]
        );
    }

    #[test]
    fn sending_while_down_is_refused_with_a_notice() {
        let bob = contact('b', "bob");
        let mut app = connected(vec![bob]);
        app.handle_net(NetEvent::Down("node is not running".into()));
        assert!(typed(&mut app, "hi").is_empty());
        assert!(matches!(app.notice, Some((Level::Error, ref s)) if s.contains("not connected")));
        // The line is kept in the history.
        app.handle_key(key(KeyCode::Up));
        assert_eq!(app.input, "hi");
    }

    #[test]
    fn input_history_up_down_and_editing() {
        let mut app = connected(vec![contact('b', "bob")]);
        typed(&mut app, "one");
        typed(&mut app, "two");
        for ch in "dra".chars() {
            app.handle_key(key(KeyCode::Char(ch)));
        }
        app.handle_key(key(KeyCode::Up));
        assert_eq!(app.input, "two");
        app.handle_key(key(KeyCode::Up));
        assert_eq!(app.input, "one");
        app.handle_key(key(KeyCode::Up));
        assert_eq!(app.input, "one");
        app.handle_key(key(KeyCode::Down));
        assert_eq!(app.input, "two");
        app.handle_key(key(KeyCode::Down));
        assert_eq!(app.input, "dra");
        // Cursor editing with multi-byte characters.
        app.handle_key(key(KeyCode::Home));
        app.handle_key(key(KeyCode::Char('é')));
        app.handle_key(key(KeyCode::End));
        app.handle_key(key(KeyCode::Backspace));
        app.handle_key(key(KeyCode::Left));
        app.handle_key(key(KeyCode::Delete));
        assert_eq!(app.input, "éd");
        app.handle_key(KeyEvent::new(KeyCode::Char('u'), KeyModifiers::CONTROL));
        assert_eq!(app.input, "");
    }

    #[test]
    fn tab_cycles_conversations_and_clears_unread() {
        let bob = contact('b', "bob");
        let carol = contact('c', "carol");
        let mut app = connected(vec![bob.clone(), carol.clone()]);
        let first = app.selected.clone();
        assert_eq!(first.as_deref(), Some(bob.id.as_str()), "by name when idle");
        app.handle_net(NetEvent::Entry(msg(
            1,
            &carol,
            false,
            "hey",
            Status::Received,
        )));
        app.handle_net(NetEvent::Entry(msg(
            2,
            &carol,
            false,
            "you there?",
            Status::Received,
        )));
        assert_eq!(app.conversations[&carol.id].unread, 2);
        // The same entry again (a status repeat) does not count twice.
        app.handle_net(NetEvent::Entry(msg(
            2,
            &carol,
            false,
            "you there?",
            Status::Received,
        )));
        assert_eq!(app.conversations[&carol.id].unread, 2);
        // carol is now first (most recent activity).
        assert_eq!(app.order().first(), Some(&carol.id));
        app.handle_key(key(KeyCode::Tab));
        assert_eq!(app.selected.as_deref(), Some(carol.id.as_str()));
        assert_eq!(app.conversations[&carol.id].unread, 0);
        app.handle_key(key(KeyCode::Tab));
        assert_eq!(app.selected.as_deref(), Some(bob.id.as_str()));
        app.handle_key(key(KeyCode::BackTab));
        assert_eq!(app.selected.as_deref(), Some(carol.id.as_str()));
    }

    #[test]
    fn status_updates_replace_the_message_by_seq() {
        let bob = contact('b', "bob");
        let mut app = connected(vec![bob.clone()]);
        app.handle_net(NetEvent::Entry(msg(5, &bob, true, "hi", Status::Queued)));
        let mut m = msg(5, &bob, true, "hi", Status::Delivered);
        m.path = Some(DeliveryPath::Direct);
        app.handle_net(NetEvent::Entry(m.clone()));
        let conv = &app.conversations[&bob.id];
        assert_eq!(conv.messages, vec![m.clone()]);
        assert_eq!(conv.unread, 0, "own messages are never unread");
        // A stale copy does not undo it.
        app.handle_net(NetEvent::Entry(msg(
            5,
            &bob,
            true,
            "hi",
            Status::StoredAtRelay,
        )));
        assert_eq!(app.conversations[&bob.id].messages, vec![m]);
    }

    #[test]
    fn conversations_are_bounded() {
        let bob = contact('b', "bob");
        let mut app = connected(vec![bob.clone()]);
        for seq in 1..=(MAX_CONVERSATION as u64 + 10) {
            app.handle_net(NetEvent::Entry(msg(
                seq,
                &bob,
                false,
                "x",
                Status::Received,
            )));
        }
        let conv = &app.conversations[&bob.id];
        assert_eq!(conv.messages.len(), MAX_CONVERSATION);
        assert_eq!(conv.messages.first().map(|m| m.seq), Some(11));
        // An old one that was trimmed does not come back.
        app.handle_net(NetEvent::Entry(msg(3, &bob, false, "x", Status::Received)));
        let conv = &app.conversations[&bob.id];
        assert_eq!(conv.messages.len(), MAX_CONVERSATION);
        assert_eq!(conv.messages.first().map(|m| m.seq), Some(11));
    }

    #[test]
    fn commands_map_to_actions() {
        let bob = contact('b', "bob");
        let mut app = connected(vec![bob.clone(), contact('c', "carol")]);
        assert_eq!(
            typed(&mut app, "/trust"),
            vec![Action::Trust(bob.id.clone())]
        );
        assert_eq!(
            typed(&mut app, "/reject carol"),
            vec![Action::Reject("c".repeat(64))]
        );
        assert_eq!(
            typed(&mut app, "/add sremp1:abc"),
            vec![Action::Add("sremp1:abc".into())]
        );
        assert!(typed(&mut app, "/add").is_empty());
        assert!(matches!(app.notice, Some((Level::Error, ref s)) if s.contains("usage")));
        assert_eq!(typed(&mut app, "/id"), vec![Action::ShowCard]);
        assert!(typed(&mut app, "/trust nobody").is_empty());
        assert!(matches!(app.notice, Some((Level::Error, ref s)) if s.contains("nobody")));
        assert!(typed(&mut app, "/frobnicate").is_empty());
        assert!(matches!(app.notice, Some((Level::Error, ref s)) if s.contains("/help")));
        assert!(typed(&mut app, "/help").is_empty());
        assert_eq!(app.overlay, Some(Overlay::Help));
        app.handle_key(key(KeyCode::Esc));
        assert_eq!(app.overlay, None);
        assert_eq!(typed(&mut app, "/quit"), vec![Action::Quit]);
        assert_eq!(
            app.handle_key(KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)),
            vec![Action::Quit]
        );
    }

    #[test]
    fn key_conflict_blocks_input_until_acknowledged() {
        let bob = contact('b', "bob");
        let mut app = connected(vec![bob.clone()]);
        app.handle_net(NetEvent::KeyConflict {
            id: bob.id.clone(),
            username: None,
            detail: "same version, different contents".into(),
        });
        assert_eq!(app.warnings.len(), 1);
        assert_eq!(app.warnings[0].name, "bob");
        // Typing does nothing while the warning is up.
        assert!(typed(&mut app, "x").is_empty());
        assert_eq!(app.warnings.len(), 0, "Enter acknowledged it");
        assert!(app.input.is_empty());
        assert!(app.flagged.contains(&bob.id), "the contact stays marked");
    }

    #[test]
    fn a_new_key_under_a_known_name_is_a_warning() {
        let bob = contact('b', "bob");
        let mut app = connected(vec![bob.clone()]);
        let impostor = contact('e', "bob");
        app.handle_net(NetEvent::Contact(impostor.clone()));
        assert_eq!(app.warnings.len(), 1);
        assert!(app.warnings[0].detail.contains("eeeeeeee"));
        assert!(app.name_is_shared(&bob.id) && app.name_is_shared(&impostor.id));
        // A trust change of a known contact is not a warning.
        let mut b2 = bob.clone();
        b2.trust = "trusted".into();
        app.warnings.clear();
        app.handle_net(NetEvent::Contact(b2));
        assert!(app.warnings.is_empty());
        assert_eq!(app.contacts[&bob.id].trust, "trusted");
    }

    #[test]
    fn reconnect_resyncs_but_keeps_unread() {
        let bob = contact('b', "bob");
        let carol = contact('c', "carol");
        let mut app = connected(vec![bob.clone(), carol.clone()]);
        app.handle_net(NetEvent::Entry(msg(
            1,
            &carol,
            false,
            "hey",
            Status::Received,
        )));
        app.handle_net(NetEvent::Down("node stopped".into()));
        assert_eq!(app.conn, Conn::Down("node stopped".into()));
        app.handle_net(NetEvent::Connecting);
        assert_eq!(app.conn, Conn::Connecting);
        app.handle_net(NetEvent::Connected {
            id: "a".repeat(64),
            username: "alice".into(),
        });
        app.handle_net(NetEvent::Contacts(vec![bob.clone(), carol.clone()]));
        // The backlog replays: seen before, so not counted again; what arrived while the
        // client was away is unread.
        app.handle_net(NetEvent::Entry(msg(
            1,
            &carol,
            false,
            "hey",
            Status::Received,
        )));
        app.handle_net(NetEvent::Entry(msg(
            2,
            &carol,
            false,
            "while away",
            Status::Received,
        )));
        app.handle_net(NetEvent::Synced);
        assert_eq!(app.conversations[&carol.id].unread, 2);
        assert_eq!(app.conversations[&carol.id].messages.len(), 2);
    }

    #[test]
    fn the_first_backlog_is_not_unread() {
        let carol = contact('c', "carol");
        let bob = contact('b', "bob");
        let mut app = App::new(0);
        app.handle_net(NetEvent::Connected {
            id: "a".repeat(64),
            username: "alice".into(),
        });
        app.handle_net(NetEvent::Contacts(vec![bob, carol.clone()]));
        app.handle_net(NetEvent::Entry(msg(
            1,
            &carol,
            false,
            "old",
            Status::Received,
        )));
        app.handle_net(NetEvent::Synced);
        assert_eq!(app.conversations[&carol.id].unread, 0);
    }

    #[test]
    fn control_characters_are_not_typed_and_input_is_bounded() {
        let mut app = connected(vec![contact('b', "bob")]);
        app.handle_key(key(KeyCode::Char('\u{1b}')));
        assert!(app.input.is_empty());
        app.paste(&"x".repeat(MAX_INPUT + 10));
        assert_eq!(app.input.len(), MAX_INPUT);
        app.input.clear();
        app.cursor = 0;
        app.paste("a\nb");
        assert_eq!(app.input, "a b");
    }
}
