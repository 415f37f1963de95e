//! The limits over real loopback sockets, with short timeouts.
use std::time::Duration;

use axum::routing::get;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;

const LIMITS: Limits = Limits {
    header_read_timeout: Duration::from_millis(300),
    idle_timeout: Duration::from_millis(600),
    request_timeout: Duration::from_secs(5),
    max_connections: 16,
};

async fn start(limits: Limits) -> (SocketAddr, Arc<Stats>) {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    let app = Router::new().route("/healthz", get(|| async { "ok" }));
    let stats = Arc::new(Stats::default());
    tokio::spawn(serve_with_stats(listener, app, limits, None, stats.clone()));
    (addr, stats)
}

/// One GET on a new connection: the status line, or why not.
async fn get_healthz(addr: SocketAddr) -> Result<String, String> {
    let mut stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer))
        .await
        .map_err(|_| "no answer within 5 s".to_string())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&answer);
    Ok(text.lines().next().unwrap_or_default().to_string())
}

/// True when the server closed the connection (EOF or reset) within `within`.
async fn closed_within(stream: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(within, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0) | Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn half_sent_requests_are_closed_after_the_header_timeout() {
    let (addr, _) = start(LIMITS).await;
    let mut held = Vec::new();
    for _ in 0..8 {
        let mut stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        held.push(stream);
    }
    // Silent connections (no byte at all) count as half-sent too.
    held.push(
        TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let started = std::time::Instant::now();
    for stream in &mut held {
        assert!(
            closed_within(stream, Duration::from_secs(3)).await,
            "a half-sent request was still open after 3 s"
        );
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "closed before the header timeout: {took:?}"
    );
}

#[tokio::test]
async fn many_more_half_sent_requests_than_the_limit_do_not_lock_new_clients_out() {
    let (addr, stats) = start(Limits {
        header_read_timeout: Duration::from_secs(30),
        idle_timeout: Duration::from_secs(30),
        ..LIMITS
    })
    .await;
    // Ten times the limit, held for longer than this test runs.
    let mut held = Vec::new();
    for _ in 0..(LIMITS.max_connections * 10) {
        let mut stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await;
        held.push(stream);
    }
    for _ in 0..5 {
        assert_eq!(
            get_healthz(addr).await.as_deref(),
            Ok("HTTP/1.1 200 OK"),
            "a new client was not served while half-sent requests were held"
        );
    }
    assert!(stats.shed.load(Ordering::Relaxed) >= (LIMITS.max_connections * 9) as u64);
    drop(held);
}

#[tokio::test]
async fn an_answered_keep_alive_connection_is_closed_when_idle() {
    let (addr, _) = start(LIMITS).await;
    let mut stream = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut buf = [0u8; 512];
    let n = stream
        .read(&mut buf)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    assert!(closed_within(&mut stream, Duration::from_secs(3)).await);
}

#[tokio::test]
async fn when_every_connection_is_busy_the_new_one_is_refused_not_queued() {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    // A handler that never answers keeps its connection busy.
    let app = Router::new().route("/hang", get(std::future::pending::<&'static str>));
    let stats = Arc::new(Stats::default());
    let limits = Limits {
        max_connections: 2,
        ..LIMITS
    };
    tokio::spawn(serve_with_stats(listener, app, limits, None, stats.clone()));
    let mut busy = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        stream
            .write_all(b"GET /hang HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        busy.push(stream);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut extra = TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(closed_within(&mut extra, Duration::from_secs(2)).await);
    assert_eq!(stats.refused.load(Ordering::Relaxed), 1);
    assert_eq!(stats.shed.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn at_the_limit_a_request_stuck_longer_than_the_header_timeout_makes_room() {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
    // A POST whose body never comes keeps its connection busy, as a trickled body does.
    let app = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/upload",
            axum::routing::post(|body: axum::body::Bytes| async move { body.len().to_string() }),
        );
    let stats = Arc::new(Stats::default());
    let limits = Limits {
        max_connections: 2,
        ..LIMITS
    };
    tokio::spawn(serve_with_stats(listener, app, limits, None, stats.clone()));
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut stream = TcpStream::connect(addr)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        stream
            .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\nab")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        slow.push(stream);
    }
    tokio::time::sleep(LIMITS.header_read_timeout + Duration::from_millis(200)).await;
    assert_eq!(
        get_healthz(addr).await.as_deref(),
        Ok("HTTP/1.1 200 OK"),
        "a new client was refused while the only connections were stuck in their bodies"
    );
    assert!(stats.shed.load(Ordering::Relaxed) >= 1);
}
