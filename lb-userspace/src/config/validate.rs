//! Validation of the file as written (`file.rs`), whole: every error located by line and column,
//! with its fix; `parse` turns only a file without errors into the model.
use std::{collections::HashSet, net::IpAddr, ops::Range, path::Path};

use toml::Spanned;

use super::{
    error::ConfigError,
    file::*,
    model::{
        self, HealthKind, Mode, MysqlRole, Protocol, SnatAddresses, DEFAULT_API_MAX_CONNECTIONS,
        DEFAULT_CHECK_INTERVAL_MS, DEFAULT_CHECK_TIMEOUT_MS, DEFAULT_DB_FAIL_AFTER,
        DEFAULT_DB_INTERVAL_MS, DEFAULT_DB_TIMEOUT_MS, DEFAULT_DB_UNREACHABLE_AFTER_MS,
        DEFAULT_FALL, DEFAULT_MAP_MEMORY_BUDGET_MIB, DEFAULT_RISE, MAX_WEIGHT,
    },
};

/// Where the errors point: a span of the file becomes its line and column.
pub(super) struct Locator<'a> {
    pub(super) path: &'a Path,
    pub(super) text: &'a str,
}

impl Locator<'_> {
    pub(super) fn error(
        &self,
        span: Range<usize>,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> ConfigError {
        let offset = span.start.min(self.text.len());
        let before = &self.text[..offset];
        let line = before.matches('\n').count() + 1;
        let column = offset - before.rfind('\n').map_or(0, |i| i + 1) + 1;
        ConfigError {
            file: self.path.to_owned(),
            line,
            column,
            message: message.into(),
            fix: fix.into(),
        }
    }
}

