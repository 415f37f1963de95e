//! The configuration file as written: TOML with the span of every value, checked whole (every
//! error located by line and column, with its fix), then turned into the validated model that
//! the running agent reads (`model.rs`).
use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    ops::Range,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use super::{
    error::{ConfigError, ConfigErrors},
    model::{
        self, parse_prefix, Action, Algorithm, FailoverPolicy, HealthKind, HostPolicy, Mode,
        MysqlRole, Protocol, Secret, SnatAddresses, XdpModeConfig, DEFAULT_API_BIND,
        DEFAULT_API_HEADER_READ_TIMEOUT_MS, DEFAULT_API_IDLE_TIMEOUT_MS,
        DEFAULT_API_MAX_CONNECTIONS, DEFAULT_API_REQUEST_TIMEOUT_MS, DEFAULT_CHECK_INTERVAL_MS,
        DEFAULT_CHECK_TIMEOUT_MS, DEFAULT_DB_FAIL_AFTER, DEFAULT_DB_INTERVAL_MS,
        DEFAULT_DB_STATE_FILE, DEFAULT_DB_TIMEOUT_MS, DEFAULT_DB_UNREACHABLE_AFTER_MS,
        DEFAULT_FALL, DEFAULT_FLOW_CAPACITY, DEFAULT_MAP_MEMORY_BUDGET_MIB, DEFAULT_MAX_LAG_S,
        DEFAULT_PIN_PATH, DEFAULT_RISE, MAX_WEIGHT,
    },
};

/// Parses and validates config text into the model; `path` is only used in messages.
pub(super) fn parse(path: &Path, text: &str) -> Result<model::Config, ConfigErrors> {
    let locate = Locator { path, text };
    let config: Config = toml::from_str(text).map_err(|e| {
        let span = e.span().unwrap_or(0..0);
        ConfigErrors(vec![locate.error(
            span,
            e.message().trim().to_string(),
            "see examples/lb.toml for every key and its allowed values",
        )])
    })?;
    let mut errors = validate(&config, &locate);
    if errors.is_empty() {
        let validated = config.clone().into_model();
        validate_memory_budget(&config, &validated, &locate, &mut errors);
        if errors.is_empty() {
            return Ok(validated);
        }
    }
    Err(ConfigErrors(errors))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub agent: AgentConfig,
    #[serde(default)]
    pub firewall: FirewallConfig,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceConfig>,
    /// A MySQL/MariaDB primary-replica cluster behind a write VIP and a read VIP, with failover.
    pub database: Option<DatabaseConfig>,
}

/// The database cluster the agent watches and fails over. Its nodes are the backends of the
/// write service; the agent keeps only the current primary in it, and the healthy replicas (or
/// the primary, when there is none) in the read service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// The service of the write VIP; its backends are the cluster's nodes.
    pub write_service: Spanned<String>,
    /// The service of the read VIP (backends: some or all of the nodes, same names).
    pub read_service: Option<Spanned<String>>,
    /// The account the agent watches, promotes and demotes nodes with (needs SUPER,
    /// RELOAD, READ_ONLY ADMIN, REPLICATION SLAVE ADMIN, SLAVE MONITOR).
    pub user: Spanned<String>,
    pub password: Option<Spanned<Secret>>,
    pub password_file: Option<Spanned<PathBuf>>,
    /// The account replicas connect to the primary with (REPLICATION SLAVE).
    pub replication_user: Spanned<String>,
    pub replication_password: Option<Spanned<Secret>>,
    pub replication_password_file: Option<Spanned<PathBuf>>,
    /// How often every node is probed.
    #[serde(default = "default_db_interval_ms")]
    pub interval_ms: Spanned<u64>,
    /// How long one probe (connect + queries) may take.
    #[serde(default = "default_db_timeout_ms")]
    pub timeout_ms: Spanned<u64>,
    /// Consecutive failed probes of the primary before it is replaced.
    #[serde(default = "default_db_fail_after")]
    pub fail_after: Spanned<u32>,
    /// Largest replication lag (seconds) of a replica still in the read service.
    #[serde(default = "default_db_max_lag_s")]
    pub max_lag_s: Spanned<u64>,
    /// A probe with no answer for this long makes a node gone rather than slow.
    #[serde(default = "default_db_unreachable_after_ms")]
    pub unreachable_after_ms: Spanned<u64>,
    /// "safe" (default): promote only a replica that holds every acknowledged write;
    /// "available": the most advanced replica; "off": never change a node.
    #[serde(default = "default_failover_policy")]
    pub failover: FailoverPolicy,
    /// Where the watch remembers the primary and its ledger across restarts.
    #[serde(default = "default_db_state_file")]
    pub state_file: PathBuf,
}

fn default_db_unreachable_after_ms() -> Spanned<u64> {
    Spanned::new(0..0, DEFAULT_DB_UNREACHABLE_AFTER_MS)
}
fn default_failover_policy() -> FailoverPolicy {
    FailoverPolicy::Safe
}
fn default_db_state_file() -> PathBuf {
    PathBuf::from(DEFAULT_DB_STATE_FILE)
}

fn default_db_interval_ms() -> Spanned<u64> {
    Spanned::new(0..0, DEFAULT_DB_INTERVAL_MS)
}
fn default_db_timeout_ms() -> Spanned<u64> {
    Spanned::new(0..0, DEFAULT_DB_TIMEOUT_MS)
}
fn default_db_fail_after() -> Spanned<u32> {
    Spanned::new(0..0, DEFAULT_DB_FAIL_AFTER)
}
fn default_db_max_lag_s() -> Spanned<u64> {
    Spanned::new(0..0, DEFAULT_MAX_LAG_S)
}

/// The firewall: CIDR rules on sources, packet sanity checks, and the policy for traffic to
/// the load balancer itself.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FirewallConfig {
    /// Drop IPv4 fragments addressed to a VIP (they cannot be balanced).
    #[serde(default = "yes")]
    pub drop_fragments: bool,
    /// Drop TCP packets with impossible flags (SYN+FIN, SYN+RST, none, FIN+PSH+URG).
    #[serde(default = "yes")]
    pub tcp_flag_checks: bool,
    /// Source prefixes that cannot be genuine on this interface; dropped as spoofed.
    #[serde(default, deserialize_with = "prefixes")]
    pub bogons: Vec<Spanned<IpNet>>,
    #[serde(default)]
    pub host: HostPolicyConfig,
    #[serde(default, rename = "rule")]
    pub rules: Vec<RuleConfig>,
}

