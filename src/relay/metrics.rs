//! Prometheus metrics of a relay (`[metrics] listen`, off by default): the operator counters
//! of [`super::stats::Stats`] plus latency histograms of the storage operations, served as
//! OpenMetrics text at `GET /metrics` by a tiny HTTP/1.1 handler.
//!
//! Metric names (all prefixed `sremp_relay_`; counters end in `_total`) are listed in the
//! README ("Relay metrics"). Latencies are measured around the backend call
//! ([`super::backend::Records`]), so the sled and NATS backends are measured the same way:
//! a store from the moment it is queued until the callback that answers `STORE_RESPONSE`
//! runs (durable, refused or failed).
//!
//! The HTTP side is deliberately minimal: one request per connection, only `GET /metrics`
//! (anything else 404, a malformed request 400), the request head read with a size and time
//! bound, at most [`MAX_SCRAPERS`] connections at once. Bind it to loopback or a private
//! address; it has no authentication.

use super::stats::StatsSnapshot;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

/// Scrape connections served at once; more wait in the accept queue.
pub const MAX_SCRAPERS: usize = 16;
/// Largest request head read.
const MAX_HEAD: usize = 8 * 1024;
/// Time a scraper has to send its request head.
const HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// `[metrics]` in node-config.toml.
#[derive(Clone, Debug, Default, serde::Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Address of the `GET /metrics` endpoint of `sremp relay`, e.g. `"127.0.0.1:9464"`.
    /// Default none (off).
    pub listen: Option<std::net::SocketAddr>,
}

/// Latency histograms of one relay. Cheap to share.
#[derive(Debug, Clone)]
pub struct RelayMetrics {
    store: Histogram,
    retrieve: Histogram,
    confirm: Histogram,
}

fn buckets() -> Histogram {
    // 50 µs .. ~26 s, doubling.
    Histogram::new(exponential_buckets(0.000_05, 2.0, 20))
}

impl Default for RelayMetrics {
    fn default() -> Self {
        RelayMetrics {
            store: buckets(),
            retrieve: buckets(),
            confirm: buckets(),
        }
    }
}

impl RelayMetrics {
    /// Time from queueing a store until it was decided.
    pub fn observe_store(&self, d: Duration) {
        self.store.observe(d.as_secs_f64());
    }
    /// Time of one retrieval page.
    pub fn observe_retrieve(&self, d: Duration) {
        self.retrieve.observe(d.as_secs_f64());
    }
    /// Time of one confirmation (the delete).
    pub fn observe_confirm(&self, d: Duration) {
        self.confirm.observe(d.as_secs_f64());
    }

    /// The OpenMetrics text for these histograms and the counters `s`.
    pub fn render(&self, s: &StatsSnapshot, backend: &str) -> String {
        let mut reg = Registry::with_prefix("sremp_relay");
        let counters: [(&str, &str, u64); 11] = [
            (
                "stored",
                "Messages stored durably (duplicates not counted)",
                s.stored,
            ),
            (
                "duplicates",
                "Duplicate stores answered from the existing copy",
                s.duplicates,
            ),
            (
                "pushed",
                "Messages pushed to a connected recipient",
                s.pushed,
            ),
            ("retrieved", "Messages sent in MESSAGE_BATCHes", s.retrieved),
            (
                "delivered",
                "Messages deleted by a delivery confirmation",
                s.delivered,
            ),
            ("expired", "Messages removed by expiry", s.expired),
            (
                "confirmations_forwarded",
                "Confirmations pushed to a connected sender",
                s.confirmations_forwarded,
            ),
            (
                "confirmations_kept",
                "Confirmations kept for an absent sender",
                s.confirmations_kept,
            ),
            (
                "connections",
                "Connections accepted by the relay service",
                s.connections_total,
            ),
            (
                "flushes",
                "Group commits (flushes) of the embedded store",
                s.flushes,
            ),
            (
                "signatures_batched",
                "STORE_MESSAGE signatures checked in batches",
                s.signatures_batched,
            ),
        ];
        for (name, help, v) in counters {
            reg.register(name, help, ConstCounter::new(v));
        }
        reg.register(
            "connections_open",
            "Connections open now",
            ConstGauge::new(i64::try_from(s.connections_open).unwrap_or(i64::MAX)),
        );
        let rejected = Family::<Vec<(String, String)>, Counter>::default();
        for (reason, n) in &s.rejected {
            rejected
                .get_or_create(&vec![("reason".to_string(), (*reason).to_string())])
                .inc_by(*n);
        }
        reg.register("rejected", "Requests refused, by reason", rejected);
        let backend_info =
            Family::<Vec<(String, String)>, prometheus_client::metrics::gauge::Gauge>::default();
        backend_info
            .get_or_create(&vec![("backend".to_string(), backend.to_string())])
            .set(1);
        reg.register(
            "backend",
            "The storage backend in use (value 1)",
            backend_info,
        );
        reg.register(
            "store_seconds",
            "Time from receiving a checked STORE_MESSAGE until it was durable (or refused)",
            self.store.clone(),
        );
        reg.register(
            "retrieve_seconds",
            "Time to read one MESSAGE_BATCH page from storage",
            self.retrieve.clone(),
        );
        reg.register(
            "confirm_seconds",
            "Time to delete a confirmed message",
            self.confirm.clone(),
        );
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &reg);
        out
    }
}

