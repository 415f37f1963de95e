//! What the CLI prints for people: tables of status, services, backends, flows and rules.
use std::net::SocketAddr;

use super::*;

pub(super) fn print_or(json: bool, raw: &str, table: impl FnOnce()) {
    if json {
        match serde_json::from_str::<serde_json::Value>(raw)
            .and_then(|v| serde_json::to_string_pretty(&v))
        {
            Ok(pretty) => println!("{pretty}"),
            Err(_) => println!("{raw}"),
        }
    } else {
        table();
    }
}

pub(super) fn print_rules(list: &FirewallRules) {
    let rows: Vec<Vec<String>> = list
        .rules
        .iter()
        .map(|r| {
            let mut prefixes = r
                .prefixes
                .iter()
                .take(3)
                .cloned()
                .collect::<Vec<_>>()
                .join(",");
            if r.prefixes.len() > 3 {
                prefixes.push_str(&format!(",+{}", r.prefixes.len() - 3));
            }
            let last = r
                .last_hit_s_ago
                .map_or("never".to_string(), |s| format!("{s:.1}s ago"));
            let name = if r.runtime {
                format!("{} (runtime)", r.name)
            } else {
                r.name.clone()
            };
            vec![
                r.id.to_string(),
                name,
                r.action.clone(),
                prefixes,
                r.packets.to_string(),
                r.bytes.to_string(),
                last,
            ]
        })
        .collect();
    print_table(
        &[
            "ID", "RULE", "ACTION", "SOURCES", "PACKETS", "BYTES", "LAST HIT",
        ],
        &rows,
    );
    let drops: Vec<String> = list
        .drops
        .iter()
        .filter(|d| d.packets > 0)
        .map(|d| format!("{} {}", d.verdict, d.packets))
        .collect();
    println!(
        "\ndrops: {}",
        if drops.is_empty() {
            "none".to_string()
        } else {
            drops.join(", ")
        }
    );
}

/// Prints rows under a header, each column as wide as its widest cell.
pub(super) fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  ", width = widths[i]));
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        line(row.clone());
    }
}

pub(super) fn duration(seconds: u64) -> String {
    match seconds {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m {}s", s / 60, s % 60),
        s if s < 86400 => format!("{}h {}m", s / 3600, (s % 3600) / 60),
        s => format!("{}d {}h", s / 86400, (s % 86400) / 3600),
    }
}

/// The maps' kernel memory: the total against the budget, then each map, largest first.
pub fn print_map_memory(memory: &crate::sizing::MemoryReport) {
    use crate::sizing::mib;
    println!(
        "memory    {} of kernel memory in {} maps (budget {})",
        mib(memory.total_bytes),
        memory.maps.len(),
        mib(memory.budget_bytes)
    );
    for map in &memory.maps {
        let resize = map
            .wanted_entries
            .map(|w| format!("  (config wants {w}: a clean stop and start resizes it)"))
            .unwrap_or_default();
        println!(
            "  {:<17} {:>10}  {:>9} entries{resize}",
            map.name,
            mib(map.bytes),
            map.max_entries
        );
    }
}

pub(super) fn print_status(status: &Status) {
    let attach = match status.attach.as_str() {
        "native" => "native XDP",
        "generic" => "generic XDP",
        "generic_fallback" => "generic XDP (native refused by the driver)",
        "replaced_pinned" => "XDP, program swapped into the pinned link",
        other => other,
    };
    println!(
        "lb {} running on {} ({attach}), pid {}, up {}",
        status.version,
        status.interface,
        status.pid,
        duration(status.uptime_s)
    );
    println!(
        "pins      {}{}",
        status.pin_path,
        if status.adopted {
            " (maps and flows adopted from the previous agent)"
        } else {
            ""
        }
    );
    let reload = match &status.last_reload {
        None => String::new(),
        Some(r) if r.ok => format!(", last: ok: {}", r.message),
        Some(r) => format!(
            ", last: REFUSED: {}",
            r.message.lines().next().unwrap_or_default()
        ),
    };
    println!(
        "config    {} (reloads {}{reload})",
        status.config_path, status.reloads
    );
    println!(
        "api       http://{} (writes {})",
        status.api_bind,
        if status.writes_enabled {
            "need the token"
        } else {
            "disabled: no api.token_file"
        }
    );
    let b = &status.backends;
    println!(
        "services  {}; backends {}: {} active, {} draining, {} down",
        status.services, b.total, b.active, b.draining, b.down
    );
    let t = &status.traffic;
    println!(
        "traffic   {} packets, {} bytes, {} new flows, {} dropped",
        t.packets, t.bytes, t.new_flows, t.dropped_packets
    );
    let seen: Vec<String> = status
        .verdicts
        .iter()
        .filter(|v| v.packets > 0)
        .map(|v| format!("{} {}", v.verdict, v.packets))
        .collect();
    if !seen.is_empty() {
        println!("verdicts  {}", seen.join(", "));
    }
    if let Some(memory) = &status.map_memory {
        print_map_memory(memory);
    }
    if !status.host_addresses.is_empty() {
        println!("host      {}", status.host_addresses.join(", "));
    }
    for nat in &status.nat {
        let p = &nat.ports;
        let in_use = match (p.in_use, p.complete) {
            (None, _) => "not counted yet".to_string(),
            (Some(n), true) => n.to_string(),
            (Some(n), false) => format!("at least {n}"),
        };
        println!(
            "nat       {}: ports in use {in_use} of {} (from {}); {} new flows dropped, ports exhausted",
            nat.service,
            p.available,
            p.snat_addresses.join(", "),
            p.exhausted_drops
        );
    }
    if let Some(db) = &status.database {
        let failover = match &db.last_failover {
            Some(f) => format!(
                "; last failover {} -> {} in {} ms{}",
                f.from,
                f.to,
                f.duration_ms,
                if f.forced {
                    " (forced by an operator)"
                } else {
                    ""
                }
            ),
            None => String::new(),
        };
        println!(
            "database  primary {}, writes to {}, reads from {}; {} failovers{failover}",
            db.primary.as_deref().unwrap_or("none"),
            db.write.as_deref().unwrap_or("nobody"),
            if db.read.is_empty() {
                "nobody".to_string()
            } else {
                db.read.join(", ")
            },
            db.failovers
        );
        println!("          failover policy: {}", db.failover_policy);
        if let Some(why) = &db.failover_blocked {
            println!("          NO WRITABLE PRIMARY: {why}");
        }
        if let Some(e) = &db.memory_error {
            println!("          the watch cannot save its memory: {e}");
        }
        for node in &db.nodes {
            let role = serde_json::to_value(node.role)
                .ok()
                .and_then(|v| v.as_str().map(str::to_string))
                .unwrap_or_default();
            let lag = node
                .lag_s
                .map(|l| format!(", lag {l} s"))
                .unwrap_or_default();
            let gtid = node
                .gtid
                .as_deref()
                .map(|g| format!(", gtid {g}"))
                .unwrap_or_default();
            let error = node
                .error
                .as_deref()
                .map(|e| format!(" ({e})"))
                .unwrap_or_default();
            println!(
                "  {:<8} {:<22} {role}{lag}{gtid}{error}",
                node.name, node.address
            );
        }
    }
}

