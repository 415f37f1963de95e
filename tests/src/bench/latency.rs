//! Latency at one fixed request rate (`lb-bench latency`, run inside the client namespace).
//! wrk keeps 64 connections busy, so each target runs at its own saturation point and its p99
//! is the queueing of that point (on two vCPUs, every target's, web1's own included, lands at
//! the scheduler's time slice, ~3 ms). Here each connection sends HTTP/1.1 GETs (hyper's client,
//! one kept-alive connection each) on its own schedule (open loop) at a rate below every
//! target's capacity, so all targets carry the same load and the latency difference is what the
//! load balancer adds.
use std::{
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use xtask::http;

#[derive(Clone, Debug)]
pub struct Args {
    /// `http://host[:port]/path`.
    pub url: String,
    /// Requests per second, all connections together.
    pub rate: u32,
    pub seconds: f64,
    pub connections: u32,
}

/// A send later than this after its slot counts as late (reported; the slots after it are
/// caught up, so the rate holds unless the target cannot keep up).
const LATE: Duration = Duration::from_millis(1);
const TIMEOUT: Duration = Duration::from_secs(2);

struct Url {
    addr: SocketAddr,
    host: String,
    path: String,
}

fn parse_url(url: &str) -> Result<Url> {
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("{url}: only http:// URLs"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let with_port = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:80")
    };
    let addr = with_port
        .to_socket_addrs()
        .with_context(|| format!("{url}: bad address"))?
        .next()
        .with_context(|| format!("{url}: no address"))?;
    Ok(Url {
        addr,
        host: authority.to_string(),
        path: path.to_string(),
    })
}

/// A kept-alive connection to the target; requests on it are bounded by [`TIMEOUT`].
fn connect(url: &Url) -> Result<http::KeptAlive> {
    let stream = TcpStream::connect_timeout(&url.addr, TIMEOUT)?;
    stream.set_nodelay(true)?;
    Ok(http::KeptAlive::new(stream)?)
}

/// One `GET` on `connection`, which must answer 200. `Ok(true)`: the server closes the
/// connection after this answer (nginx does every 1000 requests).
fn get(connection: &mut http::KeptAlive, url: &Url) -> Result<bool> {
    let answer = connection.send(http::get(&url.host, &url.path)?, TIMEOUT)?;
    if answer.status != 200 {
        bail!("HTTP status {}", answer.status);
    }
    Ok(answer
        .header("connection")
        .is_some_and(|value| value.trim().eq_ignore_ascii_case("close")))
}

#[derive(Default)]
struct ConnResult {
    latencies_ns: Vec<u64>,
    errors: u64,
    late: u64,
    first_error: Option<String>,
}

fn one_connection(url: &Url, first: Instant, interval: Duration, end: Instant) -> ConnResult {
    let mut r = ConnResult::default();
    let mut connection = None;
    let mut slot = first;
    while slot < end {
        let now = Instant::now();
        if slot > now {
            thread::sleep(slot - now);
        }
        let sent = Instant::now();
        if sent > slot + LATE {
            r.late += 1;
        }
        let outcome = (|| -> Result<bool> {
            if connection.is_none() {
                connection = Some(connect(url)?);
            }
            get(connection.as_mut().context("connected")?, url)
        })();
        match outcome {
            Ok(closing) => {
                r.latencies_ns.push(sent.elapsed().as_nanos() as u64);
                if closing {
                    connection = None;
                }
            }
            Err(e) => {
                r.errors += 1;
                r.first_error.get_or_insert_with(|| format!("{e:#}"));
                // A fresh connection for the next slot.
                connection = None;
            }
        }
        slot += interval;
    }
    r
}

/// `p` in 0..=100 of sorted values, nearest rank.
fn percentile(sorted: &[u64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1] as f64)
}

pub fn run(a: &Args) -> Result<Value> {
    if a.rate == 0 || a.connections == 0 || !(a.seconds > 0.0 && a.seconds <= 600.0) {
        bail!("--rate and --connections must be positive, --seconds in (0, 600]");
    }
    let url = parse_url(&a.url)?;
    // Every connection sends every `interval`; their slots are spread evenly over it.
    let interval = Duration::from_secs_f64(f64::from(a.connections) / f64::from(a.rate));
    let start = Instant::now() + Duration::from_millis(100);
    let end = start + Duration::from_secs_f64(a.seconds);
    let results: Vec<ConnResult> = thread::scope(|scope| {
        let handles: Vec<_> = (0..a.connections)
            .map(|i| {
                let url = &url;
                let first = start + interval * i / a.connections;
                scope.spawn(move || one_connection(url, first, interval, end))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_default())
            .collect()
    });
    let mut all: Vec<u64> = results
        .iter()
        .flat_map(|r| r.latencies_ns.iter().copied())
        .collect();
    all.sort_unstable();
    let errors: u64 = results.iter().map(|r| r.errors).sum();
    let late: u64 = results.iter().map(|r| r.late).sum();
    let ms = |p: f64| percentile(&all, p).map(|ns| (ns / 1e3).round() / 1e3);
    Ok(json!({
        "rate": a.rate,
        "connections": a.connections,
        "seconds": a.seconds,
        "requests": all.len(),
        "errors": errors,
        "first_error": results.iter().find_map(|r| r.first_error.clone()),
        "late_sends": late,
        "achieved_rps": (all.len() as f64 / a.seconds).round(),
        "p50_ms": ms(50.0),
        "p90_ms": ms(90.0),
        "p99_ms": ms(99.0),
        "p999_ms": ms(99.9),
        "max_ms": ms(100.0),
    }))
}
