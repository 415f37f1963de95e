//! `lb run`: load (or adopt) the data path, program it from the config, attach, keep backend
//! MAC addresses resolved, and detach cleanly on SIGINT/SIGTERM.
use std::{path::PathBuf, time::Duration};

use anyhow::{Context as _, Result};
use aya::programs::XdpMode;
use lb_common::maps::Settings;
use log::{info, warn};
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    config::{self, Config, XdpModeConfig},
    dataplane::{Attached, Dataplane, LoadOptions},
    firewall, neighbor,
    services::{self, ServiceTable},
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

pub async fn run(options: RunOptions) -> Result<()> {
    let config = config::load(&options.config_path).map_err(|e| anyhow::anyhow!("{e}"))?;
    let iface = options
        .iface
        .clone()
        .or_else(|| config.agent.interface.as_ref().map(|i| i.get_ref().clone()))
        .context("no interface: set agent.interface in the config or pass --iface")?;
    let ifindex = neighbor::ifindex(&iface)?;
    let pin_dir = options.pin_path.clone().unwrap_or_else(|| config.agent.pin_path.clone());

    let mut dataplane = Dataplane::load(&LoadOptions {
        pin_dir: Some(pin_dir.clone()),
        flow_capacity: *config.agent.flow_capacity.get_ref(),
        ..LoadOptions::default()
    })?;
    if dataplane.adopted() {
        info!("adopted pinned maps under {}: existing flows are kept", pin_dir.display());
    }
    dataplane.set_settings(&Settings {
        nat_port_min: *config.agent.nat_port_min.get_ref(),
        nat_port_max: *config.agent.nat_port_max.get_ref(),
        _pad: 0,
    })?;

    let mut table = program_all(&mut dataplane, &config, ifindex)?;
    let rules = firewall::RuleSet::from_config(&config, &table, firewall::ephemeral_ports());
    let mut host_addrs = firewall::interface_addresses(&iface)?;
    let vips: Vec<std::net::IpAddr> = config.services.iter().map(|s| *s.vip.get_ref()).collect();
    host_addrs.extend(vips.iter().copied());
    firewall::apply(&mut dataplane, &rules, &host_addrs, &vips)?;
    info!(
        "firewall: {} rules, {} prefixes, {} scoped sources; host policy {}",
        rules.rules.len(),
        rules.prefixes.len(),
        rules.scoped.len(),
        if rules.settings.flags & lb_common::maps::FW_HOST_POLICY != 0 { "restrict" } else { "open" }
    );
    let mode = match config.agent.xdp_mode {
        XdpModeConfig::Auto => XdpMode::Default,
        XdpModeConfig::Native => XdpMode::Driver,
        XdpModeConfig::Generic => XdpMode::Skb,
    };
    let attached = dataplane.attach(&iface, mode)?;
    match attached {
        Attached::ReplacedPinned => info!("replaced the program of the pinned XDP link on {iface}: no traffic gap"),
        Attached::Native => info!("XDP attached to {iface} in native mode"),
        Attached::GenericFallback | Attached::Generic => info!("XDP attached to {iface} in generic mode"),
    }
    for service in &table.services {
        info!(
            "service {}: {} backends, {} in rotation",
            service.name,
            service.backends.len(),
            service.selection_table().iter().collect::<std::collections::HashSet<_>>().len()
        );
    }
    println!("lb: running on {iface}; pins under {}; Ctrl-C to stop", pin_dir.display());

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut tick = tokio::time::interval(RESOLVE_RETRY);
    loop {
        tokio::select! {
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = tick.tick() => resolve_missing(&mut dataplane, &mut table, ifindex),
        }
    }
    info!("stopping: detaching XDP from {iface} and removing pins");
    dataplane.detach_and_unpin()?;
    Ok(())
}

/// Resolves every backend's MAC and writes all services.
fn program_all(dataplane: &mut Dataplane, config: &Config, ifindex: u32) -> Result<ServiceTable> {
    let existing_services = dataplane.services()?;
    let existing_backends = dataplane.backends()?;
    let mut table = ServiceTable::from_config(config, &existing_services, &existing_backends)?;
    for service in &mut table.services {
        for backend in &mut service.backends {
            match neighbor::resolve(ifindex, backend.addr, RESOLVE_TIMEOUT) {
                Ok(mac) => backend.mac = Some(mac),
                Err(e) => warn!("service {} backend {}: {e:#}; kept out of rotation until it resolves", service.name, backend.name),
            }
        }
        services::program_service(dataplane, service)?;
    }
    services::remove_stale(dataplane, &table, &existing_services, &existing_backends)?;
    Ok(table)
}

fn resolve_missing(dataplane: &mut Dataplane, table: &mut ServiceTable, ifindex: u32) {
    for service in &mut table.services {
        let mut changed = false;
        for backend in service.backends.iter_mut().filter(|b| b.mac.is_none()) {
            if let Ok(Some(mac)) = neighbor::lookup(ifindex, backend.addr) {
                info!("service {} backend {}: resolved to {}", service.name, backend.name, neighbor::format_mac(&mac));
                backend.mac = Some(mac);
                changed = true;
            } else {
                let _ = neighbor::resolve(ifindex, backend.addr, Duration::ZERO);
            }
        }
        if changed {
            if let Err(e) = services::program_service(dataplane, service) {
                warn!("service {}: {e:#}", service.name);
            }
        }
    }
}
