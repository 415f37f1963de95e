//! Health checks: TCP connect, HTTP(S) GET with the expected status and body, MySQL login +
//! `SELECT 1` + role. Each backend gets one task that runs its check every interval and reports
//! the outcome; [`Tracker`] turns outcomes into up/down transitions (rise/fall).
use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use mysql_async::prelude::Queryable as _;
use tokio::{net::TcpStream, time::MissedTickBehavior};
use tokio_rustls::{
    rustls::{
        self,
        client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider},
        pki_types::{CertificateDer, ServerName, UnixTime},
        ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
    },
    TlsConnector,
};

use crate::{
    config::{HealthConfig, HealthKind, MysqlRole},
    http_client,
};

/// Largest HTTP body a check reads; a health page is small.
const MAX_CHECK_RESPONSE: usize = 64 * 1024;

/// One backend's check, ready to run.
#[derive(Clone)]
pub struct Check {
    pub target: SocketAddr,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend back, failures that take it out.
    pub rise: u32,
    pub fall: u32,
    pub probe: Probe,
}

#[derive(Clone)]
pub enum Probe {
    Tcp,
    Http(HttpProbe),
    Mysql(MysqlProbe),
}

#[derive(Clone)]
pub struct HttpProbe {
    pub path: String,
    pub host: String,
    pub expect_status: u16,
    pub expect_body: Option<String>,
    /// HTTPS: the connector and the name the certificate must carry.
    pub tls: Option<(TlsConnector, ServerName<'static>)>,
}

#[derive(Clone)]
pub struct MysqlProbe {
    pub user: String,
    pub password: Option<String>,
    pub role: MysqlRole,
    pub max_lag_s: u64,
}

impl Check {
    /// The check `health` describes for a backend at `addr:port`. Fails when a password file
    /// cannot be read.
    pub fn from_config(health: &HealthConfig, addr: IpAddr, backend_port: u16) -> Result<Check> {
        let port = health.port.unwrap_or(backend_port);
        let target = SocketAddr::new(addr, port);
        let probe = match health.kind {
            HealthKind::Tcp => Probe::Tcp,
            kind @ (HealthKind::Http | HealthKind::Https) => {
                let host = health.host.clone().unwrap_or_else(|| addr.to_string());
                let tls = if kind == HealthKind::Https {
                    let name = ServerName::try_from(host.clone())
                        .with_context(|| format!("`{host}` is not a valid TLS server name"))?;
                    Some((tls_connector(health.tls_verify())?, name))
                } else {
                    None
                };
                Probe::Http(HttpProbe {
                    path: health.path().to_string(),
                    host,
                    expect_status: health.expect_status(),
                    expect_body: health.expect_body.clone(),
                    tls,
                })
            }
            HealthKind::Mysql => {
                let password = crate::config::read_secret(
                    health.password.as_ref(),
                    health.password_file.as_ref(),
                    "mysql password_file",
                )
                .map_err(anyhow::Error::msg)?;
                Probe::Mysql(MysqlProbe {
                    user: health.user.clone().unwrap_or_default(),
                    password,
                    role: health.role(),
                    max_lag_s: health.max_lag_s(),
                })
            }
        };
        Ok(Check {
            target,
            interval: health.interval(),
            timeout: health.timeout(),
            rise: health.rise,
            fall: health.fall,
            probe,
        })
    }

    /// A tracker for this check, starting up or down.
    pub fn tracker(&self, up: bool) -> Tracker {
        Tracker::new(self.rise, self.fall, up)
    }

    pub fn kind(&self) -> &'static str {
        match &self.probe {
            Probe::Tcp => "tcp",
            Probe::Http(http) if http.tls.is_some() => "https",
            Probe::Http(_) => "http",
            Probe::Mysql(_) => "mysql",
        }
    }

