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
use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr},
    time::Instant,
};

use anyhow::{bail, Context as _, Result};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use lb_common::maps::Verdict;
use lb_tests::{
    harness::{
        two_web_backends, BackendSpec, ConfigHarness, Harness, WEB1_MAC, WEB2_MAC, XDP_DROP,
        XDP_PASS, XDP_TX,
    },
    packet::{l4_ports, Frame, L4, TCP_ACK, TCP_SYN},
};
use lb_userspace::{
    config::{Mode, Protocol},
    dataplane::LoadOptions,
    firewall,
};
use serde_json::{json, Value};

use super::xdp_filter::XdpFilter;

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

const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x10];

const CLIENT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 10);
const DSR_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 100);
const NAT_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 101);
const SNAT: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
const WEB1: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 11);
const WEB2: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 12);
/// An address that is no service (passthrough).
const ELSEWHERE: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 50);
/// New flows come from 10.1.0.0, 10.1.0.1, ... with source ports 10000..59999.
const NEW_FLOW_BASE: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 0);
const PORTS_PER_ADDR: u32 = 50_000;
const NAT_PORTS: (u16, u16) = (20_000, 29_999);
/// The fixed-point NAT service: VIP 10.0.0.102:80 whose only backend is 10.0.0.102:80 itself,
/// SNAT address = the client, NAT ports = [the client's port]: the rewrite of C:Q -> A:P is
/// C:Q -> A:P again, and so is the rewrite of the reply A:P -> C:Q.
const LOOP_VIP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 102);
const LOOP_CLIENT_PORT: u16 = 40_000;

