//! A TCP forwarder from the host into a network namespace: it listens on a host address and,
//! per connection, connects from inside the namespace (a thread that `setns()`es into it) and
//! copies both ways. Lets a browser on the host reach the agent's API on the lab's lb loopback.
use std::{
    fs::File,
    io,
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result};

/// How long connecting inside the namespace may take before the host connection is closed.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// A running forwarder; dropping it stops accepting (open connections finish on their own).
#[derive(Debug)]
pub struct Forwarder {
    local: SocketAddr,
    stop: Arc<AtomicBool>,
    acceptor: Option<JoinHandle<()>>,
}

impl Forwarder {
    /// Listens on `listen` (port 0: any free port) and forwards every connection to `target`
    /// as seen from network namespace `netns` (a path such as `/run/netns/NAME`).
    /// Fails when the port is taken or the namespace cannot be opened.
    pub fn start(listen: SocketAddr, netns: &Path, target: SocketAddr) -> Result<Forwarder> {
        // Opened once up front, so a missing namespace is an error now rather than per connection.
        let namespace = Arc::new(
            File::open(netns)
                .with_context(|| format!("opening network namespace {}", netns.display()))?,
        );
        let listener =
            TcpListener::bind(listen).with_context(|| format!("listening on {listen}"))?;
        let local = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let netns = netns.to_path_buf();
        let acceptor = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name(format!("forward {local}"))
                .spawn(move || accept_loop(listener, &stop, &namespace, &netns, target))
                .context("starting the forwarder thread")?
        };
        Ok(Forwarder {
            local,
            stop,
            acceptor: Some(acceptor),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the blocking accept() so the thread sees the flag.
        let _ = TcpStream::connect_timeout(&self.local, Duration::from_secs(1));
        if let Some(acceptor) = self.acceptor.take() {
            let _ = acceptor.join();
        }
    }
}

fn accept_loop(
    listener: TcpListener,
    stop: &AtomicBool,
    namespace: &Arc<File>,
    netns: &Path,
    target: SocketAddr,
) {
    for incoming in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let client = match incoming {
            Ok(client) => client,
            Err(e) => {
                eprintln!("forward: accept on {:?}: {e}", listener.local_addr());
                // Out of descriptors and the like: do not spin.
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let namespace = namespace.clone();
        let netns: PathBuf = netns.to_path_buf();
        let spawned = std::thread::Builder::new()
            .name("forward conn".into())
            .spawn(move || {
                if let Err(e) = serve(client, &namespace, target) {
                    eprintln!("forward: to {target} in {}: {e}", netns.display());
                }
            });
        if let Err(e) = spawned {
            eprintln!("forward: cannot start a connection thread: {e}");
        }
    }
}

/// One connection: this thread moves into the namespace, connects, and copies both ways.
fn serve(client: TcpStream, namespace: &File, target: SocketAddr) -> io::Result<()> {
    // SAFETY: setns on a namespace file we hold open; only this connection's thread moves.
    if unsafe { libc::setns(namespace.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let server = TcpStream::connect_timeout(&target, CONNECT_TIMEOUT)?;
    let _ = server.set_nodelay(true);
    let _ = client.set_nodelay(true);
    let (client_read, server_write) = (client.try_clone()?, server.try_clone()?);
    let upstream = std::thread::Builder::new()
        .name("forward up".into())
        .spawn(move || copy_then_close(client_read, server_write))?;
    copy_then_close(server, client);
    let _ = upstream.join();
    Ok(())
}

/// Copies until `from` ends, then half-closes `to` so its peer sees the end too.
fn copy_then_close(mut from: TcpStream, mut to: TcpStream) {
    let _ = io::copy(&mut from, &mut to);
    let _ = to.shutdown(Shutdown::Write);
    let _ = from.shutdown(Shutdown::Read);
}

#[cfg(test)]
mod tests {
    use std::io::{Read as _, Write as _};

    use super::*;

    /// Without root, setns into our own namespace still needs CAP_SYS_ADMIN: skip then.
    fn is_root() -> bool {
        // SAFETY: geteuid has no preconditions.
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn forwards_both_ways_and_half_closes() {
        if !is_root() {
            eprintln!("*** SKIPPED (needs root for setns): forwards_both_ways_and_half_closes ***");
            return;
        }
        // An echo server that answers once the client has finished sending.
        let server = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let target = server.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let echo = std::thread::spawn(move || {
            let (mut conn, _) = server.accept().unwrap_or_else(|e| panic!("{e}"));
            let mut got = Vec::new();
            conn.read_to_end(&mut got).unwrap_or_else(|e| panic!("{e}"));
            conn.write_all(&[b"echo: ".as_slice(), &got].concat())
                .unwrap_or_else(|e| panic!("{e}"));
        });
        let forwarder = Forwarder::start(
            "127.0.0.1:0".parse().unwrap_or_else(|e| panic!("{e}")),
            Path::new("/proc/self/ns/net"),
            target,
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        let mut conn = TcpStream::connect(forwarder.local_addr()).unwrap_or_else(|e| panic!("{e}"));
        conn.set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap_or_else(|e| panic!("{e}"));
        let payload = vec![b'x'; 200_000];
        conn.write_all(&payload).unwrap_or_else(|e| panic!("{e}"));
        conn.shutdown(Shutdown::Write)
            .unwrap_or_else(|e| panic!("{e}"));
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(answer.len(), payload.len() + 6);
        assert!(answer.starts_with(b"echo: xxx"));
        echo.join()
            .unwrap_or_else(|_| panic!("the echo server panicked"));
        drop(forwarder);
    }

    #[test]
    fn a_taken_port_and_a_missing_namespace_are_errors() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = taken.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let Err(error) = Forwarder::start(addr, Path::new("/proc/self/ns/net"), addr) else {
            panic!("bound a taken port")
        };
        assert!(
            format!("{error:#}").contains(&format!("listening on {addr}")),
            "{error:#}"
        );
        let Err(error) =
            Forwarder::start(addr, Path::new("/run/netns/lbt-ui-no-such-namespace"), addr)
        else {
            panic!("opened a namespace that does not exist")
        };
        assert!(
            format!("{error:#}").contains("opening network namespace"),
            "{error:#}"
        );
    }
}
