//! The `kernel` test binary: the real XDP program loaded into the kernel with private maps and
//! driven by BPF_PROG_TEST_RUN, no network namespace. Every test here needs root and is
//! `#[ignore = "needs root"]`: `cargo xtask test` runs them as root with `--include-ignored`.
//! Run one group with a filter, e.g.
//! `cargo test --release -p lb-tests --test kernel -- --include-ignored xdp_conntrack::`.
//!
//! One binary for what used to be six: each links aya, tokio and the agent, so every extra
//! test binary cost a link of about 80 MB after any change to the tests crate. Each module
//! is one former file.
mod agent_flow_table;
mod map_memory;
mod packet_fuzz;
mod xdp_conntrack;
mod xdp_firewall;
mod xdp_program;
