//! Blocking HTTP/1.1 through hyper's client, on a TCP connection the caller opened (inside a
//! lab namespace, or from a chosen source address and port). The connection is borrowed, not
//! consumed: hyper works on a duplicate of the socket and never shuts it down, so a kept-alive
//! connection serves the next request, and the caller decides who closes first.
use std::{
    future::poll_fn,
    io,
    net::TcpStream,
    pin::pin,
    time::{Duration, Instant},
};

use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::{
    body::Bytes,
    client::conn::http1,
    header::{HeaderMap, HeaderValue, CONNECTION, CONTENT_TYPE, HOST},
};
use hyper_util::rt::TokioIo;

/// Largest answer body read (the agent's flow pages and chromedriver's screenshots fit).
pub const MAX_BODY: usize = 64 * 1024 * 1024;

/// An answer: status, headers, body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    /// A header's value (names are case-insensitive); `None` when absent or not text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A request: `method` on `path` with a `Host` header. Add headers and a body with the
/// builder's own methods, or use [`get`] / [`json`].
pub fn request(method: &str, host: &str, path: &str) -> hyper::http::request::Builder {
    hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, host)
}

/// `GET path` (kept alive unless the server closes).
pub fn get(host: &str, path: &str) -> io::Result<hyper::Request<Full<Bytes>>> {
    finish(request("GET", host, path), Bytes::new())
}

/// `GET path` with `Connection: close`: the server closes after its answer.
pub fn get_close(host: &str, path: &str) -> io::Result<hyper::Request<Full<Bytes>>> {
    get(host, path).map(close)
}

/// `request` with `Connection: close`.
pub fn close(mut request: hyper::Request<Full<Bytes>>) -> hyper::Request<Full<Bytes>> {
    request
        .headers_mut()
        .insert(CONNECTION, HeaderValue::from_static("close"));
    request
}

/// `method path` with a JSON body (or none).
pub fn json(
    method: &str,
    host: &str,
    path: &str,
    body: Option<&serde_json::Value>,
) -> io::Result<hyper::Request<Full<Bytes>>> {
    match body {
        Some(body) => finish(
            request(method, host, path).header(CONTENT_TYPE, "application/json; charset=utf-8"),
            Bytes::from(body.to_string()),
        ),
        None => finish(request(method, host, path), Bytes::new()),
    }
}

fn finish(
    builder: hyper::http::request::Builder,
    body: Bytes,
) -> io::Result<hyper::Request<Full<Bytes>>> {
    builder
        .body(Full::new(body))
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("bad request: {e}")))
}

/// A current-thread tokio runtime for hyper; one per thread that sends many requests.
pub struct Client {
    runtime: tokio::runtime::Runtime,
}

impl Client {
    pub fn new() -> io::Result<Client> {
        Ok(Client {
            runtime: current_thread()?,
        })
    }

    /// Sends `request` on `stream` and reads the whole answer, all within `timeout`. The
    /// stream stays open and blocking; nothing of a next answer is read.
    pub fn send(
        &self,
        stream: &TcpStream,
        request: hyper::Request<Full<Bytes>>,
        timeout: Duration,
    ) -> io::Result<Response> {
        let what = format!("{} {}", request.method(), request.uri());
        let duplicate = stream.try_clone()?;
        // Non-blocking mode belongs to the socket, so the caller's stream gets it too: restored
        // below whatever happens.
        duplicate.set_nonblocking(true)?;
        let result = self.runtime.block_on(async {
            let io = tokio::net::TcpStream::from_std(duplicate)?;
            tokio::time::timeout(timeout, exchange(io, request))
                .await
                .unwrap_or_else(|_| Err(timed_out(timeout)))
        });
        let restored = stream.set_nonblocking(false);
        let response = result.map_err(|e| io::Error::new(e.kind(), format!("{what}: {e}")))?;
        restored?;
        Ok(response)
    }
}

/// [`Client::send`] with a runtime of its own, for a single request.
pub fn send(
    stream: &TcpStream,
    request: hyper::Request<Full<Bytes>>,
    timeout: Duration,
) -> io::Result<Response> {
    Client::new()?.send(stream, request, timeout)
}

