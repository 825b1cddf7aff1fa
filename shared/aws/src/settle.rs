//! What becomes of a message whose task did not succeed (DESIGN §6).
//!
//! SQS's own answer to a failure is one size for all: the message comes
//! back after the queue's visibility timeout (30 minutes here) and, after
//! `maxReceiveCount` receives, goes to the dead-letter queue without a word
//! about why. That wastes every receive on what no retry can fix, waits
//! half an hour for what a minute would fix, and dead-letters the tasks of
//! a registry that is merely down for maintenance, or of a copy that is
//! merely long. So each failure carries a [`Disposition`] and is settled
//! by it, for the Lambda handler and the standalone poller alike.

use std::sync::Arc;
use std::time::Duration;

use rand::Rng;

use crate::config::WorkerSettings;
use crate::dead_letter::DeadLetters;
use crate::metrics::{self, Unit};
use crate::parking::{Parked, ParkingLot};
use crate::registry::resume::UPLOADS;
use crate::sqs::{Outgoing, Sqs};
// Where the crates' users have always found it.
pub use crate::message::Disposition;
use crate::message::{
    number_attribute, string_attribute, Failure, FailureCause, Message, CONTINUATIONS, PARKED, SOURCE, TRIED_BEFORE,
};

/// SQS's limits: `DelaySeconds` ≤ 15 minutes, visibility ≤ 12 hours.
const MAX_DELAY_SECONDS: u64 = 900;
const MAX_VISIBILITY_SECONDS: u64 = 43_200;

/// The settling delays, from the worker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    pub retry_base: Duration,
    pub retry_max: Duration,
    pub park_base: Duration,
    pub park_max: Duration,
    /// A task continued this many times without finishing is retried as
    /// an ordinary failure (it would never end otherwise).
    pub max_continuations: u32,
}

impl Timing {
    pub fn from_settings(s: &WorkerSettings) -> Timing {
        Timing {
            retry_base: Duration::from_secs(s.retry_base_seconds),
            retry_max: Duration::from_secs(s.retry_max_seconds),
            park_base: Duration::from_secs(s.park_base_seconds),
            park_max: Duration::from_secs(s.park_max_seconds),
            max_continuations: s.max_continuations,
        }
    }

    /// Visibility before attempt `receive_count + 1`.
    pub fn retry_delay(&self, receive_count: u32, retry_after: Option<Duration>) -> Duration {
        let step = grow(self.retry_base, receive_count.saturating_sub(1), self.retry_max);
        jitter(step).max(retry_after.unwrap_or_default()).min(self.retry_max)
    }

    /// Delay of a task parked `parked` times before.
    pub fn park_delay(&self, parked: u32) -> Duration {
        jitter(grow(self.park_base, parked, self.park_max))
    }
}

/// `base · 2^n`, at most `cap`.
fn grow(base: Duration, n: u32, cap: Duration) -> Duration {
    base.saturating_mul(1u32.checked_shl(n).unwrap_or(u32::MAX)).min(cap)
}

/// Between half and all of `d`: tasks failed together do not all come back
/// at the same instant.
fn jitter(d: Duration) -> Duration {
    let half = d / 2;
    half + rand::thread_rng().gen_range(Duration::ZERO..=half)
}

/// Settles failures against the copy queue (and its dead-letter queue).
pub struct Settler {
    sqs: Sqs,
    /// The copy queue; without it (a worker not told its queue) messages
    /// can only be reported failed.
    queue_url: Option<String>,
    dead_letters: Option<DeadLetters>,
    timing: Timing,
    parking: Option<Arc<ParkingLot>>,
}

impl Settler {
    pub fn new(
        sqs: aws_sdk_sqs::Client,
        queue_url: Option<String>,
        dead_letters: Option<DeadLetters>,
        timing: Timing,
    ) -> Settler {
        Settler { sqs: Sqs::new(sqs), queue_url, dead_letters, timing, parking: None }
    }

    /// Parks in `parking` instead of the copy queue.
    pub fn with_parking(mut self, parking: Option<Arc<ParkingLot>>) -> Settler {
        self.parking = parking;
        self
    }

