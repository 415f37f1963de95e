//! `lb-bench`: the benchmarks behind `cargo xtask bench`. One module per part; each part
//! writes its own top-level keys of `target/bench/results.json` (docs/BENCHMARKS.md, "Command").
//!
//! - [`per_packet`]: cost per packet through BPF_PROG_TEST_RUN (`per_packet_ns`);
//! - [`http`]: requests through HAProxy, nginx and our load balancer in a lab (`http`), with
//!   [`latency`] measuring each at one fixed request rate;
//! - [`flood`]: legit requests under a bounded flood, and its generator (`flood`);
//! - [`conn_rate`]: new TCP connections per second through each load balancer (`conn_rate`);
//! - [`nat_churn`]: a million distinct client tuples through the NAT VIP (`nat_churn`);
//! - [`summary`]: all tables, the target ratios and the chart.
pub mod conn_rate;
pub mod flood;
pub mod http;
pub mod labkit;
pub mod latency;
pub mod nat_churn;
pub mod per_packet;
pub mod report;
pub mod summary;
pub mod system;
pub mod xdp_filter;
