//! The CLI side of file transfer: `sremp send-file` (with a progress bar or JSON progress
//! lines) and `sremp files [list|accept|reject]`, all through the control socket
//! (docs/FILES.md).

use crate::cli::FilesCommand;
use crate::config::Config;
use crate::files::{Direction, State};
use crate::node::control::{socket_path, Client, ControlError, Request, Response};
use crate::node::files::View;
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;

const CALL: Duration = Duration::from_secs(30);

/// Runs `f` with the node's control socket path on a small runtime.
pub fn run<F, Fut>(cfg: &Config, f: F) -> Result<(), ControlError>
where
    F: FnOnce(PathBuf) -> Fut,
    Fut: Future<Output = Result<(), ControlError>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ControlError::Runtime)?;
    match rt.block_on(f(socket_path(&cfg.data_dir()))) {
        // `sremp files | head`: the reader is gone, which is not a failure.
        Err(ControlError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other,
    }
}

pub(super) fn out_json<T: serde::Serialize>(v: &T) -> Result<(), ControlError> {
    let s = serde_json::to_string(v).map_err(|e| ControlError::BadResponse(e.to_string()))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{s}")
        .and_then(|()| out.flush())
        .map_err(ControlError::Output)
}

pub(super) fn out_line(s: &str) -> Result<(), ControlError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{s}")
        .and_then(|()| out.flush())
        .map_err(ControlError::Output)
}

/// The next event of a followed transfer; the node going away is a refusal the user can read.
pub(super) async fn next_event(c: &mut Client) -> Result<Response, ControlError> {
    match c.next().await {
        Ok(r) => r.into_result(),
        Err(ControlError::Closed) => Err(ControlError::Refused("the node stopped".into())),
        Err(e) => Err(e),
    }
}

fn transfer(r: Response) -> Result<View, ControlError> {
    r.into_result()?
        .transfer
        .ok_or_else(|| ControlError::BadResponse("the response has no transfer".into()))
}

pub(super) fn human_size(n: u64) -> String {
    indicatif::HumanBytes(n).to_string()
}

/// One table line.
pub fn line(v: &View) -> String {
    let dir = match v.direction {
        Direction::Out => "to",
        Direction::In => "from",
    };
    let who = v
        .peer_name
        .clone()
        .unwrap_or_else(|| v.peer.chars().take(16).collect());
    let mut s = format!(
        "{}  {:<9} {:>5.1}%  {} {:<12} {} ({})",
        v.id,
        v.state.name(),
        v.percent,
        dir,
        who,
        v.name,
        human_size(v.size)
    );
    if let Some(p) = &v.path {
        if v.direction == Direction::In {
            s.push_str(&format!(" -> {p}"));
        }
    }
    if let Some(e) = &v.error {
        s.push_str(&format!("  [{e}]"));
    }
    s
}

/// `sremp send-file CONTACT PATH [--no-wait]`.
pub async fn send_file(
    socket: &Path,
    json: bool,
    contact: &str,
    file: &Path,
    no_wait: bool,
) -> Result<(), ControlError> {
    let abs = std::path::absolute(file).map_err(ControlError::Output)?;
    let mut c = Client::connect(socket).await?;
    let v = transfer(
        c.call(
            &Request::SendFile {
                contact: contact.to_string(),
                path: abs.display().to_string(),
            },
            Duration::from_secs(3600),
        )
        .await?,
    )?;
    if no_wait {
        return if json { out_json(&v) } else { out_line(&v.id) };
    }
    if !json {
        eprintln!(
            "offered {} ({}) to {}; transfer {} — waiting for the recipient",
            v.name,
            human_size(v.size),
            v.peer_name.as_deref().unwrap_or(&v.peer),
            v.id
        );
    }
    follow(socket, json, &v.id).await
}

/// Follows one transfer until it is final; exit status non-zero unless it is `done`.
async fn follow(socket: &Path, json: bool, id: &str) -> Result<(), ControlError> {
    let mut c = Client::connect(socket).await?;
    let first = c
        .call(
            &Request::FilesFollow {
                id: Some(id.to_string()),
            },
            CALL,
        )
        .await?
        .into_result()?;
    if first.following != Some(true) {
        return Err(ControlError::BadResponse(
            "files_follow was not acknowledged".into(),
        ));
    }
    let bar = (!json && std::io::stderr().is_terminal()).then(|| {
        let b = indicatif::ProgressBar::new(0);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        b
    });
    let v = loop {
        let r = next_event(&mut c).await?;
        let Some(v) = r.transfer else { continue };
        if json {
            out_json(&v)?;
        } else if let Some(b) = &bar {
            b.set_length(v.size);
            b.set_position(v.bytes_done);
            b.set_message(format!("{} {}", v.state.name(), v.name));
        }
        if v.state.is_final() {
            break v;
        }
    };
    if let Some(b) = &bar {
        b.finish();
    }
    if !json {
        out_line(&line(&v))?;
    }
    match v.state {
        State::Done => Ok(()),
        s => Err(ControlError::Refused(format!(
            "transfer {} {}{}",
            v.id,
            s.name(),
            v.error.map(|e| format!(": {e}")).unwrap_or_default()
        ))),
    }
}

/// `sremp files [list|accept|reject]`.
pub async fn files(
    socket: &Path,
    json: bool,
    cmd: Option<FilesCommand>,
) -> Result<(), ControlError> {
    let mut c = Client::connect(socket).await?;
    match cmd.unwrap_or(FilesCommand::List) {
        FilesCommand::List => {
            let all = c
                .call(&Request::Files, CALL)
                .await?
                .into_result()?
                .transfers
                .unwrap_or_default();
            if json {
                return out_json(&all);
            }
            if all.is_empty() {
                return out_line("no file transfers");
            }
            for v in &all {
                out_line(&line(v))?;
            }
            Ok(())
        }
        FilesCommand::Accept { id, to } => {
            let to = match to {
                Some(d) => Some(
                    std::path::absolute(d)
                        .map_err(ControlError::Output)?
                        .display()
                        .to_string(),
                ),
                None => None,
            };
            let v = transfer(c.call(&Request::FilesAccept { id, to }, CALL).await?)?;
            if json {
                out_json(&v)
            } else {
                out_line(&line(&v))
            }
        }
        FilesCommand::Reject { id, reason } => {
            let v = transfer(c.call(&Request::FilesReject { id, reason }, CALL).await?)?;
            if json {
                out_json(&v)
            } else {
                out_line(&line(&v))
            }
        }
    }
}
