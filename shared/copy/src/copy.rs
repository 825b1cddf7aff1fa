//! The copy engine (DESIGN §5): resolve, compare, copy blobs (skip what the
//! destination has, stream the rest), push manifests children-first with
//! their original bytes, then tags.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use futures_util::future::join_all;

use super::blobs::Counters;
use super::client::{RegistryClient, RegistryError};
use super::ledger::BlobLedger;
use super::manifest::{
    is_foreign, Contents, Descriptor, Manifest, ManifestError, MAX_INDEX_CHILDREN, MAX_INDEX_DEPTH,
    MAX_TASK_MANIFEST_BYTES,
};
use super::pace::MinThroughput;
use super::retry::RetryPolicy;
use super::tee::Member;
use super::throttle::Throttle;
use crate::digest::Digest;
use crate::repository::{RepositoryPath, Tag};
use crate::task::Task;

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
    /// Counts the manifest `digest` of `bytes` bytes, read from the source,
    /// against the task's budget.
    pub(super) fn read_manifest(&mut self, digest: &Digest, bytes: u64) -> Result<(), ManifestError> {
        self.manifest_bytes = self.within_budget(digest, bytes)?;
        Ok(())
    }

    /// The task's manifest bytes with `bytes` more, if they fit its budget.
    pub(super) fn within_budget(&self, digest: &Digest, bytes: u64) -> Result<u64, ManifestError> {
        let total = self.manifest_bytes.saturating_add(bytes);
        if total > MAX_TASK_MANIFEST_BYTES {
            return Err(ManifestError::TooManyBytes { digest: digest.clone(), limit: MAX_TASK_MANIFEST_BYTES });
        }
        Ok(total)
    }

    /// Adds what copying one manifest tree moved.
    fn add(&mut self, c: &Counters) {
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

/// Copies one task's artifact between two registries.
pub struct Copier<'a> {
    pub source: &'a RegistryClient,
    pub destination: &'a RegistryClient,
    /// Blobs in flight at once.
    pub blob_concurrency: usize,
    /// Whole-blob retries (a retry re-opens the source stream).
    pub retry: RetryPolicy,
    /// What this worker knows of the destination's blobs (mount hints,
    /// uploads in flight).
    pub ledger: &'a BlobLedger,
    /// The task's bandwidth budget, if it has one.
    pub throttle: Option<Arc<Throttle>>,
    /// No blob is started after this instant (the Lambda deadline minus a
    /// margin); the task fails and is redelivered, keeping what it copied.
    pub stop_at: Option<std::time::Instant>,
    /// Copy the artifact's referrers too (`worker.referrers`).
    pub referrers: bool,
    /// A blob moving slower than this is given up and tried again.
    pub min_throughput: MinThroughput,
    /// The task's place among the tasks of the same artifact into other
    /// destinations, sharing each blob's source read.
    pub fanout: Option<&'a Member>,
    /// The process's budget of blobs read from the source at once.
    pub streams: Arc<tokio::sync::Semaphore>,
}

/// Everything below the root that must reach the destination.
#[derive(Default)]
struct Tree {
    /// Child manifests in push order (children before parents).
    children: Vec<Manifest>,
    /// Their digests: a child that several indexes list is walked once.
    walked: HashSet<Digest>,
    /// Blobs to copy, once per digest even when several children share them.
    blobs: BTreeMap<Digest, Descriptor>,
}

