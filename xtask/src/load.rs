//! HTTP from inside a lab's network namespaces, without a subprocess per request: a load
//! generator whose threads enter the client namespace (setns) and open a new TCP connection per
//! request (so the load balancer's round robin spreads them), recording when each request
//! started and how it ended; one kept-alive connection; and plain GETs on the agent's API.
//! HTTP itself is hyper's client ([`crate::http`]) on those sockets.
use std::{
    fs::File,
    io,
    net::{SocketAddr, TcpStream},
    os::fd::AsRawFd as _,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use crate::http;

/// Moves the calling thread into network namespace `ns` (a name under /run/netns). Sockets it
/// opens afterwards belong to that namespace, also when used from other threads.
pub fn enter_netns(ns: &str) -> io::Result<()> {
    let netns = File::open(format!("/run/netns/{ns}"))?;
    // SAFETY: setns on a namespace file we opened; it moves only the calling thread.
    if unsafe { libc::setns(netns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Runs `f` on a short-lived thread inside namespace `ns`.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                enter_netns(ns)?;
                f()
            })
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
    })
}

/// How one request ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// 200 with a body: the body (the web servers answer with their host name).
    Ok(String),
    /// Anything else: what went wrong.
    Failed(String),
}

/// One request of a load run.
#[derive(Debug, Clone)]
pub struct Sample {
    /// When it started (its connect), from the start of the run.
    pub started: Duration,
    pub took: Duration,
    pub outcome: Outcome,
}

impl Sample {
    pub fn failed(&self) -> bool {
        matches!(self.outcome, Outcome::Failed(_))
    }
}

#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// The network namespace the requests come from.
    pub netns: String,
    pub target: SocketAddr,
    /// `Host:` header.
    pub host: String,
    /// Concurrent connections at most (one thread each).
    pub workers: usize,
    /// Requests per second over all workers (each worker paces itself; a slow answer delays
    /// only its own worker).
    pub rate: u32,
    /// Bound of connect, and of the whole answer.
    pub timeout: Duration,
}

/// A running load; [`Load::finish`] stops it and returns every request.
pub struct Load {
    started: Instant,
    stop: Arc<AtomicBool>,
    workers: Vec<JoinHandle<io::Result<Vec<Sample>>>>,
}

impl Load {
    pub fn start(options: &LoadOptions) -> Result<Load> {
        if options.workers == 0 || options.rate == 0 {
            bail!("a load needs at least one worker and a rate above 0");
        }
        let started = Instant::now();
        let stop = Arc::new(AtomicBool::new(false));
        let gap = Duration::from_secs_f64(options.workers as f64 / f64::from(options.rate));
        let mut workers = Vec::new();
        for index in 0..options.workers {
            let options = options.clone();
            let stop = stop.clone();
            // Workers start spread over one gap, so requests do not come in bursts.
            let offset = gap.mul_f64(index as f64 / options.workers as f64);
            let worker = std::thread::Builder::new()
                .name(format!("load-{index}"))
                .spawn(move || {
                    enter_netns(&options.netns)?;
                    let client = http::Client::new()?;
                    let mut samples = Vec::new();
                    let mut next = started + offset;
                    while !stop.load(Ordering::Relaxed) {
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        }
                        next += gap;
                        let begin = Instant::now();
                        let outcome = match one_request(&client, &options) {
                            Ok(body) => Outcome::Ok(body),
                            Err(e) => Outcome::Failed(e.to_string()),
                        };
                        samples.push(Sample {
                            started: begin - started,
                            took: begin.elapsed(),
                            outcome,
                        });
                    }
                    Ok(samples)
                })
                .context("starting a load thread")?;
            workers.push(worker);
        }
        Ok(Load {
            started,
            stop,
            workers,
        })
    }

    /// When the run started: [`Sample::started`] counts from here.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Stops the workers (each finishes its request in flight) and returns every request, by
    /// start time.
    pub fn finish(mut self) -> Result<LoadReport> {
        self.stop.store(true, Ordering::Relaxed);
        let mut samples = Vec::new();
        for worker in std::mem::take(&mut self.workers) {
            let part = worker
                .join()
                .map_err(|_| anyhow::anyhow!("a load thread panicked"))?;
            samples.extend(part.context("a load thread could not enter the client namespace")?);
        }
        samples.sort_by_key(|s| s.started);
        Ok(LoadReport { samples })
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        // A load abandoned on an error path stops too (its threads end after their request).
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[derive(Debug, Clone)]
pub struct LoadReport {
    pub samples: Vec<Sample>,
}

impl LoadReport {
    pub fn requests(&self) -> usize {
        self.samples.len()
    }

    pub fn failed(&self) -> usize {
        self.samples.iter().filter(|s| s.failed()).count()
    }

    /// Failed requests that started at or after `moment` (from the start of the run).
    pub fn failed_from(&self, moment: Duration) -> usize {
        self.samples
            .iter()
            .filter(|s| s.failed() && s.started >= moment)
            .count()
    }

    /// Answers by the body (the serving host's name).
    pub fn served_by(&self, name: &str) -> usize {
        self.samples
            .iter()
            .filter(|s| s.outcome == Outcome::Ok(name.to_string()))
            .count()
    }

    /// Up to `limit` failures, for messages: when, and why.
    pub fn first_failures(&self, limit: usize) -> Vec<String> {
        self.samples
            .iter()
            .filter_map(|s| match &s.outcome {
                Outcome::Failed(why) => Some(format!("at {} ms: {why}", s.started.as_millis())),
                Outcome::Ok(_) => None,
            })
            .take(limit)
            .collect()
    }
}

/// One `GET /` on a new connection, closed by the server after the answer.
fn one_request(client: &http::Client, options: &LoadOptions) -> io::Result<String> {
    let deadline = Instant::now() + options.timeout;
    let stream = TcpStream::connect_timeout(&options.target, options.timeout)?;
    closed_by_server(client, &stream, &options.host, deadline)
}

/// A TCP connection from an explicit source address and port (`SO_REUSEADDR` set, so a port
/// whose last connection the server closed can be bound again at once; a port still in
/// TIME_WAIT on this side fails with `AddrNotAvailable` at connect). Blocking, with `timeout`
/// on the connect and on later reads and writes.
pub fn connect_from(
    source: std::net::SocketAddrV4,
    target: std::net::SocketAddrV4,
    timeout: Duration,
) -> io::Result<TcpStream> {
    use std::os::fd::FromRawFd as _;
    fn sockaddr(a: std::net::SocketAddrV4) -> libc::sockaddr_in {
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: a.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(a.ip().octets()),
            },
            sin_zero: [0; 8],
        }
    }
    let check = |rc: libc::c_int| {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    };
    // SAFETY: plain socket calls on a descriptor this function owns; the TcpStream takes it over
    // (and closes it on every error path below).
    unsafe {
        let fd = check(libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
        ))?;
        let stream = TcpStream::from_raw_fd(fd);
        let one: libc::c_int = 1;
        check(libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        ))?;
        // The kernel bounds a blocking connect by the send timeout.
        stream.set_write_timeout(Some(timeout))?;
        stream.set_read_timeout(Some(timeout))?;
        let src = sockaddr(source);
        let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
        check(libc::bind(
            fd,
            (&src as *const libc::sockaddr_in).cast(),
            len,
        ))?;
        let dst = sockaddr(target);
        check(libc::connect(
            fd,
            (&dst as *const libc::sockaddr_in).cast(),
            len,
        ))?;
        Ok(stream)
    }
}

