//! The `lb` agent: configuration, the XDP data path and the state it is programmed from, health
//! checks, the status API and its command-line client.
pub mod agent;
pub mod api;
pub mod cli;
pub mod config;
pub mod dataplane;
pub mod firewall;
pub mod health;
pub mod http_client;
pub mod metrics;
pub mod neighbor;
pub mod services;
