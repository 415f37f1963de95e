//! Per-packet cost of the XDP program, and of two references (a trivial XDP_PASS program, the
//! floor; xdp-filter), through BPF_PROG_TEST_RUN: the kernel times the runs itself and reports
//! the average per repeat, in whole nanoseconds.
//!
//! Two ways to measure:
//! - **repeat**: per round, one BPF_PROG_TEST_RUN call with `repeat = total / ROUNDS`. The
//!   kernel runs the program `repeat` times on ONE buffer and does not reset it between
//!   repeats: every repeat after the first sees the frame as the previous one left it. Fine when
//!   the rewrite leaves the packet on the same path: DSR only swaps MACs, XDP_PASS touches
//!   nothing. A NAT rewrite would send repeat 2 down another path, so the NAT cases run on a
//!   *fixed-point* service whose rewrite gives back the same addresses and ports (backend =
//!   the VIP itself, SNAT address = the client, NAT port range = the client's port): the same
//!   instructions (lookups, rewrite, checksum updates) on a frame that stays in its flow.
//! - **per call**: many calls with `repeat = 1`, for `lb_new_flow` (a distinct frame per
//!   packet) and as cross-checks. One call's figure includes the fixed cost of the timer
//!   around one run, so each call of the program is paired with a call of the trivial program on
//!   the same frame: `case = mean(program, repeat 1) - mean(xdp_pass, repeat 1) + floor`.
//!   Each call also starts cold (caches, branch predictors after the syscall), so this method
//!   reads higher than the repeat one; the per-call cross-checks measure by how much.
//!
//! Rounds of all cases are interleaved (A1 B1 C1 ... A2 B2 ...) so that drift hits them alike;
//! the figure is the median of the rounds. After the rounds, the program's verdict counters
//! (VERDICT_STATS) must have grown by exactly the number of timed runs of each path: proof that
//! every repeat took the path its case names.
use std::{net::IpAddr, time::Instant};

use anyhow::{bail, Context as _, Result};
use lb_common::maps::Verdict;
use lb_tests::{
    harness::{BackendSpec, ConfigHarness, Harness, WEB1_MAC, XDP_DROP, XDP_PASS, XDP_TX},
    packet::{l4_ports, TCP_ACK},
};
use lb_userspace::config::{Mode, Protocol};
use serde_json::{json, Value};

use super::xdp_filter::XdpFilter;

mod measure;
use self::measure::*;
pub use self::measure::{action_name, round1};

mod scenes;
use self::scenes::*;

/// Many short rounds rather than a few long ones: this VM's speed drifts within a tenth of a
/// second (xdp-filter read 54-84 ns across five 12 ms rounds of one run), so cases measured
/// side by side in short rounds compare better, and a median of 21 shrugs off slow rounds.
pub const ROUNDS: u32 = 21;

/// The keys of `per_packet_ns` (docs/BENCHMARKS.md, "Per-packet cost"), in report order.
pub const KEYS: [&str; 9] = [
    "floor",
    "xdp_filter",
    "lb_established",
    "lb_new_flow",
    "nat_forward",
    "nat_reply",
    "passthrough",
    "fw_drop",
    "fw_pass_10k_prefixes",
];

/// Extra cases, reported only inside the detail of the case they check: the same path measured
/// per call (and, for NAT, with the ordinary addresses of tests/tests/kernel/xdp_program.rs).
const CROSS_CHECKS: [(&str, &str); 3] = [
    ("lb_established_per_call", "lb_established"),
    ("nat_forward_per_call", "nat_forward"),
    ("nat_reply_per_call", "nat_reply"),
];

/// Established flows met in turn, more than a CPU's flow cache holds: each packet finds another
/// flow's copy in its slot and goes on to the flow table. Reported in `lb_established`'s detail.
const CACHE_MISS_CASE: &str = "lb_established_flow_cache_miss_per_call";
const CACHE_MISS_FLOWS: u32 = 1 << 16;
const _: () = assert!(CACHE_MISS_FLOWS >= 4 * lb_common::FLOW_CACHE_SLOTS);

/// The lb cases run with the firewall switched off, as the harness loads the program.
const FIREWALL_OFF: &str = "the program's firewall is switched off here (no firewall settings or rules written): \
                            its cost in this figure is reading the switches; the same holds for every lb case";

/// Scale points, reported in `per_packet_detail.scale`, measured in the same
/// interleaved rounds as the cases.
const SCALE_CASES: [&str; 2] = ["lb_established_100k_prefixes", "lb_established_1m_flows"];

