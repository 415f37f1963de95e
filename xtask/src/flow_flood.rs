//! A spoofed flood against the flow tables, over the lab: the agent with small flow tables
//! (`agent.flow_capacity`, `agent.unverified_capacity`), a TCP SYN flood, a TCP ACK flood and a
//! UDP flood from random addresses and ports of the client's subnet, each of several times the
//! tables' size, while keep-alive connections are held through the VIP (DSR and NAT) and a load
//! of new connections runs. Shared by `cargo xtask chaos` (`flow_flood`) and the test
//! `tests/tests/lab/e2e_flows.rs`.
//!
//! The flood is `lb-bench flood-gen` (the benchmarks' generator: an XDP program run by
//! BPF_PROG_TEST_RUN in live-frames mode, `xdp_tx_spoofed` drawing each frame's source address,
//! port and sequence number at random), sent from the lb's switch port so that it reaches the
//! lb's NIC as raw frames. Each kind is bounded in packets and in seconds.
use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use crate::{
    lab::{self, addr, host, Lab},
    load::{self, KeepAlive, Load, LoadOptions},
    stack::{self, AgentOptions},
    util,
};

/// The flood's UDP target: a DSR service on the VIP, so that every datagram opens an
/// unverified flow (nothing listens on the backends' port).
pub const UDP_PORT: u16 = 5353;
/// The flood's sources (no lab host lives there), every port from 1024: SYNs and datagrams
/// from `10.99.0.128/26`, ACKs from `10.99.0.192/26`, so that no spoofed ACK can complete a
/// spoofed SYN's handshake by chance (with one pool, a few of 8192 random ACKs did: they were
/// forwarded as connections instead of dropped).
pub const SPOOF_OPENING: &str = "10.99.0.128";
pub const SPOOF_ACK: &str = "10.99.0.192";
pub const SPOOF_BITS: u8 = 6;

#[derive(Debug, Clone)]
pub struct Options {
    /// `agent.flow_capacity` (connections) and `agent.unverified_capacity`.
    pub flow_capacity: u32,
    pub unverified_capacity: u32,
    /// Packets of each kind (SYN, ACK, UDP) = this many times the larger table.
    pub factor: u32,
    /// The rate of each kind's generator, packets per second.
    pub pps: u64,
    /// The legit load of new connections (one request each) to the VIP (DSR).
    pub legit_rate: u32,
    pub legit_workers: usize,
    /// Legit load before the flood starts, and after it ends.
    pub before: Duration,
    pub after: Duration,
}

impl Options {
    pub fn quick() -> Options {
        Options {
            flow_capacity: 4096,
            unverified_capacity: 4096,
            factor: 2,
            pps: 20_000,
            legit_rate: 100,
            legit_workers: 4,
            before: Duration::from_secs(1),
            after: Duration::from_secs(2),
        }
    }

    pub fn full() -> Options {
        Options {
            factor: 8,
            after: Duration::from_secs(5),
            ..Options::quick()
        }
    }

    /// Packets of each kind.
    pub fn per_kind(&self) -> u64 {
        u64::from(self.factor) * u64::from(self.flow_capacity.max(self.unverified_capacity))
    }
}

/// What one kind's generator sent.
#[derive(Debug, Clone)]
pub struct Sent {
    pub kind: &'static str,
    pub packets: u64,
    pub seconds: f64,
    /// The generator's own JSON line.
    pub generator: Value,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub options: Options,
    pub sent: Vec<Sent>,
    /// Both held connections answered after the flood, each from the backend it had before.
    pub established_survived: bool,
    /// (service, answer before, answer after or the error).
    pub held: Vec<(String, String, String)>,
    pub legit_requests: usize,
    pub legit_failed: usize,
    pub legit_failed_during_flood: usize,
    pub legit_served_by: [(String, usize); 2],
    pub first_failures: Vec<String>,
    /// How the data path's verdict counters grew over the flood (non-zero ones), from the
    /// agent's status API.
    pub verdicts: BTreeMap<String, u64>,
    /// `xdp_xmit_errors` of the generator's interface over the flood: frames that found the
    /// lb's receive ring full (they never reached the lb).
    pub ring_full: u64,
    /// Flows from the spoofed ranges the agent lists after the flood, by table
    /// (`GET /api/v1/flows?table=...`): all among the unverified flows, none a connection.
    pub spoofed_unverified_listed: usize,
    pub spoofed_connections_listed: usize,
}

impl Report {
    pub fn flood_packets(&self) -> u64 {
        self.sent.iter().map(|s| s.packets).sum()
    }

    pub fn sent_of(&self, kind: &str) -> u64 {
        self.sent
            .iter()
            .filter(|s| s.kind == kind)
            .map(|s| s.packets)
            .sum()
    }

    pub fn verdict(&self, name: &str) -> u64 {
        self.verdicts.get(name).copied().unwrap_or(0)
    }
}

