//! The validated configuration, as the running agent reads it: plain values, without the spans
//! of the file they came from (`file.rs` reads and checks the file, then builds these).
use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use ipnet::IpNet;
use serde::Deserialize;

use crate::sizing::{MapDemand, MapSizes};

/// Default bpffs directory for pinned maps and links.
pub const DEFAULT_PIN_PATH: &str = "/sys/fs/bpf/lb";

#[derive(Debug, Clone)]
pub struct Config {
    pub agent: AgentConfig,
    pub firewall: FirewallConfig,
    pub api: ApiConfig,
    pub services: Vec<ServiceConfig>,
    /// A MySQL/MariaDB primary-replica cluster behind a write VIP and a read VIP, with failover.
    pub database: Option<DatabaseConfig>,
}

impl Config {
    /// What this config asks of the maps (their sizes and the memory estimate follow it).
    pub fn map_demand(&self) -> MapDemand {
        let has = |f: &dyn Fn(&ServiceConfig) -> bool| self.services.iter().any(f);
        let firewall_prefixes = || {
            let fw = &self.firewall;
            fw.rules.iter().flat_map(|r| &r.sources).chain(&fw.bogons)
        };
        let host = &self.firewall.host;
        let host_limited =
            host.policy == HostPolicy::Restrict && (host.icmp_echo_rate > 0 || host.syn_rate > 0);
        let service_limited = has(&|s| s.syn_rate > 0 || s.packet_rate > 0 || s.syn_budget > 0);
        MapDemand {
            flow_capacity: self.agent.flow_capacity,
            unverified_capacity: self.agent.unverified_capacity(),
            ipv4_services: has(&|s| s.vip.is_ipv4()),
            ipv6_services: has(&|s| s.vip.is_ipv6()),
            nat_services: has(&|s| s.mode == Mode::Nat),
            rate_limits: host_limited || service_limited,
            v4_prefixes: firewall_prefixes().filter(|c| c.addr().is_ipv4()).count(),
            v6_prefixes: firewall_prefixes().filter(|c| c.addr().is_ipv6()).count(),
            scoped_sources: self
                .services
                .iter()
                .map(|s| (s.allow_sources.len() + s.deny_sources.len() + 2) as u64)
                .sum::<u64>()
                + host
                    .open_ports
                    .iter()
                    .map(|p| p.sources.len() as u64 + 1)
                    .sum::<u64>(),
        }
    }

    /// The sizes the agent makes the config-dependent maps for this config.
    pub fn map_sizes(&self) -> MapSizes {
        MapSizes::for_demand(&self.map_demand())
    }
}

/// The database cluster the agent watches and fails over. Its nodes are the backends of the
/// write service; the agent keeps only the current primary in it, and the healthy replicas (or
/// the primary, when there is none) in the read service.
#[derive(Debug, Clone)]
pub struct DatabaseConfig {
    /// The service of the write VIP; its backends are the cluster's nodes.
    pub write_service: String,
    /// The service of the read VIP (backends: some or all of the nodes, same names).
    pub read_service: Option<String>,
    /// The account the agent watches, promotes and demotes nodes with (needs SUPER,
    /// RELOAD, READ_ONLY ADMIN, REPLICATION SLAVE ADMIN, SLAVE MONITOR).
    pub user: String,
    pub password: Option<Secret>,
    pub password_file: Option<PathBuf>,
    /// The account replicas connect to the primary with (REPLICATION SLAVE).
    pub replication_user: String,
    pub replication_password: Option<Secret>,
    pub replication_password_file: Option<PathBuf>,
    /// How often every node is probed.
    pub interval_ms: u64,
    /// How long one probe (connect + queries) may take.
    pub timeout_ms: u64,
    /// Consecutive failed probes of the primary before it is replaced.
    pub fail_after: u32,
    /// Largest replication lag (seconds) of a replica still in the read service.
    pub max_lag_s: u64,
    /// A probe with no answer for this long makes a node gone rather than slow.
    pub unreachable_after_ms: u64,
    /// When the agent promotes a replica on its own.
    pub failover: FailoverPolicy,
    /// Where the watch keeps what it must not forget across restarts (primary, ledger).
    pub state_file: PathBuf,
}

/// `database.failover`: when the agent promotes a replica on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailoverPolicy {
    /// Only a replica that provably holds every acknowledged write (the default).
    Safe,
    /// The most advanced replica, even when acknowledged writes may be lost.
    Available,
    /// Never change a node: watch, route and report only.
    Off,
}

