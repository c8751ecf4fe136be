//! Operator counters. Lock-free atomics, read as a [`StatsSnapshot`] that is logged on an
//! interval and at shutdown and written to `relay-stats.json` in the data directory.

use crate::wire::relay::RelayErrorCode;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Live counters of one relay.
#[derive(Debug, Default)]
pub struct Stats {
    /// Messages stored durably (duplicates not counted).
    pub stored: AtomicU64,
    /// Duplicate stores answered from the existing copy.
    pub duplicates: AtomicU64,
    /// Messages pushed to a connected recipient.
    pub pushed: AtomicU64,
    /// Messages sent in `MESSAGE_BATCH`es.
    pub retrieved: AtomicU64,
    /// Messages deleted by a delivery confirmation.
    pub delivered: AtomicU64,
    /// Messages removed by expiry.
    pub expired: AtomicU64,
    /// Confirmations pushed to a connected sender (also kept until it acknowledges them).
    pub confirmations_forwarded: AtomicU64,
    /// Confirmations only kept, for an absent sender.
    pub confirmations_kept: AtomicU64,
    /// Connections accepted by the relay service.
    pub connections_total: AtomicU64,
    /// Connections open now.
    pub connections_open: AtomicU64,
    /// Group commits (flushes).
    pub flushes: AtomicU64,
    /// `STORE_MESSAGE` sender signatures checked in a batch of two or more (a batch that fails
    /// is re-checked one signature at a time).
    pub signatures_batched: AtomicU64,
    rejected: [AtomicU64; RelayErrorCode::ALL.len()],
    /// Rate limit for "cannot store a message" log lines.
    pub store_errors: crate::logging::LogEvery,
}

impl Stats {
    /// Counts a refusal.
    pub fn reject(&self, code: RelayErrorCode) {
        if let Some(i) = RelayErrorCode::ALL.iter().position(|c| *c == code) {
            if let Some(c) = self.rejected.get(i) {
                c.fetch_add(1, Relaxed);
            }
        }
    }

    /// Refusals with `code` so far.
    pub fn rejected(&self, code: RelayErrorCode) -> u64 {
        RelayErrorCode::ALL
            .iter()
            .position(|c| *c == code)
            .and_then(|i| self.rejected.get(i))
            .map(|c| c.load(Relaxed))
            .unwrap_or(0)
    }

    /// A consistent-enough copy for reporting.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            stored: self.stored.load(Relaxed),
            duplicates: self.duplicates.load(Relaxed),
            pushed: self.pushed.load(Relaxed),
            retrieved: self.retrieved.load(Relaxed),
            delivered: self.delivered.load(Relaxed),
            expired: self.expired.load(Relaxed),
            confirmations_forwarded: self.confirmations_forwarded.load(Relaxed),
            confirmations_kept: self.confirmations_kept.load(Relaxed),
            connections_total: self.connections_total.load(Relaxed),
            connections_open: self.connections_open.load(Relaxed),
            flushes: self.flushes.load(Relaxed),
            signatures_batched: self.signatures_batched.load(Relaxed),
            rejected: RelayErrorCode::ALL
                .iter()
                .map(|c| (c.name(), self.rejected(*c)))
                .collect(),
        }
    }
}

/// A copy of the counters (the `relay-stats.json` format).
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// See [`Stats::stored`].
    pub stored: u64,
    /// See [`Stats::duplicates`].
    pub duplicates: u64,
    /// See [`Stats::pushed`].
    pub pushed: u64,
    /// See [`Stats::retrieved`].
    pub retrieved: u64,
    /// See [`Stats::delivered`].
    pub delivered: u64,
    /// See [`Stats::expired`].
    pub expired: u64,
    /// See [`Stats::confirmations_forwarded`].
    pub confirmations_forwarded: u64,
    /// See [`Stats::confirmations_kept`].
    pub confirmations_kept: u64,
    /// See [`Stats::connections_total`].
    pub connections_total: u64,
    /// See [`Stats::connections_open`].
    pub connections_open: u64,
    /// See [`Stats::flushes`].
    pub flushes: u64,
    /// See [`Stats::signatures_batched`].
    pub signatures_batched: u64,
    /// Refusals by reason (the names of [`RelayErrorCode::name`]).
    pub rejected: BTreeMap<&'static str, u64>,
}
