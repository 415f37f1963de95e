//! The app's router in process (no sockets): static files, conditional and range requests,
//! compression, the redirect, and the notes API without a database.
use std::path::PathBuf;

use axum::{
    body::{to_bytes, Body},
    http::{header, Request, StatusCode},
    Router,
};
use tower::ServiceExt as _;

use super::*;

/// A static directory with a compressible file; removed on drop.
struct Site(PathBuf);

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn site(name: &str) -> (Site, Router) {
    let dir = std::env::temp_dir().join(format!("lb-web-test-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.join("index.html"), "<h1>hello</h1>\n").unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(dir.join("big.txt"), "0123456789abcdef\n".repeat(1000))
        .unwrap_or_else(|e| panic!("{e}"));
    let config = config::parse(&format!(
        "server_name = \"t1\"\nstatic_dir = \"{}\"\naccess_log = \"{}\"\n[http]\nlisten = [\"127.0.0.1:0\"]\n",
        dir.display(),
        dir.join("access.log").display()
    ))
    .unwrap_or_else(|e| panic!("{e:#}"));
    let log = AccessLog::open(&config.access_log).unwrap_or_else(|e| panic!("{e:#}"));
    let notes = notes::Notes::new("t1", None).unwrap_or_else(|e| panic!("{e:#}"));
    let router = finish(app_router(&config, notes), "t1", &log);
    (Site(dir), router)
}

#[track_caller]
fn request(path: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut builder = Request::get(path);
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    builder
        .body(Body::empty())
        .unwrap_or_else(|e| panic!("{e}"))
}

async fn send(router: &Router, request: Request<Body>) -> (StatusCode, header::HeaderMap, Vec<u8>) {
    let response = router
        .clone()
        .oneshot(request)
        .await
        .unwrap_or_else(|never| match never {});
    let (parts, body) = response.into_parts();
    let body = to_bytes(body, 1 << 20)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (parts.status, parts.headers, body.to_vec())
}

fn text(headers: &header::HeaderMap, name: header::HeaderName) -> String {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

#[tokio::test]
async fn etag_then_304_and_last_modified() {
    let (_site, router) = site("etag");
    let (status, headers, body) = send(&router, request("/", &[])).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body, b"<h1>hello</h1>\n");
    let etag = text(&headers, header::ETAG);
    assert!(etag.starts_with("W/\""), "ETag {etag:?}");
    assert!(!text(&headers, header::LAST_MODIFIED).is_empty());
    assert_eq!(
        text(
            &headers,
            "x-served-by".parse().unwrap_or_else(|e| panic!("{e}"))
        ),
        "app=t1"
    );

    let (status, headers, body) = send(&router, request("/", &[("if-none-match", &etag)])).await;
    assert_eq!(status, StatusCode::NOT_MODIFIED);
    assert!(body.is_empty());
    assert_eq!(text(&headers, header::ETAG), etag);
    let (status, _, _) = send(&router, request("/", &[("if-none-match", "W/\"other\"")])).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn range_is_206_with_the_same_etag() {
    let (_site, router) = site("range");
    let (_, full, _) = send(&router, request("/big.txt", &[])).await;
    let (status, headers, body) =
        send(&router, request("/big.txt", &[("range", "bytes=17-33")])).await;
    assert_eq!(status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(body, b"0123456789abcdef\n");
    assert_eq!(text(&headers, header::CONTENT_RANGE), "bytes 17-33/17000");
    assert_eq!(text(&headers, header::ETAG), text(&full, header::ETAG));
}

#[tokio::test]
async fn gzip_and_brotli_by_accept_encoding() {
    let (_site, router) = site("gzip");
    for (accept, expect) in [
        ("gzip", "gzip"),
        ("br", "br"),
        ("br;q=0.5, gzip;q=1", "gzip"),
        ("identity", ""),
    ] {
        let (status, headers, body) =
            send(&router, request("/big.txt", &[("accept-encoding", accept)])).await;
        assert_eq!(status, StatusCode::OK, "{accept}");
        assert_eq!(
            text(&headers, header::CONTENT_ENCODING),
            expect,
            "Accept-Encoding: {accept}"
        );
        if expect.is_empty() {
            assert_eq!(body.len(), 17_000);
        } else {
            assert!(
                body.len() < 1000,
                "{accept}: {} bytes compressed",
                body.len()
            );
        }
    }
}

#[tokio::test]
async fn healthz_notes_without_database_and_the_access_log() {
    let (site, router) = site("api");
    let (status, _, body) = send(&router, request("/healthz", &[("user-agent", "t\"ester")])).await;
    assert_eq!(
        (status, body.as_slice()),
        (StatusCode::OK, b"ok".as_slice())
    );
    let (status, headers, body) = send(&router, request("/api/notes", &[])).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(text(&headers, header::CONTENT_TYPE), "application/json");
    let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(body["error"]["code"], "no_database");
    assert_eq!(body["served_by"]["app"], "t1");
    let post = Request::post("/api/notes")
        .body(Body::from("{\"txt\": 1}"))
        .unwrap_or_else(|e| panic!("{e}"));
    let (status, _, _) = send(&router, post).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _, _) = send(&router, request("/nope", &[])).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    let log = std::fs::read_to_string(site.0.join("access.log")).unwrap_or_else(|e| panic!("{e}"));
    let first = log.lines().next().unwrap_or("");
    // No client address in process: "-"; the agent's quote escaped.
    assert!(first.starts_with("- - - ["), "{first}");
    assert!(
        first.ends_with("] \"GET /healthz HTTP/1.1\" 200 2 \"-\" \"t\\x22ester\""),
        "{first}"
    );
    assert_eq!(log.lines().count(), 4, "{log}");
}

#[tokio::test]
async fn redirect_to_https_keeps_host_and_path() {
    let router = redirect_router(8443);
    let (status, headers, _) = send(&router, request("/a/b?c=1", &[("host", "10.99.0.100")])).await;
    assert_eq!(status, StatusCode::PERMANENT_REDIRECT);
    assert_eq!(
        text(&headers, header::LOCATION),
        "https://10.99.0.100:8443/a/b?c=1"
    );
    let router = redirect_router(443);
    let (_, headers, _) = send(&router, request("/", &[("host", "[fd99::100]:80")])).await;
    assert_eq!(text(&headers, header::LOCATION), "https://[fd99::100]/");
    let (status, _, _) = send(&router, request("/healthz", &[])).await;
    assert_eq!(status, StatusCode::OK);
}

/// The app over a real loopback socket, with the server loop and limits `lb-web` runs with
/// (short timeouts from `[limits]`): half-sent requests held by the hundred do not keep a new
/// client from `/healthz` or a static file, and are closed when the header timeout ends.
#[tokio::test]
async fn half_sent_requests_over_a_socket_are_closed_and_do_not_lock_clients_out() {
    use std::time::{Duration, Instant};
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::{TcpListener, TcpStream},
    };

    let (_site, router) = site("slowloris");
    let limits = config::parse(
        "server_name = \"t1\"\n[http]\nlisten = [\"127.0.0.1:0\"]\n[limits]\nmax_connections = 32\nheader_read_timeout_ms = 400\nidle_timeout_ms = 400\n",
    )
    .and_then(|c| c.limits.for_listeners(1, 20_000))
    .unwrap_or_else(|e| panic!("{e:#}"));
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    tokio::spawn(lb_serve::serve(listener, router, limits, None));

    // Ten times the limit; the most recent 32 are still open when the client comes.
    let mut held = Vec::new();
    for _ in 0..320 {
        let mut stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let _ = stream
            .write_all(b"GET / HTTP/1.1\r\nHost: t1\r\nX-A: ")
            .await;
        held.push(stream);
    }
    let opened = Instant::now();
    for path in ["/healthz", "/index.html"] {
        let mut client = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let request = format!("GET {path} HTTP/1.1\r\nHost: t1\r\nConnection: close\r\n\r\n");
        client
            .write_all(request.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answer))
            .await
            .unwrap_or_else(|_| panic!("{path}: no answer while half-sent requests were held"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(
            answer.starts_with(b"HTTP/1.1 200 OK"),
            "{path}: {}",
            String::from_utf8_lossy(&answer)
        );
    }
    // Every held connection is closed (shed for a newer one, or by the header timeout).
    let mut buf = [0u8; 512];
    for stream in &mut held {
        let closed = tokio::time::timeout(Duration::from_secs(3), async {
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        })
        .await;
        assert!(closed.is_ok(), "a half-sent request was open after 3 s");
    }
    let took = opened.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(3),
        "the last half-sent requests were closed after {took:?}, not at the 400 ms header timeout"
    );
}
