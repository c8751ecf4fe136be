//! The addresses the node's contacts advertise, for the listener's handshake rate
//! (docs/PROTOCOL.md, "Connection admission", item 3).
//!
//! Over its rate, a connection from an address no known peer uses is refused before the
//! handshake. The admission core learns addresses from contacts that authenticate, for an hour;
//! a contact away for longer that shares its address with a flood (one host, one NAT) would be
//! refused with the flood. This task hands the listener every IP literal in the endpoints of
//! the contacts that are not Rejected, at start and after the contact book changes, so those
//! addresses count as known for as long as a contact advertises them.
//!
//! Limits: endpoints given as DNS names are not resolved (no I/O on this path); a contact that
//! connects from an address it does not advertise (behind a NAT it does not announce) is known
//! only through its own authentications. A rebuild reads the contact book once, at most once per
//! [`COALESCE`] however often contacts are written.

use super::contacts::ContactBook;
use crate::identity::Trust;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

/// What the listener receives: the addresses, shared.
pub type Addrs = Arc<Vec<IpAddr>>;

/// Least time between two rebuilds (every connection of a contact writes its record).
pub const COALESCE: Duration = Duration::from_secs(1);

/// The IP literals of the endpoints of every contact that is not Rejected, sorted, without
/// duplicates. A contact book that cannot be read gives `None` (the caller keeps what it had).
pub fn of(book: &ContactBook) -> Option<Vec<IpAddr>> {
    let contacts = match book.list() {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the contact book for the listener's known addresses");
            return None;
        }
    };
    let mut ips: Vec<IpAddr> = contacts
        .iter()
        .filter(|c| c.trust != Trust::Rejected)
        .flat_map(|c| c.endpoints.iter())
        .filter_map(|e| e.host().parse::<IpAddr>().ok())
        .map(|ip| ip.to_canonical())
        .collect();
    ips.sort_unstable();
    ips.dedup();
    Some(ips)
}

/// The current addresses and a receiver that sees every rebuild.
pub fn channel(book: &ContactBook) -> (watch::Sender<Addrs>, watch::Receiver<Addrs>) {
    watch::channel(Arc::new(of(book).unwrap_or_default()))
}

/// Rebuilds the addresses after contact book writes until `stop`.
pub async fn run(book: ContactBook, tx: watch::Sender<Addrs>, mut stop: watch::Receiver<bool>) {
    let changes = book.changes();
    loop {
        tokio::select! {
            _ = changes.notified() => {}
            _ = crate::shutdown::stopped(&mut stop) => return,
        }
        let b = book.clone();
        if let Ok(Some(ips)) = tokio::task::spawn_blocking(move || of(&b)).await {
            tx.send_if_modified(|cur| {
                if **cur == ips {
                    return false;
                }
                *cur = Arc::new(ips);
                true
            });
        }
        tokio::select! {
            _ = tokio::time::sleep(COALESCE) => {}
            _ = crate::shutdown::stopped(&mut stop) => return,
        }
    }
}