#[derive(Clone, Debug)]
pub struct Config {
    pub quick: bool,
    /// Total repeats of each repeat-method case (split over the rounds).
    pub repeats: u32,
    /// Total calls of each per-call cross-check (established DSR, NAT forward, NAT reply).
    pub calls: u32,
    /// New flows (distinct frames) for `lb_new_flow`: one call each.
    pub new_flows: u32,
    /// Flow table size of the program measured for `lb_new_flow`.
    pub flow_capacity: u32,
    /// Drop-rule prefixes loaded for `fw_drop` and `fw_pass_10k_prefixes`.
    pub fw_prefixes: u32,
    /// Prefixes loaded for the scale point `lb_established_100k_prefixes` (0: skip it).
    pub fw_prefixes_scale: u32,
    /// Flows put in the flow table before `lb_established_1m_flows` is measured (0: skip it).
    pub prefill_flows: u32,
}

impl Config {
    pub fn new(quick: bool) -> Self {
        Config {
            quick,
            repeats: if quick { 1_000_000 } else { 5_000_000 },
            calls: if quick { 200_000 } else { 1_000_000 },
            new_flows: if quick { 200_000 } else { 1_000_000 },
            flow_capacity: lb_common::DEFAULT_FLOW_CAPACITY,
            fw_prefixes: 10_000,
            fw_prefixes_scale: 100_000,
            prefill_flows: 1_000_000,
        }
    }
}

/// One `per_packet_ns` entry and its detail.
pub struct Outcome {
    pub key: &'static str,
    pub ns: Option<f64>,
    pub return_value: Option<u32>,
    pub detail: Value,
}

pub struct PerPacket {
    pub outcomes: Vec<Outcome>,
    pub frame_len: usize,
    pub settings: Value,
    /// Scale points (`per_packet_detail.scale`): keyed by case, each a case detail.
    pub scale: Value,
}

// ---------------------------------------------------------------------------------------
// The scene: addresses, services, frames (as in tests/tests/kernel/xdp_program.rs).

