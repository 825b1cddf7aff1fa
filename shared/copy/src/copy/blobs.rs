//! Blobs: each copied once per task, several at a time — skipped when the
//! destination has it, mounted from a repository of the destination known
//! to hold it, otherwise streamed from the source response into one upload
//! (chunks only for a registry that refused a whole blob). Tasks of one
//! push into several destinations share the source read ([`crate::tee`]).
//! Every read is hashed on its way ([`crate::verify`]): an upload gets a
//! blob's last bytes only once they make the descriptor's digest and size,
//! so no destination commits another blob, whether it checks or not.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use futures_util::{stream, TryStreamExt};
use tracing::Instrument;

use crate::client::{InPlace, RegistryError, UploadStart};
use crate::copy::{Copier, CopyError};
use crate::ledger::BlobDecision;
use crate::manifest::Descriptor;
use crate::pace;
use crate::report::Counters;
use crate::repository::RepositoryPath;
use crate::resume;
use crate::retry::RetryBudget;

impl Copier<'_> {
    pub(crate) async fn copy_blobs(
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
                // Boxed: each blob's state machine (reads, uploads, their
                // retries) is large, and unboxed it sits inline in the task's
                // future, past a runtime thread's stack in debug builds.
                async move { Box::pin(self.copy_blob(src_repo, dst_repo, &d, &counters)).await }.instrument(span)
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
        let (owner, begin) = loop {
            match decision {
                BlobDecision::Wait(waiting) => decision = waiting.finished().await,
                BlobDecision::Present => {
                    self.skipped(&d.digest, counters);
                    return Ok(());
                }
                BlobDecision::Check(owner) => break (owner, Begin::Check),
                BlobDecision::MountFrom(from, owner) => break (owner, Begin::MountFrom(from)),
                BlobDecision::Upload(owner) => break (owner, Begin::Upload),
            }
        };
        let kind = Box::pin(self.send_blob(src_repo, dst_repo, d, begin, counters, budget)).await?;
        let counter = match kind {
            UploadKind::Present => {
                counters.skipped.fetch_add(1, Ordering::Relaxed);
                owner.done(dst_repo);
                return Ok(());
            }
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
        mut begin: Begin,
        counters: &Arc<Counters>,
        budget: &RetryBudget,
    ) -> Result<UploadKind, CopyError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let chunks_used = self.destination.chunk_size();
            // A blob to check is checked on every attempt (it may have
            // arrived meanwhile); a mount is asked once (a declined one is
            // the session the upload used): the next attempts upload.
            let this = match begin {
                Begin::Check => Begin::Check,
                _ => std::mem::replace(&mut begin, Begin::Upload),
            };
            match self.upload_blob(src_repo, dst_repo, d, this, counters).await {
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
    pub(crate) fn pass(&self, digest: &crate::digest::Digest) {
        if let Some(m) = self.fanout {
            m.pass(digest);
        }
    }
}

/// How a blob's upload begins.
pub(crate) enum Begin {
    /// A `POST` of its own.
    Upload,
    /// A mount from this repository of the destination, known to hold it.
    MountFrom(RepositoryPath),
    /// Nobody knows whether the repository holds it: asked first
    /// ([`Copier::check`]).
    Check,
    /// The session the check in place opened: the repository lacks the
    /// blob ([`InPlace::Absent`]).
    Session(UploadStart),
}

/// How a blob reached the destination.
pub(crate) enum UploadKind {
    /// It was there already.
    Present,
    Mounted,
    Streamed,
}

impl Copier<'_> {
    /// Whether the destination repository holds `d`: `None` when it does,
    /// else how the upload begins. Where the destination's answer to a
    /// mount from the repository itself tells, the question is the
    /// upload's own `POST` (one request where a HEAD and a `POST` were
    /// two); elsewhere, and for a resumable upload (which starts from its
    /// own record), a HEAD.
    pub(crate) async fn check(
        &self,
        dst_repo: &RepositoryPath,
        d: &Descriptor,
    ) -> Result<Option<Begin>, RegistryError> {
        let answer = match self.goes_resumable(dst_repo, d) {
            true => InPlace::Unknown,
            false => self.destination.check_in_place(dst_repo, &d.digest).await?,
        };
        let present = match answer {
            InPlace::Present => true,
            InPlace::Absent(session) => return Ok(Some(Begin::Session(session))),
            InPlace::Unknown => self.destination.blob_exists(dst_repo, &d.digest).await?,
        };
        Ok((!present).then_some(Begin::Upload))
    }
}