impl Default for FirewallConfig {
    fn default() -> Self {
        Self {
            drop_fragments: true,
            tcp_flag_checks: true,
            bogons: Vec::new(),
            host: HostPolicyConfig::default(),
            rules: Vec::new(),
        }
    }
}

fn yes() -> bool {
    true
}

/// Traffic to the load balancer's own addresses (not to a service).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostPolicyConfig {
    /// "restrict": only open ports, replies to the host's own connections and ICMP (echo rate
    /// limited) reach the host; "open": no host policy.
    #[serde(default)]
    pub policy: HostPolicy,
    /// Ports open on the host, e.g. SSH and the status API, optionally only for some sources.
    #[serde(default = "default_open_ports")]
    pub open_ports: Vec<OpenPortConfig>,
    /// ICMP echo requests per second per source (0: unlimited), and the burst.
    #[serde(default = "default_icmp_rate")]
    pub icmp_echo_rate: u32,
    #[serde(default = "default_icmp_burst")]
    pub icmp_echo_burst: u32,
    /// New connections per second per source to the open ports (0: unlimited).
    #[serde(default)]
    pub syn_rate: u32,
    #[serde(default)]
    pub syn_burst: u32,
}

impl Default for HostPolicyConfig {
    fn default() -> Self {
        Self {
            policy: HostPolicy::default(),
            open_ports: default_open_ports(),
            icmp_echo_rate: default_icmp_rate(),
            icmp_echo_burst: default_icmp_burst(),
            syn_rate: 0,
            syn_burst: 0,
        }
    }
}

/// SSH, and DHCP client renewals (unicast replies to port 68), so a host with the default
/// policy stays reachable and keeps its lease.
fn default_open_ports() -> Vec<OpenPortConfig> {
    vec![
        OpenPortConfig {
            port: Spanned::new(0..0, 22),
            protocol: Protocol::Tcp,
            sources: Vec::new(),
        },
        OpenPortConfig {
            port: Spanned::new(0..0, 68),
            protocol: Protocol::Udp,
            sources: Vec::new(),
        },
    ]
}
fn default_icmp_rate() -> u32 {
    10
}
fn default_icmp_burst() -> u32 {
    20
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenPortConfig {
    pub port: Spanned<u16>,
    #[serde(default = "default_protocol")]
    pub protocol: Protocol,
    /// Only these sources may connect (empty: any).
    #[serde(default, deserialize_with = "prefixes")]
    pub sources: Vec<Spanned<IpNet>>,
}

/// A named rule on source prefixes, longest prefix wins across all rules.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: Spanned<String>,
    #[serde(deserialize_with = "prefixes")]
    pub sources: Vec<Spanned<IpNet>>,
    pub action: Action,
}

/// A prefix of a config list, parsed by [`parse_prefix`] inside its own span so that an error
/// points at the list entry.
struct PrefixEntry(IpNet);

impl<'de> Deserialize<'de> for PrefixEntry {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_prefix(&text)
            .map(PrefixEntry)
            .map_err(serde::de::Error::custom)
    }
}

/// `deserialize_with` for a list of prefixes.
fn prefixes<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Vec<Spanned<IpNet>>, D::Error> {
    let entries = Vec::<Spanned<PrefixEntry>>::deserialize(deserializer)?;
    Ok(entries
        .into_iter()
        .map(|e| Spanned::new(e.span(), e.into_inner().0))
        .collect())
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
    /// Connections the flow table holds (LRU), for each address family that has a service.
    #[serde(default = "default_flow_capacity")]
    pub flow_capacity: Spanned<u32>,
    /// NAT source ports towards backends.
    #[serde(default = "default_nat_port_min")]
    pub nat_port_min: Spanned<u16>,
    #[serde(default = "default_nat_port_max")]
    pub nat_port_max: Spanned<u16>,
    /// Entries of the table of unverified flows (TCP before its handshake completes, and UDP);
    /// default: a quarter of `flow_capacity` (see [`AgentConfig::unverified_capacity`]).
    pub unverified_capacity: Option<Spanned<u32>>,
    /// The most kernel memory the data path's maps may take, in MiB: a config whose maps would
    /// take more (by the estimate of `sizing::estimate`) is refused.
    #[serde(default = "default_map_memory_budget_mib")]
    pub map_memory_budget_mib: Spanned<u64>,
    /// How long a flow of each state may stay idle.
    #[serde(default)]
    pub timeouts: TimeoutsConfig,
}

/// `[agent.timeouts]`: idle limits of flows, in seconds, by state.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeoutsConfig {
    #[serde(default = "default_tcp_opening")]
    pub tcp_opening: Spanned<u32>,
    #[serde(default = "default_tcp_established")]
    pub tcp_established: Spanned<u32>,
    #[serde(default = "default_tcp_closing")]
    pub tcp_closing: Spanned<u32>,
    #[serde(default = "default_udp")]
    pub udp: Spanned<u32>,
}

impl Default for TimeoutsConfig {
    fn default() -> Self {
        Self {
            tcp_opening: default_tcp_opening(),
            tcp_established: default_tcp_established(),
            tcp_closing: default_tcp_closing(),
            udp: default_udp(),
        }
    }
}

impl TimeoutsConfig {
    fn fields(&self) -> [(&'static str, &Spanned<u32>); 4] {
        [
            ("tcp_opening", &self.tcp_opening),
            ("tcp_established", &self.tcp_established),
            ("tcp_closing", &self.tcp_closing),
            ("udp", &self.udp),
        ]
    }
}

fn default_tcp_opening() -> Spanned<u32> {
    Spanned::new(0..0, lb_common::maps::FlowTimeouts::DEFAULT.tcp_opening)
}
fn default_tcp_established() -> Spanned<u32> {
    Spanned::new(0..0, lb_common::maps::FlowTimeouts::DEFAULT.tcp_established)
}
fn default_tcp_closing() -> Spanned<u32> {
    Spanned::new(0..0, lb_common::maps::FlowTimeouts::DEFAULT.tcp_closing)
}
fn default_udp() -> Spanned<u32> {
    Spanned::new(0..0, lb_common::maps::FlowTimeouts::DEFAULT.udp)
}
fn default_map_memory_budget_mib() -> Spanned<u64> {
    Spanned::new(0..0, DEFAULT_MAP_MEMORY_BUDGET_MIB)
}

/// Largest `agent.map_memory_budget_mib` accepted (1 TiB).
const MAX_MAP_MEMORY_BUDGET_MIB: u64 = 1 << 20;

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            interface: None,
            pin_path: default_pin_path(),
            xdp_mode: XdpModeConfig::default(),
            flow_capacity: default_flow_capacity(),
            nat_port_min: default_nat_port_min(),
            nat_port_max: default_nat_port_max(),
            unverified_capacity: None,
            map_memory_budget_mib: default_map_memory_budget_mib(),
            timeouts: TimeoutsConfig::default(),
        }
    }
}