    /// Settles `failures`; returns the ids to report failed (those SQS must
    /// deliver again). The others were dead-lettered or re-enqueued and
    /// are to be deleted like successes.
    pub async fn settle(&self, failures: Vec<Failure>) -> Vec<String> {
        let mut redeliver = Vec::new();
        let mut dead = Vec::new();
        for f in failures {
            let last = self.dead_letters.as_ref().is_some_and(|d| f.message.receive_count >= d.max_receive_count());
            let continuations_left = f.message.continuations < self.timing.max_continuations;
            let again = f.message.delivered_as().to_owned();
            match f.disposition {
                Disposition::Permanent => dead.push(f),
                Disposition::Continue if continuations_left => {
                    if !self.requeue(&f.message, Duration::ZERO, Requeue::Continued).await {
                        redeliver.push(again);
                    }
                }
                Disposition::Park { source } => match self.park(f, source).await {
                    Ok(parked) => redeliver.extend((!parked).then_some(again)),
                    Err(too_long) => dead.push(too_long),
                },
                Disposition::Retry { .. } | Disposition::Continue if last => dead.push(f),
                Disposition::Retry { retry_after } => redeliver.extend(self.retry(&f, retry_after).await),
                Disposition::Continue => redeliver.extend(self.retry(&f, None).await),
            }
        }
        let Some(d) = &self.dead_letters else {
            redeliver.extend(dead.iter().map(|f| f.message.delivered_as().to_owned()));
            return distinct(redeliver);
        };
        let unsent = d.send_all(&dead).await;
        // The task's final failure: attempts that will be retried are
        // counted by the worker (`Tasks` with Outcome `failed`), this once.
        for f in dead.iter().filter(|f| !unsent.contains(&f.message.id)) {
            metrics::emit_sliced(&[("Function", "worker")], &f.slices, &[("FinalFailures", 1.0, Unit::Count)]);
            // And by cause (a bounded set): how many an immutable tag or a denial took.
            metrics::emit(
                &[("Function", "worker"), ("Cause", f.cause.as_str())],
                &[("FinalFailures", 1.0, Unit::Count)],
            );
        }
        let unsent = dead.iter().filter(|f| unsent.contains(&f.message.id));
        redeliver.extend(unsent.map(|f| f.message.delivered_as().to_owned()));
        distinct(redeliver)
    }

    /// A task whose registry is unavailable waits in the parking lot, or
    /// without one in a fresh message delayed by its parkings. `Ok(false)`:
    /// it could not, its message is to be redelivered; `Err`: parked past
    /// the limit, to be dead-lettered.
    async fn park(&self, f: Failure, source: bool) -> Result<bool, Failure> {
        let Some(parking) = &self.parking else {
            let delay = self.timing.park_delay(f.message.parked);
            return Ok(self.requeue(&f.message, delay, Requeue::Parked).await);
        };
        let registry = if source { SOURCE } else { f.slices.registry.as_str() };
        match parking.park(&f.message, registry).await {
            Parked::Waiting => Ok(true),
            Parked::Refused => Ok(false),
            Parked::TooLong => Err(Failure {
                error: format!(
                    "parked for more than {} s waiting for registry {registry:?}; last: {}",
                    parking.limit.as_secs(),
                    f.error
                ),
                cause: FailureCause::ParkedTooLong,
                disposition: Disposition::Permanent,
                ..f
            }),
        }
    }

    /// A failed attempt that another may fix, after a backoff: its
    /// message's visibility is set to it and the message redelivered, or —
    /// for a bundle member, whose message is the bundle's — a fresh message
    /// holding its task alone waits the backoff out, counting the attempts
    /// so far. Returns the id to redeliver, if any.
    async fn retry(&self, f: &Failure, retry_after: Option<Duration>) -> Option<String> {
        let m = &f.message;
        if m.bundle.is_none() {
            self.back_off(m, retry_after, f.cause).await;
            return Some(m.id.clone());
        }
        let wait = self.timing.retry_delay(m.receive_count, retry_after);
        let apart = self.requeue(m, wait, Requeue::Retried).await;
        (!apart).then(|| m.delivered_as().to_owned())
    }

