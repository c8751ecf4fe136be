//! File transfer in `sremp chat`: `/file PATH` offers a file to the selected contact (in a
//! group conversation: to every member that is our contact, one transfer each, as
//! `sremp send-file --group`),
//! `/accept` and `/decline` answer an incoming offer, and the conversation shows each of its
//! transfers with a progress bar, rate and ETA (docs/FILES.md, "In sremp chat").
//!
//! State only, no terminal and no socket, like [`super::app`]: [`Transfers`] is fed the node's
//! `files_follow` stream ([`super::app::NetEvent::Transfer`]), [`command`] turns the three
//! commands into [`Action`]s, and [`strip_lines`] is what the conversation pane draws under the
//! messages. At most [`MAX_TRANSFERS`] transfers are kept (finished ones go first).

use super::app::{short, Action, App, Conn, Level};
use super::groups;
use super::ui::clean;
use crate::files::{Direction, State};
use crate::node::files::View;
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use std::collections::HashMap;
use unicode_width::UnicodeWidthStr;

/// Transfers kept by the client.
pub const MAX_TRANSFERS: usize = 1000;
/// Transfer lines shown under a conversation at most.
pub const STRIP_LINES: usize = 3;
/// Transfer lines shown under a group conversation at most (one per member's copy).
pub const GROUP_STRIP_LINES: usize = 6;
/// Cells of a progress bar.
const BAR: usize = 12;

/// One transfer as the client knows it.
#[derive(Clone, Debug, PartialEq)]
pub struct Transfer {
    /// What the node last said.
    pub view: View,
    /// It became final while this client watched (shown until the client leaves; transfers
    /// that were already over when the client connected are not).
    pub finished_live: bool,
}

/// Every transfer the node reported, by id.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Transfers {
    by_id: HashMap<String, Transfer>,
}

impl Transfers {
    /// Forgets everything (a reconnection re-reads the list).
    pub fn clear(&mut self) {
        self.by_id.clear();
    }

    /// A transfer by id.
    pub fn get(&self, id: &str) -> Option<&Transfer> {
        self.by_id.get(id)
    }

    /// How many are kept.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// Applies a report; returns the state it had before (`None`: new).
    fn upsert(&mut self, v: View) -> Option<State> {
        let before = self.by_id.get(&v.id).map(|t| t.view.state);
        // A late answer to a request (accept) must not undo a newer report that ended it.
        if before.is_some_and(|s| s.is_final()) && !v.state.is_final() {
            return before;
        }
        let finished_live = self.by_id.get(&v.id).is_some_and(|t| t.finished_live)
            || (v.state.is_final() && before.is_some_and(|s| !s.is_final()));
        if before.is_none() && self.by_id.len() >= MAX_TRANSFERS {
            self.evict();
        }
        let id = v.id.clone();
        self.by_id.insert(
            id,
            Transfer {
                view: v,
                finished_live,
            },
        );
        before
    }

    /// Drops the least recently updated transfer, a final one if there is one.
    fn evict(&mut self) {
        let victim = self
            .by_id
            .values()
            .min_by_key(|t| (!t.view.state.is_final(), t.view.updated_at))
            .map(|t| t.view.id.clone());
        if let Some(id) = victim {
            self.by_id.remove(&id);
        }
    }

    /// The transfers of a conversation to show: unfinished ones and those that finished while
    /// the client watched, newest first, at most `max`. `key` is a contact id (the transfers
    /// with that contact) or a group conversation key (each member's copy of the files sent to
    /// that group).
    pub fn shown(&self, key: &str, max: usize) -> Vec<&Transfer> {
        let group = groups::group_id(key);
        let mut v: Vec<&Transfer> = self
            .by_id
            .values()
            .filter(|t| match group {
                Some(g) => t.view.group.as_deref() == Some(g),
                // A member's copy of a group file shows under the group only.
                None => t.view.peer == key && t.view.group.is_none(),
            })
            .filter(|t| !t.view.state.is_final() || t.finished_live)
            .collect();
        // Unfinished first, then the most recently changed.
        v.sort_by(|a, b| {
            a.view
                .state
                .is_final()
                .cmp(&b.view.state.is_final())
                .then(b.view.updated_at.cmp(&a.view.updated_at))
                .then(a.view.id.cmp(&b.view.id))
        });
        v.truncate(max);
        v
    }

