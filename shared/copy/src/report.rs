//! What a task did (its [`CopyReport`] and [`Outcome`]) and how it failed
//! ([`CopyError`]): shared by copies and deletes, read by the worker for
//! logs, metrics and the message's fate.

use std::sync::atomic::AtomicU64;

use super::client::RegistryError;
use super::manifest::{ManifestError, MAX_TASK_MANIFEST_BYTES};
use crate::digest::Digest;
use crate::repository::{RepositoryPath, Tag};

/// What one manifest tree's blobs cost, added to the task's report.
#[derive(Default)]
pub(crate) struct Counters {
    /// Blobs not started because the deadline had come.
    pub(crate) deferred: AtomicU64,
    pub(crate) retries: AtomicU64,
    pub(crate) bytes: AtomicU64,
    /// Bytes read from the source (a read shared with other destinations
    /// counts for the task that opened it).
    pub(crate) read: AtomicU64,
    pub(crate) copied: AtomicU64,
    pub(crate) skipped: AtomicU64,
    pub(crate) mounted: AtomicU64,
}

/// How a task ended when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Bytes or manifests were written.
    Copied,
    /// The destination already held exactly this; nothing was written.
    AlreadyPresent,
    /// Every destination tag points elsewhere and override is off.
    SkippedNoOverride,
    /// The source no longer has the artifact: nothing to copy.
    SourceGone,
    /// Every tag of the task now points elsewhere at the source: a newer
    /// task carries them.
    Superseded,
    /// Deleted on the destination.
    Deleted,
    /// Delete task, but the destination did not have it.
    NotPresent,
    /// Delete task, but the source (the event's repository or another
    /// that the rules map onto the same destination) still has the artifact.
    SourceStillHas,
    /// Delete task, but a destination tag the deleted artifact did not map
    /// to points at the digest, and the registry can only delete the
    /// manifest with every tag on it: kept.
    KeptForeignTags,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Copied => "copied",
            Outcome::AlreadyPresent => "already_present",
            Outcome::SkippedNoOverride => "skipped_no_override",
            Outcome::SourceGone => "source_gone",
            Outcome::Superseded => "superseded",
            Outcome::Deleted => "deleted",
            Outcome::NotPresent => "not_present",
            Outcome::SourceStillHas => "source_still_has",
            Outcome::KeptForeignTags => "kept_foreign_tags",
        }
    }
}

/// What one task did, for logs and metrics.
#[derive(Debug, Default)]
pub struct CopyReport {
    pub outcome: Option<Outcome>,
    /// Bytes sent to the destination.
    pub bytes: u64,
    /// Bytes read from the source for it: less than `bytes` when the read
    /// was shared with other destinations and another task opened it.
    pub source_bytes: u64,
    pub blobs_copied: u64,
    pub blobs_mounted: u64,
    pub blobs_skipped: u64,
    pub manifests_pushed: u64,
    /// Blob copies tried again after a transient failure.
    pub retries: u64,
    pub tags_pushed: Vec<Tag>,
    /// Tags left alone because they point elsewhere and override is off.
    pub tags_skipped: Vec<Tag>,
    /// Signatures, SBOMs, attestations copied along (manifests).
    pub referrers_copied: u64,
    /// Manifest bytes read from the source, bounded per task
    /// ([`MAX_TASK_MANIFEST_BYTES`]).
    pub manifest_bytes: u64,
    /// Delete refused: this source repository still holds the digest.
    pub held_by: Option<RepositoryPath>,
    /// Delete refused: these destination tags point at the digest and the
    /// deleted artifact did not map to them.
    pub foreign_tags: Vec<Tag>,
}

impl CopyReport {
    /// The report of a task that ends here with `outcome`.
    pub(crate) fn ended(mut self, outcome: Outcome) -> Self {
        self.outcome = Some(outcome);
        self
    }

    /// Counts the manifest `digest` of `bytes` bytes, read from the source,
    /// against the task's budget.
    pub(crate) fn read_manifest(&mut self, digest: &Digest, bytes: u64) -> Result<(), ManifestError> {
        self.manifest_bytes = self.within_budget(digest, bytes)?;
        Ok(())
    }

    /// The task's manifest bytes with `bytes` more, if they fit its budget.
    pub(crate) fn within_budget(&self, digest: &Digest, bytes: u64) -> Result<u64, ManifestError> {
        let total = self.manifest_bytes.saturating_add(bytes);
        if total > MAX_TASK_MANIFEST_BYTES {
            return Err(ManifestError::TooManyBytes { digest: digest.clone(), limit: MAX_TASK_MANIFEST_BYTES });
        }
        Ok(total)
    }

    /// Adds what copying one manifest tree moved.
    pub(crate) fn add(&mut self, c: &Counters) {
        let load = |a: &std::sync::atomic::AtomicU64| a.load(std::sync::atomic::Ordering::Relaxed);
        self.bytes += load(&c.bytes);
        self.source_bytes += load(&c.read);
        self.blobs_copied += load(&c.copied);
        self.blobs_skipped += load(&c.skipped);
        self.blobs_mounted += load(&c.mounted);
        self.retries += load(&c.retries);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The invocation deadline came before every blob was started; the
    /// blobs already started were finished. `progressed` says whether this
    /// run moved any blob (then a continuation is worth it).
    #[error("stopped before the invocation deadline; {remaining} blobs left for the next run")]
    Deadline { remaining: usize, progressed: bool },
}
