//! Shrinking a disagreement to a minimal frame: against a freshly loaded program and an empty
//! model state, delete bytes from the end, zero bytes, then delete bytes from the middle, keeping each
//! change while the program and the model still disagree.
use super::{
    check,
    generate::MIN_FRAME,
    scenario::{self, Scenario},
};

/// Whether `frame` alone, on a fresh program, still makes the two disagree.
pub fn reproduces(scenario: &Scenario, frame: &[u8]) -> bool {
    if frame.len() < MIN_FRAME {
        return false;
    }
    let h = scenario::harness(scenario);
    let mut tracker = check::Tracker::default();
    check::check(&h, scenario.model, &mut tracker, frame).is_err()
}

/// The smallest frame found that still disagrees (at most `budget` program loads).
pub fn shrink(scenario: &Scenario, frame: &[u8], budget: usize) -> Vec<u8> {
    let mut best = frame.to_vec();
    let mut tries = 0;
    let mut attempt = |candidate: Vec<u8>, best: &mut Vec<u8>| -> bool {
        tries += 1;
        if tries <= budget && reproduces(scenario, &candidate) {
            *best = candidate;
            return true;
        }
        false
    };
    // Shorter: halve the tail, then byte by byte.
    let mut step = best.len() / 2;
    while step > 0 {
        while best.len() > step && attempt(best[..best.len() - step].to_vec(), &mut best) {}
        step /= 2;
    }
    // Zeroed bytes.
    for at in 0..best.len() {
        if best[at] != 0 {
            let mut candidate = best.clone();
            candidate[at] = 0;
            attempt(candidate, &mut best);
        }
    }
    // Chunks out of the middle.
    for chunk in [8, 4, 2, 1] {
        let mut at = 0;
        while at + chunk <= best.len() {
            let mut candidate = best.clone();
            candidate.drain(at..at + chunk);
            if !attempt(candidate, &mut best) {
                at += chunk;
            }
        }
    }
    best
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
