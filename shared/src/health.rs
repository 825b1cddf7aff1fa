//! Per-destination health: a circuit breaker fed by connection failures
//! and server errors.
//!
//! A cluster registry down for a maintenance window would otherwise turn
//! every task for it into failed receives (and, after `maxReceiveCount`,
//! into dead letters), each one waiting on connections first. After
//! `threshold` unavailable answers in a row the breaker opens: tasks for
//! that destination are parked at once (no request, no failed attempt,
//! see [`crate::message::Disposition::Park`]). When the open period ends,
//! one task probes the registry (`GET /v2/`); an answer closes the breaker
//! and the parked tasks run as they come back, a failure opens it again
//! for a longer period. Other destinations never wait on this one.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// What a task for this destination may do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Healthy: go ahead.
    Closed,
    /// Unavailable: park without trying.
    Open,
    /// The open period is over and this caller is the one to probe.
    Probe,
}

#[derive(Debug)]
pub struct Health {
    /// Unavailable answers since the last success.
    failures: AtomicU32,
    /// Set while open: when the next probe is due.
    open_until: Mutex<Option<Instant>>,
    /// Times opened since the last success: each open period is longer.
    opened: AtomicU32,
    threshold: u32,
    period_base: Duration,
    period_max: Duration,
}

impl Health {
    pub fn new(threshold: u32, period_base: Duration, period_max: Duration) -> Health {
        Health {
            failures: AtomicU32::new(0),
            open_until: Mutex::new(None),
            opened: AtomicU32::new(0),
            threshold: threshold.max(1),
            period_base,
            period_max,
        }
    }

    pub fn gate(&self) -> Gate {
        let mut open_until = self.open_until.lock().expect("health lock");
        match *open_until {
            None => Gate::Closed,
            Some(t) if Instant::now() < t => Gate::Open,
            Some(_) => {
                // One prober per period: the others stay parked meanwhile.
                *open_until = Some(Instant::now() + self.period());
                Gate::Probe
            }
        }
    }

    pub fn is_open(&self) -> bool {
        self.open_until.lock().expect("health lock").is_some()
    }

    pub fn record_success(&self) {
        self.failures.store(0, Ordering::Relaxed);
        self.opened.store(0, Ordering::Relaxed);
        let was_open = self.open_until.lock().expect("health lock").take().is_some();
        if was_open {
            tracing::info!("destination answers again: breaker closed");
        }
    }

    pub fn record_unavailable(&self) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let mut open_until = self.open_until.lock().expect("health lock");
        if failures >= self.threshold || open_until.is_some() {
            let period = self.period();
            self.opened.fetch_add(1, Ordering::Relaxed);
            if open_until.is_none() {
                tracing::warn!(
                    failures,
                    period_s = period.as_secs(),
                    "destination unavailable: breaker open, its tasks are parked"
                );
            }
            *open_until = Some(Instant::now() + period);
        }
    }

    fn period(&self) -> Duration {
        let n = self.opened.load(Ordering::Relaxed);
        self.period_base.saturating_mul(1u32.checked_shl(n).unwrap_or(u32::MAX)).min(self.period_max)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_probes_once_per_period_and_closes_on_success() {
        let h = Health::new(3, Duration::from_millis(40), Duration::from_secs(1));
        h.record_unavailable();
        h.record_unavailable();
        assert_eq!(h.gate(), Gate::Closed, "below the threshold");
        h.record_unavailable();
        assert_eq!(h.gate(), Gate::Open);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(h.gate(), Gate::Probe, "the period is over: one probe");
        assert_eq!(h.gate(), Gate::Open, "the others wait for it");
        h.record_unavailable();
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(h.gate(), Gate::Open, "a failed probe opens it for longer");
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(h.gate(), Gate::Probe);
        h.record_success();
        assert_eq!(h.gate(), Gate::Closed);
        assert!(!h.is_open());
    }
}
