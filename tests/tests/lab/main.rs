//! The `lab` test binary: the real agent, nginx, lb-web, MariaDB and Chromium in network
//! namespaces (xtask's lab, one prefix `lbt-...-` per test). Every test here needs root and is
//! `#[ignore = "needs root"]`: `cargo xtask test` runs them as root with `--include-ignored`
//! and one test thread. Run one group with a filter, e.g.
//! `cargo test --release -p lb-tests --test lab -- --include-ignored --test-threads=1 e2e_firewall::`.
//!
//! One binary for what used to be eleven (see `tests/tests/kernel/main.rs` for why). Each
//! module is one former file.
mod agent_api;
mod agent_health;
mod agent_host_and_nat;
mod agent_mac;
mod agent_restart;
mod app_stack;
mod dashboard;
mod db_failover;
mod e2e_dataplane;
mod e2e_firewall;
mod e2e_flows;
mod e2e_pmtu;
mod hardening;
mod web_app;
