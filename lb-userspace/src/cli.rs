//! The `lb` commands that talk to a running agent over its status API: aligned tables for
//! people, `--json` for scripts, and errors that say what to do.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context as _, Result};
use clap::{Args, Subcommand};
use serde::de::DeserializeOwned;
use tokio::net::TcpStream;
use tokio_rustls::{
    rustls::{self, pki_types::ServerName, ClientConfig, RootCertStore},
    TlsConnector,
};

use crate::{
    api::types::*,
    config::{self, DEFAULT_API_BIND},
    http_client,
};

mod tables;
pub use self::tables::print_map_memory;
use self::tables::*;

/// How long the CLI waits for the agent.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest answer the CLI reads (a page of 1000 flows is far below).
const MAX_RESPONSE: usize = 32 * 1024 * 1024;

#[derive(Args, Debug, Clone)]
pub struct ApiArgs {
    /// The agent's API: http://ADDRESS:PORT (its api.bind), or https://HOST:PORT when the
    /// agent has api.tls_cert_file.
    #[arg(long, global = true, value_name = "URL")]
    pub api: Option<String>,
    /// PEM certificate(s) to trust for an https API: the CA that signed api.tls_cert_file (or
    /// that certificate itself). Default with --agent-config: api.tls_cert_file; else the
    /// public web roots.
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_file: Option<PathBuf>,
    /// File holding the API token (the agent's api.token_file); needed for changes.
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Take the API address and token file from the agent's config file.
    #[arg(long = "agent-config", global = true, value_name = "FILE")]
    pub agent_config: Option<PathBuf>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug, Clone)]
pub enum ClientCommand {
    /// The agent: interface, attach mode, uptime, backends by state, traffic totals.
    Status,
    /// Services with their backends in rotation and counters.
    Services,
    /// Backends of one service (or of all) with state, health and counters.
    Backends { service: Option<String> },
    /// Live flows from the flow table, a page at a time.
    Flows {
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Continue after a previous page (its `next` cursor).
        #[arg(long)]
        cursor: Option<String>,
        /// The unverified flows instead of the connections: TCP before the client's ACK, and
        /// UDP (what a spoofed flood fills).
        #[arg(long)]
        unverified: bool,
    },
    /// Stop new flows to a backend; its existing flows finish.
    Drain { service: String, backend: String },
    /// Let a drained backend take new flows again.
    Enable { service: String, backend: String },
    /// Change a backend's weight (1..100).
    Weight {
        service: String,
        backend: String,
        weight: u32,
    },
    /// Add a backend at runtime (not written to the config file).
    AddBackend {
        service: String,
        backend: String,
        address: String,
        #[arg(long)]
        port: Option<u16>,
        #[arg(long)]
        weight: Option<u32>,
    },
    /// Remove a backend now (drain it first to let its flows finish).
    RemoveBackend { service: String, backend: String },
    /// Make the agent re-read its config file and apply the difference.
    Reload,
    /// The firewall's rules and counters; add and remove rules at runtime.
    #[command(subcommand)]
    Fw(FwCommand),
    /// The `[database]` cluster: the operator's side of failover.
    #[command(subcommand)]
    Db(DbCommand),
}

#[derive(Subcommand, Debug, Clone)]
pub enum DbCommand {
    /// Make NODE the primary now, whatever `database.failover` says: for when safe failover
    /// refuses (the status says why). Writes the old primary acknowledged and NODE lacks are
    /// lost; `--force` says you accept that.
    Promote {
        node: String,
        #[arg(long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug, Clone)]
pub enum FwCommand {
    /// Every rule with its prefixes and counters, then the drops by reason.
    List,
    /// Add a rule on source prefixes (until the next reload); the rule set is swapped whole.
    Add {
        name: String,
        /// A source prefix or address (repeat for more).
        #[arg(long = "source", required = true)]
        sources: Vec<String>,
        /// allow, drop, or log (a dry run: counted, not dropped).
        #[arg(long, default_value = "drop")]
        action: String,
    },
    /// Remove a rule.
    Del { name: String },
}

/// Where the agent listens and how to authenticate.
struct Endpoint {
    url: ApiUrl,
    /// Certificates trusted for https (none: the public web roots).
    ca_file: Option<PathBuf>,
    token: Option<String>,
}

/// An `--api` URL: scheme, host as written (a name, or an address without brackets), port.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ApiUrl {
    tls: bool,
    host: String,
    port: u16,
}

impl ApiUrl {
    /// `host:port` as the `Host` header and messages write it.
    fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for ApiUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}", self.authority())
    }
}

