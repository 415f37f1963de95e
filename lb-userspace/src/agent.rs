//! `lb run`: load (or adopt) the data path, program it from the config, attach, start the tasks
//! that keep it current (health checks, the database watch, MAC resolution, the interface's
//! addresses, the NAT port count) and serve the status API. SIGINT/SIGTERM detach cleanly; a
//! killed agent leaves the pinned program forwarding, and the next `lb run` adopts it.
use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use anyhow::{Context as _, Result};
use lb_common::maps::{Backend, BACKEND_DOWN, BACKEND_DRAINING};
use log::{info, warn};
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    api,
    config::{self, Config},
    dataplane::{Dataplane, LoadOptions},
    health::Check,
    neighbor,
    services::{BackendEntry, ServiceTable},
    sizing,
    state::{
        db_watch::is_database_service,
        lifecycle::Setup,
        lock,
        reload::{build_checks, load_token, reload, set_data_path_settings},
        upkeep::watch_host_addresses,
        AdminState, AgentState, BackendRuntime, HealthStatus,
    },
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
/// Every this many [`RESOLVE_RETRY`] ticks, every backend's MAC is compared with the kernel's.
const MAC_RECHECK_TICKS: u64 = 5;

pub async fn run(options: RunOptions) -> Result<()> {
    let config = config::load(&options.config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let iface = options
        .iface
        .clone()
        .or_else(|| config.agent.interface.clone())
        .context("no interface: set agent.interface in the config or pass --iface")?;
    let ifindex = neighbor::ifindex(&iface)?;
    let pin_dir = options
        .pin_path
        .clone()
        .unwrap_or_else(|| config.agent.pin_path.clone());
    let token = load_token(&config.api)?;
    let api_bind = config.api.bind;
    // Bound before anything is attached, so a taken port or a bad certificate fails without
    // touching the data path.
    let backends = config.services.iter().map(|s| s.backends.len()).sum();
    let listener = api::Listener::bind(&config.api, backends).await?;
    let api_url = format!("{}://{api_bind}", listener.scheme());
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
    let table = ServiceTable::from_config(&config, &existing_services, &existing_backends)?;
    // Waiting for ARP/NDP answers sleeps: on a blocking thread, not the runtime's.
    let mut table = tokio::task::spawn_blocking(move || resolve_macs(table, ifindex))
        .await
        .context("resolving the backends' MAC addresses")?;
    let mut runtimes = HashMap::new();
    for service in &mut table.services {
        for backend in &mut service.backends {
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

    let state = AgentState::shared(Setup {
        dataplane,
        table,
        config,
        config_path: options.config_path.clone(),
        iface: iface.clone(),
        ifindex,
        pin_dir: pin_dir.clone(),
        adopted,
        api_bind,
        token,
        backends: runtimes,
    });
    lock(&state).bring_up(checks, &existing_services, &existing_backends)?;
    watch_host_addresses(Arc::downgrade(&state), iface.clone(), ifindex)?;

    let server = tokio::spawn(api::serve(listener, state.clone()));
    println!(
        "lb: running on {iface}; pins under {}; API on {api_url}; Ctrl-C to stop",
        pin_dir.display()
    );

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut tick = tokio::time::interval(RESOLVE_RETRY);
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => {
                info!("SIGHUP: reloading {}", options.config_path.display());
                // The outcome is logged and kept for `lb status`.
                let _ = reload(&state).await;
            }
            _ = tick.tick() => {
                // Tries again to resolve the MACs of backends that have none; the neighbour
                // table is read on a blocking thread, without the lock.
                let query = lock(&state).unresolved();
                if !query.backends.is_empty() {
                    match tokio::task::spawn_blocking(move || query.run()).await {
                        Ok(found) => lock(&state).record_macs(&found),
                        Err(e) => warn!("resolving backend MACs: {e}"),
                    }
                }
                // Now and then every known MAC is compared with the neighbour table: a backend
                // that changed its MAC would otherwise get frames it drops until a reload.
                ticks += 1;
                if ticks.is_multiple_of(MAC_RECHECK_TICKS) {
                    let recheck = lock(&state).mac_recheck();
                    match tokio::task::spawn_blocking(move || recheck.run()).await {
                        Ok(Ok(changed)) if !changed.is_empty() => lock(&state).record_macs(&changed),
                        Ok(Ok(_)) => {}
                        Ok(Err(e)) => warn!("rechecking backend MACs: {e:#}"),
                        Err(e) => warn!("rechecking backend MACs: {e}"),
                    }
                }
                if let Err(e) = lock(&state).sample_rules() {
                    warn!("reading the rule counters: {e:#}");
                }
            }
        }
    }
    server.abort();
    info!("stopping: detaching XDP from {iface} and removing pins");
    let mut agent = lock(&state);
    agent.shut_down()
}

/// Resolves every backend's MAC, each within [`RESOLVE_TIMEOUT`]; a backend that does not
/// answer stays without one (out of rotation) until the main loop's retries find it.
fn resolve_macs(mut table: ServiceTable, ifindex: u32) -> ServiceTable {
    for service in &mut table.services {
        for backend in &mut service.backends {
            match neighbor::resolve(ifindex, backend.addr, RESOLVE_TIMEOUT) {
                Ok(mac) => backend.mac = Some(mac),
                Err(e) => warn!(
                    "service {} backend {}: {e:#}; kept out of rotation until it resolves",
                    service.name, backend.name
                ),
            }
        }
    }
    table
}

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
