//! Shrinking a disagreement to a minimal frame: against a freshly loaded program and an empty
//! model state, delete bytes from the end, zero bytes, then delete bytes from the middle, keeping each
//! change while the program and the model still disagree.
use lb_common::maps::Verdict;

use super::{
    check,
    generate::MIN_FRAME,
    scenario::{self, Scenario},
};
use crate::harness::ConfigHarness;

/// Runs candidates on one loaded program while they leave no state behind: it is reloaded after
/// a candidate that was forwarded or that disagreed (either may have made flows).
struct Probe<'a> {
    scenario: &'a Scenario,
    loaded: Option<ConfigHarness>,
    budget: usize,
}

impl Probe<'_> {
    /// Whether `frame`, on a program without flows, still makes the two disagree.
    fn disagrees(&mut self, frame: &[u8]) -> bool {
        if frame.len() < MIN_FRAME || self.budget == 0 {
            return false;
        }
        self.budget -= 1;
        let scenario = self.scenario;
        let h = self
            .loaded
            .get_or_insert_with(|| scenario::harness(scenario));
        let mut tracker = check::Tracker::synced(h);
        let result = check::check(h, scenario.model, &mut tracker, frame);
        let clean = matches!(result, Ok(v) if !matches!(v, Verdict::ForwardDsr | Verdict::ForwardNat | Verdict::NatReply));
        if !clean {
            self.loaded = None;
        }
        result.is_err()
    }
}

/// Whether `frame` alone, on a fresh program, makes the program and the model disagree.
pub fn reproduces(scenario: &Scenario, frame: &[u8]) -> bool {
    Probe {
        scenario,
        loaded: None,
        budget: 1,
    }
    .disagrees(frame)
}

/// The smallest frame found that still disagrees (at most `budget` candidates), passes
/// repeated until none makes progress.
pub fn shrink(scenario: &Scenario, frame: &[u8], budget: usize) -> Vec<u8> {
    let mut probe = Probe {
        scenario,
        loaded: None,
        budget,
    };
    let mut best = frame.to_vec();
    loop {
        let before = best.clone();
        // Shorter: halve the tail, then byte by byte.
        let mut step = best.len() / 2;
        while step > 0 {
            while best.len() > step && probe.disagrees(&best[..best.len() - step]) {
                best.truncate(best.len() - step);
            }
            step /= 2;
        }
        // Zeroed: runs of 8 bytes, then single bytes.
        for width in [8, 1] {
            for at in (0..best.len()).step_by(width) {
                let end = (at + width).min(best.len());
                if best[at..end].iter().any(|&b| b != 0) {
                    let mut candidate = best.clone();
                    candidate[at..end].fill(0);
                    if probe.disagrees(&candidate) {
                        best = candidate;
                    }
                }
            }
        }
        // Chunks out of the middle.
        for chunk in [8, 4, 2, 1] {
            let mut at = 0;
            while at + chunk <= best.len() {
                let mut candidate = best.clone();
                candidate.drain(at..at + chunk);
                if probe.disagrees(&candidate) {
                    best = candidate;
                } else {
                    at += chunk;
                }
            }
        }
        if best == before || probe.budget == 0 {
            return best;
        }
    }
}

/// `frame` as a Rust array, to paste into a regression test.
pub fn rust_array(frame: &[u8]) -> String {
    let mut text = format!("let frame: [u8; {}] = [\n", frame.len());
    for line in frame.chunks(16) {
        let bytes: Vec<String> = line.iter().map(|b| format!("0x{b:02x}")).collect();
        text.push_str(&format!("    {},\n", bytes.join(", ")));
    }
    text.push_str("];");
    text
}
