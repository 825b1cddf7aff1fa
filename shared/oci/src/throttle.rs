//! Harbor's per-task bandwidth limit ("speed", kilobits per second): the
//! blobs of one task share one budget, whatever their parallelism.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

pub struct Throttle {
    bytes_per_sec: f64,
    start: Instant,
    sent: AtomicU64,
}

impl Throttle {
    /// 1 kbit/s = 1000 bits/s = 125 bytes/s.
    pub fn from_kbps(kbps: u64) -> Throttle {
        Throttle { bytes_per_sec: kbps as f64 * 125.0, start: Instant::now(), sent: AtomicU64::new(0) }
    }

    pub fn bytes_per_second(&self) -> u64 {
        self.bytes_per_sec as u64
    }

    /// Accounts for `n` bytes and waits until sending them keeps the
    /// average rate since the start at or below the limit.
    pub async fn take(&self, n: usize) {
        let sent = self.sent.fetch_add(n as u64, Ordering::Relaxed) + n as u64;
        let due = self.start + Duration::from_secs_f64(sent as f64 / self.bytes_per_sec);
        tokio::time::sleep_until(due).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn holds_the_rate() {
        let t = Throttle::from_kbps(800); // 100 000 bytes/s
        let started = Instant::now();
        for _ in 0..10 {
            t.take(50_000).await;
        }
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(4990) && elapsed <= Duration::from_millis(5100), "{elapsed:?}");
    }
}
