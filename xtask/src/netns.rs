//! Sockets inside a lab's network namespace, opened from this process: a thread enters the
//! namespace (setns), creates the socket and exits; the socket stays in that namespace. Lets a
//! test or the demo hold one real, long-lived TCP connection across agent restarts.
use std::{
    io,
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use crate::{http, load};

/// Bound of a keep-alive GET on a stream that has no read timeout of its own.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Connects to `addr` from inside network namespace `ns` (a name under /run/netns).
pub fn connect_in(ns: &str, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    load::in_netns(ns, || {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(stream)
    })
}

/// One HTTP/1.1 keep-alive `GET /` on an open connection; the body of its 200 answer, trimmed.
pub fn keep_alive_get(stream: &mut TcpStream, host: &str) -> io::Result<String> {
    keep_alive_get_path(stream, host, "/")
}

/// [`keep_alive_get`] of `path`, bounded by the stream's read timeout (as [`connect_in`] sets).
pub fn keep_alive_get_path(stream: &mut TcpStream, host: &str, path: &str) -> io::Result<String> {
    let timeout = stream.read_timeout()?.unwrap_or(DEFAULT_TIMEOUT);
    load::get_ok(
        &http::Client::new()?,
        stream,
        http::get(host, path)?,
        timeout,
    )
}
