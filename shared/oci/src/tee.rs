//! One read of a source blob for every destination that needs it.
//!
//! The tasks of one push that a worker runs together (one per destination,
//! the webhook sends them in one batch) form a [`Fanout`]. For each blob,
//! the first of them that must upload it leads: it waits briefly for the
//! others to say whether they need the blob too (a destination that has
//! it, or mounts it, passes), opens the source once, and tees the stream
//! into every upload that joined. Each upload may lag the read by a bounded
//! number of bytes; one that holds the read at that bound, while the others
//! have room, longer than its allowance (three seconds plus half the
//! read's time) is detached: its upload goes on with a read of its own from
//! the byte it had reached (a `Range` request, [`go_on_alone`]), so a slow
//! registry holds the others for a bounded time only and loses neither its
//! copy nor the bytes it took. One whose registry stopped taking bytes is
//! given up by its request's watch ([`super::pace::watched`]) and the
//! blob's retry starts over alone.
//!
//! The read is hashed once for all the uploads it feeds
//! ([`super::verify`]): a blob that is not its digest fails every one of
//! them before its last bytes, and a detached upload's own read takes the
//! hash up at the byte where it left the shared one.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::client::RegistryError;
pub use super::verify::{BlobStream, ReadFault};
use super::verify::{Hashed, Verified};
use crate::digest::Digest;

/// How long a leader waits for the other members to reach a blob. They
/// run the same steps on the same tree, so they arrive within a few round
/// trips of each other, or the time a busy registry takes to answer the
/// previous blob's upload; a member still busy past this reads alone, and
/// is not waited for again until it arrives in step.
const GATHER_FOR: Duration = Duration::from_secs(2);

/// Bytes an upload may lag behind the shared read. The bytes are shared
/// between the uploads (reference counted), so this is about the most the
/// tee holds per blob (a held piece pins the source buffer it came in).
/// A quarter MiB is milliseconds of a fast upload; more only holds memory
/// (1 MiB: 1–2 MiB more peak RSS for a 3-destination copy, as fast).
const LAG_BYTES: usize = 256 * 1024;

/// How long the read may wait, in total, for one upload at its lag bound
/// while every other upload has room: this much, plus half the time the
/// read has run. A destination may slow the others to half speed at most,
/// and one that stops taking bytes is detached within a few seconds. A
/// busy registry pauses a connection for a second or two now and then
/// (2.2 s seen while it wrote 3 GiB here); detaching for that costs a
/// second read of the blob for no time won, so one second was too short.
const HOLD_BASE: Duration = Duration::from_secs(3);

/// The bytes of a shared read and, once it detaches this upload, the rest
/// of the blob from `reopen(hashed)`: a read of its own from the byte the
/// upload had reached (`hashed.offset()`, the hash of the bytes before it),
/// so the upload goes on where it was instead of starting over (and the
/// source is not read twice up to there). The stream is fed by the
/// returned future, which must run beside the upload that reads the stream
/// (the reopen borrows the task's source client).
pub fn go_on_alone<'a, F, Fut>(shared: BlobStream, reopen: F) -> (BlobStream, impl Future<Output = ()> + Send + 'a)
where
    F: FnOnce(Hashed) -> Fut + Send + 'a,
    Fut: Future<Output = Result<Verified, RegistryError>> + Send + 'a,
{
    let (tx, rx) = mpsc::channel::<Result<Bytes, ReadFault>>(1);
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    let feed = async move {
        let (mut bytes, mut reopen, mut taken) = (shared, Some(reopen), 0u64);
        loop {
            let item = tokio::select! {
                () = tx.closed() => return,
                item = bytes.next() => item,
            };
            match item {
                None => return,
                Some(Err(ReadFault::Detached(hashed))) => {
                    let Some(reopen) = reopen.take() else { return };
                    if hashed.offset() != taken {
                        let reason = format!("detached at byte {}, having taken {taken}", hashed.offset());
                        let _ = tx.send(Err(ReadFault::Source(reason.into()))).await;
                        return;
                    }
                    tracing::info!(from = taken, "reading the rest of the blob alone");
                    match reopen(*hashed).await {
                        Ok(alone) => bytes = alone.boxed(),
                        Err(e) => {
                            let _ = tx.send(Err(ReadFault::Source(e.to_string().into()))).await;
                            return;
                        }
                    }
                }
                Some(item) => {
                    let failed = item.is_err();
                    taken += item.as_ref().map_or(0, |b| b.len() as u64);
                    if tx.send(item).await.is_err() || failed {
                        return;
                    }
                }
            }
        }
    };
    (stream.boxed(), feed)
}

