//! Library side of `cargo xtask`: the toolchain/package setup, the network-namespace lab
//! shared by the end-to-end tests and the `run` / `demo` / `bench` / `chaos` verbs, and small
//! process helpers.
//!
//! Deliberately free of aya (and of lb-userspace) so that it builds before the BPF toolchain
//! exists. HTTP goes through hyper's client ([`http`]).

pub mod bench_table;
pub mod db_faults;
pub mod failover;
pub mod flow_flood;
pub mod forward;
pub mod hardening;
pub mod http;
pub mod lab;
pub mod load;
pub mod netns;
pub mod setup;
pub mod slowloris;
pub mod stack;
pub mod template;
pub mod util;