/// Either kind of connection to the agent.
enum Connection {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl Endpoint {
    fn from_args(args: &ApiArgs) -> Result<Self> {
        let mut url = ApiUrl {
            tls: false,
            host: DEFAULT_API_BIND.ip().to_string(),
            port: DEFAULT_API_BIND.port(),
        };
        let mut token_file = None;
        let mut ca_file = None;
        if let Some(path) = &args.agent_config {
            let config = config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
            let mut addr = config.api.bind;
            if addr.ip().is_unspecified() {
                // Listening on every address includes loopback.
                addr.set_ip(if addr.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                });
            }
            url = ApiUrl {
                tls: config.api.tls.is_some(),
                host: addr.ip().to_string(),
                port: addr.port(),
            };
            // The agent's own certificate: right when it is self-signed or carries its CA.
            ca_file = config.api.tls.map(|tls| tls.cert_file);
            token_file = config.api.token_file;
        }
        if let Some(text) = &args.api {
            url = parse_api_url(text)?;
        }
        if let Some(file) = &args.ca_file {
            ca_file = Some(file.clone());
        }
        if let Some(file) = &args.token_file {
            token_file = Some(file.clone());
        }
        let token = token_file.as_deref().map(read_token).transpose()?;
        Ok(Self {
            url,
            ca_file,
            token,
        })
    }

    /// A connection to the agent, TLS when the URL says https.
    async fn connect(&self) -> Result<Connection> {
        let url = &self.url;
        let addr = tokio::net::lookup_host((url.host.as_str(), url.port))
            .await
            .with_context(|| format!("resolving {}", url.host))?
            .next()
            .with_context(|| format!("{} has no address", url.host))?;
        let stream = match TcpStream::connect(addr).await {
            Ok(stream) => stream,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => bail!(
                "cannot reach the agent at {url}: connection refused; is `lb run` running? it listens on its \
                 api.bind (default {DEFAULT_API_BIND}): pass --api URL or --agent-config FILE if it is elsewhere, \
                 and run this in the agent's network namespace"
            ),
            Err(e) => bail!("cannot reach the agent at {url}: {e}"),
        };
        if !url.tls {
            return Ok(Connection::Plain(stream));
        }
        let connector = tls_connector(self.ca_file.as_deref())?;
        let name = ServerName::try_from(url.host.clone())
            .with_context(|| format!("`{}` is not a name TLS can check", url.host))?;
        let hint = match &self.ca_file {
            Some(file) => format!(
                "the certificate is not signed by {} or does not name {}",
                file.display(),
                url.host
            ),
            None => "pass --ca-file FILE (the CA of the agent's api.tls_cert_file)".to_string(),
        };
        let stream = connector
            .connect(name, stream)
            .await
            .with_context(|| format!("TLS with the agent at {url}: {hint}"))?;
        Ok(Connection::Tls(Box::new(stream)))
    }

