//! Server lists: what a rendezvous server (or a client) knows about other rendezvous servers,
//! and how LIST_SERVERS answers are merged. No I/O and no clock.
//!
//! - Entries come from the configuration (kept forever) or are learned from LIST_SERVERS
//!   answers (dropped after [`MAX_FAILURES`] consecutive failed polls).
//! - A list never holds more than its `max` entries; learned entries beyond it are ignored.
//! - A server never lists or polls itself (`me`).
//! - An answer lists at most [`MAX_SERVERS_IN_RESPONSE`] servers (always under one frame: an
//!   entry is at most 2 × 253 + 10 bytes).

use crate::time::Timestamp;
use crate::wire::rendezvous::{ListServersResponse, ServerEntry};
use crate::wire::Endpoint;
use std::collections::BTreeMap;

/// Consecutive failed polls after which a learned server is forgotten.
pub const MAX_FAILURES: u32 = 3;
/// Most servers in one LIST_SERVERS_RESPONSE (and most taken from one).
pub const MAX_SERVERS_IN_RESPONSE: usize = 100;

#[derive(Clone, Debug, PartialEq, Eq)]
struct Known {
    name: String,
    configured: bool,
    failures: u32,
}

/// A bounded set of known servers.
#[derive(Clone, Debug)]
pub struct ServerList {
    me: Option<ServerEntry>,
    known: BTreeMap<Endpoint, Known>,
    max: usize,
}

impl ServerList {
    /// A list holding `configured` (never forgotten), excluding `me`, of at most `max` entries.
    pub fn new(me: Option<ServerEntry>, configured: &[ServerEntry], max: usize) -> Self {
        let mut list = ServerList {
            me,
            known: BTreeMap::new(),
            max: max.max(configured.len()),
        };
        for s in configured {
            if list.is_me(&s.endpoint) {
                continue;
            }
            list.known.insert(
                s.endpoint.clone(),
                Known {
                    name: s.name.clone(),
                    configured: true,
                    failures: 0,
                },
            );
        }
        list
    }

    fn is_me(&self, e: &Endpoint) -> bool {
        self.me.as_ref().is_some_and(|m| &m.endpoint == e)
    }

    /// Adds servers we did not know; returns how many were new.
    pub fn merge(&mut self, servers: &[ServerEntry]) -> usize {
        let mut added = 0;
        for s in servers.iter().take(MAX_SERVERS_IN_RESPONSE) {
            if self.is_me(&s.endpoint) || self.known.contains_key(&s.endpoint) {
                continue;
            }
            if self.known.len() >= self.max {
                break;
            }
            self.known.insert(
                s.endpoint.clone(),
                Known {
                    name: s.name.clone(),
                    configured: false,
                    failures: 0,
                },
            );
            added += 1;
        }
        added
    }

    /// A poll of `endpoint` succeeded.
    pub fn success(&mut self, endpoint: &Endpoint) {
        if let Some(k) = self.known.get_mut(endpoint) {
            k.failures = 0;
        }
    }

    /// A poll of `endpoint` failed; a learned server is forgotten after [`MAX_FAILURES`].
    pub fn failure(&mut self, endpoint: &Endpoint) {
        let forget = match self.known.get_mut(endpoint) {
            Some(k) => {
                k.failures = k.failures.saturating_add(1);
                !k.configured && k.failures >= MAX_FAILURES
            }
            None => false,
        };
        if forget {
            self.known.remove(endpoint);
        }
    }

    /// Every known server except ourselves (the ones to poll).
    pub fn others(&self) -> Vec<ServerEntry> {
        self.known
            .iter()
            .map(|(e, k)| ServerEntry {
                endpoint: e.clone(),
                name: k.name.clone(),
            })
            .collect()
    }

    /// Whether `endpoint` is known (or is us).
    pub fn contains(&self, endpoint: &Endpoint) -> bool {
        self.is_me(endpoint) || self.known.contains_key(endpoint)
    }

    /// The LIST_SERVERS answer: ourselves first, then servers whose last poll succeeded.
    pub fn response(&self, now: Timestamp) -> ListServersResponse {
        let servers = self
            .me
            .iter()
            .cloned()
            .chain(
                self.known
                    .iter()
                    .filter(|(_, k)| k.failures == 0)
                    .map(|(e, k)| ServerEntry {
                        endpoint: e.clone(),
                        name: k.name.clone(),
                    }),
            )
            .take(MAX_SERVERS_IN_RESPONSE)
            .collect();
        ListServersResponse {
            servers,
            timestamp: now,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(port: u16) -> ServerEntry {
        ServerEntry {
            endpoint: Endpoint::new("127.0.0.1", port).unwrap(),
            name: format!("rv{port}.test"),
        }
    }

    #[test]
    fn three_lists_converge_by_polling() {
        // a knows b, b knows c, c knows a.
        let mut lists = [
            ServerList::new(Some(s(1)), &[s(2)], 16),
            ServerList::new(Some(s(2)), &[s(3)], 16),
            ServerList::new(Some(s(3)), &[s(1)], 16),
        ];
        for _round in 0..2 {
            for i in 0..3 {
                for target in lists[i].others() {
                    let j = usize::from(target.endpoint.port()) - 1;
                    let answer = lists[j].response(Timestamp(0));
                    lists[i].merge(&answer.servers);
                }
            }
        }
        for l in &lists {
            assert_eq!(l.others().len(), 2);
            assert_eq!(l.response(Timestamp(0)).servers.len(), 3);
        }
    }

    #[test]
    fn bounded_and_failures_forget_learned_only() {
        let mut l = ServerList::new(Some(s(1)), &[s(2)], 3);
        assert_eq!(l.merge(&[s(1), s(2), s(3), s(4), s(5)]), 2);
        assert_eq!(l.others().len(), 3);
        for _ in 0..MAX_FAILURES {
            l.failure(&s(2).endpoint);
            l.failure(&s(3).endpoint);
        }
        assert!(l.contains(&s(2).endpoint));
        assert!(!l.contains(&s(3).endpoint));
        // Failing servers are not advertised.
        assert_eq!(l.response(Timestamp(0)).servers, vec![s(1), s(4)]);
        l.success(&s(2).endpoint);
        assert_eq!(l.response(Timestamp(0)).servers.len(), 3);
    }
}
