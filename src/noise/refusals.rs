//! The refusal log: refused and failed connections are counted by reason and reported as one
//! WARN summary line per interval, so that a flood cannot flood the log. Each refusal is also
//! logged at DEBUG with its details (address, peer, error).
//!
//! Reasons come from every refusal path: the listener (accept errors, admission evictions,
//! handshake failures), the node's checks after the handshake (rejected, conflicting or
//! outdated identities, protocol errors before the first request). The summary line has the
//! message `connections refused`, a field `interval_secs`, a field `total`, and a field
//! `reasons` of the form `name=count name=count ...` sorted by name.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Counts refusals and emits the periodic summary. Shared by the listener and its handlers.
#[derive(Debug, Default)]
pub struct Refusals {
    counts: Mutex<BTreeMap<&'static str, u64>>,
}

impl Refusals {
    /// Counts one refusal for `reason` (a stable snake_case name). Details go to DEBUG at the
    /// call site.
    pub fn note(&self, reason: &'static str) {
        if let Ok(mut c) = self.counts.lock() {
            let n = c.entry(reason).or_insert(0);
            *n = n.saturating_add(1);
        }
    }

    /// Takes the counts gathered since the last call (empty if none).
    pub fn take(&self) -> BTreeMap<&'static str, u64> {
        self.counts
            .lock()
            .map(|mut c| std::mem::take(&mut *c))
            .unwrap_or_default()
    }

    /// Logs one WARN summary of the counts since the last call, if there were any.
    pub fn flush(&self, interval_secs: u64) {
        let counts = self.take();
        if counts.is_empty() {
            return;
        }
        let total: u64 = counts.values().fold(0, |a, b| a.saturating_add(*b));
        let reasons = counts
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
        tracing::warn!(interval_secs, total, %reasons, "connections refused");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_by_reason_and_resets() {
        let r = Refusals::default();
        r.note("a");
        r.note("b");
        r.note("a");
        let c = r.take();
        assert_eq!(c.get("a"), Some(&2));
        assert_eq!(c.get("b"), Some(&1));
        assert!(r.take().is_empty());
    }
}
