//! Time bounds that per-read timeouts miss. A registry that sends one byte
//! every few seconds never trips a read timeout, and a `Retry-After` of a
//! minute is a fine answer to a standalone worker but not to an invocation
//! with ten seconds left: without these, either holds a worker until the
//! Lambda timeout kills the whole batch.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::Notify;

use super::chunks::BoxError;

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

pub use relay_domain::throughput::MinThroughput;

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

/// A source stream that fails when, while awaited, it sends nothing for
/// `max`; time in which nobody asks it for bytes does not count. A shared
/// read whose uploads were all given up is still awaiting its source, on
/// its own task: without this, a source that keeps the connection open and
/// sends nothing would hold the read (and its place in the worker's read
/// budget) for ever.
pub struct Silence<S> {
    inner: S,
    max: Duration,
    /// Set once per wait, not allocated per wait: a read of a large blob
    /// waits on its socket thousands of times.
    deadline: Pin<Box<tokio::time::Sleep>>,
    waiting: bool,
}

impl<S> Silence<S> {
    pub fn new(inner: S, max: Duration) -> Silence<S> {
        Silence { inner, max, deadline: Box::pin(tokio::time::sleep(max)), waiting: false }
    }
}

/// The source sent nothing for this long while it was being read.
#[derive(Debug, thiserror::Error)]
#[error("the source sent nothing for {0:?} while it was being read; giving up on this attempt")]
pub struct Silent(pub Duration);

