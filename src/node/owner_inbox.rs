//! One durable point on the receiving node: messages that arrive at the integrated relay for
//! this node are recorded before the relay acknowledges them (see [`crate::relay::owner`]).
//!
//! The integrated relay hands over the `STORE_MESSAGE`s of one connection that it checked and
//! received together (all from one sender). For a sender that is a contact not marked
//! Rejected, under that contact's ratchet lock and on the blocking pool, each message is
//! verified and decrypted in order and its ratchet change, de-duplication entries and history
//! entry are applied as one atomic batch; then **one** flush makes all of them durable, and
//! only then does the relay answer `STORE_RESPONSE` and forward our signed delivery
//! confirmation. A copy we already recorded (a duplicate) is confirmed again.
//!
//! Everything else goes back to the relay as [`Verdict::Store`] and takes the path it took
//! before (stored as a relay record, collected, answered by the inbox): senders that are not
//! contacts or are Rejected, messages we cannot decrypt (session reset notices), group
//! envelopes and file messages (their layers act on them asynchronously), messages signed by
//! someone else, and every message after the first of those in
//! the same hand-over (so a sender's messages are still decrypted in the order they were
//! sent). A local failure (full disk, a rolled-back flush) sends the whole hand-over back
//! unacknowledged to the relay's own store path, which refuses it if the disk is full.
//!
//! Crash safety (docs/PROTOCOL.md, "Node"): nothing is acknowledged before the flush that
//! covers its batch returned with the store's generation unchanged. A crash before that loses
//! no acknowledged message: the sender still holds it and sends it again, and a batch that did
//! reach the disk makes the new copy a duplicate, confirmed without being shown twice.

use super::history::{format_id, DeliveryPath, HistoryEntry};
use super::{Inner, NodeError};
use crate::identity::{IdentityKey, Trust, UserIdentity};
use crate::ratchet::{DecryptError, ReceiveError, SessionManager};
use crate::relay::owner::{OwnerInbox, Verdict, Verdicts};
use crate::store::{Store, StoreError};
use crate::time::Timestamp;
use crate::wire::relay::StoreMessage;
use std::sync::{Arc, Weak};

/// The node's [`OwnerInbox`], installed on its integrated relay.
pub(crate) struct Inbox {
    inner: Weak<Inner>,
}

impl Inbox {
    /// An inbox for the node of `inner` (held weakly: the relay must not keep the node alive).
    pub(crate) fn new(inner: &Arc<Inner>) -> Inbox {
        Inbox {
            inner: Arc::downgrade(inner),
        }
    }
}

impl OwnerInbox for Inbox {
    fn receive(&self, sender: IdentityKey, messages: Arc<[StoreMessage]>) -> Verdicts {
        let inner = self.inner.upgrade();
        Box::pin(async move {
            let n = messages.len();
            let Some(inner) = inner else {
                return vec![Verdict::Store; n];
            };
            match receive(&inner, sender, messages).await {
                Ok(v) => v,
                Err(e) => {
                    if let Some(repeats) = inner.receive_errors.due() {
                        tracing::error!(error = %e, repeats, "cannot record received messages; the integrated relay stores them for a retry");
                    }
                    vec![Verdict::Store; n]
                }
            }
        })
    }
}

/// What [`record_all`] did with one message.
pub(super) enum Outcome {
    /// Recorded in this hand-over (with its entry) or earlier (a duplicate, `None`).
    Recorded(Option<Box<HistoryEntry>>),
    /// Back to the relay's store path.
    Store,
}

