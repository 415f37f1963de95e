//! The `[database]` watch task, and the routing (who is behind the write and read VIPs) that its
//! rounds decide.
use std::net::SocketAddr;

use anyhow::{Context as _, Result};
use log::{info, warn};

use crate::{
    config::{self, Config},
    db,
};

use super::{lock, AgentState, Checker};

impl AgentState {
    /// Starts watching the `[database]` cluster (if configured) in its own task.
    pub(super) fn start_database_watch(&mut self) -> Result<()> {
        self.stop_database_watch();
        let Some(database) = self.config.database.clone() else {
            self.database = None;
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
        let credentials = db::Credentials {
            user: database.user.clone(),
            password: config::read_secret(
                database.password.as_ref(),
                database.password_file.as_ref(),
                "database password",
            )
            .map_err(anyhow::Error::msg)?
            .unwrap_or_default(),
            replication_user: database.replication_user.clone(),
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
            fail_after: database.fail_after,
            max_lag_s: database.max_lag_s,
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

    pub(super) fn stop_database_watch(&mut self) {
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
