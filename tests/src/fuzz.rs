//! Packet fuzzing against the reference model (`lb_common::model`): structured random and
//! mutated frames through the real XDP program (BPF_PROG_TEST_RUN) and through the model with
//! the same configuration; XDP_ABORTED and every disagreement are counted, and a disagreement
//! is shrunk to a minimal frame printed as a Rust array.
//!
//! The program keeps state (flow table, NAT table, round-robin cursors) and so does the model's
//! [`check::Tracker`]; both start afresh every `chunk` packets, so that no LRU eviction and no
//! NAT port exhaustion can make them drift apart.
pub mod check;
pub mod generate;
pub mod scenario;
pub mod shrink;

use std::{collections::BTreeMap, time::Instant};

use scenario::Scenario;

use generate::{Generator, Rng};

pub struct Options {
    pub packets: u64,
    pub seed: u64,
    /// Packets per fresh program and state.
    pub chunk: u64,
    /// Draw IPv6 sources that spell allowed IPv4 prefixes, and the reverse (a fixed bug).
    pub cross_family: bool,
    /// Disagreements shrunk and printed (the rest are only counted).
    pub shrink_max: usize,
    /// Stop after this many disagreements.
    pub max_mismatches: u64,
    /// Configurations, one per chunk in turn (a wrong model shows the checks bite).
    pub scenarios: &'static [Scenario],
}

impl Default for Options {
    fn default() -> Self {
        Options {
            packets: 100_000,
            seed: 1,
            chunk: 25_000,
            cross_family: true,
            shrink_max: 3,
            max_mismatches: u64::MAX,
            scenarios: &scenario::ALL,
        }
    }
}

#[derive(Default)]
pub struct Report {
    pub packets: u64,
    pub aborted: u64,
    pub model_mismatches: u64,
    /// Packets per verdict (coverage).
    pub verdicts: BTreeMap<&'static str, u64>,
    /// Shrunk disagreements: the message and the frame as a Rust array.
    pub shrunk: Vec<(String, String)>,
    pub seconds: f64,
}

impl Report {
    pub fn summary(&self) -> String {
        let mut text = format!(
            "packet fuzz: {} packets in {:.1} s, {} aborted, {} model mismatches\nverdicts:",
            self.packets, self.seconds, self.aborted, self.model_mismatches
        );
        for (name, count) in &self.verdicts {
            text.push_str(&format!("\n  {name:<26} {count}"));
        }
        for (what, frame) in &self.shrunk {
            text.push_str(&format!("\nMISMATCH: {what}\nminimal frame:\n{frame}"));
        }
        text
    }
}

pub fn run(options: &Options) -> Report {
    let started = Instant::now();
    let mut report = Report::default();
    let mut rng = Rng::new(options.seed);
    let generator = Generator {
        cross_family: options.cross_family,
    };
    let mut chunks = options.scenarios.iter().cycle();
    while report.packets < options.packets && report.model_mismatches < options.max_mismatches {
        let scenario = chunks.next().expect("at least one scenario");
        let config = scenario.model;
        let mut h = scenario::harness(scenario);
        let mut tracker = check::Tracker::default();
        let chunk = options.chunk.min(options.packets - report.packets);
        for _ in 0..chunk {
            // Now and then time passes: around each state's idle limit, or past them all.
            if rng.chance(1) {
                let seconds = rng.pick(&[1, 2, 9, 11, 59, 61, 899, 901, 5000]);
                tracker.advance_clock(&mut h, seconds);
            }
            let frame = generator.frame(&mut rng, &tracker);
            report.packets += 1;
            match check::check(&h, config, &mut tracker, &frame) {
                Ok(verdict) => *report.verdicts.entry(verdict.name()).or_default() += 1,
                Err(mismatch) => {
                    report.aborted += mismatch.aborted as u64;
                    report.model_mismatches += 1;
                    // Each kind of disagreement is shrunk once (shrinking reloads the program).
                    let new_kind = !report
                        .shrunk
                        .iter()
                        .any(|(what, _)| what.contains(&mismatch.what));
                    if new_kind && report.shrunk.len() < options.shrink_max {
                        report.shrunk.push(explain(
                            scenario,
                            &frame,
                            &format!("[{}] {}", scenario.name, mismatch.what),
                        ));
                    }
                    // The two states may have drifted apart: start afresh.
                    break;
                }
            }
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    report
}

/// The disagreement and its minimal frame (or the frame whole, when it needs the history).
fn explain(scenario: &Scenario, frame: &[u8], what: &str) -> (String, String) {
    if !shrink::reproduces(scenario, frame) {
        return (
            format!("{what} (needs the earlier packets of its chunk: not shrunk)"),
            shrink::rust_array(frame),
        );
    }
    let minimal = shrink::shrink(scenario, frame, 2000);
    let h = scenario::harness(scenario);
    let mut tracker = check::Tracker::default();
    let now = check::check(&h, scenario.model, &mut tracker, &minimal)
        .err()
        .map_or(String::new(), |m| m.what);
    (
        format!(
            "{what}\n  shrunk ({} -> {} bytes): {now}",
            frame.len(),
            minimal.len()
        ),
        shrink::rust_array(&minimal),
    )
}
