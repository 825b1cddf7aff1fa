//! Time bounds that per-read timeouts miss. A registry that sends one byte
//! every few seconds never trips a read timeout, and a `Retry-After` of a
//! minute is a fine answer to a standalone worker but not to an invocation
//! with ten seconds left: without these, either holds a worker until the
//! Lambda timeout kills the whole batch.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::Stream;

tokio::task_local! {
    /// The instant after which the running task starts no wait (the
    /// invocation deadline minus the margin), when it has one.
    static STOP_AT: Option<Instant>;
}

/// Runs `f` with `stop_at` as the limit for the registry client's waits.
pub async fn within<F: Future>(stop_at: Option<Instant>, f: F) -> F::Output {
    STOP_AT.scope(stop_at, f).await
}

/// Whether waiting `wait` before trying again still ends before the task's
/// deadline. Outside [`within`] (and standalone) every wait fits.
pub fn wait_fits(wait: Duration) -> bool {
    STOP_AT.try_with(|s| *s).ok().flatten().is_none_or(|t| Instant::now() + wait < t)
}

/// The slowest a blob may move, averaged over each window, before it is
/// given up (and retried, or the task settled as a transient failure).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinThroughput {
    pub bytes_per_second: u64,
    pub window: Duration,
}

impl MinThroughput {
    /// With a bandwidth limit the floor is at most half the limit: the
    /// task's own throttle must never look like a slow registry.
    pub fn under_limit(self, limit_bytes_per_second: Option<u64>) -> MinThroughput {
        match limit_bytes_per_second {
            Some(l) => MinThroughput { bytes_per_second: self.bytes_per_second.min(l / 2), ..self },
            None => self,
        }
    }

    pub fn bytes_per_window(&self) -> u64 {
        (self.bytes_per_second as f64 * self.window.as_secs_f64()) as u64
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A byte stream that fails when fewer than the minimum bytes passed in a
/// window — measured end to end, so a source that trickles and a
/// destination that accepts a trickle are both caught.
pub struct Paced<S> {
    inner: S,
    floor: u64,
    min: MinThroughput,
    seen: u64,
    window_end: Pin<Box<tokio::time::Sleep>>,
}

impl<S> Paced<S> {
    pub fn new(inner: S, min: MinThroughput) -> Paced<S> {
        Paced {
            inner,
            floor: min.bytes_per_window(),
            min,
            seen: 0,
            window_end: Box::pin(tokio::time::sleep(min.window)),
        }
    }
}

/// The stream moved slower than the minimum.
#[derive(Debug, thiserror::Error)]
#[error("blob moved {seen} bytes in {window:?}, below the minimum of {min} bytes/s; giving up on this attempt")]
pub struct TooSlow {
    pub seen: u64,
    pub window: Duration,
    pub min: u64,
}

impl<S, E> Stream for Paced<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<BoxError>,
{
    type Item = Result<Bytes, BoxError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.window_end.as_mut().poll(cx).is_ready() {
            if this.seen < this.floor && this.floor > 0 {
                let e = TooSlow { seen: this.seen, window: this.min.window, min: this.min.bytes_per_second };
                return Poll::Ready(Some(Err(e.into())));
            }
            this.seen = 0;
            let next = tokio::time::Instant::now() + this.min.window;
            this.window_end.as_mut().reset(next);
            // Registers the new window's wake-up.
            let _ = this.window_end.as_mut().poll(cx);
        }
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(Some(Ok(chunk))) => {
                this.seen += chunk.len() as u64;
                Poll::Ready(Some(Ok(chunk)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    const MIN: MinThroughput = MinThroughput { bytes_per_second: 1000, window: Duration::from_secs(10) };

    /// `n` chunks of `size` bytes, `gap` apart.
    fn drip(n: usize, size: usize, gap: Duration) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Unpin {
        Box::pin(futures_util::stream::iter(0..n).then(move |_| async move {
            tokio::time::sleep(gap).await;
            Ok(Bytes::from(vec![0u8; size]))
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_fails_after_one_window() {
        // 100 bytes a second: a tenth of the minimum.
        let mut s = Paced::new(drip(1000, 100, Duration::from_secs(1)), MIN);
        let started = tokio::time::Instant::now();
        let mut got = 0;
        let err = loop {
            match s.next().await.expect("fails before the end") {
                Ok(c) => got += c.len(),
                Err(e) => break e,
            }
        };
        assert!(err.to_string().contains("below the minimum"), "{err}");
        assert!(got < 1100, "{got} bytes before giving up");
        assert!(started.elapsed() <= Duration::from_secs(11), "{:?}", started.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_stream_passes_whole() {
        // 2000 bytes a second for a minute: six windows, each above the floor.
        let s = Paced::new(drip(60, 2000, Duration::from_secs(1)), MIN);
        let chunks: Vec<_> = s.collect().await;
        assert_eq!(chunks.len(), 60);
        assert!(chunks.iter().all(|c| c.is_ok()));
    }

    #[test]
    fn a_bandwidth_limit_lowers_the_floor() {
        assert_eq!(MIN.under_limit(Some(600)).bytes_per_second, 300);
        assert_eq!(MIN.under_limit(Some(1_000_000)).bytes_per_second, 1000);
        assert_eq!(MIN.under_limit(None), MIN);
    }

    #[tokio::test]
    async fn waits_fit_only_before_the_deadline() {
        assert!(wait_fits(Duration::from_secs(3600)), "no deadline outside a task");
        let stop_at = Some(Instant::now() + Duration::from_secs(5));
        within(stop_at, async {
            assert!(wait_fits(Duration::from_secs(1)));
            assert!(!wait_fits(Duration::from_secs(6)));
        })
        .await;
    }
}