fn default_pin_path() -> PathBuf {
    PathBuf::from(DEFAULT_PIN_PATH)
}
fn default_flow_capacity() -> Spanned<u32> {
    Spanned::new(0..0, DEFAULT_FLOW_CAPACITY)
}
fn default_nat_port_min() -> Spanned<u16> {
    Spanned::new(0..0, lb_common::maps::Settings::default().nat_port_min)
}
fn default_nat_port_max() -> Spanned<u16> {
    Spanned::new(0..0, lb_common::maps::Settings::default().nat_port_max)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// Address the status API listens on.
    #[serde(default = "default_api_bind")]
    pub bind: Spanned<SocketAddr>,
    /// File holding the bearer token that write requests must present; without it, writes are
    /// refused.
    pub token_file: Option<Spanned<PathBuf>>,
    /// PEM certificate chain of the API (required with a non-loopback bind).
    pub tls_cert_file: Option<Spanned<PathBuf>>,
    /// PEM private key of that certificate.
    pub tls_key_file: Option<Spanned<PathBuf>>,
    /// Host names (or addresses) clients may use besides the bind address.
    #[serde(default)]
    pub allowed_hosts: Vec<Spanned<String>>,
    #[serde(default = "default_api_max_connections")]
    pub max_connections: Spanned<u32>,
    #[serde(default = "default_api_header_read_timeout_ms")]
    pub header_read_timeout_ms: Spanned<u64>,
    #[serde(default = "default_api_idle_timeout_ms")]
    pub idle_timeout_ms: Spanned<u64>,
    #[serde(default = "default_api_request_timeout_ms")]
    pub request_timeout_ms: Spanned<u64>,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            bind: default_api_bind(),
            token_file: None,
            tls_cert_file: None,
            tls_key_file: None,
            allowed_hosts: Vec::new(),
            max_connections: default_api_max_connections(),
            header_read_timeout_ms: default_api_header_read_timeout_ms(),
            idle_timeout_ms: default_api_idle_timeout_ms(),
            request_timeout_ms: default_api_request_timeout_ms(),
        }
    }
}

fn default_api_max_connections() -> Spanned<u32> {
    Spanned::new(0..0, DEFAULT_API_MAX_CONNECTIONS)
}
fn default_api_header_read_timeout_ms() -> Spanned<u64> {
    Spanned::new(0..0, DEFAULT_API_HEADER_READ_TIMEOUT_MS)
}
fn default_api_idle_timeout_ms() -> Spanned<u64> {
    Spanned::new(0..0, DEFAULT_API_IDLE_TIMEOUT_MS)
}
fn default_api_request_timeout_ms() -> Spanned<u64> {
    Spanned::new(0..0, DEFAULT_API_REQUEST_TIMEOUT_MS)
}

fn default_api_bind() -> Spanned<SocketAddr> {
    Spanned::new(0..0, DEFAULT_API_BIND)
}

impl<'de> Deserialize<'de> for SnatAddresses {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = SnatAddresses;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an IP address or a list of IP addresses")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                v.parse()
                    .map(|addr| SnatAddresses(vec![addr]))
                    .map_err(|_| E::custom(format!("invalid IP address {v:?}")))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<Self::Value, A::Error> {
                let mut addrs = Vec::new();
                while let Some(addr) = seq.next_element::<IpAddr>()? {
                    addrs.push(addr);
                }
                Ok(SnatAddresses(addrs))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
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
    /// NAT mode: the load balancer's address(es) backends reply to (same family as the VIP);
    /// each one adds the whole NAT port range to what a backend can hold at once.
    pub snat_address: Option<Spanned<SnatAddresses>>,
    /// Health check of every backend; none means backends are always considered up.
    pub health: Option<HealthConfig>,
    #[serde(default, rename = "backend")]
    pub backends: Vec<BackendConfig>,
    /// Only these sources may use the service (empty: everyone the global rules let through).
    #[serde(default, deserialize_with = "prefixes")]
    pub allow_sources: Vec<Spanned<IpNet>>,
    /// Sources refused even inside `allow_sources` (longest prefix wins).
    #[serde(default, deserialize_with = "prefixes")]
    pub deny_sources: Vec<Spanned<IpNet>>,
    /// New connections (TCP SYN) per second per source address (/32, /64), and the burst.
    #[serde(default)]
    pub syn_rate: u32,
    #[serde(default)]
    pub syn_burst: u32,
    /// Packets per second per source address, and the burst.
    #[serde(default)]
    pub packet_rate: u32,
    #[serde(default)]
    pub packet_burst: u32,
    /// New connections per second from all sources together (floods from many addresses).
    #[serde(default)]
    pub syn_budget: u32,
    #[serde(default)]
    pub syn_budget_burst: u32,
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

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    pub kind: Spanned<HealthKind>,
    #[serde(default = "default_interval_ms")]
    pub interval_ms: Spanned<u64>,
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: Spanned<u64>,
    /// Consecutive successes that bring a down backend back.
    #[serde(default = "default_rise")]
    pub rise: Spanned<u32>,
    /// Consecutive failures that take a backend out.
    #[serde(default = "default_fall")]
    pub fall: Spanned<u32>,
    /// Port to check; defaults to the backend's port.
    pub port: Option<Spanned<u16>>,
    /// HTTP(S): the path to GET.
    pub path: Option<Spanned<String>>,
    /// HTTP(S): the `Host` header; defaults to the backend address.
    pub host: Option<Spanned<String>>,
    /// HTTP(S): the status that means healthy (default 200).
    pub expect_status: Option<Spanned<u16>>,
    /// HTTP(S): text the body must contain.
    pub expect_body: Option<Spanned<String>>,
    /// HTTPS: verify the certificate against the web PKI roots (default true).
    pub tls_verify: Option<Spanned<bool>>,
    /// MySQL: the account the check logs in with.
    pub user: Option<Spanned<String>>,
    pub password: Option<Spanned<Secret>>,
    /// MySQL: a file holding the password (first line), instead of `password`.
    pub password_file: Option<Spanned<PathBuf>>,
    pub role: Option<Spanned<MysqlRole>>,
    /// MySQL replica: largest replication lag (seconds) still healthy.
    pub max_lag_s: Option<Spanned<u64>>,
}

fn default_interval_ms() -> Spanned<u64> {
    Spanned::new(0..0, DEFAULT_CHECK_INTERVAL_MS)
}
fn default_timeout_ms() -> Spanned<u64> {
    Spanned::new(0..0, DEFAULT_CHECK_TIMEOUT_MS)
}
fn default_rise() -> Spanned<u32> {
    Spanned::new(0..0, DEFAULT_RISE)
}
fn default_fall() -> Spanned<u32> {
    Spanned::new(0..0, DEFAULT_FALL)
}

struct Locator<'a> {
    path: &'a Path,
    text: &'a str,
}