/// The tasks of one source artifact that run at the same time, each into
/// a different destination.
#[derive(Default)]
pub struct Fanout {
    /// Destinations the group writes to (one task each).
    destinations: usize,
    state: Mutex<State>,
    changed: Notify,
}

#[derive(Default)]
struct State {
    next_id: usize,
    /// Members started and not finished, by id: whether each is in step
    /// (reaches blobs with the others). One that read a blob alone — late,
    /// or detached — is not waited for until it is in step again.
    members: HashMap<usize, bool>,
    blobs: HashMap<Digest, Gathering>,
}

#[derive(Default)]
struct Gathering {
    /// Members that joined, lead, or will not read this blob (present,
    /// mounted, deferred).
    decided: HashSet<usize>,
    led: bool,
    /// The read started: a member arriving now reads alone.
    started: bool,
    joined: Vec<Subscriber>,
}

impl Fanout {
    /// The group of one source artifact's tasks into `destinations`
    /// destinations.
    pub fn new(destinations: usize) -> Arc<Fanout> {
        Arc::new(Fanout { destinations, ..Default::default() })
    }

    /// A task of the group starts; it counts as running until the
    /// [`Member`] is dropped.
    pub fn join(self: &Arc<Self>) -> Member {
        let mut state = self.state.lock().expect("fanout lock");
        let id = state.next_id;
        state.next_id += 1;
        state.members.insert(id, true);
        Member { fanout: self.clone(), id }
    }

    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock().expect("fanout lock"));
        self.changed.notify_waiters();
    }
}

/// One task's place in a [`Fanout`].
pub struct Member {
    fanout: Arc<Fanout>,
    id: usize,
}

impl Drop for Member {
    fn drop(&mut self) {
        self.fanout.update(|s| {
            s.members.remove(&self.id);
        });
    }
}

/// Armed while a member leads a read that has not started: if its task
/// stops there (another blob of it failed), the uploads that joined get a
/// fault instead of waiting for bytes that never come.
struct Leading<'a> {
    fanout: &'a Fanout,
    digest: &'a Digest,
    armed: bool,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        self.fanout.update(|s| {
            if let Some(blob) = s.blobs.get_mut(self.digest) {
                blob.started = true;
                let fault = ReadFault::Source("the task leading this shared read stopped".into());
                for j in blob.joined.drain(..) {
                    let _ = j.tx.send(Item::Bytes(Err(fault.clone()), None));
                }
            }
        });
    }
}

impl Member {
    /// Blobs a member task copies at once, out of `per_task` for a task of
    /// its own: every blob it reads is written to each destination of the
    /// group, so it keeps about as many uploads (connections, buffered
    /// bytes) open as one task does. The destinations write in parallel;
    /// fewer blobs at a time cost no time where they are the bottleneck,
    /// and hold the teed copy's memory near a single copy's.
    pub fn blobs_at_once(&self, per_task: usize) -> usize {
        per_task.div_ceil(self.fanout.destinations.max(1)).max(1)
    }

    /// This task will not read `digest` from the source.
    pub fn pass(&self, digest: &Digest) {
        self.fanout.update(|s| {
            s.blobs.entry(digest.clone()).or_default().decided.insert(self.id);
        });
    }

