//! One attempt at a blob: an upload session opened (or a mount asked),
//! the source's read piped into it — whole, or in chunks for a registry
//! that refused a whole blob — and the session abandoned if it fails.
//! Memory stays at a few socket buffers whatever the blob size.

use std::sync::{Arc, Mutex};

use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt, TryStreamExt};
use url::Url;

use crate::chunks::{BoxError, Pieces};
use crate::client::{RegistryError, UploadStart};
use crate::copy::blobs::{Begin, UploadKind};
use crate::copy::Copier;
use crate::manifest::Descriptor;
use crate::report::Counters;
use crate::repository::RepositoryPath;
use crate::resume;
use crate::tee::{self, BlobStream};
use crate::verify::{Hashed, Verified};

/// Blobs up to this size are read from the source while their upload's
/// `POST` is in flight: at 100 MB/s a MiB takes about as long as a few round
/// trips.
const OPEN_WITH_POST_MAX: u64 = 1024 * 1024;

/// The body an upload sends.
type Body = futures_util::stream::BoxStream<'static, Result<bytes::Bytes, BoxError>>;

/// The source's read for one upload, and when it comes through a shared
/// read, what carries on with a read of its own if the shared read
/// detaches it (polled beside the upload).
struct Source<'a> {
    bytes: BlobStream,
    go_on: Option<BoxFuture<'a, ()>>,
}

/// Where one upload sends its bytes.
struct Session<'r> {
    repo: &'r RepositoryPath,
    url: Url,
    /// The registry's smallest chunk, when it says.
    chunk_min: Option<u64>,
}