impl<S, E> Stream for Silence<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
    E: Into<BoxError>,
{
    type Item = Result<Bytes, BoxError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_next(cx) {
            Poll::Ready(item) => {
                this.waiting = false;
                Poll::Ready(item.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                if !this.waiting {
                    this.waiting = true;
                    this.deadline.as_mut().reset(tokio::time::Instant::now() + this.max);
                }
                match this.deadline.as_mut().poll(cx) {
                    Poll::Ready(()) => Poll::Ready(Some(Err(Silent(this.max).into()))),
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

/// What a watched body records for the watch beside its request.
struct Asked {
    origin: tokio::time::Instant,
    /// When the connection last polled the body for bytes (µs after
    /// `origin`).
    last: AtomicU64,
    /// Whether that poll is still waiting on our side (the source or the
    /// bandwidth limit): the registry is asking, so a pause is not its.
    waiting: AtomicBool,
    /// Signalled when the body has given its last byte.
    ended: Notify,
}

impl Asked {
    fn last(&self) -> tokio::time::Instant {
        self.origin + Duration::from_micros(self.last.load(Ordering::Relaxed))
    }
}

/// A streamed request body that records the connection's asks for bytes
/// (see [`watched`]).
pub struct Watched<S> {
    inner: S,
    len: u64,
    taken: u64,
    asked: Arc<Asked>,
}

impl<S, E> Stream for Watched<S>
where
    S: Stream<Item = Result<Bytes, E>> + Unpin,
{
    type Item = Result<Bytes, E>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        let at = this.asked.origin.elapsed().as_micros() as u64;
        this.asked.last.store(at, Ordering::Relaxed);
        let next = Pin::new(&mut this.inner).poll_next(cx);
        this.asked.waiting.store(next.is_pending(), Ordering::Relaxed);
        let ended = match &next {
            Poll::Ready(Some(Ok(c))) => {
                this.taken += c.len() as u64;
                this.taken >= this.len
            }
            Poll::Ready(None) => true,
            _ => false,
        };
        if ended {
            this.asked.ended.notify_one();
        }
        next
    }
}

/// Why a streamed request was given up by its watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Stopped {
    #[error(
        "the registry asked for none of the body's bytes for {0:?} (it stopped reading); giving up on this attempt"
    )]
    NotTaking(Duration),
    #[error("no answer within {0:?} after the whole body was handed to the connection; giving up on this attempt")]
    NoAnswer(Duration),
}

/// Bytes that may sit between a body and its registry once the connection
/// has taken them: the client's write buffer and both kernels' socket
/// buffers (Linux grows them to 4 and 6 MiB), and the registry's own.
const IN_FLIGHT_MAX: u64 = 16 * 1024 * 1024;

/// `body` (of `len` bytes) as a request body, and the watch to await beside
/// the request. It completes when the registry has not asked the body for
/// bytes for `min.window` while bytes remain and none is being waited for
/// on our side; or has not answered within `answer_within` of the last
/// byte, plus the time the registry may take to read the bytes still in
/// flight then at `min`'s rate (the last byte leaves the body long before
/// it reaches a slow registry). A registry that stops reading leaves the
/// body unpolled, so the body cannot time itself ([`Paced`] judges only
/// the windows in which it is polled); and a request whose body takes
/// longer than any fixed bound (a 10 GiB layer) must not be cut by one.
pub fn watched<S>(
    body: S,
    len: u64,
    min: MinThroughput,
    answer_within: Duration,
) -> (Watched<S>, impl Future<Output = Stopped> + Send + 'static) {
    let window = min.window;
    let in_flight = len.min(IN_FLIGHT_MAX) as f64 / min.bytes_per_second.max(1) as f64;
    let answer_within = answer_within + Duration::from_secs_f64(in_flight);
    let origin = tokio::time::Instant::now();
    let asked =
        Arc::new(Asked { origin, last: AtomicU64::new(0), waiting: AtomicBool::new(false), ended: Notify::new() });
    let watch = {
        let asked = asked.clone();
        async move {
            // An empty body may never be polled: only the answer is awaited.
            let mut until = (len > 0).then_some(origin + window);
            while let Some(at) = until {
                tokio::select! {
                    () = asked.ended.notified() => break,
                    () = tokio::time::sleep_until(at) => {}
                }
                let now = tokio::time::Instant::now();
                until = Some(if asked.waiting.load(Ordering::Relaxed) {
                    now + window
                } else if asked.last() + window > now {
                    asked.last() + window
                } else {
                    return Stopped::NotTaking(window);
                });
            }
            tokio::time::sleep(answer_within).await;
            Stopped::NoAnswer(answer_within)
        }
    };
    (Watched { inner: body, len, taken: 0, asked }, watch)
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

    const WINDOW: Duration = Duration::from_secs(10);
    const ANSWER: Duration = Duration::from_secs(30);
    /// 1000 bytes/s: a 3000-byte body may take 3 s to reach the registry.
    const WATCH: MinThroughput = MinThroughput { bytes_per_second: 1000, window: WINDOW };

    #[tokio::test(start_paused = true)]
    async fn a_source_silent_while_awaited_fails_and_unawaited_time_does_not_count() {
        // A source that sends its first chunk after an hour: given up a
        // window after it was first awaited.
        let mut s = Silence::new(drip(2, 1000, Duration::from_secs(3600)), WINDOW);
        let started = tokio::time::Instant::now();
        let err = s.next().await.expect("an item").expect_err("silent for an hour");
        assert!(err.to_string().contains("sent nothing for 10s"), "{err}");
        assert_eq!(started.elapsed(), WINDOW);

        // One that sends within 5 s of each ask, asked an hour apart: the
        // hour nobody waited does not count.
        let mut s = Silence::new(drip(2, 1000, Duration::from_secs(5)), WINDOW);
        assert!(s.next().await.unwrap().is_ok());
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(s.next().await.unwrap().is_ok(), "time nobody waited counted");
        assert!(s.next().await.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_the_registry_stops_asking_for_is_given_up() {
        let (mut body, watch) = watched(drip(100, 1000, Duration::ZERO), 100_000, WATCH, ANSWER);
        tokio::pin!(watch);
        // The registry takes 10 chunks, a second apart, then asks no more.
        for _ in 0..10 {
            tokio::select! {
                c = body.next() => assert!(c.unwrap().is_ok()),
                s = &mut watch => panic!("given up while asking: {s}"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let last = tokio::time::Instant::now() - Duration::from_secs(1);
        let stopped = tokio::time::timeout(10 * WINDOW, watch).await;
        assert_eq!(stopped, Ok(Stopped::NotTaking(WINDOW)), "a registry that stopped asking was never given up");
        assert_eq!(tokio::time::Instant::now() - last, WINDOW, "a window after the last ask");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_waiting_on_its_source_is_not_given_up_and_the_answer_is_timed_from_its_end() {
        // Three windows a chunk: the source is slow, the registry is asking.
        let (body, watch) = watched(drip(3, 1000, 3 * WINDOW), 3000, WATCH, ANSWER);
        tokio::pin!(watch);
        let sent = tokio::select! {
            all = body.collect::<Vec<_>>() => all,
            s = &mut watch => panic!("given up while waiting on the source: {s}"),
        };
        assert_eq!(sent.len(), 3);
        let ended = tokio::time::Instant::now();
        let allowed = ANSWER + Duration::from_secs(3);
        assert_eq!(watch.await, Stopped::NoAnswer(allowed));
        assert_eq!(tokio::time::Instant::now() - ended, allowed, "timed from the last byte");
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_body_waits_only_for_the_answer() {
        let started = tokio::time::Instant::now();
        let (_body, watch) = watched(drip(0, 0, Duration::ZERO), 0, WATCH, ANSWER);
        assert_eq!(watch.await, Stopped::NoAnswer(ANSWER));
        assert_eq!(started.elapsed(), ANSWER);
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
