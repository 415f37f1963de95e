//! Floods: spoofed packets against the flow tables, and slowloris against the HTTP servers.
use super::*;

/// A spoofed SYN, ACK and UDP flood of several times the flow tables' size (small tables,
/// `xtask/src/flow_flood.rs`), with keep-alive connections held through the VIP and new
/// connections made throughout. Its own lab.
pub(super) fn flow_flood(suite: &mut Suite) -> Result<Finding> {
    let options = if suite.quick {
        flow_flood::Options::quick()
    } else {
        flow_flood::Options::full()
    };
    let lab = Lab::up(LabSpec::standard(LAB_PREFIX))?;
    let outcome = flow_flood::start(&lab, &options).and_then(|_| flow_flood::run(&lab, &options));
    let outcome = outcome
        .map_err(|e| anyhow::anyhow!("{e:#}\nagent log:\n{}", tail(&lab.read_log("agent"), 30)));
    let down = lab.down();
    let report = outcome?;
    down?;
    let (acks, syns, udp) = (
        report.sent_of("ack"),
        report.sent_of("syn"),
        report.sent_of("udp"),
    );
    let no_flow = report.verdict("drop_no_flow");
    // Every ACK that reached the lb (the rest found its ring full) must be dropped as no flow.
    let acks_arrived = acks.saturating_sub(report.ring_full);
    let table = u64::from(options.flow_capacity.max(options.unverified_capacity));
    let value = json!({
        "flood_packets": report.flood_packets(),
        "flow_capacity": options.flow_capacity,
        "established_survived": report.established_survived,
        "legit_failed": report.legit_failed,
    });
    let detail = json!({
        "unverified_capacity": options.unverified_capacity,
        "sent": report.sent.iter().map(|s| json!({ "kind": s.kind, "packets": s.packets, "seconds": s.seconds, "generator": s.generator })).collect::<Vec<_>>(),
        "sources": format!(
            "random addresses of {o}/{b} (SYN, UDP) and {a}/{b} (ACK), random ports 1024-65535",
            o = flow_flood::SPOOF_OPENING,
            a = flow_flood::SPOOF_ACK,
            b = 32 - flow_flood::SPOOF_BITS
        ),
        "held_connections": report.held.iter().map(|(s, a, b)| json!({ "service": s, "before": a, "after": b })).collect::<Vec<_>>(),
        "legit_requests": report.legit_requests,
        "legit_failed_during_flood": report.legit_failed_during_flood,
        "legit_served_by": { "web1": report.legit_served_by[0].1, "web2": report.legit_served_by[1].1 },
        "first_failures": report.first_failures,
        "verdicts_delta": report.verdicts,
        "lb_ring_full_frames": report.ring_full,
        "legit_rate_per_s": options.legit_rate,
        "spoofed_flows_listed": {
            "unverified": report.spoofed_unverified_listed,
            "connections": report.spoofed_connections_listed,
        },
    });
    let pass = report.established_survived
        && report.legit_failed == 0
        && report.legit_requests > 0
        && syns >= 2 * table
        && acks >= 2 * table
        && udp >= 2 * table
        && no_flow >= acks_arrived
        && report.spoofed_unverified_listed > 0
        && report.spoofed_connections_listed == 0;
    Ok(Finding {
        value,
        detail,
        mark: if pass { Mark::Pass } else { Mark::Fail },
        summary: format!(
            "{} spoofed packets ({syns} SYN, {acks} ACK, {udp} UDP; tables of {} connections and {} unverified), \
             held connections survived: {} (bar true), legit failed {} of {} (bar 0), drop_no_flow {no_flow} (ACKs that reached the lb: {acks_arrived}), \
             spoofed flows listed: {} unverified, {} connections (bar 0)",
            report.flood_packets(),
            options.flow_capacity,
            options.unverified_capacity,
            report.established_survived,
            report.legit_failed,
            report.legit_requests,
            report.spoofed_unverified_listed,
            report.spoofed_connections_listed,
        ),
    })
}

/// Slowloris against lb-web (web1's port 80, from the client) and the agent's API (from the lb
/// host), two attacker processes each, while health checks run and new clients are served;
/// then the lab's secrets searched where they must never appear. Its own lab.
pub(super) fn hardening(suite: &mut Suite) -> Result<Finding> {
    let lab = Lab::up(LabSpec::standard(LAB_PREFIX))?;
    let outcome = hardening_on(suite, &lab);
    let down = lab.down();
    let finding = outcome?;
    down?;
    Ok(finding)
}

fn hardening_on(suite: &Suite, lab: &Lab) -> Result<Finding> {
    let token = random_token()?;
    stack::start_full_stack(lab, &token)?;
    let attack = hardening::Attack {
        connections: suite.sizes.slow_connections,
        rate: SLOW_RATE,
        seconds: suite.sizes.slow_seconds,
    };
    let outcome = hardening::slowloris_during_health_checks(lab, &attack)?;
    let (secret_hits, sources) = hardening::secrets_in_outputs(lab, &token)?;
    let (web_closed, api_closed) = (
        outcome.closed_by_server("lb-web"),
        outcome.closed_by_server("api"),
    );
    let opened = outcome.opened();
    let failed = outcome.probe_failures.len();
    let pass = outcome.health_checks_failed == 0
        && secret_hits.is_empty()
        && failed == 0
        && web_closed > 0
        && api_closed > 0;
    Ok(Finding {
        value: json!({
            "slow_connections": opened,
            "health_checks_failed": outcome.health_checks_failed,
            "secrets_found": secret_hits.len(),
        }),
        detail: json!({
            "attackers": outcome.attackers.iter().map(|a| json!({ "target": a.target, "log": a.log, "report": a.report.to_json() })).collect::<Vec<_>>(),
            "new_client_probes": outcome.probes,
            "new_client_failures": failed,
            "first_new_client_failures": outcome.probe_failures.iter().take(10).collect::<Vec<_>>(),
            "backends_not_active": outcome.backends_not_active,
            "failed_checks": outcome.failed_checks,
            "failure_details": outcome.failure_details,
            "secrets_found_in": secret_hits,
            "searched": sources,
        }),
        mark: if pass { Mark::Pass } else { Mark::Fail },
        summary: format!(
            "{opened} half-sent requests ({} per attacker at {SLOW_RATE}/s, 2 attackers each on lb-web and the API, {} s); \
             closed by the servers: lb-web {web_closed}, API {api_closed}; health checks failed {} (bar 0); \
             new clients failed {failed}/{} (bar 0); secrets found {} (bar 0)",
            attack.connections,
            attack.seconds,
            outcome.health_checks_failed,
            outcome.probes,
            secret_hits.len()
        ),
    })
}