impl Locator<'_> {
    fn error(
        &self,
        span: Range<usize>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
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
        if name.is_empty()
            || name.len() >= 16
            || name.contains('/')
            || name.contains(char::is_whitespace)
        {
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
            "use a value between 1024 and 67108864 (default 262144)",
        ));
    }
    if let Some(unverified) = &agent.unverified_capacity {
        let value = *unverified.get_ref();
        if !(1024..=1 << 26).contains(&value) {
            errors.push(at.error(
                unverified.span(),
                format!("unverified_capacity {value} is out of range"),
                "use a value between 1024 and 67108864 (default: a quarter of flow_capacity)",
            ));
        }
    }
    let budget = *agent.map_memory_budget_mib.get_ref();
    if !(1..=MAX_MAP_MEMORY_BUDGET_MIB).contains(&budget) {
        errors.push(at.error(
            agent.map_memory_budget_mib.span(),
            format!("map_memory_budget_mib {budget} is out of range"),
            format!("use a number of MiB between 1 and {MAX_MAP_MEMORY_BUDGET_MIB} (default {DEFAULT_MAP_MEMORY_BUDGET_MIB})"),
        ));
    }
    // A day at most: an idle limit longer than that keeps dead flows (and NAT ports) for good.
    for (name, value) in agent.timeouts.fields() {
        let seconds = *value.get_ref();
        if !(1..=86_400).contains(&seconds) {
            errors.push(at.error(
                value.span(),
                format!("agent.timeouts.{name} = {seconds} is out of range"),
                "use a number of seconds between 1 and 86400",
            ));
        }
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
            format!(
                "{} services configured, the data path holds {}",
                config.services.len(),
                lb_common::MAX_SERVICES
            ),
            "remove services or raise MAX_SERVICES in lb-common",
        ));
    }

    let mut names = HashSet::new();
    let mut endpoints = HashSet::new();
    let mut backend_total = 0usize;
    for service in &config.services {
        let name = service.name.get_ref();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            errors.push(at.error(
                service.name.span(),
                format!("service name `{name}` must be non-empty letters, digits, '-' or '_'"),
                "rename the service, e.g. \"web\"",
            ));
        }
        if !names.insert(name.clone()) {
            errors.push(at.error(
                service.name.span(),
                format!("service `{name}` is defined twice"),
                "give each service its own name",
            ));
        }
        let vip = *service.vip.get_ref();
        let port = *service.port.get_ref();
        if !endpoints.insert((vip, port, service.protocol)) {
            errors.push(at.error(
                service.vip.span(),
                format!(
                    "service `{name}`: {vip} port {port} {:?} is already used by another service",
                    service.protocol
                ),
                "each (vip, port, protocol) may belong to one service only",
            ));
        }
        if port == 0 {
            errors.push(at.error(
                service.port.span(),
                format!("service `{name}`: port 0"),
                "use the port clients connect to, e.g. 80",
            ));
        }
        if vip.is_unspecified() || vip.is_multicast() {
            errors.push(at.error(
                service.vip.span(),
                format!("service `{name}`: {vip} cannot be a VIP"),
                "use a unicast address clients send to",
            ));
        }
        match (*service.mode.get_ref(), &service.snat_address) {
            (Mode::Nat, None) => errors.push(at.error(
                service.mode.span(),
                format!("service `{name}` is in NAT mode but has no snat_address"),
                "add snat_address = \"<an address of the load balancer on the backends' network>\"",
            )),
            (Mode::Nat, Some(snat)) => {
                validate_snat(name, &vip, snat, at, &mut errors);
            }
            (Mode::Dsr, Some(snat)) => errors.push(at.error(
                snat.span(),
                format!("service `{name}` is in DSR mode; snat_address only applies to NAT"),
                "remove snat_address, or set mode = \"nat\"",
            )),
            _ => {}
        }
        if let Some(health) = &service.health {
            validate_health(name, service.protocol, health, at, &mut errors);
        }
        if service.backends.is_empty() {
            errors.push(at.error(
                service.name.span(),
                format!("service `{name}` has no backend"),
                "add at least one [[service.backend]]",
            ));
        }
        let mut backend_names = HashSet::new();
        let mut backend_endpoints = HashSet::new();
        for backend in &service.backends {
            backend_total += 1;
            let bname = backend.name.get_ref();
            if !backend_names.insert(bname.clone()) {
                errors.push(at.error(
                    backend.name.span(),
                    format!("service `{name}`: backend `{bname}` is defined twice"),
                    "give each backend its own name",
                ));
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
                errors.push(at.error(
                    backend.address.span(),
                    format!("service `{name}`: {address} port {bport} is listed twice"),
                    "list each backend once",
                ));
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
                    format!(
                        "use a weight from 1 to {MAX_WEIGHT}; drain a backend to stop new flows"
                    ),
                ));
            }
        }
    }
    validate_firewall(config, at, &mut errors);
    validate_api(&config.api, at, &mut errors);
    if let Some(database) = &config.database {
        validate_database(config, database, at, &mut errors);
    }
    if backend_total > (lb_common::MAX_BACKENDS / 2) as usize {
        errors.push(at.error(
            0..0,
            format!(
                "{backend_total} backends configured, at most {} fit",
                lb_common::MAX_BACKENDS / 2
            ),
            "remove backends",
        ));
    }
    errors
}

