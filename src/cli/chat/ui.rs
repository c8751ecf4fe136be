//! Drawing the chat client ([`draw`]): a pure function of the [`App`] state onto a ratatui
//! frame, so tests render into a `TestBackend` and read the buffer.
//!
//! Layout (80×24 and up; smaller terminals get a one-line "too small" notice):
//! ```text
//!  sremp chat · alice (aaaaaaaa) · connected                                  <- header
//! ┌Contacts──────────────┐┌bob (bbbbbbbb) · unknown · relay───────────────────┐
//! │● bob              2  ││──────────── Tue 14 Nov 2023 ────────────          │
//! │○ carol               ││22:13 bob: hi                            [relay]   │
//! └──────────────────────┘└───────────────────────────────────────────────────┘
//!  status / errors                                                            <- notice
//! ┌Message bob · Tab: next conversation · /help──────────────────────────────┐
//! │> hello_                                                                  │
//! └──────────────────────────────────────────────────────────────────────────┘
//! ```
//! A key-change warning is a red banner over the header and a red pop-up that holds every key
//! until Enter; `/help` and `/id` are pop-ups closed by Esc.
//!
//! Everything a peer or the node wrote (names, texts, details) goes through [`clean`] first:
//! control characters never reach the terminal.

use super::app::{short, App, Conn, Level, Msg, Overlay, Reach};
use crate::node::history::{DeliveryPath, Direction, Status};
use ratatui::layout::{Constraint, Layout, Position, Rect};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Borders, Clear, List, ListItem, Paragraph, Wrap};
use ratatui::Frame;
use unicode_width::{UnicodeWidthChar, UnicodeWidthStr};

/// Smallest usable terminal.
pub const MIN_WIDTH: u16 = 40;
/// Smallest usable terminal.
pub const MIN_HEIGHT: u16 = 10;
/// Width of the contact list (with its border).
const CONTACTS_WIDTH: u16 = 24;

/// The help pop-up's lines.
pub const HELP: &[&str] = &[
    "Enter            send the line to the selected conversation",
    "Tab / Shift-Tab  next / previous conversation",
    "Up / Down        input history        PgUp / PgDn  scroll",
    "Ctrl-C, /quit    leave (the node keeps running)",
    "/add CARD        add a contact from its sremp1: card",
    "/trust [NAME]    mark the contact trusted (default: selected)",
    "/reject [NAME]   mark the contact rejected (no more messages)",
    "/id              show your own card and its QR code",
    "/file PATH       offer a file to the selected contact or group (progress below)",
    "/accept [ID] [DIR]      accept a file offer (default: the only one waiting)",
    "/decline [ID] [REASON]  refuse it (the sender sees the reason)",
    "/group new NAME CONTACT...  create a group and invite the contacts",
    "/group accept|decline [ID]  answer an invitation (default: the only one)",
    "/group invite CONTACT   new group: this one's members + CONTACT (fixed)",
    "/group leave [ID]       leave the selected group",
    "/help            this help       //text  sends \"/text\"",
    "",
    "Contacts: \u{25cf} direct path works  \u{25d0} via relay  \u{25cb} no route yet  # group",
    "          \u{26a0} identity warning this session",
    "Messages: [queued] -> [stored at relay] -> [delivered, direct|relay]",
    "Groups:   [bob delivered, carol at relay]: each member's copy",
];

