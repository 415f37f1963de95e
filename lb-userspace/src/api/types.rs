//! What the status API sends and accepts, shared with the CLI (which decodes the same types).
use serde::{Deserialize, Serialize};

/// `GET /api/v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub pid: u32,
    pub uptime_s: u64,
    /// Unix seconds.
    pub started_at: u64,
    pub interface: String,
    /// How the program is attached: `native`, `generic`, `generic_fallback` (native refused),
    /// or `replaced_pinned` (an earlier agent's link now runs this agent's program).
    pub attach: String,
    pub pin_path: String,
    /// The maps (and the live flows) were adopted from an earlier agent.
    pub adopted: bool,
    pub config_path: String,
    pub api_bind: String,
    /// False when no `api.token_file` is configured: every write is refused.
    pub writes_enabled: bool,
    pub reloads: u64,
    pub last_reload: Option<ReloadInfo>,
    pub services: usize,
    pub backends: BackendCounts,
    pub traffic: Traffic,
    pub verdicts: Vec<VerdictCount>,
    /// The database cluster's roles and failovers; `None` without a `[database]` section.
    #[serde(default)]
    pub database: Option<DatabaseStatus>,
    /// The kernel memory of every map of the data path (the kernel's own figures), largest
    /// first; `None` from an agent before this field, or if the kernel could not be asked.
    #[serde(default)]
    pub map_memory: Option<crate::sizing::MemoryReport>,
    /// The interface's addresses the host policy protects (besides the VIPs), kept up to date
    /// as addresses come and go.
    #[serde(default)]
    pub host_addresses: Vec<String>,
    /// Each NAT-mode service's ports.
    #[serde(default)]
    pub nat: Vec<ServiceNatPorts>,
}

/// The database cluster in `GET /api/v1/status` (field `database`): the roles and failovers the
/// agent's watch of the `[database]` section reported last.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatabaseStatus {
    /// The services of the write and read VIPs.
    #[serde(default)]
    pub write_service: String,
    #[serde(default)]
    pub read_service: Option<String>,
    /// `database.failover`: `safe`, `available` or `off`.
    #[serde(default)]
    pub failover_policy: String,
    pub primary: Option<String>,
    /// The node behind the write VIP, and those behind the read VIP.
    pub write: Option<String>,
    pub read: Vec<String>,
    /// Why there is no writable primary and the agent will not make one on its own (safe
    /// failover refused, failover off, or no record of the primary); `lb db promote` decides.
    #[serde(default)]
    pub failover_blocked: Option<String>,
    pub failovers: u64,
    pub last_failover: Option<FailoverRecord>,
    pub nodes: Vec<DatabaseNode>,
    /// The watch could not save its memory: a restarted agent would not know the primary.
    #[serde(default)]
    pub memory_error: Option<String>,
}

/// A failover that happened.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FailoverRecord {
    pub from: String,
    pub to: String,
    pub at_unix: u64,
    /// From the first failed probe of the old primary to the new one being writable.
    pub duration_ms: u64,
    /// An operator's `lb db promote --force`, not the agent's own decision.
    #[serde(default)]
    pub forced: bool,
}

/// `POST /api/v1/database/promote`: make a node the primary whatever the failover policy says.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PromoteRequest {
    pub node: String,
    /// Must be true: the operator takes responsibility for writes the node may lack.
    #[serde(default)]
    pub force: bool,
}

/// One database node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatabaseNode {
    pub name: String,
    pub address: String,
    pub role: DatabaseRole,
    pub reachable: bool,
    pub read_only: Option<bool>,
    pub lag_s: Option<u64>,
    pub gtid: Option<String>,
    pub semi_sync: Option<bool>,
    /// `host:port` this node replicates from.
    pub replicating_from: Option<String>,
    pub error: Option<String>,
}

/// A database node's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DatabaseRole {
    /// The writable node behind the write VIP.
    Primary,
    /// Replicating from the primary within `max_lag_s`: in the read service.
    Replica,
    /// Replicating from the primary, but behind by more than `max_lag_s` or with a thread stopped.
    Lagging,
    /// Read-only, not (yet) replicating from the primary; the agent re-points it.
    Standby,
    /// Writable but not the primary: being made read-only.
    Fenced,
    /// Holds writes the primary never had, or failed to apply one: rebuild it.
    Diverged,
    /// Does not answer.
    Down,
    /// Not probed yet.
    Unknown,
}

/// A NAT service's ports, in `GET /api/v1/status`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceNatPorts {
    pub service: String,
    #[serde(flatten)]
    pub ports: NatPorts,
}