/// `[api]`: an API reachable from other hosts speaks TLS and wants the token for reads too;
/// names and limits are sane.
fn validate_api(api: &ApiConfig, at: &Locator<'_>, errors: &mut Vec<ConfigError>) {
    let bind = *api.bind.get_ref();
    if !bind.ip().is_loopback() {
        if api.tls_cert_file.is_none() || api.tls_key_file.is_none() {
            errors.push(at.error(
                api.bind.span(),
                format!(
                    "api.bind = \"{bind}\" is reachable from other hosts, but [api] has no TLS \
                     certificate: the token and every answer would cross the network in clear"
                ),
                "set api.tls_cert_file and api.tls_key_file (PEM), or bind to loopback \
                 (e.g. \"127.0.0.1:9876\") and reach the API through SSH",
            ));
        }
        if api.token_file.is_none() {
            errors.push(at.error(
                api.bind.span(),
                format!(
                    "api.bind = \"{bind}\" is reachable from other hosts, so reads need the \
                     token too, but [api] has no token_file"
                ),
                "set api.token_file to a file holding a long random token \
                 (e.g. `openssl rand -hex 32`), or bind to loopback",
            ));
        }
    }
    match (&api.tls_cert_file, &api.tls_key_file) {
        (Some(cert), None) => errors.push(at.error(
            cert.span(),
            "api.tls_cert_file is set without api.tls_key_file",
            "set both: the certificate chain and its private key (PEM)",
        )),
        (None, Some(key)) => errors.push(at.error(
            key.span(),
            "api.tls_key_file is set without api.tls_cert_file",
            "set both: the certificate chain and its private key (PEM)",
        )),
        _ => {}
    }
    for host in &api.allowed_hosts {
        let name = host.get_ref();
        if !is_host_name(name) {
            errors.push(at.error(
                host.span(),
                format!("api.allowed_hosts: `{name}` is not a host name or an IP address"),
                "list names as clients type them, without scheme or port, e.g. \"lb.example.net\"",
            ));
        }
    }
    let connections = *api.max_connections.get_ref();
    if !(1..=65_536).contains(&connections) {
        errors.push(at.error(
            api.max_connections.span(),
            format!("api.max_connections = {connections} is out of range"),
            format!("use 1 to 65536 (default {DEFAULT_API_MAX_CONNECTIONS}), well below the agent's file-descriptor limit"),
        ));
    }
    for (name, value) in [
        ("header_read_timeout_ms", &api.header_read_timeout_ms),
        ("idle_timeout_ms", &api.idle_timeout_ms),
        ("request_timeout_ms", &api.request_timeout_ms),
    ] {
        let ms = *value.get_ref();
        if !(10..=3_600_000).contains(&ms) {
            errors.push(at.error(
                value.span(),
                format!("api.{name} = {ms} is out of range"),
                "use a number of milliseconds from 10 to 3600000",
            ));
        }
    }
}

