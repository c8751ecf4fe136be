//! The commands that talk to a running node over its control socket: `contacts`, `send`,
//! `messages`, `status`, `backup` (of the running node) and `discover` (which asks the rendezvous servers itself and needs the
//! node only for `--add`). Each maps to control [`Request`]s; printing is in [`super::render`].

use super::args::{Command, ContactsCommand, GlobalArgs};
use super::render::{
    format_contact, format_entry, format_time, format_value, path_name, print_json, print_line,
};
use crate::config::Config;
use crate::node::control::{
    follow_stream, request, socket_path, Client, ContactView, ControlError, Request, Response,
    CLIENT_TIMEOUT, DISK_FULL, MAX_MESSAGES,
};
use crate::node::history::{format_id, HistoryEntry};
use crate::rendezvous::discover::{Discovery, Found, FoundView, Query, ServerFailure};
use serde::Serialize;
use std::collections::VecDeque;
use std::path::Path;

/// Runs a control command of the CLI (`contacts`, `send`, `messages`, `status`, `discover`) against the
/// node whose data directory `cfg` names, printing human text or (`--json`) JSON on stdout.
pub fn run(cfg: &Config, global: &GlobalArgs, command: Command) -> Result<(), ControlError> {
    let path = socket_path(&cfg.data_dir());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ControlError::Runtime)?;
    match rt.block_on(run_command(cfg, &path, global.json, command)) {
        // `sremp messages --follow | head`: the reader is gone, which is not a failure.
        Err(ControlError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        // `--json`: the refusal with its stable code on stdout too (and the exit status).
        Err(ControlError::DiskFull(msg)) if global.json => {
            println!(
                "{}",
                serde_json::json!({"ok": false, "error": msg, "code": DISK_FULL})
            );
            Err(ControlError::DiskFull(msg))
        }
        other => other,
    }
}

pub(crate) fn missing(what: &str) -> ControlError {
    ControlError::BadResponse(format!("the response has no {what}"))
}

pub(crate) async fn call_ok(path: &Path, req: &Request) -> Result<Response, ControlError> {
    request(path, req).await?.into_result()
}