/// Replaces control characters (escape sequences, newlines, tabs) with spaces.
pub fn clean(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Splits `text` into lines of at most `width` columns (by display width; a character wider
/// than the whole line gets a line of its own).
pub fn wrap(text: &str, width: usize) -> Vec<String> {
    let width = width.max(1);
    let mut lines = Vec::new();
    let mut cur = String::new();
    let mut w = 0;
    for ch in text.chars() {
        let cw = ch.width().unwrap_or(0);
        if w + cw > width && !cur.is_empty() {
            lines.push(std::mem::take(&mut cur));
            w = 0;
        }
        cur.push(ch);
        w += cw;
    }
    if !cur.is_empty() || lines.is_empty() {
        lines.push(cur);
    }
    lines
}

/// Days since the epoch and seconds into the day, local time.
fn local(ms: u64, offset: i64) -> (i64, i64) {
    let secs = i64::try_from(ms / 1000)
        .unwrap_or(i64::MAX / 2)
        .saturating_add(offset);
    (secs.div_euclid(86_400), secs.rem_euclid(86_400))
}

/// `HH:MM` local time.
pub fn clock(ms: u64, offset: i64) -> String {
    let (_, s) = local(ms, offset);
    format!("{:02}:{:02}", s / 3600, s % 3600 / 60)
}

/// `Tue 14 Nov 2023` local date.
pub fn day(ms: u64, offset: i64) -> String {
    let (days, _) = local(ms, offset);
    const WEEK: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let wd = WEEK
        .get(usize::try_from((days + 4).rem_euclid(7)).unwrap_or(0))
        .copied()
        .unwrap_or("");
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
    let mon = MONTHS
        .get(usize::try_from(m - 1).unwrap_or(0))
        .copied()
        .unwrap_or("");
    format!("{wd} {d} {mon} {y}")
}

/// The status tag after a message: `[queued]`, `[stored at relay]`, `[delivered, direct]`,
/// or for a received message the path it came by.
pub fn status_tag(m: &Msg) -> String {
    let path = match m.path {
        Some(DeliveryPath::Direct) => "direct",
        Some(DeliveryPath::Relay) => "relay",
        Some(DeliveryPath::DirectQuic) => "direct-quic",
        None => "",
    };
    let with_path = |s: &str| {
        if path.is_empty() {
            format!("[{s}]")
        } else {
            format!("[{s}, {path}]")
        }
    };
    match m.status {
        Status::Queued => "[queued]".into(),
        Status::StoredAtRelay => "[stored at relay]".into(),
        Status::Delivered => with_path("delivered"),
        Status::Received if path.is_empty() => String::new(),
        Status::Received => format!("[{path}]"),
        Status::Notice => "[notice]".into(),
    }
}

fn status_style(s: Status) -> Style {
    match s {
        Status::Queued => Style::default().fg(Color::Yellow),
        Status::StoredAtRelay => Style::default().fg(Color::Cyan),
        Status::Delivered => Style::default().fg(Color::Green),
        Status::Received | Status::Notice => Style::default().fg(Color::DarkGray),
    }
}

/// Draws the whole client.
pub fn draw(f: &mut Frame, app: &App) {
    let area = f.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let msg = format!("terminal too small: need {MIN_WIDTH}x{MIN_HEIGHT}");
        f.render_widget(Paragraph::new(msg).wrap(Wrap { trim: true }), area);
        return;
    }
    let [header, body, notice, input] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Min(3),
        Constraint::Length(1),
        Constraint::Length(3),
    ])
    .areas(area);
    draw_header(f, app, header);
    let [contacts, conv] =
        Layout::horizontal([Constraint::Length(CONTACTS_WIDTH), Constraint::Min(10)]).areas(body);
    draw_contacts(f, app, contacts);
    draw_conversation(f, app, conv);
    draw_notice(f, app, notice);
    draw_input(f, app, input);
    if let Some(o) = &app.overlay {
        draw_overlay(f, o, area);
    }
    if let Some(w) = app.warnings.first() {
        draw_warning(f, app, w, area);
    }
}

fn draw_header(f: &mut Frame, app: &App, area: Rect) {
    if let Some(w) = app.warnings.first() {
        let text = format!(
            " \u{26a0} IDENTITY WARNING: {} \u{26a0}  (Enter to acknowledge)",
            clean(&w.name)
        );
        let style = Style::default()
            .fg(Color::White)
            .bg(Color::Red)
            .add_modifier(Modifier::BOLD);
        f.render_widget(Paragraph::new(text).style(style), area);
        return;
    }
    let me = match &app.me {
        Some((id, name)) => format!("{} ({})", clean(name), short(id)),
        None => "-".into(),
    };
    let (state, style) = match &app.conn {
        Conn::Up => ("connected".to_string(), Style::default().fg(Color::Green)),
        Conn::Connecting => (
            "connecting to the node...".to_string(),
            Style::default().fg(Color::Yellow),
        ),
        Conn::Down(why) => (
            format!("NODE NOT RUNNING, retrying: {}", clean(why)),
            Style::default()
                .fg(Color::White)
                .bg(Color::Red)
                .add_modifier(Modifier::BOLD),
        ),
    };
    let line = Line::from(vec![
        Span::styled(" sremp chat", Style::default().add_modifier(Modifier::BOLD)),
        Span::raw(format!(" \u{b7} {me} \u{b7} ")),
        Span::styled(state, style),
    ]);
    f.render_widget(Paragraph::new(line), area);
}