    async fn request<T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<(T, String)> {
        let url = &self.url;
        let connection = match tokio::time::timeout(REQUEST_TIMEOUT, self.connect()).await {
            Ok(connection) => connection?,
            Err(_) => {
                bail!("the agent at {url} did not accept a connection within {REQUEST_TIMEOUT:?}")
            }
        };
        let body_bytes = body.as_ref().map(serde_json::to_vec).transpose()?;
        let mut headers = vec![("Accept", "application/json".to_string())];
        if body_bytes.is_some() {
            headers.push(("Content-Type", "application/json".to_string()));
        }
        if let Some(token) = &self.token {
            headers.push(("Authorization", format!("Bearer {token}")));
        }
        let host = url.authority();
        let request = http_client::Request {
            method,
            host: &host,
            path,
            headers: &headers,
            body: body_bytes.as_deref(),
            max_response: MAX_RESPONSE,
        };
        let exchange = async {
            match connection {
                Connection::Plain(stream) => http_client::send(stream, &request).await,
                Connection::Tls(stream) => http_client::send(stream, &request).await,
            }
        };
        let response = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .with_context(|| {
                format!("the agent did not answer {method} {path} within {REQUEST_TIMEOUT:?}")
            })??;
        let text = String::from_utf8_lossy(&response.body).into_owned();
        if !(200..300).contains(&response.status) {
            let detail = match serde_json::from_str::<ErrorBody>(&text) {
                Ok(error) => format!("{} ({})", error.error.message, error.error.code),
                Err(_) => format!("HTTP {}: {}", response.status, text.trim()),
            };
            let hint = match response.status {
                401 if self.token.is_none() => "\n  hint: pass --token-file FILE (the agent's api.token_file) or --agent-config FILE",
                401 => "\n  hint: the token does not match the agent's api.token_file",
                _ => "",
            };
            bail!("{detail}{hint}");
        }
        let value = serde_json::from_str(&text).with_context(|| {
            format!("the agent's answer to {path} is not what this CLI expects")
        })?;
        Ok((value, text))
    }
}

/// `http://HOST:PORT` (the scheme may be left out) or `https://HOST:PORT`, with an IPv6
/// address in brackets; a path after it is ignored.
fn parse_api_url(url: &str) -> Result<ApiUrl> {
    let (tls, rest) = match url.strip_prefix("https://") {
        Some(rest) => (true, rest),
        None => (false, url.strip_prefix("http://").unwrap_or(url)),
    };
    let authority = rest.split('/').next().unwrap_or_default();
    let bad = || {
        anyhow::anyhow!(
            "--api `{url}` must be http://ADDRESS:PORT or https://HOST:PORT, e.g. http://{DEFAULT_API_BIND}"
        )
    };
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, port) = v6.split_once("]:").ok_or_else(bad)?;
            host.parse::<std::net::Ipv6Addr>().map_err(|_| bad())?;
            (host, port)
        }
        None => authority.rsplit_once(':').ok_or_else(bad)?,
    };
    let port: u16 = port.parse().map_err(|_| bad())?;
    let name_like = host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || ".-:".contains(c));
    if host.is_empty() || !name_like || port == 0 {
        return Err(bad());
    }
    Ok(ApiUrl {
        tls,
        host: host.to_string(),
        port,
    })
}