/// The stack on an up lab, the agent with the small tables and the UDP service; its pid.
pub fn start(lab: &Lab, options: &Options) -> Result<u32> {
    let lb = stack::release_binary("lb")?;
    stack::start_web_servers(lab)?;
    stack::attach_peer_pass(lab, &lb)?;
    let config = config(lab, options)?;
    let agent = stack::start_agent(lab, &lb, &config)?;
    let url = format!("http://{}/", addr::VIP_HTTP);
    let up = util::wait_until(Duration::from_secs(10), Duration::from_millis(100), || {
        lab.exec(host::CLIENT, &["curl", "-sf", "-m", "1", &url])
            .is_ok()
    });
    if !up {
        bail!(
            "the VIP does not answer through the agent:\n{}",
            lab.read_log("agent")
        );
    }
    Ok(agent)
}

/// The UDP service the flood targets (`xtask/templates/lb/flood-udp.toml`).
fn udp_service() -> Result<String> {
    crate::template::fill(
        "lb/flood-udp.toml",
        include_str!("../templates/lb/flood-udp.toml"),
        &[
            ("vip", addr::VIP_HTTP),
            ("port", &UDP_PORT.to_string()),
            ("web1", addr::WEB1),
            ("web2", addr::WEB2),
        ],
    )
}

fn config(lab: &Lab, options: &Options) -> Result<PathBuf> {
    let agent_keys = format!(
        "flow_capacity = {}\nunverified_capacity = {}",
        options.flow_capacity, options.unverified_capacity
    );
    let udp = udp_service()?;
    stack::write_agent_config_extended(lab, &AgentOptions::default(), &agent_keys, &udp)
}

/// The data path's verdict counters (packets), from the agent's status API.
pub fn verdicts(lab: &Lab) -> Result<BTreeMap<String, u64>> {
    let status = load::api_json(&lab.ns(host::LB), stack::AGENT_API, "/api/v1/status")?;
    let list = status["verdicts"]
        .as_array()
        .with_context(|| format!("no verdicts in the status: {status}"))?;
    Ok(list
        .iter()
        .filter_map(|v| Some((v["verdict"].as_str()?.to_string(), v["packets"].as_u64()?)))
        .collect())
}

/// How many flows of `table` the agent lists from the spoofed sources ([`SPOOF_OPENING`] and
/// [`SPOOF_ACK`], each a /26), every page read.
pub fn spoofed_flows_listed(lab: &Lab, table: &str) -> Result<usize> {
    let mut listed = 0;
    let mut cursor: Option<String> = None;
    // The tables hold a few thousand flows: a bound, not a limit that is ever met.
    for _ in 0..1000 {
        let mut path = format!("/api/v1/flows?table={table}&limit=1000");
        if let Some(cursor) = &cursor {
            path.push_str(&format!("&cursor={cursor}"));
        }
        let page = load::api_json(&lab.ns(host::LB), stack::AGENT_API, &path)?;
        let flows = page["flows"]
            .as_array()
            .with_context(|| format!("no flows in GET {path}"))?;
        listed += flows
            .iter()
            .filter_map(|f| f["client"].as_str()?.parse::<std::net::SocketAddr>().ok())
            .filter(|client| match client.ip() {
                std::net::IpAddr::V4(ip) => [SPOOF_OPENING, SPOOF_ACK].iter().any(|first| {
                    let first: std::net::Ipv4Addr =
                        first.parse().unwrap_or(std::net::Ipv4Addr::UNSPECIFIED);
                    u32::from(ip) >> SPOOF_BITS == u32::from(first) >> SPOOF_BITS
                }),
                std::net::IpAddr::V6(_) => false,
            })
            .count();
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return Ok(listed),
        }
    }
    bail!("GET /api/v1/flows?table={table} did not end after 1000 pages")
}

/// `xdp_xmit_errors` of the lb's switch port (`ethtool -S`).
fn ring_full_count(lab: &Lab) -> u64 {
    let port = lab.switch_port(host::LB).1;
    lab.exec_stdout(lab::SWITCH, &["ethtool", "-S", &port])
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let (k, v) = l.trim().split_once(':')?;
                (k.trim() == "xdp_xmit_errors")
                    .then(|| v.trim().parse::<u64>().ok())
                    .flatten()
            })
        })
        .unwrap_or(0)
}