    /// Incoming offers from `peer` waiting for an answer, oldest first.
    pub fn pending(&self, peer: &str) -> Vec<&Transfer> {
        let mut v: Vec<&Transfer> = self
            .by_id
            .values()
            .filter(|t| {
                t.view.peer == peer
                    && t.view.direction == Direction::In
                    && t.view.state == State::Offered
            })
            .collect();
        v.sort_by(|a, b| {
            a.view
                .created_at
                .cmp(&b.view.created_at)
                .then(a.view.id.cmp(&b.view.id))
        });
        v
    }
}

/// Size in B, KiB, MiB, GiB.
pub fn human(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

/// What the status bar says about a report, if anything: a new incoming offer, or a transfer
/// that just ended.
fn notice_for(app: &App, before: Option<State>, v: &View) -> Option<(Level, String)> {
    let who = clean(&v.peer_name.clone().unwrap_or_else(|| app.name_of(&v.peer)));
    let name = clean(&v.name);
    if before == Some(v.state) {
        return None;
    }
    let why = v
        .error
        .as_deref()
        .map(|e| format!(": {}", clean(e)))
        .unwrap_or_default();
    match (v.direction, v.state) {
        (Direction::In, State::Offered) => Some((
            Level::Info,
            format!(
                "{who} offers {name} ({}): /accept or /decline {}",
                human(v.size),
                short(&v.id)
            ),
        )),
        // Already over when we connected: old news.
        (_, s) if s.is_final() && before.is_none() => None,
        (Direction::In, State::Done) => Some((
            Level::Info,
            format!(
                "received {name} from {who}: {}",
                clean(v.path.as_deref().unwrap_or("saved"))
            ),
        )),
        (Direction::Out, State::Done) => Some((Level::Info, format!("{who} has {name}"))),
        (Direction::Out, State::Rejected) => {
            Some((Level::Error, format!("{who} declined {name}{why}")))
        }
        (_, State::Failed) => Some((Level::Error, format!("{name} failed{why}"))),
        (_, State::Cancelled) => Some((Level::Error, format!("{name} was cancelled{why}"))),
        _ => None,
    }
}

/// Applies a `files_follow` report to the client.
pub fn on_transfer(app: &mut App, v: View) {
    let before = app.transfers.upsert(v.clone());
    if let Some((level, text)) = notice_for(app, before, &v) {
        app.notice = Some((level, text));
    }
}

/// The transfer a command argument names: a transfer id (or a prefix of at least 4 hex
/// digits) among `candidates`.
fn by_prefix<'a>(candidates: &[&'a Transfer], word: &str) -> Option<&'a Transfer> {
    if word.len() < 4 || !word.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let word = word.to_ascii_lowercase();
    let mut m = candidates.iter().filter(|t| t.view.id.starts_with(&word));
    match (m.next(), m.next()) {
        (Some(t), None) => Some(t),
        _ => None,
    }
}

/// The offer `/accept` or `/decline` answers, and the rest of the argument: with an id (prefix)
/// as first word, that offer; without, the only one waiting in the selected conversation.
fn offer_and_rest(app: &App, arg: &str) -> Result<(String, String), String> {
    let Some(peer) = app.selected.clone() else {
        return Err("no conversation selected".into());
    };
    let pending = app.transfers.pending(&peer);
    let (first, rest) = match arg.split_once(char::is_whitespace) {
        Some((a, b)) => (a, b.trim()),
        None => (arg, ""),
    };
    if let Some(t) = by_prefix(&pending, first) {
        return Ok((t.view.id.clone(), rest.to_string()));
    }
    match pending.as_slice() {
        [] => Err(format!(
            "{} has no file offer waiting for an answer",
            clean(&app.name_of(&peer))
        )),
        [one] => Ok((one.view.id.clone(), arg.to_string())),
        many => Err(format!(
            "{} offers waiting: name one by id ({})",
            many.len(),
            many.iter()
                .map(|t| format!("{} {}", short(&t.view.id), clean(&t.view.name)))
                .collect::<Vec<_>>()
                .join(", ")
        )),
    }
}