async fn receive(
    inner: &Arc<Inner>,
    sender: IdentityKey,
    messages: Arc<[StoreMessage]>,
) -> Result<Vec<Verdict>, NodeError> {
    let n = messages.len();
    if *inner.stop.borrow() {
        return Ok(vec![Verdict::Store; n]);
    }
    let contact = match inner.contacts.get(&sender)? {
        Some(c) if c.trust != Trust::Rejected && c.identity.key() == sender => c,
        _ => return Ok(vec![Verdict::Store; n]),
    };
    let username = Some(contact.identity.username().to_string());
    let one = inner.locks.peer(&sender).await;
    let sessions = inner.sessions();
    let store = inner.store.clone();
    let history = inner.history.clone();
    let me = inner.me();
    let done = tokio::task::spawn_blocking(move || {
        let r = record_all(
            &sessions,
            &*store,
            &history,
            sender,
            username,
            messages.iter().map(|m| m.encrypted_blob.as_slice()),
            DeliveryPath::Direct,
        );
        // Released only once the flush returned: the next operation on this contact reads
        // durable state.
        drop(one);
        r.map(|outcomes| confirm_all(&me, sender, &messages, outcomes))
    })
    .await
    .map_err(|e| StoreError::TaskFailed {
        task: "receive",
        detail: e.to_string(),
    })??;
    let mut verdicts = Vec::with_capacity(n);
    for (verdict, entry) in done {
        if let Some(entry) = entry {
            tracing::info!(peer = %sender.short(), id = %format_id(entry.id), path = ?DeliveryPath::Direct, "message received");
            let _ = inner.events.send(*entry);
        }
        verdicts.push(verdict);
    }
    Ok(verdicts)
}

/// Decrypts and applies each message's batch in order, then flushes once. Blocking; the caller
/// holds `sender`'s ratchet lock. Err: a local failure, nothing may be acknowledged. Also the
/// relay path's batch ([`super::inbox`]: pushed messages of one sender, `path` Relay), whose
/// [`Outcome::Store`] means "handle it alone".
pub(super) fn record_all<'a>(
    sessions: &SessionManager,
    store: &dyn Store,
    history: &super::history::History,
    sender: IdentityKey,
    username: Option<String>,
    messages: impl IntoIterator<Item = &'a [u8]>,
    path: DeliveryPath,
) -> Result<Vec<Outcome>, NodeError> {
    let generation = store.generation();
    let mut out = Vec::new();
    let mut fell_back = false;
    for blob in messages {
        if fell_back {
            out.push(Outcome::Store);
            continue;
        }
        let outcome = match sessions.decrypt(store, blob) {
            Ok(incoming)
                if incoming.sender == sender.0
                    && !super::inbox::is_group(&incoming)
                    && !super::inbox::is_file(&incoming) =>
            {
                let (entry, batch) =
                    super::inbox::entry_for(history, incoming, username.clone(), path, None);
                store.apply(batch)?;
                Outcome::Recorded(Some(Box::new(entry)))
            }
            Err(ReceiveError::Rejected(DecryptError::Duplicate))
            | Err(ReceiveError::Rejected(DecryptError::Replayed { .. })) => {
                tracing::debug!(peer = %sender.short(), "duplicate message confirmed again");
                Outcome::Recorded(None)
            }
            Err(ReceiveError::Local(e)) => return Err(NodeError::Session(e)),
            // Group envelopes and file messages (their layers act on them asynchronously),
            // undecryptable or foreign-signed messages: the inbox's path. Nothing of this
            // decryption was applied, so the collector decrypts it again from the same state.
            Ok(_) | Err(ReceiveError::Rejected(_)) => Outcome::Store,
        };
        fell_back = matches!(outcome, Outcome::Store);
        out.push(outcome);
    }
    if out.iter().any(|o| matches!(o, Outcome::Recorded(_))) {
        // One flush for the whole hand-over (shared with concurrent commits). A duplicate is
        // acknowledged only after it too: its first copy may have been applied by a batch
        // whose flush has not returned yet.
        store.flush()?;
        if store.generation() != generation {
            // A failed flush elsewhere threw away applied writes, maybe ours.
            return Err(StoreError::RolledBack.into());
        }
    }
    Ok(out)
}

/// The verdicts for the relay: a signed confirmation for every recorded message.
fn confirm_all(
    me: &UserIdentity,
    sender: IdentityKey,
    messages: &[StoreMessage],
    outcomes: Vec<Outcome>,
) -> Vec<(Verdict, Option<Box<HistoryEntry>>)> {
    let now = Timestamp::now();
    messages
        .iter()
        .zip(outcomes)
        .map(|(m, o)| match o {
            Outcome::Recorded(entry) => {
                let c = crate::relay::auth::confirmation(
                    me.signing_key(),
                    &sender.0,
                    m.message_id,
                    now,
                );
                (Verdict::Recorded(Box::new(c)), entry)
            }
            Outcome::Store => (Verdict::Store, None),
        })
        .collect()
}
