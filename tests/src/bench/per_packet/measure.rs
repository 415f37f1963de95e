//! How a case is measured: BPF_PROG_TEST_RUN rounds, per call or repeated, interrupted rounds dropped, the median.

use anyhow::{Context as _, Result};
use aya::programs::{TestRun, TestRunOptions, Xdp};
use lb_common::maps::Verdict;
use lb_tests::{harness::XDP_PASS, packet::TCP_ACK};
use serde_json::json;

use super::*;

pub(super) struct Run {
    pub(super) ns: f64,
    pub(super) ret: u32,
}

pub(super) fn test_run(program: &Xdp, frame: &[u8], out: &mut [u8], repeat: u32) -> Result<Run> {
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
pub(super) const INTERRUPTED_NS: f64 = 50_000.0;

/// One per-call round: `calls` pairs (xdp_pass, program) with repeat=1 on fresh frames.
/// `Ok(Err(action))`: a call returned `action` instead of the expected one.
#[allow(clippy::too_many_arguments)]
pub(super) fn per_call_round(
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

pub(super) enum Frames {
    Fixed(Vec<u8>),
    /// Frame `i` is new flow number `i`.
    NewFlows,
    /// Frame `i` is flow number `i % n`, all `n` established beforehand.
    Established(u32),
}

impl Frames {
    pub(super) fn get(&self, i: u64) -> std::borrow::Cow<'_, [u8]> {
        match self {
            Frames::Fixed(frame) => std::borrow::Cow::Borrowed(frame),
            Frames::NewFlows => std::borrow::Cow::Owned(new_flow_frame(i)),
            Frames::Established(n) => {
                std::borrow::Cow::Owned(flow_frame(i % u64::from(*n), TCP_ACK))
            }
        }
    }
}

pub(super) enum Method<'a> {
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
pub(super) enum Round {
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
pub(super) enum Scene {
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
pub(super) struct Tally(pub(super) Vec<((Scene, Verdict), u64)>);

impl Tally {
    pub(super) fn add(&mut self, key: (Scene, Verdict), n: u64) {
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some((_, count)) => *count += n,
            None => self.0.push((key, n)),
        }
    }
}

pub(super) struct Case<'a> {
    pub(super) key: &'static str,
    pub(super) method: Method<'a>,
    pub(super) expect: u32,
    pub(super) counted_as: Option<(Scene, Verdict)>,
    pub(super) method_text: String,
    pub(super) notes: Vec<String>,
    pub(super) rounds: Vec<Round>,
    /// Runs of the program made by this case (repeats or calls).
    pub(super) runs: u64,
    pub(super) failure: Option<String>,
}

impl<'a> Case<'a> {
    pub(super) fn new(
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

    pub(super) fn unavailable(key: &'static str, reason: impl Into<String>) -> Self {
        let mut case = Case::new(key, Method::None, 0, None);
        case.failure = Some(reason.into());
        case
    }

    pub(super) fn note(mut self, note: impl Into<String>) -> Self {
        self.notes.push(note.into());
        self
    }

    pub(super) fn fail(&mut self, why: String) {
        if self.failure.is_none() {
            eprintln!("lb-bench: {}: {why}", self.key);
            self.failure = Some(why);
        }
    }

    pub(super) fn round(&mut self, out: &mut [u8]) {
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
    pub(super) fn estimates(&self, floor: &[f64]) -> Vec<f64> {
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

    pub(super) fn outcome(&self, floor: &[f64], frame_len: usize) -> Outcome {
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

pub(super) fn median(values: &[f64]) -> f64 {
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