impl Copier<'_> {
    /// One attempt: open an upload as `begin` says (a plain `POST`, a
    /// mount from a repository of the destination known to hold the blob,
    /// or the session a check in place opened), then pipe the source into
    /// it.
    pub(crate) async fn upload_blob(
        &self,
        src_repo: &RepositoryPath,
        dst_repo: &RepositoryPath,
        d: &Descriptor,
        begin: Begin,
        counters: &Arc<Counters>,
    ) -> Result<UploadKind, RegistryError> {
        let begin = match begin {
            Begin::Check => match self.check(dst_repo, d).await? {
                Some(begin) => begin,
                None => {
                    self.pass(&d.digest);
                    return Ok(UploadKind::Present);
                }
            },
            begin => begin,
        };
        // Not when mounting, sharing a read or given a session: those take
        // no time (see goes_resumable).
        if matches!(begin, Begin::Upload) && self.goes_resumable(dst_repo, d) {
            let given = resume::given(self.destination.name(), dst_repo.as_str(), &d.digest);
            return self.upload_resumable(src_repo, dst_repo, d, given, counters).await;
        }
        // A small blob, nothing to mount and no read to share: the source is
        // opened beside the POST, one round trip fewer where a round trip is
        // much of the blob's time. (A mount usually needs no read; a shared
        // read is opened by its leader; a large blob's read waits for its
        // session rather than hold a response unread.)
        let early = d.size <= OPEN_WITH_POST_MAX && matches!(begin, Begin::Upload) && self.fanout.is_none();
        let start = async {
            match begin {
                // (`Check` was resolved above.)
                Begin::Upload | Begin::Check => self.destination.start_upload(dst_repo, None).await,
                Begin::MountFrom(from) => self.destination.start_upload(dst_repo, Some((&d.digest, &from))).await,
                Begin::Session(session) => Ok(session),
            }
        };
        let (started, opened) = if early {
            let open = self.open_source(src_repo, d, counters, Hashed::start(&d.digest));
            let (started, opened) = futures_util::future::join(start, open).await;
            (started, Some(opened))
        } else {
            (start.await, None)
        };
        let (url, chunk_min) = match started? {
            UploadStart::Mounted => {
                self.pass(&d.digest);
                return Ok(UploadKind::Mounted);
            }
            // A declined mount (202) is an upload session: use it.
            UploadStart::Session { url, chunk_min } => (url, chunk_min),
        };
        let session = Session { repo: dst_repo, url, chunk_min };
        match self.source_for(src_repo, d, counters, opened).await {
            Ok(source) => self.stream_into(src_repo, d, session, source, counters).await,
            Err(e) => {
                self.destination.cancel_upload(dst_repo, session.url).await;
                Err(e)
            }
        }
    }

    /// Whether `d` goes up in chunks a next run can go on with: a blob this
    /// run cannot finish (its rule's bandwidth limit says so), or one an
    /// earlier run left half sent (a whole-blob PUT cut at the deadline
    /// leaves nothing). Not when sharing a read (the leader's pace is the
    /// read's).
    pub(crate) fn goes_resumable(&self, dst_repo: &RepositoryPath, d: &Descriptor) -> bool {
        self.fanout.is_none()
            && self.destination.takes_chunks()
            && resume::recorded()
            && (resume::given(self.destination.name(), dst_repo.as_str(), &d.digest).is_some()
                || self.outlasts_the_run(d.size))
    }

    /// The read an upload of `d` sends: `opened` if the source was opened
    /// beside the `POST`, the shared read of the task's fan-out, or a read
    /// of its own.
    async fn source_for<'s>(
        &'s self,
        src_repo: &'s RepositoryPath,
        d: &'s Descriptor,
        counters: &'s Arc<Counters>,
        opened: Option<Result<Verified, RegistryError>>,
    ) -> Result<Source<'s>, RegistryError> {
        let open = || self.open_source(src_repo, d, counters, Hashed::start(&d.digest));
        let alone = |read: Verified| Source { bytes: read.boxed(), go_on: None };
        match (opened, self.fanout) {
            (Some(opened), _) => opened.map(alone),
            (None, Some(m)) => match m.read(&d.digest, open).await? {
                Some(shared) => {
                    let rest = move |from| self.open_source(src_repo, d, counters, from);
                    let (bytes, feed) = tee::go_on_alone(shared, rest);
                    Ok(Source { bytes, go_on: Some(feed.boxed()) })
                }
                None => open().await.map(alone),
            },
            (None, None) => open().await.map(alone),
        }
    }

    /// Sends `source` through `session`, abandoning the session if the
    /// upload fails.
    async fn stream_into(
        &self,
        src_repo: &RepositoryPath,
        d: &Descriptor,
        session: Session<'_>,
        source: Source<'_>,
        counters: &Arc<Counters>,
    ) -> Result<UploadKind, RegistryError> {
        // A failure of the source's stream reaches us as the destination's
        // request failing; it is kept here so the error names the source
        // (a trickling source must not open the destination's breaker).
        let source_fault = Arc::new(Mutex::new(None::<RegistryError>));
        let (fault, what) = (source_fault.clone(), self.source_blob(src_repo, d));
        let body = self
            .metered(source.bytes, counters)
            .inspect_err(move |e| *fault.lock().expect("fault lock") = Some(what.error(e)));
        let repo = session.repo;
        let upload = self.send_body(d, session, body.boxed());
        let ((result, last_url), _) = tokio::join!(upload, futures_util::future::OptionFuture::from(source.go_on));
        if result.is_err() {
            self.destination.cancel_upload(repo, last_url).await;
        }
        let source_fault = source_fault.lock().expect("fault lock").take();
        match (result, source_fault) {
            (Ok(()), _) => Ok(UploadKind::Streamed),
            (Err(_), Some(source_error)) => Err(source_error),
            (Err(e), None) => Err(e),
        }
    }

    /// Sends `body` through `session`, whole, or in chunks where the
    /// registry refused a whole blob (413). The destination's client
    /// watches each request's body: a registry that stops reading leaves
    /// it unpolled, and so unpaced. Whichever way the bytes go, the commit
    /// (`PUT ?digest=`) is complete only with the verified last bytes.
    /// Returns the session's last URL too, to abandon it (distribution
    /// refuses a stale one's state).
    async fn send_body(&self, d: &Descriptor, session: Session<'_>, body: Body) -> (Result<(), RegistryError>, Url) {
        let Session { repo, url, chunk_min } = session;
        let Some(chunk) = self.destination.chunk_size() else {
            let sent = self.destination.finish_upload(repo, url.clone(), &d.digest, d.size, body).await;
            return (sent, url);
        };
        let chunk = chunk.max(chunk_min.unwrap_or(0));
        let pieces = Pieces::new(body);
        let (mut url, mut offset) = (url, 0);
        while offset < d.size {
            let len = chunk.min(d.size - offset);
            let body = pieces.take(len).boxed();
            match self.destination.upload_chunk(repo, url.clone(), offset, len, body).await {
                Ok(next) => url = next,
                Err(e) => return (Err(e), url),
            }
            offset += len;
        }
        let empty = futures_util::stream::empty().boxed();
        (self.destination.finish_upload(repo, url.clone(), &d.digest, 0, empty).await, url)
    }
}
