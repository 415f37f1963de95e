//! The agent's config parser and validator on arbitrary text: it must return a config or
//! errors (with file, line and column), never panic, and finish in bounded time.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

/// The agent's own module, compiled from its source (see Cargo.toml for why not the crate).
#[path = "../../lb-userspace/src/config/mod.rs"]
#[expect(
    dead_code,
    reason = "the target calls only `parse`; the module also has what the agent uses"
)]
mod config;

/// The map sizes the config's memory budget is checked against (`config/file.rs` asks it).
#[path = "../../lb-userspace/src/sizing.rs"]
#[expect(
    dead_code,
    reason = "validation uses the estimate only; the module also reports the kernel's figures"
)]
mod sizing;

fuzz_target!(|data: &[u8]| {
    // Config files are read as UTF-8 text (`config::load`); other bytes never reach the parser.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = config::parse(Path::new("fuzz.toml"), text) {
        // Rendering locates each error in the text (line, column): part of what must not panic.
        let _ = errors.to_string();
    }
});
