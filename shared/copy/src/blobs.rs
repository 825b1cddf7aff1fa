//! Blobs: each copied once per task, several at a time — skipped when the
//! destination has it, mounted from a repository of the destination known
//! to hold it, otherwise streamed from the source response into one upload
//! (chunks only for a registry that refused a whole blob). Tasks of one
//! push into several destinations share the source read ([`super::tee`]).
//! Every read is hashed on its way ([`super::verify`]): an upload gets a
//! blob's last bytes only once they make the descriptor's digest and size,
//! so no destination commits another blob, whether it checks or not.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::{stream, StreamExt, TryStreamExt};
use tracing::Instrument;

use super::chunks::Pieces;
use super::client::{RegistryError, UploadStart};
use super::copy::{Copier, CopyError};
use super::ledger::BlobDecision;
use super::manifest::Descriptor;
use super::pace::{self, Paced};
use super::resume::{self, OpenUpload};
use super::retry::RetryBudget;
use super::tee::{self, BlobStream, ReadFault};
use super::verify::{Hashed, Refusal, Verified};
use crate::repository::RepositoryPath;

/// What one manifest tree's blobs cost, added to the task's report.
#[derive(Default)]
pub(super) struct Counters {
    /// Blobs not started because the deadline had come.
    pub(super) deferred: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) bytes: AtomicU64,
    /// Bytes read from the source (a read shared with other destinations
    /// counts for the task that opened it).
    pub(super) read: AtomicU64,
    pub(super) copied: AtomicU64,
    pub(super) skipped: AtomicU64,
    pub(super) mounted: AtomicU64,
}

/// Blobs up to this size are read from the source while their upload's
/// `POST` is in flight: at 100 MB/s a MiB takes about as long as a few round
/// trips.
const OPEN_WITH_POST_MAX: u64 = 1024 * 1024;