    /// Sets the message's visibility to the backoff for its next attempt.
    /// If that fails, the queue's visibility timeout applies (logged).
    async fn back_off(&self, m: &Message, retry_after: Option<Duration>, cause: FailureCause) {
        let (Some(queue), Some(receipt)) = (&self.queue_url, &m.receipt) else { return };
        let wait = self.timing.retry_delay(m.receive_count, retry_after).as_secs().clamp(1, MAX_VISIBILITY_SECONDS);
        let sent = self.sqs.change_visibility(queue, receipt, wait as i32).await;
        match sent {
            Ok(_) => {
                tracing::info!(message_id = %m.id, wait_s = wait, attempts = m.receive_count, cause = cause.as_str(), "task backs off before its next attempt")
            }
            Err(e) => {
                tracing::warn!(message_id = %m.id, error = %e, "cannot set the backoff; the queue's visibility timeout applies")
            }
        }
    }

    /// Enqueues the task again as a fresh message after `delay`, counting
    /// one more parking or continuation, or (a retry) the attempts so far.
    /// False when it could not: the original must then be redelivered.
    async fn requeue(&self, m: &Message, delay: Duration, why: Requeue) -> bool {
        let Some(queue) = &self.queue_url else { return false };
        let (parked, continuations) = match why {
            Requeue::Parked => (m.parked + 1, m.continuations),
            Requeue::Continued => (m.parked, m.continuations + 1),
            Requeue::Retried => (m.parked, m.continuations),
        };
        let delay = delay.as_secs().min(MAX_DELAY_SECONDS);
        let mut message = Outgoing::new(&m.body)
            .delay_seconds(delay as i32)
            .attribute(PARKED, number_attribute(parked.into()))
            .attribute(CONTINUATIONS, number_attribute(continuations.into()));
        if why == Requeue::Retried {
            message = message.attribute(TRIED_BEFORE, number_attribute(m.receive_count.into()));
        }
        // A continuation goes on with the uploads its run left open.
        if why == Requeue::Continued && !m.uploads.is_empty() {
            let json = serde_json::to_string(&m.uploads).expect("uploads serialize");
            message = message.attribute(UPLOADS, string_attribute(json));
        }
        let sent = self.sqs.send(queue, message).await;
        match sent {
            Ok(_) => {
                tracing::info!(message_id = %m.id, delay_s = delay, parked, continuations, attempts = m.receive_count, ?why, "task re-enqueued");
                true
            }
            Err(e) => {
                tracing::warn!(message_id = %m.id, error = %e, "cannot re-enqueue; the message is redelivered instead");
                false
            }
        }
    }
}

/// Why a task goes on in a fresh message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Requeue {
    /// Its registry is unavailable (no attempt counted).
    Parked,
    /// The deadline cut a run that made progress (no attempt counted).
    Continued,
    /// A bundle member's failed attempt (counted).
    Retried,
}

/// `ids` without repeats, in their order: the members of one bundle
/// redeliver it once.
fn distinct(ids: Vec<String>) -> Vec<String> {
    let mut seen = std::collections::HashSet::new();
    ids.into_iter().filter(|id| seen.insert(id.clone())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timing() -> Timing {
        Timing::from_settings(&WorkerSettings::default())
    }

    #[test]
    fn retries_back_off_exponentially_honouring_retry_after_within_the_cap() {
        let t = timing();
        for n in 0..20 {
            let d = t.retry_delay(n, None);
            assert!(d <= t.retry_max, "{n}: {d:?}");
            let step = grow(t.retry_base, n.saturating_sub(1), t.retry_max);
            assert!(d >= step / 2, "{n}: {d:?} under half of {step:?}");
        }
        assert!(t.retry_delay(1, None) <= t.retry_base);
        assert!(t.retry_delay(4, None) >= t.retry_base * 4, "grows: {:?}", t.retry_delay(4, None));
        assert!(t.retry_delay(1, Some(Duration::from_secs(120))) >= Duration::from_secs(120), "Retry-After honoured");
        assert_eq!(t.retry_delay(1, Some(Duration::from_secs(100_000))), t.retry_max, "but capped");
    }

    #[test]
    fn parking_grows_to_its_cap() {
        let t = timing();
        assert!(t.park_delay(0) <= t.park_base);
        assert!(t.park_delay(3) >= t.park_base * 4);
        assert!(t.park_delay(40) <= t.park_max && t.park_delay(40) >= t.park_max / 2);
    }
}
