//! `lb run`: load (or adopt) the data path, program it from the config, attach, then own the
//! running state: health-check tasks, runtime backend changes, config reloads (SIGHUP or API),
//! backend MAC resolution, and the status API. SIGINT/SIGTERM detach cleanly; a killed agent
//! leaves the pinned program forwarding, and the next `lb run` adopts it.
use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard, Weak},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, Result};
use aya::programs::XdpMode;
use lb_common::maps::{Backend, RuleCounters, Settings, BACKEND_DOWN, BACKEND_DRAINING};
use log::{info, warn};
use tokio::{
    signal::unix::{signal, SignalKind},
    task::AbortHandle,
};

use crate::{
    api,
    check_metrics::CheckMetrics,
    config::{self, ApiConfig, Config, Mode, XdpModeConfig, MAX_WEIGHT},
    dataplane::{Attached, Dataplane, LoadOptions, NatPortCount, NatTables},
    db,
    firewall::{self, RuleActivity, RuleSet},
    health::{self, Check, Tracker},
    neighbor,
    services::{self, BackendEntry, BackendState, ServiceEntry, ServiceTable},
    sizing,
};

pub struct RunOptions {
    pub config_path: PathBuf,
    /// Overrides `agent.interface`.
    pub iface: Option<String>,
    /// Overrides `agent.pin_path`.
    pub pin_path: Option<PathBuf>,
}

/// How long one backend's MAC resolution may take at start-up.
const RESOLVE_TIMEOUT: Duration = Duration::from_millis(1500);
/// How often backends without a MAC are tried again.
const RESOLVE_RETRY: Duration = Duration::from_secs(1);
/// The interface's addresses are re-read on every address notification, and this often without
/// one (a notification lost to a full socket buffer, or no netlink at all).
const HOST_ADDRS_RECHECK: Duration = Duration::from_secs(10);
/// The NAT ports in use are counted this long after the previous count ended...
const NAT_COUNT_INTERVAL: Duration = Duration::from_secs(2);
/// ...and one count walks the NAT table for this long at most (then it is a lower bound).
const NAT_COUNT_BUDGET: Duration = Duration::from_secs(2);

pub type SharedState = Arc<Mutex<AgentState>>;

/// Locks the state; a panic elsewhere while holding it leaves data that is still consistent
/// enough to serve (every change is written to the maps before it is recorded).
pub fn lock(state: &SharedState) -> MutexGuard<'_, AgentState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The operator's choice for a backend, independent of its health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminState {
    Enabled,
    /// No new flows; existing ones finish.
    Draining,
}

/// What the agent knows about a backend beyond its map entry.
#[derive(Debug, Clone)]
pub struct BackendRuntime {
    /// The backend id's generation this belongs to (ids are reused with a new generation).
    pub generation: u32,
    pub admin: AdminState,
    /// `None` when the service has no health check.
    pub health: Option<HealthStatus>,
    /// Database services only: whether the node's role belongs behind this VIP (the primary
    /// for writes, healthy replicas for reads); `None` for other services.
    pub role_up: Option<bool>,
}

#[derive(Debug, Clone)]
pub struct HealthStatus {
    pub kind: &'static str,
    pub tracker: Tracker,
    pub checks: u64,
    pub failures: u64,
    /// What the last check saw (`Ok`) or why it failed (`Err`).
    pub last: Option<Result<String, String>>,
    pub last_latency: Option<Duration>,
    pub since: SystemTime,
}

impl HealthStatus {
    fn new(kind: &'static str, tracker: Tracker) -> Self {
        Self {
            kind,
            tracker,
            checks: 0,
            failures: 0,
            last: None,
            last_latency: None,
            since: SystemTime::now(),
        }
    }
}

/// The running health-check task of a backend id.
struct Checker {
    /// Distinguishes this task from an aborted predecessor still holding an outcome.
    token: u64,
    task: AbortHandle,
}

/// Why a runtime change was refused.
#[derive(Debug)]
pub enum ChangeError {
    ServiceNotFound(String),
    BackendNotFound {
        service: String,
        backend: String,
    },
    RuleNotFound(String),
    /// The change contradicts the current state (duplicate, last backend...).
    Conflict(String),
    /// A value is not acceptable (weight, address, port).
    Invalid(String),
    /// A reload found the new config invalid; the running one is kept.
    InvalidConfig(String),
    Internal(anyhow::Error),
}

impl std::fmt::Display for ChangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChangeError::ServiceNotFound(service) => write!(f, "no service named `{service}`"),
            ChangeError::BackendNotFound { service, backend } => {
                write!(f, "service `{service}` has no backend named `{backend}`")
            }
            ChangeError::RuleNotFound(rule) => write!(f, "no firewall rule named `{rule}`"),
            ChangeError::Conflict(message) | ChangeError::Invalid(message) => {
                write!(f, "{message}")
            }
            ChangeError::InvalidConfig(message) => write!(
                f,
                "the new config is invalid; the running one is kept:\n{message}"
            ),
            ChangeError::Internal(error) => write!(f, "{error:#}"),
        }
    }
}

impl From<anyhow::Error> for ChangeError {
    fn from(error: anyhow::Error) -> Self {
        ChangeError::Internal(error)
    }
}

/// A backend to add at runtime.
#[derive(Debug, Clone)]
pub struct NewBackend {
    pub name: String,
    pub address: IpAddr,
    pub port: Option<u16>,
    pub weight: u32,
}

/// The outcome of the last reload.
#[derive(Debug, Clone)]
pub struct ReloadRecord {
    pub at: SystemTime,
    pub ok: bool,
    pub message: String,
}

/// Everything `lb run` owns while it runs. Shared as [`SharedState`] by the API handlers, the
/// health-check tasks and the main loop; nobody awaits while holding the lock.
pub struct AgentState {
    me: Weak<Mutex<AgentState>>,
    dataplane: Dataplane,
    table: ServiceTable,
    config: Config,
    pub config_path: PathBuf,
    pub iface: String,
    ifindex: u32,
    pub pin_dir: PathBuf,
    pub attached: Option<Attached>,
    /// The maps (and flows) were adopted from an earlier agent.
    pub adopted: bool,
    pub started: SystemTime,
    pub api_bind: SocketAddr,
    /// Bearer token for writes; `None` refuses every write.
    pub token: Option<String>,
    backends: HashMap<u32, BackendRuntime>,
    checkers: HashMap<u32, Checker>,
    next_token: u64,
    pub metrics: CheckMetrics,
    pub reloads: u64,
    pub last_reload: Option<ReloadRecord>,
    /// The firewall rules in force (ids index the data path's rule counters).
    pub rules: RuleSet,
    /// Names of the rules added through the API (they last until the next reload or restart).
    pub runtime_rules: Vec<String>,
    /// When each rule last matched (the data path only counts).
    rule_activity: RuleActivity,
    /// The database cluster as the last round saw it (`[database]` only).
    pub database: Option<db::DatabaseStatus>,
    database_watch: Option<Checker>,
    /// The interface's addresses as last written to `HOST_ADDRS` (the VIPs are there too).
    pub host_addrs: Vec<IpAddr>,
    /// The last count of the NAT ports in use, written by the thread that counts them.
    pub nat_ports: Arc<Mutex<Option<NatPortSample>>>,
}

