//! Tracing setup: level from `RUST_LOG` or the config, text or JSON lines on stderr.
//!
//! Nothing in sremp logs message content or key material; identity keys appear in their short
//! form (first 8 hex characters).

use serde::Deserialize;
use tracing_subscriber::EnvFilter;

/// Log output settings (`[log]`).
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// Level filter in `RUST_LOG` syntax. Default `"info"`. `RUST_LOG` overrides it.
    pub level: String,
    /// `"text"` (default) or `"json"`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "info".into(),
            format: LogFormat::Text,
        }
    }
}

/// Log format.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global subscriber (once; later calls are ignored).
pub fn init(cfg: &LogConfig) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match cfg.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// Logs a recurring local failure at most once per [`LogEvery::INTERVAL`], with the number of
/// repeats it swallowed, instead of once per message.
#[derive(Debug, Default)]
pub struct LogEvery {
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl LogEvery {
    /// The interval.
    pub const INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

    /// `Some(repeats suppressed since the last line)` when a line is due now.
    pub fn due(&self) -> Option<u64> {
        let mut st = self.state.lock().ok()?;
        let now = std::time::Instant::now();
        match st.0 {
            Some(t) if now.duration_since(t) < Self::INTERVAL => {
                st.1 += 1;
                None
            }
            _ => {
                let n = st.1;
                *st = (Some(now), 0);
                Some(n)
            }
        }
    }
}
