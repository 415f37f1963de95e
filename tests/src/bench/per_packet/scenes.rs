//! The scenes the cases run on: the harness with DSR and NAT services, the frames, the firewall with random prefixes.
use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};
use aya::programs::Xdp;
use lb_tests::{
    harness::{two_web_backends, BackendSpec, ConfigHarness, Harness, WEB1_MAC, WEB2_MAC, XDP_TX},
    packet::{Frame, L4, TCP_ACK, TCP_SYN},
};
use lb_userspace::{
    config::{Mode, Protocol},
    dataplane::LoadOptions,
    firewall,
};

use super::*;

pub(super) const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub(super) const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];

pub(super) const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
pub(super) const DSR_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
pub(super) const NAT_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 101);
pub(super) const SNAT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
pub(super) const WEB1: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);
pub(super) const WEB2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 12);
/// An address that is no service (passthrough).
pub(super) const ELSEWHERE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 50);
/// New flows come from 10.1.0.0, 10.1.0.1, ... with source ports 10000..59999.
pub(super) const NEW_FLOW_BASE: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 0);
pub(super) const PORTS_PER_ADDR: u32 = 50_000;
pub(super) const NAT_PORTS: (u16, u16) = (20_000, 29_999);
/// The fixed-point NAT service: VIP 10.0.0.102:80 whose only backend is 10.0.0.102:80 itself,
/// SNAT address = the client, NAT ports = [the client's port]: the rewrite of C:Q -> A:P is
/// C:Q -> A:P again, and so is the rewrite of the reply A:P -> C:Q.
pub(super) const LOOP_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 102);
pub(super) const LOOP_CLIENT_PORT: u16 = 40_000;

/// A program of its own with a flow table of `flow_capacity` and one DSR service, the VIP's
/// port 80 on web1 and web2: for the cases that fill the flow table.
pub(super) fn dsr_scene(flow_capacity: u32) -> Harness {
    // New flows live among the unverified ones until their ACK: the same room for both.
    let mut h = Harness::with_options(&LoadOptions {
        flow_capacity,
        unverified_capacity: flow_capacity,
        ..LoadOptions::default()
    });
    add_dsr_service(&mut h);
    h
}

/// The DSR service every scene measures: `DSR_VIP`:80 on web1 and web2.
pub(super) fn add_dsr_service(h: &mut Harness) {
    h.add_service(
        "dsr",
        (IpAddr::V4(DSR_VIP), 80),
        Protocol::Tcp,
        Mode::Dsr,
        None,
        &two_backends(80),
    );
}

pub(super) fn two_backends(port: u16) -> [BackendSpec; 2] {
    two_web_backends(IpAddr::V4(WEB1), IpAddr::V4(WEB2), port)
}

/// A TCP frame from the client's MAC to the load balancer's; 74 bytes (20-byte payload).
pub(super) fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Frame {
    let mut frame =
        Frame::tcp((IpAddr::V4(src.0), src.1), (IpAddr::V4(dst.0), dst.1)).macs(CLIENT_MAC, LB_MAC);
    if let L4::Tcp { flags: f, ack, .. } = &mut frame.l4 {
        *f = flags;
        if flags & TCP_ACK != 0 {
            *ack = 1;
        }
    }
    frame
}

pub(super) fn new_flow_frame(i: u64) -> Vec<u8> {
    flow_frame(i, TCP_SYN)
}

/// Flow `i` of the new-flow frames, with these TCP flags.
pub(super) fn flow_frame(i: u64, flags: u8) -> Vec<u8> {
    let i = i as u32;
    let src = Ipv4Addr::from(u32::from(NEW_FLOW_BASE) + i / PORTS_PER_ADDR);
    let port = 10_000 + (i % PORTS_PER_ADDR) as u16;
    tcp((src, port), (DSR_VIP, 80), flags).build()
}

/// Opens connection `i` of the new-flow frames: its SYN, then the ACK that completes the
/// handshake as the load balancer sees it (two forwards, not timed).
pub(super) fn open_flow(program: &Xdp, i: u64, out: &mut [u8]) -> Result<()> {
    for flags in [TCP_SYN, TCP_ACK] {
        let r = test_run(program, &flow_frame(i, flags), out, 1)?;
        if r.ret != XDP_TX {
            bail!(
                "opening connection {i} (flags {flags:#x}) returned {}",
                action_name(r.ret)
            );
        }
    }
    Ok(())
}

/// Opens the connection an ACK frame belongs to: the same frame as a SYN first (untimed; the
/// program reads no checksum, so flipping the flags byte is enough).
pub(super) fn open_connection(h: &Harness, ack_frame: &[u8], what: &str) -> Result<()> {
    // Ethernet, a 20-byte IPv4 header, then the TCP flags at byte 13.
    pub(super) const TCP_FLAGS_AT: usize = 14 + 20 + 13;
    let mut syn = ack_frame.to_vec();
    if syn.get(TCP_FLAGS_AT) != Some(&TCP_ACK) {
        bail!("{what}: not a plain IPv4 TCP ACK frame");
    }
    syn[TCP_FLAGS_AT] = TCP_SYN;
    setup_run(h, &syn, XDP_TX, None, &format!("{what} (its SYN)")).map(|_| ())
}

