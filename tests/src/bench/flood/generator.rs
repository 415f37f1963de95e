//! `lb-bench flood-gen`: the flood itself, frames of one kind sent with BPF_PROG_TEST_RUN in
//! live-frames mode (XDP_TX out of the generator's interface) at a paced rate.
use std::{
    net::Ipv4Addr,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use aya::{
    programs::{TestRun, TestRunAttrs, TestRunOptions, Xdp},
    EbpfLoader,
};
use lb_common::maps::{TxPace, TX_HEADER_BYTES};
use lb_tests::packet::Frame;
use serde_json::{json, Value};

use super::labkit::round;

#[derive(Clone, Debug)]
pub struct GenArgs {
    pub iface: String,
    pub dst_mac: [u8; 6],
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub dport: u16,
    pub packets: u64,
    pub seconds: f64,
    pub batch: u32,
    /// Target packets per second (0: as fast as the kernel takes them).
    pub pps: u64,
    /// What each frame is.
    pub kind: GenKind,
    /// Spoofed sources: this many low bits of the source address, the source port (1024-65535)
    /// and a TCP frame's sequence number are drawn at random for every frame
    /// (`xdp_tx_spoofed`); 0: every frame is the same.
    pub spoof_bits: u8,
}

/// The frames of a flood.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GenKind {
    Udp,
    /// TCP SYN: opens a flow (in the table of unverified flows) when sent to a service.
    Syn,
    /// TCP ACK without a connection: `drop_no_flow` at a service.
    Ack,
}

impl GenKind {
    pub fn parse(text: &str) -> Result<Self> {
        match text {
            "udp" => Ok(GenKind::Udp),
            "syn" => Ok(GenKind::Syn),
            "ack" => Ok(GenKind::Ack),
            other => bail!("--kind {other:?}: expected udp, syn or ack"),
        }
    }
}

pub fn parse_mac(text: &str) -> Result<[u8; 6]> {
    lb_userspace::firewall::parse_mac(text.trim())
        .ok_or_else(|| anyhow::anyhow!("{text:?} is not a MAC address (aa:bb:cc:dd:ee:ff)"))
}

/// Sends at most `packets` frames in at most `seconds`, as fast as the kernel takes them.
/// Prints one JSON line: packets sent, seconds, pps.
pub fn generate(a: &GenArgs) -> Result<Value> {
    let mac_text = std::fs::read_to_string(format!("/sys/class/net/{}/address", a.iface))
        .with_context(|| format!("no interface {} here", a.iface))?;
    let src_mac = parse_mac(&mac_text)?;
    let ifindex = std::fs::read_to_string(format!("/sys/class/net/{}/ifindex", a.iface))?
        .trim()
        .parse::<u32>()?;
    if a.spoof_bits > 16 {
        bail!("--spoof-bits {} is more than 16", a.spoof_bits);
    }
    let (src, dst) = ((a.src.into(), 40_000), (a.dst.into(), a.dport));
    let frame = match a.kind {
        GenKind::Udp => Frame::udp(src, dst),
        GenKind::Syn => Frame::tcp(src, dst),
        GenKind::Ack => Frame::tcp(src, dst).tcp_flags(lb_tests::packet::TCP_ACK),
    }
    .macs(src_mac, a.dst_mac)
    .build();
    // The address bits to draw, as the address sits in the frame (network order).
    let src_mask = u32::from_ne_bytes((((1u64 << a.spoof_bits) - 1) as u32).to_be_bytes());
    let spoofed = a.spoof_bits > 0;

    // Only the xdp_tx program of the object is loaded; the maps it creates are unused, so the
    // big LRU tables are made small.
    let mut loader = EbpfLoader::new();
    for name in [
        "FLOWS",
        "FLOWS_V4",
        "FLOWS_V6",
        "NAT_REVERSE",
        "NAT_REVERSE_V4",
        "NAT_REVERSE_V6",
        "RATE_BUCKETS",
    ] {
        loader.map_max_entries(name, 1024);
    }
    let mut ebpf = loader
        .load(lb_userspace::dataplane::OBJECT)
        .context("loading the XDP object")?;
    // Paced: the program spaces the frames itself (`xdp_tx_paced`); user space only sleeps
    // when the count runs ahead, e.g. when the clock spin of a frame hit its bound. Every
    // program writes `headers` back into each frame before it leaves.
    let interval_ns = 1_000_000_000u64.checked_div(a.pps);
    let mut headers = [0u8; TX_HEADER_BYTES];
    let built = frame.len().min(TX_HEADER_BYTES);
    headers[..built].copy_from_slice(&frame[..built]);
    let mut pace: aya::maps::Array<_, TxPace> = aya::maps::Array::try_from(
        ebpf.map_mut(lb_common::names::TX_PACE)
            .context("no TX_PACE map in the object")?,
    )?;
    pace.set(
        0,
        TxPace {
            interval_ns: interval_ns.unwrap_or(0),
            next_ns: 0,
            src_mask,
            port_min: 1024,
            port_span: u16::MAX - 1024,
            headers,
            _pad: [0; 2],
        },
        0,
    )?;
    let name = if spoofed {
        lb_common::names::PROGRAM_TX_SPOOFED
    } else if interval_ns.is_some() {
        lb_common::names::PROGRAM_TX_PACED
    } else {
        lb_common::names::PROGRAM_TX
    };
    let program: &mut Xdp = ebpf
        .program_mut(name)
        .with_context(|| format!("no {name} program in the object"))?
        .try_into()?;
    program.load().with_context(|| format!("loading {name}"))?;

    // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index, egress_ifindex.
    let mut ctx = [0u8; 24];
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());

    // Big calls: each live-frames call costs milliseconds to set up and tear down (about 25 ms
    // measured here), so a call carries 500 ms worth of frames, or 65536 unpaced.
    let chunk: u64 = if a.pps == 0 {
        1 << 16
    } else {
        (a.pps / 2).max(u64::from(a.batch))
    };
    let started = Instant::now();
    let limit = Duration::from_secs_f64(a.seconds);
    let mut sent = 0u64;
    let mut calls = 0u64;
    while sent < a.packets && started.elapsed() < limit {
        if a.pps > 0 {
            let due = Duration::from_secs_f64(sent as f64 / a.pps as f64);
            if let Some(ahead) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(ahead);
            }
        }
        let repeat = chunk.min(a.packets - sent) as u32;
        program
            .test_run(TestRunOptions {
                data_in: Some(&frame),
                ctx_in: Some(&ctx),
                repeat,
                attrs: TestRunAttrs::new().xdp_live_frames(a.batch),
                ..TestRunOptions::new()
            })
            .context("BPF_PROG_TEST_RUN (live frames)")?;
        sent += u64::from(repeat);
        calls += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    Ok(json!({
        "packets": sent,
        "seconds": round(seconds, 3),
        "pps": round(sent as f64 / seconds.max(1e-9), 0),
        "calls": calls,
        "frame_len": frame.len(),
        "batch": a.batch,
        "target_pps": a.pps,
        "kind": format!("{:?}", a.kind).to_lowercase(),
        "spoof_bits": a.spoof_bits,
    }))
}

// ---------------------------------------------------------------------------------------
// The part.