    /// Runs the check once, bounded by its timeout. `Ok` carries a short description of what
    /// was seen (status, role), `Err` why the backend is unhealthy.
    pub async fn run(&self) -> Result<String> {
        match tokio::time::timeout(self.timeout, self.run_unbounded()).await {
            Ok(result) => result,
            Err(_) => bail!("no answer within {} ms", self.timeout.as_millis()),
        }
    }

    async fn run_unbounded(&self) -> Result<String> {
        match &self.probe {
            Probe::Tcp => {
                TcpStream::connect(self.target)
                    .await
                    .with_context(|| format!("connecting to {}", self.target))?;
                Ok("connected".into())
            }
            Probe::Http(http) => http.run(self.target).await,
            Probe::Mysql(mysql) => mysql.run(self.target).await,
        }
    }
}

impl HttpProbe {
    async fn run(&self, target: SocketAddr) -> Result<String> {
        let tcp = TcpStream::connect(target)
            .await
            .with_context(|| format!("connecting to {target}"))?;
        let request = http_client::Request {
            method: "GET",
            host: &self.host,
            path: &self.path,
            headers: &[],
            body: None,
            max_response: MAX_CHECK_RESPONSE,
        };
        let response = match &self.tls {
            Some((connector, name)) => {
                let tls = connector
                    .connect(name.clone(), tcp)
                    .await
                    .context("TLS handshake")?;
                http_client::send(tls, &request).await?
            }
            None => http_client::send(tcp, &request).await?,
        };
        if response.status != self.expect_status {
            bail!(
                "GET {} answered {}, expected {}",
                self.path,
                response.status,
                self.expect_status
            );
        }
        if let Some(needle) = &self.expect_body {
            if !String::from_utf8_lossy(&response.body).contains(needle.as_str()) {
                bail!(
                    "GET {} answered {} without `{needle}` in the body",
                    self.path,
                    response.status
                );
            }
        }
        Ok(format!("HTTP {}", response.status))
    }
}

impl MysqlProbe {
    async fn run(&self, target: SocketAddr) -> Result<String> {
        let opts = mysql_async::OptsBuilder::default()
            .ip_or_hostname(target.ip().to_string())
            .tcp_port(target.port())
            .prefer_socket(false)
            .user(Some(self.user.clone()))
            .pass(self.password.clone());
        let mut conn = mysql_async::Conn::new(opts).await.context("MySQL login")?;
        let result = self.query(&mut conn).await;
        // A failed goodbye does not make the server unhealthy.
        let _ = conn.disconnect().await;
        result
    }

    async fn query(&self, conn: &mut mysql_async::Conn) -> Result<String> {
        let one: Option<i64> = conn.query_first("SELECT 1").await.context("SELECT 1")?;
        if one != Some(1) {
            bail!("SELECT 1 answered {one:?}");
        }
        if self.role == MysqlRole::Any {
            return Ok("SELECT 1 ok".into());
        }
        let read_only: Option<i64> = conn
            .query_first("SELECT @@global.read_only")
            .await
            .context("SELECT @@read_only")?;
        let read_only = read_only.unwrap_or(0) != 0;
        // A primary is judged by read_only alone, so its check account needs no replication grant.
        let replica = if self.role == MysqlRole::Replica {
            replica_status(conn).await?
        } else {
            None
        };
        let role = ServerRole { read_only, replica };
        role.check(self.role, self.max_lag_s)
            .map_err(|e| anyhow!(e))
    }
}

/// What a MySQL server says about its role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerRole {
    pub read_only: bool,
    /// `None` when the server replicates from nobody.
    pub replica: Option<ReplicaStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub io_running: bool,
    pub sql_running: bool,
    /// `Seconds_Behind_Master`; `None` when the server does not know (replication stopped).
    pub lag_s: Option<u64>,
}