// ---------------------------------------------------------------------------------------
// The firewall scenes: the DSR service above, programmed from an agent config whose firewall
// has one drop rule with N random prefixes, the way `lb run` programs it (ConfigHarness).

/// The load balancer's own address in the firewall scenes (the host policy needs one).
pub(super) const LB_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub(super) const FW_RULE: &str = "deny-random";
pub(super) const FW_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// `n` distinct random IPv4 prefixes, /16 to /32, from a fixed seed (the same set every run).
/// None lies in 10.0.0.0/8 (the scene's own addresses, so the client matches none), 0/8,
/// 127/8 or 224/3.
pub(super) fn random_prefixes(n: u32, seed: u64) -> Vec<(Ipv4Addr, u8)> {
    let mut state = seed;
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(n as usize);
    while out.len() < n as usize {
        // xorshift64
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let len = 16 + (state % 17) as u8;
        let addr = (state >> 32) as u32 & (u32::MAX << (32 - u32::from(len)));
        if matches!(addr >> 24, 0 | 10 | 127) || addr >> 24 >= 224 {
            continue;
        }
        if seen.insert((addr, len)) {
            out.push((Ipv4Addr::from(addr), len));
        }
    }
    out
}

/// An address inside the prefix (host bits from a fixed pattern).
pub(super) fn inside(prefix: (Ipv4Addr, u8)) -> Ipv4Addr {
    let host = if prefix.1 == 32 {
        0
    } else {
        0x5a5a_5a5a & (u32::MAX >> prefix.1)
    };
    Ipv4Addr::from(u32::from(prefix.0) | host)
}

pub(super) struct FwScene {
    pub(super) h: ConfigHarness,
    /// An address inside one of the prefixes (the denied source).
    pub(super) denied: Ipv4Addr,
    pub(super) prefixes: usize,
    /// Time to parse the config text and program it (services, then the rule set) from scratch.
    pub(super) build_ms: f64,
    /// Time of one more `firewall::apply` of the same rule set (write the idle generation,
    /// switch, clear the old one): what a rule change costs at this size.
    pub(super) apply_ms: f64,
}

pub(super) fn fw_scene(n: u32) -> Result<FwScene> {
    let prefixes = random_prefixes(n, FW_SEED);
    let mut sources = String::with_capacity(prefixes.len() * 22);
    for (i, (addr, len)) in prefixes.iter().enumerate() {
        if i > 0 {
            sources.push_str(", ");
        }
        sources.push_str(&format!("\"{addr}/{len}\""));
    }
    let toml = format!(
        r#"
[api]

[[firewall.rule]]
name = "{FW_RULE}"
sources = [{sources}]
action = "drop"

[[service]]
name = "dsr"
vip = "{DSR_VIP}"
port = 80
mode = "dsr"

[[service.backend]]
name = "web1"
address = "{WEB1}"

[[service.backend]]
name = "web2"
address = "{WEB2}"
"#
    );
    let macs = [(IpAddr::V4(WEB1), WEB1_MAC), (IpAddr::V4(WEB2), WEB2_MAC)];
    let started = Instant::now();
    let mut h = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        ConfigHarness::new(&toml, &macs, &[IpAddr::V4(LB_ADDR)])
    }))
    .map_err(|_| {
        anyhow::anyhow!(
            "programming the firewall scene with {n} prefixes failed (see the panic above)"
        )
    })?;
    let build_ms = started.elapsed().as_secs_f64() * 1e3;
    let vips = [IpAddr::V4(DSR_VIP)];
    let hosts = [IpAddr::V4(LB_ADDR), IpAddr::V4(DSR_VIP)];
    let started = Instant::now();
    firewall::apply(&mut h.harness.dataplane, &h.rules, &hosts, &vips)
        .context("re-applying the rule set")?;
    let apply_ms = started.elapsed().as_secs_f64() * 1e3;
    let denied = inside(prefixes[prefixes.len() / 2]);
    Ok(FwScene {
        h,
        denied,
        prefixes: prefixes.len(),
        build_ms,
        apply_ms,
    })
}

pub(super) fn fw_note(scene: &FwScene) -> String {
    format!(
        "firewall on, programmed from an agent config by ConfigHarness as `lb run` does: one drop rule `{FW_RULE}` \
         with {} distinct random IPv4 prefixes /16../32 (fixed seed; none in 10.0.0.0/8), host policy `restrict` \
         (the default; host address {LB_ADDR}), fragment and TCP-flag checks on (defaults); same DSR service and \
         frame size as lb_established. Programming the config took {:.0} ms; one more firewall::apply of the \
         same rule set took {:.0} ms",
        scene.prefixes, scene.build_ms, scene.apply_ms
    )
}

// ---------------------------------------------------------------------------------------
// Measurement.