/// Handles `/file`, `/accept` and `/decline`; `None` when `name` is not one of them.
pub fn command(app: &mut App, name: &str, arg: &str) -> Option<Vec<Action>> {
    let refuse = |app: &mut App, e: String| {
        app.notice = Some((Level::Error, e));
        Some(Vec::new())
    };
    if !matches!(name, "file" | "accept" | "decline") {
        return None;
    }
    if app.conn != Conn::Up {
        return refuse(app, "the node is not connected".into());
    }
    match name {
        "file" => {
            let path = unquote(arg);
            if path.is_empty() {
                return refuse(app, "usage: /file PATH".into());
            }
            let Some(to) = app.selected.clone() else {
                return refuse(app, "no conversation selected".into());
            };
            let what = if groups::is_group_key(&to) {
                "every member of"
            } else {
                ""
            };
            app.notice = Some((
                Level::Info,
                format!(
                    "offering {} to {what}{}{}...",
                    clean(&path),
                    if what.is_empty() { "" } else { " " },
                    clean(&app.name_of(&to))
                ),
            ));
            match groups::group_id(&to) {
                Some(group) => Some(vec![Action::SendFileGroup {
                    group: group.to_string(),
                    path,
                }]),
                None => Some(vec![Action::SendFile { to, path }]),
            }
        }
        "accept" => match offer_and_rest(app, arg) {
            Ok((id, dir)) => {
                let dir = unquote(&dir);
                Some(vec![Action::AcceptFile {
                    id,
                    dir: (!dir.is_empty()).then_some(dir),
                }])
            }
            Err(e) => refuse(app, e),
        },
        _ => match offer_and_rest(app, arg) {
            Ok((id, reason)) => Some(vec![Action::DeclineFile {
                id,
                reason: (!reason.is_empty()).then_some(reason),
            }]),
            Err(e) => refuse(app, e),
        },
    }
}

/// A path typed with surrounding quotes (a pasted path with spaces) without them.
fn unquote(s: &str) -> String {
    let s = s.trim();
    for q in ['"', '\''] {
        if let Some(inner) = s.strip_prefix(q).and_then(|r| r.strip_suffix(q)) {
            return inner.to_string();
        }
    }
    s.to_string()
}

/// The path `/file` typed, as the node needs it: `~/` is the home directory, a relative path
/// is relative to the directory `sremp chat` runs in.
pub fn absolute(typed: &str) -> Result<std::path::PathBuf, String> {
    let p = match typed.strip_prefix("~/") {
        Some(rest) => match std::env::var_os("HOME") {
            Some(home) => std::path::PathBuf::from(home).join(rest),
            None => return Err("HOME is not set: give the whole path".into()),
        },
        None => std::path::PathBuf::from(typed),
    };
    std::path::absolute(&p).map_err(|e| format!("{}: {e}", p.display()))
}

/// A text progress bar of `BAR` cells.
pub fn bar(percent: f64) -> String {
    let p = if percent.is_finite() {
        percent.clamp(0.0, 100.0)
    } else {
        0.0
    };
    // In 0..=BAR by the clamp above.
    let full = ((p / 100.0) * BAR as f64).round() as usize;
    format!(
        "[{}{}]",
        "\u{2588}".repeat(full.min(BAR)),
        "\u{2591}".repeat(BAR.saturating_sub(full))
    )
}

