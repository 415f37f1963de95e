//! The `[database]` watch task, and the routing (who is behind the write and read VIPs) that its
//! rounds decide.
use std::{net::SocketAddr, time::Duration};

use anyhow::{Context as _, Result};
use log::{info, warn};

use crate::{
    config::{self, Config, FailoverPolicy},
    db,
};

use super::{lock, AgentState, Checker};

/// The database accounts' passwords, read from the config or its files. Read before a reload
/// changes anything, so an unreadable file refuses the reload instead of killing the watch.
pub(crate) fn database_credentials(config: &Config) -> Result<Option<db::Credentials>> {
    let Some(database) = &config.database else {
        return Ok(None);
    };
    let secret = |inline, file, what| {
        config::read_secret(inline, file, what)
            .map(Option::unwrap_or_default)
            .map_err(anyhow::Error::msg)
    };
    Ok(Some(db::Credentials {
        user: database.user.clone(),
        password: secret(
            database.password.as_ref(),
            database.password_file.as_ref(),
            "database password",
        )?,
        replication_user: database.replication_user.clone(),
        replication_password: secret(
            database.replication_password.as_ref(),
            database.replication_password_file.as_ref(),
            "database replication_password",
        )?,
    }))
}

/// How many operator commands may wait for the watch's next round.
const COMMAND_QUEUE: usize = 4;

impl AgentState {
    /// Starts watching the `[database]` cluster (if configured) in its own task, from what the
    /// previous watch knew (a reload) or from the state file (a start).
    pub(super) fn start_database_watch(
        &mut self,
        credentials: Option<db::Credentials>,
    ) -> Result<()> {
        self.stop_database_watch();
        let (Some(database), Some(credentials)) = (self.config.database.clone(), credentials)
        else {
            self.database = None;
            self.database_memory = None;
            return Ok(());
        };
        let write = &database.write_service;
        let service = self
            .config
            .services
            .iter()
            .find(|s| &s.name == write)
            .with_context(|| format!("database write_service `{write}` is not a service"))?;
        let port = service.port;
        let nodes: Vec<db::Node> = service
            .backends
            .iter()
            .map(|b| db::Node {
                name: b.name.clone(),
                addr: SocketAddr::new(b.address, b.port_or(port)),
            })
            .collect();
        let settings = db::Settings {
            interval: database.interval(),
            timeout: database.timeout(),
            give_up: Duration::from_millis(database.unreachable_after_ms),
            fail_after: database.fail_after,
            max_lag_s: database.max_lag_s,
            policy: match database.failover {
                FailoverPolicy::Safe => db::Policy::Safe,
                FailoverPolicy::Available => db::Policy::Available,
                FailoverPolicy::Off => db::Policy::Off,
            },
        };
        let memory = match self.database_memory.take() {
            Some(memory) => memory,
            None => match db::Memory::load(&database.state_file) {
                Ok(memory) => memory.unwrap_or_default(),
                // Starting blind is what the file exists to prevent: say so, loudly.
                Err(e) => {
                    warn!("database: {e:#}; starting with no memory of the primary");
                    db::Memory::default()
                }
            },
        };
        info!(
            "database: watching {} nodes every {} ms, failover {:?}",
            nodes.len(),
            settings.interval.as_millis(),
            database.failover
        );
        self.next_token += 1;
        let token = self.next_token;
        let me = self.me.clone();
        let (commands, receiver) = tokio::sync::mpsc::channel(COMMAND_QUEUE);
        let watch = db::Watch {
            nodes,
            credentials,
            settings,
            memory,
            state_file: Some(database.state_file.clone()),
            commands: receiver,
        };
        let task = tokio::spawn(db::run(watch, move |status, write, read, memory| {
            let Some(shared) = me.upgrade() else {
                return false;
            };
            let mut agent = lock(&shared);
            agent.apply_database(token, status, write, read, memory)
        }));
        self.database_watch = Some(Checker {
            token,
            task: task.abort_handle(),
        });
        self.database_commands = Some(commands);
        Ok(())
    }

    /// Hands an operator's command to the watch (it runs at the next round).
    pub fn database_command(&self, command: db::Command) -> Result<(), String> {
        let sender = self
            .database_commands
            .as_ref()
            .ok_or("no [database] section is configured")?;
        sender
            .try_send(command)
            .map_err(|_| "the database watch is busy with earlier commands; try again".to_string())
    }

    pub(super) fn stop_database_watch(&mut self) {
        if let Some(watch) = self.database_watch.take() {
            watch.task.abort();
        }
        self.database_commands = None;
    }

    /// Applies one database round: only the primary behind the write VIP, the chosen replicas
    /// behind the read VIP. False tells a replaced watch task to stop.
    fn apply_database(
        &mut self,
        token: u64,
        status: &db::DatabaseStatus,
        write: Option<&str>,
        read: &[&str],
        memory: &db::Memory,
    ) -> bool {
        if self.database_watch.as_ref().map(|w| w.token) != Some(token) {
            return false;
        }
        if self.database_memory.as_ref() != Some(memory) {
            self.database_memory = Some(memory.clone());
        }
        let Some(database) = &self.config.database else {
            return false;
        };
        let write_service = database.write_service.clone();
        let read_service = database.read_service.clone();
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
}

/// Whether `service` is the write or read service of the `[database]` section.
pub(crate) fn is_database_service(config: &Config, service: &str) -> bool {
    config.database.as_ref().is_some_and(|d| {
        d.write_service == service || d.read_service.as_ref().is_some_and(|r| r == service)
    })
}
