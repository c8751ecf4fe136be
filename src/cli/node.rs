//! `sremp run`: the personal node ([`crate::node::Node`]) until SIGTERM or Ctrl-C.

use super::CliError;
use crate::config::Config;

/// Starts the node from `cfg`, waits for a signal, shuts it down (flushing what is pending).
pub fn run(cfg: &Config) -> Result<(), CliError> {
    crate::logging::init(&cfg.log);
    let rt = super::server_runtime()?;
    rt.block_on(async {
        let node = crate::node::Node::start(cfg).await?;
        crate::shutdown::wait_for_signal().await;
        tracing::info!("shutting down");
        node.shutdown().await?;
        Ok::<(), CliError>(())
    })
}
