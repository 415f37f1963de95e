//! `lb-bench`: the benchmarks behind `cargo xtask bench`. One module per part; each part
//! writes its own top-level keys of `target/bench/results.json` (DESIGN.md "Result files").
//!
//! - [`per_packet`]: cost per packet through BPF_PROG_TEST_RUN (`per_packet_ns`).
//! - later: `http` (requests through the lab), `flood`.
pub mod per_packet;
pub mod report;
pub mod system;
pub mod xdp_filter;