/// A program of its own with a flow table of `flow_capacity` and one DSR service, the VIP's
/// port 80 on web1 and web2: for the cases that fill the flow table.
fn dsr_scene(flow_capacity: u32) -> Harness {
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
fn add_dsr_service(h: &mut Harness) {
    h.add_service(
        "dsr",
        (IpAddr::V4(DSR_VIP), 80),
        Protocol::Tcp,
        Mode::Dsr,
        None,
        &two_backends(80),
    );
}

fn two_backends(port: u16) -> [BackendSpec; 2] {
    two_web_backends(IpAddr::V4(WEB1), IpAddr::V4(WEB2), port)
}

/// A TCP frame from the client's MAC to the load balancer's; 74 bytes (20-byte payload).
fn tcp(src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8) -> Frame {
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

fn new_flow_frame(i: u64) -> Vec<u8> {
    flow_frame(i, TCP_SYN)
}

/// Flow `i` of the new-flow frames, with these TCP flags.
fn flow_frame(i: u64, flags: u8) -> Vec<u8> {
    let i = i as u32;
    let src = Ipv4Addr::from(u32::from(NEW_FLOW_BASE) + i / PORTS_PER_ADDR);
    let port = 10_000 + (i % PORTS_PER_ADDR) as u16;
    tcp((src, port), (DSR_VIP, 80), flags).build()
}

/// Opens connection `i` of the new-flow frames: its SYN, then the ACK that completes the
/// handshake as the load balancer sees it (two forwards, not timed).
fn open_flow(program: &Xdp, i: u64, out: &mut [u8]) -> Result<()> {
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
fn open_connection(h: &Harness, ack_frame: &[u8], what: &str) -> Result<()> {
    // Ethernet, a 20-byte IPv4 header, then the TCP flags at byte 13.
    const TCP_FLAGS_AT: usize = 14 + 20 + 13;
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
const LB_ADDR: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const FW_RULE: &str = "deny-random";
const FW_SEED: u64 = 0x9e37_79b9_7f4a_7c15;

/// `n` distinct random IPv4 prefixes, /16 to /32, from a fixed seed (the same set every run).
/// None lies in 10.0.0.0/8 (the scene's own addresses, so the client matches none), 0/8,
/// 127/8 or 224/3.
fn random_prefixes(n: u32, seed: u64) -> Vec<(Ipv4Addr, u8)> {
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
fn inside(prefix: (Ipv4Addr, u8)) -> Ipv4Addr {
    let host = if prefix.1 == 32 {
        0
    } else {
        0x5a5a_5a5a & (u32::MAX >> prefix.1)
    };
    Ipv4Addr::from(u32::from(prefix.0) | host)
}

struct FwScene {
    h: ConfigHarness,
    /// An address inside one of the prefixes (the denied source).
    denied: Ipv4Addr,
    prefixes: usize,
    /// Time to parse the config text and program it (services, then the rule set) from scratch.
    build_ms: f64,
    /// Time of one more `firewall::apply` of the same rule set (write the idle generation,
    /// switch, clear the old one): what a rule change costs at this size.
    apply_ms: f64,
}

fn fw_scene(n: u32) -> Result<FwScene> {
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

fn fw_note(scene: &FwScene) -> String {
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

struct Run {
    ns: f64,
    ret: u32,
}

fn test_run(program: &Xdp, frame: &[u8], out: &mut [u8], repeat: u32) -> Result<Run> {
    let result = program
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(out),
            repeat,
            ..TestRunOptions::new()
        })
        .context("BPF_PROG_TEST_RUN")?;
    Ok(Run {
        ns: result.duration.as_nanos() as f64,
        ret: result.return_value,
    })
}

/// A call whose kernel-timed run took longer than this was interrupted (an IRQ, the host
/// preempting this vCPU): no path of these programs takes that long. Such a pair is left out
/// of the means and counted.
const INTERRUPTED_NS: f64 = 50_000.0;

/// One per-call round: `calls` pairs (xdp_pass, program) with repeat=1 on fresh frames.
/// `Ok(Err(action))`: a call returned `action` instead of the expected one.
#[allow(clippy::too_many_arguments)]
fn per_call_round(
    program: &Xdp,
    pass: &Xdp,
    frames: &Frames,
    calls: u32,
    next: &mut u64,
    expect: u32,
    out: &mut [u8],
    runs: &mut u64,
) -> Result<std::result::Result<Round, u32>> {
    let (mut program_sum, mut pass_sum, mut kept, mut dropped) = (0.0, 0.0, 0u32, 0u32);
    let (mut program_all, mut pass_all) = (0.0, 0.0);
    for _ in 0..calls {
        let frame = frames.get(*next);
        *next += 1;
        let p = test_run(pass, &frame, out, 1)?;
        if p.ret != XDP_PASS {
            return Ok(Err(p.ret));
        }
        *runs += 1;
        let r = test_run(program, &frame, out, 1)?;
        if r.ret != expect {
            return Ok(Err(r.ret));
        }
        program_all += r.ns;
        pass_all += p.ns;
        if p.ns > INTERRUPTED_NS || r.ns > INTERRUPTED_NS {
            dropped += 1;
            continue;
        }
        kept += 1;
        pass_sum += p.ns;
        program_sum += r.ns;
    }
    let n = f64::from(kept.max(1));
    let all = f64::from(calls.max(1));
    Ok(Ok(Round::PerCall {
        program_mean: program_sum / n,
        pass_mean: pass_sum / n,
        dropped,
        all_calls_estimate_offset: (program_all - pass_all) / all - (program_sum - pass_sum) / n,
    }))
}

enum Frames {
    Fixed(Vec<u8>),
    /// Frame `i` is new flow number `i`.
    NewFlows,
    /// Frame `i` is flow number `i % n`, all `n` established beforehand.
    Established(u32),
}

impl Frames {
    fn get(&self, i: u64) -> std::borrow::Cow<'_, [u8]> {
        match self {
            Frames::Fixed(frame) => std::borrow::Cow::Borrowed(frame),
            Frames::NewFlows => std::borrow::Cow::Owned(new_flow_frame(i)),
            Frames::Established(n) => {
                std::borrow::Cow::Owned(flow_frame(i % u64::from(*n), TCP_ACK))
            }
        }
    }
}

enum Method<'a> {
    Repeat {
        program: &'a Xdp,
        frame: Vec<u8>,
        repeat: u32,
    },
    PerCall {
        program: &'a Xdp,
        pass: &'a Xdp,
        frames: Frames,
        calls: u32,
        next: u64,
    },
    /// Not measured; the reason is the case's failure.
    None,
}

/// What one round measured.
enum Round {
    Repeat {
        ns: f64,
    },
    /// `all_calls_estimate_offset`: how much the round's figure would grow if the pairs left
    /// out as interrupted were kept.
    PerCall {
        program_mean: f64,
        pass_mean: f64,
        dropped: u32,
        all_calls_estimate_offset: f64,
    },
}

/// Which harness's verdict counter must count this case's runs.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scene {
    Main,
    NewFlows,
    NatLoop,
    /// The DSR service with the firewall on and `fw_prefixes` drop prefixes.
    Fw,
    /// The same with `fw_prefixes_scale` prefixes.
    FwScale,
    /// The DSR service with the flow table pre-filled.
    Prefilled,
    /// The DSR service with `CACHE_MISS_FLOWS` established flows.
    CacheMiss,
}

/// Expected verdict counter values: (scene, verdict) -> runs.
#[derive(Default)]
struct Tally(Vec<((Scene, Verdict), u64)>);

impl Tally {
    fn add(&mut self, key: (Scene, Verdict), n: u64) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, count)) => *count += n,
            None => self.0.push((key, n)),
        }
    }
}

