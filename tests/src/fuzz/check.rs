//! One frame through the real program and through the model, and the comparison: the XDP
//! action, the verdict the program counted, and for XDP_TX every byte of the output (MACs,
//! addresses, ports, checksums updated consistently, nothing else touched). Round robin is
//! checked exactly: a new flow goes to the next active backend of its service in config order.
use std::collections::HashMap;

use lb_common::{
    maps::{FlowTimeouts, Verdict, PROTO_TCP, PROTO_UDP},
    model::{self, Action, Addr, Clock, Config, Decision, Flow, FlowKey, NatReply, Packet, State},
};

use super::scenario::NAT_PORTS;
use crate::harness::{ConfigHarness, XDP_ABORTED, XDP_DROP, XDP_PASS, XDP_TX};

/// Where the flow clock of every fresh harness starts (`scenario::harness` sets it).
pub const CLOCK_START: u32 = 1_000_000;

/// The flows and NAT entries the program must have made, as the model's [`State`], and the
/// time both are told it is.
pub struct Tracker {
    pub clock: Clock,
    flows: HashMap<FlowKey, Flow>,
    replies: HashMap<FlowKey, NatReply>,
    /// Per service: new flows balanced so far (the round-robin cursor).
    cursors: HashMap<usize, usize>,
    /// Packets the program counted per verdict.
    verdicts: HashMap<u32, u64>,
    /// For the generator: client flows and NAT reply keys that exist.
    pub client_flows: Vec<FlowKey>,
    pub reply_keys: Vec<FlowKey>,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            clock: Clock {
                now: CLOCK_START,
                timeouts: FlowTimeouts::DEFAULT,
            },
            flows: HashMap::new(),
            replies: HashMap::new(),
            cursors: HashMap::new(),
            verdicts: HashMap::new(),
            client_flows: Vec::new(),
            reply_keys: Vec::new(),
        }
    }
}

impl State for Tracker {
    fn flow(&self, key: &FlowKey) -> Option<Flow> {
        self.flows.get(key).copied()
    }

    fn nat_reply(&self, key: &FlowKey) -> Option<NatReply> {
        self.replies.get(key).copied()
    }
}

/// How the program and the model disagreed.
#[derive(Debug)]
pub struct Mismatch {
    pub aborted: bool,
    pub what: String,
}

/// Runs `frame` through both and compares; on success the tracker learns the new state.
pub fn check(
    h: &ConfigHarness,
    config: &Config,
    tracker: &mut Tracker,
    frame: &[u8],
) -> Result<Verdict, Mismatch> {
    let decision = model::decide(frame, config, tracker, &tracker.clock);
    let (action, out) = h.run(frame);
    let fail = |what: String| Mismatch {
        aborted: action == XDP_ABORTED,
        what,
    };
    if action == XDP_ABORTED {
        return Err(fail("XDP_ABORTED".into()));
    }
    let expected_action = match decision.verdict {
        Verdict::ForwardDsr | Verdict::ForwardNat | Verdict::NatReply => XDP_TX,
        v if v.is_drop() => XDP_DROP,
        _ => XDP_PASS,
    };
    let counted = counted_verdict(h, tracker, decision.verdict)?;
    if counted != decision.verdict || action != expected_action {
        return Err(fail(format!(
            "program: action {action}, verdict {counted:?}; model: action {expected_action}, verdict {:?} ({:?})",
            decision.verdict, decision.action
        )));
    }
    match decision.action {
        Action::None => {
            if out != frame {
                return Err(fail(format!(
                    "{:?}: the frame was modified",
                    decision.verdict
                )));
            }
        }
        _ => forwarded(config, tracker, frame, &out, &decision).map_err(fail)?,
    }
    Ok(decision.verdict)
}

/// The verdict the program counted for this frame (the one whose counter moved).
fn counted_verdict(
    h: &ConfigHarness,
    tracker: &mut Tracker,
    expected: Verdict,
) -> Result<Verdict, Mismatch> {
    let read = |v: Verdict| {
        h.harness
            .dataplane
            .verdict_counter(v)
            .unwrap_or_else(|e| panic!("{e:#}"))
            .packets
    };
    let seen = tracker.verdicts.entry(expected as u32).or_default();
    if read(expected) == *seen + 1 {
        *seen += 1;
        return Ok(expected);
    }
    // Not the expected one: find which moved, and resynchronise.
    let mut moved = None;
    for v in Verdict::ALL {
        let now = read(v);
        let before = tracker.verdicts.insert(v as u32, now).unwrap_or(0);
        if now != before {
            moved = Some(v);
        }
    }
    moved.ok_or_else(|| Mismatch {
        aborted: false,
        what: "no verdict counter moved".into(),
    })
}

