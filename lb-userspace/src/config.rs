//! The agent's configuration file (TOML): parsing, then validation of everything the data path
//! relies on. Errors name the file, the line and column, what is wrong and how to fix it.
use std::{
    collections::HashSet,
    fmt,
    net::IpAddr,
    ops::Range,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use toml::Spanned;

/// Default bpffs directory for pinned maps and links.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/lb";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub agent: AgentConfig,
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Network interface the XDP program is attached to.
    pub interface: Option<Spanned<String>>,
    /// bpffs directory where maps and the XDP link are pinned.
    #[serde(default = "default_pin_path")]
    pub pin_path: PathBuf,
    #[serde(default)]
    pub xdp_mode: XdpModeConfig,
    /// Flow table entries (LRU); at least 1M by default.
    #[serde(default = "default_flow_capacity")]
    pub flow_capacity: Spanned<u32>,
    /// NAT source ports towards backends.
    #[serde(default = "default_nat_port_min")]
    pub nat_port_min: Spanned<u16>,
    #[serde(default = "default_nat_port_max")]
    pub nat_port_max: Spanned<u16>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            interface: None,
            pin_path: default_pin_path(),
            xdp_mode: XdpModeConfig::default(),
            flow_capacity: default_flow_capacity(),
            nat_port_min: default_nat_port_min(),
            nat_port_max: default_nat_port_max(),
        }
    }
}

fn default_pin_path() -> PathBuf {
    PathBuf::from(DEFAULT_PIN_PATH)
}
fn default_flow_capacity() -> Spanned<u32> {
    Spanned::new(0..0, lb_common::DEFAULT_FLOW_CAPACITY)
}
fn default_nat_port_min() -> Spanned<u16> {
    Spanned::new(0..0, lb_common::maps::Settings::default().nat_port_min)
}
fn default_nat_port_max() -> Spanned<u16> {
    Spanned::new(0..0, lb_common::maps::Settings::default().nat_port_max)
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeConfig {
    /// Native (driver) mode, falling back to generic with a warning.
    #[default]
    Auto,
    Native,
    Generic,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Direct server return: only the destination MAC changes; backends hold the VIP.
    Dsr,
    /// Full NAT on one arm: addresses and ports rewritten both ways.
    Nat,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Strict round robin; backend weights make it weighted round robin.
    #[default]
    RoundRobin,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub name: Spanned<String>,
    pub vip: Spanned<IpAddr>,
    pub port: Spanned<u16>,
    #[serde(default = "default_protocol")]
    pub protocol: Protocol,
    pub mode: Spanned<Mode>,
    #[serde(default)]
    pub algorithm: Algorithm,
    /// NAT mode: the load balancer's address backends reply to (same family as the VIP).
    pub snat_address: Option<Spanned<IpAddr>>,
    #[serde(default, rename = "backend")]
    pub backends: Vec<BackendConfig>,
}

fn default_protocol() -> Protocol {
    Protocol::Tcp
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackendConfig {
    pub name: Spanned<String>,
    pub address: Spanned<IpAddr>,
    /// Defaults to the service port; DSR requires it to equal the service port.
    pub port: Option<Spanned<u16>>,
    #[serde(default = "default_weight")]
    pub weight: Spanned<u32>,
}

fn default_weight() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}

impl BackendConfig {
    pub fn port_or(&self, service_port: u16) -> u16 {
        self.port.as_ref().map_or(service_port, |p| *p.get_ref())
    }
}

/// Highest weight a backend may have: weights expand into selection-table slots.
pub const MAX_WEIGHT: u32 = 100;

/// One problem in a config file, located by line and column (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
    pub message: String,
    pub fix: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}: {}", self.file.display(), self.line, self.column, self.message)?;
        if !self.fix.is_empty() {
            write!(f, "\n  fix: {}", self.fix)?;
        }
        Ok(())
    }
}

/// All problems found in one file.
#[derive(Debug)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Reads, parses and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_owned(),
            line: 0,
            column: 0,
            message: format!("cannot read the file: {e}"),
            fix: "check the path and its permissions".into(),
        }])
    })?;
    parse(path, &text)
}

/// Parses and validates config text; `path` is only used in messages.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
    let locate = Locator { path, text };
    let config: Config = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        ConfigErrors(vec![locate.error(
            span,
            e.message().trim().to_string(),
            "see examples/lb.toml for every key and its allowed values",
        )])
    })?;
    let errors = validate(&config, &locate);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigErrors(errors))
    }
}