impl ServerRole {
    /// Whether this server fits `wanted`; `Ok` describes it, `Err` says why not.
    pub fn check(&self, wanted: MysqlRole, max_lag_s: u64) -> Result<String, String> {
        match wanted {
            MysqlRole::Any => Ok("SELECT 1 ok".into()),
            MysqlRole::Primary if self.read_only => {
                Err("read_only is on: not a writable primary".into())
            }
            MysqlRole::Primary => Ok("primary (writable)".into()),
            MysqlRole::Replica => match &self.replica {
                None => Err("no replication configured: not a replica".into()),
                Some(r) if !r.io_running || !r.sql_running => Err(format!(
                    "replication stopped (IO {}, SQL {})",
                    yes_no(r.io_running),
                    yes_no(r.sql_running)
                )),
                Some(ReplicaStatus { lag_s: None, .. }) => Err("replication lag unknown".into()),
                Some(ReplicaStatus {
                    lag_s: Some(lag), ..
                }) if *lag > max_lag_s => Err(format!(
                    "replication lag {lag} s is above max_lag_s {max_lag_s}"
                )),
                Some(ReplicaStatus {
                    lag_s: Some(lag), ..
                }) => Ok(format!("replica, lag {lag} s")),
            },
        }
    }
}

fn yes_no(value: bool) -> &'static str {
    if value {
        "running"
    } else {
        "stopped"
    }
}

/// `SHOW REPLICA STATUS` (MySQL 8.0.22+, MariaDB 10.5+), else the older `SHOW SLAVE STATUS`;
/// column names differ between the two families.
async fn replica_status(conn: &mut mysql_async::Conn) -> Result<Option<ReplicaStatus>> {
    let rows: Vec<mysql_async::Row> = match conn.query("SHOW REPLICA STATUS").await {
        Ok(rows) => rows,
        Err(_) => conn
            .query("SHOW SLAVE STATUS")
            .await
            .context("SHOW SLAVE STATUS")?,
    };
    let Some(row) = rows.into_iter().next() else {
        return Ok(None);
    };
    let text = |names: &[&str]| -> Option<String> {
        names.iter().find_map(|name| {
            row.get_opt::<Option<String>, _>(*name)
                .and_then(|v| v.ok())
                .flatten()
        })
    };
    Ok(Some(ReplicaStatus {
        io_running: text(&["Slave_IO_Running", "Replica_IO_Running"])
            .is_some_and(|v| v.eq_ignore_ascii_case("yes")),
        sql_running: text(&["Slave_SQL_Running", "Replica_SQL_Running"])
            .is_some_and(|v| v.eq_ignore_ascii_case("yes")),
        lag_s: text(&["Seconds_Behind_Master", "Seconds_Behind_Source"])
            .and_then(|v| v.parse().ok()),
    }))
}

/// One check's outcome, as reported by [`run_checker`].
pub struct Outcome {
    pub result: Result<String>,
    pub latency: Duration,
}

/// Runs `check` every interval until `report` returns false (the backend is gone or its
/// check changed).
pub async fn run_checker(check: Check, mut report: impl FnMut(Outcome) -> bool) {
    let mut ticker = tokio::time::interval(check.interval);
    // A slow check delays the next one instead of firing a burst to catch up.
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let started = Instant::now();
        let result = check.run().await;
        if !report(Outcome {
            result,
            latency: started.elapsed(),
        }) {
            return;
        }
    }
}

/// Rise/fall hysteresis: `fall` consecutive failures take a backend down, `rise` consecutive
/// successes bring it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tracker {
    pub rise: u32,
    pub fall: u32,
    pub up: bool,
    pub successes: u32,
    pub failures: u32,
}

impl Tracker {
    pub fn new(rise: u32, fall: u32, up: bool) -> Self {
        Self {
            rise: rise.max(1),
            fall: fall.max(1),
            up,
            successes: 0,
            failures: 0,
        }
    }

    /// Records one outcome; returns the new state when it changed.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if ok {
            self.failures = 0;
            self.successes = self.successes.saturating_add(1);
            if !self.up && self.successes >= self.rise {
                self.up = true;
                return Some(true);
            }
        } else {
            self.successes = 0;
            self.failures = self.failures.saturating_add(1);
            if self.up && self.failures >= self.fall {
                self.up = false;
                return Some(false);
            }
        }
        None
    }
}