/// One line for a transfer (plain text; [`strip_lines`] styles it). Only a waiting incoming
/// offer shows its id (first, so a narrow pane keeps it): it is what `/accept ID` names.
pub fn describe(t: &Transfer) -> String {
    let v = &t.view;
    let arrow = match v.direction {
        Direction::Out => "\u{2191}",
        Direction::In => "\u{2193}",
    };
    let name = clean(&v.name);
    let id = short(&v.id);
    match v.state {
        State::Offered if v.direction == Direction::In => format!(
            "{arrow} {id} {name} ({}) offered: /accept or /decline",
            human(v.size)
        ),
        State::Offered => format!(
            "{arrow} {name} ({}) offered, waiting for an answer",
            human(v.size)
        ),
        State::Sending | State::Receiving | State::Verifying => {
            let rate = if v.rate > 0.0 && v.rate.is_finite() {
                // Whole bytes per second are plenty here.
                format!("  {}/s", human(v.rate as u64))
            } else {
                String::new()
            };
            let eta = match v.eta_secs {
                Some(s) if v.state != State::Verifying => format!("  ETA {}", eta(s)),
                _ => String::new(),
            };
            let waiting = v
                .error
                .as_deref()
                .map(|e| format!("  ({})", clean(e)))
                .unwrap_or_default();
            format!(
                "{arrow} {name} {} {:>3.0}%  {}/{}{rate}{eta}  {}{waiting}",
                bar(v.percent),
                v.percent.clamp(0.0, 100.0),
                human(v.bytes_done),
                human(v.size),
                v.state.name()
            )
        }
        State::Done => format!("{arrow} {name} ({}) done", human(v.size)),
        s => {
            let why = v
                .error
                .as_deref()
                .map(|e| format!(": {}", clean(e)))
                .unwrap_or_default();
            format!("{arrow} {name} {}{why}", s.name())
        }
    }
}

