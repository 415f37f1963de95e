//! The status API (axum): reads of the agent's state and the data path's counters, and the
//! writes that change backends at runtime (bearer token, compared in constant time). Every
//! error is JSON `{"error": {"code", "message"}}` with a stable code. Served by `lb-serve`
//! (header, idle and request timeouts, a connection limit) behind the checks of `access`
//! (Host, and the token for reads on a non-loopback bind), over TLS when configured.
pub mod access;
mod openapi;
pub mod types;
mod ui;

use std::{net::IpAddr, sync::Arc, time::Duration};

use axum::{
    body::Bytes,
    extract::{rejection::BytesRejection, FromRequestParts, Path, State},
    http::{header, request::Parts, StatusCode},
    middleware,
    response::{IntoResponse, Response},
    routing::{delete, get, post, put},
    Json, Router,
};
use lb_common::maps::PROTO_TCP;
use serde::de::DeserializeOwned;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use self::access::Access;
use self::types::*;
use crate::{
    config::{ApiConfig, Mode},
    dataplane::Attached,
    metrics, neighbor,
    services::{words_addr, BackendState, ServiceEntry},
    state::{
        changes::{ChangeError, NewBackend},
        lock,
        reload::reload as reload_config,
        AdminState, AgentState, NatPortUse, SharedState,
    },
    unix_time::unix_seconds,
};

mod database;
use self::database::*;

mod flows;
use self::flows::*;

/// Default and largest page of `GET /api/v1/flows`.
const FLOWS_DEFAULT_LIMIT: usize = 100;
const FLOWS_MAX_LIMIT: usize = 1000;

/// Descriptors the agent keeps for itself besides API clients and per-backend sockets: maps,
/// programs and pins, netlink, the runtime's epoll, logs and config files.
pub const AGENT_FD_RESERVE: u64 = 256;
/// Descriptors counted per configured backend: a health check's socket and a database watch
/// connection at the same time.
pub const FDS_PER_BACKEND: u64 = 2;

/// The API's listener, made before anything is attached: bound, TLS loaded, limits checked.
pub struct Listener {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    limits: lb_serve::Limits,
    api: ApiConfig,
}

impl Listener {
    /// Binds `api.bind` and loads its TLS certificate; `backends` (the configured count) size
    /// the descriptors kept away from API clients.
    pub async fn bind(api: &ApiConfig, backends: usize) -> anyhow::Result<Self> {
        use anyhow::Context as _;
        let fd_limit = lb_serve::raise_fd_limit().context("reading RLIMIT_NOFILE")?;
        let limits = limits(api, fd_limit, backends)?;
        let tls = match &api.tls {
            Some(tls) => Some(TlsAcceptor::from(
                lb_serve::tls::server_config(&tls.cert_file, &tls.key_file, &[b"http/1.1"])
                    .context("api.tls_cert_file / api.tls_key_file")?,
            )),
            None => None,
        };
        let bind = api.bind;
        let listener = lb_serve::bind(bind).with_context(|| {
            format!("cannot listen on {bind} for the status API: is another `lb run` running? (or set api.bind)")
        })?;
        log::info!(
            "status API: at most {} connections (RLIMIT_NOFILE {fd_limit}), request heads within {:?}",
            limits.max_connections,
            limits.header_read_timeout
        );
        Ok(Self {
            listener,
            tls,
            limits,
            api: api.clone(),
        })
    }

