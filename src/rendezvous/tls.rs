//! TLS for rendezvous: rustls configurations restricted to TLS 1.3, trust roots, the session
//! binding (exporter) and a localnet certificate authority made with rcgen.
//!
//! - Server: one certificate chain and key from PEM files.
//! - Client: trusts the configured CA file only (localnets, tests), or else the system roots,
//!   falling back to the bundled Mozilla roots (webpki-roots) when the system has none.
//! - Both: TLS 1.3 only, ring provider, ALPN `sremp-rendezvous/1` **[gap]**.
//! - [`generate_localnet`] writes `ca.pem`/`ca-key.pem` (reused when present) and one
//!   `NAME.pem`/`NAME-key.pem` per server name, valid for NAME, localhost, 127.0.0.1 and ::1.

use super::core::{EXPORTER_LABEL, EXPORTER_LEN};
use super::RendezvousError;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The ALPN protocol name both sides offer.
pub const ALPN: &[u8] = b"sremp-rendezvous/1";

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn cert_err(path: &Path, why: impl std::fmt::Display) -> RendezvousError {
    RendezvousError::Certificates {
        path: path.to_path_buf(),
        why: why.to_string(),
    }
}

/// Reads every certificate in a PEM file.
pub fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, RendezvousError> {
    let pem = std::fs::read(path).map_err(|e| cert_err(path, e))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(path, e))?;
    if certs.is_empty() {
        return Err(cert_err(path, "no certificate in the file"));
    }
    Ok(certs)
}

/// Server configuration from a certificate chain file and a private key file (PEM).
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
) -> Result<Arc<ServerConfig>, RendezvousError> {
    let certs = read_certs(cert_file)?;
    let pem = std::fs::read(key_file).map_err(|e| cert_err(key_file, e))?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(|e| cert_err(key_file, e))?
        .ok_or_else(|| cert_err(key_file, "no private key in the file"))?;
    let mut cfg = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| cert_err(cert_file, e))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| cert_err(cert_file, e))?;
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(cfg))
}

/// Client configuration: the certificates of `ca_file` as the only roots, or the system roots
/// (the bundled Mozilla roots if the system has none).
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<ClientConfig>, RendezvousError> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for c in read_certs(path)? {
                roots.add(c).map_err(|e| cert_err(path, e))?;
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(native.certs);
            if added == 0 {
                tracing::warn!("no usable system trust roots; using the bundled Mozilla roots");
                roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
            }
        }
    }
    client_config_with_roots(roots)
}

/// Client configuration trusting exactly `roots`.
pub fn client_config_with_roots(
    roots: RootCertStore,
) -> Result<Arc<ClientConfig>, RendezvousError> {
    let mut cfg = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| cert_err(Path::new("(roots)"), e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![ALPN.to_vec()];
    Ok(Arc::new(cfg))
}

/// The connection's exporter value for registrations (RFC 8446 section 7.5; label
/// [`EXPORTER_LABEL`], no context).
pub fn exporter<D>(
    conn: &rustls::ConnectionCommon<D>,
) -> Result<[u8; EXPORTER_LEN], RendezvousError> {
    conn.export_keying_material([0u8; EXPORTER_LEN], EXPORTER_LABEL, None)
        .map_err(|e| RendezvousError::Handshake {
            server: String::new(),
            why: format!("TLS exporter unavailable: {e}"),
        })
}

fn gen_err(e: impl std::fmt::Display) -> RendezvousError {
    RendezvousError::CertGen(e.to_string())
}

fn ca_params() -> rcgen::CertificateParams {
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name = rcgen::DistinguishedName::new();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "sremp localnet rendezvous CA");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    p
}

fn write_file(path: &Path, text: &str, secret: bool) -> Result<(), RendezvousError> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = opts.open(path).map_err(|e| cert_err(path, e))?;
    f.write_all(text.as_bytes()).map_err(|e| cert_err(path, e))
}

/// Makes (or reuses) a localnet CA in `out` and one server certificate per name. Returns the
/// files written. The CA key stays in `out/ca-key.pem` (mode 0600) so that more servers can be
/// added later; clients only need `out/ca.pem` (`rendezvous.ca_file`).
pub fn generate_localnet(out: &Path, names: &[String]) -> Result<Vec<PathBuf>, RendezvousError> {
    std::fs::create_dir_all(out).map_err(|e| cert_err(out, e))?;
    let ca_pem = out.join("ca.pem");
    let ca_key_pem = out.join("ca-key.pem");
    let mut written = Vec::new();
    let ca_key = if ca_key_pem.exists() && ca_pem.exists() {
        let text = std::fs::read_to_string(&ca_key_pem).map_err(|e| cert_err(&ca_key_pem, e))?;
        rcgen::KeyPair::from_pem(&text).map_err(|e| cert_err(&ca_key_pem, e))?
    } else {
        let key = rcgen::KeyPair::generate().map_err(gen_err)?;
        let cert = ca_params().self_signed(&key).map_err(gen_err)?;
        write_file(&ca_pem, &cert.pem(), false)?;
        write_file(&ca_key_pem, &key.serialize_pem(), true)?;
        written.push(ca_pem.clone());
        written.push(ca_key_pem.clone());
        key
    };
    // Issuing needs the issuer's name and key only: rebuild the CA certificate from its params.
    let ca = ca_params().self_signed(&ca_key).map_err(gen_err)?;
    for name in names {
        let host = crate::wire::Endpoint::new(name.as_str(), 0)
            .map_err(|e| RendezvousError::CertGen(format!("server name {name:?}: {e}")))?;
        let host = host.host().to_string();
        if host.contains(['/', '\\']) || host.starts_with('.') {
            return Err(RendezvousError::CertGen(format!(
                "server name {name:?} is not a file name"
            )));
        }
        let mut sans = vec![host.clone()];
        for extra in ["localhost", "127.0.0.1", "::1"] {
            if !sans.iter().any(|s| s == extra) {
                sans.push(extra.to_string());
            }
        }
        let mut params = rcgen::CertificateParams::new(sans).map_err(gen_err)?;
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, host.clone());
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = rcgen::KeyPair::generate().map_err(gen_err)?;
        let cert = params.signed_by(&key, &ca, &ca_key).map_err(gen_err)?;
        let cert_path = out.join(format!("{host}.pem"));
        let key_path = out.join(format!("{host}-key.pem"));
        write_file(&cert_path, &cert.pem(), false)?;
        write_file(&key_path, &key.serialize_pem(), true)?;
        written.push(cert_path);
        written.push(key_path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn localnet_ca_issues_usable_certificates() {
        let dir = tempfile::tempdir().unwrap();
        generate_localnet(dir.path(), &["rv1.test".into()]).unwrap();
        // A second run reuses the CA and adds a server.
        let again = generate_localnet(dir.path(), &["rv2.test".into()]).unwrap();
        assert!(!again.contains(&dir.path().join("ca.pem")));
        for n in ["rv1.test", "rv2.test"] {
            server_config(
                &dir.path().join(format!("{n}.pem")),
                &dir.path().join(format!("{n}-key.pem")),
            )
            .unwrap();
        }
        client_config(Some(&dir.path().join("ca.pem"))).unwrap();
        assert!(generate_localnet(dir.path(), &["../x".into()]).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("ca-key.pem"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0);
        }
    }

    #[test]
    fn system_roots_load() {
        // Either the system roots or the bundled fallback.
        client_config(None).unwrap();
    }
}
