//! Who may talk to the API, checked before any route: the `Host` a request names must be this
//! API's own (a web page that rebinds its DNS name to the agent's address cannot read it), and
//! on a non-loopback bind every request but `/healthz` carries the bearer token.
use std::{
    net::{IpAddr, Ipv6Addr, SocketAddr},
    sync::Arc,
};

use axum::{
    extract::{Request, State},
    http::{header, HeaderMap, StatusCode},
    middleware::Next,
    response::{IntoResponse as _, Response},
};
use subtle::ConstantTimeEq as _;

use super::ApiError;
use crate::config::ApiConfig;

/// The one path open to anyone who reaches the port: it says only that the agent runs.
pub const OPEN_PATH: &str = "/healthz";

/// Where the token comes from: the agent's state, which a reload may change.
pub type TokenSource = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// The checks every request passes, built from `[api]`.
#[derive(Clone)]
pub struct Access {
    hosts: Arc<HostPolicy>,
    reads_need_token: bool,
    token: TokenSource,
}

impl Access {
    pub fn new(api: &ApiConfig, token: TokenSource) -> Self {
        Self {
            hosts: Arc::new(HostPolicy::new(api.bind, &api.allowed_hosts)),
            reads_need_token: api.is_exposed(),
            token,
        }
    }
}

/// The `Host` values this API answers to.
#[derive(Debug, Clone)]
pub struct HostPolicy {
    bind: SocketAddr,
    /// Lowercase, without a trailing dot.
    names: Vec<String>,
}

impl HostPolicy {
    pub fn new(bind: SocketAddr, names: &[String]) -> Self {
        Self {
            bind,
            names: names
                .iter()
                .map(|n| n.trim_end_matches('.').to_ascii_lowercase())
                .collect(),
        }
    }