    /// `http` or `https`, for messages.
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

/// The API's connection limits; an error when they and the agent's own descriptors
/// (`backends` sockets, [`AGENT_FD_RESERVE`]) do not fit under the file-descriptor limit:
/// then API clients could take the descriptors health checks need.
pub fn limits(api: &ApiConfig, fd_limit: u64, backends: usize) -> anyhow::Result<lb_serve::Limits> {
    let connections = u64::from(api.max_connections);
    let others = (backends as u64).saturating_mul(FDS_PER_BACKEND) + AGENT_FD_RESERVE;
    // The listener and one connection accepted then closed at the limit.
    let needed = connections + 2 + others;
    if needed > fd_limit {
        anyhow::bail!(
            "api.max_connections = {connections} does not fit the file-descriptor limit \
             {fd_limit}: the API may hold {connections} + 2, the {backends} backends' health \
             checks and database connections {FDS_PER_BACKEND} each, the agent itself \
             {AGENT_FD_RESERVE}: {needed} in all. Lower api.max_connections, or raise the limit \
             (ulimit -n, LimitNOFILE= in the systemd unit)"
        );
    }
    Ok(lb_serve::Limits {
        header_read_timeout: Duration::from_millis(api.header_read_timeout_ms),
        idle_timeout: Duration::from_millis(api.idle_timeout_ms),
        request_timeout: Duration::from_millis(api.request_timeout_ms),
        max_connections: api.max_connections as usize,
    })
}

/// Serves the API until the task is aborted.
pub async fn serve(listener: Listener, state: SharedState) {
    let token_state = state.clone();
    let access = Access::new(
        &listener.api,
        Arc::new(move || lock(&token_state).token.clone()),
    );
    let app = guarded(router(state), access);
    lb_serve::serve(listener.listener, app, listener.limits, listener.tls).await;
}

/// `router` behind the Host and token checks.
pub fn guarded(router: Router, access: Access) -> Router {
    router.layer(middleware::from_fn_with_state(access, access::check))
}

pub fn router(state: SharedState) -> Router {
    // Every write (POST, PUT, DELETE) handler takes `Authorized`, so none can skip the token.
    let routes = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .route("/api/v1/openapi.json", get(openapi_document))
        .route("/api/v1/status", get(status))
        .route("/api/v1/services", get(services))
        .route("/api/v1/services/{service}", get(service))
        .route(
            "/api/v1/services/{service}/backends",
            get(backends).post(add_backend),
        )
        .route(
            "/api/v1/services/{service}/backends/{backend}",
            delete(remove_backend),
        )
        .route(
            "/api/v1/services/{service}/backends/{backend}/drain",
            post(drain),
        )
        .route(
            "/api/v1/services/{service}/backends/{backend}/enable",
            post(enable),
        )
        .route(
            "/api/v1/services/{service}/backends/{backend}/weight",
            put(set_weight),
        )
        .route("/api/v1/flows", get(flows))
        .route("/api/v1/reload", post(reload))
        .route("/api/v1/database/promote", post(promote_database_node))
        .route("/api/v1/firewall/rules", get(firewall_rules).post(add_rule))
        .route("/api/v1/firewall/rules/{rule}", delete(remove_rule))
        .merge(ui::routes());
    with_fallbacks(routes).with_state(state)
}

/// JSON errors for unknown paths and methods, on every route registered before.
fn with_fallbacks<S: Clone + Send + Sync + 'static>(routes: Router<S>) -> Router<S> {
    routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
}

/// An error answer: HTTP status, stable code, message for people.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<ChangeError> for ApiError {
    fn from(error: ChangeError) -> Self {
        let message = error.to_string();
        match error {
            ChangeError::ServiceNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "service_not_found", message)
            }
            ChangeError::BackendNotFound { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "backend_not_found", message)
            }
            ChangeError::RuleNotFound(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "rule_not_found", message)
            }
            ChangeError::Conflict(_) => ApiError::new(StatusCode::CONFLICT, "conflict", message),
            ChangeError::Invalid(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_value", message)
            }
            ChangeError::InvalidConfig(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_config", message)
            }
            ChangeError::Internal(_) => internal(message),
        }
    }
}

fn internal(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
}

fn from_anyhow(error: anyhow::Error) -> ApiError {
    internal(format!("{error:#}"))
}

async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint; see /api/v1/openapi.json",
    )
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not accept that method; see /api/v1/openapi.json",
    )
}

/// Proof that the request carried the configured bearer token.
pub struct Authorized;

impl FromRequestParts<SharedState> for Authorized {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &SharedState,
    ) -> Result<Self, Self::Rejection> {
        let expected = lock(state).token.clone();
        access::bearer(&parts.headers, expected.as_deref()).map(|()| Authorized)
    }
}

/// Parses a JSON body with an error that says what is wrong in it.
fn json_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let body = body.map_err(|e| ApiError::new(e.status(), "invalid_body", e.body_text()))?;
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            format!("invalid JSON body: {e}"),
        )
    })
}

