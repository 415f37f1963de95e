//! Wall-clock times as Unix seconds, the form the API and the database's failover records use.
use std::time::SystemTime;

/// Seconds since the Unix epoch (0 for a time before it).
pub fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