/// A kept-alive connection that owns its socket: one handshake, then requests one after
/// another. For loops that time each request, where per-request setup would show.
pub struct KeptAlive {
    runtime: tokio::runtime::Runtime,
    sender: http1::SendRequest<Full<Bytes>>,
}

impl KeptAlive {
    pub fn new(stream: TcpStream) -> io::Result<KeptAlive> {
        let runtime = current_thread()?;
        stream.set_nonblocking(true)?;
        let sender = runtime.block_on(async {
            let io = tokio::net::TcpStream::from_std(stream)?;
            let (sender, connection) = http1::handshake(TokioIo::new(io))
                .await
                .map_err(io::Error::other)?;
            // Runs whenever this runtime does, that is during `send`; ends when the server closes.
            tokio::spawn(async move {
                let _ = connection.await;
            });
            Ok::<_, io::Error>(sender)
        })?;
        Ok(KeptAlive { runtime, sender })
    }

    /// Sends `request` and reads the whole answer within `timeout`. After an error, or an
    /// answer with `Connection: close`, open a new one.
    pub fn send(
        &mut self,
        request: hyper::Request<Full<Bytes>>,
        timeout: Duration,
    ) -> io::Result<Response> {
        let sender = &mut self.sender;
        self.runtime.block_on(async {
            tokio::time::timeout(timeout, async {
                sender.ready().await.map_err(io::Error::other)?;
                let answer = sender
                    .send_request(request)
                    .await
                    .map_err(io::Error::other)?;
                read_answer(answer).await
            })
            .await
            .unwrap_or_else(|_| Err(timed_out(timeout)))
        })
    }
}

fn current_thread() -> io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
}

fn timed_out(timeout: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!("no complete answer within {} ms", timeout.as_millis()),
    )
}

/// Reads until the peer closes (or `timeout`): after a `Connection: close` answer, so that
/// the server closes first and keeps the TIME_WAIT.
pub fn wait_for_close(stream: &TcpStream, timeout: Duration) -> io::Result<()> {
    use std::io::Read as _;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 1024];
    let mut reader = stream;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the server did not close the connection",
            ));
        }
        stream.set_read_timeout(Some(left))?;
        if reader.read(&mut buf)? == 0 {
            return Ok(());
        }
    }
}

/// One request and its answer on a connection, driven here (not spawned), without ever
/// shutting the socket down.
async fn exchange(
    io: tokio::net::TcpStream,
    request: hyper::Request<Full<Bytes>>,
) -> io::Result<Response> {
    let (mut sender, mut connection) = http1::handshake(TokioIo::new(io))
        .await
        .map_err(io::Error::other)?;
    let mut answer = pin!(async move {
        let response = sender
            .send_request(request)
            .await
            .map_err(io::Error::other)?;
        read_answer(response).await
    });
    tokio::select! {
        biased;
        response = &mut answer => response,
        // The server closed (or the connection failed): what arrived is still read out.
        ended = poll_fn(|cx| connection.poll_without_shutdown(cx)) => match answer.await {
            Ok(response) => Ok(response),
            Err(e) => Err(match ended {
                Err(ended) => io::Error::new(e.kind(), format!("{e} ({ended})")),
                Ok(()) => e,
            }),
        },
    }
}

