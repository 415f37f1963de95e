//! Bringing the shared state up (services and firewall programmed, XDP attached, tasks started)
//! and down (tasks stopped, XDP detached, pins removed).
use std::{
    collections::HashMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::SystemTime,
};

use anyhow::Result;
use aya::programs::XdpMode;
use lb_common::maps::{Backend, Service, ServiceKey};
use log::info;

use crate::{
    check_metrics::CheckMetrics,
    config::{Config, XdpModeConfig},
    dataplane::{Attached, Dataplane},
    firewall::{RuleActivity, RuleSet},
    health::Check,
    services::{self, ServiceEntry, ServiceTable},
};

use super::{upkeep::count_nat_ports, AgentState, BackendRuntime, SharedState};

/// What `lb run` prepares before the state is shared: the loaded (or adopted) maps, the
/// services planned from the config and the backends' starting states.
pub struct Setup {
    pub dataplane: Dataplane,
    pub table: ServiceTable,
    pub config: Config,
    pub config_path: PathBuf,
    pub iface: String,
    pub ifindex: u32,
    pub pin_dir: PathBuf,
    /// The maps (and flows) were adopted from an earlier agent.
    pub adopted: bool,
    pub api_bind: SocketAddr,
    pub token: Option<String>,
    pub backends: HashMap<u32, BackendRuntime>,
}

impl AgentState {
    /// The state, shared, from what start-up prepared; nothing is programmed yet.
    pub fn shared(setup: Setup) -> SharedState {
        Arc::new_cyclic(|me| {
            Mutex::new(AgentState {
                me: me.clone(),
                dataplane: setup.dataplane,
                table: setup.table,
                config: setup.config,
                config_path: setup.config_path,
                iface: setup.iface,
                ifindex: setup.ifindex,
                pin_dir: setup.pin_dir,
                attached: None,
                adopted: setup.adopted,
                started: SystemTime::now(),
                api_bind: setup.api_bind,
                token: setup.token,
                backends: setup.backends,
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
                database_memory: None,
                database_commands: None,
                host_addrs: Vec::new(),
                nat_ports: Arc::new(Mutex::new(None)),
            })
        })
    }

    /// Programs every service (and removes what an earlier agent left that the config no
    /// longer has) and the firewall, attaches XDP, then starts the health checks, the database
    /// watch and the NAT port count. `existing_*` are the maps' entries as loaded.
    pub fn bring_up(
        &mut self,
        checks: HashMap<(String, String), Check>,
        existing_services: &[(ServiceKey, Service)],
        existing_backends: &[Backend],
    ) -> Result<()> {
        for index in 0..self.table.services.len() {
            self.program_service(index)?;
        }
        services::remove_stale(
            &mut self.dataplane,
            &self.table,
            existing_services,
            existing_backends,
        )?;
        self.apply_firewall()?;
        let mode = match self.config.agent.xdp_mode {
            XdpModeConfig::Auto => XdpMode::Default,
            XdpModeConfig::Native => XdpMode::Driver,
            XdpModeConfig::Generic => XdpMode::Skb,
        };
        let iface = &self.iface;
        let attached = self.dataplane.attach(iface, mode)?;
        match attached {
            Attached::ReplacedPinned => {
                info!("replaced the program of the pinned XDP link on {iface}: no traffic gap")
            }
            Attached::Native => info!("XDP attached to {iface} in native mode"),
            Attached::GenericFallback | Attached::Generic => {
                info!("XDP attached to {iface} in generic mode")
            }
        }
        self.attached = Some(attached);
        for service in &self.table.services {
            info!(
                "service {}: {} backends, {} in rotation",
                service.name,
                service.backends.len(),
                in_rotation(service)
            );
        }
        self.start_checkers(checks);
        let credentials = super::db_watch::database_credentials(&self.config)?;
        self.start_database_watch(credentials)?;
        count_nat_ports(
            self.dataplane.nat_tables()?,
            Arc::downgrade(&self.nat_ports),
        )?;
        Ok(())
    }

    /// Stops the tasks, detaches XDP and removes the pins (a clean stop).
    pub fn shut_down(&mut self) -> Result<()> {
        self.stop_checkers();
        self.stop_database_watch();
        self.dataplane.detach_and_unpin()
    }
}

fn in_rotation(service: &ServiceEntry) -> usize {
    service
        .selection_table()
        .iter()
        .collect::<std::collections::HashSet<_>>()
        .len()
}