/// One kind of the flood: `lb-bench flood-gen` from the lb's switch port, bounded by its packet
/// count and by twice the time it should take (plus 5 s).
fn flood(lab: &Lab, options: &Options, kind: &'static str, port: u16) -> Result<Sent> {
    let exe = stack::release_binary("lb-bench")?;
    let packets = options.per_kind();
    let seconds = 5.0 + 2.0 * packets as f64 / options.pps.max(1) as f64;
    let lb_mac = lab.mac(host::LB)?;
    let (_, iface) = lab.switch_port(host::LB);
    let log = format!("flow-flood-{kind}");
    let args = [
        exe.display().to_string(),
        "flood-gen".into(),
        "--iface".into(),
        iface,
        "--dst-mac".into(),
        lb_mac.trim().to_string(),
        "--src".into(),
        if kind == "ack" {
            SPOOF_ACK
        } else {
            SPOOF_OPENING
        }
        .into(),
        "--spoof-bits".into(),
        SPOOF_BITS.to_string(),
        "--dst".into(),
        addr::VIP_HTTP.into(),
        "--dport".into(),
        port.to_string(),
        "--kind".into(),
        kind.into(),
        "--packets".into(),
        packets.to_string(),
        "--seconds".into(),
        seconds.to_string(),
        "--pps".into(),
        options.pps.to_string(),
    ];
    let pid = lab.spawn(lab::SWITCH, &args, &log)?;
    let done = util::wait_until(
        Duration::from_secs_f64(seconds + 5.0),
        Duration::from_millis(20),
        || !lab.is_running(pid),
    );
    if !done {
        let _ = lab.stop(pid);
        bail!("the {kind} flood generator did not stop in time");
    }
    let text = lab.read_log(&log);
    let generator = text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str::<Value>(l).ok())
        .with_context(|| format!("no result from the {kind} flood generator:\n{text}"))?;
    Ok(Sent {
        kind,
        packets: generator["packets"].as_u64().unwrap_or(0),
        seconds: generator["seconds"].as_f64().unwrap_or(0.0),
        generator,
    })
}

/// The whole scenario on a lab started by [`start`].
pub fn run(lab: &Lab, options: &Options) -> Result<Report> {
    let client = lab.ns(host::CLIENT);
    let timeout = Duration::from_secs(3);
    let vip = |port: u16| -> Result<std::net::SocketAddr> {
        format!("{}:{port}", addr::VIP_HTTP)
            .parse()
            .context("the lab's VIP")
    };
    let mut held = Vec::new();
    for (name, port) in [("web-dsr", 80), ("web-nat", stack::NAT_PORT)] {
        let mut conn = KeepAlive::connect(&client, vip(port)?, addr::VIP_HTTP, timeout)
            .with_context(|| format!("opening the held connection to {name}"))?;
        let first = conn
            .get()
            .with_context(|| format!("the held connection to {name}, before the flood"))?;
        held.push((name, conn, first));
    }
    let before = verdicts(lab)?;
    let ring_before = ring_full_count(lab);
    let load = Load::start(&LoadOptions {
        netns: client.clone(),
        target: vip(80)?,
        host: addr::VIP_HTTP.to_string(),
        workers: options.legit_workers,
        rate: options.legit_rate,
        timeout: Duration::from_secs(2),
    })?;
    std::thread::sleep(options.before);
    let flood_start = load.started().elapsed();
    let mut sent = Vec::new();
    let mut outcome = Ok(());
    for (kind, port) in [("syn", 80), ("ack", 80), ("udp", UDP_PORT)] {
        match flood(lab, options, kind, port) {
            Ok(s) => sent.push(s),
            Err(e) => {
                outcome = Err(e);
                break;
            }
        }
    }
    let flood_end = load.started().elapsed();
    std::thread::sleep(options.after);
    let report = load.finish()?;
    outcome?;
    let ring_full = ring_full_count(lab).saturating_sub(ring_before);
    let after = verdicts(lab)?;
    let mut grown = BTreeMap::new();
    for (name, count) in &after {
        let delta = count.saturating_sub(before.get(name).copied().unwrap_or(0));
        if delta > 0 {
            grown.insert(name.clone(), delta);
        }
    }
    let spoofed_unverified_listed = spoofed_flows_listed(lab, "unverified")?;
    let spoofed_connections_listed = spoofed_flows_listed(lab, "connections")?;
    let mut answers = Vec::new();
    let mut survived = true;
    for (name, mut conn, first) in held {
        let now = match conn.get() {
            Ok(body) => body,
            Err(e) => format!("error: {e}"),
        };
        survived &= now == first;
        answers.push((name.to_string(), first, now));
    }
    let during = report
        .samples
        .iter()
        .filter(|s| s.failed() && s.started >= flood_start && s.started <= flood_end)
        .count();
    Ok(Report {
        options: options.clone(),
        sent,
        established_survived: survived,
        held: answers,
        legit_requests: report.requests(),
        legit_failed: report.failed(),
        legit_failed_during_flood: during,
        legit_served_by: [
            ("web1".into(), report.served_by("web1")),
            ("web2".into(), report.served_by("web2")),
        ],
        first_failures: report.first_failures(5),
        verdicts: grown,
        ring_full,
        spoofed_unverified_listed,
        spoofed_connections_listed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_udp_service_fills_its_template() {
        let text = udp_service().expect("renders");
        assert!(text.contains(&format!(
            "name = \"flood-udp\"\nvip = \"{}\"\nport = {UDP_PORT}\nprotocol = \"udp\"\nmode = \"dsr\"\n",
            addr::VIP_HTTP
        )));
        assert!(text.contains(&format!("address = \"{}\"\n", addr::WEB2)));
    }
}