/// What the HTTP handler serves: called once per scrape.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves `GET /metrics` on `listener` until `stop` turns true.
pub async fn serve(listener: TcpListener, render: Render, mut stop: watch::Receiver<bool>) {
    let slots = Arc::new(Semaphore::new(MAX_SCRAPERS));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = async { stop.wait_for(|s| *s).await.is_ok() } => return,
        };
        let (sock, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::debug!(error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let render = render.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tokio::time::timeout(HEAD_TIMEOUT * 2, answer(sock, render)).await;
        });
    }
}

/// The response for a request head: status line and body.
fn respond(head: &[u8], render: &Render) -> (&'static str, &'static str, String) {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    match (parts.next(), parts.next()) {
        (Some("GET"), Some(path)) if path == "/metrics" || path.starts_with("/metrics?") => (
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            render(),
        ),
        (Some(_), Some(_)) => ("404 Not Found", "text/plain", "not found\n".into()),
        _ => ("400 Bad Request", "text/plain", "bad request\n".into()),
    }
}

async fn answer(mut sock: tokio::net::TcpStream, render: Render) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    let complete = tokio::time::timeout(HEAD_TIMEOUT, async {
        loop {
            match sock.read(&mut buf).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => {
                    head.extend_from_slice(buf.get(..n).unwrap_or_default());
                    if head.windows(4).any(|w| w == b"\r\n\r\n")
                        || head.windows(2).any(|w| w == b"\n\n")
                    {
                        return true;
                    }
                    if head.len() > MAX_HEAD {
                        return false;
                    }
                }
            }
        }
    })
    .await
    .unwrap_or(false);
    let (status, ctype, body) = if complete {
        respond(&head, &render)
    } else {
        ("400 Bad Request", "text/plain", "bad request\n".into())
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = sock.write_all(resp.as_bytes()).await;
    let _ = sock.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn render_has_counters_histograms_and_eof() {
        let m = RelayMetrics::default();
        m.observe_store(Duration::from_millis(3));
        let mut s = StatsSnapshot {
            stored: 7,
            ..StatsSnapshot::default()
        };
        s.rejected.insert("QuotaFull", 2);
        let text = m.render(&s, "sled");
        assert!(text.contains("sremp_relay_stored_total 7"), "{text}");
        assert!(
            text.contains("sremp_relay_rejected_total{reason=\"QuotaFull\"} 2"),
            "{text}"
        );
        assert!(text.contains("sremp_relay_store_seconds_count 1"), "{text}");
        assert!(
            text.contains("sremp_relay_backend{backend=\"sled\"} 1"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn only_get_metrics_is_served() {
        let r: Render = Arc::new(|| "x".to_string());
        assert_eq!(respond(b"GET /metrics HTTP/1.1\r\n\r\n", &r).0, "200 OK");
        assert_eq!(respond(b"GET / HTTP/1.1\r\n\r\n", &r).0, "404 Not Found");
        assert_eq!(
            respond(b"POST /metrics HTTP/1.1\r\n\r\n", &r).0,
            "404 Not Found"
        );
        assert_eq!(respond(b"\r\n\r\n", &r).0, "400 Bad Request");
    }
}