struct Locator<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Locator<'_> {
    fn error(&self, span: Range<usize>, message: impl Into<String>, fix: impl Into<String>) -> ConfigError {
        let offset = span.start.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = offset - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        ConfigError {
            file: self.path.to_owned(),
            line,
            column,
            message: message.into(),
            fix: fix.into(),
        }
    }
}

fn validate(config: &Config, at: &Locator<'_>) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let agent = &config.agent;
    if let Some(interface) = &agent.interface {
        let name = interface.get_ref();
        if name.is_empty() || name.len() >= 16 || name.contains('/') || name.contains(char::is_whitespace) {
            errors.push(at.error(
                interface.span(),
                format!("`{name}` is not a valid interface name"),
                "use the name shown by `ip link`, e.g. \"eth0\" (at most 15 characters)",
            ));
        }
    }
    let capacity = *agent.flow_capacity.get_ref();
    if !(1024..=1 << 26).contains(&capacity) {
        errors.push(at.error(
            agent.flow_capacity.span(),
            format!("flow_capacity {capacity} is out of range"),
            "use a value between 1024 and 67108864 (default 1048576)",
        ));
    }
    let (min, max) = (*agent.nat_port_min.get_ref(), *agent.nat_port_max.get_ref());
    if min == 0 || min > max {
        errors.push(at.error(
            agent.nat_port_min.span(),
            format!("NAT port range {min}..={max} is empty or starts at 0"),
            "set 1 <= nat_port_min <= nat_port_max, e.g. 1024 and 32767",
        ));
    }
    if config.services.len() > lb_common::MAX_SERVICES as usize {
        errors.push(at.error(
            0..0,
            format!("{} services configured, the data path holds {}", config.services.len(), lb_common::MAX_SERVICES),
            "remove services or raise MAX_SERVICES in lb-common",
        ));
    }

    let mut names = HashSet::new();
    let mut endpoints = HashSet::new();
    let mut backend_total = 0usize;
    for service in &config.services {
        let name = service.name.get_ref();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
            errors.push(at.error(
                service.name.span(),
                format!("service name `{name}` must be non-empty letters, digits, '-' or '_'"),
                "rename the service, e.g. \"web\"",
            ));
        }
        if !names.insert(name.clone()) {
            errors.push(at.error(service.name.span(), format!("service `{name}` is defined twice"), "give each service its own name"));
        }
        let vip = *service.vip.get_ref();
        let port = *service.port.get_ref();
        if !endpoints.insert((vip, port, service.protocol)) {
            errors.push(at.error(
                service.vip.span(),
                format!("service `{name}`: {vip} port {port} {:?} is already used by another service", service.protocol),
                "each (vip, port, protocol) may belong to one service only",
            ));
        }
        if port == 0 {
            errors.push(at.error(service.port.span(), format!("service `{name}`: port 0"), "use the port clients connect to, e.g. 80"));
        }
        if vip.is_unspecified() || vip.is_multicast() {
            errors.push(at.error(service.vip.span(), format!("service `{name}`: {vip} cannot be a VIP"), "use a unicast address clients send to"));
        }
        match (*service.mode.get_ref(), &service.snat_address) {
            (Mode::Nat, None) => errors.push(at.error(
                service.mode.span(),
                format!("service `{name}` is in NAT mode but has no snat_address"),
                "add snat_address = \"<an address of the load balancer on the backends' network>\"",
            )),
            (Mode::Nat, Some(snat)) if snat.get_ref().is_ipv4() != vip.is_ipv4() => errors.push(at.error(
                snat.span(),
                format!("service `{name}`: snat_address {} is not of the VIP's address family", snat.get_ref()),
                "use an IPv4 snat_address for an IPv4 VIP, IPv6 for IPv6",
            )),
            (Mode::Dsr, Some(snat)) => errors.push(at.error(
                snat.span(),
                format!("service `{name}` is in DSR mode; snat_address only applies to NAT"),
                "remove snat_address, or set mode = \"nat\"",
            )),
            _ => {}
        }
        if service.backends.is_empty() {
            errors.push(at.error(service.name.span(), format!("service `{name}` has no backend"), "add at least one [[service.backend]]"));
        }
        let mut backend_names = HashSet::new();
        let mut backend_endpoints = HashSet::new();
        for backend in &service.backends {
            backend_total += 1;
            let bname = backend.name.get_ref();
            if !backend_names.insert(bname.clone()) {
                errors.push(at.error(backend.name.span(), format!("service `{name}`: backend `{bname}` is defined twice"), "give each backend its own name"));
            }
            let address = *backend.address.get_ref();
            let bport = backend.port_or(port);
            if address.is_ipv4() != vip.is_ipv4() {
                errors.push(at.error(
                    backend.address.span(),
                    format!("service `{name}`: backend `{bname}` ({address}) is not of the VIP's address family"),
                    "use backends of the same family as the VIP",
                ));
            }
            if !backend_endpoints.insert((address, bport)) {
                errors.push(at.error(backend.address.span(), format!("service `{name}`: {address} port {bport} is listed twice"), "list each backend once"));
            }
            if let (Mode::Dsr, Some(p)) = (*service.mode.get_ref(), &backend.port) {
                if *p.get_ref() != port {
                    errors.push(at.error(
                        p.span(),
                        format!("service `{name}`: DSR cannot change the port ({port} -> {})", p.get_ref()),
                        "remove the backend port (DSR backends listen on the service port), or use mode = \"nat\"",
                    ));
                }
            }
            let weight = *backend.weight.get_ref();
            if weight == 0 || weight > MAX_WEIGHT {
                errors.push(at.error(
                    backend.weight.span(),
                    format!("service `{name}`: backend `{bname}` has weight {weight}"),
                    format!("use a weight from 1 to {MAX_WEIGHT}; drain a backend to stop new flows"),
                ));
            }
        }
    }
    if backend_total > (lb_common::MAX_BACKENDS / 2) as usize {
        errors.push(at.error(
            0..0,
            format!("{backend_total} backends configured, at most {} fit", lb_common::MAX_BACKENDS / 2),
            "remove backends",
        ));
    }
    errors
}

