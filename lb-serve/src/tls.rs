//! The rustls server config of a listener, from PEM files.
use std::{fs, path::Path, sync::Arc};

use anyhow::{bail, Context, Result};
use tokio_rustls::rustls::{
    self,
    pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer},
    ServerConfig,
};

/// A rustls server config from a PEM certificate chain and a PEM private key, offering `alpn`
/// (most preferred first).
pub fn server_config(cert: &Path, key: &Path, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>> {
    let chain = read_certificates(cert)?;
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
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// Every certificate of a PEM file; an error when there is none.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem =
        fs::read(path).with_context(|| format!("reading the certificate {}", path.display()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .with_context(|| format!("{}: not a PEM certificate chain", path.display()))?;
    if chain.is_empty() {
        bail!("{}: no CERTIFICATE block in it", path.display());
    }
    Ok(chain)
}
