//! Rendering for people and scripts: every line the CLI prints on stdout (one JSON value per
//! line with `--json`, README "JSON output"), history entries, contacts, times and the status
//! tree. Writing to a closed stdout is [`ControlError::Output`], which the caller turns into a
//! quiet exit (`sremp messages --follow | head`).

use crate::node::control::{ContactView, ControlError};
use crate::node::history::{format_id, DeliveryPath, Direction, HistoryEntry, Status};
use serde::Serialize;
use std::io::Write as _;

pub(super) fn print_json<T: Serialize>(v: &T) -> Result<(), ControlError> {
    let s = serde_json::to_string(v).map_err(|e| ControlError::BadResponse(e.to_string()))?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{s}")
        .and_then(|()| out.flush())
        .map_err(ControlError::Output)
}

pub(super) fn print_line(s: &str) -> Result<(), ControlError> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{s}")
        .and_then(|()| out.flush())
        .map_err(ControlError::Output)
}

pub(super) fn format_contact(c: &ContactView) -> String {
    format!("{}  {:<20}  {}", c.id, c.username, c.trust)
}

pub(super) fn path_name(p: Option<DeliveryPath>) -> &'static str {
    match p {
        Some(DeliveryPath::Direct) => "direct",
        Some(DeliveryPath::Relay) => "relay",
        Some(DeliveryPath::DirectQuic) => "direct-quic",
        None => "-",
    }
}

fn status_name(s: Status) -> &'static str {
    match s {
        Status::Queued => "queued",
        Status::StoredAtRelay => "stored at relay",
        Status::Delivered => "delivered",
        Status::Received => "received",
        Status::Notice => "notice",
    }
}

pub(super) fn format_entry(e: &HistoryEntry) -> String {
    let who = e.peer_name.clone().unwrap_or_else(|| e.peer.short());
    let arrow = match e.direction {
        Direction::Out => format!("-> {who}"),
        Direction::In => format!("<- {who}"),
    };
    // A group entry names its group (first 8 hex) and, for a control, what it was.
    let arrow = match &e.group {
        Some(g) if g.kind == "message" => {
            // Our copy to the creator: the members it forwards it to, each with `delivered`
            // once its signed receipt came back.
            let far = match &g.forwarded_to {
                Some(far) if !far.is_empty() => {
                    let done = g.delivered_to.as_deref().unwrap_or_default();
                    let each: Vec<String> = far
                        .iter()
                        .map(|f| {
                            let word = if done.contains(f) {
                                "delivered"
                            } else {
                                "forwarded"
                            };
                            format!("{} {word}", f.get(..8).unwrap_or("?"))
                        })
                        .collect();
                    format!(" (+{})", each.join(", "))
                }
                _ => String::new(),
            };
            format!("{arrow} (group {}){far}", g.group.get(..8).unwrap_or("?"))
        }
        Some(g) => format!(
            "{arrow} (group {} {})",
            g.group.get(..8).unwrap_or("?"),
            g.kind
        ),
        None => arrow,
    };
    format!(
        "#{} {} {} {} [{}, {}] {}",
        e.seq,
        format_time(e.recorded_at),
        format_id(e.id),
        arrow,
        status_name(e.status),
        path_name(e.path),
        e.text.replace(['\n', '\r'], " ")
    )
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) for milliseconds since the epoch.
pub(super) fn format_time(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
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
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Human form of a JSON value: `key: value` lines, nested objects indented.
pub(super) fn format_value(
    out: &mut String,
    key: Option<&str>,
    v: &serde_json::Value,
    depth: usize,
) {
    use serde_json::Value;
    let pad = "  ".repeat(depth);
    let label = key.map(|k| format!("{k}: ")).unwrap_or_default();
    match v {
        Value::Object(map) => {
            if key.is_some() {
                out.push_str(&format!("{pad}{}\n", label.trim_end()));
            }
            let d = if key.is_some() { depth + 1 } else { depth };
            if map.is_empty() {
                out.push_str(&format!("{}(none)\n", "  ".repeat(d)));
            }
            for (k, v) in map {
                format_value(out, Some(k), v, d);
            }
        }
        Value::Array(items) if items.iter().all(|i| !i.is_object() && !i.is_array()) => {
            let parts: Vec<String> = items.iter().map(scalar).collect();
            let list = if parts.is_empty() {
                "(none)".to_string()
            } else {
                parts.join(", ")
            };
            out.push_str(&format!("{pad}{label}{list}\n"));
        }
        Value::Array(items) => {
            out.push_str(&format!("{pad}{}\n", label.trim_end()));
            for (i, item) in items.iter().enumerate() {
                format_value(out, Some(&format!("[{i}]")), item, depth + 1);
            }
        }
        other => out.push_str(&format!("{pad}{label}{}\n", scalar(other))),
    }
}

fn scalar(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_format() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00");
        assert_eq!(format_time(951_782_400_000), "2000-02-29 00:00:00");
        assert_eq!(format_time(1_700_000_000_123), "2023-11-14 22:13:20");
    }
}
