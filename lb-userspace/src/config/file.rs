//! The configuration file as written: TOML with the span of every value, checked whole (every
//! error located by line and column, with its fix), then turned into the validated model that
//! the running agent reads (`model.rs`).
use std::{
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::Deserialize;
use toml::Spanned;

use super::{
    error::ConfigErrors,
    model::{
        self, parse_prefix, Action, Algorithm, FailoverPolicy, HealthKind, HostPolicy, Mode,
        MysqlRole, Protocol, Secret, SnatAddresses, XdpModeConfig, DEFAULT_API_BIND,
        DEFAULT_API_HEADER_READ_TIMEOUT_MS, DEFAULT_API_IDLE_TIMEOUT_MS,
        DEFAULT_API_MAX_CONNECTIONS, DEFAULT_API_REQUEST_TIMEOUT_MS, DEFAULT_CHECK_INTERVAL_MS,
        DEFAULT_CHECK_TIMEOUT_MS, DEFAULT_DB_FAIL_AFTER, DEFAULT_DB_INTERVAL_MS,
        DEFAULT_DB_STATE_FILE, DEFAULT_DB_TIMEOUT_MS, DEFAULT_DB_UNREACHABLE_AFTER_MS,
        DEFAULT_FALL, DEFAULT_FLOW_CAPACITY, DEFAULT_MAP_MEMORY_BUDGET_MIB, DEFAULT_MAX_LAG_S,
        DEFAULT_PIN_PATH, DEFAULT_RISE,
    },
    validate::{validate, validate_memory_budget, Locator},
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
    pub failover: Spanned<FailoverSetting>,
    /// Where the watch remembers the primary and its ledger across restarts.
    #[serde(default = "default_db_state_file")]
    pub state_file: PathBuf,
}

fn default_db_unreachable_after_ms() -> Spanned<u64> {
    Spanned::new(0..0, DEFAULT_DB_UNREACHABLE_AFTER_MS)
}
/// `database.failover` as written: one of the policies, or the bool of older configs (refused
/// by validation with the words that replace it).
#[derive(Debug, Clone, Copy)]
pub enum FailoverSetting {
    Policy(FailoverPolicy),
    Bool(bool),
}

impl<'de> Deserialize<'de> for FailoverSetting {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = FailoverSetting;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("\"safe\", \"available\" or \"off\"")
            }
            fn visit_bool<E: serde::de::Error>(self, value: bool) -> Result<Self::Value, E> {
                Ok(FailoverSetting::Bool(value))
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<Self::Value, E> {
                FailoverPolicy::deserialize(serde::de::value::StrDeserializer::<E>::new(value))
                    .map(FailoverSetting::Policy)
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

fn default_failover_policy() -> Spanned<FailoverSetting> {
    Spanned::new(0..0, FailoverSetting::Policy(FailoverPolicy::Safe))
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
    pub(super) fn fields(&self) -> [(&'static str, &Spanned<u32>); 4] {
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
pub(super) const MAX_MAP_MEMORY_BUDGET_MIB: u64 = 1 << 20;

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
            // A bool was refused by validation: this model is built only from a valid file.
            failover: match self.failover.into_inner() {
                FailoverSetting::Policy(policy) => policy,
                FailoverSetting::Bool(_) => FailoverPolicy::Safe,
            },
            state_file: self.state_file,
        }
    }
}