fn draw_contacts(f: &mut Frame, app: &App, area: Rect) {
    let order = app.order();
    let inner_w = usize::from(area.width.saturating_sub(2));
    let items: Vec<ListItem> = order
        .iter()
        .map(|id| {
            let (mark, mark_style) = if super::groups::is_group_key(id) {
                ("#", Style::default().fg(Color::Cyan))
            } else if app.flagged.contains(id) {
                (
                    "\u{26a0}",
                    Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
                )
            } else {
                match app.reach(id) {
                    Reach::Direct => ("\u{25cf}", Style::default().fg(Color::Green)),
                    Reach::Relay => ("\u{25d0}", Style::default().fg(Color::Yellow)),
                    Reach::Unknown => ("\u{25cb}", Style::default().fg(Color::DarkGray)),
                }
            };
            let unread = app.conversations.get(id).map(|c| c.unread).unwrap_or(0);
            let count = if unread > 0 {
                format!(" {}", unread.min(999))
            } else {
                String::new()
            };
            let name_w = inner_w.saturating_sub(2 + count.width());
            let mut name = fit(&clean(&app.name_of(id)), name_w);
            if app.name_is_shared(id) {
                name = fit(
                    &format!("{}~{}", clean(&app.name_of(id)), short(id)),
                    name_w,
                );
            }
            let pad = name_w.saturating_sub(name.width());
            let mut style = Style::default();
            if app.selected.as_deref() == Some(id.as_str()) {
                style = style.add_modifier(Modifier::REVERSED);
            }
            if app.contacts.get(id).is_some_and(|c| c.trust == "rejected") {
                style = style
                    .fg(Color::DarkGray)
                    .add_modifier(Modifier::CROSSED_OUT);
            }
            ListItem::new(Line::from(vec![
                Span::styled(mark, mark_style),
                Span::raw(" "),
                Span::styled(format!("{name}{}", " ".repeat(pad)), style),
                Span::styled(
                    count,
                    Style::default()
                        .fg(Color::Magenta)
                        .add_modifier(Modifier::BOLD),
                ),
            ]))
        })
        .collect();
    let title = format!("Contacts ({})", order.len());
    f.render_widget(
        List::new(items).block(Block::default().borders(Borders::ALL).title(title)),
        area,
    );
}

/// Cuts `s` to `width` columns, with an ellipsis when cut.
pub(crate) fn fit(s: &str, width: usize) -> String {
    if s.width() <= width {
        return s.to_string();
    }
    let mut out = String::new();
    let mut w = 0;
    for ch in s.chars() {
        let cw = ch.width().unwrap_or(0);
        if w + cw + 1 > width {
            break;
        }
        out.push(ch);
        w += cw;
    }
    out.push('\u{2026}');
    out
}

/// The conversation's lines at `width` columns, oldest first.
pub fn conversation_lines(app: &App, width: usize) -> Vec<Line<'static>> {
    let mut lines: Vec<Line<'static>> = Vec::new();
    let Some(conv) = app.current() else {
        return lines;
    };
    let me = app
        .me
        .as_ref()
        .map(|(_, n)| clean(n))
        .unwrap_or_else(|| "me".into());
    // One item per line to draw: (time, direction, who, text, tag, tag style).
    let group = app
        .selected
        .as_deref()
        .filter(|k| super::groups::is_group_key(k));
    let items: Vec<(u64, Direction, String, String, String, Style)> = match group {
        Some(key) => {
            let info = app.groups.get(key);
            super::groups::lines(conv)
                .into_iter()
                .map(|l| {
                    let (who, tag, st) = match (l.direction, l.status) {
                        (_, Status::Notice) => {
                            ("*".to_string(), "[notice]".to_string(), Status::Notice)
                        }
                        (Direction::Out, _) => {
                            let least = super::groups::least(&l.copies);
                            (
                                me.clone(),
                                super::groups::copies_tag(info, &l.copies),
                                least,
                            )
                        }
                        (Direction::In, st) => {
                            let who = l
                                .peer_name
                                .clone()
                                .or_else(|| info.map(|g| g.member_name(&l.peer)))
                                .unwrap_or_else(|| short(&l.peer));
                            let m = Msg {
                                seq: l.seq,
                                direction: l.direction,
                                peer: l.peer.clone(),
                                peer_name: None,
                                text: String::new(),
                                at_ms: l.at_ms,
                                status: st,
                                path: l.path,
                                group: None,
                            };
                            (clean(&who), status_tag(&m), st)
                        }
                    };
                    (l.at_ms, l.direction, who, l.text, tag, status_style(st))
                })
                .collect()
        }
        None => conv
            .messages
            .iter()
            .map(|m| {
                let who = match (m.direction, m.status) {
                    (_, Status::Notice) => "*".to_string(),
                    (Direction::Out, _) => me.clone(),
                    (Direction::In, _) => {
                        clean(&m.peer_name.clone().unwrap_or_else(|| app.name_of(&m.peer)))
                    }
                };
                (
                    m.at_ms,
                    m.direction,
                    who,
                    m.text.clone(),
                    status_tag(m),
                    status_style(m.status),
                )
            })
            .collect(),
    };
    let mut last_day = None;
    for (at_ms, direction, who, text, tag, tag_style) in items {
        let d = day(at_ms, app.utc_offset_secs);
        if last_day.as_ref() != Some(&d) {
            let label = format!(" {d} ");
            let side = width.saturating_sub(label.width()) / 2;
            let rule = "\u{2500}".repeat(side);
            lines.push(Line::styled(
                format!("{rule}{label}{rule}"),
                Style::default().fg(Color::DarkGray),
            ));
            last_day = Some(d);
        }
        let who_style = match direction {
            Direction::Out => Style::default()
                .fg(Color::Blue)
                .add_modifier(Modifier::BOLD),
            Direction::In => Style::default()
                .fg(Color::Magenta)
                .add_modifier(Modifier::BOLD),
        };
        let prefix = format!("{} ", clock(at_ms, app.utc_offset_secs));
        let head = format!("{prefix}{who}: ");
        let body = clean(&text);
        let text_w = width.saturating_sub(head.width()).max(8);
        let mut parts = wrap(&body, text_w);
        // The tag goes on the last line if it fits, else on a line of its own.
        let tag_on_own_line = parts
            .last()
            .map(|l| l.width() + 1 + tag.width() > text_w)
            .unwrap_or(false)
            && !tag.is_empty();
        let n = parts.len();
        for (i, part) in parts.drain(..).enumerate() {
            let mut spans = if i == 0 {
                vec![
                    Span::styled(prefix.clone(), Style::default().fg(Color::DarkGray)),
                    Span::styled(format!("{who}: "), who_style),
                ]
            } else {
                vec![Span::raw(" ".repeat(head.width()))]
            };
            spans.push(Span::raw(part));
            if i + 1 == n && !tag_on_own_line && !tag.is_empty() {
                spans.push(Span::raw(" "));
                spans.push(Span::styled(tag.clone(), tag_style));
            }
            lines.push(Line::from(spans));
        }
        if tag_on_own_line {
            lines.push(Line::from(vec![
                Span::raw(" ".repeat(head.width())),
                Span::styled(tag, tag_style),
            ]));
        }
    }
    lines
}