/// XDP_TX: the output must be exactly the input with the rewrite the action calls for.
fn forwarded(
    config: &Config,
    tracker: &mut Tracker,
    frame: &[u8],
    out: &[u8],
    decision: &Decision,
) -> Result<(), String> {
    let Some(packet) = decision.packet else {
        return Err("forwarded without a parsed packet".into());
    };
    let key = packet.key;
    let now = tracker.clock.now;
    match decision.action {
        Action::Dsr { service, backend } => {
            let backend = match backend {
                Some(b) => b,
                None => tracker.next_backend(config, service),
            };
            let mac = config.services[service].backends[backend].mac;
            compare(frame, out, &packet, mac, None)?;
            tracker.after_client_packet(&packet, Flow::new(service, backend, 0, &packet, now));
        }
        Action::Nat { service, flow } => {
            let s = &config.services[service];
            let model::Mode::Nat { snat } = s.mode else {
                return Err("NAT action of a DSR service".into());
            };
            let (backend, nat_port) = match flow {
                Some(flow) => (flow.backend, flow.nat_port),
                None => (
                    tracker.next_backend(config, service),
                    port_at(out, packet.l4),
                ),
            };
            let b = &s.backends[backend];
            let rewrite = Rewrite {
                src: snat,
                dst: b.addr,
                src_port: nat_port,
                dst_port: b.port,
            };
            compare(frame, out, &packet, b.mac, Some(rewrite))?;
            if flow.is_none() {
                if !(NAT_PORTS.0..=NAT_PORTS.1).contains(&nat_port) {
                    return Err(format!("NAT port {nat_port} outside {NAT_PORTS:?}"));
                }
                let reply = FlowKey {
                    src: b.addr,
                    dst: snat,
                    src_port: b.port,
                    dst_port: nat_port,
                    proto: key.proto,
                };
                if let Some(held) = tracker.live_holder(&reply, nat_port) {
                    return Err(format!(
                        "NAT port {nat_port} towards the backend is still used by the live flow {held:?}"
                    ));
                }
                let client_mac = frame[6..12].try_into().unwrap_or_default();
                let entry = NatReply {
                    service,
                    backend,
                    client: key.src,
                    client_port: key.src_port,
                    vip: key.dst,
                    vip_port: key.dst_port,
                    client_mac,
                };
                if tracker.replies.insert(reply, entry).is_none() {
                    tracker.reply_keys.push(reply);
                }
            }
            tracker
                .after_client_packet(&packet, Flow::new(service, backend, nat_port, &packet, now));
        }
        Action::NatReply(r) => {
            let rewrite = Rewrite {
                src: r.vip,
                dst: r.client,
                src_port: r.vip_port,
                dst_port: r.client_port,
            };
            compare(frame, out, &packet, r.client_mac, Some(rewrite))?;
            let client = client_flow(&r, key.proto);
            if let Some(flow) = tracker.flows.get_mut(&client) {
                *flow = model::after_reply(flow, &packet, key.dst_port, now);
            }
        }
        Action::None => {}
    }
    Ok(())
}

impl Tracker {
    /// The next active backend of `service` (round robin in config order).
    fn next_backend(&mut self, config: &Config, service: usize) -> usize {
        let active: Vec<usize> = (0..config.services[service].backends.len())
            .filter(|&i| config.services[service].backends[i].active)
            .collect();
        let cursor = self.cursors.entry(service).or_default();
        let backend = active[*cursor % active.len()];
        *cursor += 1;
        backend
    }

    /// No flows, and the verdict counts the program already has (a program reused for shrinking).
    pub fn synced(h: &ConfigHarness) -> Self {
        let mut tracker = Tracker::default();
        for (verdict, counters) in h
            .harness
            .dataplane
            .verdict_counters()
            .unwrap_or_else(|e| panic!("{e:#}"))
        {
            tracker.verdicts.insert(verdict as u32, counters.packets);
        }
        tracker
    }

    /// A client packet the program forwarded: its flow moves on, or `new` begins (also on the
    /// addresses and ports of a flow that closed or died).
    fn after_client_packet(&mut self, packet: &Packet, new: Flow) {
        let key = packet.key;
        let now = self.clock.now;
        let next = match self.flows.get(&key) {
            Some(flow) if model::alive(flow, &self.clock) && !model::reopens(flow, packet) => {
                model::after_client_packet(flow, packet, now)
            }
            _ => new,
        };
        if self.flows.insert(key, next).is_none() {
            self.client_flows.push(key);
        }
    }

    /// The live flow that still uses the NAT port of `reply`, if any.
    fn live_holder(&self, reply: &FlowKey, nat_port: u16) -> Option<Flow> {
        let held = self.replies.get(reply)?;
        let flow = self.flows.get(&client_flow(held, reply.proto))?;
        let in_use = model::alive(flow, &self.clock)
            && flow.nat_port == nat_port
            && flow.backend == held.backend
            && flow.service == held.service;
        in_use.then_some(*flow)
    }

    /// Moves the flow clock forward by `seconds`, in the program too.
    #[track_caller]
    pub fn advance_clock(&mut self, h: &mut ConfigHarness, seconds: u32) {
        self.clock.now += seconds;
        h.harness.set_clock(self.clock.now);
    }