fn tls_connector(verify: bool) -> Result<TlsConnector> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?;
    let config = if verify {
        let roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        builder.with_root_certificates(roots).with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
            .with_no_client_auth()
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

/// `tls_verify = false`: the lab's self-signed backends. Signatures are still checked, so the
/// handshake itself is real; only the certificate's issuer and name are not.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fall_failures_take_it_down_and_rise_successes_bring_it_back() {
        let mut tracker = Tracker::new(2, 3, true);
        assert_eq!(tracker.record(false), None);
        assert_eq!(
            tracker.record(true),
            None,
            "a success resets the failure count"
        );
        assert_eq!((tracker.record(false), tracker.record(false)), (None, None));
        assert_eq!(tracker.record(false), Some(false));
        assert_eq!(tracker.record(false), None, "already down");
        assert_eq!(tracker.record(true), None);
        assert_eq!(tracker.record(true), Some(true));
        assert!(tracker.up);
    }

    #[test]
    fn mysql_roles() {
        let primary = ServerRole {
            read_only: false,
            replica: None,
        };
        let replica = |io, sql, lag| ServerRole {
            read_only: true,
            replica: Some(ReplicaStatus {
                io_running: io,
                sql_running: sql,
                lag_s: lag,
            }),
        };
        assert!(primary.check(MysqlRole::Primary, 10).is_ok());
        assert!(primary.check(MysqlRole::Replica, 10).is_err());
        assert!(replica(true, true, Some(0))
            .check(MysqlRole::Primary, 10)
            .is_err());
        assert_eq!(
            replica(true, true, Some(3)).check(MysqlRole::Replica, 10),
            Ok("replica, lag 3 s".into())
        );
        assert!(replica(true, true, Some(30))
            .check(MysqlRole::Replica, 10)
            .is_err());
        assert!(replica(true, false, Some(0))
            .check(MysqlRole::Replica, 10)
            .is_err());
        assert!(replica(true, true, None)
            .check(MysqlRole::Replica, 10)
            .is_err());
        assert!(replica(false, false, None)
            .check(MysqlRole::Any, 10)
            .is_ok());
    }

    #[tokio::test]
    async fn tcp_and_http_checks_against_a_local_server() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let target = listener.local_addr().unwrap_or_else(|e| panic!("{e}"));
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let mut buf = [0u8; 1024];
                let n = socket.read(&mut buf).await.unwrap_or(0);
                let answer = if buf[..n].starts_with(b"GET /ok ") {
                    "200 OK"
                } else {
                    "503 Unavailable"
                };
                let _ = socket
                    .write_all(
                        format!("HTTP/1.1 {answer}\r\nContent-Length: 5\r\n\r\nhello").as_bytes(),
                    )
                    .await;
            }
        });
        let http = |path: &str, body: Option<&str>| Check {
            target,
            interval: Duration::from_millis(200),
            timeout: Duration::from_millis(500),
            rise: 2,
            fall: 3,
            probe: Probe::Http(HttpProbe {
                path: path.into(),
                host: "x".into(),
                expect_status: 200,
                expect_body: body.map(Into::into),
                tls: None,
            }),
        };
        let tcp = Check {
            probe: Probe::Tcp,
            ..http("/", None)
        };
        assert!(tcp.run().await.is_ok());
        assert!(http("/ok", Some("ell")).run().await.is_ok());
        let error = http("/bad", None)
            .run()
            .await
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(error.contains("answered 503, expected 200"), "{error}");
        assert!(http("/ok", Some("bye")).run().await.is_err());
        let closed = Check {
            target: SocketAddr::new(target.ip(), 1),
            ..tcp
        };
        assert!(closed.run().await.is_err());
    }
}