pub(super) fn validate(config: &Config, at: &Locator<'_>) -> Vec<ConfigError> {
    let mut errors = Vec::new();
    let agent = &config.agent;
    if let Some(interface) = &agent.interface {
        let name = interface.get_ref();
        if name.is_empty()
            || name.len() >= 16
            || name.contains('/')
            || name.contains(char::is_whitespace)
        {
            errors.push(at.error(
                interface.span(),
                format!("`{name}` is not a valid interface name"),
                "use the name shown by `ip link`, e.g. \"eth0\" (at most 15 characters)",
            ));
        }
    }
    let capacity = *agent.flow_capacity.get_ref();
    if !(1024..=1 << 26).contains(&capacity) {
        errors.push(at.error(
            agent.flow_capacity.span(),
            format!("flow_capacity {capacity} is out of range"),
            "use a value between 1024 and 67108864 (default 262144)",
        ));
    }
    if let Some(unverified) = &agent.unverified_capacity {
        let value = *unverified.get_ref();
        if !(1024..=1 << 26).contains(&value) {
            errors.push(at.error(
                unverified.span(),
                format!("unverified_capacity {value} is out of range"),
                "use a value between 1024 and 67108864 (default: a quarter of flow_capacity)",
            ));
        }
    }
    let budget = *agent.map_memory_budget_mib.get_ref();
    if !(1..=MAX_MAP_MEMORY_BUDGET_MIB).contains(&budget) {
        errors.push(at.error(
            agent.map_memory_budget_mib.span(),
            format!("map_memory_budget_mib {budget} is out of range"),
            format!("use a number of MiB between 1 and {MAX_MAP_MEMORY_BUDGET_MIB} (default {DEFAULT_MAP_MEMORY_BUDGET_MIB})"),
        ));
    }
    // A day at most: an idle limit longer than that keeps dead flows (and NAT ports) for good.
    for (name, value) in agent.timeouts.fields() {
        let seconds = *value.get_ref();
        if !(1..=86_400).contains(&seconds) {
            errors.push(at.error(
                value.span(),
                format!("agent.timeouts.{name} = {seconds} is out of range"),
                "use a number of seconds between 1 and 86400",
            ));
        }
    }
    let (min, max) = (*agent.nat_port_min.get_ref(), *agent.nat_port_max.get_ref());
    if min == 0 || min > max {
        errors.push(at.error(
            agent.nat_port_min.span(),
            format!("NAT port range {min}..={max} is empty or starts at 0"),
            "set 1 <= nat_port_min <= nat_port_max, e.g. 1024 and 32767",
        ));
    }
    if config.services.len() > lb_common::MAX_SERVICES as usize {
        errors.push(at.error(
            0..0,
            format!(
                "{} services configured, the data path holds {}",
                config.services.len(),
                lb_common::MAX_SERVICES
            ),
            "remove services or raise MAX_SERVICES in lb-common",
        ));
    }

    let mut names = HashSet::new();
    let mut endpoints = HashSet::new();
    let mut backend_total = 0usize;
    for service in &config.services {
        let name = service.name.get_ref();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            errors.push(at.error(
                service.name.span(),
                format!("service name `{name}` must be non-empty letters, digits, '-' or '_'"),
                "rename the service, e.g. \"web\"",
            ));
        }
        if !names.insert(name.clone()) {
            errors.push(at.error(
                service.name.span(),
                format!("service `{name}` is defined twice"),
                "give each service its own name",
            ));
        }
        let vip = *service.vip.get_ref();
        let port = *service.port.get_ref();
        if !endpoints.insert((vip, port, service.protocol)) {
            errors.push(at.error(
                service.vip.span(),
                format!(
                    "service `{name}`: {vip} port {port} {:?} is already used by another service",
                    service.protocol
                ),
                "each (vip, port, protocol) may belong to one service only",
            ));
        }
        if port == 0 {
            errors.push(at.error(
                service.port.span(),
                format!("service `{name}`: port 0"),
                "use the port clients connect to, e.g. 80",
            ));
        }
        if vip.is_unspecified() || vip.is_multicast() {
            errors.push(at.error(
                service.vip.span(),
                format!("service `{name}`: {vip} cannot be a VIP"),
                "use a unicast address clients send to",
            ));
        }
        match (*service.mode.get_ref(), &service.snat_address) {
            (Mode::Nat, None) => errors.push(at.error(
                service.mode.span(),
                format!("service `{name}` is in NAT mode but has no snat_address"),
                "add snat_address = \"<an address of the load balancer on the backends' network>\"",
            )),
            (Mode::Nat, Some(snat)) => {
                validate_snat(name, &vip, snat, at, &mut errors);
            }
            (Mode::Dsr, Some(snat)) => errors.push(at.error(
                snat.span(),
                format!("service `{name}` is in DSR mode; snat_address only applies to NAT"),
                "remove snat_address, or set mode = \"nat\"",
            )),
            _ => {}
        }
        if let Some(health) = &service.health {
            validate_health(name, service.protocol, health, at, &mut errors);
        }
        if service.backends.is_empty() {
            errors.push(at.error(
                service.name.span(),
                format!("service `{name}` has no backend"),
                "add at least one [[service.backend]]",
            ));
        }
        let mut backend_names = HashSet::new();
        let mut backend_endpoints = HashSet::new();
        for backend in &service.backends {
            backend_total += 1;
            let bname = backend.name.get_ref();
            if !backend_names.insert(bname.clone()) {
                errors.push(at.error(
                    backend.name.span(),
                    format!("service `{name}`: backend `{bname}` is defined twice"),
                    "give each backend its own name",
                ));
            }
            let address = *backend.address.get_ref();
            let bport = backend.port_or(port);
            if address.is_ipv4() != vip.is_ipv4() {
                errors.push(at.error(
                    backend.address.span(),
                    format!("service `{name}`: backend `{bname}` ({address}) is not of the VIP's address family"),
                    "use backends of the same family as the VIP",
                ));
            }
            if !backend_endpoints.insert((address, bport)) {
                errors.push(at.error(
                    backend.address.span(),
                    format!("service `{name}`: {address} port {bport} is listed twice"),
                    "list each backend once",
                ));
            }
            if let (Mode::Dsr, Some(p)) = (*service.mode.get_ref(), &backend.port) {
                if *p.get_ref() != port {
                    errors.push(at.error(
                        p.span(),
                        format!("service `{name}`: DSR cannot change the port ({port} -> {})", p.get_ref()),
                        "remove the backend port (DSR backends listen on the service port), or use mode = \"nat\"",
                    ));
                }
            }
            let weight = *backend.weight.get_ref();
            if weight == 0 || weight > MAX_WEIGHT {
                errors.push(at.error(
                    backend.weight.span(),
                    format!("service `{name}`: backend `{bname}` has weight {weight}"),
                    format!(
                        "use a weight from 1 to {MAX_WEIGHT}; drain a backend to stop new flows"
                    ),
                ));
            }
        }
    }
    validate_firewall(config, at, &mut errors);
    validate_api(&config.api, at, &mut errors);
    if let Some(database) = &config.database {
        validate_database(config, database, at, &mut errors);
    }
    if backend_total > (lb_common::MAX_BACKENDS / 2) as usize {
        errors.push(at.error(
            0..0,
            format!(
                "{backend_total} backends configured, at most {} fit",
                lb_common::MAX_BACKENDS / 2
            ),
            "remove backends",
        ));
    }
    errors
}

