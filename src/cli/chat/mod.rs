//! `sremp chat`: an interactive terminal client of the running node (ratatui + crossterm).
//!
//! The client never opens the store: everything goes over the node's control socket
//! ([`crate::node::control`]), so several clients can run at once next to `sremp send` and
//! `sremp messages --follow`.
//!
//! Layout:
//! - [`app`]: the state (conversations, unread counts, contacts, input line and history,
//!   pop-ups, key warnings) and key handling, pure and tested without a terminal;
//! - [`ui`]: rendering of that state, tested with ratatui's `TestBackend`;
//! - [`files`]: `/file`, `/accept`, `/decline` and the transfer lines under a conversation;
//! - [`groups`]: group conversations (the group list, our per-member copies merged into one
//!   line with each member's status);
//! - [`net`]: the async shell over the control socket: one `follow` connection with
//!   `"events":true` (backlog, then every new entry, status change and contact event), one
//!   `files_follow` connection (file transfer progress), a `presence` poll, one connection per
//!   user action, and reconnection when the node stops and comes back;
//! - this module: terminal setup and teardown (also on panic) and the event loop.
//!
//! The loop: key presses (a reader thread) and [`app::NetEvent`]s (the net task) arrive on
//! channels; each goes through the [`app::App`], whose [`app::Action`]s are handed to [`net`];
//! the screen is redrawn after every batch of events.

pub mod app;
pub mod files;
pub mod group_cmd;
pub mod groups;
pub mod net;
pub mod ui;

use crate::config::Config;
use crate::node::control::{socket_path, ControlError};
use app::{Action, App};
use crossterm::event::{self, Event};
use crossterm::terminal;
use ratatui::backend::CrosstermBackend;
use ratatui::Terminal;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// What the loop waits on.
enum Input {
    Term(Event),
    Net(app::NetEvent),
}

/// Restores the terminal when dropped (normal exit, error, or unwinding).
struct TermGuard;

impl Drop for TermGuard {
    fn drop(&mut self) {
        restore_terminal();
    }
}

fn restore_terminal() {
    let _ = terminal::disable_raw_mode();
    let _ = crossterm::execute!(
        std::io::stdout(),
        event::DisableBracketedPaste,
        terminal::LeaveAlternateScreen,
        crossterm::cursor::Show
    );
}

/// The local time's offset from UTC now, in seconds (0 if unknown).
// `tm_gmtoff` is a c_long: i64 on 64-bit targets (a no-op conversion there), i32 elsewhere.
#[allow(clippy::useless_conversion)]
fn utc_offset_secs() -> i64 {
    let now = libc::time_t::try_from(crate::time::Timestamp::now().as_secs()).unwrap_or(0);
    // SAFETY: `tm` is plain integers and one pointer, for which all zeroes is a valid value;
    // localtime_r (which reads the TZ setting itself in glibc and musl) only writes the `tm` we
    // pass, and both pointers are valid for the call.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = unsafe { !libc::localtime_r(&now, &mut tm).is_null() };
    if ok {
        i64::from(tm.tm_gmtoff)
    } else {
        0
    }
}

/// Runs the client until the user leaves (Ctrl-C, `/quit`). Refuses `--json` and a stdin or
/// stdout that is not a terminal (it is interactive; scripts use `send` and `messages`).
pub fn run(cfg: &Config, json: bool) -> Result<(), ControlError> {
    use std::io::IsTerminal;
    if json {
        return Err(ControlError::BadArgument(
            "sremp chat is interactive and has no --json output; scripts use `sremp send` and \
             `sremp messages --follow --json`"
                .into(),
        ));
    }
    if !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal() {
        return Err(ControlError::BadArgument(
            "sremp chat needs a terminal (stdin and stdout)".into(),
        ));
    }
    let path = socket_path(&cfg.data_dir());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ControlError::Runtime)?;

    terminal::enable_raw_mode().map_err(ControlError::Output)?;
    let guard = TermGuard;
    let prev_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore_terminal();
        prev_hook(info);
    }));
    crossterm::execute!(
        std::io::stdout(),
        terminal::EnterAlternateScreen,
        event::EnableBracketedPaste
    )
    .map_err(ControlError::Output)?;
    let mut term =
        Terminal::new(CrosstermBackend::new(std::io::stdout())).map_err(ControlError::Output)?;

    let (tx, mut rx) = mpsc::unbounded_channel::<Input>();
    // Terminal input: a thread polling crossterm, stopped through `stop` when we leave.
    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let tx = tx.clone();
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match event::poll(Duration::from_millis(100)) {
                    Ok(true) => match event::read() {
                        Ok(ev) => {
                            if tx.send(Input::Term(ev)).is_err() {
                                return;
                            }
                        }
                        Err(_) => return,
                    },
                    Ok(false) => {}
                    Err(_) => return,
                }
            }
        })
    };

    let mut app = App::new(utc_offset_secs());
    let result = rt.block_on(async {
        let (net_tx, mut net_rx) = mpsc::unbounded_channel();
        let (act_tx, act_rx) = mpsc::unbounded_channel();
        let net = tokio::spawn(net::run(path, net_tx, act_rx));
        let fwd = {
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(ev) = net_rx.recv().await {
                    if tx.send(Input::Net(ev)).is_err() {
                        return;
                    }
                }
            })
        };
        let out = 'main: loop {
            if let Err(e) = term.draw(|f| ui::draw(f, &app)) {
                break Err(ControlError::Output(e));
            }
            let Some(first) = rx.recv().await else {
                break Ok(());
            };
            // Apply everything already waiting before drawing again (a backlog is one draw).
            let mut batch = vec![first];
            while let Ok(more) = rx.try_recv() {
                batch.push(more);
                if batch.len() >= 4096 {
                    break;
                }
            }
            for input in batch {
                let actions = match input {
                    Input::Net(ev) => {
                        app.handle_net(ev);
                        Vec::new()
                    }
                    Input::Term(Event::Key(k)) => app.handle_key(k),
                    Input::Term(Event::Paste(s)) => {
                        app.paste(&s);
                        Vec::new()
                    }
                    Input::Term(Event::Resize(..)) => {
                        let _ = term.autoresize();
                        Vec::new()
                    }
                    Input::Term(_) => Vec::new(),
                };
                for a in actions {
                    if a == Action::Quit {
                        break 'main Ok(());
                    }
                    let _ = act_tx.send(a);
                }
            }
        };
        net.abort();
        fwd.abort();
        out
    });
    stop.store(true, Ordering::Relaxed);
    let _ = reader.join();
    drop(guard);
    result
}
