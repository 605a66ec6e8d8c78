//! How much a tenant may do: the bounds the use cases enforce, as the operator set them.

use std::time::Duration;

/// How much a tenant's schedules may start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleLimits {
    /// Schedules one tenant may have active at once.
    pub per_tenant: usize,
    /// Runs one tenant's schedules may start in a minute; ticks past it are let pass.
    pub runs_per_minute: usize,
    /// The shortest time a schedule may leave between two runs.
    pub min_interval: Duration,
}

impl Default for ScheduleLimits {
    fn default() -> Self {
        Self {
            per_tenant: 10,
            runs_per_minute: 10,
            min_interval: Duration::from_secs(60),
        }
    }
}

/// How much raw data a tenant may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UploadLimits {
    /// The most bytes of one upload.
    pub max_bytes: u64,
    /// The most bytes a tenant may keep under `raw/`.
    pub quota_bytes: u64,
}

impl Default for UploadLimits {
    fn default() -> Self {
        Self {
            max_bytes: 1 << 30,
            quota_bytes: 10 << 30,
        }
    }
}