/// Runs one frame through a harness (setup, not timed) and insists on the verdict and frame.
fn setup_run(
    h: &Harness,
    frame: &[u8],
    want: u32,
    expected: Option<&[u8]>,
    what: &str,
) -> Result<Vec<u8>> {
    let (action, out) = h.run(frame);
    if action != want {
        bail!(
            "{what}: returned {} ({action}), expected {}",
            action_name(action),
            action_name(want)
        );
    }
    if let Some(expected) = expected {
        if out != expected {
            bail!("{what}: the program's output frame is not the expected one");
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------

pub fn run(cfg: &Config) -> Result<PerPacket> {
    if cfg.new_flows >= cfg.flow_capacity {
        bail!(
            "{} new flows do not fit a flow table of {} (the LRU would evict): use fewer or a larger table",
            cfg.new_flows,
            cfg.flow_capacity
        );
    }
    let per_round = |total: u32| (total / ROUNDS).max(1);
    let mut expected_counts = Tally::default();

    // The main scene: a DSR service, a NAT service (addresses as in the tests), and an address
    // that is neither.
    // No scene tells the program its MAC (`Harness::set_own_mac`): a repeated run works on the
    // frame the previous run rewrote, whose destination is then the backend's MAC, which an
    // armed check would pass up. The check still reads `own_mac` and finds it unset.
    let mut main = Harness::new();
    add_dsr_service(&mut main);
    main.add_service(
        "nat",
        (IpAddr::V4(NAT_VIP), 80),
        Protocol::Tcp,
        Mode::Nat,
        Some(IpAddr::V4(SNAT)),
        &two_backends(8080),
    );
    main.set_nat_ports(NAT_PORTS.0, NAT_PORTS.1);
    // New flows get a scene of their own, so the flows they add leave the other tables alone.
    let newflows = dsr_scene(cfg.flow_capacity);
    // The fixed-point NAT service (see LOOP_VIP).
    let mut natloop = Harness::new();
    let itself = [BackendSpec {
        name: "itself",
        addr: IpAddr::V4(LOOP_VIP),
        port: 80,
        mac: WEB1_MAC,
        weight: 1,
    }];
    natloop.add_service(
        "natloop",
        (IpAddr::V4(LOOP_VIP), 80),
        Protocol::Tcp,
        Mode::Nat,
        Some(IpAddr::V4(CLIENT)),
        &itself,
    );
    natloop.set_nat_ports(LOOP_CLIENT_PORT, LOOP_CLIENT_PORT);

    // Established DSR flow: its first packet (not timed) creates the flow.
    let dsr = tcp((CLIENT, 40_000), (DSR_VIP, 80), TCP_ACK);
    let dsr_frame = dsr.build();
    open_connection(&main, &dsr_frame, "DSR setup packet")?;
    expected_counts.add((Scene::Main, Verdict::ForwardDsr), 1);
    setup_run(
        &main,
        &dsr_frame,
        XDP_TX,
        Some(&dsr.clone().macs(LB_MAC, WEB1_MAC).build()),
        "DSR setup packet",
    )?;
    expected_counts.add((Scene::Main, Verdict::ForwardDsr), 1);

    // Established NAT flow (ordinary addresses), then the backend's reply to the NAT port it got.
    let nat = tcp((CLIENT, 40_000), (NAT_VIP, 80), TCP_ACK);
    let nat_frame = nat.build();
    open_connection(&main, &nat_frame, "NAT setup packet")?;
    expected_counts.add((Scene::Main, Verdict::ForwardNat), 1);
    let out = setup_run(&main, &nat_frame, XDP_TX, None, "NAT setup packet")?;
    expected_counts.add((Scene::Main, Verdict::ForwardNat), 1);
    let (nat_port, _) = l4_ports(&out);
    let forward = nat
        .with_endpoints((IpAddr::V4(SNAT), nat_port), (IpAddr::V4(WEB1), 8080))
        .macs(LB_MAC, WEB1_MAC);
    if out != forward.build() {
        bail!("NAT setup packet: the program's output frame is not the expected one");
    }
    let reply = forward
        .with_endpoints((IpAddr::V4(WEB1), 8080), (IpAddr::V4(SNAT), nat_port))
        .macs(WEB1_MAC, LB_MAC);
    let reply_frame = reply.build();
    let to_client = reply
        .with_endpoints((IpAddr::V4(NAT_VIP), 80), (IpAddr::V4(CLIENT), 40_000))
        .macs(LB_MAC, CLIENT_MAC);
    setup_run(
        &main,
        &reply_frame,
        XDP_TX,
        Some(&to_client.build()),
        "NAT reply setup packet",
    )?;
    expected_counts.add((Scene::Main, Verdict::NatReply), 1);

    // The fixed-point NAT flow: forward and reply come out with the same addresses and ports.
    let loop_forward = tcp((CLIENT, LOOP_CLIENT_PORT), (LOOP_VIP, 80), TCP_ACK);
    let loop_forward_frame = loop_forward.build();
    open_connection(
        &natloop,
        &loop_forward_frame,
        "fixed-point NAT setup packet",
    )?;
    expected_counts.add((Scene::NatLoop, Verdict::ForwardNat), 1);
    setup_run(
        &natloop,
        &loop_forward_frame,
        XDP_TX,
        Some(&loop_forward.clone().macs(LB_MAC, WEB1_MAC).build()),
        "fixed-point NAT setup packet",
    )?;
    expected_counts.add((Scene::NatLoop, Verdict::ForwardNat), 1);
    let loop_reply =
        tcp((LOOP_VIP, 80), (CLIENT, LOOP_CLIENT_PORT), TCP_ACK).macs(WEB1_MAC, LB_MAC);
    let loop_reply_frame = loop_reply.build();
    setup_run(
        &natloop,
        &loop_reply_frame,
        XDP_TX,
        Some(&loop_reply.clone().macs(LB_MAC, CLIENT_MAC).build()),
        "fixed-point NAT reply setup packet",
    )?;
    expected_counts.add((Scene::NatLoop, Verdict::NatReply), 1);

    // The firewall scenes, and the flow table filled before an established flow is measured.
    eprintln!(
        "lb-bench: programming the firewall scene ({} prefixes)",
        cfg.fw_prefixes
    );
    let fw = fw_scene(cfg.fw_prefixes)?;
    let fw_drop_frame = tcp((fw.denied, 40_000), (DSR_VIP, 80), TCP_ACK).build();
    setup_run(
        &fw.h.harness,
        &fw_drop_frame,
        XDP_DROP,
        None,
        "firewall drop setup packet",
    )?;
    expected_counts.add((Scene::Fw, Verdict::DropDenied), 1);
    open_connection(&fw.h.harness, &dsr_frame, "firewall pass setup packet")?;
    expected_counts.add((Scene::Fw, Verdict::ForwardDsr), 1);
    setup_run(
        &fw.h.harness,
        &dsr_frame,
        XDP_TX,
        None,
        "firewall pass setup packet",
    )?;
    expected_counts.add((Scene::Fw, Verdict::ForwardDsr), 1);
    let fw_scale = if cfg.fw_prefixes_scale > 0 {
        eprintln!(
            "lb-bench: programming the firewall scale scene ({} prefixes)",
            cfg.fw_prefixes_scale
        );
        let scene = fw_scene(cfg.fw_prefixes_scale)?;
        open_connection(&scene.h.harness, &dsr_frame, "firewall scale setup packet")?;
        expected_counts.add((Scene::FwScale, Verdict::ForwardDsr), 1);
        setup_run(
            &scene.h.harness,
            &dsr_frame,
            XDP_TX,
            None,
            "firewall scale setup packet",
        )?;
        expected_counts.add((Scene::FwScale, Verdict::ForwardDsr), 1);
        Some(scene)
    } else {
        None
    };
    let prefilled = if cfg.prefill_flows > 0 {
        if cfg.prefill_flows >= cfg.flow_capacity {
            bail!(
                "{} pre-filled flows do not fit a flow table of {}",
                cfg.prefill_flows,
                cfg.flow_capacity
            );
        }
        let h = dsr_scene(cfg.flow_capacity);
        let started = Instant::now();
        {
            let program = h.dataplane.program()?;
            let mut out = vec![0u8; 512];
            for i in 0..u64::from(cfg.prefill_flows) {
                open_flow(program, i, &mut out).context("pre-filling the flow table")?;
            }
        }
        let fill_s = started.elapsed().as_secs_f64();
        eprintln!(
            "lb-bench: flow table pre-filled with {} flows in {fill_s:.1} s",
            cfg.prefill_flows
        );
        expected_counts.add(
            (Scene::Prefilled, Verdict::ForwardDsr),
            2 * u64::from(cfg.prefill_flows),
        );
        // The measured flow is inserted last: the most recent entry of the LRU.
        open_connection(&h, &dsr_frame, "pre-filled setup packet")?;
        expected_counts.add((Scene::Prefilled, Verdict::ForwardDsr), 1);
        setup_run(
            &h,
            &dsr_frame,
            XDP_TX,
            Some(&dsr.clone().macs(LB_MAC, WEB1_MAC).build()),
            "pre-filled setup packet",
        )
        .or_else(|_| setup_run(&h, &dsr_frame, XDP_TX, None, "pre-filled setup packet"))?;
        expected_counts.add((Scene::Prefilled, Verdict::ForwardDsr), 1);
        Some((h, fill_s))
    } else {
        None
    };

    let cache_miss = dsr_scene(4 * CACHE_MISS_FLOWS);
    {
        let program = cache_miss.dataplane.program()?;
        let mut out = vec![0u8; 512];
        for i in 0..CACHE_MISS_FLOWS {
            open_flow(program, i.into(), &mut out).context("the cache-miss scene")?;
        }
    }
    expected_counts.add(
        (Scene::CacheMiss, Verdict::ForwardDsr),
        2 * u64::from(CACHE_MISS_FLOWS),
    );

    let elsewhere_frame = tcp((CLIENT, 40_000), (ELSEWHERE, 80), TCP_ACK).build();
    let frame_len = dsr_frame.len();
    for frame in [
        &nat_frame,
        &reply_frame,
        &loop_forward_frame,
        &loop_reply_frame,
        &elsewhere_frame,
        &new_flow_frame(0),
        &fw_drop_frame,
    ] {
        if frame.len() != frame_len {
            bail!("a frame of {} bytes, not {frame_len}", frame.len());
        }
    }

    let lb = main.dataplane.program()?;
    let pass = main.dataplane.pass_program()?;
    let lb_new = newflows.dataplane.program()?;
    let lb_loop = natloop.dataplane.program()?;
    let lb_fw = fw.h.harness.dataplane.program()?;

    let filter = XdpFilter::load();
    let mut filter_detail = json!({});
    let filter_case = match &filter {
        Ok(f) => {
            filter_detail = json!({
                "object": f.object.display().to_string(),
                "program": super::xdp_filter::PROGRAM,
                "maps": f.maps,
            });
            match f.program() {
                Ok(program) => Case::new(
                    "xdp_filter",
                    Method::Repeat { program, frame: dsr_frame.clone(), repeat: per_round(cfg.repeats) },
                    XDP_PASS,
                    None,
                )
                .note(
                    "xdp-filter's all-features program (allow policy: a map hit drops, a miss passes), loaded with aya, \
                     maps left empty as created: on this TCP/IPv4 frame it looks up both MACs (filter_ethernet), both \
                     IPv4 addresses (filter_ipv4) and both ports (filter_ports), misses every one, counts the action \
                     in xdp_stats_map and returns XDP_PASS",
                ),
                Err(e) => Case::unavailable("xdp_filter", format!("{e:#}")),
            }
        }
        Err(e) => Case::unavailable("xdp_filter", format!("loading xdp-filter failed: {e:#}")),
    };

    let repeats = per_round(cfg.repeats);
    let calls = per_round(cfg.calls);
    let fixed_point_note = format!(
        "fixed-point NAT service so that the repeat method holds: VIP {LOOP_VIP}:80 whose backend is {LOOP_VIP}:80 \
         itself, SNAT address {CLIENT} (the client), NAT port range [{LOOP_CLIENT_PORT}]; the program does every lookup, \
         rewrite and checksum update as for any NAT flow, and the frame it writes back has the same addresses and \
         ports, so every repeat stays in the flow (BPF_PROG_TEST_RUN does not reset the frame between repeats; with \
         ordinary addresses repeats 2..n would be passthrough). per_call_cross_check measures the ordinary-address flow"
    );
    let mut cases = vec![
        Case::new("floor", Method::Repeat { program: pass, frame: dsr_frame.clone(), repeat: repeats }, XDP_PASS, None)
            .note("our xdp_pass program (returns XDP_PASS, touches nothing): BPF_PROG_TEST_RUN's cost around one run"),
        filter_case,
        Case::new(
            "lb_established",
            Method::Repeat { program: lb, frame: dsr_frame.clone(), repeat: repeats },
            XDP_TX,
            Some((Scene::Main, Verdict::ForwardDsr)),
        )
        .note(FIREWALL_OFF)
        .note(
            "DSR service, two backends, the flow already in the flow table and copied into the CPU's flow cache: \
             firewall switches, flow-cache hit (the flow table itself is looked up again once the copy is 32 kernel \
             ticks old: the first repeat of each round, as the rounds are further apart than that), backend check, MAC rewrite, counters, XDP_TX. Repeats after the first \
             see the frame with its MACs rewritten; the program does not read them. flow_cache_miss_per_call below: \
             the same forward when the cache misses",
        ),
        Case::new(
            "lb_new_flow",
            Method::PerCall { program: lb_new, pass, frames: Frames::NewFlows, calls: per_round(cfg.new_flows), next: 0 },
            XDP_TX,
            Some((Scene::NewFlows, Verdict::ForwardDsr)),
        )
        .note(format!(
            "every call a new flow (distinct source address/port, SYN) to a DSR service with two backends: service \
             lookup, flow miss, round-robin choice, flow insert, XDP_TX; {} flows into a flow table of {} (below \
             capacity: no LRU eviction needed)",
            u64::from(per_round(cfg.new_flows)) * u64::from(ROUNDS),
            cfg.flow_capacity
        )),
        Case::new(
            "nat_forward",
            Method::Repeat { program: lb_loop, frame: loop_forward_frame.clone(), repeat: repeats },
            XDP_TX,
            Some((Scene::NatLoop, Verdict::ForwardNat)),
        )
        .note("NAT service, established flow, client -> VIP: service lookup, flow lookup, MAC, address and port rewrite \
               with incremental checksum updates, counters, XDP_TX")
        .note(fixed_point_note.clone()),
        Case::new(
            "nat_reply",
            Method::Repeat { program: lb_loop, frame: loop_reply_frame.clone(), repeat: repeats },
            XDP_TX,
            Some((Scene::NatLoop, Verdict::NatReply)),
        )
        .note("backend -> SNAT address:NAT port of an established NAT flow: service miss, NAT reverse lookup, rewrite \
               back to VIP -> client, counters, XDP_TX")
        .note(fixed_point_note),
        Case::new(
            "passthrough",
            Method::Repeat { program: lb, frame: elsewhere_frame.clone(), repeat: repeats },
            XDP_PASS,
            Some((Scene::Main, Verdict::PassNoService)),
        )
        .note("TCP to an address that is no service: parse, service miss, NAT reverse miss, counters, XDP_PASS"),
        Case::new(
            "fw_drop",
            Method::Repeat { program: lb_fw, frame: fw_drop_frame.clone(), repeat: repeats },
            XDP_DROP,
            Some((Scene::Fw, Verdict::DropDenied)),
        )
        .note(fw_note(&fw))
        .note(format!(
            "TCP from {} (inside one of the {} prefixes, all with action drop) to the DSR VIP: parse, sanity checks, \
             the IPv4 rule table (at most four array reads) hits the drop rule, rule and reason counters, XDP_DROP",
            fw.denied, fw.prefixes
        )),
        Case::new(
            "fw_pass_10k_prefixes",
            Method::Repeat { program: lb_fw, frame: dsr_frame.clone(), repeat: repeats },
            XDP_TX,
            Some((Scene::Fw, Verdict::ForwardDsr)),
        )
        .note(fw_note(&fw))
        .note(format!(
            "the established DSR flow of lb_established from {CLIENT}, which matches none of the prefixes (no allow \
             rule involved): sanity checks, the IPv4 rule table misses, then the established forward, XDP_TX"
        )),
        match &fw_scale {
            Some(scene) => Case::new(
                "lb_established_100k_prefixes",
                Method::Repeat { program: scene.h.harness.dataplane.program()?, frame: dsr_frame.clone(), repeat: repeats },
                XDP_TX,
                Some((Scene::FwScale, Verdict::ForwardDsr)),
            )
            .note(fw_note(scene))
            .note("the path of fw_pass_10k_prefixes with 10x the prefixes: how the lookup cost grows"),
            None => Case::unavailable("lb_established_100k_prefixes", "skipped (--fw-prefixes-scale 0)"),
        },
        match &prefilled {
            Some((h, fill_s)) => Case::new(
                "lb_established_1m_flows",
                Method::Repeat { program: h.dataplane.program()?, frame: dsr_frame.clone(), repeat: repeats },
                XDP_TX,
                Some((Scene::Prefilled, Verdict::ForwardDsr)),
            )
            .note(format!(
                "lb_established (firewall off) with the flow table ({} entries) pre-filled with {} other flows (one \
                 BPF_PROG_TEST_RUN per new flow, {fill_s:.1} s) before the measured flow was inserted",
                cfg.flow_capacity, cfg.prefill_flows
            )),
            None => Case::unavailable("lb_established_1m_flows", "skipped (--prefill-flows 0)"),
        },
        Case::new(
            "lb_established_per_call",
            Method::PerCall { program: lb, pass, frames: Frames::Fixed(dsr_frame.clone()), calls, next: 0 },
            XDP_TX,
            Some((Scene::Main, Verdict::ForwardDsr)),
        ),
        Case::new(
            CACHE_MISS_CASE,
            Method::PerCall {
                program: cache_miss.dataplane.program()?,
                pass,
                frames: Frames::Established(CACHE_MISS_FLOWS),
                calls,
                next: 0,
            },
            XDP_TX,
            Some((Scene::CacheMiss, Verdict::ForwardDsr)),
        )
        .note(format!(
            "{CACHE_MISS_FLOWS} established DSR flows (firewall off), one packet of each in turn: between two packets of \
             a flow, {} others pass through the CPU's flow cache of {} slots, so nearly every packet finds another \
             flow's copy in its slot, looks up the flow table, and copies its entry over",
            CACHE_MISS_FLOWS - 1,
            lb_common::FLOW_CACHE_SLOTS
        )),
        Case::new(
            "nat_forward_per_call",
            Method::PerCall { program: lb, pass, frames: Frames::Fixed(nat_frame.clone()), calls, next: 0 },
            XDP_TX,
            Some((Scene::Main, Verdict::ForwardNat)),
        )
        .note(format!("ordinary NAT flow: client {CLIENT}:40000 -> VIP {NAT_VIP}:80, SNAT {SNAT}, backends :8080")),
        Case::new(
            "nat_reply_per_call",
            Method::PerCall { program: lb, pass, frames: Frames::Fixed(reply_frame.clone()), calls, next: 0 },
            XDP_TX,
            Some((Scene::Main, Verdict::NatReply)),
        )
        .note(format!("ordinary NAT reply: {WEB1}:8080 -> {SNAT}:{nat_port}")),
    ];

    let mut out = vec![0u8; frame_len + 512];
    for round in 1..=ROUNDS {
        let started = std::time::Instant::now();
        for case in cases.iter_mut() {
            case.round(&mut out);
        }
        eprintln!(
            "lb-bench: round {round}/{ROUNDS} done in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }

    // Every timed run must show in the verdict counter of the path its case names.
    for case in &cases {
        if let Some(key) = case.counted_as {
            expected_counts.add(key, case.runs);
        }
    }
    for &((scene, verdict), want) in &expected_counts.0 {
        let h = match scene {
            Scene::Main => &main,
            Scene::NewFlows => &newflows,
            Scene::NatLoop => &natloop,
            Scene::Fw => &fw.h.harness,
            Scene::FwScale => match &fw_scale {
                Some(s) => &s.h.harness,
                None => continue,
            },
            Scene::Prefilled => match &prefilled {
                Some((h, _)) => h,
                None => continue,
            },
            Scene::CacheMiss => &cache_miss,
        };
        let got = h.verdict_count(verdict);
        for case in cases
            .iter_mut()
            .filter(|c| c.counted_as == Some((scene, verdict)))
        {
            if got == want {
                case.notes.push(format!(
                    "checked: the {verdict:?} verdict counter of its program grew by exactly the number of runs \
                     ({want}, setup packets included)"
                ));
            } else {
                case.fail(format!("the {verdict:?} verdict counter is {got}, expected {want}: some runs took another path"));
            }
        }
    }
    // The drop rule counted every dropped packet.
    let drop_rule = fw.h.rule(FW_RULE).packets;
    let want = case_runs(&cases, "fw_drop") + 1;
    if let Some(case) = cases.iter_mut().find(|c| c.key == "fw_drop") {
        if drop_rule == want {
            case.notes.push(format!("checked: the counter of rule `{FW_RULE}` grew by exactly the number of runs ({want})"));
        } else {
            case.fail(format!(
                "rule `{FW_RULE}` counted {drop_rule} packets, expected {want}"
            ));
        }
    }
    let fw_service = |h: &ConfigHarness| {
        h.harness
            .dataplane
            .service_counters(h.table.services[0].id)
            .map(|c| c.new_flows)
    };
    let mut new_flows = vec![("fw_pass_10k_prefixes", fw_service(&fw.h)?, 1)];
    if let Some(scene) = &fw_scale {
        new_flows.push(("lb_established_100k_prefixes", fw_service(&scene.h)?, 1));
    }
    if let Some((h, _)) = &prefilled {
        new_flows.push((
            "lb_established_1m_flows",
            h.service_counters(0).new_flows,
            u64::from(cfg.prefill_flows) + 1,
        ));
    }
    new_flows.extend([
        ("lb_established", main.service_counters(0).new_flows, 1),
        (
            CACHE_MISS_CASE,
            cache_miss.service_counters(0).new_flows,
            CACHE_MISS_FLOWS.into(),
        ),
        (
            "nat_forward_per_call",
            main.service_counters(1).new_flows,
            1,
        ),
        ("nat_forward", natloop.service_counters(0).new_flows, 1),
        (
            "lb_new_flow",
            newflows.service_counters(0).new_flows,
            case_runs(&cases, "lb_new_flow"),
        ),
    ]);
    for (key, got, want) in new_flows {
        if let Some(case) = cases.iter_mut().find(|c| c.key == key) {
            if got == want {
                case.notes
                    .push(format!("checked: the service counted {got} new flow(s)"));
            } else {
                case.fail(format!(
                    "the service counted {got} new flows, expected {want}"
                ));
            }
        }
    }

    let floor = cases
        .iter()
        .find(|c| c.key == "floor")
        .map(|c| c.estimates(&[]))
        .unwrap_or_default();
    if floor.len() != ROUNDS as usize {
        bail!(
            "the floor could not be measured: {}",
            cases[0].failure.clone().unwrap_or_default()
        );
    }
    let mut outcomes: Vec<Outcome> = cases
        .iter()
        .filter(|c| {
            !CROSS_CHECKS.iter().any(|(k, _)| *k == c.key)
                && !SCALE_CASES.contains(&c.key)
                && c.key != CACHE_MISS_CASE
        })
        .map(|c| c.outcome(&floor, frame_len))
        .collect();
    let mut scale = serde_json::Map::new();
    for key in SCALE_CASES {
        if let Some(case) = cases.iter().find(|c| c.key == key) {
            scale.insert(key.to_string(), case.outcome(&floor, frame_len).detail);
        }
    }
    scale.insert(
        "rule_apply_ms".into(),
        json!({
            "note": "one firewall::apply of an unchanged rule set (write the idle generation, switch, clear the old one), from user space through map syscalls",
            "prefixes_10k": round1(fw.apply_ms),
            "prefixes_100k": fw_scale.as_ref().map(|s| round1(s.apply_ms)),
        }),
    );
    let mut cross_checks = serde_json::Map::new();
    for (check_key, case_key) in CROSS_CHECKS {
        let Some(check) = cases
            .iter()
            .find(|c| c.key == check_key)
            .map(|c| c.outcome(&floor, frame_len))
        else {
            continue;
        };
        cross_checks.insert(check_key.to_string(), json!(check.ns));
        if let Some(o) = outcomes.iter_mut().find(|o| o.key == case_key) {
            o.detail["per_call_cross_check"] = check.detail;
            o.detail["per_call_cross_check"]["purpose"] = json!(
                "the same path measured with the per-call method of lb_new_flow: its distance to the repeat figure \
                 is the per-call method's bias (cold caches and branch predictors after each syscall)"
            );
        }
    }
    if let Some(miss) = cases
        .iter()
        .find(|c| c.key == CACHE_MISS_CASE)
        .map(|c| c.outcome(&floor, frame_len))
    {
        cross_checks.insert(CACHE_MISS_CASE.to_string(), json!(miss.ns));
        let hit = cross_checks
            .get("lb_established_per_call")
            .and_then(Value::as_f64);
        if let Some(o) = outcomes.iter_mut().find(|o| o.key == "lb_established") {
            o.detail["flow_cache_miss_per_call"] = miss.detail;
            if let (Some(miss), Some(hit)) = (miss.ns, hit) {
                o.detail["flow_cache_miss_per_call"]["minus_hit_per_call_ns"] =
                    json!(round1(miss - hit));
            }
            o.detail["flow_cache_miss_per_call"]["purpose"] = json!(
                "lb_established repeats one flow, whose copy in the CPU's flow cache serves nearly every packet; this \
                 is the same forward when the cache misses (many busy flows per CPU), measured per call; \
                 minus_hit_per_call_ns compares it with lb_established_per_call (same method, cache hit)"
            );
        }
    }
    // lb_new_flow is per call only; the established DSR forward measured both ways tells how
    // much of it is the method.
    let ns_of =
        |outcomes: &[Outcome], key: &str| outcomes.iter().find(|o| o.key == key).and_then(|o| o.ns);
    let bias = match (
        cross_checks
            .get("lb_established_per_call")
            .and_then(Value::as_f64),
        ns_of(&outcomes, "lb_established"),
    ) {
        (Some(per_call), Some(repeat)) => Some(per_call - repeat),
        _ => None,
    };
    if let Some(o) = outcomes.iter_mut().find(|o| o.key == "xdp_filter") {
        o.detail["configuration"] = filter_detail;
    }
    if let Some(o) = outcomes.iter_mut().find(|o| o.key == "lb_new_flow") {
        if let (Some(ns), Some(bias)) = (o.ns, bias) {
            o.detail["per_call_bias_ns"] = json!(round1(bias));
            o.detail["per_call_bias_adjusted_ns"] = json!(round1(ns - bias));
            o.detail["per_call_bias_note"] = json!(
                "per_call_bias_ns = lb_established measured per call - lb_established measured by repeat (same run); \
                 per_call_bias_adjusted_ns = lb_new_flow - that bias: a rough figure on the repeat method's footing, \
                 assuming the same bias"
            );
        }
    }
    outcomes.sort_by_key(|o| KEYS.iter().position(|k| *k == o.key).unwrap_or(usize::MAX));

    let settings = json!({
        "rounds": ROUNDS,
        "repeats_per_case": cfg.repeats,
        "calls_per_cross_check": cfg.calls,
        "new_flows": cfg.new_flows,
        "flow_capacity_for_new_flows": cfg.flow_capacity,
        "fw_prefixes": cfg.fw_prefixes,
        "fw_prefixes_scale": cfg.fw_prefixes_scale,
        "prefill_flows": cfg.prefill_flows,
        "frame": format!(
            "{frame_len}-byte Ethernet + IPv4 + TCP frame with a 20-byte payload (no FCS), the same size for every case"
        ),
        "services": {
            "dsr": format!("{DSR_VIP}:80 TCP, DSR, backends {WEB1}:80 and {WEB2}:80"),
            "nat": format!(
                "{NAT_VIP}:80 TCP, NAT, SNAT {SNAT}, backends {WEB1}:8080 and {WEB2}:8080, NAT ports {}-{}",
                NAT_PORTS.0, NAT_PORTS.1
            ),
            "nat_fixed_point": format!(
                "{LOOP_VIP}:80 TCP, NAT, backend {LOOP_VIP}:80, SNAT {CLIENT}, NAT ports {LOOP_CLIENT_PORT}-{LOOP_CLIENT_PORT}"
            ),
        },
        "per_call_cross_checks_ns": cross_checks,
    });
    Ok(PerPacket {
        outcomes,
        frame_len,
        settings,
        scale: Value::Object(scale),
    })
}

fn case_runs(cases: &[Case<'_>], key: &str) -> u64 {
    cases.iter().find(|c| c.key == key).map_or(0, |c| c.runs)
}
