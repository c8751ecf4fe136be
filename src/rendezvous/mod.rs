//! rendezvous (under construction).

/// Runs the rendezvous server with `cfg` until SIGTERM or Ctrl-C (the `sremp rendezvous` command).
pub fn run_cli(_cfg: &crate::config::Config) -> Result<(), crate::Error> {
    Err(crate::Error::Io {
        context: "sremp rendezvous".into(),
        source: std::io::Error::new(std::io::ErrorKind::Unsupported, "not built yet"),
    })
}