impl Copier<'_> {
    pub(super) async fn copy_blobs(
        &self,
        src_repo: &RepositoryPath,
        dst_repo: &RepositoryPath,
        blobs: impl Iterator<Item = Descriptor>,
    ) -> Result<Arc<Counters>, CopyError> {
        let counters = Arc::new(Counters::default());
        stream::iter(blobs.map(Ok::<_, CopyError>))
            .try_for_each_concurrent(self.blob_concurrency, |d| {
                let counters = counters.clone();
                let span = tracing::info_span!("blob", digest = %d.digest, size = d.size);
                async move { self.copy_blob(src_repo, dst_repo, &d, &counters).await }.instrument(span)
            })
            .await?;
        // A shared read this task opened may still hold the counters while
        // it feeds the other destinations.
        match counters.deferred.load(Ordering::Relaxed) {
            0 => Ok(counters),
            remaining => Err(CopyError::Deadline {
                remaining: remaining as usize,
                progressed: counters.copied.load(Ordering::Relaxed) + counters.mounted.load(Ordering::Relaxed) > 0,
            }),
        }
    }

    /// One blob, within its budget of failed sends ([`RetryBudget`]),
    /// which the client's request retries and the re-opens here share.
    async fn copy_blob(
        &self,
        src_repo: &RepositoryPath,
        dst_repo: &RepositoryPath,
        d: &Descriptor,
        counters: &Arc<Counters>,
    ) -> Result<(), CopyError> {
        // Past the deadline's margin no blob starts; those in flight go on
        // until the worker's cut (a resumable one is handed on, see
        // [`resume`]; another is sent again in full by the next run).
        if self.stop_at.is_some_and(|t| std::time::Instant::now() >= t) {
            self.pass(&d.digest);
            counters.deferred.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        let budget = self.retry.blob_budget();
        budget.scope(self.place_blob(src_repo, dst_repo, d, counters, &budget)).await
    }

    /// Does what the ledger decides for `d`: nothing where it is, a mount
    /// from where it is known, an upload otherwise — one upload per digest
    /// per destination at a time, a concurrent task's being waited for and
    /// then mounted from.
    async fn place_blob(
        &self,
        src_repo: &RepositoryPath,
        dst_repo: &RepositoryPath,
        d: &Descriptor,
        counters: &Arc<Counters>,
        budget: &RetryBudget,
    ) -> Result<(), CopyError> {
        let mut decision = self.ledger.decide(&d.digest, dst_repo);
        let (owner, mount_from) = loop {
            match decision {
                BlobDecision::Wait(waiting) => decision = waiting.finished().await,
                BlobDecision::Present => {
                    self.skipped(&d.digest, counters);
                    return Ok(());
                }
                BlobDecision::Check(owner) => {
                    if self.destination.blob_exists(dst_repo, &d.digest).await? {
                        owner.done(dst_repo);
                        self.skipped(&d.digest, counters);
                        return Ok(());
                    }
                    break (owner, None);
                }
                BlobDecision::MountFrom(from, owner) => break (owner, Some(from)),
                BlobDecision::Upload(owner) => break (owner, None),
            }
        };
        let kind = self.send_blob(src_repo, dst_repo, d, mount_from, counters, budget).await?;
        let counter = match kind {
            UploadKind::Mounted => &counters.mounted,
            UploadKind::Streamed => &counters.copied,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        resume::placed();
        owner.done(dst_repo);
        Ok(())
    }

    /// A blob the destination has: counted, and the fan-out told.
    fn skipped(&self, digest: &crate::digest::Digest, counters: &Counters) {
        self.pass(digest);
        counters.skipped.fetch_add(1, Ordering::Relaxed);
    }

    /// Uploads (or mounts) `d`, starting over with the source re-opened
    /// after a transient failure while the policy's attempts and the blob's
    /// budget last, and the wait fits before the deadline.
    async fn send_blob(
        &self,
        src_repo: &RepositoryPath,
        dst_repo: &RepositoryPath,
        d: &Descriptor,
        mut mount_from: Option<RepositoryPath>,
        counters: &Arc<Counters>,
        budget: &RetryBudget,
    ) -> Result<UploadKind, CopyError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let chunks_used = self.destination.chunk_size();
            match self.upload_blob(src_repo, dst_repo, d, mount_from.take(), counters).await {
                Ok(kind) => return Ok(kind),
                // Too large for one request (a proxy's body limit): chunks,
                // or smaller chunks, then the same blob again at once.
                Err(e)
                    if e.status() == Some(reqwest::StatusCode::PAYLOAD_TOO_LARGE)
                        && self.destination.shrink_chunks(chunks_used, d.size) =>
                {
                    counters.retries.fetch_add(1, Ordering::Relaxed);
                }
                Err(e)
                    if e.is_transient()
                        && attempt < self.retry.attempts
                        && pace::wait_fits(self.retry.delay(attempt, None))
                        && budget.spend() =>
                {
                    counters.retries.fetch_add(1, Ordering::Relaxed);
                    let wait = self.retry.delay(attempt, None);
                    tracing::warn!(error = %e, attempt, failed_sends = budget.failed(), wait_ms = wait.as_millis() as u64, "blob copy failed, re-opening the source");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Tells the task's fan-out, if any, that it will not read `digest`.
    fn pass(&self, digest: &crate::digest::Digest) {
        if let Some(m) = self.fanout {
            m.pass(digest);
        }
    }

    /// One attempt: open an upload (asking to mount from `mount_from` when a
    /// repository of the destination is known to hold the blob), then pipe
    /// the source into it. Memory stays at a few socket buffers whatever the
    /// blob size.
    async fn upload_blob(
        &self,
        src_repo: &RepositoryPath,
        dst_repo: &RepositoryPath,
        d: &Descriptor,
        mount_from: Option<RepositoryPath>,
        counters: &Arc<Counters>,
    ) -> Result<UploadKind, RegistryError> {
        // A blob this run cannot finish (its rule's bandwidth limit says so),
        // or one an earlier run left half sent, goes up in chunks a next run
        // can go on with (a whole-blob PUT cut at the deadline leaves
        // nothing). Not when mounting or sharing a read: those take no time.
        let given = resume::given(self.destination.name(), dst_repo.as_str(), &d.digest);
        if mount_from.is_none()
            && self.fanout.is_none()
            && self.destination.takes_chunks()
            && resume::recorded()
            && (given.is_some() || self.outlasts_the_run(d.size))
        {
            return self.upload_resumable(src_repo, dst_repo, d, given, counters).await;
        }
        let mount = mount_from.as_ref().map(|from| (&d.digest, from));
        let start = self.destination.start_upload(dst_repo, mount);
        let open = || self.open_source(src_repo, d, counters, Hashed::start(&d.digest));
        // A small blob, nothing to mount and no read to share: the source is
        // opened beside the POST, one round trip fewer where a round trip is
        // much of the blob's time. (A mount usually needs no read; a shared
        // read is opened by its leader; a large blob's read waits for its
        // session rather than hold a response unread.)
        let early = d.size <= OPEN_WITH_POST_MAX && mount.is_none() && self.fanout.is_none();
        let (started, opened) = if early {
            let (started, opened) = futures_util::future::join(start, open()).await;
            (started, Some(opened))
        } else {
            (start.await, None)
        };
        let (session, chunk_min) = match started? {
            UploadStart::Mounted => {
                self.pass(&d.digest);
                return Ok(UploadKind::Mounted);
            }
            // A declined mount (202) is an upload session: use it.
            UploadStart::Session { url, chunk_min } => (url, chunk_min),
        };
        // A shared read feeds the upload through `go_on`, which carries on
        // with a read of its own if the shared read detaches it.
        let mut go_on = None;
        let source = match (opened, self.fanout) {
            (Some(opened), _) => opened.map(StreamExt::boxed),
            (None, Some(m)) => match m.read(&d.digest, open).await {
                Ok(Some(shared)) => {
                    let rest = move |from| self.open_source(src_repo, d, counters, from);
                    let (bytes, feed) = tee::go_on_alone(shared, rest);
                    go_on = Some(feed);
                    Ok(bytes)
                }
                Ok(None) => open().await.map(StreamExt::boxed),
                Err(e) => Err(e),
            },
            (None, None) => open().await.map(StreamExt::boxed),
        };
        let source = match source {
            Ok(s) => s,
            Err(e) => {
                self.destination.cancel_upload(dst_repo, session).await;
                return Err(e);
            }
        };
        // A failure of the source's stream reaches us as the destination's
        // request failing; it is kept here so the error names the source
        // (a trickling source must not open the destination's breaker).
        let source_fault = Arc::new(std::sync::Mutex::new(None::<RegistryError>));
        let (fault, what) = (source_fault.clone(), self.source_blob(src_repo, d));
        let body = self
            .metered(source, counters)
            .inspect_err(move |e| *fault.lock().expect("fault lock") = Some(what.error(e)));
        // The destination's client watches each request's body: a registry
        // that stops reading leaves it unpolled, and so unpaced. Whichever
        // way the bytes go, the commit (`PUT ?digest=`) is complete only
        // with the verified last bytes. The session's last URL is kept to
        // abandon it (distribution refuses a stale one's state).
        let upload = async {
            match self.destination.chunk_size() {
                None => {
                    let sent =
                        self.destination.finish_upload(dst_repo, session.clone(), &d.digest, d.size, body.boxed());
                    (sent.await, session.clone())
                }
                // Only where needed: the registry refused a whole blob (413).
                Some(chunk) => {
                    let chunk = chunk.max(chunk_min.unwrap_or(0));
                    let pieces = Pieces::new(body.boxed());
                    let (mut url, mut offset) = (session.clone(), 0);
                    let mut sent = Ok(());
                    while offset < d.size {
                        let len = chunk.min(d.size - offset);
                        let body = pieces.take(len).boxed();
                        match self.destination.upload_chunk(dst_repo, url.clone(), offset, len, body).await {
                            Ok(next) => url = next,
                            Err(e) => {
                                sent = Err(e);
                                break;
                            }
                        }
                        offset += len;
                    }
                    match sent {
                        Ok(()) => {
                            let empty = futures_util::stream::empty().boxed();
                            (self.destination.finish_upload(dst_repo, url.clone(), &d.digest, 0, empty).await, url)
                        }
                        Err(e) => (Err(e), url),
                    }
                }
            }
        };
        let (result, last_url) = tokio::join!(upload, futures_util::future::OptionFuture::from(go_on)).0;
        if result.is_err() {
            self.destination.cancel_upload(dst_repo, last_url).await;
        }
        let source_fault = source_fault.lock().expect("fault lock").take();
        match (result, source_fault) {
            (Ok(()), _) => Ok(UploadKind::Streamed),
            (Err(_), Some(source_error)) => Err(source_error),
            (Err(e), None) => Err(e),
        }
    }
}

/// Chunks of a resumable upload: about a quarter of a second of the rule's
/// bandwidth, within these bounds. A chunk started before the deadline's
/// margin must end before the cut: a `PATCH` cut in the middle leaves the
/// session with bytes its state does not count, and distribution then
/// drops the whole session.
const RESUMABLE_CHUNK_MIN: u64 = 16 * 1024;
const RESUMABLE_CHUNK_MAX: u64 = 8 * 1024 * 1024;

impl Copier<'_> {
    /// The source's read, paced and counted: both ends are timed together
    /// (a trickling source and a destination that accepts a trickle hold a
    /// worker alike), the bytes are counted, and the task's bandwidth limit
    /// is kept.
    fn metered(
        &self,
        source: impl futures_util::Stream<Item = Result<bytes::Bytes, ReadFault>> + Send + Unpin + 'static,
        counters: &Arc<Counters>,
    ) -> impl futures_util::Stream<Item = Result<bytes::Bytes, super::chunks::BoxError>> + Send + 'static {
        let limit = self.throttle.as_ref().map(|t| t.bytes_per_second());
        let (counters, throttle) = (counters.clone(), self.throttle.clone());
        Paced::new(source, self.min_throughput.under_limit(limit)).then(move |piece| {
            let (counters, throttle) = (counters.clone(), throttle.clone());
            async move {
                let piece = piece?;
                counters.bytes.fetch_add(piece.len() as u64, Ordering::Relaxed);
                if let Some(t) = &throttle {
                    t.take(piece.len()).await;
                }
                Ok(piece)
            }
        })
    }

    /// What the errors of a read of `d` from `src_repo` name.
    fn source_blob(&self, src_repo: &RepositoryPath, d: &Descriptor) -> SourceBlob {
        SourceBlob {
            registry: self.source.name().to_owned(),
            path: format!("/v2/{src_repo}/blobs/{}", d.digest),
            descriptor: d.clone(),
        }
    }

    /// Whether `size` bytes at the task's bandwidth limit take longer than
    /// this run has before its deadline's margin.
    fn outlasts_the_run(&self, size: u64) -> bool {
        let (Some(stop_at), Some(throttle)) = (self.stop_at, &self.throttle) else { return false };
        let left = stop_at.saturating_duration_since(std::time::Instant::now()).as_secs_f64();
        size as f64 / throttle.bytes_per_second().max(1) as f64 > left
    }

    /// An upload in chunks that a next run can go on with: after each chunk
    /// the registry accepted, the session, the offset and the hash of the
    /// bytes so far are recorded ([`resume::took`]); a run cut at its
    /// deadline hands them to its continuation. Given such an upload, the
    /// session is asked for its range and the copy goes on from there (the
    /// source read from the same byte, the hash from its state); a session
    /// the registry lost starts over.
    async fn upload_resumable(
        &self,
        src_repo: &RepositoryPath,
        dst_repo: &RepositoryPath,
        d: &Descriptor,
        given: Option<OpenUpload>,
        counters: &Arc<Counters>,
    ) -> Result<UploadKind, RegistryError> {
        let mut from = None;
        if let Some(u) = given {
            let state = Hashed::from_state(&d.digest, &u.hash, u.offset);
            if let (Ok(url), Some(hashed)) = (url::Url::parse(&u.session), state) {
                match self.destination.upload_status(dst_repo, url).await {
                    Ok(Some((url, taken))) if taken == u.offset && taken < d.size => {
                        tracing::info!(offset = taken, "going on with the upload an earlier run left");
                        from = Some((url, hashed));
                    }
                    other => {
                        let (held, error) = match other {
                            Ok(status) => (status.map(|(_, taken)| taken), None),
                            Err(e) => (None, Some(e.to_string())),
                        };
                        tracing::info!(
                            ?held,
                            offset = u.offset,
                            ?error,
                            "the registry no longer holds the upload an earlier run left as it left it; starting over"
                        );
                    }
                }
            }
        }
        let (session, hashed, chunk_min) = match from {
            Some((url, hashed)) => (url, hashed, None),
            None => match self.destination.start_upload(dst_repo, None).await? {
                UploadStart::Session { url, chunk_min } => (url, Hashed::start(&d.digest), chunk_min),
                UploadStart::Mounted => {
                    self.pass(&d.digest);
                    return Ok(UploadKind::Mounted);
                }
            },
        };
        let source = match self.open_source(src_repo, d, counters, hashed.clone()).await {
            Ok(s) => s,
            Err(e) => {
                self.destination.cancel_upload(dst_repo, session).await;
                resume::closed(&d.digest);
                return Err(e);
            }
        };
        let limit = self.throttle.as_ref().map(|t| t.bytes_per_second());
        let chunk = limit
            .map_or(RESUMABLE_CHUNK_MAX, |l| l / 4)
            .clamp(RESUMABLE_CHUNK_MIN, RESUMABLE_CHUNK_MAX)
            .max(chunk_min.unwrap_or(0));
        let pieces = Pieces::new(self.metered(source, counters).boxed());
        let what = self.source_blob(src_repo, d);
        // A failed upload is abandoned: nothing is left for a next run.
        let abandon = |url| async move {
            self.destination.cancel_upload(dst_repo, url).await;
            resume::closed(&d.digest);
        };
        let (mut url, mut committed) = (session, hashed);
        while committed.offset() < d.size {
            // Past the deadline's margin no chunk starts: the run waits for
            // its cut with the session consistent, and the next goes on.
            if self.stop_at.is_some_and(|t| std::time::Instant::now() >= t) {
                std::future::pending::<()>().await;
            }
            let (offset, len) = (committed.offset(), chunk.min(d.size - committed.offset()));
            // The chunk is read (at the rule's pace) before its `PATCH` goes
            // out from memory: a cut then finds no `PATCH` half sent, which
            // would leave the session with bytes its state does not count
            // (distribution drops such a session). One chunk is held at
            // most: a quarter of a second of the limit, ≤ 8 MiB.
            let read: Vec<bytes::Bytes> = match pieces.take(len).try_collect().await {
                Ok(read) => read,
                Err(e) => {
                    abandon(url).await;
                    return Err(what.error(&e));
                }
            };
            // The hash moves on only with a chunk the registry accepted.
            let mut pending = committed.clone();
            read.iter().for_each(|piece| pending.update(piece));
            let body = futures_util::stream::iter(read.into_iter().map(Ok)).boxed();
            match self.destination.upload_chunk(dst_repo, url.clone(), offset, len, body).await {
                Ok(next) => {
                    url = next;
                    committed = pending;
                    resume::took(OpenUpload {
                        registry: self.destination.name().to_owned(),
                        repository: dst_repo.to_string(),
                        digest: d.digest.clone(),
                        session: url.to_string(),
                        offset: committed.offset(),
                        hash: committed.to_state(),
                    });
                }
                Err(e) => {
                    abandon(url).await;
                    return Err(e);
                }
            }
        }
        let empty = futures_util::stream::empty().boxed();
        match self.destination.finish_upload(dst_repo, url.clone(), &d.digest, 0, empty).await {
            Ok(()) => {
                resume::closed(&d.digest);
                Ok(UploadKind::Streamed)
            }
            Err(e) => {
                abandon(url).await;
                Err(e)
            }
        }
    }

    /// Opens the blob at the source from byte `hashed.offset()` on (`hashed`:
    /// the hash of the bytes before it), refusing one whose announced length is
    /// not the descriptor's, and verifying the bytes as they come: the
    /// destination must get exactly the described blob. A source that
    /// ignores the range (200) is read from the start and its first bytes
    /// dropped. The bytes read are counted in `counters`.
    async fn open_source(
        &self,
        src_repo: &RepositoryPath,
        d: &Descriptor,
        counters: &Arc<Counters>,
        hashed: Hashed,
    ) -> Result<Verified, RegistryError> {
        let from = hashed.offset();
        // Held until the stream is dropped: the read is what costs memory
        // and bandwidth, however many uploads it feeds.
        let permit = self.streams.clone().acquire_owned().await.expect("the stream budget is never closed");
        let source = self.source.open_blob(src_repo, &d.digest, from).await?;
        let ranged = source.status() == reqwest::StatusCode::PARTIAL_CONTENT;
        let protocol = |reason: String| RegistryError::Protocol { registry: self.source.name().to_owned(), reason };
        let starts = source.headers().get(reqwest::header::CONTENT_RANGE).and_then(|v| v.to_str().ok());
        if ranged && !starts.is_some_and(|r| r.starts_with(&format!("bytes {from}-"))) {
            return Err(protocol(format!("blob {}: asked from byte {from}, got Content-Range {starts:?}", d.digest)));
        }
        let (skip, expected) = if ranged { (0, d.size.saturating_sub(from)) } else { (from, d.size) };
        if let Some(len) = source.content_length().filter(|&l| l != expected) {
            let from_byte = if ranged { format!(" from byte {from}") } else { String::new() };
            let what = format!("{len} bytes long, its descriptor says {} in all", d.size);
            // Longer is what the source holds: refused for good. Shorter may
            // be a proxy's cut: tried again.
            if len > expected {
                return Err(RegistryError::TooLarge {
                    registry: self.source.name().to_owned(),
                    reference: format!("blob {}{from_byte} ({what})", d.digest),
                    limit: usize::try_from(d.size).unwrap_or(usize::MAX),
                });
            }
            return Err(protocol(format!("blob {}{from_byte} is {what}", d.digest)));
        }
        let counters = counters.clone();
        let silence = pace::Silence::new(source.bytes_stream(), self.min_throughput.window);
        let read = silence.map_err(|e| ReadFault::Source(e.to_string().into())).inspect_ok(move |c| {
            let _held = &permit;
            counters.read.fetch_add(c.len() as u64, Ordering::Relaxed);
        });
        Ok(Verified::new(without_first(read.boxed(), skip), &d.digest, d.size, hashed))
    }
}

/// The source blob an upload streams, to name it in the upload's error.
struct SourceBlob {
    registry: String,
    path: String,
    descriptor: Descriptor,
}

impl SourceBlob {
    /// The error of the source's stream, as the worker reads it: a blob that
    /// is not its descriptor's fails for good, a broken read is tried again.
    fn error(&self, e: &super::chunks::BoxError) -> RegistryError {
        let d = &self.descriptor;
        match e.downcast_ref::<ReadFault>() {
            Some(ReadFault::Refused(Refusal::Mismatch { actual })) => RegistryError::DigestMismatch {
                registry: self.registry.clone(),
                what: "blob",
                digest: d.digest.clone(),
                actual: actual.clone(),
            },
            Some(ReadFault::Refused(Refusal::Longer)) => RegistryError::TooLarge {
                registry: self.registry.clone(),
                reference: format!("blob {} (the source sent more bytes than the descriptor)", d.digest),
                limit: usize::try_from(d.size).unwrap_or(usize::MAX),
            },
            _ => RegistryError::Transport {
                registry: self.registry.clone(),
                method: reqwest::Method::GET,
                path: self.path.clone(),
                reason: e.to_string(),
            },
        }
    }
}

/// `read` without its first `skip` bytes.
fn without_first(read: BlobStream, skip: u64) -> BlobStream {
    if skip == 0 {
        return read;
    }
    read.scan(skip, |left, c| {
        let c = c.map(|mut c| {
            let drop = (*left).min(c.len() as u64);
            *left -= drop;
            c.split_off(drop as usize)
        });
        std::future::ready(Some(c))
    })
    .try_filter(|c| std::future::ready(!c.is_empty()))
    .boxed()
}

enum UploadKind {
    Mounted,
    Streamed,
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    #[tokio::test]
    async fn a_read_that_ignored_its_range_loses_the_bytes_before_it() {
        let read = |skip| async move {
            let pieces = ["abc", "defg", "hi"].map(|p| Ok(Bytes::from(p)));
            let got: Vec<Bytes> = without_first(stream::iter(pieces).boxed(), skip).try_collect().await.unwrap();
            String::from_utf8(got.concat()).unwrap()
        };
        assert_eq!(read(0).await, "abcdefghi");
        assert_eq!(read(3).await, "defghi");
        assert_eq!(read(5).await, "fghi");
        assert_eq!(read(9).await, "");
    }
}