/// `GET /` with `Connection: close` on an open connection: the server closes first (it keeps
/// the TIME_WAIT), then this side. The body of a 200 answer.
pub fn request_closed_by_server(
    stream: TcpStream,
    host: &str,
    timeout: Duration,
) -> io::Result<String> {
    closed_by_server(
        &http::Client::new()?,
        &stream,
        host,
        Instant::now() + timeout,
    )
}

fn closed_by_server(
    client: &http::Client,
    stream: &TcpStream,
    host: &str,
    deadline: Instant,
) -> io::Result<String> {
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let body = get_ok(client, stream, http::get_close(host, "/")?, left())?;
    http::wait_for_close(stream, left())?;
    Ok(body)
}

/// Sends `request` on `stream`; the answer's body, trimmed, when it is a 200 with a body.
pub fn get_ok(
    client: &http::Client,
    stream: &TcpStream,
    request: hyper::Request<http_body_util::Full<hyper::body::Bytes>>,
    timeout: Duration,
) -> io::Result<String> {
    let answer = client.send(stream, request, timeout)?;
    if answer.status != 200 {
        return Err(io::Error::other(format!("HTTP status {}", answer.status)));
    }
    let body = answer.text().trim().to_string();
    if body.is_empty() {
        return Err(io::Error::other("empty body"));
    }
    Ok(body)
}

/// One TCP connection opened inside a namespace and kept open, for HTTP/1.1 keep-alive GETs.
pub struct KeepAlive {
    stream: TcpStream,
    client: http::Client,
    host: String,
    timeout: Duration,
}

impl KeepAlive {
    pub fn connect(
        netns: &str,
        target: SocketAddr,
        host: &str,
        timeout: Duration,
    ) -> io::Result<KeepAlive> {
        let stream = in_netns(netns, || TcpStream::connect_timeout(&target, timeout))?;
        Ok(KeepAlive {
            stream,
            client: http::Client::new()?,
            host: host.to_string(),
            timeout,
        })
    }

    /// `GET /` on the open connection; the body of its 200 answer, trimmed.
    pub fn get(&mut self) -> io::Result<String> {
        get_ok(
            &self.client,
            &self.stream,
            http::get(&self.host, "/")?,
            self.timeout,
        )
    }
}

/// `GET path` on an HTTP API inside `netns` (a new connection, closed after the answer); the
/// status and the body.
pub fn api_get(
    netns: &str,
    api: SocketAddr,
    path: &str,
    timeout: Duration,
) -> Result<(u16, String)> {
    let what = || format!("GET http://{api}{path} in namespace {netns}");
    let stream =
        in_netns(netns, || TcpStream::connect_timeout(&api, timeout)).with_context(what)?;
    let answer = http::send(&stream, http::get_close(&api.to_string(), path)?, timeout)
        .with_context(what)?;
    Ok((answer.status, answer.text()))
}

/// [`api_get`] of a JSON document that must answer 200.
pub fn api_json(netns: &str, api: SocketAddr, path: &str) -> Result<serde_json::Value> {
    let (status, body) = api_get(netns, api, path, Duration::from_secs(2))?;
    if status != 200 {
        bail!("GET {path}: HTTP {status}: {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("GET {path}: not JSON: {body}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_are_counted_from_a_moment() {
        let sample = |ms, outcome| Sample {
            started: Duration::from_millis(ms),
            took: Duration::ZERO,
            outcome,
        };
        let report = LoadReport {
            samples: vec![
                sample(10, Outcome::Ok("web1".into())),
                sample(20, Outcome::Failed("refused".into())),
                sample(30, Outcome::Failed("reset".into())),
                sample(40, Outcome::Ok("web2".into())),
            ],
        };
        assert_eq!((report.requests(), report.failed()), (4, 2));
        assert_eq!(report.failed_from(Duration::from_millis(30)), 1);
        assert_eq!(report.failed_from(Duration::from_millis(31)), 0);
        assert_eq!((report.served_by("web1"), report.served_by("web2")), (1, 1));
    }
}
