//! The copy engine (DESIGN §5): resolve (what the source holds now, what
//! of it the destination lacks), plan ([`super::plan`]: blobs, children
//! first, the root, its tags), then walk the plan — the blobs skipped,
//! mounted or streamed ([`blobs`]), the manifests with their
//! original bytes.

mod blobs;
pub mod referrers;
mod resumable;
mod source;
mod upload;
mod walk;

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::future::join_all;

use super::client::RegistryClient;
use super::ledger::BlobLedger;
use super::manifest::Manifest;
use super::pace::MinThroughput;
use super::plan::{self, Plan, RootPush, TagPair};
pub use super::report::{CopyError, CopyReport, Outcome};
use super::retry::RetryPolicy;
use super::tee::Member;
use super::throttle::Throttle;
use crate::digest::Digest;
use crate::repository::{RepositoryPath, Tag};
use crate::task::Task;

/// Copies one task's artifact between two registries.
pub struct Copier<'a> {
    pub source: &'a RegistryClient,
    pub destination: &'a RegistryClient,
    /// Blobs in flight at once.
    pub blob_concurrency: usize,
    /// Whole-blob retries (a retry re-opens the source stream), within
    /// the policy's attempts and each blob's budget of failed sends
    /// ([`RetryPolicy::blob_budget`]), which the clients' request retries
    /// spend from too.
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

/// What the source holds now of the task's tags.
enum Current<'t> {
    /// The tags still at the task's digest, each with its destination tag
    /// and the digest that one points at now (none for an untagged task).
    Tags(Vec<(&'t Tag, &'t Tag, Option<Digest>)>),
    /// Nothing left to copy: the task ends so.
    Ended(Outcome),
}

/// The root of a copy that has something to push, under the worker's lock
/// on its digest (held until the pushes are done).
struct Subject<'t> {
    root: Manifest,
    /// The destination has the root already: only tags go up.
    present: bool,
    due: Vec<TagPair<'t>>,
    _one_push_at_a_time: tokio::sync::OwnedMutexGuard<()>,
}

/// What [`Copier::tag_still_due`] found.
enum TagCheck {
    Due,
    MovedAtSource,
    TakenAtDestination,
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

    /// The artifact itself: what is due (HEADs), the plan, then its walk.
    async fn copy_subject(&self, task: &Task) -> Result<CopyReport, CopyError> {
        let (src_repo, digest) = (&task.source.repository, &task.source.digest);
        let dst_repo = &task.destination.repository;
        let tagged = !task.destination.tags.is_empty();
        let mut report = CopyReport::default();
        let current = match self.current_tags(task).await? {
            Current::Tags(current) => current,
            Current::Ended(outcome) => return Ok(report.ended(outcome)),
        };
        // A destination tag at the digest says the manifest is there.
        let tag_at_digest = current.iter().any(|(_, _, at_dst)| at_dst.as_ref() == Some(digest));
        let due = plan::due_tags(digest, current, task.options.override_existing, &mut report.tags_skipped);
        if tagged && due.is_empty() {
            let outcome = plan::none_due(&report.tags_skipped);
            return Ok(report.ended(outcome));
        }
        let Some(subject) = self.subject_due(task, due, tag_at_digest).await? else {
            return Ok(report.ended(Outcome::AlreadyPresent));
        };
        report.read_manifest(digest, subject.root.bytes.len() as u64)?;
        let push = if tagged { RootPush::Tags(subject.due.clone()) } else { RootPush::ByDigest };
        let fetched = match subject.present {
            true => HashMap::new(),
            false => self.missing_children(src_repo, dst_repo, &subject.root, &mut report).await?,
        };
        let plan = match subject.present {
            true => plan::root_only(push),
            false => plan::plan(&subject.root, &fetched, push)?,
        };
        self.execute(task, &subject.root, plan, &mut report).await?;
        Ok(report)
    }