/// rustls for the CLI: the certificates in `ca_file` as roots, or the public web roots.
fn tls_connector(ca_file: Option<&Path>) -> Result<TlsConnector> {
    let mut roots = RootCertStore::empty();
    match ca_file {
        Some(file) => {
            for cert in lb_serve::tls::read_certificates(file)? {
                roots.add(cert).with_context(|| {
                    format!("{}: a certificate rustls cannot use", file.display())
                })?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

fn read_token(path: &Path) -> Result<String> {
    crate::config::read_secret_file(path, "token").map_err(anyhow::Error::msg)
}

pub async fn run(command: ClientCommand, args: ApiArgs) -> Result<()> {
    let endpoint = Endpoint::from_args(&args)?;
    match command {
        ClientCommand::Status => {
            let (status, raw) = endpoint
                .request::<Status>("GET", "/api/v1/status", None)
                .await?;
            print_or(args.json, &raw, || print_status(&status));
        }
        ClientCommand::Services => {
            let (services, raw) = endpoint
                .request::<Vec<ServiceInfo>>("GET", "/api/v1/services", None)
                .await?;
            print_or(args.json, &raw, || print_services(&services));
        }
        ClientCommand::Backends { service } => {
            let names = match service {
                Some(name) => vec![name],
                None => endpoint
                    .request::<Vec<ServiceInfo>>("GET", "/api/v1/services", None)
                    .await?
                    .0
                    .into_iter()
                    .map(|s| s.name)
                    .collect(),
            };
            let mut lists = Vec::new();
            for name in names {
                lists.push(
                    endpoint
                        .request::<BackendList>(
                            "GET",
                            &format!("/api/v1/services/{}/backends", path_segment(&name)),
                            None,
                        )
                        .await?
                        .0,
                );
            }
            if args.json {
                println!("{}", serde_json::to_string_pretty(&lists)?);
            } else {
                print_backends(&lists);
            }
        }
        ClientCommand::Flows {
            limit,
            cursor,
            unverified,
        } => {
            let mut path = format!("/api/v1/flows?limit={limit}");
            if unverified {
                path.push_str("&table=unverified");
            }
            if let Some(cursor) = &cursor {
                path.push_str(&format!("&cursor={}", path_segment(cursor)));
            }
            let (page, raw) = endpoint.request::<FlowPage>("GET", &path, None).await?;
            print_or(args.json, &raw, || print_flows(&page, limit, unverified));
        }
        ClientCommand::Drain { service, backend } => {
            let path = backend_path(&service, &backend, "/drain");
            change(&endpoint, args.json, "POST", &path, None).await?;
        }
        ClientCommand::Enable { service, backend } => {
            let path = backend_path(&service, &backend, "/enable");
            change(&endpoint, args.json, "POST", &path, None).await?;
        }
        ClientCommand::Weight {
            service,
            backend,
            weight,
        } => {
            let path = backend_path(&service, &backend, "/weight");
            change(
                &endpoint,
                args.json,
                "PUT",
                &path,
                Some(serde_json::json!({ "weight": weight })),
            )
            .await?;
        }
        ClientCommand::AddBackend {
            service,
            backend,
            address,
            port,
            weight,
        } => {
            let path = format!("/api/v1/services/{}/backends", path_segment(&service));
            let body = serde_json::to_value(AddBackendRequest {
                name: backend,
                address,
                port,
                weight,
            })?;
            change(&endpoint, args.json, "POST", &path, Some(body)).await?;
        }
        ClientCommand::RemoveBackend { service, backend } => {
            let path = backend_path(&service, &backend, "");
            change(&endpoint, args.json, "DELETE", &path, None).await?;
        }
        ClientCommand::Reload => {
            change(&endpoint, args.json, "POST", "/api/v1/reload", None).await?
        }
        ClientCommand::Fw(FwCommand::List) => {
            let (rules, raw) = endpoint
                .request::<FirewallRules>("GET", "/api/v1/firewall/rules", None)
                .await?;
            print_or(args.json, &raw, || print_rules(&rules));
        }
        ClientCommand::Fw(FwCommand::Add {
            name,
            sources,
            action,
        }) => {
            let body = serde_json::to_value(AddRuleRequest {
                name,
                sources,
                action,
            })?;
            change(
                &endpoint,
                args.json,
                "POST",
                "/api/v1/firewall/rules",
                Some(body),
            )
            .await?;
        }
        ClientCommand::Fw(FwCommand::Del { name }) => {
            let path = format!("/api/v1/firewall/rules/{}", path_segment(&name));
            change(&endpoint, args.json, "DELETE", &path, None).await?;
        }
        ClientCommand::Db(DbCommand::Promote { node, force }) => {
            if !force {
                bail!("`lb db promote {node}` may lose writes the old primary acknowledged; run it with --force to take responsibility (`lb status` says why the agent did not promote on its own)");
            }
            let body = serde_json::to_value(PromoteRequest { node, force })?;
            change(
                &endpoint,
                args.json,
                "POST",
                "/api/v1/database/promote",
                Some(body),
            )
            .await?;
        }
    }
    Ok(())
}

async fn change(
    endpoint: &Endpoint,
    json: bool,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> Result<()> {
    let (result, raw) = endpoint.request::<ChangeResult>(method, path, body).await?;
    print_or(json, &raw, || println!("{}", result.message));
    Ok(())
}

fn backend_path(service: &str, backend: &str, action: &str) -> String {
    format!(
        "/api/v1/services/{}/backends/{}{action}",
        path_segment(service),
        path_segment(backend)
    )
}

/// Percent-encodes everything but unreserved characters.
fn path_segment(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