/// The source ports of a NAT service towards its backends.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NatPorts {
    /// Ports held by live flows, as last counted; `None` before the first count.
    pub in_use: Option<u64>,
    /// `agent.nat_port_min..=nat_port_max` towards each backend, once per snat address.
    pub available: u64,
    /// The addresses backends see connections come from (`snat_address`).
    #[serde(default)]
    pub snat_addresses: Vec<String>,
    /// New flows dropped as `drop_nat_ports_exhausted`: none of the ports they tried was free.
    pub exhausted_drops: u64,
    /// False when the last count stopped at its time budget: `in_use` is then a lower bound.
    pub complete: bool,
    /// Seconds since the last count.
    pub counted_s_ago: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReloadInfo {
    pub at: u64,
    pub ok: bool,
    pub message: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BackendCounts {
    pub total: usize,
    pub active: usize,
    pub draining: usize,
    pub down: usize,
    /// Out of a database VIP because of their role, not because they fail.
    #[serde(default)]
    pub standby: usize,
}

/// Totals over every verdict.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub dropped_packets: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VerdictCount {
    pub verdict: String,
    pub packets: u64,
    pub bytes: u64,
}

/// One entry of `GET /api/v1/services`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServiceInfo {
    pub name: String,
    pub vip: String,
    pub port: u16,
    pub protocol: String,
    pub mode: String,
    pub algorithm: String,
    /// Health check kind (`tcp`, `http`, `https`, `mysql`), if any.
    pub health_check: Option<String>,
    pub backends: usize,
    /// Backends that take new flows now.
    pub in_rotation: usize,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// NAT mode only: ports in use and available, and the flows dropped for want of a port.
    #[serde(default)]
    pub nat_ports: Option<NatPorts>,
}

/// `GET /api/v1/services/{name}/backends`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendList {
    pub service: String,
    pub backends: Vec<BackendInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BackendInfo {
    pub name: String,
    pub id: u32,
    pub address: String,
    pub port: u16,
    pub weight: u32,
    /// What the data path does with it: `active`, `draining` or `down`.
    pub state: String,
    /// The operator's choice: `enabled` or `draining`.
    pub admin: String,
    /// `None` until ARP/NDP answered; such a backend is kept out of rotation.
    pub mac: Option<String>,
    pub health: Option<HealthInfo>,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HealthInfo {
    pub kind: String,
    pub up: bool,
    pub checks: u64,
    pub failures: u64,
    pub last_ok: Option<bool>,
    /// What the last check saw, or why it failed.
    pub last_detail: Option<String>,
    pub last_latency_ms: Option<f64>,
    /// Unix seconds of the last up/down change (or of the start).
    pub since: u64,
}

/// `GET /api/v1/flows`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowPage {
    pub flows: Vec<FlowInfo>,
    /// Pass as `cursor` for the next page; absent at the end.
    pub next_cursor: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FlowInfo {
    /// Client `address:port` (IPv6 in brackets).
    pub client: String,
    /// Service `vip:port`.
    pub vip: String,
    pub protocol: String,
    pub service: Option<String>,
    pub backend: Option<String>,
    /// NAT mode: the source port used towards the backend.
    pub nat_port: Option<u16>,
    /// `opening` (TCP before the client's ACK), `established`, `closing` or `udp`.
    pub state: String,
    /// Seconds since the flow's last packet on the data path's flow clock (which records it
    /// at most once a second).
    pub idle_seconds: u32,
}

/// `PUT .../weight`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WeightRequest {
    pub weight: u32,
}

/// `POST /api/v1/services/{name}/backends`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddBackendRequest {
    pub name: String,
    pub address: String,
    /// Defaults to the service port (DSR cannot change it).
    #[serde(default)]
    pub port: Option<u16>,
    /// 1..100, default 1.
    #[serde(default)]
    pub weight: Option<u32>,
}

/// The answer to a successful write.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChangeResult {
    pub ok: bool,
    pub message: String,
}

/// Every error: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable, for scripts: see the OpenAPI document.
    pub code: String,
    /// For people.
    pub message: String,
}

/// `GET /api/v1/firewall/rules`: every rule with its counters, and the drops by reason.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FirewallRules {
    pub rules: Vec<FirewallRule>,
    /// Packets dropped by the firewall, by reason (`drop_denied`, `drop_rate_limited`, ...).
    pub drops: Vec<VerdictCount>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FirewallRule {
    pub id: u32,
    pub name: String,
    /// `global`, `bogons`, `service_allow`, `service_deny`, `service_default_drop`,
    /// `host_port_allow`, `host_port_default_drop`; with `service` or `port`/`protocol`.
    pub kind: serde_json::Value,
    /// `allow`, `drop` or `log` (a dry run: counted, not dropped).
    pub action: String,
    pub prefixes: Vec<String>,
    /// Added through the API (gone at the next reload or restart), not from the config file.
    pub runtime: bool,
    pub packets: u64,
    pub bytes: u64,
    /// Seconds since the rule last matched (coarse), `None` if it never did.
    pub last_hit_s_ago: Option<f64>,
}

/// `POST /api/v1/firewall/rules`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddRuleRequest {
    pub name: String,
    /// CIDR prefixes (or addresses), IPv4 and IPv6.
    pub sources: Vec<String>,
    /// `allow`, `drop` or `log`.
    pub action: String,
}
