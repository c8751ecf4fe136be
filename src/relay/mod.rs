//! relay (under construction).

/// Runs relay-only mode with `cfg` until SIGTERM or Ctrl-C (the `sremp relay` command).
pub fn run_cli(_cfg: &crate::config::Config) -> Result<(), crate::Error> {
    Err(crate::Error::Io {
        context: "sremp relay".into(),
        source: std::io::Error::new(std::io::ErrorKind::Unsupported, "not built yet"),
    })
}
