//! An upload in chunks that a next run can go on with: after each chunk
//! the registry accepted, the session, the offset and the hash of the
//! bytes so far are recorded ([`resume::took`]); a run cut at its deadline
//! hands them to its continuation. Given such an upload, the session is
//! asked for its range and the copy goes on from there (the source read
//! from the same byte, the hash from its state); a session the registry
//! lost starts over.

use std::sync::Arc;

use futures_util::{StreamExt, TryStreamExt};
use url::Url;

use crate::chunks::Pieces;
use crate::client::{RegistryError, UploadStart};
use crate::copy::blobs::UploadKind;
use crate::copy::Copier;
use crate::manifest::Descriptor;
use crate::report::Counters;
use crate::repository::RepositoryPath;
use crate::resume::{self, OpenUpload};
use crate::verify::{Hashed, Verified};

/// Chunks of a resumable upload: about a quarter of a second of the rule's
/// bandwidth, within these bounds. A chunk started before the deadline's
/// margin must end before the cut: a `PATCH` cut in the middle leaves the
/// session with bytes its state does not count, and distribution then
/// drops the whole session.
const RESUMABLE_CHUNK_MIN: u64 = 16 * 1024;
const RESUMABLE_CHUNK_MAX: u64 = 8 * 1024 * 1024;

impl Copier<'_> {
    /// The blob `d` up in resumable chunks, going on with `given` (what an
    /// earlier run left) when the registry still holds it as it was left.
    pub(crate) async fn upload_resumable(
        &self,
        src_repo: &RepositoryPath,
        dst_repo: &RepositoryPath,
        d: &Descriptor,
        given: Option<OpenUpload>,
        counters: &Arc<Counters>,
    ) -> Result<UploadKind, RegistryError> {
        let from = match given {
            Some(u) => self.resume_point(dst_repo, d, u).await,
            None => None,
        };
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
        self.send_resumable(src_repo, dst_repo, d, (session, hashed, chunk), source, counters).await
    }

    /// The session and hash state to go on from, if the registry holds the
    /// upload `u` an earlier run left exactly as it was left.
    async fn resume_point(&self, dst_repo: &RepositoryPath, d: &Descriptor, u: OpenUpload) -> Option<(Url, Hashed)> {
        let state = Hashed::from_state(&d.digest, &u.hash, u.offset);
        let (Ok(url), Some(hashed)) = (Url::parse(&u.session), state) else { return None };
        match self.destination.upload_status(dst_repo, url).await {
            Ok(Some((url, taken))) if taken == u.offset && taken < d.size => {
                tracing::info!(offset = taken, "going on with the upload an earlier run left");
                Some((url, hashed))
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
                None
            }
        }
    }

    /// Sends `source` through `session` from the offset `hashed` holds, in
    /// chunks of `chunk` bytes, recording each accepted one, then commits.
    /// A failed upload is abandoned: nothing is left for a next run.
    async fn send_resumable(
        &self,
        src_repo: &RepositoryPath,
        dst_repo: &RepositoryPath,
        d: &Descriptor,
        (session, hashed, chunk): (Url, Hashed, u64),
        source: Verified,
        counters: &Arc<Counters>,
    ) -> Result<UploadKind, RegistryError> {
        let pieces = Pieces::new(self.metered(source, counters).boxed());
        let what = self.source_blob(src_repo, d);
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
                    (url, committed) = (next, pending);
                    self.took(dst_repo, d, &url, &committed);
                }
                Err(e) => {
                    abandon(url).await;
                    return Err(e);
                }
            }
        }
        let empty = futures_util::stream::empty().boxed();
        let committed = self.destination.finish_upload(dst_repo, url.clone(), &d.digest, 0, empty).await;
        if committed.is_err() {
            abandon(url).await;
        } else {
            resume::closed(&d.digest);
        }
        committed.map(|()| UploadKind::Streamed)
    }

    /// Records what the registry holds of `d`'s upload, for a next run.
    fn took(&self, dst_repo: &RepositoryPath, d: &Descriptor, url: &Url, committed: &Hashed) {
        resume::took(OpenUpload {
            registry: self.destination.name().to_owned(),
            repository: dst_repo.to_string(),
            digest: d.digest.clone(),
            session: url.to_string(),
            offset: committed.offset(),
            hash: committed.to_state(),
        });
    }
}
