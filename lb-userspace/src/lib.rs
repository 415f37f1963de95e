//! The `lb` agent: configuration, the XDP data path and the state it is programmed from, health
//! checks, the status API and its command-line client.
// The hand-written OpenAPI document is one large `json!` literal.
#![recursion_limit = "512"]

pub mod agent;
pub mod api;
pub mod check_metrics;
pub mod cli;
pub mod config;
pub mod dataplane;
pub mod db;
pub mod firewall;
pub mod health;
pub mod http_client;
pub mod metrics;
pub mod neighbor;
pub mod services;
pub mod sizing;
pub mod state;
pub mod unix_time;