fn draw_conversation(f: &mut Frame, app: &App, area: Rect) {
    let title = match &app.selected {
        Some(key) if super::groups::is_group_key(key) => match app.groups.get(key) {
            Some(g) => {
                let (accepted, all) = g.counts();
                format!(
                    "#{} \u{b7} group \u{b7} {accepted}/{all} accepted \u{b7} {}",
                    clean(&g.name),
                    clean(&g.state)
                )
            }
            None => format!("{} \u{b7} group", clean(&app.name_of(key))),
        },
        Some(id) => {
            let trust = app
                .contacts
                .get(id)
                .map(|c| c.trust.clone())
                .unwrap_or_else(|| "not a contact".into());
            let reach = match app.reach(id) {
                Reach::Direct => "direct",
                Reach::Relay => "via relay",
                Reach::Unknown => "no route yet",
            };
            format!(
                "{} ({}) \u{b7} {} \u{b7} {}",
                clean(&app.name_of(id)),
                short(id),
                trust,
                reach
            )
        }
        None => "No conversation".into(),
    };
    let mut block = Block::default()
        .borders(Borders::ALL)
        .title(fit(&title, usize::from(area.width.saturating_sub(2))));
    if app
        .selected
        .as_ref()
        .is_some_and(|id| app.flagged.contains(id))
    {
        block = block.border_style(Style::default().fg(Color::Red));
    }
    let mut inner = block.inner(area);
    f.render_widget(block, area);
    let width = usize::from(inner.width);
    // File transfers of this conversation under its messages (super::files), when there is
    // room for at least as many message lines.
    let strip = super::files::strip_lines(app, width);
    let strip_h = u16::try_from(strip.len()).unwrap_or(0);
    if strip_h > 0 && inner.height >= strip_h.saturating_mul(2) {
        let [msgs, below] =
            Layout::vertical([Constraint::Min(1), Constraint::Length(strip_h)]).areas(inner);
        f.render_widget(Paragraph::new(strip), below);
        inner = msgs;
    }
    let height = usize::from(inner.height);
    let lines = if app.selected.is_none() {
        vec![
            Line::raw("No contacts yet."),
            Line::raw("Add one with /add sremp1:... (their `sremp id` card)."),
            Line::raw("Show yours with /id. /help lists every command."),
        ]
    } else {
        conversation_lines(app, width)
    };
    let total = lines.len();
    let max_scroll = total.saturating_sub(height);
    let scroll = app.scroll.min(max_scroll);
    let end = total - scroll;
    let start = end.saturating_sub(height);
    let shown: Vec<Line> = lines.into_iter().skip(start).take(end - start).collect();
    f.render_widget(Paragraph::new(shown), inner);
    if scroll > 0 {
        let more = format!(" \u{2193} {scroll} more ");
        let w = u16::try_from(more.width()).unwrap_or(0);
        let r = Rect {
            x: inner.right().saturating_sub(w),
            y: inner.bottom().saturating_sub(1),
            width: w.min(inner.width),
            height: 1,
        };
        f.render_widget(
            Paragraph::new(more).style(Style::default().bg(Color::DarkGray)),
            r,
        );
    }
}

