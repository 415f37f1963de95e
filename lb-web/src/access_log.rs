//! The access log in the combined format (as nginx and Apache write it):
//! `addr - - [day/Mon/year:HH:MM:SS +0000] "METHOD target HTTP/x" status bytes "referer" "agent"`.
use std::{
    fs::{File, OpenOptions},
    io::Write,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};
use axum::{
    body::{Body, Bytes, HttpBody},
    extract::{ConnectInfo, Request, State},
    http::{header, HeaderMap, Version},
    middleware::Next,
    response::Response,
};
use hyper::body::{Frame, SizeHint};

/// Where log lines go.
#[derive(Clone)]
pub struct AccessLog(Arc<Sink>);

enum Sink {
    Stdout,
    File(Mutex<File>),
}

impl AccessLog {
    /// `-` for stdout, else a file opened for appending (created when missing).
    pub fn open(target: &str) -> Result<AccessLog> {
        let sink = if target == "-" {
            Sink::Stdout
        } else {
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(target)
                .with_context(|| format!("opening the access log {target}"))?;
            Sink::File(Mutex::new(file))
        };
        Ok(AccessLog(Arc::new(sink)))
    }

    fn write(&self, line: &str) {
        // A full disk or closed stdout must not fail the request: the line is lost, said once per line.
        let result = match &*self.0 {
            Sink::Stdout => std::io::stdout().lock().write_all(line.as_bytes()),
            Sink::File(file) => match file.lock() {
                Ok(mut file) => file.write_all(line.as_bytes()),
                Err(poisoned) => poisoned.into_inner().write_all(line.as_bytes()),
            },
        };
        if let Err(e) = result {
            log::warn!("access log: {e}");
        }
    }
}

/// Middleware: one line per request, once its response body has been sent.
pub async fn middleware(State(log): State<AccessLog>, request: Request, next: Next) -> Response {
    let client = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "-".to_string(), |c| c.0.ip().to_canonical().to_string());
    let target = request
        .uri()
        .path_and_query()
        .map_or_else(|| request.uri().path().to_string(), |pq| pq.to_string());
    let request_line = format!(
        "{} {} {}",
        request.method(),
        target,
        version(request.version())
    );
    let referer = field(request.headers(), header::REFERER);
    let agent = field(request.headers(), header::USER_AGENT);
    let response = next.run(request).await;
    let prefix = format!(
        "{client} - - [{}] \"{}\" {}",
        clf_time(SystemTime::now()),
        escape(&request_line),
        response.status().as_u16()
    );
    let suffix = format!("\"{referer}\" \"{agent}\"");
    // The line is written once the body is done (or dropped), with the bytes really sent.
    response.map(|body| {
        Body::new(CountedBody {
            inner: body,
            bytes: 0,
            line: Some((log, prefix, suffix)),
        })
    })
}

/// A response body that counts its bytes and writes the access log line when it is dropped.
struct CountedBody {
    inner: Body,
    bytes: u64,
    line: Option<(AccessLog, String, String)>,
}

impl HttpBody for CountedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.bytes += data.len() as u64;
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for CountedBody {
    fn drop(&mut self) {
        if let Some((log, prefix, suffix)) = self.line.take() {
            // As Apache's %b: "-" for no body.
            let bytes = if self.bytes == 0 {
                "-".to_string()
            } else {
                self.bytes.to_string()
            };
            log.write(&format!("{prefix} {bytes} {suffix}\n"));
        }
    }
}

fn version(v: Version) -> &'static str {
    match v {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

fn field(headers: &HeaderMap, name: header::HeaderName) -> String {
    headers.get(name).map_or_else(
        || "-".to_string(),
        |v| escape(&String::from_utf8_lossy(v.as_bytes())),
    )
}

/// Quotes, backslashes and control bytes escaped as nginx does (`\x22`), so a line stays one line.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c == '"' || c == '\\' || c.is_control() {
            for b in c.to_string().bytes() {
                out.push_str(&format!("\\x{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// `10/Oct/2000:13:55:36 +0000` (UTC).
fn clf_time(now: SystemTime) -> String {
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let (year, month, day) = civil_from_days(days);
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{day:02}/{}/{year}:{:02}:{:02}:{:02} +0000",
        MONTHS[(month - 1) as usize % 12],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 -> (year, month 1-12, day 1-31) (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_and_escapes() {
        assert_eq!(
            clf_time(UNIX_EPOCH + Duration::from_secs(971_099_736)),
            "09/Oct/2000:13:55:36 +0000"
        );
        assert_eq!(
            clf_time(UNIX_EPOCH + Duration::from_secs(1_709_208_000)),
            "29/Feb/2024:12:00:00 +0000"
        );
        assert_eq!(escape("a\"b\n"), "a\\x22b\\x0A");
    }
}
