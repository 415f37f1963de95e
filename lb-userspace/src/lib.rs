//! The `lb` agent: configuration, the XDP data path and the state it is programmed from.
pub mod agent;
pub mod config;
pub mod dataplane;
pub mod neighbor;
pub mod services;
pub mod health;
pub mod http_client;