/// `1h02m`, `3m05s`, `42s`.
fn eta(s: u64) -> String {
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// The transfer lines under the selected conversation (at most [`STRIP_LINES`]; in a group
/// conversation one per member's copy, named, at most [`GROUP_STRIP_LINES`]), each cut to
/// `width` columns.
pub fn strip_lines(app: &App, width: usize) -> Vec<Line<'static>> {
    let Some(peer) = app.selected.as_deref() else {
        return Vec::new();
    };
    let group = groups::is_group_key(peer);
    let max = if group {
        GROUP_STRIP_LINES
    } else {
        STRIP_LINES
    };
    app.transfers
        .shown(peer, max)
        .into_iter()
        .map(|t| {
            let style = match t.view.state {
                State::Offered if t.view.direction == Direction::In => Style::default()
                    .fg(Color::Yellow)
                    .add_modifier(Modifier::BOLD),
                State::Done => Style::default().fg(Color::Green),
                State::Failed | State::Rejected | State::Cancelled => {
                    Style::default().fg(Color::Red)
                }
                _ => Style::default().fg(Color::Cyan),
            };
            let mut text = describe(t);
            if group {
                // One line per member's copy: say whose.
                let who = t
                    .view
                    .peer_name
                    .clone()
                    .unwrap_or_else(|| app.name_of(&t.view.peer));
                text = format!("{}: {text}", clean(&who));
            }
            if text.width() > width {
                text = super::ui::fit(&text, width);
            }
            Line::from(Span::styled(text, style))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::app::tests::{connected, contact, key};
    use super::super::app::NetEvent;
    use super::*;
    use crossterm::event::KeyCode;

    fn typed(app: &mut App, s: &str) -> Vec<Action> {
        for ch in s.chars() {
            app.handle_key(key(KeyCode::Char(ch)));
        }
        app.handle_key(key(KeyCode::Enter))
    }

    pub(crate) fn view(id_digit: char, peer: char, dir: Direction, state: State) -> View {
        View {
            id: std::iter::repeat_n(id_digit, 32).collect(),
            direction: dir,
            peer: std::iter::repeat_n(peer, 64).collect(),
            peer_name: None,
            name: "report.pdf".into(),
            size: 20 * 1024 * 1024,
            sha256: "0".repeat(64),
            state,
            chunks_done: 0,
            chunks_total: 160,
            bytes_done: 0,
            percent: 0.0,
            rate: 0.0,
            eta_secs: None,
            chunks_sent: 0,
            duplicates: 0,
            refused: 0,
            path: None,
            dir: None,
            error: None,
            via: None,
            group: None,
            created_at: 1_700_000_000_000,
            updated_at: 1_700_000_000_000,
        }
    }

    #[test]
    fn file_command_in_a_group_offers_to_the_group_and_shows_each_members_copy() {
        use crate::cli::chat::groups::tests::{gid, info};
        let bob = contact('b', "bob");
        let carol = contact('c', "carol");
        let mut app = connected(vec![bob.clone(), carol.clone()]);
        app.handle_net(NetEvent::Groups(vec![info()]));
        let gkey = info().key();
        for _ in 0..8 {
            if app.selected.as_deref() == Some(gkey.as_str()) {
                break;
            }
            app.handle_key(key(KeyCode::Tab));
        }
        assert_eq!(app.selected.as_deref(), Some(gkey.as_str()));
        assert_eq!(
            typed(&mut app, "/file minutes.pdf"),
            vec![Action::SendFileGroup {
                group: gid(),
                path: "minutes.pdf".into()
            }]
        );
        assert!(
            matches!(app.notice, Some((Level::Info, ref s)) if s.contains("every member of #team")),
            "{:?}",
            app.notice
        );
        // The node's answer: one copy per member, tagged with the group.
        let mut to_bob = view('1', 'b', Direction::Out, State::Done);
        to_bob.group = Some(gid());
        let mut to_carol = view('2', 'c', Direction::Out, State::Offered);
        to_carol.group = Some(gid());
        // A transfer with bob outside the group stays in bob's conversation only.
        let alone = view('3', 'b', Direction::Out, State::Offered);
        app.handle_net(NetEvent::Transfer(Box::new(to_carol.clone())));
        app.handle_net(NetEvent::Transfer(Box::new(alone)));
        let mut sending = to_bob.clone();
        sending.state = State::Sending;
        app.handle_net(NetEvent::Transfer(Box::new(sending)));
        app.handle_net(NetEvent::Transfer(Box::new(to_bob)));
        let lines: Vec<String> = strip_lines(&app, 100)
            .iter()
            .map(|l| l.spans.iter().map(|s| s.content.to_string()).collect())
            .collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("bob: ") && l.ends_with("done")),
            "{lines:?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("carol: ") && l.contains("waiting for an answer")),
            "{lines:?}"
        );
        // In bob's own conversation: only the transfer that is not the group's.
        while app.selected.as_deref() != Some(bob.id.as_str()) {
            app.handle_key(key(KeyCode::Tab));
        }
        let lines = strip_lines(&app, 100);
        assert_eq!(lines.len(), 1);
    }

    #[test]
    fn file_command_offers_to_the_selected_contact() {
        let bob = contact('b', "bob");
        let mut app = connected(vec![bob.clone()]);
        assert_eq!(
            typed(&mut app, "/file ~/report.pdf"),
            vec![Action::SendFile {
                to: bob.id.clone(),
                path: "~/report.pdf".into()
            }]
        );
        // Quotes around a path with spaces go.
        assert_eq!(
            typed(&mut app, "/file \"my report.pdf\""),
            vec![Action::SendFile {
                to: bob.id,
                path: "my report.pdf".into()
            }]
        );
        assert!(typed(&mut app, "/file").is_empty());
        assert!(matches!(app.notice, Some((Level::Error, ref s)) if s.contains("usage")));
        app.handle_net(NetEvent::Down("node stopped".into()));
        assert!(typed(&mut app, "/file x").is_empty());
        assert!(matches!(app.notice, Some((Level::Error, ref s)) if s.contains("not connected")));
    }

    #[test]
    fn an_incoming_offer_is_announced_shown_and_accepted() {
        let bob = contact('b', "bob");
        let mut app = connected(vec![bob.clone()]);
        let mut offer = view('1', 'b', Direction::In, State::Offered);
        offer.peer_name = Some("bob".into());
        app.handle_net(NetEvent::Transfer(Box::new(offer.clone())));
        assert!(
            matches!(app.notice, Some((Level::Info, ref s)) if s.contains("bob offers report.pdf (20.00 MiB)") && s.contains("/accept")),
            "{:?}",
            app.notice
        );
        let lines = strip_lines(&app, 80);
        assert_eq!(lines.len(), 1);
        let text: String = lines[0].spans.iter().map(|s| s.content.as_ref()).collect();
        assert!(
            text.contains("report.pdf") && text.contains("/accept"),
            "{text}"
        );
        // `/accept` alone takes the only waiting offer; a directory may follow.
        assert_eq!(
            typed(&mut app, "/accept"),
            vec![Action::AcceptFile {
                id: offer.id.clone(),
                dir: None
            }]
        );
        assert_eq!(
            typed(&mut app, "/accept /tmp/in"),
            vec![Action::AcceptFile {
                id: offer.id.clone(),
                dir: Some("/tmp/in".into())
            }]
        );
        // Progress then completion.
        let mut rx = offer.clone();
        rx.state = State::Receiving;
        rx.percent = 50.0;
        rx.bytes_done = 10 * 1024 * 1024;
        rx.rate = 2_000_000.0;
        rx.eta_secs = Some(5);
        app.handle_net(NetEvent::Transfer(Box::new(rx)));
        let text: String = strip_lines(&app, 100)[0]
            .spans
            .iter()
            .map(|s| s.content.as_ref())
            .collect();
        assert!(
            text.contains(" 50%")
                && text.contains("10.00 MiB/20.00 MiB")
                && text.contains("ETA 5s")
                && text.contains("receiving"),
            "{text}"
        );
        let mut done = offer.clone();
        done.state = State::Done;
        done.path = Some("/home/a/Downloads/report.pdf".into());
        app.handle_net(NetEvent::Transfer(Box::new(done)));
        assert!(
            matches!(app.notice, Some((Level::Info, ref s)) if s.contains("/home/a/Downloads/report.pdf")),
            "{:?}",
            app.notice
        );
        let text: String = strip_lines(&app, 100)[0]
            .spans
            .iter()
            .map(|s| s.content.as_ref())
            .collect();
        assert!(text.contains("done"), "{text}");
        // Nothing is waiting any more.
        assert!(typed(&mut app, "/accept").is_empty());
        assert!(matches!(app.notice, Some((Level::Error, ref s)) if s.contains("no file offer")));
    }

    #[test]
    fn decline_with_a_reason_and_offers_named_by_id() {
        let bob = contact('b', "bob");
        let mut app = connected(vec![bob]);
        let one = view('1', 'b', Direction::In, State::Offered);
        let mut two = view('2', 'b', Direction::In, State::Offered);
        two.created_at += 1;
        app.handle_net(NetEvent::Transfer(Box::new(one.clone())));
        app.handle_net(NetEvent::Transfer(Box::new(two.clone())));
        // Two waiting: a bare command is ambiguous.
        assert!(typed(&mut app, "/decline").is_empty());
        assert!(matches!(app.notice, Some((Level::Error, ref s)) if s.contains("2 offers")));
        assert_eq!(
            typed(&mut app, "/decline 2222 too big for me"),
            vec![Action::DeclineFile {
                id: two.id.clone(),
                reason: Some("too big for me".into())
            }]
        );
        assert_eq!(
            typed(&mut app, "/accept 1111"),
            vec![Action::AcceptFile {
                id: one.id.clone(),
                dir: None
            }]
        );
    }

    #[test]
    fn transfers_of_another_contact_and_old_ones_are_not_shown() {
        let bob = contact('b', "bob");
        let carol = contact('c', "carol");
        let mut app = connected(vec![bob.clone(), carol]);
        assert_eq!(app.selected.as_deref(), Some(bob.id.as_str()));
        // Carol's offer is announced but not under bob's conversation, nor answerable there.
        app.handle_net(NetEvent::Transfer(Box::new(view(
            '3',
            'c',
            Direction::In,
            State::Offered,
        ))));
        assert!(strip_lines(&app, 80).is_empty());
        assert!(typed(&mut app, "/accept").is_empty());
        // Already over when the client connected: kept quiet.
        app.notice = None;
        app.handle_net(NetEvent::Transfer(Box::new(view(
            '4',
            'b',
            Direction::Out,
            State::Done,
        ))));
        assert!(app.notice.is_none());
        assert!(strip_lines(&app, 80).is_empty());
        // An outgoing one that ends while watched stays shown, with the reason.
        let mut out = view('5', 'b', Direction::Out, State::Sending);
        app.handle_net(NetEvent::Transfer(Box::new(out.clone())));
        out.state = State::Rejected;
        out.error = Some("no thanks".into());
        app.handle_net(NetEvent::Transfer(Box::new(out)));
        assert!(matches!(app.notice, Some((Level::Error, ref s)) if s.contains("no thanks")));
        let text: String = strip_lines(&app, 80)[0]
            .spans
            .iter()
            .map(|s| s.content.as_ref())
            .collect();
        assert!(text.contains("rejected: no thanks"), "{text}");
    }

    #[test]
    fn hostile_reports_are_bounded_and_cleaned() {
        let mut app = connected(vec![contact('b', "bob")]);
        for i in 0..(MAX_TRANSFERS + 50) {
            let mut v = view('0', 'b', Direction::In, State::Offered);
            v.id = format!("{i:032x}");
            v.name = "evil\u{1b}[2J\nname".into();
            v.percent = f64::NAN;
            v.rate = f64::INFINITY;
            app.handle_net(NetEvent::Transfer(Box::new(v)));
        }
        assert_eq!(app.transfers.len(), MAX_TRANSFERS);
        for l in strip_lines(&app, 30) {
            let text: String = l.spans.iter().map(|s| s.content.as_ref()).collect();
            assert!(!text.chars().any(char::is_control), "{text:?}");
            assert!(text.width() <= 30, "{text:?}");
        }
        assert_eq!(bar(f64::NAN), bar(0.0));
        assert_eq!(bar(250.0), bar(100.0));
    }

    fn render(app: &App, w: u16, h: u16) -> Vec<String> {
        use ratatui::backend::TestBackend;
        let mut t = ratatui::Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| super::super::ui::draw(f, app)).unwrap();
        let buf = t.backend().buffer().clone();
        (0..h)
            .map(|y| {
                (0..w)
                    .map(|x| buf[(x, y)].symbol().to_string())
                    .collect::<String>()
            })
            .collect()
    }

    #[test]
    fn the_conversation_pane_shows_transfers_under_the_messages_at_80x24() {
        use super::super::app::tests::msg;
        use crate::node::history::Status;
        let bob = contact('b', "bob");
        let mut app = connected(vec![bob.clone()]);
        app.handle_net(NetEvent::Entry(msg(
            1,
            &bob,
            false,
            "sending you the report",
            Status::Received,
        )));
        let mut v = view('7', 'b', Direction::In, State::Receiving);
        v.percent = 25.0;
        v.bytes_done = 5 * 1024 * 1024;
        app.handle_net(NetEvent::Transfer(Box::new(v)));
        let lines = render(&app, 80, 24);
        let msg_row = lines
            .iter()
            .position(|l| l.contains("sending you the report"))
            .unwrap_or_else(|| panic!("{}", lines.join("\n")));
        let strip_row = lines
            .iter()
            .position(|l| l.contains("\u{2193} report.pdf [\u{2588}\u{2588}\u{2588}\u{2591}"))
            .unwrap_or_else(|| panic!("{}", lines.join("\n")));
        assert!(strip_row > msg_row, "{}", lines.join("\n"));
        // The last line inside the conversation's border (the notice and input follow).
        assert!(
            lines[strip_row + 1].contains('\u{2518}'),
            "{}",
            lines.join("\n")
        );
        assert!(lines[strip_row].contains(" 25%"), "{}", lines[strip_row]);
        // The help lists the commands and still fits.
        app.handle_key(key(KeyCode::Char('/')));
        for ch in "help".chars() {
            app.handle_key(key(KeyCode::Char(ch)));
        }
        app.handle_key(key(KeyCode::Enter));
        let help = render(&app, 80, 24).join("\n");
        assert!(
            help.contains("/file PATH") && help.contains("/decline [ID] [REASON]"),
            "{help}"
        );
        // Tiny terminals: no panic, and no strip crowding out the messages.
        for (w, h) in [(40, 10), (41, 11), (80, 12)] {
            render(&app, w, h);
        }
    }

    #[test]
    fn relative_and_home_paths_become_absolute() {
        let cwd = std::env::current_dir().unwrap();
        assert_eq!(absolute("x.bin").unwrap(), cwd.join("x.bin"));
        assert_eq!(
            absolute("/tmp/x").unwrap(),
            std::path::PathBuf::from("/tmp/x")
        );
        if let Some(home) = std::env::var_os("HOME") {
            assert_eq!(
                absolute("~/x").unwrap(),
                std::path::PathBuf::from(home).join("x")
            );
        }
    }
}
