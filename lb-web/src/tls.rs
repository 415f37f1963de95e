//! HTTPS: the rustls server config from PEM files (ALPN h2 then http/1.1), and `gen-certs`, the
//! lab's own certificate authority and a server certificate for given IP addresses (rcgen).
use std::{
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{bail, Context, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use tokio_rustls::rustls::ServerConfig;

/// File names `gen-certs` writes into its output directory.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const SERVER_CERT: &str = "server.pem";
pub const SERVER_KEY: &str = "server-key.pem";

/// A rustls server config from a PEM certificate chain and a PEM private key, offering HTTP/2
/// first: clients that speak it get it, the others HTTP/1.1.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>> {
    lb_serve::tls::server_config(cert, key, &[b"h2", b"http/1.1"])
}

/// Writes a new CA (`ca.pem`, `ca-key.pem`) and a server certificate signed by it for `ips` and
/// `names` (`server.pem`, `server-key.pem`) into `out`. Returns the paths written.
pub fn gen_certs(out: &Path, ips: &[IpAddr], names: &[String]) -> Result<Vec<PathBuf>> {
    if ips.is_empty() && names.is_empty() {
        bail!("gen-certs needs at least one --ip or --name for the server certificate");
    }
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;

    let ca_key = KeyPair::generate().context("generating the CA key")?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).context("CA parameters")?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "lb lab CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .context("signing the CA certificate")?;
    let issuer = Issuer::new(ca_params, &ca_key);

    let server_key = KeyPair::generate().context("generating the server key")?;
    let sans: Vec<String> = ips
        .iter()
        .map(IpAddr::to_string)
        .chain(names.iter().cloned())
        .collect();
    let mut params = CertificateParams::new(sans).context("server certificate names")?;
    params.distinguished_name.push(DnType::CommonName, "lb-web");
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = params
        .signed_by(&server_key, &issuer)
        .context("signing the server certificate")?;

    let files = [
        (CA_CERT, ca_cert.pem()),
        (CA_KEY, ca_key.serialize_pem()),
        (SERVER_CERT, server_cert.pem()),
        (SERVER_KEY, server_key.serialize_pem()),
    ];
    let mut written = Vec::new();
    for (name, text) in files {
        let path = out.join(name);
        // Keys are secrets, even in a lab: 0600 from their first byte.
        let mode = if name.ends_with("key.pem") {
            0o600
        } else {
            0o644
        };
        write_new(&path, text.as_bytes(), mode)
            .with_context(|| format!("writing {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

/// Writes `path` whole with `mode` from its creation: a temporary file made with that mode,
/// then renamed over `path`, so an older file's wider permissions never hold the new content.
fn write_new(path: &Path, contents: &[u8], mode: u32) -> std::io::Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    let mut temporary = path.as_os_str().to_owned();
    temporary.push(format!(".tmp{}", std::process::id()));
    let temporary = PathBuf::from(temporary);
    let _ = fs::remove_file(&temporary);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&temporary)?;
    file.write_all(contents)?;
    file.sync_all()?;
    fs::rename(&temporary, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificates_load_into_a_server_config() {
        let dir = std::env::temp_dir().join(format!("lb-web-certs-{}", std::process::id()));
        let ips: Vec<IpAddr> = ["10.99.0.11", "fd99::100"]
            .iter()
            .filter_map(|a| a.parse().ok())
            .collect();
        gen_certs(&dir, &ips, &["localhost".to_string()]).unwrap_or_else(|e| panic!("{e:#}"));
        let config = server_config(&dir.join(SERVER_CERT), &dir.join(SERVER_KEY))
            .unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(config.alpn_protocols[0], b"h2");
        let wrong = server_config(&dir.join(SERVER_CERT), &dir.join(CA_KEY));
        assert!(
            wrong.is_err(),
            "a key that does not match the certificate was accepted"
        );
        use std::os::unix::fs::PermissionsExt as _;
        for name in [CA_KEY, SERVER_KEY] {
            let meta = fs::metadata(dir.join(name)).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(
                meta.permissions().mode() & 0o077,
                0,
                "{name} is readable by others"
            );
        }
        let _ = fs::remove_dir_all(&dir);
    }
}