fn draw_notice(f: &mut Frame, app: &App, area: Rect) {
    let (text, style) = match &app.notice {
        Some((Level::Error, s)) => (
            format!(" {}", clean(s)),
            Style::default().fg(Color::Red).add_modifier(Modifier::BOLD),
        ),
        Some((Level::Info, s)) => (format!(" {}", clean(s)), Style::default().fg(Color::Green)),
        None => (String::new(), Style::default()),
    };
    f.render_widget(Paragraph::new(text).style(style), area);
}

fn draw_input(f: &mut Frame, app: &App, area: Rect) {
    let to = app
        .selected
        .as_ref()
        .map(|id| format!("Message {}", clean(&app.name_of(id))))
        .unwrap_or_else(|| "Command".into());
    let title = format!("{to} \u{b7} Tab: next conversation \u{b7} /help");
    let block = Block::default()
        .borders(Borders::ALL)
        .title(fit(&title, usize::from(area.width.saturating_sub(2))));
    let inner = block.inner(area);
    f.render_widget(block, area);
    // Scroll the line horizontally so the cursor stays visible.
    let avail = usize::from(inner.width.saturating_sub(2)).max(1);
    let before: String = app.input.chars().take(app.cursor).collect();
    let before_w = before.width();
    let skip_w = before_w.saturating_sub(avail.saturating_sub(1));
    let mut skipped = 0;
    let mut visible = String::new();
    for ch in app.input.chars() {
        let cw = ch.width().unwrap_or(0);
        if skipped < skip_w {
            skipped += cw;
            continue;
        }
        visible.push(ch);
    }
    let visible = fit_exact(&visible, avail);
    f.render_widget(Paragraph::new(format!("> {visible}")), inner);
    if app.warnings.is_empty() && app.overlay.is_none() {
        let x = inner
            .x
            .saturating_add(2)
            .saturating_add(u16::try_from(before_w - skipped.min(before_w)).unwrap_or(0));
        f.set_cursor_position(Position {
            x: x.min(inner.right().saturating_sub(1)),
            y: inner.y,
        });
    }
}

/// Cuts `s` to at most `width` columns, no ellipsis.
fn fit_exact(s: &str, width: usize) -> String {
    let mut out = String::new();
    let mut w = 0;
    for ch in s.chars() {
        let cw = ch.width().unwrap_or(0);
        if w + cw > width {
            break;
        }
        out.push(ch);
        w += cw;
    }
    out
}

/// A rectangle of at most `w`×`h` centred in `area`.
fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect {
        x: area.x + (area.width - w) / 2,
        y: area.y + (area.height - h) / 2,
        width: w,
        height: h,
    }
}

fn draw_overlay(f: &mut Frame, o: &Overlay, area: Rect) {
    match o {
        Overlay::Help => {
            let lines: Vec<Line> = HELP.iter().map(|l| Line::raw(*l)).collect();
            let r = centered(area, 76, u16::try_from(lines.len() + 2).unwrap_or(u16::MAX));
            f.render_widget(Clear, r);
            f.render_widget(
                Paragraph::new(lines).block(
                    Block::default()
                        .borders(Borders::ALL)
                        .title("Help (Esc to close)"),
                ),
                r,
            );
        }
        Overlay::Card { card, qr } => {
            f.render_widget(Clear, area);
            let mut lines = vec![
                Line::raw("Your contact card (give it to people you want to talk to):"),
                Line::raw(""),
            ];
            // No side borders: a card selected with the mouse copies without box characters.
            let w = usize::from(area.width);
            for part in wrap(&clean(card), w) {
                lines.push(Line::styled(part, Style::default().fg(Color::Cyan)));
            }
            lines.push(Line::raw(""));
            match qr {
                Ok(q) => {
                    let rows: Vec<&str> = q.lines().collect();
                    let qr_w = rows.iter().map(|r| r.width()).max().unwrap_or(0);
                    let fits =
                        qr_w <= w && lines.len() + rows.len() + 2 <= usize::from(area.height);
                    if fits {
                        // Dark modules on a light background, as phones expect.
                        for r in rows {
                            lines.push(Line::styled(
                                r.to_string(),
                                Style::default().fg(Color::Black).bg(Color::White),
                            ));
                        }
                    } else {
                        lines.push(Line::raw(format!(
                            "(the QR code needs a terminal of at least {}x{}: enlarge it to scan)",
                            qr_w + 2,
                            rows.len() + lines.len() + 2
                        )));
                    }
                }
                Err(e) => lines.push(Line::raw(format!("(no QR code: {})", clean(e)))),
            }
            f.render_widget(
                Paragraph::new(lines).block(
                    Block::default()
                        .borders(Borders::TOP | Borders::BOTTOM)
                        .title("Your identity (Esc to close)"),
                ),
                area,
            );
        }
    }
}

