//! When and how long to wait before trying a registry request again, and
//! how many failed sends one blob may cost in all ([`RetryBudget`]).

use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rand::Rng;
use reqwest::StatusCode;

/// Exponential backoff with full jitter, honouring `Retry-After`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Total tries of one request, the first included.
    pub attempts: u32,
    /// First backoff step; doubles each retry.
    pub base: Duration,
    /// Largest backoff step.
    pub cap: Duration,
    /// Longest `Retry-After` we are willing to wait; longer is capped.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1 = first retry).
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(after) = retry_after {
            return after.min(self.max_retry_after);
        }
        let step =
            self.base.saturating_mul(1u32.checked_shl(retry.saturating_sub(1)).unwrap_or(u32::MAX)).min(self.cap);
        // Full jitter, but never less than half the step so a burst of
        // retries still spreads out rather than hammering at once.
        let half = step / 2;
        half + rand::thread_rng().gen_range(Duration::ZERO..=half)
    }
}

/// A blob's failed sends may number this many times a request's
/// attempts, all layers together: a blob is a few requests (HEAD, POST,
/// the source's GET, PUT) and each may fail once or twice, but one that
/// keeps failing stops the blob at this bound, not at attempts × re-opens.
const BLOB_ATTEMPTS_FACTOR: u32 = 2;

impl RetryPolicy {
    /// The budget of one blob: with the default policy, 10 sends of
    /// failing requests at most (where the client's retries inside the
    /// copy's re-opens once allowed 5 × 5), whichever layer tries again.
    pub fn blob_budget(&self) -> Arc<RetryBudget> {
        Arc::new(RetryBudget::new(self.attempts.saturating_mul(BLOB_ATTEMPTS_FACTOR)))
    }
}

tokio::task_local! {
    /// The budget the running blob spends, when there is one.
    static BUDGET: Arc<RetryBudget>;
}

/// Failed sends one unit of work (a blob) may cost in all. Two layers try
/// again — the client resends a request that failed
/// ([`RetryPolicy::attempts`] times at most), the copy re-opens the source
/// and starts the blob over — and both spend from this one count, so a
/// request that keeps failing is sent at most [`RetryBudget::sends`] times
/// for the blob whichever layer retries. Each failed send is counted once,
/// by the layer that decides whether to try again: the client while its
/// own attempts last, the copy for what the client gave back.
#[derive(Debug)]
pub struct RetryBudget {
    sends: u32,
    failed: AtomicU32,
}

impl RetryBudget {
    pub fn new(sends: u32) -> Self {
        RetryBudget { sends, failed: AtomicU32::new(0) }
    }

    /// Failed sends allowed in all.
    pub fn sends(&self) -> u32 {
        self.sends
    }

    /// Failed sends counted so far.
    pub fn failed(&self) -> u32 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Counts one failed send; whether another send may follow it.
    pub fn spend(&self) -> bool {
        self.failed.fetch_add(1, Ordering::Relaxed).saturating_add(1) < self.sends
    }

    /// Runs `f` with this budget as the one the registry client's retries
    /// spend from.
    pub async fn scope<F: Future>(self: &Arc<Self>, f: F) -> F::Output {
        BUDGET.scope(self.clone(), f).await
    }
}

/// Whether a request that failed on its try number `tried` may be sent
/// again: within the policy's attempts and, inside a blob, its budget's
/// (which this failed send is counted in). Past the policy's attempts the
/// failure is not counted here: the caller that gets it back decides, and
/// counts it.
pub fn may_send_again(policy: &RetryPolicy, tried: u32) -> bool {
    tried < policy.attempts && BUDGET.try_with(|b| b.spend()).unwrap_or(true)
}

/// Statuses worth another try: timeouts, throttling, server errors.
pub fn is_retryable(status: StatusCode) -> bool {
    status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()
}

/// `Retry-After` as delta-seconds or an HTTP date.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000);
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(7));
        assert_eq!(parse_retry_after(&later, now), Some(Duration::from_secs(7)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(7));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy::default();
        for retry in 1..10 {
            let d = p.delay(retry, None);
            let step = (p.base * 2u32.pow(retry - 1)).min(p.cap);
            assert!(d >= step / 2 && d <= step, "retry {retry}: {d:?}");
        }
        assert_eq!(p.delay(1, Some(Duration::from_secs(3600))), p.max_retry_after);
    }

    #[test]
    fn a_budget_allows_its_sends_and_no_more() {
        let b = RetryBudget::new(3);
        assert!(b.spend(), "1st failed send: a 2nd may follow");
        assert!(b.spend(), "2nd: a 3rd may follow");
        assert!(!b.spend(), "3rd: the budget is spent");
        assert!(!b.spend());
        assert_eq!(b.failed(), 4);
    }

    #[tokio::test]
    async fn request_retries_spend_the_running_blobs_budget() {
        let p = RetryPolicy { attempts: 5, ..RetryPolicy::default() };
        assert!(may_send_again(&p, 4) && !may_send_again(&p, 5), "outside a blob: the policy's attempts");
        let budget = Arc::new(RetryBudget::new(3));
        budget
            .scope(async {
                assert!(may_send_again(&p, 1));
                assert!(may_send_again(&p, 2));
                assert!(!may_send_again(&p, 3), "the blob's budget ends first");
                assert!(!may_send_again(&p, 1), "and stays spent for its other requests");
            })
            .await;
        assert_eq!(budget.failed(), 4);
        let past_attempts = Arc::new(RetryBudget::new(10));
        past_attempts.scope(async { assert!(!may_send_again(&p, 5)) }).await;
        assert_eq!(past_attempts.failed(), 0, "past its attempts the client leaves the count to its caller");
    }

    #[test]
    fn retryable_statuses() {
        for s in [408, 429, 500, 502, 503] {
            assert!(is_retryable(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [400, 401, 403, 404, 409] {
            assert!(!is_retryable(StatusCode::from_u16(s).unwrap()), "{s}");
        }
    }
}
