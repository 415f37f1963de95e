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
use tokio_rustls::rustls::{
    self,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    ServerConfig,
};

/// File names `gen-certs` writes into its output directory.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";
pub const SERVER_CERT: &str = "server.pem";
pub const SERVER_KEY: &str = "server-key.pem";

/// A rustls server config from a PEM certificate chain and a PEM private key.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>> {
    let cert_pem =
        fs::read(cert).with_context(|| format!("reading the certificate {}", cert.display()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: not a PEM certificate chain", cert.display()))?;
    if chain.is_empty() {
        bail!("{}: no CERTIFICATE block in it", cert.display());
    }
    let key_pem =
        fs::read(key).with_context(|| format!("reading the private key {}", key.display()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).with_context(|| {
        format!(
            "{}: no PEM private key (PKCS#8, PKCS#1 or SEC1) in it",
            key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context(
            "the certificate does not match the private key, or the key type is unsupported",
        )?;
    // h2 first: clients that speak it get HTTP/2, the others HTTP/1.1.
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
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
        fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        if name.ends_with("key.pem") {
            use std::os::unix::fs::PermissionsExt as _;
            // Keys are secrets, even in a lab.
            fs::set_permissions(&path, fs::Permissions::from_mode(0o600))?;
        }
        written.push(path);
    }
    Ok(written)
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
        let _ = fs::remove_dir_all(&dir);
    }
}