    /// The blob's bytes through the group's read: joined to the read being
    /// gathered, or leading it (`open` opens the source, once). `None`
    /// when the read already started: the caller reads alone.
    pub async fn read<F, Fut>(&self, digest: &Digest, open: F) -> Result<Option<BlobStream>, RegistryError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Verified, RegistryError>>,
    {
        {
            let mut state = self.fanout.state.lock().expect("fanout lock");
            let blob = state.blobs.entry(digest.clone()).or_default();
            if blob.started {
                state.members.insert(self.id, false);
                tracing::info!(%digest, "the shared read of this blob had started: reading alone");
                return Ok(None);
            }
            blob.decided.insert(self.id);
            let leads = !blob.led;
            blob.led = true;
            let read = (!leads).then(|| {
                let (subscriber, read) = subscriber(self.fanout.clone(), self.id);
                blob.joined.push(subscriber);
                read
            });
            state.members.insert(self.id, true);
            drop(state);
            self.fanout.changed.notify_waiters();
            if let Some(read) = read {
                return Ok(Some(read));
            }
        }
        let mut leading = Leading { fanout: &self.fanout, digest, armed: true };
        self.gather(digest).await;
        let joined = {
            let mut state = self.fanout.state.lock().expect("fanout lock");
            let blob = state.blobs.get_mut(digest).expect("entry made above");
            blob.started = true;
            leading.armed = false;
            tracing::debug!(%digest, uploads = blob.joined.len() + 1, "shared read starts");
            std::mem::take(&mut blob.joined)
        };
        let source = match open().await {
            Ok(s) => s,
            Err(e) => {
                let fault = ReadFault::Source(e.to_string().into());
                for s in joined {
                    let _ = s.tx.send(Item::Bytes(Err(fault.clone()), None));
                }
                return Err(e);
            }
        };
        if joined.is_empty() {
            return Ok(Some(source.boxed()));
        }
        let (own, read) = subscriber(self.fanout.clone(), self.id);
        tokio::spawn(feed(source, std::iter::once(own).chain(joined).collect()));
        Ok(Some(read))
    }

    /// Waits until every member in step has joined or passed `digest`, or
    /// [`GATHER_FOR`] has gone by.
    async fn gather(&self, digest: &Digest) {
        let until = Instant::now() + GATHER_FOR;
        loop {
            let changed = self.fanout.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let state = self.fanout.state.lock().expect("fanout lock");
                let decided = &state.blobs[digest].decided;
                if state.members.iter().all(|(id, in_step)| !in_step || decided.contains(id)) {
                    return;
                }
            }
            if tokio::time::timeout_at(until, changed).await.is_err() {
                return;
            }
        }
    }
}

enum Item {
    Bytes(Result<Bytes, ReadFault>, Option<OwnedSemaphorePermit>),
    /// The source's stream ended: the upload has every byte.
    End,
}

/// One upload's end of a shared read.
struct Subscriber {
    tx: mpsc::UnboundedSender<Item>,
    /// Permits are bytes not yet taken by the upload.
    lag: Arc<Semaphore>,
    /// How long the read has waited for this upload so far.
    held: Duration,
    /// Marked out of step when detached.
    fanout: Arc<Fanout>,
    member: usize,
}

fn subscriber(fanout: Arc<Fanout>, member: usize) -> (Subscriber, BlobStream) {
    let (tx, rx) = mpsc::unbounded_channel::<Item>();
    // The permit goes when the upload takes the bytes. A channel that
    // closes without `End` (the read stopped) is a fault, never a short
    // blob.
    let stream = futures_util::stream::unfold(Some(rx), |rx| async move {
        let mut rx = rx?;
        match rx.recv().await {
            Some(Item::Bytes(item, _permit)) => Some((item, Some(rx))),
            Some(Item::End) => None,
            None => Some((Err(ReadFault::Source("the shared read stopped before the end".into())), None)),
        }
    });
    let lag = Arc::new(Semaphore::new(LAG_BYTES));
    (Subscriber { tx, lag, held: Duration::ZERO, fanout, member }, stream.boxed())
}

impl Subscriber {
    /// `hashed`: the hash of the bytes the upload was sent.
    fn detach(&self, hashed: Hashed) {
        tracing::warn!(
            held_ms = self.held.as_millis() as u64,
            "a destination fell behind the shared read: detached, it reads alone"
        );
        self.fanout.update(|s| {
            if let Some(in_step) = s.members.get_mut(&self.member) {
                *in_step = false;
            }
        });
        let _ = self.tx.send(Item::Bytes(Err(ReadFault::Detached(Box::new(hashed))), None));
    }
}

