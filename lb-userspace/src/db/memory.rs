//! What the watch must not forget across a reload or a restart of the agent: who the primary is,
//! the [`Ledger`] of its acknowledged writes, and a promotion decided but not confirmed done.
//! Without it an agent restarted mid-failover would start with no primary and no proof.
//!
//! Saved as JSON in `database.state_file` (written to a temporary file and renamed, mode 0600),
//! only when it changes: a new primary, a ledger change, a promotion starting or ending.
use std::{
    io::Write as _,
    os::unix::fs::OpenOptionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use super::decision::Ledger;

/// A failover that happened.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverRecord {
    pub from: String,
    pub to: String,
    pub at_unix: u64,
    /// From the first failed probe of the old primary to the new one being writable.
    pub duration_ms: u64,
    /// An operator's `lb db promote --force`, not the watch's own decision.
    #[serde(default)]
    pub forced: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Memory {
    /// The primary's node name.
    pub primary: Option<String>,
    /// A promotion started (this node) and not known to be done.
    pub promoting: Option<String>,
    pub ledger: Option<Ledger>,
    pub failovers: u64,
    pub last_failover: Option<FailoverRecord>,
}

impl Memory {
    /// The memory saved at `path`; none when there is no file yet.
    pub fn load(path: &Path) -> Result<Option<Memory>> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("{} is not the database watch's memory", path.display()))
    }

    /// Saves atomically: a crash leaves the old file or the new one, never half of one.
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self)?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut temporary = PathBuf::from(path);
        temporary.as_mut_os_string().push(".new");
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&temporary)
            .with_context(|| format!("creating {}", temporary.display()))?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
            .with_context(|| format!("renaming {} to {}", temporary.display(), path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::gtid::GtidPosition;

    #[test]
    fn memory_survives_a_save_and_load() {
        let dir = std::env::temp_dir().join(format!("lb-db-memory-{}", std::process::id()));
        let path = dir.join("database.json");
        assert_eq!(Memory::load(&path).ok().flatten(), None);
        let memory = Memory {
            primary: Some("db1".into()),
            promoting: Some("db2".into()),
            ledger: Some(Ledger {
                primary: "db1".into(),
                required: GtidPosition::parse("0-1-7").unwrap_or_default(),
                semi_sync: true,
                covering: ["db2".to_string()].into(),
                ..Ledger::default()
            }),
            failovers: 1,
            last_failover: None,
        };
        memory.save(&path).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!(Memory::load(&path).ok().flatten(), Some(memory));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).map(|m| m.permissions().mode() & 0o777);
        assert_eq!(mode.ok(), Some(0o600));
        std::fs::write(&path, "{ not json").unwrap_or_else(|e| panic!("{e}"));
        assert!(
            Memory::load(&path).is_err(),
            "a damaged file is an error, not a blank memory"
        );
        std::fs::remove_dir_all(&dir).ok();
    }
}