async fn healthz() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

async fn openapi_document() -> Json<serde_json::Value> {
    Json(openapi::document())
}

async fn metrics_text(State(state): State<SharedState>) -> Result<Response, ApiError> {
    let text = metrics::render(&lock(&state)).map_err(from_anyhow)?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

async fn status(State(state): State<SharedState>) -> Result<Json<Status>, ApiError> {
    let agent = lock(&state);
    let mut backends = BackendCounts::default();
    for backend in agent.services().iter().flat_map(|s| &s.backends) {
        backends.total += 1;
        match data_path_state(backend.state, backend.mac.is_some()) {
            BackendState::Active => backends.active += 1,
            BackendState::Draining => backends.draining += 1,
            BackendState::Down => backends.down += 1,
            BackendState::Standby => backends.standby += 1,
        }
    }
    let mut traffic = Traffic::default();
    let mut verdicts = Vec::new();
    for (verdict, counters) in agent.dataplane().verdict_counters().map_err(from_anyhow)? {
        traffic.packets += counters.packets;
        traffic.bytes += counters.bytes;
        if verdict.is_drop() {
            traffic.dropped_packets += counters.packets;
        }
        verdicts.push(VerdictCount {
            verdict: verdict.name().to_string(),
            packets: counters.packets,
            bytes: counters.bytes,
        });
    }
    let mut nat = Vec::new();
    for service in agent.services() {
        let counters = agent
            .dataplane()
            .service_counters(service.id)
            .map_err(from_anyhow)?;
        traffic.new_flows += counters.new_flows;
        if let Some(ports) = agent.nat_ports(service, &counters) {
            nat.push(ServiceNatPorts {
                service: service.name.clone(),
                ports: nat_ports(ports),
            });
        }
    }
    Ok(Json(Status {
        version: env!("CARGO_PKG_VERSION").to_string(),
        pid: std::process::id(),
        uptime_s: agent.uptime().as_secs(),
        started_at: unix_seconds(agent.started),
        interface: agent.iface.clone(),
        attach: match agent.attached {
            Some(Attached::Native) => "native",
            Some(Attached::Generic) => "generic",
            Some(Attached::GenericFallback) => "generic_fallback",
            Some(Attached::ReplacedPinned) => "replaced_pinned",
            None => "detached",
        }
        .to_string(),
        pin_path: agent.pin_dir.display().to_string(),
        adopted: agent.adopted,
        config_path: agent.config_path.display().to_string(),
        api_bind: agent.api_bind.to_string(),
        writes_enabled: agent.token.is_some(),
        reloads: agent.reloads,
        last_reload: agent.last_reload.as_ref().map(|r| ReloadInfo {
            at: unix_seconds(r.at),
            ok: r.ok,
            message: r.message.clone(),
        }),
        services: agent.services().len(),
        backends,
        traffic,
        verdicts,
        database: agent.database.as_ref().map(database_status),
        map_memory: agent
            .map_memory()
            .inspect_err(|e| log::warn!("status: reading the kernel memory of the maps: {e:#}"))
            .ok(),
        host_addresses: agent.host_addrs.iter().map(|a| a.to_string()).collect(),
        nat,
    }))
}

/// The wire form of a service's NAT port figures.
fn nat_ports(ports: NatPortUse) -> NatPorts {
    NatPorts {
        in_use: ports.in_use,
        available: ports.available,
        snat_addresses: ports.snat_addresses.iter().map(IpAddr::to_string).collect(),
        exhausted_drops: ports.exhausted_drops,
        complete: ports.complete,
        counted_s_ago: ports.counted_ago.map(|ago| ago.as_secs_f64()),
    }
}

/// A backend without a MAC is written as down whatever its state (see `program_service`).
fn data_path_state(state: BackendState, has_mac: bool) -> BackendState {
    if has_mac {
        state
    } else {
        BackendState::Down
    }
}

fn service_info(agent: &AgentState, service: &ServiceEntry) -> Result<ServiceInfo, ApiError> {
    let counters = agent
        .dataplane()
        .service_counters(service.id)
        .map_err(from_anyhow)?;
    let config = agent
        .config()
        .services
        .iter()
        .find(|c| c.name == service.name);
    let in_rotation = service
        .backends
        .iter()
        .filter(|b| data_path_state(b.state, b.mac.is_some()) == BackendState::Active)
        .count();
    Ok(ServiceInfo {
        name: service.name.clone(),
        vip: words_addr(service.key.addr, service.key.family).to_string(),
        port: u16::from_be(service.key.port),
        protocol: if service.key.proto == PROTO_TCP {
            "tcp"
        } else {
            "udp"
        }
        .to_string(),
        mode: match service.mode {
            Mode::Dsr => "dsr",
            Mode::Nat => "nat",
        }
        .to_string(),
        algorithm: "round_robin".to_string(),
        health_check: config
            .and_then(|c| c.health.as_ref())
            .map(|h| format!("{:?}", h.kind).to_lowercase()),
        backends: service.backends.len(),
        in_rotation,
        packets: counters.packets,
        bytes: counters.bytes,
        new_flows: counters.new_flows,
        nat_ports: agent.nat_ports(service, &counters).map(nat_ports),
    })
}

async fn services(State(state): State<SharedState>) -> Result<Json<Vec<ServiceInfo>>, ApiError> {
    let agent = lock(&state);
    agent
        .services()
        .iter()
        .map(|s| service_info(&agent, s))
        .collect::<Result<_, _>>()
        .map(Json)
}

fn find_service<'a>(agent: &'a AgentState, name: &str) -> Result<&'a ServiceEntry, ApiError> {
    agent
        .service(name)
        .ok_or_else(|| ChangeError::ServiceNotFound(name.to_string()).into())
}