/// The status, headers and whole body (at most [`MAX_BODY`] bytes) of an answer.
async fn read_answer(answer: hyper::Response<hyper::body::Incoming>) -> io::Result<Response> {
    let (head, body) = answer.into_parts();
    let body = Limited::new(body, MAX_BODY)
        .collect()
        .await
        .map_err(|e| {
            if e.is::<LengthLimitError>() {
                io::Error::other(format!("answer larger than {MAX_BODY} bytes"))
            } else {
                io::Error::other(format!("reading the answer: {e}"))
            }
        })?
        .to_bytes();
    Ok(Response {
        status: head.status.as_u16(),
        headers: head.headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        net::TcpListener,
    };

    use super::*;

    /// A server on loopback that answers each request it reads with the next of `answers`,
    /// keeping the connection open (unless told to close after the last one).
    fn serve(
        answers: Vec<&'static [u8]>,
        close: bool,
    ) -> (std::net::SocketAddr, std::thread::JoinHandle<Vec<String>>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().expect("accept");
            let mut seen = Vec::new();
            for answer in answers {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => return seen,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                seen.push(String::from_utf8_lossy(&request).into_owned());
                let _ = stream.write_all(answer);
            }
            if !close {
                // Hold the connection until the client goes.
                let _ = stream.read(&mut [0u8; 16]);
            }
            seen
        });
        (addr, server)
    }

    #[test]
    fn two_answers_on_one_kept_alive_connection() {
        let (addr, server) = serve(
            vec![
                b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nweb1\n",
                b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n3\r\nabc\r\n2;x=y\r\nde\r\n0\r\n\r\n",
            ],
            false,
        );
        let stream = TcpStream::connect(addr).expect("connect");
        let client = Client::new().expect("runtime");
        let timeout = Duration::from_secs(5);
        let first = client
            .send(&stream, get("h", "/").expect("request"), timeout)
            .expect("first");
        assert_eq!((first.status, first.text()), (200, "web1\n".to_string()));
        let second = client
            .send(&stream, get("h", "/x").expect("request"), timeout)
            .expect("second");
        assert_eq!(
            (second.status, second.text(), second.header("x-a")),
            (404, "abcde".to_string(), Some("b"))
        );
        drop(stream);
        let seen = server.join().expect("server");
        assert_eq!(seen.len(), 2);
        assert!(seen[1].starts_with("GET /x HTTP/1.1\r\n"), "{}", seen[1]);
        assert!(
            seen[1].to_ascii_lowercase().contains("\r\nhost: h\r\n"),
            "{}",
            seen[1]
        );
    }

    #[test]
    fn cut_garbled_or_late_answers_are_errors() {
        for answer in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nweb"[..],
            b"garbage\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Le",
        ] {
            let (addr, server) = serve(vec![answer], true);
            let stream = TcpStream::connect(addr).expect("connect");
            let result = send(
                &stream,
                get("h", "/").expect("request"),
                Duration::from_secs(5),
            );
            assert!(
                result.is_err(),
                "{}: {result:?}",
                String::from_utf8_lossy(answer)
            );
            drop(stream);
            let _ = server.join();
        }
        // The server holds the connection without a complete answer: the timeout ends it.
        let (addr, server) = serve(
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nweb"],
            false,
        );
        let stream = TcpStream::connect(addr).expect("connect");
        let started = Instant::now();
        let result = send(
            &stream,
            get("h", "/").expect("request"),
            Duration::from_millis(300),
        );
        assert_eq!(
            result.map_err(|e| e.kind()).err(),
            Some(io::ErrorKind::TimedOut)
        );
        assert!(started.elapsed() < Duration::from_secs(3));
        drop(stream);
        let _ = server.join();
    }

    #[test]
    fn a_kept_alive_connection_serves_requests_until_the_server_closes() {
        let (addr, server) = serve(
            vec![
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nweb1\n",
                b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nweb2\n",
            ],
            true,
        );
        let stream = TcpStream::connect(addr).expect("connect");
        let mut connection = KeptAlive::new(stream).expect("handshake");
        let timeout = Duration::from_secs(5);
        let first = connection
            .send(get("h", "/").expect("request"), timeout)
            .expect("first");
        let second = connection
            .send(get("h", "/").expect("request"), timeout)
            .expect("second");
        assert_eq!(
            (first.text(), second.text(), second.header("connection")),
            ("web1\n".to_string(), "web2\n".to_string(), Some("close"))
        );
        let started = Instant::now();
        assert!(connection
            .send(get("h", "/").expect("request"), timeout)
            .is_err());
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "closed, not timed out"
        );
        assert_eq!(server.join().expect("server").len(), 2);
    }

    #[test]
    fn after_connection_close_the_server_closes_first() {
        let (addr, server) = serve(
            vec![b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nweb2\n"],
            true,
        );
        let stream = TcpStream::connect(addr).expect("connect");
        let timeout = Duration::from_secs(5);
        let answer = send(&stream, get_close("h", "/").expect("request"), timeout).expect("answer");
        assert_eq!(answer.text(), "web2\n");
        wait_for_close(&stream, timeout).expect("closed by the server");
        let seen = server.join().expect("server");
        assert!(seen[0]
            .to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"));
    }
}
