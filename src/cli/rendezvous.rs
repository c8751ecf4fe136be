//! `sremp rendezvous` (the TLS 1.3 discovery server until SIGTERM or Ctrl-C) and `sremp certs`
//! (a localnet CA and server certificates).

use super::CliError;
use crate::config::Config;
use crate::rendezvous::server::ServerOptions;
use crate::rendezvous::tls::generate_localnet;
use crate::rendezvous::{RendezvousError, Server};
use std::path::Path;

/// `sremp rendezvous`: runs the server until SIGTERM or Ctrl-C.
pub fn run(cfg: &Config) -> Result<(), CliError> {
    crate::logging::init(&cfg.log);
    let rt = super::server_runtime()?;
    rt.block_on(async {
        let opts = ServerOptions::from_config(&cfg.rendezvous, cfg.data_dir())?;
        let server = Server::bind(opts).await?;
        let handle = server.spawn();
        crate::shutdown::wait_for_signal().await;
        tracing::info!("rendezvous server shutting down");
        handle.shutdown().await;
        Ok::<(), CliError>(())
    })
}

/// `sremp certs`: a localnet CA and server certificates in `out`; prints the files written.
pub fn certs(out: &Path, names: &[String]) -> Result<(), CliError> {
    if names.is_empty() {
        return Err(RendezvousError::CertGen("give at least one --name".into()).into());
    }
    for f in generate_localnet(out, names)? {
        println!("wrote {}", f.display());
    }
    println!(
        "clients: rendezvous.ca_file = \"{}\"",
        out.join("ca.pem").display()
    );
    Ok(())
}