async fn service(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> Result<Json<ServiceInfo>, ApiError> {
    let agent = lock(&state);
    let service = find_service(&agent, &name)?;
    service_info(&agent, service).map(Json)
}

async fn backends(
    State(state): State<SharedState>,
    Path(name): Path<String>,
) -> Result<Json<BackendList>, ApiError> {
    let agent = lock(&state);
    let service = find_service(&agent, &name)?;
    let mut backends = Vec::new();
    for backend in &service.backends {
        let counters = agent
            .dataplane()
            .backend_counters(backend.id)
            .map_err(from_anyhow)?;
        let runtime = agent.runtime(backend.id);
        backends.push(BackendInfo {
            name: backend.name.clone(),
            id: backend.id,
            address: backend.addr.to_string(),
            port: backend.port,
            weight: backend.weight,
            state: data_path_state(backend.state, backend.mac.is_some())
                .name()
                .to_string(),
            admin: match runtime.map(|r| r.admin) {
                Some(AdminState::Draining) => "draining",
                _ => "enabled",
            }
            .to_string(),
            mac: backend.mac.as_ref().map(neighbor::format_mac),
            health: runtime.and_then(|r| r.health.as_ref()).map(|h| HealthInfo {
                kind: h.kind.to_string(),
                up: h.tracker.up,
                checks: h.checks,
                failures: h.failures,
                last_ok: h.last.as_ref().map(Result::is_ok),
                last_detail: h.last.as_ref().map(|r| match r {
                    Ok(seen) => seen.clone(),
                    Err(why) => why.clone(),
                }),
                last_latency_ms: h.last_latency.map(|d| d.as_secs_f64() * 1000.0),
                since: unix_seconds(h.since),
            }),
            packets: counters.packets,
            bytes: counters.bytes,
            new_flows: counters.new_flows,
        });
    }
    Ok(Json(BackendList {
        service: service.name.clone(),
        backends,
    }))
}

fn done(message: String) -> Json<ChangeResult> {
    Json(ChangeResult { ok: true, message })
}

async fn firewall_rules(State(state): State<SharedState>) -> Result<Json<FirewallRules>, ApiError> {
    let mut agent = lock(&state);
    let now = std::time::Instant::now();
    let sampled = agent.sample_rules().map_err(from_anyhow)?;
    let mut rules = Vec::new();
    for (rule, (counters, last_hit)) in agent.rules.rules.iter().zip(sampled) {
        rules.push(FirewallRule {
            id: rule.id,
            kind: serde_json::to_value(&rule.kind).map_err(|e| internal(e.to_string()))?,
            action: serde_json::to_value(rule.action)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default(),
            runtime: agent.runtime_rules.contains(&rule.name),
            name: rule.name.clone(),
            prefixes: rule.prefixes.clone(),
            packets: counters.packets,
            bytes: counters.bytes,
            last_hit_s_ago: last_hit.map(|at| now.duration_since(at).as_secs_f64()),
        });
    }
    let drops = agent
        .dataplane()
        .verdict_counters()
        .map_err(from_anyhow)?
        .into_iter()
        .filter(|(v, _)| v.is_drop())
        .map(|(v, c)| VerdictCount {
            verdict: v.name().to_string(),
            packets: c.packets,
            bytes: c.bytes,
        })
        .collect();
    Ok(Json(FirewallRules { rules, drops }))
}

async fn add_rule(
    _: Authorized,
    State(state): State<SharedState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ChangeResult>, ApiError> {
    let request: AddRuleRequest = json_body(body)?;
    let action = match request.action.as_str() {
        "allow" => crate::config::Action::Allow,
        "drop" => crate::config::Action::Drop,
        "log" => crate::config::Action::Log,
        other => {
            return Err(ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_value",
                format!("action `{other}`: use allow, drop or log"),
            ))
        }
    };
    lock(&state).add_rule(&request.name, &request.sources, action)?;
    Ok(done(format!(
        "firewall rule {} added ({} sources, {}); the rule set was swapped whole",
        request.name,
        request.sources.len(),
        request.action
    )))
}

async fn remove_rule(
    _: Authorized,
    State(state): State<SharedState>,
    Path(rule): Path<String>,
) -> Result<Json<ChangeResult>, ApiError> {
    lock(&state).remove_rule(&rule)?;
    Ok(done(format!("firewall rule {rule} removed")))
}

async fn drain(
    _: Authorized,
    State(state): State<SharedState>,
    Path((service, backend)): Path<(String, String)>,
) -> Result<Json<ChangeResult>, ApiError> {
    lock(&state).drain(&service, &backend)?;
    Ok(done(format!(
        "service {service} backend {backend}: draining (no new flows; existing ones finish)"
    )))
}

async fn enable(
    _: Authorized,
    State(state): State<SharedState>,
    Path((service, backend)): Path<(String, String)>,
) -> Result<Json<ChangeResult>, ApiError> {
    lock(&state).enable(&service, &backend)?;
    Ok(done(format!(
        "service {service} backend {backend}: enabled"
    )))
}

async fn set_weight(
    _: Authorized,
    State(state): State<SharedState>,
    Path((service, backend)): Path<(String, String)>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ChangeResult>, ApiError> {
    let request: WeightRequest = json_body(body)?;
    lock(&state).set_weight(&service, &backend, request.weight)?;
    Ok(done(format!(
        "service {service} backend {backend}: weight {}",
        request.weight
    )))
}

async fn add_backend(
    _: Authorized,
    State(state): State<SharedState>,
    Path(service): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<ChangeResult>), ApiError> {
    let request: AddBackendRequest = json_body(body)?;
    let address: IpAddr = request.address.parse().map_err(|_| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_value",
            format!("`{}` is not an IP address", request.address),
        )
    })?;
    let name = request.name.clone();
    lock(&state).add_backend(
        &service,
        NewBackend {
            name: request.name,
            address,
            port: request.port,
            weight: request.weight.unwrap_or(1),
        },
    )?;
    Ok((
        StatusCode::CREATED,
        done(format!("service {service} backend {name}: added; it takes flows once its address resolves and its health check passes")),
    ))
}

async fn remove_backend(
    _: Authorized,
    State(state): State<SharedState>,
    Path((service, backend)): Path<(String, String)>,
) -> Result<Json<ChangeResult>, ApiError> {
    lock(&state).remove_backend(&service, &backend)?;
    Ok(done(format!(
        "service {service} backend {backend}: removed"
    )))
}

async fn reload(
    _: Authorized,
    State(state): State<SharedState>,
) -> Result<Json<ChangeResult>, ApiError> {
    let summary = reload_config(&state).await?;
    Ok(done(format!("reloaded: {summary}")))
}

#[cfg(test)]
mod tests;
