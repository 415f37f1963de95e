//! The agent's configuration file (TOML): parsing, then validation of everything the data path
//! relies on. Errors name the file, the line and column, what is wrong and how to fix it. The
//! file's form, with spans, stays in `file.rs`; the agent runs on the validated `model.rs`.
mod error;
mod file;
mod model;
#[cfg(test)]
mod tests;
mod validate;

use std::path::Path;

pub use self::{error::*, model::*};

/// Reads, parses and validates a config file.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigErrors(vec![ConfigError {
            file: path.to_owned(),
            line: 0,
            column: 0,
            message: format!("cannot read the file: {e}"),
            fix: "check the path and its permissions".into(),
        }])
    })?;
    parse(path, &text)
}

/// Parses and validates config text; `path` is only used in messages.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigErrors> {
    file::parse(path, text)
}
