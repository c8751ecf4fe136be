//! `sremp send-file --group G PATH`: offers a file to every member of a group through the
//! running node (one transfer per member, docs/FILES.md), then follows them all: one progress
//! bar per member on a terminal, one `TRANSFER` line per change with `--json`, the final line
//! of each otherwise. Exits 0 only when every member has the file.

use super::files::{human_size, line, next_event, out_json, out_line};
use crate::files::State;
use crate::node::control::{Client, ControlError, Request};
use crate::node::file_group::GroupFiles;
use crate::node::files::View;
use std::collections::HashMap;
use std::io::IsTerminal;
use std::path::Path;
use std::time::Duration;

/// `sremp send-file --group G PATH [--no-wait]`.
pub async fn send_file(
    socket: &Path,
    json: bool,
    group: &str,
    file: &Path,
    no_wait: bool,
) -> Result<(), ControlError> {
    let abs = std::path::absolute(file).map_err(ControlError::Output)?;
    let mut c = Client::connect(socket).await?;
    let r = c
        .call(
            &Request::SendFileGroup {
                group: group.to_string(),
                path: abs.display().to_string(),
            },
            Duration::from_secs(3600),
        )
        .await?
        .into_result()?;
    let sent: GroupFiles = r
        .group
        .and_then(|g| serde_json::from_value(g).ok())
        .ok_or_else(|| ControlError::BadResponse("the response has no group transfers".into()))?;
    if no_wait || json {
        // With --json the first line is the whole offer (transfers and skipped members).
        out_json(&sent)?;
        if no_wait {
            return Ok(());
        }
    } else {
        for v in &sent.transfers {
            eprintln!(
                "offered {} ({}) to {}; transfer {}",
                v.name,
                human_size(v.size),
                v.peer_name.as_deref().unwrap_or(&v.peer),
                v.id
            );
        }
        for s in &sent.skipped {
            eprintln!(
                "not sent to {}: {}",
                s.name.as_deref().unwrap_or(&s.member),
                s.reason
            );
        }
    }
    follow(socket, json, &sent).await
}

/// Follows every transfer of `sent` until all are final.
async fn follow(socket: &Path, json: bool, sent: &GroupFiles) -> Result<(), ControlError> {
    let mut c = Client::connect(socket).await?;
    let first = c
        .call(&Request::FilesFollow { id: None }, Duration::from_secs(30))
        .await?
        .into_result()?;
    if first.following != Some(true) {
        return Err(ControlError::BadResponse(
            "files_follow was not acknowledged".into(),
        ));
    }
    let multi = (!json && std::io::stderr().is_terminal()).then(indicatif::MultiProgress::new);
    let style = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    let mut bars = HashMap::new();
    let mut last: HashMap<String, View> = HashMap::new();
    for v in &sent.transfers {
        if let Some(m) = &multi {
            let b = m.add(indicatif::ProgressBar::new(v.size));
            b.set_style(style.clone());
            bars.insert(v.id.clone(), b);
        }
        last.insert(v.id.clone(), v.clone());
    }
    while last.values().any(|v| !v.state.is_final()) {
        let r = next_event(&mut c).await?;
        let Some(v) = r.transfer else { continue };
        if !last.contains_key(&v.id) {
            continue;
        }
        if json {
            out_json(&v)?;
        }
        if let Some(b) = bars.get(&v.id) {
            b.set_position(v.bytes_done);
            b.set_message(format!(
                "{} {} {}",
                v.peer_name.as_deref().unwrap_or(&v.peer),
                v.state.name(),
                v.name
            ));
            if v.state.is_final() {
                b.finish();
            }
        }
        last.insert(v.id.clone(), v);
    }
    let mut failed = Vec::new();
    for t in &sent.transfers {
        let Some(v) = last.get(&t.id) else { continue };
        if !json {
            out_line(&line(v))?;
        }
        if v.state != State::Done {
            failed.push(format!(
                "{} {}{}",
                v.peer_name.as_deref().unwrap_or(&v.peer),
                v.state.name(),
                v.error
                    .as_ref()
                    .map(|e| format!(": {e}"))
                    .unwrap_or_default()
            ));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(ControlError::Refused(format!(
            "not every member has the file: {}",
            failed.join("; ")
        )))
    }
}