/// `[api]`: an API reachable from other hosts speaks TLS and wants the token for reads too;
/// names and limits are sane.
fn validate_api(api: &ApiConfig, at: &Locator<'_>, errors: &mut Vec<ConfigError>) {
    let bind = *api.bind.get_ref();
    if !bind.ip().is_loopback() {
        if api.tls_cert_file.is_none() || api.tls_key_file.is_none() {
            errors.push(at.error(
                api.bind.span(),
                format!(
                    "api.bind = \"{bind}\" is reachable from other hosts, but [api] has no TLS \
                     certificate: the token and every answer would cross the network in clear"
                ),
                "set api.tls_cert_file and api.tls_key_file (PEM), or bind to loopback \
                 (e.g. \"127.0.0.1:9876\") and reach the API through SSH",
            ));
        }
        if api.token_file.is_none() {
            errors.push(at.error(
                api.bind.span(),
                format!(
                    "api.bind = \"{bind}\" is reachable from other hosts, so reads need the \
                     token too, but [api] has no token_file"
                ),
                "set api.token_file to a file holding a long random token \
                 (e.g. `openssl rand -hex 32`), or bind to loopback",
            ));
        }
    }
    match (&api.tls_cert_file, &api.tls_key_file) {
        (Some(cert), None) => errors.push(at.error(
            cert.span(),
            "api.tls_cert_file is set without api.tls_key_file",
            "set both: the certificate chain and its private key (PEM)",
        )),
        (None, Some(key)) => errors.push(at.error(
            key.span(),
            "api.tls_key_file is set without api.tls_cert_file",
            "set both: the certificate chain and its private key (PEM)",
        )),
        _ => {}
    }
    for host in &api.allowed_hosts {
        let name = host.get_ref();
        if !is_host_name(name) {
            errors.push(at.error(
                host.span(),
                format!("api.allowed_hosts: `{name}` is not a host name or an IP address"),
                "list names as clients type them, without scheme or port, e.g. \"lb.example.net\"",
            ));
        }
    }
    let connections = *api.max_connections.get_ref();
    if !(1..=65_536).contains(&connections) {
        errors.push(at.error(
            api.max_connections.span(),
            format!("api.max_connections = {connections} is out of range"),
            format!("use 1 to 65536 (default {DEFAULT_API_MAX_CONNECTIONS}), well below the agent's file-descriptor limit"),
        ));
    }
    for (name, value) in [
        ("header_read_timeout_ms", &api.header_read_timeout_ms),
        ("idle_timeout_ms", &api.idle_timeout_ms),
        ("request_timeout_ms", &api.request_timeout_ms),
    ] {
        let ms = *value.get_ref();
        if !(10..=3_600_000).contains(&ms) {
            errors.push(at.error(
                value.span(),
                format!("api.{name} = {ms} is out of range"),
                "use a number of milliseconds from 10 to 3600000",
            ));
        }
    }
}

