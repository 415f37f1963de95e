//! Runtime changes the API asks for: backends drained, enabled, re-weighted, added and removed;
//! firewall rules added and removed (and the rule set swapped in whole).
use std::{net::IpAddr, time::Duration};

use anyhow::Result;
use log::info;

use crate::{
    config::{self, Mode, MAX_WEIGHT},
    firewall::{self, RuleSet},
    health::Check,
    neighbor,
    services::{self, BackendEntry, BackendState},
};

use super::{db_watch::is_database_service, AdminState, AgentState, BackendRuntime, HealthStatus};

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

impl AgentState {
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
            .find(|c| c.name == service)
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
        if self.config.firewall.rules.iter().any(|r| r.name == name) {
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
                .find(|r| r.sources.contains(&cidr));
            if let Some(owner) = owner {
                return Err(ChangeError::Conflict(format!(
                    "{cidr} belongs to rule `{}` already",
                    owner.name
                )));
            }
            cidrs.push(cidr);
        }
        let limit = (lb_common::MAX_PREFIXES / 2) as usize;
        if self.rules.prefixes.len() + self.rules.scoped.len() + cidrs.len() > limit {
            return Err(ChangeError::Conflict(format!(
                "the firewall holds at most {limit} prefixes"
            )));
        }
        self.config.firewall.rules.push(config::RuleConfig {
            name: name.to_string(),
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
            .position(|r| r.name == name)
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
    pub(super) fn apply_firewall(&mut self) -> Result<()> {
        let mut rules =
            RuleSet::from_config(&self.config, &self.table, firewall::ephemeral_ports());
        rules.settings.own_mac = firewall::interface_mac(&self.iface)?;
        let vips: Vec<std::net::IpAddr> = self.config.services.iter().map(|s| s.vip).collect();
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
}

/// The addresses in their first order, each once.
pub(super) fn dedup(addrs: Vec<IpAddr>) -> Vec<IpAddr> {
    let mut seen = Vec::with_capacity(addrs.len());
    for addr in addrs {
        if !seen.contains(&addr) {
            seen.push(addr);
        }
    }
    seen
}