/// The NAT source ports of a service towards its backends, as the agent knows them now.
#[derive(Debug, Clone)]
pub struct NatPortUse {
    /// Ports held by live flows, as last counted; `None` before the first count.
    pub in_use: Option<u64>,
    /// `agent.nat_port_min..=nat_port_max` towards each backend, once per SNAT address.
    pub available: u64,
    pub snat_addresses: Vec<IpAddr>,
    /// New flows dropped because none of the ports they tried was free.
    pub exhausted_drops: u64,
    /// False when the last count stopped at its time budget: `in_use` is then a lower bound.
    pub complete: bool,
    /// How long ago the last count was made.
    pub counted_ago: Option<Duration>,
}

/// A count of the NAT ports in use and when it was made.
#[derive(Debug, Clone)]
pub struct NatPortSample {
    pub count: NatPortCount,
    pub at: Instant,
}

pub async fn run(options: RunOptions) -> Result<()> {
    let config = config::load(&options.config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let iface = options
        .iface
        .clone()
        .or_else(|| config.agent.interface.as_ref().map(|i| i.get_ref().clone()))
        .context("no interface: set agent.interface in the config or pass --iface")?;
    let ifindex = neighbor::ifindex(&iface)?;
    let pin_dir = options
        .pin_path
        .clone()
        .unwrap_or_else(|| config.agent.pin_path.clone());
    let token = load_token(&config.api)?;
    let api_bind = *config.api.bind.get_ref();
    // Bound before anything is attached, so a taken port fails without touching the data path.
    let listener = tokio::net::TcpListener::bind(api_bind).await.with_context(|| {
        format!("cannot listen on {api_bind} for the status API: is another `lb run` running? (or set api.bind)")
    })?;
    let checks = build_checks(&config)?;

    let mut dataplane = Dataplane::load(&LoadOptions::for_sizes(
        &config.map_sizes(),
        Some(pin_dir.clone()),
    ))?;
    let adopted = dataplane.adopted();
    report_map_memory(&dataplane, &config);
    if adopted {
        info!(
            "adopted pinned maps under {}: existing flows are kept",
            pin_dir.display()
        );
    }
    set_data_path_settings(&mut dataplane, &config)?;

    let existing_services = dataplane.services()?;
    let existing_backends = dataplane.backends()?;
    let mut table = ServiceTable::from_config(&config, &existing_services, &existing_backends)?;
    let mut runtimes = HashMap::new();
    for service in &mut table.services {
        for backend in &mut service.backends {
            match neighbor::resolve(ifindex, backend.addr, RESOLVE_TIMEOUT) {
                Ok(mac) => backend.mac = Some(mac),
                Err(e) => warn!(
                    "service {} backend {}: {e:#}; kept out of rotation until it resolves",
                    service.name, backend.name
                ),
            }
            let previous = existing_backends
                .get(backend.id as usize)
                .filter(|b| adopted && b.generation == backend.generation);
            let check = checks.get(&(service.name.clone(), backend.name.clone()));
            let mut runtime = initial_runtime(backend, previous, check);
            if is_database_service(&config, &service.name) {
                // Until the first database round decides, keep what the previous agent decided
                // (its flows live on); a fresh start routes nothing to an unknown role.
                runtime.role_up = Some(previous.is_some_and(|b| b.state != BACKEND_DOWN));
            }
            runtimes.insert(backend.id, runtime);
        }
    }

    let state = Arc::new_cyclic(|me| {
        Mutex::new(AgentState {
            me: me.clone(),
            dataplane,
            table,
            config,
            config_path: options.config_path.clone(),
            iface: iface.clone(),
            ifindex,
            pin_dir: pin_dir.clone(),
            attached: None,
            adopted,
            started: SystemTime::now(),
            api_bind,
            token,
            backends: runtimes,
            checkers: HashMap::new(),
            next_token: 0,
            metrics: CheckMetrics::default(),
            reloads: 0,
            last_reload: None,
            rules: RuleSet::default(),
            runtime_rules: Vec::new(),
            rule_activity: RuleActivity::default(),
            database: None,
            database_watch: None,
            host_addrs: Vec::new(),
            nat_ports: Arc::new(Mutex::new(None)),
        })
    });
    {
        let mut guard = lock(&state);
        let agent = &mut *guard;
        for index in 0..agent.table.services.len() {
            agent.program_service(index)?;
        }
        services::remove_stale(
            &mut agent.dataplane,
            &agent.table,
            &existing_services,
            &existing_backends,
        )?;
        agent.apply_firewall()?;
        let mode = match agent.config.agent.xdp_mode {
            XdpModeConfig::Auto => XdpMode::Default,
            XdpModeConfig::Native => XdpMode::Driver,
            XdpModeConfig::Generic => XdpMode::Skb,
        };
        let attached = agent.dataplane.attach(&iface, mode)?;
        match attached {
            Attached::ReplacedPinned => {
                info!("replaced the program of the pinned XDP link on {iface}: no traffic gap")
            }
            Attached::Native => info!("XDP attached to {iface} in native mode"),
            Attached::GenericFallback | Attached::Generic => {
                info!("XDP attached to {iface} in generic mode")
            }
        }
        agent.attached = Some(attached);
        for service in &agent.table.services {
            info!(
                "service {}: {} backends, {} in rotation",
                service.name,
                service.backends.len(),
                in_rotation(service)
            );
        }
        agent.start_checkers(checks);
        agent.start_database_watch()?;
        count_nat_ports(
            agent.dataplane.nat_tables()?,
            Arc::downgrade(&agent.nat_ports),
        )?;
    }
    watch_host_addresses(Arc::downgrade(&state), iface.clone(), ifindex)?;

    let server = tokio::spawn(api::serve(listener, state.clone()));
    println!(
        "lb: running on {iface}; pins under {}; API on http://{api_bind}; Ctrl-C to stop",
        pin_dir.display()
    );

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut tick = tokio::time::interval(RESOLVE_RETRY);
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => {
                info!("SIGHUP: reloading {}", options.config_path.display());
                // The outcome is logged and kept for `lb status`.
                let _ = lock(&state).reload();
            }
            _ = tick.tick() => {
                let mut agent = lock(&state);
                agent.resolve_missing();
                if let Err(e) = agent.sample_rules() {
                    warn!("reading the rule counters: {e:#}");
                }
            }
        }
    }
    server.abort();
    info!("stopping: detaching XDP from {iface} and removing pins");
    let mut agent = lock(&state);
    agent.stop_checkers();
    agent.stop_database_watch();
    agent.dataplane.detach_and_unpin()?;
    Ok(())
}