async fn run_command(
    cfg: &Config,
    path: &Path,
    json: bool,
    command: Command,
) -> Result<(), ControlError> {
    match command {
        Command::Discover { query, all, add } => {
            discover(cfg, path, json, query.as_deref(), all, add).await
        }
        Command::Contacts {
            command:
                ContactsCommand::Add {
                    from_rendezvous: Some(id),
                    ..
                },
        } => {
            let key: crate::identity::IdentityKey = id.parse().map_err(|_| {
                ControlError::BadArgument(format!(
                    "--from-rendezvous needs a 64-hex contact id, not {id:?}"
                ))
            })?;
            let found = discover_peers(cfg, &Query::Id(key)).await?;
            let peer = only_one(&found, &id)?;
            let c = add_found(path, peer).await?;
            if json {
                print_json(&c)
            } else {
                print_line(&format_contact(&c))
            }
        }
        Command::Backup { out, key, .. } => {
            let abs = |p: &Path| {
                std::path::absolute(p)
                    .map_err(|e| ControlError::BadArgument(format!("{}: {e}", p.display())))
            };
            let (out, key) = (abs(&out)?, abs(&key)?);
            let (_, created) = crate::backup::BackupKey::load_or_create(&key)
                .map_err(|e| ControlError::BadArgument(e.to_string()))?;
            let req = Request::Backup {
                out: out.display().to_string(),
                key: key.display().to_string(),
            };
            let summary = call_ok(path, &req)
                .await?
                .backup
                .ok_or_else(|| missing("backup"))?;
            if json {
                print_json(&serde_json::json!({
                    "out": summary.out,
                    "records": summary.records,
                    "bytes": summary.bytes,
                    "key": key.display().to_string(),
                    "key_created": created,
                }))
            } else {
                if created {
                    print_line(&format!(
                        "created key file {} (keep it safe and apart from the backup)",
                        key.display()
                    ))?;
                }
                print_line(&format!(
                    "backup written: {} ({} records, {} bytes)",
                    summary.out, summary.records, summary.bytes
                ))
            }
        }
        Command::Status => {
            let status = call_ok(path, &Request::Status)
                .await?
                .status
                .ok_or_else(|| missing("status"))?;
            if json {
                print_json(&status)
            } else {
                let mut text = String::new();
                format_value(&mut text, None, &status, 0);
                print_line(text.trim_end())
            }
        }
        Command::Contacts { command } => {
            let req = match command {
                ContactsCommand::Add { card, .. } => Request::ContactsAdd {
                    card: card.ok_or_else(|| {
                        ControlError::BadArgument("give a card or --from-rendezvous ID".into())
                    })?,
                },
                ContactsCommand::List { strangers: false } => Request::ContactsList,
                ContactsCommand::List { strangers: true } => Request::StrangersList,
                ContactsCommand::Trust { contact } => Request::ContactsTrust { contact },
                ContactsCommand::Reject { contact } => Request::ContactsReject { contact },
            };
            let resp = call_ok(path, &req).await?;
            if let Some(list) = resp.contacts {
                if json {
                    return print_json(&list);
                }
                if list.is_empty() {
                    return print_line(if matches!(req, Request::StrangersList) {
                        "no strangers"
                    } else {
                        "no contacts"
                    });
                }
                for c in &list {
                    print_line(&format_contact(c))?;
                }
                Ok(())
            } else {
                let c = resp.contact.ok_or_else(|| missing("contact"))?;
                if json {
                    print_json(&c)
                } else {
                    print_line(&format_contact(&c))
                }
            }
        }
        Command::Group { command } => super::group::run(path, json, command).await,
        Command::Send {
            contact,
            text,
            group: Some(group),
            ..
        } => {
            let text = match text {
                None => contact,
                Some(_) => {
                    return Err(ControlError::BadArgument(
                        "with --group give only the text".into(),
                    ))
                }
            };
            super::group::send(path, json, group, text).await
        }
        Command::Messages {
            group: Some(group),
            limit,
            after,
            ..
        } => super::group::messages(path, json, group, limit, after).await,
        Command::Send {
            contact,
            text,
            wait,
            timeout_secs,
            group: None,
        } => {
            let text = text.ok_or_else(|| ControlError::BadArgument("missing the text".into()))?;
            let entry = call_ok(path, &Request::Send { contact, text })
                .await?
                .entry
                .ok_or_else(|| missing("entry"))?;
            if !wait {
                return if json {
                    print_json(&entry)
                } else {
                    print_line(&format_id(entry.id))
                };
            }
            if !json {
                // Scripts read the id from stdout while the wait goes on.
                print_line(&format_id(entry.id))?;
            }
            let timeout_ms = timeout_secs.saturating_mul(1000);
            let waited = call_ok(
                path,
                &Request::WaitDelivered {
                    id: format_id(entry.id),
                    timeout_ms: Some(timeout_ms),
                },
            )
            .await?
            .entry
            .ok_or_else(|| missing("entry"))?;
            if json {
                print_json(&waited)
            } else {
                eprintln!("delivered ({})", path_name(waited.path));
                Ok(())
            }
        }
        Command::Messages {
            follow,
            limit,
            after,
            group: None,
        } => messages(path, json, follow, limit, after).await,
        other => Err(ControlError::BadArgument(format!(
            "not a control command: {other:?}"
        ))),
    }
}

/// `sremp discover --json`: the peers found, the servers that answered and failed, and the
/// contact added with `--add` (README, "JSON output").
#[derive(Debug, Serialize)]
struct DiscoverView {
    peers: Vec<FoundView>,
    answered: Vec<String>,
    errors: Vec<ServerFailure>,
    added: Option<ContactView>,
}

async fn discover_peers(cfg: &Config, query: &Query) -> Result<Discovery, ControlError> {
    let settings =
        crate::rendezvous::client::RegistrarSettings::from_config(&cfg.rendezvous, cfg.data_dir())?;
    let me = crate::identity::UserIdentity::load_file(&cfg.data_dir())
        .ok()
        .map(|u| u.key());
    Ok(crate::rendezvous::discover::discover(&settings, query, me).await?)
}