fn draw_warning(f: &mut Frame, app: &App, w: &super::app::KeyWarning, area: Rect) {
    let r = centered(area, 70, 14);
    f.render_widget(Clear, r);
    let red = Style::default()
        .fg(Color::White)
        .bg(Color::Red)
        .add_modifier(Modifier::BOLD);
    let mut lines = vec![
        Line::styled("\u{26a0}  IDENTITY KEY WARNING  \u{26a0}", red),
        Line::raw(""),
        Line::raw(format!("Contact: {} ({})", clean(&w.name), short(&w.id))),
        Line::raw(""),
        Line::raw(clean(&w.detail)),
        Line::raw(""),
        Line::raw("Someone may be impersonating this contact. Compare contact ids with them"),
        Line::raw("in person or over another channel before you trust it."),
    ];
    if app.warnings.len() > 1 {
        lines.push(Line::raw(format!(
            "({} more warnings after this one)",
            app.warnings.len() - 1
        )));
    }
    lines.push(Line::styled("Press Enter to acknowledge", red));
    f.render_widget(
        Paragraph::new(lines).wrap(Wrap { trim: false }).block(
            Block::default()
                .borders(Borders::ALL)
                .border_style(Style::default().fg(Color::Red).add_modifier(Modifier::BOLD))
                .title("WARNING"),
        ),
        r,
    );
}

#[cfg(test)]
mod tests {
    use super::super::app::tests::{connected, contact, key, msg};
    use super::super::app::{NetEvent, Presence};
    use super::*;
    use crossterm::event::KeyCode;
    use ratatui::backend::TestBackend;
    use ratatui::Terminal;

    fn render(app: &App, w: u16, h: u16) -> Vec<String> {
        let mut t = match Terminal::new(TestBackend::new(w, h)) {
            Ok(t) => t,
            Err(e) => unreachable!("test backend: {e}"),
        };
        if let Err(e) = t.draw(|f| draw(f, app)) {
            unreachable!("draw: {e}");
        }
        let buf = t.backend().buffer().clone();
        (0..h)
            .map(|y| {
                (0..w)
                    .map(|x| buf[(x, y)].symbol().to_string())
                    .collect::<String>()
            })
            .collect()
    }

    fn screen(lines: &[String]) -> String {
        lines.join("\n")
    }

    #[test]
    fn main_screen_at_80x24() {
        let bob = contact('b', "bob");
        let carol = contact('c', "carol");
        let mut app = connected(vec![bob.clone(), carol.clone()]);
        app.handle_net(NetEvent::Presence(
            [(bob.id.clone(), Presence { direct: true })].into(),
        ));
        let mut m = msg(1, &bob, false, "hi alice", Status::Received);
        m.path = Some(DeliveryPath::Relay);
        app.handle_net(NetEvent::Entry(m));
        let mut out = msg(2, &bob, true, "hello bob", Status::Queued);
        app.handle_net(NetEvent::Entry(out.clone()));
        app.handle_net(NetEvent::Entry(msg(
            3,
            &carol,
            false,
            "psst",
            Status::Received,
        )));
        let s = render(&app, 80, 24);
        let all = screen(&s);
        assert!(
            s[0].contains("sremp chat") && s[0].contains("alice") && s[0].contains("connected"),
            "{all}"
        );
        assert!(all.contains("Contacts (2)"), "{all}");
        // carol (latest activity) first, with one unread; bob direct.
        let carol_row = s.iter().position(|l| l.contains("carol")).unwrap_or(0);
        let bob_row = s
            .iter()
            .position(|l| l.contains("\u{25cf} bob"))
            .unwrap_or(0);
        assert!(carol_row > 0 && bob_row > carol_row, "{all}");
        assert!(
            s[carol_row].contains("1 \u{2502}") || s[carol_row].contains(" 1"),
            "{all}"
        );
        assert!(
            all.contains("bob (bbbbbbbb) \u{b7} unknown \u{b7} direct"),
            "{all}"
        );
        assert!(all.contains("Tue 14 Nov 2023"), "day separator: {all}");
        assert!(all.contains("22:14 bob: hi alice [relay]"), "{all}");
        assert!(all.contains("22:15 alice: hello bob [queued]"), "{all}");
        assert!(all.contains("Message bob"), "{all}");
        // The status updates in place.
        out.status = Status::Delivered;
        out.path = Some(DeliveryPath::Direct);
        app.handle_net(NetEvent::Entry(out));
        let all = screen(&render(&app, 80, 24));
        assert!(all.contains("hello bob [delivered, direct]"), "{all}");
        assert!(!all.contains("[queued]"), "{all}");
    }

