//! One HTTP/1.1 request per connection (`Connection: close`) through hyper's client, on a
//! stream the caller opened (TCP, or TLS for HTTPS checks). Used by health checks and the CLI.
use std::{future::poll_fn, pin::pin};

use anyhow::{anyhow, Context as _, Result};
use http_body_util::{BodyExt as _, Full, LengthLimitError, Limited};
use hyper::{
    body::Bytes,
    client::conn::http1,
    header::{HeaderMap, HeaderName, HeaderValue, CONNECTION, HOST, USER_AGENT},
    Method,
};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};

pub struct Request<'a> {
    pub method: &'a str,
    /// `Host` header value.
    pub host: &'a str,
    pub path: &'a str,
    pub headers: &'a [(&'a str, String)],
    pub body: Option<&'a [u8]>,
    /// Largest response body accepted.
    pub max_response: usize,
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends `request` on `stream` and reads the whole response. The connection is driven inside
/// this future (not spawned): a caller's timeout that drops it closes the connection too.
pub async fn send<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    request: &Request<'_>,
) -> Result<Response> {
    let request = build(request)?;
    let max_response = request.1;
    let (mut sender, mut connection) = http1::handshake(TokioIo::new(stream))
        .await
        .context("starting HTTP/1.1")?;
    let mut exchange = pin!(async move {
        let response = sender
            .send_request(request.0)
            .await
            .context("sending the request")?;
        let (head, body) = response.into_parts();
        let body = Limited::new(body, max_response)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<LengthLimitError>() {
                    anyhow!("response larger than {max_response} bytes")
                } else {
                    anyhow!("reading the response: {e}")
                }
            })?
            .to_bytes();
        Ok(Response {
            status: head.status.as_u16(),
            headers: head.headers,
            body,
        })
    });
    tokio::select! {
        biased;
        response = &mut exchange => response,
        // The server closed (or the connection failed): what arrived is still read out.
        ended = poll_fn(|cx| connection.poll_without_shutdown(cx)) => match exchange.await {
            Ok(response) => Ok(response),
            Err(e) => match ended {
                Err(ended) => Err(e.context(ended.to_string())),
                Ok(()) => Err(e),
            },
        },
    }
}

/// The hyper request (with `Host`, `Connection: close`, `User-Agent`) and the size limit.
fn build(request: &Request<'_>) -> Result<(hyper::Request<Full<Bytes>>, usize)> {
    let method =
        Method::from_bytes(request.method.as_bytes()).context("not an HTTP method name")?;
    let mut builder = hyper::Request::builder()
        .method(method)
        .uri(request.path)
        .header(HOST, request.host)
        .header(CONNECTION, "close")
        .header(USER_AGENT, concat!("lb/", env!("CARGO_PKG_VERSION")));
    for (name, value) in request.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .with_context(|| format!("bad header name `{name}`"))?;
        let value = HeaderValue::from_str(value)
            .with_context(|| format!("bad value for header `{name}`"))?;
        builder = builder.header(name, value);
    }
    let body = Full::new(Bytes::copy_from_slice(request.body.unwrap_or_default()));
    let built = builder
        .body(body)
        .with_context(|| format!("bad request {} {}", request.method, request.path))?;
    Ok((built, request.max_response))
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use super::*;

    const GET: Request<'static> = Request {
        method: "GET",
        host: "example",
        path: "/healthz",
        headers: &[],
        body: None,
        max_response: 64,
    };

    /// Serves `answer` to one request over an in-memory pipe; returns the client's result and
    /// the request the server saw.
    async fn exchange(request: &Request<'_>, answer: &'static [u8]) -> (Result<Response>, String) {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        let server = async move {
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                match server.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
            let _ = server.write_all(answer).await;
            drop(server);
            String::from_utf8_lossy(&seen).into_owned()
        };
        let (result, seen) = tokio::join!(send(client, request), server);
        (result, seen)
    }

    #[tokio::test]
    async fn content_length_and_chunked_bodies() {
        let (response, seen) = exchange(
            &GET,
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX: y\r\n\r\nhello",
        )
        .await;
        let response = response.unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(
            (response.status, &response.body[..], response.header("x")),
            (200, &b"hello"[..], Some("y"))
        );
        let seen = seen.to_ascii_lowercase();
        assert!(seen.starts_with("get /healthz http/1.1\r\n"), "{seen}");
        assert!(seen.contains("\r\nhost: example\r\n"), "{seen}");
        assert!(seen.contains("\r\nconnection: close\r\n"), "{seen}");

        let (response, _) = exchange(
            &GET,
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2;x=1\r\nde\r\n0\r\n\r\n",
        )
        .await;
        let response = response.unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!((response.status, &response.body[..]), (404, &b"abcde"[..]));
    }

    #[tokio::test]
    async fn garbage_cut_short_and_too_large_are_errors_not_panics() {
        for answer in [
            &b""[..],
            b"SSH-2.0-OpenSSH\r\n\r\n",
            b"HTTP/1.1 abc\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789",
        ] {
            let (response, _) = exchange(&GET, answer).await;
            assert!(
                response.is_err(),
                "{}: {response:?}",
                String::from_utf8_lossy(answer)
            );
        }
    }

    #[tokio::test]
    async fn a_body_and_headers_are_sent() {
        let request = Request {
            method: "POST",
            path: "/api/v1/x",
            headers: &[("Authorization", "Bearer t".to_string())],
            body: Some(b"{}"),
            ..GET
        };
        let (response, seen) = exchange(&request, b"HTTP/1.1 204 No Content\r\n\r\n").await;
        assert_eq!(response.map(|r| r.status).ok(), Some(204));
        let seen = seen.to_ascii_lowercase();
        assert!(seen.starts_with("post /api/v1/x http/1.1\r\n"), "{seen}");
        assert!(seen.contains("\r\nauthorization: bearer t\r\n"), "{seen}");
        assert!(seen.contains("\r\ncontent-length: 2\r\n"), "{seen}");
    }
}