pub const DEFAULT_DB_INTERVAL_MS: u64 = 200;
pub const DEFAULT_DB_TIMEOUT_MS: u64 = 500;
pub const DEFAULT_DB_UNREACHABLE_AFTER_MS: u64 = 6_000;
pub const DEFAULT_DB_FAIL_AFTER: u32 = 3;
pub const DEFAULT_DB_STATE_FILE: &str = "/var/lib/lb/database.json";

impl DatabaseConfig {
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

/// The firewall: CIDR rules on sources, packet sanity checks, and the policy for traffic to
/// the load balancer itself.
#[derive(Debug, Clone)]
pub struct FirewallConfig {
    /// Drop IPv4 fragments addressed to a VIP (they cannot be balanced).
    pub drop_fragments: bool,
    /// Drop TCP packets with impossible flags (SYN+FIN, SYN+RST, none, FIN+PSH+URG).
    pub tcp_flag_checks: bool,
    /// Source prefixes that cannot be genuine on this interface; dropped as spoofed.
    pub bogons: Vec<IpNet>,
    pub host: HostPolicyConfig,
    pub rules: Vec<RuleConfig>,
}

/// Traffic to the load balancer's own addresses (not to a service).
#[derive(Debug, Clone)]
pub struct HostPolicyConfig {
    /// "restrict": only open ports, replies to the host's own connections and ICMP (echo rate
    /// limited) reach the host; "open": no host policy.
    pub policy: HostPolicy,
    /// Ports open on the host, e.g. SSH and the status API, optionally only for some sources.
    pub open_ports: Vec<OpenPortConfig>,
    /// ICMP echo requests per second per source (0: unlimited), and the burst.
    pub icmp_echo_rate: u32,
    pub icmp_echo_burst: u32,
    /// New connections per second per source to the open ports (0: unlimited).
    pub syn_rate: u32,
    pub syn_burst: u32,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HostPolicy {
    #[default]
    Restrict,
    Open,
}

#[derive(Debug, Clone)]
pub struct OpenPortConfig {
    pub port: u16,
    pub protocol: Protocol,
    /// Only these sources may connect (empty: any).
    pub sources: Vec<IpNet>,
}

/// A named rule on source prefixes, longest prefix wins across all rules.
#[derive(Debug, Clone)]
pub struct RuleConfig {
    pub name: String,
    pub sources: Vec<IpNet>,
    pub action: Action,
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Drop,
    /// Dry run: counted and reported, not dropped.
    Log,
}

/// An IPv4 or IPv6 prefix as the config and the API write it, "10.0.0.0/8" or "2001:db8::/32":
/// a bare address is a /32 or /128, host bits are cleared, spaces around either part are
/// trimmed.
pub fn parse_prefix(text: &str) -> Result<IpNet, String> {
    let (addr, len) = match text.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (text, None),
    };
    let addr: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| format!("`{text}` is not an IP address or prefix"))?;
    let host = IpNet::from(addr);
    let net = match len {
        Some(len) => len
            .trim()
            .parse::<u8>()
            .ok()
            .and_then(|len| IpNet::new(addr, len).ok())
            .ok_or_else(|| {
                format!(
                    "`{text}`: the prefix length must be 0..={}",
                    host.max_prefix_len()
                )
            })?,
        None => host,
    };
    Ok(net.trunc())
}

#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Network interface the XDP program is attached to.
    pub interface: Option<String>,
    /// bpffs directory where maps and the XDP link are pinned.
    pub pin_path: PathBuf,
    pub xdp_mode: XdpModeConfig,
    /// Connections the flow table holds (LRU), for each address family that has a service.
    pub flow_capacity: u32,
    /// NAT source ports towards backends.
    pub nat_port_min: u16,
    pub nat_port_max: u16,
    /// Entries of the table of unverified flows (TCP before its handshake completes, and UDP);
    /// default: a quarter of `flow_capacity` (see [`AgentConfig::unverified_capacity`]).
    pub unverified_capacity: Option<u32>,
    /// The most kernel memory the data path's maps may take, in MiB: a config whose maps would
    /// take more (by the estimate of `sizing::estimate`) is refused.
    pub map_memory_budget_mib: u64,
    /// How long a flow of each state may stay idle.
    pub timeouts: TimeoutsConfig,
}

/// `[agent.timeouts]`: idle limits of flows, in seconds, by state.
#[derive(Debug, Clone)]
pub struct TimeoutsConfig {
    pub tcp_opening: u32,
    pub tcp_established: u32,
    pub tcp_closing: u32,
    pub udp: u32,
}

