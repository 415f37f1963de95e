//! The CLI's API URLs, its HTTPS client against a TLS listener on loopback, path encoding.
use super::*;

#[test]
fn api_urls() {
    let url = |tls: bool, host: &str, port: u16| ApiUrl {
        tls,
        host: host.to_string(),
        port,
    };
    for (text, expect) in [
        ("http://127.0.0.1:9876", url(false, "127.0.0.1", 9876)),
        ("127.0.0.1:9876/", url(false, "127.0.0.1", 9876)),
        ("http://[::1]:9000", url(false, "::1", 9000)),
        ("https://10.0.0.1:9876", url(true, "10.0.0.1", 9876)),
        (
            "https://lb.example.net:9876/ui",
            url(true, "lb.example.net", 9876),
        ),
    ] {
        assert_eq!(parse_api_url(text).ok(), Some(expect), "{text}");
    }
    for bad in [
        "http://localhost",
        "https://[::1]",
        "http://a b:1",
        "http://:80",
        "ftp://x:1",
    ] {
        assert!(parse_api_url(bad).is_err(), "{bad}");
    }
    assert_eq!(url(true, "::1", 1).to_string(), "https://[::1]:1");
}

/// A CA, and a certificate for 127.0.0.1 signed by it, as PEM files in `dir`.
fn certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap_or_else(|e| panic!("{e}"));
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap_or_else(|e| panic!("{e}"));
    let issuer = Issuer::new(ca, &ca_key);
    let key = KeyPair::generate().unwrap_or_else(|e| panic!("{e}"));
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .and_then(|p| p.signed_by(&key, &issuer))
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("{e}"));
    let files = (
        dir.join("ca.pem"),
        dir.join("api.pem"),
        dir.join("api-key.pem"),
    );
    for (path, text) in [
        (&files.0, ca_cert.pem()),
        (&files.1, cert.pem()),
        (&files.2, key.serialize_pem()),
    ] {
        std::fs::write(path, text).unwrap_or_else(|e| panic!("{e}"));
    }
    files
}

/// The CLI's request path against an HTTPS server on loopback: trusted through --ca-file,
/// refused with another CA or in plain HTTP.
#[tokio::test]
async fn the_cli_talks_to_an_https_api() {
    let dir = std::env::temp_dir().join(format!("lb-cli-tls-{}", std::process::id()));
    let (ca, cert, key) = certificates(&dir);
    let (other_ca, _, _) = certificates(&dir.join("other"));
    let tls = lb_serve::tls::server_config(&cert, &key, &[b"http/1.1"])
        .unwrap_or_else(|e| panic!("{e:#}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let port = listener
        .local_addr()
        .unwrap_or_else(|e| panic!("{e}"))
        .port();
    let app = axum::Router::new().route(
        "/healthz",
        axum::routing::get(|| async { axum::Json(serde_json::json!({ "status": "ok" })) }),
    );
    let limits = lb_serve::Limits {
        header_read_timeout: Duration::from_secs(5),
        idle_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(5),
        max_connections: 8,
    };
    tokio::spawn(lb_serve::serve(listener, app, limits, Some(tls.into())));
    let endpoint = |scheme: &str, ca_file: &Path| Endpoint {
        url: parse_api_url(&format!("{scheme}://127.0.0.1:{port}"))
            .unwrap_or_else(|e| panic!("{e}")),
        ca_file: Some(ca_file.to_path_buf()),
        token: None,
    };
    let answer = endpoint("https", &ca)
        .request::<serde_json::Value>("GET", "/healthz", None)
        .await
        .map(|(value, _)| value)
        .map_err(|e| format!("{e:#}"));
    assert_eq!(answer, Ok(serde_json::json!({ "status": "ok" })));
    let refused = endpoint("https", &other_ca)
        .request::<serde_json::Value>("GET", "/healthz", None)
        .await;
    let error = refused.err().map(|e| format!("{e:#}")).unwrap_or_default();
    assert!(error.contains("is not signed by"), "{error}");
    let plain = endpoint("http", &ca)
        .request::<serde_json::Value>("GET", "/healthz", None)
        .await;
    assert!(plain.is_err(), "plain HTTP to a TLS listener answered");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn path_segments_are_encoded() {
    assert_eq!(path_segment("web-1_a.b"), "web-1_a.b");
    assert_eq!(path_segment("a/b c"), "a%2Fb%20c");
}