    pub fn flows(&self) -> usize {
        self.flows.len()
    }
}

/// The client flow a NAT entry answers.
fn client_flow(reply: &NatReply, proto: u8) -> FlowKey {
    FlowKey {
        src: reply.client,
        dst: reply.vip,
        src_port: reply.client_port,
        dst_port: reply.vip_port,
        proto,
    }
}

/// New addresses and ports of a NAT rewrite (host order ports).
struct Rewrite {
    src: Addr,
    dst: Addr,
    src_port: u16,
    dst_port: u16,
}

fn port_at(frame: &[u8], at: usize) -> u16 {
    frame
        .get(at..at + 2)
        .map_or(0, |b| u16::from_be_bytes([b[0], b[1]]))
}

/// `out` must be `frame` with the MACs moved (from our MAC to `next_hop`) and, for NAT, the
/// addresses and ports of `rewrite`, the checksums updated consistently, nothing else changed.
fn compare(
    frame: &[u8],
    out: &[u8],
    packet: &Packet,
    next_hop: [u8; 6],
    rewrite: Option<Rewrite>,
) -> Result<(), String> {
    let mut expected = frame.to_vec();
    expected[0..6].copy_from_slice(&next_hop);
    expected[6..12].copy_from_slice(&frame[0..6]);
    let Some(rewrite) = rewrite else {
        return diff(&expected, out);
    };
    let (l3, l4, v6) = (packet.l3, packet.l4, packet.key.src.v6);
    let addr_len = if v6 { 16 } else { 4 };
    let (src_at, dst_at) = if v6 {
        (l3 + 8, l3 + 24)
    } else {
        (l3 + 12, l3 + 16)
    };
    expected[src_at..src_at + addr_len].copy_from_slice(&rewrite.src.bytes[..addr_len]);
    expected[dst_at..dst_at + addr_len].copy_from_slice(&rewrite.dst.bytes[..addr_len]);
    expected[l4..l4 + 2].copy_from_slice(&rewrite.src_port.to_be_bytes());
    expected[l4 + 2..l4 + 4].copy_from_slice(&rewrite.dst_port.to_be_bytes());
    // Checksums: taken from the output, then checked for consistency below.
    let l4_check = match packet.key.proto {
        PROTO_TCP => l4 + 16,
        PROTO_UDP => l4 + 6,
        p => return Err(format!("NAT of protocol {p}")),
    };
    expected[l4_check..l4_check + 2]
        .copy_from_slice(out.get(l4_check..l4_check + 2).ok_or("output too short")?);
    if !v6 {
        expected[l3 + 10..l3 + 12].copy_from_slice(&out[l3 + 10..l3 + 12]);
    }
    diff(&expected, out)?;

    // RFC 1624: an incremental update leaves the one's-complement sum of everything the
    // checksum covers unchanged (0 and 0xFFFF are the same number).
    if !v6 {
        let header = l3..l4;
        if ones_sum(&frame[header.clone()]) != ones_sum(&out[header]) {
            return Err("IPv4 header checksum not updated consistently".into());
        }
    }
    let covered = |f: &[u8]| {
        let mut bytes = Vec::new();
        bytes.extend(&f[src_at..src_at + addr_len]);
        bytes.extend(&f[dst_at..dst_at + addr_len]);
        bytes.extend(&f[l4..l4 + 4]);
        bytes.extend(&f[l4_check..l4_check + 2]);
        ones_sum(&bytes)
    };
    let old_check = port_at(frame, l4_check);
    if packet.key.proto == PROTO_UDP && !v6 && old_check == 0 {
        if port_at(out, l4_check) != 0 {
            return Err("an IPv4 UDP datagram without checksum got one".into());
        }
    } else if covered(frame) != covered(out) {
        return Err("L4 checksum not updated consistently".into());
    }
    if packet.key.proto == PROTO_UDP && port_at(out, l4_check) == 0 && old_check != 0 {
        return Err("a UDP checksum became 0 (must be sent as 0xFFFF)".into());
    }
    Ok(())
}

/// One's-complement sum modulo 0xFFFF (so that +0 and -0 compare equal).
fn ones_sum(bytes: &[u8]) -> u64 {
    let sum: u64 = bytes
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]) as u64)
        .sum();
    sum % 0xFFFF
}

fn diff(expected: &[u8], out: &[u8]) -> Result<(), String> {
    if expected == out {
        return Ok(());
    }
    let bytes: Vec<String> = expected
        .iter()
        .zip(out)
        .enumerate()
        .filter(|(_, (e, o))| e != o)
        .take(12)
        .map(|(i, (e, o))| format!("byte {i}: got {o:#04x}, want {e:#04x}"))
        .collect();
    Err(format!(
        "output differs (len {} vs expected {}): {}",
        out.len(),
        expected.len(),
        bytes.join(", ")
    ))
}