    /// What the source holds now. A tag that has moved to another digest
    /// since the event is left to the newer event's task, so reordered
    /// deliveries converge on the source's current state.
    async fn current_tags<'t>(&self, task: &'t Task) -> Result<Current<'t>, CopyError> {
        let (src_repo, digest) = (&task.source.repository, &task.source.digest);
        let dst_repo = &task.destination.repository;
        if task.source.tags.is_empty() {
            let found = self.source.head_manifest(src_repo, &digest.to_string()).await?;
            return Ok(if found.is_none() { Current::Ended(Outcome::SourceGone) } else { Current::Tags(Vec::new()) });
        }
        // Both sides at once: one round trip, and a re-replication stays
        // at these HEADs.
        let src_heads = join_all(task.source.tags.iter().map(|t| self.source.head_manifest(src_repo, t.as_str())));
        let dst_heads =
            join_all(task.destination.tags.iter().map(|t| self.destination.head_manifest(dst_repo, t.as_str())));
        let (src_heads, dst_heads) = futures_util::future::join(src_heads, dst_heads).await;
        let mut current = Vec::new();
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
            let still_there = self.source.head_manifest(src_repo, &digest.to_string()).await?.is_some();
            return Ok(Current::Ended(if still_there { Outcome::Superseded } else { Outcome::SourceGone }));
        }
        Ok(Current::Tags(current))
    }

    /// The root and what of it is due, under the worker's lock on its
    /// digest; none when the destination has it all.
    ///
    /// `tag_at_digest`: one of the destination's tags points at the digest
    /// (the HEADs of [`Copier::current_tags`] said so).
    async fn subject_due<'t>(
        &self,
        task: &'t Task,
        mut due: Vec<TagPair<'t>>,
        tag_at_digest: bool,
    ) -> Result<Option<Subject<'t>>, CopyError> {
        let (src_repo, digest) = (&task.source.repository, &task.source.digest);
        let (dst_repo, by_digest) = (&task.destination.repository, digest.to_string());
        let tagged = !task.destination.tags.is_empty();
        // A tagged push needs the root whatever the destination holds (it
        // goes up under the tags). Whether the destination has it already
        // is known when one of its tags points at it; otherwise no HEAD by
        // digest is asked: the blobs' own checks say what is there, blob by
        // blob (the ledger; else the upload's `POST` asking to mount from
        // the repository itself where that answers, or a HEAD), so a new
        // image costs no request more than its uploads. (A new tag onto a
        // manifest the destination has, in a worker that has not seen it,
        // then checks each blob instead of one HEAD, and sends none.) An
        // untagged push stays HEAD-only when present.
        let (mut present, root) = if tagged {
            (tag_at_digest, Some(self.source.get_manifest(src_repo, &by_digest, Some(digest)).await?))
        } else {
            (self.destination.head_manifest(dst_repo, &by_digest).await?.as_ref() == Some(digest), None)
        };
        if present && !tagged {
            return Ok(None);
        }
        let (lock, waited) = self.ledger.manifest_lock(digest).await;
        if waited {
            // Another task of this worker pushed this manifest meanwhile
            // (the webhook's and a reconcile's, say): push only what it did not.
            present = self.destination.head_manifest(dst_repo, &by_digest).await?.as_ref() == Some(digest);
            due = self.still_missing(dst_repo, digest, due).await?;
            if present && due.is_empty() {
                return Ok(None);
            }
        }
        let root = match root {
            Some(root) => root,
            None => self.source.get_manifest(src_repo, &by_digest, Some(digest)).await?,
        };
        Ok(Some(Subject { root, present, due, _one_push_at_a_time: lock }))
    }

    /// The tags of `due` that do not point at `digest` at the destination.
    async fn still_missing<'t>(
        &self,
        dst_repo: &RepositoryPath,
        digest: &Digest,
        due: Vec<TagPair<'t>>,
    ) -> Result<Vec<TagPair<'t>>, CopyError> {
        let mut left = Vec::new();
        for (src_tag, tag) in due {
            if self.destination.head_manifest(dst_repo, tag.as_str()).await?.as_ref() != Some(digest) {
                left.push((src_tag, tag));
            }
        }
        Ok(left)
    }

    /// Walks `plan` for `root`: its blobs and children, then the root as
    /// the plan says.
    async fn execute(
        &self,
        task: &Task,
        root: &Manifest,
        plan: Plan<'_>,
        report: &mut CopyReport,
    ) -> Result<(), CopyError> {
        let dst_repo = &task.destination.repository;
        self.push_below(&task.source.repository, dst_repo, &plan, report).await?;
        match plan.root {
            RootPush::Caller => {}
            RootPush::ByDigest => {
                self.destination.put_manifest(dst_repo, &root.digest.to_string(), root).await?;
                report.manifests_pushed += 1;
                report.outcome = Some(Outcome::Copied);
            }
            RootPush::Tags(tags) => self.push_tags(task, root, tags, report).await?,
        }
        Ok(())
    }

    /// Everything `root` needs at the destination before it can be pushed
    /// (its missing children and their blobs, its own blobs), planned and
    /// pushed; the root is the caller's.
    pub(crate) async fn copy_below(
        &self,
        src_repo: &RepositoryPath,
        dst_repo: &RepositoryPath,
        root: &Manifest,
        report: &mut CopyReport,
    ) -> Result<(), CopyError> {
        let fetched = self.missing_children(src_repo, dst_repo, root, report).await?;
        let plan = plan::plan(root, &fetched, RootPush::Caller)?;
        self.push_below(src_repo, dst_repo, &plan, report).await
    }

    /// The plan's blobs, then its child manifests by digest.
    async fn push_below(
        &self,
        src_repo: &RepositoryPath,
        dst_repo: &RepositoryPath,
        plan: &Plan<'_>,
        report: &mut CopyReport,
    ) -> Result<(), CopyError> {
        report.add(&*self.copy_blobs(src_repo, dst_repo, plan.blobs.iter().cloned()).await?);
        for child in &plan.children {
            self.destination.put_manifest(dst_repo, &child.digest.to_string(), child).await?;
            report.manifests_pushed += 1;
        }
        Ok(())
    }

    /// The root under each due tag still due right before its `PUT`; the
    /// task's outcome from what went up.
    async fn push_tags(
        &self,
        task: &Task,
        root: &Manifest,
        tags: Vec<TagPair<'_>>,
        report: &mut CopyReport,
    ) -> Result<(), CopyError> {
        let dst_repo = &task.destination.repository;
        let mut moved = false;
        for (src_tag, tag) in tags {
            match self.tag_still_due(task, src_tag, tag).await? {
                TagCheck::Due => match self.destination.put_manifest(dst_repo, tag.as_str(), root).await {
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
        Ok(())
    }

    /// Checked right before a tag moves, because a copy can take minutes:
    /// the source tag must still point at the task's digest (else a newer
    /// task carries it, and pushing now would move the destination back to
    /// an old digest), and without override the destination tag must still
    /// be absent or ours. The window left between this HEAD and the PUT is
    /// docs/operations.md's "Remaining window": the distribution API has no
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
}