fn only_one<'a>(d: &'a Discovery, query: &str) -> Result<&'a Found, ControlError> {
    match d.peers.as_slice() {
        [one] => Ok(one),
        [] => Err(ControlError::NotFound(format!(
            "no peer matching {query:?} at the rendezvous servers"
        ))),
        many => Err(ControlError::NotFound(format!(
            "{} peers match {query:?}; give the contact id",
            many.len()
        ))),
    }
}

/// Adds a discovered peer through the running node (TOFU, like a card).
async fn add_found(path: &Path, peer: &Found) -> Result<ContactView, ControlError> {
    let req = Request::ContactsAdd {
        card: peer.card().to_text(),
    };
    call_ok(path, &req)
        .await?
        .contact
        .ok_or_else(|| missing("contact"))
}

/// `sremp discover [--all] [--add] [QUERY]`.
async fn discover(
    cfg: &Config,
    path: &Path,
    json: bool,
    query: Option<&str>,
    all: bool,
    add: bool,
) -> Result<(), ControlError> {
    let q = Query::parse(query, all);
    let found = discover_peers(cfg, &q).await?;
    let added = if add {
        Some(add_found(path, only_one(&found, query.unwrap_or(""))?).await?)
    } else {
        None
    };
    if json {
        return print_json(&DiscoverView {
            peers: found.peers.iter().map(Found::view).collect(),
            answered: found.answered,
            errors: found.errors,
            added,
        });
    }
    for e in &found.errors {
        eprintln!("warning: rendezvous server {}: {}", e.server, e.error);
    }
    if found.peers.is_empty() {
        print_line("no peers found")?;
    }
    for p in &found.peers {
        let state = if p.online {
            "online".to_string()
        } else {
            format!("offline since {}", format_time(p.last_seen.0))
        };
        let ep = p
            .endpoints
            .first()
            .map(|e| e.to_string())
            .unwrap_or_default();
        print_line(&format!(
            "{}  {:<20}  v{:<3} {:<8} {}",
            p.identity.key(),
            p.identity.username(),
            p.identity.version(),
            state,
            ep
        ))?;
    }
    if let Some(c) = added {
        print_line(&format!("added: {}", format_contact(&c)))?;
    }
    Ok(())
}

/// `sremp messages`: history (all, the newest `limit`, or after `after`), then optionally follow.
async fn messages(
    path: &Path,
    json: bool,
    follow: bool,
    limit: Option<usize>,
    after: Option<u64>,
) -> Result<(), ControlError> {
    let mut client = Client::connect(path).await?;
    let keep = limit.unwrap_or(usize::MAX);
    let mut shown: VecDeque<HistoryEntry> = VecDeque::new();
    let mut last = after;
    // Page through the history; each page is bounded and the loop ends at a short page.
    loop {
        let req = Request::Messages {
            after_seq: last,
            limit: Some(MAX_MESSAGES),
        };
        let page = client
            .call(&req, CLIENT_TIMEOUT)
            .await?
            .into_result()?
            .messages
            .ok_or_else(|| missing("messages"))?;
        let short = page.is_empty();
        for e in page {
            last = Some(last.map_or(e.seq, |l| l.max(e.seq)));
            shown.push_back(e);
            if shown.len() > keep {
                shown.pop_front();
            }
        }
        if short {
            break;
        }
    }
    drop(client);
    if json && !follow {
        return print_json(&shown);
    }
    for e in &shown {
        if json {
            print_json(e)?;
        } else {
            print_line(&format_entry(e))?;
        }
    }
    if !follow {
        if shown.is_empty() && !json {
            print_line("no messages")?;
        }
        return Ok(());
    }
    let mut stream = follow_stream(path, Some(last.unwrap_or(0))).await?;
    while let Some(e) = stream.next_entry().await? {
        if json {
            print_json(&e)?;
        } else {
            print_line(&format_entry(&e))?;
        }
    }
    // The stream only ends when the node stops: not a success for a script that follows.
    Err(ControlError::Closed)
}