/// A DNS name (letters, digits, '-', dots between labels) or an IP address, without a port.
fn is_host_name(text: &str) -> bool {
    if text.parse::<IpAddr>().is_ok() {
        return true;
    }
    !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

/// The maps this config needs must fit `agent.map_memory_budget_mib`. Checked on the estimate
/// (`sizing::estimate`), since nothing is loaded yet; the error points at the budget when the
/// file sets it, else at `flow_capacity`, the usual cause.
/// `config` is the file's (for the spans), `validated` what it became (for the figures).
pub(super) fn validate_memory_budget(
    config: &Config,
    validated: &model::Config,
    at: &Locator<'_>,
    errors: &mut Vec<ConfigError>,
) {
    let agent = &config.agent;
    let cpus = crate::sizing::possible_cpus();
    let estimate = crate::sizing::estimate(&validated.map_demand(), cpus);
    let total: u64 = estimate.iter().map(|(_, bytes)| bytes).sum();
    let budget = validated.agent.map_memory_budget_bytes();
    if total <= budget {
        return;
    }
    let mut largest = estimate.clone();
    largest.sort_by_key(|entry| std::cmp::Reverse(entry.1));
    let largest: Vec<String> = largest
        .iter()
        .take(3)
        .map(|(name, bytes)| format!("{name} {}", crate::sizing::mib(*bytes)))
        .collect();
    let span = [
        agent.map_memory_budget_mib.span(),
        agent.flow_capacity.span(),
    ]
    .into_iter()
    .find(|span| !span.is_empty())
    .unwrap_or(0..0);
    errors.push(at.error(
        span,
        format!(
            "the data path's maps would take about {} of kernel memory ({}, ...), over agent.map_memory_budget_mib = {} MiB",
            crate::sizing::mib(total),
            largest.join(", "),
            agent.map_memory_budget_mib.get_ref()
        ),
        format!(
            "lower agent.flow_capacity (each 1M IPv4 connections take about 120 MiB, twice that with a NAT service) or raise agent.map_memory_budget_mib to at least {}",
            total.div_ceil(1024 * 1024)
        ),
    ));
}

fn validate_database(
    config: &Config,
    db: &DatabaseConfig,
    at: &Locator<'_>,
    errors: &mut Vec<ConfigError>,
) {
    if let FailoverSetting::Bool(old) = db.failover.get_ref() {
        errors.push(at.error(
            db.failover.span(),
            format!("database failover = {old} is no longer a setting"),
            "write failover = \"safe\" (promote only a replica holding every acknowledged write, the default), \"available\" (the most advanced replica, writes may be lost) or \"off\" (never change a node)",
        ));
    }
    let service = |name: &Spanned<String>, key: &str, errors: &mut Vec<ConfigError>| {
        let found = config
            .services
            .iter()
            .find(|s| s.name.get_ref() == name.get_ref());
        match found {
            None => errors.push(at.error(
                name.span(),
                format!("database {key} `{}` is not a configured service", name.get_ref()),
                "name a [[service]] whose backends are the database nodes",
            )),
            Some(s) if s.health.is_some() => errors.push(at.error(
                s.name.span(),
                format!("service `{}` is the database {key}; the [database] section checks its nodes", s.name.get_ref()),
                "remove its [service.health]: the agent keeps only the primary (write) or healthy replicas (read) in it",
            )),
            Some(s) if s.protocol != Protocol::Tcp => errors.push(at.error(
                s.name.span(),
                format!("service `{}` is the database {key} but is not TCP", s.name.get_ref()),
                "set protocol = \"tcp\"",
            )),
            Some(_) => {}
        }
        found
    };
    let write = service(&db.write_service, "write_service", errors);
    let read = db
        .read_service
        .as_ref()
        .and_then(|r| service(r, "read_service", errors));
    if let (Some(write), Some(read)) = (write, read) {
        if write.name.get_ref() == read.name.get_ref() {
            errors.push(at.error(
                read.name.span(),
                "the database read_service is the write_service",
                "give reads their own service on the read VIP",
            ));
        }
        for backend in &read.backends {
            let node = write
                .backends
                .iter()
                .find(|w| w.name.get_ref() == backend.name.get_ref());
            let same = node.is_some_and(|w| {
                w.address.get_ref() == backend.address.get_ref()
                    && w.port_or(*write.port.get_ref()) == backend.port_or(*read.port.get_ref())
            });
            if !same {
                errors.push(at.error(
                    backend.name.span(),
                    format!("read service `{}`: backend `{}` is not a node of the write service `{}` (same name, address and port)", read.name.get_ref(), backend.name.get_ref(), write.name.get_ref()),
                    "list the same database nodes in both services",
                ));
            }
        }
    }
    for (password, file, what) in [
        (&db.password, &db.password_file, "password"),
        (
            &db.replication_password,
            &db.replication_password_file,
            "replication_password",
        ),
    ] {
        if let (Some(_), Some(file)) = (password, file) {
            errors.push(at.error(
                file.span(),
                format!("database: both {what} and {what}_file are set"),
                "keep one of them (a file keeps secrets out of the config)",
            ));
        }
    }
    let (interval, timeout) = (*db.interval_ms.get_ref(), *db.timeout_ms.get_ref());
    if !(20..=60_000).contains(&interval) {
        errors.push(at.error(
            db.interval_ms.span(),
            format!("database interval_ms {interval} is out of range"),
            format!("use 20 to 60000 (default {DEFAULT_DB_INTERVAL_MS})"),
        ));
    }
    if !(10..=60_000).contains(&timeout) {
        errors.push(at.error(
            db.timeout_ms.span(),
            format!("database timeout_ms {timeout} is out of range"),
            format!("use 10 to 60000 (default {DEFAULT_DB_TIMEOUT_MS})"),
        ));
    }
    let unreachable = *db.unreachable_after_ms.get_ref();
    if unreachable < timeout.saturating_mul(2) || unreachable > 600_000 {
        errors.push(at.error(
            db.unreachable_after_ms.span(),
            format!("database unreachable_after_ms {unreachable} is out of range"),
            format!("use at least twice timeout_ms ({}) and at most 600000 (default {DEFAULT_DB_UNREACHABLE_AFTER_MS})", timeout.saturating_mul(2)),
        ));
    }
    if !(1..=100).contains(db.fail_after.get_ref()) {
        errors.push(at.error(
            db.fail_after.span(),
            format!(
                "database fail_after {} is out of range",
                db.fail_after.get_ref()
            ),
            format!("use 1 to 100 failed probes (default {DEFAULT_DB_FAIL_AFTER})"),
        ));
    }
}

fn validate_firewall(config: &Config, at: &Locator<'_>, errors: &mut Vec<ConfigError>) {
    let fw = &config.firewall;
    let mut names = HashSet::new();
    let mut prefixes = 0usize;
    for rule in &fw.rules {
        let name = rule.name.get_ref();
        if !names.insert(name.clone()) {
            errors.push(at.error(
                rule.name.span(),
                format!("firewall rule `{name}` is defined twice"),
                "give each rule its own name",
            ));
        }
        if rule.sources.is_empty() {
            errors.push(at.error(
                rule.name.span(),
                format!("firewall rule `{name}` has no sources"),
                "add sources = [\"203.0.113.0/24\", ...]",
            ));
        }
        prefixes += rule.sources.len();
    }
    let mut seen = std::collections::HashMap::new();
    for (rule, cidr) in fw
        .rules
        .iter()
        .flat_map(|r| r.sources.iter().map(move |c| (r, c)))
    {
        if let Some(other) = seen.insert(*cidr.get_ref(), rule.name.get_ref().clone()) {
            errors.push(at.error(
                cidr.span(),
                format!(
                    "{} is in firewall rules `{other}` and `{}`",
                    cidr.get_ref(),
                    rule.name.get_ref()
                ),
                "a prefix can belong to one rule only; remove one of them",
            ));
        }
    }
    for bogon in &fw.bogons {
        if seen.contains_key(bogon.get_ref()) {
            errors.push(at.error(
                bogon.span(),
                format!("{} is both a bogon and in a rule", bogon.get_ref()),
                "remove it from one of them",
            ));
        }
    }
    prefixes += fw.bogons.len();
    for service in &config.services {
        prefixes += service.allow_sources.len() + service.deny_sources.len();
        let vip = service.vip.get_ref();
        for cidr in service.allow_sources.iter().chain(&service.deny_sources) {
            if cidr.get_ref().addr().is_ipv4() != vip.is_ipv4() {
                errors.push(at.error(
                    cidr.span(),
                    format!(
                        "service `{}`: source {} is not of the VIP's address family",
                        service.name.get_ref(),
                        cidr.get_ref()
                    ),
                    "list sources of the VIP's family only",
                ));
            }
        }
        if !service.deny_sources.is_empty() && service.allow_sources.is_empty() {
            errors.push(at.error(
                service.deny_sources[0].span(),
                format!("service `{}` has deny_sources but no allow_sources", service.name.get_ref()),
                "deny_sources carve holes in allow_sources; to block sources for everyone use a [[firewall.rule]] with action = \"drop\"",
            ));
        }
    }
    for port in &fw.host.open_ports {
        if *port.port.get_ref() == 0 {
            errors.push(at.error(
                port.port.span(),
                "open port 0",
                "use the port of the service on the host, e.g. 22",
            ));
        }
        prefixes += port.sources.len();
    }
    if prefixes > (lb_common::MAX_PREFIXES / 2) as usize {
        errors.push(at.error(
            0..0,
            format!(
                "{prefixes} prefixes configured, at most {} fit",
                lb_common::MAX_PREFIXES / 2
            ),
            "merge prefixes",
        ));
    }
    if fw.rules.len() + config.services.len() + fw.host.open_ports.len() + 2
        > lb_common::MAX_RULES as usize
    {
        errors.push(at.error(
            0..0,
            "too many firewall rules",
            "merge rules: one rule may hold many prefixes",
        ));
    }
}

/// A NAT service's source addresses: one to `MAX_SNAT_ADDRS`, unicast, distinct, of the VIP's
/// family.
fn validate_snat(
    name: &str,
    vip: &IpAddr,
    snat: &Spanned<SnatAddresses>,
    at: &Locator<'_>,
    errors: &mut Vec<ConfigError>,
) {
    let addrs = &snat.get_ref().0;
    let max = lb_common::MAX_SNAT_ADDRS as usize;
    let mut error = |message: String, help: &str| errors.push(at.error(snat.span(), message, help));
    if addrs.is_empty() {
        error(
            format!("service `{name}`: snat_address is an empty list"),
            "give at least one address of the load balancer on the backends' network",
        );
    }
    if addrs.len() > max {
        error(
            format!(
                "service `{name}`: {} snat addresses, at most {max}",
                addrs.len()
            ),
            "remove addresses (each one already adds the whole NAT port range)",
        );
    }
    for (i, addr) in addrs.iter().enumerate() {
        if addr.is_ipv4() != vip.is_ipv4() {
            error(
                format!("service `{name}`: snat_address {addr} is not of the VIP's address family"),
                "use an IPv4 snat_address for an IPv4 VIP, IPv6 for IPv6",
            );
        } else if addr.is_unspecified()
            || addr.is_multicast()
            || addr.is_loopback()
            || matches!(addr, IpAddr::V4(v4) if v4.is_broadcast())
        {
            error(
                format!("service `{name}`: snat_address {addr} cannot be a source address"),
                "use a unicast address of the load balancer on the backends' network",
            );
        } else if addrs[..i].contains(addr) {
            error(
                format!("service `{name}`: snat_address {addr} is listed twice"),
                "list each address once",
            );
        }
    }
}

fn validate_health(
    service: &str,
    protocol: Protocol,
    health: &HealthConfig,
    at: &Locator<'_>,
    errors: &mut Vec<ConfigError>,
) {
    let kind = *health.kind.get_ref();
    if protocol == Protocol::Udp {
        errors.push(at.error(
            health.kind.span(),
            format!(
                "service `{service}` is UDP; its health check ({kind:?}) would connect over TCP"
            ),
            "check a TCP port of the backends with `port = ...`, or remove [service.health]",
        ));
    }
    let interval = *health.interval_ms.get_ref();
    if !(10..=60_000).contains(&interval) {
        errors.push(at.error(
            health.interval_ms.span(),
            format!("service `{service}`: health interval_ms {interval} is out of range"),
            format!("use 10 to 60000 ms (default {DEFAULT_CHECK_INTERVAL_MS})"),
        ));
    }
    let timeout = *health.timeout_ms.get_ref();
    // A default timeout has no position of its own: point at the interval that is too short.
    let timeout_span = if health.timeout_ms.span().is_empty() {
        health.interval_ms.span()
    } else {
        health.timeout_ms.span()
    };
    if (10..=60_000).contains(&interval) && (timeout < 10 || timeout > interval) {
        errors.push(at.error(
            timeout_span,
            format!("service `{service}`: health timeout_ms {timeout} must be between 10 and interval_ms ({interval})"),
            format!("a check must finish before the next one starts; e.g. timeout_ms = {}", interval.clamp(10, DEFAULT_CHECK_TIMEOUT_MS.max(10))),
        ));
    }
    for (count, what) in [(&health.rise, "rise"), (&health.fall, "fall")] {
        if !(1..=100).contains(count.get_ref()) {
            errors.push(at.error(
                count.span(),
                format!("service `{service}`: health {what} = {} is out of range", count.get_ref()),
                format!("use 1 to 100 consecutive checks (default rise {DEFAULT_RISE}, fall {DEFAULT_FALL})"),
            ));
        }
    }
    if let Some(port) = health.port.as_ref().filter(|p| *p.get_ref() == 0) {
        errors.push(at.error(
            port.span(),
            format!("service `{service}`: health port 0"),
            "remove `port` to check the backend's own port",
        ));
    }
    let is_http = matches!(kind, HealthKind::Http | HealthKind::Https);
    let http_only = [
        health.path.as_ref().map(|p| (p.span(), "path")),
        health.host.as_ref().map(|h| (h.span(), "host")),
        health
            .expect_status
            .as_ref()
            .map(|s| (s.span(), "expect_status")),
        health
            .expect_body
            .as_ref()
            .map(|b| (b.span(), "expect_body")),
    ];
    let mysql_only = [
        health.user.as_ref().map(|u| (u.span(), "user")),
        health.password.as_ref().map(|p| (p.span(), "password")),
        health
            .password_file
            .as_ref()
            .map(|p| (p.span(), "password_file")),
        health.role.as_ref().map(|r| (r.span(), "role")),
        health.max_lag_s.as_ref().map(|l| (l.span(), "max_lag_s")),
    ];
    let misplaced = http_only
        .into_iter()
        .flatten()
        .filter(|_| !is_http)
        .map(|(span, key)| (span, key, "http or https"))
        .chain(
            mysql_only
                .into_iter()
                .flatten()
                .filter(|_| kind != HealthKind::Mysql)
                .map(|(span, key)| (span, key, "mysql")),
        )
        .chain(
            health
                .tls_verify
                .as_ref()
                .filter(|_| kind != HealthKind::Https)
                .map(|v| (v.span(), "tls_verify", "https")),
        );
    for (span, key, kinds) in misplaced {
        errors.push(at.error(
            span,
            format!(
                "service `{service}`: health `{key}` only applies to kind = {kinds}, not {kind:?}"
            ),
            format!("remove `{key}`, or change `kind`"),
        ));
    }
    if let Some(path) = health
        .path
        .as_ref()
        .filter(|p| !p.get_ref().starts_with('/') || p.get_ref().contains(char::is_whitespace))
    {
        errors.push(at.error(
            path.span(),
            format!(
                "service `{service}`: health path `{}` is not a request path",
                path.get_ref()
            ),
            "start it with '/', no spaces, e.g. \"/healthz\"",
        ));
    }
    if let Some(status) = health
        .expect_status
        .as_ref()
        .filter(|s| !(100..=599).contains(s.get_ref()))
    {
        errors.push(at.error(
            status.span(),
            format!(
                "service `{service}`: expect_status {} is not an HTTP status",
                status.get_ref()
            ),
            "use 100 to 599, e.g. 200",
        ));
    }
    if kind == HealthKind::Mysql {
        if health.user.is_none() {
            errors.push(at.error(
                health.kind.span(),
                format!("service `{service}`: a mysql health check needs `user`"),
                "add user = \"lbcheck\" (an account allowed to log in from the load balancer)",
            ));
        }
        if let (Some(_), Some(file)) = (&health.password, &health.password_file) {
            errors.push(at.error(
                file.span(),
                format!("service `{service}`: both password and password_file are set"),
                "keep one of them (password_file keeps secrets out of the config)",
            ));
        }
        if let (Some(lag), Some(role)) = (&health.max_lag_s, &health.role) {
            if *role.get_ref() != MysqlRole::Replica {
                errors.push(at.error(
                    lag.span(),
                    format!("service `{service}`: max_lag_s only applies to role = \"replica\""),
                    "remove max_lag_s, or set role = \"replica\"",
                ));
            }
        }
    }
}