impl Copier<'_> {
    /// The artifact, then (once it is at the destination) its referrers:
    /// after a copy, and when the task asks to refresh them (a reconcile
    /// pass saw an accessory missing) and finds the artifact already there.
    /// A duplicate event for an artifact already present stays HEAD-only.
    pub async fn copy(&self, task: &Task) -> Result<CopyReport, CopyError> {
        let mut report = self.copy_subject(task).await?;
        let follow = match report.outcome {
            Some(Outcome::Copied) => true,
            Some(Outcome::AlreadyPresent) => task.options.refresh_referrers,
            _ => false,
        };
        if self.referrers && follow {
            let (src, dst) = (&task.source.repository, &task.destination.repository);
            self.copy_referrers(src, dst, &task.source.digest, task.options.override_existing, &mut report).await?;
            if report.referrers_copied > 0 {
                report.outcome = Some(Outcome::Copied);
            }
        }
        Ok(report)
    }

    async fn copy_subject(&self, task: &Task) -> Result<CopyReport, CopyError> {
        let (src_repo, digest) = (&task.source.repository, &task.source.digest);
        let dst_repo = &task.destination.repository;
        let by_digest = digest.to_string();
        let mut report = CopyReport::default();

        // What the source holds now. A tag that has moved to another digest
        // since the event is left to the newer event's task, so reordered
        // deliveries converge on the source's current state.
        let mut current = Vec::new();
        if task.source.tags.is_empty() {
            if self.source.head_manifest(src_repo, &by_digest).await?.is_none() {
                report.outcome = Some(Outcome::SourceGone);
                return Ok(report);
            }
        } else {
            // Both sides at once: one round trip, and a re-replication stays
            // at these HEADs.
            let src_heads = join_all(task.source.tags.iter().map(|t| self.source.head_manifest(src_repo, t.as_str())));
            let dst_heads =
                join_all(task.destination.tags.iter().map(|t| self.destination.head_manifest(dst_repo, t.as_str())));
            let (src_heads, dst_heads) = futures_util::future::join(src_heads, dst_heads).await;
            for ((src_tag, dst_tag), (at_src, at_dst)) in
                task.source.tags.iter().zip(&task.destination.tags).zip(src_heads.into_iter().zip(dst_heads))
            {
                match at_src? {
                    Some(d) if &d == digest => current.push((src_tag, dst_tag, at_dst?)),
                    Some(other) => {
                        tracing::info!(tag = %src_tag, now = %other, "tag moved at the source since the event: left to the newer task")
                    }
                    None => tracing::info!(tag = %src_tag, "tag gone from the source since the event"),
                }
            }
            if current.is_empty() {
                let still_there = self.source.head_manifest(src_repo, &by_digest).await?.is_some();
                report.outcome = Some(if still_there { Outcome::Superseded } else { Outcome::SourceGone });
                return Ok(report);
            }
        }

        let mut tags = Vec::new();
        for (src_tag, tag, at_dst) in current {
            match at_dst {
                Some(d) if &d == digest => {}
                Some(other) if !task.options.override_existing => {
                    tracing::info!(tag = %tag, existing = %other, "destination tag points elsewhere and override is off: left alone");
                    report.tags_skipped.push(tag.clone());
                }
                _ => tags.push((src_tag, tag)),
            }
        }
        let tagged = !task.destination.tags.is_empty();
        if tagged && tags.is_empty() {
            report.outcome =
                Some(if report.tags_skipped.is_empty() { Outcome::AlreadyPresent } else { Outcome::SkippedNoOverride });
            return Ok(report);
        }

        // A tagged push needs the root whatever the destination holds (it
        // goes up under the tags), so it is read beside the digest's HEAD:
        // one round trip. An untagged one stays HEAD-only when present.
        let head = self.destination.head_manifest(dst_repo, &by_digest);
        let (at_dst, root) = if tagged {
            let get = self.source.get_manifest(src_repo, &by_digest, Some(digest));
            let (at_dst, root) = futures_util::future::join(head, get).await;
            (at_dst?, Some(root?))
        } else {
            (head.await?, None)
        };
        let mut present = at_dst.as_ref() == Some(digest);
        if present && !tagged {
            report.outcome = Some(Outcome::AlreadyPresent);
            return Ok(report);
        }

        let (_one_push_at_a_time, waited) = self.ledger.manifest_lock(digest).await;
        if waited {
            // Another task of this worker pushed this manifest meanwhile
            // (the webhook's and a reconcile's, say): push only what it did not.
            present = self.destination.head_manifest(dst_repo, &by_digest).await?.as_ref() == Some(digest);
            let mut left = Vec::new();
            for (src_tag, tag) in tags {
                if self.destination.head_manifest(dst_repo, tag.as_str()).await?.as_ref() != Some(digest) {
                    left.push((src_tag, tag));
                }
            }
            tags = left;
            if present && tags.is_empty() {
                report.outcome = Some(Outcome::AlreadyPresent);
                return Ok(report);
            }
        }
        let root = match root {
            Some(root) => root,
            None => self.source.get_manifest(src_repo, &by_digest, Some(digest)).await?,
        };
        report.read_manifest(digest, root.bytes.len() as u64)?;
        if !present {
            self.copy_below(src_repo, dst_repo, &root, &mut report).await?;
        }
        // The root goes up under its tags (the registry indexes it by digest
        // too), or by digest when the push had no tag.
        if !tagged {
            self.destination.put_manifest(dst_repo, &by_digest, &root).await?;
            report.manifests_pushed += 1;
            report.outcome = Some(Outcome::Copied);
            return Ok(report);
        }
        let mut moved = false;
        for (src_tag, tag) in tags {
            match self.tag_still_due(task, src_tag, tag).await? {
                TagCheck::Due => match self.destination.put_manifest(dst_repo, tag.as_str(), &root).await {
                    Ok(_) => report.tags_pushed.push(tag.clone()),
                    // An immutable tag (ECR) that already points elsewhere
                    // is kept, as override: false would keep it.
                    Err(e) if e.is_immutable_tag() => {
                        tracing::info!(%tag, "the destination's tag is immutable and points elsewhere: kept");
                        report.tags_skipped.push(tag.clone());
                    }
                    Err(e) => return Err(e.into()),
                },
                TagCheck::MovedAtSource => moved = true,
                TagCheck::TakenAtDestination => report.tags_skipped.push(tag.clone()),
            }
        }
        let pushed = !report.tags_pushed.is_empty();
        report.manifests_pushed += u64::from(pushed);
        report.outcome = Some(if pushed {
            Outcome::Copied
        } else if moved {
            Outcome::Superseded
        } else {
            Outcome::SkippedNoOverride
        });
        Ok(report)
    }

    /// Checked right before a tag moves, because a copy can take minutes:
    /// the source tag must still point at the task's digest (else a newer
    /// task carries it, and pushing now would move the destination back to
    /// an old digest), and without override the destination tag must still
    /// be absent or ours. The window left between this HEAD and the PUT is
    /// the README's "Remaining window": the distribution API has no
    /// conditional PUT.
    async fn tag_still_due(&self, task: &Task, src_tag: &Tag, dst_tag: &Tag) -> Result<TagCheck, CopyError> {
        let digest = &task.source.digest;
        // Both reads at once: one round trip before the PUT.
        let at_src = self.source.head_manifest(&task.source.repository, src_tag.as_str());
        let at_dst = async {
            match task.options.override_existing {
                true => Ok(None),
                false => self.destination.head_manifest(&task.destination.repository, dst_tag.as_str()).await,
            }
        };
        let (now, there) = futures_util::future::join(at_src, at_dst).await;
        let now = now?;
        if now.as_ref() != Some(digest) {
            tracing::info!(tag = %src_tag, now = ?now.map(|d| d.to_string()), "tag moved at the source during the copy: left to the newer task");
            return Ok(TagCheck::MovedAtSource);
        }
        if !task.options.override_existing {
            if let Some(other) = there?.filter(|d| d != digest) {
                tracing::info!(tag = %dst_tag, existing = %other, "destination tag appeared during the copy and override is off: left alone");
                return Ok(TagCheck::TakenAtDestination);
            }
        }
        Ok(TagCheck::Due)
    }

    /// Everything `root` needs at the destination before it can be pushed:
    /// its blobs, then its missing children (children first).
    pub(super) async fn copy_below(
        &self,
        src_repo: &RepositoryPath,
        dst_repo: &RepositoryPath,
        root: &Manifest,
        report: &mut CopyReport,
    ) -> Result<(), CopyError> {
        let mut tree = Tree::default();
        self.gather(src_repo, dst_repo, root, 0, &mut tree, report).await?;
        report.add(&*self.copy_blobs(src_repo, dst_repo, tree.blobs.into_values()).await?);
        for child in &tree.children {
            self.destination.put_manifest(dst_repo, &child.digest.to_string(), child).await?;
            report.manifests_pushed += 1;
        }
        Ok(())
    }

    /// Walks `manifest`, `depth` levels below the walk's root, collecting
    /// the children the destination lacks (post-order) and the blobs they
    /// need. An index past the bounds (children, depth, the task's manifest
    /// bytes) fails the task for good before anything is pushed: the source
    /// would serve the same tree again.
    async fn gather(
        &self,
        src_repo: &RepositoryPath,
        dst_repo: &RepositoryPath,
        manifest: &Manifest,
        depth: usize,
        tree: &mut Tree,
        report: &mut CopyReport,
    ) -> Result<(), CopyError> {
        match manifest.contents()? {
            Contents::Image { config, layers } => {
                for d in std::iter::once(config).chain(layers) {
                    if is_foreign(&d) {
                        tracing::debug!(digest = %d.digest, "foreign layer not copied (its bytes live at its urls)");
                        continue;
                    }
                    tree.blobs.entry(d.digest.clone()).or_insert(d);
                }
            }
            Contents::Index(children) => {
                if children.len() > MAX_INDEX_CHILDREN {
                    let (digest, limit) = (manifest.digest.clone(), MAX_INDEX_CHILDREN);
                    return Err(ManifestError::TooManyChildren { digest, children: children.len(), limit }.into());
                }
                for child in children {
                    if tree.walked.contains(&child.digest) {
                        continue;
                    }
                    if self.destination.head_manifest(dst_repo, &child.digest.to_string()).await?.as_ref()
                        == Some(&child.digest)
                    {
                        continue;
                    }
                    if depth >= MAX_INDEX_DEPTH {
                        let (digest, limit) = (manifest.digest.clone(), MAX_INDEX_DEPTH);
                        return Err(ManifestError::TooDeep { digest, limit }.into());
                    }
                    // By its descriptor first: no GET for what would not fit.
                    report.within_budget(&child.digest, child.size)?;
                    let m = self.source.get_manifest(src_repo, &child.digest.to_string(), Some(&child.digest)).await?;
                    report.read_manifest(&child.digest, m.bytes.len() as u64)?;
                    Box::pin(self.gather(src_repo, dst_repo, &m, depth + 1, tree, report)).await?;
                    tree.walked.insert(child.digest.clone());
                    tree.children.push(m);
                }
            }
        }
        Ok(())
    }
}

/// What [`Copier::tag_still_due`] found.
enum TagCheck {
    Due,
    MovedAtSource,
    TakenAtDestination,
}