    #[test]
    fn group_conversation_with_senders_and_per_member_delivery() {
        use super::super::groups::tests::{gmsg, info};
        let bob = contact('b', "bob");
        let carol = contact('c', "carol");
        let mut app = connected(vec![bob.clone(), carol.clone()]);
        app.handle_net(NetEvent::Groups(vec![info()]));
        let gkey = info().key();
        // bob writes; we answer (one copy each to bob and carol, and one to the creator for
        // dave, who is not our contact); dave (no name: not a contact) writes.
        let mut m = gmsg(1, 'b', false, "hi team", Status::Received, "m1");
        m.peer_name = Some("bob".into());
        m.path = Some(DeliveryPath::Relay);
        app.handle_net(NetEvent::Entry(m));
        let mut to_bob = gmsg(2, 'b', true, "hello all", Status::Queued, "m2");
        app.handle_net(NetEvent::Entry(to_bob.clone()));
        let mut to_carol = gmsg(3, 'c', true, "hello all", Status::StoredAtRelay, "m2");
        if let Some(g) = to_carol.group.as_mut() {
            g.forwarded_to = vec!["d".repeat(64)];
        }
        app.handle_net(NetEvent::Entry(to_carol));
        app.handle_net(NetEvent::Entry(gmsg(
            4,
            'd',
            false,
            "from d",
            Status::Received,
            "m3",
        )));
        // A control we sent is not shown anywhere.
        let mut ctl = gmsg(5, 'b', true, "[group team: accept]", Status::Delivered, "x");
        if let Some(g) = ctl.group.as_mut() {
            g.kind = "accept".into();
            g.message_id = None;
        }
        app.handle_net(NetEvent::Entry(ctl));
        assert!(
            !app.conversations.contains_key(&bob.id),
            "nothing in bob's own conversation"
        );
        // The group is listed beside the contacts, with its unread count.
        let all = screen(&render(&app, 80, 24));
        assert!(all.contains("# #team"), "{all}");
        assert!(all.contains("Contacts (3)"), "{all}");
        while app.selected.as_deref() != Some(gkey.as_str()) {
            app.handle_key(key(KeyCode::Tab));
        }
        let all = screen(&render(&app, 100, 24));
        assert!(
            all.contains("#team \u{b7} group \u{b7} 4/4 accepted"),
            "{all}"
        );
        assert!(all.contains("bob: hi team [relay]"), "{all}");
        assert!(
            all.contains("alice: hello all [bob queued, carol at relay (+dddddddd via carol)]"),
            "one line for both copies: {all}"
        );
        assert!(all.contains("dddddddd: from d"), "{all}");
        assert!(!all.contains("accept]"), "{all}");
        assert!(all.contains("Message #team"), "{all}");
        // bob's copy is delivered: the line updates in place.
        to_bob.status = Status::Delivered;
        to_bob.path = Some(DeliveryPath::Direct);
        app.handle_net(NetEvent::Entry(to_bob));
        let all = screen(&render(&app, 100, 24));
        assert!(all.contains("[bob delivered, carol at relay"), "{all}");
        // Fits 80x24 without panicking, with long names too.
        let mut long = info();
        long.name = "x".repeat(64);
        app.handle_net(NetEvent::Groups(vec![long]));
        let _ = render(&app, 80, 24);
        let _ = render(&app, 40, 10);
    }

    #[test]
    fn day_separators_between_days() {
        let bob = contact('b', "bob");
        let mut app = connected(vec![bob.clone()]);
        let mut a = msg(1, &bob, false, "late", Status::Received);
        a.at_ms = 1_700_009_600_000; // Wed 15 Nov 2023 00:53 UTC
        let mut b = msg(2, &bob, false, "later", Status::Received);
        b.at_ms = a.at_ms + 86_400_000;
        app.handle_net(NetEvent::Entry(a));
        app.handle_net(NetEvent::Entry(b));
        let all = screen(&render(&app, 80, 24));
        assert!(
            all.contains("Wed 15 Nov 2023") && all.contains("Thu 16 Nov 2023"),
            "{all}"
        );
        // An hour west of UTC the first one is still on Tuesday.
        app.utc_offset_secs = -3600;
        let all = screen(&render(&app, 80, 24));
        assert!(
            all.contains("Tue 14 Nov 2023") && all.contains("23:53"),
            "{all}"
        );
    }

    #[test]
    fn node_down_is_shown_in_the_header() {
        let mut app = connected(vec![contact('b', "bob")]);
        app.handle_net(NetEvent::Down(
            "node is not running (no control socket)".into(),
        ));
        let s = render(&app, 80, 24);
        assert!(
            s[0].contains("NODE NOT RUNNING") && s[0].contains("retrying"),
            "{}",
            screen(&s)
        );
        let mut fresh = App::new(0);
        fresh.handle_net(NetEvent::Connecting);
        let s = render(&fresh, 80, 24);
        assert!(s[0].contains("connecting to the node"), "{}", screen(&s));
        assert!(screen(&s).contains("No contacts yet"));
    }