#[cfg(test)]
mod tests {
    use super::*;

    #[track_caller]
    fn errors_of(text: &str) -> Vec<ConfigError> {
        match parse(Path::new("lb.toml"), text) {
            Ok(_) => panic!("expected errors for:\n{text}"),
            Err(ConfigErrors(errors)) => errors,
        }
    }

    const GOOD: &str = r#"
[agent]
interface = "eth0"

[[service]]
name = "web"
vip = "10.0.0.100"
port = 80
mode = "dsr"

[[service.backend]]
name = "web1"
address = "10.0.0.11"

[[service.backend]]
name = "web2"
address = "10.0.0.12"
weight = 2
"#;

    #[test]
    fn example_config_is_valid() {
        let text = include_str!("../../examples/lb.toml");
        if let Err(e) = parse(Path::new("examples/lb.toml"), text) {
            panic!("examples/lb.toml is invalid:\n{e}");
        }
    }

    #[test]
    fn good_config_parses() {
        let config = parse(Path::new("lb.toml"), GOOD).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(config.services.len(), 1);
        assert_eq!(config.services[0].backends[1].weight.get_ref(), &2);
        assert_eq!(config.agent.pin_path, PathBuf::from(DEFAULT_PIN_PATH));
    }

    #[test]
    fn unknown_key_is_located() {
        let text = GOOD.replace("port = 80", "port = 80\nmodee = \"nat\"");
        let errors = errors_of(&text);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, 9, "{}", errors[0]);
        assert!(errors[0].message.contains("modee"), "{}", errors[0]);
    }

    #[test]
    fn semantic_errors_are_all_reported_with_positions() {
        let text = GOOD
            .replace("mode = \"dsr\"", "mode = \"nat\"")
            .replace("weight = 2", "weight = 0");
        let errors = errors_of(&text);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].message.contains("snat_address"));
        assert_eq!((errors[0].line, errors[0].column), (9, 8));
        assert!(errors[1].message.contains("weight 0"));
        assert_eq!(errors[1].line, 18);
    }

    #[test]
    fn bad_values_are_rejected() {
        for (from, to, needle) in [
            ("vip = \"10.0.0.100\"", "vip = \"10.0.0.300\"", "invalid IP address"),
            ("port = 80", "port = 70000", "invalid value"),
            ("mode = \"dsr\"", "mode = \"tunnel\"", "unknown variant"),
            ("address = \"10.0.0.12\"", "address = \"fd00::12\"", "address family"),
            ("address = \"10.0.0.12\"", "address = \"10.0.0.11\"", "listed twice"),
            ("interface = \"eth0\"", "interface = \"a-very-long-interface-name\"", "not a valid interface"),
        ] {
            let errors = errors_of(&GOOD.replace(from, to));
            assert!(errors.iter().any(|e| e.to_string().contains(needle)), "{to}: {errors:?}");
        }
    }
}
