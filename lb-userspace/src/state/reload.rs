//! Config reloads (SIGHUP or API): the new file is validated whole, then only its difference is
//! applied; and the pieces of the config that start-up and reload both read.
use std::{
    collections::HashMap,
    path::Path,
    time::{Duration, SystemTime},
};

use anyhow::{Context as _, Result};
use lb_common::maps::Settings;
use log::{info, warn};

use crate::{
    config::{self, ApiConfig, Config},
    dataplane::Dataplane,
    db, firewall,
    health::Check,
    neighbor,
    services::{self, ServiceTable},
};

use super::{
    changes::ChangeError,
    db_watch::{database_credentials, is_database_service},
    lock, AdminState, AgentState, BackendRuntime, HealthStatus, ReloadRecord, SharedState,
};

/// Re-reads the config file and applies only the difference: backends and services that stay
/// keep their ids (so their flows), health and drain state. An invalid file is refused and the
/// running config kept. Runs on a blocking thread, and reads the files before taking the lock.
pub async fn reload(state: &SharedState) -> Result<String, ChangeError> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || {
        let path = lock(&state).config_path.clone();
        let files = ReloadFiles::read(&path);
        lock(&state).apply_reload(files)
    })
    .await
    .map_err(|e| ChangeError::Internal(anyhow::anyhow!("the reload task failed: {e}")))?
}

/// What a reload reads from disk: the config, the health checks' secrets and the API token.
pub struct ReloadFiles {
    config: Config,
    checks: HashMap<(String, String), Check>,
    token: Option<String>,
    database: Option<db::Credentials>,
}

impl ReloadFiles {
    /// Reads and validates them; any error refuses the reload as an invalid config.
    pub fn read(config_path: &Path) -> Result<Self, ChangeError> {
        let config =
            config::load(config_path).map_err(|e| ChangeError::InvalidConfig(e.to_string()))?;
        let checks =
            build_checks(&config).map_err(|e| ChangeError::InvalidConfig(format!("{e:#}")))?;
        let token =
            load_token(&config.api).map_err(|e| ChangeError::InvalidConfig(format!("{e:#}")))?;
        let database = database_credentials(&config)
            .map_err(|e| ChangeError::InvalidConfig(format!("{e:#}")))?;
        Ok(Self {
            config,
            checks,
            token,
            database,
        })
    }
}

impl AgentState {
    /// Applies a reload whose files were read (or refused) by [`ReloadFiles::read`], logs the
    /// outcome and keeps it for `lb status`.
    pub fn apply_reload(
        &mut self,
        files: Result<ReloadFiles, ChangeError>,
    ) -> Result<String, ChangeError> {
        let result = files.and_then(|files| self.try_reload(files));
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

    fn try_reload(&mut self, files: ReloadFiles) -> Result<String, ChangeError> {
        let ReloadFiles {
            config,
            checks,
            token,
            database,
        } = files;
        let mut notes = Vec::new();
        let old = &self.config.agent;
        let new = &config.agent;
        if old.interface != new.interface
            || old.pin_path != new.pin_path
            || old.xdp_mode != new.xdp_mode
            || api_listener_changed(&self.config.api, &config.api)
        {
            notes.push("agent interface/pin_path/xdp_mode and [api] changes (but the token) take effect at the next start".to_string());
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
        self.start_database_watch(database)
            .map_err(ChangeError::Internal)?;
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
}

/// A change to what the API's listener was built with at start (all of `[api]` but the token).
fn api_listener_changed(old: &ApiConfig, new: &ApiConfig) -> bool {
    old.bind != new.bind
        || old.tls != new.tls
        || old.allowed_hosts != new.allowed_hosts
        || old.max_connections != new.max_connections
        || old.header_read_timeout_ms != new.header_read_timeout_ms
        || old.idle_timeout_ms != new.idle_timeout_ms
        || old.request_timeout_ms != new.request_timeout_ms
}

/// The API token from `api.token_file` (its first line).
pub(crate) fn load_token(api: &ApiConfig) -> Result<Option<String>> {
    let Some(path) = &api.token_file else {
        return Ok(None);
    };
    let token = config::read_secret_file(path, "api.token_file").map_err(|e| {
        anyhow::anyhow!(
            "{e} (create it with a long random token, e.g. `openssl rand -hex 32 > {}`)",
            path.display()
        )
    })?;
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
pub(crate) fn set_data_path_settings(dataplane: &mut Dataplane, config: &Config) -> Result<()> {
    dataplane.set_settings(&Settings {
        nat_port_min: config.agent.nat_port_min,
        nat_port_max: config.agent.nat_port_max,
        test_clock: 0,
        timeouts: config.agent.timeouts.to_map(),
    })
}

/// The check of every backend whose service has one, keyed by backend id once ids are known;
/// here keyed by (service, backend) name. Fails on an unreadable password file.
pub(crate) fn build_checks(config: &Config) -> Result<HashMap<(String, String), Check>> {
    let mut checks = HashMap::new();
    for service in &config.services {
        let Some(health) = &service.health else {
            continue;
        };
        for backend in &service.backends {
            let check = Check::from_config(health, backend.address, backend.port_or(service.port))
                .with_context(|| {
                    format!(
                        "service {} backend {}: health check",
                        service.name, backend.name
                    )
                })?;
            checks.insert((service.name.clone(), backend.name.clone()), check);
        }
    }
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The database passwords are read with the rest of the files: one that cannot be read
    /// refuses the reload before anything changes (it used to stop the watch silently).
    #[test]
    fn an_unreadable_database_password_file_refuses_the_reload() {
        let dir = std::env::temp_dir().join(format!("lb-reload-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("{e}"));
        let path = dir.join("lb.toml");
        let config = format!(
            "[agent]\ninterface = \"eth0\"\n\n\
             [[service]]\nname = \"db\"\nvip = \"10.0.0.101\"\nport = 3306\nmode = \"dsr\"\n\n\
             [[service.backend]]\nname = \"db1\"\naddress = \"10.0.0.21\"\n\n\
             [database]\nwrite_service = \"db\"\nuser = \"lbadmin\"\n\
             password_file = \"{}\"\nreplication_user = \"repl\"\nreplication_password = \"r\"\n",
            dir.join("missing-password").display()
        );
        std::fs::write(&path, config).unwrap_or_else(|e| panic!("{e}"));
        let refused = ReloadFiles::read(&path);
        std::fs::remove_dir_all(&dir).ok();
        match refused {
            Err(ChangeError::InvalidConfig(message)) => {
                assert!(message.contains("missing-password"), "{message}")
            }
            Err(other) => panic!("refused for another reason: {other}"),
            Ok(_) => panic!("a reload with an unreadable password file was accepted"),
        }
    }
}