    #[test]
    fn key_warning_covers_the_screen() {
        let bob = contact('b', "bob");
        let mut app = connected(vec![bob.clone()]);
        app.handle_net(NetEvent::KeyConflict {
            id: bob.id.clone(),
            username: Some("bob".into()),
            detail: "bob's node presented a different identity of the same version".into(),
        });
        let s = render(&app, 80, 24);
        let all = screen(&s);
        assert!(s[0].contains("IDENTITY WARNING: bob"), "{all}");
        assert!(all.contains("IDENTITY KEY WARNING"), "{all}");
        assert!(all.contains("Press Enter to acknowledge"), "{all}");
        app.handle_key(key(KeyCode::Enter));
        let s = render(&app, 80, 24);
        let all = screen(&s);
        assert!(!all.contains("IDENTITY KEY WARNING"), "{all}");
        assert!(all.contains("\u{26a0} bob"), "marked in the list: {all}");
    }

    #[test]
    fn help_and_card_overlays() {
        let mut app = connected(vec![contact('b', "bob")]);
        app.overlay = Some(Overlay::Help);
        let all = screen(&render(&app, 80, 24));
        assert!(
            all.contains("/add CARD") && all.contains("/trust") && all.contains("/id"),
            "{all}"
        );
        let code = match crate::identity::UserIdentity::generate(
            "alice",
            crate::identity::Flags::default(),
            crate::time::Timestamp(1),
            &mut rand::rngs::OsRng,
        ) {
            Ok(u) => crate::identity::ContactCard {
                identity: u.identity().clone(),
                endpoints: vec![],
                relays: vec![],
            },
            Err(e) => unreachable!("{e}"),
        };
        let card = code.to_text();
        let qr = code.to_qr().map_err(|e| e.to_string());
        app.handle_net(NetEvent::Card {
            card: card.clone(),
            qr,
        });
        // Small terminal: the card, and a note that the QR code needs more room.
        let all = screen(&render(&app, 80, 24));
        assert!(all.contains("Your contact card"), "{all}");
        assert!(all.contains(&card[..40]), "{all}");
        assert!(all.contains("enlarge it to scan"), "{all}");
        // Large terminal: the QR code itself (half blocks).
        let all = screen(&render(&app, 120, 80));
        assert!(
            all.contains('\u{2580}') || all.contains('\u{2584}'),
            "{all}"
        );
    }

    #[test]
    fn hostile_text_and_resizes_do_not_break_rendering() {
        let bob = contact('b', "b\u{1b}[2Job");
        let mut app = connected(vec![bob.clone()]);
        let long: String = "\u{1b}[31m\u{7}x\u{fe0f}\u{200b}界".repeat(500);
        app.handle_net(NetEvent::Entry(msg(
            1,
            &bob,
            false,
            &long,
            Status::Received,
        )));
        app.input = "界".repeat(300);
        app.cursor = 150;
        for (w, h) in [
            (80, 24),
            (10, 3),
            (40, 10),
            (200, 60),
            (1, 1),
            (0, 0),
            (81, 25),
        ] {
            let s = render(&app, w, h);
            assert!(!screen(&s).contains('\u{1b}'), "escape reached the screen");
        }
        app.scroll = usize::MAX;
        render(&app, 80, 24);
    }

    #[test]
    fn scrolling_shows_older_lines() {
        let bob = contact('b', "bob");
        let mut app = connected(vec![bob.clone()]);
        for i in 1..=40u64 {
            app.handle_net(NetEvent::Entry(msg(
                i,
                &bob,
                false,
                &format!("line {i}"),
                Status::Received,
            )));
        }
        let all = screen(&render(&app, 80, 24));
        assert!(all.contains("line 40") && !all.contains("line 5 "), "{all}");
        app.handle_key(key(KeyCode::PageUp));
        app.handle_key(key(KeyCode::PageUp));
        app.handle_key(key(KeyCode::PageUp));
        let all = screen(&render(&app, 80, 24));
        assert!(all.contains("line 5 ") && !all.contains("line 40"), "{all}");
        assert!(all.contains("more"), "{all}");
    }

    #[test]
    fn wrap_and_clean() {
        assert_eq!(wrap("abcdef", 4), vec!["abcd", "ef"]);
        assert_eq!(wrap("", 4), vec![""]);
        assert_eq!(wrap("界界界", 5), vec!["界界", "界"]);
        assert_eq!(clean("a\u{1b}[2Jb\n"), "a [2Jb ");
        assert_eq!(clock(1_700_000_000_000, 0), "22:13");
        assert_eq!(day(0, 0), "Thu 1 Jan 1970");
    }
}
