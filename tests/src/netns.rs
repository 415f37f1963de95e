//! Sockets inside a lab's network namespace: the xtask library's, shared with the demo.
pub use xtask::netns::*;