/// A DNS name (letters, digits, '-', dots between labels) or an IP address, without a port.
fn is_host_name(text: &str) -> bool {
    if text.parse::<IpAddr>().is_ok() {
        return true;
    }
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// The maps this config needs must fit `agent.map_memory_budget_mib`. Checked on the estimate
/// (`sizing::estimate`), since nothing is loaded yet; the error points at the budget when the
/// file sets it, else at `flow_capacity`, the usual cause.
/// `config` is the file's (for the spans), `validated` what it became (for the figures).
fn validate_memory_budget(
    config: &Config,
    validated: &model::Config,
    at: &Locator<'_>,
    errors: &mut Vec<ConfigError>,
) {
    let agent = &config.agent;
    let cpus = crate::sizing::possible_cpus();
    let estimate = crate::sizing::estimate(&validated.map_demand(), cpus);
    let total: u64 = estimate.iter().map(|(_, bytes)| bytes).sum();
    let budget = validated.agent.map_memory_budget_bytes();
    if total <= budget {
        return;
    }
    let mut largest = estimate.clone();
    largest.sort_by_key(|entry| std::cmp::Reverse(entry.1));
    let largest: Vec<String> = largest
        .iter()
        .take(3)
        .map(|(name, bytes)| format!("{name} {}", crate::sizing::mib(*bytes)))
        .collect();
    let span = [
        agent.map_memory_budget_mib.span(),
        agent.flow_capacity.span(),
    ]
    .into_iter()
    .find(|span| !span.is_empty())
    .unwrap_or(0..0);
    errors.push(at.error(
        span,
        format!(
            "the data path's maps would take about {} of kernel memory ({}, ...), over agent.map_memory_budget_mib = {} MiB",
            crate::sizing::mib(total),
            largest.join(", "),
            agent.map_memory_budget_mib.get_ref()
        ),
        format!(
            "lower agent.flow_capacity (each 1M IPv4 connections take about 120 MiB, twice that with a NAT service) or raise agent.map_memory_budget_mib to at least {}",
            total.div_ceil(1024 * 1024)
        ),
    ));
}

fn validate_database(
    config: &Config,
    db: &DatabaseConfig,
    at: &Locator<'_>,
    errors: &mut Vec<ConfigError>,
) {
    let service = |name: &Spanned<String>, key: &str, errors: &mut Vec<ConfigError>| {
        let found = config
            .services
            .iter()
            .find(|s| s.name.get_ref() == name.get_ref());
        match found {
            None => errors.push(at.error(
                name.span(),
                format!("database {key} `{}` is not a configured service", name.get_ref()),
                "name a [[service]] whose backends are the database nodes",
            )),
            Some(s) if s.health.is_some() => errors.push(at.error(
                s.name.span(),
                format!("service `{}` is the database {key}; the [database] section checks its nodes", s.name.get_ref()),
                "remove its [service.health]: the agent keeps only the primary (write) or healthy replicas (read) in it",
            )),
            Some(s) if s.protocol != Protocol::Tcp => errors.push(at.error(
                s.name.span(),
                format!("service `{}` is the database {key} but is not TCP", s.name.get_ref()),
                "set protocol = \"tcp\"",
            )),
            Some(_) => {}
        }
        found
    };
    let write = service(&db.write_service, "write_service", errors);
    let read = db
        .read_service
        .as_ref()
        .and_then(|r| service(r, "read_service", errors));
    if let (Some(write), Some(read)) = (write, read) {
        if write.name.get_ref() == read.name.get_ref() {
            errors.push(at.error(
                read.name.span(),
                "the database read_service is the write_service",
                "give reads their own service on the read VIP",
            ));
        }
        for backend in &read.backends {
            let node = write
                .backends
                .iter()
                .find(|w| w.name.get_ref() == backend.name.get_ref());
            let same = node.is_some_and(|w| {
                w.address.get_ref() == backend.address.get_ref()
                    && w.port_or(*write.port.get_ref()) == backend.port_or(*read.port.get_ref())
            });
            if !same {
                errors.push(at.error(
                    backend.name.span(),
                    format!("read service `{}`: backend `{}` is not a node of the write service `{}` (same name, address and port)", read.name.get_ref(), backend.name.get_ref(), write.name.get_ref()),
                    "list the same database nodes in both services",
                ));
            }
        }
    }
    for (password, file, what) in [
        (&db.password, &db.password_file, "password"),
        (
            &db.replication_password,
            &db.replication_password_file,
            "replication_password",
        ),
    ] {
        if let (Some(_), Some(file)) = (password, file) {
            errors.push(at.error(
                file.span(),
                format!("database: both {what} and {what}_file are set"),
                "keep one of them (a file keeps secrets out of the config)",
            ));
        }
    }
    let (interval, timeout) = (*db.interval_ms.get_ref(), *db.timeout_ms.get_ref());
    if !(20..=60_000).contains(&interval) {
        errors.push(at.error(
            db.interval_ms.span(),
            format!("database interval_ms {interval} is out of range"),
            format!("use 20 to 60000 (default {DEFAULT_DB_INTERVAL_MS})"),
        ));
    }
    if !(10..=60_000).contains(&timeout) {
        errors.push(at.error(
            db.timeout_ms.span(),
            format!("database timeout_ms {timeout} is out of range"),
            format!("use 10 to 60000 (default {DEFAULT_DB_TIMEOUT_MS})"),
        ));
    }
    let unreachable = *db.unreachable_after_ms.get_ref();
    if unreachable < timeout.saturating_mul(2) || unreachable > 600_000 {
        errors.push(at.error(
            db.unreachable_after_ms.span(),
            format!("database unreachable_after_ms {unreachable} is out of range"),
            format!("use at least twice timeout_ms ({}) and at most 600000 (default {DEFAULT_DB_UNREACHABLE_AFTER_MS})", timeout.saturating_mul(2)),
        ));
    }
    if !(1..=100).contains(db.fail_after.get_ref()) {
        errors.push(at.error(
            db.fail_after.span(),
            format!(
                "database fail_after {} is out of range",
                db.fail_after.get_ref()
            ),
            format!("use 1 to 100 failed probes (default {DEFAULT_DB_FAIL_AFTER})"),
        ));
    }
}

fn validate_firewall(config: &Config, at: &Locator<'_>, errors: &mut Vec<ConfigError>) {
    let fw = &config.firewall;
    let mut names = HashSet::new();
    let mut prefixes = 0usize;
    for rule in &fw.rules {
        let name = rule.name.get_ref();
        if !names.insert(name.clone()) {
            errors.push(at.error(
                rule.name.span(),
                format!("firewall rule `{name}` is defined twice"),
                "give each rule its own name",
            ));
        }
        if rule.sources.is_empty() {
            errors.push(at.error(
                rule.name.span(),
                format!("firewall rule `{name}` has no sources"),
                "add sources = [\"203.0.113.0/24\", ...]",
            ));
        }
        prefixes += rule.sources.len();
    }
    let mut seen = std::collections::HashMap::new();
    for (rule, cidr) in fw
        .rules
        .iter()
        .flat_map(|r| r.sources.iter().map(move |c| (r, c)))
    {
        if let Some(other) = seen.insert(*cidr.get_ref(), rule.name.get_ref().clone()) {
            errors.push(at.error(
                cidr.span(),
                format!(
                    "{} is in firewall rules `{other}` and `{}`",
                    cidr.get_ref(),
                    rule.name.get_ref()
                ),
                "a prefix can belong to one rule only; remove one of them",
            ));
        }
    }
    for bogon in &fw.bogons {
        if seen.contains_key(bogon.get_ref()) {
            errors.push(at.error(
                bogon.span(),
                format!("{} is both a bogon and in a rule", bogon.get_ref()),
                "remove it from one of them",
            ));
        }
    }
    prefixes += fw.bogons.len();
    for service in &config.services {
        prefixes += service.allow_sources.len() + service.deny_sources.len();
        let vip = service.vip.get_ref();
        for cidr in service.allow_sources.iter().chain(&service.deny_sources) {
            if cidr.get_ref().addr().is_ipv4() != vip.is_ipv4() {
                errors.push(at.error(
                    cidr.span(),
                    format!(
                        "service `{}`: source {} is not of the VIP's address family",
                        service.name.get_ref(),
                        cidr.get_ref()
                    ),
                    "list sources of the VIP's family only",
                ));
            }
        }
        if !service.deny_sources.is_empty() && service.allow_sources.is_empty() {
            errors.push(at.error(
                service.deny_sources[0].span(),
                format!("service `{}` has deny_sources but no allow_sources", service.name.get_ref()),
                "deny_sources carve holes in allow_sources; to block sources for everyone use a [[firewall.rule]] with action = \"drop\"",
            ));
        }
    }
    for port in &fw.host.open_ports {
        if *port.port.get_ref() == 0 {
            errors.push(at.error(
                port.port.span(),
                "open port 0",
                "use the port of the service on the host, e.g. 22",
            ));
        }
        prefixes += port.sources.len();
    }
    if prefixes > (lb_common::MAX_PREFIXES / 2) as usize {
        errors.push(at.error(
            0..0,
            format!(
                "{prefixes} prefixes configured, at most {} fit",
                lb_common::MAX_PREFIXES / 2
            ),
            "merge prefixes",
        ));
    }
    if fw.rules.len() + config.services.len() + fw.host.open_ports.len() + 2
        > lb_common::MAX_RULES as usize
    {
        errors.push(at.error(
            0..0,
            "too many firewall rules",
            "merge rules: one rule may hold many prefixes",
        ));
    }
}

/// A NAT service's source addresses: one to `MAX_SNAT_ADDRS`, unicast, distinct, of the VIP's
/// family.
fn validate_snat(
    name: &str,
    vip: &IpAddr,
    snat: &Spanned<SnatAddresses>,
    at: &Locator<'_>,
    errors: &mut Vec<ConfigError>,
) {
    let addrs = &snat.get_ref().0;
    let max = lb_common::MAX_SNAT_ADDRS as usize;
    let mut error = |message: String, help: &str| errors.push(at.error(snat.span(), message, help));
    if addrs.is_empty() {
        error(
            format!("service `{name}`: snat_address is an empty list"),
            "give at least one address of the load balancer on the backends' network",
        );
    }
    if addrs.len() > max {
        error(
            format!(
                "service `{name}`: {} snat addresses, at most {max}",
                addrs.len()
            ),
            "remove addresses (each one already adds the whole NAT port range)",
        );
    }
    for (i, addr) in addrs.iter().enumerate() {
        if addr.is_ipv4() != vip.is_ipv4() {
            error(
                format!("service `{name}`: snat_address {addr} is not of the VIP's address family"),
                "use an IPv4 snat_address for an IPv4 VIP, IPv6 for IPv6",
            );
        } else if addr.is_unspecified()
            || addr.is_multicast()
            || addr.is_loopback()
            || matches!(addr, IpAddr::V4(v4) if v4.is_broadcast())
        {
            error(
                format!("service `{name}`: snat_address {addr} cannot be a source address"),
                "use a unicast address of the load balancer on the backends' network",
            );
        } else if addrs[..i].contains(addr) {
            error(
                format!("service `{name}`: snat_address {addr} is listed twice"),
                "list each address once",
            );
        }
    }
}

fn validate_health(
    service: &str,
    protocol: Protocol,
    health: &HealthConfig,
    at: &Locator<'_>,
    errors: &mut Vec<ConfigError>,
) {
    let kind = *health.kind.get_ref();
    if protocol == Protocol::Udp {
        errors.push(at.error(
            health.kind.span(),
            format!(
                "service `{service}` is UDP; its health check ({kind:?}) would connect over TCP"
            ),
            "check a TCP port of the backends with `port = ...`, or remove [service.health]",
        ));
    }
    let interval = *health.interval_ms.get_ref();
    if !(10..=60_000).contains(&interval) {
        errors.push(at.error(
            health.interval_ms.span(),
            format!("service `{service}`: health interval_ms {interval} is out of range"),
            format!("use 10 to 60000 ms (default {DEFAULT_CHECK_INTERVAL_MS})"),
        ));
    }
    let timeout = *health.timeout_ms.get_ref();
    // A default timeout has no position of its own: point at the interval that is too short.
    let timeout_span = if health.timeout_ms.span().is_empty() {
        health.interval_ms.span()
    } else {
        health.timeout_ms.span()
    };
    if (10..=60_000).contains(&interval) && (timeout < 10 || timeout > interval) {
        errors.push(at.error(
            timeout_span,
            format!("service `{service}`: health timeout_ms {timeout} must be between 10 and interval_ms ({interval})"),
            format!("a check must finish before the next one starts; e.g. timeout_ms = {}", interval.clamp(10, DEFAULT_CHECK_TIMEOUT_MS.max(10))),
        ));
    }
    for (count, what) in [(&health.rise, "rise"), (&health.fall, "fall")] {
        if !(1..=100).contains(count.get_ref()) {
            errors.push(at.error(
                count.span(),
                format!("service `{service}`: health {what} = {} is out of range", count.get_ref()),
                format!("use 1 to 100 consecutive checks (default rise {DEFAULT_RISE}, fall {DEFAULT_FALL})"),
            ));
        }
    }
    if let Some(port) = health.port.as_ref().filter(|p| *p.get_ref() == 0) {
        errors.push(at.error(
            port.span(),
            format!("service `{service}`: health port 0"),
            "remove `port` to check the backend's own port",
        ));
    }
    let is_http = matches!(kind, HealthKind::Http | HealthKind::Https);
    let http_only = [
        health.path.as_ref().map(|p| (p.span(), "path")),
        health.host.as_ref().map(|h| (h.span(), "host")),
        health
            .expect_status
            .as_ref()
            .map(|s| (s.span(), "expect_status")),
        health
            .expect_body
            .as_ref()
            .map(|b| (b.span(), "expect_body")),
    ];
    let mysql_only = [
        health.user.as_ref().map(|u| (u.span(), "user")),
        health.password.as_ref().map(|p| (p.span(), "password")),
        health
            .password_file
            .as_ref()
            .map(|p| (p.span(), "password_file")),
        health.role.as_ref().map(|r| (r.span(), "role")),
        health.max_lag_s.as_ref().map(|l| (l.span(), "max_lag_s")),
    ];
    let misplaced = http_only
        .into_iter()
        .flatten()
        .filter(|_| !is_http)
        .map(|(span, key)| (span, key, "http or https"))
        .chain(
            mysql_only
                .into_iter()
                .flatten()
                .filter(|_| kind != HealthKind::Mysql)
                .map(|(span, key)| (span, key, "mysql")),
        )
        .chain(
            health
                .tls_verify
                .as_ref()
                .filter(|_| kind != HealthKind::Https)
                .map(|v| (v.span(), "tls_verify", "https")),
        );
    for (span, key, kinds) in misplaced {
        errors.push(at.error(
            span,
            format!(
                "service `{service}`: health `{key}` only applies to kind = {kinds}, not {kind:?}"
            ),
            format!("remove `{key}`, or change `kind`"),
        ));
    }
    if let Some(path) = health
        .path
        .as_ref()
        .filter(|p| !p.get_ref().starts_with('/') || p.get_ref().contains(char::is_whitespace))
    {
        errors.push(at.error(
            path.span(),
            format!(
                "service `{service}`: health path `{}` is not a request path",
                path.get_ref()
            ),
            "start it with '/', no spaces, e.g. \"/healthz\"",
        ));
    }
    if let Some(status) = health
        .expect_status
        .as_ref()
        .filter(|s| !(100..=599).contains(s.get_ref()))
    {
        errors.push(at.error(
            status.span(),
            format!(
                "service `{service}`: expect_status {} is not an HTTP status",
                status.get_ref()
            ),
            "use 100 to 599, e.g. 200",
        ));
    }
    if kind == HealthKind::Mysql {
        if health.user.is_none() {
            errors.push(at.error(
                health.kind.span(),
                format!("service `{service}`: a mysql health check needs `user`"),
                "add user = \"lbcheck\" (an account allowed to log in from the load balancer)",
            ));
        }
        if let (Some(_), Some(file)) = (&health.password, &health.password_file) {
            errors.push(at.error(
                file.span(),
                format!("service `{service}`: both password and password_file are set"),
                "keep one of them (password_file keeps secrets out of the config)",
            ));
        }
        if let (Some(lag), Some(role)) = (&health.max_lag_s, &health.role) {
            if *role.get_ref() != MysqlRole::Replica {
                errors.push(at.error(
                    lag.span(),
                    format!("service `{service}`: max_lag_s only applies to role = \"replica\""),
                    "remove max_lag_s, or set role = \"replica\"",
                ));
            }
        }
    }
}

// ---- The validated model, built from a file that passed validation ----

fn values<T>(spanned: Vec<Spanned<T>>) -> Vec<T> {
    spanned.into_iter().map(Spanned::into_inner).collect()
}

impl Config {
    fn into_model(self) -> model::Config {
        model::Config {
            agent: self.agent.into_model(),
            firewall: self.firewall.into_model(),
            api: model::ApiConfig {
                bind: self.api.bind.into_inner(),
                token_file: self.api.token_file.map(Spanned::into_inner),
                tls: match (self.api.tls_cert_file, self.api.tls_key_file) {
                    (Some(cert), Some(key)) => Some(model::ApiTls {
                        cert_file: cert.into_inner(),
                        key_file: key.into_inner(),
                    }),
                    _ => None,
                },
                allowed_hosts: self
                    .api
                    .allowed_hosts
                    .into_iter()
                    .map(|h| h.into_inner().to_ascii_lowercase())
                    .collect(),
                max_connections: self.api.max_connections.into_inner(),
                header_read_timeout_ms: self.api.header_read_timeout_ms.into_inner(),
                idle_timeout_ms: self.api.idle_timeout_ms.into_inner(),
                request_timeout_ms: self.api.request_timeout_ms.into_inner(),
            },
            services: self
                .services
                .into_iter()
                .map(ServiceConfig::into_model)
                .collect(),
            database: self.database.map(DatabaseConfig::into_model),
        }
    }
}

impl AgentConfig {
    fn into_model(self) -> model::AgentConfig {
        model::AgentConfig {
            interface: self.interface.map(Spanned::into_inner),
            pin_path: self.pin_path,
            xdp_mode: self.xdp_mode,
            flow_capacity: self.flow_capacity.into_inner(),
            nat_port_min: self.nat_port_min.into_inner(),
            nat_port_max: self.nat_port_max.into_inner(),
            unverified_capacity: self.unverified_capacity.map(Spanned::into_inner),
            map_memory_budget_mib: self.map_memory_budget_mib.into_inner(),
            timeouts: model::TimeoutsConfig {
                tcp_opening: self.timeouts.tcp_opening.into_inner(),
                tcp_established: self.timeouts.tcp_established.into_inner(),
                tcp_closing: self.timeouts.tcp_closing.into_inner(),
                udp: self.timeouts.udp.into_inner(),
            },
        }
    }
}

impl FirewallConfig {
    fn into_model(self) -> model::FirewallConfig {
        let host = self.host;
        model::FirewallConfig {
            drop_fragments: self.drop_fragments,
            tcp_flag_checks: self.tcp_flag_checks,
            bogons: values(self.bogons),
            host: model::HostPolicyConfig {
                policy: host.policy,
                open_ports: host
                    .open_ports
                    .into_iter()
                    .map(|p| model::OpenPortConfig {
                        port: p.port.into_inner(),
                        protocol: p.protocol,
                        sources: values(p.sources),
                    })
                    .collect(),
                icmp_echo_rate: host.icmp_echo_rate,
                icmp_echo_burst: host.icmp_echo_burst,
                syn_rate: host.syn_rate,
                syn_burst: host.syn_burst,
            },
            rules: self
                .rules
                .into_iter()
                .map(|r| model::RuleConfig {
                    name: r.name.into_inner(),
                    sources: values(r.sources),
                    action: r.action,
                })
                .collect(),
        }
    }
}

impl ServiceConfig {
    fn into_model(self) -> model::ServiceConfig {
        model::ServiceConfig {
            name: self.name.into_inner(),
            vip: self.vip.into_inner(),
            port: self.port.into_inner(),
            protocol: self.protocol,
            mode: self.mode.into_inner(),
            algorithm: self.algorithm,
            snat_address: self.snat_address.map(Spanned::into_inner),
            health: self.health.map(HealthConfig::into_model),
            backends: self
                .backends
                .into_iter()
                .map(|b| model::BackendConfig {
                    name: b.name.into_inner(),
                    address: b.address.into_inner(),
                    port: b.port.map(Spanned::into_inner),
                    weight: b.weight.into_inner(),
                })
                .collect(),
            allow_sources: values(self.allow_sources),
            deny_sources: values(self.deny_sources),
            syn_rate: self.syn_rate,
            syn_burst: self.syn_burst,
            packet_rate: self.packet_rate,
            packet_burst: self.packet_burst,
            syn_budget: self.syn_budget,
            syn_budget_burst: self.syn_budget_burst,
        }
    }
}

impl HealthConfig {
    fn into_model(self) -> model::HealthConfig {
        model::HealthConfig {
            kind: self.kind.into_inner(),
            interval_ms: self.interval_ms.into_inner(),
            timeout_ms: self.timeout_ms.into_inner(),
            rise: self.rise.into_inner(),
            fall: self.fall.into_inner(),
            port: self.port.map(Spanned::into_inner),
            path: self.path.map(Spanned::into_inner),
            host: self.host.map(Spanned::into_inner),
            expect_status: self.expect_status.map(Spanned::into_inner),
            expect_body: self.expect_body.map(Spanned::into_inner),
            tls_verify: self.tls_verify.map(Spanned::into_inner),
            user: self.user.map(Spanned::into_inner),
            password: self.password.map(Spanned::into_inner),
            password_file: self.password_file.map(Spanned::into_inner),
            role: self.role.map(Spanned::into_inner),
            max_lag_s: self.max_lag_s.map(Spanned::into_inner),
        }
    }
}

impl DatabaseConfig {
    fn into_model(self) -> model::DatabaseConfig {
        model::DatabaseConfig {
            write_service: self.write_service.into_inner(),
            read_service: self.read_service.map(Spanned::into_inner),
            user: self.user.into_inner(),
            password: self.password.map(Spanned::into_inner),
            password_file: self.password_file.map(Spanned::into_inner),
            replication_user: self.replication_user.into_inner(),
            replication_password: self.replication_password.map(Spanned::into_inner),
            replication_password_file: self.replication_password_file.map(Spanned::into_inner),
            interval_ms: self.interval_ms.into_inner(),
            timeout_ms: self.timeout_ms.into_inner(),
            fail_after: self.fail_after.into_inner(),
            max_lag_s: self.max_lag_s.into_inner(),
            unreachable_after_ms: self.unreachable_after_ms.into_inner(),
            failover: self.failover,
            state_file: self.state_file,
        }
    }
}