pub(super) fn print_services(services: &[ServiceInfo]) {
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                s.vip.parse().map_or_else(
                    |_| format!("{}:{}", s.vip, s.port),
                    |ip| SocketAddr::new(ip, s.port).to_string(),
                ),
                s.protocol.clone(),
                s.mode.clone(),
                s.health_check.clone().unwrap_or_else(|| "-".into()),
                format!("{}/{}", s.in_rotation, s.backends),
                s.packets.to_string(),
                s.bytes.to_string(),
                s.new_flows.to_string(),
            ]
        })
        .collect();
    print_table(
        &[
            "SERVICE",
            "VIP",
            "PROTO",
            "MODE",
            "CHECK",
            "IN ROTATION",
            "PACKETS",
            "BYTES",
            "FLOWS",
        ],
        &rows,
    );
}

pub(super) fn print_backends(lists: &[BackendList]) {
    let mut rows = Vec::new();
    for list in lists {
        for b in &list.backends {
            let health = match &b.health {
                None => "-".to_string(),
                Some(h) => {
                    let verdict = if h.up { "up" } else { "DOWN" };
                    let latency = h
                        .last_latency_ms
                        .map(|ms| format!(", {ms:.1} ms"))
                        .unwrap_or_default();
                    format!(
                        "{verdict} ({}: {}{latency})",
                        h.kind,
                        h.last_detail
                            .clone()
                            .unwrap_or_else(|| "not checked yet".into())
                    )
                }
            };
            rows.push(vec![
                list.service.clone(),
                b.name.clone(),
                b.address.clone(),
                b.port.to_string(),
                b.weight.to_string(),
                b.state.clone(),
                b.admin.clone(),
                b.packets.to_string(),
                b.new_flows.to_string(),
                health,
            ]);
        }
    }
    print_table(
        &[
            "SERVICE", "BACKEND", "ADDRESS", "PORT", "WEIGHT", "STATE", "ADMIN", "PACKETS",
            "FLOWS", "HEALTH",
        ],
        &rows,
    );
}

pub(super) fn print_flows(page: &FlowPage, limit: usize, unverified: bool) {
    let rows: Vec<Vec<String>> = page
        .flows
        .iter()
        .map(|f| {
            vec![
                f.client.clone(),
                f.vip.clone(),
                f.protocol.clone(),
                f.service.clone().unwrap_or_else(|| "?".into()),
                f.backend.clone().unwrap_or_else(|| "(gone)".into()),
                f.nat_port.map_or_else(|| "-".into(), |p| p.to_string()),
                f.state.clone(),
                format!("{} s", f.idle_seconds),
            ]
        })
        .collect();
    print_table(
        &[
            "CLIENT", "VIP", "PROTO", "SERVICE", "BACKEND", "NAT PORT", "STATE", "IDLE",
        ],
        &rows,
    );
    let table = if unverified { " --unverified" } else { "" };
    match &page.next_cursor {
        Some(cursor) => println!("(more: lb flows{table} --limit {limit} --cursor {cursor})"),
        None => println!("({} flows, end of table)", page.flows.len()),
    }
}