    /// True when `value` (a `Host` header or a URI authority) names this API: its bind address
    /// (any address for a wildcard bind: an IP literal cannot be rebound), `localhost` and the
    /// loopback addresses for a loopback or wildcard bind, or a configured name; with or
    /// without the bind's port, never with another port.
    pub fn allows(&self, value: &str) -> bool {
        let Some((host, port)) = split_host(value) else {
            return false;
        };
        if port.is_some_and(|p| p != self.bind.port()) {
            return false;
        }
        let bind_ip = self.bind.ip();
        let local = bind_ip.is_loopback() || bind_ip.is_unspecified();
        match host {
            Host::Ip(ip) => {
                bind_ip.is_unspecified()
                    || ip.to_canonical() == bind_ip.to_canonical()
                    || (local && ip.is_loopback())
                    || self.names.iter().any(|n| n.parse() == Ok(ip))
            }
            Host::Name(name) => {
                let name = name.trim_end_matches('.');
                (local && name == "localhost") || self.names.iter().any(|n| n == name)
            }
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Host {
    Ip(IpAddr),
    /// Lowercase.
    Name(String),
}

/// `name`, `name:port`, `1.2.3.4[:port]` or `[v6][:port]`; `None` for anything else.
fn split_host(value: &str) -> Option<(Host, Option<u16>)> {
    let value = value.trim();
    let port = |text: &str| text.parse::<u16>().ok();
    if let Some(rest) = value.strip_prefix('[') {
        let (address, after) = rest.split_once(']')?;
        let address: Ipv6Addr = address.parse().ok()?;
        let port = match after {
            "" => None,
            after => Some(port(after.strip_prefix(':')?)?),
        };
        return Some((Host::Ip(address.into()), port));
    }
    let (host, port) = match value.split_once(':') {
        Some((host, text)) => (host, Some(port(text)?)),
        None => (value, None),
    };
    if host.is_empty() {
        return None;
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some((Host::Ip(ip), port));
    }
    let valid = host
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    valid.then(|| (Host::Name(host.to_ascii_lowercase()), port))
}

/// Middleware: the Host check, then the token for every request when the API is exposed.
pub async fn check(State(access): State<Access>, request: Request, next: Next) -> Response {
    if request.uri().path() == OPEN_PATH {
        return next.run(request).await;
    }
    let host = lb_serve::authority(&request);
    match host {
        Some(host) if access.hosts.allows(&host) => {}
        Some(host) => {
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "host_not_allowed",
                format!(
                    "Host `{}` is not this API's address: use {} or a name listed in \
                     api.allowed_hosts (a guard against DNS rebinding)",
                    host.chars().take(100).collect::<String>(),
                    access.hosts.bind
                ),
            )
            .into_response()
        }
        None => {
            return ApiError::new(
                StatusCode::BAD_REQUEST,
                "host_required",
                "the request has no Host header",
            )
            .into_response()
        }
    }
    if access.reads_need_token {
        if let Err(error) = bearer(request.headers(), (access.token)().as_deref()) {
            return error.into_response();
        }
    }
    next.run(request).await
}

/// The request's bearer token against `expected` (compared in constant time).
pub fn bearer(headers: &HeaderMap, expected: Option<&str>) -> Result<(), ApiError> {
    let Some(expected) = expected else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "writes_disabled",
            "writes are disabled: set api.token_file in the agent's config",
        ));
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    match presented {
        None => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this request needs `Authorization: Bearer <token>` (the token in api.token_file)",
        )),
        Some(token) if bool::from(token.as_bytes().ct_eq(expected.as_bytes())) => Ok(()),
        Some(_) => Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "wrong token",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn policy(bind: &str, names: &[&str]) -> HostPolicy {
        let bind = bind.parse().unwrap_or_else(|e| panic!("{bind}: {e}"));
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        HostPolicy::new(bind, &names)
    }

    #[test]
    fn loopback_binds_take_localhost_and_loopback_addresses_with_or_without_port() {
        for bind in ["127.0.0.1:9876", "[::1]:9876"] {
            let hosts = policy(bind, &[]);
            for good in [
                "localhost",
                "localhost:9876",
                "LOCALHOST.",
                "127.0.0.1",
                "127.0.0.1:9876",
                "[::1]",
                "[::1]:9876",
            ] {
                assert!(hosts.allows(good), "{bind}: {good} refused");
            }
            for bad in [
                "evil.example",
                "evil.example:9876",
                "localhost:80",
                "127.0.0.1:9877",
                "localhost.evil.example",
                "10.0.0.1",
                "",
                "[::1",
                "::1",
                "localhost:",
                "user@localhost",
                "local host",
            ] {
                assert!(!hosts.allows(bad), "{bind}: {bad:?} allowed");
            }
        }
    }

    #[test]
    fn an_exposed_bind_takes_its_address_and_configured_names_only() {
        let hosts = policy("10.0.0.5:9876", &["LB.example.net"]);
        for good in [
            "10.0.0.5",
            "10.0.0.5:9876",
            "lb.example.net",
            "Lb.Example.Net:9876",
            "lb.example.net.",
        ] {
            assert!(hosts.allows(good), "{good} refused");
        }
        for bad in [
            "localhost",
            "127.0.0.1",
            "10.0.0.6",
            "example.net",
            "lb.example.net:443",
            "rebind.attacker.example",
        ] {
            assert!(!hosts.allows(bad), "{bad} allowed");
        }
    }

    #[test]
    fn a_wildcard_bind_takes_any_address_but_names_only_when_listed() {
        let hosts = policy("0.0.0.0:9876", &["lb.example"]);
        for good in [
            "10.1.2.3",
            "127.0.0.1:9876",
            "[fd00::1]",
            "localhost",
            "lb.example",
        ] {
            assert!(hosts.allows(good), "{good} refused");
        }
        for bad in ["attacker.example", "10.1.2.3:80"] {
            assert!(!hosts.allows(bad), "{bad} allowed");
        }
    }

    #[test]
    fn bearer_tokens_are_checked() {
        let mut headers = HeaderMap::new();
        assert!(bearer(&headers, Some("s3cret-token-long-enough")).is_err());
        assert!(bearer(&headers, None).is_err());
        headers.insert(
            header::AUTHORIZATION,
            header::HeaderValue::from_static("Bearer s3cret-token-long-enough"),
        );
        assert!(bearer(&headers, Some("s3cret-token-long-enough")).is_ok());
        assert!(bearer(&headers, Some("another-token")).is_err());
    }
}
