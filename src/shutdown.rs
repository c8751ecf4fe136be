//! Waiting for the operator to stop a long-running command.
//!
//! `sremp run`, `sremp relay` and `sremp rendezvous` all stop cleanly on SIGTERM or Ctrl-C
//! (SIGINT): they finish in-flight commits, withdraw registrations and flush before exiting.

/// Resolves on SIGTERM or Ctrl-C (only Ctrl-C where SIGTERM cannot be watched).
pub async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Resolves once `stop` is true (at once if it already is) or its sender is gone. The borrow
/// guard is dropped inside, so callers stay `Send` and it can sit in a `select!` whose other
/// arms await. The one helper every task (node, control socket, relay, rendezvous, listeners)
/// waits on its stop signal with.
pub async fn stopped(stop: &mut tokio::sync::watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}
