//! Sockets inside a lab's network namespace, opened from this process: a thread enters the
//! namespace (setns), creates the socket and exits; the socket stays in that namespace. Lets a
//! test or the demo hold one real, long-lived TCP connection across agent restarts.
use std::{
    io::{self, BufReader, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use crate::load;

/// Connects to `addr` from inside network namespace `ns` (a name under /run/netns).
pub fn connect_in(ns: &str, addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    load::in_netns(ns, || {
        let stream = TcpStream::connect_timeout(&addr, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        Ok(stream)
    })
}

/// One HTTP/1.1 keep-alive `GET /` on an open connection; returns the body (Content-Length framed).
pub fn keep_alive_get(stream: &mut TcpStream, host: &str) -> io::Result<String> {
    keep_alive_get_path(stream, host, "/")
}

/// [`keep_alive_get`] of `path`.
pub fn keep_alive_get_path(stream: &mut TcpStream, host: &str, path: &str) -> io::Result<String> {
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n\r\n").as_bytes())?;
    // One request at a time: this reader cannot buffer any part of a next answer.
    load::read_keep_alive_answer(&mut BufReader::new(stream))
}