impl TimeoutsConfig {
    /// As the data path reads them.
    pub fn to_map(&self) -> lb_common::maps::FlowTimeouts {
        lb_common::maps::FlowTimeouts {
            tcp_opening: self.tcp_opening,
            tcp_established: self.tcp_established,
            tcp_closing: self.tcp_closing,
            udp: self.udp,
        }
    }
}

/// Default `agent.flow_capacity`: 256k connections. 1M is one setting away (`flow_capacity =
/// 1048576`, about 340 MiB of maps with a NAT service; docs/OPERATIONS.md).
pub const DEFAULT_FLOW_CAPACITY: u32 = 1 << 18;
/// Default `agent.map_memory_budget_mib`: room for 1M flows with NAT and IPv6 services.
pub const DEFAULT_MAP_MEMORY_BUDGET_MIB: u64 = 1024;

impl AgentConfig {
    /// `unverified_capacity`, or its default: a quarter of `flow_capacity`, at least 1024 (the
    /// ratio of the defaults before tables were sized from the config).
    pub fn unverified_capacity(&self) -> u32 {
        self.unverified_capacity
            .unwrap_or((self.flow_capacity / 4).max(1024))
    }

    /// Another `flow_capacity` (a command-line override: `lb map-memory`, the bench).
    pub fn set_flow_capacity(&mut self, capacity: u32) {
        self.flow_capacity = capacity;
    }

    /// `map_memory_budget_mib` in bytes.
    pub fn map_memory_budget_bytes(&self) -> u64 {
        self.map_memory_budget_mib.saturating_mul(1024 * 1024)
    }
}

/// Default address of the status API: loopback only, so reads are not exposed by accident.
pub const DEFAULT_API_BIND: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9876);

/// Default of `api.max_connections`: an operator, a dashboard and a metrics scraper need a
/// handful; the rest of the descriptors stay with health checks and the database watch.
pub const DEFAULT_API_MAX_CONNECTIONS: u32 = 128;
pub const DEFAULT_API_HEADER_READ_TIMEOUT_MS: u64 = 5_000;
pub const DEFAULT_API_IDLE_TIMEOUT_MS: u64 = 30_000;
pub const DEFAULT_API_REQUEST_TIMEOUT_MS: u64 = 30_000;

#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Address the status API listens on.
    pub bind: SocketAddr,
    /// File holding the bearer token that write requests must present; without it, writes are
    /// refused. With a non-loopback bind, reads need it too.
    pub token_file: Option<PathBuf>,
    /// HTTPS (required by validation when the bind is not loopback).
    pub tls: Option<ApiTls>,
    /// Host names clients may use besides the bind address, lowercase.
    pub allowed_hosts: Vec<String>,
    /// Open API connections at most.
    pub max_connections: u32,
    pub header_read_timeout_ms: u64,
    pub idle_timeout_ms: u64,
    pub request_timeout_ms: u64,
}

impl ApiConfig {
    /// Reachable from other hosts: TLS, and the token for reads too.
    pub fn is_exposed(&self) -> bool {
        !self.bind.ip().is_loopback()
    }
}

/// The API's certificate and key (PEM files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
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

/// `snat_address`: one address (`"10.0.0.3"`) or a list (`["10.0.0.3", "10.0.0.4"]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnatAddresses(pub Vec<IpAddr>);

#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub name: String,
    pub vip: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub mode: Mode,
    pub algorithm: Algorithm,
    /// NAT mode: the load balancer's address(es) backends reply to (same family as the VIP);
    /// each one adds the whole NAT port range to what a backend can hold at once.
    pub snat_address: Option<SnatAddresses>,
    /// Health check of every backend; none means backends are always considered up.
    pub health: Option<HealthConfig>,
    pub backends: Vec<BackendConfig>,
    /// Only these sources may use the service (empty: everyone the global rules let through).
    pub allow_sources: Vec<IpNet>,
    /// Sources refused even inside `allow_sources` (longest prefix wins).
    pub deny_sources: Vec<IpNet>,
    /// New connections (TCP SYN) per second per source address (/32, /64), and the burst.
    pub syn_rate: u32,
    pub syn_burst: u32,
    /// Packets per second per source address, and the burst.
    pub packet_rate: u32,
    pub packet_burst: u32,
    /// New connections per second from all sources together (floods from many addresses).
    pub syn_budget: u32,
    pub syn_budget_burst: u32,
}

