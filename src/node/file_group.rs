//! `sremp send-file --group G PATH`: one file to every member of a group.
//!
//! Flow:
//! 1. The group is looked up; we must be an accepted member of a group that is not closed.
//! 2. The file is checked and hashed once.
//! 3. Every other member in state `accepted` that is our contact (not rejected) gets an
//!    ordinary pairwise transfer of its own (offer, accept, chunks, resume, progress: exactly
//!    what `send-file CONTACT` does), recorded with the group's id in its `group` field.
//!
//! Members that cannot get one are listed in `skipped` with the reason: members that have not
//! accepted (or left, or declined), and members that are not our contacts (a file goes over
//! the pairwise path only; group messages reach such members through the creator, files do
//! not). Nothing here touches the group's sender keys or envelopes.

use super::Node;
use super::files::{hash_source, offer_source, TransferError, View};
use crate::files::FileError;
use crate::identity::Trust;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// `sremp send-file --group G PATH --json` (the `group` of the control response).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct GroupFiles {
    /// Group id (32 hex).
    pub group: String,
    /// One outgoing transfer per member that gets the file.
    pub transfers: Vec<View>,
    /// Members that do not get it, and why.
    pub skipped: Vec<SkippedMember>,
}

/// A member that gets no transfer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SkippedMember {
    /// Contact id (64 hex).
    pub member: String,
    /// Username when known.
    pub name: Option<String>,
    /// Why.
    pub reason: String,
}

impl Node {
    /// Offers the file at `path` to every accepted member of group `g` that is our contact,
    /// one pairwise transfer each. Fails when no member can get it.
    pub async fn send_file_group(
        &self,
        g: &str,
        path: &Path,
    ) -> Result<GroupFiles, TransferError> {
        let view = self.group_show(g)?;
        if view.closed || view.state != "accepted" {
            return Err(FileError::Group(format!(
                "cannot send to group {}: we are {}",
                view.name, view.state
            ))
            .into());
        }
        let src = hash_source(path).await?;
        let mut transfers = Vec::new();
        let mut skipped = Vec::new();
        for m in view.members.iter().filter(|m| !m.me) {
            let skip = |reason: String| SkippedMember {
                member: m.id.clone(),
                name: m.name.clone(),
                reason,
            };
            if m.state != "accepted" {
                skipped.push(skip(format!("member is {}", m.state)));
                continue;
            }
            let c = match self.resolve(&m.id) {
                Ok(c) if c.trust != Trust::Rejected => c,
                Ok(_) => {
                    skipped.push(skip("rejected contact".into()));
                    continue;
                }
                Err(_) => {
                    skipped.push(skip(
                        "not our contact (files go pairwise, not through the creator)".into(),
                    ));
                    continue;
                }
            };
            match offer_source(self, &c, &src, Some(view.id.clone())).await {
                Ok(v) => transfers.push(v),
                Err(e) => skipped.push(skip(e.to_string())),
            }
        }
        if transfers.is_empty() {
            let why: Vec<String> = skipped
                .iter()
                .map(|s| {
                    format!(
                        "{}: {}",
                        s.name.clone().unwrap_or_else(|| s.member.chars().take(16).collect()),
                        s.reason
                    )
                })
                .collect();
            return Err(FileError::Group(format!(
                "no member of {} can get the file ({})",
                view.name,
                why.join("; ")
            ))
            .into());
        }
        tracing::info!(group = %view.id, members = transfers.len(), skipped = skipped.len(), "file offered to a group");
        Ok(GroupFiles {
            group: view.id,
            transfers,
            skipped,
        })
    }
}