/// The API token from `api.token_file` (its first line).
fn load_token(api: &ApiConfig) -> Result<Option<String>> {
    let Some(file) = &api.token_file else {
        return Ok(None);
    };
    let path = file.get_ref();
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading api.token_file {}: create it with a long random token (e.g. `openssl rand -hex 32 > {}`)", path.display(), path.display()))?;
    let token = text.lines().next().unwrap_or_default().trim().to_string();
    if token.is_empty() {
        anyhow::bail!(
            "api.token_file {} is empty: put a long random token on its first line",
            path.display()
        );
    }
    if token.len() < 16 {
        warn!(
            "the API token in {} is short ({} characters); use at least 32 random characters",
            path.display(),
            token.len()
        );
    }
    Ok(Some(token))
}

/// NAT ports and flow timeouts: the data path's settings (the test clock is for tests only).
fn set_data_path_settings(dataplane: &mut Dataplane, config: &Config) -> Result<()> {
    dataplane.set_settings(&Settings {
        nat_port_min: *config.agent.nat_port_min.get_ref(),
        nat_port_max: *config.agent.nat_port_max.get_ref(),
        test_clock: 0,
        timeouts: config.agent.timeouts.to_map(),
    })
}

/// The check of every backend whose service has one, keyed by backend id once ids are known;
/// here keyed by (service, backend) name. Fails on an unreadable password file.
/// Logs the kernel memory of the maps as loaded: over the budget (the config passed on the
/// estimate, or adopted maps are larger), and maps whose size differs from what the config wants.
fn report_map_memory(dataplane: &Dataplane, config: &Config) {
    match dataplane.map_memory(&config.map_sizes(), config.agent.map_memory_budget_bytes()) {
        Ok(report) => {
            info!(
                "the data path's maps take {} of kernel memory (budget {})",
                sizing::mib(report.total_bytes),
                sizing::mib(report.budget_bytes)
            );
            if report.total_bytes > report.budget_bytes {
                warn!(
                    "the maps take {}, over agent.map_memory_budget_mib ({}): adopted maps keep \
                     the size they were made with; a clean stop and start sizes them for this config",
                    sizing::mib(report.total_bytes),
                    sizing::mib(report.budget_bytes)
                );
            }
        }
        Err(e) => warn!("reading the kernel memory of the maps: {e:#}"),
    }
}

fn build_checks(config: &Config) -> Result<HashMap<(String, String), Check>> {
    let mut checks = HashMap::new();
    for service in &config.services {
        let Some(health) = &service.health else {
            continue;
        };
        for backend in &service.backends {
            let check = Check::from_config(
                health,
                *backend.address.get_ref(),
                backend.port_or(*service.port.get_ref()),
            )
            .with_context(|| {
                format!(
                    "service {} backend {}: health check",
                    service.name.get_ref(),
                    backend.name.get_ref()
                )
            })?;
            checks.insert(
                (
                    service.name.get_ref().clone(),
                    backend.name.get_ref().clone(),
                ),
                check,
            );
        }
    }
    Ok(checks)
}

/// Starting state of a backend. Adopted from the previous agent's map entry when there is one
/// (a draining backend stays draining, a down one must pass `rise` checks); otherwise up.
fn initial_runtime(
    backend: &BackendEntry,
    previous: Option<&Backend>,
    check: Option<&Check>,
) -> BackendRuntime {
    let was = |state| previous.is_some_and(|b| b.state == state);
    let admin = if was(BACKEND_DRAINING) {
        AdminState::Draining
    } else {
        AdminState::Enabled
    };
    let health = check.map(|c| HealthStatus::new(c.kind(), c.tracker(!was(BACKEND_DOWN))));
    BackendRuntime {
        generation: backend.generation,
        admin,
        health,
        role_up: None,
    }
}

/// Whether `service` is the write or read service of the `[database]` section.
fn is_database_service(config: &Config, service: &str) -> bool {
    config.database.as_ref().is_some_and(|d| {
        d.write_service.get_ref() == service
            || d.read_service
                .as_ref()
                .is_some_and(|r| r.get_ref() == service)
    })
}

fn in_rotation(service: &ServiceEntry) -> usize {
    service
        .selection_table()
        .iter()
        .collect::<std::collections::HashSet<_>>()
        .len()
}

impl AgentState {
    pub fn services(&self) -> &[ServiceEntry] {
        &self.table.services
    }