/// Reads `source` once into every subscriber, until it ends, fails, or no
/// subscriber is left. Each chunk waits for room in every upload's lag,
/// all at once; only the time the read waits for the last upload, after
/// every other one had room, counts against that upload: uploads of equal
/// speed that take turns being last are never detached, one that holds
/// the others at its pace is.
async fn feed(mut source: Verified, mut subscribers: Vec<Subscriber>) {
    let started = Instant::now();
    loop {
        // Where a subscriber detached at this item goes on from (a copy of
        // the hash state: a hundred bytes per piece).
        let before = source.position();
        let Some(item) = source.next().await else { break };
        let want = item.as_ref().map_or(0, |b| b.len().min(LAG_BYTES)) as u32;
        let mut permits: Vec<Option<OwnedSemaphorePermit>> = subscribers.iter().map(|_| None).collect();
        let mut waits = FuturesUnordered::new();
        for (i, s) in subscribers.iter().enumerate() {
            match s.lag.clone().try_acquire_many_owned(want) {
                Ok(p) => permits[i] = Some(p),
                Err(_) => {
                    let lag = s.lag.clone();
                    waits.push(async move { (i, lag.acquire_many_owned(want).await) });
                }
            }
        }
        let mut detached = None;
        while !waits.is_empty() {
            let got = if waits.len() == 1 && subscribers.len() > 1 {
                // Everyone else has room: this one holds the read.
                let pending = (0..subscribers.len()).find(|&i| permits[i].is_none()).expect("one is pending");
                let s = &mut subscribers[pending];
                let allowance = (HOLD_BASE + started.elapsed() / 2).saturating_sub(s.held);
                let waited = Instant::now();
                let got = tokio::time::timeout(allowance, waits.next()).await;
                s.held += waited.elapsed();
                match got {
                    Ok(got) => got,
                    Err(_) => {
                        detached = Some(pending);
                        break;
                    }
                }
            } else {
                waits.next().await
            };
            if let Some((i, Ok(p))) = got {
                permits[i] = Some(p);
            }
        }
        drop(waits);
        let mut kept = Vec::with_capacity(subscribers.len());
        for (i, (s, permit)) in subscribers.into_iter().zip(permits).enumerate() {
            if detached == Some(i) {
                s.detach(before.clone());
            } else if s.tx.send(Item::Bytes(item.clone(), permit)).is_ok() {
                kept.push(s);
            }
        }
        subscribers = kept;
        if subscribers.is_empty() || item.is_err() {
            return;
        }
    }
    for s in subscribers {
        let _ = s.tx.send(Item::End);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use futures_util::TryStreamExt;

    use super::super::verify::Refusal;
    use super::*;

    fn digest() -> Digest {
        format!("sha256:{}", "ab".repeat(32)).parse().unwrap()
    }

    const PIECE: usize = 64 * 1024;

    /// Pieces `from..n` of the blob of `n` pieces of 64 KiB, the piece `i`
    /// all bytes `i`.
    fn pieces(from: usize, n: usize) -> BlobStream {
        futures_util::stream::iter((from..n).map(|i| Ok(Bytes::from(vec![i as u8; PIECE])))).boxed()
    }

    /// The digest and size of the blob of `n` pieces.
    fn described(n: usize) -> (Digest, u64) {
        let mut h = sha2::Sha256::default();
        for i in 0..n {
            sha2::Digest::update(&mut h, vec![i as u8; PIECE]);
        }
        let d = format!("sha256:{}", hex::encode(sha2::Digest::finalize(h))).parse().unwrap();
        (d, (n * PIECE) as u64)
    }

    /// The blob of `n` pieces, counting the times the source was opened.
    fn source(opened: &AtomicUsize, n: usize) -> Result<Verified, RegistryError> {
        opened.fetch_add(1, Ordering::Relaxed);
        let (d, size) = described(n);
        Ok(Verified::new(pieces(0, n), &d, size, Hashed::start(&d)))
    }

    async fn drain(s: BlobStream, pause: Duration) -> Result<usize, ReadFault> {
        s.and_then(|b| async move {
            tokio::time::sleep(pause).await;
            Ok(b.len())
        })
        .try_fold(0, |n, len| async move { Ok(n + len) })
        .await
    }

    #[test]
    fn a_member_copies_fewer_blobs_at_once_the_more_destinations() {
        let at_once = |destinations, per_task| Fanout::new(destinations).join().blobs_at_once(per_task);
        assert_eq!(at_once(3, 3), 1);
        assert_eq!(at_once(2, 3), 2);
        assert_eq!(at_once(5, 3), 1);
        assert_eq!(at_once(2, 8), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn three_uploads_share_one_read() {
        let (fanout, opened) = (Fanout::new(3), AtomicUsize::new(0));
        let members: Vec<_> = (0..3).map(|_| fanout.join()).collect();
        let reads = members.iter().map(|m| async {
            let s = m.read(&digest(), || async { source(&opened, 64) }).await.unwrap().expect("shared");
            drain(s, Duration::ZERO).await
        });
        let got = futures_util::future::join_all(reads).await;
        assert_eq!(opened.load(Ordering::Relaxed), 1, "one read of the source");
        assert!(got.iter().all(|g| g.as_ref().ok() == Some(&(64 * 64 * 1024))), "{got:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_that_passes_is_not_waited_for() {
        let (fanout, opened) = (Fanout::new(3), AtomicUsize::new(0));
        let (a, b) = (fanout.join(), fanout.join());
        b.pass(&digest());
        let started = Instant::now();
        let s = a.read(&digest(), || async { source(&opened, 4) }).await.unwrap().expect("leads");
        assert_eq!(drain(s, Duration::ZERO).await.unwrap(), 4 * 64 * 1024);
        assert!(started.elapsed() < GATHER_FOR, "{:?}", started.elapsed());
        // A member arriving after the read started reads alone.
        assert!(b.read(&digest(), || async { source(&opened, 4) }).await.unwrap().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_upload_is_detached_and_the_others_finish() {
        let (fanout, opened) = (Fanout::new(3), AtomicUsize::new(0));
        let members: Vec<_> = (0..3).map(|_| fanout.join()).collect();
        // 32 MiB; the third upload takes a chunk per second (64 KiB/s).
        let reads = members.iter().enumerate().map(|(i, m)| {
            let opened = &opened;
            async move {
                let s = m.read(&digest(), || async { source(opened, 512) }).await.unwrap().expect("shared");
                let pause = if i == 2 { Duration::from_secs(1) } else { Duration::ZERO };
                let started = Instant::now();
                (drain(s, pause).await, started.elapsed())
            }
        });
        let got = futures_util::future::join_all(reads).await;
        assert_eq!(opened.load(Ordering::Relaxed), 1);
        for (result, took) in &got[..2] {
            assert_eq!(result.as_ref().ok(), Some(&(512 * 64 * 1024)));
            // Held about twice HOLD_BASE at most: detached once its hold
            // passes HOLD_BASE plus half the read's time.
            assert!(*took < HOLD_BASE * 2 + Duration::from_secs(1), "the fast uploads were held {took:?}");
        }
        assert!(matches!(got[2].0, Err(ReadFault::Detached(_))), "{:?}", got[2].0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_detached_upload_goes_on_from_the_byte_it_reached() {
        let (fanout, opened) = (Fanout::new(2), AtomicUsize::new(0));
        let (fast, slow) = (fanout.join(), fanout.join());
        let (reopened_at, d) = (Mutex::new(None), digest());
        let (f, s) =
            tokio::join!(fast.read(&d, || async { source(&opened, 512) }), slow.read(&d, || async { never_opened() }));
        // The rest, from the byte reached, verified with the hash of the
        // bytes before it: a wrong hash state would fail the blob.
        let rest = |from: Hashed| {
            *reopened_at.lock().unwrap() = Some(from.offset());
            let (d, size) = described(512);
            async move { Ok(Verified::new(pieces(from.offset() as usize / PIECE, 512), &d, size, from)) }
        };
        let (bytes, feed) = go_on_alone(s.unwrap().expect("joined"), rest);
        let slow_upload = bytes
            .and_then(|b| async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                Ok(b)
            })
            .try_collect::<Vec<Bytes>>();
        let (fast_got, (slow_got, ())) =
            tokio::join!(drain(f.unwrap().expect("leads"), Duration::ZERO), async { tokio::join!(slow_upload, feed) });
        assert_eq!(fast_got.unwrap(), 512 * 64 * 1024);
        let from = reopened_at.lock().unwrap().expect("the slow upload was detached and read on alone");
        assert!(from > 0 && from % (64 * 1024) == 0, "reopened at {from}");
        let got = slow_got.unwrap().concat();
        assert_eq!(got.len(), 512 * 64 * 1024, "every byte once");
        assert!(got.chunks(64 * 1024).enumerate().all(|(i, c)| c.iter().all(|&b| b == i as u8)), "in order");
    }

    #[tokio::test(start_paused = true)]
    async fn a_member_out_of_step_is_not_waited_for() {
        let (fanout, opened) = (Fanout::new(3), AtomicUsize::new(0));
        let (a, b, c) = (fanout.join(), fanout.join(), fanout.join());
        let first = digest();
        let second: Digest = format!("sha256:{}", "cd".repeat(32)).parse().unwrap();
        // a and b share the first blob without c (busy elsewhere) …
        let (ra, rb) =
            tokio::join!(a.read(&first, || async { source(&opened, 4) }), b.read(&first, || async { never_opened() }));
        drain(ra.unwrap().unwrap(), Duration::ZERO).await.unwrap();
        drain(rb.unwrap().unwrap(), Duration::ZERO).await.unwrap();
        // … c arrives late and reads alone: now out of step.
        assert!(c.read(&first, || async { never_opened() }).await.unwrap().is_none());
        let started = Instant::now();
        let (ra, rb) = tokio::join!(
            a.read(&second, || async { source(&opened, 4) }),
            b.read(&second, || async { never_opened() })
        );
        drain(ra.unwrap().unwrap(), Duration::ZERO).await.unwrap();
        drain(rb.unwrap().unwrap(), Duration::ZERO).await.unwrap();
        assert!(started.elapsed() < GATHER_FOR, "waited {:?} for c", started.elapsed());
    }

    #[tokio::test(start_paused = true)]
    async fn a_leader_that_stops_fails_the_joined_uploads() {
        let fanout = Fanout::new(3);
        let (a, b, _busy) = (fanout.join(), fanout.join(), fanout.join());
        let d = digest();
        let joined = async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            b.read(&d, || async { never_opened() }).await.unwrap().expect("joined")
        };
        // The leader gathers (waiting for the busy member) and is dropped.
        let lead = tokio::time::timeout(Duration::from_millis(100), a.read(&d, || async { never_opened() }));
        let (led, joined) = tokio::join!(lead, joined);
        assert!(led.is_err(), "the leader was still gathering");
        let got = tokio::time::timeout(Duration::from_secs(60), drain(joined, Duration::ZERO)).await;
        assert!(matches!(got, Ok(Err(ReadFault::Source(_)))), "{got:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_blob_that_is_not_its_digest_fails_every_upload_of_the_read() {
        let (fanout, opened) = (Fanout::new(3), AtomicUsize::new(0));
        let members: Vec<_> = (0..3).map(|_| fanout.join()).collect();
        // Four pieces under the digest of five: the right length, not the
        // right bytes.
        let (other, _) = described(5);
        let corrupt = || async {
            opened.fetch_add(1, Ordering::Relaxed);
            Ok(Verified::new(pieces(0, 4), &other, 4 * PIECE as u64, Hashed::start(&other)))
        };
        let reads = members.iter().map(|m| async {
            let s = m.read(&digest(), corrupt).await.unwrap().expect("shared");
            drain(s, Duration::ZERO).await
        });
        let got = futures_util::future::join_all(reads).await;
        assert_eq!(opened.load(Ordering::Relaxed), 1, "one read, hashed once");
        for g in &got {
            assert!(matches!(g, Err(ReadFault::Refused(Refusal::Mismatch { .. }))), "{g:?}");
        }
    }

    fn never_opened() -> Result<Verified, RegistryError> {
        unreachable!("a member that joins never opens the source")
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_open_reaches_every_joined_upload() {
        let fanout = Fanout::new(3);
        let (a, b, d) = (fanout.join(), fanout.join(), digest());
        let lead = a.read(&d, || async {
            tokio::time::sleep(Duration::from_millis(10)).await;
            Err(RegistryError::Protocol { registry: "src".into(), reason: "gone".into() })
        });
        let join = async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            let s = b.read(&d, || async { never_opened() }).await.unwrap();
            drain(s.expect("joined"), Duration::ZERO).await
        };
        let (led, joined) = tokio::join!(lead, join);
        assert!(led.is_err());
        assert!(matches!(joined, Err(ReadFault::Source(_))), "{joined:?}");
    }
}