struct Case<'a> {
    key: &'static str,
    method: Method<'a>,
    expect: u32,
    counted_as: Option<(Scene, Verdict)>,
    method_text: String,
    notes: Vec<String>,
    rounds: Vec<Round>,
    /// Runs of the program made by this case (repeats or calls).
    runs: u64,
    failure: Option<String>,
}

impl<'a> Case<'a> {
    fn new(
        key: &'static str,
        method: Method<'a>,
        expect: u32,
        counted_as: Option<(Scene, Verdict)>,
    ) -> Self {
        let method_text = match &method {
            Method::Repeat { repeat, .. } => format!(
                "repeat: {ROUNDS} rounds, each one BPF_PROG_TEST_RUN call with repeat={repeat}; the kernel's average per \
                 repeat; median of the rounds"
            ),
            Method::PerCall { calls, .. } => format!(
                "per call: {ROUNDS} rounds of {calls} BPF_PROG_TEST_RUN calls with repeat=1, each paired with a \
                 repeat=1 call of xdp_pass on the same frame; round = mean(program) - mean(xdp_pass) + floor of the \
                 round (pairs with a call over 50 us, i.e. interrupted, left out and counted); median of the rounds"
            ),
            Method::None => "not measured".to_string(),
        };
        Case {
            key,
            method,
            expect,
            counted_as,
            method_text,
            notes: Vec::new(),
            rounds: Vec::new(),
            runs: 0,
            failure: None,
        }
    }

    fn unavailable(key: &'static str, reason: impl Into<String>) -> Self {
        let mut case = Case::new(key, Method::None, 0, None);
        case.failure = Some(reason.into());
        case
    }

    fn note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    fn fail(&mut self, why: String) {
        if self.failure.is_none() {
            eprintln!("lb-bench: {}: {why}", self.key);
            self.failure = Some(why);
        }
    }

    fn round(&mut self, out: &mut [u8]) {
        if self.failure.is_some() {
            return;
        }
        let expect = self.expect;
        let result = match &mut self.method {
            Method::None => return,
            Method::Repeat {
                program,
                frame,
                repeat,
            } => {
                self.runs += u64::from(*repeat);
                test_run(program, frame, out, *repeat).map(|r| {
                    if r.ret == expect {
                        Ok(Round::Repeat { ns: r.ns })
                    } else {
                        Err(r.ret)
                    }
                })
            }
            Method::PerCall {
                program,
                pass,
                frames,
                calls,
                next,
            } => per_call_round(
                program,
                pass,
                frames,
                *calls,
                next,
                expect,
                out,
                &mut self.runs,
            ),
        };
        match result {
            Ok(Ok(round)) => self.rounds.push(round),
            Ok(Err(ret)) => self.fail(format!(
                "returned {} ({ret}), expected {}",
                action_name(ret),
                action_name(expect)
            )),
            Err(e) => self.fail(format!("{e:#}")),
        }
    }