    pub fn service(&self, name: &str) -> Option<&ServiceEntry> {
        self.table.services.iter().find(|s| s.name == name)
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn dataplane(&self) -> &Dataplane {
        &self.dataplane
    }

    /// The kernel memory of every map, and the sizes the running config wants.
    pub fn map_memory(&self) -> Result<sizing::MemoryReport> {
        self.dataplane.map_memory(
            &self.config.map_sizes(),
            self.config.agent.map_memory_budget_bytes(),
        )
    }

    pub fn runtime(&self, backend_id: u32) -> Option<&BackendRuntime> {
        self.backends.get(&backend_id)
    }

    /// The state the data path is given for a backend (before the MAC rule: a backend without
    /// a resolved MAC is written as down).
    pub fn effective_state(&self, backend_id: u32) -> BackendState {
        match self.backends.get(&backend_id) {
            Some(runtime) if runtime.health.as_ref().is_some_and(|h| !h.tracker.up) => {
                BackendState::Down
            }
            Some(runtime) if runtime.role_up == Some(false) => BackendState::Down,
            Some(runtime) if runtime.admin == AdminState::Draining => BackendState::Draining,
            _ => BackendState::Active,
        }
    }

    /// Writes service `index` with every backend's effective state.
    fn program_service(&mut self, index: usize) -> Result<()> {
        let states: Vec<BackendState> = self.table.services[index]
            .backends
            .iter()
            .map(|b| self.effective_state(b.id))
            .collect();
        let service = &mut self.table.services[index];
        for (backend, state) in service.backends.iter_mut().zip(states) {
            backend.state = state;
        }
        services::program_service(&mut self.dataplane, service)
    }

    fn locate(&self, service: &str, backend: &str) -> Result<(usize, usize), ChangeError> {
        let s = self
            .table
            .services
            .iter()
            .position(|s| s.name == service)
            .ok_or_else(|| ChangeError::ServiceNotFound(service.to_string()))?;
        let b = self.table.services[s]
            .backends
            .iter()
            .position(|b| b.name == backend)
            .ok_or_else(|| ChangeError::BackendNotFound {
                service: service.to_string(),
                backend: backend.to_string(),
            })?;
        Ok((s, b))
    }

    /// Spawns one health-check task per backend that has a check. `checks` is keyed by
    /// (service, backend) name.
    fn start_checkers(&mut self, checks: HashMap<(String, String), Check>) {
        let mut by_id = Vec::new();
        for service in &self.table.services {
            for backend in &service.backends {
                if let Some(check) = checks.get(&(service.name.clone(), backend.name.clone())) {
                    by_id.push((backend.id, check.clone()));
                }
            }
        }
        for (id, check) in by_id {
            self.start_checker(id, check);
        }
        let checked: std::collections::HashSet<u32> = self.checkers.keys().copied().collect();
        for (id, runtime) in &mut self.backends {
            if !checked.contains(id) {
                runtime.health = None;
            }
        }
    }

    fn start_checker(&mut self, id: u32, check: Check) {
        if let Some(old) = self.checkers.remove(&id) {
            old.task.abort();
        }
        if let Some(runtime) = self.backends.get_mut(&id) {
            // What is known (up or down) is kept; rise and fall come from the (new) check.
            let up = runtime.health.as_ref().is_none_or(|h| h.tracker.up);
            let status = runtime
                .health
                .get_or_insert_with(|| HealthStatus::new(check.kind(), check.tracker(up)));
            status.tracker = check.tracker(up);
            status.kind = check.kind();
        }
        self.next_token += 1;
        let token = self.next_token;
        let me = self.me.clone();
        let task = tokio::spawn(health::run_checker(check, move |outcome| {
            let Some(shared) = me.upgrade() else {
                return false;
            };
            let mut agent = lock(&shared);
            agent.record_check(id, token, outcome)
        }));
        self.checkers.insert(
            id,
            Checker {
                token,
                task: task.abort_handle(),
            },
        );
    }

    fn stop_checker(&mut self, id: u32) {
        if let Some(checker) = self.checkers.remove(&id) {
            checker.task.abort();
        }
    }

    fn stop_checkers(&mut self) {
        for (_, checker) in self.checkers.drain() {
            checker.task.abort();
        }
    }

    /// Applies one check outcome; false tells a task whose backend or check is gone to stop.
    fn record_check(&mut self, id: u32, token: u64, outcome: health::Outcome) -> bool {
        if self.checkers.get(&id).map(|c| c.token) != Some(token) {
            return false;
        }
        let Some(index) = self
            .table
            .services
            .iter()
            .position(|s| s.backends.iter().any(|b| b.id == id))
        else {
            return false;
        };
        let service_name = self.table.services[index].name.clone();
        let backend_name = self.table.services[index]
            .backends
            .iter()
            .find(|b| b.id == id)
            .map(|b| b.name.clone())
            .unwrap_or_default();
        self.metrics.observe_check(
            &service_name,
            &backend_name,
            outcome.latency,
            outcome.result.is_ok(),
        );
        let Some(status) = self.backends.get_mut(&id).and_then(|r| r.health.as_mut()) else {
            return false;
        };
        status.checks += 1;
        status.last_latency = Some(outcome.latency);
        let ok = outcome.result.is_ok();
        if !ok {
            status.failures += 1;
        }
        status.last = Some(outcome.result.map_err(|e| format!("{e:#}")));
        let Some(up) = status.tracker.record(ok) else {
            return true;
        };
        status.since = SystemTime::now();
        let detail = match &status.last {
            Some(Ok(seen)) => seen.clone(),
            Some(Err(why)) => why.clone(),
            None => String::new(),
        };
        if up {
            info!(
                "service {service_name} backend {backend_name}: up after {} good checks ({detail})",
                status.tracker.rise
            );
        } else {
            warn!("service {service_name} backend {backend_name}: down after {} failed checks ({detail}); out of rotation", status.tracker.fall);
        }
        if let Err(e) = self.program_service(index) {
            warn!("service {service_name}: writing the new backend state failed: {e:#}");
        }
        true
    }

    /// Starts watching the `[database]` cluster (if configured) in its own task.
    fn start_database_watch(&mut self) -> Result<()> {
        self.stop_database_watch();
        let Some(database) = self.config.database.clone() else {
            self.database = None;
            return Ok(());
        };
        let write = database.write_service.get_ref();
        let service = self
            .config
            .services
            .iter()
            .find(|s| s.name.get_ref() == write)
            .with_context(|| format!("database write_service `{write}` is not a service"))?;
        let port = *service.port.get_ref();
        let nodes: Vec<db::Node> = service
            .backends
            .iter()
            .map(|b| db::Node {
                name: b.name.get_ref().clone(),
                addr: SocketAddr::new(*b.address.get_ref(), b.port_or(port)),
            })
            .collect();
        let credentials = db::Credentials {
            user: database.user.get_ref().clone(),
            password: config::read_secret(
                database.password.as_ref(),
                database.password_file.as_ref(),
                "database password",
            )
            .map_err(anyhow::Error::msg)?
            .unwrap_or_default(),
            replication_user: database.replication_user.get_ref().clone(),
            replication_password: config::read_secret(
                database.replication_password.as_ref(),
                database.replication_password_file.as_ref(),
                "database replication_password",
            )
            .map_err(anyhow::Error::msg)?
            .unwrap_or_default(),
        };
        let settings = db::Settings {
            interval: database.interval(),
            timeout: database.timeout(),
            fail_after: *database.fail_after.get_ref(),
            max_lag_s: *database.max_lag_s.get_ref(),
            failover: database.failover,
        };
        info!(
            "database: watching {} nodes every {} ms",
            nodes.len(),
            settings.interval.as_millis()
        );
        self.next_token += 1;
        let token = self.next_token;
        let me = self.me.clone();
        let task = tokio::spawn(db::run(
            nodes,
            credentials,
            settings,
            move |status, write, read| {
                let Some(shared) = me.upgrade() else {
                    return false;
                };
                let mut agent = lock(&shared);
                agent.apply_database(token, status, write, read)
            },
        ));
        self.database_watch = Some(Checker {
            token,
            task: task.abort_handle(),
        });
        Ok(())
    }

    fn stop_database_watch(&mut self) {
        if let Some(watch) = self.database_watch.take() {
            watch.task.abort();
        }
    }

    /// Applies one database round: only the primary behind the write VIP, the chosen replicas
    /// behind the read VIP. False tells a replaced watch task to stop.
    fn apply_database(
        &mut self,
        token: u64,
        status: &db::DatabaseStatus,
        write: Option<&str>,
        read: &[&str],
    ) -> bool {
        if self.database_watch.as_ref().map(|w| w.token) != Some(token) {
            return false;
        }
        let Some(database) = &self.config.database else {
            return false;
        };
        let write_service = database.write_service.get_ref().clone();
        let read_service = database.read_service.as_ref().map(|r| r.get_ref().clone());
        let mut named = status.clone();
        named.write_service.clone_from(&write_service);
        named.read_service.clone_from(&read_service);
        self.database = Some(named);
        for index in 0..self.table.services.len() {
            let name = self.table.services[index].name.clone();
            let wanted: Vec<(u32, bool)> = if name == write_service {
                self.table.services[index]
                    .backends
                    .iter()
                    .map(|b| (b.id, write == Some(b.name.as_str())))
                    .collect()
            } else if Some(&name) == read_service.as_ref() {
                self.table.services[index]
                    .backends
                    .iter()
                    .map(|b| (b.id, read.contains(&b.name.as_str())))
                    .collect()
            } else {
                continue;
            };
            let mut changed = false;
            for (id, up) in wanted {
                if let Some(runtime) = self.backends.get_mut(&id) {
                    if runtime.role_up != Some(up) {
                        runtime.role_up = Some(up);
                        changed = true;
                    }
                }
            }
            if changed {
                let members: Vec<&str> = if name == write_service {
                    write.into_iter().collect()
                } else {
                    read.to_vec()
                };
                info!(
                    "service {name}: database role change, now behind the VIP: {}",
                    if members.is_empty() {
                        "nobody".to_string()
                    } else {
                        members.join(", ")
                    }
                );
                if let Err(e) = self.program_service(index) {
                    warn!("service {name}: writing the database roles failed: {e:#}");
                }
            }
        }
        true
    }

    /// Every rule with its counters and when it last matched, as of now. Called every second,
    /// so that a last hit is dated even when nobody asks.
    /// The result is in the order of `self.rules.rules`.
    pub fn sample_rules(&mut self) -> Result<Vec<(RuleCounters, Option<Instant>)>> {
        let now = Instant::now();
        let mut sampled = Vec::with_capacity(self.rules.rules.len());
        for rule in &self.rules.rules {
            let counters = self.dataplane.rule_counters(rule.id)?;
            let last_hit = self.rule_activity.observe(rule, counters.packets, now);
            sampled.push((counters, last_hit));
        }
        self.rule_activity.retain(&self.rules.rules);
        Ok(sampled)
    }

    /// Tries again to resolve the MAC of backends that have none.
    pub fn resolve_missing(&mut self) {
        for index in 0..self.table.services.len() {
            let ifindex = self.ifindex;
            let service = &mut self.table.services[index];
            let mut changed = false;
            for backend in service.backends.iter_mut().filter(|b| b.mac.is_none()) {
                if let Ok(Some(mac)) = neighbor::lookup(ifindex, backend.addr) {
                    info!(
                        "service {} backend {}: resolved to {}",
                        service.name,
                        backend.name,
                        neighbor::format_mac(&mac)
                    );
                    backend.mac = Some(mac);
                    changed = true;
                } else {
                    let _ = neighbor::resolve(ifindex, backend.addr, Duration::ZERO);
                }
            }
            if changed {
                if let Err(e) = self.program_service(index) {
                    warn!("service {}: {e:#}", self.table.services[index].name);
                }
            }
        }
    }

    /// Stops new flows to a backend; its existing flows finish.
    pub fn drain(&mut self, service: &str, backend: &str) -> Result<(), ChangeError> {
        self.set_admin(service, backend, AdminState::Draining)
    }

    /// Undoes [`drain`](Self::drain): the backend takes new flows again (if healthy).
    pub fn enable(&mut self, service: &str, backend: &str) -> Result<(), ChangeError> {
        self.set_admin(service, backend, AdminState::Enabled)
    }

    fn set_admin(
        &mut self,
        service: &str,
        backend: &str,
        admin: AdminState,
    ) -> Result<(), ChangeError> {
        let (s, b) = self.locate(service, backend)?;
        let entry = &self.table.services[s].backends[b];
        let runtime = self.backends.entry(entry.id).or_insert(BackendRuntime {
            generation: entry.generation,
            admin: AdminState::Enabled,
            health: None,
            role_up: None,
        });
        runtime.admin = admin;
        info!(
            "service {service} backend {backend}: {}",
            if admin == AdminState::Draining {
                "draining"
            } else {
                "enabled"
            }
        );
        Ok(self.program_service(s)?)
    }

    pub fn set_weight(
        &mut self,
        service: &str,
        backend: &str,
        weight: u32,
    ) -> Result<(), ChangeError> {
        if weight == 0 || weight > MAX_WEIGHT {
            return Err(ChangeError::Invalid(format!(
                "weight {weight} is out of range: use 1 to {MAX_WEIGHT} (drain a backend to stop new flows)"
            )));
        }
        let (s, b) = self.locate(service, backend)?;
        self.table.services[s].backends[b].weight = weight;
        info!("service {service} backend {backend}: weight {weight}");
        Ok(self.program_service(s)?)
    }

    /// Adds a backend to a service. With a health check it enters the rotation after `rise`
    /// good checks; without one as soon as its MAC address is known.
    pub fn add_backend(&mut self, service: &str, new: NewBackend) -> Result<(), ChangeError> {
        let s = self
            .table
            .services
            .iter()
            .position(|x| x.name == service)
            .ok_or_else(|| ChangeError::ServiceNotFound(service.to_string()))?;
        if is_database_service(&self.config, service) {
            return Err(ChangeError::Conflict(format!(
                "service `{service}` holds the [database] nodes: add the node in the config and reload"
            )));
        }
        let entry = &self.table.services[s];
        let service_port = u16::from_be(entry.key.port);
        let port = new.port.unwrap_or(service_port);
        if new.name.is_empty()
            || !new
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ChangeError::Invalid(format!(
                "backend name `{}` must be non-empty letters, digits, '-' or '_'",
                new.name
            )));
        }
        if new.weight == 0 || new.weight > MAX_WEIGHT {
            return Err(ChangeError::Invalid(format!(
                "weight {} is out of range: use 1 to {MAX_WEIGHT}",
                new.weight
            )));
        }
        let vip_is_v4 = entry.key.family == lb_common::maps::FAMILY_V4;
        if new.address.is_ipv4() != vip_is_v4 {
            return Err(ChangeError::Invalid(format!(
                "{} is not of the VIP's address family",
                new.address
            )));
        }
        if new.address.is_unspecified() || new.address.is_multicast() || port == 0 {
            return Err(ChangeError::Invalid(format!(
                "{}:{port} cannot be a backend",
                new.address
            )));
        }
        if entry.mode == Mode::Dsr && port != service_port {
            return Err(ChangeError::Invalid(format!(
                "service `{service}` is DSR: backends listen on the service port {service_port}, not {port}"
            )));
        }
        if entry.backends.iter().any(|b| b.name == new.name) {
            return Err(ChangeError::Conflict(format!(
                "service `{service}` already has a backend named `{}`",
                new.name
            )));
        }
        if entry
            .backends
            .iter()
            .any(|b| b.addr == new.address && b.port == port)
        {
            return Err(ChangeError::Conflict(format!(
                "service `{service}` already has {}:{port}",
                new.address
            )));
        }
        let (id, generation) = self.table.allocate_backend_id()?;
        let mac = neighbor::lookup(self.ifindex, new.address).ok().flatten();
        if mac.is_none() {
            // Provoke ARP/NDP now; the resolve tick picks the answer up within a second.
            let _ = neighbor::resolve(self.ifindex, new.address, Duration::ZERO);
        }
        let backend = BackendEntry {
            name: new.name.clone(),
            id,
            generation,
            addr: new.address,
            port,
            weight: new.weight,
            state: BackendState::Active,
            mac,
        };
        let check = match self
            .config
            .services
            .iter()
            .find(|c| *c.name.get_ref() == service)
            .and_then(|c| c.health.as_ref())
        {
            Some(health) => {
                Some(Check::from_config(health, new.address, port).map_err(ChangeError::Internal)?)
            }
            None => None,
        };
        let health = check
            .as_ref()
            .map(|c| HealthStatus::new(c.kind(), c.tracker(false)));
        self.backends.insert(
            id,
            BackendRuntime {
                generation,
                admin: AdminState::Enabled,
                health,
                role_up: None,
            },
        );
        self.table.services[s].backends.push(backend);
        info!(
            "service {service} backend {}: added ({}:{port}, weight {})",
            new.name, new.address, new.weight
        );
        self.program_service(s)?;
        if let Some(check) = check {
            self.start_checker(id, check);
        }
        Ok(())
    }

    /// Removes a backend at once: flows still on it are re-balanced (drain it first to let
    /// them finish). The last backend of a service cannot be removed.
    pub fn remove_backend(&mut self, service: &str, backend: &str) -> Result<(), ChangeError> {
        let (s, b) = self.locate(service, backend)?;
        if is_database_service(&self.config, service) {
            return Err(ChangeError::Conflict(format!(
                "service `{service}` holds the [database] nodes: remove the node from the config and reload"
            )));
        }
        if self.table.services[s].backends.len() == 1 {
            return Err(ChangeError::Conflict(format!(
                "`{backend}` is the last backend of service `{service}`; drain it instead, or remove the service from the config"
            )));
        }
        let removed = self.table.services[s].backends.remove(b);
        self.stop_checker(removed.id);
        self.backends.remove(&removed.id);
        self.program_service(s)?;
        services::retire_backend(&mut self.dataplane, removed.id, removed.generation)?;
        info!("service {service} backend {backend}: removed");
        Ok(())
    }

    /// Re-reads the config file and applies only the difference: backends and services that
    /// stay keep their ids (so their flows), health and drain state. An invalid file is
    /// refused and the running config kept.
    pub fn reload(&mut self) -> Result<String, ChangeError> {
        let result = self.try_reload();
        match &result {
            Ok(summary) => info!("reloaded {}: {summary}", self.config_path.display()),
            Err(e) => warn!("reload of {} refused: {e}", self.config_path.display()),
        }
        self.reloads += 1;
        self.last_reload = Some(ReloadRecord {
            at: SystemTime::now(),
            ok: result.is_ok(),
            message: match &result {
                Ok(summary) => summary.clone(),
                Err(e) => e.to_string(),
            },
        });
        result
    }

    fn try_reload(&mut self) -> Result<String, ChangeError> {
        let config = config::load(&self.config_path)
            .map_err(|e| ChangeError::InvalidConfig(e.to_string()))?;
        let checks =
            build_checks(&config).map_err(|e| ChangeError::InvalidConfig(format!("{e:#}")))?;
        let token =
            load_token(&config.api).map_err(|e| ChangeError::InvalidConfig(format!("{e:#}")))?;
        let mut notes = Vec::new();
        let old = &self.config.agent;
        let new = &config.agent;
        if old.interface.as_ref().map(|i| i.get_ref())
            != new.interface.as_ref().map(|i| i.get_ref())
            || old.pin_path != new.pin_path
            || old.xdp_mode != new.xdp_mode
            || self.config.api.bind.get_ref() != config.api.bind.get_ref()
        {
            notes.push("agent interface/pin_path/xdp_mode and api.bind changes take effect at the next start".to_string());
        }
        // The maps cannot be resized under the running program. A rule table too small for the
        // new rules refuses the reload; other sizes are applied at the next clean start.
        let half = self.dataplane.v4_half_groups()?;
        firewall::v4_rules_fit(&config, half).map_err(|e| {
            ChangeError::InvalidConfig(format!(
                "{e} (this config's IPv4 rules need a larger rule table than the loaded one: \
                 restart the agent to apply it; a restart keeps the flows)"
            ))
        })?;
        let memory = self
            .dataplane
            .map_memory(&config.map_sizes(), config.agent.map_memory_budget_bytes())?;
        let resize: Vec<String> = memory
            .resize_pending()
            .filter(|m| m.name != lb_common::names::FW_V4_TABLE)
            .map(|m| {
                format!(
                    "{} {} -> {}",
                    m.name,
                    m.max_entries,
                    m.wanted_entries.unwrap_or(m.max_entries)
                )
            })
            .collect();
        if !resize.is_empty() {
            notes.push(format!(
                "map sizes this config needs differ from the loaded maps ({}): they stay as they \
                 are until the agent is stopped cleanly (SIGTERM) and started again",
                resize.join(", ")
            ));
        }

        let existing_services = self.dataplane.services()?;
        let existing_backends = self.dataplane.backends()?;
        let mut table = ServiceTable::from_config(&config, &existing_services, &existing_backends)?;
        let mut runtimes = HashMap::new();
        let (mut kept, mut added) = (0, 0);
        for service in &mut table.services {
            for backend in &mut service.backends {
                let previous = self
                    .table
                    .services
                    .iter()
                    .flat_map(|s| &s.backends)
                    .find(|b| b.id == backend.id && b.generation == backend.generation);
                match previous {
                    Some(previous) => {
                        kept += 1;
                        backend.mac = previous.mac;
                        if let Some(runtime) = self.backends.get(&backend.id) {
                            let mut runtime = runtime.clone();
                            let managed = is_database_service(&config, &service.name);
                            runtime.role_up = if managed {
                                Some(runtime.role_up.unwrap_or(false))
                            } else {
                                None
                            };
                            runtimes.insert(backend.id, runtime);
                        }
                    }
                    None => {
                        added += 1;
                        backend.mac = neighbor::lookup(self.ifindex, backend.addr).ok().flatten();
                        if backend.mac.is_none() {
                            let _ = neighbor::resolve(self.ifindex, backend.addr, Duration::ZERO);
                        }
                        // A new backend earns its place with `rise` good checks.
                        let health = checks
                            .get(&(service.name.clone(), backend.name.clone()))
                            .map(|c| HealthStatus::new(c.kind(), c.tracker(false)));
                        let role_up = is_database_service(&config, &service.name).then_some(false);
                        runtimes.insert(
                            backend.id,
                            BackendRuntime {
                                generation: backend.generation,
                                admin: AdminState::Enabled,
                                health,
                                role_up,
                            },
                        );
                    }
                }
            }
        }
        let before: usize = self.table.services.iter().map(|s| s.backends.len()).sum();
        let removed = before.saturating_sub(kept);

        self.stop_checkers();
        self.table = table;
        self.config = config;
        self.backends = runtimes;
        self.token = token;
        // Before programming: a backend whose service lost its check must not stay down.
        self.start_checkers(checks);
        self.start_database_watch().map_err(ChangeError::Internal)?;
        set_data_path_settings(&mut self.dataplane, &self.config)?;
        for index in 0..self.table.services.len() {
            self.program_service(index)?;
        }
        services::remove_stale(
            &mut self.dataplane,
            &self.table,
            &existing_services,
            &existing_backends,
        )?;
        self.apply_firewall()?;
        self.runtime_rules.clear();
        let mut summary = format!(
            "{} services; backends: {kept} kept, {added} added, {removed} removed; firewall: {} rules",
            self.table.services.len(),
            self.rules.rules.len()
        );
        for note in notes {
            summary.push_str("; ");
            summary.push_str(&note);
        }
        Ok(summary)
    }

    /// Adds a firewall rule (not written to the config file) and swaps the new rule set in.
    pub fn add_rule(
        &mut self,
        name: &str,
        sources: &[String],
        action: config::Action,
    ) -> Result<(), ChangeError> {
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(ChangeError::Invalid(format!(
                "rule name `{name}`: use letters, digits, '-', '_' or '.'"
            )));
        }
        if self
            .config
            .firewall
            .rules
            .iter()
            .any(|r| r.name.get_ref() == name)
        {
            return Err(ChangeError::Conflict(format!(
                "a firewall rule named `{name}` exists already"
            )));
        }
        if sources.is_empty() {
            return Err(ChangeError::Invalid(
                "a rule needs at least one source prefix".into(),
            ));
        }
        let mut cidrs = Vec::new();
        for source in sources {
            let cidr = config::parse_prefix(source).map_err(ChangeError::Invalid)?;
            let owner = self
                .config
                .firewall
                .rules
                .iter()
                .find(|r| r.sources.iter().any(|c| *c.get_ref() == cidr));
            if let Some(owner) = owner {
                return Err(ChangeError::Conflict(format!(
                    "{cidr} belongs to rule `{}` already",
                    owner.name.get_ref()
                )));
            }
            cidrs.push(toml::Spanned::new(0..0, cidr));
        }
        let limit = (lb_common::MAX_PREFIXES / 2) as usize;
        if self.rules.prefixes.len() + self.rules.scoped.len() + cidrs.len() > limit {
            return Err(ChangeError::Conflict(format!(
                "the firewall holds at most {limit} prefixes"
            )));
        }
        self.config.firewall.rules.push(config::RuleConfig {
            name: toml::Spanned::new(0..0, name.to_string()),
            sources: cidrs,
            action,
        });
        let half = self.dataplane.v4_half_groups()?;
        if let Err(e) = firewall::v4_rules_fit(&self.config, half) {
            self.config.firewall.rules.pop();
            return Err(ChangeError::Conflict(e));
        }
        if let Err(e) = self.apply_firewall() {
            self.config.firewall.rules.pop();
            return Err(ChangeError::Internal(e));
        }
        self.runtime_rules.push(name.to_string());
        Ok(())
    }

    /// Removes a firewall rule (from the config file's rules too, until the next reload).
    pub fn remove_rule(&mut self, name: &str) -> Result<(), ChangeError> {
        let Some(index) = self
            .config
            .firewall
            .rules
            .iter()
            .position(|r| r.name.get_ref() == name)
        else {
            return Err(ChangeError::RuleNotFound(name.to_string()));
        };
        let removed = self.config.firewall.rules.remove(index);
        if let Err(e) = self.apply_firewall() {
            self.config.firewall.rules.insert(index, removed);
            return Err(ChangeError::Internal(e));
        }
        self.runtime_rules.retain(|r| r != name);
        Ok(())
    }

    /// Builds the rule set of the current config and swaps it into the data path whole.
    fn apply_firewall(&mut self) -> Result<()> {
        let mut rules =
            RuleSet::from_config(&self.config, &self.table, firewall::ephemeral_ports());
        rules.settings.own_mac = firewall::interface_mac(&self.iface)?;
        let vips: Vec<std::net::IpAddr> = self
            .config
            .services
            .iter()
            .map(|s| *s.vip.get_ref())
            .collect();
        let interface_addrs = dedup(firewall::interface_addresses(&self.iface)?);
        let mut host_addrs = interface_addrs.clone();
        host_addrs.extend(vips.iter().copied());
        firewall::replace(&mut self.dataplane, &self.rules, &rules, &host_addrs, &vips)?;
        self.host_addrs = interface_addrs;
        info!(
            "firewall: {} rules, {} prefixes, {} scoped sources; host policy {}",
            rules.rules.len(),
            rules.prefixes.len(),
            rules.scoped.len(),
            if rules.settings.flags & lb_common::maps::FW_HOST_POLICY != 0 {
                "restrict"
            } else {
                "open"
            }
        );
        self.rules = rules;
        Ok(())
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed().unwrap_or_default()
    }

    /// Brings `HOST_ADDRS` up to date with the interface's addresses `now`: adds the new ones and
    /// removes the gone ones (a VIP stays), one entry at a time, without rebuilding the rule
    /// set. Returns whether anything changed.
    pub fn refresh_host_addrs(&mut self, now: Vec<IpAddr>) -> Result<bool> {
        let now = dedup(now);
        let added: Vec<IpAddr> = now
            .iter()
            .filter(|a| !self.host_addrs.contains(a))
            .copied()
            .collect();
        let removed: Vec<IpAddr> = self
            .host_addrs
            .iter()
            .filter(|a| !now.contains(a))
            .copied()
            .collect();
        if added.is_empty() && removed.is_empty() {
            return Ok(false);
        }
        let vips: Vec<IpAddr> = self
            .config
            .services
            .iter()
            .map(|s| *s.vip.get_ref())
            .collect();
        let add: Vec<_> = added.iter().map(|a| firewall::addr_key(*a)).collect();
        let remove: Vec<_> = removed
            .iter()
            .filter(|a| !vips.contains(a))
            .map(|a| firewall::addr_key(*a))
            .collect();
        self.dataplane.update_host_addrs(&add, &remove)?;
        let list = |addrs: &[IpAddr]| {
            if addrs.is_empty() {
                "none".to_string()
            } else {
                addrs
                    .iter()
                    .map(IpAddr::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        };
        info!(
            "addresses of {} changed: added {}, removed {}; the host policy now covers {}",
            self.iface,
            list(&added),
            list(&removed),
            list(&now)
        );
        self.host_addrs = now;
        Ok(true)
    }

    /// The NAT figures of a service (`None` in DSR mode): ports in use as last counted, ports
    /// available (`agent.nat_port_min..=nat_port_max` towards each of its backends from its
    /// one SNAT address), and new flows dropped for want of a port (`counters` are the
    /// service's).
    pub fn nat_ports(
        &self,
        service: &ServiceEntry,
        counters: &lb_common::maps::Counters,
    ) -> Option<NatPortUse> {
        let available = service.nat_ports_available(
            *self.config.agent.nat_port_min.get_ref(),
            *self.config.agent.nat_port_max.get_ref(),
        )?;
        let sample = self
            .nat_ports
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        Some(NatPortUse {
            in_use: sample
                .as_ref()
                .map(|s| s.count.in_use.get(&service.id).copied().unwrap_or(0)),
            available,
            snat_addresses: service.snat.clone(),
            exhausted_drops: counters.nat_ports_exhausted,
            complete: sample.as_ref().is_some_and(|s| s.count.complete),
            counted_ago: sample.map(|s| s.at.elapsed()),
        })
    }
}

/// The addresses in their first order, each once.
fn dedup(addrs: Vec<IpAddr>) -> Vec<IpAddr> {
    let mut seen = Vec::with_capacity(addrs.len());
    for addr in addrs {
        if !seen.contains(&addr) {
            seen.push(addr);
        }
    }
    seen
}

/// Follows the interface's addresses on a thread of its own (netlink and getifaddrs block):
/// each address notification about the interface, and every [`HOST_ADDRS_RECHECK`] anyway,
/// re-reads them and brings `HOST_ADDRS` up to date. Ends when the agent is gone.
fn watch_host_addresses(state: Weak<Mutex<AgentState>>, iface: String, ifindex: u32) -> Result<()> {
    let events = match neighbor::AddressEvents::open() {
        Ok(events) => Some(events),
        Err(e) => {
            warn!(
                "{e:#}: the addresses of {iface} are re-read every {} s instead",
                HOST_ADDRS_RECHECK.as_secs()
            );
            None
        }
    };
    std::thread::Builder::new()
        .name("host-addrs".into())
        .spawn(move || {
            // Subscribed before this first read: no change between the two is missed.
            loop {
                let Some(shared) = state.upgrade() else {
                    return;
                };
                match firewall::interface_addresses(&iface) {
                    Ok(addrs) => {
                        if let Err(e) = lock(&shared).refresh_host_addrs(addrs) {
                            warn!("updating the host addresses: {e:#}");
                        }
                    }
                    Err(e) => warn!("reading the addresses of {iface}: {e:#}"),
                }
                drop(shared);
                match &events {
                    Some(events) => {
                        if let Err(e) = events.wait(ifindex, HOST_ADDRS_RECHECK) {
                            warn!("{e:#}");
                            std::thread::sleep(HOST_ADDRS_RECHECK);
                        }
                    }
                    None => std::thread::sleep(HOST_ADDRS_RECHECK),
                }
            }
        })
        .context("starting the host address watch")?;
    Ok(())
}

/// Counts the NAT ports in use on a thread of its own (a walk of the NAT table, each entry a
/// few map look-ups), every [`NAT_COUNT_INTERVAL`], each walk bounded by [`NAT_COUNT_BUDGET`].
/// Ends when the agent is gone.
fn count_nat_ports(tables: NatTables, sample: Weak<Mutex<Option<NatPortSample>>>) -> Result<()> {
    std::thread::Builder::new()
        .name("nat-ports".into())
        .spawn(move || loop {
            let result = tables.count(Instant::now() + NAT_COUNT_BUDGET);
            let Some(shared) = sample.upgrade() else {
                return;
            };
            match result {
                Ok(count) => {
                    *shared
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(NatPortSample {
                        count,
                        at: Instant::now(),
                    });
                }
                Err(e) => warn!("counting the NAT ports in use: {e:#}"),
            }
            drop(shared);
            std::thread::sleep(NAT_COUNT_INTERVAL);
        })
        .context("starting the NAT port count")?;
    Ok(())
}
