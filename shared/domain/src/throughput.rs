//! The slowest a transfer may go before it counts as stalled: a setting of
//! the configuration (`worker.min_throughput_bytes_per_second`), enforced
//! by the copy engine's streams.

use std::time::Duration;

/// The slowest a blob may move, averaged over each window, before it is
/// given up (and retried, or the task settled as a transient failure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinThroughput {
    pub bytes_per_second: u64,
    pub window: Duration,
}

impl MinThroughput {
    /// The worker's default (`worker.min_throughput_bytes_per_second`,
    /// `worker.throughput_window_seconds`).
    pub const DEFAULT: MinThroughput = MinThroughput { bytes_per_second: 16 * 1024, window: Duration::from_secs(30) };

    /// With a bandwidth limit the floor is at most half the limit: the
    /// task's own throttle must never look like a slow registry.
    pub fn under_limit(self, limit_bytes_per_second: Option<u64>) -> MinThroughput {
        match limit_bytes_per_second {
            Some(l) => MinThroughput { bytes_per_second: self.bytes_per_second.min(l / 2), ..self },
            None => self,
        }
    }

    /// The bytes one window must see.
    pub fn bytes_per_window(&self) -> u64 {
        (self.bytes_per_second as f64 * self.window.as_secs_f64()) as u64
    }
}