    /// Per-round figures: the kernel's ns per repeat, or the per-call estimate.
    fn estimates(&self, floor: &[f64]) -> Vec<f64> {
        self.rounds
            .iter()
            .enumerate()
            .map(|(i, round)| match round {
                Round::Repeat { ns } => *ns,
                Round::PerCall {
                    program_mean,
                    pass_mean,
                    ..
                } => program_mean - pass_mean + floor.get(i).copied().unwrap_or(0.0),
            })
            .collect()
    }

    fn outcome(&self, floor: &[f64], frame_len: usize) -> Outcome {
        let rounds = self.estimates(floor);
        let complete = self.failure.is_none() && rounds.len() == ROUNDS as usize;
        let ns = complete.then(|| round1(median(&rounds)));
        let mut detail = json!({
            "ns": ns,
            "method": self.method_text,
            "frame_len": frame_len,
        });
        if let Some(why) = &self.failure {
            detail["reason"] = json!(why);
        }
        if !matches!(self.method, Method::None) {
            detail["return_value"] = json!(self.expect);
            detail["verdict"] = json!(action_name(self.expect));
            detail["rounds"] = json!(rounds.iter().map(|v| round1(*v)).collect::<Vec<_>>());
            if complete {
                detail["median"] = json!(round1(median(&rounds)));
                let (min, max) = (
                    rounds.iter().copied().fold(f64::INFINITY, f64::min),
                    rounds.iter().copied().fold(f64::NEG_INFINITY, f64::max),
                );
                detail["min"] = json!(round1(min));
                detail["max"] = json!(round1(max));
                detail["spread_percent"] = json!(round1(100.0 * (max - min) / median(&rounds)));
            }
        }
        match &self.method {
            Method::Repeat { repeat, .. } => {
                detail["repeats_per_round"] = json!(repeat);
                detail["repeats_total"] = json!(u64::from(*repeat) * u64::from(ROUNDS));
            }
            Method::PerCall { calls, .. } => {
                detail["calls_per_round"] = json!(calls);
                detail["calls_total"] = json!(u64::from(*calls) * u64::from(ROUNDS));
                let per_call: Vec<(f64, f64, u32, f64)> = self
                    .rounds
                    .iter()
                    .filter_map(|r| match r {
                        Round::PerCall {
                            program_mean,
                            pass_mean,
                            dropped,
                            all_calls_estimate_offset,
                        } => Some((
                            *program_mean,
                            *pass_mean,
                            *dropped,
                            *all_calls_estimate_offset,
                        )),
                        Round::Repeat { .. } => None,
                    })
                    .collect();
                detail["interrupted_pairs_left_out"] =
                    json!(per_call.iter().map(|p| p.2).collect::<Vec<_>>());
                let with_all: Vec<f64> =
                    rounds.iter().zip(&per_call).map(|(r, p)| r + p.3).collect();
                detail["rounds_keeping_interrupted_pairs"] =
                    json!(with_all.iter().map(|v| round1(*v)).collect::<Vec<_>>());
                if with_all.len() == ROUNDS as usize {
                    detail["median_keeping_interrupted_pairs"] = json!(round1(median(&with_all)));
                }
                detail["interrupted_threshold_ns"] = json!(INTERRUPTED_NS);
                detail["program_repeat1_mean_ns"] =
                    json!(per_call.iter().map(|p| round1(p.0)).collect::<Vec<_>>());
                detail["xdp_pass_repeat1_mean_ns"] =
                    json!(per_call.iter().map(|p| round1(p.1)).collect::<Vec<_>>());
                detail["floor_ns_of_round"] =
                    json!(floor.iter().map(|v| round1(*v)).collect::<Vec<_>>());
            }
            Method::None => {}
        }
        if !self.notes.is_empty() {
            detail["notes"] = json!(self.notes);
        }
        Outcome {
            key: self.key,
            ns,
            return_value: (!matches!(self.method, Method::None)).then_some(self.expect),
            detail,
        }
    }
}

fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

pub fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}

pub fn action_name(action: u32) -> &'static str {
    match action {
        0 => "XDP_ABORTED",
        1 => "XDP_DROP",
        2 => "XDP_PASS",
        3 => "XDP_TX",
        4 => "XDP_REDIRECT",
        _ => "?",
    }
}

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