#[derive(Debug, Clone)]
pub struct BackendConfig {
    pub name: String,
    pub address: IpAddr,
    /// Defaults to the service port; DSR requires it to equal the service port.
    pub port: Option<u16>,
    pub weight: u32,
}

impl BackendConfig {
    pub fn port_or(&self, service_port: u16) -> u16 {
        self.port.unwrap_or(service_port)
    }
}

#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HealthKind {
    /// A TCP connection is accepted.
    Tcp,
    /// `GET path` answers the expected status (and body text).
    Http,
    /// The same over TLS.
    Https,
    /// MySQL/MariaDB handshake, login, `SELECT 1`, and the expected role.
    Mysql,
}

/// Which MySQL role a backend must have to stay in rotation.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum MysqlRole {
    /// Any server that answers `SELECT 1`.
    #[default]
    Any,
    /// Writable (`@@read_only = 0`).
    Primary,
    /// Replication running, lag at most `max_lag_s`.
    Replica,
}

/// Defaults detect a dead backend within interval x fall = 600 ms (HAProxy's take 6 s).
pub const DEFAULT_CHECK_INTERVAL_MS: u64 = 200;
pub const DEFAULT_CHECK_TIMEOUT_MS: u64 = 200;
pub const DEFAULT_RISE: u32 = 2;
pub const DEFAULT_FALL: u32 = 3;

#[derive(Debug, Clone)]
pub struct HealthConfig {
    pub kind: HealthKind,
    pub interval_ms: u64,
    pub timeout_ms: u64,
    /// Consecutive successes that bring a down backend back.
    pub rise: u32,
    /// Consecutive failures that take a backend out.
    pub fall: u32,
    /// Port to check; defaults to the backend's port.
    pub port: Option<u16>,
    /// HTTP(S): the path to GET.
    pub path: Option<String>,
    /// HTTP(S): the `Host` header; defaults to the backend address.
    pub host: Option<String>,
    /// HTTP(S): the status that means healthy (default 200).
    pub expect_status: Option<u16>,
    /// HTTP(S): text the body must contain.
    pub expect_body: Option<String>,
    /// HTTPS: verify the certificate against the web PKI roots (default true).
    pub tls_verify: Option<bool>,
    /// MySQL: the account the check logs in with.
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// MySQL: a file holding the password (first line), instead of `password`.
    pub password_file: Option<PathBuf>,
    pub role: Option<MysqlRole>,
    /// MySQL replica: largest replication lag (seconds) still healthy.
    pub max_lag_s: Option<u64>,
}

/// Default largest replication lag of a healthy replica.
pub const DEFAULT_MAX_LAG_S: u64 = 10;

impl HealthConfig {
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms)
    }
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
    pub fn path(&self) -> &str {
        self.path.as_deref().unwrap_or("/")
    }
    pub fn expect_status(&self) -> u16 {
        self.expect_status.unwrap_or(200)
    }
    pub fn tls_verify(&self) -> bool {
        self.tls_verify.unwrap_or(true)
    }
    pub fn role(&self) -> MysqlRole {
        self.role.unwrap_or(MysqlRole::Any)
    }
    pub fn max_lag_s(&self) -> u64 {
        self.max_lag_s.unwrap_or(DEFAULT_MAX_LAG_S)
    }
}

/// Highest weight a backend may have: weights expand into selection-table slots.
pub const MAX_WEIGHT: u32 = 100;

/// A secret given inline or as a file; `None` when neither is set. The error is a plain
/// message: this module is also compiled alone by the config fuzz target.
pub fn read_secret(
    inline: Option<&Secret>,
    file: Option<&PathBuf>,
    what: &str,
) -> Result<Option<String>, String> {
    match (inline, file) {
        (Some(value), _) => Ok(Some(value.expose().to_string())),
        (None, Some(path)) => read_secret_file(path, what).map(Some),
        (None, None) => Ok(None),
    }
}

/// A password given inline in the config: its `Debug` form is redacted, so no `{:?}` of a
/// config, in a log line or a test failure, prints it.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(redacted)")
    }
}

/// The agent's one reader of secret files (passwords, the API token): the first line, without
/// the spaces and line end an editor leaves around it; an empty one is an error.
pub fn read_secret_file(path: &std::path::Path, what: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading the {what} file {}: {e}", path.display()))?;
    let secret = text.lines().next().unwrap_or_default().trim();
    if secret.is_empty() {
        return Err(format!(
            "the {what} file {} is empty: put the secret on its first line",
            path.display()
        ));
    }
    Ok(secret.to_string())
}
